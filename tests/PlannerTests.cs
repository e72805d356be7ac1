using System.Globalization;
using Shardwise.Parallel;

namespace Shardwise.Tests;

// The planner (issue 20, docs/planner.md): the device's allocation counter; the predicted memory of the hybrid-parallel
// example against what its trainers allocate (virtual ranks, several meshes, fresh random shapes); bad input answered
// naming the constraint; the α-β formulas, the GEMM curve and the cluster JSON; the calibration on this machine; and
// properties of the ranking (sorted, within memory, monotone in the links). Step-time accuracy is a benchmark
// (Shardwise.Bench plan-validate), not a timed test.
public class PlannerTests
{
    [Test]
    public void DeviceCountsItsOwnedBuffersAndTheirPeak()
    {
        using var device = Device.Cpu();
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        long start = device.AllocatedBytes;
        device.ResetPeakAllocatedBytes();
        Assert.That(device.PeakAllocatedBytes, Is.EqualTo(start));
        long n1 = rng.Next(1, 5000), n2 = rng.Next(1, 5000), n3 = rng.Next(1, 5000);
        var a = device.Allocate<float>(n1);
        var b = device.Allocate<double>(n2);
        Assert.That(device.AllocatedBytes - start, Is.EqualTo(4 * n1 + 8 * n2));
        a.Dispose();
        a.Dispose(); // twice: counted once
        Assert.That(device.AllocatedBytes - start, Is.EqualTo(8 * n2));
        var c = device.Allocate<BFloat16>(n3);
        Assert.That(device.AllocatedBytes - start, Is.EqualTo(8 * n2 + 2 * n3));
        Assert.That(device.PeakAllocatedBytes - start, Is.EqualTo(Math.Max(4 * n1 + 8 * n2, 8 * n2 + 2 * n3)));
        unsafe
        {
            var host = new float[16];
            fixed (float* p = host)
            {
                using var wrapped = device.Wrap<float>((nint)p, 16);
                Assert.That(device.AllocatedBytes - start, Is.EqualTo(8 * n2 + 2 * n3), "wrapped memory is someone else's");
            }
        }
        b.Dispose();
        c.Dispose();
        Assert.That(device.AllocatedBytes, Is.EqualTo(start));
        device.ResetPeakAllocatedBytes();
        Assert.That(device.PeakAllocatedBytes, Is.EqualTo(start));
    }

