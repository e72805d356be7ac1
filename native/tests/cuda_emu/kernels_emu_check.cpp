// Runs the CUDA plugin's element-wise and data-movement kernels (native/src/cuda/kernels.cu, the very source nvcc
// compiles, launchers included) on the host emulation of cuda_emu.h, and checks every result bit for bit against
// independent references: the layout kernel copy_2d (all five access widths it picks, padding untouched), the
// in-process all-reduce's reduce_sum (every dtype, scalar and 16-byte vector paths with tails, several sources and
// destinations, in place; in source order and in the tree order of SW_REDUCE_SUM_TREE against sw::tree::sum, on data
// whose sums depend on the order), convert (all twelve dtype pairs, correctly rounded, including the double -> f16/bf16
// ties that a double rounding would get wrong), the GEMM epilogue scale_bias_act, gelu_backward, wait_flag, the training
// kernels unscale_check and axpy, and the attention and normalization kernels softmax, softmax_backward, norm and
// norm_backward (against float64 references, to a relative 1e-5: they sum in fp32), and the activations, GLU, dropout
// (masks bit for bit those of sw::dropout_bits on the host, for any split of the range into calls), the vocabulary-parallel
// embedding and its backward, the cross-entropy partial / combine / backward over shards of one logits matrix, and the
// optimizers sgd_step, adamw_step, sum_squares and scale (bit for bit against the CPU backend's loops, cpu/row_ops.cpp,
// included below, and against float64 references), and the TP-invariant tree GEMM (cuda/gemm_tree.cu, included below):
// its tree walk against core/tree_reduction.h, its results bit for bit against a host reference of the same arithmetic
// (fmaf chains per leaf, sw::tree::sum, the epilogue with the plugin's own GeLU function) for every type combination,
// transposes, padded leading dimensions, bias, GeLU, alpha and beta, k == 0, k < k_leaf, a shorter last leaf and a deep
// tree, and its TP invariance: the nodes of sw::tree::nodes(N, p) computed as separate GEMMs (p = 2, 4, empty nodes
// included) and combined by the tree over the ranks give the unsharded GEMM's bits.
// Every buffer lies against a guard page; every launch must be a valid configuration with no emulator findings.
//
// This proves the kernels' index math, launch configurations and arithmetic on a machine without a GPU. The
// device's own math library (tanhf) differs from the host's by an ulp or so: GeLU results are compared with a
// tolerance, and so are the row-wise kernels (fp32 sums and expf against float64), everything else exactly. It does not
// replace cuda_check on a GPU.
#define SW_CUDA_HOST_EMULATION 1
#include "cuda_emu.h"

#include "cuda/kernels.cu"
#include "cuda/gemm_tree.cu" // the TP-invariant tree GEMM (launch_tree_gemm)
#include "core/tree_reduction.h"
#include "cpu/row_ops.cpp" // the CPU backend's loops: the optimizers' bit-for-bit references
#include "emu_test_util.h"

#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using emu_test::Format16;
using emu_test::Guarded;

int g_failures = 0, g_checks = 0;
const Format16 kF16(10, 5), kBF16(7, 8);

void report(bool ok, const std::string& what, const std::vector<std::string>& details = {}) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s\n", what.c_str());
        for (size_t i = 0; i < details.size() && i < 8; ++i) std::printf("       %s\n", details[i].c_str());
    } else {
        std::printf("ok   %s\n", what.c_str());
    }
}

// A launcher call must succeed with a clean emulator run.
void expect_launch(cudaError_t st, std::vector<std::string>& problems) {
    if (st != cudaSuccess) problems.push_back("launch returned cudaError " + std::to_string(static_cast<int>(st)));
    for (auto& f : sw::emu::take_findings()) problems.push_back("emulator: " + f);
}

std::mt19937_64 g_rng(0x6b65726eu ^ static_cast<uint64_t>(std::random_device{}()));

size_t dtype_size(sw_dtype t) { return sw::dtype_bytes(t); }
const char* name(sw_dtype t) { return sw::dtype_name(t); }

// Element i of a buffer of dtype t, as an exact double (NaN stays NaN).
double get(sw_dtype t, const void* p, size_t i) {
    switch (t) {
    case SW_DTYPE_F32: return static_cast<const float*>(p)[i];
    case SW_DTYPE_F64: return static_cast<const double*>(p)[i];
    case SW_DTYPE_I32: return static_cast<const int32_t*>(p)[i];
    case SW_DTYPE_F16: return kF16.decode(static_cast<const uint16_t*>(p)[i]);
    case SW_DTYPE_BF16: return kBF16.decode(static_cast<const uint16_t*>(p)[i]);
    default: return NAN;
    }
}
// Stores v (representable, or rounded to nearest even) as element i.
void put(sw_dtype t, void* p, size_t i, double v) {
    switch (t) {
    case SW_DTYPE_F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case SW_DTYPE_F64: static_cast<double*>(p)[i] = v; break;
    case SW_DTYPE_I32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case SW_DTYPE_F16: static_cast<uint16_t*>(p)[i] = kF16.round(v); break;
    case SW_DTYPE_BF16: static_cast<uint16_t*>(p)[i] = kBF16.round(v); break;
    default: break;
    }
}
std::string bits_of(sw_dtype t, const void* p, size_t i) {
    const size_t es = dtype_size(t);
    uint64_t v = 0;
    std::memcpy(&v, static_cast<const char*>(p) + i * es, es);
    char buf[64];
    std::snprintf(buf, sizeof buf, "0x%0*" PRIx64 " (%.9g)", static_cast<int>(es * 2), v, get(t, p, i));
    return buf;
}

// ------------------------------------------------------------------------------------------ conversions
// The emulation's 16-bit conversions (used for the kernels' f16/bf16 arithmetic) against the search reference.
void check_emulated_conversions() {
    std::vector<std::string> problems;
    std::vector<float> probes = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e-8f, 5.96e-8f,
                                 2.98e-8f, 2.99e-8f, 6.1e-5f, 3.0e38f, 3.4e38f, FLT_MAX, FLT_MIN, 1e-40f, INFINITY,
                                 -INFINITY};
    for (const Format16* f : {&kF16, &kBF16})
        for (uint32_t b = 0; b < 0x7c00u || (f == &kBF16 && b < 0x7f80u); ++b) { // every tie between neighbours
            const double lo = f->decode(static_cast<uint16_t>(b)), hi = f->decode(static_cast<uint16_t>(b + 1));
            if (std::isinf(hi)) break;
            const auto mid = static_cast<float>((lo + hi) / 2); // exact in float for both formats
            probes.push_back(mid);
            probes.push_back(std::nextafter(mid, 0.0f));
            probes.push_back(std::nextafter(mid, INFINITY));
            if (b % 97 == 0) probes.push_back(-mid);
        }
    std::uniform_int_distribution<uint32_t> any;
    for (int i = 0; i < 20000; ++i) probes.push_back(__uint_as_float(any(g_rng)));
    for (float v : probes) {
        const uint16_t h = sw::emu::float_to_f16(v), want_h = kF16.round(v);
        const uint16_t b = sw::emu::float_to_bf16(v), want_b = kBF16.round(v);
        const bool nan = std::isnan(v);
        if (nan ? !kF16.is_nan(h) : h != want_h) problems.push_back("f16 of " + std::to_string(v));
        if (nan ? !kBF16.is_nan(b) : b != want_b) problems.push_back("bf16 of " + std::to_string(v));
        if (!nan && sw::emu::f16_to_float(h) != static_cast<float>(kF16.decode(h))) problems.push_back("f16 decode");
        if (!nan && sw::emu::bf16_to_float(b) != static_cast<float>(kBF16.decode(b))) problems.push_back("bf16 decode");
    }
    report(problems.empty(), "emulated f16/bf16 conversions round to nearest even (" + std::to_string(probes.size()) +
                                 " values incl. every tie)", problems);
}

// ------------------------------------------------------------------------------------------ copy_2d
void check_copy_2d() {
    struct C { int64_t rows, cols, ld_src, ld_dst; int32_t es; size_t src_off, dst_off; };
    // Chosen so that the launcher's unit (the widest dividing both addresses, both pitches and the row width) is,
    // in order: 16, 8, 4, 2 and 1 bytes; then uneven shards as the all-gather's layout step makes them.
    const C cases[] = {{7, 12, 16, 20, 4, 0, 0}, {5, 6, 10, 8, 4, 8, 0}, {9, 33, 35, 40, 4, 4, 0},
                       {3, 5, 7, 9, 2, 2, 6}, {4, 9, 11, 13, 1, 1, 3}, {1, 1, 1, 1, 8, 0, 0},
                       {70, 3, 3, 10, 4, 0, 28}, {2, 1000, 1000, 2100, 2, 0, 2000}, {33, 17, 17, 51, 8, 0, 136}};
    bool widths[17] = {};
    for (const C& c : cases) {
        const size_t sbytes = static_cast<size_t>(c.rows * c.ld_src * c.es) + c.src_off;
        const size_t dbytes = static_cast<size_t>(c.rows * c.ld_dst * c.es) + c.dst_off;
        Guarded gs(sbytes, 0), gd(dbytes, 0);
        std::uniform_int_distribution<int> byte(0, 255);
        for (size_t i = 0; i < sbytes; ++i) gs.as<uint8_t>()[i] = static_cast<uint8_t>(byte(g_rng));
        for (size_t i = 0; i < dbytes; ++i) gd.as<uint8_t>()[i] = 0xA5; // poison
        std::vector<uint8_t> before(gd.as<uint8_t>(), gd.as<uint8_t>() + dbytes);
        uint8_t* dst = gd.as<uint8_t>() + c.dst_off;
        const uint8_t* src = gs.as<uint8_t>() + c.src_off;
        const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                               static_cast<uintptr_t>(c.ld_dst * c.es) | static_cast<uintptr_t>(c.ld_src * c.es) |
                               static_cast<uintptr_t>(c.cols * c.es);
        const int unit = bits % 16 == 0 ? 16 : bits % 8 == 0 ? 8 : bits % 4 == 0 ? 4 : bits % 2 == 0 ? 2 : 1;
        widths[unit] = true;
        std::vector<std::string> problems;
        expect_launch(sw::cuda::launch_copy_2d(dst, c.ld_dst, src, c.ld_src, c.rows, c.cols, c.es, nullptr), problems);
        for (int64_t r = 0; r < c.rows; ++r)
            for (int64_t b = 0; b < c.ld_dst * c.es; ++b) {
                const size_t di = c.dst_off + static_cast<size_t>(r * c.ld_dst * c.es + b);
                const uint8_t want = b < c.cols * c.es ? src[r * c.ld_src * c.es + b] : before[di];
                if (gd.as<uint8_t>()[di] != want && problems.size() < 6)
                    problems.push_back("row " + std::to_string(r) + " byte " + std::to_string(b) +
                                       (b < c.cols * c.es ? " not copied" : " (padding) was written"));
            }
        for (size_t i = 0; i < c.dst_off; ++i)
            if (gd.as<uint8_t>()[i] != before[i] && problems.size() < 6) problems.push_back("bytes before dst written");
        report(problems.empty(), "copy_2d " + std::to_string(c.rows) + "x" + std::to_string(c.cols) + " es=" +
                                     std::to_string(c.es) + " ld " + std::to_string(c.ld_src) + "->" +
                                     std::to_string(c.ld_dst) + " (" + std::to_string(unit) + "-byte units)", problems);
    }
    report(widths[16] && widths[8] && widths[4] && widths[2] && widths[1], "copy_2d cases cover 16/8/4/2/1-byte units");
}

// ------------------------------------------------------------------------------------------ reduce_sum
// The reference sums in the kernel's accumulator type: float (f32, f16, bf16: one rounding at the end for the 16-bit
// types), double, or modulo 2^32 (i32); in source order, or (tree) with sw::tree::sum, the fixed binary tree of
// SW_REDUCE_SUM_TREE (core/tree_reduction.h), written independently of the kernel's stack walk.
template <class A, class Load> A reduce_in(size_t n, bool tree, Load load) {
    std::vector<A> x(n);
    for (size_t s = 0; s < n; ++s) x[s] = load(s);
    if (tree) return sw::tree::sum(x.data(), static_cast<int64_t>(n), [](A l, A r) { return static_cast<A>(l + r); });
    A acc = x[0];
    for (size_t s = 1; s < n; ++s) acc = static_cast<A>(acc + x[s]);
    return acc;
}
double reduce_reference(sw_dtype t, const std::vector<const void*>& srcs, size_t i, bool tree) {
    if (t == SW_DTYPE_F64) return reduce_in<double>(srcs.size(), tree, [&](size_t s) { return get(t, srcs[s], i); });
    if (t == SW_DTYPE_I32)
        return static_cast<int32_t>(reduce_in<uint32_t>(srcs.size(), tree, [&](size_t s) {
            return static_cast<uint32_t>(static_cast<const int32_t*>(srcs[s])[i]);
        }));
    return reduce_in<float>(srcs.size(), tree, [&](size_t s) { return static_cast<float>(get(t, srcs[s], i)); });
    // put() rounds it once to f16 / bf16
}

// A value whose sums depend on the order of the additions, even after a rounding to 16 bits: half the time +-B (a
// large power of two), else a small value of random exponent that B absorbs (f16: subnormals and near). Sums where
// two +-B meet cancel exactly, and whether a small value was added before or after that cancellation decides whether it
// survives. (With values of one magnitude, fp32 sums of f16 / bf16 values are exact in any order: no check at all.)
double order_sensitive_value(sw_dtype t) {
    std::uniform_real_distribution<double> mant(1.0, 2.0);
    const bool f16 = t == SW_DTYPE_F16, f64 = t == SW_DTYPE_F64;
    double v;
    if (g_rng() & 2u) {
        v = std::ldexp(1.0, f16 ? 14 : f64 ? 60 : 30);
    } else {
        std::uniform_int_distribution<int> ex(f16 ? -24 : f64 ? -60 : -40, f16 ? -12 : f64 ? -40 : -20);
        v = std::ldexp(mant(g_rng), ex(g_rng));
    }
    return (g_rng() & 1u) ? v : -v;
}

// tree = false: source order, nsrc 1, 3, 5. tree = true (SW_REDUCE_SUM_TREE): nsrc 1..5, 8, 13 and 64 (the most).
void check_reduce_sum(bool tree) {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_I32, SW_DTYPE_F16, SW_DTYPE_BF16};
    const uint64_t counts[] = {1, 7, 37, 1027};
    const std::vector<int> nsrcs = tree ? std::vector<int>{1, 2, 3, 4, 5, 8, 13, 64} : std::vector<int>{1, 3, 5};
    int variant = 0;
    for (sw_dtype t : types)
        for (uint64_t count : counts)
            for (int nsrc : nsrcs)
                for (bool aligned : {true, false}) {
                    ++variant;
                    const int ndst = 1 + variant % 2;
                    const bool in_place = variant % 3 == 0 && nsrc > 1; // dst[0] is src[1]
                    const size_t es = dtype_size(t), off = aligned ? 0 : es; // one element off 16-byte alignment
                    std::vector<std::unique_ptr<Guarded>> bufs;
                    std::vector<const void*> srcs;
                    std::vector<void*> dsts;
                    std::uniform_real_distribution<double> uni(-4.0, 4.0);
                    std::uniform_int_distribution<int32_t> big(INT32_MIN, INT32_MAX);
                    for (int s = 0; s < nsrc; ++s) {
                        // Guarded places the end at a page boundary: size the buffers in 16-byte multiples so that
                        // the aligned case really is aligned.
                        const size_t bytes = (count * es + off + 15) / 16 * 16;
                        bufs.push_back(std::make_unique<Guarded>(bytes, 0));
                        void* p = bufs.back()->as<char>() + off;
                        for (uint64_t i = 0; i < count; ++i) {
                            if (t == SW_DTYPE_I32) static_cast<int32_t*>(p)[i] = big(g_rng); // wraps on purpose
                            else if (tree) put(t, p, i, order_sensitive_value(t));
                            else put(t, p, i, uni(g_rng));
                        }
                        srcs.push_back(p);
                    }
                    std::vector<std::vector<char>> saved; // the sources' values before an in-place run
                    for (const void* s : srcs)
                        saved.emplace_back(static_cast<const char*>(s), static_cast<const char*>(s) + count * es);
                    for (int d = 0; d < ndst; ++d) {
                        if (d == 0 && in_place) {
                            dsts.push_back(const_cast<void*>(srcs[1]));
                            continue;
                        }
                        const size_t bytes = (count * es + off + 15) / 16 * 16;
                        bufs.push_back(std::make_unique<Guarded>(bytes, 0));
                        std::memset(bufs.back()->as<void>(), 0xFF, bytes); // NaN / -1 poison
                        dsts.push_back(bufs.back()->as<char>() + off);
                    }
                    std::vector<std::string> problems;
                    expect_launch(sw::cuda::launch_reduce_sum(t, srcs.data(), nsrc, dsts.data(), ndst, count, tree, nullptr),
                                  problems);
                    std::vector<const void*> orig;
                    for (const auto& v : saved) orig.push_back(v.data());
                    std::vector<char> want(es);
                    for (uint64_t i = 0; i < count; ++i) {
                        put(t, want.data(), 0, reduce_reference(t, orig, i, tree));
                        for (int d = 0; d < ndst; ++d)
                            if (std::memcmp(static_cast<char*>(dsts[d]) + i * es, want.data(), es) != 0 && problems.size() < 6)
                                problems.push_back("dst " + std::to_string(d) + "[" + std::to_string(i) + "] = " +
                                                   bits_of(t, dsts[d], i) + ", expected " + bits_of(t, want.data(), 0));
                    }
                    char what[160];
                    std::snprintf(what, sizeof what, "reduce_sum%s %s count=%llu nsrc=%d ndst=%d %s%s", tree ? " (tree)" : "",
                                  name(t), static_cast<unsigned long long>(count), nsrc, ndst,
                                  aligned ? "16-byte aligned (vector path + tail)" : "misaligned (scalar path)",
                                  in_place ? " in place" : "");
                    report(problems.empty(), what, problems);
                }
}

