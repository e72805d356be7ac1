// Checks of the CPU GEMM with 16-bit operands (sw::cpu::gemm: A, B in bf16 or fp16, C in f32 or the input type,
// fp32 accumulation), for every kernel this CPU runs (generic, avx2, avx512: widened to fp32 while packing;
// avx512bf16: bf16 pairs with vdpbf16ps, fp16 widened).
//
//  - correctness against a float64 reference computed from the ROUNDED 16-bit inputs (and the rounded 16-bit C
//    and bias), for every transpose pair, ragged shapes (m, n, k not multiples of the tiles, k odd, k = 0, 1, up
//    to 1300 > KC of every kernel, so several k blocks), C type f32 / 16-bit, beta 0 (C poisoned with NaN) or not,
//    bias, GeLU, padded leading dimensions (the padding must stay untouched). Tolerance per element:
//        |got - ref| <= 2 (k + 4) u32 S  +  u_out (|ref| + 2 (k + 4) u32 S)  +  a_out   (GeLU: see check_result)
//    with S = |alpha| sum_p |a_ip b_pj| + |beta c_ij| + |bias_j|, u32 = 2^-24 (fp32 accumulation: k products and
//    sums plus alpha, beta, bias), u_out the unit roundoff of C's type (0 for f32, 2^-8 bf16, 2^-11 fp16: C is
//    rounded ONCE) and a_out half the smallest subnormal of C's type (fp16: 2^-25). Rounding a 16-bit C after
//    every k block instead of once breaks it (its error grows with the partial sums, not with |ref|).
//  - the determinism contract, bit for bit: a column block (and a row block) computed as its own GEMM equals the
//    same block of the full product, and 1, 2 and 3 threads agree; fp32 problems under avx512bf16 give the bits
//    of avx512;
//  - the 16-bit conversions: every kernel's SIMD widening of all 65536 patterns equals the portable one and is
//    exact; narrowing (round to nearest even, overflow -> inf, NaN kept) checked against float64 on special
//    values, ties, and random bit patterns;
//  - edge values through the GEMM, with what each kernel does: subnormal inputs (kept by the widening kernels,
//    read as zero by vdpbf16ps), subnormal products (kept by the widening kernels, flushed by vdpbf16ps),
//    +-0 (a sum of zero products is +0 on every kernel), infinities (inf * 2 = inf, inf * 0 = NaN,
//    inf - inf = NaN), NaN inputs give NaN, fp16 outputs that round up to infinity (65520 -> inf, 65519 ->
//    65504), bf16 outputs past the fp32-to-bf16 overflow threshold.
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "check_internal.h"
#include "cpu/gemm.h"
#include "cpu/gemm_convert.h"
#include "cpu/gemm_kernels.h"
#include "cpu/thread_pool.h"
#include "float16_ref.h"

using sw::GemmProblem;
using sw::cpu::Kernel;
using sw::cpu::ThreadPool;
namespace gd = sw::cpu::gemm_detail;

