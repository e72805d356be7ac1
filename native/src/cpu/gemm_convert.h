// Row conversions of the CPU GEMM for 16-bit operands (bf16, IEEE fp16 "half"), portable C++, over the scalar
// conversions of core/dtype.h (their numerics are stated there). The SIMD versions in the kernel files (F16C /
// AVX-512 conversions) give the same bits; gemm16_check_internal compares them on every class of value.
#pragma once
#include "core/dtype.h"

#include <cstdint>

namespace sw::cpu::gemm_detail {

// Row conversions (n contiguous elements), the portable versions.
inline void widen_bf16_row(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}
inline void widen_f16_row(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}
inline void narrow_bf16_row(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}
inline void narrow_f16_row(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

} // namespace sw::cpu::gemm_detail