// ------------------------------------------------------------------------------------------ convert
void check_convert() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    for (sw_dtype from : types)
        for (sw_dtype to : types) {
            if (from == to) continue;
            // Source values: specials, each format's extremes, random values, and (from f64) the exact ties between
            // neighbouring f16 / bf16 values and the doubles just beside them, which a double rounding through
            // float would round the wrong way.
            std::vector<double> v = {0.0, -0.0, 1.0, -2.5, INFINITY, -INFINITY, NAN, 65504.0, 65520.0, 1e-7, 3e-8,
                                     1e30, -1e-30, 3.3895313892515355e38, 1e-40};
            std::uniform_real_distribution<double> uni(-10.0, 10.0);
            for (int i = 0; i < 200; ++i) v.push_back(uni(g_rng) * std::ldexp(1.0, static_cast<int>(g_rng() % 40) - 20));
            if (from == SW_DTYPE_F64)
                for (const Format16* f : {&kF16, &kBF16})
                    for (int i = 0; i < 300; ++i) {
                        const auto b = static_cast<uint16_t>(g_rng() % (f == &kF16 ? 0x7bffu : 0x7f7fu));
                        const double mid = (f->decode(b) + f->decode(static_cast<uint16_t>(b + 1))) / 2;
                        v.push_back(mid);
                        v.push_back(std::nextafter(mid, 0.0));
                        v.push_back(std::nextafter(mid, INFINITY));
                        v.push_back(mid + std::ldexp(mid, -40)); // rounds to the tie in float: the double-rounding trap
                        v.push_back(mid - std::ldexp(mid, -40));
                    }
            const size_t n = v.size();
            Guarded gs(n * dtype_size(from), 0), gd(n * dtype_size(to), 0);
            // The source holds v rounded to `from`; the expected result is that value correctly rounded to `to`.
            for (size_t i = 0; i < n; ++i) {
                if (from == SW_DTYPE_F32 && std::fabs(v[i]) > FLT_MAX && !std::isinf(v[i])) v[i] = 0.5;
                put(from, gs.as<void>(), i, v[i]);
            }
            std::memset(gd.as<void>(), 0x7F, n * dtype_size(to));
            std::vector<std::string> problems;
            expect_launch(sw::cuda::launch_convert(from, gs.as<void>(), to, gd.as<void>(), n, nullptr), problems);
            std::vector<char> want(dtype_size(to));
            for (size_t i = 0; i < n; ++i) {
                const double x = get(from, gs.as<void>(), i);
                if (std::isnan(x)) {
                    if (!std::isnan(get(to, gd.as<void>(), i))) problems.push_back("NaN did not stay NaN");
                    continue;
                }
                if (to == SW_DTYPE_F32 && std::fabs(x) > FLT_MAX && !std::isinf(x)) {
                    // Past FLT_MAX: the nearest-even rule gives infinity from FLT_MAX + half an ulp on.
                    const double lim = static_cast<double>(FLT_MAX) + std::ldexp(1.0, 103);
                    const float w = std::fabs(x) >= lim ? INFINITY : FLT_MAX;
                    *reinterpret_cast<float*>(want.data()) = std::copysign(w, static_cast<float>(x > 0 ? 1 : -1));
                } else {
                    put(to, want.data(), 0, x);
                }
                if (std::memcmp(gd.as<char>() + i * dtype_size(to), want.data(), dtype_size(to)) != 0 && problems.size() < 6) {
                    char buf[200];
                    std::snprintf(buf, sizeof buf, "%.17g -> %s, expected %s", x, bits_of(to, gd.as<void>(), i).c_str(),
                                  bits_of(to, want.data(), 0).c_str());
                    problems.push_back(buf);
                }
            }
            report(problems.empty(), std::string("convert ") + name(from) + " -> " + name(to) + " (" + std::to_string(n) +
                                         " values, correctly rounded)", problems);
        }
}

// ------------------------------------------------------------------------------------------ epilogue, GeLU backward
double gelu64(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
double gelu_grad64(double x) {
    const double k = 0.7978845608028654, t = std::tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}
// Relative tolerance of a result computed in the kernel's compute type and rounded to t.
double tolerance(sw_dtype t, double ref, double scale) {
    const double ulp = t == SW_DTYPE_F64 ? 1e-14 : t == SW_DTYPE_F32 ? 1e-6 : t == SW_DTYPE_F16 ? 1.0 / 1024 : 1.0 / 128;
    // fp16 results below 2^-14 are subnormal, spaced 2^-24 apart whatever their size: a relative bound alone fails
    // (about one run in a hundred) when a random dy is tiny.
    const double floor = t == SW_DTYPE_F16 ? 0x1p-24 : 1e-300;
    return ulp * (std::fabs(ref) + scale) + floor;
}

// Compares rows x cols of y (leading dimension ld, elements of type t) with want(r, j, i) = {expected, tolerance}; the
// padding columns (j >= cols) must still hold 7.0. At most 6 problems are listed.
template <class Want>
void compare_rows(sw_dtype t, const void* y, int64_t rows, int64_t cols, int64_t ld, Want&& want,
                  std::vector<std::string>& problems) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < ld; ++j) {
            const size_t i = static_cast<size_t>(r * ld + j);
            const double got = get(t, y, i);
            if (j >= cols) {
                if (got != 7.0 && problems.size() < 6) problems.push_back("padding written");
                continue;
            }
            const auto [v, tol] = want(r, j, i);
            if (!(std::fabs(got - v) <= tol) && problems.size() < 6) {
                char buf[120];
                std::snprintf(buf, sizeof buf, "y(%lld, %lld) = %.9g, expected %.9g", static_cast<long long>(r),
                              static_cast<long long>(j), got, v);
                problems.push_back(buf);
            }
        }
}

void check_scale_bias_act() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    struct S { int64_t rows, cols, ld; };
    const S shapes[] = {{1, 1, 1}, {5, 37, 40}, {3, 300, 301}};
    int variant = 0;
    for (sw_dtype t : types)
        for (const S& s : shapes)
            for (float beta : {0.0f, 0.5f})
                for (bool bias_on : {false, true})
                    for (bool gelu_on : {false, true}) {
                        ++variant;
                        if (variant % 2 == 0 && !(s.rows == 1)) continue; // half the combinations, all of the small one
                        const size_t es = dtype_size(t), n = static_cast<size_t>(s.rows * s.ld);
                        Guarded gy(n * es, 0), gb(static_cast<size_t>(s.cols) * es, 0);
                        std::uniform_real_distribution<double> uni(-3.0, 3.0);
                        std::vector<double> y0(n), b0(static_cast<size_t>(s.cols));
                        for (size_t i = 0; i < n; ++i) {
                            const bool pad = static_cast<int64_t>(i % static_cast<size_t>(s.ld)) >= s.cols;
                            put(t, gy.as<void>(), i, pad ? 7.0 : (beta == 0.0f ? NAN : uni(g_rng))); // not read if beta = 0
                            y0[i] = get(t, gy.as<void>(), i);
                        }
                        for (int64_t j = 0; j < s.cols; ++j) {
                            put(t, gb.as<void>(), static_cast<size_t>(j), uni(g_rng));
                            b0[static_cast<size_t>(j)] = get(t, gb.as<void>(), static_cast<size_t>(j));
                        }
                        std::vector<std::string> problems;
                        expect_launch(sw::cuda::launch_scale_bias_act(t, gy.as<void>(), s.ld, s.rows, s.cols, beta,
                                                                      bias_on ? gb.as<void>() : nullptr, gelu_on, nullptr),
                                      problems);
                        compare_rows(t, gy.as<void>(), s.rows, s.cols, s.ld, [&](int64_t, int64_t j, size_t i) {
                            double v = beta == 0.0f ? 0.0 : beta * y0[i];
                            if (bias_on) v += b0[static_cast<size_t>(j)];
                            if (gelu_on) v = gelu64(v);
                            return std::pair<double, double>{v, tolerance(t, v, gelu_on ? 1.0 : 0.0)};
                        }, problems);
                        char what[160];
                        std::snprintf(what, sizeof what, "scale_bias_act %s %lldx%lld ld=%lld beta=%g%s%s", name(t),
                                      static_cast<long long>(s.rows), static_cast<long long>(s.cols),
                                      static_cast<long long>(s.ld), beta, bias_on ? " +bias" : "", gelu_on ? " +gelu" : "");
                        report(problems.empty(), what, problems);
                    }
}

// launch_finish_f32: y = act(w + beta * y + bias) from an fp32 product w, rounded once to y's type. The data make w and
// the bias nearly cancel, so that rounding w to 16 bits before adding the bias (what cuBLASLt's own 16-bit epilogues
// do) misses the result by up to half a 16-bit ulp of w, many ulps of the result.
void check_finish_f32() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16};
    struct S { int64_t rows, cols, ld, ldw; };
    const S shapes[] = {{1, 1, 1, 1}, {5, 37, 40, 37}, {3, 300, 301, 303}};
    for (sw_dtype t : types)
        for (const S& s : shapes)
            for (float beta : {0.0f, 0.5f})
                for (bool bias_on : {false, true})
                    for (bool gelu_on : {false, true}) {
                        const size_t es = dtype_size(t), n = static_cast<size_t>(s.rows * s.ld);
                        Guarded gy(n * es, 0), gb(static_cast<size_t>(s.cols) * es, 0);
                        std::vector<float> w(static_cast<size_t>(s.rows * s.ldw), NAN);
                        std::uniform_real_distribution<double> uni(-0.02, 0.02), big(0.5, 1.0);
                        std::vector<double> y0(n), b0(static_cast<size_t>(s.cols));
                        for (int64_t j = 0; j < s.cols; ++j) {
                            put(t, gb.as<void>(), static_cast<size_t>(j), -big(g_rng));
                            b0[static_cast<size_t>(j)] = get(t, gb.as<void>(), static_cast<size_t>(j));
                        }
                        for (int64_t r = 0; r < s.rows; ++r)
                            for (int64_t j = 0; j < s.cols; ++j) // w ~ -bias (+ a little): v is small
                                w[static_cast<size_t>(r * s.ldw + j)] = static_cast<float>(
                                    (bias_on ? -b0[static_cast<size_t>(j)] : big(g_rng)) + uni(g_rng));
                        for (size_t i = 0; i < n; ++i) {
                            const bool pad = static_cast<int64_t>(i % static_cast<size_t>(s.ld)) >= s.cols;
                            put(t, gy.as<void>(), i, pad ? 7.0 : (beta == 0.0f ? NAN : uni(g_rng)));
                            y0[i] = get(t, gy.as<void>(), i);
                        }
                        std::vector<std::string> problems;
                        expect_launch(sw::cuda::launch_finish_f32(t, gy.as<void>(), s.ld, w.data(), s.ldw, s.rows, s.cols,
                                                                  beta, bias_on ? gb.as<void>() : nullptr, gelu_on, nullptr),
                                      problems);
                        const double half_ulp = t == SW_DTYPE_F32 ? 0x1p-24 : t == SW_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
                        compare_rows(t, gy.as<void>(), s.rows, s.cols, s.ld, [&](int64_t r, int64_t j, size_t i) {
                            const double wv = w[static_cast<size_t>(r * s.ldw + j)];
                            double v = wv, mag = std::fabs(wv);
                            if (beta != 0.0f) { v += beta * y0[i]; mag += std::fabs(beta * y0[i]); }
                            if (bias_on) { v += b0[static_cast<size_t>(j)]; mag += std::fabs(b0[static_cast<size_t>(j)]); }
                            double tol = 3 * 0x1p-24 * mag; // the fp32 sums
                            if (gelu_on) { tol = 1.2 * tol + 1e-6 * std::fabs(v) + 1e-7; v = gelu64(v); }
                            return std::pair<double, double>{v, tol + half_ulp * std::fabs(v) * 1.0001 + 1e-30};
                        }, problems);
                        char what[160];
                        std::snprintf(what, sizeof what, "finish_f32 %s %lldx%lld ld=%lld ldw=%lld beta=%g%s%s", name(t),
                                      static_cast<long long>(s.rows), static_cast<long long>(s.cols),
                                      static_cast<long long>(s.ld), static_cast<long long>(s.ldw), beta,
                                      bias_on ? " +bias" : "", gelu_on ? " +gelu" : "");
                        report(problems.empty(), what, problems);
                    }
}

void check_gelu_backward() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    for (sw_dtype t : types)
        for (uint64_t count : {uint64_t{1}, uint64_t{1000}})
            for (bool in_place : {false, true}) {
                const size_t es = dtype_size(t);
                Guarded gx(count * es, 0), gdy(count * es, 0), gdx(count * es, 0);
                std::uniform_real_distribution<double> uni(-4.0, 4.0);
                std::vector<double> x(count), dy(count);
                for (uint64_t i = 0; i < count; ++i) {
                    put(t, gx.as<void>(), i, uni(g_rng));
                    put(t, gdy.as<void>(), i, uni(g_rng));
                    x[i] = get(t, gx.as<void>(), i);
                    dy[i] = get(t, gdy.as<void>(), i);
                }
                std::memset(gdx.as<void>(), 0xFF, count * es);
                void* dx = in_place ? gdy.as<void>() : gdx.as<void>();
                std::vector<std::string> problems;
                expect_launch(sw::cuda::launch_gelu_backward(t, gx.as<void>(), gdy.as<void>(), dx, count, nullptr), problems);
                for (uint64_t i = 0; i < count; ++i) {
                    const double want = dy[i] * gelu_grad64(x[i]), got = get(t, dx, i);
                    if (!(std::fabs(got - want) <= tolerance(t, want, std::fabs(dy[i]))) && problems.size() < 6) {
                        char buf[120];
                        std::snprintf(buf, sizeof buf, "dx[%llu] = %.9g, expected %.9g", static_cast<unsigned long long>(i),
                                      got, want);
                        problems.push_back(buf);
                    }
                }
                report(problems.empty(), std::string("gelu_backward ") + name(t) + " count=" + std::to_string(count) +
                                             (in_place ? " in place (dx = dy)" : ""), problems);
            }
}

void check_wait_flag() {
    // Only flags that have already reached their target (an unreached one would spin: the emulation has no
    // concurrent host thread): equal, past, and past across the 2^32 wrap.
    std::vector<std::string> problems;
    const uint32_t pairs[][2] = {{5, 5}, {9, 5}, {5, 0xFFFFFFF0u}};
    for (const auto& p : pairs) {
        volatile uint32_t flag = p[0];
        expect_launch(sw::cuda::launch_wait_flag(&flag, p[1], nullptr), problems);
    }
    report(problems.empty(), "wait_flag returns for reached flags (incl. across the 2^32 wrap)", problems);
}

// ------------------------------------------------------------------------------------------ training (ABI 6)
// unscale_check: buf[i] = round(float(buf[i]) * inv_scale) exactly (one fp32 product, rounded once to the type), the
// flag set to 1 by an inf or NaN anywhere (also in the last, partial block) and left alone otherwise; axpy:
// y[i] = fmaf(alpha, float(x[i]), y[i]) exactly.
void check_training_kernels() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16};
    for (sw_dtype t : types)
        for (uint64_t count : {uint64_t{1}, uint64_t{1000}})
            for (int bad : {-1, 0, 1}) { // -1: all finite; 0: an inf at the last element; 1: a NaN at element 0
                const size_t es = dtype_size(t);
                Guarded gb(count * es, 0), gflag(2 * sizeof(float), 0);
                std::uniform_real_distribution<double> uni(-300.0, 300.0);
                std::vector<float> in(count);
                for (uint64_t i = 0; i < count; ++i) {
                    put(t, gb.as<void>(), i, uni(g_rng));
                    in[i] = static_cast<float>(get(t, gb.as<void>(), i));
                }
                if (bad == 0) { put(t, gb.as<void>(), count - 1, INFINITY); in[count - 1] = INFINITY; }
                if (bad == 1) { put(t, gb.as<void>(), 0, NAN); in[0] = NAN; }
                float* flag = gflag.as<float>();
                flag[0] = 0.0f;
                flag[1] = 7.0f; // a neighbour that must stay
                const float inv = 1.0f / 64.0f;
                std::vector<std::string> problems;
                expect_launch(sw::cuda::launch_unscale_check(t, gb.as<void>(), count, inv, flag, nullptr), problems);
                for (uint64_t i = 0; i < count && problems.size() < 6; ++i) {
                    if (std::isnan(in[i])) { // NaN stays NaN (its payload is the conversion's)
                        if (!std::isnan(get(t, gb.as<void>(), i))) problems.push_back("buf[" + std::to_string(i) + "] lost its NaN");
                        continue;
                    }
                    Guarded want(es, 0);
                    put(t, want.as<void>(), 0, static_cast<double>(in[i] * inv));
                    if (std::memcmp(want.as<char>(), gb.as<char>() + i * es, es) != 0)
                        problems.push_back("buf[" + std::to_string(i) + "] = " + bits_of(t, gb.as<void>(), i) + ", expected " +
                                           bits_of(t, want.as<void>(), 0));
                }
                if (flag[0] != (bad >= 0 ? 1.0f : 0.0f)) problems.push_back("flag = " + std::to_string(flag[0]));
                if (flag[1] != 7.0f) problems.push_back("the element after the flag was written");
                report(problems.empty(), std::string("unscale_check ") + name(t) + " count=" + std::to_string(count) +
                                             (bad < 0 ? " finite" : bad == 0 ? " inf last" : " NaN first"), problems);

                if (bad >= 0) continue;
                Guarded gy(count * sizeof(float), 0);
                std::vector<float> y0(count);
                for (uint64_t i = 0; i < count; ++i) gy.as<float>()[i] = y0[i] = static_cast<float>(uni(g_rng));
                std::vector<std::string> p2;
                expect_launch(sw::cuda::launch_axpy(t, -0.375f, gb.as<void>(), gy.as<float>(), count, nullptr), p2);
                for (uint64_t i = 0; i < count && p2.size() < 6; ++i) {
                    const float want = std::fma(-0.375f, static_cast<float>(get(t, gb.as<void>(), i)), y0[i]);
                    if (std::memcmp(&want, gy.as<float>() + i, 4) != 0)
                        p2.push_back("y[" + std::to_string(i) + "] = " + std::to_string(gy.as<float>()[i]) + ", expected " +
                                     std::to_string(want));
                }
                report(p2.empty(), std::string("axpy x ") + name(t) + " count=" + std::to_string(count), p2);
            }
}


// ------------------------------------------------------------------------------------------ attention, norms (ABI 7)
// softmax, softmax_backward, norm and norm_backward through their launchers (and once with a small grid and block
// launched directly, so that the grid-stride loops over rows and columns and the multi-column threads run), against
// float64 references on fresh random data. Outputs are NaN-poisoned before each run; the gap between cols and ld of
// every row holds a sentinel that must keep its bits; every buffer ends at a guard page (the last row without gap);
// in-place runs (y = x, dx = dy) included. Results agree with the references to a relative 1e-5 of the magnitudes
// involved (the kernels sum in fp32); masked softmax columns must be exactly 0.
constexpr double kRowRel = 1e-5;
constexpr uint32_t kGapBits = 0xC4424242u; // -776.03..., never produced by these kernels
float gap_value() { return __uint_as_float(kGapBits); }
bool is_gap(float v) { return __float_as_uint(v) == kGapBits; }

void expect_close(std::vector<std::string>& problems, const char* what, int64_t r, int64_t j, float got, double want,
                  double mag) {
    const double tol = kRowRel * mag + 1e-30;
    if (!(std::fabs(static_cast<double>(got) - want) <= tol) && problems.size() < 8) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s[%lld, %lld] = %.9g, expected %.9g (tolerance %.3g)", what,
                      static_cast<long long>(r), static_cast<long long>(j), static_cast<double>(got), want, tol);
        problems.push_back(buf);
    }
}

