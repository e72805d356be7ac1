using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="Gemm.MultiplyGrouped{TIn, TOut}"/> (<c>sw_gemm_grouped</c>): every member's C equals what
/// <see cref="Gemm.Multiply{TIn, TOut}"/> writes, bit for bit, on fresh random data with both outputs poisoned (NaN) first
/// — p = 1..8 members with uneven widths (one of them a single column), X shared by every member or an A per member,
/// members on distinct, repeated and single streams, bias and GeLU, f32 / bf16 / f16 inputs with f32 or 16-bit C; the
/// f32 results also against the float64 reference. Bad members are refused naming the member and the argument;
/// overlapping outputs are refused while the column blocks of one Y pass; steady-state calls allocate nothing.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class GemmGroupedTests(Backend backend) : BackendTest(backend)
{
    private DeviceStream[] _streams = [];

    [OneTimeSetUp]
    public void CreateStreams() => _streams = [Str, Dev.CreateStream(), Dev.CreateStream(), Dev.CreateStream()];

    [OneTimeTearDown]
    public void DisposeStreams()
    {
        foreach (var s in _streams.Skip(1)) s.Dispose();
    }

    private static IEnumerable<TestCaseData> Cases()
    {
        string[] types = ["f32/f32", "bf16/f32", "bf16/bf16", "f16/f32", "f16/f16"];
        foreach (var t in types)
            for (int p = 1; p <= 8; p++)
                yield return new TestCaseData(t, p).SetArgDisplayNames(t, $"p={p}");
    }

    [TestCaseSource(nameof(Cases))]
    public void GroupedEqualsMultiplyBitForBit(string types, int p)
    {
        switch (types)
        {
            case "f32/f32": Compare<float, float>(p); break;
            case "bf16/f32": Compare<BFloat16, float>(p); break;
            case "bf16/bf16": Compare<BFloat16, BFloat16>(p); break;
            case "f16/f32": Compare<Half, float>(p); break;
            case "f16/f16": Compare<Half, Half>(p); break;
            default: throw new ArgumentException(types);
        }
    }

    private void Compare<TIn, TOut>(int p) where TIn : unmanaged where TOut : unmanaged
    {
        var rng = NewRandom();
        for (int variant = 0; variant < 4; variant++)
        {
            bool sharedA = variant != 2, bias = variant % 2 == 1, gelu = variant == 3;
            long m = variant switch { 0 => 1, 1 => 13, 2 => 7, _ => 33 }, k = variant switch { 0 => 64, 1 => 29, 2 => 1, _ => 40 };
            var widths = new long[p];
            for (int r = 0; r < p; r++) widths[r] = r == p / 2 ? 1 : rng.Next(1, 14);
            long n = widths.Sum();
            var offsets = new long[p];
            for (int r = 1; r < p; r++) offsets[r] = offsets[r - 1] + widths[r - 1];

            var x = new TIn[sharedA ? 1 : p][];
            var dx = new DeviceBuffer<TIn>[x.Length];
            for (int i = 0; i < x.Length; i++) (x[i], dx[i]) = RandomT<TIn>(rng, m * k);
            var (w, dw) = RandomT<TIn>(rng, k * n);
            var (b, db) = RandomT<TOut>(rng, n);
            using var y1 = Poisoned<TOut>(m * n);
            using var y2 = Poisoned<TOut>(m * n);
            try
            {
                var members = new GemmGroupMember<TIn, TOut>[p];
                for (int r = 0; r < p; r++)
                {
                    // streams: distinct (0..3 wrapping), all on one, or repeated pairs in reverse
                    var stream = _streams[variant switch { 0 => r % 4, 1 => 0, _ => 3 - r / 2 % 4 }];
                    members[r] = new GemmGroupMember<TIn, TOut>(stream, dx[sharedA ? 0 : r].AsMatrix(m, k),
                        dw.AsMatrix(k, n).Columns(offsets[r], widths[r]), y1.AsMatrix(m, n).Columns(offsets[r], widths[r]),
                        bias: bias ? db : null, biasOffset: offsets[r], epilogue: gelu ? Epilogue.Gelu : Epilogue.None);
                }
                Gemm.MultiplyGrouped<TIn, TOut>(members);
                foreach (var g in members)
                    Gemm.Multiply(g.Stream, g.A, g.B, y2.AsMatrix(m, n).Columns(g.C.Offset, g.C.Cols), bias: g.Bias,
                        biasOffset: g.BiasOffset, epilogue: g.Epilogue);
                foreach (var s in _streams) s.Synchronize();
                var got = y1.ToArray(Str);
                var want = y2.ToArray(Str);
                Assert.That(MemoryMarshal.AsBytes(got.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(want.AsSpan())),
                    $"variant {variant}: grouped differs from Gemm.Multiply member by member");
                Assert.That(got.Count(v => double.IsNaN(MixedPrecisionGemmTests.Wide(v))), Is.Zero, $"variant {variant}: poison left in Y");
                if (typeof(TIn) == typeof(float) && typeof(TOut) == typeof(float) && !gelu)
                {
                    for (int r = 0; r < p; r++)
                    {
                        var a = (float[])(object)x[sharedA ? 0 : r];
                        var (refv, mag) = Reference.Gemm(a, k, false, (float[])(object)w, n, false, m, n, k,
                            bias: bias ? (float[])(object)b : null);
                        var f = (float[])(object)got;
                        for (long i = 0; i < m; i++)
                            for (long j = offsets[r]; j < offsets[r] + widths[r]; j++)
                                Assert.That(Math.Abs(f[i * n + j] - refv[i * n + j]), Is.LessThanOrEqualTo(Reference.Bound(mag[i * n + j], k)),
                                    $"variant {variant}: Y[{i}, {j}] against the float64 reference");
                    }
                }
            }
            finally
            {
                foreach (var d in dx) d.Dispose();
                dw.Dispose();
                db.Dispose();
            }
        }
    }

    private (T[] Host, DeviceBuffer<T> Device) RandomT<T>(Random rng, long n) where T : unmanaged
    {
        var h = new T[n];
        for (long i = 0; i < n; i++) h[i] = MixedPrecisionGemmTests.To<T>((float)(rng.NextDouble() * 2 - 1));
        var d = Dev.Allocate<T>(Math.Max(1, n));
        d.CopyFrom(h, Str);
        return (h, d);
    }

    private DeviceBuffer<T> Poisoned<T>(long n) where T : unmanaged
    {
        var d = Dev.Allocate<T>(n);
        d.Fill(MixedPrecisionGemmTests.To<T>(float.NaN), Str);
        return d;
    }

    // ------------------------------------------------------------------ bad members

    /// <summary>A sharded group of 4 (X 3 × 4, W 4 × 10, Y 3 × 10, bias 10) whose member `bad` is replaced.</summary>
    private sealed class Setup : IDisposable
    {
        public readonly DeviceBuffer<float> X, W, Y, Bias;
        public readonly GemmGroupMember<float, float>[] Members = new GemmGroupMember<float, float>[4];
        public readonly long[] Off = [0, 1, 4, 8, 10];

        public Setup(GemmGroupedTests t)
        {
            var rng = t.NewRandom();
            X = t.Upload(RandomArray(rng, 12));
            W = t.Upload(RandomArray(rng, 40));
            Bias = t.Upload(RandomArray(rng, 10));
            Y = t.Poisoned(30);
            for (int r = 0; r < 4; r++) Members[r] = Member(t._streams[r], r);
        }

        public GemmGroupMember<float, float> Member(DeviceStream s, int r, MatrixView<float>? c = null) =>
            new(s, X.AsMatrix(3, 4), W.AsMatrix(4, 10).Columns(Off[r], Off[r + 1] - Off[r]),
                c ?? Y.AsMatrix(3, 10).Columns(Off[r], Off[r + 1] - Off[r]), bias: Bias, biasOffset: Off[r]);

        public void Dispose()
        {
            X.Dispose();
            W.Dispose();
            Y.Dispose();
            Bias.Dispose();
        }
    }

    private T Refused<T>(Setup s, int bad, GemmGroupMember<float, float> member, string param) where T : ArgumentException
    {
        var members = (GemmGroupMember<float, float>[])s.Members.Clone();
        members[bad] = member;
        var e = Assert.Throws<T>(() => Gemm.MultiplyGrouped<float, float>(members))!;
        Assert.That(e.ParamName, Is.EqualTo(param), e.Message);
        foreach (var st in _streams) st.Synchronize();
        Assert.That(s.Y.ToArray(Str).All(float.IsNaN), $"{param}: a refused group wrote Y");
        return e;
    }

    [Test]
    public void BadMembersAreRefusedNamingTheMemberAndTheArgument()
    {
        using var s = new Setup(this);
        var e = Assert.Throws<ArgumentException>(() => Gemm.MultiplyGrouped(ReadOnlySpan<GemmGroupMember<float, float>>.Empty))!;
        Assert.That(e.ParamName, Is.EqualTo("members"));
        Refused<ArgumentNullException>(s, 1, default, "members[1].stream");
        var wrongK = new GemmGroupMember<float, float>(_streams[2], s.X.AsMatrix(3, 4), s.W.AsMatrix(3, 10).Columns(4, 4),
            s.Y.AsMatrix(3, 10).Columns(4, 4));
        Assert.That(Refused<ArgumentException>(s, 2, wrongK, "members[2].b").Message, Does.StartWith("members[2]: b is 3 x 4"));
        var wrongC = new GemmGroupMember<float, float>(_streams[3], s.X.AsMatrix(3, 4), s.W.AsMatrix(4, 10).Columns(8, 2),
            s.Y.AsMatrix(2, 10).Columns(8, 2));
        Refused<ArgumentException>(s, 3, wrongC, "members[3].c");
        var nanAlpha = new GemmGroupMember<float, float>(_streams[0], s.X.AsMatrix(3, 4), s.W.AsMatrix(4, 10).Columns(0, 1),
            s.Y.AsMatrix(3, 10).Columns(0, 1), alpha: float.NaN);
        Refused<ArgumentOutOfRangeException>(s, 0, nanAlpha, "members[0].alpha");
        var shortBias = new GemmGroupMember<float, float>(_streams[1], s.X.AsMatrix(3, 4), s.W.AsMatrix(4, 10).Columns(1, 3),
            s.Y.AsMatrix(3, 10).Columns(1, 3), bias: s.Bias, biasOffset: 8);
        Refused<ArgumentException>(s, 1, shortBias, "members[1].bias");

        using var other = Device.Open(Backend);
        using var foreign = other.CreateStream();
        Assert.That(Refused<ArgumentException>(s, 2, s.Member(foreign, 2), "members[2].stream").Message,
            Does.Contain("expected every member's stream on one device"));
    }

    [Test]
    public void OverlappingOutputsAreRefusedAndColumnBlocksOfOneYPass()
    {
        using var s = new Setup(this);
        // member 1 reaches into member 2's first column
        var wide = s.Member(_streams[1], 1, s.Y.AsMatrix(3, 10).Columns(1, 4));
        var wideB = new GemmGroupMember<float, float>(_streams[1], s.X.AsMatrix(3, 4), s.W.AsMatrix(4, 10).Columns(1, 4), wide.C);
        Assert.That(Refused<ArgumentException>(s, 1, wideB, "members[1].c").Message, Does.StartWith("members[1].c overlaps members[2].c"));
        // member 3 writes into X, which every member reads
        var intoX = new GemmGroupMember<float, float>(_streams[3], s.X.AsMatrix(3, 4), s.W.AsMatrix(4, 10).Columns(8, 2),
            s.X.AsMatrix(3, 2, 4));
        Assert.That(Refused<ArgumentException>(s, 3, intoX, "members[3].c").Message, Does.StartWith("members[3].c overlaps members[0].a"));
        // member 2 writes the bias members 0 and 1 read
        var intoBias = new GemmGroupMember<float, float>(_streams[2], s.X.AsMatrix(1, 4), s.W.AsMatrix(4, 10).Columns(4, 4),
            s.Bias.AsMatrix(1, 4));
        Assert.That(Refused<ArgumentException>(s, 2, intoBias, "members[2].c").Message, Does.StartWith("members[2].c overlaps members"));

        // The native core checks bytes across buffers: two wrappers of one memory are caught there.
        if (Backend == Backend.Cpu)
        {
            using var alias = Dev.Wrap<float>(s.Y.Pointer, 30);
            var aliased = s.Member(_streams[2], 2, alias.AsMatrix(3, 10).Columns(3, 4)); // column 3 is member 1's
            var members = (GemmGroupMember<float, float>[])s.Members.Clone();
            members[2] = aliased;
            var e = Assert.Throws<ShardwiseArgumentException>(() => Gemm.MultiplyGrouped<float, float>(members))!;
            Assert.That(e.NativeMessage, Does.Contain("descs[1].c overlaps descs[2].c"));
        }

        // The column blocks of one Y (ldc = N) are apart: accepted, every element written once.
        Gemm.MultiplyGrouped<float, float>(s.Members);
        foreach (var st in _streams) st.Synchronize();
        Assert.That(s.Y.ToArray(Str).Count(float.IsNaN), Is.Zero);
    }

    [Test]
    public void TheExactOverlapTestAgreesWithAnElementMap()
    {
        // Two members writing strided blocks of one buffer (k = 0: C = 0, no inputs to overlap): refused exactly when an
        // element map says the blocks share an element; the accepted ones also pass the native byte test and run.
        var rng = NewRandom();
        using var buf = Dev.Allocate<float>(200);
        using var a = Dev.Allocate<float>(1);
        using var b = Dev.Allocate<float>(64);
        int overlapping = 0, interleaved = 0;
        for (int t = 0; t < 4000; t++)
        {
            long xr = rng.Next(1, 8), xc = rng.Next(1, 9), xl = xc + rng.Next(0, 8), x0 = rng.Next(0, 60);
            long yr = rng.Next(1, 8), yc = rng.Next(1, 9), yl = t % 2 == 0 ? xl : yc + rng.Next(0, 8), y0 = rng.Next(0, 60);
            if (yl < yc) yc = yl;
            var map = new bool[200];
            for (long i = 0; i < xr; i++) for (long j = 0; j < xc; j++) map[x0 + i * xl + j] = true;
            bool want = false;
            for (long i = 0; i < yr && !want; i++) for (long j = 0; j < yc && !want; j++) want = map[y0 + i * yl + j];
            var members = new GemmGroupMember<float, float>[]
            {
                new(Str, a.AsMatrix(xr, 0, 1), b.AsMatrix(0, xc, xc), buf.AsMatrix(xr, xc, xl, x0)),
                new(_streams[1], a.AsMatrix(yr, 0, 1), b.AsMatrix(0, yc, yc), buf.AsMatrix(yr, yc, yl, y0)),
            };
            bool got = false;
            try
            {
                Gemm.MultiplyGrouped<float, float>(members);
            }
            catch (ArgumentException e) when (e.Message.StartsWith("members[0].c overlaps members[1].c", StringComparison.Ordinal))
            {
                got = true;
            }
            Assert.That(got, Is.EqualTo(want), $"x = {x0}: {xr} x {xc} / {xl}, y = {y0}: {yr} x {yc} / {yl}");
            overlapping += want ? 1 : 0;
            if (!want && x0 < y0 + (yr - 1) * yl + yc && y0 < x0 + (xr - 1) * xl + xc) interleaved++;
        }
        Str.Synchronize();
        _streams[1].Synchronize();
        Assert.That(overlapping, Is.InRange(400, 3600));
        Assert.That(interleaved, Is.GreaterThan(80), "cases whose spans interleave without sharing an element");
    }

    // ------------------------------------------------------------------ allocation-free steady state

    [TestCase(4)]
    [TestCase(20)]
    public void SteadyStateCallsAllocateNothing(int p)
    {
        var rng = NewRandom();
        const long m = 2, k = 8;
        using var x = Upload(RandomArray(rng, m * k));
        using var w = Upload(RandomArray(rng, k * p));
        using var bias = Upload(RandomArray(rng, p));
        using var y = Poisoned(m * p);
        var members = new GemmGroupMember<float, float>[p];
        for (int r = 0; r < p; r++)
            members[r] = new(_streams[r % 4], x.AsMatrix(m, k), w.AsMatrix(k, p).Columns(r, 1), y.AsMatrix(m, p).Columns(r, 1),
                bias: bias, biasOffset: r, epilogue: Epilogue.Gelu);
        for (int i = 0; i < 3; i++) Gemm.MultiplyGrouped<float, float>(members); // warm-up (JIT, tiers, pools)
        foreach (var s in _streams) s.Synchronize();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) Gemm.MultiplyGrouped<float, float>(members);
        long after = GC.GetAllocatedBytesForCurrentThread();
        foreach (var s in _streams) s.Synchronize();
        Assert.That(after - before, Is.Zero, $"managed bytes allocated by 20 grouped calls of {p} members");
    }

    [Test]
    public void ShardedForwardAllocatesNothingInSteadyState()
    {
        var rng = NewRandom();
        const long m = 3, k = 16, n = 21;
        var w = RandomArray(rng, k * n);
        using var x = Upload(RandomArray(rng, m * k));
        using var y = Poisoned(m * n);
        using var group = ProcessGroup.CreateLocal(Dev, 4);
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        for (int i = 0; i < 3; i++) gemm.Forward(x.AsMatrix(m, k), y.AsMatrix(m, n));
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) gemm.Forward(x.AsMatrix(m, k), y.AsMatrix(m, n));
        long after = GC.GetAllocatedBytesForCurrentThread();
        Assert.That(after - before, Is.Zero, "managed bytes allocated by 20 sharded forwards (p = 4)");
    }
}
