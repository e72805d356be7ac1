using System.Diagnostics;
using System.Globalization;
using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// The <c>bandwidth</c> scenario: all-reduce, all-gather and reduce-scatter of float32 buffers on the CPU device over
/// the group's transport (TCP or MPI), for sizes from <see cref="Settings.MinBytes"/> to <see cref="Settings.MaxBytes"/>
/// in ×4 steps (nccl-tests <c>-b 8 -e 64M -f 4</c>), reported by rank 0 as nccl-tests reports them.
/// <list type="bullet">
/// <item>size (B) is nccl-tests' size: the buffer of an all-reduce, the gathered output of an all-gather, the input
/// of a reduce-scatter. For all-gather and reduce-scatter it is rounded down to a multiple of 4·p bytes (every rank's
/// block holds the same whole number of floats), and is at least 4·p; count = size / 4.</item>
/// <item>time (us) is the mean time of one collective on the slowest rank: after a barrier each rank queues the timed
/// iterations back to back on its stream, waits for them and divides by their number; the ranks' times are then
/// all-gathered and the maximum reported (nccl-tests averages over ranks by default, <c>-a 1</c>; the maximum is its
/// <c>-a 3</c>).</item>
/// <item>algbw = size / time and busbw = algbw × 2(p−1)/p (all-reduce) or × (p−1)/p (all-gather, reduce-scatter),
/// in GB/s with GB = 10⁹ B (nccl-tests' doc/PERFORMANCE.md).</item>
/// <item>Out-of-place (SW_BW_IN_PLACE=1: the all-reduce in place, send = recv). Before each size is timed, its result after the warm-up iterations is checked on every
/// rank against the exact sums of small integers (receive buffer poisoned with NaN first), so a broken collective is
/// never timed: #wrong is the number of wrong elements summed over ranks, and a non-zero count stops the run.</item>
/// </list>
/// Settings from the environment: SW_BW_MIN_BYTES (default 8), SW_BW_MAX_BYTES (default 64M; K, M, G suffixes are
/// powers of 1024), SW_BW_ITERS (timed iterations, default 20), SW_BW_WARMUP (default 5), SW_BW_IN_PLACE (1: the
/// all-reduce in place; default 0), SW_BW_AGREEMENT (off: <see cref="ProcessGroup.AgreementCheck"/> off, no descriptor
/// exchange before each collective; default on). Every size gets the same number of iterations.
/// </summary>
public static class Bandwidth
{
    /// <summary>The collectives, in the order they are reported.</summary>
    public static readonly string[] Collectives = ["all_reduce", "all_gather", "reduce_scatter"];

    /// <summary>busbw / algbw for <paramref name="collective"/> over <paramref name="p"/> ranks (nccl-tests).</summary>
    public static double BusFactor(string collective, int p) =>
        collective == "all_reduce" ? 2.0 * (p - 1) / p : (double)(p - 1) / p;

    /// <summary>The sizes (bytes) nccl-tests would run: min, min·4, ... while ≤ max.</summary>
    public static List<long> NominalSizes(long min, long max)
    {
        var sizes = new List<long>();
        for (long s = Math.Max(min, 4); s <= max; s *= 4) sizes.Add(s);
        return sizes;
    }

    /// <summary>The bytes actually moved for a nominal size: whole floats, and for all-gather and reduce-scatter
    /// whole floats per rank (at least one).</summary>
    public static long ActualBytes(string collective, long nominal, int p) =>
        collective == "all_reduce" ? Math.Max(nominal / 4, 1) * 4 : Math.Max(nominal / (4L * p), 1) * 4L * p;

    /// <summary>Run settings.</summary>
    public sealed record Settings(long MinBytes, long MaxBytes, int Iterations, int Warmup, bool InPlace = false, bool AgreementCheck = true)
    {
        public static Settings FromEnvironment() => new(
            ParseBytes(Environment.GetEnvironmentVariable("SW_BW_MIN_BYTES"), 8, "SW_BW_MIN_BYTES"),
            ParseBytes(Environment.GetEnvironmentVariable("SW_BW_MAX_BYTES"), 64L << 20, "SW_BW_MAX_BYTES"),
            ParseCount(Environment.GetEnvironmentVariable("SW_BW_ITERS"), 20, 1, "SW_BW_ITERS"),
            ParseCount(Environment.GetEnvironmentVariable("SW_BW_WARMUP"), 5, 1, "SW_BW_WARMUP"),
            Environment.GetEnvironmentVariable("SW_BW_IN_PLACE") == "1",
            Environment.GetEnvironmentVariable("SW_BW_AGREEMENT") != "off");
    }