// A rows x cols matrix with leading dimension ld (the gap holding the sentinel), sized (rows - 1) * ld + cols so that
// the end of the last row touches the guard page.
struct RowMatrix {
    int64_t rows, cols, ld;
    Guarded g;
    RowMatrix(int64_t r, int64_t c, int64_t l)
        : rows(r), cols(c), ld(l), g(static_cast<size_t>((r - 1) * l + c) * sizeof(float), 0) {}
    size_t size() const { return static_cast<size_t>((rows - 1) * ld + cols); }
    float* p() const { return g.as<float>(); }
    float& at(int64_t r, int64_t j) const { return p()[r * ld + j]; }
    // Every element: gen(r, j) in the columns, the sentinel in the gap.
    template <class Gen> void fill(Gen&& gen) {
        for (size_t i = 0; i < size(); ++i) {
            const auto r = static_cast<int64_t>(i) / ld, j = static_cast<int64_t>(i) % ld;
            p()[i] = j < cols ? gen(r, j) : gap_value();
        }
    }
    void check_gap(std::vector<std::string>& problems, const char* what) const {
        for (size_t i = 0; i < size(); ++i)
            if (static_cast<int64_t>(i) % ld >= cols && !is_gap(p()[i]) && problems.size() < 8)
                problems.push_back(std::string(what) + ": gap element " + std::to_string(i) + " was written");
    }
};

float nan_f() { return std::numeric_limits<float>::quiet_NaN(); }

// How a case is launched: through the launcher, or directly with a 3-block grid of 32 threads (rows and columns
// strided).
enum class Launch { Launcher, SmallGrid };

int64_t kept_cols(int64_t r, int64_t cols, int64_t period) {
    return period <= 0 ? cols : std::min(cols, r % period + (cols - period) + 1);
}

void softmax_case(int64_t rows, int64_t cols, int64_t ld, int64_t period, bool in_place, float scale, Launch how) {
    RowMatrix x(rows, cols, ld), yb(rows, cols, ld);
    std::uniform_real_distribution<double> uni(-4.0, 4.0);
    x.fill([&](int64_t, int64_t) { return static_cast<float>(uni(g_rng)); });
    yb.fill([&](int64_t, int64_t) { return nan_f(); });
    const std::vector<float> x0(x.p(), x.p() + x.size());
    float* y = in_place ? x.p() : yb.p();
    std::vector<std::string> problems;
    const sw::SoftmaxRows a{x.p(), y, rows, cols, ld, scale, period};
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_softmax(a, nullptr), problems);
    } else {
        expect_launch(sw::cuda::launch_kernel(sw::cuda::softmax_kernel, dim3(3), dim3(32), nullptr, a.x, a.y, a.rows,
                                              a.cols, a.ld, a.scale, a.causal_period), problems);
    }
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t kept = kept_cols(r, cols, period);
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < kept; ++j) mx = std::max(mx, static_cast<double>(scale) * x0[r * ld + j]);
        for (int64_t j = 0; j < kept; ++j) sum += std::exp(static_cast<double>(scale) * x0[r * ld + j] - mx);
        for (int64_t j = 0; j < cols; ++j) {
            const float got = y[r * ld + j];
            if (j >= kept) {
                if (got != 0.0f && problems.size() < 8)
                    problems.push_back("y[" + std::to_string(r) + ", " + std::to_string(j) + "] (masked) = " +
                                       std::to_string(got) + ", expected 0");
                continue;
            }
            const double want = std::exp(static_cast<double>(scale) * x0[r * ld + j] - mx) / sum;
            expect_close(problems, "y", r, j, got, want, want);
        }
    }
    if (in_place) {
        x.check_gap(problems, "y = x");
    } else {
        yb.check_gap(problems, "y");
        if (std::memcmp(x0.data(), x.p(), x.size() * sizeof(float)) != 0) problems.push_back("x was written");
    }
    char what[200];
    std::snprintf(what, sizeof what, "softmax %lldx%lld ld=%lld causal_period=%lld scale=%g%s%s",
                  static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(ld),
                  static_cast<long long>(period), scale, in_place ? " in place (y = x)" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void softmax_backward_case(int64_t rows, int64_t cols, int64_t ld, bool in_place, float scale, Launch how) {
    RowMatrix y(rows, cols, ld), dy(rows, cols, ld), dxb(rows, cols, ld);
    std::uniform_real_distribution<double> uni(-1.0, 1.0), pos(0.0, 1.0);
    // y: a softmax-like row, its last quarter 0 (masked columns, whose dx must be 0).
    y.fill([&](int64_t, int64_t j) {
        return j >= cols - cols / 4 && cols > 1 ? 0.0f : static_cast<float>(pos(g_rng));
    });
    dy.fill([&](int64_t, int64_t) { return static_cast<float>(uni(g_rng)); });
    dxb.fill([&](int64_t, int64_t) { return nan_f(); });
    const std::vector<float> y0(y.p(), y.p() + y.size()), dy0(dy.p(), dy.p() + dy.size());
    float* dx = in_place ? dy.p() : dxb.p();
    std::vector<std::string> problems;
    const sw::SoftmaxBackwardRows a{y.p(), dy.p(), dx, rows, cols, ld, scale};
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_softmax_backward(a, nullptr), problems);
    } else {
        expect_launch(sw::cuda::launch_kernel(sw::cuda::softmax_backward_kernel, dim3(3), dim3(32), nullptr, a.y, a.dy,
                                              a.dx, a.rows, a.cols, a.ld, a.scale), problems);
    }
    for (int64_t r = 0; r < rows; ++r) {
        double dot = 0, dot_mag = 0;
        for (int64_t j = 0; j < cols; ++j) {
            dot += static_cast<double>(dy0[r * ld + j]) * y0[r * ld + j];
            dot_mag += std::fabs(static_cast<double>(dy0[r * ld + j]) * y0[r * ld + j]);
        }
        for (int64_t j = 0; j < cols; ++j) {
            const double yv = y0[r * ld + j], dyv = dy0[r * ld + j];
            expect_close(problems, "dx", r, j, dx[r * ld + j], scale * yv * (dyv - dot),
                         std::fabs(scale * yv) * (std::fabs(dyv) + dot_mag));
        }
    }
    (in_place ? dy : dxb).check_gap(problems, in_place ? "dx = dy" : "dx");
    if (std::memcmp(y0.data(), y.p(), y.size() * sizeof(float)) != 0) problems.push_back("y was written");
    if (!in_place && std::memcmp(dy0.data(), dy.p(), dy.size() * sizeof(float)) != 0)
        problems.push_back("dy was written");
    char what[200];
    std::snprintf(what, sizeof what, "softmax_backward %lldx%lld ld=%lld scale=%g%s%s", static_cast<long long>(rows),
                  static_cast<long long>(cols), static_cast<long long>(ld), scale, in_place ? " in place (dx = dy)" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void check_softmax() {
    struct S { int64_t rows, cols, ld, period; };
    // cols = 1; cols not a multiple of 32; ld > cols; no mask, a causal mask with cols > T (several heads stacked) and
    // with cols = T; rows with more columns than the block has threads (512).
    const S shapes[] = {{1, 1, 1, 0},     {3, 1, 2, 1},     {5, 37, 40, 0},   {6, 37, 37, 3},   {14, 20, 23, 7},
                        {18, 9, 11, 9},   {8, 300, 301, 8}, {3, 1100, 1103, 0}, {4, 1100, 1100, 2}};
    int variant = 0;
    for (const S& s : shapes)
        for (bool in_place : {false, true}) {
            const float scale = (++variant % 2) ? 0.125f * static_cast<float>(variant % 7 + 1) : -1.75f;
            softmax_case(s.rows, s.cols, s.ld, s.period, in_place, scale, Launch::Launcher);
            if (s.period == 0) softmax_backward_case(s.rows, s.cols, s.ld, in_place, scale, Launch::Launcher);
        }
    softmax_backward_case(6, 37, 40, false, 0.5f, Launch::Launcher);
    softmax_backward_case(3, 300, 300, true, -2.0f, Launch::Launcher);
    softmax_case(10, 70, 75, 5, true, 0.7f, Launch::SmallGrid);
    softmax_case(10, 70, 70, 0, false, 1.3f, Launch::SmallGrid);
    softmax_backward_case(10, 70, 75, true, 0.7f, Launch::SmallGrid);
}

// ---- norm
struct NormData {
    std::vector<float> x, gamma, beta;
};

void norm_case(sw_norm_kind kind, int64_t rows, int64_t cols, bool gamma_on, bool beta_on, bool stats_on, bool in_place,
               Launch how) {
    const size_t n = static_cast<size_t>(rows * cols);
    Guarded gx(n * sizeof(float), 0), gy(n * sizeof(float), 0), gg(static_cast<size_t>(cols) * sizeof(float), 0),
        gb(static_cast<size_t>(cols) * sizeof(float), 0), gs(static_cast<size_t>(2 * rows) * sizeof(float), 0);
    std::uniform_real_distribution<double> uni(-1.0, 1.0), around1(0.5, 1.5);
    const double shift = kind == SW_NORM_LAYER ? 2.5 : 0.0; // a mean far from 0: the two-pass variance must handle it
    for (size_t i = 0; i < n; ++i) gx.as<float>()[i] = static_cast<float>(shift + uni(g_rng));
    for (int64_t j = 0; j < cols; ++j) {
        gg.as<float>()[j] = static_cast<float>(around1(g_rng));
        gb.as<float>()[j] = static_cast<float>(uni(g_rng));
    }
    for (size_t i = 0; i < n; ++i) gy.as<float>()[i] = nan_f();
    for (int64_t i = 0; i < 2 * rows; ++i) gs.as<float>()[i] = nan_f();
    const std::vector<float> x0(gx.as<float>(), gx.as<float>() + n);
    float* y = in_place ? gx.as<float>() : gy.as<float>();
    const float* gamma = gamma_on ? gg.as<float>() : nullptr;
    const float* beta = beta_on ? gb.as<float>() : nullptr;
    float* stats = stats_on ? gs.as<float>() : nullptr;
    const float eps = 1e-5f;
    std::vector<std::string> problems;
    const sw::NormRows a{kind, gx.as<float>(), gamma, beta, y, stats, rows, cols, eps};
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_norm(a, nullptr), problems);
    } else {
        expect_launch(sw::cuda::launch_kernel(sw::cuda::norm_kernel, dim3(3), dim3(32), nullptr,
                                              kind == SW_NORM_LAYER ? 1 : 0, a.x, a.gamma, a.beta, a.y, a.stats, a.rows,
                                              a.cols, a.eps), problems);
    }
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x0.data() + r * cols;
        double mean = 0, abs_mean = 0, sq = 0;
        if (kind == SW_NORM_LAYER) {
            for (int64_t j = 0; j < cols; ++j) mean += xr[j];
            mean /= static_cast<double>(cols);
        }
        for (int64_t j = 0; j < cols; ++j) {
            sq += (xr[j] - mean) * (xr[j] - mean);
            abs_mean += std::fabs(xr[j]);
        }
        abs_mean /= static_cast<double>(cols);
        const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(cols) + static_cast<double>(eps));
        if (stats) {
            if (kind == SW_NORM_RMS && stats[2 * r] != 0.0f && problems.size() < 8)
                problems.push_back("RMS stats mean of row " + std::to_string(r) + " = " + std::to_string(stats[2 * r]));
            expect_close(problems, "stats.mean", r, 0, stats[2 * r], mean, abs_mean);
            expect_close(problems, "stats.rstd", r, 1, stats[2 * r + 1], rstd, rstd);
        }
        for (int64_t j = 0; j < cols; ++j) {
            const double g = gamma ? gamma[j] : 1.0, b = beta ? beta[j] : 0.0;
            const double want = (xr[j] - mean) * rstd * g + b;
            const double mag = (std::fabs(xr[j] - mean) + std::fabs(mean)) * rstd * std::fabs(g) + std::fabs(b);
            expect_close(problems, "y", r, j, y[r * cols + j], want, mag);
        }
    }
    if (!in_place && std::memcmp(x0.data(), gx.as<float>(), n * sizeof(float)) != 0) problems.push_back("x was written");
    if (!stats_on)
        for (int64_t i = 0; i < 2 * rows; ++i)
            if (!std::isnan(gs.as<float>()[i]) && problems.size() < 8) problems.push_back("stats written although NULL");
    char what[200];
    std::snprintf(what, sizeof what, "norm %s %lldx%lld%s%s%s%s%s", kind == SW_NORM_LAYER ? "layer" : "rms",
                  static_cast<long long>(rows), static_cast<long long>(cols), gamma_on ? " +gamma" : "",
                  beta_on ? " +beta" : "", stats_on ? " +stats" : "", in_place ? " in place (y = x)" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

// params: 0 none, 1 dgamma only, 2 dgamma and dbeta (dgamma only for RMS), 3 dbeta only (LAYER).
void norm_backward_case(sw_norm_kind kind, int64_t rows, int64_t cols, bool gamma_on, int params, bool accumulate,
                        bool in_place, Launch how) {
    const bool layer = kind == SW_NORM_LAYER;
    const size_t n = static_cast<size_t>(rows * cols), vb = static_cast<size_t>(cols) * sizeof(float);
    Guarded gx(n * sizeof(float), 0), gdy(n * sizeof(float), 0), gdx(n * sizeof(float), 0), gg(vb, 0), gdg(vb, 0),
        gdb(vb, 0), gs(static_cast<size_t>(2 * rows) * sizeof(float), 0);
    std::uniform_real_distribution<double> uni(-1.0, 1.0), around1(0.5, 1.5);
    for (size_t i = 0; i < n; ++i) {
        gx.as<float>()[i] = static_cast<float>((layer ? 1.5 : 0.0) + uni(g_rng));
        gdy.as<float>()[i] = static_cast<float>(uni(g_rng));
        gdx.as<float>()[i] = nan_f();
    }
    for (int64_t j = 0; j < cols; ++j) {
        gg.as<float>()[j] = static_cast<float>(around1(g_rng));
        gdg.as<float>()[j] = accumulate ? static_cast<float>(uni(g_rng)) : nan_f();
        gdb.as<float>()[j] = accumulate ? static_cast<float>(uni(g_rng)) : nan_f();
    }
    // The forward's statistics (fp32), computed here in double.
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = gx.as<float>() + r * cols;
        double mean = 0, sq = 0;
        if (layer) {
            for (int64_t j = 0; j < cols; ++j) mean += xr[j];
            mean /= static_cast<double>(cols);
        }
        for (int64_t j = 0; j < cols; ++j) sq += (xr[j] - mean) * (xr[j] - mean);
        gs.as<float>()[2 * r] = static_cast<float>(mean);
        gs.as<float>()[2 * r + 1] = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(cols) + 1e-5));
    }
    const std::vector<float> x0(gx.as<float>(), gx.as<float>() + n), dy0(gdy.as<float>(), gdy.as<float>() + n);
    const std::vector<float> dg0(gdg.as<float>(), gdg.as<float>() + cols), db0(gdb.as<float>(), gdb.as<float>() + cols);
    const float* gamma = gamma_on ? gg.as<float>() : nullptr;
    const float* st = gs.as<float>();
    float* dx = in_place ? gdy.as<float>() : gdx.as<float>();
    float* dgamma = params == 1 || params == 2 ? gdg.as<float>() : nullptr;
    float* dbeta = layer && (params == 2 || params == 3) ? gdb.as<float>() : nullptr;
    std::vector<std::string> problems;
    const sw::NormBackwardRows a{kind, gx.as<float>(), gamma, st, gdy.as<float>(), dx, dgamma, dbeta, rows, cols, accumulate};
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_norm_backward(a, nullptr), problems);
    } else {
        // The launcher's order (parameter gradients, then dx), each kernel on a small grid.
        if (dgamma || dbeta)
            expect_launch(sw::cuda::launch_kernel(sw::cuda::norm_backward_param_kernel, dim3(2), dim3(32), nullptr, a.x,
                                                  a.stats, a.dy, a.dgamma, a.dbeta, a.rows, a.cols, accumulate ? 1 : 0),
                          problems);
        expect_launch(sw::cuda::launch_kernel(sw::cuda::norm_backward_dx_kernel, dim3(3), dim3(32), nullptr, layer ? 1 : 0,
                                              a.x, a.gamma, a.stats, a.dy, a.dx, a.rows, a.cols), problems);
    }
    std::vector<double> sg(static_cast<size_t>(cols), 0.0), sb(static_cast<size_t>(cols), 0.0),
        sg_mag(static_cast<size_t>(cols), 0.0), sb_mag(static_cast<size_t>(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
        const double m = st[2 * r], rstd = st[2 * r + 1];
        double mg = 0, mgx = 0, mg_mag = 0, mgx_mag = 0;
        for (int64_t j = 0; j < cols; ++j) {
            const double d = dy0[r * cols + j], g = d * (gamma ? gamma[j] : 1.0), xhat = (x0[r * cols + j] - m) * rstd;
            mg += g;
            mgx += g * xhat;
            mg_mag += std::fabs(g);
            mgx_mag += std::fabs(g * xhat);
            sg[j] += d * xhat;
            sb[j] += d;
            sg_mag[j] += std::fabs(d * xhat);
            sb_mag[j] += std::fabs(d);
        }
        mg = layer ? mg / static_cast<double>(cols) : 0.0;
        mg_mag = layer ? mg_mag / static_cast<double>(cols) : 0.0;
        mgx /= static_cast<double>(cols);
        mgx_mag /= static_cast<double>(cols);
        for (int64_t j = 0; j < cols; ++j) {
            const double g = dy0[r * cols + j] * (gamma ? gamma[j] : 1.0), xhat = (x0[r * cols + j] - m) * rstd;
            const double want = rstd * (g - mg - xhat * mgx);
            const double mag = rstd * (std::fabs(g) + mg_mag + (std::fabs(xhat) + std::fabs(m) * rstd) * mgx_mag +
                                       std::fabs(x0[r * cols + j]) * rstd * mgx_mag);
            expect_close(problems, "dx", r, j, dx[r * cols + j], want, mag);
        }
    }
    for (int64_t j = 0; j < cols; ++j) {
        if (dgamma)
            expect_close(problems, "dgamma", 0, j, dgamma[j], sg[j] + (accumulate ? dg0[j] : 0.0),
                         sg_mag[j] + (accumulate ? std::fabs(dg0[j]) : 0.0));
        else if (__float_as_uint(gdg.as<float>()[j]) != __float_as_uint(dg0[j]) && problems.size() < 8)
            problems.push_back("dgamma written although NULL");
        if (dbeta)
            expect_close(problems, "dbeta", 0, j, dbeta[j], sb[j] + (accumulate ? db0[j] : 0.0),
                         sb_mag[j] + (accumulate ? std::fabs(db0[j]) : 0.0));
        else if (__float_as_uint(gdb.as<float>()[j]) != __float_as_uint(db0[j]) && problems.size() < 8)
            problems.push_back("dbeta written although NULL");
    }
    if (std::memcmp(x0.data(), gx.as<float>(), n * sizeof(float)) != 0) problems.push_back("x was written");
    if (!in_place && std::memcmp(dy0.data(), gdy.as<float>(), n * sizeof(float)) != 0) problems.push_back("dy was written");
    char what[220];
    std::snprintf(what, sizeof what, "norm_backward %s %lldx%lld%s%s%s%s%s%s", layer ? "layer" : "rms",
                  static_cast<long long>(rows), static_cast<long long>(cols), gamma_on ? " +gamma" : "",
                  dgamma ? " +dgamma" : "", dbeta ? " +dbeta" : "", (dgamma || dbeta) && accumulate ? " accumulate" : "",
                  in_place ? " in place (dx = dy)" : "", how == Launch::SmallGrid ? " (small grids, direct)" : "");
    report(problems.empty(), what, problems);
}

