using BenchmarkDotNet.Running;

namespace Shardwise.Bench;

/// <summary>
/// Entry point. <c>main [args]</c> (the default when no command is given) runs <see cref="MainJob"/>;
/// <c>bench [BenchmarkDotNet args]</c> runs the benchmarks in this assembly through BenchmarkDotNet
/// (e.g. <c>bench --filter '*'</c>, <c>bench --list flat</c>, <c>bench --job short --filter '*Gemm*'</c>).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        string command = args.Length == 0 ? "main" : args[0];
        string[] rest = args.Length == 0 ? [] : args[1..];

        switch (command)
        {
            case "main":
                return MainJob.Run(rest);

            case "bench":
                var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(rest).ToList();
                // Non-zero when a selected benchmark could not be built or run, so scripts notice.
                bool failed = summaries.Any(s => s.HasCriticalValidationErrors || s.Reports.Any(r => !r.Success));
                return failed ? 1 : 0;

            case "help":
            case "--help":
            case "-h":
                PrintUsage(Console.Out);
                return 0;

            default:
                Console.Error.WriteLine($"unknown command '{command}'");
                PrintUsage(Console.Error);
                return 2;
        }
    }

    private static void PrintUsage(TextWriter writer)
    {
        writer.WriteLine("usage: Shardwise.Bench [main [args...] | bench [BenchmarkDotNet args...] | help]");
        writer.WriteLine("  main   run the main job (default)");
        writer.WriteLine("  bench  run BenchmarkDotNet benchmarks, e.g. bench --filter '*' or bench --list flat");
    }
}
