using System.Runtime.InteropServices;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

// ProcessGroup's factories: the in-process groups (CreateLocal, CreateNccl over a list of GPUs), the multi-process ones
// (CreateTcp, CreateMpi, CreateNccl, CreateNcclMpi, FromEnvironment), what the plugins report (MpiInfo, NcclInfo) and the
// argument checks they share. The group itself is in ProcessGroup.cs.
public sealed partial class ProcessGroup
{
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
}
