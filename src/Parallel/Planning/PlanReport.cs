using System.Globalization;
using System.Text;

namespace Shardwise.Parallel;

/// <summary>The planner's answer (<see cref="Planner.Plan"/>): every mesh it considered, the feasible ones ranked by
/// predicted step time, the rejected ones with their reasons, and the answer in words (<see cref="Explain"/>).</summary>
public sealed class PlanReport
{
    internal PlanReport(ModelSpec model, ClusterSpec cluster, PlanOptions options, int devices, List<Prediction> all)
    {
        (Model, Cluster, Options, Devices) = (model, cluster, options, devices);
        Ranked = all.Where(p => p.Feasible).OrderBy(p => p.StepSeconds).ThenBy(p => p.Memory.Total).ToList();
        Rejected = all.Where(p => !p.Feasible).ToList();
    }

    /// <summary>The model.</summary>
    public ModelSpec Model { get; }
    /// <summary>The cluster.</summary>
    public ClusterSpec Cluster { get; }
    /// <summary>The search.</summary>
    public PlanOptions Options { get; }
    /// <summary>Devices planned for.</summary>
    public int Devices { get; }
    /// <summary>Feasible meshes, fastest first.</summary>
    public IReadOnlyList<Prediction> Ranked { get; }
    /// <summary>Meshes that break a rule or do not fit, with the reason.</summary>
    public IReadOnlyList<Prediction> Rejected { get; }
    /// <summary>The fastest feasible mesh, or null when none fits.</summary>
    public Prediction? Best => Ranked.Count > 0 ? Ranked[0] : null;

    /// <summary>One sentence: the winner, or why nothing fits (the mesh that came closest, what it needs and what a
    /// device has, and what would make it fit).</summary>
    public string Verdict
    {
        get
        {
            if (Best is { } b)
                return string.Create(CultureInfo.InvariantCulture,
                    $"{Model.Name} on {Devices} devices of {Cluster.Name}: {b.Mesh} — {Duration(b.StepSeconds)} per step, " +
                    $"{b.TokensPerSecond:0} tokens/s, MFU {b.Mfu:P0}, {LayerPlan.Bytes(b.Memory.Total)} of {LayerPlan.Bytes(b.MemoryLimit)} per device.");
            var memory = Rejected.Where(p => p.Memory.Total > 0).MinBy(p => p.Memory.Total);
            if (memory is null)
                return $"{Model.Name} on {Devices} devices of {Cluster.Name}: no mesh is valid — " +
                       (Rejected.Count > 0 ? Rejected[0].Rejection : "none was enumerated (check the options' lists)");
            long fullModel = Model.Parameters * (memory.Mesh.Precision == TrainingPrecision.Bf16 ? 2 : 4) +
                             Model.Parameters * (4 + 4 + (Options.Optimizer == OptimizerKind.AdamW ? 8 : 0));
            return $"{Model.Name} fits on no mesh of {Devices} devices of {Cluster.Name}: the smallest need, {memory.Mesh}, " +
                   $"{memory.Rejection}. The parameters with their gradients, master copies and optimizer state alone take " +
                   $"{LayerPlan.Bytes(fullModel)} ({LayerPlan.Bytes(fullModel / Math.Max(1, Devices))} per device when spread over all " +
                   $"{Devices}); more devices, devices with more memory, a smaller micro-batch or full recomputation would be needed.";
        }
    }

