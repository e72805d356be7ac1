using System.Text;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Level 1 of the two-level tiling: how one dimension (N for column shards, K for row shards) of a weight
/// matrix is split over the ranks. Uneven splits are first-class: <see cref="Even"/> gives the first
/// <c>total % parts</c> ranks one extra element; <see cref="FromSizes"/> takes any sizes (zeros allowed).
/// </summary>
public sealed class ShardingPlan
{
    private readonly long[] _offsets;
    private readonly long[] _sizes;

    private ShardingPlan(long[] offsets, long[] sizes, long total)
    {
        _offsets = offsets;
        _sizes = sizes;
        Total = total;
    }

    /// <summary>The size of the split dimension.</summary>
    public long Total { get; }

    /// <summary>Number of shards (ranks).</summary>
    public int Parts => _sizes.Length;

    /// <summary>First index of shard <paramref name="rank"/>.</summary>
    public long Offset(int rank)
    {
        ThrowHelper.Rank(rank, Parts);
        return _offsets[rank];
    }

    /// <summary>Number of indices of shard <paramref name="rank"/> (may be 0).</summary>
    public long Size(int rank)
    {
        ThrowHelper.Rank(rank, Parts);
        return _sizes[rank];
    }

    /// <summary>The largest shard.</summary>
    public long MaxSize => _sizes.Max();

    /// <summary>True when every shard has the same size.</summary>
    public bool IsEven => _sizes.All(s => s == _sizes[0]);

    /// <summary>Splits <paramref name="total"/> as evenly as possible over <paramref name="parts"/> ranks
    /// (the index math lives once, in the native core: <c>sw_shard_range</c>).</summary>
    public static ShardingPlan Even(long total, int parts)
    {
        ThrowHelper.NonNegative(total);
        ThrowHelper.Positive(parts);
        var offsets = new long[parts];
        var sizes = new long[parts];
        for (int r = 0; r < parts; r++)
            ThrowHelper.Check(Native.sw_shard_range(total, parts, r, out offsets[r], out sizes[r]));
        return new ShardingPlan(offsets, sizes, total);
    }

    /// <summary>A plan with explicit shard sizes, in rank order.</summary>
    public static ShardingPlan FromSizes(params long[] sizes)
    {
        ArgumentNullException.ThrowIfNull(sizes);
        if (sizes.Length == 0) throw new ArgumentException("sizes is empty; expected one size per rank.", nameof(sizes));
        var offsets = new long[sizes.Length];
        long at = 0;
        for (int r = 0; r < sizes.Length; r++)
        {
            if (sizes[r] < 0) throw new ArgumentOutOfRangeException(nameof(sizes), sizes[r], $"sizes[{r}] = {sizes[r]}; expected >= 0.");
            offsets[r] = at;
            if (sizes[r] > long.MaxValue - at)
                throw new ArgumentOutOfRangeException(nameof(sizes), sizes[r],
                    $"sizes[{r}] = {sizes[r]} takes the total past long.MaxValue (the sizes before it add up to {at}); expected sizes whose sum is at most {long.MaxValue}.");
            at += sizes[r];
        }
        return new ShardingPlan(offsets, (long[])sizes.Clone(), at);
    }

    /// <summary>Throws unless the plan splits <paramref name="total"/> into <paramref name="parts"/> shards.</summary>
    public void Require(long total, int parts, string argument)
    {
        if (Total != total || Parts != parts)
            throw new ArgumentException($"{argument} splits {Total} over {Parts} ranks; expected {total} over {parts}.", argument);
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var sb = new StringBuilder($"{Total} over {Parts} ranks: ");
        for (int r = 0; r < Parts; r++)
            sb.Append(r == 0 ? "" : ", ").Append($"[{_offsets[r]}, {_offsets[r] + _sizes[r]})");
        return sb.ToString();
    }
}
