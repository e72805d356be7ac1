using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>The tensor-parallel transformer block against a plain unsharded float64 block: the output element by element,
/// every gradient through directional finite differences of the float64 block (one random direction per parameter
/// group), p = 1..8 with uneven heads, FFN shards and token blocks, standard and sequence-parallel, GeLU / ReLU / SwiGLU,
/// LayerNorm / RMSNorm, dropout on the residual branches; collectives counted.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class TransformerBlockTests(Backend backend) : BackendTest(backend)
{
    private sealed class Problem
    {
        public TransformerBlockOptions O = null!;
        public long M, T;
        public ulong Seed;
        // Parameters in float (uploaded) and the input / output gradient.
        public Dictionary<string, float[]> P = new();
        public float[] X = [], G = [];
        public long D => O.Hidden / O.Heads;
        public long Qd => O.Heads * D;
        public long Kd => O.KvHeads * D;
    }

    private static readonly string[] AttentionParams = ["wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"];

    private Problem Make(Random rng, TransformerBlockOptions o, long b, long t)
    {
        var pr = new Problem { O = o, M = b * t, T = t, Seed = (ulong)rng.NextInt64() };
        long h = o.Hidden, f = o.FfnHidden, d = h / o.Heads, qd = o.Heads * d, kd = o.KvHeads * d;
        void Add(string name, long n, float scale) => pr.P[name] = RandomArray(rng, n, scale);
        Add("wq", h * qd, 0.5f); Add("wk", h * kd, 0.5f); Add("wv", h * kd, 0.5f); Add("wo", qd * h, 0.5f);
        Add("bq", qd, 0.2f); Add("bk", kd, 0.2f); Add("bv", kd, 0.2f); Add("bo", h, 0.2f);
        Add("w1", h * f, 0.5f); Add("w2", f * h, 0.5f); Add("b2", h, 0.2f);
        if (o.FeedForward == FeedForwardKind.SwiGlu) Add("w3", h * f, 0.5f); else Add("b1", f, 0.2f);
        pr.P["g1"] = RandomArray(rng, h, 0.3f).Select(v => v + 1).ToArray();
        pr.P["g2"] = RandomArray(rng, h, 0.3f).Select(v => v + 1).ToArray();
        if (o.Norm == SwNormKind.Layer) { Add("n1b", h, 0.2f); Add("n2b", h, 0.2f); }
        pr.X = RandomArray(rng, pr.M * h);
        pr.G = RandomArray(rng, pr.M * h);
        return pr;
    }

    private static TransformerBlockWeights Weights(Problem pr)
    {
        var o = pr.O;
        long h = o.Hidden, f = o.FfnHidden;
        WeightSource W(string n, long r, long c) => WeightSource.FromArray(pr.P[n], r, c);
        WeightSource? Opt(string n, long r, long c) => pr.P.ContainsKey(n) ? W(n, r, c) : null;
        return new TransformerBlockWeights(W("wq", h, pr.Qd), W("wk", h, pr.Kd), W("wv", h, pr.Kd), W("wo", pr.Qd, h), W("w1", h, f), W("w2", f, h),
            Opt("w3", h, f), W("bq", 1, pr.Qd), W("bk", 1, pr.Kd), W("bv", 1, pr.Kd), W("bo", 1, h), Opt("b1", 1, f), W("b2", 1, h),
            W("g1", 1, h), Opt("n1b", 1, h), W("g2", 1, h), Opt("n2b", 1, h));
    }

    // ---------------------------------------------------------------- the plain float64 block
    private static double[] D64(float[] a) => a.Select(v => (double)v).ToArray();

    private static double[] Norm(SwNormKind kind, double[] x, double[] g, double[]? b, long m, long h, double eps)
    {
        var y = new double[m * h];
        for (long i = 0; i < m; i++)
        {
            double mean = 0, v = 0;
            if (kind == SwNormKind.Layer) { for (long c = 0; c < h; c++) mean += x[i * h + c]; mean /= h; }
            for (long c = 0; c < h; c++) v += (x[i * h + c] - mean) * (x[i * h + c] - mean);
            double rs = 1 / Math.Sqrt(v / h + eps);
            for (long c = 0; c < h; c++) y[i * h + c] = (x[i * h + c] - mean) * rs * g[c] + (b?[c] ?? 0);
        }
        return y;
    }

    private static bool Kept(ulong seed, ulong index, float p)
    {
        ulong z = seed + (index + 1) * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (uint)(z >> 40) >= (uint)Math.Ceiling(p * 16777216.0);
    }

    // y of the block in float64 for parameters q (by name) and input x.
    private static double[] Forward64(Problem pr, Dictionary<string, double[]> q, double[] x)
    {
        var o = pr.O;
        long m = pr.M, h = o.Hidden, f = o.FfnHidden;
        double keep = 1 - o.Dropout;
        var n1 = Norm(o.Norm, x, q["g1"], q.GetValueOrDefault("n1b"), m, h, o.Eps);
        var att = new AttentionReference
        {
            Heads = o.Heads, Kv = o.KvHeads, M = m, T = pr.T, H = h, D = pr.D, Causal = o.Causal, X = n1,
            Wq = q["wq"], Wk = q["wk"], Wv = q["wv"], Wo = q["wo"], Bq = q["bq"], Bk = q["bk"], Bv = q["bv"], Bo = q["bo"],
        };
        att.Forward();
        var h1 = new double[m * h];
        for (long i = 0; i < m * h; i++)
        {
            double a = att.Y[i];
            if (o.Dropout > 0) a = Kept(pr.Seed, (ulong)i, o.Dropout) ? a / keep : 0;
            h1[i] = x[i] + a;
        }
        var n2 = Norm(o.Norm, h1, q["g2"], q.GetValueOrDefault("n2b"), m, h, o.Eps);
        var y = new double[m * h];
        for (long i = 0; i < m; i++)
        {
            var hid = new double[f];
            for (long j = 0; j < f; j++)
            {
                double z = q.TryGetValue("b1", out var b1) ? b1[j] : 0, u = 0;
                for (long c = 0; c < h; c++)
                {
                    z += n2[i * h + c] * q["w1"][c * f + j];
                    if (o.FeedForward == FeedForwardKind.SwiGlu) u += n2[i * h + c] * q["w3"][c * f + j];
                }
                hid[j] = o.FeedForward switch
                {
                    FeedForwardKind.Relu => Math.Max(z, 0),
                    FeedForwardKind.SwiGlu => z / (1 + Math.Exp(-z)) * u,
                    _ => Reference.Gelu(z),
                };
            }
            for (long c = 0; c < h; c++)
            {
                double s = q["b2"][c];
                for (long j = 0; j < f; j++) s += hid[j] * q["w2"][j * h + c];
                if (o.Dropout > 0) s = Kept(pr.Seed, (ulong)(m * h + i * h + c), o.Dropout) ? s / keep : 0;
                y[i * h + c] = h1[i * h + c] + s;
            }
        }
        return y;
    }

    // ---------------------------------------------------------------- the block on p ranks
    private sealed record RankResult(float[] Y, float[] Dx, Dictionary<string, float[]> Grads, ulong ForwardCollectives, ulong BackwardCollectives);

    private RankResult[] Run(Problem pr, int p, bool sequenceParallel, bool keep, ShardingPlan? kvPlan = null, ShardingPlan? ffnPlan = null)
    {
        var o = pr.O;
        long h = o.Hidden, m = pr.M;
        var tokens = ShardingPlan.Even(m, p);
        var results = new RankResult[p];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            long r0 = sequenceParallel ? tokens.Offset(ctx.Rank) : 0, rows = sequenceParallel ? tokens.Size(ctx.Rank) : m;
            using var block = new ParallelTransformerBlock(ctx, o, Weights(pr), kvPlan, ffnPlan);
            using var grads = new TransformerBlockGradients(ctx.Device, block);
            using var x = Upload(pr.X[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var dy = Upload(pr.G[(int)(r0 * h)..(int)((r0 + rows) * h)], ctx.Device, ctx.Stream);
            using var y = Poisoned(rows * h, ctx.Device, ctx.Stream);
            using var dx = Poisoned(rows * h, ctx.Device, ctx.Stream);
            var gen = new DropoutGenerator(pr.Seed, ctx.Rank);
            ctx.Synchronize();
            ulong c0 = group.CollectiveCount(ctx.Rank);
            using var saved = sequenceParallel
                ? block.ForwardTrainingSequenceParallel(x.AsMatrix(rows, h), y.AsMatrix(rows, h), pr.T, tokens, gen, keep)
                : block.ForwardTraining(x.AsMatrix(rows, h), y.AsMatrix(rows, h), pr.T, gen, keep);
            ctx.Synchronize();
            ulong c1 = group.CollectiveCount(ctx.Rank);
            block.Backward(x.AsMatrix(rows, h), dy.AsMatrix(rows, h), dx.AsMatrix(rows, h), grads, saved);
            ctx.Synchronize();
            ulong c2 = group.CollectiveCount(ctx.Rank);
            float[] A(DeviceBuffer<float>? b) => b?.ToArray(ctx.Stream) ?? [];
            var gd = new Dictionary<string, float[]>
            {
                ["wq"] = A(grads.Attention.DWq), ["wk"] = A(grads.Attention.DWk), ["wv"] = A(grads.Attention.DWv), ["wo"] = A(grads.Attention.DWo),
                ["bq"] = A(grads.Attention.DBq), ["bk"] = A(grads.Attention.DBk), ["bv"] = A(grads.Attention.DBv), ["bo"] = A(grads.Attention.DBo),
                ["n1"] = A(grads.Norm1.Buffer), ["n2"] = A(grads.Norm2.Buffer),
            };
            if (grads.Gated is { } gg) { gd["w13"] = A(gg.DGateUp); gd["w2"] = A(gg.DDown); gd["b2"] = A(gg.DBDown); }
            else { gd["w1"] = A(grads.Dense!.DW1); gd["b1"] = A(grads.Dense.DB1); gd["w2"] = A(grads.Dense.DW2); gd["b2"] = ctx.Rank == 0 ? A(grads.Dense.DB2) : []; }
            results[ctx.Rank] = new RankResult(y.ToArray(ctx.Stream), dx.ToArray(ctx.Stream), gd, c1 - c0, c2 - c1);
        });
        return results;
    }

    // ⟨gradient, E⟩ for one parameter, summed over the ranks' shards (replicated ones once).
    private static double Directional(Problem pr, RankResult[] res, string name, float[] e, ShardingPlan kvPlan, ShardingPlan ffnPlan)
    {
        var o = pr.O;
        long h = o.Hidden, f = o.FfnHidden, d = pr.D;
        int g = o.Heads / o.KvHeads, p = res.Length;
        double s = 0;
        for (int r = 0; r < p; r++)
        {
            long q0 = kvPlan.Offset(r) * g * d, qn = kvPlan.Size(r) * g * d, k0 = kvPlan.Offset(r) * d, kn = kvPlan.Size(r) * d;
            long f0 = ffnPlan.Offset(r), fn = ffnPlan.Size(r);
            var gr = res[r].Grads;
            double Cols(float[] grad, long rows, long cols, long c0, long n)
            {
                double acc = 0;
                for (long i = 0; i < rows; i++) for (long j = 0; j < n; j++) acc += grad[i * n + j] * e[i * cols + c0 + j];
                return acc;
            }
            double Rows(float[] grad, long r0, long n, long cols)
            {
                double acc = 0;
                for (long i = 0; i < n * cols; i++) acc += grad[i] * e[r0 * cols + i];
                return acc;
            }
            switch (name)
            {
                case "wq": if (qn > 0) s += Cols(gr["wq"], h, pr.Qd, q0, qn); break;
                case "wk": if (kn > 0) s += Cols(gr["wk"], h, pr.Kd, k0, kn); break;
                case "wv": if (kn > 0) s += Cols(gr["wv"], h, pr.Kd, k0, kn); break;
                case "bq": if (qn > 0) s += Rows(gr["bq"], q0, qn, 1); break;
                case "bk": if (kn > 0) s += Rows(gr["bk"], k0, kn, 1); break;
                case "bv": if (kn > 0) s += Rows(gr["bv"], k0, kn, 1); break;
                case "wo": if (qn > 0) s += Rows(gr["wo"], q0, qn, h); break;
                case "bo": if (r == 0) s += Rows(gr["bo"], 0, h, 1); break;
                case "w1" when o.FeedForward != FeedForwardKind.SwiGlu: if (fn > 0) s += Cols(gr["w1"], h, f, f0, fn); break;
                case "b1": if (fn > 0) s += Rows(gr["b1"], f0, fn, 1); break;
                case "w1" or "w3":
                    if (fn > 0)
                    {
                        var fused = gr["w13"];
                        long half = name == "w1" ? 0 : fn;
                        for (long i = 0; i < h; i++) for (long j = 0; j < fn; j++) s += fused[i * 2 * fn + half + j] * e[i * f + f0 + j];
                    }
                    break;
                case "w2": if (fn > 0) s += Rows(gr["w2"], f0, fn, h); break;
                case "b2": if (r == 0) s += Rows(gr["b2"], 0, h, 1); break;
                case "g1": if (r == 0) s += Rows(gr["n1"], 0, h, 1); break;
                case "n1b": if (r == 0) s += Rows(gr["n1"][(int)h..], 0, h, 1); break;
                case "g2": if (r == 0) s += Rows(gr["n2"], 0, h, 1); break;
                case "n2b": if (r == 0) s += Rows(gr["n2"][(int)h..], 0, h, 1); break;
                default: throw new ArgumentException(name);
            }
        }
        return s;
    }

    private void CheckAgainstFloat64(Problem pr, RankResult[] res, bool sequenceParallel, ShardingPlan kvPlan, ShardingPlan ffnPlan, Random rng)
    {
        var o = pr.O;
        long h = o.Hidden, m = pr.M;
        int p = res.Length;
        var q = pr.P.ToDictionary(kv => kv.Key, kv => D64(kv.Value));
        var x64 = D64(pr.X);
        var y64 = Forward64(pr, q, x64);
        var tokens = ShardingPlan.Even(m, p);
        double ymag = y64.Max(Math.Abs);
        for (int r = 0; r < p; r++)
        {
            long r0 = sequenceParallel ? tokens.Offset(r) : 0, rows = sequenceParallel ? tokens.Size(r) : m;
            for (long i = 0; i < rows * h; i++)
                Assert.That(res[r].Y[i], Is.EqualTo(y64[r0 * h + i]).Within(3e-5 * ymag), $"rank {r} y[{r0 * h + i}]");
        }
        // Directional derivatives of L = Σ y∘G: finite differences of the float64 block against our gradients.
        double L(Dictionary<string, double[]> qq, double[] xx) => Forward64(pr, qq, xx).Select((v, i) => v * pr.G[i]).Sum();
        const double step = 1e-5;
        var ex = RandomArray(rng, m * h);
        double fdx = (L(q, x64.Select((v, i) => v + step * ex[i]).ToArray()) - L(q, x64.Select((v, i) => v - step * ex[i]).ToArray())) / (2 * step);
        double ax = 0;
        for (int r = 0; r < p; r++)
        {
            long r0 = sequenceParallel ? tokens.Offset(r) : 0, rows = sequenceParallel ? tokens.Size(r) : m;
            if (!sequenceParallel && r > 0) break; // every rank holds all of dX: check rank 0's, and the others equal it
            for (long i = 0; i < rows * h; i++) ax += res[r].Dx[i] * ex[r0 * h + i];
        }
        Assert.That(ax, Is.EqualTo(fdx).Within(1e-4 * (1 + Math.Abs(fdx))), "⟨dX, E⟩ vs finite differences");
        if (!sequenceParallel)
            for (int r = 1; r < p; r++) Reference.AssertBitwise(res[r].Dx, res[0].Dx, $"rank {r}: dX");
        foreach (var name in pr.P.Keys)
        {
            var e = RandomArray(rng, pr.P[name].Length);
            var plus = new Dictionary<string, double[]>(q) { [name] = q[name].Select((v, i) => v + step * e[i]).ToArray() };
            var minus = new Dictionary<string, double[]>(q) { [name] = q[name].Select((v, i) => v - step * e[i]).ToArray() };
            double fd = (L(plus, x64) - L(minus, x64)) / (2 * step);
            double analytic = Directional(pr, res, name, e, kvPlan, ffnPlan);
            Assert.That(analytic, Is.EqualTo(fd).Within(1e-4 * (1 + Math.Abs(fd))), $"⟨d{name}, E⟩ vs finite differences");
        }
    }

    [TestCase(1, FeedForwardKind.Gelu, SwNormKind.Layer, 4, 2, false, 0f)]
    [TestCase(2, FeedForwardKind.SwiGlu, SwNormKind.Rms, 4, 2, false, 0f)]
    [TestCase(3, FeedForwardKind.Gelu, SwNormKind.Layer, 6, 3, false, 0.2f)]
    [TestCase(3, FeedForwardKind.Relu, SwNormKind.Rms, 6, 6, true, 0f)]
    [TestCase(4, FeedForwardKind.SwiGlu, SwNormKind.Layer, 6, 3, true, 0.2f)]
    [TestCase(5, FeedForwardKind.Gelu, SwNormKind.Layer, 4, 4, false, 0f)] // one rank without heads
    [TestCase(8, FeedForwardKind.SwiGlu, SwNormKind.Rms, 6, 3, true, 0f)]  // five ranks without heads, uneven FFN and tokens
    public void BlockMatchesThePlainFloat64Block(int p, FeedForwardKind ffn, SwNormKind norm, int heads, int kv, bool sequenceParallel, float dropout)
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(12, heads, kv, 10, ffn, norm, Causal: true, Dropout: dropout);
        var pr = Make(rng, o, b: 2, t: 5);
        var res = Run(pr, p, sequenceParallel, keep: true);
        var kvPlan = ShardingPlan.Even(kv, p);
        var ffnPlan = ShardingPlan.Even(o.FfnHidden, p);
        CheckAgainstFloat64(pr, res, sequenceParallel, kvPlan, ffnPlan, rng);
        for (int r = 0; r < p; r++)
        {
            Assert.That(res[r].ForwardCollectives, Is.EqualTo(sequenceParallel ? 4UL : 2UL), $"rank {r}: collectives forward");
            Assert.That(res[r].BackwardCollectives, Is.EqualTo(sequenceParallel ? (p > 1 ? 8UL : 6UL) : 2UL), $"rank {r}: collectives backward");
        }
        // Recomputed sub-layer activations give the same bits as kept ones.
        var again = Run(pr, p, sequenceParallel, keep: false);
        for (int r = 0; r < p; r++)
        {
            Reference.AssertBitwise(again[r].Y, res[r].Y, $"rank {r}: Y recomputed vs kept");
            Reference.AssertBitwise(again[r].Dx, res[r].Dx, $"rank {r}: dX recomputed vs kept");
        }
    }

    [Test]
    public void SequenceParallelEqualsStandardWithDropout()
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(8, 4, 2, 12, FeedForwardKind.SwiGlu, SwNormKind.Rms, Dropout: 0.3f);
        var pr = Make(rng, o, b: 3, t: 4);
        var std = Run(pr, 2, sequenceParallel: false, keep: true);
        var sp = Run(pr, 3, sequenceParallel: true, keep: true);
        var tokens = ShardingPlan.Even(pr.M, 3);
        for (int r = 0; r < 3; r++)
        {
            long r0 = tokens.Offset(r), n = tokens.Size(r) * o.Hidden;
            for (long i = 0; i < n; i++)
            {
                Assert.That(sp[r].Y[i], Is.EqualTo(std[0].Y[r0 * o.Hidden + i]).Within(1e-5 * (1 + Math.Abs(std[0].Y[r0 * o.Hidden + i]))), $"rank {r} Y[{i}]");
                Assert.That(sp[r].Dx[i], Is.EqualTo(std[0].Dx[r0 * o.Hidden + i]).Within(1e-4 * (1 + Math.Abs(std[0].Dx[r0 * o.Hidden + i]))), $"rank {r} dX[{i}]");
            }
        }
    }

    [Test]
    public void BadOptionsAreRefused()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1);
        var ctx = group[0];
        var rng = NewRandom();
        var pr = Make(rng, new TransformerBlockOptions(12, 4, 2, 10), 1, 3);
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelTransformerBlock(ctx, pr.O with { Heads = 5 }, Weights(pr)))!.ParamName, Is.EqualTo("options"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelTransformerBlock(ctx, pr.O with { FeedForward = FeedForwardKind.SwiGlu }, Weights(pr)))!.ParamName,
            Is.EqualTo("weights"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new ParallelTransformerBlock(ctx, pr.O with { Dropout = 1f }, Weights(pr)))!.ParamName,
            Is.EqualTo("options"));
        Assert.That(Assert.Throws<ArgumentException>(() => new ParallelTransformerBlock(ctx, pr.O with { KvHeads = 3 }, Weights(pr)))!.ParamName,
            Is.EqualTo("heads"));
        using var block = new ParallelTransformerBlock(ctx, pr.O with { Dropout = 0.1f }, Weights(pr));
        using var x = Upload(pr.X);
        using var y = Poisoned(pr.X.Length);
        Assert.That(Assert.Throws<ArgumentException>(() => block.Forward(x.AsMatrix(3, 12), y.AsMatrix(3, 12), 2))!.ParamName, Is.EqualTo("sequenceLength"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => block.ForwardTraining(x.AsMatrix(3, 12), y.AsMatrix(3, 12), 3))!.ParamName, Is.EqualTo("dropout"));
    }

    // The planner's weight bytes are exactly what each rank's block loads (inference: no gradients), for every FFN kind;
    // Explain shows both levels; a device too small fails at construction naming the fewest ranks that fit.
    [TestCase(FeedForwardKind.Gelu, SwNormKind.Layer, 3)]
    [TestCase(FeedForwardKind.SwiGlu, SwNormKind.Rms, 4)]
    public void PlanCountsTheLoadedWeightsAndExplainsBothLevels(FeedForwardKind ffn, SwNormKind norm, int p)
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(12, 6, 3, 10, ffn, norm);
        var pr = Make(rng, o, b: 1, t: 4);
        var plan = LayerPlan.TransformerBlock(o, p, tokens: 8, sequenceLength: 4, training: true);
        var inference = LayerPlan.TransformerBlock(o, p);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var loaded = new long[p];
        Spmd.Run(group, ctx =>
        {
            using var block = new ParallelTransformerBlock(ctx, o, Weights(pr));
            long n = 0;
            void Add(DeviceBuffer<float>? b) => n += b?.Length ?? 0;
            foreach (var layer in new ParallelLinear[] { block.Attention.Query, block.Attention.Key, block.Attention.Value, block.Attention.Output })
            {
                Add(layer.Weight);
                Add(layer.Bias);
            }
            if (block.Gated is { } gated) { Add(gated.Up.Weight); Add(gated.Down.Weight); Add(gated.Down.Bias); }
            else { Add(block.Dense!.Up.Weight); Add(block.Dense.Up.Bias); Add(block.Dense.Down.Weight); Add(block.Dense.Down.Bias); }
            n += 2 * (block.Norm1.ParameterCount + block.Norm2.ParameterCount); // parameters and the partial-gradient room
            loaded[ctx.Rank] = n * sizeof(float);
        });
        for (int r = 0; r < p; r++)
        {
            Assert.That(inference.Ranks[r].WeightBytes, Is.EqualTo(loaded[r]), $"rank {r}: planned vs loaded weight bytes");
            Assert.That(plan.Ranks[r].WeightBytes, Is.GreaterThan(loaded[r]), $"rank {r}: training adds the gradients");
            Assert.That(plan.Ranks[r].ActivationBytes, Is.GreaterThan(0));
        }
        var text = plan.Explain(Dev);
        Assert.That(text, Does.Contain("transformer block H 12, 6 heads / 3 key-value heads of 2"));
        Assert.That(text, Does.Contain("level 1: key/value heads"));
        Assert.That(text, Does.Contain("level 2: "));
        Assert.That(plan.WithRanks(1).MaxBytesPerDevice, Is.GreaterThan(plan.MaxBytesPerDevice), "one rank holds more than one of p");
        // Too little memory for one rank: the constructor names the fewest ranks that would hold the weights.
        using var small = Device.Open(Backend);
        small.MemoryLimitBytes = (ulong)(inference.WithRanks(2).MaxBytesPerDevice + 64);
        using var one = ProcessGroup.CreateLocal(small, 1);
        var ex = Assert.Throws<InsufficientDeviceMemoryException>(() => new ParallelTransformerBlock(one[0], o, Weights(pr)))!;
        Assert.That(ex.FewestRanks, Is.EqualTo(2));
    }
}
