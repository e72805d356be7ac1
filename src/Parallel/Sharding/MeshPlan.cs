using System.Globalization;
using System.Text;

namespace Shardwise.Parallel;

/// <summary>One pipeline stage of a <see cref="MeshPlan"/>: what each of its devices holds, in bytes (fp32), for its
/// worst tensor-parallel rank (rank 0 of the stage's tp group: it owns the output biases and the largest share).</summary>
/// <param name="Stage">The stage (0 = first).</param>
/// <param name="FirstLayer">Its first layer of the stack.</param>
/// <param name="Layers">How many consecutive layers it holds.</param>
/// <param name="WeightBytes">The weight shards of its layers, and as much again for their fp32 gradients.</param>
/// <param name="StashBytesPerMicroBatch">What one micro-batch in flight keeps for the backward pass: per layer its input
/// (t × H) and the FFN's Z, H and dH (3 · t × f_r), t the micro-batch's token rows.</param>
/// <param name="PeakMicroBatches">The most micro-batches in flight on this stage under the schedule (GPipe: m; 1F1B:
/// min(m, stages − stage)).</param>
/// <param name="WorkingBytes">One micro-batch's boundary buffers, reused layer after layer: the input and output (t × H)
/// and their gradients.</param>
public sealed record StagePlan(int Stage, int FirstLayer, int Layers, long WeightBytes, long StashBytesPerMicroBatch,
    int PeakMicroBatches, long WorkingBytes)
{
    /// <summary>The activations kept at the schedule's peak.</summary>
    public long ActivationBytes => StashBytesPerMicroBatch * PeakMicroBatches;

    /// <summary>All of it, per device.</summary>
    public long TotalBytes => WeightBytes + ActivationBytes + WorkingBytes;
}

/// <summary>
/// The plan of a stack of feed-forward blocks on a pp × dp × tp device mesh (DeviceMesh): the layers split
/// into <see cref="PipelineStages"/> contiguous stages (uneven counts allowed), each layer's FFN split by tensor
/// parallelism over <see cref="TensorParallel"/> ranks (<see cref="LayerPlan.FeedForward"/>), the whole replicated over
/// <see cref="DataParallel"/> replicas that share the batch. It gives the memory per device of every stage under the
/// schedule (the activations a stage keeps depend on how many micro-batches it has in flight), the pipeline's idle
/// fraction, and <see cref="Smallest"/> names the smallest mesh that fits a memory limit.
/// </summary>
public sealed class MeshPlan
{
    private const long F32 = sizeof(float);

    private MeshPlan(int layers, long modelFeatures, long hiddenFeatures, long batchTokens, int pp, int dp, int tp, int microBatches,
        PipelineSchedule schedule, int[] layersPerStage)
    {
        (Layers, ModelFeatures, HiddenFeatures, BatchTokens) = (layers, modelFeatures, hiddenFeatures, batchTokens);
        (PipelineStages, DataParallel, TensorParallel, MicroBatches, Schedule) = (pp, dp, tp, microBatches, schedule);
        LayersPerStage = layersPerStage;
        // A replica's share of the batch (the first replicas take the remainder), split into m micro-batches (likewise).
        long replicaTokens = CeilDiv(batchTokens, dp);
        MicroBatchTokens = CeilDiv(replicaTokens, microBatches);
        long t = MicroBatchTokens, h = modelFeatures;
        var ffn = LayerPlan.FeedForward(modelFeatures, hiddenFeatures, tp, tokens: t, training: true);
        var worst = ffn.Ranks[0]; // rank 0: the largest share of F (an even split gives the remainder first) and b2
        long stash1 = (t * h + 3 * t * worst.ShardWidth) * F32;
        var stages = new StagePlan[pp];
        int first = 0;
        for (int s = 0; s < pp; s++)
        {
            int n = layersPerStage[s];
            int peak = schedule == PipelineSchedule.GPipe ? microBatches : Math.Min(microBatches, pp - s);
            stages[s] = new StagePlan(s, first, n, n * worst.WeightBytes, n * stash1, peak, 4 * t * h * F32);
            first += n;
        }
        Stages = stages;
    }

