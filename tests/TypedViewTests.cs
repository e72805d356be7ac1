using System.Runtime.InteropServices;
using Shardwise.Bindings;
using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>
/// Typed matrix views (<see cref="MatrixView{T}"/> of float, Half and BFloat16), the layout of the GEMM description
/// the bindings pass to <c>sw_gemm_ex</c>, and the type combinations <see cref="Gemm.Multiply{TIn, TOut}"/> refuses
/// before calling native code.
/// </summary>
public class TypedViewTests
{
    private Device _dev = null!;
    private DeviceStream _str = null!;

    [OneTimeSetUp]
    public void Open()
    {
        _dev = Device.Cpu(2);
        _str = _dev.CreateStream();
    }

    [OneTimeTearDown]
    public void Close()
    {
        _str?.Dispose();
        _dev?.Dispose();
    }

    [Test]
    public void ViewsOfTheThreeElementTypesAreCreated()
    {
        using var f = _dev.Allocate<float>(12);
        using var h = _dev.Allocate<Half>(12);
        using var b = _dev.Allocate<BFloat16>(12);
        Assert.That(DeviceBuffer<BFloat16>.Dtype, Is.EqualTo(SwDtype.BF16));
        Assert.That(DeviceBuffer<Half>.Dtype, Is.EqualTo(SwDtype.F16));
        MatrixView<float> vf = f.AsMatrix(3, 4);
        MatrixView<Half> vh = h.AsMatrix(2, 5, 6);
        MatrixView<BFloat16> vb = b.AsMatrix(3, 3, 4).Columns(1, 2).RowRange(1, 2);
        Assert.That((vf.Rows, vf.Cols, vf.Ld), Is.EqualTo((3L, 4L, 4L)));
        Assert.That((vh.Rows, vh.Cols, vh.Ld), Is.EqualTo((2L, 5L, 6L)));
        Assert.That((vb.Rows, vb.Cols, vb.Ld, vb.Offset), Is.EqualTo((2L, 2L, 4L, 5L)));
        Assert.That(vb.ToString(), Does.Contain("BFloat16"));
        // the bounds are checked in elements of the view's own type
        Assert.That(() => b.AsMatrix(3, 5), Throws.ArgumentException.With.Message.Contains("the buffer has 12"));
        Assert.That(MatrixView<Half>.IsSupported && MatrixView<BFloat16>.IsSupported && !MatrixView<double>.IsSupported);
    }

    [Test]
    public void AViewOfAnotherElementTypeIsRefusedNamingTheAllowedTypes()
    {
        using var d = _dev.Allocate<double>(8);
        using var i = _dev.Allocate<int>(8);
        foreach (var act in new Action[] { () => d.AsMatrix(2, 4), () => new MatrixView<int>(i, 2, 4, 4) })
        {
            var e = Assert.Throws<NotSupportedException>(() => act())!;
            Assert.That(e.Message, Does.Contain("is not a matrix type"));
            Assert.That(e.Message, Does.Contain("float").And.Contain("System.Half").And.Contain("Shardwise.BFloat16"));
        }
        Assert.That(() => d.AsMatrix(2, 4), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("System.Double"));
        Assert.That(() => new MatrixView<int>(i, 2, 4, 4), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("System.Int32"));
    }

    [Test]
    public void BFloat16BufferRoundTripsItsBits()
    {
        var host = Enumerable.Range(0, 1000).Select(k => BFloat16.FromBits((ushort)(k * 65))).ToArray();
        using var buf = _dev.Allocate<BFloat16>(host.Length);
        buf.CopyFrom(host, _str);
        var back = buf.ToArray(_str);
        Assert.That(back.Select(BFloat16.ToBits), Is.EqualTo(host.Select(BFloat16.ToBits)));
        buf.Fill(BFloat16.One, _str, 10, 5);
        Assert.That(buf.ToArray(_str).Skip(10).Take(5).Select(BFloat16.ToBits), Is.All.EqualTo((ushort)0x3F80));
    }

    /// <summary>sw_gemm_desc on LP64 (shardwise.h): eight 4-byte fields, m/n/k (8 each), alpha/beta (4 each), three
    /// (buffer, offset, ld) triples, (bias, bias_offset) and k_leaf (ABI 8), naturally aligned without padding: 160 bytes.</summary>
    [Test]
    public unsafe void GemmDescMirrorsTheCLayout()
    {
        Assume.That(IntPtr.Size, Is.EqualTo(8), "the documented layout is the 64-bit one");
        Assert.That(sizeof(SwGemmDesc), Is.EqualTo(160));
        Assert.That(Marshal.SizeOf<SwGemmDesc>(), Is.EqualTo(160));
        Assert.That(SwGemmDesc.CurrentSize, Is.EqualTo(160u));
        (string Field, int Offset)[] layout =
        [
            ("Size", 0), ("TransA", 4), ("TransB", 8), ("AType", 12), ("BType", 16), ("CType", 20), ("ComputeType", 24),
            ("Epilogue", 28), ("M", 32), ("N", 40), ("K", 48), ("Alpha", 56), ("Beta", 60),
            ("A", 64), ("AOffset", 72), ("Lda", 80), ("B", 88), ("BOffset", 96), ("Ldb", 104),
            ("C", 112), ("COffset", 120), ("Ldc", 128), ("Bias", 136), ("BiasOffset", 144), ("KLeaf", 152),
        ];
        foreach (var (field, offset) in layout)
            Assert.That((int)Marshal.OffsetOf<SwGemmDesc>(field), Is.EqualTo(offset), field);
        Assert.That(typeof(SwGemmDesc).GetFields().Length, Is.EqualTo(layout.Length), "a field without a C counterpart");
    }

    [Test]
    public void UnsupportedTypeCombinationsAreRefusedNamingThem()
    {
        using var ab = _dev.Allocate<BFloat16>(16);
        using var ch = _dev.Allocate<Half>(16);
        using var af = _dev.Allocate<float>(16);
        using var cb = _dev.Allocate<BFloat16>(16);
        var e = Assert.Throws<NotSupportedException>(() =>
            Gemm.Multiply(_str, ab.AsMatrix(4, 4), ab.AsMatrix(4, 4), ch.AsMatrix(4, 4)))!;
        Assert.That(e.Message, Does.Contain("a = bf16, b = bf16, c = f16"));
        e = Assert.Throws<NotSupportedException>(() =>
            Gemm.Multiply(_str, af.AsMatrix(4, 4), af.AsMatrix(4, 4), cb.AsMatrix(4, 4)))!;
        Assert.That(e.Message, Does.Contain("a = f32, b = f32, c = bf16"));
        // shape errors still come first and name the argument, as for float
        Assert.That(() => Gemm.Multiply(_str, ab.AsMatrix(4, 4), ab.AsMatrix(2, 4), cb.AsMatrix(4, 4)),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("b"));
    }
}
