using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The tensor-parallel FFN sub-layer for one rank: <c>Y = GeLU(X·W1 + b1)·W2 + b2</c> with W1 (H × F) split by
/// columns and W2 (F × H) split by rows over the same plan of F, so each rank computes
/// <c>GeLU(X·W1[:, f_r] + b1[f_r])·W2[f_r, :]</c> with no communication, and exactly one all-reduce combines them.
/// Uneven splits of F (F % p ≠ 0, empty shards) are handled. Any <see cref="Precision"/> whose gradient accumulation
/// type is f32: GeLU runs in fp32 (the first GEMM's epilogue, or on the fp32 pre-activation in training) and the hidden
/// activation is stored in the compute type; the output has the output type. ReLU instead of GeLU
/// (<see cref="Activation"/>, <see cref="SwActivation.Relu"/>) runs as a separate fp32 kernel after the first GEMM and
/// takes the fp32 precision only; for SwiGLU see <see cref="ParallelGatedFeedForward"/>.
/// </summary>
public sealed class ParallelFeedForward : IDisposable
{
    private readonly RankContext _ctx;
    private readonly TypedScratch _hidden = new(3); // 0: hidden / gathered input; 1: the SP backward's X and dX; 2: its dY

    /// <summary>Loads this rank's shards of W1 (H × F), b1 (1 × F), W2 (F × H) and, on rank 0, b2 (1 × H), in the
    /// parameter type of <paramref name="precision"/> (null: fp32; its gradient accumulation type must be f32).</summary>
    public ParallelFeedForward(RankContext context, WeightSource w1, WeightSource? b1, WeightSource w2, WeightSource? b2,
        ShardingPlan? plan = null, Precision? precision = null) : this(context, w1, b1, w2, b2, plan, precision, SwActivation.Gelu) { }

    /// <summary>As the other constructor, with the activation between the two layers: <see cref="SwActivation.Gelu"/> (any
    /// precision) or <see cref="SwActivation.Relu"/> / <see cref="SwActivation.Silu"/> (fp32 precision only).</summary>
    public ParallelFeedForward(RankContext context, WeightSource w1, WeightSource? b1, WeightSource w2, WeightSource? b2,
        ShardingPlan? plan, Precision? precision, SwActivation activation)
    {
        if (activation != SwActivation.Gelu && activation != SwActivation.Relu && activation != SwActivation.Silu)
            throw new ArgumentOutOfRangeException(nameof(activation), activation, "expected SwActivation.Gelu, Relu or Silu.");
        if (activation != SwActivation.Gelu && precision is not null && precision != Precision.Fp32)
            throw new NotSupportedException($"ParallelFeedForward with {activation} takes the fp32 precision only (its activation is a separate fp32 kernel); got {precision}.");
        Activation = activation;
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(w1);
        ArgumentNullException.ThrowIfNull(w2);
        if (w2.Rows != w1.Cols || w2.Cols != w1.Rows)
            throw new ArgumentException($"w2 is {w2.Rows} x {w2.Cols}; expected F x H = {w1.Cols} x {w1.Rows} (w1 is H x F = {w1.Rows} x {w1.Cols}).", nameof(w2));
        var p = precision ?? Precision.Fp32;
        if (p.GradientAccumulation != SwDtype.F32)
            throw new NotSupportedException($"ParallelFeedForward accumulates its gradients in f32 (FeedForwardGradients); the precision {p} asks for {Gemm.DtypeName(p.GradientAccumulation)}.");
        Precision = p;
        _ctx = context;
        Plan = TreeReduction.PlanFor(context, w1.Cols, plan, nameof(plan)); // the tree's split of F in TP-invariant mode
        LayerPlan.FeedForward(w1.Rows, w1.Cols, context.WorldSize, split: Plan).EnsureFitsOn(context);
        // The hidden activation is stored in the compute type: the first layer's output type is the compute type.
        var up = new Precision(p.Parameter, p.Compute, p.Compute, SwDtype.F32);
        Up = new ColumnParallelLinear(context, w1, b1, gatherOutput: false, plan: Plan,
            epilogue: activation == SwActivation.Gelu ? Epilogue.Gelu : Epilogue.None, precision: up);
        try { Down = new RowParallelLinear(context, w2, b2, inputIsParallel: true, plan: Plan, precision: p); }
        catch { Up.Dispose(); throw; }
    }

