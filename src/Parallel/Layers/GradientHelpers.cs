namespace Shardwise.Parallel;

/// <summary>Building blocks shared by the layers' backward passes, for any precision: activations and their gradients
/// in the compute type (TIn) as GEMM inputs, weight and bias gradients written in <c>TGrad</c> (fp32 accumulation
/// in every GEMM; with <c>accumulate</c>, beta = 1 adds to the gradient in its own type).</summary>
internal static class GradientHelpers
{
    /// <summary>The value 1 as <typeparamref name="T"/> (float, Half, BFloat16).</summary>
    public static T One<T>() where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (T)(object)1f;
        if (typeof(T) == typeof(Half)) return (T)(object)(Half)1f;
        if (typeof(T) == typeof(BFloat16)) return (T)(object)(BFloat16)1f;
        throw new NotSupportedException($"no one of type {typeof(T).Name}");
    }

    /// <summary>A buffer of at least <paramref name="length"/> ones in the scratch slot (grown and refilled when too short),
    /// for column sums as GEMMs.</summary>
    public static DeviceBuffer<T> Ones<T>(TypedScratch scratch, int slot, RankContext ctx, long length) where T : unmanaged
    {
        var ones = scratch.Get<T>(slot, ctx.Device, length, out bool fresh);
        if (fresh) ones.Fill(One<T>(), ctx.Stream);
        return ones;
    }

    /// <summary>Queues db (+)= Σ over rows of dy (n elements), as the GEMM onesᵀ[1×M] · dy[M×n].</summary>
    public static void ColumnSums<TIn, TGrad>(RankContext ctx, TypedScratch scratch, int onesSlot, MatrixView<TIn> dy,
        DeviceBuffer<TGrad> db, bool accumulate) where TIn : unmanaged where TGrad : unmanaged
    {
        if (db.Length < dy.Cols)
            throw new ArgumentException($"the bias gradient has {db.Length} elements; expected {dy.Cols}.", "dBias");
        var o = Ones<TIn>(scratch, onesSlot, ctx, dy.Rows);
        Gemm.Multiply(ctx.Stream, o.AsMatrix(1, dy.Rows), dy, db.AsMatrix(1, dy.Cols), beta: accumulate ? 1f : 0f);
    }

    /// <summary>TP-invariant mode: <paramref name="parts"/> partial sums of one gradient, each <paramref name="count"/> fp32
    /// values at sums[q·count] (a layer's dX as Q/K/V or gate/up parts, each summed over the rank's node of its own tree),
    /// summed over the ranks in the tree's order (one all-reduce of all of them), then dst = ((S_0 + S_1) + S_2) ...
    /// (contiguous count values at <paramref name="dstOffset"/>).</summary>
    public static void TreeSumOfParts(RankContext ctx, DeviceBuffer<float> sums, int parts, long count, DeviceBuffer<float> dst, long dstOffset)
    {
        var stream = ctx.Stream;
        ctx.AllReduce(sums, sums, parts * count, 0, 0, Bindings.SwReduceOp.SumTree);
        sums.CopyTo(dst, stream, 0, dstOffset, count);
        for (int q = 1; q < parts; q++) ElementwiseOps.Axpy(stream, 1f, sums, dst, count, q * count, dstOffset);
    }

    /// <summary>Queues dW (+)= Xᵀ · dy for a k × n weight (x is M × k, dy is M × n).</summary>
    public static void WeightGradient<TIn, TGrad>(RankContext ctx, MatrixView<TIn> x, MatrixView<TIn> dy, DeviceBuffer<TGrad> dw,
        bool accumulate) where TIn : unmanaged where TGrad : unmanaged
    {
        long k = x.Cols, n = dy.Cols;
        if (dw.Length < k * n)
            throw new ArgumentException($"the weight gradient has {dw.Length} elements; expected {k} x {n} = {k * n}.", "dWeight");
        Gemm.Multiply(ctx.Stream, x, dy, dw.AsMatrix(k, n), beta: accumulate ? 1f : 0f, transA: true);
    }
}
