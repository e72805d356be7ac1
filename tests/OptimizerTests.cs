using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Shard-aware optimizers, clipping and schedules: the layers' parameter lists describe their shards (checked by
/// reassembling the full tensors from them), SGD with momentum / Nesterov / weight decay and AdamW over several steps equal
/// a float64 implementation on the full tensors, for p = 1..4 with uneven shards; clipping by the global norm equals the
/// unsharded norm with replicated parameters counted once.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class OptimizerTests(Backend backend) : BackendTest(backend)
{
    private const long H = 6, F = 7;

    // The full tensors of an FFN (w1 H×F, b1 F, w2 F×H, b2 H), by name.
    private static Dictionary<string, (long Rows, long Cols)> Shapes => new()
    {
        ["w1"] = (H, F), ["b1"] = (1, F), ["w2"] = (F, H), ["b2"] = (1, H),
    };

    private static float[] Block(float[] full, long fullCols, ParameterShard p)
    {
        var b = new float[p.Count];
        for (long r = 0; r < p.Rows; r++)
            for (long c = 0; c < p.Cols; c++) b[r * p.Cols + c] = full[(p.RowOffset + r) * fullCols + p.ColOffset + c];
        return b;
    }

    private static void Place(double[] full, long fullCols, ParameterShard p, float[] block, bool[] seen)
    {
        for (long r = 0; r < p.Rows; r++)
            for (long c = 0; c < p.Cols; c++)
            {
                long i = (p.RowOffset + r) * fullCols + p.ColOffset + c;
                Assert.That(seen[i], Is.False, $"{p.Name}: element {i} held by two ranks");
                seen[i] = true;
                full[i] = block[r * p.Cols + c];
            }
    }

    // Runs `steps` optimizer steps on an FFN at p ranks with the given full gradients per step; returns the full tensors
    // reassembled from the ranks' shards (each element held exactly once).
    private Dictionary<string, double[]> Run(int p, Dictionary<string, float[]> init, List<Dictionary<string, float[]>> grads,
        Func<Optimizer> make, Action<int, Optimizer>? perStep = null)
    {
        var full = Shapes.ToDictionary(kv => kv.Key, kv => new double[kv.Value.Rows * kv.Value.Cols]);
        var seen = Shapes.ToDictionary(kv => kv.Key, kv => new bool[kv.Value.Rows * kv.Value.Cols]);
        var gate = new object();
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(init["w1"], H, F), WeightSource.FromArray(init["b1"], 1, F),
                WeightSource.FromArray(init["w2"], F, H), WeightSource.FromArray(init["b2"], 1, H));
            using var g = new FeedForwardGradients(ctx.Device, ffn);
            var ps = ffn.Parameters(g);
            using var opt = make();
            for (int s = 0; s < grads.Count; s++)
            {
                foreach (var q in ps) q.Gradient.CopyFrom(Block(grads[s][q.Name], Shapes[q.Name].Cols, q), ctx.Stream, q.GradientOffset);
                perStep?.Invoke(s, opt);
                opt.Step(ctx.Stream, ps);
            }
            ctx.Synchronize();
            lock (gate)
                foreach (var q in ps) Place(full[q.Name], Shapes[q.Name].Cols, q, q.Value.ToArray(ctx.Stream)[(int)q.ValueOffset..(int)(q.ValueOffset + q.Count)], seen[q.Name]);
        });
        foreach (var (name, s) in seen) Assert.That(s.All(v => v), $"{name}: every element held by some rank");
        return full;
    }

    private (Dictionary<string, float[]> Init, List<Dictionary<string, float[]>> Grads) Data(Random rng, int steps)
    {
        var init = Shapes.ToDictionary(kv => kv.Key, kv => RandomArray(rng, kv.Value.Rows * kv.Value.Cols));
        var grads = Enumerable.Range(0, steps).Select(_ => Shapes.ToDictionary(kv => kv.Key, kv => RandomArray(rng, kv.Value.Rows * kv.Value.Cols))).ToList();
        return (init, grads);
    }

    private static void Close(Dictionary<string, double[]> got, Dictionary<string, double[]> want, double tol, string what)
    {
        foreach (var (name, w) in want)
            for (int i = 0; i < w.Length; i++)
                Assert.That(got[name][i], Is.EqualTo(w[i]).Within(tol * (1 + Math.Abs(w[i]))), $"{what}: {name}[{i}]");
    }

    [TestCase(1, 0.9f, false, 0.01f)]
    [TestCase(2, 0.9f, true, 0.01f)]
    [TestCase(3, 0f, false, 0f)]
    [TestCase(4, 0.5f, false, 0.1f)]
    public void SgdEqualsFloat64OnTheFullTensors(int p, float momentum, bool nesterov, float wd)
    {
        var rng = NewRandom();
        var (init, grads) = Data(rng, 3);
        const float lr = 0.05f;
        var got = Run(p, init, grads, () => new SgdOptimizer(lr, momentum, wd, nesterov));
        var want = new Dictionary<string, double[]>();
        foreach (var (name, w0) in init)
        {
            var w = w0.Select(v => (double)v).ToArray();
            var buf = new double[w.Length];
            foreach (var step in grads)
                for (int i = 0; i < w.Length; i++)
                {
                    double g = step[name][i] + wd * w[i];
                    if (momentum > 0)
                    {
                        buf[i] = momentum * buf[i] + g;
                        g = nesterov ? g + momentum * buf[i] : buf[i];
                    }
                    w[i] -= lr * g;
                }
            want[name] = w;
        }
        Close(got, want, 2e-6, $"SGD p={p}");
    }

    [TestCase(1)]
    [TestCase(3)]
    public void AdamWEqualsFloat64OnTheFullTensors(int p)
    {
        var rng = NewRandom();
        var (init, grads) = Data(rng, 4);
        const float b1 = 0.9f, b2 = 0.95f, eps = 1e-6f, wd = 0.1f;
        float[] lrs = [1e-2f, 2e-2f, 1.5e-2f, 5e-3f]; // a schedule: the rate may change between steps
        var got = Run(p, init, grads, () => new AdamWOptimizer(lrs[0], b1, b2, eps, wd), (s, opt) => opt.LearningRate = lrs[s]);
        var want = new Dictionary<string, double[]>();
        foreach (var (name, w0) in init)
        {
            var w = w0.Select(v => (double)v).ToArray();
            var m = new double[w.Length];
            var v = new double[w.Length];
            for (int s = 0; s < grads.Count; s++)
            {
                double lr = lrs[s];
                int t = s + 1;
                for (int i = 0; i < w.Length; i++)
                {
                    double g = grads[s][name][i];
                    w[i] *= 1 - lr * wd;
                    m[i] = b1 * m[i] + (1 - b1) * g;
                    v[i] = b2 * v[i] + (1 - b2) * g * g;
                    w[i] -= lr * (m[i] / (1 - Math.Pow(b1, t))) / (Math.Sqrt(v[i] / (1 - Math.Pow(b2, t))) + eps);
                }
            }
            want[name] = w;
        }
        Close(got, want, 2e-5, $"AdamW p={p}");
    }

    [TestCase(1)]
    [TestCase(3)]
    public void ClippingUsesTheUnshardedGlobalNormCountingReplicatedOnce(int p)
    {
        var rng = NewRandom();
        var o = new TransformerBlockOptions(8, 4, 2, 6, FeedForwardKind.Gelu, SwNormKind.Layer);
        long h = o.Hidden, f = o.FfnHidden, qd = 8, kd = 4;
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c), r, c);
        var weights = new TransformerBlockWeights(W(h, qd), W(h, kd), W(h, kd), W(qd, h), W(h, f), W(f, h), Bo: W(1, h), B1: W(1, f), B2: W(1, h));
        // Full gradients by parameter name, drawn once; each rank copies its block.
        var full = new Dictionary<string, float[]>();
        double sum = 0;
        var norms = new double[p];
        var after = new double[p];
        var gate = new object();
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        // Every name any rank lists gets one full random gradient (full shapes from the shards' descriptions).
        Spmd.Run(group, ctx =>
        {
            using var block = new ParallelTransformerBlock(ctx, o, weights);
            using var grads = new TransformerBlockGradients(ctx.Device, block);
            var ps = block.Parameters(grads);
            lock (gate)
                foreach (var q in ps)
                    if (!full.ContainsKey(q.Name))
                    {
                        var g = RandomArray(rng, q.FullRows * q.FullCols, 3f);
                        full[q.Name] = g;
                        sum += g.Sum(v => (double)v * v);
                    }
        });
        double want = Math.Sqrt(sum);
        double maxNorm = want / 2;
        Spmd.Run(group, ctx =>
        {
            using var block = new ParallelTransformerBlock(ctx, o, weights);
            using var grads = new TransformerBlockGradients(ctx.Device, block);
            var ps = block.Parameters(grads);
            foreach (var q in ps) q.Gradient.CopyFrom(Block(full[q.Name], q.FullCols, q), ctx.Stream, q.GradientOffset);
            norms[ctx.Rank] = GradientClipping.ClipByGlobalNorm(ctx, ps, maxNorm);
            double mine = 0;
            foreach (var q in ps)
            {
                if (q.Replicated && ctx.Rank != 0) continue;
                var g = q.Gradient.ToArray(ctx.Stream)[(int)q.GradientOffset..(int)(q.GradientOffset + q.Count)];
                var orig = Block(full[q.Name], q.FullCols, q);
                for (int i = 0; i < g.Length; i++)
                    Assert.That(g[i], Is.EqualTo(orig[i] * maxNorm / (want + 1e-6)).Within(1e-6 * (1 + Math.Abs(orig[i]))), $"rank {ctx.Rank} {q.Name}[{i}] clipped");
                mine += g.Sum(v => (double)v * v);
            }
            after[ctx.Rank] = mine;
        });
        for (int r = 0; r < p; r++) Assert.That(norms[r], Is.EqualTo(want).Within(1e-9 * want), $"rank {r}: the global norm");
        Assert.That(Math.Sqrt(after.Sum()), Is.EqualTo(maxNorm).Within(1e-5 * maxNorm), "the norm after clipping");
    }

    [Test]
    public void ParameterListsNameEveryShardOnce()
    {
        // The block's lists over p = 3 ranks: sharded tensors' blocks tile the full tensor, replicated ones are whole.
        var rng = NewRandom();
        var o = new TransformerBlockOptions(8, 4, 2, 6, FeedForwardKind.SwiGlu, SwNormKind.Rms);
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c), r, c);
        var weights = new TransformerBlockWeights(W(8, 8), W(8, 4), W(8, 4), W(8, 8), W(8, 6), W(6, 8), W3: W(8, 6), B2: W(1, 8));
        var lists = new IReadOnlyList<ParameterShard>[3];
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var block = new ParallelTransformerBlock(ctx, o, weights);
            using var grads = new TransformerBlockGradients(ctx.Device, block);
            lists[ctx.Rank] = block.Parameters(grads);
        });
        var names = lists.SelectMany(l => l.Select(q => q.Name)).Distinct().OrderBy(n => n).ToArray();
        Assert.That(names, Is.EqualTo(new[] { "attn.wk", "attn.wo", "attn.wq", "attn.wv", "ffn.b_down", "ffn.w_down", "ffn.w_gate_up", "norm1.gamma", "norm2.gamma" }));
        foreach (var name in names)
        {
            var shards = lists.SelectMany(l => l.Where(q => q.Name == name)).ToList();
            long full = shards[0].FullRows * shards[0].FullCols;
            if (shards[0].Replicated) Assert.That(shards.All(q => q.Count == full), $"{name}: replicated whole");
            else Assert.That(shards.Sum(q => q.Count), Is.EqualTo(full), $"{name}: the shards tile the tensor");
        }
    }

    [Test]
    public void SchedulesAndBadArguments()
    {
        Assert.That(LearningRateSchedule.WarmupCosine(5, 1f, 10, 110), Is.EqualTo(0.5f).Within(1e-7));
        Assert.That(LearningRateSchedule.WarmupCosine(10, 1f, 10, 110), Is.EqualTo(1f).Within(1e-7));
        Assert.That(LearningRateSchedule.WarmupCosine(60, 1f, 10, 110, 0.2f), Is.EqualTo(0.6f).Within(1e-6)); // the cosine's midpoint
        Assert.That(LearningRateSchedule.WarmupCosine(500, 1f, 10, 110, 0.2f), Is.EqualTo(0.2f));
        Assert.Throws<ArgumentOutOfRangeException>(() => LearningRateSchedule.WarmupCosine(0, 1f, 10, 110));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new AdamWOptimizer(1e-3f, beta1: 1f))!.ParamName, Is.EqualTo("beta1"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new SgdOptimizer(1e-3f, momentum: -0.1f))!.ParamName, Is.EqualTo("momentum"));
        using var value = Upload(RandomArray(NewRandom(), 4));
        using var grad = Upload(RandomArray(NewRandom(), 4));
        var shard = new ParameterShard("w", 2, 2, 0, 2, 0, 2, false, value, grad);
        using var opt = new SgdOptimizer(-1f);
        Assert.Throws<InvalidOperationException>(() => opt.Step(Str, [shard]));
        using var ok = new SgdOptimizer(0.1f);
        Assert.That(Assert.Throws<ArgumentException>(() => ok.Step(Str, [shard with { ValueOffset = 1 }]))!.Message, Does.Contain("w:"));
        var native = Assert.Catch<ShardwiseException>(() => ThrowIfFailed(Native.sw_adamw_step(Str.Handle, SwDtype.F32, value.Handle, 0, grad.Handle, 0,
            value.Handle, 0, grad.Handle, 0, 4, 0.1f, 0.9f, 0.99f, 1e-8f, 0f, 1)))!;
        Assert.That(native.Message, Does.Contain("overlap"));
        native = Assert.Catch<ShardwiseException>(() => ThrowIfFailed(Native.sw_sgd_step(Str.Handle, SwDtype.F32, value.Handle, 0, grad.Handle, 0, 0, 0, 4,
            0.1f, 0.9f, 0f, 0)))!;
        Assert.That(native.Message, Does.Contain("momentum_buf"));
    }

    private static void ThrowIfFailed(SwStatus s)
    {
        if (s != SwStatus.Ok) ShardwiseException.ThrowIfFailed(s, "call");
    }

    // dX optional: without it the backward skips the input gradient and its collective, and the parameter gradients are
    // the bits of the backward with it.
    [TestCase(1)]
    [TestCase(3)]
    public void BackwardWithoutDxSkipsItsCollectiveAndKeepsTheGradients(int p)
    {
        var rng = NewRandom();
        const long m = 5, h = 8, f = 7;
        var x = RandomArray(rng, m * h);
        var g = RandomArray(rng, m * h);
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c), r, c);
        var (w1, b1, w2, b2) = (W(h, f), W(1, f), W(f, h), W(1, h));
        var (wq, wk, wv, wo) = (W(h, 8), W(h, 4), W(h, 4), W(8, h));
        var (wg, wu, wd) = (W(h, f), W(h, f), W(f, h));
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var xb = Upload(x, ctx.Device, ctx.Stream);
            using var dyb = Upload(g, ctx.Device, ctx.Stream);
            using var y = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var dx = Poisoned(m * h, ctx.Device, ctx.Stream);
            var xv = xb.AsMatrix(m, h);
            var dyv = dyb.AsMatrix(m, h);
            ulong Count(Action a) { ctx.Synchronize(); ulong c0 = group.CollectiveCount(ctx.Rank); a(); ctx.Synchronize(); return group.CollectiveCount(ctx.Rank) - c0; }
            float[][] Grads(IReadOnlyList<ParameterShard> ps) => ps.Select(q => q.Gradient.ToArray(ctx.Stream)).ToArray();
            void Same(float[][] a, float[][] b, string what)
            {
                for (int i = 0; i < a.Length; i++) Reference.AssertBitwise(b[i], a[i], $"rank {ctx.Rank} {what} gradient {i}");
            }

            using (var ffn = new ParallelFeedForward(ctx, w1, b1, w2, b2))
            using (var gr = new FeedForwardGradients(ctx.Device, ffn))
            using (var saved = ffn.ForwardTraining(xv, y.AsMatrix(m, h)))
            {
                Assert.That(Count(() => ffn.Backward(xv, dyv, dx.AsMatrix(m, h), gr, saved)), Is.EqualTo(1UL), "FFN backward with dX");
                var with = Grads(ffn.Parameters(gr));
                Assert.That(Count(() => ffn.Backward(xv, dyv, default, gr, saved)), Is.EqualTo(0UL), "FFN backward without dX");
                Same(with, Grads(ffn.Parameters(gr)), "FFN");
            }
            using (var attn = new ParallelSelfAttention(ctx, 4, 2, wq, wk, wv, wo))
            using (var gr = new AttentionGradients(ctx.Device, attn))
            using (var saved = attn.ForwardTraining(xv, y.AsMatrix(m, h), m))
            {
                Assert.That(Count(() => attn.Backward(xv, dyv, dx.AsMatrix(m, h), gr, saved)), Is.EqualTo(1UL), "attention backward with dX");
                var with = Grads(attn.Parameters(gr));
                Assert.That(Count(() => attn.Backward(xv, dyv, default, gr, saved)), Is.EqualTo(0UL), "attention backward without dX");
                Same(with, Grads(attn.Parameters(gr)), "attention");
            }
            using (var gated = new ParallelGatedFeedForward(ctx, wg, wu, wd))
            using (var gr = new GatedFeedForwardGradients(ctx.Device, gated))
            {
                using (var saved = gated.ForwardTraining(xv, y.AsMatrix(m, h)))
                    Assert.That(Count(() => gated.Backward(xv, dyv, dx.AsMatrix(m, h), gr, saved)), Is.EqualTo(1UL), "SwiGLU backward with dX");
                var with = Grads(gated.Parameters(gr));
                using (var saved = gated.ForwardTraining(xv, y.AsMatrix(m, h)))
                    Assert.That(Count(() => gated.Backward(xv, dyv, default, gr, saved)), Is.EqualTo(0UL), "SwiGLU backward without dX");
                Same(with, Grads(gated.Parameters(gr)), "SwiGLU");
            }
        });
    }
}
