using System.Reflection;
using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// A project made with the .NET SDK's defaults (ImplicitUsings=enable) imports System, System.Collections.Generic,
/// System.IO, System.Linq, System.Net.Http, System.Threading and System.Threading.Tasks. A public type of Shardwise with
/// the name (and arity) of a type there makes <c>using Shardwise.Parallel;</c> ambiguous: CS0104 wherever the user writes
/// the name (as <c>Stream</c> did, against System.IO.Stream, before it became <see cref="DeviceStream"/>).
/// </summary>
public class ImplicitUsingsTests
{
    private static readonly string[] ImplicitNamespaces =
        ["System", "System.Collections.Generic", "System.IO", "System.Linq", "System.Net.Http", "System.Threading", "System.Threading.Tasks"];

    [Test]
    public void NoPublicTypeOfShardwiseHasTheNameOfATypeTheImplicitUsingsImport()
    {
        var imported = ImportedTypeNames();
        Assert.That(imported, Contains.Key("Stream").And.ContainKey("List`1").And.ContainKey("Barrier"),
            "the runtime's assemblies were not all read: the check would pass for the wrong reason");
        var clashes = new[] { typeof(Device).Assembly, typeof(Native).Assembly }
            .SelectMany(a => a.GetExportedTypes())
            .Where(t => !t.IsNested && imported.ContainsKey(t.Name))
            .Select(t => $"{t.FullName} has the name of {imported[t.Name]}")
            .ToList();
        Assert.That(clashes, Is.Empty, "with ImplicitUsings=enable, `using Shardwise.Parallel;` makes these names ambiguous (CS0104)");
    }

    // Name (with the generic arity, as Type.Name: "List`1") -> full name, for every public top-level type of the implicit
    // namespaces in the runtime's System.* assemblies.
    private static Dictionary<string, string> ImportedTypeNames()
    {
        var names = new Dictionary<string, string>();
        foreach (string file in Directory.GetFiles(RuntimeEnvironment.GetRuntimeDirectory(), "System.*.dll"))
        {
            Type[] types;
            try { types = Assembly.Load(AssemblyName.GetAssemblyName(file)).GetExportedTypes(); }
            catch (Exception e) when (e is BadImageFormatException or FileLoadException or FileNotFoundException or ReflectionTypeLoadException)
            {
                TestContext.Out.WriteLine($"not read: {Path.GetFileName(file)} ({e.GetType().Name})"); // e.g. not a managed assembly
                continue;
            }
            foreach (var t in types)
                if (!t.IsNested && t.Namespace is { } ns && ImplicitNamespaces.Contains(ns))
                    names.TryAdd(t.Name, t.FullName!);
        }
        return names;
    }
}
