using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class CollectiveTests(Backend backend) : BackendTest(backend)
{
    private static readonly int[] Sizes = [1, 2, 3, 4, 5, 8];

    private float[][] PerRank(Random rng, int p, long n) => Enumerable.Range(0, p).Select(_ => RandomArray(rng, n)).ToArray();

    [TestCaseSource(nameof(Sizes))]
    public void AllGatherConcatenatesInRankOrder(int p)
    {
        var rng = NewRandom();
        const long count = 37;
        var data = PerRank(rng, p, count);
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(count * p, ctx.Device, ctx.Stream);
            ctx.AllGather(send, recv);
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
        });
        var expected = data.SelectMany(d => d).ToArray();
        for (int r = 0; r < p; r++) Reference.AssertBitwise(got[r], expected, $"rank {r}");
    }

    [TestCaseSource(nameof(Sizes))]
    public void UnevenAllGatherAndColumnGather(int p)
    {
        var rng = NewRandom();
        var counts = Enumerable.Range(0, p).Select(r => (long)((r * 7 + 3) % 5)).ToArray(); // includes zeros
        long total = counts.Sum();
        var data = counts.Select(c => RandomArray(rng, c)).ToArray();
        const long rows = 6;
        var blocks = counts.Select(c => RandomArray(rng, rows * c)).ToArray();
        var gotV = new float[p][];
        var gotCols = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            long c = counts[ctx.Rank];
            using var send = ctx.Device.Allocate<float>(Math.Max(1, rows * c));
            if (c > 0) send.CopyFrom(data[ctx.Rank], ctx.Stream);
            using var recv = Poisoned(Math.Max(1, total), ctx.Device, ctx.Stream);
            ctx.AllGatherV(send, c, recv);
            ctx.Synchronize();
            gotV[ctx.Rank] = recv.ToArray(ctx.Stream)[..(int)total];

            if (c > 0) send.CopyFrom(blocks[ctx.Rank], ctx.Stream);
            long ld = total + 2;
            using var y = Poisoned(rows * ld, ctx.Device, ctx.Stream);
            ctx.AllGatherColumns(c > 0 ? send.AsMatrix(rows, c) : default, y.AsMatrix(rows, total, ld));
            ctx.Synchronize();
            gotCols[ctx.Rank] = y.ToArray(ctx.Stream);
        });
        var expectedV = data.SelectMany(d => d).ToArray();
        for (int r = 0; r < p; r++)
        {
            Reference.AssertBitwise(gotV[r], expectedV, $"all_gather_v rank {r}");
            long ld = total + 2, col = 0;
            for (int q = 0; q < p; q++)
            {
                for (long i = 0; i < rows; i++)
                    for (long j = 0; j < counts[q]; j++)
                        Assert.That(gotCols[r][i * ld + col + j], Is.EqualTo(blocks[q][i * counts[q] + j]), $"rank {r}: block {q} ({i},{j})");
                col += counts[q];
            }
            for (long i = 0; i < rows; i++)
                Assert.That(float.IsNaN(gotCols[r][i * ld + total]), $"rank {r}: padding written");
        }
    }

    [TestCaseSource(nameof(Sizes))]
    public void AllReduceSumsInRankOrderIdenticallyOnEveryRank(int p)
    {
        var rng = NewRandom();
        const long count = 1001;
        var data = PerRank(rng, p, count);
        var expected = new float[count];
        for (long i = 0; i < count; i++)
        {
            float s = data[0][i];
            for (int q = 1; q < p; q++) s += data[q][i];
            expected[i] = s;
        }
        var got = new float[p][];
        var gotInPlace = new float[p][];
        var gotDouble = new double[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(count, ctx.Device, ctx.Stream);
            ctx.AllReduce(send, recv);
            ctx.AllReduce(send); // in place
            using var d = ctx.Device.Allocate<double>(count);
            d.CopyFrom(data[ctx.Rank].Select(v => (double)v).ToArray(), ctx.Stream);
            ctx.AllReduce(d);
            ctx.Synchronize();
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
            gotInPlace[ctx.Rank] = send.ToArray(ctx.Stream);
            gotDouble[ctx.Rank] = d.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            Reference.AssertBitwise(got[r], expected, $"rank {r}");
            Reference.AssertBitwise(gotInPlace[r], expected, $"rank {r} in place");
            for (long i = 0; i < count; i++)
            {
                double s = 0;
                for (int q = 0; q < p; q++) s += data[q][i];
                Assert.That(gotDouble[r][i], Is.EqualTo(s).Within(1e-12), $"f64 rank {r} element {i}");
            }
        }
    }

    [TestCaseSource(nameof(Sizes))]
    public void ReduceScatterAndBroadcast(int p)
    {
        var rng = NewRandom();
        const long chunk = 53;
        var data = PerRank(rng, p, chunk * p);
        var rootData = RandomArray(rng, 77);
        int root = p - 1;
        var got = new float[p][];
        var gotB = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(chunk, ctx.Device, ctx.Stream);
            ctx.ReduceScatter(send, recv);
            using var b = ctx.Rank == root ? Upload(rootData, ctx.Device, ctx.Stream) : Poisoned(77, ctx.Device, ctx.Stream);
            ctx.Broadcast(b, root);
            ctx.Barrier();
            ctx.Synchronize();
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
            gotB[ctx.Rank] = b.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            var expected = new float[chunk];
            for (long i = 0; i < chunk; i++)
            {
                float s = data[0][r * chunk + i];
                for (int q = 1; q < p; q++) s += data[q][r * chunk + i];
                expected[i] = s;
            }
            Reference.AssertBitwise(got[r], expected, $"reduce_scatter rank {r}");
            Reference.AssertBitwise(gotB[r], rootData, $"broadcast rank {r}");
        }
        Assert.That(group.CollectiveCount(0), Is.EqualTo(3UL));
    }

    [TestCaseSource(nameof(Sizes))]
    public void UnevenReduceScatterLeavesEachRankItsBlock(int p)
    {
        var rng = NewRandom();
        var counts = Enumerable.Range(0, p).Select(r => (long)((r * 5 + 2) % 4)).ToArray(); // includes zeros
        long total = counts.Sum();
        var data = PerRank(rng, p, total + 3); // send buffers larger than needed
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(Math.Max(1, counts[ctx.Rank]), ctx.Device, ctx.Stream);
            ctx.ReduceScatterV(send, recv, counts[ctx.Rank]);
            ctx.Synchronize();
            got[ctx.Rank] = recv.ToArray(ctx.Stream)[..(int)counts[ctx.Rank]];
        });
        long displ = 0;
        for (int r = 0; r < p; r++)
        {
            var expected = new float[counts[r]];
            for (long i = 0; i < counts[r]; i++)
            {
                float s = data[0][displ + i];
                for (int q = 1; q < p; q++) s += data[q][displ + i];
                expected[i] = s;
            }
            Reference.AssertBitwise(got[r], expected, $"rank {r}");
            displ += counts[r];
        }
    }

    [Test]
    public void UnevenReduceScatterWithTooSmallASendBufferIsAMismatch()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var send = ctx.Device.Allocate<float>(ctx.Rank == 0 ? 8 : 5);
            using var recv = ctx.Device.Allocate<float>(4);
            ctx.ReduceScatterV(send, recv, 4);
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors.Values, Is.All.InstanceOf<CollectiveMismatchException>());
        Assert.That(ex.RankErrors[0].Message, Does.Contain("rank 1's send holds 5"));
    }

    // ------------------------------------------------------------------ failures: clear errors, never hangs

    [Test]
    public void ARankThatNeverJoinsTimesOutNamingTheRankAndOperation()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 4, TimeSpan.FromMilliseconds(300));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            if (ctx.Rank == 2) return; // never joins
            using var send = ctx.Device.Allocate<float>(8);
            using var recv = ctx.Device.Allocate<float>(32);
            ctx.AllGather(send, recv);
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors.Keys, Is.EquivalentTo(new[] { 0, 1, 3 }));
        foreach (var e in ex.RankErrors.Values)
        {
            Assert.That(e, Is.InstanceOf<CollectiveTimeoutException>());
            Assert.That(e.Message, Does.Contain("sw_all_gather").And.Contain("rank(s) 2").And.Contain("#0"));
        }
        Assert.That(group.IsAborted, Is.True);
        Assert.That(group.AbortReason, Does.Contain("rank(s) 2"));

        // Later collectives fail at once; the process stays usable and a new group works.
        using var buf = Dev.Allocate<float>(4);
        Assert.Throws<CommunicatorAbortedException>(() => group[0].AllReduce(buf));
        using var fresh = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(10));
        Assert.DoesNotThrow(() => Spmd.Run(fresh, ctx => { using var b = ctx.Device.Allocate<float>(4); ctx.AllReduce(b); }));
    }

    [Test]
    public void RanksThatDisagreeFailEveryRankWithAMismatch()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(30));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var b = ctx.Device.Allocate<float>(10);
            ctx.AllReduce(b, b, count: ctx.Rank == 1 ? 9 : 10);
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors, Has.Count.EqualTo(3));
        foreach (var e in ex.RankErrors.Values)
        {
            Assert.That(e, Is.InstanceOf<CollectiveMismatchException>());
            Assert.That(e.Message, Does.Contain("rank 1").And.Contain("count 9"));
        }
    }

    [Test]
    public void RanksPassingDifferentBroadcastRootsFailEveryRankWithAMismatch()
    {
        // Rank 0 names root 0, the others root 1: without the root comparison rank 2 would silently receive rank 1's
        // data and ranks 0 and 1 would both keep theirs.
        var data = PerRank(NewRandom(), 3, 16);
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(30));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var b = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            ctx.Broadcast(b, root: ctx.Rank == 0 ? 0 : 1);
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors.Keys, Is.EquivalentTo(new[] { 0, 1, 2 }));
        foreach (var e in ex.RankErrors.Values)
        {
            Assert.That(e, Is.InstanceOf<CollectiveMismatchException>());
            Assert.That(e.Message, Does.Contain("sw_broadcast").And.Contain("root 0").And.Contain("root 1"));
        }
        Assert.That(group.IsAborted, Is.True);
    }

    [Test]
    public void DifferentOperationsOrDtypesAreAMismatch()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            if (ctx.Rank == 0) { using var f = ctx.Device.Allocate<float>(4); ctx.AllReduce(f); }
            else { using var d = ctx.Device.Allocate<double>(4); ctx.AllReduce(d); }
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors.Values, Is.All.InstanceOf<CollectiveMismatchException>());
        Assert.That(ex.RankErrors[0].Message, Does.Contain("f32").And.Contain("f64"));

        using var group2 = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        ex = Assert.Throws<SpmdException>(() => Spmd.Run(group2, ctx =>
        {
            using var b = ctx.Device.Allocate<float>(4);
            if (ctx.Rank == 0) ctx.Broadcast(b, 0); else ctx.AllReduce(b);
            ctx.Synchronize();
        }));
        Assert.That(ex!.RankErrors[1].Message, Does.Contain("sw_broadcast").And.Contain("sw_all_reduce"));
    }

    [Test]
    public void BadArgumentsAreRejectedBeforeAnythingIsQueued()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(5));
        var ctx = group[0];
        using var small = Dev.Allocate<float>(4);
        using var big = Dev.Allocate<float>(16);
        Assert.That(() => ctx.AllGather(big, small), Throws.ArgumentException.With.Property("ParamName").EqualTo("recv"));
        Assert.That(() => ctx.ReduceScatter(small, big, recvCount: 3), Throws.ArgumentException.With.Property("ParamName").EqualTo("send"));
        Assert.That(() => ctx.Broadcast(small, root: 2), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("root"));
        Assert.That(() => group[2], Throws.InstanceOf<ArgumentOutOfRangeException>());
        using var other = Device.Open(Backend);
        using var foreign = other.Allocate<float>(4);
        Assert.That(() => ctx.AllReduce(foreign), Throws.ArgumentException.With.Property("ParamName").EqualTo("send"));
        // Straight through the C ABI: rank out of range.
        var status = Native.sw_all_reduce(ctx.Group.Handle, 7, small.Handle, 0, small.Handle, 0, 4, SwDtype.F32, SwReduceOp.Sum, ctx.Stream.Handle);
        var ex = ShardwiseException.Create(status, "sw_all_reduce");
        Assert.That(ex, Is.InstanceOf<ShardwiseArgumentException>());
        Assert.That(ex.Message, Does.Contain("rank = 7"));
        // Nothing was queued: the group is not aborted and still works.
        Assert.That(group.IsAborted, Is.False);
        Assert.DoesNotThrow(() => Spmd.Run(group, c => { using var b = c.Device.Allocate<float>(4); c.AllReduce(b); }));
    }

    [Test]
    public void AnEffectivelyInfiniteTimeoutDoesNotOverflow()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.MaxValue);
        Assert.DoesNotThrow(() => Spmd.Run(group, ctx =>
        {
            if (ctx.Rank == 1) Thread.Sleep(100); // rank 0 waits: its deadline must lie in the future
            using var b = ctx.Device.Allocate<float>(4);
            ctx.AllReduce(b);
        }));
    }

    [Test]
    public void DisposingAGroupWithAPendingCollectiveDoesNotHang()
    {
        var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromMinutes(10));
        using var b = Dev.Allocate<float>(4);
        group[0].AllReduce(b); // rank 1 never joins
        var sw = System.Diagnostics.Stopwatch.StartNew();
        group.Dispose();
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "dispose waited for the 10-minute timeout");
    }
}
