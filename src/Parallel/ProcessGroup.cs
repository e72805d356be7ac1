using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// A group of ranks that run collectives together. <see cref="CreateLocal(Device, int, TimeSpan?)"/> makes an
/// in-process group (virtual ranks: one stream each, possibly on one device). Collectives are queued on the
/// rank's stream; if a rank never joins, the others fail after <see cref="Timeout"/> with a
/// <see cref="CollectiveTimeoutException"/> naming the rank, the operation and its sequence number, and the
/// group is aborted (later collectives throw <see cref="CommunicatorAbortedException"/>).
/// </summary>
public sealed class ProcessGroup : IDisposable
{
    private readonly CommHandle _comm;
    private readonly RankContext[] _ranks;
    private bool _disposed;

    private ProcessGroup(Device[] devices, TimeSpan timeout)
    {
        Timeout = timeout;
        var raw = new nint[devices.Length];
        for (int r = 0; r < devices.Length; r++)
        {
            ArgumentNullException.ThrowIfNull(devices[r], $"devices[{r}]");
            raw[r] = devices[r].Handle.DangerousGetHandle();
        }
        unsafe
        {
            fixed (nint* p = raw)
                ThrowHelper.Check(Native.sw_comm_create_local(devices.Length, p, (long)Math.Ceiling(timeout.TotalMilliseconds), out _comm),
                    nameof(Native.sw_comm_create_local));
        }
        _comm.SetParents(devices.Select(d => (System.Runtime.InteropServices.SafeHandle)d.Handle).Distinct().ToArray());
        GC.KeepAlive(devices);
        _ranks = new RankContext[devices.Length];
        for (int r = 0; r < devices.Length; r++) _ranks[r] = new RankContext(this, r, devices[r]);
    }

    /// <summary>The default collective timeout (10 minutes).</summary>
    public static TimeSpan DefaultTimeout { get; } = TimeSpan.FromMinutes(10);

    /// <summary>An in-process group of <paramref name="worldSize"/> virtual ranks on one device.</summary>
    public static ProcessGroup CreateLocal(Device device, int worldSize, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (worldSize < 1 || worldSize > 4096)
            throw new ArgumentOutOfRangeException(nameof(worldSize), worldSize, "worldSize must be in [1, 4096].");
        return CreateLocal(Enumerable.Repeat(device, worldSize).ToArray(), timeout);
    }

    /// <summary>An in-process group with rank r on <paramref name="devices"/>[r].</summary>
    public static ProcessGroup CreateLocal(IReadOnlyList<Device> devices, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(devices);
        if (devices.Count < 1) throw new ArgumentException("devices is empty; expected one device per rank.", nameof(devices));
        var t = timeout ?? DefaultTimeout;
        if (t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), t, "timeout must be positive.");
        return new ProcessGroup(devices.ToArray(), t);
    }

    /// <summary>Number of ranks.</summary>
    public int WorldSize => _ranks.Length;

    /// <summary>How long a collective waits for the other ranks.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Rank <paramref name="rank"/>'s context (its device, stream and collectives).</summary>
    public RankContext this[int rank]
    {
        get { ThrowHelper.Rank(rank, WorldSize); return _ranks[rank]; }
    }

    /// <summary>All ranks' contexts.</summary>
    public IReadOnlyList<RankContext> Ranks => _ranks;

    /// <summary>Rank r's device, for memory planning (ranks sharing a device add up).</summary>
    public IReadOnlyList<object> DeviceOfRank => _ranks.Select(r => (object)r.Device).ToArray();

    /// <summary>True when every rank is on the same device (virtual ranks).</summary>
    public bool IsSingleDevice => _ranks.All(r => ReferenceEquals(r.Device, _ranks[0].Device));

    /// <summary>The native communicator (for calling the C ABI directly).</summary>
    public CommHandle Handle => Comm;

    internal CommHandle Comm
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _comm;
        }
    }

    /// <summary>True once a collective failed (timeout, mismatch) or <see cref="Abort"/> was called.</summary>
    public bool IsAborted => State().Aborted;

    /// <summary>Why the group was aborted, or null.</summary>
    public string? AbortReason => State().Reason;

    private unsafe (bool Aborted, string? Reason) State()
    {
        byte* buf = stackalloc byte[1024];
        ThrowHelper.Check(Native.sw_comm_get_state(Comm, out int aborted, buf, 1024), nameof(Native.sw_comm_get_state));
        return aborted != 0 ? (true, System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)buf)) : (false, null);
    }

    /// <summary>Aborts the group: pending and later collectives fail at once. Never blocks.</summary>
    public void Abort() => ThrowHelper.Check(Native.sw_comm_abort(Comm), nameof(Native.sw_comm_abort));

    /// <summary>Number of collectives rank <paramref name="rank"/> has completed.</summary>
    public ulong CollectiveCount(int rank)
    {
        ThrowHelper.Rank(rank, WorldSize);
        ThrowHelper.Check(Native.sw_comm_get_collective_count(Comm, rank, out ulong n), nameof(Native.sw_comm_get_collective_count));
        return n;
    }

    /// <summary>Waits for every rank's stream; throws the first error.</summary>
    public void Synchronize()
    {
        List<Exception>? errors = null;
        foreach (var r in _ranks)
        {
            try { r.Stream.Synchronize(); }
            catch (ShardwiseException e) { (errors ??= []).Add(e); }
        }
        if (errors is { Count: 1 }) throw errors[0];
        if (errors is not null) throw new AggregateException("several ranks failed", errors);
    }

    /// <summary>Releases the communicator (collectives still queued then fail at once instead of waiting for
    /// peers), then drains and releases every rank's stream.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _comm.Dispose();
        foreach (var r in _ranks) r.DisposeStream();
    }
}
