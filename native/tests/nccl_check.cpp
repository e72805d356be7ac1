// The core's NCCL communicators through the C ABI, against a host-memory stand-in for NCCL (native/tests/fake_nccl)
// and the emulated CUDA plugin: every collective (uneven ones through grouped broadcasts/reduces) in both modes —
// every rank in this process (sw_comm_create_nccl_local) and one rank per "process" over the TCP store
// (sw_comm_create_nccl, ranks on threads here) — checked against float64 sums; then a mismatch, a rank that never
// comes, and bad arguments. It proves the core's side only; real NCCL on GPUs is validated on a GPU machine.
// Communicator creation: with the stand-in's ncclCommInitRankConfig the communicators are non-blocking (creation polled
// against the timeout; a rank that never comes fails the others with SW_ERR_TIMEOUT), and every collective runs over
// NCCL's ncclInProgress protocol; `--blocking` runs the same checks against the stand-in without it (an NCCL 2.13:
// blocking ncclCommInitRank). The stand-in checks the ncclConfig_t it is given as NCCL does (size, magic, version).
// 16-bit collectives (collectives16): f16 and bf16 sums must equal, bit for bit, the rank-order fp32 sum rounded once
// (float16_ref.h) — the in-process communicators' result — for p = 1..8, uneven chunks and -v counts, in place and
// not; the stand-in's own 16-bit sums round every partial sum, so using them would fail. Gathers and broadcasts move
// the 16-bit bits unchanged.
#include "shardwise.h"
#include "comm/nccl_api.h"
#include "float16_ref.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <random>
#include <string>
#include <thread>
#include <vector>

static std::atomic<int> failures{0};
#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            ++failures;                                                               \
            std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                 \
            std::fprintf(stderr, __VA_ARGS__);                                        \
            std::fprintf(stderr, " (last error: %s)\n", sw_last_error());             \
        }                                                                             \
    } while (0)
#define OK(call) CHECK((call) == SW_OK, "%s", #call)

static unsigned g_seed;
static float value(int t, int r, long i) {
    std::mt19937 g(g_seed ^ static_cast<unsigned>(t * 7919 + r * 104729 + i * 31));
    return std::uniform_real_distribution<float>(-1, 1)(g) + 1e-3f;
}

// Emulated CUDA memory is host memory (the --real run stages through sw_memcpy instead).
static float* host(sw_buffer b) {
    void* p = nullptr;
    sw_buffer_get_pointer(b, &p);
    return static_cast<float*>(p);
}

static sw_buffer alloc(sw_device d, long n) {
    sw_buffer b = nullptr;
    OK(sw_buffer_alloc(d, static_cast<uint64_t>(n > 0 ? n : 1) * 4, &b));
    for (long i = 0; i < n; ++i) host(b)[i] = NAN;
    return b;
}

// The tree order of SW_REDUCE_SUM_TREE over sources [a, b) (written here, not taken from the library): sum[a, m) +
// sum[m, b), m = a + ceil((b - a) / 2).
static float tree_sum(const float* v, int a, int b) {
    if (b - a == 1) return v[a];
    const int m = a + (b - a + 1) / 2;
    return tree_sum(v, a, m) + tree_sum(v, m, b);
}
// Rank r's element i of the tree checks: magnitudes spread over 2^-8..2^8 so that the order of the fp32 sums matters.
static float tree_value(int t, int r, long i) { return value(t, r, i) * std::ldexp(1.0f, static_cast<int>((i * 7 + r * 5) % 17) - 8); }

