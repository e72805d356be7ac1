using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using NUnit.Framework.Interfaces;
using Shardwise.Tests;

// Every test of this assembly runs under the watchdog.
[assembly: TestWatchdog]

namespace Shardwise.Tests;

/// <summary>
/// A per-test time limit for the whole NUnit suite. NUnit 4's [Timeout] does nothing on .NET (it needs Thread.Abort),
/// and [CancelAfter] only helps a test that polls its token, so a bug that hangs — a collective that never returns, a
/// deadlock in native code — would stall the whole run. This assembly-level action times each test (its SetUp and
/// TearDown included); when one runs longer than its limit, the watchdog writes
/// <c>shardwise-tests: TEST HUNG: &lt;full test name&gt; ran longer than N s</c> to the process's standard error and
/// ends the test process with <see cref="Environment.FailFast(string)"/> (a hung thread cannot be stopped in .NET), so
/// the run ends at once, non-zero, naming the test, instead of never.
/// <para>The limit: <see cref="DefaultLimit"/> (300 s), or SHARDWISE_TEST_TIMEOUT_S (seconds) for every test, or
/// <see cref="TestTimeLimitAttribute"/> on a test or its fixture (which SHARDWISE_TEST_TIMEOUT_S, when set, overrides).</para>
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class TestWatchdogAttribute : Attribute, ITestAction
{
    /// <summary>The limit of a test that says nothing else: far above the slowest test (the multi-process jobs bound
    /// themselves at 120 s), far below "forever".</summary>
    public static readonly TimeSpan DefaultLimit = TimeSpan.FromSeconds(300);

    private static readonly ConcurrentDictionary<string, (string Name, Stopwatch Clock, TimeSpan Limit)> Running = new();
    private static readonly object StartLock = new();
    private static Thread? _monitor;

    /// <inheritdoc />
    public ActionTargets Targets => ActionTargets.Test;

    /// <inheritdoc />
    public void BeforeTest(ITest test)
    {
        Running[test.Id] = (test.FullName, Stopwatch.StartNew(), LimitOf(test));
        EnsureMonitor();
    }

    /// <inheritdoc />
    public void AfterTest(ITest test) => Running.TryRemove(test.Id, out _);

    /// <summary>The limit for <paramref name="test"/>.</summary>
    internal static TimeSpan LimitOf(ITest test)
    {
        string? env = Environment.GetEnvironmentVariable("SHARDWISE_TEST_TIMEOUT_S");
        if (env is not null && double.TryParse(env, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0)
            return TimeSpan.FromSeconds(s);
        for (ITest? t = test; t is not null; t = t.Parent)
        {
            var own = t.Method?.GetCustomAttributes<TestTimeLimitAttribute>(true) is { Length: > 0 } m ? m[0]
                : t.IsSuite && t.TypeInfo?.GetCustomAttributes<TestTimeLimitAttribute>(true) is { Length: > 0 } c ? c[0] : null;
            if (own is not null) return TimeSpan.FromSeconds(own.Seconds);
        }
        return DefaultLimit;
    }

    private static void EnsureMonitor()
    {
        lock (StartLock)
        {
            if (_monitor is not null) return;
            // Not in any test's execution context (NUnit routes Console output by it): started without flowing it.
            using (ExecutionContext.SuppressFlow())
            {
                _monitor = new Thread(Monitor) { IsBackground = true, Name = "shardwise test watchdog" };
                _monitor.Start();
            }
        }
    }

    private static void Monitor()
    {
        while (true)
        {
            Thread.Sleep(250);
            foreach (var (name, clock, limit) in Running.Values)
            {
                if (clock.Elapsed <= limit) continue;
                string message = $"shardwise-tests: TEST HUNG: {name} ran longer than {limit.TotalSeconds:0.#} s " +
                                 "(its limit: TestTimeLimit, SHARDWISE_TEST_TIMEOUT_S or the default); ending the test process";
                // Straight to the process's stderr (NUnit and the test platform redirect Console.Error).
                using (var err = new StreamWriter(Console.OpenStandardError()) { AutoFlush = true })
                    err.WriteLine(message);
                Environment.FailFast(message);
            }
        }
    }
}

/// <summary>This test's (or every test of this fixture's) watchdog limit in seconds, for a test whose normal time is
/// not covered by <see cref="TestWatchdogAttribute.DefaultLimit"/>.</summary>
[AttributeUsage(AttributeTargets.Method | AttributeTargets.Class, AllowMultiple = false)]
public sealed class TestTimeLimitAttribute(double seconds) : Attribute
{
    /// <summary>The limit in seconds.</summary>
    public double Seconds { get; } = seconds > 0 ? seconds : throw new ArgumentOutOfRangeException(nameof(seconds), seconds, "expected > 0");
}

/// <summary>The watchdog itself: a test that hangs ends the run within its limit, naming the test.</summary>
[TestFixture, NonParallelizable]
public sealed class TestWatchdogTests
{
    private const string DemoVariable = "SHARDWISE_TEST_WATCHDOG_DEMO";

    /// <summary>Hangs forever. Runs only in the child test process that <see cref="AHangingTestEndsTheRunWithItsName"/>
    /// starts (it sets SHARDWISE_TEST_WATCHDOG_DEMO); anywhere else it is Ignored.</summary>
    [Test]
    public void HangsForeverWhenAsked()
    {
        if (Environment.GetEnvironmentVariable(DemoVariable) != "1")
            Assert.Ignore($"a planted hang, run only by {nameof(AHangingTestEndsTheRunWithItsName)} in a child test process");
        Thread.Sleep(Timeout.Infinite);
    }

    [Test]
    public void AHangingTestEndsTheRunWithItsName()
    {
        string host = Environment.ProcessPath ?? "";
        if (Path.GetFileNameWithoutExtension(host) != "dotnet")
            Assert.Ignore("the child test process is started with the dotnet host, and this run has none (a self-contained bundle)");
        var psi = new ProcessStartInfo(host)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.ArgumentList.Add(typeof(TestWatchdogTests).Assembly.Location);
        psi.ArgumentList.Add("--filter");
        psi.ArgumentList.Add($"FullyQualifiedName~{nameof(TestWatchdogTests)}.{nameof(HangsForeverWhenAsked)}");
        psi.Environment[DemoVariable] = "1";
        psi.Environment["SHARDWISE_TEST_TIMEOUT_S"] = "3";
        psi.Environment["DOTNET_DbgEnableMiniDump"] = "0";
        var clock = Stopwatch.StartNew();
        using var child = Process.Start(psi)!;
        var stdout = child.StandardOutput.ReadToEndAsync();
        var stderr = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail("the child test run with a hanging test did not end within 120 s: the watchdog did not fire");
        }
        child.WaitForExit();
        string output = stdout.Result + stderr.Result;
        TestContext.Out.WriteLine($"child exit {child.ExitCode} after {clock.Elapsed.TotalSeconds:F1} s:\n{output}");
        Assert.That(child.ExitCode, Is.Not.Zero, "the run with a hanging test must fail");
        Assert.That(output, Does.Contain($"TEST HUNG: Shardwise.Tests.{nameof(TestWatchdogTests)}.{nameof(HangsForeverWhenAsked)} ran longer than 3 s"));
    }
}
