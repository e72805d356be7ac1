using System.Globalization;
using Shardwise.Bench.Support;
using Shardwise.Parallel;

namespace Shardwise.Bench;

/// <summary>
/// What TP-invariant numerics (issue 19, <see cref="TreeReduction"/>) cost, for the main job and
/// <see cref="InterleavedTpInvariantBenchmarks"/>: the same fp32 GEMM on a device in the default order and on one with
/// <see cref="Device.GemmReductionLeaf"/> = 512 (and 256), interleaved; and the FFN forward (row-parallel sum included)
/// at p = 1 and 4 in both modes, whose invariant outputs must be the same bits.
/// </summary>
internal sealed class TpInvariantBench : IDisposable
{
    private readonly List<IDisposable> _owned = [];

    private T Own<T>(T item) where T : IDisposable
    {
        _owned.Add(item);
        return item;
    }

    /// <summary>The GEMM variants of one shape: default order (0), tree with leaf 512 (1), tree with leaf 256 (2).</summary>
    public static TpInvariantBench Gemm(int threads, int m, int k, int n)
    {
        var b = new TpInvariantBench();
        long[] leaves = [0, 512, 256];
        var a = TestData.Uniform((long)m * k, seed: 1);
        var w = TestData.Uniform((long)k * n, seed: 2);
        b.Calls = new Action[leaves.Length];
        b.Outputs = new DeviceBuffer<float>[leaves.Length];
        b.Labels = leaves.Select(l => l == 0 ? "default order" : $"tree, leaf {l}").ToArray();
        for (int i = 0; i < leaves.Length; i++)
        {
            var dev = b.Own(Device.Cpu(threads));
            dev.GemmReductionLeaf = leaves[i];
            var s = b.Own(dev.CreateStream());
            var da = b.Own(dev.Allocate<float>(a.Length));
            var dw = b.Own(dev.Allocate<float>(w.Length));
            var dc = b.Own(dev.Allocate<float>((long)m * n));
            da.CopyFrom(a, s);
            dw.CopyFrom(w, s);
            b.Outputs[i] = dc;
            var (av, wv, cv) = (da.AsMatrix(m, k), dw.AsMatrix(k, n), dc.AsMatrix(m, n));
            b.Calls[i] = () => { Parallel.Gemm.Multiply(s, av, wv, cv); s.Synchronize(); };
        }
        b.Flop = 2.0 * m * n * k;
        return b;
    }

    /// <summary>The FFN forward (GeLU, tokens × H → F → H, biases) at p = 1 and 4 on virtual ranks: default p = 1 (0),
    /// invariant p = 1 (1), default p = 4 (2), invariant p = 4 (3); leaf 512.</summary>
    public static TpInvariantBench FeedForward(int threads, long tokens, long h, long f)
    {
        var b = new TpInvariantBench();
        ulong seed = 21;
        WeightSource W(long r, long c) => WeightSource.FromArray(TestData.Uniform(r * c, seed: seed++).Select(v => v * 0.05f).ToArray(), r, c);
        var (w1, b1, w2, b2) = (W(h, f), W(1, f), W(f, h), W(1, h));
        var x = TestData.Uniform(tokens * h, seed: 7);
        (int P, long Leaf)[] cases = [(1, 0), (1, 512), (4, 0), (4, 512)];
        b.Calls = new Action[cases.Length];
        b.Outputs = new DeviceBuffer<float>[cases.Length];
        b.Labels = cases.Select(c => $"p = {c.P}, {(c.Leaf == 0 ? "default" : "invariant")}").ToArray();
        for (int i = 0; i < cases.Length; i++)
        {
            var (p, leaf) = cases[i];
            var dev = b.Own(Device.Cpu(threads));
            dev.GemmReductionLeaf = leaf;
            var s = b.Own(dev.CreateStream());
            var dx = b.Own(dev.Allocate<float>(tokens * h));
            dx.CopyFrom(x, s);
            s.Synchronize();
            var group = b.Own(ProcessGroup.CreateLocal(dev, p, TimeSpan.FromMinutes(5)));
            var layers = new ParallelFeedForward[p];
            Spmd.Run(group, ctx => layers[ctx.Rank] = new ParallelFeedForward(ctx, w1, b1, w2, b2));
            foreach (var l in layers) b.Own(l);
            var ys = Enumerable.Range(0, p).Select(_ => b.Own(dev.Allocate<float>(tokens * h))).ToArray();
            b.Outputs[i] = ys[0];
            var xv = dx.AsMatrix(tokens, h);
            b.Calls[i] = () => Spmd.Run(group, ctx =>
            {
                layers[ctx.Rank].Forward(xv, ys[ctx.Rank].AsMatrix(tokens, h));
                ctx.Synchronize();
            });
        }
        b.Flop = 2.0 * 2.0 * tokens * h * f;
        return b;
    }

