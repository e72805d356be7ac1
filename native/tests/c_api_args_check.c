/* C ABI argument checks, straight through the C ABI (no C# layer in front that would check first): every call here
 * passes one bad argument (an enum value out of range, a shape or leading dimension one too small, an index one too
 * large, a size or offset past the end, swapped events) and must be refused with SW_ERR_INVALID_ARGUMENT and a
 * message naming the argument, without touching any output. Each check sits just past the edge of what is valid, so
 * loosening the library's check by one fails it. Compiled as C99: passing any int as an enum is well defined here,
 * and under UBSan (./build.sh asan) the library must not load such a value as its enum type. */
#include "shardwise.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

/* The call must fail with SW_ERR_INVALID_ARGUMENT and a message that contains every one of the given words. */
static void refused(const char* what, sw_status st, const char* word1, const char* word2) {
    const char* msg = sw_last_error();
    if (st != SW_ERR_INVALID_ARGUMENT) {
        ++failures;
        fprintf(stderr, "FAIL %s: returned %s (expected SW_ERR_INVALID_ARGUMENT); message: %s\n", what,
                sw_status_string(st), st == SW_OK ? "(none)" : msg);
        return;
    }
    if ((word1 && !strstr(msg, word1)) || (word2 && !strstr(msg, word2))) {
        ++failures;
        fprintf(stderr, "FAIL %s: message '%s' does not name '%s'%s%s\n", what, msg, word1 ? word1 : "",
                word2 ? " and " : "", word2 ? word2 : "");
    }
}
#define REFUSED(call, w1, w2) refused(#call, (call), (w1), (w2))

static uint32_t rng_state = 0x2545F491u;
static float frand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return (float)(rng_state >> 8) / 8388608.0f - 1.0f; /* [-1, 1) */
}

static sw_buffer upload(sw_device dev, sw_stream s, const float* data, size_t count) {
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(dev, count * sizeof(float), &b));
    OK(sw_memcpy_h2d_async(b, 0, data, count * sizeof(float), s));
    OK(sw_stream_synchronize(s));
    return b;
}

/* True when the buffer still holds exactly `expect` (count floats). */
static int unchanged(sw_buffer b, sw_stream s, const float* expect, size_t count) {
    float* now = (float*)malloc(count * sizeof(float));
    int same = 0;
    if (!now) return 0;
    if (sw_memcpy_d2h_async(now, b, 0, count * sizeof(float), s) == SW_OK && sw_stream_synchronize(s) == SW_OK)
        same = memcmp(now, expect, count * sizeof(float)) == 0;
    free(now);
    return same;
}

/* ------------------------------------------------------------------ enums */

static void check_enums(sw_device dev, sw_stream s) {
    const int32_t bad[] = {-1, INT32_MIN, 0x7fffffff};
    int32_t n = 77;
    char label[128];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        snprintf(label, sizeof label, "backend = %d", (int)bad[i]);
        refused("sw_device_count(bad backend)", sw_device_count((sw_backend)bad[i], &n), label, "SW_BACKEND_CPU");
        sw_device d = NULL;
        refused("sw_device_create(bad backend)", sw_device_create((sw_backend)bad[i], 0, 1, &d), label, "SW_BACKEND_CUDA");
        CHECK(d == NULL, "a refused sw_device_create leaves *out NULL");
        CHECK(sw_dtype_size((sw_dtype)bad[i]) == 0, "sw_dtype_size(%d) must be 0", (int)bad[i]);
        CHECK(strcmp(sw_status_string((sw_status)bad[i]), "SW_ERR_UNKNOWN_STATUS") == 0, "sw_status_string(%d) = %s",
              (int)bad[i], sw_status_string((sw_status)bad[i]));
    }
    /* One past the last value of each enum. */
    refused("sw_device_count(backend 2)", sw_device_count((sw_backend)2, &n), "backend = 2", NULL);
    CHECK(n == 77, "a refused sw_device_count must not write *count (got %d)", (int)n);
    CHECK(sw_dtype_size((sw_dtype)6) == 0 && sw_dtype_size(SW_DTYPE_U8) == 1, "sw_dtype_size edges");
    CHECK(strcmp(sw_status_string((sw_status)11), "SW_ERR_UNKNOWN_STATUS") == 0, "status 11");

    sw_buffer x = NULL;
    OK(sw_buffer_alloc(dev, 64, &x));
    REFUSED(sw_gelu(s, (sw_dtype)-1, x, 0, x, 0, 4), "dtype = -1", "SW_DTYPE_F32");
    REFUSED(sw_gelu(s, (sw_dtype)6, x, 0, x, 0, 4), "dtype = 6", NULL);
    REFUSED(sw_gelu_backward(s, (sw_dtype)-1, x, 0, x, 0, x, 0, 4), "dtype = -1", NULL);
    OK(sw_stream_synchronize(s));
    OK(sw_buffer_destroy(x));
}

