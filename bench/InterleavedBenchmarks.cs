using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Perfolizer.Horology;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// The per-round times of the interleaved suites, recorded by the benchmark (one entry per operation BenchmarkDotNet
/// invokes: one interleaved round) and read by <see cref="InterleavedRatioColumn"/>. The suites run in process
/// (<see cref="InterleavedBenchConfig"/>), so this static store is the one the summary's columns read.
/// </summary>
public static class RoundRecorder
{
    private static readonly ConcurrentDictionary<string, List<double[]>> s_rounds = new();

    /// <summary>The key of a suite's case: the class name and the shape.</summary>
    public static string Key(Type suite, object? shape) => $"{suite.Name}/{shape}";

    /// <summary>Forgets the rounds of <paramref name="key"/> (at the start of a case).</summary>
    public static void Reset(string key) => s_rounds[key] = [];

    /// <summary>Adds one round's per-call times (seconds, one per variant).</summary>
    public static void Add(string key, double[] round)
    {
        var list = s_rounds.GetOrAdd(key, _ => []);
        lock (list) list.Add(round);
    }

    /// <summary>The recorded rounds of <paramref name="key"/> as [round, variant] (null when none).</summary>
    public static double[,]? Get(string key)
    {
        if (!s_rounds.TryGetValue(key, out var list)) return null;
        lock (list)
        {
            if (list.Count == 0) return null;
            var times = new double[list.Count, list[0].Length];
            for (int r = 0; r < list.Count; r++)
                for (int v = 0; v < list[r].Length; v++)
                    times[r, v] = list[r][v];
            return times;
        }
    }
}

/// <summary>
/// A summary column of an interleaved suite: over the case's recorded rounds, the median of the per-round ratio
/// time[<see cref="Numerator"/>] / time[<see cref="Denominator"/>] with min..max (and, in <see cref="Spread"/> mode,
/// the interquartile range), or the number of rounds.
/// </summary>
public sealed class InterleavedRatioColumn(string name, int numerator, int denominator, string legend, bool iqr = false) : IColumn
{
    /// <summary>The rounds recorded for a case.</summary>
    public static readonly InterleavedRatioColumn Rounds = new("Rounds", -1, -1, "Interleaved rounds recorded (each: every variant once, rotating order)");

    public int Numerator => numerator;
    public int Denominator => denominator;

    public string Id => $"Interleaved:{name}:{numerator}/{denominator}:{iqr}";
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 10 + Math.Max(numerator, 0) * 10 + (iqr ? 1 : 0);
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => legend;

    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, summary.Style);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var times = RoundRecorder.Get(RoundRecorder.Key(benchmarkCase.Descriptor.Type, benchmarkCase.Parameters["Shape"]));
        if (times is null) return "-";
        if (numerator < 0) return times.GetLength(0).ToString(CultureInfo.InvariantCulture);
        var s = RoundStats.Ratio(times, numerator, denominator);
        if (s.Count == 0) return "n/a";
        return iqr ? s.FormatIqr() : s.Format();
    }
}

/// <summary>
/// The job of the interleaved suites: BenchmarkDotNet's in-process toolchain (the per-round times stay in this process
/// for the columns), 1 launch, 2 warm-up and 8 measured iterations of ~200 ms. The thread count is passed explicitly
/// (<c>Device.Cpu</c>, <c>openblas_set_num_threads</c>, <c>omp_set_num_threads</c> before each round).
/// </summary>
public class InterleavedBenchConfig : ManualConfig
{
    public InterleavedBenchConfig()
    {
        AddJob(Job.Default
            .WithId("InterleavedInProcess")
            .WithToolchain(InProcessEmitToolchain.Instance)
            .WithLaunchCount(1)
            .WithWarmupCount(2)
            .WithIterationCount(8)
            .WithIterationTime(TimeInterval.FromMilliseconds(200)));
        AddColumn(InterleavedRatioColumn.Rounds);
        AddExporter(SvgChartExporter.Default);
        WithOrderer(new BenchmarkDotNet.Order.DefaultOrderer(BenchmarkDotNet.Order.SummaryOrderPolicy.Declared));
        WithSummaryStyle(SummaryStyle.Default.WithMaxParameterColumnWidth(30));
    }
}

