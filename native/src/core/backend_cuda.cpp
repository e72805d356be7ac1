// The CUDA backend (core/backend.h): wraps the function table of the CUDA plugin (core/cuda_plugin_api.h), which
// the core loads at run time (core/cuda_loader.h). Every checked table call goes through call() (cuda_call), the one
// place that turns a failed status and the plugin's message into sw::Error; only the release paths, which cannot
// report, call the table directly and drop the error. It lives in libshardwise (the plugin is dlopen'ed) and
// includes nothing under native/src/cuda.
//
// Devices keep, besides the table: the kernel choice (a cuda::GemmAlgo), the memory that stream workers could not
// free (DeferredFrees, core/objects.h) and how many sw_streams wrap each external cudaStream_t. A stream's host
// queue (sw_stream_s::impl) runs the host sides of collectives in stream order; the flag words they raise belong to
// the stream and are freed here when it goes.
#include "core/backend.h"
#include "core/cuda_loader.h"
#include "core/dtype.h"
#include "core/objects.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

namespace sw {
namespace {

const char* algo_name(int algo) {
    switch (static_cast<cuda::GemmAlgo>(algo)) {
    case cuda::GemmAlgo::Auto: return "auto";
    case cuda::GemmAlgo::CublasLt: return "cublaslt";
    case cuda::GemmAlgo::HandWritten: return "mma";
    case cuda::GemmAlgo::Wgmma: return "wgmma";
    }
    return "auto";
}

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(const cuda::PluginApi* api) : api_(api) {}

    sw_backend kind() const override { return SW_BACKEND_CUDA; }

    // ------------------------------------------------------------------ devices
    int32_t device_count() override {
        int32_t count = 0;
        call(&cuda::PluginApi::device_count, &count);
        return count;
    }

    std::shared_ptr<DeviceImpl> create_device(int32_t ordinal, int32_t) override {
        const int32_t count = device_count();
        if (ordinal < 0 || ordinal >= count)
            fail(SW_ERR_NOT_FOUND, "ordinal = ", ordinal, ": there are ", count, " CUDA devices");
        sw_device_info info{};
        call(&cuda::PluginApi::device_info, ordinal, &info);
        auto impl = std::make_shared<DeviceImpl>();
        impl->backend = SW_BACKEND_CUDA;
        impl->ops = this;
        impl->ordinal = ordinal;
        impl->num_threads = info.num_threads;
        impl->name = str("cuda:", ordinal, " ", info.name);
        impl->cuda = api_;
        return impl;
    }

    void device_info(DeviceImpl& dev, sw_device_info* info) override {
        call(&cuda::PluginApi::device_info, dev.ordinal, info);
        copy_name(info->name, sizeof info->name, dev.name);
        copy_name(info->kernel, sizeof info->kernel, algo_name(dev.kernel.load()));
    }

    void set_kernel(DeviceImpl& dev, const char* kernel) override {
        const std::string name = kernel;
        cuda::GemmAlgo algo;
        if (name == "auto") algo = cuda::GemmAlgo::Auto;
        else if (name == "cublaslt") algo = cuda::GemmAlgo::CublasLt;
        else if (name == "mma") algo = cuda::GemmAlgo::HandWritten;
        else if (name == "wgmma") algo = cuda::GemmAlgo::Wgmma;
        else fail(SW_ERR_INVALID_ARGUMENT, "kernel = '", name, "'; a CUDA device takes auto, cublaslt, mma or wgmma");
        dev.kernel = static_cast<int>(algo);
    }

    void tile_shape(DeviceImpl&, sw_tile_shape*) override {} // the kernels choose their tiles per problem

    // ------------------------------------------------------------------ memory
    void allocate(DeviceImpl& dev, uint64_t bytes, Storage& storage) override {
        dev.drain_deferred_frees();
        call(&cuda::PluginApi::malloc_device, dev.ordinal, bytes, &storage.ptr);
        storage.ops = this;
        storage.ordinal = dev.ordinal;
        storage.deferred = dev.deferred;
    }

    void free_storage(Storage& storage) noexcept override {
        // See DeferredFrees: freed now only off the stream workers and while no wait-flag of the device is pending.
        if (!DeferredFrees::free_now_or_defer(storage.deferred.get(), storage.ptr, false)) return;
        std::string err;
        api_->free_device(storage.ordinal, storage.ptr, &err); // a destructor cannot report: the error is dropped
        if (storage.deferred) storage.deferred->end_free();
    }

