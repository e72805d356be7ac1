// Checks of the CPU GEMM's TP-invariant tree reduction (GemmProblem::k_leaf > 0; sw_device_set_gemm_reduction), for
// every kernel this CPU runs and every operand path (fp32; bf16 / fp16 widened; bf16 pairs under avx512bf16), C in
// fp32 or the inputs' 16-bit type:
//  - composition, bit for bit: the tree GEMM equals its definition built from the library's default GEMM: each leaf
//    [l * L, (l + 1) * L) computed alone (alpha 1, beta 0: the kernel's own chain for that leaf), the leaves summed in
//    fp32 by sw::tree::sum, then alpha, beta, the bias and GeLU applied once and C rounded once. Shapes with k not a
//    multiple of L, k < L, k = 0, L > KC (several k blocks per leaf), L = 2; every transpose pair; alpha != 1,
//    beta != 0, bias, GeLU; C poisoned (beta 0: NaN, never read);
//  - invariance (the point of the mode): for p = 2, 4, 8 the k range cut into the tree's nodes (sw::tree::nodes), each
//    node's partial product computed as its own tree GEMM (alpha 1, no bias, fp32 C), the p partials summed by
//    sw::tree::sum and then alpha, beta, bias, GeLU: equal bit for bit to the unsharded GEMM, also for p > the number
//    of leaves (empty nodes add zeros);
//  - the determinism contract: a column block and a row block computed alone equal the same block of the full product;
//    1, 2 and 3 threads agree; gemm_grouped members equal gemm;
//  - accuracy: within the fp32 bound of a float64 reference (guards against a composition that is consistently wrong).
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check_internal.h"
#include "core/tree_reduction.h"
#include "cpu/gemm.h"
#include "cpu/gemm_convert.h"
#include "cpu/thread_pool.h"

using sw::GemmProblem;
using sw::cpu::Kernel;
using sw::cpu::ThreadPool;

namespace {

#define EXPECT CHECK

// Fresh data every run; the seed is printed (SW_SEED=... repeats a run).
uint64_t seed_of_run() {
    if (const char* e = std::getenv("SW_SEED")) return std::strtoull(e, nullptr, 10);
    return std::random_device{}();
}
const uint64_t g_seed = seed_of_run();
std::mt19937_64 rng(g_seed);

size_t esz(sw_dtype t) { return t == SW_DTYPE_F32 ? 4 : 2; }
float to_f(sw_dtype t, const char* p) {
    if (t == SW_DTYPE_F32) { float v; std::memcpy(&v, p, 4); return v; }
    uint16_t h; std::memcpy(&h, p, 2);
    return t == SW_DTYPE_BF16 ? sw::bf16_to_float(h) : sw::half_to_float(h);
}
void from_f(sw_dtype t, char* p, float v) {
    if (t == SW_DTYPE_F32) { std::memcpy(p, &v, 4); return; }
    const uint16_t h = t == SW_DTYPE_BF16 ? sw::float_to_bf16(v) : sw::float_to_half(v);
    std::memcpy(p, &h, 2);
}
std::vector<char> random_matrix(sw_dtype t, int64_t elems) {
    std::vector<char> m(static_cast<size_t>(std::max<int64_t>(elems, 1)) * esz(t));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < elems; ++i) {
        float v = u(rng);
        if (v == 0.0f) v = 0.5f;  // never zeros
        from_f(t, m.data() + i * esz(t), v);
    }
    return m;
}

struct Case {
    int64_t m, n, k, leaf;
    bool ta, tb;
    sw_dtype in, out;
    float alpha, beta;
    bool bias, gelu;
};

struct Operands {
    std::vector<char> a, b, c0, bias;
    int64_t lda, ldb, ldc;
};

Operands make_operands(const Case& c) {
    Operands o;
    o.lda = (c.ta ? c.m : c.k) + 3;
    o.ldb = (c.tb ? c.k : c.n) + 1;
    o.ldc = c.n + 2;
    o.a = random_matrix(c.in, (c.ta ? c.k : c.m) * o.lda);
    o.b = random_matrix(c.in, (c.tb ? c.n : c.k) * o.ldb);
    o.c0 = random_matrix(c.out, c.m * o.ldc);
    o.bias = random_matrix(c.out, c.n);
    return o;
}