/// <summary>Columns of <see cref="InterleavedGemmBenchmarks"/>: Shardwise (0) against OpenBLAS (1) and oneDNN (2).</summary>
public sealed class InterleavedGemmConfig : InterleavedBenchConfig
{
    public InterleavedGemmConfig() => AddColumn(
        new InterleavedRatioColumn("vs OpenBLAS", 1, 0, "Per round: OpenBLAS time / Shardwise time (above 1: Shardwise faster); median [min..max] over the rounds"),
        new InterleavedRatioColumn("IQR OpenBLAS", 1, 0, "Interquartile range of the per-round OpenBLAS / Shardwise ratio", iqr: true),
        new InterleavedRatioColumn("vs oneDNN", 2, 0, "Per round: oneDNN dnnl_sgemm time / Shardwise time (above 1: Shardwise faster); median [min..max]"),
        new InterleavedRatioColumn("IQR oneDNN", 2, 0, "Interquartile range of the per-round oneDNN / Shardwise ratio", iqr: true));
}

/// <summary>Columns of <see cref="InterleavedShardedGemmBenchmarks"/>: unsharded (0) / sharded p = 2, 4, 8 (1, 2, 3).</summary>
public sealed class InterleavedShardedConfig : InterleavedBenchConfig
{
    public InterleavedShardedConfig() => AddColumn(
        new InterleavedRatioColumn("p=2", 0, 1, "Per round: unsharded time / ShardedGemm p=2 time (above 1: sharded faster); median [min..max]"),
        new InterleavedRatioColumn("p=4", 0, 2, "Per round: unsharded time / ShardedGemm p=4 time; median [min..max]"),
        new InterleavedRatioColumn("p=8", 0, 3, "Per round: unsharded time / ShardedGemm p=8 time; median [min..max]"));
}

/// <summary>
/// BenchmarkDotNet runs benchmarks one after another; these suites interleave instead. One benchmark per shape whose
/// operation is one interleaved round (<see cref="Interleaved.RunRound"/>: every variant once, the order rotating from
/// round to round, a call shorter than 2 ms repeated to about that); each round's per-call times are recorded
/// (<see cref="RoundRecorder"/>) and the custom columns give the median of the per-round ratios with its spread. The
/// Mean column is the time of one whole round. Every round BenchmarkDotNet runs counts (pilot, warm-up and measured
/// iterations alike: a ratio within a round does not depend on the stage; the setup warms every variant up first).
/// </summary>
public abstract class InterleavedSuite
{
    private Action?[] _variants = [];
    private int[] _reps = [];
    private int _round;
    private string _key = "";

    /// <summary>Installs the variants of this case, warms them up and calibrates their repetitions.</summary>
    protected void Start(object shape, Action?[] variants)
    {
        // The in-process toolchain runs an emitted subclass of the benchmark class: key by the declared class.
        var type = GetType();
        while (type.BaseType is { } b && b != typeof(InterleavedSuite)) type = b;
        _key = RoundRecorder.Key(type, shape);
        RoundRecorder.Reset(_key);
        _variants = variants;
        _reps = Interleaved.Calibrate(variants, new InterleaveSettings(SliceMs: 2));
        _round = 0;
    }

    /// <summary>One interleaved round (the benchmark's operation).</summary>
    protected void RecordRound()
    {
        if (OneDnn.IsAvailable) OneDnn.SetThreads(BenchSettings.Threads); // OpenMP's count is per calling thread
        RoundRecorder.Add(_key, Interleaved.RunRound(_variants, _reps, _round++));
    }
}

/// <summary>
/// Shardwise's fp32 GEMM (<c>Gemm.Multiply</c> + synchronize; variant 0) against OpenBLAS <c>cblas_sgemm</c> (1, its
/// AVX-512 kernel: <see cref="OpenBlasCore"/> "auto") and oneDNN's <c>dnnl_sgemm</c> (2), interleaved, on issue 15's shapes.
/// </summary>
[Config(typeof(InterleavedGemmConfig))]
public unsafe class InterleavedGemmBenchmarks : InterleavedSuite
{
    private Device? _device;
    private DeviceStream? _stream;
    private DeviceBuffer<float>? _a, _b, _c;
    private float* _ha, _hb, _hc;

    /// <summary>Small (per-call cost), skinny M (decode, small batch) and large shapes.</summary>
    public static IEnumerable<GemmShape> Shapes =>
    [
        new(64, 64, 64),
        new(128, 128, 128),
        new(256, 256, 256),
        new(1, 4096, 4096),
        new(8, 4096, 4096),
        new(32, 4096, 11008),
        new(512, 512, 512),
        new(2048, 2048, 2048),
        new(4096, 1024, 4096),
        new(512, 4096, 11008),
    ];

