using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The gated FFN of LLaMA-style blocks for one rank: <c>Y = (act(X·Wg) ∘ (X·Wu))·Wd + bd</c> with SiLU (SwiGLU, the
/// default) or GeLU (GeGLU). Wg and Wu (H × F) are split by columns and Wd (F × H) by rows over one plan of F, and the
/// gate and up projections are fused into one column-parallel GEMM: rank r's weight is [Wg[:, f_r] | Wu[:, f_r]]
/// (H × 2·f_r), so both halves of a hidden unit always live on the same rank. One all-reduce per forward and one per
/// backward (of dX); under sequence parallelism an all-gather of the token rows before and a reduce-scatter after
/// (the backward: all-gathers of X and dY, a reduce-scatter of dX). Uneven and empty shards allowed. fp32.
/// </summary>
public sealed class ParallelGatedFeedForward : IDisposable
{
    private const int SlotHidden = 0, SlotGathered = 1, SlotTree = 2, SlotCount = 3;
    private readonly RankContext _ctx;
    private readonly TypedScratch _scratch = new(SlotCount);

    /// <summary>Loads this rank's shards of Wg and Wu (H × F, fused), Wd (F × H) and, on rank 0, bd (1 × H, optional).</summary>
    public ParallelGatedFeedForward(RankContext context, WeightSource wGate, WeightSource wUp, WeightSource wDown, WeightSource? bDown = null,
        ShardingPlan? plan = null, SwActivation activation = SwActivation.Silu)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(wGate);
        ArgumentNullException.ThrowIfNull(wUp);
        ArgumentNullException.ThrowIfNull(wDown);
        if (wUp.Rows != wGate.Rows || wUp.Cols != wGate.Cols)
            throw new ArgumentException($"wUp is {wUp.Rows} x {wUp.Cols}; expected the shape of wGate, {wGate.Rows} x {wGate.Cols} (H x F).", nameof(wUp));
        if (wDown.Rows != wGate.Cols || wDown.Cols != wGate.Rows)
            throw new ArgumentException($"wDown is {wDown.Rows} x {wDown.Cols}; expected F x H = {wGate.Cols} x {wGate.Rows}.", nameof(wDown));
        if (activation != SwActivation.Silu && activation != SwActivation.Gelu)
            throw new ArgumentOutOfRangeException(nameof(activation), activation, "expected SwActivation.Silu (SwiGLU) or SwActivation.Gelu (GeGLU).");
        _ctx = context;
        Activation = activation;
        Plan = TreeReduction.PlanFor(context, wGate.Cols, plan, nameof(plan)); // the tree's split of F in TP-invariant mode
        Plan.Require(wGate.Cols, context.WorldSize, nameof(plan));
        _treeLeaf = context.Device.GemmReductionLeaf;
        var fused = ShardingPlan.FromSizes(Enumerable.Range(0, context.WorldSize).Select(r => 2 * Plan.Size(r)).ToArray());
        // (TP-invariant mode: the fused [gate | up] columns are not one tree over F; dX is summed here, BackwardCore)
        Up = new ColumnParallelLinear(context, FuseGateUp(wGate, wUp, Plan), null, false, fused, Epilogue.None, null,
            leaf: _treeLeaf > 0 ? -1 : 0);
        try { Down = new RowParallelLinear(context, wDown, bDown, inputIsParallel: true, plan: Plan); }
        catch { Up.Dispose(); throw; }
    }

    /// <summary>The H × 2F matrix whose column block of rank r is [Wg[:, f_r] | Wu[:, f_r]].</summary>
    internal static WeightSource FuseGateUp(WeightSource gate, WeightSource up, ShardingPlan plan)
    {
        long h = gate.Rows, f = gate.Cols;
        return WeightSource.FromLoader(h, 2 * f, (row0, col0, rows, cols, dest) =>
        {
            // Column c of the fused matrix: rank r's block starts at 2·off_r; its first f_r columns are the gate's.
            var column = new float[rows];
            for (long j = 0; j < cols; j++)
            {
                long c = col0 + j;
                int r = 0;
                while (r + 1 < plan.Parts && 2 * plan.Offset(r + 1) <= c) r++;
                long local = c - 2 * plan.Offset(r), fr = plan.Size(r);
                var (src, sc) = local < fr ? (gate, plan.Offset(r) + local) : (up, plan.Offset(r) + local - fr);
                src.Read(row0, sc, rows, 1, column);
                for (long i = 0; i < rows; i++) dest[(int)(i * cols + j)] = column[i];
            }
        });
    }

    /// <summary>SiLU (SwiGLU) or GeLU (GeGLU).</summary>
    public SwActivation Activation { get; }
    /// <summary>H.</summary>
    public long ModelFeatures => Up.InFeatures;
    /// <summary>F.</summary>
    public long HiddenFeatures => Down.InFeatures;
    /// <summary>The split of F.</summary>
    public ShardingPlan Plan { get; }
    /// <summary>f_r: this rank's hidden units.</summary>
    public long LocalHidden => Plan.Size(_ctx.Rank);
    /// <summary>The fused gate and up projection (H × 2·f_r per rank: gate, then up).</summary>
    public ColumnParallelLinear Up { get; }
    /// <summary>The row-parallel down projection.</summary>
    public RowParallelLinear Down { get; }

    /// <summary>Queues Y = FFN(X) (M × H on every rank; one all-reduce).</summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y)
    {
        CheckX(x);
        long m = x.Rows, fr = LocalHidden;
        var buf = _scratch.Get<float>(SlotHidden, _ctx.Device, Math.Max(1, 3 * m * fr));
        var (gu, h) = (buf.AsMatrix(m, 2 * fr, Math.Max(1, 2 * fr)), buf.AsMatrix(m, fr, Math.Max(1, fr), 2 * m * fr));
        Hidden(x, gu, h);
        Down.Forward(h, y);
    }

    /// <summary>Sequence-parallel forward: this rank's m_r × H rows are all-gathered, the FFN runs on all M rows and a
    /// reduce-scatter leaves this rank its rows of Y.</summary>
    public void ForwardSequenceParallel(MatrixView<float> x, MatrixView<float> y, ShardingPlan tokens)
    {
        var full = Gather(x, tokens, SlotGathered);
        long m = tokens.Total, fr = LocalHidden;
        var buf = _scratch.Get<float>(SlotHidden, _ctx.Device, Math.Max(1, 3 * m * fr));
        var (gu, h) = (buf.AsMatrix(m, 2 * fr, Math.Max(1, 2 * fr)), buf.AsMatrix(m, fr, Math.Max(1, fr), 2 * m * fr));
        Hidden(full, gu, h);
        Down.ForwardScatter(h, y, tokens);
    }

    /// <summary>Training forward: as <see cref="Forward"/>, keeping [gate | up] (M × 2f_r) and the gated hidden H (M × f_r)
    /// for the backward, or only the shape (recomputed in the backward).</summary>
    public GatedFeedForwardActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y, bool keepActivations = true)
    {
        CheckX(x);
        ThrowHelper.Shape(y, x.Rows, ModelFeatures, "M x model features");
        var saved = new GatedFeedForwardActivations(_ctx.Device, x.Rows, LocalHidden);
        try
        {
            Hidden(x, saved.GateUp, saved.Hidden);
            Down.Forward(saved.Hidden, y);
            if (!keepActivations) saved.Release();
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    /// <summary>Sequence-parallel training forward (x, y: this rank's m_r rows).</summary>
    public GatedFeedForwardActivations ForwardTrainingSequenceParallel(MatrixView<float> x, MatrixView<float> y, ShardingPlan tokens, bool keepActivations = true)
    {
        var full = Gather(x, tokens, SlotGathered);
        var saved = new GatedFeedForwardActivations(_ctx.Device, tokens.Total, LocalHidden);
        try
        {
            Hidden(full, saved.GateUp, saved.Hidden);
            Down.ForwardScatter(saved.Hidden, y, tokens);
            if (!keepActivations) saved.Release();
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    /// <summary>Backward (one all-reduce, of dX): dH = dY·Wd_rᵀ, dWd_r = Hᵀ·dY, dbd = Σ dY (rank 0), [dgate | dup] by
    /// <see cref="RowOps.GluBackward"/>, dW_r = Xᵀ·[dgate | dup], dX = Σ_r [dgate | dup]·W_rᵀ.</summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, GatedFeedForwardGradients gradients,
        GatedFeedForwardActivations saved, bool accumulate = false)
    {
        CheckX(x);
        ThrowHelper.Shape(dy, x.Rows, ModelFeatures, "M x model features");
        BackwardCore(x, dy, dx, gradients, saved, accumulate, null, default);
    }

    /// <summary>Sequence-parallel backward: x, dy, dx are this rank's m_r rows; X and dY are all-gathered, dX's partial
    /// sums reduce-scattered (three collectives).</summary>
    public void BackwardSequenceParallel(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, GatedFeedForwardGradients gradients,
        GatedFeedForwardActivations saved, ShardingPlan tokens, bool accumulate = false)
    {
        long m = tokens.Total, h = ModelFeatures;
        var buf = Gather(x, tokens, SlotGathered, extra: 2 * m * h);
        var full = buf;
        ThrowHelper.Shape(dy, tokens.Size(_ctx.Rank), h, "this rank's token rows x model features");
        var dyFull = full.Buffer.AsMatrix(m, h, h, full.Offset + m * h);
        _ctx.AllGatherV(dy.Buffer, dy.Rows * h, dyFull.Buffer, dy.Offset, dyFull.Offset);
        var dxFull = full.Buffer.AsMatrix(m, h, h, full.Offset + 2 * m * h);
        BackwardCore(full, dyFull, dxFull, gradients, saved, accumulate, tokens, dx);
    }

    private void BackwardCore(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, GatedFeedForwardGradients gradients,
        GatedFeedForwardActivations saved, bool accumulate, ShardingPlan? scatter, MatrixView<float> dxRows)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        ArgumentNullException.ThrowIfNull(saved);
        long m = x.Rows, fr = LocalHidden;
        if (saved.Rows != m || saved.HiddenFeatures != fr)
            throw new ArgumentException($"saved activations are for {saved.Rows} x {saved.HiddenFeatures}; expected {m} x {fr}.", nameof(saved));
        if (!saved.IsKept) Hidden(x, saved.Recreate().GateUp, saved.Hidden);
        var dh = saved.GradientHidden;
        Down.Backward(saved.Hidden, dy, dh, gradients.DDown, _ctx.Rank == 0 ? gradients.DBDown : null, accumulate);
        if (fr > 0) RowOps.GluBackward(_ctx.Stream, Activation, saved.GateUp, dh, saved.GateUp); // [dgate | dup] over [gate | up]
        if (_treeLeaf == 0 || dx.IsEmpty)
        {
            Up.LinearBackward(x, saved.GateUp, dx, gradients.DGateUp, (DeviceBuffer<float>?)null, accumulate, scatter, dxRows);
            return;
        }
        // TP-invariant: dX = S_gate + S_up, each summed over F by the tree (this rank's node: fp32, one all-reduce of both).
        Up.LinearBackward(x, saved.GateUp, default, gradients.DGateUp, (DeviceBuffer<float>?)null, accumulate);
        long mh = m * ModelFeatures;
        if (dx.Ld != ModelFeatures && m > 1)
            throw new ArgumentException($"dx has ld {dx.Ld}; the all-reduce needs contiguous rows (ld = {ModelFeatures}).", nameof(dx));
        var sums = _scratch.Get<float>(SlotTree, _ctx.Device, 2 * mh);
        var stream = _ctx.Stream;
        if (fr > 0)
        {
            var w = Up.ComputeWeight<float>()!.AsMatrix(ModelFeatures, 2 * fr);
            Gemm.MultiplyLeaf(stream, saved.GateUp.Columns(0, fr), w.Columns(0, fr), sums.AsMatrix(m, ModelFeatures), _treeLeaf, transB: true);
            Gemm.MultiplyLeaf(stream, saved.GateUp.Columns(fr, fr), w.Columns(fr, fr), sums.AsMatrix(m, ModelFeatures, ModelFeatures, mh),
                _treeLeaf, transB: true);
        }
        else
        {
            sums.Clear(stream, 0, 2 * mh); // an empty node: zeros add exactly
        }
        GradientHelpers.TreeSumOfParts(_ctx, sums, 2, mh, dx.Buffer, dx.Offset);
        if (scatter is null) return;
        long mr = scatter.Size(_ctx.Rank);
        ThrowHelper.Shape(dxRows, mr, ModelFeatures, "this rank's token rows x model features");
        long r0 = scatter.Offset(_ctx.Rank) * ModelFeatures;
        if (dxRows.Ld == ModelFeatures || mr <= 1)
        {
            if (mr > 0) dx.Buffer.CopyTo(dxRows.Buffer, stream, dx.Offset + r0, dxRows.Offset, mr * ModelFeatures);
            return;
        }
        for (long i = 0; i < mr; i++)
            dx.Buffer.CopyTo(dxRows.Buffer, stream, dx.Offset + r0 + i * ModelFeatures, dxRows.Offset + i * dxRows.Ld, ModelFeatures);
    }

    // The device's GemmReductionLeaf when built (TP-invariant mode when > 0).
    private readonly long _treeLeaf;

    private void Hidden(MatrixView<float> x, MatrixView<float> gu, MatrixView<float> h)
    {
        if (LocalHidden == 0) return;
        Up.Forward(x, gu);
        RowOps.Glu(_ctx.Stream, Activation, gu, h);
    }

    private void CheckX(MatrixView<float> x)
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Positive(x.Rows);
        if (x.Cols != ModelFeatures) throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected M x {ModelFeatures}.", nameof(x));
    }

    // This rank's rows all-gathered into M × H (plus `extra` elements of work area after them).
    private MatrixView<float> Gather(MatrixView<float> x, ShardingPlan tokens, int slot, long extra = 0)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Parts != _ctx.WorldSize)
            throw new ArgumentException($"tokens splits over {tokens.Parts} ranks; expected {_ctx.WorldSize}.", nameof(tokens));
        long m = tokens.Total, mr = tokens.Size(_ctx.Rank), h = ModelFeatures;
        ThrowHelper.Positive(m);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, mr, h, "this rank's token rows x model features");
        if (mr > 1 && x.Ld != h) throw new ArgumentException($"x has ld {x.Ld}; the gather needs contiguous rows (ld = {h}).", nameof(x));
        var buf = _scratch.Get<float>(slot, _ctx.Device, m * h + extra);
        _ctx.AllGatherV(x.Buffer, mr * h, buf, x.Offset, 0);
        return buf.AsMatrix(m, h);
    }

    /// <summary>This rank's parameters with their gradients: "w_gate_up" — the fused H × 2F weight whose column block of
    /// rank r is [Wg[:, f_r] | Wu[:, f_r]] (so the fused layout depends on the split; element-wise optimizers do not
    /// care) —, "w_down" (rows f_r of Wd) and "b_down" (rank 0).</summary>
    public IReadOnlyList<ParameterShard> Parameters(GatedFeedForwardGradients gradients, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(gradients);
        return [.. Up.Parameters(gradients.DGateUp, null, prefix + "w_gate_up", prefix + "b_gate_up"),
            .. Down.Parameters(gradients.DDown, gradients.DBDown, prefix + "w_down", prefix + "b_down")];
    }

    /// <summary>Releases the layers and scratch buffers.</summary>
    public void Dispose()
    {
        Up.Dispose();
        Down.Dispose();
        _scratch.Dispose();
    }
}

