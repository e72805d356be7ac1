using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

// TP-invariant numerics with real processes (issue 19): the worker's "invariant" scenario (the FFN's forward and every
// gradient, a sequence-parallel row-parallel output; GemmReductionLeaf = 8) as p processes over the TCP group (shared
// memory on one host) and over MPI must give every rank exactly the bits of one in-process rank (p = 1); and the
// hybrid-parallel example as processes (2 x 2 x 2 and 1 x 1 x 8 under the launcher, 2 x 2 x 2 and 1 x 1 x 4 under
// mpirun) the bits of the same mesh with tp = 1 in one process.
public sealed partial class MultiProcessTests
{
    private static float[] InvariantOneRank(int seed)
    {
        using var device = Device.Cpu(1);
        device.GemmReductionLeaf = InvariantScenario.Leaf;
        using var one = ProcessGroup.CreateLocal(device, 1, TimeSpan.FromSeconds(30));
        float[] result = [];
        Spmd.Run(one, ctx => result = InvariantScenario.Run(ctx, new InvariantScenario.Data(seed)));
        return result;
    }

    private static void CheckInvariant(int p, int seed, string dir)
    {
        var one = InvariantOneRank(seed);
        Assert.That(one.All(float.IsFinite), Is.True, "p = 1: every output written");
        for (int r = 0; r < p; r++)
            Reference.AssertBitwise(ReadFloats(Path.Combine(dir, $"invariant.rank{r}.bin")), InvariantScenario.Expected(one, p, r),
                $"process {r} of {p} vs one rank (Y, dX, SP rows, gradient shards)");
    }

    [Test]
    public void Tcp_TpInvariantFfn_EqualsOneRank_BitForBit([Values(2, 4, 8)] int p)
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var results = RunTcp(p, "invariant", dir, seed);
            foreach (var r in results) Assert.That(r.Ok && r.ExitCode == 0, $"rank {r.Rank}: exit {r.ExitCode}, {r.Line}");
            CheckInvariant(p, seed, dir);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void Mpi_TpInvariantFfn_EqualsOneRank_BitForBit([Values(2, 4)] int p)
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var (exit, output, _) = RunMpi(p, "invariant", dir, seed);
            Assert.That(exit, Is.EqualTo(0), output);
            Assert.That(output, Does.Contain($"world={p} backend=mpi"));
            CheckInvariant(p, seed, dir);
        }
        finally { Directory.Delete(dir, true); }
    }

    private const long HybridLeaf = 2; // F = 12: 6 leaves

    // The mesh pp x dp x tp = 1 in one process, TP-invariant: what pp·dp·tp processes must equal.
    private static void CheckHybridInvariant(string dir, int seed, int pp, int dp, int tp)
    {
        var d = new HybridScenario.Data(seed);
        var fromFiles = Enumerable.Range(0, pp * dp * tp).Select(r => HybridWorker.Read(dir, r)).ToArray();
        var local = new (int, float[], float[], float[], float[])[pp * dp][];
        using var device = Device.Cpu(1);
        device.GemmReductionLeaf = HybridLeaf;
        using (var world = ProcessGroup.CreateLocal(device, pp * dp, TimeSpan.FromSeconds(20)))
        using (var mesh = HybridScenario.Mesh(world, pp, dp, 1))
            Spmd.Run(world, ctx => local[ctx.Rank] = HybridScenario.Train(mesh[ctx.Rank], d, out _));
        for (int replica = 0; replica < dp; replica++)
        {
            var multi = HybridScenario.Assemble(fromFiles, pp, dp, tp, replica, HybridLeaf);
            var single = HybridScenario.Assemble(local, pp, dp, 1, replica, HybridLeaf);
            for (int l = 0; l < HybridScenario.Layers; l++)
                for (int k = 0; k < 4; k++)
                    Reference.AssertBitwise(multi[l][k], single[l][k],
                        $"replica {replica} layer {l} param {k}: {pp * dp * tp} processes ({pp} x {dp} x tp = {tp}) vs tp = 1");
        }
    }

    [TestCase(2, 2, 2)]
    [TestCase(1, 1, 8)]
    public void Launcher_HybridMesh_TpInvariant_EqualsTp1(int pp, int dp, int tp)
    {
        var (host, prefix) = WorkerCommand();
        string launcher = Path.Combine(AppContext.BaseDirectory, "launcher", "shardwise.dll");
        Assert.That(File.Exists(launcher), Is.True, $"launcher not built at {launcher}");
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var job = Collect([Start(host, [launcher, "launch", "-n", $"{pp * dp * tp}", "--", host, .. prefix, "hybrid", dir],
                new Dictionary<string, string> { ["SW_TEST_SEED"] = $"{seed}", ["SW_TEST_TIMEOUT_MS"] = "20000",
                    ["SW_TEST_REDUCTION_LEAF"] = $"{HybridLeaf}", ["SW_TEST_MESH"] = $"{pp}x{dp}x{tp}" })])[0];
            Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
            CheckHybridInvariant(dir, seed, pp, dp, tp);
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestCase(2, 2, 2)]
    [TestCase(1, 1, 4)]
    public void Mpi_HybridMesh_TpInvariant_EqualsTp1(int pp, int dp, int tp)
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var (exit, output, _) = RunMpi(pp * dp * tp, "hybrid", dir, seed, timeoutMs: 20000,
                extraEnv: new Dictionary<string, string> { ["SW_TEST_REDUCTION_LEAF"] = $"{HybridLeaf}", ["SW_TEST_MESH"] = $"{pp}x{dp}x{tp}" });
            Assert.That(exit, Is.EqualTo(0), output);
            CheckHybridInvariant(dir, seed, pp, dp, tp);
        }
        finally { Directory.Delete(dir, true); }
    }
}
