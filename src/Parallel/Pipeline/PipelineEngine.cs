using System.Diagnostics;

namespace Shardwise.Parallel;

/// <summary>How a <see cref="PipelineEngine"/> runs a step.</summary>
public sealed record PipelineOptions
{
    /// <summary>The schedule (default 1F1B).</summary>
    public PipelineSchedule Schedule { get; init; } = PipelineSchedule.OneForwardOneBackward;

    /// <summary>m: the step's rows are split into this many micro-batches (as evenly as possible, the first ones one row
    /// larger; every micro-batch needs at least one row).</summary>
    public int MicroBatches { get; init; } = 1;

    /// <summary>Record a timeline: the stream is synchronized before and after every action so that host timestamps
    /// bracket its work (a receive's wait for its data lands in the receive), and the step is framed by barriers of the
    /// pipeline group so that every stage measures the same window. For measurements: it costs the overlap of queueing
    /// with execution.</summary>
    public bool RecordTimeline { get; init; }

    /// <summary>Compute the loss value on the last stage (copies each micro-batch's output and target to the host).</summary>
    public bool ComputeLoss { get; init; }

    /// <summary>N, the rows the mean squared error is normalised by (0: the step's rows). With data parallelism over d
    /// replicas of equal shares, the replica's rows: the replicas' gradients then average to the global batch's.</summary>
    public long LossRows { get; init; }
}

/// <summary>One action of a step as the timeline records it: milliseconds from the start of the step's window.</summary>
public readonly record struct PipelineTimelineEntry(PipelineActionKind Kind, int MicroBatch, double StartMs, double EndMs)
{
    /// <summary>EndMs − StartMs.</summary>
    public double DurationMs => EndMs - StartMs;
}

/// <summary>What one stage measured in one step.</summary>
public sealed class PipelineStepReport
{
    internal PipelineStepReport(int stage, int stages, int microBatches, PipelineSchedule schedule, int peak, long peakBytes,
        IReadOnlyList<PipelineTimelineEntry> timeline, double stepMs, double? loss)
    {
        Stage = stage;
        Stages = stages;
        MicroBatches = microBatches;
        Schedule = schedule;
        PeakMicroBatches = peak;
        PeakActivationBytes = peakBytes;
        Timeline = timeline;
        StepMs = stepMs;
        Loss = loss;
        foreach (var e in timeline)
            if (e.Kind is PipelineActionKind.Forward or PipelineActionKind.Backward) BusyMs += e.DurationMs;
            else TransferMs += e.DurationMs;
    }

    /// <summary>This stage (0 = first).</summary>
    public int Stage { get; }
    /// <summary>The number of stages.</summary>
    public int Stages { get; }
    /// <summary>m.</summary>
    public int MicroBatches { get; }
    /// <summary>The schedule run.</summary>
    public PipelineSchedule Schedule { get; }
    /// <summary>The most micro-batches whose activations the stage held at once (forwarded, not yet backwarded).</summary>
    public int PeakMicroBatches { get; }
    /// <summary>The most bytes of activations the stage held at once for backwards to come: per held micro-batch the
    /// stage's saved activations and its input (on the first stage the caller's rows, which must stay alive too) — what
    /// <see cref="MeshPlan"/> calls the stash — and, on the last stage, its output until the loss (rows × output
    /// features, which MeshPlan counts among the working buffers).</summary>
    public long PeakActivationBytes { get; }
    /// <summary>Every action with its start and end (empty unless <see cref="PipelineOptions.RecordTimeline"/>).</summary>
    public IReadOnlyList<PipelineTimelineEntry> Timeline { get; }
    /// <summary>The step's window in milliseconds: with a timeline, between the opening and the closing barrier of the
    /// pipeline group (the same window on every stage); else the host time of <see cref="PipelineEngine.Step"/>.</summary>
    public double StepMs { get; }
    /// <summary>Milliseconds of forwards and backwards (timeline only).</summary>
    public double BusyMs { get; }
    /// <summary>Milliseconds in transfers, their waits for the peer included (timeline only).</summary>
    public double TransferMs { get; }
    /// <summary>1 − BusyMs / StepMs: the fraction of the step the stage did not compute (timeline only; NaN without).</summary>
    public double IdleFraction => Timeline.Count == 0 ? double.NaN : 1 - BusyMs / StepMs;
    /// <summary>The mean squared error of the step (last stage with <see cref="PipelineOptions.ComputeLoss"/>; else null).</summary>
    public double? Loss { get; }
}

/// <summary>
/// Runs a <see cref="PipelineStage"/> as stage <c>pipeline.Rank</c> of <c>pipeline.WorldSize</c>: each
/// <see cref="Step"/> splits the batch into micro-batches and runs the schedule's actions
/// (<see cref="PipelineSchedules.Actions"/>), moving activations forward and their gradients backward between
/// neighbouring stages with <see cref="RankContext.Send{T}"/>, <see cref="RankContext.Recv{T}"/> and
/// <see cref="RankContext.SendRecv{T}"/> on the pipeline group. The last stage computes the loss, the mean squared
/// error <c>L = 1/(N·H) Σ (y − t)²</c> over its outputs y and the targets t (N = <see cref="PipelineOptions.LossRows"/>
/// or the step's rows, H the output features), and its gradient <c>dL/dy = 2/(N·H)·(y − t)</c>. The stage's parameter
/// gradients are overwritten by the step's first backward and accumulated over the others (the sum over micro-batches
/// of the micro-batch gradients = the batch's gradient). Every rank of the pipeline group runs its own engine with the
/// same options and rows.
/// </summary>
public sealed class PipelineEngine
{
    private readonly RankContext _pp;
    private readonly PipelineStage _stage;

