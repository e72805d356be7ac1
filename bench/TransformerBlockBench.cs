using System.Globalization;
using Shardwise.Bench.Support;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// The transformer block on virtual ranks of one device, for the main job and <see cref="InterleavedTransformerBlockBenchmarks"/>:
/// one <see cref="ParallelTransformerBlock"/> forward (inference, GeLU FFN, LayerNorm, causal) per rank count, the
/// p = 1 block being the unsharded baseline; each variant call runs every rank's forward under <see cref="Spmd.Run"/> and
/// synchronizes. Weights, input and (per rank count) the output are allocated once.
/// </summary>
internal sealed class TransformerBlockBench : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    public TransformerBlockBench(Device device, TransformerBlockOptions options, long tokens, long sequenceLength, int[] ranks,
        int[]? sequenceParallelRanks = null)
    {
        sequenceParallelRanks ??= [];
        Options = options;
        Tokens = tokens;
        SequenceLength = sequenceLength;
        Ranks = ranks;
        long h = options.Hidden, f = options.FfnHidden, d = h / options.Heads, qd = options.Heads * d, kd = options.KvHeads * d;
        ulong seed = 11;
        WeightSource W(long r, long c, float scale = 0.05f) =>
            WeightSource.FromArray(TestData.Uniform(r * c, seed: seed++).Select(v => v * scale).ToArray(), r, c);
        var weights = new TransformerBlockWeights(W(h, qd), W(h, kd), W(h, kd), W(qd, h), W(h, f), W(f, h),
            Bq: W(1, qd), Bk: W(1, kd), Bv: W(1, kd), Bo: W(1, h), B1: W(1, f), B2: W(1, h));
        using var stream = device.CreateStream();
        var x = Own(device.Allocate<float>(tokens * h));
        x.CopyFrom(TestData.Uniform(tokens * h, seed: 7), stream);
        int count = ranks.Length + sequenceParallelRanks.Length;
        Outputs = new DeviceBuffer<float>[count];
        Calls = new Action[count];
        Labels = new string[count];
        for (int i = 0; i < count; i++)
        {
            bool sp = i >= ranks.Length;
            int p = sp ? sequenceParallelRanks[i - ranks.Length] : ranks[i];
            Labels[i] = sp ? $"{p}, sequence-parallel" : p.ToString(CultureInfo.InvariantCulture);
            var group = Own(ProcessGroup.CreateLocal(device, p, TimeSpan.FromMinutes(5)));
            var blocks = new ParallelTransformerBlock[p];
            Spmd.Run(group, ctx => blocks[ctx.Rank] = new ParallelTransformerBlock(ctx, options, weights));
            foreach (var b in blocks) Own(b);
            var xv = x.AsMatrix(tokens, h);
            if (!sp)
            {
                var ys = Enumerable.Range(0, p).Select(_ => Own(device.Allocate<float>(tokens * h))).ToArray();
                Outputs[i] = ys[0];
                Calls[i] = () => Spmd.Run(group, ctx =>
                {
                    blocks[ctx.Rank].Forward(xv, ys[ctx.Rank].AsMatrix(tokens, h), sequenceLength);
                    ctx.Synchronize();
                });
                continue;
            }
            // Sequence-parallel: rank r holds token rows [r0, r0 + m_r) of x and writes the same rows of one shared y.
            var rows = ShardingPlan.Even(tokens, p);
            var y = Own(device.Allocate<float>(tokens * h));
            Outputs[i] = y;
            Calls[i] = () => Spmd.Run(group, ctx =>
            {
                long r0 = rows.Offset(ctx.Rank), mr = rows.Size(ctx.Rank);
                blocks[ctx.Rank].ForwardSequenceParallel(x.AsMatrix(mr, h, h, r0 * h), y.AsMatrix(mr, h, h, r0 * h), sequenceLength, rows);
                ctx.Synchronize();
            });
        }
    }

    public TransformerBlockOptions Options { get; }
    public long Tokens { get; }
    public long SequenceLength { get; }
    public int[] Ranks { get; }
    /// <summary>Per variant: the rank count, and whether it is sequence-parallel.</summary>
    public string[] Labels { get; }
    /// <summary>Per rank count: one forward on every rank, synchronized.</summary>
    public Action[] Calls { get; }
    /// <summary>Per rank count: rank 0's output of the latest call.</summary>
    public DeviceBuffer<float>[] Outputs { get; }

    /// <summary>Multiply-adds ×2 of one forward: the four projections, QKᵀ and P·V over the causal half (counted whole, as
    /// computed), the FFN.</summary>
    public double Flop
    {
        get
        {
            long h = Options.Hidden, f = Options.FfnHidden, d = h / Options.Heads, m = Tokens, t = SequenceLength;
            long kvd = Options.KvHeads * d;
            double proj = 2.0 * m * h * (h + 2 * kvd + h);
            double attn = 2.0 * 2.0 * (m / t) * Options.Heads * t * t * d;
            double ffn = 2.0 * 2.0 * m * h * f;
            return proj + attn + ffn;
        }
    }

    private T Own<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        return item;
    }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    /// <summary>The main job's section: the rank counts interleaved, tokens/s, GFLOP/s, sharded / unsharded with its spread,
    /// and each sharded output against the unsharded one.</summary>
    public static void RunMainJob(Device device, bool quick, InterleaveSettings settings, List<string> failures, string chartDir = "")
    {
        // Issue 17's target shape: 2048 tokens (4 sequences of 512), hidden 1024, 16 heads, FFN 4096.
        var (options, tokens, seq) = quick
            ? (new TransformerBlockOptions(256, 4, 4, 1024), 256L, 128L)
            : (new TransformerBlockOptions(1024, 16, 16, 4096), 2048L, 512L);
        int[] ranks = [1, 2, 4];
        Console.WriteLine($"Transformer block (pre-norm LayerNorm, causal attention, GeLU FFN; inference forward) on virtual ranks of {device.Name}:");
        Console.WriteLine($"  {tokens} tokens = {tokens / seq} sequences of {seq}, hidden {options.Hidden}, {options.Heads} heads, FFN {options.FfnHidden}; " +
                          "p = 1 is the unsharded block; the rank counts alternate in rotating order");
        using var bench = new TransformerBlockBench(device, options, tokens, seq, ranks, [2, 4]);
        var result = Interleaved.Measure(bench.Calls, settings with { SliceMs = 2 });
        using var stream = device.CreateStream();
        var baseline = bench.Outputs[0].ToArray(stream);
        var tokensPerSecond = new List<double>();
        var ratios = new List<Spread>();
        var table = new TextTable(("ranks", false), ("median ms", true), ("tokens/s", true), ("GFLOP/s", true), ("vs unsharded", true),
            ("max rel diff", true), ("verdict", false));
        for (int i = 0; i < bench.Calls.Length; i++)
        {
            var ms = result.Milliseconds(i);
            var ratio = result.Ratio(0, i);
            tokensPerSecond.Add(tokens / (ms.Median / 1e3));
            ratios.Add(ratio);
            var y = bench.Outputs[i].ToArray(stream);
            double scale = baseline.Max(v => Math.Abs((double)v)), diff = 0;
            for (long j = 0; j < y.Length; j++) diff = Math.Max(diff, Math.Abs((double)y[j] - baseline[j]) / scale);
            bool ok = !double.IsNaN(diff) && diff <= 1e-4;
            if (!ok) failures.Add($"transformer block p={bench.Labels[i]}: output differs from the unsharded block by {diff:0.00e+0} (relative to max |Y|)");
            table.Add(bench.Labels[i], ms.Median.ToString("0.0", CultureInfo.InvariantCulture),
                (tokens / (ms.Median / 1e3)).ToString("0", CultureInfo.InvariantCulture),
                (bench.Flop / (ms.Median * 1e6)).ToString("0.0", CultureInfo.InvariantCulture),
                i == 0 ? "1" : $"{ratio.Median:0.00} [{ratio.Min:0.00}..{ratio.Max:0.00}]",
                i == 0 ? "-" : diff.ToString("0.00e+0", CultureInfo.InvariantCulture), ok ? "ok" : "FAIL");
        }
        Console.WriteLine();
        Console.WriteLine(table);
        Console.WriteLine($"  {result.Rounds} rounds; vs unsharded = per round, p=1 time / p time (above 1: sharded faster), median [min..max];");
        Console.WriteLine("  max rel diff = max |Y_p − Y_1| / max |Y_1| (the all-reduce adds the heads' and FFN shards' partial sums in another order).");
        if (chartDir.Length > 0) Console.WriteLine($"  chart: {Charts.Block(chartDir, bench.Labels, tokensPerSecond, ratios)}");
    }
}
