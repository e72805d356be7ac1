using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Rank-aware dropout: the replicated region draws the same mask on every tensor-parallel rank, the sharded
/// region a different one per rank, both reproducible from the seed; the kernel's mask is the documented hash (recomputed
/// here on the host), splits of a draw give the same bits, and a sequence-parallel rank's rows of a replicated mask are
/// the rows of the full mask.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class DropoutTests(Backend backend) : BackendTest(backend)
{
    // The generator of shardwise.h / core/row_ops.h, on the host.
    private static bool Kept(ulong seed, ulong index, float p)
    {
        ulong z = seed + (index + 1) * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        uint bits = (uint)(z >> 40);
        return bits >= (uint)Math.Ceiling(p * 16777216.0);
    }

    [Test]
    public void MaskIsTheDocumentedHashAndScalesKeptValues()
    {
        var rng = NewRandom();
        const long n = 5000;
        const float p = 0.3f;
        ulong seed = (ulong)rng.NextInt64(), counter = (ulong)rng.Next(1 << 20);
        var x = RandomArray(rng, n);
        using var xb = Upload(x);
        using var y = Poisoned(n);
        RowOps.Dropout(Str, xb, y, n, p, seed, counter);
        var got = y.ToArray(Str);
        int dropped = 0;
        for (long i = 0; i < n; i++)
        {
            bool keep = Kept(seed, counter + (ulong)i, p);
            if (!keep) dropped++;
            Assert.That(got[i], Is.EqualTo(keep ? x[i] / (1f - p) : 0f), $"y[{i}]");
        }
        Assert.That(dropped / (double)n, Is.EqualTo(p).Within(0.04), "fraction dropped");
        // Two calls over halves with advanced counters give the same bits as one call (and in place).
        using var halves = Upload(x);
        RowOps.Dropout(Str, halves, halves, 1234, p, seed, counter);
        RowOps.Dropout(Str, halves, halves, n - 1234, p, seed, counter + 1234, 1234, 1234);
        Reference.AssertBitwise(halves.ToArray(Str), got, "split draws");
        Assert.Throws<ArgumentOutOfRangeException>(() => RowOps.Dropout(Str, xb, y, n, 1f, seed, counter));
    }

    [TestCase(2)]
    [TestCase(3)]
    public void ReplicatedMasksAgreeAcrossRanksShardedMasksDiffer(int p)
    {
        var rng = NewRandom();
        ulong seed = (ulong)rng.NextInt64();
        const long n = 512;
        var x = RandomArray(rng, n);
        var replicated = new float[p][];
        var sharded = new float[p][];
        var second = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            var gen = new DropoutGenerator(seed, ctx.Rank);
            using var xb = Upload(x, ctx.Device, ctx.Stream);
            using var y = Poisoned(n, ctx.Device, ctx.Stream);
            var m1 = gen.Next(DropoutRegion.Replicated, n, 0.5f);
            m1.Apply(ctx.Stream, xb, y);
            replicated[ctx.Rank] = y.ToArray(ctx.Stream);
            gen.Next(DropoutRegion.Sharded, n, 0.5f).Apply(ctx.Stream, xb, y);
            sharded[ctx.Rank] = y.ToArray(ctx.Stream);
            gen.Next(DropoutRegion.Replicated, n, 0.5f).Apply(ctx.Stream, xb, y);
            second[ctx.Rank] = y.ToArray(ctx.Stream);
            // The backward regenerates the same mask from the same token.
            using var g = Upload(x, ctx.Device, ctx.Stream);
            m1.Apply(ctx.Stream, g, g);
            Reference.AssertBitwise(g.ToArray(ctx.Stream), replicated[ctx.Rank], "backward mask = forward mask");
            // A sequence-parallel rank's rows of a replicated 8 x 64 mask are the rows of the full mask.
            using var rows = Upload(x[(3 * 64)..(5 * 64)], ctx.Device, ctx.Stream);
            m1.Rows(3, 2, 64).Apply(ctx.Stream, rows, rows);
            Reference.AssertBitwise(rows.ToArray(ctx.Stream), replicated[ctx.Rank][(3 * 64)..(5 * 64)], "rows of the replicated mask");
        });
        for (int r = 1; r < p; r++)
        {
            Reference.AssertBitwise(replicated[r], replicated[0], $"rank {r}: replicated mask");
            Reference.AssertBitwise(second[r], second[0], $"rank {r}: second replicated mask");
            Assert.That(sharded[r].Zip(sharded[0]).Count(t => t.First != t.Second), Is.GreaterThan(n / 8), $"rank {r}: sharded mask differs from rank 0's");
        }
        Assert.That(second[0].Zip(replicated[0]).Count(t => t.First != t.Second), Is.GreaterThan(n / 8), "consecutive draws differ");
        // Reproducible: the same seed gives the same first mask again.
        using var group2 = ProcessGroup.CreateLocal(Dev, 1);
        var again = new DropoutGenerator(seed, 0).Next(DropoutRegion.Replicated, n, 0.5f);
        using var xb2 = Upload(x);
        again.Apply(Str, xb2, xb2);
        Reference.AssertBitwise(xb2.ToArray(Str), replicated[0], "same seed, same mask");
    }
}