    void check_wrap(DeviceImpl& dev, void* ptr) override {
        int32_t where = -1;
        call(&cuda::PluginApi::pointer_device, ptr, &where);
        if (where != dev.ordinal)
            fail(SW_ERR_INVALID_ARGUMENT, "ptr is not memory of CUDA device ", dev.ordinal,
                 where < 0 ? " (it is host or unknown memory)" : str(" (it belongs to device ", where, ")").c_str());
    }

    // ------------------------------------------------------------------ streams
    void stream_create(sw_stream_s& s) override {
        call(&cuda::PluginApi::stream_create, s.device_impl->ordinal, &s.cuda_stream);
        s.owns_cuda_stream = s.cuda_stream != nullptr;
    }

    void stream_wrap(sw_stream_s& s, void* native_stream) override {
        s.cuda_stream = native_stream;
        s.owns_cuda_stream = false;
        std::lock_guard<std::mutex> lock(s.device_impl->wrapped_mutex);
        ++s.device_impl->wrapped_streams[native_stream];
    }

    void stream_release(sw_stream_s& s) noexcept override {
        std::string err;
        DeviceImpl& dev = *s.device_impl;
        api_->stream_synchronize(dev.ordinal, s.cuda_stream, &err);
        if (s.owns_cuda_stream) {
            api_->stream_destroy(dev.ordinal, s.cuda_stream, &err);
        } else {
            // The last wrapper of an external stream frees the plugin's resources for it (its GEMM workspace).
            std::lock_guard<std::mutex> lock(dev.wrapped_mutex);
            auto it = dev.wrapped_streams.find(s.cuda_stream);
            if (it != dev.wrapped_streams.end() && --it->second == 0) {
                dev.wrapped_streams.erase(it);
                api_->release_stream(dev.ordinal, s.cuda_stream, &err);
            }
        }
        if (s.flag_host) dev.free_cuda_memory(s.flag_host, true); // cudaFreeHost waits for the device: gated
    }

    sw_status stream_synchronize(sw_stream_s& s, std::string* message) override {
        // The device work first (it may wait for collectives' host sides), then the host side's errors.
        std::string err;
        const sw_status st = api_->stream_synchronize(s.device_impl->ordinal, s.cuda_stream, &err);
        const sw_status host = s.impl->synchronize(message);
        s.device_impl->drain_deferred_frees();
        if (host != SW_OK) return host;
        cuda_check(st, err);
        return SW_OK;
    }

    void stream_wait_event(sw_stream_s& s, sw_event_s& e) override {
        call(&cuda::PluginApi::stream_wait_event, s.device_impl->ordinal, s.cuda_stream, e.cuda_event);
    }

    // ------------------------------------------------------------------ events
    void event_create(sw_event_s& e) override {
        call(&cuda::PluginApi::event_create, e.device_impl->ordinal, &e.cuda_event);
    }

    void event_release(sw_event_s& e) noexcept override {
        std::string err;
        if (e.cuda_event) api_->event_destroy(e.device_impl->ordinal, e.cuda_event, &err);
    }

    void event_record(sw_event_s& e, sw_stream_s& s) override {
        if (s.device_impl != e.device_impl) fail_event_stream_mismatch(e, s);
        call(&cuda::PluginApi::event_record, e.device_impl->ordinal, e.cuda_event, s.cuda_stream);
        std::lock_guard<std::mutex> lock(e.state->mu);
        ++e.state->recorded;
    }

    void event_synchronize(sw_event_s& e) override {
        call(&cuda::PluginApi::event_synchronize, e.device_impl->ordinal, e.cuda_event);
    }

    int32_t event_query(sw_event_s& e) override {
        int32_t done = 0;
        call(&cuda::PluginApi::event_query, e.device_impl->ordinal, e.cuda_event, &done);
        return done;
    }

    double event_elapsed_ms(sw_event_s& a, sw_event_s& b) override {
        if (a.device_impl != b.device_impl) fail_event_pair_mismatch();
        for (sw_event_s* e : {&a, &b}) {
            std::lock_guard<std::mutex> lock(e->state->mu);
            if (e->state->recorded == 0) fail(SW_ERR_INVALID_ARGUMENT, e == &a ? "start" : "end", " was never recorded");
        }
        float f = 0;
        call(&cuda::PluginApi::event_elapsed_ms, a.device_impl->ordinal, a.cuda_event, b.cuda_event, &f);
        if (f < 0)
            fail(SW_ERR_INVALID_ARGUMENT, "the end event was recorded before the start event (end is ", -f,
                 " ms earlier); expected start recorded first (are the arguments swapped?)");
        return f;
    }

