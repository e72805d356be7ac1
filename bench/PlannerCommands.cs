using System.Diagnostics;
using System.Globalization;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// The planner's commands (docs/planner.md):
/// <list type="bullet">
/// <item><c>calibrate [--out FILE] [--ranks N] [--quick] [--processes]</c>: measures this machine's CPU backend
/// (<see cref="ClusterCalibration"/>: GEMM curve, per-operation cost, memory bandwidth, in-process collectives on 2, 4
/// and 8 virtual ranks) and writes the cluster description (default artifacts/cluster-cpu.json). With --processes, run
/// under <c>shardwise launch -n N</c> (or mpirun): the node's devices are the job's processes, one rank each, and rank 0
/// writes the file.</item>
/// <item><c>plan [--model 7b|70b|ffn:LAYERSxHxFxROWS] [--cluster h100[:NODES]|h200[:NODES]|FILE] [--roce]
/// [--inter-bw SCALE] [--devices N] [--rows N] [--fp32] [--sgd]</c>: plans a model on a cluster and explains the
/// answer.</item>
/// <item><c>plan-validate [--cluster FILE] [--rounds N] [--quick] [--processes] [--shapes PPxDPxTP,...]</c>: the
/// hybrid-parallel example (<see cref="FeedForwardStackTrainer"/>) on meshes of 8 virtual ranks (with --processes, under
/// the launcher: every mesh of the job's processes), the planner's predicted step time and memory beside the measured
/// ones, the meshes interleaved (rotating order, one step each per round; median of the per-round predicted / measured
/// ratios with their spread).</item>
/// </list>
/// </summary>
internal static class PlannerCommands
{
    private static readonly (int Pp, int Dp, int Tp)[] Shapes =
        [(1, 1, 8), (1, 8, 1), (8, 1, 1), (2, 2, 2), (2, 1, 4), (4, 1, 2), (1, 2, 4), (4, 2, 1), (1, 4, 2), (2, 4, 1)];

