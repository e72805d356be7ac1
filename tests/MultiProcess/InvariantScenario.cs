using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// TP-invariant numerics across real processes (scenario "invariant"): the FFN's training forward and backward with the
/// device's GemmReductionLeaf = <see cref="Leaf"/> (F = 100: 13 leaves, the last one short), plus the row-parallel
/// layer's sequence-parallel output. Every rank writes Y, dX, the SP rows and its gradient shards; the tests compare them
/// bit for bit with one in-process rank (p = 1).
/// </summary>
public static class InvariantScenario
{
    public const long M = 11, H = 24, F = 100, Leaf = 8;

    /// <summary>The weights, input and output gradient of a seed (uniform, never zero).</summary>
    public sealed class Data
    {
        public Data(int seed)
        {
            var rng = new Random(seed);
            float[] R(long n, float scale) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = ((float)(rng.NextDouble() * 2 - 1) + 1e-3f) * scale; return a; }
            X = R(M * H, 1f); W1 = R(H * F, 0.5f); B1 = R(F, 0.2f); W2 = R(F * H, 0.5f); B2 = R(H, 0.2f); G = R(M * H, 1f);
        }
        public float[] X, W1, B1, W2, B2, G;
    }

    /// <summary>One rank's outputs, in this order: Y (M × H), dX (M × H), the SP rows of the row-parallel layer (this
    /// rank's token rows × F of X·W1 + b1), dW1's columns (H × f_r), db1 (f_r), dW2's rows (f_r × H), db2 (H on rank 0,
    /// else nothing). The device must have GemmReductionLeaf = <see cref="Leaf"/>.</summary>
    public static float[] Run(RankContext ctx, Data d)
    {
        var s = ctx.Stream;
        var dev = ctx.Device;
        using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(d.W1, H, F), WeightSource.FromArray(d.B1, 1, F),
            WeightSource.FromArray(d.W2, F, H), WeightSource.FromArray(d.B2, 1, H));
        using var x = dev.Allocate<float>(M * H);
        x.CopyFrom(d.X, s);
        using var g = dev.Allocate<float>(M * H);
        g.CopyFrom(d.G, s);
        using var y = dev.Allocate<float>(M * H);
        y.Fill(float.NaN, s);
        using var dx = dev.Allocate<float>(M * H);
        dx.Fill(float.NaN, s);
        using var grads = new FeedForwardGradients(dev, ffn);
        using (var saved = ffn.ForwardTraining(x.AsMatrix(M, H), y.AsMatrix(M, H)))
            ffn.Backward(x.AsMatrix(M, H), g.AsMatrix(M, H), dx.AsMatrix(M, H), grads, saved);
        var tokens = ShardingPlan.Even(M, ctx.WorldSize);
        long mr = tokens.Size(ctx.Rank);
        using var row = new RowParallelLinear(ctx, WeightSource.FromArray(d.W1, H, F), WeightSource.FromArray(d.B1, 1, F));
        using var rows = dev.Allocate<float>(Math.Max(1, mr * F));
        rows.Fill(float.NaN, s);
        // (the row-parallel layer splits H, its K, by the tree: H = 24 is 3 leaves)
        row.ForwardScatter(x.AsMatrix(M, H), rows.AsMatrix(mr, F), tokens);
        ctx.Synchronize();
        var parts = new List<float[]> { y.ToArray(s), dx.ToArray(s), rows.ToArray(s).Take((int)(mr * F)).ToArray() };
        long fr = ffn.Plan.Size(ctx.Rank);
        parts.Add(fr > 0 ? grads.DW1!.ToArray(s) : []);
        parts.Add(fr > 0 ? grads.DB1!.ToArray(s) : []);
        parts.Add(fr > 0 ? grads.DW2!.ToArray(s) : []);
        parts.Add(ctx.Rank == 0 ? grads.DB2.ToArray(s) : []);
        return parts.SelectMany(a => a).ToArray();
    }

    /// <summary>What rank <paramref name="rank"/> of <paramref name="p"/> should write, cut from the p = 1 output
    /// <paramref name="one"/> (the tree's split of F, the even split of the tokens).</summary>
    public static float[] Expected(float[] one, int p, int rank)
    {
        var plan = TreeReduction.Plan(F, Leaf, p);
        var tokens = ShardingPlan.Even(M, p);
        long at = 0;
        float[] Take(long n) { var a = one.AsSpan((int)at, (int)n).ToArray(); at += n; return a; }
        var y = Take(M * H);
        var dx = Take(M * H);
        var rowsAll = Take(M * F);
        var dw1 = Take(H * F);
        var db1 = Take(F);
        var dw2 = Take(F * H);
        var db2 = Take(H);
        long fr = plan.Size(rank), off = plan.Offset(rank), t0 = tokens.Offset(rank), mr = tokens.Size(rank);
        var outParts = new List<float[]> { y, dx, rowsAll.AsSpan((int)(t0 * F), (int)(mr * F)).ToArray() };
        var w1 = new float[H * fr];
        for (long c = 0; c < H; c++) Array.Copy(dw1, c * F + off, w1, c * fr, fr);
        outParts.Add(w1);
        outParts.Add(db1.AsSpan((int)off, (int)fr).ToArray());
        outParts.Add(dw2.AsSpan((int)(off * H), (int)(fr * H)).ToArray());
        outParts.Add(rank == 0 ? db2 : []);
        return outParts.SelectMany(a => a).ToArray();
    }
}