    /// <summary>M×K×N.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        Console.WriteLine($"// OpenBLAS kernel: {OpenBlasCore.Apply("auto")}");
        var (m, k, n) = (Shape.M, Shape.K, Shape.N);
        var a = TestData.Uniform((long)m * k, seed: 1);
        var b = TestData.Uniform((long)k * n, seed: 2);
        _device = Device.Cpu(BenchSettings.Threads);
        _stream = _device.CreateStream();
        _a = _device.Allocate<float>(a.Length);
        _b = _device.Allocate<float>(b.Length);
        _c = _device.Allocate<float>((long)m * n);
        _a.CopyFrom(a, _stream);
        _b.CopyFrom(b, _stream);
        _ha = Host(a);
        _hb = Host(b);
        _hc = (float*)NativeMemory.AlignedAlloc((nuint)((long)m * n * sizeof(float)), 64);
        OpenBlas.openblas_set_num_threads(BenchSettings.Threads);
        bool dnnl = OneDnn.IsAvailable;
        if (dnnl) OneDnn.SetThreads(BenchSettings.Threads);
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads; OpenBLAS: {OpenBlas.Describe()}; "
            + (dnnl ? OneDnn.Describe() : "oneDNN not found: its columns say n/a"));
        var (av, bv, cv, stream) = (_a.AsMatrix(m, k), _b.AsMatrix(k, n), _c.AsMatrix(m, n), _stream);
        float* ha = _ha, hb = _hb, hc = _hc;
        Start(Shape,
        [
            () => { Gemm.Multiply(stream, av, bv, cv); stream.Synchronize(); },
            () => OpenBlas.Sgemm(m, n, k, ha, hb, hc),
            dnnl ? () => OneDnn.Sgemm(m, n, k, ha, hb, hc) : null,
        ]);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _c?.Dispose();
        _b?.Dispose();
        _a?.Dispose();
        _stream?.Dispose();
        _device?.Dispose();
        (_c, _b, _a, _stream, _device) = (null, null, null, null, null);
        NativeMemory.AlignedFree(_ha);
        NativeMemory.AlignedFree(_hb);
        NativeMemory.AlignedFree(_hc);
        _ha = _hb = _hc = null;
    }

    [Benchmark(Description = "round: Shardwise, OpenBLAS, oneDNN")]
    public void InterleavedRound() => RecordRound();

    private static float* Host(float[] values)
    {
        var p = (float*)NativeMemory.AlignedAlloc((nuint)(values.LongLength * sizeof(float)), 64);
        values.CopyTo(new Span<float>(p, values.Length));
        return p;
    }
}

/// <summary>
/// The unsharded <c>Gemm.Multiply</c> (+ synchronize; variant 0) and <c>ShardedGemm.Forward</c> at p = 2, 4, 8 (1, 2, 3)
/// of the same shape, interleaved, on the main job's shapes.
/// </summary>
[Config(typeof(InterleavedShardedConfig))]
public class InterleavedShardedGemmBenchmarks : InterleavedSuite
{
    private static readonly int[] s_ranks = [2, 4, 8];
    private Device? _device;
    private DeviceStream? _stream;
    private readonly List<IDisposable> _owned = [];

    /// <summary>The main job's full shapes.</summary>
    public static IEnumerable<GemmShape> Shapes => MainJob.FullShapes.Select(s => new GemmShape(s.M, s.K, s.N));

    /// <summary>M×K×N of the whole (unsharded) product.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var (m, k, n) = (Shape.M, Shape.K, Shape.N);
        var w = TestData.Uniform((long)k * n, seed: 2);
        var source = WeightSource.FromArray(w, k, n);
        _device = Device.Cpu(BenchSettings.Threads);
        var stream = _stream = _device.CreateStream();
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads");
        var x = Own(_device.Allocate<float>((long)m * k));
        x.CopyFrom(TestData.Uniform((long)m * k, seed: 1), stream);
        var xv = x.AsMatrix(m, k);
        var wv = Own(source.LoadBlock(stream, 0, 0, k, n)!).AsMatrix(k, n);
        var y0 = Own(_device.Allocate<float>((long)m * n)).AsMatrix(m, n);
        var variants = new List<Action?> { () => { Gemm.Multiply(stream, xv, wv, y0); stream.Synchronize(); } };
        foreach (int p in s_ranks)
        {
            var group = Own(ProcessGroup.CreateLocal(_device, p));
            var layer = Own(new ShardedGemm(group, source));
            var y = Own(_device.Allocate<float>((long)m * n)).AsMatrix(m, n);
            variants.Add(() => layer.Forward(xv, y));
        }
        Start(Shape, [.. variants]);
    }

    private T Own<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        return item;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
        _stream?.Dispose();
        _device?.Dispose();
        (_stream, _device) = (null, null);
    }

    [Benchmark(Description = "round: unsharded, p=2, p=4, p=8")]
    public void InterleavedRound() => RecordRound();
}

