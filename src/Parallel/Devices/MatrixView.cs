namespace Shardwise.Parallel;

/// <summary>
/// A row-major matrix of <typeparamref name="T"/> inside a <see cref="DeviceBuffer{T}"/>: element (i, j) is at
/// <c>Offset + i * Ld + j</c>. Cheap to copy; validated on creation. Element types: <see cref="float"/>,
/// <see cref="Half"/> and <see cref="BFloat16"/> (the GEMM's operand types); a view of any other type is refused with
/// <see cref="NotSupportedException"/>.
/// </summary>
public readonly struct MatrixView<T> where T : unmanaged
{
    /// <summary>Creates a view; throws if the matrix does not fit in the buffer, or <see cref="NotSupportedException"/>
    /// when <typeparamref name="T"/> is not float, Half or BFloat16.</summary>
    public MatrixView(DeviceBuffer<T> buffer, long rows, long cols, long ld, long offset = 0)
    {
        CheckElementType();
        ArgumentNullException.ThrowIfNull(buffer);
        ThrowHelper.NonNegative(rows);
        ThrowHelper.NonNegative(cols);
        ThrowHelper.NonNegative(offset);
        if (ld < Math.Max(cols, 1))
            throw new ArgumentOutOfRangeException(nameof(ld), ld, $"ld = {ld} is smaller than cols = {cols}; expected ld >= {Math.Max(cols, 1)}.");
        long end; // one past the last element, computed without wrapping around
        try { end = checked(offset + (rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols)); }
        catch (OverflowException)
        {
            throw new ArgumentOutOfRangeException(nameof(ld), ld, $"a {rows} x {cols} matrix with ld {ld} spans more than 2^63 elements.");
        }
        long extent = end - offset;
        if (end > buffer.Length)
            throw new ArgumentException(
                $"a {rows} x {cols} matrix with ld {ld} at offset {offset} needs {offset + extent} elements; the buffer has {buffer.Length}.",
                nameof(buffer));
        Buffer = buffer;
        Rows = rows;
        Cols = cols;
        Ld = ld;
        Offset = offset;
    }

    /// <summary>True when <typeparamref name="T"/> is an element type of matrices (float, Half, BFloat16).</summary>
    public static bool IsSupported => typeof(T) == typeof(float) || typeof(T) == typeof(Half) || typeof(T) == typeof(BFloat16);

    private static void CheckElementType()
    {
        if (!IsSupported)
            throw new NotSupportedException(
                $"MatrixView<{typeof(T).Name}>: the element type {typeof(T).FullName} is not a matrix type; expected float (System.Single), System.Half or Shardwise.BFloat16.");
    }

    /// <summary>The buffer holding the matrix.</summary>
    public DeviceBuffer<T> Buffer { get; }
    /// <summary>Number of rows.</summary>
    public long Rows { get; }
    /// <summary>Number of columns.</summary>
    public long Cols { get; }
    /// <summary>Leading dimension: elements between the starts of consecutive rows.</summary>
    public long Ld { get; }
    /// <summary>Element offset of (0, 0) in the buffer.</summary>
    public long Offset { get; }
    /// <summary>True for a default (unset) view.</summary>
    public bool IsEmpty => Buffer is null;

    /// <summary>Columns [start, start + count) as a view with the same leading dimension.</summary>
    public MatrixView<T> Columns(long start, long count)
    {
        if (start < 0 || count < 0 || start + count > Cols)
            throw new ArgumentOutOfRangeException(nameof(start), $"columns [{start}, {start + count}) are outside 0..{Cols}.");
        return new MatrixView<T>(Buffer, Rows, count, Ld, Offset + start);
    }

    /// <summary>Rows [start, start + count) as a view.</summary>
    public MatrixView<T> RowRange(long start, long count)
    {
        if (start < 0 || count < 0 || start + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {start + count}) are outside 0..{Rows}.");
        return new MatrixView<T>(Buffer, count, Cols, Ld, Offset + start * Ld);
    }

    /// <inheritdoc />
    public override string ToString() => $"{Rows} x {Cols} {typeof(T).Name} (ld {Ld}, offset {Offset})";
}
