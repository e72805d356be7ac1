using Shardwise.Parallel;

namespace Shardwise.Tests;

public class LayerPlanTests
{
    [Test]
    public void ColumnPlanCountsEachRanksShardAndExplainsBothLevels()
    {
        var plan = LayerPlan.ColumnParallel(1024, 1000, 3, tokens: 64);
        Assert.That(plan.Ranks.Select(r => r.ShardWidth), Is.EqualTo(new long[] { 334, 333, 333 }));
        Assert.That(plan.Ranks[0].WeightBytes, Is.EqualTo((1024L * 334 + 334) * 4));
        Assert.That(plan.Ranks[0].ActivationBytes, Is.EqualTo(64L * (1024 + 1000) * 4));
        Assert.That(plan.Ranks[0].WorkspaceBytes, Is.EqualTo(64L * 334 * 4));
        using var dev = Device.Cpu(2);
        var text = plan.Explain(dev);
        Assert.That(text, Does.Contain("level 1: 1000 over 3 ranks: [0, 334), [334, 667), [667, 1000)"));
        var t = dev.TileShape;
        Assert.That(t.Mr * t.Nr * t.Kc, Is.GreaterThan(0));
        Assert.That(text, Does.Contain($"register tile {t.Mr} x {t.Nr}").And.Contain($"KC {t.Kc}"));
    }

    [Test]
    public void FewestRanksIsTheSmallestWorldSizeThatFits()
    {
        // 4096 x 4096 float32 = 64 MiB of weights; with a 20 MiB budget: 64/p + bias <= 20 MiB -> p = 4.
        Func<int, LayerPlan> plan = p => LayerPlan.ColumnParallel(4096, 4096, p, tokens: 0, bias: false);
        Assert.That(LayerPlan.FewestRanks(plan, 20L << 20), Is.EqualTo(4));
        Assert.That(LayerPlan.FewestRanks(plan, 16L << 20), Is.EqualTo(4));
        Assert.That(LayerPlan.FewestRanks(plan, (16L << 20) - 1), Is.EqualTo(5));
        Assert.That(LayerPlan.FewestRanks(plan, 64L << 20), Is.EqualTo(1));
        // Activations that are replicated on every rank never shrink: no world size fits.
        Assert.That(LayerPlan.FewestRanks(p => LayerPlan.ColumnParallel(16, 16, p, tokens: 1 << 20), 1 << 20, 64), Is.Zero);
    }

