using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace Shardwise;

/// <summary>
/// bfloat16: the upper 16 bits of an IEEE float32 (1 sign bit, 8 exponent bits, 7 stored mantissa bits), the element
/// type <c>SW_DTYPE_BF16</c> of the C ABI. Same range as float, about 2-3 significant decimal digits
/// (unit roundoff 2^-8).
/// </summary>
/// <remarks>
/// <para>Conversions: to float and double are exact (implicit). From float and from double they round once to nearest,
/// ties to even (explicit): NaN stays NaN (made quiet, sign and top payload bits kept), ±infinity stays infinity, a
/// finite value beyond <see cref="MaxValue"/> by half an ulp or more becomes infinity, values below the smallest
/// subnormal by more than half round to ±0. The double conversion rounds the double directly (never through float,
/// which would round twice). <see cref="System.Half"/> converts through float (exact, then one rounding).</para>
/// <para>Arithmetic and comparisons go through float: <c>a + b</c> is <c>(BFloat16)((float)a + (float)b)</c>. For +, -,
/// ×, ÷ that is the correctly rounded bf16 result, since float's 24 bits are more than 2 × 8 + 2 (double rounding
/// through such a format is harmless). Equality follows float: <c>NaN != NaN</c> with the operators, but
/// <see cref="Equals(BFloat16)"/> holds for two NaNs and +0 equals -0, as <see cref="float.Equals(float)"/>.</para>
/// <para>Generic math: <see cref="INumber{TSelf}"/> and <see cref="ISignedNumber{TSelf}"/>, hence
/// <see cref="INumberBase{TSelf}"/> (classification, generic conversions from and to every number type, parsing with
/// <see cref="NumberStyles"/>) and the operator, identity and min/max interfaces, so generic code constrained on them
/// (System.Numerics.Tensors' TensorPrimitives.Sum, Max, Multiply...) accepts BFloat16. Conversions from float, double
/// and Half round once; other types go through double (integers beyond 2^53 and decimals may round twice). Not
/// <see cref="IFloatingPoint{TSelf}"/>, <see cref="IFloatingPointIeee754{TSelf}"/> or the function interfaces (Exp,
/// Log, trigonometry, rounding modes, exponent and significand access): each is a few dozen more members this library
/// does not use; convert to float for those.</para>
/// </remarks>
public readonly struct BFloat16 :
    IComparable, IComparable<BFloat16>, IEquatable<BFloat16>, ISpanFormattable,
    IComparisonOperators<BFloat16, BFloat16, bool>,
    IEqualityOperators<BFloat16, BFloat16, bool>,
    IAdditionOperators<BFloat16, BFloat16, BFloat16>,
    ISubtractionOperators<BFloat16, BFloat16, BFloat16>,
    IMultiplyOperators<BFloat16, BFloat16, BFloat16>,
    IDivisionOperators<BFloat16, BFloat16, BFloat16>,
    IModulusOperators<BFloat16, BFloat16, BFloat16>,
    IUnaryNegationOperators<BFloat16, BFloat16>,
    IUnaryPlusOperators<BFloat16, BFloat16>,
    IAdditiveIdentity<BFloat16, BFloat16>,
    IMultiplicativeIdentity<BFloat16, BFloat16>,
    IMinMaxValue<BFloat16>,
    INumber<BFloat16>,
    ISignedNumber<BFloat16>
{
    private const ushort SignMask = 0x8000;
    private const ushort ExponentMask = 0x7F80;
    private const ushort MantissaMask = 0x007F;
    private const ushort QuietBit = 0x0040;

    private readonly ushort _bits;

    private BFloat16(ushort bits) => _bits = bits;

    // ------------------------------------------------------------ bits

    /// <summary>The value whose bit pattern is <paramref name="bits"/> (as <see cref="BitConverter.UInt16BitsToHalf"/>).</summary>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>The bit pattern of <paramref name="value"/>.</summary>
    public static ushort ToBits(BFloat16 value) => value._bits;

    /// <summary>The bit pattern of this value.</summary>
    public ushort Bits => _bits;

    // ------------------------------------------------------------ constants

    /// <summary>The smallest positive value (a subnormal, 2^-133), as <see cref="float.Epsilon"/>.</summary>
    public static BFloat16 Epsilon => new(0x0001);
    /// <summary>The largest finite value, (2 - 2^-7) · 2^127 ≈ 3.3895e38.</summary>
    public static BFloat16 MaxValue => new(0x7F7F);
    /// <summary>The most negative finite value.</summary>
    public static BFloat16 MinValue => new(0xFF7F);
    /// <summary>The smallest positive normal value, 2^-126.</summary>
    public static BFloat16 MinNormal => new(0x0080);
    /// <summary>+∞.</summary>
    public static BFloat16 PositiveInfinity => new(0x7F80);
    /// <summary>-∞.</summary>
    public static BFloat16 NegativeInfinity => new(0xFF80);
    /// <summary>A quiet NaN, the bit pattern of <c>(BFloat16)float.NaN</c> (0xFFC0).</summary>
    public static BFloat16 NaN => new(0xFFC0);
    /// <summary>+0.</summary>
    public static BFloat16 Zero => new(0x0000);
    /// <summary>-0.</summary>
    public static BFloat16 NegativeZero => new(0x8000);
    /// <summary>1.</summary>
    public static BFloat16 One => new(0x3F80);
    /// <summary>-1.</summary>
    public static BFloat16 NegativeOne => new(0xBF80);

    static BFloat16 IAdditiveIdentity<BFloat16, BFloat16>.AdditiveIdentity => Zero;
    static BFloat16 IMultiplicativeIdentity<BFloat16, BFloat16>.MultiplicativeIdentity => One;

    // ------------------------------------------------------------ classification

    /// <summary>True for a NaN.</summary>
    public static bool IsNaN(BFloat16 value) => (value._bits & 0x7FFF) > ExponentMask;
    /// <summary>True for +∞ or -∞.</summary>
    public static bool IsInfinity(BFloat16 value) => (value._bits & 0x7FFF) == ExponentMask;
    /// <summary>True for +∞.</summary>
    public static bool IsPositiveInfinity(BFloat16 value) => value._bits == 0x7F80;
    /// <summary>True for -∞.</summary>
    public static bool IsNegativeInfinity(BFloat16 value) => value._bits == 0xFF80;
    /// <summary>True for a finite value (neither infinite nor NaN).</summary>
    public static bool IsFinite(BFloat16 value) => (value._bits & ExponentMask) != ExponentMask;
    /// <summary>True for a subnormal value (zero exponent, non-zero mantissa).</summary>
    public static bool IsSubnormal(BFloat16 value) => (value._bits & ExponentMask) == 0 && (value._bits & MantissaMask) != 0;
    /// <summary>True for a normal value (neither zero, subnormal, infinite nor NaN).</summary>
    public static bool IsNormal(BFloat16 value)
    {
        int e = value._bits & ExponentMask;
        return e != 0 && e != ExponentMask;
    }
    /// <summary>True when the sign bit is set (also for -0 and negative NaNs).</summary>
    public static bool IsNegative(BFloat16 value) => (value._bits & SignMask) != 0;
    /// <summary>True for +0 or -0.</summary>
    public static bool IsZero(BFloat16 value) => (value._bits & 0x7FFF) == 0;

    // ------------------------------------------------------------ conversions

    /// <summary>Exact: every bf16 value is a float.</summary>
    public static implicit operator float(BFloat16 value) => BitConverter.UInt32BitsToSingle((uint)value._bits << 16);

    /// <summary>Exact: every bf16 value is a double.</summary>
    public static implicit operator double(BFloat16 value) => (float)value;

    /// <summary>Rounds to nearest, ties to even; NaN stays a (quiet) NaN; overflow gives ±∞.</summary>
    public static explicit operator BFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000) // NaN: keep sign and the top payload bits, make it quiet
            return new((ushort)((bits >> 16) | QuietBit));
        // Adding 0x7FFF plus the lowest kept bit rounds to nearest even; a carry moves into the exponent, and from the
        // largest finite binade into the infinity pattern (overflow rounds to ∞). ∞ itself stays ∞ (low half is 0).
        bits += 0x7FFFu + ((bits >> 16) & 1);
        return new((ushort)(bits >> 16));
    }

    /// <summary>Rounds the double once to nearest, ties to even (not through float, which would round twice);
    /// NaN stays a (quiet) NaN; overflow gives ±∞; values below half the smallest subnormal give ±0.</summary>
    public static explicit operator BFloat16(double value)
    {
        ulong bits = BitConverter.DoubleToUInt64Bits(value);
        ushort sign = (ushort)((bits >> 48) & SignMask);
        ulong abs = bits & 0x7FFF_FFFF_FFFF_FFFFUL;
        if (abs > 0x7FF0_0000_0000_0000UL) // NaN
            return new((ushort)(sign | ExponentMask | QuietBit | (ushort)((abs >> 45) & MantissaMask)));
        if (abs == 0x7FF0_0000_0000_0000UL) return new((ushort)(sign | ExponentMask));
        int e = (int)(abs >> 52); // biased by 1023
        if (e == 0) return new(sign); // zero or a double subnormal: far below half of bf16's smallest subnormal (2^-134)
        ulong significand = (abs & 0x000F_FFFF_FFFF_FFFFUL) | (1UL << 52); // value = significand · 2^(e - 1075)
        int be = e - 1023 + 127; // bf16's biased exponent if the result is normal
        // Normal: keep 8 of the 53 significand bits (drop 45). Subnormal (be <= 0): the quantum is 2^-133, so drop
        // 45 + (1 - be) bits; the kept count is then the subnormal mantissa itself.
        int shift = be >= 1 ? 45 : 46 - be;
        if (shift >= 54) return new(sign); // less than half of 2^-133
        ulong q = significand >> shift;
        ulong rem = significand & ((1UL << shift) - 1), half = 1UL << (shift - 1);
        if (rem > half || (rem == half && (q & 1) != 0)) q++;
        // Normal: (be - 1) · 128 + q puts q's hidden bit into the exponent field (a carry of q to 256 moves up one
        // binade); subnormal: q (a carry to 128 is the smallest normal). From 0x7F80 up: overflow, ±∞.
        ulong r = be >= 1 ? ((ulong)(be - 1) << 7) + q : q;
        if (r >= ExponentMask) r = ExponentMask;
        return new((ushort)(sign | (ushort)r));
    }

    /// <summary>Exact through float, then one rounding to bf16 (fp16 has more mantissa bits, less range).</summary>
    public static explicit operator BFloat16(Half value) => (BFloat16)(float)value;

    /// <summary>Rounds once to fp16 (nearest, ties to even): bf16 values beyond fp16's range become ±∞, small ones
    /// fp16 subnormals or ±0.</summary>
    public static explicit operator Half(BFloat16 value) => (Half)(float)value;

    // ------------------------------------------------------------ arithmetic (through float, one rounding)

    /// <summary>Sum, rounded to bf16.</summary>
    public static BFloat16 operator +(BFloat16 left, BFloat16 right) => (BFloat16)((float)left + (float)right);
    /// <summary>Difference, rounded to bf16.</summary>
    public static BFloat16 operator -(BFloat16 left, BFloat16 right) => (BFloat16)((float)left - (float)right);
    /// <summary>Product, rounded to bf16.</summary>
    public static BFloat16 operator *(BFloat16 left, BFloat16 right) => (BFloat16)((float)left * (float)right);
    /// <summary>Quotient, rounded to bf16.</summary>
    public static BFloat16 operator /(BFloat16 left, BFloat16 right) => (BFloat16)((float)left / (float)right);
    /// <summary>Remainder (as float's %), rounded to bf16 (exact: the remainder of two bf16 values fits).</summary>
    public static BFloat16 operator %(BFloat16 left, BFloat16 right) => (BFloat16)((float)left % (float)right);
    /// <summary>Negation: flips the sign bit (also of zeros and NaNs).</summary>
    public static BFloat16 operator -(BFloat16 value) => new((ushort)(value._bits ^ SignMask));
    /// <summary>The value itself.</summary>
    public static BFloat16 operator +(BFloat16 value) => value;

    // ------------------------------------------------------------ comparisons (as float)

    /// <summary>As float: false when either is NaN; +0 == -0.</summary>
    public static bool operator ==(BFloat16 left, BFloat16 right) => (float)left == (float)right;
    /// <summary>As float: true when either is NaN.</summary>
    public static bool operator !=(BFloat16 left, BFloat16 right) => (float)left != (float)right;
    /// <summary>As float.</summary>
    public static bool operator <(BFloat16 left, BFloat16 right) => (float)left < (float)right;
    /// <summary>As float.</summary>
    public static bool operator >(BFloat16 left, BFloat16 right) => (float)left > (float)right;
    /// <summary>As float.</summary>
    public static bool operator <=(BFloat16 left, BFloat16 right) => (float)left <= (float)right;
    /// <summary>As float.</summary>
    public static bool operator >=(BFloat16 left, BFloat16 right) => (float)left >= (float)right;

    /// <summary>As <see cref="float.Equals(float)"/>: NaN equals NaN, +0 equals -0.</summary>
    public bool Equals(BFloat16 other) => ((float)this).Equals((float)other);
    /// <inheritdoc />
    public override bool Equals([NotNullWhen(true)] object? obj) => obj is BFloat16 other && Equals(other);
    /// <summary>Consistent with <see cref="Equals(BFloat16)"/> (the float's hash).</summary>
    public override int GetHashCode() => ((float)this).GetHashCode();
    /// <summary>As <see cref="float.CompareTo(float)"/>: NaN sorts first.</summary>
    public int CompareTo(BFloat16 other) => ((float)this).CompareTo((float)other);
    /// <inheritdoc />
    public int CompareTo(object? obj) => obj switch
    {
        null => 1,
        BFloat16 other => CompareTo(other),
        _ => throw new ArgumentException($"obj is a {obj.GetType().Name}; expected a BFloat16.", nameof(obj)),
    };

    /// <summary>The smaller of two values (NaN if either is NaN, -0 below +0), as <see cref="MathF.Min"/>.</summary>
    public static BFloat16 Min(BFloat16 x, BFloat16 y) => (BFloat16)MathF.Min(x, y);
    /// <summary>The larger of two values (NaN if either is NaN), as <see cref="MathF.Max"/>.</summary>
    public static BFloat16 Max(BFloat16 x, BFloat16 y) => (BFloat16)MathF.Max(x, y);
    /// <summary>|value| (clears the sign bit).</summary>
    public static BFloat16 Abs(BFloat16 value) => new((ushort)(value._bits & 0x7FFF));

    // ------------------------------------------------------------ INumberBase / INumber (through float; conversions round once)

    static int INumberBase<BFloat16>.Radix => 2;
    static bool INumberBase<BFloat16>.IsCanonical(BFloat16 value) => true;
    static bool INumberBase<BFloat16>.IsComplexNumber(BFloat16 value) => false;
    static bool INumberBase<BFloat16>.IsImaginaryNumber(BFloat16 value) => false;
    static bool INumberBase<BFloat16>.IsRealNumber(BFloat16 value) => !IsNaN(value);
    /// <summary>True for an integer value (as <see cref="float.IsInteger"/>).</summary>
    public static bool IsInteger(BFloat16 value) => float.IsInteger(value);
    /// <summary>True for an even integer.</summary>
    public static bool IsEvenInteger(BFloat16 value) => float.IsEvenInteger(value);
    /// <summary>True for an odd integer.</summary>
    public static bool IsOddInteger(BFloat16 value) => float.IsOddInteger(value);
    /// <summary>True when the sign bit is clear (also for +0 and positive NaNs).</summary>
    public static bool IsPositive(BFloat16 value) => (value._bits & SignMask) == 0;
    /// <summary>As <see cref="float.MaxMagnitude"/>.</summary>
    public static BFloat16 MaxMagnitude(BFloat16 x, BFloat16 y) => (BFloat16)float.MaxMagnitude(x, y);
    /// <summary>As <see cref="float.MaxMagnitudeNumber"/>.</summary>
    public static BFloat16 MaxMagnitudeNumber(BFloat16 x, BFloat16 y) => (BFloat16)float.MaxMagnitudeNumber(x, y);
    /// <summary>As <see cref="float.MinMagnitude"/>.</summary>
    public static BFloat16 MinMagnitude(BFloat16 x, BFloat16 y) => (BFloat16)float.MinMagnitude(x, y);
    /// <summary>As <see cref="float.MinMagnitudeNumber"/>.</summary>
    public static BFloat16 MinMagnitudeNumber(BFloat16 x, BFloat16 y) => (BFloat16)float.MinMagnitudeNumber(x, y);
    /// <summary>As <see cref="float.MaxNumber"/>.</summary>
    public static BFloat16 MaxNumber(BFloat16 x, BFloat16 y) => (BFloat16)float.MaxNumber(x, y);
    /// <summary>As <see cref="float.MinNumber"/>.</summary>
    public static BFloat16 MinNumber(BFloat16 x, BFloat16 y) => (BFloat16)float.MinNumber(x, y);
    /// <summary>As <see cref="float.Clamp"/>.</summary>
    public static BFloat16 Clamp(BFloat16 value, BFloat16 min, BFloat16 max) => (BFloat16)float.Clamp(value, min, max);
    /// <summary>As <see cref="float.CopySign"/>.</summary>
    public static BFloat16 CopySign(BFloat16 value, BFloat16 sign) => new((ushort)((value._bits & 0x7FFF) | (sign._bits & SignMask)));
    /// <summary>As <see cref="float.Sign"/> (throws <see cref="ArithmeticException"/> for NaN).</summary>
    public static int Sign(BFloat16 value) => float.Sign(value);

    /// <summary>value + 1, rounded.</summary>
    public static BFloat16 operator ++(BFloat16 value) => (BFloat16)((float)value + 1f);
    /// <summary>value - 1, rounded.</summary>
    public static BFloat16 operator --(BFloat16 value) => (BFloat16)((float)value - 1f);

    // Conversions from another number type: exact types and double directly (one rounding); the rest through double,
    // which the BCL converts them to (integers beyond 2^53 and decimals may then round twice).
    private static bool TryConvertFrom<TOther>(TOther value, out BFloat16 result) where TOther : INumberBase<TOther>
    {
        if (typeof(TOther) == typeof(BFloat16)) { result = (BFloat16)(object)value; return true; }
        if (typeof(TOther) == typeof(float)) { result = (BFloat16)(float)(object)value; return true; }
        if (typeof(TOther) == typeof(double)) { result = (BFloat16)(double)(object)value; return true; }
        if (typeof(TOther) == typeof(Half)) { result = (BFloat16)(Half)(object)value; return true; }
        try
        {
            result = (BFloat16)double.CreateSaturating(value);
            return true;
        }
        catch (NotSupportedException)
        {
            result = default;
            return false;
        }
    }

    /// <summary>Converts any number type (one rounding from float, double, Half; others through double).</summary>
    public static BFloat16 CreateChecked<TOther>(TOther value) where TOther : INumberBase<TOther> => Create(value);
    /// <summary>As <see cref="CreateChecked{TOther}"/> (floating point saturates to ±∞ in every mode).</summary>
    public static BFloat16 CreateSaturating<TOther>(TOther value) where TOther : INumberBase<TOther> => Create(value);
    /// <summary>As <see cref="CreateChecked{TOther}"/> (a floating-point target rounds; nothing to truncate).</summary>
    public static BFloat16 CreateTruncating<TOther>(TOther value) where TOther : INumberBase<TOther> => Create(value);

    private static BFloat16 Create<TOther>(TOther value) where TOther : INumberBase<TOther> =>
        TryConvertFrom(value, out var result) ? result : throw new NotSupportedException($"no conversion from {typeof(TOther).Name} to BFloat16");

    static bool INumberBase<BFloat16>.TryConvertFromChecked<TOther>(TOther value, out BFloat16 result) => TryConvertFrom(value, out result);
    static bool INumberBase<BFloat16>.TryConvertFromSaturating<TOther>(TOther value, out BFloat16 result) => TryConvertFrom(value, out result);
    static bool INumberBase<BFloat16>.TryConvertFromTruncating<TOther>(TOther value, out BFloat16 result) => TryConvertFrom(value, out result);

    // Conversions to another number type: through float (exact), with the target's checked/saturating/truncating rule.
    static bool INumberBase<BFloat16>.TryConvertToChecked<TOther>(BFloat16 value, [MaybeNullWhen(false)] out TOther result)
    {
        result = TOther.CreateChecked((float)value);
        return true;
    }

    static bool INumberBase<BFloat16>.TryConvertToSaturating<TOther>(BFloat16 value, [MaybeNullWhen(false)] out TOther result)
    {
        result = TOther.CreateSaturating((float)value);
        return true;
    }

    static bool INumberBase<BFloat16>.TryConvertToTruncating<TOther>(BFloat16 value, [MaybeNullWhen(false)] out TOther result)
    {
        result = TOther.CreateTruncating((float)value);
        return true;
    }

    /// <summary>Parses as double with <paramref name="style"/> and rounds once.</summary>
    public static BFloat16 Parse(ReadOnlySpan<char> s, NumberStyles style = NumberStyles.Float | NumberStyles.AllowThousands, IFormatProvider? provider = null) =>
        (BFloat16)double.Parse(s, style, provider);
    /// <summary>Parses as double with <paramref name="style"/> and rounds once.</summary>
    public static BFloat16 Parse(string s, NumberStyles style, IFormatProvider? provider) => (BFloat16)double.Parse(s, style, provider);
    /// <summary>Parses as double and rounds once.</summary>
    public static BFloat16 Parse(ReadOnlySpan<char> s, IFormatProvider? provider) => (BFloat16)double.Parse(s, provider);
    /// <summary>Parses as double with <paramref name="style"/> and rounds once; false when the text is not a number.</summary>
    public static bool TryParse(ReadOnlySpan<char> s, NumberStyles style, IFormatProvider? provider, out BFloat16 result)
    {
        bool ok = double.TryParse(s, style, provider, out double d);
        result = ok ? (BFloat16)d : default;
        return ok;
    }
    /// <summary>Parses as double with <paramref name="style"/> and rounds once; false when the text is not a number.</summary>
    public static bool TryParse([NotNullWhen(true)] string? s, NumberStyles style, IFormatProvider? provider, out BFloat16 result)
    {
        bool ok = double.TryParse(s, style, provider, out double d);
        result = ok ? (BFloat16)d : default;
        return ok;
    }
    /// <summary>Parses as double and rounds once; false when the text is not a number.</summary>
    public static bool TryParse(ReadOnlySpan<char> s, IFormatProvider? provider, out BFloat16 result) =>
        TryParse(s, NumberStyles.Float | NumberStyles.AllowThousands, provider, out result);

    // ------------------------------------------------------------ text

    /// <summary>The value as float formats it (the shortest text that round-trips the float, hence the bf16).</summary>
    public override string ToString() => ((float)this).ToString(CultureInfo.CurrentCulture);
    /// <inheritdoc />
    public string ToString(string? format, IFormatProvider? formatProvider) => ((float)this).ToString(format, formatProvider);
    /// <inheritdoc />
    public bool TryFormat(Span<char> destination, out int charsWritten, ReadOnlySpan<char> format, IFormatProvider? provider) =>
        ((float)this).TryFormat(destination, out charsWritten, format, provider);

    /// <summary>Parses a number as double and rounds it once to bf16.</summary>
    public static BFloat16 Parse(string s, IFormatProvider? provider = null) => (BFloat16)double.Parse(s, provider);

    /// <summary>Parses a number as double and rounds it once to bf16; false when the text is not a number.</summary>
    public static bool TryParse([NotNullWhen(true)] string? s, IFormatProvider? provider, out BFloat16 result) =>
        TryParse(s, NumberStyles.Float | NumberStyles.AllowThousands, provider, out result);

}
