// The backend interface of the core: everything the C exports (core/api.cpp) need from a kind of device, behind
// one small abstract class, in the shape of ILGPU's accelerators and PyTorch c10d's backends. One object per
// backend kind, alive for the whole process:
//   cpu_backend()   native/src/cpu/backend_cpu.cpp   streams are in-order worker queues, GEMM is cpu/gemm.h
//   cuda_backend()  native/src/core/backend_cuda.cpp wraps the CUDA plugin's function table
//                                                    (core/cuda_plugin_api.h), checking each status in one place
// The exports validate their arguments (handles, offsets, spans, enum values), translate them (core/gemm_args.h
// builds the one GemmProblem) and dispatch here; a backend checks only what depends on it (which dtypes it
// computes, which kernels it has) and throws sw::Error with the message the C ABI reports.
//
// Keep-alive rule (core/objects.h): work a backend queues holds the storages it touches (KeepAlive), so destroying
// a buffer handle while work is queued never frees memory under that work.
#pragma once
#include "shardwise.h"
#include "core/gemm_problem.h"
#include "core/row_ops.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

struct sw_stream_s;
struct sw_event_s;

namespace sw {

struct DeviceImpl;
struct Storage;

// The storages one queued operation touches (at most seven: sw_norm_backward's x, gamma, stats, dy, dx, dgamma, dbeta).
struct KeepAlive {
    std::shared_ptr<Storage> s[7];
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual sw_backend kind() const = 0;

    // ------------------------------------------------------------------ devices
    virtual int32_t device_count() = 0;
    // A new device; the backend checks ordinal and num_threads (SW_ERR_NOT_FOUND for an ordinal it does not have).
    virtual std::shared_ptr<DeviceImpl> create_device(int32_t ordinal, int32_t num_threads) = 0;
    // Fills *info (zeroed by the caller).
    virtual void device_info(DeviceImpl& dev, sw_device_info* info) = 0;
    // Kernel selection by name ("auto", ...); the message lists the names the backend takes.
    virtual void set_kernel(DeviceImpl& dev, const char* kernel) = 0;
    // The level-2 tile shape of the device's GEMM (zeroed by the caller; left zero when the backend has none).
    virtual void tile_shape(DeviceImpl& dev, sw_tile_shape* shape) = 0;

    // ------------------------------------------------------------------ memory
    // Allocates bytes (> 0) of device memory into storage.ptr (null when out of memory), and records in the storage
    // how to free it (free_storage).
    virtual void allocate(DeviceImpl& dev, uint64_t bytes, Storage& storage) = 0;
    // Frees an owned storage's memory; called from ~Storage, possibly on a stream worker thread. Never throws.
    virtual void free_storage(Storage& storage) noexcept = 0;
    // Checks that external memory at ptr may be wrapped as a buffer of dev.
    virtual void check_wrap(DeviceImpl& dev, void* ptr) = 0;

    // ------------------------------------------------------------------ streams
    // Creates the native side of a new stream (the host work queue s.impl exists already).
    virtual void stream_create(sw_stream_s& s) = 0;
    // Wraps an external native stream (may be null: the device's default stream).
    virtual void stream_wrap(sw_stream_s& s, void* native_stream) = 0;
    // Releases the native side; called after the host queue has drained. Never throws.
    virtual void stream_release(sw_stream_s& s) noexcept = 0;
    // Waits for everything queued; returns the first asynchronous error with its message (SW_OK if none).
    // Throws for a failure of the call itself.
    virtual sw_status stream_synchronize(sw_stream_s& s, std::string* message) = 0;
    // Queues a wait for the event's latest record.
    virtual void stream_wait_event(sw_stream_s& s, sw_event_s& e) = 0;

    // ------------------------------------------------------------------ events
    virtual void event_create(sw_event_s& e) = 0;
    virtual void event_release(sw_event_s& e) noexcept = 0;
    virtual void event_record(sw_event_s& e, sw_stream_s& s) = 0;
    virtual void event_synchronize(sw_event_s& e) = 0;
    virtual int32_t event_query(sw_event_s& e) = 0;
    // Milliseconds from start to end, both events of this backend (the messages name unrecorded / swapped events).
    virtual double event_elapsed_ms(sw_event_s& start, sw_event_s& end) = 0;

    // ------------------------------------------------------------------ copies (bytes > 0, spans checked)
    // Any direction the backend's memory allows; overlapping ranges are copied as by memmove.
    virtual void memcpy(sw_stream_s& s, void* dst, const void* src, uint64_t bytes, KeepAlive keep) = 0;
    virtual void memset(sw_stream_s& s, void* dst, uint8_t value, uint64_t bytes, KeepAlive keep) = 0;

