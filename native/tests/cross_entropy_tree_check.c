/* sw_cross_entropy_partial_tree (ABI 8) through the C ABI, compiled as C99 against the shared library only.
 *  - The CPU backend against a host reference of the same arithmetic, bit for bit: M = the maximum of the gathered
 *    maxima (the row's maximum placed in block r % parts, the gathered sums and targets NaN: unread), each leaf of
 *    `leaf` columns summed from +0 in column order in fp32 with the C library's expf (what the CPU backend's
 *    std::exp(float) calls), the leaves combined by the fixed binary tree ([a, b) = [a, m) + [m, b), m = a +
 *    ceil((b - a) / 2)); the target logit (ids inside the shard, at its edges, and outside it); include_max 0 and 1;
 *    leaf 1, a shorter last leaf, leaf >= cols; an empty shard (cols = 0); a NaN maximum.
 *  - TP invariance: the columns cut into the tree's p nodes (p = 2, 4; the node split recomputed here by the halving
 *    rule of sw::tree::nodes, empty nodes included), one call per node (its columns, its vocab_offset, include_max on
 *    node 0 only), the p outputs summed element-wise in the tree's order over p in fp32: [M, S, t] equal the unsplit
 *    call's bit for bit.
 *  - Bad arguments refused with SW_ERR_INVALID_ARGUMENT (or UNSUPPORTED for the dtype, NULL_HANDLE for a NULL
 *    handle), the message naming the argument; out untouched.
 * Every output buffer is poisoned (0xFF bytes: NaN) before each run. Logits are random and never 0; the seed is fresh
 * (printed; SW_SEED=<n> replays one). A CUDA device, when there is one, runs the invariance (bit for bit) and the values
 * against float64 (its expf is not the C library's). */