// The problem over k range [k0, k0 + kn) of c (a pointer offset into A and B), writing C at c (ldc o.ldc).
GemmProblem problem(const Case& c, const Operands& o, int64_t k0, int64_t kn, void* cptr, sw_dtype ctype, float alpha,
                    float beta, bool bias, bool gelu, int64_t leaf) {
    GemmProblem p;
    p.m = c.m;
    p.n = c.n;
    p.k = kn;
    p.trans_a = c.ta;
    p.trans_b = c.tb;
    p.a_type = p.b_type = c.in;
    p.c_type = p.bias_type = ctype;
    p.alpha = alpha;
    p.beta = beta;
    const size_t e = esz(c.in);
    p.a = o.a.data() + static_cast<size_t>(c.ta ? k0 * o.lda : k0) * e;
    p.b = o.b.data() + static_cast<size_t>(c.tb ? k0 : k0 * o.ldb) * e;
    p.lda = o.lda;
    p.ldb = o.ldb;
    p.c = cptr;
    p.ldc = o.ldc;
    p.bias = bias ? o.bias.data() : nullptr;
    p.epilogue = gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
    p.k_leaf = leaf;
    return p;
}

// The final epilogue of the definition: v = alpha T (beta 0) or fma(alpha, T, beta C), + bias, GeLU, rounded to out.
std::vector<char> finish(const Case& c, const Operands& o, const std::vector<float>& t, Kernel kernel) {
    std::vector<char> out = o.c0;
    std::vector<float> row(static_cast<size_t>(c.n));
    for (int64_t i = 0; i < c.m; ++i) {
        for (int64_t j = 0; j < c.n; ++j) {
            const float tv = t[static_cast<size_t>(i * c.n + j)];
            float v = c.beta == 0.0f ? c.alpha * tv
                                     : std::fma(c.alpha, tv, c.beta * to_f(c.out, o.c0.data() + (i * o.ldc + j) * esz(c.out)));
            if (c.bias) v = v + to_f(c.out, o.bias.data() + j * esz(c.out));
            row[static_cast<size_t>(j)] = v;
        }
        if (c.gelu) sw::cpu::gelu(row.data(), row.data(), c.n, kernel);
        for (int64_t j = 0; j < c.n; ++j)
            from_f(c.out, out.data() + (i * o.ldc + j) * esz(c.out), row[static_cast<size_t>(j)]);
    }
    return out;
}

// alpha 1, beta 0, no bias, fp32 C: the raw product over [k0, k0 + kn) with the given reduction, m x n dense.
std::vector<float> raw(const Case& c, const Operands& o, int64_t k0, int64_t kn, int64_t leaf, Kernel kernel,
                       ThreadPool& pool) {
    std::vector<float> t(static_cast<size_t>(c.m * o.ldc), std::nanf(""));
    GemmProblem p = problem(c, o, k0, kn, t.data(), SW_DTYPE_F32, 1.0f, 0.0f, false, false, leaf);
    sw::cpu::gemm(p, kernel, pool);
    std::vector<float> d(static_cast<size_t>(c.m * c.n));
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < c.n; ++j) d[static_cast<size_t>(i * c.n + j)] = t[static_cast<size_t>(i * o.ldc + j)];
    return d;
}

std::vector<float> tree_combine(const std::vector<std::vector<float>>& parts) {
    const size_t count = parts.empty() ? 0 : parts[0].size();
    std::vector<float> out(count, 0.0f);
    std::vector<float> x(parts.size());
    for (size_t e = 0; e < count; ++e) {
        for (size_t q = 0; q < parts.size(); ++q) x[q] = parts[q][e];
        out[e] = sw::tree::sum(x.data(), static_cast<int64_t>(x.size()), [](float l, float r) { return l + r; });
    }
    return out;
}

// The tree GEMM of the whole case into a copy of C0 (NaN where beta == 0).
std::vector<char> run_tree(const Case& c, const Operands& o, Kernel kernel, ThreadPool& pool) {
    std::vector<char> out = o.c0;
    if (c.beta == 0.0f)
        for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(0xFF);
    GemmProblem p = problem(c, o, 0, c.k, out.data(), c.out, c.alpha, c.beta, c.bias, c.gelu, c.leaf);
    sw::cpu::gemm(p, kernel, pool);
    return out;
}

