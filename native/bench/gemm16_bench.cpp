// Tuning harness of the CPU 16-bit GEMM (not part of the library or of ctest; built only where oneDNN is found:
// `cmake --build <build> --target gemm16_bench`). oneDNN (libdnnl) is the baseline only.
//
// For each shape C[M, N] = A[M, K] B[K, N] (row-major, no transposes, C in f32) it times, interleaved round by round
// on the same number of threads:
//   ours bf16   sw::cpu::gemm, A and B bf16 (the kernel named by --kernel, default auto)
//   ours f32    sw::cpu::sgemm on the same values in fp32 (the kernel's fp32 micro-kernel)
//   ours wide   (only when the kernel is avx512bf16) the bf16 GEMM under "avx512": widened to fp32 while packing
//   dnnl bf16   oneDNN matmul, bf16 x bf16 -> f32
//   dnnl sgemm  dnnl_sgemm, fp32
// and prints per contender the median time and GFLOP/s, then the ratios computed per round (so that the machine's
// drift cancels): f32 / bf16 (target >= 1.8 at 2048^3), dnnl bf16 / ours bf16 (target >= 1.0), dnnl sgemm / ours
// f32, each as median [min, max] over the rounds.
//
// Usage: gemm16_bench [--threads T] [--rounds R] [--kernel NAME] [--shapes MxKxN,...]
//   default shapes: 1024^3, 2048^3, 32x4096x11008, 512x4096x11008 (M x K x N), 2 threads, 7 rounds.
// oneDNN here uses OpenMP: the program re-executes itself with OMP_NUM_THREADS = T when that is not set.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include <dnnl.h>

#include "cpu/gemm.h"
#include "cpu/gemm_convert.h"
#include "cpu/thread_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

#define DNNL_CHECK(x)                                                              \
    do {                                                                           \
        dnnl_status_t st_ = (x);                                                   \
        if (st_ != dnnl_success) {                                                 \
            std::fprintf(stderr, "oneDNN call failed (%d): %s\n", (int)st_, #x);   \
            std::exit(2);                                                          \
        }                                                                          \
    } while (0)

// oneDNN bf16 x bf16 -> f32 matmul of fixed shape, created once.
struct DnnlMatmul {
    dnnl_engine_t eng = nullptr;
    dnnl_stream_t stream = nullptr;
    dnnl_primitive_t prim = nullptr;
    dnnl_memory_t ma = nullptr, mb = nullptr, mc = nullptr;
    std::string impl;
    DnnlMatmul(int64_t M, int64_t K, int64_t N, void* a, void* b, float* c) {
        DNNL_CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0));
        DNNL_CHECK(dnnl_stream_create(&stream, eng, dnnl_stream_default_flags));
        dnnl_memory_desc_t da, db, dc;
        const dnnl_dims_t sa = {M, K}, sb = {K, N}, sc = {M, N};
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(&da, 2, sa, dnnl_bf16, dnnl_ab));
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(&db, 2, sb, dnnl_bf16, dnnl_ab));
        DNNL_CHECK(dnnl_memory_desc_init_by_tag(&dc, 2, sc, dnnl_f32, dnnl_ab));
        dnnl_matmul_desc_t md;
        DNNL_CHECK(dnnl_matmul_desc_init(&md, &da, &db, nullptr, &dc));
        dnnl_primitive_desc_t pd;
        DNNL_CHECK(dnnl_primitive_desc_create(&pd, &md, nullptr, eng, nullptr));
        const char* name = nullptr;
        DNNL_CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name));
        impl = name ? name : "?";
        DNNL_CHECK(dnnl_primitive_create(&prim, pd));
        DNNL_CHECK(dnnl_primitive_desc_destroy(pd));
        DNNL_CHECK(dnnl_memory_create(&ma, &da, eng, a));
        DNNL_CHECK(dnnl_memory_create(&mb, &db, eng, b));
        DNNL_CHECK(dnnl_memory_create(&mc, &dc, eng, c));
    }
    void run() {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        DNNL_CHECK(dnnl_primitive_execute(prim, stream, 3, args));
        DNNL_CHECK(dnnl_stream_wait(stream));
    }
    ~DnnlMatmul() {
        dnnl_memory_destroy(ma);
        dnnl_memory_destroy(mb);
        dnnl_memory_destroy(mc);
        dnnl_primitive_destroy(prim);
        dnnl_stream_destroy(stream);
        dnnl_engine_destroy(eng);
    }
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Shape { int64_t m, k, n; };

