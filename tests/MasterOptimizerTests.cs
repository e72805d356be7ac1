using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>An <see cref="Optimizer"/> on mixed-precision master weights: <c>MasterWeights.Step(optimizer)</c> updates the
/// fp32 masters exactly as the optimizer on fp32 copies of them would (bit for bit: the same kernels), then refreshes the
/// bf16 working copies from them; with a loss scaler an overflow skips the step on every rank.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class MasterOptimizerTests(Backend backend) : BackendTest(backend)
{
    [TestCase(1)]
    [TestCase(3)]
    public void AdamWOnBf16MastersEqualsAdamWOnFp32Copies(int p)
    {
        var rng = NewRandom();
        const long m = 4, h = 8, f = 10;
        var x = RandomArray(rng, m * h);
        var g = RandomArray(rng, m * h);
        WeightSource W(long r, long c) => WeightSource.FromArray(RandomArray(rng, r * c), r, c);
        var (w1, b1, w2, b2) = (W(h, f), W(1, f), W(f, h), W(1, h));
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, w1, b1, w2, b2, precision: Precision.Bf16);
            using var grads = new FeedForwardGradients(ctx.Device, ffn);
            using var masters = new MasterWeights(ctx);
            masters.AddFeedForward(ffn, grads);
            using var xf = Upload(x, ctx.Device, ctx.Stream);
            using var gf = Upload(g, ctx.Device, ctx.Stream);
            using var xb = ctx.Device.Allocate<BFloat16>(m * h);
            using var gb = ctx.Device.Allocate<BFloat16>(m * h);
            using var yb = ctx.Device.Allocate<BFloat16>(m * h);
            using var dxb = ctx.Device.Allocate<BFloat16>(m * h);
            ElementwiseOps.Convert(ctx.Stream, xf, xb, m * h);
            ElementwiseOps.Convert(ctx.Stream, gf, gb, m * h);
            // fp32 copies of the masters, stepped by a second optimizer with the same gradients.
            var copies = Enumerable.Range(0, masters.Count).Select(i => Upload(masters.Master(i).ToArray(ctx.Stream), ctx.Device, ctx.Stream)).ToList();
            using var a = new AdamWOptimizer(0.01f, weightDecay: 0.1f);
            using var b = new AdamWOptimizer(0.01f, weightDecay: 0.1f);
            var gradsList = new[] { grads.DW1, grads.DB1, grads.DW2, grads.DB2 }.Where(q => q is not null).ToList();
            for (int step = 0; step < 3; step++)
            {
                using (var saved = ffn.ForwardTraining(xb.AsMatrix(m, h), yb.AsMatrix(m, h)))
                    ffn.Backward(xb.AsMatrix(m, h), gb.AsMatrix(m, h), dxb.AsMatrix(m, h), grads, saved);
                var shards = copies.Select((c, i) => new ParameterShard($"c{i}", 1, c.Length, 0, 1, 0, c.Length, false, c, gradsList[i]!)).ToList();
                b.Step(ctx.Stream, shards);
                Assert.That(masters.Step(a), Is.True);
            }
            for (int i = 0; i < masters.Count; i++)
                Reference.AssertBitwise(masters.Master(i).ToArray(ctx.Stream), copies[i].ToArray(ctx.Stream), $"rank {ctx.Rank} master {i}");
            // The working copy is the master rounded to bf16.
            var w = ffn.Up.WeightAs<BFloat16>();
            if (w is not null)
            {
                var master = masters.Master(0).ToArray(ctx.Stream);
                var work = w.ToArray(ctx.Stream);
                for (int i = 0; i < work.Length; i++) Assert.That(work[i], Is.EqualTo((BFloat16)master[i]), $"rank {ctx.Rank} working copy [{i}]");
            }
            foreach (var c in copies) c.Dispose();
        });
    }
}
