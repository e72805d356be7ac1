// Checks of the CPU GEMM (sw::cpu::sgemm) and of the CPU thread pool (sw::cpu::ThreadPool).
//
//  - correctness against a float64 reference (relative tolerance scaled by k) for all four transpose
//    combinations, alpha / beta (beta == 0 with a NaN-poisoned C, beta != 0), bias, GeLU, odd shapes,
//    leading dimensions larger than the minimum, k == 0, every supported kernel, pools of 1, 2 and 3
//    threads; nothing outside the m x n block of C is written;
//  - the determinism contract, bit for bit: a column block [j0, j1) computed as its own GEMM equals
//    that block of the full GEMM, likewise a row block, and results are equal across thread counts;
//  - concurrent sgemm / parallel_for calls from 4 threads on one pool;
//  - ThreadPool basics: every index runs exactly once, n == 0, exceptions, nested calls.
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "check_internal.h"
#include "cpu/gemm.h"
#include "cpu/thread_pool.h"

using sw::cpu::Kernel;
using sw::GemmProblem;
using sw::cpu::ThreadPool;

namespace {



// Small deterministic generator (the checks must not depend on the standard library's engines).

// One GEMM problem with its own storage (padded leading dimensions, sentinels in the padding).
struct Problem {
    bool ta = false, tb = false;
    int64_t m = 0, n = 0, k = 0;
    int64_t lda = 0, ldb = 0, ldc = 0;
    float alpha = 1.0f, beta = 0.0f;
    bool use_bias = false, gelu = false;
    std::vector<float> a, b, c0, bias;

    GemmProblem args(float* c) const {
        GemmProblem g;
        g.trans_a = ta;
        g.trans_b = tb;
        g.m = m;
        g.n = n;
        g.k = k;
        g.alpha = alpha;
        g.a = a.data();
        g.lda = lda;
        g.b = b.data();
        g.ldb = ldb;
        g.beta = beta;
        g.c = c;
        g.ldc = ldc;
        g.bias = use_bias ? bias.data() : nullptr;
        g.epilogue = gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
        return g;
    }
    // op(A)[i][p], op(B)[p][j]
    float opa(int64_t i, int64_t p) const { return ta ? a[p * lda + i] : a[i * lda + p]; }
    float opb(int64_t p, int64_t j) const { return tb ? b[j * ldb + p] : b[p * ldb + j]; }
};

constexpr float kSentinel = -12345.678f;

Problem make_problem(Rng& rng, bool ta, bool tb, int64_t m, int64_t n, int64_t k, bool pad) {
    Problem P;
    P.ta = ta;
    P.tb = tb;
    P.m = m;
    P.n = n;
    P.k = k;
    const int64_t ar = ta ? k : m, ac = ta ? m : k; // stored A: ar x ac
    const int64_t br = tb ? n : k, bc = tb ? k : n;
    P.lda = std::max<int64_t>(ac, 1) + (pad ? rng.range(1, 9) : 0);
    P.ldb = std::max<int64_t>(bc, 1) + (pad ? rng.range(1, 9) : 0);
    P.ldc = n + (pad ? rng.range(1, 9) : 0);
    P.a.assign(static_cast<size_t>(std::max<int64_t>(ar, 1) * P.lda), 0.0f);
    P.b.assign(static_cast<size_t>(std::max<int64_t>(br, 1) * P.ldb), 0.0f);
    for (auto& x : P.a) x = rng.uniform(-1.0f, 1.0f);
    for (auto& x : P.b) x = rng.uniform(-1.0f, 1.0f);
    P.c0.assign(static_cast<size_t>(m * P.ldc), kSentinel);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) P.c0[i * P.ldc + j] = rng.uniform(-1.0f, 1.0f);
    P.bias.resize(static_cast<size_t>(n));
    for (auto& x : P.bias) x = rng.uniform(-0.5f, 0.5f);
    return P;
}

// beta == 0: poison C with NaN (must never be read).
void poison_c(Problem& P) {
    for (int64_t i = 0; i < P.m; ++i)
        for (int64_t j = 0; j < P.n; ++j) P.c0[i * P.ldc + j] = std::nanf("");
}

