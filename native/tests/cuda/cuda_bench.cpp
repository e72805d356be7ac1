// cuda_bench: measures issue 3's performance targets on one CUDA device, through the public C ABI only
// (shardwise.h), and prints one markdown table per target:
//
//   1. sharded GEMM (the column-parallel path: each of p virtual ranks multiplies X by its column shard of W on
//      its own stream with sw_gemm, then sw_all_gather_columns assembles Y on every rank) >= 0.95x one unsharded
//      cuBLASLt GEMM of the same total shape (8192^3 bf16, p = 2, 4, 8);
//   2. the hand-written mma.sync GEMM (sw_device_set_kernel "mma") >= 0.7x cuBLASLt ("cublaslt"), 8192^3, 4096^3;
//      and, where the device runs the plugin's sm_90a code, the wgmma kernel ("wgmma") >= 0.9x cuBLASLt;
//   3. the all-gather's layout step ([p][M][n_r] -> [M][N] on every rank, uneven shards) >= 0.85x the device-to-
//      device copy bandwidth of sw_memcpy_d2d_async over the same number of bytes;
//   4. wrapper overhead per sharded-GEMM call < 5 us over the kernels' own time (M = 16, K = N = 1024, p = 1, 2, 4);
//   5. (issue 13, correctness only) sw_gemm_ex with f16/bf16 inputs and f32 or 16-bit C through each kernel, every
//      transpose, ragged shapes, bias, GeLU, against float64 references of the rounded inputs; refused combinations.
//
// Every result is verified (outputs pre-filled with NaN bytes, compared against each other and against float64
// references); any verification failure or API error makes the exit status non-zero. Not meeting a target is not
// a failure: this is a measurement. Without a CUDA device it prints why and exits 77.
//
// Usage: cuda_bench [--quick] [--out FILE] [--emulated] [--device N] [--reps N] [--seed N]
//                   [--inject-fault unwritten-column]
//   --quick      smaller shapes (a few seconds on a GPU)
//   --out FILE   also write the markdown report to FILE
//   --emulated   harness smoke test against the emulated CUDA plugin (host memory, f32, tiny shapes); sets
//                SHARDWISE_CUDA_PLUGIN_PATH to the emulated plugin unless it is set. Numbers are meaningless.
//   --inject-fault unwritten-column
//                self-test of the verification: after each verified run one column of one output is overwritten
//                with NaN bytes (as if the gather had left it unwritten); exits 0 only if every such fault is
//                detected and nothing else fails.
#include "shardwise.h"
#include "../float16_ref.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// ------------------------------------------------------------------------------------------ errors, output

struct ApiError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
    va_list ap;
    va_start(ap, f);
    char buf[1024];
    const int n = std::vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    if (n < 0) return {};
    if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
    std::string s(static_cast<size_t>(n) + 1, '\0');
    va_start(ap, f);
    std::vsnprintf(&s[0], s.size(), f, ap);
    va_end(ap);
    s.resize(static_cast<size_t>(n));
    return s;
}

// Every sw_* status is checked: a failure throws with the call, the status and sw_last_error().
void check_status(sw_status st, const char* call, int line) {
    if (st != SW_OK)
        throw ApiError(fmt("line %d: %s -> %s: %s", line, call, sw_status_string(st), sw_last_error()));
}
#define CK(call) check_status((call), #call, __LINE__)

std::string g_md; // the markdown report
void md(const std::string& s) { g_md += s; }
void progress(const std::string& s) {
    std::fprintf(stderr, "cuda_bench: %s\n", s.c_str());
    std::fflush(stderr);
}

// ------------------------------------------------------------------------------------------ options

struct Options {
    bool quick = false;
    bool emulated = false;
    bool inject = false;
    std::string out;
    int32_t device = 0;
    int reps = 0; // 0: the mode's default
    uint64_t seed = 0;
    bool seed_set = false;
};
Options opt;

// ------------------------------------------------------------------------------------------ host helpers

uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Runs fn(begin, end) over [0, n) on the host's cores.
void parallel_for(uint64_t n, const std::function<void(uint64_t, uint64_t)>& fn) {
    const unsigned hw = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
    const uint64_t threads = std::min<uint64_t>(hw, std::max<uint64_t>(1, n / 65536));
    if (threads <= 1) {
        fn(0, n);
        return;
    }
    std::vector<std::thread> pool;
    const uint64_t chunk = (n + threads - 1) / threads;
    for (uint64_t t = 0; t < threads; ++t) {
        const uint64_t b = t * chunk, e = std::min(n, b + chunk);
        if (b < e) pool.emplace_back(fn, b, e);
    }
    for (auto& th : pool) th.join();
}

uint16_t float_to_bf16(float f) { // round to nearest even; inputs here are finite
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
float bf16_to_float(uint16_t h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct DType {
    sw_dtype t;
    size_t esz;
    const char* name;
    double u_out; // unit roundoff of the output type
};
const DType kBF16{SW_DTYPE_BF16, 2, "bf16", 1.0 / 256};
const DType kF32{SW_DTYPE_F32, 4, "f32", 1.0 / 16777216};

// Relative to sum_k |x_ik||w_kj|: how far two fp32-accumulated results may drift apart through a different
// summation order (cuBLASLt picks its algorithm, split-K and tiles per shape; the mma kernel has its own order).
// Far above fp32's real order effects (~sqrt(K) * 2^-24), far below a wrong element (~ |y| ~ sqrt(K)/3 against a
// scale of ~K/3, i.e. ~1/sqrt(K) >= 1e-2 for the shapes here).
const double kAccTol = 1.0 / 4096;

float round_to(const DType& d, float f) { return d.t == SW_DTYPE_BF16 ? bf16_to_float(float_to_bf16(f)) : f; }

// Random values in [-1, 1), exactly representable in the dtype; counter-based, so generated in parallel.
std::vector<float> random_matrix(const DType& d, uint64_t n, uint64_t seed) {
    std::vector<float> v(n);
    parallel_for(n, [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) {
            const double u = static_cast<double>(splitmix(seed * 0x100000001b3ull ^ i) >> 40) / double(1ull << 24);
            v[i] = round_to(d, static_cast<float>(2 * u - 1));
        }
    });
    return v;
}

std::vector<uint8_t> encode(const DType& d, const float* v, uint64_t n) {
    std::vector<uint8_t> out(n * d.esz);
    if (d.t == SW_DTYPE_F32) {
        std::memcpy(out.data(), v, n * 4);
        return out;
    }
    parallel_for(n, [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) {
            const uint16_t h = float_to_bf16(v[i]);
            std::memcpy(&out[i * 2], &h, 2);
        }
    });
    return out;
}
std::vector<float> decode(const DType& d, const std::vector<uint8_t>& bytes) {
    const uint64_t n = bytes.size() / d.esz;
    std::vector<float> v(n);
    if (d.t == SW_DTYPE_F32) {
        std::memcpy(v.data(), bytes.data(), n * 4);
        return v;
    }
    parallel_for(n, [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) {
            uint16_t h;
            std::memcpy(&h, &bytes[i * 2], 2);
            v[i] = bf16_to_float(h);
        }
    });
    return v;
}

struct Stat {
    double median = 0, min = 0;
};
Stat stat_of(std::vector<double> v) {
    Stat s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    s.min = v.front();
    return s;
}
std::string ms_cell(const Stat& s) { return fmt("%.4f (%.4f)", s.median, s.min); }
std::string us_cell(const Stat& s) { return fmt("%.2f (%.2f)", s.median, s.min); }

// ------------------------------------------------------------------------------------------ verification

struct CheckRecord {
    std::string what;
    bool ok;
    bool injected; // a fault was injected into this output: the check is expected to fail
    std::string detail;
};
std::vector<CheckRecord> g_checks;

void record_check(const std::string& what, bool ok, bool injected, const std::string& detail) {
    g_checks.push_back({what, ok, injected, detail});
    if (!ok) progress(fmt("%s: %s%s", injected ? "fault detected as expected" : "VERIFICATION FAILED", what.c_str(),
                          (": " + detail).c_str()));
}

// The outcome of one comparison; several (one per rank) are recorded as one check by RankChecks.
struct Outcome {
    bool ok;
    double worst; // max |diff| / tolerance (or the number of wrong elements where exactness is required)
    std::string detail;
};

// One check over every rank's output: passes when every rank's does; `injected` when a fault was injected into one.
struct RankChecks {
    std::string what;
    bool injected;
    int ranks = 0, failed = 0;
    Outcome worst_ok{true, -1, ""}, first_failed{true, 0, ""};
    void add(int rank, const Outcome& o) {
        ++ranks;
        if (!o.ok && failed++ == 0) first_failed = {false, o.worst, fmt("rank %d: ", rank) + o.detail};
        if (o.ok && o.worst > worst_ok.worst) worst_ok = {true, o.worst, fmt("worst rank %d: ", rank) + o.detail};
    }
    void record() const {
        if (failed)
            record_check(what, false, injected, fmt("%d of %d ranks failed; ", failed, ranks) + first_failed.detail);
        else
            record_check(what, true, injected, fmt("all %d ranks ok; ", ranks) + worst_ok.detail);
    }
};

