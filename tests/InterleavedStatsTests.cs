using System.Globalization;
using Shardwise.Bench.Support;

namespace Shardwise.Tests;

/// <summary>
/// The statistics and the round runner of the benchmarks' interleaving harness (bench/Support/RoundStats.cs and
/// Interleaved.cs, compiled into this project): the rotating order covers every position (and, for 2 and 3 variants,
/// every order), ratios are the median of per-round ratios (not a ratio of medians), the spread is the quartiles and
/// extremes, and a round runs its variants in that order. Made-up numbers and counting actions only: nothing here
/// measures speed.
/// </summary>
public class InterleavedStatsTests
{
    [TestCase(2)]
    [TestCase(3)]
    public void OneCycleOfTwoOrThreeVariantsIsEveryOrder(int count)
    {
        var seen = Enumerable.Range(0, RoundStats.CycleLength(count))
            .Select(r => string.Join(",", RoundStats.Order(r, count)))
            .ToHashSet();
        var all = Permutations(Enumerable.Range(0, count).ToArray()).Select(p => string.Join(",", p)).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(all), $"one cycle of {RoundStats.CycleLength(count)} rounds must run every order of {count} variants");
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    [TestCase(4)]
    [TestCase(5)]
    [TestCase(8)]
    public void OverOneCycleEveryVariantRunsInEveryPositionEquallyOften(int count)
    {
        int cycle = RoundStats.CycleLength(count);
        var positions = new int[count, count];
        for (int r = 0; r < cycle; r++)
        {
            var order = RoundStats.Order(r, count);
            Assert.That(order, Is.EquivalentTo(Enumerable.Range(0, count)), $"round {r} is not an order of the {count} variants");
            for (int i = 0; i < count; i++) positions[order[i], i]++;
            Assert.That(RoundStats.Order(r + cycle, count), Is.EqualTo(order), "the orders must repeat with the cycle");
        }
        for (int v = 0; v < count; v++)
            for (int i = 0; i < count; i++)
                Assert.That(positions[v, i], Is.EqualTo(cycle / count), $"variant {v} ran at position {i} {positions[v, i]} times in {cycle} rounds");
    }

    [TestCase(3)]
    [TestCase(4)]
    [TestCase(6)]
    public void NoVariantAlwaysRunsRightAfterTheSameOther(int count)
    {
        var predecessors = Enumerable.Range(0, count).Select(_ => new HashSet<int>()).ToArray();
        for (int r = 0; r < RoundStats.CycleLength(count); r++)
        {
            var order = RoundStats.Order(r, count);
            for (int i = 1; i < count; i++) predecessors[order[i]].Add(order[i - 1]);
        }
        for (int v = 0; v < count; v++)
            Assert.That(predecessors[v], Has.Count.GreaterThanOrEqualTo(2), $"variant {v} always ran after {string.Join(",", predecessors[v])}");
    }

    [Test]
    public void RatioIsTheMedianOfPerRoundRatiosNotTheRatioOfMedians()
    {
        // The machine's speed changes from round to round (ours: 1..5 s); the other variant is slower by a per-round
        // factor. The per-round ratios are exactly those factors: median 1.1. The ratio of the medians would be 2.7 / 3 = 0.9.
        double[] ours = [1, 2, 3, 4, 5];
        double[] factor = [1.3, 1.0, 0.9, 1.2, 1.1];
        var times = new double[5, 2];
        for (int r = 0; r < 5; r++)
        {
            times[r, 0] = ours[r];
            times[r, 1] = ours[r] * factor[r];
        }
        var s = RoundStats.Ratio(times, numerator: 1, denominator: 0);
        Assert.Multiple(() =>
        {
            Assert.That(s.Count, Is.EqualTo(5));
            Assert.That(s.Median, Is.EqualTo(1.1).Within(1e-12));
            Assert.That(s.Min, Is.EqualTo(0.9).Within(1e-12));
            Assert.That(s.Max, Is.EqualTo(1.3).Within(1e-12));
            Assert.That(s.Q1, Is.EqualTo(1.0).Within(1e-12));
            Assert.That(s.Q3, Is.EqualTo(1.2).Within(1e-12));
            Assert.That(s.Format(), Is.EqualTo("1.10 [0.90..1.30]"));
            Assert.That(s.FormatIqr(), Is.EqualTo("1.00..1.20"));
        });
    }

    [Test]
    public void PerRoundRatiosOnRandomTimesAreThoseRoundsQuotientsAndTheirMedian()
    {
        var rng = new Random(Environment.TickCount);
        int rounds = rng.Next(5, 40);
        var times = new double[rounds, 3];
        for (int r = 0; r < rounds; r++)
            for (int v = 0; v < 3; v++)
                times[r, v] = rng.NextDouble() * 10 + 0.01;
        var ratios = RoundStats.RatiosPerRound(times, 2, 1);
        var expected = Enumerable.Range(0, rounds).Select(r => times[r, 2] / times[r, 1]).ToArray();
        Assert.That(ratios, Is.EqualTo(expected));

        var sorted = expected.Order().ToArray();
        double median = rounds % 2 == 1 ? sorted[rounds / 2] : (sorted[rounds / 2 - 1] + sorted[rounds / 2]) / 2;
        var s = RoundStats.Ratio(times, 2, 1);
        Assert.That(s.Median, Is.EqualTo(median).Within(1e-12 * median));
        Assert.That((s.Min, s.Max), Is.EqualTo((sorted[0], sorted[^1])));
        Assert.That(s.Q1, Is.InRange(sorted[0], s.Median));
        Assert.That(s.Q3, Is.InRange(s.Median, sorted[^1]));
    }

