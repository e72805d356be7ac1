using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="DeviceMesh"/> over in-process groups: meshes 2×2×2, 4×2, 1×8, 8×1×1 and 3×2; for every combination of
/// dimensions, every rank all-gathers its world rank over its group, and the gathered list must be exactly the world ranks
/// that share the rank's other coordinates, in ascending order (= row-major order of the spanned coordinates), with this
/// rank at its own index. The coordinates are checked against the row-major formula computed here. An all-reduce on the dp
/// groups of a 2×2×2 mesh is checked against a float64 reference. Bad shapes and names fail with messages naming them.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class DeviceMeshTests(Backend backend) : BackendTest(backend)
{
    private static IEnumerable<TestCaseData> Shapes()
    {
        yield return new TestCaseData((object)new[] { ("pp", 2), ("dp", 2), ("tp", 2) }).SetArgDisplayNames("pp2 x dp2 x tp2");
        yield return new TestCaseData((object)new[] { ("dp", 4), ("tp", 2) }).SetArgDisplayNames("dp4 x tp2");
        yield return new TestCaseData((object)new[] { ("dp", 1), ("tp", 8) }).SetArgDisplayNames("dp1 x tp8");
        yield return new TestCaseData((object)new[] { ("a", 8), ("b", 1), ("c", 1) }).SetArgDisplayNames("a8 x b1 x c1");
        yield return new TestCaseData((object)new[] { ("dp", 3), ("tp", 2) }).SetArgDisplayNames("dp3 x tp2");
    }

    // Row-major, the last dimension fastest, computed independently of the mesh.
    private static int[] Coordinates(int rank, int[] shape)
    {
        var c = new int[shape.Length];
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            c[i] = rank % shape[i];
            rank /= shape[i];
        }
        return c;
    }

    private static IEnumerable<string[]> Subsets(string[] names)
    {
        for (int mask = 1; mask < 1 << names.Length; mask++)
            yield return names.Where((_, i) => (mask >> i & 1) == 1).ToArray();
    }

    [TestCaseSource(nameof(Shapes))]
    public void EveryGroupHasTheRightMembersInRowMajorOrder((string Name, int Size)[] dims)
    {
        var names = dims.Select(d => d.Name).ToArray();
        var shape = dims.Select(d => d.Size).ToArray();
        int world = shape.Aggregate(1, (a, b) => a * b);
        var subsets = Subsets(names).ToList();
        var gathered = new float[world][][];
        var ranksIn = new int[world][];
        using var group = ProcessGroup.CreateLocal(Dev, world, TimeSpan.FromSeconds(30));
        using var mesh = DeviceMesh.Create(group, dims);
        Assert.That(mesh.Names, Is.EqualTo(names));
        Assert.That(mesh.Shape, Is.EqualTo(shape));
        Assert.That(mesh.Ranks, Has.Count.EqualTo(world));
        for (int w = 0; w < world; w++)
        {
            var want = Coordinates(w, shape);
            Assert.That(mesh[w].Coordinates, Is.EqualTo(want), $"rank {w}'s coordinates");
            Assert.That(mesh.CoordinatesOf(w), Is.EqualTo(want));
            Assert.That(mesh.RankAt(names.Select((n, i) => (n, want[i])).Reverse().ToArray()), Is.EqualTo(w), "RankAt, names in any order");
            Assert.That(mesh.RankAt(names.Select((n, i) => (n, want[i])).ToDictionary(x => x.n, x => x.Item2)), Is.EqualTo(w));
            for (int i = 0; i < names.Length; i++) Assert.That(mesh[w].Coordinate(names[i]), Is.EqualTo(want[i]));
            Assert.That(mesh[w].World, Is.SameAs(group[w]));
            Assert.That(mesh[w].Group(names), Is.SameAs(group[w]), "all dimensions: the world");
            if (names.Length > 1)
                Assert.That(mesh[w].Group(names[1..].Reverse().ToArray()), Is.SameAs(mesh[w].Group(names[1..])),
                    "the order of the names does not matter");
        }
        Spmd.Run(group, ctx =>
        {
            var me = mesh[ctx.Rank];
            gathered[ctx.Rank] = new float[subsets.Count][];
            ranksIn[ctx.Rank] = new int[subsets.Count];
            using var send = ctx.Device.Allocate<float>(1);
            send.CopyFrom([ctx.Rank], ctx.Stream);
            for (int s = 0; s < subsets.Count; s++)
            {
                var g = me.Group(subsets[s]);
                Assert.That(g.Device, Is.SameAs(ctx.Device));
                Assert.That(g.Stream, Is.SameAs(ctx.Stream), "sub-groups run on the world rank's stream");
                using var recv = ctx.Device.Allocate<float>(g.WorldSize);
                recv.Fill(float.NaN, ctx.Stream);
                g.AllGather(send, recv);
                gathered[ctx.Rank][s] = recv.ToArray(ctx.Stream);
                ranksIn[ctx.Rank][s] = g.Rank;
            }
        });
        for (int s = 0; s < subsets.Count; s++)
        {
            var spanned = names.Select(n => subsets[s].Contains(n)).ToArray();
            for (int w = 0; w < world; w++)
            {
                var cw = Coordinates(w, shape);
                var members = Enumerable.Range(0, world)
                    .Where(q => Coordinates(q, shape).Select((c, i) => spanned[i] || c == cw[i]).All(x => x)).ToArray();
                string what = $"rank {w}, group ({string.Join(",", subsets[s])})";
                Assert.That(gathered[w][s], Is.EqualTo(members.Select(m => (float)m).ToArray()), what + ": members in row-major order");
                Assert.That(ranksIn[w][s], Is.EqualTo(Array.IndexOf(members, w)), what + ": this rank's index");
            }
        }
    }

    [Test]
    public void AllReduceOnTheDataParallelGroupsMatchesTheReference()
    {
        var rng = NewRandom();
        const int n = 257;
        var data = Enumerable.Range(0, 8).Select(_ => RandomArray(rng, n)).ToArray();
        var got = new float[8][];
        using var group = ProcessGroup.CreateLocal(Dev, 8, TimeSpan.FromSeconds(30));
        using var mesh = DeviceMesh.Create(group, ("pp", 2), ("dp", 2), ("tp", 2));
        Spmd.Run(group, ctx =>
        {
            var dp = mesh[ctx.Rank].Group("dp");
            Assert.That(dp.WorldSize, Is.EqualTo(2));
            using var send = Upload(data[ctx.Rank], ctx.Device, ctx.Stream);
            using var recv = Poisoned(n, ctx.Device, ctx.Stream);
            dp.AllReduce(send, recv);
            got[ctx.Rank] = recv.ToArray(ctx.Stream);
        });
        for (int w = 0; w < 8; w++)
        {
            // dp partners differ in the middle coordinate: stride 2
            int a = w & ~2, b = w | 2;
            for (int i = 0; i < n; i++)
            {
                double want = (double)data[a][i] + data[b][i];
                double tol = Math.Pow(2, -24) * (Math.Abs(data[a][i]) + Math.Abs(data[b][i])); // one fp32 addition
                Assert.That(Math.Abs(got[w][i] - want), Is.LessThanOrEqualTo(tol), $"rank {w} element {i}: {got[w][i]:R} vs {want:R}");
            }
        }
    }

    [Test]
    public void BadShapesAndNamesAreNamed()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 4, TimeSpan.FromSeconds(10));
        ArgumentException Throws(Action a) => Assert.Catch<ArgumentException>(() => a())!;
        var e = Throws(() => DeviceMesh.Create(group, ("dp", 2), ("tp", 3)));
        Assert.That(e.ParamName, Is.EqualTo("dimensions"));
        Assert.That(e.Message, Does.Contain("dp=2 x tp=3").And.Contain("world size 4"));
        Assert.That(Throws(() => DeviceMesh.Create(group, ("dp", 2), ("dp", 2))).Message, Does.Contain("repeats the name \"dp\""));
        Assert.That(Throws(() => DeviceMesh.Create(group, ("", 4))).Message, Does.Contain("empty name"));
        Assert.That(Throws(() => DeviceMesh.Create(group, ("dp", 0), ("tp", 4))).Message, Does.Contain("size 0"));
        Assert.That(Throws(() => DeviceMesh.Create(group)).ParamName, Is.EqualTo("dimensions"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => DeviceMesh.Create(null!, ("dp", 4)))!.ParamName, Is.EqualTo("world"));
        using var mesh = DeviceMesh.Create(group, ("dp", 2), ("tp", 2));
        var unknown = Throws(() => mesh[0].Group("pp"));
        Assert.That(unknown.Message, Does.Contain("no dimension \"pp\"").And.Contain("\"dp\"=2, \"tp\"=2"));
        Assert.That(unknown.ParamName, Is.EqualTo("dimensions"));
        Assert.That(Throws(() => mesh[0].Group()).ParamName, Is.EqualTo("dimensions"));
        Assert.That(Throws(() => mesh[0].Group("dp", "dp")).Message, Does.Contain("twice"));
        Assert.That(Throws(() => mesh[0].Coordinate("x")).Message, Does.Contain("no dimension \"x\""));
        Assert.That(Throws(() => mesh.Size("x")).ParamName, Is.EqualTo("dimension"));
        Assert.That(Throws(() => mesh.RankAt(("dp", 1))).Message, Does.Contain("lacks dimension \"tp\""));
        Assert.That(Throws(() => mesh.RankAt(("dp", 2), ("tp", 0))).ParamName, Is.EqualTo("coordinates"));
        Assert.That(Throws(() => mesh.RankAt(("dp", 0), ("dp", 1), ("tp", 0))).Message, Does.Contain("twice"));
        Assert.Catch<ArgumentException>(() => _ = mesh[4]);
        Assert.That(mesh.Size("tp"), Is.EqualTo(2));
    }
}