// got vs another implementation's result `ref` (both M x N, row-major), element by element:
// |got - ref| <= u_out * (|got| + |ref|) + kAccTol * ||x_i||_2 * ||w_j||_2, the last factor being an upper bound of
// sum_k |x_ik||w_kj| (Cauchy-Schwarz; about 4/3 of it for uniform data). A NaN (an unwritten element) always fails.
Outcome compare_results(const DType& d, const std::vector<float>& got, const std::vector<float>& ref, int64_t M,
                        int64_t N, const std::vector<double>& rn, const std::vector<double>& cn) {
    struct Acc {
        uint64_t bad = 0, nonfinite = 0;
        double worst = 0;          // max |d| / tolerance
        double worst_scaled = 0;   // max |d| / (||x_i|| ||w_j||)
        int64_t bi = -1, bj = -1;
    };
    std::mutex mu;
    Acc total;
    parallel_for(static_cast<uint64_t>(M), [&](uint64_t b, uint64_t e) {
        Acc a;
        for (uint64_t i = b; i < e; ++i)
            for (int64_t j = 0; j < N; ++j) {
                const double g = got[i * N + j], r = ref[i * N + j];
                const double scale = rn[i] * cn[j];
                if (!std::isfinite(g) || !std::isfinite(r)) {
                    if (a.bad == 0) { a.bi = static_cast<int64_t>(i); a.bj = j; }
                    ++a.bad;
                    ++a.nonfinite;
                    continue;
                }
                const double diff = std::fabs(g - r);
                const double tol = d.u_out * (std::fabs(g) + std::fabs(r)) + kAccTol * scale;
                if (diff > tol) {
                    if (a.bad == 0) { a.bi = static_cast<int64_t>(i); a.bj = j; }
                    ++a.bad;
                }
                if (tol > 0) a.worst = std::max(a.worst, diff / tol);
                if (scale > 0) a.worst_scaled = std::max(a.worst_scaled, diff / scale);
            }
        std::lock_guard<std::mutex> l(mu);
        if (total.bad == 0 && a.bad) { total.bi = a.bi; total.bj = a.bj; }
        total.bad += a.bad;
        total.nonfinite += a.nonfinite;
        total.worst = std::max(total.worst, a.worst);
        total.worst_scaled = std::max(total.worst_scaled, a.worst_scaled);
    });
    std::string detail = fmt("%lld x %lld elements, max abs(diff)/tol %.3g, max abs(diff)/(norm(x_i) norm(w_j)) %.3g",
                             static_cast<long long>(M), static_cast<long long>(N), total.worst, total.worst_scaled);
    if (total.bad)
        detail += fmt("; %llu out of tolerance (%llu NaN/Inf: unwritten or wrong), first at [%lld][%lld]: %g vs %g",
                      static_cast<unsigned long long>(total.bad), static_cast<unsigned long long>(total.nonfinite),
                      static_cast<long long>(total.bi), static_cast<long long>(total.bj),
                      static_cast<double>(got[total.bi * N + total.bj]), static_cast<double>(ref[total.bi * N + total.bj]));
    return {total.bad == 0, total.worst, detail};
}

// got (M x N) vs a float64 reference of X (M x K) . W (K x N) at sampled elements (every element when the product is
// small): |got - ref| <= u_out * |ref| + kAccTol * sum_k |x_ik||w_kj| (exact here).
Outcome check_against_reference(const DType& d, const std::vector<float>& got, const std::vector<float>& X,
                                const std::vector<float>& W, int64_t M, int64_t K, int64_t N, uint64_t seed) {
    std::vector<std::pair<int64_t, int64_t>> at;
    if (static_cast<double>(M) * N * K <= 5e7) {
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) at.emplace_back(i, j);
    } else {
        at = {{0, 0}, {0, N - 1}, {M - 1, 0}, {M - 1, N - 1}};
        for (uint64_t s = 0; s < 1024; ++s) {
            const uint64_t h = splitmix(seed ^ (s * 0x9e37ull));
            at.emplace_back(static_cast<int64_t>(h % static_cast<uint64_t>(M)),
                            static_cast<int64_t>((h >> 32) % static_cast<uint64_t>(N)));
        }
    }
    uint64_t bad = 0;
    double worst = 0;
    std::string first;
    for (const auto& [i, j] : at) {
        double ref = 0, scale = 0;
        for (int64_t p = 0; p < K; ++p) {
            const double x = X[i * K + p], w = W[p * N + j];
            ref += x * w;
            scale += std::fabs(x * w);
        }
        const double g = got[i * N + j];
        const double tol = d.u_out * std::fabs(ref) + kAccTol * scale;
        const bool ok = std::isfinite(g) && std::fabs(g - ref) <= tol;
        if (std::isfinite(g) && tol > 0) worst = std::max(worst, std::fabs(g - ref) / tol);
        if (!ok && bad++ == 0) first = fmt("first at [%lld][%lld]: %g vs %g", static_cast<long long>(i),
                                           static_cast<long long>(j), g, ref);
    }
    std::string detail = fmt("%zu elements vs float64, max abs(diff)/tol %.3g", at.size(), worst);
    if (bad) detail += fmt("; %llu out of tolerance, %s", static_cast<unsigned long long>(bad), first.c_str());
    return {bad == 0, worst, detail};
}
void record(const std::string& what, const Outcome& o, bool injected = false) { record_check(what, o.ok, injected, o.detail); }

void row_norms(const std::vector<float>& A, int64_t rows, int64_t cols, std::vector<double>& out) {
    out.assign(static_cast<size_t>(rows), 0.0);
    parallel_for(static_cast<uint64_t>(rows), [&](uint64_t b, uint64_t e) {
        for (uint64_t i = b; i < e; ++i) {
            double s = 0;
            for (int64_t j = 0; j < cols; ++j) s += double(A[i * cols + j]) * A[i * cols + j];
            out[i] = std::sqrt(s);
        }
    });
}
void col_norms(const std::vector<float>& A, int64_t rows, int64_t cols, std::vector<double>& out) {
    out.assign(static_cast<size_t>(cols), 0.0);
    parallel_for(static_cast<uint64_t>(cols), [&](uint64_t b, uint64_t e) {
        for (int64_t i = 0; i < rows; ++i)
            for (uint64_t j = b; j < e; ++j) out[j] += double(A[i * cols + j]) * A[i * cols + j];
        for (uint64_t j = b; j < e; ++j) out[j] = std::sqrt(out[j]);
    });
}

// ------------------------------------------------------------------------------------------ device context

constexpr int kMaxRanks = 8;

struct Ctx {
    sw_device dev = nullptr;
    std::vector<sw_stream> s; // s[r]: rank r's stream; s[kMaxRanks]: an extra one (the gate's second rank)
    sw_event start = nullptr;
    std::vector<sw_event> end;
    sw_comm gate = nullptr; // 2 ranks: rank 0 on s[0] holds the device back while work is queued (see gated())
    DType dt = kBF16;
    int warmup = 3, reps = 20;
};
Ctx C;

sw_buffer alloc(uint64_t bytes) {
    sw_buffer b = nullptr;
    CK(sw_buffer_alloc(C.dev, bytes, &b));
    return b;
}
void release(sw_buffer& b) {
    if (b) CK(sw_buffer_destroy(b));
    b = nullptr;
}
void upload(sw_buffer b, uint64_t offset_bytes, const std::vector<uint8_t>& bytes) {
    CK(sw_memcpy_h2d_async(b, offset_bytes, bytes.data(), bytes.size(), C.s[0]));
    CK(sw_stream_synchronize(C.s[0]));
}
std::vector<uint8_t> download(sw_buffer b, uint64_t offset_bytes, uint64_t bytes) {
    std::vector<uint8_t> out(bytes);
    CK(sw_memcpy_d2h_async(out.data(), b, offset_bytes, bytes, C.s[0]));
    CK(sw_stream_synchronize(C.s[0]));
    return out;
}
// NaN bytes (0xFF..: NaN in f32, f16 and bf16), in s[0]'s order (every measured frame starts after it).
void fill_nan(sw_buffer b, uint64_t offset_bytes, uint64_t bytes) {
    CK(sw_memset_async(b, offset_bytes, 0xff, bytes, C.s[0]));
}
// The fault of --inject-fault unwritten-column: column `col` of an M x ld matrix at element offset `off` set to NaN.
void inject_unwritten_column(sw_buffer b, uint64_t off, int64_t rows, int64_t ld, int64_t col) {
    for (int64_t i = 0; i < rows; ++i)
        CK(sw_memset_async(b, (off + static_cast<uint64_t>(i * ld + col)) * C.dt.esz, 0xff, C.dt.esz, C.s[0]));
    CK(sw_stream_synchronize(C.s[0]));
}

void sync_ranks(int p) {
    for (int r = 0; r < p; ++r) CK(sw_stream_synchronize(C.s[r])); // also reports collectives' host-side errors
}

// A measured frame over p rank streams: begin_frame records `start` on s[0] and makes the other streams wait for it;
// the caller queues the work; end_frame records `end[r]` on every stream and returns the largest start -> end[r] time
// (ms) once all are done.
void begin_frame(int p) {
    CK(sw_event_record(C.start, C.s[0]));
    for (int r = 1; r < p; ++r) CK(sw_stream_wait_event(C.s[r], C.start));
}
// Waits for the `end[r]` events already recorded, then returns the largest start -> end[r] time (ms).
double frame_time(int p) {
    double worst = 0;
    for (int r = 0; r < p; ++r) {
        CK(sw_event_synchronize(C.end[r]));
        double ms = 0;
        CK(sw_event_elapsed_ms(C.start, C.end[r], &ms));
        worst = std::max(worst, ms);
    }
    sync_ranks(p);
    return worst;
}
double end_frame(int p) {
    for (int r = 0; r < p; ++r) CK(sw_event_record(C.end[r], C.s[r]));
    return frame_time(p);
}
// One frame of body().
double timed(int p, const std::function<void()>& body) {
    begin_frame(p);
    body();
    return end_frame(p);
}

struct Variant {
    std::string name;
    int p;
    std::function<void()> prepare; // host-side setup before the frame (not timed), may be empty
    std::function<void()> body;
};
// Warm-up, then C.reps timed frames of every variant, interleaved (v0, v1, ..., v0, v1, ...) so that clock and
// thermal drift affect them alike. Returns the times (ms) per variant.
std::vector<std::vector<double>> measure(const std::vector<Variant>& vs) {
    std::vector<std::vector<double>> t(vs.size());
    for (int it = 0; it < C.warmup + C.reps; ++it)
        for (size_t v = 0; v < vs.size(); ++v) {
            if (vs[v].prepare) vs[v].prepare();
            const double ms = timed(vs[v].p, vs[v].body);
            if (it >= C.warmup) t[v].push_back(ms);
        }
    return t;
}