    /// <summary>An engine for <paramref name="stage"/> as stage <paramref name="pipeline"/>.Rank of the pipeline group;
    /// <paramref name="pipeline"/> must run on the same device and stream as the stage (a sub-group rank of the same
    /// parent rank).</summary>
    public PipelineEngine(RankContext pipeline, PipelineStage stage, PipelineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(stage);
        Options = options ?? new PipelineOptions();
        if (Options.MicroBatches < 1)
            throw new ArgumentOutOfRangeException(nameof(options), Options.MicroBatches, "options.MicroBatches must be >= 1.");
        if (Options.LossRows < 0)
            throw new ArgumentOutOfRangeException(nameof(options), Options.LossRows, "options.LossRows must be >= 0 (0: the step's rows).");
        if (!Enum.IsDefined(Options.Schedule))
            throw new ArgumentOutOfRangeException(nameof(options), Options.Schedule, "options.Schedule must be GPipe or OneForwardOneBackward.");
        if (!ReferenceEquals(pipeline.Stream, stage.Context.Stream))
            throw new ArgumentException("pipeline runs on another stream than the stage's context; expected ranks of the same parent rank (their work must stay in one order).", nameof(pipeline));
        _pp = pipeline;
        _stage = stage;
    }

    /// <summary>The options.</summary>
    public PipelineOptions Options { get; }
    /// <summary>This stage's index.</summary>
    public int Stage => _pp.Rank;
    /// <summary>The number of stages.</summary>
    public int Stages => _pp.WorldSize;

