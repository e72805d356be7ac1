/* sw_gemm_grouped (ABI 4) through the C ABI only:
 *  - results: every member's C equals what sw_gemm_ex(streams[i], &descs[i]) writes, bit for bit, for p = 1..8
 *    members with uneven widths (n = 1 included), X shared by every member or an A per member, distinct, repeated
 *    and single streams, f32 / bf16 / f16 inputs with f32 or 16-bit C, bias, GeLU, beta, op(A) transposed, k = 0;
 *    outputs poisoned (every byte 0xFF) first, and the f32 results also against a float64 reference;
 *  - every checked argument refused with SW_ERR_INVALID_ARGUMENT (or the status sw_gemm_ex gives) and a message
 *    naming streams[i] / descs[i], nothing queued (the outputs keep their poison);
 *  - overlapping outputs refused naming both members and operands, while the column blocks of one Y (ldc = N) pass;
 *  - a pending error on one listed stream skips that member only, and is reported once by that stream;
 *  - ordering: work queued before the group on any listed stream (a stream held back by a collective) is done
 *    before the group starts, and work queued after it on any listed stream sees the group's results;
 *  - the same results on the emulated CUDA plugin (its backend runs the members one by one) when built with it.
 * The random data is fresh per run (the seed is printed). */
#define _POSIX_C_SOURCE 200809L
#include "shardwise.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define MAX_P 8
#define NSTREAMS 4

static uint64_t rng = 0;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float frand(void) { return (float)(next_u32() >> 8) / 8388608.0f - 1.0f; } /* [-1, 1) */
static int irand(int lo, int hi) { return lo + (int)(next_u32() % (uint32_t)(hi - lo + 1)); }

static void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

/* count random elements of `type`: f32 in [-1, 1); bf16 the upper half of such a float; f16 a normal value. */
static void* random_elements(sw_dtype type, size_t count) {
    const size_t esz = sw_dtype_size(type);
    unsigned char* p = (unsigned char*)malloc(count * esz + 1);
    size_t i;
    for (i = 0; i < count; ++i) {
        if (type == SW_DTYPE_F32) {
            const float v = frand();
            memcpy(p + i * 4, &v, 4);
        } else if (type == SW_DTYPE_BF16) {
            const float v = frand();
            uint32_t bits;
            memcpy(&bits, &v, 4);
            const uint16_t h = (uint16_t)(bits >> 16);
            memcpy(p + i * 2, &h, 2);
        } else {
            const uint16_t h = (uint16_t)(((next_u32() & 1u) << 15) | ((uint32_t)irand(12, 15) << 10) | (next_u32() & 0x3FFu));
            memcpy(p + i * 2, &h, 2);
        }
    }
    return p;
}

static sw_buffer upload(sw_device dev, sw_stream s, const void* data, size_t bytes) {
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(dev, bytes, &b));
    OK(sw_memcpy_h2d_async(b, 0, data, bytes, s));
    OK(sw_stream_synchronize(s));
    return b;
}

static void* download(sw_buffer b, sw_stream s, size_t bytes) {
    void* h = malloc(bytes);
    OK(sw_memcpy_d2h_async(h, b, 0, bytes, s));
    OK(sw_stream_synchronize(s));
    return h;
}

static sw_gemm_desc desc_of(sw_dtype in, sw_dtype out, int64_t m, int64_t n, int64_t k) {
    sw_gemm_desc d;
    memset(&d, 0, sizeof d);
    d.size = (uint32_t)sizeof d;
    d.trans_a = d.trans_b = SW_OP_N;
    d.a_type = d.b_type = in;
    d.c_type = out;
    d.compute_type = SW_DTYPE_F32;
    d.epilogue = SW_EPILOGUE_NONE;
    d.m = m, d.n = n, d.k = k;
    d.alpha = 1.0f;
    d.beta = 0.0f;
    return d;
}

static void sync_all(sw_stream* s, int n) {
    int i;
    for (i = 0; i < n; ++i) OK(sw_stream_synchronize(s[i]));
}

/* ---------------------------------------------------------------- grouped == one by one */

typedef struct {
    sw_dtype in, out;
    int64_t m, k;
    int shared_a, bias, gelu, trans_a, beta;
} config;

static const char* tname(sw_dtype t) { return t == SW_DTYPE_F32 ? "f32" : t == SW_DTYPE_BF16 ? "bf16" : "f16"; }

/* p members on streams[stream_of[r]]: member r computes the column block [off_r, off_r + widths[r]) of Y = op(A_r) W
 * (+ bias) with ldc = N, A_r = X (shared) or its own matrix. Grouped into Y1, one by one into Y2; compared bytewise. */
