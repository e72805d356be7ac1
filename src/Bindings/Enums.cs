using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>Status codes of the C ABI (<c>sw_status</c> in shardwise.h).</summary>
public enum SwStatus
{
    /// <summary>Success.</summary>
    Ok = 0,
    /// <summary>A shape, size, offset, leading dimension, enum or rank is wrong.</summary>
    InvalidArgument = 1,
    /// <summary>A required handle or pointer is null.</summary>
    NullHandle = 2,
    /// <summary>An allocation failed.</summary>
    OutOfMemory = 3,
    /// <summary>Valid request that this backend or build does not implement.</summary>
    Unsupported = 4,
    /// <summary>A collective did not complete in time (a rank never joined).</summary>
    Timeout = 5,
    /// <summary>Ranks disagreed inside a collective.</summary>
    Mismatch = 6,
    /// <summary>The communicator was aborted.</summary>
    Aborted = 7,
    /// <summary>The backend (CUDA, NCCL, MPI, the OS) reported an error.</summary>
    Backend = 8,
    /// <summary>No such device, library or symbol.</summary>
    NotFound = 9,
    /// <summary>A bug in Shardwise.</summary>
    Internal = 10,
}

/// <summary>Element types (<c>sw_dtype</c>).</summary>
public enum SwDtype
{
    /// <summary>32-bit IEEE float.</summary>
    F32 = 0,
    /// <summary>64-bit IEEE float.</summary>
    F64 = 1,
    /// <summary>16-bit IEEE float.</summary>
    F16 = 2,
    /// <summary>bfloat16.</summary>
    BF16 = 3,
    /// <summary>32-bit signed integer.</summary>
    I32 = 4,
    /// <summary>Unsigned byte.</summary>
    U8 = 5,
}

/// <summary>Device backends (<c>sw_backend</c>).</summary>
public enum SwBackend
{
    /// <summary>The CPU backend (always present).</summary>
    Cpu = 0,
    /// <summary>The CUDA backend (present when built with CUDA and a GPU exists).</summary>
    Cuda = 1,
}

/// <summary>Matrix operation (<c>sw_op</c>).</summary>
public enum SwOp
{
    /// <summary>Use the matrix as stored.</summary>
    N = 0,
    /// <summary>Use its transpose.</summary>
    T = 1,
}

/// <summary>GEMM epilogue (<c>sw_epilogue</c>).</summary>
public enum SwEpilogue
{
    /// <summary>No epilogue.</summary>
    None = 0,
    /// <summary>GeLU (tanh approximation) after alpha, beta and bias.</summary>
    Gelu = 1,
}

/// <summary>Reduction operator (<c>sw_reduce_op</c>).</summary>
public enum SwReduceOp
{
    /// <summary>Element-wise sum in rank order: ((x0 + x1) + x2) + ....</summary>
    Sum = 0,
    /// <summary>Element-wise sum in the fixed binary tree over the ranks (ABI 8, <c>SW_REDUCE_SUM_TREE</c>): ranks [a, b)
    /// sum as sum[a, m) + sum[m, b), m = a + ceil((b − a) / 2); for a power-of-two world size ((x0 + x1) + (x2 + x3)) + ...:
    /// the top of a TP-invariant GEMM's reduction tree (<c>sw_device_set_gemm_reduction</c>).</summary>
    SumTree = 1,
}

/// <summary>GEMM tile shape (<c>sw_tile_shape</c>): register tile Mr × Nr, cache blocks Mc × Kc × Nc.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SwTileShape
{
    /// <summary>Register-tile rows.</summary>
    public int Mr;
    /// <summary>Register-tile columns.</summary>
    public int Nr;
    /// <summary>Cache-block rows of A.</summary>
    public int Mc;
    /// <summary>Cache-block depth.</summary>
    public int Kc;
    /// <summary>Cache-block columns of B.</summary>
    public int Nc;
    private int _reserved;
}

/// <summary>Device properties (<c>sw_device_info</c>).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct SwDeviceInfo
{
    /// <summary>The backend (<see cref="SwBackend"/>).</summary>
    public int Backend;
    /// <summary>Index within the backend.</summary>
    public int Ordinal;
    /// <summary>CPU: compute threads; CUDA: multiprocessors.</summary>
    public int NumThreads;
    private int _reserved0;
    /// <summary>Physical (CPU) or device (CUDA) memory in bytes.</summary>
    public ulong TotalMemoryBytes;
    /// <summary>NUL-terminated UTF-8 name.</summary>
    public fixed byte Name[128];
    /// <summary>NUL-terminated UTF-8 name of the GEMM micro-kernel.</summary>
    public fixed byte Kernel[64];

    /// <summary>The device name as a string.</summary>
    public readonly string NameString { get { fixed (byte* p = Name) return Marshal.PtrToStringUTF8((nint)p) ?? ""; } }

    /// <summary>The GEMM micro-kernel name as a string.</summary>
    public readonly string KernelString { get { fixed (byte* p = Kernel) return Marshal.PtrToStringUTF8((nint)p) ?? ""; } }
}

/// <summary>The normalization of <c>sw_norm</c> (<c>sw_norm_kind</c>).</summary>
public enum SwNormKind
{
    /// <summary>LayerNorm: (x − mean) / sqrt(var + eps) · gamma + beta.</summary>
    Layer = 0,
    /// <summary>RMSNorm: x / sqrt(mean(x²) + eps) · gamma.</summary>
    Rms = 1,
}

/// <summary>The element-wise activations of <c>sw_activation_forward</c> and <c>sw_glu</c> (<c>sw_activation</c>).</summary>
public enum SwActivation
{
    /// <summary>GeLU, tanh approximation.</summary>
    Gelu = 0,
    /// <summary>max(x, 0).</summary>
    Relu = 1,
    /// <summary>x · sigmoid(x) (Swish; the gate of SwiGLU).</summary>
    Silu = 2,
}
