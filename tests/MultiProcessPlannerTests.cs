using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

// The planner's calibration across real processes (the worker's "calibrate" scenario: ClusterCalibration.Measure over a
// TCP group of p processes on shared memory): every rank must describe the same node (rank 0's measurements, shared),
// with a curve measured alone and shared by p processes, every collective fitted on the group sizes up to p, alone and
// among busy ranks, and a description the planner can use.
public sealed partial class MultiProcessTests
{
    [Test]
    public void Tcp_CalibrationAcrossProcesses_DescribesOneNodeOnEveryRank([Values(2, 4)] int p)
    {
        string dir = NewOutDir();
        try
        {
            var results = RunTcp(p, "calibrate", dir, timeoutMs: 60000);
            foreach (var r in results) Assert.That(r.Ok && r.ExitCode == 0, $"rank {r.Rank}: exit {r.ExitCode}, {r.Line}");
            var json = Enumerable.Range(0, p).Select(r => File.ReadAllText(Path.Combine(dir, $"cluster.rank{r}.json"))).ToArray();
            for (int r = 1; r < p; r++) Assert.That(json[r], Is.EqualTo(json[0]), $"rank {r} describes another node than rank 0");
            var spec = ClusterSpec.FromJson(json[0]);
            Assert.That(spec.Problems(), Is.Empty);
            Assert.That((spec.Nodes, spec.DevicesPerNode, spec.SharedRanks, spec.SharedCompute), Is.EqualTo((1, p, p, true)));
            Assert.That(spec.Name, Does.Contain($"{p} processes"));
            var o = CalibrationScenario.Options;
            Assert.That(spec.Gemm!.Samples, Has.Count.EqualTo(o.GemmM.Count * o.GemmN.Count * o.GemmK.Count));
            Assert.That(spec.Gemm.Samples.All(s => s.Seconds > 0 && s.SharedSeconds > 0), Is.True, "every GEMM timed alone and shared");
            Assert.That(spec.FeedForwardBlock!.Samples.All(s => s.Seconds > 0 && s.SharedSeconds > 0), Is.True, "every block timed alone and shared");
            var sizes = o.GroupSizes.Where(g => g <= p).ToArray();
            foreach (var kind in Enum.GetValues<CollectiveKind>())
                foreach (int g in sizes)
                    foreach (bool shared in new[] { false, true })
                    {
                        var fit = spec.Collectives.SingleOrDefault(f => f.Kind == kind && f.Ranks == g && f.Shared == shared);
                        Assert.That(fit, Is.Not.Null, $"{kind} on {g} ranks, shared {shared}: no fit");
                        Assert.That(fit!.LatencySeconds + 65536 * fit.SecondsPerByte, Is.GreaterThan(0).And.LessThan(1),
                            $"{kind} on {g} ranks, shared {shared}: {fit}");
                    }
            Assert.That(spec.Collectives, Has.Count.EqualTo(Enum.GetValues<CollectiveKind>().Length * sizes.Length * 2));
            var model = ModelSpec.FeedForwardStack(4, 64, 256, 16);
            var mesh = new MeshChoice(p, 1, 1, 16, 1, PipelineSchedule.OneForwardOneBackward, false, Recompute.None, TrainingPrecision.Fp32, false);
            var prediction = Planner.Evaluate(model, spec, mesh, new PlanOptions { Optimizer = OptimizerKind.Sgd, Precisions = [TrainingPrecision.Fp32] });
            Assert.That(prediction.Feasible, Is.True, prediction.Rejection);
            Assert.That(prediction.StepSeconds, Is.GreaterThan(0).And.LessThan(10));
        }
        finally { Directory.Delete(dir, true); }
    }
}
