using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="GradientReducer"/>: the average of fresh random gradients over dp = 1..4 ranks, for float, Half and BFloat16,
/// with bucket sizes that put several gradients in one bucket and spread one gradient over several (a gradient larger
/// than a bucket), marks in a different random order on every rank, two steps in a row (the reducer is reused); the
/// reduce-scatter variant's shards (uneven) against the slices of the averaged flat gradient; the overlap shown through
/// the native collective count (the first bucket's all-reduce completes before the last gradient is marked); a gradient
/// never marked and bad arguments.
/// <para>Checks: (1) bit for bit against the reducer's contract emulated on the host: s = ((g_0 + g_1) + ...) in fp32 in
/// rank order (the collectives' order), s·fl(1/dp) in fp32, then one rounding to the gradient type (reduce-scatter: the
/// fp32 value); (2) against a float64 reference Σg/dp with the tolerance derived from that arithmetic:
/// (dp+1)·2^-24·Σ|g|/dp (dp-1 fp32 additions, fl(1/dp) and the product) plus, for a 16-bit result, half an ulp of it
/// (2^-11 or 2^-8 relative, 2^-25 absolute for Half subnormals).</para>
/// <para>The gradients are "produced" by an asynchronous copy on the compute stream just before MarkReady (the buffers
/// holding NaN until then), so a reducer that did not order its stream after the compute stream would read NaN.</para>
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class DataParallelTests(Backend backend) : BackendTest(backend)
{
    private static readonly long[] GradientSizes = [5, 300, 17, 64, 1, 129, 3]; // 519 elements

    private static IEnumerable<TestCaseData> AverageCases()
    {
        foreach (var t in new[] { typeof(float), typeof(Half), typeof(BFloat16) })
            for (int p = 1; p <= 4; p++)
                foreach (long bucketElements in new long[] { 7, 64, 1 << 20 })
                    yield return new TestCaseData(t, p, bucketElements).SetArgDisplayNames(t.Name, $"dp={p}", $"bucket={bucketElements} elements");
    }

    private static T To<T>(float x) where T : unmanaged => MixedPrecisionGemmTests.To<T>(x);
    private static double Wide<T>(T x) where T : unmanaged => MixedPrecisionGemmTests.Wide(x);
    private static int Size<T>() where T : unmanaged => System.Runtime.CompilerServices.Unsafe.SizeOf<T>();

    private static T[] RandomGradient<T>(Random rng, long n) where T : unmanaged
    {
        var a = new T[n];
        for (long i = 0; i < n; i++) a[i] = To<T>((float)(rng.NextDouble() * 2 - 1) * MathF.Pow(2, rng.Next(-4, 4)));
        return a;
    }

    // The contract, emulated: fp32 sum in rank order, times fl(1/p) in fp32.
    private static float Fp32Average<T>(T[][] perRank, long i) where T : unmanaged
    {
        float s = (float)Wide(perRank[0][i]);
        for (int q = 1; q < perRank.Length; q++) s += (float)Wide(perRank[q][i]);
        return perRank.Length == 1 ? s : s * (1f / perRank.Length);
    }

    private static (double Value, double Tolerance) Reference64<T>(T[][] perRank, long i, bool roundedTo16) where T : unmanaged
    {
        int p = perRank.Length;
        double sum = 0, mag = 0;
        foreach (var g in perRank)
        {
            sum += Wide(g[i]);
            mag += Math.Abs(Wide(g[i]));
        }
        double avg = sum / p;
        double tol = (p + 1) * Math.Pow(2, -24) * mag / p;
        if (roundedTo16) tol += Math.Abs(avg) * (typeof(T) == typeof(Half) ? Math.Pow(2, -11) : Math.Pow(2, -8)) + Math.Pow(2, -25);
        return (avg, tol + 1e-300);
    }

    private static ushort Bits16<T>(T x) where T : unmanaged => System.Runtime.CompilerServices.Unsafe.As<T, ushort>(ref x);

    private static bool SameBits<T>(T a, T b) where T : unmanaged =>
        typeof(T) == typeof(float) ? BitConverter.SingleToInt32Bits((float)(object)a) == BitConverter.SingleToInt32Bits((float)(object)b)
            : Bits16(a) == Bits16(b);

    [TestCaseSource(nameof(AverageCases))]
    public void AllReduceAverageMatchesTheReference(Type type, int p, long bucketElements) =>
        GetType().GetMethod(nameof(AverageOf), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .MakeGenericMethod(type).Invoke(this, [p, bucketElements, GradientReduction.AllReduceAverage]);

    [TestCaseSource(nameof(AverageCases))]
    public void ReduceScatterShardsAreSlicesOfTheAverage(Type type, int p, long bucketElements) =>
        GetType().GetMethod(nameof(AverageOf), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .MakeGenericMethod(type).Invoke(this, [p, bucketElements, GradientReduction.ReduceScatterAverage]);

    private void AverageOf<T>(int p, long bucketElements, GradientReduction mode) where T : unmanaged
    {
        var rng = NewRandom();
        int n = GradientSizes.Length;
        long total = GradientSizes.Sum();
        const int steps = 2;
        // data[step][rank][gradient]; orders[step][rank]: the order of the marks
        var data = Enumerable.Range(0, steps).Select(_ => Enumerable.Range(0, p)
            .Select(_ => GradientSizes.Select(s => RandomGradient<T>(rng, s)).ToArray()).ToArray()).ToArray();
        var orders = Enumerable.Range(0, steps).Select(_ => Enumerable.Range(0, p)
            .Select(_ => Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray()).ToArray()).ToArray();
        var got = new T[steps][][][];      // all-reduce: [step][rank][gradient]
        var shards = new float[steps][][]; // reduce-scatter: [step][rank]
        var shardOffsets = new long[p];
        int buckets = 0;
        for (int s = 0; s < steps; s++)
        {
            got[s] = new T[p][][];
            shards[s] = new float[p][];
        }
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            var grads = GradientSizes.Select(len => ctx.Device.Allocate<T>(len)).ToArray();
            var sources = GradientSizes.Select(len => ctx.Device.Allocate<T>(len)).ToArray();
            try
            {
                using var reducer = GradientReducer.Create(ctx, grads,
                    bucketElements * Size<T>(), mode);
                Assert.That(reducer.TotalElements, Is.EqualTo(total));
                Assert.That(reducer.BucketCount, Is.EqualTo((int)((total + bucketElements - 1) / bucketElements)));
                if (ctx.Rank == 0) buckets = reducer.BucketCount;
                shardOffsets[ctx.Rank] = reducer.ShardOffset;
                for (int s = 0; s < steps; s++)
                {
                    for (int i = 0; i < n; i++)
                    {
                        grads[i].Fill(To<T>(float.NaN), ctx.Stream);
                        sources[i].CopyFrom(data[s][ctx.Rank][i], ctx.Stream);
                    }
                    reducer.Shard?.Fill(float.NaN, ctx.Stream);
                    foreach (int i in orders[s][ctx.Rank])
                    {
                        // backward "produces" gradient i on the compute stream (asynchronously), then marks it
                        sources[i].CopyTo(grads[i], ctx.Stream, 0, 0, GradientSizes[i]);
                        reducer.MarkReady(i);
                    }
                    Assert.That(reducer.StartedBuckets, Is.EqualTo(reducer.BucketCount));
                    reducer.Finish();
                    Assert.That(reducer.StartedBuckets, Is.Zero, "Finish readies the next step");
                    got[s][ctx.Rank] = grads.Select((g, i) => g.ToArray(ctx.Stream)[..(int)GradientSizes[i]]).ToArray();
                    if (reducer.Shard is { } shard) shards[s][ctx.Rank] = shard.ToArray(ctx.Stream)[..(int)reducer.ShardLength];
                }
            }
            finally
            {
                foreach (var b in grads.Concat(sources)) b.Dispose();
            }
        });
        TestContext.Out.WriteLine($"{total} elements, {buckets} buckets");
        bool to16 = typeof(T) != typeof(float);
        for (int s = 0; s < steps; s++)
        {
            var flat = Enumerable.Range(0, p).Select(r => data[s][r].SelectMany(g => g).ToArray()).ToArray();
            if (mode == GradientReduction.AllReduceAverage)
            {
                for (int r = 0; r < p; r++)
                {
                    var mine = got[s][r].SelectMany(g => g).ToArray();
                    for (long i = 0; i < total; i++)
                    {
                        T want = p == 1 ? flat[0][i] : To<T>(Fp32Average(flat, i));
                        var (v, tol) = Reference64(flat, i, to16);
                        if (!SameBits(mine[i], want) || !(Math.Abs(Wide(mine[i]) - v) <= tol))
                            Assert.Fail($"step {s}, rank {r}, flat element {i}: got {Wide(mine[i]):R}, expected {Wide(want):R} " +
                                        $"(float64 reference {v:R} ± {tol:E2})");
                    }
                }
            }
            else
            {
                long covered = 0;
                for (int r = 0; r < p; r++)
                {
                    long len = total / p + (r < total % p ? 1 : 0);
                    Assert.That(shardOffsets[r], Is.EqualTo(covered), $"rank {r}'s shard offset");
                    Assert.That(shards[s][r], Has.Length.EqualTo(len), $"rank {r}'s shard length");
                    for (long j = 0; j < len; j++)
                    {
                        long i = covered + j;
                        float want = Fp32Average(flat, i);
                        var (v, tol) = Reference64(flat, i, roundedTo16: false);
                        float g = shards[s][r][j];
                        if (BitConverter.SingleToInt32Bits(g) != BitConverter.SingleToInt32Bits(want) || !(Math.Abs(g - v) <= tol))
                            Assert.Fail($"step {s}, rank {r}, shard element {j} (flat {i}): got {g:R}, expected {want:R} (float64 {v:R} ± {tol:E2})");
                    }
                    covered += len;
                }
                Assert.That(covered, Is.EqualTo(total), "the shards tile the flat gradient");
                // the gradients themselves are left as they were
                for (int r = 0; r < p; r++)
                    for (int i = 0; i < n; i++)
                        for (int j = 0; j < GradientSizes[i]; j++)
                            Assert.That(SameBits(got[s][r][i][j], data[s][r][i][j]), $"rank {r}'s gradient {i} changed in reduce-scatter mode");
            }
        }
    }

    [Test]
    public void TheFirstBucketIsReducedBeforeTheLastGradientIsMarked()
    {
        var rng = NewRandom();
        const int p = 2;
        long[] sizes = [64, 64, 64];
        var data = Enumerable.Range(0, p).Select(_ => sizes.Select(s => RandomArray(rng, s)).ToArray()).ToArray();
        var got = new float[p][];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            var grads = data[ctx.Rank].Select(d => Upload(d, ctx.Device, ctx.Stream)).ToArray();
            try
            {
                using var reducer = new GradientReducer(ctx, grads, bucketBytes: 64 * sizeof(float));
                Assert.That(reducer.BucketCount, Is.EqualTo(3));
                ctx.Synchronize();
                ulong before = group.CollectiveCount(ctx.Rank);
                reducer.MarkReady(2); // bucket 0 is gradient 2
                Assert.That(reducer.StartedBuckets, Is.EqualTo(1));
                reducer.CommunicationStream!.Synchronize();
                // bucket 0's all-reduce has run (with the other rank's) while gradients 0 and 1 are still "being computed"
                Assert.That(group.CollectiveCount(ctx.Rank), Is.EqualTo(before + 1));
                reducer.MarkReady(0); // bucket 2 is ready but must wait for bucket 1 (buckets start in order)
                Assert.That(reducer.StartedBuckets, Is.EqualTo(1));
                reducer.MarkReady(1);
                Assert.That(reducer.StartedBuckets, Is.EqualTo(3));
                reducer.Finish();
                got[ctx.Rank] = grads.SelectMany(g => g.ToArray(ctx.Stream)).ToArray(); // ordered after Finish's wait
                Assert.That(group.CollectiveCount(ctx.Rank), Is.EqualTo(before + 3));
            }
            finally
            {
                foreach (var g in grads) g.Dispose();
            }
        });
        var flat = data.Select(d => d.SelectMany(g => g).ToArray()).ToArray();
        var want = Enumerable.Range(0, flat[0].Length).Select(i => (flat[0][i] + flat[1][i]) * 0.5f).ToArray();
        for (int r = 0; r < p; r++) Reference.AssertBitwise(got[r], want, $"rank {r}");
    }

    [Test]
    public void AGradientNeverMarkedFailsFinishNamingIt()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(10));
        var ctx = group[0];
        using var a = Poisoned(10, ctx.Device, ctx.Stream);
        using var b = Poisoned(20, ctx.Device, ctx.Stream);
        using var c = Poisoned(30, ctx.Device, ctx.Stream);
        using var reducer = new GradientReducer(ctx, [a, b, c], bucketBytes: 40);
        reducer.MarkReady(2);
        reducer.MarkReady(0);
        var e = Assert.Throws<InvalidOperationException>(() => reducer.Finish())!;
        Assert.That(e.Message, Does.Contain("gradient 1 of 3 was never marked"));
        var twice = Assert.Throws<InvalidOperationException>(() => reducer.MarkReady(0))!;
        Assert.That(twice.Message, Does.Contain("gradient 0 is marked ready twice"));
        reducer.MarkReady(1);
        reducer.Finish(); // now complete
        reducer.MarkReady(1); // the next step
        Assert.That(Assert.Throws<InvalidOperationException>(() => reducer.Finish())!.Message, Does.Contain("gradients 0, 2 of 3 were never marked"));
    }

    [Test]
    public void BadArgumentsAreNamed()
    {
        using var group = ProcessGroup.CreateLocal(Dev, 1, TimeSpan.FromSeconds(10));
        var ctx = group[0];
        using var a = Poisoned(10, ctx.Device, ctx.Stream);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new GradientReducer(ctx, [a], bucketBytes: 3))!.ParamName,
            Is.EqualTo("bucketBytes"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => new GradientReducer(ctx, null!))!.ParamName, Is.EqualTo("gradients"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => new GradientReducer(null!, [a]))!.ParamName, Is.EqualTo("dataParallel"));
        Assert.That(Assert.Throws<ArgumentNullException>(() => new GradientReducer(ctx, [a, null!]))!.Message, Does.Contain("gradients[1]"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new GradientReducer(ctx, [a], mode: (GradientReduction)7))!.ParamName,
            Is.EqualTo("mode"));
        using var ints = ctx.Device.Allocate<int>(4);
        Assert.Throws<NotSupportedException>(() => GradientReducer.Create(ctx, [ints]));
        using var reducer = new GradientReducer(ctx, [a]);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => reducer.MarkReady(1))!.ParamName, Is.EqualTo("gradientIndex"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => reducer.MarkReady(-1))!.ParamName, Is.EqualTo("gradientIndex"));
    }
}
