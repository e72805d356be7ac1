using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>
/// The one GEMM description of the C ABI (<c>sw_gemm_desc</c>, ABI 2; <see cref="KLeaf"/> appended in ABI 8), field for
/// field in the order of shardwise.h:
/// <c>C[m,n] = epilogue(alpha · op(A) · op(B) + beta · C + bias[n])</c> with an element type per operand and fp32
/// accumulation (<see cref="ComputeType"/> = <see cref="SwDtype.F32"/>). On a 64-bit process the layout is 152 bytes:
/// 8 four-byte fields (size, trans_a, trans_b, a_type, b_type, c_type, compute_type, epilogue) at 0..28, m, n, k at
/// 32, 40, 48, alpha and beta at 56 and 60, then (buffer, offset, ld) for A at 64, B at 88, C at 112 and
/// (bias, bias_offset) at 136 and 144, k_leaf at 152 (160 bytes in all). Buffers are raw handles (0 for no bias): the caller keeps the
/// <see cref="BufferHandle"/>s alive (DangerousAddRef) for the call. <see cref="Size"/> must be
/// <c>sizeof(SwGemmDesc)</c> (<see cref="CurrentSize"/>).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public struct SwGemmDesc
{
    /// <summary>sizeof(sw_gemm_desc) as the caller knows it.</summary>
    public uint Size;
    /// <summary>op(A): A as stored or transposed.</summary>
    public SwOp TransA;
    /// <summary>op(B).</summary>
    public SwOp TransB;
    /// <summary>Element type of A (F32, F16 or BF16).</summary>
    public SwDtype AType;
    /// <summary>Element type of B (equal to <see cref="AType"/>).</summary>
    public SwDtype BType;
    /// <summary>Element type of C and of the bias (F32 or <see cref="AType"/>).</summary>
    public SwDtype CType;
    /// <summary>Accumulation type: F32.</summary>
    public SwDtype ComputeType;
    /// <summary>Epilogue applied in fp32 before the final rounding.</summary>
    public SwEpilogue Epilogue;
    /// <summary>Rows of op(A) and C.</summary>
    public long M;
    /// <summary>Columns of op(B) and C.</summary>
    public long N;
    /// <summary>Columns of op(A), rows of op(B).</summary>
    public long K;
    /// <summary>Scale of the product.</summary>
    public float Alpha;
    /// <summary>Scale of C's previous contents (0: C is not read).</summary>
    public float Beta;
    /// <summary>A's buffer handle.</summary>
    public nint A;
    /// <summary>Element offset of A(0, 0).</summary>
    public ulong AOffset;
    /// <summary>A's leading dimension in elements.</summary>
    public long Lda;
    /// <summary>B's buffer handle.</summary>
    public nint B;
    /// <summary>Element offset of B(0, 0).</summary>
    public ulong BOffset;
    /// <summary>B's leading dimension.</summary>
    public long Ldb;
    /// <summary>C's buffer handle.</summary>
    public nint C;
    /// <summary>Element offset of C(0, 0).</summary>
    public ulong COffset;
    /// <summary>C's leading dimension.</summary>
    public long Ldc;
    /// <summary>The bias's buffer handle (n elements of C's type), 0 for none.</summary>
    public nint Bias;
    /// <summary>Element offset of the bias.</summary>
    public ulong BiasOffset;
    /// <summary>The k reduction (ABI 8): 0 = the device's (<c>sw_device_set_gemm_reduction</c>), &gt; 0 = the TP-invariant
    /// tree with leaves of this many k elements (even), −1 = the default order whatever the device's setting.</summary>
    public long KLeaf;

    /// <summary>sizeof(SwGemmDesc): the value for <see cref="Size"/>.</summary>
    public static unsafe uint CurrentSize => (uint)sizeof(SwGemmDesc);
}
