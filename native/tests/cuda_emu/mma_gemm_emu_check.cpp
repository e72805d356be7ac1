// Runs the hand-written tensor-core GEMM kernel (native/src/cuda/gemm_mma_kernel.cuh, the very source that nvcc
// compiles into the plugin) on the host emulation of cuda_emu.h, and checks it against a float64 reference:
// bf16 and f16, all four transpose combinations, fp32 or 16-bit C, alpha / beta / bias / GeLU, shapes with partial
// tiles in m, n and k, the cp.async (vector) and element-by-element load paths (which must agree bit for bit),
// padding of C left untouched, every matrix against a guard page. The emulator also reports races, reads of
// unlanded cp.async data and uninitialised shared memory (see cuda_emu.h); any finding fails the case.
// First, self-checks prove that the emulator does report such bugs in small planted kernels.
//
// This proves the kernel's index math, pipeline, edges and fragment layouts (as the PTX ISA specifies them) on
// a machine without a GPU. It does not replace running it on a GPU (cuda_check, docs/gpu-validation.md).
#define SW_CUDA_HOST_EMULATION 1
#include "cuda_emu.h"

#include "cuda/gemm_mma_kernel.cuh"
#include "cuda/gemm_wgmma_kernel.cuh"
#include "emu_test_util.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using namespace sw::cuda::mma_detail;
using emu_test::Guarded;

namespace {

int g_failures = 0;

void report(bool ok, const std::string& what, const std::vector<std::string>& details = {}) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) {
        ++g_failures;
        for (const auto& d : details) std::printf("       %s\n", d.c_str());
    }
}

// ------------------------------------------------------------------------------------------ self-checks
bool any_contains(const std::vector<std::string>& v, const char* what) {
    for (const auto& s : v)
        if (s.find(what) != std::string::npos) return true;
    return false;
}

void self_checks() {
    alignas(16) static uint16_t global_src[64 * 8];
    for (size_t i = 0; i < 64 * 8; ++i) global_src[i] = static_cast<uint16_t>(i * 7 + 1);
    sw::emu::register_global(global_src, sizeof global_src);

    // 1. Reading a cp.async destination before cp.async.wait_group.
    auto early = sw::emu::launch(dim3(1), dim3(64), [] {
        __shared__ __align__(16) uint16_t tile[64 * 8];
        const int t = static_cast<int>(threadIdx.x);
        const uint32_t dst = sw::emu::shared_address(&tile[t * 8]);
        sw::emu::cp_async(dst, &global_src[t * 8], 16, 16);
        sw::emu::cp_async_commit();
        (void)sw::emu::ld_shared<uint16_t>(dst); // bug: no wait
        sw::emu::cp_async_wait(0);
    });
    report(any_contains(early, "in flight"), "emulator reports a read of a cp.async destination before the wait", early);

    // 2. A read of another thread's shared write without __syncthreads.
    auto race = sw::emu::launch(dim3(1), dim3(64), [] {
        __shared__ __align__(16) uint16_t s[64];
        const int t = static_cast<int>(threadIdx.x);
        sw::emu::st_shared<uint16_t>(sw::emu::shared_address(&s[t]), static_cast<uint16_t>(t));
        __syncthreads();
        sw::emu::st_shared<uint16_t>(sw::emu::shared_address(&s[t]), static_cast<uint16_t>(t + 1));
        (void)sw::emu::ld_shared<uint16_t>(sw::emu::shared_address(&s[(t + 1) % 64])); // bug: no barrier
    });
    report(any_contains(race, "race"), "emulator reports a shared-memory race", race);

    // 3. Uninitialised shared memory (shared memory starts undefined in every block).
    auto uninit = sw::emu::launch(dim3(2), dim3(32), [] {
        __shared__ __align__(16) uint32_t s[32];
        const int t = static_cast<int>(threadIdx.x);
        if (blockIdx.x == 0) sw::emu::st_shared<uint32_t>(sw::emu::shared_address(&s[t]), 1u);
        __syncthreads();
        (void)sw::emu::ld_shared<uint32_t>(sw::emu::shared_address(&s[t])); // block 1 never wrote it
    });
    report(any_contains(uninit, "uninitialised"), "emulator reports a read of uninitialised shared memory", uninit);

    // 4. __syncthreads reached by half of the block: reported as a deadlock, no hang.
    auto divergent = sw::emu::launch(dim3(1), dim3(64), [] {
        if (threadIdx.x < 32) __syncthreads();
    });
    report(any_contains(divergent, "deadlock") || any_contains(divergent, "exited"),
           "emulator reports a barrier not reached by the whole block", divergent);

    // 5. A clean kernel has no findings (cp.async, wait, barrier, neighbour read).
    auto clean = sw::emu::launch(dim3(1), dim3(64), [] {
        __shared__ __align__(16) uint16_t tile[64 * 8];
        const int t = static_cast<int>(threadIdx.x);
        sw::emu::cp_async(sw::emu::shared_address(&tile[t * 8]), &global_src[t * 8], 16, 10);
        sw::emu::cp_async_commit();
        sw::emu::cp_async_wait(0);
        __syncthreads();
        const uint16_t v = sw::emu::ld_shared<uint16_t>(sw::emu::shared_address(&tile[((t + 1) % 64) * 8 + 7]));
        if (v != 0) std::printf("zero fill: got %u\n", v); // byte 14..15 of a 10-byte copy is zero-filled
    });
    report(clean.empty(), "emulator runs a correct cp.async kernel without findings", clean);
    sw::emu::clear_globals();
}

