using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Tensor-parallel multi-head self-attention for one rank (Megatron's split): the Q, K and V projections are
/// column-parallel with whole heads per rank, attention runs on this rank's heads only, and the output projection is
/// row-parallel over the same heads — one all-reduce per forward, one per backward (of dX).
/// <para>
/// Heads: <c>heads</c> query heads of width d = Wq.Cols / heads and <c>kvHeads</c> key/value heads (grouped-query
/// attention when kvHeads &lt; heads; heads must be a multiple of kvHeads). Query head i uses key/value head
/// i / (heads / kvHeads). The key/value heads are split over the ranks by a plan (uneven allowed, empty shards
/// allowed: a rank with no head contributes zeros to the all-reduce), and every rank holds the query heads of its
/// key/value heads, so a group never straddles two ranks.
/// </para>
/// <para>
/// Tokens: x is M × H with M = B·T rows, B sequences of T tokens one after the other (rows [b·T, (b+1)·T) are sequence
/// b). Per sequence and local head: S = Q_h·K_hᵀ (T × T), P = softmax(S / √d) in fp32 with the causal mask when
/// <see cref="Causal"/>, O_h = P·V_h; the GEMMs are queued per head on strided views of Q, K, V and O (no copies, no
/// host round trip) and the softmax of all heads is one kernel (<see cref="RowOps.Softmax"/>). fp32 throughout.
/// </para>
/// </summary>
public sealed class ParallelSelfAttention : IDisposable
{
    private const int SlotQ = 0, SlotK = 1, SlotV = 2, SlotScores = 3, SlotO = 4, SlotGathered = 5, SlotOnes = 6, SlotTree = 7, SlotCount = 8;
    private readonly RankContext _ctx;
    private readonly TypedScratch _scratch = new(SlotCount);
    private GemmGroupMember<float, float>[] _members = [];

    /// <summary>Loads this rank's heads of Wq (H × heads·d), Wk and Wv (H × kvHeads·d), Wo (heads·d × H) and of the
    /// optional biases (bq, bk, bv per head column; bo, 1 × H, on rank 0). <paramref name="kvHeadPlan"/> splits the
    /// key/value heads over the ranks (default: as even as possible).</summary>
    public ParallelSelfAttention(RankContext context, int heads, int kvHeads, WeightSource wq, WeightSource wk, WeightSource wv, WeightSource wo,
        WeightSource? bq = null, WeightSource? bk = null, WeightSource? bv = null, WeightSource? bo = null, bool causal = true,
        ShardingPlan? kvHeadPlan = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(wq);
        ArgumentNullException.ThrowIfNull(wk);
        ArgumentNullException.ThrowIfNull(wv);
        ArgumentNullException.ThrowIfNull(wo);
        if (heads < 1) throw new ArgumentOutOfRangeException(nameof(heads), heads, "expected at least one query head.");
        if (kvHeads < 1) throw new ArgumentOutOfRangeException(nameof(kvHeads), kvHeads, "expected at least one key/value head.");
        if (heads % kvHeads != 0)
            throw new ArgumentException($"heads = {heads} is not a multiple of kvHeads = {kvHeads}; grouped-query attention needs heads / kvHeads query heads per key/value head.", nameof(heads));
        if (wq.Cols % heads != 0)
            throw new ArgumentException($"wq is {wq.Rows} x {wq.Cols}; its {wq.Cols} columns do not split into {heads} heads of equal width.", nameof(wq));
        long h = wq.Rows, d = wq.Cols / heads;
        if (d < 1) throw new ArgumentException($"wq has {wq.Cols} columns for {heads} heads; expected at least one per head.", nameof(wq));
        if (wk.Rows != h || wk.Cols != kvHeads * d)
            throw new ArgumentException($"wk is {wk.Rows} x {wk.Cols}; expected H x kvHeads·d = {h} x {kvHeads * d}.", nameof(wk));
        if (wv.Rows != h || wv.Cols != kvHeads * d)
            throw new ArgumentException($"wv is {wv.Rows} x {wv.Cols}; expected H x kvHeads·d = {h} x {kvHeads * d}.", nameof(wv));
        if (wo.Rows != heads * d || wo.Cols != h)
            throw new ArgumentException($"wo is {wo.Rows} x {wo.Cols}; expected heads·d x H = {heads * d} x {h}.", nameof(wo));
        // TP-invariant mode (the device's GemmReductionLeaf > 0): the key/value heads split by the reduction tree over them,
        // one head group per leaf of the output projection (g·d) and of dX's three sums (g·d for Q, d for K and V).
        bool tree = context.Device.GemmReductionLeaf > 0;
        int group = heads / kvHeads;
        if (tree && (d % 2 != 0))
            throw new NotSupportedException(
                $"TP-invariant attention sums one head (d = {d}) or one query group (g·d = {group * d}) per leaf of its reduction tree, and a leaf must be an even number of elements; d = {d} is odd.");
        var plan = tree
            ? TreeReduction.ItemsPlanFor(context, kvHeads, kvHeadPlan, nameof(kvHeadPlan))
            : kvHeadPlan ?? ShardingPlan.Even(kvHeads, context.WorldSize);
        plan.Require(kvHeads, context.WorldSize, nameof(kvHeadPlan));
        _treeLeaf = tree ? group * d : 0;
        _ctx = context;
        Heads = heads;
        KvHeads = kvHeads;
        HeadDim = d;
        Causal = causal;
        KvHeadPlan = plan;
        int g = heads / kvHeads;
        var sizes = Enumerable.Range(0, context.WorldSize).Select(r => plan.Size(r)).ToArray();
        QueryPlan = ShardingPlan.FromSizes(sizes.Select(s => s * g * d).ToArray());
        var kvPlan = ShardingPlan.FromSizes(sizes.Select(s => s * d).ToArray());
        var made = new List<IDisposable>();
        try
        {
            Query = new ColumnParallelLinear(context, wq, bq, false, QueryPlan, Epilogue.None, null, leaf: g * d); made.Add(Query);
            Key = new ColumnParallelLinear(context, wk, bk, false, kvPlan, Epilogue.None, null, leaf: d); made.Add(Key);
            Value = new ColumnParallelLinear(context, wv, bv, false, kvPlan, Epilogue.None, null, leaf: d); made.Add(Value);
            Output = new RowParallelLinear(context, wo, bo, true, QueryPlan, null, leaf: g * d);
        }
        catch
        {
            foreach (var m in made) m.Dispose();
            throw;
        }
    }

    // TP-invariant mode: the leaf of Q's part of dX (one query group, g·d); 0 otherwise.
    private readonly long _treeLeaf;

    /// <summary>Query heads (all ranks).</summary>
    public int Heads { get; }
    /// <summary>Key/value heads (all ranks).</summary>
    public int KvHeads { get; }
    /// <summary>d: the width of one head.</summary>
    public long HeadDim { get; }
    /// <summary>H: model width.</summary>
    public long ModelFeatures => Query.InFeatures;
    /// <summary>Whether query t sees only keys ≤ t of its sequence.</summary>
    public bool Causal { get; }
    /// <summary>The split of the key/value heads over the ranks.</summary>
    public ShardingPlan KvHeadPlan { get; }
    /// <summary>The split of the query columns (whole heads, heads / kvHeads per key/value head) — also the row split of Wo.</summary>
    public ShardingPlan QueryPlan { get; }
    /// <summary>This rank's query heads.</summary>
    public int LocalHeads => (int)(QueryPlan.Size(_ctx.Rank) / HeadDim);
    /// <summary>This rank's key/value heads.</summary>
    public int LocalKvHeads => (int)KvHeadPlan.Size(_ctx.Rank);
    /// <summary>The column-parallel query projection (this rank's heads).</summary>
    public ColumnParallelLinear Query { get; }
    /// <summary>The column-parallel key projection.</summary>
    public ColumnParallelLinear Key { get; }
    /// <summary>The column-parallel value projection.</summary>
    public ColumnParallelLinear Value { get; }
    /// <summary>The row-parallel output projection (the one all-reduce of the forward).</summary>
    public RowParallelLinear Output { get; }
    /// <summary>The softmax scale 1/√d.</summary>
    public float Scale => (float)(1.0 / Math.Sqrt(HeadDim));

    private long Qd => LocalHeads * HeadDim;
    private long Kd => LocalKvHeads * HeadDim;

    /// <summary>Queues Y = Attention(X) on the rank's stream: x and y are M × H on every rank, M a multiple of
    /// <paramref name="sequenceLength"/>.</summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y, long sequenceLength)
    {
        long m = CheckInput(x, sequenceLength);
        ThrowHelper.Shape(y, m, ModelFeatures, "M x model features");
        var acts = Buffers(m, sequenceLength, keep: false);
        ComputeHeads(x, acts);
        Output.Forward(acts.O, y);
    }

    /// <summary>Sequence-parallel forward: this rank's m_r × H token rows (a block of <paramref name="tokens"/>, whole
    /// sequences or not) are all-gathered, attention runs over all M rows, and a reduce-scatter leaves this rank its rows
    /// of Y (two collectives).</summary>
    public void ForwardSequenceParallel(MatrixView<float> x, MatrixView<float> y, long sequenceLength, ShardingPlan tokens)
    {
        var full = Gather(x, tokens, 0);
        long m = CheckInput(full, sequenceLength);
        var acts = Buffers(m, sequenceLength, keep: false);
        ComputeHeads(full, acts);
        Output.ForwardScatter(acts.O, y, tokens);
    }

    /// <summary>Sequence-parallel training forward (x, y: this rank's rows); the activations cover all M rows.</summary>
    public AttentionActivations ForwardTrainingSequenceParallel(MatrixView<float> x, MatrixView<float> y, long sequenceLength, ShardingPlan tokens,
        bool keepActivations = true)
    {
        var full = Gather(x, tokens, 0);
        long m = CheckInput(full, sequenceLength);
        var saved = new AttentionActivations(_ctx.Device, m, sequenceLength, Qd, Kd, LocalHeads);
        try
        {
            var acts = saved.Views();
            ComputeHeads(full, acts);
            Output.ForwardScatter(acts.O, y, tokens);
            if (!keepActivations) saved.Release();
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    /// <summary>Sequence-parallel backward: x, dy and dx are this rank's rows; X and dY are all-gathered and dX's partial
    /// sums reduce-scattered (three collectives).</summary>
    public void BackwardSequenceParallel(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, AttentionGradients gradients,
        AttentionActivations saved, ShardingPlan tokens, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(saved);
        long m = tokens.Total, h = ModelFeatures, mr = tokens.Size(_ctx.Rank);
        var full = Gather(x, tokens, 2 * m * h);
        ThrowHelper.Shape(dy, mr, h, "this rank's token rows x model features");
        ThrowHelper.Shape(dx, mr, h, "this rank's token rows x model features");
        if (mr > 1 && dx.Ld != h) throw new ArgumentException($"dx has ld {dx.Ld}; the reduce-scatter needs contiguous rows (ld = {h}).", nameof(dx));
        var dyFull = full.Buffer.AsMatrix(m, h, h, m * h);
        _ctx.AllGatherV(dy.Buffer, mr * h, dyFull.Buffer, dy.Offset, m * h);
        var dxFull = full.Buffer.AsMatrix(m, h, h, 2 * m * h);
        BackwardCore(full, dyFull, dxFull, gradients, saved, accumulate);
        if (_treeLeaf > 0)
        {
            // (TP-invariant: the whole dX summed by the tree on every rank, then this rank's rows taken)
            CombineTreeDx(m, dxFull);
            if (mr > 0) dxFull.Buffer.CopyTo(dx.Buffer, _ctx.Stream, dxFull.Offset + tokens.Offset(_ctx.Rank) * h, dx.Offset, mr * h);
            return;
        }
        _ctx.ReduceScatterV(dxFull.Buffer, dx.Buffer, mr * h, dxFull.Offset, dx.Offset);
    }

    // This rank's rows all-gathered into M × H (and `extra` elements of work area after them).
    private MatrixView<float> Gather(MatrixView<float> x, ShardingPlan tokens, long extra)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Parts != _ctx.WorldSize)
            throw new ArgumentException($"tokens splits over {tokens.Parts} ranks; expected {_ctx.WorldSize}.", nameof(tokens));
        long m = tokens.Total, mr = tokens.Size(_ctx.Rank), h = ModelFeatures;
        ThrowHelper.Positive(m);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.Shape(x, mr, h, "this rank's token rows x model features");
        if (mr > 1 && x.Ld != h) throw new ArgumentException($"x has ld {x.Ld}; the gather needs contiguous rows (ld = {h}).", nameof(x));
        var buf = _scratch.Get<float>(SlotGathered, _ctx.Device, m * h + extra);
        _ctx.AllGatherV(x.Buffer, mr * h, buf, x.Offset, 0);
        return buf.AsMatrix(m, h);
    }

    /// <summary>Training forward: as <see cref="Forward"/> (one all-reduce), returning what the backward needs. With
    /// <paramref name="keepActivations"/> that is Q, K, V, the probabilities P and O (per rank
    /// (2·heads_r + 2·kvHeads_r)·d·M + heads_r·B·T² floats); without, only the shape, and the backward recomputes them.</summary>
    public AttentionActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y, long sequenceLength, bool keepActivations = true)
    {
        long m = CheckInput(x, sequenceLength);
        ThrowHelper.Shape(y, m, ModelFeatures, "M x model features");
        var saved = new AttentionActivations(_ctx.Device, m, sequenceLength, Qd, Kd, LocalHeads);
        try
        {
            var acts = saved.Views();
            ComputeHeads(x, acts);
            Output.Forward(acts.O, y);
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
    /// Backward with one all-reduce (of dX): dO = dY·Wo_rᵀ, dWo_r = Oᵀ·dY, dbo = Σ dY (rank 0); per sequence and local
    /// head dP = dO_h·V_hᵀ, dV_h += Pᵀ·dO_h, dS = softmax'(dP), dQ_h = dS·K_h, dK_h += dSᵀ·Q_h (the query heads of a group
    /// add into their key/value head); then dWq,k,v = Xᵀ·dQ,K,V, the bias sums, and dX = Σ_r (dQ·Wqᵀ + dK·Wkᵀ + dV·Wvᵀ).
    /// <paramref name="x"/> is the forward input, <paramref name="dy"/> the output gradient (M × H, the same on every rank),
    /// <paramref name="dx"/> (M × H, contiguous rows) receives the input gradient; with <paramref name="accumulate"/> the
    /// parameter gradients are added to. An empty <paramref name="dx"/> (<c>default</c>, on every rank) skips the input
    /// gradient and its all-reduce.
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, AttentionGradients gradients,
        AttentionActivations saved, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(saved);
        long m = CheckInput(x, saved.SequenceLength);
        ThrowHelper.Shape(dy, m, ModelFeatures, "M x model features");
        if (dx.IsEmpty)
        {
            BackwardCore(x, dy, dx, gradients, saved, accumulate); // no input gradient, no all-reduce (every rank alike)
            return;
        }
        ThrowHelper.Shape(dx, m, ModelFeatures, "M x model features");
        if (m > 1 && dx.Ld != ModelFeatures)
            throw new ArgumentException($"dx has ld {dx.Ld}; the all-reduce needs contiguous rows (ld = {ModelFeatures}).", nameof(dx));
        BackwardCore(x, dy, dx, gradients, saved, accumulate);
        if (_treeLeaf > 0)
        {
            CombineTreeDx(m, dx);
            return;
        }
        _ctx.AllReduce(dx.Buffer, dx.Buffer, m * ModelFeatures, dx.Offset, dx.Offset);
    }

    // TP-invariant mode: dX's three partial sums (Q, K, V parts, fp32, BackwardCore left them in SlotTree) summed over the
    // ranks in the tree's order (one all-reduce), then dX = (S_Q + S_K) + S_V into dst (m × H, contiguous).
    private void CombineTreeDx(long m, MatrixView<float> dst)
    {
        long mh = m * ModelFeatures;
        GradientHelpers.TreeSumOfParts(_ctx, _scratch.Get<float>(SlotTree, _ctx.Device, 3 * mh), 3, mh, dst.Buffer, dst.Offset);
    }

    // Everything but the reduction of dX (left as this rank's partial sum in dx, M × H contiguous).
    private void BackwardCore(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, AttentionGradients gradients,
        AttentionActivations saved, bool accumulate)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        long m = CheckInput(x, saved.SequenceLength);
        if (saved.Rows != m || saved.QueryWidth != Qd || saved.KvWidth != Kd)
            throw new ArgumentException($"saved activations are for {saved.Rows} rows of {saved.QueryWidth}/{saved.KvWidth} columns; expected {m} rows of {Qd}/{Kd}.", nameof(saved));
        gradients.Require(this);
        if (!saved.IsKept) ComputeHeads(x, saved.Recreate().Views());
        var a = saved.Views();
        long t = saved.SequenceLength, b = m / t, hd = HeadDim;
        int lh = LocalHeads, g = Heads / KvHeads;
        var stream = _ctx.Stream;
        var dq = saved.GradientQ;
        var dk = saved.GradientK;
        var dv = saved.GradientV;
        Output.Backward(a.O, dy, dq, gradients.DWo, _ctx.Rank == 0 ? gradients.DBo : null, accumulate); // dO in dQ's room
        if (lh > 0)
        {
            var dp = saved.GradientScores;
            for (long s = 0; s < b; s++)
                for (int hq = 0; hq < lh; hq++)
                {
                    int hk = hq / g;
                    bool first = hq % g == 0;
                    var doh = Head(dq, s, t, hq);
                    var p = Scores(a.P, s, hq, t, lh);
                    Gemm.Multiply(stream, doh, Head(a.V, s, t, hk), Scores(dp, s, hq, t, lh), transB: true);       // dP = dO_h·V_hᵀ
                    Gemm.Multiply(stream, p, doh, Head(dv, s, t, hk), beta: first ? 0f : 1f, transA: true);        // dV_h (+)= Pᵀ·dO_h
                }
            var all = dp.Buffer.AsMatrix(b * lh * t, t, t, dp.Offset);
            RowOps.SoftmaxBackward(stream, a.P.Buffer.AsMatrix(b * lh * t, t, t, a.P.Offset), all, all, Scale); // dS, in place
            for (long s = 0; s < b; s++)
                for (int hq = 0; hq < lh; hq++)
                {
                    int hk = hq / g;
                    bool first = hq % g == 0;
                    var ds = Scores(dp, s, hq, t, lh);
                    Gemm.Multiply(stream, ds, Head(a.K, s, t, hk), Head(dq, s, t, hq));                             // dQ_h = dS·K_h (over dO_h, read above)
                    Gemm.Multiply(stream, ds, Head(a.Q, s, t, hq), Head(dk, s, t, hk), beta: first ? 0f : 1f, transA: true); // dK_h (+)= dSᵀ·Q_h
                }
        }
        // The projections' gradients, and dX's partial sum over this rank's heads; one all-reduce.
        ProjectionBackward(Query, x, dq, gradients.DWq, gradients.DBq, accumulate);
        ProjectionBackward(Key, x, dk, gradients.DWk, gradients.DBk, accumulate);
        ProjectionBackward(Value, x, dv, gradients.DWv, gradients.DBv, accumulate);
        if (dx.IsEmpty) return;
        if (_treeLeaf > 0)
        {
            // TP-invariant: the Q, K and V parts of dX's partial sum apart (fp32, each over its heads by the tree: a query
            // group or a key/value head per leaf), combined after the tree all-reduce (CombineTreeDx).
            long mh = m * ModelFeatures;
            var sums = _scratch.Get<float>(SlotTree, _ctx.Device, 3 * mh);
            if (lh > 0)
            {
                Gemm.MultiplyLeaf(stream, dq, Query.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Qd), sums.AsMatrix(m, ModelFeatures), _treeLeaf, transB: true);
                Gemm.MultiplyLeaf(stream, dk, Key.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Kd), sums.AsMatrix(m, ModelFeatures, ModelFeatures, mh), HeadDim, transB: true);
                Gemm.MultiplyLeaf(stream, dv, Value.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Kd), sums.AsMatrix(m, ModelFeatures, ModelFeatures, 2 * mh), HeadDim, transB: true);
            }
            else
            {
                sums.Clear(stream, 0, 3 * mh); // no heads here: zeros add exactly
            }
            return;
        }
        if (lh > 0)
        {
            Gemm.Multiply(stream, dq, Query.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Qd), dx, transB: true);
            Gemm.Multiply(stream, dk, Key.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Kd), dx, beta: 1f, transB: true);
            Gemm.Multiply(stream, dv, Value.ComputeWeight<float>()!.AsMatrix(ModelFeatures, Kd), dx, beta: 1f, transB: true);
        }
        else
        {
            dx.Buffer.Clear(stream, dx.Offset, m * ModelFeatures); // no heads here: this rank adds nothing to dX
        }
    }

    private void ProjectionBackward(ColumnParallelLinear layer, MatrixView<float> x, MatrixView<float> dOut, DeviceBuffer<float>? dw,
        DeviceBuffer<float>? db, bool accumulate)
    {
        if (layer.LocalOutFeatures == 0) return;
        if (dw is not null) GradientHelpers.WeightGradient(_ctx, x, dOut, dw, accumulate);
        if (db is not null) GradientHelpers.ColumnSums(_ctx, _scratch, SlotOnes, dOut, db, accumulate);
    }

    private long CheckInput(MatrixView<float> x, long sequenceLength)
    {
        ThrowHelper.NotEmpty(x);
        if (sequenceLength < 1) throw new ArgumentOutOfRangeException(nameof(sequenceLength), sequenceLength, "expected at least one token per sequence.");
        if (x.Cols != ModelFeatures)
            throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected M x {ModelFeatures} (M x model features).", nameof(x));
        if (x.Rows < 1 || x.Rows % sequenceLength != 0)
            throw new ArgumentException($"x has {x.Rows} rows; expected a positive multiple of sequenceLength = {sequenceLength} (B sequences of T tokens).", nameof(x));
        return x.Rows;
    }

    // Rows [s·T, (s+1)·T) and columns of head h of a token-major matrix of heads of width d.
    private MatrixView<float> Head(MatrixView<float> all, long s, long t, int h) => all.RowRange(s * t, t).Columns(h * HeadDim, HeadDim);

    // The T × T scores of sequence s, local head h (stacked sequence-major, then head).
    private static MatrixView<float> Scores(MatrixView<float> p, long s, int h, long t, int lh) =>
        p.Buffer.AsMatrix(t, t, t, p.Offset + (s * lh + h) * t * t);

    private AttentionViews Buffers(long m, long t, bool keep)
    {
        long b = m / t, lh = LocalHeads;
        var dev = _ctx.Device;
        MatrixView<float> Mat(int slot, long rows, long cols) => _scratch.Get<float>(slot, dev, Math.Max(1, rows * cols)).AsMatrix(rows, cols, Math.Max(1, cols));
        return new AttentionViews(Mat(SlotQ, m, Qd), Mat(SlotK, m, Kd), Mat(SlotV, m, Kd), Mat(SlotScores, b * lh * t, t), Mat(SlotO, m, Qd));
    }

    // Q, K, V, P and O of this rank's heads (no communication).
    private void ComputeHeads(MatrixView<float> x, AttentionViews a)
    {
        int lh = LocalHeads, g = Heads / KvHeads;
        if (lh == 0) return;
        long m = x.Rows, t = a.P.Cols, b = m / t;
        var stream = _ctx.Stream;
        // Q, K and V as one group: X is packed once for the three projections (the same bits as three GEMMs).
        long h = ModelFeatures;
        Span<GemmGroupMember<float, float>> qkv =
        [
            new(stream, x, Query.ComputeWeight<float>()!.AsMatrix(h, Qd), a.Q, bias: Query.GemmBias<float>()),
            new(stream, x, Key.ComputeWeight<float>()!.AsMatrix(h, Kd), a.K, bias: Key.GemmBias<float>()),
            new(stream, x, Value.ComputeWeight<float>()!.AsMatrix(h, Kd), a.V, bias: Value.GemmBias<float>()),
        ];
        Gemm.MultiplyGrouped<float, float>(qkv);
        // Every head's scores S = Q_h·K_hᵀ as one group (one job on the device instead of one per head).
        int heads = (int)(b * lh);
        if (_members.Length < heads) _members = new GemmGroupMember<float, float>[heads];
        for (long s = 0; s < b; s++)
            for (int hq = 0; hq < lh; hq++)
                _members[s * lh + hq] = new(stream, Head(a.Q, s, t, hq), Head(a.K, s, t, hq / g), Scores(a.P, s, hq, t, lh), transB: true);
        Gemm.MultiplyGrouped<float, float>(_members.AsSpan(0, heads));
        RowOps.Softmax(stream, a.P, a.P, Scale, Causal ? t : 0);
        for (long s = 0; s < b; s++)
            for (int hq = 0; hq < lh; hq++)
                Gemm.Multiply(stream, Scores(a.P, s, hq, t, lh), Head(a.V, s, t, hq / g), Head(a.O, s, t, hq));
    }

    /// <summary>This rank's parameters ("wq", "wk", "wv", "wo" and the biases the layer has: "bq", "bk", "bv", "bo" on
    /// rank 0) with their gradients in <paramref name="gradients"/>.</summary>
    public IReadOnlyList<ParameterShard> Parameters(AttentionGradients gradients, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(gradients);
        gradients.Require(this);
        return [.. Query.Parameters(gradients.DWq, gradients.DBq, prefix + "wq", prefix + "bq"),
            .. Key.Parameters(gradients.DWk, gradients.DBk, prefix + "wk", prefix + "bk"),
            .. Value.Parameters(gradients.DWv, gradients.DBv, prefix + "wv", prefix + "bv"),
            .. Output.Parameters(gradients.DWo, gradients.DBo, prefix + "wo", prefix + "bo")];
    }

    /// <summary>Releases the projections and the scratch buffers.</summary>
    public void Dispose()
    {
        Query.Dispose();
        Key.Dispose();
        Value.Dispose();
        Output.Dispose();
        _scratch.Dispose();
    }
}