double gelu_ref(double x) {
    return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

// Compares c (the result of sgemm on a copy of P.c0) with a float64 reference. Returns true if ok.
bool check_reference(const Problem& P, const std::vector<float>& c, const char* what) {
    const double eps = std::ldexp(1.0, -24);
    int bad = 0;
    for (int64_t i = 0; i < P.m; ++i) {
        for (int64_t j = 0; j < P.n; ++j) {
            double s = 0.0, sabs = 0.0;
            for (int64_t p = 0; p < P.k; ++p) {
                const double prod = static_cast<double>(P.opa(i, p)) * static_cast<double>(P.opb(p, j));
                s += prod;
                sabs += std::fabs(prod);
            }
            double v = static_cast<double>(P.alpha) * s;
            double bound = std::fabs(P.alpha) * sabs;
            if (P.beta != 0.0f) {
                v += static_cast<double>(P.beta) * P.c0[i * P.ldc + j];
                bound += std::fabs(P.beta * P.c0[i * P.ldc + j]);
            }
            if (P.use_bias) {
                v += P.bias[j];
                bound += std::fabs(P.bias[j]);
            }
            // Rounding of k products and sums, of alpha / beta / bias: relative error ~ (k + 4) eps.
            double tol = 2.0 * (static_cast<double>(P.k) + 4.0) * eps * bound + 1e-30;
            double ref = v;
            if (P.gelu) {
                ref = gelu_ref(v);
                // |gelu'| <= 1.13; plus the kernels' own GeLU approximation error.
                tol = 1.13 * tol + 1e-6 * std::fabs(ref) + 1e-7;
            }
            const double got = c[i * P.ldc + j];
            if (!(std::fabs(got - ref) <= tol)) {
                if (bad++ < 3)
                    std::printf("  %s: C[%lld][%lld] = %.9g, reference %.9g (tol %.3g)\n", what,
                                static_cast<long long>(i), static_cast<long long>(j), got, ref, tol);
            }
        }
        // Padding of the row must be untouched.
        for (int64_t j = P.n; j < P.ldc; ++j) {
            if (c[i * P.ldc + j] != kSentinel) {
                if (bad++ < 3)
                    std::printf("  %s: wrote outside C at [%lld][%lld]\n", what, static_cast<long long>(i),
                                static_cast<long long>(j));
            }
        }
    }
    return bad == 0;
}

std::vector<float> run(const Problem& P, Kernel kern, ThreadPool& pool) {
    std::vector<float> c = P.c0;
    sw::cpu::sgemm(P.args(c.data()), kern, pool);
    return c;
}

bool same_bits(const float* x, const float* y, int64_t rows, int64_t cols, int64_t ldx, int64_t ldy) {
    for (int64_t i = 0; i < rows; ++i)
        if (std::memcmp(x + i * ldx, y + i * ldy, sizeof(float) * static_cast<size_t>(cols)) != 0) return false;
    return true;
}

std::string describe(const Problem& P, Kernel kern, int threads) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s %c%c m=%lld n=%lld k=%lld lda=%lld ldb=%lld ldc=%lld alpha=%g beta=%g bias=%d gelu=%d threads=%d",
                  sw::cpu::kernel_name(kern), P.ta ? 'T' : 'N', P.tb ? 'T' : 'N', static_cast<long long>(P.m),
                  static_cast<long long>(P.n), static_cast<long long>(P.k), static_cast<long long>(P.lda),
                  static_cast<long long>(P.ldb), static_cast<long long>(P.ldc), P.alpha, P.beta, P.use_bias ? 1 : 0,
                  P.gelu ? 1 : 0, threads);
    return buf;
}

// Column block [j0, j1) as its own GEMM must equal the block of the full result, bit for bit.
bool check_column_block(const Problem& P, const std::vector<float>& full, Kernel kern, ThreadPool& pool,
                        int64_t j0, int64_t j1) {
    std::vector<float> c = P.c0;
    GemmProblem g = P.args(c.data() + j0);
    g.n = j1 - j0;
    g.b = P.tb ? P.b.data() + j0 * P.ldb : P.b.data() + j0;
    if (g.bias) g.bias = static_cast<const float*>(g.bias) + j0;
    sw::cpu::sgemm(g, kern, pool);
    return same_bits(c.data() + j0, full.data() + j0, P.m, j1 - j0, P.ldc, P.ldc);
}

