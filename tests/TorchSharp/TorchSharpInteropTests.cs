using System.Numerics.Tensors;
using Shardwise.Parallel;
using Shardwise.Parallel.Interop;
using Shardwise.Tests;
using TorchSharp;
using TorchSharp.Modules;

namespace Shardwise.TorchSharp.Tests;

/// <summary>
/// Shardwise running on TorchSharp tensors' own memory (no copies in or out), compared with torch.matmul, torch.nn.Linear
/// and torch.nn.GELU(tanh) — the approximation of Shardwise's GeLU epilogue — and with float64 references.
/// CPU only (TorchSharp-cpu); docs/interop.md shows the CUDA pattern. Ignored where libtorch cannot load (GLIBCXX_3.4.32).
/// </summary>
[TestFixture(Backend.Cpu)]
public unsafe class TorchSharpInteropTests(Backend backend) : BackendTest(backend)
{
    [OneTimeSetUp]
    public void RequireTorch() => TorchAvailability.Require();

    private IDisposable NoGradWithSeed(Random rng)
    {
        torch.manual_seed(rng.Next());
        return torch.no_grad();
    }

    /// <summary>|a - b| ≤ tol element-wise, for two float32 results of the same float64 reference.</summary>
    private static void AssertWithin(float[] actual, float[] expected, double[] tolerance, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        int bad = 0;
        string first = "";
        for (int i = 0; i < actual.Length; i++)
            if (!(Math.Abs(actual[i] - expected[i]) <= tolerance[i]) && bad++ == 0)
                first = $"[{i}] {actual[i]:R} vs {expected[i]:R} (± {tolerance[i]:E2})";
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {actual.Length} differ; first {first}");
    }

    private static double[] Tolerances(double[] magnitude, double[] value, long k)
    {
        var t = new double[magnitude.Length];
        for (int i = 0; i < t.Length; i++) t[i] = 2 * (Reference.Bound(magnitude[i], k) + 2e-7 * Math.Abs(value[i]));
        return t;
    }

    [TestCase(1)]
    [TestCase(3)]
    public void ColumnParallelLinearOnTorchMemoryMatchesTorchLinear(int p)
    {
        var rng = NewRandom();
        using var noGrad = NoGradWithSeed(rng);
        const long m = 17, k = 48, n = 30;
        using var linear = torch.nn.Linear(k, n);
        using var x = torch.randn(new[] { m, k });
        using var want = linear.forward(x);
        var weight = linear.weight!.detach();
        var bias = linear.bias!.detach();
        // float64 reference from the same values: W = weightᵀ (torch stores out × in).
        var wOut = TorchMemory.ToArray(weight);
        var w = new float[k * n];
        for (long i = 0; i < k; i++) for (long j = 0; j < n; j++) w[i * n + j] = wOut[j * k + i];
        var (ref64, mag) = Reference.Gemm(TorchMemory.ToArray(x), k, false, w, n, false, m, n, k, bias: TorchMemory.ToArray(bias));
        Reference.AssertClose(TorchMemory.ToArray(want), n, ref64, mag, m, n, k, "torch.nn.Linear vs the float64 reference");

        var ys = new torch.Tensor[p];
        for (int r = 0; r < p; r++) ys[r] = torch.full(new[] { m, n }, float.NaN);
        var pointers = new (nint Buffer, nint Tensor)[p];
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        Spmd.Run(group, ctx =>
        {
            using var layer = new ColumnParallelLinear(ctx, TorchMemory.LinearWeight(weight), TorchMemory.Bias(bias), gatherOutput: true);
            var xv = TorchMemory.Wrap(ctx.Device, x, out var xb);
            var yv = TorchMemory.Wrap(ctx.Device, ys[ctx.Rank], out var yb);
            using (xb)
            using (yb)
            {
                pointers[ctx.Rank] = (yb.Pointer, TorchMemory.DataPointer(ys[ctx.Rank]));
                layer.Forward(xv, yv);
                ctx.Synchronize(); // the result is in the torch tensor now: nothing is copied back
            }
        });
        var tol = Tolerances(mag, ref64, k);
        for (int r = 0; r < p; r++)
        {
            Assert.That(pointers[r].Buffer, Is.EqualTo(pointers[r].Tensor), $"rank {r}: the wrapped buffer is the torch tensor's memory");
            var got = TorchMemory.ToArray(ys[r]);
            Reference.AssertClose(got, n, ref64, mag, m, n, k, $"rank {r} vs the float64 reference");
            AssertWithin(got, TorchMemory.ToArray(want), tol, $"rank {r} vs torch.nn.Linear");
            ys[r].Dispose();
        }
    }

