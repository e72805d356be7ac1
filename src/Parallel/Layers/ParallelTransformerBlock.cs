using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>The FFN of a <see cref="ParallelTransformerBlock"/>.</summary>
public enum FeedForwardKind
{
    /// <summary>W1 → GeLU → W2 (<see cref="ParallelFeedForward"/>).</summary>
    Gelu,
    /// <summary>W1 → ReLU → W2 (<see cref="ParallelFeedForward"/>).</summary>
    Relu,
    /// <summary>(SiLU(X·Wg) ∘ X·Wu)·Wd (<see cref="ParallelGatedFeedForward"/>; W1 is Wg, W3 is Wu, W2 is Wd).</summary>
    SwiGlu,
}

/// <summary>The shape and options of a <see cref="ParallelTransformerBlock"/>.</summary>
/// <param name="Hidden">H: model width.</param>
/// <param name="Heads">Query heads (H must be a multiple; d = H / Heads).</param>
/// <param name="KvHeads">Key/value heads (Heads a multiple of it; fewer: grouped-query attention).</param>
/// <param name="FfnHidden">F: the FFN's hidden width.</param>
/// <param name="FeedForward">GeLU, ReLU or SwiGLU.</param>
/// <param name="Norm">LayerNorm or RMSNorm (pre-norm, before each sub-layer).</param>
/// <param name="Causal">Causal attention mask.</param>
/// <param name="Dropout">Drop probability of the two residual-branch dropouts (0: none).</param>
/// <param name="Eps">The norms' epsilon.</param>
public sealed record TransformerBlockOptions(long Hidden, int Heads, int KvHeads, long FfnHidden, FeedForwardKind FeedForward = FeedForwardKind.Gelu,
    SwNormKind Norm = SwNormKind.Layer, bool Causal = true, float Dropout = 0f, float Eps = 1e-5f);

/// <summary>The full weights of a <see cref="ParallelTransformerBlock"/> (each rank loads its shards). Row-major,
/// in × out: Wq H × Heads·d, Wk and Wv H × KvHeads·d, Wo Heads·d × H; W1 H × F, W2 F × H (and W3 H × F, the up
/// projection, for SwiGLU); the norms' gamma and beta 1 × H (null: 1 and 0; no beta for RMSNorm). Biases optional
/// (none for SwiGLU's W1 and W3).</summary>
public sealed record TransformerBlockWeights(WeightSource Wq, WeightSource Wk, WeightSource Wv, WeightSource Wo, WeightSource W1, WeightSource W2,
    WeightSource? W3 = null, WeightSource? Bq = null, WeightSource? Bk = null, WeightSource? Bv = null, WeightSource? Bo = null,
    WeightSource? B1 = null, WeightSource? B2 = null, WeightSource? Norm1Gamma = null, WeightSource? Norm1Beta = null,
    WeightSource? Norm2Gamma = null, WeightSource? Norm2Beta = null)
{
    /// <summary>The weights of a block saved with <see cref="Checkpoint.Save"/> from
    /// <see cref="ParallelTransformerBlock.Parameters"/> (names under <paramref name="prefix"/>), at any rank count: each
    /// source reads the blocks it is asked for from the saved shards (a SwiGLU FFN's fused gate/up weight is split back
    /// into W1 and W3).</summary>
    public static TransformerBlockWeights FromCheckpoint(CheckpointReader checkpoint, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var names = checkpoint.Names.ToHashSet();
        WeightSource? Opt(string n) => names.Contains(prefix + n) ? checkpoint.Source(prefix + n) : null;
        WeightSource Req(string n) => checkpoint.Source(prefix + n);
        if (names.Contains(prefix + "ffn.w_gate_up"))
        {
            var (gate, up) = checkpoint.GateUp(prefix + "ffn.w_gate_up");
            return new TransformerBlockWeights(Req("attn.wq"), Req("attn.wk"), Req("attn.wv"), Req("attn.wo"), gate, Req("ffn.w_down"), up,
                Opt("attn.bq"), Opt("attn.bk"), Opt("attn.bv"), Opt("attn.bo"), null, Opt("ffn.b_down"),
                Opt("norm1.gamma"), Opt("norm1.beta"), Opt("norm2.gamma"), Opt("norm2.beta"));
        }
        return new TransformerBlockWeights(Req("attn.wq"), Req("attn.wk"), Req("attn.wv"), Req("attn.wo"), Req("ffn.w1"), Req("ffn.w2"), null,
            Opt("attn.bq"), Opt("attn.bk"), Opt("attn.bv"), Opt("attn.bo"), Opt("ffn.b1"), Opt("ffn.b2"),
            Opt("norm1.gamma"), Opt("norm1.beta"), Opt("norm2.gamma"), Opt("norm2.beta"));
    }
}