namespace {




const char* tname(sw_dtype t) { return t == SW_DTYPE_F32 ? "f32" : t == SW_DTYPE_BF16 ? "bf16" : "f16"; }

// Value of a stored element (16-bit types decoded exactly) and rounding to a 16-bit type: the checks' independent
// references (float16_ref.h), not the library's conversions (gemm_convert.h, checked against them below).
double decode(sw_dtype t, uint16_t h) { return sw_ref_to_float16(t == SW_DTYPE_BF16, h); }
// The library's portable conversions (the SIMD ones are compared with them), as a float (no trip through double,
// which would quieten a signalling NaN).
float decode_f(sw_dtype t, uint16_t h) { return t == SW_DTYPE_BF16 ? sw::bf16_to_float(h) : sw::half_to_float(h); }
uint16_t encode_lib(sw_dtype t, float f) { return t == SW_DTYPE_BF16 ? sw::float_to_bf16(f) : sw::float_to_half(f); }
uint16_t encode(sw_dtype t, float f) { return sw_ref_round16(t == SW_DTYPE_BF16, f); }
uint32_t fbits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// A GEMM with 16-bit A and B, C (and bias) in c_type, stored as raw bits (C as f32 or 16-bit words).
struct Problem {
    sw_dtype in = SW_DTYPE_BF16, ct = SW_DTYPE_F32;
    bool ta = false, tb = false;
    int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
    float alpha = 1.0f, beta = 0.0f;
    bool use_bias = false, gelu = false;
    std::vector<uint16_t> a, b;
    std::vector<uint32_t> c0; // C's elements as bits (low 16 bits for a 16-bit C)
    std::vector<uint32_t> bias;
    bool c16() const { return ct != SW_DTYPE_F32; }
    double opa(int64_t i, int64_t p) const { return decode(in, ta ? a[p * lda + i] : a[i * lda + p]); }
    double opb(int64_t p, int64_t j) const { return decode(in, tb ? b[j * ldb + p] : b[p * ldb + j]); }
    double cval(uint32_t bits) const { return c16() ? decode(ct, static_cast<uint16_t>(bits)) : from_bits(bits); }
};

constexpr uint32_t kSentinel32 = 0xC1F0ABCDu; // padding of C: must stay untouched
constexpr uint16_t kSentinel16 = 0xC1F1u;

// C's storage for one run (f32 or 16-bit), initialised from P.c0.
struct CStore {
    std::vector<float> f;
    std::vector<uint16_t> h;
    void* ptr(const Problem& P, int64_t off) { return P.c16() ? static_cast<void*>(h.data() + off) : static_cast<void*>(f.data() + off); }
    uint32_t bits(const Problem& P, int64_t idx) const { return P.c16() ? h[idx] : fbits(f[idx]); }
};

CStore make_c(const Problem& P) {
    CStore s;
    if (P.c16()) {
        s.h.resize(P.c0.size());
        for (size_t i = 0; i < P.c0.size(); ++i) s.h[i] = static_cast<uint16_t>(P.c0[i]);
    } else {
        s.f.resize(P.c0.size());
        for (size_t i = 0; i < P.c0.size(); ++i) s.f[i] = from_bits(P.c0[i]);
    }
    return s;
}

std::vector<uint16_t> bias16;
std::vector<float> biasf;

GemmProblem args(const Problem& P, CStore& c, int64_t c_off = 0) {
    GemmProblem g;
    g.trans_a = P.ta;
    g.trans_b = P.tb;
    g.m = P.m;
    g.n = P.n;
    g.k = P.k;
    g.a_type = g.b_type = P.in;
    g.c_type = g.bias_type = P.ct;
    g.alpha = P.alpha;
    g.beta = P.beta;
    g.a = P.a.data();
    g.lda = P.lda;
    g.b = P.b.data();
    g.ldb = P.ldb;
    g.c = c.ptr(P, c_off);
    g.ldc = P.ldc;
    g.epilogue = P.gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
    return g;
}

// Sets g.bias (+ j0 columns) from P.bias in C's type; storage in the globals above (one problem at a time).
void set_bias(const Problem& P, GemmProblem& g, int64_t j0 = 0) {
    if (!P.use_bias) return;
    if (P.c16()) {
        bias16.assign(P.bias.begin(), P.bias.end());
        g.bias = bias16.data() + j0;
    } else {
        biasf.resize(P.bias.size());
        for (size_t j = 0; j < P.bias.size(); ++j) biasf[j] = from_bits(P.bias[j]);
        g.bias = biasf.data() + j0;
    }
}

Problem make_problem(Rng& rng, sw_dtype in, sw_dtype ct, bool ta, bool tb, int64_t m, int64_t n, int64_t k) {
    Problem P;
    P.in = in;
    P.ct = ct;
    P.ta = ta;
    P.tb = tb;
    P.m = m;
    P.n = n;
    P.k = k;
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    P.lda = std::max<int64_t>(ac, 1) + rng.range(0, 5);
    P.ldb = std::max<int64_t>(bc, 1) + rng.range(0, 5);
    P.ldc = n + rng.range(0, 5);
    P.a.resize(static_cast<size_t>(std::max<int64_t>(ar, 1) * P.lda));
    P.b.resize(static_cast<size_t>(std::max<int64_t>(br, 1) * P.ldb));
    for (auto& x : P.a) x = encode(in, rng.uniform(-1.0f, 1.0f)); // rounded inputs: the reference uses them
    for (auto& x : P.b) x = encode(in, rng.uniform(-1.0f, 1.0f));
    const uint32_t sent = P.c16() ? kSentinel16 : kSentinel32;
    P.c0.assign(static_cast<size_t>(m * P.ldc), sent);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            const float v = rng.uniform(-1.0f, 1.0f);
            P.c0[i * P.ldc + j] = P.c16() ? encode(ct, v) : fbits(v);
        }
    P.bias.resize(static_cast<size_t>(n));
    for (auto& x : P.bias) {
        const float v = rng.uniform(-0.5f, 0.5f);
        x = P.c16() ? encode(ct, v) : fbits(v);
    }
    switch (rng.range(0, 3)) {
    case 0: P.alpha = 1.0f; P.beta = 0.0f; break;
    case 1: P.alpha = rng.uniform(-2.0f, 2.0f); P.beta = 0.0f; break;
    case 2: P.alpha = 1.0f; P.beta = 1.0f; break;
    default: P.alpha = rng.uniform(-2.0f, 2.0f); P.beta = rng.uniform(-1.5f, 1.5f); break;
    }
    P.use_bias = rng.range(0, 1) == 1;
    P.gelu = rng.range(0, 2) == 0;
    if (P.beta == 0.0f) // poison: beta == 0 must never read C
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) P.c0[i * P.ldc + j] = P.c16() ? 0x7E00u : 0x7FC00000u;
    return P;
}

