using System.Diagnostics;

namespace Shardwise.Parallel;

/// <summary>
/// One rank of a stack of residual feed-forward blocks (<see cref="FeedForwardStage"/>) trained with plain SGD in fp32 on
/// a pp × dp × tp mesh: the rank holds the layers of its pipeline stage (<c>pipeline.Rank</c> of
/// <c>pipeline.WorldSize</c>, <see cref="FeedForwardStage.LayerRange"/>), tensor-parallel over <c>tensorParallel</c>'s
/// group, and is one of <c>dataParallel.WorldSize</c> replicas, each taking its share of the batch. A
/// <see cref="Step"/> runs the pipeline schedule over the replica's rows (<see cref="PipelineEngine"/>), averages the
/// gradients over the replicas with a <see cref="GradientReducer"/> (buckets of <c>bucketBytes</c>, each started as soon
/// as the step's last backward has produced its blocks' gradients — the last blocks first — so that the average overlaps
/// the rest of the backward) and updates the weights (<see cref="MasterWeights"/>, SGD). The three contexts are the
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
    private readonly List<int>[] _blockGradients; // the reducer's indices of each block's gradients
    private readonly GradientReducer _reducer;

    /// <summary>Builds this rank's stage of <paramref name="stack"/>, its engine (<paramref name="options"/>; its
    /// <see cref="PipelineOptions.LossRows"/> is set by the trainer) and the data-parallel reducer of its gradients
    /// (buckets of <paramref name="bucketBytes"/>; the same on every rank).</summary>
    public FeedForwardStackTrainer(RankContext pipeline, RankContext dataParallel, RankContext tensorParallel,
        IReadOnlyList<FeedForwardBlockWeights> stack, PipelineOptions? options = null, long bucketBytes = 25 << 20)
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
            _blockGradients = new List<int>[Stage.Layers];
            for (int l = 0; l < Stage.Layers; l++)
            {
                _master.AddFeedForward(Stage.Blocks[l], Stage.Gradients[l]);
                var g = Stage.Gradients[l];
                _blockGradients[l] = new List<int>();
                foreach (var b in new[] { g.DW1, g.DB1, g.DW2 })
                    if (b is not null) { _blockGradients[l].Add(_gradients.Count); _gradients.Add(b); }
                if (tensorParallel.Rank == 0) { _blockGradients[l].Add(_gradients.Count); _gradients.Add(g.DB2); } // b2: tp rank 0 only
            }
            // Buckets are cut from the end of the flat gradient: the last blocks' gradients, which the backward finishes
            // first, start their average while the earlier blocks are still computing theirs.
            _reducer = new GradientReducer(dataParallel, _gradients, bucketBytes);
            Stage.GradientsReady = l => { foreach (int i in _blockGradients[l]) _reducer.MarkReady(i); };
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

    /// <summary>Milliseconds the last <see cref="Step"/> waited, after its backward, for the data-parallel buckets still
    /// running (host time of <see cref="GradientReducer.Finish"/> and a synchronization of the stream).</summary>
    public double DataParallelMs { get; private set; }

    /// <summary>
    /// One training step over this replica's <paramref name="rows"/> rows: the pipeline's forwards and backwards
    /// (<paramref name="input"/> read on the first stage, <paramref name="target"/> on the last), the gradients
    /// averaged over the data-parallel replicas, then w −= <paramref name="learningRate"/>·gradient. The loss is the mean
    /// squared error over the replica's rows; with every replica the same number of rows, the average over the replicas
    /// is the global batch's loss, and the averaged gradients are its gradients.
    /// </summary>
    public PipelineStepReport Step(long rows, MatrixView<float> input, MatrixView<float> target, float learningRate)
    {
        // Each replica's loss is its rows' mean; the reducer averages the replicas' gradients: the global batch's mean.
        if (_engine.Options.LossRows != rows)
            _engine = new PipelineEngine(_pp, Stage, _engine.Options with { LossRows = rows });
        var report = _engine.Step(rows, input, target); // marks each block's gradients ready during the last backward
        var clock = Stopwatch.StartNew();
        _reducer.Finish(); // the stream waits for the buckets still running
        _dp.Synchronize();
        DataParallelMs = clock.Elapsed.TotalMilliseconds;
        _master.Step(learningRate);
        return report;
    }

    /// <summary>Frees the stage and the master weights.</summary>
    public void Dispose()
    {
        _reducer?.Dispose();
        _master?.Dispose();
        Stage.Dispose();
    }
}
