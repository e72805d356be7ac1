// AVX-512 micro-kernels of the fp32 GEMM (see gemm.cpp for the blocking and the determinism rules).
//
// Register tile MR x NR = 14 x 32: 28 zmm accumulators (14 rows x 2 vectors of 16 floats), 2 zmm for
// the current row of the B micro-panel, 2 for broadcast elements of A. Per k step: 2 vector loads,
// 14 broadcasts, 28 FMAs, i.e. 14 cycles of FMA work on a core with two 512-bit FMA pipes against 16
// loads, so the kernel is FMA bound with plenty of independent chains to hide the FMA latency
// (about 94% of the FMA peak of a Zen 5 core with its operands in L1/L2).
// Cache blocks: KC = 512 (the 64 KiB B micro-panel is read from L2; a long KC halves the passes over
// C), MC = 168 (A block of 336 KiB in L2), NC = 4096.
// Also here: a half-width 14 x 16 kernel for narrow edge tiles, a few-row kernel for m <= 6 that reads
// B in place (GEMV-like shapes), and SIMD transposing packs. All compute each output element with
// the same FMA chain and the same epilogue code, so they agree bit for bit.
//
// Compiled with a target attribute (the library is built without -march), only called after the
// driver checked __builtin_cpu_supports.
#include "cpu/gemm_kernels.h"

#if defined(__x86_64__)
#include <algorithm>
#include <immintrin.h>

// Cache-block sizes and the few-row kernel's prefetch distance in k steps (overridable at compile
// time for tuning experiments only).
#ifndef SW_AVX512_MC
#define SW_AVX512_MC 168
#endif
#ifndef SW_AVX512_KC
#define SW_AVX512_KC 512
#endif
#ifndef SW_AVX512_NC
#define SW_AVX512_NC 4096
#endif
#ifndef SW_ROWS_PF
#define SW_ROWS_PF 8
#endif

#define SW_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))

