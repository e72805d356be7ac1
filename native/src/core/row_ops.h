// The kernels of a transformer block beyond the GEMM (sw_softmax, sw_norm, sw_activation_*, sw_glu, sw_dropout,
// sw_embedding, sw_cross_entropy_* and their backward): one validated description each, from the C ABI (core/api.cpp)
// through a backend (core/backend.h) to the kernels — the CPU's loops (cpu/row_ops.cpp) and the CUDA plugin's kernels
// (cuda/kernels.cu, through core/cuda_plugin_api.h). Pointers are already offset and range-checked; every value is
// fp32, token ids int32. Semantics: native/include/shardwise.h. The scalar functions below (activations, the dropout
// generator) are shared by both backends, so that dropout masks are the same bits everywhere.
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

struct ActivationArgs {
    sw_activation act;
    const float* x;
    float* y; // may equal x
    uint64_t count;
};

struct ActivationBackwardArgs {
    sw_activation act;
    const float* x;
    const float* dy;
    float* dx; // may equal dy
    uint64_t count;
};

struct GluArgs {
    sw_activation act;
    const float* gu; // rows x 2 cols: gate | up
    float* h;        // rows x cols
    int64_t rows, cols;
};

struct GluBackwardArgs {
    sw_activation act;
    const float* gu;
    const float* dh;
    float* dgu; // may equal gu
    int64_t rows, cols;
};

struct DropoutArgs {
    const float* x;
    float* y; // may equal x
    uint64_t count;
    uint32_t threshold; // kept when the 24-bit fraction >= threshold (= ceil(p * 2^24))
    float keep;         // 1 - p (fp32), the divisor of kept values
    uint64_t seed, counter;
};

struct EmbeddingArgs {
    const float* table; // shard_rows x cols
    int64_t shard_rows;
    const int32_t* ids;
    int64_t vocab_offset;
    float* out; // rows x cols
    int64_t rows, cols;
};

struct EmbeddingBackwardArgs {
    const float* dout;
    const int32_t* ids;
    int64_t vocab_offset;
    float* dtable;
    int64_t shard_rows, rows, cols;
    bool accumulate;
};

struct CrossEntropyPartialArgs {
    const float* logits;
    int64_t rows, cols, ld;
    const int32_t* ids;
    int64_t vocab_offset;
    float* stats; // 3 per row
};

// sw_cross_entropy_partial_tree (ABI 8): M = max over the parts' maxima (gathered[3 * (k * rows + r)], NaN-propagating),
// S = exp(z - M) summed per leaf of `leaf` columns (fp32, column order, from +0) and the leaves by sw::tree's order.
struct CrossEntropyPartialTreeArgs {
    const float* logits;    // unread (may be null) when cols == 0
    int64_t rows, cols, ld; // rows >= 1, cols >= 0, ld >= cols
    const int32_t* ids;
    int64_t vocab_offset;
    const float* gathered; // parts x rows x 3
    int32_t parts;         // >= 1
    int64_t leaf;          // >= 1
    bool include_max;
    float* out; // 3 per row: [include_max ? M : 0, S, t]; apart from the inputs
};

struct CrossEntropyCombineArgs {
    const float* stats; // parts x rows x 3
    int32_t parts;
    int64_t rows;
    const int32_t* ids;
    int64_t vocab_size;
    float* lse;
    float* loss;
};

struct CrossEntropyBackwardArgs {
    const float* logits;
    int64_t rows, cols, ld;
    const int32_t* ids;
    int64_t vocab_offset, vocab_size;
    const float* lse;
    const float* dloss;
    float* dlogits; // may equal logits
};

struct SgdArgs {
    sw_dtype grad_type;
    float* param;
    const void* grad;
    float* momentum_buf; // or null
    uint64_t count;
    float lr, momentum, weight_decay;
    bool nesterov;
};

struct AdamWArgs {
    sw_dtype grad_type;
    float* param;
    const void* grad;
    float* m;
    float* v;
    uint64_t count;
    float lr, beta1, beta2, eps, weight_decay;
    float bias1, bias2; // 1 - beta1^t, 1 - beta2^t
};

struct SumSquaresArgs {
    sw_dtype dtype;
    const void* x;
    uint64_t count;
    double* out;
    bool accumulate;
};

struct ScaleArgs {
    sw_dtype dtype;
    void* x;
    uint64_t count;
    float alpha;
};

// sw_sum_squares sums blocks of this many elements (each in order) and then the blocks' sums in order, on every backend.
constexpr uint64_t kSumSquaresBlock = 4096;

#if defined(__CUDACC__)
#define SW_HOST_DEVICE __host__ __device__
#else
#define SW_HOST_DEVICE
#endif

// The dropout generator: a 24-bit fraction of (seed, index) through the splitmix64 finalizer (integer arithmetic only:
// the same bits on every backend).
SW_HOST_DEVICE inline uint32_t dropout_bits(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<uint32_t>(z >> 40);
}

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
// Elements [b, e) / rows [r0, r1) / columns [c0, c1) of the other operations.
float activation(sw_activation act, float x);
float activation_grad(sw_activation act, float x);
void activation_range(const ActivationArgs& a, uint64_t b, uint64_t e);
void activation_backward_range(const ActivationBackwardArgs& a, uint64_t b, uint64_t e);
void glu_rows(const GluArgs& a, int64_t r0, int64_t r1);
void glu_backward_rows(const GluBackwardArgs& a, int64_t r0, int64_t r1);
void dropout_range(const DropoutArgs& a, uint64_t b, uint64_t e);
void embedding_rows(const EmbeddingArgs& a, int64_t r0, int64_t r1);
// Clears rows [r0, r1) of dtable when not accumulating (run over all rows before the scatter).
void embedding_backward_clear_rows(const EmbeddingBackwardArgs& a, int64_t r0, int64_t r1);
// Adds the token rows into columns [c0, c1) of dtable, tokens in order.
void embedding_backward_cols(const EmbeddingBackwardArgs& a, int64_t c0, int64_t c1);
void cross_entropy_partial_rows(const CrossEntropyPartialArgs& a, int64_t r0, int64_t r1);
void cross_entropy_partial_tree_rows(const CrossEntropyPartialTreeArgs& a, int64_t r0, int64_t r1);
void cross_entropy_combine_rows(const CrossEntropyCombineArgs& a, int64_t r0, int64_t r1);
void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t r0, int64_t r1);
// Optimizers: elements [b, e).
void sgd_range(const SgdArgs& a, uint64_t b, uint64_t e);
void adamw_range(const AdamWArgs& a, uint64_t b, uint64_t e);
// Σ x² over block k (elements [k·kSumSquaresBlock, ...)), in order, in double.
double sum_squares_block(const SumSquaresArgs& a, uint64_t block);
void scale_range(const ScaleArgs& a, uint64_t b, uint64_t e);
} // namespace cpu

} // namespace sw
