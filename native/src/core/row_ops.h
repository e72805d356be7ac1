// The row-wise operations of a transformer block (sw_softmax, sw_softmax_backward, sw_norm, sw_norm_backward): one
// validated description each, from the C ABI (core/api.cpp) through a backend (core/backend.h) to the kernels — the
// CPU's loops (cpu/row_ops.cpp) and the CUDA plugin's kernels (cuda/kernels.cu, through core/cuda_plugin_api.h).
// Pointers are already offset and range-checked; every value is fp32. Semantics: native/include/shardwise.h.
#pragma once
#include "shardwise.h"

#include <cstdint>

namespace sw {

struct SoftmaxRows {
    const float* x;
    float* y;              // may equal x
    int64_t rows, cols, ld; // rows >= 1, cols >= 1, ld >= cols
    float scale;
    int64_t causal_period; // 0: no mask; T in [1, cols]: column j of row r kept when j <= r % T + (cols - T)
};

struct SoftmaxBackwardRows {
    const float* y;
    const float* dy;
    float* dx; // may equal dy
    int64_t rows, cols, ld;
    float scale;
};

struct NormRows {
    sw_norm_kind kind;
    const float* x;     // rows x cols, contiguous
    const float* gamma; // cols, or null (1)
    const float* beta;  // cols, or null (0); null for RMS
    float* y;           // may equal x
    float* stats;       // 2 * rows (mean, rstd per row), or null
    int64_t rows, cols;
    float eps;
};

struct NormBackwardRows {
    sw_norm_kind kind;
    const float* x;
    const float* gamma; // or null (1)
    const float* stats; // from the forward (mean, rstd per row)
    const float* dy;
    float* dx;          // may equal dy
    float* dgamma;      // cols, or null
    float* dbeta;       // cols, or null (always null for RMS)
    int64_t rows, cols;
    bool accumulate;    // add to dgamma / dbeta
};

namespace cpu {
// Rows [r0, r1) of each operation (the CPU backend runs row blocks in parallel; the emulated CUDA plugin calls them
// for all rows).
void softmax_rows(const SoftmaxRows& a, int64_t r0, int64_t r1);
void softmax_backward_rows(const SoftmaxBackwardRows& a, int64_t r0, int64_t r1);
void norm_rows(const NormRows& a, int64_t r0, int64_t r1);
// dx for rows [r0, r1) (reads x, gamma, stats, dy; dx may be dy).
void norm_backward_dx_rows(const NormBackwardRows& a, int64_t r0, int64_t r1);
// dgamma / dbeta for columns [c0, c1), each a sum over every row in order; must run before dx overwrites dy in place.
void norm_backward_param_cols(const NormBackwardRows& a, int64_t c0, int64_t c1);
} // namespace cpu

} // namespace sw