namespace sw::cpu::gemm_detail {
namespace {

// GeLU (tanh approximation) for 16 lanes:
//   0.5 x (1 + tanh(u)) == x / (1 + exp(-2u)),  u = sqrt(2/pi) (x + 0.044715 x^3).
// exp is a Cephes-style degree-6 polynomial after range reduction (about 1 ulp), scaled with
// vscalefps. The argument is clamped so that exp neither overflows nor becomes subnormal; NaN
// inputs stay NaN through the final x / (...). Lane-wise, so every element gets the same arithmetic.
SW_TARGET_AVX512 inline __m512 gelu16(__m512 x) {
    const __m512 x2 = _mm512_mul_ps(x, x);
    // t = -2u = x * (-2 sqrt(2/pi) - 2 sqrt(2/pi) 0.044715 x^2)
    __m512 t = _mm512_mul_ps(x, _mm512_fmadd_ps(x2, _mm512_set1_ps(-0.0713548162726f),
                                                _mm512_set1_ps(-1.5957691216057f)));
    // (Zero-masking forms with a full mask: same results, and no GCC 12 -Wmaybe-uninitialized false
    // positive from the _mm512_undefined_ps() inside the unmasked intrinsics.)
    const __mmask16 all = 0xFFFF;
    t = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, t, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), t);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512 e = _mm512_maskz_scalef_ps(all, p, n);
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// The element-wise GeLU with the epilogue's arithmetic (gelu16 lane-wise; the tail through a masked load and store).
SW_TARGET_AVX512 void gelu_array_avx512(float* y, const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

// Combines one accumulator vector with C according to the epilogue mode (C is read unless kEpiBeta0).
SW_TARGET_AVX512 inline __m512 combine16(const float* cp, __m512 acc, int mode, __m512 valpha,
                                         __m512 vbeta) {
    if (mode == kEpiBeta0) return _mm512_mul_ps(valpha, acc);
    if (mode == kEpiBeta) return _mm512_fmadd_ps(valpha, acc, _mm512_mul_ps(vbeta, _mm512_loadu_ps(cp)));
    return _mm512_fmadd_ps(valpha, acc, _mm512_loadu_ps(cp));
}

// The whole epilogue of one vector: combine with C, + bias (if non-null), GeLU (if requested), store.
// With beta == 0 in the only k block the bias goes into the FMA: C = fma(alpha, acc, bias). (Written
// out on purpose: GCC contracts a multiply feeding an add into an FMA where it sees one (C++ defaults
// to -ffp-contract=fast), and whether it does must not differ between the kernels that share this
// code. No other multiply here feeds an add.)
SW_TARGET_AVX512 inline void finish16(float* cp, __m512 acc, int mode, __m512 valpha, __m512 vbeta,
                                      const float* bias, bool gelu) {
    __m512 x;
    if (bias && mode == kEpiBeta0) {
        x = _mm512_fmadd_ps(valpha, acc, _mm512_loadu_ps(bias));
    } else {
        x = combine16(cp, acc, mode, valpha, vbeta);
        if (bias) x = _mm512_add_ps(x, _mm512_loadu_ps(bias));
    }
    if (gelu) x = gelu16(x);
    _mm512_storeu_ps(cp, x);
}

// ---- The k loop, in inline assembly ------------------------------------------------------------
// (Compilers differ a lot on this loop: GCC 12 spills accumulators of a 14 x 32 intrinsics kernel, so
// the loop is written out. zmm0..zmm27: accumulators, row r in zmm(2r), zmm(2r+1); zmm28, zmm29: the
// row of B; zmm30, zmm31: broadcast elements of A (alternating, to keep more loads in flight).)

// One row of the tile at k step U: broadcast a[U*MR + R], two FMAs.
// (SW_OP is the multiply-accumulate: vfmadd231ps for fp32, vdpbf16ps for bf16 pairs, where a k step is a pair
// step and the 32-bit broadcast carries the two bf16 of A.)
#define SW_ROW(U, R, AREG, C0, C1)                                             \
    "vbroadcastss " #U "*56+" #R "*4(%[a]), %%zmm" #AREG "\n\t"               \
    SW_OP " %%zmm28, %%zmm" #AREG ", %%zmm" #C0 "\n\t"                        \
    SW_OP " %%zmm29, %%zmm" #AREG ", %%zmm" #C1 "\n\t"

// One k step (U = 0..3 within an unrolled group of four): load the B row, 14 rows of FMAs.
#define SW_STEP(U)                                                             \
    "vmovups (%[b]), %%zmm28\n\t"                                             \
    "vmovups 64(%[b]), %%zmm29\n\t"                                           \
    "prefetcht0 " #U "*56+1024(%[a])\n\t"                                     \
    "add %[ldb], %[b]\n\t"                                                    \
    SW_ROW(U, 0, 30, 0, 1) SW_ROW(U, 1, 31, 2, 3) SW_ROW(U, 2, 30, 4, 5)       \
    SW_ROW(U, 3, 31, 6, 7) SW_ROW(U, 4, 30, 8, 9) SW_ROW(U, 5, 31, 10, 11)     \
    SW_ROW(U, 6, 30, 12, 13) SW_ROW(U, 7, 31, 14, 15) SW_ROW(U, 8, 30, 16, 17) \
    SW_ROW(U, 9, 31, 18, 19) SW_ROW(U, 10, 30, 20, 21)                         \
    SW_ROW(U, 11, 31, 22, 23) SW_ROW(U, 12, 30, 24, 25)                        \
    SW_ROW(U, 13, 31, 26, 27)

#define SW_ZERO2(X, Y) "vpxord %%zmm" #X ", %%zmm" #X ", %%zmm" #X "\n\t" \
                       "vpxord %%zmm" #Y ", %%zmm" #Y ", %%zmm" #Y "\n\t"
#define SW_STORE2(X, Y) "vmovaps %%zmm" #X ", " #X "*64(%[acc])\n\t" \
                        "vmovaps %%zmm" #Y ", " #Y "*64(%[acc])\n\t"
#define SW_ALL_PAIRS(M)                                                          \
    M(0, 1) M(2, 3) M(4, 5) M(6, 7) M(8, 9) M(10, 11) M(12, 13) M(14, 15) M(16, 17) \
    M(18, 19) M(20, 21) M(22, 23) M(24, 25) M(26, 27)

// acc[r*32 + c] = sum_{p < kc} a[p*14 + r] * b[p*ldb + c], one FMA chain per element, p increasing.
// acc: 64-byte aligned, 14 x 32 floats. Prefetches (towards L2) one line from pf_b every 4 k steps
// (pf_b advancing by 64 bytes), and during the first 14 groups of 4 k steps the 14 rows of the C tile
// at pf_c (row stride ldc floats).
#define SW_OP "vfmadd231ps"
SW_TARGET_AVX512 void kloop_14x32(int64_t kc, const float* a, const float* b, int64_t ldb, float* acc,
                                  const float* pf_b, const float* pf_c, int64_t ldc) {
    int64_t k4 = kc / 4, k1 = kc % 4;
    int64_t crows = 14;
    const int64_t ldb_bytes = ldb * static_cast<int64_t>(sizeof(float));
    const int64_t ldc_bytes = ldc * static_cast<int64_t>(sizeof(float));
    __asm__ volatile(
        SW_ALL_PAIRS(SW_ZERO2)
        "test %[k4], %[k4]\n\t"
        "jz 2f\n\t"
        ".p2align 5\n"
        "1:\n\t"
        SW_STEP(0) SW_STEP(1)
        "prefetcht1 (%[pfb])\n\t"
        "add $64, %[pfb]\n\t"
        "dec %[crows]\n\t"
        "js 5f\n\t"
        "prefetcht1 (%[pfc])\n\t"
        "prefetcht1 124(%[pfc])\n\t"
        "add %[ldc], %[pfc]\n"
        "5:\n\t"
        SW_STEP(2) SW_STEP(3)
        "add $224, %[a]\n\t"
        "dec %[k4]\n\t"
        "jnz 1b\n"
        "2:\n\t"
        "test %[k1], %[k1]\n\t"
        "jz 4f\n"
        "3:\n\t"
        SW_STEP(0)
        "add $56, %[a]\n\t"
        "dec %[k1]\n\t"
        "jnz 3b\n"
        "4:\n\t"
        SW_ALL_PAIRS(SW_STORE2)
        : [a] "+r"(a), [b] "+r"(b), [k4] "+r"(k4), [k1] "+r"(k1), [pfb] "+r"(pf_b), [pfc] "+r"(pf_c),
          [crows] "+r"(crows)
        : [ldb] "r"(ldb_bytes), [acc] "r"(acc), [ldc] "r"(ldc_bytes)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
          "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28",
          "xmm29", "xmm30", "xmm31");
}

#undef SW_OP

// The same loop for the bf16 pair kernel: kc pair steps, acc[r*32 + c] = a chain of vdpbf16ps over the pairs
// (each adds the two products of a pair to the fp32 accumulator; bf16 subnormal inputs and subnormal results
// are flushed to zero by the instruction).
#define SW_OP "vdpbf16ps"
SW_TARGET_AVX512 void kloop_14x32_bf16(int64_t kc, const float* a, const float* b, int64_t ldb, float* acc,
                                  const float* pf_b, const float* pf_c, int64_t ldc) {
    int64_t k4 = kc / 4, k1 = kc % 4;
    int64_t crows = 14;
    const int64_t ldb_bytes = ldb * static_cast<int64_t>(sizeof(float));
    const int64_t ldc_bytes = ldc * static_cast<int64_t>(sizeof(float));
    __asm__ volatile(
        SW_ALL_PAIRS(SW_ZERO2)
        "test %[k4], %[k4]\n\t"
        "jz 2f\n\t"
        ".p2align 5\n"
        "1:\n\t"
        SW_STEP(0) SW_STEP(1)
        "prefetcht1 (%[pfb])\n\t"
        "add $64, %[pfb]\n\t"
        "dec %[crows]\n\t"
        "js 5f\n\t"
        "prefetcht1 (%[pfc])\n\t"
        "prefetcht1 124(%[pfc])\n\t"
        "add %[ldc], %[pfc]\n"
        "5:\n\t"
        SW_STEP(2) SW_STEP(3)
        "add $224, %[a]\n\t"
        "dec %[k4]\n\t"
        "jnz 1b\n"
        "2:\n\t"
        "test %[k1], %[k1]\n\t"
        "jz 4f\n"
        "3:\n\t"
        SW_STEP(0)
        "add $56, %[a]\n\t"
        "dec %[k1]\n\t"
        "jnz 3b\n"
        "4:\n\t"
        SW_ALL_PAIRS(SW_STORE2)
        : [a] "+r"(a), [b] "+r"(b), [k4] "+r"(k4), [k1] "+r"(k1), [pfb] "+r"(pf_b), [pfc] "+r"(pf_c),
          [crows] "+r"(crows)
        : [ldb] "r"(ldb_bytes), [acc] "r"(acc), [ldc] "r"(ldc_bytes)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18",
          "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28",
          "xmm29", "xmm30", "xmm31");
}

#undef SW_OP

#undef SW_ROW
#undef SW_STEP
#undef SW_ZERO2
#undef SW_STORE2
#undef SW_ALL_PAIRS

constexpr int kMR = 14;
constexpr int kNV = 2;

// Pairs: the bf16 pair kernel (kc pair steps, vdpbf16ps), else fp32 (kc k steps, FMA). Same epilogue.
template <bool Pairs>
SW_TARGET_AVX512 void kernel_avx512_t(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                      int64_t ldc, const Epilogue& ep, const float* pf_b, const float* pf_c) {
    constexpr int MR = kMR, NV = kNV;
    // Bring the C tile towards L1 while the k loop runs (it is read in the epilogue).
    if (ep.mode != kEpiBeta0) {
        for (int r = 0; r < MR; ++r) {
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16 * NV - 1), _MM_HINT_T0);
        }
    }
    alignas(64) float accbuf[MR * 16 * NV];
    // Without hints the loop prefetches lines of accbuf (already in L1: harmless).
    if (!pf_b) pf_b = accbuf;
    int64_t pf_ldc = ldc;
    if (!pf_c || ep.mode == kEpiBeta0) {
        pf_c = accbuf;
        pf_ldc = 0;
    }
    if constexpr (Pairs)
        kloop_14x32_bf16(kc, a, b, ldb, accbuf, pf_b, pf_c, pf_ldc);
    else
        kloop_14x32(kc, a, b, ldb, accbuf, pf_b, pf_c, pf_ldc);
    __m512 acc[MR][NV];
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_load_ps(accbuf + (r * NV + v) * 16);

    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
    const int mode = ep.mode;
    if (!ep.bias && !ep.gelu) {
#pragma GCC unroll 32
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                float* cp = c + r * ldc + 16 * v;
                _mm512_storeu_ps(cp, combine16(cp, acc[r][v], mode, valpha, vbeta));
            }
        return;
    }
    // Last k block with bias and/or GeLU. (Fully unrolled like every loop over acc, so that the
    // accumulators stay in registers.)
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            finish16(c + r * ldc + 16 * v, acc[r][v], mode, valpha, vbeta, ep.bias ? ep.bias + 16 * v : nullptr,
                     ep.gelu);
}