    // ------------------------------------------------------------------ copies
    // Stream order keeps the memory alive: a buffer's memory is freed by cudaFree, which waits for the device, or
    // deferred when the last owner goes on a stream worker.
    void memcpy(sw_stream_s& s, void* dst, const void* src, uint64_t bytes, KeepAlive) override {
        call(&cuda::PluginApi::memcpy_async, s.device_impl->ordinal, dst, src, bytes, s.cuda_stream);
    }

    void memset(sw_stream_s& s, void* dst, uint8_t value, uint64_t bytes, KeepAlive) override {
        call(&cuda::PluginApi::memset_async, s.device_impl->ordinal, dst, value, bytes, s.cuda_stream);
    }

    // ------------------------------------------------------------------ compute
    // Exactly the combinations the plugin computes (core/cuda_plugin_api.h): A and B of one type in f32, f16 or bf16,
    // C in f32 or A's type (the bias has C's type; fp32 accumulation always).
    void check_gemm_types(sw_dtype a_type, sw_dtype b_type, sw_dtype c_type) override {
        if (!gemm_types_defined(a_type, b_type, c_type))
            fail(SW_ERR_UNSUPPORTED, "a = ", dtype_name(a_type), ", b = ", dtype_name(b_type), ", c = ", dtype_name(c_type),
                 ": the CUDA GEMM takes a = b in f32, f16 or bf16 and c in f32 or a's type (f32/f32, f16/f16, bf16/bf16, "
                 "f16/f32, bf16/f32)");
    }

    void gemm(sw_stream_s& s, const GemmProblem& problem, KeepAlive) override {
        DeviceImpl& dev = *s.device_impl;
        const auto algo = static_cast<cuda::GemmAlgo>(dev.kernel.load());
        call(&cuda::PluginApi::gemm, dev.ordinal, &problem, algo, s.cuda_stream);
    }

    // sw_gemm_grouped: the members one by one, each on its own stream, between two joins of the listed streams (an
    // event per record: the first listed stream waits for every other, then every other waits for it), so that the
    // group starts after every listed stream's earlier work and every listed stream's later work waits for every
    // member, as the C ABI orders a group.
    void gemm_grouped(sw_stream_s* const* streams, const GemmProblem* problems, KeepAlive* keeps,
                      int32_t count) override {
        const int32_t ord = streams[0]->device_impl->ordinal;
        std::vector<void*> distinct;
        for (int32_t i = 0; i < count; ++i)
            if (std::find(distinct.begin(), distinct.end(), streams[i]->cuda_stream) == distinct.end())
                distinct.push_back(streams[i]->cuda_stream);
        if (distinct.size() == 1) {
            Backend::gemm_grouped(streams, problems, keeps, count);
            return;
        }
        struct Events {
            const cuda::PluginApi* api;
            int32_t ord;
            std::vector<void*> ev;
            ~Events() {
                std::string err;
                for (void* e : ev) api->event_destroy(ord, e, &err); // CUDA defers the destruction of a pending event
            }
        } events{api_, ord, {}};
        events.ev.reserve(2 * distinct.size());
        const auto signal = [&](void* from, void* to) { // `to` waits for everything queued on `from` so far
            void* e = nullptr;
            call(&cuda::PluginApi::event_create, ord, &e);
            events.ev.push_back(e);
            call(&cuda::PluginApi::event_record, ord, e, from);
            call(&cuda::PluginApi::stream_wait_event, ord, to, e);
        };
        const auto join = [&] {
            for (size_t j = 1; j < distinct.size(); ++j) signal(distinct[j], distinct[0]);
            void* e = nullptr;
            call(&cuda::PluginApi::event_create, ord, &e);
            events.ev.push_back(e);
            call(&cuda::PluginApi::event_record, ord, e, distinct[0]);
            for (size_t j = 1; j < distinct.size(); ++j) call(&cuda::PluginApi::stream_wait_event, ord, distinct[j], e);
        };
        join();
        Backend::gemm_grouped(streams, problems, keeps, count);
        join();
    }

