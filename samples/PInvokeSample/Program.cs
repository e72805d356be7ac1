// The C ABI of libshardwise (native/include/shardwise.h) called straight from C#, with this file's own minimal
// [LibraryImport] declarations and no Shardwise assembly: what research code in any language with a C FFI does.
//
// A column-parallel GEMM on two virtual ranks of the CPU device, driven from one thread through two streams:
// rank r multiplies A[M,K] by its column shard B_r[K,n_r] (n_r from sw_shard_range) and writes straight into its
// column block of C[M,N] (ldc = N). C is poisoned with NaN first; the result is checked against a float64
// reference on fresh random data. Then one deliberately bad call shows the error channel (status + sw_last_error).
// Usage: [seed]. Exit code: 0 when the result matches, 1 on a mismatch, 2 on an error.
using System.Globalization;
using System.Runtime.InteropServices;
using static Sw;

const long M = 29, K = 77, N = 45; // 45 columns over 2 ranks: 23 + 22
const int Ranks = 2;

nint device = 0, evt = 0, a = 0, c = 0;
var streams = new nint[Ranks];
var shards = new nint[Ranks];
try
{
    int seed = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : Random.Shared.Next();
    if (sw_abi_version() != AbiVersion)
        throw new InvalidOperationException($"libshardwise has ABI {sw_abi_version()}; these declarations are for ABI {AbiVersion}.");
    Console.WriteLine($"PInvokeSample: libshardwise {Str(sw_version_string())} (C ABI {sw_abi_version()}); M x K x N = {M} x {K} x {N}, " +
                      $"{Ranks} ranks; seed {seed}");

    var rng = new Random(seed);
    float[] hostA = RandomMatrix(rng, M * K), hostB = RandomMatrix(rng, K * N);

    Check(sw_device_create(BackendCpu, 0, 2, out device), "sw_device_create");
    for (int r = 0; r < Ranks; r++) Check(sw_stream_create(device, out streams[r]), "sw_stream_create");
    Check(sw_event_create(device, out evt), "sw_event_create");
    Check(sw_buffer_alloc(device, (ulong)(M * K * sizeof(float)), out a), "sw_buffer_alloc");
    Check(sw_buffer_alloc(device, (ulong)(M * N * sizeof(float)), out c), "sw_buffer_alloc");

    // Upload A and each rank's shard of B (K x n_r, cut from B on the host) through stream 0; poison C with NaN
    // (all bits set); then stream 1 waits for stream 0's uploads through an event.
    var offset = new long[Ranks];
    var count = new long[Ranks];
    var shardHost = new float[Ranks][];
    for (int r = 0; r < Ranks; r++)
    {
        Check(sw_shard_range(N, Ranks, r, out offset[r], out count[r]), "sw_shard_range");
        shardHost[r] = new float[K * count[r]];
        for (long k = 0; k < K; k++)
            Array.Copy(hostB, k * N + offset[r], shardHost[r], k * count[r], count[r]);
        Check(sw_buffer_alloc(device, (ulong)(shardHost[r].Length * sizeof(float)), out shards[r]), "sw_buffer_alloc");
    }
    unsafe
    {
        // The host memory must stay valid until the stream has copied it: synchronize inside `fixed`.
        fixed (float* pa = hostA, p0 = shardHost[0], p1 = shardHost[1])
        {
            Check(sw_memcpy_h2d_async(a, 0, pa, (ulong)(hostA.Length * sizeof(float)), streams[0]), "sw_memcpy_h2d_async");
            Check(sw_memcpy_h2d_async(shards[0], 0, p0, (ulong)(shardHost[0].Length * sizeof(float)), streams[0]), "sw_memcpy_h2d_async");
            Check(sw_memcpy_h2d_async(shards[1], 0, p1, (ulong)(shardHost[1].Length * sizeof(float)), streams[0]), "sw_memcpy_h2d_async");
            Check(sw_memset_async(c, 0, 0xFF, (ulong)(M * N * sizeof(float)), streams[0]), "sw_memset_async");
            Check(sw_stream_synchronize(streams[0]), "sw_stream_synchronize");
        }
    }
    Check(sw_event_record(evt, streams[0]), "sw_event_record");
    Check(sw_stream_wait_event(streams[1], evt), "sw_stream_wait_event");

    // Rank r: C[:, offset_r : offset_r + n_r] = A · B_r, queued on rank r's stream; both run concurrently.
    for (int r = 0; r < Ranks; r++)
        Check(sw_gemm(streams[r], DtypeF32, OpN, OpN, M, count[r], K, 1f, a, 0, K, shards[r], 0, count[r], 0f,
                      c, (ulong)offset[r], N, 0, 0, EpilogueNone), "sw_gemm");
    for (int r = 0; r < Ranks; r++) Check(sw_stream_synchronize(streams[r]), "sw_stream_synchronize"); // queued errors surface here

    var hostC = new float[M * N];
    unsafe
    {
        fixed (float* pc = hostC)
        {
            Check(sw_memcpy_d2h_async(pc, c, 0, (ulong)(hostC.Length * sizeof(float)), streams[0]), "sw_memcpy_d2h_async");
            Check(sw_stream_synchronize(streams[0]), "sw_stream_synchronize");
        }
    }

    int failures = Compare(hostA, hostB, hostC);

    // Bad input: lda smaller than K. The call fails at once with a status and a message naming the argument;
    // nothing is queued and nothing crashes.
    int bad = sw_gemm(streams[0], DtypeF32, OpN, OpN, M, N, K, 1f, a, 0, K - 1, shards[0], 0, count[0], 0f, c, 0, N, 0, 0, EpilogueNone);
    string message = Str(sw_last_error());
    if (bad == StatusInvalidArgument && message.Length > 0)
        Console.WriteLine($"  ok   bad lda rejected: {Str(sw_status_string(bad))}: {message}");
    else
    {
        Console.WriteLine($"  FAIL bad lda: expected SW_ERR_INVALID_ARGUMENT and a message, got {Str(sw_status_string(bad))}: '{message}'");
        failures++;
    }

    Console.WriteLine(failures == 0 ? "OK: the C ABI result matches the float64 reference" : $"FAILED: {failures} check(s) failed");
    return failures == 0 ? 0 : 1;
}
catch (Exception e) when (e is ShardwiseCallException or InvalidOperationException or DllNotFoundException or FormatException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 2;
}
finally
{
    // Children first: a device with live buffers, streams or events refuses to be destroyed.
    foreach (var s in streams) sw_stream_destroy(s); // waits for queued work; NULL is a no-op
    sw_event_destroy(evt);
    foreach (var b in shards) sw_buffer_destroy(b);
    sw_buffer_destroy(a);
    sw_buffer_destroy(c);
    if (sw_device_destroy(device) != StatusOk)
        Console.Error.WriteLine($"sw_device_destroy: {Str(sw_last_error())}");
}