static void compare_group(const char* be, sw_device dev, sw_stream* streams, const int* stream_of, int p,
                          const int64_t* widths, config c) {
    const size_t ein = sw_dtype_size(c.in), eout = sw_dtype_size(c.out);
    int64_t N = 0, off[MAX_P + 1];
    int r;
    for (r = 0; r < p; ++r) off[r] = N, N += widths[r];
    const int64_t M = c.m, K = c.k, lda = c.trans_a ? M : K;
    const int na = c.shared_a ? 1 : p;
    void* ha[MAX_P];
    sw_buffer a[MAX_P] = {NULL};
    for (r = 0; r < na; ++r) {
        ha[r] = random_elements(c.in, (size_t)(M * K) + 1);
        a[r] = K > 0 ? upload(dev, streams[0], ha[r], (size_t)(M * K) * ein + 1) : NULL;
    }
    void* hw = random_elements(c.in, (size_t)(K * N) + 1);
    sw_buffer w = K > 0 ? upload(dev, streams[0], hw, (size_t)(K * N) * ein + 1) : NULL;
    void* hbias = random_elements(c.out, (size_t)N);
    sw_buffer bias = c.bias ? upload(dev, streams[0], hbias, (size_t)N * eout) : NULL;
    /* beta == 0: Y poisoned (never read); otherwise the same random C in both. */
    const size_t ybytes = (size_t)(M * N) * eout;
    void* hy0 = random_elements(c.out, (size_t)(M * N));
    if (!c.beta) memset(hy0, 0xFF, ybytes);
    sw_buffer y1 = upload(dev, streams[0], hy0, ybytes), y2 = upload(dev, streams[0], hy0, ybytes);

    sw_stream list[MAX_P];
    sw_gemm_desc d1[MAX_P];
    for (r = 0; r < p; ++r) {
        sw_gemm_desc d = desc_of(c.in, c.out, M, widths[r], K);
        d.trans_a = c.trans_a ? SW_OP_T : SW_OP_N;
        d.epilogue = c.gelu ? SW_EPILOGUE_GELU : SW_EPILOGUE_NONE;
        d.alpha = c.beta ? 0.75f : 1.0f;
        d.beta = c.beta ? -0.5f : 0.0f;
        d.a = a[c.shared_a ? 0 : r], d.a_offset = 0, d.lda = lda;
        d.b = w, d.b_offset = (uint64_t)off[r], d.ldb = N;
        d.c = y1, d.c_offset = (uint64_t)off[r], d.ldc = N;
        d.bias = bias, d.bias_offset = (uint64_t)off[r];
        d1[r] = d;
        list[r] = streams[stream_of[r]];
    }
    OK(sw_gemm_grouped(p, list, d1));
    for (r = 0; r < p; ++r) {
        sw_gemm_desc d = d1[r];
        d.c = y2;
        OK(sw_gemm_ex(list[r], &d));
    }
    sync_all(streams, NSTREAMS);
    unsigned char* g = (unsigned char*)download(y1, streams[0], ybytes);
    unsigned char* e = (unsigned char*)download(y2, streams[0], ybytes);
    CHECK(memcmp(g, e, ybytes) == 0, "%s: p = %d, %s -> %s, m = %lld, k = %lld, shared a %d, bias %d, gelu %d, trans_a %d, "
          "beta %d: grouped differs from sw_gemm_ex member by member", be, p, tname(c.in), tname(c.out), (long long)M,
          (long long)K, c.shared_a, c.bias, c.gelu, c.trans_a, c.beta);
    size_t i, unwritten = 0;
    for (i = 0; i + eout <= ybytes; i += eout) {
        size_t b, all = 1;
        for (b = 0; b < eout; ++b) all &= g[i + b] == 0xFF;
        unwritten += all;
    }
    CHECK(unwritten == 0, "%s: p = %d: %zu elements of Y still hold the poison", be, p, unwritten);
    /* f32 without GeLU: a float64 reference (fp32 accumulation of K products of |x| < 1: |error| <= K * 2^-24 *
     * sum|a b| + rounding of the bias, beta and alpha terms; bounded by (K + 4) * 2^-23 * (sum|a b| + 2)). */
    if (c.in == SW_DTYPE_F32 && c.out == SW_DTYPE_F32 && !c.gelu) {
        const float* G = (const float*)g;
        int64_t row, col;
        for (r = 0; r < p; ++r)
            for (row = 0; row < M; ++row)
                for (col = off[r]; col < off[r] + widths[r]; ++col) {
                    const float* A = (const float*)ha[c.shared_a ? 0 : r];
                    const float* W = (const float*)hw;
                    double s = 0, mag = 0;
                    int64_t q;
                    for (q = 0; q < K; ++q) {
                        const double x = c.trans_a ? A[q * M + row] : A[row * K + q];
                        s += x * W[q * N + col];
                        mag += fabs(x * W[q * N + col]);
                    }
                    s *= c.beta ? 0.75 : 1.0;
                    if (c.beta) s += -0.5 * ((const float*)hy0)[row * N + col];
                    if (c.bias) s += ((const float*)hbias)[col];
                    const double tol = (double)(K + 4) * ldexp(1.0, -23) * (mag + 2.0);
                    if (!(fabs(G[row * N + col] - s) <= tol)) {
                        CHECK(0, "%s: p = %d: Y[%lld, %lld] = %.9g, float64 reference %.9g (tolerance %.3g)", be, p,
                              (long long)row, (long long)col, G[row * N + col], s, tol);
                        row = M, r = p;
                        break;
                    }
                }
    }
    free(g);
    free(e);
    for (r = 0; r < na; ++r) {
        free(ha[r]);
        if (a[r]) OK(sw_buffer_destroy(a[r]));
    }
    free(hw);
    free(hbias);
    free(hy0);
    if (w) OK(sw_buffer_destroy(w));
    if (bias) OK(sw_buffer_destroy(bias));
    OK(sw_buffer_destroy(y1));
    OK(sw_buffer_destroy(y2));
}

