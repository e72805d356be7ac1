using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Base of every backend-parameterised suite: each suite class is declared with one [TestFixture(Backend.X)]
/// per backend, so the same tests run on the CPU and on CUDA. A backend without a device reports the whole
/// fixture as Ignored with the reason.
/// </summary>
public abstract class BackendTest(Backend backend)
{
    protected Backend Backend { get; } = backend;
    protected Device Dev { get; private set; } = null!;
    protected DeviceStream Str { get; private set; } = null!;

    [OneTimeSetUp]
    public void OpenDevice()
    {
        int count = Device.Count(Backend);
        if (count == 0)
            Assert.Ignore(Backend == Backend.Cuda
                ? "no CUDA device: this build of Shardwise has no CUDA backend or the machine has no GPU (sw_device_count = 0)"
                : $"no {Backend} device");
        Dev = Device.Open(Backend);
        Str = Dev.CreateStream();
    }

    [OneTimeTearDown]
    public void CloseDevice()
    {
        Str?.Dispose();
        Dev?.Dispose();
    }

    /// <summary>Fresh random data for every run; the seed is printed so a failure can be replayed: the environment
    /// variable SHARDWISE_TEST_SEED (an integer) makes every test's data come from that seed.</summary>
    protected Random NewRandom()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("SHARDWISE_TEST_SEED"), out int fixedSeed)
            ? fixedSeed
            : TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        return new Random(seed);
    }

    protected static float[] RandomArray(Random rng, long n, float scale = 1f)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    protected DeviceBuffer<float> Upload(float[] data, Device? device = null, DeviceStream? stream = null)
    {
        var b = (device ?? Dev).Allocate<float>(data.Length);
        b.CopyFrom(data, stream ?? Str);
        return b;
    }

    /// <summary>A buffer full of NaN: an element the code under test fails to write stays NaN and fails the check.</summary>
    protected DeviceBuffer<float> Poisoned(long n, Device? device = null, DeviceStream? stream = null)
    {
        var b = (device ?? Dev).Allocate<float>(n);
        b.Fill(float.NaN, stream ?? Str);
        return b;
    }

    /// <summary>The determinism contract of the GEMM: C = A·B computed by column blocks (<paramref name="colCuts"/>) and
    /// by row blocks (<paramref name="rowCuts"/>) equals <paramref name="full"/> bit for bit (on <see cref="Str"/>).</summary>
    protected void AssertBlocksEqualFull(DeviceBuffer<float> a, DeviceBuffer<float> b, float[] full, long m, long k, long n,
        long[] colCuts, long[] rowCuts)
    {
        using var blocks = Poisoned(m * n);
        for (int i = 0; i + 1 < colCuts.Length; i++)
            Gemm.Multiply(Str, a.AsMatrix(m, k), b.AsMatrix(k, n).Columns(colCuts[i], colCuts[i + 1] - colCuts[i]),
                blocks.AsMatrix(m, n).Columns(colCuts[i], colCuts[i + 1] - colCuts[i]));
        Str.Synchronize();
        Reference.AssertBitwise(blocks.ToArray(Str), full, "column blocks vs full");

        using var rows = Poisoned(m * n);
        for (int i = 0; i + 1 < rowCuts.Length; i++)
            Gemm.Multiply(Str, a.AsMatrix(m, k).RowRange(rowCuts[i], rowCuts[i + 1] - rowCuts[i]), b.AsMatrix(k, n),
                rows.AsMatrix(m, n).RowRange(rowCuts[i], rowCuts[i + 1] - rowCuts[i]));
        Str.Synchronize();
        Reference.AssertBitwise(rows.ToArray(Str), full, "row blocks vs full");
    }

    /// <summary>One GEMM of fresh random A and B with padded leading dimensions (lda, ldb, ldc larger than needed) into a
    /// poisoned C, against the float64 reference; the padding of C beyond n must stay poison.</summary>
    protected void AssertGemmMatchesReference(long m, long k, long n, bool transA, bool transB, string what)
    {
        var rng = NewRandom();
        long lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 1, ldc = n + 2;
        var a = RandomArray(rng, Math.Max(1, (transA ? k : m) * lda));
        var b = RandomArray(rng, Math.Max(1, (transB ? n : k) * ldb));
        using var da = Upload(a);
        using var db = Upload(b);
        using var dc = Poisoned(m * ldc);
        Gemm.Multiply(Str, da.AsMatrix(transA ? k : m, transA ? m : k, lda), db.AsMatrix(transB ? n : k, transB ? k : n, ldb),
            dc.AsMatrix(m, n, ldc), transA: transA, transB: transB);
        Str.Synchronize();
        var c = dc.ToArray(Str);
        var (want, mag) = Reference.Gemm(a, lda, transA, b, ldb, transB, m, n, k);
        Reference.AssertClose(c, ldc, want, mag, m, n, k, what);
        for (long i = 0; i < m; i++)
            for (long j = n; j < ldc; j++)
                Assert.That(float.IsNaN(c[i * ldc + j]), $"padding ({i},{j}) beyond n was written");
    }
}

