using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="RowParallelLinear.OverlapChunks"/> and <see cref="ParallelFeedForward.OverlapChunks"/>: the forward's
/// all-reduce cut into row chunks on the rank's communication stream, each overlapping the next chunk's GEMMs. The
/// output must be the same bits as without overlap (every element's sums unchanged), on every rank, for any M (fewer
/// rows than chunks too) and uneven shards, with one all-reduce per chunk.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class OverlapTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var (m, chunks) in new[] { (1L, 3), (7L, 2), (7L, 3), (64L, 4), (65L, 5) })
            foreach (int p in new[] { 1, 2, 3 })
                yield return new TestCaseData(m, chunks, p).SetArgDisplayNames($"M={m}", $"chunks={chunks}", $"p={p}");
    }

    [TestCaseSource(nameof(Cases))]
    public void RowParallelOverlapGivesTheSameBits(long m, int chunks, int p)
    {
        const long k = 53, n = 37, pad = 3;
        var rng = NewRandom();
        var x = RandomArray(rng, m * k);
        var w = RandomArray(rng, k * n);
        var bias = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var plain = new float[p][];
        var overlapped = new float[p][];
        var counts = new ulong[p];
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n));
            using var dx = ctx.Device.Allocate<float>(m * k);
            dx.CopyFrom(x, ctx.Stream);
            long ld = ctx.Rank % 2 == 0 ? n : n + pad; // odd ranks: a strided y (the scratch path)
            using var y = ctx.Device.Allocate<float>(m * ld);
            float[] Run()
            {
                y.Fill(float.NaN, ctx.Stream);
                layer.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, n, ld));
                ctx.Synchronize();
                var all = y.ToArray(ctx.Stream);
                var compact = new float[m * n];
                for (long i = 0; i < m; i++) Array.Copy(all, i * ld, compact, i * n, n);
                return compact;
            }
            plain[ctx.Rank] = Run();
            ulong before = group.CollectiveCount(ctx.Rank);
            layer.OverlapChunks = chunks;
            overlapped[ctx.Rank] = Run();
            counts[ctx.Rank] = group.CollectiveCount(ctx.Rank) - before;
        });
        for (int r = 0; r < p; r++)
        {
            Reference.AssertClose(plain[r], n, want, mag, m, n, k, $"rank {r} without overlap");
            Reference.AssertBitwise(overlapped[r], plain[r], $"rank {r}: overlapped ({chunks} chunks) vs one all-reduce");
            Assert.That(counts[r], Is.EqualTo((ulong)Math.Min(chunks, m)), $"rank {r}: one all-reduce per chunk");
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void FeedForwardOverlapGivesTheSameBits(long m, int chunks, int p)
    {
        const long h = 24, f = 70;
        var rng = NewRandom();
        var x = RandomArray(rng, m * h);
        var w1 = RandomArray(rng, h * f, 0.5f);
        var b1 = RandomArray(rng, f);
        var w2 = RandomArray(rng, f * h, 0.5f);
        var b2 = RandomArray(rng, h);
        var (want, tol) = Reference.FeedForward(x, w1, b1, w2, b2, m, h, f);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var plain = new float[p][];
        var overlapped = new float[p][];
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
                WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
            using var dx = ctx.Device.Allocate<float>(m * h);
            dx.CopyFrom(x, ctx.Stream);
            using var y = ctx.Device.Allocate<float>(m * h);
            float[] Run()
            {
                y.Fill(float.NaN, ctx.Stream);
                ffn.Forward(dx.AsMatrix(m, h), y.AsMatrix(m, h));
                ctx.Synchronize();
                return y.ToArray(ctx.Stream);
            }
            plain[ctx.Rank] = Run();
            ffn.OverlapChunks = chunks;
            Assert.That(ffn.Down.OverlapChunks, Is.EqualTo(chunks));
            overlapped[ctx.Rank] = Run();
        });
        for (int r = 0; r < p; r++)
        {
            for (long i = 0; i < m * h; i++)
                Assert.That(Math.Abs(plain[r][i] - want[i]), Is.LessThanOrEqualTo(tol[i]), $"rank {r} [{i}] without overlap");
            Reference.AssertBitwise(overlapped[r], plain[r], $"rank {r}: overlapped FFN ({chunks} chunks) vs one all-reduce");
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void ColumnParallelOverlapGivesTheSameBits(long m, int chunks, int p)
    {
        const long k = 29;
        foreach (long n in new[] { 41L, 2L }) // 2 columns over 3 ranks: a rank with none still joins every all-gather
        {
            var rng = NewRandom();
            var x = RandomArray(rng, m * k);
            var w = RandomArray(rng, k * n);
            var bias = RandomArray(rng, n);
            var (want, mag) = Reference.Gemm(x, k, false, w, n, false, m, n, k, bias: bias);
            using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
            var plain = new float[p][];
            var overlapped = new float[p][];
            var counts = new ulong[p];
            Spmd.Run(group, ctx =>
            {
                using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(bias, 1, n), gatherOutput: true);
                using var dx = ctx.Device.Allocate<float>(m * k);
                dx.CopyFrom(x, ctx.Stream);
                long ld = n + ctx.Rank; // strided outputs on all but rank 0
                using var y = ctx.Device.Allocate<float>(m * ld);
                float[] Run()
                {
                    y.Fill(float.NaN, ctx.Stream);
                    layer.Forward(dx.AsMatrix(m, k), y.AsMatrix(m, n, ld));
                    ctx.Synchronize();
                    var all = y.ToArray(ctx.Stream);
                    var compact = new float[m * n];
                    for (long i = 0; i < m; i++) Array.Copy(all, i * ld, compact, i * n, n);
                    return compact;
                }
                plain[ctx.Rank] = Run();
                ulong before = group.CollectiveCount(ctx.Rank);
                layer.OverlapChunks = chunks;
                overlapped[ctx.Rank] = Run();
                counts[ctx.Rank] = group.CollectiveCount(ctx.Rank) - before;
            });
            for (int r = 0; r < p; r++)
            {
                Reference.AssertClose(plain[r], n, want, mag, m, n, k, $"N={n} rank {r} without overlap");
                Reference.AssertBitwise(overlapped[r], plain[r], $"N={n} rank {r}: overlapped ({chunks} chunks) vs one all-gather");
                Assert.That(counts[r], Is.EqualTo((ulong)Math.Min(chunks, m)), $"N={n} rank {r}: one all-gather per chunk");
            }
        }
    }

    [Test]
    public void AnOverlappedStepAllocatesNothingManagedOnceWarm()
    {
        const long m = 12, h = 8, f = 12;
        var rng = NewRandom();
        var w1 = RandomArray(rng, h * f);
        var w2 = RandomArray(rng, f * h);
        var wc = RandomArray(rng, h * f);
        long allocated = -1;
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        var perRank = new long[2];
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), null, WeightSource.FromArray(w2, f, h), null) { OverlapChunks = 3 };
            using var column = new ColumnParallelLinear(ctx, WeightSource.FromArray(wc, h, f), gatherOutput: true) { OverlapChunks = 4 };
            using var x = ctx.Device.Allocate<float>(m * h);
            using var y = ctx.Device.Allocate<float>(m * h);
            using var z = ctx.Device.Allocate<float>(m * f);
            x.CopyFrom(RandomArray(new Random(ctx.Rank + 1), m * h), ctx.Stream);
            for (int i = 0; i < 3; i++) // warm: scratch buffers and events made
            {
                ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h));
                column.Forward(x.AsMatrix(m, h), z.AsMatrix(m, f));
            }
            ctx.Synchronize();
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 20; i++)
            {
                ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h));
                column.Forward(x.AsMatrix(m, h), z.AsMatrix(m, f));
            }
            perRank[ctx.Rank] = GC.GetAllocatedBytesForCurrentThread() - before;
            ctx.Synchronize();
        });
        allocated = perRank.Max();
        Assert.That(allocated, Is.Zero, "bytes allocated by 20 overlapped FFN and column-parallel forwards (3 and 4 chunks)");
    }

    [Test]
    public void OverlapChunksOutOfRangeThrowsNamingIt()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(30));
        var w = RandomArray(NewRandom(), 6);
        using var layer = new RowParallelLinear(group[0], WeightSource.FromArray(w, 2, 3));
        foreach (int bad in new[] { 0, -1, 1025 })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => layer.OverlapChunks = bad)!;
            Assert.That(e.Message, Does.Contain("OverlapChunks"));
        }
        Assert.That(layer.OverlapChunks, Is.EqualTo(1));
        using var column = new ColumnParallelLinear(group[0], WeightSource.FromArray(w, 2, 3));
        var ce = Assert.Throws<ArgumentOutOfRangeException>(() => column.OverlapChunks = 0)!;
        Assert.That(ce.Message, Does.Contain("OverlapChunks"));
    }
}