// ------------------------------------------------------------------------------------------ the GEMM cases
struct Case {
    bool bf16, ta, tb;
    int64_t m, n, k;
    bool c_f32, bias, gelu;
    float alpha, beta;
};

std::string describe(const Case& c) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s %c%c m=%lld n=%lld k=%lld C=%s alpha=%g beta=%g%s%s", c.bf16 ? "bf16" : "f16",
                  c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', static_cast<long long>(c.m), static_cast<long long>(c.n),
                  static_cast<long long>(c.k), c.c_f32 ? "f32" : (c.bf16 ? "bf16" : "f16"), c.alpha, c.beta,
                  c.bias ? " +bias" : "", c.gelu ? " +gelu" : "");
    return buf;
}

double gelu_ref(double x) {
    return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

bool g_wgmma = false; // which kernel run_kernel launches: mma.sync or wgmma

template <bool kBf16, bool kTA, bool kTB> void run_kernel(const Params& p, std::vector<std::string>& findings) {
    if (g_wgmma)
        findings = sw::emu::launch(mma_grid(p.m, p.n), dim3(kThreads), [&p] { wgmma_gemm_kernel<kBf16, kTA, kTB>(p); });
    else
        findings = sw::emu::launch(mma_grid(p.m, p.n), dim3(kThreads), [&p] { mma_gemm_kernel<kBf16, kTA, kTB>(p); });
}

void run_any(bool bf16, bool ta, bool tb, const Params& p, std::vector<std::string>& f) {
    if (bf16) {
        if (!ta && !tb) run_kernel<true, false, false>(p, f);
        else if (!ta && tb) run_kernel<true, false, true>(p, f);
        else if (ta && !tb) run_kernel<true, true, false>(p, f);
        else run_kernel<true, true, true>(p, f);
    } else {
        if (!ta && !tb) run_kernel<false, false, false>(p, f);
        else if (!ta && tb) run_kernel<false, false, true>(p, f);
        else if (ta && !tb) run_kernel<false, true, false>(p, f);
        else run_kernel<false, true, true>(p, f);
    }
}

// One run of a case; `vector_path` picks aligned operands with ld % 8 == 0 (cp.async) or operands that force the
// element path (odd leading dimension, or a base 2 bytes off 16-byte alignment). Returns C's bits (m x ldc).
std::vector<uint32_t> run_case(const Case& c, bool vector_path, std::mt19937_64& rng, bool& ok) {
    const auto to16 = [&](float v) { return c.bf16 ? sw::emu::float_to_bf16(v) : sw::emu::float_to_f16(v); };
    const auto from16 = [&](uint16_t b) { return c.bf16 ? sw::emu::bf16_to_float(b) : sw::emu::f16_to_float(b); };
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);

    const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    // Element path: A keeps a leading dimension that is a multiple of 8 but sits 2 bytes off 16-byte alignment;
    // B gets a leading dimension that is not a multiple of 8. Either alone rules out cp.async for that operand.
    const int64_t lda = (a_cols + 7) / 8 * 8 + 8 * (c.k % 2);
    const int64_t ldb = vector_path ? (b_cols + 7) / 8 * 8 : (b_cols % 8 == 0 ? b_cols + 3 : b_cols);
    const int64_t ldc = c.n + 3;
    const size_t a_bytes = static_cast<size_t>(a_rows * lda) * 2, b_bytes = static_cast<size_t>(b_rows * ldb) * 2;
    const size_t a_slack = vector_path ? 0 : 2, b_slack = 0;
    Guarded ga(a_bytes, a_slack), gb(b_bytes, b_slack);
    const size_t c_elem = c.c_f32 ? 4 : 2;
    Guarded gc(static_cast<size_t>(c.m * ldc) * c_elem, 0), gbias(static_cast<size_t>(c.n) * c_elem, 0);
    sw::emu::register_global(ga.as<void>(), ga.bytes());
    sw::emu::register_global(gb.as<void>(), gb.bytes());

    std::vector<double> A(static_cast<size_t>(c.m * c.k)), B(static_cast<size_t>(c.k * c.n));
    auto* a16 = ga.as<uint16_t>();
    auto* b16 = gb.as<uint16_t>();
    for (int64_t r = 0; r < a_rows; ++r)
        for (int64_t q = 0; q < lda; ++q) {
            const uint16_t bits = q < a_cols ? to16(uni(rng)) : to16(NAN); // padding: NaN, must not be used
            a16[r * lda + q] = bits;
            if (q < a_cols) (c.ta ? A[static_cast<size_t>(q * c.k + r)] : A[static_cast<size_t>(r * c.k + q)]) = from16(bits);
        }
    for (int64_t r = 0; r < b_rows; ++r)
        for (int64_t q = 0; q < ldb; ++q) {
            const uint16_t bits = q < b_cols ? to16(uni(rng)) : to16(NAN);
            b16[r * ldb + q] = bits;
            if (q < b_cols) (c.tb ? B[static_cast<size_t>(q * c.n + r)] : B[static_cast<size_t>(r * c.n + q)]) = from16(bits);
        }
    // C: random when beta reads it, else NaN (must be overwritten without being read); padding columns: a sentinel.
    std::vector<double> C0(static_cast<size_t>(c.m * c.n)), bias(static_cast<size_t>(c.n), 0.0);
    auto put_c = [&](int64_t idx, float v) -> double {
        if (c.c_f32) {
            gc.as<float>()[idx] = v;
            return v;
        }
        gc.as<uint16_t>()[idx] = to16(v);
        return from16(to16(v));
    };
    const float sentinel = 12345.0f;
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
            const float v = j >= c.n ? sentinel : (c.beta != 0.0f ? uni(rng) : NAN);
            const double stored = put_c(i * ldc + j, v);
            if (j < c.n) C0[static_cast<size_t>(i * c.n + j)] = stored;
        }
    if (c.bias)
        for (int64_t j = 0; j < c.n; ++j) {
            const float v = uni(rng);
            if (c.c_f32) gbias.as<float>()[j] = v, bias[static_cast<size_t>(j)] = v;
            else gbias.as<uint16_t>()[j] = to16(v), bias[static_cast<size_t>(j)] = from16(to16(v));
        }

    sw::GemmProblem d;
    d.a_type = d.b_type = c.bf16 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
    d.c_type = d.bias_type = c.c_f32 ? SW_DTYPE_F32 : d.a_type;
    d.trans_a = c.ta;
    d.trans_b = c.tb;
    d.m = c.m, d.n = c.n, d.k = c.k;
    d.alpha = c.alpha, d.beta = c.beta;
    d.a = a16, d.lda = lda;
    d.b = b16, d.ldb = ldb;
    d.c = gc.as<void>(), d.ldc = ldc;
    d.bias = c.bias ? gbias.as<void>() : nullptr;
    d.epilogue = c.gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
    const Params p = make_params(d);
    std::vector<std::string> problems;
    if ((p.vec_a != 0) != vector_path || (p.vec_b != 0) != vector_path)
        problems.push_back(std::string("the case did not select the ") + (vector_path ? "cp.async" : "element") +
                           " load path (vec_a=" + std::to_string(p.vec_a) + ", vec_b=" + std::to_string(p.vec_b) + ")");

    std::vector<std::string> findings;
    run_any(c.bf16, c.ta, c.tb, p, findings);
    sw::emu::clear_globals();
    for (auto& f : findings) problems.push_back("emulator: " + f);

    // float64 reference; tolerance: fp32 accumulation (a few ulps of sum |a||b| per term) + the output rounding.
    const double out_ulp = c.c_f32 ? std::ldexp(1.0, -23) : (c.bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11));
    std::vector<uint32_t> bits(static_cast<size_t>(c.m * ldc));
    int64_t bad = 0;
    for (int64_t i = 0; i < c.m; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
            const int64_t idx = i * ldc + j;
            double got;
            if (c.c_f32) {
                std::memcpy(&bits[static_cast<size_t>(idx)], &gc.as<float>()[idx], 4);
                got = gc.as<float>()[idx];
            } else {
                bits[static_cast<size_t>(idx)] = gc.as<uint16_t>()[idx];
                got = from16(gc.as<uint16_t>()[idx]);
            }
            if (j >= c.n) {
                if (got != static_cast<double>(c.c_f32 ? sentinel : from16(to16(sentinel))) && bad++ < 5)
                    problems.push_back("C padding (" + std::to_string(i) + ", " + std::to_string(j) + ") was written");
                continue;
            }
            double acc = 0.0, mag = 0.0;
            for (int64_t q = 0; q < c.k; ++q) {
                const double t = A[static_cast<size_t>(i * c.k + q)] * B[static_cast<size_t>(q * c.n + j)];
                acc += t;
                mag += std::fabs(t);
            }
            double v = c.alpha * acc;
            if (c.beta != 0.0f) v += c.beta * C0[static_cast<size_t>(i * c.n + j)];
            v += bias[static_cast<size_t>(j)];
            if (c.gelu) v = gelu_ref(v);
            const double tol = 8.0 * std::ldexp(1.0, -24) * (std::fabs(c.alpha) * mag * static_cast<double>(c.k / 16 + 2) +
                                                             std::fabs(c.beta) + 2.0) +
                               out_ulp * std::fabs(v) + 1e-30;
            if (!(std::fabs(got - v) <= tol) && bad++ < 5) {
                char buf[160];
                std::snprintf(buf, sizeof buf, "C(%lld, %lld) = %.9g, expected %.9g (tolerance %.3g)",
                              static_cast<long long>(i), static_cast<long long>(j), got, v, tol);
                problems.push_back(buf);
            }
        }
    if (bad > 5) problems.push_back(std::to_string(bad - 5) + " more wrong elements");
    ok = problems.empty();
    report(ok, std::string(g_wgmma ? "wgmma " : "mma.sync ") + describe(c) +
                   (vector_path ? " [cp.async path]" : " [element path]"), problems);
    return bits;
}

} // namespace