CStore run(const Problem& P, Kernel kern, ThreadPool& pool) {
    CStore c = make_c(P);
    GemmProblem g = args(P, c);
    set_bias(P, g);
    sw::cpu::gemm(g, kern, pool);
    return c;
}

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// The tolerance formula of the header comment. Returns true if every element is within it and the padding of C
// is untouched.
bool check_result(const Problem& P, const CStore& c, const std::string& what) {
    const double u32 = std::ldexp(1.0, -24);
    const double u_out = P.ct == SW_DTYPE_F32 ? 0.0 : P.ct == SW_DTYPE_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const double a_out = P.ct == SW_DTYPE_F16 ? std::ldexp(1.0, -25) : 0.0;
    int bad = 0;
    for (int64_t i = 0; i < P.m; ++i) {
        for (int64_t j = 0; j < P.n; ++j) {
            double s = 0.0, sabs = 0.0;
            for (int64_t p = 0; p < P.k; ++p) {
                const double prod = P.opa(i, p) * P.opb(p, j);
                s += prod;
                sabs += std::fabs(prod);
            }
            double v = static_cast<double>(P.alpha) * s;
            double S = std::fabs(P.alpha) * sabs;
            if (P.beta != 0.0f) {
                const double cv = P.cval(P.c0[i * P.ldc + j]);
                v += static_cast<double>(P.beta) * cv;
                S += std::fabs(P.beta * cv);
            }
            if (P.use_bias) {
                const double bv = P.cval(P.bias[j]);
                v += bv;
                S += std::fabs(bv);
            }
            double acc_tol = 2.0 * (static_cast<double>(P.k) + 4.0) * u32 * S;
            double ref = v;
            if (P.gelu) {
                // |gelu'| <= 1.13, plus the kernels' GeLU (fp32, polynomial exp): a few fp32 ulps of the result.
                ref = gelu_ref(v);
                acc_tol = 1.13 * acc_tol + 8.0 * u32 * std::fabs(ref) + 1e-30;
            }
            const double tol = acc_tol + u_out * (std::fabs(ref) + acc_tol) + a_out;
            const double got = P.cval(c.bits(P, i * P.ldc + j));
            if (!(std::fabs(got - ref) <= tol) && bad++ < 3)
                std::printf("  %s: C[%lld][%lld] = %.9g, reference %.9g (tol %.3g)\n", what.c_str(),
                            static_cast<long long>(i), static_cast<long long>(j), got, ref, tol);
        }
        for (int64_t j = P.n; j < P.ldc; ++j)
            if (c.bits(P, i * P.ldc + j) != (P.c16() ? kSentinel16 : kSentinel32) && bad++ < 3)
                std::printf("  %s: wrote outside C at [%lld][%lld]\n", what.c_str(), static_cast<long long>(i),
                            static_cast<long long>(j));
    }
    return bad == 0;
}

std::string describe(const Problem& P, Kernel kern, int threads) {
    char buf[300];
    std::snprintf(buf, sizeof buf, "%s a,b=%s c=%s %c%c m=%lld n=%lld k=%lld lda=%lld ldb=%lld ldc=%lld alpha=%g beta=%g bias=%d gelu=%d threads=%d",
                  sw::cpu::kernel_name(kern), tname(P.in), tname(P.ct), P.ta ? 'T' : 'N', P.tb ? 'T' : 'N',
                  static_cast<long long>(P.m), static_cast<long long>(P.n), static_cast<long long>(P.k),
                  static_cast<long long>(P.lda), static_cast<long long>(P.ldb), static_cast<long long>(P.ldc), P.alpha,
                  P.beta, P.use_bias ? 1 : 0, P.gelu ? 1 : 0, threads);
    return buf;
}

bool same_c(const Problem& P, const CStore& x, const CStore& y, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
            if (x.bits(P, i * P.ldc + j) != y.bits(P, i * P.ldc + j)) return false;
    return true;
}

// Column block [j0, j1) alone equals the same block of the full product, bit for bit.
bool check_column_block(const Problem& P, const CStore& full, Kernel kern, ThreadPool& pool, int64_t j0, int64_t j1) {
    CStore c = make_c(P);
    GemmProblem g = args(P, c, j0);
    g.n = j1 - j0;
    g.b = P.tb ? P.b.data() + j0 * P.ldb : P.b.data() + j0;
    set_bias(P, g, j0);
    sw::cpu::gemm(g, kern, pool);
    return same_c(P, c, full, 0, P.m, j0, j1);
}