#include "shardwise.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static uint64_t g_state;
static uint64_t next_u64(void) {
    /* splitmix64 */
    uint64_t z = (g_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* Uniform in [-1, 1), never 0. */
static float unit(void) {
    for (;;) {
        const float v = (float)((double)(next_u64() >> 40) / 8388608.0 - 1.0);
        if (v != 0.0f) return v;
    }
}

static float nan_f(void) { return (float)NAN; }
static unsigned long bits(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (unsigned long)b;
}

/* ---- host reference (the same arithmetic as the CPU backend) */
static float tree_sum(const float* x, int64_t n) {
    int64_t m;
    if (n == 1) return x[0];
    m = (n + 1) / 2;
    return tree_sum(x, m) + tree_sum(x + m, n - m);
}

static float gathered_max(const float* g, int32_t parts, int64_t rows, int64_t r) {
    float mx = -INFINITY;
    int32_t k;
    for (k = 0; k < parts; ++k) {
        const float v = g[(k * rows + r) * 3];
        if (isnan(v)) return v;
        if (v > mx) mx = v;
    }
    return mx;
}

/* out[3 rows] for logits z (row r at z + r*ld, cols columns). */
static void reference(const float* z, int64_t rows, int64_t cols, int64_t ld, const int32_t* ids, int64_t vocab_offset,
                      const float* g, int32_t parts, int64_t leaf, int include_max, float* out) {
    const int64_t n = cols == 0 ? 0 : (cols - 1) / leaf + 1;
    float* leaves = (float*)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    int64_t r, l, j;
    for (r = 0; r < rows; ++r) {
        const float mx = gathered_max(g, parts, rows, r);
        const int64_t t = (int64_t)ids[r] - vocab_offset;
        for (l = 0; l < n; ++l) {
            const int64_t j1 = (l + 1) * leaf < cols ? (l + 1) * leaf : cols;
            float acc = 0.0f;
            for (j = l * leaf; j < j1; ++j) {
                const float e = expf(z[r * ld + j] - mx);
                acc = acc + e;
            }
            leaves[l] = acc;
        }
        out[3 * r] = include_max ? mx : 0.0f;
        out[3 * r + 1] = n > 0 ? tree_sum(leaves, n) : 0.0f;
        out[3 * r + 2] = t >= 0 && t < cols ? z[r * ld + t] : 0.0f;
    }
    free(leaves);
}

/* The p nodes (p a power of two) of the tree over n items: first[0..p], node k = [first[k], first[k + 1]). */
static void tree_nodes(int64_t n, int p, int64_t* first) {
    int64_t cur[9], next[9];
    int w, i, count = 2;
    cur[0] = 0;
    cur[1] = n;
    for (w = 1; w < p; w *= 2) {
        int c = 0;
        for (i = 0; i + 1 < count; ++i) {
            const int64_t a = cur[i], b = cur[i + 1];
            next[c++] = a;
            next[c++] = b - a > 1 ? a + (b - a + 1) / 2 : b;
        }
        next[c++] = n;
        memcpy(cur, next, (size_t)c * sizeof(int64_t));
        count = c;
    }
    memcpy(first, cur, (size_t)(p + 1) * sizeof(int64_t));
}

/* ---- the device under test */
typedef struct {
    sw_device dev;
    sw_stream s;
    const char* name;
    int exact; /* the backend's exp is the C library's expf: compare with the reference bit for bit */
} Target;

static sw_buffer upload(const Target* tg, const void* p, size_t bytes) {
    sw_buffer b = NULL;
    OK(sw_buffer_alloc(tg->dev, bytes > 0 ? bytes : 4, &b));
    if (bytes > 0) OK(sw_memcpy_h2d_async(b, 0, p, bytes, tg->s));
    return b;
}

static void poison(const Target* tg, sw_buffer b, size_t bytes) { OK(sw_memset_async(b, 0, 0xFF, bytes, tg->s)); }

static void download(const Target* tg, float* dst, sw_buffer b, uint64_t offset_bytes, size_t bytes) {
    OK(sw_memcpy_d2h_async(dst, b, offset_bytes, bytes, tg->s));
    OK(sw_stream_synchronize(tg->s));
}

/* Compares got with want: bit for bit when exact, else each value to a relative 2e-6 of the sum of |exp| terms (fp32
 * sums with an expf within a few ulps; S's terms are all positive, so S itself is their magnitude). */
static void compare(const Target* tg, const char* what, const float* got, const float* want, int64_t rows) {
    int64_t i;
    int bad = 0;
    for (i = 0; i < 3 * rows && bad < 4; ++i) {
        const float g = got[i], w = want[i];
        int ok;
        if (tg->exact || i % 3 != 1) ok = memcmp(&g, &w, sizeof g) == 0;
        else ok = (isnan(g) && isnan(w)) || fabs((double)g - (double)w) <= 2e-6 * fabs((double)w) + 1e-30;
        if (!ok) {
            ++bad;
            CHECK(0, "%s: %s: out[%lld] (row %lld, %s) = %.9g (0x%08lx), expected %.9g (0x%08lx)", tg->name, what,
                  (long long)i, (long long)(i / 3), i % 3 == 0 ? "M" : i % 3 == 1 ? "S" : "t", (double)g,
                  bits(g), (double)w, bits(w));
        }
    }
}

/* Float64 S for row r (to check the values themselves on a backend with another expf). */
static double s64(const float* z, int64_t cols, float mx) {
    double s = 0;
    int64_t j;
    for (j = 0; j < cols; ++j) s += exp((double)z[j] - (double)mx);
    return s;
}

/* One case: logits rows x cols (ld = cols + 3, a sentinel gap), the shard at vocab_offset, gathered of `parts` blocks
 * whose maxima are the row's maximum (in block r % parts; above it by 0.5 in row 1: another shard's larger logit) and
 * smaller values (their sums and targets NaN). Checks the unsplit call against the reference for include_max 0 and 1,
 * then the split into the tree's nodes for p = 2 and 4. */
static void run_case(const Target* tg, int64_t rows, int64_t cols, int64_t leaf, int32_t parts, int64_t vocab_offset,
                     int nan_row) {
    const int64_t ld = cols + 3;
    const size_t zn = (size_t)(rows * ld), gn = (size_t)(3 * rows * parts), on = (size_t)(3 * rows);
    float* z = (float*)malloc((zn > 0 ? zn : 1) * sizeof(float));
    float* g = (float*)malloc(gn * sizeof(float));
    float* want = (float*)malloc(on * sizeof(float));
    float* got = (float*)malloc(on * sizeof(float));
    float* sum = (float*)malloc(on * sizeof(float));
    float* parts_out = (float*)malloc(4 * on * sizeof(float));
    int32_t* ids = (int32_t*)malloc((size_t)rows * sizeof(int32_t));
    sw_buffer bz, bi, bg, bo, bp;
    int64_t r, j;
    int include_max, p;
    char what[160];
    for (r = 0; r < rows; ++r) {
        const float scale = r % 3 == 2 ? 80.0f : 8.0f;
        float mx = -INFINITY;
        int32_t k;
        for (j = 0; j < ld; ++j) z[r * ld + j] = j < cols ? scale * unit() : -1234.5f;
        for (j = 0; j < cols; ++j) mx = z[r * ld + j] > mx ? z[r * ld + j] : mx;
        if (cols == 0) mx = 3.25f;
        if (r == 1) mx += 0.5f;
        for (k = 0; k < parts; ++k) {
            float* b = g + (k * rows + r) * 3;
            b[0] = k == r % parts ? mx : mx - 1.0f - 4.0f * (unit() + 1.0f);
            b[1] = b[2] = nan_f();
        }
        if (nan_row && r == rows - 1) g[(((r + 1) % parts) * rows + r) * 3] = nan_f();
        /* ids: the shard's first and last column, outside on either side, then random inside or outside */
        switch (r % 6) {
        case 0: ids[r] = (int32_t)vocab_offset; break;
        case 1: ids[r] = (int32_t)(vocab_offset + cols - 1); break;
        case 2: ids[r] = (int32_t)(vocab_offset + cols); break;
        case 3: ids[r] = vocab_offset > 0 ? (int32_t)(vocab_offset - 1) : -1; break;
        default: ids[r] = (int32_t)(vocab_offset + (int64_t)(next_u64() % (uint64_t)(cols + 2)) - 1); break;
        }
    }
    bz = upload(tg, z, zn * sizeof(float));
    bi = upload(tg, ids, (size_t)rows * sizeof(int32_t));
    bg = upload(tg, g, gn * sizeof(float));
    OK(sw_buffer_alloc(tg->dev, on * sizeof(float) + 8, &bo)); /* out at byte offset 8 */
    OK(sw_buffer_alloc(tg->dev, 4 * on * sizeof(float), &bp));

    /* unsplit, include_max 0 and 1 */
    for (include_max = 0; include_max <= 1; ++include_max) {
        poison(tg, bo, on * sizeof(float) + 8);
        OK(sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, rows, cols, ld, bi, 0, vocab_offset, bg, 0, parts,
                                         leaf, include_max, bo, 2));
        download(tg, got, bo, 8, on * sizeof(float));
        reference(z, rows, cols, ld, ids, vocab_offset, g, parts, leaf, include_max, want);
        sprintf(what, "rows %lld cols %lld leaf %lld parts %d include_max %d%s", (long long)rows, (long long)cols,
                (long long)leaf, parts, include_max, nan_row ? " (a NaN maximum)" : "");
        compare(tg, what, got, want, rows);
        if (!tg->exact)
            for (r = 0; r < rows; ++r) {
                const double w = s64(z + r * ld, cols, gathered_max(g, parts, rows, r));
                CHECK(isnan(w) || fabs((double)got[3 * r + 1] - w) <= 2e-5 * w + 1e-30,
                      "%s: %s: S[%lld] = %.9g, float64 %.9g", tg->name, what, (long long)r, (double)got[3 * r + 1], w);
            }
    }
    /* the unsplit call with include_max = 1 is in `got`: now the tree's nodes */
    for (p = 2; p <= 4; p *= 2) {
        const int64_t n = cols == 0 ? 0 : (cols - 1) / leaf + 1;
        int64_t first[5];
        float x[4];
        int k;
        size_t i;
        tree_nodes(n, p, first);
        poison(tg, bp, 4 * on * sizeof(float));
        for (k = 0; k < p; ++k) {
            const int64_t c0 = first[k] * leaf < cols ? first[k] * leaf : cols;
            const int64_t c1 = first[k + 1] * leaf < cols ? first[k + 1] * leaf : cols;
            OK(sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, (uint64_t)c0, rows, c1 - c0, ld, bi, 0,
                                             vocab_offset + c0, bg, 0, parts, leaf, k == 0, bp, (uint64_t)k * on));
        }
        download(tg, parts_out, bp, 0, (size_t)p * on * sizeof(float));
        for (i = 0; i < on; ++i) {
            for (k = 0; k < p; ++k) x[k] = parts_out[(size_t)k * on + i];
            sum[i] = tree_sum(x, p);
        }
        sprintf(what, "rows %lld cols %lld leaf %lld: the tree sum of p = %d nodes (%lld leaves) vs the unsplit call",
                (long long)rows, (long long)cols, (long long)leaf, p, (long long)n);
        {
            Target bitwise = *tg;
            bitwise.exact = 1; /* the invariance holds bit for bit on every backend */
            compare(&bitwise, what, sum, got, rows);
        }
        if (tg->exact) { /* and each node against the reference */
            for (k = 0; k < p; ++k) {
                const int64_t c0 = first[k] * leaf < cols ? first[k] * leaf : cols;
                const int64_t c1 = first[k + 1] * leaf < cols ? first[k + 1] * leaf : cols;
                reference(z + c0, rows, c1 - c0, ld, ids, vocab_offset + c0, g, parts, leaf, k == 0, want);
                sprintf(what, "rows %lld cols %lld leaf %lld: node %d of %d (columns %lld..%lld)", (long long)rows,
                        (long long)cols, (long long)leaf, k, p, (long long)c0, (long long)c1);
                compare(tg, what, parts_out + (size_t)k * on, want, rows);
            }
        }
    }
    OK(sw_buffer_destroy(bz));
    OK(sw_buffer_destroy(bi));
    OK(sw_buffer_destroy(bg));
    OK(sw_buffer_destroy(bo));
    OK(sw_buffer_destroy(bp));
    free(z);
    free(g);
    free(want);
    free(got);
    free(sum);
    free(parts_out);
    free(ids);
}