/* ------------------------------------------------------------------ GEMM */

enum { GM = 7, GK = 9, GN = 11 };

static void check_gemm(sw_device dev, sw_stream s) {
    /* Operands with room to spare, so that only the argument under test can make the call invalid. */
    enum { SLACK = 64 };
    float a[GM * GK + SLACK], b[GK * GN + SLACK], c[GM * GN + SLACK], bias[GN];
    for (size_t i = 0; i < sizeof a / sizeof a[0]; ++i) a[i] = frand();
    for (size_t i = 0; i < sizeof b / sizeof b[0]; ++i) b[i] = frand();
    for (size_t i = 0; i < sizeof c / sizeof c[0]; ++i) c[i] = frand();
    for (size_t i = 0; i < GN; ++i) bias[i] = frand();
    const size_t nc = sizeof c / sizeof c[0];
    sw_buffer da = upload(dev, s, a, sizeof a / sizeof a[0]);
    sw_buffer db = upload(dev, s, b, sizeof b / sizeof b[0]);
    sw_buffer dc = upload(dev, s, c, nc);
    sw_buffer dbias = upload(dev, s, bias, GN);           /* exactly n elements */
    sw_buffer dbias_short = upload(dev, s, bias, GN - 1); /* n - 1 elements */

    /* The valid call, to prove that the operands themselves are fine (then C is restored). */
    OK(sw_gemm(s, SW_DTYPE_F32, SW_OP_N, SW_OP_N, GM, GN, GK, 1.0f, da, 0, GK, db, 0, GN, 0.0f, dc, 0, GN, dbias, 0,
               SW_EPILOGUE_NONE));
    OK(sw_stream_synchronize(s));
    {
        float got[GM * GN];
        OK(sw_memcpy_d2h_async(got, dc, 0, sizeof got, s));
        OK(sw_stream_synchronize(s));
        for (int i = 0; i < GM; ++i)
            for (int j = 0; j < GN; ++j) {
                double ref = bias[j], mag = fabs(bias[j]);
                for (int p = 0; p < GK; ++p) {
                    ref += (double)a[i * GK + p] * b[p * GN + j];
                    mag += fabs((double)a[i * GK + p] * b[p * GN + j]);
                }
                CHECK(fabs(got[i * GN + j] - ref) <= 1e-5 * mag, "valid GEMM C[%d][%d] = %g, expected %g", i, j,
                      got[i * GN + j], ref);
            }
        OK(sw_memcpy_h2d_async(dc, 0, c, sizeof c, s));
        OK(sw_stream_synchronize(s));
    }

#define GEMM(dt, ta, tb, lda, ldb, ldc, biasbuf, boff, epi)                                                        \
    sw_gemm(s, (dt), (ta), (tb), GM, GN, GK, 1.0f, da, 0, (lda), db, 0, (ldb), 0.0f, dc, 0, (ldc), (biasbuf), (boff), \
            (epi))
    /* Enums: one past the end and negative, each on its own. */
    REFUSED(GEMM((sw_dtype)-1, SW_OP_N, SW_OP_N, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "dtype = -1", "SW_DTYPE_F32");
    REFUSED(GEMM((sw_dtype)6, SW_OP_N, SW_OP_N, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "dtype = 6", NULL);
    REFUSED(GEMM(SW_DTYPE_F32, (sw_op)2, SW_OP_N, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "trans_a = 2", "SW_OP_T");
    REFUSED(GEMM(SW_DTYPE_F32, (sw_op)-1, SW_OP_N, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "trans_a = -1", NULL);
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, (sw_op)2, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "trans_b = 2", "SW_OP_N");
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, (sw_op)-1, GK, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "trans_b = -1", NULL);
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN, GN, NULL, 0, (sw_epilogue)2), "epilogue = 2",
            "SW_EPILOGUE_GELU");
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN, GN, NULL, 0, (sw_epilogue)-1), "epilogue = -1", NULL);
    /* Bias of n - 1 elements: a buffer one element short, and the full one at offset 1. */
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN, GN, dbias_short, 0, SW_EPILOGUE_NONE), "bias", NULL);
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN, GN, dbias, 1, SW_EPILOGUE_NONE), "bias", NULL);
    /* Leading dimensions one too small (the buffers are big enough for either reading). */
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN, GN - 1, NULL, 0, SW_EPILOGUE_NONE), "ldc = 10", "ldc >= 11");
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK, GN - 1, GN, NULL, 0, SW_EPILOGUE_NONE), "ldb = 10", "as stored (k x n = 9 x 11, trans_b = N); expected ldb >= 11");
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_N, GK - 1, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "lda = 8", "as stored (m x k = 7 x 9, trans_a = N); expected lda >= 9");
    /* Transposed: A stored k x m (lda >= m), B stored n x k (ldb >= k). */
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_T, SW_OP_N, GM - 1, GN, GN, NULL, 0, SW_EPILOGUE_NONE), "lda = 6", "as stored (k x m = 9 x 7, trans_a = T); expected lda >= 7");
    REFUSED(GEMM(SW_DTYPE_F32, SW_OP_N, SW_OP_T, GK, GK - 1, GN, NULL, 0, SW_EPILOGUE_NONE), "ldb = 8", "as stored (n x k = 11 x 9, trans_b = T); expected ldb >= 9");
    /* C one element short of m x n at offset 1 (extent check, not the ldc check). */
    REFUSED(sw_gemm(s, SW_DTYPE_F32, SW_OP_N, SW_OP_N, GM, GN, GK, 1.0f, da, 0, GK, db, 0, GN, 0.0f, dc,
                    (uint64_t)(nc - GM * GN + 1), GN, NULL, 0, SW_EPILOGUE_NONE),
            "c", NULL);
