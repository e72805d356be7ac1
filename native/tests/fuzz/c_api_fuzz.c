/* libFuzzer target over the C ABI (./build.sh fuzz [seconds]; clang-14, -fsanitize=fuzzer,address,undefined).
 *
 * Each input is decoded into a sequence of C ABI calls on the CPU backend: devices, buffers (allocated and wrapped),
 * streams and events created and destroyed; copies and memsets with offsets and sizes around the edges of their
 * buffers; sw_gemm with small random shapes, leading dimensions, offsets, ops, dtypes and epilogues (valid or one off);
 * activations; the shard index math; collectives on a small in-process communicator (2 or 3 ranks on one device, one
 * stream per rank) driven from this one thread; NULL, foreign and destroyed handles. The harness knows, for every call,
 * whether its arguments are valid, and checks the library against that:
 *   - a call that returns SW_OK on invalid input is a bug (abort);
 *   - a valid call that is refused is a bug (abort);
 *   - a refused call leaves *out untouched / NULL as documented; results of valid collectives are checked
 *     (all-reduce f32 against the rank-order sum, all-gather against the concatenation);
 * and ASan/UBSan (halting on the first report: -fno-sanitize-recover=all) check everything the library does on the
 * way. Compiled as C: any 32-bit value may be passed as an enum, as a C caller may. Everything is destroyed at the end
 * of each input except one device, kept for speed. */
#include "shardwise.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ input decoding */

typedef struct {
    const uint8_t* p;
    size_t n, at;
} Reader;

static uint8_t u8(Reader* r) { return r->at < r->n ? r->p[r->at++] : 0; }
static uint32_t u32(Reader* r) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | u8(r);
    return v;
}
static uint64_t u64(Reader* r) { return (uint64_t)u32(r) << 32 | u32(r); }
static int more(const Reader* r) { return r->at < r->n; }

/* A size or offset near the edge of `cap`: 0, cap, cap + 1, cap - 1, something inside, or absurd. */
static uint64_t edge(Reader* r, uint64_t cap) {
    switch (u8(r) % 10) {
    case 0: return 0;
    case 1: return cap;
    case 2: return cap + 1;
    case 3: return cap ? cap - 1 : 0;
    case 4: return UINT64_MAX;
    case 5: return UINT64_C(1) << 63;
    case 6: return (uint64_t)u32(r);
    default: return cap ? u8(r) % (cap + 1) : 0;
    }
}

/* An enum value: mostly valid (0..valid-1), else just outside, negative or anything. */
static int32_t enum_value(Reader* r, int32_t valid) {
    switch (u8(r) % 8) {
    case 0: return valid;
    case 1: return -1;
    case 2: return (int32_t)u32(r);
    default: return (int32_t)(u8(r) % valid);
    }
}

#define FAILF(...)                                                                                       \
    do {                                                                                                 \
        fprintf(stderr, "c_api_fuzz: invariant violated at %s:%d: ", __FILE__, __LINE__);               \
        fprintf(stderr, __VA_ARGS__);                                                                    \
        fprintf(stderr, "\n  last error: %s\n", sw_last_error());                                       \
        abort();                                                                                         \
    } while (0)

/* Checks a call's status against the harness's expectation. */
static void expect(sw_status st, int valid, const char* call) {
    if (!valid && st == SW_OK) FAILF("%s returned SW_OK on invalid input", call);
    if (valid && st != SW_OK) FAILF("%s refused valid input: %s", call, sw_status_string(st));
    if (st != SW_OK && sw_last_error()[0] == '\0') FAILF("%s failed (%s) without a message", call, sw_status_string(st));
}

/* ------------------------------------------------------------------ objects */

enum { MAX_DEV = 3, MAX_BUF = 8, MAX_STREAM = 3, MAX_EVENT = 3, MAX_DEAD = 16, MAX_RANKS = 3, COMM_ELEMS = 64 };

typedef struct {
    sw_buffer h;
    uint64_t bytes;
    int dev;
} Buf;

typedef struct {
    sw_stream h;
    int dev;
    int maybe_error; /* may hold an asynchronous error (never: every refused call is refused synchronously) */
} Strm;

typedef struct {
    sw_event h;
    int dev;
    int recorded;
} Evt;

static sw_device g_dev0; /* kept across inputs: thread pools are slow to make */
static sw_device devs[MAX_DEV];
static Buf bufs[MAX_BUF];
static Strm streams[MAX_STREAM];
static Evt events[MAX_EVENT];
static void* dead[MAX_DEAD]; /* destroyed handles */
static int ndead;

static sw_comm comm;
static int world, comm_dead;
static sw_stream rank_stream[MAX_RANKS];
static sw_buffer rank_send[MAX_RANKS], rank_recv[MAX_RANKS];

