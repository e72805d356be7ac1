// Checks of the CPU GEMM driver's shape-specific paths (sw::cpu::gemm_grouped, the skinny-M paths), and, with
// --bench, a by-hand measurement of them (not run by ctest; see bench_main below).
//
//  - gemm_grouped: member i's C equals gemm(problems[i]) run alone, bit for bit, for 1..8 members sharing op(A)
//    (uneven widths: n < NR, widths that are not multiples of NR, NR multiples), mixed trans_b, beta 0 (C poisoned
//    with NaN) and beta != 0, bias, GeLU, alpha, f32 / bf16 / f16 inputs with f32 or 16-bit C (mixed within one
//    group), m from 1 to 300, k = 0 and several k blocks, every kernel this CPU runs, 1 / 2 / 3 threads; members with
//    a different op(A) (another matrix, or the same pointer with another lda or m) in the same call; the sharded GEMM
//    of virtual ranks (each member a column block of one Y, ldc = N); nothing outside the members' C blocks written.
//    The f32 members are also checked against a float64 reference (bound 2 (k + 4) 2^-24 sum|terms|).
//  - skinny M (every m up to 64 and a few beyond, op(B) = B and B^T, f32 and bf16): equal bit for bit to the rows of
//    a tall GEMM computed with the same B (the general path), and float64-checked; a row block of it alone likewise.
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "check_internal.h"
#include "cpu/gemm.h"
#include "cpu/thread_pool.h"
#include "float16_ref.h"

using sw::GemmProblem;
using sw::cpu::Kernel;
using sw::cpu::ThreadPool;

namespace {




size_t esize(sw_dtype t) { return t == SW_DTYPE_F32 ? 4 : 2; }

// A matrix of `count` elements of type t, as raw bytes, with random values in [lo, hi] (16-bit: rounded).
struct Mat {
    sw_dtype t = SW_DTYPE_F32;
    std::vector<unsigned char> bytes;
    int64_t count = 0;
    void init(sw_dtype type, int64_t n) {
        t = type;
        count = n;
        bytes.assign(static_cast<size_t>(std::max<int64_t>(n, 1)) * esize(t), 0);
    }
    void* data() { return bytes.data(); }
    const void* data() const { return bytes.data(); }
    float get(int64_t i) const {
        if (t == SW_DTYPE_F32) {
            float f;
            std::memcpy(&f, bytes.data() + 4 * i, 4);
            return f;
        }
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        return sw_ref_to_float16(t == SW_DTYPE_BF16, h);
    }
    void set(int64_t i, float f) {
        if (t == SW_DTYPE_F32) {
            std::memcpy(bytes.data() + 4 * i, &f, 4);
        } else {
            const uint16_t h = sw_ref_round16(t == SW_DTYPE_BF16, f);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
    }
    void fill(Rng& rng, float lo, float hi) {
        for (int64_t i = 0; i < count; ++i) set(i, rng.uniform(lo, hi));
    }
};

const char* tname(sw_dtype t) { return t == SW_DTYPE_F32 ? "f32" : t == SW_DTYPE_BF16 ? "bf16" : "f16"; }

// One grouped call: shared-or-not A matrices, and the members (their own B, bias; C in its own matrix or in a
// column block of a shared Y).
struct Member {
    int a_idx = 0;       // which A
    bool tb = false;
    int64_t n = 0, ldb = 0;
    sw_dtype c_type = SW_DTYPE_F32;
    float alpha = 1.0f, beta = 0.0f;
    bool bias = false, gelu = false;
    Mat b, biasm;
    int c_idx = 0;       // which C matrix
    int64_t c_col = 0;   // first column in it
};

struct AMat {
    bool ta = false;
    int64_t m = 0, k = 0, lda = 0;
    Mat a;
    int64_t row_off = 0;  // member's op(A) starts at row row_off (the "same pointer, other m" case uses 0)
};

struct CMat {
    int64_t rows = 0, ld = 0;
    sw_dtype t = SW_DTYPE_F32;
    Mat c0;  // initial contents (poison / random / sentinels)
};

struct Group {
    std::vector<AMat> as;
    std::vector<Member> ms;
    std::vector<CMat> cs;
    sw_dtype in = SW_DTYPE_F32;

