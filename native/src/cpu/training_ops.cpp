// See cpu/training_ops.h.
#include "cpu/training_ops.h"

#include <cmath>
#include <cstring>

namespace sw::cpu {

float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | man << 13; // infinity, or NaN with its payload
    } else if (exp != 0) {
        bits = sign | (exp + (127 - 15)) << 23 | man << 13;
    } else if (man == 0) {
        bits = sign; // signed zero
    } else { // subnormal: value = man * 2^-24, exact in fp32
        float f = std::ldexp(static_cast<float>(man), -24);
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x1ffu)); // quiet NaN
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // >= 65520 (or inf): infinity
    if (a >= 0x38800000u) { // normal fp16 (>= 2^-14): drop 13 mantissa bits, round to nearest even
        const uint32_t keep = a >> 13, rest = a & 0x1fffu;
        uint32_t v = keep - ((127u - 15u) << 10);
        if (rest > 0x1000u || (rest == 0x1000u && (v & 1u))) ++v; // a carry into the exponent is still right
        return static_cast<uint16_t>(sign | v);
    }
    // Subnormal fp16 or zero: the value in units of 2^-24, rounded to nearest even.
    if (a < 0x33000000u) return sign; // below 2^-25: rounds to zero (2^-25 exactly is a tie to even: zero)
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e; // 14..24 for e in 102..112
    uint32_t v = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (v & 1u))) ++v;
    return static_cast<uint16_t>(sign | v);
}

float bf16_to_f32(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u); // quiet NaN
    x += 0x7fffu + ((x >> 16) & 1u); // round to nearest even (overflow carries into infinity)
    return static_cast<uint16_t>(x >> 16);
}

namespace {
inline float load(sw_dtype t, const void* p, uint64_t i) {
    switch (t) {
    case SW_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case SW_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
    }
}
inline void store(sw_dtype t, void* p, uint64_t i, float v) {
    switch (t) {
    case SW_DTYPE_F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case SW_DTYPE_BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
    }
}
} // namespace

void convert_range(sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t begin, uint64_t end) {
    if (src_type == dst_type) {
        const size_t es = src_type == SW_DTYPE_F32 ? 4 : 2;
        std::memcpy(static_cast<char*>(dst) + begin * es, static_cast<const char*>(src) + begin * es, (end - begin) * es);
        return;
    }
    for (uint64_t i = begin; i < end; ++i) store(dst_type, dst, i, load(src_type, src, i)); // via fp32: one rounding
}

bool unscale_range(sw_dtype dtype, void* buf, float inv_scale, uint64_t begin, uint64_t end) {
    bool bad = false;
    for (uint64_t i = begin; i < end; ++i) {
        const float v = load(dtype, buf, i);
        bad |= !std::isfinite(v);
        store(dtype, buf, i, v * inv_scale);
    }
    return bad;
}

void axpy_range(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t begin, uint64_t end) {
    for (uint64_t i = begin; i < end; ++i) y[i] = std::fma(alpha, load(x_type, x, i), y[i]);
}

} // namespace sw::cpu
