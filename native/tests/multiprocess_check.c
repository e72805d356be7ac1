/* Multi-process communicators through the C ABI only, with real processes.
 *
 *   multiprocess_check            forks 2- and 3-process jobs over TCP (rank 0 serves the store) and checks every
 *                                 collective against a float64 reference, then the faults: a rank that exits, a rank
 *                                 that is late past the timeout, ranks that disagree.
 *   multiprocess_check --mpi      one rank of an mpirun job (mpirun -n 2|3 multiprocess_check --mpi): the same
 *                                 collectives and the mismatch fault over MPI.
 * The f16/bf16 collectives (collectives16, TCP p = 1..4 and MPI): every sum bit-identical to the rank-order fp32 sum
 * rounded once (float16_ref.h), on inputs whose sums change when added in another order or rounded at every step;
 * gathers and broadcasts move the 16-bit bits unchanged.
 * Exit code 0 when every check passed; 77 (skipped) for --mpi when the MPI plugin is not available. */
#define _POSIX_C_SOURCE 200809L
#include "shardwise.h"
#include "free_port.h"
#include "float16_ref.h"

#include <math.h>
#include <stdint.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int g_rank = -1;
static int g_failures = 0;
static int g_mpi = 0; /* the MPI run broadcasts the seed first: one more collective */
static int g_ready_fd = -1; /* kill scenarios: the victim writes a byte here once its all-reduces run */

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "[rank %d] FAILED %s:%d: ", g_rank, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " (last error: %s)\n", sw_last_error());       \
            ++g_failures;                                                  \
        }                                                                  \
    } while (0)

#define OK(call) CHECK((call) == SW_OK, "%s", #call)

/* Element i of rank r's input for test t: fresh per run (the seed comes from the parent), never zero. */
static unsigned g_seed;
static float value(int t, int r, long i) {
    unsigned x = g_seed ^ (unsigned)(t * 7919 + r * 104729 + (int)i * 2654435761u);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return ((float)(x % 2001u) - 1000.0f) / 997.0f + 0.001f;
}

static double elapsed_s(struct timespec a) {
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
}

static sw_buffer alloc_f32(sw_device dev, long n) {
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(dev, (uint64_t)(n > 0 ? n : 1) * 4, &b));
    return b;
}

static float* ptr(sw_buffer b) {
    void* p = NULL;
    sw_buffer_get_pointer(b, &p);
    return (float*)p;
}

static void poison(sw_buffer b, long n) {
    float* p = ptr(b);
    for (long i = 0; i < n; ++i) p[i] = NAN;
}

/* Element i of rank r's i32 input: fresh per run, large (|x| >= 2^29 typically) so that sums of 2+ ranks overflow. */
static int32_t ivalue(int r, long i) {
    unsigned x = g_seed ^ (unsigned)(r * 2246822519u + (unsigned)i * 3266489917u + 374761393u);
    x ^= x >> 15;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return (int32_t)(x | 0x40000000u); /* never small: the high bits set, sign random */
}

/* An i32 all-reduce whose sums overflow: defined, two's-complement wrap-around (shardwise.h), i.e. the sum computed
 * in int64 and truncated to 32 bits. For the ranks listed (one stream each). */
static void i32_wrap(sw_comm comm, const sw_stream* s, sw_device dev, const int* ranks, int nranks, int p) {
    const long n = 777;
    sw_buffer b[8];
    for (int k = 0; k < nranks; ++k) {
        b[k] = alloc_f32(dev, n);
        int32_t* v = (int32_t*)ptr(b[k]);
        for (long i = 0; i < n; ++i) v[i] = ivalue(ranks[k], i);
        OK(sw_all_reduce(comm, ranks[k], b[k], 0, b[k], 0, (uint64_t)n, SW_DTYPE_I32, SW_REDUCE_SUM, s[k]));
    }
    long overflowed = 0;
    for (int k = 0; k < nranks; ++k) {
        OK(sw_stream_synchronize(s[k]));
        const int32_t* v = (const int32_t*)ptr(b[k]);
        long wrong = 0;
        for (long i = 0; i < n; ++i) {
            int64_t ref = 0;
            for (int q = 0; q < p; ++q) ref += ivalue(q, i);
            overflowed += ref > INT32_MAX || ref < INT32_MIN;
            const int32_t want = (int32_t)(uint32_t)(uint64_t)ref;
            wrong += v[i] != want;
        }
        CHECK(wrong == 0, "rank %d: i32 all-reduce: %ld of %ld sums differ from the wrapped int64 sum", ranks[k], wrong, n);
        sw_buffer_destroy(b[k]);
    }
    CHECK(p < 2 || overflowed > 0, "no i32 sum overflowed: the check proves nothing");
}

/* The float sum of v[0..p) in the order the algorithm the environment picks adds them (SHARDWISE_ALLREDUCE for an
 * all-reduce, SHARDWISE_REDUCE_SCATTER for a reduce-scatter; collectives.h): rank order 0..p-1 (default); ring: chunk
 * c's chain c+1, c+2, ..., c; rd (p a power of two): the halves, ((x0+x1)+(x2+x3)).... So the checks stay bit for bit
 * whichever algorithm runs. */
static float halves_sum(const float* v, int n) { return n == 1 ? v[0] : halves_sum(v, n / 2) + halves_sum(v + n / 2, n / 2); }
static float algo_sum(const float* v, int p, const char* algo, int chunk) {
    if (algo && strcmp(algo, "ring") == 0) {
        float f = v[(chunk + 1) % p];
        for (int k = 2; k <= p; ++k) f += v[(chunk + k) % p];
        return f;
    }
    if (algo && strcmp(algo, "rd") == 0 && p > 1 && (p & (p - 1)) == 0) return halves_sum(v, p);
    float f = v[0];
    for (int q = 1; q < p; ++q) f += v[q];
    return f;
}
/* The all-reduce's chunk of element i of n (the even split of the count over the ranks). */
static int chunk_of(long i, long n, int p) {
    const long base = n / p, rem = n % p;
    for (int c = 0; c < p; ++c) {
        const long begin = c * base + (c < rem ? c : rem), count = base + (c < rem ? 1 : 0);
        if (i < begin + count) return c;
    }
    return p - 1;
}

