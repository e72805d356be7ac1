using Shardwise.Bindings;
using System.Globalization;
using System.Text;

namespace Shardwise.Parallel;

/// <summary>The kind of tensor-parallel layer a <see cref="LayerPlan"/> describes.</summary>
public enum LayerKind
{
    /// <summary>W (K × N) split by columns; output all-gathered or kept sharded.</summary>
    ColumnParallel,
    /// <summary>W (K × N) split by rows; partial products all-reduced.</summary>
    RowParallel,
    /// <summary>FFN: W1 (H × F) by columns, GeLU, W2 (F × H) by rows, one all-reduce.</summary>
    FeedForward,
    /// <summary>A transformer block: attention with its key/value heads split (the level-1 split), the FFN's F split
    /// evenly, norms replicated.</summary>
    TransformerBlock,
}

/// <summary>One rank's memory in a <see cref="LayerPlan"/>, in bytes (float32 elements).</summary>
/// <param name="Rank">The rank.</param>
/// <param name="ShardWidth">The rank's share of the split dimension (N, K or F).</param>
/// <param name="WeightBytes">Its weight and bias shards.</param>
/// <param name="ActivationBytes">Inputs, outputs and hidden activations for <c>Tokens</c> rows (training: kept activations too).</param>
/// <param name="WorkspaceBytes">Scratch (gather/reduce staging) for <c>Tokens</c> rows.</param>
public sealed record RankMemory(int Rank, long ShardWidth, long WeightBytes, long ActivationBytes, long WorkspaceBytes)
{
    /// <summary>All of it.</summary>
    public long TotalBytes => WeightBytes + ActivationBytes + WorkspaceBytes;
}

/// <summary>
/// The two-level plan of one tensor-parallel layer. Level 1: how the weight is split over the ranks and what each
/// device holds (weights, activations, workspaces). Level 2: the tile shape the device's GEMM kernel uses inside each
/// shard. <see cref="FewestRanks"/> answers "on how few devices does this layer fit in this much memory each?", and
/// the layers call <see cref="EnsureFits"/> when they are built, so a shard that cannot fit fails up front with that
/// answer instead of running out of memory mid-run.
/// </summary>
public sealed class LayerPlan
{
    private const long F32 = sizeof(float);

    // The same factory with the same options, for another world size (WithRanks).
    private readonly Func<int, LayerPlan> _replan;

    // Every plan is made here: the argument checks, the split (even unless given) of the dimension splitDim, and the
    // memory of each rank from its share of that dimension.
    private LayerPlan(LayerKind kind, long inFeatures, long outFeatures, long hiddenFeatures, long splitDim, int worldSize,
        long tokens, bool training, ShardingPlan? split, Func<int, LayerPlan> replan, Func<int, long, RankMemory> rankMemory)
    {
        // The feed-forward and block plans report H as inFeatures and F as outFeatures in the argument checks.
        Check(inFeatures, kind is LayerKind.FeedForward or LayerKind.TransformerBlock ? hiddenFeatures : outFeatures, worldSize, tokens);
        split ??= ShardingPlan.Even(splitDim, worldSize);
        split.Require(splitDim, worldSize, nameof(split));
        var ranks = new RankMemory[worldSize];
        for (int r = 0; r < worldSize; r++) ranks[r] = rankMemory(r, split.Size(r));
        (Kind, InFeatures, OutFeatures, HiddenFeatures, Tokens, Training, Split, Ranks, _replan) =
            (kind, inFeatures, outFeatures, hiddenFeatures, tokens, training, split, ranks, replan);
    }

