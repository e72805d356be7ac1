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
/// </summary>
public sealed class ProcessGroup : IDisposable
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
        IsMultiProcess = true;
        _ranks = [new RankContext(this, rank, device)];
    }

    private static string BackendOf(CommHandle comm)
    {
        ThrowHelper.Check(Native.sw_comm_get_backend(comm, out nint name));
        return Marshal.PtrToStringUTF8(name) ?? "?";
    }

    // Checks a job's arguments and connects to its store (rank 0 serves it).
    private static (TimeSpan Timeout, TcpStore Store) JoinStore(Device device, int rank, int worldSize, string masterAddr, int masterPort,
        TimeSpan? timeout)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrEmpty(masterAddr);
        CheckJob(rank, worldSize);
        if (masterPort < 1 || masterPort > 65535)
            throw new ArgumentOutOfRangeException(nameof(masterPort), masterPort, "masterPort must be in [1, 65535].");
        var t = CheckTimeout(timeout);
        return (t, TcpStore.Connect(masterAddr, masterPort, isServer: rank == 0, t));
    }

    // A multi-process job's rank and size.
    private static void CheckJob(int rank, int worldSize)
    {
        if (worldSize < 1 || worldSize > 4096)
            throw new ArgumentOutOfRangeException(nameof(worldSize), worldSize, "worldSize must be in [1, 4096].");
        ThrowHelper.Rank(rank, worldSize);
    }

    private static long TimeoutMs(TimeSpan timeout) => (long)Math.Ceiling(timeout.TotalMilliseconds);

    private static TimeSpan CheckTimeout(TimeSpan? timeout)
    {
        var t = timeout ?? DefaultTimeout;
        if (t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), t, "timeout must be positive.");
        return t;
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
        return new ProcessGroup(devices.ToArray(), CheckTimeout(timeout));
    }

    /// <summary>
    /// A multi-process group over TCP: this process is rank <paramref name="rank"/> of <paramref name="worldSize"/>
    /// processes on CPU devices. Rank 0 serves the rendezvous store on <paramref name="masterAddr"/>:<paramref name="masterPort"/>
    /// (torchrun's MASTER_ADDR/MASTER_PORT); the ranks then connect to each other directly. Blocks until every rank has
    /// connected, or throws <see cref="CollectiveTimeoutException"/> after <paramref name="timeout"/>.
    /// </summary>
    public static ProcessGroup CreateTcp(Device device, int rank, int worldSize, string masterAddr, int masterPort, TimeSpan? timeout = null)
    {
        var (t, store) = JoinStore(device, rank, worldSize, masterAddr, masterPort, timeout);
        try
        {
            return CreateTcp(device, store, "shardwise", rank, worldSize, t, ownsStore: true);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A multi-process group over TCP whose ranks meet through an existing <paramref name="store"/> under
    /// <paramref name="prefix"/> (distinct prefixes make distinct groups). The store stays the caller's.
    /// </summary>
    public static ProcessGroup CreateTcp(Device device, TcpStore store, string prefix, int rank, int worldSize, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(store);
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        CheckJob(rank, worldSize);
        return CreateTcp(device, store, prefix, rank, worldSize, CheckTimeout(timeout), ownsStore: false);
    }

    private static ProcessGroup CreateTcp(Device device, TcpStore store, string prefix, int rank, int worldSize, TimeSpan t, bool ownsStore)
    {
        ThrowHelper.Check(Native.sw_comm_create_tcp(device.Handle, store.Handle, prefix, rank, worldSize, TimeoutMs(t), out var comm));
        comm.SetParents(store.Handle);
        return new ProcessGroup(comm, device, t, ownsStore ? store : null);
    }

    /// <summary>
    /// A multi-process group over MPI_COMM_WORLD of the processes that <c>mpirun</c> started (this process's rank is
    /// MPI's), on CPU devices. Initializes MPI if the application has not (Shardwise then finalizes it at exit, unless
    /// a group failed: MPI_Finalize waits for every process). Creation is bounded by <paramref name="timeout"/> too:
    /// a rank that comes late makes the others throw <see cref="CollectiveTimeoutException"/> (MPI cannot say which).
    /// Throws <see cref="ShardwiseNotFoundException"/> when this build has no MPI plugin (see <see cref="MpiInfo"/>).
    /// </summary>
    public static ProcessGroup CreateMpi(Device device, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        var t = CheckTimeout(timeout);
        ThrowHelper.Check(Native.sw_comm_create_mpi(device.Handle, TimeoutMs(t), out var comm));
        return new ProcessGroup(comm, device, t, null);
    }

    /// <summary>
    /// An NCCL group in this process: rank r on <paramref name="devices"/>[r], distinct CUDA devices (NCCL allows one rank
    /// per GPU; for virtual ranks on one GPU use <see cref="CreateLocal(Device, int, TimeSpan?)"/>). Collectives are ordered
    /// into the ranks' streams; the ranks agree on each call before NCCL runs, and a watchdog aborts NCCL on an
    /// asynchronous error, a timeout or <see cref="Abort()"/>. Throws <see cref="ShardwiseNotFoundException"/> when NCCL
    /// cannot be loaded (see <see cref="NcclInfo"/>).
    /// </summary>
    public static ProcessGroup CreateNccl(IReadOnlyList<Device> devices, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(devices);
        if (devices.Count < 1) throw new ArgumentException("devices is empty; expected one CUDA device per rank.", nameof(devices));
        return new ProcessGroup(devices.ToArray(), CheckTimeout(timeout), nccl: true);
    }

    /// <summary>
    /// An NCCL group with one rank per process (one GPU each): rank 0 makes NCCL's unique id and serves it, with the
    /// rendezvous, from the store on <paramref name="masterAddr"/>:<paramref name="masterPort"/>; the ranks also connect
    /// over TCP for the host side (agreement on each call, abort notices).
    /// </summary>
    public static ProcessGroup CreateNccl(Device device, int rank, int worldSize, string masterAddr, int masterPort, TimeSpan? timeout = null)
    {
        var (t, store) = JoinStore(device, rank, worldSize, masterAddr, masterPort, timeout);
        try
        {
            ThrowHelper.Check(Native.sw_comm_create_nccl(device.Handle, store.Handle, "shardwise", rank, worldSize, TimeoutMs(t), out var comm));
            comm.SetParents(store.Handle);
            return new ProcessGroup(comm, device, t, store);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>A new NCCL unique id (128 bytes), to pass to every rank's <see cref="CreateNccl(Device, ReadOnlySpan{byte}, int, int, TimeSpan?)"/>.</summary>
    public static byte[] NcclUniqueId()
    {
        var id = new byte[128];
        unsafe
        {
            fixed (byte* p = id) ThrowHelper.Check(Native.sw_nccl_get_unique_id(p));
        }
        return id;
    }

    /// <summary>
    /// An NCCL group with one rank per process and a unique id the caller passed to every rank (from
    /// <see cref="NcclUniqueId"/> on one of them). The ranks have no other channel, so the agreement on each call travels
    /// through NCCL: mismatches are still caught, but a timeout cannot name the late rank and an abort reaches the
    /// peers only at their own timeout. Prefer the store-based <see cref="CreateNccl(Device, int, int, string, int, TimeSpan?)"/>.
    /// </summary>
    public static ProcessGroup CreateNccl(Device device, ReadOnlySpan<byte> uniqueId, int rank, int worldSize, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (uniqueId.Length != 128)
            throw new ArgumentException($"uniqueId has {uniqueId.Length} bytes; expected the 128 of an NCCL unique id.", nameof(uniqueId));
        CheckJob(rank, worldSize);
        var t = CheckTimeout(timeout);
        CommHandle comm;
        unsafe
        {
            fixed (byte* p = uniqueId)
                ThrowHelper.Check(Native.sw_comm_create_nccl_id(device.Handle, p, rank, worldSize, TimeoutMs(t), out comm));
        }
        return new ProcessGroup(comm, device, t, null);
    }

    /// <summary>An NCCL group of the processes <c>mpirun</c> started (ranks are MPI's), with MPI as the bootstrap: rank 0's
    /// unique id and the host side (agreement, abort notices) go over MPI.</summary>
    public static ProcessGroup CreateNcclMpi(Device device, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        var t = CheckTimeout(timeout);
        ThrowHelper.Check(Native.sw_comm_create_nccl_mpi(device.Handle, TimeoutMs(t), out var comm));
        return new ProcessGroup(comm, device, t, null);
    }

    /// <summary>Whether the MPI plugin loads, and MPI's library version (or why it does not load).</summary>
    public static (bool Available, string Description) MpiInfo()
    {
        unsafe
        {
            byte* buf = stackalloc byte[2048];
            ThrowHelper.Check(Native.sw_mpi_get_info(out int available, buf, 2048));
            return (available != 0, Marshal.PtrToStringUTF8((nint)buf) ?? "");
        }
    }

    /// <summary>
    /// Whether NCCL (libnccl.so.2, loaded at run time; SHARDWISE_NCCL_PATH overrides where) loads with every symbol
    /// Shardwise needs, its version code (ncclGetVersion) and a description: "NCCL x.y.z (path)", or what was searched
    /// and why it failed.
    /// </summary>
    public static (bool Available, int VersionCode, string Description) NcclInfo()
    {
        unsafe
        {
            byte* buf = stackalloc byte[4096];
            ThrowHelper.Check(Native.sw_nccl_get_info(out int available, out int version, buf, 4096));
            return (available != 0, version, Marshal.PtrToStringUTF8((nint)buf) ?? "");
        }
    }

    /// <summary>
    /// The group the launcher describes through the environment: torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
    /// MASTER_PORT; set by <c>shardwise launch</c>) give a TCP group on a CPU device and an NCCL group on a CUDA device
    /// (LOCAL_RANK usually picks the GPU: <c>Device.Open(Backend.Cuda, localRank)</c>); without them, a process started by Open MPI's
    /// <c>mpirun</c> (OMPI_COMM_WORLD_RANK) gets an MPI group (NCCL with MPI as the bootstrap on a CUDA device). Throws <see cref="InvalidOperationException"/> naming
    /// the missing or malformed variable otherwise.
    /// </summary>
    public static ProcessGroup FromEnvironment(Device device, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        string? rank = Environment.GetEnvironmentVariable("RANK");
        if (rank is null && Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_RANK") is not null)
            return device.Backend == Shardwise.Parallel.Backend.Cuda ? CreateNcclMpi(device, timeout) : CreateMpi(device, timeout);
        int Int(string name)
        {
            string? v = Environment.GetEnvironmentVariable(name);
            if (v is null)
                throw new InvalidOperationException(
                    $"environment variable {name} is not set; start the processes with `shardwise launch -n N -- ...`, torchrun or mpirun " +
                    "(or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT).");
            if (!int.TryParse(v, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int x))
                throw new InvalidOperationException($"environment variable {name} = '{v}' is not an integer.");
            return x;
        }
        int r = Int("RANK"), world = Int("WORLD_SIZE"), port = Int("MASTER_PORT");
        // CUDA devices talk NCCL; CPU devices TCP.
        string addr = Environment.GetEnvironmentVariable("MASTER_ADDR") is { Length: > 0 } a ? a
            : throw new InvalidOperationException("environment variable MASTER_ADDR is not set (the address of rank 0's store).");
        if (world < 1 || r < 0 || r >= world)
            throw new InvalidOperationException($"RANK = {r} and WORLD_SIZE = {world}: expected 0 <= RANK < WORLD_SIZE.");
        return device.Backend == Shardwise.Parallel.Backend.Cuda
            ? CreateNccl(device, r, world, addr, port, timeout)
            : CreateTcp(device, r, world, addr, port, timeout);
    }

    /// <summary>Number of ranks (in every process of a multi-process group).</summary>
    public int WorldSize { get; }

    /// <summary>The communicator's kind: "local" (in-process), "tcp", "mpi" or "nccl".</summary>
    public string Backend { get; }

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

    /// <summary>Rank r's device, for memory planning (ranks sharing a device add up; ranks of other processes have their own).</summary>
    public IReadOnlyList<object> DeviceOfRank => IsMultiProcess
        ? Enumerable.Range(0, WorldSize).Select(r => r == _ranks[0].Rank ? (object)_ranks[0].Device : new object()).ToArray()
        : _ranks.Select(r => (object)r.Device).ToArray();

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

    /// <summary>Number of collectives rank <paramref name="rank"/> has completed.</summary>
    public ulong CollectiveCount(int rank)
    {
        _ = this[rank]; // in range, and run by this process
        ThrowHelper.Check(Native.sw_comm_get_collective_count(Comm, rank, out ulong n));
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
        _ownedStore?.Dispose();
    }
}