    GemmProblem problem(size_t i, std::vector<Mat>& cbuf) const {
        const Member& mb = ms[i];
        const AMat& A = as[static_cast<size_t>(mb.a_idx)];
        GemmProblem g;
        g.m = A.m;
        g.n = mb.n;
        g.k = A.k;
        g.trans_a = A.ta;
        g.trans_b = mb.tb;
        g.a_type = g.b_type = in;
        g.c_type = g.bias_type = mb.c_type;
        g.alpha = mb.alpha;
        g.beta = mb.beta;
        g.a = A.a.data();
        g.lda = A.lda;
        g.b = mb.b.data();
        g.ldb = mb.ldb;
        Mat& C = cbuf[static_cast<size_t>(mb.c_idx)];
        g.c = static_cast<unsigned char*>(C.data()) + static_cast<size_t>(mb.c_col) * esize(C.t);
        g.ldc = cs[static_cast<size_t>(mb.c_idx)].ld;
        g.bias = mb.bias ? mb.biasm.data() : nullptr;
        g.epilogue = mb.gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
        return g;
    }
};

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

// float64 check of one f32 member's C (its block of c, with c0 the initial contents).
bool check_ref(const Group& G, size_t i, const Mat& c, const Mat& c0, const char* what, int64_t r0 = 0,
               int64_t r1 = -1) {
    const Member& mb = G.ms[i];
    const AMat& A = G.as[static_cast<size_t>(mb.a_idx)];
    const int64_t ldc = G.cs[static_cast<size_t>(mb.c_idx)].ld;
    const double eps = std::ldexp(1.0, -24);
    int bad = 0;
    for (int64_t r = r0; r < (r1 < 0 ? A.m : r1); ++r) {
        for (int64_t j = 0; j < mb.n; ++j) {
            double s = 0, sabs = 0;
            for (int64_t p = 0; p < A.k; ++p) {
                const double x = A.ta ? A.a.get(p * A.lda + r) : A.a.get(r * A.lda + p);
                const double y = mb.tb ? mb.b.get(j * mb.ldb + p) : mb.b.get(p * mb.ldb + j);
                s += x * y;
                sabs += std::fabs(x * y);
            }
            const int64_t ci = r * ldc + mb.c_col + j;
            double v = mb.alpha * s, bound = std::fabs(mb.alpha) * sabs;
            if (mb.beta != 0.0f) {
                v += static_cast<double>(mb.beta) * c0.get(ci);
                bound += std::fabs(mb.beta * c0.get(ci));
            }
            if (mb.bias) {
                v += mb.biasm.get(j);
                bound += std::fabs(mb.biasm.get(j));
            }
            double tol = 2.0 * (static_cast<double>(A.k) + 4.0) * eps * bound + 1e-30;
            double ref = v;
            if (mb.gelu) {
                ref = gelu_ref(v);
                tol = 1.13 * tol + 1e-6 * std::fabs(ref) + 1e-7;
            }
            const double got = c.get(ci);
            if (!(std::fabs(got - ref) <= tol) && bad++ < 3)
                std::printf("  %s: member %zu C[%lld][%lld] = %.9g, reference %.9g (tol %.3g)\n", what, i,
                            static_cast<long long>(r), static_cast<long long>(j), got, ref, tol);
        }
    }
    return bad == 0;
}

constexpr float kSentinel = -12345.678f;

// Builds a group: nA distinct A matrices (m x k, shared by the members that name them), the member widths ns.
// sharded: every member writes a column block of one Y (ldc = sum of widths), else each its own C (padded ld).
Group make_group(Rng& rng, sw_dtype in, int64_t m, int64_t k, const std::vector<int64_t>& ns, int nA, bool sharded,
                 bool mixed_c, bool ta) {
    Group G;
    G.in = in;
    for (int q = 0; q < nA; ++q) {
        AMat A;
        A.ta = q == 0 ? ta : !ta;
        A.m = m;
        A.k = k;
        const int64_t rows = A.ta ? k : m, cols = A.ta ? m : k;
        A.lda = std::max<int64_t>(cols, 1) + rng.range(0, 5);
        A.a.init(in, std::max<int64_t>(rows, 1) * A.lda);
        A.a.fill(rng, -1.0f, 1.0f);
        G.as.push_back(std::move(A));
    }
    int64_t total = 0;
    for (int64_t n : ns) total += n;
    const sw_dtype shared_c = mixed_c || in == SW_DTYPE_F32 ? SW_DTYPE_F32 : in;
    if (sharded) {
        CMat Y;
        Y.rows = m;
        Y.ld = total + rng.range(0, 3);
        Y.t = shared_c;
        G.cs.push_back(std::move(Y));
    }
    int64_t col = 0;
    // Sharded: one epilogue for the whole Y (the ranks' blocks of one column-parallel layer: the driver fuses such
    // adjacent members, micro-panels straddling their boundaries), except that one member in three groups differs
    // (alpha; the fused runs break there). Else per member.
    const int ep_all = static_cast<int>(rng.range(0, 3));
    const float alpha_all = ep_all % 2 ? rng.uniform(-2.0f, 2.0f) : 1.0f;
    const float beta_all = ep_all == 3 ? rng.uniform(-1.5f, 1.5f) : ep_all == 2 ? 1.0f : 0.0f;
    const bool bias_all = rng.range(0, 1) == 1, gelu_all = rng.range(0, 2) == 0;
    const int64_t odd_one = rng.range(0, 2) == 0 ? rng.range(0, static_cast<int64_t>(ns.size()) - 1) : -1;
    for (size_t i = 0; i < ns.size(); ++i) {
        Member mb;
        mb.a_idx = static_cast<int>(i % static_cast<size_t>(nA));
        mb.n = ns[i];
        mb.tb = rng.range(0, 2) == 0 ? !ta : ta;
        const int64_t br = mb.tb ? mb.n : k, bc = mb.tb ? k : mb.n;
        mb.ldb = std::max<int64_t>(bc, 1) + rng.range(0, 4);
        mb.b.init(in, std::max<int64_t>(br, 1) * mb.ldb);
        mb.b.fill(rng, -1.0f, 1.0f);
        const int ep = sharded ? ep_all : static_cast<int>(rng.range(0, 3));
        switch (ep) {
        case 0: mb.alpha = 1.0f; mb.beta = 0.0f; break;
        case 1: mb.alpha = rng.uniform(-2.0f, 2.0f); mb.beta = 0.0f; break;
        case 2: mb.alpha = 1.0f; mb.beta = 1.0f; break;
        default: mb.alpha = rng.uniform(-2.0f, 2.0f); mb.beta = rng.uniform(-1.5f, 1.5f); break;
        }
        mb.bias = rng.range(0, 1) == 1;
        mb.gelu = rng.range(0, 2) == 0;
        if (sharded) {
            mb.alpha = static_cast<int64_t>(i) == odd_one ? alpha_all * 0.5f : alpha_all;
            mb.beta = beta_all;
            mb.bias = bias_all;
            mb.gelu = gelu_all;
            mb.c_type = shared_c;
            mb.c_idx = 0;
            mb.c_col = col;
            col += mb.n;
        } else {
            mb.c_type = in == SW_DTYPE_F32 ? SW_DTYPE_F32 : (mixed_c && i % 2 ? in : SW_DTYPE_F32);
            if (!mixed_c && in != SW_DTYPE_F32) mb.c_type = in;
            CMat C;
            C.rows = m;
            C.ld = mb.n + rng.range(0, 5);
            C.t = mb.c_type;
            mb.c_idx = static_cast<int>(G.cs.size());
            mb.c_col = 0;
            G.cs.push_back(std::move(C));
        }
        mb.biasm.init(mb.c_type, mb.n);
        mb.biasm.fill(rng, -0.5f, 0.5f);
        G.ms.push_back(std::move(mb));
    }
    // Initial C: sentinels everywhere, then per member NaN (beta == 0) or random values in its block.
    for (auto& C : G.cs) {
        C.c0.init(C.t, C.rows * C.ld);
        for (int64_t e = 0; e < C.c0.count; ++e) C.c0.set(e, kSentinel);
    }
    for (auto& mb : G.ms) {
        CMat& C = G.cs[static_cast<size_t>(mb.c_idx)];
        for (int64_t r = 0; r < m; ++r)
            for (int64_t j = 0; j < mb.n; ++j)
                C.c0.set(r * C.ld + mb.c_col + j, mb.beta == 0.0f ? std::nanf("") : rng.uniform(-1.0f, 1.0f));
    }
    return G;
}

std::string describe(const Group& G, Kernel kern, int threads) {
    std::string s = std::string(sw::cpu::kernel_name(kern)) + " in=" + tname(G.in) + " threads=" +
                    std::to_string(threads) + " m=" + std::to_string(G.as[0].m) + " k=" + std::to_string(G.as[0].k) +
                    " nA=" + std::to_string(G.as.size()) + " ta=" + std::to_string(G.as[0].ta) + " members:";
    for (const auto& mb : G.ms)
        s += " [n=" + std::to_string(mb.n) + (mb.tb ? " T" : " N") + " c=" + tname(mb.c_type) +
             " beta=" + std::to_string(mb.beta) + (mb.bias ? " bias" : "") + (mb.gelu ? " gelu" : "") + "]";
    return s;
}

// Runs the group as one gemm_grouped call and member by member with gemm(); compares every byte of every C.
void check_group(const Group& G, Kernel kern, ThreadPool& pool, bool ref) {
    const size_t nm = G.ms.size();
    std::vector<Mat> cg, cs;
    for (const auto& C : G.cs) {
        cg.push_back(C.c0);
        cs.push_back(C.c0);
    }
    std::vector<GemmProblem> pg;
    for (size_t i = 0; i < nm; ++i) pg.push_back(G.problem(i, cg));
    sw::cpu::gemm_grouped(pg.data(), static_cast<int32_t>(nm), kern, pool);
    for (size_t i = 0; i < nm; ++i) {
        const GemmProblem p = G.problem(i, cs);
        sw::cpu::gemm(p, kern, pool);
    }
    const std::string d = describe(G, kern, pool.size());
    for (size_t q = 0; q < G.cs.size(); ++q) {
        const bool same = cg[q].bytes == cs[q].bytes;
        if (!same) {
            // Locate the first difference for the message.
            const Mat& x = cg[q];
            const Mat& y = cs[q];
            int64_t e = 0;
            while (e < x.count && std::memcmp(x.bytes.data() + e * esize(x.t), y.bytes.data() + e * esize(x.t), esize(x.t)) == 0) ++e;
            CHECK(same, "grouped C %zu differs from the members run alone at row %lld col %lld (%.9g vs %.9g): %s", q,
                  static_cast<long long>(e / G.cs[q].ld), static_cast<long long>(e % G.cs[q].ld), x.get(e), y.get(e),
                  d.c_str());
        } else {
            CHECK(same, "unreachable");
        }
    }
    if (ref) {  // (16-bit inputs: their exact values in float64; an fp32 C only)
        for (size_t i = 0; i < nm; ++i) {
            if (G.ms[i].c_type != SW_DTYPE_F32) continue;
            CHECK(check_ref(G, i, cg[static_cast<size_t>(G.ms[i].c_idx)], G.cs[static_cast<size_t>(G.ms[i].c_idx)].c0,
                            d.c_str()),
                  "grouped member %zu: float64 reference mismatch: %s", i, d.c_str());
        }
    }
    // Outside the members' blocks: the sentinels (checked on the grouped result; the single runs are the existing
    // driver's, checked elsewhere).
    int outside = 0;
    for (size_t q = 0; q < G.cs.size(); ++q) {
        std::vector<char> inside(static_cast<size_t>(G.cs[q].c0.count), 0);
        for (const auto& mb : G.ms) {
            if (static_cast<size_t>(mb.c_idx) != q) continue;
            for (int64_t r = 0; r < G.as[0].m; ++r)
                for (int64_t j = 0; j < mb.n; ++j) inside[static_cast<size_t>(r * G.cs[q].ld + mb.c_col + j)] = 1;
        }
        for (int64_t e = 0; e < G.cs[q].c0.count; ++e)
            if (!inside[static_cast<size_t>(e)] && cg[q].get(e) != G.cs[q].c0.get(e)) ++outside;
    }
    CHECK(outside == 0, "grouped call wrote %d elements outside the members' C blocks: %s", outside, d.c_str());
}

std::vector<Kernel> kernels() {
    std::vector<Kernel> ks;
    for (Kernel k : {Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Generic})
        if (sw::cpu::kernel_supported(k)) ks.push_back(k);
        else std::printf("kernel %s: not supported on this CPU, skipped\n", sw::cpu::kernel_name(k));
    return ks;
}

void check_grouped(ThreadPool* pools[3]) {
    Rng rng(4242);
    const int64_t widths[] = {1, 5, 16, 17, 31, 32, 33, 64, 100, 125, 129, 160};
    const int nw = static_cast<int>(sizeof(widths) / sizeof(widths[0]));
    const int64_t ms[] = {1, 3, 6, 8, 13, 14, 15, 32, 45, 64, 100, 300};
    const int64_t ks[] = {0, 1, 37, 300, 700, 1100};  // 700: two fp32 k blocks; 1100: two bf16 pair blocks
    int idx = 0;
    for (Kernel kern : kernels()) {
        const int before = g_failures;
        const bool slow = kern == Kernel::Generic;
        for (sw_dtype in : {SW_DTYPE_F32, SW_DTYPE_BF16, SW_DTYPE_F16}) {
            const int cases = slow ? 5 : (in == SW_DTYPE_F32 ? 22 : 12);
            for (int c = 0; c < cases; ++c, ++idx) {
                const int p = 1 + c % 8;
                std::vector<int64_t> ns;
                for (int i = 0; i < p; ++i) ns.push_back(widths[rng.range(0, nw - 1)]);
                int64_t m = ms[rng.range(0, 11)], k = ks[rng.range(0, 5)];
                if (slow) {
                    m = std::min<int64_t>(m, 45);
                    k = std::min<int64_t>(k, 300);
                }
                if (m * k > 60000) k = std::max<int64_t>(1, 60000 / m);
                if (c == 3) k = in == SW_DTYPE_F32 ? 700 : 1100, m = 15;  // several k blocks, more than MR rows
                const int nA = c % 5 == 4 ? 2 : 1;
                const bool sharded = c % 3 == 1;
                const bool mixed_c = c % 4 == 2;
                const bool ta = rng.range(0, 1) == 1;
                const Group G = make_group(rng, in, m, k, ns, nA, sharded, mixed_c, ta);
                check_group(G, kern, *pools[idx % 3], in == SW_DTYPE_F32 && (c % 2 == 0));
            }
        }
        std::printf("gemm_grouped, kernel %s: %s\n", sw::cpu::kernel_name(kern), g_failures == before ? "ok" : "FAILED");
    }
}

// The same pointer as op(A) with another lda or m (another matrix for the driver) in one call with the members that
// share it, and members whose n is 0 (skipped).
void check_grouped_not_shared(ThreadPool& pool) {
    Rng rng(77);
    for (Kernel kern : kernels()) {
        if (kern == Kernel::Generic) continue;
        const Group G = make_group(rng, SW_DTYPE_F32, 40, 300, {33, 64, 7, 50}, 1, false, false, false);
        check_group(G, kern, pool, true);
        std::vector<Mat> cg, cs;
        for (const auto& C : G.cs) {
            cg.push_back(C.c0);
            cs.push_back(C.c0);
        }
        std::vector<GemmProblem> pg, ps;
        for (size_t i = 0; i < G.ms.size(); ++i) {
            pg.push_back(G.problem(i, cg));
            ps.push_back(G.problem(i, cs));
        }
        // The same A pointer, another op(A): member 2 the first 30 rows, member 3 every other row (lda doubled).
        for (auto* v : {&pg, &ps}) {
            (*v)[2].m = 30;
            (*v)[3].m = 20;
            (*v)[3].lda = 2 * G.as[0].lda;
        }
        GemmProblem empty = pg[0];
        empty.n = 0;
        pg.push_back(empty);
        sw::cpu::gemm_grouped(pg.data(), static_cast<int32_t>(pg.size()), kern, pool);
        for (auto& p : ps) sw::cpu::gemm(p, kern, pool);
        bool same = true;
        for (size_t q = 0; q < cg.size(); ++q) same = same && cg[q].bytes == cs[q].bytes;
        CHECK(same, "grouped call with the same A pointer but another lda / m differs (%s)", sw::cpu::kernel_name(kern));
    }
}

// Skinny M: rows [r0, r0 + m) of a tall GEMM (general path) against the same rows computed as their own GEMM.
void check_skinny(ThreadPool* pools[3]) {
    Rng rng(31337);
    for (Kernel kern : kernels()) {
        if (kern == Kernel::Generic) continue;
        const int before = g_failures;
        for (sw_dtype in : {SW_DTYPE_F32, SW_DTYPE_BF16}) {
            for (int c = 0; c < 18; ++c) {
                const int64_t tall = 200;
                const int64_t m = c < 16 ? 1 + rng.range(0, 63) : rng.range(1, 120);
                const int64_t r0 = rng.range(0, tall - m);
                const int64_t n = (c % 3 == 0) ? 4096 + rng.range(1, 200) : rng.range(1, 700);
                const int64_t k = (c % 4 == 1) ? (in == SW_DTYPE_F32 ? 700 : 1100) : rng.range(1, 300);
                const bool ta = c % 5 == 2, tb = c % 2 == 1;
                Group G = make_group(rng, in, tall, k, {n}, 1, false, false, ta);
                G.ms[0].tb = tb;
                Member& mb = G.ms[0];
                const int64_t br = tb ? n : k, bc = tb ? k : n;
                mb.ldb = bc + rng.range(0, 3);
                mb.b.init(in, br * mb.ldb);
                mb.b.fill(rng, -1.0f, 1.0f);
                std::vector<Mat> full, part;
                for (const auto& C : G.cs) {
                    full.push_back(C.c0);
                    part.push_back(C.c0);
                }
                ThreadPool& pool = *pools[c % 3];
                sw::cpu::gemm(G.problem(0, full), kern, pool);
                GemmProblem p = G.problem(0, part);
                const size_t ce = esize(G.cs[0].t);
                p.m = m;
                p.a = static_cast<const unsigned char*>(p.a) + static_cast<size_t>(ta ? r0 : r0 * p.lda) * esize(in);
                p.c = static_cast<unsigned char*>(p.c) + static_cast<size_t>(r0 * p.ldc) * ce;
                sw::cpu::gemm(p, kern, pool);
                const bool same = std::memcmp(full[0].bytes.data() + r0 * p.ldc * ce, part[0].bytes.data() + r0 * p.ldc * ce,
                                              static_cast<size_t>(m * p.ldc) * ce) == 0;
                CHECK(same, "skinny rows [%lld, %lld) of %s %c%c n=%lld k=%lld differ from the tall GEMM's (%s, %d threads)",
                      static_cast<long long>(r0), static_cast<long long>(r0 + m), tname(in), ta ? 'T' : 'N',
                      tb ? 'T' : 'N', static_cast<long long>(n), static_cast<long long>(k), sw::cpu::kernel_name(kern),
                      pool.size());
                // Rows outside the block untouched; float64 check of the block (f32) on the skinny result.
                bool untouched = true;
                for (int64_t e = 0; e < part[0].count; ++e) {
                    const int64_t r = e / p.ldc;
                    if ((r < r0 || r >= r0 + m) && part[0].get(e) != G.cs[0].c0.get(e) &&
                        !(std::isnan(part[0].get(e)) && std::isnan(G.cs[0].c0.get(e))))
                        untouched = false;
                }
                CHECK(untouched, "skinny GEMM wrote outside its rows (%s m=%lld n=%lld)", tname(in),
                      static_cast<long long>(m), static_cast<long long>(n));
                if (in == SW_DTYPE_F32)
                    CHECK(check_ref(G, 0, part[0], G.cs[0].c0, "skinny", r0, r0 + m), "skinny reference (%s)",
                          sw::cpu::kernel_name(kern));
            }
        }
        std::printf("skinny M, kernel %s: %s\n", sw::cpu::kernel_name(kern), g_failures == before ? "ok" : "FAILED");
    }
}

// A small B (k x n x 4 <= 32 KiB, stored as is) is read in place at any m (small_b_inplace in gemm.cpp), its narrow
// last micro-panel packed where a tile has more rows than the masked kernel takes. B here is stored without padding
// (ldb = n) and ends right before a page mapped PROT_NONE: a kernel that reads a row past column n faults. The
// result must equal, every byte, the same GEMM with B^T stored (the packed path), and match float64.
void check_small_b(ThreadPool* pools[3]) {
    Rng rng(4242);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (Kernel kern : kernels()) {
        const int before = g_failures;
        for (int c = 0; c < 24; ++c) {
            const int64_t m = c < 4 ? 64 : rng.range(1, 90);
            const int64_t n = c < 4 ? (c % 2 ? 64 : 33 + rng.range(0, 30)) : rng.range(1, 120);
            const int64_t k = std::max<int64_t>(1, std::min<int64_t>(c < 4 ? 64 : rng.range(1, 130), 8192 / n));
            Group G = make_group(rng, SW_DTYPE_F32, m, k, {n}, 1, false, false, c % 3 == 2);
            Member& mb = G.ms[0];
            mb.tb = false;
            mb.ldb = n;
            mb.b.init(SW_DTYPE_F32, k * n);
            mb.b.fill(rng, -1.0f, 1.0f);
            // B copied to the end of an anonymous mapping whose last page is PROT_NONE.
            const size_t bytes = static_cast<size_t>(k * n) * 4, span = (bytes + page - 1) / page * page;
            void* map = mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            CHECK(map != MAP_FAILED, "mmap");
            if (map == MAP_FAILED) return;
            mprotect(static_cast<char*>(map) + span, page, PROT_NONE);
            float* bg = reinterpret_cast<float*>(static_cast<char*>(map) + span - bytes);
            std::memcpy(bg, mb.b.data(), bytes);
            std::vector<Mat> got{G.cs[0].c0}, packed{G.cs[0].c0};
            ThreadPool& pool = *pools[c % 3];
            GemmProblem g = G.problem(0, got);
            g.b = bg;
            sw::cpu::gemm(g, kern, pool);
            // The packed path: B^T stored n x k.
            std::vector<float> bt(static_cast<size_t>(n * k));
            for (int64_t p = 0; p < k; ++p)
                for (int64_t j = 0; j < n; ++j) bt[static_cast<size_t>(j * k + p)] = bg[p * n + j];
            GemmProblem gt = G.problem(0, packed);
            gt.trans_b = true;
            gt.b = bt.data();
            gt.ldb = k;
            sw::cpu::gemm(gt, kern, pool);
            munmap(map, span + page);
            CHECK(got[0].bytes == packed[0].bytes, "small B in place: m=%lld n=%lld k=%lld differs from the packed "
                  "path (%s, %d threads)", static_cast<long long>(m), static_cast<long long>(n),
                  static_cast<long long>(k), sw::cpu::kernel_name(kern), pool.size());
            CHECK(check_ref(G, 0, got[0], G.cs[0].c0, "small B"), "small B reference m=%lld n=%lld k=%lld (%s)",
                  static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
                  sw::cpu::kernel_name(kern));
        }
        std::printf("small B in place, kernel %s: %s\n", sw::cpu::kernel_name(kern),
                    g_failures == before ? "ok" : "FAILED");
    }
}

// Skinny M over a B too large for the caches (>= 4 MiB, stored as is): gemm() takes the row-walking kernel where the
// kernel has one (walk_applies in gemm.cpp), gemm_grouped() with a second member that cannot walk the packed path;
// every byte must agree, and match float64.
// Rows 1..16 for fp32 (17: past its walking limit), 1..32 for bf16 (33: past), several k blocks, n with a partial last vector, lda/ldb/ldc padded, alpha,
// beta, bias and GeLU as make_group draws them.
void check_walk(ThreadPool* pools[3]) {
    Rng rng(2718);
    const int64_t ms[] = {1, 2, 3, 5, 8, 12, 16, 17}, ms_bf16[] = {1, 3, 8, 16, 17, 24, 32, 33};
    for (Kernel kern : kernels()) {
        if (kern == Kernel::Generic) continue;
        const int before = g_failures;
        // fp32 (walks up to 16 rows), and bf16 A and B (the pair kernel's walk; with the other kernels bf16 takes the widening path, which
        // never walks): a B of >= 4 MiB, so bf16 takes twice the elements; k past the pair kernel's KC (1024), odd
        // ones ending in a half pair; C fp32 or bf16 (mixed in a group).
        for (sw_dtype in : {SW_DTYPE_F32, SW_DTYPE_BF16}) {
            const bool f32 = in == SW_DTYPE_F32;
            for (int c = 0; c < 16; ++c) {
                const int64_t m = f32 ? ms[c % 8] : ms_bf16[c % 8];
                const int64_t n = c % 3 == 0 ? 1024 + rng.range(1, 40) : c % 3 == 1 ? 2048 + rng.range(0, 15) : 1100;
                int64_t k = c % 4 == 0 ? 1024 : 1000 + rng.range(0, 300);
                if (!f32) k = c % 4 == 0 ? 2048 : 2 * k + rng.range(0, 1);
                // Member 0 walks alone; member 1 (op(B) = B^T, small) never walks, so the group takes the packed path
                // for both (a group walks only when every member would).
                // Else (one case in four) three members that all walk, as one job whose per-thread column ranges span
                // members (the sharded GEMM of virtual ranks at decode size), against each walking alone.
                const bool pair = c % 4 != 3;
                const std::vector<int64_t> ns =
                    pair ? std::vector<int64_t>{n, 40} : std::vector<int64_t>{n, 1024 + rng.range(0, 50), 1030};
                Group G = make_group(rng, in, m, k, ns, 1, c % 8 == 7, !f32 && c % 2 == 0, rng.range(0, 1) == 1);
                for (size_t q = 0; q < (pair ? 1 : ns.size()); ++q) {
                    Member& mb = G.ms[q];
                    mb.tb = false;
                    mb.ldb = mb.n + rng.range(0, 3);
                    mb.b.init(in, k * mb.ldb);
                    mb.b.fill(rng, -1.0f, 1.0f);
                }
                if (pair) {
                    Member& m1 = G.ms[1];
                    m1.tb = true;
                    m1.ldb = k + rng.range(0, 3);
                    m1.b.init(in, m1.n * m1.ldb);
                    m1.b.fill(rng, -1.0f, 1.0f);
                }
                check_group(G, kern, *pools[c % 3], true);
            }
        }
        std::printf("row-walking skinny M, kernel %s: %s\n", sw::cpu::kernel_name(kern),
                    g_failures == before ? "ok" : "FAILED");
    }
}

// ================================================================================================
// --bench: by-hand measurements (never under ctest). Variants interleaved in one process: each round runs every
// variant once in a rotating order (a few calls each, after a warm-up); the report is the median of the per-round
// ratios with [min..max] and the interquartile range, so a slow window on a shared machine moves one round, not
// the comparison. Baselines (oneDNN dnnl_sgemm, OpenBLAS cblas_sgemm) are loaded with dlopen here only when present.
// ================================================================================================
}  // namespace

#include <dlfcn.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
    double median, lo, hi, q1, q3;
};

