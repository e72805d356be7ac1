using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

// TP-invariant numerics with real processes (issue 19): the worker's "invariant" scenario (the FFN's forward and every
// gradient, a sequence-parallel row-parallel output; GemmReductionLeaf = 8) as p processes over the TCP group (shared
// memory on one host) and over MPI must give every rank exactly the bits of one in-process rank (p = 1); and the
// hybrid-parallel example as 8 processes (2 x 2 x tp = 2) the bits of the same mesh with tp = 1 in one process.
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

    // The mesh 2 x 2 x tp = 1 in one process, TP-invariant: what 8 processes with tp = 2 must equal.
    private static void CheckHybridInvariant(string dir, int seed)
    {
        var d = new HybridScenario.Data(seed);
        var fromFiles = Enumerable.Range(0, 8).Select(r => HybridWorker.Read(dir, r)).ToArray();
        var local = new (int, float[], float[], float[], float[])[4][];
        using var device = Device.Cpu(1);
        device.GemmReductionLeaf = HybridLeaf;
        using (var world = ProcessGroup.CreateLocal(device, 4, TimeSpan.FromSeconds(20)))
        using (var mesh = HybridScenario.Mesh(world, HybridWorker.Pp, HybridWorker.Dp, 1))
            Spmd.Run(world, ctx => local[ctx.Rank] = HybridScenario.Train(mesh[ctx.Rank], d, out _));
        for (int replica = 0; replica < HybridWorker.Dp; replica++)
        {
            var multi = HybridScenario.Assemble(fromFiles, HybridWorker.Pp, HybridWorker.Dp, HybridWorker.Tp, replica, HybridLeaf);
            var single = HybridScenario.Assemble(local, HybridWorker.Pp, HybridWorker.Dp, 1, replica, HybridLeaf);
            for (int l = 0; l < HybridScenario.Layers; l++)
                for (int k = 0; k < 4; k++)
                    Reference.AssertBitwise(multi[l][k], single[l][k], $"replica {replica} layer {l} param {k}: 8 processes (tp = 2) vs tp = 1");
        }
    }

    [Test]
    public void Launcher_HybridMesh_TpInvariant_EqualsTp1()
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
                new Dictionary<string, string> { ["SW_TEST_SEED"] = $"{seed}", ["SW_TEST_TIMEOUT_MS"] = "20000",
                    ["SW_TEST_REDUCTION_LEAF"] = $"{HybridLeaf}" })])[0];
            Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
            CheckHybridInvariant(dir, seed);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void Mpi_HybridMesh_TpInvariant_EqualsTp1()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var (exit, output, _) = RunMpi(8, "hybrid", dir, seed, timeoutMs: 20000,
                extraEnv: new Dictionary<string, string> { ["SW_TEST_REDUCTION_LEAF"] = $"{HybridLeaf}" });
            Assert.That(exit, Is.EqualTo(0), output);
            CheckHybridInvariant(dir, seed);
        }
        finally { Directory.Delete(dir, true); }
    }
}
