// Per-call cost of small GEMMs through the C ABI, several libshardwise builds (and OpenBLAS) compared INTERLEAVED in
// one process: each round runs every variant once, in a rotating order, for a batch of calls; the report gives each
// variant's median time per call and the median of its per-round ratio to the first variant with [min..max].
//
//   latency_bench                                 quick self-check (ctest): the linked library, 3 short rounds
//   latency_bench --lib new=PATH --lib old=PATH [--openblas] [--rounds R] [--ms BATCH_MS]
//
// Cases: 1x64x64 + synchronize, 64^3, 128^3, 256^3 (each + synchronize), and a p = 4 sharded 1x64x64 (X . W with
// W's 64 columns in 4 shards of 16, one stream per rank): 4 x sw_gemm + 4 x synchronize, and one sw_gemm_grouped +
// 4 x synchronize. Devices have 2 threads; OpenBLAS (dlopen'ed, a baseline only) runs with 2 threads: start the tool
// with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` so that it picks its AVX-512 kernel (its core name is printed).
// Libraries are opened with RTLD_LOCAL | RTLD_DEEPBIND so that each one's exports bind to itself.
#include "shardwise.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Api {
    std::string name;
    decltype(&sw_device_create) device_create;
    decltype(&sw_device_destroy) device_destroy;
    decltype(&sw_stream_create) stream_create;
    decltype(&sw_stream_destroy) stream_destroy;
    decltype(&sw_stream_synchronize) stream_synchronize;
    decltype(&sw_buffer_wrap) buffer_wrap;
    decltype(&sw_buffer_destroy) buffer_destroy;
    decltype(&sw_gemm) gemm;
    decltype(&sw_gemm_grouped) gemm_grouped; // null in a library before ABI 4
};

template <class T>
void sym(void* lib, const char* name, T* out, bool required = true) {
    *out = reinterpret_cast<T>(dlsym(lib, name));
    if (!*out && required) {
        std::fprintf(stderr, "%s: %s\n", name, dlerror());
        std::exit(2);
    }
}

Api load(const std::string& name, const char* path) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib) {
        std::fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        std::exit(2);
    }
    Api a;
    a.name = name;
    sym(lib, "sw_device_create", &a.device_create);
    sym(lib, "sw_device_destroy", &a.device_destroy);
    sym(lib, "sw_stream_create", &a.stream_create);
    sym(lib, "sw_stream_destroy", &a.stream_destroy);
    sym(lib, "sw_stream_synchronize", &a.stream_synchronize);
    sym(lib, "sw_buffer_wrap", &a.buffer_wrap);
    sym(lib, "sw_buffer_destroy", &a.buffer_destroy);
    sym(lib, "sw_gemm", &a.gemm);
    sym(lib, "sw_gemm_grouped", &a.gemm_grouped, false);
    return a;
}

Api linked() {
    return Api{"linked", sw_device_create, sw_device_destroy, sw_stream_create, sw_stream_destroy,
               sw_stream_synchronize, sw_buffer_wrap, sw_buffer_destroy, sw_gemm, sw_gemm_grouped};
}

void ok(sw_status st, const char* what) {
    if (st != SW_OK) {
        std::fprintf(stderr, "%s failed: %d\n", what, static_cast<int>(st));
        std::exit(1);
    }
}

// One shape's operands, shared by every variant (each variant writes its own C).
struct Data {
    int64_t m, n, k;
    std::vector<float> a, b;
    Data(int64_t m_, int64_t n_, int64_t k_) : m(m_), n(n_), k(k_), a(m_ * k_), b(k_ * n_) {
        uint32_t r = 1234u + static_cast<uint32_t>(m * 7 + n * 3 + k);
        for (auto* v : {&a, &b})
            for (float& x : *v) {
                r = r * 1664525u + 1013904223u;
                x = static_cast<float>(r >> 8) / 16777216.0f - 0.5f;
            }
    }
};

// A variant: runs `iters` calls of the case.
struct Variant {
    std::string name;
    std::function<void(int)> run;
    std::vector<float>* c = nullptr; // its output, compared at the end
};

