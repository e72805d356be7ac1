// Interface between the core (libshardwise) and the CUDA backend plugin (libshardwise_cuda), which the core loads
// at run time with dlopen. Keeping CUDA out of the core means libshardwise loads on machines without a CUDA
// driver or runtime, and asking for CUDA devices there gives 0 devices instead of a loader error.
//
// Both libraries are built from this tree in one CMake build, so the interface is C++ (same libstdc++), but
// nothing throws across it: every function returns sw_status and, on failure, writes a message naming the
// argument or the CUDA/cuBLAS call and its error string into *err.
// No CUDA type appears here: streams and events are cudaStream_t / cudaEvent_t passed as void*.
// The core owns this contract (it lives in core/); the plugin (native/src/cuda) includes it from here, and the core
// reaches the table only through its CUDA backend (core/backend_cuda.cpp) and core/cuda_loader.h.
#pragma once
#include "shardwise.h"
#include "core/gemm_problem.h"
#include "core/row_ops.h"

#include <cstdint>
#include <string>

namespace sw::cuda {

constexpr int32_t kPluginAbi = 8; // 5: gemm takes a sw::GemmProblem and the algorithm; 6: unscale_check, axpy;
                                  // 7: softmax, norm, activation, glu, dropout, embedding, cross_entropy_*, the optimizers (core/row_ops.h)
                                  // 8: gemm's k_leaf tree reduction, reduce_sum's tree flag, cross_entropy_partial_tree
                                  //    (appended at the end of the table)

enum class GemmAlgo : int32_t {
    Auto = 0,        // cuBLASLt
    CublasLt = 1,
    HandWritten = 2, // tiled tensor-core kernel (mma.sync); bf16/fp16 only
    Wgmma = 3,       // tiled tensor-core kernel with wgmma.mma_async: compute capability 9.0 and a plugin built for
                     // sm_90a; bf16/fp16 only; not validated on a GPU yet (docs/gpu-validation.md)
};

// GEMMs are described by sw::GemmProblem (core/gemm_problem.h), the one description from the C ABI to the kernels.
// Supported combinations (a_type = b_type, bias_type = c_type, accum_type F32): (F32, F32) [compute fp32, or
// tf32 when allow_tf32], (F16, F16), (BF16, BF16), (F16, F32), (BF16, F32).

struct PluginApi {
    int32_t abi; // kPluginAbi

    // Version strings: CUDA runtime, driver, cuBLASLt (for docs/gpu-validation.md and errors).
    sw_status (*versions)(std::string* out, std::string* err);

    // ---- devices
    sw_status (*device_count)(int32_t* count, std::string* err); // no driver / no GPU: *count = 0, SW_OK
    sw_status (*device_info)(int32_t ordinal, sw_device_info* info, std::string* err);
    sw_status (*enable_peer_access)(int32_t ordinal, int32_t peer, int32_t* enabled, std::string* err);

    // ---- memory
    sw_status (*malloc_device)(int32_t ordinal, uint64_t bytes, void** ptr, std::string* err);
    sw_status (*free_device)(int32_t ordinal, void* ptr, std::string* err);
    // Pinned host memory, mapped into the device address space (cudaHostAllocMapped | Portable).
    sw_status (*malloc_host)(uint64_t bytes, void** host_ptr, void** device_ptr, std::string* err);
    sw_status (*free_host)(void* host_ptr, std::string* err);
    // Does ptr point to memory of this device (cudaPointerGetAttributes)? For wrapping external memory.
    sw_status (*pointer_device)(const void* ptr, int32_t* ordinal, std::string* err); // -1 if host/unknown

    // ---- streams and events (cudaStream_t / cudaEvent_t as void*)
    sw_status (*stream_create)(int32_t ordinal, void** stream, std::string* err); // non-blocking stream
    sw_status (*stream_destroy)(int32_t ordinal, void* stream, std::string* err);
    sw_status (*stream_synchronize)(int32_t ordinal, void* stream, std::string* err);
    sw_status (*stream_wait_event)(int32_t ordinal, void* stream, void* event, std::string* err);
    sw_status (*event_create)(int32_t ordinal, void** event, std::string* err); // timing enabled
    sw_status (*event_destroy)(int32_t ordinal, void* event, std::string* err);
    sw_status (*event_record)(int32_t ordinal, void* event, void* stream, std::string* err);
    sw_status (*event_synchronize)(int32_t ordinal, void* event, std::string* err);
    sw_status (*event_query)(int32_t ordinal, void* event, int32_t* done, std::string* err);
    sw_status (*event_elapsed_ms)(int32_t ordinal, void* start, void* end, float* ms, std::string* err);