Stats stats(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const auto at = [&](double f) { return v[static_cast<size_t>(f * static_cast<double>(v.size() - 1) + 0.5)]; };
    return {at(0.5), v.front(), v.back(), at(0.25), at(0.75)};
}

using DnnlSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
                          float, float*, int64_t);
using CblasSgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                            int);
using CoreName = char* (*)();
using SetThreads = void (*)(int);

struct Baselines {
    DnnlSgemm dnnl = nullptr;
    CblasSgemm blas = nullptr;
    const char* blas_core = "";
    Baselines(int threads) {
        if (void* h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL)) {
            dnnl = reinterpret_cast<DnnlSgemm>(dlsym(h, "dnnl_sgemm"));
            if (auto setmax = reinterpret_cast<int (*)(int)>(dlsym(h, "dnnl_set_max_threads"))) setmax(threads);
        }
        if (void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL)) {
            blas = reinterpret_cast<CblasSgemm>(dlsym(h, "cblas_sgemm"));
            if (auto cn = reinterpret_cast<CoreName>(dlsym(h, "openblas_get_corename"))) blas_core = cn();
            if (auto st = reinterpret_cast<SetThreads>(dlsym(h, "openblas_set_num_threads"))) st(threads);
        }
    }
};

// One benchmark case: the variants are closures timed over `calls` calls each per round.
struct Variant {
    std::string name;
    std::function<void()> fn;
};