/* Host memory for copies and for wrapped buffers: 64-byte aligned, larger than any buffer made here. */
enum { HOST_BYTES = 1 << 16, MAX_BUF_BYTES = 1 << 13 };
static _Alignas(64) uint8_t host_src[HOST_BYTES];
static _Alignas(64) uint8_t host_dst[HOST_BYTES];
static _Alignas(64) uint8_t wrap_arena[MAX_BUF][MAX_BUF_BYTES];

static int live_anywhere(const void* h) {
    if (h == g_dev0) return 1;
    for (int i = 0; i < MAX_DEV; ++i) if (devs[i] == h) return 1;
    for (int i = 0; i < MAX_BUF; ++i) if (bufs[i].h == h) return 1;
    for (int i = 0; i < MAX_STREAM; ++i) if (streams[i].h == h) return 1;
    for (int i = 0; i < MAX_EVENT; ++i) if (events[i].h == h) return 1;
    for (int i = 0; i < MAX_RANKS; ++i)
        if (rank_stream[i] == h || rank_send[i] == h || rank_recv[i] == h) return 1;
    return h == comm;
}

static void bury(void* h) {
    dead[ndead % MAX_DEAD] = h;
    ++ndead;
}

static sw_device dev_of(int slot) { return slot < 0 ? g_dev0 : devs[slot]; }

/* Children of device slot d that the harness holds (the device cannot be destroyed while any exist). */
static int children(int d) {
    int n = 0;
    for (int i = 0; i < MAX_BUF; ++i) n += bufs[i].h && bufs[i].dev == d;
    for (int i = 0; i < MAX_STREAM; ++i) n += streams[i].h && streams[i].dev == d;
    for (int i = 0; i < MAX_EVENT; ++i) n += events[i].h && events[i].dev == d;
    return n;
}

/* A device slot: -1 (the kept device) or a live extra device. */
static int pick_dev(Reader* r) {
    int d = (int)(u8(r) % (MAX_DEV + 1)) - 1;
    return d >= 0 && !devs[d] ? -1 : d;
}

/* An arbitrary pointer that is not a live handle: NULL, a destroyed handle, or the address of something else. */
static void* bad_handle(Reader* r) {
    static int not_a_handle;
    switch (u8(r) % 4) {
    case 0: return NULL;
    case 1:
        if (ndead) {
            void* h = dead[u8(r) % (ndead < MAX_DEAD ? ndead : MAX_DEAD)];
            if (!live_anywhere(h)) return h; /* the address may have been reused by a live handle */
        }
        return &not_a_handle;
    case 2: return &not_a_handle;
    default: return (void*)(uintptr_t)(0x1000u + (u8(r) << 4));
    }
}

/* ------------------------------------------------------------------ index math (the harness's own, in 128 bits) */

typedef unsigned __int128 u128;

/* Does a rows x cols matrix (leading dimension ld) at element offset off fit in cap elements? */
static int matrix_fits(uint64_t cap, uint64_t off, int64_t rows, int64_t cols, int64_t ld) {
    if (rows <= 0 || cols <= 0) return off <= cap;
    const u128 extent = (u128)(uint64_t)(rows - 1) * (uint64_t)ld + (uint64_t)cols;
    return off <= cap && extent <= (u128)(cap - off);
}

static int span_fits(uint64_t cap, uint64_t off, uint64_t count) { return off <= cap && count <= cap - off; }

/* ------------------------------------------------------------------ operations */

static void op_buffer_alloc(Reader* r) {
    const int i = u8(r) % MAX_BUF, d = pick_dev(r);
    if (bufs[i].h) return;
    uint64_t bytes;
    switch (u8(r) % 6) {
    case 0: bytes = 0; break;
    case 1: bytes = (UINT64_C(1) << 50) + 1; break;
    case 2: bytes = UINT64_MAX; break;
    default: bytes = 1 + u32(r) % MAX_BUF_BYTES; break;
    }
    sw_buffer h = (sw_buffer)&h;
    const sw_status st = sw_buffer_alloc(dev_of(d), bytes, &h);
    expect(st, bytes >= 1 && bytes <= MAX_BUF_BYTES, "sw_buffer_alloc");
    if (st != SW_OK) {
        if (h != NULL) FAILF("a refused sw_buffer_alloc left *out = %p", (void*)h);
        return;
    }
    bufs[i] = (Buf){h, bytes, d};
}

