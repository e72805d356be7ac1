using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// What <see cref="ColumnParallelLinear"/> and <see cref="RowParallelLinear"/> share: a linear layer <c>Y = X·W + b</c>
/// with W K × N (in × out features) of which this rank holds one shard, cut by <see cref="Plan"/> (over N for a
/// column-parallel layer, over K for a row-parallel one; uneven and empty shards allowed). Construction checks the
/// arguments, checks that the rank's shard fits its device (<see cref="Device.MemoryLimitBytes"/>, ranks sharing a
/// device added up) before anything is loaded, then loads the rank's block of W and of b in the
/// <see cref="Precision"/>'s parameter type; <see cref="Dispose"/> releases them and the layer's scratch buffers. Only
/// Shardwise's layers derive from it.
/// </summary>
/// <remarks>
/// Precision is a run-time value, not a type parameter: one layer type serves every policy (the four element types of
/// a policy would make four type parameters, and a policy read from a configuration file would need reflection to
/// build the type). The typed entry points are generic methods (<c>Forward&lt;TIn, TOut&gt;</c>) whose element types
/// are checked against the policy on each call, with an <see cref="ArgumentException"/> naming the argument, its type
/// and the expected one; the float overloads of the fp32 API are kept as they were.
/// </remarks>
public abstract class ParallelLinear : IDisposable
{
    // Scratch slots (TypedScratch): the element type of each follows the policy.
    private protected const int SlotOutput = 0, SlotWeight = 1, SlotBias = 2, SlotGradient = 3, SlotOnes = 4, SlotEmpty = 5,
        SlotTree = 6, SlotTreeEmpty = 7;
    private protected readonly TypedScratch _scratch = new(8);
    private readonly object? _weight; // DeviceBuffer<parameter type>
    private readonly object? _bias;
    private readonly bool _splitRows;

