using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// An in-order asynchronous queue of work on one device (a CUDA stream; on the CPU a worker thread).
/// Errors of queued work surface at <see cref="Synchronize"/>. (Named <c>DeviceStream</c>, like <see cref="Device"/> and
/// <see cref="DeviceBuffer{T}"/>, so that it never clashes with <c>System.IO.Stream</c> under the SDK's implicit usings.)
/// </summary>
public sealed class DeviceStream : IDisposable
{
    private readonly StreamHandle _handle;

    internal DeviceStream(Device device)
    {
        Device = device;
        ThrowHelper.Check(Native.sw_stream_create(device.Handle, out _handle));
        _handle.SetParents(device.Handle);
    }

    private DeviceStream(Device device, StreamHandle handle)
    {
        Device = device;
        _handle = handle;
        _handle.SetParents(device.Handle);
    }

    /// <summary>
    /// Wraps another framework's native stream (a <c>cudaStream_t</c>, e.g. TorchSharp's current stream) without
    /// taking ownership: Shardwise work queued on the result is ordered with the framework's own work.
    /// Disposing the wrapper never destroys the native stream. Not available on the CPU backend.
    /// </summary>
    public static DeviceStream Wrap(Device device, nint nativeStream)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowHelper.Check(Native.sw_stream_wrap(device.Handle, nativeStream, out var h));
        return new DeviceStream(device, h);
    }

    /// <summary>The native stream (<c>cudaStream_t</c>) behind this stream, or 0 on the CPU backend.</summary>
    public nint NativeHandle
    {
        get
        {
            ThrowHelper.Check(Native.sw_stream_get_native(Handle, out var p));
            return p;
        }
    }

    /// <summary>The device the stream runs on.</summary>
    public Device Device { get; }

    /// <summary>The native handle.</summary>
    public StreamHandle Handle
    {
        get { _handle.ThrowIfDisposed("stream"); return _handle; }
    }

    /// <summary>Waits for all queued work; throws the first error it produced (then the stream is usable again).</summary>
    public void Synchronize() => ThrowHelper.Check(Native.sw_stream_synchronize(Handle));

    /// <summary>Makes later work on this stream wait for <paramref name="evt"/>.</summary>
    public void Wait(Event evt)
    {
        ArgumentNullException.ThrowIfNull(evt);
        ThrowHelper.Check(Native.sw_stream_wait_event(Handle, evt.Handle));
    }

    /// <summary>Waits for queued work, then releases the stream.</summary>
    public void Dispose() => _handle.Dispose();
}
