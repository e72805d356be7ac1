using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The FFN's training path under a 16-bit <see cref="Precision"/> (bf16, fp16; fp32 gradients): backward against float64
/// references of the rounded inputs, each rounding's error carried through the chain; kept and recomputed activations
/// bit for bit; the sequence-parallel forward equal to the rows of the all-reduce forward bit for bit.
/// Bounds (u = the compute type's unit roundoff, u_acc = 2^-24; a dot product of length K with Σ|a·b| = mag contributes
/// 2·K·u_acc·mag; each rounding to the compute type contributes u·|value|; |GeLU'| ≤ 1.13):
///   δH  = u·|H| + 1.13·2·H·u_acc·mag(Z)                        (H = GeLU(Z), Z in fp32, H rounded once)
///   δdH = 2·(H·u_acc·mag(dH) + u·|dH|)                          (dY·W2ᵀ rounded to the compute type)
///   δdZ = 1.13·δdH + u·|dZ| + 1e-6·|dZ|                          (GeLU' in fp32, rounded once)
///   dW2 = Hᵀ·dY:  Σ|δH|·|dY| + 2·M·u_acc·mag;   db2 = Σ dY: 2·M·u_acc·mag
///   dW1 = Xᵀ·dZ:  Σ|X|·δdZ + 2·M·u_acc·mag;     db1 = Σ dZ: Σ δdZ + 2·M·u_acc·mag
///   dX  = Σ_r dZ_r·W1_rᵀ: Σ δdZ·|W1| + 2·(F·u_acc·mag + u·|dX| + u·mag)   (partials rounded, summed in fp32, rounded)
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class MixedPrecisionFeedForwardTests(Backend backend) : BackendTest(backend)
{
    private const double UAcc = 1.0 / (1 << 24);
    private const long M = 5, Hd = 12, F = 19;

    private sealed record Result(float[] Y, float[] Dx, float[] DW1, float[] DB1, float[] DW2, float[] DB2, float[] YSeq);

    private Result[] Run<T>(int p, float[] x, float[] w1, float[] b1, float[] w2, float[] b2, float[] g, bool keep, Precision precision)
        where T : unmanaged
    {
        var results = new Result[p];
        var tokens = ShardingPlan.Even(M, p);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, Hd, F), WeightSource.FromArray(b1, 1, F),
                WeightSource.FromArray(w2, F, Hd), WeightSource.FromArray(b2, 1, Hd), precision: precision);
            using var grads = new FeedForwardGradients(ctx.Device, ffn);
            foreach (var b in new[] { grads.DW1, grads.DB1, grads.DW2, grads.DB2 }) b?.Fill(float.NaN, ctx.Stream);
            using var dx = MixedPrecisionLayerTests.UploadAs<T>(x, ctx.Device, ctx.Stream);
            using var y = MixedPrecisionLayerTests.PoisonedAs<T>(M * Hd, ctx.Device, ctx.Stream);
            using var dy = MixedPrecisionLayerTests.UploadAs<T>(g, ctx.Device, ctx.Stream);
            using var dxOut = MixedPrecisionLayerTests.PoisonedAs<T>(M * Hd, ctx.Device, ctx.Stream);
            using var saved = ffn.ForwardTraining(dx.AsMatrix(M, Hd), y.AsMatrix(M, Hd), keep);
            ffn.Backward(dx.AsMatrix(M, Hd), dy.AsMatrix(M, Hd), dxOut.AsMatrix(M, Hd), grads, saved);
            // Sequence-parallel forward: this rank's rows only.
            long mr = tokens.Size(ctx.Rank), off = tokens.Offset(ctx.Rank);
            using var xr = MixedPrecisionLayerTests.UploadAs<T>(x[(int)(off * Hd)..(int)((off + mr) * Hd)], ctx.Device, ctx.Stream);
            using var yr = MixedPrecisionLayerTests.PoisonedAs<T>(Math.Max(1, mr * Hd), ctx.Device, ctx.Stream);
            ffn.ForwardSequenceParallel(xr.AsMatrix(mr, Hd), yr.AsMatrix(mr, Hd), tokens);
            ctx.Synchronize();
            var s = ctx.Stream;
            results[ctx.Rank] = new Result(MixedPrecisionLayerTests.Read(y, s), MixedPrecisionLayerTests.Read(dxOut, s),
                grads.DW1?.ToArray(s) ?? [], grads.DB1?.ToArray(s) ?? [], grads.DW2?.ToArray(s) ?? [],
                ctx.Rank == 0 ? grads.DB2.ToArray(s) : [], MixedPrecisionLayerTests.Read(yr, s)[..(int)(mr * Hd)]);
        });
        return results;
    }

    [TestCase(1, SwDtype.BF16)]
    [TestCase(2, SwDtype.BF16)]
    [TestCase(3, SwDtype.BF16)]
    [TestCase(8, SwDtype.BF16)]
    [TestCase(2, SwDtype.F16)]
    [TestCase(5, SwDtype.F16)]
    public void BackwardMatchesFloat64OfTheRoundedInputs(int p, SwDtype t)
    {
        var precision = new Precision(t, t, t, SwDtype.F32);
        if (t == SwDtype.BF16) Check<BFloat16>(p, precision);
        else Check<Half>(p, precision);
    }

    private void Check<T>(int p, Precision precision) where T : unmanaged
    {
        var rng = NewRandom();
        float[] R(float[] v) => MixedPrecisionLayerTests.Rounded<T>(v);
        var x = R(RandomArray(rng, M * Hd));
        var w1 = RandomArray(rng, Hd * F, 0.5f);
        var b1 = RandomArray(rng, F);
        var w2 = RandomArray(rng, F * Hd, 0.5f);
        var b2 = RandomArray(rng, Hd);
        var g = R(RandomArray(rng, M * Hd));
        var kept = Run<T>(p, x, w1, b1, w2, b2, g, keep: true, precision);
        var recomputed = Run<T>(p, x, w1, b1, w2, b2, g, keep: false, precision);
        double u = MixedPrecisionLayerTests.Unit(precision.Compute);
        var (w1r, b1r, w2r, b2r) = (R(w1), R(b1), R(w2), R(b2));

        // float64 chain from the rounded inputs, with the error bounds of the summary above.
        var (z, zMag) = Reference.Gemm(x, Hd, false, w1r, F, false, M, F, Hd, bias: b1r);
        var hv = new double[M * F];
        var dH = new double[M * F];
        for (int e = 0; e < hv.Length; e++)
        {
            hv[e] = Reference.Gelu(z[e]);
            dH[e] = u * Math.Abs(hv[e]) + 1.13 * 2 * Hd * UAcc * zMag[e] + 1e-6 * Math.Abs(hv[e]);
        }
        var (dh, dhMag) = Reference.Gemm(g, Hd, false, w2r, Hd, true, M, F, Hd);
        var dz = new double[M * F];
        var dZ = new double[M * F];
        for (int e = 0; e < dz.Length; e++)
        {
            double grad = GeluGrad(z[e]);
            dz[e] = dh[e] * grad;
            double ddh = 2 * (Hd * UAcc * dhMag[e] + u * Math.Abs(dh[e]));
            dZ[e] = 1.13 * ddh + u * Math.Abs(dz[e]) + 1e-6 * Math.Abs(dz[e]) + Math.Abs(dh[e]) * 2 * Hd * UAcc * zMag[e] * 2;
        }
        // dW2 = Hᵀ·dY (F × Hd), db2 = Σ dY
        var dw2 = new double[F * Hd]; var dw2Tol = new double[F * Hd];
        for (long q = 0; q < F; q++)
            for (long j = 0; j < Hd; j++)
            {
                double s = 0, mag = 0, carried = 0;
                for (long i = 0; i < M; i++)
                {
                    s += hv[i * F + q] * g[i * Hd + j];
                    mag += Math.Abs(hv[i * F + q] * g[i * Hd + j]);
                    carried += dH[i * F + q] * Math.Abs(g[i * Hd + j]);
                }
                dw2[q * Hd + j] = s;
                dw2Tol[q * Hd + j] = carried + 2 * (M * UAcc * (mag + carried) + UAcc * Math.Abs(s)) + 1e-30;
            }
        // dW1 = Xᵀ·dZ (Hd × F), db1 = Σ dZ, dX = dZ·W1ᵀ (M × Hd)
        var dw1 = new double[Hd * F]; var dw1Tol = new double[Hd * F];
        for (long c = 0; c < Hd; c++)
            for (long q = 0; q < F; q++)
            {
                double s = 0, mag = 0, carried = 0;
                for (long i = 0; i < M; i++)
                {
                    s += x[i * Hd + c] * dz[i * F + q];
                    mag += Math.Abs(x[i * Hd + c] * dz[i * F + q]);
                    carried += Math.Abs(x[i * Hd + c]) * dZ[i * F + q];
                }
                dw1[c * F + q] = s;
                dw1Tol[c * F + q] = carried + 2 * (M * UAcc * (mag + carried) + UAcc * Math.Abs(s)) + 1e-30;
            }
        var db1 = new double[F]; var db1Tol = new double[F];
        for (long q = 0; q < F; q++)
        {
            double s = 0, mag = 0, carried = 0;
            for (long i = 0; i < M; i++) { s += dz[i * F + q]; mag += Math.Abs(dz[i * F + q]); carried += dZ[i * F + q]; }
            db1[q] = s;
            db1Tol[q] = carried + 2 * (M * UAcc * (mag + carried) + UAcc * Math.Abs(s)) + 1e-30;
        }
        var dxw = new double[M * Hd]; var dxTol = new double[M * Hd];
        for (long i = 0; i < M; i++)
            for (long c = 0; c < Hd; c++)
            {
                double s = 0, mag = 0, carried = 0;
                for (long q = 0; q < F; q++)
                {
                    s += dz[i * F + q] * w1r[c * F + q];
                    mag += Math.Abs(dz[i * F + q] * w1r[c * F + q]);
                    carried += dZ[i * F + q] * Math.Abs(w1r[c * F + q]);
                }
                dxw[i * Hd + c] = s;
                dxTol[i * Hd + c] = carried + 2 * (F * UAcc * (mag + carried) + u * Math.Abs(s) + u * (mag + carried)) + 1e-30;
            }
        var db2 = new double[Hd]; var db2Tol = new double[Hd];
        for (long j = 0; j < Hd; j++)
        {
            double s = 0, mag = 0;
            for (long i = 0; i < M; i++) { s += g[i * Hd + j]; mag += Math.Abs(g[i * Hd + j]); }
            db2[j] = s;
            db2Tol[j] = 2 * (M * UAcc * mag + UAcc * Math.Abs(s)) + 1e-30;
        }

        var plan = ShardingPlan.Even(F, p);
        var tokens = ShardingPlan.Even(M, p);
        for (int r = 0; r < p; r++)
        {
            long off = plan.Offset(r), fr = plan.Size(r);
            Near(kept[r].Dx, dxw, dxTol, $"rank {r} dX");
            if (fr > 0)
            {
                Near(kept[r].DW1, Columns(dw1, Hd, F, off, fr), Columns(dw1Tol, Hd, F, off, fr), $"rank {r} dW1_r");
                Near(kept[r].DB1, db1[(int)off..(int)(off + fr)], db1Tol[(int)off..(int)(off + fr)], $"rank {r} db1_r");
                Near(kept[r].DW2, dw2[(int)(off * Hd)..(int)((off + fr) * Hd)], dw2Tol[(int)(off * Hd)..(int)((off + fr) * Hd)], $"rank {r} dW2_r");
            }
            if (r == 0) Near(kept[r].DB2, db2, db2Tol, "db2 (rank 0)");
            // Kept and recomputed activations give the same bits; so do the sequence-parallel rows and the all-reduce rows.
            Reference.AssertBitwise(recomputed[r].Dx, kept[r].Dx, $"rank {r} dX recomputed");
            Reference.AssertBitwise(recomputed[r].DW1, kept[r].DW1, $"rank {r} dW1 recomputed");
            Reference.AssertBitwise(recomputed[r].DW2, kept[r].DW2, $"rank {r} dW2 recomputed");
            long mr = tokens.Size(r), m0 = tokens.Offset(r);
            Reference.AssertBitwise(kept[r].YSeq, kept[r].Y[(int)(m0 * Hd)..(int)((m0 + mr) * Hd)], $"rank {r} sequence-parallel rows");
        }
    }

    private static double GeluGrad(double v)
    {
        const double c = 0.7978845608028654;
        double t = Math.Tanh(c * (v + 0.044715 * v * v * v));
        return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v);
    }

    private static double[] Columns(double[] a, long rows, long cols, long c0, long count)
    {
        var s = new double[rows * count];
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < count; j++) s[i * count + j] = a[i * cols + c0 + j];
        return s;
    }

    private static void Near(float[] got, double[] want, double[] tol, string what)
    {
        Assert.That(got, Has.Length.EqualTo(want.Length), what);
        int bad = 0;
        string first = "";
        for (int e = 0; e < want.Length; e++)
            if (!(Math.Abs(got[e] - want[e]) <= tol[e]) && bad++ == 0) first = $"[{e}]: got {got[e]:R}, expected {want[e]:R} ± {tol[e]:E2}";
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {want.Length} wrong; first {first}");
    }
}
