using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Filters;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Perfolizer.Horology;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>Settings shared by every benchmark (and passed on to the benchmark processes).</summary>
public static class BenchSettings
{
    /// <summary>
    /// Compute threads of the Shardwise CPU device, of OpenBLAS and of oneDNN: <c>SHARDWISE_BENCH_THREADS</c>, else 2. The
    /// job sets <c>SHARDWISE_NUM_THREADS</c>, <c>OPENBLAS_NUM_THREADS</c> and <c>OMP_NUM_THREADS</c> to this value in the benchmark processes, and the
    /// benchmarks also pass it explicitly (<c>Device.Cpu(Threads)</c>, <c>openblas_set_num_threads(Threads)</c>).
    /// </summary>
    public static int Threads { get; } =
        int.TryParse(Environment.GetEnvironmentVariable("SHARDWISE_BENCH_THREADS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int t) && t > 0
            ? t
            : 2;
}

/// <summary>
/// The job of every benchmark class: short enough for a 2-core machine (the whole <c>--filter '*'</c> run takes
/// minutes, not hours) yet with enough iterations for a median and a confidence interval. Benchmarks run out of
/// process (the default CsProj toolchain): the generated project references this one, so libshardwise is copied
/// into its output by Shardwise.Bindings, found through <c>SHARDWISE_NATIVE_DIR</c> at build time.
/// </summary>
public class BenchConfig : ManualConfig
{
    public BenchConfig()
    {
        string threads = BenchSettings.Threads.ToString(CultureInfo.InvariantCulture);
        AddJob(Job.Default
            .WithId("ShortCpu")
            .WithLaunchCount(1)
            .WithWarmupCount(2)
            .WithIterationCount(8)
            // An iteration runs the operation for ~200 ms (a single invocation when one call takes longer).
            .WithIterationTime(TimeInterval.FromMilliseconds(200))
            .WithEnvironmentVariables(
                new EnvironmentVariable("SHARDWISE_NUM_THREADS", threads),
                new EnvironmentVariable("OPENBLAS_NUM_THREADS", threads),
                new EnvironmentVariable("OMP_NUM_THREADS", threads), // oneDNN (Debian's build runs on OpenMP)
                new EnvironmentVariable("SHARDWISE_BENCH_THREADS", threads)));
        AddDiagnoser(MemoryDiagnoser.Default);
        AddColumn(StatisticColumn.Median);
        AddExporter(SvgChartExporter.Default);
        AddFilter(new SimpleFilter(KernelFilter.IsRunnable));
        // Declared order (shape by shape, methods in source order) reads better than BenchmarkDotNet's default.
        WithOrderer(new BenchmarkDotNet.Order.DefaultOrderer(BenchmarkDotNet.Order.SummaryOrderPolicy.Declared));
        WithSummaryStyle(SummaryStyle.Default.WithMaxParameterColumnWidth(30));
    }
}

/// <summary><see cref="BenchConfig"/> plus the GFLOP/s column (GEMM benchmarks).</summary>
public sealed class GemmBenchConfig : BenchConfig
{
    public GemmBenchConfig() => AddColumn(GflopsColumn.Instance);
}

/// <summary><see cref="BenchConfig"/> plus nccl-tests' algbw and busbw columns (collective benchmarks).</summary>
public sealed class CollectiveBenchConfig : BenchConfig
{
    public CollectiveBenchConfig() => AddColumn(BandwidthColumn.Algorithm, BandwidthColumn.Bus);
}

/// <summary>
/// A GEMM shape, <c>C[M,N] = A[M,K] · B[K,N]</c>, used as a benchmark parameter (printed MxKxN). Comparable (by M, then
/// K, then N) so that BenchmarkDotNet orders the rows numerically rather than by the printed string.
/// </summary>
public readonly record struct GemmShape(int M, int K, int N) : IComparable<GemmShape>, IComparable
{
    /// <summary>Floating-point operations of one GEMM: 2·M·N·K.</summary>
    public double Flops => 2.0 * M * N * K;

    /// <inheritdoc />
    public int CompareTo(GemmShape other) =>
        M != other.M ? M.CompareTo(other.M) : K != other.K ? K.CompareTo(other.K) : N.CompareTo(other.N);

    /// <inheritdoc />
    public int CompareTo(object? obj) => obj is GemmShape other ? CompareTo(other) : 1;

    /// <inheritdoc />
    public override string ToString() => $"{M}x{K}x{N}";
}

/// <summary>
/// Marks a benchmark method that runs a given Shardwise CPU micro-kernel; <see cref="KernelFilter"/> drops it on a
/// processor (or build) that does not support the kernel instead of letting it fail.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class CpuKernelAttribute(string name) : Attribute
{
    /// <summary>The kernel name as <see cref="Device.SetKernel"/> takes it.</summary>
    public string Name { get; } = name;
}

/// <summary>Keeps benchmarks whose <see cref="CpuKernelAttribute"/> kernel this processor supports.</summary>
public static class KernelFilter
{
    private static readonly Dictionary<string, bool> s_supported = [];

    /// <summary>True unless the benchmark needs a kernel this machine lacks.</summary>
    public static bool IsRunnable(BenchmarkCase benchmarkCase)
    {
        var kernel = benchmarkCase.Descriptor.WorkloadMethod.GetCustomAttributes(typeof(CpuKernelAttribute), false)
            .Cast<CpuKernelAttribute>().FirstOrDefault();
        return kernel is null || IsSupported(kernel.Name);
    }

    /// <summary>Asks the native core whether <paramref name="kernel"/> can run here (cached).</summary>
    public static bool IsSupported(string kernel)
    {
        lock (s_supported)
        {
            if (!s_supported.TryGetValue(kernel, out bool ok))
            {
                try
                {
                    using var device = Device.Cpu(1);
                    device.SetKernel(kernel);
                    ok = true;
                }
                catch (ShardwiseUnsupportedException)
                {
                    ok = false;
                }
                if (!ok) Console.WriteLine($"// Shardwise kernel '{kernel}' is not supported on this processor: its benchmarks are skipped.");
                s_supported[kernel] = ok;
            }
            return ok;
        }
    }
}

/// <summary>
/// GFLOP/s = 2·M·N·K / mean time. M, N, K come from the benchmark's parameters: a <see cref="GemmShape"/> parameter,
/// or int parameters named M, N and K.
/// </summary>
public sealed class GflopsColumn : IColumn
{
    /// <summary>The column.</summary>
    public static readonly GflopsColumn Instance = new();

    public string Id => nameof(GflopsColumn);
    public string ColumnName => "GFLOP/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Throughput: 2·M·N·K floating-point operations / mean time, in 10^9 per second";

    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, summary.Style);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null || stats.Mean <= 0 || !TryGetFlops(benchmarkCase, out double flops)) return "-";
        return (flops / stats.Mean).ToString("0.0", style.CultureInfo); // flop per ns = GFLOP/s
    }

    /// <summary>2·M·N·K from the case's parameters.</summary>
    public static bool TryGetFlops(BenchmarkCase benchmarkCase, out double flops)
    {
        long? m = null, n = null, k = null;
        foreach (var p in benchmarkCase.Parameters.Items)
        {
            if (p.Value is GemmShape shape)
            {
                flops = shape.Flops;
                return true;
            }
            if (p.Value is int or long)
            {
                long v = Convert.ToInt64(p.Value, CultureInfo.InvariantCulture);
                switch (p.Name)
                {
                    case "M": m = v; break;
                    case "N": n = v; break;
                    case "K": k = v; break;
                }
            }
        }
        flops = m is { } mm && n is { } nn && k is { } kk ? 2.0 * mm * nn * kk : 0;
        return flops > 0;
    }
}

