namespace Shardwise.Parallel;

/// <summary>
/// Row-parallel linear layer <c>Y = X·W + b</c> for one rank (construct one per rank, e.g. inside
/// <see cref="Spmd.Run"/>). W is K × N; rank r holds only its rows W[rows_r, :] (k_r × N), with rows_r from the
/// <see cref="ShardingPlan"/> over K (uneven and empty shards allowed). Each rank multiplies its slice of the
/// input, X[:, rows_r], by its shard; an all-reduce sums the partial products into Y[M, N] on every rank.
/// The bias is added once, by rank 0's GEMM, before the sum. Any <see cref="Precision"/>: each partial product is
/// rounded to the output type, and a 16-bit all-reduce sums in fp32 in rank order and rounds once.
/// <para>TP-invariant mode (the device's <see cref="Device.GemmReductionLeaf"/> &gt; 0 when the layer is built;
/// <see cref="TreeReduction"/>): K is split by the reduction tree (a given plan must be that split; a rank count that
/// is not a power of two is refused), the partial products stay fp32, the all-reduce (or reduce-scatter) sums them in
/// the tree's order, and every rank then adds the bias and rounds once to the output type: Y is bit-identical to the
/// unsharded layer's (p = 1) for every power-of-two p.</para>
/// </summary>
public sealed class RowParallelLinear : ParallelLinear
{
    /// <summary>Loads this rank's rows of <paramref name="weight"/> (K × N) and, on rank 0, <paramref name="bias"/> (1 × N).</summary>
    /// <param name="context">The rank.</param>
    /// <param name="weight">The logical weight, K × N.</param>
    /// <param name="bias">Optional bias, 1 × N.</param>
    /// <param name="inputIsParallel">True: <see cref="Forward(MatrixView{float}, MatrixView{float})"/> takes this rank's
    /// M × k_r slice (e.g. the output of a <see cref="ColumnParallelLinear"/> without gathering). False: it takes the whole
    /// M × K input and reads its slice as a view (no copy).</param>
    /// <param name="plan">The split of K over the ranks (default: even).</param>
    /// <param name="precision">The precision policy (null: fp32).</param>
    public RowParallelLinear(RankContext context, WeightSource weight, WeightSource? bias = null,
        bool inputIsParallel = false, ShardingPlan? plan = null, Precision? precision = null)
        : this(context, weight, bias, inputIsParallel, plan, precision, leaf: 0) { }

    // leaf: the TP-invariant tree's leaf when it is not the device's (the attention's output projection: one head group).
    internal RowParallelLinear(RankContext context, WeightSource weight, WeightSource? bias, bool inputIsParallel, ShardingPlan? plan,
        Precision? precision, long leaf)
        : base(context, weight, bias, plan, splitRows: true, split =>
            LayerPlan.RowParallel(weight.Rows, weight.Cols, context.WorldSize, bias: bias is not null, inputIsParallel: inputIsParallel, split: split),
            precision, leaf)
    {
        InputIsParallel = inputIsParallel;
    }

    /// <summary>k_r: this rank's input features.</summary>
    public long LocalInFeatures => Plan.Size(Context.Rank);
    /// <summary>First input feature of this rank.</summary>
    public long LocalInOffset => Plan.Offset(Context.Rank);
    /// <summary>Whether the forward takes this rank's slice of the input (true) or the whole input.</summary>
    public bool InputIsParallel { get; }

    /// <summary>
    /// Queues Y = X·W + b on the rank's stream: one GEMM and one all-reduce. <paramref name="x"/> is M × k_r when the
    /// input is parallel, else M × K; <paramref name="y"/> is M × N on every rank. Errors surface at the rank's
    /// <c>Synchronize</c>.
    /// </summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y) => Forward<float, float>(x, y);

