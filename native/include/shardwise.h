/*
 * shardwise.h — the one C ABI of the Shardwise native core.
 *
 * Conventions (every function below follows them):
 *  - Every function returns sw_status. SW_OK (0) means success. On failure a message describing the
 *    problem (naming the argument and what was expected) is stored in a thread-local slot that
 *    sw_last_error() returns until the next failing call on the same thread.
 *  - No C++ exception ever crosses this boundary.
 *  - Enum arguments (sw_dtype, sw_backend, sw_op, sw_epilogue, sw_reduce_op) may hold any 32-bit value: the
 *    library reads each as a plain integer and refuses a value that is not one of the enum's constants with
 *    SW_ERR_INVALID_ARGUMENT naming the argument and its valid values (sw_dtype_size returns 0 and
 *    sw_status_string "SW_ERR_UNKNOWN_STATUS" instead). The *_MAX_ENUM constants are not values.
 *  - Handles are opaque pointers. Passing NULL where a handle is required gives SW_ERR_NULL_HANDLE.
 *    Destroying NULL is a no-op that returns SW_OK.
 *  - Matrices are row-major with explicit leading dimensions (elements between consecutive rows).
 *    Buffer offsets and counts are in elements of the stated dtype unless a name says "bytes". An offset must lie
 *    inside its buffer (offset <= size) even when the count is 0.
 *  - Work on a stream is asynchronous and in order. Errors that happen while a stream runs its work
 *    are reported by the next sw_stream_synchronize on that stream, which then
 *    clears them. Operations queued after a failed operation on the same stream are skipped (their
 *    outputs are left untouched) until the error has been reported.
 *
 * This header compiles as C99 and as C++.
 */
#ifndef SHARDWISE_H
#define SHARDWISE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(SHARDWISE_BUILDING)
#    define SW_API __declspec(dllexport)
#  else
#    define SW_API __declspec(dllimport)
#  endif
#else
#  define SW_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or a struct layout in this header changes. */
#define SW_ABI_VERSION 8 /* 2: sw_gemm_desc and sw_gemm_ex; 3: sw_comm_split*, sw_send / sw_recv / sw_sendrecv;
                            4: sw_gemm_grouped; 5: sw_comm_set_agreement_check / sw_comm_get_agreement_check;
                            6: sw_comm_get_transport (TCP communicators over shared memory);
                            7: the transformer block's kernels: sw_softmax, sw_norm, sw_activation, sw_glu, sw_dropout,
                               sw_embedding, sw_cross_entropy_* (and their backward); the optimizers' sw_sgd_step,
                               sw_adamw_step, sw_sum_squares, sw_scale;
                            8: TP-invariant numerics: SW_REDUCE_SUM_TREE, sw_device_set_gemm_reduction /
                               sw_device_get_gemm_reduction, sw_gemm_desc.k_leaf (appended; the ABI 2 size is still
                               accepted by sw_gemm_ex), sw_cross_entropy_partial_tree, sw_tree_range */

typedef enum sw_status {
    SW_OK = 0,
    SW_ERR_INVALID_ARGUMENT = 1,  /* a shape, size, offset, leading dimension, enum or rank is wrong */
    SW_ERR_NULL_HANDLE = 2,       /* a required handle or pointer is NULL */
    SW_ERR_OUT_OF_MEMORY = 3,     /* an allocation failed */
    SW_ERR_UNSUPPORTED = 4,       /* valid request that this backend/build does not implement */
    SW_ERR_TIMEOUT = 5,           /* a collective did not complete in time (a rank never joined) */
    SW_ERR_MISMATCH = 6,          /* ranks disagreed inside a collective (operation, count, dtype, root) */
    SW_ERR_ABORTED = 7,           /* the communicator was aborted by an earlier failure or by sw_comm_abort */
    SW_ERR_BACKEND = 8,           /* the backend (CUDA, cuBLAS, NCCL, MPI, the OS) reported an error */
    SW_ERR_NOT_FOUND = 9,         /* no such device, library or symbol */
    SW_ERR_INTERNAL = 10,         /* a bug in Shardwise: please report it with the message */
    SW_STATUS_MAX_ENUM = 0x7fffffff
} sw_status;

typedef enum sw_dtype {
    SW_DTYPE_F32 = 0,
    SW_DTYPE_F64 = 1,
    SW_DTYPE_F16 = 2,
    SW_DTYPE_BF16 = 3,
    SW_DTYPE_I32 = 4,
    SW_DTYPE_U8 = 5,
    SW_DTYPE_MAX_ENUM = 0x7fffffff /* not a value: keeps the enum 32 bits wide */
} sw_dtype;

typedef enum sw_backend {
    SW_BACKEND_CPU = 0,
    SW_BACKEND_CUDA = 1,
    SW_BACKEND_MAX_ENUM = 0x7fffffff
} sw_backend;

typedef enum sw_op {
    SW_OP_N = 0, /* use the matrix as stored */
    SW_OP_T = 1, /* use its transpose */
    SW_OP_MAX_ENUM = 0x7fffffff
} sw_op;

typedef enum sw_epilogue {
    SW_EPILOGUE_NONE = 0,
    SW_EPILOGUE_GELU = 1, /* tanh approximation, applied after alpha, beta and bias */
    SW_EPILOGUE_MAX_ENUM = 0x7fffffff
} sw_epilogue;

typedef enum sw_reduce_op {
    SW_REDUCE_SUM = 0,      /* in rank order: ((x0 + x1) + x2) + ... */
    SW_REDUCE_SUM_TREE = 1, /* ABI 8: in the fixed binary tree of sw_device_set_gemm_reduction over the ranks: the ranks
                               [a, b) sum as sum[a, m) + sum[m, b) with m = a + ceil((b - a) / 2); for a power-of-two
                               world size ((x0 + x1) + (x2 + x3)) + ...: the top of a TP-invariant GEMM's tree */
    SW_REDUCE_MAX_ENUM = 0x7fffffff
} sw_reduce_op;

typedef enum sw_norm_kind {
    SW_NORM_LAYER = 0, /* LayerNorm: (x - mean) / sqrt(var + eps) * gamma + beta */
    SW_NORM_RMS = 1,   /* RMSNorm: x / sqrt(mean(x^2) + eps) * gamma */
    SW_NORM_KIND_MAX_ENUM = 0x7fffffff
} sw_norm_kind;

typedef enum sw_activation {
    SW_ACTIVATION_GELU = 0, /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as sw_gelu */
    SW_ACTIVATION_RELU = 1, /* max(x, 0); derivative 0 at x <= 0 */
    SW_ACTIVATION_SILU = 2, /* x * sigmoid(x) (Swish; the gate of SwiGLU) */
    SW_ACTIVATION_MAX_ENUM = 0x7fffffff
} sw_activation;

typedef struct sw_device_s* sw_device;
typedef struct sw_buffer_s* sw_buffer;
typedef struct sw_stream_s* sw_stream;
typedef struct sw_event_s* sw_event;
typedef struct sw_comm_s* sw_comm;
typedef struct sw_store_s* sw_store;

/* ---------------------------------------------------------------- library */

/* The ABI version this library was built with (SW_ABI_VERSION of its header). Never fails. */
SW_API int32_t sw_abi_version(void);
/* Library version as "major.minor.patch", static storage. Never fails. */
SW_API const char* sw_version_string(void);
/* The message of the last failing call on this thread ("" when none). Valid until the next call
 * on this thread. Never fails. */
SW_API const char* sw_last_error(void);
/* A short constant name for a status ("SW_ERR_TIMEOUT"). Never fails. */
SW_API const char* sw_status_string(sw_status status);
/* Size in bytes of one element of dtype, or 0 for an unknown dtype. Never fails. */
SW_API size_t sw_dtype_size(sw_dtype dtype);

/* Level-1 index math, shared by every layer above (C#, C, CUDA): splits `total` items over `parts`
 * as evenly as possible, the first total % parts parts taking one extra. Writes part `index`'s first
 * item and count. parts >= 1, 0 <= index < parts, total >= 0. Parts may be empty when total < parts. */
SW_API sw_status sw_shard_range(int64_t total, int32_t parts, int32_t index, int64_t* offset, int64_t* count);
/* The split of TP-invariant numerics (ABI 8; see sw_device_set_gemm_reduction): `total` items cut into
 * N = ceil(total / leaf) leaves (the last one shorter), node `index` of the tree's `parts` nodes at depth log2(parts)
 * (leaves [a, b) split at a + ceil((b - a) / 2), a single leaf staying whole on the left). Writes the node's first item
 * and count (0 for an empty node when parts > N). total >= 0, leaf >= 1, parts a power of two (1 .. 2^20),
 * 0 <= index < parts. */
