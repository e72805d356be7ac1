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

// Few-row narrow variant: h rows x w columns (w < NR), otherwise as RowsKernel for a micro-panel of op(B) (packed,
// ldb == NR, or in place); only the w columns of b, c and the bias are read or written.
using MaskedRowsKernel = void (*)(int h, int w, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                  int64_t ldc, const Epilogue& ep);

// Row-walking few-row kernel: one k block (kc steps) of h rows x w columns with B read in place (b[p * ldb + j]) row
// by row across all w columns, a(r, p) = a[r * a_rs + p * a_ps] read unpacked, the accumulators in acc (h rows of
// ldacc >= round_up(w, 16) floats, 64-byte aligned), then the epilogue into C (w columns, bias: w entries). Every
// element gets exactly MicroKernel's FMA chain and epilogue: the same bits.
using WalkKernel = void (*)(int h, int64_t kc, const float* a, int64_t a_rs, int64_t a_ps, const float* b,
                            int64_t ldb, int64_t w, float* acc, int64_t ldacc, float* c, int64_t ldc,
                            const Epilogue& ep);

// The row-walking kernel of the bf16 pair path: one k block of kc elements (kc / 2 pair steps rounded up, the last
// one half when kc is odd) of h rows over w columns, B (bf16, op(B) = B) read in place two rows at a time, a the
// block's pair words of A as a pair pack of W >= h lays them out (a[q * a_ps + r] = A(r, 2q) | A(r, 2q + 1) << 16,
// the high half zero past kc; a_ps = W), acc h rows of ldacc >= round_up(w, 32) floats (64-byte aligned), then the
// epilogue into C (fp32, w columns). Every element gets exactly the pair MicroKernel's vdpbf16ps chain and epilogue:
// the same bits.
using WalkPairsKernel = void (*)(int h, int64_t kc, const uint32_t* a, int64_t a_ps, const uint16_t* b, int64_t ldb,
                                 int64_t w, float* acc, int64_t ldacc, float* c, int64_t ldc, const Epilogue& ep);

// Transposing pack of a micro-panel of width W (W = MR for op(A) = A, W = NR for op(B) = B^T):
// dst[p*W + c] = src[c*ld + p] for p < kc, c < w (w <= W), zero for w <= c < W.
using PackFn = void (*)(float* dst, const float* src, int64_t ld, int64_t kc, int w);

// Several full W-wide micro-panels (W = NR) from row-major storage (op(B) = B): panel j of dst (kc x W at
// dst + j*kc*W) gets columns [j*W, j*W + W) of the kc source rows (src[p*ld + c]), read row by row; pf > 0: the pf
// floats after the packed columns of each source row are prefetched towards L2 meanwhile (the next streamed chunk).
using PackPanelsFn = void (*)(float* dst, const float* src, int64_t ld, int64_t kc, int64_t panels, int64_t pf);

// Row conversions of 16-bit elements (n contiguous elements; see gemm_convert.h for the numerics, which every
// version follows bit for bit).
using WidenFn = void (*)(float* dst, const uint16_t* src, int64_t n);
// y[i] = GeLU(x[i]) for i < n (y may be x): the element-wise GeLU with exactly the arithmetic of the kernel's fused
// GeLU epilogue, so that a GeLU run apart gives the bits of the fused one.
using GeluFn = void (*)(float* y, const float* x, int64_t n);
using NarrowFn = void (*)(uint16_t* dst, const float* src, int64_t n);

// bf16 pair packs for the vdpbf16ps kernel (kernel_info_avx512bf16). A packed pair step q holds, for each of the
// W columns c of the micro-panel, one 32-bit word: the bf16 of k = p0 + 2q in the low half, k = p0 + 2q + 1 in
// the high half (zero when that k is past the block's kc elements), w <= c < W zero.
//  rows: the k steps are the rows of src (src[p*ld + c]: op(A) stored transposed, op(B) stored as is);
//  cols: the k steps run along the rows of src (src[c*ld + p]: op(A) stored as is, op(B) stored transposed).
using PairPackFn = void (*)(uint32_t* dst, const uint16_t* src, int64_t ld, int64_t kc, int w);

struct KernelInfo {
    int mr, nr;        // register tile
    int mc, kc, nc;    // cache blocks (kc is the maximum k block; see KBlocks in gemm.cpp)
    MicroKernel fn;
    MicroKernel half_fn = nullptr;   // optional: MR x NR/2 with the same per-element arithmetic
    RowsKernel rows_fn = nullptr;    // optional
    int rows_max = 0, rows_nr = 0;
    // optional: edge tiles of h <= edge_rows_max rows and more than NR/2 columns: h x NR from the packed panels
    // (a as for MicroKernel, b a packed micro-panel), the same per-element arithmetic as fn.
    RowsKernel edge_rows_fn = nullptr;
    int edge_rows_max = 0;
    // optional: the same for h <= edge_rows_max rows and w < NR columns, b (packed, or read in place) loaded and c
    // written only within the w columns (no temporary tile; nothing of b past the w columns is read).
    MaskedRowsKernel edge_rows_masked_fn = nullptr;
    // optional: the row-walking few-row kernel for op(B) = B stored as is (skinny M; see WalkKernel).
    WalkKernel walk_fn = nullptr;
    // optional (pair kernels): the same for bf16 A and B (see WalkPairsKernel).
    WalkPairsKernel walk_pairs_fn = nullptr;
    PackFn pack_trans_mr = nullptr;  // optional SIMD versions of the transposing packs
    PackFn pack_trans_nr = nullptr;
    PackPanelsFn pack_panels_nr = nullptr;  // optional SIMD version of the driver's row-by-row panel copy
    // 16-bit conversions (portable ones for the generic kernel, F16C / AVX-512 ones for the SIMD kernels).
    WidenFn widen_f16 = nullptr, widen_bf16 = nullptr;
    NarrowFn narrow_f16 = nullptr, narrow_bf16 = nullptr;
    GeluFn gelu = nullptr;  // the epilogue's GeLU over an array (null: gelu_tanh element by element)
    // The bf16 pair kernel (vdpbf16ps): when pairs is set, fn and half_fn take kc = the number of pair steps and
    // a, b packed with the pair packs below (32-bit words, read through the float pointers), and kc above is the
    // maximum k block in elements (even). rows_fn is unused.
    bool pairs = false;
    PairPackFn pack_pairs_rows_mr = nullptr, pack_pairs_cols_mr = nullptr; // A micro-panels (W = MR)
    PairPackFn pack_pairs_rows_nr = nullptr, pack_pairs_cols_nr = nullptr; // B micro-panels (W = NR)
};

// Defined in the per-ISA files. The AVX-512 / AVX2 entry points must only be called when the CPU
// supports them (checked by the driver).
KernelInfo kernel_info_avx512();
KernelInfo kernel_info_avx2();
KernelInfo kernel_info_generic();
// The bf16 pair kernel (14 x 32, vdpbf16ps); only called when the CPU has AVX512_BF16.
KernelInfo kernel_info_avx512bf16();
// True when the build contains the x86 SIMD kernels and the assembler knows vdpbf16ps.
bool have_avx512bf16_kernel();

// True when the build contains the x86 SIMD kernels.
bool have_x86_kernels();

} // namespace sw::cpu::gemm_detail
