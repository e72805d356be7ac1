using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// A layer's scratch buffers when their element type is chosen at run time (by its <see cref="Precision"/>): one
/// buffer per slot, grown on demand and replaced when a slot is asked for another element type. No allocation once
/// warm. Work already queued may still use a replaced buffer: the native side keeps its memory alive until that work
/// has run.
/// </summary>
internal sealed class TypedScratch : IDisposable
{
    private readonly object?[] _slots;

    public TypedScratch(int slots) => _slots = new object?[slots];

    /// <summary>A buffer of at least <paramref name="elements"/> (at least 1) elements of <typeparamref name="T"/>.</summary>
    public DeviceBuffer<T> Get<T>(int slot, Device device, long elements) where T : unmanaged => Get<T>(slot, device, elements, out _);

    /// <summary>As <see cref="Get{T}(int, Device, long)"/>; <paramref name="fresh"/> says whether the buffer is new.</summary>
    public DeviceBuffer<T> Get<T>(int slot, Device device, long elements, out bool fresh) where T : unmanaged
    {
        var before = _slots[slot];
        var current = before as DeviceBuffer<T>;
        if (current is null && _slots[slot] is IDisposable other)
        {
            other.Dispose();
            _slots[slot] = null;
        }
        var buffer = Scratch.Ensure(ref current, device, elements);
        _slots[slot] = buffer;
        fresh = !ReferenceEquals(buffer, before);
        return buffer;
    }

    /// <summary>True when the slot holds a buffer of <typeparamref name="T"/> (whatever its size).</summary>
    public bool Holds<T>(int slot) where T : unmanaged => _slots[slot] is DeviceBuffer<T>;

    public void Dispose()
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            (_slots[i] as IDisposable)?.Dispose();
            _slots[i] = null;
        }
    }
}

/// <summary>Buffers whose element type is known only at run time (a layer's weights under its <see cref="Precision"/>).</summary>
internal static class AnyBuffer
{
    /// <summary>Queues dst[0..count) = (TDst) src[0..count), src being a DeviceBuffer of <paramref name="srcType"/>.</summary>
    public static void ConvertTo<TDst>(DeviceStream stream, object src, SwDtype srcType, DeviceBuffer<TDst> dst, long count)
        where TDst : unmanaged
    {
        switch (srcType)
        {
            case SwDtype.F32: ElementwiseOps.Convert(stream, (DeviceBuffer<float>)src, dst, count); break;
            case SwDtype.F16: ElementwiseOps.Convert(stream, (DeviceBuffer<Half>)src, dst, count); break;
            case SwDtype.BF16: ElementwiseOps.Convert(stream, (DeviceBuffer<BFloat16>)src, dst, count); break;
            default: throw new NotSupportedException($"no conversion from {Gemm.DtypeName(srcType)}");
        }
    }

    /// <summary>Loads a block of <paramref name="source"/> as <paramref name="type"/> (a DeviceBuffer of it, or null).</summary>
    public static object? Load(WeightSource source, SwDtype type, DeviceStream stream, long rowOffset, long colOffset, long rows, long cols) =>
        type switch
        {
            SwDtype.F32 => source.LoadBlock<float>(stream, rowOffset, colOffset, rows, cols),
            SwDtype.F16 => source.LoadBlock<Half>(stream, rowOffset, colOffset, rows, cols),
            SwDtype.BF16 => source.LoadBlock<BFloat16>(stream, rowOffset, colOffset, rows, cols),
            _ => throw new NotSupportedException($"weights of type {Gemm.DtypeName(type)}"),
        };

    /// <summary>Allocates <paramref name="elements"/> of <paramref name="type"/> on <paramref name="device"/>.</summary>
    public static object Allocate(Device device, SwDtype type, long elements) => type switch
    {
        SwDtype.F32 => device.Allocate<float>(elements),
        SwDtype.F16 => device.Allocate<Half>(elements),
        SwDtype.BF16 => device.Allocate<BFloat16>(elements),
        _ => throw new NotSupportedException($"buffers of type {Gemm.DtypeName(type)}"),
    };
}
