using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Token embedding with the vocabulary split over the ranks (Megatron's VocabParallelEmbedding, uneven splits allowed):
/// rank r holds rows [v_r, v_r + n_r) of the V × H table. Forward: each rank writes the rows of the tokens in its shard
/// and zeros for the others, and one all-reduce sums them (a reduce-scatter of the token rows under sequence
/// parallelism). Backward: each rank adds the output gradient of its own tokens into its rows (tokens in order, no
/// communication; the sequence-parallel backward first all-gathers the gradient rows).
/// <para>Token ids: from the host, every id must lie in [0, V) (else <see cref="ArgumentOutOfRangeException"/> naming the
/// position); from a device buffer (int32), an id outside [0, V) gives a zero row and no gradient — documented, not
/// checked, as no host round trip is made.</para>
/// </summary>
public sealed class VocabParallelEmbedding : IDisposable
{
    private readonly RankContext _ctx;
    private readonly DeviceBuffer<float>? _table;
    private DeviceBuffer<int>? _ids;
    private DeviceBuffer<float>? _gathered;

    /// <summary>Loads this rank's rows of <paramref name="table"/> (V × H); <paramref name="vocabPlan"/> splits V (default even).</summary>
    public VocabParallelEmbedding(RankContext context, WeightSource table, ShardingPlan? vocabPlan = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(table);
        if (table.Rows > int.MaxValue)
            throw new ArgumentException($"table has {table.Rows} rows; token ids are int32, so the vocabulary holds at most {int.MaxValue}.", nameof(table));
        // (TP-invariant mode: the tree's split, as VocabParallelCrossEntropy's, so that a tied table splits alike)
        var plan = TreeReduction.PlanFor(context, table.Rows, vocabPlan, nameof(vocabPlan));
        plan.Require(table.Rows, context.WorldSize, nameof(vocabPlan));
        _ctx = context;
        VocabPlan = plan;
        VocabSize = table.Rows;
        Features = table.Cols;
        _table = table.LoadBlock(context.Stream, LocalOffset, 0, LocalRows, Features);
        context.Synchronize();
    }

    /// <summary>V: vocabulary rows.</summary>
    public long VocabSize { get; }
    /// <summary>H: embedding width.</summary>
    public long Features { get; }
    /// <summary>The split of the vocabulary.</summary>
    public ShardingPlan VocabPlan { get; }
    /// <summary>First vocabulary row of this rank.</summary>
    public long LocalOffset => VocabPlan.Offset(_ctx.Rank);
    /// <summary>Vocabulary rows of this rank.</summary>
    public long LocalRows => VocabPlan.Size(_ctx.Rank);
    /// <summary>This rank's rows (n_r × H), or null for an empty shard.</summary>
    public DeviceBuffer<float>? Table => _table;

    /// <summary>Uploads host token ids after checking each lies in [0, V); returns the device copy (valid until the next call).</summary>
    public DeviceBuffer<int> UploadIds(ReadOnlySpan<int> tokenIds)
    {
        if (tokenIds.IsEmpty) throw new ArgumentException("tokenIds is empty; expected at least one token.", nameof(tokenIds));
        for (int i = 0; i < tokenIds.Length; i++)
            if (tokenIds[i] < 0 || tokenIds[i] >= VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokenIds), tokenIds[i], $"tokenIds[{i}] = {tokenIds[i]} is outside the vocabulary [0, {VocabSize}).");
        var ids = Scratch.Ensure(ref _ids, _ctx.Device, tokenIds.Length);
        ids.CopyFrom(tokenIds, _ctx.Stream);
        return ids;
    }

    /// <summary>Queues y = E[tokenIds] (M × H on every rank; one all-reduce). Ids checked on the host.</summary>
    public void Forward(ReadOnlySpan<int> tokenIds, MatrixView<float> y) => Forward(UploadIds(tokenIds), tokenIds.Length, y);

    /// <summary>Queues y = E[ids[0..count)] from device ids (an id outside [0, V) gives a zero row).</summary>
    public void Forward(DeviceBuffer<int> ids, long count, MatrixView<float> y)
    {
        ArgumentNullException.ThrowIfNull(ids);
        ThrowHelper.Positive(count);
        ThrowHelper.Shape(y, count, Features, "tokens x features");
        if (count > 1 && y.Ld != Features) throw new ArgumentException($"y has ld {y.Ld}; expected contiguous rows (ld = {Features}).", nameof(y));
        Lookup(ids, y);
        _ctx.AllReduce(y.Buffer, y.Buffer, count * Features, y.Offset, y.Offset);
    }

    /// <summary>Sequence-parallel forward: the embeddings of all M tokens are reduce-scattered, leaving this rank its block of
    /// <paramref name="tokens"/> rows in <paramref name="y"/> (m_r × H).</summary>
    public void ForwardSequenceParallel(ReadOnlySpan<int> tokenIds, MatrixView<float> y, ShardingPlan tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        tokens.Require(tokenIds.Length, _ctx.WorldSize, nameof(tokens));
        long m = tokenIds.Length, mr = tokens.Size(_ctx.Rank);
        ThrowHelper.Shape(y, mr, Features, "this rank's token rows x features");
        var ids = UploadIds(tokenIds);
        var full = Scratch.Ensure(ref _gathered, _ctx.Device, m * Features);
        Lookup(ids, full.AsMatrix(m, Features));
        _ctx.ReduceScatterV(full, y.Buffer, mr * Features, 0, y.Offset);
    }

    private void Lookup(DeviceBuffer<int> ids, MatrixView<float> y)
    {
        if (_table is null) y.Buffer.Clear(_ctx.Stream, y.Offset, y.Rows * Features); // an empty shard contributes zeros
        else RowOps.Embedding(_ctx.Stream, _table, LocalRows, ids, LocalOffset, y);
    }

    /// <summary>dE_r = Σ over this rank's tokens of dy rows (tokens in order; <paramref name="dTable"/>: n_r × H, zeroed first
    /// unless <paramref name="accumulate"/>); dy is M × H, the same on every rank. No communication.</summary>
    public void Backward(DeviceBuffer<int> ids, MatrixView<float> dy, DeviceBuffer<float>? dTable, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        ThrowHelper.NotEmpty(dy);
        if (dy.Cols != Features) throw new ArgumentException($"dy is {dy.Rows} x {dy.Cols}; expected M x {Features}.", nameof(dy));
        if (LocalRows == 0) return;
        ArgumentNullException.ThrowIfNull(dTable);
        RowOps.EmbeddingBackward(_ctx.Stream, dy, ids, LocalOffset, dTable, LocalRows, accumulate);
    }

    /// <summary>Sequence-parallel backward: this rank's gradient rows (m_r × H) are all-gathered (one collective), then as
    /// <see cref="Backward"/>. <paramref name="ids"/> are all M tokens' ids (as uploaded by the forward).</summary>
    public void BackwardSequenceParallel(DeviceBuffer<int> ids, MatrixView<float> dy, ShardingPlan tokens, DeviceBuffer<float>? dTable, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ThrowHelper.NotEmpty(dy);
        long m = tokens.Total, mr = tokens.Size(_ctx.Rank);
        ThrowHelper.Shape(dy, mr, Features, "this rank's token rows x features");
        var full = Scratch.Ensure(ref _gathered, _ctx.Device, m * Features);
        _ctx.AllGatherV(dy.Buffer, mr * Features, full, dy.Offset, 0);
        Backward(ids, full.AsMatrix(m, Features), dTable, accumulate);
    }

    /// <summary>This rank's rows of the table ("table", V × H) with <paramref name="dTable"/> (n_r × H); nothing for an
    /// empty shard.</summary>
    public IReadOnlyList<ParameterShard> Parameters(DeviceBuffer<float>? dTable, string name = "table") =>
        [.. ParameterShard.Of(name, VocabSize, Features, LocalOffset, LocalRows, 0, Features, false, _table, dTable)];

    /// <summary>Frees the table shard and scratch buffers.</summary>
    public void Dispose()
    {
        _table?.Dispose();
        _ids?.Dispose();
        _gathered?.Dispose();
    }
}

