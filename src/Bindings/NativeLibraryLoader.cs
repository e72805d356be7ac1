using System.Diagnostics.CodeAnalysis;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>
/// Finds the native core (libshardwise.so / shardwise.dll / libshardwise.dylib). Search order:
/// <list type="number">
/// <item>the environment variable <c>SHARDWISE_NATIVE_PATH</c>: a file, or a folder holding the library;</item>
/// <item>the folder of this assembly, then <c>runtimes/&lt;rid&gt;/native</c> below it (NuGet layout);</item>
/// <item>the application's base folder, then the operating system's default search.</item>
/// </list>
/// Registered for this assembly by a module initializer, so no call is needed before first use.
/// </summary>
public static class NativeLibraryLoader
{
    /// <summary>The library name used in the P/Invoke declarations.</summary>
    public const string LibraryName = "shardwise";

    /// <summary>The environment variable that overrides where the library is loaded from.</summary>
    public const string PathVariable = "SHARDWISE_NATIVE_PATH";

    private static string? s_loadedFrom;

    /// <summary>The path the native library was loaded from, once it has been loaded.</summary>
    public static string? LoadedFrom => s_loadedFrom;

#pragma warning disable CA2255 // module initializers are meant for libraries here: registering a resolver is what they are for
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Register() => NativeLibrary.SetDllImportResolver(typeof(NativeLibraryLoader).Assembly, Resolve);

    private static string FileName =>
        OperatingSystem.IsWindows() ? "shardwise.dll" : OperatingSystem.IsMacOS() ? "libshardwise.dylib" : "libshardwise.so";

    private static string Rid =>
        (OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux") + "-" +
        RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();

    /// <summary>The candidate paths, in search order (for diagnostics).</summary>
    // Assembly.Location is empty in single-file and NativeAOT apps; the code below then uses AppContext.BaseDirectory.
    // The attribute (unlike a #pragma) also silences the warning where ILLink and ILCompiler report it again.
    [UnconditionalSuppressMessage("SingleFile", "IL3000:Avoid accessing Assembly file path when publishing as a single file",
        Justification = "An empty Location falls back to AppContext.BaseDirectory.")]
    public static IReadOnlyList<string> Candidates()
    {
        var list = new List<string>();
        var env = Environment.GetEnvironmentVariable(PathVariable);
        if (!string.IsNullOrEmpty(env))
            list.Add(Directory.Exists(env) ? Path.Combine(env, FileName) : env);
        var here = Path.GetDirectoryName(typeof(NativeLibraryLoader).Assembly.Location);
        if (string.IsNullOrEmpty(here)) here = AppContext.BaseDirectory; // single-file / AOT
        list.Add(Path.Combine(here, FileName));
        list.Add(Path.Combine(here, "runtimes", Rid, "native", FileName));
        list.Add(Path.Combine(AppContext.BaseDirectory, FileName));
        return list;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != LibraryName) return 0;
        var envSet = !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(PathVariable));
        var candidates = Candidates();
        for (int i = 0; i < candidates.Count; i++)
        {
            var path = candidates[i];
            if (File.Exists(path) && NativeLibrary.TryLoad(path, out var handle))
            {
                s_loadedFrom = path;
                return handle;
            }
            if (i == 0 && envSet)
                throw new DllNotFoundException(
                    $"{PathVariable} is set to '{Environment.GetEnvironmentVariable(PathVariable)}' but '{path}' " +
                    "could not be loaded; expected the path of libshardwise or of a folder that holds it.");
        }
        if (NativeLibrary.TryLoad(FileName, assembly, searchPath, out var fallback))
        {
            s_loadedFrom = FileName;
            return fallback;
        }
        throw new DllNotFoundException(
            $"The Shardwise native library '{FileName}' was not found. Searched: {string.Join(", ", candidates)} " +
            $"and the system library path. Build it with ./build.sh native or set {PathVariable}.");
    }
}