SW_API sw_status sw_tree_range(int64_t total, int64_t leaf, int32_t parts, int32_t index, int64_t* offset, int64_t* count);

/* ---------------------------------------------------------------- devices */

#define SW_DEVICE_NAME_MAX 128

typedef struct sw_device_info {
    int32_t backend;                 /* sw_backend */
    int32_t ordinal;                 /* index within the backend */
    int32_t num_threads;             /* CPU: compute threads of the device; CUDA: multiprocessors */
    int32_t reserved0;
    uint64_t total_memory_bytes;     /* CPU: physical memory; CUDA: device memory */
    char name[SW_DEVICE_NAME_MAX];   /* e.g. "CPU (AMD EPYC, 2 threads)" */
    char kernel[64];                 /* the GEMM micro-kernel chosen at run time, e.g. "avx512" */
} sw_device_info;

/* Number of devices of a backend. A backend that is not compiled in, or has no device, reports 0
 * and SW_OK. The CPU backend always reports 1. */
SW_API sw_status sw_device_count(sw_backend backend, int32_t* count);
/* Opens device `ordinal` of `backend`. num_threads: CPU compute threads (0 = SHARDWISE_NUM_THREADS
 * or the number of logical processors); ignored by CUDA. Each call returns a new handle; handles to
 * the same CPU device do not share threads. */
SW_API sw_status sw_device_create(sw_backend backend, int32_t ordinal, int32_t num_threads, sw_device* out);
/* Destroys a device. Fails with SW_ERR_INVALID_ARGUMENT while buffers, streams, events or
 * communicators created on it are still alive. */
SW_API sw_status sw_device_destroy(sw_device device);
SW_API sw_status sw_device_get_info(sw_device device, sw_device_info* info);
/* Chooses the GEMM implementation for work enqueued afterwards. CPU: the micro-kernel ("auto", "avx512bf16",
 * "avx512", "avx2", "generic"; SW_ERR_UNSUPPORTED if the processor lacks it). "avx512bf16" (what "auto" picks where
 * the processor has AVX512_BF16) runs f32 and f16 GEMMs like "avx512" and bf16 inputs on bf16 pairs with vdpbf16ps;
 * the others widen 16-bit inputs to fp32 (see sw_gemm_desc). CUDA: "auto", "cublaslt", "mma" or "wgmma" (see
 * sw_gemm). */
SW_API sw_status sw_device_set_kernel(sw_device device, const char* kernel);

/* Level 2 of the two-level tiling, for plans and docs: the GEMM tile shape the device's current kernel uses —
 * register tile mr x nr and cache blocks mc x kc x nc. CUDA devices report zeros (cuBLASLt chooses its tiles per
 * shape at run time). */
typedef struct sw_tile_shape {
    int32_t mr, nr, mc, kc, nc;
    int32_t reserved;
} sw_tile_shape;
SW_API sw_status sw_device_get_tile_shape(sw_device device, sw_tile_shape* shape);

/* TP-invariant numerics (ABI 8): how the GEMMs enqueued afterwards on this device sum over k (sw_gemm, sw_gemm_ex with
 * k_leaf = 0, sw_gemm_grouped, and every layer built on them).
 *  - leaf = 0 (the default): the backend's fastest order (CPU: k cut into ceil(k / KC) nearly equal blocks added into
 *    C one after another).
 *  - leaf > 0 (even, at most 2^24): the tree reduction. k is cut into N = ceil(k / leaf) leaves [l*leaf, (l+1)*leaf)
 *    (the last one shorter when leaf does not divide k); each leaf's products are summed from 0 in k order in fp32;
 *    the leaves are combined by a fixed binary tree: the leaves [a, b) sum as sum[a, m) + sum[m, b) with
 *    m = a + ceil((b - a) / 2); then alpha, beta, the bias and the epilogue are applied once, C = alpha * T
 *    (beta = 0) or fma(alpha, T, beta * C), plus bias, then GeLU, rounded once to C's type.
 *    Why: the tree's top log2(p) levels split the leaves into p nodes, node r = leaves [s(r), s(r + 1)) (p a power of two;
 *    some nodes empty when p > N). A row-parallel GEMM whose rank r holds the k range [s(r) * leaf, min(k, s(r + 1) * leaf))
 *    computes node r's value with this same device setting (alpha 1, no bias), and an all-reduce / reduce-scatter
 *    with SW_REDUCE_SUM_TREE combines the nodes with the tree's top: the result equals the unsharded GEMM bit for bit,
 *    for every power-of-two p (an empty node's zeros add exactly: a tree sum is never -0). Other p cannot follow
 *    the tree (Shardwise.Parallel refuses them in this mode).
 *  - Costs speed where k has many leaves (the partial sums live in workspaces; README, "Performance"). CPU: the
 *    results depend on the kernel (sw_device_set_kernel) as in the default mode, never on m, n or the threads.
 *    CUDA: the hand-written tree kernel (fp32 FMA chains, 16-bit inputs widened), whatever sw_device_set_kernel says.
 * SW_ERR_INVALID_ARGUMENT for a leaf that is negative, odd or above 2^24. */
SW_API sw_status sw_device_set_gemm_reduction(sw_device device, int64_t leaf);
SW_API sw_status sw_device_get_gemm_reduction(sw_device device, int64_t* leaf);

/* ---------------------------------------------------------------- buffers */

/* Allocates `bytes` (> 0) of device memory, 64-byte aligned. Contents are unspecified. */
SW_API sw_status sw_buffer_alloc(sw_device device, uint64_t bytes, sw_buffer* out);
/* Wraps memory owned by someone else (another framework's tensor) without copying and without
 * taking ownership: destroying the buffer never frees `ptr`. On the CPU backend `ptr` is host memory;
 * on CUDA it is device memory of that device. The caller keeps it alive until the buffer is
 * destroyed and all work using it has completed. */
SW_API sw_status sw_buffer_wrap(sw_device device, void* ptr, uint64_t bytes, sw_buffer* out);
/* (bytes: 1..2^50, and ptr + bytes must not run past the end of the address space; else SW_ERR_INVALID_ARGUMENT.) */
/* Destroys the handle; frees the memory if it was allocated by sw_buffer_alloc. Work still queued
 * that uses the buffer must have completed (synchronize first). */
SW_API sw_status sw_buffer_destroy(sw_buffer buffer);
SW_API sw_status sw_buffer_get_pointer(sw_buffer buffer, void** ptr);
SW_API sw_status sw_buffer_get_size(sw_buffer buffer, uint64_t* bytes);
SW_API sw_status sw_buffer_get_device(sw_buffer buffer, sw_device* device);

/* Copies `bytes` from host memory into buffer at byte offset `offset`, in stream order. The host
 * memory must stay valid until the stream reaches the copy (synchronize before freeing it). */
SW_API sw_status sw_memcpy_h2d_async(sw_buffer dst, uint64_t dst_offset_bytes, const void* src,
                                     uint64_t bytes, sw_stream stream);
/* Copies `bytes` from buffer into host memory, in stream order. */
SW_API sw_status sw_memcpy_d2h_async(void* dst, sw_buffer src, uint64_t src_offset_bytes,
                                     uint64_t bytes, sw_stream stream);
/* Copies between two buffers (same device, or peers), in stream order. */
SW_API sw_status sw_memcpy_d2d_async(sw_buffer dst, uint64_t dst_offset_bytes, sw_buffer src,
                                     uint64_t src_offset_bytes, uint64_t bytes, sw_stream stream);
/* Sets `bytes` bytes to `value`, in stream order. */
SW_API sw_status sw_memset_async(sw_buffer dst, uint64_t dst_offset_bytes, uint8_t value,
                                 uint64_t bytes, sw_stream stream);

/* ---------------------------------------------------------------- streams and events */

/* A stream is an in-order asynchronous queue of work on one device. On the CPU backend it is
 * served by a worker thread of its own; compute-heavy work (GEMM) runs on the device's threads. */
SW_API sw_status sw_stream_create(sw_device device, sw_stream* out);
/* Wraps another framework's native stream (a cudaStream_t; NULL = the device's legacy default stream)
 * without taking ownership: work queued through Shardwise is ordered with the framework's own work on
 * that stream. Destroying the handle never destroys the native stream; it waits for the stream, and when
 * it was the last handle wrapping that native stream it frees what Shardwise kept for it (the cuBLASLt
 * workspace), so wrapping a framework's stream per call does not accumulate device memory.
 * SW_ERR_UNSUPPORTED on the CPU backend, which has no native streams. */
