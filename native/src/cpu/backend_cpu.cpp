// The CPU backend (core/backend.h): one device (ordinal 0) whose memory is host memory, streams that are in-order
// worker queues (cpu/stream.h), events that are markers in those queues, the blocked fp32 GEMM (cpu/gemm.h) and
// element-wise activations in chunks on the device's thread pool. Small GEMMs and element-wise operations on an idle
// stream run on the caller instead (cpu/call_path.h: the measured rule). CPU-only helpers live here too: the
// processor's model name, the physical memory size, the default thread count and the GeLU derivative.
#include "core/backend.h"
#include "core/dtype.h"
#include "core/objects.h"
#include "cpu/call_path.h"
#include "cpu/gemm.h"
#include "cpu/gemm_grouped_submit.h"
#include "cpu/stream.h"
#include "cpu/thread_pool.h"
#include "cpu/training_ops.h"
#include "core/row_ops.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <unistd.h>
#endif

namespace sw::cpu {
namespace {

std::string cpu_model_name() {
#if defined(__linux__)
    if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
        char line[512];
        while (std::fgets(line, sizeof line, f)) {
            if (std::strncmp(line, "model name", 10) == 0) {
                const char* colon = std::strchr(line, ':');
                std::string name = colon ? colon + 1 : line;
                while (!name.empty() && (name.front() == ' ' || name.front() == '\t')) name.erase(0, 1);
                while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
                std::fclose(f);
                return name;
            }
        }
        std::fclose(f);
    }
#endif
    return "CPU";
}

uint64_t physical_memory_bytes() {
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
#endif
    return 0;
}

int default_threads() {
    if (const char* env = std::getenv("SHARDWISE_NUM_THREADS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return hc > 0 ? static_cast<int>(hc) : 1;
}

// d/dx of the tanh-approximation GeLU.
float gelu_grad(float x) {
    const float c = 0.7978845608028654f;
    const float t = std::tanh(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

// ---------------------------------------------------------------- queue or inline (cpu/call_path.h)
InlinePolicy initial_policy() {
    const char* env = std::getenv("SHARDWISE_CPU_INLINE");
    if (env && std::strcmp(env, "never") == 0) return InlinePolicy::Never;
    if (env && std::strcmp(env, "always") == 0) return InlinePolicy::Always;
    return InlinePolicy::Auto;
}
std::atomic<int> g_policy{static_cast<int>(initial_policy())};

// Measured once per process (see call_path.h); 0 = not yet. Kernel values index the rates.
std::mutex g_measure_mu;
std::atomic<double> g_handoff_ns{0.0};
std::atomic<double> g_elementwise_ns{0.0};
std::atomic<double> g_gemm_rate[8] = {};

double measure_gemm_rate(Kernel kernel, ThreadPool& pool) {
    constexpr int64_t n = 64;
    static std::vector<float> a, b, c; // once per process (under g_measure_mu)
    if (a.empty()) {
        a.resize(n * n);
        b.resize(n * n);
        c.resize(n * n);
        uint32_t r = 12345u;
        for (auto* v : {&a, &b})
            for (float& x : *v) {
                r = r * 1664525u + 1013904223u;
                x = static_cast<float>(r >> 8) / 16777216.0f - 0.5f;
            }
    }
    GemmProblem g;
    g.m = g.n = g.k = n;
    g.a = a.data();
    g.b = b.data();
    g.c = c.data();
    g.lda = g.ldb = g.ldc = n;
    g.alpha = 1.0f;
    g.beta = 0.0f;
    double best = 0.0;
    for (int rep = 0; rep < 4; ++rep) { // the first one warms caches and code
        const auto t0 = std::chrono::steady_clock::now();
        cpu::gemm(g, kernel, pool);
        const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0 && (best == 0.0 || ns < best)) best = ns;
    }
    return 2.0 * n * n * n / std::max(best, 1.0);
}

double measure_elementwise_ns() {
    constexpr int kCount = 2048;
    static float buf[kCount];
    for (int i = 0; i < kCount; ++i) buf[i] = static_cast<float>(i - kCount / 2) / 256.0f;
    double best = 0.0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < kCount; ++i) buf[i] = gelu_tanh(buf[i]);
        const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
        if (best == 0.0 || ns < best) best = ns;
    }
    return std::max(best, 1.0) / kCount;
}

// The hand-off cost and, when kernel >= 0, the kernel's GEMM rate: true when known. The first caller measures (on a
// private stream, so that no user's queue is involved); a concurrent caller does not wait for it (false: it queues).
bool ensure_measured(sw_stream_s& s, int kernel) {
    if (g_handoff_ns.load(std::memory_order_acquire) > 0.0 &&
        (kernel < 0 || g_gemm_rate[kernel].load(std::memory_order_acquire) > 0.0))
        return true;
    std::unique_lock<std::mutex> lock(g_measure_mu, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    if (g_handoff_ns.load() == 0.0) {
        g_elementwise_ns.store(measure_elementwise_ns());
        Stream probe; // its worker starts asleep, as an idle stream's is
        g_handoff_ns.store(probe.measure_round_trip_ns(5), std::memory_order_release);
    }
    if (kernel >= 0 && g_gemm_rate[kernel].load() == 0.0)
        g_gemm_rate[kernel].store(measure_gemm_rate(static_cast<Kernel>(kernel), *s.device_impl->pool),
                                  std::memory_order_release);
    return true;
}

double gemm_estimate(int64_t m, int64_t n, int64_t k, int rate_index) {
    const double flops =
        2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(std::max<int64_t>(k, 1));
    const double rate = g_gemm_rate[rate_index].load(std::memory_order_relaxed);
    return rate > 0.0 ? flops / rate : 0.0;
}

// Runs body on the caller when the stream is idle and est_ns (from the measured costs; kernel < 0: element-wise)
// is below the threshold; otherwise (or if the stream turned busy meanwhile) queues it holding keep.
template <class Estimate, class Body>
void submit(sw_stream_s& s, int kernel, Estimate&& est_ns, KeepAlive keep, Body&& body) {
    const auto policy = static_cast<InlinePolicy>(g_policy.load(std::memory_order_relaxed));
    if (policy != InlinePolicy::Never && s.impl->idle()) {
        bool go = policy == InlinePolicy::Always;
        if (!go && ensure_measured(s, kernel))
            go = est_ns() <= kInlineFactor * g_handoff_ns.load(std::memory_order_relaxed);
        if (go) {
            Stream* one = s.impl.get();
            const auto* pb = &body; // one pointer: std::function stores it without allocating
            if (Stream::run_inline_if_idle(&one, 1, [pb] { (*pb)(); })) return;
        }
    }
    s.impl->enqueue([body = std::forward<Body>(body), keep = std::move(keep)] { body(); });
}

// Runs fn(begin, end) over [0, count) in chunks on the device's pool: inline when small (submit), else queued.
template <class Fn>
void enqueue_elementwise(sw_stream_s& s, uint64_t count, KeepAlive keep, Fn fn) {
    auto dev = s.device_impl;
    submit(
        s, -1, [count] { return static_cast<double>(count) * g_elementwise_ns.load(std::memory_order_relaxed); },
        std::move(keep), [dev, count, fn] {
            constexpr uint64_t kChunk = 1 << 16;
            const int64_t chunks = static_cast<int64_t>((count + kChunk - 1) / kChunk);
            dev->pool->parallel_for(chunks, [&](int64_t c) {
                const uint64_t b = static_cast<uint64_t>(c) * kChunk;
                fn(b, std::min<uint64_t>(count, b + kChunk));
            });
        });
}

// Blocks of whole rows, about 64 Ki elements each, fn(r0, r1), on the pool (a row's result never depends on the block).
template <class Fn>
void for_row_blocks(ThreadPool& pool, int64_t rows, int64_t cols, Fn&& fn) {
    const int64_t block = std::max<int64_t>(1, (int64_t{1} << 16) / cols);
    pool.parallel_for((rows + block - 1) / block, [&](int64_t c) { fn(c * block, std::min(rows, (c + 1) * block)); });
}

// Blocks of `width` columns each, fn(c0, c1), on the pool (sums over all rows of a column block stay in row order).
template <class Fn>
void for_column_blocks(ThreadPool& pool, int64_t cols, int64_t width, Fn&& fn) {
    pool.parallel_for((cols + width - 1) / width, [&](int64_t c) { fn(c * width, std::min(cols, (c + 1) * width)); });
}

// Row-wise work (core/row_ops.h) as one queued job in row blocks; `weight` scales the element-wise cost estimate (exp and
// the passes over a row cost more than one element-wise operation).
template <class Fn>
void enqueue_rows(sw_stream_s& s, int64_t rows, int64_t cols, int weight, KeepAlive keep, Fn fn) {
    auto dev = s.device_impl;
    const double elems = static_cast<double>(rows) * static_cast<double>(cols);
    submit(
        s, -1, [elems, weight] { return weight * elems * g_elementwise_ns.load(std::memory_order_relaxed); },
        std::move(keep), [dev, rows, cols, fn] { for_row_blocks(*dev->pool, rows, cols, fn); });
}

class CpuBackend final : public Backend {
public:
    sw_backend kind() const override { return SW_BACKEND_CPU; }

    // ------------------------------------------------------------------ devices
    int32_t device_count() override { return 1; }

    std::shared_ptr<DeviceImpl> create_device(int32_t ordinal, int32_t num_threads) override {
        if (ordinal != 0)
            fail(SW_ERR_NOT_FOUND, "ordinal = ", ordinal, ": the CPU backend has exactly one device (ordinal 0)");
        if (num_threads < 0 || num_threads > 4096)
            fail(SW_ERR_INVALID_ARGUMENT, "num_threads = ", num_threads, "; expected 0 (default) or 1..4096");
        auto impl = std::make_shared<DeviceImpl>();
        impl->backend = SW_BACKEND_CPU;
        impl->ops = this;
        impl->ordinal = 0;
        impl->num_threads = num_threads > 0 ? num_threads : default_threads();
        impl->pool = std::make_unique<ThreadPool>(impl->num_threads);
        impl->name = str(cpu_model_name(), ", ", impl->num_threads, impl->num_threads == 1 ? " thread" : " threads");
        if (const char* env = std::getenv("SHARDWISE_CPU_KERNEL")) {
            Kernel k;
            if (parse_kernel(env, &k) && kernel_supported(k)) impl->kernel = static_cast<int>(k);
        }
        return impl;
    }

    void device_info(DeviceImpl& dev, sw_device_info* info) override {
        info->backend = dev.backend;
        info->ordinal = dev.ordinal;
        info->num_threads = dev.num_threads;
        info->total_memory_bytes = physical_memory_bytes();
        copy_name(info->name, sizeof info->name, dev.name);
        const auto k = resolve_kernel(static_cast<Kernel>(dev.kernel.load()));
        copy_name(info->kernel, sizeof info->kernel, kernel_name(k));
    }

    void set_kernel(DeviceImpl& dev, const char* kernel) override {
        Kernel k;
        if (!parse_kernel(kernel, &k))
            fail(SW_ERR_INVALID_ARGUMENT, "kernel = '", kernel, "'; expected auto, avx512, avx2 or generic");
        if (!kernel_supported(k)) fail(SW_ERR_UNSUPPORTED, "kernel '", kernel, "' is not supported by this processor");
        dev.kernel = static_cast<int>(k);
    }

    void tile_shape(DeviceImpl& dev, sw_tile_shape* shape) override {
        const auto t = cpu::tile_shape(resolve_kernel(static_cast<Kernel>(dev.kernel.load())));
        shape->mr = t.mr;
        shape->nr = t.nr;
        shape->mc = t.mc;
        shape->kc = t.kc;
        shape->nc = t.nc;
    }

    // ------------------------------------------------------------------ memory
    void allocate(DeviceImpl&, uint64_t bytes, Storage& storage) override {
        const uint64_t rounded = (bytes + 63) / 64 * 64;
        storage.ptr = std::aligned_alloc(64, static_cast<size_t>(rounded));
        storage.ops = this;
    }

    void free_storage(Storage& storage) noexcept override { std::free(storage.ptr); }

    void check_wrap(DeviceImpl&, void*) override {} // any host memory

    // ------------------------------------------------------------------ streams
    void stream_create(sw_stream_s&) override {} // the host work queue is the stream

    void stream_wrap(sw_stream_s&, void*) override {
        fail(SW_ERR_UNSUPPORTED, "sw_stream_wrap takes a cudaStream_t; the CPU backend has no native streams to wrap");
    }

    void stream_release(sw_stream_s&) noexcept override {}

    sw_status stream_synchronize(sw_stream_s& s, std::string* message) override { return s.impl->synchronize(message); }

    void stream_wait_event(sw_stream_s& s, sw_event_s& e) override {
        std::shared_ptr<EventState> st = e.state;
        uint64_t gen;
        {
            std::lock_guard<std::mutex> lock(st->mu);
            gen = st->recorded;
            // Never recorded, or its marker already ran: nothing to wait for (no operation queued).
            if (gen == 0 || st->completed >= gen) return;
        }
        s.impl->enqueue(
            [st, gen] {
                std::unique_lock<std::mutex> lock(st->mu);
                st->cv.wait(lock, [&] { return st->completed >= gen; });
            },
            /*always=*/true);
    }

    // ------------------------------------------------------------------ events
    void event_create(sw_event_s&) override {} // the EventState is the event
    void event_release(sw_event_s&) noexcept override {}

    void event_record(sw_event_s& e, sw_stream_s& s) override {
        std::shared_ptr<EventState> st = e.state;
        uint64_t gen;
        {
            std::lock_guard<std::mutex> lock(st->mu);
            gen = ++st->recorded;
        }
        auto marker = [st, gen] {
            const auto now = std::chrono::steady_clock::now();
            std::lock_guard<std::mutex> lock(st->mu);
            if (gen > st->completed) {
                st->completed = gen;
                st->time = now;
            }
            st->cv.notify_all();
        };
        // On an idle stream everything before the marker has run: it completes now, on the caller (no hand-off).
        // A stream with a pending error is not idle: the marker is queued as `always` work as before.
        Stream* one = s.impl.get();
        const auto* pm = &marker;
        if (static_cast<InlinePolicy>(g_policy.load(std::memory_order_relaxed)) != InlinePolicy::Never &&
            s.impl->idle() && Stream::run_inline_if_idle(&one, 1, [pm] { (*pm)(); }))
            return;
        s.impl->enqueue(std::move(marker), /*always=*/true);
    }

    void event_synchronize(sw_event_s& e) override {
        std::unique_lock<std::mutex> lock(e.state->mu);
        const uint64_t gen = e.state->recorded;
        e.state->cv.wait(lock, [&] { return e.state->completed >= gen; });
    }

    int32_t event_query(sw_event_s& e) override {
        std::lock_guard<std::mutex> lock(e.state->mu);
        return e.state->completed >= e.state->recorded ? 1 : 0;
    }

    double event_elapsed_ms(sw_event_s& a, sw_event_s& b) override {
        std::chrono::steady_clock::time_point ta, tb;
        {
            std::lock_guard<std::mutex> lock(a.state->mu);
            if (a.state->recorded == 0 || a.state->completed < a.state->recorded)
                fail(SW_ERR_INVALID_ARGUMENT, "start has not completed (record it and synchronize first)");
            ta = a.state->time;
        }
        {
            std::lock_guard<std::mutex> lock(b.state->mu);
            if (b.state->recorded == 0 || b.state->completed < b.state->recorded)
                fail(SW_ERR_INVALID_ARGUMENT, "end has not completed (record it and synchronize first)");
            tb = b.state->time;
        }
        if (tb < ta)
            fail(SW_ERR_INVALID_ARGUMENT, "the end event was recorded before the start event (end is ",
                 std::chrono::duration<double, std::milli>(ta - tb).count(),
                 " ms earlier); expected start recorded first (are the arguments swapped?)");
        return std::chrono::duration<double, std::milli>(tb - ta).count();
    }

    // ------------------------------------------------------------------ copies
    // Copies and fills: inline on an idle stream when small. The estimate charges every 4 bytes one GeLU element's
    // measured cost, far more than a copy costs, so only copies well below the threshold run inline.
    void memcpy(sw_stream_s& s, void* dst, const void* src, uint64_t bytes, KeepAlive keep) override {
        submit(s, -1, [bytes] { return static_cast<double>(bytes / 4) * g_elementwise_ns.load(std::memory_order_relaxed); },
               std::move(keep), [dst, src, bytes] { std::memmove(dst, src, bytes); });
    }

    void memset(sw_stream_s& s, void* dst, uint8_t value, uint64_t bytes, KeepAlive keep) override {
        submit(s, -1, [bytes] { return static_cast<double>(bytes / 4) * g_elementwise_ns.load(std::memory_order_relaxed); },
               std::move(keep), [dst, value, bytes] { std::memset(dst, value, bytes); });
    }

    // ------------------------------------------------------------------ compute
    void check_gemm_types(sw_dtype a_type, sw_dtype b_type, sw_dtype c_type) override {
        // Every combination of the C ABI (cpu::gemm): a = b in {f32, f16, bf16}, c = f32 or a's type.
        if (!gemm_types_defined(a_type, b_type, c_type))
            fail(SW_ERR_UNSUPPORTED, "a = ", dtype_name(a_type), ", b = ", dtype_name(b_type), ", c = ",
                 dtype_name(c_type), ": the CPU backend computes GEMM with a = b in {f32, f16, bf16} and c = f32 or ",
                 "a's type");
    }

    void gemm(sw_stream_s& s, const GemmProblem& problem, KeepAlive keep) override {
        auto dev = s.device_impl;
        const auto kernel = static_cast<Kernel>(dev->kernel.load());
        const int rate_index = static_cast<int>(resolve_kernel(kernel_supported(kernel) ? kernel : Kernel::Auto));
        auto estimate = [&problem, rate_index] { return gemm_estimate(problem.m, problem.n, problem.k, rate_index); };
        submit(s, rate_index, estimate, std::move(keep),
               [problem, kernel, dev] { cpu::gemm(problem, kernel, *dev->pool); });
    }

    // One job for the whole group (cpu/gemm_grouped_submit.h): a shared op(A) is packed once for every member.
    void gemm_grouped(sw_stream_s* const* streams, const GemmProblem* problems, KeepAlive* keeps,
                      int32_t count) override {
        submit_gemm_grouped(streams, problems, keeps, count);
    }

    void check_activation_type(sw_dtype dtype) override {
        if (dtype != SW_DTYPE_F32)
            fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype),
                 ": the CPU backend computes activations in float32 only");
    }

    // With the device's GEMM kernel's GeLU (cpu::gelu): the bits of the GEMMs' fused GeLU epilogue on this device.
    void gelu(sw_stream_s& s, sw_dtype, const void* x, void* y, uint64_t count, KeepAlive keep) override {
        auto* fx = static_cast<const float*>(x);
        auto* fy = static_cast<float*>(y);
        const auto kernel = static_cast<Kernel>(s.device_impl->kernel.load());
        enqueue_elementwise(s, count, std::move(keep), [fx, fy, kernel](uint64_t b, uint64_t e) {
            cpu::gelu(fy + b, fx + b, static_cast<int64_t>(e - b), kernel);
        });
    }

    void gelu_backward(sw_stream_s& s, sw_dtype, const void* x, const void* dy, void* dx, uint64_t count,
                       KeepAlive keep) override {
        auto* fx = static_cast<const float*>(x);
        auto* fdy = static_cast<const float*>(dy);
        auto* fdx = static_cast<float*>(dx);
        enqueue_elementwise(s, count, std::move(keep), [fx, fdy, fdx](uint64_t b, uint64_t e) {
            for (uint64_t i = b; i < e; ++i) fdx[i] = fdy[i] * gelu_grad(fx[i]);
        });
    }

    // ------------------------------------------------------------------ mixed-precision training (cpu/training_ops.h)
    void check_training_type(sw_dtype dtype, const char* arg, const char* op) override {
        if (dtype != SW_DTYPE_F32 && dtype != SW_DTYPE_F16 && dtype != SW_DTYPE_BF16)
            fail(SW_ERR_UNSUPPORTED, arg, " = ", dtype_name(dtype), ": the CPU backend's ", op,
                 " takes f32, f16 or bf16 (SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16)");
    }

    void convert(sw_stream_s& s, sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t count,
                 KeepAlive keep) override {
        enqueue_elementwise(s, count, std::move(keep), [=](uint64_t b, uint64_t e) {
            convert_range(src_type, src, dst_type, dst, b, e);
        });
    }

    void unscale_check(sw_stream_s& s, sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                       KeepAlive keep) override {
        auto dev = s.device_impl;
        submit(
            s, -1, [count] { return static_cast<double>(count) * g_elementwise_ns.load(std::memory_order_relaxed); },
            std::move(keep), [dev, dtype, buf, count, inv_scale, flag] {
            constexpr uint64_t kChunk = 1 << 16;
            const int64_t chunks = static_cast<int64_t>((count + kChunk - 1) / kChunk);
            std::atomic<bool> bad{false};
            dev->pool->parallel_for(chunks, [&](int64_t c) {
                const uint64_t b = static_cast<uint64_t>(c) * kChunk;
                if (unscale_range(dtype, buf, inv_scale, b, std::min<uint64_t>(count, b + kChunk)))
                    bad.store(true, std::memory_order_relaxed);
            });
            if (bad.load()) *flag = 1.0f;
        });
    }

    void axpy(sw_stream_s& s, sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count,
              KeepAlive keep) override {
        enqueue_elementwise(s, count, std::move(keep), [=](uint64_t b, uint64_t e) {
            axpy_range(x_type, alpha, x, y, b, e);
        });
    }

    // ------------------------------------------------------------------ attention and normalization (cpu/row_ops.cpp)
    // Blocks of whole rows (about 64 Ki elements each) on the device's pool; a row's result never depends on the block.
    void softmax(sw_stream_s& s, const SoftmaxRows& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 8, std::move(keep), [a](int64_t b, int64_t e) { softmax_rows(a, b, e); });
    }
    void softmax_backward(sw_stream_s& s, const SoftmaxBackwardRows& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 3, std::move(keep), [a](int64_t b, int64_t e) { softmax_backward_rows(a, b, e); });
    }
    void norm(sw_stream_s& s, const NormRows& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 4, std::move(keep), [a](int64_t b, int64_t e) { norm_rows(a, b, e); });
    }
    // The parameter gradients (column blocks, each summed over all rows in order) before dx, which may overwrite dy.
    void norm_backward(sw_stream_s& s, const NormBackwardRows& a, KeepAlive keep) override {
        auto dev = s.device_impl;
        const double elems = static_cast<double>(a.rows) * static_cast<double>(a.cols);
        submit(
            s, -1, [elems] { return 8 * elems * g_elementwise_ns.load(std::memory_order_relaxed); }, std::move(keep),
            [dev, a] {
                if (a.dgamma || a.dbeta)
                    for_column_blocks(*dev->pool, a.cols, 256, [&](int64_t c0, int64_t c1) { norm_backward_param_cols(a, c0, c1); });
                for_row_blocks(*dev->pool, a.rows, a.cols, [&](int64_t r0, int64_t r1) { norm_backward_dx_rows(a, r0, r1); });
            });
    }

    void activation(sw_stream_s& s, const ActivationArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { activation_range(a, b, e); });
    }
    void activation_backward(sw_stream_s& s, const ActivationBackwardArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { activation_backward_range(a, b, e); });
    }
    void glu(sw_stream_s& s, const GluArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 4, std::move(keep), [a](int64_t b, int64_t e) { glu_rows(a, b, e); });
    }
    void glu_backward(sw_stream_s& s, const GluBackwardArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 6, std::move(keep), [a](int64_t b, int64_t e) { glu_backward_rows(a, b, e); });
    }
    void dropout(sw_stream_s& s, const DropoutArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { dropout_range(a, b, e); });
    }
    void embedding(sw_stream_s& s, const EmbeddingArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 1, std::move(keep), [a](int64_t b, int64_t e) { embedding_rows(a, b, e); });
    }
    // Clear (unless accumulating), then column blocks each adding the tokens in order: the same bits for any pool size.
    void embedding_backward(sw_stream_s& s, const EmbeddingBackwardArgs& a, KeepAlive keep) override {
        auto dev = s.device_impl;
        const double elems = static_cast<double>(a.rows + a.shard_rows) * static_cast<double>(a.cols);
        submit(
            s, -1, [elems] { return 2 * elems * g_elementwise_ns.load(std::memory_order_relaxed); }, std::move(keep),
            [dev, a] {
                if (!a.accumulate && a.shard_rows > 0)
                    for_row_blocks(*dev->pool, a.shard_rows, a.cols,
                                   [&](int64_t r0, int64_t r1) { embedding_backward_clear_rows(a, r0, r1); });
                for_column_blocks(*dev->pool, a.cols, 64, [&](int64_t c0, int64_t c1) { embedding_backward_cols(a, c0, c1); });
            });
    }
    void cross_entropy_partial(sw_stream_s& s, const CrossEntropyPartialArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 6, std::move(keep), [a](int64_t b, int64_t e) { cross_entropy_partial_rows(a, b, e); });
    }
    void cross_entropy_partial_tree(sw_stream_s& s, const CrossEntropyPartialTreeArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols + a.parts, 6, std::move(keep),
                     [a](int64_t b, int64_t e) { cross_entropy_partial_tree_rows(a, b, e); });
    }
    void cross_entropy_combine(sw_stream_s& s, const CrossEntropyCombineArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.parts, 8, std::move(keep), [a](int64_t b, int64_t e) { cross_entropy_combine_rows(a, b, e); });
    }
    void cross_entropy_backward(sw_stream_s& s, const CrossEntropyBackwardArgs& a, KeepAlive keep) override {
        enqueue_rows(s, a.rows, a.cols, 6, std::move(keep), [a](int64_t b, int64_t e) { cross_entropy_backward_rows(a, b, e); });
    }

    // ------------------------------------------------------------------ optimizers (cpu/row_ops.cpp)
    void sgd_step(sw_stream_s& s, const SgdArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { sgd_range(a, b, e); });
    }
    void adamw_step(sw_stream_s& s, const AdamWArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { adamw_range(a, b, e); });
    }
    void scale(sw_stream_s& s, const ScaleArgs& a, KeepAlive keep) override {
        enqueue_elementwise(s, a.count, std::move(keep), [a](uint64_t b, uint64_t e) { scale_range(a, b, e); });
    }
    // Fixed blocks summed in parallel into a vector, then added in block order: the same bits for any pool size.
    void sum_squares(sw_stream_s& s, const SumSquaresArgs& a, KeepAlive keep) override {
        auto dev = s.device_impl;
        submit(
            s, -1, [a] { return 2 * static_cast<double>(a.count) * g_elementwise_ns.load(std::memory_order_relaxed); },
            std::move(keep), [dev, a] {
                const uint64_t blocks = (a.count + kSumSquaresBlock - 1) / kSumSquaresBlock;
                std::vector<double> part(blocks);
                dev->pool->parallel_for(static_cast<int64_t>(blocks), [&](int64_t k) {
                    part[static_cast<size_t>(k)] = sum_squares_block(a, static_cast<uint64_t>(k));
                });
                double total = a.accumulate ? *a.out : 0.0;
                for (double v : part) total += v;
                *a.out = total;
            });
    }
};

} // namespace
} // namespace sw::cpu

namespace sw::cpu {
void set_inline_policy(InlinePolicy policy) { g_policy.store(static_cast<int>(policy)); }
InlinePolicy inline_policy() { return static_cast<InlinePolicy>(g_policy.load()); }
InlineCosts inline_costs(Kernel kernel) {
    const int k = static_cast<int>(resolve_kernel(kernel_supported(kernel) ? kernel : Kernel::Auto));
    return {g_handoff_ns.load(), g_gemm_rate[k].load(), g_elementwise_ns.load()};
}
double gemm_estimate_ns(int64_t m, int64_t n, int64_t k, Kernel kernel) {
    return gemm_estimate(m, n, k, static_cast<int>(resolve_kernel(kernel_supported(kernel) ? kernel : Kernel::Auto)));
}
} // namespace sw::cpu

namespace sw {
Backend& cpu_backend() {
    static auto* backend = new cpu::CpuBackend(); // never destroyed: storages may be freed during exit
    return *backend;
}
} // namespace sw
