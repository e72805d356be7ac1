using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Shardwise.Bench.Support;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// The main job of <c>./build.sh</c>: a tensor-parallel GEMM on the default backend, verified and timed.
/// <para>
/// For each shape M×K×N and each rank count p, W (K × N) is loaded shard by shard through a <see cref="WeightSource"/>
/// into a <see cref="ShardedGemm"/> over <c>ProcessGroup.CreateLocal(device, p)</c>; Forward is warmed up and timed
/// interleaved with the unsharded GEMM of the same shape (Support/Interleaved.cs: rounds of both in rotating order; "vs
/// unsharded" is the median of the per-round ratios with its spread). Y is checked against a float64 reference (all rows for small shapes, a random sample of
/// rows otherwise) with a tolerance scaled by K, and compared bit for bit with the unsharded
/// <see cref="Gemm.Multiply"/> of the same shape. A <see cref="ColumnParallelLinear"/> layer (with bias, gathered
/// output) then runs under <see cref="Spmd.Run"/> and is verified the same way on every rank.
/// </para>
/// Exit code: 0 when every check passed, 1 when a check failed, 2 for bad arguments or an unexpected error.
/// </summary>
internal static class MainJob
{
    // Shapes (M, K, N). N = 1000 is not a multiple of any SIMD width (shards of 500/250/125 columns exercise the
    // kernels' edge tiles); N = 1030 gives truly uneven shards (515,515 / 258,258,257,257 / 129×6,128×2);
    // M = 1 is the GEMV-like decode step.
    internal static readonly (int M, int K, int N)[] FullShapes =
    [
        (512, 1024, 1024),
        (1024, 2048, 2048),
        (2048, 2048, 2048),
        (2048, 4096, 1000),
        (256, 1024, 1030),
        (1, 4096, 4096),
    ];

    internal static readonly (int M, int K, int N)[] QuickShapes =
    [
        (128, 256, 256),
        (256, 512, 500),
        (1, 1024, 1024),
    ];

    private static readonly int[] DefaultRanks = [1, 2, 4, 8];

    /// <summary>Command-line options.</summary>
    private sealed class Options
    {
        public bool Quick;
        public string Backend = "auto";            // auto: CUDA when a CUDA device is present, else the CPU
        public int Threads;                        // 0: SHARDWISE_NUM_THREADS or all logical processors
        public string? Kernel;                     // null: the device's default ("auto")
        public List<(int M, int K, int N)> Shapes = [];
        public int[] Ranks = DefaultRanks;
        public double BudgetMs = 400;              // interleaved rounds per case: about this long, within [MinReps, MaxReps]
        public int MinReps = 9, MaxReps = 31;      // rounds of the interleaved timing (unsharded GEMM, sharded Forward)
        public int PrecisionRounds = 5;            // rounds of the side-by-side bf16/fp32 comparison (0: skip it)
        public bool Block = true;                  // the transformer-block section (--no-block skips it)
        public bool Invariant = true;              // the TP-invariant section (--no-invariant skips it)
        public string ChartDir = Path.Combine("artifacts", "bench"); // SVG charts beside the tables ("" : none)
    }

    public static int Run(string[] args)
    {
        Options? options;
        try
        {
            options = Parse(args);
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"main: {e.Message}");
            PrintUsage(Console.Error);
            return 2;
        }
        if (options is null)
        {
            PrintUsage(Console.Out);
            return 0;
        }

