using System.Diagnostics;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="Spmd.Run"/> when a rank's body throws: the group is aborted at once, so the other ranks fail in their
/// next collective with <see cref="CommunicatorAbortedException"/> naming the failing rank instead of waiting for the
/// group's timeout, and <see cref="SpmdException"/> puts the original exception first. The time bounds are behaviour
/// ("well before the 60 s timeout"), not speed.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class SpmdAbortTests(Backend backend) : BackendTest(backend)
{
    /// <summary>Long enough that a run that waits for it is told apart from one that does not, on any machine.</summary>
    private static readonly TimeSpan LongTimeout = TimeSpan.FromSeconds(60);

    /// <summary>A run that ends before this did not wait for the 60 s timeout.</summary>
    private static readonly TimeSpan WellBeforeTheTimeout = TimeSpan.FromSeconds(20);

    [TestCase(2, 1)]
    [TestCase(3, 1)]
    [TestCase(4, 0)]
    public void ARankThatThrowsAbortsTheGroupAndTheOthersFailAtOnceNamingIt(int p, int thrower)
    {
        var rng = NewRandom();
        var data = Enumerable.Range(0, p).Select(_ => RandomArray(rng, 257)).ToArray();
        using var group = ProcessGroup.CreateLocal(Dev, p, LongTimeout);
        var boom = new InvalidOperationException("boom");
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, r =>
        {
            using var b0 = Upload(data[r.Rank], r.Device, r.Stream);
            if (r.Rank == thrower) throw boom;
            r.AllReduce(b0);
            r.Synchronize();
        }));
        clock.Stop();
        TestContext.Out.WriteLine($"Spmd.Run ended after {clock.Elapsed.TotalSeconds:F2} s: {ex!.Message}");
        Assert.That(clock.Elapsed, Is.LessThan(WellBeforeTheTimeout),
            "the other ranks waited for the group's timeout instead of failing when the rank threw");

        // The original exception stands out: it is the cause, the inner exception and the first listed.
        Assert.That(ex.CauseRank, Is.EqualTo(thrower));
        Assert.That(ex.Cause, Is.SameAs(boom));
        Assert.That(ex.InnerException, Is.SameAs(boom));
        Assert.That(ex.InnerExceptions[0], Is.SameAs(boom));
        Assert.That(ex.Message, Does.StartWith($"{p} of {p} ranks failed; rank {thrower} first: InvalidOperationException: boom"));
        Assert.That(ex.Message, Does.Contain("as a consequence"));

        // Every other rank failed because of it, and its error says so.
        Assert.That(ex.RankErrors.Keys, Is.EquivalentTo(Enumerable.Range(0, p)));
        Assert.That(ex.RankErrors[thrower], Is.SameAs(boom));
        foreach (var (rank, e) in ex.RankErrors.Where(kv => kv.Key != thrower))
        {
            Assert.That(e, Is.InstanceOf<CommunicatorAbortedException>(), $"rank {rank}");
            Assert.That(e.Message, Does.Contain($"rank {thrower} failed in Spmd.Run").And.Contain("InvalidOperationException: boom"), $"rank {rank}");
        }
        Assert.That(group.IsAborted, Is.True);
        Assert.That(group.AbortReason, Does.Contain($"rank {thrower} failed in Spmd.Run: InvalidOperationException: boom"));
    }

    [Test]
    public void TheMessageStatesEachRanksFailureOnce()
    {
        // Ranks 1 and 3 fail with errors of their own; ranks 0 and 2 fail as a consequence (their all-reduce is aborted,
        // and the abort's reason repeats the first failure). Each failure's text must appear once in the message: not
        // again from the inner exceptions (AggregateException's Message appends every inner message) nor from the
        // consequences' abort reasons.
        using var group = ProcessGroup.CreateLocal(Dev, 4, LongTimeout);
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, r =>
        {
            using var b = r.Device.Allocate<float>(8);
            if (r.Rank == 1) throw new InvalidOperationException("the loader of rank 1 found no shard");
            if (r.Rank == 3) throw new ArgumentException("rank 3 was given a 7 x 9 weight");
            r.AllReduce(b);
            r.Synchronize();
        }));
        TestContext.Out.WriteLine(ex!.Message);
        Assert.That(ex.RankErrors.Keys, Is.EquivalentTo(new[] { 0, 1, 2, 3 }));
        foreach (string text in new[] { "the loader of rank 1 found no shard", "rank 3 was given a 7 x 9 weight" })
            Assert.That(Occurrences(ex.Message, text), Is.EqualTo(1), $"'{text}' in: {ex.Message}");
        foreach (int rank in new[] { 0, 2 })
        {
            Assert.That(ex.RankErrors[rank], Is.InstanceOf<CommunicatorAbortedException>(), $"rank {rank}");
            Assert.That(Occurrences(ex.Message, ex.RankErrors[rank].Message), Is.Zero,
                $"rank {rank}'s abort repeats the cause; the message names it among the consequences instead");
        }
        Assert.That(ex.Message, Does.Match("ranks (0, 2|2, 0) failed as a consequence"), "named once, in the order they failed");
        Assert.That(ex.ToString(), Does.Contain("the loader of rank 1 found no shard"), "the inner exceptions stay in ToString()");
    }

    private static int Occurrences(string text, string part)
    {
        int n = 0;
        for (int i = text.IndexOf(part, StringComparison.Ordinal); i >= 0; i = text.IndexOf(part, i + part.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    [Test]
    public void ARankThatThrowsWhileOthersWaitInsideACollectiveReleasesThem()
    {
        // The others are already blocked in their stream's collective (queued, then Synchronize) when the rank throws.
        using var group = ProcessGroup.CreateLocal(Dev, 3, LongTimeout);
        using var queued = new CountdownEvent(2);
        var clock = Stopwatch.StartNew();
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, r =>
        {
            using var b = r.Device.Allocate<float>(16);
            if (r.Rank == 2)
            {
                if (!queued.Wait(TimeSpan.FromSeconds(30))) throw new TimeoutException("the other ranks did not queue their collective");
                Thread.Sleep(200); // let them enter the wait
                throw new ArgumentException("bad shard", "weights");
            }
            r.AllReduce(b);
            queued.Signal();
            r.Synchronize();
        }));
        Assert.That(clock.Elapsed, Is.LessThan(WellBeforeTheTimeout));
        Assert.That(ex!.Cause, Is.InstanceOf<ArgumentException>().With.Property("ParamName").EqualTo("weights"));
        Assert.That(ex.CauseRank, Is.EqualTo(2));
        foreach (int r in new[] { 0, 1 })
            Assert.That(ex.RankErrors[r], Is.InstanceOf<CommunicatorAbortedException>()
                .With.Message.Contains("rank 2 failed in Spmd.Run: ArgumentException: bad shard"));
    }

    [Test]
    public void ACollectiveFailureStaysTheReasonAndIsNotOverwrittenByTheAbort()
    {
        // A mismatch aborts the group first; Spmd's own abort afterwards must not replace its reason.
        using var group = ProcessGroup.CreateLocal(Dev, 2, LongTimeout);
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, r =>
        {
            using var b = r.Device.Allocate<float>(10);
            r.AllReduce(b, b, count: r.Rank == 1 ? 9 : 10);
            r.Synchronize();
        }));
        Assert.That(ex!.RankErrors.Values, Is.All.InstanceOf<CollectiveMismatchException>());
        Assert.That(group.AbortReason, Does.Not.Contain("Spmd.Run"));
    }

    [Test]
    public void AbortWithAReasonIsWhatEveryRankReports()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, LongTimeout);
        Assert.That(() => group.Abort(""), Throws.ArgumentException.With.Property("ParamName").EqualTo("reason"));
        Assert.That(group.IsAborted, Is.False);
        group.Abort("the data loader of rank 1 ran dry");
        group.Abort("a second reason"); // the first abort wins
        Assert.That(group.AbortReason, Is.EqualTo("the data loader of rank 1 ran dry"));
        using var b = Dev.Allocate<float>(4);
        Assert.That(() => group[0].AllReduce(b), Throws.InstanceOf<CommunicatorAbortedException>().With.Message.Contains("ran dry"));
    }

    [Test]
    public void AbortWithoutAReasonOrWithAVeryLongOneThroughTheCAbi()
    {
        using (var group = ProcessGroup.CreateLocal(Dev, 2, LongTimeout))
        {
            Assert.That(Native.sw_comm_abort_with_reason(group.Handle, null), Is.EqualTo(SwStatus.Ok));
            Assert.That(group.AbortReason, Is.EqualTo("sw_comm_abort was called"), "NULL: sw_comm_abort's own reason");
        }
        using (var group = ProcessGroup.CreateLocal(Dev, 2, LongTimeout))
        {
            string longReason = "rank 1: " + new string('x', 6000);
            group.Abort(longReason);
            var buffer = new byte[8192];
            unsafe
            {
                fixed (byte* p = buffer)
                    Assert.That(Native.sw_comm_get_state(group.Handle, out int aborted, p, (ulong)buffer.Length), Is.EqualTo(SwStatus.Ok));
            }
            string kept = System.Text.Encoding.UTF8.GetString(buffer, 0, Array.IndexOf(buffer, (byte)0));
            Assert.That(kept, Is.EqualTo(longReason[..4000]), "the first 4000 bytes are kept");
        }
    }
}
