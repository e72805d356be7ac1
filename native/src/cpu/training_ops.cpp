// See cpu/training_ops.h. The scalar conversions are core/dtype.h's (round to nearest even).
#include "cpu/training_ops.h"
#include "core/dtype.h"

#include <cmath>
#include <cstring>

namespace sw::cpu {

namespace {
inline float load(sw_dtype t, const void* p, uint64_t i) {
    switch (t) {
    case SW_DTYPE_F16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case SW_DTYPE_BF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
    }
}
inline void store(sw_dtype t, void* p, uint64_t i, float v) {
    switch (t) {
    case SW_DTYPE_F16: static_cast<uint16_t*>(p)[i] = float_to_half(v); break;
    case SW_DTYPE_BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16(v); break;
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

namespace {
// The fp32 case with the FMA instruction (one rounding, the same bits as fmaf), vectorized: without a target attribute
// the baseline build calls libm's fmaf for every element.
__attribute__((target("avx2,fma"))) void axpy_f32_fma(float alpha, const float* x, float* y, uint64_t begin, uint64_t end) {
    for (uint64_t i = begin; i < end; ++i) y[i] = __builtin_fmaf(alpha, x[i], y[i]);
}
const bool g_has_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
} // namespace

void axpy_range(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t begin, uint64_t end) {
    if (x_type == SW_DTYPE_F32 && g_has_fma) {
        axpy_f32_fma(alpha, static_cast<const float*>(x), y, begin, end);
        return;
    }
    for (uint64_t i = begin; i < end; ++i) y[i] = std::fma(alpha, load(x_type, x, i), y[i]);
}

} // namespace sw::cpu
