using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// <c>Shardwise.Bench shapes [--quick]</c>: issue 15's "must show" list in one run, fp32, on a CPU device of 2 threads
/// (OpenBLAS and oneDNN with as many), every comparison interleaved (<see cref="Interleaved"/>: the compared variants
/// in rotating order, many short rounds, the median of the per-round ratios with its interquartile range and
/// min..max). Each line gives the target and whether the median meets it; measurement is reported, never a test.
/// <list type="number">
/// <item>64³ and 128³ against OpenBLAS (its AVX-512 kernel: <see cref="OpenBlasCore"/>; the core it runs is printed).</item>
/// <item>The per-call cost of 1×64×64 through C#: <c>Gemm.Multiply</c> + <c>Synchronize</c>, and a p = 4
/// <c>ShardedGemm.Forward</c>, with <c>cblas_sgemm</c>'s per-call cost beside.</item>
/// <item>Skinny M (32×4096×11008, 8×4096×4096, 1×4096×4096) against oneDNN's <c>dnnl_sgemm</c>, OpenBLAS beside.</item>
/// <item>Sharded against unsharded at p = 2, 4, 8 for every main-job shape.</item>
/// <item>Large shapes (2048³, 4096×1024×4096, 512×4096×11008) against oneDNN, OpenBLAS beside.</item>
/// </list>
/// Ratios are the other's time / ours (above 1: Shardwise faster); for sharding, unsharded time / sharded time. Every
/// Shardwise result is checked (on sampled rows against float64; sharded results bit for bit against the unsharded
/// GEMM) so that a fast wrong answer cannot pass: a failed check gives exit code 1.
/// </summary>
internal static unsafe class ShapeComparison
{
    private sealed class Options
    {
        public bool Quick;
        public int Threads = BenchSettings.Threads;
        public string OpenBlasMode = "auto";
        public InterleaveSettings Settings = new(MinRounds: 11, MaxRounds: 41, BudgetMs: 1500, SliceMs: 2);
        public int? Rounds;
        public string? Only;
    }

    private static readonly string[] SectionNames =
        ["small shapes vs OpenBLAS", "per-call cost of 1×64×64", "skinny M vs oneDNN", "sharded vs unsharded", "large shapes vs oneDNN"];

    private static readonly (int M, int K, int N)[] SmallShapes = [(64, 64, 64), (128, 128, 128)];
    private static readonly (int M, int K, int N)[] SkinnyFull = [(32, 4096, 11008), (8, 4096, 4096), (1, 4096, 4096)];
    private static readonly (int M, int K, int N)[] SkinnyQuick = [(32, 1024, 2752), (8, 1024, 1024), (1, 1024, 1024)];
    private static readonly (int M, int K, int N)[] LargeFull = [(2048, 2048, 2048), (4096, 1024, 4096), (512, 4096, 11008)];
    private static readonly (int M, int K, int N)[] LargeQuick = [(512, 512, 512), (1024, 256, 1024), (128, 1024, 2752)];
    private static readonly int[] ShardRanks = [2, 4, 8];

    private const int Ours = 0;

    public static void PrintUsage(TextWriter w, string indent = "")
    {
        w.WriteLine(indent + "usage: Shardwise.Bench shapes [--quick] [--only SECTION] [--rounds N] [--threads N] [--openblas-core auto|own|env|NAME]");
        w.WriteLine(indent + "  --quick              smaller stand-ins for the large and skinny shapes, fewer rounds (~30 s)");
        w.WriteLine(indent + "  --rounds N           interleaved rounds per comparison (default: 11..41 filling ~1.5 s; --quick 7..15, ~0.3 s)");
        w.WriteLine(indent + "  --only SECTION       the sections whose name starts with SECTION: " + string.Join(", ", SectionNames));
        w.WriteLine(indent + "  --threads N          threads of Shardwise, OpenBLAS and oneDNN (default SHARDWISE_BENCH_THREADS or 2)");
        w.WriteLine(indent + "  --openblas-core M    auto (default: OpenBLAS's own kernel with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset for this");
        w.WriteLine(indent + "                       process, or SkylakeX where its own choice is not AVX-512), own, env (as given) or a core name");
    }

