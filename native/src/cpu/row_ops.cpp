// The CPU loops of the row-wise transformer operations (core/row_ops.h): softmax with an optional causal mask, its
// backward, LayerNorm / RMSNorm and their backward. Row statistics and row sums accumulate in double and are rounded
// once to fp32; each row's element-wise results are fp32. A row's result depends on that row only (and a parameter
// gradient's column on its column only), so the row or column blocks the backend runs in parallel give the same bits
// for any number of threads.
#include "core/row_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sw::cpu {

namespace {
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
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < kept; ++j) mx = std::max(mx, a.scale * x[j]);
        double sum = 0;
        for (int64_t j = 0; j < kept; ++j) {
            const float e = std::exp(a.scale * x[j] - mx);
            y[j] = e;
            sum += e;
        }
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
        double dot = 0;
        for (int64_t j = 0; j < a.cols; ++j) dot += static_cast<double>(dy[j]) * y[j];
        const float d = static_cast<float>(dot);
        for (int64_t j = 0; j < a.cols; ++j) dx[j] = a.scale * y[j] * (dy[j] - d);
    }
}

void norm_rows(const NormRows& a, int64_t r0, int64_t r1) {
    const int64_t n = a.cols;
    for (int64_t r = r0; r < r1; ++r) {
        const float* x = a.x + r * n;
        float* y = a.y + r * n;
        double mean = 0, sq = 0;
        if (a.kind == SW_NORM_LAYER) {
            for (int64_t j = 0; j < n; ++j) mean += x[j];
            mean /= static_cast<double>(n);
            for (int64_t j = 0; j < n; ++j) {
                const double d = x[j] - mean;
                sq += d * d;
            }
        } else {
            for (int64_t j = 0; j < n; ++j) sq += static_cast<double>(x[j]) * x[j];
        }
        const float m = static_cast<float>(mean);
        const float rstd = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + a.eps));
        if (a.stats) {
            a.stats[2 * r] = m;
            a.stats[2 * r + 1] = rstd;
        }
        for (int64_t j = 0; j < n; ++j) {
            float v = (x[j] - m) * rstd;
            if (a.gamma) v *= a.gamma[j];
            if (a.beta) v += a.beta[j];
            y[j] = v;
        }
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
        double sg = 0, sgx = 0;
        for (int64_t j = 0; j < n; ++j) {
            const float g = a.gamma ? dy[j] * a.gamma[j] : dy[j];
            sg += g;
            sgx += static_cast<double>(g) * ((x[j] - m) * rstd);
        }
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

} // namespace sw::cpu
