// Index math shared by the CPU backend, CUDA kernels and (through sw_shard_range) the managed layers.
// Every function is usable from host and device code.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#  define SW_HD __host__ __device__ __forceinline__
#else
#  define SW_HD inline
#endif

namespace sw {

// Even split of `total` items into `parts`: the first total % parts parts get one extra item.
SW_HD int64_t shard_offset(int64_t total, int32_t parts, int32_t index) {
    const int64_t base = total / parts, rem = total % parts;
    return index * base + (index < rem ? index : rem);
}
SW_HD int64_t shard_count(int64_t total, int32_t parts, int32_t index) {
    const int64_t base = total / parts, rem = total % parts;
    return base + (index < rem ? 1 : 0);
}

// Elements spanned by a row-major rows x cols matrix with leading dimension ld (0 when empty). Saturates at
// UINT64_MAX (which fits no buffer) instead of overflowing, so a huge ld can never pass a bounds check.
SW_HD uint64_t matrix_extent(int64_t rows, int64_t cols, int64_t ld) {
    if (rows <= 0 || cols <= 0) return 0;
    if (ld < 0) return ~uint64_t{0};
    const uint64_t r = static_cast<uint64_t>(rows - 1), l = static_cast<uint64_t>(ld), c = static_cast<uint64_t>(cols);
    if (r != 0 && l > (~uint64_t{0} - c) / r) return ~uint64_t{0};
    return r * l + c;
}

// a * b for element counts, saturating at UINT64_MAX (which fits no buffer, so buffer_span reports the overflow)
// instead of wrapping to a small count that a bounds check would let through.
SW_HD uint64_t saturating_mul(uint64_t a, uint64_t b) {
    if (a != 0 && b > ~uint64_t{0} / a) return ~uint64_t{0};
    return a * b;
}

} // namespace sw
