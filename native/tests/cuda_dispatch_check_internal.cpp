// The core's CUDA code paths — device dispatch, buffers, streams, events, wrapped native streams, GEMM
// routing, and collectives ordered into streams through the wait-flag protocol — run against a host
// emulation of the CUDA plugin (native/tests/emulated_cuda). This proves the core's side of the plugin
// interface without a GPU; the real plugin is validated only on a GPU machine.
#include "check.h" // CHECK, OK, failures
#include "shardwise.h"

#include <dlfcn.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

int main() {
    setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
    int32_t count = 0;
    OK(sw_device_count(SW_BACKEND_CUDA, &count));
    CHECK(count == 1, "emulated plugin: 1 device, got %d", count);
    sw_device dev = nullptr;
    OK(sw_device_create(SW_BACKEND_CUDA, 0, 0, &dev));
    sw_device none = nullptr;
    CHECK(sw_device_create(SW_BACKEND_CUDA, 1, 0, &none) == SW_ERR_NOT_FOUND && none == nullptr, "ordinal 1");
    sw_device_info info{};
    OK(sw_device_get_info(dev, &info));
    CHECK(std::strncmp(info.name, "cuda:0", 6) == 0 && std::strcmp(info.kernel, "auto") == 0, "info %s / %s", info.name, info.kernel);
    OK(sw_device_set_kernel(dev, "wgmma"));
    OK(sw_device_get_info(dev, &info));
    CHECK(std::strcmp(info.kernel, "wgmma") == 0, "kernel after set_kernel(wgmma): %s", info.kernel);
    OK(sw_device_set_kernel(dev, "mma"));
    OK(sw_device_get_info(dev, &info));
    CHECK(std::strcmp(info.kernel, "mma") == 0, "kernel after set_kernel(mma): %s", info.kernel);
    OK(sw_device_set_kernel(dev, "cublaslt"));
    CHECK(sw_device_set_kernel(dev, "avx512") == SW_ERR_INVALID_ARGUMENT, "CPU kernel name on CUDA");
    CHECK(std::strstr(sw_last_error(), "wgmma") != nullptr, "the error lists the CUDA kernel names: %s", sw_last_error());

    // GEMM through the plugin, with bias and a wrapped native stream.
    const int64_t M = 13, K = 21, N = 17;
    std::mt19937 rng(std::random_device{}());
    std::uniform_real_distribution<float> U(-1, 1);
    std::vector<float> a(M * K), b(K * N), bias(N), c(M * N, NAN);
    for (auto* v : {&a, &b, &bias})
        for (auto& x : *v) x = U(rng);
    sw_stream s = nullptr, wrapped = nullptr;
    OK(sw_stream_create(dev, &s));
    void* native = nullptr;
    OK(sw_stream_get_native(s, &native));
    CHECK(native != nullptr, "native stream");
    OK(sw_stream_wrap(dev, native, &wrapped));
    sw_buffer da, db, dbias, dc;
    OK(sw_buffer_alloc(dev, a.size() * 4, &da));
    OK(sw_buffer_alloc(dev, b.size() * 4, &db));
    OK(sw_buffer_alloc(dev, bias.size() * 4, &dbias));
    OK(sw_buffer_alloc(dev, c.size() * 4, &dc));
    OK(sw_memcpy_h2d_async(da, 0, a.data(), a.size() * 4, wrapped));
    OK(sw_memcpy_h2d_async(db, 0, b.data(), b.size() * 4, wrapped));
    OK(sw_memcpy_h2d_async(dbias, 0, bias.data(), bias.size() * 4, wrapped));
    OK(sw_memset_async(dc, 0, 0xff, c.size() * 4, wrapped));
    OK(sw_gemm(wrapped, SW_DTYPE_F32, SW_OP_N, SW_OP_N, M, N, K, 1.f, da, 0, K, db, 0, N, 0.f, dc, 0, N, dbias, 0, SW_EPILOGUE_NONE));
    OK(sw_memcpy_d2h_async(c.data(), dc, 0, c.size() * 4, s)); // same native stream: ordered after the GEMM
    OK(sw_stream_synchronize(s));
    for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
            double ref = bias[j];
            for (int64_t p = 0; p < K; ++p) ref += double(a[i * K + p]) * b[p * N + j];
            CHECK(std::fabs(c[i * N + j] - ref) <= 1e-5, "C[%lld][%lld] = %g vs %g", (long long)i, (long long)j, c[i * N + j], ref);
        }
    CHECK(sw_gemm(s, SW_DTYPE_F64, SW_OP_N, SW_OP_N, M, N, K, 1.f, da, 0, K, db, 0, N, 0.f, dc, 0, N, nullptr, 0,
                  SW_EPILOGUE_NONE) == SW_ERR_UNSUPPORTED, "f64 GEMM on CUDA");
    // The plugin's resources for a wrapped stream (its GEMM workspace) go with the last wrapper, once.
    void* plugin = dlopen(SHARDWISE_EMULATED_CUDA_PLUGIN, RTLD_NOW | RTLD_NOLOAD);
    auto released = plugin ? reinterpret_cast<int64_t (*)()>(dlsym(plugin, "emulated_cuda_released_streams")) : nullptr;
    CHECK(released != nullptr, "emulated plugin's release counter");
    const int64_t released0 = released ? released() : 0;
    sw_stream wrapped2 = nullptr;
    OK(sw_stream_wrap(dev, native, &wrapped2));
    OK(sw_stream_destroy(wrapped)); // never destroys the native stream: s still works
    CHECK(released && released() == released0, "release_stream while another wrapper of the stream is alive");
    OK(sw_stream_destroy(wrapped2));
    CHECK(released && released() == released0 + 1, "release_stream once when the last wrapper goes: %lld calls",
          released ? static_cast<long long>(released() - released0) : -1LL);
    if (plugin) dlclose(plugin);
    OK(sw_memset_async(dc, 0, 0, 4, s));
    OK(sw_stream_synchronize(s));

    // Events: order two streams, time them.
    sw_stream s2 = nullptr;
    sw_event e0, e1;
    OK(sw_stream_create(dev, &s2));
    OK(sw_event_create(dev, &e0));
    OK(sw_event_create(dev, &e1));
    OK(sw_event_record(e0, s));
    OK(sw_memcpy_h2d_async(da, 0, a.data(), a.size() * 4, s));
    OK(sw_event_record(e1, s));
    OK(sw_stream_wait_event(s2, e1));
    OK(sw_stream_synchronize(s2));
    OK(sw_event_synchronize(e1));
    double ms = -1;
    OK(sw_event_elapsed_ms(e0, e1, &ms));
    CHECK(ms >= 0, "elapsed %g", ms);

    // Collectives: three virtual ranks driven from this one thread through three streams.
    const int P = 3;
    sw_device devs[P] = {dev, dev, dev};
    sw_comm comm = nullptr;
    OK(sw_comm_create_local(P, devs, 5000, &comm));
    sw_stream rs[P];
    sw_buffer rb[P], rg[P];
    const uint64_t n = 10;
    std::vector<std::vector<float>> data(P, std::vector<float>(n));
    const int64_t cols[P] = {2, 0, 3}, rows = 4, total = 5;
    std::vector<std::vector<float>> blocks(P);
    for (int r = 0; r < P; ++r) {
        for (auto& x : data[r]) x = U(rng);
        blocks[r].resize(rows * (cols[r] ? cols[r] : 1));
        for (auto& x : blocks[r]) x = U(rng);
        OK(sw_stream_create(dev, &rs[r]));
        OK(sw_buffer_alloc(dev, 64 * 4, &rb[r]));
        OK(sw_buffer_alloc(dev, 64 * 4, &rg[r]));
        OK(sw_memcpy_h2d_async(rb[r], 0, data[r].data(), n * 4, rs[r]));
        OK(sw_memcpy_h2d_async(rb[r], 32 * 4, blocks[r].data(), blocks[r].size() * 4, rs[r]));
        OK(sw_memset_async(rg[r], 0, 0xff, 64 * 4, rs[r]));
    }
    for (int r = 0; r < P; ++r) OK(sw_all_reduce(comm, r, rb[r], 0, rb[r], 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, rs[r]));
    for (int r = 0; r < P; ++r)
        OK(sw_all_gather_columns(comm, r, rb[r], 32, rows, cols[r], cols[r] ? cols[r] : 1, rg[r], 0, total, SW_DTYPE_F32, rs[r]));
    std::vector<std::vector<float>> red(P, std::vector<float>(n)), gat(P, std::vector<float>(rows * total));
    for (int r = 0; r < P; ++r) {
        OK(sw_memcpy_d2h_async(red[r].data(), rb[r], 0, n * 4, rs[r]));
        OK(sw_memcpy_d2h_async(gat[r].data(), rg[r], 0, rows * total * 4, rs[r]));
    }
    for (int r = 0; r < P; ++r) OK(sw_stream_synchronize(rs[r]));
    for (int r = 0; r < P; ++r) {
        for (uint64_t i = 0; i < n; ++i) {
            const float want = (data[0][i] + data[1][i]) + data[2][i];
            CHECK(red[r][i] == want, "all_reduce rank %d [%llu]: %g vs %g", r, (unsigned long long)i, red[r][i], want);
        }
        for (int64_t i = 0; i < rows; ++i) {
            int64_t col = 0;
            for (int q = 0; q < P; ++q) {
                for (int64_t j = 0; j < cols[q]; ++j)
                    CHECK(gat[r][i * total + col + j] == blocks[q][i * cols[q] + j], "gather rank %d (%lld,%lld)", r,
                          (long long)i, (long long)(col + j));
                col += cols[q];
            }
        }
    }
    uint64_t done = 0;
    OK(sw_comm_get_collective_count(comm, 0, &done));
    CHECK(done == 2, "collectives completed: %llu", (unsigned long long)done);
    OK(sw_comm_destroy(comm));

    // A buffer destroyed while a collective parks a stream of the device (rank 0 in, rank 1 not yet): cudaFree would wait
    // for the whole device, i.e. for rank 1, which this very thread drives (the p = 8 hang of an H200 run). The core
    // defers the free, and frees it once no flag is pending (here: at the next allocation).
    {
        auto unsafe = plugin ? reinterpret_cast<int64_t (*)()>(dlsym(plugin, "emulated_cuda_unsafe_frees")) : nullptr;
        CHECK(unsafe != nullptr, "emulated plugin's unsafe-free counter");
        const int64_t unsafe0 = unsafe ? unsafe() : 0;
        sw_comm c3 = nullptr;
        sw_device two3[2] = {dev, dev};
        OK(sw_comm_create_local(2, two3, 5000, &c3));
        sw_buffer doomed = nullptr, host_side = nullptr;
        OK(sw_buffer_alloc(dev, 256, &doomed));
        sw_stream extra = nullptr;
        OK(sw_stream_create(dev, &extra));
        OK(sw_all_reduce(c3, 0, rb[0], 0, rb[0], 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, rs[0]));
        OK(sw_buffer_destroy(doomed));       // rank 0's flag is pending: deferred
        OK(sw_memset_async(rg[0], 0, 0, 4, extra));
        OK(sw_stream_destroy(extra));        // its flag-free stream goes; nothing device-wide meanwhile
        OK(sw_all_reduce(c3, 1, rb[1], 0, rb[1], 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, rs[1]));
        OK(sw_stream_synchronize(rs[0]));
        OK(sw_stream_synchronize(rs[1]));
        OK(sw_buffer_alloc(dev, 64, &host_side)); // no flag pending: the deferred free runs now
        OK(sw_buffer_destroy(host_side));
        OK(sw_comm_destroy(c3));
        CHECK(unsafe && unsafe() == unsafe0, "%lld free(s) while a wait-flag was pending (a deadlock on a GPU)",
              static_cast<long long>(unsafe ? unsafe() - unsafe0 : -1));
    }

    // A rank that never joins: the others' streams fail with a timeout naming it, and are not left hanging.
    sw_comm c2 = nullptr;
    sw_device two[2] = {dev, dev};
    OK(sw_comm_create_local(2, two, 200, &c2));
    const auto t0 = std::chrono::steady_clock::now();
    OK(sw_all_reduce(c2, 0, rb[0], 0, rb[0], 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, rs[0]));
    OK(sw_memset_async(rg[0], 0, 0, 4, rs[0])); // work after the collective still runs once the flag is raised
    const sw_status st = sw_stream_synchronize(rs[0]);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(st == SW_ERR_TIMEOUT, "expected SW_ERR_TIMEOUT, got %s", sw_status_string(st));
    CHECK(std::strstr(sw_last_error(), "rank(s) 1") != nullptr, "message: %s", sw_last_error());
    CHECK(secs < 10, "took %g s", secs);
    OK(sw_stream_synchronize(rs[0]));
    CHECK(sw_all_reduce(c2, 0, rb[0], 0, rb[0], 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, rs[0]) == SW_ERR_ABORTED, "aborted");
    OK(sw_comm_destroy(c2));

    for (int r = 0; r < P; ++r) {
        OK(sw_buffer_destroy(rb[r]));
        OK(sw_buffer_destroy(rg[r]));
        OK(sw_stream_destroy(rs[r]));
    }
    for (auto buf : {da, db, dbias, dc}) OK(sw_buffer_destroy(buf));
    OK(sw_event_destroy(e0));
    OK(sw_event_destroy(e1));
    OK(sw_stream_destroy(s));
    OK(sw_stream_destroy(s2));
    OK(sw_device_destroy(dev));
    if (failures) {
        std::fprintf(stderr, "cuda_dispatch_check: %d failure(s)\n", failures);
        return 1;
    }
    std::printf("cuda_dispatch_check: all checks passed (emulated plugin)\n");
    return 0;
}
