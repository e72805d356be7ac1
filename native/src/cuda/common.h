// Internal declarations shared by the translation units of the CUDA plugin (libshardwise_cuda).
// Not part of any interface: the core only sees core/cuda_plugin_api.h.
//
// Error model inside the plugin: helpers throw sw::Error (core/error.h, header-only parts); every PluginApi
// entry point (plugin.cpp) catches everything and turns it into a status plus a message. Kernel launchers in
// the .cu files never throw: they return the cudaError_t of the launch, and their arguments have been
// validated by the caller (plugin.cpp / gemm_cublaslt.cpp).
#pragma once
#include "core/dtype.h"
#include "core/error.h"
#include "core/cuda_plugin_api.h"

// The host emulation build (native/tests/cuda_emu) resolves this to its stand-in (see cuda/ptx.cuh).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace sw::cuda {

// ------------------------------------------------------------------------------------------ errors
// Throws sw::Error naming `call` when status != cudaSuccess (SW_ERR_OUT_OF_MEMORY for allocation failures,
// SW_ERR_BACKEND otherwise), after clearing the runtime's per-thread last error so that it is not reported
// again by an unrelated later launch.
void check_cuda(cudaError_t status, const char* call);
// "cudaErrorMemoryAllocation (out of memory)".
std::string cuda_error_text(cudaError_t status);

// ------------------------------------------------------------------------------------------ devices
// Number of CUDA devices, determined once. 0 (never an error) when there is no driver or no device;
// no_device_reason() then says why.
int32_t device_count();
const std::string& no_device_reason();
// Throws SW_ERR_NOT_FOUND unless 0 <= ordinal < device_count().
void require_device(int32_t ordinal);
// require_device + cudaSetDevice(ordinal) on the calling thread.
void set_device(int32_t ordinal);
// Compute capability of a device as major * 10 + minor (80 for sm_80), cached per device.
int compute_capability(int32_t ordinal);

// ------------------------------------------------------------------------------------------ helpers
// Largest power of two (capped at `cap`) that divides the address.
inline uint32_t pointer_alignment(const void* p, uint32_t cap = 16) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(p);
    uint32_t a = 1;
    while (a < cap && (v % (2u * a)) == 0) a *= 2;
    return a;
}
// Bytes per element (0 for an unknown dtype) and names: one definition, in core/dtype.h.
inline uint32_t dtype_bytes(sw_dtype t) { return static_cast<uint32_t>(sw::dtype_bytes(t)); }
using sw::dtype_name;

// ------------------------------------------------------------------------------------------ kernels.cu
// Maximum number of sources and of destinations of one reduce_sum call (pointers travel as kernel parameters).
constexpr int32_t kMaxReducePointers = 64;

// dst/src: rows x cols elements of elem_size bytes, leading dimensions in elements. Both must be accessible
// from the current device (device memory of it, or mapped host memory). rows, cols >= 1.
cudaError_t launch_copy_2d(void* dst, int64_t ld_dst, const void* src, int64_t ld_src, int64_t rows, int64_t cols,
                           int32_t elem_size, cudaStream_t stream);
// dtype one of F32, F64, I32, F16, BF16; 1 <= nsrc, ndst <= kMaxReducePointers; count >= 1. Sums in source order, or
// with tree = true in the order of the fixed binary tree over the sources (core/tree_reduction.h; SW_REDUCE_SUM_TREE).
cudaError_t launch_reduce_sum(sw_dtype dtype, const void* const* srcs, int32_t nsrc, void* const* dsts, int32_t ndst,
                              uint64_t count, bool tree, cudaStream_t stream);
// src_type, dst_type in F32, F64, F16, BF16 and different; count >= 1.
cudaError_t launch_convert(sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t count,
                           cudaStream_t stream);
// y[i][j] = act(beta * y[i][j] + bias[j]) with y not read when beta == 0 (then y = act(bias[j]) or act(0)).
// dtype in F32, F64, F16, BF16; bias may be null; rows, cols >= 1. bias_act is beta = 1, GEMM with k == 0 is
// this with the GEMM's beta.
cudaError_t launch_scale_bias_act(sw_dtype dtype, void* y, int64_t ld, int64_t rows, int64_t cols, float beta,
                                  const void* bias, bool gelu, cudaStream_t stream);