    public static int Calibrate(string[] args)
    {
        string output = "artifacts/cluster-cpu.json";
        int ranks = 8;
        bool quick = false, processes = false;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--out" && i + 1 < args.Length) output = args[++i];
            else if (args[i] == "--ranks" && i + 1 < args.Length) ranks = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--quick") quick = true;
            else if (args[i] == "--processes") processes = true;
            else return Usage($"calibrate: unknown option '{args[i]}'; expected --out FILE, --ranks N, --quick, --processes");
        }
        var clock = Stopwatch.StartNew();
        var options = quick
            ? new CalibrationOptions { GemmM = [1, 16, 256, 4096], GemmN = [64, 512, 4096], GemmK = [64, 512, 4096], MaxGemmFlops = 2e9, MinSeconds = 0.005 }
            : new CalibrationOptions();
        ClusterSpec spec;
        bool lead = true;
        if (processes)
        {
            using var device = ProcessDevice();
            using var world = ProcessGroup.FromEnvironment(device, TimeSpan.FromSeconds(300));
            lead = world.Local.Rank == 0;
            spec = ClusterCalibration.Measure(world, options, line => Console.WriteLine("  " + line));
        }
        else
        {
            using var device = Device.Cpu();
            spec = ClusterCalibration.Measure(device, ranks, options, line => Console.WriteLine("  " + line));
        }
        if (!lead) return 0;
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
        spec.Save(output);
        Console.WriteLine($"calibrate: {spec.Describe()}");
        Console.WriteLine($"calibrate: wrote {output} in {clock.Elapsed.TotalSeconds:0} s");
        return 0;
    }

    public static int Plan(string[] args)
    {
        string model = "7b", cluster = "h100:1";
        bool roce = false, fp32 = false, sgd = false;
        double interScale = 1;
        int? devices = null;
        int rows = 10;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--model": model = Next(); break;
                case "--cluster": cluster = Next(); break;
                case "--roce": roce = true; break;
                case "--fp32": fp32 = true; break;
                case "--sgd": sgd = true; break;
                case "--inter-bw": interScale = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--devices": devices = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--rows": rows = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                default: return Usage($"plan: unknown option '{args[i]}'");
            }
        }
        var m = ParseModel(model);
        var c = ParseCluster(cluster, roce);
        if (interScale != 1)
            c = c with
            {
                Name = c.Name + string.Create(CultureInfo.InvariantCulture, $" (inter-node bandwidth × {interScale})"),
                InterNode = c.InterNode with { BandwidthBytesPerSecond = c.InterNode.BandwidthBytesPerSecond * interScale },
            };
        var options = new PlanOptions
        {
            Devices = devices,
            Precisions = fp32 ? [TrainingPrecision.Fp32] : [TrainingPrecision.Bf16],
            Optimizer = sgd ? OptimizerKind.Sgd : OptimizerKind.AdamW,
        };
        try
        {
            var report = Planner.Plan(m, c, options);
            Console.Write(report.Explain(rows));
            return report.Best is null ? 1 : 0;
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"plan: {e.Message}");
            return 2;
        }
    }

    public static int Validate(string[] args)
    {
        string clusterFile = "artifacts/cluster-cpu.json";
        int rounds = 7;
        bool quick = false, processes = false;
        List<(int Pp, int Dp, int Tp)>? shapes = null;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--cluster" && i + 1 < args.Length) clusterFile = args[++i];
            else if (args[i] == "--rounds" && i + 1 < args.Length) rounds = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--quick") quick = true;
            else if (args[i] == "--processes") processes = true;
            else if (args[i] == "--shapes" && i + 1 < args.Length)
                shapes = args[++i].Split(',').Select(s => s.Split('x').Select(v => int.Parse(v, CultureInfo.InvariantCulture)).ToArray())
                    .Select(a => a.Length == 3 ? (a[0], a[1], a[2]) : throw new ArgumentException($"--shapes: '{string.Join('x', a)}' is not PPxDPxTP")).ToList();
            else return Usage($"plan-validate: unknown option '{args[i]}'; expected --cluster FILE, --rounds N, --quick, --processes, --shapes PPxDPxTP,...");
        }
        if (!File.Exists(clusterFile))
            return Usage($"plan-validate: {clusterFile} does not exist; run `Shardwise.Bench calibrate{(processes ? " --processes" : "")} --out {clusterFile}` first");
        var cluster = ClusterSpec.Load(clusterFile);
        using var device = processes ? ProcessDevice() : Device.Cpu();
        using var world = processes ? ProcessGroup.FromEnvironment(device, TimeSpan.FromSeconds(300)) : null;
        int ranks = world?.WorldSize ?? 8;
        bool lead = world is null || world.Local.Rank == 0;
        void Say(string line) { if (lead) Console.WriteLine(line); }
        int layers = 8, m = 8;
        long h = quick ? 128 : 256, f = 4 * h, rowsPerStep = 64;
        var model = ModelSpec.FeedForwardStack(layers, h, f, rowsPerStep);
        var options = new PlanOptions { Optimizer = OptimizerKind.Sgd, Precisions = [TrainingPrecision.Fp32] };
        Say($"plan-validate: {model.Describe()}; fp32 SGD, 1F1B with {m} micro-batches when pp > 1 (pp = 1: one), " +
            (world is null ? $"{ranks} virtual ranks on {device} ({device.NumThreads} threads)"
                           : $"{ranks} processes (transport {world.Transport}), each on {device} ({device.NumThreads} thread(s))") +
            $"; cluster {clusterFile} ({cluster.Name}); {rounds} rounds, meshes interleaved");
        if (world is not null && cluster.DevicesPerNode != ranks)
            Say($"plan-validate: warning: {clusterFile} describes {cluster.DevicesPerNode} devices per node, this run has {ranks} processes");
        var rng = new Random(1);
        float[] R(long n, float scale) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale; return a; }
        var stack = Enumerable.Range(0, layers).Select(_ => new FeedForwardBlockWeights(WeightSource.FromArray(R(h * f, 1f / MathF.Sqrt(h)), h, f),
            WeightSource.FromArray(R(f, 0.1f), 1, f), WeightSource.FromArray(R(f * h, 1f / MathF.Sqrt(f)), f, h), WeightSource.FromArray(R(h, 0.1f), 1, h))).ToArray();
        var x = R(rowsPerStep * h, 1f);
        var t = R(rowsPerStep * h, 1f);
        // Processes: every mesh of the world's ranks; virtual ranks: the listed meshes of at most 8.
        shapes ??= world is null ? Shapes.ToList()
            : (from pp in Enumerable.Range(1, ranks) from dp in Enumerable.Range(1, ranks) where ranks % (pp * dp) == 0 select (pp, dp, ranks / (pp * dp))).ToList();
        var meshes = shapes.Where(s => (world is null ? s.Pp * s.Dp * s.Tp is >= 1 and <= 8 : s.Pp * s.Dp * s.Tp == ranks)
                                       && s.Pp <= layers && rowsPerStep % s.Dp == 0).ToList();
        if (meshes.Count == 0)
            return Usage($"plan-validate: no mesh to run: expected PPxDPxTP with {(world is null ? "at most 8 ranks" : $"{ranks} ranks")}, PP <= {layers}, DP dividing {rowsPerStep}");
        var predicted = new Dictionary<(int, int, int), (Prediction P, long Bytes)>();
        foreach (var s in meshes)
        {
            int mb = s.Pp == 1 ? 1 : (int)Math.Min(m, rowsPerStep / s.Dp);
            var choice = new MeshChoice(s.Tp, s.Pp, s.Dp, rowsPerStep / s.Dp / mb, mb, PipelineSchedule.OneForwardOneBackward, false, Recompute.None,
                TrainingPrecision.Fp32, false);
            var p = Planner.Evaluate(model, cluster, choice, options);
            long bytes = Planner.StageMemory(model, cluster, choice, options).Sum(b => b.Total * s.Tp * s.Dp);
            predicted[s] = (p, bytes);
        }
        var measured = meshes.ToDictionary(s => s, _ => new List<double>());
        var memory = meshes.ToDictionary(s => s, _ => 0L);
        for (int round = 0; round < rounds; round++)
        {
            for (int j = 0; j < meshes.Count; j++)
            {
                var s = meshes[(j + round) % meshes.Count]; // rotating order
                var (ms, bytes) = world is null
                    ? RunStep(device, stack, x, t, m, h, rowsPerStep, s)
                    : RunStep(world, stack, x, t, m, h, rowsPerStep, s);
                measured[s].Add(ms);
                memory[s] = Math.Max(memory[s], bytes);
            }
        }
        Say($"{"mesh pp x dp x tp",-18} {"measured ms",12} {"[min..max]",17} {"predicted ms",13} {"pred/meas",10} {"[min..max]",13}   {"memory meas",12} {"predicted",10} {"pred/meas",9}");
        var ratios = new List<double>();
        foreach (var s in meshes)
        {
            var list = measured[s];
            var (p, bytes) = predicted[s];
            double pred = p.StepSeconds * 1e3;
            var per = list.Select(v => pred / v).Order().ToList();
            double med = Median(list), ratio = Median(per);
            ratios.Add(ratio);
            Say(string.Create(CultureInfo.InvariantCulture,
                $"{$"{s.Pp} x {s.Dp} x {s.Tp}",-18} {med,12:F1} {$"[{list.Min():F1}..{list.Max():F1}]",17} {pred,13:F1} {ratio,10:F2} {$"[{per[0]:F2}..{per[^1]:F2}]",13}   " +
                $"{memory[s] / 1048576.0,9:F2} MiB {bytes / 1048576.0,6:F2} MiB {(double)bytes / memory[s],9:F3}"));
        }
        Say("predicted parts, ms: compute | tp | pp | bubble | dp | optimizer | contention");
        foreach (var s in meshes)
        {
            var tb = predicted[s].P.Time;
            Say(string.Create(CultureInfo.InvariantCulture,
                $"  {$"{s.Pp} x {s.Dp} x {s.Tp}",-16} {tb.Compute * 1e3,7:F1} {tb.TensorParallel * 1e3,6:F1} {tb.Pipeline * 1e3,6:F1} {tb.Bubble * 1e3,6:F1} {tb.DataParallel * 1e3,6:F1} {tb.Optimizer * 1e3,6:F1} {tb.Contention * 1e3,6:F1}"));
        }
        Say(string.Create(CultureInfo.InvariantCulture,
            $"plan-validate: step time predicted / measured: median {Median(ratios):F2}, worst {ratios.MaxBy(r => Math.Abs(Math.Log(r))):F2} (target within 0.85..1.15)"));
        return 0;
    }

    // One warmed-up step of the example on a pp × dp × tp mesh of virtual ranks: (ms of the slowest rank, the device
    // bytes the trainers allocated at their peak).
    private static (double Ms, long Bytes) RunStep(Device device, FeedForwardBlockWeights[] stack, float[] x, float[] t, int m, long h,
        long rows, (int Pp, int Dp, int Tp) s)
    {
        int n = s.Pp * s.Dp * s.Tp;
        using var world = ProcessGroup.CreateLocal(device, n, TimeSpan.FromSeconds(120));
        using var mesh = DeviceMesh.Create(world, ("pp", s.Pp), ("dp", s.Dp), ("tp", s.Tp));
        var barrier = new Barrier(n);
        double ms = 0;
        long baseBytes = 0, peakBytes = 0;
        Spmd.Run(world, ctx => Step(mesh[ctx.Rank], stack, x, t, m, h, rows, () => barrier.SignalAndWait(),
            () => { if (ctx.Rank == 0) { baseBytes = device.AllocatedBytes; device.ResetPeakAllocatedBytes(); } },
            seconds => { if (ctx.Rank == 0) { ms = seconds * 1e3; peakBytes = device.PeakAllocatedBytes; } }));
        return (ms, peakBytes - baseBytes);
    }

    // The same across the processes of `world` (one rank each): (ms of the slowest rank, the bytes all ranks' trainers
    // allocated at their peaks).
    private static (double Ms, long Bytes) RunStep(ProcessGroup world, FeedForwardBlockWeights[] stack, float[] x, float[] t, int m, long h,
        long rows, (int Pp, int Dp, int Tp) s)
    {
        var ctx = world.Local;
        var device = ctx.Device;
        using var mesh = DeviceMesh.Create(world, ("pp", s.Pp), ("dp", s.Dp), ("tp", s.Tp));
        double seconds = 0;
        long baseBytes = 0;
        Step(mesh[ctx.Rank], stack, x, t, m, h, rows, () => { ctx.Barrier(); ctx.Synchronize(); },
            () => { baseBytes = device.AllocatedBytes; device.ResetPeakAllocatedBytes(); },
            elapsed => seconds = elapsed);
        long bytes = device.PeakAllocatedBytes - baseBytes;
        using var one = device.Allocate<double>(2);
        using var all = device.Allocate<double>(2 * ctx.WorldSize);
        one.CopyFrom([seconds, bytes], ctx.Stream);
        ctx.AllGather(one, all);
        var v = all.ToArray(ctx.Stream);
        return (Enumerable.Range(0, ctx.WorldSize).Max(r => v[2 * r]) * 1e3, (long)Enumerable.Range(0, ctx.WorldSize).Sum(r => v[2 * r + 1]));
    }

    // One rank's part: its replica's rows in, a trainer for its stage, a warm-up step, then the timed step between barriers.
    // start: after the inputs are in, before the trainer exists; end: the timed step's seconds.
    private static void Step(MeshRank rank, FeedForwardBlockWeights[] stack, float[] x, float[] t, int m, long h, long rows, Action barrier,
        Action start, Action<double> end)
    {
        var ppc = rank.Group("pp"); var dpc = rank.Group("dp"); var tpc = rank.Group("tp");
        long replicaRows = rows / dpc.WorldSize;
        int mb = ppc.WorldSize == 1 ? 1 : (int)Math.Min(m, replicaRows);
        var device = tpc.Device;
        using var xb = device.Allocate<float>(replicaRows * h);
        using var tb = device.Allocate<float>(replicaRows * h);
        xb.CopyFrom(x.AsSpan((int)(dpc.Rank * replicaRows * h), (int)(replicaRows * h)), tpc.Stream);
        tb.CopyFrom(t.AsSpan((int)(dpc.Rank * replicaRows * h), (int)(replicaRows * h)), tpc.Stream);
        tpc.Synchronize();
        barrier();
        start();
        barrier();
        using var trainer = new FeedForwardStackTrainer(ppc, dpc, tpc, stack, new PipelineOptions { MicroBatches = mb });
        var xin = xb.AsMatrix(replicaRows, h);
        var tin = tb.AsMatrix(replicaRows, h);
        trainer.Step(replicaRows, xin, tin, 1e-3f); // warm-up
        tpc.Synchronize();
        barrier();
        var clock = Stopwatch.StartNew();
        trainer.Step(replicaRows, xin, tin, 1e-3f);
        tpc.Synchronize();
        barrier();
        end(clock.Elapsed.TotalSeconds);
        barrier();
    }

    // The CPU device of one process of a launched job: the machine's cores shared among the job's processes.
    private static Device ProcessDevice()
    {
        int world = int.TryParse(Environment.GetEnvironmentVariable("WORLD_SIZE") ?? Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE"),
            NumberStyles.Integer, CultureInfo.InvariantCulture, out int w) && w > 0 ? w : 1;
        return Device.Cpu(Math.Max(1, Environment.ProcessorCount / world));
    }

    private static double Median(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    internal static ModelSpec ParseModel(string text)
    {
        switch (text.ToLowerInvariant())
        {
            case "7b": return ModelSpec.Llama7B();
            case "70b": return ModelSpec.Llama70B();
        }
        if (text.StartsWith("ffn:", StringComparison.OrdinalIgnoreCase))
        {
            var v = text[4..].Split('x').Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            if (v.Length == 4) return ModelSpec.FeedForwardStack((int)v[0], v[1], v[2], v[3]);
        }
        throw new ArgumentException($"--model '{text}': expected 7b, 70b or ffn:LAYERSxHxFxROWS");
    }

    internal static ClusterSpec ParseCluster(string text, bool roce)
    {
        var parts = text.Split(':');
        int nodes = parts.Length > 1 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : 1;
        var inter = roce ? LinkSpec.RoCe400 : LinkSpec.InfiniBandNdr400;
        return parts[0].ToLowerInvariant() switch
        {
            "h100" => ClusterSpec.H100Sxm(nodes, inter),
            "h200" => ClusterSpec.H200Sxm(nodes, inter),
            _ when File.Exists(text) => ClusterSpec.Load(text),
            _ => throw new ArgumentException($"--cluster '{text}': expected h100[:NODES], h200[:NODES] or a cluster JSON file (Shardwise.Bench calibrate)"),
        };
    }

    private static int Usage(string message)
    {
        Console.Error.WriteLine(message);
        return 2;
    }
}
