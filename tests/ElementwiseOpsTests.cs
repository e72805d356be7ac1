using Shardwise.Parallel;

namespace Shardwise.Tests;

/// <summary>The element-wise operations of mixed-precision training (sw_convert, sw_unscale_check, sw_axpy) through the
/// C# API: conversions equal the host's round-to-nearest-even (System.Half, Shardwise.BFloat16) bit for bit on random and
/// edge values; unscaling multiplies by 1/scale in fp32 and flags inf/NaN; the fp32 update is one fma per element.</summary>
[TestFixture(Backend.Cpu)]
[TestFixture(Backend.Cuda)]
public class ElementwiseOpsTests(Backend backend) : BackendTest(backend)
{
    private static readonly float[] Edges =
    [
        0f, -0f, 1f, -1f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, float.MaxValue, -float.MaxValue,
        65504f, 65519.99f, 65520f, -65520f, 6.1035156e-05f /* fp16 min normal */, 5.9604645e-08f /* fp16 min subnormal */,
        2.9802322e-08f /* half of it: ties to 0 */, 3e-08f, 1e-40f /* fp32 subnormal */, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256,
        3.3895314e38f /* rounds to bf16 infinity */, 1.0009766f, 2049f, 2051f,
    ];

    private float[] Values(Random rng)
    {
        var v = RandomArray(rng, 4000, 1000f).Concat(RandomArray(rng, 4000, 1e-4f)).Concat(Edges).ToArray();
        return v;
    }

    [Test]
    public void ConvertRoundsToNearestEvenLikeTheHostTypes()
    {
        var v = Values(NewRandom());
        using var src = Upload(v);
        using var bf = Dev.Allocate<BFloat16>(v.Length);
        using var hf = Dev.Allocate<Half>(v.Length);
        using var back = Poisoned(v.Length);
        ElementwiseOps.Convert(Str, src, bf, v.Length);
        ElementwiseOps.Convert(Str, src, hf, v.Length);
        Str.Synchronize();
        var gotB = bf.ToArray(Str);
        var gotH = hf.ToArray(Str);
        for (int i = 0; i < v.Length; i++)
        {
            var wantB = (BFloat16)v[i];
            var wantH = (Half)v[i];
            if (float.IsNaN(v[i]))
            {
                Assert.That(BFloat16.IsNaN(gotB[i]) && Half.IsNaN(gotH[i]), $"NaN at {i}");
                continue;
            }
            Assert.That(BFloat16.ToBits(gotB[i]), Is.EqualTo(BFloat16.ToBits(wantB)), $"bf16 of {v[i]:R} (element {i})");
            Assert.That(BitConverter.HalfToUInt16Bits(gotH[i]), Is.EqualTo(BitConverter.HalfToUInt16Bits(wantH)), $"f16 of {v[i]:R} (element {i})");
        }
        // Widening back is exact; f16 -> bf16 goes through fp32 (one rounding).
        ElementwiseOps.Convert(Str, hf, back, v.Length);
        using var hb = Dev.Allocate<BFloat16>(v.Length);
        ElementwiseOps.Convert(Str, hf, hb, v.Length);
        Str.Synchronize();
        var wide = back.ToArray(Str);
        var hbs = hb.ToArray(Str);
        for (int i = 0; i < v.Length; i++)
        {
            if (Half.IsNaN(gotH[i])) { Assert.That(float.IsNaN(wide[i])); continue; }
            Assert.That(BitConverter.SingleToUInt32Bits(wide[i]), Is.EqualTo(BitConverter.SingleToUInt32Bits((float)gotH[i])), $"f16 -> f32 at {i}");
            Assert.That(BFloat16.ToBits(hbs[i]), Is.EqualTo(BFloat16.ToBits((BFloat16)(float)gotH[i])), $"f16 -> bf16 at {i}");
        }
    }

    [Test]
    public void UnscaleCheckDividesInFp32AndFlagsInfinityAndNaN()
    {
        var rng = NewRandom();
        var g = RandomArray(rng, 3000, 500f);
        var gh = g.Select(x => (Half)x).ToArray();
        using var buf = Dev.Allocate<Half>(g.Length);
        using var flag = Upload([0f, 0f]);
        buf.CopyFrom(gh, Str);
        ElementwiseOps.UnscaleCheck(Str, buf, g.Length, 1024f, flag, flagOffset: 1);
        Str.Synchronize();
        var got = buf.ToArray(Str);
        for (int i = 0; i < g.Length; i++)
            Assert.That(BitConverter.HalfToUInt16Bits(got[i]), Is.EqualTo(BitConverter.HalfToUInt16Bits((Half)((float)gh[i] * (1f / 1024f)))), $"element {i}");
        Assert.That(flag.ToArray(Str), Is.EqualTo(new[] { 0f, 0f }), "finite gradients set the flag");
        // One NaN in the middle of a float buffer sets the flag; the flag is never cleared by a later finite check.
        var f = RandomArray(rng, 100_000);
        f[77_777] = float.NaN;
        using var fb = Upload(f);
        ElementwiseOps.UnscaleCheck(Str, fb, 50_000, 2f, flag, offset: 50_000);
        ElementwiseOps.UnscaleCheck(Str, fb, 50_000, 2f, flag);
        Str.Synchronize();
        Assert.That(flag.ToArray(Str), Is.EqualTo(new[] { 1f, 0f }));
        var fr = fb.ToArray(Str);
        Assert.That(fr[3], Is.EqualTo(f[3] * 0.5f));
        Assert.Throws<ArgumentOutOfRangeException>(() => ElementwiseOps.UnscaleCheck(Str, fb, 10, 0f, flag));
        Assert.Throws<ArgumentOutOfRangeException>(() => ElementwiseOps.UnscaleCheck(Str, fb, 10, 1f, flag, flagOffset: 2));
    }

    [Test]
    public void AxpyIsOneFmaPerElementFromAny16BitGradient()
    {
        var rng = NewRandom();
        var y = RandomArray(rng, 5000);
        var x = RandomArray(rng, 5000);
        var xb = x.Select(v => (BFloat16)v).ToArray();
        using var dy = Upload(y);
        using var dx = Dev.Allocate<BFloat16>(x.Length);
        dx.CopyFrom(xb, Str);
        ElementwiseOps.Axpy(Str, -0.3f, dx, dy, x.Length);
        Str.Synchronize();
        var got = dy.ToArray(Str);
        for (int i = 0; i < x.Length; i++)
            Assert.That(got[i], Is.EqualTo(MathF.FusedMultiplyAdd(-0.3f, (float)xb[i], y[i])), $"element {i}");
        Assert.Throws<ArgumentOutOfRangeException>(() => ElementwiseOps.Axpy(Str, float.NaN, dx, dy, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ElementwiseOps.Axpy(Str, 1f, dx, dy, 5001));
        using var ints = Dev.Allocate<int>(4);
        Assert.Throws<NotSupportedException>(() => ElementwiseOps.Axpy(Str, 1f, ints, dy, 4));
    }
}