bool check_row_block(const Problem& P, const CStore& full, Kernel kern, ThreadPool& pool, int64_t i0, int64_t i1) {
    CStore c = make_c(P);
    GemmProblem g = args(P, c, i0 * P.ldc);
    g.m = i1 - i0;
    g.a = P.ta ? P.a.data() + i0 : P.a.data() + i0 * P.lda;
    set_bias(P, g);
    sw::cpu::gemm(g, kern, pool);
    return same_c(P, c, full, i0, i1, 0, P.n);
}

// Every type combination x transposes x shapes for one kernel.
void check_kernel(Kernel kern, ThreadPool* pools[3]) {
    Rng rng(777 + static_cast<int>(kern));
    const bool slow = kern == Kernel::Generic;
    // (m, n, k): ragged against every tile (MR 4/6/14, NR 8/16/32, KC 256/512/1024), k odd, 0, 1, > 2 KC.
    std::vector<std::array<int64_t, 3>> shapes = {
        {1, 1, 1},   {1, 37, 0},  {5, 3, 1},    {13, 33, 2},  {15, 31, 3},   {29, 65, 17},  {3, 129, 257},
        {44, 47, 64}, {7, 95, 513}, {31, 17, 1031}, {20, 40, 1300}, {2, 300, 9},  {57, 9, 1025},
    };
    for (int r = 0; r < (slow ? 3 : 6); ++r) shapes.push_back({rng.range(1, 60), rng.range(1, 90), rng.range(0, 700)});
    const sw_dtype ins[] = {SW_DTYPE_BF16, SW_DTYPE_F16};
    for (sw_dtype in : ins) {
        for (sw_dtype ct : {SW_DTYPE_F32, in}) {
            for (int t = 0; t < 4; ++t) {
                const bool ta = t & 1, tb = t & 2;
                for (size_t s = 0; s < shapes.size(); ++s) {
                    // the generic kernel: a third of the shapes per transpose pair (its arithmetic does not
                    // depend on the transposes; the packs do, and they are covered for every shape once)
                    if (slow && (s + static_cast<size_t>(t)) % 3 != 0 && shapes[s][2] > 64) continue;
                    const auto& sh = shapes[s];
                    Problem P = make_problem(rng, in, ct, ta, tb, sh[0], sh[1], sh[2]);
                    ThreadPool& pool = *pools[s % 3];
                    const CStore full = run(P, kern, pool);
                    const std::string what = describe(P, kern, pool.size());
                    CHECK(check_result(P, full, what), "%s", what.c_str());
                    if (P.n >= 2) {
                        const int64_t j0 = rng.range(0, P.n - 1), j1 = rng.range(j0 + 1, P.n);
                        CHECK(check_column_block(P, full, kern, *pools[(s + 1) % 3], j0, j1),
                              "column block [%lld, %lld) differs: %s", static_cast<long long>(j0),
                              static_cast<long long>(j1), what.c_str());
                    }
                    if (P.m >= 2 && s % 2 == 0) {
                        const int64_t i0 = rng.range(0, P.m - 1), i1 = rng.range(i0 + 1, P.m);
                        CHECK(check_row_block(P, full, kern, *pools[(s + 2) % 3], i0, i1),
                              "row block [%lld, %lld) differs: %s", static_cast<long long>(i0),
                              static_cast<long long>(i1), what.c_str());
                    }
                }
            }
        }
    }
    // Larger shapes across many tasks and both k blocks, m above MC (one thread: a task of several row blocks packs
    // whole B panels; more threads may give tasks of one row block, which pack B micro-panel by micro-panel):
    // 1, 2 and 3 threads give the same bits.
    for (int r = 0; r < 4; ++r) {
        const sw_dtype in = ins[r % 2];
        Problem P = make_problem(rng, in, r < 2 ? in : SW_DTYPE_F32, r == 1, r >= 2, slow ? 140 : 300, slow ? 90 : 200, 1100);
        const CStore c1 = run(P, kern, *pools[0]);
        const CStore c3 = run(P, kern, *pools[2]);
        CHECK(check_result(P, c1, describe(P, kern, 1)), "%s", describe(P, kern, 1).c_str());
        CHECK(same_c(P, c1, c3, 0, P.m, 0, P.n), "1 vs 3 threads differ: %s", describe(P, kern, 3).c_str());
        CHECK(check_column_block(P, c1, kern, *pools[1], 33, P.n - 5), "column block: %s", describe(P, kern, 2).c_str());
    }
}

// ---------------------------------------------------------------- conversions

gd::KernelInfo info_of(Kernel k) {
    switch (k) {
    case Kernel::Avx512: return gd::kernel_info_avx512();
    case Kernel::Avx512Bf16: return gd::kernel_info_avx512bf16();
    case Kernel::Avx2: return gd::kernel_info_avx2();
    default: return gd::kernel_info_generic();
    }
}

