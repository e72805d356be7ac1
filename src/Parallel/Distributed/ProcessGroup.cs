using System.Runtime.InteropServices;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// A group of ranks that run collectives together.
/// <list type="bullet">
/// <item><see cref="CreateLocal(Device, int, TimeSpan?)"/>: an in-process group (virtual ranks: one stream each, possibly
/// on one device); <see cref="Ranks"/> holds every rank.</item>
/// <item><see cref="CreateTcp(Device, int, int, string, int, TimeSpan?)"/>, <see cref="CreateMpi"/>, <see cref="FromEnvironment"/>: a multi-process group, one rank
/// per process (CPU devices); <see cref="Ranks"/> holds this process's rank only (<see cref="Local"/>).</item>
/// <item><see cref="CreateNccl(IReadOnlyList{Device}, TimeSpan?)"/> (one rank per GPU in this process),
/// <see cref="CreateNccl(Device, int, int, string, int, TimeSpan?)"/>, <see cref="CreateNcclMpi"/> and
/// <see cref="FromEnvironment"/> on a CUDA device: an NCCL group (NCCL loaded at run time).</item>
/// </list>
/// Collectives are queued on the rank's stream; if a rank never joins, the others fail after <see cref="Timeout"/> with
/// a <see cref="CollectiveTimeoutException"/> naming the rank, the operation and its sequence number, and the group is
/// aborted (later collectives throw <see cref="CommunicatorAbortedException"/>). In a multi-process group a rank whose
/// process dies makes the ranks waiting for it fail at once, and a failing rank tells the others, whose pending
/// collectives then fail with its reason instead of at their timeout.
/// <para>This file holds the group itself (its ranks, state, abort and disposal); the factories that make one, and the
/// argument checks they share, are in ProcessGroup.Factories.cs.</para>
/// </summary>
public sealed partial class ProcessGroup : IDisposable
{
    private readonly CommHandle _comm;
    private readonly RankContext[] _ranks; // in-process: every rank; multi-process: this process's rank
    private readonly TcpStore? _ownedStore;
    private bool _disposed;

    private ProcessGroup(Device[] devices, TimeSpan timeout, bool nccl = false)
    {
        Timeout = timeout;
        WorldSize = devices.Length;
        var raw = new nint[devices.Length];
        for (int r = 0; r < devices.Length; r++)
        {
            ArgumentNullException.ThrowIfNull(devices[r], $"devices[{r}]");
            raw[r] = devices[r].Handle.DangerousGetHandle();
        }
        unsafe
        {
            fixed (nint* p = raw)
            {
                if (nccl)
                    ThrowHelper.Check(Native.sw_comm_create_nccl_local(devices.Length, p, TimeoutMs(timeout), out _comm));
                else
                    ThrowHelper.Check(Native.sw_comm_create_local(devices.Length, p, TimeoutMs(timeout), out _comm));
            }
        }
        Backend = BackendOf(_comm);
        Transport = TransportOf(_comm);
        _comm.SetParents(devices.Select(d => (SafeHandle)d.Handle).Distinct().ToArray());
        GC.KeepAlive(devices);
        _ranks = new RankContext[devices.Length];
        for (int r = 0; r < devices.Length; r++) _ranks[r] = new RankContext(this, r, devices[r]);
    }

    // A multi-process group: `comm` is made; this process is one rank of it.
    private ProcessGroup(CommHandle comm, Device device, TimeSpan timeout, TcpStore? ownedStore)
    {
        _comm = comm;
        _ownedStore = ownedStore;
        Timeout = timeout;
        _comm.SetParents(device.Handle);
        ThrowHelper.Check(Native.sw_comm_get_world_size(_comm, out int world));
        ThrowHelper.Check(Native.sw_comm_get_rank(_comm, out int rank));
        WorldSize = world;
        Backend = BackendOf(_comm);
        Transport = TransportOf(_comm);
        IsMultiProcess = true;
        _ranks = [new RankContext(this, rank, device)];
    }

    private static string BackendOf(CommHandle comm)
    {
        ThrowHelper.Check(Native.sw_comm_get_backend(comm, out nint name));
        return Marshal.PtrToStringUTF8(name) ?? "?";
    }

    private static string TransportOf(CommHandle comm)
    {
        ThrowHelper.Check(Native.sw_comm_get_transport(comm, out nint name));
        return Marshal.PtrToStringUTF8(name) ?? "?";
    }

    /// <summary>Number of ranks (in every process of a multi-process group).</summary>
    public int WorldSize { get; }

    /// <summary>The communicator's kind: "local" (in-process), "tcp", "mpi" or "nccl".</summary>
    public string Backend { get; }

    /// <summary>What moves the group's data: "local" (in-process), "nccl", "mpi", and for a TCP group "tcp" (its
    /// sockets) or, when every rank runs on one host, "shm" (a shared-memory segment) or "shm+cma" (shared memory, large
    /// pieces read in one copy from the sender's memory). <c>SHARDWISE_TRANSPORT=tcp</c> keeps a TCP group on its
    /// sockets; <c>shm</c> makes creating one fail when the ranks cannot share memory (docs/distributed.md).</summary>
    public string Transport { get; }

