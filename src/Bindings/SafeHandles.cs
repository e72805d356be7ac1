using System.Runtime.InteropServices;

namespace Shardwise.Bindings;

/// <summary>
/// Base of every owned native handle. A child handle (buffer, stream, event, communicator) keeps its parent
/// device handle alive, so the order in which handles are disposed or finalized never matters.
/// <see cref="ReleaseHandle"/> never throws. The kinds differ only by the native function that destroys them, which
/// each passes to the constructor.
/// </summary>
public abstract class ShardwiseHandle : SafeHandle
{
    private readonly Func<nint, SwStatus>? _destroy;
    private SafeHandle[]? _parents;
    private volatile bool _disposeRequested;

    /// <summary>Creates an empty (invalid) handle; P/Invoke fills it. A derived class overrides <see cref="Destroy"/>.</summary>
    protected ShardwiseHandle() : base(0, ownsHandle: true) { }

    /// <summary>Creates an empty (invalid) handle that <paramref name="destroy"/> (an <c>sw_*_destroy</c> function) releases.</summary>
    protected ShardwiseHandle(Func<nint, SwStatus> destroy) : this() => _destroy = destroy;

    /// <inheritdoc />
    public override bool IsInvalid => handle == 0;

    /// <summary>Keeps <paramref name="parents"/> alive until this handle is released.</summary>
    public void SetParents(params SafeHandle[] parents)
    {
        foreach (var p in parents)
        {
            bool added = false;
            p.DangerousAddRef(ref added);
        }
        _parents = parents;
    }

    /// <summary>Destroys the native object: by default with the function given to the constructor.</summary>
    protected virtual SwStatus Destroy(nint handle) => _destroy is { } destroy ? destroy(handle) : SwStatus.Unsupported;

    /// <inheritdoc />
    protected override bool ReleaseHandle()
    {
        var status = Destroy(handle);
        if (_parents is { } parents)
            foreach (var p in parents) p.DangerousRelease();
        return status == SwStatus.Ok;
    }

    /// <summary>True once Dispose was called, even while children still keep the native object alive.</summary>
    public bool IsDisposeRequested => _disposeRequested || IsClosed;

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        _disposeRequested = true;
        base.Dispose(disposing);
    }

    /// <summary>Throws <see cref="ObjectDisposedException"/> naming <paramref name="argument"/> if disposed or invalid.</summary>
    public void ThrowIfDisposed(string argument)
    {
        if (IsDisposeRequested || IsInvalid)
            throw new ObjectDisposedException(argument, $"{argument} ({GetType().Name}) has been disposed or was never created.");
    }
}

/// <summary>An <c>sw_device</c>.</summary>
public sealed class DeviceHandle() : ShardwiseHandle(Native.sw_device_destroy);

/// <summary>An <c>sw_buffer</c>.</summary>
public sealed class BufferHandle() : ShardwiseHandle(Native.sw_buffer_destroy);

/// <summary>An <c>sw_stream</c>.</summary>
public sealed class StreamHandle() : ShardwiseHandle(Native.sw_stream_destroy);

/// <summary>An <c>sw_event</c>.</summary>
public sealed class EventHandle() : ShardwiseHandle(Native.sw_event_destroy);

/// <summary>An <c>sw_comm</c>.</summary>
public sealed class CommHandle() : ShardwiseHandle(Native.sw_comm_destroy)
{
    /// <summary>Takes ownership of a raw <c>sw_comm</c> (one from <c>sw_comm_split</c> / <c>sw_comm_split_local</c>,
    /// which return raw handles); it is destroyed when the returned handle is released.</summary>
    public static CommHandle Adopt(nint comm)
    {
        if (comm == 0) throw new ArgumentException("comm is NULL; expected a communicator handle.", nameof(comm));
        var h = new CommHandle();
        h.SetHandle(comm);
        return h;
    }
}

/// <summary>An <c>sw_store</c> (the TCP rendezvous store of a multi-process job).</summary>
public sealed class StoreHandle() : ShardwiseHandle(Native.sw_store_destroy);