SW_API sw_status sw_stream_wrap(sw_device device, void* native_stream, sw_stream* out);
/* The native stream behind a handle (cudaStream_t), or NULL on the CPU backend. */
SW_API sw_status sw_stream_get_native(sw_stream stream, void** native_stream);
/* Waits for queued work, then destroys the stream. */
SW_API sw_status sw_stream_destroy(sw_stream stream);
/* Blocks until all work queued so far has completed. Returns the first error of that work (and
 * its message through sw_last_error), then clears it. */
SW_API sw_status sw_stream_synchronize(sw_stream stream);
/* Makes later work on `stream` wait until `event`'s recorded point has completed. */
SW_API sw_status sw_stream_wait_event(sw_stream stream, sw_event event);

SW_API sw_status sw_event_create(sw_device device, sw_event* out);
SW_API sw_status sw_event_destroy(sw_event event);
/* Records the current end of `stream` into the event (replacing an earlier record). */
SW_API sw_status sw_event_record(sw_event event, sw_stream stream);
/* Blocks until the recorded point has completed. An event never recorded completes at once. */
SW_API sw_status sw_event_synchronize(sw_event event);
/* *done = 1 when the recorded point has completed, else 0. */
SW_API sw_status sw_event_query(sw_event event, int32_t* done);
/* Milliseconds between two completed events, >= 0. SW_ERR_INVALID_ARGUMENT when either has not completed, or when
 * end was recorded (completed) before start (swapped arguments) instead of a negative time. */
SW_API sw_status sw_event_elapsed_ms(sw_event start, sw_event end, double* ms);

/* ---------------------------------------------------------------- GEMM */

/* C[m,n] = epilogue(alpha * op(A)[m,k] · op(B)[k,n] + beta * C + bias[n]), in stream order.
 *  - op(A) is A (m×k, lda ≥ k) for SW_OP_N, or Aᵀ where A is stored k×m (lda ≥ m) for SW_OP_T;
 *    likewise op(B) is B (k×n, ldb ≥ n) or Bᵀ with B stored n×k (ldb ≥ k). ldc ≥ n.
 *  - Offsets are in elements from the start of each buffer; every matrix must lie inside its buffer.
 *  - bias may be NULL; otherwise it holds n elements starting at bias_offset.
 *  - beta == 0 never reads C (NaN in C does not propagate).
 *  - m, n ≥ 1; k ≥ 0 (k == 0 gives beta*C + bias).
 *  - The result of element C[i,j] does not depend on m, n, the position of (i,j) or the number
 *    of threads: a column block computed alone equals the same block of the full product bit for bit.
 *  - dtype (of A, B, C and bias): F32, F16 or BF16 (fp32 accumulation; a 16-bit C rounded once, as sw_gemm_ex
 *    describes; F16/BF16 on the CPU since ABI 2). The CUDA algorithm is chosen per device with sw_device_set_kernel ("auto" and
 *    "cublaslt": cuBLASLt; "mma": the hand-written tensor-core kernel (mma.sync), F16/BF16 only;
 *    "wgmma": the hand-written Hopper kernel (wgmma.mma_async), F16/BF16 only, compute capability
 *    9.0 with a plugin built for sm_90a, else SW_ERR_UNSUPPORTED; not yet validated on a GPU).
 */
SW_API sw_status sw_gemm(sw_stream stream, sw_dtype dtype, sw_op trans_a, sw_op trans_b,
                         int64_t m, int64_t n, int64_t k, float alpha,
                         sw_buffer a, uint64_t a_offset, int64_t lda,
                         sw_buffer b, uint64_t b_offset, int64_t ldb,
                         float beta,
                         sw_buffer c, uint64_t c_offset, int64_t ldc,
                         sw_buffer bias, uint64_t bias_offset,
                         sw_epilogue epilogue);

/* The one GEMM description (ABI 2): element types per operand, fp32 accumulation.
 *   C[m,n] = epilogue(alpha * op(A) · op(B) + beta * C + bias[n])   with the same shapes, offsets, leading dimensions
 *   and rules as sw_gemm (leading dimensions and offsets in elements of each operand's own type).
 *  - size: sizeof(sw_gemm_desc), set by the caller (a smaller value from an older caller is refused today with
 *    SW_ERR_INVALID_ARGUMENT; later versions append fields and accept the older sizes).
 *  - a_type == b_type in {F32, F16, BF16}; c_type is F32 or a_type; the bias (optional) has c_type; compute_type is
 *    F32: products are accumulated in fp32, alpha, beta, the bias and the epilogue are applied in fp32, and the
 *    result is rounded once (round to nearest even) to c_type. A combination the backend lacks fails with
 *    SW_ERR_UNSUPPORTED naming it ("a = bf16, b = bf16, c = f16 ...").
 *  - CPU kernels (sw_device_set_kernel): 16-bit inputs are widened to fp32 while the panels are packed and run the
 *    named fp32 micro-kernel, except bf16 with "avx512bf16" (the default where the processor has AVX512_BF16), which
 *    multiplies bf16 pairs with vdpbf16ps; that instruction treats bf16 subnormal inputs as zero and flushes
 *    subnormal fp32 results of its multiply-adds to zero (the widening kernels keep subnormals).
 *  - Determinism as sw_gemm: a column block computed alone equals the same block of the full product bit for bit.
 *  - sw_gemm(stream, dtype, ...) is sw_gemm_ex with a_type = b_type = c_type = dtype. */
typedef struct sw_gemm_desc {
    uint32_t size;
    sw_op trans_a, trans_b;
    sw_dtype a_type, b_type, c_type;
    sw_dtype compute_type;
    sw_epilogue epilogue;
    int64_t m, n, k;
    float alpha, beta;
    sw_buffer a; uint64_t a_offset; int64_t lda;
    sw_buffer b; uint64_t b_offset; int64_t ldb;
    sw_buffer c; uint64_t c_offset; int64_t ldc;
    sw_buffer bias; uint64_t bias_offset;
    /* ABI 8 (appended; a desc of the ABI 2 size, which ends before it, reads as k_leaf = 0): the k reduction of this
     * GEMM: 0 = the device's (sw_device_set_gemm_reduction), > 0 = the tree reduction with this leaf (even, at most
     * 2^24), -1 = the default order whatever the device's setting. */
    int64_t k_leaf;
} sw_gemm_desc;
SW_API sw_status sw_gemm_ex(sw_stream stream, const sw_gemm_desc* desc);

/* Grouped GEMM (ABI 4): count independent GEMMs, member i being sw_gemm_ex(streams[i], &descs[i]), submitted as one
 * call so that the backend can share work between them — the sharded GEMM of virtual ranks on one device, where
 * every rank multiplies the same X by its own shard of W: the CPU backend packs op(A) once for all members that
 * share it (same buffer, offset, lda, trans_a, a_type, m and k) instead of once per member.
 *  - count >= 1; streams[i] and descs[i] for i < count; every stream on the same device (SW_ERR_INVALID_ARGUMENT
 *    naming streams[i] otherwise); a stream may appear more than once. Each descs[i] is checked as sw_gemm_ex checks
 *    its desc, and a failure names the member ("descs[2]: ldb = ...").
 *  - Outputs: no member's C may overlap another member's C or any member's A, B or bias (SW_ERR_INVALID_ARGUMENT).
 *  - Ordering: member i is ordered in streams[i] as if sw_gemm_ex had been called there; the whole group starts
 *    after every listed stream's earlier work and every listed stream's later work starts after the group.
 *    Nothing is queued when any check fails.
 *  - Errors: a member whose stream has a pending (unreported) error is skipped like any work on that stream; the
 *    other members still run. A failure while computing is reported by every listed stream's next synchronize.
 *  - Results: member i's C equals what sw_gemm_ex(streams[i], &descs[i]) writes, bit for bit (the determinism
 *    contract of sw_gemm), on every backend. Backends without a grouped path run the members one by one. */
SW_API sw_status sw_gemm_grouped(int32_t count, const sw_stream* streams, const sw_gemm_desc* descs);

/* ---------------------------------------------------------------- element-wise activations */

/* y[i] = gelu(x[i]) for i < count (tanh approximation, as the GEMM epilogue), in stream order. x == y (same
 * buffer and offset) is allowed. dtype: F32 on the CPU; F32, F64, F16, BF16 on CUDA. */
SW_API sw_status sw_gelu(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer y,
                         uint64_t y_offset, uint64_t count);
/* dx[i] = dy[i] * gelu'(x[i]) for i < count: the backward of sw_gelu, x being its input (the pre-activation).
 * dx may be dy (in place). */
