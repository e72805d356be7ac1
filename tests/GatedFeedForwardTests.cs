using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>The FFN variants: SwiGLU / GeGLU (<see cref="ParallelGatedFeedForward"/>, gate and up fused per rank) and ReLU
/// in <see cref="ParallelFeedForward"/>; standard and sequence-parallel, forward and every gradient against float64, p =
/// 1..8 with uneven F, collectives counted.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class GatedFeedForwardTests(Backend backend) : BackendTest(backend)
{
    internal static double Act(SwActivation a, double x) => a switch
    {
        SwActivation.Relu => Math.Max(x, 0),
        SwActivation.Silu => x / (1 + Math.Exp(-x)),
        _ => Reference.Gelu(x),
    };

    internal static double ActGrad(SwActivation a, double x)
    {
        switch (a)
        {
            case SwActivation.Relu: return x > 0 ? 1 : 0;
            case SwActivation.Silu: { double s = 1 / (1 + Math.Exp(-x)); return s * (1 + x * (1 - s)); }
            default:
            {
                const double c = 0.7978845608028654;
                double t = Math.Tanh(c * (x + 0.044715 * x * x * x));
                return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
            }
        }
    }

    // Float64 gated FFN: Y, dX, dWg, dWu, dWd, dbd for L = Σ Y∘G.
    internal static (double[] Y, double[] Dx, double[] DWg, double[] DWu, double[] DWd, double[] DBd) Reference64(SwActivation act, float[] x, float[] wg,
        float[] wu, float[] wd, float[] bd, float[] g, long m, long h, long f)
    {
        var a = new double[m * f]; var u = new double[m * f]; var hh = new double[m * f];
        for (long i = 0; i < m; i++)
            for (long j = 0; j < f; j++)
            {
                double sa = 0, su = 0;
                for (long c = 0; c < h; c++) { sa += (double)x[i * h + c] * wg[c * f + j]; su += (double)x[i * h + c] * wu[c * f + j]; }
                a[i * f + j] = sa; u[i * f + j] = su; hh[i * f + j] = Act(act, sa) * su;
            }
        var y = new double[m * h];
        for (long i = 0; i < m; i++)
            for (long c = 0; c < h; c++)
            {
                double s = bd[c];
                for (long j = 0; j < f; j++) s += hh[i * f + j] * wd[j * h + c];
                y[i * h + c] = s;
            }
        var dh = new double[m * f];
        for (long i = 0; i < m; i++) for (long j = 0; j < f; j++) { double s = 0; for (long c = 0; c < h; c++) s += g[i * h + c] * (double)wd[j * h + c]; dh[i * f + j] = s; }
        var da = new double[m * f]; var du = new double[m * f];
        for (long k = 0; k < m * f; k++) { da[k] = dh[k] * u[k] * ActGrad(act, a[k]); du[k] = dh[k] * Act(act, a[k]); }
        var dx = new double[m * h]; var dwg = new double[h * f]; var dwu = new double[h * f]; var dwd = new double[f * h]; var dbd = new double[h];
        for (long i = 0; i < m; i++)
        {
            for (long c = 0; c < h; c++)
            {
                dbd[c] += g[i * h + c];
                for (long j = 0; j < f; j++)
                {
                    dx[i * h + c] += da[i * f + j] * wg[c * f + j] + du[i * f + j] * wu[c * f + j];
                    dwg[c * f + j] += x[i * h + c] * da[i * f + j];
                    dwu[c * f + j] += x[i * h + c] * du[i * f + j];
                    dwd[j * h + c] += hh[i * f + j] * g[i * h + c];
                }
            }
        }
        return (y, dx, dwg, dwu, dwd, dbd);
    }

    private static void Close(float[] got, double[] want, long offset, long count, string what)
    {
        double mag = want.Length == 0 ? 1 : want.Max(Math.Abs);
        for (long i = 0; i < count; i++)
            Assert.That(got[i], Is.EqualTo(want[offset + i]).Within(3e-5 * mag + 1e-6), $"{what}[{i}]");
    }

    [Test]
    public void ReferenceMatchesFiniteDifferences([Values(SwActivation.Silu, SwActivation.Gelu)] SwActivation act)
    {
        var rng = NewRandom();
        const long m = 3, h = 4, f = 5;
        var x = RandomArray(rng, m * h); var wg = RandomArray(rng, h * f); var wu = RandomArray(rng, h * f); var wd = RandomArray(rng, f * h);
        var bd = RandomArray(rng, h); var g = RandomArray(rng, m * h);
        var (_, dx, dwg, dwu, _, _) = Reference64(act, x, wg, wu, wd, bd, g, m, h, f);
        var ex = RandomArray(rng, m * h); var eg = RandomArray(rng, h * f); var eu = RandomArray(rng, h * f);
        double L(double t)
        {
            float[] S(float[] a, float[] e) => a.Select((v, i) => (float)(v + t * e[i])).ToArray();
            // float inputs would round t·e: evaluate in double instead through a scaled copy of the reference.
            var (y, _, _, _, _, _) = Reference64(act, S(x, ex), S(wg, eg), S(wu, eu), wd, bd, g, m, h, f);
            return y.Select((v, i) => v * g[i]).Sum();
        }
        // float arguments: a step large enough that rounding to float is negligible against it.
        double fd = (L(1e-3) - L(-1e-3)) / 2e-3;
        double analytic = dx.Select((v, i) => v * ex[i]).Sum() + dwg.Select((v, i) => v * eg[i]).Sum() + dwu.Select((v, i) => v * eu[i]).Sum();
        Assert.That(analytic, Is.EqualTo(fd).Within(1e-4 * (1 + Math.Abs(fd))));
    }

    [TestCase(1, SwActivation.Silu, false)]
    [TestCase(2, SwActivation.Silu, false)]
    [TestCase(3, SwActivation.Gelu, false)]
    [TestCase(5, SwActivation.Silu, false)]
    [TestCase(8, SwActivation.Silu, false)] // F = 7: an empty shard
    [TestCase(2, SwActivation.Silu, true)]
    [TestCase(3, SwActivation.Gelu, true)]
    public void GatedForwardAndGradientsMatchFloat64(int p, SwActivation act, bool sequenceParallel)
    {
        var rng = NewRandom();
        const long m = 6, h = 5, f = 7;
        var x = RandomArray(rng, m * h); var wg = RandomArray(rng, h * f, 0.7f); var wu = RandomArray(rng, h * f, 0.7f);
        var wd = RandomArray(rng, f * h, 0.6f); var bd = RandomArray(rng, h); var g = RandomArray(rng, m * h);
        var (yW, dxW, dwgW, dwuW, dwdW, dbdW) = Reference64(act, x, wg, wu, wd, bd, g, m, h, f);
        var plan = ShardingPlan.Even(f, p);
        var tokens = ShardingPlan.Even(m, p);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var counts = new ulong[p, 2];
        Spmd.Run(group, ctx =>
        {
            long r0 = sequenceParallel ? tokens.Offset(ctx.Rank) : 0, rows = sequenceParallel ? tokens.Size(ctx.Rank) : m;
            using var ffn = new ParallelGatedFeedForward(ctx, WeightSource.FromArray(wg, h, f), WeightSource.FromArray(wu, h, f),
                WeightSource.FromArray(wd, f, h), WeightSource.FromArray(bd, 1, h), activation: act);
            using var grads = new GatedFeedForwardGradients(ctx.Device, ffn);
            using var xb = Upload(x[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var dyb = Upload(g[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var y = Poisoned(rows * h, ctx.Device, ctx.Stream);
            using var dx = Poisoned(rows * h, ctx.Device, ctx.Stream);
            using var y2 = Poisoned(rows * h, ctx.Device, ctx.Stream);
            ulong c0 = group.CollectiveCount(ctx.Rank);
            using var saved = sequenceParallel
                ? ffn.ForwardTrainingSequenceParallel(xb.AsMatrix(rows, h), y.AsMatrix(rows, h), tokens)
                : ffn.ForwardTraining(xb.AsMatrix(rows, h), y.AsMatrix(rows, h));
            ctx.Synchronize();
            ulong c1 = group.CollectiveCount(ctx.Rank);
            if (sequenceParallel) ffn.BackwardSequenceParallel(xb.AsMatrix(rows, h), dyb.AsMatrix(rows, h), dx.AsMatrix(rows, h), grads, saved, tokens);
            else ffn.Backward(xb.AsMatrix(rows, h), dyb.AsMatrix(rows, h), dx.AsMatrix(rows, h), grads, saved);
            ctx.Synchronize();
            counts[ctx.Rank, 0] = c1 - c0;
            counts[ctx.Rank, 1] = group.CollectiveCount(ctx.Rank) - c1;
            if (sequenceParallel) ffn.ForwardSequenceParallel(xb.AsMatrix(rows, h), y2.AsMatrix(rows, h), tokens);
            else ffn.Forward(xb.AsMatrix(rows, h), y2.AsMatrix(rows, h));
            Reference.AssertBitwise(y2.ToArray(ctx.Stream), y.ToArray(ctx.Stream), $"rank {ctx.Rank}: inference forward vs training forward");
            Close(y.ToArray(ctx.Stream), yW, r0 * h, rows * h, $"rank {ctx.Rank} Y");
            Close(dx.ToArray(ctx.Stream), dxW, r0 * h, rows * h, $"rank {ctx.Rank} dX");
            long off = plan.Offset(ctx.Rank), fr = plan.Size(ctx.Rank);
            if (fr > 0)
            {
                var dgu = grads.DGateUp!.ToArray(ctx.Stream);
                var dwd = grads.DDown!.ToArray(ctx.Stream);
                double mg = dwgW.Max(Math.Abs), mu = dwuW.Max(Math.Abs);
                for (long c = 0; c < h; c++)
                    for (long j = 0; j < fr; j++)
                    {
                        Assert.That(dgu[c * 2 * fr + j], Is.EqualTo(dwgW[c * f + off + j]).Within(3e-5 * mg + 1e-6), $"rank {ctx.Rank} dWg[{c},{j}]");
                        Assert.That(dgu[c * 2 * fr + fr + j], Is.EqualTo(dwuW[c * f + off + j]).Within(3e-5 * mu + 1e-6), $"rank {ctx.Rank} dWu[{c},{j}]");
                    }
                Close(dwd, dwdW, off * h, fr * h, $"rank {ctx.Rank} dWd");
            }
            else Assert.That(grads.DGateUp, Is.Null);
            if (ctx.Rank == 0) Close(grads.DBDown!.ToArray(ctx.Stream), dbdW, 0, h, "dbd");
        });
        for (int r = 0; r < p; r++)
        {
            Assert.That(counts[r, 0], Is.EqualTo(sequenceParallel ? 2UL : 1UL), $"rank {r}: collectives in the forward");
            Assert.That(counts[r, 1], Is.EqualTo(sequenceParallel ? 3UL : 1UL), $"rank {r}: collectives in the backward");
        }
    }

    [TestCase(1)]
    [TestCase(3)]
    public void ReluFeedForwardMatchesFloat64(int p)
    {
        var rng = NewRandom();
        const long m = 5, h = 6, f = 9;
        var x = RandomArray(rng, m * h); var w1 = RandomArray(rng, h * f); var b1 = RandomArray(rng, f); var w2 = RandomArray(rng, f * h);
        var b2 = RandomArray(rng, h); var g = RandomArray(rng, m * h);
        var z = new double[m * f];
        for (long i = 0; i < m; i++) for (long j = 0; j < f; j++) { double s = b1[j]; for (long c = 0; c < h; c++) s += (double)x[i * h + c] * w1[c * f + j]; z[i * f + j] = s; }
        var yW = new double[m * h]; var dxW = new double[m * h];
        for (long i = 0; i < m; i++)
            for (long c = 0; c < h; c++)
            {
                double s = b2[c];
                for (long j = 0; j < f; j++) s += Math.Max(z[i * f + j], 0) * w2[j * h + c];
                yW[i * h + c] = s;
            }
        for (long i = 0; i < m; i++)
            for (long j = 0; j < f; j++)
            {
                if (z[i * f + j] <= 0) continue;
                double dh = 0;
                for (long c = 0; c < h; c++) dh += g[i * h + c] * (double)w2[j * h + c];
                for (long c = 0; c < h; c++) dxW[i * h + c] += dh * w1[c * f + j];
            }
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f), WeightSource.FromArray(w2, f, h),
                WeightSource.FromArray(b2, 1, h), null, null, SwActivation.Relu);
            using var grads = new FeedForwardGradients(ctx.Device, ffn);
            using var xb = Upload(x, ctx.Device, ctx.Stream);
            using var dyb = Upload(g, ctx.Device, ctx.Stream);
            using var y = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var y2 = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var dx = Poisoned(m * h, ctx.Device, ctx.Stream);
            ffn.Forward(xb.AsMatrix(m, h), y2.AsMatrix(m, h));
            using var saved = ffn.ForwardTraining(xb.AsMatrix(m, h), y.AsMatrix(m, h));
            ffn.Backward(xb.AsMatrix(m, h), dyb.AsMatrix(m, h), dx.AsMatrix(m, h), grads, saved);
            Close(y.ToArray(ctx.Stream), yW, 0, m * h, $"rank {ctx.Rank} Y");
            Close(y2.ToArray(ctx.Stream), yW, 0, m * h, $"rank {ctx.Rank} Y (inference)");
            Close(dx.ToArray(ctx.Stream), dxW, 0, m * h, $"rank {ctx.Rank} dX");
        });
    }

    [Test]
    public void BadArgumentsAreRefused()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        WeightSource W(long r, long c) => WeightSource.FromArray(new float[r * c], r, c);
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelGatedFeedForward(ctx, W(4, 6), W(4, 5), W(6, 4)))!.ParamName, Is.EqualTo("wUp"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelGatedFeedForward(ctx, W(4, 6), W(4, 6), W(4, 6)))!.ParamName, Is.EqualTo("wDown"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ParallelGatedFeedForward(ctx, W(4, 6), W(4, 6), W(6, 4), activation: SwActivation.Relu))!.ParamName,
            Is.EqualTo("activation"));
        Assert.Throws<NotSupportedException>(() => new ParallelFeedForward(ctx, W(4, 6), null, W(6, 4), null, null, Precision.Bf16, SwActivation.Relu));
    }
}