SW_TARGET_AVX512 void kernel_avx512(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                    int64_t ldc, const Epilogue& ep, const float* pf_b, const float* pf_c) {
    kernel_avx512_t<false>(kc, a, b, ldb, c, ldc, ep, pf_b, pf_c);
}

// ---- Half-width kernel (edge tiles with at most 16 valid columns) --------------------------------
// 14 x 16: the first accumulator vector of every row of kernel_avx512, with the same FMA chains and
// epilogue (so the same bits), at half the work. Used for narrow edge tiles (n % 32 <= 16, small n).
// 14 accumulators + 1 B vector + 1 broadcast: intrinsics compile well here.
SW_TARGET_AVX512 void kernel_avx512_half(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                         int64_t ldc, const Epilogue& ep, const float*, const float*) {
    constexpr int MR = kMR;
    __m512 acc[MR];
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        const __m512 bv = _mm512_loadu_ps(b);
        _mm_prefetch(reinterpret_cast<const char*>(a + 16 * MR), _MM_HINT_T0);
#pragma GCC unroll 32
        for (int r = 0; r < MR; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r]), bv, acc[r]);
        a += MR;
        b += ldb;
    }
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
        finish16(c + r * ldc, acc[r], ep.mode, valpha, vbeta, ep.bias, ep.gelu);
}

// ---- Few-row kernel (small m) ---------------------------------------------------------------------
// H rows x 128 columns with B read in place, each 64-byte segment of a B row loaded once per k step
// and used by the H rows: for H <= 3 one pass with 8 accumulators per row, for H = 4..6 two passes of
// 64 columns with 4 accumulators per row (at most 24 accumulators). Same FMA chains and epilogue as
// kernel_avx512, so the bits are the same.
constexpr int kRowsCols = 128;
constexpr int kRowsMax = 6;

template <int H, int NV>
SW_TARGET_AVX512 void rows_pass(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                int64_t ldc, const Epilogue& ep, const float* bias) {
    __m512 acc[H][NV];
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        __m512 av[H];
#pragma GCC unroll 8
        for (int r = 0; r < H; ++r) av[r] = _mm512_set1_ps(a[r]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            _mm_prefetch(reinterpret_cast<const char*>(b + SW_ROWS_PF * ldb + 16 * v), _MM_HINT_T0);
            const __m512 bv = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 8
            for (int r = 0; r < H; ++r) acc[r][v] = _mm512_fmadd_ps(av[r], bv, acc[r][v]);
        }
        a += kMR;
        b += ldb;
    }
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            finish16(c + r * ldc + 16 * v, acc[r][v], ep.mode, valpha, vbeta, bias ? bias + 16 * v : nullptr,
                     ep.gelu);
}

template <int H>
SW_TARGET_AVX512 void rows_h(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                             const Epilogue& ep) {
    if (H <= 3) {
        rows_pass<H, 8>(kc, a, b, ldb, c, ldc, ep, ep.bias);
    } else {
        rows_pass<H, 4>(kc, a, b, ldb, c, ldc, ep, ep.bias);
        rows_pass<H, 4>(kc, a, b + 64, ldb, c + 64, ldc, ep, ep.bias ? ep.bias + 64 : nullptr);
    }
}

SW_TARGET_AVX512 void rows_avx512(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                  int64_t ldc, const Epilogue& ep) {
    switch (h) {
    case 1: rows_h<1>(kc, a, b, ldb, c, ldc, ep); break;
    case 2: rows_h<2>(kc, a, b, ldb, c, ldc, ep); break;
    case 3: rows_h<3>(kc, a, b, ldb, c, ldc, ep); break;
    case 4: rows_h<4>(kc, a, b, ldb, c, ldc, ep); break;
    case 5: rows_h<5>(kc, a, b, ldb, c, ldc, ep); break;
    default: rows_h<6>(kc, a, b, ldb, c, ldc, ep); break;
    }
}

