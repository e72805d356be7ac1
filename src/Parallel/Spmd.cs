namespace Shardwise.Parallel;

/// <summary>
/// Single program, multiple data: runs the same code once per rank, each on a dedicated host thread, the way
/// one process per GPU would run it. After the body, the rank's stream is synchronized so queued errors surface.
/// </summary>
public static class Spmd
{
    /// <summary>Runs <paramref name="body"/> for every rank of <paramref name="group"/> concurrently and waits for all.
    /// Throws <see cref="SpmdException"/> listing every rank that failed.</summary>
    public static void Run(ProcessGroup group, Action<RankContext> body)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(body);
        // Every rank this process runs: all of an in-process group, the one of a multi-process group.
        var ranks = group.Ranks;
        var errors = new Exception?[group.WorldSize];
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
                    try { ctx.Synchronize(); } catch (Exception) { /* the first error is the one to report */ }
                }
            })
            { IsBackground = true, Name = $"shardwise rank {ctx.Rank}" };
            threads[i].Start();
        }
        foreach (var t in threads) t.Join();
        if (errors.Any(e => e is not null)) throw new SpmdException(errors);
    }
}

/// <summary>One or more ranks of an <see cref="Spmd.Run"/> failed; <see cref="RankErrors"/> maps rank to error.</summary>
public sealed class SpmdException : AggregateException
{
    internal SpmdException(Exception?[] errors)
        : base(Describe(errors), errors.Where(e => e is not null).Cast<Exception>())
    {
        var map = new Dictionary<int, Exception>();
        for (int r = 0; r < errors.Length; r++)
            if (errors[r] is { } e) map[r] = e;
        RankErrors = map;
    }

    /// <summary>The error of each failed rank.</summary>
    public IReadOnlyDictionary<int, Exception> RankErrors { get; }

    private static string Describe(Exception?[] errors) =>
        $"{errors.Count(e => e is not null)} of {errors.Length} ranks failed: " +
        string.Join("; ", errors.Select((e, r) => e is null ? null : $"rank {r}: {e.GetType().Name}: {e.Message}").Where(s => s is not null));
}
