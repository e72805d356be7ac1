using System.Globalization;

namespace Shardwise.Launcher;

/// <summary>The parsed options of <c>shardwise launch</c>.</summary>
internal sealed class LaunchOptions
{
    /// <summary>The most ranks one launch may start.</summary>
    public const int MaxRanks = 1024;

    /// <summary>The longest grace period accepted, in seconds (one day).</summary>
    public const double MaxGraceSeconds = 86400;

    /// <summary>Number of ranks (processes) to start: <c>-n</c> / <c>--nproc-per-node</c>.</summary>
    public int Ranks { get; private set; }

    /// <summary>Address of rank 0 given to every rank as MASTER_ADDR.</summary>
    public string MasterAddress { get; private set; } = "127.0.0.1";

    /// <summary>Port given as MASTER_PORT, or null to pick a free one.</summary>
    public int? MasterPort { get; private set; }

    /// <summary>Time between SIGTERM and SIGKILL when the ranks are stopped.</summary>
    public TimeSpan Grace { get; private set; } = TimeSpan.FromSeconds(5);

    /// <summary>Whether output lines get the <c>[rank R] </c> prefix.</summary>
    public bool Prefix { get; private set; } = true;

    /// <summary>Folder for the per-rank logs (<c>rank-R.log</c>), or null.</summary>
    public string? TeeDirectory { get; private set; }

    /// <summary>Whether <c>--help</c> was given (nothing else is then required).</summary>
    public bool Help { get; private set; }

    /// <summary>The program to start for each rank.</summary>
    public string Command { get; private set; } = "";

    /// <summary>The arguments passed to <see cref="Command"/>, unchanged.</summary>
    public IReadOnlyList<string> Arguments { get; private set; } = [];

    /// <summary>Parses the arguments that follow <c>launch</c>.</summary>
    /// <param name="args">The arguments after the word <c>launch</c>.</param>
    /// <returns>The options; <see cref="Help"/> set means only help was asked for.</returns>
    /// <exception cref="UsageException">An unknown option, a missing or malformed value, or no command.</exception>
    public static LaunchOptions Parse(IReadOnlyList<string> args)
    {
        var o = new LaunchOptions();
        bool ranksGiven = false;
        int i = 0;
        for (; i < args.Count; i++)
        {
            string a = args[i];
            if (a == "--")
            {
                i++;
                break;
            }
            // The first argument that is not an option starts the command (like torchrun and mpirun).
            if (a.Length < 2 || a[0] != '-')
                break;

            string name = a;
            string? inline = null;
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                int eq = a.IndexOf('=');
                if (eq > 0)
                {
                    name = a[..eq];
                    inline = a[(eq + 1)..];
                }
            }
            else if (a.StartsWith("-n", StringComparison.Ordinal) && a.Length > 2)
            {
                name = "-n";
                inline = a[2] == '=' ? a[3..] : a[2..];
            }

            switch (name)
            {
                case "-h":
                case "--help":
                    o.Help = true;
                    return o;
                case "-n":
                case "--nproc-per-node":
                    o.Ranks = ParseInt(name, Value(args, ref i, name, inline, RanksExpected), 1, MaxRanks, RanksExpected);
                    ranksGiven = true;
                    break;
                case "--master-addr":
                    o.MasterAddress = Value(args, ref i, name, inline, AddressExpected);
                    if (string.IsNullOrWhiteSpace(o.MasterAddress) || o.MasterAddress.Any(char.IsWhiteSpace))
                        throw Bad(name, AddressExpected, o.MasterAddress);
                    break;
                case "--master-port":
                    o.MasterPort = ParseInt(name, Value(args, ref i, name, inline, PortExpected), 1, 65535, PortExpected);
                    break;
                case "--grace":
                    {
                        string v = Value(args, ref i, name, inline, GraceExpected);
                        if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) ||
                            !double.IsFinite(s) || s < 0 || s > MaxGraceSeconds)
                            throw Bad(name, GraceExpected, v);
                        o.Grace = TimeSpan.FromSeconds(s);
                        break;
                    }
                case "--no-prefix":
                    if (inline is not null)
                        throw new UsageException($"option '--no-prefix' takes no value (got '{a}')");
                    o.Prefix = false;
                    break;
                case "--tee-dir":
                    o.TeeDirectory = Value(args, ref i, name, inline, TeeExpected);
                    if (o.TeeDirectory.Length == 0)
                        throw Bad(name, TeeExpected, o.TeeDirectory);
                    break;
                default:
                    throw new UsageException(
                        $"unknown option '{a}' (options come before the command; end them with '--'; see 'shardwise launch --help')");
            }
        }

        if (!ranksGiven)
            throw new UsageException($"option '-n' (--nproc-per-node) is required: {RanksExpected}");
        if (i >= args.Count)
            throw new UsageException("no command given: expected '-- <command> [args...]' after the options");
        if (args[i].Length == 0)
            throw new UsageException("the command is an empty string: expected '-- <command> [args...]'");
        o.Command = args[i];
        o.Arguments = args.Skip(i + 1).ToArray();
        return o;
    }

    private const string RanksExpected = "the number of ranks, an integer from 1 to 1024";
    private const string AddressExpected = "a host name or IP address, e.g. 127.0.0.1";
    private const string PortExpected = "a TCP port, an integer from 1 to 65535";
    private const string GraceExpected = "a number of seconds from 0 to 86400, e.g. 5 or 0.5";
    private const string TeeExpected = "a folder for the per-rank logs";

    private static string Value(IReadOnlyList<string> args, ref int i, string name, string? inline, string expected)
    {
        if (inline is not null)
            return inline;
        if (i + 1 >= args.Count)
            throw new UsageException($"option '{name}' expects a value: {expected}");
        return args[++i];
    }

    private static int ParseInt(string name, string value, int min, int max, string expected)
    {
        if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
            throw Bad(name, expected, value);
        return v;
    }

    private static UsageException Bad(string name, string expected, string got) =>
        new($"option '{name}' expects {expected} (got '{got}')");
}