// Row block [i0, i1) likewise.
bool check_row_block(const Problem& P, const std::vector<float>& full, Kernel kern, ThreadPool& pool,
                     int64_t i0, int64_t i1) {
    std::vector<float> c = P.c0;
    GemmProblem g = P.args(c.data() + i0 * P.ldc);
    g.m = i1 - i0;
    g.a = P.ta ? P.a.data() + i0 : P.a.data() + i0 * P.lda;
    sw::cpu::sgemm(g, kern, pool);
    return same_bits(c.data() + i0 * P.ldc, full.data() + i0 * P.ldc, i1 - i0, P.n, P.ldc, P.ldc);
}

void randomize_epilogue(Rng& rng, Problem& P) {
    switch (rng.range(0, 3)) {
    case 0: P.alpha = 1.0f; P.beta = 0.0f; break;
    case 1: P.alpha = rng.uniform(-2.0f, 2.0f); P.beta = 0.0f; break;
    case 2: P.alpha = 1.0f; P.beta = 1.0f; break;
    default: P.alpha = rng.uniform(-2.0f, 2.0f); P.beta = rng.uniform(-1.5f, 1.5f); break;
    }
    P.use_bias = rng.range(0, 1) == 1;
    P.gelu = rng.range(0, 2) == 0;
    if (P.beta == 0.0f) poison_c(P);
}

// The full battery for one kernel.
void check_kernel(Kernel kern, ThreadPool* pools[3]) {
    const int64_t sizes[] = {1, 2, 3, 7, 17, 31, 33, 65, 127, 129, 255, 257};
    const int nsizes = static_cast<int>(sizeof(sizes) / sizeof(sizes[0]));
    Rng rng(1234 + static_cast<int>(kern));
    const bool slow = kern == Kernel::Generic;

    // Shapes: every size along each dimension with the others small, plus random mixes and k == 0.
    std::vector<std::array<int64_t, 3>> shapes;
    for (int s = 0; s < nsizes; ++s) {
        shapes.push_back({sizes[s], 7, 33});
        shapes.push_back({17, sizes[s], 31});
        shapes.push_back({33, 65, sizes[s]});
        shapes.push_back({sizes[s], sizes[(s + 5) % nsizes], sizes[(s + 3) % nsizes]});
    }
    for (int r = 0; r < (slow ? 6 : 16); ++r)
        shapes.push_back({sizes[rng.range(0, nsizes - 1)], sizes[rng.range(0, nsizes - 1)],
                          sizes[rng.range(0, nsizes - 1)]});
    shapes.push_back({1, 1, 1});
    shapes.push_back({1, 1, 0});
    shapes.push_back({5, 37, 0});
    shapes.push_back({129, 65, 0});
    shapes.push_back({1, 300, 257});  // one row (few-row kernel), several k blocks
    shapes.push_back({300, 1, 257});
    shapes.push_back({3, 4500, 20});  // n above the NC block: several column blocks in one task
    shapes.push_back({40, 4200, 5});
    shapes.push_back({6, 520, 1100}); // few-row kernel, several k blocks
    if (!slow) {
        shapes.push_back({200, 700, 600});  // several k blocks, several tasks, edge tiles
        shapes.push_back({530, 97, 1100});
    }

    int idx = 0;
    for (const auto& sh : shapes) {
        for (int t = 0; t < 4; ++t) {
            ++idx;
            const bool ta = (t & 1) != 0, tb = (t & 2) != 0;
            const bool pad = (idx % 3) != 0;
            Problem P = make_problem(rng, ta, tb, sh[0], sh[1], sh[2], pad);
            randomize_epilogue(rng, P);
            // Rotate the pool size; every few problems run on all three and compare bits.
            const int pi = idx % 3;
            const std::vector<float> c = run(P, kern, *pools[pi]);
            const std::string d = describe(P, kern, pools[pi]->size());
            CHECK(check_reference(P, c, d.c_str()), "reference mismatch: %s", d.c_str());

            if (idx % 4 == 0 || P.m * P.n * P.k < 20000) {
                for (int q = 0; q < 3; ++q) {
                    if (q == pi) continue;
                    const std::vector<float> c2 = run(P, kern, *pools[q]);
                    CHECK(same_bits(c.data(), c2.data(), P.m, P.n, P.ldc, P.ldc),
                          "result depends on the thread count (%d vs %d): %s", pools[pi]->size(),
                          pools[q]->size(), d.c_str());
                }
            }
            if (P.n > 1) {
                const int64_t j0 = rng.range(0, P.n - 1), j1 = rng.range(j0 + 1, P.n);
                CHECK(check_column_block(P, c, kern, *pools[(pi + 1) % 3], j0, j1),
                      "column block [%lld, %lld) differs from the full GEMM: %s", static_cast<long long>(j0),
                      static_cast<long long>(j1), d.c_str());
                CHECK(check_column_block(P, c, kern, *pools[pi], P.n - 1, P.n),
                      "last column alone differs: %s", d.c_str());
            }
            if (P.m > 1) {
                const int64_t i0 = rng.range(0, P.m - 1), i1 = rng.range(i0 + 1, P.m);
                CHECK(check_row_block(P, c, kern, *pools[(pi + 2) % 3], i0, i1),
                      "row block [%lld, %lld) differs from the full GEMM: %s", static_cast<long long>(i0),
                      static_cast<long long>(i1), d.c_str());
                CHECK(check_row_block(P, c, kern, *pools[pi], i0, i0 + 1), "single row %lld differs: %s",
                      static_cast<long long>(i0), d.c_str());
            }
        }
    }
}

