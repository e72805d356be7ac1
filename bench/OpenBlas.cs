using System.Runtime.InteropServices;

namespace Shardwise.Bench;

/// <summary>
/// P/Invoke to OpenBLAS (the reference BLAS the benchmarks compare against). Only this project uses it. The library
/// is resolved as <c>SHARDWISE_OPENBLAS_PATH</c> (if set), then <c>libopenblas.so.0</c> (Debian's
/// libopenblas0-pthread), then <c>openblas</c> through the system search.
/// </summary>
internal static unsafe partial class OpenBlas
{
    internal const string Lib = "openblas";

    // CBLAS enums (cblas.h).
    public const int RowMajor = 101;
    public const int NoTrans = 111;
    public const int Trans = 112;

    // The first use of any member (every P/Invoke below is one) runs this, so the resolver is in place in time.
    static OpenBlas() => NativeLibraries.Install();

    /// <summary>C = alpha·op(A)·op(B) + beta·C (cblas_sgemm).</summary>
    [LibraryImport(Lib)]
    public static partial void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
        float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport(Lib)]
    public static partial void openblas_set_num_threads(int threads);

    [LibraryImport(Lib)]
    public static partial int openblas_get_num_threads();

    [LibraryImport(Lib)]
    private static partial nint openblas_get_config();

    [LibraryImport(Lib)]
    private static partial nint openblas_get_corename();

    /// <summary>The kernel family OpenBLAS runs (openblas_get_corename), e.g. "SkylakeX".</summary>
    public static string CoreName() => Marshal.PtrToStringUTF8(openblas_get_corename()) ?? "?";

    /// <summary>e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64 (core SkylakeX)".</summary>
    public static string Describe() =>
        $"{Marshal.PtrToStringUTF8(openblas_get_config())} (core {Marshal.PtrToStringUTF8(openblas_get_corename())}, {openblas_get_num_threads()} threads)";

    /// <summary>Row-major C[m,n] = A[m,k] · B[k,n] (no transposes, alpha 1, beta 0).</summary>
    public static void Sgemm(int m, int n, int k, float* a, float* b, float* c) =>
        cblas_sgemm(RowMajor, NoTrans, NoTrans, m, n, k, 1f, a, k, b, n, 0f, c, n);
}
