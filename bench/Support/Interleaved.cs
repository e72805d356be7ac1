using System.Diagnostics;

namespace Shardwise.Bench.Support;

/// <summary>How long and how often an <see cref="Interleaved"/> measurement runs.</summary>
/// <param name="MinRounds">At least this many rounds.</param>
/// <param name="MaxRounds">At most this many rounds.</param>
/// <param name="BudgetMs">Rounds are added (within the limits) until about this much time is spent.</param>
/// <param name="SliceMs">A variant whose call is shorter runs repeatedly within its turn of a round, to about this long.</param>
/// <param name="MaxReps">At most this many calls per turn.</param>
/// <param name="WarmupMs">A variant whose call is shorter than a slice is first called repeatedly for this long (the JIT
/// moves its managed path to optimised code meanwhile: tier-up waits for 100 ms without new tier-0 compilations, then
/// compiles in the background), so the rounds time the steady state, not the first tier.</param>
internal sealed record InterleaveSettings(int MinRounds = 7, int MaxRounds = 25, double BudgetMs = 400, double SliceMs = 2, int MaxReps = 100_000,
    double WarmupMs = 300)
{
    /// <summary>Exactly <paramref name="rounds"/> rounds.</summary>
    public static InterleaveSettings Fixed(int rounds, double sliceMs = 2) => new(rounds, rounds, 0, sliceMs);
}

/// <summary>
/// Compares variants of an operation on a noisy machine: every round runs each variant once (its turn: the call
/// repeated to ~<see cref="InterleaveSettings.SliceMs"/> when it is short) in the order <see cref="RoundStats.Order"/>
/// gives for that round, and records the time per call. Ratios are then formed per round and summarised as the median
/// with the spread (<see cref="InterleavedResult.Ratio"/>), so a slow window of the machine slows the variants of one
/// round alike instead of one variant's whole measurement. A null variant (e.g. a baseline library that is not
/// installed) is skipped and its times are NaN.
/// </summary>
internal static class Interleaved
{
    /// <summary>Calibrates and runs the rounds.</summary>
    public static InterleavedResult Measure(IReadOnlyList<Action?> variants, InterleaveSettings settings)
    {
        int[] reps = Calibrate(variants, settings);
        double roundMs = 0;
        int rounds = 0;
        var times = new List<double[]>();
        var total = Stopwatch.StartNew();
        while (rounds < settings.MaxRounds && (rounds < settings.MinRounds || total.Elapsed.TotalMilliseconds + roundMs <= settings.BudgetMs))
        {
            var round = RunRound(variants, reps, rounds);
            times.Add(round);
            rounds++;
            roundMs = total.Elapsed.TotalMilliseconds / rounds;
        }
        var matrix = new double[rounds, variants.Count];
        for (int r = 0; r < rounds; r++)
            for (int v = 0; v < variants.Count; v++)
                matrix[r, v] = times[r][v];
        return new InterleavedResult(matrix, reps);
    }

    /// <summary>
    /// Calls per turn: each variant is called once (warm-up), then, when that call is shorter than a slice, repeatedly
    /// for <see cref="InterleaveSettings.WarmupMs"/> (JIT tier-up), then timed over at least 1 ms of calls; a call
    /// shorter than the slice is repeated to about the slice. A warm-up call of 10 slices or more means one call per
    /// turn without the timed calls. 0 for a null variant.
    /// </summary>
    public static int[] Calibrate(IReadOnlyList<Action?> variants, InterleaveSettings settings)
    {
        var reps = new int[variants.Count];
        for (int v = 0; v < variants.Count; v++)
        {
            if (variants[v] is not { } run) continue;
            long w0 = Stopwatch.GetTimestamp();
            run();
            double first = Stopwatch.GetElapsedTime(w0).TotalMilliseconds;
            if (first >= 10 * settings.SliceMs)
            {
                reps[v] = 1; // a call this long runs once per turn whatever its first-call overhead was
                continue;
            }
            if (first < settings.SliceMs)
            {
                long wu = Stopwatch.GetTimestamp();
                while (Stopwatch.GetElapsedTime(wu).TotalMilliseconds < settings.WarmupMs) run();
            }
            int calls = 0;
            long t0 = Stopwatch.GetTimestamp();
            double elapsed;
            do
            {
                run();
                calls++;
                elapsed = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            }
            while (elapsed < 1 && calls < settings.MaxReps);
            double once = elapsed / calls;
            reps[v] = (int)Math.Clamp(Math.Ceiling(settings.SliceMs / Math.Max(once, 1e-6)), 1, settings.MaxReps);
        }
        return reps;
    }

    /// <summary>Round <paramref name="round"/>: every variant's turn in rotating order; the time per call of each (NaN for null).</summary>
    public static double[] RunRound(IReadOnlyList<Action?> variants, int[] reps, int round)
    {
        var times = new double[variants.Count];
        Array.Fill(times, double.NaN);
        foreach (int v in RoundStats.Order(round, variants.Count))
        {
            if (variants[v] is not { } run) continue;
            int n = reps[v];
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < n; i++) run();
            times[v] = Stopwatch.GetElapsedTime(t0).TotalSeconds / n;
        }
        return times;
    }
}

/// <summary>The per-call times of an interleaved measurement: <c>Seconds[round, variant]</c>.</summary>
internal sealed class InterleavedResult(double[,] seconds, int[] reps)
{
    /// <summary>Seconds per call, per round and variant (NaN for a skipped variant).</summary>
    public double[,] Seconds { get; } = seconds;

    /// <summary>Calls per turn, per variant.</summary>
    public int[] Reps { get; } = reps;

    /// <summary>Rounds run.</summary>
    public int Rounds => Seconds.GetLength(0);

    /// <summary>True when variant <paramref name="v"/> ran.</summary>
    public bool Ran(int v) => Reps[v] > 0;

    /// <summary>The per-call time of variant <paramref name="v"/> in milliseconds over the rounds.</summary>
    public Spread Milliseconds(int v) => Scale(RoundStats.Summarize(RoundStats.Column(Seconds, v)), 1e3);

    /// <summary>The per-call time of variant <paramref name="v"/> in microseconds over the rounds.</summary>
    public Spread Microseconds(int v) => Scale(RoundStats.Summarize(RoundStats.Column(Seconds, v)), 1e6);

    /// <summary>Per round: time of <paramref name="numerator"/> / time of <paramref name="denominator"/>; median and spread.</summary>
    public Spread Ratio(int numerator, int denominator) => RoundStats.Ratio(Seconds, numerator, denominator);

    private static Spread Scale(Spread s, double f) => new(s.Median * f, s.Q1 * f, s.Q3 * f, s.Min * f, s.Max * f, s.Count);
}