// y[i][j] = act(w[i][j] + beta * y[i][j] + bias[j]), computed in fp32 and rounded once to dtype (F32, F16, BF16): the
// epilogue of a 16-bit-C GEMM whose product w (fp32, leading dimension ldw) came from cuBLASLt with an fp32 D, since
// cuBLASLt's own bias/GeLU epilogues with a 16-bit D round the product to 16 bits first (measured on an H200 with
// cuBLASLt 13.1, docs/gpu-validation.md). bias may be null; rows, cols >= 1.
cudaError_t launch_finish_f32(sw_dtype dtype, void* y, int64_t ld, const float* w, int64_t ldw, int64_t rows,
                              int64_t cols, float beta, const void* bias, bool gelu, cudaStream_t stream);
// dx[i] = dy[i] * gelu'(x[i]); dtype in F32, F64, F16, BF16; count >= 1; dx may alias dy.
cudaError_t launch_gelu_backward(sw_dtype dtype, const void* x, const void* dy, void* dx, uint64_t count,
                                 cudaStream_t stream);
// Loads the kernels a collective's host side and its ordering launch (wait_flag, copy_2d, reduce_sum) now: under lazy
// module loading a first launch may wait for the whole context, i.e. for a stream parked on a wait-flag kernel.
cudaError_t preload_collective_kernels();
// One-thread kernel that spins (with __nanosleep back-off) until (int32_t)(*flag - target) >= 0.
cudaError_t launch_wait_flag(volatile uint32_t* flag, uint32_t target, cudaStream_t stream);
// Mixed-precision training (ABI 6). buf[i] = (dtype)(float(buf[i]) * inv_scale); *flag = 1.0f when some buf[i] was
// inf or NaN before (flag untouched otherwise). dtype in F32, F16, BF16; count >= 1.
cudaError_t launch_unscale_check(sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                                 cudaStream_t stream);
// y[i] = fmaf(alpha, float(x[i]), y[i]); y fp32; x_type in F32, F16, BF16; count >= 1.
cudaError_t launch_axpy(sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count, cudaStream_t stream);
// Attention and normalization (ABI 7), fp32, descriptions validated by the core (core/row_ops.h; rows, cols >= 1):
// softmax (y may be x), its backward (dx may be dy), LayerNorm / RMSNorm (y may be x) and their backward (dx may be dy;
// dgamma / dbeta, when not null, are computed by a kernel queued before the one writing dx). One block per row with
// fixed-order block reductions: deterministic. cudaErrorInvalidValue for a malformed description.
cudaError_t launch_softmax(const SoftmaxRows& args, cudaStream_t stream);
cudaError_t launch_softmax_backward(const SoftmaxBackwardRows& args, cudaStream_t stream);
cudaError_t launch_norm(const NormRows& args, cudaStream_t stream);
cudaError_t launch_norm_backward(const NormBackwardRows& args, cudaStream_t stream);
// Activations, gated units, dropout, vocabulary-parallel embedding and cross-entropy (ABI 7), fp32 with int32 token ids,
// descriptions validated by the core (core/row_ops.h). Element-wise grid-stride kernels where each thread reads an
// element's inputs before writing its outputs: y may be x (activation, dropout), dx may be dy, dgu may be gu, dlogits
// may be logits. dropout uses the generator of core/row_ops.h (dropout_bits): the CPU backend's very masks.
// embedding_backward queues, when not accumulating, a kernel clearing dtable, then one thread per column adding the
// tokens in order (the CPU's fp32 sum order: deterministic); nothing at all when shard_rows == 0.
// cross_entropy_partial: one block per row with fixed-order block reductions; cross_entropy_combine: one thread per
// row, parts in order, in double. Counts, rows, cols, parts >= 1 (embedding_backward: rows >= 0, shard_rows >= 0);
// cudaErrorInvalidValue for a malformed description.
cudaError_t launch_activation(const ActivationArgs& args, cudaStream_t stream);
cudaError_t launch_activation_backward(const ActivationBackwardArgs& args, cudaStream_t stream);
cudaError_t launch_glu(const GluArgs& args, cudaStream_t stream);
cudaError_t launch_glu_backward(const GluBackwardArgs& args, cudaStream_t stream);
cudaError_t launch_dropout(const DropoutArgs& args, cudaStream_t stream);
cudaError_t launch_embedding(const EmbeddingArgs& args, cudaStream_t stream);
cudaError_t launch_embedding_backward(const EmbeddingBackwardArgs& args, cudaStream_t stream);
cudaError_t launch_cross_entropy_partial(const CrossEntropyPartialArgs& args, cudaStream_t stream);
// cross_entropy_partial_tree (ABI 8): one block per row; M read by every thread from the parts' maxima (NaN-propagating);
// the leaves' sums computed in parallel, blockDim.x leaves at a time, each leaf by one thread in column order from +0
// (fp32 adds, expf), then combined by thread 0 in sw::tree's order (a stack walked with dev::tree_merges_at). rows,
// parts, leaf >= 1, cols >= 0 (logits unread when 0); cudaErrorInvalidValue for a malformed description.
cudaError_t launch_cross_entropy_partial_tree(const CrossEntropyPartialTreeArgs& args, cudaStream_t stream);
cudaError_t launch_cross_entropy_combine(const CrossEntropyCombineArgs& args, cudaStream_t stream);
cudaError_t launch_cross_entropy_backward(const CrossEntropyBackwardArgs& args, cudaStream_t stream);
// Optimizers (ABI 7), descriptions validated by the core (core/row_ops.h): fp32 parameters and state, the gradient (or
// scale's x) F32, F16 or BF16 widened exactly. sgd_step, adamw_step, scale: element-wise grid-stride kernels whose fp32
// arithmetic is the CPU backend's (cpu/row_ops.cpp), operation for operation, each rounded (no FMA contraction, IEEE
// division and square root): the same bits as the CPU. scale rounds once to the element type (nearest even).
// sum_squares: *out = (accumulate ? *out : 0) + the kSumSquaresBlock-element blocks' sums of squares, each block summed
// in order in double and the block sums added in block order, one thread per block: the CPU backend's bits. Up to
// 256 blocks (2^20 elements), or on a device without stream-ordered allocation: one kernel of one block (shared
// memory); beyond: the block sums in a cudaMallocAsync scratch (freed with cudaFreeAsync on the stream), then a
// one-thread kernel adding them. count == 0 writes 0 (nothing when accumulating). Counts >= 1 for the others;
// cudaErrorInvalidValue for a malformed description; an allocation failure returns cudaErrorMemoryAllocation.
cudaError_t launch_sgd_step(const SgdArgs& args, cudaStream_t stream);
cudaError_t launch_adamw_step(const AdamWArgs& args, cudaStream_t stream);
cudaError_t launch_sum_squares(const SumSquaresArgs& args, cudaStream_t stream);
cudaError_t launch_scale(const ScaleArgs& args, cudaStream_t stream);