    public Action[] Calls { get; private set; } = [];
    public DeviceBuffer<float>[] Outputs { get; private set; } = [];
    public string[] Labels { get; private set; } = [];
    public double Flop { get; private set; }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    private static float[] Read(DeviceBuffer<float> b)
    {
        using var s = b.Device.CreateStream();
        return b.ToArray(s);
    }

    /// <summary>The main job's section: GEMM throughput tree / default per shape, the FFN's at p = 1 and 4, interleaved,
    /// with the spread; and the invariant FFN's p = 4 output against its p = 1 output, bit for bit.</summary>
    public static void RunMainJob(int threads, bool quick, InterleaveSettings settings, List<string> failures)
    {
        Console.WriteLine("TP-invariant numerics (GemmReductionLeaf; docs/tp-invariance.md): the same work in the default order and");
        Console.WriteLine("in the tree order, interleaved (rotating order, one device per variant):");
        var table = new TextTable(("case", false), ("variant", false), ("median ms", true), ("GFLOP/s", true), ("vs default", true));
        (int M, int K, int N)[] shapes = quick ? [(256, 256, 256), (64, 512, 1024)] : [(2048, 2048, 2048), (512, 4096, 11008)];
        foreach (var (m, k, n) in shapes)
        {
            using var bench = Gemm(threads, m, k, n);
            var r = Interleaved.Measure(bench.Calls, settings);
            var baseline = Read(bench.Outputs[0]);
            for (int i = 0; i < bench.Calls.Length; i++)
            {
                var ms = r.Milliseconds(i);
                var ratio = r.Ratio(0, i);
                table.Add(i == 0 ? $"GEMM {m}×{k}×{n}" : "", bench.Labels[i], ms.Median.ToString("0.0", CultureInfo.InvariantCulture),
                    (bench.Flop / (ms.Median * 1e6)).ToString("0.0", CultureInfo.InvariantCulture),
                    i == 0 ? "1" : $"{ratio.Median:0.00} [{ratio.Min:0.00}..{ratio.Max:0.00}]");
                var got = Read(bench.Outputs[i]);
                double scale = baseline.Max(v => Math.Abs((double)v)), diff = 0;
                for (int j = 0; j < got.Length; j++) diff = Math.Max(diff, Math.Abs((double)got[j] - baseline[j]) / scale);
                if (!(diff <= 1e-4)) failures.Add($"TP-invariant GEMM {m}×{k}×{n} {bench.Labels[i]}: differs from the default order by {diff:0.00e+0}");
            }
        }
        var (tokens, h, f) = quick ? (128L, 256L, 1024L) : (2048L, 1024L, 4096L);
        using (var ffn = FeedForward(threads, tokens, h, f))
        {
            var r = Interleaved.Measure(ffn.Calls, settings);
            for (int i = 0; i < ffn.Calls.Length; i++)
            {
                var ms = r.Milliseconds(i);
                var ratio = r.Ratio(i - i % 2, i); // invariant p vs default p
                table.Add(i == 0 ? $"FFN {tokens}×{h}×{f}" : "", ffn.Labels[i], ms.Median.ToString("0.0", CultureInfo.InvariantCulture),
                    (ffn.Flop / (ms.Median * 1e6)).ToString("0.0", CultureInfo.InvariantCulture),
                    i % 2 == 0 ? "1" : $"{ratio.Median:0.00} [{ratio.Min:0.00}..{ratio.Max:0.00}]");
            }
            var inv1 = Read(ffn.Outputs[1]);
            var inv4 = Read(ffn.Outputs[3]);
            var def1 = Read(ffn.Outputs[0]);
            var def4 = Read(ffn.Outputs[2]);
            int invDiff = Enumerable.Range(0, inv1.Length).Count(j => BitConverter.SingleToInt32Bits(inv1[j]) != BitConverter.SingleToInt32Bits(inv4[j]));
            int defDiff = Enumerable.Range(0, def1.Length).Count(j => BitConverter.SingleToInt32Bits(def1[j]) != BitConverter.SingleToInt32Bits(def4[j]));
            Console.WriteLine();
            Console.WriteLine(table);
            Console.WriteLine($"  {r.Rounds} rounds (FFN); vs default = per round, default time / this variant's time (above 1: faster), median [min..max];");
            Console.WriteLine($"  FFN output p = 4 vs p = 1: invariant {invDiff} of {inv1.Length} elements differ in any bit (must be 0); default order {defDiff} differ.");
            if (invDiff != 0) failures.Add($"TP-invariant FFN: p = 4 differs from p = 1 in {invDiff} elements");
        }
    }
}