/// <summary>
/// Cross-entropy over logits split along the vocabulary (Megatron's vocab-parallel cross-entropy): each rank holds the
/// M × n_r logits of its vocabulary shard. The full logits are never gathered: each rank reduces its shard to three
/// numbers per row (max, Σ exp(z − max), the target's logit when the target is in the shard), one all-gather of those
/// 3·M values per rank gives every rank the log-sum-exp and the loss of every row, and the gradient of each shard's
/// logits is local: dloss · (softmax − onehot). One collective per forward, none in the backward.
/// <para>Targets from the host must lie in [0, V); from a device buffer an id outside [0, V) marks an ignored row
/// (loss 0, gradient 0), like PyTorch's ignore_index.</para>
/// <para>TP-invariant mode (the device's <see cref="Device.GemmReductionLeaf"/> = L &gt; 0 when built;
/// docs/tp-invariance.md): the vocabulary is split by the tree over leaves of L entries, each rank sums exp(z − M) over
/// its shard with M the global maximum (after the all-gather of the statistics) as its node of that tree, and a second
/// collective, an all-reduce in the tree's order, gives every rank the same log-sum-exp for every power-of-two p (two
/// collectives per forward instead of one).</para>
/// </summary>
public sealed class VocabParallelCrossEntropy : IDisposable
{
    private readonly RankContext _ctx;
    private DeviceBuffer<float>? _stats;
    private DeviceBuffer<int>? _ids;
    private readonly long _treeLeaf; // the device's GemmReductionLeaf when built (TP-invariant mode when > 0)

    /// <summary>Cross-entropy over a vocabulary of <paramref name="vocabSize"/> split by <paramref name="vocabPlan"/> (default even).</summary>
    public VocabParallelCrossEntropy(RankContext context, long vocabSize, ShardingPlan? vocabPlan = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ThrowHelper.Positive(vocabSize);
        _treeLeaf = context.Device.GemmReductionLeaf;
        var plan = TreeReduction.PlanFor(context, vocabSize, vocabPlan, nameof(vocabPlan));
        plan.Require(vocabSize, context.WorldSize, nameof(vocabPlan));
        _ctx = context;
        VocabSize = vocabSize;
        VocabPlan = plan;
    }