// ---- Few-row edge kernels (fp32) --------------------------------------------------------------------
// h x w (h <= 13: a row tile of fewer than MR rows, e.g. the last 4 rows of m = 32, or all 8 of m = 8; 1 <= w <= 32)
// from a packed A micro-panel (MR floats per k step, rows h..13 not read) and a B micro-panel (ldb floats per k step),
// written straight into C: the FMA chain and epilogue of kernel_avx512 per element (finish16's operations, lane for
// lane), so the same bits, at h/14 of its work. B is loaded, C and the bias read and written, through lane masks: a
// narrow tile (a member of 16 columns, the last 10 columns of n = 74) needs neither a packed B micro-panel nor a
// temporary tile, and B may be read in place (masked-off lanes are not loaded: nothing past the w columns is
// touched). Masked-off lanes hold zeros and are never stored. Full-width tiles (edge_rows_avx512) run the same code
// with full masks. (At most 26 accumulators, 2 B vectors and a broadcast: intrinsics compile without spills here.)
SW_TARGET_AVX512 inline void finish16_masked(float* cp, __m512 acc, int mode, __m512 valpha, __m512 vbeta,
                                             const float* bias, bool gelu, __mmask16 mask) {
    __m512 x;
    if (bias && mode == kEpiBeta0) {
        x = _mm512_fmadd_ps(valpha, acc, _mm512_maskz_loadu_ps(mask, bias));
    } else {
        if (mode == kEpiBeta0)
            x = _mm512_mul_ps(valpha, acc);
        else if (mode == kEpiBeta)
            x = _mm512_fmadd_ps(valpha, acc, _mm512_mul_ps(vbeta, _mm512_maskz_loadu_ps(mask, cp)));
        else
            x = _mm512_fmadd_ps(valpha, acc, _mm512_maskz_loadu_ps(mask, cp));
        if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, bias));
    }
    if (gelu) x = gelu16(x);
    _mm512_mask_storeu_ps(cp, mask, x);
}

template <int H, int V>
SW_TARGET_AVX512 void edge_rows_masked_t(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                         int64_t ldc, const Epilogue& ep, __mmask16 m0, __mmask16 m1) {
    __m512 acc[H][V];
#pragma GCC unroll 16
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        __m512 bv[V];
        bv[0] = _mm512_maskz_loadu_ps(m0, b);
        if constexpr (V == 2) bv[1] = _mm512_maskz_loadu_ps(m1, b + 16);
#pragma GCC unroll 16
        for (int r = 0; r < H; ++r) {
            const __m512 av = _mm512_set1_ps(a[r]);
#pragma GCC unroll 2
            for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
        a += kMR;
        b += ldb;
    }
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
#pragma GCC unroll 16
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v)
            finish16_masked(c + r * ldc + 16 * v, acc[r][v], ep.mode, valpha, vbeta,
                            ep.bias ? ep.bias + 16 * v : nullptr, ep.gelu, v == 0 ? m0 : m1);
}

template <int V>
SW_TARGET_AVX512 void edge_rows_masked_v(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                         int64_t ldc, const Epilogue& ep, __mmask16 m0, __mmask16 m1) {
    switch (h) {
    case 1: edge_rows_masked_t<1, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 2: edge_rows_masked_t<2, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 3: edge_rows_masked_t<3, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 4: edge_rows_masked_t<4, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 5: edge_rows_masked_t<5, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 6: edge_rows_masked_t<6, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 7: edge_rows_masked_t<7, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 8: edge_rows_masked_t<8, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 9: edge_rows_masked_t<9, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 10: edge_rows_masked_t<10, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 11: edge_rows_masked_t<11, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    case 12: edge_rows_masked_t<12, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    default: edge_rows_masked_t<13, V>(kc, a, b, ldb, c, ldc, ep, m0, m1); break;
    }
}

SW_TARGET_AVX512 void edge_rows_avx512(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                       int64_t ldc, const Epilogue& ep) {
    edge_rows_masked_v<2>(h, kc, a, b, ldb, c, ldc, ep, 0xFFFF, 0xFFFF);
}

SW_TARGET_AVX512 void edge_rows_masked_avx512(int h, int w, int64_t kc, const float* a, const float* b, int64_t ldb,
                                              float* c, int64_t ldc, const Epilogue& ep) {
    if (w <= 16) {
        const auto m0 = static_cast<__mmask16>((1u << w) - 1u);
        edge_rows_masked_v<1>(h, kc, a, b, ldb, c, ldc, ep, m0, 0);
    } else {
        const auto m1 = static_cast<__mmask16>((1u << (w - 16)) - 1u);
        edge_rows_masked_v<2>(h, kc, a, b, ldb, c, ldc, ep, 0xFFFF, m1);
    }
}

// ---- Row-walking kernel (fp32, few rows, B stored as is) -------------------------------------------
// One k block of h rows over w columns, B read in place row by row: acc[r * ldacc + j] = the FMA chain over the kc k
// steps (in order, from 0) of a(r, p) * b[p * ldb + j], then the block's epilogue into C (finish16 per vector, the
// masked form on a partial last vector). Every element gets exactly kernel_avx512's arithmetic: the same bits. What
// changes is the order of the work: kWalkU k steps at a time, each of their rows of B streamed across all w columns
// (kWalkU sequential streams of w floats, each element of B read once per call), the accumulators in the (L1-sized)
// acc buffer rather than in registers, and the next group's rows prefetched meanwhile. For skinny M, where reading B
// is the whole cost. a(r, p) = a[r * a_rs + p * a_ps]; acc holds h rows of round_up(w, 16) floats (ldacc >= that).
// (Both overridable at compile time for tuning experiments only. Measured interleaved against oneDNN on 1 x 4096 x
// 4096 with gemm_driver_check_internal --bench, oneDNN's time / ours: 8 steps 1.25..1.34, 16 steps 0.73..0.88; the
// next group's rows prefetched into L2 (T1) beat no prefetch (0.99..1.14) and L1 (T0: 0.60). That bench shares one W
// between the variants, part of it still in L3 from the variant before: the absolute ratios are flattering, the
// ordering of these variants is what was used. With a W of its own per variant (Shardwise.Bench shapes) ours is
// 0.87..0.94 of oneDNN at m = 1.)
#ifndef SW_WALK_PF_HINT
#define SW_WALK_PF_HINT _MM_HINT_T1
#endif
#ifndef SW_WALK_U
#define SW_WALK_U 8
#endif
constexpr int kWalkU = SW_WALK_U;