        try
        {
            return Execute(options);
        }
        catch (ShardwiseException e) when (e is ShardwiseArgumentException or ShardwiseUnsupportedException)
        {
            Console.Error.WriteLine($"main: {e.Message}"); // e.g. an unknown or unsupported --kernel
            return 2;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"main: unexpected error: {e}");
            return 2;
        }
    }

    /// <summary>The main job's options, each line after <paramref name="indent"/> (also shown by <c>bench --help</c>).</summary>
    internal static void PrintUsage(TextWriter w, string indent = "")
    {
        w.WriteLine(indent + "usage: Shardwise.Bench main [--quick] [--backend B] [--threads N] [--kernel NAME] [--shape MxKxN]... [--ranks 1,2,4,8] [--budget-ms MS] [--precision-rounds N] [--no-block] [--no-invariant] [--chart-dir DIR]");
        w.WriteLine(indent + "  --quick         small shapes only (a few seconds)");
        w.WriteLine(indent + "  --backend B     auto (default: CUDA device 0 when present, else the CPU), cpu or cuda");
        w.WriteLine(indent + "  --threads N     CPU compute threads of the device (default: SHARDWISE_NUM_THREADS or all cores)");
        w.WriteLine(indent + "  --kernel NAME   CPU GEMM micro-kernel: auto, avx512, avx2, generic (default: auto)");
        w.WriteLine(indent + "  --shape MxKxN   a shape to run instead of the default list (repeatable)");
        w.WriteLine(indent + "  --ranks LIST    rank counts, comma-separated (default 1,2,4,8)");
        w.WriteLine(indent + "  --budget-ms MS  target time of the interleaved rounds of one case (default 400, --quick 100; 9..31 rounds)");
        w.WriteLine(indent + "  --precision-rounds N  rounds of the side-by-side CPU comparison: Shardwise bf16 vs oneDNN bf16 matmul and vs");
        w.WriteLine(indent + "                  Shardwise fp32, fp32 vs dnnl_sgemm and OpenBLAS (default 5, --quick 3; 0 skips it)");
        w.WriteLine(indent + "  --chart-dir DIR SVG charts of the tables go here (default artifacts/bench; an empty string: none)");
        w.WriteLine(indent + "  --no-block      skip the transformer-block section (2048 tokens, hidden 1024, 16 heads at p = 1, 2, 4; --quick: 256, 256, 4)");
        w.WriteLine(indent + "  --no-invariant  skip the TP-invariant section (tree vs default GEMM at 2048^3 and 512x4096x11008, FFN at p = 1, 4)");
    }

    /// <summary>Parses the options; returns null for --help.</summary>
    private static Options? Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--quick": o.Quick = true; break;
                case "--backend":
                    o.Backend = Value();
                    if (o.Backend is not ("auto" or "cpu" or "cuda")) throw new ArgumentException($"--backend '{o.Backend}': expected auto, cpu or cuda.");
                    break;
                case "--threads":
                    if (!int.TryParse(Value(), out o.Threads) || o.Threads < 1) throw new ArgumentException("--threads expects a positive integer.");
                    break;
                case "--kernel": o.Kernel = Value(); break;
                case "--shape": o.Shapes.Add(ParseShape(Value())); break;
                case "--ranks":
                    o.Ranks = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                        .Select(s => int.TryParse(s, out int p) && p >= 1 ? p : throw new ArgumentException($"--ranks: '{s}' is not a positive integer."))
                        .ToArray();
                    if (o.Ranks.Length == 0) throw new ArgumentException("--ranks is empty.");
                    break;
                case "--budget-ms":
                    if (!double.TryParse(Value(), CultureInfo.InvariantCulture, out o.BudgetMs) || o.BudgetMs <= 0)
                        throw new ArgumentException("--budget-ms expects a positive number.");
                    break;
                case "--precision-rounds":
                    if (!int.TryParse(Value(), out o.PrecisionRounds) || o.PrecisionRounds < 0)
                        throw new ArgumentException("--precision-rounds expects an integer >= 0.");
                    break;
                case "--no-block": o.Block = false; break;
                case "--no-invariant": o.Invariant = false; break;
                case "--chart-dir": o.ChartDir = Value(); break;
                case "--help" or "-h": return null;
                default: throw new ArgumentException($"unknown option '{args[i]}'.");
            }
        }
        if (o.Shapes.Count == 0) o.Shapes.AddRange(o.Quick ? QuickShapes : FullShapes);
        if (o.Quick) o.BudgetMs = Math.Min(o.BudgetMs, 100);
        if (o.Quick) o.PrecisionRounds = Math.Min(o.PrecisionRounds, 3);
        return o;
    }

    private static (int, int, int) ParseShape(string s)
    {
        var parts = s.Split('x', 'X', '×');
        if (parts.Length == 3 && parts.All(p => int.TryParse(p, out int v) && v >= 1))
            return (int.Parse(parts[0]), int.Parse(parts[1]), int.Parse(parts[2]));
        throw new ArgumentException($"--shape '{s}': expected MxKxN with positive integers, e.g. 512x1024x1024.");
    }

    private static int Execute(Options o)
    {
        var total = Stopwatch.StartNew();
        using var device = OpenDevice(o);

        Console.WriteLine("Shardwise main job: tensor-parallel GEMM (column-sharded W), verified against a float64 reference");
        Console.WriteLine($"  library   : shardwise {Marshal.PtrToStringUTF8(Native.sw_version_string())} (ABI {Native.sw_abi_version()}), loaded from {NativeLibraryLoader.LoadedFrom}");
        Console.WriteLine($"  device    : {device.Name} ({device.Backend}, {device.NumThreads} compute threads, {device.TotalMemoryBytes / (1 << 20)} MiB)");
        if (device.Backend == Backend.Cpu) Console.WriteLine($"  kernel    : {device.Kernel}");
        Console.WriteLine($"  runtime   : {RuntimeInformation.FrameworkDescription}, {RuntimeInformation.OSDescription}, {Environment.ProcessorCount} logical processors");
        Console.WriteLine($"  timing    : per rank count, the unsharded GEMM and Forward (which synchronizes) alternate in rotating order, {o.MinReps}..{o.MaxReps} rounds");
        Console.WriteLine($"              (~{o.BudgetMs:0} ms per case; a turn repeats a short call to ~2 ms), after 1 warm-up call each");
        Console.WriteLine();

        var table = new TextTable(("shape (M×K×N)", false), ("ranks", true), ("shard widths", false), ("median ms", true),
            ("GFLOP/s", true), ("vs unsharded", true), ("max rel err", true), ("tol", true), ("bit-identical", false), ("alloc B/call", true), ("verdict", false));
        var failures = new List<string>();
        var points = new List<Charts.GemmPoint>();

        for (int i = 0; i < o.Shapes.Count; i++)
        {
            var (m, k, n) = o.Shapes[i];
            Console.Error.Write($"  [{i + 1}/{o.Shapes.Count}] {m}×{k}×{n} ...");
            var sw = Stopwatch.StartNew();
            try
            {
                RunShape(device, m, k, n, o, table, failures, points);
                Console.Error.WriteLine($" {sw.Elapsed.TotalSeconds:0.0} s");
            }
            catch (Exception e) when (e is ShardwiseException or AggregateException or ArgumentException)
            {
                // A library error fails this shape; the others still run.
                Console.Error.WriteLine(" error");
                failures.Add($"{m}×{k}×{n}: {e.GetType().Name}: {e.Message}");
            }
        }
        Console.Error.WriteLine();

        Console.WriteLine(table);
        Console.WriteLine("  ranks GEMM = the unsharded Gemm.Multiply of the full shape on one stream (the baseline of 'vs unsharded' and of");
        Console.WriteLine("  'bit-identical'); median ms = median time per call over the rounds; GFLOP/s = 2·M·N·K / median;");
        Console.WriteLine("  vs unsharded = per round, unsharded time / sharded time (> 1: sharded faster): median [min..max] over the rounds;");
        Console.WriteLine("  max rel err = max |Y − Y₆₄| / Σ_k |X·W| over the verified rows;");
        Console.WriteLine("  tol = 4·√K·2⁻²⁴; alloc B/call = managed bytes a steady-state Forward allocates on the calling thread (target 0).");
        if (o.ChartDir.Length > 0 && points.Count > 0) Console.WriteLine($"  charts: {Charts.Gemm(o.ChartDir, points)}");
        Console.WriteLine();

        RunColumnParallelLinear(device, o, failures);

        if (o.Block)
        {
            Console.WriteLine();
            Console.Error.Write("  transformer block ...");
            var sw = Stopwatch.StartNew();
            try
            {
                TransformerBlockBench.RunMainJob(device, o.Quick, Settings(o) with { MinRounds = o.Quick ? 3 : 5, MaxRounds = o.Quick ? 5 : 9, BudgetMs = o.Quick ? 2000 : 30000 },
                    failures, o.ChartDir);
            }
            catch (Exception e) when (e is ShardwiseException or SpmdException or ArgumentException)
            {
                failures.Add($"transformer block: {e.GetType().Name}: {e.Message}");
            }
            Console.Error.WriteLine($" {sw.Elapsed.TotalSeconds:0.0} s");
        }

        if (o.Invariant && device.Backend == Backend.Cpu)
        {
            Console.WriteLine();
            Console.Error.Write("  TP-invariant ...");
            var sw = Stopwatch.StartNew();
            try
            {
                TpInvariantBench.RunMainJob(o.Threads, o.Quick,
                    Settings(o) with { MinRounds = o.Quick ? 3 : 7, MaxRounds = o.Quick ? 5 : 11, BudgetMs = o.Quick ? 2000 : 30000 }, failures);
            }
            catch (Exception e) when (e is ShardwiseException or SpmdException or ArgumentException)
            {
                failures.Add($"TP-invariant: {e.GetType().Name}: {e.Message}");
            }
            Console.Error.WriteLine($" {sw.Elapsed.TotalSeconds:0.0} s");
        }

        if (o.PrecisionRounds > 0)
        {
            Console.WriteLine();
            PrecisionComparison.Run(o.Quick, o.Threads, device.Backend == Backend.Cpu ? o.Kernel : null, o.PrecisionRounds, o.BudgetMs, failures);
        }

        Console.WriteLine();
        Console.WriteLine($"total time {total.Elapsed.TotalSeconds:0.0} s");
        if (failures.Count == 0)
        {
            Console.WriteLine("main job: all checks passed");
            return 0;
        }
        Console.WriteLine($"main job: {failures.Count} check(s) FAILED:");
        foreach (var f in failures) Console.WriteLine($"  - {f}");
        return 1;
    }

    /// <summary>The default backend's device: CUDA device 0 when there is one (and --backend allows it), else the CPU.</summary>
    private static Device OpenDevice(Options o)
    {
        bool cuda = o.Backend == "cuda" || (o.Backend == "auto" && Device.Count(Backend.Cuda) > 0);
        if (!cuda)
        {
            var cpu = Device.Cpu(o.Threads);
            try
            {
                if (o.Kernel is not null) cpu.SetKernel(o.Kernel);
            }
            catch
            {
                cpu.Dispose();
                throw;
            }
            return cpu;
        }
        if (o.Kernel is not null) throw new ArgumentException("--kernel selects a CPU micro-kernel; it does not apply to CUDA.");
        return Device.Open(Backend.Cuda, 0);
    }

    /// <summary>One shape: the unsharded baseline, then ShardedGemm for every rank count.</summary>
    private static void RunShape(Device device, int m, int k, int n, Options o, TextTable table, List<string> failures, List<Charts.GemmPoint> points)
    {
        string shapeName = $"{m}×{k}×{n}";
        double flop = 2.0 * m * n * k;

        // Inputs: fixed seeds, so a failure reproduces. W stays on the host only as the source of the shards and of
        // the reference; the device gets it through the WeightSource, block by block.
        var x = TestData.Uniform((long)m * k, seed: 1);
        var w = TestData.Uniform((long)k * n, seed: 2);
        var blocks = new List<(long Row, long Col, long Rows, long Cols)>();
        var source = WeightSource.FromLoader(k, n, (r0, c0, rows, cols, dest) =>
        {
            lock (blocks) blocks.Add((r0, c0, rows, cols));
            for (long i = 0; i < rows; i++)
                w.AsSpan(checked((int)((r0 + i) * n + c0)), (int)cols).CopyTo(dest.Slice((int)(i * cols), (int)cols));
        });

        var reference = Reference.Compute(x, w, bias: null, m, k, n);
        string verified = reference.IsFull(m) ? "" : $" ({reference.Rows.Length} sampled rows)";

        using var stream = device.CreateStream();
        using var xBuf = device.Allocate<float>((long)m * k);
        using var yBuf = device.Allocate<float>((long)m * n);
        xBuf.CopyFrom(x, stream);
        var xView = xBuf.AsMatrix(m, k);
        var yView = yBuf.AsMatrix(m, n);

        // Unsharded baseline: Gemm.Multiply of the whole shape on one stream (+ synchronize). Its result (on a Y filled
        // with NaN) is the reference of 'bit-identical'; while timing, it writes into a Y of its own, so that it can
        // never fill in a block the sharded forward left unwritten.
        var yBaseline = new float[(long)m * n];
        using var wFull = source.LoadBlock(stream, 0, 0, k, n)!;
        using var yUnshardedBuf = device.Allocate<float>((long)m * n);
        var wView = wFull.AsMatrix(k, n);
        var yUnsharded = yUnshardedBuf.AsMatrix(m, n);
        yBuf.Fill(float.NaN, stream);
        Gemm.Multiply(stream, xView, wView, yView);
        stream.Synchronize();
        yBuf.CopyTo(yBaseline, stream);
        Action unsharded = () =>
        {
            Gemm.Multiply(stream, xView, wView, yUnsharded);
            stream.Synchronize();
        };
        double baseErr = reference.MaxRelativeError(yBaseline);
        bool baseOk = baseErr <= reference.Tolerance;
        if (!baseOk) failures.Add($"{shapeName} unsharded Gemm.Multiply: max rel err {baseErr:0.00e+0} > tol {reference.Tolerance:0.00e+0}{verified}");

        var y = new float[(long)m * n];
        var rows = new List<string[]>();
        var unshardedSeconds = new List<double>();
        foreach (int p in o.Ranks)
        {
            using var group = ProcessGroup.CreateLocal(device, p);
            blocks.Clear();
            using var sharded = new ShardedGemm(group, source);
            var plan = sharded.Plan;
            string widths = string.Join(",", Enumerable.Range(0, p).Select(r => plan.Size(r)));
            var problems = new List<string>();

            // Shard-by-shard loading: every block the loader served lies inside one rank's column range.
            for (int r = 0; r < p; r++)
            {
                long lo = plan.Offset(r), hi = lo + plan.Size(r);
                long served = blocks.Where(b => b.Col == lo && b.Col + b.Cols == hi).Sum(b => b.Rows * b.Cols);
                if (served != plan.Size(r) * k) problems.Add($"rank {r}'s shard was loaded as {served} elements, expected {plan.Size(r) * k}");
            }
            if (blocks.Any(b => Enumerable.Range(0, p).All(r => b.Col != plan.Offset(r) || b.Cols != plan.Size(r))))
                problems.Add("the weight source served a block that is not exactly one shard's columns");

            // Timing: the unsharded GEMM and this Forward alternate in rotating order, round by round; 'vs unsharded' is
            // the median of the per-round ratios (unsharded time / sharded time) with its spread.
            yBuf.Fill(float.NaN, stream); // a column block that is never written shows up as NaN
            var timing = Interleaved.Measure([unsharded, () => sharded.Forward(xView, yView)], Settings(o));
            unshardedSeconds.AddRange(RoundStats.Column(timing.Seconds, 0));
            double ms = timing.Milliseconds(1).Median;
            yBuf.CopyTo(y, stream);

            // Managed allocations of a steady-state Forward call on this thread (the target is 0).
            const int allocCalls = 3;
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < allocCalls; i++) sharded.Forward(xView, yView);
            long allocated = (GC.GetAllocatedBytesForCurrentThread() - before) / allocCalls;

            double err = reference.MaxRelativeError(y);
            bool identical = MemoryMarshal.Cast<float, int>(y.AsSpan()).SequenceEqual(MemoryMarshal.Cast<float, int>(yBaseline.AsSpan()));
            if (err > reference.Tolerance) problems.Add($"max rel err {err:0.00e+0} > tol {reference.Tolerance:0.00e+0}{verified}");
            if (!identical) problems.Add($"Y differs from the unsharded Gemm.Multiply in {CountDifferences(y, yBaseline)} elements");
            failures.AddRange(problems.Select(s => $"{shapeName} p={p}: {s}"));

            points.Add(new Charts.GemmPoint(shapeName, p, flop / (ms * 1e6), timing.Ratio(0, 1)));
            rows.Add([shapeName, p.ToString(CultureInfo.InvariantCulture), widths, Ms(ms), Gflops(flop, ms),
                timing.Ratio(0, 1).Format(), Err(err) + verified, Err(reference.Tolerance), identical ? "yes" : "NO",
                allocated.ToString(CultureInfo.InvariantCulture), problems.Count == 0 ? "ok" : "FAIL"]);
        }

        // The GEMM row: the unsharded call's median over every round above.
        double baselineMs = RoundStats.Median([.. unshardedSeconds]) * 1e3;
        table.Add(shapeName, "GEMM", n.ToString(CultureInfo.InvariantCulture), Ms(baselineMs), Gflops(flop, baselineMs), "1.00",
            Err(baseErr) + verified, Err(reference.Tolerance), "(baseline)", "", baseOk ? "ok" : "FAIL");
        foreach (var row in rows) table.Add(row);
    }

    /// <summary>
    /// The interleaving of one case: rounds of the unsharded GEMM and the sharded Forward, each turn ~2 ms or one call,
    /// {MinReps}..{MaxReps} rounds filling about the budget.
    /// </summary>
    private static InterleaveSettings Settings(Options o) => new(o.MinReps, o.MaxReps, o.BudgetMs, SliceMs: 2);

    /// <summary>
    /// ColumnParallelLinear (with bias, gathered output) on p = 4 virtual ranks under Spmd.Run, one host thread per
    /// rank; every rank's Y is verified against the reference and against the unsharded Gemm.Multiply with bias.
    /// </summary>
    private static void RunColumnParallelLinear(Device device, Options o, List<string> failures)
    {
        const int p = 4;
        // N not divisible by 4: the shards are uneven (e.g. 258,258,257,257).
        (int m, int k, int n) = o.Quick ? (64, 256, 250) : (256, 1024, 1030);
        string shapeName = $"{m}×{k}×{n}";
        var x = TestData.Uniform((long)m * k, seed: 3);
        var w = TestData.Uniform((long)k * n, seed: 4);
        var b = TestData.Uniform(n, seed: 5);
        var weight = WeightSource.FromArray(w, k, n);
        var bias = WeightSource.FromArray(b, 1, n);
        var reference = Reference.Compute(x, w, b, m, k, n);

        using var stream = device.CreateStream();
        using var xBuf = device.Allocate<float>((long)m * k);
        xBuf.CopyFrom(x, stream);
        var xView = xBuf.AsMatrix(m, k);

        // Baseline: one unsharded GEMM with the same bias.
        var yBaseline = new float[(long)m * n];
        using (var wFull = weight.LoadBlock(stream, 0, 0, k, n)!)
        using (var bFull = bias.LoadBlock(stream, 0, 0, 1, n)!)
        using (var yFull = device.Allocate<float>((long)m * n))
        {
            Gemm.Multiply(stream, xView, wFull.AsMatrix(k, n), yFull.AsMatrix(m, n), bias: bFull);
            stream.Synchronize();
            yFull.CopyTo(yBaseline, stream);
        }

        using var group = ProcessGroup.CreateLocal(device, p, TimeSpan.FromMinutes(2));
        var yRanks = new DeviceBuffer<float>[p];
        for (int r = 0; r < p; r++) yRanks[r] = device.Allocate<float>((long)m * n);
        int reps = o.Quick ? 5 : 10;
        var times = new double[p, reps];
        string widths = "";
        try
        {
            Spmd.Run(group, ctx =>
            {
                using var layer = new ColumnParallelLinear(ctx, weight, bias, gatherOutput: true);
                if (ctx.Rank == 0) widths = string.Join(",", Enumerable.Range(0, p).Select(r => layer.Plan.Size(r)));
                var yView = yRanks[ctx.Rank].AsMatrix(m, n);
                yRanks[ctx.Rank].Fill(float.NaN, ctx.Stream);
                layer.Forward(xView, yView); // warm-up
                ctx.Synchronize();
                for (int i = 0; i < reps; i++)
                {
                    ctx.Barrier(); // all ranks start together
                    ctx.Synchronize();
                    long t0 = Stopwatch.GetTimestamp();
                    layer.Forward(xView, yView);
                    ctx.Synchronize();
                    times[ctx.Rank, i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                }
            });

            // A step takes as long as its slowest rank.
            var steps = Enumerable.Range(0, reps).Select(i => Enumerable.Range(0, p).Max(r => times[r, i])).ToArray();
            double ms = MedianOf(steps);

            var table = new TextTable(("layer", false), ("shape (M×K×N)", false), ("ranks", true), ("shard widths", false),
                ("rank", true), ("median ms", true), ("GFLOP/s", true), ("max rel err", true), ("tol", true), ("bit-identical", false), ("verdict", false));
            var y = new float[(long)m * n];
            for (int r = 0; r < p; r++)
            {
                yRanks[r].CopyTo(y, stream);
                double err = reference.MaxRelativeError(y);
                bool identical = MemoryMarshal.Cast<float, int>(y.AsSpan()).SequenceEqual(MemoryMarshal.Cast<float, int>(yBaseline.AsSpan()));
                var problems = new List<string>();
                if (err > reference.Tolerance) problems.Add($"max rel err {err:0.00e+0} > tol {reference.Tolerance:0.00e+0}");
                if (!identical) problems.Add($"Y differs from the unsharded Gemm.Multiply (+bias) in {CountDifferences(y, yBaseline)} elements");
                failures.AddRange(problems.Select(s => $"ColumnParallelLinear {shapeName} p={p} rank {r}: {s}"));
                table.Add("ColumnParallelLinear+bias, gathered", shapeName, p.ToString(CultureInfo.InvariantCulture), widths,
                    r.ToString(CultureInfo.InvariantCulture), Ms(ms), Gflops(2.0 * m * n * k, ms), Err(err), Err(reference.Tolerance),
                    identical ? "yes" : "NO", problems.Count == 0 ? "ok" : "FAIL");
            }
            Console.WriteLine("ColumnParallelLinear under Spmd.Run (one host thread per rank, every rank verified; time = slowest rank per step)");
            Console.WriteLine();
            Console.WriteLine(table);
        }
        catch (SpmdException e)
        {
            failures.Add($"ColumnParallelLinear {shapeName} p={p}: {e.Message}");
        }
        finally
        {
            foreach (var buf in yRanks) buf.Dispose();
        }
    }

    private static double MedianOf(double[] samples)
    {
        var s = (double[])samples.Clone();
        Array.Sort(s);
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }

    private static long CountDifferences(float[] a, float[] b)
    {
        long count = 0;
        for (long i = 0; i < a.LongLength; i++)
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i])) count++;
        return count;
    }

    private static string Ms(double ms) => ms.ToString(ms < 10 ? "0.000" : "0.0", CultureInfo.InvariantCulture);
    private static string Gflops(double flop, double ms) => (flop / (ms * 1e6)).ToString("0.0", CultureInfo.InvariantCulture);
    private static string Err(double e) => double.IsInfinity(e) ? "inf (NaN in Y)" : e.ToString("0.00e+0", CultureInfo.InvariantCulture);
}
