using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// The layers every rank runs, on data made from a seed shared by all ranks: a column-parallel linear layer (bias,
/// gathered output), a row-parallel one (input split on entry, all-reduce) and the tensor-parallel FFN. Shapes are
/// uneven over 2, 3 and 4 ranks. The multi-process tests run it in separate processes and in one process (virtual
/// ranks) and compare the bits.
/// </summary>
public static class Scenario
{
    public const int M = 7, K = 24, N = 30, H = 20, F = 26;

    /// <summary>The inputs and weights, the same for every rank (never zero: uniform in [-1, 1) plus 1e-3).</summary>
    public sealed class Data
    {
        public Data(int seed)
        {
            var rng = new Random(seed);
            float[] R(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) + 1e-3f; return a; }
            X = R(M * K); Wc = R(K * N); Bc = R(N); Wr = R(K * N); Br = R(N);
            Xf = R(M * H); W1 = R(H * F); B1 = R(F); W2 = R(F * H); B2 = R(H);
        }
        public float[] X, Wc, Bc, Wr, Br, Xf, W1, B1, W2, B2;
    }

    /// <summary>Runs the three layers on rank <paramref name="ctx"/>; returns their outputs (each M × N or M × H, full on
    /// every rank). Outputs are poisoned (NaN) before each layer runs.</summary>
    public static (float[] Column, float[] Row, float[] Ffn) Run(RankContext ctx, Data d)
    {
        var dev = ctx.Device;
        var s = ctx.Stream;
        using var x = dev.Allocate<float>(M * K);
        using var xf = dev.Allocate<float>(M * H);
        using var y = dev.Allocate<float>(M * N);
        using var yf = dev.Allocate<float>(M * H);
        x.CopyFrom(d.X, s);
        xf.CopyFrom(d.Xf, s);

        using var col = new ColumnParallelLinear(ctx, WeightSource.FromArray(d.Wc, K, N), WeightSource.FromArray(d.Bc, 1, N), gatherOutput: true);
        y.Fill(float.NaN, s);
        col.Forward(x.AsMatrix(M, K), y.AsMatrix(M, N));
        var column = y.ToArray(s);

        using var row = new RowParallelLinear(ctx, WeightSource.FromArray(d.Wr, K, N), WeightSource.FromArray(d.Br, 1, N), inputIsParallel: false);
        y.Fill(float.NaN, s);
        row.Forward(x.AsMatrix(M, K), y.AsMatrix(M, N));
        var rowOut = y.ToArray(s);

        using var ffn = new ParallelFeedForward(ctx, WeightSource.FromArray(d.W1, H, F), WeightSource.FromArray(d.B1, 1, F),
            WeightSource.FromArray(d.W2, F, H), WeightSource.FromArray(d.B2, 1, H));
        yf.Fill(float.NaN, s);
        ffn.Forward(xf.AsMatrix(M, H), yf.AsMatrix(M, H));
        var ffnOut = yf.ToArray(s);
        ctx.Synchronize();
        return (column, rowOut, ffnOut);
    }

    /// <summary>
    /// A transformer block (RMSNorm, 4 query heads over 2 key/value heads of width 5, SwiGLU FFN of F, causal, residual
    /// dropout 0.1) on the FFN's input: the training forward and the backward of one step. Returns Y, dX and the first
    /// norm's dgamma, concatenated (every rank holds all of them). Outputs poisoned (NaN) first.
    /// </summary>
    public static float[] Block(RankContext ctx, Data d)
    {
        var dev = ctx.Device;
        var s = ctx.Stream;
        var rng = new Random(d.X.Length * 7919 + (int)(d.W1[0] * 1e6));
        float[] R(long n, float scale) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = ((float)(rng.NextDouble() * 2 - 1) + 1e-3f) * scale; return a; }
        const int heads = 4, kv = 2, hd = 5;
        var options = new TransformerBlockOptions(H, heads, kv, F, FeedForwardKind.SwiGlu, Shardwise.Bindings.SwNormKind.Rms, Dropout: 0.1f);
        WeightSource W(long r, long c) => WeightSource.FromArray(R(r * c, 0.4f), r, c);
        var weights = new TransformerBlockWeights(W(H, heads * hd), W(H, kv * hd), W(H, kv * hd), W(heads * hd, H), W(H, F), W(F, H), W3: W(H, F),
            B2: W(1, H), Norm1Gamma: W(1, H), Norm2Gamma: W(1, H));
        using var block = new ParallelTransformerBlock(ctx, options, weights);
        using var grads = new TransformerBlockGradients(dev, block);
        using var x = dev.Allocate<float>(M * H);
        using var dy = dev.Allocate<float>(M * H);
        using var y = dev.Allocate<float>(M * H);
        using var dx = dev.Allocate<float>(M * H);
        x.CopyFrom(d.Xf, s);
        dy.CopyFrom(R(M * H, 1f), s);
        y.Fill(float.NaN, s);
        dx.Fill(float.NaN, s);
        grads.Norm1.Buffer.Fill(float.NaN, s);
        var dropout = new DropoutGenerator(seed: 4242, tensorRank: ctx.Rank);
        using var saved = block.ForwardTraining(x.AsMatrix(M, H), y.AsMatrix(M, H), sequenceLength: M, dropout);
        block.Backward(x.AsMatrix(M, H), dy.AsMatrix(M, H), dx.AsMatrix(M, H), grads, saved);
        var result = y.ToArray(s).Concat(dx.ToArray(s)).Concat(grads.Norm1.Buffer.ToArray(s)).ToArray();
        ctx.Synchronize();
        return result;
    }

    /// <summary>float64 references of the three outputs.</summary>
    public static (double[] Column, double[] Row, double[] Ffn) Reference(Data d)
    {
        double[] Linear(float[] x, float[] w, float[] b, int m, int k, int n)
        {
            var y = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double acc = b[j];
                    for (int p = 0; p < k; p++) acc += (double)x[i * k + p] * w[p * n + j];
                    y[i * n + j] = acc;
                }
            return y;
        }
        static double Gelu(double v) => 0.5 * v * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
        var hidden = Linear(d.Xf, d.W1, d.B1, M, H, F).Select(v => (float)Gelu(v)).ToArray();
        // The second GEMM in float64 from the float64 hidden layer.
        var h64 = Linear(d.Xf, d.W1, d.B1, M, H, F).Select(Gelu).ToArray();
        var ffn = new double[M * H];
        for (int i = 0; i < M; i++)
            for (int j = 0; j < H; j++)
            {
                double acc = d.B2[j];
                for (int p = 0; p < F; p++) acc += h64[i * F + p] * d.W2[p * H + j];
                ffn[i * H + j] = acc;
            }
        _ = hidden;
        return (Linear(d.X, d.Wc, d.Bc, M, K, N), Linear(d.X, d.Wr, d.Br, M, K, N), ffn);
    }
}

