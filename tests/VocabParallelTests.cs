using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>Vocabulary-parallel embedding and cross-entropy at p = 1..8 (uneven and empty vocabulary shards): against
/// float64 references, collectives counted, out-of-range ids as documented.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class VocabParallelTests(Backend backend) : BackendTest(backend)
{
    [TestCase(1, 23)]
    [TestCase(2, 23)]
    [TestCase(3, 23)]
    [TestCase(5, 7)]
    [TestCase(8, 5)] // three empty shards
    public void EmbeddingForwardAndBackwardMatchFloat64(int p, int v)
    {
        var rng = NewRandom();
        const long h = 6, m = 9;
        var table = RandomArray(rng, v * h);
        var ids = Enumerable.Range(0, (int)m).Select(_ => rng.Next(v)).ToArray();
        ids[3] = ids[7]; // a repeated token: its gradient rows add up
        var g = RandomArray(rng, m * h);
        var plan = ShardingPlan.Even(v, p);
        var ys = new float[p][];
        var grads = new float[p][];
        var acc = new float[p][];
        var counts = new ulong[p];
        var prior = RandomArray(rng, v * h);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var emb = new VocabParallelEmbedding(ctx, WeightSource.FromArray(table, v, h));
            using var y = Poisoned(m * h, ctx.Device, ctx.Stream);
            using var dy = Upload(g, ctx.Device, ctx.Stream);
            using var dTable = emb.LocalRows == 0 ? null : Poisoned(emb.LocalRows * h, ctx.Device, ctx.Stream);
            ulong c0 = group.CollectiveCount(ctx.Rank);
            emb.Forward(ids, y.AsMatrix(m, h));
            ctx.Synchronize();
            counts[ctx.Rank] = group.CollectiveCount(ctx.Rank) - c0;
            var dids = emb.UploadIds(ids);
            emb.Backward(dids, dy.AsMatrix(m, h), dTable);
            ys[ctx.Rank] = y.ToArray(ctx.Stream);
            grads[ctx.Rank] = dTable?.ToArray(ctx.Stream) ?? [];
            if (dTable is not null)
            {
                dTable.CopyFrom(prior.AsSpan((int)(emb.LocalOffset * h), (int)(emb.LocalRows * h)), ctx.Stream);
                emb.Backward(dids, dy.AsMatrix(m, h), dTable, accumulate: true);
                acc[ctx.Rank] = dTable.ToArray(ctx.Stream);
            }
            else acc[ctx.Rank] = [];
            Assert.That(group.CollectiveCount(ctx.Rank) - c0, Is.EqualTo(1UL), "the forward's all-reduce only: the backward communicates nothing");
        });
        var want = new double[v * h];
        for (long i = 0; i < m; i++) for (long c = 0; c < h; c++) want[ids[i] * h + c] += g[i * h + c];
        for (int r = 0; r < p; r++)
        {
            Assert.That(counts[r], Is.EqualTo(1UL), $"rank {r}: collectives in the forward");
            for (long i = 0; i < m; i++)
                for (long c = 0; c < h; c++)
                    Assert.That(ys[r][i * h + c], Is.EqualTo(table[ids[i] * h + c]), $"rank {r} y[{i},{c}] (one row plus zeros: exact)");
            long off = plan.Offset(r), n = plan.Size(r);
            Assert.That(grads[r], Has.Length.EqualTo(n * h));
            for (long j = 0; j < n * h; j++)
            {
                Assert.That(grads[r][j], Is.EqualTo(want[off * h + j]).Within(1e-6 * (1 + Math.Abs(want[off * h + j]))), $"rank {r} dE[{j}]");
                Assert.That(acc[r][j], Is.EqualTo(prior[off * h + j] + want[off * h + j]).Within(1e-6 * 4), $"rank {r} accumulated dE[{j}]");
            }
        }
    }

    [Test]
    public void EmbeddingIdsOutOfRange()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        var rng = NewRandom();
        var table = RandomArray(rng, 10 * 3);
        Spmd.Run(group, ctx =>
        {
            using var emb = new VocabParallelEmbedding(ctx, WeightSource.FromArray(table, 10, 3));
            using var y = Poisoned(4 * 3, ctx.Device, ctx.Stream);
            var ex = Assert.Throws<ArgumentOutOfRangeException>(() => emb.Forward([1, 2, 10, 3], y.AsMatrix(4, 3)))!;
            Assert.That(ex.ParamName, Is.EqualTo("tokenIds"));
            Assert.That(ex.Message, Does.Contain("tokenIds[2] = 10"));
            Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => emb.Forward([-1], y.AsMatrix(1, 3)))!.ParamName, Is.EqualTo("tokenIds"));
            // From the device, unchecked: an id outside [0, V) gives a zero row.
            using var ids = ctx.Device.Allocate<int>(4);
            ids.CopyFrom([4, -3, 10, 9], ctx.Stream);
            emb.Forward(ids, 4, y.AsMatrix(4, 3));
            var got = y.ToArray(ctx.Stream);
            for (int c = 0; c < 3; c++)
            {
                Assert.That(got[c], Is.EqualTo(table[4 * 3 + c]));
                Assert.That(got[3 + c], Is.EqualTo(0f), "id -3: zero row");
                Assert.That(got[6 + c], Is.EqualTo(0f), "id 10: zero row");
                Assert.That(got[9 + c], Is.EqualTo(table[9 * 3 + c]));
            }
        });
    }

    [TestCase(2)]
    [TestCase(3)]
    public void SequenceParallelEmbedding(int p)
    {
        var rng = NewRandom();
        const long h = 5, m = 7, v = 11;
        var table = RandomArray(rng, v * h);
        var ids = Enumerable.Range(0, (int)m).Select(_ => rng.Next((int)v)).ToArray();
        var g = RandomArray(rng, m * h);
        var tokens = ShardingPlan.Even(m, p);
        var plan = ShardingPlan.Even(v, p);
        var want = new double[v * h];
        for (long i = 0; i < m; i++) for (long c = 0; c < h; c++) want[ids[i] * h + c] += g[i * h + c];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            long r0 = tokens.Offset(ctx.Rank), mr = tokens.Size(ctx.Rank);
            using var emb = new VocabParallelEmbedding(ctx, WeightSource.FromArray(table, v, h));
            using var y = Poisoned(mr * h, ctx.Device, ctx.Stream);
            using var dy = Upload(g[(int)(r0 * h)..(int)((r0 + mr) * h)], ctx.Device, ctx.Stream);
            using var dTable = Poisoned(emb.LocalRows * h, ctx.Device, ctx.Stream);
            emb.ForwardSequenceParallel(ids, y.AsMatrix(mr, h), tokens);
            var got = y.ToArray(ctx.Stream);
            for (long i = 0; i < mr; i++)
                for (long c = 0; c < h; c++) Assert.That(got[i * h + c], Is.EqualTo(table[ids[r0 + i] * h + c]), $"rank {ctx.Rank} y[{i},{c}]");
            emb.BackwardSequenceParallel(emb.UploadIds(ids), dy.AsMatrix(mr, h), tokens, dTable);
            var d = dTable.ToArray(ctx.Stream);
            long off = plan.Offset(ctx.Rank);
            for (long j = 0; j < d.Length; j++) Assert.That(d[j], Is.EqualTo(want[off * h + j]).Within(1e-6 * 4), $"rank {ctx.Rank} dE[{j}]");
        });
    }

    // Loss of each row and d(Σ loss·dloss)/dz, in float64.
    private static (double[] Loss, double[] Grad) CrossEntropyRef(float[] z, int[] t, float[] dloss, long m, long v)
    {
        var loss = new double[m];
        var grad = new double[m * v];
        for (long i = 0; i < m; i++)
        {
            if (t[i] < 0 || t[i] >= v) continue;
            double mx = double.NegativeInfinity, s = 0;
            for (long j = 0; j < v; j++) mx = Math.Max(mx, z[i * v + j]);
            for (long j = 0; j < v; j++) s += Math.Exp(z[i * v + j] - mx);
            double lse = mx + Math.Log(s);
            loss[i] = lse - z[i * v + t[i]];
            for (long j = 0; j < v; j++) grad[i * v + j] = dloss[i] * (Math.Exp(z[i * v + j] - lse) - (j == t[i] ? 1 : 0));
        }
        return (loss, grad);
    }

    [Test]
    public void CrossEntropyReferenceGradientMatchesFiniteDifferences()
    {
        var rng = NewRandom();
        const long m = 3, v = 7;
        var z = RandomArray(rng, m * v, 3f);
        var t = new[] { 2, 6, 0 };
        var w = RandomArray(rng, m);
        var e = RandomArray(rng, m * v);
        var (_, grad) = CrossEntropyRef(z, t, w, m, v);
        double L(double eps)
        {
            double s = 0;
            for (long i = 0; i < m; i++)
            {
                double mx = double.NegativeInfinity, sum = 0;
                for (long j = 0; j < v; j++) mx = Math.Max(mx, z[i * v + j] + eps * e[i * v + j]);
                for (long j = 0; j < v; j++) sum += Math.Exp(z[i * v + j] + eps * e[i * v + j] - mx);
                s += w[i] * (mx + Math.Log(sum) - (z[i * v + t[i]] + eps * e[i * v + t[i]]));
            }
            return s;
        }
        double fd = (L(1e-6) - L(-1e-6)) / 2e-6;
        Assert.That(grad.Select((g, i) => g * e[i]).Sum(), Is.EqualTo(fd).Within(1e-7 * (1 + Math.Abs(fd))));
    }

    [TestCase(1, 29)]
    [TestCase(2, 29)]
    [TestCase(3, 29)]
    [TestCase(4, 30)]
    [TestCase(8, 6)] // two empty shards
    public void CrossEntropyMatchesFloat64WithoutGatheringLogits(int p, int v)
    {
        var rng = NewRandom();
        const long m = 7;
        var z = RandomArray(rng, m * v, 4f);
        var t = Enumerable.Range(0, (int)m).Select(_ => rng.Next(v)).ToArray();
        t[5] = -100; // ignored rows (device targets only)
        t[6] = v;
        var dloss = RandomArray(rng, m);
        var (lossWant, gradWant) = CrossEntropyRef(z, t, dloss, m, v);
        var plan = ShardingPlan.Even(v, p);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            long off = plan.Offset(ctx.Rank), n = plan.Size(ctx.Rank);
            var local = new float[m * n];
            for (long i = 0; i < m; i++) for (long j = 0; j < n; j++) local[i * n + j] = z[i * v + off + j];
            using var ce = new VocabParallelCrossEntropy(ctx, v);
            using var logits = Upload(local.Length == 0 ? [0f] : local, ctx.Device, ctx.Stream);
            using var targets = ctx.Device.Allocate<int>(m);
            targets.CopyFrom(t, ctx.Stream);
            using var lse = Poisoned(m, ctx.Device, ctx.Stream);
            using var loss = Poisoned(m, ctx.Device, ctx.Stream);
            using var dl = Upload(dloss, ctx.Device, ctx.Stream);
            using var dz = Poisoned(Math.Max(1, m * n), ctx.Device, ctx.Stream);
            ulong c0 = group.CollectiveCount(ctx.Rank);
            var zv = logits.AsMatrix(m, n, Math.Max(1, n));
            ce.Forward(zv, targets, lse, loss);
            ctx.Synchronize();
            ulong c1 = group.CollectiveCount(ctx.Rank);
            ce.Backward(zv, targets, lse, dl, dz.AsMatrix(m, n, Math.Max(1, n)));
            ctx.Synchronize();
            Assert.That(c1 - c0, Is.EqualTo(1UL), "collectives in the forward");
            Assert.That(group.CollectiveCount(ctx.Rank) - c1, Is.EqualTo(0UL), "collectives in the backward");
            var got = loss.ToArray(ctx.Stream);
            for (long i = 0; i < m; i++)
                Assert.That(got[i], Is.EqualTo(lossWant[i]).Within(2e-6 * (1 + Math.Abs(lossWant[i]))), $"rank {ctx.Rank} loss[{i}]");
            var d = dz.ToArray(ctx.Stream);
            for (long i = 0; i < m; i++)
                for (long j = 0; j < n; j++)
                    Assert.That(d[i * n + j], Is.EqualTo(gradWant[i * v + off + j]).Within(2e-6), $"rank {ctx.Rank} dz[{i},{j}]");
            // From the host, targets must lie in the vocabulary.
            var ex = Assert.Throws<ArgumentOutOfRangeException>(() => ce.UploadTargets([0, v]))!;
            Assert.That(ex.ParamName, Is.EqualTo("targets"));
        });
    }
}