void compare(const char* title, std::vector<Variant>& vs, int rounds, double target_ms) {
    // Calls per round so that one variant's batch takes about target_ms.
    for (auto& v : vs) v.fn();
    auto t0 = Clock::now();
    vs[0].fn();
    const double once = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const int calls = std::max(1, static_cast<int>(target_ms / std::max(once, 1e-3)));
    std::vector<std::vector<double>> times(vs.size());
    for (int r = 0; r < rounds; ++r) {
        for (size_t q = 0; q < vs.size(); ++q) {
            const size_t v = (q + static_cast<size_t>(r)) % vs.size();
            t0 = Clock::now();
            for (int c = 0; c < calls; ++c) vs[v].fn();
            times[v].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / calls);
        }
    }
    std::printf("%s  (%d rounds x %d calls, rotating order)\n", title, rounds, calls);
    const Stats base = stats(times[0]);
    std::printf("  %-26s median %9.3f ms\n", vs[0].name.c_str(), base.median);
    for (size_t v = 1; v < vs.size(); ++v) {
        std::vector<double> ratio;  // > 1: variant 0 is faster
        for (int r = 0; r < rounds; ++r) ratio.push_back(times[v][static_cast<size_t>(r)] / times[0][static_cast<size_t>(r)]);
        const Stats s = stats(ratio), t = stats(times[v]);
        std::printf("  %-26s median %9.3f ms   %s/%s = %.3f  [%.3f..%.3f] IQR [%.3f..%.3f]\n", vs[v].name.c_str(),
                    t.median, vs[v].name.c_str(), vs[0].name.c_str(), s.median, s.lo, s.hi, s.q1, s.q3);
    }
    std::fflush(stdout);
}