static void results(const char* be, sw_device dev, sw_stream* streams, int quick) {
    static const sw_dtype types[][2] = {{SW_DTYPE_F32, SW_DTYPE_F32},  {SW_DTYPE_BF16, SW_DTYPE_F32},
                                        {SW_DTYPE_BF16, SW_DTYPE_BF16}, {SW_DTYPE_F16, SW_DTYPE_F32},
                                        {SW_DTYPE_F16, SW_DTYPE_F16}};
    int p, t, pattern, variant = 0;
    for (p = 1; p <= MAX_P; ++p)
        for (t = 0; t < (quick ? 1 : 5); ++t)
            for (pattern = 0; pattern < 3; ++pattern) {
                /* streams: 0 distinct (wrapping over NSTREAMS), 1 all on one, 2 repeated in reverse pairs */
                int stream_of[MAX_P], r;
                int64_t widths[MAX_P];
                for (r = 0; r < p; ++r) {
                    stream_of[r] = pattern == 0 ? r % NSTREAMS : pattern == 1 ? 0 : (NSTREAMS - 1 - r / 2 % NSTREAMS);
                    widths[r] = r == p / 2 ? 1 : irand(1, 13); /* uneven, one member one column wide */
                }
                config c;
                c.in = types[t][0];
                c.out = types[t][1];
                static const int64_t ms[] = {1, 5, 17, 33}, ks[] = {19, 64, 1, 0, 40};
                c.m = ms[variant % 4];
                c.k = ks[variant % 5];
                c.shared_a = variant % 3 != 2;
                c.bias = variant % 2;
                c.gelu = variant % 5 == 3;
                c.trans_a = variant % 7 == 1;
                c.beta = variant % 6 == 4;
                ++variant;
                compare_group(be, dev, streams, stream_of, p, widths, c);
            }
    printf("%s: grouped == sw_gemm_ex member by member (%d groups)\n", be, variant);
}

/* ---------------------------------------------------------------- argument errors and overlaps */

/* The call must fail with `status` and a message containing both words; nothing may have been queued. */
static void refused(const char* what, sw_status st, sw_status want, const char* w1, const char* w2) {
    const char* msg = sw_last_error();
    if (st != want || (w1 && !strstr(msg, w1)) || (w2 && !strstr(msg, w2))) {
        ++failures;
        fprintf(stderr, "FAIL %s: returned %s (expected %s) with '%s' (expected to name '%s' and '%s')\n", what,
                sw_status_string(st), sw_status_string(want), st == SW_OK ? "" : msg, w1 ? w1 : "", w2 ? w2 : "");
    }
}
#define REFUSED(call, want, w1, w2) refused(#call, (call), (want), (w1), (w2))