/// <summary>
/// One pre-norm transformer block for one rank of a tensor-parallel group:
/// <c>h = x + Dropout(Attention(Norm1(x)))</c>, <c>y = h + Dropout(FFN(Norm2(h)))</c>. Attention splits its heads and the
/// FFN its hidden units over the ranks (<see cref="ParallelSelfAttention"/>, <see cref="ParallelFeedForward"/> or
/// <see cref="ParallelGatedFeedForward"/>); the norms, residuals and dropouts are replicated (the same mask on every
/// rank, from <see cref="DropoutGenerator"/>'s replicated region). Standard: x and y are all M × H rows on every rank,
/// two all-reduces per forward and two per backward. Sequence-parallel: each rank holds its block of token rows; every
/// sub-layer all-gathers its input rows and reduce-scatters its output (four collectives forward, and the norms'
/// parameter gradients are all-reduced in the backward). fp32.
/// </summary>
public sealed class ParallelTransformerBlock : IDisposable
{
    private readonly RankContext _ctx;
    private DeviceBuffer<float>? _inference; // the inference forward's rows (no allocation per call once warm)

    /// <summary>Loads this rank's shards. <paramref name="kvHeadPlan"/> splits the key/value heads and
    /// <paramref name="ffnPlan"/> the FFN's hidden units (defaults: even).</summary>
    public ParallelTransformerBlock(RankContext context, TransformerBlockOptions options, TransformerBlockWeights weights,
        ShardingPlan? kvHeadPlan = null, ShardingPlan? ffnPlan = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(weights);
        if (options.Heads < 1 || options.Hidden % options.Heads != 0)
            throw new ArgumentException($"Hidden = {options.Hidden} does not split into Heads = {options.Heads} heads of equal width.", nameof(options));
        if (!(options.Dropout >= 0f && options.Dropout < 1f))
            throw new ArgumentOutOfRangeException(nameof(options), options.Dropout, "Dropout must be a probability in [0, 1).");
        if (options.FeedForward == FeedForwardKind.SwiGlu && weights.W3 is null)
            throw new ArgumentException("SwiGLU needs W3 (the up projection, H x F) besides W1 (the gate) and W2 (the down projection).", nameof(weights));
        if (options.FeedForward != FeedForwardKind.SwiGlu && weights.W3 is not null)
            throw new ArgumentException($"W3 is only for SwiGLU; the {options.FeedForward} FFN has W1 and W2.", nameof(weights));
        weights.W1.Require(options.Hidden, options.FfnHidden, "weights.W1");
        if (options.Heads % Math.Max(1, options.KvHeads) != 0)
            throw new ArgumentException($"heads = {options.Heads} is not a multiple of kvHeads = {options.KvHeads}; grouped-query attention needs heads / kvHeads query heads per key/value head.", "heads");
        // The whole block's weights must fit each device (the planner names the fewest ranks that would do otherwise).
        LayerPlan.TransformerBlock(options, context.WorldSize, bias: weights.Bq is not null, kvHeadSplit: kvHeadPlan).EnsureFitsOn(context);
        _ctx = context;
        Options = options;
        var made = new List<IDisposable>();
        try
        {
            Norm1 = new ParallelNorm(context, options.Norm, options.Hidden, weights.Norm1Gamma, weights.Norm1Beta, options.Eps); made.Add(Norm1);
            Attention = new ParallelSelfAttention(context, options.Heads, options.KvHeads, weights.Wq, weights.Wk, weights.Wv, weights.Wo,
                weights.Bq, weights.Bk, weights.Bv, weights.Bo, options.Causal, kvHeadPlan);
            made.Add(Attention);
            Norm2 = new ParallelNorm(context, options.Norm, options.Hidden, weights.Norm2Gamma, weights.Norm2Beta, options.Eps); made.Add(Norm2);
            if (options.FeedForward == FeedForwardKind.SwiGlu)
                Gated = new ParallelGatedFeedForward(context, weights.W1, weights.W3!, weights.W2, weights.B2, ffnPlan);
            else
                Dense = new ParallelFeedForward(context, weights.W1, weights.B1, weights.W2, weights.B2, ffnPlan, null,
                    options.FeedForward == FeedForwardKind.Relu ? SwActivation.Relu : SwActivation.Gelu);
        }
        catch
        {
            foreach (var m in made) m.Dispose();
            throw;
        }
    }