    /// <summary>"65536", "64K", "64M", "1G" (powers of 1024).</summary>
    public static long ParseBytes(string? text, long fallback, string name)
    {
        if (string.IsNullOrWhiteSpace(text)) return fallback;
        text = text.Trim();
        long unit = char.ToUpperInvariant(text[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1 };
        string digits = unit == 1 ? text : text[..^1];
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long v) || v <= 0 || v > (1L << 40) / unit)
            throw new ArgumentException($"{name}='{text}': expected a positive number of bytes, optionally with a K, M or G suffix.");
        return v * unit;
    }

    private static int ParseCount(string? text, int fallback, int min, string name)
    {
        if (string.IsNullOrWhiteSpace(text)) return fallback;
        if (!int.TryParse(text.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v < min)
            throw new ArgumentException($"{name}='{text}': expected an integer ≥ {min}.");
        return v;
    }

    /// <summary>Formats a bandwidth: two decimals from 1 GB/s up (as nccl-tests), three significant digits below, so
    /// that small sizes do not print as 0.00.</summary>
    public static string FormatBw(double v)
    {
        if (!(v > 0) || double.IsInfinity(v)) return v.ToString("0.00", CultureInfo.InvariantCulture);
        if (v >= 1) return v.ToString("F2", CultureInfo.InvariantCulture);
        int decimals = Math.Min(12, 2 - (int)Math.Floor(Math.Log10(v)));
        return v.ToString("F" + decimals, CultureInfo.InvariantCulture);
    }

    /// <summary>Runs the scenario on <paramref name="ctx"/>; rank 0 writes the tables to <paramref name="output"/>.</summary>
    public static void Run(RankContext ctx, Settings settings, TextWriter output)
    {
        int p = ctx.WorldSize, rank = ctx.Rank;
        var sizes = NominalSizes(settings.MinBytes, settings.MaxBytes);
        if (sizes.Count == 0)
            throw new ArgumentException($"no size between SW_BW_MIN_BYTES={settings.MinBytes} and SW_BW_MAX_BYTES={settings.MaxBytes}.");
        Sync(ctx); // every rank is here before rank 0 writes the header
        ctx.Group.AgreementCheck = settings.AgreementCheck; // (every rank the same: read from the same environment)
        if (rank == 0)
        {
            output.WriteLine($"# Shardwise collective bandwidth, nccl-tests definitions: backend {ctx.Group.Backend} (transport {ctx.Group.Transport}), {p} ranks (one process each), " +
                             $"CPU device, float32, {(settings.InPlace ? "all-reduce in place, the others out-of-place" : "out-of-place")}, " +
                             $"agreement check {(settings.AgreementCheck ? "on" : "off")}");
            output.WriteLine($"# sizes {sizes[0]} B to {sizes[^1]} B (x4 steps; max {settings.MaxBytes} B); {settings.Warmup} warm-up + " +
                             $"{settings.Iterations} timed iterations per size; time = mean per iteration on the slowest rank; GB = 1e9 B");
        }
        using var time = ctx.Device.Allocate<double>(1);
        using var times = ctx.Device.Allocate<double>(p);
        using var wrong = ctx.Device.Allocate<int>(1);
        foreach (string op in Collectives)
        {
            double factor = BusFactor(op, p);
            if (rank == 0)
            {
                output.WriteLine("#");
                output.WriteLine($"# collective: {op}  (busbw = algbw * {(op == "all_reduce" ? "2(n-1)/n" : "(n-1)/n")} = {factor.ToString("0.####", CultureInfo.InvariantCulture)})");
                output.WriteLine($"# {"size",10}  {"count",12}  {"type",6}  {"redop",5}  {"time",10}  {"algbw",12}  {"busbw",12}  {"#wrong",6}");
                output.WriteLine($"# {"(B)",10}  {"(elements)",12}  {"",6}  {"",5}  {"(us)",10}  {"(GB/s)",12}  {"(GB/s)",12}".TrimEnd());
            }
            double busSum = 0;
            foreach (long nominal in sizes)
            {
                long bytes = ActualBytes(op, nominal, p), count = bytes / 4;
                var (seconds, wrongTotal) = Measure(ctx, op, count, settings, time, times, wrong);
                double us = seconds * 1e6, algbw = bytes / seconds / 1e9, busbw = algbw * factor;
                busSum += busbw;
                if (rank == 0 && wrongTotal != 0)
                    output.WriteLine($"  {bytes,10}  {count,12}  {"float",6}  {(op == "all_gather" ? "none" : "sum"),5}  " +
                                     $"{"N/A",10}  {"N/A",12}  {"N/A",12}  {wrongTotal,6}");
                if (wrongTotal != 0)
                    throw new InvalidOperationException($"{op} of {bytes} B over {p} ranks: {wrongTotal} wrong element(s) after the warm-up; not timed.");
                if (rank == 0)
                    output.WriteLine($"  {bytes,10}  {count,12}  {"float",6}  {(op == "all_gather" ? "none" : "sum"),5}  " +
                                     $"{us.ToString("F2", CultureInfo.InvariantCulture),10}  {FormatBw(algbw),12}  {FormatBw(busbw),12}  {0,6}");
            }
            if (rank == 0) output.WriteLine($"# {op} average busbw: {FormatBw(busSum / sizes.Count)} GB/s over {sizes.Count} sizes");
        }
        Sync(ctx); // rank 0 has written everything before any rank reports its result
    }

    private static void Sync(RankContext ctx)
    {
        ctx.Barrier();
        ctx.Synchronize();
    }

    /// <summary>Value of element <paramref name="i"/> of rank <paramref name="r"/>'s send buffer: a small integer, so
    /// that every sum is exact in float32.</summary>
    private static float Value(int r, long i) => (r + 1) * (float)(i % 13 + 1);

    /// <summary>Warm-up, check, then the timed loop. Returns the slowest rank's mean seconds per iteration (NaN when
    /// the check failed on some rank and nothing was timed) and the number of wrong elements over all ranks.</summary>
    private static (double Seconds, int Wrong) Measure(RankContext ctx, string op, long count, Settings settings,
        DeviceBuffer<double> time, DeviceBuffer<double> times, DeviceBuffer<int> wrongBuffer)
    {
        int p = ctx.WorldSize, rank = ctx.Rank;
        long sendCount = op == "all_gather" ? count / p : count;
        long recvCount = op == "reduce_scatter" ? count / p : count;
        var dev = ctx.Device;
        var s = ctx.Stream;
        using var send = dev.Allocate<float>(sendCount);
        using var recv = dev.Allocate<float>(recvCount);
        var host = new float[sendCount];
        for (long i = 0; i < sendCount; i++) host[i] = Value(rank, i);
        send.CopyFrom(host, s);
        recv.Fill(float.NaN, s); // also faults the pages in before anything is timed
        // In place: recv starts as the input and is summed into itself; checked after the first warm-up iteration (the
        // later ones multiply it by p each: the values grow, the timing does not change).
        bool inPlace = settings.InPlace && op == "all_reduce";
        if (inPlace) recv.CopyFrom(host, s);

        void Once()
        {
            switch (op)
            {
                case "all_reduce": ctx.AllReduce(inPlace ? recv : send, recv); break;
                case "all_gather": ctx.AllGather(send, recv); break;
                default: ctx.ReduceScatter(send, recv); break;
            }
        }

        int checkedAfter = inPlace ? 1 : settings.Warmup;
        for (int i = 0; i < checkedAfter; i++) Once();
        var got = recv.ToArray(s); // waits for the warm-up
        int wrong = 0;
        float sumOfRanks = p * (p + 1) / 2;
        for (long i = 0; i < recvCount; i++)
        {
            float expected = op switch
            {
                "all_reduce" => sumOfRanks * (i % 13 + 1),
                "all_gather" => Value((int)(i / sendCount), i % sendCount),
                _ => sumOfRanks * ((rank * recvCount + i) % 13 + 1),
            };
            if (got[i] != expected) wrong++;
        }
        // The total of wrong elements, the same on every rank: all of them skip the timed loop when it is not 0.
        wrongBuffer.CopyFrom([wrong], s);
        ctx.AllReduce(wrongBuffer);
        int wrongTotal = wrongBuffer.ToArray(s)[0];
        if (wrongTotal != 0) return (double.NaN, wrongTotal);
        for (int i = checkedAfter; i < settings.Warmup; i++) Once();

        Sync(ctx);
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < settings.Iterations; i++) Once();
        ctx.Synchronize();
        double seconds = clock.Elapsed.TotalSeconds / settings.Iterations;
        // The slowest rank's time, the same on every rank.
        time.CopyFrom([seconds], s);
        ctx.AllGather(time, times);
        return (times.ToArray(s).Max(), 0);
    }
}
