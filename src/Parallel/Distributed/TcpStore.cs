using System.Text;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// The rendezvous store of a multi-process job: a key-value server run by rank 0 on MASTER_ADDR:MASTER_PORT that every
/// process connects to. <see cref="ProcessGroup.CreateTcp(Device, int, int, string, int, TimeSpan?)"/> makes one for
/// itself; use one directly to exchange small values (e.g. an NCCL unique id) or to build several groups on one store.
/// </summary>
public sealed class TcpStore : IDisposable
{
    private TcpStore(StoreHandle handle, TimeSpan timeout)
    {
        Handle = handle;
        Timeout = timeout;
        ThrowHelper.Check(Native.sw_store_get_port(handle, out int port));
        Port = port;
    }

    /// <summary>
    /// Connects to the store at <paramref name="host"/>:<paramref name="port"/>; with <paramref name="isServer"/> this
    /// process serves it first (port 0: any free port, see <see cref="Port"/>). <paramref name="timeout"/> bounds the
    /// connection and every <see cref="Get"/>.
    /// </summary>
    public static TcpStore Connect(string host, int port, bool isServer, TimeSpan? timeout = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        if (port < 0 || port > 65535 || (port == 0 && !isServer))
            throw new ArgumentOutOfRangeException(nameof(port), port, "port must be in [1, 65535] (0, any free port, only for the server).");
        var t = timeout ?? ProcessGroup.DefaultTimeout;
        if (t <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), t, "timeout must be positive.");
        ThrowHelper.Check(Native.sw_store_create(host, port, isServer ? 1 : 0, (long)Math.Ceiling(t.TotalMilliseconds), out var h));
        return new TcpStore(h, t);
    }

    /// <summary>The native handle.</summary>
    public StoreHandle Handle { get; }

    /// <summary>The store's port (the chosen one when the server was asked for port 0).</summary>
    public int Port { get; }

    /// <summary>How long <see cref="Get"/> waits for a key.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Sets <paramref name="key"/> to <paramref name="value"/> (at most 64 MiB) for every process.</summary>
    public unsafe void Set(string key, ReadOnlySpan<byte> value)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        fixed (byte* p = value)
            ThrowHelper.Check(Native.sw_store_set(Handle, key, p, (ulong)value.Length));
    }

    /// <summary>Sets <paramref name="key"/> to a UTF-8 string.</summary>
    public void Set(string key, string value) => Set(key, Encoding.UTF8.GetBytes(value ?? throw new ArgumentNullException(nameof(value))));

    /// <summary>Waits until <paramref name="key"/> is set (throws <see cref="CollectiveTimeoutException"/> after
    /// <see cref="Timeout"/>) and returns its value.</summary>
    public unsafe byte[] Get(string key)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        var buf = new byte[256];
        while (true)
        {
            SwStatus st;
            ulong n;
            fixed (byte* p = buf) st = Native.sw_store_get(Handle, key, p, (ulong)buf.Length, out n);
            if (st == SwStatus.InvalidArgument && n > (ulong)buf.Length)
            {
                buf = new byte[checked((int)n)]; // too small: fetch again with room (the value is set, so this is quick)
                continue;
            }
            ThrowHelper.Check(st, nameof(Native.sw_store_get));
            return buf.AsSpan(0, (int)n).ToArray();
        }
    }

    /// <summary>Waits for <paramref name="key"/> and decodes it as UTF-8.</summary>
    public string GetString(string key) => Encoding.UTF8.GetString(Get(key));

    /// <summary>Disconnects (the server stops serving when its process disposes it).</summary>
    public void Dispose() => Handle.Dispose();
}
