using System.Buffers;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// One GEMM of a group submitted with <see cref="Gemm.MultiplyGrouped{TIn, TOut}(ReadOnlySpan{GemmGroupMember{TIn, TOut}})"/>:
/// <c>C = epilogue(alpha·op(A)·op(B) + beta·C + bias)</c> ordered on <see cref="Stream"/>, with the arguments and rules of
/// <see cref="Gemm.Multiply{TIn, TOut}"/>. A default member (no stream) is refused.
/// </summary>
public readonly struct GemmGroupMember<TIn, TOut> where TIn : unmanaged where TOut : unmanaged
{
    /// <summary>Describes one member; nothing is checked until the group is submitted.</summary>
    public GemmGroupMember(DeviceStream stream, MatrixView<TIn> a, MatrixView<TIn> b, MatrixView<TOut> c,
        float alpha = 1f, float beta = 0f, bool transA = false, bool transB = false,
        DeviceBuffer<TOut>? bias = null, long biasOffset = 0, Epilogue epilogue = Epilogue.None)
    {
        Stream = stream;
        A = a;
        B = b;
        C = c;
        Alpha = alpha;
        Beta = beta;
        TransA = transA;
        TransB = transB;
        Bias = bias;
        BiasOffset = biasOffset;
        Epilogue = epilogue;
    }

    /// <summary>The stream the member is ordered on (every member's stream on one device; a stream may repeat).</summary>
    public DeviceStream Stream { get; }
    /// <summary>op(A) is m × k (A stored k × m when <see cref="TransA"/>).</summary>
    public MatrixView<TIn> A { get; }
    /// <summary>op(B) is k × n (B stored n × k when <see cref="TransB"/>).</summary>
    public MatrixView<TIn> B { get; }
    /// <summary>The m × n output; it may not overlap any other member's C nor any member's A, B or bias.</summary>
    public MatrixView<TOut> C { get; }
    /// <summary>Scale of the product.</summary>
    public float Alpha { get; }
    /// <summary>Scale of C's previous contents (0: C is not read).</summary>
    public float Beta { get; }
    /// <summary>Use Aᵀ.</summary>
    public bool TransA { get; }
    /// <summary>Use Bᵀ.</summary>
    public bool TransB { get; }
    /// <summary>Optional bias: n elements from <see cref="BiasOffset"/>.</summary>
    public DeviceBuffer<TOut>? Bias { get; }
    /// <summary>Element offset of the bias.</summary>
    public long BiasOffset { get; }
    /// <summary>The fused epilogue.</summary>
    public Epilogue Epilogue { get; }
}

public static partial class Gemm
{
    // Groups up to this many members keep their native arguments on the stack; larger ones rent pooled arrays.
    private const int StackMembers = 16;

