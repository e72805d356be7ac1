// The CPU GEMM for every element-type combination of sw_gemm_ex (core/gemm_problem.h): f32 runs sgemm as it is;
// 16-bit inputs (f16, bf16) are widened to fp32 copies, the fp32 GEMM runs on them (fp32 accumulation, bias and
// epilogue in fp32, into C directly when C is f32), and a 16-bit C is rounded once at the end (round to nearest even).
// Simple and exact to the contract; the per-ISA 16-bit kernels replace the widening copies.
#include "cpu/gemm.h"

#include "core/dtype.h"

#include <cstdint>
#include <vector>

namespace sw::cpu {
namespace {

float widen(sw_dtype t, const void* base, int64_t i) {
    const auto* h = static_cast<const uint16_t*>(base);
    return t == SW_DTYPE_BF16 ? bf16_to_float(h[i]) : t == SW_DTYPE_F16 ? half_to_float(h[i])
                                                                         : static_cast<const float*>(base)[i];
}

// rows x cols with leading dimension ld, widened to a dense fp32 copy (ld = cols).
std::vector<float> widen_matrix(sw_dtype t, const void* src, int64_t rows, int64_t cols, int64_t ld) {
    std::vector<float> out(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) out[static_cast<size_t>(i * cols + j)] = widen(t, src, i * ld + j);
    return out;
}

} // namespace

void gemm(const GemmProblem& p, Kernel kernel, ThreadPool& pool) {
    if (p.a_type == SW_DTYPE_F32 && p.b_type == SW_DTYPE_F32 && p.c_type == SW_DTYPE_F32) {
        sgemm(p, kernel, pool);
        return;
    }
    GemmProblem q = p;
    q.a_type = q.b_type = q.c_type = q.bias_type = SW_DTYPE_F32;
    std::vector<float> a32, b32, c32, bias32;
    if (p.k > 0) {
        a32 = widen_matrix(p.a_type, p.a, p.a_rows(), p.a_cols(), p.lda);
        b32 = widen_matrix(p.b_type, p.b, p.b_rows(), p.b_cols(), p.ldb);
        q.a = a32.data();
        q.lda = p.a_cols();
        q.b = b32.data();
        q.ldb = p.b_cols();
    }
    if (p.bias && p.c_type != SW_DTYPE_F32) {
        bias32 = widen_matrix(p.c_type, p.bias, 1, p.n, p.n);
        q.bias = bias32.data();
    }
    if (p.c_type != SW_DTYPE_F32) {
        // beta == 0 never reads C: the fp32 copy is then left unread (zeros).
        c32 = p.beta != 0.0f ? widen_matrix(p.c_type, p.c, p.m, p.n, p.ldc)
                             : std::vector<float>(static_cast<size_t>(p.m * p.n));
        q.c = c32.data();
        q.ldc = p.n;
    }
    sgemm(q, kernel, pool);
    if (p.c_type != SW_DTYPE_F32) {
        auto* c = static_cast<uint16_t*>(p.c);
        const bool bf16 = p.c_type == SW_DTYPE_BF16;
        for (int64_t i = 0; i < p.m; ++i)
            for (int64_t j = 0; j < p.n; ++j) {
                const float v = c32[static_cast<size_t>(i * p.n + j)];
                c[i * p.ldc + j] = bf16 ? float_to_bf16(v) : float_to_half(v);
            }
    }
}

} // namespace sw::cpu