internal readonly record struct AttentionViews(MatrixView<float> Q, MatrixView<float> K, MatrixView<float> V, MatrixView<float> P, MatrixView<float> O);

/// <summary>
/// What <see cref="ParallelSelfAttention.ForwardTraining"/> keeps on one rank: Q (M × heads_r·d), K and V
/// (M × kvHeads_r·d), the probabilities P (B·heads_r·T × T) and O (M × heads_r·d), and room for their gradients — or
/// only the shape when the activations are recomputed in the backward.
/// </summary>
public sealed class AttentionActivations : IDisposable
{
    private readonly Device _device;
    private DeviceBuffer<float>? _buffer;

    internal AttentionActivations(Device device, long rows, long sequenceLength, long queryWidth, long kvWidth, int localHeads)
    {
        _device = device;
        Rows = rows;
        SequenceLength = sequenceLength;
        QueryWidth = queryWidth;
        KvWidth = kvWidth;
        LocalHeads = localHeads;
        Recreate();
    }

    /// <summary>M: token rows.</summary>
    public long Rows { get; }
    /// <summary>T: tokens per sequence.</summary>
    public long SequenceLength { get; }
    /// <summary>heads_r·d.</summary>
    public long QueryWidth { get; }
    /// <summary>kvHeads_r·d.</summary>
    public long KvWidth { get; }
    /// <summary>heads_r.</summary>
    public int LocalHeads { get; }
    /// <summary>True while the activations are held.</summary>
    public bool IsKept => _buffer is not null;
    /// <summary>fp32 elements held while kept (activations and the backward's room for their gradients).</summary>
    public long Elements => 2 * (2 * Rows * QueryWidth + 2 * Rows * KvWidth + ScoreElements);
    private long ScoreElements => Rows / SequenceLength * LocalHeads * SequenceLength * SequenceLength;

