using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Shardwise.Launcher;

/// <summary>
/// One run of <c>shardwise launch</c>: starts the ranks, forwards their output, watches their exits, and stops
/// them all when one fails or when the launcher is asked to stop.
/// </summary>
internal sealed class LaunchSession : IDisposable
{
    /// <summary>How long the output of an exited rank may stay silent before the launcher stops waiting for the
    /// end of its pipes (something the rank left running still holds them open).</summary>
    private static readonly TimeSpan OutputIdleLimit = TimeSpan.FromSeconds(2);

    /// <summary>How long to wait for killed processes to be reaped.</summary>
    private static readonly TimeSpan ReapLimit = TimeSpan.FromSeconds(10);

    private sealed class Rank(int index, Process process, RankOutput output)
    {
        public int Index { get; } = index;
        public Process Process { get; } = process;
        public RankOutput Output { get; } = output;
        public Task Exited { get; } = process.WaitForExitAsync();
        public Task[] Pumps { get; set; } = [];
    }

    private readonly LaunchOptions _options;
    private readonly OutputSink _sink;
    private readonly List<Rank> _ranks = [];
    private readonly List<PosixSignalRegistration> _signalRegistrations = [];
    private readonly TaskCompletionSource _stopRequested = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _killRequested = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _signalCount;
    private int _signal; // the first signal the launcher got (POSIX number), 0 when none

    private LaunchSession(LaunchOptions options)
    {
        _options = options;
        _sink = new OutputSink(Console.OpenStandardOutput(), Console.OpenStandardError());
    }

    /// <summary>Runs the launch described by <paramref name="options"/>.</summary>
    /// <param name="options">The parsed options (not help).</param>
    /// <returns>The exit code: 0, the blamed rank's code (see Watch), 127, 128+signal, or 1.</returns>
    public static int Run(LaunchOptions options)
    {
        using var session = new LaunchSession(options);
        return session.Execute();
    }

