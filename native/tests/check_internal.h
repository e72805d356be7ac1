// Shared scaffolding of the C++ internal checks of the CPU GEMM (gemm_check_internal, gemm16_check_internal,
// gemm_driver_check_internal): the failure counters, CHECK (counts, prints the first 60 failures with a printf-style
// message) and the xorshift generator they draw their fresh random data from (seeded per check).
#pragma once
#include <cstdint>
#include <cstdio>

inline int g_failures = 0;
inline int g_checks = 0;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        ++g_checks;                                                         \
        if (!(cond)) {                                                      \
            ++g_failures;                                                   \
            if (g_failures <= 60) {                                         \
                std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
                std::printf(__VA_ARGS__);                                   \
                std::printf("\n");                                          \
            }                                                               \
        }                                                                   \
    } while (0)

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    // Uniform in [lo, hi) on a 2^-24 grid.
    float uniform(float lo, float hi) {
        return lo + (hi - lo) * static_cast<float>((next() >> 40) * (1.0 / 16777216.0));
    }
    // Uniform integer in [lo, hi].
    int64_t range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1)); }
};