void bench_shape(const Shape& s, int threads, int rounds, sw::cpu::Kernel kernel, sw::cpu::ThreadPool& pool) {
    const int64_t M = s.m, K = s.k, N = s.n;
    std::vector<uint16_t> a16(static_cast<size_t>(M * K)), b16(static_cast<size_t>(K * N));
    std::vector<float> a32(a16.size()), b32(b16.size());
    uint64_t st = 88172645463325252ull;
    auto rnd = [&st]() {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        return static_cast<float>((st >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
    };
    for (size_t i = 0; i < a16.size(); ++i) {
        a16[i] = sw::float_to_bf16(rnd());
        a32[i] = sw::bf16_to_float(a16[i]);
    }
    for (size_t i = 0; i < b16.size(); ++i) {
        b16[i] = sw::float_to_bf16(rnd());
        b32[i] = sw::bf16_to_float(b16[i]);
    }
    std::vector<float> c_bf(static_cast<size_t>(M * N)), c_f32(c_bf.size()), c_dnnl(c_bf.size()), c_sg(c_bf.size()),
        c_w(c_bf.size());
    const bool wide = sw::cpu::resolve_kernel(kernel) == sw::cpu::Kernel::Avx512Bf16;

    sw::GemmProblem g;
    g.m = M;
    g.n = N;
    g.k = K;
    g.a_type = g.b_type = SW_DTYPE_BF16;
    g.a = a16.data();
    g.lda = K;
    g.b = b16.data();
    g.ldb = N;
    g.c = c_bf.data();
    g.ldc = N;
    sw::GemmProblem gf = g;
    gf.a_type = gf.b_type = SW_DTYPE_F32;
    gf.a = a32.data();
    gf.b = b32.data();
    gf.c = c_f32.data();

    DnnlMatmul dm(M, K, N, a16.data(), b16.data(), c_dnnl.data());

    auto t_ours = [&] { auto t0 = Clock::now(); sw::cpu::gemm(g, kernel, pool); return seconds_since(t0); };
    sw::GemmProblem gw = g;
    gw.c = c_w.data();
    auto t_wide = [&] {
        if (!wide) return 0.0;
        auto t0 = Clock::now();
        sw::cpu::gemm(gw, sw::cpu::Kernel::Avx512, pool);
        return seconds_since(t0);
    };
    auto t_f32 = [&] { auto t0 = Clock::now(); sw::cpu::sgemm(gf, kernel, pool); return seconds_since(t0); };
    auto t_dnnl = [&] { auto t0 = Clock::now(); dm.run(); return seconds_since(t0); };
    auto t_sgemm = [&] {
        auto t0 = Clock::now();
        DNNL_CHECK(dnnl_sgemm('N', 'N', M, N, K, 1.0f, a32.data(), K, b32.data(), N, 0.0f, c_sg.data(), N));
        return seconds_since(t0);
    };
    // warm up (page faults, packing buffers, oneDNN's JIT)
    t_ours(); t_f32(); t_dnnl(); t_sgemm(); t_wide();
    // Same inputs: the results agree to the accumulation order (a sanity check, not the test).
    double maxdiff = 0.0, maxabs = 0.0;
    for (size_t i = 0; i < c_bf.size(); ++i) {
        maxdiff = std::max({maxdiff, std::fabs(double(c_bf[i]) - c_dnnl[i]), std::fabs(double(c_f32[i]) - c_sg[i]),
                            wide ? std::fabs(double(c_w[i]) - c_f32[i]) : 0.0});
        maxabs = std::max(maxabs, std::fabs(double(c_dnnl[i])));
    }

    // Interleaved rounds; each round runs every contender enough times for >= ~0.15 s.
    const double flops = 2.0 * double(M) * double(N) * double(K);
    const int reps = std::max(1, static_cast<int>(0.15 / std::max(t_f32(), 1e-6)));
    std::vector<double> to, tf, td, ts, tw, r_f32, r_dnnl, r_sg, r_wf32, r_wdnnl;
    for (int r = 0; r < rounds; ++r) {
        double a = 0, b = 0, c = 0, d = 0, w = 0;
        for (int i = 0; i < reps; ++i) {
            w += t_wide();
            a += t_ours();
            b += t_f32();
            c += t_dnnl();
            d += t_sgemm();
        }
        to.push_back(a / reps);
        tf.push_back(b / reps);
        td.push_back(c / reps);
        ts.push_back(d / reps);
        r_f32.push_back(b / a);
        r_dnnl.push_back(c / a);
        r_sg.push_back(d / b);
        if (wide) {
            tw.push_back(w / reps);
            r_wf32.push_back(b / w);
            r_wdnnl.push_back(c / w);
        }
    }
    auto gf_s = [&](const std::vector<double>& t) { return flops / median(t) * 1e-9; };
    auto span = [](const std::vector<double>& v) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "%.3f [%.3f, %.3f]", median(v), *std::min_element(v.begin(), v.end()),
                      *std::max_element(v.begin(), v.end()));
        return std::string(buf);
    };
    std::printf("M x K x N = %lld x %lld x %lld, %d threads, kernel %s, %d rounds x %d reps (max |diff| %.2g of max |C| %.3g)\n",
                (long long)M, (long long)K, (long long)N, threads,
                sw::cpu::kernel_name(sw::cpu::resolve_kernel(kernel)), rounds, reps, maxdiff, maxabs);
    std::printf("  ours bf16  %9.3f ms  %7.1f GFLOP/s\n", median(to) * 1e3, gf_s(to));
    std::printf("  ours f32   %9.3f ms  %7.1f GFLOP/s\n", median(tf) * 1e3, gf_s(tf));
    std::printf("  dnnl bf16  %9.3f ms  %7.1f GFLOP/s  (%s)\n", median(td) * 1e3, gf_s(td), dm.impl.c_str());
    std::printf("  dnnl sgemm %9.3f ms  %7.1f GFLOP/s\n", median(ts) * 1e3, gf_s(ts));
    std::printf("  ratio ours f32 / ours bf16   %s\n", span(r_f32).c_str());
    std::printf("  ratio dnnl bf16 / ours bf16  %s\n", span(r_dnnl).c_str());
    std::printf("  ratio dnnl sgemm / ours f32  %s\n", span(r_sg).c_str());
    if (wide) {
        std::printf("  ours bf16 widened (avx512) %9.3f ms  %7.1f GFLOP/s\n", median(tw) * 1e3, gf_s(tw));
        std::printf("  ratio ours f32 / ours wide   %s\n", span(r_wf32).c_str());
        std::printf("  ratio dnnl bf16 / ours wide  %s\n", span(r_wdnnl).c_str());
    }
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) {
    int threads = 2, rounds = 7;
    std::string kname = "auto", shapes = "1024x1024x1024,2048x2048x2048,32x4096x11008,512x4096x11008";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (a == "--rounds" && i + 1 < argc) rounds = std::atoi(argv[++i]);
        else if (a == "--kernel" && i + 1 < argc) kname = argv[++i];
        else if (a == "--shapes" && i + 1 < argc) shapes = argv[++i];
        else {
            std::fprintf(stderr, "usage: %s [--threads T] [--rounds R] [--kernel NAME] [--shapes MxKxN,...]\n", argv[0]);
            return 2;
        }
    }
    if (!std::getenv("OMP_NUM_THREADS")) { // oneDNN's OpenMP reads it when it starts
        setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
        execv("/proc/self/exe", argv);
        std::perror("execv");
        return 2;
    }
    sw::cpu::Kernel kernel;
    if (!sw::cpu::parse_kernel(kname.c_str(), &kernel) || !sw::cpu::kernel_supported(kernel)) {
        std::fprintf(stderr, "kernel %s unknown or not supported here\n", kname.c_str());
        return 2;
    }
    sw::cpu::ThreadPool pool(threads);
    size_t pos = 0;
    while (pos < shapes.size()) {
        size_t end = shapes.find(',', pos);
        if (end == std::string::npos) end = shapes.size();
        Shape s{};
        if (std::sscanf(shapes.substr(pos, end - pos).c_str(), "%lldx%lldx%lld", (long long*)&s.m, (long long*)&s.k,
                        (long long*)&s.n) != 3) {
            std::fprintf(stderr, "bad shape %s\n", shapes.substr(pos, end - pos).c_str());
            return 2;
        }
        bench_shape(s, threads, rounds, kernel, pool);
        pos = end + 1;
    }
    return 0;
}
