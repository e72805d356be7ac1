namespace Shardwise.Parallel;

/// <summary>
/// What <see cref="ColumnParallelLinear"/> and <see cref="RowParallelLinear"/> share: a linear layer <c>Y = X·W + b</c>
/// with W K × N (in × out features) of which this rank holds one shard, cut by <see cref="Plan"/> (over N for a
/// column-parallel layer, over K for a row-parallel one; uneven and empty shards allowed). Construction checks the
/// arguments, checks that the rank's shard fits its device (<see cref="Device.MemoryLimitBytes"/>, ranks sharing a
/// device added up) before anything is loaded, then loads the rank's block of W and of b; <see cref="Dispose"/>
/// releases them and the layer's scratch buffers. Only Shardwise's layers derive from it.
/// </summary>
public abstract class ParallelLinear : IDisposable
{
    private DeviceBuffer<float>? _scratch;
    private protected DeviceBuffer<float>? _ones; // the ones vector of the bias gradient (GradientHelpers.ColumnSums)

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
    private protected ParallelLinear(RankContext context, WeightSource weight, WeightSource? bias, ShardingPlan? plan,
        bool splitRows, Func<ShardingPlan, LayerPlan> memoryPlan)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(weight);
        Context = context;
        InFeatures = weight.Rows;
        OutFeatures = weight.Cols;
        ThrowHelper.Positive(weight.Rows);
        ThrowHelper.Positive(weight.Cols);
        long split = splitRows ? InFeatures : OutFeatures;
        Plan = plan ?? ShardingPlan.Even(split, context.WorldSize);
        Plan.Require(split, context.WorldSize, nameof(plan));
        bias?.Require(1, OutFeatures, nameof(bias));
        memoryPlan(Plan).EnsureFitsOn(context);
        long off = Plan.Offset(context.Rank), size = Plan.Size(context.Rank);
        var stream = context.Stream;
        Weight = splitRows
            ? weight.LoadBlock(stream, off, 0, size, OutFeatures)
            : weight.LoadBlock(stream, 0, off, InFeatures, size);
        try
        {
            Bias = splitRows
                ? (context.Rank == 0 ? bias?.LoadBlock(stream, 0, 0, 1, OutFeatures) : null)
                : bias?.LoadBlock(stream, 0, off, 1, size);
        }
        catch
        {
            Weight?.Dispose();
            throw;
        }
    }

    /// <summary>The rank this layer belongs to (its device and stream; used by the tensor interop).</summary>
    internal RankContext Context { get; }

    /// <summary>K: input features.</summary>
    public long InFeatures { get; }
    /// <summary>N: output features.</summary>
    public long OutFeatures { get; }
    /// <summary>The split over the ranks: of N (output features) for a column-parallel layer, of K (input features) for a
    /// row-parallel one.</summary>
    public ShardingPlan Plan { get; }
    /// <summary>This rank's shard of W, row-major: K × n_r (column-parallel) or k_r × N (row-parallel); null when the shard
    /// is empty.</summary>
    public DeviceBuffer<float>? Weight { get; }
    /// <summary>This rank's bias: its n_r elements (column-parallel), or the whole N on rank 0 only (row-parallel); null
    /// without bias, for an empty column shard, and on the other ranks of a row-parallel layer.</summary>
    public DeviceBuffer<float>? Bias { get; }

    /// <summary>A scratch buffer of at least <paramref name="elements"/> floats on the rank's device, kept and grown by the layer.</summary>
    private protected DeviceBuffer<float> Scratch(long elements) => Parallel.Scratch.Ensure(ref _scratch, Context.Device, elements);

    /// <summary>Releases the shard, the bias and the scratch buffers.</summary>
    public void Dispose()
    {
        Weight?.Dispose();
        Bias?.Dispose();
        _scratch?.Dispose();
        _ones?.Dispose();
    }
}