/// <summary>float64 references.</summary>
public static class Reference
{
    /// <summary>Y = alpha·op(A)·op(B) + beta·C + bias, then GeLU; also returns Σ|terms| per element for the error bound.</summary>
    public static (double[] Value, double[] Magnitude) Gemm(
        float[] a, long lda, bool transA, float[] b, long ldb, bool transB, long m, long n, long k,
        float alpha = 1f, float beta = 0f, float[]? c = null, long ldc = 0, float[]? bias = null, bool gelu = false)
    {
        var value = new double[m * n];
        var mag = new double[m * n];
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
            {
                double s = 0, sa = 0;
                for (long p = 0; p < k; p++)
                {
                    double x = transA ? a[p * lda + i] : a[i * lda + p];
                    double y = transB ? b[j * ldb + p] : b[p * ldb + j];
                    s += x * y;
                    sa += Math.Abs(x * y);
                }
                double v = alpha * s, vm = Math.Abs(alpha) * sa;
                if (beta != 0 && c is not null)
                {
                    v += beta * (double)c[i * ldc + j];
                    vm += Math.Abs(beta * (double)c[i * ldc + j]);
                }
                if (bias is not null)
                {
                    v += bias[j];
                    vm += Math.Abs(bias[j]);
                }
                if (gelu) v = Gelu(v);
                value[i * n + j] = v;
                mag[i * n + j] = vm;
            }
        return (value, mag);
    }

    /// <summary>
    /// The FFN Y = GeLU(X·W1 + b1)·W2 + b2 (X: m × h, W1: h × f, W2: f × h) in float64, with a per-element bound for an
    /// fp32 computation that carries the first layer's bound through GeLU (|GeLU'| &lt; 1.13).
    /// </summary>
    public static (double[] Value, double[] Tolerance) FeedForward(float[] x, float[] w1, float[] b1, float[] w2, float[] b2, long m, long h, long f)
    {
        var (hid, hidMag) = Gemm(x, h, false, w1, f, false, m, f, h, bias: b1, gelu: true);
        var want = new double[m * h];
        var tol = new double[m * h];
        for (long i = 0; i < m; i++)
            for (long j = 0; j < h; j++)
            {
                double s = b2[j], mag = Math.Abs(b2[j]), carried = 0;
                for (long q = 0; q < f; q++)
                {
                    double hv = hid[i * f + q];
                    s += hv * w2[q * h + j];
                    mag += Math.Abs(hv * w2[q * h + j]);
                    carried += 1.2 * (Bound(hidMag[i * f + q], h) + 2e-7 * Math.Abs(hv)) * Math.Abs(w2[q * h + j]);
                }
                want[i * h + j] = s;
                tol[i * h + j] = Bound(mag, f) + carried + 2e-7 * Math.Abs(s);
            }
        return (want, tol);
    }

    public static double Gelu(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    /// <summary>Error bound of an fp32 dot product of length k with Σ|terms| = magnitude (generous, ~8 sigma).</summary>
    public static double Bound(double magnitude, long k) => (2 * Math.Sqrt(k + 1) + 8) * 4 * 5.96e-8 * magnitude + 1e-30;

    /// <summary>Asserts |actual - expected| ≤ bound element-wise over an m × n result stored with leading dimension ld.</summary>
    public static void AssertClose(float[] actual, long ld, double[] expected, double[] magnitude, long m, long n, long k, string what)
    {
        int bad = 0;
        string first = "";
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
            {
                double got = actual[i * ld + j], want = expected[i * n + j];
                double tol = Bound(magnitude[i * n + j], k) + 2e-7 * Math.Abs(want);
                if (!(Math.Abs(got - want) <= tol))
                {
                    if (bad++ == 0) first = $"({i},{j}): got {got:R}, expected {want:R} ± {tol:E2}";
                }
            }
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {m * n} elements wrong; first {first}");
    }

    /// <summary>Asserts two arrays are identical bit for bit (NaN payloads included).</summary>
    public static void AssertBitwise(float[] actual, float[] expected, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        for (int i = 0; i < actual.Length; i++)
            if (BitConverter.SingleToInt32Bits(actual[i]) != BitConverter.SingleToInt32Bits(expected[i]))
                Assert.Fail($"{what}: element {i} differs: {actual[i]:R} vs {expected[i]:R}");
    }
}
