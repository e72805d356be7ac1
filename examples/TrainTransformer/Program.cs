// A small language model trained end to end with tensor parallelism on virtual ranks of the CPU device:
// vocabulary-parallel embedding -> a transformer block (heads and FFN split) -> final LayerNorm -> vocabulary-parallel
// LM head -> vocabulary-parallel cross-entropy, AdamW with gradient clipping and a warm-up + cosine schedule.
// The data: sequences that follow x[t+1] = (5·x[t] + 3) mod V from a random start; the model learns to predict the next
// token. Phase 1 trains on 2 ranks and saves a checkpoint; phase 2 loads it on 3 ranks (the shards re-split) and goes on.
// The loss curve is printed and drawn to an SVG file (OxyPlot).
//
// Usage: TrainTransformer [steps per phase (default 60)] [loss.svg path]. Exit code 0 when the loss fell below half of
// its start and the evaluation loss is the same after reloading at another rank count; 1 otherwise; 2 on an error.
using System.Globalization;
using OxyPlot;
using OxyPlot.Axes;
using OxyPlot.Series;
using Shardwise.Parallel;

const int V = 24, H = 32, Heads = 4, F = 64, T = 16, Batch = 8;
const long M = (long)Batch * T;

try
{
    int steps = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 60;
    string svg = args.Length > 1 ? args[1] : Path.Combine(Path.GetTempPath(), "shardwise-train-loss.svg");
    string checkpoint = Path.Combine(Path.GetTempPath(), $"shardwise-train-ckpt-{Environment.ProcessId}");
    var options = new TransformerBlockOptions(H, Heads, Heads, F, FeedForwardKind.Gelu, Shardwise.Bindings.SwNormKind.Layer);
    using var device = Device.Cpu(2);
    Console.WriteLine($"TrainTransformer: V {V}, H {H}, {Heads} heads, FFN {F}, {Batch} sequences of {T} per step, {steps} steps per phase, {device.Name}");

    var rng = new Random(1234);
    float[] R(long n, float scale) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();
    // Initial weights (full tensors; each rank loads its shards).
    var init = new Model(
        WeightSource.FromArray(R(V * H, 0.5f), V, H),
        new TransformerBlockWeights(
            WeightSource.FromArray(R(H * H, 0.2f), H, H), WeightSource.FromArray(R(H * H, 0.2f), H, H), WeightSource.FromArray(R(H * H, 0.2f), H, H),
            WeightSource.FromArray(R(H * H, 0.2f), H, H), WeightSource.FromArray(R(H * F, 0.2f), H, F), WeightSource.FromArray(R(F * H, 0.2f), F, H),
            B1: WeightSource.FromArray(new float[F], 1, F), B2: WeightSource.FromArray(new float[H], 1, H)),
        null, null, WeightSource.FromArray(R(H * V, 0.2f), H, V));
    var evalBatch = Batch_(new Random(99));
    var losses = new List<(int Step, double Loss)>();

    // Phase 1: 2 ranks, then save.
    double evalBefore = Train(device, 2, init, steps, 0, losses, evalBatch, checkpoint);
    // Phase 2: the checkpoint on 3 ranks.
    var reader = Checkpoint.Open(checkpoint);
    var loaded = new Model(reader.Source("embed.table"), TransformerBlockWeights.FromCheckpoint(reader, "block."),
        reader.Source("final_norm.gamma"), reader.Source("final_norm.beta"), reader.Source("lm_head"));
    double evalAfterLoad = Evaluate(device, 3, loaded, evalBatch);
    Console.WriteLine($"evaluation loss: {evalBefore:0.000000} saved on 2 ranks, {evalAfterLoad:0.000000} loaded on 3 ranks");
    Train(device, 3, loaded, steps, steps, losses, evalBatch, null);
    Directory.Delete(checkpoint, true);

    Plot(losses, svg, steps);
    Console.WriteLine($"loss curve: {svg}");
    double first = losses.Take(5).Average(l => l.Loss), last = losses.TakeLast(5).Average(l => l.Loss);
    bool fell = last < first / 2;
    bool same = Math.Abs(evalAfterLoad - evalBefore) <= 1e-4 * (1 + evalBefore);
    Console.WriteLine($"loss: first steps {first:0.0000}, last steps {last:0.0000}: {(fell ? "fell below half" : "DID NOT fall below half")}; " +
                      $"reload at another rank count: {(same ? "same evaluation loss" : "DIFFERENT evaluation loss")}");
    return fell && same ? 0 : 1;
}
catch (Exception e)
{
    Console.Error.WriteLine($"TrainTransformer: {e}");
    return 2;
}

