using Shardwise.Bindings;

namespace Shardwise.Parallel;

/// <summary>
/// Single program, multiple data: runs the same code once per rank, each on a dedicated host thread, the way
/// one process per GPU would run it. After the body, the rank's stream is synchronized so queued errors surface.
/// </summary>
public static class Spmd
{
    /// <summary>
    /// Runs <paramref name="body"/> for every rank of <paramref name="group"/> concurrently and waits for all.
    /// When a rank's body throws, the group is aborted at once with a reason naming that rank and its exception
    /// (<see cref="ProcessGroup.Abort(string)"/>): the other ranks' pending and later collectives fail immediately with
    /// <see cref="CommunicatorAbortedException"/> naming it instead of waiting for the timeout, and in a multi-process
    /// group the other processes are told. The group is then unusable (create a new one).
    /// Throws <see cref="SpmdException"/>: the first failing rank's own exception is its <see cref="SpmdException.Cause"/>
    /// (and <see cref="Exception.InnerException"/>); the other ranks' errors are listed too.
    /// </summary>
    public static void Run(ProcessGroup group, Action<RankContext> body)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(body);
        // Every rank this process runs: all of an in-process group, the one of a multi-process group.
        var ranks = group.Ranks;
        var errors = new Exception?[group.WorldSize];
        int failures = 0;
        var order = new int[group.WorldSize]; // the order in which the ranks failed (1 = first)
        var threads = new Thread[ranks.Count];
        for (int i = 0; i < ranks.Count; i++)
        {
            var ctx = ranks[i];
            threads[i] = new Thread(() =>
            {
                try
                {
                    body(ctx);
                    ctx.Synchronize();
                }
                catch (Exception e)
                {
                    errors[ctx.Rank] = e;
                    order[ctx.Rank] = Interlocked.Increment(ref failures);
                    AbortFor(group, ctx.Rank, e);
                    try { ctx.Synchronize(); } catch (Exception) { /* the first error is the one to report */ }
                }
            })
            { IsBackground = true, Name = $"shardwise rank {ctx.Rank}" };
            threads[i].Start();
        }
        foreach (var t in threads) t.Join();
        if (failures > 0) throw new SpmdException(errors, order);
    }

    // Aborts the group for rank `rank`'s failure, so that the other ranks stop waiting for it. When the group is
    // aborted already (a timeout, a mismatch, an earlier failing rank), the first reason stays.
    private static void AbortFor(ProcessGroup group, int rank, Exception e)
    {
        string message = e.Message.ReplaceLineEndings(" ");
        if (message.Length > 1000) message = message[..1000] + "...";
        try
        {
            // Already aborted (the rank's own error is that abort, or another rank was first): the peers know.
            if (!group.IsAborted)
                group.Abort($"rank {rank} failed in Spmd.Run: {e.GetType().Name}: {message}");
        }
        catch (Exception)
        {
            // The body disposed the group, or the native call failed: nothing is left to tell.
        }
    }
}

/// <summary>
/// One or more ranks of an <see cref="Spmd.Run"/> failed. <see cref="Cause"/> is the exception of the rank that failed
/// first (<see cref="CauseRank"/>), which is also <see cref="Exception.InnerException"/> and the first of
/// <see cref="AggregateException.InnerExceptions"/>; the other ranks usually failed as its consequence (their collectives
/// were aborted: <see cref="CommunicatorAbortedException"/> naming <see cref="CauseRank"/>). <see cref="RankErrors"/> maps
/// every failed rank to its error. <see cref="Message"/> states each rank's failure once (the inner exceptions' full text
/// and stack traces are in <see cref="Exception.ToString"/>).
/// </summary>
public sealed class SpmdException : AggregateException
{
    private readonly string _message;

    internal SpmdException(Exception?[] errors, int[] order)
        : base(Describe(errors, order, out int cause), Ordered(errors, order, cause))
    {
        _message = Describe(errors, order, out _);
        var map = new Dictionary<int, Exception>();
        for (int r = 0; r < errors.Length; r++)
            if (errors[r] is { } e) map[r] = e;
        RankErrors = map;
        CauseRank = cause;
        Cause = errors[cause]!;
    }

    /// <summary>Which ranks failed, the first one's error, the other errors of their own, and the ranks that failed as a
    /// consequence (named, not repeated: their abort reason restates the cause). Unlike <see cref="AggregateException"/>'s
    /// message, the inner exceptions' messages are not appended a second time.</summary>
    public override string Message => _message;

    /// <summary>The error of each failed rank.</summary>
    public IReadOnlyDictionary<int, Exception> RankErrors { get; }

    /// <summary>The rank that failed first.</summary>
    public int CauseRank { get; }

    /// <summary>The exception of <see cref="CauseRank"/>: the original failure, as its body (or its stream) threw it.</summary>
    public Exception Cause { get; }

    // The cause first (so that it is InnerException), then the others in the order they failed.
    private static IEnumerable<Exception> Ordered(Exception?[] errors, int[] order, int cause) =>
        Enumerable.Range(0, errors.Length).Where(r => errors[r] is not null)
            .OrderBy(r => r == cause ? 0 : order[r]).Select(r => errors[r]!);

    // A failure that only reports the abort of the group (by the cause's rank or by a collective's failure).
    private static bool IsConsequence(Exception e) => e is CommunicatorAbortedException;

    private static string Describe(Exception?[] errors, int[] order, out int cause)
    {
        var failed = Enumerable.Range(0, errors.Length).Where(r => errors[r] is not null).OrderBy(r => order[r]).ToList();
        // The first rank to fail is the cause, unless it only reports an abort while another rank has an error of its own.
        cause = failed.FirstOrDefault(r => !IsConsequence(errors[r]!), failed[0]);
        int c = cause;
        string text = $"{failed.Count} of {errors.Length} ranks failed; rank {c} first: {errors[c]!.GetType().Name}: {errors[c]!.Message}";
        var others = failed.Where(r => r != c).ToList();
        var own = others.Where(r => !IsConsequence(errors[r]!)).ToList();
        var aborted = others.Where(r => IsConsequence(errors[r]!)).ToList();
        if (own.Count > 0)
            text += "; also " + string.Join("; ", own.Select(r => $"rank {r}: {errors[r]!.GetType().Name}: {errors[r]!.Message}"));
        if (aborted.Count > 0)
            text += $"; then {(aborted.Count == 1 ? "rank" : "ranks")} {string.Join(", ", aborted)} failed as a consequence " +
                    $"(the group was aborted: {nameof(CommunicatorAbortedException)}; see RankErrors)";
        return text;
    }
}
