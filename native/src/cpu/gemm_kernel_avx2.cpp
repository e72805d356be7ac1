// AVX2 + FMA micro-kernel of the fp32 GEMM (the fallback for x86 CPUs without AVX-512; see gemm.cpp
// for the blocking and the determinism rules).
//
// Register tile MR x NR = 6 x 16: 12 ymm accumulators (6 rows x 2 vectors of 8 floats), 2 ymm for the
// current row of the B micro-panel, 2 for broadcast elements of A: all 16 ymm registers. Per k step:
// 2 vector loads, 6 broadcasts, 12 FMAs.
// Cache blocks: KC = 256 (16 KiB B micro-panel in L1), MC = 144 (A block of 144 KiB: fits the 256 KiB
// L2 of older AVX2 CPUs), NC = 4096.
// Also here: a few-row kernel for m <= 2 that reads B in place, and SIMD transposing packs; both
// give the same bits as the main kernel / the scalar packs.
//
// Compiled with a target attribute (the library is built without -march), only called after the
// driver checked __builtin_cpu_supports.
#include "cpu/gemm_kernels.h"
#include "cpu/gemm_convert.h"

#if defined(__x86_64__)
#include <immintrin.h>

#ifndef SW_AVX2_MC
#define SW_AVX2_MC 144
#endif
#ifndef SW_AVX2_KC
#define SW_AVX2_KC 256
#endif
#ifndef SW_AVX2_NC
#define SW_AVX2_NC 4096
#endif

#define SW_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace sw::cpu::gemm_detail {
namespace {

// GeLU (tanh approximation) for 8 lanes: x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3);
// same method as the AVX-512 kernel, 2^n built from the exponent bits.
SW_TARGET_AVX2 inline __m256 gelu8(__m256 x) {
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 t = _mm256_mul_ps(x, _mm256_fmadd_ps(x2, _mm256_set1_ps(-0.0713548162726f),
                                                _mm256_set1_ps(-1.5957691216057f)));
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(t, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), t);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // n in [-126, 127] thanks to the clamp: 2^n is a normal float. (p * 2^n is exact unless it is
    // far below 1, so 1 + e is the same whether or not the compiler fuses the two into an FMA.)
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// The element-wise GeLU with the epilogue's arithmetic (gelu8 lane-wise; the tail through a copy of 8 lanes).
SW_TARGET_AVX2 void gelu_array_avx2(float* y, const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        alignas(32) float t[8] = {};
        for (int64_t j = i; j < n; ++j) t[j - i] = x[j];
        _mm256_store_ps(t, gelu8(_mm256_load_ps(t)));
        for (int64_t j = i; j < n; ++j) y[j] = t[j - i];
    }
}

// Combines one accumulator vector with C according to the epilogue mode (C is read unless kEpiBeta0).
SW_TARGET_AVX2 inline __m256 combine8(const float* cp, __m256 acc, int mode, __m256 valpha, __m256 vbeta) {
    if (mode == kEpiBeta0) return _mm256_mul_ps(valpha, acc);
    if (mode == kEpiBeta) return _mm256_fmadd_ps(valpha, acc, _mm256_mul_ps(vbeta, _mm256_loadu_ps(cp)));
    return _mm256_fmadd_ps(valpha, acc, _mm256_loadu_ps(cp));
}

// The whole epilogue of one vector: combine with C, + bias (if non-null), GeLU (if requested), store.
// With beta == 0 in the only k block the bias goes into the FMA: C = fma(alpha, acc, bias) (explicit,
// so that GCC's contraction of multiply + add cannot differ between the kernels sharing this code).
SW_TARGET_AVX2 inline void finish8(float* cp, __m256 acc, int mode, __m256 valpha, __m256 vbeta,
                                   const float* bias, bool gelu) {
    __m256 x;
    if (bias && mode == kEpiBeta0) {
        x = _mm256_fmadd_ps(valpha, acc, _mm256_loadu_ps(bias));
    } else {
        x = combine8(cp, acc, mode, valpha, vbeta);
        if (bias) x = _mm256_add_ps(x, _mm256_loadu_ps(bias));
    }
    if (gelu) x = gelu8(x);
    _mm256_storeu_ps(cp, x);
}

// ---- The k loop, in inline assembly ------------------------------------------------------------
// (GCC 12 compiles the intrinsics version of this loop to about 70% of the speed clang reaches, so it
// is written out. ymm0..ymm11: accumulators, row r in ymm(2r), ymm(2r+1); ymm12, ymm13: the row of B;
// ymm14, ymm15: broadcast elements of A.)

#define SW_ROW(U, R, AREG, C0, C1)                                             \
    "vbroadcastss " #U "*24+" #R "*4(%[a]), %%ymm" #AREG "\n\t"               \
    "vfmadd231ps %%ymm12, %%ymm" #AREG ", %%ymm" #C0 "\n\t"                   \
    "vfmadd231ps %%ymm13, %%ymm" #AREG ", %%ymm" #C1 "\n\t"