    /// <summary>V.</summary>
    public long VocabSize { get; }
    /// <summary>The split of the vocabulary (the logits' columns).</summary>
    public ShardingPlan VocabPlan { get; }

    /// <summary>Uploads host targets after checking each lies in [0, V) (the device copy is valid until the next call).</summary>
    public DeviceBuffer<int> UploadTargets(ReadOnlySpan<int> targets)
    {
        if (targets.IsEmpty) throw new ArgumentException("targets is empty; expected one per row.", nameof(targets));
        for (int i = 0; i < targets.Length; i++)
            if (targets[i] < 0 || targets[i] >= VocabSize)
                throw new ArgumentOutOfRangeException(nameof(targets), targets[i], $"targets[{i}] = {targets[i]} is outside the vocabulary [0, {VocabSize}).");
        var ids = Scratch.Ensure(ref _ids, _ctx.Device, targets.Length);
        ids.CopyFrom(targets, _ctx.Stream);
        return ids;
    }

    /// <summary>Queues the loss of every row into <paramref name="loss"/> (M values, on every rank) and the per-row
    /// log-sum-exp into <paramref name="lse"/> (M values, kept for the backward). <paramref name="logits"/> is this
    /// rank's M × n_r block.</summary>
    public void Forward(MatrixView<float> logits, DeviceBuffer<int> targets, DeviceBuffer<float> lse, DeviceBuffer<float> loss)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(loss);
        long m = CheckLogits(logits);
        int p = _ctx.WorldSize;
        // [0, 3M): this rank's statistics; [3M, 3M + 3pM): every rank's, gathered in rank order; TP-invariant mode:
        // [3M + 3pM, 6M + 3pM): this rank's node of the tree ([M on rank 0, S, t] per row), then summed by the tree.
        long tree = _treeLeaf > 0 ? 3 * m : 0;
        if (_treeLeaf > 0 && _ctx.Device.GemmReductionLeaf != _treeLeaf)
            throw new InvalidOperationException(
                $"this layer was built with the device's GemmReductionLeaf = {_treeLeaf} but the device now has {_ctx.Device.GemmReductionLeaf}; set it back, or build the layer again.");
        var stats = Scratch.Ensure(ref _stats, _ctx.Device, 3 * m * (p + 1) + tree);
        if (logits.Cols == 0) EmptyShard(stats, m);
        else RowOps.CrossEntropyPartial(_ctx.Stream, logits, targets, VocabPlan.Offset(_ctx.Rank), stats);
        _ctx.AllGather(stats, stats, 3 * m, 0, 3 * m);
        if (_treeLeaf == 0)
        {
            RowOps.CrossEntropyCombine(_ctx.Stream, stats, p, m, targets, VocabSize, lse, loss, statsOffset: 3 * m);
            return;
        }
        long at = 3 * m * (p + 1);
        RowOps.CrossEntropyPartialTree(_ctx.Stream, logits, targets, VocabPlan.Offset(_ctx.Rank), stats, 3 * m, p, _treeLeaf,
            includeMax: _ctx.Rank == 0, stats, at);
        _ctx.AllReduce(stats, stats, 3 * m, at, at, Bindings.SwReduceOp.SumTree);
        RowOps.CrossEntropyCombine(_ctx.Stream, stats, 1, m, targets, VocabSize, lse, loss, statsOffset: at);
    }

    // An empty shard's statistics: max -inf, sum 0, no target (exp(-inf - M) = 0 in the combine).
    private void EmptyShard(DeviceBuffer<float> stats, long m)
    {
        var host = new float[3 * m];
        for (long r = 0; r < m; r++) host[3 * r] = float.NegativeInfinity;
        stats.CopyFrom(host, _ctx.Stream);
    }

    /// <summary>dlogits = dloss[r] · (softmax(z) − onehot(target)) for this rank's block (no communication); dlogits may be
    /// the logits view itself.</summary>
    public void Backward(MatrixView<float> logits, DeviceBuffer<int> targets, DeviceBuffer<float> lse, DeviceBuffer<float> dloss, MatrixView<float> dlogits)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(dloss);
        CheckLogits(logits);
        if (logits.Cols == 0) return;
        RowOps.CrossEntropyBackward(_ctx.Stream, logits, targets, VocabPlan.Offset(_ctx.Rank), VocabSize, lse, dloss, dlogits);
    }

    private long CheckLogits(MatrixView<float> logits)
    {
        ThrowHelper.NotEmpty(logits);
        long nr = VocabPlan.Size(_ctx.Rank);
        if (logits.Cols != nr)
            throw new ArgumentException($"logits is {logits.Rows} x {logits.Cols}; expected M x {nr} (this rank's vocabulary columns).", nameof(logits));
        ThrowHelper.Positive(logits.Rows);
        return logits.Rows;
    }

    /// <summary>Frees the scratch buffers.</summary>
    public void Dispose()
    {
        _stats?.Dispose();
        _ids?.Dispose();
    }
}