    public static int Run(string[] args)
    {
        Options o;
        try
        {
            o = Parse(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"shapes: {e.Message}");
            PrintUsage(Console.Error);
            return 2;
        }
        if (o.Quick && o.Rounds is null) o.Settings = new(MinRounds: 7, MaxRounds: 15, BudgetMs: 300, SliceMs: 1);
        if (o.Rounds is { } r) o.Settings = InterleaveSettings.Fixed(r, o.Settings.SliceMs);

        var total = Stopwatch.StartNew();
        // Before anything loads OpenBLAS.
        string blasCore = OpenBlasCore.Apply(o.OpenBlasMode);
        using var device = Device.Cpu(o.Threads);
        using var stream = device.CreateStream();
        int t = device.NumThreads;
        OpenBlas.openblas_set_num_threads(t);
        bool dnnl = OneDnn.IsAvailable;
        if (dnnl) OneDnn.SetThreads(t);

        Console.WriteLine($"Issue 15's comparisons (fp32, {t} threads, one run, interleaved){(o.Quick ? " — QUICK: smaller stand-ins for the large and skinny shapes" : "")}");
        Console.WriteLine($"  Shardwise : {device.Name}, kernel {device.Kernel}");
        Console.WriteLine($"  OpenBLAS  : {OpenBlas.Describe()}");
        Console.WriteLine($"              kernel: {blasCore}");
        Console.WriteLine($"  oneDNN    : {(dnnl ? OneDnn.Describe() + $", {t} threads" : "not found (libdnnl.so.2; ./build.sh deps installs libdnnl-dev): its lines say n/a")}");
        Console.WriteLine($"  processor : {Environment.ProcessorCount} logical processors; {ProcessorName()}");
        var s = o.Settings;
        Console.WriteLine($"  timing    : per comparison {s.MinRounds}..{s.MaxRounds} rounds (~{s.BudgetMs:0} ms), each round every variant once in rotating order,");
        Console.WriteLine($"              a call shorter than {s.SliceMs:0.#} ms repeated to about that; ratio = per round, the other's time / ours (above 1:");
        Console.WriteLine("              Shardwise faster; sharded: unsharded / sharded), median, IQR and [min..max] over the rounds");
        Console.WriteLine();

        var table = new TextTable(("case", false), ("comparison", false), ("ours", true), ("other", true), ("ratio", true), ("IQR", true),
            ("min..max", true), ("rounds", true), ("target", false), ("verdict", false));
        var failures = new List<string>();
        int met = 0, notMet = 0;
        void Line(string @case, string comparison, string ours, string other, Spread? ratio, string target, bool? ok)
        {
            if (ok == true) met++;
            else if (ok == false) notMet++;
            table.Add(@case, comparison, ours, other,
                ratio is { } q ? q.Median.ToString("0.00", CultureInfo.InvariantCulture) : "—",
                ratio is { } q2 ? q2.FormatIqr() : "—",
                ratio is { } q3 ? $"{q3.Min.ToString("0.00", CultureInfo.InvariantCulture)}..{q3.Max.ToString("0.00", CultureInfo.InvariantCulture)}" : "—",
                ratio is { } q4 ? q4.Count.ToString(CultureInfo.InvariantCulture) : "—",
                target, ok switch { true => "met", false => "NOT MET", null => "" });
        }

        void Section(string name, Action body)
        {
            if (o.Only is { } only && !name.StartsWith(only, StringComparison.Ordinal)) return;
            Console.Error.Write($"  {name} ...");
            var sw = Stopwatch.StartNew();
            try
            {
                body();
            }
            catch (Exception e) when (e is Bindings.ShardwiseException or InvalidOperationException or ArgumentException or DllNotFoundException)
            {
                failures.Add($"{name}: {e.GetType().Name}: {e.Message}");
            }
            Console.Error.WriteLine($" {sw.Elapsed.TotalSeconds:0.0} s");
        }

        Section(SectionNames[0], () =>
        {
            foreach (var shape in SmallShapes)
            {
                var r = Baselines(device, stream, shape, dnnl, s, failures);
                Line(Name(shape), "vs OpenBLAS", Ms(r, Ours), Ms(r, 1), r.Ratio(1, Ours), "≥ 0.80", r.Ratio(1, Ours).Median >= 0.8);
            }
        });

        Section(SectionNames[1], () => PerCall(device, stream, s, Line, failures));

        Section(SectionNames[2], () =>
        {
            foreach (var shape in o.Quick ? SkinnyQuick : SkinnyFull)
            {
                var r = Baselines(device, stream, shape, dnnl, s, failures);
                Line(Name(shape), "vs oneDNN dnnl_sgemm", Ms(r, Ours), dnnl ? Ms(r, 2) : "n/a", dnnl ? r.Ratio(2, Ours) : null, "≥ 1.00",
                    dnnl ? r.Ratio(2, Ours).Median >= 1.0 : null);
                Line(Name(shape), "vs OpenBLAS (beside)", Ms(r, Ours), Ms(r, 1), r.Ratio(1, Ours), "", null);
            }
        });

        Section(SectionNames[3], () =>
        {
            foreach (var shape in o.Quick ? MainJob.QuickShapes : MainJob.FullShapes)
                Sharded(device, stream, shape, s, Line, failures);
        });

        Section(SectionNames[4], () =>
        {
            foreach (var shape in o.Quick ? LargeQuick : LargeFull)
            {
                var r = Baselines(device, stream, shape, dnnl, s, failures);
                Line(Name(shape), "vs oneDNN dnnl_sgemm", Ms(r, Ours), dnnl ? Ms(r, 2) : "n/a", dnnl ? r.Ratio(2, Ours) : null, "≥ 0.95",
                    dnnl ? r.Ratio(2, Ours).Median >= 0.95 : null);
                Line(Name(shape), "vs OpenBLAS (beside)", Ms(r, Ours), Ms(r, 1), r.Ratio(1, Ours), "", null);
            }
        });
        Console.Error.WriteLine();

        Console.WriteLine(table);
        Console.WriteLine("  ours / other = median time per call (ms, or µs where marked); ratio = median over the rounds of the per-round");
        Console.WriteLine("  ratio (the µs/call lines: the time per call in µs itself); IQR = its interquartile range; verdict = whether the");
        Console.WriteLine("  median meets the issue's target on this machine.");
        Console.WriteLine();
        Console.WriteLine($"targets met: {met}, not met: {notMet}; total time {total.Elapsed.TotalSeconds:0.0} s");
        if (failures.Count == 0)
        {
            Console.WriteLine("shapes: every Shardwise result checked passed");
            return 0;
        }
        Console.WriteLine($"shapes: {failures.Count} check(s) FAILED:");
        foreach (var f in failures) Console.WriteLine($"  - {f}");
        return 1;
    }

