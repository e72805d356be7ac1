using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The GEMM suite once per CPU micro-kernel (<see cref="Device.SetKernel"/>: generic, avx2, avx512, avx512bf16 — whose
/// f32 GEMMs run the avx512 micro-kernel), not only the one
/// the machine picks by default: a kernel this processor cannot run is Ignored with the reason. Shapes cover every
/// register-tile edge (m, n not multiples of MR, NR; m above MC; n above NC) and K across several cache blocks
/// (K = 1031 and 1300 > KC = 512 for avx512, 256 for avx2 and generic), each against a float64 reference on fresh random
/// data with a NaN-poisoned output, plus the bit-for-bit invariances (column and row blocks, thread count) at such K.
/// </summary>
[TestFixture("generic")]
[TestFixture("avx2")]
[TestFixture("avx512")]
[TestFixture("avx512bf16")]
public class CpuKernelGemmTests(string kernel) : BackendTest(Backend.Cpu)
{
    [OneTimeSetUp]
    public void SelectKernel()
    {
        try
        {
            Dev.SetKernel(kernel);
        }
        catch (ShardwiseUnsupportedException e)
        {
            Assert.Ignore($"this processor cannot run the '{kernel}' CPU kernel: {e.Message}");
        }
        Assert.That(Dev.Kernel, Is.EqualTo(kernel));
    }

    private Device NewDevice(int threads)
    {
        var dev = Device.Cpu(threads);
        dev.SetKernel(kernel);
        return dev;
    }

    private static IEnumerable<TestCaseData> Shapes()
    {
        long[][] shapes =
        [
            // register-tile and cache-block edges at small K
            [1, 1, 1], [1, 7, 1], [3, 1, 5], [5, 0, 4], [13, 33, 17], [17, 33, 65], [31, 129, 15], [65, 127, 129],
            [171, 96, 45],
            // the few-row paths (m of 1 or 2 rows with B read in place)
            [2, 77, 70], [2, 1300, 131], [3, 300, 257],
            // K across several cache blocks, odd M and N
            [33, 1300, 45], [7, 1031, 131], [171, 1300, 67], [1, 1300, 1], [15, 1300, 33],
        ];
        foreach (var s in shapes)
            foreach (var (ta, tb) in new[] { (false, false), (true, false), (false, true), (true, true) })
                yield return new TestCaseData(s[0], s[1], s[2], ta, tb).SetArgDisplayNames($"{s[0]}x{s[1]}x{s[2]}", ta ? "T" : "N", tb ? "T" : "N");
        // n above the NC block (4096), K above KC
        yield return new TestCaseData(3L, 1031L, 4111L, false, false).SetArgDisplayNames("3x1031x4111", "N", "N");
        yield return new TestCaseData(3L, 1031L, 4111L, true, true).SetArgDisplayNames("3x1031x4111", "T", "T");
    }

    [TestCaseSource(nameof(Shapes))]
    public void MatchesFloat64Reference(long m, long k, long n, bool transA, bool transB)
    {
        AssertGemmMatchesReference(m, k, n, transA, transB, $"C ({kernel})");
    }

    // beta·C and the bias/GeLU epilogue must be applied once, not once per k block.
    [TestCase(1f, 0f, false, false, 70L)]
    [TestCase(0.5f, 1f, true, false, 1300L)]
    [TestCase(-2f, 0.25f, true, true, 1300L)]
    [TestCase(1f, 0f, true, true, 1031L)]
    [TestCase(1.5f, -1f, false, false, 1031L)]
    public void AlphaBetaBiasGelu(float alpha, float beta, bool withBias, bool gelu, long k)
    {
        var rng = NewRandom();
        const long m = 37, n = 45;
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
        Reference.AssertClose(dc.ToArray(Str), n, want, mag, m, n, k, $"C ({kernel})");
    }

    /// <summary>Column and row blocks of the product equal the full product bit for bit at a K of several cache blocks
    /// (the k blocks depend on k only), and so does every thread count.</summary>
    [Test]
    public void BlocksAndThreadCountsDoNotChangeTheBitsAcrossKBlocks()
    {
        var rng = NewRandom();
        const long m = 53, k = 1300, n = 77;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n);
        using var da = Upload(a);
        using var db = Upload(b);
        using var full = Poisoned(m * n);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), full.AsMatrix(m, n));
        Str.Synchronize();
        var reference = full.ToArray(Str);
        var (want, mag) = Reference.Gemm(a, k, false, b, n, false, m, n, k);
        Reference.AssertClose(reference, n, want, mag, m, n, k, $"full ({kernel})");
        AssertBlocksEqualFull(da, db, reference, m, k, n, [0, 1, 17, 33, 64, 76, 77], [0, 5, 6, 40, 53]);

        foreach (int threads in new[] { 1, 3 })
        {
            using var dev = NewDevice(threads);
            using var s = dev.CreateStream();
            using var xa = Upload(a, dev, s);
            using var xb = Upload(b, dev, s);
            using var xc = Poisoned(m * n, dev, s);
            Gemm.Multiply(s, xa.AsMatrix(m, k), xb.AsMatrix(k, n), xc.AsMatrix(m, n));
            s.Synchronize();
            Reference.AssertBitwise(xc.ToArray(s), reference, $"{threads} threads vs the default");
        }
    }
    /// <summary>The element-wise GeLU of a device gives the bits of its GEMMs' fused GeLU epilogue (the training
    /// forward runs GeLU apart from the GEMM, the inference forward fused): Z = X·W + b, then GeLU(Z) element-wise,
    /// against the GEMM with bias and fused GeLU, every element of 64 × 257 (values of |Z| up to ~25: GeLU's whole
    /// range, the clamp of its exp included) and a tail shorter than any vector.</summary>
    [Test]
    public void ElementWiseGeluEqualsTheFusedEpilogueBitForBit()
    {
        var rng = NewRandom();
        const long m = 64, k = 40, n = 257;
        var a = RandomArray(rng, m * k);
        var b = RandomArray(rng, k * n, 2f);
        var bias = RandomArray(rng, n, 3f);
        using var da = Upload(a);
        using var db = Upload(b);
        using var dbias = Upload(bias);
        using var z = Poisoned(m * n);
        using var fused = Poisoned(m * n);
        using var apart = Poisoned(m * n);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), z.AsMatrix(m, n), bias: dbias);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), fused.AsMatrix(m, n), bias: dbias, epilogue: Epilogue.Gelu);
        Activations.Gelu(Str, z, apart, m * n - 3); // the last 3 stay poisoned: the op writes count elements only
        Activations.Gelu(Str, z, apart, 3, m * n - 3, m * n - 3);
        Str.Synchronize();
        var want = fused.ToArray(Str);
        Assert.That(want.Any(float.IsNaN), Is.False, "the fused GEMM left poison");
        Reference.AssertBitwise(apart.ToArray(Str), want, $"element-wise GeLU vs the fused epilogue ({kernel})");
    }
}
