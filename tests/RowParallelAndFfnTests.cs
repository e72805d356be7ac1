using Shardwise.Parallel;

namespace Shardwise.Tests;

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class RowParallelAndFfnTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> RowCases()
    {
        foreach (var (m, k, n) in new[] { (1L, 5L, 7L), (23L, 61L, 19L), (64L, 130L, 48L) })
            for (int p = 1; p <= 8; p++)
                foreach (bool parallelInput in new[] { true, false })
                    yield return new TestCaseData(m, k, n, p, parallelInput).SetArgDisplayNames($"{m}x{k}x{n}", $"p={p}", parallelInput ? "parallel-in" : "split-on-entry");
    }

    /// <summary>Row-parallel Y = X·W + b on every rank: partial products all-reduced, K split evenly or not (K &lt; p too).</summary>
    [TestCaseSource(nameof(RowCases))]
    public void RowParallelMatchesTheFloat64Reference(long m, long k, long n, int p, bool parallelInput)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var results = new float[p][];
        const long pad = 3; // y with a leading dimension larger than N exercises the strided path
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), parallelInput);
            long kr = layer.LocalInFeatures, off = layer.LocalInOffset;
            long cols = parallelInput ? kr : k;
            var xr = new float[Math.Max(1, m * cols)];
            for (long i = 0; i < m; i++)
                Array.Copy(x, i * k + (parallelInput ? off : 0), xr, i * cols, cols);
            using var dx = ctx.Device.Allocate<float>(xr.Length);
            dx.CopyFrom(xr, ctx.Stream);
            long ld = ctx.Rank % 2 == 0 ? n : n + pad;
            using var y = ctx.Device.Allocate<float>(m * ld);
            y.Fill(float.NaN, ctx.Stream);
            layer.Forward(dx.AsMatrix(m, cols, Math.Max(1, cols)), y.AsMatrix(m, n, ld));
            ctx.Synchronize();
            var all = y.ToArray(ctx.Stream);
            var compact = new float[m * n];
            for (long i = 0; i < m; i++) Array.Copy(all, i * ld, compact, i * n, n);
            results[ctx.Rank] = compact;
        });
        for (int r = 0; r < p; r++)
            Reference.AssertClose(results[r], n, want, mag, m, n, k, $"rank {r}");
        for (int r = 1; r < p; r++)
            Reference.AssertBitwise(results[r], results[0], $"rank {r} vs rank 0 (the all-reduce gives every rank the same bits)");
        Assert.That(group.CollectiveCount(0), Is.EqualTo(1UL), "one all-reduce per forward");
    }

    private static IEnumerable<TestCaseData> FfnCases()
    {
        foreach (var (m, h, f) in new[] { (5L, 16L, 6L), (17L, 40L, 97L), (32L, 64L, 256L) })
            for (int p = 1; p <= 8; p++)
                yield return new TestCaseData(m, h, f, p).SetArgDisplayNames($"M={m}", $"H={h}", $"F={f}", $"p={p}");
    }

    /// <summary>Y = GeLU(X·W1 + b1)·W2 + b2 with exactly one collective (an all-reduce) per forward, F split unevenly.</summary>
    [TestCaseSource(nameof(FfnCases))]
    public void FeedForwardUsesOneAllReduceAndMatchesTheReference(long m, long h, long f, int p)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * h);
        var w1 = RandomArray(rng, h * f, 0.5f);
        var b1 = RandomArray(rng, f);
        var w2 = RandomArray(rng, f * h, 0.5f);
        var b2 = RandomArray(rng, h);

        var (want, tol) = Reference.FeedForward(x, w1, b1, w2, b2, m, h, f);

        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var results = new float[p][];
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
            using var dx = ctx.Device.Allocate<float>(m * h);
            dx.CopyFrom(x, ctx.Stream);
            using var y = ctx.Device.Allocate<float>(m * h);
            y.Fill(float.NaN, ctx.Stream);
            ffn.Forward(dx.AsMatrix(m, h), y.AsMatrix(m, h));
            ctx.Synchronize();
            results[ctx.Rank] = y.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            int bad = 0;
            string first = "";
            for (long i = 0; i < m * h; i++)
                if (!(Math.Abs(results[r][i] - want[i]) <= tol[i]) && bad++ == 0)
                    first = $"[{i}] got {results[r][i]:R}, expected {want[i]:R} ± {tol[i]:E2}";
            Assert.That(bad, Is.Zero, $"rank {r}: {bad} wrong; first {first}");
        }
        for (int r = 0; r < p; r++)
            Assert.That(group.CollectiveCount(r), Is.EqualTo(1UL), $"rank {r}: collectives per FFN forward");
    }

    private static IEnumerable<TestCaseData> SequenceCases()
    {
        foreach (var (m, h, f) in new[] { (3L, 16L, 10L), (29L, 24L, 70L) })
            for (int p = 1; p <= 8; p++)
                yield return new TestCaseData(m, h, f, p).SetArgDisplayNames($"M={m}", $"H={h}", $"F={f}", $"p={p}");
    }

    /// <summary>Sequence parallelism: tokens split unevenly (M &lt; p too); all-gather in, reduce-scatter out; each rank
    /// gets exactly its rows of the float64 reference, from RowParallelLinear.ForwardScatter and the SP FFN.</summary>
    [TestCaseSource(nameof(SequenceCases))]
    public void SequenceParallelFeedForwardLeavesEachRankItsRows(long m, long h, long f, int p)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * h);
        var w1 = RandomArray(rng, h * f, 0.5f);
        var b1 = RandomArray(rng, f);
        var w2 = RandomArray(rng, f * h, 0.5f);
        var b2 = RandomArray(rng, h);
        var (ffnWant, ffnTol) = Reference.FeedForward(x, w1, b1, w2, b2, m, h, f);
        var tokens = ShardingPlan.Even(m, p);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var ys = new float[p][];
        var rowOut = new float[p][];
        Spmd.Run(group, ctx =>
        {
            long mr = tokens.Size(ctx.Rank), r0 = tokens.Offset(ctx.Rank);
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
            using var xr = ctx.Device.Allocate<float>(Math.Max(1, mr * h));
            if (mr > 0) xr.CopyFrom(x.AsSpan((int)(r0 * h), (int)(mr * h)), ctx.Stream);
            using var yr = Poisoned(Math.Max(1, mr * (h + 2)), ctx.Device, ctx.Stream);
            ffn.ForwardSequenceParallel(xr.AsMatrix(mr, h), yr.AsMatrix(mr, h, h + 2), tokens); // strided output
            // The row-parallel layer alone, scattering the full input's product.
            using var row = new RowParallelLinear(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f));
            using var xf = ctx.Device.Allocate<float>(m * h);
            xf.CopyFrom(x, ctx.Stream);
            using var ro = Poisoned(Math.Max(1, mr * f), ctx.Device, ctx.Stream);
            row.ForwardScatter(xf.AsMatrix(m, h), ro.AsMatrix(mr, f), tokens);
            ctx.Synchronize();
            var all = yr.ToArray(ctx.Stream);
            ys[ctx.Rank] = Enumerable.Range(0, (int)mr).SelectMany(i => all.Skip(i * (int)(h + 2)).Take((int)h)).ToArray();
            rowOut[ctx.Rank] = ro.ToArray(ctx.Stream)[..(int)(mr * f)];
        });
        var (lin, linMag) = Reference.Gemm(x, h, false, w1, f, false, m, f, h, bias: b1);
        for (int r = 0; r < p; r++)
        {
            long mr = tokens.Size(r), r0 = tokens.Offset(r);
            for (long i = 0; i < mr; i++)
            {
                for (long j = 0; j < h; j++)
                    Assert.That(ys[r][i * h + j], Is.EqualTo(ffnWant[(r0 + i) * h + j]).Within(ffnTol[(r0 + i) * h + j]),
                        $"FFN rank {r} row {r0 + i} col {j}");
                for (long j = 0; j < f; j++)
                {
                    double want = lin[(r0 + i) * f + j];
                    double tol = Reference.Bound(linMag[(r0 + i) * f + j], h) + 2e-7 * Math.Abs(want);
                    Assert.That(rowOut[r][i * f + j], Is.EqualTo(want).Within(tol), $"row-parallel rank {r} row {r0 + i} col {j}");
                }
            }
        }
    }

    [Test]
    public void RowParallelWithAnEmptyShardOnRankZeroStillAddsTheBiasOnce()
    {
        var rng = NewRandom();
        const long m = 6, k = 11, n = 9;
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);
        var plan = ShardingPlan.FromSizes(0, 3, 0, 8);
        using var group = ProcessGroup.CreateLocal(Dev, 4, TimeSpan.FromSeconds(30));
        var results = new float[4][];
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), plan: plan);
            using var dx = ctx.Device.Allocate<float>(m * k);
            dx.CopyFrom(x, ctx.Stream);
            using var y = Poisoned(m * n, ctx.Device, ctx.Stream);
            layer.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, n));
            ctx.Synchronize();
            results[ctx.Rank] = y.ToArray(ctx.Stream);
        });
        for (int r = 0; r < 4; r++) Reference.AssertClose(results[r], n, want, mag, m, n, k, $"rank {r}");
    }

    [Test]
    public void BadShapesAreRejectedByName()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2);
        var ctx = group[0];
        using var row = new RowParallelLinear(ctx, WeightSource.FromArray(new float[8 * 3], 8, 3));
        using var buf = Dev.Allocate<float>(64);
        Assert.That(() => row.Forward(buf.AsMatrix(2, 4), buf.AsMatrix(2, 3)), Throws.ArgumentException.With.Property("ParamName").EqualTo("x"));
        Assert.That(() => row.Forward(buf.AsMatrix(2, 8), buf.AsMatrix(2, 4)), Throws.ArgumentException.With.Property("ParamName").EqualTo("y"));
        Assert.That(() => new ParallelFeedForward(ctx, WeightSource.FromArray(new float[12], 3, 4), null, WeightSource.FromArray(new float[12], 3, 4), null),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("w2"));
        Assert.That(() => new RowParallelLinear(ctx, WeightSource.FromArray(new float[24], 8, 3), plan: ShardingPlan.Even(7, 2)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("plan"));
    }
}
