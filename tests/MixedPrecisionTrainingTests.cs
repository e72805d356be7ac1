using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Mixed-precision training (src/Parallel/Training): a small FFN regression trained with fp16 working weights, fp32
/// master weights and dynamic loss scaling, on p = 1, 2, 4 ranks, against the same training in fp32; an overflow
/// injected into one rank's gradient skips exactly that step on every rank; an overflow at the minimum scale throws on
/// every rank and leaves the weights as they were.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class MixedPrecisionTrainingTests(Backend backend) : BackendTest(backend)
{
    private const long M = 16, H = 8, F = 14; // F = 14 splits unevenly over 4 ranks (4, 4, 3, 3)
    private const float Lr = 0.2f;

    private sealed record Data(float[] X, float[] Target, float[] W1, float[] B1, float[] W2, float[] B2);

    // Targets from a random linear teacher (T = X·A), so that the FFN can fit them and the loss falls.
    private static Data NewData(Random rng)
    {
        var x = RandomArray(rng, M * H);
        var a = RandomArray(rng, H * H, 0.5f);
        var target = new float[M * H];
        for (long i = 0; i < M; i++)
            for (long j = 0; j < H; j++)
            {
                double s = 0;
                for (long c = 0; c < H; c++) s += (double)x[i * H + c] * a[c * H + j];
                target[i * H + j] = (float)s;
            }
        return new(x, target, RandomArray(rng, H * F, 0.5f), RandomArray(rng, F, 0.1f), RandomArray(rng, F * H, 0.5f), RandomArray(rng, H, 0.1f));
    }

    /// <summary>One rank's record of a training run.</summary>
    private sealed class RankLog
    {
        public List<double> Loss = new();
        public List<float> Scale = new();      // the scale used for each step's seed
        public List<bool> Stepped = new();
        public List<float[][]> Masters = new(); // the fp32 masters after each step
        public Exception? Error;
    }

    /// <summary>Trains for <paramref name="steps"/> steps; <paramref name="inject"/> (step, rank) puts an infinity into that
    /// rank's dW1 after that step's backward. Loss is mean((Y - T)²); the seed dL/dY = 2 (Y - T) / (M H), times the scale.</summary>
    private RankLog[] Train<T>(int p, Data d, int steps, Precision precision, Func<RankContext, DynamicLossScaler?> scaler,
        (int Step, int Rank)? inject = null) where T : unmanaged
    {
        var logs = Enumerable.Range(0, p).Select(_ => new RankLog()).ToArray();
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            var log = logs[ctx.Rank];
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(d.W1, H, F), WeightSource.FromArray(d.B1, 1, F),
                WeightSource.FromArray(d.W2, F, H), WeightSource.FromArray(d.B2, 1, H), precision: precision);
            using var grads = new FeedForwardGradients(ctx.Device, ffn);
            using var master = new MasterWeights(ctx);
            master.AddFeedForward(ffn, grads);
            using var sc = scaler(ctx);
            using var x = MixedPrecisionLayerTests.UploadAs<T>(d.X, ctx.Device, ctx.Stream);
            using var y = MixedPrecisionLayerTests.PoisonedAs<T>(M * H, ctx.Device, ctx.Stream);
            using var dy = ctx.Device.Allocate<T>(M * H);
            using var dx = ctx.Device.Allocate<T>(M * H);
            var seed = new float[M * H];
            for (int t = 0; t < steps; t++)
            {
                using var saved = ffn.ForwardTraining(x.AsMatrix(M, H), y.AsMatrix(M, H));
                ctx.Synchronize();
                var yh = MixedPrecisionLayerTests.Read(y, ctx.Stream);
                float scale = sc?.Scale ?? 1f;
                double loss = 0;
                for (int e = 0; e < seed.Length; e++)
                {
                    double r = yh[e] - d.Target[e];
                    loss += r * r;
                    seed[e] = (float)(2 * r / (M * H) * scale);
                }
                log.Loss.Add(loss / (M * H));
                log.Scale.Add(scale);
                dy.CopyFrom(seed.Select(MixedPrecisionLayerTests.ToT<T>).ToArray(), ctx.Stream);
                ffn.Backward(x.AsMatrix(M, H), dy.AsMatrix(M, H), dx.AsMatrix(M, H), grads, saved);
                if (inject is { } at && at.Step == t && at.Rank == ctx.Rank)
                    grads.DW1!.CopyFrom([float.PositiveInfinity], ctx.Stream, 5); // after the backward, in stream order
                try
                {
                    log.Stepped.Add(master.Step(Lr, sc));
                }
                catch (GradientOverflowException e)
                {
                    log.Error = e;
                    log.Masters.Add(Enumerable.Range(0, master.Count).Select(i => master.Master(i).ToArray(ctx.Stream)).ToArray());
                    return;
                }
                log.Masters.Add(Enumerable.Range(0, master.Count).Select(i => master.Master(i).ToArray(ctx.Stream)).ToArray());
            }
        });
        return logs;
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    public void Fp16WithLossScalingTracksFp32Training(int p)
    {
        var rng = NewRandom();
        var d = NewData(rng);
        const int steps = 40;
        var fp32 = Train<float>(p, d, steps, Precision.Fp32, _ => null);
        var fp16 = Train<Half>(p, d, steps, Precision.Fp16, ctx => new DynamicLossScaler(ctx, initialScale: 1024, growthInterval: 10));

        // The scaler ran: no step skipped (the scaled seeds stay far below fp16's 65504), the scale grew every 10 steps.
        for (int r = 0; r < p; r++)
        {
            Assert.That(fp16[r].Stepped, Has.All.True, $"rank {r}: a step was skipped");
            Assert.That(fp16[r].Scale[0], Is.EqualTo(1024f));
            Assert.That(fp16[r].Scale[steps - 1], Is.EqualTo(1024f * 8), "grown x2 after steps 10, 20, 30");
            Assert.That(fp16[r].Scale, Is.EqualTo(fp16[0].Scale), $"rank {r} agrees on the scale");
        }
        // Training works in both: the loss falls well below its start.
        var l32 = fp32[0].Loss;
        var l16 = fp16[0].Loss;
        TestContext.Out.WriteLine($"loss fp32 {l32[0]:G4} -> {l32[^1]:G4}, fp16 {l16[0]:G4} -> {l16[^1]:G4}");
        Assert.That(l32[^1], Is.LessThan(0.8 * l32[0]), "fp32 training did not reduce the loss");
        Assert.That(l16[^1], Is.LessThan(0.8 * l16[0]), "fp16 training did not reduce the loss");
        // Stated tolerance. The fp16 forward rounds X, W1, H, W2 (working copies), the partial products and Y: six
        // roundings of relative size u = 2^-11 on the path to Y, so |ΔY| ≤ 6u·(|Y| + |Y|mag) per element, and the weights
        // drift apart by the rounding of each step's gradient (dY, dH, dZ and the GEMM inputs: ≤ 8u of each update,
        // summed over the steps; the fp32 masters keep it from compounding through the working copies). With |Y| and the
        // weights O(1) and lr·Σ|g| over 40 steps below 1, both effects stay below 16u·(|Y| + 1) in Y, so
        //   |L16 - L32| ≤ 2·RMS(Y - T)·δ + δ²,   δ = 16u·(RMS(Y) + 1).
        const double u = 1.0 / 2048;
        double rmsY = Math.Sqrt(d.Target.Select(v => (double)v * v).Average()) + Math.Sqrt(l32[0]);
        for (int t = 0; t < steps; t++)
        {
            double delta = 16 * u * (rmsY + 1);
            double tol = 2 * Math.Sqrt(l32[t]) * delta + delta * delta;
            Assert.That(Math.Abs(l16[t] - l32[t]), Is.LessThanOrEqualTo(tol), $"step {t}: fp16 loss {l16[t]} vs fp32 {l32[t]} (tolerance {tol:E2})");
        }
        // The final fp32 masters: the same drift bound per weight, 16u relative to the weight scale (|W| ≤ 0.5 at start).
        for (int r = 0; r < p; r++)
            for (int i = 0; i < fp32[r].Masters[^1].Length; i++)
            {
                var a = fp16[r].Masters[^1][i];
                var b = fp32[r].Masters[^1][i];
                for (int e = 0; e < a.Length; e++)
                    Assert.That(Math.Abs(a[e] - b[e]), Is.LessThanOrEqualTo(16 * u * (Math.Abs(b[e]) + 0.5)),
                        $"rank {r} parameter {i} element {e}: fp16 master {a[e]} vs fp32 {b[e]}");
            }
    }

    [TestCase(2, 1)]
    [TestCase(4, 3)]
    public void AnInjectedOverflowSkipsExactlyThatStepOnEveryRank(int p, int rank)
    {
        var rng = NewRandom();
        var d = NewData(rng);
        const int steps = 8, s = 4;
        var logs = Train<Half>(p, d, steps, Precision.Fp16, ctx => new DynamicLossScaler(ctx, initialScale: 1024, growthInterval: 100),
            inject: (s, rank));
        for (int r = 0; r < p; r++)
        {
            var log = logs[r];
            Assert.That(log.Error, Is.Null, $"rank {r}");
            for (int t = 0; t < steps; t++)
                Assert.That(log.Stepped[t], Is.EqualTo(t != s), $"rank {r} step {t}: stepped = {log.Stepped[t]}");
            // Weights unchanged at s (bit for bit), changed at the other steps.
            for (int i = 0; i < log.Masters[s].Length; i++)
            {
                Reference.AssertBitwise(log.Masters[s][i], log.Masters[s - 1][i], $"rank {r} parameter {i} at the skipped step");
                Assert.That(log.Masters[s][i].All(float.IsFinite), $"rank {r} parameter {i}: a non-finite master weight");
            }
            Assert.That(log.Masters[s + 1][0], Is.Not.EqualTo(log.Masters[s][0]), $"rank {r}: the step after the skip did not update");
            // The scale halved after step s, the same on all ranks.
            Assert.That(log.Scale[s], Is.EqualTo(1024f));
            Assert.That(log.Scale[s + 1], Is.EqualTo(512f), $"rank {r}: the scale was not halved");
            Assert.That(log.Scale, Is.EqualTo(logs[0].Scale), $"rank {r} agrees on every scale");
        }
    }

    [Test]
    public void AnOverflowAtTheMinimumScaleThrowsOnEveryRankAndLeavesTheWeights()
    {
        var rng = NewRandom();
        var d = NewData(rng);
        const int p = 3, s = 2;
        var logs = Train<Half>(p, d, 5, Precision.Fp16, ctx => new DynamicLossScaler(ctx, initialScale: 4, minScale: 4),
            inject: (s, 0));
        for (int r = 0; r < p; r++)
        {
            var e = logs[r].Error as GradientOverflowException;
            Assert.That(e, Is.Not.Null, $"rank {r} did not throw GradientOverflowException");
            Assert.That(e!.Message, Does.Contain("minimum loss scale 4").And.Contain("weights are unchanged"));
            Assert.That(e.Step, Is.EqualTo(s + 1));
            Assert.That(e.RanksWithOverflow, Is.EqualTo(1));
            Assert.That(logs[r].Stepped, Has.Count.EqualTo(s), $"rank {r} stopped at step {s}");
            for (int i = 0; i < logs[r].Masters[s].Length; i++)
            {
                Reference.AssertBitwise(logs[r].Masters[s][i], logs[r].Masters[s - 1][i], $"rank {r} parameter {i}");
                Assert.That(logs[r].Masters[s][i].All(float.IsFinite), $"rank {r} parameter {i}: NaN or inf in the weights");
            }
        }
    }

    [Test]
    public void ScalerArgumentsAreChecked()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicLossScaler(ctx, minScale: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicLossScaler(ctx, initialScale: 0.5f, minScale: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicLossScaler(ctx, backoffFactor: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicLossScaler(ctx, growthFactor: 0.5f));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DynamicLossScaler(ctx, growthInterval: 0));
        using var mw = new MasterWeights(ctx);
        using var w = ctx.Device.Allocate<Half>(4);
        using var g = ctx.Device.Allocate<float>(3);
        Assert.Throws<ArgumentException>(() => mw.Add(w, g));
        Assert.Throws<ArgumentOutOfRangeException>(() => mw.Step(float.NaN));
    }
}
