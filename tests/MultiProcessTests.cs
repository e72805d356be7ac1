using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.MultiProcessWorker;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Multi-process tensor parallelism with real processes: each rank is a Shardwise.MultiProcessWorker process, started
/// with torchrun's environment (TCP group) or by mpirun (MPI group). The layers must equal the single-process (virtual
/// rank) results bit for bit and the float64 reference; faults (a killed rank, a late rank, mismatched calls) must make
/// the other ranks fail fast with the right exception naming the rank, the operation and its sequence number.
/// </summary>
[TestFixture, NonParallelizable]
public sealed partial class MultiProcessTests
{
    private static readonly TimeSpan JobLimit = TimeSpan.FromSeconds(120);

    private sealed record RankResult(int Rank, int ExitCode, string Output)
    {
        public string? Line => Output.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.StartsWith("RESULT ", StringComparison.Ordinal));
        public bool Ok => Line is { } l && l.EndsWith(" ok", StringComparison.Ordinal);
        public string Error => Line is { } l && l.Contains("error=") ? l[(l.IndexOf("error=", StringComparison.Ordinal) + 6)..].Split(' ')[0] : "";
        public long Ms => Line is { } l && l.Contains(" ms=") ? long.Parse(l[(l.IndexOf(" ms=", StringComparison.Ordinal) + 4)..].Split(' ')[0]) : -1;
        public string Message => Line is { } l && l.Contains("message=") ? l[(l.IndexOf("message=", StringComparison.Ordinal) + 8)..] : "";
    }

    private static string WorkerDll => Path.Combine(AppContext.BaseDirectory, "Shardwise.MultiProcessWorker.dll");

    /// <summary>How to start the worker: with the dotnet host that runs these tests.</summary>
    private static (string File, string[] Prefix) WorkerCommand()
    {
        if (Environment.ProcessPath is not { } host || Path.GetFileNameWithoutExtension(host) != "dotnet")
            Assert.Ignore("the worker processes are started with the dotnet host, and this test run has none " +
                          "(a self-contained test bundle); run the tests with `dotnet Shardwise.Tests.dll`");
        return (Environment.ProcessPath!, [WorkerDll]);
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private static Process Start(string file, IEnumerable<string> args, IDictionary<string, string> env, string? without = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        psi.Environment.Remove("RANK"); // only what the job sets
        if (without is not null) psi.Environment.Remove(without);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        return Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
    }

    /// <summary>Waits for every process (killing all at the limit) and returns their outputs.</summary>
    private static List<(Process P, string Out)> Collect(List<Process> procs)
    {
        var outs = procs.Select(p => (Out: p.StandardOutput.ReadToEndAsync(), Err: p.StandardError.ReadToEndAsync())).ToList();
        var deadline = DateTime.UtcNow + JobLimit;
        foreach (var p in procs)
        {
            var left = deadline - DateTime.UtcNow;
            if (left < TimeSpan.Zero || !p.WaitForExit(left))
            {
                foreach (var q in procs) try { q.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                Assert.Fail($"the job did not finish within {JobLimit.TotalSeconds} s: a rank hangs");
            }
        }
        var result = new List<(Process, string)>();
        for (int i = 0; i < procs.Count; i++)
        {
            procs[i].WaitForExit();
            result.Add((procs[i], outs[i].Out.Result + outs[i].Err.Result));
            TestContext.Out.WriteLine($"--- process {i} (exit {procs[i].ExitCode}):\n{result[^1].Item2}");
        }
        return result;
    }

    /// <summary>Runs p worker processes with torchrun's environment (a TCP group).</summary>
    private static RankResult[] RunTcp(int p, string scenario, string? outDir = null, int seed = 0, int timeoutMs = 30000,
        IReadOnlyDictionary<string, string>? extraEnv = null)
    {
        var (file, prefix) = WorkerCommand();
        int port = FreePort();
        var procs = new List<Process>();
        for (int r = 0; r < p; r++)
        {
            var env = new Dictionary<string, string>
            {
                ["RANK"] = $"{r}", ["LOCAL_RANK"] = $"{r}", ["WORLD_SIZE"] = $"{p}", ["MASTER_ADDR"] = "127.0.0.1",
                ["MASTER_PORT"] = $"{port}", ["SW_TEST_SEED"] = $"{seed}", ["SW_TEST_TIMEOUT_MS"] = $"{timeoutMs}",
            };
            foreach (var (k, v) in extraEnv ?? new Dictionary<string, string>()) env[k] = v;
            procs.Add(Start(file, [.. prefix, scenario, .. outDir is null ? Array.Empty<string>() : [outDir]], env));
        }
        return Collect(procs).Select((x, r) => new RankResult(r, x.P.ExitCode, x.Out)).ToArray();
    }

    private static string? Mpirun()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, "mpirun"))) return Path.Combine(dir, "mpirun");
        return null;
    }

    private static string RequireMpi()
    {
        string? mpirun = Mpirun();
        if (mpirun is null) Assert.Ignore("mpirun is not on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)");
        var (available, info) = ProcessGroup.MpiInfo();
        if (!available) Assert.Ignore($"the MPI plugin is not available: {info}");
        return mpirun!;
    }

    /// <summary>What RunMpi multiplies the workers' timeout by: 4 under ASan (the runtime preloaded), else 1. The timeout
    /// also bounds Open MPI's MPI_Init, which ASan slows to about 5 s a process on a 2-core VM; the scenarios' behaviour
    /// does not depend on the timeout's length, and a test that bounds a time by it multiplies too.</summary>
    private static int MpiTimeoutScale =>
        Environment.GetEnvironmentVariable("LD_PRELOAD")?.Contains("asan", StringComparison.Ordinal) == true ? 4 : 1;

    /// <summary>Runs an mpirun job of p workers; returns mpirun's exit code and output (ranks' lines are in it).</summary>
    private static (int ExitCode, string Output, TimeSpan Took) RunMpi(int p, string scenario, string? outDir = null, int seed = 0, int timeoutMs = 30000,
        IReadOnlyDictionary<string, string>? extraEnv = null)
    {
        string mpirun = RequireMpi();
        var (file, prefix) = WorkerCommand();
        // A preloaded library (the ASan runtime of ./build.sh asan) goes to the ranks only: mpirun and its daemons under
        // ASan took 5 s to start on a 2-core VM (`mpirun -n 1 /bin/true`: 5.3 s against 0.1 s, most of it in ASan's
        // copying realloc and unmaps). The ranks' own MPI_Init takes as long there; see MpiTimeoutScale.
        string? preload = Environment.GetEnvironmentVariable("LD_PRELOAD");
        var args = new List<string> { "--allow-run-as-root", "--oversubscribe", "-n", $"{p}",
            "-x", $"SW_TEST_SEED={seed}", "-x", $"SW_TEST_TIMEOUT_MS={timeoutMs * MpiTimeoutScale}" };
        foreach (var (key, value) in extraEnv ?? new Dictionary<string, string>()) args.AddRange(["-x", $"{key}={value}"]);
        if (!string.IsNullOrEmpty(preload)) args.AddRange(["-x", $"LD_PRELOAD={preload}"]);
        args.Add(file);
        args.AddRange(prefix);
        args.Add(scenario);
        if (outDir is not null) args.Add(outDir);
        var clock = Stopwatch.StartNew();
        var job = Collect([Start(mpirun, args, new Dictionary<string, string>(), without: "LD_PRELOAD")])[0];
        return (job.P.ExitCode, WithoutTerminalControls(job.Out), clock.Elapsed);
    }

    // mpirun gives its ranks pseudo-terminals, so a .NET rank writes terminal controls (keypad mode: ESC [ ? 1 h ESC =)
    // wherever its console starts up, also in front of a RESULT line; line parsers must not see them.
    private static string WithoutTerminalControls(string output) =>
        System.Text.RegularExpressions.Regex.Replace(output, @"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]", "");

    private static float[] ReadFloats(string path) => MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(path)).ToArray();

    /// <summary>The same scenario with p virtual ranks in this process.</summary>
    private static (float[] Column, float[] Row, float[] Ffn, float[] Block)[] InProcess(int p, int seed)
    {
        using var device = Device.Cpu(1);
        using var group = ProcessGroup.CreateLocal(device, p);
        var data = new Scenario.Data(seed);
        var results = new (float[], float[], float[], float[])[p];
        Spmd.Run(group, ctx =>
        {
            var (c, r, f) = Scenario.Run(ctx, data);
            results[ctx.Rank] = (c, r, f, Scenario.Block(ctx, data));
        });
        return results;
    }

    private static void CheckLayers(int p, int seed, Func<string, int, string> file)
    {
        var local = InProcess(p, seed);
        var reference = Scenario.Reference(new Scenario.Data(seed));
        for (int r = 0; r < p; r++)
        {
            var outputs = new[] { ("column", local[r].Column, reference.Column), ("row", local[r].Row, reference.Row), ("ffn", local[r].Ffn, reference.Ffn) };
            foreach (var (name, single, expected) in outputs)
            {
                var multi = ReadFloats(file(name, r));
                Assert.That(multi, Has.Length.EqualTo(expected.Length), $"{name} rank {r}: length");
                for (int i = 0; i < expected.Length; i++)
                {
                    Assert.That(Math.Abs(multi[i] - expected[i]), Is.LessThanOrEqualTo(1e-4 * (1 + Math.Abs(expected[i]))),
                        $"{name} rank {r} element {i}: {multi[i]} vs float64 {expected[i]}");
                    Assert.That(BitConverter.SingleToInt32Bits(multi[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(single[i])),
                        $"{name} rank {r} element {i}: multi-process {multi[i]:R} differs from single-process {single[i]:R}");
                }
            }
            // The transformer block (training forward and backward, dropout on): the same bits as virtual ranks.
            var block = ReadFloats(file("block", r));
            Assert.That(block, Has.Length.EqualTo(local[r].Block.Length), $"block rank {r}: length");
            Assert.That(block.Any(float.IsNaN), Is.False, $"block rank {r}: an output left unwritten (NaN)");
            for (int i = 0; i < block.Length; i++)
                Assert.That(BitConverter.SingleToInt32Bits(block[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(local[r].Block[i])),
                    $"block rank {r} element {i}: multi-process {block[i]:R} differs from single-process {local[r].Block[i]:R}");
        }
    }

    private static string NewOutDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"shardwise-mp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    [Test]
    public void Tcp_Layers_EqualSingleProcess_BitForBit([Values(2, 3, 4)] int p, [Values("shm", "tcp")] string transport)
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            // one host: shared memory (shm+cma where the ranks may read each other's memory), or the sockets
            var results = RunTcp(p, "layers", dir, seed, extraEnv: new Dictionary<string, string> { ["SHARDWISE_TRANSPORT"] = transport });
            foreach (var r in results) Assert.That(r.Ok && r.ExitCode == 0, $"rank {r.Rank}: exit {r.ExitCode}, {r.Line}");
            Assert.That(results.All(r => r.Output.Contains($"world={p} backend=tcp transport={transport}")),
                $"every rank reports the TCP group of p ranks over {transport}: {string.Join(" | ", results.Select(r => r.Line))}");
            CheckLayers(p, seed, (name, r) => Path.Combine(dir, $"{name}.rank{r}.bin"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void Launcher_RunsTheLayersJob_OverTcp()
    {
        var (host, prefix) = WorkerCommand();
        string launcher = Path.Combine(AppContext.BaseDirectory, "launcher", "shardwise.dll");
        Assert.That(File.Exists(launcher), Is.True, $"launcher not built at {launcher}");
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var job = Collect([Start(host, [launcher, "launch", "-n", "3", "--", host, .. prefix, "layers", dir],
                new Dictionary<string, string> { ["SW_TEST_SEED"] = $"{seed}" })])[0];
            Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
            for (int r = 0; r < 3; r++) Assert.That(job.Out, Does.Contain($"[rank {r}] RESULT rank={r} ok"));
            CheckLayers(3, seed, (name, r) => Path.Combine(dir, $"{name}.rank{r}.bin"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void Mpi_Layers_EqualSingleProcess_BitForBit([Values(2, 3)] int p)
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        string dir = NewOutDir();
        try
        {
            var (exit, output, _) = RunMpi(p, "layers", dir, seed);
            Assert.That(exit, Is.EqualTo(0), output);
            Assert.That(output.Split('\n').Count(l => l.Trim().StartsWith("RESULT rank=") && l.Trim().EndsWith(" ok")), Is.EqualTo(p), output);
            Assert.That(output, Does.Contain($"world={p} backend=mpi"));
            CheckLayers(p, seed, (name, r) => Path.Combine(dir, $"{name}.rank{r}.bin"));
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>One row of the bandwidth table: size (B), count, type, redop, time (us), algbw, busbw (GB/s), #wrong,
    /// with the printed text of the two bandwidths (their decimals give the rounding).</summary>
    private sealed record BandwidthRow(long Size, long Count, string Type, string Redop, double TimeUs, string AlgBw, string BusBw, int Wrong);

    private static Dictionary<string, List<BandwidthRow>> ParseBandwidthTables(string output)
    {
        var tables = new Dictionary<string, List<BandwidthRow>>();
        List<BandwidthRow>? current = null;
        foreach (var raw in output.Split('\n'))
        {
            string line = raw.Trim();
            if (line.StartsWith("# collective: ", StringComparison.Ordinal))
                tables[line["# collective: ".Length..].Split(' ')[0]] = current = [];
            else if (line.Length > 0 && char.IsAsciiDigit(line[0]))
            {
                Assert.That(current, Is.Not.Null, $"a row before any '# collective:' header: {line}");
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                Assert.That(f, Has.Length.EqualTo(8), $"row with 8 columns: {line}");
                var inv = System.Globalization.CultureInfo.InvariantCulture;
                current!.Add(new BandwidthRow(long.Parse(f[0], inv), long.Parse(f[1], inv), f[2], f[3], double.Parse(f[4], inv), f[5], f[6],
                    int.Parse(f[7], inv)));
            }
        }
        return tables;
    }

    [Test]
    public void Tcp_Bandwidth_ReportsEverySize_InNcclTestsTerms()
    {
        const int p = 2;
        var results = RunTcp(p, "bandwidth", extraEnv: new Dictionary<string, string>
        {
            ["SW_BW_MAX_BYTES"] = "64K", ["SW_BW_ITERS"] = "2", ["SW_BW_WARMUP"] = "1",
        });
        foreach (var r in results) Assert.That(r.Ok && r.ExitCode == 0, $"rank {r.Rank}: exit {r.ExitCode}, {r.Line}");
        Assert.That(results[1].Output, Does.Not.Contain("# collective:"), "only rank 0 prints the tables");
        var tables = ParseBandwidthTables(results[0].Output);
        Assert.That(tables.Keys, Is.EqualTo(new[] { "all_reduce", "all_gather", "reduce_scatter" }));
        // nccl-tests -b 8 -e 64K -f 4: 8, 32, ..., 32768 B. With 2 ranks every size is a whole number of floats per rank.
        var sizes = new List<long>();
        for (long size = 8; size <= 64 * 1024; size *= 4) sizes.Add(size);
        static double Ulp(string text) => text.Contains('.') ? 0.5 * Math.Pow(10, -(text.Length - text.IndexOf('.') - 1)) : 0.5;
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        foreach (var (op, rows) in tables)
        {
            double factor = op == "all_reduce" ? 2.0 * (p - 1) / p : (double)(p - 1) / p;
            Assert.That(rows.Select(r => r.Size), Is.EqualTo(sizes), $"{op}: one row per size");
            foreach (var row in rows)
            {
                string where = $"{op} {row.Size} B";
                Assert.That(row.Count * 4, Is.EqualTo(row.Size), $"{where}: count = size / sizeof(float)");
                Assert.That(row.Type, Is.EqualTo("float"), where);
                Assert.That(row.Redop, Is.EqualTo(op == "all_gather" ? "none" : "sum"), where);
                Assert.That(row.Wrong, Is.Zero, where);
                double algbw = double.Parse(row.AlgBw, inv), busbw = double.Parse(row.BusBw, inv);
                foreach (var (name, v) in new[] { ("time", row.TimeUs), ("algbw", algbw), ("busbw", busbw) })
                    Assert.That(double.IsFinite(v) && v > 0, Is.True, $"{where}: {name} = {v} is a positive finite number");
                // algbw = size / time (GB/s = B/us / 1e3); the time is printed to 0.01 us.
                double fromTime = row.Size / row.TimeUs / 1e3;
                Assert.That(Math.Abs(algbw - fromTime), Is.LessThanOrEqualTo(Ulp(row.AlgBw) + fromTime * (0.005 / row.TimeUs) * 1.01 + 1e-12),
                    $"{where}: algbw {row.AlgBw} vs size/time {fromTime}");
                Assert.That(Math.Abs(busbw - algbw * factor), Is.LessThanOrEqualTo(Ulp(row.BusBw) + factor * Ulp(row.AlgBw) + 1e-12),
                    $"{where}: busbw {row.BusBw} vs algbw {row.AlgBw} x {factor}");
            }
        }
    }

    [Test]
    public void Tcp_KilledRank_OthersFailAtOnce_NamingIt()
    {
        var results = RunTcp(3, "kill", timeoutMs: 60000);
        Assert.That(results[2].ExitCode, Is.Not.EqualTo(0), "the killed rank");
        foreach (var r in results.Take(2))
        {
            Assert.That(r.Error, Is.EqualTo(nameof(CommunicatorAbortedException)), $"rank {r.Rank}: {r.Line}");
            Assert.That(r.Message, Does.Contain("rank 2").And.Contain("sw_all_reduce #1"), $"rank {r.Rank}");
            Assert.That(r.Ms, Is.LessThan(15000), $"rank {r.Rank} took {r.Ms} ms to notice (timeout 60 s): expected at once");
        }
    }

    [Test]
    public void Tcp_LateRank_OthersTimeOut_NamingIt()
    {
        var results = RunTcp(3, "late", timeoutMs: 2000);
        foreach (var r in results.Take(2))
        {
            Assert.That(r.Error, Is.EqualTo(nameof(CollectiveTimeoutException)), $"rank {r.Rank}: {r.Line}");
            Assert.That(r.Message, Does.Contain("rank(s) 2").And.Contain("never joined").And.Contain("sw_all_reduce #1"), $"rank {r.Rank}");
            Assert.That(r.Ms, Is.LessThan(4500), $"rank {r.Rank} took {r.Ms} ms (timeout 2 s)");
        }
        // The late rank learns why when it arrives, instead of waiting for its own timeout.
        Assert.That(results[2].Error, Is.AnyOf(nameof(CollectiveTimeoutException), nameof(CommunicatorAbortedException)), results[2].Line);
        Assert.That(results[2].Message, Does.Contain("aborted the communicator"));
        Assert.That(results[2].Ms, Is.LessThan(1500), "the late rank is told at once");
    }

    [Test]
    public void Tcp_MismatchedCalls_EveryRankFails()
    {
        var results = RunTcp(3, "mismatch");
        foreach (var r in results)
        {
            Assert.That(r.Error, Is.EqualTo(nameof(CollectiveMismatchException)), $"rank {r.Rank}: {r.Line}");
            Assert.That(r.Message, Does.Contain("count 32").And.Contain("count 64"), $"rank {r.Rank}");
        }
    }

    [Test]
    public void Mpi_MismatchedCalls_EveryRankFails()
    {
        var (exit, output, _) = RunMpi(3, "mismatch");
        Assert.That(exit, Is.Not.EqualTo(0));
        var lines = output.Split('\n').Where(l => l.Trim().StartsWith("RESULT rank=")).ToArray();
        Assert.That(lines, Has.Length.EqualTo(3), output);
        Assert.That(lines, Has.All.Contain("error=CollectiveMismatchException").And.All.Contain("count 32"));
    }

    [Test]
    public void Mpi_LateRank_OthersTimeOut_NamingIt()
    {
        // The timeout also bounds the communicator's creation, where Open MPI's MPI_Init waits for every process: it
        // must cover the skew of three .NET processes starting on a loaded 2-core machine (under ASan, 2 s did not).
        var (_, output, _) = RunMpi(3, "late", timeoutMs: 6000);
        var lines = output.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("RESULT rank=")).ToArray();
        // Ranks 0 and 1 time out and end without MPI_Finalize (it would wait for every process), so mpirun may end
        // the late rank 2 before it prints its line.
        Assert.That(lines.Count(l => l.StartsWith("RESULT rank=0") || l.StartsWith("RESULT rank=1")), Is.EqualTo(2), output);
        foreach (var l in lines.Where(l => !l.StartsWith("RESULT rank=2")))
            Assert.That(l, Does.Contain("error=CollectiveTimeoutException").And.Contain("rank(s) 2").And.Contain("sw_all_reduce #1"));
    }

    [Test]
    public void Mpi_KilledRank_JobEndsWithoutHanging()
    {
        // Open MPI's mpirun ends the whole job when a rank dies; what must hold is that nothing hangs.
        var (exit, output, took) = RunMpi(3, "kill", timeoutMs: 60000);
        Assert.That(exit, Is.Not.EqualTo(0), output);
        Assert.That(took, Is.LessThan(TimeSpan.FromSeconds(50)), "the job ended well before the 60 s collective timeout");
    }

    [Test]
    public void FromEnvironment_WithoutLauncher_NamesTheMissingVariable()
    {
        var (file, prefix) = WorkerCommand();
        var job = Collect([Start(file, [.. prefix, "layers", Path.GetTempPath()], new Dictionary<string, string>())])[0];
        var r = new RankResult(0, job.P.ExitCode, job.Out);
        Assert.That(r.Error, Is.EqualTo(nameof(InvalidOperationException)), r.Line);
        Assert.That(r.Message, Does.Contain("RANK").And.Contain("shardwise launch"));
    }

    private static string NcclInfoWith(string? ncclPath)
    {
        var (file, prefix) = WorkerCommand();
        var env = new Dictionary<string, string>();
        if (ncclPath is not null) env["SHARDWISE_NCCL_PATH"] = ncclPath;
        var job = Collect([Start(file, [.. prefix, "nccl-info"], env)])[0];
        Assert.That(job.P.ExitCode, Is.EqualTo(0), job.Out);
        return job.Out.Split('\n').Single(l => l.StartsWith("NCCL ", StringComparison.Ordinal)).Trim();
    }

    [Test]
    public void Nccl_MissingLibrary_NamesEveryPlaceSearched()
    {
        string bogus = Path.Combine(Path.GetTempPath(), $"no-nccl-{Guid.NewGuid():N}", "libnccl.so.2");
        string line = NcclInfoWith(bogus);
        Assert.That(line, Does.StartWith("NCCL available=0"));
        Assert.That(line, Does.Contain(bogus).And.Contain("SHARDWISE_NCCL_PATH").And.Contain("Tried:"));
    }

    [Test]
    public void Nccl_LibraryWithoutTheSymbols_NamesTheMissingRequiredOnes()
    {
        // libshardwise itself loads fine but is not NCCL.
        string notNccl = Path.Combine(AppContext.BaseDirectory, "libshardwise.so");
        string line = NcclInfoWith(notNccl);
        Assert.That(line, Does.StartWith("NCCL available=0"));
        Assert.That(line, Does.Contain("lacks required NCCL symbols").And.Contain("ncclAllReduce").And.Contain("ncclGetUniqueId"));
    }

    [Test]
    public void Nccl_Info_IsConsistent()
    {
        var (available, version, description) = ProcessGroup.NcclInfo();
        TestContext.Out.WriteLine(description);
        if (available)
        {
            Assert.That(version, Is.GreaterThan(0));
            Assert.That(description, Does.Match(@"^NCCL \d+\.\d+\.\d+ \("));
        }
        else
        {
            Assert.That(version, Is.EqualTo(0));
            Assert.That(description, Does.Contain("libnccl.so.2"));
        }
    }

    [Test]
    public void Nccl_OnCpuDevices_IsRefusedNamingTheArgument()
    {
        using var device = Device.Cpu(1);
        var e = Assert.Throws<ShardwiseArgumentException>(() => ProcessGroup.CreateNccl([device]));
        Assert.That(e!.Message, Does.Contain("devices[0]").And.Contain("CUDA"));
        e = Assert.Throws<ShardwiseArgumentException>(() => ProcessGroup.CreateNccl(device, 0, 1, "127.0.0.1", FreePort(), TimeSpan.FromSeconds(5)));
        Assert.That(e!.Message, Does.Contain("device").And.Contain("CUDA"));
        Assert.Throws<ArgumentException>(() => ProcessGroup.CreateNccl(Array.Empty<Device>()));
        var bad = Assert.Throws<ArgumentException>(() => ProcessGroup.CreateNccl(device, new byte[64], 0, 2));
        Assert.That(bad!.ParamName, Is.EqualTo("uniqueId"));
        e = Assert.Throws<ShardwiseArgumentException>(() => ProcessGroup.CreateNccl(device, new byte[128], 0, 2));
        Assert.That(e!.Message, Does.Contain("CUDA"));
        if (!ProcessGroup.NcclInfo().Available)
        {
            var nf = Assert.Throws<ShardwiseNotFoundException>(() => ProcessGroup.NcclUniqueId());
            Assert.That(nf!.Message, Does.Contain("libnccl.so.2"));
        }
    }

    [Test]
    public void TcpStore_SetGet_AndMissingKeyTimesOut()
    {
        using var server = TcpStore.Connect("127.0.0.1", 0, isServer: true, TimeSpan.FromMilliseconds(500));
        using var client = TcpStore.Connect("127.0.0.1", server.Port, isServer: false, TimeSpan.FromMilliseconds(500));
        var value = new byte[1000];
        new Random(TestContext.CurrentContext.Random.Next()).NextBytes(value);
        server.Set("k", value);
        Assert.That(client.Get("k"), Is.EqualTo(value));
        client.Set("s", "héllo");
        Assert.That(server.GetString("s"), Is.EqualTo("héllo"));
        var e = Assert.Throws<CollectiveTimeoutException>(() => client.Get("never-set"));
        Assert.That(e!.Message, Does.Contain("never-set"));
        Assert.Throws<ArgumentOutOfRangeException>(() => TcpStore.Connect("127.0.0.1", 0, isServer: false));
    }

    [Test]
    public void MultiProcessGroup_RefusesOtherRanks_AndShardedGemm()
    {
        using var device = Device.Cpu(1);
        using var group = ProcessGroup.CreateTcp(device, 0, 1, "127.0.0.1", FreePort(), TimeSpan.FromSeconds(10));
        Assert.That(group.IsMultiProcess, Is.True);
        Assert.That(group.Backend, Is.EqualTo("tcp"));
        Assert.That(group.Local.Rank, Is.EqualTo(0));
        using var w = device.Allocate<float>(4);
        var e = Assert.Throws<NotSupportedException>(() => new ShardedGemm(group, WeightSource.FromArray([1, 2, 3, 4], 2, 2)));
        Assert.That(e!.Message, Does.Contain("ColumnParallelLinear"));
        // A one-rank TCP group still runs its collectives.
        using var b = device.Allocate<float>(3);
        b.CopyFrom([1.5f, -2f, 3f], group.Local.Stream);
        group.Local.AllReduce(b);
        Assert.That(b.ToArray(group.Local.Stream), Is.EqualTo(new[] { 1.5f, -2f, 3f }));
    }
}
