using System.Diagnostics;

namespace Shardwise.Parallel;

/// <summary>What <c>ClusterCalibration.Measure</c> measures and for how long.</summary>
public sealed record CalibrationOptions
{
    /// <summary>The GEMM grid's M values.</summary>
    public IReadOnlyList<long> GemmM { get; init; } = [1, 4, 16, 64, 256, 1024, 4096];
    /// <summary>The GEMM grid's N values.</summary>
    public IReadOnlyList<long> GemmN { get; init; } = [64, 256, 1024, 4096];
    /// <summary>The GEMM grid's K values.</summary>
    public IReadOnlyList<long> GemmK { get; init; } = [64, 256, 1024, 4096];
    /// <summary>Shapes of more flops are skipped (their efficiency is taken from the largest measured one below them).</summary>
    public double MaxGemmFlops { get; init; } = 9e9;
    /// <summary>Larger shapes are not measured shared (they keep every core busy alone: sharing gains nothing).</summary>
    public double MaxSharedFlops { get; init; } = 2e8;
    /// <summary>Measure the GEMMs and blocks shared too: every virtual rank making the same calls at once (what a call
    /// takes from the node when virtual ranks share its cores).</summary>
    public bool Shared { get; init; } = true;
    /// <summary>Group sizes whose collectives are measured (each at most the virtual ranks).</summary>
    public IReadOnlyList<int> GroupSizes { get; init; } = [2, 4, 8];
    /// <summary>Collective buffer sizes, bytes.</summary>
    public IReadOnlyList<long> CollectiveBytes { get; init; } = [4 << 10, 64 << 10, 1 << 20, 8 << 20];
    /// <summary>The feed-forward block grid's rows (M).</summary>
    public IReadOnlyList<long> BlockRows { get; init; } = [1, 4, 16, 64, 256];
    /// <summary>The feed-forward block grid's shares of F (N).</summary>
    public IReadOnlyList<long> BlockShare { get; init; } = [64, 256, 1024, 4096];
    /// <summary>The feed-forward block grid's widths H (K).</summary>
    public IReadOnlyList<long> BlockHidden { get; init; } = [128, 512, 2048];
    /// <summary>The least time one measurement loops for, seconds (each is the best of three such loops).</summary>
    public double MinSeconds { get; init; } = 0.01;
}

/// <summary>
/// Measures this machine's CPU backend and writes what it found as a <see cref="ClusterSpec"/>: one node whose devices
/// are <c>virtualRanks</c> virtual ranks sharing one device's cores, or the processes of a multi-process group, one rank
/// each (<see cref="ClusterSpec.SharedCompute"/> either way): the fp32 GEMM curve and the feed-forward block's training
/// step on grids of shapes, each alone and made by every rank at once; the fixed cost of a queued operation, the memory
/// bandwidth (a device-to-device copy), the GeLU backward's rate, the bf16 GEMM rate relative to fp32; and α-β fits of
/// the collectives (all-reduce, all-gather, reduce-scatter, send/receive, the bucketed gradient average) on groups of
/// 2, 4 and 8 ranks, alone and among busy ranks. <c>Shardwise.Bench calibrate</c> runs it and saves the JSON; the
/// planner's predictions for this machine use it (docs/planner.md).
/// </summary>
public static partial class ClusterCalibration
{
    /// <summary>Measures (tens of seconds on a 2-core machine); <paramref name="log"/> receives a line per stage.</summary>
    public static ClusterSpec Measure(Device device, int virtualRanks, CalibrationOptions? options = null, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowHelper.Positive(virtualRanks);
        options ??= new CalibrationOptions();
        int sharedRanks = options.Shared ? virtualRanks : 0;
        var timers = new Timers(
            make => Alone(options.MinSeconds, make),
            make => Shared(sharedRanks, options.MinSeconds, make),
            measure => measure(),
            (p, loaded) => CollectiveTimes(device, p, loaded ? Math.Max(1, virtualRanks / p) : 1, loaded, options));
        return MeasureWith(device, $"{device} (measured, {virtualRanks} virtual ranks)", virtualRanks, sharedRanks, device.NumThreads,
            options, log ?? (_ => { }), timers);
    }

    // How one calibration times: a call alone, the same call made by every rank at once (the node's time per call), a
    // measurement of the device alone (its value for every rank), and collectives on groups of p ranks (alone or loaded).
    private sealed record Timers(Func<Func<Call>, double> Alone, Func<Func<Call>, double> Shared, Func<Func<double>, double> Lead,
        Func<int, bool, List<(CollectiveKind, List<(double Bytes, double Seconds)>)>> Collectives);