std::string describe(const Case& c, Kernel kernel) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s %s->%s m=%lld n=%lld k=%lld leaf=%lld %c%c alpha=%g beta=%g%s%s",
                  sw::cpu::kernel_name(kernel), c.in == SW_DTYPE_F32 ? "f32" : c.in == SW_DTYPE_BF16 ? "bf16" : "f16",
                  c.out == SW_DTYPE_F32 ? "f32" : c.out == SW_DTYPE_BF16 ? "bf16" : "f16", (long long)c.m,
                  (long long)c.n, (long long)c.k, (long long)c.leaf, c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', c.alpha,
                  c.beta, c.bias ? " bias" : "", c.gelu ? " gelu" : "");
    return buf;
}

bool same_c(const Case& c, const Operands& o, const std::vector<char>& x, const std::vector<char>& y, int64_t* where) {
    const size_t e = esz(c.out);
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < o.ldc; ++j)  // the padding columns too: untouched
            if (std::memcmp(x.data() + (i * o.ldc + j) * e, y.data() + (i * o.ldc + j) * e, e) != 0) {
                *where = i * o.ldc + j;
                return false;
            }
    return true;
}

void check_case(const Case& c, Kernel kernel, ThreadPool& pool) {
    const Operands o = make_operands(c);
    const std::string name = describe(c, kernel);
    const std::vector<char> got = run_tree(c, o, kernel, pool);
    int64_t at = 0;
    // Composition from the default GEMM's leaves.
    const int64_t nleaves = c.k == 0 ? 0 : (c.k + c.leaf - 1) / c.leaf;
    std::vector<std::vector<float>> leaves;
    for (int64_t l = 0; l < nleaves; ++l)
        leaves.push_back(raw(c, o, l * c.leaf, std::min(c.k, (l + 1) * c.leaf) - l * c.leaf, 0, kernel, pool));
    const std::vector<float> t = nleaves ? tree_combine(leaves) : std::vector<float>(static_cast<size_t>(c.m * c.n), 0.0f);
    // (the padding columns of C: the expected copy keeps C0's, the run must too)
    std::vector<char> want = finish(c, o, t, kernel);
    if (c.beta == 0.0f) {
        for (int64_t i = 0; i < c.m; ++i)
            for (int64_t j = c.n; j < o.ldc; ++j)
                std::memset(want.data() + (i * o.ldc + j) * esz(c.out), 0xFF, esz(c.out));
        if (!want.empty()) std::memset(want.data() + (c.m * o.ldc) * esz(c.out), 0xFF, want.size() - c.m * o.ldc * esz(c.out));
    }
    EXPECT(same_c(c, o, got, want, &at), "%s: tree GEMM != leaves summed by the tree, element %lld", name.c_str(),
           (long long)at);
    // Invariance over p.
    for (int64_t p : {2, 4, 8}) {
        const std::vector<int64_t> first = sw::tree::nodes(nleaves, p);
        std::vector<std::vector<float>> parts;
        for (int64_t r = 0; r < p; ++r) {
            const int64_t k0 = std::min(c.k, first[static_cast<size_t>(r)] * c.leaf);
            const int64_t k1 = std::min(c.k, first[static_cast<size_t>(r) + 1] * c.leaf);
            parts.push_back(raw(c, o, k0, k1 - k0, c.leaf, kernel, pool));
        }
        std::vector<char> sharded = finish(c, o, tree_combine(parts), kernel);
        bool ok = true;
        const size_t e = esz(c.out);
        for (int64_t i = 0; i < c.m && ok; ++i)
            for (int64_t j = 0; j < c.n && ok; ++j)
                if (std::memcmp(sharded.data() + (i * o.ldc + j) * e, got.data() + (i * o.ldc + j) * e, e) != 0) {
                    ok = false;
                    at = i * o.ldc + j;
                }
        EXPECT(ok, "%s: p = %lld tree nodes + tree sum != unsharded, element %lld", name.c_str(), (long long)p,
               (long long)at);
    }
    // Accuracy against float64.
    double worst = 0.0;
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < c.n; ++j) {
            double s = 0.0, mag = 0.0;
            for (int64_t q = 0; q < c.k; ++q) {
                const double av = to_f(c.in, o.a.data() + (c.ta ? q * o.lda + i : i * o.lda + q) * esz(c.in));
                const double bv = to_f(c.in, o.b.data() + (c.tb ? j * o.ldb + q : q * o.ldb + j) * esz(c.in));
                s += av * bv;
                mag += std::fabs(av * bv);
            }
            const double tv = t[static_cast<size_t>(i * c.n + j)];
            const double err = std::fabs(tv - s) / (mag * 2.0 * (c.k + 4) * std::ldexp(1.0, -24) + 1e-30);
            worst = std::max(worst, c.k ? err : std::fabs(tv));
        }
    EXPECT(worst <= 1.0, "%s: the tree sum is off the float64 product (%.3g of the bound)", name.c_str(), worst);
}