static void arguments(const char* be, sw_backend backend, sw_device dev, sw_stream* streams) {
    const int64_t M = 3, K = 4, N = 10, P = 4;
    const int64_t off[] = {0, 1, 4, 8, 10};
    float* hx = (float*)random_elements(SW_DTYPE_F32, (size_t)(M * K));
    float* hw = (float*)random_elements(SW_DTYPE_F32, (size_t)(K * N));
    float* hb = (float*)random_elements(SW_DTYPE_F32, (size_t)N);
    float* poison = (float*)malloc((size_t)(M * N) * 4);
    memset(poison, 0xFF, (size_t)(M * N) * 4);
    sw_buffer x = upload(dev, streams[0], hx, (size_t)(M * K) * 4), w = upload(dev, streams[0], hw, (size_t)(K * N) * 4);
    sw_buffer bias = upload(dev, streams[0], hb, (size_t)N * 4), y = upload(dev, streams[0], poison, (size_t)(M * N) * 4);
    sw_gemm_desc ok[4], d[4];
    sw_stream s[4], t[4];
    int r;
    for (r = 0; r < P; ++r) {
        sw_gemm_desc q = desc_of(SW_DTYPE_F32, SW_DTYPE_F32, M, off[r + 1] - off[r], K);
        q.a = x, q.lda = K;
        q.b = w, q.b_offset = (uint64_t)off[r], q.ldb = N;
        q.c = y, q.c_offset = (uint64_t)off[r], q.ldc = N;
        q.bias = bias, q.bias_offset = (uint64_t)off[r];
        ok[r] = q;
        s[r] = streams[r % NSTREAMS];
    }
#define RESET() (memcpy(d, ok, sizeof d), memcpy(t, s, sizeof t))
    RESET();
    REFUSED(sw_gemm_grouped(0, t, d), SW_ERR_INVALID_ARGUMENT, "count = 0", NULL);
    REFUSED(sw_gemm_grouped(-1, t, d), SW_ERR_INVALID_ARGUMENT, "count = -1", NULL);
    REFUSED(sw_gemm_grouped(P, NULL, d), SW_ERR_INVALID_ARGUMENT, "streams is NULL", NULL);
    REFUSED(sw_gemm_grouped(P, t, NULL), SW_ERR_INVALID_ARGUMENT, "descs is NULL", NULL);
    t[2] = NULL;
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_NULL_HANDLE, "streams[2] is NULL", NULL);
    RESET();
    t[3] = (sw_stream)(void*)y; /* a live handle of another kind */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "streams[3]", "not a live sw_stream");
    {
        sw_device other = NULL;
        sw_stream foreign = NULL;
        OK(sw_device_create(backend, 0, 1, &other));
        OK(sw_stream_create(other, &foreign));
        RESET();
        t[1] = foreign;
        REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "streams[1] is on another device", NULL);
        OK(sw_stream_destroy(foreign));
        RESET();
        t[2] = foreign; /* destroyed */
        REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "streams[2]", "not a live sw_stream");
        OK(sw_device_destroy(other));
    }
    RESET();
    d[2].ldb = 2; /* smaller than the member's n = 4 columns */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[2]: ldb = 2", NULL);
    RESET();
    d[1].size = 8;
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[1].size = 8", NULL);
    RESET();
    d[3].m = 0;
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[3]: m = 0", NULL);
    RESET();
    d[3].c_offset = (uint64_t)(M * N - 1); /* the block runs past the end of y */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[3]: c", NULL);
    RESET();
    d[0].c_type = SW_DTYPE_F16;
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_UNSUPPORTED, "descs[0]: a = f32, b = f32, c = f16", NULL);
    RESET();
    d[1].a = NULL;
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_NULL_HANDLE, "descs[1]: a is NULL", NULL);
    /* overlaps: C with C, with a shared input, with another member's B and bias, with its own A */
    RESET();
    d[1].n += 1; /* reaches member 2's first column */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[1].c overlaps descs[2].c", NULL);
    RESET();
    d[3].c = x, d[3].c_offset = 0, d[3].ldc = K; /* member 3 writes X, which every member reads */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[3].c overlaps descs[0].a", NULL);
    RESET();
    d[0].c = w, d[0].c_offset = (uint64_t)(2 * N + 9), d[0].m = 1, d[0].n = 1; /* into member 3's shard of W */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[0].c overlaps descs[3].b", NULL);
    RESET();
    d[2].c = bias, d[2].c_offset = 0, d[2].m = 1, d[2].ldc = d[2].n; /* columns 0..3 of the bias: members 0 and 1 */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[2].c overlaps descs[0].bias", NULL);
    RESET();
    d[0].a = y, d[0].a_offset = 2 * (uint64_t)N - 2, d[0].lda = K; /* member 0's A holds Y[2, 0], its own output */
    REFUSED(sw_gemm_grouped(P, t, d), SW_ERR_INVALID_ARGUMENT, "descs[0].c overlaps descs[0].a", NULL);
    /* Nothing ran: Y keeps its poison. Then the valid group (the column blocks of one Y) passes. */
    sync_all(streams, NSTREAMS);
    float* now = (float*)download(y, streams[0], (size_t)(M * N) * 4);
    CHECK(memcmp(now, poison, (size_t)(M * N) * 4) == 0, "%s: a refused group wrote Y", be);
    free(now);
    RESET();
    OK(sw_gemm_grouped(P, t, d));
    sync_all(streams, NSTREAMS);
    now = (float*)download(y, streams[0], (size_t)(M * N) * 4);
    CHECK(!isnan(now[0]) && !isnan(now[M * N - 1]), "%s: the valid group did not run", be);
    free(now);
