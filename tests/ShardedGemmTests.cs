using Shardwise.Parallel;

namespace Shardwise.Tests;

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class ShardedGemmTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Cases()
    {
        long[][] shapes = [[1, 64, 40], [33, 1, 29], [50, 97, 131], [64, 128, 128], [7, 300, 5], [128, 65, 257]];
        foreach (var s in shapes)
            for (int p = 1; p <= 8; p++)
                yield return new TestCaseData(s[0], s[1], s[2], p).SetArgDisplayNames($"{s[0]}x{s[1]}x{s[2]}", $"p={p}");
        // Skinny M over a W of 4 MiB and more (the CPU's row-walking kernel; a shard below 4 MiB takes the packed
        // path, so p = 3 compares the two paths bit for bit).
        long[][] skinny = [[3, 2048, 1043], [1, 1100, 4000]];
        foreach (var s in skinny)
            foreach (int p in new[] { 1, 2, 3, 4 })
                yield return new TestCaseData(s[0], s[1], s[2], p).SetArgDisplayNames($"{s[0]}x{s[1]}x{s[2]}", $"p={p}");
    }

    /// <summary>Column-parallel Y equals the float64 reference and the unsharded GEMM bit for bit, for even,
    /// uneven and N &lt; p splits.</summary>
    [TestCaseSource(nameof(Cases))]
    public void ColumnShardedEqualsUnshardedBitForBit(long m, long k, long n, int p)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        using var dx = Upload(x);
        using var dw = Upload(w);
        using var yFull = Poisoned(m * n);
        using var ySharded = Poisoned(m * n);
        Gemm.Multiply(Str, dx.AsMatrix(m, k), dw.AsMatrix(k, n), yFull.AsMatrix(m, n));
        Str.Synchronize();

        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        Assert.That(gemm.Plan.Total, Is.EqualTo(n));
        gemm.Forward(dx.AsMatrix(m, k), ySharded.AsMatrix(m, n));

        var got = ySharded.ToArray(Str);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k);
        Reference.AssertClose(got, n, want, mag, m, n, k, "sharded Y");
        Reference.AssertBitwise(got, yFull.ToArray(Str), "sharded vs unsharded");
    }

    [Test]
    public void ExplicitUnevenPlanWithEmptyShardsAndBias()
    {
        var rng = NewRandom();
        const long m = 19, k = 45, n = 23;
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        using var dx = Upload(x);
        using var dbias = Upload(bias);
        using var y = Poisoned(m * n);
        using var group = ProcessGroup.CreateLocal(Dev, 5);
        var plan = ShardingPlan.FromSizes(0, 10, 0, 12, 1);
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n), plan);
        Assert.That(gemm.Shard(0), Is.Null);
        gemm.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, n), dbias, Epilogue.Gelu);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias, gelu: true);
        Reference.AssertClose(y.ToArray(Str), n, want, mag, m, n, k, "Y");
    }

    [Test]
    public void WeightsAreLoadedShardByShardNeverWhole()
    {
        var rng = NewRandom();
        const long m = 8, k = 40, n = 50;
        var w = RandomArray(rng, k * n);
        var requests = new List<(long Row, long Col, long Rows, long Cols)>();
        var source = WeightSource.FromLoader(k, n, (r0, c0, rows, cols, dst) =>
        {
            lock (requests) requests.Add((r0, c0, rows, cols));
            for (long i = 0; i < rows; i++)
                for (long j = 0; j < cols; j++)
                    dst[(int)(i * cols + j)] = w[(r0 + i) * n + c0 + j];
        });
        using var group = ProcessGroup.CreateLocal(Dev, 3);
        using var gemm = new ShardedGemm(group, source);
        var plan = gemm.Plan;
        Assert.That(requests.Select(r => r.Cols), Is.All.LessThanOrEqualTo(plan.MaxSize), "a request wider than one shard");
        Assert.That(requests.Sum(r => r.Rows * r.Cols), Is.EqualTo(k * n), "every element loaded exactly once");

        var x = RandomArray(rng, m * k);
        using var dx = Upload(x);
        using var y = Poisoned(m * n);
        gemm.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, n));
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k);
        Reference.AssertClose(y.ToArray(Str), n, want, mag, m, n, k, "Y");
    }

    [Test]
    public void BadShapesAndPlansAreRejectedByName()
    {
        var w = new float[6 * 4];
        using var group = ProcessGroup.CreateLocal(Dev, 2);
        Assert.That(() => new ShardedGemm(group, WeightSource.FromArray(w, 6, 4), ShardingPlan.Even(5, 2)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("plan"));
        Assert.That(() => new ShardedGemm(group, WeightSource.FromArray(w, 6, 4), ShardingPlan.Even(4, 3)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("plan"));
        Assert.That(() => WeightSource.FromArray(w, 5, 4), Throws.ArgumentException.With.Property("ParamName").EqualTo("data"));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, 6, 4));
        using var x = Dev.Allocate<float>(64);
        using var y = Dev.Allocate<float>(64);
        Assert.That(() => gemm.Forward(x.AsMatrix(2, 5), y.AsMatrix(2, 4)), Throws.ArgumentException.With.Property("ParamName").EqualTo("x"));
        Assert.That(() => gemm.Forward(x.AsMatrix(2, 6), y.AsMatrix(3, 4)), Throws.ArgumentException.With.Property("ParamName").EqualTo("y"));
        Assert.That(() => gemm.Forward(x.AsMatrix(2, 6), y.AsMatrix(2, 5)), Throws.ArgumentException.With.Property("ParamName").EqualTo("y"));
    }
}

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class ColumnParallelLinearTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var (m, k, n) in new[] { (1L, 16L, 3L), (29L, 61L, 37L), (64L, 96L, 128L) })
            for (int p = 1; p <= 8; p++)
                foreach (bool gather in new[] { true, false })
                    yield return new TestCaseData(m, k, n, p, gather).SetArgDisplayNames($"{m}x{k}x{n}", $"p={p}", gather ? "gather" : "sharded");
    }

    /// <summary>SPMD: every rank on its own host thread; gathered output equals the unsharded GEMM (with bias) bit for bit on every rank.</summary>
    [TestCaseSource(nameof(Cases))]
    public void ForwardOnEveryRankMatchesTheUnshardedLayer(long m, long k, long n, int p, bool gather)
    {
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        using var dx = Upload(x);
        using var dw = Upload(w);
        using var db = Upload(bias);
        using var full = Poisoned(m * n);
        Gemm.Multiply(Str, dx.AsMatrix(m, k), dw.AsMatrix(k, n), full.AsMatrix(m, n), bias: db);
        var expectedBits = full.ToArray(Str);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);

        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var results = new float[p][];
        var offsets = new long[p];
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), gather);
            using var xr = ctx.Device.Allocate<float>(m * k);
            xr.CopyFrom(x, ctx.Stream);
            long cols = gather ? n : layer.LocalOutFeatures;
            using var y = ctx.Device.Allocate<float>(Math.Max(1, m * cols));
            y.Fill(float.NaN, ctx.Stream);
            layer.Forward(xr.AsMatrix(m, k), y.AsMatrix(m, cols, Math.Max(1, cols)));
            ctx.Synchronize();
            results[ctx.Rank] = cols == 0 ? [] : y.ToArray(ctx.Stream);
            offsets[ctx.Rank] = layer.LocalOutOffset;
        });

        for (int r = 0; r < p; r++)
        {
            if (gather)
            {
                Reference.AssertClose(results[r], n, want, mag, m, n, k, $"rank {r}");
                Reference.AssertBitwise(results[r], expectedBits, $"rank {r} vs unsharded");
            }
            else
            {
                long cols = results[r].Length / m;
                var slice = new float[m * cols];
                for (long i = 0; i < m; i++)
                    Array.Copy(expectedBits, i * n + offsets[r], slice, i * cols, cols);
                Reference.AssertBitwise(results[r], slice, $"rank {r} local slice");
            }
        }
        Assert.That(group.CollectiveCount(0), Is.EqualTo(gather ? 1UL : 0UL), "collectives per forward");
    }

    [Test]
    public void WrongInputShapeIsRejectedOnTheRank()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(new float[12], 3, 4));
        using var buf = Dev.Allocate<float>(64);
        Assert.That(() => layer.Forward(buf.AsMatrix(2, 4), buf.AsMatrix(2, 4)), Throws.ArgumentException.With.Property("ParamName").EqualTo("x"));
        Assert.That(() => layer.Forward(buf.AsMatrix(2, 3), buf.AsMatrix(2, 5)), Throws.ArgumentException.With.Property("ParamName").EqualTo("y"));
        Assert.That(() => new ColumnParallelLinear(ctx, WeightSource.FromArray(new float[12], 3, 4), WeightSource.FromArray(new float[3], 1, 3)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("bias"));
    }
}