void check_norm() {
    struct S { int64_t rows, cols; };
    const S shapes[] = {{1, 1}, {3, 5}, {5, 37}, {3, 300}, {2, 1100}, {70, 3}};
    int variant = 0;
    for (const S& s : shapes)
        for (sw_norm_kind kind : {SW_NORM_LAYER, SW_NORM_RMS})
            for (bool gamma_on : {false, true})
                for (bool in_place : {false, true}) {
                    ++variant;
                    for (bool beta_on : {false, true}) {
                        if (beta_on && kind == SW_NORM_RMS) continue;
                        norm_case(kind, s.rows, s.cols, gamma_on, beta_on, (variant + beta_on) % 3 != 0, in_place,
                                  Launch::Launcher);
                    }
                    // Parameter gradients: none; dgamma overwritten; dgamma and dbeta (LAYER) overwritten and
                    // accumulated; dgamma accumulated (RMS) or dbeta alone (LAYER).
                    const bool layer = kind == SW_NORM_LAYER;
                    norm_backward_case(kind, s.rows, s.cols, gamma_on, 0, false, in_place, Launch::Launcher);
                    norm_backward_case(kind, s.rows, s.cols, gamma_on, 1, false, in_place, Launch::Launcher);
                    norm_backward_case(kind, s.rows, s.cols, gamma_on, layer ? 3 : 1, variant % 2 != 0 || !layer, in_place,
                                       Launch::Launcher);
                    if (layer) {
                        norm_backward_case(kind, s.rows, s.cols, gamma_on, 2, false, in_place, Launch::Launcher);
                        norm_backward_case(kind, s.rows, s.cols, gamma_on, 2, true, in_place, Launch::Launcher);
                    }
                }
    norm_case(SW_NORM_LAYER, 10, 70, true, true, true, true, Launch::SmallGrid);
    norm_case(SW_NORM_RMS, 10, 70, true, false, true, false, Launch::SmallGrid);
    norm_backward_case(SW_NORM_LAYER, 10, 70, true, 2, true, true, Launch::SmallGrid);
    norm_backward_case(SW_NORM_RMS, 10, 70, false, 2, false, true, Launch::SmallGrid);
}

// ------------------------------------------------------------------------------------------ activations, GLU, dropout,
// embedding, cross-entropy (ABI 7)
// Each launcher on fresh random data (and once launched directly on a small grid, so that the grid-stride loops run),
// outputs NaN-poisoned, every buffer against a guard page, inputs checked unchanged, in-place runs included. Float64
// references to a relative 1e-5 of the magnitudes involved, except where the kernels' results are exact: ReLU,
// dropout (the mask of sw::dropout_bits on the host, kept values x / keep rounded once), embedding (copies and zeros)
// and its backward (the fp32 sum in token order, also against a double sum), the partial max and target.
double act64(sw_activation act, double x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return x > 0.0 ? x : 0.0;
    case SW_ACTIVATION_SILU: return x / (1.0 + std::exp(-x));
    default: return gelu64(x);
    }
}
double act_grad64(sw_activation act, double x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return x > 0.0 ? 1.0 : 0.0;
    case SW_ACTIVATION_SILU: {
        const double s = 1.0 / (1.0 + std::exp(-x));
        return s * (1.0 + x * (1.0 - s));
    }
    default: return gelu_grad64(x);
    }
}
// The scale of the fp32 rounding errors of act(x) and act'(x) (cancellations included: 1 + tanh(u) and 1 - t^2 of GeLU
// lose the absolute error of tanhf, 1 - s of SiLU that of the sigmoid).
double act_mag(sw_activation act, double x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return std::fabs(x);
    case SW_ACTIVATION_SILU: return std::fabs(act64(act, x));
    default: return std::fabs(gelu64(x)) + 0.05 * std::fabs(x);
    }
}
double act_grad_mag(sw_activation act, double x) {
    switch (act) {
    case SW_ACTIVATION_RELU: return 1.0;
    case SW_ACTIVATION_SILU: return 1.0 + std::fabs(x);
    default: return 1.0 + 0.05 * std::fabs(x) * (1.0 + 0.134 * x * x);
    }
}
const char* act_name(sw_activation act) {
    return act == SW_ACTIVATION_RELU ? "relu" : act == SW_ACTIVATION_SILU ? "silu" : "gelu";
}

// Random inputs in [-6, 6]; with more than 8 elements the first ones are 0, -0 (ReLU's derivative there is 0), tiny
// and saturated values.
std::vector<float> activation_inputs(size_t count) {
    std::uniform_real_distribution<double> uni(-6.0, 6.0);
    const float special[] = {0.0f, -0.0f, 20.0f, -20.0f, 1e-3f, -1e-3f, 0.5f, -0.5f};
    std::vector<float> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = count > 8 && i < 8 ? special[i] : static_cast<float>(uni(g_rng));
    return v;
}

bool same_bits(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }
const float kZero = 0.0f;