    // Layout: Q, K, V, P, O, then dQ (dO first), dK, dV, dP.
    private MatrixView<float> At(long offset, long rows, long cols) => _buffer!.AsMatrix(rows, cols, Math.Max(1, cols), offset);
    internal AttentionViews Views()
    {
        long m = Rows, q = m * QueryWidth, k = m * KvWidth, t = SequenceLength;
        return new AttentionViews(At(0, m, QueryWidth), At(q, m, KvWidth), At(q + k, m, KvWidth),
            At(q + 2 * k, ScoreElements / t, t), At(q + 2 * k + ScoreElements, m, QueryWidth));
    }
    private long Half => 2 * Rows * QueryWidth + 2 * Rows * KvWidth + ScoreElements;
    internal MatrixView<float> GradientQ => At(Half, Rows, QueryWidth);
    internal MatrixView<float> GradientK => At(Half + Rows * QueryWidth, Rows, KvWidth);
    internal MatrixView<float> GradientV => At(Half + Rows * (QueryWidth + KvWidth), Rows, KvWidth);
    internal MatrixView<float> GradientScores => At(Half + Rows * (QueryWidth + 2 * KvWidth), ScoreElements / SequenceLength, SequenceLength);

    internal AttentionActivations Recreate()
    {
        _buffer ??= _device.Allocate<float>(Math.Max(1, Elements));
        return this;
    }