static void op_buffer_wrap(Reader* r) {
    const int i = u8(r) % MAX_BUF, d = pick_dev(r);
    if (bufs[i].h) return;
    void* ptr = wrap_arena[i];
    uint64_t bytes;
    int valid = 1;
    switch (u8(r) % 6) {
    case 0: bytes = 0; valid = 0; break;
    case 1: bytes = UINT64_MAX; valid = 0; break;
    case 2: bytes = (UINT64_C(1) << 50) + 1; valid = 0; break;
    case 3: ptr = (void*)(UINTPTR_MAX - 63); bytes = 64 + u8(r) % 64 + 1; valid = 0; break; /* wraps around */
    case 4: ptr = NULL; bytes = 64; valid = 0; break;
    default: bytes = 1 + u32(r) % MAX_BUF_BYTES; break;
    }
    sw_buffer h = (sw_buffer)&h;
    const sw_status st = sw_buffer_wrap(dev_of(d), ptr, bytes, &h);
    expect(st, valid, "sw_buffer_wrap");
    if (st != SW_OK) {
        if (h != NULL) FAILF("a refused sw_buffer_wrap left *out = %p", (void*)h);
        return;
    }
    bufs[i] = (Buf){h, bytes, d};
}

static void op_buffer_destroy(Reader* r) {
    const int i = u8(r) % MAX_BUF;
    if (!bufs[i].h) {
        void* h = bad_handle(r);
        const sw_status st = sw_buffer_destroy((sw_buffer)h);
        expect(st, h == NULL, "sw_buffer_destroy(bad handle)");
        return;
    }
    expect(sw_buffer_destroy(bufs[i].h), 1, "sw_buffer_destroy");
    bury(bufs[i].h);
    bufs[i].h = NULL;
}

static void op_stream(Reader* r) {
    const int i = u8(r) % MAX_STREAM;
    if (!streams[i].h) {
        const int d = pick_dev(r);
        sw_stream h = NULL;
        expect(sw_stream_create(dev_of(d), &h), 1, "sw_stream_create");
        streams[i] = (Strm){h, d, 0};
        return;
    }
    switch (u8(r) % 3) {
    case 0: {
        const sw_status st = sw_stream_synchronize(streams[i].h);
        if (!streams[i].maybe_error) expect(st, 1, "sw_stream_synchronize");
        streams[i].maybe_error = 0;
        break;
    }
    case 1:
        expect(sw_stream_destroy(streams[i].h), 1, "sw_stream_destroy");
        bury(streams[i].h);
        streams[i].h = NULL;
        break;
    default: {
        void* h = bad_handle(r);
        expect(sw_stream_synchronize((sw_stream)h), 0, "sw_stream_synchronize(bad handle)");
        void* native = &native;
        expect(sw_stream_get_native((sw_stream)h, &native), 0, "sw_stream_get_native(bad handle)");
        break;
    }
    }
}

static void op_event(Reader* r) {
    const int i = u8(r) % MAX_EVENT, j = u8(r) % MAX_STREAM;
    if (!events[i].h) {
        const int d = pick_dev(r);
        sw_event h = NULL;
        expect(sw_event_create(dev_of(d), &h), 1, "sw_event_create");
        events[i] = (Evt){h, d, 0};
        return;
    }
    Evt* e = &events[i];
    Strm* s = &streams[j];
    switch (u8(r) % 6) {
    case 0:
        if (s->h) {
            /* CPU events may be recorded on any CPU stream. */
            expect(sw_event_record(e->h, s->h), 1, "sw_event_record");
            e->recorded = 1;
        }
        break;
    case 1: expect(sw_event_synchronize(e->h), 1, "sw_event_synchronize"); break;
    case 2: {
        int32_t done = -1;
        expect(sw_event_query(e->h, &done), 1, "sw_event_query");
        if (done != 0 && done != 1) FAILF("sw_event_query gave %d", (int)done);
        break;
    }
    case 3: {
        const int k = u8(r) % MAX_EVENT;
        if (!events[k].h) break;
        double ms = -12345;
        const sw_status st = sw_event_elapsed_ms(e->h, events[k].h, &ms);
        if (st == SW_OK && !(ms >= 0)) FAILF("sw_event_elapsed_ms returned %g ms", ms);
        if (st != SW_OK && ms != -12345) FAILF("a refused sw_event_elapsed_ms wrote %g", ms);
        break;
    }
    case 4:
        if (s->h) expect(sw_stream_wait_event(s->h, e->h), 1, "sw_stream_wait_event");
        break;
    default:
        expect(sw_event_destroy(e->h), 1, "sw_event_destroy");
        bury(e->h);
        e->h = NULL;
        break;
    }
}

/* A live buffer slot, or -1. */
static int pick_buf(Reader* r) {
    const int i = u8(r) % MAX_BUF;
    return bufs[i].h ? i : -1;
}