void activation_case(sw_activation act, uint64_t count, bool backward, bool in_place, Launch how) {
    const size_t n = static_cast<size_t>(count), bytes = n * sizeof(float);
    Guarded gx(bytes, 0), gdy(bytes, 0), gout(bytes, 0);
    const std::vector<float> x0 = activation_inputs(n);
    std::vector<float> dy0(n);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    for (size_t i = 0; i < n; ++i) {
        gx.as<float>()[i] = x0[i];
        gdy.as<float>()[i] = dy0[i] = static_cast<float>(uni(g_rng));
        gout.as<float>()[i] = nan_f();
    }
    float* out = in_place ? (backward ? gdy.as<float>() : gx.as<float>()) : gout.as<float>();
    std::vector<std::string> problems;
    if (!backward) {
        const sw::ActivationArgs a{act, gx.as<float>(), out, count};
        if (how == Launch::Launcher) expect_launch(sw::cuda::launch_activation(a, nullptr), problems);
        else expect_launch(sw::cuda::launch_kernel(sw::cuda::activation_kernel, dim3(3), dim3(32), nullptr,
                                                   static_cast<int>(act), a.x, a.y, a.count), problems);
    } else {
        const sw::ActivationBackwardArgs a{act, gx.as<float>(), gdy.as<float>(), out, count};
        if (how == Launch::Launcher) expect_launch(sw::cuda::launch_activation_backward(a, nullptr), problems);
        else expect_launch(sw::cuda::launch_kernel(sw::cuda::activation_backward_kernel, dim3(3), dim3(32), nullptr,
                                                   static_cast<int>(act), a.x, a.dy, a.dx, a.count), problems);
    }
    for (size_t i = 0; i < n; ++i) {
        const double want = backward ? dy0[i] * act_grad64(act, x0[i]) : act64(act, x0[i]);
        const double mag = backward ? std::fabs(dy0[i]) * act_grad_mag(act, x0[i]) : act_mag(act, x0[i]);
        expect_close(problems, backward ? "dx" : "y", 0, static_cast<int64_t>(i), out[i], want, mag);
    }
    if ((backward || !in_place) && !same_bits(x0.data(), gx.as<float>(), n)) problems.push_back("x was written");
    if (!in_place && !same_bits(dy0.data(), gdy.as<float>(), n)) problems.push_back("dy was written");
    char what[160];
    std::snprintf(what, sizeof what, "activation%s %s count=%llu%s%s", backward ? "_backward" : "", act_name(act),
                  static_cast<unsigned long long>(count),
                  in_place ? (backward ? " in place (dx = dy)" : " in place (y = x)") : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void glu_case(sw_activation act, int64_t rows, int64_t cols, Launch how) {
    const size_t n = static_cast<size_t>(rows * cols);
    Guarded ggu(2 * n * sizeof(float), 0), gh(n * sizeof(float), 0);
    const std::vector<float> gates = activation_inputs(n);
    std::uniform_real_distribution<double> uni(-2.0, 2.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
            ggu.as<float>()[r * 2 * cols + j] = gates[static_cast<size_t>(r * cols + j)];
            ggu.as<float>()[r * 2 * cols + cols + j] = static_cast<float>(uni(g_rng));
        }
    for (size_t i = 0; i < n; ++i) gh.as<float>()[i] = nan_f();
    const std::vector<float> gu0(ggu.as<float>(), ggu.as<float>() + 2 * n);
    std::vector<std::string> problems;
    const sw::GluArgs a{act, ggu.as<float>(), gh.as<float>(), rows, cols};
    if (how == Launch::Launcher) expect_launch(sw::cuda::launch_glu(a, nullptr), problems);
    else expect_launch(sw::cuda::launch_kernel(sw::cuda::glu_kernel, dim3(3), dim3(32), nullptr, static_cast<int>(act), a.gu,
                                               a.h, a.rows, a.cols), problems);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
            const double gate = gu0[r * 2 * cols + j], up = gu0[r * 2 * cols + cols + j];
            const double want = act64(act, gate) * up;
            expect_close(problems, "h", r, j, gh.as<float>()[r * cols + j], want,
                         act_mag(act, gate) * std::fabs(up) + std::fabs(want));
        }
    if (!same_bits(gu0.data(), ggu.as<float>(), 2 * n)) problems.push_back("gu was written");
    char what[160];
    std::snprintf(what, sizeof what, "glu %s %lldx%lld%s", act_name(act), static_cast<long long>(rows),
                  static_cast<long long>(cols), how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void glu_backward_case(sw_activation act, int64_t rows, int64_t cols, bool in_place, Launch how) {
    const size_t n = static_cast<size_t>(rows * cols);
    Guarded ggu(2 * n * sizeof(float), 0), gdh(n * sizeof(float), 0), gdgu(2 * n * sizeof(float), 0);
    const std::vector<float> gates = activation_inputs(n);
    std::uniform_real_distribution<double> uni(-2.0, 2.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
            ggu.as<float>()[r * 2 * cols + j] = gates[static_cast<size_t>(r * cols + j)];
            ggu.as<float>()[r * 2 * cols + cols + j] = static_cast<float>(uni(g_rng));
            gdh.as<float>()[r * cols + j] = static_cast<float>(uni(g_rng));
        }
    for (size_t i = 0; i < 2 * n; ++i) gdgu.as<float>()[i] = nan_f();
    const std::vector<float> gu0(ggu.as<float>(), ggu.as<float>() + 2 * n), dh0(gdh.as<float>(), gdh.as<float>() + n);
    float* dgu = in_place ? ggu.as<float>() : gdgu.as<float>();
    std::vector<std::string> problems;
    const sw::GluBackwardArgs a{act, ggu.as<float>(), gdh.as<float>(), dgu, rows, cols};
    if (how == Launch::Launcher) expect_launch(sw::cuda::launch_glu_backward(a, nullptr), problems);
    else expect_launch(sw::cuda::launch_kernel(sw::cuda::glu_backward_kernel, dim3(3), dim3(32), nullptr,
                                               static_cast<int>(act), a.gu, a.dh, a.dgu, a.rows, a.cols), problems);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
            const double gate = gu0[r * 2 * cols + j], up = gu0[r * 2 * cols + cols + j], d = dh0[r * cols + j];
            const double dgate = d * up * act_grad64(act, gate), dup = d * act64(act, gate);
            expect_close(problems, "dgate", r, j, dgu[r * 2 * cols + j], dgate,
                         std::fabs(d * up) * act_grad_mag(act, gate) + std::fabs(dgate));
            expect_close(problems, "dup", r, j, dgu[r * 2 * cols + cols + j], dup,
                         std::fabs(d) * act_mag(act, gate) + std::fabs(dup));
        }
    if (!in_place && !same_bits(gu0.data(), ggu.as<float>(), 2 * n)) problems.push_back("gu was written");
    if (!same_bits(dh0.data(), gdh.as<float>(), n)) problems.push_back("dh was written");
    char what[160];
    std::snprintf(what, sizeof what, "glu_backward %s %lldx%lld%s%s", act_name(act), static_cast<long long>(rows),
                  static_cast<long long>(cols), in_place ? " in place (dgu = gu)" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void check_activations() {
    for (sw_activation act : {SW_ACTIVATION_GELU, SW_ACTIVATION_RELU, SW_ACTIVATION_SILU}) {
        for (uint64_t count : {uint64_t{1}, uint64_t{1000}})
            for (bool backward : {false, true})
                for (bool in_place : {false, true}) activation_case(act, count, backward, in_place, Launch::Launcher);
        activation_case(act, 700, false, true, Launch::SmallGrid);
        activation_case(act, 700, true, true, Launch::SmallGrid);
    }
    struct S { int64_t rows, cols; };
    const S shapes[] = {{1, 1}, {3, 5}, {4, 37}, {2, 300}};
    for (sw_activation act : {SW_ACTIVATION_SILU, SW_ACTIVATION_GELU, SW_ACTIVATION_RELU})
        for (const S& s : shapes) {
            glu_case(act, s.rows, s.cols, Launch::Launcher);
            for (bool in_place : {false, true}) glu_backward_case(act, s.rows, s.cols, in_place, Launch::Launcher);
        }
    glu_case(SW_ACTIVATION_SILU, 10, 70, Launch::SmallGrid);
    glu_backward_case(SW_ACTIVATION_SILU, 10, 70, true, Launch::SmallGrid);
    glu_backward_case(SW_ACTIVATION_GELU, 10, 70, false, Launch::SmallGrid);
}

// ---- dropout
// The threshold as core/api.cpp derives it from p.
uint32_t dropout_threshold(float p) { return static_cast<uint32_t>(std::ceil(static_cast<double>(p) * 16777216.0)); }

// Inputs never zero (a dropped element must be told from a kept one).
std::vector<float> dropout_inputs(size_t count) {
    std::uniform_real_distribution<double> mag(0.25, 4.0);
    std::bernoulli_distribution neg(0.5);
    std::vector<float> v(count);
    for (float& e : v) e = static_cast<float>(neg(g_rng) ? -mag(g_rng) : mag(g_rng));
    return v;
}

// Runs dropout over x0 (in place or into a fresh NaN-poisoned buffer) and compares every element bit for bit with the
// host's rule: kept when sw::dropout_bits(seed, counter + i) >= threshold, then x / keep in fp32, else +0. Returns the
// number of dropped elements.
size_t dropout_run(const std::vector<float>& x0, uint32_t threshold, float keep, uint64_t seed, uint64_t counter,
                   bool in_place, Launch how, std::vector<std::string>& problems, std::vector<float>* out = nullptr) {
    const size_t n = x0.size();
    Guarded gx(n * sizeof(float), 0), gy(n * sizeof(float), 0);
    std::memcpy(gx.as<float>(), x0.data(), n * sizeof(float));
    for (size_t i = 0; i < n; ++i) gy.as<float>()[i] = nan_f();
    float* y = in_place ? gx.as<float>() : gy.as<float>();
    const sw::DropoutArgs a{gx.as<float>(), y, n, threshold, keep, seed, counter};
    if (how == Launch::Launcher) expect_launch(sw::cuda::launch_dropout(a, nullptr), problems);
    else expect_launch(sw::cuda::launch_kernel(sw::cuda::dropout_kernel, dim3(3), dim3(32), nullptr, a.x, a.y, a.count,
                                               a.threshold, a.keep, a.seed, a.counter), problems);
    size_t dropped = 0;
    for (size_t i = 0; i < n; ++i) {
        const bool kept = sw::dropout_bits(seed, counter + i) >= threshold;
        const float want = kept ? x0[i] / keep : 0.0f;
        dropped += kept ? 0 : 1;
        if (!same_bits(&y[i], &want, 1) && problems.size() < 8) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "y[%zu] = %.9g, expected %.9g (%s, bits %u, threshold %u)", i,
                          static_cast<double>(y[i]), static_cast<double>(want), kept ? "kept" : "dropped",
                          sw::dropout_bits(seed, counter + i), threshold);
            problems.push_back(buf);
        }
    }
    if (!in_place && !same_bits(x0.data(), gx.as<float>(), n)) problems.push_back("x was written");
    if (out) out->assign(y, y + n);
    return dropped;
}

void dropout_case(float p, size_t count, bool in_place, Launch how) {
    const std::vector<float> x0 = dropout_inputs(count);
    const uint64_t seed = g_rng(), counter = g_rng();
    std::vector<std::string> problems;
    const size_t dropped = dropout_run(x0, dropout_threshold(p), 1.0f - p, seed, counter, in_place, how, problems);
    const double frac = static_cast<double>(dropped) / static_cast<double>(count);
    if (p == 0.0f && dropped != 0) problems.push_back("p = 0 dropped " + std::to_string(dropped) + " elements");
    // p = 0.3 over >= 2000 elements: the standard deviation of the fraction is <= 0.0103; 0.06 is about 6 of them.
    if (count >= 2000 && std::fabs(frac - p) > 0.06) problems.push_back("dropped fraction " + std::to_string(frac));
    char what[200];
    std::snprintf(what, sizeof what, "dropout p=%g count=%zu: mask = dropout_bits on the host, kept x/(1-p) exact, "
                  "dropped fraction %.3f%s%s", static_cast<double>(p), count, frac, in_place ? " in place (y = x)" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

// An element whose generator bits equal the threshold is kept (>=), and dropped by threshold + 1.
void dropout_boundary_case() {
    const std::vector<float> x0 = dropout_inputs(64);
    uint64_t seed = 0, counter = 0;
    uint32_t bits = 0;
    do {
        seed = g_rng();
        counter = g_rng();
        bits = sw::dropout_bits(seed, counter + 17);
    } while (bits == 0 || bits >= (1u << 24) - 1);
    std::vector<std::string> problems;
    for (uint32_t t : {bits, bits + 1}) {
        std::vector<float> y;
        dropout_run(x0, t, 0.75f, seed, counter, false, Launch::Launcher, problems, &y);
        // dropout_run compared with the host rule; element 17 on its own (the rule is what is under test here).
        const float want = t == bits ? x0[17] / 0.75f : 0.0f;
        if (!same_bits(&y[17], &want, 1))
            problems.push_back("threshold " + std::to_string(t) + " (element 17 has bits " + std::to_string(bits) +
                               "): y[17] = " + std::to_string(y[17]) + ", expected " + std::to_string(want));
    }
    report(problems.empty(), "dropout keeps an element whose bits equal the threshold, drops it at threshold + 1",
           problems);
}

// The range split into two calls (counter offset by the first call's count, pointers offset) gives the bits of one call.
void dropout_split_case(size_t count, size_t split, bool in_place) {
    const std::vector<float> x0 = dropout_inputs(count);
    const uint64_t seed = g_rng(), counter = g_rng();
    const float p = 0.3f, keep = 1.0f - p;
    const uint32_t threshold = dropout_threshold(p);
    std::vector<std::string> problems;
    Guarded gx(count * sizeof(float), 0), gone(count * sizeof(float), 0), gtwo(count * sizeof(float), 0);
    std::memcpy(gx.as<float>(), x0.data(), count * sizeof(float));
    for (size_t i = 0; i < count; ++i) gone.as<float>()[i] = gtwo.as<float>()[i] = nan_f();
    expect_launch(sw::cuda::launch_dropout(sw::DropoutArgs{gx.as<float>(), gone.as<float>(), count, threshold, keep, seed,
                                                           counter}, nullptr), problems);
    float* src = gx.as<float>();
    float* dst = gtwo.as<float>();
    if (in_place) {
        std::memcpy(dst, x0.data(), count * sizeof(float));
        src = dst;
    }
    expect_launch(sw::cuda::launch_dropout(sw::DropoutArgs{src, dst, split, threshold, keep, seed, counter}, nullptr),
                  problems);
    expect_launch(sw::cuda::launch_dropout(sw::DropoutArgs{src + split, dst + split, count - split, threshold, keep, seed,
                                                           counter + split}, nullptr), problems);
    for (size_t i = 0; i < count && problems.size() < 8; ++i)
        if (!same_bits(&gone.as<float>()[i], &dst[i], 1))
            problems.push_back("element " + std::to_string(i) + ": one call " + std::to_string(gone.as<float>()[i]) +
                               ", two calls " + std::to_string(dst[i]));
    size_t zeros = 0;
    for (size_t i = 0; i < count; ++i) zeros += gone.as<float>()[i] == 0.0f ? 1 : 0;
    if (zeros == 0 || zeros == count) problems.push_back("degenerate mask");
    report(problems.empty(), "dropout count=" + std::to_string(count) + " split at " + std::to_string(split) +
                                 " into two calls (counter + " + std::to_string(split) + ") = one call" +
                                 (in_place ? ", in place" : ""), problems);
}

void check_dropout() {
    for (bool in_place : {false, true}) {
        dropout_case(0.0f, 1, in_place, Launch::Launcher);
        dropout_case(0.0f, 3000, in_place, Launch::Launcher);
        dropout_case(0.3f, 1, in_place, Launch::Launcher);
        dropout_case(0.3f, 4000, in_place, Launch::Launcher);
    }
    dropout_case(0.5f, 2000, true, Launch::SmallGrid);
    dropout_case(0.9f, 257, false, Launch::Launcher);
    dropout_boundary_case();
    dropout_split_case(1000, 333, false);
    dropout_split_case(1000, 1, true);
    dropout_split_case(777, 512, true);
}

// ---- embedding
// Token ids of every kind for a shard [offset, offset + shard_rows) of a vocabulary of vocab rows: in the shard (its
// first and last row, and random ones, repeated), in other shards, negative, >= vocab.
std::vector<int32_t> token_ids(int64_t rows, int64_t shard_rows, int64_t offset, int64_t vocab) {
    std::vector<int32_t> ids(static_cast<size_t>(rows));
    std::uniform_int_distribution<int64_t> any(0, vocab - 1);
    for (int64_t r = 0; r < rows; ++r) {
        int64_t id = 0;
        switch (r % 8) {
        case 0: id = shard_rows > 0 ? offset : any(g_rng); break;                  // first row of the shard (repeated)
        case 1: id = shard_rows > 0 ? offset + shard_rows - 1 : any(g_rng); break; // last row (repeated)
        case 2: case 5:
            id = shard_rows > 0 ? offset + std::uniform_int_distribution<int64_t>(0, shard_rows - 1)(g_rng) : any(g_rng);
            break;
        case 3: id = offset > 0 ? offset - 1 : offset + shard_rows; break;         // the neighbouring shards
        case 4: id = (r / 8) % 2 ? -1 : std::numeric_limits<int32_t>::min(); break;
        case 6: id = (r / 8) % 2 ? vocab : std::numeric_limits<int32_t>::max(); break;
        default: id = any(g_rng); break;
        }
        ids[static_cast<size_t>(r)] = static_cast<int32_t>(id);
    }
    return ids;
}

void embedding_case(int64_t shard_rows, int64_t offset, int64_t rows, int64_t cols, Launch how) {
    const int64_t vocab = offset + shard_rows + 40;
    const size_t tn = static_cast<size_t>(shard_rows * cols), on = static_cast<size_t>(rows * cols);
    Guarded gt(std::max<size_t>(tn, 1) * sizeof(float), 0), gi(static_cast<size_t>(rows) * sizeof(int32_t), 0),
        go(on * sizeof(float), 0);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    for (size_t i = 0; i < tn; ++i) gt.as<float>()[i] = static_cast<float>(uni(g_rng));
    const std::vector<int32_t> ids = token_ids(rows, shard_rows, offset, vocab);
    std::memcpy(gi.as<int32_t>(), ids.data(), ids.size() * sizeof(int32_t));
    for (size_t i = 0; i < on; ++i) go.as<float>()[i] = nan_f();
    const std::vector<float> t0(gt.as<float>(), gt.as<float>() + tn);
    // An empty shard passes no table at all: the kernel must not read it.
    const float* table = shard_rows > 0 ? gt.as<float>() : nullptr;
    std::vector<std::string> problems;
    const sw::EmbeddingArgs a{table, shard_rows, gi.as<int32_t>(), offset, go.as<float>(), rows, cols};
    if (how == Launch::Launcher) expect_launch(sw::cuda::launch_embedding(a, nullptr), problems);
    else expect_launch(sw::cuda::launch_kernel(sw::cuda::embedding_kernel, dim3(3), dim3(32), nullptr, a.table,
                                               a.shard_rows, a.ids, a.vocab_offset, a.out, a.rows, a.cols), problems);
    int64_t in_shard = 0;
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = static_cast<int64_t>(ids[static_cast<size_t>(r)]) - offset;
        const bool hit = row >= 0 && row < shard_rows;
        in_shard += hit ? 1 : 0;
        for (int64_t c = 0; c < cols; ++c) {
            const float want = hit ? t0[static_cast<size_t>(row * cols + c)] : 0.0f;
            if (!same_bits(&go.as<float>()[r * cols + c], &want, 1) && problems.size() < 8)
                problems.push_back("out[" + std::to_string(r) + ", " + std::to_string(c) + "] = " +
                                   std::to_string(go.as<float>()[r * cols + c]) + " (id " +
                                   std::to_string(ids[static_cast<size_t>(r)]) + "), expected " + std::to_string(want));
        }
    }
    if (!same_bits(t0.data(), gt.as<float>(), tn)) problems.push_back("table was written");
    if (std::memcmp(ids.data(), gi.as<int32_t>(), ids.size() * sizeof(int32_t)) != 0) problems.push_back("ids were written");
    char what[200];
    std::snprintf(what, sizeof what, "embedding shard [%lld, %lld) %lld tokens (%lld in the shard) x %lld%s",
                  static_cast<long long>(offset), static_cast<long long>(offset + shard_rows),
                  static_cast<long long>(rows), static_cast<long long>(in_shard), static_cast<long long>(cols),
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

void embedding_backward_case(int64_t shard_rows, int64_t offset, int64_t rows, int64_t cols, bool accumulate,
                             Launch how) {
    const int64_t vocab = offset + shard_rows + 40;
    const size_t tn = static_cast<size_t>(shard_rows * cols), dn = static_cast<size_t>(rows * cols);
    // An empty shard gets a 4-element dtable that must keep its sentinel.
    const size_t tsize = shard_rows > 0 ? tn : 4;
    Guarded gd(std::max<size_t>(dn, 1) * sizeof(float), 0), gi(std::max<int64_t>(rows, 1) * sizeof(int32_t), 0),
        gt(tsize * sizeof(float), 0);
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    for (size_t i = 0; i < dn; ++i) gd.as<float>()[i] = static_cast<float>(uni(g_rng));
    const std::vector<int32_t> ids = token_ids(rows, shard_rows, offset, vocab);
    std::memcpy(gi.as<int32_t>(), ids.data(), ids.size() * sizeof(int32_t));
    for (size_t i = 0; i < tsize; ++i)
        gt.as<float>()[i] = shard_rows == 0 ? gap_value() : accumulate ? static_cast<float>(uni(g_rng)) : nan_f();
    const std::vector<float> d0(gd.as<float>(), gd.as<float>() + dn), t0(gt.as<float>(), gt.as<float>() + tsize);
    std::vector<std::string> problems;
    const sw::EmbeddingBackwardArgs a{rows > 0 ? gd.as<float>() : nullptr, rows > 0 ? gi.as<int32_t>() : nullptr, offset,
                                      gt.as<float>(), shard_rows, rows, cols, accumulate};
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_embedding_backward(a, nullptr), problems);
    } else { // the launcher's order on small grids: clear, then the column threads (several columns each)
        if (!accumulate)
            expect_launch(sw::cuda::launch_kernel(sw::cuda::zero_kernel, dim3(2), dim3(32), nullptr, a.dtable,
                                                  static_cast<uint64_t>(tn)), problems);
        expect_launch(sw::cuda::launch_kernel(sw::cuda::embedding_backward_kernel, dim3(2), dim3(32), nullptr, a.dout,
                                              a.ids, a.vocab_offset, a.dtable, a.shard_rows, a.rows, a.cols), problems);
    }
    int64_t most = 0; // tokens on the most used row
    if (shard_rows == 0) {
        if (!same_bits(t0.data(), gt.as<float>(), tsize)) problems.push_back("dtable of an empty shard was written");
    } else {
        std::vector<int64_t> hits(static_cast<size_t>(shard_rows), 0);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = static_cast<int64_t>(ids[static_cast<size_t>(r)]) - offset;
            if (row >= 0 && row < shard_rows) most = std::max(most, ++hits[static_cast<size_t>(row)]);
        }
        for (int64_t row = 0; row < shard_rows; ++row)
            for (int64_t c = 0; c < cols; ++c) {
                const size_t e = static_cast<size_t>(row * cols + c);
                const float init = accumulate ? t0[e] : 0.0f;
                double sum = init, mag = std::fabs(init);
                float seq = init; // the fp32 sum in token order (the CPU backend's bits)
                for (int64_t r = 0; r < rows; ++r)
                    if (static_cast<int64_t>(ids[static_cast<size_t>(r)]) - offset == row) {
                        const float d = d0[static_cast<size_t>(r * cols + c)];
                        sum += d;
                        mag += std::fabs(d);
                        seq += d;
                    }
                const float got = gt.as<float>()[e];
                expect_close(problems, "dtable", row, c, got, sum, mag);
                if (!same_bits(&got, &seq, 1) && problems.size() < 8) {
                    char buf[160];
                    std::snprintf(buf, sizeof buf, "dtable[%lld, %lld] = %.9g is not the fp32 sum in token order %.9g",
                                  static_cast<long long>(row), static_cast<long long>(c), static_cast<double>(got),
                                  static_cast<double>(seq));
                    problems.push_back(buf);
                }
            }
    }
    if (!same_bits(d0.data(), gd.as<float>(), dn)) problems.push_back("dout was written");
    char what[220];
    std::snprintf(what, sizeof what, "embedding_backward shard [%lld, %lld) x %lld, %lld tokens (up to %lld on one row)%s%s",
                  static_cast<long long>(offset), static_cast<long long>(offset + shard_rows),
                  static_cast<long long>(cols), static_cast<long long>(rows), static_cast<long long>(most),
                  accumulate ? " accumulate" : " overwrite", how == Launch::SmallGrid ? " (small grids, direct)" : "");
    report(problems.empty(), what, problems);
}

void check_embedding() {
    embedding_case(7, 100, 20, 5, Launch::Launcher);
    embedding_case(3, 0, 9, 37, Launch::Launcher);
    embedding_case(1, 50, 3, 1, Launch::Launcher);
    embedding_case(0, 10, 6, 4, Launch::Launcher); // an empty shard: zeros
    embedding_case(5, 20, 12, 70, Launch::SmallGrid);
    for (bool accumulate : {false, true}) {
        embedding_backward_case(6, 30, 25, 5, accumulate, Launch::Launcher);
        embedding_backward_case(4, 0, 40, 37, accumulate, Launch::Launcher);
        embedding_backward_case(1, 7, 9, 3, accumulate, Launch::Launcher);
        embedding_backward_case(0, 10, 8, 4, accumulate, Launch::Launcher); // an empty shard: nothing written
        embedding_backward_case(5, 0, 0, 6, accumulate, Launch::Launcher);  // no token: cleared, or untouched
        embedding_backward_case(6, 30, 25, 70, accumulate, Launch::SmallGrid);
    }
}

// ---- cross-entropy
// Logits rows x vocab (leading dimension ld, a sentinel in the gap) split into shards of the given widths: partial on
// each shard's columns of the one matrix, combine over the parts, checked against a double log-sum-exp over the full
// row; then the backward of every shard, into a separate matrix (ld > cols) and in place on a copy of the shard.
// Row 0 has id -1 and row 1 id vocab (ignored: loss 0, gradient 0); rows % 3 == 2 have logits 20 times larger.
void cross_entropy_case(int64_t rows, int64_t vocab, int64_t ld, const std::vector<int64_t>& widths, Launch how) {
    const auto parts = static_cast<int32_t>(widths.size());
    std::vector<int64_t> offs(widths.size(), 0);
    for (size_t k = 1; k < widths.size(); ++k) offs[k] = offs[k - 1] + widths[k - 1];
    RowMatrix z(rows, vocab, ld);
    std::uniform_real_distribution<double> uni(-4.0, 4.0);
    z.fill([&](int64_t r, int64_t) { return static_cast<float>(uni(g_rng) * (r % 3 == 2 ? 20.0 : 1.0)); });
    const std::vector<float> z0(z.p(), z.p() + z.size());
    std::vector<int32_t> ids(static_cast<size_t>(rows));
    std::uniform_int_distribution<int64_t> any(0, vocab - 1);
    for (int64_t r = 0; r < rows; ++r) {
        int64_t id = any(g_rng);
        if (r == 0) id = -1;
        if (r == 1) id = vocab;
        if (r == 2) id = 0;
        if (r == 3) id = vocab - 1;
        if (r == 4 && parts > 1) id = offs[1];     // the first column of shard 1
        if (r == 5 && parts > 1) id = offs[1] - 1; // the last column of shard 0
        ids[static_cast<size_t>(r)] = static_cast<int32_t>(id);
    }
    Guarded gi(static_cast<size_t>(rows) * sizeof(int32_t), 0);
    std::memcpy(gi.as<int32_t>(), ids.data(), ids.size() * sizeof(int32_t));
    const size_t sn = static_cast<size_t>(parts) * static_cast<size_t>(rows) * 3;
    Guarded gs(sn * sizeof(float), 0), glse(static_cast<size_t>(rows) * sizeof(float), 0),
        gloss(static_cast<size_t>(rows) * sizeof(float), 0);
    for (size_t i = 0; i < sn; ++i) gs.as<float>()[i] = nan_f();
    for (int64_t r = 0; r < rows; ++r) glse.as<float>()[r] = gloss.as<float>()[r] = nan_f();
    const char* how_text = how == Launch::SmallGrid ? " (small grids, direct)" : "";
    std::string shards;
    for (int64_t w : widths) shards += (shards.empty() ? "" : "+") + std::to_string(w);

    // partial, per shard
    std::vector<std::string> problems;
    for (int32_t k = 0; k < parts; ++k) {
        const size_t ku = static_cast<size_t>(k);
        float* st = gs.as<float>() + ku * static_cast<size_t>(rows) * 3;
        const sw::CrossEntropyPartialArgs a{z.p() + offs[ku], rows, widths[ku], ld, gi.as<int32_t>(), offs[ku], st};
        if (how == Launch::Launcher) expect_launch(sw::cuda::launch_cross_entropy_partial(a, nullptr), problems);
        else expect_launch(sw::cuda::launch_kernel(sw::cuda::cross_entropy_partial_kernel, dim3(3), dim3(32), nullptr,
                                                   a.logits, a.rows, a.cols, a.ld, a.ids, a.vocab_offset, a.stats),
                           problems);
        for (int64_t r = 0; r < rows; ++r) {
            const float* zr = z0.data() + r * ld + offs[ku];
            float mx = -INFINITY;
            for (int64_t j = 0; j < widths[ku]; ++j) mx = std::max(mx, zr[j]);
            double sum = 0, mag = 0;
            for (int64_t j = 0; j < widths[ku]; ++j) {
                const double arg = static_cast<double>(zr[j]) - mx, e = std::exp(arg);
                sum += e;
                mag += e * (1.0 + std::fabs(arg)); // the fp32 argument's rounding, amplified by exp
            }
            const int64_t t = static_cast<int64_t>(ids[static_cast<size_t>(r)]) - offs[ku];
            const float target = t >= 0 && t < widths[ku] ? zr[t] : 0.0f;
            if (!same_bits(&st[3 * r], &mx, 1) && problems.size() < 8)
                problems.push_back("part " + std::to_string(k) + " row " + std::to_string(r) + ": max " +
                                   std::to_string(st[3 * r]) + ", expected " + std::to_string(mx));
            expect_close(problems, "sum", r, k, st[3 * r + 1], sum, mag);
            if (!same_bits(&st[3 * r + 2], &target, 1) && problems.size() < 8)
                problems.push_back("part " + std::to_string(k) + " row " + std::to_string(r) + " (id " +
                                   std::to_string(ids[static_cast<size_t>(r)]) + "): target " +
                                   std::to_string(st[3 * r + 2]) + ", expected " + std::to_string(target));
        }
    }
    if (!same_bits(z0.data(), z.p(), z.size())) problems.push_back("logits were written");
    char what[220];
    std::snprintf(what, sizeof what, "cross_entropy_partial %lld rows, vocab %lld = shards %s, ld=%lld%s",
                  static_cast<long long>(rows), static_cast<long long>(vocab), shards.c_str(), static_cast<long long>(ld),
                  how_text);
    report(problems.empty(), what, problems);

    // combine
    problems.clear();
    const std::vector<float> s0(gs.as<float>(), gs.as<float>() + sn);
    const sw::CrossEntropyCombineArgs c{gs.as<float>(), parts, rows, gi.as<int32_t>(), vocab, glse.as<float>(),
                                        gloss.as<float>()};
    if (how == Launch::Launcher) expect_launch(sw::cuda::launch_cross_entropy_combine(c, nullptr), problems);
    else expect_launch(sw::cuda::launch_kernel(sw::cuda::cross_entropy_combine_kernel, dim3(2), dim3(4), nullptr, c.stats,
                                               c.parts, c.rows, c.ids, c.vocab_size, c.lse, c.loss), problems);
    for (int64_t r = 0; r < rows; ++r) {
        const float* zr = z0.data() + r * ld;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, static_cast<double>(zr[j]));
        for (int64_t j = 0; j < vocab; ++j) sum += std::exp(zr[j] - mx);
        const double lse = mx + std::log(sum);
        expect_close(problems, "lse", r, 0, glse.as<float>()[r], lse, std::fabs(lse) + 1.0);
        const int32_t id = ids[static_cast<size_t>(r)];
        if (id < 0 || id >= vocab) {
            if (!same_bits(&gloss.as<float>()[r], &kZero, 1) && problems.size() < 8)
                problems.push_back("loss of ignored row " + std::to_string(r) + " (id " + std::to_string(id) + ") = " +
                                   std::to_string(gloss.as<float>()[r]));
            continue;
        }
        expect_close(problems, "loss", r, 0, gloss.as<float>()[r], lse - zr[id], std::fabs(lse) + std::fabs(zr[id]) + 1.0);
    }
    if (!same_bits(s0.data(), gs.as<float>(), sn)) problems.push_back("stats were written");
    std::snprintf(what, sizeof what, "cross_entropy_combine parts=%d %lld rows (2 ignored) vs a double log-sum-exp over "
                  "vocab %lld%s", parts, static_cast<long long>(rows), static_cast<long long>(vocab), how_text);
    report(problems.empty(), what, problems);

    // backward, per shard, into a separate matrix and in place
    const std::vector<float> lse0(glse.as<float>(), glse.as<float>() + rows);
    Guarded gdl(static_cast<size_t>(rows) * sizeof(float), 0);
    std::uniform_real_distribution<double> dl(0.25, 2.0);
    for (int64_t r = 0; r < rows; ++r) gdl.as<float>()[r] = static_cast<float>(r % 2 ? -dl(g_rng) : dl(g_rng));
    const std::vector<float> dloss0(gdl.as<float>(), gdl.as<float>() + rows);
    for (int32_t k = 0; k < parts; ++k)
        for (bool in_place : {false, true}) {
            problems.clear();
            const size_t ku = static_cast<size_t>(k);
            const int64_t w = widths[ku], off = offs[ku];
            // Not in place: the shard's columns of the logits matrix, dlogits a NaN-poisoned matrix of the same ld (the
            // kernel takes one ld for both) whose gap must keep its sentinel; in place: a copy of the shard with ld = w + 2.
            RowMatrix zc(rows, w, w + 2), out(rows, w, ld);
            zc.fill([&](int64_t r, int64_t j) { return z0[static_cast<size_t>(r * ld + off + j)]; });
            out.fill([&](int64_t, int64_t) { return nan_f(); });
            const float* logits = in_place ? zc.p() : z.p() + off;
            const int64_t lld = in_place ? zc.ld : ld;
            float* d = in_place ? zc.p() : out.p();
            const sw::CrossEntropyBackwardArgs b{logits, rows, w, lld, gi.as<int32_t>(), off, vocab, glse.as<float>(),
                                                 gdl.as<float>(), d};
            if (how == Launch::Launcher) expect_launch(sw::cuda::launch_cross_entropy_backward(b, nullptr), problems);
            else expect_launch(sw::cuda::launch_kernel(sw::cuda::cross_entropy_backward_kernel, dim3(3), dim3(32), nullptr,
                                                       b.logits, b.rows, b.cols, b.ld, b.ids, b.vocab_offset, b.vocab_size,
                                                       b.lse, b.dloss, b.dlogits), problems);
            for (int64_t r = 0; r < rows; ++r) {
                const int32_t id = ids[static_cast<size_t>(r)];
                const bool ignored = id < 0 || id >= vocab;
                for (int64_t j = 0; j < w; ++j) {
                    const float got = d[r * lld + j];
                    if (ignored) {
                        if (!same_bits(&got, &kZero, 1) && problems.size() < 8)
                            problems.push_back("dlogits[" + std::to_string(r) + ", " + std::to_string(j) +
                                               "] of an ignored row = " + std::to_string(got));
                        continue;
                    }
                    const double zv = z0[static_cast<size_t>(r * ld + off + j)], p = std::exp(zv - lse0[static_cast<size_t>(r)]);
                    const double hit = off + j == id ? 1.0 : 0.0, g = dloss0[static_cast<size_t>(r)];
                    expect_close(problems, "dlogits", r, j, got, g * (p - hit),
                                 std::fabs(g) * (p * (1.0 + std::fabs(zv - lse0[static_cast<size_t>(r)])) + hit + 1e-30));
                }
            }
            if (in_place) {
                zc.check_gap(problems, "dlogits = logits");
            } else {
                out.check_gap(problems, "dlogits");
                if (!same_bits(z0.data(), z.p(), z.size())) problems.push_back("logits were written");
            }
            if (!same_bits(lse0.data(), glse.as<float>(), static_cast<size_t>(rows))) problems.push_back("lse was written");
            if (!same_bits(dloss0.data(), gdl.as<float>(), static_cast<size_t>(rows))) problems.push_back("dloss was written");
            std::snprintf(what, sizeof what, "cross_entropy_backward shard %d of %s (columns %lld..%lld) %lld rows ld=%lld%s%s",
                          k, shards.c_str(), static_cast<long long>(off), static_cast<long long>(off + w - 1),
                          static_cast<long long>(rows), static_cast<long long>(lld), in_place ? " in place" : "", how_text);
            report(problems.empty(), what, problems);
        }
}

void check_cross_entropy() {
    cross_entropy_case(8, 45, 48, {45}, Launch::Launcher);
    cross_entropy_case(9, 100, 103, {40, 33, 27}, Launch::Launcher);
    cross_entropy_case(6, 1200, 1200, {1100, 1, 99}, Launch::Launcher);
    cross_entropy_case(10, 150, 153, {70, 80}, Launch::SmallGrid);
}

// ---- TP-invariant cross-entropy statistics (sw_cross_entropy_partial_tree, ABI 8)
// cross_entropy_partial_tree_kernel through its launcher and directly with a 3-block grid of 32 threads (rows strided,
// the leaves taken 32 at a time), on fresh random logits (never 0; rows % 3 == 2 20 times larger), with `parts`
// gathered blocks whose maxima put the row's maximum in block r % parts (row 1: 0.5 above it, another shard's logit)
// and whose sums and targets are NaN (unread); the last row of a NaN case has a NaN maximum (M and S NaN). Checked:
//  - bit for bit against a host reference of the same arithmetic: M the maximum of the maxima, each leaf summed from +0
//    in column order in fp32 with expf (the kernel's; on this emulation the host's, so the comparison is exact: on a
//    GPU its expf may differ by an ulp or two from the host's, which this cannot show), the leaves by sw::tree::sum;
//    the target logit; include_max 0 and 1; and, bit for bit, the CPU backend's loop (cpu/row_ops.cpp);
//  - S against a float64 sum of exp to a relative 2e-5;
//  - TP invariance: the columns cut into sw::tree::nodes(leaves, p) for p = 2, 4 (empty nodes: cols = 0, logits
//    null), one launch per node (include_max on node 0 only), the p outputs summed element-wise by sw::tree::sum over
//    p: [M, S, t] equal the unsplit launch's bits;
//  - out poisoned (NaN) before each launch, the inputs unwritten, the launcher refusing a malformed description.
void cross_entropy_tree_case(int64_t rows, int64_t cols, int64_t leaf, int32_t parts, int64_t vocab_offset, bool nan_row,
                             Launch how) {
    const int64_t ld = cols + 3;
    RowMatrix z(rows, ld, ld); // whole rows (the sentinel past cols), so that an empty shard still has a matrix
    std::uniform_real_distribution<double> uni(-1.0, 1.0);
    z.fill([&](int64_t r, int64_t j) {
        if (j >= cols) return gap_value();
        double v = 0;
        while (v == 0) v = uni(g_rng);
        return static_cast<float>(v * (r % 3 == 2 ? 160.0 : 8.0));
    });
    const std::vector<float> z0(z.p(), z.p() + z.size());
    const size_t gn = static_cast<size_t>(parts) * static_cast<size_t>(rows) * 3, on = static_cast<size_t>(rows) * 3;
    Guarded gg(gn * sizeof(float), 0), gi(static_cast<size_t>(rows) * sizeof(int32_t), 0);
    float* g = gg.as<float>();
    int32_t* ids = gi.as<int32_t>();
    std::uniform_int_distribution<int64_t> any(-1, cols);
    for (int64_t r = 0; r < rows; ++r) {
        float mx = cols == 0 ? 3.25f : -INFINITY;
        for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, z0[static_cast<size_t>(r * ld + j)]);
        if (r == 1) mx += 0.5f;
        for (int32_t k = 0; k < parts; ++k) {
            float* b = g + (k * rows + r) * 3;
            b[0] = k == r % parts ? mx : mx - 1.0f - static_cast<float>(4.0 * (uni(g_rng) + 1.0));
            b[1] = b[2] = nan_f();
        }
        if (nan_row && r == rows - 1) g[((r + 1) % parts * rows + r) * 3] = nan_f();
        int64_t id = vocab_offset + any(g_rng);
        if (r % 5 == 0) id = vocab_offset;
        if (r % 5 == 1) id = vocab_offset + cols - 1;
        if (r % 5 == 2) id = vocab_offset + cols;
        ids[r] = static_cast<int32_t>(id);
    }
    const std::vector<float> g0(g, g + gn);
    const std::vector<int32_t> ids0(ids, ids + rows);
    Guarded go(on * sizeof(float), 0), gp(4 * on * sizeof(float), 0);
    const char* how_text = how == Launch::SmallGrid ? " (small grids, direct)" : "";
    auto launch = [&](const sw::CrossEntropyPartialTreeArgs& a, std::vector<std::string>& problems) {
        for (int64_t i = 0; i < 3 * a.rows; ++i) a.out[i] = nan_f();
        if (how == Launch::Launcher) expect_launch(sw::cuda::launch_cross_entropy_partial_tree(a, nullptr), problems);
        else expect_launch(sw::cuda::launch_kernel(sw::cuda::cross_entropy_partial_tree_kernel, dim3(3), dim3(32), nullptr,
                                                   a.logits, a.rows, a.cols, a.ld, a.ids, a.vocab_offset, a.gathered,
                                                   a.parts, a.leaf, a.include_max ? 1 : 0, a.out), problems);
    };
    // The reference: [include_max ? M : 0, S, t] of columns [c0, c1) (the node's vocab_offset: vocab_offset + c0).
    auto reference = [&](int64_t c0, int64_t c1, bool include_max, std::vector<float>& out) {
        out.assign(on, 0.0f);
        const int64_t n = c1 == c0 ? 0 : (c1 - c0 - 1) / leaf + 1;
        std::vector<float> leaves(static_cast<size_t>(std::max<int64_t>(n, 1)));
        for (int64_t r = 0; r < rows; ++r) {
            float mx = -INFINITY;
            for (int32_t k = 0; k < parts; ++k) {
                const float v = g0[static_cast<size_t>((k * rows + r) * 3)];
                if (std::isnan(v)) { mx = v; break; }
                mx = std::max(mx, v);
            }
            const float* zr = z0.data() + r * ld + c0;
            for (int64_t l = 0; l < n; ++l) {
                float acc = 0.0f;
                for (int64_t j = l * leaf; j < std::min(c1 - c0, (l + 1) * leaf); ++j) acc = acc + std::exp(zr[j] - mx);
                leaves[static_cast<size_t>(l)] = acc;
            }
            const int64_t t = static_cast<int64_t>(ids0[static_cast<size_t>(r)]) - (vocab_offset + c0);
            out[static_cast<size_t>(3 * r)] = include_max ? mx : 0.0f;
            out[static_cast<size_t>(3 * r + 1)] = n > 0 ? sw::tree::sum(leaves.data(), n, [](float a, float b) { return a + b; }) : 0.0f;
            out[static_cast<size_t>(3 * r + 2)] = t >= 0 && t < c1 - c0 ? zr[t] : 0.0f;
        }
    };
    auto compare = [&](const float* got, const std::vector<float>& want, const char* against,
                       std::vector<std::string>& problems) {
        for (size_t i = 0; i < on; ++i)
            if (!same_bits(&got[i], &want[i], 1) && problems.size() < 8) {
                char buf[200];
                std::snprintf(buf, sizeof buf, "out[%zu] (row %zu, %s) = %.9g (0x%08x), %s %.9g (0x%08x)", i, i / 3,
                              i % 3 == 0 ? "M" : i % 3 == 1 ? "S" : "t", static_cast<double>(got[i]),
                              __float_as_uint(got[i]), against, static_cast<double>(want[i]), __float_as_uint(want[i]));
                problems.push_back(buf);
            }
    };
    std::string what_base = "cross_entropy_partial_tree " + std::to_string(rows) + " rows x " + std::to_string(cols) +
                            " cols, leaf " + std::to_string(leaf) + ", parts " + std::to_string(parts) +
                            (nan_row ? " (a NaN maximum)" : "");

    // unsplit, include_max 0 and 1
    std::vector<float> want, unsplit;
    for (bool include_max : {false, true}) {
        std::vector<std::string> problems;
        const sw::CrossEntropyPartialTreeArgs a{cols > 0 ? z.p() : nullptr, rows, cols, ld, ids, vocab_offset, g, parts,
                                                leaf, include_max, go.as<float>()};
        launch(a, problems);
        const float* got = go.as<float>();
        reference(0, cols, include_max, want);
        compare(got, want, "expected (host reference)", problems);
        std::vector<float> cpu(on, nan_f());
        sw::CrossEntropyPartialTreeArgs c = a;
        c.out = cpu.data();
        sw::cpu::cross_entropy_partial_tree_rows(c, 0, rows);
        compare(got, cpu, "CPU backend", problems);
        for (int64_t r = 0; r < rows; ++r) {
            float m = -INFINITY;
            for (int32_t k = 0; k < parts; ++k) m = std::max(m, g0[static_cast<size_t>((k * rows + r) * 3)]);
            double s = 0;
            for (int64_t j = 0; j < cols; ++j) s += std::exp(static_cast<double>(z0[static_cast<size_t>(r * ld + j)]) - m);
            if (!(nan_row && r == rows - 1)) expect_close(problems, "S vs float64", r, 0, got[3 * r + 1], s, 2.0 * s);
        }
        if (!same_bits(z0.data(), z.p(), z.size())) problems.push_back("logits were written");
        if (!same_bits(g0.data(), g, gn)) problems.push_back("gathered was written");
        if (include_max) unsplit.assign(got, got + on);
        report(problems.empty(), what_base + (include_max ? ", include_max" : ", no max") + how_text, problems);
    }

    // the tree's nodes, p = 2 and 4, against the unsplit launch
    const int64_t n = cols == 0 ? 0 : (cols - 1) / leaf + 1;
    for (int p : {2, 4}) {
        std::vector<std::string> problems;
        const std::vector<int64_t> first = sw::tree::nodes(n, p);
        std::string split;
        for (int k = 0; k < p; ++k) {
            const int64_t c0 = std::min(cols, first[static_cast<size_t>(k)] * leaf);
            const int64_t c1 = std::min(cols, first[static_cast<size_t>(k) + 1] * leaf);
            split += (k ? "+" : "") + std::to_string(c1 - c0);
            float* out = gp.as<float>() + static_cast<size_t>(k) * on;
            const sw::CrossEntropyPartialTreeArgs a{c1 > c0 ? z.p() + c0 : nullptr, rows, c1 - c0, ld, ids,
                                                    vocab_offset + c0, g, parts, leaf, k == 0, out};
            launch(a, problems);
            reference(c0, c1, k == 0, want);
            compare(out, want, "expected (node reference)", problems);
        }
        std::vector<float> sum(on);
        for (size_t i = 0; i < on; ++i) {
            float x[4];
            for (int k = 0; k < p; ++k) x[k] = gp.as<float>()[static_cast<size_t>(k) * on + i];
            sum[i] = sw::tree::sum(x, p, [](float a, float b) { return a + b; });
        }
        compare(sum.data(), unsplit, "unsplit", problems);
        report(problems.empty(), what_base + ": the tree sum of p=" + std::to_string(p) + " nodes (" + split +
                                     " columns) = the unsplit bits" + how_text, problems);
    }
}

