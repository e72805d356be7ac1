using System.Numerics.Tensors;
using Shardwise.Parallel;
using Shardwise.Parallel.Interop;

namespace Shardwise.Tests;

/// <summary>
/// System.Numerics.Tensors interop: host tensors (dense, padded rows, offset views, 3-D, column-major, broadcast) in and
/// out of Gemm, ShardedGemm, the layers and WeightSource. Results against float64 references on fresh random data,
/// outputs poisoned (NaN) before each run and the padding around strided outputs checked untouched; zero copy proven by
/// pointers and by writes through the wrapped buffer, and by the absence of staging allocations.
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public unsafe class TensorInteropTests(Backend backend) : BackendTest(backend)
{
    private const float Sentinel = 7.25f;

    /// <summary>A rows × cols view with row stride <paramref name="ld"/> starting at element <paramref name="start"/> of a
    /// random backing array (padding random too).</summary>
    private static Tensor<float> Strided(Random rng, long rows, long cols, long ld, int start, out float[] backing)
    {
        backing = RandomArray(rng, start + (rows - 1) * ld + cols + 3);
        return Tensor.Create(backing, start, [(nint)rows, (nint)cols], [(nint)ld, 1]);
    }

    /// <summary>An output view like <see cref="Strided"/>: the view is NaN, everything around it <see cref="Sentinel"/>.</summary>
    private static Tensor<float> PoisonedOutput(long rows, long cols, long ld, int start, out float[] backing)
    {
        backing = new float[start + (rows - 1) * ld + cols + 3];
        Array.Fill(backing, Sentinel);
        var t = Tensor.Create(backing, start, [(nint)rows, (nint)cols], [(nint)ld, 1]);
        t.Fill(float.NaN);
        return t;
    }

    private static float[] Flat(ReadOnlyTensorSpan<float> t)
    {
        var a = new float[t.FlattenedLength];
        t.FlattenTo(a);
        return a;
    }

    /// <summary>Every backing element outside the rows × cols view at (start, ld) still holds the sentinel.</summary>
    private static void AssertPaddingUntouched(float[] backing, long rows, long cols, long ld, int start, string what)
    {
        for (long i = 0; i < backing.Length; i++)
        {
            long rel = i - start;
            bool inside = rel >= 0 && rel / ld < rows && rel % ld < cols;
            if (!inside && backing[i] != Sentinel)
                Assert.Fail($"{what}: element {i} outside the view was overwritten ({backing[i]:R})");
        }
    }

    private static nint AddressOf(float[] array, int index)
    {
        fixed (float* p = &array[index]) return (nint)p;
    }

    // ------------------------------------------------------------------------------------------ zero copy

    [Test]
    public void WrapPinsTheTensorsOwnMemoryAndWritesLandInTheTensor()
    {
        var rng = NewRandom();
        const long rows = 5, cols = 7, ld = 11;
        const int start = 4;
        var t = Strided(rng, rows, cols, ld, start, out var backing);
        if (Backend != Backend.Cpu)
        {
            var e = Assert.Throws<ArgumentException>(() => t.Wrap(Str));
            Assert.That(e!.ParamName, Is.EqualTo("stream"));
            return;
        }
        Assert.That(TensorInterop.CanWrap(t), Is.True);
        var fresh = RandomArray(rng, cols);
        using (var hm = t.Wrap(Str))
        {
            Assert.That(hm.IsZeroCopy, Is.True);
            Assert.That(hm.View.Rows, Is.EqualTo(rows));
            Assert.That(hm.View.Cols, Is.EqualTo(cols));
            Assert.That(hm.View.Ld, Is.EqualTo(ld), "the row stride becomes the leading dimension");
            Assert.That(hm.View.Buffer.IsOwned, Is.False);
            // The wrapped buffer starts at the view's first element (not at the backing array's start).
            Assert.That(hm.View.Buffer.Pointer, Is.EqualTo(AddressOf(backing, start)));
            // A write through the device buffer (row 3) is visible in the tensor.
            hm.View.Buffer.CopyFrom(fresh, Str, hm.View.Offset + 3 * hm.View.Ld);
            for (int j = 0; j < cols; j++)
                Assert.That(t[3, j], Is.EqualTo(fresh[j]), $"t[3, {j}]");
        }
        Assert.That(backing[start + 3 * ld + 2], Is.EqualTo(fresh[2]));
    }

    [Test]
    public void WrappedGemmWritesTheResultIntoTheTensorBeforeDisposeReturns()
    {
        var rng = NewRandom();
        const long m = 96, k = 80, n = 72;
        var a = Strided(rng, m, k, k + 5, 2, out _);
        var b = Tensor.Create(RandomArray(rng, k * n), [(nint)k, (nint)n]);
        var c = PoisonedOutput(m, n, n + 3, 1, out var cBacking);
        var (want, mag) = Reference.Gemm(Flat(a), k, false, Flat(b), n, false, m, n, k);
        using (var ha = a.WrapOrCopy(Str, copyBack: false))
        using (var hb = b.WrapOrCopy(Str, copyBack: false))
        using (var hc = c.WrapOrCopy(Str))
        {
            Assert.That(hc.IsZeroCopy, Is.EqualTo(Backend == Backend.Cpu));
            Gemm.Multiply(Str, ha.View, hb.View, hc.View); // queued only: hc's Dispose waits for it
        }
        Reference.AssertClose(Flat(c), n, want, mag, m, n, k, "C");
        AssertPaddingUntouched(cBacking, m, n, n + 3, 1, "C");
    }

    [Test]
    public void WrapOrCopyCopiesANonWrappableOutputBackOnDispose()
    {
        var rng = NewRandom();
        const long m = 33, k = 27, n = 21;
        var a = Tensor.Create(RandomArray(rng, m * k), [(nint)m, (nint)k]);
        var b = Tensor.Create(RandomArray(rng, k * n), [(nint)k, (nint)n]);
        var cBacking = new float[m * n];
        Array.Fill(cBacking, float.NaN);
        var c = Tensor.Create(cBacking, 0, [(nint)m, (nint)n], [1, (nint)m]); // column-major: needs a copy
        var (want, mag) = Reference.Gemm(Flat(a), k, false, Flat(b), n, false, m, n, k);
        using (var ha = a.WrapOrCopy(Str, copyBack: false))
        using (var hb = b.WrapOrCopy(Str, copyBack: false))
        using (var hc = c.WrapOrCopy(Str))
        {
            Assert.That(hc.IsZeroCopy, Is.False);
            Gemm.Multiply(Str, ha.View, hb.View, hc.View);
            Assert.That(cBacking, Has.All.NaN, "nothing reaches the tensor before Dispose copies back");
        }
        Reference.AssertClose(Flat(c), n, want, mag, m, n, k, "C (column-major, copied back)");
    }

    [Test]
    public void ShardedGemmOnDenseTensorsAllocatesNoStagingCopy()
    {
        if (Backend != Backend.Cpu) Assert.Ignore("zero copy of host memory is a CPU-device property; CUDA stages copies by design");
        var rng = NewRandom();
        const long m = 256, k = 64, n = 512;
        var w = RandomArray(rng, k * n);
        var x = Tensor.Create(RandomArray(rng, m * k), [(nint)m, (nint)k]);
        var y = Tensor.Create(new float[m * n], [(nint)m, (nint)n]);
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        gemm.Forward(x, y); // warm up (JIT)
        y.Fill(float.NaN);
        long before = GC.GetAllocatedBytesForCurrentThread();
        gemm.Forward(x, y);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        // A staged path would allocate at least the 512 KiB host copy of y (and of x); the wrapped one only small handles.
        Assert.That(allocated, Is.LessThan(m * n * sizeof(float) / 8), "bytes allocated by one Forward");
        var (want, mag) = Reference.Gemm(Flat(x), k, false, w, n, false, m, n, k);
        Reference.AssertClose(Flat(y), n, want, mag, m, n, k, "Y");
    }

    // ------------------------------------------------------------------------------------------ Gemm

    private static IEnumerable<TestCaseData> GemmCases()
    {
        yield return new TestCaseData(false, false, false, 0f).SetArgDisplayNames("dense");
        yield return new TestCaseData(true, false, false, 0f).SetArgDisplayNames("padded-offset-views");
        yield return new TestCaseData(true, true, false, 0.5f).SetArgDisplayNames("transA+beta");
        yield return new TestCaseData(false, false, true, 0f).SetArgDisplayNames("transB+bias+gelu");
    }

    [TestCaseSource(nameof(GemmCases))]
    public void TensorGemmMatchesTheFloat64Reference(bool strided, bool transA, bool transB, float beta)
    {
        var rng = NewRandom();
        const long m = 37, k = 53, n = 29;
        long ldPad = strided ? 4 : 0;
        int start = strided ? 3 : 0;
        var a = transA ? Strided(rng, k, m, m + ldPad, start, out _) : Strided(rng, m, k, k + ldPad, start, out _);
        var b = transB ? Strided(rng, n, k, k + ldPad, start, out _) : Strided(rng, k, n, n + ldPad, start, out _);
        var bias = transB ? Tensor.Create(RandomArray(rng, n), [(nint)n]) : null;
        float[] cBacking;
        Tensor<float> c;
        float[]? cOld = null;
        if (beta != 0)
        {
            c = Strided(rng, m, n, n + ldPad, start, out cBacking);
            cOld = Flat(c);
        }
        else c = PoisonedOutput(m, n, n + ldPad, start, out cBacking);
        var (want, mag) = Reference.Gemm(Flat(a), transA ? m : k, transA, Flat(b), transB ? k : n, transB, m, n, k,
            alpha: 1.5f, beta: beta, c: cOld, ldc: n, bias: bias is null ? null : Flat(bias), gelu: transB);
        TensorGemm.Multiply(Str, a, b, c, alpha: 1.5f, beta: beta, transA: transA, transB: transB,
            bias: bias is null ? default : bias.AsReadOnlyTensorSpan(), epilogue: transB ? Epilogue.Gelu : Epilogue.None);
        Reference.AssertClose(Flat(c), n, want, mag, m, n, k, "C");
        if (beta == 0) AssertPaddingUntouched(cBacking, m, n, n + ldPad, start, "C");
    }

    [Test]
    public void LayoutsThatCannotBeWrappedAreCopiedInAndOut()
    {
        var rng = NewRandom();
        const long m = 19, k = 23, n = 17;
        // A: column-major (strides [1, m]) — the transpose of a row-major k × m array.
        var aT = RandomArray(rng, k * m);
        var a = Tensor.Create(aT, 0, [(nint)m, (nint)k], [1, (nint)m]);
        // B: one random row broadcast over all k rows (stride 0).
        var bRow = RandomArray(rng, n);
        var b = Tensor.Create(bRow, 0, [(nint)k, (nint)n], [0, 1]);
        // C: column-major output.
        var cBacking = new float[m * n];
        Array.Fill(cBacking, float.NaN);
        var c = Tensor.Create(cBacking, 0, [(nint)m, (nint)n], [1, (nint)m]);
        Assert.That(TensorInterop.CanWrap(a), Is.False, "column-major A");
        Assert.That(TensorInterop.CanWrap(b), Is.False, "broadcast B");
        Assert.That(TensorInterop.CanWrap(c), Is.False, "column-major C");
        var bDense = new float[k * n];
        for (long p = 0; p < k; p++) Array.Copy(bRow, 0, bDense, p * n, n);
        var (want, mag) = Reference.Gemm(aT, m, true, bDense, n, false, m, n, k);
        TensorGemm.Multiply(Str, a, b, c);
        Reference.AssertClose(Flat(c), n, want, mag, m, n, k, "C (column-major)");
        // The column-major result really is in column-major order in the backing array.
        Assert.That(cBacking[1], Is.EqualTo(c[1, 0]));
    }

    [Test]
    public void ThreeDimensionalActivationsFlattenIntoRows()
    {
        var rng = NewRandom();
        const long batch = 3, tokens = 5, k = 24, n = 40;
        long m = batch * tokens;
        var x = Tensor.Create(RandomArray(rng, m * k), [(nint)batch, (nint)tokens, (nint)k]);
        var w = RandomArray(rng, k * n);
        var y = Tensor.Create(new float[m * n], [(nint)batch, (nint)tokens, (nint)n]);
        y.Fill(float.NaN);
        Assert.That(TensorInterop.MatrixShape(x), Is.EqualTo((m, k)));
        using var group = ProcessGroup.CreateLocal(Dev, 3, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        gemm.Forward(x, y);
        var (want, mag) = Reference.Gemm(Flat(x), k, false, w, n, false, m, n, k);
        Reference.AssertClose(Flat(y), n, want, mag, m, n, k, "Y [batch, tokens, n]");
    }

    // ------------------------------------------------------------------------------------------ ShardedGemm and layers

    [TestCase(1)]
    [TestCase(3)]
    [TestCase(4)]
    public void ShardedGemmOnStridedTensorsWithBiasMatchesTheReference(int p)
    {
        var rng = NewRandom();
        const long m = 21, k = 45, n = 30;
        var x = Strided(rng, m, k, k + 7, 5, out _);
        var y = PoisonedOutput(m, n, n + 2, 3, out var yBacking);
        var w = RandomArray(rng, k * n);
        var bias = Tensor.Create(RandomArray(rng, n), [1, (nint)n]);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(w, k, n));
        gemm.Forward(x, y, bias, Epilogue.Gelu);
        var (want, mag) = Reference.Gemm(Flat(x), k, false, w, n, false, m, n, k, bias: Flat(bias), gelu: true);
        Reference.AssertClose(Flat(y), n, want, mag, m, n, k, "Y");
        AssertPaddingUntouched(yBacking, m, n, n + 2, 3, "Y");
    }

    [TestCase(2, true)]
    [TestCase(3, false)]
    public void ColumnParallelLinearOnTensorsMatchesTheReference(int p, bool gather)
    {
        var rng = NewRandom();
        const long m = 13, k = 31, n = 26;
        var x = Strided(rng, m, k, k + 3, 1, out _);
        var w = RandomArray(rng, k * n);
        var b = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(Flat(x), k, false, w, n, false, m, n, k, bias: b);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var plan = ShardingPlan.Even(n, p);
        var ys = new Tensor<float>[p];
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(b, 1, n), gather);
            long cols = gather ? n : plan.Size(ctx.Rank);
            var y = Tensor.Create(new float[m * cols], [(nint)m, (nint)cols]);
            y.Fill(float.NaN);
            layer.Forward(x, y); // synchronous: y holds the result on return
            ys[ctx.Rank] = y;
        });
        for (int r = 0; r < p; r++)
        {
            if (gather)
            {
                Reference.AssertClose(Flat(ys[r]), n, want, mag, m, n, k, $"rank {r}");
                continue;
            }
            long off = plan.Offset(r), nr = plan.Size(r);
            var got = Flat(ys[r]);
            var wantR = new double[m * nr];
            var magR = new double[m * nr];
            for (long i = 0; i < m; i++)
                for (long j = 0; j < nr; j++)
                {
                    wantR[i * nr + j] = want[i * n + off + j];
                    magR[i * nr + j] = mag[i * n + off + j];
                }
            Reference.AssertClose(got, nr, wantR, magR, m, nr, k, $"rank {r} (its columns)");
        }
    }

    [Test]
    public void RowParallelLinearOnTensorsMatchesTheReference()
    {
        var rng = NewRandom();
        const long m = 11, k = 40, n = 18;
        const int p = 3;
        var x = Tensor.Create(RandomArray(rng, m * k), [(nint)m, (nint)k]);
        var w = RandomArray(rng, k * n);
        var b = RandomArray(rng, n);
        var (want, mag) = Reference.Gemm(Flat(x), k, false, w, n, false, m, n, k, bias: b);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var ys = new Tensor<float>[p];
        var backings = new float[p][];
        Spmd.Run(group, ctx =>
        {
            using var layer = new RowParallelLinear(ctx, WeightSource.FromArray(w, k, n), WeightSource.FromArray(b, 1, n));
            var y = PoisonedOutput(m, n, n + 4, 2, out var backing); // strided: the layer reduces in scratch
            layer.Forward(x, y);
            ys[ctx.Rank] = y;
            backings[ctx.Rank] = backing;
        });
        for (int r = 0; r < p; r++)
        {
            Reference.AssertClose(Flat(ys[r]), n, want, mag, m, n, k, $"rank {r}");
            AssertPaddingUntouched(backings[r], m, n, n + 4, 2, $"rank {r}");
        }
    }

    [TestCase(1)]
    [TestCase(4)]
    public void FeedForwardOnTensorsWithTensorWeightsMatchesTheReference(int p)
    {
        var rng = NewRandom();
        const long batch = 2, tokens = 7, h = 24, f = 58;
        long m = batch * tokens;
        var x = Tensor.Create(RandomArray(rng, m * h), [(nint)batch, (nint)tokens, (nint)h]);
        // W1 (h × f) stored transposed, as torch.nn.Linear stores its weight (out × in); W2 in a padded view.
        var w1Stored = RandomArray(rng, f * h, 0.5f);
        var w1Out = Tensor.Create(w1Stored, [(nint)f, (nint)h]);
        var w2 = Strided(rng, f, h, h + 3, 2, out _);
        for (long i = 0; i < f; i++) for (long j = 0; j < h; j++) w2[(nint)i, (nint)j] *= 0.5f;
        var b1 = Tensor.Create(RandomArray(rng, f), [(nint)f]);
        var b2 = Tensor.Create(RandomArray(rng, h), [(nint)h]);
        var w1 = new float[h * f];
        for (long i = 0; i < h; i++) for (long j = 0; j < f; j++) w1[i * f + j] = w1Stored[j * h + i];
        var (want, tol) = Reference.FeedForward(Flat(x), w1, Flat(b1), Flat(w2), Flat(b2), m, h, f);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var ys = new Tensor<float>[p];
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, w1Out.ToWeightSource(transpose: true), b1.ToWeightSource(),
                w2.ToWeightSource(), b2.ToWeightSource());
            var y = Tensor.Create(new float[m * h], [(nint)batch, (nint)tokens, (nint)h]);
            y.Fill(float.NaN);
            ffn.Forward(x, y);
            ys[ctx.Rank] = y;
        });
        for (int r = 0; r < p; r++)
        {
            var got = Flat(ys[r]);
            int bad = 0;
            string first = "";
            for (long i = 0; i < m * h; i++)
                if (!(Math.Abs(got[i] - want[i]) <= tol[i]) && bad++ == 0)
                    first = $"[{i}] got {got[i]:R}, expected {want[i]:R} ± {tol[i]:E2}";
            Assert.That(bad, Is.Zero, $"rank {r}: {bad} wrong; first {first}");
        }
    }

    // ------------------------------------------------------------------------------------------ WeightSource, copies

    [Test]
    public void TensorWeightSourceReadsAnyBlockOfStridedTransposedAndFlattenedTensors()
    {
        var rng = NewRandom();
        var data = RandomArray(rng, 200);
        // 2-D padded view: 6 × 9 with row stride 13 from element 4.
        var padded = Tensor.Create(data, 4, [6, 9], [13, 1]);
        // The same memory read transposed: 9 × 6.
        // 3-D: [2, 3, 5] with strides [40, 12, 2] (non-unit last stride, non-collapsing rows) → 6 × 5.
        var threeD = Tensor.Create(data, 1, [2, 3, 5], [40, 12, 2]);
        void Check(WeightSource src, Func<long, long, float> expected, long rows, long cols, string what)
        {
            Assert.That((src.Rows, src.Cols), Is.EqualTo((rows, cols)), what);
            var block = new float[(rows - 1) * (cols - 2)];
            src.Read(1, 2, rows - 1, cols - 2, block);
            for (long i = 0; i < rows - 1; i++)
                for (long j = 0; j < cols - 2; j++)
                    Assert.That(block[i * (cols - 2) + j], Is.EqualTo(expected(1 + i, 2 + j)), $"{what} ({1 + i}, {2 + j})");
        }
        Check(padded.ToWeightSource(), (i, j) => data[4 + i * 13 + j], 6, 9, "padded");
        Check(padded.ToWeightSource(transpose: true), (i, j) => data[4 + j * 13 + i], 9, 6, "transposed");
        Check(threeD.ToWeightSource(), (i, j) => data[1 + i / 3 * 40 + i % 3 * 12 + j * 2], 6, 5, "3-D strided");
    }

    [Test]
    public void MatrixViewCopiesToAndFromStridedTensors()
    {
        var rng = NewRandom();
        const long rows = 6, cols = 5;
        var src = Tensor.Create(RandomArray(rng, rows * cols), 0, [(nint)rows, (nint)cols], [1, (nint)rows]); // column-major
        using var buffer = Poisoned(rows * (cols + 2));
        var view = buffer.AsMatrix(rows, cols, cols + 2);
        view.CopyFrom(src, Str);
        var dst = PoisonedOutput(rows, cols, cols + 1, 2, out var backing);
        view.CopyTo(dst, Str);
        Assert.That(Flat(dst), Is.EqualTo(Flat(src)));
        AssertPaddingUntouched(backing, rows, cols, cols + 1, 2, "destination");
    }

    // ------------------------------------------------------------------------------------------ errors

    [Test]
    public void WrapRejectsLayoutsThatNeedACopyAndNamesTheArgument()
    {
        if (Backend != Backend.Cpu) Assert.Ignore("on CUDA Wrap rejects the stream first (tested in WrapPinsTheTensorsOwnMemory...)");
        var data = new float[64];
        var columnMajor = Tensor.Create(data, 0, [4, 5], [1, 4]);
        var broadcast = Tensor.Create(data, 0, [4, 5], [0, 1]);
        var noFlatten = Tensor.Create(data, 0, [2, 3, 4], [20, 5, 1]); // 20 != 5 * 3
        var e1 = Assert.Throws<ArgumentException>(() => columnMajor.Wrap(Str));
        Assert.That(e1!.ParamName, Is.EqualTo("tensor"));
        Assert.That(e1.Message, Does.Contain("tensor has shape [4, 5] (strides [1, 4])").And.Contain("last dimension has stride 4"));
        var e2 = Assert.Throws<ArgumentException>(() => broadcast.Wrap(Str));
        Assert.That(e2!.ParamName, Is.EqualTo("tensor"));
        Assert.That(e2.Message, Does.Contain("broadcast"));
        var e3 = Assert.Throws<ArgumentException>(() => noFlatten.Wrap(Str));
        Assert.That(e3!.ParamName, Is.EqualTo("tensor"));
        Assert.That(e3.Message, Does.Contain("flatten"));
        // The same layouts are fine through WrapOrCopy (as inputs).
        using var copy = columnMajor.WrapOrCopy(Str, copyBack: false);
        Assert.That(copy.IsZeroCopy, Is.False);
    }

    [Test]
    public void BadShapesAndAliasedOutputsThrowNamingTheArgument()
    {
        var rng = NewRandom();
        const long m = 4, k = 6, n = 8;
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(RandomArray(rng, k * n), k, n));
        var x = Tensor.Create(RandomArray(rng, m * k), [(nint)m, (nint)k]);
        var xWrong = Tensor.Create(RandomArray(rng, m * (k + 1)), [(nint)m, (nint)(k + 1)]);
        var y = Tensor.Create(new float[m * n], [(nint)m, (nint)n]);
        var yWrong = Tensor.Create(new float[(m + 1) * n], [(nint)(m + 1), (nint)n]);
        var yBroadcast = Tensor.Create(new float[n], 0, [(nint)m, (nint)n], [0, 1]);
        var biasWrong = Tensor.Create(new float[n - 1], [(nint)(n - 1)]);
        var empty = Tensor.Create(Array.Empty<float>(), [0, (nint)k]);

        void Expect(Action call, string param, params string[] fragments)
        {
            var e = Assert.Throws<ArgumentException>(call);
            Assert.That(e!.ParamName, Is.EqualTo(param), e.Message);
            foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f));
        }
        Expect(() => gemm.Forward(xWrong, y), "x", "[4, 7]", $"expected {m} x {k}");
        Expect(() => gemm.Forward(x, yWrong), "y", "[5, 8]", $"expected {m} x {n}");
        Expect(() => gemm.Forward(x, yBroadcast), "y", "broadcast");
        Expect(() => gemm.Forward(x, y, biasWrong), "bias", $"expected 1 x {n}");
        Expect(() => gemm.Forward(empty, y), "x", "no element");
        Expect(() => TensorGemm.Multiply(Str, x, xWrong, y), "b", "[4, 7]");
        Expect(() => TensorGemm.Multiply(Str, x, Tensor.Create(new float[k * n], [(nint)k, (nint)n]), yWrong), "c", "[5, 8]");
        Expect(() => Tensor.Create(new float[24], [2, 3, 4]).ToWeightSource(transpose: true), "tensor", "2-D");
        using var buffer = Dev.Allocate<float>(m * n);
        Expect(() => buffer.AsMatrix(m, n).CopyTo(yWrong, Str), "destination", "[5, 8]", $"expected {m} x {n}");
        Expect(() => buffer.AsMatrix(m, n).CopyFrom(xWrong, Str), "source", "[4, 7]", $"expected {m} x {n}");
    }
}
