// The 16-bit reference conversions of the checks (native/tests/float16_ref.h) against first principles, and the
// library's own conversions (core/dtype.h: what the CPU collectives, the CPU GEMM's 16-bit path and the emulated
// plugin's reference rely on) against them. The bit-for-bit checks of the 16-bit collectives (nccl_check,
// multiprocess_check) and the GEMM references (cuda_bench section 5) are only as good as these functions.
//
//  - every f16 and bf16 value decodes to sign * significand * 2^exponent computed with ldexp (subnormals, +-0,
//    infinities), NaNs decode to NaNs, and every non-NaN value converts back to itself;
//  - every midpoint between two neighbouring finite values rounds to the one with the even significand, and the
//    floats just below / above it round down / up; the largest finites round up to infinity past their midpoint
//    (f16: 65519.99... -> 65504, 65520 -> inf), f16 values below half the smallest subnormal to +-0;
//  - NaN stays NaN (quiet) and keeps its sign, infinities stay infinities;
//  - the library's core/dtype.h conversions give the same bits on all of these and on 2^22 random floats of every
//    magnitude.
#include "core/dtype.h"
#include "float16_ref.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

namespace {

int g_failures = 0;
long g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok && ++g_failures <= 30) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
}

uint32_t bits_of(float f) { return sw_ref_float_bits(f); }

// The value of a 16-bit pattern from first principles: exponent bits e (ebits wide), significand bits m (mbits).
double decode(uint16_t h, int ebits, int mbits) {
    const int sign = (h >> 15) & 1, bias = (1 << (ebits - 1)) - 1;
    const int e = (h >> mbits) & ((1 << ebits) - 1);
    const int m = h & ((1 << mbits) - 1);
    double v;
    if (e == (1 << ebits) - 1) v = m ? NAN : INFINITY;
    else if (e == 0) v = std::ldexp(static_cast<double>(m), 1 - bias - mbits);
    else v = std::ldexp(static_cast<double>(m + (1 << mbits)), e - bias - mbits);
    return sign ? -v : v;
}

struct Format {
    const char* name;
    int bf16, ebits, mbits;
    uint16_t (*lib_round)(float);
    float (*lib_widen)(uint16_t);
};

