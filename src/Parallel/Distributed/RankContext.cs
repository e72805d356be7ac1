using System.Runtime.CompilerServices;
using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// One rank of a <see cref="ProcessGroup"/>: its index, device, stream and collectives. Collectives are queued on
/// the rank's <see cref="Stream"/> and return at once; errors (timeouts, mismatches) surface at
/// <see cref="Synchronize"/>. Every rank must call the same collectives in the same order.
/// </summary>
public sealed class RankContext
{
    private readonly DeviceStream _stream;

    internal RankContext(ProcessGroup group, int rank, Device device)
    {
        Group = group;
        Rank = rank;
        Device = device;
        _stream = device.CreateStream();
    }

    /// <summary>The group.</summary>
    public ProcessGroup Group { get; }
    /// <summary>This rank's index.</summary>
    public int Rank { get; }
    /// <summary>Number of ranks in the group.</summary>
    public int WorldSize => Group.WorldSize;
    /// <summary>This rank's device.</summary>
    public Device Device { get; }
    /// <summary>This rank's stream: its GEMMs and collectives run here, in order.</summary>
    public DeviceStream Stream => _stream;

    internal void DisposeStream() => _stream.Dispose();

    /// <summary>Waits for this rank's queued work and throws its first error.</summary>
    public void Synchronize() => _stream.Synchronize();

