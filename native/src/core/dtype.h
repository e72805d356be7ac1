// Element types: sizes and names, header-only so the core, the CUDA plugin and the check programs share one
// definition (the plugin is a separate library and cannot call the core's internals).
#pragma once
#include "shardwise.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sw {

// Bytes per element, 0 for a value that is not a sw_dtype.
inline size_t dtype_bytes(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return 4;
    case SW_DTYPE_F64: return 8;
    case SW_DTYPE_F16: return 2;
    case SW_DTYPE_BF16: return 2;
    case SW_DTYPE_I32: return 4;
    case SW_DTYPE_U8: return 1;
    default: break;
    }
    return 0;
}

// Short name ("f32", "bf16"...), "unknown dtype" for a value that is not a sw_dtype.
inline const char* dtype_name(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return "f32";
    case SW_DTYPE_F64: return "f64";
    case SW_DTYPE_F16: return "f16";
    case SW_DTYPE_BF16: return "bf16";
    case SW_DTYPE_I32: return "i32";
    case SW_DTYPE_U8: return "u8";
    default: break;
    }
    return "unknown dtype";
}

// ---- 16-bit floating-point conversions (host code), the one scalar definition (the CPU GEMM's SIMD conversions give
// the same bits; gemm16_check_internal compares them). Widening is exact for every value: subnormals, +-0,
// infinities and NaN payloads are kept (an fp16 signalling NaN becomes quiet, as with vcvtph2ps; bf16 widening is a
// shift). Narrowing rounds to nearest even, keeps the sign of zero, turns overflow into infinity and keeps NaN a
// quiet NaN with its sign (and the top bits of its payload).
inline float bf16_to_float(uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u); // NaN: quiet, sign kept
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even (carries into the exponent: overflow -> inf)
    return static_cast<uint16_t>(u >> 16);
}

inline float half_to_float(uint16_t h) {
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

inline uint16_t float_to_half(float f) {
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

} // namespace sw
