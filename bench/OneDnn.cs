using System.Runtime.InteropServices;

namespace Shardwise.Bench;

/// <summary>
/// P/Invoke to oneDNN 2.x (<c>libdnnl.so.2</c>, Debian's libdnnl-dev 2.6): the baseline of the bf16 GEMM benchmarks
/// (its bf16 matmul primitive) and, beside OpenBLAS, of the fp32 ones (<c>dnnl_sgemm</c>). Loaded at run time only
/// (<see cref="NativeLibraries"/>: <c>SHARDWISE_DNNL_PATH</c>, then libdnnl.so.2); nothing links against it. The
/// Debian build runs on OpenMP (libgomp): its thread count is set with <c>omp_set_num_threads</c> on the calling thread.
/// The C API used here is the 2.x one (dnnl.h): memory and operation descriptors are plain structs the caller owns
/// (<c>dnnl_memory_desc_init_by_tag</c>, <c>dnnl_matmul_desc_init</c>), kept here in native memory larger than their
/// size in 2.6 (696 and 2800 bytes) since only oneDNN reads them.
/// </summary>
internal static unsafe partial class OneDnn
{
    internal const string Lib = "dnnl";
    internal const string OpenMpLib = "gomp";

    static OneDnn() => NativeLibraries.Install();

    // dnnl_data_type_t
    public const int F16 = 1, BF16 = 2, F32 = 3;
    private const int FormatTagAb = 3;    // dnnl_ab: plain row-major 2D
    private const int EngineCpu = 1;      // dnnl_cpu
    private const uint StreamInOrder = 1; // dnnl_stream_in_order
    private const int ArgSrc = 1, ArgDst = 17, ArgWeights = 33; // DNNL_ARG_SRC, DNNL_ARG_DST, DNNL_ARG_WEIGHTS
    private const int MemoryDescBytes = 4096, OpDescBytes = 16384;

    [StructLayout(LayoutKind.Sequential)]
    private struct Version
    {
        public int Major, Minor, Patch;
        public nint Hash;
        public uint CpuRuntime, GpuRuntime;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct ExecArg
    {
        public int Arg;
        public nint Memory;
    }

    [LibraryImport(Lib)] private static partial Version* dnnl_version();
    [LibraryImport(Lib)] private static partial int dnnl_get_effective_cpu_isa();
    [LibraryImport(Lib)] private static partial int dnnl_engine_create(out nint engine, int kind, nuint index);
    [LibraryImport(Lib)] private static partial int dnnl_engine_destroy(nint engine);
    [LibraryImport(Lib)] private static partial int dnnl_stream_create(out nint stream, nint engine, uint flags);
    [LibraryImport(Lib)] private static partial int dnnl_stream_wait(nint stream);
    [LibraryImport(Lib)] private static partial int dnnl_stream_destroy(nint stream);
    [LibraryImport(Lib)] private static partial int dnnl_memory_desc_init_by_tag(void* desc, int ndims, long* dims, int dataType, int tag);
    [LibraryImport(Lib)] private static partial int dnnl_memory_create(out nint memory, void* desc, nint engine, void* handle);
    [LibraryImport(Lib)] private static partial int dnnl_memory_destroy(nint memory);
    [LibraryImport(Lib)] private static partial int dnnl_matmul_desc_init(void* opDesc, void* src, void* weights, void* bias, void* dst);
    [LibraryImport(Lib)] private static partial int dnnl_primitive_desc_create(out nint primitiveDesc, void* opDesc, nint attr, nint engine, nint hint);
    [LibraryImport(Lib)] private static partial int dnnl_primitive_desc_destroy(nint primitiveDesc);
    [LibraryImport(Lib)] private static partial int dnnl_primitive_create(out nint primitive, nint primitiveDesc);
    [LibraryImport(Lib)] private static partial int dnnl_primitive_execute(nint primitive, nint stream, int nargs, ExecArg* args);
    [LibraryImport(Lib)] private static partial int dnnl_primitive_destroy(nint primitive);
    [LibraryImport(Lib)]
    private static partial int dnnl_sgemm(byte transA, byte transB, long m, long n, long k, float alpha, float* a, long lda,
        float* b, long ldb, float beta, float* c, long ldc);
    [LibraryImport(OpenMpLib)] private static partial void omp_set_num_threads(int threads);

    /// <summary>True when libdnnl.so.2 (and libgomp) can be loaded.</summary>
    public static bool IsAvailable { get; } = NativeLibraries.TryLoad(Lib) != 0 && NativeLibraries.TryLoad(OpenMpLib) != 0;

    private static void Check(int status, string call)
    {
        if (status != 0) throw new InvalidOperationException($"oneDNN {call} failed with dnnl_status {status}");
    }

    /// <summary>Sets oneDNN's (OpenMP's) thread count for work started from the calling thread.</summary>
    public static void SetThreads(int threads) => omp_set_num_threads(threads);

    /// <summary>"oneDNN 2.6.3 (git hash ...), ISA avx512_core_bf16".</summary>
    public static string Describe()
    {
        var v = dnnl_version();
        string hash = Marshal.PtrToStringUTF8(v->Hash) ?? "";
        return $"oneDNN {v->Major}.{v->Minor}.{v->Patch} ({(hash.Length > 0 ? "git " + hash[..Math.Min(8, hash.Length)] + ", " : "")}CPU runtime 0x{v->CpuRuntime:x}), effective ISA {IsaName(dnnl_get_effective_cpu_isa())}";
    }

