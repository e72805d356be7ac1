namespace Shardwise.Tests;

/// <summary>
/// Which rank the launcher blames when several fail at about the same time: a rank killed by a signal is the cause its
/// peers react to (they notice its death and exit with an error of their own, sometimes before the launcher has noticed
/// the killed rank), so within the blame window (up to 1 s after the first failure) the launcher names the killed rank
/// and exits with 128 + its signal.
/// </summary>
public partial class LauncherTests
{
    /// <summary>A survivor exits with 1 before the killed rank dies (deterministic: the order is forced). The killed rank
    /// is blamed, the survivor's exit is mentioned, and the launcher exits with 137.</summary>
    [Test]
    public void AKilledRankIsBlamedOverASurvivorThatExitedFirst()
    {
        string dir = Directory.CreateTempSubdirectory("shardwise-blame-").FullName;
        try
        {
            // Rank 1 holds a FIFO open and exits 1; rank 2 sees the FIFO close (rank 1 is gone), waits 0.1 s and dies of
            // SIGKILL, within the launcher's blame window; rank 0 sleeps.
            string fifo = Path.Combine(dir, "link");
            using (var mk = System.Diagnostics.Process.Start("mkfifo", [fifo]))
                mk.WaitForExit();
            string script =
                $"case $RANK in 1) exec 3> '{fifo}'; echo survivor; exit 1;; " +
                $"2) read x < '{fifo}'; sleep 0.1; kill -KILL $$;; esac; sleep 60; echo done";
            using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c", script);
            Assert.That(run.ExitCode, Is.EqualTo(128 + 9), run.StdErr);
            Assert.That(run.StdErr, Does.Contain("rank 2 exited with code 137 (128+9: killed by SIGKILL); rank 1 also exited with code 1; stopping the other rank"));
            Assert.That(run.Out, Has.None.Contains("done"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The race of a real job, repeated: rank 2 is killed by SIGKILL, and rank 1 notices at once (its read of a FIFO that
    /// rank 2 held open ends when rank 2's files close, as a TCP peer sees the connection drop) and exits with 1. The
    /// launcher often learns of both exits together; every trial must name rank 2 and signal 9. (Before the blame window,
    /// several of these trials named rank 1 and exited 1.)
    /// </summary>
    [Test]
    public void AKilledRankIsBlamedEvenWhenAPeerNoticesItsDeathFirst([Values(12)] int trials)
    {
        var wrong = new List<string>();
        for (int t = 0; t < trials; t++)
        {
            string dir = Directory.CreateTempSubdirectory("shardwise-race-").FullName;
            try
            {
                string fifo = Path.Combine(dir, "link");
                using (var mk = System.Diagnostics.Process.Start("mkfifo", [fifo]))
                    mk.WaitForExit();
                string script =
                    $"case $RANK in 1) read x < '{fifo}'; echo noticed; exit 1;; " +
                    $"2) exec 3> '{fifo}'; kill -KILL $$;; esac; sleep 60; echo done";
                using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c", script);
                bool right = run.ExitCode == 128 + 9 && run.StdErr.Contains("rank 2 exited with code 137 (128+9: killed by SIGKILL)");
                if (!right) wrong.Add($"trial {t}: exit {run.ExitCode}: {run.StdErr}");
                Assert.That(run.Out, Has.None.Contains("done"));
            }
            finally
            {
                Directory.Delete(dir, recursive: true);
            }
        }
        Assert.That(wrong, Is.Empty, $"{wrong.Count} of {trials} trials blamed the wrong rank:\n{string.Join("\n", wrong)}");
    }

    /// <summary>SIGABRT is how .NET ends a rank on an unhandled exception, e.g. a peer's abort notice that the rank did
    /// not catch: it is a consequence like a non-zero exit, so the rank that exited first (with 3) is blamed, not the
    /// one that aborted after it.</summary>
    [Test]
    public void ARankEndedBySigabrtAfterAPeerFailedIsNotBlamed()
    {
        string dir = Directory.CreateTempSubdirectory("shardwise-abrt-").FullName;
        try
        {
            string fifo = Path.Combine(dir, "link");
            using (var mk = System.Diagnostics.Process.Start("mkfifo", [fifo]))
                mk.WaitForExit();
            string script =
                $"case $RANK in 1) exec 3> '{fifo}'; echo failing; exit 3;; " +
                $"2) read x < '{fifo}'; sleep 0.1; kill -ABRT $$;; esac; sleep 60; echo done";
            using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c", script);
            Assert.That(run.ExitCode, Is.EqualTo(3), run.StdErr);
            Assert.That(run.StdErr, Does.Contain("rank 1 exited with code 3; rank 2 also exited with code 134 (128+6: killed by SIGABRT); stopping the other rank"));
            Assert.That(run.Out, Has.None.Contains("done"));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
