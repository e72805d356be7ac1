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
public static partial class Gemm
{
    /// <summary>
    /// Queues <c>C = epilogue(alpha·op(A)·op(B) + beta·C + bias)</c> on <paramref name="stream"/> in float32
    /// (<c>sw_gemm</c>). op(A) is m × k (A stored k × m when <paramref name="transA"/>), op(B) is k × n, C is m × n,
    /// <paramref name="bias"/> (optional) holds n elements from <paramref name="biasOffset"/>.
    /// </summary>
    public static void Multiply(DeviceStream stream, MatrixView<float> a, MatrixView<float> b, MatrixView<float> c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        DeviceBuffer<float>? bias = null, long biasOffset = 0, Epilogue epilogue = Epilogue.None)
    {
        var (m, n, k) = Validate(stream, a, b, c, alpha, beta, transA, transB, bias, biasOffset);
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

    /// <summary>
    /// Queues the mixed-precision <c>C = epilogue(alpha·op(A)·op(B) + beta·C + bias)</c> on <paramref name="stream"/>
    /// (<c>sw_gemm_ex</c>): A and B hold <typeparamref name="TIn"/> (float, <see cref="Half"/> or
    /// <see cref="BFloat16"/>), C and the bias <typeparamref name="TOut"/> (float or <typeparamref name="TIn"/>). Products
    /// are accumulated in fp32; alpha, beta, the bias and the epilogue are applied in fp32 and the result is rounded
    /// once (to nearest even) to <typeparamref name="TOut"/>. Shapes as <see cref="Multiply(DeviceStream, MatrixView{float},
    /// MatrixView{float}, MatrixView{float}, float, float, bool, bool, DeviceBuffer{float}?, long, Epilogue)"/>.
    /// </summary>
    /// <exception cref="NotSupportedException">The combination of types (e.g. "a = bf16, b = bf16, c = f16") is not
    /// one of the above, or the device's backend lacks it (the native message is the inner exception).</exception>
    public static void Multiply<TIn, TOut>(DeviceStream stream, MatrixView<TIn> a, MatrixView<TIn> b, MatrixView<TOut> c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        DeviceBuffer<TOut>? bias = null, long biasOffset = 0, Epilogue epilogue = Epilogue.None)
        where TIn : unmanaged where TOut : unmanaged =>
        MultiplyLeaf(stream, a, b, c, 0, alpha, beta, transA, transB, bias, biasOffset, epilogue);

    // Multiply with the k reduction of sw_gemm_desc.k_leaf: 0 = the device's GemmReductionLeaf, > 0 = the TP-invariant tree
    // with leaves of kLeaf k elements (even; a layer's own leaf, e.g. the attention's head group), -1 = the default order.
    internal static unsafe void MultiplyLeaf<TIn, TOut>(DeviceStream stream, MatrixView<TIn> a, MatrixView<TIn> b, MatrixView<TOut> c,
        long kLeaf, float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        DeviceBuffer<TOut>? bias = null, long biasOffset = 0, Epilogue epilogue = Epilogue.None)
        where TIn : unmanaged where TOut : unmanaged
    {
        if (kLeaf < -1 || (kLeaf > 0 && kLeaf % 2 != 0))
            throw new ArgumentOutOfRangeException(nameof(kLeaf), kLeaf, "kLeaf must be 0 (the device's reduction), -1 (the default order) or an even leaf size.");
        var (m, n, k) = Validate(stream, a, b, c, alpha, beta, transA, transB, bias, biasOffset);
        SwDtype inType = DeviceBuffer<TIn>.Dtype, outType = DeviceBuffer<TOut>.Dtype;
        if (outType != SwDtype.F32 && outType != inType)
            throw new NotSupportedException(
                $"Gemm.Multiply: {Combination(inType, outType)} is not supported; c (and the bias) must be f32 or the input type {DtypeName(inType)}.");

        var desc = Describe(inType, outType, m, n, k, a, b, c, alpha, beta, transA, transB, biasOffset, epilogue);
        desc.KLeaf = kLeaf;
        BufferHandle ha = a.Buffer.Handle, hb = b.Buffer.Handle, hc = c.Buffer.Handle;
        BufferHandle? hbias = bias?.Handle;
        bool ra = false, rb = false, rc = false, rbias = false;
        try
        {
            ha.DangerousAddRef(ref ra);
            hb.DangerousAddRef(ref rb);
            hc.DangerousAddRef(ref rc);
            hbias?.DangerousAddRef(ref rbias);
            desc.A = ha.DangerousGetHandle();
            desc.B = hb.DangerousGetHandle();
            desc.C = hc.DangerousGetHandle();
            desc.Bias = hbias?.DangerousGetHandle() ?? 0;
            var status = Native.sw_gemm_ex(stream.Handle, &desc);
            if (status == SwStatus.Unsupported)
            {
                var inner = ShardwiseException.Create(status, nameof(Native.sw_gemm_ex));
                throw new NotSupportedException(
                    $"Gemm.Multiply: {Combination(inType, outType)} is not supported on device '{stream.Device}': {inner.NativeMessage}", inner);
            }
            ThrowHelper.Check(status, nameof(Native.sw_gemm_ex));
        }
        finally
        {
            if (rbias) hbias!.DangerousRelease();
            if (rc) hc.DangerousRelease();
            if (rb) hb.DangerousRelease();
            if (ra) ha.DangerousRelease();
        }
    }

    /// <summary>The C ABI's short name of an element type ("f32", "f16", "bf16").</summary>
    internal static string DtypeName(SwDtype dtype) => dtype switch
    {
        SwDtype.F32 => "f32",
        SwDtype.F64 => "f64",
        SwDtype.F16 => "f16",
        SwDtype.BF16 => "bf16",
        SwDtype.I32 => "i32",
        SwDtype.U8 => "u8",
        _ => dtype.ToString(),
    };

    private static string Combination(SwDtype inType, SwDtype outType) =>
        $"a = {DtypeName(inType)}, b = {DtypeName(inType)}, c = {DtypeName(outType)}";

    // The managed checks shared by both overloads (the native core checks again); returns m, n, k.
    private static (long M, long N, long K) Validate<TIn, TOut>(DeviceStream stream, MatrixView<TIn> a, MatrixView<TIn> b,
        MatrixView<TOut> c, float alpha, float beta, bool transA, bool transB, DeviceBuffer<TOut>? bias, long biasOffset)
        where TIn : unmanaged where TOut : unmanaged
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
        return (m, n, k);
    }
}
