namespace Shardwise.Parallel;

/// <summary>
/// Column-parallel linear layer <c>Y = X·W + b</c> for one rank (construct one per rank, e.g. inside
/// <see cref="Spmd.Run"/>). W is K × N (in × out features); rank r holds only W[:, cols_r] (K × n_r) and b[cols_r],
/// with cols_r from the <see cref="ShardingPlan"/> (uneven allowed, empty shards allowed).
/// With <c>gatherOutput</c> the ranks' M × n_r results are all-gathered into Y[M, N] on every rank; without,
/// each rank keeps its M × n_r slice (the input of a row-parallel layer).
/// </summary>
public sealed class ColumnParallelLinear : IDisposable
{
    private readonly RankContext _ctx;
    private DeviceBuffer<float>? _scratch;

    /// <summary>Loads this rank's shard of <paramref name="weight"/> (K × N) and <paramref name="bias"/> (1 × N, optional).</summary>
    public ColumnParallelLinear(RankContext context, WeightSource weight, WeightSource? bias = null,
        bool gatherOutput = true, ShardingPlan? plan = null, Epilogue epilogue = Epilogue.None)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(weight);
        _ctx = context;
        InFeatures = weight.Rows;
        OutFeatures = weight.Cols;
        ThrowHelper.Positive(InFeatures, "weight.Rows");
        ThrowHelper.Positive(OutFeatures, "weight.Cols");
        Plan = plan ?? ShardingPlan.Even(OutFeatures, context.WorldSize);
        Plan.Require(OutFeatures, context.WorldSize, nameof(plan));
        bias?.Require(1, OutFeatures, nameof(bias));
        GatherOutput = gatherOutput;
        Epilogue = epilogue;
        long off = Plan.Offset(context.Rank), n = Plan.Size(context.Rank);
        Weight = weight.LoadBlock(context.Stream, 0, off, InFeatures, n);
        try { Bias = bias?.LoadBlock(context.Stream, 0, off, 1, n); }
        catch { Weight?.Dispose(); throw; }
    }

    /// <summary>K.</summary>
    public long InFeatures { get; }
    /// <summary>N.</summary>
    public long OutFeatures { get; }
    /// <summary>n_r: this rank's output columns.</summary>
    public long LocalOutFeatures => Plan.Size(_ctx.Rank);
    /// <summary>First output column of this rank.</summary>
    public long LocalOutOffset => Plan.Offset(_ctx.Rank);
    /// <summary>The split of N over the ranks.</summary>
    public ShardingPlan Plan { get; }
    /// <summary>Whether <see cref="Forward"/> all-gathers Y.</summary>
    public bool GatherOutput { get; }
    /// <summary>Fused epilogue (GeLU for the first layer of an FFN).</summary>
    public Epilogue Epilogue { get; }
    /// <summary>This rank's weight shard, K × n_r row-major (null when n_r = 0).</summary>
    public DeviceBuffer<float>? Weight { get; }
    /// <summary>This rank's bias shard, n_r (null without bias or when n_r = 0).</summary>
    public DeviceBuffer<float>? Bias { get; }

    /// <summary>
    /// Queues Y = X·W + b on the rank's stream. <paramref name="x"/> is M × K; <paramref name="y"/> is M × N with
    /// gathering, else M × n_r. Errors of queued work surface at the rank's <c>Synchronize</c>.
    /// </summary>
    public void Forward(MatrixView x, MatrixView y)
    {
        if (x.IsEmpty) throw new ArgumentException("x is an empty (default) view.", nameof(x));
        if (y.IsEmpty) throw new ArgumentException("y is an empty (default) view.", nameof(y));
        long m = x.Rows, n = LocalOutFeatures;
        ThrowHelper.Positive(m, "x.Rows");
        if (x.Cols != InFeatures)
            throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected {m} x {InFeatures} (M x in-features).", nameof(x));
        ThrowHelper.Shape(y, m, GatherOutput ? OutFeatures : n, nameof(y), GatherOutput ? "M x out-features, gathered" : "M x local out-features");
        if (!GatherOutput)
        {
            if (n > 0) Gemm.Multiply(_ctx.Stream, x, Weight!.AsMatrix(InFeatures, n), y, bias: Bias, epilogue: Epilogue);
            return;
        }
        if (n == 0)
        {
            _ctx.AllGatherColumns(default, y); // contributes nothing but joins the collective
            return;
        }
        var local = Scratch(m * n).AsMatrix(m, n);
        Gemm.Multiply(_ctx.Stream, x, Weight!.AsMatrix(InFeatures, n), local, bias: Bias, epilogue: Epilogue);
        _ctx.AllGatherColumns(local, y);
    }

    private DeviceBuffer<float> Scratch(long elements)
    {
        if (_scratch is null || _scratch.Length < elements)
        {
            // Work already queued may still use the old scratch: the native side keeps its memory alive.
            _scratch?.Dispose();
            _scratch = _ctx.Device.Allocate<float>(elements);
        }
        return _scratch;
    }

    /// <summary>Releases the shard and the scratch buffer.</summary>
    public void Dispose()
    {
        Weight?.Dispose();
        Bias?.Dispose();
        _scratch?.Dispose();
    }
}
