// The CPU side of the mixed-precision training operations (sw_convert, sw_unscale_check, sw_axpy): scalar
// conversions between fp32 and the 16-bit types (round to nearest even) and the loops over one chunk of elements
// that CpuBackend (cpu/backend_cpu.cpp) runs in parallel on the device's thread pool.
#pragma once
#include "shardwise.h"

#include <cstdint>

namespace sw::cpu {

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even; |f| >= 65520 -> inf; NaN stays NaN (quiet)
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f); // round to nearest even; NaN stays NaN (quiet)

// Elements [begin, end) of each operation; dtypes are F32, F16 or BF16 (checked by the caller).
void convert_range(sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t begin, uint64_t end);
// Returns true when some element of [begin, end) was an infinity or NaN before scaling.
bool unscale_range(sw_dtype dtype, void* buf, float inv_scale, uint64_t begin, uint64_t end);
void axpy_range(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t begin, uint64_t end);

} // namespace sw::cpu
