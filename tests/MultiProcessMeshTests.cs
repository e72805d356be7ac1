namespace Shardwise.Tests;

// Hybrid parallelism across real processes: the "mesh" scenario of the worker (MeshScenario in MultiProcess/Scenario.cs):
// a 2 x 2 DeviceMesh built from a TCP group of 4 processes (torchrun's environment, and `shardwise launch`) and from
// mpirun; each group's members, as every rank all-gathered them, checked here against the row-major layout; the dp
// all-reduce, a split with send / recv of float and Half and a ring of BFloat16 SendRecv steps are checked bit for bit
// inside the workers (each regenerates its peers' data from the seed).
public sealed partial class MultiProcessTests
{
    // (dp, tp) = (w / 2, w % 2): dp groups {w % 2, w % 2 + 2}, tp groups {2·(w / 2), 2·(w / 2) + 1}.
    private static void CheckMeshOutput(IReadOnlyList<string> outputs)
    {
        // the launcher prefixes each line with "[rank R] "
        var lines = outputs.SelectMany(o => o.Split('\n')).Select(l => l.Trim())
            .Select(l => l.StartsWith('[') && l.Contains("] ") ? l[(l.IndexOf("] ", StringComparison.Ordinal) + 2)..] : l)
            .Where(l => l.StartsWith("GROUP ", StringComparison.Ordinal) || l.StartsWith("SPLIT ", StringComparison.Ordinal)).ToHashSet();
        Assert.That(lines, Has.Count.EqualTo(16), "3 GROUP lines and 1 SPLIT line from each of the 4 ranks");
        for (int w = 0; w < 4; w++)
        {
            int dp = w / 2, tp = w % 2;
            Assert.That(lines, Does.Contain($"GROUP rank={w} dims=dp sub={dp} members={tp},{tp + 2}"));
            Assert.That(lines, Does.Contain($"GROUP rank={w} dims=tp sub={tp} members={2 * dp},{2 * dp + 1}"));
            Assert.That(lines, Does.Contain($"GROUP rank={w} dims=dp,tp sub={w} members=0,1,2,3"));
            Assert.That(lines, Does.Contain($"SPLIT rank={w} sub={(w < 2 ? 1 : 0)} of 2"), "colour rank % 2, key -rank");
        }
    }

