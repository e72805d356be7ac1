using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The pipeline engine on virtual ranks (an in-process group whose ranks are the stages, tensor parallelism 1): a stack of
/// N = 5 residual feed-forward blocks split unevenly over 1..4 stages, GPipe and 1F1B, 1..8 micro-batches, against
/// (1) the single-rank run of the same stack with the same micro-batches — bit-identical: every stage runs the same GEMMs
/// on the same rows and the transfers move the data exactly, and both schedules accumulate the micro-batches' weight
/// gradients in the same (ascending) order; (2) a float64 reference of the whole batch, within a tolerance derived below.
/// Also the measured peak of held micro-batches and bytes per stage, the idle fraction of the measured timeline, a
/// stage that fails, and bad arguments.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class PipelineTests(Backend backend) : BackendTest(backend)
{
    private const int Layers = 5;
    private const long H = 8, F = 12, Rows = 8;

    internal sealed record Stack(float[][] W1, float[][] B1, float[][] W2, float[][] B2)
    {
        public FeedForwardBlockWeights[] Sources => Enumerable.Range(0, W1.Length).Select(l => new FeedForwardBlockWeights(
            WeightSource.FromArray(W1[l], H, F), WeightSource.FromArray(B1[l], 1, F), WeightSource.FromArray(W2[l], F, H),
            WeightSource.FromArray(B2[l], 1, H))).ToArray();
    }

    internal static Stack NewStack(Random rng, int layers = Layers) => new(
        Enumerable.Range(0, layers).Select(_ => RandomArray(rng, H * F, 0.4f)).ToArray(),
        Enumerable.Range(0, layers).Select(_ => RandomArray(rng, F, 0.2f)).ToArray(),
        Enumerable.Range(0, layers).Select(_ => RandomArray(rng, F * H, 0.4f)).ToArray(),
        Enumerable.Range(0, layers).Select(_ => RandomArray(rng, H, 0.2f)).ToArray());

    /// <summary>Per layer of the stack: dW1, db1, dW2, db2 as the stages computed them, and every stage's report.</summary>
    private sealed record Run(float[][][] Gradients, PipelineStepReport[] Reports);

    private Run RunPipeline(Stack stack, float[] x, float[] t, int stages, PipelineOptions options, Func<RankContext, PipelineStage>? makeStage = null)
    {
        var grads = new float[Layers][][];
        var reports = new PipelineStepReport[stages];
        using var group = ProcessGroup.CreateLocal(Dev, stages, TimeSpan.FromSeconds(20));
        // Tensor parallelism 1: each stage's layers run over a group of its own rank alone (on the rank's stream).
        using var alone = group.Split(r => r);
        Spmd.Run(group, ctx =>
        {
            var (first, count) = FeedForwardStage.LayerRange(Layers, stages, ctx.Rank);
            using var stage = new FeedForwardStage(alone[ctx.Rank]!, stack.Sources, first, count);
            using var input = Upload(x, ctx.Device, ctx.Stream);
            using var target = Upload(t, ctx.Device, ctx.Stream);
            // Poison the gradients: the step's first backward must overwrite them all.
            foreach (var g in stage.Gradients)
                foreach (var b in new[] { g.DW1!, g.DB1!, g.DW2!, g.DB2 }) b.Fill(float.NaN, ctx.Stream);
            var engine = new PipelineEngine(ctx, stage, options);
            reports[ctx.Rank] = engine.Step(Rows, input.AsMatrix(Rows, H), target.AsMatrix(Rows, H));
            for (int l = 0; l < count; l++)
            {
                var g = stage.Gradients[l];
                grads[first + l] = [g.DW1!.ToArray(ctx.Stream), g.DB1!.ToArray(ctx.Stream), g.DW2!.ToArray(ctx.Stream), g.DB2.ToArray(ctx.Stream)];
            }
        });
        return new Run(grads, reports);
    }

    /// <summary>
    /// The whole batch in float64: forward x_{l+1} = x_l + GeLU(x_l·W1 + b1)·W2 + b2, L = 1/(M·H) Σ (x_N − t)², backward
    /// to dW1, db1, dW2, db2 of every layer, each with Σ|terms| of its sum over the rows (its magnitude).
    /// </summary>
    internal static (double[][][] Value, double[][][] Magnitude) Reference64(Stack s, float[] x0, float[] t, long m, long h, long f)
    {
        int n = s.W1.Length;
        var xs = new double[n + 1][];
        var zs = new double[n][];
        xs[0] = x0.Select(v => (double)v).ToArray();
        for (int l = 0; l < n; l++)
        {
            var z = new double[m * f];
            var y = (double[])xs[l].Clone();
            for (long i = 0; i < m; i++)
                for (long q = 0; q < f; q++)
                {
                    double a = s.B1[l][q];
                    for (long c = 0; c < h; c++) a += xs[l][i * h + c] * s.W1[l][c * f + q];
                    z[i * f + q] = a;
                }
            for (long i = 0; i < m; i++)
                for (long j = 0; j < h; j++)
                {
                    double a = s.B2[l][j];
                    for (long q = 0; q < f; q++) a += Reference.Gelu(z[i * f + q]) * s.W2[l][q * h + j];
                    y[i * h + j] += a;
                }
            zs[l] = z;
            xs[l + 1] = y;
        }
        var dy = xs[n].Select((v, k) => 2.0 / (m * h) * (v - t[k])).ToArray();
        var value = new double[n][][];
        var mag = new double[n][][];
        for (int l = n - 1; l >= 0; l--)
        {
            var z = zs[l];
            var dW1 = new double[h * f]; var mW1 = new double[h * f];
            var dB1 = new double[f]; var mB1 = new double[f];
            var dW2 = new double[f * h]; var mW2 = new double[f * h];
            var dB2 = new double[h]; var mB2 = new double[h];
            var dz = new double[m * f];
            for (long i = 0; i < m; i++)
                for (long q = 0; q < f; q++)
                {
                    double a = 0;
                    for (long j = 0; j < h; j++) a += dy[i * h + j] * s.W2[l][q * h + j];
                    dz[i * f + q] = a * GeluGrad(z[i * f + q]);
                }
            for (long i = 0; i < m; i++)
            {
                for (long j = 0; j < h; j++) { dB2[j] += dy[i * h + j]; mB2[j] += Math.Abs(dy[i * h + j]); }
                for (long q = 0; q < f; q++)
                {
                    dB1[q] += dz[i * f + q];
                    mB1[q] += Math.Abs(dz[i * f + q]);
                    double hq = Reference.Gelu(z[i * f + q]);
                    for (long j = 0; j < h; j++) { dW2[q * h + j] += hq * dy[i * h + j]; mW2[q * h + j] += Math.Abs(hq * dy[i * h + j]); }
                    for (long c = 0; c < h; c++) { dW1[c * f + q] += xs[l][i * h + c] * dz[i * f + q]; mW1[c * f + q] += Math.Abs(xs[l][i * h + c] * dz[i * f + q]); }
                }
            }
            var dx = (double[])dy.Clone();
            for (long i = 0; i < m; i++)
                for (long c = 0; c < h; c++)
                    for (long q = 0; q < f; q++) dx[i * h + c] += dz[i * f + q] * s.W1[l][c * f + q];
            value[l] = [dW1, dB1, dW2, dB2];
            mag[l] = [mW1, mB1, mW2, mB2];
            dy = dx;
        }
        return (value, mag);
    }

    internal static double GeluGrad(double v)
    {
        const double c = 0.7978845608028654;
        double th = Math.Tanh(c * (v + 0.044715 * v * v * v));
        return 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * c * (1 + 3 * 0.044715 * v * v);
    }

    private static readonly string[] Names = ["dW1", "db1", "dW2", "db2"];

    /// <summary>
    /// Tolerance against the float64 reference: each fp32 GEMM of a sum of length n is within γ_n·Σ|terms| ≈ n·u·Σ|terms|
    /// (u = 2^-24) of the exact sum of its fp32 inputs; a gradient comes out of at most 4·N + 2 such steps in a chain
    /// (the forward's two GEMMs and the backward's two per block, the loss), each of length at most n = max(H, F, M) = 12,
    /// and the residual stack's small weights keep the chain's amplification near 1 (≤ 2 taken). So
    /// |got − want| ≤ 2·(4N + 2)·n·u·Σ|terms| + 1e-9 (an absolute floor far below the gradients' size ≈ 1e-2).
    /// </summary>
    private static double Tolerance(double magnitude) => 2 * (4 * Layers + 2) * 12 * 5.96e-8 * magnitude + 1e-9;

    [Test]
    public void GradientsEqualSingleRankRunAndFloat64Reference(
        [Values(PipelineSchedule.GPipe, PipelineSchedule.OneForwardOneBackward)] PipelineSchedule schedule, [Range(1, 4)] int stages)
    {
        var rng = NewRandom();
        var stack = NewStack(rng);
        for (int m = 1; m <= 8; m++)
        {
            var x = RandomArray(rng, Rows * H);
            var t = RandomArray(rng, Rows * H);
            var options = new PipelineOptions { Schedule = schedule, MicroBatches = m };
            var single = RunPipeline(stack, x, t, 1, options with { Schedule = PipelineSchedule.GPipe });
            var run = RunPipeline(stack, x, t, stages, options);
            var (want, mag) = Reference64(stack, x, t, Rows, H, F);
            for (int l = 0; l < Layers; l++)
                for (int k = 0; k < 4; k++)
                {
                    string what = $"{schedule}, {stages} stages, m = {m}: layer {l} {Names[k]}";
                    Reference.AssertBitwise(run.Gradients[l][k], single.Gradients[l][k], what + " vs the single-rank run");
                    for (int e = 0; e < want[l][k].Length; e++)
                        Assert.That(run.Gradients[l][k][e], Is.EqualTo(want[l][k][e]).Within(Tolerance(mag[l][k][e])), $"{what}[{e}] vs float64");
                }
            // The measured peaks: micro-batches as the schedule promises, bytes as MeshPlan's stash (for even micro-batches).
            for (int s = 0; s < stages; s++)
            {
                var r = run.Reports[s];
                int want1 = schedule == PipelineSchedule.GPipe ? m : Math.Min(m, stages - s);
                Assert.That(r.PeakMicroBatches, Is.EqualTo(want1), $"{schedule}, {stages} stages, m = {m}: stage {s}'s peak micro-batches");
                if (Rows % m != 0) continue;
                var plan = MeshPlan.FeedForwardStack(Layers, H, F, Rows, stages, 1, 1, m, schedule);
                long output = s == stages - 1 ? want1 * (Rows / m) * H * sizeof(float) : 0; // the last stage's outputs for the loss
                Assert.That(r.PeakActivationBytes, Is.EqualTo(plan.Stages[s].ActivationBytes + output),
                    $"{schedule}, {stages} stages, m = {m}: stage {s}'s peak activation bytes");
            }
        }
    }

    /// <summary>A test-only stage whose forward and backward take a fixed time: it copies its input to its output (so that
    /// real data moves between the stages) and sleeps. Real compute would measure the contention of the machine's cores
    /// (every stage is a thread of this process), not the schedule.</summary>
    private sealed class SleepingStage(RankContext ctx, long features, int forwardMs, int backwardMs) : PipelineStage(ctx)
    {
        public override long InputFeatures => features;
        public override long OutputFeatures => features;

        public override StageActivations Forward(MatrixView<float> x, MatrixView<float> y)
        {
            x.Buffer.CopyTo(y.Buffer, Context.Stream, x.Offset, y.Offset, x.Rows * features);
            Context.Synchronize();
            Thread.Sleep(forwardMs);
            return new StageActivations(x.Rows * features * sizeof(float));
        }

        public override void Backward(StageActivations saved, MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, bool accumulate, bool lastOfStep)
        {
            dy.Buffer.CopyTo(dx.Buffer, Context.Stream, dy.Offset, dx.Offset, dy.Rows * features);
            Context.Synchronize();
            Thread.Sleep(backwardMs);
        }
    }

    [TestCase(PipelineSchedule.GPipe, 2, 4)]
    [TestCase(PipelineSchedule.OneForwardOneBackward, 2, 4)]
    [TestCase(PipelineSchedule.GPipe, 4, 8)]
    [TestCase(PipelineSchedule.OneForwardOneBackward, 4, 8)]
    public void MeasuredIdleFractionIsThePlansWithin10Percent(PipelineSchedule schedule, int stages, int m)
    {
        // Each stage's busy time is the sum of its forwards' and backwards' durations from the engine's own timeline; the
        // step's window lies between the barriers that frame it. Forward and backward take fixed times (the sleeping
        // stage), 100 ms and 200 ms: a transfer's hand-over between the ranks' threads costs up to a few milliseconds on a
        // busy 2-core machine (tens under ASan with other jobs running: 50 / 100 ms once measured 0.24 for a plan of
        // 0.20), and lies on the step's critical path, so the stages' times must dwarf it.
        const int tf = 100, tb = 200;
        var x = RandomArray(NewRandom(), 2L * m * H);
        double expected = PipelineSchedules.IdleFraction(stages, m);
        var plan = MeshPlan.FeedForwardStack(stages, H, F, 2L * m, stages, 1, 1, m, schedule);
        Assert.That(plan.IdleFraction, Is.EqualTo(expected).Within(1e-12), "MeshPlan's idle fraction (equal stages)");
        var reports = new PipelineStepReport[stages];
        using var group = ProcessGroup.CreateLocal(Dev, stages, TimeSpan.FromSeconds(20));
        Spmd.Run(group, ctx =>
        {
            using var stage = new SleepingStage(ctx, H, tf, tb);
            using var input = Upload(x, ctx.Device, ctx.Stream);
            var engine = new PipelineEngine(ctx, stage, new PipelineOptions { Schedule = schedule, MicroBatches = m, RecordTimeline = true });
            reports[ctx.Rank] = engine.Step(2L * m, input.AsMatrix(2L * m, H), input.AsMatrix(2L * m, H));
        });
        foreach (var r in reports)
            TestContext.Out.WriteLine($"stage {r.Stage}: step {r.StepMs:F1} ms, busy {r.BusyMs:F1} ms, transfers {r.TransferMs:F1} ms, idle {r.IdleFraction:F4} (plan {expected:F4})");
        foreach (var r in reports)
        {
            Assert.That(r.Timeline.Count(e => e.Kind == PipelineActionKind.Forward), Is.EqualTo(m));
            Assert.That(r.BusyMs, Is.GreaterThanOrEqualTo(m * (tf + tb) * 0.99), $"stage {r.Stage}: busy time below the sleeps");
            Assert.That(r.IdleFraction, Is.EqualTo(expected).Within(0.10 * expected), $"stage {r.Stage}: measured idle fraction vs the plan's");
        }
    }

    [Test]
    public void AStageThatFailsMakesItsNeighboursFailWithoutHanging()
    {
        var x = RandomArray(NewRandom(), Rows * H);
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(3));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var input = Upload(x, ctx.Device, ctx.Stream);
            using var stage = new SleepingStage(ctx, H, 0, 0);
            if (ctx.Rank == 1) throw new InvalidOperationException("stage 1 broke");
            new PipelineEngine(ctx, stage, new PipelineOptions { MicroBatches = 4 }).Step(Rows, input.AsMatrix(Rows, H), input.AsMatrix(Rows, H));
        }))!;
        Assert.That(e.CauseRank, Is.EqualTo(1));
        Assert.That(e.RankErrors.Keys, Is.EquivalentTo(new[] { 0, 1, 2 }), "the neighbours fail too");
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)), "no hang");
    }

    [Test]
    public void BadArgumentsAreNamed()
    {
        var rng = NewRandom();
        var stack = NewStack(rng, 2);
        using var group = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(5));
        var ctx = group[0];
        Assert.That(() => new FeedForwardStage(ctx, stack.Sources, 2, 1),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("firstLayer"));
        Assert.That(() => new FeedForwardStage(ctx, stack.Sources, 1, 2),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("layers"));
        using var stage = new FeedForwardStage(ctx, stack.Sources, 0, 2);
        Assert.That(() => new PipelineEngine(ctx, stage, new PipelineOptions { MicroBatches = 0 }),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("options"));
        var engine = new PipelineEngine(ctx, stage, new PipelineOptions { MicroBatches = 4 });
        using var buf = Upload(RandomArray(rng, Rows * H));
        Assert.That(() => engine.Step(3, buf.AsMatrix(3, H), buf.AsMatrix(3, H)),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("rows"));
        Assert.That(() => engine.Step(Rows, default, buf.AsMatrix(Rows, H)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("input"));
        Assert.That(() => engine.Step(Rows, buf.AsMatrix(Rows, H), buf.AsMatrix(Rows - 1, H)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("target"));
        using var other = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(5));
        Assert.That(() => new PipelineEngine(other[0], stage),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("pipeline"));
    }
}