    // ---- asynchronous work on a stream (all in stream order, all checked)
    // Any direction (cudaMemcpyDefault: unified addressing); host memory should be pinned for async.
    sw_status (*memcpy_async)(int32_t ordinal, void* dst, const void* src, uint64_t bytes, void* stream,
                              std::string* err);
    sw_status (*memset_async)(int32_t ordinal, void* dst, uint8_t value, uint64_t bytes, void* stream,
                              std::string* err);
    // The problem as the core validated it (pointers are device memory of `ordinal`, or peer-accessible); the
    // plugin checks it again against what its kernels take. (ABI 5.) problem->k_leaf > 0 (even, at most 2^24; ABI 8):
    // the TP-invariant tree reduction of sw_device_set_gemm_reduction, computed by the plugin's hand-written tree kernel
    // whatever `algo` says (cuBLASLt and the tensor-core kernels do not follow the tree), k == 0 included.
    sw_status (*gemm)(int32_t ordinal, const GemmProblem* problem, GemmAlgo algo, void* stream, std::string* err);

    // Layout kernel: copies a rows x cols block (elem_size bytes per element) from src (leading dimension
    // ld_src elements) to dst (ld_dst). Used to place an all-gathered shard at its column offset.
    sw_status (*copy_2d)(int32_t ordinal, void* dst, int64_t ld_dst, const void* src, int64_t ld_src, int64_t rows,
                         int64_t cols, int32_t elem_size, void* stream, std::string* err);
    // dst[d][i] = sum_{s < nsrc} src[s][i] (summed in order s = 0..nsrc-1, or with tree = 1 (ABI 8) in the order of
    // the fixed binary tree over the sources, core/tree_reduction.h: SW_REDUCE_SUM_TREE; fp32 accumulation for f16/bf16,
    // rounded once; f32 in f32, f64 in f64, i32 modulo 2^32) for i < count, written to every one of the ndst
    // destinations. srcs/dsts are host arrays of device pointers (copied by the call). A destination may be one of the
    // sources (in place): each element is read from every source before it is written. Used by the in-process
    // all-reduce and reduce-scatter, and by the NCCL mover's sums that NCCL's reductions cannot do (16-bit, tree).
    // Pointers into another device's memory: peer access to it is enabled by the call (SW_ERR_UNSUPPORTED when
    // the two devices cannot reach each other).
    sw_status (*reduce_sum)(int32_t ordinal, sw_dtype dtype, const void* const* srcs, int32_t nsrc,
                            void* const* dsts, int32_t ndst, uint64_t count, int32_t tree, void* stream, std::string* err);
    // dst[i] = (dst_type) src[i]; round to nearest even.
    sw_status (*convert)(int32_t ordinal, sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst,
                         uint64_t count, void* stream, std::string* err);
    // y[i][j] = epilogue(y[i][j] + bias[j]) in place, rows x cols with leading dimension ld (elements of dtype).
    sw_status (*bias_act)(int32_t ordinal, sw_dtype dtype, void* y, int64_t ld, int64_t rows, int64_t cols,
                          const void* bias, sw_epilogue epilogue, void* stream, std::string* err);
    // Blocks `stream` until (int32_t)(*flag - target) >= 0, i.e. the flag has reached `target` (wrap-safe).
    // `device_flag` is the device address of a word of mapped pinned host memory (see malloc_host); the host
    // raises the word monotonically from another thread. This is how a host-side collective rendezvous is
    // ordered into a CUDA stream. A 1-thread kernel that polls (volatile, system scope) with a back-off.
    sw_status (*stream_wait_flag)(int32_t ordinal, volatile uint32_t* device_flag, uint32_t target, void* stream,
                                  std::string* err);
    // dx[i] = dy[i] * gelu'(x[i]) (tanh approximation) for i < count; dx may equal dy. dtype F32, F64, F16, BF16.
    // (ABI 2.)
    sw_status (*gelu_backward)(int32_t ordinal, sw_dtype dtype, const void* x, const void* dy, void* dx,
                               uint64_t count, void* stream, std::string* err);
    // Makes `ordinal` the calling thread's current device (cudaSetDevice), for libraries that work on the current
    // device (NCCL's communicator creation). (ABI 3.)
    sw_status (*set_device)(int32_t ordinal, std::string* err);
    // Waits for a stream the plugin did not create (a wrapped external cudaStream_t), then frees what the plugin
    // keeps for it (the cuBLASLt workspace). The core calls it when the last sw_stream wrapping that stream goes;
    // streams from stream_create are released by stream_destroy. (ABI 4.)
    sw_status (*release_stream)(int32_t ordinal, void* stream, std::string* err);

