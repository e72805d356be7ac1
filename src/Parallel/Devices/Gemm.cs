using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>Epilogues fused into a GEMM.</summary>
public enum Epilogue
{
    /// <summary>None.</summary>
    None = SwEpilogue.None,
    /// <summary>GeLU, tanh approximation, after bias.</summary>
    Gelu = SwEpilogue.Gelu,
}

/// <summary>
/// One GEMM on one device: <c>C = epilogue(alpha · op(A) · op(B) + beta · C + bias)</c>, queued on a stream.
/// This is the per-shard kernel (level-2 tiling happens inside it).
/// </summary>
public static class Gemm
{
    /// <summary>
    /// Queues <c>C = epilogue(alpha·op(A)·op(B) + beta·C + bias)</c> on <paramref name="stream"/>.
    /// op(A) is m × k (A stored k × m when <paramref name="transA"/>), op(B) is k × n, C is m × n,
    /// <paramref name="bias"/> (optional) holds n elements from <paramref name="biasOffset"/>.
    /// </summary>
    public static void Multiply(DeviceStream stream, MatrixView a, MatrixView b, MatrixView c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        DeviceBuffer<float>? bias = null, long biasOffset = 0, Epilogue epilogue = Epilogue.None)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.NotEmpty(a);
        ThrowHelper.NotEmpty(b);
        ThrowHelper.NotEmpty(c);
        long m = transA ? a.Cols : a.Rows, k = transA ? a.Rows : a.Cols;
        long kb = transB ? b.Cols : b.Rows, n = transB ? b.Rows : b.Cols;
        if (kb != k)
            throw new ArgumentException($"b is {b.Rows} x {b.Cols}{(transB ? " (transposed)" : "")}: its {kb} rows of op(b) do not match the k = {k} columns of op(a) ({a.Rows} x {a.Cols}{(transA ? " transposed" : "")}).", nameof(b));
        if (c.Rows != m || c.Cols != n)
            throw new ArgumentException($"c is {c.Rows} x {c.Cols}; expected m x n = {m} x {n}.", nameof(c));
        if (m < 1 || n < 1)
            throw new ArgumentException($"the product is {m} x {n}; expected at least 1 x 1.", nameof(c));
        var dev = stream.Device;
        ThrowHelper.SameDevice(dev, a);
        ThrowHelper.SameDevice(dev, b);
        ThrowHelper.SameDevice(dev, c);
        if (bias is not null)
        {
            ThrowHelper.SameDevice(dev, bias);
            if (biasOffset < 0 || biasOffset + n > bias.Length)
                throw new ArgumentException($"bias needs {n} elements from offset {biasOffset}; it has {bias.Length}.", nameof(bias));
        }
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "alpha must be finite.");
        if (!float.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "beta must be finite.");

        bool added = false;
        var biasHandle = bias?.Handle;
        try
        {
            biasHandle?.DangerousAddRef(ref added);
            ThrowHelper.Check(Native.sw_gemm(stream.Handle, SwDtype.F32, transA ? SwOp.T : SwOp.N, transB ? SwOp.T : SwOp.N,
                m, n, k, alpha,
                a.Buffer.Handle, (ulong)a.Offset, a.Ld,
                b.Buffer.Handle, (ulong)b.Offset, b.Ld,
                beta,
                c.Buffer.Handle, (ulong)c.Offset, c.Ld,
                biasHandle?.DangerousGetHandle() ?? 0, (ulong)biasOffset, (SwEpilogue)epilogue));
        }
        finally
        {
            if (added) biasHandle!.DangerousRelease();
        }
    }
}
