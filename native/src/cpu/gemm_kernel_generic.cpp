// Portable micro-kernel of the fp32 GEMM (any CPU; see gemm.cpp for the blocking and the determinism
// rules). Plain C++ with fixed-size loops that the compiler keeps in registers and vectorises with
// the baseline ISA (SSE2 on x86-64). Multiply and add are written separately; every output element
// of every tile goes through this same code, so the arithmetic does not depend on the position.
//
// Register tile MR x NR = 4 x 8 (8 SSE registers of accumulators).
#include "cpu/gemm.h"
#include "cpu/gemm_convert.h"
#include "cpu/gemm_kernels.h"

namespace sw::cpu::gemm_detail {
namespace {

constexpr int kMR = 4;
constexpr int kNR = 8;

void kernel_generic(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                    const Epilogue& ep, const float* /*pf_b*/, const float* /*pf_c*/) {
    float acc[kMR][kNR] = {};
    for (int64_t p = 0; p < kc; ++p) {
        float bv[kNR];
        for (int j = 0; j < kNR; ++j) bv[j] = b[j];
        for (int r = 0; r < kMR; ++r) {
            const float av = a[r];
            for (int j = 0; j < kNR; ++j) acc[r][j] += av * bv[j];
        }
        a += kMR;
        b += ldb;
    }
    const float alpha = ep.alpha, beta = ep.beta;
    for (int r = 0; r < kMR; ++r) {
        float* cr = c + r * ldc;
        float x[kNR];
        if (ep.mode == kEpiBeta0) {
            for (int j = 0; j < kNR; ++j) x[j] = alpha * acc[r][j];
        } else if (ep.mode == kEpiBeta) {
            for (int j = 0; j < kNR; ++j) x[j] = alpha * acc[r][j] + beta * cr[j];
        } else {
            for (int j = 0; j < kNR; ++j) x[j] = alpha * acc[r][j] + cr[j];
        }
        if (ep.bias)
            for (int j = 0; j < kNR; ++j) x[j] += ep.bias[j];
        if (ep.gelu)
            for (int j = 0; j < kNR; ++j) x[j] = gelu_tanh(x[j]);
        for (int j = 0; j < kNR; ++j) cr[j] = x[j];
    }
}

} // namespace

KernelInfo kernel_info_generic() {
    KernelInfo ki{kMR, kNR, 128, 256, 4096, &kernel_generic};
    // 16-bit operands: converted in portable C++ (gemm_convert.h) while packing.
    ki.widen_f16 = &widen_f16_row;
    ki.widen_bf16 = &widen_bf16_row;
    ki.narrow_f16 = &narrow_f16_row;
    ki.narrow_bf16 = &narrow_bf16_row;
    return ki;
}

} // namespace sw::cpu::gemm_detail
