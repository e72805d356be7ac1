using System.Diagnostics;
using Shardwise.Bindings;
using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

// One rank of a multi-process job. Usage: Shardwise.MultiProcessWorker SCENARIO [OUTDIR]
//   layers OUTDIR   the column-parallel, row-parallel and FFN layers; writes OUTDIR/{column,row,ffn}.rank{r}.bin
//   kill            rank p-1 kills itself (SIGKILL) before the second collective; the others must fail fast
//   late            rank p-1 joins the second collective 2.5 timeouts late; the others must time out naming it
//   mismatch        rank p-1 passes another count to the second collective; every rank must fail with a mismatch
//   spmd-throw OUTDIR  rank p-1's Spmd.Run body throws before the second collective; the others must fail at once
//   hybrid OUTDIR   the end-to-end example on a 2 x 2 x 2 mesh (8 ranks, HybridScenario): writes OUTDIR/hybrid.rank{r}.bin
//   invariant OUTDIR  TP-invariant numerics (InvariantScenario: the FFN's forward and backward, a sequence-parallel
//                   row-parallel output, with GemmReductionLeaf = 8): writes OUTDIR/invariant.rank{r}.bin
//   mesh            (4 ranks) a 2 x 2 DeviceMesh's groups, a dp all-reduce, a split with send / recv and a ring of
//                   SendRecv steps (see MeshScenario in Scenario.cs); prints GROUP and SPLIT lines
//   split-late      (4 ranks) rank 3 is late in its sub-group: rank 1 must time out naming it, 0 and 2 (the other
//                   sub-group) must be aborted with it (SplitFaultScenario in Scenario.cs)
//   calibrate OUTDIR  ClusterCalibration.Measure over the processes (a small grid, CalibrationScenario.Options):
//                   writes OUTDIR/cluster.rank{r}.json
//   nccl-info       prints ProcessGroup.NcclInfo() (no group)
//   bandwidth       all-reduce, all-gather and reduce-scatter bandwidth in nccl-tests' terms (size, count, type, time,
//                   algbw, busbw): rank 0 prints the tables (see Bandwidth.cs; SW_BW_MIN_BYTES, SW_BW_MAX_BYTES,
//                   SW_BW_ITERS, SW_BW_WARMUP). `./build.sh bench-mp N tcp|mpi` runs it.
// The group comes from the environment (ProcessGroup.FromEnvironment: torchrun variables, or mpirun). SW_TEST_SEED
// seeds the data (the same on every rank), SW_TEST_TIMEOUT_MS the collective timeout (default 30000),
// SW_TEST_REDUCTION_LEAF the device's GemmReductionLeaf (default 0; "hybrid" with it trains TP-invariantly), SW_TEST_MESH
// the "hybrid" mesh PPxDPxTP (default 2x2x2).
// Prints "RESULT rank=R ok" or "RESULT rank=R error=ExceptionType ms=ELAPSED message=..." and exits 0 or 3.
if (args.Length < 1)
{
    Console.Error.WriteLine("usage: Shardwise.MultiProcessWorker layers|kill|late|mismatch|spmd-throw|mesh|split-late|hybrid|invariant|calibrate|bandwidth|overlap|nccl-info [OUTDIR]");
    return 2;
}
string scenario = args[0];
int seed = int.Parse(Environment.GetEnvironmentVariable("SW_TEST_SEED") ?? "12345", System.Globalization.CultureInfo.InvariantCulture);
var timeout = TimeSpan.FromMilliseconds(double.Parse(Environment.GetEnvironmentVariable("SW_TEST_TIMEOUT_MS") ?? "30000",
    System.Globalization.CultureInfo.InvariantCulture));

if (scenario == "nccl-info") // no group: reports how NCCL loads (SHARDWISE_NCCL_PATH is read once per process)
{
    var (available, version, description) = ProcessGroup.NcclInfo();
    Console.WriteLine($"NCCL available={(available ? 1 : 0)} version={version} info={description.ReplaceLineEndings(" | ")}");
    return 0;
}

