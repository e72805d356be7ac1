namespace Shardwise.Launcher;

/// <summary>Entry point of the <c>shardwise</c> command.</summary>
internal static class Program
{
    /// <summary>Runs the command line and returns the process exit code (see <see cref="Cli"/>).</summary>
    /// <param name="args">The command-line arguments.</param>
    /// <returns>The exit code.</returns>
    private static int Main(string[] args) => Cli.Run(args, Console.Out, Console.Error);
}