#define SW_STEP(U)                                                             \
    "vmovups (%[b]), %%ymm12\n\t"                                             \
    "vmovups 32(%[b]), %%ymm13\n\t"                                           \
    "prefetcht0 " #U "*24+512(%[a])\n\t"                                      \
    "add %[ldb], %[b]\n\t"                                                    \
    SW_ROW(U, 0, 14, 0, 1) SW_ROW(U, 1, 15, 2, 3) SW_ROW(U, 2, 14, 4, 5)       \
    SW_ROW(U, 3, 15, 6, 7) SW_ROW(U, 4, 14, 8, 9) SW_ROW(U, 5, 15, 10, 11)

#define SW_ZERO2(X, Y) "vxorps %%ymm" #X ", %%ymm" #X ", %%ymm" #X "\n\t" \
                       "vxorps %%ymm" #Y ", %%ymm" #Y ", %%ymm" #Y "\n\t"
#define SW_STORE2(X, Y) "vmovaps %%ymm" #X ", " #X "*32(%[acc])\n\t" \
                        "vmovaps %%ymm" #Y ", " #Y "*32(%[acc])\n\t"
#define SW_ALL_PAIRS(M) M(0, 1) M(2, 3) M(4, 5) M(6, 7) M(8, 9) M(10, 11)

// acc[r*16 + c] = sum_{p < kc} a[p*6 + r] * b[p*ldb + c], one FMA chain per element, p increasing.
// acc: 32-byte aligned, 6 x 16 floats.
SW_TARGET_AVX2 void kloop_6x16(int64_t kc, const float* a, const float* b, int64_t ldb, float* acc) {
    int64_t k4 = kc / 4, k1 = kc % 4;
    const int64_t ldb_bytes = ldb * static_cast<int64_t>(sizeof(float));
    __asm__ volatile(
        SW_ALL_PAIRS(SW_ZERO2)
        "test %[k4], %[k4]\n\t"
        "jz 2f\n\t"
        ".p2align 5\n"
        "1:\n\t"
        SW_STEP(0) SW_STEP(1) SW_STEP(2) SW_STEP(3)
        "add $96, %[a]\n\t"
        "dec %[k4]\n\t"
        "jnz 1b\n"
        "2:\n\t"
        "test %[k1], %[k1]\n\t"
        "jz 4f\n"
        "3:\n\t"
        SW_STEP(0)
        "add $24, %[a]\n\t"
        "dec %[k1]\n\t"
        "jnz 3b\n"
        "4:\n\t"
        SW_ALL_PAIRS(SW_STORE2)
        : [a] "+r"(a), [b] "+r"(b), [k4] "+r"(k4), [k1] "+r"(k1)
        : [ldb] "r"(ldb_bytes), [acc] "r"(acc)
        : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

#undef SW_ROW
#undef SW_STEP
#undef SW_ZERO2
#undef SW_STORE2
#undef SW_ALL_PAIRS

constexpr int kMR = 6;
constexpr int kNV = 2;

SW_TARGET_AVX2 void kernel_avx2(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                                int64_t ldc, const Epilogue& ep, const float* /*pf_b*/, const float* /*pf_c*/) {
    constexpr int MR = kMR, NV = kNV;
    if (ep.mode != kEpiBeta0) {
        for (int r = 0; r < MR; ++r) {
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 8 * NV - 1), _MM_HINT_T0);
        }
    }
    alignas(32) float accbuf[MR * 8 * NV];
    kloop_6x16(kc, a, b, ldb, accbuf);
    __m256 acc[MR][NV];
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_load_ps(accbuf + (r * NV + v) * 8);

    const __m256 valpha = _mm256_set1_ps(ep.alpha);
    const __m256 vbeta = _mm256_set1_ps(ep.beta);
    const int mode = ep.mode;
    if (!ep.bias && !ep.gelu) {
#pragma GCC unroll 32
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                float* cp = c + r * ldc + 8 * v;
                _mm256_storeu_ps(cp, combine8(cp, acc[r][v], mode, valpha, vbeta));
            }
        return;
    }
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            finish8(c + r * ldc + 8 * v, acc[r][v], mode, valpha, vbeta, ep.bias ? ep.bias + 8 * v : nullptr,
                    ep.gelu);
}

// ---- Few-row kernel (small m) ---------------------------------------------------------------------
// H rows x 64 columns with B read in place, each 32-byte segment of a B row loaded once per k step
// and used by the H rows: H = 1 in one pass of 8 accumulators, H = 2 in two passes of 32 columns.
// Same FMA chains and epilogue as kernel_avx2, so the bits are the same.
constexpr int kRowsCols = 64;
constexpr int kRowsMax = 2;

