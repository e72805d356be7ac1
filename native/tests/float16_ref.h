/* Reference conversions between float and the 16-bit formats (IEEE binary16 "f16", bfloat16 "bf16"), for the checks
 * and the test doubles (the emulated CUDA plugin, the fake NCCL): round to nearest even, NaN kept (quiet), infinity
 * kept, f16 overflow (|x| >= 65520) to infinity, f16 subnormals exact. C99 and C++; header-only, test code only (the
 * library has its own, in comm/collectives.cpp and the CUDA kernels: these are the independent references).
 *
 * sw_ref_sum16: the 16-bit sum every communicator must produce: the elements of the p ranks widened to float, added in
 * float in rank order 0..p-1, rounded once. */
#ifndef SHARDWISE_TESTS_FLOAT16_REF_H
#define SHARDWISE_TESTS_FLOAT16_REF_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float sw_ref_bits_float(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint32_t sw_ref_float_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static inline float sw_ref_f16_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
        const float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) return sw_ref_bits_float(sign | 0x7f800000u | (m << 13)); /* infinity, NaN (payload kept) */
    return sw_ref_bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t sw_ref_float_to_f16(float f) {
    const uint32_t x = sw_ref_float_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN: quiet */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (the midpoint above 65504), infinity */
    if (a < 0x38800000u) {                                   /* below 2^-14: a multiple of 2^-24, rounded */
        const float q = rintf(fabsf(f) * 16777216.0f);       /* exact scaling; rint: nearest even (default mode) */
        return (uint16_t)(sign | (uint16_t)q);               /* q == 1024 is the smallest normal: right encoding */
    }
    uint32_t v = (((a >> 23) - 112u) << 10) | ((a & 0x7fffffu) >> 13);
    const uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (v & 1u))) ++v; /* a carry moves into the exponent, as it must */
    return (uint16_t)(sign | v);
}

static inline float sw_ref_bf16_to_float(uint16_t h) { return sw_ref_bits_float((uint32_t)h << 16); }

static inline uint16_t sw_ref_float_to_bf16(float f) {
    const uint32_t x = sw_ref_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN: quiet */
    const uint32_t lower = x & 0xffffu, v = x >> 16;
    return (uint16_t)(lower > 0x8000u || (lower == 0x8000u && (v & 1u)) ? v + 1u : v);
}

/* bf16 != 0: bfloat16, else f16. */
static inline float sw_ref_to_float16(int bf16, uint16_t h) { return bf16 ? sw_ref_bf16_to_float(h) : sw_ref_f16_to_float(h); }
static inline uint16_t sw_ref_round16(int bf16, float f) { return bf16 ? sw_ref_float_to_bf16(f) : sw_ref_float_to_f16(f); }

/* Element i of the rank-order fp32 sum of p ranks, rounded once: vals[q] is rank q's element. */
static inline uint16_t sw_ref_sum16(int bf16, const uint16_t* vals, int p) {
    float acc = sw_ref_to_float16(bf16, vals[0]);
    for (int q = 1; q < p; ++q) acc += sw_ref_to_float16(bf16, vals[q]);
    return sw_ref_round16(bf16, acc);
}

#endif
