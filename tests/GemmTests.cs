using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class GemmTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Shapes()
    {
        long[][] shapes =
        [
            [1, 1, 1], [1, 7, 1], [1, 300, 257], [257, 300, 1], [3, 1, 5], [5, 0, 4],
            [17, 33, 65], [31, 129, 15], [64, 64, 64], [65, 127, 129], [100, 257, 33], [128, 512, 96], [200, 96, 300],
        ];
        foreach (var s in shapes)
            foreach (var (ta, tb) in new[] { (false, false), (true, false), (false, true), (true, true) })
                yield return new TestCaseData(s[0], s[1], s[2], ta, tb).SetArgDisplayNames($"{s[0]}x{s[1]}x{s[2]}", ta ? "T" : "N", tb ? "T" : "N");
    }

    [TestCaseSource(nameof(Shapes))]
    public void MatchesFloat64Reference(long m, long k, long n, bool transA, bool transB)
    {
        AssertGemmMatchesReference(m, k, n, transA, transB, "C");
    }

    [TestCase(1f, 0f, false, false)]
    [TestCase(0.5f, 1f, true, false)]
    [TestCase(-2f, 0.25f, true, true)]
    [TestCase(1f, 0f, true, true)]
    public void AlphaBetaBiasGelu(float alpha, float beta, bool withBias, bool gelu)
    {
        var rng = NewRandom();
        const long m = 37, k = 70, n = 45;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n);
        var c0 = RandomArray(rng, m * n);
        var bias = RandomArray(rng, n);
        using var da = Upload(a);
        using var db = Upload(b);
        using var dbias = Upload(bias);
        using var dc = beta == 0 ? Poisoned(m * n) : Upload(c0);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), dc.AsMatrix(m, n), alpha, beta,
            bias: withBias ? dbias : null, epilogue: gelu ? Epilogue.Gelu : Epilogue.None);
        Str.Synchronize();
        var (want, mag) = Reference.Gemm(a, k, false, b, n, false, m, n, k, alpha, beta, c0, n, withBias ? bias : null, gelu);
        Reference.AssertClose(dc.ToArray(Str), n, want, mag, m, n, k, "C");
    }

    [Test]
    public void ColumnAndRowBlocksEqualTheFullProductBitForBit()
    {
        var rng = NewRandom();
        const long m = 93, k = 301, n = 131;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n);
        using var da = Upload(a);
        using var db = Upload(b);
        using var full = Poisoned(m * n);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), full.AsMatrix(m, n));
        Str.Synchronize();
        AssertBlocksEqualFull(da, db, full.ToArray(Str), m, k, n, [0, 1, 18, 64, 65, 130, 131], [0, 7, 8, 50, 93]);
    }

    [Test]
    public void EveryCpuKernelMatchesTheReference()
    {
        if (Backend != Backend.Cpu) Assert.Ignore("CPU micro-kernels only");
        var rng = NewRandom();
        const long m = 67, k = 129, n = 75;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n);
        var (want, mag) = Reference.Gemm(a, k, false, b, n, false, m, n, k);
        int tried = 0;
        foreach (var kernel in new[] { "generic", "avx2", "avx512", "avx512bf16" })
        {
            using var dev = Device.Cpu(2);
            try { dev.SetKernel(kernel); }
            catch (ShardwiseUnsupportedException) { continue; }
            using var s = dev.CreateStream();
            using var da = Upload(a, dev, s);
            using var db = Upload(b, dev, s);
            using var dc = Poisoned(m * n, dev, s);
            Gemm.Multiply(s, da.AsMatrix(m, k), db.AsMatrix(k, n), dc.AsMatrix(m, n));
            s.Synchronize();
            Assert.That(dev.Kernel, Is.EqualTo(kernel));
            Reference.AssertClose(dc.ToArray(s), n, want, mag, m, n, k, kernel);
            tried++;
        }
        Assert.That(tried, Is.GreaterThanOrEqualTo(1));
    }

    [Test]
    public void ThreadCountDoesNotChangeTheBits()
    {
        if (Backend != Backend.Cpu) Assert.Ignore("CPU thread pools only");
        var rng = NewRandom();
        const long m = 150, k = 200, n = 170;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
        {
            using var dev = Device.Cpu(threads);
            using var s = dev.CreateStream();
            using var da = Upload(a, dev, s);
            using var db = Upload(b, dev, s);
            using var dc = Poisoned(m * n, dev, s);
            Gemm.Multiply(s, da.AsMatrix(m, k), db.AsMatrix(k, n), dc.AsMatrix(m, n));
            s.Synchronize();
            var c = dc.ToArray(s);
            if (first is null) first = c;
            else Reference.AssertBitwise(c, first, $"{threads} threads vs 1");
        }
    }

    // ------------------------------------------------------------------ bad input

    [Test]
    public void MismatchedInnerDimensionsAreRejectedByName()
    {
        using var a = Dev.Allocate<float>(12);
        using var b = Dev.Allocate<float>(12);
        using var c = Dev.Allocate<float>(12);
        var ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Str, a.AsMatrix(3, 4), b.AsMatrix(3, 4), c.AsMatrix(3, 4)));
        Assert.That(ex!.ParamName, Is.EqualTo("b"));
        ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Str, a.AsMatrix(3, 4), b.AsMatrix(4, 3), c.AsMatrix(4, 3)));
        Assert.That(ex!.ParamName, Is.EqualTo("c"));
    }

    [Test]
    public void ViewsThatDoNotFitOrHaveShortLeadingDimensionsAreRejected()
    {
        using var a = Dev.Allocate<float>(12);
        Assert.That(() => a.AsMatrix(4, 4), Throws.ArgumentException.With.Property("ParamName").EqualTo("buffer"));
        Assert.That(() => a.AsMatrix(2, 4, ld: 3), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("ld"));
        Assert.That(() => a.AsMatrix(2, 2, offset: -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        // (rows-1)·ld would wrap around 2^64 to a small number: rejected, not wrapped.
        Assert.That(() => a.AsMatrix(4, 1, ld: 6148914691236517206), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("ld"));
    }

    [Test]
    public void NativeLayerRejectsWhatTheManagedLayerWouldHaveCaught()
    {
        using var a = Dev.Allocate<float>(12);
        using var b = Dev.Allocate<float>(12);
        using var c = Dev.Allocate<float>(12);
        // lda smaller than k, straight through the C ABI: a clear error, no crash, stream still usable.
        var status = Native.sw_gemm(Str.Handle, SwDtype.F32, SwOp.N, SwOp.N, 3, 4, 4, 1f, a.Handle, 0, 2, b.Handle, 0, 4, 0f, c.Handle, 0, 4, 0, 0, SwEpilogue.None);
        var ex = ShardwiseException.Create(status, "sw_gemm");
        Assert.That(ex, Is.InstanceOf<ShardwiseArgumentException>());
        Assert.That(ex.Message, Does.Contain("lda"));
        // out of bounds: c too small
        status = Native.sw_gemm(Str.Handle, SwDtype.F32, SwOp.N, SwOp.N, 3, 4, 3, 1f, a.Handle, 0, 3, b.Handle, 0, 4, 0f, c.Handle, 4, 4, 0, 0, SwEpilogue.None);
        Assert.That(ShardwiseException.Create(status, "sw_gemm").Message, Does.Contain("c:"));
        // a leading dimension whose extent wraps around 64 bits
        status = Native.sw_gemm(Str.Handle, SwDtype.F32, SwOp.N, SwOp.N, 4, 1, 1, 1f, a.Handle, 0, 6148914691236517206, b.Handle, 0, 1, 0f, c.Handle, 0, 1, 0, 0, SwEpilogue.None);
        Assert.That(ShardwiseException.Create(status, "sw_gemm").Message, Does.Contain("overflows"));
        // wrong dtype
        status = Native.sw_gemm(Str.Handle, SwDtype.F64, SwOp.N, SwOp.N, 2, 2, 2, 1f, a.Handle, 0, 2, b.Handle, 0, 2, 0f, c.Handle, 0, 2, 0, 0, SwEpilogue.None);
        Assert.That(ShardwiseException.Create(status, "sw_gemm"), Is.InstanceOf<ShardwiseUnsupportedException>());
        // bad enum
        status = Native.sw_gemm(Str.Handle, SwDtype.F32, (SwOp)7, SwOp.N, 2, 2, 2, 1f, a.Handle, 0, 2, b.Handle, 0, 2, 0f, c.Handle, 0, 2, 0, 0, SwEpilogue.None);
        Assert.That(ShardwiseException.Create(status, "sw_gemm").Message, Does.Contain("trans_a"));
        // the stream still works
        Gemm.Multiply(Str, a.AsMatrix(2, 2), b.AsMatrix(2, 2), c.AsMatrix(2, 2));
        Assert.DoesNotThrow(() => Str.Synchronize());
    }

    [Test]
    public void DisposedAndForeignBuffersAreRejected()
    {
        using var a = Dev.Allocate<float>(16);
        using var c = Dev.Allocate<float>(16);
        var dead = Dev.Allocate<float>(16);
        dead.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Gemm.Multiply(Str, a.AsMatrix(4, 4), dead.AsMatrix(4, 4), c.AsMatrix(4, 4)));
        using var other = Device.Open(Backend);
        using var foreign = other.Allocate<float>(16);
        var ex = Assert.Throws<ArgumentException>(() => Gemm.Multiply(Str, a.AsMatrix(4, 4), foreign.AsMatrix(4, 4), c.AsMatrix(4, 4)));
        Assert.That(ex!.ParamName, Is.EqualTo("b"));
        Assert.Throws<ArgumentNullException>(() => Gemm.Multiply(null!, a.AsMatrix(4, 4), a.AsMatrix(4, 4), c.AsMatrix(4, 4)));
        Assert.Throws<ArgumentException>(() => Gemm.Multiply(Str, default, a.AsMatrix(4, 4), c.AsMatrix(4, 4)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Gemm.Multiply(Str, a.AsMatrix(4, 4), a.AsMatrix(4, 4), c.AsMatrix(4, 4), alpha: float.NaN));
    }
}