int bench_main(int argc, char** argv) {
    int threads = 2, rounds = 15;
    std::string only;  // comma-separated parts of the case titles to run
    bool no_blas = false;
    for (int i = 2; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!std::strcmp(argv[i], "--no-openblas")) no_blas = true;
    }
    ThreadPool pool(threads);
    Baselines bl(threads);
    if (no_blas) bl.blas = nullptr;
    const auto skip = [&](const std::string& title) {
        if (only.empty()) return false;
        size_t b = 0;
        while (b <= only.size()) {
            const size_t e = std::min(only.find(',', b), only.size());
            if (title.find(only.substr(b, e - b)) != std::string::npos) return false;
            b = e + 1;
        }
        return true;
    };
    std::printf("threads %d; oneDNN %s; OpenBLAS %s (core %s)\n", threads, bl.dnnl ? "loaded" : "absent",
                bl.blas ? "loaded" : "absent", bl.blas_core);
    Rng rng(5);
    const auto rnd = [&](int64_t n) {
        std::vector<float> v(static_cast<size_t>(n));
        for (auto& x : v) x = rng.uniform(-1.0f, 1.0f);
        return v;
    };
    // Plain shapes: ours vs the baselines (X m x k times W; W as k x n, and W^T stored n x k, nn.Linear).
    struct Shape { int64_t m, k, n; bool tb; };
    const Shape shapes[] = {{64, 64, 64, false}, {128, 128, 128, false}, {1, 4096, 4096, false}, {8, 4096, 4096, false}, {32, 4096, 11008, false},
                            {8, 4096, 4096, true}, {32, 4096, 11008, true}, {64, 4096, 4096, false},
                            {2048, 2048, 2048, false}, {4096, 1024, 4096, false}, {512, 4096, 11008, false}};
    for (const Shape& s : shapes) {
        char title[160];
        std::snprintf(title, sizeof title, "%lldx%lldx%lld %s (m x k x n)", static_cast<long long>(s.m),
                      static_cast<long long>(s.k), static_cast<long long>(s.n), s.tb ? "NT" : "NN");
        if (skip(title)) continue;
        const std::vector<float> a = rnd(s.m * s.k), b = rnd(s.k * s.n);
        // A copy of B per baseline: a variant run after another that read the same B would find part of it in L3.
        const std::vector<float> b_dnnl = b, b_blas = b;
        std::vector<float> c(static_cast<size_t>(s.m * s.n));
        GemmProblem g;
        g.m = s.m;
        g.n = s.n;
        g.k = s.k;
        g.trans_b = s.tb;
        g.a = a.data();
        g.lda = s.k;
        g.b = b.data();
        g.ldb = s.tb ? s.k : s.n;
        g.c = c.data();
        g.ldc = s.n;
        std::vector<Variant> vs;
        vs.push_back({"shardwise", [&] { sw::cpu::gemm(g, Kernel::Auto, pool); }});
        if (bl.dnnl)
            vs.push_back({"onednn", [&] {
                              bl.dnnl('N', s.tb ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a.data(), s.k, b_dnnl.data(), g.ldb, 0.0f,
                                      c.data(), s.n);
                          }});
        if (bl.blas)
            vs.push_back({"openblas", [&] {
                              bl.blas(101, 111, s.tb ? 112 : 111, static_cast<int>(s.m), static_cast<int>(s.n),
                                      static_cast<int>(s.k), 1.0f, a.data(), static_cast<int>(s.k), b_blas.data(),
                                      static_cast<int>(g.ldb), 0.0f, c.data(), static_cast<int>(s.n));
                          }});
        compare(title, vs, rounds, s.m * s.n * s.k > 1e9 ? 150.0 : s.m * s.n * s.k < 1e7 ? 2.0 : 40.0);
    }
    // The sharded GEMM of virtual ranks (bench/MainJob.cs shapes): p column shards of W (k x n_r each, uneven),
    // C = column blocks of one Y (ldc = N): one gemm_grouped call, the p gemm calls one after the other, and the
    // unsharded GEMM.
    struct Sh { int64_t m, k, n; };
    const Sh shs[] = {{512, 1024, 1024}, {1024, 2048, 2048}, {2048, 2048, 2048}, {2048, 4096, 1000},
                      {256, 1024, 1030}, {1, 4096, 4096}};
    for (const Sh& s : shs) {
        for (int p : {2, 4, 8}) {
            char title[160];
            std::snprintf(title, sizeof title, "sharded %lldx%lldx%lld p=%d", static_cast<long long>(s.m),
                          static_cast<long long>(s.k), static_cast<long long>(s.n), p);
            if (skip(title)) continue;
            const std::vector<float> x = rnd(s.m * s.k), w = rnd(s.k * s.n);
            std::vector<float> y(static_cast<size_t>(s.m * s.n));
            std::vector<std::vector<float>> shards;
            std::vector<GemmProblem> ps;
            int64_t col = 0;
            for (int r = 0; r < p; ++r) {
                const int64_t nr = s.n / p + (r < s.n % p ? 1 : 0);
                std::vector<float> sh(static_cast<size_t>(s.k * nr));
                for (int64_t q = 0; q < s.k; ++q)
                    std::memcpy(sh.data() + q * nr, w.data() + q * s.n + col, sizeof(float) * static_cast<size_t>(nr));
                shards.push_back(std::move(sh));
                GemmProblem g;
                g.m = s.m;
                g.n = nr;
                g.k = s.k;
                g.a = x.data();
                g.lda = s.k;
                g.ldb = nr;
                g.c = y.data() + col;
                g.ldc = s.n;
                ps.push_back(g);
                col += nr;
            }
            for (int r = 0; r < p; ++r) ps[static_cast<size_t>(r)].b = shards[static_cast<size_t>(r)].data();
            GemmProblem full;
            full.m = s.m;
            full.n = s.n;
            full.k = s.k;
            full.a = x.data();
            full.lda = s.k;
            full.b = w.data();
            full.ldb = s.n;
            full.c = y.data();
            full.ldc = s.n;
            std::vector<Variant> vs;
            vs.push_back({"unsharded", [&] { sw::cpu::gemm(full, Kernel::Auto, pool); }});
            vs.push_back({"grouped", [&] { sw::cpu::gemm_grouped(ps.data(), p, Kernel::Auto, pool); }});
            vs.push_back({"one by one", [&] {
                              for (auto& g : ps) sw::cpu::gemm(g, Kernel::Auto, pool);
                          }});
            compare(title, vs, rounds, 60.0);
        }
    }
    return 0;
}

