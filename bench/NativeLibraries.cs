using System.Reflection;
using System.Runtime.InteropServices;

namespace Shardwise.Bench;

/// <summary>
/// The one <see cref="NativeLibrary.SetDllImportResolver"/> of the bench assembly (a resolver can be set once per
/// assembly): the baseline libraries the benchmarks compare against, each found through an environment override first,
/// then its Debian soname, then the system search. <see cref="OpenBlas"/> and <see cref="OneDnn"/> install it from their
/// static constructors, so it is in place before their first P/Invoke.
/// </summary>
internal static class NativeLibraries
{
    private static int s_installed;

    /// <summary>Installs the resolver (once; later calls do nothing).</summary>
    public static void Install()
    {
        if (Interlocked.Exchange(ref s_installed, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
    }

    // name -> (environment override, candidates, what to install when none loads)
    private static readonly Dictionary<string, (string Env, string[] Candidates, string Install)> s_libraries = new()
    {
        [OpenBlas.Lib] = ("SHARDWISE_OPENBLAS_PATH", ["libopenblas.so.0", "openblas"], "install libopenblas0-pthread (./build.sh deps)"),
        [OneDnn.Lib] = ("SHARDWISE_DNNL_PATH", ["libdnnl.so.2", "dnnl"], "install libdnnl-dev (./build.sh deps)"),
        [OneDnn.OpenMpLib] = ("SHARDWISE_GOMP_PATH", ["libgomp.so.1", "gomp"], "install libgomp1 (comes with libdnnl-dev)"),
    };

    /// <summary>Loads <paramref name="name"/> (a key above) or returns 0 when it is not found.</summary>
    public static nint TryLoad(string name, Assembly? assembly = null, DllImportSearchPath? searchPath = null)
    {
        var (env, candidates, _) = s_libraries[name];
        var custom = Environment.GetEnvironmentVariable(env);
        if (!string.IsNullOrEmpty(custom) && NativeLibrary.TryLoad(custom, out var h)) return h;
        foreach (var candidate in candidates)
            if (assembly is null ? NativeLibrary.TryLoad(candidate, out h) : NativeLibrary.TryLoad(candidate, assembly, searchPath, out h))
                return h;
        return 0;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (!s_libraries.TryGetValue(name, out var lib)) return 0;
        nint h = TryLoad(name, assembly, searchPath);
        if (h != 0) return h;
        throw new DllNotFoundException(
            $"{name} was not found (tried {lib.Env}, {string.Join(", ", lib.Candidates)}); {lib.Install}.");
    }
}
