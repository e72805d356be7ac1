using Shardwise.Bindings;
using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// TP-invariant numerics (issue 19, docs/tp-invariance.md): with the device's GemmReductionLeaf set, the row-parallel
/// layer, the FFN (forward and every gradient) and the hybrid-parallel example give the same bits for p = 1, 2, 4 and 8
/// tensor-parallel ranks; other p are refused; the tree's k split and the SumTree collectives are checked against
/// independent references. Each test opens its own device (the setting is per device).
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class TpInvariantTests(Backend backend) : BackendTest(backend)
{
    private static readonly int[] Degrees = [1, 2, 4, 8];

    private Device OpenInvariant(long leaf)
    {
        var dev = Device.Open(Backend);
        dev.GemmReductionLeaf = leaf;
        return dev;
    }

    // The tree's nodes over n leaves for p ranks, written independently of TreeReduction (recursive halving, the left
    // half one larger when odd; a single leaf stays whole on the left).
    private static void Nodes(long a, long b, int p, List<(long, long)> into)
    {
        if (p == 1) { into.Add((a, b)); return; }
        long mid = b - a > 1 ? a + (b - a + 1) / 2 : b;
        Nodes(a, mid, p / 2, into);
        Nodes(mid, b, p / 2, into);
    }

    private static float TreeSum(float[] x, int a, int b) =>
        b - a == 1 ? x[a] : TreeSum(x, a, a + (b - a + 1) / 2) + TreeSum(x, a + (b - a + 1) / 2, b);

    [TestCase(1000L, 64L)]
    [TestCase(11008L, 512L)]
    [TestCase(200L, 16L)]
    [TestCase(7L, 16L)]
    [TestCase(0L, 8L)]
    public void PlanIsTheTreesSplit(long k, long leaf)
    {
        long n = k == 0 ? 0 : (k + leaf - 1) / leaf;
        foreach (int p in Degrees)
        {
            var plan = TreeReduction.Plan(k, leaf, p);
            var nodes = new List<(long, long)>();
            Nodes(0, n, p, nodes);
            Assert.That(plan.Parts, Is.EqualTo(p));
            Assert.That(plan.Total, Is.EqualTo(k));
            for (int r = 0; r < p; r++)
            {
                long k0 = Math.Min(k, nodes[r].Item1 * leaf), k1 = Math.Min(k, nodes[r].Item2 * leaf);
                Assert.That((plan.Offset(r), plan.Size(r)), Is.EqualTo((k0, k1 - k0)), $"k = {k}, leaf = {leaf}, p = {p}, rank {r}");
            }
            if (n % p == 0 && n > 0 && k % leaf == 0)
                Assert.That(plan.IsEven, Is.True, $"p = {p} divides the {n} leaves: equal shards");
        }
    }

    [TestCase(3)]
    [TestCase(6)]
    public void RankCountsThatAreNotPowersOfTwoAreRefused(int p)
    {
        Assert.That(() => TreeReduction.Plan(1024, 64, p),
            Throws.ArgumentException.With.Message.Contains("power-of-two").And.Message.Contains($"got {p}"));
        using var dev = OpenInvariant(64);
        using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
        var errors = new Exception?[p];
        Spmd.Run(group, ctx =>
        {
            try
            {
                using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(new float[256 * 8], 256, 8));
            }
            catch (Exception e) { errors[ctx.Rank] = e; }
        });
        for (int r = 0; r < p; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<ArgumentException>(), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("power-of-two").And.Contain("binary reduction tree"), $"rank {r}");
        }
    }

    [Test]
    public void APlanOtherThanTheTreesIsRefusedAndAChangedSettingStopsTheLayer()
    {
        using var dev = OpenInvariant(16);
        using var group = ProcessGroup.CreateLocal(dev, 2, TimeSpan.FromSeconds(30));
        Exception? planError = null, changed = null;
        Spmd.Run(group, ctx =>
        {
            var w = WeightSource.FromArray(new float[100 * 4], 100, 4);
            if (ctx.Rank == 0)
                planError = Assert.Catch(() => new RowParallelLinear(ctx, w, plan: ShardingPlan.Even(100, 2)));
            else
                Assert.Catch(() => new RowParallelLinear(ctx, w, plan: ShardingPlan.Even(100, 2)));
        });
        Assert.That(planError, Is.InstanceOf<ArgumentException>());
        Assert.That(planError!.Message, Does.Contain("plan").And.Contain("TreeReduction.Plan(100, 16, 2)"));
        using var one = ProcessGroup.CreateLocal(dev, 1, TimeSpan.FromSeconds(30));
        Spmd.Run(one, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(new float[32 * 4], 32, 4));
            Assert.That(layer.ReductionLeaf, Is.EqualTo(16));
            using var x = ctx.Device.Allocate<float>(2 * 32);
            x.Fill(1f, ctx.Stream);
            using var y = ctx.Device.Allocate<float>(2 * 4);
            dev.GemmReductionLeaf = 32;
            changed = Assert.Catch(() => layer.Forward(x.AsMatrix(2, 32), y.AsMatrix(2, 4)));
            dev.GemmReductionLeaf = 16;
        });
        Assert.That(changed, Is.InstanceOf<InvalidOperationException>());
        Assert.That(changed!.Message, Does.Contain("GemmReductionLeaf = 16").And.Contain("now has 32"));
    }

    private static IEnumerable<TestCaseData> RowCases()
    {
        yield return new TestCaseData(23L, 200L, 19L, 16L, true).SetArgDisplayNames("23x200x19", "leaf=16", "parallel-in");
        yield return new TestCaseData(23L, 200L, 19L, 16L, false).SetArgDisplayNames("23x200x19", "leaf=16", "split-on-entry");
        yield return new TestCaseData(7L, 64L, 33L, 64L, true).SetArgDisplayNames("7x64x33", "leaf=64 (one leaf: empty ranks)", "parallel-in");
        yield return new TestCaseData(40L, 1030L, 50L, 128L, false).SetArgDisplayNames("40x1030x50", "leaf=128", "split-on-entry");
    }

    /// <summary>Row-parallel Y = X·W + b for p = 1, 2, 4, 8: every rank's Y equals p = 1's bit for bit, which equals the
    /// device's unsharded tree GEMM with the bias, and is within the fp32 bound of the float64 product.</summary>
    [TestCaseSource(nameof(RowCases))]
    public void RowParallelIsBitIdenticalForEveryPowerOfTwo(long m, long k, long n, long leaf, bool parallelInput)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);
        using var dev = OpenInvariant(leaf);
        float[]? first = null;
        foreach (int p in Degrees)
        {
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            var results = new float[p][];
            Spmd.Run(group, ctx =>
            {
                using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), parallelInput);
                long kr = layer.LocalInFeatures, off = layer.LocalInOffset, cols = parallelInput ? kr : k;
                var xr = new float[Math.Max(1, m * cols)];
                for (long i = 0; i < m; i++) Array.Copy(x, i * k + (parallelInput ? off : 0), xr, i * cols, cols);
                using var dx = ctx.Device.Allocate<float>(xr.Length);
                dx.CopyFrom(xr, ctx.Stream);
                long ld = ctx.Rank % 2 == 0 ? n : n + 3; // strided y on odd ranks
                using var y = ctx.Device.Allocate<float>(m * ld);
                y.Fill(float.NaN, ctx.Stream);
                layer.Forward(dx.AsMatrix(m, cols, Math.Max(1, cols)), y.AsMatrix(m, n, ld));
                ctx.Synchronize();
                var all = y.ToArray(ctx.Stream);
                results[ctx.Rank] = new float[m * n];
                for (long i = 0; i < m; i++) Array.Copy(all, i * ld, results[ctx.Rank], i * n, n);
            });
            Assert.That(group.CollectiveCount(0), Is.EqualTo(1UL), $"p = {p}: one all-reduce per forward");
            for (int r = 0; r < p; r++)
                Reference.AssertBitwise(results[r], first ?? results[0], $"p = {p}, rank {r} vs p = 1");
            first ??= results[0];
        }
        Reference.AssertClose(first!, n, want, mag, m, n, k, "p = 1 vs float64");
        // The unsharded tree GEMM (the device's setting) with the bias gives the same bits.
        using var s = dev.CreateStream();
        using var dx1 = dev.Allocate<float>(m * k);
        dx1.CopyFrom(x, s);
        using var dw = dev.Allocate<float>(k * n);
        dw.CopyFrom(w, s);
        using var db = dev.Allocate<float>(n);
        db.CopyFrom(bias, s);
        using var dy = dev.Allocate<float>(m * n);
        dy.Fill(float.NaN, s);
        Gemm.Multiply(s, dx1.AsMatrix(m, k), dw.AsMatrix(k, n), dy.AsMatrix(m, n), bias: db);
        s.Synchronize();
        Reference.AssertBitwise(dy.ToArray(s), first!, "the unsharded tree GEMM with bias vs the layer");
    }

    /// <summary>The sequence-parallel row-parallel output (reduce-scatter in the tree's order): each rank's token rows equal
    /// p = 1's rows bit for bit.</summary>
    [Test]
    public void SequenceParallelRowParallelIsBitIdentical()
    {
        const long m = 13, k = 96, n = 10, leaf = 8;
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        using var dev = OpenInvariant(leaf);
        float[]? full = null;
        foreach (int p in Degrees)
        {
            var tokens = ShardingPlan.Even(m, p);
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            var rows = new float[p][];
            Spmd.Run(group, ctx =>
            {
                using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n));
                using var dx = ctx.Device.Allocate<float>(m * k);
                dx.CopyFrom(x, ctx.Stream);
                long mr = tokens.Size(ctx.Rank);
                using var y = Poisoned(Math.Max(1, mr * (n + 2)), ctx.Device, ctx.Stream);
                layer.ForwardScatter(dx.AsMatrix(m, k), y.AsMatrix(mr, n, n + 2), tokens);
                ctx.Synchronize();
                var all = y.ToArray(ctx.Stream);
                rows[ctx.Rank] = new float[mr * n];
                for (long i = 0; i < mr; i++) Array.Copy(all, i * (n + 2), rows[ctx.Rank], i * n, n);
            });
            var joined = rows.SelectMany(r => r).ToArray();
            if (full is null) full = joined;
            else Reference.AssertBitwise(joined, full, $"p = {p}: the ranks' rows vs p = 1");
        }
    }

    // An FFN problem on fresh data: X (M × H), W1, b1, W2, b2 and the output gradient G (M × H).
    private static (float[] X, float[] W1, float[] B1, float[] W2, float[] B2, float[] G) RandomFfn(Random rng, long m, long h, long f) =>
        (RandomArray(rng, m * h), RandomArray(rng, h * f, 0.5f), RandomArray(rng, f), RandomArray(rng, f * h, 0.5f), RandomArray(rng, h),
            RandomArray(rng, m * h));

    private static IEnumerable<TestCaseData> FfnCases()
    {
        yield return new TestCaseData(9L, 24L, 100L, 8L, SwActivation.Gelu).SetArgDisplayNames("M=9", "H=24", "F=100", "leaf=8", "GeLU");
        yield return new TestCaseData(16L, 32L, 48L, 16L, SwActivation.Relu).SetArgDisplayNames("M=16", "H=32", "F=48", "leaf=16", "ReLU");
        yield return new TestCaseData(5L, 40L, 6L, 2L, SwActivation.Silu).SetArgDisplayNames("M=5", "H=40", "F=6", "leaf=2 (empty ranks at p=8)", "SiLU");
    }

    /// <summary>The FFN's training forward and backward: Y, dX, dW1, db1, dW2 and db2 (the ranks' shards put together by
    /// the tree's plan) equal p = 1's bit for bit for p = 2, 4, 8; p = 1 is within the float64 bounds.</summary>
    [TestCaseSource(nameof(FfnCases))]
    public void FeedForwardForwardAndGradientsAreBitIdentical(long m, long h, long f, long leaf, SwActivation activation)
    {
        var rng = NewRandom();
        var (x, w1, b1, w2, b2, g) = RandomFfn(rng, m, h, f);
        using var dev = OpenInvariant(leaf);
        float[][]? first = null;
        foreach (int p in Degrees)
        {
            var plan = TreeReduction.Plan(f, leaf, p);
            var y = new float[p][];
            var dx = new float[p][];
            var dw1 = new float[h * f];
            var db1 = new float[f];
            var dw2 = new float[f * h];
            float[] db2 = [];
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            Spmd.Run(group, ctx =>
            {
                using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                    WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h), null, null, activation);
                Assert.That(Enumerable.Range(0, p).Select(ffn.Plan.Size), Is.EqualTo(Enumerable.Range(0, p).Select(plan.Size)),
                    "the FFN splits F by the tree");
                using var xb = ctx.Device.Allocate<float>(m * h);
                xb.CopyFrom(x, ctx.Stream);
                using var gb = ctx.Device.Allocate<float>(m * h);
                gb.CopyFrom(g, ctx.Stream);
                using var yb = Poisoned(m * h, ctx.Device, ctx.Stream);
                using var dxb = Poisoned(m * h, ctx.Device, ctx.Stream);
                using var grads = new FeedForwardGradients(ctx.Device, ffn);
                using var saved = ffn.ForwardTraining(xb.AsMatrix(m, h), yb.AsMatrix(m, h));
                ffn.Backward(xb.AsMatrix(m, h), gb.AsMatrix(m, h), dxb.AsMatrix(m, h), grads, saved);
                ctx.Synchronize();
                y[ctx.Rank] = yb.ToArray(ctx.Stream);
                dx[ctx.Rank] = dxb.ToArray(ctx.Stream);
                long fr = plan.Size(ctx.Rank), off = plan.Offset(ctx.Rank);
                if (fr > 0)
                {
                    var gw1 = grads.DW1!.ToArray(ctx.Stream);
                    var gb1 = grads.DB1!.ToArray(ctx.Stream);
                    var gw2 = grads.DW2!.ToArray(ctx.Stream);
                    lock (dw1)
                    {
                        for (long c = 0; c < h; c++) Array.Copy(gw1, c * fr, dw1, c * f + off, fr);
                        Array.Copy(gb1, 0, db1, off, fr);
                        Array.Copy(gw2, 0, dw2, off * h, fr * h);
                    }
                }
                if (ctx.Rank == 0) db2 = grads.DB2.ToArray(ctx.Stream);
            });
            for (int r = 1; r < p; r++)
            {
                Reference.AssertBitwise(y[r], y[0], $"p = {p}: Y on rank {r} vs rank 0");
                Reference.AssertBitwise(dx[r], dx[0], $"p = {p}: dX on rank {r} vs rank 0");
            }
            var all = new[] { y[0], dx[0], dw1, db1, dw2, db2 };
            if (first is null)
            {
                first = all;
                if (activation == SwActivation.Gelu)
                {
                    var (want, tol) = Reference.FeedForward(x, w1, b1, w2, b2, m, h, f);
                    for (long i = 0; i < m * h; i++)
                        Assert.That(Math.Abs(y[0][i] - want[i]), Is.LessThanOrEqualTo(tol[i]), $"p = 1 Y[{i}] vs float64");
                }
                foreach (var a in all) Assert.That(a.All(float.IsFinite), Is.True, "every output written (no poison left)");
                continue;
            }
            string[] names = ["Y", "dX", "dW1", "db1", "dW2", "db2"];
            for (int q = 0; q < names.Length; q++)
                Reference.AssertBitwise(all[q], first[q], $"p = {p}: {names[q]} vs p = 1");
        }
    }

    /// <summary>The sequence-parallel FFN (all-gather in, the tree's reduce-scatter out; backward with dX reduce-scattered
    /// by the tree): each rank's rows of Y and dX, and the gradient shards, equal p = 1's bit for bit.</summary>
    [Test]
    public void SequenceParallelFeedForwardIsBitIdentical()
    {
        const long m = 13, h = 16, f = 72, leaf = 8;
        var rng = NewRandom();
        var (x, w1, b1, w2, b2, g) = RandomFfn(rng, m, h, f);
        using var dev = OpenInvariant(leaf);
        float[][]? first = null;
        foreach (int p in Degrees)
        {
            var tokens = ShardingPlan.Even(m, p);
            var plan = TreeReduction.Plan(f, leaf, p);
            var y = new float[m * h];
            var dx = new float[m * h];
            var dw1 = new float[h * f];
            var dw2 = new float[f * h];
            float[] db2 = [];
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            Spmd.Run(group, ctx =>
            {
                long r0 = tokens.Offset(ctx.Rank), mr = tokens.Size(ctx.Rank);
                using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                    WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
                using var xb = ctx.Device.Allocate<float>(Math.Max(1, mr * h));
                using var gb = ctx.Device.Allocate<float>(Math.Max(1, mr * h));
                if (mr > 0)
                {
                    xb.CopyFrom(x.AsSpan((int)(r0 * h), (int)(mr * h)), ctx.Stream);
                    gb.CopyFrom(g.AsSpan((int)(r0 * h), (int)(mr * h)), ctx.Stream);
                }
                using var yb = Poisoned(Math.Max(1, mr * h), ctx.Device, ctx.Stream);
                using var dxb = Poisoned(Math.Max(1, mr * h), ctx.Device, ctx.Stream);
                using var grads = new FeedForwardGradients(ctx.Device, ffn);
                using var saved = ffn.ForwardTrainingSequenceParallel(xb.AsMatrix(mr, h), yb.AsMatrix(mr, h), tokens);
                ffn.BackwardSequenceParallel(xb.AsMatrix(mr, h), gb.AsMatrix(mr, h), dxb.AsMatrix(mr, h), grads, saved, tokens);
                ctx.Synchronize();
                long fr = plan.Size(ctx.Rank), off = plan.Offset(ctx.Rank);
                lock (dw1)
                {
                    Array.Copy(yb.ToArray(ctx.Stream), 0, y, r0 * h, mr * h);
                    Array.Copy(dxb.ToArray(ctx.Stream), 0, dx, r0 * h, mr * h);
                    if (fr > 0)
                    {
                        PutCols(dw1, f, grads.DW1!.ToArray(ctx.Stream), h, off, fr);
                        Array.Copy(grads.DW2!.ToArray(ctx.Stream), 0, dw2, off * h, fr * h);
                    }
                    if (ctx.Rank == 0) db2 = grads.DB2.ToArray(ctx.Stream);
                }
            });
            var all = new[] { y, dx, dw1, dw2, db2 };
            if (first is null)
            {
                first = all;
                Assert.That(y.Concat(dx).All(float.IsFinite), Is.True, "p = 1: every row written");
                continue;
            }
            string[] names = ["Y", "dX", "dW1", "dW2", "db2"];
            for (int q = 0; q < names.Length; q++) Reference.AssertBitwise(all[q], first[q], $"p = {p}: {names[q]} vs p = 1");
        }
    }

    /// <summary>bf16 (parameters, activations and output; fp32 accumulation and gradients): the FFN's Y, dX and gradients
    /// are the same bits for p = 1, 2, 4, 8 — the partial sums stay fp32 across the ranks and are rounded once.</summary>
    [Test]
    public void Bf16FeedForwardIsBitIdentical()
    {
        const long m = 7, h = 32, f = 80, leaf = 8;
        var rng = NewRandom();
        BFloat16[] B(float[] a) => a.Select(v => (BFloat16)v).ToArray();
        var (x, w1, b1, w2, b2, g) = RandomFfn(rng, m, h, f);
        using var dev = OpenInvariant(leaf);
        (ushort[] Y, ushort[] Dx, float[] Dw1, float[] Dw2, float[] Db2)? first = null;
        foreach (int p in Degrees)
        {
            var plan = TreeReduction.Plan(f, leaf, p);
            ushort[] y0 = [], dx0 = [];
            var dw1 = new float[h * f];
            var dw2 = new float[f * h];
            float[] db2 = [];
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            Spmd.Run(group, ctx =>
            {
                using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                    WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h), null, Precision.Bf16);
                using var xb = ctx.Device.Allocate<BFloat16>(m * h);
                xb.CopyFrom(B(x), ctx.Stream);
                using var gb = ctx.Device.Allocate<BFloat16>(m * h);
                gb.CopyFrom(B(g), ctx.Stream);
                using var yb = ctx.Device.Allocate<BFloat16>(m * h);
                yb.Fill((BFloat16)float.NaN, ctx.Stream);
                using var dxb = ctx.Device.Allocate<BFloat16>(m * h);
                dxb.Fill((BFloat16)float.NaN, ctx.Stream);
                using var grads = new FeedForwardGradients(ctx.Device, ffn);
                using var saved = ffn.ForwardTraining(xb.AsMatrix(m, h), yb.AsMatrix(m, h));
                ffn.Backward(xb.AsMatrix(m, h), gb.AsMatrix(m, h), dxb.AsMatrix(m, h), grads, saved);
                ctx.Synchronize();
                long fr = plan.Size(ctx.Rank), off = plan.Offset(ctx.Rank);
                if (fr > 0)
                {
                    var gw1 = grads.DW1!.ToArray(ctx.Stream);
                    var gw2 = grads.DW2!.ToArray(ctx.Stream);
                    lock (dw1)
                    {
                        for (long c = 0; c < h; c++) Array.Copy(gw1, c * fr, dw1, c * f + off, fr);
                        Array.Copy(gw2, 0, dw2, off * h, fr * h);
                    }
                }
                if (ctx.Rank == 0)
                {
                    y0 = yb.ToArray(ctx.Stream).Select(BFloat16.ToBits).ToArray();
                    dx0 = dxb.ToArray(ctx.Stream).Select(BFloat16.ToBits).ToArray();
                    db2 = grads.DB2.ToArray(ctx.Stream);
                }
            });
            if (first is null)
            {
                first = (y0, dx0, dw1, dw2, db2);
                Assert.That(y0.Concat(dx0).All(bits => (bits & 0x7F80) != 0x7F80), Is.True, "Y and dX written and finite");
                continue;
            }
            Assert.That(y0, Is.EqualTo(first.Value.Y), $"p = {p}: bf16 Y vs p = 1");
            Assert.That(dx0, Is.EqualTo(first.Value.Dx), $"p = {p}: bf16 dX vs p = 1");
            Reference.AssertBitwise(dw1, first.Value.Dw1, $"p = {p}: dW1 vs p = 1");
            Reference.AssertBitwise(dw2, first.Value.Dw2, $"p = {p}: dW2 vs p = 1");
            Reference.AssertBitwise(db2, first.Value.Db2, $"p = {p}: db2 vs p = 1");
        }
    }

    // Columns [c0, c0 + n) of a rows × cols matrix written from a rows × n shard.
    private static void PutCols(float[] full, long cols, float[] shard, long rows, long c0, long n)
    {
        for (long i = 0; i < rows; i++) Array.Copy(shard, i * n, full, i * cols + c0, n);
    }

    private static IEnumerable<TestCaseData> BlockCases()
    {
        yield return new TestCaseData(FeedForwardKind.Gelu, SwNormKind.Layer, 8, 4, 0f, false).SetArgDisplayNames("GeLU", "LayerNorm", "8 heads / 4 kv", "standard");
        yield return new TestCaseData(FeedForwardKind.SwiGlu, SwNormKind.Rms, 4, 2, 0.1f, false).SetArgDisplayNames("SwiGLU", "RMSNorm", "4 heads / 2 kv (empty ranks at p = 4, 8)", "dropout");
        yield return new TestCaseData(FeedForwardKind.Relu, SwNormKind.Layer, 6, 6, 0f, false).SetArgDisplayNames("ReLU", "LayerNorm", "6 heads (MHA, uneven tree)", "standard");
        yield return new TestCaseData(FeedForwardKind.Gelu, SwNormKind.Layer, 8, 4, 0.1f, true).SetArgDisplayNames("GeLU", "LayerNorm", "8 heads / 4 kv", "sequence-parallel, dropout");
        yield return new TestCaseData(FeedForwardKind.SwiGlu, SwNormKind.Rms, 4, 2, 0f, true).SetArgDisplayNames("SwiGLU", "RMSNorm", "4 heads / 2 kv", "sequence-parallel");
    }

    /// <summary>The transformer block (attention with GQA, norms, residuals, dense or gated FFN, dropout) forward and backward:
    /// Y, dX and every parameter's gradient (the ranks' shards put together) are the same bits for p = 1, 2, 4, 8; in the
    /// sequence-parallel block too, but for the norms' gradients (each rank sums its own token rows: documented as not
    /// invariant).</summary>
    [TestCaseSource(nameof(BlockCases))]
    public void TransformerBlockIsBitIdentical(FeedForwardKind ffnKind, SwNormKind norm, int heads, int kvHeads, float dropout, bool sequenceParallel)
    {
        const long t = 5, b = 2, m = b * t, d = 4, f = 40, leaf = 8;
        long h = heads * d, qd = heads * d, kd = kvHeads * d;
        var o = new TransformerBlockOptions(h, heads, kvHeads, f, ffnKind, norm, Causal: true, Dropout: dropout);
        var rng = NewRandom();
        float[] R(long n, float scale = 0.5f) => RandomArray(rng, n, scale);
        var w = new Dictionary<string, float[]>
        {
            ["wq"] = R(h * qd), ["wk"] = R(h * kd), ["wv"] = R(h * kd), ["wo"] = R(qd * h), ["bq"] = R(qd, 0.2f), ["bk"] = R(kd, 0.2f),
            ["bv"] = R(kd, 0.2f), ["bo"] = R(h, 0.2f), ["w1"] = R(h * f), ["w2"] = R(f * h), ["b2"] = R(h, 0.2f), ["w3"] = R(h * f),
            ["b1"] = R(f, 0.2f), ["g1"] = R(h, 0.3f).Select(v => v + 1).ToArray(), ["g2"] = R(h, 0.3f).Select(v => v + 1).ToArray(),
            ["n1b"] = R(h, 0.2f), ["n2b"] = R(h, 0.2f),
        };
        bool gated = ffnKind == FeedForwardKind.SwiGlu, layer = norm == SwNormKind.Layer;
        WeightSource S(string n, long r, long c) => WeightSource.FromArray(w[n], r, c);
        var weights = new TransformerBlockWeights(S("wq", h, qd), S("wk", h, kd), S("wv", h, kd), S("wo", qd, h), S("w1", h, f), S("w2", f, h),
            gated ? S("w3", h, f) : null, S("bq", 1, qd), S("bk", 1, kd), S("bv", 1, kd), S("bo", 1, h), gated ? null : S("b1", 1, f), S("b2", 1, h),
            S("g1", 1, h), layer ? S("n1b", 1, h) : null, S("g2", 1, h), layer ? S("n2b", 1, h) : null);
        var x = R(m * h, 1f);
        var g = R(m * h, 1f);
        ulong seed = (ulong)rng.NextInt64();
        using var dev = OpenInvariant(leaf);
        Dictionary<string, float[]>? first = null;
        foreach (int p in Degrees)
        {
            var tokens = ShardingPlan.Even(m, p);
            var ys = new float[m * h];
            var dxs = new float[m * h];
            var all = new Dictionary<string, float[]>
            {
                ["dwq"] = new float[h * qd], ["dwk"] = new float[h * kd], ["dwv"] = new float[h * kd], ["dwo"] = new float[qd * h],
                ["dbq"] = new float[qd], ["dbk"] = new float[kd], ["dbv"] = new float[kd], ["dw1"] = new float[h * f], ["dw3"] = new float[h * f],
                ["db1"] = new float[f], ["dw2"] = new float[f * h],
            };
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(60));
            Spmd.Run(group, ctx =>
            {
                using var block = new ParallelTransformerBlock(ctx, o, weights);
                using var grads = new TransformerBlockGradients(ctx.Device, block);
                long r0 = sequenceParallel ? tokens.Offset(ctx.Rank) : 0, rows = sequenceParallel ? tokens.Size(ctx.Rank) : m;
                using var xb = Upload(x[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
                using var gb = Upload(g[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
                using var y = Poisoned(Math.Max(1, rows * h), ctx.Device, ctx.Stream);
                using var dx = Poisoned(Math.Max(1, rows * h), ctx.Device, ctx.Stream);
                var gen = new DropoutGenerator(seed, ctx.Rank);
                using var saved = sequenceParallel
                    ? block.ForwardTrainingSequenceParallel(xb.AsMatrix(rows, h), y.AsMatrix(rows, h), t, tokens, gen)
                    : block.ForwardTraining(xb.AsMatrix(m, h), y.AsMatrix(m, h), t, gen);
                block.Backward(xb.AsMatrix(rows, h), gb.AsMatrix(rows, h), dx.AsMatrix(rows, h), grads, saved);
                ctx.Synchronize();
                float[] A(DeviceBuffer<float>? buf) => buf?.ToArray(ctx.Stream) ?? [];
                var a = block.Attention;
                long q0 = a.QueryPlan.Offset(ctx.Rank), qn = a.QueryPlan.Size(ctx.Rank);
                long k0 = a.KvHeadPlan.Offset(ctx.Rank) * d, kn = a.KvHeadPlan.Size(ctx.Rank) * d;
                var fp = gated ? block.Gated!.Plan : block.Dense!.Plan;
                long f0 = fp.Offset(ctx.Rank), fn = fp.Size(ctx.Rank);
                lock (all)
                {
                    Array.Copy(y.ToArray(ctx.Stream), 0, ys, r0 * h, rows * h);
                    Array.Copy(dx.ToArray(ctx.Stream), 0, dxs, r0 * h, rows * h);
                    if (ctx.Rank == 0)
                    {
                        if (!sequenceParallel)
                        {
                            all["n1"] = A(grads.Norm1.Buffer);
                            all["n2"] = A(grads.Norm2.Buffer);
                        }
                        all["dbo"] = A(grads.Attention.DBo);
                        all["db2"] = gated ? A(grads.Gated!.DBDown) : A(grads.Dense!.DB2);
                    }
                    if (qn > 0)
                    {
                        PutCols(all["dwq"], qd, A(grads.Attention.DWq), h, q0, qn);
                        Array.Copy(A(grads.Attention.DWo), 0, all["dwo"], q0 * h, qn * h);
                        Array.Copy(A(grads.Attention.DBq), 0, all["dbq"], q0, qn);
                    }
                    if (kn > 0)
                    {
                        PutCols(all["dwk"], kd, A(grads.Attention.DWk), h, k0, kn);
                        PutCols(all["dwv"], kd, A(grads.Attention.DWv), h, k0, kn);
                        Array.Copy(A(grads.Attention.DBk), 0, all["dbk"], k0, kn);
                        Array.Copy(A(grads.Attention.DBv), 0, all["dbv"], k0, kn);
                    }
                    if (fn > 0)
                    {
                        if (gated)
                        {
                            var gu = A(grads.Gated!.DGateUp); // H × 2 f_r: [gate | up]
                            for (long i = 0; i < h; i++)
                            {
                                Array.Copy(gu, i * 2 * fn, all["dw1"], i * f + f0, fn);
                                Array.Copy(gu, i * 2 * fn + fn, all["dw3"], i * f + f0, fn);
                            }
                            Array.Copy(A(grads.Gated.DDown), 0, all["dw2"], f0 * h, fn * h);
                        }
                        else
                        {
                            PutCols(all["dw1"], f, A(grads.Dense!.DW1), h, f0, fn);
                            Array.Copy(A(grads.Dense.DB1), 0, all["db1"], f0, fn);
                            Array.Copy(A(grads.Dense.DW2), 0, all["dw2"], f0 * h, fn * h);
                        }
                    }
                }
            });
            all["y"] = ys;
            all["dx"] = dxs;
            if (first is null)
            {
                first = all;
                Assert.That(all["y"].Concat(all["dx"]).All(float.IsFinite), Is.True, "p = 1: Y and dX written");
                continue;
            }
            foreach (var (name, want) in first)
                Reference.AssertBitwise(all[name], want, $"p = {p}: {name} vs p = 1");
        }
    }

    /// <summary>The vocabulary-parallel cross-entropy: the loss, the log-sum-exp and the logits' gradient (the ranks' column
    /// shards put together) are the same bits for p = 1, 2, 4, 8 (vocabulary 100 in leaves of 8, an ignored row), and
    /// p = 1 is within fp32 of float64.</summary>
    [Test]
    public void VocabParallelCrossEntropyIsBitIdentical()
    {
        const long m = 9, v = 100, leaf = 8;
        var rng = NewRandom();
        var logits = RandomArray(rng, m * v, 4f);
        var targets = Enumerable.Range(0, (int)m).Select(_ => rng.Next((int)v)).ToArray();
        targets[3] = -1; // an ignored row (device targets)
        var dloss = RandomArray(rng, m).Select(x => x + 1.5f).ToArray();
        using var dev = OpenInvariant(leaf);
        float[][]? first = null;
        foreach (int p in Degrees)
        {
            var plan = TreeReduction.Plan(v, leaf, p);
            var dlogits = new float[m * v];
            float[] loss0 = [], lse0 = [];
            using var group = ProcessGroup.CreateLocal(dev, p, TimeSpan.FromSeconds(30));
            Spmd.Run(group, ctx =>
            {
                using var ce = new VocabParallelCrossEntropy(ctx, v);
                Assert.That(Enumerable.Range(0, p).Select(ce.VocabPlan.Size), Is.EqualTo(Enumerable.Range(0, p).Select(plan.Size)), "the tree's split");
                long v0 = plan.Offset(ctx.Rank), vr = plan.Size(ctx.Rank);
                var shard = new float[Math.Max(1, m * vr)];
                for (long i = 0; i < m; i++) Array.Copy(logits, i * v + v0, shard, i * vr, vr);
                using var z = Upload(shard, ctx.Device, ctx.Stream);
                using var ids = ctx.Device.Allocate<int>(m);
                ids.CopyFrom(targets, ctx.Stream);
                using var lse = Poisoned(m, ctx.Device, ctx.Stream);
                using var loss = Poisoned(m, ctx.Device, ctx.Stream);
                using var dl = Upload(dloss, ctx.Device, ctx.Stream);
                using var dz = Poisoned(Math.Max(1, m * vr), ctx.Device, ctx.Stream);
                var zv = z.AsMatrix(m, vr, Math.Max(1, vr));
                ce.Forward(zv, ids, lse, loss);
                ce.Backward(zv, ids, lse, dl, dz.AsMatrix(m, vr, Math.Max(1, vr)));
                ctx.Synchronize();
                var g = dz.ToArray(ctx.Stream);
                lock (dlogits)
                {
                    for (long i = 0; i < m; i++) Array.Copy(g, i * vr, dlogits, i * v + v0, vr);
                    if (ctx.Rank == 0) { loss0 = loss.ToArray(ctx.Stream); lse0 = lse.ToArray(ctx.Stream); }
                }
            });
            var all = new[] { loss0, lse0, dlogits };
            if (first is null)
            {
                first = all;
                for (long i = 0; i < m; i++)
                {
                    if (targets[i] < 0) { Assert.That(loss0[i], Is.EqualTo(0f), $"ignored row {i}"); continue; }
                    double mx = Enumerable.Range(0, (int)v).Max(j => (double)logits[i * v + j]);
                    double lse64 = mx + Math.Log(Enumerable.Range(0, (int)v).Sum(j => Math.Exp(logits[i * v + j] - mx)));
                    Assert.That(loss0[i], Is.EqualTo(lse64 - logits[i * v + targets[i]]).Within(1e-5 * (1 + Math.Abs(lse64))), $"p = 1 loss[{i}] vs float64");
                }
                continue;
            }
            string[] names = ["loss", "lse", "dlogits"];
            for (int q = 0; q < names.Length; q++) Reference.AssertBitwise(all[q], first[q], $"p = {p}: {names[q]} vs p = 1");
        }
    }

    /// <summary>The hybrid-parallel example (tests/MultiProcess/HybridScenario: 4 residual FFN blocks, 3 SGD steps, 1F1B over
    /// 2 pipeline stages, 2 data-parallel replicas) on a 2 × 2 × tp mesh of virtual ranks: the trained weights and losses
    /// are the same bits for tp = 1, 2, 4 and 8.</summary>
    [Test]
    public void HybridExampleTrainsBitIdenticallyAcrossTensorParallelDegrees()
    {
        const int pp = 2, dp = 2;
        const long leaf = 2; // F = 12: 6 leaves (tp = 8 leaves two ranks of each stage without hidden features)
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var d = new HybridScenario.Data(seed);
        using var dev = OpenInvariant(leaf);
        float[][][]? first = null;
        double[]? firstLoss = null;
        foreach (int tp in Degrees)
        {
            int world = pp * dp * tp;
            var shards = new (int, float[], float[], float[], float[])[world][];
            var losses = new double[world][];
            using var group = ProcessGroup.CreateLocal(dev, world, TimeSpan.FromSeconds(60));
            using (var mesh = HybridScenario.Mesh(group, pp, dp, tp))
                Spmd.Run(group, ctx => shards[ctx.Rank] = HybridScenario.Train(mesh[ctx.Rank], d, out losses[ctx.Rank]));
            var weights = HybridScenario.Assemble(shards, pp, dp, tp, 0, leaf);
            var loss = losses[(1 * dp + 0) * tp]; // the last stage of replica 0
            TestContext.Out.WriteLine($"tp = {tp}: losses {string.Join(", ", loss)}; W1[0] head {string.Join(", ", weights[0][0].Take(6))}");
            if (first is null)
            {
                first = weights;
                firstLoss = loss;
                Assert.That(weights.SelectMany(l => l).SelectMany(v => v).All(float.IsFinite), Is.True, "every parameter assembled");
                continue;
            }
            for (int l = 0; l < HybridScenario.Layers; l++)
                for (int q = 0; q < 4; q++)
                    Reference.AssertBitwise(weights[l][q], first[l][q], $"tp = {tp}: layer {l} parameter {q} vs tp = 1");
            Assert.That(loss, Is.EqualTo(firstLoss), $"tp = {tp}: the losses vs tp = 1");
        }
    }

    /// <summary>SumTree all-reduce and reduce-scatter on the in-process group: the tree's order (a C# reference), for any
    /// world size, f32 and bf16 (summed in fp32, rounded once); the rank-order reference differs (the test can tell); ranks
    /// passing different ops fail with a mismatch.</summary>
    [Test]
    public void SumTreeCollectivesAddInTheTreesOrder([Values(1, 2, 3, 4, 5, 8)] int p)
    {
        const int count = 1000;
        var rng = NewRandom();
        var inputs = Enumerable.Range(0, p).Select(_ => RandomArray(rng, count * p)).ToArray();
        var want = new float[count * p];
        var seq = new float[count * p];
        var col = new float[p];
        for (int i = 0; i < count * p; i++)
        {
            for (int q = 0; q < p; q++) col[q] = inputs[q][i];
            want[i] = TreeSum(col, 0, p);
            float s = col[0];
            for (int q = 1; q < p; q++) s += col[q];
            seq[i] = s;
        }
        if (p >= 4) Assert.That(want.Where((v, i) => v != seq[i]).Count(), Is.GreaterThan(0), "the tree order and rank order differ here");
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var reduced = new float[p][];
        var scattered = new float[p][];
        var bf = new BFloat16[p][];
        Spmd.Run(group, ctx =>
        {
            using var send = ctx.Device.Allocate<float>(count * p);
            send.CopyFrom(inputs[ctx.Rank], ctx.Stream);
            using var recv = Poisoned(count * p, ctx.Device, ctx.Stream);
            ctx.AllReduce(send, recv, op: SwReduceOp.SumTree);
            using var part = Poisoned(count, ctx.Device, ctx.Stream);
            ctx.ReduceScatter(send, part, op: SwReduceOp.SumTree);
            using var s16 = ctx.Device.Allocate<BFloat16>(count);
            s16.CopyFrom(inputs[ctx.Rank].Take(count).Select(v => (BFloat16)v).ToArray(), ctx.Stream);
            ctx.AllReduce(s16, s16, op: SwReduceOp.SumTree);
            ctx.Synchronize();
            reduced[ctx.Rank] = recv.ToArray(ctx.Stream);
            scattered[ctx.Rank] = part.ToArray(ctx.Stream);
            bf[ctx.Rank] = s16.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            Reference.AssertBitwise(reduced[r], want, $"all-reduce on rank {r}");
            Reference.AssertBitwise(scattered[r], want.Skip(r * count).Take(count).ToArray(), $"reduce-scatter block of rank {r}");
            for (int i = 0; i < count; i++)
            {
                for (int q = 0; q < p; q++) col[q] = (float)(BFloat16)inputs[q][i];
                Assert.That(bf[r][i], Is.EqualTo((BFloat16)TreeSum(col, 0, p)), $"bf16 all-reduce [{i}] on rank {r}");
            }
        }
        if (p < 2) return;
        var errors = new Exception?[p];
        Spmd.Run(group, ctx =>
        {
            using var b = ctx.Device.Allocate<float>(8);
            b.Fill(1f, ctx.Stream);
            try
            {
                ctx.AllReduce(b, b, op: ctx.Rank == 0 ? SwReduceOp.SumTree : SwReduceOp.Sum);
                ctx.Synchronize();
            }
            catch (Exception e) { errors[ctx.Rank] = e; }
        });
        for (int r = 0; r < p; r++)
        {
            Assert.That(errors[r], Is.InstanceOf<ShardwiseException>(), $"rank {r}");
            Assert.That(((ShardwiseException)errors[r]!).Status, Is.EqualTo(SwStatus.Mismatch), $"rank {r}");
            Assert.That(errors[r]!.Message, Does.Contain("SW_REDUCE_SUM_TREE"), $"rank {r}");
        }
    }
}
