using Shardwise.Parallel;

namespace Shardwise.MultiProcessWorker;

/// <summary>
/// The end-to-end example of combined parallelisms: a stack of <see cref="Layers"/> residual feed-forward blocks trained
/// for <see cref="Steps"/> SGD steps (fp32) on a pp × dp × tp mesh (world rank = (pp·dp_size + dp)·tp_size + tp, tp
/// fastest). Each rank holds the blocks of its pipeline stage, tensor-parallel over its tp group; the dp replicas take
/// halves of each step's batch and average their gradients. The data comes from a seed shared by every rank. Run in one
/// process (virtual ranks) by the tests and as one process per rank by the worker (scenario "hybrid").
/// </summary>
public static class HybridScenario
{
    public const int Layers = 4, Steps = 3, MicroBatches = 4;
    public const long H = 8, F = 12, Rows = 16; // Rows: the global batch of a step
    public const float LearningRate = 0.1f;
    public const long BucketBytes = 512; // small buckets: a stage's gradients (2 blocks of 3·96 + 8 floats) make several

    /// <summary>The stack's initial weights and every step's batch, the same for every rank (uniform, never zero).</summary>
    public sealed class Data
    {
        public Data(int seed)
        {
            var rng = new Random(seed);
            float[] R(long n, float scale) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = ((float)(rng.NextDouble() * 2 - 1) + 1e-3f) * scale; return a; }
            W1 = Enumerable.Range(0, Layers).Select(_ => R(H * F, 0.4f)).ToArray();
            B1 = Enumerable.Range(0, Layers).Select(_ => R(F, 0.2f)).ToArray();
            W2 = Enumerable.Range(0, Layers).Select(_ => R(F * H, 0.4f)).ToArray();
            B2 = Enumerable.Range(0, Layers).Select(_ => R(H, 0.2f)).ToArray();
            X = Enumerable.Range(0, Steps).Select(_ => R(Rows * H, 1f)).ToArray();
            T = Enumerable.Range(0, Steps).Select(_ => R(Rows * H, 1f)).ToArray();
        }
        public float[][] W1, B1, W2, B2, X, T;

        public FeedForwardBlockWeights[] Stack => Enumerable.Range(0, Layers).Select(l => new FeedForwardBlockWeights(
            WeightSource.FromArray(W1[l], H, F), WeightSource.FromArray(B1[l], 1, F), WeightSource.FromArray(W2[l], F, H),
            WeightSource.FromArray(B2[l], 1, H))).ToArray();
    }

    /// <summary>The pp × dp × tp mesh of <paramref name="world"/> (world rank = (pp·dp_size + dp)·tp_size + tp): each rank's
    /// pipeline group (<c>Group("pp")</c>: same dp and tp), data-parallel group (same pp and tp) and tensor-parallel group
    /// (same pp and dp).</summary>
    public static DeviceMesh Mesh(ProcessGroup world, int pp, int dp, int tp) => DeviceMesh.Create(world, ("pp", pp), ("dp", dp), ("tp", tp));

    /// <summary>Trains mesh rank <paramref name="rank"/> (see the other overload).</summary>
    public static (int Layer, float[] W1, float[] B1, float[] W2, float[] B2)[] Train(MeshRank rank, Data d, out double[] losses) =>
        Train(rank.Group("pp"), rank.Group("dp"), rank.Group("tp"), d, out losses);

    /// <summary>Trains on one rank; returns its shards after the last step: per block of its stage (stack index, W1
    /// columns, b1 part, W2 rows, b2 or empty) and the losses the last stage computed (else empty).</summary>
    public static (int Layer, float[] W1, float[] B1, float[] W2, float[] B2)[] Train(RankContext pipeline, RankContext dataParallel,
        RankContext tensorParallel, Data d, out double[] losses, Action<PipelineStepReport, FeedForwardStackTrainer>? observe = null)
    {
        var dev = tensorParallel.Device;
        var s = tensorParallel.Stream;
        long rows = Rows / dataParallel.WorldSize, offset = dataParallel.Rank * rows * H;
        using var trainer = new FeedForwardStackTrainer(pipeline, dataParallel, tensorParallel, d.Stack,
            new PipelineOptions { Schedule = PipelineSchedule.OneForwardOneBackward, MicroBatches = MicroBatches, ComputeLoss = true },
            bucketBytes: BucketBytes);
        using var x = dev.Allocate<float>(rows * H);
        using var t = dev.Allocate<float>(rows * H);
        losses = new double[Steps];
        for (int step = 0; step < Steps; step++)
        {
            x.CopyFrom(d.X[step].AsSpan((int)offset, (int)(rows * H)), s);
            t.CopyFrom(d.T[step].AsSpan((int)offset, (int)(rows * H)), s);
            var report = trainer.Step(rows, x.AsMatrix(rows, H), t.AsMatrix(rows, H), LearningRate);
            losses[step] = report.Loss ?? double.NaN;
            observe?.Invoke(report, trainer);
        }
        tensorParallel.Synchronize();
        var stage = trainer.Stage;
        return Enumerable.Range(0, stage.Layers).Select(l =>
        {
            var b = stage.Blocks[l];
            return (stage.FirstLayer + l, b.Up.Weight?.ToArray(s) ?? [], b.Up.Bias?.ToArray(s) ?? [], b.Down.Weight?.ToArray(s) ?? [],
                b.Down.Bias?.ToArray(s) ?? []);
        }).ToArray();
    }

    /// <summary>Puts the shards of one data-parallel replica together: full W1 (H × F), b1, W2 (F × H), b2 per layer.
    /// <paramref name="shards"/>[worldRank] is what <see cref="Train"/> returned on that rank; <paramref name="leaf"/>: the
    /// devices' GemmReductionLeaf (F split by the TP-invariant tree when &gt; 0, else evenly).</summary>
    public static float[][][] Assemble(IReadOnlyList<(int Layer, float[] W1, float[] B1, float[] W2, float[] B2)[]> shards, int pp, int dp, int tp, int replica,
        long leaf = 0)
    {
        var full = Enumerable.Range(0, Layers).Select(_ => new[] { new float[H * F], new float[F], new float[F * H], new float[H] }).ToArray();
        foreach (var a in full) foreach (var v in a) Array.Fill(v, float.NaN);
        var plan = leaf > 0 ? TreeReduction.Plan(F, leaf, tp) : ShardingPlan.Even(F, tp);
        for (int p = 0; p < pp; p++)
            for (int r = 0; r < tp; r++)
                foreach (var (layer, w1, b1, w2, b2) in shards[(p * dp + replica) * tp + r])
                {
                    long off = plan.Offset(r), fr = plan.Size(r);
                    for (long c = 0; c < H; c++)
                        for (long q = 0; q < fr; q++) full[layer][0][c * F + off + q] = w1[c * fr + q];
                    for (long q = 0; q < fr; q++) full[layer][1][off + q] = b1[q];
                    Array.Copy(w2, 0, full[layer][2], off * H, fr * H);
                    if (r == 0) Array.Copy(b2, full[layer][3], H);
                }
        return full;
    }
}

