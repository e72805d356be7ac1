namespace Shardwise.Parallel;

/// <summary>The weights of one residual feed-forward block x + GeLU(x·W1 + b1)·W2 + b2 (W1: H × F, W2: F × H).</summary>
public sealed record FeedForwardBlockWeights(WeightSource W1, WeightSource? B1, WeightSource W2, WeightSource? B2);

/// <summary>
/// A pipeline stage holding blocks [<see cref="FirstLayer"/>, FirstLayer + <see cref="Layers"/>) of a stack of residual
/// feed-forward blocks, <c>x_{l+1} = x_l + FFN_l(x_l)</c> with FFN_l a tensor-parallel <see cref="ParallelFeedForward"/>
/// over the stage's tensor-parallel group (the <see cref="RankContext"/> given: one all-reduce in each block's forward
/// and one in its backward). fp32. Per micro-batch it keeps, until the backward, each block's input but the first (the
/// engine keeps that one) and each block's Z, H and room for dH (<see cref="FeedForwardActivations"/>: 3·rows·f_r floats).
/// </summary>
public sealed class FeedForwardStage : PipelineStage
{
    private readonly ParallelFeedForward[] _blocks;
    private readonly FeedForwardGradients[] _gradients;

    /// <summary>Loads this rank's shards of blocks [<paramref name="firstLayer"/>, firstLayer + <paramref name="layers"/>)
    /// of <paramref name="stack"/> (each over <paramref name="tensorParallel"/>'s group, F split by
    /// <paramref name="hiddenPlan"/> or evenly) and allocates their gradients.</summary>
    public FeedForwardStage(RankContext tensorParallel, IReadOnlyList<FeedForwardBlockWeights> stack, int firstLayer, int layers,
        ShardingPlan? hiddenPlan = null) : base(tensorParallel)
    {
        ArgumentNullException.ThrowIfNull(stack);
        if (stack.Count == 0) throw new ArgumentException("stack is empty; expected at least one block.", nameof(stack));
        if (firstLayer < 0 || firstLayer >= stack.Count)
            throw new ArgumentOutOfRangeException(nameof(firstLayer), firstLayer, $"firstLayer must be in [0, {stack.Count}) (the stack has {stack.Count} blocks).");
        if (layers < 1 || layers > stack.Count - firstLayer)
            throw new ArgumentOutOfRangeException(nameof(layers), layers, $"layers must be in [1, {stack.Count - firstLayer}] (blocks {firstLayer}.. of {stack.Count}).");
        long h = stack[firstLayer]?.W1.Rows ?? throw new ArgumentException($"stack[{firstLayer}] is null.", nameof(stack));
        for (int l = firstLayer; l < firstLayer + layers; l++)
        {
            var b = stack[l] ?? throw new ArgumentException($"stack[{l}] is null.", nameof(stack));
            if (b.W1.Rows != h || b.W2.Cols != h)
                throw new ArgumentException($"stack[{l}] maps {b.W1.Rows} to {b.W2.Cols} features; expected {h} to {h} (a residual block keeps the width).", nameof(stack));
        }
        FirstLayer = firstLayer;
        Layers = layers;
        Features = h;
        _blocks = new ParallelFeedForward[layers];
        _gradients = new FeedForwardGradients[layers];
        try
        {
            for (int l = 0; l < layers; l++)
            {
                var b = stack[firstLayer + l];
                _blocks[l] = new ParallelFeedForward(tensorParallel, b.W1, b.B1, b.W2, b.B2, hiddenPlan);
                _gradients[l] = new FeedForwardGradients(tensorParallel.Device, _blocks[l]);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The layers [first, first + count) that stage <paramref name="stage"/> of <paramref name="stages"/> holds
    /// when <paramref name="layers"/> blocks are split as evenly as possible, the first stages taking one more (5 on 2:
    /// 3 + 2).</summary>
    public static (int First, int Count) LayerRange(int layers, int stages, int stage)
    {
        ThrowHelper.Positive(layers);
        ThrowHelper.Positive(stages);
        ThrowHelper.Rank(stage, stages);
        if (layers < stages)
            throw new ArgumentOutOfRangeException(nameof(layers), layers, $"layers = {layers} cannot fill {stages} stages; expected at least one layer per stage.");
        var plan = ShardingPlan.Even(layers, stages);
        return ((int)plan.Offset(stage), (int)plan.Size(stage));
    }

    /// <summary>The stack's index of this stage's first block.</summary>
    public int FirstLayer { get; }
    /// <summary>The number of blocks this stage holds.</summary>
    public int Layers { get; }
    /// <summary>H: the width of every activation.</summary>
    public long Features { get; }
    /// <inheritdoc />
    public override long InputFeatures => Features;
    /// <inheritdoc />
    public override long OutputFeatures => Features;

    /// <summary>The stage's blocks (index 0 = stack block <see cref="FirstLayer"/>).</summary>
    public IReadOnlyList<ParallelFeedForward> Blocks => _blocks;
    /// <summary>Each block's gradients (final once the step's last backward has been queued).</summary>
    public IReadOnlyList<FeedForwardGradients> Gradients => _gradients;

    /// <summary>Called during the step's last backward, right after block <c>l</c> (index into <see cref="Blocks"/>) has
    /// queued its last gradient work: the blocks are reported last to first, the order backward finishes them (a
    /// data-parallel gradient reducer starts that block's bucket here).</summary>
    public Action<int>? GradientsReady { get; set; }

    /// <inheritdoc />
    public override StageActivations Forward(MatrixView<float> x, MatrixView<float> y)
    {
        long rows = CheckActivation(x), h = Features;
        CheckActivation(y, rows);
        var inputs = new DeviceBuffer<float>?[_blocks.Length];
        var saved = new FeedForwardActivations[_blocks.Length];
        var owned = new List<IDisposable>(2 * _blocks.Length);
        long bytes = 0;
        try
        {
            var xl = x;
            for (int l = 0; l < _blocks.Length; l++)
            {
                MatrixView<float> yl;
                if (l == _blocks.Length - 1) yl = y;
                else
                {
                    var next = Context.Device.Allocate<float>(rows * h);
                    owned.Add(next);
                    inputs[l + 1] = next;
                    bytes += rows * h * sizeof(float);
                    yl = next.AsMatrix(rows, h);
                }
                saved[l] = _blocks[l].ForwardTraining(xl, yl);
                owned.Add(saved[l]);
                bytes += (saved[l].Buffer?.Length ?? 0) * sizeof(float);
                ElementwiseOps.Axpy(Context.Stream, 1f, xl.Buffer, yl.Buffer, rows * h, xl.Offset, yl.Offset); // + x: the residual
                xl = yl;
            }
        }
        catch
        {
            foreach (var d in owned) d.Dispose();
            throw;
        }
        return new StageActivations(bytes, (inputs, saved), owned.ToArray());
    }

    /// <inheritdoc />
    public override void Backward(StageActivations saved, MatrixView<float> x, MatrixView<float> dy, MatrixView<float> dx,
        bool accumulate, bool lastOfStep)
    {
        ArgumentNullException.ThrowIfNull(saved);
        if (saved.State is not (DeviceBuffer<float>?[] inputs, FeedForwardActivations[] acts) || acts.Length != _blocks.Length)
            throw new ArgumentException("saved does not come from this stage's Forward.", nameof(saved));
        long rows = CheckActivation(x), h = Features;
        CheckActivation(dy, rows);
        CheckActivation(dx, rows);
        if (ReferenceEquals(dx.Buffer, dy.Buffer))
            throw new ArgumentException("dx shares its buffer with dy; expected separate buffers.", nameof(dx));
        // The gradients between blocks alternate between two temporaries; block 0 writes into dx.
        DeviceBuffer<float>? a = null, b = null;
        try
        {
            var dyl = dy;
            for (int l = _blocks.Length - 1; l >= 0; l--)
            {
                var xl = l == 0 ? x : inputs[l]!.AsMatrix(rows, h);
                MatrixView<float> dxl;
                if (l == 0) dxl = dx;
                else if (!ReferenceEquals(dyl.Buffer, a)) dxl = (a ??= Context.Device.Allocate<float>(rows * h)).AsMatrix(rows, h);
                else dxl = (b ??= Context.Device.Allocate<float>(rows * h)).AsMatrix(rows, h);
                _blocks[l].Backward(xl, dyl, dxl, _gradients[l], acts[l], accumulate);
                ElementwiseOps.Axpy(Context.Stream, 1f, dyl.Buffer, dxl.Buffer, rows * h, dyl.Offset, dxl.Offset); // + dy: the residual
                if (lastOfStep) GradientsReady?.Invoke(l);
                dyl = dxl;
            }
        }
        finally
        {
            a?.Dispose(); // their memory lives on until the queued work that uses it is done
            b?.Dispose();
        }
    }

    private long CheckActivation(MatrixView<float> m, long rows = -1, [System.Runtime.CompilerServices.CallerArgumentExpression(nameof(m))] string name = "")
    {
        ThrowHelper.NotEmpty(m, name);
        ThrowHelper.SameDevice(Context.Device, m, name);
        if (m.Cols != Features || (rows >= 0 && m.Rows != rows))
            throw new ArgumentException($"{name} is {m.Rows} x {m.Cols}; expected {(rows >= 0 ? rows.ToString() : "rows")} x {Features}.", name);
        if (m.Rows > 1 && m.Ld != m.Cols)
            throw new ArgumentException($"{name} has ld {m.Ld}; expected contiguous rows (ld = {m.Cols}).", name);
        return m.Rows;
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        foreach (var b in _blocks) b?.Dispose();
        foreach (var g in _gradients) g?.Dispose();
        base.Dispose();
    }
}