/// <summary>Columns of <see cref="InterleavedTransformerBlockBenchmarks"/>: unsharded (0) / p = 2 (1), p = 4 (2).</summary>
public sealed class InterleavedBlockConfig : InterleavedBenchConfig
{
    public InterleavedBlockConfig() => AddColumn(
        new InterleavedRatioColumn("p=2", 0, 1, "Per round: unsharded block time / p=2 time (above 1: sharded faster); median [min..max]"),
        new InterleavedRatioColumn("p=4", 0, 2, "Per round: unsharded block time / p=4 time; median [min..max]"));
}

/// <summary>
/// The transformer block's inference forward (pre-norm LayerNorm, causal attention, GeLU FFN) unsharded (p = 1; variant
/// 0) and on 2 and 4 virtual ranks of the CPU device, interleaved (<see cref="TransformerBlockBench"/>): issue 17's
/// 2048 tokens (4 sequences of 512), hidden 1024, 16 heads, FFN 4096, and a small case.
/// </summary>
[Config(typeof(InterleavedBlockConfig))]
public class InterleavedTransformerBlockBenchmarks : InterleavedSuite
{
    private Device? _device;
    private TransformerBlockBench? _bench;

    /// <summary>tokens × hidden × heads (sequence length 512, or 128 for the small case; FFN 4 × hidden).</summary>
    public static IEnumerable<string> Shapes => ["256x256x4", "2048x1024x16"];

    /// <summary>The case.</summary>
    [ParamsSource(nameof(Shapes))]
    public string Shape { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        var parts = Shape.Split('x').Select(long.Parse).ToArray();
        long tokens = parts[0], hidden = parts[1];
        int heads = (int)parts[2];
        _device = Device.Cpu(BenchSettings.Threads);
        Console.WriteLine($"// Shardwise: {_device.Name}, kernel {_device.Kernel}, {_device.NumThreads} threads");
        _bench = new TransformerBlockBench(_device, new TransformerBlockOptions(hidden, heads, heads, 4 * hidden), tokens,
            tokens >= 2048 ? 512 : 128, [1, 2, 4]);
        Start(Shape, [.. _bench.Calls]);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _bench?.Dispose();
        _device?.Dispose();
        (_bench, _device) = (null, null);
    }

    [Benchmark(Description = "round: unsharded, p=2, p=4")]
    public void InterleavedRound() => RecordRound();
}

/// <summary>Columns of <see cref="InterleavedTpInvariantBenchmarks"/>: default order (0) / tree leaf 512 (1), 256 (2).</summary>
public sealed class InterleavedTpInvariantConfig : InterleavedBenchConfig
{
    public InterleavedTpInvariantConfig() => AddColumn(
        new InterleavedRatioColumn("leaf 512", 0, 1, "Per round: default-order time / TP-invariant (tree, leaf 512) time (above 1: the tree is faster); median [min..max]"),
        new InterleavedRatioColumn("IQR 512", 0, 1, "Interquartile range of the per-round ratio, leaf 512", iqr: true),
        new InterleavedRatioColumn("leaf 256", 0, 2, "Per round: default-order time / TP-invariant (tree, leaf 256) time; median [min..max]"));
}

/// <summary>
/// The cost of TP-invariant numerics (issue 19): the fp32 GEMM on a device in the default k order (variant 0) and on
/// devices with <see cref="Device.GemmReductionLeaf"/> = 512 (1) and 256 (2), interleaved (<see cref="TpInvariantBench"/>).
/// </summary>
[Config(typeof(InterleavedTpInvariantConfig))]
public class InterleavedTpInvariantBenchmarks : InterleavedSuite
{
    private TpInvariantBench? _bench;

    /// <summary>M×K×N: the issue's two shapes and a wide one.</summary>
    public static IEnumerable<GemmShape> Shapes => [new(2048, 2048, 2048), new(512, 4096, 11008), new(4096, 1024, 4096)];

    /// <summary>M×K×N.</summary>
    [ParamsSource(nameof(Shapes))]
    public GemmShape Shape { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _bench = TpInvariantBench.Gemm(BenchSettings.Threads, Shape.M, Shape.K, Shape.N);
        Start(Shape, [.. _bench.Calls]);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _bench?.Dispose();
        _bench = null;
    }

    [Benchmark(Description = "round: default, leaf 512, leaf 256")]
    public void InterleavedRound() => RecordRound();
}
