using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// One parameter as one rank holds it, for optimizers, clipping and checkpoints: the full tensor's name and shape, which
/// block of it this rank holds (rows [RowOffset, RowOffset + Rows) × columns [ColOffset, ColOffset + Cols)), whether
/// every rank of the tensor-parallel group holds the same block (<see cref="Replicated"/>: norms; counted once in a
/// global norm), and the fp32 value and gradient buffers (Rows × Cols, row-major, from <see cref="ValueOffset"/> and
/// <see cref="GradientOffset"/>). The layers list theirs with <c>Parameters(gradients)</c>; a rank without a shard of a
/// tensor lists nothing for it.
/// </summary>
public sealed record ParameterShard(string Name, long FullRows, long FullCols, long RowOffset, long Rows, long ColOffset, long Cols,
    bool Replicated, DeviceBuffer<float> Value, DeviceBuffer<float> Gradient)
{
    /// <summary>Elements of this rank's block.</summary>
    public long Count => Rows * Cols;
    /// <summary>Where the block starts in <see cref="Value"/> (elements).</summary>
    public long ValueOffset { get; init; }
    /// <summary>Where the block's gradient starts in <see cref="Gradient"/> (elements).</summary>
    public long GradientOffset { get; init; }

    internal static IEnumerable<ParameterShard> Of(string name, long fullRows, long fullCols, long rowOffset, long rows, long colOffset, long cols,
        bool replicated, DeviceBuffer<float>? value, DeviceBuffer<float>? gradient)
    {
        if (rows * cols == 0 || value is null) yield break;
        if (gradient is null) throw new ArgumentException($"{name}: the gradients hold no buffer for this parameter.", "gradients");
        yield return new ParameterShard(name, fullRows, fullCols, rowOffset, rows, colOffset, cols, replicated, value, gradient);
    }
}

/// <summary>
/// An optimizer over parameter shards, stepping each on the device (<c>sw_sgd_step</c>, <c>sw_adamw_step</c>): no
/// communication, since every rank updates its own shards, and replicated parameters get the same update on every
/// rank from the same gradient. The state (momentum, Adam's moments) lives on the device beside each parameter, keyed
/// by its value buffer, created zeroed at its first step. fp32 parameters and gradients.
/// </summary>
public abstract class Optimizer : IDisposable
{
    private readonly Dictionary<(DeviceBuffer<float>, long), DeviceBuffer<float>[]> _state = new(new StateKeyComparer());

    private sealed class StateKeyComparer : IEqualityComparer<(DeviceBuffer<float> Buffer, long Offset)>
    {
        public bool Equals((DeviceBuffer<float> Buffer, long Offset) a, (DeviceBuffer<float> Buffer, long Offset) b) =>
            ReferenceEquals(a.Buffer, b.Buffer) && a.Offset == b.Offset;
        public int GetHashCode((DeviceBuffer<float> Buffer, long Offset) k) =>
            HashCode.Combine(System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(k.Buffer), k.Offset);
    }

    /// <summary>The learning rate of the next step (set it from a schedule between steps).</summary>
    public float LearningRate { get; set; }
    /// <summary>Steps taken.</summary>
    public long Steps { get; private set; }

    /// <summary>Queues one step of every parameter on <paramref name="stream"/>.</summary>
    public void Step(DeviceStream stream, IEnumerable<ParameterShard> parameters)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(parameters);
        if (!float.IsFinite(LearningRate) || LearningRate < 0)
            throw new InvalidOperationException($"LearningRate = {LearningRate}; expected a finite value >= 0.");
        Steps++;
        foreach (var p in parameters)
        {
            if (p.ValueOffset < 0 || p.GradientOffset < 0 || p.Value.Length - p.ValueOffset < p.Count || p.Gradient.Length - p.GradientOffset < p.Count)
                throw new ArgumentException($"{p.Name}: value or gradient holds fewer than its {p.Count} elements from its offset.", nameof(parameters));
            if (!_state.TryGetValue((p.Value, p.ValueOffset), out var state))
            {
                state = new DeviceBuffer<float>[StateBuffers];
                for (int i = 0; i < state.Length; i++)
                {
                    state[i] = stream.Device.Allocate<float>(Math.Max(1, p.Count));
                    state[i].Clear(stream);
                }
                _state[(p.Value, p.ValueOffset)] = state;
            }
            Update(stream, p, state, Steps);
        }
    }

    /// <summary>The state buffers per parameter (each as long as the parameter).</summary>
    protected abstract int StateBuffers { get; }
    /// <summary>Queues the update of one parameter at step <paramref name="step"/> (1 for the first).</summary>
    protected abstract void Update(DeviceStream stream, ParameterShard p, DeviceBuffer<float>[] state, long step);

    /// <summary>Frees the state.</summary>
    public void Dispose()
    {
        foreach (var s in _state.Values) foreach (var b in s) b.Dispose();
        _state.Clear();
        GC.SuppressFinalize(this);
    }
}

