using System.Runtime.CompilerServices;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Typed memory on a device: owned (allocated by Shardwise) or wrapped (another framework's memory, never
/// freed by Shardwise). Element types: float, double, int, Half, BFloat16 (Shardwise.BFloat16), byte.
/// </summary>
public sealed unsafe class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    private readonly BufferHandle _handle;

    private DeviceBuffer(Device device, BufferHandle handle, long length, bool owned)
    {
        Device = device;
        _handle = handle;
        Length = length;
        IsOwned = owned;
        _handle.SetParents(device.Handle);
    }

    /// <summary>The element type as the C ABI names it.</summary>
    public static SwDtype Dtype { get; } = DtypeOf();

    private static SwDtype DtypeOf()
    {
        if (typeof(T) == typeof(float)) return SwDtype.F32;
        if (typeof(T) == typeof(double)) return SwDtype.F64;
        if (typeof(T) == typeof(int)) return SwDtype.I32;
        if (typeof(T) == typeof(Half)) return SwDtype.F16;
        if (typeof(T) == typeof(BFloat16)) return SwDtype.BF16;
        if (typeof(T) == typeof(byte)) return SwDtype.U8;
        return (SwDtype)(-1);
    }

    private static void CheckType()
    {
        if ((int)Dtype < 0)
            throw new NotSupportedException($"DeviceBuffer<{typeof(T).Name}>: the element type must be float, double, int, Half, BFloat16 or byte.");
    }

    // length * sizeof(T) in bytes for a length in 1..limit, else ArgumentOutOfRangeException naming the argument (never
    // an OverflowException). Allocate: limit = the largest length whose byte size fits a long (larger sizes that fit
    // are the native core's to refuse: ShardwiseOutOfMemoryException above 2^50 bytes). Wrap: 2^50 bytes, the core's
    // limit for wrapped memory.
    private static ulong ByteSize(long length, long limit, [CallerArgumentExpression(nameof(length))] string name = "")
    {
        ThrowHelper.Positive(length, name);
        if (length > limit)
            throw new ArgumentOutOfRangeException(name, length,
                $"{name} = {length} elements of {sizeof(T)} bytes is more than a buffer can hold; expected 1..{limit}.");
        return (ulong)length * (ulong)sizeof(T);
    }

    internal static DeviceBuffer<T> Allocate(Device device, long length)
    {
        ArgumentNullException.ThrowIfNull(device);
        CheckType();
        ThrowHelper.Check(Native.sw_buffer_alloc(device.Handle, ByteSize(length, long.MaxValue / sizeof(T)), out var h));
        var buffer = new DeviceBuffer<T>(device, h, length, owned: true);
        device.CountAllocation(length * sizeof(T));
        return buffer;
    }

    internal static DeviceBuffer<T> Wrap(Device device, nint pointer, long length)
    {
        ArgumentNullException.ThrowIfNull(device);
        CheckType();
        if (pointer == 0) throw new ArgumentNullException(nameof(pointer), "pointer is null; expected the address of the memory to wrap.");
        ThrowHelper.Check(Native.sw_buffer_wrap(device.Handle, pointer, ByteSize(length, (1L << 50) / sizeof(T)), out var h));
        return new DeviceBuffer<T>(device, h, length, owned: false);
    }

    /// <summary>The device the memory lives on.</summary>
    public Device Device { get; }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>False for wrapped memory that belongs to someone else.</summary>
    public bool IsOwned { get; }

    /// <summary>The native handle.</summary>
    public BufferHandle Handle
    {
        get { _handle.ThrowIfDisposed("buffer"); return _handle; }
    }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _handle.IsDisposeRequested;

    /// <summary>The device address of the first element.</summary>
    public nint Pointer
    {
        get
        {
            ThrowHelper.Check(Native.sw_buffer_get_pointer(Handle, out var p));
            return p;
        }
    }

    // Throws naming the argument at fault: offsetName when the offset is outside [0, Length], else countName.
    private void CheckRange(long offset, long count, [CallerArgumentExpression(nameof(offset))] string offsetName = "",
        [CallerArgumentExpression(nameof(count))] string countName = "")
    {
        if (offset < 0 || offset > Length)
            throw new ArgumentOutOfRangeException(offsetName, offset,
                $"{offsetName} = {offset} is outside the buffer of {Length} elements; expected 0 <= {offsetName} <= {Length}.");
        if (count < 0 || count > Length - offset)
            throw new ArgumentOutOfRangeException(countName, count,
                $"{countName} = {count} elements from offset {offset} do not fit in the buffer of {Length} elements; expected 0..{Length - offset}.");
    }

    // count for Fill/Clear: -1 means "to the end"; any other negative value is an error.
    private long CountOrRest(long offset, long count)
    {
        if (count == -1) return offset >= 0 && offset <= Length ? Length - offset : 0;
        if (count < 0)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"count = {count}; expected -1 (to the end of the buffer) or a count >= 0.");
        return count;
    }

    /// <summary>Copies <paramref name="source"/> into the buffer at <paramref name="offset"/> through
    /// <paramref name="stream"/> and waits for it (the span need not outlive the call).</summary>
    public void CopyFrom(ReadOnlySpan<T> source, DeviceStream stream, long offset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        CheckRange(offset, source.Length, countName: nameof(source));
        ThrowHelper.SameDevice(stream.Device, this, "buffer");
        fixed (T* p = source)
        {
            ThrowHelper.Check(Native.sw_memcpy_h2d_async(Handle, (ulong)offset * (ulong)sizeof(T), p,
                (ulong)source.Length * (ulong)sizeof(T), stream.Handle));
            stream.Synchronize(); // inside `fixed`: the stream reads the span when it gets there
        }
    }

    /// <summary>Copies from the buffer at <paramref name="offset"/> into <paramref name="destination"/> through
    /// <paramref name="stream"/> (after the work already queued there) and waits for it.</summary>
    public void CopyTo(Span<T> destination, DeviceStream stream, long offset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        CheckRange(offset, destination.Length, countName: nameof(destination));
        ThrowHelper.SameDevice(stream.Device, this, "buffer");
        fixed (T* p = destination)
        {
            ThrowHelper.Check(Native.sw_memcpy_d2h_async(p, Handle, (ulong)offset * (ulong)sizeof(T),
                (ulong)destination.Length * (ulong)sizeof(T), stream.Handle));
            stream.Synchronize(); // inside `fixed`: the stream writes the span when it gets there
        }
    }

    /// <summary>Copies the whole buffer into a new host array.</summary>
    public T[] ToArray(DeviceStream stream)
    {
        var a = new T[Length];
        CopyTo(a, stream);
        return a;
    }

    /// <summary>Fills <paramref name="count"/> elements from <paramref name="offset"/> with <paramref name="value"/> through
    /// <paramref name="stream"/> and waits (all-zero bits: a device memset; otherwise a bounded host staging copy).</summary>
    public void Fill(T value, DeviceStream stream, long offset = 0, long count = -1)
    {
        ArgumentNullException.ThrowIfNull(stream);
        count = CountOrRest(offset, count);
        CheckRange(offset, count);
        if (IsAllZeroBits(value))
        {
            Clear(stream, offset, count);
            stream.Synchronize();
            return;
        }
        var host = new T[Math.Min(count, 1 << 20)];
        Array.Fill(host, value);
        for (long done = 0; done < count; done += host.Length)
            CopyFrom(host.AsSpan(0, (int)Math.Min(host.Length, count - done)), stream, offset + done);
    }

    private static bool IsAllZeroBits(T value)
    {
        var bytes = new ReadOnlySpan<byte>(&value, sizeof(T));
        return bytes.IndexOfAnyExcept((byte)0) < 0;
    }

    /// <summary>Queues setting <paramref name="count"/> elements from <paramref name="offset"/> to all-zero bits
    /// (0 for every element type) on <paramref name="stream"/>; returns at once.</summary>
    public void Clear(DeviceStream stream, long offset = 0, long count = -1)
    {
        ArgumentNullException.ThrowIfNull(stream);
        count = CountOrRest(offset, count);
        CheckRange(offset, count);
        ThrowHelper.SameDevice(stream.Device, this, "buffer");
        ThrowHelper.Check(Native.sw_memset_async(Handle, (ulong)offset * (ulong)sizeof(T), 0, (ulong)count * (ulong)sizeof(T),
            stream.Handle));
    }

    /// <summary>Queues a device-to-device copy of <paramref name="count"/> elements into <paramref name="destination"/>
    /// on <paramref name="stream"/> (the destination's device); returns at once.</summary>
    public void CopyTo(DeviceBuffer<T> destination, DeviceStream stream, long sourceOffset, long destinationOffset, long count)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(stream);
        CheckRange(sourceOffset, count);
        destination.CheckRange(destinationOffset, count);
        ThrowHelper.SameDevice(stream.Device, destination);
        ThrowHelper.Check(Native.sw_memcpy_d2d_async(destination.Handle, (ulong)destinationOffset * (ulong)sizeof(T), Handle,
            (ulong)sourceOffset * (ulong)sizeof(T), (ulong)count * (ulong)sizeof(T), stream.Handle));
    }

    /// <summary>A row-major matrix view of this buffer (<c>ld</c> -1: <paramref name="cols"/>). Matrices hold float, Half
    /// or BFloat16: a buffer of another type throws <see cref="NotSupportedException"/> naming them.</summary>
    public MatrixView<T> AsMatrix(long rows, long cols, long ld = -1, long offset = 0) =>
        new(this, rows, cols, ld < 0 ? cols : ld, offset);

    private int _uncounted;

    /// <summary>Releases the handle (and the memory, if owned) once no queued work uses it.</summary>
    public void Dispose()
    {
        if (IsOwned && Interlocked.Exchange(ref _uncounted, 1) == 0) Device.CountAllocation(-Length * sizeof(T));
        _handle.Dispose();
    }
}