static float[] RandomMatrix(Random rng, long length)
{
    var m = new float[length];
    for (long i = 0; i < length; i++) m[i] = (float)(rng.NextDouble() * 2 - 1); // uniform in [-1, 1), never all zeros
    return m;
}

// C[i, j] against Σ_k A[i, k] · B[k, j] in float64; a float32 sum of K products is within (K + 2) · 2^-24 · Σ |terms|.
static int Compare(float[] a, float[] b, float[] c)
{
    int bad = 0;
    string first = "";
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++)
        {
            double s = 0, mag = 0;
            for (long k = 0; k < K; k++)
            {
                double t = (double)a[i * K + k] * b[k * N + j];
                s += t;
                mag += Math.Abs(t);
            }
            double tol = (K + 2) * Math.ScaleB(1.0, -24) * mag;
            if (!(Math.Abs(c[i * N + j] - s) <= tol) && bad++ == 0) // NaN (an unwritten element) fails here
                first = $"; first at ({i}, {j}): got {c[i * N + j]:R}, expected {s:R} ± {tol:E2}";
        }
    Console.WriteLine(bad == 0
        ? $"  ok   column-parallel sw_gemm on {Ranks} streams: {M * N} elements match the float64 reference"
        : $"  FAIL column-parallel sw_gemm: {bad} of {M * N} elements wrong{first}");
    return bad == 0 ? 0 : 1;
}

