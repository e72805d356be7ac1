using Shardwise.Parallel;

namespace Shardwise.Tests;

// MeshPlan: memory per stage on a pp × dp × tp mesh, the idle fraction, the smallest mesh. The figures are checked
// against LayerPlan (the per-layer plan they are built from) and against their definitions, recomputed here.
public class MeshPlanTests
{
    [TestCase(1, 1, 1, 1)]
    [TestCase(2, 2, 2, 4)]
    [TestCase(4, 1, 3, 8)]
    [TestCase(3, 2, 1, 5)]
    public void StageWeightsAreTheirLayersFeedForwardShardsAndTheStashFollowsTheSchedule(int pp, int dp, int tp, int m)
    {
        const int layers = 7;
        const long h = 96, f = 250, batch = 1000;
        var gpipe = MeshPlan.FeedForwardStack(layers, h, f, batch, pp, dp, tp, m, PipelineSchedule.GPipe);
        var oneF = MeshPlan.FeedForwardStack(layers, h, f, batch, pp, dp, tp, m);
        long t = (batch + dp - 1) / dp;
        t = (t + m - 1) / m;
        Assert.That(gpipe.MicroBatchTokens, Is.EqualTo(t));
        var layer = LayerPlan.FeedForward(h, f, tp, tokens: t, training: true).Ranks[0];
        Assert.That(gpipe.LayersPerStage.Sum(), Is.EqualTo(layers));
        Assert.That(gpipe.LayersPerStage.Max() - gpipe.LayersPerStage.Min(), Is.LessThanOrEqualTo(1), "as even as possible");
        int first = 0;
        for (int s = 0; s < pp; s++)
        {
            var g = gpipe.Stages[s];
            var o = oneF.Stages[s];
            Assert.That(g.FirstLayer, Is.EqualTo(first));
            first += g.Layers;
            Assert.That(g.WeightBytes, Is.EqualTo(g.Layers * layer.WeightBytes), "weights and gradients of its layers");
            Assert.That(g.StashBytesPerMicroBatch, Is.EqualTo(g.Layers * (t * h + 3 * t * layer.ShardWidth) * 4));
            Assert.That(g.PeakMicroBatches, Is.EqualTo(m), "GPipe keeps every micro-batch");
            Assert.That(o.PeakMicroBatches, Is.EqualTo(Math.Min(m, pp - s)), "1F1B keeps at most pp - stage");
            Assert.That(g.TotalBytes, Is.EqualTo(g.WeightBytes + m * g.StashBytesPerMicroBatch + g.WorkingBytes));
            Assert.That(o.TotalBytes, Is.LessThanOrEqualTo(g.TotalBytes));
        }
        Assert.That(gpipe.Devices, Is.EqualTo(pp * dp * tp));
        Assert.That(oneF.Explain(), Does.Contain("1F1B").And.Contain($"pp {pp} × dp {dp} × tp {tp}"));
    }

    [TestCase(1, 1)]
    [TestCase(2, 1)]
    [TestCase(2, 8)]
    [TestCase(4, 4)]
    [TestCase(4, 16)]
    public void EvenStagesIdleFractionIsTheBubbleFormula(int pp, int m)
    {
        foreach (var schedule in new[] { PipelineSchedule.GPipe, PipelineSchedule.OneForwardOneBackward })
        {
            var plan = MeshPlan.FeedForwardStack(4 * pp, 32, 64, 256, pp, 1, 1, m, schedule);
            Assert.That(plan.IdleFraction, Is.EqualTo((pp - 1) / (double)(m + pp - 1)).Within(1e-12), schedule.ToString());
        }
    }