    private static Options Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--quick": o.Quick = true; break;
                case "--rounds":
                    o.Rounds = int.TryParse(Value(), out int r) && r >= 1 ? r : throw new ArgumentException("--rounds expects a positive integer.");
                    break;
                case "--threads":
                    o.Threads = int.TryParse(Value(), out int t) && t >= 1 ? t : throw new ArgumentException("--threads expects a positive integer.");
                    break;
                case "--openblas-core":
                    o.OpenBlasMode = Value();
                    if (o.OpenBlasMode.Length == 0) throw new ArgumentException("--openblas-core expects auto, own, env or an OpenBLAS core name.");
                    break;
                case "--only":
                    o.Only = Value();
                    if (!SectionNames.Any(n => n.StartsWith(o.Only, StringComparison.Ordinal)))
                        throw new ArgumentException($"--only expects the start of a section name ({string.Join(", ", SectionNames)}), got '{o.Only}'.");
                    break;
                case "--help" or "-h":
                    PrintUsage(Console.Out);
                    Environment.Exit(0);
                    break;
                default: throw new ArgumentException($"unknown option '{args[i]}'.");
            }
        }
        return o;
    }

    private delegate void LineWriter(string @case, string comparison, string ours, string other, Spread? ratio, string target, bool? ok);

    /// <summary>
    /// Shardwise (<c>Gemm.Multiply</c> + synchronize), OpenBLAS <c>cblas_sgemm</c> and oneDNN <c>dnnl_sgemm</c> (variant
    /// 0, 1, 2) interleaved on one shape; Shardwise's result is checked against float64 on sampled rows.
    /// </summary>
    private static InterleavedResult Baselines(Device device, DeviceStream stream, (int M, int K, int N) shape, bool dnnl,
        InterleaveSettings settings, List<string> failures)
    {
        var (m, k, n) = shape;
        var a = TestData.Uniform((long)m * k, seed: 21);
        var b = TestData.Uniform((long)k * n, seed: 22);
        using var da = device.Allocate<float>(a.Length);
        using var db = device.Allocate<float>(b.Length);
        using var dc = device.Allocate<float>((long)m * n);
        da.CopyFrom(a, stream);
        db.CopyFrom(b, stream);
        var (av, bv, cv) = (da.AsMatrix(m, k), db.AsMatrix(k, n), dc.AsMatrix(m, n));
        // Each variant reads its own copy of A and B: with one shared copy, a variant run right after another that
        // read the same B found part of it still in the L3 cache (32 MiB here; up to half of a 64 MiB W), which favoured
        // OpenBLAS and oneDNN (they shared one) over Shardwise (its own device buffer) on the skinny shapes.
        float* ha = Host(a), hb = Host(b), ha2 = Host(a), hb2 = Host(b);
        float* hc1 = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * n * sizeof(float)), 64);
        float* hc2 = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * n * sizeof(float)), 64);
        try
        {
            dc.Fill(float.NaN, stream);
            var result = Interleaved.Measure(
            [
                () => { Gemm.Multiply(stream, av, bv, cv); stream.Synchronize(); },
                () => OpenBlas.Sgemm(m, n, k, ha, hb, hc1),
                dnnl ? () => OneDnn.Sgemm(m, n, k, ha2, hb2, hc2) : null,
            ], settings);
            Check($"{Name(shape)} Gemm.Multiply", dc.ToArray(stream), a, b, m, k, n, failures);
            return result;
        }
        finally
        {
            NativeMemory.AlignedFree(ha);
            NativeMemory.AlignedFree(hb);
            NativeMemory.AlignedFree(ha2);
            NativeMemory.AlignedFree(hb2);
            NativeMemory.AlignedFree(hc1);
            NativeMemory.AlignedFree(hc2);
        }
    }

    /// <summary>Per-call cost of 1×64×64: Gemm.Multiply + Synchronize, ShardedGemm.Forward at p = 4, cblas_sgemm.</summary>
    private static void PerCall(Device device, DeviceStream stream, InterleaveSettings settings, LineWriter line, List<string> failures)
    {
        const int m = 1, k = 64, n = 64;
        var x = TestData.Uniform(m * k, seed: 31);
        var w = TestData.Uniform(k * n, seed: 32);
        using var dx = device.Allocate<float>(x.Length);
        using var dw = device.Allocate<float>(w.Length);
        using var dy = device.Allocate<float>(m * n);
        using var dys = device.Allocate<float>(m * n);
        dx.CopyFrom(x, stream);
        dw.CopyFrom(w, stream);
        var (xv, wv, yv, ysv) = (dx.AsMatrix(m, k), dw.AsMatrix(k, n), dy.AsMatrix(m, n), dys.AsMatrix(m, n));
        using var group = ProcessGroup.CreateLocal(device, 4);
        using var sharded = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        float* hx = Host(x), hw = Host(w);
        float* hy = (float*)NativeMemory.AlignedAlloc(m * n * sizeof(float), 64);
        try
        {
            dy.Fill(float.NaN, stream);
            dys.Fill(float.NaN, stream);
            stream.Synchronize();
            var r = Interleaved.Measure(
            [
                () => { Gemm.Multiply(stream, xv, wv, yv); stream.Synchronize(); },
                () => sharded.Forward(xv, ysv),
                () => OpenBlas.Sgemm(m, n, k, hx, hw, hy),
            ], settings);
            var y = dy.ToArray(stream);
            Check("1×64×64 Gemm.Multiply", y, x, w, m, k, n, failures);
            if (!MemoryMarshal.Cast<float, int>(dys.ToArray(stream).AsSpan()).SequenceEqual(MemoryMarshal.Cast<float, int>(y.AsSpan())))
                failures.Add("1×64×64 ShardedGemm p=4: Y differs from the unsharded Gemm.Multiply");
            string blas = Us(r, 2);
            var gemm = r.Microseconds(0);
            var shard = r.Microseconds(1);
            // Absolute targets: the ratio columns of these lines give the per-call time itself in µs (median, IQR, min..max).
            line("1×64×64", "Gemm.Multiply + Synchronize: µs/call (other: cblas_sgemm)", Us(r, 0), blas, gemm, "≤ 2 µs", gemm.Median <= 2);
            line("1×64×64", "ShardedGemm.Forward p=4: µs/call (other: cblas_sgemm)", Us(r, 1), blas, shard, "≤ 4 µs", shard.Median <= 4);
        }
        finally
        {
            NativeMemory.AlignedFree(hx);
            NativeMemory.AlignedFree(hw);
            NativeMemory.AlignedFree(hy);
        }
    }

    /// <summary>The unsharded GEMM and ShardedGemm.Forward at p = 2, 4, 8 of one shape, all four interleaved.</summary>
    private static void Sharded(Device device, DeviceStream stream, (int M, int K, int N) shape, InterleaveSettings settings,
        LineWriter line, List<string> failures)
    {
        var (m, k, n) = shape;
        var x = TestData.Uniform((long)m * k, seed: 41);
        var w = TestData.Uniform((long)k * n, seed: 42);
        var source = WeightSource.FromArray(w, k, n);
        using var dx = device.Allocate<float>(x.Length);
        dx.CopyFrom(x, stream);
        var xv = dx.AsMatrix(m, k);
        using var wFull = source.LoadBlock(stream, 0, 0, k, n)!;
        var wv = wFull.AsMatrix(k, n);
        var ys = new DeviceBuffer<float>[1 + ShardRanks.Length];
        var groups = new ProcessGroup[ShardRanks.Length];
        var layers = new ShardedGemm[ShardRanks.Length];
        try
        {
            for (int i = 0; i < ys.Length; i++)
            {
                ys[i] = device.Allocate<float>((long)m * n);
                ys[i].Fill(float.NaN, stream);
            }
            for (int i = 0; i < ShardRanks.Length; i++)
            {
                groups[i] = ProcessGroup.CreateLocal(device, ShardRanks[i]);
                layers[i] = new ShardedGemm(groups[i], source);
            }
            stream.Synchronize();
            var yv = ys.Select(b => b.AsMatrix(m, n)).ToArray();
            var variants = new List<Action?> { () => { Gemm.Multiply(stream, xv, wv, yv[0]); stream.Synchronize(); } };
            for (int i = 0; i < layers.Length; i++)
            {
                var layer = layers[i];
                var y = yv[i + 1];
                variants.Add(() => layer.Forward(xv, y));
            }
            var r = Interleaved.Measure(variants, settings);
            var baseline = ys[0].ToArray(stream);
            for (int i = 0; i < ShardRanks.Length; i++)
            {
                int p = ShardRanks[i];
                if (!MemoryMarshal.Cast<float, int>(ys[i + 1].ToArray(stream).AsSpan()).SequenceEqual(MemoryMarshal.Cast<float, int>(baseline.AsSpan())))
                    failures.Add($"{Name(shape)} ShardedGemm p={p}: Y differs from the unsharded Gemm.Multiply");
                var ratio = r.Ratio(0, i + 1);
                line(Name(shape), $"sharded p={p} vs unsharded", Ms(r, i + 1), Ms(r, 0), ratio, "≥ 0.95", ratio.Median >= 0.95);
            }
        }
        finally
        {
            foreach (var l in layers) l?.Dispose();
            foreach (var g in groups) g?.Dispose();
            foreach (var b in ys) b?.Dispose();
        }
    }

    /// <summary>Shardwise's C against float64 on up to 4 sampled rows (tolerance 4·√K·2⁻²⁴ of Σ|a·b|, Reference.cs).</summary>
    private static void Check(string what, float[] c, float[] a, float[] b, int m, int k, int n, List<string> failures)
    {
        var reference = Reference.Compute(a, b, bias: null, m, k, n, fullLimit: 1L << 20, sampleRows: 4);
        double err = reference.MaxRelativeError(c);
        if (!(err <= reference.Tolerance)) failures.Add($"{what}: max rel err {err:0.00e+0} > tol {reference.Tolerance:0.00e+0}");
    }

    private static float* Host(float[] values)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(values.LongLength * sizeof(float)), 64);
        values.CopyTo(new Span<float>(p, values.Length));
        return p;
    }

    private static string Name((int M, int K, int N) s) => s.M == s.K && s.K == s.N ? $"{s.M}³" : $"{s.M}×{s.K}×{s.N}";

    private static string Ms(InterleavedResult r, int v)
    {
        if (!r.Ran(v)) return "n/a";
        double ms = r.Milliseconds(v).Median;
        return ms.ToString(ms < 0.1 ? "0.0000" : ms < 10 ? "0.000" : "0.0", CultureInfo.InvariantCulture);
    }

    private static string Us(InterleavedResult r, int v) =>
        r.Ran(v) ? r.Microseconds(v).Median.ToString("0.00", CultureInfo.InvariantCulture) + " µs" : "n/a";

    private static string ProcessorName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line is null ? "unknown" : line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException)
        {
            return "unknown";
        }
    }
}