    // ------------------------------------------------------------------ compute
    // Throws SW_ERR_UNSUPPORTED naming the dtype when the backend does not compute a GEMM of these types. Called
    // by the validation (core/gemm_args.cpp) before the shape is checked, as the C ABI has always reported it.
    virtual void check_gemm_types(sw_dtype a_type, sw_dtype b_type, sw_dtype c_type) = 0;
    // A validated problem, on the stream's device (one virtual call per GEMM; nothing allocated here but the queued
    // work itself).
    virtual void gemm(sw_stream_s& s, const GemmProblem& problem, KeepAlive keep) = 0;
    // sw_gemm_grouped: count >= 1 validated problems, member i ordered on *streams[i] (every stream on one device,
    // outputs checked not to overlap). The default runs the members one by one through gemm(), each ordered on its own
    // stream only; overrides: the CPU backend's one job (cpu/gemm_grouped_submit.h, one packing of a common op(A)), the
    // CUDA backend's default between two joins of the listed streams (the group's ordering across streams).
    virtual void gemm_grouped(sw_stream_s* const* streams, const GemmProblem* problems, KeepAlive* keeps,
                              int32_t count) {
        for (int32_t i = 0; i < count; ++i) gemm(*streams[i], problems[i], std::move(keeps[i]));
    }
    // Throws SW_ERR_UNSUPPORTED naming the dtype when the backend's element-wise activations do not take it.
    virtual void check_activation_type(sw_dtype dtype) = 0;
    // y[i] = gelu(x[i]) (tanh approximation), count > 0; y may equal x.
    virtual void gelu(sw_stream_s& s, sw_dtype dtype, const void* x, void* y, uint64_t count, KeepAlive keep) = 0;
    // dx[i] = dy[i] * gelu'(x[i]), count > 0; dx may equal dy.
    virtual void gelu_backward(sw_stream_s& s, sw_dtype dtype, const void* x, const void* dy, void* dx,
                               uint64_t count, KeepAlive keep) = 0;

    // ------------------------------------------------------------------ mixed-precision training (element-wise)
    // Throws SW_ERR_UNSUPPORTED naming `arg` (the C argument), the dtype and `op` when the backend's training
    // operations (sw_convert, sw_unscale_check, sw_axpy) do not take this dtype.
    virtual void check_training_type(sw_dtype dtype, const char* arg, const char* op) = 0;
    // dst[i] = (dst_type) src[i], round to nearest even, count > 0; src and dst do not overlap.
    virtual void convert(sw_stream_s& s, sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst,
                         uint64_t count, KeepAlive keep) = 0;
    // buf[i] = (dtype)(float(buf[i]) * inv_scale), count > 0; *flag = 1.0f when some buf[i] was inf or NaN before.
    virtual void unscale_check(sw_stream_s& s, sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                               KeepAlive keep) = 0;
    // y[i] = fmaf(alpha, float(x[i]), y[i]) with y fp32, count > 0.
    virtual void axpy(sw_stream_s& s, sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count,
                      KeepAlive keep) = 0;

    // ------------------------------------------------------------------ attention and normalization (core/row_ops.h)
    // Validated fp32 descriptions (rows >= 1); semantics in shardwise.h (sw_softmax, sw_norm and their backward).
    virtual void softmax(sw_stream_s& s, const SoftmaxRows& args, KeepAlive keep) = 0;
    virtual void softmax_backward(sw_stream_s& s, const SoftmaxBackwardRows& args, KeepAlive keep) = 0;
    virtual void norm(sw_stream_s& s, const NormRows& args, KeepAlive keep) = 0;
    virtual void norm_backward(sw_stream_s& s, const NormBackwardRows& args, KeepAlive keep) = 0;
    // Activations, gated units, dropout, vocabulary-parallel embedding and cross-entropy: validated fp32 descriptions
    // (counts and rows >= 1); semantics in shardwise.h.
    virtual void activation(sw_stream_s& s, const ActivationArgs& args, KeepAlive keep) = 0;
    virtual void activation_backward(sw_stream_s& s, const ActivationBackwardArgs& args, KeepAlive keep) = 0;
    virtual void glu(sw_stream_s& s, const GluArgs& args, KeepAlive keep) = 0;
    virtual void glu_backward(sw_stream_s& s, const GluBackwardArgs& args, KeepAlive keep) = 0;
    virtual void dropout(sw_stream_s& s, const DropoutArgs& args, KeepAlive keep) = 0;
    virtual void embedding(sw_stream_s& s, const EmbeddingArgs& args, KeepAlive keep) = 0;
    virtual void embedding_backward(sw_stream_s& s, const EmbeddingBackwardArgs& args, KeepAlive keep) = 0;
    virtual void cross_entropy_partial(sw_stream_s& s, const CrossEntropyPartialArgs& args, KeepAlive keep) = 0;
    // (ABI 8) rows >= 1, cols >= 0 (logits unread when 0).
    virtual void cross_entropy_partial_tree(sw_stream_s& s, const CrossEntropyPartialTreeArgs& args, KeepAlive keep) = 0;
    virtual void cross_entropy_combine(sw_stream_s& s, const CrossEntropyCombineArgs& args, KeepAlive keep) = 0;
    virtual void cross_entropy_backward(sw_stream_s& s, const CrossEntropyBackwardArgs& args, KeepAlive keep) = 0;
    // Optimizers (sw_sgd_step, sw_adamw_step, sw_sum_squares, sw_scale): validated descriptions, count >= 1 (for
    // sum_squares also 0: out becomes 0).
    virtual void sgd_step(sw_stream_s& s, const SgdArgs& args, KeepAlive keep) = 0;
    virtual void adamw_step(sw_stream_s& s, const AdamWArgs& args, KeepAlive keep) = 0;
    virtual void sum_squares(sw_stream_s& s, const SumSquaresArgs& args, KeepAlive keep) = 0;
    virtual void scale(sw_stream_s& s, const ScaleArgs& args, KeepAlive keep) = 0;
};

// The CPU backend (cpu/backend_cpu.cpp).
Backend& cpu_backend();
// The CUDA backend, or nullptr when the plugin cannot be loaded; *why then says why (core/backend_cuda.cpp).
Backend* cuda_backend(std::string* why);

} // namespace sw