    private static ClusterSpec MeasureWith(Device device, string name, int ranks, int sharedRanks, int cores, CalibrationOptions options,
        Action<string> log, Timers timers)
    {
        using var stream = device.CreateStream();
        var samples = Grid(options.GemmM, options.GemmN, options.GemmK, 2, (m, n, k) => GemmCall(device, m, n, k), options, sharedRanks, timers);
        var curve = new GemmCurve(samples);
        double peak = samples.Max(s => s.Flops / s.Seconds);
        log($"GEMM: {samples.Count} shapes, best {peak / 1e9:0.#} GFLOP/s");
        double latency = timers.Lead(() => OpLatency(device, stream, options.MinSeconds));
        log($"per-operation cost {latency * 1e6:0.##} µs");
        double bandwidth = timers.Lead(() => CopyBandwidth(device, stream, options.MinSeconds));
        log($"memory bandwidth (copy) {bandwidth / 1e9:0.#} GB/s");
        double activation = timers.Lead(() => ActivationRate(device, stream, options.MinSeconds));
        log($"activation kernels (GeLU backward) {activation / 1e9:0.##} GB/s");
        double bf16Ratio = timers.Lead(() => Bf16Ratio(device, stream, options.MinSeconds));
        log($"bf16 / fp32 GEMM rate at 1024^3: {bf16Ratio:0.##}");
        var blockSamples = Grid(options.BlockRows, options.BlockShare, options.BlockHidden, 12, (rows, fr, h) => BlockCall(device, rows, fr, h),
            options, sharedRanks, timers);
        log($"FFN block training step: {blockSamples.Count} shapes");
        var fits = new List<CollectiveFit>();
        foreach (int p in options.GroupSizes.Where(p => p >= 2 && p <= ranks).Distinct())
        {
            foreach (bool loaded in new[] { false, true })
            {
                int groups = loaded ? Math.Max(1, ranks / p) : 1;
                foreach (var (kind, points) in timers.Collectives(p, loaded))
                {
                    var (alpha, beta) = Fit(points);
                    fits.Add(new CollectiveFit(kind, p, alpha, beta, Shared: loaded));
                    log($"{kind} on {p} ranks{(loaded ? $", {groups} group(s) among busy ranks (node time per collective)" : "")}: " +
                        $"{alpha * 1e6:0.#} µs + " + (beta > 0 ? $"{1 / beta / 1e9:0.##} GB/s" : "no measurable time per byte"));
                }
            }
        }
        long memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return new ClusterSpec
        {
            Name = name,
            Nodes = 1,
            DevicesPerNode = ranks,
            MemoryBytesPerDevice = memory / ranks,
            Fp32FlopsPerSecond = peak,
            Bf16FlopsPerSecond = peak * bf16Ratio,
            MemoryBandwidthBytesPerSecond = bandwidth,
            ActivationBytesPerSecond = activation,
            IntraNode = new LinkSpec(bandwidth / 2, latency),
            InterNode = new LinkSpec(bandwidth / 2, latency),
            GemmEfficiency = 1,
            OpLatencySeconds = latency,
            SharedCompute = true,
            CoresPerNode = cores,
            SharedRanks = Math.Max(1, sharedRanks),
            Gemm = curve,
            FeedForwardBlock = blockSamples.Count > 0 ? new GemmCurve(blockSamples) : null,
            Collectives = fits,
        };
    }

    // Every (m, n, k) of the grid whose flops (flopsPerPoint · m · n · k) are at most MaxGemmFlops, timed alone and, when
    // ranks share the node and the flops are at most MaxSharedFlops, shared.
    private static List<GemmSample> Grid(IReadOnlyList<long> ms, IReadOnlyList<long> ns, IReadOnlyList<long> ks, double flopsPerPoint,
        Func<long, long, long, Call> make, CalibrationOptions options, int sharedRanks, Timers timers)
    {
        var samples = new List<GemmSample>();
        foreach (long m in ms)
            foreach (long n in ns)
                foreach (long k in ks)
                {
                    double flops = flopsPerPoint * m * n * k;
                    if (flops > options.MaxGemmFlops) continue;
                    double t = timers.Alone(() => make(m, n, k));
                    double t1 = sharedRanks > 1 && flops <= options.MaxSharedFlops ? timers.Shared(() => make(m, n, k)) : 0;
                    samples.Add(new GemmSample(m, n, k, t, t1));
                }
        return samples;
    }