    /// <summary>The rank this layer belongs to (its device and stream; used by the tensor interop).</summary>
    internal RankContext Context => _ctx;

    /// <summary>The activation between the layers (GeLU, or ReLU / SiLU in fp32).</summary>
    public SwActivation Activation { get; }

    /// <summary>The precision policy (the first layer's output type is its compute type).</summary>
    public Precision Precision { get; }
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
    public void Forward(MatrixView<float> x, MatrixView<float> y) => Forward<float, float>(x, y);

    /// <summary>The forward in the layer's precision: <paramref name="x"/> in the compute type, <paramref name="y"/> in the
    /// output type.</summary>
    public void Forward<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y) where TIn : unmanaged where TOut : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        long m = x.Rows, fr = Up.LocalOutFeatures;
        ThrowHelper.Positive(x.Rows);
        var h = _hidden.Get<TIn>(0, _ctx.Device, m * fr).AsMatrix(m, fr, Math.Max(1, fr));
        if (Down.OverlapChunks > 1 && m > 1)
        {
            // Chunks of rows through both projections: chunk i's all-reduce overlaps chunk i + 1's GEMMs.
            Down.CheckOutput<TIn, TOut>(m, y);
            Down.ForwardRows<TIn, TOut, UpRows<TIn>>(m, new UpRows<TIn>(Up, x, h, Activation), y);
            return;
        }
        Up.Forward(x, h);
        ApplySeparateActivation(_ctx, Activation, h);
        Down.Forward(h, y);
    }

    /// <summary>Overlap of the forward's all-reduce with its GEMMs: the M rows in this many chunks, each through both
    /// projections, its all-reduce on the rank's communication stream while the next chunk multiplies (see
    /// <see cref="ParallelLinear.OverlapChunks"/>). The same bits as 1 (default: no overlap).</summary>
    public int OverlapChunks
    {
        get => Down.OverlapChunks;
        set => Down.OverlapChunks = value;
    }

    /// <summary>
    /// Sequence-parallel forward: each rank holds only its block of token rows. The rows are all-gathered into the
    /// full M × H input, the FFN runs as in <see cref="Forward(MatrixView{float}, MatrixView{float})"/>, and a
    /// reduce-scatter (instead of the all-reduce) leaves each rank its own rows of Y — still one collective for the
    /// reduction, plus the gather. <paramref name="tokens"/> splits the M rows over the ranks (uneven allowed);
    /// <paramref name="x"/> and <paramref name="y"/> are this rank's m_r × H blocks (row-major, contiguous x).
    /// </summary>
    public void ForwardSequenceParallel(MatrixView<float> x, MatrixView<float> y, ShardingPlan tokens) =>
        ForwardSequenceParallel<float, float>(x, y, tokens);

    /// <summary>The sequence-parallel forward in the layer's precision (x: compute type, y: output type).</summary>
    public void ForwardSequenceParallel<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y, ShardingPlan tokens)
        where TIn : unmanaged where TOut : unmanaged
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
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        // [0, m·H): the gathered input; then the hidden activation.
        var buffer = _hidden.Get<TIn>(0, _ctx.Device, m * hdim + Math.Max(1, m * fr));
        _ctx.AllGatherV(x.Buffer, mr * hdim, buffer, x.Offset, 0);
        var full = buffer.AsMatrix(m, hdim);
        var h = buffer.AsMatrix(m, fr, Math.Max(1, fr), m * hdim);
        Up.Forward(full, h);
        ApplySeparateActivation(_ctx, Activation, h);
        Down.ForwardScatter(h, y, tokens);
    }

    /// <summary>
    /// Training forward: like <see cref="Forward(MatrixView{float}, MatrixView{float})"/> (one all-reduce) but computes the
    /// pre-activation Z = X·W1_r + b1_r and H = GeLU(Z) separately, so <see cref="Backward(MatrixView{float},
    /// MatrixView{float}, MatrixView{float}, FeedForwardGradients, FeedForwardActivations, bool)"/> can use them. With
    /// <paramref name="keepActivations"/> the returned object holds Z and H (2·M·f_r floats per rank); without, it
    /// records only M and the backward recomputes them (activation recomputation: memory for one GEMM).
    /// </summary>
    public FeedForwardActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y, bool keepActivations = true) =>
        ForwardTraining<float, float>(x, y, keepActivations);

    /// <summary>The training forward in the layer's precision: Z is kept in fp32 (the GEMM writes fp32, fp32 bias), GeLU
    /// runs in fp32 and H is rounded once to the compute type.</summary>
    public FeedForwardActivations ForwardTraining<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y, bool keepActivations = true)
        where TIn : unmanaged where TOut : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, x.Rows, ModelFeatures, "M x model features");
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        Precision.Require<TOut>(Precision.Output, "output", nameof(y));
        var saved = new FeedForwardActivations(_ctx.Device, x.Rows, Up.LocalOutFeatures, Precision.Compute);
        try
        {
            ComputeHidden(x, saved);
            Down.Forward(saved.HiddenAs<TIn>(), y);
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
    /// the training forward; when it kept no activations they are recomputed here. An empty <paramref name="dx"/>
    /// (<c>default</c>, on every rank) skips the input gradient and its all-reduce (the first layer of a model).
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, FeedForwardGradients gradients, FeedForwardActivations saved,
        bool accumulate = false) => Backward<float, float>(x, dy, dx, gradients, saved, accumulate);

    /// <summary>The backward in the layer's precision: x and dx in the compute type, dy in the output type, fp32
    /// gradients (GEMMs with fp32 output; <paramref name="accumulate"/>: beta = 1). dH is rounded to the compute type,
    /// widened for GeLU's derivative in fp32 against the fp32 Z, and dZ rounded once to the compute type.</summary>
    public void Backward<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, FeedForwardGradients gradients,
        FeedForwardActivations saved, bool accumulate = false) where TIn : unmanaged where TOut : unmanaged
    {
        ArgumentNullException.ThrowIfNull(gradients);
        ArgumentNullException.ThrowIfNull(saved);
        ThrowHelper.NotEmpty(x);
        long m = x.Rows, fr = Up.LocalOutFeatures, hdim = ModelFeatures;
        if (saved.Rows != m || saved.HiddenFeatures != fr)
            throw new ArgumentException($"saved activations are for {saved.Rows} x {saved.HiddenFeatures}; expected {m} x {fr}.", nameof(saved));
        ThrowHelper.Shape(dy, m, hdim, "M x model features");
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        BackwardCore(x, dy, dx, gradients, saved, accumulate, null, default);
    }

    /// <summary>
    /// Sequence-parallel training forward: this rank's m_r × H rows (a block of <paramref name="tokens"/>) are all-gathered,
    /// the hidden activations of all M rows are computed (and kept, or recomputed later), and a reduce-scatter leaves this
    /// rank its rows of Y (two collectives).
    /// </summary>
    public FeedForwardActivations ForwardTrainingSequenceParallel<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y, ShardingPlan tokens,
        bool keepActivations = true) where TIn : unmanaged where TOut : unmanaged
    {
        var full = GatherRows(x, tokens, 0, 0);
        Precision.Require<TOut>(Precision.Output, "output", nameof(y));
        var saved = new FeedForwardActivations(_ctx.Device, full.Rows, Up.LocalOutFeatures, Precision.Compute);
        try
        {
            ComputeHidden(full, saved);
            Down.ForwardScatter(saved.HiddenAs<TIn>(), y, tokens);
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
    /// Sequence-parallel backward: x, dy and dx are this rank's m_r × H rows. X and dY are all-gathered, the backward runs
    /// on all M rows as <see cref="Backward{TIn, TOut}"/>, and dX's partial sums are reduce-scattered instead of
    /// all-reduced (three collectives).
    /// </summary>
    public void BackwardSequenceParallel<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, FeedForwardGradients gradients,
        FeedForwardActivations saved, ShardingPlan tokens, bool accumulate = false) where TIn : unmanaged where TOut : unmanaged
    {
        ArgumentNullException.ThrowIfNull(tokens);
        long m = tokens.Total, hdim = ModelFeatures;
        var full = GatherRows(x, tokens, 1, m * hdim); // X, then the dX work area
        var dyFull = GatherGradient(dy, tokens);
        var dxFull = full.Buffer.AsMatrix(m, hdim, hdim, m * hdim);
        BackwardCore(full, dyFull, dxFull, gradients, saved, accumulate, tokens, dx);
    }

    // This rank's rows of x all-gathered into slot `slot` (M × H, then `extra` elements).
    private MatrixView<TIn> GatherRows<TIn>(MatrixView<TIn> x, ShardingPlan tokens, int slot, long extra) where TIn : unmanaged
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Parts != _ctx.WorldSize)
            throw new ArgumentException($"tokens splits over {tokens.Parts} ranks; expected {_ctx.WorldSize}.", nameof(tokens));
        long m = tokens.Total, mr = tokens.Size(_ctx.Rank), hdim = ModelFeatures;
        ThrowHelper.Positive(tokens.Total);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, mr, hdim, "this rank's token rows x model features");
        if (mr > 1 && x.Ld != hdim) throw new ArgumentException($"x has ld {x.Ld}; the gather needs contiguous rows (ld = {hdim}).", nameof(x));
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        var buffer = _hidden.Get<TIn>(slot, _ctx.Device, m * hdim + extra);
        _ctx.AllGatherV(x.Buffer, mr * hdim, buffer, x.Offset, 0);
        return buffer.AsMatrix(m, hdim);
    }

    // dY's rows (TOut) all-gathered into slot 2.
    private MatrixView<TOut> GatherGradient<TOut>(MatrixView<TOut> dy, ShardingPlan tokens) where TOut : unmanaged
    {
        long m = tokens.Total, hdim = ModelFeatures, mr = tokens.Size(_ctx.Rank);
        ThrowHelper.NotEmpty(dy);
        ThrowHelper.Shape(dy, mr, hdim, "this rank's token rows x model features");
        if (mr > 1 && dy.Ld != hdim) throw new ArgumentException($"dy has ld {dy.Ld}; the gather needs contiguous rows (ld = {hdim}).", nameof(dy));
        Precision.Require<TOut>(Precision.Output, "output", nameof(dy));
        var buffer = _hidden.Get<TOut>(2, _ctx.Device, m * hdim);
        _ctx.AllGatherV(dy.Buffer, mr * hdim, buffer, dy.Offset, 0);
        return buffer.AsMatrix(m, hdim);
    }

    private void BackwardCore<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, FeedForwardGradients gradients,
        FeedForwardActivations saved, bool accumulate, ShardingPlan? scatter, MatrixView<TIn> dxRows) where TIn : unmanaged where TOut : unmanaged
    {
        long m = x.Rows, fr = Up.LocalOutFeatures;
        if (saved.Rows != m || saved.HiddenFeatures != fr)
            throw new ArgumentException($"saved activations are for {saved.Rows} x {saved.HiddenFeatures}; expected {m} x {fr}.", nameof(saved));
        if (!saved.IsKept) ComputeHidden(x, saved.Recreate());
        // dH (M × f_r) = dY · W2_rᵀ, dW2_r, db2 — the row-parallel layer's backward with a parallel input.
        var dh = saved.GradientAs<TIn>();
        Down.Backward(saved.HiddenAs<TIn>(), dy, dh, gradients.DW2, _ctx.Rank == 0 ? gradients.DB2 : null, accumulate);
        if (fr > 0)
        {
            long span = m * fr;
            if (typeof(TIn) == typeof(float))
            {
                if (Activation == SwActivation.Gelu) // sw_gelu_backward: the derivative of the GEMM epilogue's GeLU
                    Activations.GeluBackward(_ctx.Stream, saved.Buffer!, saved.Buffer!, saved.Buffer!, span, 0, 2 * span, 2 * span);
                else
                    RowOps.ActivationBackward(_ctx.Stream, Activation, saved.Buffer!, saved.Buffer!, saved.Buffer!, span, 0, 2 * span, 2 * span);
            }
            else // dH widened to fp32 (the work area), GeLU' in fp32 against the fp32 Z, dZ rounded once to the compute type
            {
                var low = (DeviceBuffer<TIn>)saved.Low!;
                ElementwiseOps.Convert(_ctx.Stream, low, saved.Buffer!, span, span, span);
                Activations.GeluBackward(_ctx.Stream, saved.Buffer!, saved.Buffer!, saved.Buffer!, span, 0, span, span);
                ElementwiseOps.Convert(_ctx.Stream, saved.Buffer!, low, span, span, span);
            }
        }
        Up.LinearBackward(x, dh, dx, gradients.DW1, gradients.DB1, accumulate, scatter, dxRows);
    }

    private void ComputeHidden<TC>(MatrixView<TC> x, FeedForwardActivations saved) where TC : unmanaged
    {
        long fr = Up.LocalOutFeatures, span = x.Rows * fr;
        if (fr == 0) return;
        Gemm.Multiply(_ctx.Stream, x, Up.ComputeWeight<TC>()!.AsMatrix(ModelFeatures, fr), saved.PreActivationView, bias: Up.GemmBias<float>());
        if (typeof(TC) == typeof(float))
        {
            if (Activation == SwActivation.Gelu) Activations.Gelu(_ctx.Stream, saved.Buffer!, saved.Buffer!, span, 0, span); // the epilogue's bits
            else RowOps.Activation(_ctx.Stream, Activation, saved.Buffer!, saved.Buffer!, span, 0, span);
            return;
        }
        Activations.Gelu(_ctx.Stream, saved.Buffer!, saved.Buffer!, span, 0, span); // fp32 H in the work area
        ElementwiseOps.Convert(_ctx.Stream, saved.Buffer!, (DeviceBuffer<TC>)saved.Low!, span, span, 0);
    }

    /// <summary>This rank's parameters ("w1", "b1", "w2", "b2" on rank 0) with their gradients in
    /// <paramref name="gradients"/> (fp32 layers).</summary>
    public IReadOnlyList<ParameterShard> Parameters(FeedForwardGradients gradients, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(gradients);
        return [.. Up.Parameters(gradients.DW1, gradients.DB1, prefix + "w1", prefix + "b1"),
            .. Down.Parameters(gradients.DW2, gradients.DB2, prefix + "w2", prefix + "b2")];
    }

    // The activation when it is not the first GEMM's epilogue (ReLU, SiLU: fp32 only, in place on h).
    internal static void ApplySeparateActivation<T>(RankContext ctx, SwActivation activation, MatrixView<T> h) where T : unmanaged
    {
        if (activation == SwActivation.Gelu || h.Cols == 0) return;
        var f = (MatrixView<float>)(object)h;
        if (f.Rows > 1 && f.Ld != f.Cols)
        {
            for (long i = 0; i < f.Rows; i++) RowOps.Activation(ctx.Stream, activation, f.Buffer, f.Buffer, f.Cols, f.Offset + i * f.Ld, f.Offset + i * f.Ld);
            return;
        }
        RowOps.Activation(ctx.Stream, activation, f.Buffer, f.Buffer, f.Rows * f.Cols, f.Offset, f.Offset);
    }

    /// <summary>Releases both layers and the hidden activation buffer.</summary>
    public void Dispose()
    {
        Up.Dispose();
        Down.Dispose();
        _hidden.Dispose();
    }
}

/// <summary>The FFN's hidden rows of one chunk: the up-projection (and GeLU) of those rows of x, queued, into h.</summary>
internal readonly struct UpRows<T>(ColumnParallelLinear up, MatrixView<T> x, MatrixView<T> h, SwActivation activation = SwActivation.Gelu)
    : IRowSource<T> where T : unmanaged
{
    public MatrixView<T> Rows(long start, long count)
    {
        var rows = h.RowRange(start, count);
        up.Forward(x.RowRange(start, count), rows);
        ParallelFeedForward.ApplySeparateActivation(up.Context, activation, rows);
        return rows;
    }
}
