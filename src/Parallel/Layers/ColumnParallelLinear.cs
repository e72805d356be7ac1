namespace Shardwise.Parallel;

/// <summary>
/// Column-parallel linear layer <c>Y = X·W + b</c> for one rank (construct one per rank, e.g. inside
/// <see cref="Spmd.Run"/>). W is K × N (in × out features); rank r holds only W[:, cols_r] (K × n_r) and b[cols_r],
/// with cols_r from the <see cref="ShardingPlan"/> (uneven allowed, empty shards allowed).
/// With <c>gatherOutput</c> the ranks' M × n_r results are all-gathered into Y[M, N] on every rank; without,
/// each rank keeps its M × n_r slice (the input of a row-parallel layer). Any <see cref="Precision"/>: X in the
/// compute type, Y in the output type (the gather moves the output type as it is).
/// </summary>
public sealed class ColumnParallelLinear : ParallelLinear
{
    /// <summary>Loads this rank's shard of <paramref name="weight"/> (K × N) and <paramref name="bias"/> (1 × N, optional)
    /// in the parameter type of <paramref name="precision"/> (null: fp32).</summary>
    public ColumnParallelLinear(RankContext context, WeightSource weight, WeightSource? bias = null,
        bool gatherOutput = true, ShardingPlan? plan = null, Epilogue epilogue = Epilogue.None, Precision? precision = null)
        : this(context, weight, bias, gatherOutput, plan, epilogue, precision, leaf: 0) { }

    // leaf: the TP-invariant tree's leaf over the out-features when it is not the device's (the attention's projections).
    internal ColumnParallelLinear(RankContext context, WeightSource weight, WeightSource? bias, bool gatherOutput, ShardingPlan? plan,
        Epilogue epilogue, Precision? precision, long leaf)
        : base(context, weight, bias, plan, splitRows: false, split =>
            LayerPlan.ColumnParallel(weight.Rows, weight.Cols, context.WorldSize, bias: bias is not null, gatherOutput: gatherOutput, split: split),
            precision, leaf)
    {
        GatherOutput = gatherOutput;
        Epilogue = epilogue;
    }

    /// <summary>n_r: this rank's output columns.</summary>
    public long LocalOutFeatures => Plan.Size(Context.Rank);
    /// <summary>First output column of this rank.</summary>
    public long LocalOutOffset => Plan.Offset(Context.Rank);
    /// <summary>Whether <see cref="Forward(MatrixView{float}, MatrixView{float})"/> all-gathers Y.</summary>
    public bool GatherOutput { get; }
    /// <summary>Fused epilogue (GeLU for the first layer of an FFN), applied in fp32 before the output is rounded.</summary>
    public Epilogue Epilogue { get; }

    /// <summary>
    /// Queues Y = X·W + b on the rank's stream (fp32 layer). <paramref name="x"/> is M × K; <paramref name="y"/> is M × N
    /// with gathering, else M × n_r. Errors of queued work surface at the rank's <c>Synchronize</c>.
    /// </summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y) => Forward<float, float>(x, y);