#undef GEMM
    /* Nothing refused was queued: C is exactly as uploaded. */
    OK(sw_stream_synchronize(s));
    CHECK(unchanged(dc, s, c, nc), "a refused sw_gemm wrote C");

    OK(sw_buffer_destroy(da));
    OK(sw_buffer_destroy(db));
    OK(sw_buffer_destroy(dc));
    OK(sw_buffer_destroy(dbias));
    OK(sw_buffer_destroy(dbias_short));
}

/* ------------------------------------------------------------------ shard math */

static void check_shard_range(void) {
    int64_t off = -7, cnt = -7;
    /* Every index of every split of small totals: contiguous, even, complete. */
    for (int32_t parts = 1; parts <= 9; ++parts)
        for (int64_t total = 0; total <= 40; ++total) {
            int64_t at = 0;
            for (int32_t i = 0; i < parts; ++i) {
                OK(sw_shard_range(total, parts, i, &off, &cnt));
                const int64_t want = total / parts + (i < total % parts ? 1 : 0);
                CHECK(off == at && cnt == want, "shard %d of %lld over %d: [%lld, +%lld), expected [%lld, +%lld)", (int)i,
                      (long long)total, (int)parts, (long long)off, (long long)cnt, (long long)at, (long long)want);
                at += cnt;
            }
            CHECK(at == total, "shards of %lld over %d cover %lld", (long long)total, (int)parts, (long long)at);
        }
    off = cnt = -7;
    REFUSED(sw_shard_range(10, 2, 2, &off, &cnt), "index = 2", "index < 2");
    REFUSED(sw_shard_range(10, 1, 1, &off, &cnt), "index = 1", NULL);
    REFUSED(sw_shard_range(0, 3, 3, &off, &cnt), "index = 3", NULL);
    REFUSED(sw_shard_range(10, 2, -1, &off, &cnt), "index = -1", NULL);
    REFUSED(sw_shard_range(10, 0, 0, &off, &cnt), "parts = 0", NULL);
    REFUSED(sw_shard_range(-1, 2, 0, &off, &cnt), "total = -1", NULL);
    CHECK(off == -7 && cnt == -7, "a refused sw_shard_range must not write its outputs");
}

/* The tree's node [a, b) of leaves at depth log2(parts), written here by halving (not the library's code). */
static void tree_node(int64_t a, int64_t b, int32_t parts, int32_t index, int64_t* lo, int64_t* hi) {
    while (parts > 1) {
        const int64_t mid = b - a > 1 ? a + (b - a + 1) / 2 : b;
        parts /= 2;
        if (index < parts) b = mid;
        else { a = mid; index -= parts; }
    }
    *lo = a;
    *hi = b;
}

