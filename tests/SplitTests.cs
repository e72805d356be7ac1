using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="ProcessGroup.Split"/> on in-process groups: several colours, keys that reorder the ranks (ties keep the
/// parent order), ranks that opt out, a split of a split; membership and order checked through a real all-gather of the
/// parent (world) ranks, exactly; sub-group work stays in order with the parent's on the shared stream; a rank missing in a
/// sub-group's collective times out naming it by its rank in the sub-group and in the parent, and aborts the family;
/// argument errors.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class SplitTests(Backend backend) : BackendTest(backend)
{
    // Every rank of `group` all-gathers `label(rank)` over `sub(rank)`; returns what each rank got (null: opted out).
    private static float[]?[] GatherOver(ProcessGroup group, Func<RankContext, RankContext?> sub, Func<int, float> label)
    {
        var got = new float[]?[group.WorldSize];
        Spmd.Run(group, ctx =>
        {
            var s = sub(ctx);
            if (s is null) return;
            using var send = ctx.Device.Allocate<float>(1);
            send.CopyFrom([label(ctx.Rank)], ctx.Stream);
            using var recv = ctx.Device.Allocate<float>(s.WorldSize);
            recv.Fill(float.NaN, ctx.Stream);
            s.AllGather(send, recv);
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
        });
        return got;
    }

    // The MPI_Comm_split rule, computed here: the members of `rank`'s colour ordered by (key, rank).
    private static int[] Expected(int p, int rank, Func<int, int> color, Func<int, int> key) =>
        Enumerable.Range(0, p).Where(q => color(q) == color(rank)).OrderBy(key).ThenBy(q => q).ToArray();

    [Test]
    public void SeveralColorsKeysThatReorderAndOptOuts(
        [Values(1, 2, 5, 8)] int p, [Values("mod3", "reverse-key", "opt-out", "tied-keys")] string kind)
    {
        Func<int, int> color = kind switch
        {
            "opt-out" => r => r % 4 == 1 ? ProcessGroup.NoColor : r % 2,
            _ => r => r % 3,
        };
        Func<int, int> key = kind switch
        {
            "reverse-key" => r => -r,
            "tied-keys" => r => r / 3 % 2 == 0 ? 7 : -7, // ties broken by parent rank
            "mod3" => r => (r * 5 + 1) % 7,
            _ => _ => 0,
        };
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var split = group.Split(color, key);
        int colors = Enumerable.Range(0, p).Where(r => color(r) != ProcessGroup.NoColor).Select(color).Distinct().Count();
        Assert.That(split.Groups, Has.Count.EqualTo(colors));
        Assert.That(split.Parent, Is.SameAs(group));
        for (int r = 0; r < p; r++)
        {
            if (color(r) == ProcessGroup.NoColor)
            {
                Assert.That(split[r], Is.Null, $"rank {r} opted out");
                continue;
            }
            var members = Expected(p, r, color, key);
            var s = split[r]!;
            Assert.That(s.WorldSize, Is.EqualTo(members.Length));
            Assert.That(s.Rank, Is.EqualTo(Array.IndexOf(members, r)), $"rank {r}'s sub rank");
            Assert.That(s.Parent, Is.SameAs(group[r]));
            Assert.That(s.Stream, Is.SameAs(group[r].Stream));
            Assert.That(s.Group.Parent, Is.SameAs(group));
            for (int i = 0; i < members.Length; i++) Assert.That(s.Group.ParentRank(i), Is.EqualTo(members[i]), $"ParentRank({i})");
        }
        var got = GatherOver(group, ctx => split[ctx.Rank], r => r);
        for (int r = 0; r < p; r++)
            if (color(r) != ProcessGroup.NoColor)
                Assert.That(got[r], Is.EqualTo(Expected(p, r, color, key).Select(q => (float)q).ToArray()), $"rank {r}: members in (key, rank) order");
    }

    [Test]
    public void ASplitOfASplit()
    {
        const int p = 8;
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var halves = group.Split(r => r / 4, r => -r); // {3,2,1,0}, {7,6,5,4}
        var quarters = halves.Groups.Select(h => h.Split(sr => sr % 2)).ToArray(); // sub ranks 0,2 / 1,3
        try
        {
            RankContext Nested(RankContext world)
            {
                var h = halves[world.Rank]!;
                return quarters.Single(q => ReferenceEquals(q.Parent, h.Group))[h.Rank]!;
            }
            var got = GatherOver(group, Nested, r => r * 10 + 1);
            for (int r = 0; r < p; r++)
            {
                // half of r in reverse order, then every other one of it by sub rank parity
                var half = Enumerable.Range(0, p).Where(q => q / 4 == r / 4).OrderByDescending(q => q).ToArray();
                int parity = Array.IndexOf(half, r) % 2;
                var want = half.Where((_, i) => i % 2 == parity).Select(q => (float)(q * 10 + 1)).ToArray();
                Assert.That(got[r], Is.EqualTo(want), $"rank {r}");
                var n = Nested(group[r]);
                Assert.That(n.Parent!.Parent, Is.SameAs(group[r]));
                Assert.That(n.Group.Parent!.Parent, Is.SameAs(group));
            }
        }
        finally
        {
            foreach (var q in quarters) q.Dispose();
        }
    }

    [Test]
    public void SubGroupWorkStaysInOrderWithTheParentsOnTheSharedStream()
    {
        var rng = NewRandom();
        const int p = 4, n = 33;
        var data = Enumerable.Range(0, p).Select(_ => RandomArray(rng, n)).ToArray();
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var split = group.Split(r => r % 2);
        Spmd.Run(group, ctx =>
        {
            using var b = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            // queued back to back, no host wait: the sub-group's all-reduce must see the parent's result and vice versa
            ctx.AllReduce(b);
            split[ctx.Rank]!.AllReduce(b);
            ctx.AllReduce(b);
            got[ctx.Rank] = b.ToArray(ctx.Stream);
        });
        // every step sums in rank order in fp32: emulate it
        float[] Sum(IEnumerable<float[]> xs) => Enumerable.Range(0, n).Select(i => xs.Select(x => x[i]).Aggregate((a, c) => a + c)).ToArray();
        var all = Sum(data);
        var afterSub = all.Select(v => v + v).ToArray(); // each sub-group holds two copies of `all`
        var want = Sum(Enumerable.Repeat(afterSub, p));
        for (int r = 0; r < p; r++) Reference.AssertBitwise(got[r], want, $"rank {r}");
    }

    [Test]
    public void AMissingRankInASubGroupTimesOutNamingItsSubAndParentRank()
    {
        const int p = 4;
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(1.5));
        using var split = group.Split(r => r % 2); // {0, 2} and {1, 3}
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var ex = Assert.Throws<SpmdException>(() => Spmd.Run(group, ctx =>
        {
            if (ctx.Rank == 3) return; // never joins its sub-group's all-reduce
            using var b = ctx.Device.Allocate<float>(8);
            b.Fill(1f, ctx.Stream);
            if (ctx.Rank == 1) split[1]!.AllReduce(b);
            ctx.Synchronize();
        }))!;
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(20)));
        Assert.That(ex.RankErrors[1], Is.InstanceOf<CollectiveTimeoutException>());
        Assert.That(ex.RankErrors[1].Message, Does.Contain("rank(s) 1 (parent rank 3)"));
        // The family's other members are aborted by the split's watcher thread, asynchronously: wait for it, bounded.
        Assert.That(() => group.IsAborted, Is.True.After(5000, 10), "the family is aborted");
        Assert.That(() => split.Groups.All(g => g.IsAborted), Is.True.After(5000, 10), "the other sub-group too");
        Assert.That(split.Groups.Select(g => g.AbortReason), Has.All.Contain("parent rank 3"));
    }

    [Test]
    public void BadColorsAreNamed()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(10));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => group.Split(r => r == 2 ? -2 : 0))!;
        Assert.That(e.ParamName, Is.EqualTo("colorOf"));
        Assert.That(e.Message, Does.Contain("colorOf(2) = -2"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => group.Split(null!))!.ParamName, Is.EqualTo("colorOf"));
        using var split = group.Split(r => r == 1 ? ProcessGroup.NoColor : 0);
        Assert.That(Assert.Catch<ArgumentException>(() => _ = split[3])!.ParamName, Is.EqualTo("rank"));
        Assert.That(group.ParentRank(2), Is.EqualTo(2), "a group that was not split is its own parent");
    }

    [Test]
    public void AbortingTheParentAbortsItsSubGroupsAndDisposingASplitAbortsNothing()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 4, TimeSpan.FromSeconds(30));
        using (var first = group.Split(r => r % 2))
        {
            Assert.That(first.Groups.Any(g => g.IsAborted), Is.False);
        } // disposed: a close, not a failure
        Assert.That(group.IsAborted, Is.False, "disposing a split aborts nothing");
        Assert.DoesNotThrow(() => Spmd.Run(group, ctx => { using var b = ctx.Device.Allocate<float>(4); b.Fill(1f, ctx.Stream); ctx.AllReduce(b); }));
        using var split = group.Split(r => r / 2);
        using var nested = split.Groups[0].Split(_ => 0);
        group.Abort("stop for the test");
        // the family's watcher spreads the abort (asynchronously, at once): wait for it, boundedly
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (DateTime.UtcNow < deadline && !split.Groups.Concat(nested.Groups).All(g => g.IsAborted)) Thread.Sleep(10);
        foreach (var g in split.Groups.Concat(nested.Groups))
        {
            Assert.That(g.IsAborted, Is.True, "every member of the family is aborted");
            Assert.That(g.AbortReason, Does.Contain("stop for the test"));
        }
    }
}
