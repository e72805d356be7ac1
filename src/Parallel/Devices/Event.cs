using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>A point in a stream's work, for ordering streams and for timing.</summary>
public sealed class Event : IDisposable
{
    private readonly EventHandle _handle;

    /// <summary>Creates an event on <paramref name="device"/>.</summary>
    public Event(Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ThrowHelper.Check(Native.sw_event_create(device.Handle, out _handle));
        _handle.SetParents(device.Handle);
    }

    /// <summary>The native handle.</summary>
    public EventHandle Handle
    {
        get { _handle.ThrowIfDisposed("event"); return _handle; }
    }

    /// <summary>Records the current end of <paramref name="stream"/>.</summary>
    public void Record(DeviceStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ThrowHelper.Check(Native.sw_event_record(Handle, stream.Handle));
    }

    /// <summary>Blocks until the recorded point has completed.</summary>
    public void Synchronize() => ThrowHelper.Check(Native.sw_event_synchronize(Handle));

    /// <summary>True when the recorded point has completed.</summary>
    public bool IsCompleted
    {
        get
        {
            ThrowHelper.Check(Native.sw_event_query(Handle, out int done));
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
        ThrowHelper.Check(Native.sw_event_elapsed_ms(start.Handle, end.Handle, out double ms));
        return ms;
    }

    /// <summary>Releases the event.</summary>
    public void Dispose() => _handle.Dispose();
}
