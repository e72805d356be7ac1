using System.Numerics.Tensors;

namespace Shardwise.Parallel.Interop;

/// <summary><see cref="Gemm.Multiply(DeviceStream, MatrixView{float}, MatrixView{float}, MatrixView{float}, float, float, bool, bool, DeviceBuffer{float}?, long, Epilogue)"/>
/// and <see cref="Gemm.Multiply{TIn, TOut}"/> on host tensors (System.Numerics.Tensors: float, Half, BFloat16), zero copy
/// on the CPU device where the layouts allow it (see <see cref="TensorInterop"/>).</summary>
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
        => Multiply<float, float>(stream, a, b, c, alpha, beta, transA, transB, bias, epilogue);

    /// <summary>
    /// The mixed-precision <see cref="Gemm.Multiply{TIn, TOut}"/> on host tensors: A and B of <typeparamref name="TIn"/>
    /// (float, Half or BFloat16), C and the bias of <typeparamref name="TOut"/> (float or <typeparamref name="TIn"/>), fp32
    /// accumulation, one rounding to <typeparamref name="TOut"/>; otherwise as the float overload. Returns when C holds the
    /// result.
    /// </summary>
    /// <exception cref="NotSupportedException">The type combination is not supported (the message names it).</exception>
    public static void Multiply<TIn, TOut>(DeviceStream stream, ReadOnlyTensorSpan<TIn> a, ReadOnlyTensorSpan<TIn> b, TensorSpan<TOut> c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        ReadOnlyTensorSpan<TOut> bias = default, Epilogue epilogue = Epilogue.None)
        where TIn : unmanaged where TOut : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!MatrixView<TIn>.IsSupported || !MatrixView<TOut>.IsSupported)
            throw new NotSupportedException(
                $"TensorGemm.Multiply<{typeof(TIn).Name}, {typeof(TOut).Name}>: matrices hold float (System.Single), System.Half or Shardwise.BFloat16.");
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
        fixed (TIn* pa = a)
        fixed (TIn* pb = b)
        fixed (TOut* pc = c)
        fixed (TOut* pbias = bias)
        {
            using var ba = Binding<TIn>.Create(stream, pa, la, a, copyIn: true);
            using var bb = Binding<TIn>.Create(stream, pb, lb, b, copyIn: true);
            using var bc = Binding<TOut>.Create(stream, pc, lc, c, copyIn: beta != 0);
            using var bbias = hasBias ? Binding<TOut>.Create(stream, pbias, lbias, bias, copyIn: true) : null;
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
