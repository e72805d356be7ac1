namespace Shardwise.Parallel;

/// <summary>
/// The stream plumbing of a layer's overlapped forward (<see cref="ParallelLinear.OverlapChunks"/>): after a chunk's GEMM is queued on the rank's stream,
/// <see cref="Handoff"/> makes the rank's communication stream wait for it (an event), so the chunk's collective queued
/// there next starts once those rows are done while the rank's stream goes on with the next chunk;
/// <see cref="Join"/> makes the rank's stream wait for the last collective. Events are kept from call to call (a
/// wait takes the record made before it, so an event may be recorded again at once).
/// </summary>
internal sealed class ChunkOverlap : IDisposable
{
    private readonly RankContext _ctx;
    private Event[] _events = [];
    private Event? _done;

    public ChunkOverlap(RankContext ctx) => _ctx = ctx;

    /// <summary>How many chunks a forward of <paramref name="rows"/> rows takes for <paramref name="requested"/>
    /// (at most one per row; 1: no overlap).</summary>
    public static int Chunks(int requested, long rows) => (int)Math.Max(1, Math.Min(requested, rows));

    /// <summary>Rows [start, start + count) of chunk <paramref name="c"/> of <paramref name="chunks"/> over
    /// <paramref name="rows"/> rows (an even split, the remainder spread).</summary>
    public static (long Start, long Count) Range(long rows, int chunks, int c)
    {
        long start = rows * c / chunks;
        return (start, rows * (c + 1) / chunks - start);
    }

    /// <summary>The rank's communication stream.</summary>
    public DeviceStream Comm => _ctx.CommunicationStream;

    /// <summary>The communication stream waits for what the rank's stream has queued so far (chunk
    /// <paramref name="c"/>'s GEMM).</summary>
    public void Handoff(int c)
    {
        if (_events.Length <= c)
        {
            var more = new Event[Math.Max(c + 1, 2 * _events.Length)];
            Array.Copy(_events, more, _events.Length);
            for (int i = _events.Length; i < more.Length; i++) more[i] = new Event(_ctx.Device);
            _events = more;
        }
        _events[c].Record(_ctx.Stream);
        Comm.Wait(_events[c]);
    }

    /// <summary>The rank's stream waits for everything queued on the communication stream.</summary>
    public void Join()
    {
        _done ??= new Event(_ctx.Device);
        _done.Record(Comm);
        _ctx.Stream.Wait(_done);
    }

    public void Dispose()
    {
        foreach (var e in _events) e.Dispose();
        _done?.Dispose();
        _events = [];
    }
}