// Queues `body` on ranks' streams while the device is held back, then releases it, so the queued kernels run back to
// back without waiting for the host: their own time. The hold is a 2-rank barrier whose rank 0 is queued on s[0] (its
// stream spins on the collective's flag until rank 1 joins); rank 1 joins from this thread after the queueing, or from
// a watchdog thread if the queueing itself blocks (a full launch queue), in which case the result is refused.
double gated(int p, const std::function<void()>& body) {
    CK(sw_barrier(C.gate, 0, C.s[0]));
    CK(sw_event_record(C.start, C.s[0]));
    for (int r = 1; r < p; ++r) CK(sw_stream_wait_event(C.s[r], C.start));
    std::atomic<bool> released{false};
    std::atomic<bool> watchdog_fired{false};
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::string watchdog_error;
    std::thread watchdog([&] {
        std::unique_lock<std::mutex> l(mu);
        if (!cv.wait_for(l, std::chrono::seconds(20), [&] { return done; })) {
            if (!released.exchange(true)) {
                watchdog_fired = true;
                const sw_status st = sw_barrier(C.gate, 1, C.s[kMaxRanks]);
                if (st != SW_OK) watchdog_error = fmt("%s: %s", sw_status_string(st), sw_last_error());
            }
        }
    });
    std::string error;
    try {
        body();
        for (int r = 0; r < p; ++r) CK(sw_event_record(C.end[r], C.s[r]));
    } catch (const std::exception& e) {
        error = e.what();
    }
    if (!released.exchange(true)) {
        const sw_status st = sw_barrier(C.gate, 1, C.s[kMaxRanks]);
        if (st != SW_OK && error.empty()) error = fmt("releasing the gate: %s: %s", sw_status_string(st), sw_last_error());
    }
    {
        std::lock_guard<std::mutex> l(mu);
        done = true;
    }
    cv.notify_all();
    watchdog.join();
    CK(sw_stream_synchronize(C.s[kMaxRanks]));
    if (!error.empty()) throw ApiError(error);
    if (!watchdog_error.empty()) throw ApiError("the gate's watchdog could not release it: " + watchdog_error);
    const double worst = frame_time(p);
    if (watchdog_fired)
        throw ApiError("queueing the gated batch blocked (launch queue full?): reduce the calls per gated batch");
    return worst;
}

sw_comm make_comm(int p) {
    std::vector<sw_device> devs(static_cast<size_t>(p), C.dev); // p virtual ranks of the one device
    sw_comm comm = nullptr;
    CK(sw_comm_create_local(p, devs.data(), 120000, &comm));
    return comm;
}

std::string met_cell(bool met) { return opt.emulated ? "n/a (emulated)" : (met ? "**yes**" : "**no**"); }
double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }

struct Shard {
    int64_t off, n;
};
std::vector<Shard> shards_of(int64_t total, int p) {
    std::vector<Shard> v(static_cast<size_t>(p));
    for (int r = 0; r < p; ++r) CK(sw_shard_range(total, p, r, &v[r].off, &v[r].n));
    return v;
}

// W's column shards on the device for p virtual ranks, their communicator, and the two sharded paths as targets 1 and
// 4 run them: rank r multiplies X (bx, M x K) by its K x n_r shard, then either all-gathers the columns into its own
// M x N block of `yall` (the column-parallel path), or writes its columns of one M x N `y` directly (ldc = N).
// A GEMM problem's operands: random X (M x K) and W (K x N) in the benchmark's dtype (exactly representable), their
// row / column norms (the comparisons' tolerance) and their device copies.
struct Operands {
    std::vector<float> X, W;
    std::vector<double> rn, cn;
    sw_buffer bx = nullptr, bw = nullptr;
    Operands(const DType& d, int64_t M, int64_t K, int64_t N, uint64_t seed)
        : X(random_matrix(d, static_cast<uint64_t>(M * K), seed)), W(random_matrix(d, static_cast<uint64_t>(K * N), seed + 1)) {
        row_norms(X, M, K, rn);
        col_norms(W, K, N, cn);
        bx = alloc(static_cast<uint64_t>(M * K) * d.esz);
        bw = alloc(static_cast<uint64_t>(K * N) * d.esz);
        upload(bx, 0, encode(d, X.data(), X.size()));
        upload(bw, 0, encode(d, W.data(), W.size()));
    }
    ~Operands() {
        release(bx);
        release(bw);
    }
    Operands(const Operands&) = delete;
    Operands& operator=(const Operands&) = delete;
};

struct Sharded {
    const DType& d;
    int64_t M, K, N;
    int p;
    sw_buffer bx;
    std::vector<Shard> sh;
    sw_comm comm = nullptr;
    std::vector<sw_buffer> bshard, blocal;

    Sharded(const DType& d_, int64_t M_, int64_t K_, int64_t N_, int p_, sw_buffer bx_, const std::vector<float>& W)
        : d(d_), M(M_), K(K_), N(N_), p(p_), bx(bx_), sh(shards_of(N_, p_)), comm(make_comm(p_)), bshard(p_), blocal(p_) {
        for (int r = 0; r < p; ++r) {
            const int64_t n = sh[r].n;
            std::vector<float> part(static_cast<size_t>(K * n));
            for (int64_t k = 0; k < K; ++k)
                for (int64_t j = 0; j < n; ++j) part[k * n + j] = W[k * N + sh[r].off + j];
            bshard[r] = alloc(static_cast<uint64_t>(K * n) * d.esz);
            blocal[r] = alloc(static_cast<uint64_t>(M * n) * d.esz);
            upload(bshard[r], 0, encode(d, part.data(), part.size()));
        }
    }
    ~Sharded() {
        for (int r = 0; r < p; ++r) {
            release(bshard[r]);
            release(blocal[r]);
        }
        CK(sw_comm_destroy(comm));
    }
    Sharded(const Sharded&) = delete;
    Sharded& operator=(const Sharded&) = delete;

    void gemm_local(int r) const {
        CK(sw_gemm(C.s[r], d.t, SW_OP_N, SW_OP_N, M, sh[r].n, K, 1.f, bx, 0, K, bshard[r], 0, sh[r].n, 0.f, blocal[r], 0,
                   sh[r].n, nullptr, 0, SW_EPILOGUE_NONE));
    }
    void gather(sw_buffer yall) const {
        for (int r = 0; r < p; ++r) {
            gemm_local(r);
            CK(sw_all_gather_columns(comm, r, blocal[r], 0, M, sh[r].n, sh[r].n, yall, static_cast<uint64_t>(r * M * N), N,
                                     d.t, C.s[r]));
        }
    }
    void direct(sw_buffer y) const {
        for (int r = 0; r < p; ++r)
            CK(sw_gemm(C.s[r], d.t, SW_OP_N, SW_OP_N, M, sh[r].n, K, 1.f, bx, 0, K, bshard[r], 0, sh[r].n, 0.f, y,
                       static_cast<uint64_t>(sh[r].off), N, nullptr, 0, SW_EPILOGUE_NONE));
    }
    // One verified call of each path (outputs NaN-filled first, so a column nobody writes fails); `check` judges one
    // rank's (or the direct) M x N result.
    void verify(sw_buffer yall, sw_buffer ydirect, const std::string& gather_label, const std::string& direct_label,
                const std::function<Outcome(const std::vector<float>&)>& check) const {
        const uint64_t mn_bytes = static_cast<uint64_t>(M * N) * d.esz;
        fill_nan(yall, 0, mn_bytes * p);
        fill_nan(ydirect, 0, mn_bytes);
        timed(p, [&] { gather(yall); });
        timed(p, [&] { direct(ydirect); });
        if (opt.inject) inject_unwritten_column(yall, static_cast<uint64_t>((p - 1) * M * N), M, N, sh[p - 1].off);
        RankChecks rc{gather_label, opt.inject};
        for (int r = 0; r < p; ++r) rc.add(r, check(decode(d, download(yall, mn_bytes * r, mn_bytes))));
        rc.record();
        record(direct_label, check(decode(d, download(ydirect, 0, mn_bytes))));
    }
};
std::string shard_list(const std::vector<Shard>& v) {
    std::string s;
    for (size_t r = 0; r < v.size(); ++r) s += (r ? "+" : "") + std::to_string(v[r].n);
    return s;
}

// ------------------------------------------------------------------------------------------ target 1

