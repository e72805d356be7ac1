using System.Runtime.InteropServices;

namespace Shardwise.Tests;

/// <summary>
/// Checks that the native core was built and copied next to the tests (through the Shardwise.Bindings
/// project reference), or is where SHARDWISE_NATIVE_PATH says, and that its C ABI can be reached directly,
/// independently of the managed bindings.
/// </summary>
[TestFixture]
public sealed unsafe class NativeLibrarySmokeTests
{
    private const int ExpectedAbiVersion = 8; // SW_ABI_VERSION of native/include/shardwise.h (2: sw_gemm_ex; 3: split, point-to-point; 4: sw_gemm_grouped; 5: agreement check; 6: sw_comm_get_transport; 7: softmax, norms; 8: tree reduction)

    private nint _handle;

    private static string NativeLibraryFileName =>
        OperatingSystem.IsWindows() ? "shardwise.dll"
        : OperatingSystem.IsMacOS() ? "libshardwise.dylib"
        : "libshardwise.so";

    // The library the bindings load: SHARDWISE_NATIVE_PATH when set (a GPU bundle points it at a native build
    // made on that machine), else the copy beside the tests.
    private static string NativeLibraryPath => Shardwise.Bindings.NativeLibraryLoader.Candidates()[0];

    [OneTimeSetUp]
    public void LoadLibrary()
    {
        Assert.That(File.Exists(NativeLibraryPath), Is.True,
            $"{NativeLibraryPath} is missing: build the native library first (./build.sh native) and rebuild the tests.");
        _handle = NativeLibrary.Load(NativeLibraryPath);
    }

    [OneTimeTearDown]
    public void FreeLibrary()
    {
        if (_handle != 0)
        {
            NativeLibrary.Free(_handle);
            _handle = 0;
        }
    }

    [Test]
    public void LibraryIsCopiedToTheTestOutputDirectory()
    {
        Assert.That(_handle, Is.Not.EqualTo((nint)0));
    }

    [Test]
    public void AbiVersionIsTheHeaders()
    {
        // int32_t sw_abi_version(void)
        var swAbiVersion = (delegate* unmanaged[Cdecl]<int>)NativeLibrary.GetExport(_handle, "sw_abi_version");

        Assert.That(swAbiVersion(), Is.EqualTo(ExpectedAbiVersion));
    }

    [Test]
    public void LastErrorIsExported()
    {
        // const char* sw_last_error(void)
        Assert.That(NativeLibrary.TryGetExport(_handle, "sw_last_error", out nint address), Is.True);
        Assert.That(address, Is.Not.EqualTo((nint)0));
    }
}
