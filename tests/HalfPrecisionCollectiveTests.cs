using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Collectives of <see cref="Half"/> and <see cref="BFloat16"/>: gathers and broadcasts move the 16-bit data bit for
/// bit; all-reduce and reduce-scatter (even and -v, uneven counts with empty ranks) sum in fp32 in rank order and round
/// once, so every rank holds exactly <c>round16(((x_0 + x_1) + x_2) + ...)</c> (the sums done in float, the rounding
/// to the 16-bit type at the end), compared bit for bit. On the in-process group for p = 1..8 and on the TCP group
/// (ranks as threads of this process, each with its own store connection and sockets) for p = 3: the same bits.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class HalfPrecisionCollectiveTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Cases()
    {
        foreach (var t in new[] { typeof(Half), typeof(BFloat16) })
            for (int p = 1; p <= 8; p++)
                yield return new TestCaseData(t, p).SetArgDisplayNames(t.Name, $"p={p}");
    }

    private static T To<T>(float x) where T : unmanaged => MixedPrecisionGemmTests.To<T>(x);
    private static float Wide<T>(T x) where T : unmanaged => (float)MixedPrecisionGemmTests.Wide(x);
    private static ushort Bits<T>(T x) where T : unmanaged => System.Runtime.CompilerServices.Unsafe.As<T, ushort>(ref x);

    // Random 16-bit values of mixed magnitudes (so that a rounding after every addition would differ from one rounding
    // at the end), with a few exact ties and signed zeros.
    private static T[] RandomValues<T>(Random rng, long n) where T : unmanaged
    {
        var a = new T[n];
        for (long i = 0; i < n; i++)
        {
            float v = (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(2, rng.Next(-6, 7));
            a[i] = To<T>(i % 97 == 5 ? -0f : v);
        }
        return a;
    }

    /// <summary>The contract: fp32 sum in rank order, one rounding to T.</summary>
    private static T[] RankOrderSum<T>(T[][] data, long offset, long count) where T : unmanaged
    {
        var r = new T[count];
        for (long i = 0; i < count; i++)
        {
            float s = Wide(data[0][offset + i]);
            for (int q = 1; q < data.Length; q++) s += Wide(data[q][offset + i]);
            r[i] = To<T>(s);
        }
        return r;
    }

    private static void AssertSameBits<T>(T[] got, T[] want, string what) where T : unmanaged
    {
        Assert.That(got, Has.Length.EqualTo(want.Length), what);
        for (int i = 0; i < got.Length; i++)
            if (Bits(got[i]) != Bits(want[i]))
                Assert.Fail($"{what}: element {i} is 0x{Bits(got[i]):X4} ({Wide(got[i]):R}), expected 0x{Bits(want[i]):X4} ({Wide(want[i]):R})");
    }

    private DeviceBuffer<T> UploadT<T>(T[] data, RankContext ctx) where T : unmanaged
    {
        var b = ctx.Device.Allocate<T>(Math.Max(1, data.Length));
        if (data.Length > 0) b.CopyFrom(data, ctx.Stream);
        return b;
    }

    private static DeviceBuffer<T> PoisonedT<T>(long n, RankContext ctx) where T : unmanaged
    {
        var b = ctx.Device.Allocate<T>(Math.Max(1, n));
        b.Fill(To<T>(float.NaN), ctx.Stream);
        return b;
    }

    private static void Invoke(object target, string method, Type t, params object[] args)
    {
        var mi = target.GetType().GetMethod(method, System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        try
        {
            mi.MakeGenericMethod(t).Invoke(target, args);
        }
        catch (System.Reflection.TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
        }
    }

    [TestCaseSource(nameof(Cases))]
    public void InProcessGroupSumsInFp32InRankOrderAndRoundsOnce(Type t, int p)
    {
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Invoke(this, nameof(RunAll), t, group, p);
    }

    /// <summary>The TCP group gives the in-process group's bits, with the agreement check on (the default) and off
    /// (<see cref="ProcessGroup.AgreementCheck"/>: no descriptor exchange for the all-reduce, all-gather and
    /// reduce-scatter; the uneven variants still exchange).</summary>
    [TestCase(typeof(Half), true)]
    [TestCase(typeof(BFloat16), true)]
    [TestCase(typeof(Half), false)]
    [TestCase(typeof(BFloat16), false)]
    public void TcpGroupGivesTheSameBits(Type t, bool agreementCheck)
    {
        if (Backend != Backend.Cpu) Assert.Ignore("the TCP group runs on CPU devices");
        const int p = 3;
        using var server = TcpStore.Connect("127.0.0.1", 0, isServer: true, TimeSpan.FromSeconds(30));
        var groups = new ProcessGroup[p];
        var devices = new Device[p];
        var stores = new TcpStore[p];
        try
        {
            string prefix = $"h16-{Guid.NewGuid():N}";
            var failures = new Exception?[p];
            var joiners = Enumerable.Range(0, p).Select(r => new Thread(() =>
            {
                try
                {
                    devices[r] = Device.Cpu(1);
                    stores[r] = TcpStore.Connect("127.0.0.1", server.Port, isServer: false, TimeSpan.FromSeconds(30));
                    groups[r] = ProcessGroup.CreateTcp(devices[r], stores[r], prefix, r, p, TimeSpan.FromSeconds(30));
                }
                catch (Exception e) { failures[r] = e; }
            })).ToArray();
            foreach (var th in joiners) th.Start();
            foreach (var th in joiners) Assert.That(th.Join(TimeSpan.FromSeconds(60)), "creating the TCP group hangs");
            for (int r = 0; r < p; r++)
                if (failures[r] is { } e) Assert.Fail($"rank {r} could not join the TCP group: {e}");
            Assert.That(groups[0].IsMultiProcess && groups[0].Backend == "tcp", $"backend {groups[0].Backend}");
            foreach (var g in groups)
            {
                Assert.That(g.AgreementCheck, Is.True, "the agreement check is on by default");
                g.AgreementCheck = agreementCheck;
                Assert.That(g.AgreementCheck, Is.EqualTo(agreementCheck));
            }
            Invoke(this, nameof(RunAllOnThreads), t, groups, p);
        }
        finally
        {
            foreach (var g in groups) g?.Dispose();
            foreach (var s in stores) s?.Dispose();
            foreach (var d in devices) d?.Dispose();
        }
    }

    // The in-process group: Spmd.Run gives each rank its thread.
    private void RunAll<T>(ProcessGroup group, int p) where T : unmanaged
    {
        var check = Prepare<T>(p, out var body);
        Spmd.Run(group, body);
        check();
    }

    // One group per rank (TCP): each rank's body on its own thread.
    private void RunAllOnThreads<T>(ProcessGroup[] groups, int p) where T : unmanaged
    {
        var check = Prepare<T>(p, out var body);
        var errors = new Exception?[p];
        var threads = Enumerable.Range(0, p).Select(r => new Thread(() =>
        {
            try { body(groups[r].Local); }
            catch (Exception e) { errors[r] = e; foreach (var g in groups) try { g.Abort($"rank {r} failed"); } catch (Exception) { } }
        })).ToArray();
        foreach (var th in threads) th.Start();
        foreach (var th in threads) Assert.That(th.Join(TimeSpan.FromSeconds(120)), "a rank hangs");
        for (int r = 0; r < p; r++)
            if (errors[r] is { } e) Assert.Fail($"rank {r}: {e}");
        check();
    }

    // Builds the data, the per-rank body (every collective once) and the check of what each rank received.
    private Action Prepare<T>(int p, out Action<RankContext> body) where T : unmanaged
    {
        var rng = NewRandom();
        const long count = 1003, chunk = 61, gatherCount = 29;
        var data = Enumerable.Range(0, p).Select(_ => RandomValues<T>(rng, count)).ToArray();
        var scatterData = Enumerable.Range(0, p).Select(_ => RandomValues<T>(rng, chunk * p)).ToArray();
        var counts = Enumerable.Range(0, p).Select(r => (long)((r * 7 + 3) % 5)).ToArray(); // uneven, some empty
        long total = counts.Sum();
        var vData = Enumerable.Range(0, p).Select(_ => RandomValues<T>(rng, total + 2)).ToArray(); // +2: larger than needed
        var gather = Enumerable.Range(0, p).Select(r => RandomValues<T>(rng, counts[r])).ToArray();
        var even = Enumerable.Range(0, p).Select(_ => RandomValues<T>(rng, gatherCount)).ToArray();
        var rootData = RandomValues<T>(rng, 41);
        int root = p / 2;

        var allReduce = new T[p][];
        var inPlace = new T[p][];
        var scatter = new T[p][];
        var scatterV = new T[p][];
        var gatherV = new T[p][];
        var gatherEven = new T[p][];
        var bcast = new T[p][];
        body = ctx =>
        {
            int r = ctx.Rank;
            using var send = UploadT(data[r], ctx);
            using var recv = PoisonedT<T>(count, ctx);
            ctx.AllReduce(send, recv);
            ctx.AllReduce(send); // in place
            using var ssend = UploadT(scatterData[r], ctx);
            using var srecv = PoisonedT<T>(chunk, ctx);
            ctx.ReduceScatter(ssend, srecv);
            using var vsend = UploadT(vData[r], ctx);
            using var vrecv = PoisonedT<T>(counts[r], ctx);
            ctx.ReduceScatterV(vsend, vrecv, counts[r]);
            using var gsend = UploadT(gather[r], ctx);
            using var grecv = PoisonedT<T>(total, ctx);
            ctx.AllGatherV(gsend, counts[r], grecv);
            using var esend = UploadT(even[r], ctx);
            using var erecv = PoisonedT<T>(gatherCount * p, ctx);
            ctx.AllGather(esend, erecv);
            using var b = r == root ? UploadT(rootData, ctx) : PoisonedT<T>(rootData.Length, ctx);
            ctx.Broadcast(b, root);
            ctx.Synchronize();
            allReduce[r] = recv.ToArray(ctx.Stream);
            inPlace[r] = send.ToArray(ctx.Stream);
            scatter[r] = srecv.ToArray(ctx.Stream);
            scatterV[r] = vrecv.ToArray(ctx.Stream)[..(int)counts[r]];
            gatherV[r] = grecv.ToArray(ctx.Stream)[..(int)total];
            gatherEven[r] = erecv.ToArray(ctx.Stream);
            bcast[r] = b.ToArray(ctx.Stream);
        };
        return () =>
        {
            var sum = RankOrderSum(data, 0, count);
            var concat = gather.SelectMany(x => x).ToArray();
            var concatEven = even.SelectMany(x => x).ToArray();
            long displ = 0;
            for (int r = 0; r < p; r++)
            {
                AssertSameBits(allReduce[r], sum, $"all-reduce, rank {r} of {p}");
                AssertSameBits(inPlace[r], sum, $"in-place all-reduce, rank {r} of {p}");
                AssertSameBits(scatter[r], RankOrderSum(scatterData, r * chunk, chunk), $"reduce-scatter, rank {r} of {p}");
                AssertSameBits(scatterV[r], RankOrderSum(vData, displ, counts[r]), $"reduce-scatter-v, rank {r} of {p} ({counts[r]} elements)");
                AssertSameBits(gatherV[r], concat, $"all-gather-v, rank {r} of {p}");
                AssertSameBits(gatherEven[r], concatEven, $"all-gather, rank {r} of {p}");
                AssertSameBits(bcast[r], rootData, $"broadcast from {root}, rank {r} of {p}");
                displ += counts[r];
            }
        };
    }
}