template <int H, int NV>
SW_TARGET_AVX2 void rows_pass(int64_t kc, const float* a, const float* b, int64_t ldb, float* c, int64_t ldc,
                              const Epilogue& ep, const float* bias) {
    __m256 acc[H][NV];
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
    for (int64_t p = 0; p < kc; ++p) {
        __m256 av[H];
#pragma GCC unroll 8
        for (int r = 0; r < H; ++r) av[r] = _mm256_broadcast_ss(a + r);
        _mm_prefetch(reinterpret_cast<const char*>(b + 8 * ldb), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b + 8 * ldb + 8 * NV - 1), _MM_HINT_T0);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            const __m256 bv = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 8
            for (int r = 0; r < H; ++r) acc[r][v] = _mm256_fmadd_ps(av[r], bv, acc[r][v]);
        }
        a += kMR;
        b += ldb;
    }
    const __m256 valpha = _mm256_set1_ps(ep.alpha);
    const __m256 vbeta = _mm256_set1_ps(ep.beta);
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r)
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v)
            finish8(c + r * ldc + 8 * v, acc[r][v], ep.mode, valpha, vbeta, bias ? bias + 8 * v : nullptr, ep.gelu);
}

SW_TARGET_AVX2 void rows_avx2(int h, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                              int64_t ldc, const Epilogue& ep) {
    if (h == 1) {
        rows_pass<1, 8>(kc, a, b, ldb, c, ldc, ep, ep.bias);
    } else {
        rows_pass<2, 4>(kc, a, b, ldb, c, ldc, ep, ep.bias);
        rows_pass<2, 4>(kc, a, b + 32, ldb, c + 32, ldc, ep, ep.bias ? ep.bias + 32 : nullptr);
    }
}

// ---- Transposing packs ------------------------------------------------------------------------------
// dst[p*W + c] = src[c*ld + p] (c < w, zero for w <= c < W) for the MR = 6 wide A micro-panels
// (op(A) = A) and the NR = 16 wide B micro-panels (op(B) = B^T): 8 source rows x 8 k steps are
// transposed in registers; the last kc % 8 k steps are copied one by one. Pure data movement.

SW_TARGET_AVX2 inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

template <int W>
SW_TARGET_AVX2 void pack_trans_avx2(float* dst, const float* src, int64_t ld, int64_t kc, int w) {
    static_assert(W == 6 || W % 8 == 0, "widths 6 or multiples of 8");
    constexpr int G = (W + 7) / 8;  // groups of 8 rows
    int64_t p = 0;
    for (; p + 8 <= kc; p += 8) {
        for (int g = 0; g < G; ++g) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) {
                const int c = g * 8 + i;
                r[i] = c < w ? _mm256_loadu_ps(src + c * ld + p) : _mm256_setzero_ps();
            }
            transpose8(r);
            for (int q = 0; q < 8; ++q) {
                float* d = dst + (p + q) * W + g * 8;
                if (W == 6) {
                    _mm_storeu_ps(d, _mm256_castps256_ps128(r[q]));
                    _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm256_extractf128_ps(r[q], 1));
                } else {
                    _mm256_storeu_ps(d, r[q]);
                }
            }
        }
    }
    for (; p < kc; ++p) {
        float* d = dst + p * W;
        int c = 0;
        for (; c < w; ++c) d[c] = src[c * ld + p];
        for (; c < W; ++c) d[c] = 0.0f;
    }
}

// ---- 16-bit row conversions (F16C vcvtph2ps / vcvtps2ph for fp16, integer arithmetic for bf16; tails through
// the portable functions, which give the same bits) ----------------------------------------------------------
#define SW_TARGET_F16C __attribute__((target("avx2,fma,f16c")))

SW_TARGET_F16C void widen_f16_f16c(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    widen_f16_row(dst + i, src + i, n - i);
}

SW_TARGET_F16C void widen_bf16_avx2(float* dst, const uint16_t* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(w, 16));
    }
    widen_bf16_row(dst + i, src + i, n - i);
}

SW_TARGET_F16C void narrow_f16_f16c(uint16_t* dst, const float* src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    narrow_f16_row(dst + i, src + i, n - i);
}

// The portable rounding, compiled (and vectorised by the compiler) for AVX2.
SW_TARGET_F16C void narrow_bf16_avx2(uint16_t* dst, const float* src, int64_t n) { narrow_bf16_row(dst, src, n); }

} // namespace

KernelInfo kernel_info_avx2() {
    KernelInfo ki{kMR, 8 * kNV, SW_AVX2_MC, SW_AVX2_KC, SW_AVX2_NC, &kernel_avx2};
    ki.rows_fn = &rows_avx2;
    ki.rows_max = kRowsMax;
    ki.rows_nr = kRowsCols;
    ki.pack_trans_mr = &pack_trans_avx2<kMR>;
    ki.pack_trans_nr = &pack_trans_avx2<8 * kNV>;
    ki.widen_f16 = &widen_f16_f16c;
    ki.widen_bf16 = &widen_bf16_avx2;
    ki.narrow_f16 = &narrow_f16_f16c;
    ki.narrow_bf16 = &narrow_bf16_avx2;
    ki.gelu = &gelu_array_avx2;
    return ki;
}

} // namespace sw::cpu::gemm_detail

#else

namespace sw::cpu::gemm_detail {
KernelInfo kernel_info_avx2() { return kernel_info_generic(); }
} // namespace sw::cpu::gemm_detail

#endif
