using System.Numerics.Tensors;

namespace Shardwise.Parallel.Interop;

/// <summary>
/// A weight matrix read from a host <see cref="Tensor{T}"/> of any strides (see <see cref="TensorInterop.ToWeightSource"/>):
/// blocks are gathered straight from the tensor's memory into the loader's staging area, so a strided or transposed
/// tensor is never materialised in another layout. Safe to read from several rank threads at once.
/// </summary>
internal sealed unsafe class TensorWeightSource : WeightSource
{
    private readonly Tensor<float> _tensor;
    private readonly nint[] _lengths;
    private readonly nint[] _strides;
    private readonly bool _transpose;

    public TensorWeightSource(Tensor<float> tensor, bool transpose, string argument)
        : base(RowsOf(tensor, transpose, argument), ColsOf(tensor, transpose, argument))
    {
        _tensor = tensor;
        _lengths = tensor.Lengths.ToArray();
        _strides = tensor.Strides.ToArray();
        _transpose = transpose;
    }

    private static HostLayout LayoutOf(Tensor<float> tensor, bool transpose, string argument)
    {
        ArgumentNullException.ThrowIfNull(tensor, argument);
        if (transpose && tensor.Rank != 2)
            throw new ArgumentException($"{argument} has {tensor.Rank} dimensions; transpose needs a 2-D tensor.", argument);
        return HostLayout.Of(tensor.Lengths, tensor.Strides, argument);
    }

    private static long RowsOf(Tensor<float> tensor, bool transpose, string argument)
    {
        var l = LayoutOf(tensor, transpose, argument);
        return transpose ? l.Cols : l.Rows;
    }

    private static long ColsOf(Tensor<float> tensor, bool transpose, string argument)
    {
        var l = LayoutOf(tensor, transpose, argument);
        return transpose ? l.Rows : l.Cols;
    }

    /// <inheritdoc />
    public override void Read(long rowOffset, long colOffset, long rows, long cols, Span<float> destination)
    {
        CheckBlock(rowOffset, colOffset, rows, cols, destination.Length);
        if (rows == 0 || cols == 0) return;
        int rank = _lengths.Length;
        var span = _tensor.AsReadOnlyTensorSpan();
        fixed (float* first = span) // the view's first element (not the backing array's)
        {
            if (_transpose)
            {
                // Logical (i, j) is tensor element (j, i).
                long s0 = _strides[0], s1 = _strides[1];
                for (long i = 0; i < rows; i++)
                {
                    var row = destination.Slice((int)(i * cols), (int)cols);
                    float* p = first + (rowOffset + i) * s1 + colOffset * s0;
                    for (int j = 0; j < row.Length; j++) row[j] = p[j * s0];
                }
                return;
            }
            long colStride = _strides[rank - 1];
            for (long i = 0; i < rows; i++)
            {
                var row = destination.Slice((int)(i * cols), (int)cols);
                float* p = first + HostLayout.RowOffset(_lengths, _strides, rowOffset + i) + colOffset * colStride;
                if (colStride == 1) new ReadOnlySpan<float>(p, row.Length).CopyTo(row);
                else for (int j = 0; j < row.Length; j++) row[j] = p[j * colStride];
            }
        }
    }
}