    /// <summary>The layer kind.</summary>
    public LayerKind Kind { get; }
    /// <summary>K (for the FFN: the model width H).</summary>
    public long InFeatures { get; }
    /// <summary>N (for the FFN: H).</summary>
    public long OutFeatures { get; }
    /// <summary>The FFN's hidden width F (0 for linear layers).</summary>
    public long HiddenFeatures { get; }
    /// <summary>Token rows M the activation and workspace figures are for.</summary>
    public long Tokens { get; }
    /// <summary>Whether the figures include what a training step keeps for the backward pass.</summary>
    public bool Training { get; }
    /// <summary>Level 1: the split of N (column), K (row) or F (FFN).</summary>
    public ShardingPlan Split { get; }
    /// <summary>Per-rank memory.</summary>
    public IReadOnlyList<RankMemory> Ranks { get; }
    /// <summary>The largest per-device total.</summary>
    public long MaxBytesPerDevice => Ranks.Max(r => r.TotalBytes);
    /// <summary>The largest per-device weight footprint (what must fit before any token is processed).</summary>
    public long MaxWeightBytesPerDevice => Ranks.Max(r => r.WeightBytes);
    /// <summary>The block's options (transformer-block plans only).</summary>
    public TransformerBlockOptions? Block { get; private init; }
    /// <summary>T: tokens per sequence (transformer-block plans only; the attention scores grow with T²).</summary>
    public long SequenceLength { get; private init; }
    /// <summary>Whether the block's tokens are split over the ranks (sequence parallelism).</summary>
    public bool SequenceParallel { get; private init; }

    /// <summary>
    /// Plans a <see cref="ParallelTransformerBlock"/>: level 1 splits the key/value heads (<paramref name="kvHeadSplit"/>,
    /// default even; each rank holds the query heads of its key/value heads) and the FFN's F evenly. Weights: the shards
    /// the block loads (attention with q/k/v/o biases when <paramref name="bias"/>, the FFN's, both norms); training
    /// doubles them (gradients). Activations for <paramref name="tokens"/> rows of sequences of
    /// <paramref name="sequenceLength"/> (0: one sequence of all the tokens): the block's residual and norm buffers, the
    /// attention's Q, K, V, O and its heads' T × T probabilities, the FFN's hidden activations, and in training the room the
    /// backward takes (the attention's and FFN's gradients of them); under sequence parallelism a rank's own rows plus
    /// the sub-layers' gathered inputs. The collectives' staging is not counted.
    /// </summary>
    public static LayerPlan TransformerBlock(TransformerBlockOptions options, int worldSize, long tokens = 0, long sequenceLength = 0,
        bool training = false, bool sequenceParallel = false, bool bias = true, ShardingPlan? kvHeadSplit = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ThrowHelper.Positive(options.Heads);
        ThrowHelper.Positive(options.KvHeads);
        if (options.Hidden % options.Heads != 0 || options.Heads % options.KvHeads != 0)
            throw new ArgumentException($"Hidden = {options.Hidden}, Heads = {options.Heads}, KvHeads = {options.KvHeads}: expected Hidden a multiple of Heads and Heads a multiple of KvHeads.", nameof(options));
        ThrowHelper.NonNegative(sequenceLength);
        long t = sequenceLength == 0 ? tokens : sequenceLength;
        if (tokens > 0 && tokens % t != 0)
            throw new ArgumentException($"tokens = {tokens} is not a whole number of sequences of {t}.", nameof(sequenceLength));
        long h = options.Hidden, f = options.FfnHidden, d = h / options.Heads, g = options.Heads / options.KvHeads;
        var ffnSplit = ShardingPlan.Even(f, worldSize);
        var tokenSplit = ShardingPlan.Even(Math.Max(tokens, 0), worldSize);
        bool gated = options.FeedForward == FeedForwardKind.SwiGlu;
        return new(LayerKind.TransformerBlock, h, h, f, options.KvHeads, worldSize, tokens, training, kvHeadSplit,
            p => TransformerBlock(options, p, tokens, sequenceLength, training, sequenceParallel, bias), (r, kh) =>
            {
                long qd = g * kh * d, kd = kh * d, fr = ffnSplit.Size(r), m = tokens, rows = sequenceParallel ? tokenSplit.Size(r) : m;
                long attnW = h * qd + 2 * h * kd + qd * h + (bias ? qd + 2 * kd + (r == 0 ? h : 0) : 0);
                long ffnW = gated ? 3 * h * fr + (bias && r == 0 ? h : 0) : 2 * h * fr + (bias ? fr + (r == 0 ? h : 0) : 0);
                long normW = (options.Norm == SwNormKind.Layer ? 2 : 1) * h * 2 * 2; // parameters and the partial-gradient room
                long weights = (attnW + ffnW) * (training ? 2 : 1) + normW;
                long seqs = t == 0 ? 0 : m / t;
                long scores = seqs * g * kh * t * t;
                long heads = m * (2 * qd + 2 * kd) + scores;                 // Q, K, V, O and P
                long act = 2 * rows * h + 5 * rows * h;                       // x, y; the block's residual, norm and work rows
                long sub = heads + (gated ? 3 * m * fr : m * fr);             // inference scratch
                long work = sequenceParallel ? 3 * m * h : 0;                 // gathered inputs (and, training, dY and dX)
                if (training)
                {
                    sub = 2 * heads + (gated ? 4 * m * fr : 3 * m * fr) + 4 * rows; // kept activations and their gradients; norm stats
                    act += 2 * rows * h;                                      // dY, dX
                }
                return new RankMemory(r, kh, weights * F32, (act + sub) * F32, work * F32);
            }) { Block = options, SequenceLength = t, SequenceParallel = sequenceParallel };
    }

