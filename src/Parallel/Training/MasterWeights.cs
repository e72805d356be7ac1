using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// fp32 master weights for one rank's parameters, with working copies in any type (bf16, fp16, f32) that the layers
/// compute with: <see cref="Step(float, DynamicLossScaler?)"/> applies plain SGD to the fp32 masters (<c>master += -lr · gradient</c>, the
/// gradient widened to fp32, one fused multiply-add per element) and then refreshes each working copy from its master
/// (rounded to nearest even), all on the rank's stream. With a <see cref="DynamicLossScaler"/> the gradients are first
/// unscaled and checked on every rank, and a step whose gradients hold an infinity or NaN on any rank is skipped on
/// every rank (masters and working copies untouched). Registration allocates; steps allocate nothing managed.
/// </summary>
public sealed class MasterWeights : IDisposable
{
    private readonly RankContext _ctx;
    private readonly List<Entry> _entries = new();

    /// <summary>Master weights of <paramref name="context"/>'s parameters (none yet: see <see cref="Add{TWork, TGrad}"/>).</summary>
    public MasterWeights(RankContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _ctx = context;
    }

    /// <summary>The rank.</summary>
    public RankContext Context => _ctx;
    /// <summary>The number of registered parameters.</summary>
    public int Count => _entries.Count;

    /// <summary>Registers a parameter: its working copy (the layer's buffer, refreshed after each step) and its gradient
    /// (same length; unscaled in place by the loss scaler). The master starts as the working copy widened to fp32. Null
    /// (a rank's empty shard) registers nothing. Returns the master (fp32), or null.</summary>
    public DeviceBuffer<float>? Add<TWork, TGrad>(DeviceBuffer<TWork>? working, DeviceBuffer<TGrad>? gradient)
        where TWork : unmanaged where TGrad : unmanaged
    {
        if (working is null && gradient is null) return null;
        ArgumentNullException.ThrowIfNull(working);
        ArgumentNullException.ThrowIfNull(gradient);
        if (gradient.Length < working.Length)
            throw new ArgumentException($"gradient has {gradient.Length} elements; expected at least the {working.Length} of the working copy.", nameof(gradient));
        ThrowHelper.SameDevice(_ctx.Device, working);
        ThrowHelper.SameDevice(_ctx.Device, gradient);
        long count = working.Length;
        var master = _ctx.Device.Allocate<float>(count);
        try
        {
            ElementwiseOps.Convert(_ctx.Stream, working, master, count);
        }
        catch
        {
            master.Dispose();
            throw;
        }
        _entries.Add(new Entry(
            master,
            (object)gradient as DeviceBuffer<float>,
            (stream, scale, flag) => ElementwiseOps.UnscaleCheck(stream, gradient, count, scale, flag),
            (stream, lr) => ElementwiseOps.Axpy(stream, -lr, gradient, master, count),
            stream => ElementwiseOps.Convert(stream, master, working, count)));
        return master;
    }

    /// <summary>Registers the four parameters of an FFN (W1, b1, W2 and, on rank 0, b2) with their gradients, in the
    /// layer's parameter type.</summary>
    public void AddFeedForward(ParallelFeedForward ffn, FeedForwardGradients gradients)
    {
        ArgumentNullException.ThrowIfNull(ffn);
        ArgumentNullException.ThrowIfNull(gradients);
        switch (ffn.Precision.Parameter)
        {
            case SwDtype.F32: AddFeedForward<float>(ffn, gradients); break;
            case SwDtype.F16: AddFeedForward<Half>(ffn, gradients); break;
            case SwDtype.BF16: AddFeedForward<BFloat16>(ffn, gradients); break;
            default: throw new NotSupportedException(ffn.Precision.ToString());
        }
    }

    private void AddFeedForward<TP>(ParallelFeedForward ffn, FeedForwardGradients g) where TP : unmanaged
    {
        Add(ffn.Up.WeightAs<TP>(), g.DW1);
        if (ffn.Up.BiasAs<TP>() is { } b1) Add(b1, g.DB1);
        Add(ffn.Down.WeightAs<TP>(), g.DW2);
        if (ffn.Down.BiasAs<TP>() is { } b2) Add(b2, g.DB2);
    }

    /// <summary>The fp32 master of the <paramref name="index"/>-th registered parameter.</summary>
    public DeviceBuffer<float> Master(int index) => _entries[index].Master;

    /// <summary>
    /// One optimizer step (SGD with <paramref name="learningRate"/>), queued on the rank's stream. With
    /// <paramref name="scaler"/>: the gradients are unscaled and checked first (one all-reduce of a flag over the group:
    /// every rank must call this at the same step), and on overflow the step is skipped on every rank and false is
    /// returned (the scaler halves its scale), or, at the scaler's minimum scale, <see cref="GradientOverflowException"/>
    /// is thrown on every rank before anything is changed. Returns true when the weights were updated.
    /// </summary>
    public bool Step(float learningRate, DynamicLossScaler? scaler = null)
    {
        if (!float.IsFinite(learningRate))
            throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "learningRate must be finite.");
        if (scaler is not null && !scaler.UnscaleAndCheck(this)) return false;
        var stream = _ctx.Stream;
        foreach (var e in _entries)
        {
            e.Update(stream, learningRate);
            e.Refresh(stream);
        }
        return true;
    }

    /// <summary>
    /// One step of <paramref name="optimizer"/> (e.g. <see cref="AdamWOptimizer"/>) on the fp32 masters, then the working
    /// copies refreshed from them — with <paramref name="scaler"/>, after the gradients are unscaled and checked as in
    /// <see cref="Step(float, DynamicLossScaler?)"/> (skipped on every rank on overflow; false returned). The gradients
    /// must be fp32 (the layers' gradient accumulation type; <see cref="NotSupportedException"/> otherwise). The
    /// optimizer's state lives beside each master.
    /// </summary>
    public bool Step(Optimizer optimizer, DynamicLossScaler? scaler = null)
    {
        ArgumentNullException.ThrowIfNull(optimizer);
        var shards = new List<ParameterShard>(_entries.Count);
        for (int i = 0; i < _entries.Count; i++)
        {
            var e = _entries[i];
            if (e.Gradient32 is null)
                throw new NotSupportedException($"parameter {i}: its gradient is not fp32; an Optimizer steps fp32 gradients (use Step(learningRate) for SGD on 16-bit gradients).");
            shards.Add(new ParameterShard($"master{i}", 1, e.Master.Length, 0, 1, 0, e.Master.Length, false, e.Master, e.Gradient32));
        }
        if (scaler is not null && !scaler.UnscaleAndCheck(this)) return false;
        optimizer.Step(_ctx.Stream, shards);
        foreach (var e in _entries) e.Refresh(_ctx.Stream);
        return true;
    }

    /// <summary>Queues the unscaling and check of every registered gradient into <paramref name="flag"/>.</summary>
    internal void UnscaleAll(float scale, DeviceBuffer<float> flag)
    {
        foreach (var e in _entries) e.Unscale(_ctx.Stream, scale, flag);
    }

    /// <summary>Frees the masters (not the working copies or gradients, which belong to the layers and the caller).</summary>
    public void Dispose()
    {
        foreach (var e in _entries) e.Master.Dispose();
        _entries.Clear();
    }

    private sealed record Entry(DeviceBuffer<float> Master, DeviceBuffer<float>? Gradient32, Action<DeviceStream, float, DeviceBuffer<float>> Unscale,
        Action<DeviceStream, float> Update, Action<DeviceStream> Refresh);
}
