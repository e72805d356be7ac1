using System.Reflection;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;

namespace Shardwise.Bench;

/// <summary>
/// Entry point. <c>main [args]</c> (the default when no command is given) runs <see cref="MainJob"/>;
/// <c>bench [BenchmarkDotNet args]</c> runs the benchmarks in this assembly through BenchmarkDotNet
/// (e.g. <c>bench --filter '*'</c>, <c>bench --list flat</c>, <c>bench --job short --filter '*Gemm*'</c>).
/// <c>bench --help</c> (and <c>help</c>) list Shardwise's benchmarks and the main job's options before
/// BenchmarkDotNet's own options.
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

            case "hybrid":
                return HybridBenchmarks.Run(rest);

            case "calibrate":
                return PlannerCommands.Calibrate(rest);

            case "plan":
                return PlannerCommands.Plan(rest);

            case "plan-validate":
                return PlannerCommands.Validate(rest);

            case "shapes":
                return ShapeComparison.Run(rest);

            case "openblas-core":
                return OpenBlasCore.PrintCore();

            case "bench" when rest.Any(a => a is "--help" or "-h" or "-?" or "help"):
                PrintUsage(Console.Out);
                Console.Out.WriteLine();
                Console.Out.WriteLine("BenchmarkDotNet's options (after `bench`):");
                BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(["--help"]);
                return 0;

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
        writer.WriteLine("usage: Shardwise.Bench [main [options...] | shapes [options...] | hybrid [options...] | bench [BenchmarkDotNet options...] | help]");
        writer.WriteLine("  main   run the main job (default); its options:");
        MainJob.PrintUsage(writer, indent: "    ");
        writer.WriteLine("  shapes issue 15's comparisons in one interleaved run (small shapes and skinny M vs OpenBLAS/oneDNN, per-call cost,");
        writer.WriteLine("         sharded vs unsharded, large shapes), each with its target: ShapeComparison.cs; its options:");
        ShapeComparison.PrintUsage(writer, indent: "    ");
        writer.WriteLine("  openblas-core  prints the OpenBLAS kernel (core) this environment selects");
        writer.WriteLine("  hybrid [--quick] [--shapes PPxDPxTP,...] [--threads N]  the end-to-end example's step time per mesh shape");
        writer.WriteLine("         (8 virtual ranks), with the communication time per dimension (tp, pp, dp): HybridBenchmarks.cs");
        writer.WriteLine("  calibrate [--out FILE] [--ranks N] [--quick] [--processes]  measures this machine (GEMM curve, per-operation cost,");
        writer.WriteLine("         memory bandwidth, collectives) and writes a cluster description for the planner: PlannerCommands.cs;");
        writer.WriteLine("         --processes: under `shardwise launch -n N`, the job's processes are the node's devices");
        writer.WriteLine("  plan [--model 7b|70b|ffn:LxHxFxROWS] [--cluster h100[:NODES]|h200[:NODES]|FILE] [--roce] [--inter-bw SCALE]");
        writer.WriteLine("       [--devices N] [--rows N] [--fp32] [--sgd]  the planner's ranked meshes and why (docs/planner.md)");
        writer.WriteLine("  plan-validate [--cluster FILE] [--rounds N] [--quick] [--processes] [--shapes PPxDPxTP,...]  predicted vs measured");
        writer.WriteLine("         step time and memory of the hybrid-parallel example on 8 virtual ranks (--processes: every mesh of the");
        writer.WriteLine("         launched job's processes), meshes interleaved; ./build.sh plan-validate [virtual|N...] does both steps");
        writer.WriteLine("  bench  run BenchmarkDotNet benchmarks, e.g. bench --filter '*' (all), bench --filter '*Collective*',");
        writer.WriteLine("         bench --job short --filter '*.ShardedGemmBenchmarks.*', bench --list flat (the names --filter matches)");
        writer.WriteLine();
        writer.WriteLine("Shardwise's benchmarks (class: methods; parameters):");
        PrintBenchmarks(writer);
    }

    /// <summary>The benchmark classes of this assembly, read from their attributes (so the list cannot go stale).</summary>
    private static void PrintBenchmarks(TextWriter writer)
    {
        const BindingFlags Members = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static;
        var classes = typeof(Program).Assembly.GetTypes()
            .Where(t => t.IsClass && !t.IsAbstract && t.GetMethods(Members).Any(m => m.IsDefined(typeof(BenchmarkAttribute))))
            .OrderBy(t => t.Name, StringComparer.Ordinal);
        foreach (Type type in classes)
        {
            writer.WriteLine($"  {type.Name}  (--filter '*.{type.Name}.*')");
            foreach (MethodInfo method in type.GetMethods(Members).Where(m => m.IsDefined(typeof(BenchmarkAttribute))))
            {
                var attribute = method.GetCustomAttribute<BenchmarkAttribute>()!;
                string description = attribute.Description is { Length: > 0 } d && d != method.Name ? $": {d}" : "";
                string baseline = attribute.Baseline ? " (baseline)" : "";
                writer.WriteLine($"    {method.Name}{description}{baseline}");
            }
            foreach (PropertyInfo property in type.GetProperties(Members))
            {
                if (ParameterValues(type, property) is { } values)
                {
                    writer.WriteLine($"    parameter {property.Name}: {values}");
                }
            }
        }
    }

    private static string? ParameterValues(Type type, PropertyInfo property)
    {
        if (property.GetCustomAttribute<ParamsAttribute>() is { } fixedValues)
        {
            return string.Join(", ", fixedValues.Values.Select(v => v?.ToString()));
        }
        if (property.GetCustomAttribute<ParamsSourceAttribute>() is { } source)
        {
            const BindingFlags Static = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static;
            object? values = type.GetProperty(source.Name, Static)?.GetValue(null) ?? type.GetMethod(source.Name, Static, [])?.Invoke(null, null);
            return values is System.Collections.IEnumerable list
                ? string.Join(", ", list.Cast<object?>().Select(v => v?.ToString()))
                : $"from {source.Name}";
        }
        return null;
    }
}
