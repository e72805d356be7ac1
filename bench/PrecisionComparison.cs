using System.Globalization;
using System.Runtime.InteropServices;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// The main job's side-by-side GEMM comparison on the CPU, all contenders in ONE run, interleaved: each round times
/// every contender once (the order rotating from round to round, so none always runs first or after the same one),
/// and the ratios are formed per round, then summarised as the median with the spread (min..max) over the rounds; a
/// machine that is busier during one round slows every contender of that round alike.
/// <list type="bullet">
/// <item>bf16: Shardwise <c>C[f32] = A[bf16] · B[bf16]</c> (<see cref="Gemm.Multiply{TIn, TOut}"/>, the device's default
/// kernel) against oneDNN's bf16 matmul primitive (same bf16 values, f32 dst) and against Shardwise's fp32 GEMM of the
/// same shape.</item>
/// <item>fp32: Shardwise's fp32 GEMM against oneDNN's <c>dnnl_sgemm</c> and OpenBLAS <c>cblas_sgemm</c>.</item>
/// </list>
/// Ratios are speed-ups (the other's time / ours): above 1, Shardwise is faster. Shardwise's bf16 result is checked on
/// sampled rows against a float64 reference of the bf16 inputs (|err| ≤ 2·(K + 3)·2⁻²⁴·Σ|a·b|); a failure fails the
/// job. The targets (issue 13: bf16 ≥ 1.8× our fp32 at 2048³, ≥ 1.0× oneDNN bf16) are reported, not enforced.
/// Without libdnnl.so.2 the oneDNN columns say so and the rest still runs.
/// </summary>
internal static unsafe class PrecisionComparison
{
    private static readonly (int M, int K, int N)[] FullShapes = [(1024, 1024, 1024), (2048, 2048, 2048), (32, 4096, 11008), (512, 4096, 11008)];
    private static readonly (int M, int K, int N)[] QuickShapes = [(256, 256, 256), (32, 512, 1376)];

    private const int Bf16Ours = 0, Bf16OneDnn = 1, Fp32Ours = 2, Fp32OneDnn = 3, Fp32OpenBlas = 4;

    /// <summary>Runs the comparison on a CPU device of <paramref name="threads"/> threads (0: the default) with
    /// <paramref name="rounds"/> rounds; adds failed checks to <paramref name="failures"/>.</summary>
    public static void Run(bool quick, int threads, string? kernel, int rounds, double budgetMs, List<string> failures)
    {
        using var device = Device.Cpu(threads);
        if (kernel is not null) device.SetKernel(kernel);
        using var stream = device.CreateStream();
        int t = device.NumThreads;
        bool dnnl = OneDnn.IsAvailable;
        OpenBlas.openblas_set_num_threads(t);
        if (dnnl) OneDnn.SetThreads(t);

        Console.WriteLine("Side by side (one run, interleaved rounds): bf16 GEMM (bf16 A, B; f32 C; fp32 accumulation) and fp32 GEMM");
        Console.WriteLine($"  Shardwise : {device.Name}, kernel {device.Kernel}");
        Console.WriteLine($"  oneDNN    : {(dnnl ? OneDnn.Describe() + $", {t} threads" : "not found (libdnnl.so.2; ./build.sh deps installs libdnnl-dev): its columns are left empty")}");
        Console.WriteLine($"  OpenBLAS  : {OpenBlas.Describe()}");
        Console.WriteLine($"  timing    : {rounds} rounds; per round each contender once (repeated to ~{budgetMs / 8:0} ms when faster), the order rotating");

        var table = new TextTable(("shape (M×K×N)", false), ("bf16 ms", true), ("oneDNN bf16 ms", true), ("fp32 ms", true),
            ("dnnl_sgemm ms", true), ("OpenBLAS ms", true), ("bf16 vs our fp32", true), ("bf16 vs oneDNN bf16", true),
            ("fp32 vs dnnl_sgemm", true), ("fp32 vs OpenBLAS", true), ("bf16 check", false));
        foreach (var (m, k, n) in quick ? QuickShapes : FullShapes)
        {
            Console.Error.Write($"  {m}×{k}×{n} ...");
            try
            {
                RunShape(device, stream, m, k, n, dnnl, rounds, budgetMs, table, failures);
            }
            catch (Exception e) when (e is Bindings.ShardwiseException or InvalidOperationException or ArgumentException or NotSupportedException)
            {
                failures.Add($"side by side {m}×{k}×{n}: {e.GetType().Name}: {e.Message}");
            }
            Console.Error.WriteLine();
        }
        Console.WriteLine(table);
        Console.WriteLine("  ms = median time of one call; ratios = the other's time / ours per round (above 1: Shardwise faster), median [min..max]");
        Console.WriteLine("  over the rounds. Targets: bf16 vs our fp32 ≥ 1.8 at 2048³; bf16 vs oneDNN bf16 ≥ 1.0 on every shape above.");
        Console.WriteLine();
    }

