using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Shardwise.Bench;

/// <summary>
/// Which OpenBLAS kernel (its "core") the interleaved comparisons run against. OpenBLAS (DYNAMIC_ARCH) reads
/// <c>OPENBLAS_CORETYPE</c> (forces a core) and <c>OPENBLAS_L2_SIZE</c> when it is loaded, and a machine's environment may
/// set them (e.g. <c>OPENBLAS_CORETYPE=Haswell</c>, an AVX2 kernel on an AVX-512 processor). <see cref="Apply"/> changes
/// the native environment of this process alone (libc <c>unsetenv</c>/<c>setenv</c>; .NET's own
/// <c>Environment.SetEnvironmentVariable</c> does not reach native <c>getenv</c>), so it must run before the first
/// OpenBLAS call; tests, CI and the other benchmarks keep the environment they were given.
/// <list type="bullet">
/// <item><c>auto</c> (default): OpenBLAS's own choice, with both variables unset, when that is an AVX-512 kernel or the
/// processor has no AVX-512; otherwise (an OpenBLAS that does not know a newer AVX-512 processor falls back to an old SSE
/// kernel: 0.3.21 picks Prescott on some Xeon VMs) its AVX-512 kernel <c>SkylakeX</c>. OpenBLAS's own choice is found
/// by a child process (<c>Shardwise.Bench openblas-core</c>) started without the two variables.</item>
/// <item><c>own</c>: both variables unset, whatever OpenBLAS picks.</item>
/// <item><c>env</c>: the environment as it is.</item>
/// <item>a core name (<c>SkylakeX</c>, <c>Cooperlake</c>, <c>Haswell</c>, …): <c>OPENBLAS_CORETYPE</c> = that name,
/// <c>OPENBLAS_L2_SIZE</c> unset.</item>
/// </list>
/// </summary>
internal static partial class OpenBlasCore
{
    private const string CoreVar = "OPENBLAS_CORETYPE", L2Var = "OPENBLAS_L2_SIZE";
    private static readonly string[] s_avx512Cores = ["SkylakeX", "Cooperlake", "SapphireRapids"];
    private static readonly object s_lock = new();
    private static string? s_applied;

    [LibraryImport("libc.so.6", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int unsetenv(string name);

    [LibraryImport("libc.so.6", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int setenv(string name, string value, int overwrite);

    /// <summary>True for OpenBLAS cores whose sgemm kernel uses AVX-512.</summary>
    public static bool IsAvx512(string? core) => core is not null && s_avx512Cores.Contains(core, StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Applies <paramref name="mode"/> (see the class) once per process, before OpenBLAS is loaded; returns a line that
    /// says what was done (later calls return the first call's line).
    /// </summary>
    public static string Apply(string mode)
    {
        lock (s_lock)
        {
            if (s_applied is not null) return s_applied;
            string before = Describe(Environment.GetEnvironmentVariable(CoreVar), Environment.GetEnvironmentVariable(L2Var));
            switch (mode)
            {
                case "env":
                    s_applied = $"environment as given ({before})";
                    break;
                case "own":
                    Unset();
                    s_applied = $"OpenBLAS's own choice ({CoreVar}, {L2Var} unset for this process; were {before})";
                    break;
                case "auto":
                    string? own = ProbeOwnChoice();
                    if (IsAvx512(own) || !Avx512F.IsSupported)
                    {
                        Unset();
                        s_applied = $"OpenBLAS's own choice, {own ?? "unknown"} ({CoreVar}, {L2Var} unset for this process; were {before})";
                    }
                    else
                    {
                        Force("SkylakeX");
                        s_applied = $"{CoreVar}=SkylakeX for this process: OpenBLAS's own choice here is {own ?? "unknown"}, not an AVX-512 kernel, on an AVX-512 processor ({L2Var} unset; were {before})";
                    }
                    break;
                default:
                    Force(mode);
                    s_applied = $"{CoreVar}={mode} for this process ({L2Var} unset; were {before})";
                    break;
            }
            return s_applied;
        }
    }

    private static string Describe(string? core, string? l2) =>
        $"{CoreVar}={(core is null ? "(unset)" : core)}, {L2Var}={(l2 is null ? "(unset)" : l2)}";

    private static void Unset()
    {
        unsetenv(CoreVar);
        unsetenv(L2Var);
    }

    private static void Force(string core)
    {
        unsetenv(L2Var);
        if (setenv(CoreVar, core, 1) != 0) throw new InvalidOperationException($"setenv({CoreVar}) failed");
    }

    /// <summary>
    /// The core OpenBLAS picks by itself here: <c>Shardwise.Bench openblas-core</c> in a child process without the two
    /// variables (null when that fails).
    /// </summary>
    private static string? ProbeOwnChoice()
    {
        try
        {
            string host = Environment.ProcessPath ?? "dotnet";
            var start = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            if (Path.GetFileNameWithoutExtension(host) == "dotnet") start.ArgumentList.Add(typeof(OpenBlasCore).Assembly.Location);
            start.ArgumentList.Add("openblas-core");
            start.Environment.Remove(CoreVar);
            start.Environment.Remove(L2Var);
            using var child = Process.Start(start)!;
            string output = child.StandardOutput.ReadToEnd().Trim();
            child.StandardError.ReadToEnd();
            if (!child.WaitForExit(30_000)) child.Kill();
            return child.ExitCode == 0 && output.Length > 0 ? output : null;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException or IOException)
        {
            return null;
        }
    }

    /// <summary>The <c>openblas-core</c> command: prints the core OpenBLAS picks in this process's environment.</summary>
    public static int PrintCore()
    {
        Console.WriteLine(OpenBlas.CoreName());
        return 0;
    }
}