SW_API sw_status sw_gelu_backward(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer dy,
                                  uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, uint64_t count);

/* ---------------------------------------------------------------- attention and normalization
 * The row-wise kernels of a transformer block, queued on a stream. dtype: F32 on every backend (the scores and the
 * statistics are fp32 under every precision policy). Offsets and counts are in elements; a zero row count does
 * nothing (offsets still checked). Row sums and statistics accumulate in fp32 or wider (the CPU backend and the CUDA
 * parameter gradients in double); the CPU and CUDA backends may differ in the last bits. */

/* Row-wise softmax of scaled scores. For each row r < rows of x (row r at x_offset + r*ld, cols >= 1 values,
 * ld >= cols), with s_j = scale * x[r, j] over the kept columns j: y[r, j] = exp(s_j - max s) / sum exp(s - max s);
 * columns not kept get y = 0. causal_period == 0 keeps every column. causal_period = T > 0 (T <= cols) is the causal
 * mask of attention: row r is query q = r mod T of a block of T queries whose keys are the last T of the cols, and
 * column j is kept when j <= q + (cols - T). Rows are independent, so the score matrices of several heads stacked as
 * (heads * T) x cols take one call. The elements between cols and ld of each row are not touched. y may be x (the
 * same offset); otherwise the ranges must not overlap. scale: finite. */
SW_API sw_status sw_softmax(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer y, uint64_t y_offset,
                            int64_t rows, int64_t cols, int64_t ld, float scale, int64_t causal_period);
/* The backward of sw_softmax, y being its output: dx[r, j] = scale * y[r, j] * (dy[r, j] - sum_k dy[r, k] * y[r, k])
 * (masked columns, where y = 0, give 0). dx may be dy (in place); y must not overlap dx otherwise. */
SW_API sw_status sw_softmax_backward(sw_stream stream, sw_dtype dtype, sw_buffer y, uint64_t y_offset, sw_buffer dy,
                                     uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, int64_t rows, int64_t cols,
                                     int64_t ld, float scale);

/* Normalizes each row r < rows of x (rows x cols, contiguous: row r at x_offset + r*cols), cols >= 1, eps > 0 finite:
 *   SW_NORM_LAYER: mean = sum(x)/cols, var = sum((x - mean)^2)/cols, rstd = 1/sqrt(var + eps),
 *                  y = (x - mean) * rstd * gamma + beta;
 *   SW_NORM_RMS:   mean = 0, rstd = 1/sqrt(sum(x^2)/cols + eps), y = x * rstd * gamma.
 * gamma and beta are vectors of cols elements; a NULL gamma means 1, a NULL beta 0 (beta must be NULL for RMS).
 * stats, when not NULL, receives the fp32 statistics the backward needs: mean of row r at stats[stats_offset + 2r],
 * rstd at stats[stats_offset + 2r + 1]. y may be x (in place); no other range may overlap y. */
SW_API sw_status sw_norm(sw_stream stream, sw_norm_kind kind, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer gamma,
                         uint64_t gamma_offset, sw_buffer beta, uint64_t beta_offset, sw_buffer y, uint64_t y_offset,
                         sw_buffer stats, uint64_t stats_offset, int64_t rows, int64_t cols, float eps);
/* The backward of sw_norm with the statistics it wrote (x its input, gamma as given to it, NULL meaning 1). With
 * xhat = (x - mean) * rstd and g = dy * gamma:
 *   dx = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat))   (LAYER)
 *   dx = rstd * (g - xhat * mean_row(g * xhat))                 (RMS)
 *   dgamma[c] = sum_r dy[r, c] * xhat[r, c],  dbeta[c] = sum_r dy[r, c]  (LAYER only), summed over r in order.
 * dgamma / dbeta may be NULL (not computed; dbeta must be NULL for RMS); accumulate != 0 adds to them instead of
 * overwriting. dx may be dy (in place); the parameter gradients must not overlap anything else. */
SW_API sw_status sw_norm_backward(sw_stream stream, sw_norm_kind kind, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                  sw_buffer gamma, uint64_t gamma_offset, sw_buffer stats, uint64_t stats_offset,
                                  sw_buffer dy, uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, sw_buffer dgamma,
                                  uint64_t dgamma_offset, sw_buffer dbeta, uint64_t dbeta_offset, int64_t rows,
                                  int64_t cols, int32_t accumulate);

/* ---------------------------------------------------------------- activations, gated units, dropout (fp32) */

/* y[i] = act(x[i]) for i < count; y may be x. The fp32 math of each activation is in sw_activation's comments. */
SW_API sw_status sw_activation_forward(sw_stream stream, sw_activation act, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                       sw_buffer y, uint64_t y_offset, uint64_t count);
/* dx[i] = dy[i] * act'(x[i]), x being the activation's input; dx may be dy. */
SW_API sw_status sw_activation_backward(sw_stream stream, sw_activation act, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                        sw_buffer dy, uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, uint64_t count);
/* A gated linear unit over rows (SwiGLU with SW_ACTIVATION_SILU, GeGLU with GELU): gu is rows x (2 cols), contiguous,
 * each row holding the gate in its first cols columns and the up projection in the next cols; h (rows x cols,
 * contiguous) receives h[r, j] = act(gu[r, j]) * gu[r, cols + j]. h must not overlap gu. */
SW_API sw_status sw_glu(sw_stream stream, sw_activation act, sw_dtype dtype, sw_buffer gu, uint64_t gu_offset, sw_buffer h,
                        uint64_t h_offset, int64_t rows, int64_t cols);
/* The backward of sw_glu: dgu[r, j] = dh[r, j] * gu[r, cols + j] * act'(gu[r, j]) and dgu[r, cols + j] = dh[r, j] *
 * act(gu[r, j]). dgu may be gu (in place); dh must not overlap either. */
SW_API sw_status sw_glu_backward(sw_stream stream, sw_activation act, sw_dtype dtype, sw_buffer gu, uint64_t gu_offset,
                                 sw_buffer dh, uint64_t dh_offset, sw_buffer dgu, uint64_t dgu_offset, int64_t rows,
                                 int64_t cols);
/* Inverted dropout with a counter-based generator: element i is kept when u(seed, counter + i) >= p, where u is a
 * uniform 24-bit fraction computed from a 64-bit integer hash of (seed, counter + i) — the same bits on every backend
 * and for any split of the range into calls (element i of a call with counter c equals element 0 of a call with
 * counter c + i). y[i] = kept ? x[i] / (1 - p) : 0 (the quotient rounded once in fp32). The backward is the same call
 * on dy with the same seed and counter. 0 <= p < 1; y may be x. */
SW_API sw_status sw_dropout(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer y, uint64_t y_offset,
                            uint64_t count, float p, uint64_t seed, uint64_t counter);

/* ---------------------------------------------------------------- vocabulary-parallel embedding and cross-entropy
 * A vocabulary of vocab_size rows split over ranks: this call's shard holds rows [vocab_offset, vocab_offset +
 * shard_rows). Token ids are I32. fp32 values. */

/* out[r, :] = table[ids[r] - vocab_offset, :] for r < rows when the id lies in the shard, else zeros (the rows of
 * other shards, and ids outside every shard: an all-reduce of the shards' outputs then gives the embedding, and an
 * out-of-range id a zero row). table: shard_rows x cols, out: rows x cols, both contiguous; out must not overlap. */
SW_API sw_status sw_embedding(sw_stream stream, sw_dtype dtype, sw_buffer table, uint64_t table_offset, int64_t shard_rows,
                              sw_buffer ids, uint64_t ids_offset, int64_t vocab_offset, sw_buffer out, uint64_t out_offset,
                              int64_t rows, int64_t cols);
/* dtable[ids[r] - vocab_offset, :] += dout[r, :] for every r < rows whose id lies in the shard, in order of r (the same
 * bits for any thread count). accumulate == 0 first sets dtable to zero. dtable must not overlap dout. */
SW_API sw_status sw_embedding_backward(sw_stream stream, sw_dtype dtype, sw_buffer dout, uint64_t dout_offset, sw_buffer ids,
                                       uint64_t ids_offset, int64_t vocab_offset, sw_buffer dtable, uint64_t dtable_offset,
                                       int64_t shard_rows, int64_t rows, int64_t cols, int32_t accumulate);
/* The shard's statistics of the softmax over the vocabulary, for each row r < rows of logits (rows x cols, row r at
 * logits_offset + r*ld; cols = the shard's vocabulary rows): stats[3r] = max_j z[r, j], stats[3r + 1] = sum_j
 * exp(z[r, j] - stats[3r]), stats[3r + 2] = z[r, ids[r] - vocab_offset] when the id lies in the shard, else 0. */