/// <summary>A failed C call: the status name and sw_last_error(), read on the calling thread right after the call.</summary>
sealed class ShardwiseCallException(string message) : Exception(message);

/// <summary>The subset of shardwise.h this sample uses (ABI 5; the declarations used here are unchanged since ABI 1). Handles are opaque pointers; enums are 32-bit ints.</summary>
static unsafe partial class Sw
{
    const string Lib = "shardwise"; // libshardwise.so, found next to the program by the runtime's default search

    public const int AbiVersion = 8;
    public const int StatusOk = 0, StatusInvalidArgument = 1;
    public const int BackendCpu = 0, DtypeF32 = 0, OpN = 0, EpilogueNone = 0;

    [LibraryImport(Lib)] public static partial int sw_abi_version();
    [LibraryImport(Lib)] public static partial nint sw_version_string();
    [LibraryImport(Lib)] public static partial nint sw_last_error();
    [LibraryImport(Lib)] public static partial nint sw_status_string(int status);
    [LibraryImport(Lib)] public static partial int sw_shard_range(long total, int parts, int index, out long offset, out long count);
    [LibraryImport(Lib)] public static partial int sw_device_create(int backend, int ordinal, int numThreads, out nint device);
    [LibraryImport(Lib)] public static partial int sw_device_destroy(nint device);
    [LibraryImport(Lib)] public static partial int sw_buffer_alloc(nint device, ulong bytes, out nint buffer);
    [LibraryImport(Lib)] public static partial int sw_buffer_destroy(nint buffer);
    [LibraryImport(Lib)] public static partial int sw_memcpy_h2d_async(nint dst, ulong dstOffsetBytes, void* src, ulong bytes, nint stream);
    [LibraryImport(Lib)] public static partial int sw_memcpy_d2h_async(void* dst, nint src, ulong srcOffsetBytes, ulong bytes, nint stream);
    [LibraryImport(Lib)] public static partial int sw_memset_async(nint dst, ulong dstOffsetBytes, byte value, ulong bytes, nint stream);
    [LibraryImport(Lib)] public static partial int sw_stream_create(nint device, out nint stream);
    [LibraryImport(Lib)] public static partial int sw_stream_destroy(nint stream);
    [LibraryImport(Lib)] public static partial int sw_stream_synchronize(nint stream);
    [LibraryImport(Lib)] public static partial int sw_stream_wait_event(nint stream, nint evt);
    [LibraryImport(Lib)] public static partial int sw_event_create(nint device, out nint evt);
    [LibraryImport(Lib)] public static partial int sw_event_destroy(nint evt);
    [LibraryImport(Lib)] public static partial int sw_event_record(nint evt, nint stream);
    [LibraryImport(Lib)]
    public static partial int sw_gemm(nint stream, int dtype, int transA, int transB, long m, long n, long k, float alpha,
                                      nint a, ulong aOffset, long lda, nint b, ulong bOffset, long ldb, float beta,
                                      nint c, ulong cOffset, long ldc, nint bias, ulong biasOffset, int epilogue);

    /// <summary>A C string owned by the library (never freed here: the strings are static or thread-local).</summary>
    public static string Str(nint p) => Marshal.PtrToStringUTF8(p) ?? "";

    /// <summary>Throws with the status name and sw_last_error() unless the call returned SW_OK.</summary>
    public static void Check(int status, string call)
    {
        if (status != StatusOk)
            throw new ShardwiseCallException($"{call} failed: {Str(sw_status_string(status))}: {Str(sw_last_error())}");
    }
}
