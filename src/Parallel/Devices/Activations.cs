using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>Element-wise activations queued on a stream (GeLU, tanh approximation, as the GEMM epilogue).</summary>
public static class Activations
{
    /// <summary>y[i] = GeLU(x[i]) for <paramref name="count"/> elements (x may be y).</summary>
    public static void Gelu(DeviceStream stream, DeviceBuffer<float> x, DeviceBuffer<float> y, long count, long xOffset = 0, long yOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        ThrowHelper.NonNegative(count);
        ThrowHelper.Check(Native.sw_gelu(stream.Handle, SwDtype.F32, x.Handle, (ulong)xOffset, y.Handle, (ulong)yOffset, (ulong)count));
    }

    /// <summary>dx[i] = dy[i] · GeLU'(x[i]) for <paramref name="count"/> elements, x being GeLU's input (dx may be dy).</summary>
    public static void GeluBackward(DeviceStream stream, DeviceBuffer<float> x, DeviceBuffer<float> dy, DeviceBuffer<float> dx, long count,
        long xOffset = 0, long dyOffset = 0, long dxOffset = 0)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        ArgumentNullException.ThrowIfNull(dx);
        ThrowHelper.NonNegative(count);
        ThrowHelper.Check(Native.sw_gelu_backward(stream.Handle, SwDtype.F32, x.Handle, (ulong)xOffset, dy.Handle, (ulong)dyOffset,
            dx.Handle, (ulong)dxOffset, (ulong)count));
    }
}