SW_API sw_status sw_cross_entropy_partial(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                          int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                          int64_t vocab_offset, sw_buffer stats, uint64_t stats_offset);
/* TP-invariant statistics of this shard (ABI 8); dtype, logits, rows, cols, ld, ids and vocab_offset as in
 * sw_cross_entropy_partial, except that cols may be 0 (an empty shard: logits unread, S = 0, t = 0). gathered (F32):
 * `parts` blocks of 3*rows values, block k = shard k's sw_cross_entropy_partial stats (as an all-gather leaves them);
 * only their maxima are read: M[r] = max_k gathered[3*(k*rows + r)] (exact; NaN when one is NaN). With that M:
 * S[r] = sum_j exp(z[r, j] - M[r]) over this shard's columns cut into leaves of `leaf` columns [l*leaf,
 * min(cols, (l + 1)*leaf)), each leaf summed from +0 in column order in fp32 (plain adds), the leaves combined by the
 * fixed binary tree of sw_device_set_gemm_reduction (one fp32 addition per node); t[r] as the target logit of
 * sw_cross_entropy_partial. out (F32, 3*rows values): [include_max ? M : 0, S, t] per row. exp is one function for
 * every element on a backend (CPU: the C library's expf; CUDA: expf), so a shard's S depends only on its row and M.
 * Why: a rank whose vocabulary shard is node r of the tree over the vocabulary's leaves (sw_device_set_gemm_reduction's
 * nodes for p ranks, p a power of two) computes that node's S; an all-reduce of `out` with SW_REDUCE_SUM_TREE
 * (include_max = 1 on rank 0 only) gives every rank [M, S, t] with S the unsplit tree's bits, and
 * sw_cross_entropy_combine with parts = 1 turns them into lse = M + log(S) and the loss: the same bits for every
 * power-of-two number of ranks. parts >= 1, leaf >= 1, include_max 0 or 1; out must not overlap logits, ids or
 * gathered. */
SW_API sw_status sw_cross_entropy_partial_tree(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                               int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                               int64_t vocab_offset, sw_buffer gathered, uint64_t gathered_offset,
                                               int32_t parts, int64_t leaf, int32_t include_max, sw_buffer out,
                                               uint64_t out_offset);
/* Combines the statistics of `parts` shards (stats: parts blocks of 3*rows values, block k from shard k, e.g. as an
 * all-gather leaves them): with M = max_k m_k, lse[r] = M + log(sum_k s_k exp(m_k - M)) (k in order) and loss[r] =
 * lse[r] - sum_k t_k when 0 <= ids[r] < vocab_size, else loss[r] = 0 (an ignored row). */
SW_API sw_status sw_cross_entropy_combine(sw_stream stream, sw_dtype dtype, sw_buffer stats, uint64_t stats_offset, int32_t parts,
                                          int64_t rows, sw_buffer ids, uint64_t ids_offset, int64_t vocab_size, sw_buffer lse,
                                          uint64_t lse_offset, sw_buffer loss, uint64_t loss_offset);
/* The gradient of the loss with respect to this shard's logits: dlogits[r, j] = dloss[r] * (exp(z[r, j] - lse[r]) -
 * [vocab_offset + j == ids[r]]) for rows with 0 <= ids[r] < vocab_size, 0 for ignored rows. dlogits (rows x cols, the
 * logits' ld) may be the logits (in place). */
SW_API sw_status sw_cross_entropy_backward(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                           int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                           int64_t vocab_offset, int64_t vocab_size, sw_buffer lse, uint64_t lse_offset,
                                           sw_buffer dloss, uint64_t dloss_offset, sw_buffer dlogits,
                                           uint64_t dlogits_offset);

/* ---------------------------------------------------------------- optimizers (fp32 parameters and state)
 * One step over count elements of a parameter shard, queued on a stream: param and the state buffers are F32 (master
 * weights); grad_type is F32, F16 or BF16 (the gradient is widened exactly). Every buffer must lie apart from the
 * others. Arithmetic in fp32, in the order written. count == 0 does nothing. */

/* SGD with momentum and (L2, coupled) weight decay, as torch.optim.SGD with dampening 0:
 *   g = grad + weight_decay * param;
 *   with a momentum buffer: buf = momentum * buf + g; g = nesterov ? g + momentum * buf : buf;
 *   param = param - lr * g.
 * momentum_buf may be NULL (plain SGD; momentum must then be 0). A zeroed buffer gives torch's first step. lr >= 0,
 * momentum in [0, 1), weight_decay >= 0, all finite. */
SW_API sw_status sw_sgd_step(sw_stream stream, sw_dtype grad_type, sw_buffer param, uint64_t param_offset, sw_buffer grad,
                             uint64_t grad_offset, sw_buffer momentum_buf, uint64_t momentum_offset, uint64_t count,
                             float lr, float momentum, float weight_decay, int32_t nesterov);
/* AdamW (decoupled weight decay, as torch.optim.AdamW), step t >= 1 (the step being taken):
 *   param = param * (1 - lr * weight_decay);
 *   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g;
 *   param = param - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps).
 * The bias corrections 1 - beta^t are computed in double and rounded to fp32 once per call. m and v are F32 (zeroed
 * before the first step). lr >= 0, beta1 and beta2 in [0, 1), eps > 0, weight_decay >= 0, all finite. */
SW_API sw_status sw_adamw_step(sw_stream stream, sw_dtype grad_type, sw_buffer param, uint64_t param_offset, sw_buffer grad,
                               uint64_t grad_offset, sw_buffer m, uint64_t m_offset, sw_buffer v, uint64_t v_offset,
                               uint64_t count, float lr, float beta1, float beta2, float eps, float weight_decay,
                               int64_t step);
/* out[out_offset] (F64) = (accumulate ? out[out_offset] : 0) + sum_i x[i]^2 over count elements of x (F32, F16 or BF16),
 * summed in double in a fixed order (fixed-size blocks in order; the same bits for any thread count on a backend):
 * the squared norm of gradients, for clipping by the global norm. out must not overlap x. */
SW_API sw_status sw_sum_squares(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, uint64_t count,
                                sw_buffer out, uint64_t out_offset, int32_t accumulate);
/* x[i] = (dtype)(float(x[i]) * alpha) for i < count (one rounding; F32, F16 or BF16); alpha finite. */
SW_API sw_status sw_scale(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, uint64_t count, float alpha);

/* ---------------------------------------------------------------- communicators */

/* An in-process communicator of world_size ranks (virtual ranks: one host thread or one stream per
 * rank, ranks may share a device). devices[r] is rank r's device. timeout_ms > 0 bounds how long a
 * collective waits for the other ranks (values above 10^12 ms are taken as 10^12); 0 means the default
 * (SHARDWISE_TIMEOUT_MS or 600000).
 *
 * Collectives are called once per rank (from any host thread) and run in the order of that rank's
 * stream. Each rank's n-th collective is matched with every other rank's n-th collective. If the
 * ranks disagree (operation, dtype, count, root, rows) every participating rank fails with
 * SW_ERR_MISMATCH; if some rank does not join within the timeout, the ranks that did fail with
 * SW_ERR_TIMEOUT naming the missing ranks, the operation and its sequence number. Either failure
 * aborts the communicator: later collectives fail at once with SW_ERR_ABORTED. The process stays
 * usable; create a new communicator. */
SW_API sw_status sw_comm_create_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms,
                                      sw_comm* out);
/* Destroys the communicator. Collectives still queued on some stream then fail with SW_ERR_ABORTED
 * instead of waiting for their peers. */
SW_API sw_status sw_comm_destroy(sw_comm comm);
SW_API sw_status sw_comm_get_world_size(sw_comm comm, int32_t* world_size);
/* Aborts: pending and later collectives fail with SW_ERR_ABORTED. Never blocks. */
SW_API sw_status sw_comm_abort(sw_comm comm);
/* sw_comm_abort with the reason every rank then reports (NUL-terminated; the first 4000 bytes are kept; NULL or "":
 * sw_comm_abort's own). The first abort's reason wins. Spmd.Run uses it to name the rank whose body threw. */
SW_API sw_status sw_comm_abort_with_reason(sw_comm comm, const char* reason);
/* *aborted = 1 once aborted; the reason is copied into `reason` (NUL-terminated, may be NULL). */
SW_API sw_status sw_comm_get_state(sw_comm comm, int32_t* aborted, char* reason, uint64_t reason_capacity);