    /// <summary>Queues Y = X·W + b in the layer's precision: <paramref name="x"/> holds the compute type,
    /// <paramref name="y"/> the output type (else <see cref="ArgumentException"/> naming the expected type); fp32
    /// accumulation, bias and epilogue in fp32, one rounding to the output type.</summary>
    public void Forward<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y) where TIn : unmanaged where TOut : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        long m = x.Rows, n = LocalOutFeatures;
        ThrowHelper.Positive(x.Rows);
        if (x.Cols != InFeatures)
            throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected {m} x {InFeatures} (M x in-features).", nameof(x));
        ThrowHelper.Shape(y, m, GatherOutput ? OutFeatures : n, GatherOutput ? "M x out-features, gathered" : "M x local out-features");
        RequireTypes<TIn, TOut>(nameof(x), nameof(y));
        if (!GatherOutput)
        {
            if (n > 0) Gemm.Multiply(Context.Stream, x, ComputeWeight<TIn>()!.AsMatrix(InFeatures, n), y, bias: GemmBias<TOut>(), epilogue: Epilogue);
            return;
        }
        int chunks = ChunkOverlap.Chunks(OverlapChunks, m);
        if (chunks > 1)
        {
            // Overlap: chunk i's all-gather (on the communication stream) while chunk i + 1 multiplies.
            var ov = Overlap;
            var rowsOut = n == 0 ? default : _scratch.Get<TOut>(SlotOutput, Context.Device, m * n).AsMatrix(m, n);
            for (int c = 0; c < chunks; c++)
            {
                var (r0, rows) = ChunkOverlap.Range(m, chunks, c);
                if (n > 0)
                    Gemm.Multiply(Context.Stream, x.RowRange(r0, rows), ComputeWeight<TIn>()!.AsMatrix(InFeatures, n), rowsOut.RowRange(r0, rows),
                        bias: GemmBias<TOut>(), epilogue: Epilogue);
                ov.Handoff(c);
                Context.AllGatherColumnsOn(ov.Comm, n == 0 ? default : rowsOut.RowRange(r0, rows), y.RowRange(r0, rows));
            }
            ov.Join();
            return;
        }
        if (n == 0)
        {
            Context.AllGatherColumns(default, y); // contributes nothing but joins the collective
            return;
        }
        var local = _scratch.Get<TOut>(SlotOutput, Context.Device, m * n).AsMatrix(m, n);
        Gemm.Multiply(Context.Stream, x, ComputeWeight<TIn>()!.AsMatrix(InFeatures, n), local, bias: GemmBias<TOut>(), epilogue: Epilogue);
        Context.AllGatherColumns(local, y);
    }


    /// <summary>
    /// Queues the backward pass on the rank's stream, as Megatron does it: dW_r = Xᵀ·dY_r and db_r = Σ_rows dY_r
    /// need no communication; dX = Σ_r dY_r·W_rᵀ takes one all-reduce. <paramref name="x"/> is the forward input
    /// (M × K, kept by the caller — or recomputed); <paramref name="dy"/> is the gradient of the output, M × N when the
    /// output was gathered (every rank passes the same) else this rank's M × n_r; <paramref name="dx"/> (M × K) receives
    /// the input gradient on every rank. <paramref name="dWeight"/> (K × n_r) and <paramref name="dBias"/> (n_r) are
    /// optional; with <paramref name="accumulate"/> they are added to (gradient accumulation), else overwritten.
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, DeviceBuffer<float>? dWeight = null,
        DeviceBuffer<float>? dBias = null, bool accumulate = false) =>
        Backward<float, float, float>(x, dy, dx, dWeight, dBias, accumulate);

    /// <summary>The backward pass in the layer's precision: <paramref name="x"/> and <paramref name="dx"/> in the compute
    /// type, <paramref name="dy"/> in the output type (converted once to the compute type when they differ), the gradients
    /// in the gradient accumulation type (written by GEMMs with fp32 accumulation; with <paramref name="accumulate"/>
    /// beta = 1 adds to them, e.g. fp32 gradients over bf16 micro-batches). The all-reduce of dX sums in fp32 in rank
    /// order and rounds once.</summary>
    public void Backward<TIn, TOut, TGrad>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, DeviceBuffer<TGrad>? dWeight = null,
        DeviceBuffer<TGrad>? dBias = null, bool accumulate = false) where TIn : unmanaged where TOut : unmanaged where TGrad : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(dy);
        if (Epilogue != Epilogue.None)
            throw new NotSupportedException("Backward through a fused GeLU epilogue needs the pre-activation: use ParallelFeedForward.ForwardTraining / Backward, or a layer without epilogue.");
        RequireTypes<TIn, TOut>(nameof(x), nameof(dy));
        LinearBackward(x, dy, dx, dWeight, dBias, accumulate);
    }

    /// <summary>The backward of the linear part alone (dy is the gradient of X·W + b, before any epilogue). An empty
    /// <paramref name="dx"/> (<c>default</c>) skips dX and its all-reduce — the first layer of a model, whose input
    /// gradient nobody reads; every rank must then leave it empty. With
    /// <paramref name="scatter"/> (sequence parallelism) dX's partial sums are reduce-scattered instead of all-reduced:
    /// <paramref name="dx"/> is then a full M × K work area and <paramref name="dxRows"/> receives this rank's block of rows.</summary>
    internal void LinearBackward<TIn, TOut, TGrad>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, DeviceBuffer<TGrad>? dWeight,
        DeviceBuffer<TGrad>? dBias, bool accumulate, ShardingPlan? scatter = null, MatrixView<TIn> dxRows = default)
        where TIn : unmanaged where TOut : unmanaged where TGrad : unmanaged
    {
        long m = x.Rows, k = InFeatures, n = LocalOutFeatures;
        ThrowHelper.Shape(x, m, k, "M x in-features, the forward input");
        ThrowHelper.Shape(dy, m, GatherOutput ? OutFeatures : n, GatherOutput ? "M x out-features" : "M x local out-features");
        bool wantDx = !dx.IsEmpty;
        if (!wantDx && scatter is not null) throw new ArgumentException("the sequence-parallel backward needs dx.", nameof(dx));
        if (wantDx) ThrowHelper.Shape(dx, m, k, "M x in-features");
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        RequireGradientType<TGrad>(dWeight is not null || dBias is not null);
        if (wantDx && dx.Ld != k && m > 1)
            throw new ArgumentException($"dx has ld {dx.Ld}; the all-reduce needs contiguous rows (ld = {k}).", nameof(dx));
        RequireReduction();
        if (ReductionLeaf > 0)
        {
            TreeLinearBackward(x, dy, dx, dWeight, dBias, accumulate, scatter, dxRows, wantDx);
            return;
        }
        if (n > 0)
        {
            var dyr = AsCompute<TIn, TOut>(GatherOutput ? dy.Columns(LocalOutOffset, n) : dy);
            if (dWeight is not null) GradientHelpers.WeightGradient(Context, x, dyr, dWeight, accumulate);
            if (dBias is not null) GradientHelpers.ColumnSums(Context, _scratch, SlotOnes, dyr, dBias, accumulate);
            if (wantDx) Gemm.Multiply(Context.Stream, dyr, ComputeWeight<TIn>()!.AsMatrix(k, n), dx, transB: true); // dY_r · W_rᵀ
        }
        else if (wantDx)
        {
            dx.Buffer.Clear(Context.Stream, dx.Offset, m * k); // this rank contributes nothing to dX
        }
        if (!wantDx) return;
        if (scatter is null)
        {
            Context.AllReduce(dx.Buffer, dx.Buffer, m * k, dx.Offset, dx.Offset);
            return;
        }
        long mr = scatter.Size(Context.Rank);
        ThrowHelper.Shape(dxRows, mr, k, "this rank's token rows x in-features");
        if (mr > 1 && dxRows.Ld != k)
            throw new ArgumentException($"dx has ld {dxRows.Ld}; the reduce-scatter needs contiguous rows (ld = {k}).", "dx");
        Context.ReduceScatterV(dx.Buffer, dxRows.Buffer, mr * k, dx.Offset, dxRows.Offset);
    }

    // TP-invariant mode: dX's partial sums (over this rank's node of out-features) in fp32, summed in the tree's order,
    // rounded once to the compute type.
    private void TreeLinearBackward<TIn, TOut, TGrad>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, DeviceBuffer<TGrad>? dWeight,
        DeviceBuffer<TGrad>? dBias, bool accumulate, ShardingPlan? scatter, MatrixView<TIn> dxRows, bool wantDx)
        where TIn : unmanaged where TOut : unmanaged where TGrad : unmanaged
    {
        RequireReduction();
        long m = x.Rows, k = InFeatures, n = LocalOutFeatures;
        long mr = scatter?.Size(Context.Rank) ?? m;
        if (scatter is not null)
        {
            ThrowHelper.Shape(dxRows, mr, k, "this rank's token rows x in-features");
            if (mr > 1 && dxRows.Ld != k)
                throw new ArgumentException($"dx has ld {dxRows.Ld}; the reduce-scatter needs contiguous rows (ld = {k}).", "dx");
        }
        var sums = wantDx ? _scratch.Get<float>(SlotTree, Context.Device, m * k + (scatter is null ? 0 : mr * k)) : null;
        if (n > 0)
        {
            var dyr = AsCompute<TIn, TOut>(GatherOutput ? dy.Columns(LocalOutOffset, n) : dy);
            if (dWeight is not null) GradientHelpers.WeightGradient(Context, x, dyr, dWeight, accumulate);
            if (dBias is not null) GradientHelpers.ColumnSums(Context, _scratch, SlotOnes, dyr, dBias, accumulate);
            if (sums is not null)
                Gemm.MultiplyLeaf(Context.Stream, dyr, ComputeWeight<TIn>()!.AsMatrix(k, n), sums.AsMatrix(m, k), ReductionLeaf, transB: true);
        }
        else if (sums is not null)
        {
            sums.Clear(Context.Stream, 0, m * k); // an empty node: zeros add exactly
        }
        if (sums is null) return;
        if (scatter is null)
        {
            Context.AllReduce(sums, sums, m * k, 0, 0, ReduceOp);
            StoreTreeSum(sums.AsMatrix(m, k), dx);
            return;
        }
        Context.ReduceScatterV(sums, sums, mr * k, 0, m * k, ReduceOp);
        if (mr > 0) StoreTreeSum(sums.AsMatrix(mr, k, k, m * k), dxRows);
    }
}
