using System.Reflection;

namespace Shardwise.Launcher;

/// <summary>The <c>shardwise</c> command line: <c>launch</c>, <c>--help</c>, <c>--version</c>.</summary>
internal static class Cli
{
    /// <summary>Usage of the <c>shardwise</c> command.</summary>
    public const string MainUsage = """
        Usage: shardwise <command> [options]

        Commands:
          launch     start one process per rank on this machine, with the environment of torchrun
                     (see 'shardwise launch --help')

        Options:
          -h, --help     show this text
          --version      show the version
        """;

    /// <summary>Usage of <c>shardwise launch</c> (kept true to what <see cref="LaunchOptions"/> and <see cref="LaunchSession"/> do).</summary>
    public const string LaunchUsage = """
        Usage: shardwise launch -n N [options] [--] <command> [args...]

        Starts <command> N times on this machine, once per rank, with the environment that torchrun
        sets; prefixes every line the ranks print with "[rank R] "; and when one rank fails, stops all
        the others. Single node only: every rank runs on this machine (GROUP_RANK is always 0).

        Options:
          -n, --nproc-per-node N  number of ranks to start, 1 to 1024 (required)
          --master-addr ADDR      address given to the ranks as MASTER_ADDR (default 127.0.0.1)
          --master-port PORT      port given as MASTER_PORT, 1 to 65535 (default: a free TCP port,
                                  picked by binding port 0 on the loopback interface)
          --grace SECONDS         when the ranks are stopped: time between SIGTERM and SIGKILL
                                  (default 5; 0 kills at once)
          --no-prefix             print the ranks' lines without the "[rank R] " prefix
          --tee-dir DIR           also write each rank's output (stdout and stderr, no prefix) to
                                  DIR/rank-R.log (the folder is created; the files are overwritten)
          -h, --help              show this text

        Options end at '--' or at the first argument that is not an option; the rest is the command
        and its arguments, passed on unchanged. The command is started directly, without a shell
        (write sh -c '...' for shell syntax) and is looked up on PATH.

        Environment of rank R (added to the launcher's own environment):
          RANK=R  LOCAL_RANK=R  WORLD_SIZE=N  LOCAL_WORLD_SIZE=N  GROUP_RANK=0
          MASTER_ADDR=ADDR  MASTER_PORT=PORT  SHARDWISE_LAUNCH=1

        Output: stdout and stderr of every rank are read line by line and written whole, with the
        prefix, to the launcher's stdout and stderr respectively; an unfinished last line is written
        when the rank exits. Ranks share the launcher's stdin. Once every rank has exited, the launcher
        stops reading pipes that a process left behind by a rank keeps open after 2 s without output.

        Failure: when a rank exits with a non-zero code (or is killed by a signal), the launcher says
        so on stderr, sends SIGTERM to every other rank and to the processes they started, waits up to
        --grace seconds, then kills whatever is left (on Windows the ranks are killed at once). When
        the launcher itself gets Ctrl+C or SIGTERM, it stops every rank the same way (a second Ctrl+C
        kills them at once).

        Blame: after the first rank fails, the launcher waits up to 1 s for other exits (less when all
        have exited or one was killed by SIGKILL), then names the first rank killed by SIGKILL, else
        the first killed by another signal except SIGABRT, else the first that exited non-zero or of
        SIGABRT (peers of a dead rank often exit with an error of their own, or abort on an unhandled
        exception, before the launcher notices the dead rank); the other failures are mentioned.

        Exit code: 0 when every rank exits with 0; otherwise the code of the blamed rank (128+S when
        it was killed by signal S); 2 for bad usage; 127 when the command cannot be started; 128+S
        when the launcher was stopped by signal S (Ctrl+C: 130, SIGTERM: 143).

        Example:
          shardwise launch -n 4 -- dotnet MyModel.dll --steps 100
        """;

    /// <summary>Runs the <c>shardwise</c> command line.</summary>
    /// <param name="args">The command-line arguments.</param>
    /// <param name="stdout">Where help and version go.</param>
    /// <param name="stderr">Where usage errors go.</param>
    /// <returns>The process exit code.</returns>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length == 0)
        {
            stderr.WriteLine("shardwise: no command given: expected 'launch' (see 'shardwise --help')");
            return ExitCodes.Usage;
        }
        switch (args[0])
        {
            case "-h":
            case "--help":
            case "help":
                stdout.WriteLine(MainUsage);
                return ExitCodes.Success;
            case "--version":
                stdout.WriteLine($"shardwise {Version}");
                return ExitCodes.Success;
            case "launch":
                return Launch(args.AsSpan(1).ToArray(), stdout, stderr);
            default:
                stderr.WriteLine($"shardwise: unknown command '{args[0]}': expected 'launch' (see 'shardwise --help')");
                return ExitCodes.Usage;
        }
    }

    private static int Launch(string[] args, TextWriter stdout, TextWriter stderr)
    {
        LaunchOptions options;
        try
        {
            options = LaunchOptions.Parse(args);
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"shardwise launch: {e.Message}");
            return ExitCodes.Usage;
        }
        if (options.Help)
        {
            stdout.WriteLine(LaunchUsage);
            return ExitCodes.Success;
        }
        stdout.Flush();
        stderr.Flush();
        return LaunchSession.Run(options);
    }

    /// <summary>The informational version of this assembly, without the source revision suffix.</summary>
    public static string Version
    {
        get
        {
            string? v = typeof(Cli).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
            if (string.IsNullOrEmpty(v))
                return typeof(Cli).Assembly.GetName().Version?.ToString() ?? "unknown";
            int plus = v.IndexOf('+');
            return plus >= 0 ? v[..plus] : v;
        }
    }
}