static void op_copy(Reader* r) {
    const int kind = u8(r) % 4, j = u8(r) % MAX_STREAM, a = pick_buf(r), b = pick_buf(r);
    Strm* s = &streams[j];
    if (!s->h || a < 0) return;
    const Buf* d = &bufs[a];
    const uint64_t off = edge(r, d->bytes), bytes = edge(r, d->bytes);
    const int same_dev = d->dev == s->dev;
    int valid = same_dev && span_fits(d->bytes, off, bytes);
    sw_status st;
    switch (kind) {
    case 0:
        if (valid && bytes > HOST_BYTES) return;
        for (uint64_t k = 0; k < 16 && k < HOST_BYTES; ++k) host_src[k] = u8(r);
        st = sw_memcpy_h2d_async(d->h, off, host_src, bytes, s->h);
        expect(st, valid, "sw_memcpy_h2d_async");
        break;
    case 1:
        if (valid && bytes > HOST_BYTES) return;
        st = sw_memcpy_d2h_async(host_dst, d->h, off, bytes, s->h);
        expect(st, valid, "sw_memcpy_d2h_async");
        break;
    case 2: {
        if (b < 0) return;
        const Buf* src = &bufs[b];
        const uint64_t soff = edge(r, src->bytes);
        /* CPU: the source may live on another CPU device (every device reads host memory). */
        valid = valid && span_fits(src->bytes, soff, bytes);
        st = sw_memcpy_d2d_async(d->h, off, src->h, soff, bytes, s->h);
        expect(st, valid, "sw_memcpy_d2d_async");
        break;
    }
    default:
        st = sw_memset_async(d->h, off, u8(r), bytes, s->h);
        expect(st, valid, "sw_memset_async");
        break;
    }
}

static void op_gemm(Reader* r) {
    const int j = u8(r) % MAX_STREAM;
    Strm* s = &streams[j];
    if (!s->h) return;
    const int ia = pick_buf(r), ib = pick_buf(r), ic = pick_buf(r), ibias = u8(r) % 3 == 0 ? pick_buf(r) : -1;
    const int32_t dtype = u8(r) % 4 == 0 ? enum_value(r, 6) : 0;
    const int32_t ta = enum_value(r, 2), tb = enum_value(r, 2), epi = enum_value(r, 2);
    int64_t m = 1 + u8(r) % 24, n = 1 + u8(r) % 24, k = u8(r) % 24;
    switch (u8(r) % 16) { /* now and then a shape that is not one */
    case 0: m = 0; break;
    case 1: n = -1; break;
    case 2: k = -1; break;
    default: break;
    }
    const int ta_t = ta == 1, tb_t = tb == 1;
    /* Leading dimensions at, below or above their minimum. */
    const int64_t a_cols = ta_t ? m : k, b_cols = tb_t ? k : n;
    const int64_t amin = a_cols > 1 ? a_cols : 1, bmin = b_cols > 1 ? b_cols : 1, cmin = n;
    int64_t ld[3];
    const int64_t mins[3] = {amin, bmin, cmin};
    for (int q = 0; q < 3; ++q) {
        switch (u8(r) % 8) {
        case 0: ld[q] = mins[q] - 1; break;
        case 1: ld[q] = INT64_MAX / 2; break;
        case 2: ld[q] = mins[q] + u8(r) % 8; break;
        default: ld[q] = mins[q]; break;
        }
    }
    float alpha = 1.0f + (float)(u8(r) % 4), beta = (float)(u8(r) % 3);
    if (u8(r) % 16 == 0) alpha = NAN;
    if (u8(r) % 16 == 0) beta = INFINITY;
    const uint64_t ao = u8(r) % 8, bo = u8(r) % 8, co = u8(r) % 8, biaso = u8(r) % 8;

    sw_buffer A = ia >= 0 ? bufs[ia].h : (sw_buffer)bad_handle(r);
    sw_buffer B = ib >= 0 ? bufs[ib].h : (sw_buffer)bad_handle(r);
    sw_buffer C = ic >= 0 ? bufs[ic].h : (sw_buffer)bad_handle(r);
    sw_buffer BIAS = ibias >= 0 ? bufs[ibias].h : NULL;

    /* The CPU backend computes sw_gemm in f32, f16 and bf16 (every operand, bias included, of that type). */
    const uint64_t es = dtype == SW_DTYPE_F32 ? 4 : dtype == SW_DTYPE_F16 || dtype == SW_DTYPE_BF16 ? 2 : 0;
    int valid = es != 0 && (ta == 0 || ta == 1) && (tb == 0 || tb == 1) && (epi == 0 || epi == 1) && m >= 1 &&
                n >= 1 && k >= 0 && isfinite(alpha) && isfinite(beta);
    valid = valid && ic >= 0 && bufs[ic].dev == s->dev && ld[2] >= cmin &&
            matrix_fits(bufs[ic].bytes / es, co, m, n, ld[2]);
    if (valid && k > 0)
        valid = ia >= 0 && ib >= 0 && bufs[ia].dev == s->dev && bufs[ib].dev == s->dev && ld[0] >= amin &&
                ld[1] >= bmin && matrix_fits(bufs[ia].bytes / es, ao, ta_t ? k : m, a_cols, ld[0]) &&
                matrix_fits(bufs[ib].bytes / es, bo, tb_t ? n : k, b_cols, ld[1]);
    if (valid && ibias >= 0)
        valid = bufs[ibias].dev == s->dev && span_fits(bufs[ibias].bytes / es, biaso, (uint64_t)n);
    const sw_status st = sw_gemm(s->h, (sw_dtype)dtype, (sw_op)ta, (sw_op)tb, m, n, k, alpha, A, ao, ld[0], B, bo, ld[1],
                                 beta, C, co, ld[2], BIAS, biaso, (sw_epilogue)epi);
    expect(st, valid, "sw_gemm");
}