    [TestCase(2)]
    [TestCase(4)]
    public void ShardedGemmOnStridedTorchViewsMatchesTorchMatmul(int p)
    {
        var rng = NewRandom();
        using var noGrad = NoGradWithSeed(rng);
        const long m = 23, k = 40, n = 36;
        using var xFull = torch.randn(new[] { m, k + 5 });
        using var x = xFull.narrow(1, 3, k);                    // padded rows: row stride k + 5, offset 3
        using var w = torch.randn(new[] { k, n });
        using var yFull = torch.full(new[] { m, n + 2 }, 7.25f);
        using var y = yFull.narrow(1, 1, n);                    // a strided output view
        y.fill_(float.NaN);
        using var want = torch.matmul(x, w);
        var wArr = TorchMemory.ToArray(w);
        var (ref64, mag) = Reference.Gemm(TorchMemory.ToArray(x), k, false, wArr, n, false, m, n, k);
        Reference.AssertClose(TorchMemory.ToArray(want), n, ref64, mag, m, n, k, "torch.matmul vs the float64 reference");

        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        float* wp = (float*)TorchMemory.DataPointer(w);
        using var gemm = new ShardedGemm(group, WeightSource.FromLoader(k, n, (r0, c0, rows, cols, dst) =>
        {
            for (long i = 0; i < rows; i++) new ReadOnlySpan<float>(wp + (r0 + i) * n + c0, (int)cols).CopyTo(dst.Slice((int)(i * cols)));
        }));
        var xv = TorchMemory.Wrap(Dev, x, out var xb);
        var yv = TorchMemory.Wrap(Dev, y, out var yb);
        using (xb)
        using (yb)
        {
            Assert.That(xv.Ld, Is.EqualTo(k + 5));
            Assert.That(xb.Pointer, Is.EqualTo(TorchMemory.DataPointer(xFull) + 3 * sizeof(float)));
            gemm.Forward(xv, yv); // waits for every rank
        }
        var got = TorchMemory.ToArray(y);
        Reference.AssertClose(got, n, ref64, mag, m, n, k, "Y vs the float64 reference");
        AssertWithin(got, TorchMemory.ToArray(want), Tolerances(mag, ref64, k), "Y vs torch.matmul");
        var full = TorchMemory.ToArray(yFull);
        for (long i = 0; i < m; i++)
        {
            Assert.That(full[i * (n + 2)], Is.EqualTo(7.25f), $"row {i}: the column left of the view is untouched");
            Assert.That(full[i * (n + 2) + n + 1], Is.EqualTo(7.25f), $"row {i}: the column right of the view is untouched");
        }
    }

    /// <summary>
    /// Shardwise's GeLU epilogue is torch's GELU with approximate = tanh, not the exact (erf) one: Y = GeLU(X·I) on torch
    /// memory (the identity keeps the product exact) against torch.nn.functional.gelu both ways, for X in [-4, 4] where
    /// the two approximations differ by up to ~5e-4.
    /// </summary>
    [Test]
    public void GeluEpilogueIsTorchsTanhApproximation()
    {
        var rng = NewRandom();
        using var noGrad = NoGradWithSeed(rng);
        const long m = 64, k = 16;
        using var x = torch.rand(new[] { m, k }) * 8 - 4;
        using var identity = torch.eye(k);
        using var tanhGelu = torch.nn.functional.gelu(x, GELU.Approximate.tanh);
        using var exactGelu = torch.nn.functional.gelu(x, GELU.Approximate.none);
        using var y = torch.full(new[] { m, k }, float.NaN);
        using var group = ProcessGroup.CreateLocal(Dev, 2, TimeSpan.FromSeconds(30));
        using var gemm = new ShardedGemm(group, WeightSource.FromArray(TorchMemory.ToArray(identity), k, k));
        var xv = TorchMemory.Wrap(Dev, x, out var xb);
        var yv = TorchMemory.Wrap(Dev, y, out var yb);
        using (xb)
        using (yb)
            gemm.Forward(xv, yv, epilogue: Epilogue.Gelu);
        var got = TorchMemory.ToArray(y);
        var tanhRef = TorchMemory.ToArray(tanhGelu);
        var exactRef = TorchMemory.ToArray(exactGelu);
        double worstTanh = 0, worstExact = 0;
        for (int i = 0; i < got.Length; i++)
        {
            worstTanh = Math.Max(worstTanh, Math.Abs(got[i] - tanhRef[i]));
            worstExact = Math.Max(worstExact, Math.Abs(got[i] - exactRef[i]));
        }
        TestContext.Out.WriteLine($"max |Y - gelu_tanh| = {worstTanh:E2}, max |Y - gelu_erf| = {worstExact:E2}");
        Assert.That(worstTanh, Is.LessThan(1e-5), "largest difference from torch's gelu(approximate: tanh)");
        Assert.That(worstExact, Is.GreaterThan(1e-4), "the exact (erf) GELU is measurably different, so the check above discriminates");
    }