/// <summary>What a <see cref="ParallelGatedFeedForward"/> training forward keeps: [gate | up] (M × 2f_r) and H (M × f_r),
/// plus room for dH; 4·M·f_r floats per rank while kept.</summary>
public sealed class GatedFeedForwardActivations : IDisposable
{
    private readonly Device _device;
    private DeviceBuffer<float>? _buffer;

    internal GatedFeedForwardActivations(Device device, long rows, long hiddenFeatures)
    {
        _device = device;
        Rows = rows;
        HiddenFeatures = hiddenFeatures;
        Recreate();
    }

    /// <summary>M.</summary>
    public long Rows { get; }
    /// <summary>f_r.</summary>
    public long HiddenFeatures { get; }
    /// <summary>True while the activations are held.</summary>
    public bool IsKept => _buffer is not null;
    private long Ld => Math.Max(1, HiddenFeatures);
    internal MatrixView<float> GateUp => _buffer!.AsMatrix(Rows, 2 * HiddenFeatures, 2 * Ld, 0);
    internal MatrixView<float> Hidden => _buffer!.AsMatrix(Rows, HiddenFeatures, Ld, 2 * Rows * HiddenFeatures);
    internal MatrixView<float> GradientHidden => _buffer!.AsMatrix(Rows, HiddenFeatures, Ld, 3 * Rows * HiddenFeatures);