// Column and row blocks alone, thread counts, grouped members.
void check_determinism(Kernel kernel) {
    const Case c{37, 83, 700, 64, false, false, SW_DTYPE_F32, SW_DTYPE_F32, 1.0f, 0.0f, true, false};
    const Operands o = make_operands(c);
    ThreadPool one(1), two(2), three(3);
    const std::vector<char> full = run_tree(c, o, kernel, two);
    for (ThreadPool* pool : {&one, &three}) {
        const std::vector<char> again = run_tree(c, o, kernel, *pool);
        int64_t at = 0;
        EXPECT(same_c(c, o, again, full, &at), "%s: %d threads differ from 2 (element %lld)", sw::cpu::kernel_name(kernel),
               pool->size(), (long long)at);
    }
    // Columns [20, 61) alone, rows [5, 30) alone.
    std::vector<float> cols(static_cast<size_t>(c.m * o.ldc), std::nanf(""));
    GemmProblem p = problem(c, o, 0, c.k, cols.data(), SW_DTYPE_F32, 1.0f, 0.0f, true, false, c.leaf);
    p.n = 41;
    p.b = static_cast<const float*>(p.b) + 20;
    p.bias = reinterpret_cast<const float*>(o.bias.data()) + 20;
    sw::cpu::gemm(p, kernel, two);
    bool ok = true;
    const auto* f = reinterpret_cast<const float*>(full.data());
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < 41; ++j)
            ok = ok && std::memcmp(&cols[static_cast<size_t>(i * o.ldc + j)], &f[i * o.ldc + 20 + j], 4) == 0;
    EXPECT(ok, "%s: a column block alone differs from the full tree GEMM", sw::cpu::kernel_name(kernel));
    std::vector<float> rows(static_cast<size_t>(c.m * o.ldc), std::nanf(""));
    p = problem(c, o, 0, c.k, rows.data(), SW_DTYPE_F32, 1.0f, 0.0f, true, false, c.leaf);
    p.m = 25;
    p.a = static_cast<const float*>(p.a) + 5 * o.lda;
    sw::cpu::gemm(p, kernel, two);
    ok = true;
    for (int64_t i = 0; i < 25; ++i)
        for (int64_t j = 0; j < c.n; ++j)
            ok = ok && std::memcmp(&rows[static_cast<size_t>(i * o.ldc + j)], &f[(i + 5) * o.ldc + j], 4) == 0;
    EXPECT(ok, "%s: a row block alone differs from the full tree GEMM", sw::cpu::kernel_name(kernel));
    // Grouped: the column blocks of one Y (fused segments) and a member with another leaf (not grouped with them).
    std::vector<float> g(static_cast<size_t>(c.m * o.ldc), std::nanf(""));
    GemmProblem members[3];
    for (int q = 0; q < 2; ++q) {
        members[q] = problem(c, o, 0, c.k, g.data() + q * 40, SW_DTYPE_F32, 1.0f, 0.0f, true, false, c.leaf);
        members[q].n = q == 0 ? 40 : c.n - 40;
        members[q].b = static_cast<const float*>(members[q].b) + q * 40;
        members[q].bias = reinterpret_cast<const float*>(o.bias.data()) + q * 40;
    }
    std::vector<float> other(static_cast<size_t>(c.m * o.ldc), std::nanf(""));
    members[2] = problem(c, o, 0, c.k, other.data(), SW_DTYPE_F32, 1.0f, 0.0f, true, false, 128);
    sw::cpu::gemm_grouped(members, 3, kernel, two);
    ok = true;
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < c.n; ++j) ok = ok && std::memcmp(&g[static_cast<size_t>(i * o.ldc + j)], &f[i * o.ldc + j], 4) == 0;
    EXPECT(ok, "%s: grouped tree members differ from gemm", sw::cpu::kernel_name(kernel));
    Case c128 = c;
    c128.leaf = 128;
    const std::vector<char> want128 = run_tree(c128, o, kernel, two);
    const auto* w = reinterpret_cast<const float*>(want128.data());
    ok = true;
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < c.n; ++j) ok = ok && std::memcmp(&other[static_cast<size_t>(i * o.ldc + j)], &w[i * o.ldc + j], 4) == 0;
    EXPECT(ok, "%s: a grouped member with another leaf differs from gemm", sw::cpu::kernel_name(kernel));
}

} // namespace

