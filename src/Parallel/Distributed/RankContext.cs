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
    private readonly bool _ownsStream;

    internal RankContext(ProcessGroup group, int rank, Device device)
    {
        Group = group;
        Rank = rank;
        Device = device;
        _stream = device.CreateStream();
        _ownsStream = true;
    }

    // A rank of a sub-group (ProcessGroup.Split): it runs on its parent rank's stream, so that its collectives and
    // transfers stay in order with the parent's (and the other sub-groups') work of the same rank.
    internal RankContext(ProcessGroup group, int rank, RankContext parent)
    {
        Group = group;
        Rank = rank;
        Device = parent.Device;
        _stream = parent._stream;
        Parent = parent;
    }

    /// <summary>This rank's context in the group this group was split from (<see cref="ProcessGroup.Split"/>), or null.</summary>
    public RankContext? Parent { get; }

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

    internal void DisposeStream()
    {
        _commStream?.Dispose();
        if (_ownsStream) _stream.Dispose();
    }

    private DeviceStream? _commStream;

    /// <summary>This rank's second stream, for collectives that overlap the work of <see cref="Stream"/> (the layers'
    /// <c>OverlapChunks</c>); created on first use, disposed with the group. Collectives on both streams still run one
    /// at a time, in the order they were called.</summary>
    internal DeviceStream CommunicationStream => _commStream ??= Device.CreateStream();

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
    public void AllGatherColumns<T>(MatrixView<T> send, MatrixView<T> recv) where T : unmanaged => AllGatherColumnsOn(_stream, send, recv);

    // The column all-gather queued on `stream` (the rank's, or its communication stream).
    internal void AllGatherColumnsOn<T>(DeviceStream stream, MatrixView<T> send, MatrixView<T> recv) where T : unmanaged
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
            send.IsEmpty ? Math.Max(cols, 1) : send.Ld, recv.Buffer.Handle, (ulong)recv.Offset, recv.Ld, DeviceBuffer<T>.Dtype, stream.Handle));
    }

    /// <summary>recv[i] = Σ over ranks of send[i] (summed in rank order, or in the tree's order for
    /// <see cref="SwReduceOp.SumTree"/>; identical on every rank). send may be recv.</summary>
    public void AllReduce<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long count = -1, long sendOffset = 0, long recvOffset = 0,
        SwReduceOp op = SwReduceOp.Sum) where T : unmanaged => AllReduceOn(_stream, send, recv, count, sendOffset, recvOffset, op);

    // The all-reduce queued on `stream` (the rank's, or its communication stream).
    internal void AllReduceOn<T>(DeviceStream stream, DeviceBuffer<T> send, DeviceBuffer<T> recv, long count = -1, long sendOffset = 0,
        long recvOffset = 0, SwReduceOp op = SwReduceOp.Sum) where T : unmanaged
    {
        count = Prologue(send, recv, count, sendOffset, recvOffset, sendPerCount: 1, recvPerCount: 1);
        ThrowHelper.Check(Native.sw_all_reduce(Group.Comm, Rank, send.Handle, (ulong)sendOffset, recv.Handle, (ulong)recvOffset,
            (ulong)count, DeviceBuffer<T>.Dtype, op, stream.Handle));
    }

    /// <summary>In-place all-reduce (sum).</summary>
    public void AllReduce<T>(DeviceBuffer<T> buffer) where T : unmanaged => AllReduce(buffer, buffer);

    /// <summary>recv[i] = Σ over ranks q of send_q[rank·recvCount + i] (rank order, or the tree's for
    /// <see cref="SwReduceOp.SumTree"/>).</summary>
    public void ReduceScatter<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long recvCount = -1, long sendOffset = 0, long recvOffset = 0,
        SwReduceOp op = SwReduceOp.Sum) where T : unmanaged
    {
        recvCount = Prologue(send, recv, recvCount, sendOffset, recvOffset, sendPerCount: WorldSize, recvPerCount: 1);
        ThrowHelper.Check(Native.sw_reduce_scatter(Group.Comm, Rank, send.Handle, (ulong)sendOffset, recv.Handle, (ulong)recvOffset,
            (ulong)recvCount, DeviceBuffer<T>.Dtype, op, _stream.Handle));
    }

    /// <summary>
    /// Uneven reduce-scatter: this rank receives <paramref name="recvCount"/> elements; the ranks' counts, in rank
    /// order, tile the start of every rank's <paramref name="send"/>, and recv[i] = Σ over ranks of send[displ + i]
    /// with displ = the counts of the ranks before this one.
    /// </summary>
    public void ReduceScatterV<T>(DeviceBuffer<T> send, DeviceBuffer<T> recv, long recvCount, long sendOffset = 0, long recvOffset = 0,
        SwReduceOp op = SwReduceOp.Sum) where T : unmanaged
    {
        Own(send);
        Own(recv);
        Fits(send, sendOffset, 0);
        if (recvCount > 0) Fits(recv, recvOffset, recvCount);
        else ThrowHelper.NonNegative(recvCount);
        ThrowHelper.Check(Native.sw_reduce_scatter_v(Group.Comm, Rank, send.Handle, (ulong)sendOffset, (ulong)(send.Length - sendOffset),
            recv.Handle, (ulong)recvOffset, (ulong)recvCount, DeviceBuffer<T>.Dtype, op, _stream.Handle));
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

    // ---------------------------------------------------------------- point-to-point
    // The n-th send from rank a to rank b pairs with the n-th receive at b from a; both must agree on count and element
    // type. A transfer is a rendezvous (a send completes once the receive has the data): a rank that sends to and
    // receives from peers in one step uses SendRecv, whose halves progress together.

    /// <summary>Sends <paramref name="count"/> elements of <paramref name="buffer"/> from <paramref name="offset"/> to
    /// rank <paramref name="peer"/> (count &lt; 0: the rest of the buffer). Queued on <see cref="Stream"/>.</summary>
    public void Send<T>(DeviceBuffer<T> buffer, int peer, long count = -1, long offset = 0) where T : unmanaged
    {
        Own(buffer);
        Peer(peer);
        if (count < 0) count = buffer.Length - offset;
        Fits(buffer, offset, count);
        ThrowHelper.Check(Native.sw_send(Group.Comm, Rank, peer, buffer.Handle, (ulong)offset, (ulong)count, DeviceBuffer<T>.Dtype,
            _stream.Handle));
    }

    /// <summary>Receives <paramref name="count"/> elements from rank <paramref name="peer"/> into <paramref name="buffer"/>
    /// from <paramref name="offset"/> (count &lt; 0: the rest of the buffer). Queued on <see cref="Stream"/>.</summary>
    public void Recv<T>(DeviceBuffer<T> buffer, int peer, long count = -1, long offset = 0) where T : unmanaged
    {
        Own(buffer);
        Peer(peer);
        if (count < 0) count = buffer.Length - offset;
        Fits(buffer, offset, count);
        ThrowHelper.Check(Native.sw_recv(Group.Comm, Rank, peer, buffer.Handle, (ulong)offset, (ulong)count, DeviceBuffer<T>.Dtype,
            _stream.Handle));
    }

    /// <summary>
    /// One send (<paramref name="sendCount"/> elements of <paramref name="send"/> to <paramref name="sendPeer"/>) and one
    /// receive (<paramref name="recvCount"/> elements from <paramref name="recvPeer"/> into <paramref name="recv"/>),
    /// progressing together: a ring step, or a pipeline stage sending forward while receiving from its neighbour. Either
    /// half may be left out with a null buffer (its peer is then ignored). Counts &lt; 0: the rest of the buffer.
    /// </summary>
    public void SendRecv<T>(DeviceBuffer<T>? send, int sendPeer, DeviceBuffer<T>? recv, int recvPeer, long sendCount = -1,
        long recvCount = -1, long sendOffset = 0, long recvOffset = 0) where T : unmanaged
    {
        if (send is null && recv is null)
            throw new ArgumentException("send and recv are both null; expected at least one of them.", nameof(send));
        if (send is not null)
        {
            Own(send);
            ThrowHelper.Rank(sendPeer, WorldSize); // peer == Rank only as a copy with both halves to itself (checked natively)
            if (sendCount < 0) sendCount = send.Length - sendOffset;
            Fits(send, sendOffset, sendCount);
        }
        if (recv is not null)
        {
            Own(recv);
            ThrowHelper.Rank(recvPeer, WorldSize);
            if (recvCount < 0) recvCount = recv.Length - recvOffset;
            Fits(recv, recvOffset, recvCount);
        }
        // A left-out half passes the other half's buffer with peer -1 (the native call ignores it).
        var sendHandle = (send ?? recv)!.Handle;
        var recvHandle = (recv ?? send)!.Handle;
        ThrowHelper.Check(Native.sw_sendrecv(Group.Comm, Rank, send is null ? -1 : sendPeer, sendHandle,
            send is null ? 0 : (ulong)sendOffset, send is null ? 0 : (ulong)sendCount, recv is null ? -1 : recvPeer, recvHandle,
            recv is null ? 0 : (ulong)recvOffset, recv is null ? 0 : (ulong)recvCount, DeviceBuffer<T>.Dtype, _stream.Handle));
    }

    private void Peer(int peer, [CallerArgumentExpression(nameof(peer))] string name = "")
    {
        ThrowHelper.Rank(peer, WorldSize, name);
        if (peer == Rank)
            throw new ArgumentException($"{name} = {peer} is this rank; expected another rank (a copy to itself is not a transfer).", name);
    }

    /// <inheritdoc />
    public override string ToString() => $"rank {Rank} of {WorldSize} on {Device}";
}