// Input ids (M) and next-token targets (M) of Batch sequences.
static (int[] Ids, int[] Targets) Batch_(Random rng)
{
    var ids = new int[M];
    var targets = new int[M];
    for (int b = 0; b < Batch; b++)
    {
        int x = rng.Next(V);
        for (int t = 0; t < T; t++)
        {
            int next = (5 * x + 3) % V;
            ids[b * T + t] = x;
            targets[b * T + t] = next;
            x = next;
        }
    }
    return (ids, targets);
}

// Trains `steps` steps on p ranks from `model`; appends (step, loss); saves to `save` when given; returns the
// evaluation loss of `evalBatch` after the last step.
static double Train(Device device, int p, Model model, int steps, int firstStep, List<(int, double)> losses, (int[], int[]) evalBatch, string? save)
{
    using var group = ProcessGroup.CreateLocal(device, p, TimeSpan.FromMinutes(2));
    double eval = 0;
    var data = new Random(7 + firstStep);
    var batches = Enumerable.Range(0, steps).Select(_ => Batch_(data)).ToArray();
    Spmd.Run(group, ctx =>
    {
        using var net = new Net(ctx, model);
        using var opt = new AdamWOptimizer(3e-3f, weightDecay: 0.01f);
        var parameters = net.Parameters();
        for (int s = 0; s < steps; s++)
        {
            int step = firstStep + s + 1;
            double loss = net.Step(batches[s], backward: true);
            GradientClipping.ClipByGlobalNorm(ctx, parameters, 1.0);
            opt.LearningRate = LearningRateSchedule.WarmupCosine(s + 1, 3e-3f, 10, steps, 3e-4f);
            opt.Step(ctx.Stream, parameters);
            if (ctx.Rank == 0)
            {
                lock (losses) losses.Add((step, loss));
                if (step % 10 == 0 || s == 0) Console.WriteLine($"  step {step,4} (p = {p}): loss {loss:0.0000}");
            }
        }
        double e = net.Step(evalBatch, backward: false);
        if (ctx.Rank == 0) eval = e;
        if (save is not null) Checkpoint.Save(save, ctx, parameters, new Dictionary<string, string> { ["step"] = $"{firstStep + steps}" });
    });
    return eval;
}

static double Evaluate(Device device, int p, Model model, (int[], int[]) batch)
{
    using var group = ProcessGroup.CreateLocal(device, p, TimeSpan.FromMinutes(2));
    double eval = 0;
    Spmd.Run(group, ctx =>
    {
        using var net = new Net(ctx, model);
        double e = net.Step(batch, backward: false);
        if (ctx.Rank == 0) eval = e;
    });
    return eval;
}

static void Plot(List<(int Step, double Loss)> losses, string path, int phase)
{
    var plot = new PlotModel { Title = "Shardwise: tensor-parallel training (2 ranks, then reloaded on 3)" };
    plot.Axes.Add(new LinearAxis { Position = AxisPosition.Bottom, Title = "step" });
    plot.Axes.Add(new LogarithmicAxis { Position = AxisPosition.Left, Title = "cross-entropy loss" });
    var a = new LineSeries { Title = "2 ranks" };
    var b = new LineSeries { Title = "3 ranks (from the checkpoint)" };
    foreach (var (step, loss) in losses) (step <= phase ? a : b).Points.Add(new DataPoint(step, loss));
    plot.Series.Add(a);
    plot.Series.Add(b);
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    using var stream = File.Create(path);
    new SvgExporter { Width = 720, Height = 420 }.Export(plot, stream);
}

// The full weights a rank loads its shards from (final norm: null = ones and zeros).
sealed record Model(WeightSource Embedding, TransformerBlockWeights Block, WeightSource? FinalGamma, WeightSource? FinalBeta, WeightSource Head);

// One rank's model with its gradients and work buffers.
sealed class Net : IDisposable
{
    private readonly RankContext _ctx;
    private readonly VocabParallelEmbedding _embed;
    private readonly ParallelTransformerBlock _block;
    private readonly ParallelNorm _norm;
    private readonly ColumnParallelLinear _head;
    private readonly VocabParallelCrossEntropy _ce;
    private readonly TransformerBlockGradients _blockGrads;
    private readonly NormGradients _normGrads;
    private readonly DeviceBuffer<float>? _dTable, _dHead;
    private readonly DeviceBuffer<float> _e, _h, _n, _de, _dh, _dn, _logits, _lse, _loss, _dloss;
    private const int Hd = 32;

