using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Paths the other suites only ran with their simplest arguments: collectives at non-zero, different send and receive
/// offsets (a call that swaps them, or drops one, must fail), and <see cref="WeightSource.LoadBlock"/> of a block larger
/// than its host staging chunk (<see cref="WeightSource.StagingElements"/> floats = 16 MiB), which it loads in several
/// chunks.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class OffsetAndStagingTests(Backend backend) : BackendTest(backend)
{
    private float[][] PerRank(Random rng, int p, long n) => Enumerable.Range(0, p).Select(_ => RandomArray(rng, n)).ToArray();

    // Every element of `got` outside [from, from + count) is still NaN (the poison), and the region equals `want`.
    private static void AssertRegion(float[] got, long from, float[] want, string what)
    {
        for (long i = 0; i < got.Length; i++)
        {
            if (i >= from && i < from + want.Length)
            {
                if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(want[i - from]))
                    Assert.Fail($"{what}: element {i} (region index {i - from}) is {got[i]:R}, expected {want[i - from]:R}");
            }
            else if (!float.IsNaN(got[i]))
                Assert.Fail($"{what}: element {i}, outside the region [{from}, {from + want.Length}), was written ({got[i]:R})");
        }
    }

    [TestCase(2, 3, 11)]
    [TestCase(3, 17, 5)]
    [TestCase(4, 1, 40)]
    public void ReduceScatterAtDifferentSendAndReceiveOffsets(int p, long sendOffset, long recvOffset)
    {
        var rng = NewRandom();
        const long chunk = 29;
        long sendLength = sendOffset + p * chunk + 7, recvLength = recvOffset + chunk + 9;
        var data = PerRank(rng, p, sendLength);
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(recvLength, ctx.Device, ctx.Stream);
            ctx.ReduceScatter(send, recv, recvCount: chunk, sendOffset: sendOffset, recvOffset: recvOffset);
            ctx.Synchronize();
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            var expected = new float[chunk];
            for (long i = 0; i < chunk; i++)
            {
                float s = data[0][sendOffset + r * chunk + i]; // summed in rank order, as the collective does
                for (int q = 1; q < p; q++) s += data[q][sendOffset + r * chunk + i];
                expected[i] = s;
            }
            AssertRegion(got[r], recvOffset, expected, $"reduce_scatter rank {r}");
        }
    }

    [TestCase(3, 5, 2)]
    [TestCase(2, 1, 13)]
    public void AllGatherAndAllReduceAtDifferentSendAndReceiveOffsets(int p, long sendOffset, long recvOffset)
    {
        var rng = NewRandom();
        const long count = 23;
        var data = PerRank(rng, p, sendOffset + count + 4);
        var gathered = new float[p][];
        var reduced = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(60));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var g = Poisoned(recvOffset + p * count + 3, ctx.Device, ctx.Stream);
            using var s = Poisoned(recvOffset + count + 3, ctx.Device, ctx.Stream);
            ctx.AllGather(send, g, count: count, sendOffset: sendOffset, recvOffset: recvOffset);
            ctx.AllReduce(send, s, count: count, sendOffset: sendOffset, recvOffset: recvOffset);
            ctx.Synchronize();
            gathered[ctx.Rank] = g.ToArray(ctx.Stream);
            reduced[ctx.Rank] = s.ToArray(ctx.Stream);
        });
        var wantGather = data.SelectMany(d => d.Skip((int)sendOffset).Take((int)count)).ToArray();
        var wantSum = new float[count];
        for (long i = 0; i < count; i++)
        {
            float s = data[0][sendOffset + i];
            for (int q = 1; q < p; q++) s += data[q][sendOffset + i];
            wantSum[i] = s;
        }
        for (int r = 0; r < p; r++)
        {
            AssertRegion(gathered[r], recvOffset, wantGather, $"all_gather rank {r}");
            AssertRegion(reduced[r], recvOffset, wantSum, $"all_reduce rank {r}");
        }
    }

    /// <summary>
    /// A block of more than one staging chunk (here three: two full and a partial one), at non-zero row and column
    /// offsets of a larger source: every element lands where it belongs, and the source is read chunk by chunk, each
    /// read within the staging bound and the reads tiling the block exactly once in order.
    /// </summary>
    [Test]
    public void LoadBlockLargerThanTheStagingChunkReadsEveryChunkIntoPlace()
    {
        var rng = NewRandom();
        const long cols = 1201, chunkRows = WeightSource.StagingElements / cols; // 3492 rows per chunk
        long rows = 2 * chunkRows + 37, rowOffset = 5, colOffset = 3;
        long sourceRows = rowOffset + rows + 4, sourceCols = colOffset + cols + 2;
        Assert.That(rows * cols * sizeof(float), Is.GreaterThan(2 * WeightSource.StagingElements * sizeof(float)),
            "the block spans more than two 16 MiB chunks");
        var data = RandomArray(rng, sourceRows * sourceCols);
        var reads = new List<(long Row, long Col, long Rows, long Cols)>();
        var array = WeightSource.FromArray(data, sourceRows, sourceCols);
        var source = WeightSource.FromLoader(sourceRows, sourceCols, (r0, c0, n, c, dst) =>
        {
            reads.Add((r0, c0, n, c));
            dst.Fill(float.NaN);
            array.Read(r0, c0, n, c, dst);
        });
        using var block = source.LoadBlock(Str, rowOffset, colOffset, rows, cols);
        Assert.That(block, Is.Not.Null);
        Assert.That(block!.Length, Is.EqualTo(rows * cols));
        var got = block.ToArray(Str);
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < cols; j++)
            {
                float want = data[(rowOffset + i) * sourceCols + colOffset + j];
                if (BitConverter.SingleToInt32Bits(got[i * cols + j]) != BitConverter.SingleToInt32Bits(want))
                    Assert.Fail($"block ({i},{j}) (chunk {i / chunkRows}) is {got[i * cols + j]:R}, expected source " +
                                $"({rowOffset + i},{colOffset + j}) = {want:R}");
            }

        Assert.That(reads, Has.Count.EqualTo(3), "three chunks");
        long next = rowOffset;
        foreach (var (r0, c0, n, c) in reads)
        {
            Assert.That((r0, c0, c), Is.EqualTo((next, colOffset, cols)), "the reads tile the block in order");
            Assert.That(n * c, Is.LessThanOrEqualTo(WeightSource.StagingElements), "a read stays within the staging bound");
            next += n;
        }
        Assert.That(next, Is.EqualTo(rowOffset + rows));
    }
}