void target_sharded_gemm() {
    int64_t M = 8192, K = 8192, N = 8192;
    if (opt.quick) M = K = N = 2048;
    if (opt.emulated) M = 24, K = 40, N = 37;
    const DType& d = C.dt;
    const double flops = 2.0 * M * N * K;
    progress(fmt("target 1: sharded GEMM %lldx%lldx%lld %s", (long long)M, (long long)K, (long long)N, d.name));
    CK(sw_device_set_kernel(C.dev, "cublaslt"));

    const uint64_t seed = opt.seed * 7 + 1;
    const Operands ops(d, M, K, N, seed);
    const std::vector<float>&X = ops.X, &W = ops.W;
    const std::vector<double>&rn = ops.rn, &cn = ops.cn;
    const sw_buffer bx = ops.bx, bw = ops.bw;
    const uint64_t mn_bytes = static_cast<uint64_t>(M * N) * d.esz;
    sw_buffer yref = alloc(mn_bytes), ydirect = alloc(mn_bytes), yall = alloc(mn_bytes * kMaxRanks);

    auto unsharded = [&] {
        CK(sw_gemm(C.s[0], d.t, SW_OP_N, SW_OP_N, M, N, K, 1.f, bx, 0, K, bw, 0, N, 0.f, yref, 0, N, nullptr, 0,
                   SW_EPILOGUE_NONE));
    };
    fill_nan(yref, 0, mn_bytes);
    timed(1, unsharded);
    const std::vector<float> yref_host = decode(d, download(yref, 0, mn_bytes));
    record(fmt("T1 unsharded cuBLASLt %lldx%lldx%lld vs float64", (long long)M, (long long)K, (long long)N),
           check_against_reference(d, yref_host, X, W, M, K, N, seed));

    md("\n## 1. Sharded GEMM vs one unsharded cuBLASLt GEMM\n\n");
    md(fmt("X (M x K) times W (K x N), %s in and out, fp32 accumulation, cuBLASLt (`sw_device_set_kernel(\"cublaslt\")`). "
           "*unsharded*: one `sw_gemm` of M x K x N on one stream. *sharded + all-gather* (the issue's definition, the "
           "column-parallel path): W split by columns with `sw_shard_range`, rank r's `sw_gemm` of M x K x n_r into its "
           "own M x n_r buffer on its own stream, then `sw_all_gather_columns` on a local communicator of p virtual ranks "
           "of this one device, so that every rank ends with all of Y (M x N); on one device that is p full copies of Y. "
           "*sharded, direct (info)*: what `ShardedGemm` does for virtual ranks of one device: rank r's GEMM writes its "
           "column block of one Y in place (ldc = N), no gather. Time: CUDA events, from `start` on rank 0's stream (the "
           "others wait for it) to the last rank's `end`; median (min) of %d frames after %d warm-up frames, the variants "
           "interleaved. Ratio = unsharded time / variant time (= throughput ratio). Target: sharded + all-gather >= 0.95x.\n\n",
           d.name, C.reps, C.warmup));
    md("| M x K x N | dtype | p | shards n_r | variant | time ms median (min) | TFLOP/s | ratio | target | met |\n");
    md("|---|---|---|---|---|---|---|---|---|---|\n");

    for (int p : {2, 4, 8}) {
        const Sharded S(d, M, K, N, p, bx, W);
        const std::vector<Shard>& sh = S.sh;
        auto gather = [&] { S.gather(yall); };
        auto direct = [&] { S.direct(ydirect); };
        S.verify(yall, ydirect, fmt("T1 p=%d sharded + all-gather: every rank's Y vs unsharded", p),
                 fmt("T1 p=%d sharded direct Y vs unsharded", p),
                 [&](const std::vector<float>& y) { return compare_results(d, y, yref_host, M, N, rn, cn); });

        const auto t = measure({{"unsharded", 1, {}, unsharded}, {"gather", p, {}, gather}, {"direct", p, {}, direct}});
        const Stat su = stat_of(t[0]), sg = stat_of(t[1]), sd = stat_of(t[2]);
        const std::string shape = fmt("%lld x %lld x %lld", (long long)M, (long long)K, (long long)N);
        md(fmt("| %s | %s | 1 | %lld | unsharded | %s | %.1f | 1.00 | | |\n", shape.c_str(), d.name, (long long)N,
               ms_cell(su).c_str(), tflops(flops, su.median)));
        md(fmt("| %s | %s | %d | %s | sharded + all-gather | %s | %.1f | %.3f | >= 0.95 | %s |\n", shape.c_str(), d.name,
               p, shard_list(sh).c_str(), ms_cell(sg).c_str(), tflops(flops, sg.median), su.median / sg.median,
               met_cell(su.median / sg.median >= 0.95).c_str()));
        md(fmt("| %s | %s | %d | %s | sharded, direct (info) | %s | %.1f | %.3f | (info) | |\n", shape.c_str(), d.name,
               p, shard_list(sh).c_str(), ms_cell(sd).c_str(), tflops(flops, sd.median), su.median / sd.median));

    }
    md("\nTFLOP/s = 2·M·N·K / median time. Every variant's Y was checked element by element against the unsharded Y "
       "(after NaN pre-fill, every rank's gathered Y), and the unsharded Y against a float64 reference at sampled "
       "elements (see Verification).\n");
    release(yref);
    release(ydirect);
    release(yall);
}

// ------------------------------------------------------------------------------------------ target 2

void target_mma_vs_cublaslt() {
    std::vector<std::array<int64_t, 3>> shapes{{8192, 8192, 8192}, {4096, 4096, 4096}};
    if (opt.quick) shapes = {{2048, 2048, 2048}, {1024, 1024, 1024}};
    if (opt.emulated) shapes = {{32, 48, 40}, {16, 24, 20}};
    const DType& d = C.dt;
    md("\n## 2. Hand-written mma.sync GEMM vs cuBLASLt\n\n");
    md(fmt("One `sw_gemm` (M x K times K x N, %s A, B and C, fp32 accumulation; 16-bit inputs with an f32 C, through "
           "`sw_gemm_ex`, are checked in section 5) on one stream, the device's algorithm chosen "
           "with `sw_device_set_kernel`: \"cublaslt\" vs \"mma\" (the hand-written tensor-core kernel). CUDA events around "
           "the call; median (min) of %d frames after %d warm-up frames, interleaved. Ratio = cuBLASLt time / mma time. "
           "Target: >= 0.7x.%s\n\n",
           d.name, C.reps, C.warmup,
           opt.emulated ? " **Emulated: f32, and the emulated plugin ignores the algorithm (both rows run the same host "
                          "loop).**"
                        : ""));
    // The wgmma kernel (sm_90a code on a compute capability 9.0 device only): does the plugin take it here?
    std::string wgmma_missing;
    {
        sw_buffer t = alloc(256); // A, B, C: one element each, at elements 0, 4 and 8
        fill_nan(t, 0, 256);
        CK(sw_device_set_kernel(C.dev, "wgmma"));
        const sw_status st = sw_gemm(C.s[0], d.t, SW_OP_N, SW_OP_N, 1, 1, 1, 1.f, t, 0, 1, t, 4, 1, 0.f, t, 8, 1,
                                     nullptr, 0, SW_EPILOGUE_NONE);
        if (st == SW_ERR_UNSUPPORTED) wgmma_missing = sw_last_error();
        else CK(st);
        CK(sw_stream_synchronize(C.s[0]));
        CK(sw_device_set_kernel(C.dev, "cublaslt"));
        release(t);
    }
    md(wgmma_missing.empty()
           ? (opt.emulated ? "The emulated plugin accepts \"wgmma\" (it ignores the algorithm): a third row, as a harness "
                             "check only.\n\n"
                           : "The wgmma kernel (\"wgmma\", sm_90a) runs on this device: measured too; target >= 0.9x.\n\n")
           : fmt("The wgmma kernel (\"wgmma\") is not available here: %s\n\n", wgmma_missing.c_str()));
    md("| M x K x N | dtype | kernel | time ms median (min) | TFLOP/s | ratio | target | met |\n");
    md("|---|---|---|---|---|---|---|---|\n");
    for (const auto& sh : shapes) {
        const int64_t M = sh[0], K = sh[1], N = sh[2];
        progress(fmt("target 2: mma vs cuBLASLt %lldx%lldx%lld %s", (long long)M, (long long)K, (long long)N, d.name));
        const double flops = 2.0 * M * N * K;
        const uint64_t seed = opt.seed * 7 + 2 + static_cast<uint64_t>(M);
        const Operands ops(d, M, K, N, seed);
        const std::vector<float>&X = ops.X, &W = ops.W;
        const std::vector<double>&rn = ops.rn, &cn = ops.cn;
        const sw_buffer bx = ops.bx, bw = ops.bw;
        const uint64_t mn_bytes = static_cast<uint64_t>(M * N) * d.esz;
        sw_buffer yc = alloc(mn_bytes), ym = alloc(mn_bytes), yw = alloc(mn_bytes);
        auto gemm_into = [&](sw_buffer y) {
            return [&, y] {
                CK(sw_gemm(C.s[0], d.t, SW_OP_N, SW_OP_N, M, N, K, 1.f, bx, 0, K, bw, 0, N, 0.f, y, 0, N, nullptr, 0,
                           SW_EPILOGUE_NONE));
            };
        };
        auto use_cublaslt = [] { CK(sw_device_set_kernel(C.dev, "cublaslt")); };
        auto use_mma = [] { CK(sw_device_set_kernel(C.dev, "mma")); };
        auto use_wgmma = [] { CK(sw_device_set_kernel(C.dev, "wgmma")); };
        const bool with_wgmma = wgmma_missing.empty();
        fill_nan(yc, 0, mn_bytes);
        fill_nan(ym, 0, mn_bytes);
        use_cublaslt();
        timed(1, gemm_into(yc));
        use_mma();
        timed(1, gemm_into(ym));
        if (opt.inject) inject_unwritten_column(ym, 0, M, N, N / 2);
        const std::vector<float> hc = decode(d, download(yc, 0, mn_bytes)), hm = decode(d, download(ym, 0, mn_bytes));
        const std::string shape = fmt("%lld x %lld x %lld", (long long)M, (long long)K, (long long)N);
        record("T2 cuBLASLt " + shape + " vs float64", check_against_reference(d, hc, X, W, M, K, N, seed));
        if (!opt.inject) record("T2 mma " + shape + " vs float64", check_against_reference(d, hm, X, W, M, K, N, seed));
        record("T2 mma " + shape + " vs cuBLASLt", compare_results(d, hm, hc, M, N, rn, cn), opt.inject);
        if (with_wgmma) {
            fill_nan(yw, 0, mn_bytes);
            use_wgmma();
            timed(1, gemm_into(yw));
            const std::vector<float> hw = decode(d, download(yw, 0, mn_bytes));
            record("T2 wgmma " + shape + " vs float64", check_against_reference(d, hw, X, W, M, K, N, seed));
            record("T2 wgmma " + shape + " vs cuBLASLt", compare_results(d, hw, hc, M, N, rn, cn));
        }

        std::vector<Variant> variants{{"cublaslt", 1, use_cublaslt, gemm_into(yc)}, {"mma", 1, use_mma, gemm_into(ym)}};
        if (with_wgmma) variants.push_back({"wgmma", 1, use_wgmma, gemm_into(yw)});
        const auto t = measure(variants);
        const Stat sc = stat_of(t[0]), sm = stat_of(t[1]);
        md(fmt("| %s | %s | cublaslt | %s | %.1f | 1.00 | | |\n", shape.c_str(), d.name, ms_cell(sc).c_str(),
               tflops(flops, sc.median)));
        md(fmt("| %s | %s | mma | %s | %.1f | %.3f | >= 0.70 | %s |\n", shape.c_str(), d.name, ms_cell(sm).c_str(),
               tflops(flops, sm.median), sc.median / sm.median, met_cell(sc.median / sm.median >= 0.70).c_str()));
        if (with_wgmma) {
            const Stat sw = stat_of(t[2]);
            md(fmt("| %s | %s | wgmma | %s | %.1f | %.3f | >= 0.90 | %s |\n", shape.c_str(), d.name, ms_cell(sw).c_str(),
                   tflops(flops, sw.median), sc.median / sw.median, met_cell(sc.median / sw.median >= 0.90).c_str()));
        }
        release(yw);
        release(yc);
        release(ym);
    }
    CK(sw_device_set_kernel(C.dev, "cublaslt"));
    md("\nBoth results were checked against a float64 reference at sampled elements and against each other element by "
       "element (see Verification).\n");
}

// ------------------------------------------------------------------------------------------ target 3

// The value every gathered element must hold: a hash of its global (row, column), never a NaN pattern.
inline uint32_t layout_pattern(uint64_t i, uint64_t j) { return static_cast<uint32_t>(splitmix((i << 32) ^ j)); }