static void op_gelu(Reader* r) {
    const int j = u8(r) % MAX_STREAM, ix = pick_buf(r), iy = pick_buf(r), back = u8(r) & 1;
    Strm* s = &streams[j];
    if (!s->h || ix < 0 || iy < 0) return;
    const int32_t dtype = u8(r) % 4 == 0 ? enum_value(r, 6) : 0;
    const uint64_t cap = bufs[ix].bytes / 4;
    const uint64_t xo = edge(r, cap), yo = edge(r, cap), count = edge(r, cap);
    int valid = dtype == 0 && bufs[ix].dev == s->dev && bufs[iy].dev == s->dev &&
                span_fits(bufs[ix].bytes / 4, xo, count) && span_fits(bufs[iy].bytes / 4, yo, count);
    sw_status st;
    if (back) {
        valid = valid && span_fits(bufs[iy].bytes / 4, xo, count); /* dy = y buffer at x's offset */
        st = sw_gelu_backward(s->h, (sw_dtype)dtype, bufs[ix].h, xo, bufs[iy].h, xo, bufs[iy].h, yo, count);
    } else {
        st = sw_gelu(s->h, (sw_dtype)dtype, bufs[ix].h, xo, bufs[iy].h, yo, count);
    }
    expect(st, valid, back ? "sw_gelu_backward" : "sw_gelu");
}

static void op_shard_range(Reader* r) {
    int64_t total = (int64_t)u64(r);
    int32_t parts = (int32_t)u32(r), index = (int32_t)u32(r);
    switch (u8(r) % 4) { /* mostly small, sensible values */
    case 0: break;
    default:
        total = u8(r) % 3 == 0 ? (int64_t)(u64(r) >> 1) : (int64_t)(u8(r));
        parts = 1 + u8(r) % 9;
        index = (int32_t)(u8(r) % 11) - 1;
        break;
    }
    int64_t off = -7, cnt = -7;
    const int valid = total >= 0 && parts >= 1 && index >= 0 && index < parts;
    const sw_status st = sw_shard_range(total, parts, index, &off, &cnt);
    expect(st, valid, "sw_shard_range");
    if (!valid) {
        if (off != -7 || cnt != -7) FAILF("a refused sw_shard_range wrote its outputs");
        return;
    }
    const int64_t base = total / parts, rem = total % parts;
    const int64_t want_cnt = base + (index < rem ? 1 : 0), want_off = index * base + (index < rem ? index : rem);
    if (off != want_off || cnt != want_cnt)
        FAILF("sw_shard_range(%lld, %d, %d) = [%lld, +%lld), expected [%lld, +%lld)", (long long)total, (int)parts,
              (int)index, (long long)off, (long long)cnt, (long long)want_off, (long long)want_cnt);
}