static void check_tree_range(void) {
    int64_t off = -7, cnt = -7;
    /* Every node of every power-of-two split of small totals and leaves: contiguous, complete, whole leaves. */
    for (int32_t parts = 1; parts <= 16; parts *= 2)
        for (int64_t leaf = 1; leaf <= 7; ++leaf)
            for (int64_t total = 0; total <= 60; ++total) {
                const int64_t n = (total + leaf - 1) / leaf;
                int64_t at = 0;
                for (int32_t i = 0; i < parts; ++i) {
                    OK(sw_tree_range(total, leaf, parts, i, &off, &cnt));
                    int64_t lo, hi;
                    tree_node(0, n, parts, i, &lo, &hi);
                    const int64_t a = lo * leaf < total ? lo * leaf : total, b = hi * leaf < total ? hi * leaf : total;
                    CHECK(off == a && cnt == b - a && off == at, "tree node %d of %lld (leaf %lld) over %d: [%lld, +%lld), expected [%lld, +%lld)",
                          (int)i, (long long)total, (long long)leaf, (int)parts, (long long)off, (long long)cnt, (long long)a,
                          (long long)(b - a));
                    at += cnt;
                }
                CHECK(at == total, "tree nodes of %lld over %d cover %lld", (long long)total, (int)parts, (long long)at);
            }
    /* A leaf near INT64_MAX: no overflow in the node bounds. */
    OK(sw_tree_range(INT64_MAX, INT64_MAX / 2 + 1, 2, 1, &off, &cnt));
    CHECK(off == INT64_MAX / 2 + 1 && cnt == INT64_MAX - off, "a huge leaf: [%lld, +%lld)", (long long)off, (long long)cnt);
    off = cnt = -7;
    REFUSED(sw_tree_range(100, 8, 3, 0, &off, &cnt), "parts = 3", "power of two");
    REFUSED(sw_tree_range(100, 8, 0, 0, &off, &cnt), "parts = 0", NULL);
    REFUSED(sw_tree_range(100, 0, 2, 0, &off, &cnt), "leaf = 0", NULL);
    REFUSED(sw_tree_range(100, 8, 4, 4, &off, &cnt), "index = 4", NULL);
    REFUSED(sw_tree_range(-1, 8, 2, 0, &off, &cnt), "total = -1", NULL);
    CHECK(off == -7 && cnt == -7, "a refused sw_tree_range must not write its outputs");
    CHECK(sw_tree_range(100, 8, 2, 0, NULL, &cnt) == SW_ERR_NULL_HANDLE, "a NULL offset");
}

/* ------------------------------------------------------------------ buffers, copies, events */

