using System.Globalization;
using System.Text;

namespace Shardwise.Parallel;

/// <summary>What the planner searches (every list: the values tried).</summary>
public sealed record PlanOptions
{
    /// <summary>Precisions (default bf16 mixed precision).</summary>
    public IReadOnlyList<TrainingPrecision> Precisions { get; init; } = [TrainingPrecision.Bf16];
    /// <summary>Pipeline schedules (GPipe takes 1F1B's time with more memory; listed for completeness).</summary>
    public IReadOnlyList<PipelineSchedule> Schedules { get; init; } = [PipelineSchedule.OneForwardOneBackward];
    /// <summary>Sequence parallelism off / on (only with attention models and tp &gt; 1).</summary>
    public IReadOnlyList<bool> SequenceParallel { get; init; } = [false, true];
    /// <summary>Recomputation levels.</summary>
    public IReadOnlyList<Recompute> Recompute { get; init; } = [Parallel.Recompute.None, Parallel.Recompute.Selective, Parallel.Recompute.Full];
    /// <summary>Overlap of communication off / on.</summary>
    public IReadOnlyList<bool> Overlap { get; init; } = [false, true];
    /// <summary>Micro-batch sizes in sequences (null: powers of two from 1 up to <see cref="MaxMicroBatchSize"/>).</summary>
    public IReadOnlyList<long>? MicroBatchSizes { get; init; }
    /// <summary>The largest micro-batch size tried when <see cref="MicroBatchSizes"/> is null.</summary>
    public long MaxMicroBatchSize { get; init; } = 16;
    /// <summary>The optimizer whose state counts.</summary>
    public OptimizerKind Optimizer { get; init; } = OptimizerKind.AdamW;
    /// <summary>Devices to use (null: all of the cluster's).</summary>
    public int? Devices { get; init; }
    /// <summary>The fraction of a device's memory a plan may fill (the rest: the runtime, fragmentation, NCCL).</summary>
    public double UsableMemoryFraction { get; init; } = 0.9;
    /// <summary>Only these tensor-parallel sizes (null: every divisor of the device count that the heads allow).</summary>
    public IReadOnlyList<int>? TensorParallelSizes { get; init; }
    /// <summary>Only these pipeline sizes (null: every divisor up to the layer count).</summary>
    public IReadOnlyList<int>? PipelineSizes { get; init; }
}

/// <summary>
/// The planner: for a <see cref="ModelSpec"/> on a <see cref="ClusterSpec"/> it enumerates the meshes (tp × pp × dp,
/// micro-batch size, schedule, sequence parallelism, recomputation, precision, overlap), rejects those that do not fit
/// memory or break a divisibility rule (saying which), predicts the step time of the others and ranks them
/// (<see cref="Plan"/>); <see cref="Evaluate"/> predicts one given mesh. The model (docs/planner.md):
/// <list type="bullet">
/// <item>memory per device: the stage's parameters (blocks, embedding on the first stage, output head on the last) as
/// held, fp32 gradients, fp32 master weights, the optimizer's moments, the stash of the micro-batches in flight (GPipe:
/// m; 1F1B: min(m, pp − s)), the stage-boundary buffers and the backward's transient buffers;</item>
/// <item>compute: every GEMM of the forward, backward and recomputation at the measured GEMM curve
/// (<see cref="ClusterSpec.Gemm"/>) or the roofline max(flops / (peak · efficiency), bytes / bandwidth), element-wise
/// work at the memory bandwidth, a fixed latency per operation;</item>
/// <item>communication: α-β per collective on the link its group crosses (inside a node or between nodes; measured fits
/// when the cluster has them, else ring formulas), the tensor-parallel collectives partly hidden behind the GEMMs they are
/// chunked with when overlap is on;</item>
/// <item>the step: Σ_s τ_s + (m − 1) · max τ_s over the stages' per-micro-batch times τ_s (fill and drain: the bubble),
/// the data-parallel average (hidden behind the last backward when overlap is on) and the optimizer step; on devices
/// sharing one pool of cores the step is at least the node's summed work.</item>
/// </list>
/// </summary>
public static class Planner
{
    /// <summary>
    /// Plans <paramref name="model"/> on <paramref name="cluster"/>. Invalid descriptions (a cluster with zero devices, a
    /// negative width, heads that do not divide the width) throw an <see cref="ArgumentException"/> listing every
    /// problem; a model that fits nowhere gives a report with no feasible plan and <see cref="PlanReport.Verdict"/>
    /// saying what stood in the way (the closest mesh, what it needed against what a device has).
    /// </summary>
    public static PlanReport Plan(ModelSpec model, ClusterSpec cluster, PlanOptions? options = null)
    {
        options ??= new PlanOptions();
        Require(model, cluster, options);
        int devices = options.Devices ?? cluster.Devices;
        var predictions = new List<Prediction>();
        foreach (var mesh in Enumerate(model, cluster, options, devices))
            predictions.Add(Predict(model, cluster, options, mesh));
        return new PlanReport(model, cluster, options, devices, predictions);
    }