    /// <summary>The forward in the layer's precision: <paramref name="x"/> in the compute type, <paramref name="y"/> in
    /// the output type.</summary>
    public void Forward<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y) where TIn : unmanaged where TOut : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        long m = x.Rows, kr = LocalInFeatures, n = OutFeatures;
        ThrowHelper.Positive(x.Rows);
        long expectedCols = InputIsParallel ? kr : InFeatures;
        if (x.Cols != expectedCols)
            throw new ArgumentException(
                $"x is {x.Rows} x {x.Cols}; expected {m} x {expectedCols} ({(InputIsParallel ? "M x this rank's in-features" : "M x in-features")}).",
                nameof(x));
        ThrowHelper.Shape(y, m, n, "M x out-features");
        RequireTypes<TIn, TOut>(nameof(x), nameof(y));
        var local = InputIsParallel ? x : x.Columns(LocalInOffset, kr);
        ForwardRows<TIn, TOut, ViewRows<TIn>>(m, new ViewRows<TIn>(local), y);
    }

    // The output checks of Forward, for a caller that feeds ForwardRows itself (ParallelFeedForward).
    internal void CheckOutput<TIn, TOut>(long m, MatrixView<TOut> y) where TIn : unmanaged where TOut : unmanaged
    {
        ThrowHelper.NotEmpty(y);
        ThrowHelper.Shape(y, m, OutFeatures, "M x out-features");
        RequireTypes<TIn, TOut>("x", nameof(y));
    }

    // Y = Σ_ranks input(rows) · W_r (+ b), rows [0, m): `input.Rows(r0, rows)` gives (queuing whatever produces them on
    // the rank's stream) this rank's input rows [r0, r0 + rows); the all-reduce whole or in OverlapChunks pieces.
    // (A struct source, not a delegate: the forward allocates nothing managed.)
    internal void ForwardRows<TIn, TOut, TRows>(long m, TRows input, MatrixView<TOut> y)
        where TIn : unmanaged where TOut : unmanaged where TRows : struct, IRowSource<TIn>
    {
        long n = OutFeatures;
        RequireReduction();
        if (ReductionLeaf > 0)
        {
            ForwardRowsTree<TIn, TOut, TRows>(m, input, y);
            return;
        }
        // The all-reduce works on contiguous elements: reduce in y when it is contiguous, else in a scratch buffer.
        var partial = y.Ld == n ? y : _scratch.Get<TOut>(SlotOutput, Context.Device, m * n).AsMatrix(m, n);
        int chunks = ChunkOverlap.Chunks(OverlapChunks, m);
        if (chunks <= 1)
        {
            QueuePartialProduct(input.Rows(0, m), partial);
            Context.AllReduce(partial.Buffer, partial.Buffer, m * n, partial.Offset, partial.Offset);
        }
        else
        {
            var ov = Overlap;
            for (int c = 0; c < chunks; c++)
            {
                var (r0, rows) = ChunkOverlap.Range(m, chunks, c);
                QueuePartialProduct(input.Rows(r0, rows), partial.RowRange(r0, rows));
                ov.Handoff(c);
                Context.AllReduceOn(ov.Comm, partial.Buffer, partial.Buffer, rows * n, partial.Offset + r0 * n, partial.Offset + r0 * n);
            }
            ov.Join();
        }
        if (!ReferenceEquals(partial.Buffer, y.Buffer) || partial.Offset != y.Offset)
            for (long i = 0; i < m; i++) // strided y: copy the reduced rows into place
                partial.Buffer.CopyTo(y.Buffer, Context.Stream, partial.Offset + i * n, y.Offset + i * y.Ld, n);
    }

    // TP-invariant mode: fp32 partial products (alpha 1, no bias; the device's tree GEMM), summed over the ranks in the
    // tree's order, then the bias and one rounding on every rank.
    private void ForwardRowsTree<TIn, TOut, TRows>(long m, TRows input, MatrixView<TOut> y)
        where TIn : unmanaged where TOut : unmanaged where TRows : struct, IRowSource<TIn>
    {
        long n = OutFeatures, extra = HasBias ? n : 0; // the bias row travels with the sum (QueueBiasRow)
        var partial = typeof(TOut) == typeof(float) && y.Ld == n && !HasBias
            ? (MatrixView<float>)(object)y
            : _scratch.Get<float>(SlotTree, Context.Device, m * n + extra).AsMatrix(m, n);
        if (HasBias) QueueBiasRow(partial.Buffer, partial.Offset + m * n);
        int chunks = ChunkOverlap.Chunks(OverlapChunks, m);
        if (chunks <= 1)
        {
            QueueTreePartial(input.Rows(0, m), partial);
            Context.AllReduce(partial.Buffer, partial.Buffer, m * n + extra, partial.Offset, partial.Offset, ReduceOp);
        }
        else
        {
            var ov = Overlap;
            for (int c = 0; c < chunks; c++)
            {
                var (r0, rows) = ChunkOverlap.Range(m, chunks, c);
                QueueTreePartial(input.Rows(r0, rows), partial.RowRange(r0, rows));
                ov.Handoff(c);
                long last = c == chunks - 1 ? extra : 0; // the bias row with the last chunk
                Context.AllReduceOn(ov.Comm, partial.Buffer, partial.Buffer, rows * n + last, partial.Offset + r0 * n, partial.Offset + r0 * n, ReduceOp);
            }
            ov.Join();
        }
        FinishTreeSum(partial, y);
    }

    // partial (fp32, contiguous) = X_r · W_r: this rank's node of the reduction tree (zeros for an empty node).
    private void QueueTreePartial<TIn>(MatrixView<TIn> local, MatrixView<float> partial) where TIn : unmanaged
    {
        long kr = LocalInFeatures, n = OutFeatures;
        if (kr > 0) Gemm.MultiplyLeaf(Context.Stream, local, ComputeWeight<TIn>()!.AsMatrix(kr, n), partial, ReductionLeaf);
        else partial.Buffer.Clear(Context.Stream, partial.Offset, partial.Rows * n);
    }

    /// <summary>
    /// Sequence-parallel output: queues the same product but leaves each rank only its block of token rows,
    /// combined by one reduce-scatter instead of an all-reduce. <paramref name="tokens"/> splits the M rows over the
    /// ranks (uneven allowed); <paramref name="y"/> is this rank's m_r × N block.
    /// </summary>
    public void ForwardScatter(MatrixView<float> x, MatrixView<float> y, ShardingPlan tokens) => ForwardScatter<float, float>(x, y, tokens);

    /// <summary>The sequence-parallel forward in the layer's precision (x: compute type, y: output type).</summary>
    public void ForwardScatter<TIn, TOut>(MatrixView<TIn> x, MatrixView<TOut> y, ShardingPlan tokens) where TIn : unmanaged where TOut : unmanaged
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        long m = x.Rows, kr = LocalInFeatures, n = OutFeatures;
        ThrowHelper.Positive(x.Rows);
        tokens.Require(m, Context.WorldSize, nameof(tokens));
        long expectedCols = InputIsParallel ? kr : InFeatures;
        if (x.Cols != expectedCols)
            throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected {m} x {expectedCols}.", nameof(x));
        long mr = tokens.Size(Context.Rank);
        ThrowHelper.Shape(y, mr, n, "this rank's token rows x out-features");
        RequireTypes<TIn, TOut>(nameof(x), nameof(y));
        var local = InputIsParallel ? x : x.Columns(LocalInOffset, kr);
        if (ReductionLeaf > 0)
        {
            // fp32 partials, the tree's reduce-scatter, then the bias and one rounding (see ForwardRowsTree). With a bias,
            // each rank's block of rows is followed by a bias row (rank 0's bias, zeros elsewhere), so that every rank
            // receives the bias with its rows: block r at rows [t_r + r, t_r + r + m_r], t_r its first token.
            RequireReduction();
            int p = Context.WorldSize;
            long e = HasBias ? 1 : 0, total = (m + e * p) * n;
            var sums = _scratch.Get<float>(SlotTree, Context.Device, total + (mr + e) * n);
            if (!HasBias) QueueTreePartial(local, sums.AsMatrix(m, n));
            else
                for (int r = 0; r < p; r++)
                {
                    long t0 = tokens.Offset(r), tr = tokens.Size(r), at = (t0 + r) * n;
                    if (tr > 0) QueueTreePartial(kr > 0 ? local.RowRange(t0, tr) : default, sums.AsMatrix(tr, n, n, at)); // (kr = 0: zeros)
                    QueueBiasRow(sums, at + tr * n);
                }
            Context.ReduceScatterV(sums, sums, (mr + e) * n, 0, total, ReduceOp);
            if (mr > 0) FinishTreeSum(sums.AsMatrix(mr, n, n, total), y);
            return;
        }
        bool direct = y.Ld == n || mr <= 1;
        var scratch = _scratch.Get<TOut>(SlotOutput, Context.Device, m * n + (direct ? 0 : mr * n));
        QueuePartialProduct(local, scratch.AsMatrix(m, n));
        if (direct)
        {
            Context.ReduceScatterV(scratch, y.Buffer, mr * n, 0, y.Offset);
            return;
        }
        Context.ReduceScatterV(scratch, scratch, mr * n, 0, m * n);
        for (long i = 0; i < mr; i++)
            scratch.CopyTo(y.Buffer, Context.Stream, m * n + i * n, y.Offset + i * y.Ld, n);
    }

    /// <summary>
    /// Queues the backward pass on the rank's stream: dW_r = X_rᵀ·dY and dX_r = dY·W_rᵀ need no communication
    /// (Megatron's row-parallel backward); when the forward split the whole input on entry, the ranks' dX_r column
    /// blocks are all-gathered into the full M × K input gradient. <paramref name="x"/> is the forward input
    /// (as passed to the forward), <paramref name="dy"/> the M × N output gradient (the same on every
    /// rank), <paramref name="dx"/> the input gradient shaped like <paramref name="x"/>. <paramref name="dBias"/> (N,
    /// optional, typically on rank 0 which owns the bias) receives Σ_rows dY; <paramref name="dWeight"/> (k_r × N)
    /// is optional. With <paramref name="accumulate"/> both are added to, else overwritten. An empty <paramref name="dx"/>
    /// (<c>default</c>) skips the input gradient (and its gather), on every rank alike.
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, DeviceBuffer<float>? dWeight = null,
        DeviceBuffer<float>? dBias = null, bool accumulate = false) =>
        Backward<float, float, float>(x, dy, dx, dWeight, dBias, accumulate);

    /// <summary>The backward pass in the layer's precision: x and dx in the compute type, dy in the output type (converted
    /// once to the compute type when they differ), the gradients in the gradient accumulation type (fp32 accumulation in
    /// every GEMM; <paramref name="accumulate"/>: beta = 1).</summary>
    public void Backward<TIn, TOut, TGrad>(MatrixView<TIn> x, MatrixView<TOut> dy, MatrixView<TIn> dx, DeviceBuffer<TGrad>? dWeight = null,
        DeviceBuffer<TGrad>? dBias = null, bool accumulate = false) where TIn : unmanaged where TOut : unmanaged where TGrad : unmanaged
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(dy);
        long m = x.Rows, kr = LocalInFeatures, n = OutFeatures;
        long cols = InputIsParallel ? kr : InFeatures;
        ThrowHelper.Shape(x, m, cols, "the forward input");
        ThrowHelper.Shape(dy, m, n, "M x out-features");
        bool wantDx = !dx.IsEmpty; // empty: dX is not computed (nor gathered; every rank alike)
        if (wantDx) ThrowHelper.Shape(dx, m, cols, "shaped like the forward input");
        RequireTypes<TIn, TOut>(nameof(x), nameof(dy));
        Precision.Require<TIn>(Precision.Compute, "compute", nameof(x));
        RequireGradientType<TGrad>(dWeight is not null || dBias is not null);
        var xr = InputIsParallel ? x : x.Columns(LocalInOffset, kr);
        var dyc = AsCompute<TIn, TOut>(dy);
        if (dBias is not null) GradientHelpers.ColumnSums(Context, _scratch, SlotOnes, dyc, dBias, accumulate);
        if (kr > 0 && dWeight is not null) GradientHelpers.WeightGradient(Context, xr, dyc, dWeight, accumulate);
        if (!wantDx) return;
        if (InputIsParallel)
        {
            if (kr > 0) Gemm.Multiply(Context.Stream, dyc, ComputeWeight<TIn>()!.AsMatrix(kr, n), dx, transB: true);
            return;
        }
        // Split on entry: compute this rank's columns of dX, then gather every rank's block into dX.
        var local = _scratch.Get<TIn>(SlotOutput, Context.Device, Math.Max(1, m * kr)).AsMatrix(m, kr, Math.Max(1, kr));
        if (kr > 0) Gemm.Multiply(Context.Stream, dyc, ComputeWeight<TIn>()!.AsMatrix(kr, n), local, transB: true);
        Context.AllGatherColumns(kr > 0 ? local : default, dx);
    }

    // partial (M × N, contiguous) = X_r · W_r (+ b on rank 0): this rank's term of the sum.
    private void QueuePartialProduct<TIn, TOut>(MatrixView<TIn> local, MatrixView<TOut> partial) where TIn : unmanaged where TOut : unmanaged
    {
        long kr = LocalInFeatures, n = OutFeatures;
        var bias = GemmBias<TOut>();
        if (kr > 0)
            Gemm.Multiply(Context.Stream, local, ComputeWeight<TIn>()!.AsMatrix(kr, n), partial, bias: bias);
        else if (bias is not null) // an empty shard on rank 0: its term is just the bias (a k = 0 GEMM)
            Gemm.Multiply(Context.Stream, local, _scratch.Get<TIn>(SlotEmpty, Context.Device, 1).AsMatrix(0, n, n), partial, bias: bias);
        else
            partial.Buffer.Clear(Context.Stream, partial.Offset, partial.Rows * n); // contributes zeros to the sum
    }
}

/// <summary>Where <see cref="RowParallelLinear.ForwardRows{TIn, TOut, TRows}"/> takes a chunk of its input rows.</summary>
internal interface IRowSource<T> where T : unmanaged
{
    /// <summary>Rows [start, start + count) of this rank's input, their producers queued on the rank's stream.</summary>
    MatrixView<T> Rows(long start, long count);
}

/// <summary>Rows of a view that is already there.</summary>
internal readonly struct ViewRows<T>(MatrixView<T> view) : IRowSource<T> where T : unmanaged
{
    public MatrixView<T> Rows(long start, long count) => view.RowRange(start, count);
}
