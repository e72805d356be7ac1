using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// The typed GEMM <see cref="Gemm.Multiply{TIn, TOut}"/> (<c>sw_gemm_ex</c>) for every supported type combination
/// (a = b = f32, f16, bf16; c = f32 or the input type) against a float64 reference computed from the ROUNDED 16-bit
/// inputs, on fresh random data, C poisoned with NaN before each run; once per CPU micro-kernel (the default one, each
/// named kernel this processor runs) and on CUDA.
/// <para>Tolerance, element-wise (with <c>mag</c> = |alpha|·Σ|a_ip·b_pj| + |beta·c_ij| + |bias_j|, <c>pre</c> the
/// reference before the epilogue, <c>ref</c> the reference result):
/// <c>|got - ref| ≤ 2·(1.13·(K + 3)·u_acc·mag + 8·u_acc·max(|pre|, |ref|)) + u_out·|ref| + η_out</c>
/// where u_acc = 2^-24 (fp32 accumulation: the worst-case γ_K bound of a K-term sum plus alpha, beta and the bias;
/// 1.13 bounds |GeLU'| which carries it through the epilogue; the second term is GeLU's own fp32 evaluation), u_out the
/// unit roundoff of C's type (2^-24 f32, 2^-11 f16, 2^-8 bf16: the one final rounding) and η_out half the smallest
/// subnormal of C's type (the rounding of a result that lands among the subnormals is absolute).</para>
/// </summary>
[TestFixture(Backend.Cpu, "default")]
[TestFixture(Backend.Cpu, "generic")]
[TestFixture(Backend.Cpu, "avx2")]
[TestFixture(Backend.Cpu, "avx512")]
[TestFixture(Backend.Cpu, "avx512bf16")]
[TestFixture(Backend.Cuda, "default")]
public class MixedPrecisionGemmTests(Backend backend, string kernel) : BackendTest(backend)
{
    [OneTimeSetUp]
    public void SelectKernel()
    {
        if (kernel == "default") return;
        try
        {
            Dev.SetKernel(kernel);
        }
        catch (ShardwiseException e) when (e is ShardwiseUnsupportedException or ShardwiseArgumentException)
        {
            Assert.Ignore($"the '{kernel}' GEMM kernel is not available here (this library or processor): {e.Message}");
        }
    }

    /// <summary>True when the selected kernel multiplies bf16 with vdpbf16ps, which reads bf16 subnormal inputs as zero
    /// (shardwise.h, sw_gemm_desc).</summary>
    private bool FlushesBf16SubnormalInputs => Backend == Backend.Cpu && Dev.Kernel == "avx512bf16";

    // ------------------------------------------------------------------ element helpers