    private int Execute()
    {
        int port;
        try
        {
            port = _options.MasterPort ?? FreePort();
        }
        catch (SocketException e)
        {
            _sink.Message($"cannot pick a free port for MASTER_PORT ({e.Message}); give one with --master-port");
            return ExitCodes.Failure;
        }

        Stream?[] logs = new Stream?[_options.Ranks];
        if (_options.TeeDirectory is { } teeDir)
        {
            try
            {
                Directory.CreateDirectory(teeDir);
                for (int r = 0; r < _options.Ranks; r++)
                    logs[r] = new FileStream(Path.Combine(teeDir, $"rank-{r}.log"), FileMode.Create, FileAccess.Write, FileShare.Read);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
            {
                foreach (var log in logs)
                    log?.Dispose();
                _sink.Message($"cannot write the logs of --tee-dir '{teeDir}': {e.Message}");
                return ExitCodes.Failure;
            }
        }

        RegisterSignals();

        for (int r = 0; r < _options.Ranks; r++)
        {
            if (_stopRequested.Task.IsCompleted)
                break;
            var output = new RankOutput(r, _sink, _options.Prefix, logs[r]);
            Process process;
            try
            {
                process = Process.Start(StartInfo(r, port)) ?? throw new InvalidOperationException("no process was started");
            }
            catch (Exception e) when (e is Win32Exception or InvalidOperationException or PlatformNotSupportedException)
            {
                output.Dispose();
                for (int rest = r + 1; rest < logs.Length; rest++)
                    logs[rest]?.Dispose();
                _sink.Message($"cannot start '{_options.Command}' for rank {r}: {StartError(e)}");
                if (_ranks.Count > 0)
                {
                    _sink.Message($"stopping the {Ranks(_ranks.Count)} already started");
                    Stop(_ranks);
                }
                FinishOutput();
                return ExitCodes.CannotStart;
            }
            var rank = new Rank(r, process, output);
            rank.Pumps =
            [
                Task.Run(() => output.PumpAsync(process.StandardOutput.BaseStream, error: false)),
                Task.Run(() => output.PumpAsync(process.StandardError.BaseStream, error: true)),
            ];
            _ranks.Add(rank);
        }

        int exitCode = Watch();
        FinishOutput();
        return exitCode;
    }

    /// <summary>
    /// How long, after the first rank that fails, the launcher waits for other exits before it chooses the rank to
    /// blame and stops the rest (ended early once every rank has exited or one was killed by a signal).
    /// </summary>
    internal static readonly TimeSpan BlameWindow = TimeSpan.FromSeconds(1);

    /// <summary>Waits for the ranks; on the first failure or a stop request stops the rest. Returns the exit code.</summary>
    private int Watch()
    {
        var running = new List<Rank>(_ranks);
        var failures = new List<(Rank Rank, int Code)>(); // non-zero exits, in the order the launcher noticed them
        Stopwatch? window = null;                           // runs from the first failure
        while (running.Count > 0 && !_stopRequested.Task.IsCompleted)
        {
            var left = window is null ? Timeout.InfiniteTimeSpan : BlameWindow - window.Elapsed;
            if (window is not null && left <= TimeSpan.Zero)
                break;
            var waitOn = new Task[running.Count + 1];
            for (int i = 0; i < running.Count; i++)
                waitOn[i] = running[i].Exited;
            waitOn[^1] = _stopRequested.Task;
            Task.WaitAny(waitOn, left);
            if (_stopRequested.Task.IsCompleted)
                break;
            // Ranks noticed at the same time are taken in rank order.
            foreach (var rank in running.Where(x => x.Exited.IsCompleted).ToList())
            {
                running.Remove(rank);
                int code = rank.Process.ExitCode;
                if (code != 0)
                    failures.Add((rank, code));
            }
            if (failures.Count > 0)
            {
                window ??= Stopwatch.StartNew();
                if (failures.Any(f => BlameClass(f.Code) == 0))
                    break; // nothing outranks a SIGKILL
            }
        }

        if (failures.Count > 0)
        {
            var (blamed, code) = Blame(failures);
            int others = running.Count(x => !x.Exited.IsCompleted);
            string stopping = others switch { 0 => "", 1 => "; stopping the other rank", _ => $"; stopping the other {others} ranks" };
            // The other failures of the window (most often consequences: peers that noticed the blamed rank's death).
            string also = string.Concat(failures.Where(f => f.Rank != blamed).Select(f => $"; rank {f.Rank.Index} also {DescribeExit(f.Code)}"));
            _sink.Message($"rank {blamed.Index} {DescribeExit(code)}{also}{stopping}");
            Stop(running);
            return FailureExitCode(code);
        }
        if (_stopRequested.Task.IsCompleted)
        {
            int signal = Volatile.Read(ref _signal);
            int others = running.Count(x => !x.Exited.IsCompleted);
            _sink.Message($"received {SignalName(signal)}{(others > 0 ? $"; stopping the {Ranks(others)} still running" : "")}");
            Stop(running);
            return ExitCodes.SignalBase + signal;
        }
        return ExitCodes.Success;
    }

    /// <summary>
    /// The rank to blame among the failures seen in the blame window (in the order they were noticed; ranks noticed
    /// together in rank order): the first killed by SIGKILL, else the first killed by another signal except SIGABRT,
    /// else the first that exited non-zero or of SIGABRT. The reason: when a rank dies, its peers notice (a closed
    /// connection, an abort notice) and may exit with an error of their own before the launcher has noticed the dead
    /// rank; a peer reacting that way exits non-zero, or with SIGABRT (how .NET ends a process on an unhandled exception),
    /// but is not killed by another signal (the launcher sends none until it has chosen), and SIGKILL is not how a
    /// process ends on an error of its own (it comes from outside: a user, the OOM killer).
    /// </summary>
    private static (Rank Rank, int Code) Blame(List<(Rank Rank, int Code)> failures) =>
        failures.OrderBy(f => BlameClass(f.Code)).First(); // stable: the order noticed within a class

    /// <summary>0: killed by SIGKILL; 1: killed by another signal except SIGABRT; 2: any other non-zero exit.</summary>
    private static int BlameClass(int code) =>
        !KilledBySignal(code) ? 2 : (code - ExitCodes.SignalBase) switch { 9 => 0, 6 => 2, _ => 1 };

    /// <summary>Whether an exit code means "killed by a signal" (.NET reports 128+S for a process killed by signal S on
    /// Unix; a rank that exits with such a code itself is taken the same way, as shells do).</summary>
    private static bool KilledBySignal(int code) =>
        !OperatingSystem.IsWindows() && code > ExitCodes.SignalBase && code <= ExitCodes.SignalBase + 64;

    /// <summary>
    /// Stops <paramref name="ranks"/>: SIGTERM to each rank's process tree, up to the grace period for them to
    /// exit, then SIGKILL (Process.Kill of the tree) for what is left. On Windows, or with a grace of 0, kills at once.
    /// </summary>
    private void Stop(IReadOnlyList<Rank> ranks)
    {
        var live = ranks.Where(x => !x.Exited.IsCompleted).ToList();
        if (live.Count == 0)
            return;
        List<ProcessId> tree = [];
        if (!OperatingSystem.IsWindows() && _options.Grace > TimeSpan.Zero)
        {
            tree = ProcessTree.Collect(live.Select(x => SafeId(x.Process)));
            foreach (var id in tree)
                ProcessTree.Signal(id.Pid, ProcessTree.SigTerm);

            var deadline = Stopwatch.StartNew();
            var allExited = Task.WhenAll(live.Select(x => x.Exited));
            while (deadline.Elapsed < _options.Grace && !_killRequested.Task.IsCompleted)
            {
                var left = _options.Grace - deadline.Elapsed;
                if (left <= TimeSpan.Zero)
                    break;
                if (!allExited.IsCompleted)
                {
                    Task.WaitAny([allExited, _killRequested.Task], left);
                    continue;
                }
                // Every rank's own process is gone; wait for the processes they started too.
                if (!tree.Any(ProcessTree.IsAlive))
                    break;
                Task.WaitAny([_killRequested.Task], TimeSpan.FromMilliseconds(Math.Min(50, left.TotalMilliseconds)));
            }
        }

        foreach (var rank in live.Where(x => !x.Exited.IsCompleted))
        {
            try
            {
                rank.Process.Kill(entireProcessTree: true);
            }
            catch (Exception e) when (e is InvalidOperationException or Win32Exception or NotSupportedException)
            {
                // Exited in the meantime.
            }
        }
        foreach (var id in tree.Where(ProcessTree.IsAlive))
            ProcessTree.Signal(id.Pid, ProcessTree.SigKill);
        Task.WaitAll(live.Select(x => x.Exited).ToArray(), ReapLimit);
    }

    /// <summary>Waits for the output of every rank to end (bounded: see <see cref="OutputIdleLimit"/>), then closes the logs.</summary>
    private void FinishOutput()
    {
        var pumps = _ranks.SelectMany(r => r.Pumps).ToArray();
        var all = Task.WhenAll(pumps);
        var since = Stopwatch.StartNew(); // every rank has exited by now
        while (!all.Wait(TimeSpan.FromMilliseconds(200)))
        {
            // Give up on pipes that something outside the ranks keeps open, once nothing has moved on them for a
            // while (counted from the ranks' exit too, so that a rank silent for long still gets its last bytes read).
            if (since.Elapsed >= OutputIdleLimit &&
                _ranks.Where(r => r.Pumps.Any(p => !p.IsCompleted)).All(r => r.Output.IsIdle(OutputIdleLimit)))
                break;
        }
        foreach (var rank in _ranks)
        {
            rank.Output.Dispose();
            rank.Process.Dispose();
        }
    }

    private ProcessStartInfo StartInfo(int rank, int port)
    {
        var psi = new ProcessStartInfo(_options.Command)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string a in _options.Arguments)
            psi.ArgumentList.Add(a);
        string r = rank.ToString(CultureInfo.InvariantCulture);
        string n = _options.Ranks.ToString(CultureInfo.InvariantCulture);
        psi.Environment["RANK"] = r;
        psi.Environment["LOCAL_RANK"] = r;
        psi.Environment["WORLD_SIZE"] = n;
        psi.Environment["LOCAL_WORLD_SIZE"] = n;
        psi.Environment["GROUP_RANK"] = "0";
        psi.Environment["MASTER_ADDR"] = _options.MasterAddress;
        psi.Environment["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture);
        psi.Environment["SHARDWISE_LAUNCH"] = "1";
        return psi;
    }

    private void RegisterSignals()
    {
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
        {
            try
            {
                _signalRegistrations.Add(PosixSignalRegistration.Create(signal, OnSignal));
            }
            catch (Exception e) when (e is PlatformNotSupportedException or IOException)
            {
                // Not on this platform: the default action applies.
            }
        }
    }

    private void OnSignal(PosixSignalContext context)
    {
        context.Cancel = true; // the launcher stops the ranks first, then exits with 128 + signal
        if (Interlocked.Increment(ref _signalCount) == 1)
        {
            Volatile.Write(ref _signal, context.Signal == PosixSignal.SIGINT ? 2 : 15);
            _stopRequested.TrySetResult();
        }
        else
        {
            _killRequested.TrySetResult();
        }
    }

    private static int SafeId(Process p)
    {
        try
        {
            return p.Id;
        }
        catch (InvalidOperationException)
        {
            return 0;
        }
    }

    /// <summary>A free TCP port: binds port 0 on the loopback interface and reads what the system chose.</summary>
    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
        finally
        {
            listener.Stop();
        }
    }

