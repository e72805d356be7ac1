using System.Numerics.Tensors;
using Shardwise.Parallel;
using Shardwise.Parallel.Interop;

namespace Shardwise.Tests;

/// <summary>
/// System.Numerics.Tensors tensors of <see cref="Half"/> and <see cref="BFloat16"/> in and out of Shardwise as the float
/// ones are: wrapped without copying on the CPU (dense rows, padded row stride, offset views), copied otherwise
/// (column-major, CUDA), and through <see cref="TensorGemm.Multiply{TIn, TOut}"/>; results against float64 references
/// of the rounded inputs with the tolerance of <see cref="MixedPrecisionGemmTests"/>, outputs poisoned (NaN) first.
/// Also what of the tensors package itself works with a user-defined element type (BFloat16).
/// </summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public unsafe class HalfTensorInteropTests(Backend backend) : BackendTest(backend)
{
    private static T To<T>(float x) where T : unmanaged => MixedPrecisionGemmTests.To<T>(x);
    private static double Wide<T>(T x) where T : unmanaged => MixedPrecisionGemmTests.Wide(x);

    // A rows × cols view with row stride ld at `start` in a random backing array of T; `rounded` holds the float values.
    private static Tensor<T> Strided<T>(Random rng, long rows, long cols, long ld, int start, out T[] backing) where T : unmanaged
    {
        backing = new T[start + (rows - 1) * ld + cols + 3];
        for (int i = 0; i < backing.Length; i++) backing[i] = To<T>((float)(rng.NextDouble() * 2 - 1));
        return Tensor.Create(backing, start, [(nint)rows, (nint)cols], [(nint)ld, 1]);
    }

    private static float[] Rounded<T>(ReadOnlyTensorSpan<T> t) where T : unmanaged
    {
        var a = new T[t.FlattenedLength];
        t.FlattenTo(a);
        return a.Select(x => (float)Wide(x)).ToArray();
    }

    private static void AssertMatches<TOut>(ReadOnlyTensorSpan<TOut> c, float[] a, float[] b, long m, long k, long n, bool transA, string what)
        where TOut : unmanaged
    {
        var (want, mag) = Reference.Gemm(a, transA ? m : k, transA, b, n, false, m, n, k);
        var got = new TOut[c.FlattenedLength];
        c.FlattenTo(got);
        for (long i = 0; i < m * n; i++)
        {
            double tol = MixedPrecisionGemmTests.Tolerance<TOut>(mag[i], want[i], want[i], k);
            double g = Wide(got[i]);
            Assert.That(Math.Abs(g - want[i]) <= tol, $"{what}: element {i}: got {g:R}, expected {want[i]:R} ± {tol:E2}");
        }
    }

    [TestCase(typeof(Half))]
    [TestCase(typeof(BFloat16))]
    public void WrappedTensorsRunTheTypedGemmWithoutCopies(Type t)
    {
        var mi = GetType().GetMethod(nameof(RunWrapped), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        try { mi.MakeGenericMethod(t).Invoke(this, null); }
        catch (System.Reflection.TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
        }
    }

    private void RunWrapped<T>() where T : unmanaged
    {
        var rng = NewRandom();
        const long m = 13, k = 37, n = 21;
        var a = Strided<T>(rng, m, k, k + 5, 3, out var aBacking); // padded rows, offset view: still wrappable
        var b = Strided<T>(rng, k, n, n, 0, out _);
        var cBacking = new T[m * n];
        var c = Tensor.Create(cBacking, [(nint)m, (nint)n]);
        c.Fill(To<T>(float.NaN));
        Assert.That(TensorInterop.CanWrap<T>(a), Is.True);
        if (Backend != Backend.Cpu)
        {
            Assert.That(() => a.Wrap(Str), Throws.ArgumentException.With.Property("ParamName").EqualTo("stream"));
            using var ca = a.WrapOrCopy(Str, copyBack: false);
            Assert.That(ca.IsZeroCopy, Is.False);
            return;
        }
        using (var ha = a.Wrap(Str))
        using (var hb = b.Wrap(Str))
        using (var hc = c.Wrap(Str))
        {
            Assert.That(ha.IsZeroCopy && hb.IsZeroCopy && hc.IsZeroCopy);
            Assert.That(ha.View.Ld, Is.EqualTo(k + 5));
            fixed (T* p = &aBacking[3]) Assert.That(ha.View.Buffer.Pointer, Is.EqualTo((nint)p), "A is the tensor's own memory");
            Gemm.Multiply(Str, ha.View, hb.View, hc.View); // a = b = T, c = T: the result lands in the tensor
        }
        AssertMatches<T>(c, Rounded<T>(a), Rounded<T>(b), m, k, n, false, $"{typeof(T).Name} wrapped");
    }

    [TestCase(typeof(Half), typeof(float))]
    [TestCase(typeof(Half), typeof(Half))]
    [TestCase(typeof(BFloat16), typeof(float))]
    [TestCase(typeof(BFloat16), typeof(BFloat16))]
    public void TensorGemmTakesTypedTensorsOfAnyLayout(Type tin, Type tout)
    {
        var mi = GetType().GetMethod(nameof(RunTensorGemm), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!;
        try { mi.MakeGenericMethod(tin, tout).Invoke(this, null); }
        catch (System.Reflection.TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
        }
    }

    private void RunTensorGemm<TIn, TOut>() where TIn : unmanaged where TOut : unmanaged
    {
        var rng = NewRandom();
        const long m = 19, k = 45, n = 23;
        // A stored k × m and used transposed; B column-major (needs a copy); C padded rows with an offset.
        var aStored = Strided<TIn>(rng, k, m, m, 0, out _);
        var bBacking = Enumerable.Range(0, (int)(k * n)).Select(_ => To<TIn>((float)(rng.NextDouble() * 2 - 1))).ToArray();
        var b = Tensor.Create(bBacking, 0, [(nint)k, (nint)n], [1, (nint)k]);
        Assert.That(TensorInterop.CanWrap<TIn>(b), Is.False);
        var cBacking = new TOut[2 + m * (n + 4)];
        Array.Fill(cBacking, To<TOut>(7.25f));
        var c = Tensor.Create(cBacking, 2, [(nint)m, (nint)n], [(nint)(n + 4), 1]);
        c.Fill(To<TOut>(float.NaN));
        TensorGemm.Multiply<TIn, TOut>(Str, aStored, b, c, transA: true);
        var aRounded = Rounded<TIn>(aStored); // k × m, used transposed
        AssertMatches<TOut>(c, aRounded, Rounded<TIn>(b), m, k, n, true, $"a,b = {typeof(TIn).Name}, c = {typeof(TOut).Name}");
        for (int i = 0; i < cBacking.Length; i++)
        {
            long rel = i - 2;
            bool inside = rel >= 0 && rel / (n + 4) < m && rel % (n + 4) < n;
            if (!inside) Assert.That(Wide(cBacking[i]), Is.EqualTo(7.25), $"padding {i} of C was written");
        }
    }

    [Test]
    public void CopyFromAndCopyToMoveTypedTensorsOfAnyLayout()
    {
        var rng = NewRandom();
        const long rows = 6, cols = 9;
        var src = Strided<BFloat16>(rng, rows, cols, cols + 2, 1, out _);
        using var buf = Dev.Allocate<BFloat16>(rows * cols);
        var view = buf.AsMatrix(rows, cols);
        view.CopyFrom(src, Str);
        var back = new BFloat16[rows * cols];
        var dstBacking = new BFloat16[rows * cols];
        var dst = Tensor.Create(dstBacking, 0, [(nint)rows, (nint)cols], [1, (nint)rows]); // column-major
        view.CopyTo(dst, Str);
        var want = new BFloat16[rows * cols];
        ((ReadOnlyTensorSpan<BFloat16>)src).FlattenTo(want);
        ((ReadOnlyTensorSpan<BFloat16>)dst).FlattenTo(back);
        Assert.That(back.Select(BFloat16.ToBits), Is.EqualTo(want.Select(BFloat16.ToBits)));
        // Half through a staged WrapOrCopy with copy-back
        var h = Tensor.Create(new Half[rows * cols], 0, [(nint)rows, (nint)cols], [1, (nint)rows]);
        using (var hm = h.WrapOrCopy(Str))
        {
            Assert.That(hm.IsZeroCopy, Is.False);
            hm.View.Buffer.Fill((Half)1.5f, Str);
        }
        Assert.That(Rounded<Half>(h), Is.All.EqualTo(1.5f));
    }

    [Test]
    public void ATensorOfAnotherElementTypeIsRefusedNamingTheTypes()
    {
        var d = Tensor.Create(new double[6], [2, 3]);
        Assert.That(() => d.WrapOrCopy(Str), Throws.InstanceOf<NotSupportedException>()
            .With.Message.Contains("Tensor<Double>").And.Message.Contains("System.Half").And.Message.Contains("Shardwise.BFloat16"));
        var e = Assert.Throws<NotSupportedException>(() =>
            TensorGemm.Multiply<BFloat16, Half>(Str, Tensor.Create(new BFloat16[4], [2, 2]), Tensor.Create(new BFloat16[4], [2, 2]),
                Tensor.Create(new Half[4], [2, 2])))!;
        Assert.That(e.Message, Does.Contain("a = bf16, b = bf16, c = f16"));
    }

    /// <summary>What of System.Numerics.Tensors works with a user-defined element type: tensors are created, sliced,
    /// filled, flattened, copied and pinned for any T; the element-wise math needs generic-math interfaces: BFloat16
    /// implements INumber (Tensor.Add, TensorPrimitives.Sum/Max/Multiply run, see BFloat16Tests), not IFloatingPoint
    /// nor the function interfaces (TensorPrimitives.Exp, Log... do not accept it).</summary>
    [Test]
    public void TheTensorsPackageWorksWithBFloat16ForLayoutAndCopies()
    {
        var values = Enumerable.Range(0, 12).Select(i => (BFloat16)(i * 0.5f)).ToArray();
        var t = Tensor.Create(values, [3, 4]);
        var slice = t.Slice(1..3, 1..3);
        var flat = new BFloat16[slice.FlattenedLength];
        slice.FlattenTo(flat);
        Assert.That(flat.Select(x => (float)x), Is.EqualTo(new[] { 2.5f, 3f, 4.5f, 5f }));
        var sum = Tensor.Add<BFloat16>(t, t);
        Assert.That((float)sum[2, 3], Is.EqualTo(11f));
        slice.Fill(BFloat16.One);
        Assert.That((float)t[1, 1], Is.EqualTo(1f));
        using var pin = t.GetPinnedHandle();
        Assert.That((nint)pin.Pointer, Is.Not.Zero);
    }
}