void target_layout() {
    struct Size {
        int64_t M, N;
        const char* role;
    };
    std::vector<Size> sizes{{8192, 8191, "uneven (target 1's Y)"}, {8192, 8192, "even (info)"},
                            {16384, 16383, "uneven, 4x larger (amortised)"}};
    if (opt.quick) sizes = {{2048, 2047, "uneven"}, {2048, 2048, "even (info)"}, {4096, 4095, "uneven, 4x larger"}};
    if (opt.emulated) sizes = {{64, 301, "uneven"}, {64, 304, "even (info)"}, {128, 602, "uneven, 4x larger"}};
    const DType& d = C.dt;
    md("\n## 3. Layout step of the all-gather vs device-to-device copy bandwidth\n\n");
    md(fmt("`sw_all_gather_columns` on p virtual ranks of this device (one stream each), %s: rank r contributes an "
           "M x n_r block (n_r from `sw_shard_range`, uneven unless N divides evenly) and every rank receives the M x N "
           "result, so one all-gather writes p·M·N elements; the layout copies run on each rank's communication stream. "
           "Baseline: one `sw_memcpy_d2d_async` of the same number of bytes (p·M·N·%zu) on one stream. "
           "**Convention: GB/s = bytes written / time (1 GB = 10^9 B).** Each byte is read once and written once in both "
           "operations, so read+write traffic is 2x these figures for both and the ratio is the same under either "
           "convention. Time: CUDA events from `start` (rank 0's stream; the other ranks wait for it) to the last rank's "
           "`end`; it includes the in-process collective's host side (each rank's host thread waits for its stream, "
           "rendezvous, queues its copies, synchronises them, departure barrier, then releases the stream's wait-flag "
           "kernel), which a single memcpy does not have. Median (min) of %d frames after %d warm-up frames, "
           "interleaved. Ratio = all-gather GB/s / memcpy GB/s; target >= 0.85x on the uneven rows.\n\n",
           d.name, d.esz, C.reps, C.warmup));
    md("| M x N | case | p | shards n_r | operation | bytes written | time ms median (min) | GB/s written | ratio | target | met |\n");
    md("|---|---|---|---|---|---|---|---|---|---|---|\n");
    struct Marginal {
        int p;
        double bytes, tg, tm;
    };
    std::vector<std::vector<Marginal>> uneven_points; // per uneven size, per p
    for (const Size& z : sizes) {
        const int64_t M = z.M, N = z.N;
        const uint64_t mn_bytes = static_cast<uint64_t>(M * N) * d.esz;
        sw_buffer sends = alloc(mn_bytes), yall = alloc(mn_bytes * kMaxRanks), scratch = alloc(mn_bytes * kMaxRanks);
        const bool uneven = std::strncmp(z.role, "uneven", 6) == 0;
        if (uneven) uneven_points.emplace_back();
        for (int p : {2, 4, 8}) {
            progress(fmt("target 3: layout %lldx%lld p=%d", (long long)M, (long long)N, p));
            const std::vector<Shard> sh = shards_of(N, p);
            // Rank r's block (M x n_r, contiguous) at element M * off_r of `sends`.
            std::vector<uint8_t> host(mn_bytes);
            parallel_for(static_cast<uint64_t>(M), [&](uint64_t b, uint64_t e) {
                for (int r = 0; r < p; ++r)
                    for (uint64_t i = b; i < e; ++i)
                        for (int64_t j = 0; j < sh[r].n; ++j) {
                            const uint32_t v = layout_pattern(i, static_cast<uint64_t>(sh[r].off + j));
                            const uint64_t at = (static_cast<uint64_t>(M * sh[r].off) + i * sh[r].n + j) * d.esz;
                            if (d.esz == 2) {
                                const uint16_t h = static_cast<uint16_t>(v & 0x3fffu);
                                std::memcpy(&host[at], &h, 2);
                            } else {
                                const uint32_t f = 0x3f800000u | (v & 0x7fffffu);
                                std::memcpy(&host[at], &f, 4);
                            }
                        }
            });
            upload(sends, 0, host);
            sw_comm comm = make_comm(p);
            auto gather = [&] {
                for (int r = 0; r < p; ++r)
                    CK(sw_all_gather_columns(comm, r, sends, static_cast<uint64_t>(M * sh[r].off), M, sh[r].n, sh[r].n, yall,
                                             static_cast<uint64_t>(r * M * N), N, d.t, C.s[r]));
            };
            const uint64_t bytes = mn_bytes * p;
            auto copy = [&] { CK(sw_memcpy_d2d_async(scratch, 0, yall, 0, bytes, C.s[0])); };
            fill_nan(yall, 0, bytes);
            timed(p, gather);
            if (opt.inject) inject_unwritten_column(yall, static_cast<uint64_t>((p - 1) * M * N), M, N, sh[p - 1].off);
            RankChecks rc{fmt("T3 %lld x %lld p=%d: every rank's gathered Y, bit for bit", (long long)M, (long long)N, p),
                          opt.inject};
            for (int r = 0; r < p; ++r) {
                const std::vector<uint8_t> y = download(yall, mn_bytes * r, mn_bytes);
                std::atomic<uint64_t> bad{0}, unwritten{0};
                parallel_for(static_cast<uint64_t>(M), [&](uint64_t b, uint64_t e) {
                    uint64_t nb = 0, nu = 0;
                    for (uint64_t i = b; i < e; ++i)
                        for (int64_t j = 0; j < N; ++j) {
                            const uint32_t v = layout_pattern(i, static_cast<uint64_t>(j));
                            uint32_t want, got = 0;
                            if (d.esz == 2) {
                                uint16_t h;
                                std::memcpy(&h, &y[(i * N + j) * 2], 2);
                                got = h;
                                want = v & 0x3fffu;
                                nu += got == 0xffffu;
                            } else {
                                std::memcpy(&got, &y[(i * N + j) * 4], 4);
                                want = 0x3f800000u | (v & 0x7fffffu);
                                nu += got == 0xffffffffu;
                            }
                            nb += got != want;
                        }
                    bad += nb;
                    unwritten += nu;
                });
                rc.add(r, {bad == 0, double(bad.load()),
                           bad ? fmt("%llu of %lld elements wrong (%llu still NaN bytes: unwritten)",
                                     static_cast<unsigned long long>(bad.load()), static_cast<long long>(M * N),
                                     static_cast<unsigned long long>(unwritten.load()))
                               : fmt("%lld elements exact", static_cast<long long>(M * N))});
            }
            rc.record();
            const auto t = measure({{"all-gather", p, {}, gather}, {"memcpy", 1, {}, copy}});
            const Stat sg = stat_of(t[0]), sm = stat_of(t[1]);
            const double gbg = bytes / (sg.median * 1e-3) / 1e9, gbm = bytes / (sm.median * 1e-3) / 1e9;
            const std::string shape = fmt("%lld x %lld", (long long)M, (long long)N);
            md(fmt("| %s | %s | %d | %s | all_gather_columns | %.4g | %s | %.1f | %.3f | %s | %s |\n", shape.c_str(), z.role,
                   p, shard_list(sh).c_str(), double(bytes), ms_cell(sg).c_str(), gbg, gbg / gbm,
                   uneven ? ">= 0.85" : "(info)", uneven ? met_cell(gbg / gbm >= 0.85).c_str() : ""));
            md(fmt("| %s | %s | %d | | memcpy_d2d, same bytes | %.4g | %s | %.1f | 1.00 | | |\n", shape.c_str(), z.role, p,
                   double(bytes), ms_cell(sm).c_str(), gbm));
            if (uneven) uneven_points.back().push_back({p, double(bytes), sg.median, sm.median});
            CK(sw_comm_destroy(comm));
        }
        release(sends);
        release(yall);
        release(scratch);
    }
    // The fixed cost per collective (host rendezvous etc.) cancels in the difference between the two uneven sizes.
    if (uneven_points.size() == 2) {
        md("\nMarginal bandwidth between the two uneven sizes, (bytes_large - bytes_small) / (t_large - t_small) from the "
           "medians above: the fixed cost per collective cancels, leaving the copies' own rate.\n\n");
        md("| p | all-gather GB/s (marginal) | memcpy GB/s (marginal) | ratio | target | met |\n|---|---|---|---|---|---|\n");
        for (size_t i = 0; i < uneven_points[0].size() && i < uneven_points[1].size(); ++i) {
            const Marginal& a = uneven_points[0][i];
            const Marginal& b = uneven_points[1][i];
            const double db = b.bytes - a.bytes, dg = (b.tg - a.tg) * 1e-3, dm = (b.tm - a.tm) * 1e-3;
            if (dg <= 0 || dm <= 0) {
                md(fmt("| %d | (time did not grow with size) | | | >= 0.85 | |\n", a.p));
                continue;
            }
            const double g = db / dg / 1e9, m = db / dm / 1e9;
            md(fmt("| %d | %.1f | %.1f | %.3f | >= 0.85 | %s |\n", a.p, g, m, g / m, met_cell(g / m >= 0.85).c_str()));
        }
    }
    md("\nEvery rank's gathered Y was checked bit for bit against the expected layout after a NaN pre-fill.\n");
}

// ------------------------------------------------------------------------------------------ target 4