// A large problem: column shards and row shards of a big GEMM, bit for bit (the tensor-parallel use).
void check_shards(Kernel kern, ThreadPool& pool) {
    Rng rng(99);
    for (int t = 0; t < 4; ++t) {
        Problem P = make_problem(rng, (t & 1) != 0, (t & 2) != 0, 300, 256, 700, false);
        P.alpha = 0.5f;
        P.beta = 0.25f;
        P.use_bias = true;
        P.gelu = t == 3;
        const std::vector<float> full = run(P, kern, pool);
        const std::string d = describe(P, kern, pool.size());
        CHECK(check_reference(P, full, d.c_str()), "reference mismatch: %s", d.c_str());
        for (int s = 0; s < 4; ++s) {
            CHECK(check_column_block(P, full, kern, pool, s * 64, s * 64 + 64), "column shard %d: %s", s, d.c_str());
            CHECK(check_row_block(P, full, kern, pool, s * 75, s * 75 + 75), "row shard %d: %s", s, d.c_str());
        }
    }
}

// 4 threads call sgemm concurrently on one pool (like 4 streams of one device); results must equal
// the serial ones bit for bit.
void check_concurrent_sgemm(Kernel kern) {
    ThreadPool pool(2);
    Rng rng(7);
    std::vector<Problem> probs;
    for (int s = 0; s < 4; ++s) {
        Problem P = make_problem(rng, s == 1, s >= 2, 150 + 37 * s, 96 + 50 * s, 200 + 31 * s, s % 2 == 0);
        P.alpha = 1.0f;
        P.beta = s == 0 ? 0.0f : 0.5f;
        P.use_bias = s != 1;
        P.gelu = s == 2;
        probs.push_back(std::move(P));
    }
    std::vector<std::vector<float>> serial;
    for (auto& P : probs) serial.push_back(run(P, kern, pool));
    std::vector<std::vector<float>> conc(4);
    std::vector<std::thread> th;
    for (int s = 0; s < 4; ++s) {
        th.emplace_back([&, s] {
            for (int rep = 0; rep < 5; ++rep) {
                std::vector<float> c = run(probs[static_cast<size_t>(s)], kern, pool);
                if (rep == 0 || c != conc[static_cast<size_t>(s)]) conc[static_cast<size_t>(s)] = std::move(c);
            }
        });
    }
    for (auto& t : th) t.join();
    for (int s = 0; s < 4; ++s) {
        const Problem& P = probs[static_cast<size_t>(s)];
        CHECK(same_bits(serial[static_cast<size_t>(s)].data(), conc[static_cast<size_t>(s)].data(), P.m, P.n,
                        P.ldc, P.ldc),
              "concurrent sgemm %d differs from the serial result (%s)", s, sw::cpu::kernel_name(kern));
    }
}