    /// <summary>Plans a column-parallel layer: W is <paramref name="inFeatures"/> × <paramref name="outFeatures"/>.</summary>
    public static LayerPlan ColumnParallel(long inFeatures, long outFeatures, int worldSize, long tokens = 0, bool bias = true,
        bool gatherOutput = true, bool training = false, ShardingPlan? split = null)
        => new(LayerKind.ColumnParallel, inFeatures, outFeatures, 0, outFeatures, worldSize, tokens, training, split,
            p => ColumnParallel(inFeatures, outFeatures, p, tokens, bias, gatherOutput, training), (r, n) =>
            {
                long weights = (inFeatures * n + (bias ? n : 0)) * F32;
                long act = tokens * (inFeatures + (gatherOutput ? outFeatures : n)) * F32;
                long work = gatherOutput ? tokens * n * F32 : 0;
                if (training) { weights *= 2; act += tokens * inFeatures * F32; } // gradients; dX
                return new RankMemory(r, n, weights, act, work);
            });

    /// <summary>Plans a row-parallel layer: W is <paramref name="inFeatures"/> × <paramref name="outFeatures"/>, split by rows.</summary>
    public static LayerPlan RowParallel(long inFeatures, long outFeatures, int worldSize, long tokens = 0, bool bias = true,
        bool inputIsParallel = true, bool training = false, ShardingPlan? split = null)
        => new(LayerKind.RowParallel, inFeatures, outFeatures, 0, inFeatures, worldSize, tokens, training, split,
            p => RowParallel(inFeatures, outFeatures, p, tokens, bias, inputIsParallel, training), (r, k) =>
            {
                long weights = (k * outFeatures + (bias && r == 0 ? outFeatures : 0)) * F32;
                long act = tokens * ((inputIsParallel ? k : inFeatures) + outFeatures) * F32;
                if (training) { weights *= 2; act += tokens * (inputIsParallel ? k : inFeatures) * F32; }
                return new RankMemory(r, k, weights, act, 0);
            });

    /// <summary>Plans the FFN sub-layer: W1 is <paramref name="modelFeatures"/> × <paramref name="hiddenFeatures"/>, W2 its
    /// transpose shape, both with biases. Training adds the gradients and Z, H and dH (3·M·f_r) — the backward pass's
    /// peak, whether the activations were kept or are recomputed.</summary>
    public static LayerPlan FeedForward(long modelFeatures, long hiddenFeatures, int worldSize, long tokens = 0, bool training = false,
        ShardingPlan? split = null)
        => new(LayerKind.FeedForward, modelFeatures, modelFeatures, hiddenFeatures, hiddenFeatures, worldSize, tokens, training, split,
            p => FeedForward(modelFeatures, hiddenFeatures, p, tokens, training), (r, f) =>
            {
                long h = modelFeatures;
                long weights = (2 * h * f + f + (r == 0 ? h : 0)) * F32;
                long act = tokens * (2 * h) * F32;                               // X, Y
                long hidden = tokens * f * F32;
                if (training)
                {
                    weights *= 2;                                               // + gradients
                    act += tokens * h * F32 * 2;                                // dY, dX
                    hidden = 3 * tokens * f * F32;                              // Z, H, dH (recomputed or kept)
                }
                return new RankMemory(r, f, weights, act + hidden, 0);
            });