void target_overhead() {
    int64_t M = 16, K = 1024, N = 1024;
    int calls = 200, batches = 10, gated_calls = 32;
    if (opt.quick) calls = 50;
    if (opt.emulated) M = 4, K = 32, N = 32, calls = 10, batches = 10, gated_calls = 10;
    const DType& d = C.dt;
    progress(fmt("target 4: wrapper overhead %lldx%lldx%lld", (long long)M, (long long)K, (long long)N));
    CK(sw_device_set_kernel(C.dev, "cublaslt"));
    const uint64_t seed = opt.seed * 7 + 4;
    const std::vector<float> X = random_matrix(d, static_cast<uint64_t>(M * K), seed);
    const std::vector<float> W = random_matrix(d, static_cast<uint64_t>(K * N), seed + 1);
    const uint64_t mn_bytes = static_cast<uint64_t>(M * N) * d.esz;
    sw_buffer bx = alloc(static_cast<uint64_t>(M * K) * d.esz);
    upload(bx, 0, encode(d, X.data(), X.size()));
    sw_buffer ydirect = alloc(mn_bytes), yall = alloc(mn_bytes * 4);

    md("\n## 4. Wrapper overhead per sharded-GEMM call\n\n");
    md(fmt("M x K x N = %lld x %lld x %lld, %s, cuBLASLt. One *call* = every rank's part of one sharded GEMM: "
           "*all-gather path* = per rank `sw_gemm` into its M x n_r block + `sw_all_gather_columns` (the issue's "
           "definition); *direct path (info)* = per rank `sw_gemm` straight into its columns of one Y (ldc = N). "
           "A batch is %d calls queued back to back from one host thread (no synchronisation between calls); %d batches "
           "after one warm-up batch; cells are median (min) over the batches, in microseconds per call.\n\n"
           "- **(a) host enqueue** = host wall time of the API calls of a batch / calls (what the caller's thread pays).\n"
           "- **wall** = host wall time from the first call to every stream synchronised / calls.\n"
           "- **device (events)** = CUDA events from before the first call to after the last on every stream / calls "
           "(includes time the GPU spent waiting for the host, e.g. on a collective's wait-flag).\n"
           "- **(b) = wall - device**: host time not overlapped with device time (near 0 when the GPU is the "
           "bottleneck; about (a) - kernels when the host is).\n"
           "- **kernels' own** = the same kernels queued while the device is held back (a 2-rank barrier on rank 0's "
           "stream, released after the queueing), so they run back to back without host gaps: %d calls of, per rank, "
           "the GEMM plus, for the all-gather path, one `sw_memcpy_d2d_async` of M·N elements into that rank's Y as a "
           "stand-in for its p layout copies (the layout kernel is not reachable through the C ABI without the "
           "collective), / calls.\n"
           "- **(c) = wall - kernels' own**: the wrapper's overhead per call over the kernels' own time. "
           "**Target: (c) < 5 us** (verdict on the all-gather path).\n\n",
           (long long)M, (long long)K, (long long)N, d.name, calls, batches, gated_calls));
    md("| M x K x N | p | path | (a) host enqueue us | wall us | device us | (b) wall - device us | kernels' own us | (c) "
       "wall - kernels us | target | met |\n");
    md("|---|---|---|---|---|---|---|---|---|---|---|\n");

    for (int p : {1, 2, 4}) {
        const Sharded S(d, M, K, N, p, bx, W);
        auto gather_call = [&] { S.gather(yall); };
        auto direct_call = [&] { S.direct(ydirect); };
        auto gather_kernels_call = [&] {
            for (int r = 0; r < p; ++r) {
                S.gemm_local(r);
                CK(sw_memcpy_d2d_async(yall, mn_bytes * r, ydirect, 0, mn_bytes, C.s[r]));
            }
        };
        // Verified single call of each path against a float64 reference of the whole product.
        S.verify(yall, ydirect, fmt("T4 p=%d all-gather path: every rank's Y vs float64", p),
                 fmt("T4 p=%d direct path Y vs float64", p),
                 [&](const std::vector<float>& y) { return check_against_reference(d, y, X, W, M, K, N, seed); });

        struct Batch {
            std::vector<double> enq, wall, dev, wall_minus_dev;
        };
        auto run_batches = [&](const std::function<void()>& call) {
            Batch out;
            for (int b = 0; b < batches + 1; ++b) {
                const auto t0 = std::chrono::steady_clock::now();
                begin_frame(p);
                for (int i = 0; i < calls; ++i) call();
                const auto t1 = std::chrono::steady_clock::now();
                const double dev_ms = end_frame(p);
                const auto t2 = std::chrono::steady_clock::now();
                if (b == 0) continue; // warm-up
                const double enq = std::chrono::duration<double, std::micro>(t1 - t0).count() / calls;
                const double wall = std::chrono::duration<double, std::micro>(t2 - t0).count() / calls;
                const double dev = dev_ms * 1e3 / calls;
                out.enq.push_back(enq);
                out.wall.push_back(wall);
                out.dev.push_back(dev);
                out.wall_minus_dev.push_back(wall - dev);
            }
            return out;
        };
        auto run_gated = [&](const std::function<void()>& call) {
            std::vector<double> v;
            for (int b = 0; b < batches + 1; ++b) {
                const double ms = gated(p, [&] {
                    for (int i = 0; i < gated_calls; ++i) call();
                });
                if (b > 0) v.push_back(ms * 1e3 / gated_calls);
            }
            return v;
        };
        const Batch g = run_batches(gather_call), dr = run_batches(direct_call);
        const Stat kg = stat_of(run_gated(gather_kernels_call)), kd = stat_of(run_gated(direct_call));
        const std::string shape = fmt("%lld x %lld x %lld", (long long)M, (long long)K, (long long)N);
        auto row = [&](const char* path, const Batch& b, const Stat& k, bool verdict) {
            const Stat enq = stat_of(b.enq), wall = stat_of(b.wall), dev = stat_of(b.dev), wmd = stat_of(b.wall_minus_dev);
            const double c = wall.median - k.median;
            md(fmt("| %s | %d | %s | %s | %s | %s | %s | %s | %.2f | %s | %s |\n", shape.c_str(), p, path,
                   us_cell(enq).c_str(), us_cell(wall).c_str(), us_cell(dev).c_str(), us_cell(wmd).c_str(),
                   us_cell(k).c_str(), c, verdict ? "(c) < 5 us" : "(info)", verdict ? met_cell(c < 5.0).c_str() : ""));
        };
        row("all-gather", g, kg, true);
        row("direct (info)", dr, kd, false);
    }
    md("\n(c) uses medians: median wall - median kernels' own. A (c) well above (a) means the per-call cost is not the "
       "enqueue itself but waiting (e.g. the collective's host rendezvous serialising the GPU); (b) near 0 with a large "
       "(c) says the GPU was kept waiting by the host.\n");
    release(bx);
    release(ydirect);
    release(yall);
}

// ------------------------------------------------------------------------------------------ mixed precision