    /// <summary>The block's shape and options.</summary>
    public TransformerBlockOptions Options { get; }
    /// <summary>The norm before attention.</summary>
    public ParallelNorm Norm1 { get; }
    /// <summary>The attention sub-layer.</summary>
    public ParallelSelfAttention Attention { get; }
    /// <summary>The norm before the FFN.</summary>
    public ParallelNorm Norm2 { get; }
    /// <summary>The GeLU / ReLU FFN (null for SwiGLU).</summary>
    public ParallelFeedForward? Dense { get; }
    /// <summary>The SwiGLU FFN (null otherwise).</summary>
    public ParallelGatedFeedForward? Gated { get; }
    private long H => Options.Hidden;

    /// <summary>Queues y = Block(x) without dropout (inference): x and y are M × H (contiguous) on every rank, M a multiple
    /// of <paramref name="sequenceLength"/>. Two all-reduces.</summary>
    public void Forward(MatrixView<float> x, MatrixView<float> y, long sequenceLength)
    {
        using var saved = Run(x, y, sequenceLength, null, null, training: false, keep: false);
    }

    /// <summary>Sequence-parallel inference forward: x and y are this rank's rows of <paramref name="tokens"/>.</summary>
    public void ForwardSequenceParallel(MatrixView<float> x, MatrixView<float> y, long sequenceLength, ShardingPlan tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        using var saved = Run(x, y, sequenceLength, tokens, null, training: false, keep: false);
    }

    /// <summary>Training forward: as <see cref="Forward"/>, with the residual dropouts drawn from
    /// <paramref name="dropout"/> (required when <see cref="TransformerBlockOptions.Dropout"/> &gt; 0), keeping what the
    /// backward needs. Without <paramref name="keepActivations"/> the sub-layers keep only their inputs and recompute
    /// their internals (attention probabilities, FFN hidden) in the backward.</summary>
    public TransformerBlockActivations ForwardTraining(MatrixView<float> x, MatrixView<float> y, long sequenceLength, DropoutGenerator? dropout = null,
        bool keepActivations = true) => Run(x, y, sequenceLength, null, dropout, training: true, keep: keepActivations);