#undef RESET
    free(hx);
    free(hw);
    free(hb);
    free(poison);
    OK(sw_buffer_destroy(x));
    OK(sw_buffer_destroy(w));
    OK(sw_buffer_destroy(bias));
    OK(sw_buffer_destroy(y));
    printf("%s: argument errors and overlaps refused\n", be);
}

/* ---------------------------------------------------------------- pending errors and ordering (CPU streams) */

typedef struct {
    int64_t M, K, N;
    sw_buffer x, w, y;
    float *hx, *hw;
    sw_gemm_desc d[NSTREAMS];
    sw_stream s[NSTREAMS];
} sharded;

/* NSTREAMS members, member r on stream r, shared X (M x K), W (K x N) split unevenly, Y poisoned. */
static void sharded_setup(sharded* g, sw_device dev, sw_stream* streams) {
    const int64_t off[] = {0, 3, 4, 11, 16};
    int r;
    g->M = 7, g->K = 9, g->N = 16;
    g->hx = (float*)random_elements(SW_DTYPE_F32, (size_t)(g->M * g->K));
    g->hw = (float*)random_elements(SW_DTYPE_F32, (size_t)(g->K * g->N));
    g->x = upload(dev, streams[0], g->hx, (size_t)(g->M * g->K) * 4);
    g->w = upload(dev, streams[0], g->hw, (size_t)(g->K * g->N) * 4);
    OK(sw_buffer_alloc(dev, (size_t)(g->M * g->N) * 4, &g->y));
    OK(sw_memset_async(g->y, 0, 0xFF, (size_t)(g->M * g->N) * 4, streams[0]));
    OK(sw_stream_synchronize(streams[0]));
    for (r = 0; r < NSTREAMS; ++r) {
        sw_gemm_desc q = desc_of(SW_DTYPE_F32, SW_DTYPE_F32, g->M, off[r + 1] - off[r], g->K);
        q.a = g->x, q.lda = g->K;
        q.b = g->w, q.b_offset = (uint64_t)off[r], q.ldb = g->N;
        q.c = g->y, q.c_offset = (uint64_t)off[r], q.ldc = g->N;
        g->d[r] = q;
        g->s[r] = streams[r];
    }
}

/* Y as the members compute it one by one from host x (sw_gemm_ex into a fresh buffer). */
static float* sharded_expected(sharded* g, sw_device dev, const float* hx) {
    sw_buffer x = upload(dev, g->s[0], hx, (size_t)(g->M * g->K) * 4), y = NULL;
    OK(sw_buffer_alloc(dev, (size_t)(g->M * g->N) * 4, &y));
    int r;
    for (r = 0; r < NSTREAMS; ++r) {
        sw_gemm_desc q = g->d[r];
        q.a = x, q.c = y;
        OK(sw_gemm_ex(g->s[0], &q));
    }
    float* h = (float*)download(y, g->s[0], (size_t)(g->M * g->N) * 4);
    OK(sw_buffer_destroy(x));
    OK(sw_buffer_destroy(y));
    return h;
}

static void sharded_free(sharded* g) {
    free(g->hx);
    free(g->hw);
    OK(sw_buffer_destroy(g->x));
    OK(sw_buffer_destroy(g->w));
    OK(sw_buffer_destroy(g->y));
}

/* Stream 2 holds a pending error (a collective that timed out): member 2 is skipped, the others run; stream 2 reports
 * the error once; the next group runs whole. */
