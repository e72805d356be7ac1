using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

// The end-to-end example as 8 processes (HybridWorker: a 2 x 2 x 2 mesh), under `shardwise launch` (TCP) and under
// mpirun: the weights after training must equal the same mesh of virtual ranks in one process bit for bit (the same
// GEMMs, and collectives that sum in rank order whatever the transport), and the single-rank run within the tolerance
// of PipelineEndToEndTests.
public sealed partial class MultiProcessTests
{
    private static void CheckHybrid(string dir, int seed, string output)
    {
        var d = new HybridScenario.Data(seed);
        var fromFiles = Enumerable.Range(0, 8).Select(r => HybridWorker.Read(dir, r)).ToArray();
        // The same mesh in one process.
        var local = new (int, float[], float[], float[], float[])[8][];
        using (var device = Device.Cpu(1))
        using (var world = ProcessGroup.CreateLocal(device, 8, TimeSpan.FromSeconds(20)))
        {
            using (var mesh = HybridScenario.Mesh(world, HybridWorker.Pp, HybridWorker.Dp, HybridWorker.Tp))
                Spmd.Run(world, ctx => local[ctx.Rank] = HybridScenario.Train(mesh[ctx.Rank], d, out _));
            for (int replica = 0; replica < HybridWorker.Dp; replica++)
            {
                var multi = HybridScenario.Assemble(fromFiles, HybridWorker.Pp, HybridWorker.Dp, HybridWorker.Tp, replica);
                var single = HybridScenario.Assemble(local, HybridWorker.Pp, HybridWorker.Dp, HybridWorker.Tp, replica);
                for (int l = 0; l < HybridScenario.Layers; l++)
                    for (int k = 0; k < 4; k++)
                        Reference.AssertBitwise(multi[l][k], single[l][k], $"replica {replica} layer {l} param {k}: 8 processes vs 8 virtual ranks");
                if (replica == 0)
                    PipelineEndToEndTests.AssertWeightsClose(multi, PipelineEndToEndTests.TrainSingleRank(device, d, out _), d, "8 processes vs one rank");
            }
        }
    }

    [Test]
    public void Launcher_HybridMesh2x2x2_EqualsVirtualRanksAndOneRank()
    {
        var (host, prefix) = WorkerCommand();
        string launcher = Path.Combine(AppContext.BaseDirectory, "launcher", "shardwise.dll");
        Assert.That(File.Exists(launcher), Is.True, $"launcher not built at {launcher}");
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var job = Collect([Start(host, [launcher, "launch", "-n", "8", "--", host, .. prefix, "hybrid", dir],
                new Dictionary<string, string> { ["SW_TEST_SEED"] = $"{seed}", ["SW_TEST_TIMEOUT_MS"] = "20000" })])[0];
            Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
            for (int r = 0; r < 8; r++) Assert.That(job.Out, Does.Contain($"[rank {r}] RESULT rank={r} ok"));
            CheckHybrid(dir, seed, job.Out);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void Mpi_HybridMesh2x2x2_EqualsVirtualRanksAndOneRank()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var (exit, output, _) = RunMpi(8, "hybrid", dir, seed, timeoutMs: 20000);
            Assert.That(exit, Is.EqualTo(0), output);
            Assert.That(output.Split('\n').Count(l => l.Trim().StartsWith("RESULT rank=") && l.Trim().EndsWith(" ok")), Is.EqualTo(8), output);
            CheckHybrid(dir, seed, output);
        }
        finally { Directory.Delete(dir, true); }
    }
}