    [Test]
    public void Tcp_MeshSplitAndPointToPoint()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var results = RunTcp(4, "mesh", seed: seed, timeoutMs: 20000);
        foreach (var r in results) Assert.That(r.Ok && r.ExitCode == 0, $"rank {r.Rank}: exit {r.ExitCode}, {r.Line}");
        CheckMeshOutput(results.Select(r => r.Output).ToList());
    }

    [Test]
    public void Launcher_MeshSplitAndPointToPoint()
    {
        var (host, prefix) = WorkerCommand();
        string launcher = Path.Combine(AppContext.BaseDirectory, "launcher", "shardwise.dll");
        Assert.That(File.Exists(launcher), Is.True, $"launcher not built at {launcher}");
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var job = Collect([Start(host, [launcher, "launch", "-n", "4", "--", host, .. prefix, "mesh"],
            new Dictionary<string, string> { ["SW_TEST_SEED"] = $"{seed}", ["SW_TEST_TIMEOUT_MS"] = "20000" })])[0];
        Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
        for (int r = 0; r < 4; r++) Assert.That(job.Out, Does.Contain($"[rank {r}] RESULT rank={r} ok"));
        CheckMeshOutput([job.Out]);
    }

    [Test]
    public void Mpi_MeshSplitAndPointToPoint()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        var (exit, output, _) = RunMpi(4, "mesh", seed: seed, timeoutMs: 20000);
        Assert.That(exit, Is.EqualTo(0), output);
        Assert.That(output.Split('\n').Count(l => l.Trim().StartsWith("RESULT rank=") && l.Trim().EndsWith(" ok")), Is.EqualTo(4), output);
        Assert.That(output, Does.Contain("world=4 backend=mpi"));
        CheckMeshOutput([output]);
    }

    // The "split-late" scenario: rank 3 late in sub-group {1, 3}; rank 1 times out naming it (sub rank 1, parent rank 3);
    // ranks 0 and 2, busy in the healthy sub-group {0, 2}, are aborted with the family, long before their own timeout.
    // mpirun ends the job (killing the still sleeping rank 3) once a rank exits with an error: then rank 3 reports nothing.
    private static void CheckSplitLate(IReadOnlyList<RankResult> results, int timeoutMs, bool lateRankMayBeKilled = false)
    {
        Assert.That(results.Select(r => r.Rank).Where(r => !lateRankMayBeKilled || r != 3), Is.EquivalentTo(new[] { 0, 1, 2, 3 }.Take(lateRankMayBeKilled ? 3 : 4)));
        var one = results.Single(r => r.Rank == 1);
        Assert.That(one.Error, Is.EqualTo("CollectiveTimeoutException"), one.Line);
        Assert.That(one.Message, Does.Contain("rank(s) 1 (parent rank 3)"), one.Line);
        foreach (var r in results.Where(r => r.Rank % 2 == 0))
        {
            Assert.That(r.Error, Is.EqualTo("CommunicatorAbortedException"), $"rank {r.Rank}: {r.Line}");
            Assert.That(r.Message, Does.Contain("parent rank 3"), $"rank {r.Rank}: {r.Line}");
            Assert.That(r.Ms, Is.LessThan(2 * timeoutMs), $"rank {r.Rank} is aborted with the family, not at a timeout of its own");
        }
        Assert.That(results.Where(r => r.Rank == 3).All(r => !r.Ok), Is.True, "the late rank finds its group aborted");
    }

    [Test]
    public void Tcp_ALateRankInOneSubGroupAbortsTheOther()
    {
        const int timeoutMs = 1500;
        var results = RunTcp(4, "split-late", timeoutMs: timeoutMs);
        CheckSplitLate(results, timeoutMs);
    }

    [Test]
    public void Mpi_ALateRankInOneSubGroupAbortsTheOther()
    {
        // The timeout also bounds the creation, where Open MPI's MPI_Init waits for every process: under ASan on a
        // loaded 2-core machine 1.5 s is sometimes too short for the job to start (three times in a row in one CI
        // run). A run whose MPI_Init timed out ("RESULT rank=?") never reached the split, so it says nothing about the
        // property under test: it is run again with a longer timeout (3 s, then 4 s: the late rank sleeps 2.5 of
        // them); a third such start fails the test.
        // mpirun ends the job as soon as a rank exits with an error (rank 1, at its timeout), and may kill rank 0 or 2
        // before they print the result they already have (about one run in ten here): such a run did not fail the
        // property either; it is run again (at most three runs of either kind in all).
        int[] timeouts = [1500, 3000, 4000];
        int timeoutMs = timeouts[0];
        string output = "";
        TimeSpan took = TimeSpan.Zero;
        List<RankResult> results = [];
        for (int attempt = 1, slowStarts = 0; ; attempt++)
        {
            timeoutMs = timeouts[Math.Min(slowStarts, timeouts.Length - 1)];
            (_, output, took) = RunMpi(4, "split-late", timeoutMs: timeoutMs);
            results = output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("RESULT rank=", StringComparison.Ordinal))
                .Select(l => new RankResult(l.StartsWith("RESULT rank=?", StringComparison.Ordinal) ? -1 : int.Parse(l["RESULT rank=".Length..].Split(' ')[0]), 0, l))
                .ToList();
            bool slowStart = output.Contains("RESULT rank=?", StringComparison.Ordinal);
            bool cutShort = !slowStart && output.Contains("the job has been aborted", StringComparison.Ordinal)
                && new[] { 0, 1, 2 }.Any(r => results.All(x => x.Rank != r));
            if (!slowStart && !cutShort) break;
            if (slowStart)
            {
                Assert.That(output, Does.Contain("MPI_Init_thread did not return before the timeout"),
                    "a rank failed before it knew its rank for another reason than a slow MPI_Init");
                slowStarts++;
            }
            Assert.That(attempt, Is.LessThan(3), "three runs in a row were cut short (slow MPI_Init, or mpirun ending the job before a rank reported):\n" + output);
            TestContext.Out.WriteLine(slowStart
                ? $"attempt {attempt}: MPI_Init did not finish within {timeoutMs} ms (slow start); running again"
                : $"attempt {attempt}: mpirun ended the job before every rank reported; running again");
        }
        CheckSplitLate(results, timeoutMs * MpiTimeoutScale, lateRankMayBeKilled: true);
        Assert.That(took, Is.LessThan(TimeSpan.FromSeconds(60)));
    }
}
