namespace Shardwise.Parallel;

/// <summary>
/// Fills <paramref name="destination"/> (row-major, <paramref name="rows"/> × <paramref name="cols"/>) with the block of
/// the logical weight matrix that starts at (<paramref name="rowOffset"/>, <paramref name="colOffset"/>).
/// </summary>
public delegate void ShardLoader(long rowOffset, long colOffset, long rows, long cols, Span<float> destination);

/// <summary>
/// Where a logical weight matrix comes from. Shards are read block by block (a bounded host staging area per
/// block), so the whole matrix is never materialised on any device, and with a loader never on the host either.
/// </summary>
public abstract class WeightSource
{
    /// <summary>Maximum elements staged on the host at once while loading a shard.</summary>
    public const long StagingElements = 1 << 22;

    /// <summary>Creates a source of <paramref name="rows"/> × <paramref name="cols"/>.</summary>
    protected WeightSource(long rows, long cols)
    {
        ThrowHelper.NonNegative(rows);
        ThrowHelper.NonNegative(cols);
        Rows = rows;
        Cols = cols;
    }

    /// <summary>Rows of the logical matrix.</summary>
    public long Rows { get; }

    /// <summary>Columns of the logical matrix.</summary>
    public long Cols { get; }

    /// <summary>Reads a block into <paramref name="destination"/> (row-major, rows × cols). The built-in sources throw
    /// <see cref="ArgumentOutOfRangeException"/> naming the argument when the block is outside the matrix or
    /// <paramref name="destination"/> is shorter than rows × cols (see <see cref="CheckBlock"/>).</summary>
    public abstract void Read(long rowOffset, long colOffset, long rows, long cols, Span<float> destination);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the argument at fault unless block
    /// (<paramref name="rowOffset"/>, <paramref name="colOffset"/>) of <paramref name="rows"/> × <paramref name="cols"/>
    /// lies inside this source and <paramref name="destinationLength"/> holds it. For <see cref="Read"/> overrides.</summary>
    protected void CheckBlock(long rowOffset, long colOffset, long rows, long cols, long destinationLength)
    {
        if (rowOffset < 0 || rowOffset > Rows)
            throw new ArgumentOutOfRangeException(nameof(rowOffset), rowOffset, $"rowOffset = {rowOffset}; expected 0 <= rowOffset <= {Rows} (the source's rows).");
        if (colOffset < 0 || colOffset > Cols)
            throw new ArgumentOutOfRangeException(nameof(colOffset), colOffset, $"colOffset = {colOffset}; expected 0 <= colOffset <= {Cols} (the source's columns).");
        if (rows < 0 || rows > Rows - rowOffset)
            throw new ArgumentOutOfRangeException(nameof(rows), rows, $"rows = {rows} from row {rowOffset}; expected 0..{Rows - rowOffset} (the source has {Rows} rows).");
        if (cols < 0 || cols > Cols - colOffset)
            throw new ArgumentOutOfRangeException(nameof(cols), cols, $"cols = {cols} from column {colOffset}; expected 0..{Cols - colOffset} (the source has {Cols} columns).");
        if (destinationLength < rows * cols) // rows * cols <= Rows * Cols, which the constructor bounded
            throw new ArgumentOutOfRangeException("destination", destinationLength, $"destination holds {destinationLength} elements; expected at least rows x cols = {rows * cols}.");
    }

    /// <summary>A row-major host array (rows × cols).</summary>
    public static WeightSource FromArray(float[] data, long rows, long cols) => new ArraySource(data, rows, cols);

    /// <summary>A callback that produces any requested block (e.g. from a file or a checkpoint reader).</summary>
    public static WeightSource FromLoader(long rows, long cols, ShardLoader loader) => new LoaderSource(rows, cols, loader);

    /// <summary>This matrix transposed (Cols × Rows): torch's Linear weights are out × in, Shardwise's in × out. Each
    /// block is read from this source as the transposed block and transposed on the host.</summary>
    public WeightSource Transposed() => new LoaderSource(Cols, Rows, (r0, c0, nr, nc, dest) =>
    {
        var block = new float[nr * nc];
        Read(c0, r0, nc, nr, block); // nc × nr of the original
        for (long i = 0; i < nr; i++)
            for (long j = 0; j < nc; j++) dest[(int)(i * nc + j)] = block[j * nr + i];
    });

    /// <summary>Checks that this source is <paramref name="rows"/> × <paramref name="cols"/>.</summary>
    public void Require(long rows, long cols, string argument)
    {
        if (Rows != rows || Cols != cols)
            throw new ArgumentException($"{argument} is {Rows} x {Cols}; expected {rows} x {cols}.", argument);
    }