// The walking kernels' epilogue: the h rows of w accumulators into C, finish16 per vector (masked on a partial last
// one), as the packed kernels finish their tiles.
SW_TARGET_AVX512 void walk_finish(int h, const float* acc, int64_t ldacc, int64_t w, float* c, int64_t ldc,
                                  const Epilogue& ep) {
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
    for (int r = 0; r < h; ++r) {
        float* cr = c + r * ldc;
        const float* ar = acc + r * ldacc;
        int64_t j = 0;
        for (; j + 16 <= w; j += 16)
            finish16(cr + j, _mm512_load_ps(ar + j), ep.mode, valpha, vbeta, ep.bias ? ep.bias + j : nullptr, ep.gelu);
        if (j < w)
            finish16_masked(cr + j, _mm512_load_ps(ar + j), ep.mode, valpha, vbeta, ep.bias ? ep.bias + j : nullptr,
                            ep.gelu, static_cast<__mmask16>((1u << (w - j)) - 1u));
    }
}

template <int U>
SW_TARGET_AVX512 inline void walk_group(int h, const float* a, int64_t a_rs, int64_t a_ps, const float* b,
                                        int64_t ldb, int64_t w, float* acc, int64_t ldacc, bool first,
                                        const float* pf, int pf_rows) {
    for (int64_t j = 0; j < w; j += 16) {
        const __mmask16 m = w - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (w - j)) - 1u);
        __m512 bv[U];
#pragma GCC unroll 16
        for (int u = 0; u < U; ++u) bv[u] = _mm512_maskz_loadu_ps(m, b + u * ldb + j);
        for (int q = 0; q < pf_rows; ++q) _mm_prefetch(reinterpret_cast<const char*>(pf + q * ldb + j), SW_WALK_PF_HINT);
        for (int r = 0; r < h; ++r) {
            float* ap = acc + r * ldacc + j;
            const float* ar = a + r * a_rs;
            __m512 v = first ? _mm512_setzero_ps() : _mm512_load_ps(ap);
#pragma GCC unroll 16
            for (int u = 0; u < U; ++u) v = _mm512_fmadd_ps(_mm512_set1_ps(ar[u * a_ps]), bv[u], v);
            _mm512_store_ps(ap, v);
        }
    }
}

SW_TARGET_AVX512 void walk_rows_avx512(int h, int64_t kc, const float* a, int64_t a_rs, int64_t a_ps,
                                       const float* b, int64_t ldb, int64_t w, float* acc, int64_t ldacc, float* c,
                                       int64_t ldc, const Epilogue& ep) {
    int64_t p = 0;
    for (; p + kWalkU <= kc; p += kWalkU) {
        const int64_t next = std::min<int64_t>(kWalkU, kc - p - kWalkU);
        walk_group<kWalkU>(h, a + p * a_ps, a_rs, a_ps, b + p * ldb, ldb, w, acc, ldacc, p == 0,
                           b + (p + kWalkU) * ldb, static_cast<int>(std::max<int64_t>(next, 0)));
    }
    for (; p < kc; ++p) walk_group<1>(h, a + p * a_ps, a_rs, a_ps, b + p * ldb, ldb, w, acc, ldacc, p == 0, nullptr, 0);
    walk_finish(h, acc, ldacc, w, c, ldc, ep);
}

// ---- Transposing packs ------------------------------------------------------------------------------
// dst[p*W + c] = src[c*ld + p] (c < w, zero for w <= c < W) for the MR = 14 wide A micro-panels
// (op(A) = A) and the NR = 32 wide B micro-panels (op(B) = B^T): 16 source rows x 16 k steps are
// loaded, transposed in registers (4 rounds of 16 shuffles) and stored as 16 k steps of up to 16
// lanes. Pure data movement: the packed values are the same as those of the scalar version.

