/* Point-to-point transfers (sw_send, sw_recv, sw_sendrecv) through the C ABI only.
 *
 *   p2p_check            the in-process communicator on CPU devices (p = 1..5)
 *   p2p_check --tcp      TCP jobs of 2 and 3 forked processes
 *   p2p_check --cuda-emulated   CUDA devices of the emulated plugin (no GPU): in-process CUDA and NCCL communicators
 *                        (p = 1..4), NCCL per process over TCP (p = 2, 3; ranks as threads) and with a unique id (the
 *                        host side over NCCL itself, p = 2), with the fake NCCL
 *   p2p_check --mpi      one rank of an mpirun job (mpirun -n 3 p2p_check --mpi)
 *
 * The same scenarios run on every kind (a Ctx says which ranks this process drives): every dtype, zero-length and
 * uneven counts, several transfers in flight; sendrecv rings (rank r sends to r+1, receives from r-1); collectives and
 * transfers interleaved consistently (results checked) and inconsistently (every side fails, never past the timeout);
 * mismatched count and dtype (both sides fail with SW_ERR_MISMATCH naming both ranks and both calls); a send without
 * a receive and a receive without a send (SW_ERR_TIMEOUT naming both ranks). In-process only: transfers on several
 * streams and host threads at once, the argument checks, transfers inside sub-communicators (sw_comm_split_local) and
 * a transfer's timeout there aborting the family. Multi-process only: a peer killed (SIGKILL) while the other
 * side waits in a receive fails that side promptly, naming it.
 * Data is only moved: every received byte must equal the sent byte (fresh random bytes per run); receive regions are
 * poisoned first and the element after every region must keep its poison. Exit code 0 when every check passed; 77
 * for --mpi when the MPI plugin is not available. */
#define _POSIX_C_SOURCE 200809L
#include "shardwise.h"
#include "free_port.h"

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int g_rank = -1; /* the process's rank in a multi-process job; -1 in-process */
static int g_failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "[rank %d] FAILED %s:%d: ", g_rank, __FILE__, __LINE__);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", sw_last_error());                       \
            __sync_fetch_and_add(&g_failures, 1);                                          \
        }                                                                                  \
    } while (0)

#define OK(call) CHECK((call) == SW_OK, "%s", #call)

#define MAXP 8
#define POISON 0xA5

static unsigned g_seed;

/* Byte i of transfer (tag, from, n): fresh per run (the seed), the same in every process of a job. */
static uint8_t byte_of(int tag, int from, int n, long i) {
    uint32_t x = g_seed ^ (uint32_t)(tag * 7919 + from * 104729 + n * 15485863) ^ (uint32_t)i * 2654435761u;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return (uint8_t)x;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- the kinds */

typedef struct Ctx Ctx;
struct Ctx {
    const char* kind; /* "local" (CPU or CUDA devices), "nccl_local", "tcp", "mpi", "nccl" (store) */
    int inproc;       /* every rank in this process (one communicator handle) */
    int p;
    int lo, hi;          /* the ranks this process drives: [lo, hi) */
    sw_device dev;       /* the process's device (CPU kinds: every rank's) */
    sw_device devs[MAXP]; /* per rank */
    sw_stream s[MAXP];   /* per rank */
    sw_stream s2[MAXP];  /* a second stream per rank (in-process) */
    sw_store store;      /* TCP */
    int comms_made;      /* TCP: distinct prefixes */
    sw_comm sync;        /* MPI: for sync_all */
};

/* Multi-process: every rank of the job gets here before any goes on (a store barrier over TCP, a barrier on a
 * communicator of its own over MPI), so that a communicator with a short timeout is created by all ranks in time. */
static void sync_all(Ctx* c) {
    if (c->store) {
        char key[64];
        const int n = c->comms_made;
        snprintf(key, sizeof key, "sync/%d/%d", n, c->lo);
        OK(sw_store_set(c->store, key, "1", 1));
        for (int q = 0; q < c->p; ++q) {
            char v[4];
            uint64_t got = 0;
            snprintf(key, sizeof key, "sync/%d/%d", n, q);
            OK(sw_store_get(c->store, key, v, sizeof v, &got));
        }
    } else if (strcmp(c->kind, "mpi") == 0 && c->sync) {
        OK(sw_barrier(c->sync, c->lo, c->s[c->lo]));
        OK(sw_stream_synchronize(c->s[c->lo]));
    }
}

/* A new communicator of ctx's kind with timeout_ms. */
static sw_comm make_comm(Ctx* c, int64_t timeout_ms) {
    sw_comm comm = NULL;
    sync_all(c);
    if (strcmp(c->kind, "local") == 0) {
        OK(sw_comm_create_local(c->p, c->devs, timeout_ms, &comm));
    } else if (strcmp(c->kind, "nccl_local") == 0) {
        OK(sw_comm_create_nccl_local(c->p, c->devs, timeout_ms, &comm));
    } else if (strcmp(c->kind, "nccl_id") == 0) { /* the unique id: rank 0's, passed around through the store */
        char key[64];
        uint8_t id[128];
        uint64_t got = 0;
        snprintf(key, sizeof key, "id/%d", c->comms_made++);
        if (c->lo == 0) {
            OK(sw_nccl_get_unique_id(id));
            OK(sw_store_set(c->store, key, id, sizeof id));
        }
        OK(sw_store_get(c->store, key, id, sizeof id, &got));
        OK(sw_comm_create_nccl_id(c->devs[c->lo], id, c->lo, c->p, timeout_ms, &comm));
    } else if (strcmp(c->kind, "tcp") == 0 || strcmp(c->kind, "nccl") == 0) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "p2p/%d", c->comms_made++);
        if (strcmp(c->kind, "tcp") == 0) OK(sw_comm_create_tcp(c->dev, c->store, prefix, c->lo, c->p, timeout_ms, &comm));
        else OK(sw_comm_create_nccl(c->devs[c->lo], c->store, prefix, c->lo, c->p, timeout_ms, &comm));
    } else {
        OK(sw_comm_create_mpi(c->dev, timeout_ms, &comm));
    }
    return comm;
}

static int mine(const Ctx* c, int r) { return r >= c->lo && r < c->hi; }

static size_t esz_of(sw_dtype t) { return sw_dtype_size(t); }

/* A buffer of `bytes` on the rank's device holding the bytes of transfer (tag, from, n) (count elements), the rest
 * poisoned; or, for a receive, all poisoned. Written in stream order on s. */