static void pending_error(sw_device dev, sw_stream* streams) {
    sharded g;
    sharded_setup(&g, dev, streams);
    sw_device devs[2] = {dev, dev};
    sw_comm comm = NULL;
    sw_buffer one = NULL;
    OK(sw_comm_create_local(2, devs, 30, &comm));
    OK(sw_buffer_alloc(dev, 4, &one));
    OK(sw_all_reduce(comm, 0, one, 0, one, 0, 1, SW_DTYPE_F32, SW_REDUCE_SUM, streams[2])); /* rank 1 never joins */
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    OK(sw_stream_synchronize(streams[0]));
    OK(sw_stream_synchronize(streams[1]));
    OK(sw_stream_synchronize(streams[3]));
    const sw_status st = sw_stream_synchronize(streams[2]);
    CHECK(st == SW_ERR_TIMEOUT, "stream 2: expected its collective's SW_ERR_TIMEOUT, got %s", sw_status_string(st));
    OK(sw_stream_synchronize(streams[2])); /* reported once */
    float* want = sharded_expected(&g, dev, g.hx);
    float* got = (float*)download(g.y, streams[0], (size_t)(g.M * g.N) * 4);
    int64_t i, j, bad_skip = 0, bad_run = 0;
    for (i = 0; i < g.M; ++i)
        for (j = 0; j < g.N; ++j) {
            const int64_t e = i * g.N + j;
            const int in2 = (uint64_t)j >= g.d[2].c_offset && j < (int64_t)g.d[2].c_offset + g.d[2].n;
            if (in2) bad_skip += !isnan(got[e]);
            else bad_run += memcmp(&got[e], &want[e], 4) != 0;
        }
    CHECK(bad_skip == 0, "the member on the stream with a pending error ran (%lld elements written)", (long long)bad_skip);
    CHECK(bad_run == 0, "the members on healthy streams: %lld elements differ from sw_gemm_ex", (long long)bad_run);
    free(got);
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    sync_all(streams, NSTREAMS);
    got = (float*)download(g.y, streams[0], (size_t)(g.M * g.N) * 4);
    CHECK(memcmp(got, want, (size_t)(g.M * g.N) * 4) == 0, "after the error was reported the whole group runs");
    free(got);
    free(want);
    OK(sw_comm_destroy(comm));
    OK(sw_buffer_destroy(one));
    sharded_free(&g);
    printf("cpu: a pending error skips only its stream's member\n");
}

/* Before the group every stream j uploads its rows (i % NSTREAMS == j) of the new X, stream 1 behind a collective that
 * a late rank releases 40 ms later; after it every stream overwrites its rows of X with other data and copies its rows
 * of Y to the host. Y and every copy must be the product of the new X. Then a group on one stream listed twice and a
 * stream destroyed while its barrier operation waits. */
