// Internal interface between the GEMM driver (gemm.cpp) and the per-ISA micro-kernels
// (gemm_kernel_*.cpp). Not part of the library's API.
#pragma once
#include <cstdint>

namespace sw::cpu::gemm_detail {

// How the micro-kernel combines its accumulator with C (see the determinism rules in gemm.cpp).
enum EpiMode : int {
    kEpiBeta0 = 0,  // first k block, beta == 0:  C = alpha*acc              (C is never read)
    kEpiBeta = 1,   // first k block, beta != 0:  C = fma(alpha, acc, beta*C)
    kEpiAccum = 2,  // later k blocks:            C = fma(alpha, acc, C)
};

struct Epilogue {
    float alpha = 1.0f;
    float beta = 0.0f;
    int mode = kEpiBeta0;
    const float* bias = nullptr; // NR entries (last k block only), else null
    bool gelu = false;           // last k block only
};

// One MR x NR register tile: acc = sum_{p < kc} a[p*MR + r] * b[p*ldb + c] (one FMA chain per output
// element, in order of p, starting from 0), then the epilogue above into C (row stride ldc).
//  a: packed micro-panel of op(A), MR floats per k step.
//  b: micro-panel of op(B), NR contiguous floats per k step, k steps ldb floats apart (ldb == NR for a
//     packed panel; larger when the kernel reads B in place).
//  kc may be 0 (acc = 0).
//  pf_b, pf_c: prefetch hints, may be null (ignored by kernels that do not prefetch): pf_b is a part of
//  the B micro-panel used next (about kc/4 cache lines from there are fetched towards L2 during the k
//  loop), pf_c the C tile computed next (same ldc, MR rows of NR floats).
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                             int64_t ldc, const Epilogue& ep, const float* pf_b, const float* pf_c);

// Few-row variant for small m (GEMV-like shapes): h rows (1 <= h <= rows_max) x rows_nr columns
// (a multiple of NR), a packed as for MicroKernel (MR floats per k step, rows >= h ignored), b read in
// place (k steps ldb floats apart). Every element gets exactly the FMA chain and epilogue of
// MicroKernel, so results are bit-identical to the full kernel's.
using RowsKernel = void (*)(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                            int64_t ldc, const Epilogue& ep);

// Transposing pack of a micro-panel of width W (W = MR for op(A) = A, W = NR for op(B) = B^T):
// dst[p*W + c] = src[c*ld + p] for p < kc, c < w (w <= W), zero for w <= c < W.
using PackFn = void (*)(float* dst, const float* src, int64_t ld, int64_t kc, int w);

struct KernelInfo {
    int mr, nr;        // register tile
    int mc, kc, nc;    // cache blocks (kc is the maximum k block; see KBlocks in gemm.cpp)
    MicroKernel fn;
    MicroKernel half_fn = nullptr;   // optional: MR x NR/2 with the same per-element arithmetic
    RowsKernel rows_fn = nullptr;    // optional
    int rows_max = 0, rows_nr = 0;
    PackFn pack_trans_mr = nullptr;  // optional SIMD versions of the transposing packs
    PackFn pack_trans_nr = nullptr;
};

// Defined in the per-ISA files. The AVX-512 / AVX2 entry points must only be called when the CPU
// supports them (checked by the driver).
KernelInfo kernel_info_avx512();
KernelInfo kernel_info_avx2();
KernelInfo kernel_info_generic();

// True when the build contains the x86 SIMD kernels.
bool have_x86_kernels();

} // namespace sw::cpu::gemm_detail
