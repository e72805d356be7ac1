using System.Numerics.Tensors;

namespace Shardwise.Parallel.Interop;

/// <summary><see cref="Gemm.Multiply"/> on host tensors (System.Numerics.Tensors, float32), zero copy on the CPU device
/// where the layouts allow it (see <see cref="TensorInterop"/>).</summary>
public static unsafe class TensorGemm
{
    /// <summary>
    /// <c>C = epilogue(alpha·op(A)·op(B) + beta·C + bias)</c> on <paramref name="stream"/>'s device; returns when C holds
    /// the result. Each tensor is read as a matrix (leading dimensions flatten into rows). op(A) is m × k (A stored
    /// k × m when <paramref name="transA"/>), op(B) is k × n, C is m × n.
    /// </summary>
    /// <param name="stream">The stream to run on (its device decides: CPU wraps dense tensors in place, CUDA copies).</param>
    /// <param name="a">A.</param>
    /// <param name="b">B.</param>
    /// <param name="c">C (read too when <paramref name="beta"/> ≠ 0); every element must have its own memory.</param>
    /// <param name="alpha">Scale of the product.</param>
    /// <param name="beta">Scale of the old C.</param>
    /// <param name="transA">A is stored transposed.</param>
    /// <param name="transB">B is stored transposed.</param>
    /// <param name="bias">Optional: n values (1-D or 1 × n) added to every row; default: none.</param>
    /// <param name="epilogue">Fused epilogue.</param>
    /// <exception cref="ArgumentException">A shape does not match (the message names the argument, its shape and the
    /// expected shape), a tensor is empty, or elements of <paramref name="c"/> share memory.</exception>
    public static void Multiply(DeviceStream stream, ReadOnlyTensorSpan<float> a, ReadOnlyTensorSpan<float> b, TensorSpan<float> c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        ReadOnlyTensorSpan<float> bias = default, Epilogue epilogue = Epilogue.None)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var la = TensorInterop.Input(a);
        var lb = TensorInterop.Input(b);
        var lc = TensorInterop.Output(c);
        long m = transA ? la.Cols : la.Rows, k = transA ? la.Rows : la.Cols;
        long n = transB ? lb.Rows : lb.Cols;
        lb.RequireShape(transB ? n : k, transB ? k : n, nameof(b), transB ? "n x k, transposed" : "k x n, with k the columns of op(a)");
        lc.RequireShape(m, n, nameof(c), "m x n");
        bool hasBias = !bias.IsEmpty;
        var lbias = hasBias ? TensorInterop.Input(bias) : default;
        if (hasBias) lbias.RequireShape(1, n, nameof(bias), "n values, 1-D or 1 x n");
        fixed (float* pa = a)
        fixed (float* pb = b)
        fixed (float* pc = c)
        fixed (float* pbias = bias)
        {
            using var ba = Binding.Create(stream, pa, la, a, copyIn: true);
            using var bb = Binding.Create(stream, pb, lb, b, copyIn: true);
            using var bc = Binding.Create(stream, pc, lc, c, copyIn: beta != 0);
            using var bbias = hasBias ? Binding.Create(stream, pbias, lbias, bias, copyIn: true) : null;
            try
            {
                Gemm.Multiply(stream, ba.View, bb.View, bc.View, alpha, beta, transA, transB, bbias?.Buffer, 0, epilogue);
                stream.Synchronize();
            }
            catch
            {
                TensorInterop.SynchronizeQuietly(stream);
                throw;
            }
            bc.CopyBack(c, stream);
        }
    }
}