    [Test]
    public void UnevenStagesIdleMoreThanEvenOnesAndMatchASimulatedTimeline()
    {
        // 5 layers on 2 stages as 4 + 1: the busy stage sets the pace. A direct simulation of the forward pipeline (each
        // stage starts micro-batch i when it finished i - 1 and the previous stage finished i) gives the makespan.
        int[] split = [4, 1];
        const int m = 3;
        var plan = MeshPlan.FeedForwardStack(5, 32, 64, 64, 2, 1, 1, m, layersPerStage: split);
        var even = MeshPlan.FeedForwardStack(6, 32, 64, 64, 2, 1, 1, m);
        var finish = new double[split.Length, m];
        for (int i = 0; i < m; i++)
            for (int s = 0; s < split.Length; s++)
            {
                double start = Math.Max(s > 0 ? finish[s - 1, i] : 0, i > 0 ? finish[s, i - 1] : 0);
                finish[s, i] = start + split[s];
            }
        double makespan = finish[split.Length - 1, m - 1];
        double simulatedIdle = 1 - m * split.Sum() / (split.Length * makespan);
        Assert.That(plan.IdleFraction, Is.EqualTo(simulatedIdle).Within(1e-12));
        Assert.That(plan.IdleFraction, Is.GreaterThan(even.IdleFraction));
    }

    [Test]
    public void SmallestMeshFitsAndNoMeshWithFewerDevicesDoes()
    {
        const int layers = 8;
        const long h = 512, f = 2048, batch = 512;
        const int m = 4;
        long budget = MeshPlan.FeedForwardStack(layers, h, f, batch, 1, 1, 1, m).MaxBytesPerDevice / 5;
        var best = MeshPlan.Smallest(layers, h, f, batch, m, budget);
        Assert.That(best, Is.Not.Null);
        Assert.That(best!.MaxBytesPerDevice, Is.LessThanOrEqualTo(budget));
        Assert.That(best.Devices, Is.GreaterThan(1));
        // Every factorization of fewer devices misses the budget (brute force over pp, dp, tp).
        for (int d = 1; d < best.Devices; d++)
            for (int pp = 1; pp <= Math.Min(d, layers); pp++)
                for (int tp = 1; pp * tp <= d; tp++)
                {
                    if (d % (pp * tp) != 0) continue;
                    int dp = d / (pp * tp);
                    if (dp * m > batch) continue;
                    Assert.That(MeshPlan.FeedForwardStack(layers, h, f, batch, pp, dp, tp, m).MaxBytesPerDevice, Is.GreaterThan(budget),
                        $"pp {pp} dp {dp} tp {tp} fits on {d} devices");
                }
        // A stack that already fits on one device needs one.
        Assert.That(MeshPlan.Smallest(layers, h, f, batch, m, budget * 5)!.Devices, Is.EqualTo(1));
        // The failing plan names the smallest mesh.
        var ex = Assert.Throws<InsufficientDeviceMemoryException>(() =>
            MeshPlan.FeedForwardStack(layers, h, f, batch, 1, 1, 1, m).EnsureFits(budget));
        Assert.That(ex!.FewestRanks, Is.EqualTo(best.Devices));
        Assert.That(ex.Message, Does.Contain(best.Shape).And.Contain("stage 0"));
        Assert.DoesNotThrow(() => best.EnsureFits(budget));
    }

    [Test]
    public void BadArgumentsNameTheArgument()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => MeshPlan.FeedForwardStack(2, 8, 8, 64, 3, 1, 1, 1))!.ParamName,
            Is.EqualTo("pipelineStages"));
        Assert.That(Assert.Throws<ArgumentException>(() => MeshPlan.FeedForwardStack(4, 8, 8, 64, 2, 1, 1, 1, layersPerStage: [3, 2]))!.ParamName,
            Is.EqualTo("layersPerStage"));
        Assert.That(Assert.Throws<ArgumentException>(() => MeshPlan.FeedForwardStack(4, 8, 8, 64, 2, 1, 1, 1, layersPerStage: [4, 0]))!.ParamName,
            Is.EqualTo("layersPerStage"));
        Assert.That(Assert.Throws<ArgumentException>(() => MeshPlan.FeedForwardStack(4, 8, 8, 7, 1, 2, 1, 4))!.ParamName,
            Is.EqualTo("batchTokens"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => MeshPlan.FeedForwardStack(4, 8, 8, 64, 1, 0, 1, 1))!.ParamName,
            Is.EqualTo("dataParallel"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => MeshPlan.FeedForwardStack(4, 8, 8, 64, 1, 1, 1, 1, (PipelineSchedule)7))!.ParamName,
            Is.EqualTo("schedule"));
    }
}