    // The hybrid-parallel example (FeedForwardStackTrainer: fp32 SGD, 1F1B) on a pp × dp × tp mesh of virtual ranks, each
    // on a device of its own: each device's peak of allocated bytes during the trainer's construction and two steps, less
    // what the caller allocated, against the planner's memory for a device of the rank's stage.
    [TestCase(1, 1, 1)]
    [TestCase(1, 1, 4)]
    [TestCase(1, 4, 1)]
    [TestCase(4, 1, 1)]
    [TestCase(2, 2, 2)]
    [TestCase(2, 1, 3)]
    [TestCase(3, 2, 1)]
    public void PredictedMemoryIsWithinFivePercentOfWhatTheTrainersAllocate(int pp, int dp, int tp)
    {
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        int layers = pp * rng.Next(1, 3) + rng.Next(0, 2);
        long h = 16 * rng.Next(2, 5), f = 32 * rng.Next(2, 6) + rng.Next(0, 3), rowsPerReplica = 8 * rng.Next(1, 4);
        long rows = rowsPerReplica * dp;
        int mb = pp == 1 ? 1 : (int)Math.Min(rowsPerReplica, 2 * pp);
        while (rowsPerReplica % mb != 0) mb--;
        var model = ModelSpec.FeedForwardStack(layers, h, f, rows);
        var mesh = new MeshChoice(tp, pp, dp, rowsPerReplica / mb, mb, PipelineSchedule.OneForwardOneBackward, false, Recompute.None,
            TrainingPrecision.Fp32, false);
        var options = new PlanOptions { Optimizer = OptimizerKind.Sgd, Precisions = [TrainingPrecision.Fp32] };
        var cluster = ClusterSpec.H100Sxm(1) with { DevicesPerNode = 16 };
        Assert.That(Planner.Evaluate(model, cluster, mesh, options).Feasible, Is.True);

        float[] R(long n) { var a = new float[n]; for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) + 1e-3f; return a; }
        var stack = Enumerable.Range(0, layers).Select(_ => new FeedForwardBlockWeights(WeightSource.FromArray(R(h * f), h, f),
            WeightSource.FromArray(R(f), 1, f), WeightSource.FromArray(R(f * h), f, h), WeightSource.FromArray(R(h), 1, h))).ToArray();
        var x = R(rows * h);
        var t = R(rows * h);
        // One device per rank: each device's peak is its rank's.
        int n = pp * dp * tp;
        var devices = Enumerable.Range(0, n).Select(_ => Device.Cpu(1)).ToArray();
        try
        {
            using var world = ProcessGroup.CreateLocal(devices);
            using var dmesh = DeviceMesh.Create(world, ("pp", pp), ("dp", dp), ("tp", tp));
            var peak = new long[n];
            var stage = new int[n];
            var stages = Enumerable.Range(0, tp).Select(r => Planner.StageMemory(model, cluster, mesh, options, r)).ToArray();
            var tpRank = new int[n];
            Spmd.Run(world, ctx =>
            {
                var me = dmesh[ctx.Rank];
                var dpc = me.Group("dp");
                stage[ctx.Rank] = me.Group("pp").Rank;
                tpRank[ctx.Rank] = me.Group("tp").Rank;
                using var xb = ctx.Device.Allocate<float>(rowsPerReplica * h);
                using var tb = ctx.Device.Allocate<float>(rowsPerReplica * h);
                xb.CopyFrom(x.AsSpan((int)(dpc.Rank * rowsPerReplica * h), (int)(rowsPerReplica * h)), ctx.Stream);
                tb.CopyFrom(t.AsSpan((int)(dpc.Rank * rowsPerReplica * h), (int)(rowsPerReplica * h)), ctx.Stream);
                ctx.Synchronize();
                long baseBytes = ctx.Device.AllocatedBytes;
                ctx.Device.ResetPeakAllocatedBytes();
                using var trainer = new FeedForwardStackTrainer(me.Group("pp"), dpc, me.Group("tp"), stack, new PipelineOptions { MicroBatches = mb });
                for (int s = 0; s < 2; s++) trainer.Step(rowsPerReplica, xb.AsMatrix(rowsPerReplica, h), tb.AsMatrix(rowsPerReplica, h), 0.01f);
                ctx.Synchronize();
                peak[ctx.Rank] = ctx.Device.PeakAllocatedBytes - baseBytes;
            });
            for (int r = 0; r < n; r++)
            {
                long predicted = stages[tpRank[r]][stage[r]].Total;
                TestContext.Out.WriteLine($"{layers} blocks H {h} F {f}, {rows} rows, {mb} micro-batches on pp {pp} dp {dp} tp {tp}, rank {r} " +
                                          $"(stage {stage[r]}, tp rank {tpRank[r]}): allocated {peak[r]} B, predicted {predicted} B ({(double)predicted / peak[r]:F4})");
                Assert.That((double)predicted, Is.EqualTo(peak[r]).Within(5).Percent, $"rank {r}: predicted memory vs its device's allocation peak");
            }
        }
        finally
        {
            foreach (var d in devices) d.Dispose();
        }
    }

    [Test]
    public void AClusterWithZeroDevicesOrANegativeWidthIsAnsweredNamingTheMember()
    {
        var model = ModelSpec.Llama7B();
        var e = Assert.Throws<ArgumentException>(() => Planner.Plan(model, ClusterSpec.H100Sxm(1) with { DevicesPerNode = 0 }))!;
        Assert.That(e.Message, Does.Contain("DevicesPerNode = 0").And.Contain("zero devices"));
        e = Assert.Throws<ArgumentException>(() => Planner.Plan(model, ClusterSpec.H100Sxm(0)))!;
        Assert.That(e.Message, Does.Contain("Nodes = 0"));
        e = Assert.Throws<ArgumentException>(() => Planner.Plan(model with { Hidden = -5 }, ClusterSpec.H100Sxm(1)))!;
        Assert.That(e.Message, Does.Contain("Hidden = -5"));
        e = Assert.Throws<ArgumentException>(() => Planner.Plan(model with { Heads = 30 }, ClusterSpec.H100Sxm(1)))!;
        Assert.That(e.Message, Does.Contain("Hidden = 4096 is not a multiple of Heads = 30"));
        e = Assert.Throws<ArgumentException>(() => Planner.Plan(model, ClusterSpec.H100Sxm(1) with { InterNode = new LinkSpec(0, 1e-6) }))!;
        Assert.That(e.Message, Does.Contain("InterNode.BandwidthBytesPerSecond = 0"));
        e = Assert.Throws<ArgumentException>(() => Planner.Plan(model, ClusterSpec.H100Sxm(1), new PlanOptions { Devices = 9 }))!;
        Assert.That(e.Message, Does.Contain("Devices = 9").And.Contain("1..8"));
    }

    [Test]
    public void AModelThatFitsNowhereGetsAVerdictNamingWhatStoodInTheWay()
    {
        var report = Planner.Plan(ModelSpec.Llama70B(), ClusterSpec.H100Sxm(1));
        Assert.That(report.Best, Is.Null);
        Assert.That(report.Ranked, Is.Empty);
        Assert.That(report.Rejected, Is.Not.Empty);
        Assert.That(report.Verdict, Does.Contain("fits on no mesh of 8 devices").And.Contain("more than the").And.Contain("usable"));
        Assert.That(report.Explain(), Does.Contain("meshes rejected"));
        // with enough devices it fits
        Assert.That(Planner.Plan(ModelSpec.Llama70B(), ClusterSpec.H100Sxm(8)).Best, Is.Not.Null);
    }

    [Test]
    public void AMeshThatBreaksADivisibilityRuleIsRejectedWithItsReason()
    {
        var model = ModelSpec.Llama70B();
        var cluster = ClusterSpec.H100Sxm(8);
        string Why(MeshChoice m) => Planner.Evaluate(model, cluster, m).Rejection ?? "";
        Assert.That(Why(new MeshChoice(3, 1, 1, 1024, 1)), Does.Contain("tp = 3 does not divide the 8 key/value heads"));
        Assert.That(Why(new MeshChoice(16, 1, 4, 256, 1)), Does.Contain("tp = 16 does not divide the 8 key/value heads"));
        Assert.That(Why(new MeshChoice(1, 81, 1, 1024, 1)), Does.Contain("81").And.Contain("devices"));
        Assert.That(Why(new MeshChoice(8, 1, 3, 1, 341)), Does.Contain("dp = 3 does not divide the global batch of 1024"));
        Assert.That(Why(new MeshChoice(8, 8, 1, 3, 100)), Does.Contain("is not the global batch of 1024"));
        Assert.That(Why(new MeshChoice(1, 64, 1, 1024, 1)), Does.Contain("1024 × 1 = 1024").Or.Contain("needs"));
        var small = ModelSpec.Llama7B() with { Layers = 2 };
        Assert.That(Planner.Evaluate(small, cluster, new MeshChoice(1, 4, 1, 1024, 1)).Rejection, Does.Contain("pp = 4 is more than the 2 blocks"));
        Assert.That(Planner.Evaluate(model, cluster, new MeshChoice(8, 8, 1, 1, 1024, SequenceParallel: true)).Rejection, Is.Null);
    }

    [Test]
    public void TheRankingIsSortedFitsMemoryAndSlowerLinksNeverSpeedAStepUp()
    {
        var model = ModelSpec.Llama7B();
        var fast = ClusterSpec.H100Sxm(8);
        var slow = fast with { InterNode = fast.InterNode with { BandwidthBytesPerSecond = fast.InterNode.BandwidthBytesPerSecond / 2 } };
        var a = Planner.Plan(model, fast);
        var b = Planner.Plan(model, slow);
        Assert.That(a.Best, Is.Not.Null);
        Assert.That(a.Ranked.Select(p => p.StepSeconds), Is.Ordered);
        Assert.That(a.Ranked.All(p => p.Memory.Total <= p.MemoryLimit && p.Mesh.Devices == 64), Is.True);
        Assert.That(a.Rejected.All(p => !string.IsNullOrEmpty(p.Rejection)), Is.True);
        var slower = b.Ranked.Concat(b.Rejected).ToDictionary(p => p.Mesh);
        foreach (var p in a.Ranked.Concat(a.Rejected).Where(p => p.Rejection is null || p.Memory.Total > 0))
            Assert.That(slower[p.Mesh].StepSeconds, Is.GreaterThanOrEqualTo(p.StepSeconds * (1 - 1e-12)), p.Mesh.ToString());
        Assert.That(b.Best!.StepSeconds, Is.GreaterThanOrEqualTo(a.Best!.StepSeconds * (1 - 1e-12)));
        // the memory of a mesh does not depend on the links
        foreach (var p in a.Ranked.Take(20))
            Assert.That(slower[p.Mesh].Memory, Is.EqualTo(p.Memory));
        // less kept, less memory: full recomputation ≤ selective ≤ none; sequence parallelism ≤ none
        var m = new MeshChoice(4, 2, 8, 2, 64);
        Assert.That(Planner.Evaluate(model, fast, m).Memory.Activations, Is.GreaterThan(0), "a valid mesh (it may not fit)");
        long Mem(MeshChoice c) => Planner.Evaluate(model, fast, c).Memory.Activations;
        Assert.That(Mem(m with { Recompute = Recompute.Full }), Is.LessThan(Mem(m with { Recompute = Recompute.Selective })));
        Assert.That(Mem(m with { Recompute = Recompute.Selective }), Is.LessThan(Mem(m)));
        Assert.That(Mem(m with { SequenceParallel = true }), Is.LessThan(Mem(m)));
        Assert.That(a.Explain(), Does.Contain("why:").And.Contain("runner-up"));
    }

    [Test]
    public void CollectivesFollowTheAlphaBetaRingFormulasOnTheLinkTheyCross()
    {
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        var intra = new LinkSpec(rng.Next(10, 500) * 1e9, rng.Next(1, 10) * 1e-6);
        var inter = new LinkSpec(rng.Next(5, 60) * 1e9, rng.Next(3, 20) * 1e-6);
        var c = ClusterSpec.H100Sxm(2) with { IntraNode = intra, InterNode = inter };
        for (int trial = 0; trial < 20; trial++)
        {
            int p = rng.Next(2, 17);
            double n = rng.Next(1, 1 << 30);
            foreach (bool crosses in new[] { false, true })
            {
                var l = crosses ? inter : intra;
                double steps = p - 1, share = n / p / l.BandwidthBytesPerSecond;
                Assert.That(Planner.CollectiveSeconds(c, CollectiveKind.AllReduce, p, n, crosses),
                    Is.EqualTo(2 * steps * (l.LatencySeconds + share)).Within(1e-9).Percent);
                Assert.That(Planner.CollectiveSeconds(c, CollectiveKind.AllGather, p, n, crosses),
                    Is.EqualTo(steps * (l.LatencySeconds + share)).Within(1e-9).Percent);
                Assert.That(Planner.CollectiveSeconds(c, CollectiveKind.SendRecv, p, n, crosses),
                    Is.EqualTo(l.LatencySeconds + n / l.BandwidthBytesPerSecond).Within(1e-9).Percent);
            }
        }
        // a measured fit wins inside a node, not across nodes
        var fitted = c with { Collectives = [new CollectiveFit(CollectiveKind.AllReduce, 4, 1e-3, 1e-9)] };
        Assert.That(Planner.CollectiveSeconds(fitted, CollectiveKind.AllReduce, 4, 1e6, false), Is.EqualTo(1e-3 + 1e6 * 1e-9).Within(1e-9).Percent);
        Assert.That(Planner.CollectiveSeconds(fitted, CollectiveKind.AllReduce, 4, 1e6, true),
            Is.EqualTo(Planner.CollectiveSeconds(c, CollectiveKind.AllReduce, 4, 1e6, true)));
    }

    [Test]
    public void TheGemmCurveIsExactOnItsGridInterpolatesBetweenAndSurvivesJson()
    {
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        var samples = new List<GemmSample>();
        long[] axis = [4, 64, 1024];
        foreach (long m in axis) foreach (long n in axis) foreach (long k in axis)
            if (!(m == 1024 && n == 1024 && k == 1024)) // a hole, filled from the largest measured shape below it
                samples.Add(new GemmSample(m, n, k, 2.0 * m * n * k / (1e9 * (1 + rng.NextDouble() * 50)), rng.NextDouble() < 0.5 ? 0 : 1e-4 * (1 + rng.NextDouble())));
        var curve = new GemmCurve(samples);
        foreach (var s in samples)
        {
            Assert.That(curve.Seconds(s.M, s.N, s.K), Is.EqualTo(s.Seconds).Within(1e-9).Percent);
            Assert.That(curve.Seconds(s.M, s.N, s.K, shared: true), Is.EqualTo(s.SharedSeconds > 0 ? s.SharedSeconds : s.Seconds).Within(1e-9).Percent);
        }
        // between two grid points in one dimension: the efficiency between theirs (log-linear)
        var lo = samples.First(s => s.M == 4 && s.N == 64 && s.K == 64);
        var hi = samples.First(s => s.M == 64 && s.N == 64 && s.K == 64);
        double mid = curve.Seconds(16, 64, 64), effMid = 2.0 * 16 * 64 * 64 / mid;
        double e1 = lo.Flops / lo.Seconds, e2 = hi.Flops / hi.Seconds;
        Assert.That(effMid, Is.EqualTo(Math.Sqrt(e1 * e2)).Within(1e-6).Percent, "16 is halfway between 4 and 64 in log");
        // beyond the grid: the edge's efficiency
        Assert.That(2.0 * 4096 * 64 * 64 / curve.Seconds(4096, 64, 64), Is.EqualTo(samples.First(s => s.M == 1024 && s.N == 64 && s.K == 64) is var e ? e.Flops / e.Seconds : 0).Within(1e-6).Percent);
        // the hole: the best efficiency measured at a shape no larger
        double best = samples.Max(s => s.Flops / s.Seconds);
        Assert.That(2.0 * 1024 * 1024 * 1024 / curve.Seconds(1024, 1024, 1024), Is.EqualTo(best).Within(1e-6).Percent);

        var spec = ClusterSpec.H200Sxm(3, LinkSpec.RoCe400) with
        {
            Gemm = curve, FeedForwardBlock = curve, SharedCompute = true, CoresPerNode = 5, SharedRanks = 4, ActivationBytesPerSecond = 1.5e9,
            Collectives = [new CollectiveFit(CollectiveKind.GradientAverage, 4, 1e-4, 2e-10, Shared: true), new CollectiveFit(CollectiveKind.SendRecv, 2, 3e-6, 1e-11)],
        };
        var back = ClusterSpec.FromJson(spec.ToJson());
        Assert.That(back with { Gemm = null, FeedForwardBlock = null, Collectives = [] },
            Is.EqualTo(spec with { Gemm = null, FeedForwardBlock = null, Collectives = [] }));
        Assert.That(back.Collectives, Is.EqualTo(spec.Collectives));
        Assert.That(back.Gemm!.Samples, Is.EqualTo(curve.Samples));
        Assert.That(back.FeedForwardBlock!.Samples, Is.EqualTo(curve.Samples));
        var bad = Assert.Throws<FormatException>(() => ClusterSpec.FromJson(spec.ToJson().Replace("\"memoryBytesPerDevice\"", "\"memory\"")))!;
        Assert.That(bad.Message, Does.Contain("memoryBytesPerDevice"));
    }

    [Test]
    public void TheCalibrationMeasuresThisMachineIntoAUsableClusterDescription()
    {
        using var device = Device.Cpu();
        var options = new CalibrationOptions
        {
            GemmM = [4, 64], GemmN = [64, 256], GemmK = [64, 256], BlockRows = [4, 32], BlockShare = [64, 128], BlockHidden = [32, 64],
            GroupSizes = [2], CollectiveBytes = [4096, 262144], MinSeconds = 0.002,
        };
        var lines = new List<string>();
        var spec = ClusterCalibration.Measure(device, 4, options, lines.Add);
        TestContext.Out.WriteLine(string.Join(Environment.NewLine, lines));
        Assert.That(spec.Problems(), Is.Empty);
        Assert.That(spec.SharedCompute && spec.DevicesPerNode == 4 && spec.SharedRanks == 4 && spec.CoresPerNode == device.NumThreads, Is.True);
        Assert.That(spec.Gemm!.Samples, Has.Count.EqualTo(8));
        Assert.That(spec.FeedForwardBlock!.Samples, Has.Count.EqualTo(8));
        Assert.That(spec.Gemm.Samples.All(s => s.Seconds > 0 && s.SharedSeconds > 0), Is.True);
        foreach (var kind in Enum.GetValues<CollectiveKind>())
        {
            Assert.That(spec.Collectives.Count(f => f.Kind == kind && f.Ranks == 2 && !f.Shared), Is.EqualTo(1), kind.ToString());
            Assert.That(spec.Collectives.Count(f => f.Kind == kind && f.Ranks == 2 && f.Shared), Is.EqualTo(1), kind.ToString());
        }
        Assert.That(spec.Fp32FlopsPerSecond, Is.EqualTo(spec.Gemm.Samples.Max(s => s.Flops / s.Seconds)));
        Assert.That(ClusterSpec.FromJson(spec.ToJson()).ToJson(), Is.EqualTo(spec.ToJson()));
        // the description plans the hybrid example
        var report = Planner.Plan(ModelSpec.FeedForwardStack(4, 32, 64, 16), spec,
            new PlanOptions { Optimizer = OptimizerKind.Sgd, Precisions = [TrainingPrecision.Fp32] });
        Assert.That(report.Best, Is.Not.Null, report.Explain());
        Assert.That(report.Best!.StepSeconds, Is.GreaterThan(0).And.LessThan(1));
        Assert.That(string.Format(CultureInfo.InvariantCulture, "{0}", report.Explain()), Does.Contain("tp "));
    }

    [Test]
    public void TheProcessCalibrationRefusesAnInProcessGroupNamingIt()
    {
        using var device = Device.Cpu(1);
        using var group = ProcessGroup.CreateLocal(device, 2);
        var e = Assert.Throws<ArgumentException>(() => ClusterCalibration.Measure(group))!;
        Assert.That(e.ParamName, Is.EqualTo("world"));
        Assert.That(e.Message, Does.Contain("in-process group of 2 virtual ranks").And.Contain("Measure(device, virtualRanks)"));
    }
}