// sw_gemm_ex with 16-bit A and B (f16 or bf16) and C in f32 or the input type, fp32 accumulation, through every kernel
// of the device (on the emulated plugin the algorithm is ignored). Each output element against a float64 reference
// computed from the ROUNDED 16-bit inputs (and C, bias in C's type), with
//   |got - ref| <= 2 * e + u_out * |ref| (+ 2^-25 for f16 C: half its smallest subnormal), where
//   e = (k + 2) * u_acc * S,  S = |alpha| sum_k |a_ik b_kj| + |beta c_ij| + |bias_j|,  u_acc = 2^-24 (fp32 accumulation
//   and epilogue), and with GeLU e = 1.2 * e + 4 * u_acc * |pre-activation| (gelu' <= 1.13; fp32 tanh);
//   u_out = 2^-24 (f32), 2^-11 (f16), 2^-8 (bf16): the one final rounding.
// Outputs are NaN bytes before each run (an unwritten element fails), and the padding columns of C must stay so.
// Combinations the CUDA GEMM lacks must fail with SW_ERR_UNSUPPORTED naming them.
const char* dtype_name(sw_dtype t) {
    return t == SW_DTYPE_F32 ? "f32" : t == SW_DTYPE_F16 ? "f16" : t == SW_DTYPE_BF16 ? "bf16" : "?";
}
double unit_roundoff(sw_dtype t) {
    return t == SW_DTYPE_F16 ? 1.0 / 2048 : t == SW_DTYPE_BF16 ? 1.0 / 256 : 1.0 / 16777216;
}
float round_type(sw_dtype t, float f) {
    if (t == SW_DTYPE_F16) return sw_ref_f16_to_float(sw_ref_float_to_f16(f));
    if (t == SW_DTYPE_BF16) return sw_ref_bf16_to_float(sw_ref_float_to_bf16(f));
    return f;
}
std::vector<uint8_t> encode_type(sw_dtype t, const std::vector<float>& v) {
    const size_t es = t == SW_DTYPE_F32 ? 4 : 2;
    std::vector<uint8_t> out(v.size() * es);
    for (size_t i = 0; i < v.size(); ++i) {
        if (t == SW_DTYPE_F32) {
            std::memcpy(&out[i * 4], &v[i], 4);
            continue;
        }
        const uint16_t h = t == SW_DTYPE_F16 ? sw_ref_float_to_f16(v[i]) : sw_ref_float_to_bf16(v[i]);
        std::memcpy(&out[i * 2], &h, 2);
    }
    return out;
}
float decode_at(sw_dtype t, const std::vector<uint8_t>& b, size_t i) {
    if (t == SW_DTYPE_F32) {
        float f;
        std::memcpy(&f, &b[i * 4], 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, &b[i * 2], 2);
    return t == SW_DTYPE_F16 ? sw_ref_f16_to_float(h) : sw_ref_bf16_to_float(h);
}

struct MixedCase {
    sw_dtype ab, c;
    bool ta, tb;
    int64_t m, n, k;
    bool bias, gelu;
    float alpha, beta;
};

std::string mixed_name(const MixedCase& c, const char* kernel) {
    return fmt("T5 %s: a = b = %s, c = %s, %c%c, %lld x %lld x %lld%s%s, alpha %g, beta %g", kernel, dtype_name(c.ab),
               dtype_name(c.c), c.ta ? 'T' : 'N', c.tb ? 'T' : 'N', static_cast<long long>(c.m), static_cast<long long>(c.n),
               static_cast<long long>(c.k), c.bias ? ", bias" : "", c.gelu ? ", GeLU" : "", c.alpha, c.beta);
}

// Runs one case on s[0]; returns the outcome (worst = max |err| / tol).
Outcome run_mixed(const MixedCase& c, uint64_t seed) {
    const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = c.n + 2; // padded: the padding must stay untouched
    auto random = [&](sw_dtype t, size_t n, uint64_t salt) {
        std::vector<float> v(n);
        for (size_t i = 0; i < n; ++i) {
            const double u = static_cast<double>(splitmix((seed + salt) * 0x100000001b3ull ^ i) >> 40) / double(1ull << 24);
            v[i] = round_type(t, static_cast<float>(2 * u - 1));
        }
        return v;
    };
    const std::vector<float> A = random(c.ab, static_cast<size_t>(a_rows * lda), 1),
                             B = random(c.ab, static_cast<size_t>(b_rows * ldb), 2),
                             C0 = random(c.c, static_cast<size_t>(c.m * ldc), 3), bias = random(c.c, static_cast<size_t>(c.n), 4);
    const size_t es_ab = c.ab == SW_DTYPE_F32 ? 4 : 2, es_c = c.c == SW_DTYPE_F32 ? 4 : 2;
    const uint64_t a_bytes = static_cast<uint64_t>(a_rows * lda) * es_ab, b_bytes = static_cast<uint64_t>(b_rows * ldb) * es_ab;
    const uint64_t c_bytes = static_cast<uint64_t>(c.m * ldc) * es_c, bias_bytes = static_cast<uint64_t>(c.n) * es_c;
    sw_buffer ba = alloc(a_bytes), bb = alloc(b_bytes), bc = alloc(c_bytes), bbias = alloc(bias_bytes);
    upload(ba, 0, encode_type(c.ab, A));
    upload(bb, 0, encode_type(c.ab, B));
    upload(bbias, 0, encode_type(c.c, bias));
    // C: NaN bytes everywhere (beta = 0), or C0 in its m x n elements and NaN bytes in the padding columns.
    std::vector<uint8_t> c_init(c_bytes, 0xff);
    if (c.beta != 0) {
        const std::vector<uint8_t> enc = encode_type(c.c, C0);
        for (int64_t i = 0; i < c.m; ++i)
            std::memcpy(&c_init[static_cast<size_t>(i * ldc) * es_c], &enc[static_cast<size_t>(i * ldc) * es_c],
                        static_cast<size_t>(c.n) * es_c);
    }
    upload(bc, 0, c_init);
    sw_gemm_desc d{};
    d.size = sizeof d;
    d.trans_a = c.ta ? SW_OP_T : SW_OP_N;
    d.trans_b = c.tb ? SW_OP_T : SW_OP_N;
    d.a_type = d.b_type = c.ab;
    d.c_type = c.c;
    d.compute_type = SW_DTYPE_F32;
    d.epilogue = c.gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
    d.m = c.m;
    d.n = c.n;
    d.k = c.k;
    d.alpha = c.alpha;
    d.beta = c.beta;
    d.a = ba;
    d.lda = lda;
    d.b = bb;
    d.ldb = ldb;
    d.c = bc;
    d.ldc = ldc;
    d.bias = c.bias ? bbias : nullptr;
    CK(sw_gemm_ex(C.s[0], &d));
    CK(sw_stream_synchronize(C.s[0]));
    const std::vector<uint8_t> got = download(bc, 0, c_bytes);
    const double u_acc = 1.0 / 16777216, u_out = unit_roundoff(c.c);
    uint64_t bad = 0, padding = 0;
    double worst = 0;
    std::string first;
    for (int64_t i = 0; i < c.m; ++i) {
        for (int64_t j = c.n; j < ldc; ++j) { // padding: still NaN bytes
            bool poison = true;
            for (size_t b = 0; b < es_c; ++b) poison &= got[static_cast<size_t>(i * ldc + j) * es_c + b] == 0xff;
            padding += !poison;
        }
        for (int64_t j = 0; j < c.n; ++j) {
            double acc = 0, sabs = 0;
            for (int64_t p = 0; p < c.k; ++p) {
                const double a = A[c.ta ? p * lda + i : i * lda + p], b = B[c.tb ? j * ldb + p : p * ldb + j];
                acc += a * b;
                sabs += std::fabs(a * b);
            }
            const double c0 = c.beta != 0 ? C0[i * ldc + j] : 0.0, bj = c.bias ? bias[j] : 0.0;
            const double v = c.alpha * acc + c.beta * c0 + bj;
            const double ref = c.gelu ? 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) : v;
            double e = (c.k + 2) * u_acc * (std::fabs(c.alpha) * sabs + std::fabs(c.beta * c0) + std::fabs(bj));
            if (c.gelu) e = 1.2 * e + 4 * u_acc * std::fabs(v);
            const double tol = 2 * e + u_out * std::fabs(ref) + (c.c == SW_DTYPE_F16 ? std::ldexp(1.0, -25) : 0.0);
            const double g = decode_at(c.c, got, static_cast<size_t>(i * ldc + j));
            const bool ok = std::isfinite(g) && std::fabs(g - ref) <= tol;
            if (std::isfinite(g)) worst = std::max(worst, std::fabs(g - ref) / tol);
            if (!ok && bad++ == 0)
                first = fmt("first at [%lld][%lld]: %.9g vs %.9g (tol %.3g)", static_cast<long long>(i),
                            static_cast<long long>(j), g, ref, tol);
        }
    }
    for (sw_buffer* b : {&ba, &bb, &bc, &bbias}) release(*b);
    std::string detail = fmt("%lld elements vs float64 of the rounded inputs, max abs(err)/tol %.3g",
                             static_cast<long long>(c.m * c.n), worst);
    if (bad) detail += fmt("; %llu out of tolerance, %s", static_cast<unsigned long long>(bad), first.c_str());
    if (padding) detail += fmt("; %llu padding elements of C written", static_cast<unsigned long long>(padding));
    return {bad == 0 && padding == 0, worst, detail};
}

// A combination the CUDA GEMM lacks: SW_ERR_UNSUPPORTED naming it ("a = f16, b = bf16, c = f32").
void expect_unsupported(sw_dtype a, sw_dtype b, sw_dtype c, const char* kernel) {
    sw_buffer t = alloc(256);
    fill_nan(t, 0, 256);
    CK(sw_device_set_kernel(C.dev, kernel));
    sw_gemm_desc d{};
    d.size = sizeof d;
    d.trans_a = d.trans_b = SW_OP_N;
    d.a_type = a;
    d.b_type = b;
    d.c_type = c;
    d.compute_type = SW_DTYPE_F32;
    d.epilogue = SW_EPILOGUE_NONE;
    d.m = d.n = d.k = 1;
    d.alpha = 1;
    d.beta = 0;
    d.a = d.b = d.c = t;
    d.b_offset = 8;
    d.c_offset = 16;
    d.lda = d.ldb = d.ldc = 1;
    sw_status st = sw_gemm_ex(C.s[0], &d);
    std::string msg = sw_last_error();
    if (st == SW_OK) { // an error found on the stream (the plugin's own check)
        st = sw_stream_synchronize(C.s[0]);
        msg = sw_last_error();
    }
    CK(sw_stream_synchronize(C.s[0]));
    CK(sw_device_set_kernel(C.dev, "auto"));
    release(t);
    const std::string want = fmt("a = %s, b = %s, c = %s", dtype_name(a), dtype_name(b), dtype_name(c));
    record_check(fmt("T5 %s: a = %s, b = %s, c = %s is refused", kernel, dtype_name(a), dtype_name(b), dtype_name(c)),
                 st == SW_ERR_UNSUPPORTED && msg.find(want) != std::string::npos, false,
                 fmt("status %d, message '%s' (expected SW_ERR_UNSUPPORTED naming '%s')", static_cast<int>(st), msg.c_str(),
                     want.c_str()));
}

void target_mixed_precision() {
    md("\n## 5. Mixed precision: `sw_gemm_ex` with 16-bit inputs (correctness)\n\n");
    md("A = B in f16 or bf16, C (and the bias) in f32 or the input type, fp32 accumulation, every transpose, ragged "
       "shapes, padded leading dimensions, bias, GeLU, beta; each kernel of the device. Every element is checked against "
       "a float64 reference of the rounded inputs with |err| <= 2 e + u_out |ref|, e = (k + 2) 2^-24 (|alpha| "
       "sum|a||b| + |beta c| + |bias|) (GeLU: 1.2 e + 2^-22 |pre-activation|), u_out = 2^-24 / 2^-11 / 2^-8 for f32 / "
       "f16 / bf16 C (see Verification). Not timed.");
    md(opt.emulated ? " **Emulated: the emulated plugin's host GEMM, whatever the kernel name.**\n\n" : "\n\n");
    std::vector<std::array<int64_t, 3>> shapes{{130, 77, 200}, {257, 129, 1000}};
    if (opt.emulated) shapes = {{7, 13, 9}, {33, 17, 40}};
    std::vector<const char*> kernels{"cublaslt", "mma"};
    if (opt.emulated) kernels = {"auto"};
    md("| kernel | a = b | c | cases | worst abs(err)/tol | result |\n|---|---|---|---|---|---|\n");
    int variant = 0;
    for (const char* kernel : kernels) {
        for (sw_dtype ab : {SW_DTYPE_F16, SW_DTYPE_BF16})
            for (sw_dtype c : {SW_DTYPE_F32, ab}) {
                int cases = 0, failed = 0;
                double worst = 0;
                std::string skipped;
                for (const auto& sh : shapes)
                    for (int t = 0; t < 4 && skipped.empty(); ++t) {
                        const int v = variant++;
                        const MixedCase mc{ab, c, (t & 1) != 0, (t & 2) != 0, sh[0], sh[1], sh[2], v % 3 != 0, v % 4 == 1,
                                           v % 2 ? 1.0f : 0.75f, v % 5 == 2 ? 0.5f : 0.0f};
                        progress(mixed_name(mc, kernel));
                        CK(sw_device_set_kernel(C.dev, kernel));
                        Outcome o;
                        try {
                            o = run_mixed(mc, opt.seed * 13 + static_cast<uint64_t>(v));
                        } catch (const ApiError& e) {
                            // The hand-written kernel needs compute capability 8.0: that is a skip, nothing else is.
                            if (std::strcmp(kernel, "mma") != 0 || !std::strstr(e.what(), "compute capability")) throw;
                            skipped = e.what();
                            break;
                        }
                        CK(sw_device_set_kernel(C.dev, "auto"));
                        record(mixed_name(mc, kernel), o);
                        ++cases;
                        failed += !o.ok;
                        worst = std::max(worst, o.worst);
                    }
                if (!skipped.empty()) {
                    CK(sw_device_set_kernel(C.dev, "auto"));
                    md(fmt("| %s | %s | %s | 0 | | skipped: %s |\n", kernel, dtype_name(ab), dtype_name(c), skipped.c_str()));
                    continue;
                }
                md(fmt("| %s | %s | %s | %d | %.3g | %s |\n", kernel, dtype_name(ab), dtype_name(c), cases, worst,
                       failed ? "**FAILED**" : "ok"));
            }
    }
    expect_unsupported(SW_DTYPE_F16, SW_DTYPE_BF16, SW_DTYPE_F32, "auto");
    expect_unsupported(SW_DTYPE_BF16, SW_DTYPE_BF16, SW_DTYPE_F16, "auto");
    expect_unsupported(SW_DTYPE_F32, SW_DTYPE_F32, SW_DTYPE_BF16, "auto");
    if (!opt.emulated) expect_unsupported(SW_DTYPE_F32, SW_DTYPE_F32, SW_DTYPE_F32, "mma"); // mma: 16-bit inputs only
    {
        // sw_gemm's one dtype reaches the CUDA backend's own check (sw_gemm_ex's undefined combinations stop in the core):
        // f64 is refused there, naming the combination.
        sw_buffer t = alloc(256);
        const sw_status st = sw_gemm(C.s[0], SW_DTYPE_F64, SW_OP_N, SW_OP_N, 1, 1, 1, 1.f, t, 0, 1, t, 4, 1, 0.f, t, 8, 1,
                                     nullptr, 0, SW_EPILOGUE_NONE);
        const std::string msg = sw_last_error();
        CK(sw_stream_synchronize(C.s[0]));
        release(t);
        record_check("T5 sw_gemm with f64 is refused by the CUDA backend",
                     st == SW_ERR_UNSUPPORTED && msg.find("a = f64, b = f64, c = f64") != std::string::npos, false,
                     fmt("status %d, message '%s'", static_cast<int>(st), msg.c_str()));
    }
    md("\nCombinations the CUDA GEMM lacks (a = f16, b = bf16; bf16 inputs with f16 C; f32 inputs with bf16 C) are refused "
       "with SW_ERR_UNSUPPORTED naming them (see Verification).\n");
}

