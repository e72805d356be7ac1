using System.Globalization;

namespace Shardwise.Parallel;

/// <summary>
/// A model as the planner sees it: <see cref="Layers"/> transformer blocks (<see cref="ParallelTransformerBlock"/>:
/// attention with <see cref="Heads"/> query heads and <see cref="KvHeads"/> key/value heads, then the FFN of
/// <see cref="FfnHidden"/>), a vocabulary-parallel embedding and output head of <see cref="Vocab"/> rows, trained on
/// <see cref="GlobalBatch"/> sequences of <see cref="SequenceLength"/> tokens per step. With <see cref="Attention"/>
/// false and <see cref="Vocab"/> 0 it is the stack of residual feed-forward blocks of the hybrid-parallel example
/// (<see cref="FeedForwardStackTrainer"/>, mean-squared-error loss; one "sequence" is one row):
/// <see cref="FeedForwardStack"/>.
/// </summary>
public sealed record ModelSpec
{
    /// <summary>A name for tables.</summary>
    public string Name { get; init; } = "model";
    /// <summary>Blocks.</summary>
    public int Layers { get; init; }
    /// <summary>H, the model width.</summary>
    public long Hidden { get; init; }
    /// <summary>F, the FFN's hidden width.</summary>
    public long FfnHidden { get; init; }
    /// <summary>Query heads (0 without attention).</summary>
    public int Heads { get; init; }
    /// <summary>Key/value heads (grouped-query attention when fewer than <see cref="Heads"/>).</summary>
    public int KvHeads { get; init; }
    /// <summary>Vocabulary rows of the embedding and of the (untied) output head; 0: none.</summary>
    public long Vocab { get; init; }
    /// <summary>T, tokens per sequence.</summary>
    public long SequenceLength { get; init; } = 1;
    /// <summary>Sequences per step, all data-parallel replicas together.</summary>
    public long GlobalBatch { get; init; }
    /// <summary>The FFN's kind (SwiGLU has three matrices).</summary>
    public FeedForwardKind FeedForward { get; init; } = FeedForwardKind.Gelu;
    /// <summary>Whether the blocks have attention (false: the feed-forward stack).</summary>
    public bool Attention { get; init; } = true;
    /// <summary>Whether the linear layers have biases.</summary>
    public bool Bias { get; init; }

    /// <summary>Tokens per step.</summary>
    public long TokensPerStep => GlobalBatch * SequenceLength;

    /// <summary>Head dimension H / heads.</summary>
    public long HeadDim => Heads > 0 ? Hidden / Heads : 0;

    /// <summary>Parameters of one block (weights, biases, norms).</summary>
    public long ParametersPerLayer
    {
        get
        {
            long h = Hidden, f = FfnHidden, kv = KvHeads * HeadDim;
            long attn = Attention ? h * h + 2 * h * kv + h * h + (Bias ? h + 2 * kv + h : 0) + 4 * h : 0; // + two norms (γ, β)
            long ffn = FeedForward == FeedForwardKind.SwiGlu ? 3 * h * f + (Bias ? h : 0) : 2 * h * f + (Bias ? f + h : 0);
            return attn + ffn;
        }
    }

    /// <summary>All parameters: the blocks, the embedding and the output head.</summary>
    public long Parameters => Layers * ParametersPerLayer + 2 * Vocab * Hidden;

    /// <summary>Model flops of one step, forward and backward (6 per parameter per token for the matrices, plus the
    /// attention's scores and weighted sums: 12 · T · H per token and layer) — what MFU is measured against.</summary>
    public double FlopsPerStep
    {
        get
        {
            double tokens = TokensPerStep, h = Hidden, f = FfnHidden, kv = KvHeads * HeadDim;
            double matrices = Attention ? 2 * h * h + 2 * h * kv : 0;
            matrices += (FeedForward == FeedForwardKind.SwiGlu ? 3 : 2) * h * f;
            double perToken = 6 * (Layers * matrices + Vocab * h) + (Attention ? Layers * 12.0 * SequenceLength * h : 0);
            return perToken * tokens;
        }
    }