void check_cross_entropy_tree() {
    cross_entropy_tree_case(9, 1000, 7, 3, 100, false, Launch::Launcher); // 143 leaves, the last of 6 columns
    cross_entropy_tree_case(9, 1000, 7, 3, 100, false, Launch::SmallGrid);
    cross_entropy_tree_case(4, 3000, 1, 2, 0, false, Launch::Launcher);   // 3000 leaves: 6 chunks of 512
    cross_entropy_tree_case(6, 1024, 64, 4, 5, false, Launch::Launcher);  // 16 full leaves
    cross_entropy_tree_case(5, 20, 8, 3, 40, false, Launch::Launcher);    // 3 leaves: p = 4 has an empty node
    cross_entropy_tree_case(5, 20, 8, 3, 40, false, Launch::SmallGrid);
    cross_entropy_tree_case(4, 50, 500, 1, 7, false, Launch::Launcher);   // leaf > cols: one leaf
    cross_entropy_tree_case(6, 0, 16, 2, 30, false, Launch::Launcher);    // an empty shard
    cross_entropy_tree_case(8, 300, 16, 3, 0, true, Launch::Launcher);    // a NaN maximum
    cross_entropy_tree_case(8, 300, 16, 3, 0, true, Launch::SmallGrid);

    std::vector<std::string> problems;
    float dummy[6] = {};
    int32_t id = 0;
    const sw::CrossEntropyPartialTreeArgs ok{dummy, 1, 1, 1, &id, 0, dummy, 1, 1, true, dummy + 3};
    for (int bad = 0; bad < 5; ++bad) {
        sw::CrossEntropyPartialTreeArgs a = ok;
        if (bad == 0) a.rows = 0;
        if (bad == 1) a.cols = -1;
        if (bad == 2) a.ld = 0;
        if (bad == 3) a.parts = 0;
        if (bad == 4) a.leaf = 0;
        if (sw::cuda::launch_cross_entropy_partial_tree(a, nullptr) != cudaErrorInvalidValue)
            problems.push_back("malformed description " + std::to_string(bad) + " launched");
        for (auto& f : sw::emu::take_findings()) problems.push_back("emulator: " + f);
    }
    report(problems.empty(), "cross_entropy_partial_tree launcher refuses rows, cols, ld, parts, leaf out of range",
           problems);
}

// ------------------------------------------------------------------------------------------ optimizers (ABI 7)
// sgd_step, adamw_step, scale and sum_squares through their launchers (the element-wise ones also launched directly
// with a 3-block grid of 32 threads, so that the grid-stride loops run; sum_squares through both of its paths), on
// fresh random data, against two references each:
//  - the CPU backend's own loops (cpu/row_ops.cpp: sgd_range, adamw_range, scale_range, sum_squares_block added in
//    block order as backend_cpu.cpp does), compared BIT FOR BIT: the kernels compute the same fp32 (sum_squares:
//    double) operations in the same order, each rounded once, so any difference is a different formula, order or
//    rounding. (Here both sides are compiled by the host compiler, without FMA contraction; on a GPU the kernels' *_rn
//    intrinsics keep nvcc from contracting, which this emulation cannot show: cuda_check does on a device.)
//  - float64 references computed independently from the same inputs, to a relative 1e-6 of the magnitudes involved
//    (sum_squares: 1e-10, a double sum; scale: half an ulp of the element type, plus its rounding of the fp32 product
//    by the independent Format16 reference, bit for bit).
// State buffers (momentum, m, v) are compared as well; AdamW runs 3 consecutive steps (t = 1, 2, 3) on the same buffers
// with the bias corrections the core computes ((float)(1 - beta^t) in double). Every buffer ends at a guard page; the
// gradient must keep its bits; sum_squares' output has a neighbour that must keep its bits.
constexpr double kOptRel = 1e-6;

// Calls f(tag) with tag a value of the kernels' element type for t (float, F16, BF16).
template <class F>
cudaError_t by_type(sw_dtype t, F&& f) {
    switch (t) {
    case SW_DTYPE_F32: return f(float{});
    case SW_DTYPE_F16: return f(sw::cuda::F16{});
    case SW_DTYPE_BF16: return f(sw::cuda::BF16{});
    default: return cudaErrorInvalidValue;
    }
}

