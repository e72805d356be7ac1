namespace Shardwise.Parallel;

/// <summary>What one step of a pipeline stage's schedule does (<see cref="PipelineSchedules.Actions"/>).</summary>
public enum PipelineActionKind
{
    /// <summary>Receive micro-batch <c>MicroBatch</c>'s input activation from the previous stage.</summary>
    RecvForward,
    /// <summary>Run the stage's forward of micro-batch <c>MicroBatch</c>.</summary>
    Forward,
    /// <summary>Send micro-batch <c>MicroBatch</c>'s output activation to the next stage.</summary>
    SendForward,
    /// <summary>Receive the gradient of micro-batch <c>MicroBatch</c>'s output from the next stage.</summary>
    RecvBackward,
    /// <summary>Run the stage's backward of micro-batch <c>MicroBatch</c> (on the last stage, from the loss).</summary>
    Backward,
    /// <summary>Send the gradient of micro-batch <c>MicroBatch</c>'s input to the previous stage.</summary>
    SendBackward,
    /// <summary>One paired transfer: send micro-batch <c>MicroBatch</c>'s output forward while receiving the output
    /// gradient of micro-batch <c>Other</c> from the next stage (1F1B's steady state).</summary>
    SendForwardRecvBackward,
    /// <summary>One paired transfer: send micro-batch <c>MicroBatch</c>'s input gradient back while receiving micro-batch
    /// <c>Other</c>'s input from the previous stage (1F1B's steady state).</summary>
    SendBackwardRecvForward,
}

/// <summary>One step of a stage's schedule: a kind, its micro-batch, and for the paired transfers the micro-batch of the
/// receive half (<see cref="Other"/>; −1 otherwise).</summary>
public readonly record struct PipelineAction(PipelineActionKind Kind, int MicroBatch, int Other = -1)
{
    /// <inheritdoc />
    public override string ToString() => Other < 0 ? $"{Kind}({MicroBatch})" : $"{Kind}({MicroBatch}, {Other})";
}

/// <summary>
/// The pure logic of the pipeline schedules: the ordered actions of each stage (computation and the transfers between
/// neighbouring stages), the number of micro-batches whose activations a stage holds at most, and the idle fraction.
/// A transfer is a rendezvous (<see cref="RankContext.Send{T}"/>): the actions are ordered so that every send meets its
/// receive without a cycle; where a stage must send and receive in one step (1F1B's steady state) the two travel in one
/// paired transfer (<see cref="RankContext.SendRecv{T}"/>), as in Megatron-Core's <c>send_forward_recv_backward</c>.
/// </summary>
public static class PipelineSchedules
{
    /// <summary>
    /// The actions of stage <paramref name="stage"/> (0 = first) of <paramref name="stages"/> for one step of
    /// <paramref name="microBatches"/> micro-batches. The first stage receives nothing (its input is local) and sends no
    /// input gradient; the last stage sends no output and receives no output gradient (it computes it from the loss).
    /// <list type="bullet">
    /// <item>GPipe: for every micro-batch (receive, forward, send); then for every micro-batch in the same order
    /// (receive gradient, backward, send gradient). A stage holds all micro-batches' activations.</item>
    /// <item>1F1B: a warm-up of w = min(stages − stage − 1, m) forwards; then m − w times: forward, paired
    /// send-forward/receive-backward, backward, paired send-backward/receive-forward (the last one a plain send); then
    /// w backwards. A stage holds at most min(m, stages − stage) micro-batches' activations.</item>
    /// </list>
    /// </summary>
    public static IReadOnlyList<PipelineAction> Actions(PipelineSchedule schedule, int stages, int stage, int microBatches)
    {
        Check(stages, stage, microBatches);
        bool first = stage == 0, last = stage == stages - 1;
        var a = new List<PipelineAction>(6 * microBatches);
        switch (schedule)
        {
            case PipelineSchedule.GPipe:
                for (int i = 0; i < microBatches; i++)
                {
                    if (!first) a.Add(new(PipelineActionKind.RecvForward, i));
                    a.Add(new(PipelineActionKind.Forward, i));
                    if (!last) a.Add(new(PipelineActionKind.SendForward, i));
                }
                for (int i = 0; i < microBatches; i++)
                {
                    if (!last) a.Add(new(PipelineActionKind.RecvBackward, i));
                    a.Add(new(PipelineActionKind.Backward, i));
                    if (!first) a.Add(new(PipelineActionKind.SendBackward, i));
                }
                break;
            case PipelineSchedule.OneForwardOneBackward:
                int warmup = Math.Min(stages - stage - 1, microBatches), steady = microBatches - warmup;
                for (int i = 0; i < warmup; i++)
                {
                    if (!first) a.Add(new(PipelineActionKind.RecvForward, i));
                    a.Add(new(PipelineActionKind.Forward, i));
                    if (!last) a.Add(new(PipelineActionKind.SendForward, i));
                }
                if (steady > 0 && !first) a.Add(new(PipelineActionKind.RecvForward, warmup));
                for (int k = 0; k < steady; k++)
                {
                    int f = warmup + k, b = k;
                    a.Add(new(PipelineActionKind.Forward, f));
                    if (!last) a.Add(new(PipelineActionKind.SendForwardRecvBackward, f, b));
                    a.Add(new(PipelineActionKind.Backward, b));
                    if (first) continue;
                    a.Add(k == steady - 1
                        ? new(PipelineActionKind.SendBackward, b)
                        : new(PipelineActionKind.SendBackwardRecvForward, b, f + 1));
                }
                for (int b = steady; b < microBatches; b++)
                {
                    if (!last) a.Add(new(PipelineActionKind.RecvBackward, b));
                    a.Add(new(PipelineActionKind.Backward, b));
                    if (!first) a.Add(new(PipelineActionKind.SendBackward, b));
                }
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(schedule), schedule, "expected PipelineSchedule.GPipe or PipelineSchedule.OneForwardOneBackward.");
        }
        return a;
    }

    /// <summary>The most micro-batches whose activations stage <paramref name="stage"/> holds at once under
    /// <paramref name="schedule"/> (forwarded, not yet backwarded): m for GPipe, min(m, stages − stage) for 1F1B.</summary>
    public static int PeakMicroBatches(PipelineSchedule schedule, int stages, int stage, int microBatches)
    {
        int live = 0, peak = 0;
        foreach (var x in Actions(schedule, stages, stage, microBatches))
        {
            if (x.Kind == PipelineActionKind.Forward) peak = Math.Max(peak, ++live);
            else if (x.Kind == PipelineActionKind.Backward) live--;
        }
        return peak;
    }

    /// <summary>The fraction of a step a stage is idle with equal stage times and free transfers, the same for GPipe and
    /// 1F1B: (stages − 1) / (micro-batches + stages − 1). A step lasts (m + stages − 1)·(t_f + t_b) and each stage is busy
    /// m·(t_f + t_b) of it.</summary>
    public static double IdleFraction(int stages, int microBatches)
    {
        ThrowHelper.Positive(stages);
        ThrowHelper.Positive(microBatches);
        return (stages - 1) / (double)(microBatches + stages - 1);
    }

    private static void Check(int stages, int stage, int microBatches)
    {
        if (stages < 1) throw new ArgumentOutOfRangeException(nameof(stages), stages, "stages must be >= 1.");
        if (stage < 0 || stage >= stages)
            throw new ArgumentOutOfRangeException(nameof(stage), stage, $"stage must be in [0, {stages}) (stages = {stages}).");
        if (microBatches < 1) throw new ArgumentOutOfRangeException(nameof(microBatches), microBatches, "microBatches must be >= 1.");
    }
}
