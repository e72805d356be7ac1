// The CPU side of the mixed-precision training operations (sw_convert, sw_unscale_check, sw_axpy): the loops over one
// chunk of elements that CpuBackend (cpu/backend_cpu.cpp) runs in parallel on the device's thread pool; 16-bit values
// go through fp32 with core/dtype.h's conversions (round to nearest even).
#pragma once
#include "shardwise.h"

#include <cstdint>

namespace sw::cpu {

// Elements [begin, end) of each operation; dtypes are F32, F16 or BF16 (checked by the caller).
void convert_range(sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t begin, uint64_t end);
// Returns true when some element of [begin, end) was an infinity or NaN before scaling.
bool unscale_range(sw_dtype dtype, void* buf, float inv_scale, uint64_t begin, uint64_t end);
void axpy_range(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t begin, uint64_t end);

} // namespace sw::cpu