// ------------------------------------------------------------------------------------------ main

int usage(const char* why) {
    std::fprintf(stderr,
                 "cuda_bench: %s\nusage: cuda_bench [--quick] [--out FILE] [--emulated] [--device N] [--reps N] [--seed N] "
                 "[--inject-fault unwritten-column]\n",
                 why);
    return 2;
}

bool write_out() {
    if (opt.out.empty()) return true;
    FILE* f = std::fopen(opt.out.c_str(), "w");
    if (!f) {
        std::fprintf(stderr, "cuda_bench: cannot write %s: %s\n", opt.out.c_str(), std::strerror(errno));
        return false;
    }
    const bool ok = std::fwrite(g_md.data(), 1, g_md.size(), f) == g_md.size();
    return std::fclose(f) == 0 && ok;
}

// Prints the report (stdout and --out) and returns the exit status: 0 when every check passed (with
// --inject-fault: when exactly the injected outputs failed their checks), else 1.
int finish(const std::string& error) {
    md("\n## Verification\n\n| check | result | detail |\n|---|---|---|\n");
    int failed = 0, injected = 0, detected = 0;
    for (const auto& c : g_checks) {
        const char* result = c.injected ? (c.ok ? "**FAULT NOT DETECTED**" : "fault detected (expected)")
                                        : (c.ok ? "ok" : "**FAILED**");
        md(fmt("| %s | %s | %s |\n", c.what.c_str(), result, c.detail.c_str()));
        if (c.injected) {
            ++injected;
            detected += !c.ok;
            failed += c.ok;
        } else {
            failed += !c.ok;
        }
    }
    md(fmt("\n%zu checks, %d failed%s.\n", g_checks.size(), failed,
           opt.inject ? fmt("; injected faults (unwritten column): %d, detected: %d", injected, detected).c_str() : ""));
    if (!error.empty()) md("\n**ERROR: " + error + "** (the run stopped here)\n");
    if (opt.emulated)
        md("\n**EMULATED RUN: the numbers above are host-emulation timings and mean nothing about any GPU; this run only "
           "proves that the harness runs and verifies.**\n");
    std::fwrite(g_md.data(), 1, g_md.size(), stdout);
    std::fflush(stdout);
    const bool wrote = write_out();
    if (!error.empty()) std::fprintf(stderr, "cuda_bench: error: %s\n", error.c_str());
    if (opt.inject && injected == 0) ++failed;
    if (failed) std::fprintf(stderr, "cuda_bench: %d verification check(s) failed\n", failed);
    return error.empty() && failed == 0 && wrote ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
        if (a == "--quick") opt.quick = true;
        else if (a == "--emulated") opt.emulated = true;
        else if (a == "--out") {
            const char* v = value();
            if (!v) return usage("--out needs a file name");
            opt.out = v;
        } else if (a == "--device") {
            const char* v = value();
            if (!v) return usage("--device needs an ordinal");
            opt.device = static_cast<int32_t>(std::atoi(v));
        } else if (a == "--reps") {
            const char* v = value();
            if (!v || std::atoi(v) < 1) return usage("--reps needs a count >= 1");
            opt.reps = std::atoi(v);
        } else if (a == "--seed") {
            const char* v = value();
            if (!v) return usage("--seed needs a number");
            opt.seed = std::strtoull(v, nullptr, 0);
            opt.seed_set = true;
        } else if (a == "--inject-fault") {
            const char* v = value();
            if (!v || std::strcmp(v, "unwritten-column") != 0) return usage("--inject-fault takes unwritten-column");
            opt.inject = true;
        } else if (a == "--help" || a == "-h") {
            usage("measures issue 3's targets on a CUDA device (see the comment at the top of cuda_bench.cpp)");
            return 0;
        } else {
            return usage(("unknown argument " + a).c_str());
        }
    }
    if (!opt.seed_set) opt.seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#ifdef SHARDWISE_EMULATED_CUDA_PLUGIN
    if (opt.emulated && !std::getenv("SHARDWISE_CUDA_PLUGIN_PATH"))
        setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
#endif

    int32_t count = 0;
    if (sw_device_count(SW_BACKEND_CUDA, &count) != SW_OK) {
        std::fprintf(stderr, "cuda_bench: sw_device_count: %s\n", sw_last_error());
        return 1;
    }
    if (count == 0 || opt.device >= count) {
        sw_device probe = nullptr;
        const sw_status st = sw_device_create(SW_BACKEND_CUDA, opt.device, 0, &probe);
        const std::string why = st != SW_OK ? sw_last_error() : "device count 0";
        if (probe) sw_device_destroy(probe);
        if (opt.emulated) {
            std::fprintf(stderr, "cuda_bench: --emulated, but no emulated CUDA device: %s\n", why.c_str());
            return 1;
        }
        std::printf("cuda_bench: skipped: no CUDA device %d (%d found): %s\n", opt.device, count, why.c_str());
        std::fprintf(stderr, "cuda_bench: skipped: no CUDA device %d (%d found): %s\n", opt.device, count, why.c_str());
        return 77;
    }

    std::string error;
    try {
        CK(sw_device_create(SW_BACKEND_CUDA, opt.device, 0, &C.dev));
        sw_device_info info{};
        CK(sw_device_get_info(C.dev, &info));
        const bool is_emulated_device = std::strstr(info.name, "Emulated") != nullptr;
        if (opt.emulated && !is_emulated_device) {
            std::fprintf(stderr, "cuda_bench: --emulated, but device %d is '%s' (set SHARDWISE_CUDA_PLUGIN_PATH to the "
                                 "emulated plugin)\n", opt.device, info.name);
            return 2;
        }
        if (!opt.emulated && is_emulated_device) {
            std::fprintf(stderr, "cuda_bench: device %d is '%s', the emulated plugin (SHARDWISE_CUDA_PLUGIN_PATH = %s): "
                                 "its GEMM is a host loop; run with --emulated\n",
                         opt.device, info.name, std::getenv("SHARDWISE_CUDA_PLUGIN_PATH"));
            return 2;
        }
        C.dt = opt.emulated ? kF32 : kBF16;
        C.warmup = opt.emulated ? 1 : opt.quick ? 2 : 3;
        C.reps = opt.reps ? opt.reps : opt.quick || opt.emulated ? 10 : 20;
        C.s.assign(kMaxRanks + 1, nullptr);
        for (auto& s : C.s) CK(sw_stream_create(C.dev, &s));
        CK(sw_event_create(C.dev, &C.start));
        C.end.assign(kMaxRanks, nullptr);
        for (auto& e : C.end) CK(sw_event_create(C.dev, &e));
        sw_device two[2] = {C.dev, C.dev};
        CK(sw_comm_create_local(2, two, 120000, &C.gate));

        md("# cuda_bench: Shardwise issue 3 targets\n\n");
        if (opt.emulated)
            md("**EMULATED RUN (`--emulated`): the emulated CUDA plugin runs on host memory and host threads; every "
               "number below is meaningless as a GPU measurement. This run only proves that the harness runs and that "
               "its verification works.**\n\n");
        md(fmt("- library: shardwise %s (C ABI %d)\n", sw_version_string(), sw_abi_version()));
        md(fmt("- device %d: %s; %d multiprocessors; %.1f GiB; GEMM algorithms: %s\n", opt.device, info.name,
               info.num_threads, info.total_memory_bytes / 1073741824.0, info.kernel));
        md("- driver / CUDA runtime versions: not exposed by the C ABI (`sw_device_get_info` gives name, SMs and memory "
           "only); `scripts/gpu-run.sh` logs `nvidia-smi` and `nvcc --version` in summary.txt\n");
        md(fmt("- mode: %s%s; dtype %s; seed %llu (`--seed` to repeat)\n",
               opt.emulated ? "emulated" : opt.quick ? "quick" : "full", opt.inject ? ", fault injection" : "", C.dt.name,
               static_cast<unsigned long long>(opt.seed)));
        md(fmt("- timing: CUDA events (`sw_event_elapsed_ms`), median (min) of %d timed runs after %d warm-up runs\n",
               C.reps, C.warmup));

        target_sharded_gemm();
        target_mma_vs_cublaslt();
        target_layout();
        target_overhead();
        target_mixed_precision();

        CK(sw_comm_destroy(C.gate));
        for (auto& e : C.end) CK(sw_event_destroy(e));
        CK(sw_event_destroy(C.start));
        for (auto& s : C.s) CK(sw_stream_destroy(s));
        CK(sw_device_destroy(C.dev));
    } catch (const std::exception& e) {
        error = e.what();
        // Handles are left as they are: work may still be queued on them; the process exits below.
        const int rc = finish(error);
        std::fflush(nullptr);
        std::_Exit(rc);
    }
    return finish(error);
}