static sw_buffer make_buf(sw_device dev, sw_stream s, uint64_t bytes, int fill, int tag, int from, int n, uint64_t fill_bytes,
                          uint8_t** host) {
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(dev, bytes ? bytes : 1, &b));
    uint8_t* h = (uint8_t*)malloc(bytes ? bytes : 1);
    memset(h, POISON, bytes ? bytes : 1);
    if (fill)
        for (uint64_t i = 0; i < fill_bytes; ++i) h[i] = byte_of(tag, from, n, (long)i);
    OK(sw_memcpy_h2d_async(b, 0, h, bytes ? bytes : 1, s));
    *host = h; /* kept until the stream has run the copy (the caller synchronizes before freeing) */
    return b;
}

/* Reads buffer b back (after its stream has run) and checks: bytes [0, got) are transfer (tag, from, n), the next
 * `guard` bytes still poisoned. */
static void check_received(Ctx* c, sw_stream s, sw_buffer b, uint64_t bytes, uint64_t got, int tag, int from, int n,
                           const char* what) {
    uint8_t* h = (uint8_t*)malloc(bytes ? bytes : 1);
    OK(sw_memcpy_d2h_async(h, b, 0, bytes ? bytes : 1, s));
    OK(sw_stream_synchronize(s));
    (void)c;
    long bad = -1;
    for (uint64_t i = 0; i < got && bad < 0; ++i)
        if (h[i] != byte_of(tag, from, n, (long)i)) bad = (long)i;
    CHECK(bad < 0, "%s: byte %ld of %llu differs from the sent byte", what, bad, (unsigned long long)got);
    for (uint64_t i = got; i < bytes; ++i)
        if (h[i] != POISON) {
            CHECK(0, "%s: byte %llu past the received %llu was written", what, (unsigned long long)i, (unsigned long long)got);
            break;
        }
    free(h);
}

static const sw_dtype kDtypes[6] = {SW_DTYPE_F32, SW_DTYPE_F64, SW_DTYPE_F16, SW_DTYPE_BF16, SW_DTYPE_I32, SW_DTYPE_U8};

/* Elements of the k-th transfer from rank `from` in round `tag`: uneven, 0 included. */
static uint64_t count_of(int tag, int from, int k) {
    if (k == 0) return 0;
    return 1 + (uint64_t)((from * 37 + k * 101 + tag * 13) % 300);
}

/* ---------------------------------------------------------------- scenarios */

/* Every dtype, counts 0 and uneven, K transfers per pair in flight: rank r sends to r+1 and receives from r-1
 * with sw_send / sw_recv (even ranks send first, odd ranks receive first: deadlock-free in call order). */
static void plain_pairs(Ctx* c, sw_comm comm) {
    if (c->p < 2) return;
    enum { K = 3 };
    const int p = c->p;
    for (int di = 0; di < 6; ++di) {
        const sw_dtype t = kDtypes[di];
        const size_t esz = esz_of(t);
        sw_buffer sb[MAXP][K], rb[MAXP][K];
        uint8_t* hs[MAXP][K];
        uint8_t* hr[MAXP][K];
        for (int r = c->lo; r < c->hi; ++r) {
            const int to = (r + 1) % p, from = (r + p - 1) % p;
            for (int k = 0; k < K; ++k) {
                const uint64_t ns = count_of(di, r, k), nr = count_of(di, from, k);
                sb[r][k] = make_buf(c->devs[r], c->s[r], (ns + 1) * esz, 1, di, r, k, ns * esz, &hs[r][k]);
                rb[r][k] = make_buf(c->devs[r], c->s[r], (nr + 1) * esz, 0, 0, 0, 0, 0, &hr[r][k]);
            }
            for (int half = 0; half < 2; ++half) {
                const int sending = (r % 2 == 0) == (half == 0);
                for (int k = 0; k < K; ++k) {
                    if (sending) OK(sw_send(comm, r, to, sb[r][k], 0, count_of(di, r, k), t, c->s[r]));
                    else OK(sw_recv(comm, r, from, rb[r][k], 0, count_of(di, from, k), t, c->s[r]));
                }
            }
        }
        for (int r = c->lo; r < c->hi; ++r) {
            const sw_status st = sw_stream_synchronize(c->s[r]);
            CHECK(st == SW_OK, "%s plain pairs dtype %d rank %d: %s", c->kind, (int)t, r, sw_status_string(st));
            const int from = (r + p - 1) % p;
            for (int k = 0; k < K; ++k) {
                char what[96];
                snprintf(what, sizeof what, "%s p=%d dtype %d: rank %d's receive #%d from rank %d", c->kind, p, (int)t, r, k, from);
                const uint64_t nr = count_of(di, from, k);
                check_received(c, c->s[r], rb[r][k], (nr + 1) * esz, nr * esz, di, from, k, what);
                sw_buffer_destroy(sb[r][k]);
                sw_buffer_destroy(rb[r][k]);
                free(hs[r][k]);
                free(hr[r][k]);
            }
        }
    }
}

/* sendrecv rings: in each of R rounds rank r sends count_of(round, r, 1) elements to r+1 and receives from r-1 (p = 1:
 * a copy to itself), all rounds queued before any synchronize. */
static void ring(Ctx* c, sw_comm comm) {
    enum { R = 3 };
    const int p = c->p;
    sw_buffer sb[MAXP][R], rb[MAXP][R];
    uint8_t* hs[MAXP][R];
    uint8_t* hr[MAXP][R];
    for (int r = c->lo; r < c->hi; ++r) {
        const int to = (r + 1) % p, from = (r + p - 1) % p;
        for (int k = 0; k < R; ++k) {
            const sw_dtype t = kDtypes[(k + 1) % 6];
            const size_t esz = esz_of(t);
            const uint64_t ns = count_of(10 + k, r, 1), nr = count_of(10 + k, from, 1);
            sb[r][k] = make_buf(c->devs[r], c->s[r], (ns + 1) * esz, 1, 10 + k, r, k, ns * esz, &hs[r][k]);
            rb[r][k] = make_buf(c->devs[r], c->s[r], (nr + 1) * esz, 0, 0, 0, 0, 0, &hr[r][k]);
            OK(sw_sendrecv(comm, r, to, sb[r][k], 0, ns, from, rb[r][k], 0, nr, t, c->s[r]));
        }
    }
    for (int r = c->lo; r < c->hi; ++r) {
        const sw_status st = sw_stream_synchronize(c->s[r]);
        CHECK(st == SW_OK, "%s ring p=%d rank %d: %s", c->kind, p, r, sw_status_string(st));
        const int from = (r + p - 1) % p;
        for (int k = 0; k < R; ++k) {
            const size_t esz = esz_of(kDtypes[(k + 1) % 6]);
            const uint64_t nr = count_of(10 + k, from, 1);
            char what[96];
            snprintf(what, sizeof what, "%s ring p=%d round %d: rank %d from rank %d", c->kind, p, k, r, from);
            check_received(c, c->s[r], rb[r][k], (nr + 1) * esz, nr * esz, 10 + k, from, k, what);
            sw_buffer_destroy(sb[r][k]);
            sw_buffer_destroy(rb[r][k]);
            free(hs[r][k]);
            free(hr[r][k]);
        }
    }
}

