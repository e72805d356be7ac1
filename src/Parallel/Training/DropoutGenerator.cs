namespace Shardwise.Parallel;

/// <summary>Where a dropout mask applies in a tensor-parallel model (Megatron's RNG tracker regions).</summary>
public enum DropoutRegion
{
    /// <summary>Activations every tensor-parallel rank holds alike (the residual stream, the layers' replicated outputs):
    /// every rank draws the same mask.</summary>
    Replicated,
    /// <summary>Activations split over the ranks (e.g. a rank's attention heads): every rank draws its own mask.</summary>
    Sharded,
}

/// <summary>
/// Rank-aware dropout masks from one seed, with no generator state on the device: element i of a draw is kept when a
/// 64-bit hash of (region seed, counter + i) clears the drop probability (<see cref="RowOps.Dropout"/>), so a mask is
/// fully described by its <see cref="DropoutMask"/> (seed, counter, count, p) and the backward regenerates it instead
/// of storing it. The replicated region's seed is the same on every tensor-parallel rank; the sharded region's seed mixes
/// in the tensor-parallel rank, so ranks draw different masks there. Each draw advances its region's counter by its
/// element count: ranks that make the same sequence of draws stay in step, and a run is reproducible from the seed.
/// Sequence-parallel layers draw from the replicated region with <see cref="DropoutMask.Rows"/> (the rank's rows of a
/// replicated matrix), which gives each element the mask it has without sequence parallelism.
/// </summary>
public sealed class DropoutGenerator
{
    private ulong _replicated, _sharded;

    /// <summary>A generator for tensor-parallel rank <paramref name="tensorRank"/>, from <paramref name="seed"/> (the same on
    /// every rank of the model).</summary>
    public DropoutGenerator(ulong seed, int tensorRank)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tensorRank);
        Seed = seed;
        TensorRank = tensorRank;
        ShardedSeed = Mix(seed ^ (0x5A17_D0C5_0000_0000UL + (ulong)tensorRank));
    }

    /// <summary>The seed of the replicated region.</summary>
    public ulong Seed { get; }
    /// <summary>This rank's seed of the sharded region.</summary>
    public ulong ShardedSeed { get; }
    /// <summary>The tensor-parallel rank.</summary>
    public int TensorRank { get; }
    /// <summary>Elements drawn so far in the replicated region.</summary>
    public ulong ReplicatedCounter => _replicated;
    /// <summary>Elements drawn so far in the sharded region.</summary>
    public ulong ShardedCounter => _sharded;

    /// <summary>Reserves the next <paramref name="count"/> elements of <paramref name="region"/> for a mask with drop
    /// probability <paramref name="p"/>.</summary>
    public DropoutMask Next(DropoutRegion region, long count, float p)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (!(p >= 0f && p < 1f)) throw new ArgumentOutOfRangeException(nameof(p), p, "expected a drop probability in [0, 1).");
        if (region == DropoutRegion.Replicated)
        {
            var m = new DropoutMask(Seed, _replicated, count, p);
            _replicated += (ulong)count;
            return m;
        }
        if (region != DropoutRegion.Sharded) throw new ArgumentOutOfRangeException(nameof(region), region, "expected Replicated or Sharded.");
        var s = new DropoutMask(ShardedSeed, _sharded, count, p);
        _sharded += (ulong)count;
        return s;
    }

    // splitmix64's finalizer: decorrelates the rank-mixed seeds.
    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>One dropout mask, regenerated on demand: element i (i &lt; <see cref="Count"/>) is kept by the generator at
/// (<see cref="Seed"/>, <see cref="Counter"/> + i).</summary>
public readonly record struct DropoutMask(ulong Seed, ulong Counter, long Count, float P)
{
    /// <summary>y = dropout(x) over the mask's first <paramref name="count"/> elements from element <paramref name="start"/>
    /// (default: all); the backward is the same call on the gradient. y may be x.</summary>
    public void Apply(DeviceStream stream, DeviceBuffer<float> x, DeviceBuffer<float> y, long start = 0, long count = -1, long xOffset = 0, long yOffset = 0)
    {
        if (count < 0) count = Count - start;
        if (start < 0 || count < 0 || start + count > Count)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"elements [{start}, {start + count}) are outside the mask's {Count}.");
        if (P == 0f || count == 0)
        {
            if (!ReferenceEquals(x, y) || xOffset != yOffset)
                x.CopyTo(y, stream, xOffset, yOffset, count);
            return;
        }
        RowOps.Dropout(stream, x, y, count, P, Seed, Counter + (ulong)start, xOffset, yOffset);
    }

    /// <summary>The part of a mask over a replicated rows × cols matrix that covers rows [row0, row0 + rows) (a
    /// sequence-parallel rank's rows): apply it to that rank's block.</summary>
    public DropoutMask Rows(long row0, long rows, long cols) => new(Seed, Counter + (ulong)(row0 * cols), rows * cols, P);
}