    private static void RunShape(Device device, DeviceStream stream, int m, int k, int n, bool dnnl, int rounds, double budgetMs,
        TextTable table, List<string> failures)
    {
        var a32 = TestData.Uniform((long)m * k, seed: 11);
        var b32 = TestData.Uniform((long)k * n, seed: 12);
        var a16 = a32.Select(x => (BFloat16)x).ToArray();
        var b16 = b32.Select(x => (BFloat16)x).ToArray();

        using var da16 = device.Allocate<BFloat16>(a16.Length);
        using var db16 = device.Allocate<BFloat16>(b16.Length);
        using var da32 = device.Allocate<float>(a32.Length);
        using var db32 = device.Allocate<float>(b32.Length);
        using var dc = device.Allocate<float>((long)m * n);
        da16.CopyFrom(a16, stream);
        db16.CopyFrom(b16, stream);
        da32.CopyFrom(a32, stream);
        db32.CopyFrom(b32, stream);
        var (av16, bv16, av32, bv32, cv) = (da16.AsMatrix(m, k), db16.AsMatrix(k, n), da32.AsMatrix(m, k), db32.AsMatrix(k, n), dc.AsMatrix(m, n));

        // host copies for the baselines (64-byte aligned)
        ushort* ha16 = Host<ushort>(a16.Length), hb16 = Host<ushort>(b16.Length);
        float* ha32 = Host<float>(a32.Length), hb32 = Host<float>(b32.Length), hc = Host<float>((long)m * n);
        OneDnn.Matmul? matmul = null;
        try
        {
            MemoryMarshal.Cast<BFloat16, ushort>(a16).CopyTo(new Span<ushort>(ha16, a16.Length));
            MemoryMarshal.Cast<BFloat16, ushort>(b16).CopyTo(new Span<ushort>(hb16, b16.Length));
            a32.CopyTo(new Span<float>(ha32, a32.Length));
            b32.CopyTo(new Span<float>(hb32, b32.Length));
            if (dnnl) matmul = new OneDnn.Matmul(m, k, n, OneDnn.BF16, OneDnn.BF16, OneDnn.F32, ha16, hb16, hc);

            var run = new Action?[]
            {
                () => { Gemm.Multiply(stream, av16, bv16, cv); stream.Synchronize(); },
                matmul is null ? null : matmul.Execute,
                () => { Gemm.Multiply(stream, av32, bv32, cv); stream.Synchronize(); },
                dnnl ? () => OneDnn.Sgemm(m, n, k, ha32, hb32, hc) : null,
                () => OpenBlas.Sgemm(m, n, k, ha32, hb32, hc),
            };

            // The check of the bf16 result (before timing, on a fresh C).
            dc.Fill(float.NaN, stream);
            run[Bf16Ours]!();
            string check = CheckBf16(dc.ToArray(stream), a16, b16, m, k, n, out bool ok);
            if (!ok) failures.Add($"side by side {m}×{k}×{n}: Shardwise bf16 result {check}");
            if (matmul is not null)
            {
                matmul.Execute();
                var dn = new float[(long)m * n];
                new Span<float>(hc, dn.Length).CopyTo(dn);
                string dcheck = CheckBf16(dn, a16, b16, m, k, n, out bool dok);
                if (!dok) check += $"; oneDNN's {dcheck}";
            }

            // Warm-up, then rounds of every contender once in rotating order (a call shorter than budget/8 repeated
            // to about that long), the ratios formed per round (Support/Interleaved.cs).
            var result = Interleaved.Measure(run, InterleaveSettings.Fixed(rounds, budgetMs / 8) with { MaxReps = 1000 });

            string Ms(int c) => run[c] is null ? "—" : Format(result.Milliseconds(c).Median);
            string Ratio(int other, int ours) => run[other] is null ? "—" : result.Ratio(other, ours).Format();
            table.Add($"{m}×{k}×{n}", Ms(Bf16Ours), Ms(Bf16OneDnn), Ms(Fp32Ours), Ms(Fp32OneDnn), Ms(Fp32OpenBlas),
                Ratio(Fp32Ours, Bf16Ours), Ratio(Bf16OneDnn, Bf16Ours), Ratio(Fp32OneDnn, Fp32Ours), Ratio(Fp32OpenBlas, Fp32Ours), check);
        }
        finally
        {
            matmul?.Dispose();
            NativeMemory.AlignedFree(ha16);
            NativeMemory.AlignedFree(hb16);
            NativeMemory.AlignedFree(ha32);
            NativeMemory.AlignedFree(hb32);
            NativeMemory.AlignedFree(hc);
        }
    }

    private static T* Host<T>(long count) where T : unmanaged => (T*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(T)), 64);

    // Up to 4 rows (first, last and two in between) against float64 of the bf16 inputs:
    // |c - ref| <= 2·(K + 3)·2^-24·Σ|a·b| per element.
    private static string CheckBf16(float[] c, BFloat16[] a, BFloat16[] b, int m, int k, int n, out bool ok)
    {
        double worst = 0;
        var rows = new[] { 0, m / 3, 2 * m / 3, m - 1 }.Distinct();
        var sum = new double[n];
        var mag = new double[n];
        foreach (int i in rows)
        {
            Array.Clear(sum);
            Array.Clear(mag);
            for (int p = 0; p < k; p++)
            {
                double x = a[(long)i * k + p];
                long row = (long)p * n;
                for (int j = 0; j < n; j++)
                {
                    double prod = x * (float)b[row + j];
                    sum[j] += prod;
                    mag[j] += Math.Abs(prod);
                }
            }
            for (int j = 0; j < n; j++)
            {
                double tol = 2 * (k + 3) * Math.Pow(2, -24) * mag[j] + 1e-30;
                double e = Math.Abs(c[(long)i * n + j] - sum[j]);
                if (!(e <= tol)) { ok = false; return $"wrong at ({i},{j}): {c[(long)i * n + j]:R} vs {sum[j]:R} ± {tol:E2}"; }
                worst = Math.Max(worst, e / tol);
            }
        }
        ok = true;
        return string.Create(CultureInfo.InvariantCulture, $"ok (worst {worst:0.0e+0} of the bound)");
    }

    private static string Format(double ms) => ms.ToString(ms < 10 ? "0.000" : "0.0", CultureInfo.InvariantCulture);
}