static void op_device(Reader* r) {
    const int d = u8(r) % MAX_DEV;
    switch (u8(r) % 4) {
    case 0: { /* create: bad backends, ordinals and thread counts are refused */
        if (devs[d]) return;
        const int32_t backend = enum_value(r, 1); /* CUDA (1) is outside the valid set here: no GPU in this build */
        const int32_t ordinal = u8(r) % 8 == 0 ? 1 : 0;
        int32_t threads = 1 + u8(r) % 2;
        if (u8(r) % 8 == 0) threads = u8(r) & 1 ? -1 : 4097;
        sw_device h = (sw_device)&h;
        const sw_status st = sw_device_create((sw_backend)backend, ordinal, threads, &h);
        const int valid = backend == 0 && ordinal == 0 && threads >= 1 && threads <= 4096;
        if (backend == 1) { /* CUDA: SW_ERR_NOT_FOUND without a plugin; never OK in this build */
            if (st == SW_OK) FAILF("sw_device_create(CUDA) succeeded in a CPU-only fuzz build");
            if (h != NULL) FAILF("a refused sw_device_create left *out = %p", (void*)h);
            return;
        }
        expect(st, valid, "sw_device_create");
        if (st == SW_OK) devs[d] = h;
        else if (h != NULL) FAILF("a refused sw_device_create left *out = %p", (void*)h);
        return;
    }
    case 1: { /* destroy: refused while the harness still holds children */
        if (!devs[d]) return;
        const int kids = children(d);
        const sw_status st = sw_device_destroy(devs[d]);
        expect(st, kids == 0, "sw_device_destroy");
        if (st == SW_OK) {
            bury(devs[d]);
            devs[d] = NULL;
        }
        return;
    }
    case 2: {
        const int32_t backend = enum_value(r, 2);
        int32_t n = -5;
        const sw_status st = sw_device_count((sw_backend)backend, &n);
        expect(st, backend == 0 || backend == 1, "sw_device_count");
        if (st == SW_OK && (backend == 0 ? n != 1 : n < 0)) FAILF("sw_device_count(%d) = %d", (int)backend, (int)n);
        if (st != SW_OK && n != -5) FAILF("a refused sw_device_count wrote %d", (int)n);
        return;
    }
    default: { /* queries on bad handles */
        void* h = bad_handle(r);
        sw_device_info info;
        expect(sw_device_get_info((sw_device)h, &info), 0, "sw_device_get_info(bad handle)");
        uint64_t size = 0;
        expect(sw_buffer_get_size((sw_buffer)h, &size), 0, "sw_buffer_get_size(bad handle)");
        int32_t done = 0;
        expect(sw_event_query((sw_event)h, &done), 0, "sw_event_query(bad handle)");
        int32_t ws = 0;
        expect(sw_comm_get_world_size((sw_comm)h, &ws), 0, "sw_comm_get_world_size(bad handle)");
        (void)sw_dtype_size((sw_dtype)(int32_t)u32(r));
        if (sw_status_string((sw_status)(int32_t)u32(r)) == NULL) FAILF("sw_status_string returned NULL");
        return;
    }
    }
}

/* ------------------------------------------------------------------ collectives */

static void comm_close(void) {
    if (!comm) return;
    expect(sw_comm_destroy(comm), 1, "sw_comm_destroy");
    bury(comm);
    comm = NULL;
    for (int q = 0; q < world; ++q) {
        (void)sw_stream_synchronize(rank_stream[q]); /* clears what the destroyed communicator left */
        expect(sw_stream_destroy(rank_stream[q]), 1, "sw_stream_destroy(rank)");
        expect(sw_buffer_destroy(rank_send[q]), 1, "sw_buffer_destroy(send)");
        expect(sw_buffer_destroy(rank_recv[q]), 1, "sw_buffer_destroy(recv)");
        rank_stream[q] = NULL;
        rank_send[q] = rank_recv[q] = NULL;
    }
    world = 0;
}

static void comm_open(Reader* r) {
    const int32_t w = 2 + u8(r) % 2;
    sw_device ds[MAX_RANKS] = {g_dev0, g_dev0, g_dev0};
    /* Bad creations first: refused, nothing made. */
    sw_comm bad = (sw_comm)&bad;
    const int32_t bad_world = u8(r) & 1 ? 0 : -1;
    expect(sw_comm_create_local(bad_world, ds, 1000, &bad), 0, "sw_comm_create_local(bad world)");
    expect(sw_comm_create_local(w, NULL, 1000, &bad), 0, "sw_comm_create_local(NULL devices)");
    /* 3 s: a rank the harness leaves out would make the others wait that long (it never does on purpose). */
    expect(sw_comm_create_local(w, ds, 3000, &comm), 1, "sw_comm_create_local");
    world = w;
    comm_dead = 0;
    for (int q = 0; q < w; ++q) {
        expect(sw_stream_create(g_dev0, &rank_stream[q]), 1, "sw_stream_create(rank)");
        expect(sw_buffer_alloc(g_dev0, COMM_ELEMS * 8, &rank_send[q]), 1, "sw_buffer_alloc(send)");
        expect(sw_buffer_alloc(g_dev0, COMM_ELEMS * 8, &rank_recv[q]), 1, "sw_buffer_alloc(recv)");
    }
}

static size_t esize(int32_t dtype) {
    static const size_t sz[6] = {4, 8, 2, 2, 4, 1};
    return dtype >= 0 && dtype < 6 ? sz[dtype] : 0;
}

