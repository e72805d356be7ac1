using System.Globalization;
using System.Numerics;

namespace Shardwise.Tests;

/// <summary>
/// <see cref="BFloat16"/>: the conversions against independent references (float: the nearer of the two bf16
/// neighbours, distances computed exactly in double, ties to the even one; double: round to odd into float, then to
/// bf16, a different algorithm that is also one correct rounding since float keeps 16 more bits than bf16), the edge
/// values (ties, NaN, ±∞, ±0, subnormals, MaxValue + ulp), the double rounding a conversion through float would make,
/// and the float semantics of equality, ordering and arithmetic.
/// </summary>
public class BFloat16Tests
{
    private static Random NewRandom()
    {
        int seed = TestContext.CurrentContext.Random.Next();
        TestContext.Out.WriteLine($"seed {seed}");
        return new Random(seed);
    }

    private static ushort Bits(BFloat16 x) => BFloat16.ToBits(x);

    // Reference float -> bf16: the two bf16 neighbours of x by magnitude (lo: x's top 16 bits, hi: the next pattern up,
    // 0x7F80 taken as 2^128), the nearer one, ties to the even pattern; 0x7F80 above MaxValue is ∞ (IEEE overflow).
    private static ushort ReferenceFromFloat(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        ushort sign = (ushort)((bits >> 16) & 0x8000);
        uint abs = bits & 0x7FFF_FFFF;
        uint lo = abs >> 16, hi = lo + 1;
        double ax = BitConverter.UInt32BitsToSingle(abs);
        double vlo = BitConverter.UInt32BitsToSingle(lo << 16);
        double vhi = hi == 0x7F80 ? Math.Pow(2, 128) : BitConverter.UInt32BitsToSingle(hi << 16);
        double dlo = ax - vlo, dhi = vhi - ax; // exact: all three are floats of nearby magnitude
        uint pick = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) == 0 ? lo : hi);
        return (ushort)(sign | pick);
    }

    // Reference double -> bf16 by another route: round to odd into float (truncate toward zero, set the lowest bit when
    // inexact), then round that float to bf16. Round-to-odd into a format with at least two more bits is one correct
    // rounding overall.
    private static ushort ReferenceFromDouble(double d)
    {
        float f = (float)d;
        if (double.IsFinite(d) && (double)f != d)
        {
            if (Math.Abs((double)f) > Math.Abs(d)) f = d > 0 ? MathF.BitDecrement(f) : MathF.BitIncrement(f);
            f = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(f) | 1);
        }
        return ReferenceFromFloat(f);
    }

    [Test]
    public void FromFloatRoundsToNearestEvenOnRandomBitPatterns()
    {
        var rng = NewRandom();
        for (int i = 0; i < 200_000; i++)
        {
            float x = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
            if (float.IsNaN(x)) continue;
            Assert.That(Bits((BFloat16)x), Is.EqualTo(ReferenceFromFloat(x)), $"(BFloat16){x:R} (0x{BitConverter.SingleToUInt32Bits(x):X8})");
        }
        // and on the patterns next to the rounding boundaries (ties, just below, just above) in every binade
        for (uint top = 0; top < 0x7F80; top += 37)
            foreach (uint low in new uint[] { 0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF })
                foreach (uint sign in new uint[] { 0, 0x8000_0000 })
                {
                    float x = BitConverter.UInt32BitsToSingle(sign | (top << 16) | low);
                    Assert.That(Bits((BFloat16)x), Is.EqualTo(ReferenceFromFloat(x)), $"0x{BitConverter.SingleToUInt32Bits(x):X8}");
                }
    }

    [Test]
    public void TiesGoToTheEvenNeighbour()
    {
        // 1 + 2^-8 is halfway between 1 (0x3F80, even) and 1 + 2^-7 (0x3F81): down. 1 + 3·2^-8 halfway between 0x3F81 and
        // 0x3F82: up, to the even one.
        Assert.That(Bits((BFloat16)(1f + MathF.Pow(2, -8))), Is.EqualTo(0x3F80));
        Assert.That(Bits((BFloat16)(1f + 3 * MathF.Pow(2, -8))), Is.EqualTo(0x3F82));
        Assert.That(Bits((BFloat16)(-(1f + 3 * MathF.Pow(2, -8)))), Is.EqualTo(0xBF82));
        // just above a tie goes up, just below goes down
        Assert.That(Bits((BFloat16)BitConverter.UInt32BitsToSingle(0x3F80_8001)), Is.EqualTo(0x3F81));
        Assert.That(Bits((BFloat16)BitConverter.UInt32BitsToSingle(0x3F81_7FFF)), Is.EqualTo(0x3F81));
        // the same from double
        Assert.That(Bits((BFloat16)(1.0 + Math.Pow(2, -8))), Is.EqualTo(0x3F80));
        Assert.That(Bits((BFloat16)(1.0 + 3 * Math.Pow(2, -8))), Is.EqualTo(0x3F82));
    }

    [Test]
    public void NaNStaysQuietNaNAndInfinitiesAndZerosKeepTheirSign()
    {
        // a signalling NaN whose payload sits in the low 16 bits only: plain truncation would make it +∞ (read from memory:
        // a constant may be folded into a quiet NaN by the JIT)
        float snan = System.Runtime.InteropServices.MemoryMarshal.Cast<uint, float>(new uint[] { 0x7F80_0001 })[0];
        Assert.That(float.IsNaN(snan));
        var b = (BFloat16)snan;
        Assert.That(BFloat16.IsNaN(b), $"0x{Bits(b):X4}");
        Assert.That(Bits(b) & 0x0040, Is.Not.Zero, "quiet bit");
        Assert.That(BFloat16.IsNaN((BFloat16)float.NaN));
        Assert.That(Bits((BFloat16)float.NaN), Is.EqualTo(Bits(BFloat16.NaN)));
        Assert.That(BFloat16.IsNaN((BFloat16)double.NaN));
        Assert.That(BFloat16.IsNaN((BFloat16)BitConverter.UInt64BitsToDouble(0x7FF0_0000_0000_0001)), "double sNaN with a low payload");
        Assert.That(BFloat16.IsNegative((BFloat16)BitConverter.UInt32BitsToSingle(0xFFC0_0000)), "NaN sign kept");
        Assert.That(float.IsNaN((float)BFloat16.NaN));

        Assert.That(Bits((BFloat16)float.PositiveInfinity), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)float.NegativeInfinity), Is.EqualTo(0xFF80));
        Assert.That(Bits((BFloat16)double.PositiveInfinity), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)double.NegativeInfinity), Is.EqualTo(0xFF80));
        Assert.That(BFloat16.IsPositiveInfinity(BFloat16.PositiveInfinity) && BFloat16.IsNegativeInfinity(BFloat16.NegativeInfinity));
        Assert.That((float)BFloat16.PositiveInfinity, Is.EqualTo(float.PositiveInfinity));

        Assert.That(Bits((BFloat16)0f), Is.EqualTo(0x0000));
        Assert.That(Bits((BFloat16)(-0f)), Is.EqualTo(0x8000));
        Assert.That(Bits((BFloat16)0.0), Is.EqualTo(0x0000));
        Assert.That(Bits((BFloat16)(-0.0)), Is.EqualTo(0x8000));
        Assert.That(float.IsNegative((float)BFloat16.NegativeZero));
        Assert.That(BFloat16.Zero == BFloat16.NegativeZero, "+0 == -0");
        Assert.That(BFloat16.Zero.Equals(BFloat16.NegativeZero), "+0 equals -0, as float");
        Assert.That(BFloat16.Zero.GetHashCode(), Is.EqualTo(BFloat16.NegativeZero.GetHashCode()));
    }

    [Test]
    public void SubnormalsConvertBothWays()
    {
        // smallest subnormal 2^-133 and the largest, (2^7 - 1)·2^-133
        Assert.That((float)BFloat16.Epsilon, Is.EqualTo(MathF.Pow(2, -133)));
        Assert.That(BFloat16.IsSubnormal(BFloat16.Epsilon));
        Assert.That(BFloat16.IsSubnormal(BFloat16.FromBits(0x007F)) && !BFloat16.IsSubnormal(BFloat16.MinNormal));
        Assert.That(!BFloat16.IsSubnormal(BFloat16.Zero) && !BFloat16.IsNormal(BFloat16.Zero));
        Assert.That(Bits((BFloat16)MathF.Pow(2, -130)), Is.EqualTo(0x0008));
        Assert.That(Bits((BFloat16)Math.Pow(2, -130)), Is.EqualTo(0x0008));
        // half of the smallest subnormal is a tie with 0 (even): 0; a bit more rounds up to it
        Assert.That(Bits((BFloat16)MathF.Pow(2, -134)), Is.EqualTo(0x0000));
        Assert.That(Bits((BFloat16)Math.Pow(2, -134)), Is.EqualTo(0x0000));
        Assert.That(Bits((BFloat16)(Math.Pow(2, -134) * (1 + 1e-9))), Is.EqualTo(0x0001));
        Assert.That(Bits((BFloat16)(-Math.Pow(2, -134) * (1 + 1e-9))), Is.EqualTo(0x8001));
        Assert.That(Bits((BFloat16)(3 * Math.Pow(2, -134))), Is.EqualTo(0x0002), "1.5 quanta: tie, to even (2)");
        // the largest subnormal plus half a quantum carries into the smallest normal
        Assert.That(Bits((BFloat16)(127.5 * Math.Pow(2, -133))), Is.EqualTo(0x0080));
        Assert.That(Bits((BFloat16)(127.5f * MathF.Pow(2, -133))), Is.EqualTo(0x0080));
        // float subnormals far below bf16's range, and double subnormals
        Assert.That(Bits((BFloat16)float.Epsilon), Is.EqualTo(0x0000));
        Assert.That(Bits((BFloat16)(-double.Epsilon)), Is.EqualTo(0x8000));
        Assert.That(Bits((BFloat16)1e-300), Is.EqualTo(0x0000));
        for (ushort s = 0; s < 0x80; s++)
            Assert.That(Bits((BFloat16)(double)BFloat16.FromBits(s)), Is.EqualTo(s), "subnormal round trip through double");
    }

    [Test]
    public void MaxValuePlusHalfAnUlpOverflowsToInfinity()
    {
        float max = BFloat16.MaxValue;
        Assert.That(max, Is.EqualTo((2 - MathF.Pow(2, -7)) * MathF.Pow(2, 127)));
        Assert.That(BFloat16.IsFinite(BFloat16.MaxValue) && !BFloat16.IsFinite(BFloat16.PositiveInfinity));
        float halfUlpAbove = BitConverter.UInt32BitsToSingle(0x7F7F_8000); // MaxValue + 2^119: a tie, the even side is ∞
        Assert.That(Bits((BFloat16)halfUlpAbove), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)BitConverter.UInt32BitsToSingle(0x7F7F_7FFF)), Is.EqualTo(0x7F7F), "just below the tie");
        Assert.That(Bits((BFloat16)float.MaxValue), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)(-float.MaxValue)), Is.EqualTo(0xFF80));
        Assert.That(Bits((BFloat16)(double)halfUlpAbove), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)((double)halfUlpAbove * (1 - 1e-12))), Is.EqualTo(0x7F7F));
        Assert.That(Bits((BFloat16)1e39), Is.EqualTo(0x7F80));
        Assert.That(Bits((BFloat16)(-1e300)), Is.EqualTo(0xFF80));
        Assert.That(Bits(BFloat16.MinValue), Is.EqualTo(0xFF7F));
        Assert.That(BFloat16.MaxValue + BFloat16.MaxValue, Is.EqualTo(BFloat16.PositiveInfinity));
    }

    [Test]
    public void FromDoubleRoundsOnceNotThroughFloat()
    {
        // 1 + 2^-8 + 2^-40: above the tie between 0x3F80 and 0x3F81, so 0x3F81. Through float it would first become
        // 1 + 2^-8 (float keeps 23 fraction bits), an exact tie, then 0x3F80: the double rounding this must not do.
        double x = 1 + Math.Pow(2, -8) + Math.Pow(2, -40);
        Assert.That(Bits((BFloat16)(float)x), Is.EqualTo(0x3F80), "the trap: through float");
        Assert.That(Bits((BFloat16)x), Is.EqualTo(0x3F81));
        Assert.That(Bits((BFloat16)(-x)), Is.EqualTo(0xBF81));
        // a tie whose even side is up, nudged down: 1 + 3·2^-8 - 2^-40 -> 0x3F81 (through float: a tie -> 0x3F82)
        Assert.That(Bits((BFloat16)(float)(1 + 3 * Math.Pow(2, -8) - Math.Pow(2, -40))), Is.EqualTo(0x3F82), "the trap: through float");
        Assert.That(Bits((BFloat16)(1 + 3 * Math.Pow(2, -8) - Math.Pow(2, -40))), Is.EqualTo(0x3F81));
        // in the subnormal range: 2.5 quanta + a little -> 3 quanta (float would make it the tie 2.5 -> 2)
        double q = Math.Pow(2, -133);
        Assert.That(Bits((BFloat16)(2.5 * q + q * Math.Pow(2, -30))), Is.EqualTo(0x0003));
    }

    [Test]
    public void FromDoubleMatchesRoundToOddReferenceOnRandomValues()
    {
        var rng = NewRandom();
        for (int i = 0; i < 200_000; i++)
        {
            double d;
            switch (i % 3)
            {
                case 0: // any bit pattern whose exponent is near bf16's range
                    d = BitConverter.UInt64BitsToDouble((ulong)rng.NextInt64() & 0x800F_FFFF_FFFF_FFFFUL | ((ulong)rng.Next(1023 - 140, 1023 + 130) << 52));
                    break;
                case 1: // values next to a bf16 rounding tie
                    float t = BitConverter.UInt32BitsToSingle(((uint)rng.Next(0, 0x7F80) << 16) | 0x8000);
                    d = t + (rng.NextDouble() - 0.5) * Math.Pow(2, -30) * Math.Abs(t) * (rng.Next(2) == 0 ? 1 : 1e-6);
                    break;
                default: // every magnitude
                    d = BitConverter.UInt64BitsToDouble((ulong)rng.NextInt64() | ((ulong)rng.Next(2) << 63));
                    break;
            }
            if (double.IsNaN(d)) continue;
            Assert.That(Bits((BFloat16)d), Is.EqualTo(ReferenceFromDouble(d)), $"(BFloat16){d:R} (0x{BitConverter.DoubleToUInt64Bits(d):X16})");
        }
    }

    [Test]
    public void EveryBf16ValueRoundTripsThroughFloatDoubleAndText()
    {
        for (int i = 0; i <= 0xFFFF; i++)
        {
            var b = BFloat16.FromBits((ushort)i);
            if (BFloat16.IsNaN(b))
            {
                Assert.That(float.IsNaN(b) && double.IsNaN(b));
                continue;
            }
            Assert.That(Bits((BFloat16)(float)b), Is.EqualTo(i));
            Assert.That(Bits((BFloat16)(double)b), Is.EqualTo(i));
            Assert.That(Bits(BFloat16.Parse(b.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture)), Is.EqualTo(i));
        }
        Assert.That(BFloat16.TryParse("nope", CultureInfo.InvariantCulture, out _), Is.False);
        Assert.That(BFloat16.One.ToString(null, CultureInfo.InvariantCulture), Is.EqualTo("1"));
    }

    [Test]
    public void HalfConversionsRoundOnce()
    {
        // bf16 -> Half: 65536 (exact in bf16) is beyond fp16's 65504 + half an ulp: ∞
        Assert.That(Half.IsPositiveInfinity((Half)(BFloat16)65536f));
        Assert.That((float)(Half)(BFloat16)1.5f, Is.EqualTo(1.5f));
        Assert.That((float)(Half)BFloat16.Epsilon, Is.EqualTo(0f), "far below fp16's subnormals");
        // Half -> bf16: 1 + 2^-10 (exact in fp16) is below bf16's tie 1 + 2^-8: 1
        Assert.That(Bits((BFloat16)(Half)(1 + 1f / 1024)), Is.EqualTo(0x3F80));
        Assert.That(Bits((BFloat16)Half.MaxValue), Is.EqualTo(Bits((BFloat16)65504f)));
        Assert.That(BFloat16.IsNaN((BFloat16)Half.NaN));
    }

    [Test]
    public void ComparisonsAndEqualityFollowFloat()
    {
        var nan = BFloat16.NaN;
        Assert.That(nan == nan, Is.False);
        Assert.That(nan != nan, Is.True);
        Assert.That(nan.Equals(nan), Is.True, "Equals: NaN equals NaN, as float.Equals");
        Assert.That(nan < BFloat16.One || nan > BFloat16.One || nan <= nan || nan >= nan, Is.False);
        Assert.That(nan.CompareTo(BFloat16.NegativeInfinity), Is.LessThan(0), "NaN sorts first, as float");
        Assert.That(BFloat16.One.CompareTo((BFloat16)2f), Is.LessThan(0));
        Assert.That(((BFloat16)2f).CompareTo((object)BFloat16.One), Is.GreaterThan(0));
        Assert.That(BFloat16.One.CompareTo(null), Is.GreaterThan(0));
        Assert.Throws<ArgumentException>(() => BFloat16.One.CompareTo((object)1f));
        Assert.That(BFloat16.NegativeInfinity < BFloat16.MinValue && BFloat16.MaxValue < BFloat16.PositiveInfinity);
        var sorted = new[] { (BFloat16)3f, BFloat16.NaN, (BFloat16)(-1f), BFloat16.Zero };
        Array.Sort(sorted);
        Assert.That(sorted.Select(x => (float)x), Is.EqualTo(new[] { float.NaN, -1f, 0f, 3f }));
        Assert.That(BFloat16.One, Is.EqualTo((BFloat16)1.0));
        Assert.That(Bits(BFloat16.One), Is.EqualTo(0x3F80));
        Assert.That(Bits(BFloat16.NegativeOne), Is.EqualTo(0xBF80));
    }

    [Test]
    public void ArithmeticIsTheCorrectlyRoundedFloatResult()
    {
        var rng = NewRandom();
        for (int i = 0; i < 20_000; i++)
        {
            var a = BFloat16.FromBits((ushort)rng.Next(0, 0x10000));
            var b = BFloat16.FromBits((ushort)rng.Next(0, 0x10000));
            if (BFloat16.IsNaN(a) || BFloat16.IsNaN(b)) continue;
            // exact in double, then one rounding: the correctly rounded bf16 result
            Assert.That(Bits(a + b), Is.EqualTo(Bits((BFloat16)((double)a + b))), $"{a} + {b}");
            Assert.That(Bits(a - b), Is.EqualTo(Bits((BFloat16)((double)a - b))), $"{a} - {b}");
            Assert.That(Bits(a * b), Is.EqualTo(Bits((BFloat16)((double)a * b))), $"{a} * {b}");
            var q = a / b;
            var want = (BFloat16)((double)a / b);
            Assert.That(BFloat16.IsNaN(q) ? BFloat16.IsNaN(want) : Bits(q) == Bits(want), $"{a} / {b}: {q} vs {want}");
        }
        Assert.That(Bits(-BFloat16.Zero), Is.EqualTo(0x8000));
        Assert.That(Bits(+BFloat16.One), Is.EqualTo(0x3F80));
        Assert.That((float)((BFloat16)7f % (BFloat16)3f), Is.EqualTo(1f));
        Assert.That(Bits(BFloat16.Abs((BFloat16)(-2f))), Is.EqualTo(Bits((BFloat16)2f)));
        Assert.That(BFloat16.IsNaN(BFloat16.Min(BFloat16.NaN, BFloat16.One)) && (float)BFloat16.Max((BFloat16)2f, BFloat16.One) == 2f);
    }

    private static T GenericSum<T>(ReadOnlySpan<T> xs) where T : IAdditionOperators<T, T, T>, IAdditiveIdentity<T, T>
    {
        T s = T.AdditiveIdentity;
        foreach (var x in xs) s += x;
        return s;
    }

    private static T GenericLargest<T>() where T : IMinMaxValue<T> => T.MaxValue;

    [Test]
    public void GenericMathInterfacesWork()
    {
        BFloat16[] xs = [(BFloat16)1f, (BFloat16)2f, (BFloat16)0.5f];
        Assert.That((float)GenericSum<BFloat16>(xs), Is.EqualTo(3.5f));
        Assert.That(Bits(GenericLargest<BFloat16>()), Is.EqualTo(0x7F7F));
        Assert.That(System.Runtime.CompilerServices.Unsafe.SizeOf<BFloat16>(), Is.EqualTo(2));
    }

    private static T GenericConvert<T, TFrom>(TFrom x) where T : INumberBase<T> where TFrom : INumberBase<TFrom> => T.CreateChecked(x);

    [Test]
    public void NumberInterfacesConvertThroughOneRounding()
    {
        double tieAbove = 1 + Math.Pow(2, -8) + Math.Pow(2, -40);
        Assert.That(Bits(BFloat16.CreateChecked(tieAbove)), Is.EqualTo(0x3F81), "double -> bf16 generically: one rounding");
        Assert.That(Bits(GenericConvert<BFloat16, double>(1e300)), Is.EqualTo(0x7F80));
        Assert.That(Bits(BFloat16.CreateChecked(3)), Is.EqualTo(Bits((BFloat16)3f)), "from int");
        Assert.That(Bits(BFloat16.CreateSaturating((Half)0.5f)), Is.EqualTo(Bits((BFloat16)0.5f)), "from Half");
        Assert.That(Bits(BFloat16.CreateTruncating(257L)), Is.EqualTo(Bits((BFloat16)256f)), "257 is a tie between 256 and 258: to even (256)");
        Assert.That(double.CreateChecked((BFloat16)1.5f), Is.EqualTo(1.5));
        Assert.That(int.CreateTruncating((BFloat16)(-2.5f)), Is.EqualTo(-2));
        Assert.That(int.CreateSaturating(BFloat16.PositiveInfinity), Is.EqualTo(int.MaxValue));
        Assert.That(() => int.CreateChecked(BFloat16.MaxValue), Throws.InstanceOf<OverflowException>());
        Assert.That(GenericConvert<Half, BFloat16>((BFloat16)65536f), Is.EqualTo(Half.PositiveInfinity));
        Assert.That(BFloat16.IsInteger((BFloat16)4f) && BFloat16.IsEvenInteger((BFloat16)4f) && BFloat16.IsOddInteger((BFloat16)3f));
        Assert.That(Bits(BFloat16.CopySign((BFloat16)2f, BFloat16.NegativeZero)), Is.EqualTo(Bits((BFloat16)(-2f))));
        Assert.That(BFloat16.Sign((BFloat16)(-0.5f)), Is.EqualTo(-1));
        Assert.That((float)BFloat16.Clamp((BFloat16)5f, BFloat16.Zero, BFloat16.One), Is.EqualTo(1f));
        var x = BFloat16.One;
        x++;
        Assert.That((float)x, Is.EqualTo(2f));
        Assert.That(Bits(BFloat16.Parse("1.00390625".AsSpan(), NumberStyles.Float, CultureInfo.InvariantCulture)), Is.EqualTo(0x3F80), "1 + 2^-8: a tie, to even");
        Assert.That(BFloat16.TryParse("1e39", NumberStyles.Float, CultureInfo.InvariantCulture, out var big) && BFloat16.IsPositiveInfinity(big));
    }

    [Test]
    public void TensorPrimitivesAcceptBFloat16WhereTheyNeedOnlyNumberInterfaces()
    {
        // the generic TensorPrimitives constrained on INumberBase/INumber (sums, min/max) run on BFloat16; the results are
        // rounded to bf16 at every step (TensorPrimitives computes in T)
        BFloat16[] xs = [(BFloat16)1f, (BFloat16)2f, (BFloat16)(-4f), (BFloat16)0.5f];
        Assert.That((float)System.Numerics.Tensors.TensorPrimitives.Sum<BFloat16>(xs), Is.EqualTo(-0.5f));
        Assert.That((float)System.Numerics.Tensors.TensorPrimitives.Max<BFloat16>(xs), Is.EqualTo(2f));
        var dst = new BFloat16[4];
        System.Numerics.Tensors.TensorPrimitives.Multiply<BFloat16>(xs, xs, dst);
        Assert.That(dst.Select(v => (float)v), Is.EqualTo(new[] { 1f, 4f, 16f, 0.25f }));
    }
}