// ------------------------------------------------------------------------------------------ gemm_mma.cu
// Hand-written tensor-core GEMM (mma.sync m16n8k16, sm_80+; or, with wgmma = true, wgmma.mma_async, sm_90a code
// only: check wgmma_available first). problem validated: a_type = b_type F16/BF16, c_type = a_type or F32, m, n, k >= 1,
// leading dimensions valid, grid limits checked (mma_gemm_shape_problem).
cudaError_t launch_mma_gemm(const GemmProblem& problem, bool wgmma, cudaStream_t stream);
// One-thread kernel writing *out = 1 when the device runs code built for sm_90a (the wgmma kernel), else 0.
cudaError_t launch_wgmma_probe(int* out, cudaStream_t stream);
// Empty string when the kernel can take this shape, else why not.
std::string mma_gemm_shape_problem(int64_t m, int64_t n);

// ------------------------------------------------------------------------------------------ gemm_tree.cu
// The TP-invariant tree GEMM (problem.k_leaf > 0, sw_device_set_gemm_reduction): for every element of C, k cut into
// leaves of k_leaf elements (the last one shorter), each leaf an fp32 FMA chain from +0 in k order (16-bit inputs
// widened exactly), the leaves combined by the fixed binary tree (core/tree_reduction.h), then once: alpha * T
// (beta == 0, C not read) or fmaf(alpha, T, beta * C), + bias, GeLU (cuda/gelu.cuh), rounded to C's type. Plain fp32
// FMAs on CUDA cores (no tensor cores): each element's bits depend on its row of op(A), its column of op(B), k, k_leaf,
// alpha, beta, C and the bias only. problem validated (validate_gemm): any type combination of the plugin's GEMM,
// k >= 0 (k == 0: T = 0), k_leaf even and >= 2. cudaErrorInvalidValue for a k_leaf that is not.
cudaError_t launch_tree_gemm(const GemmProblem& problem, cudaStream_t stream);

// ------------------------------------------------------------------------------------------ gemm_cublaslt.cpp
// cuBLASLt GEMM; problem validated by the caller, k >= 1, current device = ordinal. Throws on failure;
// SW_ERR_UNSUPPORTED when cuBLASLt offers no algorithm for the problem.
void cublaslt_gemm(int32_t ordinal, const GemmProblem& problem, cudaStream_t stream);
// Frees what the GEMM path keeps per stream (the cuBLASLt workspace). The stream must be idle.
void release_stream_resources(int32_t ordinal, cudaStream_t stream);
// "cuBLASLt 11.11.3".
std::string cublaslt_version();

} // namespace sw::cuda