static void check_buffers(sw_device dev, sw_stream s) {
    enum { BYTES = 256 };
    unsigned char host[BYTES], back[BYTES];
    for (int i = 0; i < BYTES; ++i) host[i] = (unsigned char)(rng_state = rng_state * 1103515245u + 12345u) >> 3;

    /* sw_buffer_wrap: sizes no memory can have, or that run past the end of the address space. */
    sw_buffer w = (sw_buffer)1;
    REFUSED(sw_buffer_wrap(dev, host, UINT64_MAX, &w), "bytes", NULL);
    CHECK(w == NULL, "a refused sw_buffer_wrap leaves *out NULL");
    REFUSED(sw_buffer_wrap(dev, host, (UINT64_C(1) << 50) + 1, &w), "bytes", "2^50");
    REFUSED(sw_buffer_wrap(dev, (void*)(UINTPTR_MAX - 63), 64, &w), "address space", NULL);
    OK(sw_buffer_wrap(dev, (void*)(UINTPTR_MAX - 64), 64, &w)); /* ends exactly at the top: never touched here */
    OK(sw_buffer_destroy(w));
    OK(sw_buffer_wrap(dev, host, BYTES, &w));

    /* Copies of 0 bytes: an offset at the end is fine, one past the end is not (as for any other size). */
    sw_buffer d = NULL;
    OK(sw_buffer_alloc(dev, BYTES, &d));
    OK(sw_memcpy_h2d_async(d, 0, host, BYTES, s));
    OK(sw_memcpy_h2d_async(d, BYTES, host, 0, s));
    OK(sw_memcpy_d2h_async(back, d, BYTES, 0, s));
    OK(sw_memcpy_d2d_async(d, BYTES, w, BYTES, 0, s));
    OK(sw_memset_async(d, BYTES, 0, 0, s));
    REFUSED(sw_memcpy_h2d_async(d, BYTES + 1, host, 0, s), "dst", NULL);
    REFUSED(sw_memcpy_d2h_async(back, d, BYTES + 1, 0, s), "src", NULL);
    REFUSED(sw_memcpy_d2d_async(d, BYTES + 1, w, 0, 0, s), "dst", NULL);
    REFUSED(sw_memcpy_d2d_async(d, 0, w, BYTES + 1, 0, s), "src", NULL);
    REFUSED(sw_memset_async(d, BYTES + 1, 0, 0, s), "dst", NULL);
    REFUSED(sw_memcpy_h2d_async(d, UINT64_MAX, host, 0, s), "dst", NULL);
    /* And one byte past the end with a size. */
    REFUSED(sw_memcpy_h2d_async(d, 1, host, BYTES, s), "dst", NULL);
    REFUSED(sw_memset_async(d, BYTES - 3, 0, 4, s), "dst", NULL);
    OK(sw_memcpy_d2h_async(back, d, 0, BYTES, s));
    OK(sw_stream_synchronize(s));
    CHECK(memcmp(back, host, BYTES) == 0, "the buffer changed through refused or empty copies");

    /* sw_event_elapsed_ms: start then end is >= 0; swapped is an error that says so. */
    sw_event e0 = NULL, e1 = NULL;
    OK(sw_event_create(dev, &e0));
    OK(sw_event_create(dev, &e1));
    OK(sw_event_record(e0, s));
    OK(sw_stream_synchronize(s));
    for (int i = 0; i < 64; ++i) OK(sw_memset_async(d, 0, (uint8_t)i, BYTES, s)); /* some work between the two */
    OK(sw_event_record(e1, s));
    OK(sw_stream_synchronize(s));
    double ms = -1;
    OK(sw_event_elapsed_ms(e0, e1, &ms));
    CHECK(ms >= 0, "elapsed start -> end = %g ms", ms);
    ms = 12345;
    REFUSED(sw_event_elapsed_ms(e1, e0, &ms), "end event was recorded before the start event", NULL);
    CHECK(ms == 12345, "a refused sw_event_elapsed_ms must not write *ms (got %g)", ms);
    OK(sw_event_destroy(e0));
    OK(sw_event_destroy(e1));
    OK(sw_buffer_destroy(d));
    OK(sw_buffer_destroy(w));
}

/* ------------------------------------------------------------------ collectives */

static void check_collectives(sw_device dev, sw_stream s0, sw_stream s1) {
    sw_device devs[2] = {dev, dev};
    sw_comm comm = NULL;
    OK(sw_comm_create_local(2, devs, 10000, &comm));
    enum { COUNT = 6 };
    float x0[2 * COUNT], x1[2 * COUNT];
    for (int i = 0; i < 2 * COUNT; ++i) {
        x0[i] = frand();
        x1[i] = frand();
    }
    sw_buffer b0 = upload(dev, s0, x0, 2 * COUNT), b1 = upload(dev, s1, x1, 2 * COUNT);
    /* Refused before the call is numbered: the ranks stay in step, nothing is queued. */
    REFUSED(sw_all_reduce(comm, 0, b0, 0, b0, 0, COUNT, (sw_dtype)-1, SW_REDUCE_SUM, s0), "dtype = -1", "SW_DTYPE_F32");
    REFUSED(sw_all_reduce(comm, 0, b0, 0, b0, 0, COUNT, (sw_dtype)6, SW_REDUCE_SUM, s0), "dtype = 6", NULL);
    REFUSED(sw_all_reduce(comm, 0, b0, 0, b0, 0, COUNT, SW_DTYPE_F32, (sw_reduce_op)-1, s0), "op = -1", "SW_REDUCE_SUM");
    REFUSED(sw_all_reduce(comm, 0, b0, 0, b0, 0, COUNT, SW_DTYPE_F32, (sw_reduce_op)2, s0), "op = 2", "SW_REDUCE_SUM_TREE");
    REFUSED(sw_reduce_scatter(comm, 0, b0, 0, b0, 0, COUNT, SW_DTYPE_F32, (sw_reduce_op)2, s0), "op = 2", NULL);
    REFUSED(sw_reduce_scatter_v(comm, 0, b0, 0, 2 * COUNT, b0, 0, COUNT, SW_DTYPE_F32, (sw_reduce_op)-1, s0), "op = -1",
            NULL);
    REFUSED(sw_all_gather(comm, 0, b0, 0, b0, 0, COUNT, (sw_dtype)-1, s0), "dtype = -1", NULL);
    REFUSED(sw_all_gather_v(comm, 0, b0, 0, COUNT, b0, 0, 2 * COUNT, (sw_dtype)6, s0), "dtype = 6", NULL);
    REFUSED(sw_all_gather_columns(comm, 0, b0, 0, 2, 3, 3, b0, 0, 6, (sw_dtype)-1, s0), "dtype = -1", NULL);
    REFUSED(sw_broadcast(comm, 0, b0, 0, COUNT, (sw_dtype)-1, 0, s0), "dtype = -1", NULL);
    /* Counts one too large for the buffers. */
    REFUSED(sw_all_gather(comm, 0, b0, 0, b0, 0, COUNT + 1, SW_DTYPE_F32, s0), "recv", NULL);
    REFUSED(sw_reduce_scatter(comm, 0, b0, 0, b0, 0, COUNT + 1, SW_DTYPE_F32, SW_REDUCE_SUM, s0), "send", NULL);
    OK(sw_stream_synchronize(s0));
    CHECK(unchanged(b0, s0, x0, 2 * COUNT), "a refused collective wrote its buffer");
    /* The communicator is still usable and in step: a real all-reduce gives the sum on both ranks. */
    OK(sw_all_reduce(comm, 0, b0, 0, b0, 0, 2 * COUNT, SW_DTYPE_F32, SW_REDUCE_SUM, s0));
    OK(sw_all_reduce(comm, 1, b1, 0, b1, 0, 2 * COUNT, SW_DTYPE_F32, SW_REDUCE_SUM, s1));
    OK(sw_stream_synchronize(s0));
    OK(sw_stream_synchronize(s1));
    float r0[2 * COUNT], r1[2 * COUNT];
    OK(sw_memcpy_d2h_async(r0, b0, 0, sizeof r0, s0));
    OK(sw_memcpy_d2h_async(r1, b1, 0, sizeof r1, s1));
    OK(sw_stream_synchronize(s0));
    OK(sw_stream_synchronize(s1));
    for (int i = 0; i < 2 * COUNT; ++i)
        CHECK(r0[i] == x0[i] + x1[i] && r1[i] == r0[i], "all-reduce[%d] = %g / %g, expected %g", i, r0[i], r1[i],
              x0[i] + x1[i]);
    OK(sw_comm_destroy(comm));
    OK(sw_buffer_destroy(b0));
    OK(sw_buffer_destroy(b1));
}