    /// <summary>
    /// The fewest ranks (1..<paramref name="maxRanks"/>, even splits) on which every device of the plan made by
    /// <paramref name="planFor"/> needs at most <paramref name="bytesPerDevice"/>; 0 when none does.
    /// </summary>
    public static int FewestRanks(Func<int, LayerPlan> planFor, long bytesPerDevice, int maxRanks = 4096)
    {
        ArgumentNullException.ThrowIfNull(planFor);
        ThrowHelper.Positive(bytesPerDevice);
        for (int p = 1; p <= maxRanks; p++)
            if (planFor(p).MaxBytesPerDevice <= bytesPerDevice) return p;
        return 0;
    }

    /// <summary>The same layer (same options) planned for another number of ranks, with an even split.</summary>
    public LayerPlan WithRanks(int worldSize) => _replan(worldSize);

    /// <summary>Throws <see cref="InsufficientDeviceMemoryException"/> (naming the fewest ranks that would do) when
    /// some device needs more than <paramref name="bytesPerDevice"/>. <paramref name="deviceOfRank"/> (optional) says
    /// which device each rank is on (as <see cref="ProcessGroup.DeviceOfRank"/>): virtual ranks sharing a device add up;
    /// a null entry is a device of its own (a rank of another process).</summary>
    public void EnsureFits(long bytesPerDevice, IReadOnlyList<Device?>? deviceOfRank = null)
    {
        if (deviceOfRank is not null && deviceOfRank.Count == Ranks.Count)
        {
            foreach (var group in Ranks.Where(r => deviceOfRank[r.Rank] is not null)
                         .GroupBy(r => deviceOfRank[r.Rank]!, ReferenceEqualityComparer.Instance))
            {
                var members = group.ToList();
                long sum = members.Sum(r => r.TotalBytes);
                if (members.Count > 1 && sum > bytesPerDevice)
                {
                    int fewestDevices = FewestRanks(WithRanks, bytesPerDevice, Math.Max(4096, Ranks.Count));
                    throw new InsufficientDeviceMemoryException(
                        $"{Describe()}: ranks {string.Join(", ", members.Select(r => r.Rank))} share one device and together need " +
                        $"{Bytes(sum)}, more than its {Bytes(bytesPerDevice)}; " +
                        (fewestDevices > 0 ? $"with one rank per device it fits on {fewestDevices} devices." : "it does not fit on any number of devices up to 4096."),
                        fewestDevices, sum, bytesPerDevice);
                }
            }
        }
        if (MaxBytesPerDevice <= bytesPerDevice) return;
        int fewest = FewestRanks(WithRanks, bytesPerDevice, Math.Max(4096, Ranks.Count));
        var worst = Ranks.MaxBy(r => r.TotalBytes)!;
        throw new InsufficientDeviceMemoryException(
            $"{Describe()} needs {Bytes(worst.TotalBytes)} on rank {worst.Rank} of {Ranks.Count} (weights {Bytes(worst.WeightBytes)}), " +
            $"more than the {Bytes(bytesPerDevice)} available per device; " +
            (fewest > 0 ? $"it fits on {fewest} ranks or more ({Bytes(WithRanks(fewest).MaxBytesPerDevice)} per device)."
                        : "it does not fit on any number of ranks up to 4096 (the activations alone are too large: use fewer tokens)."),
            fewest, worst.TotalBytes, bytesPerDevice);
    }

    /// <summary>The layers' check before they load anything: <see cref="EnsureFits"/> against the
    /// memory limit of <paramref name="context"/>'s device, with the devices of its group's ranks.</summary>
    internal void EnsureFitsOn(RankContext context) =>
        EnsureFits((long)Math.Min(context.Device.MemoryLimitBytes, long.MaxValue), context.Group.DeviceOfRank);