    /// <summary>Copies block (rowOffset.., colOffset..) of size rows × cols into a new buffer on <paramref name="stream"/>'s
    /// device, through a bounded host staging area. Returns null for an empty block.</summary>
    public DeviceBuffer<float>? LoadBlock(DeviceStream stream, long rowOffset, long colOffset, long rows, long cols)
    {
        ArgumentNullException.ThrowIfNull(stream);
        CheckBlock(rowOffset, colOffset, rows, cols, long.MaxValue); // no overflow: rows <= Rows - rowOffset
        if (rows == 0 || cols == 0) return null;
        var buffer = stream.Device.Allocate<float>(rows * cols);
        try
        {
            long chunkRows = Math.Max(1, Math.Min(rows, StagingElements / cols));
            var staging = new float[chunkRows * cols];
            for (long r0 = 0; r0 < rows; r0 += chunkRows)
            {
                long n = Math.Min(chunkRows, rows - r0);
                var span = staging.AsSpan(0, checked((int)(n * cols)));
                Read(rowOffset + r0, colOffset, n, cols, span);
                buffer.CopyFrom(span, stream, r0 * cols);
            }
            return buffer;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    /// <summary>As <see cref="LoadBlock"/>, into a buffer of <typeparamref name="T"/> (float, <see cref="Half"/> or
    /// <see cref="BFloat16"/>): each staged chunk of floats is rounded to nearest even on the host before it is copied, so
    /// the device never holds a float32 copy of a 16-bit block.</summary>
    public DeviceBuffer<T>? LoadBlock<T>(DeviceStream stream, long rowOffset, long colOffset, long rows, long cols) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return (DeviceBuffer<T>?)(object?)LoadBlock(stream, rowOffset, colOffset, rows, cols);
        if (typeof(T) != typeof(Half) && typeof(T) != typeof(BFloat16))
            throw new NotSupportedException($"LoadBlock<{typeof(T).Name}>: weights load as float, System.Half or Shardwise.BFloat16.");
        ArgumentNullException.ThrowIfNull(stream);
        CheckBlock(rowOffset, colOffset, rows, cols, long.MaxValue);
        if (rows == 0 || cols == 0) return null;
        var buffer = stream.Device.Allocate<T>(rows * cols);
        try
        {
            long chunkRows = Math.Max(1, Math.Min(rows, StagingElements / cols));
            var staging = new float[chunkRows * cols];
            var narrow = new T[chunkRows * cols];
            for (long r0 = 0; r0 < rows; r0 += chunkRows)
            {
                long n = Math.Min(chunkRows, rows - r0);
                int count = checked((int)(n * cols));
                Read(rowOffset + r0, colOffset, n, cols, staging.AsSpan(0, count));
                if (typeof(T) == typeof(Half))
                {
                    var h = (Half[])(object)narrow;
                    for (int i = 0; i < count; i++) h[i] = (Half)staging[i];
                }
                else
                {
                    var b = (BFloat16[])(object)narrow;
                    for (int i = 0; i < count; i++) b[i] = (BFloat16)staging[i];
                }
                buffer.CopyFrom(narrow.AsSpan(0, count), stream, r0 * cols);
            }
            return buffer;
        }
        catch
        {
            buffer.Dispose();
            throw;
        }
    }

    private sealed class ArraySource : WeightSource
    {
        private readonly float[] _data;

        public ArraySource(float[] data, long rows, long cols) : base(rows, cols)
        {
            ArgumentNullException.ThrowIfNull(data);
            // rows * cols must not wrap (2^32 x 2^32 would pass as 0 elements).
            if (rows != 0 && cols > long.MaxValue / rows)
                throw new ArgumentOutOfRangeException(nameof(cols), cols, $"rows x cols = {rows} x {cols} overflows a long; expected a matrix an array can hold.");
            if (data.LongLength != rows * cols)
                throw new ArgumentException($"data has {data.LongLength} elements; expected rows x cols = {rows} x {cols} = {rows * cols}.", nameof(data));
            _data = data;
        }

        public override void Read(long rowOffset, long colOffset, long rows, long cols, Span<float> destination)
        {
            CheckBlock(rowOffset, colOffset, rows, cols, destination.Length);
            for (long i = 0; i < rows; i++)
                _data.AsSpan(checked((int)((rowOffset + i) * Cols + colOffset)), (int)cols)
                    .CopyTo(destination.Slice((int)(i * cols), (int)cols));
        }
    }

    private sealed class LoaderSource : WeightSource
    {
        private readonly ShardLoader _loader;

        public LoaderSource(long rows, long cols, ShardLoader loader) : base(rows, cols)
        {
            ArgumentNullException.ThrowIfNull(loader);
            _loader = loader;
        }

        public override void Read(long rowOffset, long colOffset, long rows, long cols, Span<float> destination)
        {
            CheckBlock(rowOffset, colOffset, rows, cols, destination.Length);
            _loader(rowOffset, colOffset, rows, cols, destination);
        }
    }
}