/* Collectives and transfers interleaved in the same order on every rank: an all-reduce (f32 of small integers: exact), a sendrecv ring,
 * a broadcast, a pair transfer 0 -> p-1; every result checked; the transfers leave the collective count alone. */
static void interleaved(Ctx* c, sw_comm comm) {
    const int p = c->p;
    enum { N = 257 };
    sw_buffer ar[MAXP], sb[MAXP], rb[MAXP], bc[MAXP], pb[MAXP];
    uint8_t *hs[MAXP], *hr[MAXP], *hb[MAXP], *hp[MAXP];
    float in[MAXP][N]; /* small integers: their f32 sums are exact in any order */
    for (int r = c->lo; r < c->hi; ++r) {
        for (int i = 0; i < N; ++i) in[r][i] = (float)((int)byte_of(20, r, 0, i) - 100 + r);
        OK(sw_buffer_alloc(c->devs[r], N * 4, &ar[r]));
        OK(sw_memcpy_h2d_async(ar[r], 0, in[r], N * 4, c->s[r]));
        sb[r] = make_buf(c->devs[r], c->s[r], (N + 1) * 2, 1, 21, r, 0, N * 2, &hs[r]);
        rb[r] = make_buf(c->devs[r], c->s[r], (N + 1) * 2, 0, 0, 0, 0, 0, &hr[r]);
        bc[r] = make_buf(c->devs[r], c->s[r], N, r == 0, 22, 0, 0, N, &hb[r]);
        pb[r] = make_buf(c->devs[r], c->s[r], 8 * 9, r == 0, 23, 0, 0, 8 * 8, &hp[r]);
    }
    for (int r = c->lo; r < c->hi; ++r) {
        OK(sw_all_reduce(comm, r, ar[r], 0, ar[r], 0, N, SW_DTYPE_F32, SW_REDUCE_SUM, c->s[r]));
        OK(sw_sendrecv(comm, r, (r + 1) % p, sb[r], 0, N, (r + p - 1) % p, rb[r], 0, N, SW_DTYPE_BF16, c->s[r]));
        OK(sw_broadcast(comm, r, bc[r], 0, N, SW_DTYPE_U8, 0, c->s[r]));
        if (p > 1 && r == 0) OK(sw_send(comm, r, p - 1, pb[r], 0, 8, SW_DTYPE_F64, c->s[r]));
        if (p > 1 && r == p - 1) OK(sw_recv(comm, r, 0, pb[r], 0, 8, SW_DTYPE_F64, c->s[r]));
        OK(sw_barrier(comm, r, c->s[r]));
    }
    for (int r = c->lo; r < c->hi; ++r) {
        const sw_status st = sw_stream_synchronize(c->s[r]);
        CHECK(st == SW_OK, "%s interleaved p=%d rank %d: %s", c->kind, p, r, sw_status_string(st));
        float out[N];
        OK(sw_memcpy_d2h_async(out, ar[r], 0, N * 4, c->s[r]));
        OK(sw_stream_synchronize(c->s[r]));
        int bad = -1;
        for (int i = 0; i < N && bad < 0; ++i) {
            float want = 0;
            for (int q = 0; q < p; ++q) want += (float)((int)byte_of(20, q, 0, i) - 100 + q);
            if (out[i] != want) bad = i;
        }
        CHECK(bad < 0, "%s interleaved p=%d rank %d: all-reduce element %d wrong", c->kind, p, r, bad);
        char what[96];
        snprintf(what, sizeof what, "%s interleaved p=%d rank %d: ring", c->kind, p, r);
        check_received(c, c->s[r], rb[r], (N + 1) * 2, N * 2, 21, (r + p - 1) % p, 0, what);
        snprintf(what, sizeof what, "%s interleaved p=%d rank %d: broadcast", c->kind, p, r);
        check_received(c, c->s[r], bc[r], N, N, 22, 0, 0, what);
        if (r == p - 1 && p > 1) {
            snprintf(what, sizeof what, "%s interleaved p=%d rank %d: transfer from 0", c->kind, p, r);
            check_received(c, c->s[r], pb[r], 8 * 9, 8 * 8, 23, 0, 0, what);
        }
        uint64_t n = 0;
        OK(sw_comm_get_collective_count(comm, r, &n));
        CHECK(n == 3, "%s interleaved p=%d rank %d: collective count %llu, expected 3 (transfers do not count)", c->kind,
              p, r, (unsigned long long)n);
        sw_buffer_destroy(ar[r]);
        sw_buffer_destroy(sb[r]);
        sw_buffer_destroy(rb[r]);
        sw_buffer_destroy(bc[r]);
        sw_buffer_destroy(pb[r]);
        free(hs[r]);
        free(hr[r]);
        free(hb[r]);
        free(hp[r]);
    }
}

/* Rank 0 sends to rank 1 and rank 1 receives from rank 0 with different counts (what = 0) or dtypes (what = 1): both
 * fail with SW_ERR_MISMATCH naming both ranks and both calls; the receive region is untouched (nothing moved). */
