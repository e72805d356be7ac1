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

// Elements spanned by a row-major rows x cols matrix with leading dimension ld (0 when empty).
SW_HD uint64_t matrix_extent(int64_t rows, int64_t cols, int64_t ld) {
    return (rows <= 0 || cols <= 0) ? 0 : static_cast<uint64_t>((rows - 1) * ld + cols);
}

} // namespace sw