    /// <summary>True for a group whose ranks are separate processes (TCP, MPI, NCCL across processes): this process runs
    /// <see cref="Local"/> only.</summary>
    public bool IsMultiProcess { get; }

    /// <summary>This process's rank: the one rank of a multi-process group, or of a one-rank in-process group.</summary>
    public RankContext Local => _ranks.Length == 1 ? _ranks[0]
        : throw new InvalidOperationException($"this in-process group runs all {WorldSize} ranks in this process; use group[rank] or Ranks.");

    /// <summary>How long a collective waits for the other ranks.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Rank <paramref name="rank"/>'s context (its device, stream and collectives). In a multi-process group
    /// only this process's rank is here; another rank throws <see cref="ArgumentException"/>.</summary>
    public RankContext this[int rank]
    {
        get
        {
            ThrowHelper.Rank(rank, WorldSize);
            if (!IsMultiProcess) return _ranks[rank];
            if (rank != _ranks[0].Rank)
                throw new ArgumentException($"rank {rank} runs in another process; this process is rank {_ranks[0].Rank} of the {Backend} group (use group.Local).", nameof(rank));
            return _ranks[0];
        }
    }

    /// <summary>The ranks this process runs: every rank of an in-process group, this process's rank of a multi-process one.</summary>
    public IReadOnlyList<RankContext> Ranks => _ranks;

    /// <summary>Rank r's device, for memory planning (ranks sharing a device add up): the device of every rank this process
    /// runs, and null for a rank of another process (which has a device of its own).</summary>
    public IReadOnlyList<Device?> DeviceOfRank => IsMultiProcess
        ? Enumerable.Range(0, WorldSize).Select(r => r == _ranks[0].Rank ? _ranks[0].Device : null).ToArray()
        : _ranks.Select(r => (Device?)r.Device).ToArray();

    /// <summary>True when every rank is on the same device (virtual ranks).</summary>
    public bool IsSingleDevice => (!IsMultiProcess || WorldSize == 1) && _ranks.All(r => ReferenceEquals(r.Device, _ranks[0].Device));

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

    /// <summary>True once a collective failed (timeout, mismatch) or <see cref="Abort()"/> was called.</summary>
    public bool IsAborted => State().Aborted;

    /// <summary>Why the group was aborted, or null.</summary>
    public string? AbortReason => State().Reason;

    private unsafe (bool Aborted, string? Reason) State()
    {
        byte* buf = stackalloc byte[1024];
        ThrowHelper.Check(Native.sw_comm_get_state(Comm, out int aborted, buf, 1024));
        return aborted != 0 ? (true, Marshal.PtrToStringUTF8((nint)buf)) : (false, null);
    }

    /// <summary>Aborts the group: pending and later collectives fail at once. Never blocks.</summary>
    public void Abort() => ThrowHelper.Check(Native.sw_comm_abort(Comm));

    /// <summary>Aborts the group with <paramref name="reason"/>, which every rank's failing collectives then report (in a
    /// multi-process group the other processes are told it too). The first abort's reason wins. Never blocks.</summary>
    public void Abort(string reason)
    {
        ArgumentException.ThrowIfNullOrEmpty(reason);
        ThrowHelper.Check(Native.sw_comm_abort_with_reason(Comm, reason));
    }

    /// <summary>
    /// Whether the ranks of a multi-process group check, before every collective, that they called the same one with
    /// compatible arguments (a descriptor exchange: one round trip per collective; default on). Turned off, all-reduce,
    /// all-gather, reduce-scatter and broadcast move data at once, for production runs whose calls are known to match:
    /// a mismatch that changes the bytes a rank sends still fails (<see cref="ShardwiseException"/> with Mismatch,
    /// naming the sizes), one that keeps them (another reduction, a same-width type) gives wrong results, and a
    /// broadcast with different roots ends at the timeout. The uneven and column variants, barriers, splits and
    /// point-to-point transfers always check. Set the same on every rank; applies to collectives called afterwards.
    /// An in-process group accepts it and always checks (shardwise.h, sw_comm_set_agreement_check).
    /// </summary>
    public bool AgreementCheck
    {
        get
        {
            ThrowHelper.Check(Native.sw_comm_get_agreement_check(Comm, out int on));
            return on != 0;
        }
        set => ThrowHelper.Check(Native.sw_comm_set_agreement_check(Comm, value ? 1 : 0));
    }

    /// <summary>Number of collectives rank <paramref name="rank"/> has completed.</summary>
    public ulong CollectiveCount(int rank)
    {
        _ = this[rank]; // in range, and run by this process
        ThrowHelper.Check(Native.sw_comm_get_collective_count(Comm, rank, out ulong n));
        return n;
    }

    /// <summary>Waits for every rank's stream; throws the first error.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
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
        _ownedStore?.Dispose();
    }
}