// In-register transpose: r[i] (16 lanes) = row i; afterwards r[q] = column q. (Zero-masking forms with
// full masks: same results, and no GCC 12 -Wmaybe-uninitialized false positives from the
// _mm512_undefined_ps() inside the unmasked intrinsics.)
SW_TARGET_AVX512 inline void transpose16(__m512 r[16]) {
    const __mmask16 m16 = 0xFFFF;
    const __mmask8 m8 = 0xFF;
    __m512 a[16], b[16];
    for (int i = 0; i < 8; ++i) {
        a[2 * i] = _mm512_maskz_unpacklo_ps(m16, r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_maskz_unpackhi_ps(m16, r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        const __m512d a0 = _mm512_castps_pd(a[4 * i]), a1 = _mm512_castps_pd(a[4 * i + 1]);
        const __m512d a2 = _mm512_castps_pd(a[4 * i + 2]), a3 = _mm512_castps_pd(a[4 * i + 3]);
        b[4 * i] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(m8, a0, a2));
        b[4 * i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(m8, a0, a2));
        b[4 * i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(m8, a1, a3));
        b[4 * i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(m8, a1, a3));
    }
    // b[4g + j], 128-bit lane L: rows 4g..4g+3 at column 4L + j.
    for (int j = 0; j < 4; ++j) {
        const __m512 c0 = _mm512_maskz_shuffle_f32x4(m16, b[j], b[4 + j], 0x88);
        const __m512 c1 = _mm512_maskz_shuffle_f32x4(m16, b[j], b[4 + j], 0xDD);
        const __m512 c2 = _mm512_maskz_shuffle_f32x4(m16, b[8 + j], b[12 + j], 0x88);
        const __m512 c3 = _mm512_maskz_shuffle_f32x4(m16, b[8 + j], b[12 + j], 0xDD);
        r[j] = _mm512_maskz_shuffle_f32x4(m16, c0, c2, 0x88);
        r[8 + j] = _mm512_maskz_shuffle_f32x4(m16, c0, c2, 0xDD);
        r[4 + j] = _mm512_maskz_shuffle_f32x4(m16, c1, c3, 0x88);
        r[12 + j] = _mm512_maskz_shuffle_f32x4(m16, c1, c3, 0xDD);
    }
}

template <int W>
SW_TARGET_AVX512 void pack_trans_avx512(float* dst, const float* src, int64_t ld, int64_t kc, int w) {
    constexpr int G = (W + 15) / 16;  // groups of 16 rows
    constexpr __mmask16 store_mask = static_cast<__mmask16>(W >= 16 ? 0xFFFF : (1u << W) - 1u);
    for (int64_t p = 0; p < kc; p += 16) {
        const int np = static_cast<int>(kc - p < 16 ? kc - p : 16);
        const __mmask16 lmask = static_cast<__mmask16>((1u << np) - 1u);
        for (int g = 0; g < G; ++g) {
            __m512 r[16];
            for (int i = 0; i < 16; ++i) {
                const int c = g * 16 + i;
                r[i] = c < w ? _mm512_maskz_loadu_ps(lmask, src + c * ld + p) : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int q = 0; q < np; ++q) _mm512_mask_storeu_ps(dst + (p + q) * W + g * 16, store_mask, r[q]);
        }
    }
}

// Row-by-row copy of full 32-wide B micro-panels (see PackPanelsFn): two vector loads and stores per panel and row,
// and the prefetch of the next streamed chunk's part of the row. Pure data movement.
SW_TARGET_AVX512 void pack_panels_avx512(float* dst, const float* src, int64_t ld, int64_t kc, int64_t panels,
                                         int64_t pf) {
    constexpr int W = 16 * kNV;
    for (int64_t p = 0; p < kc; ++p) {
        const float* s = src + p * ld;
        float* d = dst + p * W;
        for (int64_t q = 0; q < pf; q += 16)
            _mm_prefetch(reinterpret_cast<const char*>(s + panels * W + q), _MM_HINT_T1);
        for (int64_t j = 0; j < panels; ++j) {
            _mm512_storeu_ps(d, _mm512_loadu_ps(s));
            _mm512_storeu_ps(d + 16, _mm512_loadu_ps(s + 16));
            s += W;
            d += kc * W;
        }
    }
}

// ---- 16-bit row conversions ------------------------------------------------------------------------
// vcvtph2ps / vcvtps2ph (AVX-512F forms of F16C; exact widening, round to nearest even narrowing, not affected
// by MXCSR's DAZ/FTZ for these operands as used here: the library never changes MXCSR), bf16 by integer
// arithmetic with the rounding of gemm_convert.h. Tails through masks. Same bits as the portable versions.

SW_TARGET_AVX512 void widen_f16_avx512(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const int r = static_cast<int>(n - i < 16 ? n - i : 16);
        const __mmask16 m = static_cast<__mmask16>((1u << r) - 1u);
        const __m256i h = _mm256_maskz_loadu_epi16(m, src + i);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_cvtph_ps(m, h));
    }
}

SW_TARGET_AVX512 void widen_bf16_avx512(float* dst, const uint16_t* src, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const int r = static_cast<int>(n - i < 16 ? n - i : 16);
        const __mmask16 m = static_cast<__mmask16>((1u << r) - 1u);
        const __m512i w = _mm512_maskz_slli_epi32(m, _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, src + i)), 16);
        _mm512_mask_storeu_epi32(dst + i, m, w);
    }
}

SW_TARGET_AVX512 void narrow_f16_avx512(uint16_t* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const int r = static_cast<int>(n - i < 16 ? n - i : 16);
        const __mmask16 m = static_cast<__mmask16>((1u << r) - 1u);
        const __m256i h = _mm512_maskz_cvtps_ph(m, _mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(dst + i, m, h);
    }
}

SW_TARGET_AVX512 void narrow_bf16_avx512(uint16_t* dst, const float* src, int64_t n) {
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    const __mmask16 all = 0xFFFF; // (zero-masking forms: see gelu16)
    for (int64_t i = 0; i < n; i += 16) {
        const int r = static_cast<int>(n - i < 16 ? n - i : 16);
        const __mmask16 m = static_cast<__mmask16>((1u << r) - 1u);
        const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
        const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(all, u, 16), one);
        __m512i v = _mm512_maskz_srli_epi32(all, _mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
        v = _mm512_mask_or_epi32(v, nan, _mm512_maskz_srli_epi32(all, u, 16), quiet);
        _mm256_mask_storeu_epi16(dst + i, m, _mm512_maskz_cvtepi32_epi16(all, v));
    }
}

// ---- The bf16 pair kernel (vdpbf16ps) --------------------------------------------------------------
// 14 x 32 like the fp32 kernel, kc pair steps; the packed A and B micro-panels have the fp32 layout with one
// 32-bit word (two bf16) per element, so the loop is the fp32 loop with vdpbf16ps for the FMA: per pair step 2
// loads, 14 broadcasts, 28 vdpbf16ps (56 k-step FMAs' worth of products).
#define SW_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma,avx512bf16")))

SW_TARGET_AVX512 void kernel_avx512bf16(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                        int64_t ldc, const Epilogue& ep, const float* pf_b, const float* pf_c) {
    kernel_avx512_t<true>(kc, a, b, ldb, c, ldc, ep, pf_b, pf_c);
}

// 14 x 16 half-width version for narrow edge tiles: the same vdpbf16ps chain and epilogue per element.
SW_TARGET_AVX512BF16 void kernel_avx512bf16_half(int64_t kc, const float* a, const float* b, int64_t ldb,
                                                 float* c, int64_t ldc, const Epilogue& ep, const float*,
                                                 const float*) {
    constexpr int MR = kMR;
    __m512 acc[MR];
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    const uint32_t* aw = reinterpret_cast<const uint32_t*>(a);
    for (int64_t p = 0; p < kc; ++p) {
        const __m512bh bv = (__m512bh)_mm512_loadu_ps(b);
#pragma GCC unroll 32
        for (int r = 0; r < MR; ++r)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(static_cast<int>(aw[r])), bv);
        aw += MR;
        b += ldb;
    }
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
        finish16(c + r * ldc, acc[r], ep.mode, valpha, vbeta, ep.bias, ep.gelu);
}

