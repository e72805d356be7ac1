using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>A plain float64 multi-head (grouped-query) self-attention with its backward: the single-rank reference of
/// the tensor-parallel layer. Row-major: x M × H, wq H × heads·d, wk / wv H × kv·d, wo heads·d × H.</summary>
internal sealed class AttentionReference
{
    public int Heads, Kv;
    public long M, T, H, D;
    public bool Causal;
    public double[] X = [], Wq = [], Wk = [], Wv = [], Wo = [], Bq = [], Bk = [], Bv = [], Bo = [];
    // Forward results.
    public double[] Q = [], K = [], V = [], P = [], O = [], Y = [];
    // Gradients.
    public double[] DX = [], DWq = [], DWk = [], DWv = [], DWo = [], DBq = [], DBk = [], DBv = [], DBo = [];

    private static double[] Project(double[] x, double[] w, double[] b, long m, long k, long n)
    {
        var y = new double[m * n];
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
            {
                double s = b.Length > 0 ? b[j] : 0;
                for (long c = 0; c < k; c++) s += x[i * k + c] * w[c * n + j];
                y[i * n + j] = s;
            }
        return y;
    }

    public void Forward()
    {
        long qd = Heads * D, kd = Kv * D, b = M / T;
        int g = Heads / Kv;
        double scale = 1 / Math.Sqrt(D);
        Q = Project(X, Wq, Bq, M, H, qd);
        K = Project(X, Wk, Bk, M, H, kd);
        V = Project(X, Wv, Bv, M, H, kd);
        P = new double[b * Heads * T * T];
        O = new double[M * qd];
        for (long s = 0; s < b; s++)
            for (int h = 0; h < Heads; h++)
            {
                int kh = h / g;
                long pbase = (s * Heads + h) * T * T;
                for (long i = 0; i < T; i++)
                {
                    long kept = Causal ? i + 1 : T;
                    double mx = double.NegativeInfinity, sum = 0;
                    var sc = new double[T];
                    for (long j = 0; j < kept; j++)
                    {
                        double v = 0;
                        for (long c = 0; c < D; c++) v += Q[(s * T + i) * qd + h * D + c] * K[(s * T + j) * kd + kh * D + c];
                        sc[j] = v * scale;
                        mx = Math.Max(mx, sc[j]);
                    }
                    for (long j = 0; j < kept; j++) sum += Math.Exp(sc[j] - mx);
                    for (long j = 0; j < kept; j++) P[pbase + i * T + j] = Math.Exp(sc[j] - mx) / sum;
                    for (long c = 0; c < D; c++)
                    {
                        double v = 0;
                        for (long j = 0; j < kept; j++) v += P[pbase + i * T + j] * V[(s * T + j) * kd + kh * D + c];
                        O[(s * T + i) * qd + h * D + c] = v;
                    }
                }
            }
        Y = Project(O, Wo, Bo, M, qd, H);
    }

    public void Backward(double[] dy)
    {
        long qd = Heads * D, kd = Kv * D, b = M / T;
        int g = Heads / Kv;
        double scale = 1 / Math.Sqrt(D);
        // Output projection.
        var dO = new double[M * qd];
        DWo = new double[qd * H];
        DBo = new double[H];
        for (long i = 0; i < M; i++)
            for (long j = 0; j < H; j++)
            {
                DBo[j] += dy[i * H + j];
                for (long c = 0; c < qd; c++)
                {
                    dO[i * qd + c] += dy[i * H + j] * Wo[c * H + j];
                    DWo[c * H + j] += O[i * qd + c] * dy[i * H + j];
                }
            }
        var dQ = new double[M * qd];
        var dK = new double[M * kd];
        var dV = new double[M * kd];
        for (long s = 0; s < b; s++)
            for (int h = 0; h < Heads; h++)
            {
                int kh = h / g;
                long pbase = (s * Heads + h) * T * T;
                for (long i = 0; i < T; i++)
                {
                    var dp = new double[T];
                    double dot = 0;
                    for (long j = 0; j < T; j++)
                    {
                        for (long c = 0; c < D; c++) dp[j] += dO[(s * T + i) * qd + h * D + c] * V[(s * T + j) * kd + kh * D + c];
                        dot += dp[j] * P[pbase + i * T + j];
                    }
                    for (long j = 0; j < T; j++)
                    {
                        double pij = P[pbase + i * T + j];
                        double ds = scale * pij * (dp[j] - dot);
                        for (long c = 0; c < D; c++)
                        {
                            dV[(s * T + j) * kd + kh * D + c] += pij * dO[(s * T + i) * qd + h * D + c];
                            dQ[(s * T + i) * qd + h * D + c] += ds * K[(s * T + j) * kd + kh * D + c];
                            dK[(s * T + j) * kd + kh * D + c] += ds * Q[(s * T + i) * qd + h * D + c];
                        }
                    }
                }
            }
        DX = new double[M * H];
        (DWq, DBq) = ProjectionGrads(dQ, Wq, qd);
        (DWk, DBk) = ProjectionGrads(dK, Wk, kd);
        (DWv, DBv) = ProjectionGrads(dV, Wv, kd);
    }