/// <summary>The worker's side of the example (scenario "hybrid"): one rank of a 2 × 2 × 2 mesh per process.</summary>
public static class HybridWorker
{
    public const int Pp = 2, Dp = 2, Tp = 2;

    /// <summary>The mesh of a run: SW_TEST_MESH = "PPxDPxTP" (default 2x2x2; the product must be the world size).</summary>
    public static (int Pp, int Dp, int Tp) MeshShape()
    {
        var text = Environment.GetEnvironmentVariable("SW_TEST_MESH");
        if (string.IsNullOrEmpty(text)) return (Pp, Dp, Tp);
        var parts = text.Split('x').Select(int.Parse).ToArray();
        return (parts[0], parts[1], parts[2]);
    }

    /// <summary>Splits <paramref name="world"/> (8 processes, or the mesh of SW_TEST_MESH), trains this process's rank and
    /// writes its shards to OUTDIR/hybrid.rank{r}.bin (per block: layer, then W1, b1, W2, b2 as a count and floats).</summary>
    public static void Run(ProcessGroup world, string outDir, int seed)
    {
        var d = new HybridScenario.Data(seed);
        var (pp, dp, tp) = MeshShape();
        using var mesh = HybridScenario.Mesh(world, pp, dp, tp);
        {
            int r = world.Local.Rank;
            var shards = HybridScenario.Train(mesh[r], d, out _);
            using var w = new BinaryWriter(File.Create(Path.Combine(outDir, $"hybrid.rank{r}.bin")));
            w.Write(shards.Length);
            foreach (var (layer, w1, b1, w2, b2) in shards)
            {
                w.Write(layer);
                foreach (var a in new[] { w1, b1, w2, b2 })
                {
                    w.Write(a.Length);
                    foreach (var v in a) w.Write(v);
                }
            }
        }
    }

    /// <summary>Reads what <see cref="Run"/> wrote for rank <paramref name="rank"/>.</summary>
    public static (int Layer, float[] W1, float[] B1, float[] W2, float[] B2)[] Read(string outDir, int rank)
    {
        using var rd = new BinaryReader(File.OpenRead(Path.Combine(outDir, $"hybrid.rank{rank}.bin")));
        int n = rd.ReadInt32();
        var result = new (int, float[], float[], float[], float[])[n];
        for (int i = 0; i < n; i++)
        {
            int layer = rd.ReadInt32();
            var a = new float[4][];
            for (int k = 0; k < 4; k++)
            {
                a[k] = new float[rd.ReadInt32()];
                for (int e = 0; e < a[k].Length; e++) a[k][e] = rd.ReadSingle();
            }
            result[i] = (layer, a[0], a[1], a[2], a[3]);
        }
        return result;
    }
}