    /// <summary>Predicts one mesh (rejected with the reason when it breaks a rule or does not fit).</summary>
    public static Prediction Evaluate(ModelSpec model, ClusterSpec cluster, MeshChoice mesh, PlanOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        options ??= new PlanOptions();
        Require(model, cluster, options);
        return Predict(model, cluster, options, mesh);
    }

    /// <summary>The memory of one device of every pipeline stage of <paramref name="mesh"/>, first stage first, as
    /// tensor-parallel rank <paramref name="tensorParallelRank"/> (0, the default, holds the output biases and the
    /// largest share: the worst); a broken rule throws an <see cref="ArgumentException"/> naming it.</summary>
    public static IReadOnlyList<MemoryBreakdown> StageMemory(ModelSpec model, ClusterSpec cluster, MeshChoice mesh, PlanOptions? options = null,
        int tensorParallelRank = 0)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        options ??= new PlanOptions();
        Require(model, cluster, options);
        if (RuleBroken(model, cluster, options, mesh) is { } rule) throw new ArgumentException(rule, nameof(mesh));
        ThrowHelper.Rank(tensorParallelRank, mesh.Tp);
        return Enumerable.Range(0, mesh.Pp).Select(s => StageMemory(model, mesh, options, s, FeedForwardStage.LayerRange(model.Layers, mesh.Pp, s).Count,
            tensorParallelRank)).ToList();
    }

    private static void Require(ModelSpec model, ClusterSpec cluster, PlanOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(cluster);
        ArgumentNullException.ThrowIfNull(options);
        var problems = model.Problems().Select(p => "model: " + p).Concat(cluster.Problems().Select(p => "cluster: " + p)).ToList();
        if (options.Devices is int d && (d < 1 || (cluster.Devices >= 1 && d > cluster.Devices)))
            problems.Add($"options: Devices = {d}: expected 1..{cluster.Devices} (the cluster's devices).");
        if (!(options.UsableMemoryFraction > 0 && options.UsableMemoryFraction <= 1))
            problems.Add($"options: UsableMemoryFraction = {options.UsableMemoryFraction}: expected a fraction in (0, 1].");
        if (options.MicroBatchSizes is { } mbs && (mbs.Count == 0 || mbs.Any(b => b < 1)))
            problems.Add("options: MicroBatchSizes: expected a non-empty list of sizes >= 1.");
        foreach (var (list, name) in new (System.Collections.ICollection?, string)[] { ((System.Collections.ICollection)options.Precisions, "Precisions"),
                     ((System.Collections.ICollection)options.Schedules, "Schedules"), ((System.Collections.ICollection)options.SequenceParallel, "SequenceParallel"),
                     ((System.Collections.ICollection)options.Recompute, "Recompute"), ((System.Collections.ICollection)options.Overlap, "Overlap") })
            if (list is null || list.Count == 0) problems.Add($"options: {name} is empty; expected at least one value to try.");
        if (problems.Count > 0)
            throw new ArgumentException("Cannot plan: " + string.Join(" ", problems));
    }

    private static IEnumerable<MeshChoice> Enumerate(ModelSpec model, ClusterSpec cluster, PlanOptions o, int devices)
    {
        for (int tp = 1; tp <= devices; tp++)
        {
            if (devices % tp != 0 || (o.TensorParallelSizes is { } ts && !ts.Contains(tp))) continue;
            for (int pp = 1; pp <= devices / tp; pp++)
            {
                if (devices / tp % pp != 0 || (o.PipelineSizes is { } ps && !ps.Contains(pp))) continue;
                int dp = devices / tp / pp;
                var sizes = o.MicroBatchSizes ?? PowersOfTwo(Math.Min(o.MaxMicroBatchSize, Math.Max(1, model.GlobalBatch / dp)));
                foreach (long b in sizes)
                {
                    if (model.GlobalBatch % dp != 0 || model.GlobalBatch / dp % b != 0) continue; // reported by Evaluate; not enumerated
                    int m = (int)Math.Min(int.MaxValue, model.GlobalBatch / dp / b);
                    foreach (var prec in o.Precisions)
                    foreach (var sched in o.Schedules)
                    {
                        if (pp == 1 && sched != o.Schedules[0]) continue; // no pipeline: the schedules are the same
                        foreach (bool sp in o.SequenceParallel)
                        {
                            if (sp && (tp == 1 || !model.Attention)) continue;
                            foreach (var rc in o.Recompute)
                            {
                                if (rc == Parallel.Recompute.Selective && !model.Attention) continue;
                                foreach (bool ov in o.Overlap)
                                    yield return new MeshChoice(tp, pp, dp, b, m, sched, sp, rc, prec, ov);
                            }
                        }
                    }
                }
            }
        }
    }

    private static long[] PowersOfTwo(long max)
    {
        var list = new List<long>();
        for (long b = 1; b <= max; b *= 2) list.Add(b);
        return [.. list];
    }

    // ------------------------------------------------------------------ the model

    // One operation of a stage's work, per micro-batch.
    private enum OpKind { Gemm, Elementwise, Collective, Block }
    private enum Group { Tp, Dp, Pp }
    private readonly record struct Op(OpKind Kind, long M, long N, long K, double Count, double Bytes, CollectiveKind Coll, Group Group,
        bool Recomputed, double HideBehind, bool Activation = false);

    private static Prediction Predict(ModelSpec model, ClusterSpec c, PlanOptions o, MeshChoice mesh)
    {
        string? rule = RuleBroken(model, c, o, mesh);
        int pp = mesh.Pp;
        var emptyMem = new MemoryBreakdown(0, 0, 0, 0, 0, 0, 0, 0);
        var emptyTime = new TimeBreakdown(0, 0, 0, 0, 0, 0, 0, 0);
        long limit = (long)(c.MemoryBytesPerDevice * o.UsableMemoryFraction);
        if (rule is not null) return new Prediction(mesh, emptyMem, emptyTime, limit, rule);

        var stages = Enumerable.Range(0, pp).Select(s => FeedForwardStage.LayerRange(model.Layers, pp, s).Count).ToArray();
        // Memory: every stage; the worst one is reported.
        MemoryBreakdown? worst = null;
        for (int s = 0; s < pp; s++)
        {
            var mem = StageMemory(model, mesh, o, s, stages[s]);
            if (worst is null || mem.Total > worst.Total) worst = mem;
        }
        // Time per micro-batch of each stage, and the step.
        var tau = new double[pp];
        var compute = new double[pp];
        var recompute = new double[pp];
        var tpExposed = new double[pp];
        var occupancy = new double[pp];
        var lastBackward = new double[pp];
        for (int s = 0; s < pp; s++)
        {
            var ops = StageOps(model, c, mesh, s, stages[s]);
            var seconds = ops.Select(op => OpSeconds(c, mesh, op)).ToArray();
            for (int i = 0; i < ops.Count; i++)
            {
                var op = ops[i];
                double t = seconds[i];
                occupancy[s] += OpOccupancy(c, mesh, op, t);
                if (op.Kind == OpKind.Collective)
                {
                    // Overlap: the collective is chunked with the GEMM beside it (HideBehind 1: the one before, as the
                    // row-parallel reduce after its GEMM; 0: the one after, as the all-gather before a column-parallel GEMM)
                    // and hides behind up to 90 % of it.
                    double partner = 0;
                    if (mesh.Overlap)
                        for (int j = op.HideBehind > 0 ? i - 1 : i + 1; j >= 0 && j < ops.Count; j += op.HideBehind > 0 ? -1 : 1)
                            if (ops[j].Kind == OpKind.Gemm) { partner = seconds[j]; break; }
                    tpExposed[s] += t - Math.Min(t, 0.9 * partner);
                }
                else
                {
                    compute[s] += t;
                    if (op.Recomputed) recompute[s] += t;
                }
            }
            lastBackward[s] = compute[s] * 2 / 3;
            double boundary = BoundaryBytes(model, mesh);
            double x = CollectiveSeconds(c, CollectiveKind.SendRecv, 2, boundary, PipelineCrossesNodes(c, mesh));
            if (pp > 1)
            {
                int sides = (s > 0 ? 1 : 0) + (s < pp - 1 ? 1 : 0);
                tau[s] = compute[s] + tpExposed[s] + sides * x;
                double xs = CollectiveSeconds(c, CollectiveKind.SendRecv, 2, boundary, PipelineCrossesNodes(c, mesh), shared: true);
                occupancy[s] += sides * xs / 2; // each transfer is shared by the two neighbours' counts
            }
            else tau[s] = compute[s] + tpExposed[s];
        }
        int m = mesh.MicroBatches;
        int slow = Array.IndexOf(tau, tau.Max());
        double pipe = tau.Sum() + (m - 1) * tau[slow];
        double bubble = pipe - m * tau[slow];
        double pipelineTransfers = pp > 1 ? m * (tau[slow] - compute[slow] - tpExposed[slow]) : 0;

        // Data-parallel gradient average of the largest stage's gradients, fp32.
        double dpSeconds = 0, dpExposed = 0, dpShared = 0;
        long gradBytes = 4 * Enumerable.Range(0, pp).Max(s => StageParameters(model, mesh, s, stages[s]));
        if (mesh.Dp > 1)
        {
            dpSeconds = CollectiveSeconds(c, CollectiveKind.GradientAverage, mesh.Dp, gradBytes, DataParallelCrossesNodes(c, mesh));
            dpShared = CollectiveSeconds(c, CollectiveKind.GradientAverage, mesh.Dp, gradBytes, DataParallelCrossesNodes(c, mesh), shared: true);
            // Overlap: the buckets of the blocks whose gradients are final go while the last micro-batch's backward runs
            // on the earlier blocks; the last bucket cannot hide.
            dpExposed = mesh.Overlap ? Math.Max(dpSeconds - 0.9 * lastBackward.Min(), dpSeconds * 0.1) : dpSeconds;
        }
        // Optimizer: read weights, gradients, master, moments; write weights, master, moments.
        long stageParams = Enumerable.Range(0, pp).Max(s => StageParameters(model, mesh, s, stages[s]));
        double bytesPerParam = (mesh.Precision == TrainingPrecision.Bf16 ? 2 : 4) * 2 + 4 + 4 * 2 + (o.Optimizer == OptimizerKind.AdamW ? 16 : 0);
        double optimizer = stageParams * bytesPerParam / c.MemoryBandwidthBytesPerSecond
                           + OptimizerOps(model, mesh, stages.Max()) * c.OpLatencySeconds;

        double critical = pipe + dpExposed + optimizer;
        double contention = 0;
        if (c.SharedCompute)
        {
            // The node's devices share its cores: their summed work (m micro-batches each, the gradient average once per
            // dp group, the optimizer on every device) is a floor under the step.
            double nodeSum = 0;
            for (int s = 0; s < pp; s++)
                nodeSum += mesh.Tp * mesh.Dp * (m * occupancy[s] + dpShared / mesh.Dp + optimizer);
            nodeSum /= Math.Max(1, CeilDiv(mesh.Devices, c.DevicesPerNode));
            contention = Math.Max(0, nodeSum - critical);
        }
        var time = new TimeBreakdown(m * compute[slow], m * recompute[slow], m * tpExposed[slow], pipelineTransfers, bubble, dpExposed,
            optimizer, contention);
        string? fit = worst!.Total > limit
            ? $"needs {LayerPlan.Bytes(worst.Total)} on a device of stage {worst.Stage} (weights {LayerPlan.Bytes(worst.Weights)}, " +
              $"gradients {LayerPlan.Bytes(worst.Gradients)}, master {LayerPlan.Bytes(worst.MasterWeights)}, optimizer {LayerPlan.Bytes(worst.OptimizerState)}, " +
              $"activations {LayerPlan.Bytes(worst.Activations)}), more than the {LayerPlan.Bytes(limit)} usable " +
              string.Create(CultureInfo.InvariantCulture, $"({o.UsableMemoryFraction:0.##} of {LayerPlan.Bytes(c.MemoryBytesPerDevice)})")
            : null;
        double peak = (mesh.Precision == TrainingPrecision.Bf16 ? c.Bf16FlopsPerSecond : c.Fp32FlopsPerSecond) * mesh.Devices;
        return new Prediction(mesh, worst, time, limit, fit)
        {
            Mfu = model.FlopsPerStep / time.Total / peak,
            TokensPerSecond = model.TokensPerStep / time.Total,
        };
    }

    // Divisibility and range rules; null when the mesh is valid.
    private static string? RuleBroken(ModelSpec model, ClusterSpec c, PlanOptions o, MeshChoice mesh)
    {
        if (mesh.Tp < 1 || mesh.Pp < 1 || mesh.Dp < 1) return $"{mesh.Shape}: every size must be at least 1.";
        if (mesh.Devices > (o.Devices ?? c.Devices)) return $"{mesh.Shape} needs {mesh.Devices} devices; the cluster has {o.Devices ?? c.Devices}.";
        if (mesh.Pp > model.Layers) return $"pp = {mesh.Pp} is more than the {model.Layers} blocks: each stage needs at least one.";
        if (model.Attention && model.KvHeads % mesh.Tp != 0)
            return $"tp = {mesh.Tp} does not divide the {model.KvHeads} key/value heads: each tensor-parallel rank must hold whole key/value heads " +
                   "(with their query heads) in an even split.";
        if (model.FfnHidden < mesh.Tp) return $"tp = {mesh.Tp} is more than the FFN's {model.FfnHidden} columns.";
        if (model.GlobalBatch % mesh.Dp != 0) return $"dp = {mesh.Dp} does not divide the global batch of {model.GlobalBatch} sequences.";
        if (mesh.MicroBatchSize < 1 || mesh.MicroBatches < 1 || mesh.MicroBatchSize * mesh.MicroBatches * mesh.Dp != model.GlobalBatch)
            return $"{mesh.MicroBatches} micro-batches of {mesh.MicroBatchSize} sequences on {mesh.Dp} replicas is not the global batch of {model.GlobalBatch}.";
        if (mesh.SequenceParallel && (mesh.MicroBatchSize * model.SequenceLength) % mesh.Tp != 0)
            return $"sequence parallelism splits a micro-batch's {mesh.MicroBatchSize * model.SequenceLength} tokens over tp = {mesh.Tp}: expected a multiple.";
        if (mesh.Recompute == Parallel.Recompute.Selective && !model.Attention) return "selective recomputation needs attention.";
        return null;
    }

    private static long Bpe(MeshChoice mesh) => mesh.Precision == TrainingPrecision.Bf16 ? 2 : 4;

    // Parameters a device of stage s holds as tensor-parallel rank `rank` (rank 0 holds the output biases; the FFN's F is
    // split evenly, the first ranks taking the remainder).
    private static long StageParameters(ModelSpec model, MeshChoice mesh, int s, int layers, int rank = 0)
    {
        long h = model.Hidden, tp = mesh.Tp, fr = Share(model.FfnHidden, tp, rank), owner = rank == 0 ? 1 : 0;
        long perLayer;
        if (model.Attention)
        {
            long d = model.HeadDim, q = model.Heads / tp * d, kv = model.KvHeads / tp * d;
            perLayer = h * q + 2 * h * kv + q * h + (model.Bias ? q + 2 * kv + owner * h : 0) + 4 * h;
        }
        else perLayer = 0;
        perLayer += model.FeedForward == FeedForwardKind.SwiGlu ? 3 * h * fr + (model.Bias ? owner * h : 0)
            : 2 * h * fr + (model.Bias ? fr + owner * h : 0);
        long p = layers * perLayer;
        if (s == 0) p += CeilDiv(model.Vocab, tp) * h;
        if (s == mesh.Pp - 1) p += CeilDiv(model.Vocab, tp) * h;
        return p;
    }

    private static long Share(long total, long parts, int index) => total / parts + (index < total % parts ? 1 : 0);

    private static MemoryBreakdown StageMemory(ModelSpec model, MeshChoice mesh, PlanOptions o, int s, int layers, int rank = 0)
    {
        long bpe = Bpe(mesh), tp = mesh.Tp, h = model.Hidden, fr = Share(model.FfnHidden, tp, rank), owner = rank == 0 ? 1 : 0;
        long tokens = mesh.MicroBatchSize * model.SequenceLength;
        long p = StageParameters(model, mesh, s, layers, rank);
        long weights = p * bpe, master = 4 * p, optimizer = o.Optimizer == OptimizerKind.AdamW ? 8 * p : 0;
        long grads;
        int inFlight = mesh.Schedule == PipelineSchedule.GPipe ? mesh.MicroBatches : Math.Min(mesh.MicroBatches, mesh.Pp - s);
        long stash, work, buffers;
        if (!model.Attention)
        {
            // The feed-forward stack as the library allocates it (FeedForwardStage / FeedForwardState / PipelineEngine):
            // gradients of every block's W1, b1, W2 and a b2 gradient on every tp rank; per micro-batch in flight the
            // inputs of blocks 1.. and each block's Z, H, dH; the stage's input when it is not the first; the boundary
            // buffers dy, dx and the backward's temporaries; the bias gradients' ones vectors (b2's on the rank owning it).
            grads = 4 * layers * (2 * h * fr + fr + h);
            long perMb = tokens * ((layers - 1) * h + 3 * layers * fr) + (s > 0 ? tokens * h : 0);
            stash = 4 * inFlight * perMb;
            buffers = 4 * tokens * h * 2;
            work = 4 * (tokens * h * Math.Min(2, layers - 1) + layers * (1 + owner) * tokens);
            if (mesh.Dp > 1) work += grads + 4;
        }
        else
        {
            grads = 4 * p;
            long d = model.HeadDim, qh = model.Heads / tp, kvh = model.KvHeads / tp, sq = model.SequenceLength;
            long rows = mesh.SequenceParallel ? tokens / tp : tokens;
            bool gated = model.FeedForward == FeedForwardKind.SwiGlu;
            // Per block and micro-batch: the norms' inputs and outputs and the residual (sharded under SP), Q, K, V and the
            // attention output, the probabilities (B·heads·T²) unless recomputed, the FFN's pre-activations and activation.
            long perLayer = 4 * rows * h + tokens * ((qh + 2 * kvh) * d + qh * d) + tokens * (gated ? 3 : 2) * fr;
            long scores = mesh.MicroBatchSize * qh * sq * sq;
            if (mesh.Recompute == Parallel.Recompute.None) perLayer += scores;
            long perMb = mesh.Recompute == Parallel.Recompute.Full ? layers * rows * h : layers * perLayer;
            stash = bpe * inFlight * perMb;
            // The backward of one block: its activations again (recomputed when Full) and their gradients.
            work = bpe * 2 * (perLayer + (mesh.Recompute == Parallel.Recompute.None ? 0 : scores));
            if (s == mesh.Pp - 1 && model.Vocab > 0) work += 4 * 2 * tokens * CeilDiv(model.Vocab, tp); // fp32 logits and their gradient
            buffers = bpe * 4 * rows * h;
            if (mesh.Dp > 1) work += 4 * Math.Min(p, 25L << 18); // the reducer's buckets (25 MiB each at most)
        }
        return new MemoryBreakdown(s, weights, grads, master, optimizer, stash, buffers, work);
    }

    // The work of stage s for one micro-batch: forward, backward (and recomputation), tensor-parallel collectives.
    private static List<Op> StageOps(ModelSpec model, ClusterSpec c, MeshChoice mesh, int s, int layers)
    {
        var ops = new List<Op>();
        long tp = mesh.Tp, h = model.Hidden, fr = CeilDiv(model.FfnHidden, tp), bpe = Bpe(mesh);
        long tokens = mesh.MicroBatchSize * model.SequenceLength;
        long rows = mesh.SequenceParallel ? tokens / tp : tokens;
        bool gated = model.FeedForward == FeedForwardKind.SwiGlu;
        void Gemm(long m, long n, long k, double count = 1, bool recomputed = false) =>
            ops.Add(new Op(OpKind.Gemm, m, n, k, count, 0, default, Group.Tp, recomputed, 0));
        void Elem(double bytes, double count = 1, bool recomputed = false) =>
            ops.Add(new Op(OpKind.Elementwise, 0, 0, 0, count, bytes, default, Group.Tp, recomputed, 0));
        void Act(double bytes, double count = 1, bool recomputed = false) =>
            ops.Add(new Op(OpKind.Elementwise, 0, 0, 0, count, bytes, default, Group.Tp, recomputed, 0, Activation: true));
        void Coll(CollectiveKind kind, double bytes, double hideBehind, bool recomputed = false)
        {
            if (tp > 1) ops.Add(new Op(OpKind.Collective, 0, 0, 0, 1, bytes, kind, Group.Tp, recomputed, hideBehind));
        }
        // A GEMM pair's hiding window is filled in later (seconds); here the index of the GEMM it is chunked with.
        for (int pass = 0; pass < 3; pass++)
        {
            // pass 0: forward; 1: backward (each GEMM twice: dX and dW); 2: recomputation (a forward again)
            bool recomputed = pass == 2;
            if (pass == 2 && mesh.Recompute == Parallel.Recompute.None) break;
            double g = pass == 1 ? 2 : 1;
            for (int l = 0; l < layers; l++)
            {
                if (model.Attention)
                {
                    long d = model.HeadDim, qh = model.Heads / tp, kvh = model.KvHeads / tp, sq = model.SequenceLength;
                    double seqs = mesh.MicroBatchSize;
                    bool full = pass != 2 || mesh.Recompute == Parallel.Recompute.Full;
                    if (full)
                    {
                        Elem(bpe * 2 * rows * h * 2, g, recomputed);                                   // norm 1, residual
                        if (mesh.SequenceParallel) Coll(CollectiveKind.AllGather, bpe * tokens * h, 0, recomputed);
                        Gemm(tokens, (qh + 2 * kvh) * d, h, g, recomputed);                             // Q, K, V
                    }
                    Gemm(sq, sq, d, g * seqs * qh, recomputed);                                         // scores
                    Act(4 * 2 * seqs * qh * sq * sq, g, recomputed);                                    // softmax (fp32)
                    Gemm(sq, d, sq, g * seqs * qh, recomputed);                                         // P · V
                    if (full)
                    {
                        Gemm(tokens, h, qh * d, g, recomputed);                                         // output projection
                        Coll(mesh.SequenceParallel ? CollectiveKind.ReduceScatter : CollectiveKind.AllReduce, bpe * tokens * h, 1, recomputed);
                    }
                }
                if (!model.Attention && c.FeedForwardBlock is not null && !gated)
                {
                    // The measured block: its training step (forward a third, backward two thirds), then the all-reduce
                    // and the residual.
                    if (pass == 0 || mesh.Recompute == Parallel.Recompute.Full)
                        ops.Add(new Op(OpKind.Block, tokens, fr, h, pass == 0 ? 1.0 / 3 : 1.0 / 3, 0, default, Group.Tp, pass == 2, 0));
                    else if (pass == 1) ops.Add(new Op(OpKind.Block, tokens, fr, h, 2.0 / 3, 0, default, Group.Tp, false, 0));
                    Coll(CollectiveKind.AllReduce, 4 * tokens * h, 1, recomputed);
                    Elem(4 * 3 * tokens * h, 1, recomputed);
                }
                else if (pass != 2 || mesh.Recompute == Parallel.Recompute.Full)
                {
                    if (model.Attention)
                    {
                        Elem(bpe * 2 * rows * h * 2, g, recomputed);                                   // norm 2, residual
                        if (mesh.SequenceParallel) Coll(CollectiveKind.AllGather, bpe * tokens * h, 0, recomputed);
                    }
                    Gemm(tokens, fr, h, g * (gated ? 2 : 1), recomputed);                               // W1 (and W3)
                    if (pass == 1) Act(4 * (gated ? 5 : 3) * tokens * fr);                              // activation's derivative
                    else Elem(bpe * (gated ? 3 : 2) * tokens * fr, 1, recomputed);                      // activation (vectorized)
                    Gemm(tokens, h, fr, g, recomputed);                                                 // W2
                    if (pass == 1 && model.Bias) { Gemm(1, fr, tokens); Gemm(1, h, tokens); }           // bias gradients
                    Coll(mesh.SequenceParallel ? CollectiveKind.ReduceScatter : CollectiveKind.AllReduce, bpe * tokens * h, 1, recomputed);
                    if (!model.Attention) Elem(4 * 3 * tokens * h, g, recomputed);                      // bias and residual
                }
            }
            if (pass != 2)
            {
                if (s == 0 && model.Vocab > 0)
                {
                    Elem(bpe * 2 * tokens * h, g);                                                      // embedding rows
                    Coll(mesh.SequenceParallel ? CollectiveKind.ReduceScatter : CollectiveKind.AllReduce, bpe * tokens * h, 0);
                }
                if (s == mesh.Pp - 1)
                {
                    if (model.Vocab > 0)
                    {
                        long vr = CeilDiv(model.Vocab, tp);
                        Gemm(tokens, vr, h, g);                                                         // logits
                        Elem(4 * 3 * tokens * vr, g);                                                   // cross-entropy
                    }
                    else Elem(4 * 3 * tokens * h, g);                                                   // the MSE loss
                }
            }
        }
        return ops;
    }

    private static int OptimizerOps(ModelSpec model, MeshChoice mesh, int layers) =>
        layers * (model.Attention ? 12 : 4) * 2 + (model.Vocab > 0 ? 2 : 0);

    private static double BoundaryBytes(ModelSpec model, MeshChoice mesh)
    {
        long tokens = mesh.MicroBatchSize * model.SequenceLength;
        return (model.Attention ? Bpe(mesh) : 4) * (mesh.SequenceParallel ? tokens / mesh.Tp : tokens) * model.Hidden;
    }

    private static double OpSeconds(ClusterSpec c, MeshChoice mesh, Op op)
    {
        switch (op.Kind)
        {
            case OpKind.Block:
                return op.Count * c.FeedForwardBlock!.Seconds(op.M, op.N, op.K);
            case OpKind.Gemm:
                return op.Count * (GemmSeconds(c, mesh, op.M, op.N, op.K) + c.OpLatencySeconds);
            case OpKind.Elementwise:
                double rate = op.Activation && c.ActivationBytesPerSecond > 0 ? c.ActivationBytesPerSecond : c.MemoryBandwidthBytesPerSecond;
                return op.Count * (op.Bytes / rate + c.OpLatencySeconds);
            default:
                double t = CollectiveSeconds(c, op.Coll, mesh.Tp, op.Bytes, TensorParallelCrossesNodes(c, mesh));
                return op.Count * t;
        }
    }

    // What the op takes from a node's shared cores: a GEMM or block at the measured shared time (interpolated linearly
    // between alone, one rank, and shared, the calibration's SharedRanks, by the mesh's ranks on the node).
    private static double OpOccupancy(ClusterSpec c, MeshChoice mesh, Op op, double seconds)
    {
        if (!c.SharedCompute) return seconds;
        var curve = op.Kind switch { OpKind.Gemm => c.Gemm, OpKind.Block => c.FeedForwardBlock, _ => null };
        if (curve is { HasShared: true })
        {
            double alone = curve.Seconds(op.M, op.N, op.K), shared = curve.Seconds(op.M, op.N, op.K, shared: true);
            int ranks = Math.Min(mesh.Devices, c.DevicesPerNode);
            double w = c.SharedRanks <= 1 ? 1 : Math.Clamp((ranks - 1.0) / (c.SharedRanks - 1.0), 0, 1);
            double scale = op.Kind == OpKind.Gemm && mesh.Precision == TrainingPrecision.Bf16 ? c.Fp32FlopsPerSecond / c.Bf16FlopsPerSecond : 1;
            return op.Count * ((alone + w * (shared - alone)) * scale + (op.Kind == OpKind.Gemm ? c.OpLatencySeconds : 0));
        }
        if (op.Kind == OpKind.Collective) // the node's time for the group's collective, spread over its members
            return op.Count * CollectiveSeconds(c, op.Coll, mesh.Tp, op.Bytes, TensorParallelCrossesNodes(c, mesh), shared: true) / mesh.Tp;
        return seconds;
    }

    private static double GemmSeconds(ClusterSpec c, MeshChoice mesh, long m, long n, long k)
    {
        if (m <= 0 || n <= 0 || k <= 0) return 0;
        bool bf16 = mesh.Precision == TrainingPrecision.Bf16;
        if (c.Gemm is not null)
        {
            double t = c.Gemm.Seconds(m, n, k);
            return bf16 ? t * c.Fp32FlopsPerSecond / c.Bf16FlopsPerSecond : t;
        }
        double flops = 2.0 * m * n * k, bytes = (double)Bpe(mesh) * (m * k + k * n + m * n);
        double peak = bf16 ? c.Bf16FlopsPerSecond : c.Fp32FlopsPerSecond;
        return Math.Max(flops / (peak * c.GemmEfficiency), bytes / c.MemoryBandwidthBytesPerSecond);
    }

    /// <summary>The α-β time of a collective of <paramref name="bytes"/> (as <see cref="CollectiveKind"/> defines them)
    /// on <paramref name="ranks"/> ranks: a measured fit for that kind and group size inside a node when the cluster has
    /// one, else the ring algorithm's 2(p − 1) steps of n / p (all-reduce; p − 1 for all-gather and reduce-scatter; one
    /// message for a send) on the inter-node link when the group spans nodes, else the intra-node link.</summary>
    public static double CollectiveSeconds(ClusterSpec cluster, CollectiveKind kind, int ranks, double bytes, bool crossesNodes) =>
        CollectiveSeconds(cluster, kind, ranks, bytes, crossesNodes, shared: false);

    private static double CollectiveSeconds(ClusterSpec cluster, CollectiveKind kind, int ranks, double bytes, bool crossesNodes, bool shared)
    {
        ArgumentNullException.ThrowIfNull(cluster);
        if (ranks <= 1 && kind != CollectiveKind.SendRecv) return 0;
        if (!crossesNodes)
        {
            var fit = cluster.Collectives.FirstOrDefault(f => f.Kind == kind && f.Ranks == ranks && f.Shared == shared)
                      ?? cluster.Collectives.FirstOrDefault(f => f.Kind == kind && f.Ranks == ranks && !f.Shared);
            if (fit is not null) return fit.LatencySeconds + bytes * fit.SecondsPerByte;
        }
        var link = crossesNodes ? cluster.InterNode : cluster.IntraNode;
        double p = ranks, a = link.LatencySeconds, bw = link.BandwidthBytesPerSecond;
        return kind switch
        {
            CollectiveKind.GradientAverage => CollectiveSeconds(cluster, CollectiveKind.AllReduce, ranks, bytes, crossesNodes, shared)
                                              + 4 * bytes / cluster.MemoryBandwidthBytesPerSecond,
            CollectiveKind.AllReduce => 2 * (p - 1) * a + 2 * (p - 1) / p * bytes / bw,
            CollectiveKind.AllGather or CollectiveKind.ReduceScatter => (p - 1) * a + (p - 1) / p * bytes / bw,
            _ => a + bytes / bw,
        };
    }

    // Mesh order pp × dp × tp, tp fastest: device = (pp·DP + dp)·TP + tp; a node holds DevicesPerNode consecutive devices.
    private static bool TensorParallelCrossesNodes(ClusterSpec c, MeshChoice mesh) => mesh.Tp > c.DevicesPerNode;
    private static bool DataParallelCrossesNodes(ClusterSpec c, MeshChoice mesh) => mesh.Tp * mesh.Dp > c.DevicesPerNode;
    private static bool PipelineCrossesNodes(ClusterSpec c, MeshChoice mesh) => mesh.Pp > 1 && mesh.Devices > c.DevicesPerNode;

    private static long CeilDiv(long a, long b) => (a + b - 1) / b;
}
