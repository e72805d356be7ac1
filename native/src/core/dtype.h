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

// ---- 16-bit floating-point conversions (host code). From float: round to nearest even, NaN kept (quiet), overflow
// to infinity; to float: exact (fp16 subnormals included).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { // subnormal
            int e = -1;
            uint32_t m = man;
            do { ++e; m <<= 1; } while (!(m & 0x400));
            bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (m & 0x3ff) << 13;
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | man << 13;
    else bits = sign | (exp + 112) << 23 | man << 13;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // overflow -> inf
    if (abs < 0x38800000u) { // subnormal or zero
        if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
        const uint32_t e = abs >> 23, m = (abs & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e; // 14..24
        uint32_t v = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (v & 1))) ++v;
        return static_cast<uint16_t>(sign | v);
    }
    uint32_t v = ((abs >> 13) - (112u << 10));
    const uint32_t rem = abs & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) ++v;
    return static_cast<uint16_t>(sign | v);
}
inline float bf16_to_float(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40); // quiet NaN
    x += 0x7fff + ((x >> 16) & 1);
    return static_cast<uint16_t>(x >> 16);
}

} // namespace sw
