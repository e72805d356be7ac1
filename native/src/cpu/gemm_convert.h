// Element conversions of the CPU GEMM for 16-bit operands (bf16, IEEE fp16 "half"), portable C++.
// Widening (16 -> 32 bits) is exact for every value: subnormals, +-0, infinities and NaN payloads are kept (an
// fp16 signalling NaN becomes quiet, as with vcvtph2ps; bf16 widening is a shift and keeps every bit).
// Narrowing (32 -> 16 bits) rounds to nearest even, keeps the sign of zero, turns overflow into infinity and
// keeps NaN a (quiet) NaN with its sign. The SIMD versions in the kernel files (F16C / AVX-512 conversions)
// give the same bits; gemm16_check_internal compares them on every class of value.
#pragma once
#include <cstdint>
#include <cstring>

namespace sw::cpu::gemm_detail {

inline float bf16_to_f32(uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u); // NaN: quiet, sign kept
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even (carries into the exponent: overflow -> inf)
    return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); // inf, NaN (payload kept, quiet: as vcvtph2ps)
        if (man != 0) bits |= 0x00400000u;
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign; // +-0
    } else { // subnormal: man * 2^-24, normalised
        int e = 0;
        uint32_t m = man;
        while (!(m & 0x400u)) {
            m <<= 1;
            ++e;
        }
        bits = sign | ((113u - static_cast<uint32_t>(e)) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); // NaN, quiet
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // >= 65520 (and inf): inf
    if (a < 0x38800000u) {                                                // below 2^-14: subnormal or zero
        if (a < 0x33000000u) return static_cast<uint16_t>(sign);          // < 2^-25: rounds to zero
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - e; // 14..24
        uint32_t v = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (v & 1u))) ++v;
        return static_cast<uint16_t>(sign | v);
    }
    uint32_t v = (a >> 13) - (112u << 10);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) ++v; // may carry into the exponent: exact
    return static_cast<uint16_t>(sign | v);
}

// Row conversions (n contiguous elements), the portable versions.
inline void widen_bf16_row(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
inline void widen_f16_row(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
inline void narrow_bf16_row(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}
inline void narrow_f16_row(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

} // namespace sw::cpu::gemm_detail