    // ---- mixed-precision training (sw_unscale_check, sw_axpy; sw_convert uses convert above). (ABI 6.)
    // buf[i] = (dtype)(float(buf[i]) * inv_scale) for i < count; *flag = 1.0f (device memory, fp32) when some buf[i]
    // was an infinity or NaN before, else *flag untouched. dtype F32, F16, BF16.
    sw_status (*unscale_check)(int32_t ordinal, sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                               void* stream, std::string* err);
    // y[i] = fmaf(alpha, float(x[i]), y[i]) for i < count; y fp32, x_type F32, F16, BF16.
    sw_status (*axpy)(int32_t ordinal, sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count,
                      void* stream, std::string* err);

    // ---- attention and normalization, fp32 (sw_softmax, sw_softmax_backward, sw_norm, sw_norm_backward; the
    // descriptions in core/row_ops.h are validated, their pointers device memory). (ABI 7.)
    sw_status (*softmax)(int32_t ordinal, const SoftmaxRows& args, void* stream, std::string* err);
    sw_status (*softmax_backward)(int32_t ordinal, const SoftmaxBackwardRows& args, void* stream, std::string* err);
    sw_status (*norm)(int32_t ordinal, const NormRows& args, void* stream, std::string* err);
    sw_status (*norm_backward)(int32_t ordinal, const NormBackwardRows& args, void* stream, std::string* err);
    // Activations, gated units, dropout (the generator of core/row_ops.h), vocabulary-parallel embedding and
    // cross-entropy, fp32 with int32 token ids. (ABI 7.)
    sw_status (*activation)(int32_t ordinal, const ActivationArgs& args, void* stream, std::string* err);
    sw_status (*activation_backward)(int32_t ordinal, const ActivationBackwardArgs& args, void* stream, std::string* err);
    sw_status (*glu)(int32_t ordinal, const GluArgs& args, void* stream, std::string* err);
    sw_status (*glu_backward)(int32_t ordinal, const GluBackwardArgs& args, void* stream, std::string* err);
    sw_status (*dropout)(int32_t ordinal, const DropoutArgs& args, void* stream, std::string* err);
    sw_status (*embedding)(int32_t ordinal, const EmbeddingArgs& args, void* stream, std::string* err);
    sw_status (*embedding_backward)(int32_t ordinal, const EmbeddingBackwardArgs& args, void* stream, std::string* err);
    sw_status (*cross_entropy_partial)(int32_t ordinal, const CrossEntropyPartialArgs& args, void* stream, std::string* err);
    sw_status (*cross_entropy_combine)(int32_t ordinal, const CrossEntropyCombineArgs& args, void* stream, std::string* err);
    sw_status (*cross_entropy_backward)(int32_t ordinal, const CrossEntropyBackwardArgs& args, void* stream, std::string* err);
    // Optimizers: SGD / AdamW steps, the sum of squares (into one F64 element, device memory), scaling. (ABI 7.)
    sw_status (*sgd_step)(int32_t ordinal, const SgdArgs& args, void* stream, std::string* err);
    sw_status (*adamw_step)(int32_t ordinal, const AdamWArgs& args, void* stream, std::string* err);
    sw_status (*sum_squares)(int32_t ordinal, const SumSquaresArgs& args, void* stream, std::string* err);
    sw_status (*scale)(int32_t ordinal, const ScaleArgs& args, void* stream, std::string* err);
    // TP-invariant cross-entropy statistics of a shard (sw_cross_entropy_partial_tree; ABI 8): rows >= 0, cols >= 0.
    sw_status (*cross_entropy_partial_tree)(int32_t ordinal, const CrossEntropyPartialTreeArgs& args, void* stream,
                                            std::string* err);
};

} // namespace sw::cuda

// Exported by libshardwise_cuda; the core looks it up with dlsym.
extern "C" SW_API const sw::cuda::PluginApi* sw_cuda_plugin_api(void);