/// <summary>The collective a benchmark method runs (for the bus-bandwidth factor).</summary>
public enum CollectiveOp
{
    AllGather,
    ReduceScatter,
    AllReduce,
}

/// <summary>Marks a benchmark method as running <see cref="Op"/>.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class CollectiveAttribute(CollectiveOp op) : Attribute
{
    /// <summary>The collective.</summary>
    public CollectiveOp Op { get; } = op;
}

/// <summary>
/// nccl-tests' bandwidths (see its doc/PERFORMANCE.md): algbw = size / time, where size is the benchmark's
/// <c>SizeMiB</c> parameter (all-gather: the gathered output; reduce-scatter: the input; all-reduce: the buffer);
/// busbw = algbw × (p−1)/p for all-gather and reduce-scatter, × 2(p−1)/p for all-reduce, with p the <c>Ranks</c>
/// parameter. GB = 10^9 bytes, as in nccl-tests.
/// </summary>
public sealed class BandwidthColumn : IColumn
{
    /// <summary>algbw.</summary>
    public static readonly BandwidthColumn Algorithm = new(bus: false);
    /// <summary>busbw.</summary>
    public static readonly BandwidthColumn Bus = new(bus: true);

    private readonly bool _bus;

    private BandwidthColumn(bool bus) => _bus = bus;

    public string Id => _bus ? "BusBandwidth" : "AlgBandwidth";
    public string ColumnName => _bus ? "busbw GB/s" : "algbw GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => _bus ? 2 : 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => _bus
        ? "Bus bandwidth (nccl-tests): algbw × (p-1)/p for all-gather/reduce-scatter, × 2(p-1)/p for all-reduce; GB = 1e9 B"
        : "Algorithm bandwidth (nccl-tests): size / mean time; GB = 1e9 B";

    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, summary.Style);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        var op = benchmarkCase.Descriptor.WorkloadMethod.GetCustomAttributes(typeof(CollectiveAttribute), false)
            .Cast<CollectiveAttribute>().FirstOrDefault()?.Op;
        object? size = benchmarkCase.Parameters["SizeMiB"], ranks = benchmarkCase.Parameters["Ranks"];
        if (stats is null || stats.Mean <= 0 || op is null || size is null || ranks is null) return "-";
        double bytes = Convert.ToDouble(size, CultureInfo.InvariantCulture) * (1 << 20);
        int p = Convert.ToInt32(ranks, CultureInfo.InvariantCulture);
        double algbw = bytes / stats.Mean; // bytes per ns = GB/s
        double value = !_bus ? algbw : algbw * Factor(op.Value, p);
        return value.ToString("0.00", style.CultureInfo);
    }

    /// <summary>busbw / algbw for a collective over <paramref name="p"/> ranks.</summary>
    public static double Factor(CollectiveOp op, int p) => op switch
    {
        CollectiveOp.AllReduce => 2.0 * (p - 1) / p,
        _ => (double)(p - 1) / p,
    };
}
