using Shardwise.Bindings;

namespace Shardwise.Tests;

/// <summary>Spmd.Run in a multi-process group (one rank per process): a body that throws aborts the group, and the
/// transport's abort notice tells the other processes at once.</summary>
public sealed partial class MultiProcessTests
{
    [Test]
    public void Tcp_SpmdBodyThrows_OthersFailAtOnce_NamingTheRankAndItsException()
    {
        string dir = NewOutDir();
        try
        {
            // 60 s timeout: ranks that waited for it instead of the abort notice are told apart by "under 20 s".
            var results = RunTcp(3, "spmd-throw", dir, timeoutMs: 60000);
            Assert.That(results[2].Error, Is.EqualTo(nameof(InvalidOperationException)), results[2].Line);
            Assert.That(results[2].Message, Does.Contain("boom"));
            foreach (var r in results.Take(2))
            {
                Assert.That(r.Error, Is.EqualTo(nameof(CommunicatorAbortedException)), $"rank {r.Rank}: {r.Line}");
                Assert.That(r.Message, Does.Contain("rank 2 failed in Spmd.Run: InvalidOperationException: boom"), $"rank {r.Rank}");
                Assert.That(r.Ms, Is.LessThan(20000), $"rank {r.Rank} took {r.Ms} ms to notice (timeout 60 s): expected at once");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public void Mpi_SpmdBodyThrows_OthersFailAtOnce_NamingTheRankAndItsException()
    {
        string dir = NewOutDir();
        try
        {
            var (_, output, _) = RunMpi(3, "spmd-throw", dir, timeoutMs: 60000);
            var lines = output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("RESULT rank=")).ToArray();
            // Ranks 0 and 1 must report; rank 2's own line may be missing: once a communicator failed MPI_Finalize is
            // skipped, and mpirun ends the job as soon as the first rank exits with a non-zero code.
            Assert.That(lines.Count(l => !l.StartsWith("RESULT rank=2 ")), Is.EqualTo(2), output);
            if (lines.SingleOrDefault(l => l.StartsWith("RESULT rank=2 ")) is { } own)
                Assert.That(own, Does.Contain("error=InvalidOperationException").And.Contain("boom"));
            foreach (var l in lines.Where(l => !l.StartsWith("RESULT rank=2 ")))
            {
                Assert.That(l, Does.Contain("error=CommunicatorAbortedException")
                    .And.Contain("rank 2 failed in Spmd.Run: InvalidOperationException: boom"));
                long ms = long.Parse(l[(l.IndexOf(" ms=", StringComparison.Ordinal) + 4)..].Split(' ')[0]);
                Assert.That(ms, Is.LessThan(20000), $"{l}: took {ms} ms to notice (timeout 60 s): expected at once");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