/* The outputs of a failed collective, on every communicator kind (in-process, TCP, MPI, NCCL). When a collective
 * fails (the call returns an error, or the error surfaces at a stream synchronize), every element it would have
 * written on that rank (its receive region: recv; buf on a broadcast's non-root ranks; the rows x sum-of-cols block of
 * sw_all_gather_columns, not the padding up to ld_recv) is EITHER untouched (its value before the call) OR poisoned,
 * all of it, never a mix. Poison is every byte 0xFF: a quiet NaN in f32, f64, f16 and bf16, and -1 in i32, 255 in u8,
 * which cannot be told apart from data: use the status. An in-place all-reduce (send == recv, same buffer and offset)
 * keeps its input exactly. Send buffers are not written. On the in-process communicator with CPU devices nothing can
 * fail once every rank has joined and the ranks agree, so a failed call never wrote anything there; an abort that
 * comes while the ranks move data (sw_comm_abort, a destroy) takes effect from the next collective. Limits: on a CUDA
 * device whose runtime fails, poisoning (a memset) or restoring the in-place input is best effort; on MPI a receive
 * that MPI could not cancel (already matched, its data in flight) may still land after the call failed. */

/* recv[r*count .. (r+1)*count) = rank r's send[0..count) for every r. recv holds world_size*count. */
SW_API sw_status sw_all_gather(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                               sw_buffer recv, uint64_t recv_offset, uint64_t count, sw_dtype dtype,
                               sw_stream stream);
/* Uneven all-gather: each rank passes its own count; recv receives the concatenation of all ranks'
 * send blocks in rank order. recv_capacity (elements) must hold the total. */
SW_API sw_status sw_all_gather_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                 uint64_t count, sw_buffer recv, uint64_t recv_offset,
                                 uint64_t recv_capacity, sw_dtype dtype, sw_stream stream);
/* Column all-gather for column-parallel layers: each rank contributes a rows×cols block (row-major,
 * leading dimension ld_send ≥ cols; cols may differ per rank, may be 0); recv is rows×N with
 * N = Σ cols (ld_recv ≥ N), rank r's block lands at column Σ_{q<r} cols_q. rows must agree. */
SW_API sw_status sw_all_gather_columns(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                       int64_t rows, int64_t cols, int64_t ld_send,
                                       sw_buffer recv, uint64_t recv_offset, int64_t ld_recv,
                                       sw_dtype dtype, sw_stream stream);
/* recv[i] = Σ_r send_r[i] for i < count, summed in rank order 0..p-1 (op SW_REDUCE_SUM) or in the tree order of
 * SW_REDUCE_SUM_TREE on every rank (so every rank gets bit-identical results; the ranks must pass the same op, else
 * SW_ERR_MISMATCH). The reductions of reduce-scatter (-v) take the same op. send == recv (same buffer and offset) is allowed. i32 sums wrap around (two's
 * complement: the sum modulo 2^32, as NCCL), never undefined; f16/bf16 are summed in float. */
SW_API sw_status sw_all_reduce(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                               sw_buffer recv, uint64_t recv_offset, uint64_t count, sw_dtype dtype,
                               sw_reduce_op op, sw_stream stream);
/* send holds world_size*recv_count elements; recv[i] = Σ_r send_r[rank*recv_count + i]. */
SW_API sw_status sw_reduce_scatter(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                   sw_buffer recv, uint64_t recv_offset, uint64_t recv_count,
                                   sw_dtype dtype, sw_reduce_op op, sw_stream stream);
/* Uneven reduce-scatter: each rank passes the count it receives; the ranks' counts, in rank order, tile the
 * first Σ counts elements of every send buffer (send_capacity, in elements, must hold that total), and
 * recv[i] = Σ_q send_q[displ + i] with displ = Σ_{q<rank} count_q. Counts may be 0. Sequence parallelism
 * uses it to leave each rank its own (possibly uneven) block of token rows. */
SW_API sw_status sw_reduce_scatter_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                     uint64_t send_capacity, sw_buffer recv, uint64_t recv_offset, uint64_t recv_count,
                                     sw_dtype dtype, sw_reduce_op op, sw_stream stream);
/* Copies root's buf[0..count) into every rank's buf. */
SW_API sw_status sw_broadcast(sw_comm comm, int32_t rank, sw_buffer buf, uint64_t offset, uint64_t count,
                              sw_dtype dtype, int32_t root, sw_stream stream);
SW_API sw_status sw_barrier(sw_comm comm, int32_t rank, sw_stream stream);

/* Statistics: number of collectives rank `rank` has completed successfully. */
SW_API sw_status sw_comm_get_collective_count(sw_comm comm, int32_t rank, uint64_t* count);

/* ---------------------------------------------------------------- multi-process communicators
 *
 * One rank per process, on a CPU device: the collectives above, with the same semantics, between processes (on one
 * machine or several). Every collective function takes the process's own rank (anything else is
 * SW_ERR_INVALID_ARGUMENT). A collective runs on the rank's stream like an in-process one; the collectives of one
 * rank run one at a time, in the order they were called. Results are bit-identical on every rank and equal to an
 * in-process communicator of the same size (all-reduce and reduce-scatter sum in rank order 0..p-1).
 * Faults: a rank that does not join within the timeout makes the others fail with SW_ERR_TIMEOUT naming it, the
 * operation and its sequence number; ranks that disagree all fail with SW_ERR_MISMATCH; a rank whose process exits
 * or is killed makes the ranks waiting for it fail at once with SW_ERR_ABORTED naming it. Any failure aborts the
 * communicator on every rank (a rank that fails tells the others, whose pending collectives then fail at once with
 * its reason instead of at their timeout); later collectives fail with SW_ERR_ABORTED. No call waits past its
 * timeout. Processes of one job must share the architecture (descriptors travel in native byte order). */

/* The agreement check of a multi-process communicator (TCP, MPI, NCCL per process): the ranks compare a description
 * of every call and fail with SW_ERR_MISMATCH, naming the calls, when they differ. Usually that is a descriptor
 * exchange before the data: one round trip per collective. Over TCP and shared memory, all-reduce, all-gather and
 * reduce-scatter carry the check in their data instead (every frame holds the sender's operation, dtype, count and
 * root, compared before its payload is written; the first exchange reaches every peer): no round trip of its own;
 * every rank fails with SW_ERR_MISMATCH, the messages naming the pair of ranks each saw. enabled = 0 turns the check
 * off for the collectives called after this call (a documented mode for production runs whose calls are known to
 * match; default 1, on): all-reduce, all-gather, reduce-scatter and broadcast then move data at once, each rank
 * assuming the others called what it called. Without the check a mismatch that changes the bytes a rank sends still
 * fails, with SW_ERR_MISMATCH naming the sizes (every message's size is checked by the TCP, shared-memory and MPI
 * transports), and a broadcast with different roots ends at the timeout; one that keeps the sizes (another dtype of
 * the same width, another reduction) goes unnoticed and gives wrong results. The uneven and column variants, the
 * barrier, sw_comm_split and point-to-point transfers always check. Every rank must set the same (with mixed settings
 * a mismatch may fail on the sizes or go unnoticed). In-process communicators accept it and always check (their
 * rendezvous is not a round trip). enabled must be 0 or 1. */
SW_API sw_status sw_comm_set_agreement_check(sw_comm comm, int32_t enabled);
SW_API sw_status sw_comm_get_agreement_check(sw_comm comm, int32_t* enabled);

/* The rank of this process in a multi-process communicator, or -1 when every rank is in this process. */
SW_API sw_status sw_comm_get_rank(sw_comm comm, int32_t* rank);
/* The communicator's kind: "local", "tcp", "mpi" or "nccl" (static storage). */
SW_API sw_status sw_comm_get_backend(sw_comm comm, const char** name);
/* What moves the communicator's data (static storage): "local" (in-process), "nccl", "mpi", and for a TCP
 * communicator "tcp" (its sockets) or, when every rank runs on one host, "shm" (a shared-memory segment; the sockets
 * stay for liveness, abort notices and splits) or "shm+cma" (shared memory, large pieces read in one copy straight
 * from the sender's memory, Linux cross-memory attach). SHARDWISE_TRANSPORT=tcp (any rank) keeps a TCP communicator
 * on its sockets; =shm makes sw_comm_create_tcp fail (SW_ERR_UNSUPPORTED, saying why) when the ranks cannot share
 * memory; auto (default) picks. */
SW_API sw_status sw_comm_get_transport(sw_comm comm, const char** name);