static void ordering(sw_device dev, sw_stream* streams) {
    sharded g;
    sharded_setup(&g, dev, streams);
    sw_stream late = NULL;
    OK(sw_stream_create(dev, &late));
    sw_device devs[2] = {dev, dev};
    sw_comm comm = NULL;
    sw_buffer one = NULL;
    OK(sw_comm_create_local(2, devs, 10000, &comm));
    OK(sw_buffer_alloc(dev, 8, &one));
    OK(sw_memset_async(one, 0, 0, 8, late));
    float* xnew = (float*)random_elements(SW_DTYPE_F32, (size_t)(g.M * g.K));
    float* xlater = (float*)random_elements(SW_DTYPE_F32, (size_t)(g.M * g.K));
    float* ycopy = (float*)malloc((size_t)(g.M * g.N) * 4);
    memset(ycopy, 0, (size_t)(g.M * g.N) * 4);
    const size_t row_x = (size_t)g.K * 4, row_y = (size_t)g.N * 4;
    int64_t i;
    int j;
    OK(sw_all_reduce(comm, 0, one, 0, one, 0, 1, SW_DTYPE_F32, SW_REDUCE_SUM, streams[1]));
    for (i = 0; i < g.M; ++i)
        OK(sw_memcpy_h2d_async(g.x, (uint64_t)i * row_x, xnew + i * g.K, row_x, streams[i % NSTREAMS]));
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    for (i = 0; i < g.M; ++i) {
        OK(sw_memcpy_h2d_async(g.x, (uint64_t)i * row_x, xlater + i * g.K, row_x, streams[i % NSTREAMS]));
        OK(sw_memcpy_d2h_async(ycopy + i * g.N, g.y, (uint64_t)i * row_y, row_y, streams[i % NSTREAMS]));
    }
    sleep_ms(40);
    OK(sw_all_reduce(comm, 1, one, 1, one, 1, 1, SW_DTYPE_F32, SW_REDUCE_SUM, late));
    sync_all(streams, NSTREAMS);
    OK(sw_stream_synchronize(late));
    float* want = sharded_expected(&g, dev, xnew);
    float* got = (float*)download(g.y, streams[0], (size_t)(g.M * g.N) * 4);
    CHECK(memcmp(got, want, (size_t)(g.M * g.N) * 4) == 0, "ordering: Y is not the product of the X uploaded before the group");
    CHECK(memcmp(ycopy, want, (size_t)(g.M * g.N) * 4) == 0, "ordering: work queued after the group did not see its Y");
    free(got);

    /* One stream listed for every member, held back: the group waits for it and runs once. */
    OK(sw_memset_async(g.y, 0, 0xFF, (size_t)(g.M * g.N) * 4, streams[0]));
    OK(sw_stream_synchronize(streams[0]));
    OK(sw_all_reduce(comm, 0, one, 0, one, 0, 1, SW_DTYPE_F32, SW_REDUCE_SUM, streams[3]));
    OK(sw_memcpy_h2d_async(g.x, 0, xnew, (size_t)(g.M * g.K) * 4, streams[3]));
    for (j = 0; j < NSTREAMS; ++j) g.s[j] = streams[3];
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    sleep_ms(10);
    OK(sw_all_reduce(comm, 1, one, 1, one, 1, 1, SW_DTYPE_F32, SW_REDUCE_SUM, late));
    OK(sw_stream_synchronize(streams[3]));
    got = (float*)download(g.y, streams[3], (size_t)(g.M * g.N) * 4);
    CHECK(memcmp(got, want, (size_t)(g.M * g.N) * 4) == 0, "one stream listed for every member");
    free(got);

    /* A listed stream destroyed while the group waits for another listed stream: the destroy drains, nothing hangs. */
    sw_stream extra = NULL;
    OK(sw_stream_create(dev, &extra));
    OK(sw_memset_async(g.y, 0, 0xFF, (size_t)(g.M * g.N) * 4, extra));
    OK(sw_stream_synchronize(extra));
    OK(sw_all_reduce(comm, 0, one, 0, one, 0, 1, SW_DTYPE_F32, SW_REDUCE_SUM, streams[0]));
    for (j = 0; j < NSTREAMS; ++j) g.s[j] = j % 2 ? extra : streams[0];
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    OK(sw_all_reduce(comm, 1, one, 1, one, 1, 1, SW_DTYPE_F32, SW_REDUCE_SUM, late)); /* releases stream 0 soon */
    OK(sw_stream_destroy(extra)); /* waits for the group */
    OK(sw_stream_synchronize(streams[0]));
    got = (float*)download(g.y, streams[0], (size_t)(g.M * g.N) * 4);
    CHECK(memcmp(got, want, (size_t)(g.M * g.N) * 4) == 0, "group with a stream destroyed after the call");
    free(got);

    free(want);
    free(xnew);
    free(xlater);
    free(ycopy);
    OK(sw_comm_destroy(comm));
    OK(sw_buffer_destroy(one));
    OK(sw_stream_destroy(late));
    sharded_free(&g);
    printf("cpu: ordered after every listed stream's earlier work and before its later work\n");
}

/* Buffers destroyed right after the call while the group is queued: its storages stay alive until it ran. */
static void keep_alive(sw_device dev, sw_stream* streams) {
    sharded g;
    sharded_setup(&g, dev, streams);
    float* want = sharded_expected(&g, dev, g.hx);
    sw_device devs[2] = {dev, dev};
    sw_comm comm = NULL;
    sw_buffer one = NULL;
    sw_stream late = NULL;
    OK(sw_stream_create(dev, &late));
    OK(sw_comm_create_local(2, devs, 10000, &comm));
    OK(sw_buffer_alloc(dev, 8, &one));
    float* host = (float*)malloc((size_t)(g.M * g.N) * 4);
    memset(host, 0, (size_t)(g.M * g.N) * 4);
    OK(sw_all_reduce(comm, 0, one, 0, one, 0, 1, SW_DTYPE_F32, SW_REDUCE_SUM, streams[0]));
    OK(sw_gemm_grouped(NSTREAMS, g.s, g.d));
    OK(sw_memcpy_d2h_async(host, g.y, 0, (size_t)(g.M * g.N) * 4, streams[1]));
    OK(sw_buffer_destroy(g.x));
    OK(sw_buffer_destroy(g.w));
    OK(sw_buffer_destroy(g.y));
    /* New allocations of the same sizes, which would reuse freed memory, filled with other data. */
    sw_buffer junk[6];
    for (int k = 0; k < 6; ++k) {
        const size_t bytes = (size_t)(k % 2 ? g.M * g.K : g.K * g.N) * 4;
        OK(sw_buffer_alloc(dev, bytes, &junk[k]));
        OK(sw_memset_async(junk[k], 0, 0x3F, bytes, late));
    }
    OK(sw_stream_synchronize(late));
    sleep_ms(10);
    OK(sw_all_reduce(comm, 1, one, 1, one, 1, 1, SW_DTYPE_F32, SW_REDUCE_SUM, late));
    sync_all(streams, NSTREAMS);
    CHECK(memcmp(host, want, (size_t)(g.M * g.N) * 4) == 0, "keep-alive: buffers destroyed while the group was queued");
    for (int k = 0; k < 6; ++k) OK(sw_buffer_destroy(junk[k]));
    free(host);
    free(want);
    free(g.hx);
    free(g.hw);
    OK(sw_comm_destroy(comm));
    OK(sw_buffer_destroy(one));
    OK(sw_stream_destroy(late));
    printf("cpu: the group keeps its storages alive\n");
}