#ifdef SW_GEMM_TUNING
// --tune (a build of this file and the driver with -DSW_GEMM_TUNING, by hand): driver settings compared interleaved
// on the skinny shapes, oneDNN beside them. Each variant is "panels/inplace" (g_tune_*).
}  // namespace
namespace sw::cpu {
extern int g_tune_stream_panels, g_tune_inplace_rows;
}
namespace {
int tune_main(int argc, char** argv) {
    int threads = 2, rounds = 11;
    std::vector<std::pair<int, int>> settings;
    std::vector<std::array<int64_t, 5>> shapes;  // m, k, n, tb, input type (0 f32, 1 bf16, 2 f16)
    for (int i = 2; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (!std::strcmp(argv[i], "--set") && i + 1 < argc) {
            int a = 0, b = 0;
            std::sscanf(argv[++i], "%d/%d", &a, &b);
            settings.push_back({a, b});
        } else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
            long long m = 0, k = 0, n = 0;
            char t = 'N', ty[8] = "f32";
            std::sscanf(argv[++i], "%lldx%lldx%lld%c:%7s", &m, &k, &n, &t, ty);
            shapes.push_back({m, k, n, t == 'T' ? 1 : 0, !std::strcmp(ty, "bf16") ? 1 : !std::strcmp(ty, "f16") ? 2 : 0});
        }
    }
    ThreadPool pool(threads);
    Baselines bl(threads);
    Rng rng(9);
    for (const auto& sh : shapes) {
        const int64_t m = sh[0], k = sh[1], n = sh[2];
        const bool tb = sh[3] != 0;
        std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n)), c(static_cast<size_t>(m * n));
        for (auto& x : a) x = rng.uniform(-1, 1);
        for (auto& x : b) x = rng.uniform(-1, 1);
        GemmProblem g;
        g.m = m; g.n = n; g.k = k; g.trans_b = tb;
        g.a = a.data(); g.lda = k; g.b = b.data(); g.ldb = tb ? k : n; g.c = c.data(); g.ldc = n;
        std::vector<uint16_t> a16(a.size()), b16(b.size());
        if (sh[4] != 0) {  // 16-bit inputs (the same values rounded), C in f32
            for (size_t q = 0; q < a.size(); ++q) a16[q] = sw_ref_round16(sh[4] == 1, a[q]);
            for (size_t q = 0; q < b.size(); ++q) b16[q] = sw_ref_round16(sh[4] == 1, b[q]);
            g.a = a16.data();
            g.b = b16.data();
            g.a_type = g.b_type = sh[4] == 1 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
        }
        std::vector<Variant> vs;
        if (bl.dnnl)
            vs.push_back({"onednn", [&] { bl.dnnl('N', tb ? 'T' : 'N', m, n, k, 1.0f, a.data(), k, b.data(), g.ldb, 0.0f, c.data(), n); }});
        for (auto st : settings) {
            vs.push_back({std::to_string(st.first) + "/" + std::to_string(st.second), [&, st] {
                              sw::cpu::g_tune_stream_panels = st.first;
                              sw::cpu::g_tune_inplace_rows = st.second;
                              sw::cpu::gemm(g, Kernel::Auto, pool);
                          }});
        }
        char title[96];
        std::snprintf(title, sizeof title, "%lldx%lldx%lld %s %s (oneDNN: f32 sgemm)", static_cast<long long>(m),
                      static_cast<long long>(k), static_cast<long long>(n), tb ? "NT" : "NN",
                      sh[4] == 0 ? "f32" : sh[4] == 1 ? "bf16" : "f16");
        compare(title, vs, rounds, 30.0);
    }
    return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return bench_main(argc, argv);
#ifdef SW_GEMM_TUNING
    if (argc > 1 && std::strcmp(argv[1], "--tune") == 0) return tune_main(argc, argv);
#endif
    std::unique_ptr<ThreadPool> p1(new ThreadPool(1)), p2(new ThreadPool(2)), p3(new ThreadPool(3));
    ThreadPool* pools[3] = {p1.get(), p2.get(), p3.get()};
    check_grouped(pools);
    check_grouped_not_shared(*p2);
    check_skinny(pools);
    check_small_b(pools);
    check_walk(pools);
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