/// <summary>
/// The hybrid-parallel scenario "mesh" (4 ranks): a 2 × 2 <see cref="DeviceMesh"/> ("dp", "tp") over the world; every rank
/// all-gathers its world rank over each of its groups and prints them ("GROUP rank=W dims=D sub=K members=A,B"), then
/// all-reduces its data over "dp" (checked bit for bit against the fp32 sum in rank order of the data it regenerates for
/// its partner from the seed); then a split with colour rank % 2 and key -rank ("SPLIT rank=W sub=K of N"), in which sub
/// rank 0 sends floats to sub rank 1 and gets Halves back, and a ring of SendRecv steps over the world with BFloat16
/// blocks of uneven lengths (one empty); every received element checked bit for bit. Throws on a wrong element.
/// </summary>
public static class MeshScenario
{
    private static float[] Data(int seed, int rank, int n)
    {
        var rng = new Random(seed * 31 + rank);
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) + 1e-3f;
        return a;
    }

    private static void Expect<T>(T[] got, T[] want, string what) where T : unmanaged
    {
        for (int i = 0; i < want.Length; i++)
            if (!System.Runtime.InteropServices.MemoryMarshal.AsBytes(got.AsSpan(i, 1)).SequenceEqual(
                    System.Runtime.InteropServices.MemoryMarshal.AsBytes(want.AsSpan(i, 1))))
                throw new InvalidOperationException($"{what}: element {i} is {got[i]}, expected {want[i]}");
    }

    public static void Run(ProcessGroup world, int seed, TextWriter log)
    {
        if (world.WorldSize != 4) throw new ArgumentException($"the mesh scenario needs 4 ranks, not {world.WorldSize}");
        var ctx = world.Local;
        int w = ctx.Rank;
        var dev = ctx.Device;
        using (var mesh = DeviceMesh.Create(world, ("dp", 2), ("tp", 2)))
        {
            var me = mesh[w];
            using var send = dev.Allocate<float>(1);
            send.CopyFrom([w], ctx.Stream);
            foreach (var dims in new[] { new[] { "dp" }, new[] { "tp" }, new[] { "dp", "tp" } })
            {
                var g = me.Group(dims);
                using var recv = dev.Allocate<float>(g.WorldSize);
                recv.Fill(float.NaN, ctx.Stream);
                g.AllGather(send, recv);
                log.WriteLine($"GROUP rank={w} dims={string.Join(",", dims)} sub={g.Rank} members={string.Join(",", recv.ToArray(ctx.Stream))}");
            }
            const int n = 50;
            var dp = me.Group("dp");
            using var b = dev.Allocate<float>(n);
            b.CopyFrom(Data(seed, w, n), ctx.Stream);
            dp.AllReduce(b);
            int partner = w ^ 2; // dp is the outer dimension: stride 2
            var lo = Data(seed, Math.Min(w, partner), n);
            var hi = Data(seed, Math.Max(w, partner), n);
            Expect(b.ToArray(ctx.Stream), lo.Select((x, i) => x + hi[i]).ToArray(), $"rank {w}: dp all-reduce");
        }

        using var split = world.Split(r => r % 2, r => -r); // {2, 0} and {3, 1}
        var sub = split[w]!;
        log.WriteLine($"SPLIT rank={w} sub={sub.Rank} of {sub.WorldSize}");
        const int m = 37;
        using var f = dev.Allocate<float>(m);
        using var h = dev.Allocate<Half>(m);
        int subPeerWorld = w ^ 2;
        if (sub.Rank == 0)
        {
            f.CopyFrom(Data(seed, w, m), ctx.Stream);
            sub.Send(f, 1);
            h.Fill((Half)float.NaN, ctx.Stream);
            sub.Recv(h, 1);
            Expect(h.ToArray(ctx.Stream), Data(seed + 1, subPeerWorld, m).Select(x => (Half)x).ToArray(), $"rank {w}: Half from the sub-group");
        }
        else
        {
            f.Fill(float.NaN, ctx.Stream);
            sub.Recv(f, 0);
            h.CopyFrom(Data(seed + 1, w, m).Select(x => (Half)x).ToArray(), ctx.Stream);
            sub.Send(h, 0);
            Expect(f.ToArray(ctx.Stream), Data(seed, subPeerWorld, m), $"rank {w}: floats from the sub-group");
        }

        // A ring over the world: rank r sends a block of len(r) BFloat16 to r+1 (len(1) = 0).
        static int Len(int r) => r == 1 ? 0 : 5 + 3 * r;
        int next = (w + 1) % 4, prev = (w + 3) % 4;
        using var mine = dev.Allocate<BFloat16>(Math.Max(1, Len(w)));
        if (Len(w) > 0) mine.CopyFrom(Data(seed + 2, w, Len(w)).Select(x => (BFloat16)x).ToArray(), ctx.Stream);
        using var theirs = dev.Allocate<BFloat16>(Math.Max(1, Len(prev)) + 1);
        theirs.Fill((BFloat16)float.NaN, ctx.Stream);
        ctx.SendRecv(mine, next, theirs, prev, sendCount: Len(w), recvCount: Len(prev));
        var got = theirs.ToArray(ctx.Stream);
        Expect(got, Data(seed + 2, prev, Len(prev)).Select(x => (BFloat16)x).ToArray(), $"rank {w}: ring block from {prev}");
        if (!BFloat16.IsNaN(got[Len(prev)])) throw new InvalidOperationException($"rank {w}: the ring wrote past its block");
        // Nobody destroys its communicators while another rank still transfers (a rank done early would otherwise close
        // its connections under a ring step of two other ranks).
        ctx.Barrier();
        ctx.Synchronize();
    }
}