using var device = Device.Cpu(1);
device.GemmReductionLeaf = long.Parse(Environment.GetEnvironmentVariable("SW_TEST_REDUCTION_LEAF") ?? "0", System.Globalization.CultureInfo.InvariantCulture);
ProcessGroup group;
try
{
    group = ProcessGroup.FromEnvironment(device, timeout);
}
catch (Exception e)
{
    Console.WriteLine($"RESULT rank=? error={e.GetType().Name} ms=0 message={e.Message.ReplaceLineEndings(" ")}");
    return 3;
}
using (group)
{
    var ctx = group.Local;
    int rank = ctx.Rank, p = group.WorldSize;
    Console.WriteLine($"READY rank={rank} world={p} backend={group.Backend} transport={group.Transport}");
    var clock = Stopwatch.StartNew();
    try
    {
        if (scenario == "layers")
        {
            string outDir = args.Length > 1 ? args[1] : throw new ArgumentException("layers needs OUTDIR");
            var (column, row, ffn) = Scenario.Run(ctx, new Scenario.Data(seed));
            var block = Scenario.Block(ctx, new Scenario.Data(seed));
            foreach (var (name, data) in new[] { ("column", column), ("row", row), ("ffn", ffn), ("block", block) })
                File.WriteAllBytes(Path.Combine(outDir, $"{name}.rank{rank}.bin"), System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray());
        }
        else if (scenario == "invariant")
        {
            string outDir = args.Length > 1 ? args[1] : throw new ArgumentException("invariant needs OUTDIR");
            device.GemmReductionLeaf = InvariantScenario.Leaf;
            var data = InvariantScenario.Run(ctx, new InvariantScenario.Data(seed));
            File.WriteAllBytes(Path.Combine(outDir, $"invariant.rank{rank}.bin"), System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray());
        }
        else if (scenario == "calibrate")
        {
            string outDir = args.Length > 1 ? args[1] : throw new ArgumentException("calibrate needs OUTDIR");
            ClusterCalibration.Measure(group, CalibrationScenario.Options).Save(Path.Combine(outDir, $"cluster.rank{rank}.json"));
        }
        else if (scenario == "hybrid")
        {
            HybridWorker.Run(group, args.Length > 1 ? args[1] : throw new ArgumentException("hybrid needs OUTDIR"), seed);
        }
        else if (scenario == "split-late")
        {
            SplitFaultScenario.Run(group, timeout, clock);
        }
        else if (scenario == "mesh")
        {
            MeshScenario.Run(group, seed, Console.Out);
        }
        else if (scenario == "bandwidth")
        {
            Bandwidth.Run(ctx, Bandwidth.Settings.FromEnvironment(), Console.Out);
        }
        else if (scenario == "overlap")
        {
            OverlapBench.Run(ctx, Console.Out);
        }
        else if (scenario == "spmd-throw")
        {
            // Rank p-1's Spmd.Run body throws before the second collective, which the others are waiting in; they must
            // fail at once (the abort notice), not at their timeout. The thrower keeps its group open until they are
            // done (their OUTDIR/done.rank{r} files, or the timeout), so it is the abort that tells them, not its exit.
            string outDir = args.Length > 1 ? args[1] : throw new ArgumentException("spmd-throw needs OUTDIR");
            bool thrower = rank == p - 1;
            try
            {
                Spmd.Run(group, r =>
                {
                    using var b = r.Device.Allocate<float>(64);
                    b.CopyFrom(Enumerable.Range(0, 64).Select(i => (float)(rank + 1) * (i + 1)).ToArray(), r.Stream);
                    r.AllReduce(b); // #0: everyone is here
                    r.Synchronize();
                    clock.Restart();
                    if (thrower) { Thread.Sleep(300); throw new InvalidOperationException("boom"); }
                    r.AllReduce(b); // #1
                    r.Synchronize();
                });
            }
            catch (SpmdException e)
            {
                if (thrower)
                {
                    var waited = Stopwatch.StartNew();
                    while (waited.Elapsed < timeout && Enumerable.Range(0, p - 1).Any(q => !File.Exists(Path.Combine(outDir, $"done.rank{q}"))))
                        Thread.Sleep(20);
                }
                else
                {
                    File.WriteAllText(Path.Combine(outDir, $"done.rank{rank}"), "");
                }
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.Cause).Throw();
            }
        }
        else
        {
            using var b = device.Allocate<float>(64);
            b.CopyFrom(Enumerable.Range(0, 64).Select(i => (float)(rank + 1) * (i + 1)).ToArray(), ctx.Stream);
            ctx.AllReduce(b); // #0: everyone is here
            ctx.Synchronize();
            bool victim = rank == p - 1;
            if (victim && scenario == "kill") Process.GetCurrentProcess().Kill(); // SIGKILL: no goodbye
            if (victim && scenario == "late") Thread.Sleep(timeout * 2.5);
            clock.Restart();
            ctx.AllReduce(b, b, count: victim && scenario == "mismatch" ? 32 : 64); // #1
            ctx.Synchronize();
        }
        Console.WriteLine($"RESULT rank={rank} ok");
        return 0;
    }
    catch (Exception e)
    {
        Console.WriteLine($"RESULT rank={rank} error={e.GetType().Name} ms={clock.ElapsedMilliseconds} message={e.Message.ReplaceLineEndings(" ")}");
        return 3;
    }
}