static void op_collective(Reader* r) {
    if (comm && comm_dead) {
        /* An aborted communicator fails every later collective at once; then make a new one. */
        if (sw_barrier(comm, 0, rank_stream[0]) == SW_OK) FAILF("a collective on an aborted communicator was accepted");
        comm_close();
    }
    if (!comm) comm_open(r);
    if (u8(r) % 16 == 0) { /* sometimes close (and next time reopen) with nothing pending */
        comm_close();
        return;
    }
    const int kind = u8(r) % 6; /* all-reduce, all-gather, reduce-scatter, broadcast, barrier, all-gather-v */
    const int sums = kind == 0 || kind == 2;
    const int32_t dtype = sums ? (u8(r) & 1 ? SW_DTYPE_F32 : SW_DTYPE_I32) : (int32_t)(u8(r) % 6);
    const size_t es = esize(dtype);
    const uint64_t cap = COMM_ELEMS * 8 / es; /* elements per rank buffer */
    const uint64_t count = u8(r) % (kind == 0 || kind == 3 ? cap + 1 : cap / world + 1);
    const int32_t root = u8(r) % world;
    /* One rank may get one bad argument (refused at the call) or a different count (a mismatch at run time). */
    const int victim = u8(r) % 3 == 0 ? (int)(u8(r) % world) : -1;
    const int fault = u8(r) % 7;

    /* Fresh data: i32 values kept small so that sums never overflow (i32 overflow is another issue's fix). */
    uint8_t data[MAX_RANKS][COMM_ELEMS * 8];
    uint32_t seed = u32(r); /* the data from a seed: a few input bytes, not hundreds, per collective */
    for (int q = 0; q < world; ++q) {
        for (size_t b = 0; b < sizeof data[q]; ++b) {
            seed = seed * 1664525u + 1013904223u;
            data[q][b] = (uint8_t)(seed >> 24);
        }
        if (dtype == SW_DTYPE_I32)
            for (size_t e = 0; e < cap; ++e) {
                int32_t v;
                memcpy(&v, data[q] + e * 4, 4);
                v %= 1 << 20;
                memcpy(data[q] + e * 4, &v, 4);
            }
        expect(sw_memcpy_h2d_async(rank_send[q], 0, data[q], sizeof data[q], rank_stream[q]), 1, "h2d(send)");
        expect(sw_memset_async(rank_recv[q], 0, 0xA5, COMM_ELEMS * 8, rank_stream[q]), 1, "memset(recv)");
    }

    sw_status st[MAX_RANKS];
    int accepted = 0, refused = 0, mismatch = 0;
    for (int q = 0; q < world; ++q) {
        int32_t d = dtype, op = SW_REDUCE_SUM, rank = q, rt = root;
        uint64_t c = count, so = 0, ro = 0;
        if (q == victim) {
            switch (fault) {
            case 0: d = u8(r) & 1 ? -1 : 6; break;
            case 1: { /* an unknown op (refused), or SW_REDUCE_SUM_TREE against the others' SUM (a mismatch at run time) */
                const uint8_t o = u8(r) % 3;
                op = o == 0 ? -1 : o == 1 ? 2 : SW_REDUCE_SUM_TREE;
                if (op == SW_REDUCE_SUM_TREE && sums) mismatch = 1;
                break;
            }
            case 2: rank = u8(r) & 1 ? world : -1; break;
            case 3: so = cap + 1; break;
            case 4: rt = world; break;
            case 5: ro = UINT64_MAX; break;
            default:
                if (kind <= 3) { /* a different, still fitting count; all-gather-v counts may differ by design */
                    c = count ? count - 1 : 1;
                    mismatch = 1;
                }
                break;
            }
        }
        /* The harness's view of validity. */
        int valid = rank >= 0 && rank < world;
        if (kind != 4) {
            valid = valid && d >= 0 && d <= 5;
            const uint64_t send_n = kind == 2 ? c * (uint64_t)world : c;
            const uint64_t recv_n = kind == 1 ? c * (uint64_t)world : kind == 5 ? cap : c;
            valid = valid && span_fits(cap, so, send_n) && (kind == 3 || span_fits(cap, ro, recv_n));
        }
        if (sums) valid = valid && (op == SW_REDUCE_SUM || op == SW_REDUCE_SUM_TREE);
        if (kind == 3) valid = valid && rt >= 0 && rt < world;
        switch (kind) {
        case 0:
            st[q] = sw_all_reduce(comm, rank, rank_send[q], so, rank_recv[q], ro, c, (sw_dtype)d, (sw_reduce_op)op,
                                  rank_stream[q]);
            break;
        case 1: st[q] = sw_all_gather(comm, rank, rank_send[q], so, rank_recv[q], ro, c, (sw_dtype)d, rank_stream[q]); break;
        case 2:
            st[q] = sw_reduce_scatter(comm, rank, rank_send[q], so, rank_recv[q], ro, c, (sw_dtype)d, (sw_reduce_op)op,
                                      rank_stream[q]);
            break;
        case 3: st[q] = sw_broadcast(comm, rank, rank_send[q], so, c, (sw_dtype)d, rt, rank_stream[q]); break;
        case 4: st[q] = sw_barrier(comm, rank, rank_stream[q]); break;
        default:
            st[q] = sw_all_gather_v(comm, rank, rank_send[q], so, c, rank_recv[q], ro, cap, (sw_dtype)d, rank_stream[q]);
            break;
        }
        expect(st[q], valid, kind == 0 ? "sw_all_reduce" : kind == 1 ? "sw_all_gather" : kind == 2 ? "sw_reduce_scatter"
                             : kind == 3 ? "sw_broadcast" : kind == 4 ? "sw_barrier" : "sw_all_gather_v");
        if (st[q] == SW_OK) ++accepted;
        else ++refused;
    }
    if (accepted && refused) {
        /* The accepted ranks wait for the refused one: abort instead of waiting for the timeout. */
        expect(sw_comm_abort(comm), 1, "sw_comm_abort");
        comm_dead = 1;
    }
    int failed_sync = 0;
    for (int q = 0; q < world; ++q) {
        const sw_status s = sw_stream_synchronize(rank_stream[q]);
        if (s != SW_OK) ++failed_sync;
        if (!comm_dead && !mismatch && st[q] == SW_OK && s != SW_OK)
            FAILF("a valid collective (kind %d, dtype %d, count %llu) failed on rank %d: %s", kind, (int)dtype,
                  (unsigned long long)count, q, sw_status_string(s));
    }
    if (mismatch && accepted == world && failed_sync != world)
        FAILF("a count mismatch (kind %d) was reported on %d of %d ranks", kind, failed_sync, world);
    if (failed_sync) comm_dead = 1;
    if (comm_dead || refused || mismatch) return;

    /* Results of valid calls. */
    uint8_t out[COMM_ELEMS * 8];
    for (int q = 0; q < world; ++q) {
        expect(sw_memcpy_d2h_async(out, rank_recv[q], 0, sizeof out, rank_stream[q]), 1, "d2h(recv)");
        expect(sw_stream_synchronize(rank_stream[q]), 1, "sync(recv)");
        if (kind == 0 && dtype == SW_DTYPE_F32) {
            for (uint64_t e = 0; e < count; ++e) {
                float want, v, got;
                memcpy(&want, data[0] + e * 4, 4);
                for (int p = 1; p < world; ++p) {
                    memcpy(&v, data[p] + e * 4, 4);
                    want += v; /* rank order 0..p-1, as documented */
                }
                memcpy(&got, out + e * 4, 4);
                if (!(got == want || (isnan(got) && isnan(want))))
                    FAILF("all-reduce element %llu on rank %d = %g, expected %g", (unsigned long long)e, q, got, want);
            }
        } else if (kind == 1) {
            for (int p = 0; p < world; ++p)
                if (memcmp(out + p * count * es, data[p], count * es) != 0)
                    FAILF("all-gather block %d on rank %d differs", p, q);
        }
    }
}