// A shardwise library's setup for one case: device, p streams, buffers.
struct SwCase {
    const Api* api;
    sw_device dev = nullptr;
    std::vector<sw_stream> streams;
    sw_buffer ba = nullptr, bb = nullptr, bc = nullptr;
    std::vector<float> c;
    SwCase(const Api& a, Data& d, int p) : api(&a), c(static_cast<size_t>(d.m * d.n), 0.0f) {
        ok(api->device_create(SW_BACKEND_CPU, 0, 2, &dev), "device");
        streams.resize(static_cast<size_t>(p));
        for (auto& s : streams) ok(api->stream_create(dev, &s), "stream");
        ok(api->buffer_wrap(dev, d.a.data(), d.a.size() * 4, &ba), "a");
        ok(api->buffer_wrap(dev, d.b.data(), d.b.size() * 4, &bb), "b");
        ok(api->buffer_wrap(dev, c.data(), c.size() * 4, &bc), "c");
    }
    ~SwCase() {
        for (sw_buffer x : {ba, bb, bc}) api->buffer_destroy(x);
        for (auto s : streams) api->stream_destroy(s);
        api->device_destroy(dev);
    }
};

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_case(const char* title, std::vector<Variant>& vs, int rounds, double batch_ms) {
    // Warm-up (first calls measure costs, fault pages in), then calls per batch from timed batches of all variants.
    for (auto& v : vs) v.run(2);
    int iters = 1;
    for (;;) {
        const auto t0 = Clock::now();
        for (auto& v : vs) v.run(iters);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / vs.size();
        if (ms >= batch_ms || iters >= (1 << 20)) break;
        iters = std::max(iters * 2, static_cast<int>(iters * batch_ms / std::max(ms, 1e-3)));
    }
    const size_t nv = vs.size();
    std::vector<std::vector<double>> per_call(nv), ratio(nv);
    std::vector<double> t(nv);
    for (int r = 0; r < rounds; ++r) {
        for (size_t q = 0; q < nv; ++q) {
            const size_t i = (q + static_cast<size_t>(r)) % nv; // rotating order
            const auto t0 = Clock::now();
            vs[i].run(iters);
            t[i] = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / iters;
        }
        for (size_t i = 0; i < nv; ++i) {
            per_call[i].push_back(t[i]);
            ratio[i].push_back(t[0] / t[i]);
        }
    }
    std::printf("%s  (%d rounds x %d calls, order rotating)\n", title, rounds, iters);
    for (size_t i = 0; i < nv; ++i) {
        const auto& rr = ratio[i];
        std::printf("  %-22s %9.2f us/call   speed vs %s: %.2fx [%.2f..%.2f]\n", vs[i].name.c_str(),
                    median(per_call[i]), vs[0].name.c_str(), median(rr), *std::min_element(rr.begin(), rr.end()),
                    *std::max_element(rr.begin(), rr.end()));
    }
    // Outputs of every shardwise variant must agree bit for bit (same GEMM code), OpenBLAS within rounding.
    for (size_t i = 1; i < nv; ++i) {
        if (!vs[i].c || !vs[0].c) continue;
        double worst = 0;
        for (size_t e = 0; e < vs[0].c->size(); ++e)
            worst = std::max(worst, static_cast<double>(std::fabs((*vs[i].c)[e] - (*vs[0].c)[e])));
        if (worst > 1e-3) {
            std::fprintf(stderr, "  %s differs from %s by %g\n", vs[i].name.c_str(), vs[0].name.c_str(), worst);
            std::exit(1);
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    std::vector<Api> apis;
    bool openblas = false;
    int rounds = 31;
    double batch_ms = 4.0;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--lib") && i + 1 < argc) {
            const std::string spec = argv[++i];
            const size_t eq = spec.find('=');
            if (eq == std::string::npos) {
                std::fprintf(stderr, "--lib NAME=PATH\n");
                return 2;
            }
            apis.push_back(load(spec.substr(0, eq), spec.c_str() + eq + 1));
        } else if (!std::strcmp(argv[i], "--openblas")) {
            openblas = true;
        } else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = std::atoi(argv[++i]);
        } else if (!std::strcmp(argv[i], "--ms") && i + 1 < argc) {
            batch_ms = std::atof(argv[++i]);
        } else {
            std::fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (apis.empty()) { // quick self-check
        apis.push_back(linked());
        rounds = 3;
        batch_ms = 0.5;
    }
    SgemmFn sgemm = nullptr;
    if (openblas) {
        void* lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            std::fprintf(stderr, "dlopen libopenblas.so.0: %s\n", dlerror());
            return 2;
        }
        sym(lib, "cblas_sgemm", &sgemm);
        void (*set_threads)(int) = nullptr;
        char* (*corename)() = nullptr;
        sym(lib, "openblas_set_num_threads", &set_threads);
        sym(lib, "openblas_get_corename", &corename, false);
        set_threads(2);
        std::printf("OpenBLAS core: %s, 2 threads (OPENBLAS_CORETYPE=%s)\n", corename ? corename() : "?",
                    std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "unset");
    }

    struct Shape { const char* title; int64_t m, n, k; };
    const Shape shapes[] = {{"1x64x64 + sync", 1, 64, 64},
                            {"64^3 + sync", 64, 64, 64},
                            {"128^3 + sync", 128, 128, 128},
                            {"256^3 + sync", 256, 256, 256}};
    for (const Shape& sh : shapes) {
        Data d(sh.m, sh.n, sh.k);
        std::vector<std::unique_ptr<SwCase>> cases;
        std::vector<Variant> vs;
        for (const Api& api : apis) {
            cases.emplace_back(new SwCase(api, d, 1));
            SwCase* c = cases.back().get();
            vs.push_back({api.name, [c, &d](int iters) {
                              for (int i = 0; i < iters; ++i) {
                                  ok(c->api->gemm(c->streams[0], SW_DTYPE_F32, SW_OP_N, SW_OP_N, d.m, d.n, d.k, 1.0f,
                                                  c->ba, 0, d.k, c->bb, 0, d.n, 0.0f, c->bc, 0, d.n, nullptr, 0,
                                                  SW_EPILOGUE_NONE),
                                     "gemm");
                                  ok(c->api->stream_synchronize(c->streams[0]), "sync");
                              }
                          },
                          &c->c});
        }
        std::vector<float> cb(static_cast<size_t>(d.m * d.n));
        if (sgemm)
            vs.push_back({"openblas", [&](int iters) {
                              for (int i = 0; i < iters; ++i)
                                  sgemm(101, 111, 111, static_cast<int>(d.m), static_cast<int>(d.n),
                                        static_cast<int>(d.k), 1.0f, d.a.data(), static_cast<int>(d.k), d.b.data(),
                                        static_cast<int>(d.n), 0.0f, cb.data(), static_cast<int>(d.n));
                          },
                          &cb});
        run_case(sh.title, vs, rounds, batch_ms);
    }

    // p = 4 sharded 1x64x64: rank r computes Y[:, 16r:16r+16] = X . W[:, 16r:16r+16] on its own stream.
    {
        Data d(1, 64, 64);
        constexpr int p = 4;
        std::vector<std::unique_ptr<SwCase>> cases;
        std::vector<Variant> vs;
        for (const Api& api : apis) {
            cases.emplace_back(new SwCase(api, d, p));
            SwCase* c = cases.back().get();
            vs.push_back({api.name + " 4 x sw_gemm", [c, &d](int iters) {
                              for (int i = 0; i < iters; ++i) {
                                  for (int r = 0; r < p; ++r)
                                      ok(c->api->gemm(c->streams[static_cast<size_t>(r)], SW_DTYPE_F32, SW_OP_N,
                                                      SW_OP_N, d.m, 16, d.k, 1.0f, c->ba, 0, d.k, c->bb, 16 * r, d.n,
                                                      0.0f, c->bc, 16 * r, d.n, nullptr, 0, SW_EPILOGUE_NONE),
                                         "gemm");
                                  for (int r = 0; r < p; ++r) ok(c->api->stream_synchronize(c->streams[r]), "sync");
                              }
                          },
                          &c->c});
            if (!api.gemm_grouped) continue;
            vs.push_back({api.name + " grouped", [c, &d](int iters) {
                              sw_gemm_desc desc[p];
                              for (int r = 0; r < p; ++r) {
                                  sw_gemm_desc& g = desc[r];
                                  std::memset(&g, 0, sizeof g);
                                  g.size = sizeof g;
                                  g.trans_a = g.trans_b = SW_OP_N;
                                  g.a_type = g.b_type = g.c_type = g.compute_type = SW_DTYPE_F32;
                                  g.epilogue = SW_EPILOGUE_NONE;
                                  g.m = d.m;
                                  g.n = 16;
                                  g.k = d.k;
                                  g.alpha = 1.0f;
                                  g.a = c->ba;
                                  g.lda = d.k;
                                  g.b = c->bb;
                                  g.b_offset = 16 * r;
                                  g.ldb = d.n;
                                  g.c = c->bc;
                                  g.c_offset = 16 * r;
                                  g.ldc = d.n;
                              }
                              for (int i = 0; i < iters; ++i) {
                                  ok(c->api->gemm_grouped(p, c->streams.data(), desc), "grouped");
                                  for (int r = 0; r < p; ++r) ok(c->api->stream_synchronize(c->streams[r]), "sync");
                              }
                          },
                          &c->c});
        }
        run_case("p = 4 sharded 1x64x64 (4 streams) + sync", vs, rounds, batch_ms);
    }
    std::printf("machine shared and loaded: compare ratios of one run, not absolute times across runs\n");
    return 0;
}