    /// <summary>Level 1 and level 2 in words and a table.</summary>
    public string Explain(Device? device = null)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"{Describe()} on {Ranks.Count} ranks{(Tokens > 0 ? $", {Tokens} tokens" : "")}{(Training ? ", training" : "")}");
        sb.AppendLine(Kind == LayerKind.TransformerBlock
            ? $"level 1: key/value heads {Split} (query heads x{Block!.Heads / Block.KvHeads}); FFN F {ShardingPlan.Even(HiddenFeatures, Ranks.Count)}"
            : $"level 1: {Split}");
        sb.AppendLine("  rank | shard | weights | activations | workspace | total");
        foreach (var r in Ranks)
            sb.AppendLine($"  {r.Rank,4} | {r.ShardWidth,5} | {Bytes(r.WeightBytes),7} | {Bytes(r.ActivationBytes),11} | {Bytes(r.WorkspaceBytes),9} | {Bytes(r.TotalBytes)}");
        if (device is null)
            sb.AppendLine("level 2: pass a device to show the GEMM tile shape its kernel uses");
        else
        {
            var t = device.TileShape;
            sb.AppendLine(t.Mr == 0
                ? $"level 2: {device.Name}: GEMM tiles chosen per shape by cuBLASLt's heuristic (kernel '{device.Kernel}')"
                : $"level 2: {device.Name}, kernel '{device.Kernel}': register tile {t.Mr} x {t.Nr}, cache blocks MC {t.Mc} x KC {t.Kc} x NC {t.Nc} " +
                  $"(each shard's GEMM runs as ceil(M/{t.Mc}) x ceil(n_r/{t.Nc}) blocks of {t.Mr} x {t.Nr} micro-tiles)");
        }
        return sb.ToString();
    }

    private string Describe() => Kind switch
    {
        LayerKind.ColumnParallel => $"column-parallel {InFeatures} x {OutFeatures}",
        LayerKind.RowParallel => $"row-parallel {InFeatures} x {OutFeatures}",
        LayerKind.TransformerBlock => $"transformer block H {InFeatures}, {Block!.Heads} heads / {Block.KvHeads} key-value heads of {InFeatures / Block.Heads}, " +
            $"{Block.FeedForward} FFN F {HiddenFeatures}, {Block.Norm}Norm{(SequenceParallel ? ", sequence-parallel" : "")}{(SequenceLength > 0 ? $", sequences of {SequenceLength}" : "")}",
        _ => $"feed-forward H {InFeatures}, F {HiddenFeatures}",
    };

    internal static string Bytes(long b) => b switch
    {
        >= 1L << 30 => (b / (double)(1L << 30)).ToString("0.##", CultureInfo.InvariantCulture) + " GiB",
        >= 1L << 20 => (b / (double)(1L << 20)).ToString("0.##", CultureInfo.InvariantCulture) + " MiB",
        >= 1L << 10 => (b / (double)(1L << 10)).ToString("0.##", CultureInfo.InvariantCulture) + " KiB",
        _ => b + " B",
    };

    // The feed-forward plan passes H and F here: they are reported as inFeatures and outFeatures too.
    private static void Check(long inFeatures, long outFeatures, int worldSize, long tokens)
    {
        ThrowHelper.Positive(inFeatures);
        ThrowHelper.Positive(outFeatures);
        ThrowHelper.Positive(worldSize);
        ThrowHelper.NonNegative(tokens);
    }
}

/// <summary>A layer's shard does not fit the device's memory limit; <see cref="FewestRanks"/> says how many ranks would do.</summary>
public sealed class InsufficientDeviceMemoryException : InvalidOperationException
{
    internal InsufficientDeviceMemoryException(string message, int fewestRanks, long requiredBytes, long availableBytes) : base(message)
    {
        FewestRanks = fewestRanks;
        RequiredBytes = requiredBytes;
        AvailableBytes = availableBytes;
    }

    /// <summary>The fewest ranks on which the layer fits (0: none up to 4096).</summary>
    public int FewestRanks { get; }
    /// <summary>What the largest rank needs.</summary>
    public long RequiredBytes { get; }
    /// <summary>What each device offers.</summary>
    public long AvailableBytes { get; }
}