    /// <summary>A Llama-2-7B-shaped model: 32 blocks, H 4096, SwiGLU F 11008, 32 heads (multi-head), vocabulary 32000,
    /// sequences of 4096, 1024 sequences (4 M tokens) per step.</summary>
    public static ModelSpec Llama7B(long globalBatch = 1024, long sequenceLength = 4096) => new()
    {
        Name = "7B (Llama-2 shape)", Layers = 32, Hidden = 4096, FfnHidden = 11008, Heads = 32, KvHeads = 32, Vocab = 32000,
        SequenceLength = sequenceLength, GlobalBatch = globalBatch, FeedForward = FeedForwardKind.SwiGlu,
    };

    /// <summary>A Llama-2-70B-shaped model: 80 blocks, H 8192, SwiGLU F 28672, 64 query heads, 8 key/value heads,
    /// vocabulary 32000, sequences of 4096, 1024 sequences per step.</summary>
    public static ModelSpec Llama70B(long globalBatch = 1024, long sequenceLength = 4096) => new()
    {
        Name = "70B (Llama-2 shape)", Layers = 80, Hidden = 8192, FfnHidden = 28672, Heads = 64, KvHeads = 8, Vocab = 32000,
        SequenceLength = sequenceLength, GlobalBatch = globalBatch, FeedForward = FeedForwardKind.SwiGlu,
    };

    /// <summary>The hybrid-parallel example's model: <paramref name="layers"/> residual GeLU FFN blocks with biases, width
    /// <paramref name="hidden"/>, hidden <paramref name="ffnHidden"/>, <paramref name="rows"/> rows per step.</summary>
    public static ModelSpec FeedForwardStack(int layers, long hidden, long ffnHidden, long rows) => new()
    {
        Name = string.Create(CultureInfo.InvariantCulture, $"{layers} FFN blocks H {hidden} F {ffnHidden}"),
        Layers = layers, Hidden = hidden, FfnHidden = ffnHidden, SequenceLength = 1, GlobalBatch = rows, Attention = false, Bias = true,
    };

    /// <summary>What is wrong with this description, one line per problem naming the member (empty: usable).</summary>
    public IReadOnlyList<string> Problems()
    {
        var p = new List<string>();
        if (Layers < 1) p.Add($"Layers = {Layers}: expected at least 1 block.");
        if (Hidden < 1) p.Add($"Hidden = {Hidden}: expected a positive width.");
        if (FfnHidden < 1) p.Add($"FfnHidden = {FfnHidden}: expected a positive FFN width.");
        if (SequenceLength < 1) p.Add($"SequenceLength = {SequenceLength}: expected at least 1 token per sequence.");
        if (GlobalBatch < 1) p.Add($"GlobalBatch = {GlobalBatch}: expected at least 1 sequence per step.");
        if (Vocab < 0) p.Add($"Vocab = {Vocab}: expected 0 (no embedding) or a positive vocabulary.");
        if (!Enum.IsDefined(FeedForward)) p.Add($"FeedForward = {FeedForward}: expected Gelu, Relu or SwiGlu.");
        if (Attention)
        {
            if (Heads < 1 || KvHeads < 1) p.Add($"Heads = {Heads}, KvHeads = {KvHeads}: expected at least one of each with attention.");
            else
            {
                if (Hidden % Heads != 0) p.Add($"Hidden = {Hidden} is not a multiple of Heads = {Heads}: the heads must split the width evenly.");
                if (Heads % KvHeads != 0) p.Add($"Heads = {Heads} is not a multiple of KvHeads = {KvHeads}: each key/value head serves a whole group of query heads.");
            }
        }
        return p;
    }

    /// <summary>"7B (Llama-2 shape): 6.74 B parameters, 32 blocks, H 4096, …".</summary>
    public string Describe()
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new System.Text.StringBuilder();
        sb.Append(c, $"{Name}: {(Parameters >= 1e9 ? $"{Parameters / 1e9:0.##} B" : $"{Parameters / 1e6:0.##} M")} parameters, {Layers} blocks, H {Hidden}, F {FfnHidden} ({FeedForward})");
        if (Attention) sb.Append(c, $", {Heads} heads / {KvHeads} kv heads");
        else sb.Append(", no attention");
        if (Vocab > 0) sb.Append(c, $", vocabulary {Vocab}");
        sb.Append(c, $"; {GlobalBatch} sequences of {SequenceLength} tokens per step");
        return sb.ToString();
    }
}