    /// <summary>Layers in the stack.</summary>
    public int Layers { get; }
    /// <summary>H, the model width.</summary>
    public long ModelFeatures { get; }
    /// <summary>F, each FFN's hidden width.</summary>
    public long HiddenFeatures { get; }
    /// <summary>Token rows of one step (the global batch, all replicas together).</summary>
    public long BatchTokens { get; }
    /// <summary>pp: pipeline stages.</summary>
    public int PipelineStages { get; }
    /// <summary>dp: data-parallel replicas.</summary>
    public int DataParallel { get; }
    /// <summary>tp: tensor-parallel ranks per stage.</summary>
    public int TensorParallel { get; }
    /// <summary>m: micro-batches per step and replica.</summary>
    public int MicroBatches { get; }
    /// <summary>The pipeline schedule.</summary>
    public PipelineSchedule Schedule { get; }
    /// <summary>Layers of each stage.</summary>
    public IReadOnlyList<int> LayersPerStage { get; }
    /// <summary>Token rows of the largest micro-batch: ceil(ceil(batch / dp) / m).</summary>
    public long MicroBatchTokens { get; }
    /// <summary>Devices of the mesh: pp · dp · tp.</summary>
    public int Devices => PipelineStages * DataParallel * TensorParallel;
    /// <summary>Every stage's memory per device.</summary>
    public IReadOnlyList<StagePlan> Stages { get; }
    /// <summary>The largest per-device total.</summary>
    public long MaxBytesPerDevice => Stages.Max(s => s.TotalBytes);

    /// <summary>
    /// The fraction of the step's device time the pipeline leaves idle (the bubble), for stage times proportional to
    /// their layer counts and a backward pass of any fixed multiple of the forward: with t_s a stage's time per
    /// micro-batch, the step lasts Σ_s t_s + (m − 1) · max_s t_s (forward and backward alike) and stage s is busy
    /// m · t_s of it, so idle = 1 − m · Σ t_s / (pp · (Σ t_s + (m − 1) · max t_s)). Equal stages give
    /// (pp − 1) / (m + pp − 1), the same for GPipe and 1F1B (1F1B saves memory, not time).
    /// </summary>
    public double IdleFraction
    {
        get
        {
            double sum = LayersPerStage.Sum(), max = LayersPerStage.Max(), m = MicroBatches;
            return 1.0 - m * sum / (PipelineStages * (sum + (m - 1) * max));
        }
    }

    /// <summary>
    /// Plans <paramref name="layers"/> feed-forward blocks (width <paramref name="modelFeatures"/>, hidden
    /// <paramref name="hiddenFeatures"/>) trained on <paramref name="batchTokens"/> token rows per step on a
    /// <paramref name="pipelineStages"/> × <paramref name="dataParallel"/> × <paramref name="tensorParallel"/> mesh with
    /// <paramref name="microBatches"/> micro-batches. <paramref name="layersPerStage"/>: the layers of each stage
    /// (default: as even as possible, the first stages taking the remainder).
    /// </summary>
    public static MeshPlan FeedForwardStack(int layers, long modelFeatures, long hiddenFeatures, long batchTokens, int pipelineStages,
        int dataParallel, int tensorParallel, int microBatches, PipelineSchedule schedule = PipelineSchedule.OneForwardOneBackward,
        IReadOnlyList<int>? layersPerStage = null)
    {
        ThrowHelper.Positive(layers);
        ThrowHelper.Positive(modelFeatures);
        ThrowHelper.Positive(hiddenFeatures);
        ThrowHelper.Positive(batchTokens);
        ThrowHelper.Positive(pipelineStages);
        ThrowHelper.Positive(dataParallel);
        ThrowHelper.Positive(tensorParallel);
        ThrowHelper.Positive(microBatches);
        if (!Enum.IsDefined(schedule))
            throw new ArgumentOutOfRangeException(nameof(schedule), schedule, "schedule must be GPipe or OneForwardOneBackward.");
        if (pipelineStages > layers)
            throw new ArgumentException($"pipelineStages = {pipelineStages} is more than the {layers} layers; expected at most one stage per layer.",
                nameof(pipelineStages));
        if ((long)dataParallel * microBatches > batchTokens)
            throw new ArgumentException($"dataParallel × microBatches = {(long)dataParallel * microBatches} is more than the {batchTokens} " +
                "token rows of the batch; expected at least one row per micro-batch.", nameof(batchTokens));
        int[] split;
        if (layersPerStage is null)
            split = Enumerable.Range(0, pipelineStages).Select(s => layers / pipelineStages + (s < layers % pipelineStages ? 1 : 0)).ToArray();
        else
        {
            split = layersPerStage.ToArray();
            if (split.Length != pipelineStages || split.Any(n => n < 1) || split.Sum() != layers)
                throw new ArgumentException($"layersPerStage = [{string.Join(", ", split)}]; expected {pipelineStages} counts >= 1 " +
                    $"that add up to {layers}.", nameof(layersPerStage));
        }
        return new MeshPlan(layers, modelFeatures, hiddenFeatures, batchTokens, pipelineStages, dataParallel, tensorParallel, microBatches,
            schedule, split);
    }

