namespace Shardwise.Parallel;

/// <summary>
/// One pipeline stage on one rank: a contiguous range of a model's layers. <see cref="PipelineEngine"/> calls
/// <see cref="Forward"/> and <see cref="Backward"/> once per micro-batch in the order of its schedule; both queue their
/// work on the rank's stream (<see cref="Context"/>) and return at once. Activations are fp32 row-major matrices with
/// contiguous rows (rows × <see cref="InputFeatures"/> in, rows × <see cref="OutputFeatures"/> out).
/// </summary>
public abstract class PipelineStage : IDisposable
{
    /// <summary>A stage running on <paramref name="context"/>'s device and stream (for a tensor-parallel stage: the rank
    /// of the stage's tensor-parallel group).</summary>
    protected PipelineStage(RankContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Context = context;
    }

    /// <summary>The rank the stage's work is queued on.</summary>
    public RankContext Context { get; }

    /// <summary>Features of the stage's input activation.</summary>
    public abstract long InputFeatures { get; }

    /// <summary>Features of the stage's output activation.</summary>
    public abstract long OutputFeatures { get; }

    /// <summary>Queues the forward of one micro-batch: <paramref name="x"/> (rows × <see cref="InputFeatures"/>) to
    /// <paramref name="y"/> (rows × <see cref="OutputFeatures"/>). Returns what the backward needs; the engine keeps it
    /// until the micro-batch's backward and then disposes it (the input <paramref name="x"/> is kept by the engine and
    /// passed to the backward again).</summary>
    public abstract StageActivations Forward(MatrixView<float> x, MatrixView<float> y);

    /// <summary>Queues the backward of one micro-batch: from the output gradient <paramref name="dy"/> to the input
    /// gradient <paramref name="dx"/>, adding the parameters' gradients (overwriting them when
    /// <paramref name="accumulate"/> is false: the step's first backward). <paramref name="lastOfStep"/>: the step's last
    /// backward (the parameters' gradients are final once it has been queued).</summary>
    public abstract void Backward(StageActivations saved, MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx,
        bool accumulate, bool lastOfStep);

    /// <summary>Releases the stage's layers.</summary>
    public virtual void Dispose() => GC.SuppressFinalize(this);
}

/// <summary>What a stage's forward keeps for its backward: its size in bytes (what the engine counts as held), an
/// optional state object, and the buffers it owns (disposed with it).</summary>
public sealed class StageActivations : IDisposable
{
    private readonly IDisposable[] _owned;

    /// <summary>Saved activations of <paramref name="bytes"/> bytes owning <paramref name="owned"/>.</summary>
    public StageActivations(long bytes, object? state = null, params IDisposable[] owned)
    {
        ThrowHelper.NonNegative(bytes);
        Bytes = bytes;
        State = state;
        _owned = owned ?? [];
    }

    /// <summary>Device bytes held until the backward.</summary>
    public long Bytes { get; }

    /// <summary>The stage's own record of the forward (e.g. the layers' saved activations).</summary>
    public object? State { get; }

    /// <summary>Releases the owned buffers (memory still used by queued work is freed when that work is done).</summary>
    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
    }
}