/* ------------------------------------------------------------------ mixed-precision training ops
 * sw_convert, sw_unscale_check, sw_axpy: each bad argument refused naming it, outputs untouched; a dtype the backend
 * lacks is SW_ERR_UNSUPPORTED naming it; then the operations themselves on edge values. */

static void unsupported(const char* what, sw_status st, const char* word1, const char* word2) {
    const char* msg = sw_last_error();
    if (st != SW_ERR_UNSUPPORTED || (word1 && !strstr(msg, word1)) || (word2 && !strstr(msg, word2))) {
        ++failures;
        fprintf(stderr, "FAIL %s: returned %s (expected SW_ERR_UNSUPPORTED naming '%s' and '%s'); message: %s\n", what,
                sw_status_string(st), word1 ? word1 : "", word2 ? word2 : "", st == SW_OK ? "(none)" : msg);
    }
}
#define UNSUPPORTED(call, w1, w2) unsupported(#call, (call), (w1), (w2))

static void check_training_ops(sw_device dev, sw_stream s) {
    enum { N = 8 };
    float xs[N], ys[N], flag0[2] = {0.0f, 0.0f};
    for (int i = 0; i < N; ++i) { xs[i] = frand(); ys[i] = frand(); }
    sw_buffer x = upload(dev, s, xs, N), y = upload(dev, s, ys, N), flag = upload(dev, s, flag0, 2);

    /* sw_convert */
    REFUSED(sw_convert(s, (sw_dtype)-1, x, 0, SW_DTYPE_BF16, y, 0, 4), "src_type = -1", "SW_DTYPE_F32");
    REFUSED(sw_convert(s, SW_DTYPE_F32, x, 0, (sw_dtype)6, y, 0, 4), "dst_type = 6", NULL);
    REFUSED(sw_convert(s, SW_DTYPE_F32, x, 5, SW_DTYPE_BF16, y, 0, 4), "src", "9"); /* 5 + 4 > 8 floats */
    REFUSED(sw_convert(s, SW_DTYPE_F32, x, 0, SW_DTYPE_BF16, y, 13, 4), "dst", NULL); /* 13 + 4 > 16 bf16 */
    REFUSED(sw_convert(s, SW_DTYPE_F32, x, 0, SW_DTYPE_BF16, x, 2, 4), "overlap", NULL);
    REFUSED(sw_convert(s, SW_DTYPE_F32, x, 1, SW_DTYPE_F32, x, 0, 4), "overlap", NULL);
    UNSUPPORTED(sw_convert(s, SW_DTYPE_I32, x, 0, SW_DTYPE_F32, y, 0, 4), "src_type = i32", "sw_convert");
    UNSUPPORTED(sw_convert(s, SW_DTYPE_F32, x, 0, SW_DTYPE_F64, y, 0, 2), "dst_type = f64", NULL);
    CHECK(sw_convert(NULL, SW_DTYPE_F32, x, 0, SW_DTYPE_BF16, y, 0, 4) == SW_ERR_NULL_HANDLE, "sw_convert(NULL stream)");
    OK(sw_convert(s, SW_DTYPE_F32, x, 8, SW_DTYPE_BF16, y, 16, 0)); /* count 0 at the very end: nothing to do */
    OK(sw_convert(s, SW_DTYPE_F32, x, 0, SW_DTYPE_F32, x, 0, 8));   /* the same range, same type: a no-op */
    OK(sw_stream_synchronize(s));
    CHECK(unchanged(x, s, xs, N) && unchanged(y, s, ys, N), "a refused sw_convert wrote its output");

    /* sw_unscale_check */
    REFUSED(sw_unscale_check(s, (sw_dtype)7, x, 0, 4, 2.0f, flag, 0), "dtype = 7", NULL);
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, 0.0f, flag, 0), "scale", "> 0");
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, -1.0f, flag, 0), "scale", NULL);
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, INFINITY, flag, 0), "scale", "finite");
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, NAN, flag, 0), "scale", NULL);
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 9, 2.0f, flag, 0), "buf", NULL);
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, 2.0f, flag, 2), "flag", NULL); /* 2 + 1 > 2 floats */
    REFUSED(sw_unscale_check(s, SW_DTYPE_F32, x, 0, 4, 2.0f, x, 3), "flag", "inside");
    UNSUPPORTED(sw_unscale_check(s, SW_DTYPE_F64, x, 0, 2, 2.0f, flag, 0), "dtype = f64", "sw_unscale_check");
    OK(sw_stream_synchronize(s));
    CHECK(unchanged(x, s, xs, N) && unchanged(flag, s, flag0, 2), "a refused sw_unscale_check wrote its output");

    /* sw_axpy */
    REFUSED(sw_axpy(s, (sw_dtype)-5, 1.0f, x, 0, y, 0, 4), "x_type = -5", NULL);
    REFUSED(sw_axpy(s, SW_DTYPE_F32, INFINITY, x, 0, y, 0, 4), "alpha", "finite");
    REFUSED(sw_axpy(s, SW_DTYPE_F32, 1.0f, x, 0, y, 5, 4), "y", NULL);
    REFUSED(sw_axpy(s, SW_DTYPE_BF16, 1.0f, x, 0, x, 1, 4), "overlap", NULL);
    UNSUPPORTED(sw_axpy(s, SW_DTYPE_U8, 1.0f, x, 0, y, 0, 4), "x_type = u8", "sw_axpy");
    OK(sw_stream_synchronize(s));
    CHECK(unchanged(x, s, xs, N) && unchanged(y, s, ys, N), "a refused sw_axpy wrote its output");

    /* The operations: f32 -> bf16 -> f32 and f32 -> f16 -> f32 on edge values (bit patterns written out by hand). */
    {
        const float in[N] = {1.0f + 1.0f / 256.0f, /* a tie: bf16 rounds to even, 1.0 */
                             1.0f + 3.0f / 256.0f, /* a tie: rounds up to 1 + 2/128 */
                             -0.0f, INFINITY, 65520.0f /* fp16: rounds to inf */, 65519.0f /* fp16: 65504 */,
                             5.9604645e-08f /* 2^-24: smallest fp16 subnormal */, NAN};
        const float bf[N] = {1.0f, 1.0f + 2.0f / 128.0f, -0.0f, INFINITY, 65536.0f, 65536.0f, 5.9604645e-08f, NAN};
        const float hf[N] = {1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f, -0.0f, INFINITY, INFINITY, 65504.0f,
                             5.9604645e-08f, NAN};
        float got[N];
        sw_buffer in_b = upload(dev, s, in, N), mid = NULL, out = upload(dev, s, ys, N);
        OK(sw_buffer_alloc(dev, N * 2, &mid));
        for (int pass = 0; pass < 2; ++pass) {
            const sw_dtype t = pass == 0 ? SW_DTYPE_BF16 : SW_DTYPE_F16;
            const float* want = pass == 0 ? bf : hf;
            OK(sw_convert(s, SW_DTYPE_F32, in_b, 0, t, mid, 0, N));
            OK(sw_convert(s, t, mid, 0, SW_DTYPE_F32, out, 0, N));
            OK(sw_memcpy_d2h_async(got, out, 0, sizeof got, s));
            OK(sw_stream_synchronize(s));
            for (int i = 0; i < N; ++i)
                CHECK(isnan(want[i]) ? isnan(got[i]) : (got[i] == want[i] && signbit(got[i]) == signbit(want[i])),
                      "sw_convert through %s: element %d = %.9g became %.9g; expected %.9g", pass ? "f16" : "bf16", i,
                      (double)in[i], (double)got[i], (double)want[i]);
        }
        /* unscale: finite values divided by 4 exactly; the flag stays 0 ... */
        const float g[4] = {8.0f, -2.0f, 0.5f, 1e-3f};
        sw_buffer gb = upload(dev, s, g, 4);
        OK(sw_unscale_check(s, SW_DTYPE_F32, gb, 0, 4, 4.0f, flag, 1));
        OK(sw_memcpy_d2h_async(got, gb, 0, 4 * sizeof(float), s));
        OK(sw_memcpy_d2h_async(got + 4, flag, 0, 2 * sizeof(float), s));
        OK(sw_stream_synchronize(s));
        for (int i = 0; i < 4; ++i) CHECK(got[i] == g[i] * 0.25f, "unscale element %d: %g", i, (double)got[i]);
        CHECK(got[4] == 0.0f && got[5] == 0.0f, "the flag was set by finite gradients: %g %g", (double)got[4], (double)got[5]);
        /* ... one infinity in bf16 sets flag[1] and only it */
        OK(sw_convert(s, SW_DTYPE_F32, in_b, 0, SW_DTYPE_BF16, mid, 0, N)); /* element 3 is inf, 7 NaN */
        OK(sw_unscale_check(s, SW_DTYPE_BF16, mid, 2, 2, 2.0f, flag, 1));   /* -0 and inf */
        OK(sw_memcpy_d2h_async(got + 4, flag, 0, 2 * sizeof(float), s));
        OK(sw_stream_synchronize(s));
        CHECK(got[4] == 0.0f && got[5] == 1.0f, "an inf did not set flag[1] alone: %g %g", (double)got[4], (double)got[5]);
        /* axpy: y = y + alpha * x with x in bf16 (element 0 = 1.0, 1 = 1 + 2/128) */
        const float y0[2] = {0.25f, -1.0f};
        sw_buffer yb = upload(dev, s, y0, 2);
        OK(sw_axpy(s, SW_DTYPE_BF16, -0.5f, mid, 0, yb, 0, 2));
        OK(sw_memcpy_d2h_async(got, yb, 0, 2 * sizeof(float), s));
        OK(sw_stream_synchronize(s));
        CHECK(got[0] == -0.25f && got[1] == -1.0f - 0.5f * (1.0f + 2.0f / 128.0f), "axpy: %g %g", (double)got[0],
              (double)got[1]);
        OK(sw_buffer_destroy(in_b));
        OK(sw_buffer_destroy(mid));
        OK(sw_buffer_destroy(out));
        OK(sw_buffer_destroy(gb));
        OK(sw_buffer_destroy(yb));
    }
    OK(sw_buffer_destroy(x));
    OK(sw_buffer_destroy(y));
    OK(sw_buffer_destroy(flag));
}

int main(void) {
    sw_device dev = NULL;
    sw_stream s0 = NULL, s1 = NULL;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 2, &dev));
    OK(sw_stream_create(dev, &s0));
    OK(sw_stream_create(dev, &s1));
    if (!dev || !s0 || !s1) return 1;

    check_enums(dev, s0);
    check_gemm(dev, s0);
    check_shard_range();
    check_tree_range();
    check_buffers(dev, s0);
    check_collectives(dev, s0, s1);
    check_training_ops(dev, s0);

    OK(sw_stream_destroy(s0));
    OK(sw_stream_destroy(s1));
    OK(sw_device_destroy(dev));
    if (failures) {
        fprintf(stderr, "c_api_args_check: %d failure(s)\n", failures);
        return 1;
    }
    printf("c_api_args_check: all checks passed\n");
    return 0;
}
