// cuda_check: native check program of the CUDA plugin (libshardwise_cuda).
//
// Loads the plugin the way the core does (dlopen + dlsym "sw_cuda_plugin_api") and checks every PluginApi
// function against CPU references computed in float64 (or bit-exact references where the operation is exact
// by contract: reduce_sum in source order, conversions rounded to nearest even, copies).
// Without a CUDA device it prints why and exits 77, which CTest reports as skipped (SKIP_RETURN_CODE).
//
// Usage: cuda_check [device ordinal (default 0)]
#include "core/dtype.h"
#include "core/cuda_plugin_api.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#ifndef SHARDWISE_CUDA_PLUGIN_PATH
#define SHARDWISE_CUDA_PLUGIN_PATH "libshardwise_cuda.so"
#endif

namespace {

using sw::cuda::GemmAlgo;
// A GEMM problem and the algorithm the plugin is asked to run it with. The cases set a_type and c_type; B and the
// bias take the same types (problem_of).
struct GemmDesc : sw::GemmProblem {
    GemmAlgo algo = GemmAlgo::Auto;
};
const sw::GemmProblem* problem_of(GemmDesc& d) {
    d.b_type = d.a_type;
    d.bias_type = d.c_type;
    return &d;
}
using sw::cuda::PluginApi;

const PluginApi* api = nullptr;
int32_t dev = 0;
long checks = 0, failures = 0;
std::string g_err; // message slot of the plugin calls made by this (single) checking thread

void report_failure(const char* file, int line, const std::string& what) {
    ++failures;
    if (failures <= 200) std::fprintf(stderr, "FAIL %s:%d: %s\n", file, line, what.c_str());
    if (failures == 200) std::fprintf(stderr, "(further failures not printed)\n");
}

#define EXPECT(cond, msg)                                                                                              \
    do {                                                                                                               \
        ++checks;                                                                                                      \
        if (!(cond)) report_failure(__FILE__, __LINE__, std::string(#cond) + ": " + (msg));                           \
    } while (0)

// Calls api->fn(args..., &g_err) and expects SW_OK.
#define CALL(fn, ...) expect_ok(#fn, __FILE__, __LINE__, api->fn(__VA_ARGS__, &g_err))
// Calls api->fn(args..., &g_err) and returns the status.
#define STATUS(fn, ...) (g_err.clear(), api->fn(__VA_ARGS__, &g_err))

bool expect_ok(const char* fn, const char* file, int line, sw_status st) {
    ++checks;
    if (st == SW_OK) return true;
    report_failure(file, line, std::string(fn) + " returned status " + std::to_string(st) + ": " + g_err);
    return false;
}

template <class... A>
std::string fmt(const char* f, A... a) {
    char buf[512];
    std::snprintf(buf, sizeof buf, f, a...);
    return buf;
}


// ================================================================================================ 16-bit formats
// Independent references: decoding is exact; rounding picks the nearest representable value by search over
// the table of all finite non-negative values (ties to the even bit pattern), with "one step past the
// largest finite value" standing for infinity. No bit tricks shared with the implementation under test.
struct Format16 {
    int man_bits; // 10 (f16) or 7 (bf16)
    int exp_bits; // 5 or 8
    std::vector<double> values; // value of bit pattern i for i in [0, inf_bits)
    uint16_t inf_bits;

    double decode(uint16_t h) const {
        const bool neg = (h & 0x8000u) != 0;
        const uint32_t mag = h & 0x7fffu;
        const uint32_t exp = mag >> man_bits, man = mag & ((1u << man_bits) - 1);
        const uint32_t emax = (1u << exp_bits) - 1;
        const int bias = (1 << (exp_bits - 1)) - 1;
        double v;
        if (exp == emax) v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
        else if (exp == 0) v = std::ldexp(static_cast<double>(man), 1 - bias - man_bits);
        else v = std::ldexp(static_cast<double>(man | (1u << man_bits)), static_cast<int>(exp) - bias - man_bits);
        return neg ? -v : v;
    }

    Format16(int man, int exp) : man_bits(man), exp_bits(exp) {
        inf_bits = static_cast<uint16_t>(((1u << exp_bits) - 1) << man_bits);
        values.resize(inf_bits);
        for (uint32_t i = 0; i < inf_bits; ++i) values[i] = decode(static_cast<uint16_t>(i));
    }

    uint16_t round(double x) const {
        if (std::isnan(x)) return static_cast<uint16_t>(inf_bits | 1u); // some NaN (compared as "is NaN")
        const uint16_t sign = std::signbit(x) ? 0x8000u : 0;
        const double a = std::fabs(x);
        if (std::isinf(a)) return static_cast<uint16_t>(sign | inf_bits);
        // lo = largest pattern with value <= a.
        const auto it = std::upper_bound(values.begin(), values.end(), a);
        const uint32_t lo = static_cast<uint32_t>(it - values.begin()) - 1;
        if (values[lo] == a) return static_cast<uint16_t>(sign | lo);
        const uint32_t hi = lo + 1; // == inf_bits past the largest finite value
        const double hi_value = hi < inf_bits ? values[hi] : std::ldexp(1.0, (1 << (exp_bits - 1)));
        const double mid = (values[lo] + hi_value) / 2; // exact in double
        uint32_t r;
        if (a < mid) r = lo;
        else if (a > mid) r = hi;
        else r = (lo % 2 == 0) ? lo : hi;
        return static_cast<uint16_t>(sign | r);
    }
};
const Format16& f16() { static const Format16 f(10, 5); return f; }
const Format16& bf16() { static const Format16 f(7, 8); return f; }

// double -> float, nearest even, without the undefined behaviour of casting a finite value beyond FLT_MAX.
float to_float(double x) {
    const double max = std::numeric_limits<float>::max();
    if (std::isfinite(x) && std::fabs(x) > max) {
        const double half_ulp = std::ldexp(1.0, 127 - 24); // half the spacing just below 2^128
        const float big = std::fabs(x) >= max + half_ulp ? std::numeric_limits<float>::infinity()
                                                         : std::numeric_limits<float>::max();
        return std::signbit(x) ? -big : big;
    }
    return static_cast<float>(x);
}

// Host values of any dtype as raw bytes (the layout the device sees).
struct HostArray {
    sw_dtype type;
    std::vector<uint8_t> bytes;
    HostArray(sw_dtype t, size_t n) : type(t), bytes(n * sw::dtype_bytes(t)) {}
    size_t size() const { return bytes.size() / sw::dtype_bytes(type); }
    double get(size_t i) const {
        switch (type) {
        case SW_DTYPE_F32: { float v; std::memcpy(&v, &bytes[i * 4], 4); return v; }
        case SW_DTYPE_F64: { double v; std::memcpy(&v, &bytes[i * 8], 8); return v; }
        case SW_DTYPE_F16: { uint16_t v; std::memcpy(&v, &bytes[i * 2], 2); return f16().decode(v); }
        case SW_DTYPE_BF16: { uint16_t v; std::memcpy(&v, &bytes[i * 2], 2); return bf16().decode(v); }
        case SW_DTYPE_I32: { int32_t v; std::memcpy(&v, &bytes[i * 4], 4); return v; }
        case SW_DTYPE_U8: return bytes[i];
        default: break;
        }
        return 0;
    }
    // Stores x rounded to nearest even.
    void set(size_t i, double x) {
        switch (type) {
        case SW_DTYPE_F32: { const float v = to_float(x); std::memcpy(&bytes[i * 4], &v, 4); break; }
        case SW_DTYPE_F64: std::memcpy(&bytes[i * 8], &x, 8); break;
        case SW_DTYPE_F16: { const uint16_t v = f16().round(x); std::memcpy(&bytes[i * 2], &v, 2); break; }
        case SW_DTYPE_BF16: { const uint16_t v = bf16().round(x); std::memcpy(&bytes[i * 2], &v, 2); break; }
        case SW_DTYPE_I32: { const int32_t v = static_cast<int32_t>(x); std::memcpy(&bytes[i * 4], &v, 4); break; }
        case SW_DTYPE_U8: bytes[i] = static_cast<uint8_t>(x); break;
        default: break;
        }
    }
    void set_bits(size_t i, const void* src) { std::memcpy(&bytes[i * sw::dtype_bytes(type)], src, sw::dtype_bytes(type)); }
    bool same_bits(size_t i, const HostArray& o) const {
        const size_t es = sw::dtype_bytes(type);
        return std::memcmp(&bytes[i * es], &o.bytes[i * es], es) == 0;
    }
};

// ================================================================================================ device helpers
struct DevBuf {
    void* p = nullptr;
    size_t bytes = 0;
    explicit DevBuf(size_t n) : bytes(n) { // at least 16 bytes: empty matrices still get a valid pointer
        if (!CALL(malloc_device, dev, std::max<size_t>(n, 16), &p)) p = nullptr;
    }
    ~DevBuf() {
        std::string e;
        if (p) api->free_device(dev, p, &e);
    }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    char* at(size_t byte_offset) const { return static_cast<char*>(p) + byte_offset; }
};

struct Stream {
    void* s = nullptr;
    Stream() { CALL(stream_create, dev, &s); }
    ~Stream() {
        std::string e;
        if (s) api->stream_destroy(dev, s, &e);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
};

void upload(void* dst, const void* src, size_t bytes, void* stream) {
    CALL(memcpy_async, dev, dst, src, bytes, stream);
    CALL(stream_synchronize, dev, stream);
}
void download(void* dst, const void* src, size_t bytes, void* stream) {
    CALL(memcpy_async, dev, dst, src, bytes, stream);
    CALL(stream_synchronize, dev, stream);
}

std::mt19937_64 rng(12345);
double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

// ================================================================================================ peer reduce_sum
// The in-process all-reduce runs reduce_sum on one device over the buffers of every rank's device, and nothing
// but reduce_sum itself enables peer access: so this runs before check_devices (which enables it for every
// pair). Sources and destinations on another device: the right sums, or SW_ERR_UNSUPPORTED when the devices
// cannot reach each other; never a fault (the device stays usable).
void check_peer_reduce_sum() {
    int32_t n = 0;
    CALL(device_count, &n);
    if (n < 2) {
        std::printf("  one device: nothing to check\n");
        return;
    }
    const int32_t other = dev == 0 ? 1 : 0;
    const size_t count = 100003;
    std::vector<float> a(count), b(count);
    for (size_t i = 0; i < count; ++i) {
        a[i] = static_cast<float>(uniform(-100, 100));
        b[i] = static_cast<float>(uniform(-100, 100));
    }
    Stream s;
    DevBuf mine(count * 4), mine_out(count * 4);
    void* theirs = nullptr;
    void* theirs_out = nullptr;
    if (!CALL(malloc_device, other, count * 4, &theirs) || !CALL(malloc_device, other, count * 4, &theirs_out)) {
        if (theirs) CALL(free_device, other, theirs);
        return;
    }
    upload(mine.p, a.data(), count * 4, s.s);
    upload(theirs, b.data(), count * 4, s.s); // cudaMemcpyDefault: the copy engines reach any device
    const void* srcs[2] = {mine.p, theirs};
    void* dsts[2] = {mine_out.p, theirs_out};
    const sw_status st = STATUS(reduce_sum, dev, SW_DTYPE_F32, srcs, 2, dsts, 2, static_cast<uint64_t>(count), 0, s.s);
    EXPECT(st == SW_OK || st == SW_ERR_UNSUPPORTED, "reduce_sum over two devices: " + g_err);
    if (st == SW_OK) {
        CALL(stream_synchronize, dev, s.s);
        for (void* out : dsts) {
            std::vector<float> got(count);
            download(got.data(), out, count * 4, s.s);
            size_t bad = 0;
            for (size_t i = 0; i < count; ++i) bad += got[i] == a[i] + b[i] ? 0 : 1;
            EXPECT(bad == 0, fmt("reduce_sum over two devices: %zu wrong", bad));
        }
    } else {
        std::printf("  devices %d and %d cannot reach each other: %s\n", dev, other, g_err.c_str());
    }
    CALL(stream_synchronize, dev, s.s); // the device is still usable
    CALL(free_device, other, theirs);
    CALL(free_device, other, theirs_out);
}

// ================================================================================================ devices
void check_devices() {
    int32_t n = 0;
    CALL(device_count, &n);
    for (int32_t i = 0; i < n; ++i) {
        sw_device_info info;
        std::memset(&info, 0xff, sizeof info);
        if (!CALL(device_info, i, &info)) continue;
        std::printf("  device %d: %s, %d SMs, %.1f GiB, kernel %s\n", i, info.name, info.num_threads,
                    static_cast<double>(info.total_memory_bytes) / (1 << 30), info.kernel);
        EXPECT(info.backend == SW_BACKEND_CUDA, "backend");
        EXPECT(info.ordinal == i, "ordinal");
        EXPECT(info.num_threads > 0, "SM count");
        EXPECT(info.total_memory_bytes > 0, "memory");
        EXPECT(std::strlen(info.name) > 0 && std::strlen(info.name) < sizeof info.name, "name");
        for (int32_t j = 0; j < n; ++j) {
            int32_t enabled = -1;
            CALL(enable_peer_access, i, j, &enabled);
            EXPECT(enabled == 0 || enabled == 1, "enabled flag");
            if (i == j) EXPECT(enabled == 1, "a device reaches itself");
            // Twice: "already enabled" is not an error.
            CALL(enable_peer_access, i, j, &enabled);
        }
    }
    sw_device_info info;
    EXPECT(STATUS(device_info, n, &info) == SW_ERR_NOT_FOUND, "device_info beyond the last device: " + g_err);
    EXPECT(!g_err.empty(), "a message names the problem");
    void* p = nullptr;
    EXPECT(STATUS(malloc_device, -1, 16, &p) == SW_ERR_NOT_FOUND, "negative ordinal");
    EXPECT(STATUS(device_count, nullptr) == SW_ERR_NULL_HANDLE, "null count");
}

// ================================================================================================ memory
void check_memory() {
    void* p = nullptr;
    EXPECT(STATUS(malloc_device, dev, 0, &p) == SW_ERR_INVALID_ARGUMENT, "0 bytes");
    EXPECT(STATUS(malloc_device, dev, uint64_t{1} << 60, &p) == SW_ERR_OUT_OF_MEMORY, "1 EiB: " + g_err);
    EXPECT(p == nullptr, "no pointer after a failed allocation");

    if (CALL(malloc_device, dev, 1000, &p)) {
        EXPECT(reinterpret_cast<uintptr_t>(p) % 64 == 0, "64-byte aligned");
        int32_t where = -2;
        CALL(pointer_device, p, &where);
        EXPECT(where == dev, "device memory belongs to its device");
        CALL(pointer_device, static_cast<char*>(p) + 999, &where);
        EXPECT(where == dev, "interior pointer");
        CALL(free_device, dev, p);
    }
    CALL(free_device, dev, nullptr);

    std::vector<int> host(10);
    int32_t where = -2;
    CALL(pointer_device, host.data(), &where);
    EXPECT(where == -1, "pageable host memory is not device memory");
    CALL(pointer_device, nullptr, &where);
    EXPECT(where == -1, "null");

    void* h = nullptr;
    void* d = nullptr;
    if (CALL(malloc_host, 4096, &h, &d)) {
        EXPECT(h != nullptr && d != nullptr, "pinned pointers");
        CALL(pointer_device, h, &where);
        EXPECT(where == -1, "pinned host memory is not device memory");
        // Round trip through the mapped pointer: a device copy reads it.
        Stream s;
        DevBuf buf(4096);
        std::memset(h, 0x7e, 4096);
        CALL(memcpy_async, dev, buf.p, d, 4096, s.s);
        std::vector<uint8_t> back(4096, 0);
        download(back.data(), buf.p, 4096, s.s);
        EXPECT(std::all_of(back.begin(), back.end(), [](uint8_t v) { return v == 0x7e; }), "mapped pinned memory");
        CALL(free_host, h);
    }
    CALL(free_host, nullptr);

    // memset / memcpy in stream order, including 0 bytes (a no-op).
    Stream s;
    DevBuf a(1 << 20), b(1 << 20);
    CALL(memset_async, dev, a.p, 0xa5, a.bytes, s.s);
    CALL(memcpy_async, dev, b.p, a.p, a.bytes, s.s);
    CALL(memset_async, dev, b.at(100), 0x11, 10, s.s);
    CALL(memcpy_async, dev, b.p, a.p, 0, s.s);
    std::vector<uint8_t> out(b.bytes);
    download(out.data(), b.p, b.bytes, s.s);
    bool ok = true;
    for (size_t i = 0; i < out.size(); ++i) ok = ok && out[i] == ((i >= 100 && i < 110) ? 0x11 : 0xa5);
    EXPECT(ok, "memset + memcpy");
}

// ================================================================================================ events and flags
void check_events_and_flags() {
    Stream s1, s2;
    void *e0 = nullptr, *e1 = nullptr, *e2 = nullptr;
    CALL(event_create, dev, &e0);
    CALL(event_create, dev, &e1);
    CALL(event_create, dev, &e2);
    int32_t done = -1;
    CALL(event_query, dev, e0, &done);
    EXPECT(done == 1, "an event never recorded has completed");

    void* hflag = nullptr;
    void* dflag = nullptr;
    if (!CALL(malloc_host, 64, &hflag, &dflag)) return;
    auto* flag = static_cast<uint32_t*>(hflag);
    // Start just below the 2^32 wrap: the wait must be wrap-safe ((int32_t)(flag - target) >= 0).
    __atomic_store_n(flag, 0xfffffff0u, __ATOMIC_SEQ_CST);

    DevBuf x(4096), y(4096);
    CALL(memset_async, dev, x.p, 0, 4096, s1.s);
    CALL(memset_async, dev, y.p, 0, 4096, s2.s);
    CALL(stream_synchronize, dev, s1.s);
    CALL(stream_synchronize, dev, s2.s);

    CALL(event_record, dev, e0, s1.s);
    CALL(stream_wait_flag, dev, static_cast<volatile uint32_t*>(dflag), 0xfffffff2u, s1.s);
    CALL(memset_async, dev, x.p, 0x5a, 4096, s1.s);
    CALL(event_record, dev, e1, s1.s);
    CALL(stream_wait_event, dev, s2.s, e1);
    CALL(memset_async, dev, y.p, 0x33, 4096, s2.s);
    CALL(event_record, dev, e2, s2.s);

    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    __atomic_store_n(flag, 0xfffffff1u, __ATOMIC_RELEASE); // raised, but not to the target yet
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CALL(event_query, dev, e1, &done);
    EXPECT(done == 0, "s1 is held by the flag");
    CALL(event_query, dev, e2, &done);
    EXPECT(done == 0, "s2 waits for s1's event");

    // Another host thread releases the flag.
    std::thread releaser([flag] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        __atomic_store_n(flag, 3u, __ATOMIC_RELEASE); // past the target, across the wrap
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    done = 0;
    while (!done && std::chrono::steady_clock::now() < deadline) {
        if (!CALL(event_query, dev, e2, &done)) break;
        if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    releaser.join();
    if (!done) {
        report_failure(__FILE__, __LINE__, "stream_wait_flag: the stream was not released within 20 s");
        std::fprintf(stderr, "cuda_check: aborting (a kernel is stuck; %ld failures)\n", failures);
        std::fflush(stderr);
        _exit(1); // normal exit could block in the CUDA runtime's teardown behind the stuck kernel
    }
    CALL(event_synchronize, dev, e1);
    CALL(event_query, dev, e1, &done);
    EXPECT(done == 1, "e1 completed");
    float ms = -1;
    CALL(event_elapsed_ms, dev, e0, e1, &ms);
    EXPECT(ms >= 100.0f, fmt("the wait took %.3f ms, expected >= 100", static_cast<double>(ms)));

    std::vector<uint8_t> hx(4096), hy(4096);
    download(hx.data(), x.p, 4096, s1.s);
    download(hy.data(), y.p, 4096, s2.s);
    EXPECT(std::all_of(hx.begin(), hx.end(), [](uint8_t v) { return v == 0x5a; }), "work after the flag ran");
    EXPECT(std::all_of(hy.begin(), hy.end(), [](uint8_t v) { return v == 0x33; }), "work after the event ran");

    // A target already reached does not block (also one "behind" across the wrap).
    CALL(stream_wait_flag, dev, static_cast<volatile uint32_t*>(dflag), 2u, s1.s);
    CALL(stream_wait_flag, dev, static_cast<volatile uint32_t*>(dflag), 3u, s1.s);
    CALL(stream_wait_flag, dev, static_cast<volatile uint32_t*>(dflag), 0xfffffff5u, s1.s);
    CALL(stream_synchronize, dev, s1.s);

    CALL(event_destroy, dev, e0);
    CALL(event_destroy, dev, e1);
    CALL(event_destroy, dev, e2);
    CALL(event_destroy, dev, nullptr);
    CALL(free_host, hflag);
    EXPECT(STATUS(stream_wait_flag, dev, nullptr, 1u, s1.s) == SW_ERR_NULL_HANDLE, "null flag");
}

// ================================================================================================ copy_2d
void check_copy_2d() {
    Stream s;
    const int32_t elem_sizes[] = {1, 2, 3, 4, 8, 16};
    const int64_t shapes[][2] = {{1, 1}, {1, 37}, {5, 3}, {70, 33}, {3, 1000}};
    int cases = 0;
    for (int32_t es : elem_sizes)
        for (const auto& sh : shapes)
            for (int pad = 0; pad < 2; ++pad)
                for (int off = 0; off < 2; ++off)
                    for (int where = 0; where < 4; ++where) { // 0 d->d, 1 pinned->d, 2 pageable->d, 3 d->pageable
                        const int64_t rows = sh[0], cols = sh[1];
                        const int64_t ld_src = cols + pad * 3, ld_dst = cols + pad * 5 + (where & 1);
                        const size_t src_bytes = static_cast<size_t>((rows * ld_src + off) * es);
                        const size_t dst_bytes = static_cast<size_t>((rows * ld_dst + off) * es);
                        std::vector<uint8_t> src(src_bytes), dst0(dst_bytes), out(dst_bytes);
                        for (auto& v : src) v = static_cast<uint8_t>(rng());
                        for (auto& v : dst0) v = static_cast<uint8_t>(rng());
                        DevBuf dsrc(src_bytes), ddst(dst_bytes);
                        void* hpinned = nullptr;
                        void* dpinned = nullptr;
                        const void* src_ptr = dsrc.p;
                        void* dst_ptr = ddst.p;
                        std::vector<uint8_t> pageable_dst;
                        upload(ddst.p, dst0.data(), dst_bytes, s.s);
                        if (where == 1) {
                            if (!CALL(malloc_host, src_bytes, &hpinned, &dpinned)) continue;
                            std::memcpy(hpinned, src.data(), src_bytes);
                            src_ptr = hpinned;
                        } else if (where == 2) {
                            src_ptr = src.data();
                        } else {
                            upload(dsrc.p, src.data(), src_bytes, s.s);
                        }
                        if (where == 3) {
                            pageable_dst = dst0;
                            dst_ptr = pageable_dst.data();
                        }
                        CALL(copy_2d, dev, static_cast<char*>(dst_ptr) + off * es, ld_dst,
                             static_cast<const char*>(src_ptr) + off * es, ld_src, rows, cols, es, s.s);
                        CALL(stream_synchronize, dev, s.s);
                        if (where == 3) out = pageable_dst;
                        else download(out.data(), ddst.p, dst_bytes, s.s);
                        std::vector<uint8_t> expect = dst0;
                        for (int64_t r = 0; r < rows; ++r)
                            std::memcpy(&expect[static_cast<size_t>((off + r * ld_dst) * es)],
                                        &src[static_cast<size_t>((off + r * ld_src) * es)], static_cast<size_t>(cols * es));
                        EXPECT(out == expect, fmt("copy_2d es %d rows %lld cols %lld ld %lld/%lld off %d where %d", es,
                                                  static_cast<long long>(rows), static_cast<long long>(cols),
                                                  static_cast<long long>(ld_dst), static_cast<long long>(ld_src), off,
                                                  where));
                        if (hpinned) CALL(free_host, hpinned);
                        ++cases;
                    }
    EXPECT(STATUS(copy_2d, dev, nullptr, 4, nullptr, 4, 2, 5, 4, s.s) == SW_ERR_INVALID_ARGUMENT,
           "ld smaller than cols is rejected before the pointers");
    CALL(copy_2d, dev, nullptr, 1, nullptr, 1, 0, 5, 4, s.s); // empty: no-op
    std::printf("  copy_2d: %d cases\n", cases);
}

// ================================================================================================ reduce_sum
void check_reduce_sum() {
    Stream s;
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_I32, SW_DTYPE_F16, SW_DTYPE_BF16};
    const uint64_t counts[] = {1, 7, 8, 1000, 4099, 100003};
    int cases = 0;
    for (sw_dtype t : types)
        for (uint64_t count : counts)
            for (int off = 0; off < 2; ++off)
                for (int inplace = 0; inplace < 2; ++inplace) {
                    const int nsrc = 3, ndst = 2;
                    const size_t es = sw::dtype_bytes(t), n = count + off;
                    std::vector<HostArray> src(nsrc, HostArray(t, n));
                    for (auto& a : src)
                        for (size_t i = 0; i < n; ++i)
                            a.set(i, t == SW_DTYPE_I32 ? std::floor(uniform(-2e9, 2e9)) : uniform(-100, 100));
                    // Expected: sum in source order, in the accumulation type, one rounding at the end.
                    HostArray expect(t, n);
                    for (size_t i = 0; i < n; ++i) {
                        if (t == SW_DTYPE_F64) {
                            double acc = src[0].get(i);
                            for (int q = 1; q < nsrc; ++q) acc += src[q].get(i);
                            expect.set(i, acc);
                        } else if (t == SW_DTYPE_I32) {
                            uint32_t acc = 0;
                            for (int q = 0; q < nsrc; ++q) acc += static_cast<uint32_t>(static_cast<int32_t>(src[q].get(i)));
                            expect.set_bits(i, &acc);
                        } else {
                            float acc = static_cast<float>(src[0].get(i)); // exact for f32/f16/bf16 values
                            for (int q = 1; q < nsrc; ++q) acc += static_cast<float>(src[q].get(i));
                            expect.set(i, acc);
                        }
                    }
                    std::vector<DevBuf*> bufs;
                    std::vector<const void*> sptr;
                    for (int q = 0; q < nsrc; ++q) {
                        bufs.push_back(new DevBuf(n * es));
                        upload(bufs.back()->p, src[q].bytes.data(), n * es, s.s);
                        sptr.push_back(bufs.back()->at(off * es));
                    }
                    std::vector<void*> dptr;
                    for (int d = 0; d < ndst; ++d) {
                        if (inplace && d == 0) {
                            dptr.push_back(bufs[1]->at(off * es)); // destination = source 1
                        } else {
                            bufs.push_back(new DevBuf(n * es));
                            dptr.push_back(bufs.back()->at(off * es));
                        }
                    }
                    CALL(reduce_sum, dev, t, sptr.data(), nsrc, dptr.data(), ndst, count, 0, s.s);
                    CALL(stream_synchronize, dev, s.s);
                    for (int d = 0; d < ndst; ++d) {
                        HostArray out(t, count);
                        download(out.bytes.data(), dptr[d], count * es, s.s);
                        size_t bad = 0, first = 0;
                        for (size_t i = 0; i < count; ++i) {
                            bool same = std::memcmp(&out.bytes[i * es], &expect.bytes[(i + off) * es], es) == 0;
                            if (!same && !bad) first = i;
                            bad += same ? 0 : 1;
                        }
                        EXPECT(bad == 0, fmt("reduce_sum %s count %llu off %d inplace %d dst %d: %zu wrong, first at %zu",
                                             sw::dtype_name(t), static_cast<unsigned long long>(count), off, inplace, d, bad,
                                             first));
                    }
                    for (DevBuf* b : bufs) delete b;
                    ++cases;
                }
    const void* one = nullptr;
    void* none = nullptr;
    EXPECT(STATUS(reduce_sum, dev, SW_DTYPE_F32, &one, 1, &none, 1, 10, 0, s.s) == SW_ERR_NULL_HANDLE, "null pointers");
    EXPECT(STATUS(reduce_sum, dev, SW_DTYPE_U8, &one, 1, &none, 1, 10, 0, s.s) == SW_ERR_UNSUPPORTED, "u8");
    EXPECT(STATUS(reduce_sum, dev, SW_DTYPE_F32, &one, 0, &none, 1, 10, 0, s.s) == SW_ERR_INVALID_ARGUMENT, "nsrc 0");
    std::printf("  reduce_sum: %d cases\n", cases);
}

// ================================================================================================ convert
void check_convert() {
    Stream s;
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    // Source values: random over many binades, specials, and values at and next to the rounding midpoints of
    // the 16-bit formats (where rounding twice, double -> float -> half, would go wrong).
    std::vector<double> values = {0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 70000.0, 1e-8, -6e-8, 5.96e-8,
                                  3e38, 3.4e38, 1e300, -1e300, 1e-300, std::numeric_limits<double>::infinity(),
                                  -std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(),
                                  std::numeric_limits<float>::denorm_min(), 1.17549435e-38, 9.2e-41};
    for (int i = 0; i < 3000; ++i) values.push_back(std::ldexp(uniform(-1, 1), static_cast<int>(uniform(-140, 130))));
    for (const Format16* f : {&f16(), &bf16()})
        for (int i = 0; i < 500; ++i) {
            const uint32_t lo = static_cast<uint32_t>(uniform(0, f->inf_bits - 2));
            const double mid = (f->values[lo] + f->values[lo + 1]) / 2;
            values.push_back(mid);
            values.push_back(-mid);
            values.push_back(std::nextafter(mid, 0.0));
            values.push_back(std::nextafter(mid, 1e308));
        }
    const size_t n = values.size();
    int cases = 0;
    for (sw_dtype st : types)
        for (sw_dtype dt : types) {
            HostArray src(st, n);
            for (size_t i = 0; i < n; ++i) src.set(i, values[i]);
            HostArray expect(dt, n);
            for (size_t i = 0; i < n; ++i) expect.set(i, src.get(i)); // exact decode, one reference rounding
            DevBuf dsrc(n * sw::dtype_bytes(st)), ddst(n * sw::dtype_bytes(dt));
            upload(dsrc.p, src.bytes.data(), src.bytes.size(), s.s);
            CALL(convert, dev, st, dsrc.p, dt, ddst.p, n, s.s);
            HostArray out(dt, n);
            download(out.bytes.data(), ddst.p, out.bytes.size(), s.s);
            size_t bad = 0, first = 0;
            for (size_t i = 0; i < n; ++i) {
                const bool both_nan = std::isnan(out.get(i)) && std::isnan(expect.get(i));
                const bool ok = both_nan || out.same_bits(i, expect);
                if (!ok && !bad) first = i;
                bad += ok ? 0 : 1;
            }
            EXPECT(bad == 0, fmt("convert %s -> %s: %zu wrong; first: %.17g -> %.17g, expected %.17g", sw::dtype_name(st),
                                 sw::dtype_name(dt), bad, src.get(first), out.get(first), expect.get(first)));
            ++cases;
        }
    EXPECT(STATUS(convert, dev, SW_DTYPE_I32, nullptr, SW_DTYPE_F32, nullptr, 4, s.s) == SW_ERR_UNSUPPORTED, "i32");
    std::printf("  convert: %d cases, %zu values each\n", cases, n);
}

// ================================================================================================ bias_act
double gelu_ref(double x) {
    const double k = std::sqrt(2.0 / 3.14159265358979323846);
    return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// Relative rounding error of storing a value in t.
double out_eps(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F16: return 1.0 / 1024;
    case SW_DTYPE_BF16: return 1.0 / 128;
    case SW_DTYPE_F32: return 1e-6;
    default: return 1e-13;
    }
}

void check_bias_act() {
    Stream s;
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    int cases = 0;
    for (sw_dtype t : types)
        for (int with_bias = 0; with_bias < 2; ++with_bias)
            for (sw_epilogue ep : {SW_EPILOGUE_NONE, SW_EPILOGUE_GELU}) {
                const int64_t rows = 37, cols = 70, ld = 75;
                const size_t es = sw::dtype_bytes(t), n = static_cast<size_t>(rows * ld);
                HostArray y(t, n), bias(t, static_cast<size_t>(cols));
                for (size_t i = 0; i < n; ++i) y.set(i, uniform(-4, 4));
                for (size_t j = 0; j < static_cast<size_t>(cols); ++j) bias.set(j, uniform(-1, 1));
                DevBuf dy(n * es), db(static_cast<size_t>(cols) * es);
                upload(dy.p, y.bytes.data(), n * es, s.s);
                upload(db.p, bias.bytes.data(), bias.bytes.size(), s.s);
                CALL(bias_act, dev, t, dy.p, ld, rows, cols, with_bias ? db.p : nullptr, ep, s.s);
                HostArray out(t, n);
                download(out.bytes.data(), dy.p, n * es, s.s);
                size_t bad = 0;
                double worst = 0;
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t j = 0; j < ld; ++j) {
                        const size_t i = static_cast<size_t>(r * ld + j);
                        if (j >= cols || (!with_bias && ep == SW_EPILOGUE_NONE)) {
                            bad += out.same_bits(i, y) ? 0 : 1; // untouched
                            continue;
                        }
                        double v = y.get(i) + (with_bias ? bias.get(static_cast<size_t>(j)) : 0.0);
                        if (ep == SW_EPILOGUE_GELU) v = gelu_ref(v);
                        const double err = std::fabs(out.get(i) - v);
                        const double tol = out_eps(t) * std::fabs(v) + (t == SW_DTYPE_F64 ? 1e-13 : 2e-6) +
                                           (t == SW_DTYPE_F16 ? 6e-8 : 0);
                        worst = std::max(worst, err / tol);
                        bad += err <= tol ? 0 : 1;
                    }
                EXPECT(bad == 0, fmt("bias_act %s bias %d gelu %d: %zu wrong (worst %.2f x tolerance)", sw::dtype_name(t),
                                     with_bias, static_cast<int>(ep), bad, worst));
                ++cases;
            }
    std::printf("  bias_act: %d cases\n", cases);
}

// ================================================================================================ gemm
struct GemmCase {
    sw_dtype a_type, c_type;
    bool tf32;
    GemmAlgo algo;
    bool ta, tb;
    int64_t m, n, k;
    int64_t pad;   // added to every leading dimension
    int64_t off;   // element offset of every matrix (and the bias) in its buffer
    float alpha, beta;
    bool bias;
    sw_epilogue epilogue;
};

const char* algo_name(GemmAlgo a) {
    return a == GemmAlgo::Auto ? "auto" : a == GemmAlgo::CublasLt ? "cublaslt" : a == GemmAlgo::Wgmma ? "wgmma" : "mma";
}

std::string describe(const GemmCase& g) {
    return fmt("%s/%s%s %s %c%c m %lld n %lld k %lld pad %lld off %lld alpha %g beta %g bias %d gelu %d",
               sw::dtype_name(g.a_type), sw::dtype_name(g.c_type), g.tf32 ? "(tf32)" : "", algo_name(g.algo), g.ta ? 'T' : 'N',
               g.tb ? 'T' : 'N', static_cast<long long>(g.m), static_cast<long long>(g.n), static_cast<long long>(g.k),
               static_cast<long long>(g.pad), static_cast<long long>(g.off), static_cast<double>(g.alpha),
               static_cast<double>(g.beta), g.bias ? 1 : 0, g.epilogue == SW_EPILOGUE_GELU ? 1 : 0);
}

// Result of one GEMM run: C as computed, for bit-level comparisons between runs.
struct GemmRun {
    HostArray c;
    bool ok;
};

// Runs the case on `stream`, checks C against the float64 reference (and that nothing outside C changed, and
// that C is not read when beta == 0), returns C.
GemmRun run_gemm(const GemmCase& g, void* stream) {
    const int64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
    const int64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
    const int64_t lda = std::max<int64_t>(a_cols, 1) + g.pad, ldb = std::max<int64_t>(b_cols, 1) + g.pad;
    const int64_t ldc = g.n + g.pad;
    const size_t na = static_cast<size_t>(g.off + a_rows * lda), nb = static_cast<size_t>(g.off + b_rows * ldb);
    const size_t nc = static_cast<size_t>(g.off + g.m * ldc), nbias = static_cast<size_t>(g.off + g.n);
    HostArray A(g.a_type, na), B(g.a_type, nb), C0(g.c_type, nc), bias(g.c_type, nbias);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    // Everything outside the matrices is NaN: a kernel that reads it poisons its result.
    for (size_t i = 0; i < na; ++i) A.set(i, nan);
    for (size_t i = 0; i < nb; ++i) B.set(i, nan);
    for (int64_t r = 0; r < a_rows; ++r)
        for (int64_t c = 0; c < a_cols; ++c) A.set(static_cast<size_t>(g.off + r * lda + c), uniform(-1, 1));
    for (int64_t r = 0; r < b_rows; ++r)
        for (int64_t c = 0; c < b_cols; ++c) B.set(static_cast<size_t>(g.off + r * ldb + c), uniform(-1, 1));
    for (size_t i = 0; i < nc; ++i) C0.set(i, uniform(-1, 1));
    if (g.beta == 0.0f) // C must not be read
        for (int64_t r = 0; r < g.m; ++r)
            for (int64_t c = 0; c < g.n; ++c) C0.set(static_cast<size_t>(g.off + r * ldc + c), nan);
    for (size_t i = 0; i < nbias; ++i) bias.set(i, uniform(-1, 1));

    const size_t ea = sw::dtype_bytes(g.a_type), ec = sw::dtype_bytes(g.c_type);
    DevBuf dA(na * ea), dB(nb * ea), dC(nc * ec), dbias(nbias * ec);
    upload(dA.p, A.bytes.data(), na * ea, stream);
    upload(dB.p, B.bytes.data(), nb * ea, stream);
    upload(dC.p, C0.bytes.data(), nc * ec, stream);
    upload(dbias.p, bias.bytes.data(), nbias * ec, stream);

    GemmDesc d;
    d.a_type = g.a_type;
    d.c_type = g.c_type;
    d.trans_a = g.ta;
    d.trans_b = g.tb;
    d.m = g.m;
    d.n = g.n;
    d.k = g.k;
    d.alpha = g.alpha;
    d.beta = g.beta;
    d.a = dA.at(static_cast<size_t>(g.off) * ea);
    d.lda = lda;
    d.b = dB.at(static_cast<size_t>(g.off) * ea);
    d.ldb = ldb;
    d.c = dC.at(static_cast<size_t>(g.off) * ec);
    d.ldc = ldc;
    d.bias = g.bias ? dbias.at(static_cast<size_t>(g.off) * ec) : nullptr;
    d.epilogue = g.epilogue;
    d.algo = g.algo;
    d.allow_tf32 = g.tf32;
    GemmRun result{HostArray(g.c_type, nc), false};
    if (!CALL(gemm, dev, problem_of(d), d.algo, stream)) return result;
    download(result.c.bytes.data(), dC.p, nc * ec, stream);

    const double acc_eps = g.tf32 ? 4e-3 : 2e-5;
    const bool gelu = g.epilogue == SW_EPILOGUE_GELU;
    size_t bad = 0, first_r = 0, first_c = 0;
    double worst = 0, got_first = 0, want_first = 0;
    for (int64_t r = 0; r < g.m; ++r) {
        for (int64_t c = 0; c < ldc; ++c) {
            const size_t ic = static_cast<size_t>(g.off + r * ldc + c);
            if (c >= g.n) { // padding of C: untouched
                if (!result.c.same_bits(ic, C0)) ++bad;
                continue;
            }
            double sum = 0, mag = 0;
            for (int64_t p = 0; p < g.k; ++p) {
                const double a = A.get(static_cast<size_t>(g.off + (g.ta ? p * lda + r : r * lda + p)));
                const double b = B.get(static_cast<size_t>(g.off + (g.tb ? c * ldb + p : p * ldb + c)));
                sum += a * b;
                mag += std::fabs(a * b);
            }
            double v = static_cast<double>(g.alpha) * sum;
            double scale = std::fabs(static_cast<double>(g.alpha)) * mag;
            if (g.beta != 0.0f) {
                const double cb = static_cast<double>(g.beta) * C0.get(ic);
                v += cb;
                scale += std::fabs(cb);
            }
            if (g.bias) {
                const double bv = bias.get(static_cast<size_t>(g.off + c));
                v += bv;
                scale += std::fabs(bv);
            }
            double tol = acc_eps * scale + 1e-6;
            if (gelu) {
                tol = tol * 1.2 + 1e-3 * std::fabs(v) + 1e-5; // fused GeLU epilogues may use a fast tanh
                v = gelu_ref(v);
            }
            tol += out_eps(g.c_type) * std::fabs(v);
            const double got = result.c.get(ic);
            const double err = std::fabs(got - v);
            if (!(err <= tol)) { // also catches NaN
                if (!bad) { first_r = static_cast<size_t>(r); first_c = static_cast<size_t>(c); got_first = got; want_first = v; }
                ++bad;
            }
            if (err <= tol) worst = std::max(worst, err / tol);
        }
    }
    // Outside C's rows (the offset area) unchanged.
    for (size_t i = 0; i < static_cast<size_t>(g.off); ++i)
        if (!result.c.same_bits(i, C0)) ++bad;
    EXPECT(bad == 0, describe(g) + fmt(": %zu wrong; first (%zu, %zu) = %.9g, expected %.9g", bad, first_r, first_c,
                                       got_first, want_first));
    result.ok = bad == 0;
    return result;
}

// dx = dy * gelu'(x), out of place and in place (dx = dy), every float type.
void check_gelu_backward() {
    Stream s;
    const sw_dtype types[] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16};
    int cases = 0;
    for (sw_dtype t : types)
        for (int in_place = 0; in_place < 2; ++in_place) {
            const size_t n = 100003, es = sw::dtype_bytes(t);
            HostArray x(t, n), g(t, n);
            for (size_t i = 0; i < n; ++i) {
                x.set(i, uniform(-5, 5));
                g.set(i, uniform(-2, 2));
            }
            DevBuf dx(n * es), dg(n * es), dout(n * es);
            upload(dx.p, x.bytes.data(), n * es, s.s);
            upload(dg.p, g.bytes.data(), n * es, s.s);
            void* out = in_place ? dg.p : dout.p;
            CALL(gelu_backward, dev, t, dx.p, dg.p, out, static_cast<uint64_t>(n), s.s);
            HostArray got(t, n);
            download(got.bytes.data(), out, n * es, s.s);
            size_t bad = 0;
            double worst = 0;
            for (size_t i = 0; i < n; ++i) {
                const double v = x.get(i), c = 0.7978845608028654;
                const double th = std::tanh(c * (v + 0.044715 * v * v * v));
                const double want = g.get(i) * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * c * (1 + 3 * 0.044715 * v * v));
                // f16 results under 2^-14 are subnormal, spaced 2^-24 apart whatever their size: one such step more
                // (a relative bound alone failed 26 of 100003 elements on an H200, all tiny results).
                const double tol = out_eps(t) * std::fabs(want) + (t == SW_DTYPE_F64 ? 1e-13 : 4e-6) * std::fabs(g.get(i)) +
                                   (t == SW_DTYPE_F16 ? 0x1p-24 : 1e-30);
                const double err = std::fabs(got.get(i) - want);
                worst = std::max(worst, err / tol);
                bad += err <= tol ? 0 : 1;
            }
            EXPECT(bad == 0, fmt("gelu_backward %s in_place %d: %zu wrong (worst %.2f x tolerance)", sw::dtype_name(t), in_place,
                                 bad, worst));
            ++cases;
        }
    std::printf("  gelu_backward: %d cases\n", cases);
}

void check_gemm() {
    Stream s;
    struct Types { sw_dtype a, c; bool tf32; };
    const Types types[] = {{SW_DTYPE_F32, SW_DTYPE_F32, false}, {SW_DTYPE_F32, SW_DTYPE_F32, true},
                           {SW_DTYPE_F16, SW_DTYPE_F16, false}, {SW_DTYPE_BF16, SW_DTYPE_BF16, false},
                           {SW_DTYPE_F16, SW_DTYPE_F32, false}, {SW_DTYPE_BF16, SW_DTYPE_F32, false}};
    const int64_t shapes[][3] = {{1, 1, 1},   {7, 13, 5},    {33, 17, 65}, {128, 128, 32}, {129, 130, 67},
                                 {64, 8, 300}, {300, 260, 40}, {2, 513, 7}, {16, 24, 1000}, {5, 6, 0}};
    struct Epi { float alpha, beta; bool bias; sw_epilogue ep; };
    const Epi epis[] = {{1.0f, 0.0f, false, SW_EPILOGUE_NONE},
                        {0.75f, 0.5f, true, SW_EPILOGUE_GELU},
                        {1.0f, 0.0f, true, SW_EPILOGUE_NONE},
                        {-1.5f, -1.25f, false, SW_EPILOGUE_GELU},
                        {2.0f, 1.0f, true, SW_EPILOGUE_NONE},
                        {1.0f, 0.0f, false, SW_EPILOGUE_GELU}};
    const int nepi = static_cast<int>(sizeof epis / sizeof epis[0]);
    int cases = 0, rotate = 0;
    sw_device_info info;
    int cc_major = 0;
    if (CALL(device_info, dev, &info)) {
        const char* p = std::strstr(info.name, "(sm_");
        if (p) cc_major = std::atoi(p + 4) / 10;
    }
    // The wgmma kernel: checked like the others where the device runs the plugin's sm_90a code; elsewhere it must
    // refuse cleanly (SW_ERR_UNSUPPORTED), never launch.
    bool wgmma = false;
    {
        DevBuf a(16), b(16), c(16);
        GemmDesc d;
        d.a_type = d.c_type = SW_DTYPE_BF16;
        d.m = d.n = d.k = 1;
        d.a = a.p, d.lda = 1, d.b = b.p, d.ldb = 1, d.c = c.p, d.ldc = 1;
        d.algo = GemmAlgo::Wgmma;
        CALL(memset_async, dev, a.p, 0, 16, s.s);
        CALL(memset_async, dev, b.p, 0, 16, s.s);
        const sw_status st = STATUS(gemm, dev, problem_of(d), d.algo, s.s);
        CALL(stream_synchronize, dev, s.s);
        ++checks;
        if (st == SW_OK) {
            wgmma = true;
            std::printf("  wgmma kernel: available (sm_90a code runs on this device)\n");
        } else if (st == SW_ERR_UNSUPPORTED) {
            std::printf("  wgmma kernel: not available here (%s)\n", g_err.c_str());
            if (cc_major == 9 && std::getenv("SHARDWISE_EXPECT_WGMMA"))
                report_failure(__FILE__, __LINE__, "SHARDWISE_EXPECT_WGMMA is set but the wgmma kernel is unavailable");
        } else {
            report_failure(__FILE__, __LINE__, "wgmma probe GEMM returned status " + std::to_string(st) + ": " + g_err);
        }
    }
    for (const Types& t : types) {
        std::vector<GemmAlgo> algos = {GemmAlgo::CublasLt, GemmAlgo::Auto};
        const bool is16 = t.a != SW_DTYPE_F32;
        if (is16 && cc_major >= 8) algos.push_back(GemmAlgo::HandWritten);
        if (is16 && wgmma) algos.push_back(GemmAlgo::Wgmma);
        for (GemmAlgo algo : algos) {
            for (const auto& sh : shapes)
                for (int tr = 0; tr < 4; ++tr) {
                    if (algo == GemmAlgo::Auto && tr != 3) continue; // Auto = cuBLASLt: a sample is enough
                    const Epi& e = epis[rotate++ % nepi];
                    GemmCase g{t.a, t.c, t.tf32, algo, (tr & 1) != 0, (tr & 2) != 0, sh[0], sh[1], sh[2],
                               (rotate % 3 == 0) ? 3 : 0, (rotate % 4 == 1) ? 1 : 0, e.alpha, e.beta, e.bias, e.ep};
                    run_gemm(g, s.s);
                    ++cases;
                }
            // Every epilogue on one shape, aligned and not.
            for (const Epi& e : epis)
                for (int pad = 0; pad < 2; ++pad) {
                    GemmCase g{t.a, t.c, t.tf32, algo, false, true, 97, 72, 136, pad ? 5 : 0, pad, e.alpha, e.beta,
                               e.bias, e.ep};
                    run_gemm(g, s.s);
                    ++cases;
                }
        }
    }
    std::printf("  gemm: %d cases\n", cases);

    // Hand-written kernel: a column block computed alone equals the same block of the full product, bit for
    // bit (per-element accumulation independent of the element's position and of n).
    if (cc_major >= 8) {
        for (sw_dtype t : {SW_DTYPE_F16, SW_DTYPE_BF16}) {
            const int64_t m = 150, n = 200, k = 333, j0 = 72, nb = 56;
            HostArray A(t, static_cast<size_t>(m * k)), B(t, static_cast<size_t>(k * n));
            for (size_t i = 0; i < A.size(); ++i) A.set(i, uniform(-1, 1));
            for (size_t i = 0; i < B.size(); ++i) B.set(i, uniform(-1, 1));
            DevBuf dA(A.bytes.size()), dB(B.bytes.size()), dC(static_cast<size_t>(m * n) * 4),
                dC2(static_cast<size_t>(m * nb) * 4);
            upload(dA.p, A.bytes.data(), A.bytes.size(), s.s);
            upload(dB.p, B.bytes.data(), B.bytes.size(), s.s);
            GemmDesc d;
            d.a_type = t;
            d.c_type = SW_DTYPE_F32;
            d.m = m; d.n = n; d.k = k;
            d.a = dA.p; d.lda = k;
            d.b = dB.p; d.ldb = n;
            d.c = dC.p; d.ldc = n;
            d.algo = GemmAlgo::HandWritten;
            CALL(gemm, dev, problem_of(d), d.algo, s.s);
            d.b = dB.at(static_cast<size_t>(j0) * 2); // columns [j0, j0 + nb) of B
            d.n = nb;
            d.c = dC2.p;
            d.ldc = nb;
            CALL(gemm, dev, problem_of(d), d.algo, s.s);
            std::vector<float> full(static_cast<size_t>(m * n)), part(static_cast<size_t>(m * nb));
            download(full.data(), dC.p, full.size() * 4, s.s);
            download(part.data(), dC2.p, part.size() * 4, s.s);
            bool same = true;
            for (int64_t r = 0; r < m; ++r)
                same = same && std::memcmp(&full[static_cast<size_t>(r * n + j0)], &part[static_cast<size_t>(r * nb)],
                                           static_cast<size_t>(nb) * 4) == 0;
            EXPECT(same, std::string("hand-written GEMM column block equals the full product's block, ") + sw::dtype_name(t));
        }
    }

    // Two streams at once (each has its own cuBLASLt workspace): same bits as one at a time.
    {
        Stream s2;
        const GemmCase g{SW_DTYPE_F32, SW_DTYPE_F32, false, GemmAlgo::CublasLt, false, false, 512, 512, 2048, 0, 0,
                         1.0f, 0.0f, true, SW_EPILOGUE_GELU};
        const int64_t n = 512, k = 2048;
        std::vector<float> A(static_cast<size_t>(n * k)), B(static_cast<size_t>(k * n)), bias(static_cast<size_t>(n));
        for (auto& v : A) v = static_cast<float>(uniform(-1, 1));
        for (auto& v : B) v = static_cast<float>(uniform(-1, 1));
        for (auto& v : bias) v = static_cast<float>(uniform(-1, 1));
        DevBuf dA(A.size() * 4), dB(B.size() * 4), dbias(bias.size() * 4), c1(static_cast<size_t>(n * n) * 4),
            c2(static_cast<size_t>(n * n) * 4), c3(static_cast<size_t>(n * n) * 4);
        upload(dA.p, A.data(), A.size() * 4, s.s);
        upload(dB.p, B.data(), B.size() * 4, s.s);
        upload(dbias.p, bias.data(), bias.size() * 4, s.s);
        GemmDesc d;
        d.m = n; d.n = n; d.k = k;
        d.a = dA.p; d.lda = k;
        d.b = dB.p; d.ldb = n;
        d.ldc = n;
        d.bias = dbias.p;
        d.epilogue = g.epilogue;
        d.algo = g.algo;
        d.c = c1.p;
        CALL(gemm, dev, problem_of(d), d.algo, s.s);
        CALL(stream_synchronize, dev, s.s);
        for (int rep = 0; rep < 4; ++rep) {
            d.c = c2.p;
            CALL(gemm, dev, problem_of(d), d.algo, s.s);
            d.c = c3.p;
            CALL(gemm, dev, problem_of(d), d.algo, s2.s);
        }
        CALL(stream_synchronize, dev, s.s);
        CALL(stream_synchronize, dev, s2.s);
        std::vector<float> h1(static_cast<size_t>(n * n)), h2(h1.size()), h3(h1.size());
        download(h1.data(), c1.p, h1.size() * 4, s.s);
        download(h2.data(), c2.p, h2.size() * 4, s.s);
        download(h3.data(), c3.p, h3.size() * 4, s.s);
        EXPECT(h1 == h2 && h1 == h3, "concurrent GEMMs on two streams give the single-stream bits");
    }

    // Split-K keeps fp32 partial sums for an f16/bf16 C. A row of A is x_0..x_{h-1} twice (x_i = 1 or 1 + 1/16) and a
    // column of B is +1 (first half of k) then -1 (second half): every partial sum of products is exact in fp32
    // (at most 19 significant bits), so the product is exactly 0 in any order of fp32 accumulation; partial sums
    // rounded to 16 bits (cuBLASLt's INPLACE / OUTPUT_TYPE split-K reductions) leave errors of several units. A
    // small m x n with a long k is the shape cuBLASLt splits.
    for (sw_dtype t : {SW_DTYPE_F16, SW_DTYPE_BF16}) {
        const int64_t m = 16, n = 16, k = 32768, h = k / 2;
        HostArray A(t, static_cast<size_t>(m * k)), B(t, static_cast<size_t>(k * n));
        for (int64_t r = 0; r < m; ++r)
            for (int64_t i = 0; i < h; ++i) {
                const double x = uniform(0, 1) < 0.5 ? 1.0 : 1.0625;
                A.set(static_cast<size_t>(r * k + i), x);
                A.set(static_cast<size_t>(r * k + h + i), x);
            }
        for (int64_t i = 0; i < k; ++i)
            for (int64_t c = 0; c < n; ++c) B.set(static_cast<size_t>(i * n + c), i < h ? 1.0 : -1.0);
        DevBuf dA(A.bytes.size()), dB(B.bytes.size()), dC(static_cast<size_t>(m * n) * 2);
        upload(dA.p, A.bytes.data(), A.bytes.size(), s.s);
        upload(dB.p, B.bytes.data(), B.bytes.size(), s.s);
        GemmDesc d;
        d.a_type = t;
        d.c_type = t;
        d.m = m; d.n = n; d.k = k;
        d.a = dA.p; d.lda = k;
        d.b = dB.p; d.ldb = n;
        d.c = dC.p; d.ldc = n;
        d.algo = GemmAlgo::CublasLt;
        if (CALL(gemm, dev, problem_of(d), d.algo, s.s)) {
            HostArray C(t, static_cast<size_t>(m * n));
            download(C.bytes.data(), dC.p, C.bytes.size(), s.s);
            size_t nonzero = 0;
            double worst = 0;
            for (size_t i = 0; i < C.size(); ++i) {
                nonzero += C.get(i) == 0.0 ? 0 : 1;
                worst = std::max(worst, std::fabs(C.get(i)));
            }
            EXPECT(nonzero == 0, fmt("cuBLASLt %s GEMM, k = %lld: %zu of %zu results are not exactly 0 (largest %g): "
                                     "partial sums were not accumulated in fp32",
                                     sw::dtype_name(t), static_cast<long long>(k), nonzero, C.size(), worst));
        }
    }

    // Argument checks.
    GemmDesc bad;
    bad.m = 4; bad.n = 4; bad.k = 4;
    DevBuf buf(4096);
    bad.a = buf.p; bad.b = buf.p; bad.c = buf.p;
    bad.lda = 4; bad.ldb = 4; bad.ldc = 4;
    bad.algo = GemmAlgo::HandWritten;
    EXPECT(STATUS(gemm, dev, problem_of(bad), bad.algo, s.s) == SW_ERR_UNSUPPORTED &&
               g_err.find("a = f32, b = f32, c = f32") != std::string::npos,
           "hand-written GEMM with f32 (must name the combination): " + g_err);
    bad.algo = GemmAlgo::Auto;
    bad.lda = 3;
    EXPECT(STATUS(gemm, dev, problem_of(bad), bad.algo, s.s) == SW_ERR_INVALID_ARGUMENT, "lda < k: " + g_err);
    bad.lda = 4;
    bad.c_type = SW_DTYPE_F16;
    EXPECT(STATUS(gemm, dev, problem_of(bad), bad.algo, s.s) == SW_ERR_UNSUPPORTED &&
               g_err.find("a = f32, b = f32, c = f16") != std::string::npos,
           "f32 inputs with f16 output (must name the combination): " + g_err);
    {
        // A and B of different 16-bit types: refused, naming all three (problem_of would make B A's type).
        sw::GemmProblem mixed = *problem_of(bad);
        mixed.a_type = SW_DTYPE_F16;
        mixed.b_type = SW_DTYPE_BF16;
        mixed.c_type = mixed.bias_type = SW_DTYPE_F32;
        EXPECT(STATUS(gemm, dev, &mixed, GemmAlgo::Auto, s.s) == SW_ERR_UNSUPPORTED &&
                   g_err.find("a = f16, b = bf16, c = f32") != std::string::npos,
               "a = f16 with b = bf16 (must name the combination): " + g_err);
    }
    bad.c_type = SW_DTYPE_F32;
    bad.m = 0;
    EXPECT(STATUS(gemm, dev, problem_of(bad), bad.algo, s.s) == SW_ERR_INVALID_ARGUMENT, "m = 0: " + g_err);
    bad.m = 4;
    EXPECT(STATUS(gemm, dev, nullptr, GemmAlgo::Auto, s.s) == SW_ERR_NULL_HANDLE, "null desc");
    EXPECT(STATUS(gemm, dev + 1000, problem_of(bad), bad.algo, s.s) == SW_ERR_NOT_FOUND, "bad ordinal");
    CALL(stream_synchronize, dev, s.s);
}

} // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0); // progress survives a kill (ctest's timeout) when stdout is a pipe
    void* lib = dlopen(SHARDWISE_CUDA_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "cuda_check: cannot load %s: %s\n", SHARDWISE_CUDA_PLUGIN_PATH, dlerror());
        return 1;
    }
    using Entry = const PluginApi* (*)();
    void* sym = dlsym(lib, "sw_cuda_plugin_api");
    if (!sym) {
        std::fprintf(stderr, "cuda_check: sw_cuda_plugin_api not exported: %s\n", dlerror());
        return 1;
    }
    Entry entry;
    std::memcpy(&entry, &sym, sizeof entry); // object pointer -> function pointer (POSIX guarantees this works)
    api = entry();
    if (!api || api->abi != sw::cuda::kPluginAbi) {
        std::fprintf(stderr, "cuda_check: plugin ABI %d, expected %d\n", api ? api->abi : -1, sw::cuda::kPluginAbi);
        return 1;
    }

    std::string versions;
    CALL(versions, &versions);
    std::printf("cuda_check: %s\n", versions.c_str());
    int32_t count = -1;
    if (!CALL(device_count, &count)) return 1;
    if (count == 0) {
        std::printf("cuda_check: no CUDA device, nothing to check (skipped): %s\n", versions.c_str());
        return 77;
    }
    if (argc > 1) dev = static_cast<int32_t>(std::atoi(argv[1]));
    std::printf("cuda_check: checking device %d of %d\n", dev, count);

    const auto t0 = std::chrono::steady_clock::now();
    struct Section { const char* name; void (*fn)(); };
    const Section sections[] = {{"peer reduce_sum", check_peer_reduce_sum},
                                {"devices", check_devices},   {"memory", check_memory},
                                {"events and flags", check_events_and_flags},
                                {"copy_2d", check_copy_2d},   {"reduce_sum", check_reduce_sum},
                                {"convert", check_convert},   {"bias_act", check_bias_act},
                                {"gelu_backward", check_gelu_backward}, {"gemm", check_gemm}};
    for (const Section& sec : sections) {
        const long before = failures;
        std::printf("[%s]\n", sec.name);
        std::fflush(stdout);
        sec.fn();
        std::printf("  %s\n", failures == before ? "ok" : "FAILED");
        std::fflush(stdout);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("cuda_check: %ld checks, %ld failed (%.1f s)\n", checks, failures, secs);
    return failures == 0 ? 0 : 1;
}