    private (double[] DW, double[] DB) ProjectionGrads(double[] dout, double[] w, long n)
    {
        var dw = new double[H * n];
        var db = new double[n];
        for (long i = 0; i < M; i++)
            for (long j = 0; j < n; j++)
            {
                db[j] += dout[i * n + j];
                for (long c = 0; c < H; c++)
                {
                    dw[c * n + j] += X[i * H + c] * dout[i * n + j];
                    DX[i * H + c] += dout[i * n + j] * w[c * n + j];
                }
            }
        return (dw, db);
    }

    public double Loss(double[] dy) => Y.Select((v, i) => v * dy[i]).Sum();
}

/// <summary>The tensor-parallel self-attention layer: forward and every gradient against the float64 reference (whose
/// backward is checked by finite differences), finite differences of the layer itself, p = 1..8 with uneven and empty
/// head shards, grouped-query attention, causal and not, kept and recomputed activations, collectives counted.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class AttentionTests(Backend backend) : BackendTest(backend)
{
    private sealed record Result(float[] Y, float[] Dx, float[] DWq, float[] DWk, float[] DWv, float[] DWo, float[] DBq, float[] DBk,
        float[] DBv, float[] DBo, ulong ForwardCollectives, ulong BackwardCollectives);

    private static double[] D(float[] a) => a.Select(v => (double)v).ToArray();

    private Result[] Run(int p, AttentionReference r, float[] x, float[][] w, float[] dy, bool keep, ShardingPlan? plan = null, bool backward = true)
    {
        var results = new Result[p];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        long qd = r.Heads * r.D, kd = r.Kv * r.D, m = r.M, h = r.H;
        Spmd.Run(group, ctx =>
        {
            using var attn = new ParallelSelfAttention(ctx, r.Heads, r.Kv, WeightSource.FromArray(w[0], h, qd), WeightSource.FromArray(w[1], h, kd),
                WeightSource.FromArray(w[2], h, kd), WeightSource.FromArray(w[3], qd, h), WeightSource.FromArray(w[4], 1, qd),
                WeightSource.FromArray(w[5], 1, kd), WeightSource.FromArray(w[6], 1, kd), WeightSource.FromArray(w[7], 1, h), r.Causal, plan);
            using var grads = new AttentionGradients(ctx.Device, attn);
            using var xb = Upload(x, ctx.Device, ctx.Stream);
            using var y = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var dyb = Upload(dy, ctx.Device, ctx.Stream);
            using var dx = Poisoned(m * h, ctx.Device, ctx.Stream);
            foreach (var gb in new[] { grads.DWq, grads.DWk, grads.DWv, grads.DWo, grads.DBq, grads.DBk, grads.DBv, grads.DBo })
                gb?.Fill(float.NaN, ctx.Stream);
            ctx.Synchronize();
            ulong c0 = group.CollectiveCount(ctx.Rank);
            using var saved = attn.ForwardTraining(xb.AsMatrix(m, h), y.AsMatrix(m, h), r.T, keep);
            ctx.Synchronize();
            ulong c1 = group.CollectiveCount(ctx.Rank);
            if (backward) attn.Backward(xb.AsMatrix(m, h), dyb.AsMatrix(m, h), dx.AsMatrix(m, h), grads, saved);
            ctx.Synchronize();
            float[] A(DeviceBuffer<float>? b) => b?.ToArray(ctx.Stream) ?? [];
            results[ctx.Rank] = new Result(y.ToArray(ctx.Stream), dx.ToArray(ctx.Stream), A(grads.DWq), A(grads.DWk), A(grads.DWv), A(grads.DWo),
                A(grads.DBq), A(grads.DBk), A(grads.DBv), A(grads.DBo), c1 - c0, group.CollectiveCount(ctx.Rank) - c1);
        });
        return results;
    }

    private static void Close(float[] got, double[] want, string what)
    {
        double mag = want.Length == 0 ? 1 : want.Max(Math.Abs);
        Assert.That(got, Has.Length.EqualTo(want.Length), what + ": length");
        for (int i = 0; i < want.Length; i++)
            Assert.That(got[i], Is.EqualTo(want[i]).Within(2e-5 * mag + 1e-6), $"{what}[{i}]");
    }

    // Columns [c0, c0 + n) of a rows × cols row-major matrix; rows [r0, r0 + n) when byRows.
    private static double[] Cols(double[] a, long rows, long cols, long c0, long n)
    {
        var o = new double[rows * n];
        for (long i = 0; i < rows; i++) for (long j = 0; j < n; j++) o[i * n + j] = a[i * cols + c0 + j];
        return o;
    }

    private static (AttentionReference Ref, float[] X, float[][] W, float[] Dy) Problem(Random rng, int heads, int kv, long b, long t, long h, long d, bool causal)
    {
        long m = b * t, qd = heads * d, kd = kv * d;
        var x = RandomArray(rng, m * h);
        var w = new[] { RandomArray(rng, h * qd, 0.6f), RandomArray(rng, h * kd, 0.6f), RandomArray(rng, h * kd, 0.6f), RandomArray(rng, qd * h, 0.5f),
            RandomArray(rng, qd, 0.3f), RandomArray(rng, kd, 0.3f), RandomArray(rng, kd, 0.3f), RandomArray(rng, h, 0.3f) };
        var dy = RandomArray(rng, m * h);
        var r = new AttentionReference
        {
            Heads = heads, Kv = kv, M = m, T = t, H = h, D = d, Causal = causal, X = D(x), Wq = D(w[0]), Wk = D(w[1]), Wv = D(w[2]), Wo = D(w[3]),
            Bq = D(w[4]), Bk = D(w[5]), Bv = D(w[6]), Bo = D(w[7]),
        };
        r.Forward();
        r.Backward(D(dy));
        return (r, x, w, dy);
    }

    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences([Values] bool causal)
    {
        var rng = NewRandom();
        var (r, _, _, dy) = Problem(rng, 4, 2, 2, 4, 6, 3, causal);
        var g = D(dy);
        // One random direction through every input and parameter at once.
        var dirs = new[] { r.X, r.Wq, r.Wk, r.Wv, r.Wo, r.Bq, r.Bk, r.Bv, r.Bo }.Select(a => D(RandomArray(rng, a.Length))).ToArray();
        var grads = new[] { r.DX, r.DWq, r.DWk, r.DWv, r.DWo, r.DBq, r.DBk, r.DBv, r.DBo };
        double analytic = 0;
        for (int i = 0; i < dirs.Length; i++) analytic += grads[i].Select((v, j) => v * dirs[i][j]).Sum();
        double L(double eps)
        {
            double[] S(double[] a, int i) => a.Select((v, j) => v + eps * dirs[i][j]).ToArray();
            var q = new AttentionReference
            {
                Heads = r.Heads, Kv = r.Kv, M = r.M, T = r.T, H = r.H, D = r.D, Causal = causal,
                X = S(r.X, 0), Wq = S(r.Wq, 1), Wk = S(r.Wk, 2), Wv = S(r.Wv, 3), Wo = S(r.Wo, 4), Bq = S(r.Bq, 5), Bk = S(r.Bk, 6), Bv = S(r.Bv, 7), Bo = S(r.Bo, 8),
            };
            q.Forward();
            return q.Loss(g);
        }
        double fd = (L(1e-6) - L(-1e-6)) / 2e-6;
        Assert.That(analytic, Is.EqualTo(fd).Within(1e-6 * (1 + Math.Abs(fd))));
    }

    // p, heads, kv heads (GQA when fewer), causal: uneven head splits, empty shards (p > kv heads), one head per rank.
    [TestCase(1, 4, 2, true)]
    [TestCase(2, 6, 3, true)]
    [TestCase(2, 4, 4, false)]
    [TestCase(3, 8, 2, true)]
    [TestCase(4, 5, 5, false)]
    [TestCase(5, 6, 3, true)]
    [TestCase(8, 9, 3, false)]
    public void ForwardAndGradientsMatchFloat64(int p, int heads, int kv, bool causal)
    {
        var rng = NewRandom();
        const long b = 2, t = 5, h = 8, d = 3;
        var (r, x, w, dy) = Problem(rng, heads, kv, b, t, h, d, causal);
        var kept = Run(p, r, x, w, dy, keep: true);
        var recomputed = Run(p, r, x, w, dy, keep: false);
        var plan = ShardingPlan.Even(kv, p);
        int g = heads / kv;
        long qd = heads * d, kd = kv * d;
        for (int rank = 0; rank < p; rank++)
        {
            var k = kept[rank];
            Close(k.Y, r.Y, $"rank {rank} Y");
            Close(k.Dx, r.DX, $"rank {rank} dX");
            Assert.That(k.ForwardCollectives, Is.EqualTo(1UL), $"rank {rank}: collectives in the forward");
            Assert.That(k.BackwardCollectives, Is.EqualTo(1UL), $"rank {rank}: collectives in the backward");
            long kh0 = plan.Offset(rank), khn = plan.Size(rank);
            long q0 = kh0 * g * d, qn = khn * g * d, k0 = kh0 * d, kn = khn * d;
            Close(k.DWq, qn == 0 ? [] : Cols(r.DWq, h, qd, q0, qn), $"rank {rank} dWq");
            Close(k.DWk, kn == 0 ? [] : Cols(r.DWk, h, kd, k0, kn), $"rank {rank} dWk");
            Close(k.DWv, kn == 0 ? [] : Cols(r.DWv, h, kd, k0, kn), $"rank {rank} dWv");
            Close(k.DWo, qn == 0 ? [] : r.DWo.Skip((int)(q0 * h)).Take((int)(qn * h)).ToArray(), $"rank {rank} dWo");
            Close(k.DBq, qn == 0 ? [] : r.DBq.Skip((int)q0).Take((int)qn).ToArray(), $"rank {rank} dbq");
            Close(k.DBk, kn == 0 ? [] : r.DBk.Skip((int)k0).Take((int)kn).ToArray(), $"rank {rank} dbk");
            Close(k.DBv, kn == 0 ? [] : r.DBv.Skip((int)k0).Take((int)kn).ToArray(), $"rank {rank} dbv");
            Close(k.DBo, rank == 0 ? r.DBo : [], $"rank {rank} dbo");
            var rc = recomputed[rank];
            Reference.AssertBitwise(rc.Y, k.Y, $"rank {rank}: Y recomputed vs kept");
            Reference.AssertBitwise(rc.Dx, k.Dx, $"rank {rank}: dX recomputed vs kept");
            Reference.AssertBitwise(rc.DWq, k.DWq, $"rank {rank}: dWq recomputed vs kept");
            Reference.AssertBitwise(rc.DWk, k.DWk, $"rank {rank}: dWk recomputed vs kept");
            Assert.That(rc.BackwardCollectives, Is.EqualTo(1UL), $"rank {rank}: collectives in the recomputing backward");
        }
    }

    [TestCase(2, 4, 2)]
    [TestCase(3, 6, 3)]
    public void SequenceParallelMatchesFloat64(int p, int heads, int kv)
    {
        var rng = NewRandom();
        const long b = 2, t = 5, h = 8, d = 3;
        var (r, x, w, dy) = Problem(rng, heads, kv, b, t, h, d, causal: true);
        long m = b * t, qd = heads * d, kd = kv * d;
        var tokens = ShardingPlan.Even(m, p); // blocks that cut through sequences
        var plan = ShardingPlan.Even(kv, p);
        int g = heads / kv;
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            long r0 = tokens.Offset(ctx.Rank), mr = tokens.Size(ctx.Rank);
            using var attn = new ParallelSelfAttention(ctx, heads, kv, WeightSource.FromArray(w[0], h, qd), WeightSource.FromArray(w[1], h, kd),
                WeightSource.FromArray(w[2], h, kd), WeightSource.FromArray(w[3], qd, h), WeightSource.FromArray(w[4], 1, qd),
                WeightSource.FromArray(w[5], 1, kd), WeightSource.FromArray(w[6], 1, kd), WeightSource.FromArray(w[7], 1, h));
            using var grads = new AttentionGradients(ctx.Device, attn);
            using var xb = Upload(x[(int)(r0 * h)..(int)((r0 + mr) * h)], ctx.Device, ctx.Stream);
            using var dyb = Upload(dy[(int)(r0 * h)..(int)((r0 + mr) * h)], ctx.Device, ctx.Stream);
            using var y = Poisoned(mr * h, ctx.Device, ctx.Stream);
            using var y2 = Poisoned(mr * h, ctx.Device, ctx.Stream);
            using var dx = Poisoned(mr * h, ctx.Device, ctx.Stream);
            ulong c0 = group.CollectiveCount(ctx.Rank);
            using var saved = attn.ForwardTrainingSequenceParallel(xb.AsMatrix(mr, h), y.AsMatrix(mr, h), t, tokens);
            ctx.Synchronize();
            ulong c1 = group.CollectiveCount(ctx.Rank);
            attn.BackwardSequenceParallel(xb.AsMatrix(mr, h), dyb.AsMatrix(mr, h), dx.AsMatrix(mr, h), grads, saved, tokens);
            ctx.Synchronize();
            Assert.That(c1 - c0, Is.EqualTo(2UL), "collectives in the sequence-parallel forward");
            Assert.That(group.CollectiveCount(ctx.Rank) - c1, Is.EqualTo(3UL), "collectives in the sequence-parallel backward");
            attn.ForwardSequenceParallel(xb.AsMatrix(mr, h), y2.AsMatrix(mr, h), t, tokens);
            Reference.AssertBitwise(y2.ToArray(ctx.Stream), y.ToArray(ctx.Stream), "inference vs training forward");
            Close(y.ToArray(ctx.Stream), r.Y.Skip((int)(r0 * h)).Take((int)(mr * h)).ToArray(), $"rank {ctx.Rank} Y rows");
            Close(dx.ToArray(ctx.Stream), r.DX.Skip((int)(r0 * h)).Take((int)(mr * h)).ToArray(), $"rank {ctx.Rank} dX rows");
            long q0 = plan.Offset(ctx.Rank) * g * d, qn = plan.Size(ctx.Rank) * g * d;
            Close(grads.DWq!.ToArray(ctx.Stream), Cols(r.DWq, h, qd, q0, qn), $"rank {ctx.Rank} dWq");
            if (ctx.Rank == 0) Close(grads.DBo!.ToArray(ctx.Stream), r.DBo, "dbo");
        });
    }

    [Test]
    public void UnevenHeadPlanAndFiniteDifferencesOfTheLayer()
    {
        var rng = NewRandom();
        const long b = 1, t = 6, h = 8, d = 2;
        var (r, x, w, dy) = Problem(rng, 6, 3, b, t, h, d, causal: true);
        var plan = ShardingPlan.FromSizes(2, 0, 1); // rank 1 holds no head
        var res = Run(3, r, x, w, dy, keep: true, plan);
        Close(res[1].Y, r.Y, "Y with an empty rank");
        Close(res[1].Dx, r.DX, "dX with an empty rank");
        Assert.That(res[1].DWq, Is.Empty, "rank 1 holds no head");
        Close(res[2].DWk, Cols(r.DWk, h, 3 * d, 2 * d, d), "rank 2 dWk");

        // Central differences of the fp32 layer along a random direction of Wk (L = Σ Y∘dY), against its own dWk.
        var e = RandomArray(rng, w[1].Length);
        const float eps = 1e-2f;
        double L(float sign)
        {
            var w2 = (float[][])w.Clone();
            w2[1] = w[1].Select((v, i) => v + sign * eps * e[i]).ToArray();
            var y = Run(3, r, x, w2, dy, keep: true, plan, backward: false)[0].Y;
            return y.Select((v, i) => (double)v * dy[i]).Sum();
        }
        double fd = (L(1) - L(-1)) / (2 * eps);
        var full = new double[h * 3 * d];
        for (int rank = 0; rank < 3; rank++)
        {
            long k0 = plan.Offset(rank) * d, kn = plan.Size(rank) * d;
            for (long c = 0; c < h; c++) for (long j = 0; j < kn; j++) full[c * 3 * d + k0 + j] = res[rank].DWk[c * kn + j];
        }
        double analytic = full.Select((v, i) => v * e[i]).Sum();
        Assert.That(analytic, Is.EqualTo(fd).Within(2e-3 * (1 + Math.Abs(fd))));
    }

    [Test]
    public void BadShapesAreRefusedNamingTheArgument()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        WeightSource W(long rows, long cols) => WeightSource.FromArray(new float[rows * cols], rows, cols);
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelSelfAttention(ctx, 6, 4, W(8, 12), W(8, 8), W(8, 8), W(12, 8)))!.ParamName, Is.EqualTo("heads"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelSelfAttention(ctx, 5, 5, W(8, 12), W(8, 12), W(8, 12), W(12, 8)))!.ParamName, Is.EqualTo("wq"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelSelfAttention(ctx, 4, 2, W(8, 12), W(8, 12), W(8, 6), W(12, 8)))!.ParamName, Is.EqualTo("wk"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelSelfAttention(ctx, 4, 2, W(8, 12), W(8, 6), W(8, 6), W(8, 12)))!.ParamName, Is.EqualTo("wo"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ParallelSelfAttention(ctx, 0, 1, W(8, 12), W(8, 6), W(8, 6), W(8, 12)))!.ParamName, Is.EqualTo("heads"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelSelfAttention(ctx, 4, 2, W(8, 12), W(8, 6), W(8, 6), W(12, 8),
            kvHeadPlan: ShardingPlan.FromSizes(1, 1)))!.ParamName, Is.EqualTo("kvHeadPlan"));
        using var attn = new ParallelSelfAttention(ctx, 4, 2, W(8, 12), W(8, 6), W(8, 6), W(12, 8));
        using var x = Poisoned(10 * 8);
        using var y = Poisoned(10 * 8);
        Assert.That(Assert.Throws<ArgumentException>(() => attn.Forward(x.AsMatrix(10, 8), y.AsMatrix(10, 8), 4))!.ParamName, Is.EqualTo("x"));
        Assert.That(Assert.Throws<ArgumentException>(() => attn.Forward(x.AsMatrix(10, 7), y.AsMatrix(10, 8), 5))!.ParamName, Is.EqualTo("x"));
        Assert.That(Assert.Throws<ArgumentException>(() => attn.Forward(x.AsMatrix(10, 8), y.AsMatrix(9, 8), 5))!.ParamName, Is.EqualTo("y"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => attn.Forward(x.AsMatrix(10, 8), y.AsMatrix(10, 8), 0))!.ParamName, Is.EqualTo("sequenceLength"));
    }
}