void expect_near(std::vector<std::string>& problems, const char* what, size_t i, double got, double want, double tol) {
    if (!(std::fabs(got - want) <= tol) && problems.size() < 8) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s[%zu] = %.17g, float64 reference %.17g (tolerance %.3g)", what, i, got, want, tol);
        problems.push_back(buf);
    }
}
void expect_same_floats(std::vector<std::string>& problems, const char* what, const float* got, const float* cpu,
                        size_t n) {
    for (size_t i = 0; i < n && problems.size() < 8; ++i)
        if (std::memcmp(got + i, cpu + i, sizeof(float)) != 0) {
            char buf[200];
            std::snprintf(buf, sizeof buf, "%s[%zu] = %.9g (0x%08x), CPU backend %.9g (0x%08x)", what, i,
                          static_cast<double>(got[i]), __float_as_uint(got[i]), static_cast<double>(cpu[i]),
                          __float_as_uint(cpu[i]));
            problems.push_back(buf);
        }
}

// n random gradient values of type t in [-r, r] (rounded to t), returned widened (exact).
std::vector<double> fill_random(sw_dtype t, void* p, size_t n, double r) {
    std::uniform_real_distribution<double> uni(-r, r);
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) {
        put(t, p, i, uni(g_rng));
        v[i] = get(t, p, i);
    }
    return v;
}

// ---- SGD
void sgd_case(sw_dtype t, uint64_t count, bool with_buf, float momentum, float wd, bool nesterov, Launch how) {
    const size_t n = static_cast<size_t>(count), es = dtype_size(t);
    Guarded gp(n * 4, 0), gg(n * es, 0), gb(n * 4, 0);
    std::uniform_real_distribution<double> uni(-2.0, 2.0), unb(-1.0, 1.0);
    std::vector<float> p0(n), b0(n);
    for (size_t i = 0; i < n; ++i) {
        gp.as<float>()[i] = p0[i] = static_cast<float>(uni(g_rng));
        gb.as<float>()[i] = b0[i] = static_cast<float>(unb(g_rng));
    }
    const std::vector<double> g = fill_random(t, gg.as<void>(), n, 1.0);
    const std::vector<char> g_bits(gg.as<char>(), gg.as<char>() + n * es);
    const float lr = 0.05f;
    const sw::SgdArgs a{t, gp.as<float>(), gg.as<void>(), with_buf ? gb.as<float>() : nullptr, count, lr, momentum, wd,
                        nesterov};
    std::vector<std::string> problems;
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_sgd_step(a, nullptr), problems);
    } else {
        expect_launch(by_type(t, [&](auto tag) {
            using T = decltype(tag);
            using S = typename sw::cuda::Storage<T>::type;
            return sw::cuda::launch_kernel(sw::cuda::sgd_kernel<T>, dim3(3), dim3(32), nullptr, a.param,
                                           static_cast<const S*>(a.grad), a.momentum_buf, a.count, a.lr, a.momentum,
                                           a.weight_decay, a.nesterov ? 1 : 0);
        }), problems);
    }
    // The CPU backend's loop on copies of the same inputs.
    std::vector<float> pc = p0, bc = b0;
    sw::SgdArgs c = a;
    c.param = pc.data();
    c.momentum_buf = with_buf ? bc.data() : nullptr;
    sw::cpu::sgd_range(c, 0, count);
    expect_same_floats(problems, "param", gp.as<float>(), pc.data(), n);
    if (with_buf) expect_same_floats(problems, "momentum_buf", gb.as<float>(), bc.data(), n);
    // float64: the formula, with the magnitudes of its terms for the tolerance.
    for (size_t i = 0; i < n; ++i) {
        const double p = p0[i];
        double gd = g[i] + static_cast<double>(wd) * p, gmag = std::fabs(g[i]) + wd * std::fabs(p);
        if (with_buf) {
            const double b = momentum * static_cast<double>(b0[i]) + gd;
            const double bmag = momentum * std::fabs(static_cast<double>(b0[i])) + gmag;
            expect_near(problems, "momentum_buf", i, gb.as<float>()[i], b, kOptRel * bmag + 1e-30);
            gd = nesterov ? gd + momentum * b : b;
            gmag = nesterov ? gmag + momentum * bmag : bmag;
        }
        expect_near(problems, "param", i, gp.as<float>()[i], p - lr * gd, kOptRel * (std::fabs(p) + lr * gmag) + 1e-30);
    }
    if (!with_buf && !same_bits(b0.data(), gb.as<float>(), n)) problems.push_back("the unused buffer was written");
    if (std::memcmp(g_bits.data(), gg.as<char>(), n * es) != 0) problems.push_back("grad was written");
    char mom[40] = "no momentum buffer", what[200];
    if (with_buf) std::snprintf(mom, sizeof mom, "momentum=%g", static_cast<double>(momentum));
    std::snprintf(what, sizeof what, "sgd_step grad %s count=%llu %s wd=%g%s%s: CPU bits, float64", name(t),
                  static_cast<unsigned long long>(count), mom, static_cast<double>(wd), nesterov ? " nesterov" : "",
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

// ---- AdamW: three consecutive steps on the same buffers.
void adamw_case(sw_dtype t, uint64_t count, float lr, float beta1, float beta2, float eps, float wd, bool zero_state,
                Launch how) {
    const size_t n = static_cast<size_t>(count), es = dtype_size(t);
    Guarded gp(n * 4, 0), gg(n * es, 0), gm(n * 4, 0), gv(n * 4, 0);
    std::uniform_real_distribution<double> uni(-2.0, 2.0), unm(-0.5, 0.5), unv(0.0, 0.5);
    std::vector<float> pc(n), mc(n), vc(n);                   // the CPU backend's state
    std::vector<double> pd(n), md(n), vd(n), pmag(n), mmag(n); // the float64 reference's, and magnitudes
    for (size_t i = 0; i < n; ++i) {
        gp.as<float>()[i] = pc[i] = static_cast<float>(uni(g_rng));
        gm.as<float>()[i] = mc[i] = zero_state ? 0.0f : static_cast<float>(unm(g_rng));
        gv.as<float>()[i] = vc[i] = zero_state ? 0.0f : static_cast<float>(unv(g_rng));
        pd[i] = pc[i];
        md[i] = mc[i];
        vd[i] = vc[i];
        pmag[i] = std::fabs(pd[i]);
        mmag[i] = std::fabs(md[i]);
    }
    std::vector<std::string> problems;
    for (int64_t step = 1; step <= 3; ++step) {
        const std::vector<double> g = fill_random(t, gg.as<void>(), n, 1.0); // a fresh gradient every step
        const std::vector<char> g_bits(gg.as<char>(), gg.as<char>() + n * es);
        // As the core computes them (core/api.cpp).
        const auto bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
        const auto bias2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
        const sw::AdamWArgs a{t, gp.as<float>(), gg.as<void>(), gm.as<float>(), gv.as<float>(), count, lr, beta1, beta2,
                              eps, wd, bias1, bias2};
        if (how == Launch::Launcher) {
            expect_launch(sw::cuda::launch_adamw_step(a, nullptr), problems);
        } else {
            expect_launch(by_type(t, [&](auto tag) {
                using T = decltype(tag);
                using S = typename sw::cuda::Storage<T>::type;
                return sw::cuda::launch_kernel(sw::cuda::adamw_kernel<T>, dim3(3), dim3(32), nullptr, a.param,
                                               static_cast<const S*>(a.grad), a.m, a.v, a.count, a.lr, a.beta1, a.beta2,
                                               a.eps, a.weight_decay, a.bias1, a.bias2);
            }), problems);
        }
        sw::AdamWArgs c = a;
        c.param = pc.data();
        c.m = mc.data();
        c.v = vc.data();
        sw::cpu::adamw_range(c, 0, count);
        const std::string s = " (step " + std::to_string(step) + ")";
        expect_same_floats(problems, ("param" + s).c_str(), gp.as<float>(), pc.data(), n);
        expect_same_floats(problems, ("m" + s).c_str(), gm.as<float>(), mc.data(), n);
        expect_same_floats(problems, ("v" + s).c_str(), gv.as<float>(), vc.data(), n);
        const double decay = 1.0 - static_cast<double>(lr) * wd;
        for (size_t i = 0; i < n; ++i) {
            md[i] = beta1 * md[i] + (1.0 - beta1) * g[i];
            mmag[i] = beta1 * mmag[i] + (1.0 - beta1) * std::fabs(g[i]);
            vd[i] = beta2 * vd[i] + (1.0 - beta2) * g[i] * g[i]; // no cancellation: its own magnitude
            const double denom = std::sqrt(vd[i] / bias2) + eps;
            pd[i] = pd[i] * decay - lr * (md[i] / bias1) / denom;
            pmag[i] = pmag[i] * decay + lr * ((mmag[i] / bias1) / denom + 1.0);
            expect_near(problems, ("m" + s).c_str(), i, gm.as<float>()[i], md[i], kOptRel * mmag[i] + 1e-30);
            expect_near(problems, ("v" + s).c_str(), i, gv.as<float>()[i], vd[i], kOptRel * vd[i] + 1e-30);
            expect_near(problems, ("param" + s).c_str(), i, gp.as<float>()[i], pd[i], kOptRel * pmag[i]);
        }
        if (std::memcmp(g_bits.data(), gg.as<char>(), n * es) != 0) problems.push_back("grad was written" + s);
    }
    char what[220];
    std::snprintf(what, sizeof what, "adamw_step grad %s count=%llu lr=%g betas=(%g, %g) eps=%g wd=%g %s, steps 1-3%s", name(t),
                  static_cast<unsigned long long>(count), static_cast<double>(lr), static_cast<double>(beta1),
                  static_cast<double>(beta2), static_cast<double>(eps), static_cast<double>(wd),
                  zero_state ? "zeroed m, v" : "random m, v", how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), std::string(what) + ": CPU bits, float64", problems);
}

// ---- scale
void scale_case(sw_dtype t, uint64_t count, float alpha, Launch how) {
    const size_t n = static_cast<size_t>(count), es = dtype_size(t);
    Guarded gx(n * es, 0);
    const std::vector<double> x0 = fill_random(t, gx.as<void>(), n, 100.0);
    std::vector<char> cpu(gx.as<char>(), gx.as<char>() + n * es);
    const sw::ScaleArgs a{t, gx.as<void>(), count, alpha};
    std::vector<std::string> problems;
    if (how == Launch::Launcher) {
        expect_launch(sw::cuda::launch_scale(a, nullptr), problems);
    } else {
        expect_launch(by_type(t, [&](auto tag) {
            using T = decltype(tag);
            using S = typename sw::cuda::Storage<T>::type;
            return sw::cuda::launch_kernel(sw::cuda::scale_kernel<T>, dim3(3), dim3(32), nullptr, static_cast<S*>(a.x),
                                           a.count, a.alpha);
        }), problems);
    }
    sw::ScaleArgs c = a;
    c.x = cpu.data();
    sw::cpu::scale_range(c, 0, count);
    const double half_ulp = t == SW_DTYPE_F32 ? 0x1p-24 : t == SW_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
    const double floor = t == SW_DTYPE_F16 ? 0x1p-25 : 0.0; // f16 subnormals are 2^-24 apart
    std::vector<char> want(es);
    for (size_t i = 0; i < n && problems.size() < 8; ++i) {
        if (std::memcmp(gx.as<char>() + i * es, cpu.data() + i * es, es) != 0)
            problems.push_back("x[" + std::to_string(i) + "] = " + bits_of(t, gx.as<void>(), i) + ", CPU backend " +
                               bits_of(t, cpu.data(), i));
        // The fp32 product (exact in double, then rounded once to float), rounded to t by the independent reference.
        put(t, want.data(), 0, static_cast<float>(x0[i] * static_cast<double>(alpha)));
        if (std::memcmp(gx.as<char>() + i * es, want.data(), es) != 0)
            problems.push_back("x[" + std::to_string(i) + "] = " + bits_of(t, gx.as<void>(), i) + ", reference " +
                               bits_of(t, want.data(), 0));
        const double exact = x0[i] * static_cast<double>(alpha);
        // at most half an ulp of t, plus half an fp32 ulp for the product's own rounding first
        expect_near(problems, "x", i, get(t, gx.as<void>(), i), exact, (half_ulp + 0x1p-24) * std::fabs(exact) + floor);
    }
    char what[160];
    std::snprintf(what, sizeof what, "scale %s count=%llu alpha=%g%s: CPU bits, fp32 product rounded once, float64",
                  name(t), static_cast<unsigned long long>(count), static_cast<double>(alpha),
                  how == Launch::SmallGrid ? " (3 blocks x 32 threads, direct)" : "");
    report(problems.empty(), what, problems);
}

// ---- sum_squares
// How a case runs: the launcher (which picks the one-block path up to 256 blocks, else the two-pass one), a path
// forced through sum_squares_as, or the one-block kernel launched directly with 32 threads (several rounds of blocks).
enum class SumPath { Launcher, OneBlock, TwoPass, OneBlock32 };
const char* sum_path_name(SumPath p) {
    switch (p) {
    case SumPath::Launcher: return "launcher";
    case SumPath::OneBlock: return "one-block path";
    case SumPath::TwoPass: return "two-pass path (scratch)";
    default: return "one-block kernel, 32 threads (direct)";
    }
}

// crafted: block 0 holds 1024 (square 2^20), blocks 1-3 each 2^-17 (square 2^-34, a quarter of an ulp of 2^20), the
// rest 0: in block order the small squares vanish one by one (2^20 exactly); in any order that adds them together
// first (reverse block order) they round the total up to 2^20 + 2^-32. Catches a wrong block order deterministically.
void sum_squares_case(sw_dtype t, uint64_t count, bool accumulate, SumPath path, bool crafted = false) {
    const size_t n = static_cast<size_t>(count), es = dtype_size(t);
    Guarded gx(std::max<size_t>(n, 1) * es, 0), gout(2 * sizeof(double), 0);
    std::vector<double> x0;
    if (crafted) {
        x0.assign(n, 0.0);
        x0[0] = 1024.0;
        for (size_t k = 1; k <= 3; ++k) x0[k * sw::kSumSquaresBlock + 17 * k] = 0x1p-17;
        for (size_t i = 0; i < n; ++i) put(t, gx.as<void>(), i, x0[i]);
    } else {
        x0 = fill_random(t, gx.as<void>(), n, 3.0);
    }
    const std::vector<char> x_bits(gx.as<char>(), gx.as<char>() + n * es);
    double* out = gout.as<double>() + 1;
    gout.as<double>()[0] = 12345.678; // the neighbour
    std::uniform_real_distribution<double> uni(1.0, 1000.0);
    const double old = accumulate ? uni(g_rng) : std::numeric_limits<double>::quiet_NaN(); // NaN: must not be read
    *out = old;
    const sw::SumSquaresArgs a{t, gx.as<void>(), count, out, accumulate};
    std::vector<std::string> problems;
    switch (path) {
    case SumPath::Launcher: expect_launch(sw::cuda::launch_sum_squares(a, nullptr), problems); break;
    case SumPath::OneBlock:
    case SumPath::TwoPass: {
        const auto p = path == SumPath::OneBlock ? sw::cuda::SumSquaresPath::OneBlock : sw::cuda::SumSquaresPath::TwoPass;
        expect_launch(by_type(t, [&](auto tag) { return sw::cuda::sum_squares_as<decltype(tag)>(a, p, nullptr); }),
                      problems);
        break;
    }
    case SumPath::OneBlock32: {
        const uint64_t blocks = (count + sw::kSumSquaresBlock - 1) / sw::kSumSquaresBlock;
        expect_launch(by_type(t, [&](auto tag) {
            using T = decltype(tag);
            using S = typename sw::cuda::Storage<T>::type;
            return sw::cuda::launch_kernel(sw::cuda::sum_squares_one_block_kernel<T>, dim3(1), dim3(32), nullptr,
                                           static_cast<const S*>(a.x), a.count, blocks, a.out, accumulate ? 1 : 0);
        }), problems);
        break;
    }
    }
    // The CPU backend's order: the blocks' sums (sum_squares_block), added in block order onto (accumulate ? old : 0).
    const uint64_t blocks = (count + sw::kSumSquaresBlock - 1) / sw::kSumSquaresBlock;
    double cpu = accumulate ? old : 0.0;
    for (uint64_t k = 0; k < blocks; ++k) cpu += sw::cpu::sum_squares_block(a, k);
    if (std::memcmp(out, &cpu, sizeof cpu) != 0) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "out = %.17g, CPU backend %.17g (bits differ)", *out, cpu);
        problems.push_back(buf);
    }
    // float64 (long double) reference, any order.
    long double exact = accumulate ? old : 0.0L;
    for (double v : x0) exact += static_cast<long double>(v) * v;
    expect_near(problems, "out", 0, *out, static_cast<double>(exact), 1e-10 * static_cast<double>(exact) + 1e-300);
    if (gout.as<double>()[0] != 12345.678) problems.push_back("the element before out was written");
    if (std::memcmp(x_bits.data(), gx.as<char>(), n * es) != 0) problems.push_back("x was written");
    char what[200];
    std::snprintf(what, sizeof what, "sum_squares %s count=%llu (%llu blocks)%s%s, %s: CPU bits, float64", name(t),
                  static_cast<unsigned long long>(count), static_cast<unsigned long long>(blocks),
                  accumulate ? " accumulate" : "", crafted ? " crafted order-sensitive data" : "", sum_path_name(path));
    report(problems.empty(), what, problems);
}

void check_optimizers() {
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16};
    for (sw_dtype t : types) {
        sgd_case(t, 1000, false, 0.0f, 0.01f, false, Launch::Launcher);  // plain SGD with weight decay
        sgd_case(t, 1000, true, 0.9f, 0.0f, false, Launch::Launcher);    // momentum
        sgd_case(t, 1000, true, 0.9f, 0.01f, true, Launch::Launcher);    // nesterov + weight decay
        sgd_case(t, 1, true, 0.5f, 0.1f, false, Launch::Launcher);
        sgd_case(t, 777, true, 0.8f, 0.05f, true, Launch::SmallGrid);
        sgd_case(t, 300, false, 0.0f, 0.0f, false, Launch::SmallGrid);

        adamw_case(t, 1000, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, true, Launch::Launcher);
        adamw_case(t, 1000, 3e-3f, 0.8f, 0.95f, 1e-6f, 0.1f, false, Launch::Launcher);
        adamw_case(t, 1, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f, true, Launch::Launcher);
        adamw_case(t, 500, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.01f, false, Launch::SmallGrid);

        scale_case(t, 1000, 1.0f / 3.0f, Launch::Launcher);
        scale_case(t, 1000, -7.25f, Launch::Launcher);
        scale_case(t, 999, 1e-3f, Launch::SmallGrid);

        const uint64_t B = sw::kSumSquaresBlock;
        for (uint64_t count : {uint64_t{0}, uint64_t{1}, B - 1, B, B + 1, 3 * B + 5})
            for (bool acc : {false, true})
                for (SumPath p : {SumPath::Launcher, SumPath::TwoPass}) sum_squares_case(t, count, acc, p);
        for (SumPath p : {SumPath::Launcher, SumPath::TwoPass, SumPath::OneBlock32})
            sum_squares_case(t, 4 * B, false, p, true);
        sum_squares_case(t, 33 * B + 7, true, SumPath::OneBlock32);
    }
    // Past 256 blocks the launcher takes the two-pass path; the one-block path then loops over rounds of blocks.
    const uint64_t big = 257 * sw::kSumSquaresBlock + 3;
    sum_squares_case(SW_DTYPE_F32, big, true, SumPath::Launcher);
    sum_squares_case(SW_DTYPE_BF16, big, false, SumPath::Launcher);
    sum_squares_case(SW_DTYPE_F16, big, true, SumPath::OneBlock);
    sum_squares_case(SW_DTYPE_F32, big, false, SumPath::OneBlock, true);
    sum_squares_case(SW_DTYPE_F32, big, false, SumPath::Launcher, true);
}

} // namespace