    [Test]
    public void ALayerWhoseShardDoesNotFitFailsUpFrontWithTheAnswer()
    {
        using var dev0 = Device.Cpu(1);
        using var dev1 = Device.Cpu(1);
        dev0.MemoryLimitBytes = dev1.MemoryLimitBytes = 3000; // bytes
        using var group = ProcessGroup.CreateLocal([dev0, dev1]); // one rank per device
        // 40 x 30 weights = 4800 B: 2400 B + bias per rank fits 3000? 20 x ... column split: 40 x 15 x 4 = 2400 + 60 = 2460 -> fits.
        Assert.DoesNotThrow(() => Spmd.Run(group, ctx => new ColumnParallelLinear(ctx, WeightSource.FromArray(new float[40 * 30], 40, 30),
            WeightSource.FromArray(new float[30], 1, 30)).Dispose()));
        // 40 x 60: 40 x 30 x 4 = 4800 B per rank > 3000: fails before loading anything, naming 4 ranks (2400 + 60 B).
        var loads = 0;
        var source = WeightSource.FromLoader(40, 60, (_, _, _, _, dst) => { Interlocked.Increment(ref loads); dst.Clear(); });
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx => new ColumnParallelLinear(ctx, source, WeightSource.FromArray(new float[60], 1, 60)).Dispose()));
        var inner = ex!.RankErrors[0] as InsufficientDeviceMemoryException;
        Assert.That(inner, Is.Not.Null, ex.Message);
        Assert.That(inner!.FewestRanks, Is.EqualTo(4));
        Assert.That(inner.Message, Does.Contain("fits on 4 ranks"));
        Assert.That(loads, Is.Zero, "nothing was loaded before the check");
    }

    [Test]
    public void WithRanksKeepsTheLayersOptions()
    {
        var plan = LayerPlan.RowParallel(64, 32, 2, tokens: 10, bias: false, inputIsParallel: false);
        var four = plan.WithRanks(4);
        Assert.That(four.Ranks[0].WeightBytes, Is.EqualTo(16L * 32 * 4), "no bias on rank 0");
        Assert.That(four.Ranks[0].ActivationBytes, Is.EqualTo(10L * (64 + 32) * 4), "the whole input, as planned");
        var col = LayerPlan.ColumnParallel(8, 12, 2, tokens: 3, bias: false, gatherOutput: false).WithRanks(3);
        Assert.That(col.Ranks[0].ActivationBytes, Is.EqualTo(3L * (8 + 4) * 4));
        Assert.That(col.Ranks[0].WorkspaceBytes, Is.Zero);
    }

    [Test]
    public void VirtualRanksOnOneDeviceAddUp()
    {
        using var dev = Device.Cpu(1);
        dev.MemoryLimitBytes = 3000;
        using var group = ProcessGroup.CreateLocal(dev, 2);
        // 20 x 30 floats = 2400 B in all: fits one device even when both virtual ranks hold their halves there.
        Assert.DoesNotThrow(() => new ShardedGemm(group, WeightSource.FromArray(new float[20 * 30], 20, 30)).Dispose());
        // 40 x 30 = 4800 B: each half (2400 B) would fit a device of its own, but both halves share this one.
        var ex = Assert.Throws<InsufficientDeviceMemoryException>(() => new ShardedGemm(group, WeightSource.FromArray(new float[40 * 30], 40, 30)));
        Assert.That(ex!.Message, Does.Contain("ranks 0, 1 share one device").And.Contain("fits on 2 devices"));
        Assert.That(ex.FewestRanks, Is.EqualTo(2));
    }

    [Test]
    public void FeedForwardAndRowPlansAndBadArguments()
    {
        var ffn = LayerPlan.FeedForward(512, 2048, 4, tokens: 16, training: true);
        Assert.That(ffn.Ranks[0].WeightBytes, Is.EqualTo(2 * (2L * 512 * 512 + 512 + 512) * 4));
        Assert.That(ffn.Ranks[1].WeightBytes, Is.EqualTo(2 * (2L * 512 * 512 + 512) * 4), "b2 lives on rank 0 only");
        var row = LayerPlan.RowParallel(10, 7, 4);
        Assert.That(row.Ranks.Select(r => r.ShardWidth), Is.EqualTo(new long[] { 3, 3, 2, 2 }));
        Assert.That(row.Explain(), Does.Contain("row-parallel 10 x 7").And.Contain("level 2: pass a device"));
        Assert.That(() => LayerPlan.ColumnParallel(0, 4, 2), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => LayerPlan.ColumnParallel(4, 4, 2, split: ShardingPlan.Even(5, 2)), Throws.ArgumentException.With.Property("ParamName").EqualTo("split"));
        Assert.That(() => LayerPlan.FewestRanks(p => row, 0), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    /// <summary>The bias of a row-parallel layer lives on rank 0 only (the others' partial products are summed into its
    /// output): the plan counts it there and nowhere else, and says what the layer really holds on every rank.</summary>
    [TestCase(false)]
    [TestCase(true)]
    public void RowParallelPlanCountsTheBiasOnRankZeroOnly(bool training)
    {
        const long k = 11, n = 9, tokens = 5;
        var split = ShardingPlan.FromSizes(4, 0, 5, 2); // uneven, one empty shard
        var plan = LayerPlan.RowParallel(k, n, 4, tokens: tokens, bias: true, training: training, split: split);
        var noBias = LayerPlan.RowParallel(k, n, 4, tokens: tokens, bias: false, training: training, split: split);
        long factor = training ? 2 : 1; // + gradients
        for (int r = 0; r < 4; r++)
        {
            long expected = factor * (split.Size(r) * n + (r == 0 ? n : 0)) * 4;
            Assert.That(plan.Ranks[r].WeightBytes, Is.EqualTo(expected), $"rank {r}: weight{(r == 0 ? " and bias" : "")} shard");
            Assert.That(plan.Ranks[r].WeightBytes - noBias.Ranks[r].WeightBytes, Is.EqualTo(r == 0 ? factor * n * 4 : 0),
                $"rank {r}: what the bias adds");
        }
        Assert.That(plan.MaxWeightBytesPerDevice, Is.EqualTo(factor * (5 * n) * 4), "rank 2's 5 rows, no bias, is the largest");
        Assert.That(plan.WithRanks(4).Ranks.Select(x => x.WeightBytes).Sum() - noBias.WithRanks(4).Ranks.Select(x => x.WeightBytes).Sum(),
            Is.EqualTo(factor * n * 4), "WithRanks keeps the bias on rank 0 only");

        // What the layer really holds on each rank matches the plan (inference figures: no gradients).
        if (training) return;
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        var w = Enumerable.Range(0, (int)(k * n)).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var b = Enumerable.Range(0, (int)n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        using var dev = Device.Cpu(1);
        using var group = ProcessGroup.CreateLocal(dev, 4);
        var held = new long[4];
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(b, 1, n), plan: split);
            held[ctx.Rank] = ((layer.Weight?.Length ?? 0) + (layer.Bias?.Length ?? 0)) * 4;
        });
        Assert.That(held, Is.EqualTo(plan.Ranks.Select(x => x.WeightBytes).ToArray()), "bytes each rank's layer holds vs the plan");
    }
}