// Narrowing reference in float64: the nearest representable value, ties to the even significand, |x| at or
// beyond the midpoint to the next power of two past the largest finite value -> inf.
bool narrow_ok(sw_dtype t, float x, uint16_t h) {
    const double v = x;
    if (std::isnan(x)) {
        const bool is_nan = t == SW_DTYPE_BF16 ? ((h & 0x7fff) > 0x7f80) : ((h & 0x7fff) > 0x7c00);
        return is_nan && ((h >> 15) == (fbits(x) >> 31));
    }
    const double got = decode(t, h);
    if (std::signbit(got) != std::signbit(v)) return false;
    if (std::isinf(got)) {
        const double maxf = t == SW_DTYPE_BF16 ? 3.3895313892515355e38 : 65504.0;
        const double ulp = t == SW_DTYPE_BF16 ? std::ldexp(1.0, 127 - 7) : 32.0;
        return std::fabs(v) >= maxf + ulp / 2;
    }
    // neighbours of h (towards zero and away): got must be the nearest, ties to even
    const uint16_t lo = static_cast<uint16_t>((h & 0x7fff) == 0 ? h : h - 1), hi = static_cast<uint16_t>(h + 1);
    const double dl = std::fabs(decode(t, lo) - v), dh = std::fabs(decode(t, hi) - v), d = std::fabs(got - v);
    if (d > dl || d > dh) return false;
    if ((d == dl && lo != h) || d == dh) return (h & 1) == 0;
    return true;
}

void check_conversions() {
    std::vector<uint16_t> all(65536);
    for (int i = 0; i < 65536; ++i) all[static_cast<size_t>(i)] = static_cast<uint16_t>(i);
    // float inputs: specials, values around the fp16/bf16 overflow and subnormal thresholds, ties, random bits
    std::vector<float> xs = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, std::nanf(""), -std::nanf(""),
                             from_bits(0x7f800001u), from_bits(0xffc12345u), 65504.0f, 65519.996f, 65520.0f, -65520.0f,
                             70000.0f, 3.3895313e38f, 3.3961776e38f, 3.4028235e38f, 5.9604645e-8f, 2.9802322e-8f,
                             2.9802326e-8f, 6.1035156e-5f, 6.1e-5f, 1e-40f, -1e-45f, 1.00390625f, 1.01171875f,
                             1.0009765625f, 1.0029296875f};
    Rng rng(99);
    for (int i = 0; i < 20000; ++i) xs.push_back(from_bits(static_cast<uint32_t>(rng.next())));
    for (int i = 0; i < 20000; ++i) xs.push_back(from_bits(static_cast<uint32_t>(rng.next() & 0xffff0000u) | 0x8000u)); // bf16 ties
    for (int i = 0; i < 20000; ++i) xs.push_back(rng.uniform(-70000.0f, 70000.0f));
    for (int i = 0; i < 20000; ++i) xs.push_back(std::ldexp(rng.uniform(-1.0f, 1.0f), -static_cast<int>(rng.range(10, 30))));

    // the library's portable conversions against float64 and against the checks' references (float16_ref.h)
    int bad = 0;
    for (sw_dtype t : {SW_DTYPE_BF16, SW_DTYPE_F16})
        for (float x : xs) {
            const uint16_t h = encode_lib(t, x);
            // (NaN: narrow_ok wants a NaN of the same sign; the payloads may differ — the library keeps its top bits,
            // as vcvtps2ph does, the reference returns the canonical quiet NaN)
            if ((!narrow_ok(t, x, h) || (!std::isnan(x) && h != encode(t, x))) && bad++ < 5)
                std::printf("  narrow %s(%a = 0x%08x) = 0x%04x wrong (reference 0x%04x)\n", tname(t), x, fbits(x), h,
                            encode(t, x));
        }
    for (int i = 0; i < 65536; ++i) { // widening is exact: narrowing back gives the same bits (NaN: quiet)
        const uint16_t h = static_cast<uint16_t>(i);
        for (sw_dtype t : {SW_DTYPE_BF16, SW_DTYPE_F16}) {
            const float f = decode_f(t, h);
            const bool nan = t == SW_DTYPE_BF16 ? ((h & 0x7fff) > 0x7f80) : ((h & 0x7fff) > 0x7c00);
            const uint16_t q = t == SW_DTYPE_BF16 ? 0x40 : 0x200;
            if (encode_lib(t, f) != (nan ? (h | q) : h) && bad++ < 5) std::printf("  %s round trip of 0x%04x\n", tname(t), h);
            // = the reference's value (NaN: a NaN of the same sign; the library quietens an fp16 signalling NaN)
            const float r = sw_ref_to_float16(t == SW_DTYPE_BF16, h);
            if ((nan ? !(std::isnan(f) && std::signbit(f) == std::signbit(r)) : fbits(f) != fbits(r)) && bad++ < 5)
                std::printf("  %s widen 0x%04x = 0x%08x, reference 0x%08x\n", tname(t), h, fbits(f), fbits(r));
        }
    }
    CHECK(bad == 0, "portable conversions: %d wrong", bad);

    // every kernel's row conversions give the portable bits (odd lengths: the SIMD tails)
    for (Kernel k : {Kernel::Generic, Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Bf16}) {
        if (!sw::cpu::kernel_supported(k)) continue;
        const gd::KernelInfo ki = info_of(k);
        for (sw_dtype t : {SW_DTYPE_BF16, SW_DTYPE_F16}) {
            const gd::WidenFn wf = t == SW_DTYPE_BF16 ? ki.widen_bf16 : ki.widen_f16;
            const gd::NarrowFn nf = t == SW_DTYPE_BF16 ? ki.narrow_bf16 : ki.narrow_f16;
            std::vector<float> w(65536 + 16, -1.0f);
            wf(w.data(), all.data(), 65533);
            int wbad = 0;
            for (int i = 0; i < 65533; ++i)
                if (fbits(w[static_cast<size_t>(i)]) != fbits(decode_f(t, all[static_cast<size_t>(i)]))) ++wbad;
            CHECK(wbad == 0 && w[65533] == -1.0f, "%s widen %s: %d wrong or wrote past the end", sw::cpu::kernel_name(k), tname(t), wbad);
            std::vector<uint16_t> h(xs.size() + 8, 0xABCD);
            nf(h.data(), xs.data(), static_cast<int64_t>(xs.size()) - 3);
            int nbad = 0;
            for (size_t i = 0; i + 3 < xs.size(); ++i)
                if (h[i] != encode_lib(t, xs[i]) && nbad++ < 3)
                    std::printf("  %s narrow %s(0x%08x) = 0x%04x, portable 0x%04x\n", sw::cpu::kernel_name(k), tname(t),
                                fbits(xs[i]), h[i], encode_lib(t, xs[i]));
            CHECK(nbad == 0 && h[xs.size() - 3] == 0xABCD, "%s narrow %s: %d wrong or wrote past the end", sw::cpu::kernel_name(k), tname(t), nbad);
        }
    }
}