static void mismatch(Ctx* c, int what) {
    if (c->p < 2) return;
    sw_comm comm = make_comm(c, 20000);
    sw_buffer b[2] = {NULL, NULL};
    uint8_t* h[2] = {NULL, NULL};
    for (int r = 0; r < 2; ++r) {
        if (!mine(c, r)) continue;
        b[r] = make_buf(c->devs[r], c->s[r], 64, r == 0, 30, 0, 0, 64, &h[r]);
        OK(sw_stream_synchronize(c->s[r]));
        if (r == 0) OK(sw_send(comm, 0, 1, b[r], 0, 5, SW_DTYPE_F32, c->s[r]));
        else OK(sw_recv(comm, 1, 0, b[r], 0, what == 0 ? 6 : 5, what == 0 ? SW_DTYPE_F32 : SW_DTYPE_I32, c->s[r]));
    }
    for (int r = 0; r < 2; ++r) {
        if (!mine(c, r)) continue;
        const double t0 = now_s();
        const sw_status st = sw_stream_synchronize(c->s[r]);
        const char* msg = sw_last_error();
        CHECK(st == SW_ERR_MISMATCH && strstr(msg, "rank 0 called sw_send(to rank 1 #0: count 5, f32)") &&
                  strstr(msg, what == 0 ? "rank 1 called sw_recv(from rank 0 #0: count 6, f32)"
                                        : "rank 1 called sw_recv(from rank 0 #0: count 5, i32)"),
              "%s %s mismatch, rank %d: %s '%s'", c->kind, what == 0 ? "count" : "dtype", r, sw_status_string(st), msg);
        CHECK(now_s() - t0 < 10, "%s mismatch: rank %d took %.1f s", c->kind, r, now_s() - t0);
        if (r == 1) check_received(c, c->s[r], b[r], 64, 0, 0, 0, 0, "mismatched receive (untouched)");
        /* aborted: later calls fail at once */
        const sw_status again = r == 0 ? sw_send(comm, 0, 1, b[r], 0, 1, SW_DTYPE_F32, c->s[r])
                                       : sw_recv(comm, 1, 0, b[r], 0, 1, SW_DTYPE_F32, c->s[r]);
        CHECK(again == SW_ERR_ABORTED || sw_stream_synchronize(c->s[r]) == SW_ERR_ABORTED, "%s: transfer after a mismatch",
              c->kind);
        sw_buffer_destroy(b[r]);
        free(h[r]);
    }
    sw_comm_destroy(comm);
}

/* A send without a receive (sending = 1) or a receive without a send: the waiting side fails with SW_ERR_TIMEOUT
 * naming both ranks, after the timeout (500 ms) and well before 5 s; the receive region is untouched. The peer (rank
 * 1) calls nothing and learns the abort. */
static void missing_peer(Ctx* c, int sending) {
    if (c->p < 2) return;
    sw_comm comm = make_comm(c, 500);
    if (mine(c, 0)) {
        uint8_t* h = NULL;
        sw_buffer b = make_buf(c->devs[0], c->s[0], 40, sending, 31, 0, 0, 40, &h);
        OK(sw_stream_synchronize(c->s[0]));
        const double t0 = now_s();
        if (sending) OK(sw_send(comm, 0, 1, b, 0, 10, SW_DTYPE_F32, c->s[0]));
        else OK(sw_recv(comm, 0, 1, b, 0, 10, SW_DTYPE_F32, c->s[0]));
        const sw_status st = sw_stream_synchronize(c->s[0]);
        const double took = now_s() - t0;
        const char* msg = sw_last_error();
        const char* want = sending ? "sw_send from rank 0 to rank 1 (#0): timed out after 500 ms waiting for rank 1's matching receive"
                                   : "sw_recv at rank 0 from rank 1 (#0): timed out after 500 ms waiting for rank 1's matching send";
        CHECK(st == SW_ERR_TIMEOUT && strstr(msg, want), "%s missing %s: %s '%s'", c->kind, sending ? "receive" : "send",
              sw_status_string(st), msg);
        CHECK(took >= 0.45 && took < 5, "%s missing peer: failed after %.2f s (timeout 0.5 s)", c->kind, took);
        if (!sending) check_received(c, c->s[0], b, 40, 0, 0, 0, 0, "timed-out receive (untouched)");
        sw_buffer_destroy(b);
        free(h);
    }
    if (mine(c, 1) && !c->inproc && strcmp(c->kind, "nccl_id") != 0) { /* (an NCCL-only host side tells nobody) */
        /* rank 1 calls nothing while rank 0 waits; then its next call fails with rank 0's reason (the notice) */
        struct timespec ts = {1, 200 * 1000000L};
        nanosleep(&ts, NULL);
        const sw_status st = sw_barrier(comm, 1, c->s[1]);
        const sw_status st2 = st == SW_OK ? sw_stream_synchronize(c->s[1]) : st;
        CHECK(st2 == SW_ERR_TIMEOUT && strstr(sw_last_error(), "rank 0") && strstr(sw_last_error(), "matching"),
              "%s missing peer: rank 1's next call: %s '%s' (expected rank 0's timeout)", c->kind, sw_status_string(st2),
              sw_last_error());
    }
    if (!c->inproc && !mine(c, 0) && !mine(c, 1)) {
        /* The other ranks (p = 3) stay until rank 1 has made its call: destroying their communicator at once sends
         * rank 1 a second abort reason ("rank 2 destroyed its communicator"), which, when rank 0 started late (seen
         * under ASan in CI), reached rank 1 before rank 0's timeout did. */
        struct timespec ts = {2, 0};
        nanosleep(&ts, NULL);
    }
    sw_comm_destroy(comm);
}

/* Rank 0 calls an all-reduce then a send to rank 1; rank 1 a receive from rank 0 then the all-reduce: an order the
 * peer cannot match. Every side fails (any error) within the timeout plus a margin, never hangs. */
static void interleaved_wrong(Ctx* c) {
    if (c->p < 2) return;
    sw_comm comm = make_comm(c, 1000);
    sw_buffer b[MAXP];
    uint8_t* h[MAXP];
    sw_status first_error[MAXP];
    for (int r = c->lo; r < c->hi; ++r) {
        b[r] = make_buf(c->devs[r], c->s[r], 64, 1, 32, r, 0, 64, &h[r]);
        OK(sw_stream_synchronize(c->s[r]));
        /* a call may already fail when it is made (the communicator aborted by the first failure): then the error is
         * the call's */
        sw_status called = SW_OK;
        if (r == 1) called = sw_recv(comm, 1, 0, b[r], 8, 4, SW_DTYPE_F32, c->s[r]);
        if (called == SW_OK) called = sw_all_reduce(comm, r, b[r], 0, b[r], 0, 2, SW_DTYPE_F32, SW_REDUCE_SUM, c->s[r]);
        if (r == 0 && called == SW_OK) called = sw_send(comm, 0, 1, b[r], 8, 4, SW_DTYPE_F32, c->s[r]);
        first_error[r] = called;
    }
    for (int r = c->lo; r < c->hi; ++r) {
        const double t0 = now_s();
        sw_status st = sw_stream_synchronize(c->s[r]);
        if (first_error[r] != SW_OK) st = first_error[r];
        CHECK(st != SW_OK && now_s() - t0 < 6, "%s inconsistent order, rank %d: %s after %.1f s", c->kind, r,
              sw_status_string(st), now_s() - t0);
        sw_buffer_destroy(b[r]);
        free(h[r]);
    }
    sw_comm_destroy(comm);
}