    public Net(RankContext ctx, Model model)
    {
        _ctx = ctx;
        var options = new TransformerBlockOptions(Hd, 4, 4, 64, FeedForwardKind.Gelu, Shardwise.Bindings.SwNormKind.Layer);
        _embed = new VocabParallelEmbedding(ctx, model.Embedding);
        _block = new ParallelTransformerBlock(ctx, options, model.Block);
        _norm = new ParallelNorm(ctx, Shardwise.Bindings.SwNormKind.Layer, Hd, model.FinalGamma, model.FinalBeta);
        _head = new ColumnParallelLinear(ctx, model.Head, null, gatherOutput: false);
        _ce = new VocabParallelCrossEntropy(ctx, model.Head.Cols);
        _blockGrads = new TransformerBlockGradients(ctx.Device, _block);
        _normGrads = new NormGradients(ctx.Device, _norm);
        _dTable = _embed.LocalRows > 0 ? ctx.Device.Allocate<float>(_embed.LocalRows * Hd) : null;
        _dHead = _head.LocalOutFeatures > 0 ? ctx.Device.Allocate<float>(Hd * _head.LocalOutFeatures) : null;
        long m = 8 * 16;
        DeviceBuffer<float> A(long n) => ctx.Device.Allocate<float>(Math.Max(1, n));
        (_e, _h, _n, _de, _dh, _dn) = (A(m * Hd), A(m * Hd), A(m * Hd), A(m * Hd), A(m * Hd), A(m * Hd));
        (_logits, _lse, _loss, _dloss) = (A(m * _head.LocalOutFeatures), A(m), A(m), A(m));
        _dloss.Fill(1f / m, ctx.Stream); // the loss is the mean over the rows
    }

    public IReadOnlyList<ParameterShard> Parameters() =>
    [
        .. _embed.Parameters(_dTable, "embed.table"),
        .. _block.Parameters(_blockGrads, "block."),
        .. _norm.Parameters(_normGrads, "final_norm."),
        .. _head.Parameters(_dHead, null, "lm_head"),
    ];

    // Forward (and backward): returns the mean loss of the batch.
    public double Step((int[] Ids, int[] Targets) batch, bool backward)
    {
        long m = batch.Ids.Length, vr = _head.LocalOutFeatures;
        var ids = _embed.UploadIds(batch.Ids);
        _embed.Forward(ids, m, _e.AsMatrix(m, Hd));
        using var blockSaved = _block.ForwardTraining(_e.AsMatrix(m, Hd), _h.AsMatrix(m, Hd), 16);
        using var normSaved = _norm.ForwardTraining(_h.AsMatrix(m, Hd), _n.AsMatrix(m, Hd));
        var logits = _logits.AsMatrix(m, vr, Math.Max(1, vr));
        _head.Forward(_n.AsMatrix(m, Hd), logits);
        var targets = _ce.UploadTargets(batch.Targets);
        _ce.Forward(logits, targets, _lse, _loss);
        double loss = _loss.ToArray(_ctx.Stream).Take((int)m).Average();
        if (!backward) return loss;
        _ce.Backward(logits, targets, _lse, _dloss, logits); // dlogits in place
        _head.Backward(_n.AsMatrix(m, Hd), logits, _dn.AsMatrix(m, Hd), _dHead, null);
        _norm.Backward(_h.AsMatrix(m, Hd), _dn.AsMatrix(m, Hd), _dh.AsMatrix(m, Hd), _normGrads, normSaved);
        _block.Backward(_e.AsMatrix(m, Hd), _dh.AsMatrix(m, Hd), _de.AsMatrix(m, Hd), _blockGrads, blockSaved);
        _embed.Backward(ids, _de.AsMatrix(m, Hd), _dTable);
        return loss;
    }

    public void Dispose()
    {
        foreach (var d in new IDisposable?[] { _embed, _block, _norm, _head, _ce, _blockGrads, _normGrads, _dTable, _dHead, _e, _h, _n, _de, _dh, _dn,
                     _logits, _lse, _loss, _dloss })
            d?.Dispose();
    }
}