/* A refused call: status st, the message naming `name`, out untouched (still 0xFF). */
#define REFUSED(expect_st, name, call)                                                                                   \
    do {                                                                                                                 \
        sw_status st_ = (call);                                                                                          \
        CHECK(st_ == (expect_st), "%s -> %s, expected %s", #call, sw_status_string(st_), sw_status_string(expect_st));   \
        CHECK(strstr(sw_last_error(), (name)) != NULL, "%s: message \"%s\" does not name %s", #call, sw_last_error(),    \
              (name));                                                                                                   \
    } while (0)

static void check_arguments(const Target* tg) {
    enum { R = 4, C = 10, LD = 12, P = 2 };
    float z[R * LD], g[3 * R * P], o[3 * R];
    int32_t ids[R] = {0, 3, 9, 11};
    sw_buffer bz, bi, bg, bo, other;
    sw_device dev2;
    size_t i;
    for (i = 0; i < R * LD; ++i) z[i] = unit();
    for (i = 0; i < 3 * R * P; ++i) g[i] = unit();
    bz = upload(tg, z, sizeof z);
    bi = upload(tg, ids, sizeof ids);
    bg = upload(tg, g, sizeof g);
    OK(sw_buffer_alloc(tg->dev, sizeof o, &bo));
    poison(tg, bo, sizeof o);
    OK(sw_stream_synchronize(tg->s));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "parts",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, 0, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "parts",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, -3, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "leaf",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 0, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "leaf",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, -8, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "include_max",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 2, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "include_max",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, -1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "rows",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, -1, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "cols",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, -1, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "ld",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, C - 1, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "vocab_offset",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, -1, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_UNSUPPORTED, "dtype",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F16, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    /* sizes: logits past the end, ids, gathered one element short (parts = 3 needs 36), out one short */
    REFUSED(SW_ERR_INVALID_ARGUMENT, "logits",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 3, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "logits",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, R * LD + 1, R, 0, 0, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "ids",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 1, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "gathered",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, 3, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "gathered",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 1, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "out",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 1));
    /* overlaps: out inside gathered, logits, ids */
    REFUSED(SW_ERR_INVALID_ARGUMENT, "gathered and out overlap",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, 1, 4, 1, bg, 6));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "ids and out overlap",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, 1, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bi, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "logits and out overlap",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, 2, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bz, 20));
    /* NULL handles, a buffer of another device */
    REFUSED(SW_ERR_NULL_HANDLE, "stream",
            sw_cross_entropy_partial_tree(NULL, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_NULL_HANDLE, "gathered",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, NULL, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_NULL_HANDLE, "out",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, NULL, 0));
    REFUSED(SW_ERR_NULL_HANDLE, "logits",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, NULL, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    OK(sw_device_create(SW_BACKEND_CPU, 0, 1, &dev2));
    OK(sw_buffer_alloc(dev2, sizeof g, &other));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "gathered",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, other, 0, P, 4, 1, bo, 0));
    REFUSED(SW_ERR_INVALID_ARGUMENT, "out",
            sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, R, C, LD, bi, 0, 0, bg, 0, P, 4, 1, other, 0));
    OK(sw_buffer_destroy(other));
    OK(sw_device_destroy(dev2));
    /* out untouched by every refused call; rows = 0 is accepted and writes nothing */
    OK(sw_cross_entropy_partial_tree(tg->s, SW_DTYPE_F32, bz, 0, 0, C, LD, bi, 0, 0, bg, 0, P, 4, 1, bo, 0));
    download(tg, o, bo, 0, sizeof o);
    for (i = 0; i < 3 * R; ++i) {
        uint32_t bits;
        memcpy(&bits, &o[i], 4);
        CHECK(bits == 0xFFFFFFFFu, "%s: out[%u] = 0x%08lx written by a refused call", tg->name, (unsigned)i,
              (unsigned long)bits);
    }
    OK(sw_buffer_destroy(bz));
    OK(sw_buffer_destroy(bi));
    OK(sw_buffer_destroy(bg));
    OK(sw_buffer_destroy(bo));
}

