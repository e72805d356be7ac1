using OxyPlot;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;
using Shardwise.Bench.Support;

namespace Shardwise.Bench;

/// <summary>
/// SVG charts beside the main job's tables (OxyPlot.Core's SVG exporter, no native dependency): GFLOP/s per shape and
/// rank count, the sharded / unsharded ratio with its spread, and the transformer block's variants. Written to the
/// main job's chart folder (<c>--chart-dir</c>, default <c>artifacts/bench</c> under the current directory).
/// </summary>
internal static class Charts
{
    /// <summary>One sharded-GEMM result of the main job.</summary>
    public sealed record GemmPoint(string Shape, int Ranks, double Gflops, Spread Ratio);

    public static string Gemm(string dir, IReadOnlyList<GemmPoint> points)
    {
        var gflops = NewPlot("Sharded GEMM (ShardedGemm.Forward): GFLOP/s per rank count", "ranks", "GFLOP/s");
        var ratio = NewPlot("Sharded / unsharded (per-round ratio: median and [min, max])", "ranks", "unsharded time / sharded time");
        foreach (var shape in points.Select(p => p.Shape).Distinct())
        {
            var line = new LineSeries { Title = shape, MarkerType = MarkerType.Circle };
            var spread = new ScatterErrorSeries { Title = shape, MarkerType = MarkerType.Diamond, ErrorBarStopWidth = 3 };
            foreach (var p in points.Where(p => p.Shape == shape))
            {
                line.Points.Add(new DataPoint(p.Ranks, p.Gflops));
                double lo = p.Ratio.Median - p.Ratio.Min, hi = p.Ratio.Max - p.Ratio.Median;
                spread.Points.Add(new ScatterErrorPoint(p.Ranks, p.Ratio.Median, 0, Math.Max(lo, hi)));
            }
            gflops.Series.Add(line);
            ratio.Series.Add(spread);
        }
        string a = Save(gflops, dir, "main-gemm-gflops.svg"), b = Save(ratio, dir, "main-gemm-vs-unsharded.svg");
        return $"{a}, {b}";
    }

    public static string Block(string dir, IReadOnlyList<string> labels, IReadOnlyList<double> tokensPerSecond, IReadOnlyList<Spread> ratios)
    {
        var plot = NewPlot("Transformer block forward: tokens/s per variant", "variant", "tokens/s");
        plot.Axes.Clear();
        var cat = new CategoryAxis { Position = AxisPosition.Left, Title = "variant" };
        foreach (var l in labels) cat.Labels.Add($"p = {l}");
        plot.Axes.Add(cat);
        plot.Axes.Add(new LinearAxis { Position = AxisPosition.Bottom, Title = "tokens/s", Minimum = 0 });
        var bars = new BarSeries { Title = "tokens/s (median)", LabelFormatString = "{0:0}" };
        for (int i = 0; i < labels.Count; i++)
            bars.Items.Add(new BarItem(tokensPerSecond[i]));
        plot.Series.Add(bars);
        return Save(plot, dir, "main-transformer-block.svg");
    }

    private static PlotModel NewPlot(string title, string x, string y)
    {
        var plot = new PlotModel { Title = title, TitleFontSize = 13 };
        plot.Axes.Add(new LinearAxis { Position = AxisPosition.Bottom, Title = x });
        plot.Axes.Add(new LinearAxis { Position = AxisPosition.Left, Title = y });
        plot.Legends.Add(new Legend { LegendPosition = LegendPosition.RightTop, LegendPlacement = LegendPlacement.Outside });
        return plot;
    }

    private static string Save(PlotModel plot, string dir, string name)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, name);
        using var stream = File.Create(path);
        new SvgExporter { Width = 900, Height = 480 }.Export(plot, stream);
        return path;
    }
}

/// <summary>
/// A BenchmarkDotNet exporter that draws each summary as an SVG chart beside the other reports
/// (<c>BenchmarkDotNet.Artifacts/results/&lt;suite&gt;-report-chart.svg</c>), one bar per benchmark case in the order of
/// the table: the suite's own figure of merit when it has one (the "busbw GB/s" column of the collective sweep, the
/// "GFLOP/s" column of the GEMM sweeps), else the mean time per operation; added to every suite's config.
/// </summary>
public sealed class SvgChartExporter : BenchmarkDotNet.Exporters.ExporterBase
{
    public static readonly SvgChartExporter Default = new();

    protected override string FileExtension => "svg";
    protected override string FileCaption => "report-chart";

    public override void ExportToLog(BenchmarkDotNet.Reports.Summary summary, BenchmarkDotNet.Loggers.ILogger logger)
    {
        var plot = new PlotModel { Title = summary.Title, TitleFontSize = 12 };
        var cat = new CategoryAxis { Position = AxisPosition.Left, Title = "benchmark" };
        var merit = summary.BenchmarksCases.FirstOrDefault()?.Config.GetColumnProviders()
            .SelectMany(provider => provider.GetColumns(summary)).FirstOrDefault(c => c.ColumnName is "busbw GB/s" or "GFLOP/s");
        string unit = merit?.ColumnName ?? "mean time per operation (ms)";
        var bars = new BarSeries { Title = unit, LabelFormatString = "{0:0.###}" };
        foreach (var report in summary.Reports)
        {
            if (report.ResultStatistics is not { } stats) continue;
            double value = stats.Mean / 1e6;
            if (merit is not null && !double.TryParse(merit.GetValue(summary, report.BenchmarkCase), System.Globalization.NumberStyles.Float,
                    System.Globalization.CultureInfo.InvariantCulture, out value))
                continue; // a case without the figure (e.g. a baseline row): not drawn
            string name = report.BenchmarkCase.Descriptor.WorkloadMethodDisplayInfo;
            string parameters = report.BenchmarkCase.Parameters.DisplayInfo;
            cat.Labels.Add(parameters.Length > 0 ? $"{name} {parameters}" : name);
            bars.Items.Add(new BarItem(value));
        }
        plot.Axes.Add(cat);
        plot.Axes.Add(new LinearAxis { Position = AxisPosition.Bottom, Title = unit, Minimum = 0 });
        plot.Series.Add(bars);
        double height = Math.Max(240, 28 * cat.Labels.Count + 120);
        logger.Write(BenchmarkDotNet.Loggers.LogKind.Default, SvgExporter.ExportToString(plot, 1000, height, isDocument: true));
    }
}