// Edge tiles of few rows (h <= 7 of the 14; e.g. m = 32 = 14 + 14 + 4): h x 32 with the same vdpbf16ps chain and
// epilogue per element as kernel_avx512bf16, at h/14 of its work. (Rows h..13 of the packed A panel are not read.)
template <int H>
SW_TARGET_AVX512BF16 void pairs_rows(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                                     const Epilogue& ep) {
    __m512 acc[H][2];
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t* aw = reinterpret_cast<const uint32_t*>(a);
    for (int64_t p = 0; p < kc; ++p) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_ps(b), b1 = (__m512bh)_mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
        for (int r = 0; r < H; ++r) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(aw[r]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
        aw += kMR;
        b += ldb;
    }
    const __m512 valpha = _mm512_set1_ps(ep.alpha);
    const __m512 vbeta = _mm512_set1_ps(ep.beta);
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v)
            finish16(c + r * ldc + 16 * v, acc[r][v], ep.mode, valpha, vbeta, ep.bias ? ep.bias + 16 * v : nullptr,
                     ep.gelu);
}

SW_TARGET_AVX512BF16 void pairs_edge_rows(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                          int64_t ldc, const Epilogue& ep) {
    switch (h) {
    case 1: pairs_rows<1>(kc, a, b, ldb, c, ldc, ep); break;
    case 2: pairs_rows<2>(kc, a, b, ldb, c, ldc, ep); break;
    case 3: pairs_rows<3>(kc, a, b, ldb, c, ldc, ep); break;
    case 4: pairs_rows<4>(kc, a, b, ldb, c, ldc, ep); break;
    case 5: pairs_rows<5>(kc, a, b, ldb, c, ldc, ep); break;
    case 6: pairs_rows<6>(kc, a, b, ldb, c, ldc, ep); break;
    default: pairs_rows<7>(kc, a, b, ldb, c, ldc, ep); break;
    }
}

// Pair pack, k steps along the rows of src: dst word (q, c) = src[2q][c] | src[2q+1][c] << 16.
template <int W>
SW_TARGET_AVX512 void pack_pairs_rows_avx512(uint32_t* dst, const uint16_t* src, int64_t ld, int64_t kc, int w) {
    constexpr int G = (W + 15) / 16;
    for (int64_t p = 0, q = 0; p < kc; p += 2, ++q) {
        const uint16_t* r0 = src + p * ld;
        const uint16_t* r1 = r0 + ld;
        const bool has1 = p + 1 < kc;
        uint32_t* d = dst + q * W;
        // The same rows of the next micro-panel (packed next): towards L2 while this one is packed and used.
        _mm_prefetch(reinterpret_cast<const char*>(r0 + W), _MM_HINT_T1);
        if (has1) _mm_prefetch(reinterpret_cast<const char*>(r1 + W), _MM_HINT_T1);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) {
            const int valid = w - 16 * g;
            const __mmask16 lm = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : valid <= 0 ? 0u : (1u << valid) - 1u);
            const int sw = W - 16 * g;
            const __mmask16 sm = static_cast<__mmask16>(sw >= 16 ? 0xFFFFu : (1u << sw) - 1u);
            const __m512i lo = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(lm, r0 + 16 * g));
            const __m512i hi = has1 ? _mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_maskz_loadu_epi16(lm, r1 + 16 * g)), 16)
                                    : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(d + 16 * g, sm, _mm512_or_si512(lo, hi));
        }
    }
}

// Pair pack, k steps along the rows of src: dst word (q, c) = the two bf16 at src[c*ld + 2q] — a transpose of
// 32-bit words (the fp32 transposing pack) when ld is even; the odd last k step and odd ld scalar.
template <int W>
SW_TARGET_AVX512 void pack_pairs_cols_avx512(uint32_t* dst, const uint16_t* src, int64_t ld, int64_t kc, int w) {
    const int64_t full = kc / 2;
    if (ld % 2 == 0 && full > 0) {
        pack_trans_avx512<W>(reinterpret_cast<float*>(dst), reinterpret_cast<const float*>(src), ld / 2, full, w);
    } else {
        for (int64_t q = 0; q < full; ++q)
            for (int c = 0; c < W; ++c)
                dst[q * W + c] = c < w ? (static_cast<uint32_t>(src[c * ld + 2 * q]) |
                                          static_cast<uint32_t>(src[c * ld + 2 * q + 1]) << 16)
                                       : 0u;
    }
    if (kc % 2)
        for (int c = 0; c < W; ++c) dst[full * W + c] = c < w ? static_cast<uint32_t>(src[c * ld + kc - 1]) : 0u;
}

// ---- Row-walking pair kernel (bf16 A and B, few rows, B stored as is) ------------------------------
// walk_rows_avx512 for the bf16 pair path: the pairs of B's rows 2q and 2q + 1 are built in registers (each 32-column
// segment of both rows loaded once, its 64-bit quarters put in the order 0 4 1 5 2 6 3 7 so that the in-lane word
// interleave gives the pairs of columns 0..15 and 16..31), so W is read once, in place, at 2 bytes per element. Per
// element: the vdpbf16ps chain over the block's pair steps from 0 (the last one half, its second element zero, when
// the block has an odd number of k elements) and the same epilogue: exactly kernel_avx512bf16's arithmetic on the
// words pack_pairs_rows_avx512 would have packed, so the same bits. a: the block's pair words of A as the pair pack
// lays them out, a[q * a_ps + r] (the driver packs them); kc: the block's k elements; acc: h rows of round_up(w, 32)
// floats.
constexpr int kWalkPairsU = SW_WALK_U / 2;  // pair steps per group: the same 8 rows of B as the fp32 walk

template <int U>
SW_TARGET_AVX512BF16 inline void walk_pairs_group(int h, const uint32_t* a, int64_t a_ps, const uint16_t* b,
                                                  int64_t ldb, int rows, int64_t w, float* acc, int64_t ldacc,
                                                  bool first, const uint16_t* pf, int pf_rows) {
    const __m512i order = _mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0);  // (the maskz permute: gcc 12's plain one warns)
    for (int64_t j = 0; j < w; j += 32) {
        const __mmask32 m = w - j >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu)
                                        : static_cast<__mmask32>((1u << (w - j)) - 1u);
        __m512i lo[U], hi[U];
