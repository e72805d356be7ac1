// The CPU loops of the row-wise transformer operations (core/row_ops.h): softmax with an optional causal mask, its
// backward, LayerNorm / RMSNorm and their backward. Row statistics and row sums accumulate in double (8 interleaved
// partial sums in a fixed order) and are rounded once to fp32; each row's element-wise results are fp32. Also the activations, gated units, dropout, embedding and
// vocabulary-parallel cross-entropy (core/row_ops.h). A row's result depends on that row only (and a parameter
// gradient's column on its column only), so the row or column blocks the backend runs in parallel give the same bits
// for any number of threads.
#include "core/row_ops.h"
#include "core/dtype.h"
#include "core/tree_reduction.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sw::cpu {

namespace {
// Sums f(0) + ... + f(n - 1) in double over 8 interleaved partial sums (element j into partial j mod 8, the partials
// added in order at the end): a fixed order for a given n, and 8 independent chains the core overlaps.
template <class F>
double sum8(int64_t n, F f) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) a[l] += f(j + l);
    for (int l = 0; j < n; ++j, ++l) a[l] += f(j);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// max over x[0..n) (exact whatever the order).
float max8(const float* x, int64_t n, float scale) {
    float a[8];
    for (float& v : a) v = -std::numeric_limits<float>::infinity();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) a[l] = std::max(a[l], scale * x[j + l]);
    for (int l = 0; j < n; ++j, ++l) a[l] = std::max(a[l], scale * x[j]);
    float m = a[0];
    for (int l = 1; l < 8; ++l) m = std::max(m, a[l]);
    return m;
}

// Columns of row r that the causal mask keeps (all of them without a mask).
int64_t kept_columns(int64_t r, int64_t cols, int64_t period) {
    if (period <= 0) return cols;
    return std::min(cols, r % period + (cols - period) + 1);
}
} // namespace

void softmax_rows(const SoftmaxRows& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* x = a.x + r * a.ld;
        float* y = a.y + r * a.ld;
        const int64_t kept = kept_columns(r, a.cols, a.causal_period);
        const float mx = max8(x, kept, a.scale);
        for (int64_t j = 0; j < kept; ++j) y[j] = std::exp(a.scale * x[j] - mx); // y may be x: each element read, then written
        const double sum = sum8(kept, [y](int64_t j) { return static_cast<double>(y[j]); });
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t j = 0; j < kept; ++j) y[j] *= inv;
        for (int64_t j = kept; j < a.cols; ++j) y[j] = 0.0f;
    }
}

void softmax_backward_rows(const SoftmaxBackwardRows& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* y = a.y + r * a.ld;
        const float* dy = a.dy + r * a.ld;
        float* dx = a.dx + r * a.ld;
        const double dot = sum8(a.cols, [y, dy](int64_t j) { return static_cast<double>(dy[j]) * y[j]; });
        const float d = static_cast<float>(dot);
        for (int64_t j = 0; j < a.cols; ++j) dx[j] = a.scale * y[j] * (dy[j] - d);
    }
}

void norm_rows(const NormRows& a, int64_t r0, int64_t r1) {
    const int64_t n = a.cols;
    for (int64_t r = r0; r < r1; ++r) {
        const float* x = a.x + r * n;
        float* y = a.y + r * n;
        double mean = 0;
        if (a.kind == SW_NORM_LAYER) mean = sum8(n, [x](int64_t j) { return static_cast<double>(x[j]); }) / static_cast<double>(n);
        const double sq = sum8(n, [x, mean](int64_t j) {
            const double d = x[j] - mean;
            return d * d;
        });
        const float m = static_cast<float>(mean);
        const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + a.eps));
        if (a.stats) {
            a.stats[2 * r] = m;
            a.stats[2 * r + 1] = rstd;
        }
        // One loop per case (no branch inside: each vectorizes); y may be x (element j read, then written).
        const float* g = a.gamma;
        const float* b = a.beta;
        if (g && b)
            for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - m) * rstd * g[j] + b[j];
        else if (g)
            for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - m) * rstd * g[j];
        else if (b)
            for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - m) * rstd + b[j];
        else
            for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - m) * rstd;
    }
}