    [Test]
    public void RoundsWhereAVariantDidNotRunAreLeftOut()
    {
        var times = new double[4, 2] { { 1, 2 }, { double.NaN, 2 }, { 2, 0 }, { 2, 6 } };
        var s = RoundStats.Ratio(times, 1, 0);
        Assert.That((s.Count, s.Min, s.Max, s.Median), Is.EqualTo((2, 2.0, 3.0, 2.5)));

        var none = new double[3, 2] { { double.NaN, 1 }, { double.NaN, 1 }, { double.NaN, 1 } };
        var empty = RoundStats.Ratio(none, 0, 1);
        Assert.That(empty.Count, Is.Zero);
        Assert.That(double.IsNaN(empty.Median), Is.True);
        Assert.That(RoundStats.Column(none, 0), Is.Empty);
    }

    [Test]
    public void QuartilesInterpolateBetweenOrderStatistics()
    {
        double[] values = [8, 1, 7, 2, 6, 3, 5, 4]; // sorted 1..8: positions 1.75, 3.5, 5.25
        var s = RoundStats.Summarize(values);
        Assert.That((s.Median, s.Q1, s.Q3, s.Min, s.Max, s.Count), Is.EqualTo((4.5, 2.75, 6.25, 1.0, 8.0, 8)));
        Assert.That(RoundStats.Median([3.0]), Is.EqualTo(3.0));
        Assert.That(values, Is.EqualTo(new double[] { 8, 1, 7, 2, 6, 3, 5, 4 }), "Summarize must not reorder its input");
    }

    [Test]
    public void FormatIsCultureInvariant()
    {
        var before = CultureInfo.CurrentCulture;
        try
        {
            CultureInfo.CurrentCulture = new CultureInfo("de-DE");
            Assert.That(new Spread(1.25, 1, 1.5, 0.5, 2, 3).Format(), Is.EqualTo("1.25 [0.50..2.00]"));
        }
        finally
        {
            CultureInfo.CurrentCulture = before;
        }
    }

    [Test]
    public void ARoundRunsEachVariantItsRepetitionsInTheRotatingOrderAndSkipsNull()
    {
        var calls = new List<int>();
        int[] reps = [2, 3, 0, 1];
        Action?[] variants = [() => calls.Add(0), () => calls.Add(1), null, () => calls.Add(3)];
        for (int round = 0; round < 2 * RoundStats.CycleLength(variants.Length); round++)
        {
            calls.Clear();
            var times = Interleaved.RunRound(variants, reps, round);
            var expected = RoundStats.Order(round, variants.Length).Where(v => variants[v] is not null)
                .SelectMany(v => Enumerable.Repeat(v, reps[v])).ToList();
            Assert.That(calls, Is.EqualTo(expected), $"round {round}");
            Assert.That(double.IsNaN(times[2]), Is.True, "a null variant's time must be NaN");
            Assert.That(times.Where((_, v) => v != 2), Has.All.Matches<double>(t => t >= 0 && double.IsFinite(t)));
        }
    }

    [Test]
    public void MeasureRunsTheFixedNumberOfRoundsAndRecordsEveryVariant()
    {
        int[] counts = new int[3];
        Action?[] variants = [() => counts[0]++, () => counts[1]++, () => Thread.SpinWait(50)];
        var result = Interleaved.Measure(variants, InterleaveSettings.Fixed(9, sliceMs: 0.05));
        Assert.That(result.Rounds, Is.EqualTo(9));
        Assert.That(result.Reps, Has.All.GreaterThanOrEqualTo(1));
        // calibration: 1 warm-up call plus at least one timed call; then Reps calls per round.
        Assert.That(counts[0], Is.GreaterThanOrEqualTo(2 + 9 * result.Reps[0]));
        for (int v = 0; v < 3; v++)
            Assert.That(RoundStats.Column(result.Seconds, v), Has.Length.EqualTo(9), $"variant {v}");
        Assert.That(result.Ratio(2, 0).Count, Is.EqualTo(9));
    }

    private static IEnumerable<int[]> Permutations(int[] items)
    {
        if (items.Length <= 1)
        {
            yield return items;
            yield break;
        }
        for (int i = 0; i < items.Length; i++)
        {
            var rest = items.Where((_, j) => j != i).ToArray();
            foreach (var p in Permutations(rest)) yield return [items[i], .. p];
        }
    }
}
