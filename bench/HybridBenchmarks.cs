using System.Diagnostics;
using System.Globalization;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// <c>hybrid [--quick] [--shapes 2x2x2,1x1x8,...] [--threads N]</c>: the end-to-end example's training step (a stack of
/// residual feed-forward blocks, <see cref="FeedForwardStackTrainer"/>, 1F1B, SGD in fp32) on meshes of 8 virtual ranks
/// (pp × dp × tp) on one device, with the time each rank spends in each dimension's communication.
/// <list type="bullet">
/// <item>step: the median wall time of a step (every rank's step, synchronized: the slowest rank), timeline off.</item>
/// <item>pp: the time a rank spends in the pipeline's transfers, their waits for the neighbour included (so the bubble
/// shows here): the sum of the transfer actions of the engine's timeline (one more step with
/// <see cref="PipelineOptions.RecordTimeline"/>: the stream synchronized around every action), mean over ranks.</item>
/// <item>idle meas: the timeline step's idle fraction (1 − forward and backward time / step), mean over ranks; idle plan:
/// <see cref="MeshPlan.IdleFraction"/>. The timeline's synchronizations make the compute of the 8 virtual ranks serial
/// on the machine's cores, so the measured one includes their contention.</item>
/// <item>dp: the time a rank waits for the data-parallel gradient average after its backward (host time of the
/// reduction, synchronized), mean over ranks.</item>
/// <item>tp: the tensor-parallel all-reduces sit inside the layers' forward and backward, where no host timer reaches;
/// they are replayed: each rank runs, on its tp group and alone, the same all-reduces a step makes (two per block per
/// micro-batch, of rows × H floats), synchronized, and their time is reported (mean over ranks). It leaves out the wait
/// for a slower peer inside the real step.</item>
/// </list>
/// Virtual ranks share the device's threads: the numbers compare the shapes' schedules and communication volumes on
/// one machine, not a cluster's links.
/// </summary>
internal static class HybridBenchmarks
{
    private static readonly (int Pp, int Dp, int Tp)[] DefaultShapes =
        [(1, 1, 8), (1, 8, 1), (8, 1, 1), (2, 2, 2), (2, 1, 4), (4, 1, 2), (1, 2, 4), (4, 2, 1)];