int main() {
    ThreadPool pool(2);
    std::vector<Kernel> kernels;
    for (Kernel k : {Kernel::Generic, Kernel::Avx2, Kernel::Avx512, Kernel::Avx512Bf16})
        if (sw::cpu::kernel_supported(k)) kernels.push_back(k);
    int cases = 0;
    for (Kernel kernel : kernels) {
        check_determinism(kernel);
        for (sw_dtype in : {SW_DTYPE_F32, SW_DTYPE_BF16, SW_DTYPE_F16}) {
            const std::vector<sw_dtype> outs = in == SW_DTYPE_F32 ? std::vector<sw_dtype>{SW_DTYPE_F32}
                                                                  : std::vector<sw_dtype>{SW_DTYPE_F32, in};
            for (sw_dtype out : outs) {
                const struct { int64_t m, n, k, leaf; } shapes[] = {
                    {1, 40, 300, 64},   {3, 33, 17, 8},    {20, 70, 1000, 256}, {16, 64, 130, 128},
                    {45, 50, 1300, 600}, {5, 7, 0, 16},     {9, 37, 23, 2},      {30, 129, 257, 32},
                };
                int variant = 0;
                for (const auto& s : shapes) {
                    if (out != SW_DTYPE_F32 && out == in && variant % 2) { ++variant; continue; }
                    const bool ta = variant & 1, tb = (variant >> 1) & 1;
                    const bool extras = variant % 3 == 0;
                    Case c{s.m, s.n, s.k, s.leaf, ta, tb, in, out, extras ? 0.75f : 1.0f, variant % 4 == 1 ? 0.5f : 0.0f,
                           variant % 2 == 0, variant % 5 == 2};
                    check_case(c, kernel, pool);
                    ++cases;
                    ++variant;
                }
                // alpha 1, beta 0, fp32 C: the root kept in C (the last block applying the bias and GeLU where it writes
                // the root: one leaf, two leaves; else in place after the merges), with and without bias and GeLU.
                if (out == SW_DTYPE_F32) {
                    const struct { int64_t m, n, k, leaf; bool bias, gelu; } rootc[] = {
                        {17, 45, 100, 128, true, true}, {9, 70, 130, 128, true, true},   {21, 33, 256, 128, true, false},
                        {6, 40, 512, 128, false, true}, {30, 64, 1000, 128, false, false}, {5, 7, 0, 16, true, true},
                        {13, 50, 1100, 600, true, true},
                    };
                    for (const auto& rc : rootc) {
                        Case c{rc.m, rc.n, rc.k, rc.leaf, (cases & 1) != 0, (cases & 2) != 0, in, out, 1.0f, 0.0f, rc.bias, rc.gelu};
                        check_case(c, kernel, pool);
                        ++cases;
                    }
                }
            }
        }
    }
    std::printf("gemm_tree_check (seed %llu): %d cases on %zu kernels, %d checks, %d failures\n",
                static_cast<unsigned long long>(g_seed), cases, kernels.size(), g_checks, g_failures);
    return g_failures ? 1 : 0;
}