    internal static T To<T>(float x) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (T)(object)x;
        if (typeof(T) == typeof(Half)) return (T)(object)(Half)x;
        if (typeof(T) == typeof(BFloat16)) return (T)(object)(BFloat16)x;
        throw new NotSupportedException(typeof(T).Name);
    }

    internal static double Wide<T>(T x) where T : unmanaged => x switch
    {
        float f => f,
        Half h => (double)h,
        BFloat16 b => b,
        _ => throw new NotSupportedException(typeof(T).Name),
    };

    /// <summary>Unit roundoff of <typeparamref name="T"/>.</summary>
    internal static double UnitRoundoff<T>() =>
        typeof(T) == typeof(float) ? Math.Pow(2, -24) : typeof(T) == typeof(Half) ? Math.Pow(2, -11) : Math.Pow(2, -8);

    /// <summary>Half the smallest subnormal of <typeparamref name="T"/>.</summary>
    internal static double HalfSubnormal<T>() =>
        typeof(T) == typeof(float) ? Math.Pow(2, -150) : typeof(T) == typeof(Half) ? Math.Pow(2, -25) : Math.Pow(2, -134);

    /// <summary>Random values in [-scale, scale) rounded to <typeparamref name="T"/>: the raw elements and their exact
    /// float values (what the reference multiplies).</summary>
    private static (T[] Raw, float[] Rounded) RandomRounded<T>(Random rng, long n, float scale = 1f) where T : unmanaged
    {
        var raw = new T[n];
        var rounded = new float[n];
        for (long i = 0; i < n; i++)
        {
            raw[i] = To<T>((float)(rng.NextDouble() * 2 - 1) * scale);
            rounded[i] = (float)Wide(raw[i]);
        }
        return (raw, rounded);
    }

    private DeviceBuffer<T> UploadT<T>(T[] data) where T : unmanaged
    {
        var b = Dev.Allocate<T>(Math.Max(1, data.Length));
        b.CopyFrom(data, Str);
        return b;
    }

    private DeviceBuffer<T> PoisonedT<T>(long n) where T : unmanaged
    {
        var b = Dev.Allocate<T>(n);
        b.Fill(To<T>(float.NaN), Str);
        return b;
    }

    /// <summary>The tolerance formula of this suite (see the class comment).</summary>
    internal static double Tolerance<TOut>(double mag, double pre, double want, long k)
    {
        const double uAcc = 1.0 / (1 << 24);
        return 2 * (1.13 * (k + 3) * uAcc * mag + 8 * uAcc * Math.Max(Math.Abs(pre), Math.Abs(want)))
            + UnitRoundoff<TOut>() * Math.Abs(want) + HalfSubnormal<TOut>();
    }

    private static void AssertClose<TOut>(TOut[] got, long ldc, double[] pre, double[] want, double[] mag, long m, long n, long k, string what)
        where TOut : unmanaged
    {
        int bad = 0;
        string first = "";
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
            {
                double g = Wide(got[i * ldc + j]), w = want[i * n + j];
                double tol = Tolerance<TOut>(mag[i * n + j], pre[i * n + j], w, k);
                if (!(Math.Abs(g - w) <= tol) && bad++ == 0)
                    first = $"({i},{j}): got {g:R}, expected {w:R} ± {tol:E2}";
            }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {m * n} elements outside the bound; first {first}");
    }

    // ------------------------------------------------------------------ cases

    private static readonly (Type In, Type Out)[] Combinations =
    [
        (typeof(float), typeof(float)), (typeof(Half), typeof(Half)), (typeof(Half), typeof(float)),
        (typeof(BFloat16), typeof(BFloat16)), (typeof(BFloat16), typeof(float)),
    ];

    private static string Short(Type t) => t == typeof(float) ? "f32" : t == typeof(Half) ? "f16" : "bf16";

    private static IEnumerable<TestCaseData> ShapeCases()
    {
        // tile edges at small K; K across several cache blocks (1031, 1300 > KC); m above MC (171); n above NC (4111);
        // skinny M over a B of 4 MiB and more, stored as is (5x1031x2100 N,N: the row-walking kernels, fp32 and bf16)
        long[][] shapes = [[1, 1, 1], [1, 9, 3], [3, 17, 5], [37, 70, 45], [65, 129, 33], [7, 1031, 131], [19, 300, 257],
            [171, 1300, 67], [3, 1031, 4111], [5, 1031, 2100]];
        foreach (var (tin, tout) in Combinations)
            foreach (var s in shapes)
                foreach (var (ta, tb) in new[] { (false, false), (true, false), (false, true), (true, true) })
                    yield return new TestCaseData(tin, tout, s[0], s[1], s[2], ta, tb)
                        .SetArgDisplayNames($"a,b={Short(tin)} c={Short(tout)}", $"{s[0]}x{s[1]}x{s[2]}", ta ? "T" : "N", tb ? "T" : "N");
    }

    private static IEnumerable<TestCaseData> EpilogueCases()
    {
        (float Alpha, float Beta, bool Bias, bool Gelu)[] cases =
            [(1f, 0f, true, false), (0.5f, 1f, true, false), (-2f, 0.25f, true, true), (1f, 0f, false, true), (1.5f, -1f, false, false)];
        foreach (var (tin, tout) in Combinations)
            foreach (var c in cases)
                foreach (var tr in new[] { false, true })
                    yield return new TestCaseData(tin, tout, c.Alpha, c.Beta, c.Bias, c.Gelu, tr)
                        .SetArgDisplayNames($"a,b={Short(tin)} c={Short(tout)}", $"alpha={c.Alpha}", $"beta={c.Beta}",
                            c.Bias ? "bias" : "no bias", c.Gelu ? "gelu" : "none", tr ? "T,T" : "N,N");
    }

    private void Invoke(string method, Type tin, Type tout, params object[] args)
    {
        var mi = typeof(MixedPrecisionGemmTests).GetMethod(method, System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        try
        {
            mi.MakeGenericMethod(tin, tout).Invoke(this, args);
        }
        catch (System.Reflection.TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
        }
    }

    [TestCaseSource(nameof(ShapeCases))]
    public void MatchesFloat64ReferenceOfTheRoundedInputs(Type tin, Type tout, long m, long k, long n, bool transA, bool transB) =>
        Invoke(nameof(RunGemm), tin, tout, m, k, n, transA, transB, 1f, 0f, false, false);

    [TestCaseSource(nameof(EpilogueCases))]
    public void AlphaBetaBiasGeluInFp32BeforeTheRounding(Type tin, Type tout, float alpha, float beta, bool bias, bool gelu, bool trans) =>
        Invoke(nameof(RunGemm), tin, tout, 29L, 83L, 41L, trans, trans, alpha, beta, bias, gelu);

    // One GEMM with padded leading dimensions (lda, ldb, ldc beyond the matrix) into a poisoned C (or a random C when
    // beta != 0): every element within the bound, the padding of C still poison.
    private void RunGemm<TIn, TOut>(long m, long k, long n, bool transA, bool transB, float alpha, float beta, bool withBias, bool gelu)
        where TIn : unmanaged where TOut : unmanaged
    {
        var rng = NewRandom();
        long lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 1, ldc = n + 2;
        var (a, ar) = RandomRounded<TIn>(rng, (transA ? k : m) * lda);
        var (b, br) = RandomRounded<TIn>(rng, (transB ? n : k) * ldb);
        var (c0, c0r) = RandomRounded<TOut>(rng, m * ldc);
        var (bias, biasr) = RandomRounded<TOut>(rng, n + 1);
        using var da = UploadT(a);
        using var db = UploadT(b);
        using var dc = beta == 0 ? PoisonedT<TOut>(m * ldc) : UploadT(c0);
        using var dbias = UploadT(bias);
        if (beta != 0) // keep the padding poisoned so that a write there shows
            for (long i = 0; i < m; i++)
                dc.Fill(To<TOut>(float.NaN), Str, i * ldc + n, ldc - n);
        Gemm.Multiply(Str, da.AsMatrix(transA ? k : m, transA ? m : k, lda), db.AsMatrix(transB ? n : k, transB ? k : n, ldb),
            dc.AsMatrix(m, n, ldc), alpha, beta, transA, transB, withBias ? dbias : null, 1, gelu ? Epilogue.Gelu : Epilogue.None);
        Str.Synchronize();
        var got = dc.ToArray(Str);

        var biasShifted = withBias ? biasr[1..] : null;
        var (pre, mag) = Reference.Gemm(ar, lda, transA, br, ldb, transB, m, n, k, alpha, beta, c0r, ldc, biasShifted, gelu: false);
        var want = gelu ? pre.Select(Reference.Gelu).ToArray() : pre;
        AssertClose(got, ldc, pre, want, mag, m, n, k, $"a,b = {typeof(TIn).Name}, c = {typeof(TOut).Name}");
        for (long i = 0; i < m; i++)
            for (long j = n; j < ldc; j++)
                Assert.That(double.IsNaN(Wide(got[i * ldc + j])), $"padding ({i},{j}) beyond n was written");
    }

    [TestCase(typeof(Half))]
    [TestCase(typeof(BFloat16))]
    public void ColumnAndRowBlocksEqualTheFullProductBitForBit(Type tin) =>
        Invoke(nameof(RunBlocks), tin, tin, 45L, 1031L, new long[] { 0, 1, 18, 64, 65, 130, 131 });

    /// <summary>Skinny M over a B of 4 MiB and more: the full product walks B (CPU, bf16 with the pair kernel, fp32),
    /// the blocks of fewer than 2048 columns take the packed path, the 2100-column one walks again: every bit the
    /// same.</summary>
    [TestCase(typeof(float))]
    [TestCase(typeof(BFloat16))]
    public void SkinnyColumnBlocksEqualTheFullProductBitForBit(Type tin) =>
        Invoke(nameof(RunBlocks), tin, tin, 7L, 1031L, new long[] { 0, 1, 18, 64, 1100, 1107, 3207, 4111 });

    private void RunBlocks<TIn, TOut>(long m, long k, long[] cuts) where TIn : unmanaged where TOut : unmanaged
    {
        var rng = NewRandom();
        long n = cuts[^1];
        var (a, _) = RandomRounded<TIn>(rng, m * k);
        var (b, _) = RandomRounded<TIn>(rng, k * n);
        using var da = UploadT(a);
        using var db = UploadT(b);
        using var full = PoisonedT<float>(m * n);
        Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n), full.AsMatrix(m, n));
        Str.Synchronize();
        var want = full.ToArray(Str);
        using var blocks = PoisonedT<float>(m * n);
        for (int i = 0; i + 1 < cuts.Length; i++)
            Gemm.Multiply(Str, da.AsMatrix(m, k), db.AsMatrix(k, n).Columns(cuts[i], cuts[i + 1] - cuts[i]),
                blocks.AsMatrix(m, n).Columns(cuts[i], cuts[i + 1] - cuts[i]));
        Str.Synchronize();
        Reference.AssertBitwise(blocks.ToArray(Str), want, "column blocks vs full");
    }

    [Test]
    public void TheTypedGemmAllocatesNothingManaged()
    {
        // Hot paths allocate nothing managed: the description lives on the stack, the handles are ref-counted in place.
        using var a = PoisonedT<BFloat16>(64);
        using var c = PoisonedT<float>(64);
        using var bias = PoisonedT<float>(8);
        a.Fill(BFloat16.One, Str);
        var (av, cv) = (a.AsMatrix(8, 8), c.AsMatrix(8, 8));
        for (int i = 0; i < 3; i++) Gemm.Multiply(Str, av, av, cv, bias: bias, epilogue: Epilogue.Gelu); // warm-up (JIT, tiers)
        Str.Synchronize();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) Gemm.Multiply(Str, av, av, cv, 0.5f, 0f, true, false, bias, 0, Epilogue.Gelu);
        long after = GC.GetAllocatedBytesForCurrentThread();
        Str.Synchronize();
        Assert.That(after - before, Is.Zero, "managed bytes allocated by 20 typed GEMM calls");
    }

    // ------------------------------------------------------------------ edge values

    [Test]
    public void Fp16ResultsBeyondTheRangeRoundToInfinity()
    {
        // Rows of A · a column of ones, K = 3, every input exact in fp16; C in fp16. fp16's largest value is 65504 and its
        // ulp there 32: 65520 is the tie between 65504 and 65536 (= ∞), rounded to the even side, ∞; 65519 rounds down.
        float[][] rows =
        [
            [32768, 32752, 0],    // 65520: the tie -> +∞
            [32768, 32736, 15],   // 65519 -> 65504
            [32768, 32736, 16],   // 65520 -> +∞
            [-32768, -32752, 0],  // -65520 -> -∞
            [32768, 32768, 32768],// 98304 -> +∞
            [32768, 32736, 0],    // 65504, exact
        ];
        float[] expected = [float.PositiveInfinity, 65504, float.PositiveInfinity, float.NegativeInfinity, float.PositiveInfinity, 65504];
        var a = rows.SelectMany(r => r).Select(x => (Half)x).ToArray();
        Assert.That(a.Select(x => (float)x), Is.EqualTo(rows.SelectMany(r => r)), "inputs exact in fp16");
        var ones = Enumerable.Repeat((Half)1, 3).ToArray();
        using var da = UploadT(a);
        using var db = UploadT(ones);
        using var dc = PoisonedT<Half>(rows.Length);
        Gemm.Multiply(Str, da.AsMatrix(rows.Length, 3), db.AsMatrix(3, 1), dc.AsMatrix(rows.Length, 1));
        Str.Synchronize();
        Assert.That(dc.ToArray(Str).Select(x => (float)x), Is.EqualTo(expected));
    }

    [Test]
    public void Bf16ResultsBeyondMaxValueRoundToInfinity()
    {
        // MaxValue + 2^119 (half its ulp) is a tie whose even side is ∞; MaxValue + 2^118 rounds back to MaxValue. Both sums
        // are exact in fp32 (the accumulator), so only the final rounding decides.
        float max = BFloat16.MaxValue;
        float[][] rows = [[max, MathF.Pow(2, 119)], [max, MathF.Pow(2, 118)], [-max, -MathF.Pow(2, 119)], [max, 0]];
        float[] expected = [float.PositiveInfinity, max, float.NegativeInfinity, max];
        var a = rows.SelectMany(r => r).Select(x => (BFloat16)x).ToArray();
        using var da = UploadT(a);
        using var db = UploadT(new[] { BFloat16.One, BFloat16.One });
        using var dc = PoisonedT<BFloat16>(rows.Length);
        Gemm.Multiply(Str, da.AsMatrix(rows.Length, 2), db.AsMatrix(2, 1), dc.AsMatrix(rows.Length, 1));
        Str.Synchronize();
        Assert.That(dc.ToArray(Str).Select(x => (float)x), Is.EqualTo(expected));
    }

    [Test]
    public void InfinityAndNaNInputsPropagate()
    {
        // a row holding ∞ gives ∞ (times a positive column), ∞ · 0 gives NaN, a NaN gives NaN; the other rows stay exact.
        foreach (var run in new Action[] { RunSpecials<Half>, RunSpecials<BFloat16> })
            run();
    }

    private void RunSpecials<T>() where T : unmanaged
    {
        float[][] rows = [[float.PositiveInfinity, 1, 2], [1, float.NegativeInfinity, 0], [float.NaN, 1, 1], [1, 2, 3], [0, 0, float.PositiveInfinity]];
        float[] col = [2, 1, 0]; // the third row of B is 0: the last row is ∞ · 0
        var a = rows.SelectMany(r => r).Select(To<T>).ToArray();
        using var da = UploadT(a);
        using var db = UploadT(col.Select(To<T>).ToArray());
        using var dc = PoisonedT<float>(rows.Length);
        Gemm.Multiply(Str, da.AsMatrix(rows.Length, 3), db.AsMatrix(3, 1), dc.AsMatrix(rows.Length, 1));
        Str.Synchronize();
        var got = dc.ToArray(Str);
        Assert.That(got[0], Is.EqualTo(float.PositiveInfinity), typeof(T).Name);
        Assert.That(got[1], Is.EqualTo(float.NegativeInfinity), typeof(T).Name);
        Assert.That(float.IsNaN(got[2]), typeof(T).Name);
        Assert.That(got[3], Is.EqualTo(4f), typeof(T).Name); // 1·2 + 2·1 + 3·0
        Assert.That(float.IsNaN(got[4]), $"{typeof(T).Name}: ∞ · 0");
    }

    [Test]
    public void SubnormalInputsAndOutputs()
    {
        // fp16: 2^-20 (a subnormal: fp16's normals start at 2^-14) times 2 -> 2^-19 in f32; into an fp16 C, 2^-24 · 3 =
        // 3·2^-24 (subnormal, exact) and 2^-25 (half the smallest subnormal: a tie with 0, to even: 0).
        var ah = new[] { (Half)MathF.Pow(2, -20), (Half)MathF.Pow(2, -12), (Half)MathF.Pow(2, -13) };
        Assert.That(Half.IsSubnormal(ah[0]));
        using (var da = UploadT(ah))
        using (var db = UploadT(new[] { (Half)2f, (Half)MathF.Pow(2, -12), (Half)MathF.Pow(2, -12) }))
        using (var c32 = PoisonedT<float>(9))
        using (var c16 = PoisonedT<Half>(9))
        {
            // C (3 x 3) = a column times a row: (i, j) = a_i · b_j
            Gemm.Multiply(Str, da.AsMatrix(3, 1), db.AsMatrix(1, 3), c32.AsMatrix(3, 3));
            Gemm.Multiply(Str, da.AsMatrix(3, 1), db.AsMatrix(1, 3), c16.AsMatrix(3, 3));
            Str.Synchronize();
            var g = c32.ToArray(Str);
            Assert.That(g[0], Is.EqualTo(MathF.Pow(2, -19)), "fp16 subnormal input, f32 C");
            Assert.That(g[4], Is.EqualTo(MathF.Pow(2, -24)), "2^-12 · 2^-12 = 2^-24");
            var h = c16.ToArray(Str).Select(x => (double)x).ToArray();
            Assert.That(h[0], Is.EqualTo(Math.Pow(2, -19)), "fp16 subnormal in, fp16 subnormal out");
            Assert.That(h[4], Is.EqualTo(Math.Pow(2, -24)), "the smallest fp16 subnormal as a result");
            Assert.That(h[7], Is.EqualTo(0.0), "2^-13 · 2^-12 = 2^-25: a tie with 0, rounded to even (0)");
            Assert.That(h[1], Is.EqualTo(0.0), "2^-20 · 2^-12 = 2^-32, far below fp16's subnormals: 0");
        }

        // bf16: 2^-130 (subnormal) · 2^100 = 2^-30; with the avx512bf16 kernel a bf16 subnormal input reads as 0
        // (shardwise.h), elsewhere it is exact.
        var ab = new[] { (BFloat16)MathF.Pow(2, -130), (BFloat16)1f };
        Assert.That(BFloat16.IsSubnormal(ab[0]));
        using var dab = UploadT(ab);
        using var dbb = UploadT(new[] { (BFloat16)MathF.Pow(2, 100), (BFloat16)0f });
        using var cb = PoisonedT<float>(1);
        Gemm.Multiply(Str, dab.AsMatrix(1, 2), dbb.AsMatrix(2, 1), cb.AsMatrix(1, 1));
        Str.Synchronize();
        Assert.That(cb.ToArray(Str)[0], Is.EqualTo(FlushesBf16SubnormalInputs ? 0f : MathF.Pow(2, -30)));
        // a bf16 C among the subnormals: 2^-66 · 2^-66 = 2^-132 (a bf16 subnormal, exact) with normal inputs
        using var dsmall = UploadT(new[] { (BFloat16)MathF.Pow(2, -66) });
        using var csmall = PoisonedT<BFloat16>(1);
        Gemm.Multiply(Str, dsmall.AsMatrix(1, 1), dsmall.AsMatrix(1, 1), csmall.AsMatrix(1, 1));
        Str.Synchronize();
        // vdpbf16ps also flushes subnormal results to zero (FTZ, shardwise.h): the avx512bf16 kernel gives 0 here.
        Assert.That((double)csmall.ToArray(Str)[0], Is.EqualTo(FlushesBf16SubnormalInputs ? 0.0 : Math.Pow(2, -132)));
    }

    // ------------------------------------------------------------------ refusals

    [Test]
    public unsafe void NativeRefusesAnUnsupportedCombinationNamingIt()
    {
        // the managed API refuses it first; the C ABI refuses it too (defence in depth), with SW_ERR_UNSUPPORTED
        using var ab = Dev.Allocate<BFloat16>(16);
        using var ch = Dev.Allocate<Half>(16);
        var desc = new SwGemmDesc
        {
            Size = SwGemmDesc.CurrentSize, AType = SwDtype.BF16, BType = SwDtype.BF16, CType = SwDtype.F16, ComputeType = SwDtype.F32,
            M = 4, N = 4, K = 4, Alpha = 1, A = ab.Handle.DangerousGetHandle(), Lda = 4, B = ab.Handle.DangerousGetHandle(), Ldb = 4,
            C = ch.Handle.DangerousGetHandle(), Ldc = 4,
        };
        var status = Native.sw_gemm_ex(Str.Handle, &desc);
        Assert.That(status, Is.EqualTo(SwStatus.Unsupported));
        Assert.That(Marshal.PtrToStringUTF8(Native.sw_last_error()), Does.Contain("a = bf16, b = bf16, c = f16"));
        var e = Assert.Throws<NotSupportedException>(() => Gemm.Multiply(Str, ab.AsMatrix(4, 4), ab.AsMatrix(4, 4), ch.AsMatrix(4, 4)))!;
        Assert.That(e.Message, Does.Contain("a = bf16, b = bf16, c = f16"));
        // a desc of the wrong size is refused, not read past its end
        desc.CType = SwDtype.BF16;
        desc.C = ab.Handle.DangerousGetHandle();
        desc.Size = SwGemmDesc.CurrentSize - 4;
        Assert.That(Native.sw_gemm_ex(Str.Handle, &desc), Is.EqualTo(SwStatus.InvalidArgument));
        desc.Size = SwGemmDesc.CurrentSize - 8; // ABI 2..7's size (before k_leaf): still taken
        Assert.That(Native.sw_gemm_ex(Str.Handle, &desc), Is.EqualTo(SwStatus.Ok));
        desc.Size = SwGemmDesc.CurrentSize;
        Assert.That(Native.sw_gemm_ex(Str.Handle, &desc), Is.EqualTo(SwStatus.Ok), "the same desc with its size (the C size equals the managed one)");
        Str.Synchronize();
    }
}