    /// <summary>
    /// The smallest mesh (fewest devices, up to <paramref name="maxDevices"/>) on which the stack fits
    /// <paramref name="bytesPerDevice"/> per device, or null when none does. Among meshes of that size it prefers the
    /// lowest idle fraction (fewer stages), then fewer tensor-parallel ranks (less communication per layer); the rest
    /// goes to data parallelism. tp is at most F, pp at most the layer count, dp · m at most the batch's rows.
    /// </summary>
    public static MeshPlan? Smallest(int layers, long modelFeatures, long hiddenFeatures, long batchTokens, int microBatches,
        long bytesPerDevice, PipelineSchedule schedule = PipelineSchedule.OneForwardOneBackward, int maxDevices = 4096)
    {
        ThrowHelper.Positive(bytesPerDevice);
        ThrowHelper.Positive(maxDevices);
        for (int devices = 1; devices <= maxDevices; devices++)
        {
            MeshPlan? best = null;
            for (int pp = 1; pp <= Math.Min(layers, devices); pp++)
            {
                if (devices % pp != 0) continue;
                for (int tp = 1; tp <= devices / pp && tp <= hiddenFeatures; tp++)
                {
                    if (devices / pp % tp != 0) continue;
                    int dp = devices / pp / tp;
                    if ((long)dp * microBatches > batchTokens) continue;
                    var plan = FeedForwardStack(layers, modelFeatures, hiddenFeatures, batchTokens, pp, dp, tp, microBatches, schedule);
                    if (plan.MaxBytesPerDevice > bytesPerDevice) continue;
                    if (best is null || plan.IdleFraction < best.IdleFraction - 1e-12 ||
                        (Math.Abs(plan.IdleFraction - best.IdleFraction) <= 1e-12 && plan.TensorParallel < best.TensorParallel))
                        best = plan;
                }
            }
            if (best is not null) return best;
        }
        return null;
    }

    /// <summary>Throws <see cref="InsufficientDeviceMemoryException"/> when some device needs more than
    /// <paramref name="bytesPerDevice"/>, naming the stage and the smallest mesh that fits (its
    /// <see cref="InsufficientDeviceMemoryException.FewestRanks"/> is that mesh's device count, 0 when none).</summary>
    public void EnsureFits(long bytesPerDevice)
    {
        ThrowHelper.Positive(bytesPerDevice);
        if (MaxBytesPerDevice <= bytesPerDevice) return;
        var worst = Stages.MaxBy(s => s.TotalBytes)!;
        var smallest = Smallest(Layers, ModelFeatures, HiddenFeatures, BatchTokens, MicroBatches, bytesPerDevice, Schedule);
        throw new InsufficientDeviceMemoryException(
            $"{Describe()}: stage {worst.Stage} needs {LayerPlan.Bytes(worst.TotalBytes)} per device (weights and gradients " +
            $"{LayerPlan.Bytes(worst.WeightBytes)}, activations of {worst.PeakMicroBatches} micro-batches {LayerPlan.Bytes(worst.ActivationBytes)}), " +
            $"more than the {LayerPlan.Bytes(bytesPerDevice)} available; " +
            (smallest is null ? "no mesh of up to 4096 devices fits (use smaller micro-batches)."
                : $"the smallest mesh that fits is {smallest.Shape} ({smallest.Devices} devices, {LayerPlan.Bytes(smallest.MaxBytesPerDevice)} per device)."),
            smallest?.Devices ?? 0, worst.TotalBytes, bytesPerDevice);
    }

    /// <summary>"pp 2 × dp 2 × tp 2".</summary>
    public string Shape => $"pp {PipelineStages} × dp {DataParallel} × tp {TensorParallel}";

    /// <summary>The plan in words and a table.</summary>
    public string Explain()
    {
        var sb = new StringBuilder();
        sb.AppendLine(Describe());
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"micro-batch: {MicroBatchTokens} token rows; idle fraction {IdleFraction:0.###}"));
        sb.AppendLine("  stage | layers | weights+grads | stash/micro-batch | peak | activations | working | total");
        foreach (var s in Stages)
            sb.AppendLine($"  {s.Stage,5} | {s.FirstLayer,2}..{s.FirstLayer + s.Layers - 1,-2} | {LayerPlan.Bytes(s.WeightBytes),13} | " +
                $"{LayerPlan.Bytes(s.StashBytesPerMicroBatch),17} | {s.PeakMicroBatches,4} | {LayerPlan.Bytes(s.ActivationBytes),11} | " +
                $"{LayerPlan.Bytes(s.WorkingBytes),7} | {LayerPlan.Bytes(s.TotalBytes)}");
        return sb.ToString();
    }

    private string Describe() =>
        $"{Layers} feed-forward blocks (H {ModelFeatures}, F {HiddenFeatures}), {BatchTokens} token rows per step, {Shape}, " +
        $"{MicroBatches} micro-batches, {(Schedule == PipelineSchedule.GPipe ? "GPipe" : "1F1B")}";

    private static long CeilDiv(long a, long b) => (a + b - 1) / b;
}