    internal void Release()
    {
        _buffer?.Dispose();
        _buffer = null;
    }

    /// <summary>Frees the held activations.</summary>
    public void Dispose() => Release();
}

/// <summary>The parameter gradients of one rank's <see cref="ParallelSelfAttention"/> (fp32): dWq (H × heads_r·d), dWk and
/// dWv (H × kvHeads_r·d), dWo (heads_r·d × H), the bias gradients of the biases the layer has (dbo: H, written on rank 0).
/// Null where this rank holds no head.</summary>
public sealed class AttentionGradients : IDisposable
{
    private readonly ParallelSelfAttention _layer;

    /// <summary>Allocates the gradients of <paramref name="layer"/>'s shards on <paramref name="device"/>.</summary>
    public AttentionGradients(Device device, ParallelSelfAttention layer)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(layer);
        _layer = layer;
        long h = layer.ModelFeatures, q = layer.Query.LocalOutFeatures, k = layer.Key.LocalOutFeatures;
        DeviceBuffer<float>? Alloc(long n, bool want) => want && n > 0 ? device.Allocate<float>(n) : null;
        DWq = Alloc(h * q, true);
        DWk = Alloc(h * k, true);
        DWv = Alloc(h * k, true);
        DWo = Alloc(q * h, true);
        DBq = Alloc(q, layer.Query.Bias is not null);
        DBk = Alloc(k, layer.Key.Bias is not null);
        DBv = Alloc(k, layer.Value.Bias is not null);
        DBo = Alloc(h, layer.Output.Bias is not null);
    }

    /// <summary>dWq.</summary>
    public DeviceBuffer<float>? DWq { get; }
    /// <summary>dWk.</summary>
    public DeviceBuffer<float>? DWk { get; }
    /// <summary>dWv.</summary>
    public DeviceBuffer<float>? DWv { get; }
    /// <summary>dWo.</summary>
    public DeviceBuffer<float>? DWo { get; }
    /// <summary>dbq (when the layer has bq).</summary>
    public DeviceBuffer<float>? DBq { get; }
    /// <summary>dbk.</summary>
    public DeviceBuffer<float>? DBk { get; }
    /// <summary>dbv.</summary>
    public DeviceBuffer<float>? DBv { get; }
    /// <summary>dbo (rank 0 writes it: it owns bo).</summary>
    public DeviceBuffer<float>? DBo { get; }

    internal void Require(ParallelSelfAttention layer)
    {
        if (!ReferenceEquals(layer, _layer))
            throw new ArgumentException("these gradients were allocated for another attention layer.", "gradients");
    }

    /// <summary>Frees the gradient buffers.</summary>
    public void Dispose()
    {
        DWq?.Dispose(); DWk?.Dispose(); DWv?.Dispose(); DWo?.Dispose();
        DBq?.Dispose(); DBk?.Dispose(); DBv?.Dispose(); DBo?.Dispose();
    }
}