int main() {
    self_checks();

    // Shapes: a single element; one exact tile; partial tiles everywhere (k % 8 != 0: short cp.async chunks);
    // several row blocks; several column blocks; many k tiles; k below one 16-wide mma step; a single row over
    // several column blocks (the GEMV-like decode step); one past a tile in every dimension.
    const int64_t shapes[][3] = {{1, 1, 1},    {128, 128, 32}, {131, 133, 45}, {257, 20, 100}, {64, 300, 70},
                                 {40, 50, 200}, {17, 8, 9},    {1, 300, 64},   {129, 129, 33}};
    std::mt19937_64 rng(0x5eed2026u ^ static_cast<uint64_t>(std::random_device{}()));
    int cases = 0, variant = 0;
    for (int dtype = 0; dtype < 2; ++dtype)
        for (int tr = 0; tr < 4; ++tr)
            for (const auto& s : shapes) {
                ++variant;
                Case c{dtype == 0, (tr & 1) != 0, (tr & 2) != 0, s[0], s[1], s[2],
                       // GeLU on variants 1 and 2 mod 4: with either C type (c_f32 alternates with the parity)
                       /*c_f32=*/variant % 2 == 0, /*bias=*/variant % 3 != 0, /*gelu=*/variant % 4 == 1 || variant % 4 == 2,
                       /*alpha=*/variant % 5 == 0 ? -0.75f : 1.0f, /*beta=*/variant % 3 == 2 ? 0.5f : 0.0f};
                bool ok_vec = false, ok_elem = false;
                const uint64_t seed = rng();
                std::mt19937_64 r1(seed), r2(seed); // the same data for both paths
                const auto vec = run_case(c, true, r1, ok_vec);
                const auto elem = run_case(c, false, r2, ok_elem);
                // The wgmma kernel on the same data: the emulation sums each 16-wide k step the same way, so C must
                // equal the mma.sync kernel's bit for bit.
                std::mt19937_64 r3(seed);
                g_wgmma = true;
                bool ok_wg = false;
                const auto wg = run_case(c, true, r3, ok_wg);
                g_wgmma = false;
                ++cases;
                // The same data (the paths differ only in leading dimensions / alignment): the same accumulation
                // order, so C must be bit-identical inside m x n.
                bool same = true;
                const int64_t ldc = c.n + 3;
                for (int64_t i = 0; i < c.m && same; ++i)
                    for (int64_t j = 0; j < c.n; ++j)
                        if (vec[static_cast<size_t>(i * ldc + j)] != elem[static_cast<size_t>(i * ldc + j)]) {
                            same = false;
                            break;
                        }
                report(same, describe(c) + " cp.async and element paths agree bit for bit");
                bool same_wg = true;
                for (int64_t i = 0; i < c.m && same_wg; ++i)
                    for (int64_t j = 0; j < c.n; ++j)
                        if (vec[static_cast<size_t>(i * ldc + j)] != wg[static_cast<size_t>(i * ldc + j)]) {
                            same_wg = false;
                            break;
                        }
                report(same_wg, describe(c) + " wgmma and mma.sync kernels agree bit for bit");
            }
    std::printf("mma_gemm_emu_check: %d GEMM cases (mma.sync x2 load paths, wgmma), %d failures\n", cases, g_failures);
    return g_failures == 0 ? 0 : 1;
}