/* A TCP store: the rendezvous of a job (torchrun's MASTER_ADDR:MASTER_PORT). The process with is_server != 0 (rank
 * 0) serves it on host:port (port 0: any free port, see sw_store_get_port) until its handle is destroyed; every
 * process (the server's too) connects as a client. Keys are strings; values are bytes (at most 64 MiB). timeout_ms
 * bounds the connection and every sw_store_get (0: the default, SHARDWISE_TIMEOUT_MS or 10 minutes). */
SW_API sw_status sw_store_create(const char* host, int32_t port, int32_t is_server, int64_t timeout_ms, sw_store* out);
SW_API sw_status sw_store_destroy(sw_store store);
SW_API sw_status sw_store_get_port(sw_store store, int32_t* port);
SW_API sw_status sw_store_set(sw_store store, const char* key, const void* value, uint64_t bytes);
/* Waits until `key` is set (SW_ERR_TIMEOUT after the store's timeout), then copies its value into value[0..capacity)
 * and its length into *bytes (SW_ERR_INVALID_ARGUMENT, with *bytes set, when capacity is too small). */
SW_API sw_status sw_store_get(sw_store store, const char* key, void* value, uint64_t capacity, uint64_t* bytes);

/* A TCP communicator: rank `rank` of world_size processes; every process calls it with the same store server and
 * prefix (1..1024 characters; distinct prefixes make distinct communicators, and a prefix must not be reused on the
 * same store: its keys would still hold the first communicator's addresses). The processes connect to each other directly (a full
 * mesh of TCP connections, addresses exchanged through the store). When every rank runs on this host (same host name,
 * boot, user, /dev/shm and IPC namespace) the data then moves through a POSIX shared-memory segment instead
 * (sw_comm_get_transport; SHARDWISE_TRANSPORT=tcp keeps the sockets), with the same results and fault semantics; the
 * segment's name is unlinked as soon as every rank has mapped it. Blocks until every rank has connected or
 * timeout_ms (0: default) passes; the timeout also bounds every collective. CPU devices only. Not available on
 * Windows builds (SW_ERR_UNSUPPORTED). */
SW_API sw_status sw_comm_create_tcp(sw_device device, sw_store store, const char* prefix, int32_t rank,
                                    int32_t world_size, int64_t timeout_ms, sw_comm* out);

/* MPI. The MPI plugin (libshardwise_mpi, built when CMake finds MPI) is loaded on first use from
 * SHARDWISE_MPI_PLUGIN_PATH (file or folder), the folder of libshardwise, or the default library search path.
 * *available = 1 when it loads; `version` receives MPI's library version, or why the plugin could not be loaded. */
SW_API sw_status sw_mpi_get_info(int32_t* available, char* version, uint64_t version_capacity);
/* A communicator over MPI_COMM_WORLD (duplicated) of the processes started by mpirun; this process's rank is
 * MPI's. Initializes MPI if the application has not (then MPI is finalized at exit or by sw_mpi_finalize); an
 * application that initializes MPI itself must ask for MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE. CPU devices
 * only. SW_ERR_NOT_FOUND when the plugin cannot be loaded. Bounded by timeout_ms (0: default) like every MPI wait:
 * SW_ERR_TIMEOUT when MPI's initialization (Open MPI's MPI_Init waits for every process of the job; it goes on in
 * the background) or the duplication did not finish in time; MPI cannot say which rank is late. When Shardwise
 * initialized MPI and SIGTERM has its default action, a SIGTERM (mpirun ending the job after a process failed)
 * prints what this rank was waiting for before the process ends. */
SW_API sw_status sw_comm_create_mpi(sw_device device, int64_t timeout_ms, sw_comm* out);
/* Finalizes MPI if Shardwise initialized it (otherwise a no-op). Skipped, with SW_ERR_BACKEND, once any MPI
 * communicator of the process failed (timeout, peer abort, MPI error) or an aborted one left MPI requests behind:
 * MPI_Finalize waits for every process of the job and could wait forever for a dead or frozen peer (at exit the
 * same rule applies, with one line on stderr saying why). MPI communicators still open
 * afterwards fail their collectives with SW_ERR_BACKEND ("MPI is finalized"); aborting or destroying them is safe. */
SW_API sw_status sw_mpi_finalize(void);

/* NCCL, loaded at run time: libnccl.so.2 from SHARDWISE_NCCL_PATH (a file, or a folder holding it) or the default
 * library search path; Shardwise never links it. *available = 1 when it loads and has every symbol Shardwise needs;
 * *version_code is ncclGetVersion's (e.g. 22105 for 2.21.5; may be NULL); `text` receives "NCCL x.y.z (path)" plus
 * the optional symbols it lacks, or what was searched and why it failed (the missing required symbols named). */
SW_API sw_status sw_nccl_get_info(int32_t* available, int32_t* version_code, char* text, uint64_t text_capacity);

/* NCCL communicators: CUDA devices, one rank per GPU. The collectives above, with the same semantics: ordered into the
 * caller's stream; before NCCL runs, the ranks agree on the call (so mismatched calls fail with SW_ERR_MISMATCH and a
 * rank that never comes fails the others with SW_ERR_TIMEOUT naming it, instead of NCCL hanging); while NCCL runs,
 * ncclCommGetAsyncError, the timeout and sw_comm_abort are polled, and any of them aborts the NCCL communicator
 * (ncclCommAbort) so that no stream hangs. Uneven collectives use grouped ncclBroadcast / ncclReduce. fp32, fp64,
 * fp16, bf16, i32 (sums), u8 (gathers). SW_ERR_NOT_FOUND when NCCL cannot be loaded (see sw_nccl_get_info).
 * Creation has a deadline where NCCL has ncclCommInitRankConfig (2.14+): the communicators are made non-blocking
 * (ncclConfig_t blocking = 0) and NCCL's initialization is polled against timeout_ms (0: SHARDWISE_TIMEOUT_MS or 10
 * minutes); if not every rank has called in by then, the create call fails with SW_ERR_TIMEOUT naming this rank and
 * the world size (NCCL cannot tell which rank is missing) and its communicator is aborted; an error during NCCL's
 * initialization gives SW_ERR_BACKEND. With an older NCCL (no ncclCommInitRankConfig; sw_nccl_get_info lists it as
 * missing) creation calls the blocking ncclCommInitRank, which waits for every rank with no deadline; so does
 * ncclCommInitRankConfig when NCCL_COMM_BLOCKING=1 is set (NCCL lets it override the configuration). Tested against
 * a host-memory stand-in for NCCL only; real NCCL has not run these paths. */
/* Writes a new ncclUniqueId (128 bytes) into id. */
SW_API sw_status sw_nccl_get_unique_id(uint8_t* id);
/* Single process, several GPUs: rank r on devices[r] (distinct GPUs), all created here (ncclCommInitRankConfig, or
 * ncclCommInitRank, inside one group; the non-blocking communicators polled together against timeout_ms, and all
 * aborted if any fails or is not done in time: SW_ERR_TIMEOUT names the ranks not done). Collectives of different
 * ranks are called from different host threads or queued on different streams. */
SW_API sw_status sw_comm_create_nccl_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms, sw_comm* out);
/* One rank per process (as sw_comm_create_tcp): rank 0 makes the unique id and publishes it in the store under
 * prefix; every rank also connects to the others over TCP for the host side (agreement, abort notices), which proves
 * every rank alive before NCCL's initialization (itself under the deadline above where NCCL allows it). */
SW_API sw_status sw_comm_create_nccl(sw_device device, sw_store store, const char* prefix, int32_t rank,
                                     int32_t world_size, int64_t timeout_ms, sw_comm* out);
/* One rank per process with a unique id the caller passed around (from sw_nccl_get_unique_id on one rank). The ranks
 * have no other channel, so the agreement on each call travels through NCCL itself: mismatches are still caught, but
 * a timeout cannot name the late rank and an abort is not announced to the peers (they fail at their timeout). A rank
 * that never calls this makes the others fail here with SW_ERR_TIMEOUT after timeout_ms where NCCL has
 * ncclCommInitRankConfig; with an older NCCL they wait for it forever. */
SW_API sw_status sw_comm_create_nccl_id(sw_device device, const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                        int64_t timeout_ms, sw_comm* out);
/* One rank per process started by mpirun, MPI as the bootstrap: rank 0's unique id reaches the others over MPI, and
 * MPI carries the host side (agreement, abort notices) as in sw_comm_create_mpi. Ranks are MPI's. */
SW_API sw_status sw_comm_create_nccl_mpi(sw_device device, int64_t timeout_ms, sw_comm* out);

