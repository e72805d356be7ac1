using System.Globalization;

namespace Shardwise.Bench.Support;

/// <summary>
/// A summary of per-round values (times or ratios): the median, the interquartile range (Q1..Q3, linear interpolation
/// between order statistics) and the extremes, over <see cref="Count"/> rounds.
/// </summary>
internal readonly record struct Spread(double Median, double Q1, double Q3, double Min, double Max, int Count)
{
    /// <summary>"1.02 [0.97..1.05]": the median and min..max.</summary>
    public string Format(string format = "0.00") =>
        string.Create(CultureInfo.InvariantCulture, $"{Median.ToString(format, CultureInfo.InvariantCulture)} [{Min.ToString(format, CultureInfo.InvariantCulture)}..{Max.ToString(format, CultureInfo.InvariantCulture)}]");

    /// <summary>"Q1..Q3": the interquartile range.</summary>
    public string FormatIqr(string format = "0.00") =>
        $"{Q1.ToString(format, CultureInfo.InvariantCulture)}..{Q3.ToString(format, CultureInfo.InvariantCulture)}";
}

/// <summary>
/// The statistics of interleaved measurements (no timing here, so that tests can check them on made-up numbers):
/// the order in which the variants of a round run, and per-round ratios summarised as their median with the spread.
/// </summary>
internal static class RoundStats
{
    /// <summary>
    /// The order of <paramref name="count"/> variants in round <paramref name="round"/>: rounds go through the
    /// <paramref name="count"/> cyclic shifts of 0, 1, …, count−1, then the cyclic shifts of the reversed order, and repeat
    /// (a cycle of 2·count rounds, 2 for two variants). Over one cycle every variant runs in every position equally often
    /// and, from three variants on, right after at least two different others; for two and three variants the cycle is
    /// every possible order.
    /// </summary>
    public static int[] Order(int round, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(round);
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var order = new int[count];
        int shift = round % count;
        bool reversed = round / count % 2 == 1;
        for (int i = 0; i < count; i++)
            order[i] = reversed ? ((shift - i) % count + count) % count : (shift + i) % count;
        return order;
    }

    /// <summary>The rounds of one full rotation cycle for <paramref name="count"/> variants (see <see cref="Order"/>).</summary>
    public static int CycleLength(int count) => count <= 2 ? count : 2 * count;

    /// <summary>
    /// Per round r: <c>times[r, numerator] / times[r, denominator]</c>, for the rounds where both are measured (finite and
    /// positive). The ratio is formed within a round, so a round in which the machine was busier slows both alike.
    /// </summary>
    public static double[] RatiosPerRound(double[,] times, int numerator, int denominator)
    {
        var ratios = new List<double>(times.GetLength(0));
        for (int r = 0; r < times.GetLength(0); r++)
        {
            double a = times[r, numerator], b = times[r, denominator];
            if (double.IsFinite(a) && double.IsFinite(b) && a > 0 && b > 0) ratios.Add(a / b);
        }
        return [.. ratios];
    }

    /// <summary>Column <paramref name="variant"/> of <paramref name="times"/>, its finite values only.</summary>
    public static double[] Column(double[,] times, int variant)
    {
        var values = new List<double>(times.GetLength(0));
        for (int r = 0; r < times.GetLength(0); r++)
            if (double.IsFinite(times[r, variant])) values.Add(times[r, variant]);
        return [.. values];
    }

    /// <summary>The median, quartiles and extremes of <paramref name="values"/> (NaN everywhere when empty).</summary>
    public static Spread Summarize(ReadOnlySpan<double> values)
    {
        if (values.IsEmpty) return new Spread(double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, 0);
        var sorted = values.ToArray();
        Array.Sort(sorted);
        return new Spread(Quantile(sorted, 0.5), Quantile(sorted, 0.25), Quantile(sorted, 0.75), sorted[0], sorted[^1], sorted.Length);
    }

    /// <summary>The median of per-round ratios <c>times[r, numerator] / times[r, denominator]</c> with its spread.</summary>
    public static Spread Ratio(double[,] times, int numerator, int denominator) =>
        Summarize(RatiosPerRound(times, numerator, denominator));

    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count).</summary>
    public static double Median(ReadOnlySpan<double> values) => Summarize(values).Median;

    /// <summary>
    /// The <paramref name="q"/>-quantile of ascending <paramref name="sorted"/> by linear interpolation between order
    /// statistics (position q·(n−1); for q = 0.5 the usual median).
    /// </summary>
    public static double Quantile(ReadOnlySpan<double> sorted, double q)
    {
        if (sorted.IsEmpty) return double.NaN;
        double position = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(position);
        int hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (position - lo) * (sorted[hi] - sorted[lo]);
    }
}
