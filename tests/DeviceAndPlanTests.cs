using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class DeviceTests(Backend backend) : BackendTest(backend)
{
    [Test]
    public void DeviceReportsItsProperties()
    {
        Assert.That(Dev.Name, Is.Not.Empty);
        Assert.That(Dev.NumThreads, Is.GreaterThan(0));
        Assert.That(Dev.TotalMemoryBytes, Is.GreaterThan(0UL));
        if (Backend == Backend.Cpu) Assert.That(Dev.Kernel, Is.AnyOf("avx512bf16", "avx512", "avx2", "generic"));
    }

    [Test]
    public void CopiesRoundTripAtOffsetsAndRejectOutOfRange()
    {
        var rng = NewRandom();
        var data = RandomArray(rng, 100);
        using var b = Poisoned(150);
        b.CopyFrom(data, Str, offset: 25);
        var back = new float[100];
        b.CopyTo(back, Str, offset: 25);
        Reference.AssertBitwise(back, data, "round trip");
        var all = b.ToArray(Str);
        Assert.That(float.IsNaN(all[24]) && float.IsNaN(all[125]), "neighbours untouched");
        Assert.That(() => b.CopyFrom(data, Str, offset: 51), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => b.CopyTo(new float[10], Str, offset: -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void FillWritesExactlyTheRangeInChunksAndZeroesByMemset()
    {
        const long n = (3L << 20) + 17; // more than one staging chunk
        using var b = Poisoned(n + 10);
        b.Fill(2.5f, Str, offset: 5, count: n);
        var all = b.ToArray(Str);
        Assert.That(float.IsNaN(all[4]) && float.IsNaN(all[n + 5]), "outside the range untouched");
        Assert.That(all.Skip(5).Take((int)n).All(v => v == 2.5f), "every element of the range filled");
        b.Fill(0f, Str, offset: 1, count: 3);
        all = b.ToArray(Str);
        Assert.That(all[1] == 0f && all[3] == 0f && float.IsNaN(all[0]) && all[4] is float v4 && float.IsNaN(v4), "zero fill of [1, 4)");
        Assert.That(() => b.Fill(1f, Str, offset: n, count: 11), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public unsafe void WrappedExternalMemoryIsUsedWithoutCopyingAndNotFreed()
    {
        if (Backend != Backend.Cpu) Assert.Ignore("external host memory is a CPU-backend pointer");
        var rng = NewRandom();
        const int m = 9, k = 13, n = 11;
        float* a = (float*)NativeMemory.AlignedAlloc(m * k * 4, 64);
        float* b = (float*)NativeMemory.AlignedAlloc(k * n * 4, 64);
        float* c = (float*)NativeMemory.AlignedAlloc(m * n * 4, 64);
        try
        {
            var ha = RandomArray(rng, m * k);
            var hb = RandomArray(rng, k * n);
            ha.CopyTo(new Span<float>(a, m * k));
            hb.CopyTo(new Span<float>(b, k * n));
            new Span<float>(c, m * n).Fill(float.NaN);
            using (var wa = Dev.Wrap<float>((nint)a, m * k))
            using (var wb = Dev.Wrap<float>((nint)b, k * n))
            using (var wc = Dev.Wrap<float>((nint)c, m * n))
            {
                Assert.That(wa.IsOwned, Is.False);
                Assert.That(wa.Pointer, Is.EqualTo((nint)a), "no copy: the buffer is the caller's memory");
                Gemm.Multiply(Str, wa.AsMatrix(m, k), wb.AsMatrix(k, n), wc.AsMatrix(m, n));
                Str.Synchronize();
            }
            // The result is in the caller's memory, which is still valid after the wrappers are gone.
            var (want, mag) = Reference.Gemm(ha, k, false, hb, n, false, m, n, k);
            Reference.AssertClose(new Span<float>(c, m * n).ToArray(), n, want, mag, m, n, k, "C in external memory");
        }
        finally
        {
            NativeMemory.AlignedFree(a);
            NativeMemory.AlignedFree(b);
            NativeMemory.AlignedFree(c);
        }
        Assert.That(() => Dev.Wrap<float>(0, 4), Throws.ArgumentNullException.With.Property("ParamName").EqualTo("pointer"));
    }

    [Test]
    public void BadAllocationsAreRejected()
    {
        Assert.That(() => Dev.Allocate<float>(0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("length"));
        Assert.That(() => Dev.Allocate<long>(4), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("Int64"));
        Assert.That(() => Dev.Allocate<float>(1L << 58), Throws.InstanceOf<ShardwiseOutOfMemoryException>());
        Assert.That(() => Device.Open(Backend, ordinal: 99), Throws.InstanceOf<ShardwiseNotFoundException>().With.Message.Contains("ordinal"));
        Assert.That(() => Device.Cpu(-1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        if (Backend == Backend.Cpu)
            Assert.That(() => Dev.SetKernel("sse9"), Throws.InstanceOf<ShardwiseArgumentException>().With.Message.Contains("sse9"));
    }

    [Test]
    public void DisposeOrderDoesNotMatterAndDisposedHandlesAreRejected()
    {
        var dev = Device.Open(Backend);
        var s = dev.CreateStream();
        var buf = dev.Allocate<float>(16);
        var evt = new Event(dev);
        dev.Dispose(); // children keep the native device alive
        buf.CopyFrom(new float[16], s);
        evt.Record(s);
        evt.Synchronize();
        buf.Dispose();
        Assert.That(() => buf.CopyFrom(new float[1], s), Throws.InstanceOf<ObjectDisposedException>());
        Assert.That(() => dev.CreateStream(), Throws.InstanceOf<ObjectDisposedException>());
        s.Dispose();
        evt.Dispose();
        Assert.That(() => s.Synchronize(), Throws.InstanceOf<ObjectDisposedException>());
    }

    [Test]
    public void EventsOrderStreamsAndTimeWork()
    {
        var rng = NewRandom();
        const long m = 64, k = 64, n = 64;
        using var s2 = Dev.CreateStream();
        using var start = new Event(Dev);
        using var stop = new Event(Dev);
        using var ready = new Event(Dev);
        var x = RandomArray(rng, m * k);
        using var a = Upload(x);
        using var c = Poisoned(m * n);
        using var d = Poisoned(m * n);
        start.Record(Str);
        Gemm.Multiply(Str, a.AsMatrix(m, k), a.AsMatrix(k, n), c.AsMatrix(m, n));
        ready.Record(Str);
        stop.Record(Str);
        s2.Wait(ready); // s2 reads c only after Str produced it
        Gemm.Multiply(s2, c.AsMatrix(m, n), a.AsMatrix(k, n), d.AsMatrix(m, n));
        s2.Synchronize();
        stop.Synchronize();
        Assert.That(stop.IsCompleted);
        Assert.That(Event.ElapsedMilliseconds(start, stop), Is.GreaterThanOrEqualTo(0));
        Assert.That(d.ToArray(s2).Any(float.IsNaN), Is.False, "second stream ran before the first produced its input");
        using var never = new Event(Dev);
        Assert.That(() => Event.ElapsedMilliseconds(never, stop), Throws.InstanceOf<ShardwiseArgumentException>());
    }

    [Test]
    public void NativeStreamsAreWrappedOnlyWhereTheBackendHasThem()
    {
        if (Backend == Backend.Cpu)
        {
            Assert.That(Str.NativeHandle, Is.EqualTo((nint)0));
            Assert.That(() => DeviceStream.Wrap(Dev, 0), Throws.InstanceOf<ShardwiseUnsupportedException>().With.Message.Contains("CPU"));
            return;
        }
        var native = Str.NativeHandle;
        Assert.That(native, Is.Not.EqualTo((nint)0));
        using (var wrapped = DeviceStream.Wrap(Dev, native))
        {
            Assert.That(wrapped.NativeHandle, Is.EqualTo(native));
            wrapped.Synchronize();
        }
        Assert.DoesNotThrow(() => Str.Synchronize(), "disposing the wrapper left the native stream alive");
    }

    [Test]
    public void AnAsyncErrorIsReportedOnceAndTheStreamRecovers()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromMilliseconds(100));
        var ctx = group[0];
        using var b = Dev.Allocate<float>(4);
        ctx.AllReduce(b); // rank 1 never joins: fails on the stream
        b.Fill(1f, Str);
        var ex = Assert.Throws<CollectiveTimeoutException>(() => ctx.Synchronize());
        Assert.That(ex!.Call, Is.EqualTo("sw_stream_synchronize"));
        Assert.DoesNotThrow(() => ctx.Synchronize(), "error reported once, then cleared");
    }
}

public class ShardingPlanTests
{
    [TestCase(10, 3, new long[] { 4, 3, 3 })]
    [TestCase(12, 4, new long[] { 3, 3, 3, 3 })]
    [TestCase(2, 5, new long[] { 1, 1, 0, 0, 0 })]
    [TestCase(0, 2, new long[] { 0, 0 })]
    [TestCase(4097, 8, new long[] { 513, 512, 512, 512, 512, 512, 512, 512 })]
    public void EvenSplitsGiveTheRemainderToTheFirstRanks(long total, int parts, long[] sizes)
    {
        var plan = ShardingPlan.Even(total, parts);
        Assert.That(Enumerable.Range(0, parts).Select(plan.Size), Is.EqualTo(sizes));
        long at = 0;
        for (int r = 0; r < parts; r++)
        {
            Assert.That(plan.Offset(r), Is.EqualTo(at));
            at += sizes[r];
        }
        Assert.That(plan.Total, Is.EqualTo(total));
        Assert.That(plan.IsEven, Is.EqualTo(sizes.Distinct().Count() == 1));
    }

    [Test]
    public void RandomSplitsCoverEveryIndexOnce()
    {
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        for (int t = 0; t < 200; t++)
        {
            long total = rng.Next(0, 100000);
            int parts = rng.Next(1, 65);
            var plan = ShardingPlan.Even(total, parts);
            long at = 0;
            for (int r = 0; r < parts; r++)
            {
                Assert.That(plan.Offset(r), Is.EqualTo(at));
                Assert.That(plan.Size(r), Is.InRange(total / parts, total / parts + 1));
                at += plan.Size(r);
            }
            Assert.That(at, Is.EqualTo(total));
        }
    }

    [Test]
    public void ExplicitSizesAndBadArguments()
    {
        var plan = ShardingPlan.FromSizes(5, 0, 7);
        Assert.That(plan.Total, Is.EqualTo(12));
        Assert.That(plan.Offset(2), Is.EqualTo(5));
        Assert.That(plan.ToString(), Does.Contain("[5, 12)"));
        Assert.That(() => ShardingPlan.FromSizes(3, -1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("sizes"));
        Assert.That(() => ShardingPlan.FromSizes(), Throws.ArgumentException);
        Assert.That(() => ShardingPlan.Even(10, 0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("parts"));
        Assert.That(() => ShardingPlan.Even(-1, 2), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("total"));
        Assert.That(() => plan.Size(3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("rank"));
        Assert.That(Native.sw_shard_range(10, 2, 5, out _, out _), Is.EqualTo(SwStatus.InvalidArgument));
    }
}