    /// <summary>The answer in words and a table: the winner and why (where its time goes, what it holds), then the
    /// runners-up and what each costs against the winner, then how many meshes were rejected and why.</summary>
    public string Explain(int rows = 10)
    {
        var sb = new StringBuilder();
        sb.AppendLine(Model.Describe());
        sb.AppendLine(Cluster.Describe());
        sb.AppendLine(Verdict);
        if (Best is { } b)
        {
            sb.AppendLine(Why(b));
            foreach (var r in Ranked.Skip(1).DistinctBy(p => (p.Mesh.Tp, p.Mesh.Pp, p.Mesh.Dp)).Take(3))
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"  runner-up {r.Mesh}: {r.StepSeconds / b.StepSeconds:0.00}× the winner's time — {Against(r, b)}"));
        }
        sb.AppendLine();
        sb.Append(Table(rows));
        if (Rejected.Count > 0)
        {
            sb.AppendLine();
            sb.AppendLine($"{Rejected.Count} of {Rejected.Count + Ranked.Count} meshes rejected:");
            foreach (var g in Rejected.GroupBy(p => Reason(p.Rejection!)).OrderByDescending(g => g.Count()).Take(6))
                sb.AppendLine($"  {g.Count(),6} × {g.First().Rejection} (e.g. {g.First().Mesh})");
        }
        return sb.ToString();
    }

    /// <summary>The best <paramref name="rows"/> feasible meshes (the best of each tp × pp × dp shape) as a table: step
    /// time and its parts, memory per device, MFU.</summary>
    public string Table(int rows = 10)
    {
        var sb = new StringBuilder();
        // times in seconds, or in milliseconds when the best step is shorter than one
        var (unit, scale) = Best is { StepSeconds: < 1 } ? ("ms", 1e3) : ("s", 1.0);
        sb.AppendLine($"  # | tp | pp |  dp | mb x size | sched | SP | recompute | prec | ovl | {"step " + unit,8} | compute |   tp comm |  pp comm |   bubble |  dp comm |  optim | memory/device |  MFU");
        int i = 0;
        foreach (var p in Ranked.DistinctBy(p => (p.Mesh.Tp, p.Mesh.Pp, p.Mesh.Dp)).Take(rows))
        {
            var m = p.Mesh;
            var t = p.Time with
            {
                Compute = p.Time.Compute * scale, TensorParallel = p.Time.TensorParallel * scale, Pipeline = p.Time.Pipeline * scale,
                Bubble = p.Time.Bubble * scale, DataParallel = p.Time.DataParallel * scale, Optimizer = p.Time.Optimizer * scale,
            };
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{++i,3} | {m.Tp,2} | {m.Pp,2} | {m.Dp,3} | {$"{m.MicroBatches}x{m.MicroBatchSize}",9} | {(m.Schedule == PipelineSchedule.GPipe ? "GPipe" : "1F1B"),5} | " +
                $"{(m.SequenceParallel ? "on" : "-"),2} | {m.Recompute.ToString().ToLowerInvariant(),9} | {m.Precision.ToString().ToLowerInvariant(),4} | {(m.Overlap ? "on" : "-"),3} | " +
                $"{p.StepSeconds * scale,8:0.####} | {t.Compute,7:0.####} | {t.TensorParallel,9:0.####} | {t.Pipeline,8:0.####} | {t.Bubble,8:0.####} | {t.DataParallel,8:0.####} | " +
                $"{t.Optimizer,6:0.####} | {LayerPlan.Bytes(p.Memory.Total),13} | {p.Mfu,4:P0}"));
        }
        return sb.ToString();
    }

    // Where the winner's time goes and what it holds, in words.
    private static string Why(Prediction b)
    {
        var t = b.Time;
        var parts = new (string Name, double S)[]
        {
            ("compute", t.Compute - t.Recompute), ("recomputation", t.Recompute), ("tensor-parallel collectives", t.TensorParallel),
            ("pipeline transfers", t.Pipeline), ("pipeline bubble", t.Bubble), ("gradient average", t.DataParallel), ("optimizer", t.Optimizer),
            ("contention for shared cores", t.Contention),
        }.Where(p => p.S > 0).OrderByDescending(p => p.S).ToList();
        var m = b.Memory;
        return string.Create(CultureInfo.InvariantCulture,
            $"  why: its step is {string.Join(", ", parts.Take(4).Select(p => $"{p.S / t.Total:P0} {p.Name}"))}; a device of stage {m.Stage} holds " +
            $"{LayerPlan.Bytes(m.Weights + m.Gradients + m.MasterWeights + m.OptimizerState)} of parameters, gradients, master weights and " +
            $"optimizer state and {LayerPlan.Bytes(m.Activations)} of activations ({LayerPlan.Bytes(m.Total)} in all).");
    }

    // What a runner-up pays against the winner: the parts that grew most.
    private static string Against(Prediction r, Prediction b)
    {
        var diffs = new (string Name, double D)[]
        {
            ("compute", r.Time.Compute - b.Time.Compute), ("tensor-parallel collectives", r.Time.TensorParallel - b.Time.TensorParallel),
            ("pipeline transfers", r.Time.Pipeline - b.Time.Pipeline), ("bubble", r.Time.Bubble - b.Time.Bubble),
            ("gradient average", r.Time.DataParallel - b.Time.DataParallel), ("optimizer", r.Time.Optimizer - b.Time.Optimizer),
            ("contention", r.Time.Contention - b.Time.Contention),
        }.OrderByDescending(d => Math.Abs(d.D)).Take(2);
        return string.Join(", ", diffs.Select(d => string.Create(CultureInfo.InvariantCulture,
            $"{(d.D >= 0 ? "+" : "−")}{Duration(Math.Abs(d.D))} {d.Name}")));
    }

    // A duration with a unit that keeps its digits: s, ms or µs.
    private static string Duration(double seconds) =>
        seconds >= 1 ? string.Create(CultureInfo.InvariantCulture, $"{seconds:0.###} s")
        : seconds >= 1e-3 ? string.Create(CultureInfo.InvariantCulture, $"{seconds * 1e3:0.###} ms")
        : string.Create(CultureInfo.InvariantCulture, $"{seconds * 1e6:0.#} µs");

    // The rejection's kind without its numbers (for grouping).
    private static string Reason(string rejection) =>
        new string(rejection.Where(ch => !char.IsDigit(ch)).ToArray());
}