// ------------------------------------------------------------------------------------------ tree GEMM
// The TP-invariant tree GEMM (cuda/gemm_tree.cu, GemmProblem::k_leaf > 0) against a plain host reference of the same
// arithmetic, bit for bit: per leaf an fp32 fmaf chain from +0 in k order, the leaves summed by sw::tree::sum, then
// once alpha * T (beta == 0) or fmaf(alpha, T, beta * C), + bias, GeLU (the plugin's device function, compiled here
// for the host: the same function on both sides), rounded once to C's type.

// The walk the kernels use (dev::tree_merges_at, dev::tree_depth) against core/tree_reduction.h's tables.
void check_tree_order() {
    std::vector<std::string> problems;
    std::vector<int64_t> ns;
    for (int64_t n = 1; n <= 1100; ++n) ns.push_back(n);
    for (int64_t n : {4095, 4096, 4097, 32767, 32768, 32769, 100000}) ns.push_back(n);
    std::vector<int32_t> merges;
    for (int64_t n : ns) {
        sw::tree::merges(n, merges);
        for (int64_t l = 0; l < n; ++l)
            if (sw::cuda::dev::tree_merges_at(n, l) != merges[static_cast<size_t>(l)] && problems.size() < 6)
                problems.push_back("tree_merges_at(" + std::to_string(n) + ", " + std::to_string(l) + ") = " +
                                   std::to_string(sw::cuda::dev::tree_merges_at(n, l)) + ", expected " +
                                   std::to_string(merges[static_cast<size_t>(l)]));
        if (sw::cuda::dev::tree_depth(n) != sw::tree::depth(n) && problems.size() < 6)
            problems.push_back("tree_depth(" + std::to_string(n) + ") differs");
    }
    report(problems.empty(), "tree order: dev::tree_merges_at / tree_depth equal sw::tree::merges / depth", problems);
}

// The GEMM's element types: a = b, c (the bias has c's type).
struct TreeTypes {
    sw_dtype a, c;
};
const TreeTypes kTreeTypes[] = {{SW_DTYPE_F32, SW_DTYPE_F32},
                                {SW_DTYPE_F16, SW_DTYPE_F16},
                                {SW_DTYPE_BF16, SW_DTYPE_BF16},
                                {SW_DTYPE_F16, SW_DTYPE_F32},
                                {SW_DTYPE_BF16, SW_DTYPE_F32}};

// A value of type t, never zero: magnitude in [0.25, 2), either sign (exact in every type once rounded).
double nonzero_value() {
    std::uniform_real_distribution<double> mag(0.25, 2.0);
    return (g_rng() & 1u) ? mag(g_rng) : -mag(g_rng);
}

// The epilogue on the root T, in fp32 as the kernel: (alpha, beta, C's old value, the bias or none, GeLU).
float tree_epilogue(float root, float alpha, float beta, float c_old, const float* bias, bool gelu_on) {
    float v;
    if (beta == 0.0f) {
        v = alpha * root;
    } else {
        const float scaled = beta * c_old;
        v = std::fma(alpha, root, scaled);
    }
    if (bias) v = v + *bias;
    if (gelu_on) v = sw::cuda::dev::gelu(v);
    return v;
}

// op(A)[i][p] and op(B)[p][j] of a problem, widened exactly.
float op_a(const sw::GemmProblem& g, int64_t i, int64_t p) {
    return static_cast<float>(get(g.a_type, g.a, static_cast<size_t>(g.trans_a ? p * g.lda + i : i * g.lda + p)));
}
float op_b(const sw::GemmProblem& g, int64_t p, int64_t j) {
    return static_cast<float>(get(g.b_type, g.b, static_cast<size_t>(g.trans_b ? j * g.ldb + p : p * g.ldb + j)));
}

// The reference for element (i, j): the root of the tree over the leaves' fmaf chains.
float tree_root_reference(const sw::GemmProblem& g, int64_t i, int64_t j) {
    const int64_t n = g.k == 0 ? 0 : (g.k - 1) / g.k_leaf + 1;
    if (n == 0) return 0.0f;
    std::vector<float> leaves(static_cast<size_t>(n));
    for (int64_t l = 0; l < n; ++l) {
        float acc = 0.0f;
        for (int64_t p = l * g.k_leaf; p < std::min(g.k, (l + 1) * g.k_leaf); ++p)
            acc = std::fma(op_a(g, i, p), op_b(g, p, j), acc);
        leaves[static_cast<size_t>(l)] = acc;
    }
    return sw::tree::sum(leaves.data(), n, [](float x, float y) { return x + y; });
}

// Operands of one tree GEMM, each against a guard page; C keeps a copy of its contents before the run.
struct TreeOperands {
    std::unique_ptr<Guarded> a, b, c, bias;
    std::vector<char> c_before;
    sw::GemmProblem g;
};

// Random op(A) m x k and op(B) k x n (stored as trans_a / trans_b say, leading dimensions padded by 0..3), C m x ldc
// (random old values when beta != 0, else 0xFF poison: NaN, never to be read), bias of C's type or none.
TreeOperands make_tree_operands(int64_t m, int64_t n, int64_t k, int64_t leaf, TreeTypes ty, bool trans_a, bool trans_b,
                                float alpha, float beta, bool bias_on, bool gelu_on) {
    TreeOperands o;
    sw::GemmProblem& g = o.g;
    g.m = m;
    g.n = n;
    g.k = k;
    g.trans_a = trans_a;
    g.trans_b = trans_b;
    g.a_type = g.b_type = ty.a;
    g.c_type = g.bias_type = ty.c;
    g.alpha = alpha;
    g.beta = beta;
    g.epilogue = gelu_on ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
    g.k_leaf = leaf;
    std::uniform_int_distribution<int64_t> pad(0, 3);
    const size_t ea = dtype_size(ty.a), ec = dtype_size(ty.c);
    const int64_t a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    const int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    g.lda = std::max<int64_t>(1, a_cols + pad(g_rng));
    g.ldb = std::max<int64_t>(1, b_cols + pad(g_rng));
    g.ldc = n + pad(g_rng);
    const size_t na = static_cast<size_t>(std::max<int64_t>(1, a_rows * g.lda));
    const size_t nb = static_cast<size_t>(std::max<int64_t>(1, b_rows * g.ldb));
    const size_t nc = static_cast<size_t>(m * g.ldc);
    o.a = std::make_unique<Guarded>(na * ea, 0);
    o.b = std::make_unique<Guarded>(nb * ea, 0);
    o.c = std::make_unique<Guarded>(nc * ec, 0);
    for (size_t i = 0; i < na; ++i) put(ty.a, o.a->as<void>(), i, nonzero_value());
    for (size_t i = 0; i < nb; ++i) put(ty.a, o.b->as<void>(), i, nonzero_value());
    if (beta != 0.0f)
        for (size_t i = 0; i < nc; ++i) put(ty.c, o.c->as<void>(), i, nonzero_value());
    else
        std::memset(o.c->as<void>(), 0xFF, nc * ec);
    o.c_before.assign(o.c->as<char>(), o.c->as<char>() + nc * ec);
    g.a = o.a->as<void>();
    g.b = o.b->as<void>();
    g.c = o.c->as<void>();
    if (bias_on) {
        o.bias = std::make_unique<Guarded>(static_cast<size_t>(n) * ec, 0);
        for (int64_t j = 0; j < n; ++j) put(ty.c, o.bias->as<void>(), static_cast<size_t>(j), nonzero_value());
        g.bias = o.bias->as<void>();
    }
    return o;
}

// C after the run against want(i, j) (the expected fp32 value before rounding to C's type), bit for bit; the padding
// columns must hold what they held before.
template <class Want>
void compare_tree_c(const TreeOperands& o, Want&& want, std::vector<std::string>& problems) {
    const sw::GemmProblem& g = o.g;
    const size_t ec = dtype_size(g.c_type);
    std::vector<char> expect(ec);
    for (int64_t i = 0; i < g.m; ++i)
        for (int64_t j = 0; j < g.ldc; ++j) {
            const size_t e = static_cast<size_t>(i * g.ldc + j);
            const char* got = o.c->as<char>() + e * ec;
            if (j >= g.n) {
                if (std::memcmp(got, o.c_before.data() + e * ec, ec) != 0 && problems.size() < 6)
                    problems.push_back("padding C(" + std::to_string(i) + ", " + std::to_string(j) + ") written");
                continue;
            }
            put(g.c_type, expect.data(), 0, want(i, j)); // float -> C's type: one rounding to nearest even
            if (std::memcmp(got, expect.data(), ec) != 0 && problems.size() < 6)
                problems.push_back("C(" + std::to_string(i) + ", " + std::to_string(j) + ") = " + bits_of(g.c_type, got, 0) +
                                   ", expected " + bits_of(g.c_type, expect.data(), 0));
        }
}

float bias_at(const sw::GemmProblem& g, int64_t j) {
    return static_cast<float>(get(g.bias_type, g.bias, static_cast<size_t>(j)));
}
float c_old_at(const TreeOperands& o, int64_t i, int64_t j) {
    return static_cast<float>(get(o.g.c_type, o.c_before.data(), static_cast<size_t>(i * o.g.ldc + j)));
}

std::string tree_case_name(const sw::GemmProblem& g) {
    char buf[220];
    std::snprintf(buf, sizeof buf, "m=%lld n=%lld k=%lld leaf=%lld a=%s c=%s%s%s alpha=%g beta=%g%s%s",
                  static_cast<long long>(g.m), static_cast<long long>(g.n), static_cast<long long>(g.k),
                  static_cast<long long>(g.k_leaf), name(g.a_type), name(g.c_type), g.trans_a ? " A^T" : "",
                  g.trans_b ? " B^T" : "", g.alpha, g.beta, g.bias ? " +bias" : "", g.gelu() ? " +gelu" : "");
    return buf;
}

// (a) The kernel against the reference, every type combination, transposes, bias, GeLU, alpha, beta, ragged shapes.
void check_tree_gemm() {
    struct Shape { int64_t m, n, k, leaf; };
    const Shape shapes[] = {
        {1, 1, 0, 2},     {4, 70, 0, 8},    // k == 0: T = 0 through the epilogue (two column tiles)
        {3, 5, 1, 2},     {2, 3, 50, 64},   {17, 9, 7, 8},     // k < k_leaf: one leaf
        {5, 67, 128, 64}, {3, 2, 96, 8},    // k a multiple of k_leaf
        {33, 3, 200, 64}, {70, 66, 130, 8}, {65, 17, 37, 2},  // a shorter last leaf; leaves straddle the k slices
    };
    struct Epi { float alpha, beta; };
    const Epi epis[] = {{1.0f, 0.0f}, {-0.75f, 0.0f}, {1.5f, 0.5f}};
    int variant = 0;
    for (const Shape& sh : shapes)
        for (const TreeTypes& ty : kTreeTypes)
            for (int tr = 0; tr < 4; ++tr) {
                const int v = variant++ / 4; // the transposes cycle fastest; (bias, GeLU, alpha/beta): 12 combinations
                const bool bias_on = v % 2 == 1, gelu_on = (v / 2) % 2 == 1;
                const Epi ep = epis[(v / 4) % 3];
                TreeOperands o = make_tree_operands(sh.m, sh.n, sh.k, sh.leaf, ty, tr & 1, tr & 2, ep.alpha, ep.beta,
                                                    bias_on, gelu_on);
                const sw::GemmProblem& g = o.g;
                std::vector<std::string> problems;
                expect_launch(sw::cuda::launch_tree_gemm(g, nullptr), problems);
                compare_tree_c(o, [&](int64_t i, int64_t j) {
                    const float b = g.bias ? bias_at(g, j) : 0.0f;
                    return tree_epilogue(tree_root_reference(g, i, j), g.alpha, g.beta, c_old_at(o, i, j),
                                         g.bias ? &b : nullptr, g.gelu());
                }, problems);
                report(problems.empty(), "tree GEMM " + tree_case_name(g), problems);
            }
    // A deep tree (N = 35001 leaves: depth 17, the kernel's 64-slot stack) on a single tile.
    for (const TreeTypes& ty : {kTreeTypes[0], kTreeTypes[2]}) {
        TreeOperands o = make_tree_operands(1, 3, 70001, 2, ty, false, true, 0.5f, 0.25f, true, true);
        const sw::GemmProblem& g = o.g;
        std::vector<std::string> problems;
        expect_launch(sw::cuda::launch_tree_gemm(g, nullptr), problems);
        compare_tree_c(o, [&](int64_t i, int64_t j) {
            const float b = bias_at(g, j);
            return tree_epilogue(tree_root_reference(g, i, j), g.alpha, g.beta, c_old_at(o, i, j), &b, g.gelu());
        }, problems);
        report(problems.empty(), "tree GEMM (deep tree) " + tree_case_name(g), problems);
    }
    // Refused: an odd or non-positive leaf.
    {
        TreeOperands o = make_tree_operands(2, 2, 4, 2, kTreeTypes[0], false, false, 1.0f, 0.0f, false, false);
        sw::GemmProblem g = o.g;
        bool ok = true;
        for (int64_t bad : {0, -2, 3}) {
            g.k_leaf = bad;
            ok = ok && sw::cuda::launch_tree_gemm(g, nullptr) == cudaErrorInvalidValue;
        }
        (void)sw::emu::take_findings();
        report(ok, "tree GEMM refuses k_leaf 0, -2, 3 (cudaErrorInvalidValue)");
    }
}

// (b) TP invariance: for p = 2 and 4, rank r computes node r of the tree (sw::tree::nodes: leaves [s(r), s(r + 1)),
// k range [s(r) * leaf, min(k, s(r + 1) * leaf))) with alpha 1, beta 0, no bias, an fp32 C; the p partial results
// summed by sw::tree::sum over the ranks (SW_REDUCE_SUM_TREE) and put through the epilogue equal, bit for bit, the
// unsharded kernel's C.
void check_tree_gemm_invariance() {
    struct Case { int64_t m, n, k, leaf; };
    const Case cases[] = {
        {9, 13, 100, 8},  // N = 13, a shorter last leaf
        {5, 7, 24, 8},    // N = 3: with p = 4 one rank's node is empty (k = 0)
        {4, 4, 2, 2},     // N = 1: p - 1 empty nodes
        {3, 70, 300, 64}, // N = 5, two column tiles
        {66, 5, 1000, 2}, // N = 500, two row tiles
    };
    int variant = 0;
    for (const Case& cs : cases)
        for (int p : {2, 4})
            for (const TreeTypes& ty : kTreeTypes) {
                const int v = variant++;
                const bool trans_a = v % 2 == 1, trans_b = (v / 2) % 2 == 1;
                const bool bias_on = (v / 3) % 2 == 0, gelu_on = (v / 5) % 2 == 0;
                const float alpha = v % 3 == 0 ? 1.0f : -1.25f, beta = v % 4 == 1 ? 0.0f : 0.75f;
                TreeOperands full = make_tree_operands(cs.m, cs.n, cs.k, cs.leaf, ty, trans_a, trans_b, alpha, beta,
                                                       bias_on, gelu_on);
                const sw::GemmProblem& g = full.g;
                std::vector<std::string> problems;
                expect_launch(sw::cuda::launch_tree_gemm(g, nullptr), problems);
                // The ranks' partial products over their k ranges, into fp32 C's (poisoned first).
                const int64_t n_leaves = (cs.k - 1) / cs.leaf + 1;
                const std::vector<int64_t> first = sw::tree::nodes(n_leaves, p);
                std::vector<std::unique_ptr<Guarded>> parts;
                const size_t ea = dtype_size(ty.a);
                for (int r = 0; r < p; ++r) {
                    const int64_t k0 = std::min(cs.k, first[static_cast<size_t>(r)] * cs.leaf);
                    const int64_t k1 = std::min(cs.k, first[static_cast<size_t>(r) + 1] * cs.leaf);
                    parts.push_back(std::make_unique<Guarded>(static_cast<size_t>(cs.m * cs.n) * sizeof(float), 0));
                    std::memset(parts.back()->as<void>(), 0xFF, static_cast<size_t>(cs.m * cs.n) * sizeof(float));
                    sw::GemmProblem rg = g;
                    rg.k = k1 - k0;
                    rg.a = static_cast<const char*>(g.a) + static_cast<size_t>(g.trans_a ? k0 * g.lda : k0) * ea;
                    rg.b = static_cast<const char*>(g.b) + static_cast<size_t>(g.trans_b ? k0 : k0 * g.ldb) * ea;
                    rg.c = parts.back()->as<void>();
                    rg.ldc = cs.n;
                    rg.c_type = rg.bias_type = SW_DTYPE_F32;
                    rg.alpha = 1.0f;
                    rg.beta = 0.0f;
                    rg.bias = nullptr;
                    rg.epilogue = SW_EPILOGUE_NONE;
                    expect_launch(sw::cuda::launch_tree_gemm(rg, nullptr), problems);
                }
                compare_tree_c(full, [&](int64_t i, int64_t j) {
                    std::vector<float> x(static_cast<size_t>(p));
                    for (int r = 0; r < p; ++r)
                        x[static_cast<size_t>(r)] = parts[static_cast<size_t>(r)]->as<float>()[i * cs.n + j];
                    const float root = sw::tree::sum(x.data(), p, [](float l, float rr) { return l + rr; });
                    const float b = g.bias ? bias_at(g, j) : 0.0f;
                    return tree_epilogue(root, g.alpha, g.beta, c_old_at(full, i, j), g.bias ? &b : nullptr, g.gelu());
                }, problems);
                report(problems.empty(), "tree GEMM invariance p=" + std::to_string(p) + " " + tree_case_name(g), problems);
            }
}

int main() {
    check_emulated_conversions();
    check_copy_2d();
    check_reduce_sum(false);
    check_reduce_sum(true);
    check_convert();
    check_scale_bias_act();
    check_finish_f32();
    check_gelu_backward();
    check_wait_flag();
    check_training_kernels();
    check_softmax();
    check_norm();
    check_activations();
    check_dropout();
    check_embedding();
    check_cross_entropy();
    check_cross_entropy_tree();
    check_optimizers();
    check_tree_order();
    check_tree_gemm();
    check_tree_gemm_invariance();
    std::printf("kernels_emu_check: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
