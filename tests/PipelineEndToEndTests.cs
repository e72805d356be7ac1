using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The end-to-end example (HybridScenario): a stack of 4 residual feed-forward blocks trained for 3 SGD steps on a
/// pp 2 × dp 2 × tp 2 mesh (DeviceMesh) of 8 virtual ranks in one process, against the same training on one rank (no pipeline, no
/// replicas, no tensor parallelism, the whole batch at once).
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class PipelineEndToEndTests(Backend backend) : BackendTest(backend)
{
    private const int Pp = 2, Dp = 2, Tp = 2;

    internal static float[][][] TrainSingleRank(Device dev, HybridScenario.Data d, out double[] losses)
    {
        using var one = ProcessGroup.CreateLocal(dev, 1, TimeSpan.FromSeconds(20));
        var ctx = one[0];
        // The single-rank run: the whole batch as one micro-batch.
        var stack = d.Stack;
        using var trainer = new FeedForwardStackTrainer(ctx, ctx, ctx, stack, new PipelineOptions { MicroBatches = 1, ComputeLoss = true });
        using var x = dev.Allocate<float>(HybridScenario.Rows * HybridScenario.H);
        using var t = dev.Allocate<float>(HybridScenario.Rows * HybridScenario.H);
        losses = new double[HybridScenario.Steps];
        for (int step = 0; step < HybridScenario.Steps; step++)
        {
            x.CopyFrom(d.X[step], ctx.Stream);
            t.CopyFrom(d.T[step], ctx.Stream);
            losses[step] = trainer.Step(HybridScenario.Rows, x.AsMatrix(HybridScenario.Rows, HybridScenario.H),
                t.AsMatrix(HybridScenario.Rows, HybridScenario.H), HybridScenario.LearningRate).Loss!.Value;
        }
        return Enumerable.Range(0, HybridScenario.Layers).Select(l =>
        {
            var b = trainer.Stage.Blocks[l];
            return new[] { b.Up.Weight!.ToArray(ctx.Stream), b.Up.Bias!.ToArray(ctx.Stream), b.Down.Weight!.ToArray(ctx.Stream), b.Down.Bias!.ToArray(ctx.Stream) };
        }).ToArray();
    }

    /// <summary>
    /// The tolerance of a weight after training: w_k = w_0 − lr·Σ_steps g, and each run's gradient is within the fp32
    /// chain bound of PipelineTests (2·(4N + 2)·n·u·Σ|terms|, n = max(H, F, rows) = 16 here, the mesh adding only
    /// sums of length 2 — the tp all-reduce and the dp sum — inside that slack) of the exact one at its weights. Two runs
    /// differ by at most twice that per step, times lr, over the steps; the weights' own drift changes later gradients by a
    /// relative amount of the same order (a factor 2), and each update rounds once (2u·|w|).
    /// </summary>
    internal static double WeightTolerance(double gradientMagnitude, float weight) =>
        HybridScenario.Steps * HybridScenario.LearningRate * 2 * 2 * (2 * (4 * HybridScenario.Layers + 2) * 16 * 5.96e-8 * gradientMagnitude + 1e-9)
        + 2 * 5.96e-8 * Math.Abs(weight) * HybridScenario.Steps;

    /// <summary>Asserts that one replica's weights equal the single-rank run's within <see cref="WeightTolerance"/>, the
    /// gradients' magnitudes taken from the float64 reference at the initial weights and first batch (a few small steps
    /// change them little), times the steps.</summary>
    internal static void AssertWeightsClose(float[][][] got, float[][][] want, HybridScenario.Data d, string what)
    {
        var stack = new PipelineTests.Stack(d.W1, d.B1, d.W2, d.B2);
        var (_, mag) = PipelineTests.Reference64(stack, d.X[0], d.T[0], HybridScenario.Rows, HybridScenario.H, HybridScenario.F);
        string[] names = ["W1", "b1", "W2", "b2"];
        for (int l = 0; l < HybridScenario.Layers; l++)
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < want[l][k].Length; e++)
                    Assert.That(got[l][k][e], Is.EqualTo(want[l][k][e]).Within(WeightTolerance(2 * mag[l][k][e], want[l][k][e])),
                        $"{what}: layer {l} {names[k]}[{e}]");
        // The training moved the weights (by far more than the tolerance), so equality is not the initial weights'.
        double moved = 0;
        for (int l = 0; l < HybridScenario.Layers; l++) moved = Math.Max(moved, Enumerable.Range(0, want[l][0].Length).Max(e => Math.Abs(want[l][0][e] - d.W1[l][e])));
        Assert.That(moved, Is.GreaterThan(1e-4), "the single-rank training changed W1");
    }

    [Test]
    public void OneRankWithMicroBatchesTrainsLikeTheWholeBatch()
    {
        // The same training on one rank with the example's 4 micro-batches: only the order of the weight gradients' sums
        // over the rows differs (activations are computed row by row, identically), so within the tolerance.
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var d = new HybridScenario.Data(seed);
        var want = TrainSingleRank(Dev, d, out _);
        using var one = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(20));
        var shards = new[] { HybridScenario.Train(one[0], one[0], one[0], d, out _) };
        AssertWeightsClose(HybridScenario.Assemble(shards, 1, 1, 1, 0), want, d, "4 micro-batches vs the whole batch");
    }

    [Test]
    public void MeshOf8VirtualRanksTrainsLikeOneRank()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var d = new HybridScenario.Data(seed);
        var want = TrainSingleRank(Dev, d, out var wantLoss);

        var shards = new (int, float[], float[], float[], float[])[Pp * Dp * Tp][];
        var losses = new double[Pp * Dp * Tp][];
        using var world = ProcessGroup.CreateLocal(Dev, Pp * Dp * Tp, TimeSpan.FromSeconds(20));
        using (var mesh = HybridScenario.Mesh(world, Pp, Dp, Tp))
            Spmd.Run(world, ctx => shards[ctx.Rank] = HybridScenario.Train(mesh[ctx.Rank], d, out losses[ctx.Rank]));
        var replica0 = HybridScenario.Assemble(shards, Pp, Dp, Tp, 0);
        var replica1 = HybridScenario.Assemble(shards, Pp, Dp, Tp, 1);
        // The replicas apply the same averaged gradients: bit-identical weights.
        for (int l = 0; l < HybridScenario.Layers; l++)
            for (int k = 0; k < 4; k++) Reference.AssertBitwise(replica1[l][k], replica0[l][k], $"layer {l} param {k}: replica 1 vs replica 0");
        AssertWeightsClose(replica0, want, d, "2 x 2 x 2 mesh vs one rank");
        // The loss: each replica's last stage reports its rows' mean; their average is the single rank's (float64 sums of
        // fp32 outputs that agree to about 1e-6 relative).
        for (int step = 0; step < HybridScenario.Steps; step++)
        {
            double mean = (losses[(1 * Dp + 0) * Tp][step] + losses[(1 * Dp + 1) * Tp][step]) / 2;
            Assert.That(mean, Is.EqualTo(wantLoss[step]).Within(1e-5 * wantLoss[step]), $"step {step}: loss");
        }
    }
}