    private string StartError(Exception e)
    {
        if (e is not Win32Exception w)
            return e.Message;
        // The bare system message ("No such file or directory"), without .NET's long preamble.
        string message = new Win32Exception(w.NativeErrorCode).Message;
        bool searched = _options.Command.IndexOfAny(['/', Path.DirectorySeparatorChar]) < 0;
        return searched ? $"{message} (looked up on PATH)" : message;
    }

    private static string Ranks(int count) => count == 1 ? "1 rank" : $"{count} ranks";

    /// <summary>"exited with code 3", and for codes above 128 on Unix the signal they usually mean.</summary>
    private static string DescribeExit(int code)
    {
        if (KilledBySignal(code))
        {
            int signal = code - ExitCodes.SignalBase;
            return $"exited with code {code} (128+{signal}: killed by {SignalName(signal)})";
        }
        return $"exited with code {code}";
    }

    /// <summary>Exit code of the launcher for a rank that failed with <paramref name="code"/>: the same code where
    /// the platform can carry it (Unix: 1 to 255), 1 otherwise.</summary>
    private static int FailureExitCode(int code) =>
        OperatingSystem.IsWindows() ? code : code is > 0 and <= 255 ? code : ExitCodes.Failure;

    private static string SignalName(int signal)
    {
        string? name = OperatingSystem.IsLinux()
            ? signal switch
            {
                1 => "SIGHUP", 2 => "SIGINT", 3 => "SIGQUIT", 4 => "SIGILL", 5 => "SIGTRAP", 6 => "SIGABRT",
                7 => "SIGBUS", 8 => "SIGFPE", 9 => "SIGKILL", 10 => "SIGUSR1", 11 => "SIGSEGV", 12 => "SIGUSR2",
                13 => "SIGPIPE", 14 => "SIGALRM", 15 => "SIGTERM", _ => null,
            }
            : signal switch { 2 => "SIGINT", 9 => "SIGKILL", 15 => "SIGTERM", _ => null };
        return name ?? $"signal {signal}";
    }

    /// <summary>Removes the signal handlers.</summary>
    public void Dispose()
    {
        foreach (var registration in _signalRegistrations)
            registration.Dispose();
    }
}
