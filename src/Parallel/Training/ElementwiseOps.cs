using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The element-wise operations of mixed-precision training, queued on a stream (<c>sw_convert</c>,
/// <c>sw_unscale_check</c>, <c>sw_axpy</c>): dtype conversion with round-to-nearest-even, gradient unscaling with an
/// inf/NaN flag, and the fp32 update y += alpha·x. Element types: float, <see cref="Half"/>, <see cref="BFloat16"/>.
/// </summary>
public static class ElementwiseOps
{
    private static void CheckType<T>(string name) where T : unmanaged
    {
        var t = DeviceBuffer<T>.Dtype;
        if (t != SwDtype.F32 && t != SwDtype.F16 && t != SwDtype.BF16)
            throw new NotSupportedException($"{name}: element type {typeof(T).Name} is not supported; expected float, System.Half or Shardwise.BFloat16.");
    }

    private static void Range<T>(DeviceBuffer<T> buffer, long offset, long count, string name) where T : unmanaged
    {
        if (offset < 0 || count < 0 || offset > buffer.Length || count > buffer.Length - offset)
            throw new ArgumentOutOfRangeException(name, $"{name} needs elements [{offset}, {offset + count}); it has {buffer.Length}.");
    }

    /// <summary>dst[dstOffset + i] = (TDst) src[srcOffset + i] for i &lt; count (narrowing rounds to nearest even; fp16
    /// overflow gives infinity; NaN and infinities kept). The ranges must not overlap.</summary>
    public static void Convert<TSrc, TDst>(DeviceStream stream, DeviceBuffer<TSrc> src, DeviceBuffer<TDst> dst, long count,
        long srcOffset = 0, long dstOffset = 0) where TSrc : unmanaged where TDst : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(src);
        ArgumentNullException.ThrowIfNull(dst);
        CheckType<TSrc>(nameof(src));
        CheckType<TDst>(nameof(dst));
        Range(src, srcOffset, count, nameof(src));
        Range(dst, dstOffset, count, nameof(dst));
        ThrowHelper.SameDevice(stream.Device, src);
        ThrowHelper.SameDevice(stream.Device, dst);
        ThrowHelper.Check(Native.sw_convert(stream.Handle, DeviceBuffer<TSrc>.Dtype, src.Handle, (ulong)srcOffset,
            DeviceBuffer<TDst>.Dtype, dst.Handle, (ulong)dstOffset, (ulong)count));
    }

    /// <summary>Converts a matrix view into another of the same shape (row by row when either is strided).</summary>
    public static void Convert<TSrc, TDst>(DeviceStream stream, MatrixView<TSrc> src, MatrixView<TDst> dst)
        where TSrc : unmanaged where TDst : unmanaged
    {
        ThrowHelper.NotEmpty(src);
        ThrowHelper.NotEmpty(dst);
        ThrowHelper.Shape(dst, src.Rows, src.Cols, "shaped like src");
        if ((src.Ld == src.Cols && dst.Ld == dst.Cols) || src.Rows <= 1)
        {
            Convert(stream, src.Buffer, dst.Buffer, src.Rows * src.Cols, src.Offset, dst.Offset);
            return;
        }
        for (long i = 0; i < src.Rows; i++)
            Convert(stream, src.Buffer, dst.Buffer, src.Cols, src.Offset + i * src.Ld, dst.Offset + i * dst.Ld);
    }

    /// <summary>buffer[offset + i] = (T)(float(buffer[offset + i]) / scale) for i &lt; count; sets the fp32
    /// <paramref name="flag"/>[<paramref name="flagOffset"/>] to 1 when any of them was inf or NaN (never clears it).</summary>
    public static void UnscaleCheck<T>(DeviceStream stream, DeviceBuffer<T> buffer, long count, float scale, DeviceBuffer<float> flag,
        long offset = 0, long flagOffset = 0) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(buffer);
        ArgumentNullException.ThrowIfNull(flag);
        CheckType<T>(nameof(buffer));
        Range(buffer, offset, count, nameof(buffer));
        Range(flag, flagOffset, 1, nameof(flag));
        if (!float.IsFinite(scale) || scale <= 0)
            throw new ArgumentOutOfRangeException(nameof(scale), scale, "scale must be finite and > 0.");
        ThrowHelper.Check(Native.sw_unscale_check(stream.Handle, DeviceBuffer<T>.Dtype, buffer.Handle, (ulong)offset, (ulong)count,
            scale, flag.Handle, (ulong)flagOffset));
    }

    /// <summary>y[yOffset + i] = fma(alpha, float(x[xOffset + i]), y[yOffset + i]) for i &lt; count (y is fp32).</summary>
    public static void Axpy<T>(DeviceStream stream, float alpha, DeviceBuffer<T> x, DeviceBuffer<float> y, long count,
        long xOffset = 0, long yOffset = 0) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        CheckType<T>(nameof(x));
        Range(x, xOffset, count, nameof(x));
        Range(y, yOffset, count, nameof(y));
        if (!float.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "alpha must be finite.");
        ThrowHelper.Check(Native.sw_axpy(stream.Handle, DeviceBuffer<T>.Dtype, alpha, x.Handle, (ulong)xOffset, y.Handle,
            (ulong)yOffset, (ulong)count));
    }
}