// ---------------------------------------------------------------- edge values through the GEMM

// C[1 x 1] = sum_p a[p] b[p] for 16-bit a, b of type t (k = a.size()), C in ct; returns C's bits.
uint32_t dot(Kernel kern, ThreadPool& pool, sw_dtype t, sw_dtype ct, const std::vector<uint16_t>& a,
             const std::vector<uint16_t>& b) {
    GemmProblem g;
    g.m = g.n = 1;
    g.k = static_cast<int64_t>(a.size());
    g.a_type = g.b_type = t;
    g.c_type = g.bias_type = ct;
    g.a = a.data();
    g.lda = g.k;
    g.b = b.data();
    g.ldb = 1;
    float cf = std::nanf("");
    uint16_t ch = 0x7E00;
    g.c = ct == SW_DTYPE_F32 ? static_cast<void*>(&cf) : static_cast<void*>(&ch);
    g.ldc = 1;
    sw::cpu::gemm(g, kern, pool);
    return ct == SW_DTYPE_F32 ? fbits(cf) : ch;
}

void check_edge_values(Kernel kern, ThreadPool& pool) {
    const char* kn = sw::cpu::kernel_name(kern);
    for (sw_dtype t : {SW_DTYPE_BF16, SW_DTYPE_F16}) {
        // vdpbf16ps: only bf16 inputs under avx512bf16 (DAZ inputs, FTZ results); everything else is widened.
        const bool dpbf16 = kern == Kernel::Avx512Bf16 && t == SW_DTYPE_BF16;
        const auto e = [t](float v) { return encode(t, v); };
        const std::string w = std::string(kn) + " " + tname(t);
        // subnormal input times a large normal: kept when widened, zero under vdpbf16ps (DAZ)
        {
            const float sub = t == SW_DTYPE_BF16 ? std::ldexp(1.0f, -130) : std::ldexp(1.0f, -20); // subnormal in t
            const float big = t == SW_DTYPE_BF16 ? std::ldexp(1.0f, 100) : 1024.0f;
            const uint16_t hs = e(sub);
            CHECK((hs & 0x7fff) != 0 && ((t == SW_DTYPE_BF16 ? hs >> 7 : hs >> 10) & (t == SW_DTYPE_BF16 ? 0xff : 0x1f)) == 0,
                  "%s: test value not subnormal", w.c_str());
            const float want = dpbf16 ? 0.0f : sub * big;
            const uint32_t got = dot(kern, pool, t, SW_DTYPE_F32, {hs, e(0.0f), hs}, {e(big), e(1.0f), e(big)});
            CHECK(got == fbits(dpbf16 ? 0.0f : 2.0f * want), "%s subnormal input: got 0x%08x, want %a", w.c_str(), got,
                  static_cast<double>(dpbf16 ? 0.0f : 2.0f * want));
        }
        // product subnormal in fp32 (bf16 only: fp16 products cannot get there): kept / flushed (FTZ)
        if (t == SW_DTYPE_BF16) {
            const float x = std::ldexp(1.0f, -70);
            const uint32_t got = dot(kern, pool, t, SW_DTYPE_F32, {e(x)}, {e(x)});
            CHECK(got == fbits(dpbf16 ? 0.0f : std::ldexp(1.0f, -140)), "%s subnormal product: got 0x%08x", w.c_str(), got);
        }
        // +-0: the accumulation starts at +0, so a sum of (-0) products is +0 on every kernel; in 16-bit C too
        {
            const uint16_t nz = e(-0.0f);
            CHECK(dot(kern, pool, t, SW_DTYPE_F32, {nz, nz, nz}, {e(1.0f), e(2.0f), e(3.0f)}) == 0u, "%s -0 sum", w.c_str());
            CHECK(dot(kern, pool, t, t, {nz}, {e(1.0f)}) == 0u, "%s -0 sum, 16-bit C", w.c_str());
            CHECK(dot(kern, pool, t, SW_DTYPE_F32, {}, {}) == 0u, "%s k = 0 gives +0", w.c_str());
        }
        // infinities and NaN
        {
            const uint16_t inf = e(INFINITY), ninf = e(-INFINITY), nan = t == SW_DTYPE_BF16 ? 0x7FC0 : 0x7E00;
            CHECK(dot(kern, pool, t, SW_DTYPE_F32, {inf, e(1.0f), e(1.0f)}, {e(2.0f), e(1.0f), e(1.0f)}) == 0x7f800000u,
                  "%s inf * 2 + 1 != inf", w.c_str());
            CHECK(dot(kern, pool, t, t, {ninf}, {e(2.0f)}) == (t == SW_DTYPE_BF16 ? 0xFF80u : 0xFC00u), "%s -inf in 16-bit C",
                  w.c_str());
            const float r1 = from_bits(dot(kern, pool, t, SW_DTYPE_F32, {inf, e(1.0f)}, {e(0.0f), e(1.0f)}));
            CHECK(std::isnan(r1), "%s inf * 0 is not NaN", w.c_str());
            const float r2 = from_bits(dot(kern, pool, t, SW_DTYPE_F32, {inf, inf}, {e(1.0f), e(-1.0f)}));
            CHECK(std::isnan(r2), "%s inf - inf is not NaN", w.c_str());
            const float r3 = from_bits(dot(kern, pool, t, SW_DTYPE_F32, {e(1.0f), nan, e(1.0f)}, {e(1.0f), e(1.0f), e(1.0f)}));
            CHECK(std::isnan(r3), "%s NaN input lost", w.c_str());
            const uint32_t r4 = dot(kern, pool, t, t, {nan}, {e(1.0f)});
            CHECK(t == SW_DTYPE_BF16 ? (r4 & 0x7fff) > 0x7f80 : (r4 & 0x7fff) > 0x7c00, "%s NaN lost in 16-bit C: 0x%04x", w.c_str(), r4);
        }
        // outputs that round up to infinity in the 16-bit C (rounded once, from the fp32 result)
        if (t == SW_DTYPE_F16) {
            // 256 * 255 + 1 * x: 65504 exact, 65519 -> 65504, 65520 (the midpoint, odd neighbour) -> inf
            CHECK(dot(kern, pool, t, t, {e(256.0f), e(1.0f)}, {e(255.0f), e(224.0f)}) == 0x7BFFu, "%s 65504", w.c_str());
            CHECK(dot(kern, pool, t, t, {e(256.0f), e(1.0f)}, {e(255.0f), e(239.0f)}) == 0x7BFFu, "%s 65519 -> 65504", w.c_str());
            CHECK(dot(kern, pool, t, t, {e(256.0f), e(1.0f)}, {e(255.0f), e(240.0f)}) == 0x7C00u, "%s 65520 -> inf", w.c_str());
            CHECK(dot(kern, pool, t, t, {e(-256.0f), e(-256.0f)}, {e(256.0f), e(256.0f)}) == 0xFC00u, "%s -131072 -> -inf",
                  w.c_str());
            // fp32 result fine, 16-bit C overflows: the accumulation itself is fp32 (256*256 twice = 131072)
            CHECK(dot(kern, pool, t, SW_DTYPE_F32, {e(256.0f), e(256.0f)}, {e(256.0f), e(256.0f)}) == fbits(131072.0f),
                  "%s fp32 accumulation of 16-bit inputs", w.c_str());
        } else {
            // 2^127 * 1.5 + 2^127 * 1.5 = 3 * 2^127 > max bf16 (and max fp32): inf
            const float big = std::ldexp(1.5f, 127);
            CHECK(dot(kern, pool, t, t, {e(big), e(big)}, {e(1.0f), e(1.0f)}) == 0x7F80u, "%s bf16 overflow -> inf", w.c_str());
            // 1 + 2^-8 (a tie between 1 and 1 + 2^-7 in bf16): ties to even -> 1.0; 1 + 3 * 2^-8 -> 1 + 2^-6
            CHECK(dot(kern, pool, t, t, {e(1.0f), e(std::ldexp(1.0f, -8))}, {e(1.0f), e(1.0f)}) == 0x3F80u, "%s tie to even", w.c_str());
            CHECK(dot(kern, pool, t, t, {e(1.0f), e(std::ldexp(3.0f, -8))}, {e(1.0f), e(1.0f)}) == 0x3F82u, "%s tie up to even", w.c_str());
        }
    }
}