    /// <summary>Sequence-parallel training forward (x, y: this rank's rows).</summary>
    public TransformerBlockActivations ForwardTrainingSequenceParallel(MatrixView<float> x, MatrixView<float> y, long sequenceLength, ShardingPlan tokens,
        DropoutGenerator? dropout = null, bool keepActivations = true)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        return Run(x, y, sequenceLength, tokens, dropout, training: true, keep: keepActivations);
    }

    private TransformerBlockActivations Run(MatrixView<float> x, MatrixView<float> y, long t, ShardingPlan? tokens, DropoutGenerator? dropout,
        bool training, bool keep)
    {
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(y);
        long rows = tokens?.Size(_ctx.Rank) ?? x.Rows;
        if (tokens is not null && tokens.Parts != _ctx.WorldSize)
            throw new ArgumentException($"tokens splits over {tokens.Parts} ranks; expected {_ctx.WorldSize}.", nameof(tokens));
        ThrowHelper.Shape(x, rows, H, tokens is null ? "M x hidden" : "this rank's token rows x hidden");
        ThrowHelper.Shape(y, rows, H, tokens is null ? "M x hidden" : "this rank's token rows x hidden");
        if (rows > 1 && (x.Ld != H || y.Ld != H)) throw new ArgumentException($"x and y need contiguous rows (ld = {H}).", x.Ld != H ? nameof(x) : nameof(y));
        long m = tokens?.Total ?? x.Rows;
        if (t < 1 || m % t != 0)
            throw new ArgumentException($"{m} token rows are not a whole number of sequences of sequenceLength = {t}.", "sequenceLength");
        float p = Options.Dropout;
        if (training && p > 0 && dropout is null)
            throw new ArgumentNullException(nameof(dropout), $"the block drops with p = {p}: pass the rank's DropoutGenerator.");
        var s = training
            ? new TransformerBlockActivations(_ctx.Device, rows, H, t, tokens)
            : new TransformerBlockActivations(Scratch.Ensure(ref _inference, _ctx.Device, Math.Max(1, 5 * rows * H)), rows, H, t, tokens);
        try
        {
            var stream = _ctx.Stream;
            // n1 = Norm1(x); a = Attention(n1) into h; dropout; h += x.
            s.Norm1 = training ? Norm1.ForwardTraining(x, s.N1) : null;
            if (!training) Norm1.Forward(x, s.N1);
            if (training)
                s.Attention = tokens is null ? Attention.ForwardTraining(s.N1, s.H1, t, keep) : Attention.ForwardTrainingSequenceParallel(s.N1, s.H1, t, tokens, keep);
            else if (tokens is null) Attention.Forward(s.N1, s.H1, t);
            else Attention.ForwardSequenceParallel(s.N1, s.H1, t, tokens);
            s.Mask1 = Mask(dropout, training, m, tokens);
            s.Mask1?.Apply(stream, s.H1.Buffer, s.H1.Buffer, 0, -1, s.H1.Offset, s.H1.Offset);
            ElementwiseOps.Axpy(stream, 1f, x.Buffer, s.H1.Buffer, rows * H, x.Offset, s.H1.Offset);
            // n2 = Norm2(h); f = FFN(n2) into y; dropout; y += h.
            s.Norm2 = training ? Norm2.ForwardTraining(s.H1, s.N2) : null;
            if (!training) Norm2.Forward(s.H1, s.N2);
            if (Gated is not null)
            {
                if (training)
                    s.Gated = tokens is null ? Gated.ForwardTraining(s.N2, y, keep) : Gated.ForwardTrainingSequenceParallel(s.N2, y, tokens, keep);
                else if (tokens is null) Gated.Forward(s.N2, y);
                else Gated.ForwardSequenceParallel(s.N2, y, tokens);
            }
            else
            {
                if (training)
                    s.Dense = tokens is null ? Dense!.ForwardTraining(s.N2, y, keep) : Dense!.ForwardTrainingSequenceParallel(s.N2, y, tokens, keep);
                else if (tokens is null) Dense!.Forward(s.N2, y);
                else Dense!.ForwardSequenceParallel(s.N2, y, tokens);
            }
            s.Mask2 = Mask(dropout, training, m, tokens);
            s.Mask2?.Apply(stream, y.Buffer, y.Buffer, 0, -1, y.Offset, y.Offset);
            ElementwiseOps.Axpy(stream, 1f, s.H1.Buffer, y.Buffer, rows * H, s.H1.Offset, y.Offset);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    // A replicated-region mask over the M × H residual branch (a sequence-parallel rank takes its rows of it), or null.
    private DropoutMask? Mask(DropoutGenerator? dropout, bool training, long m, ShardingPlan? tokens)
    {
        if (!training || Options.Dropout == 0f || dropout is null) return null;
        var full = dropout.Next(DropoutRegion.Replicated, m * H, Options.Dropout);
        return tokens is null ? full : full.Rows(tokens.Offset(_ctx.Rank), tokens.Size(_ctx.Rank), H);
    }

    /// <summary>
    /// Backward: dh = dy + Norm2ᵀ(FFNᵀ(Dropoutᵀ(dy))), dx = dh + Norm1ᵀ(Attentionᵀ(Dropoutᵀ(dh))), and every parameter
    /// gradient into <paramref name="gradients"/> (overwritten, or added to with <paramref name="accumulate"/>).
    /// <paramref name="x"/> is the forward input, <paramref name="dy"/> the output gradient (both as in the forward: all
    /// rows, or this rank's rows under sequence parallelism), <paramref name="dx"/> receives the input gradient.
    /// Two all-reduces (standard); under sequence parallelism three collectives per sub-layer and one per norm.
    /// </summary>
    public void Backward(MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx, TransformerBlockGradients gradients,
        TransformerBlockActivations saved, bool accumulate = false)
    {
        ArgumentNullException.ThrowIfNull(gradients);
        ArgumentNullException.ThrowIfNull(saved);
        ThrowHelper.NotEmpty(x);
        ThrowHelper.NotEmpty(dy);
        ThrowHelper.NotEmpty(dx);
        long rows = saved.Rows;
        ThrowHelper.Shape(x, rows, H, "the forward input");
        ThrowHelper.Shape(dy, rows, H, "shaped like the output");
        ThrowHelper.Shape(dx, rows, H, "shaped like the input");
        if (rows > 1 && (dy.Ld != H || dx.Ld != H || x.Ld != H))
            throw new ArgumentException($"x, dy and dx need contiguous rows (ld = {H}).", dx.Ld != H ? nameof(dx) : nameof(dy));
        if (saved.Norm1 is null || saved.Norm2 is null || (saved.Attention is null))
            throw new ArgumentException("saved comes from an inference forward; use ForwardTraining.", nameof(saved));
        var stream = _ctx.Stream;
        var tokens = saved.Tokens;
        bool sp = tokens is not null;
        // g = Dropoutᵀ(dy) (dy itself without dropout).
        var g = dy;
        if (saved.Mask2 is { } m2)
        {
            m2.Apply(stream, dy.Buffer, saved.Work.Buffer, 0, -1, dy.Offset, saved.Work.Offset);
            g = saved.Work;
        }
        // dn2 = FFNᵀ(g) into D (M × H, this rank's rows).
        var dn = saved.Grad;
        if (Gated is not null)
        {
            if (sp) Gated.BackwardSequenceParallel(saved.N2, g, dn, gradients.Gated!, saved.Gated!, tokens!, accumulate);
            else Gated.Backward(saved.N2, g, dn, gradients.Gated!, saved.Gated!, accumulate);
        }
        else
        {
            if (sp) Dense!.BackwardSequenceParallel(saved.N2, g, dn, gradients.Dense!, saved.Dense!, tokens!, accumulate);
            else Dense!.Backward(saved.N2, g, dn, gradients.Dense!, saved.Dense!, accumulate);
        }
        // dh = Norm2ᵀ(dn2) + dy, in place in D.
        Norm2.Backward(saved.H1, dn, dn, gradients.Norm2, saved.Norm2, sp, accumulate);
        ElementwiseOps.Axpy(stream, 1f, dy.Buffer, dn.Buffer, rows * H, dy.Offset, dn.Offset);
        // g = Dropoutᵀ(dh); dn1 = Attentionᵀ(g) into the work area; dx = Norm1ᵀ(dn1) + dh.
        var g1 = dn;
        if (saved.Mask1 is { } m1)
        {
            m1.Apply(stream, dn.Buffer, saved.Work.Buffer, 0, -1, dn.Offset, saved.Work.Offset);
            g1 = saved.Work;
        }
        var dn1 = saved.Grad2;
        if (sp) Attention.BackwardSequenceParallel(saved.N1, g1, dn1, gradients.Attention, saved.Attention, tokens!, accumulate);
        else Attention.Backward(saved.N1, g1, dn1, gradients.Attention, saved.Attention, accumulate);
        Norm1.Backward(x, dn1, dx, gradients.Norm1, saved.Norm1, sp, accumulate);
        ElementwiseOps.Axpy(stream, 1f, dn.Buffer, dx.Buffer, rows * H, dn.Offset, dx.Offset);
    }

    /// <summary>Every parameter this rank holds, with its gradient in <paramref name="gradients"/>: "norm1.gamma",
    /// "norm1.beta" (replicated), "attn.wq" ... "attn.bo", "norm2.*", and the FFN's ("ffn.w1", "ffn.b1", "ffn.w2",
    /// "ffn.b2"; SwiGLU: "ffn.w_gate_up", "ffn.w_down", "ffn.b_down"), each name prefixed by <paramref name="prefix"/>.</summary>
    public IReadOnlyList<ParameterShard> Parameters(TransformerBlockGradients gradients, string prefix = "")
    {
        ArgumentNullException.ThrowIfNull(gradients);
        var list = new List<ParameterShard>();
        list.AddRange(Norm1.Parameters(gradients.Norm1, prefix + "norm1."));
        list.AddRange(Attention.Parameters(gradients.Attention, prefix + "attn."));
        list.AddRange(Norm2.Parameters(gradients.Norm2, prefix + "norm2."));
        if (Gated is not null) list.AddRange(Gated.Parameters(gradients.Gated!, prefix + "ffn."));
        else list.AddRange(Dense!.Parameters(gradients.Dense!, prefix + "ffn."));
        return list;
    }

    /// <summary>Releases every sub-layer.</summary>
    public void Dispose()
    {
        Norm1.Dispose();
        Attention.Dispose();
        Norm2.Dispose();
        Dense?.Dispose();
        Gated?.Dispose();
        _inference?.Dispose();
    }
}

/// <summary>What a <see cref="ParallelTransformerBlock"/> forward keeps on one rank: the norms' outputs and statistics,
/// the residual stream after attention, the sub-layers' activations, the dropout masks (as generator positions), and the
/// backward's work areas.</summary>
public sealed class TransformerBlockActivations : IDisposable
{
    private readonly DeviceBuffer<float> _buffer;
    private readonly bool _owned;

    internal TransformerBlockActivations(Device device, long rows, long hidden, long sequenceLength, ShardingPlan? tokens)
        : this(device.Allocate<float>(Math.Max(1, 5 * rows * hidden)), rows, hidden, sequenceLength, tokens) => _owned = true;

    // Over a buffer of at least 5·rows·hidden floats that the caller owns (the block's inference scratch).
    internal TransformerBlockActivations(DeviceBuffer<float> buffer, long rows, long hidden, long sequenceLength, ShardingPlan? tokens)
    {
        Rows = rows;
        SequenceLength = sequenceLength;
        Tokens = tokens;
        _buffer = buffer;
        long n = rows * hidden;
        N1 = _buffer.AsMatrix(rows, hidden, hidden, 0);
        H1 = _buffer.AsMatrix(rows, hidden, hidden, n);
        N2 = _buffer.AsMatrix(rows, hidden, hidden, 2 * n);
        Grad = _buffer.AsMatrix(rows, hidden, hidden, 3 * n);
        Work = _buffer.AsMatrix(rows, hidden, hidden, 4 * n);
    }

    /// <summary>This rank's token rows.</summary>
    public long Rows { get; }
    /// <summary>T.</summary>
    public long SequenceLength { get; }
    /// <summary>The token split under sequence parallelism (null: standard).</summary>
    public ShardingPlan? Tokens { get; }
    internal MatrixView<float> N1 { get; }
    internal MatrixView<float> H1 { get; }
    internal MatrixView<float> N2 { get; }
    internal MatrixView<float> Grad { get; }
    internal MatrixView<float> Work { get; }
    internal MatrixView<float> Grad2 => N2; // n2 is no longer needed once the FFN's backward has run
    internal NormActivations? Norm1 { get; set; }
    internal NormActivations? Norm2 { get; set; }
    internal AttentionActivations? Attention { get; set; }
    internal FeedForwardActivations? Dense { get; set; }
    internal GatedFeedForwardActivations? Gated { get; set; }
    internal DropoutMask? Mask1 { get; set; }
    internal DropoutMask? Mask2 { get; set; }

    /// <summary>Frees everything held.</summary>
    public void Dispose()
    {
        if (_owned) _buffer.Dispose();
        Norm1?.Dispose();
        Norm2?.Dispose();
        Attention?.Dispose();
        Dense?.Dispose();
        Gated?.Dispose();
    }
}

/// <summary>The parameter gradients of one rank's <see cref="ParallelTransformerBlock"/>.</summary>
public sealed class TransformerBlockGradients : IDisposable
{
    /// <summary>Allocates the gradients of every sub-layer of <paramref name="block"/>.</summary>
    public TransformerBlockGradients(Device device, ParallelTransformerBlock block)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(block);
        Norm1 = new NormGradients(device, block.Norm1);
        Attention = new AttentionGradients(device, block.Attention);
        Norm2 = new NormGradients(device, block.Norm2);
        if (block.Gated is not null) Gated = new GatedFeedForwardGradients(device, block.Gated);
        else Dense = new FeedForwardGradients(device, block.Dense!);
    }

    /// <summary>dgamma, dbeta of the first norm.</summary>
    public NormGradients Norm1 { get; }
    /// <summary>The attention's gradients.</summary>
    public AttentionGradients Attention { get; }
    /// <summary>dgamma, dbeta of the second norm.</summary>
    public NormGradients Norm2 { get; }
    /// <summary>The GeLU / ReLU FFN's gradients (null for SwiGLU).</summary>
    public FeedForwardGradients? Dense { get; }
    /// <summary>The SwiGLU FFN's gradients (null otherwise).</summary>
    public GatedFeedForwardGradients? Gated { get; }

    /// <summary>Frees every buffer.</summary>
    public void Dispose()
    {
        Norm1.Dispose();
        Attention.Dispose();
        Norm2.Dispose();
        Dense?.Dispose();
        Gated?.Dispose();
    }
}
