using System.Diagnostics;

namespace Shardwise.Parallel;

public static partial class ClusterCalibration
{
    /// <summary>
    /// Measures a node whose devices are the processes of <paramref name="world"/> (one rank per process, each with its own
    /// CPU device, all on this machine: <c>shardwise launch -n N -- ...</c>): every process calls it, as a collective of
    /// the group, and every process gets the same description. A call alone is timed by rank 0 while the others wait; a
    /// call shared is made by every rank at once (the node's time per call: the slowest rank's wall time over all
    /// ranks' calls); collectives run on sub-groups of consecutive ranks of each <see cref="CalibrationOptions.GroupSizes"/>
    /// (alone: one group, the others waiting; loaded: every group at once, every rank running a small GEMM before each
    /// collective). The world's timeout must exceed the longest single measurement (seconds).
    /// </summary>
    /// <param name="world">A multi-process group (<see cref="ProcessGroup.IsMultiProcess"/>), every process on this node.</param>
    /// <param name="options">What to measure; null: the defaults.</param>
    /// <param name="log">Receives a line per stage on rank 0 (the other ranks log nothing).</param>
    public static ClusterSpec Measure(ProcessGroup world, CalibrationOptions? options = null, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(world);
        if (!world.IsMultiProcess)
            throw new ArgumentException(
                $"{nameof(world)} is an in-process group of {world.WorldSize} virtual ranks; expected a multi-process group (one rank per process). " +
                "Measure virtual ranks with Measure(device, virtualRanks).", nameof(world));
        options ??= new CalibrationOptions();
        var ctx = world.Local;
        var device = ctx.Device;
        int ranks = world.WorldSize, sharedRanks = options.Shared ? ranks : 0;
        using var exchange = new Exchange(ctx);
        var timers = new Timers(
            make => exchange.FromLead(() => Alone(options.MinSeconds, make)),
            make => SharedAcross(exchange, options.MinSeconds, make),
            exchange.FromLead,
            (p, loaded) => ProcessCollectiveTimes(ctx, exchange, p, loaded, options));
        return MeasureWith(device, $"{device} (measured, {ranks} processes)", ranks, sharedRanks, Environment.ProcessorCount, options,
            ctx.Rank == 0 && log is not null ? log : _ => { }, timers);
    }

    // Values from every rank of the world, through an all-gather of doubles (also the ranks' meeting point).
    private sealed class Exchange(RankContext ctx) : IDisposable
    {
        private readonly DeviceBuffer<double> _one = ctx.Device.Allocate<double>(1);
        private readonly DeviceBuffer<double> _all = ctx.Device.Allocate<double>(ctx.WorldSize);

        public int Ranks => ctx.WorldSize;

        public double[] Gather(double value)
        {
            _one.CopyFrom([value], ctx.Stream);
            ctx.AllGather(_one, _all);
            return _all.ToArray(ctx.Stream);
        }

        // Rank 0 measures while the others wait in the all-gather; every rank gets rank 0's value.
        public double FromLead(Func<double> measure)
        {
            Gather(0); // everyone idle before rank 0 starts
            return Gather(ctx.Rank == 0 ? measure() : 0)[0];
        }

        public double Max(double value) => Gather(value).Max();

        public void Dispose()
        {
            _all.Dispose();
            _one.Dispose();
        }
    }

    // The node's time per call with every rank making the same calls at once (as Shared, one rank per process).
    private static double SharedAcross(Exchange exchange, double minSeconds, Func<Call> make)
    {
        using var call = make();
        call.Run();
        call.Stream.Synchronize();
        int ranks = exchange.Ranks;
        double one = exchange.FromLead(() =>
        {
            var probe = Stopwatch.StartNew();
            call.Run();
            call.Stream.Synchronize();
            return probe.Elapsed.TotalSeconds;
        });
        int n = (int)Math.Clamp(Math.Ceiling(minSeconds / ranks / Math.Max(one, 1e-7)), 2, 100000);
        double best = double.MaxValue;
        for (int t = 0; t < 3; t++)
        {
            exchange.Gather(0);
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) call.Run();
            call.Stream.Synchronize();
            best = Math.Min(best, exchange.Max(clock.Elapsed.TotalSeconds) / (n * (double)ranks));
        }
        return best;
    }

    // Per kind: (bytes, seconds) points for collectives on groups of p consecutive ranks (as CollectiveTimes): alone, the
    // first group while the others wait; loaded, every whole group at once, each rank running a small GEMM before each
    // collective, the GEMMs' own time taken off.
    private static List<(CollectiveKind, List<(double Bytes, double Seconds)>)> ProcessCollectiveTimes(RankContext world, Exchange exchange, int p,
        bool loaded, CalibrationOptions o)
    {
        int groups = loaded ? Math.Max(1, world.WorldSize / p) : 1;
        using var split = world.Group.Split(r => r / p < groups ? r / p : ProcessGroup.NoColor);
        var ctx = split[world.Rank];
        var result = new List<(CollectiveKind, List<(double, double)>)>();
        foreach (var kind in Enum.GetValues<CollectiveKind>())
        {
            var points = new List<(double, double)>();
            foreach (long bytes in o.CollectiveBytes)
            {
                long n = Math.Max(p, bytes / sizeof(float) / p * p);
                using var send = world.Device.Allocate<float>(n);
                using var recv = world.Device.Allocate<float>(n);
                using var fa = world.Device.Allocate<float>(LoadRows * LoadCols);
                using var fb = world.Device.Allocate<float>(LoadCols * LoadCols);
                using var fc = world.Device.Allocate<float>(LoadRows * LoadCols);
                using var reducer = ctx is not null && kind == CollectiveKind.GradientAverage ? new GradientReducer(ctx, [send]) : null;
                send.Fill(1f, world.Stream);
                recv.Fill(0f, world.Stream);
                fa.Fill(0.5f, world.Stream);
                fb.Fill(0.25f, world.Stream);
                bool collective = true;
                void Call()
                {
                    if (ctx is null) return;
                    if (loaded)
                        Gemm.Multiply(world.Stream, fa.AsMatrix(LoadRows, LoadCols), fb.AsMatrix(LoadCols, LoadCols), fc.AsMatrix(LoadRows, LoadCols));
                    if (collective) Collective(ctx, kind, send, recv, reducer, n);
                }
                Call();
                world.Synchronize();
                // How many calls fill MinSeconds: the first group's rank 0 times two calls (its group making them too).
                exchange.Gather(0);
                var probe = Stopwatch.StartNew();
                Call();
                Call();
                world.Synchronize();
                double two = exchange.Gather(probe.Elapsed.TotalSeconds)[0];
                int calls = (int)Math.Clamp(Math.Ceiling(o.MinSeconds / Math.Max(two / 2, 1e-7)), 1, 100000);
                double Time()
                {
                    double best = double.MaxValue;
                    for (int t = 0; t < 3; t++)
                    {
                        exchange.Gather(0);
                        var clock = Stopwatch.StartNew();
                        for (int i = 0; i < calls; i++) Call();
                        world.Synchronize();
                        best = Math.Min(best, clock.Elapsed.TotalSeconds);
                    }
                    return best;
                }
                double with = Time();
                collective = false;
                double without = loaded ? Time() : 0;
                double mine = ctx is null ? 0 : Math.Max(with - without, 1e-9 * calls) / calls / groups;
                points.Add((n * (double)sizeof(float), exchange.Max(mine)));
            }
            result.Add((kind, points));
        }
        return result;
    }
}