// fp32 problems under avx512bf16 run the avx512 kernel: the same bits.
void check_f32_same_as_avx512(ThreadPool& pool) {
    if (!sw::cpu::kernel_supported(Kernel::Avx512Bf16)) return;
    Rng rng(5);
    for (int r = 0; r < 6; ++r) {
        const int64_t m = rng.range(1, 70), n = rng.range(1, 90), k = rng.range(0, 1100);
        std::vector<float> a(static_cast<size_t>(std::max<int64_t>(m * k, 1))), b(static_cast<size_t>(std::max<int64_t>(k * n, 1)));
        for (auto& x : a) x = rng.uniform(-1, 1);
        for (auto& x : b) x = rng.uniform(-1, 1);
        std::vector<float> c1(static_cast<size_t>(m * n)), c2(c1.size());
        GemmProblem g;
        g.m = m;
        g.n = n;
        g.k = k;
        g.a = a.data();
        g.lda = std::max<int64_t>(k, 1);
        g.b = b.data();
        g.ldb = n;
        g.c = c1.data();
        g.ldc = n;
        sw::cpu::gemm(g, Kernel::Avx512, pool);
        g.c = c2.data();
        sw::cpu::gemm(g, Kernel::Avx512Bf16, pool);
        CHECK(std::memcmp(c1.data(), c2.data(), c1.size() * 4) == 0, "f32 %lld x %lld x %lld: avx512bf16 != avx512",
              static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k));
    }
}