void norm_backward_dx_rows(const NormBackwardRows& a, int64_t r0, int64_t r1) {
    const int64_t n = a.cols;
    const bool layer = a.kind == SW_NORM_LAYER;
    for (int64_t r = r0; r < r1; ++r) {
        const float* x = a.x + r * n;
        const float* dy = a.dy + r * n;
        float* dx = a.dx + r * n;
        const float m = a.stats[2 * r], rstd = a.stats[2 * r + 1];
        const float* gamma = a.gamma;
        auto g_at = [dy, gamma](int64_t j) { return gamma ? dy[j] * gamma[j] : dy[j]; };
        const double sg = layer ? sum8(n, [&](int64_t j) { return static_cast<double>(g_at(j)); }) : 0.0;
        const double sgx = sum8(n, [&](int64_t j) { return static_cast<double>(g_at(j)) * ((x[j] - m) * rstd); });
        const float mg = layer ? static_cast<float>(sg / static_cast<double>(n)) : 0.0f;
        const float mgx = static_cast<float>(sgx / static_cast<double>(n));
        for (int64_t j = 0; j < n; ++j) {
            const float g = a.gamma ? dy[j] * a.gamma[j] : dy[j];
            const float xhat = (x[j] - m) * rstd;
            dx[j] = rstd * (g - mg - xhat * mgx);
        }
    }
}

void norm_backward_param_cols(const NormBackwardRows& a, int64_t c0, int64_t c1) {
    const int64_t n = a.cols, w = c1 - c0;
    if (w <= 0 || (!a.dgamma && !a.dbeta)) return;
    constexpr int64_t kBlock = 256;
    for (int64_t cb = c0; cb < c1; cb += kBlock) {
        const int64_t ce = std::min(c1, cb + kBlock);
        double sg[kBlock] = {}, sb[kBlock] = {};
        for (int64_t r = 0; r < a.rows; ++r) {
            const float* x = a.x + r * n;
            const float* dy = a.dy + r * n;
            const float m = a.stats[2 * r], rstd = a.stats[2 * r + 1];
            for (int64_t c = cb; c < ce; ++c) {
                sg[c - cb] += static_cast<double>(dy[c]) * ((x[c] - m) * rstd);
                sb[c - cb] += dy[c];
            }
        }
        for (int64_t c = cb; c < ce; ++c) {
            if (a.dgamma) a.dgamma[c] = static_cast<float>(sg[c - cb] + (a.accumulate ? a.dgamma[c] : 0.0));
            if (a.dbeta) a.dbeta[c] = static_cast<float>(sb[c - cb] + (a.accumulate ? a.dbeta[c] : 0.0));
        }
    }
}

// ------------------------------------------------------------------ activations, gated units, dropout
float activation(sw_activation act, float x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return x > 0.0f ? x : 0.0f;
    case SW_ACTIVATION_SILU: return x / (1.0f + std::exp(-x));
    default: {
        const float c = 0.7978845608028654f;
        return 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x)));
    }
    }
}

float activation_grad(sw_activation act, float x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case SW_ACTIVATION_SILU: {
        const float s = 1.0f / (1.0f + std::exp(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    default: {
        const float c = 0.7978845608028654f;
        const float t = std::tanh(c * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
    }
    }
}

void activation_range(const ActivationArgs& a, uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) a.y[i] = activation(a.act, a.x[i]);
}

void activation_backward_range(const ActivationBackwardArgs& a, uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) a.dx[i] = a.dy[i] * activation_grad(a.act, a.x[i]);
}

void glu_rows(const GluArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* g = a.gu + r * 2 * a.cols;
        float* h = a.h + r * a.cols;
        for (int64_t j = 0; j < a.cols; ++j) h[j] = activation(a.act, g[j]) * g[a.cols + j];
    }
}

void glu_backward_rows(const GluBackwardArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* g = a.gu + r * 2 * a.cols;
        const float* dh = a.dh + r * a.cols;
        float* d = a.dgu + r * 2 * a.cols;
        for (int64_t j = 0; j < a.cols; ++j) {
            const float gate = g[j], up = g[a.cols + j];
            d[j] = dh[j] * up * activation_grad(a.act, gate);
            d[a.cols + j] = dh[j] * activation(a.act, gate);
        }
    }
}