    private static string IsaName(int isa) => isa switch
    {
        0x0 => "all",
        0x1 => "sse41",
        0x3 => "avx",
        0x7 => "avx2",
        0x27 => "avx512_core",
        0x67 => "avx512_core_vnni",
        0xe7 => "avx512_core_bf16",
        0x3e7 => "avx512_core_amx",
        0x407 => "avx2_vnni",
        _ => $"0x{isa:x}",
    };

    /// <summary>Row-major C[m,n] = A[m,k] · B[k,n] in fp32 (dnnl_sgemm is row-major; alpha 1, beta 0).</summary>
    public static void Sgemm(int m, int n, int k, float* a, float* b, float* c) =>
        Check(dnnl_sgemm((byte)'N', (byte)'N', m, n, k, 1f, a, k, b, n, 0f, c, n), nameof(dnnl_sgemm));

    /// <summary>
    /// One matmul primitive <c>dst[m,n] = src[m,k] · weights[k,n]</c>, plain row-major (dnnl_ab) memory the caller owns,
    /// created once (primitive descriptor, primitive, memory objects) and run by <see cref="Execute"/> (synchronous:
    /// execute, then wait on the stream).
    /// </summary>
    public sealed class Matmul : IDisposable
    {
        private nint _engine, _stream, _pd, _prim, _src, _wei, _dst;

        public Matmul(int m, int k, int n, int srcType, int weightsType, int dstType, void* src, void* weights, void* dst)
        {
            byte* scratch = (byte*)NativeMemory.AlignedAlloc(3 * MemoryDescBytes + OpDescBytes, 64);
            try
            {
                NativeMemory.Clear(scratch, 3 * MemoryDescBytes + OpDescBytes);
                void* srcMd = scratch, weiMd = scratch + MemoryDescBytes, dstMd = scratch + 2 * MemoryDescBytes;
                void* opDesc = scratch + 3 * MemoryDescBytes;
                long* dims = stackalloc long[2];
                dims[0] = m; dims[1] = k;
                Check(dnnl_memory_desc_init_by_tag(srcMd, 2, dims, srcType, FormatTagAb), "dnnl_memory_desc_init_by_tag(src)");
                dims[0] = k; dims[1] = n;
                Check(dnnl_memory_desc_init_by_tag(weiMd, 2, dims, weightsType, FormatTagAb), "dnnl_memory_desc_init_by_tag(weights)");
                dims[0] = m; dims[1] = n;
                Check(dnnl_memory_desc_init_by_tag(dstMd, 2, dims, dstType, FormatTagAb), "dnnl_memory_desc_init_by_tag(dst)");
                Check(dnnl_matmul_desc_init(opDesc, srcMd, weiMd, null, dstMd), nameof(dnnl_matmul_desc_init));
                Check(dnnl_engine_create(out _engine, EngineCpu, 0), nameof(dnnl_engine_create));
                Check(dnnl_stream_create(out _stream, _engine, StreamInOrder), nameof(dnnl_stream_create));
                Check(dnnl_primitive_desc_create(out _pd, opDesc, 0, _engine, 0), nameof(dnnl_primitive_desc_create));
                Check(dnnl_primitive_create(out _prim, _pd), nameof(dnnl_primitive_create));
                Check(dnnl_memory_create(out _src, srcMd, _engine, src), "dnnl_memory_create(src)");
                Check(dnnl_memory_create(out _wei, weiMd, _engine, weights), "dnnl_memory_create(weights)");
                Check(dnnl_memory_create(out _dst, dstMd, _engine, dst), "dnnl_memory_create(dst)");
            }
            catch
            {
                Dispose();
                throw;
            }
            finally
            {
                NativeMemory.AlignedFree(scratch);
            }
        }

        /// <summary>Runs the matmul and waits for it.</summary>
        public void Execute()
        {
            ExecArg* args = stackalloc ExecArg[3];
            args[0] = new ExecArg { Arg = ArgSrc, Memory = _src };
            args[1] = new ExecArg { Arg = ArgWeights, Memory = _wei };
            args[2] = new ExecArg { Arg = ArgDst, Memory = _dst };
            Check(dnnl_primitive_execute(_prim, _stream, 3, args), nameof(dnnl_primitive_execute));
            Check(dnnl_stream_wait(_stream), nameof(dnnl_stream_wait));
        }

        public void Dispose()
        {
            if (_dst != 0) dnnl_memory_destroy(_dst);
            if (_wei != 0) dnnl_memory_destroy(_wei);
            if (_src != 0) dnnl_memory_destroy(_src);
            if (_prim != 0) dnnl_primitive_destroy(_prim);
            if (_pd != 0) dnnl_primitive_desc_destroy(_pd);
            if (_stream != 0) dnnl_stream_destroy(_stream);
            if (_engine != 0) dnnl_engine_destroy(_engine);
            _dst = _wei = _src = _prim = _pd = _stream = _engine = 0;
        }
    }
}
