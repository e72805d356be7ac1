using System.Diagnostics;

namespace Shardwise.Parallel;

/// <summary>
/// One rank of a stack of residual feed-forward blocks (<see cref="FeedForwardStage"/>) trained with plain SGD in fp32 on
/// a pp × dp × tp mesh: the rank holds the layers of its pipeline stage (<c>pipeline.Rank</c> of
/// <c>pipeline.WorldSize</c>, <see cref="FeedForwardStage.LayerRange"/>), tensor-parallel over <c>tensorParallel</c>'s
/// group, and is one of <c>dataParallel.WorldSize</c> replicas, each taking its share of the batch. A
/// <see cref="Step"/> runs the pipeline schedule over the replica's rows (<see cref="PipelineEngine"/>), averages the
/// gradients over the replicas and updates the weights (<see cref="MasterWeights"/>, SGD). The three contexts are the
/// same parent rank in three sub-groups (e.g. a DeviceMesh's "pp", "dp" and "tp" groups of one rank): they share its
/// stream, so all of their work stays in one order.
/// </summary>
public sealed class FeedForwardStackTrainer : IDisposable
{
    private readonly RankContext _dp;
    private readonly RankContext _pp;
    private PipelineEngine _engine;
    private readonly MasterWeights _master;
    private readonly List<DeviceBuffer<float>> _gradients = new();

    /// <summary>Builds this rank's stage of <paramref name="stack"/> and its engine (<paramref name="options"/>; its
    /// <see cref="PipelineOptions.LossRows"/> is set by the trainer).</summary>
    public FeedForwardStackTrainer(RankContext pipeline, RankContext dataParallel, RankContext tensorParallel,
        IReadOnlyList<FeedForwardBlockWeights> stack, PipelineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        ArgumentNullException.ThrowIfNull(dataParallel);
        ArgumentNullException.ThrowIfNull(tensorParallel);
        ArgumentNullException.ThrowIfNull(stack);
        if (!ReferenceEquals(dataParallel.Stream, tensorParallel.Stream))
            throw new ArgumentException("dataParallel runs on another stream than tensorParallel; expected sub-group ranks of the same parent rank.", nameof(dataParallel));
        _dp = dataParallel;
        _pp = pipeline;
        var (first, count) = FeedForwardStage.LayerRange(stack.Count, pipeline.WorldSize, pipeline.Rank);
        Stage = new FeedForwardStage(tensorParallel, stack, first, count);
        try
        {
            _engine = new PipelineEngine(pipeline, Stage, options);
            _master = new MasterWeights(tensorParallel);
            for (int l = 0; l < Stage.Layers; l++)
            {
                _master.AddFeedForward(Stage.Blocks[l], Stage.Gradients[l]);
                var g = Stage.Gradients[l];
                foreach (var b in new[] { g.DW1, g.DB1, g.DW2 })
                    if (b is not null) _gradients.Add(b);
                if (tensorParallel.Rank == 0) _gradients.Add(g.DB2); // b2 lives on tp rank 0 only
            }
        }
        catch
        {
            Stage.Dispose();
            throw;
        }
    }

    /// <summary>This rank's stage (its blocks, their weights and gradients).</summary>
    public FeedForwardStage Stage { get; }

    /// <summary>The engine that runs the stage's schedule.</summary>
    public PipelineEngine Engine => _engine;

    /// <summary>Milliseconds the last <see cref="Step"/> spent waiting for the data-parallel gradient average (host time of
    /// the reduction, synchronized).</summary>
    public double DataParallelMs { get; private set; }

    /// <summary>
    /// One training step over this replica's <paramref name="rows"/> rows: the pipeline's forwards and backwards
    /// (<paramref name="input"/> read on the first stage, <paramref name="target"/> on the last), the gradients
    /// averaged over the data-parallel replicas, then w −= <paramref name="learningRate"/>·gradient. The loss is the mean
    /// squared error over the global batch (every replica the same number of rows).
    /// </summary>
    public PipelineStepReport Step(long rows, MatrixView<float> input, MatrixView<float> target, float learningRate)
    {
        // Each replica's gradient is that of Σ over its rows / (global rows · H): summed over the replicas it is the
        // global batch's mean.
        if (_engine.Options.LossRows != rows * _dp.WorldSize)
            _engine = new PipelineEngine(_pp, Stage, _engine.Options with { LossRows = rows * _dp.WorldSize });
        var report = _engine.Step(rows, input, target);
        var clock = Stopwatch.StartNew();
        if (_dp.WorldSize > 1)
            foreach (var g in _gradients) _dp.AllReduce(g);
        _dp.Synchronize();
        DataParallelMs = clock.Elapsed.TotalMilliseconds;
        _master.Step(learningRate);
        return report;
    }

    /// <summary>Frees the stage and the master weights.</summary>
    public void Dispose()
    {
        _master?.Dispose();
        Stage.Dispose();
    }
}
