using System.Globalization;

namespace Shardwise.Parallel;

/// <summary>What a training step recomputes in its backward pass instead of keeping from the forward.</summary>
public enum Recompute
{
    /// <summary>Keep every activation the backward reads.</summary>
    None,
    /// <summary>Recompute the attention's scores and probabilities (the T² terms; Korthikanti et al.'s selective
    /// recomputation): little extra compute, the largest activations gone.</summary>
    Selective,
    /// <summary>Keep only each block's input; run the block's forward again in its backward (one more forward).</summary>
    Full,
}

/// <summary>The precision of a training step.</summary>
public enum TrainingPrecision
{
    /// <summary>fp32 everywhere (the GEMMs at the fp32 rate).</summary>
    Fp32,
    /// <summary>bf16 weights and activations, fp32 accumulation, fp32 gradients and master weights (<see cref="Precision.Bf16"/>).</summary>
    Bf16,
}

/// <summary>The optimizer whose state the memory plan counts.</summary>
public enum OptimizerKind
{
    /// <summary>AdamW: two fp32 moments per parameter.</summary>
    AdamW,
    /// <summary>Plain SGD (no momentum): no state.</summary>
    Sgd,
}

/// <summary>
/// One way to run a training step: the mesh (tensor × pipeline × data parallel, tp innermost as in
/// <see cref="DeviceMesh"/>: a tp group is consecutive devices), micro-batches of <paramref name="MicroBatchSize"/>
/// sequences, <paramref name="MicroBatches"/> of them per replica and step, the pipeline schedule, sequence
/// parallelism, recomputation, precision, and whether the tensor-parallel collectives overlap the GEMMs (the layers'
/// chunked overlap) and the data-parallel average overlaps the backward (bucketed).
/// </summary>
public sealed record MeshChoice(int Tp, int Pp, int Dp, long MicroBatchSize, int MicroBatches,
    PipelineSchedule Schedule = PipelineSchedule.OneForwardOneBackward, bool SequenceParallel = false,
    Recompute Recompute = Recompute.None, TrainingPrecision Precision = TrainingPrecision.Bf16, bool Overlap = false)
{
    /// <summary>Devices: tp · pp · dp.</summary>
    public int Devices => Tp * Pp * Dp;

    /// <summary>"tp 8 × pp 2 × dp 4".</summary>
    public string Shape => $"tp {Tp} × pp {Pp} × dp {Dp}";

    /// <summary>The choice in one line.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Shape}, {MicroBatches} × {MicroBatchSize} seq, {(Schedule == PipelineSchedule.GPipe ? "GPipe" : "1F1B")}" +
        $"{(SequenceParallel ? ", SP" : "")}, recompute {Recompute.ToString().ToLowerInvariant()}, {Precision.ToString().ToLowerInvariant()}" +
        $"{(Overlap ? ", overlap" : "")}");
}

/// <summary>What one device holds at the step's peak (its worst pipeline stage), bytes.</summary>
/// <param name="Stage">The stage that needs the most.</param>
/// <param name="Weights">The parameters as held (fp32 or bf16).</param>
/// <param name="Gradients">Their gradients (fp32).</param>
/// <param name="MasterWeights">fp32 master copies (<see cref="MasterWeights"/> keeps one in every precision).</param>
/// <param name="OptimizerState">The optimizer's moments.</param>
/// <param name="Activations">What the micro-batches in flight keep for the backward pass (the stash at the schedule's peak).</param>
/// <param name="PipelineBuffers">Stage-boundary buffers: the activations received and sent and their gradients.</param>
/// <param name="Workspace">The backward's transient buffers, the output head's logits, the data-parallel reducer's buckets.</param>
public sealed record MemoryBreakdown(int Stage, long Weights, long Gradients, long MasterWeights, long OptimizerState, long Activations,
    long PipelineBuffers, long Workspace)
{
    /// <summary>All of it.</summary>
    public long Total => Weights + Gradients + MasterWeights + OptimizerState + Activations + PipelineBuffers + Workspace;
}

/// <summary>Where one step's time goes on the critical path, seconds.</summary>
/// <param name="Compute">Forward and backward GEMMs and element-wise work of the slowest stage, all its micro-batches.</param>
/// <param name="Recompute">The part of <paramref name="Compute"/> spent recomputing.</param>
/// <param name="TensorParallel">Tensor-parallel collectives not hidden behind GEMMs.</param>
/// <param name="Pipeline">Stage-boundary transfers.</param>
/// <param name="Bubble">Pipeline idle time: the schedule's fill and drain.</param>
/// <param name="DataParallel">The gradient average not hidden behind the backward.</param>
/// <param name="Optimizer">The optimizer step.</param>
/// <param name="Contention">Devices sharing one pool of cores (<see cref="ClusterSpec.SharedCompute"/>): how much longer
/// the node's summed work takes than the critical path.</param>
public sealed record TimeBreakdown(double Compute, double Recompute, double TensorParallel, double Pipeline, double Bubble,
    double DataParallel, double Optimizer, double Contention)
{
    /// <summary>The step: every part but <see cref="Recompute"/> (which is inside <see cref="Compute"/>).</summary>
    public double Total => Compute + TensorParallel + Pipeline + Bubble + DataParallel + Optimizer + Contention;
}

/// <summary>The planner's verdict on one <see cref="MeshChoice"/>: its memory and step time, or why it was rejected.</summary>
public sealed record Prediction(MeshChoice Mesh, MemoryBreakdown Memory, TimeBreakdown Time, long MemoryLimit, string? Rejection)
{
    /// <summary>Whether it fits and is valid.</summary>
    public bool Feasible => Rejection is null;
    /// <summary>Predicted seconds per step.</summary>
    public double StepSeconds => Time.Total;
    /// <summary>Model flops utilization: the model's flops per step over the time, divided by the devices' peak.</summary>
    public double Mfu { get; init; }
    /// <summary>Tokens per second.</summary>
    public double TokensPerSecond { get; init; }
}
