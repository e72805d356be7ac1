using Shardwise.Bindings;

namespace Shardwise.Parallel;

// ProcessGroup.Split: sub-groups (sw_comm_split_local for an in-process group, sw_comm_split for a multi-process one).
public sealed partial class ProcessGroup
{
    /// <summary>The color that leaves a rank out of every sub-group of a <see cref="Split"/>.</summary>
    public const int NoColor = -1;

    // A sub-group: `comm` split from `parent`; members[i] is sub rank i's context in the parent (this process's ranks
    // only). Its ranks run on their parent ranks' streams.
    private ProcessGroup(CommHandle comm, ProcessGroup parent, RankContext[] members, int worldSize)
    {
        _comm = comm;
        Parent = parent;
        Timeout = parent.Timeout;
        IsMultiProcess = parent.IsMultiProcess;
        WorldSize = worldSize;
        // The communicator keeps the devices and the parent ranks' streams alive (the streams are shared, not owned).
        _comm.SetParents(members.Select(m => (System.Runtime.InteropServices.SafeHandle)m.Device.Handle).Concat(members.Select(m => (System.Runtime.InteropServices.SafeHandle)m.Stream.Handle))
            .Distinct().ToArray());
        Backend = BackendOf(_comm);
        Transport = TransportOf(_comm);
        _ranks = new RankContext[members.Length];
        for (int i = 0; i < members.Length; i++)
        {
            int rank = i;
            if (IsMultiProcess) ThrowHelper.Check(Native.sw_comm_get_rank(_comm, out rank));
            _ranks[i] = new RankContext(this, rank, members[i]);
        }
    }

    /// <summary>The group this one was split from, or null.</summary>
    public ProcessGroup? Parent { get; }

    /// <summary>Rank <paramref name="rank"/> of this group is rank <c>ParentRank(rank)</c> of <see cref="Parent"/> (for a
    /// group that was not split: <paramref name="rank"/>). Multi-process: this process's rank only.</summary>
    public int ParentRank(int rank)
    {
        _ = this[rank];
        ThrowHelper.Check(Native.sw_comm_get_parent_rank(Comm, rank, out int parentRank));
        return parentRank;
    }

    /// <summary>
    /// Splits the group (MPI_Comm_split semantics): the ranks with the same <paramref name="colorOf"/>(rank) form a
    /// sub-group, numbered by (<paramref name="keyOf"/>(rank), rank) ascending; <see cref="NoColor"/> leaves a rank out.
    /// In-process groups evaluate the functions for every rank and split in one call; in a multi-process group they are
    /// evaluated for this process's rank and the split is a collective of the group (every process calls it as its
    /// next collective; a rank that never calls makes the others fail after <see cref="Timeout"/>). Sub-groups share the
    /// group's fate: a failure or abort in any of them aborts the whole family (the group, its sub-groups, theirs), in
    /// every process. A sub-group's ranks run on their parent ranks' streams (work stays in order across groups).
    /// Dispose the returned split (its sub-groups) before this group: their ranks run on this group's streams.
    /// </summary>
    public ProcessGroupSplit Split(Func<int, int> colorOf, Func<int, int>? keyOf = null)
    {
        ArgumentNullException.ThrowIfNull(colorOf);
        var colors = new int[WorldSize];
        var keys = new int[WorldSize];
        foreach (var r in _ranks)
        {
            colors[r.Rank] = colorOf(r.Rank);
            keys[r.Rank] = keyOf?.Invoke(r.Rank) ?? 0;
            if (colors[r.Rank] < NoColor)
                throw new ArgumentOutOfRangeException(nameof(colorOf), colors[r.Rank],
                    $"colorOf({r.Rank}) = {colors[r.Rank]}; expected a color >= 0 or ProcessGroup.NoColor (-1).");
        }
        return IsMultiProcess ? SplitRemote(colors[Local.Rank], keys[Local.Rank]) : SplitLocal(colors, keys);
    }

    private unsafe ProcessGroupSplit SplitLocal(int[] colors, int[] keys)
    {
        var raw = new nint[WorldSize];
        fixed (int* c = colors, k = keys)
        fixed (nint* o = raw)
            ThrowHelper.Check(Native.sw_comm_split_local(Comm, c, k, o));
        var byHandle = new Dictionary<nint, ProcessGroup>();
        var contexts = new RankContext?[WorldSize];
        try
        {
            foreach (var handle in raw.Where(h => h != 0).Distinct())
            {
                // The members in sub-rank order: sw_comm_get_parent_rank maps each sub rank back.
                var comm = CommHandle.Adopt(handle);
                ThrowHelper.Check(Native.sw_comm_get_world_size(comm, out int size));
                var members = new RankContext[size];
                for (int i = 0; i < size; i++)
                {
                    ThrowHelper.Check(Native.sw_comm_get_parent_rank(comm, i, out int p));
                    members[i] = _ranks[p];
                }
                byHandle[handle] = new ProcessGroup(comm, this, members, size);
            }
            for (int r = 0; r < WorldSize; r++)
                if (raw[r] != 0)
                {
                    var g = byHandle[raw[r]];
                    contexts[r] = g._ranks.First(x => ReferenceEquals(x.Parent, _ranks[r]));
                }
        }
        catch
        {
            foreach (var g in byHandle.Values) g.Dispose();
            foreach (var h in raw.Where(h => h != 0).Distinct().Where(h => !byHandle.ContainsKey(h)))
                Native.sw_comm_destroy(h);
            throw;
        }
        return new ProcessGroupSplit(this, contexts, byHandle.Values.ToArray());
    }

    private ProcessGroupSplit SplitRemote(int color, int key)
    {
        var me = Local;
        ThrowHelper.Check(Native.sw_comm_split(Comm, me.Rank, color, key, out nint raw));
        var contexts = new RankContext?[WorldSize];
        if (raw == 0) return new ProcessGroupSplit(this, contexts, []);
        var comm = CommHandle.Adopt(raw);
        ProcessGroup g;
        try
        {
            ThrowHelper.Check(Native.sw_comm_get_world_size(comm, out int size));
            g = new ProcessGroup(comm, this, [me], size);
        }
        catch
        {
            comm.Dispose();
            throw;
        }
        contexts[me.Rank] = g._ranks[0];
        return new ProcessGroupSplit(this, contexts, [g]);
    }
}

/// <summary>
/// The sub-groups of one <see cref="ProcessGroup.Split"/>: each rank's context in its sub-group. Disposing it disposes the
/// sub-groups.
/// </summary>
public sealed class ProcessGroupSplit : IDisposable
{
    private readonly RankContext?[] _byParentRank;

    internal ProcessGroupSplit(ProcessGroup parent, RankContext?[] byParentRank, ProcessGroup[] groups)
    {
        Parent = parent;
        _byParentRank = byParentRank;
        Groups = groups;
    }

    /// <summary>The group that was split.</summary>
    public ProcessGroup Parent { get; }

    /// <summary>The sub-groups this process runs ranks of (in-process: every sub-group; multi-process: at most one).</summary>
    public IReadOnlyList<ProcessGroup> Groups { get; }

    /// <summary>Parent rank <paramref name="parentRank"/>'s context in its sub-group, or null when that rank opted out
    /// (<see cref="ProcessGroup.NoColor"/>). Multi-process: this process's rank only.</summary>
    public RankContext? this[int parentRank]
    {
        get
        {
            _ = Parent[parentRank]; // in range, and run by this process
            return _byParentRank[parentRank];
        }
    }

    /// <summary>Disposes every sub-group.</summary>
    public void Dispose()
    {
        foreach (var g in Groups) g.Dispose();
    }
}