    /// <summary>Checks the arguments and the memory, then loads this rank's shard of <paramref name="weight"/> (K × N)
    /// and of <paramref name="bias"/> (1 × N, optional).</summary>
    /// <param name="context">The rank.</param>
    /// <param name="weight">The logical weight, K × N.</param>
    /// <param name="bias">Optional bias, 1 × N.</param>
    /// <param name="plan">The split of the sharded dimension (default: even).</param>
    /// <param name="splitRows">False: column-parallel, the plan splits N and every rank loads W[:, cols_r] and b[cols_r].
    /// True: row-parallel, the plan splits K, every rank loads W[rows_r, :] and rank 0 alone the whole b (added once,
    /// before the sum).</param>
    /// <param name="memoryPlan">The layer's memory plan for a given split (checked against the device).</param>
    /// <param name="precision">The precision policy (null: <see cref="Precision.Fp32"/>).</param>
    /// <param name="leaf">TP-invariant mode only: the leaf of the layer's tree when it is not the device's
    /// GemmReductionLeaf (0: the device's; -1: none, the caller sums the layer's reduction over ranks itself).</param>
    private protected ParallelLinear(RankContext context, WeightSource weight, WeightSource? bias, ShardingPlan? plan,
        bool splitRows, Func<ShardingPlan, LayerPlan> memoryPlan, Precision? precision, long leaf = 0)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(weight);
        Context = context;
        Precision = precision ?? Precision.Fp32;
        InFeatures = weight.Rows;
        OutFeatures = weight.Cols;
        ThrowHelper.Positive(weight.Rows);
        ThrowHelper.Positive(weight.Cols);
        _splitRows = splitRows;
        long split = splitRows ? InFeatures : OutFeatures;
        _deviceLeaf = context.Device.GemmReductionLeaf;
        // leaf < 0: a caller that sums this layer's reduction itself (the gated FFN's fused gate/up) takes the plan as given.
        ReductionLeaf = leaf < 0 ? 0 : _deviceLeaf > 0 && leaf > 0 ? leaf : _deviceLeaf;
        HasBias = bias is not null;
        Plan = leaf < 0 ? plan ?? ShardingPlan.Even(split, context.WorldSize)
            : TreeReduction.PlanFor(context, split, plan, nameof(plan), ReductionLeaf); // the tree's split in TP-invariant mode
        Plan.Require(split, context.WorldSize, nameof(plan));
        bias?.Require(1, OutFeatures, nameof(bias));
        memoryPlan(Plan).EnsureFitsOn(context);
        long off = Plan.Offset(context.Rank), size = Plan.Size(context.Rank);
        var stream = context.Stream;
        var p = Precision.Parameter;
        _weight = splitRows
            ? AnyBuffer.Load(weight, p, stream, off, 0, size, OutFeatures)
            : AnyBuffer.Load(weight, p, stream, 0, off, InFeatures, size);
        try
        {
            // Row-parallel: rank 0 holds the bias (in TP-invariant mode it travels to the others with the sum).
            _bias = splitRows
                ? (context.Rank == 0 && bias is not null ? AnyBuffer.Load(bias, p, stream, 0, 0, 1, OutFeatures) : null)
                : (bias is null ? null : AnyBuffer.Load(bias, p, stream, 0, off, 1, size));
        }
        catch
        {
            (_weight as IDisposable)?.Dispose();
            throw;
        }
    }

    /// <summary>The rank this layer belongs to (its device and stream; used by the tensor interop).</summary>
    internal RankContext Context { get; }

    /// <summary>0 when the device's <see cref="Device.GemmReductionLeaf"/> was 0 when the layer was built; else the leaf
    /// of the layer's TP-invariant tree (<see cref="TreeReduction"/>: the device's, or one head group for the attention's
    /// projections), whose split <see cref="Plan"/> then is, and whose order the layer's reductions over ranks follow.</summary>
    public long ReductionLeaf { get; }

    private readonly long _deviceLeaf;

    // Whether the layer has a bias (a row-parallel rank other than 0 holds none).
    private protected bool HasBias { get; }

    // The reduce op of the layer's sums over ranks.
    private protected Shardwise.Bindings.SwReduceOp ReduceOp => TreeReduction.Op(ReductionLeaf);

    // A TP-invariant layer runs only while its device keeps the setting it was built with (its GEMMs read the device's).
    private protected void RequireReduction()
    {
        long now = Context.Device.GemmReductionLeaf;
        if (now != _deviceLeaf)
            throw new InvalidOperationException(
                $"this layer was built with the device's GemmReductionLeaf = {_deviceLeaf} (its plan {Plan}) but the device now has {now}; " +
                "set it back, or build the layer again.");
    }

    // In TP-invariant mode: y (m x n, output type) = sum (fp32, m x n contiguous, already reduced over the ranks) + bias,
    // rounded once to the output type — what the unsharded tree GEMM's final pass does (a k = 0 GEMM with beta 1 adds
    // the bias: C = 1·C + bias). The bias is the row after the sum's (it came with the sum from rank 0) when HasBias.
    private protected void FinishTreeSum<TOut>(MatrixView<float> sum, MatrixView<TOut> y) where TOut : unmanaged
    {
        long m = sum.Rows, n = sum.Cols;
        if (HasBias)
            Gemm.Multiply(Context.Stream, _scratch.Get<float>(SlotTreeEmpty, Context.Device, 1).AsMatrix(m, 0, 1),
                _scratch.Get<float>(SlotTreeEmpty, Context.Device, 1).AsMatrix(0, n, n), sum, beta: 1f, bias: sum.Buffer,
                biasOffset: sum.Offset + m * sum.Ld);
        StoreTreeSum(sum, y);
    }

    // dst (float, Half or BFloat16) = src (fp32): a copy, or the one rounding to a 16-bit type.
    private protected void StoreTreeSum<T>(MatrixView<float> src, MatrixView<T> dst) where T : unmanaged
    {
        long m = src.Rows, n = src.Cols;
        if (typeof(T) != typeof(float))
        {
            ElementwiseOps.Convert(Context.Stream, src, dst);
            return;
        }
        var d = (MatrixView<float>)(object)dst;
        if (ReferenceEquals(d.Buffer, src.Buffer) && d.Offset == src.Offset && d.Ld == src.Ld) return;
        if (d.Ld == n && src.Ld == n)
        {
            src.Buffer.CopyTo(d.Buffer, Context.Stream, src.Offset, d.Offset, m * n);
            return;
        }
        for (long i = 0; i < m; i++) src.Buffer.CopyTo(d.Buffer, Context.Stream, src.Offset + i * src.Ld, d.Offset + i * d.Ld, n);
    }

    // In TP-invariant mode: the bias row that travels with the partial sums (at `offset` of `buffer`, n elements): rank 0's
    // bias in fp32, zeros elsewhere (b + 0 + ... + 0 = b exactly; a zero partial never turns -0 into anything but +0, and
    // T + (+0) = T + (-0) for every T a tree sum gives).
    private protected void QueueBiasRow(DeviceBuffer<float> buffer, long offset)
    {
        long n = OutFeatures;
        var bias = GemmBias<float>();
        if (bias is not null) bias.CopyTo(buffer, Context.Stream, 0, offset, n);
        else buffer.Clear(Context.Stream, offset, n);
    }

    /// <summary>The precision policy: the element types of the weights, the GEMM inputs, the output and the gradients.</summary>
    public Precision Precision { get; }
    /// <summary>K: input features.</summary>
    public long InFeatures { get; }
    /// <summary>N: output features.</summary>
    public long OutFeatures { get; }
    /// <summary>The split over the ranks: of N (output features) for a column-parallel layer, of K (input features) for a
    /// row-parallel one.</summary>
    public ShardingPlan Plan { get; }

    /// <summary>This rank's shard of W, row-major: K × n_r (column-parallel) or k_r × N (row-parallel); null when the shard
    /// is empty. For a layer whose parameter type is not f32 use <see cref="WeightAs{T}"/>
    /// (<see cref="NotSupportedException"/> here).</summary>
    public DeviceBuffer<float>? Weight => WeightAs<float>();
    /// <summary>This rank's bias: its n_r elements (column-parallel), or the whole N on rank 0 only (row-parallel); null
    /// without bias, for an empty column shard, and on the other ranks of a row-parallel layer. f32 layers only (see
    /// <see cref="BiasAs{T}"/>).</summary>
    public DeviceBuffer<float>? Bias => BiasAs<float>();

    /// <summary>
    /// This rank's parameters for optimizers, clipping and checkpoints (fp32 layers): the weight (K × N; columns
    /// [off, off + n_r) column-parallel, rows [off, off + k_r) row-parallel) with <paramref name="dWeight"/>, and the bias
    /// (1 × N; its columns column-parallel; the whole of it on rank 0 alone row-parallel) with <paramref name="dBias"/>,
    /// named <paramref name="weightName"/> and <paramref name="biasName"/>. Nothing for an empty shard; a gradient
    /// missing for a held parameter is refused.
    /// </summary>
    public IReadOnlyList<ParameterShard> Parameters(DeviceBuffer<float>? dWeight, DeviceBuffer<float>? dBias, string weightName = "weight",
        string biasName = "bias")
    {
        long off = Plan.Offset(Context.Rank), size = Plan.Size(Context.Rank);
        var w = Weight; // throws NotSupportedException for a 16-bit parameter type
        var b = Bias;
        var list = new List<ParameterShard>();
        if (_splitRows)
        {
            list.AddRange(ParameterShard.Of(weightName, InFeatures, OutFeatures, off, size, 0, OutFeatures, false, w, dWeight));
            list.AddRange(ParameterShard.Of(biasName, 1, OutFeatures, 0, 1, 0, OutFeatures, false, b, dBias));
        }
        else
        {
            list.AddRange(ParameterShard.Of(weightName, InFeatures, OutFeatures, 0, InFeatures, off, size, false, w, dWeight));
            list.AddRange(ParameterShard.Of(biasName, 1, OutFeatures, 0, 1, off, size, false, b, dBias));
        }
        return list;
    }

    /// <summary>The weight shard as held, in the parameter type <typeparamref name="T"/> (the working copy a
    /// mixed-precision trainer refreshes).</summary>
    public DeviceBuffer<T>? WeightAs<T>() where T : unmanaged => Held<T>(_weight, "weight");
    /// <summary>The bias as held, in the parameter type <typeparamref name="T"/>.</summary>
    public DeviceBuffer<T>? BiasAs<T>() where T : unmanaged => Held<T>(_bias, "bias");

    private DeviceBuffer<T>? Held<T>(object? buffer, string what) where T : unmanaged
    {
        if (Precision.Of<T>() != Precision.Parameter)
            throw new NotSupportedException(
                $"this layer holds its {what} as {Gemm.DtypeName(Precision.Parameter)} ({Precision.TypeName(Precision.Parameter)}), not {typeof(T).Name}; " +
                $"use {(what == "weight" ? "WeightAs" : "BiasAs")}<{Precision.TypeName(Precision.Parameter)}>() (precision: {Precision}).");
        return (DeviceBuffer<T>?)buffer;
    }

    /// <summary>The weight shard as the GEMMs read it (<typeparamref name="TC"/> = the compute type): the held buffer, or a
    /// copy converted on the rank's stream (each call: the held weights may have been updated since).</summary>
    internal DeviceBuffer<TC>? ComputeWeight<TC>() where TC : unmanaged
    {
        if (_weight is null) return null;
        if (Precision.Of<TC>() == Precision.Parameter) return (DeviceBuffer<TC>)_weight;
        long count = ShardElements;
        var copy = _scratch.Get<TC>(SlotWeight, Context.Device, count);
        AnyBuffer.ConvertTo(Context.Stream, _weight, Precision.Parameter, copy, count);
        return copy;
    }

    /// <summary>The bias in a GEMM's output type <typeparamref name="TO"/> (bias has C's type): the held one, or a
    /// converted copy; null without bias on this rank.</summary>
    internal DeviceBuffer<TO>? GemmBias<TO>() where TO : unmanaged
    {
        if (_bias is null) return null;
        if (Precision.Of<TO>() == Precision.Parameter) return (DeviceBuffer<TO>)_bias;
        long count = BiasElements;
        var copy = _scratch.Get<TO>(SlotBias, Context.Device, count);
        AnyBuffer.ConvertTo(Context.Stream, _bias, Precision.Parameter, copy, count);
        return copy;
    }

    private long ShardElements => _weight switch
    {
        DeviceBuffer<float> f => f.Length,
        DeviceBuffer<Half> h => h.Length,
        DeviceBuffer<BFloat16> b => b.Length,
        _ => 0,
    };

    private long BiasElements => _bias switch
    {
        DeviceBuffer<float> f => f.Length,
        DeviceBuffer<Half> h => h.Length,
        DeviceBuffer<BFloat16> b => b.Length,
        _ => 0,
    };

    /// <summary>Checks the element types of a call against the policy: activations (x, dx) in the compute type, y / dy in
    /// the output type.</summary>
    private protected void RequireTypes<TIn, TOut>(string inName, string outName) where TIn : unmanaged where TOut : unmanaged
    {
        Precision.Require<TIn>(Precision.Compute, "compute", inName);
        Precision.Require<TOut>(Precision.Output, "output", outName);
    }

    /// <summary>Checks the gradient buffers' element type against the policy's gradient accumulation type.</summary>
    private protected void RequireGradientType<TGrad>(bool any) where TGrad : unmanaged
    {
        if (any) Precision.Require<TGrad>(Precision.GradientAccumulation, "gradient accumulation", "dWeight");
    }

    /// <summary>dy as a GEMM input (the compute type): dy itself, or a converted contiguous copy in a scratch slot.</summary>
    private protected MatrixView<TIn> AsCompute<TIn, TOut>(MatrixView<TOut> dy) where TIn : unmanaged where TOut : unmanaged
    {
        if (typeof(TIn) == typeof(TOut)) return (MatrixView<TIn>)(object)dy;
        var copy = _scratch.Get<TIn>(SlotGradient, Context.Device, dy.Rows * dy.Cols).AsMatrix(dy.Rows, dy.Cols, Math.Max(1, dy.Cols));
        if (dy.Rows * dy.Cols > 0) ElementwiseOps.Convert(Context.Stream, dy, copy);
        return copy;
    }

    /// <summary>Releases the shard, the bias and the scratch buffers.</summary>
    public void Dispose()
    {
        (_weight as IDisposable)?.Dispose();
        (_bias as IDisposable)?.Dispose();
        _scratch.Dispose();
        DisposeMore();
    }

    /// <summary>
    /// Overlap of the forward's collective with its GEMM (the async tensor-parallel decomposition): with
    /// <c>OverlapChunks = c</c> &gt; 1 the M rows are cut into c chunks; each chunk's GEMM is queued on the rank's stream
    /// and its collective — the row-parallel layer's all-reduce, the column-parallel layer's all-gather of a gathered
    /// output (a sharded output has no collective: unused there) — on the rank's communication stream as soon as those
    /// rows are done (an event between the streams), so chunk i's collective runs while chunk i + 1 multiplies; the
    /// rank's stream then waits for the last one. The same bits as c = 1 (checked by the tests). Costs c collectives
    /// instead of one, and each chunk's GEMM reads the weight shard again: worth it where one chunk's GEMM and collective
    /// take about as long and are long against a collective's fixed cost (measured on a 2-core CPU machine it never
    /// paid: docs/distributed.md). Every rank must use the same value. 1 (default): one GEMM, then one collective.
    /// <see cref="ParallelFeedForward.OverlapChunks"/> sets its down-projection's, whose chunks then run the
    /// up-projection too.
    /// </summary>
    public int OverlapChunks
    {
        get => _overlapChunks;
        set
        {
            if (value < 1 || value > 1024)
                throw new ArgumentOutOfRangeException(nameof(value), value, "OverlapChunks must be 1..1024 (1: no overlap).");
            _overlapChunks = value;
        }
    }
    private int _overlapChunks = 1;
    private ChunkOverlap? _overlap;

    // The events of an overlapped forward (made on first use).
    private protected ChunkOverlap Overlap => _overlap ??= new ChunkOverlap(Context);

    // What a derived layer holds besides the weights and scratch.
    private protected virtual void DisposeMore() => _overlap?.Dispose();
}