    // The argument checks name the argument the caller passed (send, recv, buffer).
    private void Own<T>(DeviceBuffer<T> buffer, [CallerArgumentExpression(nameof(buffer))] string name = "") where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(buffer, name);
        ThrowHelper.SameDevice(Device, buffer, name);
    }

    private void Own<T>(MatrixView<T> view, [CallerArgumentExpression(nameof(view))] string name = "") where T : unmanaged => Own(view.Buffer, name);

    private static void Fits<T>(DeviceBuffer<T> buffer, long offset, long count, [CallerArgumentExpression(nameof(buffer))] string name = "")
        where T : unmanaged
    {
        if (offset < 0 || count < 0 || offset + count > buffer.Length)
            throw new ArgumentException($"{name} needs elements [{offset}, {offset + count}); it has {buffer.Length}.", name);
    }

    // The argument prologue of the even collectives: both buffers on this rank's device, send holds
    // count·sendPerCount elements from sendOffset and recv count·recvPerCount from recvOffset. A count < 0 means as
    // many as send holds from sendOffset. Returns the count.
    private long Prologue<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long count, long sendOffset, long recvOffset,
        int sendPerCount, int recvPerCount) where T : unmanaged
    {
        Own(send);
        Own(recv);
        if (count < 0) count = (send.Length - sendOffset) / sendPerCount;
        Fits(send, sendOffset, count * sendPerCount);
        Fits(recv, recvOffset, count * recvPerCount);
        return count;
    }

    /// <summary>recv[q·count ..] = rank q's send[0..count) for every q. <paramref name="count"/> &lt; 0: all of send.</summary>
    public void AllGather<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long count = -1, long sendOffset = 0, long recvOffset = 0)
        where T : unmanaged
    {
        count = Prologue(send, recv, count, sendOffset, recvOffset, sendPerCount: 1, recvPerCount: WorldSize);
        ThrowHelper.Check(Native.sw_all_gather(Group.Comm, Rank, send.Handle, (ulong)sendOffset, recv.Handle, (ulong)recvOffset,
            (ulong)count, DeviceBuffer<T>.Dtype, _stream.Handle));
    }

    /// <summary>Uneven all-gather: recv receives every rank's <paramref name="count"/> elements concatenated in rank order.</summary>
    public void AllGatherV<T>(DeviceBuffer<T> send, long count, DeviceBuffer<T> recv, long sendOffset = 0, long recvOffset = 0)
        where T : unmanaged
    {
        Own(send);
        Own(recv);
        Fits(send, sendOffset, count);
        Fits(recv, recvOffset, 0);
        ThrowHelper.Check(Native.sw_all_gather_v(Group.Comm, Rank, send.Handle, (ulong)sendOffset, (ulong)count, recv.Handle,
            (ulong)recvOffset, (ulong)(recv.Length - recvOffset), DeviceBuffer<T>.Dtype, _stream.Handle));
    }

    /// <summary>
    /// Column all-gather: this rank's rows × cols block (<paramref name="send"/>) lands in <paramref name="recv"/>
    /// (rows × Σcols) at column Σ_{q&lt;rank} cols_q. Blocks may differ in width (uneven shards, even 0). Any matrix
    /// element type (float, Half, BFloat16): the data moves as it is.
    /// </summary>
    public void AllGatherColumns<T>(MatrixView<T> send, MatrixView<T> recv) where T : unmanaged
    {
        ThrowHelper.NotEmpty(recv);
        Own(recv);
        long rows = recv.Rows, cols = send.IsEmpty ? 0 : send.Cols;
        if (!send.IsEmpty)
        {
            Own(send);
            if (send.Rows != recv.Rows)
                throw new ArgumentException($"send has {send.Rows} rows but recv has {recv.Rows}; expected equal row counts.", nameof(send));
        }
        if (cols > recv.Cols)
            throw new ArgumentException($"send has {cols} columns, more than the {recv.Cols} of recv.", nameof(send));
        var sendBuf = send.IsEmpty || cols == 0 ? recv.Buffer : send.Buffer; // a 0-column block reads nothing
        ThrowHelper.Check(Native.sw_all_gather_columns(Group.Comm, Rank, sendBuf.Handle, (ulong)(send.IsEmpty ? 0 : send.Offset), rows, cols,
            send.IsEmpty ? Math.Max(cols, 1) : send.Ld, recv.Buffer.Handle, (ulong)recv.Offset, recv.Ld, DeviceBuffer<T>.Dtype, _stream.Handle));
    }

    /// <summary>recv[i] = Σ over ranks of send[i] (summed in rank order, identical on every rank). send may be recv.</summary>
    public void AllReduce<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long count = -1, long sendOffset = 0, long recvOffset = 0)
        where T : unmanaged
    {
        count = Prologue(send, recv, count, sendOffset, recvOffset, sendPerCount: 1, recvPerCount: 1);
        ThrowHelper.Check(Native.sw_all_reduce(Group.Comm, Rank, send.Handle, (ulong)sendOffset, recv.Handle, (ulong)recvOffset,
            (ulong)count, DeviceBuffer<T>.Dtype, SwReduceOp.Sum, _stream.Handle));
    }

    /// <summary>In-place all-reduce (sum).</summary>
    public void AllReduce<T>(DeviceBuffer<T> buffer) where T : unmanaged => AllReduce(buffer, buffer);

    /// <summary>recv[i] = Σ over ranks q of send_q[rank·recvCount + i].</summary>
    public void ReduceScatter<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long recvCount = -1, long sendOffset = 0, long recvOffset = 0)
        where T : unmanaged
    {
        recvCount = Prologue(send, recv, recvCount, sendOffset, recvOffset, sendPerCount: WorldSize, recvPerCount: 1);
        ThrowHelper.Check(Native.sw_reduce_scatter(Group.Comm, Rank, send.Handle, (ulong)sendOffset, recv.Handle, (ulong)recvOffset,
            (ulong)recvCount, DeviceBuffer<T>.Dtype, SwReduceOp.Sum, _stream.Handle));
    }

    /// <summary>
    /// Uneven reduce-scatter: this rank receives <paramref name="recvCount"/> elements; the ranks' counts, in rank
    /// order, tile the start of every rank's <paramref name="send"/>, and recv[i] = Σ over ranks of send[displ + i]
    /// with displ = the counts of the ranks before this one.
    /// </summary>
    public void ReduceScatterV<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long recvCount, long sendOffset = 0, long recvOffset = 0)
        where T : unmanaged
    {
        Own(send);
        Own(recv);
        Fits(send, sendOffset, 0);
        if (recvCount > 0) Fits(recv, recvOffset, recvCount);
        else ThrowHelper.NonNegative(recvCount);
        ThrowHelper.Check(Native.sw_reduce_scatter_v(Group.Comm, Rank, send.Handle, (ulong)sendOffset, (ulong)(send.Length - sendOffset),
            recv.Handle, (ulong)recvOffset, (ulong)recvCount, DeviceBuffer<T>.Dtype, SwReduceOp.Sum, _stream.Handle));
    }

    /// <summary>Copies <paramref name="root"/>'s buffer into every rank's.</summary>
    public void Broadcast<T>(DeviceBuffer<T> buffer, int root, long count = -1, long offset = 0) where T : unmanaged
    {
        Own(buffer);
        ThrowHelper.Rank(root, WorldSize);
        if (count < 0) count = buffer.Length - offset;
        Fits(buffer, offset, count);
        ThrowHelper.Check(Native.sw_broadcast(Group.Comm, Rank, buffer.Handle, (ulong)offset, (ulong)count, DeviceBuffer<T>.Dtype,
            root, _stream.Handle));
    }

    /// <summary>Queues a barrier: later work on this rank's stream starts after every rank reached it.</summary>
    public void Barrier() => ThrowHelper.Check(Native.sw_barrier(Group.Comm, Rank, _stream.Handle));

    /// <inheritdoc />
    public override string ToString() => $"rank {Rank} of {WorldSize} on {Device}";
}