/* The collectives on comm, checked against float64 sums in rank order. */
static void collectives(sw_device dev, sw_stream s, sw_comm comm, int rank, int p) {
    const long n = 1000 + 37 * p; /* not a multiple of p */
    /* all-reduce (in place and out of place) */
    sw_buffer x = alloc_f32(dev, n), y = alloc_f32(dev, n);
    for (long i = 0; i < n; ++i) ptr(x)[i] = value(1, rank, i);
    poison(y, n);
    OK(sw_all_reduce(comm, rank, x, 0, y, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_all_reduce(comm, rank, x, 0, x, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < n; ++i) {
        double ref = 0;
        float v[64];
        for (int q = 0; q < p; ++q) {
            ref += value(1, q, i);
            v[q] = value(1, q, i);
        }
        /* rank order in float (or the chosen algorithm's order): the bits every rank must get */
        const float f = algo_sum(v, p, getenv("SHARDWISE_ALLREDUCE"), chunk_of(i, n, p));
        CHECK(fabs(ptr(y)[i] - ref) <= 1e-5 * (1 + fabs(ref)), "all_reduce[%ld] = %g, expected %g", i, ptr(y)[i], ref);
        CHECK(memcmp(&ptr(y)[i], &f, 4) == 0, "all_reduce[%ld] = %.9g is not the rank-order float sum %.9g", i, ptr(y)[i], f);
        CHECK(memcmp(&ptr(x)[i], &f, 4) == 0, "in-place all_reduce[%ld] = %.9g, expected %.9g", i, ptr(x)[i], f);
    }
    /* uneven all-gather-v: rank q contributes q + 3 elements */
    long total = 0;
    for (int q = 0; q < p; ++q) total += q + 3;
    sw_buffer g = alloc_f32(dev, total);
    for (long i = 0; i < rank + 3; ++i) ptr(x)[i] = value(2, rank, i);
    poison(g, total);
    OK(sw_all_gather_v(comm, rank, x, 0, (uint64_t)(rank + 3), g, 0, (uint64_t)total, SW_DTYPE_F32, s));
    OK(sw_stream_synchronize(s));
    for (int q = 0, at = 0; q < p; at += q + 3, ++q)
        for (long i = 0; i < q + 3; ++i)
            CHECK(ptr(g)[at + i] == value(2, q, i), "all_gather_v block %d [%ld] = %g", q, i, ptr(g)[at + i]);
    /* column all-gather: 5 rows, rank q has q + 1 columns (ld_send 9) */
    const long rows = 5, cols = rank + 1, ncols = (long)p * (p + 1) / 2, ld_recv = ncols + 2;
    sw_buffer cs = alloc_f32(dev, rows * 9), cr = alloc_f32(dev, rows * ld_recv);
    for (long i = 0; i < rows * 9; ++i) ptr(cs)[i] = value(3, rank, i);
    poison(cr, rows * ld_recv);
    OK(sw_all_gather_columns(comm, rank, cs, 0, rows, cols, 9, cr, 0, ld_recv, SW_DTYPE_F32, s));
    OK(sw_stream_synchronize(s));
    for (int q = 0, c0 = 0; q < p; c0 += q + 1, ++q)
        for (long i = 0; i < rows; ++i)
            for (long j = 0; j <= q; ++j)
                CHECK(ptr(cr)[i * ld_recv + c0 + j] == value(3, q, i * 9 + j), "all_gather_columns block %d (%ld,%ld)", q, i, j);
    /* uneven reduce-scatter-v: rank q receives 2q + 1 elements */
    long rs_total = 0, displ = 0;
    for (int q = 0; q < p; ++q) {
        if (q < rank) displ += 2 * q + 1;
        rs_total += 2 * q + 1;
    }
    for (long i = 0; i < rs_total; ++i) ptr(x)[i] = value(4, rank, i);
    poison(y, n);
    OK(sw_reduce_scatter_v(comm, rank, x, 0, (uint64_t)rs_total, y, 0, (uint64_t)(2 * rank + 1), SW_DTYPE_F32,
                           SW_REDUCE_SUM, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < 2 * rank + 1; ++i) {
        double ref = 0;
        for (int q = 0; q < p; ++q) ref += value(4, q, displ + i);
        CHECK(fabs(ptr(y)[i] - ref) <= 1e-5 * (1 + fabs(ref)), "reduce_scatter_v[%ld] = %g, expected %g", i, ptr(y)[i], ref);
    }
    /* broadcast from the last rank, then a barrier */
    for (long i = 0; i < 100; ++i) ptr(x)[i] = rank == p - 1 ? value(5, rank, i) : NAN;
    OK(sw_broadcast(comm, rank, x, 0, 100, SW_DTYPE_F32, p - 1, s));
    OK(sw_barrier(comm, rank, s));
    OK(sw_stream_synchronize(s));
    for (long i = 0; i < 100; ++i) CHECK(ptr(x)[i] == value(5, p - 1, i), "broadcast[%ld] = %g", i, ptr(x)[i]);
    i32_wrap(comm, &s, dev, &rank, 1, p);
    uint64_t done = 0;
    OK(sw_comm_get_collective_count(comm, rank, &done));
    CHECK(done == 8 + (uint64_t)(g_mpi ? 1 : 0), "collective count %llu, expected 8", (unsigned long long)done);
    /* another rank's index is refused */
    CHECK(sw_barrier(comm, (rank + 1) % p, s) == (p > 1 ? SW_ERR_INVALID_ARGUMENT : SW_OK), "foreign rank accepted");
    if (p == 1) sw_stream_synchronize(s);
    sw_buffer_destroy(x);
    sw_buffer_destroy(y);
    sw_buffer_destroy(g);
    sw_buffer_destroy(cs);
    sw_buffer_destroy(cr);
}

/* ---- 16-bit collectives */

static uint32_t hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* A float in [1, 2) from (tag, rank, i, salt), fresh per run. */
static float unit16(int t, int r, long i, unsigned salt) {
    const uint32_t x = hash32(g_seed ^ hash32((unsigned)t * 7919u + (unsigned)r * 104729u + (unsigned)i * 2654435761u + salt));
    return 1.0f + (float)(x >> 8) / 16777216.0f;
}

/* Element i of rank r's 16-bit input (test t, p ranks). Every third element (p >= 3) is a cancellation: rank i % p holds
 * a big B, rank (i + 1) % p holds -B, the others small values (f16: B ~ 2^14, small ~ 2^-12; bf16: 2^40 and 1), so the
 * order of the fp32 additions decides what survives the final rounding. The others: a random sign and significand
 * times 2^e, e in [-10, 10] (f16) or [-30, 30] (bf16). */
static uint16_t value16(int bf16, int t, int r, long i, int p) {
    if (i % 3 == 0 && p >= 3) {
        const int big_at = (int)(i % p), neg_at = (big_at + 1) % p;
        if (r == big_at || r == neg_at) {
            const float big = ldexpf(unit16(t, 0, i, 11u), bf16 ? 40 : 14);
            return sw_ref_round16(bf16, r == big_at ? big : -big);
        }
        return sw_ref_round16(bf16, ldexpf(unit16(t, r, i, 12u), bf16 ? 0 : -12));
    }
    const int span = bf16 ? 30 : 10;
    const uint32_t h = hash32(g_seed ^ (unsigned)(t * 31 + r * 7 + (int)i * 131 + 13));
    const float v = ldexpf(unit16(t, r, i, 13u), (int)(h % (uint32_t)(2 * span + 1)) - span);
    return sw_ref_round16(bf16, (h >> 16) & 1u ? -v : v);
}

static uint16_t* ptr16(sw_buffer b) { return (uint16_t*)ptr(b); }

static void poison16(sw_buffer b, long n) {
    for (long i = 0; i < n; ++i) ptr16(b)[i] = 0x7fff; /* NaN in both formats */
}

/* The rank-order fp32 sum rounded once of element `at` of test t; *order_telling / *step_telling count the sums that
 * would differ if added in reverse rank order / rounded at every step. */
static uint16_t ref_sum16(int bf16, int t, int p, long at, long* order_telling, long* step_telling, const char* algo, int chunk) {
    uint16_t v[64] = {0};
    float fv[64];
    if (p > 64) p = 64; /* never: the jobs here have at most 8 ranks */
    for (int q = 0; q < p; ++q) {
        v[q] = value16(bf16, t, q, at, p);
        fv[q] = sw_ref_to_float16(bf16, v[q]);
    }
    /* rank order: the reference's; another algorithm: its order, in fp32, rounded once */
    const uint16_t want = algo && (strcmp(algo, "ring") == 0 || strcmp(algo, "rd") == 0)
                              ? sw_ref_round16(bf16, algo_sum(fv, p, algo, chunk))
                              : sw_ref_sum16(bf16, v, p);
    float rev = sw_ref_to_float16(bf16, v[p - 1]);
    for (int q = p - 2; q >= 0; --q) rev += sw_ref_to_float16(bf16, v[q]);
    uint16_t step = v[0];
    for (int q = 1; q < p; ++q) step = sw_ref_round16(bf16, sw_ref_to_float16(bf16, step) + sw_ref_to_float16(bf16, v[q]));
    *order_telling += sw_ref_round16(bf16, rev) != want;
    *step_telling += step != want;
    return want;
}

/* f16 and bf16 all-reduce (out of place, in place), reduce-scatter-v (uneven), reduce-scatter, all-gather-v,
 * broadcast on comm, checked bit for bit. */
static void collectives16(sw_device dev, sw_stream s, sw_comm comm, int rank, int p) {
    long order_telling = 0, step_telling = 0;
    for (int bf16 = 0; bf16 < 2; ++bf16) {
        const sw_dtype dt = bf16 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
        const char* name = bf16 ? "bf16" : "f16";
        const long n = 500 + 37 * p; /* not a multiple of p: uneven chunks */
        sw_buffer x = alloc_f32(dev, n), y = alloc_f32(dev, n), z = alloc_f32(dev, n); /* 4 bytes an element: room */
        for (long i = 0; i < n; ++i) ptr16(x)[i] = ptr16(z)[i] = value16(bf16, 50, rank, i, p);
        poison16(y, n);
        OK(sw_all_reduce(comm, rank, x, 0, y, 0, (uint64_t)n, dt, SW_REDUCE_SUM, s));
        OK(sw_all_reduce(comm, rank, z, 0, z, 0, (uint64_t)n, dt, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        long bad = 0, bad_in_place = 0, changed = 0;
        for (long i = 0; i < n; ++i) {
            const uint16_t want = ref_sum16(bf16, 50, p, i, &order_telling, &step_telling, getenv("SHARDWISE_ALLREDUCE"), chunk_of(i, n, p));
            bad += ptr16(y)[i] != want;
            bad_in_place += ptr16(z)[i] != want;
            changed += ptr16(x)[i] != value16(bf16, 50, rank, i, p);
        }
        CHECK(bad == 0 && bad_in_place == 0 && changed == 0,
              "%s all_reduce p=%d: %ld (out of place) and %ld (in place) of %ld sums differ from the rank-order fp32 sum "
              "rounded once; %ld send elements changed", name, p, bad, bad_in_place, n, changed);
        /* uneven reduce-scatter-v: rank q receives 3q + 2 */
        long total = 0, displ = 0;
        for (int q = 0; q < p; ++q) {
            if (q < rank) displ += 3 * q + 2;
            total += 3 * q + 2;
        }
        sw_buffer v = alloc_f32(dev, total + 8 * p);
        for (long i = 0; i < total; ++i) ptr16(v)[i] = value16(bf16, 51, rank, i, p);
        poison16(y, n);
        OK(sw_reduce_scatter_v(comm, rank, v, 0, (uint64_t)total, y, 0, (uint64_t)(3 * rank + 2), dt, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (long i = 0; i < 3 * rank + 2; ++i) bad += ptr16(y)[i] != ref_sum16(bf16, 51, p, displ + i, &order_telling, &step_telling,
                                                                          getenv("SHARDWISE_REDUCE_SCATTER"), rank);
        CHECK(bad == 0 && ptr16(y)[3 * rank + 2] == 0x7fff, "%s reduce_scatter_v p=%d: %ld of %d sums differ (or written past the count)",
              name, p, bad, 3 * rank + 2);
        /* even reduce-scatter (7 each) */
        for (long i = 0; i < 7L * p; ++i) ptr16(v)[i] = value16(bf16, 52, rank, i, p);
        poison16(y, n);
        OK(sw_reduce_scatter(comm, rank, v, 0, y, 0, 7, dt, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (long i = 0; i < 7; ++i) bad += ptr16(y)[i] != ref_sum16(bf16, 52, p, 7L * rank + i, &order_telling, &step_telling,
                                                                   getenv("SHARDWISE_REDUCE_SCATTER"), rank);
        CHECK(bad == 0, "%s reduce_scatter p=%d: %ld of 7 sums differ", name, p, bad);
        /* uneven all-gather-v (q + 3 elements) and a broadcast from the last rank: the bits unchanged */
        long gtotal = 0;
        for (int q = 0; q < p; ++q) gtotal += q + 3;
        sw_buffer g = alloc_f32(dev, gtotal);
        poison16(g, gtotal);
        for (long i = 0; i < rank + 3; ++i) ptr16(x)[i] = value16(bf16, 53, rank, i, 1);
        OK(sw_all_gather_v(comm, rank, x, 0, (uint64_t)(rank + 3), g, 0, (uint64_t)gtotal, dt, s));
        for (long i = 0; i < 21; ++i) ptr16(z)[i] = rank == p - 1 ? value16(bf16, 54, rank, i, 1) : 0x7fff;
        OK(sw_broadcast(comm, rank, z, 0, 21, dt, p - 1, s));
        OK(sw_stream_synchronize(s));
        bad = 0;
        for (int q = 0, at = 0; q < p; at += q + 3, ++q)
            for (long i = 0; i < q + 3; ++i) bad += ptr16(g)[at + i] != value16(bf16, 53, q, i, 1);
        for (long i = 0; i < 21; ++i) bad += ptr16(z)[i] != value16(bf16, 54, p - 1, i, 1);
        CHECK(bad == 0, "%s all_gather_v/broadcast p=%d: %ld elements differ", name, p, bad);
        sw_buffer_destroy(x);
        sw_buffer_destroy(y);
        sw_buffer_destroy(z);
        sw_buffer_destroy(v);
        sw_buffer_destroy(g);
    }
    /* With 3+ ranks the data must be able to tell a wrong order or a rounding at every step from the right sum. */
    CHECK(p < 3 || (order_telling > 0 && step_telling > 0),
          "16-bit sums p=%d: %ld would differ in reverse order, %ld if rounded at every step: the checks prove nothing", p,
          order_telling, step_telling);
    /* Every rank is done with every peer before any rank destroys its communicator (a TCP rank that closes its
     * sockets while a peer's last bytes are unread can reset them: seen about 2 runs in 10 at p = 4 without this). */
    OK(sw_barrier(comm, rank, s));
    OK(sw_stream_synchronize(s));
}

/* ---- the outputs of a failed collective (the contract in shardwise.h): out of place, the receive region is all
 * unchanged or all NaN, never a mix, and send is unchanged; in place, the buffer keeps its input exactly. */

/* All-reduces n elements of fresh data (tag t) for the nranks ranks listed (one per stream: an in-process
 * communicator passes all of them, a multi-process one its own), in place or not, and checks each rank: on success
 * the rank-order float sum bit for bit, on failure the contract. The receive buffer of an out-of-place call is first
 * filled with other fresh random values (never NaN), the "before" it may keep. status[k] gets rank ranks[k]'s
 * status, msg (if not NULL) the last failing rank's message. Returns the number of ranks that failed. */
static int fault_all_reduce(sw_comm comm, const sw_stream* s, sw_device dev, const int* ranks, int nranks, int p,
                            int in_place, int t, long n, sw_status* status, char* msg, size_t msg_cap) {
    int failed = 0;
    sw_buffer x[8], y[8];
    float* before_x[8];
    float* before_y[8];
    for (int k = 0; k < nranks; ++k) {
        x[k] = alloc_f32(dev, n);
        y[k] = in_place ? x[k] : alloc_f32(dev, n);
        for (long i = 0; i < n; ++i) ptr(x[k])[i] = value(t, ranks[k], i);
        if (!in_place)
            for (long i = 0; i < n; ++i) ptr(y[k])[i] = value(t + 1000, ranks[k], i);
        before_x[k] = (float*)malloc((size_t)n * 4);
        before_y[k] = (float*)malloc((size_t)n * 4);
        memcpy(before_x[k], ptr(x[k]), (size_t)n * 4);
        memcpy(before_y[k], ptr(y[k]), (size_t)n * 4);
        status[k] = sw_all_reduce(comm, ranks[k], x[k], 0, y[k], 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s[k]);
    }
    for (int k = 0; k < nranks; ++k) {
        if (status[k] == SW_OK) status[k] = sw_stream_synchronize(s[k]);
        if (status[k] != SW_OK && msg) snprintf(msg, msg_cap, "%s", sw_last_error());
    }
    for (int k = 0; k < nranks; ++k) {
        const int r = ranks[k];
        const float* out = ptr(y[k]);
        if (status[k] == SW_OK) {
            long wrong = 0;
            for (long i = 0; i < n; ++i) {
                float v[64];
                for (int q = 0; q < p; ++q) v[q] = value(t, q, i);
                /* (an in-process communicator, which passes every rank here, always sums in rank order) */
                const float f = algo_sum(v, p, nranks == 1 ? getenv("SHARDWISE_ALLREDUCE") : NULL, chunk_of(i, n, p));
                if (memcmp(&out[i], &f, 4) != 0) ++wrong;
            }
            CHECK(wrong == 0, "rank %d: all-reduce (%s) succeeded with %ld of %ld elements wrong", r,
                  in_place ? "in place" : "out of place", wrong, n);
            continue;
        }
        ++failed;
        if (in_place) {
            long changed = 0;
            for (long i = 0; i < n; ++i) changed += memcmp(&out[i], &before_x[k][i], 4) != 0;
            CHECK(changed == 0, "rank %d: a failed in-place all-reduce (status %d) changed %ld of %ld input elements", r,
                  (int)status[k], changed, n);
        } else {
            long same = 0, nan = 0;
            for (long i = 0; i < n; ++i) {
                if (memcmp(&out[i], &before_y[k][i], 4) == 0) ++same;
                else if (isnan(out[i])) ++nan;
            }
            CHECK(same == n || nan == n,
                  "rank %d: a failed all-reduce (status %d) left recv mixed: %ld unchanged, %ld NaN, %ld other of %ld", r,
                  (int)status[k], same, nan, n - same - nan, n);
            CHECK(memcmp(ptr(x[k]), before_x[k], (size_t)n * 4) == 0, "rank %d: a failed all-reduce changed its send", r);
        }
    }
    for (int k = 0; k < nranks; ++k) {
        if (!in_place) sw_buffer_destroy(y[k]);
        sw_buffer_destroy(x[k]);
        free(before_x[k]);
        free(before_y[k]);
    }
    return failed;
}

/* The fault scenarios of one rank of a TCP job (see tcp_rank), after the communicator exists. */
static void tcp_fault(sw_device dev, sw_stream s, sw_comm comm, int rank, int p, const char* scenario) {
    const int victim = p - 1, in_place = strstr(scenario, "inplace") != NULL;
    sw_status st = SW_OK;
    char msg[2048] = {0};
    if (strncmp(scenario, "kill", 4) == 0) {
        /* The parent kills the victim with SIGKILL at a random moment; every rank all-reduces 4 MiB in a loop until
         * one fails. The loop is kept cheap (input and reference computed once; recv refilled from a fast generator,
         * never NaN) so that most of the time is spent inside the collective and the kill lands mid-data-movement. */
        const long n = (1L << 20) + 3;
        sw_buffer x = alloc_f32(dev, n), y = alloc_f32(dev, n);
        float* input = (float*)malloc((size_t)n * 4);
        float* want = (float*)malloc((size_t)n * 4);
        float* before = (float*)malloc((size_t)n * 4);
        for (long i = 0; i < n; ++i) {
            input[i] = value(100, rank, i);
            float v[64];
            for (int q = 0; q < p; ++q) v[q] = value(100, q, i);
            want[i] = algo_sum(v, p, getenv("SHARDWISE_ALLREDUCE"), chunk_of(i, n, p));
        }
        unsigned rng = g_seed ^ (unsigned)rank;
        float* out = in_place ? ptr(x) : ptr(y);
        int it = 0;
        for (; it < 100000 && st == SW_OK; ++it) {
            memcpy(ptr(x), input, (size_t)n * 4);
            if (!in_place)
                for (long i = 0; i < n; ++i) {
                    rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
                    ptr(y)[i] = (float)(rng >> 8) * (1.0f / 16777216.0f) - 0.5f;
                }
            memcpy(before, out, (size_t)n * 4);
            st = sw_all_reduce(comm, rank, x, 0, in_place ? x : y, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s);
            if (st == SW_OK) st = sw_stream_synchronize(s);
            if (st == SW_OK) {
                CHECK(memcmp(out, want, (size_t)n * 4) == 0, "kill loop: all-reduce %d succeeded with a wrong result", it);
            } else {
                snprintf(msg, sizeof msg, "%s", sw_last_error());
                long same = 0, nan = 0;
                for (long i = 0; i < n; ++i) {
                    if (memcmp(&out[i], &before[i], 4) == 0) ++same;
                    else if (isnan(out[i])) ++nan;
                }
                CHECK(same == n || (!in_place && nan == n),
                      "rank %d: a failed all-reduce (%s, status %d, after %d good ones) left %ld unchanged, %ld NaN, %ld other of %ld",
                      rank, in_place ? "in place" : "out of place", (int)st, it, same, nan, n - same - nan, n);
                if (!in_place) CHECK(memcmp(ptr(x), input, (size_t)n * 4) == 0, "rank %d: a failed all-reduce changed its send", rank);
            }
            if (it == 0 && g_ready_fd >= 0 && write(g_ready_fd, "r", 1) != 1) CHECK(0, "cannot tell the parent");
        }
        free(input);
        free(want);
        free(before);
        sw_buffer_destroy(x);
        sw_buffer_destroy(y);
        CHECK(rank != victim, "the victim was not killed");
        /* (or a survivor that failed on it already closed its connection) */
        CHECK(st == SW_ERR_ABORTED && (strstr(msg, "rank 2") || strstr(msg, "lost the connection")),
              "after rank 2 was killed: status %d, '%s'", (int)st, msg);
        return;
    }
    /* abort-*: the victim aborts its communicator right after its first data exchange (the reduce-scatter half of the
     * all-reduce; SHARDWISE_TEST_FAULT=abort:1, set before the communicator was made), the others are in the
     * all-gather half; exit-*: the victim's process ends there instead (exit:1). Every rank must fail. */
    fault_all_reduce(comm, &s, dev, &rank, 1, p, in_place, 7, (1L << 16) + 37, &st, msg, sizeof msg);
    CHECK(st != SW_OK, "%s: the all-reduce succeeded on rank %d", scenario, rank);
    if (strncmp(scenario, "abort", 5) == 0) /* or a peer that failed on it already closed its connection */
        CHECK(st == SW_ERR_ABORTED && (strstr(msg, "injected fault") || strstr(msg, "lost the connection")),
              "%s: status %d, '%s'", scenario, (int)st, msg);
    else
        CHECK(st == SW_ERR_ABORTED && (strstr(msg, "rank 2") || strstr(msg, "lost the connection")), "%s: status %d, '%s'",
              scenario, (int)st, msg);
}

/* Ranks passing different broadcast roots: every rank fails with SW_ERR_MISMATCH naming both roots, and no rank's
 * buffer changes (nothing was sent). rank_root gives each rank's root. */
static void root_mismatch(sw_comm comm, const sw_stream* s, sw_device dev, const int* ranks, int nranks,
                          int (*rank_root)(int)) {
    sw_buffer b[8];
    for (int k = 0; k < nranks; ++k) {
        b[k] = alloc_f32(dev, 50);
        for (long i = 0; i < 50; ++i) ptr(b[k])[i] = value(9, ranks[k], i);
        OK(sw_broadcast(comm, ranks[k], b[k], 0, 50, SW_DTYPE_F32, rank_root(ranks[k]), s[k]));
    }
    for (int k = 0; k < nranks; ++k) {
        const sw_status st = sw_stream_synchronize(s[k]);
        char want[2][64];
        snprintf(want[0], sizeof want[0], "root %d", rank_root(0));
        snprintf(want[1], sizeof want[1], "root %d", rank_root(1));
        CHECK(st == SW_ERR_MISMATCH && strstr(sw_last_error(), want[0]) && strstr(sw_last_error(), want[1]),
              "rank %d: broadcast with different roots: status %d, '%s'", ranks[k], (int)st, sw_last_error());
        long changed = 0;
        for (long i = 0; i < 50; ++i) changed += ptr(b[k])[i] != value(9, ranks[k], i);
        CHECK(changed == 0, "rank %d: a broadcast that failed on a mismatch changed %ld elements", ranks[k], changed);
        sw_buffer_destroy(b[k]);
    }
}
static int root_by_parity(int rank) { return rank == 0 ? 0 : 1; } /* rank 0 says 0, the others 1 */

/* One rank of a TCP job; returns its exit code. */
static int tcp_rank(int rank, int p, int port, const char* scenario) {
    g_rank = rank;
    sw_device dev = NULL;
    sw_stream s = NULL;
    sw_store store = NULL;
    sw_comm comm = NULL;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &dev));
    OK(sw_stream_create(dev, &s));
    const int64_t timeout = strcmp(scenario, "late") == 0 ? 1500 : 20000;
    /* read once by the library, at the first data exchange */
    if (rank == p - 1 && strncmp(scenario, "abort", 5) == 0) setenv("SHARDWISE_TEST_FAULT", "abort:1", 1);
    if (rank == p - 1 && strncmp(scenario, "exit", 4) == 0 && strcmp(scenario, "exit") != 0)
        setenv("SHARDWISE_TEST_FAULT", "exit:1", 1);
    OK(sw_store_create("127.0.0.1", port, rank == 0, 20000, &store));
    int stray = -1;
    if (strcmp(scenario, "stray") == 0 && rank == 1) {
        /* a connection to rank 0's listener that never says hello (a port scanner, a health check), before rank 1's */
        char addr[128] = {0};
        uint64_t n = 0;
        OK(sw_store_get(store, "job/addr/0", addr, sizeof addr - 1, &n));
        const char* space = strrchr(addr, ' ');
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)(space ? atoi(space + 1) : 0));
        stray = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(stray >= 0 && connect(stray, (struct sockaddr*)&a, sizeof a) == 0, "stray connection to '%s'", addr);
    }
    struct timespec created;
    clock_gettime(CLOCK_MONOTONIC, &created);
    if (strncmp(scenario, "no-room", 7) == 0) {
        /* a segment that does not fit (SHARDWISE_SHM_MAX_BYTES, as a full /dev/shm): auto falls back to the sockets, every
         * rank alike, and the collectives work; shm required fails the creation saying why */
        setenv("SHARDWISE_SHM_MAX_BYTES", "4096", 1); /* smaller than any segment */
        const int required = strcmp(scenario, "no-room-shm") == 0;
        setenv("SHARDWISE_TRANSPORT", required ? "shm" : "auto", 1);
        const sw_status st = sw_comm_create_tcp(dev, store, "job", rank, p, timeout, &comm);
        if (required) {
            CHECK(st == SW_ERR_UNSUPPORTED && strstr(sw_last_error(), "SHARDWISE_SHM_MAX_BYTES allows 4096") && comm == NULL,
                  "rank %d: shm required without room: status %d, '%s'", rank, (int)st, sw_last_error());
        } else {
            const char* path = NULL;
            CHECK(st == SW_OK && sw_comm_get_transport(comm, &path) == SW_OK && path && strcmp(path, "tcp") == 0,
                  "rank %d: no room for the segment: status %d, transport %s, '%s'", rank, (int)st, path ? path : "?", sw_last_error());
            if (st == SW_OK) collectives(dev, s, comm, rank, p);
            sw_comm_destroy(comm);
        }
        sw_store_destroy(store);
        sw_stream_destroy(s);
        sw_device_destroy(dev);
        return g_failures ? 1 : 0;
    }
    if (strcmp(scenario, "bad-transport") == 0) {
        /* a bad SHARDWISE_TRANSPORT fails the creation at once, naming the variable and what it takes */
        setenv("SHARDWISE_TRANSPORT", "sharedmem", 1);
        const sw_status bad = sw_comm_create_tcp(dev, store, "job", rank, p, timeout, &comm);
        CHECK(bad == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "SHARDWISE_TRANSPORT='sharedmem'") &&
                  strstr(sw_last_error(), "auto, tcp or shm") && comm == NULL,
              "SHARDWISE_TRANSPORT=sharedmem: status %d, '%s'", (int)bad, sw_last_error());
        sw_store_destroy(store);
        sw_stream_destroy(s);
        sw_device_destroy(dev);
        return g_failures ? 1 : 0;
    }
    OK(sw_comm_create_tcp(dev, store, "job", rank, p, timeout, &comm));
    if (strcmp(scenario, "stray") == 0)
        CHECK(elapsed_s(created) < 5.0, "a silent stray connection delayed sw_comm_create_tcp by %.1f s (timeout 20 s)", elapsed_s(created));
    if (g_failures) return 1;
    int32_t r = -2;
    const char* kind = NULL;
    OK(sw_comm_get_rank(comm, &r));
    OK(sw_comm_get_backend(comm, &kind));
    CHECK(r == rank && kind && strcmp(kind, "tcp") == 0, "rank %d backend %s", r, kind ? kind : "?");
    /* one host: shared memory unless SHARDWISE_TRANSPORT=tcp (the ctest runs both) */
    const char* path = NULL;
    const char* forced = getenv("SHARDWISE_TRANSPORT");
    OK(sw_comm_get_transport(comm, &path));
    const int want_tcp = (forced && strcmp(forced, "tcp") == 0) || p == 1; /* one rank: no peers to share with */
    CHECK(path && (want_tcp ? strcmp(path, "tcp") == 0 : strncmp(path, "shm", 3) == 0), "rank %d: transport '%s' with SHARDWISE_TRANSPORT=%s",
          rank, path ? path : "?", forced ? forced : "(unset)");
    if (rank == 0 && strcmp(scenario, "collectives") == 0) {
        printf("%d ranks: transport %s\n", p, path ? path : "?");
        fflush(stdout);
    }
    if (strcmp(scenario, "collectives") == 0) {
        collectives(dev, s, comm, rank, p);
        collectives16(dev, s, comm, rank, p);
    } else if (strcmp(scenario, "nocheck") == 0) {
        /* the agreement check off: the same results (the uneven and column variants still exchange descriptors) */
        CHECK(sw_comm_set_agreement_check(NULL, 0) == SW_ERR_NULL_HANDLE, "set_agreement_check(NULL) accepted");
        CHECK(sw_comm_set_agreement_check(comm, 2) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "enabled"),
              "set_agreement_check(2): '%s'", sw_last_error());
        CHECK(sw_comm_get_agreement_check(comm, NULL) != SW_OK, "get_agreement_check(NULL out) accepted");
        int32_t on = -1;
        OK(sw_comm_get_agreement_check(comm, &on));
        CHECK(on == 1, "the agreement check is %d by default, expected on", (int)on);
        OK(sw_comm_set_agreement_check(comm, 0));
        OK(sw_comm_get_agreement_check(comm, &on));
        CHECK(on == 0, "the agreement check reads %d after turning it off", (int)on);
        collectives(dev, s, comm, rank, p);
        collectives16(dev, s, comm, rank, p);
    } else if (strcmp(scenario, "collectives16") == 0) {
        collectives16(dev, s, comm, rank, p);
    } else if (strncmp(scenario, "abort", 5) == 0 || strncmp(scenario, "exit-", 5) == 0 || strncmp(scenario, "kill", 4) == 0) {
        tcp_fault(dev, s, comm, rank, p, scenario);
    } else if (strcmp(scenario, "root") == 0) {
        root_mismatch(comm, &s, dev, &rank, 1, root_by_parity);
    } else if (strcmp(scenario, "stray") == 0) {
        OK(sw_barrier(comm, rank, s));
        OK(sw_stream_synchronize(s));
        if (stray >= 0) close(stray);
    } else if (strcmp(scenario, "oom") == 0) {
        /* The last rank cannot allocate its receive scratch (address space capped after its buffers exist): it must
         * fail at once with SW_ERR_OUT_OF_MEMORY, tell the others (who then fail at once, not at the 20 s timeout) and
         * leave its communicator aborted (a later collective fails at once instead of waiting for the timeout). */
        /* 48 MiB per rank's block; the scratch of a reduce-scatter holds p blocks: more than a malloc arena's 64 MiB (already
         * reserved, so not stopped by the cap) */
        const long n = 12L << 20;
        sw_buffer x = alloc_f32(dev, n * p), y = alloc_f32(dev, n);
        for (long i = 0; i < n * p; ++i) ptr(x)[i] = 1.0f;
        OK(sw_barrier(comm, rank, s));
        OK(sw_stream_synchronize(s));
        if (rank == p - 1) {
            long pages = 0;
            FILE* f = fopen("/proc/self/statm", "r");
            if (f) {
                if (fscanf(f, "%ld", &pages) != 1) pages = 0;
                fclose(f);
            }
            struct rlimit lim = {(rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (8u << 20), RLIM_INFINITY};
            if (pages <= 0 || setrlimit(RLIMIT_AS, &lim) != 0) {
                printf("oom scenario: cannot cap the address space here; skipped\n");
                _exit(0);
            }
        }
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        OK(sw_reduce_scatter(comm, rank, x, 0, y, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s));
        const sw_status st = sw_stream_synchronize(s);
        const double took = elapsed_s(t0);
        if (rank == p - 1) {
            CHECK(st == SW_ERR_OUT_OF_MEMORY, "the rank out of memory: status %d, '%s'", (int)st, sw_last_error());
            clock_gettime(CLOCK_MONOTONIC, &t0);
            const sw_status again = sw_barrier(comm, rank, s);
            const sw_status again_sync = again == SW_OK ? sw_stream_synchronize(s) : again;
            CHECK(again_sync == SW_ERR_ABORTED && elapsed_s(t0) < 5.0, "after running out of memory: status %d after %.1f s, '%s'",
                  (int)again_sync, elapsed_s(t0), sw_last_error());
        } else {
            CHECK(st == SW_ERR_ABORTED && strstr(sw_last_error(), "aborted the communicator") && strstr(sw_last_error(), "out of memory"),
                  "a peer out of memory: status %d, '%s'", (int)st, sw_last_error());
        }
        CHECK(took < 5.0, "the failure took %.1f s to surface (timeout 20 s): expected at once", took);
        sw_buffer_destroy(x);
        sw_buffer_destroy(y);
    } else {
        sw_buffer b = alloc_f32(dev, 64);
        for (int i = 0; i < 64; ++i) ptr(b)[i] = value(6, rank, i);
        OK(sw_all_reduce(comm, rank, b, 0, b, 0, 64, SW_DTYPE_F32, SW_REDUCE_SUM, s));
        OK(sw_stream_synchronize(s));
        const int victim = p - 1;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (rank == victim && strcmp(scenario, "exit") == 0) _exit(0); /* gone without a word */
        if (rank == victim && strcmp(scenario, "late") == 0) sleep(4);  /* past the others' 1.5 s timeout */
        const int nocheck = strcmp(scenario, "mismatch-nocheck") == 0;
        if (nocheck) OK(sw_comm_set_agreement_check(comm, 0));
        const uint64_t count = (strcmp(scenario, "mismatch") == 0 || nocheck) && rank == victim ? 32 : 64;
        /* mismatch-dtype: the same bytes (i32 against f32): only the call carried in the frames tells them apart */
        const sw_dtype dtype = strcmp(scenario, "mismatch-dtype") == 0 && rank == victim ? SW_DTYPE_I32 : SW_DTYPE_F32;
        float kept[64];
        memcpy(kept, ptr(b), sizeof kept);
        OK(sw_all_reduce(comm, rank, b, 0, b, 0, count, dtype, SW_REDUCE_SUM, s));
        const sw_status st = sw_stream_synchronize(s);
        const char* msg = sw_last_error();
        const double took = elapsed_s(t0);
        if (strcmp(scenario, "exit") == 0) {
            CHECK(st == SW_ERR_ABORTED && strstr(msg, "rank 2") && strstr(msg, "sw_all_reduce #1"),
                  "after rank %d exited: status %d, message '%s'", victim, (int)st, msg);
            CHECK(took < 5.0, "noticing the exit took %.1f s (timeout 20 s): expected at once", took);
        } else if (strcmp(scenario, "late") == 0) {
            if (rank != victim) {
                CHECK(st == SW_ERR_TIMEOUT && strstr(msg, "rank(s) 2") && strstr(msg, "never joined") &&
                          strstr(msg, "sw_all_reduce #1"),
                      "late rank: status %d, message '%s'", (int)st, msg);
                CHECK(took < 4.0, "timing out took %.1f s (timeout 1.5 s)", took);
            } else {
                /* told by the others: their status (timeout) and their reason, which names this rank */
                CHECK((st == SW_ERR_TIMEOUT || st == SW_ERR_ABORTED) && strstr(msg, "aborted the communicator") &&
                          strstr(msg, "rank(s) 2"),
                      "the late rank: status %d, message '%s'", (int)st, msg);
            }
        } else if (strcmp(scenario, "mismatch") == 0) {
            CHECK(st == SW_ERR_MISMATCH && strstr(msg, "count 32") && strstr(msg, "count 64"),
                  "mismatch: status %d, message '%s'", (int)st, msg);
            CHECK(memcmp(kept, ptr(b), sizeof kept) == 0, "rank %d: an in-place all-reduce that failed on a mismatch changed its buffer", rank);
        } else if (strcmp(scenario, "mismatch-dtype") == 0) {
            CHECK(st == SW_ERR_MISMATCH && strstr(msg, "i32") && strstr(msg, "f32") && strstr(msg, "ranks disagree"),
                  "mismatch of dtypes of one width: status %d, message '%s'", (int)st, msg);
            CHECK(memcmp(kept, ptr(b), sizeof kept) == 0, "rank %d: an in-place all-reduce that failed on a mismatch changed its buffer", rank);
        } else if (nocheck) { /* no descriptors: the transport's size check names the bytes, at once */
            CHECK(st == SW_ERR_MISMATCH && strstr(msg, "bytes"), "mismatch without the check: status %d, message '%s'",
                  (int)st, msg);
            CHECK(took < 5.0, "the mismatch without the check took %.1f s to fail (timeout 20 s)", took);
        }
        /* the communicator stays aborted; the process stays usable */
        if (!(strcmp(scenario, "late") == 0 && rank == victim)) {
            const sw_status again = sw_barrier(comm, rank, s);
            CHECK(again == SW_ERR_ABORTED || sw_stream_synchronize(s) == SW_ERR_ABORTED, "collective after a fault not aborted");
        }
        sw_buffer_destroy(b);
    }
    sw_comm_destroy(comm);
    sw_stream_destroy(s);
    sw_store_destroy(store);
    sw_device_destroy(dev);
    return g_failures ? 1 : 0;
}

/* The in-process communicator (3 ranks on one CPU device, one stream each), in a child process because
 * SHARDWISE_TEST_FAULT is read once per process: an abort while the ranks move data (abort:1,4: right after the first
 * rank's move of the first and of the second communicator's all-reduce) must leave either a complete result or the
 * contract, then every later collective fails; a rank that never joins (timeout) and an abort while the ranks wait
 * leave the outputs untouched; different broadcast roots fail every rank with a mismatch. */
static int local_faults(void) {
    const pid_t child = fork();
    if (child == 0) {
        alarm(60);
        g_rank = 99;
        setenv("SHARDWISE_TEST_FAULT", "abort:1,4", 1);
        sw_device dev = NULL;
        OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &dev));
        sw_device devs[3] = {dev, dev, dev};
        sw_stream s[3] = {NULL, NULL, NULL};
        for (int r = 0; r < 3; ++r) OK(sw_stream_create(dev, &s[r]));
        const int all[3] = {0, 1, 2};
        sw_status st[3];
        char msg[2048] = {0};
        for (int in_place = 0; in_place < 2; ++in_place) {
            sw_comm comm = NULL;
            OK(sw_comm_create_local(3, devs, 20000, &comm));
            fault_all_reduce(comm, s, dev, all, 3, 3, in_place, 11 + in_place, (1L << 16) + 37, st, msg, sizeof msg);
            int32_t aborted = 0;
            OK(sw_comm_get_state(comm, &aborted, NULL, 0));
            CHECK(aborted, "local, %s: the injected abort did not abort the communicator", in_place ? "in place" : "out of place");
            const sw_status again = sw_barrier(comm, 0, s[0]);
            CHECK(again == SW_ERR_ABORTED || sw_stream_synchronize(s[0]) == SW_ERR_ABORTED, "local: collective after an abort");
            sw_comm_destroy(comm);
        }
        /* rank 2 never joins: ranks 0 and 1 time out, untouched */
        for (int in_place = 0; in_place < 2; ++in_place) {
            sw_comm comm = NULL;
            OK(sw_comm_create_local(3, devs, 300, &comm));
            const int two[2] = {0, 1};
            const int failed = fault_all_reduce(comm, s, dev, two, 2, 3, in_place, 13, 1000, st, msg, sizeof msg);
            CHECK(failed == 2 && st[0] == SW_ERR_TIMEOUT && strstr(msg, "rank(s) 2"), "local timeout: %d failed, status %d, '%s'",
                  failed, (int)st[0], msg);
            sw_comm_destroy(comm);
        }
        /* i32 sums that overflow wrap around; then different broadcast roots */
        sw_comm comm = NULL;
        OK(sw_comm_create_local(3, devs, 20000, &comm));
        i32_wrap(comm, s, dev, all, 3, 3);
        root_mismatch(comm, s, dev, all, 3, root_by_parity);
        sw_comm_destroy(comm);
        for (int r = 0; r < 3; ++r) sw_stream_destroy(s[r]);
        sw_device_destroy(dev);
        _exit(g_failures ? 1 : 0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    const int bad = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    printf("local faults: %s\n", bad ? "FAILED" : "ok");
    return bad;
}

/* Forks p ranks of a TCP job; each must exit 0 (except an "exit" victim, which exits 0 anyway). */
static int tcp_job(int p, const char* scenario) {
    const int port = free_port();
    const int kill_victim = strncmp(scenario, "kill", 4) == 0;
    int ready[2] = {-1, -1};
    if (kill_victim && pipe(ready) != 0) return 1;
    pid_t pids[8];
    for (int r = 0; r < p; ++r) {
        pids[r] = fork();
        if (pids[r] == 0) {
            alarm(60); /* a hang fails the check instead of blocking ctest */
            if (kill_victim) {
                close(ready[0]);
                if (r == p - 1) g_ready_fd = ready[1];
                else close(ready[1]);
            }
            _exit(tcp_rank(r, p, port, scenario));
        }
    }
    if (kill_victim) { /* SIGKILL the last rank at a random moment of its all-reduce loop, once it runs */
        close(ready[1]);
        char c;
        if (read(ready[0], &c, 1) == 1) {
            struct timespec ts = {0, (long)(rand() % 200) * 1000000L};
            nanosleep(&ts, NULL);
        }
        kill(pids[p - 1], SIGKILL);
        close(ready[0]);
    }
    int bad = 0;
    for (int r = 0; r < p; ++r) {
        int status = 0;
        waitpid(pids[r], &status, 0);
        if (kill_victim && r == p - 1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) continue;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "tcp %s p=%d: rank %d %s %d\n", scenario, p, r, WIFEXITED(status) ? "exited with" : "killed by signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            ++bad;
        }
    }
    printf("tcp %-11s p=%d: %s\n", scenario, p, bad ? "FAILED" : "ok");
    return bad;
}

/* The start of an mpirun rank: a CPU device, a stream and an MPI communicator (timeout 20 s); sets g_rank and `info`
 * (sw_mpi_get_info's text, 512 bytes). Returns 0, 77 when this build has no MPI (printing why), or 1 when a call
 * failed. */
static int mpi_setup(char* info, sw_device* dev, sw_stream* s, sw_comm* comm, int32_t* rank, int32_t* p) {
    int32_t available = 0;
    sw_mpi_get_info(&available, info, 512);
    if (!available) {
        printf("skipped: %s\n", info);
        return 77;
    }
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, dev));
    OK(sw_stream_create(*dev, s));
    OK(sw_comm_create_mpi(*dev, 20000, comm));
    if (g_failures) return 1;
    OK(sw_comm_get_rank(*comm, rank));
    OK(sw_comm_get_world_size(*comm, p));
    g_rank = *rank;
    return 0;
}

static int mpi_rank(void) {
    sw_device dev = NULL;
    sw_stream s = NULL;
    sw_comm comm = NULL;
    int32_t rank = -1, p = 0;
    char info[512];
    const int setup = mpi_setup(info, &dev, &s, &comm, &rank, &p);
    if (setup) return setup;
    /* every rank must generate the same data: rank 0's seed for all */
    sw_buffer seed = alloc_f32(dev, 1);
    memcpy(ptr(seed), &g_seed, 4);
    OK(sw_broadcast(comm, rank, seed, 0, 1, SW_DTYPE_I32, 0, s));
    OK(sw_stream_synchronize(s));
    memcpy(&g_seed, ptr(seed), 4);
    sw_buffer_destroy(seed);
    if (rank == 0) printf("seed %u\n", g_seed);
    collectives(dev, s, comm, rank, p);
    collectives16(dev, s, comm, rank, p);
    /* the same with the agreement check off (sw_comm_set_agreement_check): the same results, no descriptor exchange
     * for all-reduce, all-gather, reduce-scatter and broadcast; then on again for the mismatch below */
    {
        sw_comm nocheck = NULL;
        OK(sw_comm_create_mpi(dev, 20000, &nocheck));
        OK(sw_comm_set_agreement_check(nocheck, 0));
        int32_t on = -1;
        OK(sw_comm_get_agreement_check(nocheck, &on));
        CHECK(on == 0, "mpi: agreement check reads %d after turning it off", (int)on);
        /* the seed's broadcast again (collectives() counts it among the communicator's collectives), unchecked */
        sw_buffer again = alloc_f32(dev, 1);
        memcpy(ptr(again), &g_seed, 4);
        OK(sw_broadcast(nocheck, rank, again, 0, 1, SW_DTYPE_I32, 0, s));
        OK(sw_stream_synchronize(s));
        CHECK(memcmp(ptr(again), &g_seed, 4) == 0, "mpi: the unchecked broadcast of the seed differs");
        sw_buffer_destroy(again);
        collectives(dev, s, nocheck, rank, p);
        collectives16(dev, s, nocheck, rank, p);
        sw_comm_destroy(nocheck);
    }
    /* mismatch over MPI */
    sw_buffer b = alloc_f32(dev, 64);
    for (int i = 0; i < 64; ++i) ptr(b)[i] = value(6, rank, i);
    OK(sw_all_reduce(comm, rank, b, 0, b, 0, rank == p - 1 ? 32 : 64, SW_DTYPE_F32, SW_REDUCE_SUM, s));
    const sw_status st = sw_stream_synchronize(s);
    CHECK(p == 1 || (st == SW_ERR_MISMATCH && strstr(sw_last_error(), "count 32")), "mpi mismatch: status %d, '%s'", (int)st,
          sw_last_error());
    sw_buffer_destroy(b);
    sw_comm_destroy(comm);
    /* different broadcast roots over MPI: every rank fails with a mismatch */
    if (p > 1) {
        OK(sw_comm_create_mpi(dev, 20000, &comm));
        root_mismatch(comm, &s, dev, &rank, 1, root_by_parity);
        sw_comm_destroy(comm);
    }

    /* A communicator still open when MPI is finalized: using it, aborting it or destroying it afterwards gives an
     * error or nothing, never an MPI call after MPI_Finalize (which makes Open MPI end the process). */
    sw_comm late = NULL;
    OK(sw_comm_create_mpi(dev, 20000, &late));
    OK(sw_barrier(late, rank, s));
    OK(sw_stream_synchronize(s));
    OK(sw_mpi_finalize());
    OK(sw_barrier(late, rank, s));
    const sw_status after = sw_stream_synchronize(s);
    CHECK(p == 1 || (after != SW_OK && strstr(sw_last_error(), "finalized")), "collective after sw_mpi_finalize: status %d, '%s'",
          (int)after, sw_last_error());
    OK(sw_comm_abort(late));
    OK(sw_comm_destroy(late));
    sw_stream_destroy(s);
    sw_device_destroy(dev);
    OK(sw_mpi_finalize());
    printf("[rank %d] mpi p=%d (%s): %s\n", rank, p, info, g_failures ? "FAILED" : "ok");
    return g_failures ? 1 : 0;
}

/* One rank of an mpirun job (-n 3): the last rank aborts its communicator right after its 2nd and 3rd data exchange
 * (SHARDWISE_TEST_FAULT=abort:2,3; the 1st is the seed's broadcast): in the middle of an out-of-place all-reduce, then
 * (on a new communicator) of an in-place one. Every rank must fail, its outputs obeying the contract. */
static int mpi_fault_rank(void) {
    sw_device dev = NULL;
    sw_stream s = NULL;
    sw_comm comm = NULL;
    int32_t rank = -1, p = 0;
    char info[512];
    const int setup = mpi_setup(info, &dev, &s, &comm, &rank, &p);
    if (setup) return setup;
    if (p < 2) {
        printf("skipped: needs 2 or more ranks\n");
        return 77;
    }
    if (rank == p - 1) setenv("SHARDWISE_TEST_FAULT", "abort:2,3", 1);
    /* the faults land between the two exchanges of a two-step all-reduce (a one-shot one has one) */
    setenv("SHARDWISE_ALLREDUCE", "twostep", 1);
    sw_buffer seed = alloc_f32(dev, 1);
    memcpy(ptr(seed), &g_seed, 4);
    OK(sw_broadcast(comm, rank, seed, 0, 1, SW_DTYPE_I32, 0, s));
    OK(sw_stream_synchronize(s));
    memcpy(&g_seed, ptr(seed), 4);
    sw_buffer_destroy(seed);
    if (rank == 0) printf("seed %u\n", g_seed);
    for (int in_place = 0; in_place < 2; ++in_place) {
        if (in_place) OK(sw_comm_create_mpi(dev, 20000, &comm));
        sw_status st = SW_OK;
        char msg[2048] = {0};
        /* chunks of ~2.7 KB go out eagerly: the survivors' sends to the aborted rank complete */
        fault_all_reduce(comm, &s, dev, &rank, 1, p, in_place, 21 + in_place, 2037, &st, msg, sizeof msg);
        CHECK(st == SW_ERR_ABORTED && strstr(msg, "injected fault"), "mpi fault (%s): status %d, '%s'",
              in_place ? "in place" : "out of place", (int)st, msg);
        sw_comm_destroy(comm);
    }
    /* A count mismatch with the agreement check off: caught by the sizes of the messages (MPI completes a shorter
     * message than its receive expects without an error, a longer one fails as truncated: the plugin reports both as
     * a size mismatch), SW_ERR_MISMATCH on every rank. (Here because the failed communicator makes MPI_Finalize be
     * skipped, as every failure in the plugin does.) */
    {
        OK(sw_comm_create_mpi(dev, 20000, &comm));
        OK(sw_comm_set_agreement_check(comm, 0));
        sw_buffer m = alloc_f32(dev, 3000);
        for (int i = 0; i < 3000; ++i) ptr(m)[i] = value(6, rank, i);
        OK(sw_all_reduce(comm, rank, m, 0, m, 0, rank == p - 1 ? 2000 : 3000, SW_DTYPE_F32, SW_REDUCE_SUM, s));
        const sw_status sm = sw_stream_synchronize(s);
        CHECK(sm == SW_ERR_MISMATCH && strstr(sw_last_error(), "bytes"), "mpi mismatch without the check: status %d, '%s'",
              (int)sm, sw_last_error());
        sw_buffer_destroy(m);
        sw_comm_destroy(comm);
    }
    /* The verdict first (mpirun ends the other ranks as soon as one exits without MPI_Finalize, see below), then a
     * barrier on a fresh communicator so that no rank exits before every rank has printed it. */
    printf("[rank %d] mpi faults p=%d: %s\n", rank, p, g_failures ? "FAILED" : "ok");
    fflush(stdout);
    OK(sw_comm_create_mpi(dev, 20000, &comm));
    OK(sw_barrier(comm, rank, s));
    OK(sw_stream_synchronize(s));
    sw_comm_destroy(comm);
    sw_stream_destroy(s);
    sw_device_destroy(dev);
    /* A communicator of this process failed, so MPI_Finalize is skipped (it waits for every process of the job, and
     * could wait forever for a dead or frozen peer): SW_ERR_BACKEND saying so. mpirun's exit code then reflects ranks
     * that ended without MPI_Finalize; ctest judges this test by its output. */
    {
        const sw_status fin = sw_mpi_finalize();
        CHECK(fin == SW_ERR_BACKEND && strstr(sw_last_error(), "MPI_Finalize skipped"),
              "sw_mpi_finalize after failed communicators: status %d, '%s'", (int)fin, sw_last_error());
    }
    fflush(stdout);
    return g_failures ? 1 : 0;
}

int main(int argc, char** argv) {
    g_seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    srand(g_seed);
    if (argc > 1 && strcmp(argv[1], "--mpi") == 0) {
        g_mpi = 1;
        return mpi_rank();
    }
    if (argc > 1 && strcmp(argv[1], "--mpi-fault") == 0) return mpi_fault_rank();
    signal(SIGPIPE, SIG_IGN);
    printf("seed %u\n", g_seed);
    int bad = 0;
    for (int p = 1; p <= 3; ++p) bad += tcp_job(p, "collectives");
    bad += tcp_job(4, "collectives16");
    bad += tcp_job(3, "exit");
    bad += tcp_job(3, "late");
    bad += tcp_job(3, "mismatch");
    bad += tcp_job(3, "mismatch-dtype");
    bad += tcp_job(2, "bad-transport");
    bad += tcp_job(3, "no-room");
    bad += tcp_job(2, "no-room-shm");
    bad += tcp_job(2, "nocheck");
    bad += tcp_job(3, "nocheck");
    bad += tcp_job(3, "mismatch-nocheck");
    bad += tcp_job(3, "root");
    /* a failed all-reduce's outputs (the contract in shardwise.h) */
    bad += tcp_job(3, "abort-oop");
    bad += tcp_job(3, "abort-inplace");
    bad += tcp_job(3, "exit-oop");
    bad += tcp_job(3, "exit-inplace");
    bad += tcp_job(3, "kill-oop");
    bad += tcp_job(3, "kill-inplace");
    bad += local_faults();
#if defined(__SANITIZE_ADDRESS__)
    /* ASan reserves terabytes of shadow memory and dies (instead of returning NULL) once the address space is capped. */
    printf("tcp oom         p=2: skipped under AddressSanitizer (the address space cannot be capped)\n");
#else
    bad += tcp_job(2, "oom");
#endif
    bad += tcp_job(2, "stray");
    /* bad arguments */
    sw_store st = NULL;
    sw_comm c = NULL;
    CHECK(sw_store_create("127.0.0.1", 0, 0, 100, &st) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "port"),
          "port 0 for a client accepted");
    CHECK(sw_comm_create_tcp(NULL, NULL, "x", 0, 1, 0, &c) == SW_ERR_NULL_HANDLE, "NULL device accepted");
    {
        sw_device d = NULL;
        sw_store srv = NULL;
        static char long_prefix[2001];
        memset(long_prefix, 'p', sizeof long_prefix - 1);
        OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &d));
        OK(sw_store_create("127.0.0.1", 0, 1, 2000, &srv));
        CHECK(sw_comm_create_tcp(d, srv, long_prefix, 0, 1, 0, &c) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "prefix has 2000"),
              "a 2000-character prefix accepted");
        CHECK(sw_comm_create_tcp(d, srv, "", 0, 1, 0, &c) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "prefix"), "empty prefix accepted");
        sw_store_destroy(srv);
        sw_device_destroy(d);
    }
    /* MASTER_PORT pointing at another service: a clear error, not a huge allocation from its first 8 bytes */
    {
        const int port = free_port();
        int lfd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons((uint16_t)port);
        const int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd >= 0 && bind(lfd, (struct sockaddr*)&a, sizeof a) == 0 && listen(lfd, 4) == 0) {
            const pid_t other = fork();
            if (other == 0) { /* answers anything like a web server would */
                alarm(20);
                const int cfd = accept(lfd, NULL, NULL);
                char buf[256];
                if (cfd >= 0 && read(cfd, buf, sizeof buf) > 0) {
                    const char* reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
                    if (write(cfd, reply, strlen(reply)) < 0) _exit(1);
                }
                sleep(2);
                _exit(0);
            }
            close(lfd);
            sw_store cl = NULL;
            OK(sw_store_create("127.0.0.1", port, 0, 3000, &cl));
            char v[16];
            uint64_t got = 0;
            const sw_status gs = sw_store_get(cl, "key", v, sizeof v, &got);
            CHECK(gs == SW_ERR_BACKEND && strstr(sw_last_error(), "malformed"), "a store that is not one: status %d", (int)gs);
            sw_store_destroy(cl);
            waitpid(other, NULL, 0);
        } else if (lfd >= 0) {
            close(lfd);
        }
    }
    printf("%s\n", bad || g_failures ? "FAILED" : "all multi-process checks passed");
    return bad || g_failures ? 1 : 0;
}