void dropout_range(const DropoutArgs& a, uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i)
        a.y[i] = dropout_bits(a.seed, a.counter + i) >= a.threshold ? a.x[i] / a.keep : 0.0f;
}

// ------------------------------------------------------------------ vocabulary-parallel embedding and cross-entropy
namespace {
// The shard row of a token id, or -1 when the id is not in the shard.
int64_t shard_row(int32_t id, int64_t vocab_offset, int64_t shard_rows) {
    const int64_t row = static_cast<int64_t>(id) - vocab_offset;
    return row >= 0 && row < shard_rows ? row : -1;
}
} // namespace

void embedding_rows(const EmbeddingArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        float* out = a.out + r * a.cols;
        const int64_t row = shard_row(a.ids[r], a.vocab_offset, a.shard_rows);
        if (row < 0) {
            std::fill(out, out + a.cols, 0.0f);
            continue;
        }
        const float* t = a.table + row * a.cols;
        std::copy(t, t + a.cols, out);
    }
}

void embedding_backward_clear_rows(const EmbeddingBackwardArgs& a, int64_t r0, int64_t r1) {
    if (!a.accumulate) std::fill(a.dtable + r0 * a.cols, a.dtable + r1 * a.cols, 0.0f);
}

void embedding_backward_cols(const EmbeddingBackwardArgs& a, int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < a.rows; ++r) {
        const int64_t row = shard_row(a.ids[r], a.vocab_offset, a.shard_rows);
        if (row < 0) continue;
        const float* d = a.dout + r * a.cols;
        float* t = a.dtable + row * a.cols;
        for (int64_t c = c0; c < c1; ++c) t[c] += d[c];
    }
}

void cross_entropy_partial_rows(const CrossEntropyPartialArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* z = a.logits + r * a.ld;
        const float mx = max8(z, a.cols, 1.0f);
        const double sum = sum8(a.cols, [z, mx](int64_t j) { return static_cast<double>(std::exp(z[j] - mx)); });
        const int64_t t = shard_row(a.ids[r], a.vocab_offset, a.cols);
        a.stats[3 * r] = mx;
        a.stats[3 * r + 1] = static_cast<float>(sum);
        a.stats[3 * r + 2] = t >= 0 ? z[t] : 0.0f;
    }
}

// M: the parts' maxima, NaN when one is NaN (std::max would drop it); S: each leaf summed from +0 in column order in
// fp32 with std::exp(float) (the C library's expf, the one of cross_entropy_partial_rows; never vectorized: the build
// has no -ffast-math), the leaves combined by sw::tree::sum, one fp32 addition per node.
void cross_entropy_partial_tree_rows(const CrossEntropyPartialTreeArgs& a, int64_t r0, int64_t r1) {
    const int64_t nleaves = a.cols == 0 ? 0 : (a.cols - 1) / a.leaf + 1;
    std::vector<float> leaves(static_cast<size_t>(nleaves));
    for (int64_t r = r0; r < r1; ++r) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int32_t k = 0; k < a.parts; ++k) {
            const float v = a.gathered[(static_cast<int64_t>(k) * a.rows + r) * 3];
            if (std::isnan(v) || v > mx) mx = v;
            if (std::isnan(mx)) break;
        }
        float sum = 0.0f;
        if (nleaves > 0) {
            const float* z = a.logits + r * a.ld;
            for (int64_t l = 0; l < nleaves; ++l) {
                const int64_t j1 = std::min(a.cols, (l + 1) * a.leaf);
                float acc = 0.0f;
                for (int64_t j = l * a.leaf; j < j1; ++j) acc = acc + std::exp(z[j] - mx);
                leaves[static_cast<size_t>(l)] = acc;
            }
            sum = sw::tree::sum(leaves.data(), nleaves, [](float x, float y) { return x + y; });
        }
        const int64_t t = shard_row(a.ids[r], a.vocab_offset, a.cols);
        a.out[3 * r] = a.include_max ? mx : 0.0f;
        a.out[3 * r + 1] = sum;
        a.out[3 * r + 2] = t >= 0 ? a.logits[r * a.ld + t] : 0.0f;
    }
}

