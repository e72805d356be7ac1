using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// An in-order asynchronous queue of work on one device (a CUDA stream; on the CPU a worker thread).
/// Errors of queued work surface at <see cref="Synchronize"/>.
/// </summary>
public sealed class Stream : IDisposable
{
    private readonly StreamHandle _handle;

    internal Stream(Device device)
    {
        Device = device;
        ThrowHelper.Check(Native.sw_stream_create(device.Handle, out _handle), nameof(Native.sw_stream_create));
        _handle.SetParents(device.Handle);
    }

    private Stream(Device device, StreamHandle handle)
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
    public static Stream Wrap(Device device, nint nativeStream)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowHelper.Check(Native.sw_stream_wrap(device.Handle, nativeStream, out var h), nameof(Native.sw_stream_wrap));
        return new Stream(device, h);
    }

    /// <summary>The native stream (<c>cudaStream_t</c>) behind this stream, or 0 on the CPU backend.</summary>
    public nint NativeHandle
    {
        get
        {
            ThrowHelper.Check(Native.sw_stream_get_native(Handle, out var p), nameof(Native.sw_stream_get_native));
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
    public void Synchronize() => ThrowHelper.Check(Native.sw_stream_synchronize(Handle), nameof(Native.sw_stream_synchronize));

    /// <summary>Makes later work on this stream wait for <paramref name="evt"/>.</summary>
    public void Wait(Event evt)
    {
        ArgumentNullException.ThrowIfNull(evt);
        ThrowHelper.Check(Native.sw_stream_wait_event(Handle, evt.Handle), nameof(Native.sw_stream_wait_event));
    }

    /// <summary>Waits for queued work, then releases the stream.</summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>A point in a stream's work, for ordering streams and for timing.</summary>
public sealed class Event : IDisposable
{
    private readonly EventHandle _handle;

    /// <summary>Creates an event on <paramref name="device"/>.</summary>
    public Event(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowHelper.Check(Native.sw_event_create(device.Handle, out _handle), nameof(Native.sw_event_create));
        _handle.SetParents(device.Handle);
    }

    /// <summary>The native handle.</summary>
    public EventHandle Handle
    {
        get { _handle.ThrowIfDisposed("event"); return _handle; }
    }

    /// <summary>Records the current end of <paramref name="stream"/>.</summary>
    public void Record(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.Check(Native.sw_event_record(Handle, stream.Handle), nameof(Native.sw_event_record));
    }

    /// <summary>Blocks until the recorded point has completed.</summary>
    public void Synchronize() => ThrowHelper.Check(Native.sw_event_synchronize(Handle), nameof(Native.sw_event_synchronize));

    /// <summary>True when the recorded point has completed.</summary>
    public bool IsCompleted
    {
        get
        {
            ThrowHelper.Check(Native.sw_event_query(Handle, out int done), nameof(Native.sw_event_query));
            return done != 0;
        }
    }

    /// <summary>Milliseconds from <paramref name="start"/> to <paramref name="end"/> (both completed), never negative:
    /// <see cref="ShardwiseArgumentException"/> when <paramref name="end"/> was recorded before <paramref name="start"/>
    /// (swapped arguments) or either has not completed.</summary>
    public static double ElapsedMilliseconds(Event start, Event end)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(end);
        ThrowHelper.Check(Native.sw_event_elapsed_ms(start.Handle, end.Handle, out double ms), nameof(Native.sw_event_elapsed_ms));
        return ms;
    }

    /// <summary>Releases the event.</summary>
    public void Dispose() => _handle.Dispose();
}
