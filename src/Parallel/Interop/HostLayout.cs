using System.Text;

namespace Shardwise.Parallel.Interop;

/// <summary>
/// How an n-dimensional host tensor maps onto a row-major matrix: the last dimension is the columns, every leading
/// dimension is flattened into the rows (a 1-D tensor is one row). Describes whether the memory can be wrapped as a
/// <see cref="MatrixView{T}"/> without copying (dense rows: unit column stride, one row stride ≥ the row length, no
/// broadcast) and, for outputs, whether it may be written at all (no two logical elements share memory). Made by
/// <see cref="Of"/>.
/// </summary>
internal readonly struct HostLayout(long rows, long cols, long rowStride, long colStride, bool rowsCollapse, int broadcastDim,
    bool overlaps, string shape)
{
    /// <summary>Rows of the matrix: the product of every dimension but the last (1 for a 1-D tensor).</summary>
    public long Rows { get; } = rows;
    /// <summary>Columns: the length of the last dimension.</summary>
    public long Cols { get; } = cols;
    /// <summary>Elements between consecutive rows (meaningful when <see cref="RowsCollapse"/>).</summary>
    public long RowStride { get; } = rowStride;
    /// <summary>Elements between consecutive columns.</summary>
    public long ColStride { get; } = colStride;
    /// <summary>True when the leading dimensions flatten into rows with a single stride.</summary>
    public bool RowsCollapse { get; } = rowsCollapse;
    /// <summary>A dimension of length &gt; 1 with stride 0 (broadcast), or -1.</summary>
    public int BroadcastDim { get; } = broadcastDim;
    /// <summary>True when two logical elements share memory (broadcast or overlapping strides).</summary>
    public bool Overlaps { get; } = overlaps;
    /// <summary>"[2, 3] (strides [5, 1])", for messages.</summary>
    public string Shape { get; } = shape;

    /// <summary>True when the tensor has no element.</summary>
    public bool IsEmpty => Rows == 0 || Cols == 0;

    /// <summary>Leading dimension of the wrapped view.</summary>
    public long Ld => Rows <= 1 ? Math.Max(Cols, 1) : RowStride;

    /// <summary>Elements from the first to one past the last element of the wrapped view.</summary>
    public long Extent => IsEmpty ? 0 : (Rows - 1) * Ld + (Cols - 1) * (Cols == 1 ? 0 : ColStride) + 1;

    /// <summary>True when the memory can be viewed as a row-major matrix (ld ≥ cols, unit column stride) as it is.</summary>
    public bool CanWrap => !IsEmpty && ReasonNotWrappable is null;

    /// <summary>Why the layout cannot be wrapped, or null when it can.</summary>
    public string? ReasonNotWrappable
    {
        get
        {
            if (BroadcastDim >= 0)
                return $"dimension {BroadcastDim} is broadcast (stride 0)";
            if (Cols > 1 && ColStride != 1)
                return $"the last dimension has stride {ColStride} (expected 1: the elements of a row must be adjacent)";
            if (!RowsCollapse)
                return "the leading dimensions do not flatten into rows with one stride (expected each leading stride = the next stride x the next length)";
            if (Rows > 1 && RowStride < Cols)
                return $"the row stride {RowStride} is smaller than the row length {Cols} (rows overlap)";
            return null;
        }
    }

    /// <summary>Analyses <paramref name="lengths"/> and <paramref name="strides"/> (in elements) of a tensor.</summary>
    public static HostLayout Of(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, string argument)
    {
        int rank = lengths.Length;
        string shape = Describe(lengths, strides);
        if (rank == 0)
            throw new ArgumentException($"{argument} has no dimension; expected a 1-D (one row) or 2-D (rows x columns) tensor, or more dimensions that flatten into rows.", argument);
        long cols = lengths[rank - 1], colStride = strides[rank - 1], rows = 1;
        int broadcast = -1;
        for (int d = 0; d < rank; d++)
        {
            if (d < rank - 1) rows = checked(rows * lengths[d]);
            if (broadcast < 0 && lengths[d] > 1 && strides[d] == 0) broadcast = d;
        }
        // Leading dimensions (length 1 ignored: their stride is irrelevant) must satisfy stride[d] = stride[e]·length[e]
        // for the next inner leading dimension e; then one stride walks all rows.
        long rowStride = 0, expected = -1;
        bool collapse = true;
        for (int d = rank - 2; d >= 0; d--)
        {
            if (lengths[d] == 1) continue;
            if (expected < 0) rowStride = strides[d];
            else if (strides[d] != expected) { collapse = false; break; }
            expected = strides[d] * lengths[d];
        }
        return new HostLayout(rows, cols, rowStride, colStride, collapse, broadcast, broadcast >= 0 || Overlapping(lengths, strides), shape);
    }

    /// <summary>True when some pair of distinct indices maps to the same element (sufficient test: sorted by stride,
    /// each stride exceeds the span of all smaller ones).</summary>
    private static bool Overlapping(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        var dims = new List<(long Stride, long Length)>();
        for (int d = 0; d < lengths.Length; d++)
            if (lengths[d] > 1) dims.Add((strides[d], lengths[d]));
        dims.Sort((a, b) => a.Stride.CompareTo(b.Stride));
        long span = 0; // largest offset reachable with the smaller-stride dimensions
        foreach (var (stride, length) in dims)
        {
            if (stride <= span) return true;
            span += stride * (length - 1);
        }
        return false;
    }

    /// <summary>Throws unless the tensor has at least one element.</summary>
    public void RequireNonEmpty(string argument)
    {
        if (IsEmpty)
            throw new ArgumentException($"{argument} has shape {Shape}, which holds no element; expected a non-empty tensor.", argument);
    }

    /// <summary>Throws unless every logical element has its own memory (an output must not alias itself).</summary>
    public void RequireWritable(string argument)
    {
        if (Overlaps)
            throw new ArgumentException(
                $"{argument} has shape {Shape}: {(BroadcastDim >= 0 ? $"dimension {BroadcastDim} is broadcast (stride 0)" : "its strides overlap")}, so several elements share memory; " +
                "expected an output tensor in which every element has its own memory (e.g. dense row-major).", argument);
    }

    /// <summary>Throws unless the layout can be wrapped without copying.</summary>
    public void RequireWrappable(string argument)
    {
        RequireNonEmpty(argument);
        if (ReasonNotWrappable is { } why)
            throw new ArgumentException(
                $"{argument} has shape {Shape} and cannot be wrapped without copying: {why}. Expected a dense row-major layout " +
                "(last stride 1, row stride >= the row length, leading dimensions that flatten into rows, no zero strides); " +
                "use WrapOrCopy, or make the tensor contiguous.", argument);
    }

    /// <summary>Throws unless the matrix is <paramref name="rows"/> × <paramref name="cols"/>.</summary>
    public void RequireShape(long rows, long cols, string argument, string what)
    {
        if (Rows != rows || Cols != cols)
            throw new ArgumentException($"{argument} has shape {Shape}, a {Rows} x {Cols} matrix; expected {rows} x {cols} ({what}).", argument);
    }

    /// <summary>The offset (in elements) of the first element of logical row <paramref name="row"/>.</summary>
    public static long RowOffset(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, long row)
    {
        long offset = 0;
        for (int d = lengths.Length - 2; d >= 0; d--)
        {
            long len = lengths[d];
            offset += row % len * strides[d];
            row /= len;
        }
        return offset;
    }

    private static string Describe(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        var sb = new StringBuilder("[");
        for (int d = 0; d < lengths.Length; d++) sb.Append(d == 0 ? "" : ", ").Append(lengths[d]);
        sb.Append("] (strides [");
        for (int d = 0; d < strides.Length; d++) sb.Append(d == 0 ? "" : ", ").Append(strides[d]);
        return sb.Append("])").ToString();
    }
}
