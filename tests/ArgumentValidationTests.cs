using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Bad arguments give an exception that names the argument (ParamName) and says what was expected — never an
/// OverflowException, an IndexOutOfRangeException or a silently accepted value — and leave the data untouched.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public unsafe class ArgumentValidationTests(Backend backend) : BackendTest(backend)
{
    private static void AssertOutOfRange(Action call, string param, string expectation)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(call)!;
        Assert.That(e.ParamName, Is.EqualTo(param), e.Message);
        Assert.That(e.Message, Does.Contain(expectation), "the message says what was expected");
    }

    [Test]
    public void AllocateAndWrapOfMoreThanABufferCanHoldNameLength()
    {
        AssertOutOfRange(() => Dev.Allocate<float>(long.MaxValue), "length", "expected 1..");
        AssertOutOfRange(() => Dev.Allocate<double>(long.MaxValue / 8 + 1), "length", "expected 1..");
        AssertOutOfRange(() => Dev.Allocate<float>(-3), "length", "positive");
        if (Backend != Backend.Cpu) return; // Wrap needs memory of the device: host memory is the CPU's
        nint p = (nint)NativeMemory.AlignedAlloc(64, 64);
        try
        {
            AssertOutOfRange(() => Dev.Wrap<float>(p, long.MaxValue), "length", "expected 1..");
            AssertOutOfRange(() => Dev.Wrap<float>(p, (1L << 48) + 1), "length", $"expected 1..{1L << 48}");
            AssertOutOfRange(() => Dev.Wrap<byte>(p, (1L << 50) + 1), "length", $"expected 1..{1L << 50}");
            // The largest valid wrap still works (it is never touched here).
            using (var big = Dev.Wrap<float>(p, 1L << 48)) Assert.That(big.Length, Is.EqualTo(1L << 48));
            // What the C ABI refuses by itself (no C# check in front): a size past 2^50 bytes or the address space.
            Assert.That(Native.sw_buffer_wrap(Dev.Handle, p, ulong.MaxValue, out var h), Is.EqualTo(SwStatus.InvalidArgument));
            using (h) Assert.That(h.IsInvalid, "no handle from a refused wrap");
            Assert.That(Marshal.PtrToStringUTF8(Native.sw_last_error()), Does.Contain("bytes"));
        }
        finally
        {
            NativeMemory.AlignedFree((void*)p);
        }
    }

    [Test]
    public void FromSizesWhoseSumOverflowsNamesSizes()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ShardingPlan.FromSizes(long.MaxValue, long.MaxValue, 4))!;
        Assert.That(e.ParamName, Is.EqualTo("sizes"));
        Assert.That(e.Message, Does.Contain("sizes[1]").And.Contain("at most " + long.MaxValue));
        var edge = ShardingPlan.FromSizes(long.MaxValue - 5, 5, 0); // exactly long.MaxValue is fine
        Assert.That(edge.Total, Is.EqualTo(long.MaxValue));
        Assert.That(edge.Offset(1), Is.EqualTo(long.MaxValue - 5));
        Assert.That(() => ShardingPlan.FromSizes(long.MaxValue - 5, 6), Throws.InstanceOf<ArgumentOutOfRangeException>()
            .With.Property("ParamName").EqualTo("sizes"));
    }

    [Test]
    public void ShardOfARankOutsideTheGroupNamesRank()
    {
        var rng = NewRandom();
        const long k = 5, n = 7;
        var w = RandomArray(rng, k * n);
        using var group = ProcessGroup.CreateLocal(Dev, 2);
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        AssertOutOfRange(() => gemm.Shard(2), "rank", "[0, 2)");
        AssertOutOfRange(() => gemm.Shard(-1), "rank", "[0, 2)");
        AssertOutOfRange(() => gemm.Shard(5), "rank", "[0, 2)");
        // The valid ranks hold their column blocks of W (k x n_r each).
        for (int r = 0; r < 2; r++)
        {
            long c0 = gemm.Plan.Offset(r), nr = gemm.Plan.Size(r);
            var got = gemm.Shard(r)!.ToArray(group[r].Stream);
            var want = new float[k * nr];
            for (long i = 0; i < k; i++)
                for (long j = 0; j < nr; j++) want[i * nr + j] = w[i * n + c0 + j];
            Reference.AssertBitwise(got, want, $"shard {r}");
        }
    }

    [Test]
    public void WeightSourceReadOutOfRangeNamesTheArgument()
    {
        var rng = NewRandom();
        const long rows = 4, cols = 6;
        var w = RandomArray(rng, rows * cols);
        bool loaderCalled = false;
        var sources = new[]
        {
            WeightSource.FromArray(w, rows, cols),
            WeightSource.FromLoader(rows, cols, (r0, c0, nr, nc, dst) =>
            {
                loaderCalled = true;
                for (long i = 0; i < nr; i++)
                    for (long j = 0; j < nc; j++) dst[(int)(i * nc + j)] = w[(r0 + i) * cols + c0 + j];
            }),
        };
        foreach (var src in sources)
        {
            var dst = new float[rows * cols];
            AssertOutOfRange(() => src.Read(-1, 0, 1, 1, dst), "rowOffset", "expected 0 <= rowOffset <= 4");
            AssertOutOfRange(() => src.Read(5, 0, 0, 1, dst), "rowOffset", "expected 0 <= rowOffset <= 4");
            AssertOutOfRange(() => src.Read(0, 7, 1, 0, dst), "colOffset", "expected 0 <= colOffset <= 6");
            AssertOutOfRange(() => src.Read(3, 0, 2, 6, dst), "rows", "expected 0..1");
            AssertOutOfRange(() => src.Read(0, 2, 1, 5, dst), "cols", "expected 0..4");
            AssertOutOfRange(() => src.Read(0, 0, long.MaxValue, 1, dst), "rows", "expected 0..4");
            AssertOutOfRange(() => src.Read(1, 1, 2, 3, new float[5]), "destination", "at least rows x cols = 6");
            Assert.That(loaderCalled, Is.False, "the loader is never called with a block outside the matrix");
            // A valid block: rows 1..2, columns 2..4.
            var got = new float[6];
            src.Read(1, 2, 2, 3, got);
            Reference.AssertBitwise(got, [w[8], w[9], w[10], w[14], w[15], w[16]], "block (1, 2) of 2 x 3");
            // LoadBlock checks the same way, before it allocates or reads (rowOffset + rows would overflow a long here).
            loaderCalled = false;
            AssertOutOfRange(() => src.LoadBlock(Str, 1, 0, long.MaxValue, 1), "rows", "expected 0..3");
            AssertOutOfRange(() => src.LoadBlock(Str, 0, 2, 1, long.MaxValue), "cols", "expected 0..4");
            AssertOutOfRange(() => src.LoadBlock(Str, -1, 0, 1, 1), "rowOffset", "expected 0 <= rowOffset <= 4");
            Assert.That(loaderCalled, Is.False, "the loader is never called with a block outside the matrix");
        }
        // rows x cols that wraps around a long (2^32 x 2^32 = 0 elements) is not taken for an empty array.
        AssertOutOfRange(() => WeightSource.FromArray([], 1L << 32, 1L << 32), "cols", "overflows");
    }

    [Test]
    public void ClearAndFillRefuseNegativeCountsOtherThanMinusOne()
    {
        var rng = NewRandom();
        var data = RandomArray(rng, 16);
        using var b = Upload(data);
        AssertOutOfRange(() => b.Clear(Str, 0, -2), "count", "expected -1 (to the end of the buffer) or a count >= 0");
        AssertOutOfRange(() => b.Clear(Str, 3, long.MinValue), "count", "expected -1");
        AssertOutOfRange(() => b.Fill(1f, Str, 0, -2), "count", "expected -1");
        AssertOutOfRange(() => b.Clear(Str, 17), "offset", "expected 0 <= offset <= 16");
        AssertOutOfRange(() => b.Clear(Str, -1, 2), "offset", "expected 0 <= offset <= 16");
        AssertOutOfRange(() => b.Clear(Str, 4, 13), "count", "expected 0..12");
        Str.Synchronize();
        Reference.AssertBitwise(b.ToArray(Str), data, "nothing was cleared by a refused call");
        // -1: from the offset to the end.
        b.Clear(Str, 12);
        Str.Synchronize();
        var after = b.ToArray(Str);
        Reference.AssertBitwise(after.AsSpan(0, 12).ToArray(), data.AsSpan(0, 12).ToArray(), "before the offset");
        Assert.That(after.AsSpan(12).ToArray(), Is.All.EqualTo(0f), "from the offset to the end");
    }

    [Test]
    public void CopyRangesNameTheArgumentAtFault()
    {
        var rng = NewRandom();
        var data = RandomArray(rng, 10);
        using var b = Upload(RandomArray(rng, 16));
        using var other = Upload(RandomArray(rng, 16));
        AssertOutOfRange(() => b.CopyFrom(data, Str, offset: -1), "offset", "expected 0 <= offset <= 16");
        AssertOutOfRange(() => b.CopyFrom(data, Str, offset: 7), "source", "expected 0..9");
        AssertOutOfRange(() => b.CopyTo(new float[10], Str, offset: 17), "offset", "expected 0 <= offset <= 16");
        AssertOutOfRange(() => b.CopyTo(other, Str, sourceOffset: 17, destinationOffset: 0, count: 0), "sourceOffset", "<= 16");
        AssertOutOfRange(() => b.CopyTo(other, Str, sourceOffset: 0, destinationOffset: 20, count: 0), "destinationOffset", "<= 16");
        AssertOutOfRange(() => b.CopyTo(other, Str, sourceOffset: 8, destinationOffset: 0, count: 9), "count", "expected 0..8");
    }

    [Test]
    public void ElapsedTimeOfSwappedEventsIsAnErrorNotANegativeTime()
    {
        var rng = NewRandom();
        using var start = new Event(Dev);
        using var stop = new Event(Dev);
        using var b = Upload(RandomArray(rng, 1 << 16));
        start.Record(Str);
        Str.Synchronize();
        for (int i = 0; i < 8; i++) b.Clear(Str); // some work between the two records
        stop.Record(Str);
        Str.Synchronize();
        Assert.That(Event.ElapsedMilliseconds(start, stop), Is.GreaterThanOrEqualTo(0));
        var e = Assert.Throws<ShardwiseArgumentException>(() => Event.ElapsedMilliseconds(stop, start))!;
        Assert.That(e.Message, Does.Contain("end event was recorded before the start event"));
    }

    [Test]
    public void OutOfRangeEnumsAreRefusedByTheCApi()
    {
        // Straight through the bindings, as any caller of the C ABI may pass them: -1 and one past the last value.
        foreach (int bad in new[] { -1, 2, int.MinValue })
        {
            Assert.That(Native.sw_device_count((SwBackend)bad, out _), Is.EqualTo(SwStatus.InvalidArgument));
            Assert.That(Marshal.PtrToStringUTF8(Native.sw_last_error()), Does.Contain($"backend = {bad}").And.Contain("SW_BACKEND_CPU"));
        }
        Assert.That(Native.sw_dtype_size((SwDtype)(-1)), Is.EqualTo((nuint)0));
        Assert.That(Native.sw_dtype_size((SwDtype)6), Is.EqualTo((nuint)0));
        Assert.That(Marshal.PtrToStringUTF8(Native.sw_status_string((SwStatus)(-1))), Is.EqualTo("SW_ERR_UNKNOWN_STATUS"));
        using var buf = Dev.Allocate<float>(64);
        foreach (var (dtype, ta, tb, epi, name) in new (int, int, int, int, string)[]
                 {
                     (-1, 0, 0, 0, "dtype = -1"), (6, 0, 0, 0, "dtype = 6"), (0, -1, 0, 0, "trans_a = -1"),
                     (0, 2, 0, 0, "trans_a = 2"), (0, 0, -1, 0, "trans_b = -1"), (0, 0, 2, 0, "trans_b = 2"),
                     (0, 0, 0, -1, "epilogue = -1"), (0, 0, 0, 2, "epilogue = 2"),
                 })
        {
            var st = Native.sw_gemm(Str.Handle, (SwDtype)dtype, (SwOp)ta, (SwOp)tb, 2, 2, 2, 1f, buf.Handle, 0, 2, buf.Handle, 8, 2,
                0f, buf.Handle, 16, 2, 0, 0, (SwEpilogue)epi);
            Assert.That(st, Is.EqualTo(SwStatus.InvalidArgument), name);
            Assert.That(Marshal.PtrToStringUTF8(Native.sw_last_error()), Does.Contain(name), name);
        }
        Assert.That(Native.sw_gelu(Str.Handle, (SwDtype)(-1), buf.Handle, 0, buf.Handle, 0, 4), Is.EqualTo(SwStatus.InvalidArgument));
        Assert.That(Marshal.PtrToStringUTF8(Native.sw_last_error()), Does.Contain("dtype = -1").And.Contain("SW_DTYPE_F32"));
        Str.Synchronize();
    }
}