    /// <summary>
    /// Runs one step (forwards and backwards of every micro-batch) over <paramref name="rows"/> rows and waits for it.
    /// <paramref name="input"/> (rows × the stage's input features, contiguous) is read on the first stage,
    /// <paramref name="target"/> (rows × output features) on the last; other stages ignore them. Errors of the queued
    /// work (a peer that fails or never comes: its timeout) surface here.
    /// </summary>
    public PipelineStepReport Step(long rows, MatrixView<float> input = default, MatrixView<float> target = default)
    {
        int m = Options.MicroBatches, s = Stage, n = Stages;
        bool first = s == 0, last = s == n - 1;
        if (rows < m)
            throw new ArgumentOutOfRangeException(nameof(rows), rows, $"rows = {rows}; expected at least one row per micro-batch (MicroBatches = {m}).");
        long hin = _stage.InputFeatures, hout = _stage.OutputFeatures;
        if (first) Require(input, rows, hin);
        if (last) Require(target, rows, hout);
        var split = ShardingPlan.Even(rows, m);
        long lossRows = Options.LossRows > 0 ? Options.LossRows : rows;
        float c = (float)(2.0 / ((double)lossRows * hout));
        var ctx = _stage.Context;
        var dev = ctx.Device;

        var inputs = new DeviceBuffer<float>?[m];  // received inputs (stages > 0)
        var outputs = new DeviceBuffer<float>?[m]; // outputs until sent (or, on the last stage, until the loss)
        var saved = new StageActivations?[m];
        var heldBytes = new long[m];
        var outGrads = new DeviceBuffer<float>?[m];
        var inGrads = new DeviceBuffer<float>?[m];
        int live = 0, peak = 0, backwards = 0;
        long liveBytes = 0, peakBytes = 0;
        double lossSum = 0;
        bool timeline = Options.RecordTimeline;
        var entries = timeline ? new List<PipelineTimelineEntry>() : null;

        MatrixView<float> Rows(DeviceBuffer<float> b, int i, long cols) => b.AsMatrix(split.Size(i), cols);
        MatrixView<float> X(int i) => first ? input.RowRange(split.Offset(i), split.Size(i)) : Rows(inputs[i]!, i, hin);
        DeviceBuffer<float> New(int i, long cols) => dev.Allocate<float>(split.Size(i) * cols);

        long t0 = 0;
        try
        {
            if (timeline)
            {
                _pp.Barrier();
                ctx.Synchronize();
            }
            t0 = Stopwatch.GetTimestamp();
            foreach (var a in PipelineSchedules.Actions(Options.Schedule, n, s, m))
            {
                double start = timeline ? Since(t0) : 0;
                int i = a.MicroBatch, j = a.Other;
                switch (a.Kind)
                {
                    case PipelineActionKind.RecvForward:
                        inputs[i] = New(i, hin);
                        _pp.Recv(inputs[i]!, s - 1);
                        break;
                    case PipelineActionKind.Forward:
                        outputs[i] = New(i, hout);
                        saved[i] = _stage.Forward(X(i), Rows(outputs[i]!, i, hout));
                        heldBytes[i] = saved[i]!.Bytes + split.Size(i) * hin * sizeof(float) + (last ? split.Size(i) * hout * sizeof(float) : 0);
                        liveBytes += heldBytes[i];
                        peakBytes = Math.Max(peakBytes, liveBytes);
                        peak = Math.Max(peak, ++live);
                        break;
                    case PipelineActionKind.SendForward:
                        _pp.Send(outputs[i]!, s + 1);
                        Free(ref outputs[i]);
                        break;
                    case PipelineActionKind.SendForwardRecvBackward:
                        outGrads[j] = New(j, hout);
                        _pp.SendRecv(outputs[i], s + 1, outGrads[j], s + 1);
                        Free(ref outputs[i]);
                        break;
                    case PipelineActionKind.RecvBackward:
                        outGrads[i] = New(i, hout);
                        _pp.Recv(outGrads[i]!, s + 1);
                        break;
                    case PipelineActionKind.Backward:
                        if (last)
                        {
                            // dL/dy = c·y − c·t, c = 2/(N·H).
                            long count = split.Size(i) * hout, toff = target.Offset + split.Offset(i) * hout;
                            var dy = outGrads[i] = New(i, hout);
                            dy.Clear(ctx.Stream);
                            ElementwiseOps.Axpy(ctx.Stream, c, outputs[i]!, dy, count);
                            ElementwiseOps.Axpy(ctx.Stream, -c, target.Buffer, dy, count, toff, 0);
                            if (Options.ComputeLoss) lossSum += SquaredError(outputs[i]!, target.Buffer, toff, count);
                            Free(ref outputs[i]);
                        }
                        inGrads[i] = New(i, hin);
                        _stage.Backward(saved[i]!, X(i), Rows(outGrads[i]!, i, hout), Rows(inGrads[i]!, i, hin),
                            accumulate: backwards > 0, lastOfStep: backwards == m - 1);
                        backwards++;
                        saved[i]!.Dispose();
                        saved[i] = null;
                        Free(ref inputs[i]);
                        Free(ref outGrads[i]);
                        if (first) Free(ref inGrads[i]);
                        live--;
                        liveBytes -= heldBytes[i];
                        break;
                    case PipelineActionKind.SendBackward:
                        _pp.Send(inGrads[i]!, s - 1);
                        Free(ref inGrads[i]);
                        break;
                    case PipelineActionKind.SendBackwardRecvForward:
                        inputs[j] = New(j, hin);
                        _pp.SendRecv(inGrads[i], s - 1, inputs[j], s - 1);
                        Free(ref inGrads[i]);
                        break;
                }
                if (timeline)
                {
                    ctx.Synchronize();
                    entries!.Add(new PipelineTimelineEntry(a.Kind, i, start, Since(t0)));
                }
            }
            if (timeline) _pp.Barrier();
            ctx.Synchronize();
        }
        finally
        {
            // Whatever an error left (the buffers' memory lives on until queued work that uses it is done).
            foreach (var b in inputs) b?.Dispose();
            foreach (var b in outputs) b?.Dispose();
            foreach (var b in outGrads) b?.Dispose();
            foreach (var b in inGrads) b?.Dispose();
            foreach (var x in saved) x?.Dispose();
        }
        double? loss = last && Options.ComputeLoss ? lossSum / ((double)lossRows * hout) : null;
        return new PipelineStepReport(s, n, m, Options.Schedule, peak, peakBytes,
            (IReadOnlyList<PipelineTimelineEntry>?)entries ?? [], Since(t0), loss);
    }

    private static double Since(long t0) => Stopwatch.GetElapsedTime(t0).TotalMilliseconds;

    private static void Free(ref DeviceBuffer<float>? b)
    {
        b?.Dispose();
        b = null;
    }

    // Σ (y − t)² in float64 over count elements (copies both to the host; waits for the stream).
    private double SquaredError(DeviceBuffer<float> y, DeviceBuffer<float> target, long targetOffset, long count)
    {
        var hy = new float[count];
        var ht = new float[count];
        y.CopyTo(hy, _stage.Context.Stream);
        target.CopyTo(ht, _stage.Context.Stream, targetOffset);
        double sum = 0;
        for (long k = 0; k < count; k++)
        {
            double d = (double)hy[k] - ht[k];
            sum += d * d;
        }
        return sum;
    }

    private void Require(MatrixView<float> m, long rows, long cols, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(m))] string name = "")
    {
        if (m.IsEmpty)
            throw new ArgumentException($"{name} is missing; stage {Stage} of {Stages} needs it ({rows} x {cols}).", name);
        ThrowHelper.SameDevice(_stage.Context.Device, m, name);
        if (m.Rows != rows || m.Cols != cols)
            throw new ArgumentException($"{name} is {m.Rows} x {m.Cols}; expected {rows} x {cols}.", name);
        if (rows > 1 && m.Ld != cols)
            throw new ArgumentException($"{name} has ld {m.Ld}; expected contiguous rows (ld = {cols}).", name);
    }
}
