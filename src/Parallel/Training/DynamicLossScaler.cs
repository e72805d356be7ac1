namespace Shardwise.Parallel;

/// <summary>
/// Dynamic loss scaling for fp16 training (as PyTorch's GradScaler), for one rank. Multiply the loss's gradient
/// seed by <see cref="Scale"/> before the backward pass; <see cref="MasterWeights.Step(float, DynamicLossScaler?)"/> then calls
/// <see cref="UnscaleAndCheck"/>: every gradient is multiplied by 1/<see cref="Scale"/> in fp32 and checked for
/// infinities and NaN, and the ranks agree through ONE all-reduce of a flag, so they all take the same decision:
/// on overflow the step is skipped and the scale multiplied by <see cref="BackoffFactor"/> (not below
/// <see cref="MinScale"/>); after <see cref="GrowthInterval"/> consecutive good steps it is multiplied by
/// <see cref="GrowthFactor"/> (not above <see cref="MaxScale"/>). An overflow at the minimum scale throws
/// <see cref="GradientOverflowException"/> on every rank instead of writing NaN into the weights.
/// </summary>
public sealed class DynamicLossScaler : IDisposable
{
    private readonly RankContext _ctx;
    private readonly DeviceBuffer<float> _flag;
    private readonly float[] _host = new float[1];

    /// <summary>A scaler on <paramref name="context"/>'s rank (every rank makes one with the same settings).</summary>
    public DynamicLossScaler(RankContext context, float initialScale = 65536f, float growthFactor = 2f, float backoffFactor = 0.5f,
        int growthInterval = 2000, float minScale = 1f, float maxScale = 16777216f)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (!float.IsFinite(minScale) || minScale <= 0)
            throw new ArgumentOutOfRangeException(nameof(minScale), minScale, "minScale must be finite and > 0.");
        if (!float.IsFinite(maxScale) || maxScale < minScale)
            throw new ArgumentOutOfRangeException(nameof(maxScale), maxScale, $"maxScale must be finite and >= minScale ({minScale}).");
        if (!float.IsFinite(initialScale) || initialScale < minScale || initialScale > maxScale)
            throw new ArgumentOutOfRangeException(nameof(initialScale), initialScale, $"initialScale must lie in [minScale, maxScale] = [{minScale}, {maxScale}].");
        if (!float.IsFinite(growthFactor) || growthFactor < 1)
            throw new ArgumentOutOfRangeException(nameof(growthFactor), growthFactor, "growthFactor must be finite and >= 1.");
        if (!float.IsFinite(backoffFactor) || backoffFactor <= 0 || backoffFactor >= 1)
            throw new ArgumentOutOfRangeException(nameof(backoffFactor), backoffFactor, "backoffFactor must lie in (0, 1).");
        ThrowHelper.Positive(growthInterval);
        _ctx = context;
        Scale = initialScale;
        GrowthFactor = growthFactor;
        BackoffFactor = backoffFactor;
        GrowthInterval = growthInterval;
        MinScale = minScale;
        MaxScale = maxScale;
        _flag = context.Device.Allocate<float>(1);
    }

    /// <summary>The current loss scale: multiply the gradient seed (dLoss/dY) by it.</summary>
    public float Scale { get; private set; }
    /// <summary>The factor applied after <see cref="GrowthInterval"/> good steps.</summary>
    public float GrowthFactor { get; }
    /// <summary>The factor applied on overflow.</summary>
    public float BackoffFactor { get; }
    /// <summary>Good steps in a row before the scale grows.</summary>
    public int GrowthInterval { get; }
    /// <summary>The smallest scale; an overflow at this scale throws.</summary>
    public float MinScale { get; }
    /// <summary>The largest scale.</summary>
    public float MaxScale { get; }
    /// <summary>Good steps since the last growth or overflow.</summary>
    public int GoodSteps { get; private set; }
    /// <summary>Steps checked so far (good and skipped).</summary>
    public long Steps { get; private set; }
    /// <summary>Steps skipped because of an overflow.</summary>
    public long SkippedSteps { get; private set; }

    /// <summary>
    /// Unscales and checks every gradient registered in <paramref name="weights"/>, agrees with the other ranks (one
    /// all-reduce of the overflow flag; waits for the rank's stream) and updates the scale. Returns true when the step
    /// may proceed (no rank saw an infinity or NaN), false when it must be skipped; throws
    /// <see cref="GradientOverflowException"/> when the gradients overflowed at <see cref="MinScale"/>.
    /// </summary>
    public bool UnscaleAndCheck(MasterWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        if (!ReferenceEquals(weights.Context, _ctx))
            throw new ArgumentException("weights belong to another rank than this scaler.", nameof(weights));
        var stream = _ctx.Stream;
        _flag.Clear(stream);
        weights.UnscaleAll(Scale, _flag);
        _ctx.AllReduce(_flag); // the one collective: the sum of every rank's flag
        _flag.CopyTo(_host, stream); // waits for the stream
        Steps++;
        if (_host[0] == 0f)
        {
            if (++GoodSteps >= GrowthInterval)
            {
                Scale = Math.Min(MaxScale, Scale * GrowthFactor);
                GoodSteps = 0;
            }
            return true;
        }
        GoodSteps = 0;
        SkippedSteps++;
        if (Scale <= MinScale)
            throw new GradientOverflowException(Steps, Scale, (int)_host[0], _ctx.Rank);
        Scale = Math.Max(MinScale, Scale * BackoffFactor);
        return false;
    }

    /// <summary>Frees the flag buffer.</summary>
    public void Dispose() => _flag.Dispose();
}

/// <summary>The gradients held an infinity or NaN at the loss scaler's minimum scale: training cannot go on without
/// NaN weights (lower the learning rate, raise the minimum scale's headroom or train in bf16). Thrown on every rank.</summary>
public sealed class GradientOverflowException : InvalidOperationException
{
    internal GradientOverflowException(long step, float scale, int ranksWithOverflow, int rank)
        : base($"step {step}: the gradients hold an infinity or NaN on {ranksWithOverflow} rank(s) at the minimum loss scale {scale}; " +
               $"the step was skipped and the weights are unchanged (rank {rank}).")
    {
        Step = step;
        Scale = scale;
        RanksWithOverflow = ranksWithOverflow;
    }

    /// <summary>The step (1-based count of checked steps) that overflowed.</summary>
    public long Step { get; }
    /// <summary>The loss scale of that step (the minimum).</summary>
    public float Scale { get; }
    /// <summary>How many ranks saw an infinity or NaN.</summary>
    public int RanksWithOverflow { get; }
}