// Every collective on rank `rank` of comm; checked against float64 references.
static void collectives(sw_comm comm, int rank, int p, sw_device dev) {
    sw_stream s = nullptr;
    OK(sw_stream_create(dev, &s));
    const long n = 100 + 7 * p;
    sw_buffer x = alloc(dev, n), y = alloc(dev, n);
    for (long i = 0; i < n; ++i) host(x)[i] = value(1, rank, i);
    OK(sw_all_reduce(comm, rank, x, 0, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < n; ++i) {
        double ref = 0;
        for (int q = 0; q < p; ++q) ref += value(1, q, i);
        CHECK(std::fabs(host(y)[i] - ref) <= 1e-5 * (1 + std::fabs(ref)), "rank %d all_reduce[%ld] = %g, expected %g", rank, i, host(y)[i], ref);
    }
    // uneven all-gather-v (rank q: q + 2 elements)
    long total = 0;
    for (int q = 0; q < p; ++q) total += q + 2;
    sw_buffer g = alloc(dev, total);
    for (long i = 0; i < rank + 2; ++i) host(x)[i] = value(2, rank, i);
    OK(sw_all_gather_v(comm, rank, x, 0, rank + 2, g, 0, total, SW_DTYPE_F32, s));
    OK(sw_stream_synchronize(s));
    for (int q = 0, at = 0; q < p; at += q + 2, ++q)
        for (long i = 0; i < q + 2; ++i) CHECK(host(g)[at + i] == value(2, q, i), "rank %d all_gather_v block %d[%ld]", rank, q, i);
    // column all-gather: 4 rows, rank q has q + 1 columns (ld_send 7)
    const long rows = 4, ncols = static_cast<long>(p) * (p + 1) / 2, ld = ncols + 1;
    sw_buffer cs = alloc(dev, rows * 7), cr = alloc(dev, rows * ld);
    for (long i = 0; i < rows * 7; ++i) host(cs)[i] = value(3, rank, i);
    OK(sw_all_gather_columns(comm, rank, cs, 0, rows, rank + 1, 7, cr, 0, ld, SW_DTYPE_F32, s));
    OK(sw_stream_synchronize(s));
    for (int q = 0, c0 = 0; q < p; c0 += q + 1, ++q)
        for (long i = 0; i < rows; ++i)
            for (long j = 0; j <= q; ++j)
                CHECK(host(cr)[i * ld + c0 + j] == value(3, q, i * 7 + j), "rank %d columns block %d (%ld,%ld)", rank, q, i, j);
    // uneven reduce-scatter-v (rank q receives 2q + 1)
    long rs_total = 0, displ = 0;
    for (int q = 0; q < p; ++q) {
        if (q < rank) displ += 2 * q + 1;
        rs_total += 2 * q + 1;
    }
    for (long i = 0; i < rs_total; ++i) host(x)[i] = value(4, rank, i);
    for (long i = 0; i < n; ++i) host(y)[i] = NAN;
    OK(sw_reduce_scatter_v(comm, rank, x, 0, rs_total, y, 0, 2 * rank + 1, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < 2 * rank + 1; ++i) {
        double ref = 0;
        for (int q = 0; q < p; ++q) ref += value(4, q, displ + i);
        CHECK(std::fabs(host(y)[i] - ref) <= 1e-5 * (1 + std::fabs(ref)), "rank %d reduce_scatter_v[%ld] = %g, expected %g", rank, i, host(y)[i], ref);
    }
    // even reduce-scatter, all-gather, broadcast, barrier
    for (long i = 0; i < 3 * p; ++i) host(x)[i] = value(5, rank, i);
    OK(sw_reduce_scatter(comm, rank, x, 0, y, 0, 3, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_all_gather(comm, rank, y, 0, g, 0, 1, SW_DTYPE_F32, s));
    OK(sw_stream_synchronize(s));
    for (int q = 0; q < p; ++q) {
        double ref = 0;
        for (int r = 0; r < p; ++r) ref += value(5, r, 3 * q);
        CHECK(std::fabs(host(g)[q] - ref) <= 1e-5 * (1 + std::fabs(ref)), "rank %d reduce_scatter+all_gather[%d] = %g, expected %g", rank, q, host(g)[q], ref);
    }
    for (long i = 0; i < 10; ++i) host(x)[i] = rank == p - 1 ? value(6, rank, i) : NAN;
    OK(sw_broadcast(comm, rank, x, 0, 10, SW_DTYPE_F32, p - 1, s));
    OK(sw_barrier(comm, rank, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < 10; ++i) CHECK(host(x)[i] == value(6, p - 1, i), "rank %d broadcast[%ld]", rank, i);
    for (sw_buffer b : {x, y, g, cs, cr}) sw_buffer_destroy(b);
    sw_stream_destroy(s);
}

// ---- 16-bit collectives
// Element i of rank r's 16-bit input for test t: a random significand scaled by 2^e, e in [-10, 10] for f16 (sums of 8
// stay finite) and [-30, 30] for bf16, so that fp32 partial sums are inexact and their order and rounding matter.
static uint16_t value16(int bf16, int t, int r, long i) {
    std::mt19937 g(g_seed ^ static_cast<unsigned>(t * 7919 + r * 104729 + i * 31 + 17));
    const float u = std::uniform_real_distribution<float>(-1, 1)(g);
    const int span = bf16 ? 30 : 10;
    const int e = std::uniform_int_distribution<int>(-span, span)(g);
    return sw_ref_round16(bf16, std::ldexp(u, e));
}
// Element i of rank r's input to a 16-bit sum of p ranks (test t): every third element is a cancellation — rank i % p
// holds a big value B, rank (i + 1) % p holds -B, the others small values (f16: |B| ~ 2^14, small ~ 2^-12; bf16: 2^40
// and 2^0) — so that the order of the fp32 additions decides how much of the small values survives: a sum in another
// order than 0..p-1 differs after the final rounding. The other elements are value16's.
static uint16_t input16(int bf16, int t, int r, long i, int p) {
    if (i % 3 != 0 || p < 3) return value16(bf16, t, r, i);
    const int big_at = static_cast<int>(i % p), neg_at = (big_at + 1) % p;
    std::mt19937 g(g_seed ^ static_cast<unsigned>(t * 7919 + i * 31 + 99));
    std::uniform_real_distribution<float> u(1, 2);
    const float big = std::ldexp(u(g), bf16 ? 40 : 14);
    if (r == big_at || r == neg_at) return sw_ref_round16(bf16, r == big_at ? big : -big);
    std::mt19937 h(g_seed ^ static_cast<unsigned>(t * 7919 + r * 104729 + i * 31 + 5));
    return sw_ref_round16(bf16, std::ldexp(u(h), bf16 ? 0 : -12));
}
// Sums (all-reduce, reduce-scatter-v outputs) whose fp32 sum in reverse rank order, rounded once, differs from the
// reference: proof that the checks see the order.
static std::atomic<long> g_order_telling{0};
static uint16_t* host16(sw_buffer b) { return reinterpret_cast<uint16_t*>(host(b)); }
static sw_buffer alloc16(sw_device d, long n) {
    sw_buffer b = nullptr;
    OK(sw_buffer_alloc(d, static_cast<uint64_t>(n > 0 ? n : 1) * 2, &b));
    for (long i = 0; i < n; ++i) host16(b)[i] = 0x7fff; // NaN in both formats: an unwritten element fails
    return b;
}
// The rank-order fp32 sum, rounded once, of element `i` of test t over p ranks (offset `at` into each rank's input).
static uint16_t ref_sum16(int bf16, int t, int p, long at) {
    std::vector<uint16_t> v(p);
    for (int q = 0; q < p; ++q) v[q] = input16(bf16, t, q, at, p);
    return sw_ref_sum16(bf16, v.data(), p);
}

// The 16-bit collectives on rank `rank` of comm (any kind), in f16 then bf16, checked bit for bit. Returns the number
// of elements (all-reduce and reduce-scatter outputs) whose every-step-rounded sum (what NCCL's own 16-bit reductions
// may give) differs from the reference: the caller checks that the data could tell the two apart.
static long collectives16(sw_comm comm, int rank, int p, sw_device dev) {
    sw_stream s = nullptr;
    OK(sw_stream_create(dev, &s));
    long telling = 0;
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        const sw_dtype dt = bf16 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
        const char* name = bf16 ? "bf16" : "f16";
        auto stepwise = [&](int t, long at) { // the every-step-rounded sum
            uint16_t acc = input16(bf16, t, 0, at, p);
            for (int q = 1; q < p; ++q) acc = sw_ref_round16(bf16, sw_ref_to_float16(bf16, acc) + sw_ref_to_float16(bf16, input16(bf16, t, q, at, p)));
            return acc;
        };
        auto reversed = [&](int t, long at) { // the fp32 sum in rank order p-1..0, rounded once
            float acc = sw_ref_to_float16(bf16, input16(bf16, t, p - 1, at, p));
            for (int q = p - 2; q >= 0; --q) acc += sw_ref_to_float16(bf16, input16(bf16, t, q, at, p));
            return sw_ref_round16(bf16, acc);
        };
        // all-reduce, out of place and in place; n not a multiple of p (uneven chunks)
        const long n = 100 + 7 * p + 3;
        sw_buffer x = alloc16(dev, n), y = alloc16(dev, n), z = alloc16(dev, n);
        for (long i = 0; i < n; ++i) host16(x)[i] = host16(z)[i] = input16(bf16, 40, rank, i, p);
        OK(sw_all_reduce(comm, rank, x, 0, y, 0, n, dt, SW_REDUCE_SUM, s));
        OK(sw_all_reduce(comm, rank, z, 0, z, 0, n, dt, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        long bad = 0, bad_in_place = 0, sent_changed = 0;
        for (long i = 0; i < n; ++i) {
            const uint16_t want = ref_sum16(bf16, 40, p, i);
            bad += host16(y)[i] != want;
            bad_in_place += host16(z)[i] != want;
            sent_changed += host16(x)[i] != input16(bf16, 40, rank, i, p);
            telling += stepwise(40, i) != want;
            g_order_telling += reversed(40, i) != want;
        }
        CHECK(bad == 0 && bad_in_place == 0 && sent_changed == 0,
              "rank %d of %d: %s all_reduce: %ld (out of place) and %ld (in place) of %ld elements differ from the rank-order fp32 "
              "sum rounded once; %ld send elements changed", rank, p, name, bad, bad_in_place, n, sent_changed);
        // uneven reduce-scatter-v: rank q receives 2q + 1
        long rs_total = 0, displ = 0;
        for (int q = 0; q < p; ++q) {
            if (q < rank) displ += 2 * q + 1;
            rs_total += 2 * q + 1;
        }
        sw_buffer v = alloc16(dev, std::max<long>(rs_total, 5 * p)), w = alloc16(dev, 2 * p + 5);
        for (long i = 0; i < rs_total; ++i) host16(v)[i] = input16(bf16, 41, rank, i, p);
        OK(sw_reduce_scatter_v(comm, rank, v, 0, rs_total, w, 0, 2 * rank + 1, dt, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (long i = 0; i < 2 * rank + 1; ++i) {
            bad += host16(w)[i] != ref_sum16(bf16, 41, p, displ + i);
            telling += stepwise(41, displ + i) != ref_sum16(bf16, 41, p, displ + i);
            g_order_telling += reversed(41, displ + i) != ref_sum16(bf16, 41, p, displ + i);
        }
        CHECK(bad == 0 && host16(w)[2 * rank + 1] == 0x7fff, "rank %d of %d: %s reduce_scatter_v: %ld of %d elements differ (or it wrote past its count)",
              rank, p, name, bad, 2 * rank + 1);
        // even reduce-scatter (5 each), then all-gather of the results: every rank sees every block
        for (long i = 0; i < 5 * p; ++i) host16(v)[i] = input16(bf16, 42, rank, i, p);
        sw_buffer g = alloc16(dev, 5 * p);
        for (long i = 0; i < 5; ++i) host16(w)[i] = 0x7fff;
        OK(sw_reduce_scatter(comm, rank, v, 0, w, 0, 5, dt, SW_REDUCE_SUM, s));
        OK(sw_all_gather(comm, rank, w, 0, g, 0, 5, dt, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (long i = 0; i < 5 * p; ++i) bad += host16(g)[i] != ref_sum16(bf16, 42, p, i);
        CHECK(bad == 0, "rank %d of %d: %s reduce_scatter + all_gather: %ld of %ld elements differ", rank, p, name, bad, 5 * p);
        // uneven all-gather-v (q + 1 elements), column all-gather (3 rows, q + 1 columns), broadcast: bits unchanged
        long total = 0;
        for (int q = 0; q < p; ++q) total += q + 1;
        sw_buffer gv = alloc16(dev, total);
        for (long i = 0; i <= rank; ++i) host16(x)[i] = value16(bf16, 43, rank, i);
        OK(sw_all_gather_v(comm, rank, x, 0, rank + 1, gv, 0, total, dt, s));
        const long rows = 3, ld = total + 1;
        sw_buffer cs = alloc16(dev, rows * 9), cr = alloc16(dev, rows * ld);
        for (long i = 0; i < rows * 9; ++i) host16(cs)[i] = value16(bf16, 44, rank, i);
        OK(sw_all_gather_columns(comm, rank, cs, 0, rows, rank + 1, 9, cr, 0, ld, dt, s));
        for (long i = 0; i < 11; ++i) host16(y)[i] = rank == p - 1 ? value16(bf16, 45, rank, i) : 0x7fff;
        OK(sw_broadcast(comm, rank, y, 0, 11, dt, p - 1, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (int q = 0, at = 0; q < p; at += q + 1, ++q)
            for (long i = 0; i <= q; ++i) bad += host16(gv)[at + i] != value16(bf16, 43, q, i);
        for (int q = 0, c0 = 0; q < p; c0 += q + 1, ++q)
            for (long i = 0; i < rows; ++i)
                for (long j = 0; j <= q; ++j) bad += host16(cr)[i * ld + c0 + j] != value16(bf16, 44, q, i * 9 + j);
        for (long i = 0; i < 11; ++i) bad += host16(y)[i] != value16(bf16, 45, p - 1, i);
        CHECK(bad == 0, "rank %d of %d: %s gathers/broadcast: %ld elements differ", rank, p, name, bad);
        for (sw_buffer b : {x, y, z, v, w, g, gv, cs, cr}) sw_buffer_destroy(b);
    }
    sw_stream_destroy(s);
    return telling;
}

// SW_REDUCE_SUM_TREE (f32 all-reduce and reduce-scatter) on rank `rank`: the tree's order bit for bit (NCCL's own
// reductions, whose order is NCCL's, must be bypassed); returns the elements whose rank-order sum differs (the check
// can tell the orders apart there).
static long tree_collectives(sw_comm comm, int rank, int p, sw_device dev) {
    sw_stream s = nullptr;
    OK(sw_stream_create(dev, &s));
    const long n = 96;
    sw_buffer x = alloc(dev, n * p), y = alloc(dev, n);
    float col[8];
    long telling = 0;
    for (long i = 0; i < n; ++i) host(x)[i] = tree_value(8, rank, i);
    OK(sw_all_reduce(comm, rank, x, 0, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM_TREE, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < n; ++i) {
        float seq = 0;
        for (int q = 0; q < p; ++q) col[q] = tree_value(8, q, i), seq = q ? seq + col[q] : col[q];
        const float ref = tree_sum(col, 0, p);
        telling += std::memcmp(&seq, &ref, 4) != 0;
        CHECK(std::memcmp(&host(y)[i], &ref, 4) == 0, "rank %d of %d: tree all_reduce[%ld] = %.9g, expected %.9g", rank, p, i, host(y)[i], ref);
    }
    for (long i = 0; i < n * p; ++i) host(x)[i] = tree_value(9, rank, i);
    OK(sw_reduce_scatter(comm, rank, x, 0, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM_TREE, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < n; ++i) {
        for (int q = 0; q < p; ++q) col[q] = tree_value(9, q, n * rank + i);
        const float ref = tree_sum(col, 0, p);
        CHECK(std::memcmp(&host(y)[i], &ref, 4) == 0, "rank %d of %d: tree reduce_scatter[%ld] = %.9g, expected %.9g", rank, p, i, host(y)[i], ref);
    }
    for (sw_buffer b : {x, y}) sw_buffer_destroy(b);
    sw_stream_destroy(s);
    return telling;
}

static long tree_collectives_all(sw_comm comm, int p, sw_device* devs) {
    std::vector<long> telling(p, 0);
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r) th.emplace_back([&, r] { telling[r] = tree_collectives(comm, r, p, devs[r]); });
    for (auto& t : th) t.join();
    return telling[0];
}

// collectives16 on every rank of an in-process communicator (one thread per rank); returns the telling elements.
static long collectives16_all(sw_comm comm, int p, sw_device* devs) {
    std::vector<long> telling(p, 0);
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r) th.emplace_back([&, r] { telling[r] = collectives16(comm, r, p, devs[r]); });
    for (auto& t : th) t.join();
    long sum = 0;
    for (long v : telling) sum += v;
    return sum;
}

// One call per rank on threads; rank `late` (if >= 0) never calls; rank `odd` passes another count.
static std::vector<sw_status> one_all_reduce(sw_comm* comms, int p, sw_device* devs, int late, int odd, std::vector<std::string>* msgs) {
    std::vector<sw_status> st(p, SW_OK);
    msgs->assign(p, "");
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r) {
        if (r == late) continue;
        th.emplace_back([&, r] {
            sw_stream s = nullptr;
            sw_stream_create(devs[r], &s);
            sw_buffer b = alloc(devs[r], 16);
            for (int i = 0; i < 16; ++i) host(b)[i] = 1;
            sw_all_reduce(comms[r], r, b, 0, b, 0, r == odd ? 8 : 16, SW_DTYPE_F32, SW_REDUCE_SUM, s);
            st[r] = sw_stream_synchronize(s);
            (*msgs)[r] = sw_last_error();
            sw_buffer_destroy(b);
            sw_stream_destroy(s);
        });
    }
    for (auto& t : th) t.join();
    return st;
}

// The outputs of a failed all-reduce (the contract in shardwise.h): the stand-in's rank 0 writes half of its result and
// then fails (FAKE_NCCL_PARTIAL_WRITE), the others write all of theirs before the failure reaches them. Every rank must
// fail; out of place its recv (filled with fresh random values first) is all unchanged or all NaN, in place its buffer
// holds its input exactly (the core restores its backup).
static void partial_write(const sw_comm* comms, int p, sw_device* devs, bool in_place) {
    const long n = 1000 + 3 * p;
    std::vector<sw_status> st(p, SW_OK);
    std::vector<std::string> msgs(p);
    std::vector<std::thread> th;
    setenv("FAKE_NCCL_PARTIAL_WRITE", "0", 1); // read by the stand-in's stream workers; unset once they are done
    for (int r = 0; r < p; ++r)
        th.emplace_back([&, r] {
            sw_stream s = nullptr;
            OK(sw_stream_create(devs[r], &s));
            sw_buffer x = alloc(devs[r], n), y = in_place ? x : alloc(devs[r], n);
            for (long i = 0; i < n; ++i) host(x)[i] = value(30, r, i);
            if (!in_place)
                for (long i = 0; i < n; ++i) host(y)[i] = value(31, r, i);
            const std::vector<float> before_x(host(x), host(x) + n), before_y(host(y), host(y) + n);
            st[r] = sw_all_reduce(comms[r], r, x, 0, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, s);
            if (st[r] == SW_OK) st[r] = sw_stream_synchronize(s);
            msgs[r] = sw_last_error();
            long same = 0, nan = 0;
            for (long i = 0; i < n; ++i) {
                if (std::memcmp(&host(y)[i], &before_y[i], 4) == 0) ++same;
                else if (std::isnan(host(y)[i])) ++nan;
            }
            CHECK(st[r] != SW_OK, "partial write (%s): rank %d succeeded", in_place ? "in place" : "out of place", r);
            if (in_place)
                CHECK(same == n, "partial write: a failed in-place all-reduce changed %ld of %ld input elements on rank %d", n - same, n, r);
            else {
                CHECK(same == n || nan == n, "partial write: rank %d's recv is mixed: %ld unchanged, %ld NaN, %ld other of %ld", r,
                      same, nan, n - same - nan, n);
                CHECK(std::memcmp(host(x), before_x.data(), n * 4) == 0, "partial write: rank %d's send changed", r);
            }
            if (!in_place) sw_buffer_destroy(y);
            sw_buffer_destroy(x);
            sw_stream_destroy(s);
        });
    for (auto& t : th) t.join();
    unsetenv("FAKE_NCCL_PARTIAL_WRITE");
}

// sw_comm_create_nccl_id for every rank but `missing` on threads (NCCL's initialization waits for every rank);
// returns the statuses and messages.
static std::vector<sw_status> create_by_id(const uint8_t* id, int p, sw_device* devs, int64_t timeout_ms, std::vector<sw_comm>* comms,
                                           std::vector<std::string>* msgs, int missing = -1) {
    comms->assign(p, nullptr);
    msgs->assign(p, "");
    std::vector<sw_status> st(p, SW_OK);
    std::vector<std::thread> th;
    for (int r = 0; r < p; ++r)
        if (r != missing)
            th.emplace_back([&, r] {
                st[r] = sw_comm_create_nccl_id(devs[r], id, r, p, timeout_ms, &(*comms)[r]);
                (*msgs)[r] = sw_last_error();
            });
    for (auto& t : th) t.join();
    return st;
}

// The stand-in's own ncclCommInitRankConfig, called directly: it accepts the ncclConfig_t Shardwise passes (and makes
// a non-blocking communicator: ncclInProgress until both ranks have called in) and refuses wrong ones as NCCL does, or
// more strictly (see parse_config in fake_nccl.cpp), so that a wrong layout on our side cannot pass unnoticed.
static void stand_in_config_checks() {
    void* lib = dlopen(SHARDWISE_FAKE_NCCL, RTLD_NOW | RTLD_LOCAL);
    CHECK(lib != nullptr, "dlopen %s: %s", SHARDWISE_FAKE_NCCL, dlerror());
    if (!lib) return;
    using InitConfig = int (*)(void**, int, sw::NcclUniqueId, int, sw::NcclConfigV21400*);
    auto init = reinterpret_cast<InitConfig>(dlsym(lib, "ncclCommInitRankConfig"));
    auto unique = reinterpret_cast<int (*)(sw::NcclUniqueId*)>(dlsym(lib, "ncclGetUniqueId"));
    auto state = reinterpret_cast<int (*)(void*, int*)>(dlsym(lib, "ncclCommGetAsyncError"));
    auto destroy = reinterpret_cast<int (*)(void*)>(dlsym(lib, "ncclCommDestroy"));
    auto abort_comm = reinterpret_cast<int (*)(void*)>(dlsym(lib, "ncclCommAbort"));
    CHECK(init && unique && state && destroy && abort_comm, "stand-in symbols");
    if (!init || !unique || !state || !destroy || !abort_comm) return;
    sw::NcclUniqueId id{};
    unique(&id);
    sw::NcclConfigV21400 good = sw::nccl_nonblocking_config();
    CHECK(good.size == 24 && good.magic == 0xcafebeef && good.version == 21400 && good.blocking == 0, "our ncclConfig_t");
    auto refused = [&](sw::NcclConfigV21400 bad, const char* what) {
        void* c = nullptr;
        const int rc = init(&c, 2, id, 0, &bad);
        CHECK(rc == 4 /* ncclInvalidArgument */, "stand-in accepted a config with %s: %d", what, rc);
        if (c) abort_comm(c);
    };
    auto bad = good;
    bad.magic = 0xcafebeee;
    refused(bad, "a wrong magic");
    bad = good;
    bad.version = 21300;
    refused(bad, "version 2.13");
    bad = good;
    bad.version = 21700;
    refused(bad, "version 2.17 but 2.14's size");
    bad = good;
    bad.size = 16;
    refused(bad, "a size without blocking");
    bad = good;
    bad.blocking = 2;
    refused(bad, "blocking = 2");
    void* c0 = nullptr;
    void* c1 = nullptr;
    int s0 = -1, s1 = -1;
    CHECK(init(&c0, 2, id, 0, &good) == sw::kNcclInProgress, "non-blocking init returns ncclInProgress");
    CHECK(c0 && state(c0, &s0) == 0 && s0 == sw::kNcclInProgress, "rank 0 alone: state %d, expected ncclInProgress", s0);
    CHECK(init(&c1, 2, id, 1, &good) == sw::kNcclInProgress, "non-blocking init returns ncclInProgress");
    CHECK(c0 && c1 && state(c0, &s0) == 0 && s0 == 0 && state(c1, &s1) == 0 && s1 == 0, "both ranks in: states %d %d", s0, s1);
    if (c0) destroy(c0);
    if (c1) destroy(c1);
    dlclose(lib);
}

// --real: real NCCL (libnccl.so.2 from SHARDWISE_NCCL_PATH or the library path) on the first GPU, world size 1 (NCCL
// allows one rank per GPU), both modes; exits 77 (skipped) without a GPU or NCCL.
static int real_gpu() {
    int32_t count = 0, available = 0, version = 0;
    char text[2048];
    sw_device_count(SW_BACKEND_CUDA, &count);
    sw_nccl_get_info(&available, &version, text, sizeof text);
    if (count == 0 || !available) {
        std::printf("skipped: %s\n", count == 0 ? "no CUDA device" : text);
        return 77;
    }
    std::printf("%s, %d GPU(s)\n", text, count);
    sw_device dev = nullptr;
    OK(sw_device_create(SW_BACKEND_CUDA, 0, 0, &dev));
    // With one rank every collective is a (strided) copy: the output must equal the input, element for element.
    auto run = [&](sw_comm comm) {
        sw_stream s = nullptr;
        OK(sw_stream_create(dev, &s));
        const long rows = 5, cols = 3, ld_send = 4, ld_recv = 6, n = rows * ld_recv;
        std::vector<float> in(n), out(n, NAN);
        for (long i = 0; i < n; ++i) in[i] = value(7, 0, i);
        sw_buffer x = nullptr, y = nullptr;
        OK(sw_buffer_alloc(dev, n * 4, &x));
        OK(sw_buffer_alloc(dev, n * 4, &y));
        auto round = [&](const char* what, auto&& call, long check) {
            OK(sw_memcpy_h2d_async(x, 0, in.data(), n * 4, s));
            OK(sw_memset_async(y, 0, 0xff, n * 4, s)); // NaN
            OK(call());
            OK(sw_memcpy_d2h_async(out.data(), y, 0, n * 4, s));
            OK(sw_stream_synchronize(s));
            for (long i = 0; i < check; ++i) CHECK(out[i] == in[i], "%s[%ld] = %g, expected %g", what, i, out[i], in[i]);
        };
        round("all_reduce", [&] { return sw_all_reduce(comm, 0, x, 0, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, s); }, n);
        round("all_gather_v", [&] { return sw_all_gather_v(comm, 0, x, 0, n, y, 0, n, SW_DTYPE_F32, s); }, n);
        round("reduce_scatter_v", [&] { return sw_reduce_scatter_v(comm, 0, x, 0, n, y, 0, n, SW_DTYPE_F32, SW_REDUCE_SUM, s); }, n);
        round("broadcast", [&] { return sw_broadcast(comm, 0, x, 0, n, SW_DTYPE_F32, 0, s) == SW_OK
                                            ? sw_memcpy_d2d_async(y, 0, x, 0, n * 4, s) : SW_ERR_INTERNAL; }, n);
        OK(sw_memcpy_h2d_async(x, 0, in.data(), n * 4, s));
        OK(sw_memset_async(y, 0, 0xff, n * 4, s));
        OK(sw_all_gather_columns(comm, 0, x, 0, rows, cols, ld_send, y, 0, ld_recv, SW_DTYPE_F32, s));
        OK(sw_memcpy_d2h_async(out.data(), y, 0, n * 4, s));
        OK(sw_stream_synchronize(s));
        for (long i = 0; i < rows; ++i)
            for (long j = 0; j < cols; ++j)
                CHECK(out[i * ld_recv + j] == in[i * ld_send + j], "all_gather_columns (%ld,%ld)", i, j);
        // f16 / bf16: the sums run through the 16-bit path (the plugin's reduce_sum over one source), the gathers move
        // the bits: every output equals its input bit for bit.
        for (int bf16 = 0; bf16 < 2; ++bf16) {
            const sw_dtype dt = bf16 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
            std::vector<uint16_t> in16(n), out16(n);
            for (long i = 0; i < n; ++i) in16[i] = sw_ref_round16(bf16, in[i]);
            auto round16 = [&](const char* what, auto&& call) {
                OK(sw_memcpy_h2d_async(x, 0, in16.data(), n * 2, s));
                OK(sw_memset_async(y, 0, 0xff, n * 2, s));
                OK(call());
                OK(sw_memcpy_d2h_async(out16.data(), y, 0, n * 2, s));
                OK(sw_stream_synchronize(s));
                long bad = 0;
                for (long i = 0; i < n; ++i) bad += out16[i] != in16[i];
                CHECK(bad == 0, "%s %s: %ld of %ld elements differ", bf16 ? "bf16" : "f16", what, bad, n);
            };
            round16("all_reduce", [&] { return sw_all_reduce(comm, 0, x, 0, y, 0, n, dt, SW_REDUCE_SUM, s); });
            round16("reduce_scatter_v", [&] { return sw_reduce_scatter_v(comm, 0, x, 0, n, y, 0, n, dt, SW_REDUCE_SUM, s); });
            round16("all_gather_v", [&] { return sw_all_gather_v(comm, 0, x, 0, n, y, 0, n, dt, s); });
        }
        sw_buffer_destroy(x);
        sw_buffer_destroy(y);
        sw_stream_destroy(s);
    };
    sw_comm comm = nullptr;
    OK(sw_comm_create_nccl_local(1, &dev, 60000, &comm));
    if (comm) run(comm);
    sw_comm_destroy(comm);
    sw_store store = nullptr;
    OK(sw_store_create("127.0.0.1", 0, 1, 60000, &store));
    OK(sw_comm_create_nccl(dev, store, "gpu", 0, 1, 60000, &comm));
    if (comm) run(comm);
    sw_comm_destroy(comm);
    sw_store_destroy(store);
    sw_device_destroy(dev);
    std::printf("%s\n", failures ? "FAILED" : "NCCL on the GPU (world size 1): all checks passed");
    return failures ? 1 : 0;
}

// --mpi-bootstrap (under mpirun -n 1): MPI carries the unique id and the host side. The stand-in NCCL works within
// one process only, so one rank; the multi-rank MPI paths are covered by multiprocess_check_mpi.
static int mpi_bootstrap() {
    int32_t available = 0;
    char info[512];
    sw_mpi_get_info(&available, info, sizeof info);
    if (!available) {
        std::printf("skipped: %s\n", info);
        return 77;
    }
    sw_device dev = nullptr;
    OK(sw_device_create(SW_BACKEND_CUDA, 0, 0, &dev));
    sw_comm comm = nullptr;
    OK(sw_comm_create_nccl_mpi(dev, 10000, &comm));
    int32_t rank = -1, world = 0;
    const char* kind = nullptr;
    OK(sw_comm_get_rank(comm, &rank));
    OK(sw_comm_get_world_size(comm, &world));
    OK(sw_comm_get_backend(comm, &kind));
    CHECK(rank == 0 && world == 1 && kind && std::strcmp(kind, "nccl") == 0, "rank %d world %d backend %s", rank, world, kind ? kind : "?");
    if (comm) collectives(comm, 0, 1, dev);
    sw_comm_destroy(comm);
    sw_device_destroy(dev);
    OK(sw_mpi_finalize());
    std::printf("%s\n", failures ? "FAILED" : "NCCL with MPI as the bootstrap: all checks passed");
    return failures ? 1 : 0;
}

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0); // progress survives a kill (ctest's timeout) when stdout is a pipe
    g_seed = static_cast<unsigned>(std::random_device{}());
    std::printf("seed %u\n", g_seed);
    if (argc > 1 && std::strcmp(argv[1], "--real") == 0) return real_gpu();
    if (argc > 1 && std::strcmp(argv[1], "--mpi-bootstrap") == 0) {
        setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
        setenv("SHARDWISE_NCCL_PATH", SHARDWISE_FAKE_NCCL, 1);
        return mpi_bootstrap();
    }
    // --blocking: the stand-in without ncclCommInitRankConfig (an NCCL 2.13), so communicators are made blocking.
    const bool nonblocking = !(argc > 1 && std::strcmp(argv[1], "--blocking") == 0);
    setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
    setenv("SHARDWISE_EMULATED_CUDA_DEVICES", "8", 1); // 3 for most checks, 8 for the 16-bit ones
    setenv("SHARDWISE_NCCL_PATH", nonblocking ? SHARDWISE_FAKE_NCCL : SHARDWISE_FAKE_NCCL_NOCONFIG, 1);
    int32_t available = 0, version = 0;
    char text[1024];
    OK(sw_nccl_get_info(&available, &version, text, sizeof text));
    if (nonblocking)
        CHECK(available == 1 && version == 21803 && std::strstr(text, "NCCL 2.18.3") && !std::strstr(text, "ncclCommInitRankConfig"),
              "nccl info: %d %d %s", available, version, text);
    else
        CHECK(available == 1 && version == 21303 && std::strstr(text, "NCCL 2.13.3") && std::strstr(text, "ncclCommInitRankConfig"),
              "nccl info (no ncclCommInitRankConfig): %d %d %s", available, version, text);
    std::printf("%s: %s\n", nonblocking ? "non-blocking communicators" : "blocking communicators", text);
    if (nonblocking) stand_in_config_checks();
    const int p = 3;
    sw_device devs[p];
    for (int r = 0; r < p; ++r) OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &devs[r]));

    // 16-bit collectives, p = 1..8, every rank in this process: NCCL, then the in-process communicator on the same
    // (emulated) CUDA devices and on CPU devices, all checked against the same reference bits.
    {
        sw_device dev8[8];
        for (int r = 0; r < 8; ++r) OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &dev8[r]));
        long telling = 0, tree_telling = 0;
        for (int q = 1; q <= 8; ++q) {
            sw_comm c = nullptr;
            OK(sw_comm_create_nccl_local(q, dev8, 20000, &c));
            if (c) telling += collectives16_all(c, q, dev8);
            if (c) tree_telling += tree_collectives_all(c, q, dev8);
            sw_comm_destroy(c);
        }
        CHECK(tree_telling > 0, "no f32 sum of the tree checks differs in rank order: the tree order is not checked");
        std::printf("SW_REDUCE_SUM_TREE over NCCL, p = 1..8: checked (%ld sums would differ in rank order)\n", tree_telling);
        CHECK(telling > 0, "no 16-bit sum of the data differs when rounded at every step: the bit-for-bit checks prove nothing");
        CHECK(g_order_telling > 0, "no 16-bit sum of the data differs when summed in reverse rank order: the order is not checked");
        std::printf("16-bit collectives over NCCL, p = 1..8: checked (%ld sums would differ if rounded at every step, %ld if "
                    "summed in reverse rank order)\n", telling, g_order_telling.load());
        for (int q : {3, 8}) {
            sw_comm c = nullptr;
            OK(sw_comm_create_local(q, dev8, 20000, &c));
            if (c) collectives16_all(c, q, dev8);
            sw_comm_destroy(c);
        }
        sw_device cpus[8];
        for (int r = 0; r < 8; ++r) OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &cpus[r]));
        sw_comm c = nullptr;
        OK(sw_comm_create_local(8, cpus, 20000, &c));
        if (c) collectives16_all(c, 8, cpus);
        sw_comm_destroy(c);
        for (auto d : cpus) sw_device_destroy(d);
        for (auto d : dev8) sw_device_destroy(d);
    }

    // Every rank in this process.
    sw_comm comm = nullptr;
    OK(sw_comm_create_nccl_local(p, devs, 5000, &comm));
    const char* kind = nullptr;
    OK(sw_comm_get_backend(comm, &kind));
    CHECK(kind && std::strcmp(kind, "nccl") == 0, "backend %s", kind ? kind : "?");
    {
        std::vector<std::thread> th;
        for (int r = 0; r < p; ++r) th.emplace_back([&, r] { collectives(comm, r, p, devs[r]); });
        for (auto& t : th) t.join();
    }
    sw_comm comms[p] = {comm, comm, comm};
    std::vector<std::string> msgs;
    auto st = one_all_reduce(comms, p, devs, -1, 2, &msgs);
    for (int r = 0; r < p; ++r)
        CHECK(st[r] == SW_ERR_MISMATCH && msgs[r].find("count 8") != std::string::npos, "mismatch rank %d: %d %s", r, st[r], msgs[r].c_str());
    OK(sw_comm_destroy(comm));

    for (int in_place = 0; in_place < 2; ++in_place) {
        OK(sw_comm_create_nccl_local(p, devs, 5000, &comm));
        const sw_comm same[3] = {comm, comm, comm};
        partial_write(same, p, devs, in_place != 0);
        OK(sw_comm_destroy(comm));
    }

    OK(sw_comm_create_nccl_local(p, devs, 500, &comm));
    for (auto& c : comms) c = comm;
    const auto t0 = std::chrono::steady_clock::now();
    st = one_all_reduce(comms, p, devs, 2, -1, &msgs);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int r = 0; r < 2; ++r)
        CHECK(st[r] == SW_ERR_TIMEOUT && msgs[r].find("rank(s) 2") != std::string::npos, "late rank: rank %d: %d %s", r, st[r], msgs[r].c_str());
    CHECK(took < 5, "timeout took %.1f s", took);
    OK(sw_comm_destroy(comm));

    // A call NCCL refuses inside a group (fp16 gathers: the stand-in refuses fp16 under FAKE_NCCL_REFUSE_F16) fails the
    // collective; the group is closed all the same, so the same streams (the same worker threads) still launch NCCL
    // work afterwards.
    setenv("FAKE_NCCL_REFUSE_F16", "1", 1);
    OK(sw_comm_create_nccl_local(p, devs, 2000, &comm));
    {
        std::vector<sw_status> bad(p, SW_OK), good(p, SW_ERR_INTERNAL);
        std::vector<std::string> why(p);
        std::vector<sw_stream> ss(p, nullptr);
        for (int r = 0; r < p; ++r) OK(sw_stream_create(devs[r], &ss[r]));
        std::vector<std::thread> th;
        for (int r = 0; r < p; ++r)
            th.emplace_back([&, r] {
                sw_buffer x = alloc(devs[r], 8), g = alloc(devs[r], 8 * p);
                sw_all_gather_v(comm, r, x, 0, 4, g, 0, 8 * p, SW_DTYPE_F16, ss[r]);
                bad[r] = sw_stream_synchronize(ss[r]);
                why[r] = sw_last_error();
                sw_buffer_destroy(x);
                sw_buffer_destroy(g);
            });
        for (auto& t : th) t.join();
        for (int r = 0; r < p; ++r) CHECK(bad[r] != SW_OK, "fp16 all_gather_v in the stand-in: rank %d: %d %s", r, bad[r], why[r].c_str());
        unsetenv("FAKE_NCCL_REFUSE_F16");
        OK(sw_comm_destroy(comm));
        OK(sw_comm_create_nccl_local(p, devs, 2000, &comm));
        th.clear();
        for (int r = 0; r < p; ++r)
            th.emplace_back([&, r] {
                sw_buffer b = alloc(devs[r], 16);
                for (int i = 0; i < 16; ++i) host(b)[i] = 1;
                sw_all_reduce(comm, r, b, 0, b, 0, 16, SW_DTYPE_F32, SW_REDUCE_SUM, ss[r]);
                good[r] = sw_stream_synchronize(ss[r]);
                why[r] = sw_last_error();
                CHECK(good[r] != SW_OK || host(b)[0] == p, "rank %d: all_reduce after a failed group = %g", r, host(b)[0]);
                sw_buffer_destroy(b);
            });
        for (auto& t : th) t.join();
        for (int r = 0; r < p; ++r) CHECK(good[r] == SW_OK, "all_reduce after a failed group: rank %d: %d %s", r, good[r], why[r].c_str());
        OK(sw_comm_destroy(comm));
        for (auto s : ss) sw_stream_destroy(s);
    }

    sw_device same[2] = {devs[0], devs[0]};
    CHECK(sw_comm_create_nccl_local(2, same, 0, &comm) == SW_ERR_INVALID_ARGUMENT && std::strstr(sw_last_error(), "one rank per GPU"), "two ranks on one GPU");
    sw_device cpu = nullptr;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &cpu));
    CHECK(sw_comm_create_nccl_local(1, &cpu, 0, &comm) == SW_ERR_INVALID_ARGUMENT && std::strstr(sw_last_error(), "CUDA"), "CPU device");

    // One rank per "process": the TCP store carries the unique id, the TCP mesh the host side.
    sw_store server = nullptr;
    OK(sw_store_create("127.0.0.1", 0, 1, 10000, &server));
    int32_t port = 0;
    OK(sw_store_get_port(server, &port));
    {
        std::vector<std::thread> th;
        for (int r = 0; r < p; ++r)
            th.emplace_back([&, r] {
                sw_store store = nullptr;
                OK(sw_store_create("127.0.0.1", port, 0, 10000, &store));
                sw_comm c = nullptr;
                OK(sw_comm_create_nccl(devs[r], store, "nccl-job", r, p, 10000, &c));
                int32_t me = -1;
                OK(sw_comm_get_rank(c, &me));
                CHECK(me == r, "rank %d", me);
                if (c) collectives(c, r, p, devs[r]);
                if (c) collectives16(c, r, p, devs[r]);
                sw_comm_destroy(c);
                sw_store_destroy(store);
            });
        for (auto& t : th) t.join();
    }
    sw_store_destroy(server);

    // One rank per "process" with a unique id passed around by the caller: the agreement travels through NCCL.
    uint8_t id[128];
    OK(sw_nccl_get_unique_id(id));
    {
        std::vector<sw_comm> byid;
        st = create_by_id(id, p, devs, 2000, &byid, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "unique id: create rank %d: %d %s", r, st[r], msgs[r].c_str());
        std::vector<std::thread> th;
        for (int r = 0; r < p; ++r)
            th.emplace_back([&, r] {
                if (byid[r]) collectives(byid[r], r, p, devs[r]);
                if (byid[r]) collectives16(byid[r], r, p, devs[r]);
            });
        for (auto& t : th) t.join();
        st = one_all_reduce(byid.data(), p, devs, -1, 1, &msgs);
        for (int r = 0; r < p; ++r)
            CHECK(st[r] == SW_ERR_MISMATCH && msgs[r].find("count 8") != std::string::npos, "unique id: mismatch rank %d: %d %s", r,
                  st[r], msgs[r].c_str());
        for (auto c : byid) sw_comm_destroy(c);
    }
    OK(sw_nccl_get_unique_id(id));
    {
        std::vector<sw_comm> byid;
        st = create_by_id(id, p, devs, 500, &byid, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "unique id: create rank %d: %d %s", r, st[r], msgs[r].c_str());
        st = one_all_reduce(byid.data(), p, devs, 2, -1, &msgs);
        for (int r = 0; r < 2; ++r)
            CHECK(st[r] == SW_ERR_TIMEOUT && msgs[r].find("cannot tell which") != std::string::npos, "unique id: late rank: rank %d: %d %s",
                  r, st[r], msgs[r].c_str());
        for (auto c : byid) sw_comm_destroy(c);
    }
    // The outputs of a failed all-reduce with a communicator per rank (the path of multi-process NCCL).
    for (int in_place = 0; in_place < 2; ++in_place) {
        OK(sw_nccl_get_unique_id(id));
        std::vector<sw_comm> byid;
        // 1.5 s: the ranks of a unique id have no abort channel, so the failure reaches the others at their timeout
        st = create_by_id(id, p, devs, 1500, &byid, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "unique id: create rank %d: %d %s", r, st[r], msgs[r].c_str());
        partial_write(byid.data(), p, devs, in_place != 0);
        for (auto c : byid) sw_comm_destroy(c);
    }
    // sw_comm_abort from another thread while the rank's worker waits in NCCL (rank 2 never comes): the worker, which
    // is using the NCCL communicator, is the one to abort it, once (ncclCommAbort frees it); then destroy.
    OK(sw_nccl_get_unique_id(id));
    {
        std::vector<sw_comm> byid;
        st = create_by_id(id, p, devs, 3000, &byid, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "unique id: create rank %d: %d %s", r, st[r], msgs[r].c_str());
        std::thread aborter([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            OK(sw_comm_abort(byid[0]));
        });
        st = one_all_reduce(byid.data(), p, devs, 2, -1, &msgs);
        aborter.join();
        CHECK(st[0] == SW_ERR_ABORTED, "unique id: abort while NCCL runs: rank 0: %d %s", st[0], msgs[0].c_str());
        CHECK(st[1] == SW_ERR_TIMEOUT, "unique id: abort while NCCL runs: rank 1: %d %s", st[1], msgs[1].c_str());
        for (auto c : byid) OK(sw_comm_destroy(c));
    }
    // Communicator creation with a deadline (non-blocking NCCL): rank 2 never calls in; ranks 0 and 1 fail with
    // SW_ERR_TIMEOUT after their 500 ms instead of hanging in NCCL's initialization. Rank 2, arriving after they gave
    // up, fails too (its peers are gone) instead of hanging or getting a communicator.
    if (nonblocking) {
        OK(sw_nccl_get_unique_id(id));
        std::vector<sw_comm> byid;
        const auto t0 = std::chrono::steady_clock::now();
        st = create_by_id(id, p, devs, 500, &byid, &msgs, /*missing=*/2);
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (int r = 0; r < 2; ++r) {
            const std::string want = "rank " + std::to_string(r) + " of 3 timed out after 500 ms";
            CHECK(st[r] == SW_ERR_TIMEOUT && msgs[r].find(want) != std::string::npos && msgs[r].find("ncclCommInitRankConfig") != std::string::npos &&
                      msgs[r].find("sw_comm_create_nccl_id") != std::string::npos && !byid[r],
                  "init deadline: rank %d: %d %s", r, st[r], msgs[r].c_str());
        }
        CHECK(took >= 0.45 && took < 5, "init deadline: took %.2f s (timeout 0.5 s)", took);
        const auto t1 = std::chrono::steady_clock::now();
        sw_comm late = nullptr;
        const sw_status late_st = sw_comm_create_nccl_id(devs[2], id, 2, p, 500, &late);
        const std::string late_msg = sw_last_error();
        const double late_took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
        CHECK(late_st == SW_ERR_BACKEND && late_msg.find("rank 2 of 3 failed during NCCL's initialization") != std::string::npos && !late,
              "init deadline: late rank 2: %d %s", late_st, late_msg.c_str());
        CHECK(late_took < 5, "init deadline: late rank took %.2f s", late_took);
        sw_comm_destroy(late);
        // The same unique-id job made again, every rank present, still works afterwards.
        OK(sw_nccl_get_unique_id(id));
        st = create_by_id(id, p, devs, 2000, &byid, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "after the init timeout: create rank %d: %d %s", r, st[r], msgs[r].c_str());
        st = one_all_reduce(byid.data(), p, devs, -1, -1, &msgs);
        for (int r = 0; r < p; ++r) CHECK(st[r] == SW_OK, "after the init timeout: all_reduce rank %d: %d %s", r, st[r], msgs[r].c_str());
        for (auto c : byid) OK(sw_comm_destroy(c));
    }
    CHECK(sw_comm_create_nccl_id(devs[0], nullptr, 0, 1, 0, &comm) == SW_ERR_NULL_HANDLE, "NULL unique id");
    CHECK(sw_comm_create_nccl_id(devs[0], id, 3, 3, 0, &comm) == SW_ERR_INVALID_ARGUMENT && std::strstr(sw_last_error(), "rank = 3"),
          "rank out of range");
    sw_device_destroy(cpu);
    for (auto& d : devs) sw_device_destroy(d);
    std::printf("%s\n", failures ? "FAILED"
                                  : nonblocking ? "all NCCL checks passed (fake NCCL, non-blocking communicators, emulated CUDA)"
                                                : "all NCCL checks passed (fake NCCL without ncclCommInitRankConfig: blocking communicators, emulated CUDA)");
    return failures ? 1 : 0;
}