/* Two host threads queue groups on the same streams listed in opposite orders, many times: no deadlock (the alarm
 * ends a hung run), and every group's result is right. */
typedef struct {
    sharded* g;
    int reversed;
    int rounds;
    sw_buffer y;
    sw_status status;
} submitter;

static void* submit_many(void* arg) {
    submitter* t = (submitter*)arg;
    sw_stream list[NSTREAMS];
    sw_gemm_desc d[NSTREAMS];
    int r, i;
    for (i = 0; i < NSTREAMS; ++i) {
        const int j = t->reversed ? NSTREAMS - 1 - i : i;
        list[i] = t->g->s[j];
        d[i] = t->g->d[j];
        d[i].c = t->y;
    }
    t->status = SW_OK;
    for (r = 0; r < t->rounds && t->status == SW_OK; ++r) t->status = sw_gemm_grouped(NSTREAMS, list, d);
    return NULL;
}

static void concurrent_groups(sw_device dev, sw_stream* streams) {
    sharded g;
    sharded_setup(&g, dev, streams);
    float* want = sharded_expected(&g, dev, g.hx);
    const size_t ybytes = (size_t)(g.M * g.N) * 4;
    submitter t[2];
    pthread_t th[2];
    int i;
    alarm(30); /* a deadlock ends the run (SIGALRM) instead of hanging it */
    for (i = 0; i < 2; ++i) {
        t[i].g = &g, t[i].reversed = i, t[i].rounds = 300;
        OK(sw_buffer_alloc(dev, ybytes, &t[i].y));
        OK(sw_memset_async(t[i].y, 0, 0xFF, ybytes, streams[0]));
    }
    OK(sw_stream_synchronize(streams[0]));
    for (i = 0; i < 2; ++i) CHECK(pthread_create(&th[i], NULL, submit_many, &t[i]) == 0, "pthread_create");
    for (i = 0; i < 2; ++i) pthread_join(th[i], NULL);
    sync_all(streams, NSTREAMS);
    alarm(0);
    for (i = 0; i < 2; ++i) {
        CHECK(t[i].status == SW_OK, "thread %d: %s: %s", i, sw_status_string(t[i].status), sw_last_error());
        float* got = (float*)download(t[i].y, streams[0], ybytes);
        CHECK(memcmp(got, want, ybytes) == 0, "thread %d: the result of its groups", i);
        free(got);
        OK(sw_buffer_destroy(t[i].y));
    }
    free(want);
    sharded_free(&g);
    printf("cpu: concurrent groups on shared streams in opposite orders\n");
}

static void run_backend(const char* be, sw_backend backend, int quick) {
    sw_device dev = NULL;
    sw_stream streams[NSTREAMS];
    int i;
    OK(sw_device_create(backend, 0, backend == SW_BACKEND_CPU ? 2 : 0, &dev));
    for (i = 0; i < NSTREAMS; ++i) OK(sw_stream_create(dev, &streams[i]));
    results(be, dev, streams, quick);
    arguments(be, backend, dev, streams);
    if (backend == SW_BACKEND_CPU) {
        pending_error(dev, streams);
        ordering(dev, streams);
        keep_alive(dev, streams);
        concurrent_groups(dev, streams);
    }
    for (i = 0; i < NSTREAMS; ++i) OK(sw_stream_destroy(streams[i]));
    OK(sw_device_destroy(dev));
}

int main(void) {
    const unsigned seed = (unsigned)time(NULL) ^ ((unsigned)getpid() << 16);
    rng = 0x9E3779B97F4A7C15ull ^ seed;
    printf("seed %u\n", seed);
    run_backend("cpu", SW_BACKEND_CPU, 0);
#ifdef SHARDWISE_EMULATED_CUDA_PLUGIN
    setenv("SHARDWISE_CUDA_PLUGIN_PATH", SHARDWISE_EMULATED_CUDA_PLUGIN, 1);
    run_backend("cuda (emulated)", SW_BACKEND_CUDA, 1);
#endif
    printf("%s\n", failures ? "FAILED" : "all grouped GEMM checks passed");
    return failures ? 1 : 0;
}
