namespace Shardwise.Parallel;

/// <summary>
/// The tensor-parallel FFN sub-layer for one rank: <c>Y = GeLU(X·W1 + b1)·W2 + b2</c> with W1 (H × F) split by
/// columns and W2 (F × H) split by rows over the same plan of F, so each rank computes
/// <c>GeLU(X·W1[:, f_r] + b1[f_r])·W2[f_r, :]</c> with no communication, and exactly one all-reduce combines them.
/// Uneven splits of F (F % p ≠ 0, empty shards) are handled.
/// </summary>
public sealed class ParallelFeedForward : IDisposable
{
    private readonly RankContext _ctx;
    private DeviceBuffer<float>? _hidden;

    /// <summary>Loads this rank's shards of W1 (H × F), b1 (1 × F), W2 (F × H) and, on rank 0, b2 (1 × H).</summary>
    public ParallelFeedForward(RankContext context, WeightSource w1, WeightSource? b1, WeightSource w2, WeightSource? b2,
        ShardingPlan? plan = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w2);
        if (w2.Rows != w1.Cols || w2.Cols != w1.Rows)
            throw new ArgumentException($"w2 is {w2.Rows} x {w2.Cols}; expected F x H = {w1.Cols} x {w1.Rows} (w1 is H x F = {w1.Rows} x {w1.Cols}).", nameof(w2));
        _ctx = context;
        Plan = plan ?? ShardingPlan.Even(w1.Cols, context.WorldSize);
        LayerPlan.FeedForward(w1.Rows, w1.Cols, context.WorldSize, split: Plan).EnsureFitsOn(context);
        Up = new ColumnParallelLinear(context, w1, b1, gatherOutput: false, plan: Plan, epilogue: Epilogue.Gelu);
        try { Down = new RowParallelLinear(context, w2, b2, inputIsParallel: true, plan: Plan); }
        catch { Up.Dispose(); throw; }
    }

    /// <summary>The rank this layer belongs to (its device and stream; used by the tensor interop).</summary>
    internal RankContext Context => _ctx;

    /// <summary>H: model width (input and output features).</summary>
    public long ModelFeatures => Up.InFeatures;
    /// <summary>F: hidden width.</summary>
    public long HiddenFeatures => Up.OutFeatures;
    /// <summary>The split of F over the ranks.</summary>
    public ShardingPlan Plan { get; }
    /// <summary>The column-parallel first layer (GeLU fused, output kept sharded).</summary>
    public ColumnParallelLinear Up { get; }
    /// <summary>The row-parallel second layer (one all-reduce).</summary>
    public RowParallelLinear Down { get; }

    /// <summary>Queues Y = GeLU(X·W1 + b1)·W2 + b2 on the rank's stream: X is M × H, Y is M × H, on every rank.</summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y)
    {
        ThrowHelper.NotEmpty(x);
        long m = x.Rows, fr = Up.LocalOutFeatures;
        ThrowHelper.Positive(x.Rows);
        var h = Scratch.Ensure(ref _hidden, _ctx.Device, m * fr).AsMatrix(m, fr, Math.Max(1, fr));
        Up.Forward(x, h);
        Down.Forward(h, y);
    }

    /// <summary>
    /// Sequence-parallel forward: each rank holds only its block of token rows. The rows are all-gathered into the
    /// full M × H input, the FFN runs as in <see cref="Forward"/>, and a reduce-scatter (instead of the all-reduce)
    /// leaves each rank its own rows of Y — still one collective for the reduction, plus the gather.
    /// <paramref name="tokens"/> splits the M rows over the ranks (uneven allowed); <paramref name="x"/> and
    /// <paramref name="y"/> are this rank's m_r × H blocks (row-major, contiguous x).
    /// </summary>
    public void ForwardSequenceParallel(MatrixView<float> x, MatrixView<float> y, ShardingPlan tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Parts != _ctx.WorldSize)
            throw new ArgumentException($"tokens splits over {tokens.Parts} ranks; expected {_ctx.WorldSize}.", nameof(tokens));
        long m = tokens.Total, mr = tokens.Size(_ctx.Rank), hdim = ModelFeatures, fr = Up.LocalOutFeatures;
        ThrowHelper.Positive(tokens.Total);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, mr, hdim, "this rank's token rows x model features");
        if (mr > 1 && x.Ld != hdim)
            throw new ArgumentException($"x has ld {x.Ld}; the gather needs contiguous rows (ld = {hdim}).", nameof(x));
        // [0, m·H): the gathered input; then the hidden activation.
        var buffer = Scratch.Ensure(ref _hidden, _ctx.Device, m * hdim + Math.Max(1, m * fr));
        _ctx.AllGatherV(x.Buffer, mr * hdim, buffer, x.Offset, 0);
        var full = buffer.AsMatrix(m, hdim);
        var h = buffer.AsMatrix(m, fr, Math.Max(1, fr), m * hdim);
        Up.Forward(full, h);
        Down.ForwardScatter(h, y, tokens);
    }

    /// <summary>
    /// Training forward: like <see cref="Forward"/> (one all-reduce) but computes the pre-activation
    /// Z = X·W1_r + b1_r and H = GeLU(Z) separately, so <see cref="Backward"/> can use them. With
    /// <paramref name="keepActivations"/> the returned object holds Z and H (2·M·f_r floats per rank); without, it
    /// records only M and <see cref="Backward"/> recomputes them (activation recomputation: memory for one GEMM).
    /// </summary>
    public FeedForwardActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y, bool keepActivations = true)
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, x.Rows, ModelFeatures, "M x model features");
        var saved = new FeedForwardActivations(_ctx.Device, x.Rows, Up.LocalOutFeatures);
        try
        {
            ComputeHidden(x, saved);
            Down.Forward(saved.HiddenView, y);
            if (!keepActivations) saved.Release();
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Backward of the FFN with one all-reduce (of dX), as Megatron: dH = dY·W2_rᵀ, dW2_r = Hᵀ·dY, db2 = Σ dY (on
    /// rank 0, which owns b2), dZ = dH ∘ GeLU'(Z), dW1_r = Xᵀ·dZ, db1_r = Σ dZ, dX = Σ_r dZ·W1_rᵀ.
    /// <paramref name="x"/> is the forward input (M × H), <paramref name="dy"/> the output gradient (M × H, the
    /// same on every rank), <paramref name="dx"/> receives the input gradient. <paramref name="saved"/> comes from
    /// <see cref="ForwardTraining"/>; when it kept no activations they are recomputed here.
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, FeedForwardGradients gradients, FeedForwardActivations saved,
        bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        ArgumentNullException.ThrowIfNull(saved);
        ThrowHelper.NotEmpty(x);
        long m = x.Rows, fr = Up.LocalOutFeatures, hdim = ModelFeatures;
        if (saved.Rows != m || saved.HiddenFeatures != fr)
            throw new ArgumentException($"saved activations are for {saved.Rows} x {saved.HiddenFeatures}; expected {m} x {fr}.", nameof(saved));
        ThrowHelper.Shape(dy, m, hdim, "M x model features");
        if (!saved.IsKept) ComputeHidden(x, saved.Recreate());
        // dH (M × f_r) = dY · W2_rᵀ, dW2_r, db2 — the row-parallel layer's backward with a parallel input.
        var dh = saved.GradientView;
        Down.Backward(saved.HiddenView, dy, dh, gradients.DW2, _ctx.Rank == 0 ? gradients.DB2 : null, accumulate);
        if (fr > 0) Activations.GeluBackward(_ctx.Stream, saved.Buffer!, saved.Buffer!, saved.Buffer!, m * fr, 0, 2 * m * fr, 2 * m * fr);
        Up.LinearBackward(x, dh, dx, gradients.DW1, gradients.DB1, accumulate);
    }

    private void ComputeHidden(MatrixView<float> x, FeedForwardActivations saved)
    {
        long fr = Up.LocalOutFeatures;
        if (fr == 0) return;
        Gemm.Multiply(_ctx.Stream, x, Up.Weight!.AsMatrix(ModelFeatures, fr), saved.PreActivationView, bias: Up.Bias);
        Activations.Gelu(_ctx.Stream, saved.Buffer!, saved.Buffer!, x.Rows * fr, 0, x.Rows * fr);
    }

    /// <summary>Releases both layers and the hidden activation buffer.</summary>
    public void Dispose()
    {
        Up.Dispose();
        Down.Dispose();
        _hidden?.Dispose();
    }
}