    internal GatedFeedForwardActivations Recreate()
    {
        _buffer ??= _device.Allocate<float>(Math.Max(1, 4 * Rows * HiddenFeatures));
        return this;
    }

    internal void Release()
    {
        _buffer?.Dispose();
        _buffer = null;
    }

    /// <summary>Frees the activations.</summary>
    public void Dispose() => Release();
}

/// <summary>The gradients of one rank's <see cref="ParallelGatedFeedForward"/>: the fused [dWg | dWu] shard (H × 2f_r),
/// dWd (f_r × H), dbd (H; rank 0, when the layer has bd). Null where the rank holds no hidden unit.</summary>
public sealed class GatedFeedForwardGradients : IDisposable
{
    /// <summary>Allocates the gradients of <paramref name="ffn"/>'s shards.</summary>
    public GatedFeedForwardGradients(Device device, ParallelGatedFeedForward ffn)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(ffn);
        long h = ffn.ModelFeatures, fr = ffn.LocalHidden;
        DGateUp = fr > 0 ? device.Allocate<float>(h * 2 * fr) : null;
        DDown = fr > 0 ? device.Allocate<float>(fr * h) : null;
        DBDown = ffn.Down.Bias is not null ? device.Allocate<float>(h) : null;
    }

    /// <summary>[dWg | dWu] of this rank (H × 2f_r, row-major, the gate's f_r columns first in each row).</summary>
    public DeviceBuffer<float>? DGateUp { get; }
    /// <summary>dWd (f_r × H).</summary>
    public DeviceBuffer<float>? DDown { get; }
    /// <summary>dbd (H), on rank 0.</summary>
    public DeviceBuffer<float>? DBDown { get; }

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        DGateUp?.Dispose();
        DDown?.Dispose();
        DBDown?.Dispose();
    }
}