#pragma GCC unroll 8
        for (int u = 0; u < U; ++u) {
            const __m512i r0 = _mm512_maskz_permutexvar_epi64(0xFF, order, _mm512_maskz_loadu_epi16(m, b + 2 * u * ldb + j));
            const __m512i r1 = 2 * u + 1 < rows
                                   ? _mm512_maskz_permutexvar_epi64(0xFF, order, _mm512_maskz_loadu_epi16(m, b + (2 * u + 1) * ldb + j))
                                   : _mm512_setzero_si512();
            lo[u] = _mm512_unpacklo_epi16(r0, r1);
            hi[u] = _mm512_unpackhi_epi16(r0, r1);
        }
        for (int q = 0; q < pf_rows; ++q) _mm_prefetch(reinterpret_cast<const char*>(pf + q * ldb + j), SW_WALK_PF_HINT);
        for (int r = 0; r < h; ++r) {
            float* ap = acc + r * ldacc + j;
            const uint32_t* ar = a + r;
            __m512 v0 = first ? _mm512_setzero_ps() : _mm512_load_ps(ap);
            __m512 v1 = first ? _mm512_setzero_ps() : _mm512_load_ps(ap + 16);
#pragma GCC unroll 8
            for (int u = 0; u < U; ++u) {
                const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ar[u * a_ps]));
                v0 = _mm512_dpbf16_ps(v0, av, (__m512bh)lo[u]);
                v1 = _mm512_dpbf16_ps(v1, av, (__m512bh)hi[u]);
            }
            _mm512_store_ps(ap, v0);
            _mm512_store_ps(ap + 16, v1);
        }
    }
}

SW_TARGET_AVX512BF16 void walk_pairs_avx512bf16(int h, int64_t kc, const uint32_t* a, int64_t a_ps,
                                                const uint16_t* b, int64_t ldb, int64_t w, float* acc,
                                                int64_t ldacc, float* c, int64_t ldc, const Epilogue& ep) {
    constexpr int U = kWalkPairsU;
    int64_t q = 0;  // pair step; rows 2q, 2q + 1 of B
    for (; 2 * (q + U) <= kc; q += U) {
        const int64_t next = std::min<int64_t>(2 * U, kc - 2 * (q + U));
        walk_pairs_group<U>(h, a + q * a_ps, a_ps, b + 2 * q * ldb, ldb, 2 * U, w, acc, ldacc, q == 0,
                            b + 2 * (q + U) * ldb, static_cast<int>(std::max<int64_t>(next, 0)));
    }
    for (; 2 * q < kc; ++q)
        walk_pairs_group<1>(h, a + q * a_ps, a_ps, b + 2 * q * ldb, ldb, static_cast<int>(std::min<int64_t>(2, kc - 2 * q)),
                            w, acc, ldacc, q == 0, nullptr, 0);
    walk_finish(h, acc, ldacc, w, c, ldc, ep);
}

} // namespace

KernelInfo kernel_info_avx512() {
    static_assert(kMR <= 16 && 16 * kNV % 16 == 0, "transposing packs assume MR <= 16");
    KernelInfo ki{kMR, 16 * kNV, SW_AVX512_MC, SW_AVX512_KC, SW_AVX512_NC, &kernel_avx512};
    ki.half_fn = &kernel_avx512_half;
    ki.rows_fn = &rows_avx512;
    ki.rows_max = kRowsMax;
    ki.rows_nr = kRowsCols;
    ki.edge_rows_fn = &edge_rows_avx512;
    ki.edge_rows_max = kMR - 1;
    ki.edge_rows_masked_fn = &edge_rows_masked_avx512;
    ki.walk_fn = &walk_rows_avx512;
    ki.pack_trans_mr = &pack_trans_avx512<kMR>;
    ki.pack_trans_nr = &pack_trans_avx512<16 * kNV>;
    ki.pack_panels_nr = &pack_panels_avx512;
    ki.widen_f16 = &widen_f16_avx512;
    ki.widen_bf16 = &widen_bf16_avx512;
    ki.narrow_f16 = &narrow_f16_avx512;
    ki.narrow_bf16 = &narrow_bf16_avx512;
    ki.gelu = &gelu_array_avx512;
    return ki;
}

// KC (in k elements, even) of the bf16 pair kernel: the 64 KiB B micro-panel of the fp32 kernel holds
// SW_AVX512BF16_KC / 2 pair steps of 32 words.
#ifndef SW_AVX512BF16_KC
#define SW_AVX512BF16_KC 1024
#endif
#ifndef SW_AVX512BF16_MC
#define SW_AVX512BF16_MC SW_AVX512_MC
#endif

KernelInfo kernel_info_avx512bf16() {
    static_assert(SW_AVX512BF16_KC % 2 == 0, "the bf16 KC counts k elements in pairs");
    KernelInfo ki = kernel_info_avx512();
    ki.fn = &kernel_avx512bf16;
    ki.half_fn = &kernel_avx512bf16_half;
    ki.rows_fn = nullptr;
    ki.rows_max = ki.rows_nr = 0;
    ki.kc = SW_AVX512BF16_KC;
    ki.mc = SW_AVX512BF16_MC;
    ki.pairs = true;
    ki.edge_rows_fn = &pairs_edge_rows;
    ki.edge_rows_max = 7;
    ki.edge_rows_masked_fn = nullptr; // (fp32 arithmetic; the pair kernel's differs)
    ki.walk_fn = nullptr;
    ki.walk_pairs_fn = &walk_pairs_avx512bf16;
    ki.pack_pairs_rows_mr = &pack_pairs_rows_avx512<kMR>;
    ki.pack_pairs_cols_mr = &pack_pairs_cols_avx512<kMR>;
    ki.pack_pairs_rows_nr = &pack_pairs_rows_avx512<16 * kNV>;
    ki.pack_pairs_cols_nr = &pack_pairs_cols_avx512<16 * kNV>;
    return ki;
}

bool have_avx512bf16_kernel() { return true; }

bool have_x86_kernels() { return true; }

} // namespace sw::cpu::gemm_detail

#else // not x86-64: the driver never selects this kernel.

namespace sw::cpu::gemm_detail {
KernelInfo kernel_info_avx512() { return kernel_info_generic(); }
KernelInfo kernel_info_avx512bf16() { return kernel_info_generic(); }
bool have_x86_kernels() { return false; }
bool have_avx512bf16_kernel() { return false; }
} // namespace sw::cpu::gemm_detail

#endif