void check_kernel_names() {
    Kernel k;
    CHECK(sw::cpu::parse_kernel("avx512bf16", &k) && k == Kernel::Avx512Bf16, "parse_kernel(avx512bf16)");
    CHECK(std::strcmp(sw::cpu::kernel_name(Kernel::Avx512Bf16), "avx512bf16") == 0, "kernel_name(Avx512Bf16)");
    const bool has = sw::cpu::kernel_supported(Kernel::Avx512Bf16);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    CHECK(has == (__builtin_cpu_supports("avx512bf16") && sw::cpu::kernel_supported(Kernel::Avx512)),
          "kernel_supported(avx512bf16) does not follow the processor");
#endif
    if (has) CHECK(sw::cpu::resolve_kernel(Kernel::Auto) == Kernel::Avx512Bf16, "auto does not resolve to avx512bf16");
    const sw::cpu::TileShape ts = sw::cpu::tile_shape(Kernel::Avx512Bf16);
    CHECK(ts.mr == 14 && ts.nr == 32 && ts.kc % 2 == 0 && ts.kc > 0, "tile_shape(avx512bf16) = %d %d %d", ts.mr, ts.nr, ts.kc);
}

} // namespace

int main() {
    check_kernel_names();
    check_conversions();
    std::unique_ptr<ThreadPool> p1(new ThreadPool(1)), p2(new ThreadPool(2)), p3(new ThreadPool(3));
    ThreadPool* pools[3] = {p1.get(), p2.get(), p3.get()};
    check_f32_same_as_avx512(*p2);
    for (Kernel kern : {Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Generic}) {
        if (!sw::cpu::kernel_supported(kern)) {
            std::printf("kernel %s: not supported on this CPU, skipped\n", sw::cpu::kernel_name(kern));
            continue;
        }
        const int before = g_failures;
        check_edge_values(kern, *p2);
        check_kernel(kern, pools);
        std::printf("kernel %s: %s\n", sw::cpu::kernel_name(kern), g_failures == before ? "ok" : "FAILED");
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
