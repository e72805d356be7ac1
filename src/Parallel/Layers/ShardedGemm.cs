using System.Buffers;

namespace Shardwise.Parallel;

/// <summary>
/// The sharded GEMM primitive, driven from one host thread: W (K × N) is split by columns over the ranks of a
/// single-device group (virtual ranks, one stream each); every rank multiplies X by its shard concurrently and
/// writes straight into its column block of Y (ldc = N), so the concatenation costs nothing. The ranks' GEMMs are
/// submitted as one group (<see cref="Gemm.MultiplyGrouped{TIn, TOut}"/>), so X is packed once for every shard. Y equals
/// the unsharded GEMM of the same kernel bit for bit. Steady-state calls allocate no managed memory.
/// For ranks on different devices use <see cref="ColumnParallelLinear"/> per rank (it all-gathers).
/// </summary>
public sealed class ShardedGemm : IDisposable
{
    private readonly ProcessGroup _group;
    private readonly DeviceBuffer<float>?[] _shards;

    /// <summary>Loads shard r of <paramref name="weight"/> (K × N) onto rank r, shard by shard.</summary>
    public ShardedGemm(ProcessGroup group, WeightSource weight, ShardingPlan? plan = null)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(weight);
        if (!group.IsSingleDevice)
            throw new NotSupportedException("ShardedGemm drives virtual ranks of one device; for ranks on several devices use ColumnParallelLinear on each rank (Spmd.Run).");
        _group = group;
        K = weight.Rows;
        N = weight.Cols;
        ThrowHelper.Positive(weight.Rows);
        ThrowHelper.Positive(weight.Cols);
        if (group.IsMultiProcess)
            throw new NotSupportedException(
                $"ShardedGemm drives every rank of an in-process group, but this {group.Backend} group runs one rank per process; " +
                "use ColumnParallelLinear on group.Local in each process instead.");
        Plan = plan ?? ShardingPlan.Even(N, group.WorldSize);
        Plan.Require(N, group.WorldSize, nameof(plan));
        // Every shard lives on the one device: they must fit together.
        LayerPlan.ColumnParallel(K, N, group.WorldSize, bias: false, gatherOutput: false, split: Plan).EnsureFitsOn(group[0]);
        _shards = new DeviceBuffer<float>?[group.WorldSize];
        try
        {
            for (int r = 0; r < group.WorldSize; r++)
                _shards[r] = weight.LoadBlock(group[r].Stream, 0, Plan.Offset(r), K, Plan.Size(r));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The group whose ranks run the shards (used by the tensor interop).</summary>
    internal ProcessGroup Group => _group;

    /// <summary>Inner dimension.</summary>
    public long K { get; }
    /// <summary>Output columns.</summary>
    public long N { get; }
    /// <summary>The column split.</summary>
    public ShardingPlan Plan { get; }
    /// <summary>Rank r's shard (K × n_r), or null if empty.</summary>
    public DeviceBuffer<float>? Shard(int rank)
    {
        ThrowHelper.Rank(rank, _shards.Length);
        return _shards[rank];
    }

    /// <summary>Y = X · W (+ bias) on every rank in parallel, then waits for all ranks. X is M × K, Y is M × N,
    /// bias (optional) holds N elements; all on the group's device.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public void Forward(MatrixView<float> x, MatrixView<float> y, DeviceBuffer<float>? bias = null, Epilogue epilogue = Epilogue.None)
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        if (x.Cols != K) throw new ArgumentException($"x is {x.Rows} x {x.Cols}; expected M x {K}.", nameof(x));
        ThrowHelper.Shape(y, x.Rows, N, "M x N");
        if (bias is not null && bias.Length < N)
            throw new ArgumentException($"bias has {bias.Length} elements; expected {N}.", nameof(bias));
        // One grouped call for every rank (Gemm.MultiplyGrouped): member r on rank r's stream writes its column block
        // of Y, and the CPU backend packs X once for all of them. The member array is pooled: no allocation per call.
        var ranks = _group.Ranks;
        var members = ArrayPool<GemmGroupMember<float, float>>.Shared.Rent(ranks.Count);
        int count = 0;
        try
        {
            for (int r = 0; r < ranks.Count; r++)
            {
                long n = Plan.Size(r);
                if (n == 0) continue;
                long off = Plan.Offset(r);
                members[count++] = new GemmGroupMember<float, float>(ranks[r].Stream, x, _shards[r]!.AsMatrix(K, n),
                    y.Columns(off, n), bias: bias, biasOffset: off, epilogue: epilogue);
            }
            Gemm.MultiplyGrouped<float, float>(members.AsSpan(0, count));
        }
        finally
        {
            members.AsSpan(0, count).Clear(); // the pool holds no buffers or streams
            ArrayPool<GemmGroupMember<float, float>>.Shared.Return(members);
        }
        _group.Synchronize();
    }

    /// <summary>Releases the shards.</summary>
    public void Dispose()
    {
        foreach (var s in _shards) s?.Dispose();
    }
}