void check_thread_pool() {
    for (int nt : {1, 2, 3}) {
        ThreadPool pool(nt);
        CHECK(pool.size() == nt, "size() = %d, expected %d", pool.size(), nt);
        // Every index exactly once.
        for (int64_t n : {int64_t(0), int64_t(1), int64_t(2), int64_t(5), int64_t(1000)}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
            for (auto& h : hits) h.store(0);
            pool.parallel_for(n, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); });
            bool ok = true;
            for (auto& h : hits) ok = ok && h.load() == 1;
            CHECK(ok, "parallel_for(%lld) on %d threads did not run every index once", static_cast<long long>(n), nt);
        }
        // Exceptions: first one rethrown, the others still run.
        std::atomic<int> ran{0};
        bool caught = false;
        try {
            pool.parallel_for(20, [&](int64_t i) {
                ran.fetch_add(1);
                if (i % 7 == 3) throw std::runtime_error("task failed");
            });
        } catch (const std::runtime_error& e) {
            caught = std::strcmp(e.what(), "task failed") == 0;
        }
        CHECK(caught, "exception of a task not rethrown (%d threads)", nt);
        CHECK(ran.load() == 20, "only %d of 20 tasks ran after an exception", ran.load());
        // The pool still works afterwards; nested calls run inline instead of deadlocking.
        std::atomic<int64_t> sum{0};
        pool.parallel_for(8, [&](int64_t i) {
            pool.parallel_for(4, [&](int64_t j) { sum.fetch_add(i * 4 + j); });
        });
        CHECK(sum.load() == 31 * 32 / 2, "nested parallel_for sum %lld", static_cast<long long>(sum.load()));
    }
    // Concurrent callers on one pool.
    ThreadPool pool(2);
    std::vector<std::thread> th;
    std::atomic<int> bad{0};
    for (int s = 0; s < 4; ++s) {
        th.emplace_back([&, s] {
            for (int rep = 0; rep < 200; ++rep) {
                const int64_t n = 1 + (rep * 7 + s) % 37;
                std::vector<int> out(static_cast<size_t>(n), 0);
                pool.parallel_for(n, [&](int64_t i) { out[static_cast<size_t>(i)] += static_cast<int>(i) + s; });
                for (int64_t i = 0; i < n; ++i)
                    if (out[static_cast<size_t>(i)] != static_cast<int>(i) + s) bad.fetch_add(1);
            }
        });
    }
    for (auto& t : th) t.join();
    CHECK(bad.load() == 0, "concurrent parallel_for from 4 threads: %d wrong entries", bad.load());
}

void check_kernel_names() {
    Kernel k;
    for (Kernel x : {Kernel::Auto, Kernel::Avx512Bf16, Kernel::Avx512, Kernel::Avx2, Kernel::Generic}) {
        CHECK(sw::cpu::parse_kernel(sw::cpu::kernel_name(x), &k) && k == x, "parse_kernel(kernel_name(%d))",
              static_cast<int>(x));
        const sw::cpu::TileShape ts = sw::cpu::tile_shape(x);
        CHECK(ts.mr > 0 && ts.nr > 0 && ts.mc % ts.mr == 0 && ts.kc > 0 && ts.nc % ts.nr == 0,
              "tile_shape(%s) = %d %d %d %d %d", sw::cpu::kernel_name(x), ts.mr, ts.nr, ts.mc, ts.kc, ts.nc);
    }
    CHECK(!sw::cpu::parse_kernel("avx1024", &k), "parse_kernel accepted an unknown name");
    CHECK(sw::cpu::kernel_supported(Kernel::Generic) && sw::cpu::kernel_supported(Kernel::Auto), "generic unsupported");
    CHECK(sw::cpu::resolve_kernel(Kernel::Auto) != Kernel::Auto, "resolve_kernel(Auto) returned Auto");
    CHECK(std::fabs(sw::cpu::gelu_tanh(1.0f) - 0.841192f) < 1e-5f, "gelu_tanh(1) = %g", sw::cpu::gelu_tanh(1.0f));
}

} // namespace

int main() {
    check_kernel_names();
    check_thread_pool();

    std::unique_ptr<ThreadPool> p1(new ThreadPool(1)), p2(new ThreadPool(2)), p3(new ThreadPool(3));
    ThreadPool* pools[3] = {p1.get(), p2.get(), p3.get()};
    for (Kernel kern : {Kernel::Avx512, Kernel::Avx2, Kernel::Generic}) {
        if (!sw::cpu::kernel_supported(kern)) {
            std::printf("kernel %s: not supported on this CPU, skipped\n", sw::cpu::kernel_name(kern));
            continue;
        }
        const int before = g_failures;
        check_kernel(kern, pools);
        check_shards(kern, *p2);
        check_concurrent_sgemm(kern);
        std::printf("kernel %s: %s\n", sw::cpu::kernel_name(kern), g_failures == before ? "ok" : "FAILED");
    }

    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