    void check_activation_type(sw_dtype dtype) override {
        if (dtype != SW_DTYPE_F32 && dtype != SW_DTYPE_F64 && dtype != SW_DTYPE_F16 && dtype != SW_DTYPE_BF16)
            fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype), ": CUDA activations take f32, f64, f16 or bf16");
    }

    void gelu(sw_stream_s& s, sw_dtype dtype, const void* x, void* y, uint64_t count, KeepAlive) override {
        const int32_t ord = s.device_impl->ordinal;
        const uint64_t bytes = count * sw_dtype_size(dtype);
        if (x != y) call(&cuda::PluginApi::memcpy_async, ord, y, x, bytes, s.cuda_stream);
        const auto n = static_cast<int64_t>(count);
        call(&cuda::PluginApi::bias_act, ord, dtype, y, n, 1, n, nullptr, SW_EPILOGUE_GELU, s.cuda_stream);
    }

    void gelu_backward(sw_stream_s& s, sw_dtype dtype, const void* x, const void* dy, void* dx, uint64_t count,
                       KeepAlive) override {
        call(&cuda::PluginApi::gelu_backward, s.device_impl->ordinal, dtype, x, dy, dx, count, s.cuda_stream);
    }

    // ------------------------------------------------------------------ mixed-precision training
    void check_training_type(sw_dtype dtype, const char* arg, const char* op) override {
        if (dtype != SW_DTYPE_F32 && dtype != SW_DTYPE_F16 && dtype != SW_DTYPE_BF16 &&
            !(dtype == SW_DTYPE_F64 && std::strcmp(op, "sw_convert") == 0))
            fail(SW_ERR_UNSUPPORTED, arg, " = ", dtype_name(dtype), ": CUDA's ", op, " takes f32, f16 or bf16",
                 std::strcmp(op, "sw_convert") == 0 ? " (and f64)" : "");
    }

    void convert(sw_stream_s& s, sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst, uint64_t count,
                 KeepAlive) override {
        call(&cuda::PluginApi::convert, s.device_impl->ordinal, src_type, src, dst_type, dst, count, s.cuda_stream);
    }

    void unscale_check(sw_stream_s& s, sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                       KeepAlive) override {
        call(&cuda::PluginApi::unscale_check, s.device_impl->ordinal, dtype, buf, count, inv_scale, flag, s.cuda_stream);
    }

    void axpy(sw_stream_s& s, sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count, KeepAlive) override {
        call(&cuda::PluginApi::axpy, s.device_impl->ordinal, x_type, alpha, x, y, count, s.cuda_stream);
    }

    // ------------------------------------------------------------------ attention and normalization (core/row_ops.h)
    void softmax(sw_stream_s& s, const SoftmaxRows& a, KeepAlive) override {
        call(&cuda::PluginApi::softmax, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void softmax_backward(sw_stream_s& s, const SoftmaxBackwardRows& a, KeepAlive) override {
        call(&cuda::PluginApi::softmax_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void norm(sw_stream_s& s, const NormRows& a, KeepAlive) override {
        call(&cuda::PluginApi::norm, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void norm_backward(sw_stream_s& s, const NormBackwardRows& a, KeepAlive) override {
        call(&cuda::PluginApi::norm_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void activation(sw_stream_s& s, const ActivationArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::activation, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void activation_backward(sw_stream_s& s, const ActivationBackwardArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::activation_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void glu(sw_stream_s& s, const GluArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::glu, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void glu_backward(sw_stream_s& s, const GluBackwardArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::glu_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void dropout(sw_stream_s& s, const DropoutArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::dropout, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void embedding(sw_stream_s& s, const EmbeddingArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::embedding, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void embedding_backward(sw_stream_s& s, const EmbeddingBackwardArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::embedding_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void cross_entropy_partial(sw_stream_s& s, const CrossEntropyPartialArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::cross_entropy_partial, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void cross_entropy_partial_tree(sw_stream_s& s, const CrossEntropyPartialTreeArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::cross_entropy_partial_tree, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void cross_entropy_combine(sw_stream_s& s, const CrossEntropyCombineArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::cross_entropy_combine, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void cross_entropy_backward(sw_stream_s& s, const CrossEntropyBackwardArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::cross_entropy_backward, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void sgd_step(sw_stream_s& s, const SgdArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::sgd_step, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void adamw_step(sw_stream_s& s, const AdamWArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::adamw_step, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void sum_squares(sw_stream_s& s, const SumSquaresArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::sum_squares, s.device_impl->ordinal, a, s.cuda_stream);
    }
    void scale(sw_stream_s& s, const ScaleArgs& a, KeepAlive) override {
        call(&cuda::PluginApi::scale, s.device_impl->ordinal, a, s.cuda_stream);
    }

private:
    // Every table call goes through here (cuda_call, core/cuda_loader.h): a failed status becomes sw::Error with
    // the plugin's message.
    template <class Fn, class... A>
    void call(Fn fn, A&&... args) const {
        cuda_call(api_, fn, std::forward<A>(args)...);
    }

    const cuda::PluginApi* api_;
};

} // namespace

Backend* cuda_backend(std::string* why) {
    const cuda::PluginApi* api = cuda_plugin(why);
    if (!api) return nullptr;
    static auto* backend = new CudaBackend(api); // never destroyed: storages may be freed during exit
    return backend;
}

} // namespace sw