    // A call to time: its stream, the call, and what to dispose afterwards.
    private sealed record Call(DeviceStream Stream, Action Run, IDisposable[] Owned) : IDisposable
    {
        public void Dispose()
        {
            Stream.Synchronize();
            foreach (var d in Owned.Reverse()) d.Dispose();
        }
    }

    private static Call GemmCall(Device device, long m, long n, long k)
    {
        var stream = device.CreateStream();
        var a = device.Allocate<float>(m * k);
        var b = device.Allocate<float>(k * n);
        var c = device.Allocate<float>(m * n);
        a.Fill(0.5f, stream);
        b.Fill(0.25f, stream);
        var (av, bv, cv) = (a.AsMatrix(m, k), b.AsMatrix(k, n), c.AsMatrix(m, n));
        return new Call(stream, () => Gemm.Multiply(stream, av, bv, cv), [stream, a, b, c]);
    }

    // One training step of a feed-forward block on a group of one rank: the forward keeping its activations, the backward.
    private static Call BlockCall(Device device, long rows, long fr, long h)
    {
        var group = ProcessGroup.CreateLocal(device, 1);
        var ctx = group.Ranks[0];
        var rng = new Random(7);
        float[] R(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5); return a; }
        var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(R(h * fr), h, fr), WeightSource.FromArray(R(fr), 1, fr),
            WeightSource.FromArray(R(fr * h), fr, h), WeightSource.FromArray(R(h), 1, h));
        var grads = new FeedForwardGradients(ctx.Device, ffn);
        var x = ctx.Device.Allocate<float>(rows * h);
        var y = ctx.Device.Allocate<float>(rows * h);
        var dy = ctx.Device.Allocate<float>(rows * h);
        var dx = ctx.Device.Allocate<float>(rows * h);
        x.CopyFrom(R(rows * h), ctx.Stream);
        dy.CopyFrom(R(rows * h), ctx.Stream);
        var (xv, yv, dyv, dxv) = (x.AsMatrix(rows, h), y.AsMatrix(rows, h), dy.AsMatrix(rows, h), dx.AsMatrix(rows, h));
        return new Call(ctx.Stream, () =>
        {
            using var saved = ffn.ForwardTraining(xv, yv);
            ffn.Backward(xv, dyv, dxv, grads, saved);
        }, [group, ffn, grads, x, y, dy, dx]);
    }

    private static double Alone(double minSeconds, Func<Call> make)
    {
        using var call = make();
        call.Run();
        call.Stream.Synchronize();
        return Best(3, () => Loop(minSeconds, call.Stream, call.Run));
    }

    // The node's time per call with `ranks` threads, each with its own stream, making the same calls at once: the wall
    // time of all of them (the same number of calls each, sized from one rank's solo time) over all their calls.
    private static double Shared(int ranks, double minSeconds, Func<Call> make)
    {
        var calls = new Call[ranks];
        try
        {
            for (int r = 0; r < ranks; r++) calls[r] = make();
            foreach (var c in calls) { c.Run(); c.Stream.Synchronize(); }
            var clock = Stopwatch.StartNew();
            calls[0].Run();
            calls[0].Stream.Synchronize();
            int n = (int)Math.Clamp(Math.Ceiling(minSeconds / ranks / Math.Max(clock.Elapsed.TotalSeconds, 1e-7)), 2, 100000);
            double best = double.MaxValue;
            for (int t = 0; t < 3; t++)
            {
                using var start = new Barrier(ranks + 1);
                var threads = calls.Select(c => new Thread(() =>
                {
                    start.SignalAndWait();
                    for (int i = 0; i < n; i++) c.Run();
                    c.Stream.Synchronize();
                })).ToArray();
                foreach (var th in threads) th.Start();
                start.SignalAndWait();
                clock.Restart();
                foreach (var th in threads) th.Join();
                best = Math.Min(best, clock.Elapsed.TotalSeconds / (n * (double)ranks));
            }
            return best;
        }
        finally
        {
            foreach (var c in calls) c?.Dispose();
        }
    }

    // The cost of one queued operation: a 1 × 1 × 1 GEMM.
    private static double OpLatency(Device device, DeviceStream stream, double minSeconds)
    {
        using var a = device.Allocate<float>(1);
        using var b = device.Allocate<float>(1);
        using var c = device.Allocate<float>(1);
        a.Fill(1f, stream);
        b.Fill(1f, stream);
        var (av, bv, cv) = (a.AsMatrix(1, 1), b.AsMatrix(1, 1), c.AsMatrix(1, 1));
        return Best(3, () => Loop(minSeconds, stream, () => Gemm.Multiply(stream, av, bv, cv)));
    }

    // Seconds per call: calls repeated until minSeconds have passed, the stream synchronized at the end.
    private static double Loop(double minSeconds, DeviceStream stream, Action call)
    {
        long calls = 0;
        var clock = Stopwatch.StartNew();
        do
        {
            for (int i = 0; i < 4; i++) call();
            calls += 4;
            stream.Synchronize();
        } while (clock.Elapsed.TotalSeconds < minSeconds);
        return clock.Elapsed.TotalSeconds / calls;
    }

    private static double Best(int tries, Func<double> measure)
    {
        double best = double.MaxValue;
        for (int i = 0; i < tries; i++) best = Math.Min(best, measure());
        return best;
    }

    private static double CopyBandwidth(Device device, DeviceStream stream, double minSeconds)
    {
        const long n = 16L << 20; // 64 MiB of floats: beyond the caches
        using var a = device.Allocate<float>(n);
        using var b = device.Allocate<float>(n);
        a.Fill(1f, stream);
        b.Fill(2f, stream);
        double t = Best(3, () => Loop(minSeconds, stream, () => a.CopyTo(b, stream, 0, 0, n)));
        return 2.0 * n * sizeof(float) / t; // read and write
    }

    private static double ActivationRate(Device device, DeviceStream stream, double minSeconds)
    {
        const long n = 1L << 18;
        using var x = device.Allocate<float>(n);
        using var dy = device.Allocate<float>(n);
        using var dx = device.Allocate<float>(n);
        x.Fill(0.5f, stream);
        dy.Fill(0.25f, stream);
        double t = Best(3, () => Loop(minSeconds, stream, () => Activations.GeluBackward(stream, x, dy, dx, n)));
        return 3.0 * n * sizeof(float) / t;
    }

    private static double Bf16Ratio(Device device, DeviceStream stream, double minSeconds)
    {
        const long s = 1024;
        double f32 = Alone(minSeconds, () => GemmCall(device, s, s, s));
        using var a = device.Allocate<BFloat16>(s * s);
        using var b = device.Allocate<BFloat16>(s * s);
        using var c = device.Allocate<float>(s * s);
        a.Clear(stream);
        b.Clear(stream);
        var (av, bv, cv) = (a.AsMatrix(s, s), b.AsMatrix(s, s), c.AsMatrix(s, s));
        Gemm.Multiply(stream, av, bv, cv);
        stream.Synchronize();
        double bf16 = Best(3, () => Loop(minSeconds, stream, () => Gemm.Multiply(stream, av, bv, cv)));
        return f32 / bf16;
    }

    // Per kind: (bytes, seconds) points for `groups` groups of p virtual ranks making the same collectives at once; each
    // time is the node's time per collective (the slowest rank's wall time over the calls of one group, divided by the
    // groups), best of three. Loaded: every rank runs a small GEMM before each collective, as ranks of a training step
    // do, and the time of the GEMMs alone (measured the same way) is taken off: what a collective adds to a node whose
    // ranks share its cores (the collective's work, and the wait for its members, woken among busy ranks).
    private static List<(CollectiveKind, List<(double Bytes, double Seconds)>)> CollectiveTimes(Device device, int p, int groups, bool loaded,
        CalibrationOptions o)
    {
        var result = new List<(CollectiveKind, List<(double, double)>)>();
        var worlds = Enumerable.Range(0, groups).Select(_ => ProcessGroup.CreateLocal(device, p, TimeSpan.FromSeconds(120))).ToArray();
        try
        {
            foreach (var kind in Enum.GetValues<CollectiveKind>())
            {
                var points = new List<(double, double)>();
                foreach (long bytes in o.CollectiveBytes)
                {
                    long n = Math.Max(p, bytes / sizeof(float) / p * p);
                    var times = new double[groups * p];
                    var start = new Barrier(groups * p);
                    int calls = 0;
                    var runners = worlds.Select((world, g) => new Thread(() => Spmd.Run(world, ctx =>
                    {
                        using var send = ctx.Device.Allocate<float>(n);
                        using var recv = ctx.Device.Allocate<float>(n);
                        send.Fill(1f, ctx.Stream);
                        recv.Fill(0f, ctx.Stream);
                        using var reducer = kind == CollectiveKind.GradientAverage ? new GradientReducer(ctx, [send]) : null;
                        using var fa = ctx.Device.Allocate<float>(LoadRows * LoadCols);
                        using var fb = ctx.Device.Allocate<float>(LoadCols * LoadCols);
                        using var fc = ctx.Device.Allocate<float>(LoadRows * LoadCols);
                        fa.Fill(0.5f, ctx.Stream);
                        fb.Fill(0.25f, ctx.Stream);
                        bool collective = true;
                        void Call()
                        {
                            if (loaded)
                                Gemm.Multiply(ctx.Stream, fa.AsMatrix(LoadRows, LoadCols), fb.AsMatrix(LoadCols, LoadCols), fc.AsMatrix(LoadRows, LoadCols));
                            if (collective) Collective(ctx, kind, send, recv, reducer, n);
                        }
                        Call();
                        ctx.Synchronize();
                        // How many calls fill MinSeconds: group 0's rank 0 times two calls alone; every rank then makes that many.
                        start.SignalAndWait();
                        if (g == 0 && ctx.Rank == 0)
                        {
                            var probe = Stopwatch.StartNew();
                            Call();
                            Call();
                            ctx.Synchronize();
                            calls = (int)Math.Clamp(Math.Ceiling(o.MinSeconds / Math.Max(probe.Elapsed.TotalSeconds / 2, 1e-7)), 1, 100000);
                        }
                        else if (g == 0) { Call(); Call(); ctx.Synchronize(); }
                        start.SignalAndWait();
                        double Time()
                        {
                            double best = double.MaxValue;
                            for (int t = 0; t < 3; t++)
                            {
                                start.SignalAndWait();
                                var clock = Stopwatch.StartNew();
                                for (int i = 0; i < calls; i++) Call();
                                ctx.Synchronize();
                                double wall = clock.Elapsed.TotalSeconds;
                                start.SignalAndWait();
                                best = Math.Min(best, wall);
                            }
                            return best;
                        }
                        double with = Time();
                        collective = false;
                        double without = loaded ? Time() : 0;
                        times[g * p + ctx.Rank] = Math.Max(with - without, 1e-9 * calls) / calls / groups;
                    }))).ToArray();
                    foreach (var r in runners) r.Start();
                    foreach (var r in runners) r.Join();
                    points.Add((n * (double)sizeof(float), times.Max()));
                }
                result.Add((kind, points));
            }
        }
        finally
        {
            foreach (var w in worlds) w.Dispose();
        }
        return result;
    }

    private const long LoadRows = 32, LoadCols = 256; // the GEMM each busy rank runs between collectives (~4 MFLOP)

    // One collective of `kind` on n floats (CollectiveKind's sizes) in ctx's group.
    private static void Collective(RankContext ctx, CollectiveKind kind, DeviceBuffer<float> send, DeviceBuffer<float> recv, GradientReducer? reducer, long n)
    {
        int p = ctx.WorldSize;
        switch (kind)
        {
            case CollectiveKind.AllReduce: ctx.AllReduce(send, recv, n); break;
            case CollectiveKind.AllGather: ctx.AllGather(send, recv, n / p); break;
            case CollectiveKind.ReduceScatter: ctx.ReduceScatter(send, recv, n / p); break;
            case CollectiveKind.SendRecv:
                int right = (ctx.Rank + 1) % p, left = (ctx.Rank + p - 1) % p;
                ctx.SendRecv(send, right, recv, left, n, n);
                break;
            default:
                reducer!.MarkReady(0);
                reducer.Finish();
                break;
        }
    }

    // t = α + β·n, least squares weighted by 1/t² (relative error), α and β clamped at zero.
    private static (double Alpha, double Beta) Fit(List<(double Bytes, double Seconds)> points)
    {
        double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
        foreach (var (x, y) in points)
        {
            double w = 1 / (y * y);
            sw += w; sx += w * x; sy += w * y; sxx += w * x * x; sxy += w * x * y;
        }
        double det = sw * sxx - sx * sx;
        double beta = det > 0 ? (sw * sxy - sx * sy) / det : 0;
        double alpha = (sy - beta * sx) / sw;
        if (beta < 0) { beta = 0; alpha = sy / sw; }
        if (alpha < 0) { alpha = 0; beta = sxy / sxx; }
        return (alpha, beta);
    }
}