/* ---------------------------------------------------------------- sub-communicators (hybrid parallelism)
 *
 * Splitting (MPI_Comm_split / ncclCommSplit semantics): the ranks of a communicator that pass the same color form a
 * new communicator of the same kind (in-process CPU or CUDA, NCCL in-process, TCP, MPI, NCCL per process) on the same
 * devices, with the parent's timeout; inside it they are numbered by (key, parent rank) ascending, so keys may reorder
 * them. color SW_SPLIT_NO_COLOR opts a rank out (no communicator for it); any other color must be >= 0.
 *
 * Family fate: a communicator made by a create function, and every communicator split from it (recursively), form a
 * family. When any member fails (timeout, mismatch, lost peer) or is aborted (sw_comm_abort*), every member of the
 * family is aborted with the first failure's reason: in this process at once, and in the other processes of the job
 * as soon as the notice reaches them (no rank waits for its own timeout to learn that another group failed). A
 * timeout inside a sub-communicator names the missing ranks by their rank in it and in its parent
 * ("rank(s) 1 (parent rank 3)"). Destroying a communicator is not a failure: it aborts nothing else, and the
 * communicators split from it stay usable (each handle is destroyed on its own, in any order). A process that exits
 * (or is killed) without destroying its communicators counts as lost for the processes still using the family. */
#define SW_SPLIT_NO_COLOR (-1)
/* In-process communicators (sw_comm_create_local, sw_comm_create_nccl_local): one call splits every rank. colors[r]
 * and keys[r] (world_size entries each; keys NULL: parent order) are rank r's. out (world_size entries) receives, for
 * every rank r, the handle of rank r's sub-communicator: the SAME handle for every rank of one color (destroy each
 * distinct handle once), NULL for a rank that opted out. Rank r's rank inside it: sw_comm_get_parent_rank maps back.
 * Host call; it does not wait for queued collectives. SW_ERR_INVALID_ARGUMENT on a multi-process communicator. */
SW_API sw_status sw_comm_split_local(sw_comm comm, const int32_t* colors, const int32_t* keys, sw_comm* out);
/* Multi-process communicators (TCP, MPI, NCCL per process): every process calls it with its own rank, color and key;
 * a collective of the parent, matched with the other ranks' n-th collective, that waits for this rank's earlier
 * collectives on the parent and blocks until the sub-communicator is made (bounded by the parent's timeout: a rank
 * that never calls makes the others fail with SW_ERR_TIMEOUT naming it; a rank calling another collective instead
 * makes them fail with SW_ERR_MISMATCH; either aborts the parent's family). *out is NULL for SW_SPLIT_NO_COLOR.
 * The sub-communicator's transport: TCP its own mesh of connections (addresses exchanged over the parent), MPI
 * MPI_Comm_split, NCCL ncclCommSplit where NCCL has it (2.18+), else ncclCommInitRank with a unique id sent over the
 * group's new transport. SW_ERR_INVALID_ARGUMENT on an in-process communicator (use sw_comm_split_local). */
SW_API sw_status sw_comm_split(sw_comm comm, int32_t rank, int32_t color, int32_t key, sw_comm* out);
/* Rank `rank` of a communicator is rank *parent_rank of the communicator it was split from (for a communicator that
 * was not split: *parent_rank = rank). In-process: any rank; multi-process: this process's rank. */
SW_API sw_status sw_comm_get_parent_rank(sw_comm comm, int32_t rank, int32_t* parent_rank);

/* ---------------------------------------------------------------- point-to-point
 *
 * sw_send: rank `rank` sends buf[offset .. offset+count) (dtype) to rank `peer`; sw_recv: rank `rank` receives count
 * elements from `peer` into buf[offset ..). Every communicator kind, every dtype, count 0 allowed; queued on the rank's
 * stream like a collective (a CUDA stream's later work waits for the transfer). Matching: the n-th send from a to b
 * pairs with the n-th receive at b from a (a sw_sendrecv counts as one send and one receive). Both sides agree on
 * count and dtype before data moves: a disagreement fails both with SW_ERR_MISMATCH naming both ranks and both
 * calls. A transfer is a rendezvous: a send completes once its receive has the data (never rely on buffering); a
 * send (receive) whose peer does not post the matching receive (send) within the timeout fails with SW_ERR_TIMEOUT
 * naming both ranks. So a rank that must send to and receive from peers in one step (a ring step, a pipeline stage
 * sending activations forward while receiving gradients back) uses sw_sendrecv, whose halves progress together.
 * peer == rank only in sw_sendrecv with send_peer == recv_peer == rank (a copy). Failures follow the collectives'
 * rules: the communicator (and its family) is aborted, and a failed receive leaves its region untouched or poisoned.
 * Transfers do not count in sw_comm_get_collective_count. On multi-process communicators a rank's collectives and its
 * transfers with a peer must be called in an order the peer matches (as with NCCL); a violation fails with an error,
 * never a hang past the timeout. There a process's transfers and collectives run in call order (a transfer after the
 * collectives called before it, a collective after the transfers), whatever streams they are queued on, and a call
 * pairs with ONE call of each of its peers: what it does with peer q (send,
 * receive or both) must be mirrored by q's matching call (a sw_sendrecv that sends to and receives from q pairs with
 * a sw_sendrecv of q, not with a sw_send followed by a sw_recv). */
SW_API sw_status sw_send(sw_comm comm, int32_t rank, int32_t peer, sw_buffer buf, uint64_t offset, uint64_t count,
                         sw_dtype dtype, sw_stream stream);
SW_API sw_status sw_recv(sw_comm comm, int32_t rank, int32_t peer, sw_buffer buf, uint64_t offset, uint64_t count,
                         sw_dtype dtype, sw_stream stream);
/* One send (send_count elements to send_peer) and one receive (recv_count elements from recv_peer) of one dtype,
 * progressing together; either peer may be -1 (no send, or no receive: that half's buffer is not looked at; both -1:
 * nothing is queued). */
SW_API sw_status sw_sendrecv(sw_comm comm, int32_t rank, int32_t send_peer, sw_buffer send, uint64_t send_offset,
                             uint64_t send_count, int32_t recv_peer, sw_buffer recv, uint64_t recv_offset,
                             uint64_t recv_count, sw_dtype dtype, sw_stream stream);

/* ---------------------------------------------------------------- mixed-precision training (element-wise) */

/* The element-wise operations of mixed-precision training (fp32 master weights, 16-bit working copies, dynamic loss
 * scaling), queued on `stream` like every other operation. Buffers are on the stream's device; offsets and counts
 * are in elements of each buffer's stated type; count == 0 does nothing (the offsets are still checked).
 * dtypes: F32, F16 and BF16 on every backend (CUDA also takes F64 in sw_convert). */

/* dst[i] = (dst_type) src[i] for i < count: widening is exact; narrowing rounds to nearest even, keeps the sign of
 * zeros, subnormals, infinities and NaN (quiet), and gives infinity when a value is beyond the largest finite
 * value of dst_type after rounding (fp16: |x| >= 65520). src_type == dst_type copies. The two ranges must not
 * overlap, except that src and dst may be the very same range when src_type == dst_type (a no-op). */
SW_API sw_status sw_convert(sw_stream stream, sw_dtype src_type, sw_buffer src, uint64_t src_offset, sw_dtype dst_type,
                            sw_buffer dst, uint64_t dst_offset, uint64_t count);
/* Gradient unscaling with an overflow check, in place: buf[i] = (dtype)(float(buf[i]) * (1 / scale)) for i < count
 * (the product in fp32, rounded once). When any buf[i] was an infinity or NaN before the multiplication, the fp32
 * element flag[flag_offset] is set to 1.0f; otherwise the flag is left as it was, so that one flag, cleared by the
 * caller, collects the check of several buffers (and, summed by an all-reduce, of every rank). scale: finite and
 * > 0. flag is an F32 buffer and must not overlap the checked range. */
SW_API sw_status sw_unscale_check(sw_stream stream, sw_dtype dtype, sw_buffer buf, uint64_t offset, uint64_t count,
                                  float scale, sw_buffer flag, uint64_t flag_offset);
/* y[i] = fmaf(alpha, float(x[i]), y[i]) for i < count: y is F32 (fp32 master weights), x is F32, F16 or BF16 (a
 * gradient); alpha finite. x and y must not overlap unless they are the same F32 range. */
SW_API sw_status sw_axpy(sw_stream stream, sw_dtype x_type, float alpha, sw_buffer x, uint64_t x_offset, sw_buffer y,
                         uint64_t y_offset, uint64_t count);

#ifdef __cplusplus
}
#endif

#endif /* SHARDWISE_H */