/* ------------------------------------------------------------------ driver */

static void cleanup(void) {
    for (int i = 0; i < MAX_STREAM; ++i)
        if (streams[i].h) (void)sw_stream_synchronize(streams[i].h);
    comm_close();
    for (int i = 0; i < MAX_EVENT; ++i)
        if (events[i].h) {
            expect(sw_event_destroy(events[i].h), 1, "sw_event_destroy");
            events[i].h = NULL;
        }
    for (int i = 0; i < MAX_BUF; ++i)
        if (bufs[i].h) {
            expect(sw_buffer_destroy(bufs[i].h), 1, "sw_buffer_destroy");
            bufs[i].h = NULL;
        }
    for (int i = 0; i < MAX_STREAM; ++i)
        if (streams[i].h) {
            expect(sw_stream_destroy(streams[i].h), 1, "sw_stream_destroy");
            streams[i].h = NULL;
        }
    for (int i = 0; i < MAX_DEV; ++i)
        if (devs[i]) {
            expect(sw_device_destroy(devs[i]), 1, "sw_device_destroy");
            devs[i] = NULL;
        }
    ndead = 0;
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
    (void)argc;
    (void)argv;
    if (sw_device_create(SW_BACKEND_CPU, 0, 2, &g_dev0) != SW_OK) {
        fprintf(stderr, "c_api_fuzz: cannot create the CPU device: %s\n", sw_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Reader r = {data, size, 0};
    for (int steps = 0; steps < 64 && more(&r); ++steps) {
        switch (u8(&r) % 12) {
        case 0: op_buffer_alloc(&r); break;
        case 1: op_buffer_wrap(&r); break;
        case 2: op_buffer_destroy(&r); break;
        case 3: op_stream(&r); break;
        case 4: op_event(&r); break;
        case 5:
        case 6: op_copy(&r); break;
        case 7: op_gemm(&r); break;
        case 8: op_gelu(&r); break;
        case 9: op_shard_range(&r); break;
        case 10: op_device(&r); break;
        default: op_collective(&r); break;
        }
    }
    cleanup();
    return 0;
}