/// <summary>SGD with momentum (torch.optim.SGD semantics, dampening 0; coupled weight decay).</summary>
public sealed class SgdOptimizer : Optimizer
{
    /// <summary>A plain SGD when <paramref name="momentum"/> is 0.</summary>
    public SgdOptimizer(float learningRate, float momentum = 0f, float weightDecay = 0f, bool nesterov = false)
    {
        if (!float.IsFinite(momentum) || momentum < 0 || momentum >= 1)
            throw new ArgumentOutOfRangeException(nameof(momentum), momentum, "expected a momentum in [0, 1).");
        if (!float.IsFinite(weightDecay) || weightDecay < 0)
            throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "expected a weight decay >= 0.");
        if (nesterov && momentum == 0) throw new ArgumentException("Nesterov momentum needs momentum > 0.", nameof(nesterov));
        LearningRate = learningRate;
        Momentum = momentum;
        WeightDecay = weightDecay;
        Nesterov = nesterov;
    }

    /// <summary>The momentum factor.</summary>
    public float Momentum { get; }
    /// <summary>The L2 weight decay added to the gradient.</summary>
    public float WeightDecay { get; }
    /// <summary>Nesterov momentum.</summary>
    public bool Nesterov { get; }

    /// <inheritdoc />
    protected override int StateBuffers => Momentum > 0 ? 1 : 0;

    /// <inheritdoc />
    protected override void Update(DeviceStream stream, ParameterShard p, DeviceBuffer<float>[] state, long step)
    {
        var buf = state.Length > 0 ? state[0] : null;
        bool added = false;
        try
        {
            buf?.Handle.DangerousAddRef(ref added);
            ThrowHelper.Check(Native.sw_sgd_step(stream.Handle, SwDtype.F32, p.Value.Handle, (ulong)p.ValueOffset, p.Gradient.Handle, (ulong)p.GradientOffset,
                buf?.Handle.DangerousGetHandle() ?? 0, 0, (ulong)p.Count, LearningRate, Momentum, WeightDecay, Nesterov ? 1 : 0));
        }
        finally
        {
            if (added) buf!.Handle.DangerousRelease();
        }
    }
}

/// <summary>AdamW (torch.optim.AdamW semantics: decoupled weight decay, bias-corrected moments in fp32).</summary>
public sealed class AdamWOptimizer : Optimizer
{
    /// <summary>Defaults as torch: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.</summary>
    public AdamWOptimizer(float learningRate, float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f, float weightDecay = 0.01f)
    {
        if (!float.IsFinite(beta1) || beta1 < 0 || beta1 >= 1) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "expected beta1 in [0, 1).");
        if (!float.IsFinite(beta2) || beta2 < 0 || beta2 >= 1) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "expected beta2 in [0, 1).");
        if (!float.IsFinite(eps) || eps <= 0) throw new ArgumentOutOfRangeException(nameof(eps), eps, "expected eps > 0.");
        if (!float.IsFinite(weightDecay) || weightDecay < 0)
            throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "expected a weight decay >= 0.");
        LearningRate = learningRate;
        (Beta1, Beta2, Eps, WeightDecay) = (beta1, beta2, eps, weightDecay);
    }

    /// <summary>First-moment decay.</summary>
    public float Beta1 { get; }
    /// <summary>Second-moment decay.</summary>
    public float Beta2 { get; }
    /// <summary>Added to √v̂.</summary>
    public float Eps { get; }
    /// <summary>Decoupled weight decay (param ·= 1 − lr·wd).</summary>
    public float WeightDecay { get; }

    /// <inheritdoc />
    protected override int StateBuffers => 2;

    /// <inheritdoc />
    protected override void Update(DeviceStream stream, ParameterShard p, DeviceBuffer<float>[] state, long step) =>
        ThrowHelper.Check(Native.sw_adamw_step(stream.Handle, SwDtype.F32, p.Value.Handle, (ulong)p.ValueOffset, p.Gradient.Handle,
            (ulong)p.GradientOffset, state[0].Handle, 0,
            state[1].Handle, 0, (ulong)p.Count, LearningRate, Beta1, Beta2, Eps, WeightDecay, step));
}

