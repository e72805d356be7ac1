using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Training path of the tensor-parallel FFN: forward with kept or recomputed activations, backward with one
/// all-reduce, checked against float64 references and finite differences, uneven F.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class FeedForwardBackwardTests(Backend backend) : BackendTest(backend)
{
    private sealed record Result(float[] Y, float[] Dx, float[] DW1, float[] DB1, float[] DW2, float[] DB2, ulong Collectives);

    private Result[] Run(int p, float[] x, float[] w1, float[] b1, float[] w2, float[] b2, float[] g, long m, long h, long f, bool keep)
    {
        var results = new Result[p];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
            using var grads = new FeedForwardGradients(ctx.Device, ffn);
            using var dx = Upload(x, ctx.Device, ctx.Stream);
            using var y = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var dy = Upload(g, ctx.Device, ctx.Stream);
            using var dxOut = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var saved = ffn.ForwardTraining(dx.AsMatrix(m, h), y.AsMatrix(m, h), keep);
            ctx.Synchronize();
            ulong before = group.CollectiveCount(ctx.Rank);
            ffn.Backward(dx.AsMatrix(m, h), dy.AsMatrix(m, h), dxOut.AsMatrix(m, h), grads, saved);
            ctx.Synchronize();
            results[ctx.Rank] = new Result(y.ToArray(ctx.Stream), dxOut.ToArray(ctx.Stream),
                grads.DW1?.ToArray(ctx.Stream) ?? [], grads.DB1?.ToArray(ctx.Stream) ?? [], grads.DW2?.ToArray(ctx.Stream) ?? [],
                ctx.Rank == 0 ? grads.DB2.ToArray(ctx.Stream) : [], group.CollectiveCount(ctx.Rank) - before);
        });
        return results;
    }

    private static void Close(float got, double want, double mag, string what) =>
        Assert.That(got, Is.EqualTo(want).Within(3e-5 * mag + 1e-6), what);

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    [TestCase(5)]
    [TestCase(8)]
    public void BackwardMatchesFloat64AndKeepEqualsRecompute(int p)
    {
        var rng = NewRandom();
        const long m = 5, h = 12, f = 19;
        var x = RandomArray(rng, m * h);
        var w1 = RandomArray(rng, h * f, 0.5f);
        var b1 = RandomArray(rng, f);
        var w2 = RandomArray(rng, f * h, 0.5f);
        var b2 = RandomArray(rng, h);
        var g = RandomArray(rng, m * h);
        var kept = Run(p, x, w1, b1, w2, b2, g, m, h, f, keep: true);
        var recomputed = Run(p, x, w1, b1, w2, b2, g, m, h, f, keep: false);

        // float64 reference: Z, H, dH, dZ and every gradient, with Σ|terms| as the scale of each.
        double Gelu(double v) => Reference.Gelu(v);
        double GeluGrad(double v)
        {
            const double c = 0.7978845608028654;
            double t = Math.Tanh(c * (v + 0.044715 * v * v * v));
            return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v);
        }
        var z = new double[m * f];
        var hh = new double[m * f];
        for (long i = 0; i < m; i++)
            for (long q = 0; q < f; q++)
            {
                double s = b1[q];
                for (long c = 0; c < h; c++) s += (double)x[i * h + c] * w1[c * f + q];
                z[i * f + q] = s;
                hh[i * f + q] = Gelu(s);
            }
        var dz = new double[m * f];
        var dzMag = new double[m * f];
        for (long i = 0; i < m; i++)
            for (long q = 0; q < f; q++)
            {
                double s = 0, a = 0;
                for (long j = 0; j < h; j++) { s += g[i * h + j] * (double)w2[q * h + j]; a += Math.Abs(g[i * h + j] * (double)w2[q * h + j]); }
                double d = GeluGrad(z[i * f + q]);
                dz[i * f + q] = s * d;
                dzMag[i * f + q] = a * Math.Abs(d) + a;
            }
        var plan = ShardingPlan.Even(f, p);
        for (int r = 0; r < p; r++)
        {
            var k = kept[r];
            var rc = recomputed[r];
            Reference.AssertBitwise(rc.Dx, k.Dx, $"rank {r}: dX recomputed vs kept");
            Reference.AssertBitwise(rc.DW1, k.DW1, $"rank {r}: dW1 recomputed vs kept");
            Reference.AssertBitwise(rc.DW2, k.DW2, $"rank {r}: dW2 recomputed vs kept");
            Assert.That(k.Collectives, Is.EqualTo(1UL), $"rank {r}: collectives in backward");
            for (long i = 0; i < m; i++)
                for (long c = 0; c < h; c++)
                {
                    double s = 0, a = 0;
                    for (long q = 0; q < f; q++) { s += dz[i * f + q] * w1[c * f + q]; a += dzMag[i * f + q] * Math.Abs(w1[c * f + q]); }
                    Close(k.Dx[i * h + c], s, a, $"rank {r} dX[{i},{c}]");
                }
            long off = plan.Offset(r), fr = plan.Size(r);
            for (long c = 0; c < h; c++)
                for (long q = 0; q < fr; q++)
                {
                    double s = 0, a = 0;
                    for (long i = 0; i < m; i++) { s += x[i * h + c] * dz[i * f + off + q]; a += Math.Abs(x[i * h + c]) * dzMag[i * f + off + q]; }
                    Close(k.DW1[c * fr + q], s, a, $"rank {r} dW1[{c},{q}]");
                }
            for (long q = 0; q < fr; q++)
            {
                double s = 0, a = 0;
                for (long i = 0; i < m; i++) { s += dz[i * f + off + q]; a += dzMag[i * f + off + q]; }
                Close(k.DB1[q], s, a, $"rank {r} db1[{q}]");
                for (long j = 0; j < h; j++)
                {
                    double s2 = 0, a2 = 0;
                    for (long i = 0; i < m; i++) { s2 += hh[i * f + off + q] * g[i * h + j]; a2 += Math.Abs(hh[i * f + off + q] * g[i * h + j]); }
                    Close(k.DW2[q * h + j], s2, a2, $"rank {r} dW2[{q},{j}]");
                }
            }
            if (r == 0)
                for (long j = 0; j < h; j++)
                {
                    double s = 0, a = 0;
                    for (long i = 0; i < m; i++) { s += g[i * h + j]; a += Math.Abs(g[i * h + j]); }
                    Close(k.DB2[j], s, a, $"db2[{j}]");
                }
        }

        // Finite differences of the forward along a random direction of W1 (L = Σ Y∘G; GeLU makes it nonlinear).
        var e = RandomArray(rng, h * f);
        const float eps = 1e-2f;
        double L(float[] w) { var res = Run(p, x, w, b1, w2, b2, g, m, h, f, keep: true); return res[0].Y.Select((v, i) => (double)v * g[i]).Sum(); }
        double fd = (L(w1.Select((v, i) => v + eps * e[i]).ToArray()) - L(w1.Select((v, i) => v - eps * e[i]).ToArray())) / (2 * eps);
        double analytic = 0, scale = 0;
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), fr = plan.Size(r);
            for (long c = 0; c < h; c++)
                for (long q = 0; q < fr; q++) { analytic += kept[r].DW1[c * fr + q] * e[c * f + off + q]; scale += Math.Abs(kept[r].DW1[c * fr + q] * e[c * f + off + q]); }
        }
        double yScale = kept[0].Y.Select((v, i) => Math.Abs((double)v * g[i])).Sum();
        Assert.That(fd, Is.EqualTo(analytic).Within(2e-3 * scale + 4e-6 * yScale / eps), "finite difference vs ⟨dW1, E⟩");
    }

    // The sequence-parallel training path against the standard one at the same p: the parameter gradients come from the
    // same GEMMs on the same gathered rows (bit for bit); Y's and dX's rows agree to rounding (reduce-scatter vs
    // all-reduce); two collectives forward, three backward.
    [TestCase(2, false)]
    [TestCase(3, false)]
    [TestCase(5, false)]
    [TestCase(3, true)]
    public void SequenceParallelBackwardMatchesTheStandardPath(int p, bool bf16)
    {
        var rng = NewRandom();
        const long m = 7, h = 6, f = 11;
        var x = RandomArray(rng, m * h);
        var w1 = RandomArray(rng, h * f, 0.5f); var b1 = RandomArray(rng, f); var w2 = RandomArray(rng, f * h, 0.5f); var b2 = RandomArray(rng, h);
        var g = RandomArray(rng, m * h);
        var tokens = ShardingPlan.Even(m, p);
        var precision = bf16 ? Precision.Bf16 : Precision.Fp32;
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            long r0 = tokens.Offset(ctx.Rank), mr = tokens.Size(ctx.Rank);
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h), precision: precision);
            using var std = new FeedForwardGradients(ctx.Device, ffn);
            using var sp = new FeedForwardGradients(ctx.Device, ffn);
            using var xf = Upload(x, ctx.Device, ctx.Stream);
            using var gf = Upload(g, ctx.Device, ctx.Stream);
            if (bf16) Check<BFloat16>(); else Check<float>();

            void Check<T>() where T : unmanaged
            {
                using var xa = ctx.Device.Allocate<T>(m * h);
                using var ga = ctx.Device.Allocate<T>(m * h);
                ElementwiseOps.Convert(ctx.Stream, xf, xa, m * h);
                ElementwiseOps.Convert(ctx.Stream, gf, ga, m * h);
                using var y = ctx.Device.Allocate<T>(m * h);
                using var dx = ctx.Device.Allocate<T>(m * h);
                using var yr = ctx.Device.Allocate<T>(mr * h);
                using var dxr = ctx.Device.Allocate<T>(mr * h);
                using (var nan = Poisoned(mr * h, ctx.Device, ctx.Stream)) // outputs poisoned: an unwritten element fails
                {
                    ElementwiseOps.Convert(ctx.Stream, nan, yr, mr * h);
                    ElementwiseOps.Convert(ctx.Stream, nan, dxr, mr * h);
                }
                using var s1 = ffn.ForwardTraining(xa.AsMatrix(m, h), y.AsMatrix(m, h));
                ffn.Backward(xa.AsMatrix(m, h), ga.AsMatrix(m, h), dx.AsMatrix(m, h), std, s1);
                ctx.Synchronize();
                ulong c0 = group.CollectiveCount(ctx.Rank);
                using var s2 = ffn.ForwardTrainingSequenceParallel(xa.AsMatrix(mr, h, h, r0 * h), yr.AsMatrix(mr, h), tokens, keepActivations: false);
                ctx.Synchronize();
                ulong c1 = group.CollectiveCount(ctx.Rank);
                ffn.BackwardSequenceParallel(xa.AsMatrix(mr, h, h, r0 * h), ga.AsMatrix(mr, h, h, r0 * h), dxr.AsMatrix(mr, h), sp, s2, tokens);
                ctx.Synchronize();
                Assert.That(c1 - c0, Is.EqualTo(2UL), "collectives in the sequence-parallel forward");
                Assert.That(group.CollectiveCount(ctx.Rank) - c1, Is.EqualTo(3UL), "collectives in the sequence-parallel backward");
                if (std.DW1 is not null) Reference.AssertBitwise(sp.DW1!.ToArray(ctx.Stream), std.DW1.ToArray(ctx.Stream), $"rank {ctx.Rank} dW1");
                if (std.DW2 is not null) Reference.AssertBitwise(sp.DW2!.ToArray(ctx.Stream), std.DW2.ToArray(ctx.Stream), $"rank {ctx.Rank} dW2");
                if (ctx.Rank == 0) Reference.AssertBitwise(sp.DB2.ToArray(ctx.Stream), std.DB2.ToArray(ctx.Stream), "db2");
                using var y32 = ctx.Device.Allocate<float>(m * h);
                using var dx32 = ctx.Device.Allocate<float>(m * h);
                using var yr32 = ctx.Device.Allocate<float>(mr * h);
                using var dxr32 = ctx.Device.Allocate<float>(mr * h);
                ElementwiseOps.Convert(ctx.Stream, y, y32, m * h);
                ElementwiseOps.Convert(ctx.Stream, dx, dx32, m * h);
                ElementwiseOps.Convert(ctx.Stream, yr, yr32, mr * h);
                ElementwiseOps.Convert(ctx.Stream, dxr, dxr32, mr * h);
                var (ya, da, yb, db) = (y32.ToArray(ctx.Stream), dx32.ToArray(ctx.Stream), yr32.ToArray(ctx.Stream), dxr32.ToArray(ctx.Stream));
                double tol = bf16 ? 2e-2 : 2e-5;
                for (long i = 0; i < mr * h; i++)
                {
                    Assert.That(yb[i], Is.EqualTo(ya[r0 * h + i]).Within(tol * (1 + Math.Abs(ya[r0 * h + i]))), $"rank {ctx.Rank} Y row element {i}");
                    Assert.That(db[i], Is.EqualTo(da[r0 * h + i]).Within(tol * (1 + Math.Abs(da[r0 * h + i]))), $"rank {ctx.Rank} dX row element {i}");
                }
            }
        });
    }
}