void cross_entropy_combine_rows(const CrossEntropyCombineArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int32_t k = 0; k < a.parts; ++k) mx = std::max(mx, a.stats[(k * a.rows + r) * 3]);
        double sum = 0, target = 0;
        for (int32_t k = 0; k < a.parts; ++k) {
            const float* st = a.stats + (k * a.rows + r) * 3;
            sum += static_cast<double>(st[1]) * std::exp(static_cast<double>(st[0]) - mx);
            target += st[2];
        }
        const double lse = mx + std::log(sum);
        a.lse[r] = static_cast<float>(lse);
        const int32_t id = a.ids[r];
        a.loss[r] = id >= 0 && id < a.vocab_size ? static_cast<float>(lse - target) : 0.0f;
    }
}

void cross_entropy_backward_rows(const CrossEntropyBackwardArgs& a, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
        const float* z = a.logits + r * a.ld;
        float* d = a.dlogits + r * a.ld;
        const int32_t id = a.ids[r];
        if (id < 0 || id >= a.vocab_size) {
            std::fill(d, d + a.cols, 0.0f);
            continue;
        }
        const float lse = a.lse[r], g = a.dloss[r];
        const int64_t t = shard_row(id, a.vocab_offset, a.cols);
        for (int64_t j = 0; j < a.cols; ++j) d[j] = g * (std::exp(z[j] - lse) - (j == t ? 1.0f : 0.0f));
    }
}

// ------------------------------------------------------------------ optimizers
namespace {
float grad_at(sw_dtype t, const void* g, uint64_t i) {
    switch (t) {
    case SW_DTYPE_F16: return half_to_float(static_cast<const uint16_t*>(g)[i]);
    case SW_DTYPE_BF16: return bf16_to_float(static_cast<const uint16_t*>(g)[i]);
    default: return static_cast<const float*>(g)[i];
    }
}
} // namespace

void sgd_range(const SgdArgs& a, uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) {
        float g = grad_at(a.grad_type, a.grad, i) + a.weight_decay * a.param[i];
        if (a.momentum_buf) {
            const float buf = a.momentum * a.momentum_buf[i] + g;
            a.momentum_buf[i] = buf;
            g = a.nesterov ? g + a.momentum * buf : buf;
        }
        a.param[i] = a.param[i] - a.lr * g;
    }
}

void adamw_range(const AdamWArgs& a, uint64_t b, uint64_t e) {
    const float decay = 1.0f - a.lr * a.weight_decay;
    for (uint64_t i = b; i < e; ++i) {
        const float g = grad_at(a.grad_type, a.grad, i);
        const float m = a.beta1 * a.m[i] + (1.0f - a.beta1) * g;
        const float v = a.beta2 * a.v[i] + (1.0f - a.beta2) * g * g;
        a.m[i] = m;
        a.v[i] = v;
        const float p = a.param[i] * decay;
        a.param[i] = p - a.lr * (m / a.bias1) / (std::sqrt(v / a.bias2) + a.eps);
    }
}

double sum_squares_block(const SumSquaresArgs& a, uint64_t block) {
    const uint64_t b = block * kSumSquaresBlock, e = std::min(a.count, b + kSumSquaresBlock);
    double s = 0;
    for (uint64_t i = b; i < e; ++i) {
        const double v = grad_at(a.dtype, a.x, i);
        s += v * v;
    }
    return s;
}

void scale_range(const ScaleArgs& a, uint64_t b, uint64_t e) {
    for (uint64_t i = b; i < e; ++i) {
        switch (a.dtype) {
        case SW_DTYPE_F16: {
            auto* x = static_cast<uint16_t*>(a.x);
            x[i] = float_to_half(half_to_float(x[i]) * a.alpha);
            break;
        }
        case SW_DTYPE_BF16: {
            auto* x = static_cast<uint16_t*>(a.x);
            x[i] = float_to_bf16(bf16_to_float(x[i]) * a.alpha);
            break;
        }
        default: static_cast<float*>(a.x)[i] *= a.alpha; break;
        }
    }
}

} // namespace sw::cpu