    /// <summary>
    /// Queues a group of independent GEMMs as one call (<c>sw_gemm_grouped</c>): member i is ordered on its stream as
    /// <see cref="Multiply{TIn, TOut}"/> would order it, the group starts after every listed stream's earlier work and
    /// every listed stream's later work waits for it. Each member's C equals what <see cref="Multiply{TIn, TOut}"/>
    /// writes, bit for bit; members that multiply the same A (same view, same transA) share its packing on the CPU —
    /// the sharded GEMM of virtual ranks, each writing its column block of one Y. Steady-state calls allocate no
    /// managed memory.
    /// </summary>
    /// <exception cref="ArgumentException">A member's argument is wrong (the parameter name says which:
    /// "members[2].b"), the streams are on different devices, or a member's C overlaps another member's C or any
    /// member's A, B or bias.</exception>
    /// <exception cref="NotSupportedException">The element types are not a supported combination (as for
    /// <see cref="Multiply{TIn, TOut}"/>).</exception>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static unsafe void MultiplyGrouped<TIn, TOut>(ReadOnlySpan<GemmGroupMember<TIn, TOut>> members)
        where TIn : unmanaged where TOut : unmanaged
    {
        int count = members.Length;
        if (count == 0) throw new ArgumentException("members is empty; expected at least one GEMM.", nameof(members));
        SwDtype inType = DeviceBuffer<TIn>.Dtype, outType = DeviceBuffer<TOut>.Dtype;
        if (outType != SwDtype.F32 && outType != inType)
            throw new NotSupportedException(
                $"Gemm.MultiplyGrouped: {Combination(inType, outType)} is not supported; c (and the bias) must be f32 or the input type {DtypeName(inType)}.");

        SwGemmDesc[]? rentedDescs = null;
        nint[]? rentedStreams = null;
        Span<SwGemmDesc> descs = count <= StackMembers
            ? stackalloc SwGemmDesc[StackMembers]
            : (rentedDescs = ArrayPool<SwGemmDesc>.Shared.Rent(count));
        Span<nint> streams = count <= StackMembers
            ? stackalloc nint[StackMembers]
            : (rentedStreams = ArrayPool<nint>.Shared.Rent(count));
        int refs = 0; // handles add-ref'ed so far, in the order AddRefs walks them
        try
        {
            Device? device = null;
            for (int i = 0; i < count; i++)
            {
                ref readonly var g = ref members[i];
                if (g.Stream is null) throw new ArgumentNullException(MemberName(i, "stream"), $"members[{i}].stream is null; expected the stream the member runs on.");
                if (device is null) device = g.Stream.Device;
                else if (!ReferenceEquals(device, g.Stream.Device))
                    throw new ArgumentException(
                        $"members[{i}].stream is on device '{g.Stream.Device}' but members[0].stream is on '{device}'; expected every member's stream on one device.",
                        MemberName(i, "stream"));
                long m, n, k;
                try
                {
                    (m, n, k) = Validate(g.Stream, g.A, g.B, g.C, g.Alpha, g.Beta, g.TransA, g.TransB, g.Bias, g.BiasOffset);
                }
                catch (ArgumentException e)
                {
                    throw ForMember(e, i);
                }
                descs[i] = Describe(inType, outType, m, n, k, g.A, g.B, g.C, g.Alpha, g.Beta, g.TransA, g.TransB, g.BiasOffset, g.Epilogue);
            }
            CheckOutputsApart(members);

            refs = AddRefs(members, descs, streams);
            SwStatus status;
            fixed (SwGemmDesc* pd = descs)
            fixed (nint* ps = streams)
                status = Native.sw_gemm_grouped(count, ps, pd);
            if (status == SwStatus.Unsupported)
            {
                var inner = ShardwiseException.Create(status, nameof(Native.sw_gemm_grouped));
                throw new NotSupportedException(
                    $"Gemm.MultiplyGrouped: {Combination(inType, outType)} is not supported on device '{device}': {inner.NativeMessage}", inner);
            }
            ThrowHelper.Check(status, nameof(Native.sw_gemm_grouped));
        }
        finally
        {
            if (refs > 0) ReleaseRefs(members, refs);
            if (rentedDescs is not null) ArrayPool<SwGemmDesc>.Shared.Return(rentedDescs);
            if (rentedStreams is not null) ArrayPool<nint>.Shared.Return(rentedStreams);
        }
    }

