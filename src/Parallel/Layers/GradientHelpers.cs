namespace Shardwise.Parallel;

/// <summary>Building blocks shared by the layers' backward passes.</summary>
internal static class GradientHelpers
{
    /// <summary>A buffer of at least <paramref name="length"/> ones (grown and refilled when too short), for column sums as GEMMs.</summary>
    public static DeviceBuffer<float> Ones(ref DeviceBuffer<float>? cache, RankContext ctx, long length)
    {
        var before = cache;
        var ones = Scratch.Ensure(ref cache, ctx.Device, length);
        if (!ReferenceEquals(ones, before)) ones.Fill(1f, ctx.Stream);
        return ones;
    }

    /// <summary>Queues db (+)= Σ over rows of dy (n elements), as the GEMM onesᵀ[1×M] · dy[M×n].</summary>
    public static void ColumnSums(RankContext ctx, ref DeviceBuffer<float>? ones, MatrixView<float> dy, DeviceBuffer<float> db, bool accumulate)
    {
        if (db.Length < dy.Cols)
            throw new ArgumentException($"the bias gradient has {db.Length} elements; expected {dy.Cols}.", "dBias");
        var o = Ones(ref ones, ctx, dy.Rows);
        Gemm.Multiply(ctx.Stream, o.AsMatrix(1, dy.Rows), dy, db.AsMatrix(1, dy.Cols), beta: accumulate ? 1f : 0f);
    }

    /// <summary>Queues dW (+)= Xᵀ · dy for a k × n weight (x is M × k, dy is M × n).</summary>
    public static void WeightGradient(RankContext ctx, MatrixView<float> x, MatrixView<float> dy, DeviceBuffer<float> dw, bool accumulate)
    {
        long k = x.Cols, n = dy.Cols;
        if (dw.Length < k * n)
            throw new ArgumentException($"the weight gradient has {dw.Length} elements; expected {k} x {n} = {k * n}.", "dWeight");
        Gemm.Multiply(ctx.Stream, x, dy, dw.AsMatrix(k, n), beta: accumulate ? 1f : 0f, transA: true);
    }
}
