using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;

namespace Shardwise.Tests;

/// <summary>
/// <c>shardwise launch</c>, run as a real process (<c>dotnet launcher/shardwise.dll</c>, copied next to the tests by
/// the project reference) over <c>/bin/sh</c> ranks: environment, output prefixes, exit codes, stopping the other
/// ranks when one fails, signals, bad usage.
/// </summary>
[NonParallelizable]
public partial class LauncherTests
{
    /// <summary>Upper bound for a launch that should end within about a second: generous, for a loaded 2-core machine.</summary>
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    private string _dotnet = "";
    private string _launcher = "";

    [OneTimeSetUp]
    public void FindLauncher()
    {
        if (OperatingSystem.IsWindows())
            Assert.Ignore("the launcher tests run /bin/sh ranks: Unix only");
        _launcher = Path.Combine(AppContext.BaseDirectory, "launcher", "shardwise.dll");
        Assert.That(File.Exists(_launcher), Is.True, $"{_launcher} is missing: the tests project copies it from src/Launcher");
        _dotnet = FindDotnet() ?? "";
        if (_dotnet.Length == 0)
            Assert.Ignore("no 'dotnet' host to run launcher/shardwise.dll with (e.g. a self-contained test bundle)");
    }

    private static string? FindDotnet()
    {
        string exe = OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet";
        if (Environment.ProcessPath is { } self && Path.GetFileName(self) == exe)
            return self;
        foreach (string? candidate in new[]
                 {
                     Environment.GetEnvironmentVariable("DOTNET_HOST_PATH"),
                     Environment.GetEnvironmentVariable("DOTNET_ROOT") is { } root ? Path.Combine(root, exe) : null,
                 })
            if (candidate is not null && File.Exists(candidate))
                return candidate;
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, exe)))
                return Path.Combine(dir, exe);
        return null;
    }

    /// <summary>A running launcher with its output collected line by line.</summary>
    private sealed class Run : IDisposable
    {
        public required Process Process { get; init; }
        public ConcurrentQueue<string> Out { get; } = new();
        public ConcurrentQueue<string> Err { get; } = new();
        public Stopwatch Clock { get; } = Stopwatch.StartNew();
        public int ExitCode => Process.ExitCode;
        public string StdErr => string.Join("\n", Err);
        public string StdOut => string.Join("\n", Out);

        /// <summary>Waits for exit and for the end of both streams; kills the launcher and fails past <paramref name="limit"/>.</summary>
        public void Wait(TimeSpan limit)
        {
            using var cts = new CancellationTokenSource(limit - Clock.Elapsed > TimeSpan.Zero ? limit - Clock.Elapsed : TimeSpan.Zero);
            try
            {
                Process.WaitForExitAsync(cts.Token).GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
                try { Process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                Assert.Fail($"the launcher did not finish within {limit.TotalSeconds} s\nstdout:\n{StdOut}\nstderr:\n{StdErr}");
            }
            Clock.Stop();
            TestContext.Out.WriteLine($"exit {Process.ExitCode} after {Clock.Elapsed.TotalSeconds:F2} s\nstdout:\n{StdOut}\nstderr:\n{StdErr}");
        }

        public void Dispose()
        {
            try
            {
                if (!Process.HasExited) Process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException) { }
            Process.Dispose();
        }
    }

    private Run Start(params string[] args)
    {
        var psi = new ProcessStartInfo(_dotnet)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        psi.ArgumentList.Add(_launcher);
        foreach (string a in args) psi.ArgumentList.Add(a);
        var process = new Process { StartInfo = psi };
        var run = new Run { Process = process };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) run.Out.Enqueue(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) run.Err.Enqueue(e.Data); };
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return run;
    }

    private Run Launch(params string[] args)
    {
        var run = Start(args);
        run.Wait(Limit);
        return run;
    }

    [GeneratedRegex(@"^\[rank (\d+)\] (.*)$")]
    private static partial Regex Prefixed();

    /// <summary>The lines of each rank, by the rank number in their prefix; fails on a line without a prefix.</summary>
    private static Dictionary<int, List<string>> ByRank(IEnumerable<string> lines)
    {
        var result = new Dictionary<int, List<string>>();
        foreach (string line in lines)
        {
            var m = Prefixed().Match(line);
            Assert.That(m.Success, Is.True, $"line without a rank prefix: '{line}'");
            int r = int.Parse(m.Groups[1].Value);
            if (!result.TryGetValue(r, out var list)) result[r] = list = [];
            list.Add(m.Groups[2].Value);
        }
        return result;
    }

    private static Dictionary<string, string> ParseEnv(string line) =>
        line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv.Length > 1 ? kv[1] : "");

    private const string EchoEnv =
        "echo \"RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE LOCAL_WORLD_SIZE=$LOCAL_WORLD_SIZE " +
        "GROUP_RANK=$GROUP_RANK MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT SHARDWISE_LAUNCH=$SHARDWISE_LAUNCH\"";

    [Test]
    public void EveryRankGetsTheTorchrunEnvironment()
    {
        using var run = Launch("launch", "-n", "4", "--master-addr", "10.1.2.3", "--master-port", "29511", "--", "/bin/sh", "-c", EchoEnv);
        Assert.That(run.ExitCode, Is.Zero, run.StdErr);
        var byRank = ByRank(run.Out);
        Assert.That(byRank.Keys, Is.EquivalentTo(new[] { 0, 1, 2, 3 }));
        foreach (var (r, lines) in byRank)
        {
            Assert.That(lines, Has.Count.EqualTo(1));
            var env = ParseEnv(lines[0]);
            Assert.Multiple(() =>
            {
                Assert.That(env["RANK"], Is.EqualTo(r.ToString()));
                Assert.That(env["LOCAL_RANK"], Is.EqualTo(r.ToString()));
                Assert.That(env["WORLD_SIZE"], Is.EqualTo("4"));
                Assert.That(env["LOCAL_WORLD_SIZE"], Is.EqualTo("4"));
                Assert.That(env["GROUP_RANK"], Is.EqualTo("0"));
                Assert.That(env["MASTER_ADDR"], Is.EqualTo("10.1.2.3"));
                Assert.That(env["MASTER_PORT"], Is.EqualTo("29511"));
                Assert.That(env["SHARDWISE_LAUNCH"], Is.EqualTo("1"));
            });
        }
        Assert.That(run.Err, Is.Empty);
    }

    [Test]
    public void DefaultsAreLoopbackAndOneFreePortForAllRanks()
    {
        using var run = Launch("launch", "--nproc-per-node=3", "/bin/sh", "-c", EchoEnv);
        Assert.That(run.ExitCode, Is.Zero, run.StdErr);
        var envs = ByRank(run.Out).OrderBy(kv => kv.Key).Select(kv => ParseEnv(kv.Value.Single())).ToList();
        Assert.That(envs, Has.Count.EqualTo(3));
        Assert.That(envs.Select(e => e["MASTER_ADDR"]), Is.All.EqualTo("127.0.0.1"));
        Assert.That(envs.Select(e => e["MASTER_PORT"]).Distinct().Count(), Is.EqualTo(1));
        Assert.That(int.Parse(envs[0]["MASTER_PORT"]), Is.InRange(1, 65535));
        Assert.That(envs.Select(e => e["RANK"]), Is.EqualTo(new[] { "0", "1", "2" }));
    }

    /// <summary>stdout lines go to stdout and stderr lines to stderr, each whole and prefixed (many lines from several
    /// ranks at once, so that a line split mid-way would show), and an unfinished last line is written at exit.</summary>
    [Test]
    public void OutputIsPrefixedLineByLineOnTheMatchingStream()
    {
        const string script =
            "i=0; while [ $i -lt 300 ]; do echo \"out $RANK $i abcdefghijklmnopqrstuvwxyz0123456789\"; " +
            "echo \"err $RANK $i\" >&2; i=$((i+1)); done; printf \"tail $RANK\"; printf \"errtail $RANK\" >&2";
        using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c", script);
        Assert.That(run.ExitCode, Is.Zero, run.StdErr);
        var outByRank = ByRank(run.Out);
        var errByRank = ByRank(run.Err);
        for (int r = 0; r < 3; r++)
        {
            var expectedOut = Enumerable.Range(0, 300).Select(i => $"out {r} {i} abcdefghijklmnopqrstuvwxyz0123456789").Append($"tail {r}");
            var expectedErr = Enumerable.Range(0, 300).Select(i => $"err {r} {i}").Append($"errtail {r}");
            Assert.That(outByRank[r], Is.EqualTo(expectedOut), $"stdout of rank {r}");
            Assert.That(errByRank[r], Is.EqualTo(expectedErr), $"stderr of rank {r}");
        }
    }

    [Test]
    public void NoPrefixAndTeeDirWriteEachRanksLog()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"shardwise-launch-{Guid.NewGuid():N}", "logs");
        try
        {
            using var run = Launch("launch", "-n", "2", "--no-prefix", "--tee-dir", dir, "--",
                "/bin/sh", "-c", "echo \"hello from $RANK\"; echo \"warning from $RANK\" >&2");
            Assert.That(run.ExitCode, Is.Zero, run.StdErr);
            Assert.That(run.Out, Is.EquivalentTo(new[] { "hello from 0", "hello from 1" }));
            Assert.That(run.Err, Is.EquivalentTo(new[] { "warning from 0", "warning from 1" }));
            for (int r = 0; r < 2; r++)
            {
                var log = File.ReadAllLines(Path.Combine(dir, $"rank-{r}.log"));
                Assert.That(log, Is.EquivalentTo(new[] { $"hello from {r}", $"warning from {r}" }), $"rank-{r}.log");
            }
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(dir)!, recursive: true);
        }
    }

    /// <summary>Rank 2 exits with 3 while the others sleep for a minute: the launcher stops them (SIGTERM to their whole
    /// tree, so the sleep processes too) and exits with 3 long before the minute is over.</summary>
    [Test]
    public void OneFailingRankStopsTheOthersAndGivesItsExitCode()
    {
        // Rank 2 fails once the others have started their sleep (each leaves a file in a fresh folder).
        string dir = Directory.CreateTempSubdirectory("shardwise-launch-").FullName;
        string script =
            $"if [ \"$RANK\" = 2 ]; then while [ $(ls '{dir}' | wc -l) -lt 3 ]; do sleep 0.05; done; echo failing; exit 3; fi; " +
            $"sleep 60 & echo \"sleeper $!\"; touch '{dir}'/$RANK; wait; echo done";
        using var run = Launch("launch", "-n", "4", "--", "/bin/sh", "-c", script);
        Directory.Delete(dir, recursive: true);
        Assert.That(run.ExitCode, Is.EqualTo(3), run.StdErr);
        Assert.That(run.Clock.Elapsed, Is.LessThan(Limit));
        Assert.That(run.StdErr, Does.Contain("shardwise launch: rank 2 exited with code 3; stopping the other 3 ranks"));
        var byRank = ByRank(run.Out);
        Assert.That(byRank[2], Is.EqualTo(new[] { "failing" }));
        Assert.That(run.Out, Has.None.Contains("done"), "a rank ran to its end instead of being stopped");
        // The sleep processes (children of the ranks' shells) were stopped too.
        var sleepers = byRank.Where(kv => kv.Key != 2).SelectMany(kv => kv.Value).Where(l => l.StartsWith("sleeper ")).ToList();
        Assert.That(sleepers, Has.Count.EqualTo(3));
        if (OperatingSystem.IsLinux())
            foreach (string s in sleepers)
                Assert.That(IsRunning(int.Parse(s["sleeper ".Length..])), Is.False, $"{s} is still running");
    }

    /// <summary>Whether a process runs (exists and is not a zombie waiting to be reaped).</summary>
    private static bool IsRunning(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            char state = stat[(stat.LastIndexOf(')') + 2)..][0];
            return state != 'Z' && state != 'X';
        }
        catch (IOException)
        {
            return false;
        }
    }

    [Test]
    public void RankKilledBySignalGives128PlusSignal()
    {
        using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c",
            "if [ \"$RANK\" = 1 ]; then kill -KILL $$; fi; sleep 60; echo done");
        Assert.That(run.ExitCode, Is.EqualTo(128 + 9), run.StdErr);
        Assert.That(run.StdErr, Does.Contain("rank 1 exited with code 137").And.Contain("SIGKILL").And.Contain("stopping the other 2 ranks"));
        Assert.That(run.Out, Has.None.Contains("done"));
    }

    /// <summary>Ranks that ignore SIGTERM are killed when the grace period is over.</summary>
    [Test]
    public void RanksIgnoringSigtermAreKilledAfterTheGracePeriod()
    {
        using var run = Launch("launch", "-n", "3", "--grace", "1", "--", "/bin/sh", "-c",
            "trap '' TERM; if [ \"$RANK\" = 0 ]; then sleep 0.5; exit 4; fi; sleep 60; echo done");
        Assert.That(run.ExitCode, Is.EqualTo(4), run.StdErr);
        Assert.That(run.Clock.Elapsed, Is.GreaterThan(TimeSpan.FromSeconds(1.4)), "the grace period was not given");
        Assert.That(run.Clock.Elapsed, Is.LessThan(Limit));
        Assert.That(run.Out, Has.None.Contains("done"));
    }

    [Test]
    public void AllRanksSucceedingExitsZeroAfterTheSlowestRank()
    {
        using var run = Launch("launch", "-n", "3", "--", "/bin/sh", "-c", "if [ \"$RANK\" = 1 ]; then sleep 1; fi; echo \"finished $RANK\"");
        Assert.That(run.ExitCode, Is.Zero, run.StdErr);
        Assert.That(run.Out, Is.EquivalentTo(new[] { "[rank 0] finished 0", "[rank 1] finished 1", "[rank 2] finished 2" }));
        Assert.That(run.Err, Is.Empty);
    }

    /// <summary>A rank that exits 0 but leaves a background process holding its output pipe open does not keep the
    /// launcher waiting for that process.</summary>
    [Test]
    public void BackgroundProcessHoldingARanksOutputDoesNotHoldTheLauncher()
    {
        using var run = Launch("launch", "-n", "1", "--", "/bin/sh", "-c", "sleep 60 & echo \"background $!\"; echo bye");
        var background = run.Out.Where(l => l.StartsWith("[rank 0] background ")).Select(l => int.Parse(l["[rank 0] background ".Length..])).ToList();
        try
        {
            Assert.That(run.ExitCode, Is.Zero, run.StdErr);
            Assert.That(run.Out, Does.Contain("[rank 0] bye"));
            Assert.That(run.Clock.Elapsed, Is.LessThan(Limit));
        }
        finally
        {
            foreach (int pid in background)
                try { Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
        }
    }

    /// <summary>SIGTERM to the launcher stops every rank, and the launcher exits with 128 + 15.</summary>
    [Test]
    public void SigtermToTheLauncherStopsEveryRank()
    {
        using var run = Start("launch", "-n", "3", "--", "/bin/sh", "-c", "echo started; sleep 60; echo done");
        var clock = Stopwatch.StartNew();
        while (run.Out.Count(l => l.EndsWith("] started")) < 3)
        {
            Assert.That(clock.Elapsed, Is.LessThan(Limit), $"the ranks did not start; stderr: {run.StdErr}");
            Assert.That(run.Process.HasExited, Is.False, $"the launcher exited early; stderr: {run.StdErr}");
            Thread.Sleep(20);
        }
        using (var kill = Process.Start("/bin/sh", ["-c", $"kill -TERM {run.Process.Id}"]))
            kill.WaitForExit();
        run.Wait(Limit);
        Assert.That(run.ExitCode, Is.EqualTo(128 + 15), run.StdErr);
        Assert.That(run.StdErr, Does.Contain("received SIGTERM; stopping the 3 ranks still running"));
        Assert.That(run.Out, Has.None.Contains("done"));
    }

    [TestCase(new[] { "launch", "--", "true" }, "'-n'", TestName = "BadUsage(missing -n)")]
    [TestCase(new[] { "launch", "-n", "0", "--", "true" }, "'-n'", TestName = "BadUsage(-n 0)")]
    [TestCase(new[] { "launch", "-n", "1025", "true" }, "'-n'", TestName = "BadUsage(-n 1025)")]
    [TestCase(new[] { "launch", "--nproc-per-node", "four", "true" }, "'--nproc-per-node'", TestName = "BadUsage(-n not a number)")]
    [TestCase(new[] { "launch", "-n", "2" }, "no command", TestName = "BadUsage(no command)")]
    [TestCase(new[] { "launch", "-n", "2", "--" }, "no command", TestName = "BadUsage(nothing after --)")]
    [TestCase(new[] { "launch", "-n", "2", "--master-port", "70000", "true" }, "'--master-port'", TestName = "BadUsage(port out of range)")]
    [TestCase(new[] { "launch", "-n", "2", "--grace", "-1", "true" }, "'--grace'", TestName = "BadUsage(negative grace)")]
    [TestCase(new[] { "launch", "-n", "2", "--tee-dir" }, "'--tee-dir'", TestName = "BadUsage(missing value)")]
    [TestCase(new[] { "launch", "-n", "2", "--frobnicate", "true" }, "'--frobnicate'", TestName = "BadUsage(unknown option)")]
    [TestCase(new[] { "lunch", "-n", "2", "true" }, "'lunch'", TestName = "BadUsage(unknown command)")]
    [TestCase(new string[0], "no command", TestName = "BadUsage(no arguments)")]
    public void BadUsageExitsWithTwoAndNamesTheOption(string[] args, string named)
    {
        using var run = Launch(args);
        Assert.That(run.ExitCode, Is.EqualTo(2), run.StdErr);
        Assert.That(run.Err, Has.Count.EqualTo(1), "one line");
        Assert.That(run.StdErr, Does.StartWith("shardwise").And.Contain(named));
        Assert.That(run.Out, Is.Empty);
    }

    [Test]
    public void CommandThatCannotBeStartedExitsWith127()
    {
        using var run = Launch("launch", "-n", "2", "--", "shardwise-no-such-command", "arg");
        Assert.That(run.ExitCode, Is.EqualTo(127), run.StdErr);
        Assert.That(run.StdErr, Does.Contain("cannot start 'shardwise-no-such-command'"));
    }

    [Test]
    public void HelpAndVersion()
    {
        using (var run = Launch("--help"))
        {
            Assert.That(run.ExitCode, Is.Zero);
            Assert.That(run.StdOut, Does.Contain("shardwise launch --help"));
        }
        using (var run = Launch("launch", "--help"))
        {
            Assert.That(run.ExitCode, Is.Zero);
            Assert.That(run.StdOut, Does.Contain("--nproc-per-node").And.Contain("Single node only").And.Contain("--grace")
                .And.Contain("--tee-dir").And.Contain("--no-prefix").And.Contain("MASTER_PORT"));
        }
        using (var run = Launch("--version"))
        {
            Assert.That(run.ExitCode, Is.Zero);
            Assert.That(run.StdOut, Does.Match(@"^shardwise \d+\.\d+"));
        }
    }
}
