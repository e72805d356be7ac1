using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// TP-invariant numerics (docs/tp-invariance.md): the fixed binary reduction tree that makes a row-parallel result equal
/// the unsharded one bit for bit for every power-of-two tensor-parallel degree.
/// <para>With <see cref="Device.GemmReductionLeaf"/> = L &gt; 0 every GEMM on the device sums k in leaves of L elements
/// (the last one shorter when L does not divide k), each leaf from 0 in k order, and combines the N = ⌈k / L⌉ leaves by
/// a fixed tree: leaves [a, b) sum as sum[a, m) + sum[m, b) with m = a + ⌈(b − a) / 2⌉. The tree's top log2(p)
/// levels cut the leaves into p nodes; a layer whose rank r holds node r's k range (<see cref="Plan"/>) computes node
/// r's value, and an all-reduce or reduce-scatter with <see cref="SwReduceOp.SumTree"/> combines the p nodes with the
/// tree's top: the unsharded GEMM's sum, addition for addition.</para>
/// <para>Which p and k qualify: every p that is a power of two, for every k ≥ 0. The ranks' k ranges are the tree's:
/// equal when p divides N, otherwise differing by at most one leaf (and the last rank's may end in the short leaf);
/// when p &gt; N some ranks hold no k at all (their partial is zero, which adds exactly). Any other p (3, 5, 6, ...)
/// cannot follow a binary tree and is refused with an <see cref="ArgumentException"/> saying so.</para>
/// </summary>
public static class TreeReduction
{
    /// <summary>The leaf size the CPU backend runs fastest with: its AVX-512 kernel's k block (measured: 0.99× the default
    /// order's GEMM time at 2048³ and 512 × 4096 × 11008; 256: 0.93–0.95×).</summary>
    public const long DefaultLeaf = 512;

    /// <summary>True when <paramref name="ranks"/> is a power of two (1, 2, 4, 8, ...).</summary>
    public static bool Qualifies(int ranks) => ranks > 0 && (ranks & (ranks - 1)) == 0;

    /// <summary>The tree's k split for <paramref name="ranks"/> ranks: node r's leaves as a <see cref="ShardingPlan"/>
    /// over <paramref name="k"/> elements (in elements, the last leaf shorter). Throws for a rank count that is not a power
    /// of two, naming why.</summary>
    public static ShardingPlan Plan(long k, long leaf, int ranks, string argument = "ranks")
    {
        ThrowHelper.NonNegative(k);
        if (leaf <= 0 || leaf % 2 != 0)
            throw new ArgumentOutOfRangeException(nameof(leaf), leaf, "leaf must be a positive even number of k elements.");
        RequireRanks(ranks, leaf, argument);
        Native.EnsureCompatible();
        var sizes = new long[ranks];
        for (int r = 0; r < ranks; r++) // the native core's split (sw_tree_range): one definition of the tree
            ThrowHelper.Check(Native.sw_tree_range(k, leaf, ranks, r, out _, out sizes[r]));
        return ShardingPlan.FromSizes(sizes);
    }

    /// <summary>Throws the <see cref="ArgumentException"/> of a rank count the tree cannot serve.</summary>
    public static void RequireRanks(int ranks, long leaf, string argument = "ranks")
    {
        if (!Qualifies(ranks))
            throw new ArgumentException(
                $"TP-invariant mode (the device's GemmReductionLeaf = {leaf}) needs a power-of-two number of tensor-parallel ranks, " +
                $"got {ranks}: each rank's partial sum must be one node of the GEMM's binary reduction tree, and the collective " +
                "combines the ranks with the tree's top levels, which split the k leaves in halves, quarters, ... — " +
                $"{ranks} ranks cannot. Use 1, 2, 4 or 8 ranks, or turn the mode off (GemmReductionLeaf = 0).", argument);
    }

    // The layers' plan over their reduction dimension: the tree's in TP-invariant mode (a given plan must equal it),
    // else the given one or the even split.
    // `leaf` (0: the device's) is the layer's leaf where it differs (attention: one head group per leaf).
    internal static ShardingPlan PlanFor(RankContext context, long total, ShardingPlan? plan, string argument, long leaf = 0)
    {
        long deviceLeaf = context.Device.GemmReductionLeaf;
        if (deviceLeaf == 0) return plan ?? ShardingPlan.Even(total, context.WorldSize);
        if (leaf == 0) leaf = deviceLeaf;
        var tree = Plan(total, leaf, context.WorldSize, argument);
        if (plan is not null && !SameSplit(plan, tree))
            throw new ArgumentException(
                $"{argument} splits {plan}; TP-invariant mode (the device's GemmReductionLeaf = {deviceLeaf}) needs the reduction tree's split " +
                $"{tree} (TreeReduction.Plan({total}, {leaf}, {context.WorldSize})), or no plan.", argument);
        return tree;
    }

    // TP-invariant mode: the tree's split of whole items, one leaf each (the attention's key/value heads); a given plan
    // must equal it.
    internal static ShardingPlan ItemsPlanFor(RankContext context, long items, ShardingPlan? plan, string argument)
    {
        var twice = Plan(2 * items, 2, context.WorldSize, argument); // (a leaf is even: two elements per item)
        var tree = ShardingPlan.FromSizes(Enumerable.Range(0, context.WorldSize).Select(r => twice.Size(r) / 2).ToArray());
        if (plan is not null && !SameSplit(plan, tree))
            throw new ArgumentException(
                $"{argument} splits {plan}; TP-invariant mode (the device's GemmReductionLeaf = {context.Device.GemmReductionLeaf}) needs " +
                $"the reduction tree's split of the {items} heads, {tree}, or no plan.", argument);
        return tree;
    }

    internal static bool SameSplit(ShardingPlan a, ShardingPlan b)
    {
        if (a.Total != b.Total || a.Parts != b.Parts) return false;
        for (int r = 0; r < a.Parts; r++)
            if (a.Size(r) != b.Size(r)) return false;
        return true;
    }

    // The reduce op of a layer built with `leaf` (0: rank order).
    internal static SwReduceOp Op(long leaf) => leaf > 0 ? SwReduceOp.SumTree : SwReduceOp.Sum;
}