/* Multi-process: call order, not stream order, decides. Rank 0 queues a send to rank 1 on its first stream behind a
 * long copy, then an all-reduce on its second stream; rank 1 a receive from rank 0, then the all-reduce. The
 * all-reduce of rank 0 must wait for its earlier transfer (else it would reach rank 1, still in its receive, first). */
static void call_order(Ctx* c, sw_comm comm) {
    if (c->inproc || c->p < 2 || !c->s2[c->lo]) return;
    const int r = c->lo;
    enum { N = 64, BIG = 32 << 20 };
    float in[N], out[N];
    for (int i = 0; i < N; ++i) in[i] = (float)(i % 7 + r);
    sw_buffer ar = NULL, big = NULL, pb = NULL;
    OK(sw_buffer_alloc(c->devs[r], N * 4, &ar));
    OK(sw_buffer_alloc(c->devs[r], BIG, &big));
    uint8_t* hp = NULL;
    pb = make_buf(c->devs[r], c->s[r], 400 + 4, r == 0, 60, 0, 0, 400, &hp);
    uint8_t* hbig = (uint8_t*)calloc(BIG, 1);
    OK(sw_memcpy_h2d_async(ar, 0, in, N * 4, c->s2[r]));
    OK(sw_stream_synchronize(c->s[r]));
    OK(sw_stream_synchronize(c->s2[r]));
    if (r == 0) {
        OK(sw_memcpy_h2d_async(big, 0, hbig, BIG, c->s[r])); /* holds the first stream up */
        OK(sw_send(comm, 0, 1, pb, 0, 100, SW_DTYPE_F32, c->s[r]));
    }
    if (r == 1) OK(sw_recv(comm, 1, 0, pb, 0, 100, SW_DTYPE_F32, c->s2[r]));
    OK(sw_all_reduce(comm, r, ar, 0, ar, 0, N, SW_DTYPE_F32, SW_REDUCE_SUM, c->s2[r]));
    OK(sw_stream_synchronize(c->s[r]));
    const sw_status st = sw_stream_synchronize(c->s2[r]);
    CHECK(st == SW_OK, "%s call order, rank %d: %s", c->kind, r, sw_status_string(st));
    OK(sw_memcpy_d2h_async(out, ar, 0, N * 4, c->s2[r]));
    OK(sw_stream_synchronize(c->s2[r]));
    int bad = -1;
    for (int i = 0; i < N && bad < 0; ++i) {
        float want = 0;
        for (int q = 0; q < c->p; ++q) want += (float)(i % 7 + q);
        if (out[i] != want) bad = i;
    }
    CHECK(bad < 0, "%s call order, rank %d: all-reduce element %d wrong", c->kind, r, bad);
    if (r == 1) check_received(c, c->s[r], pb, 404, 400, 60, 0, 0, "call order: the transfer");
    sw_buffer_destroy(ar);
    sw_buffer_destroy(big);
    sw_buffer_destroy(pb);
    free(hp);
    free(hbig);
}

static void run_scenarios(Ctx* c) {
    sw_comm comm = make_comm(c, 20000);
    plain_pairs(c, comm);
    ring(c, comm);
    interleaved(c, comm);
    call_order(c, comm);
    sw_comm_destroy(comm);
    mismatch(c, 0);
    mismatch(c, 1);
    missing_peer(c, 1);
    missing_peer(c, 0);
    interleaved_wrong(c);
}

/* ---------------------------------------------------------------- in-process only */

typedef struct {
    sw_comm comm;
    Ctx* c;
    int rank;
} ThreadArg;

/* Rank `rank` of a ring driven from its own host thread, transfers spread over two streams: sends of round k on
 * stream k % 2, receives on the other; rounds of both kinds matched by call order (per pair), whatever stream runs
 * them. */
static void* thread_rank(void* arg) {
    ThreadArg* a = (ThreadArg*)arg;
    Ctx* c = a->c;
    const int r = a->rank, p = c->p, to = (r + 1) % p, from = (r + p - 1) % p;
    enum { R = 4 };
    sw_buffer sb[R], rb[R];
    uint8_t *hs[R], *hr[R];
    for (int k = 0; k < R; ++k) {
        const uint64_t ns = count_of(40 + k, r, 2), nr = count_of(40 + k, from, 2);
        sb[k] = make_buf(c->devs[r], c->s[r], ns * 4 + 4, 1, 40 + k, r, k, ns * 4, &hs[k]);
        rb[k] = make_buf(c->devs[r], c->s2[r], nr * 4 + 4, 0, 0, 0, 0, 0, &hr[k]);
    }
    OK(sw_stream_synchronize(c->s[r]));
    OK(sw_stream_synchronize(c->s2[r]));
    for (int k = 0; k < R; ++k) {
        sw_stream ss = k % 2 ? c->s2[r] : c->s[r], rs = k % 2 ? c->s[r] : c->s2[r];
        OK(sw_send(a->comm, r, to, sb[k], 0, count_of(40 + k, r, 2), SW_DTYPE_F32, ss));
        OK(sw_recv(a->comm, r, from, rb[k], 0, count_of(40 + k, from, 2), SW_DTYPE_F32, rs));
    }
    OK(sw_stream_synchronize(c->s[r]));
    OK(sw_stream_synchronize(c->s2[r]));
    for (int k = 0; k < R; ++k) {
        const uint64_t nr = count_of(40 + k, from, 2);
        check_received(c, c->s[r], rb[k], nr * 4 + 4, nr * 4, 40 + k, from, k, "threads and streams");
        sw_buffer_destroy(sb[k]);
        sw_buffer_destroy(rb[k]);
        free(hs[k]);
        free(hr[k]);
    }
    return NULL;
}

static void threads_and_streams(Ctx* c) {
    if (c->p < 2) return;
    sw_comm comm = make_comm(c, 20000);
    pthread_t th[MAXP];
    ThreadArg args[MAXP];
    for (int r = 0; r < c->p; ++r) {
        args[r] = (ThreadArg){comm, c, r};
        pthread_create(&th[r], NULL, thread_rank, &args[r]);
    }
    for (int r = 0; r < c->p; ++r) pthread_join(th[r], NULL);
    sw_comm_destroy(comm);
}