    // The sw_gemm_desc of one validated GEMM, buffer handles left for the caller to fill in.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static SwGemmDesc Describe<TIn, TOut>(SwDtype inType, SwDtype outType, long m, long n, long k,
        MatrixView<TIn> a, MatrixView<TIn> b, MatrixView<TOut> c, float alpha, float beta, bool transA, bool transB,
        long biasOffset, Epilogue epilogue)
        where TIn : unmanaged where TOut : unmanaged => new()
    {
        Size = SwGemmDesc.CurrentSize,
        TransA = transA ? SwOp.T : SwOp.N,
        TransB = transB ? SwOp.T : SwOp.N,
        AType = inType,
        BType = inType,
        CType = outType,
        ComputeType = SwDtype.F32,
        Epilogue = (SwEpilogue)epilogue,
        M = m,
        N = n,
        K = k,
        Alpha = alpha,
        Beta = beta,
        AOffset = (ulong)a.Offset,
        Lda = a.Ld,
        BOffset = (ulong)b.Offset,
        Ldb = b.Ld,
        COffset = (ulong)c.Offset,
        Ldc = c.Ld,
        BiasOffset = (ulong)biasOffset,
    };

    // Add-refs every member's stream, A, B, C and bias handle (in that order) and fills in the raw handles; returns how
    // many were add-ref'ed. A disposed handle throws ObjectDisposedException after the earlier ones were counted: the
    // caller releases exactly those (ReleaseRefs walks the same order).
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static int AddRefs<TIn, TOut>(ReadOnlySpan<GemmGroupMember<TIn, TOut>> members, Span<SwGemmDesc> descs, Span<nint> streams)
        where TIn : unmanaged where TOut : unmanaged
    {
        int refs = 0;
        try
        {
            for (int i = 0; i < members.Length; i++)
            {
                ref readonly var g = ref members[i];
                streams[i] = AddRef(g.Stream.Handle, ref refs);
                descs[i].A = AddRef(g.A.Buffer.Handle, ref refs);
                descs[i].B = AddRef(g.B.Buffer.Handle, ref refs);
                descs[i].C = AddRef(g.C.Buffer.Handle, ref refs);
                descs[i].Bias = g.Bias is null ? 0 : AddRef(g.Bias.Handle, ref refs);
            }
        }
        catch
        {
            if (refs > 0) ReleaseRefs(members, refs);
            throw;
        }
        return refs;
    }

    private static nint AddRef(ShardwiseHandle handle, ref int refs)
    {
        bool added = false;
        handle.DangerousAddRef(ref added);
        if (!added) throw new ObjectDisposedException(handle.GetType().Name);
        refs++;
        return handle.DangerousGetHandle();
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void ReleaseRefs<TIn, TOut>(ReadOnlySpan<GemmGroupMember<TIn, TOut>> members, int refs)
        where TIn : unmanaged where TOut : unmanaged
    {
        for (int i = 0; i < members.Length && refs > 0; i++)
        {
            ref readonly var g = ref members[i];
            if (Release(g.Stream.Handle, ref refs) || Release(g.A.Buffer.Handle, ref refs) || Release(g.B.Buffer.Handle, ref refs) ||
                Release(g.C.Buffer.Handle, ref refs))
                return;
            if (g.Bias is not null && Release(g.Bias.Handle, ref refs)) return;
        }
    }

    // Releases one reference; true when that was the last one counted.
    private static bool Release(ShardwiseHandle handle, ref int refs)
    {
        handle.DangerousRelease();
        return --refs == 0;
    }

    // The managed overlap check of the outputs (the native core checks again, on bytes, across buffers too): within one
    // buffer, member i's C may not share an element with member j's C (j != i) nor with any member's A, B or bias.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void CheckOutputsApart<TIn, TOut>(ReadOnlySpan<GemmGroupMember<TIn, TOut>> members)
        where TIn : unmanaged where TOut : unmanaged
    {
        for (int i = 0; i < members.Length; i++)
        {
            ref readonly var gi = ref members[i];
            var ci = gi.C;
            for (int j = 0; j < members.Length; j++)
            {
                ref readonly var gj = ref members[j];
                if (j > i && ReferenceEquals(ci.Buffer, gj.C.Buffer) && Overlap(ci, gj.C)) throw OverlapError(i, j, "c");
                if (gj.A.Rows * gj.A.Cols > 0 && ReferenceEquals(ci.Buffer, gj.A.Buffer) &&
                    Overlap(ci.Offset, ci.Rows, ci.Cols, ci.Ld, gj.A.Offset, gj.A.Rows, gj.A.Cols, gj.A.Ld))
                    throw OverlapError(i, j, "a");
                if (gj.B.Rows * gj.B.Cols > 0 && ReferenceEquals(ci.Buffer, gj.B.Buffer) &&
                    Overlap(ci.Offset, ci.Rows, ci.Cols, ci.Ld, gj.B.Offset, gj.B.Rows, gj.B.Cols, gj.B.Ld))
                    throw OverlapError(i, j, "b");
                if (gj.Bias is not null && ReferenceEquals(ci.Buffer, gj.Bias))
                {
                    long n = gj.C.Cols;
                    if (Overlap(ci.Offset, ci.Rows, ci.Cols, ci.Ld, gj.BiasOffset, 1, n, n)) throw OverlapError(i, j, "bias");
                }
            }
        }
    }

    private static bool Overlap<T>(MatrixView<T> x, MatrixView<T> y) where T : unmanaged =>
        Overlap(x.Offset, x.Rows, x.Cols, x.Ld, y.Offset, y.Rows, y.Cols, y.Ld);

    // Exact: do two strided blocks of elements (rows x cols, row r at offset + r*ld) share an element? Same algorithm as
    // the native core's (core/gemm_overlap.cpp): apart spans, a one-row block, equal strides in O(1), else row by row.
    internal static bool Overlap(long x0, long xRows, long xCols, long xLd, long y0, long yRows, long yCols, long yLd)
    {
        if (xRows < 1 || xCols < 1 || yRows < 1 || yCols < 1) return false;
        if (xRows == 1) xLd = xCols;
        if (yRows == 1) yLd = yCols;
        long d = y0 - x0;
        long xEnd = (xRows - 1) * xLd + xCols, yEnd = (yRows - 1) * yLd + yCols;
        if (d >= xEnd || -d >= yEnd) return false;
        if (xRows == 1) return RowsHit(yRows, yCols, yLd, -d, -d + xCols);
        if (yRows == 1) return RowsHit(xRows, xCols, xLd, d, d + yCols);
        if (xLd == yLd)
        {
            long t = Math.Max(FloorDiv(-yCols - d, xLd) + 1, -(xRows - 1));
            return t <= yRows - 1 && d + t * xLd < xCols;
        }
        bool xSmall = xRows <= yRows;
        long wRows = xSmall ? xRows : yRows, wCols = xSmall ? xCols : yCols, wLd = xSmall ? xLd : yLd;
        long oRows = xSmall ? yRows : xRows, oCols = xSmall ? yCols : xCols, oLd = xSmall ? yLd : xLd;
        long dy = xSmall ? d : -d, oEnd = xSmall ? yEnd : xEnd;
        long first = Math.Max(0, FloorDiv(dy - wCols, wLd) + 1), last = Math.Min(wRows - 1, FloorDiv(dy + oEnd - 1, wLd));
        for (long i = first; i <= last; i++)
        {
            long lo = i * wLd - dy;
            if (RowsHit(oRows, oCols, oLd, lo, lo + wCols)) return true;
        }
        return false;
    }

    // Does some row of a block (rows x cols, ld apart, from 0) meet [lo, hi)?
    private static bool RowsHit(long rows, long cols, long ld, long lo, long hi)
    {
        long j = rows > 1 ? Math.Max(0, FloorDiv(lo - cols, ld) + 1) : 0;
        return j < rows && j * ld < hi && j * ld + cols > lo;
    }

    private static long FloorDiv(long a, long b)
    {
        long q = a / b;
        return a % b != 0 && a < 0 ? q - 1 : q;
    }

    private static ArgumentException OverlapError(int i, int j, string operand) => new(
        $"members[{i}].c overlaps members[{j}].{operand}; expected every member's c apart from every other member's c and from every member's a, b and bias (the column blocks of one matrix are apart).",
        MemberName(i, "c"));

    private static string MemberName(int i, string argument) => $"members[{i}].{argument}";

    // The same exception, its parameter named inside the group ("b" -> "members[2].b").
    private static ArgumentException ForMember(ArgumentException e, int i)
    {
        string param = MemberName(i, e.ParamName ?? "?");
        string message = e.Message;
        string suffix = e.ParamName is null ? "" : $" (Parameter '{e.ParamName}')";
        if (suffix.Length > 0 && message.EndsWith(suffix, StringComparison.Ordinal)) message = message[..^suffix.Length];
        if (e is ArgumentOutOfRangeException)
        {
            int actual = message.IndexOf(Environment.NewLine + "Actual value was", StringComparison.Ordinal);
            if (actual >= 0) message = message[..actual];
        }
        message = $"members[{i}]: {message}";
        return e switch
        {
            ArgumentNullException => new ArgumentNullException(param, message),
            ArgumentOutOfRangeException r => new ArgumentOutOfRangeException(param, r.ActualValue, message),
            _ => new ArgumentException(message, param, e),
        };
    }
}