static void run_all(const Target* tg) {
    run_case(tg, 9, 1000, 7, 3, 100, 0);  /* 143 leaves, the last of 6 columns */
    run_case(tg, 7, 1000, 1, 4, 0, 0);    /* a leaf per column */
    run_case(tg, 6, 1024, 64, 2, 5, 0);   /* 16 full leaves */
    run_case(tg, 5, 20, 8, 3, 40, 0);     /* 3 leaves: with p = 4 an empty node (cols = 0) */
    run_case(tg, 4, 50, 500, 1, 7, 0);    /* leaf >= cols: one leaf; p = 2, 4 leave empty nodes */
    run_case(tg, 6, 0, 16, 2, 30, 0);     /* an empty shard */
    run_case(tg, 8, 300, 16, 3, 0, 1);    /* a NaN among the maxima: M and S NaN */
    run_case(tg, 130, 257, 3, 5, 11, 0);  /* more rows than one block of threads, 86 leaves */
    check_arguments(tg);
}

int main(void) {
    const char* env = getenv("SW_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0)
                        : ((uint64_t)time(NULL) * 2654435761u) ^ ((uint64_t)clock() << 32) ^ (uint64_t)(uintptr_t)&env;
    Target cpu;
    int32_t ncuda = 0;
    printf("cross_entropy_tree_check: seed %llu (SW_SEED=%llu replays it)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    g_state = seed;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 3, &cpu.dev));
    OK(sw_stream_create(cpu.dev, &cpu.s));
    cpu.name = "cpu";
    cpu.exact = 1;
    run_all(&cpu);
    OK(sw_stream_destroy(cpu.s));
    OK(sw_device_destroy(cpu.dev));
    OK(sw_device_count(SW_BACKEND_CUDA, &ncuda));
    if (ncuda > 0) {
        Target gpu;
        OK(sw_device_create(SW_BACKEND_CUDA, 0, 0, &gpu.dev));
        OK(sw_stream_create(gpu.dev, &gpu.s));
        gpu.name = "cuda:0";
        gpu.exact = 0;
        run_all(&gpu);
        OK(sw_stream_destroy(gpu.s));
        OK(sw_device_destroy(gpu.dev));
    } else {
        printf("no CUDA device: the CUDA path is covered by kernels_emu_check\n");
    }
    printf("cross_entropy_tree_check: %d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