/* Bad arguments: SW_ERR_INVALID_ARGUMENT (or NULL_HANDLE) naming the argument, nothing queued. */
static void bad_arguments(Ctx* c) {
    sw_comm comm = make_comm(c, 20000);
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(c->devs[0], 64, &b));
    sw_status st;
#define BAD(call, code, text)                                                                                   \
    do {                                                                                                        \
        st = (call);                                                                                            \
        CHECK(st == (code) && strstr(sw_last_error(), text), "%s -> %s '%s' (expected %s naming '%s')", #call, \
              sw_status_string(st), sw_last_error(), sw_status_string(code), text);                             \
    } while (0)
    BAD(sw_send(NULL, 0, 1, b, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_NULL_HANDLE, "comm");
    BAD(sw_send(comm, 0, 1, NULL, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_NULL_HANDLE, "buf");
    BAD(sw_send(comm, 0, 1, b, 0, 4, SW_DTYPE_F32, NULL), SW_ERR_NULL_HANDLE, "stream");
    BAD(sw_send(comm, 0, c->p, b, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "peer");
    BAD(sw_send(comm, 0, -1, b, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "peer");
    BAD(sw_recv(comm, 0, 0, b, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "peer = rank");
    BAD(sw_send(comm, c->p, 0, b, 0, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "rank");
    BAD(sw_send(comm, 0, 1, b, 0, 17, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "buf");
    BAD(sw_recv(comm, 0, 1, b, 63, 2, SW_DTYPE_U8, c->s[0]), SW_ERR_INVALID_ARGUMENT, "buf");
    BAD(sw_send(comm, 0, 1, b, 0, 4, (sw_dtype)77, c->s[0]), SW_ERR_INVALID_ARGUMENT, "dtype");
    BAD(sw_sendrecv(comm, 0, 0, b, 0, 4, 1, b, 16, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "send_peer");
    BAD(sw_sendrecv(comm, 0, 1, b, 0, 4, -2, b, 16, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "recv_peer");
    BAD(sw_sendrecv(comm, 0, 1, b, 0, 4, 1, NULL, 16, 4, SW_DTYPE_F32, c->s[0]), SW_ERR_NULL_HANDLE, "recv");
    BAD(sw_sendrecv(comm, 0, 1, b, 0, 4, 1, b, 16, 40, SW_DTYPE_F32, c->s[0]), SW_ERR_INVALID_ARGUMENT, "recv");
#undef BAD
    /* a half with peer -1 ignores its buffer; both -1: nothing to do */
    OK(sw_sendrecv(comm, 0, -1, NULL, 0, 0, -1, NULL, 0, 0, SW_DTYPE_F32, c->s[0]));
    /* nothing was queued by the failed calls: the communicator is not aborted and a transfer still works */
    int32_t aborted = 1;
    OK(sw_comm_get_state(comm, &aborted, NULL, 0));
    CHECK(!aborted, "bad arguments aborted the communicator");
    sw_buffer_destroy(b);
    sw_comm_destroy(comm);
}

/* Transfers inside sub-communicators (sw_comm_split_local): 4 ranks split by parity, keys reversing the order; a
 * sendrecv ring inside each (data checked), then a send without a receive in the even group: it times out naming
 * both ranks by their rank in the group and in the parent, and family fate aborts the parent and the odd group. */
static void split_groups(Ctx* c) {
    if (c->p != 4) return;
    sw_comm parent = make_comm(c, 500);
    const int32_t colors[4] = {0, 1, 0, 1}, keys[4] = {0, 0, -1, -1};
    sw_comm sub[4] = {NULL, NULL, NULL, NULL};
    OK(sw_comm_split_local(parent, colors, keys, sub));
    if (!sub[0] || !sub[1]) {
        CHECK(0, "split failed");
        return;
    }
    /* group g (= parity): sub rank k is parent rank of[g][k]; keys reverse: sub rank 0 is parent rank 2 (or 3) */
    int of[2][2];
    for (int g = 0; g < 2; ++g)
        for (int k = 0; k < 2; ++k) {
            int32_t pr = -1;
            OK(sw_comm_get_parent_rank(sub[g], k, &pr));
            of[g][k] = pr;
        }
    CHECK(of[0][0] == 2 && of[0][1] == 0 && of[1][0] == 3 && of[1][1] == 1, "split order %d %d %d %d", of[0][0], of[0][1],
          of[1][0], of[1][1]);
    sw_buffer sb[4], rb[4];
    uint8_t *hs[4], *hr[4];
    for (int r = 0; r < 4; ++r) {
        sb[r] = make_buf(c->devs[r], c->s[r], 4 * 31 + 4, 1, 50, r, 0, 4 * (uint64_t)(20 + r), &hs[r]);
        rb[r] = make_buf(c->devs[r], c->s[r], 4 * 31 + 4, 0, 0, 0, 0, 0, &hr[r]);
    }
    for (int g = 0; g < 2; ++g)
        for (int k = 0; k < 2; ++k) { /* in a group of 2 the ring sends to and receives from the other rank */
            const int r = of[g][k], other = of[g][1 - k];
            OK(sw_sendrecv(sub[g], k, 1 - k, sb[r], 0, (uint64_t)(20 + r), 1 - k, rb[r], 0, (uint64_t)(20 + other),
                           SW_DTYPE_F32, c->s[r]));
        }
    for (int g = 0; g < 2; ++g)
        for (int k = 0; k < 2; ++k) {
            const int r = of[g][k], other = of[g][1 - k];
            OK(sw_stream_synchronize(c->s[r]));
            check_received(c, c->s[r], rb[r], 4 * 31 + 4, 4 * (uint64_t)(20 + other), 50, other, 0, "split group ring");
        }
    /* the even group's sub rank 0 (parent rank 2) sends to sub rank 1 (parent rank 0), which never receives */
    OK(sw_send(sub[0], 0, 1, sb[2], 0, 4, SW_DTYPE_F32, c->s[2]));
    const sw_status st = sw_stream_synchronize(c->s[2]);
    const char* want = "sw_send from rank 0 (parent rank 2) to rank 1 (parent rank 0) (#1): timed out after 500 ms waiting "
                       "for rank 1 (parent rank 0)'s matching receive";
    CHECK(st == SW_ERR_TIMEOUT && strstr(sw_last_error(), want), "split send without a receive: %s '%s'",
          sw_status_string(st), sw_last_error());
    /* family fate: the parent and the odd group are aborted too (by the family's watcher: allow it a moment) */
    int32_t aborted_parent = 0, aborted_odd = 0;
    for (int i = 0; i < 200 && !(aborted_parent && aborted_odd); ++i) {
        OK(sw_comm_get_state(parent, &aborted_parent, NULL, 0));
        OK(sw_comm_get_state(sub[1], &aborted_odd, NULL, 0));
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    CHECK(aborted_parent && aborted_odd, "family fate after a transfer's timeout: parent %d, odd group %d", aborted_parent,
          aborted_odd);
    const sw_status later = sw_send(sub[1], 0, 1, sb[3], 0, 1, SW_DTYPE_F32, c->s[3]);
    CHECK(later == SW_ERR_ABORTED || sw_stream_synchronize(c->s[3]) == SW_ERR_ABORTED, "transfer in the odd group after the abort");
    for (int r = 0; r < 4; ++r) {
        sw_stream_synchronize(c->s[r]);
        sw_buffer_destroy(sb[r]);
        sw_buffer_destroy(rb[r]);
        free(hs[r]);
        free(hr[r]);
    }
    sw_comm_destroy(sub[0]);
    sw_comm_destroy(sub[1]);
    sw_comm_destroy(parent);
}

static int local_runs(void) {
    int bad = 0;
    for (int p = 1; p <= 5; ++p) {
        const int before = g_failures;
        const double t0 = now_s();
        Ctx c;
        memset(&c, 0, sizeof c);
        c.kind = "local";
        c.inproc = 1;
        c.p = p;
        c.lo = 0;
        c.hi = p;
        OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &c.dev));
        for (int r = 0; r < p; ++r) {
            c.devs[r] = c.dev;
            OK(sw_stream_create(c.dev, &c.s[r]));
            OK(sw_stream_create(c.dev, &c.s2[r]));
        }
        run_scenarios(&c);
        threads_and_streams(&c);
        split_groups(&c);
        if (p >= 2) bad_arguments(&c);
        for (int r = 0; r < p; ++r) {
            sw_stream_destroy(c.s[r]);
            sw_stream_destroy(c.s2[r]);
        }
        OK(sw_device_destroy(c.dev));
        printf("local p=%d: %s (%.1f s)\n", p, g_failures == before ? "ok" : "FAILED", now_s() - t0);
        bad |= g_failures != before;
    }
    return bad;
}

/* ---------------------------------------------------------------- multi-process */

/* Rank 1 is killed (SIGKILL, by itself) while rank 0 waits in a receive from it with a 20 s timeout: rank 0 fails
 * within a few seconds naming rank 1. Ranks >= 2 wait for nothing. Last: the victim is gone afterwards. */
static void killed_peer(Ctx* c) {
    if (c->p < 2) return;
    sw_comm comm = make_comm(c, 20000);
    for (int r = c->lo; r < c->hi; ++r) {
        OK(sw_barrier(comm, r, c->s[r]));
        OK(sw_stream_synchronize(c->s[r]));
    }
    if (mine(c, 1)) {
        struct timespec ts = {0, 300 * 1000000L}; /* rank 0 is waiting in its receive by then */
        nanosleep(&ts, NULL);
        if (g_failures) _exit(1); /* its failures must show: a killed rank's exit status is not looked at */
        raise(SIGKILL);
    }
    if (mine(c, 0)) {
        uint8_t* h = NULL;
        sw_buffer b = make_buf(c->devs[0], c->s[0], 64, 0, 0, 0, 0, 0, &h);
        OK(sw_stream_synchronize(c->s[0]));
        const double t0 = now_s();
        OK(sw_recv(comm, 0, 1, b, 0, 16, SW_DTYPE_F32, c->s[0]));
        const sw_status st = sw_stream_synchronize(c->s[0]);
        const double took = now_s() - t0;
        CHECK(st == SW_ERR_ABORTED && strstr(sw_last_error(), "rank 1") && took < 5,
              "%s killed peer: rank 0 got %s after %.1f s: '%s'", c->kind, sw_status_string(st), took, sw_last_error());
        check_received(c, c->s[0], b, 64, 0, 0, 0, 0, "receive from a killed peer (untouched)");
        sw_buffer_destroy(b);
        free(h);
    }
    sw_comm_destroy(comm);
}

static int tcp_rank(int rank, int p, int port) {
    g_rank = rank;
    Ctx c;
    memset(&c, 0, sizeof c);
    c.kind = "tcp";
    c.p = p;
    c.lo = rank;
    c.hi = rank + 1;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &c.dev));
    c.devs[rank] = c.dev;
    OK(sw_stream_create(c.dev, &c.s[rank]));
    OK(sw_stream_create(c.dev, &c.s2[rank]));
    OK(sw_store_create("127.0.0.1", port, rank == 0, 20000, &c.store));
    run_scenarios(&c);
    killed_peer(&c); /* rank 1 dies here */
    sw_stream_destroy(c.s[rank]);
    sw_stream_destroy(c.s2[rank]);
    sw_store_destroy(c.store);
    sw_device_destroy(c.dev);
    return g_failures ? 1 : 0;
}

static int tcp_job(int p) {
    const int port = free_port();
    const double t0 = now_s();
    pid_t pids[MAXP];
    for (int r = 0; r < p; ++r) {
        pids[r] = fork();
        if (pids[r] == 0) {
            alarm(90); /* a hang fails the check instead of blocking ctest */
            _exit(tcp_rank(r, p, port));
        }
    }
    int bad = 0;
    for (int r = 0; r < p; ++r) {
        int status = 0;
        waitpid(pids[r], &status, 0);
        if (r == 1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) continue; /* the killed peer */
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "tcp p=%d: rank %d %s %d\n", p, r, WIFEXITED(status) ? "exited with" : "killed by signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            ++bad;
        }
    }
    printf("tcp p=%d: %s (%.1f s)\n", p, bad ? "FAILED" : "ok", now_s() - t0);
    return bad;
}

static int mpi_main(void) {
    char info[512] = {0};
    int32_t available = 0;
    sw_mpi_get_info(&available, info, sizeof info);
    if (!available) {
        printf("p2p_check skipped, no MPI: %s\n", info);
        return 77;
    }
    Ctx c;
    memset(&c, 0, sizeof c);
    c.kind = "mpi";
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &c.dev));
    sw_comm first = make_comm(&c, 20000);
    int32_t rank = 0, p = 0;
    OK(sw_comm_get_rank(first, &rank));
    OK(sw_comm_get_world_size(first, &p));
    g_rank = rank;
    c.p = p;
    c.lo = rank;
    c.hi = rank + 1;
    c.devs[rank] = c.dev;
    OK(sw_stream_create(c.dev, &c.s[rank]));
    OK(sw_stream_create(c.dev, &c.s2[rank]));
    /* the seed: rank 0's, broadcast */
    sw_buffer sb = NULL;
    OK(sw_buffer_alloc(c.dev, 4, &sb));
    OK(sw_memcpy_h2d_async(sb, 0, &g_seed, 4, c.s[rank]));
    OK(sw_broadcast(first, rank, sb, 0, 4, SW_DTYPE_U8, 0, c.s[rank]));
    OK(sw_memcpy_d2h_async(&g_seed, sb, 0, 4, c.s[rank]));
    OK(sw_stream_synchronize(c.s[rank]));
    sw_buffer_destroy(sb);
    c.sync = first;
    const double t0 = now_s();
    run_scenarios(&c);
    /* The verdict first, then a barrier: a process whose MPI communicators failed (the fault scenarios) exits without
     * MPI_Finalize, and mpirun then ends the others; after the barrier every rank has printed its line. */
    printf("mpi p=%d rank %d: %s (%.1f s)\n", p, rank, g_failures ? "FAILED" : "ok", now_s() - t0);
    fflush(stdout);
    if (sw_barrier(c.sync, rank, c.s[rank]) == SW_OK) sw_stream_synchronize(c.s[rank]);
    sw_comm_destroy(c.sync);
    sw_stream_destroy(c.s[rank]);
    sw_stream_destroy(c.s2[rank]);
    sw_device_destroy(c.dev);
    return g_failures ? 1 : 0;
}

/* ---------------------------------------------------------------- CUDA devices (the emulated plugin, fake NCCL) */

#if defined(SHARDWISE_EMULATED_CUDA_PLUGIN) && defined(SHARDWISE_FAKE_NCCL)
typedef struct {
    int rank, p, port;
    const char* kind; /* "nccl" (host side over TCP) or "nccl_id" (over NCCL itself) */
} NcclArg;

/* One rank of an NCCL job (one rank per "process": a thread here, its own store client and device). */
static void* nccl_rank(void* arg) {
    NcclArg* a = (NcclArg*)arg;
    Ctx c;
    memset(&c, 0, sizeof c);
    c.kind = a->kind;
    c.p = a->p;
    c.lo = a->rank;
    c.hi = a->rank + 1;
    OK(sw_device_create(SW_BACKEND_CUDA, a->rank, 0, &c.devs[a->rank]));
    OK(sw_stream_create(c.devs[a->rank], &c.s[a->rank]));
    OK(sw_stream_create(c.devs[a->rank], &c.s2[a->rank]));
    OK(sw_store_create("127.0.0.1", a->port, 0, 20000, &c.store));
    run_scenarios(&c);
    sw_stream_destroy(c.s[a->rank]);
    sw_stream_destroy(c.s2[a->rank]);
    sw_store_destroy(c.store);
    sw_device_destroy(c.devs[a->rank]);
    return NULL;
}

static int cuda_runs(void) {
    setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
    setenv("SHARDWISE_EMULATED_CUDA_DEVICES", "8", 1);
    setenv("SHARDWISE_NCCL_PATH", SHARDWISE_FAKE_NCCL, 1);
    int bad = 0;
    const char* kinds[2] = {"local", "nccl_local"};
    for (int k = 0; k < 2; ++k)
        for (int p = 1; p <= 4; ++p) {
            const int before = g_failures;
            const double t0 = now_s();
            Ctx c;
            memset(&c, 0, sizeof c);
            c.kind = kinds[k];
            c.inproc = 1;
            c.p = p;
            c.lo = 0;
            c.hi = p;
            for (int r = 0; r < p; ++r) {
                OK(sw_device_create(SW_BACKEND_CUDA, r, 0, &c.devs[r]));
                OK(sw_stream_create(c.devs[r], &c.s[r]));
                OK(sw_stream_create(c.devs[r], &c.s2[r]));
            }
            run_scenarios(&c);
            threads_and_streams(&c);
            for (int r = 0; r < p; ++r) {
                sw_stream_destroy(c.s[r]);
                sw_stream_destroy(c.s2[r]);
                OK(sw_device_destroy(c.devs[r]));
            }
            printf("cuda (emulated) %s p=%d: %s (%.1f s)\n", kinds[k], p, g_failures == before ? "ok" : "FAILED", now_s() - t0);
            bad |= g_failures != before;
        }
    /* NCCL per process (threads here): the host side over TCP (p = 2, 3), then over NCCL itself (unique id; p = 2
     * only: the stand-in lets one rank's ncclCommAbort, which destroying a communicator calls, stall the others'
     * transfers, so a third rank that takes no part in a fault scenario and leaves early would hold up the two
     * that do) */
    for (int job = 0; job < 3; ++job) {
        const int p = job == 1 ? 3 : 2;
        const char* kind = job < 2 ? "nccl" : "nccl_id";
        const int before = g_failures;
        const double t0 = now_s();
        sw_store server = NULL;
        OK(sw_store_create("127.0.0.1", 0, 1, 20000, &server));
        int32_t port = 0;
        OK(sw_store_get_port(server, &port));
        pthread_t th[MAXP];
        NcclArg args[MAXP];
        for (int r = 0; r < p; ++r) {
            args[r] = (NcclArg){r, p, port, kind};
            pthread_create(&th[r], NULL, nccl_rank, &args[r]);
        }
        for (int r = 0; r < p; ++r) pthread_join(th[r], NULL);
        sw_store_destroy(server);
        printf("cuda (emulated) %s p=%d: %s (%.1f s)\n", kind, p, g_failures == before ? "ok" : "FAILED", now_s() - t0);
        bad |= g_failures != before;
    }
    return bad;
}
#else
static int cuda_runs(void) {
    printf("p2p_check skipped: built without the emulated CUDA plugin\n");
    return 0;
}
#endif

int main(int argc, char** argv) {
    g_seed = (unsigned)time(NULL) ^ (unsigned)getpid() * 2654435761u;
    if (argc > 1 && strcmp(argv[1], "--mpi") == 0) return mpi_main();
    printf("seed %u\n", g_seed);
    int bad = 0;
    if (argc > 1 && strcmp(argv[1], "--tcp") == 0)
        for (int p = 2; p <= 3; ++p) bad |= tcp_job(p);
    else if (argc > 1 && strcmp(argv[1], "--cuda-emulated") == 0)
        bad = cuda_runs();
    else
        bad = local_runs();
    printf("%s\n", bad ? "FAILED" : "ok");
    return bad ? 1 : 0;
}