/// <summary>
/// The fault scenario "split-late" (4 ranks): the world is split by rank % 2 ({0, 2} and {1, 3}); after a first all-reduce
/// in every sub-group, rank 3 sleeps 2.5 timeouts. Rank 1, waiting for it in their sub-group's all-reduce, must time out
/// naming it by its sub rank and parent rank; ranks 0 and 2 keep all-reducing in their own, healthy sub-group and must be
/// stopped by the family's abort (well before 2.5 timeouts), naming rank 3 too. Throws what each rank's collective threw
/// (or, for 0 and 2, an InvalidOperationException when no abort came).
/// </summary>
public static class SplitFaultScenario
{
    public static void Run(ProcessGroup world, TimeSpan timeout, System.Diagnostics.Stopwatch clock)
    {
        if (world.WorldSize != 4) throw new ArgumentException($"the split-late scenario needs 4 ranks, not {world.WorldSize}");
        var ctx = world.Local;
        int w = ctx.Rank;
        using var split = world.Split(r => r % 2);
        var sub = split[w]!;
        using var b = ctx.Device.Allocate<float>(16);
        b.Fill(w + 1f, ctx.Stream);
        sub.AllReduce(b); // #0: everyone is here
        ctx.Synchronize();
        clock.Restart();
        if (w == 3) Thread.Sleep(timeout * 2.5);
        if (w % 2 == 1)
        {
            sub.AllReduce(b);
            ctx.Synchronize();
            return;
        }
        while (clock.Elapsed < timeout * 2.5)
        {
            sub.AllReduce(b);
            ctx.Synchronize();
            Thread.Sleep(5);
        }
        throw new InvalidOperationException($"rank {w}: its sub-group was not aborted within 2.5 timeouts");
    }
}
