using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="RankContext.Send"/>, <see cref="RankContext.Recv"/> and <see cref="RankContext.SendRecv"/> on in-process
/// groups: pairs and rings of float, Half and BFloat16 with uneven counts and offsets (the data moves bit for bit; the
/// rest of the receive buffer keeps its poison), zero-length transfers, a copy to itself, transfers on a sub-group; a
/// mismatched pair fails both sides with <see cref="CollectiveMismatchException"/>; a send nobody receives times out naming
/// both ranks; argument errors name the argument.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class PointToPointTests(Backend backend) : BackendTest(backend)
{
    private static T To<T>(float x) where T : unmanaged => MixedPrecisionGemmTests.To<T>(x);
    private static ushort Bits16<T>(T x) where T : unmanaged => System.Runtime.CompilerServices.Unsafe.As<T, ushort>(ref x);

    private static uint Bits<T>(T x) where T : unmanaged =>
        typeof(T) == typeof(float) ? (uint)BitConverter.SingleToInt32Bits((float)(object)x) : Bits16(x);

    private static T[] Random<T>(Random rng, long n) where T : unmanaged
    {
        var a = new T[n];
        for (long i = 0; i < n; i++) a[i] = To<T>((float)(rng.NextDouble() * 2 - 1) * 100 + 0.001f);
        return a;
    }

    private static void AssertBits<T>(T[] got, T[] want, string what) where T : unmanaged
    {
        Assert.That(got, Has.Length.EqualTo(want.Length), what);
        for (int i = 0; i < got.Length; i++)
            if (Bits(got[i]) != Bits(want[i])) Assert.Fail($"{what}: element {i} is 0x{Bits(got[i]):X}, expected 0x{Bits(want[i]):X}");
    }

    private static IEnumerable<TestCaseData> Types() =>
        new[] { typeof(float), typeof(Half), typeof(BFloat16) }.Select(t => new TestCaseData(t).SetArgDisplayNames(t.Name));

    private void Generic(string name, Type t, params object[] args) =>
        GetType().GetMethod(name, System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .MakeGenericMethod(t).Invoke(this, args);

    [TestCaseSource(nameof(Types))]
    public void PairsMoveUnevenCountsBitForBit(Type t) => Generic(nameof(Pairs), t);

    [TestCaseSource(nameof(Types))]
    public void RingStepsWithSendRecv(Type t) => Generic(nameof(Ring), t);

    // Rank 2i sends to 2i+1 and then receives back from it, with counts and offsets that differ per pair (zero too).
    private void Pairs<T>() where T : unmanaged
    {
        var rng = NewRandom();
        const int p = 6;
        const long cap = 40;
        long Count(int pair) => new long[] { 17, 0, 33 }[pair];
        var data = Enumerable.Range(0, p).Select(_ => Random<T>(rng, cap)).ToArray();
        T poison = To<T>(float.NaN);
        var got = new T[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            int pair = ctx.Rank / 2;
            bool first = ctx.Rank % 2 == 0;
            int peer = first ? ctx.Rank + 1 : ctx.Rank - 1;
            long n = Count(pair), sendOff = pair + 1, recvOff = 2 * pair + 3;
            using var send = ctx.Device.Allocate<T>(cap);
            send.CopyFrom(data[ctx.Rank], ctx.Stream);
            using var recv = ctx.Device.Allocate<T>(cap);
            recv.Fill(poison, ctx.Stream);
            ulong before = group.CollectiveCount(ctx.Rank);
            if (first)
            {
                ctx.Send(send, peer, n, sendOff);
                ctx.Recv(recv, peer, n, recvOff);
            }
            else
            {
                ctx.Recv(recv, peer, n, recvOff);
                ctx.Send(send, peer, n, sendOff);
            }
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
            Assert.That(group.CollectiveCount(ctx.Rank), Is.EqualTo(before), "transfers do not count as collectives");
        });
        for (int r = 0; r < p; r++)
        {
            int pair = r / 2, peer = r % 2 == 0 ? r + 1 : r - 1;
            long n = Count(pair), sendOff = pair + 1, recvOff = 2 * pair + 3;
            var want = Enumerable.Repeat(poison, (int)cap).ToArray();
            Array.Copy(data[peer], sendOff, want, recvOff, n);
            AssertBits(got[r], want, $"rank {r} (from {peer}, {n} elements)");
        }
    }

    // Every rank sends its block to the next and receives the previous one's, p-1 times (an all-gather by ring steps);
    // blocks of uneven lengths.
    private void Ring<T>() where T : unmanaged
    {
        var rng = NewRandom();
        foreach (int p in new[] { 1, 2, 3, 5 })
        {
            var lengths = Enumerable.Range(0, p).Select(r => (long)(r * 7 + 2) % 9 + 1).ToArray();
            var starts = lengths.Select((_, r) => lengths.Take(r).Sum()).ToArray();
            long total = lengths.Sum();
            var data = Enumerable.Range(0, p).Select(r => Random<T>(rng, lengths[r])).ToArray();
            var got = new T[p][];
            using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
            Spmd.Run(group, ctx =>
            {
                int r = ctx.Rank, next = (r + 1) % p, prev = (r + p - 1) % p;
                using var all = ctx.Device.Allocate<T>(total);
                all.Fill(To<T>(float.NaN), ctx.Stream);
                using var mine = ctx.Device.Allocate<T>(lengths[r]);
                mine.CopyFrom(data[r], ctx.Stream);
                if (p == 1)
                {
                    ctx.SendRecv(mine, r, all, r); // a copy to itself
                }
                else
                {
                    ctx.SendRecv(mine, r, all, r, recvOffset: starts[r], recvCount: lengths[r]); // own block
                    for (int step = 0; step < p - 1; step++)
                    {
                        int sendBlock = (r - step + p) % p, recvBlock = (r - step - 1 + p) % p;
                        ctx.SendRecv(all, next, all, prev, sendCount: lengths[sendBlock], recvCount: lengths[recvBlock],
                            sendOffset: starts[sendBlock], recvOffset: starts[recvBlock]);
                    }
                }
                got[r] = all.ToArray(ctx.Stream);
            });
            var want = data.SelectMany(d => d).ToArray();
            for (int r = 0; r < p; r++) AssertBits(got[r], want, $"p={p}, rank {r}");
        }
    }

    [Test]
    public void HalvesOfSendRecvAndTransfersOnASubGroup()
    {
        var rng = NewRandom();
        const int p = 4, n = 21;
        var data = Enumerable.Range(0, p).Select(_ => RandomArray(rng, n)).ToArray();
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var split = group.Split(r => r % 2, r => -r); // {2, 0} and {3, 1}: sub rank 0 is the larger parent rank
        Spmd.Run(group, ctx =>
        {
            var sub = split[ctx.Rank]!;
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(n, ctx.Device, ctx.Stream);
            // sub rank 0 sends with a receive-less SendRecv; sub rank 1 receives with a send-less one
            if (sub.Rank == 0) sub.SendRecv(send, 1, null, -1);
            else sub.SendRecv(null, -1, recv, 0);
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
        });
        for (int r = 0; r < p; r++)
        {
            bool receiver = r < 2; // parent ranks 0 and 1 are sub rank 1
            Reference.AssertBitwise(got[r], receiver ? data[r + 2] : Enumerable.Repeat(float.NaN, n).ToArray(), $"rank {r}");
        }
    }

    [Test]
    public void MismatchedCountsFailBothSides([Values("count", "type")] string what)
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var f = ctx.Device.Allocate<float>(10);
            using var h = ctx.Device.Allocate<Half>(10);
            f.Fill(1f, ctx.Stream);
            if (ctx.Rank == 0) ctx.Send(f, 1, 10);
            else if (what == "count") ctx.Recv(f, 0, 9);
            else ctx.Recv(h, 0, 10);
            ctx.Synchronize();
        }))!;
        Assert.That(ex.RankErrors.Keys, Is.EquivalentTo(new[] { 0, 1 }));
        foreach (var (rank, e) in ex.RankErrors)
        {
            Assert.That(e, Is.InstanceOf<CollectiveMismatchException>(), $"rank {rank}");
            Assert.That(e.Message, Does.Contain("rank 0").And.Contain("rank 1"), $"rank {rank} names both ranks");
        }
    }

    [Test]
    public void ASendNobodyReceivesTimesOutNamingBothRanks()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(1));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            using var b = ctx.Device.Allocate<float>(4);
            b.Fill(2f, ctx.Stream);
            if (ctx.Rank == 2) ctx.Send(b, 1); // rank 1 never receives
            ctx.Synchronize();
        }))!;
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(20)));
        Assert.That(ex.CauseRank, Is.EqualTo(2));
        Assert.That(ex.Cause, Is.InstanceOf<CollectiveTimeoutException>());
        Assert.That(ex.Cause.Message, Does.Contain("rank 2").And.Contain("rank 1"));
    }

    [Test]
    public void BadArgumentsAreNamed()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(10));
        var ctx = group[0];
        using var b = ctx.Device.Allocate<float>(8);
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.Send(b, 0))!.ParamName, Is.EqualTo("peer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.Recv(b, 2))!.ParamName, Is.EqualTo("peer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.Send(b, -1))!.ParamName, Is.EqualTo("peer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.Send(b, 1, count: 9))!.ParamName, Is.EqualTo("buffer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.Recv(b, 1, count: 4, offset: 5))!.ParamName, Is.EqualTo("buffer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.SendRecv<float>(null, 1, null, 1))!.ParamName, Is.EqualTo("send"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.SendRecv(b, 5, b, 1))!.ParamName, Is.EqualTo("sendPeer"));
        Assert.That(Assert.Catch<ArgumentException>(() => ctx.SendRecv(b, 1, b, 7))!.ParamName, Is.EqualTo("recvPeer"));
        Assert.That(Assert.Catch<ArgumentNullException>(() => ctx.Send<float>(null!, 1))!.ParamName, Is.EqualTo("buffer"));
        Assert.That(group.IsAborted, Is.False, "argument errors queue nothing and abort nothing");
    }
}