void check_format(const Format& f) {
    long decoded_bad = 0, trip_bad = 0, lib_bad = 0;
    for (uint32_t u = 0; u <= 0xffffu; ++u) {
        const uint16_t h = static_cast<uint16_t>(u);
        const double want = decode(h, f.ebits, f.mbits);
        const float got = sw_ref_to_float16(f.bf16, h);
        if (std::isnan(want)) {
            decoded_bad += !std::isnan(got);
            trip_bad += !std::isnan(sw_ref_to_float16(f.bf16, sw_ref_round16(f.bf16, got)));
        } else {
            decoded_bad += bits_of(got) != bits_of(static_cast<float>(want)); // +-0 by their bits
            trip_bad += sw_ref_round16(f.bf16, got) != h;
        }
        const float lib = f.lib_widen(h);
        lib_bad += std::isnan(want) ? !std::isnan(lib) : bits_of(lib) != bits_of(got);
    }
    check(decoded_bad == 0, std::string(f.name) + ": " + std::to_string(decoded_bad) + " patterns decode wrongly");
    check(trip_bad == 0, std::string(f.name) + ": " + std::to_string(trip_bad) + " values do not convert back to themselves");
    check(lib_bad == 0, std::string(f.name) + ": core/dtype.h widens " + std::to_string(lib_bad) + " patterns differently");

    // Midpoints between neighbours (positive and negative): exactly representable in float (12 or 9 significant bits).
    long tie_bad = 0, near_bad = 0, lib_tie_bad = 0;
    const uint16_t inf = static_cast<uint16_t>(((1u << f.ebits) - 1) << f.mbits);
    for (uint16_t sign : {uint16_t{0}, uint16_t{0x8000}})
        for (uint16_t lo = 0; lo < inf; ++lo) {
            const uint16_t a = sign | lo, b = static_cast<uint16_t>(sign | (lo + 1)); // b == +-inf for the largest
            const double va = decode(a, f.ebits, f.mbits);
            const double vb = lo + 1 == inf ? std::copysign(std::ldexp(1.0, (1 << (f.ebits - 1))), va == 0 ? (sign ? -1.0 : 1.0) : va)
                                            : decode(b, f.ebits, f.mbits);
            const double mid = 0.5 * (va + vb);
            const float m = static_cast<float>(mid);
            if (static_cast<double>(m) != mid) {
                ++tie_bad; // cannot happen: the midpoint needs at most mbits + 2 significant bits
                continue;
            }
            const uint16_t even = (a & 1u) == 0 ? a : b;
            const uint16_t r = sw_ref_round16(f.bf16, m);
            tie_bad += r != even;
            lib_tie_bad += f.lib_round(m) != r;
            const float toward_a = std::nextafter(m, static_cast<float>(va)), toward_b = std::nextafter(m, static_cast<float>(vb));
            near_bad += sw_ref_round16(f.bf16, toward_a) != a || sw_ref_round16(f.bf16, toward_b) != b;
            lib_tie_bad += f.lib_round(toward_a) != sw_ref_round16(f.bf16, toward_a) ||
                           f.lib_round(toward_b) != sw_ref_round16(f.bf16, toward_b);
        }
    check(tie_bad == 0, std::string(f.name) + ": " + std::to_string(tie_bad) + " midpoints do not round to even");
    check(near_bad == 0, std::string(f.name) + ": " + std::to_string(near_bad) + " floats next to a midpoint round the wrong way");
    check(lib_tie_bad == 0, std::string(f.name) + ": core/dtype.h rounds " + std::to_string(lib_tie_bad) + " midpoint cases differently");

    // Specials.
    for (float s : {1.0f, -1.0f}) {
        const uint16_t i = sw_ref_round16(f.bf16, s * INFINITY);
        check(std::isinf(sw_ref_to_float16(f.bf16, i)) && (i >> 15) == (s < 0), std::string(f.name) + ": infinity kept");
        const uint16_t n = sw_ref_round16(f.bf16, std::copysign(NAN, s));
        check(std::isnan(sw_ref_to_float16(f.bf16, n)) && (n >> 15) == (s < 0) && (n & (1u << (f.mbits - 1))),
              std::string(f.name) + ": NaN kept, quiet, with its sign");
        const uint16_t z = sw_ref_round16(f.bf16, s * 0.0f);
        check(z == (s < 0 ? 0x8000u : 0u), std::string(f.name) + ": signed zero kept");
        check(f.lib_round(std::copysign(NAN, s)) == n && f.lib_round(s * INFINITY) == i && f.lib_round(s * 0.0f) == z,
              std::string(f.name) + ": core/dtype.h keeps NaN, infinity and zero the same way");
    }
    // A signalling NaN (quiet bit clear) comes back quiet.
    const float snan = sw_ref_bits_float(0x7f800001u | (1u << 13) | (1u << 16));
    const uint16_t q = sw_ref_round16(f.bf16, snan);
    check(std::isnan(sw_ref_to_float16(f.bf16, q)) && (q & (1u << (f.mbits - 1))), std::string(f.name) + ": signalling NaN quieted");

    // Random floats of every magnitude: the library equals the reference.
    std::mt19937 rng(12345u + static_cast<unsigned>(f.bf16));
    long rand_bad = 0;
    for (int i = 0; i < (1 << 22); ++i) {
        const float v = sw_ref_bits_float(rng());
        const uint16_t r = sw_ref_round16(f.bf16, v), l = f.lib_round(v);
        rand_bad += std::isnan(v) ? !(std::isnan(sw_ref_to_float16(f.bf16, l)) && std::isnan(sw_ref_to_float16(f.bf16, r))) : r != l;
    }
    check(rand_bad == 0, std::string(f.name) + ": core/dtype.h differs on " + std::to_string(rand_bad) + " of 2^22 random floats");
}

} // namespace

int main() {
    check_format({"f16", 0, 5, 10, sw::float_to_half, sw::half_to_float});
    check_format({"bf16", 1, 8, 7, sw::float_to_bf16, sw::bf16_to_float});
    // f16's edges by value.
    check(sw_ref_float_to_f16(65504.0f) == 0x7bffu, "f16: 65504 is the largest finite");
    check(sw_ref_float_to_f16(std::nextafter(65520.0f, 0.0f)) == 0x7bffu, "f16: just below 65520 rounds down to 65504");
    check(sw_ref_float_to_f16(65520.0f) == 0x7c00u, "f16: 65520 rounds to infinity");
    check(sw_ref_float_to_f16(-65520.0f) == 0xfc00u, "f16: -65520 rounds to -infinity");
    check(sw_ref_float_to_f16(std::ldexp(1.0f, -24)) == 0x0001u, "f16: 2^-24 is the smallest subnormal");
    check(sw_ref_float_to_f16(std::ldexp(1.0f, -25)) == 0x0000u, "f16: 2^-25 (a tie) rounds to +0");
    check(sw_ref_float_to_f16(std::ldexp(1.5f, -25)) == 0x0001u, "f16: 1.5 * 2^-25 rounds up to the smallest subnormal");
    check(sw_ref_float_to_f16(-std::ldexp(1.0f, -26)) == 0x8000u, "f16: -2^-26 rounds to -0");
    check(sw_ref_float_to_f16(std::ldexp(1023.5f, -24)) == 0x0400u, "f16: the largest subnormal's upper midpoint rounds to the smallest normal");
    check(sw_ref_float_to_bf16(sw_ref_bits_float(0x7f7f8000u)) == 0x7f80u, "bf16: the midpoint above the largest finite rounds to infinity");
    check(sw_ref_float_to_bf16(sw_ref_bits_float(0x00008000u)) == 0x0000u, "bf16: a float subnormal tie rounds to even (+0)");
    std::printf("float16_ref_check: %ld checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
