using System.Diagnostics;
using System.Globalization;
using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// The <c>overlap</c> scenario of <c>./build.sh bench-mp</c>: the step time of the tensor-parallel FFN forward
/// (column-parallel → GeLU → row-parallel, one all-reduce) across processes, without and with
/// <see cref="ParallelFeedForward.OverlapChunks"/>, beside the all-reduce alone. For each M, rounds in which three
/// variants run in a rotating order, each as a barrier and then k calls queued back to back and one synchronize:
/// <list type="bullet">
/// <item>serial: the forward with one all-reduce after the GEMMs (OverlapChunks = 1);</item>
/// <item>overlap: the forward with SW_OV_CHUNKS chunks (default 4);</item>
/// <item>comm: the all-reduce of the forward's M × H output alone.</item>
/// </list>
/// A variant's round time is the slowest rank's per-call time. Printed by rank 0 per M: the medians, the median of the
/// per-round ratios serial / overlap (above 1: overlap faster) with its 10th–90th percentiles, and overlap / max(comm,
/// serial − comm): the step time against the longer of communication and computation (compute estimated as the serial
/// time less the all-reduce's), 1.0 being perfect overlap. Both forwards' outputs are compared bit for bit first.
/// Settings: SW_OV_H (default 1024), SW_OV_F (4096), SW_OV_M (comma-separated, default 8,64,256,1024), SW_OV_CHUNKS (4),
/// SW_OV_ROUNDS (15).
/// </summary>
public static class OverlapBench
{
    public static void Run(RankContext ctx, TextWriter output)
    {
        static long Get(string name, long fallback) =>
            long.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.None, CultureInfo.InvariantCulture, out long v) && v > 0 ? v : fallback;
        long h = Get("SW_OV_H", 1024), f = Get("SW_OV_F", 4096);
        int chunks = (int)Get("SW_OV_CHUNKS", 4), rounds = (int)Math.Max(3, Get("SW_OV_ROUNDS", 15));
        var ms = (Environment.GetEnvironmentVariable("SW_OV_M") ?? "8,64,256,1024")
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int p = ctx.WorldSize, rank = ctx.Rank;
        var rng = new Random(4242); // the same weights on every rank
        float[] Rand(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5); return a; }
        var w1 = Rand(h * f); var b1 = Rand(f); var w2 = Rand(f * h); var b2 = Rand(h);
        using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(w1, h, f), WeightSource.FromArray(b1, 1, f),
            WeightSource.FromArray(w2, f, h), WeightSource.FromArray(b2, 1, h));
        using var time = ctx.Device.Allocate<double>(1);
        using var times = ctx.Device.Allocate<double>(p);
        if (rank == 0)
        {
            output.WriteLine($"# FFN forward step time across processes: {p} ranks (transport {ctx.Group.Transport}), H = {h}, F = {f}, fp32, " +
                             $"{ctx.Device}; overlap = {chunks} chunks; {rounds} rounds, variants in rotating order; us per call, slowest rank");
            output.WriteLine($"# {"M",6} {"k",4} {"serial",10} {"overlap",10} {"comm",10} {"serial/overlap [p10, p90]",28} {"overlap/max(comm, compute)",27}");
        }
        foreach (long m in ms)
        {
            var xh = Rand(m * h);
            using var x = ctx.Device.Allocate<float>(m * h);
            using var y = ctx.Device.Allocate<float>(m * h);
            using var y2 = ctx.Device.Allocate<float>(m * h);
            x.CopyFrom(xh, ctx.Stream);
            // the same bits with and without overlap (also the warm-up)
            y.Fill(float.NaN, ctx.Stream);
            y2.Fill(float.NaN, ctx.Stream);
            ffn.OverlapChunks = 1;
            ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h));
            ffn.OverlapChunks = chunks;
            ffn.Forward(x.AsMatrix(m, h), y2.AsMatrix(m, h));
            var a = y.ToArray(ctx.Stream);
            var b = y2.ToArray(ctx.Stream);
            for (long i = 0; i < a.Length; i++)
                if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i]))
                    throw new InvalidOperationException($"M = {m}: the overlapped forward differs from the serial one at element {i}: {b[i]:R} vs {a[i]:R}");
            double Round(int variant, int k)
            {
                ctx.Barrier();
                ctx.Synchronize();
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < k; i++)
                {
                    if (variant == 2) ctx.AllReduce(y);
                    else
                    {
                        ffn.OverlapChunks = variant == 0 ? 1 : chunks;
                        ffn.Forward(x.AsMatrix(m, h), y.AsMatrix(m, h));
                    }
                }
                ctx.Synchronize();
                time.CopyFrom([sw.Elapsed.TotalSeconds * 1e6 / k], ctx.Stream);
                ctx.AllGather(time, times);
                return times.ToArray(ctx.Stream).Max();
            }
            // k: about 20 ms of the serial forward per variant and round
            double one = Round(0, 1);
            int k = (int)Math.Clamp(20000 / Math.Max(one, 1), 1, 200);
            var t = new double[3][];
            for (int v = 0; v < 3; v++) t[v] = new double[rounds];
            var ratio = new double[rounds];
            var eff = new double[rounds];
            for (int r = 0; r < rounds; r++)
            {
                for (int j = 0; j < 3; j++)
                {
                    int v = (r + j) % 3;
                    t[v][r] = Round(v, k);
                }
                ratio[r] = t[0][r] / t[1][r];
                eff[r] = t[1][r] / Math.Max(t[2][r], Math.Max(t[0][r] - t[2][r], 1e-9));
            }
            static double Q(double[] v, double q) { var s = v.OrderBy(x => x).ToArray(); return s[(int)Math.Round(q * (s.Length - 1))]; }
            if (rank == 0)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {m,6} {k,4} {Q(t[0], 0.5),10:F1} {Q(t[1], 0.5),10:F1} {Q(t[2], 0.5),10:F1} {Q(ratio, 0.5),8:F2} [{Q(ratio, 0.1),5:F2}, {Q(ratio, 0.9),5:F2}]{"",9} {Q(eff, 0.5),8:F2} [{Q(eff, 0.1),5:F2}, {Q(eff, 0.9),5:F2}]"));
        }
        ffn.OverlapChunks = 1;
    }
}