    public static int Run(string[] args)
    {
        bool quick = args.Contains("--quick");
        int threads = 0;
        var shapes = DefaultShapes.ToList();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--threads" && i + 1 < args.Length) threads = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--shapes" && i + 1 < args.Length)
                shapes = args[++i].Split(',').Select(s => s.Split('x').Select(v => int.Parse(v, CultureInfo.InvariantCulture)).ToArray())
                    .Select(a => a.Length == 3 ? (a[0], a[1], a[2]) : throw new ArgumentException($"--shapes: '{string.Join('x', a)}' is not PPxDPxTP")).ToList();
            else if (args[i] != "--quick")
            {
                Console.Error.WriteLine($"hybrid: unknown option '{args[i]}'; expected --quick, --shapes PPxDPxTP,..., --threads N");
                return 2;
            }
        }
        int layers = 8, m = 8, steps = quick ? 2 : 5;
        long h = quick ? 128 : 256, f = 4 * h, rows = 64;
        using var device = Device.Cpu(threads);
        Console.WriteLine($"hybrid: {layers} residual FFN blocks, H = {h}, F = {f}, {rows} rows per step (global), 1F1B with {m} micro-batches " +
                          $"per replica when pp > 1 (fewer when a replica has fewer rows; pp = 1: one), fp32 SGD; {device} ({device.NumThreads} threads), 8 virtual ranks");
        Console.WriteLine($"{"mesh pp x dp x tp",-18} {"step ms",9} {"tp ms",8} {"pp ms",8} {"dp ms",8} {"idle meas",10} {"idle plan",10} {"peak act KiB",13}");
        var rng = new Random(1);
        float[] R(long n, float scale) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale; return a; }
        var w1 = Enumerable.Range(0, layers).Select(_ => R(h * f, 1f / MathF.Sqrt(h))).ToArray();
        var w2 = Enumerable.Range(0, layers).Select(_ => R(f * h, 1f / MathF.Sqrt(f))).ToArray();
        var b1 = Enumerable.Range(0, layers).Select(_ => R(f, 0.1f)).ToArray();
        var b2 = Enumerable.Range(0, layers).Select(_ => R(h, 0.1f)).ToArray();
        var x = R(rows * h, 1f);
        var t = R(rows * h, 1f);
        var stack = Enumerable.Range(0, layers).Select(l => new FeedForwardBlockWeights(WeightSource.FromArray(w1[l], h, f),
            WeightSource.FromArray(b1[l], 1, f), WeightSource.FromArray(w2[l], f, h), WeightSource.FromArray(b2[l], 1, h))).ToArray();
        foreach (var (pp, dp, tp) in shapes)
        {
            if (pp * dp * tp != 8 || layers < pp) { Console.WriteLine($"{pp}x{dp}x{tp}: skipped (expected 8 ranks and pp <= {layers})"); continue; }
            long replicaRows = rows / dp;
            int mb = pp == 1 ? 1 : (int)Math.Min(m, replicaRows); // no pipeline to fill: the replica's rows at once
            using var world = ProcessGroup.CreateLocal(device, 8, TimeSpan.FromSeconds(120));
            using var mesh = DeviceMesh.Create(world, ("pp", pp), ("dp", dp), ("tp", tp));
            var stepMs = new double[steps];
            var ppMs = new double[8];
            var dpMs = new double[8];
            var tpMs = new double[8];
            var peak = new long[8];
            var idle = new double[8];
            var barrier = new Barrier(8);
            Spmd.Run(world, ctx =>
            {
                int r = ctx.Rank;
                var ppc = mesh[r].Group("pp"); var dpc = mesh[r].Group("dp"); var tpc = mesh[r].Group("tp");
                using var trainer = new FeedForwardStackTrainer(ppc, dpc, tpc, stack, new PipelineOptions { MicroBatches = mb });
                using var xb = ctx.Device.Allocate<float>(replicaRows * h);
                using var tb = ctx.Device.Allocate<float>(replicaRows * h);
                xb.CopyFrom(x.AsSpan((int)(dpc.Rank * replicaRows * h), (int)(replicaRows * h)), ctx.Stream);
                tb.CopyFrom(t.AsSpan((int)(dpc.Rank * replicaRows * h), (int)(replicaRows * h)), ctx.Stream);
                var xin = xb.AsMatrix(replicaRows, h);
                var tin = tb.AsMatrix(replicaRows, h);
                trainer.Step(replicaRows, xin, tin, 1e-3f); // warm-up
                for (int s = 0; s < steps; s++)
                {
                    barrier.SignalAndWait();
                    var clock = Stopwatch.StartNew();
                    trainer.Step(replicaRows, xin, tin, 1e-3f);
                    ctx.Synchronize();
                    barrier.SignalAndWait();
                    if (r == 0) stepMs[s] = clock.Elapsed.TotalMilliseconds;
                }
                // One step with the timeline: the pipeline's transfer time and the data-parallel wait.
                var timed = new FeedForwardStackTrainer(ppc, dpc, tpc, stack, new PipelineOptions { MicroBatches = mb, RecordTimeline = true });
                using (timed)
                {
                    var report = timed.Step(replicaRows, xin, tin, 1e-3f);
                    ppMs[r] = report.TransferMs;
                    dpMs[r] = timed.DataParallelMs;
                    peak[r] = report.PeakActivationBytes;
                    idle[r] = report.IdleFraction;
                }
                // The tp all-reduces of one step, replayed alone: 2 per block per micro-batch, rows_i x H each.
                var (first, count) = FeedForwardStage.LayerRange(layers, pp, ppc.Rank);
                var split = ShardingPlan.Even(replicaRows, mb);
                using var buf = ctx.Device.Allocate<float>(split.MaxSize * h);
                buf.Clear(ctx.Stream);
                tpc.Synchronize();
                barrier.SignalAndWait();
                var tclock = Stopwatch.StartNew();
                if (tp > 1)
                    for (int i = 0; i < mb; i++)
                        for (int k = 0; k < 2 * count; k++) tpc.AllReduce(buf, buf, split.Size(i) * h);
                tpc.Synchronize();
                tpMs[r] = tclock.Elapsed.TotalMilliseconds;
            });
            var plan = MeshPlan.FeedForwardStack(layers, h, f, rows, pp, dp, tp, mb);
            Array.Sort(stepMs);
            Console.WriteLine($"{$"{pp} x {dp} x {tp}",-18} {stepMs[steps / 2],9:F1} {tpMs.Average(),8:F1} {ppMs.Average(),8:F1} {dpMs.Average(),8:F1} " +
                              $"{idle.Average(),10:F3} {plan.IdleFraction,10:F3} {peak.Max() / 1024.0,13:F0}");
        }
        return 0;
    }
}