    /// <summary>The FFN through the System.Numerics.Tensors bridge: TensorSpans over the torch tensors' memory (a pointer,
    /// lengths and strides), so TensorInterop wraps them in place.</summary>
    [TestCase(1)]
    [TestCase(4)]
    public void FeedForwardOnTorchMemoryMatchesTorchModules(int p)
    {
        var rng = NewRandom();
        using var noGrad = NoGradWithSeed(rng);
        const long batch = 2, tokens = 9, h = 32, f = 72;
        long m = batch * tokens;
        using var up = torch.nn.Linear(h, f);
        using var down = torch.nn.Linear(f, h);
        using var gelu = torch.nn.GELU(GELU.Approximate.tanh, false); // Shardwise's GeLU is the tanh approximation
        using var x = torch.randn(new[] { batch, tokens, h });
        using var hidden = up.forward(x);
        using var act = gelu.forward(hidden);
        using var want = down.forward(act);
        var w1Out = TorchMemory.ToArray(up.weight!.detach());
        var w2Out = TorchMemory.ToArray(down.weight!.detach());
        var w1 = new float[h * f];
        var w2 = new float[f * h];
        for (long i = 0; i < h; i++) for (long j = 0; j < f; j++) w1[i * f + j] = w1Out[j * h + i];
        for (long i = 0; i < f; i++) for (long j = 0; j < h; j++) w2[i * h + j] = w2Out[j * f + i];
        var (ref64, tol) = Reference.FeedForward(TorchMemory.ToArray(x), w1, TorchMemory.ToArray(up.bias!), w2,
            TorchMemory.ToArray(down.bias!), m, h, f);
        var doubled = tol.Select(t => 2 * t).ToArray();
        var wantArr = TorchMemory.ToArray(want);
        var refArr = ref64.Select(v => (float)v).ToArray();
        AssertWithin(wantArr, refArr, doubled, "torch Linear → GELU(tanh) → Linear vs the float64 reference");

        var ys = new torch.Tensor[p];
        for (int r = 0; r < p; r++) ys[r] = torch.full(new[] { batch, tokens, h }, float.NaN);
        using var group = ProcessGroup.CreateLocal(Dev, p, TimeSpan.FromSeconds(30));
        var w1Src = TorchMemory.LinearWeight(up.weight!.detach());
        var b1Src = TorchMemory.Bias(up.bias!.detach());
        var w2Src = TorchMemory.LinearWeight(down.weight!.detach());
        var b2Src = TorchMemory.Bias(down.bias!.detach());
        Spmd.Run(group, ctx =>
        {
            using var ffn = new ParallelFeedForward(ctx, w1Src, b1Src, w2Src, b2Src);
            var y = ys[ctx.Rank];
            var xs = new ReadOnlyTensorSpan<float>((float*)TorchMemory.DataPointer(x), (nint)x.numel(),
                x.shape.Select(l => (nint)l).ToArray(), x.stride().Select(s => (nint)s).ToArray());
            var yspan = new TensorSpan<float>((float*)TorchMemory.DataPointer(y), (nint)y.numel(),
                y.shape.Select(l => (nint)l).ToArray(), y.stride().Select(s => (nint)s).ToArray());
            if (!TensorInterop.CanWrap(xs) || !TensorInterop.CanWrap(yspan))
                throw new InvalidOperationException("contiguous torch tensors must be wrappable in place");
            ffn.Forward(xs, yspan); // synchronous; writes straight into the torch tensor
        });
        for (int r = 0; r < p; r++)
        {
            var got = TorchMemory.ToArray(ys[r]);
            AssertWithin(got, refArr, tol, $"rank {r} vs the float64 reference");
            AssertWithin(got, wantArr, doubled, $"rank {r} vs torch");
            ys[r].Dispose();
        }
    }
}
