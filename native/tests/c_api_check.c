/* C ABI check: compiled as C99 against the shared library only (shardwise.h must stand on its own as C).
 * Covers the error channel (NULL and destroyed handles, bad arguments, status names), a GEMM against a
 * double reference, and a two-rank all-reduce driven from one thread through two streams. */
#include "shardwise.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "check.h"

static float frand(unsigned* state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* bf16 <-> float for the sw_gemm_ex checks: round to nearest even (finite inputs only here). */
static uint16_t to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static float from_bf16(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* sw_gemm_ex with A, B in bf16 (stored transposed when ta/tb), C in f32 or bf16, bias in C's type, beta = 0.5 over a
 * C read from its own type, against double computed from the rounded inputs. Tolerance: fp32 accumulation over K
 * terms (K * 2^-24 * sum|a b|) plus, for a bf16 C, one final rounding (2^-8 |ref|). */
static void check_gemm_ex_bf16(sw_device dev, sw_stream s, int ta, int tb, sw_dtype c_type) {
    enum { M = 13, K = 37, N = 21 };
    uint16_t a[M * K], b[K * N];
    float c0[M * N], bias[N];
    unsigned rng = 777u + (unsigned)(ta * 2 + tb) + 10u * (unsigned)c_type;
    for (int i = 0; i < M * K; ++i) a[i] = to_bf16(frand(&rng));
    for (int i = 0; i < K * N; ++i) b[i] = to_bf16(frand(&rng));
    for (int i = 0; i < M * N; ++i) c0[i] = frand(&rng);
    for (int j = 0; j < N; ++j) bias[j] = frand(&rng);
    const int bf16_c = c_type == SW_DTYPE_BF16;
    const size_t csz = bf16_c ? 2 : 4;
    uint16_t c16[M * N], bias16[N];
    for (int i = 0; i < M * N; ++i) { c16[i] = to_bf16(c0[i]); if (bf16_c) c0[i] = from_bf16(c16[i]); }
    for (int j = 0; j < N; ++j) { bias16[j] = to_bf16(bias[j]); if (bf16_c) bias[j] = from_bf16(bias16[j]); }
    sw_buffer da, db, dc, dbias;
    OK(sw_buffer_alloc(dev, sizeof a, &da));
    OK(sw_buffer_alloc(dev, sizeof b, &db));
    OK(sw_buffer_alloc(dev, M * N * csz, &dc));
    OK(sw_buffer_alloc(dev, N * csz, &dbias));
    OK(sw_memcpy_h2d_async(da, 0, a, sizeof a, s));
    OK(sw_memcpy_h2d_async(db, 0, b, sizeof b, s));
    OK(sw_memcpy_h2d_async(dc, 0, bf16_c ? (const void*)c16 : (const void*)c0, M * N * csz, s));
    OK(sw_memcpy_h2d_async(dbias, 0, bf16_c ? (const void*)bias16 : (const void*)bias, N * csz, s));
    sw_gemm_desc d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    d.trans_a = ta ? SW_OP_T : SW_OP_N;
    d.trans_b = tb ? SW_OP_T : SW_OP_N;
    d.a_type = d.b_type = SW_DTYPE_BF16;
    d.c_type = c_type;
    d.compute_type = SW_DTYPE_F32;
    d.epilogue = SW_EPILOGUE_NONE;
    d.m = M; d.n = N; d.k = K;
    d.alpha = 1.5f; d.beta = 0.5f;
    /* A stored m x k (lda = k) or k x m (lda = m); B k x n (ldb = n) or n x k (ldb = k) */
    d.a = da; d.lda = ta ? M : K;
    d.b = db; d.ldb = tb ? K : N;
    d.c = dc; d.ldc = N;
    d.bias = dbias;
    OK(sw_gemm_ex(s, &d));
    float out[M * N];
    uint16_t out16[M * N];
    OK(sw_memcpy_d2h_async(bf16_c ? (void*)out16 : (void*)out, dc, 0, M * N * csz, s));
    OK(sw_stream_synchronize(s));
    if (bf16_c)
        for (int i = 0; i < M * N; ++i) out[i] = from_bf16(out16[i]);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double ref = 0, mag = 0;
            for (int p = 0; p < K; ++p) {
                const double x = from_bf16(ta ? a[p * M + i] : a[i * K + p]);
                const double y = from_bf16(tb ? b[j * K + p] : b[p * N + j]);
                ref += x * y;
                mag += fabs(x * y);
            }
            ref = 1.5 * ref + 0.5 * c0[i * N + j] + bias[j];
            mag = 1.5 * mag + fabs(0.5 * c0[i * N + j]) + fabs(bias[j]);
            const double tol = 2.0 * K * 0x1p-24 * mag + (bf16_c ? 0x1p-8 * fabs(ref) : 0.0) + 1e-30;
            CHECK(fabs(out[i * N + j] - ref) <= tol, "gemm_ex bf16 ta=%d tb=%d c=%s C[%d][%d] = %.9g, expected %.9g",
                  ta, tb, bf16_c ? "bf16" : "f32", i, j, out[i * N + j], ref);
        }
    OK(sw_buffer_destroy(da));
    OK(sw_buffer_destroy(db));
    OK(sw_buffer_destroy(dc));
    OK(sw_buffer_destroy(dbias));
}

int main(void) {
    CHECK(sw_abi_version() == SW_ABI_VERSION, "ABI %d vs header %d", sw_abi_version(), SW_ABI_VERSION);
    CHECK(strlen(sw_version_string()) > 0, "empty version");
    CHECK(strcmp(sw_status_string(SW_ERR_TIMEOUT), "SW_ERR_TIMEOUT") == 0, "status name");
    CHECK(sw_dtype_size(SW_DTYPE_BF16) == 2 && sw_dtype_size((sw_dtype)42) == 0, "dtype sizes");

    /* NULL handles and pointers: a status and a message naming the argument, never a crash. */
    CHECK(sw_stream_synchronize(NULL) == SW_ERR_NULL_HANDLE, "NULL stream");
    CHECK(strstr(sw_last_error(), "stream") != NULL, "message names the argument: %s", sw_last_error());
    CHECK(sw_device_count(SW_BACKEND_CPU, NULL) == SW_ERR_NULL_HANDLE, "NULL out");
    CHECK(sw_device_create((sw_backend)9, 0, 0, NULL) == SW_ERR_NULL_HANDLE, "NULL out first");
    CHECK(sw_buffer_destroy(NULL) == SW_OK, "destroying NULL is a no-op");

    int32_t n_cpu = -1, n_cuda = -1;
    OK(sw_device_count(SW_BACKEND_CPU, &n_cpu));
    OK(sw_device_count(SW_BACKEND_CUDA, &n_cuda));
    CHECK(n_cpu == 1, "one CPU device, got %d", n_cpu);

    sw_device dev = NULL;
    OK(sw_device_create(SW_BACKEND_CPU, 0, 2, &dev));
    sw_device_info info;
    OK(sw_device_get_info(dev, &info));
    CHECK(info.num_threads == 2 && info.name[0] != '\0', "device info");
    CHECK(sw_device_create(SW_BACKEND_CPU, 3, 0, &(sw_device){0}) == SW_ERR_NOT_FOUND, "ordinal 3");

    sw_stream s0 = NULL, s1 = NULL;
    OK(sw_stream_create(dev, &s0));
    OK(sw_stream_create(dev, &s1));

    /* A destroyed handle is rejected, not dereferenced. */
    sw_buffer dead = NULL;
    OK(sw_buffer_alloc(dev, 64, &dead));
    OK(sw_buffer_destroy(dead));
    uint64_t size = 0;
    CHECK(sw_buffer_get_size(dead, &size) == SW_ERR_INVALID_ARGUMENT, "destroyed buffer");
    CHECK(strstr(sw_last_error(), "not a live sw_buffer") != NULL, "message: %s", sw_last_error());
    CHECK(sw_device_destroy(dev) == SW_ERR_INVALID_ARGUMENT, "device with live children");

    /* GEMM: C[m,n] = A[m,k] B[k,n] + bias, checked against double. */
    enum { M = 19, K = 33, N = 23 };
    float a[M * K], b[K * N], bias[N], c[M * N];
    unsigned rng = 12345u;
    for (int i = 0; i < M * K; ++i) a[i] = frand(&rng);
    for (int i = 0; i < K * N; ++i) b[i] = frand(&rng);
    for (int i = 0; i < N; ++i) bias[i] = frand(&rng);
    sw_buffer da, db, dbias, dc;
    OK(sw_buffer_alloc(dev, sizeof a, &da));
    OK(sw_buffer_alloc(dev, sizeof b, &db));
    OK(sw_buffer_alloc(dev, sizeof bias, &dbias));
    OK(sw_buffer_alloc(dev, sizeof c, &dc));
    OK(sw_memcpy_h2d_async(da, 0, a, sizeof a, s0));
    OK(sw_memcpy_h2d_async(db, 0, b, sizeof b, s0));
    OK(sw_memcpy_h2d_async(dbias, 0, bias, sizeof bias, s0));
    OK(sw_memset_async(dc, 0, 0xff, sizeof c, s0)); /* NaN poison */
    OK(sw_gemm(s0, SW_DTYPE_F32, SW_OP_N, SW_OP_N, M, N, K, 1.0f, da, 0, K, db, 0, N, 0.0f, dc, 0, N, dbias, 0,
               SW_EPILOGUE_NONE));
    OK(sw_memcpy_d2h_async(c, dc, 0, sizeof c, s0));
    OK(sw_stream_synchronize(s0));
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double ref = bias[j], mag = fabs(bias[j]);
            for (int p = 0; p < K; ++p) {
                ref += (double)a[i * K + p] * b[p * N + j];
                mag += fabs((double)a[i * K + p] * b[p * N + j]);
            }
            CHECK(fabs(c[i * N + j] - ref) <= 1e-5 * mag + 1e-30, "C[%d][%d] = %g, expected %g", i, j, c[i * N + j], ref);
        }
    /* Bad arguments are refused synchronously and the stream stays usable. */
    CHECK(sw_gemm(s0, SW_DTYPE_F32, SW_OP_N, SW_OP_N, M, N, K, 1.0f, da, 0, K - 1, db, 0, N, 0.0f, dc, 0, N, NULL, 0,
                  SW_EPILOGUE_NONE) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "lda") != NULL,
          "short lda: %s", sw_last_error());
    CHECK(sw_gemm(s0, SW_DTYPE_F32, SW_OP_N, SW_OP_N, M, N, K, 1.0f, da, 1, K, db, 0, N, 0.0f, dc, 0, N, NULL, 0,
                  SW_EPILOGUE_NONE) == SW_ERR_INVALID_ARGUMENT, "A past its buffer");
    CHECK(sw_gemm(s0, SW_DTYPE_F32, SW_OP_N, SW_OP_N, 0, N, K, 1.0f, da, 0, K, db, 0, N, 0.0f, dc, 0, N, NULL, 0,
                  SW_EPILOGUE_NONE) == SW_ERR_INVALID_ARGUMENT, "m = 0");
    /* (rows-1)*ld wrapping around 2^64 to a tiny extent must not pass the bounds check. */
    CHECK(sw_gemm(s0, SW_DTYPE_F32, SW_OP_N, SW_OP_N, 4, 1, 1, 1.0f, da, 0, INT64_C(6148914691236517206), db, 0, 1,
                  0.0f, dc, 0, 1, NULL, 0, SW_EPILOGUE_NONE) == SW_ERR_INVALID_ARGUMENT &&
              strstr(sw_last_error(), "overflows") != NULL,
          "wrapping lda: %s", sw_last_error());

    /* sw_gemm_ex: bf16 inputs, f32 and bf16 outputs, every transpose. */
    for (int t = 0; t < 4; ++t) {
        check_gemm_ex_bf16(dev, s0, t & 1, t >> 1, SW_DTYPE_F32);
        check_gemm_ex_bf16(dev, s0, t & 1, t >> 1, SW_DTYPE_BF16);
    }
    {
        sw_gemm_desc d;
        memset(&d, 0, sizeof d);
        d.size = sizeof d;
        d.a_type = SW_DTYPE_BF16; d.b_type = SW_DTYPE_F16; d.c_type = SW_DTYPE_F32; d.compute_type = SW_DTYPE_F32;
        d.m = 2; d.n = 2; d.k = 2; d.alpha = 1.0f;
        d.a = da; d.lda = 2; d.b = db; d.ldb = 2; d.c = dc; d.ldc = 2;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_UNSUPPORTED && strstr(sw_last_error(), "a = bf16, b = f16, c = f32") != NULL,
              "mixed a/b types: %s", sw_last_error());
        d.b_type = SW_DTYPE_BF16; d.c_type = SW_DTYPE_F16;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_UNSUPPORTED && strstr(sw_last_error(), "c = f16") != NULL,
              "bf16 inputs into f16: %s", sw_last_error());
        d.c_type = SW_DTYPE_F32; d.compute_type = SW_DTYPE_F16;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_UNSUPPORTED && strstr(sw_last_error(), "compute = f16") != NULL,
              "f16 compute: %s", sw_last_error());
        d.compute_type = (sw_dtype)77;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "compute_type") != NULL,
              "bad compute_type: %s", sw_last_error());
        d.compute_type = SW_DTYPE_F32; d.size = sizeof d - 4;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "desc->size") != NULL,
              "short size: %s", sw_last_error());
        CHECK(sw_gemm_ex(s0, NULL) == SW_ERR_NULL_HANDLE && strstr(sw_last_error(), "desc") != NULL,
              "NULL desc: %s", sw_last_error());
        d.size = sizeof d; d.lda = 1;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "lda") != NULL,
              "short lda: %s", sw_last_error());
        /* sizes are in elements of each operand's type: a 2 x 2 bf16 A needs 8 bytes, so 2 x 3 at offset 3 of a
         * 19 x 33 f32 buffer fits, while one at offset 2*M*K - 5 (elements) does not. */
        d.lda = 2; d.a_offset = (uint64_t)(2 * M * K - 3);
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT, "A past its buffer in bf16 elements");
        d.a_offset = (uint64_t)(2 * M * K - 4);
        OK(sw_gemm_ex(s0, &d));
        OK(sw_stream_synchronize(s0));
        /* ABI 8: k_leaf (a desc of the ABI 2 size, which ends before it, is still taken), the device's reduction. */
        d.size = (uint32_t)offsetof(sw_gemm_desc, k_leaf);
        OK(sw_gemm_ex(s0, &d));
        d.size = sizeof d; d.k_leaf = 3;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "k_leaf = 3") != NULL,
              "odd k_leaf: %s", sw_last_error());
        d.k_leaf = -2;
        CHECK(sw_gemm_ex(s0, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "k_leaf") != NULL,
              "k_leaf -2: %s", sw_last_error());
        d.k_leaf = 64;
        OK(sw_gemm_ex(s0, &d));
        d.k_leaf = -1;
        OK(sw_gemm_ex(s0, &d));
        OK(sw_stream_synchronize(s0));
        sw_stream sg[1] = {s0};
        d.size = (uint32_t)offsetof(sw_gemm_desc, k_leaf);
        CHECK(sw_gemm_grouped(1, sg, &d) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "this ABI's") != NULL,
              "grouped with ABI 2 descs: %s", sw_last_error());
        int64_t leaf = -5;
        OK(sw_device_get_gemm_reduction(dev, &leaf));
        CHECK(leaf == 0, "default reduction: %lld", (long long)leaf);
        CHECK(sw_device_set_gemm_reduction(dev, 7) == SW_ERR_INVALID_ARGUMENT && strstr(sw_last_error(), "leaf = 7") != NULL,
              "odd leaf: %s", sw_last_error());
        CHECK(sw_device_set_gemm_reduction(dev, -2) == SW_ERR_INVALID_ARGUMENT, "negative leaf");
        CHECK(sw_device_set_gemm_reduction(dev, (INT64_C(1) << 24) + 2) == SW_ERR_INVALID_ARGUMENT, "leaf past 2^24");
        CHECK(sw_device_set_gemm_reduction(NULL, 64) == SW_ERR_NULL_HANDLE, "null device");
        CHECK(sw_device_get_gemm_reduction(dev, NULL) == SW_ERR_NULL_HANDLE, "null leaf");
        OK(sw_device_set_gemm_reduction(dev, 64));
        OK(sw_device_get_gemm_reduction(dev, &leaf));
        CHECK(leaf == 64, "reduction after set: %lld", (long long)leaf);
        OK(sw_device_set_gemm_reduction(dev, 0));
    }
    OK(sw_stream_synchronize(s0));

    /* Two virtual ranks on one device, driven from this one thread through two streams. */
    sw_device devs[2] = {dev, dev};
    sw_comm comm = NULL;
    OK(sw_comm_create_local(2, devs, 5000, &comm));
    float x0[5] = {1, 2, 3, 4, 5}, x1[5] = {10, 20, 30, 40, 50}, out0[5], out1[5];
    sw_buffer r0, r1;
    OK(sw_buffer_alloc(dev, sizeof x0, &r0));
    OK(sw_buffer_alloc(dev, sizeof x1, &r1));
    OK(sw_memcpy_h2d_async(r0, 0, x0, sizeof x0, s0));
    OK(sw_memcpy_h2d_async(r1, 0, x1, sizeof x1, s1));
    OK(sw_all_reduce(comm, 0, r0, 0, r0, 0, 5, SW_DTYPE_F32, SW_REDUCE_SUM, s0));
    OK(sw_all_reduce(comm, 1, r1, 0, r1, 0, 5, SW_DTYPE_F32, SW_REDUCE_SUM, s1));
    OK(sw_memcpy_d2h_async(out0, r0, 0, sizeof out0, s0));
    OK(sw_memcpy_d2h_async(out1, r1, 0, sizeof out1, s1));
    OK(sw_stream_synchronize(s0));
    OK(sw_stream_synchronize(s1));
    for (int i = 0; i < 5; ++i)
        CHECK(out0[i] == x0[i] + x1[i] && out1[i] == out0[i], "all-reduce element %d: %g %g", i, out0[i], out1[i]);
    CHECK(sw_all_reduce(comm, 2, r0, 0, r0, 0, 5, SW_DTYPE_F32, SW_REDUCE_SUM, s0) == SW_ERR_INVALID_ARGUMENT,
          "rank 2 of 2");

    OK(sw_comm_destroy(comm));
    OK(sw_buffer_destroy(r0));
    OK(sw_buffer_destroy(r1));
    OK(sw_buffer_destroy(da));
    OK(sw_buffer_destroy(db));
    OK(sw_buffer_destroy(dbias));
    OK(sw_buffer_destroy(dc));
    OK(sw_stream_destroy(s0));
    OK(sw_stream_destroy(s1));
    OK(sw_device_destroy(dev));

    if (failures) {
        fprintf(stderr, "c_api_check: %d failure(s)\n", failures);
        return 1;
    }
    printf("c_api_check: all checks passed\n");
    return 0;
}