/// <summary>Clipping by the global norm of the gradients across a tensor-parallel group.</summary>
public static class GradientClipping
{
    /// <summary>
    /// The global L2 norm of every listed gradient — sharded gradients summed over the ranks of <paramref name="group"/>,
    /// replicated ones (<see cref="ParameterShard.Replicated"/>) counted once — and, when it exceeds
    /// <paramref name="maxNorm"/>, every gradient scaled by maxNorm / (norm + 1e-6) (as torch's clip_grad_norm_). Each
    /// rank's squares are summed in double on the device (<c>sw_sum_squares</c>), one all-reduce of that double over the
    /// group, and one read on the host (the coefficient is decided there). Returns the norm before clipping (the same on
    /// every rank). Call it on every rank of the group.
    /// </summary>
    public static double ClipByGlobalNorm(RankContext group, IEnumerable<ParameterShard> parameters, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(parameters);
        if (!double.IsFinite(maxNorm) || maxNorm <= 0) throw new ArgumentOutOfRangeException(nameof(maxNorm), maxNorm, "expected a finite norm > 0.");
        var list = parameters as IReadOnlyList<ParameterShard> ?? parameters.ToList();
        var stream = group.Stream;
        using var sum = group.Device.Allocate<double>(1);
        sum.Clear(stream);
        foreach (var p in list)
        {
            if (p.Replicated && group.Rank != 0) continue; // the same on every rank: counted once
            ThrowHelper.Check(Native.sw_sum_squares(stream.Handle, SwDtype.F32, p.Gradient.Handle, (ulong)p.GradientOffset, (ulong)p.Count, sum.Handle, 0, 1));
        }
        if (group.WorldSize > 1) group.AllReduce(sum);
        double norm = Math.Sqrt(sum.ToArray(stream)[0]);
        if (!double.IsFinite(norm)) return norm; // inf / NaN gradients: left as they are, the caller decides (skip the step)
        double coef = maxNorm / (norm + 1e-6);
        if (coef < 1)
            foreach (var p in list)
                ThrowHelper.Check(Native.sw_scale(stream.Handle, SwDtype.F32, p.Gradient.Handle, (ulong)p.GradientOffset, (ulong)p.Count, (float)coef));
        return norm;
    }
}

/// <summary>Learning-rate schedules (host-side: set <see cref="Optimizer.LearningRate"/> before each step).</summary>
public static class LearningRateSchedule
{
    /// <summary>Linear warm-up from 0 to <paramref name="peak"/> over <paramref name="warmupSteps"/> steps, then a cosine
    /// decay to <paramref name="minimum"/> at <paramref name="totalSteps"/> (held after). <paramref name="step"/> counts
    /// from 1 (the step about to be taken).</summary>
    public static float WarmupCosine(long step, float peak, long warmupSteps, long totalSteps, float minimum = 0f)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "steps count from 1.");
        if (warmupSteps < 0 || totalSteps < warmupSteps)
            throw new ArgumentOutOfRangeException(nameof(totalSteps), totalSteps, $"expected 0 <= warmupSteps ({warmupSteps}) <= totalSteps.");
        if (step <= warmupSteps) return peak * step / warmupSteps;
        if (step >= totalSteps) return minimum;
        double progress = (double)(step - warmupSteps) / (totalSteps - warmupSteps);
        return (float)(minimum + (peak - minimum) * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
