// Exported C ABI: devices, buffers, streams, events, GEMM and the shard index math.
// Every function validates its arguments (naming them in the message) before touching anything.
#include "core/cuda_loader.h"
#include "core/enum_arg.h"
#include "core/index_math.h"
#include "core/objects.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>

#if defined(__linux__)
#include <unistd.h>
#endif

using namespace sw;

namespace {

std::string cpu_model_name() {
#if defined(__linux__)
    if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
        char line[512];
        while (std::fgets(line, sizeof line, f)) {
            if (std::strncmp(line, "model name", 10) == 0) {
                const char* colon = std::strchr(line, ':');
                std::string name = colon ? colon + 1 : line;
                while (!name.empty() && (name.front() == ' ' || name.front() == '\t')) name.erase(0, 1);
                while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
                std::fclose(f);
                return name;
            }
        }
        std::fclose(f);
    }
#endif
    return "CPU";
}

uint64_t physical_memory_bytes() {
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
#endif
    return 0;
}

int default_threads() {
    if (const char* env = std::getenv("SHARDWISE_NUM_THREADS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return hc > 0 ? static_cast<int>(hc) : 1;
}

void copy_name(char* dst, size_t cap, const std::string& src) {
    const size_t n = src.size() < cap - 1 ? src.size() : cap - 1;
    std::memcpy(dst, src.data(), n);
    dst[n] = '\0';
}


// Validates one GEMM operand stored rows x cols with leading dimension ld at offset.
const void* gemm_operand(sw_buffer_s* buf, uint64_t offset, int64_t rows, int64_t cols, int64_t ld, size_t esz,
                         const char* name, const char* ld_name, const std::string& shape) {
    if (ld < (cols > 1 ? cols : 1))
        fail(SW_ERR_INVALID_ARGUMENT, ld_name, " = ", ld, " is smaller than the ", cols,
             " columns of ", name, " as stored (", shape, "); expected ", ld_name, " >= ", (cols > 1 ? cols : 1));
    return buffer_span(buf, offset, matrix_extent(rows, cols, ld), esz, name);
}

const char* cuda_algo_name(int algo) {
    switch (static_cast<cuda::GemmAlgo>(algo)) {
    case cuda::GemmAlgo::Auto: return "auto";
    case cuda::GemmAlgo::CublasLt: return "cublaslt";
    case cuda::GemmAlgo::HandWritten: return "mma";
    case cuda::GemmAlgo::Wgmma: return "wgmma";
    }
    return "auto";
}

// The CUDA backend for a device-level call: the plugin, or SW_ERR_NOT_FOUND saying why it is missing.
const cuda::PluginApi* require_cuda() {
    std::string why;
    const cuda::PluginApi* api = cuda_plugin(&why);
    if (!api) fail(SW_ERR_NOT_FOUND, "no CUDA device: ", why);
    return api;
}

} // namespace

extern "C" {

SW_API sw_status sw_shard_range(int64_t total, int32_t parts, int32_t index, int64_t* offset, int64_t* count) {
    return guard(__func__, [&] {
        require(offset, "offset");
        require(count, "count");
        if (total < 0) fail(SW_ERR_INVALID_ARGUMENT, "total = ", total, "; expected total >= 0");
        if (parts < 1) fail(SW_ERR_INVALID_ARGUMENT, "parts = ", parts, "; expected parts >= 1");
        if (index < 0 || index >= parts)
            fail(SW_ERR_INVALID_ARGUMENT, "index = ", index, " is out of range; expected 0 <= index < ", parts);
        *offset = shard_offset(total, parts, index);
        *count = shard_count(total, parts, index);
    });
}

// ---------------------------------------------------------------- devices

SW_API sw_status sw_device_count(sw_backend backend_in, int32_t* count) {
    return guard(__func__, [&] {
        require(count, "count");
        const sw_backend backend = backend_arg(backend_in, "backend");
        switch (backend) {
        case SW_BACKEND_CPU: *count = 1; break;
        case SW_BACKEND_CUDA: {
            // No plugin (a build without CUDA), no driver or no GPU: 0 devices, not an error.
            const cuda::PluginApi* api = cuda_plugin(nullptr);
            *count = 0;
            if (api) {
                std::string err;
                cuda_check(api->device_count(count, &err), err);
            }
            break;
        }
        default: fail(SW_ERR_INTERNAL, "backend = ", static_cast<int>(backend), " passed the check but has no case");
        }
    });
}

SW_API sw_status sw_device_create(sw_backend backend_in, int32_t ordinal, int32_t num_threads, sw_device* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        const sw_backend backend = backend_arg(backend_in, "backend");
        if (backend == SW_BACKEND_CUDA) {
            const cuda::PluginApi* api = require_cuda();
            std::string err;
            int32_t count = 0;
            cuda_check(api->device_count(&count, &err), err);
            if (ordinal < 0 || ordinal >= count)
                fail(SW_ERR_NOT_FOUND, "ordinal = ", ordinal, ": there are ", count, " CUDA devices");
            sw_device_info info{};
            cuda_check(api->device_info(ordinal, &info, &err), err);
            auto impl = std::make_shared<DeviceImpl>();
            impl->backend = SW_BACKEND_CUDA;
            impl->ordinal = ordinal;
            impl->num_threads = info.num_threads;
            impl->name = str("cuda:", ordinal, " ", info.name);
            impl->cuda = api;
            auto* dev = new sw_device_s{std::move(impl)};
            register_handle(dev, HandleKind::Device);
            *out = dev;
            return;
        }
        if (ordinal != 0)
            fail(SW_ERR_NOT_FOUND, "ordinal = ", ordinal, ": the CPU backend has exactly one device (ordinal 0)");
        if (num_threads < 0 || num_threads > 4096)
            fail(SW_ERR_INVALID_ARGUMENT, "num_threads = ", num_threads, "; expected 0 (default) or 1..4096");
        auto impl = std::make_shared<DeviceImpl>();
        impl->backend = SW_BACKEND_CPU;
        impl->ordinal = 0;
        impl->num_threads = num_threads > 0 ? num_threads : default_threads();
        impl->pool = std::make_unique<cpu::ThreadPool>(impl->num_threads);
        impl->name = str(cpu_model_name(), ", ", impl->num_threads, impl->num_threads == 1 ? " thread" : " threads");
        if (const char* env = std::getenv("SHARDWISE_CPU_KERNEL")) {
            cpu::Kernel k;
            if (cpu::parse_kernel(env, &k) && cpu::kernel_supported(k)) impl->kernel = static_cast<int>(k);
        }
        auto* dev = new sw_device_s{std::move(impl)};
        register_handle(dev, HandleKind::Device);
        *out = dev;
    });
}

SW_API sw_status sw_device_destroy(sw_device device) {
    return guard(__func__, [&] {
        if (!device) return;
        auto* dev = checked(device, "device");
        const int64_t children = dev->impl->children.load();
        if (children != 0)
            fail(SW_ERR_INVALID_ARGUMENT, "device still has ", children,
                 " live buffers, streams, events or communicators; destroy them first");
        unregister_handle(dev);
        delete dev;
    });
}

SW_API sw_status sw_device_get_info(sw_device device, sw_device_info* info) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(info, "info");
        std::memset(info, 0, sizeof *info);
        if (dev->impl->is_cuda()) {
            std::string err;
            cuda_check(dev->impl->cuda->device_info(dev->impl->ordinal, info, &err), err);
            copy_name(info->name, sizeof info->name, dev->impl->name);
            copy_name(info->kernel, sizeof info->kernel, cuda_algo_name(dev->impl->kernel.load()));
            return;
        }
        info->backend = dev->impl->backend;
        info->ordinal = dev->impl->ordinal;
        info->num_threads = dev->impl->num_threads;
        info->total_memory_bytes = physical_memory_bytes();
        copy_name(info->name, sizeof info->name, dev->impl->name);
        const auto k = cpu::resolve_kernel(static_cast<cpu::Kernel>(dev->impl->kernel.load()));
        copy_name(info->kernel, sizeof info->kernel, cpu::kernel_name(k));
    });
}

SW_API sw_status sw_device_set_kernel(sw_device device, const char* kernel) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(kernel, "kernel");
        if (dev->impl->is_cuda()) {
            const std::string name = kernel;
            cuda::GemmAlgo algo;
            if (name == "auto") algo = cuda::GemmAlgo::Auto;
            else if (name == "cublaslt") algo = cuda::GemmAlgo::CublasLt;
            else if (name == "mma") algo = cuda::GemmAlgo::HandWritten;
            else if (name == "wgmma") algo = cuda::GemmAlgo::Wgmma;
            else fail(SW_ERR_INVALID_ARGUMENT, "kernel = '", name, "'; a CUDA device takes auto, cublaslt, mma or wgmma");
            dev->impl->kernel = static_cast<int>(algo);
            return;
        }
        cpu::Kernel k;
        if (!cpu::parse_kernel(kernel, &k))
            fail(SW_ERR_INVALID_ARGUMENT, "kernel = '", kernel, "'; expected auto, avx512, avx2 or generic");
        if (!cpu::kernel_supported(k))
            fail(SW_ERR_UNSUPPORTED, "kernel '", kernel, "' is not supported by this processor");
        dev->impl->kernel = static_cast<int>(k);
    });
}

SW_API sw_status sw_device_get_tile_shape(sw_device device, sw_tile_shape* shape) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(shape, "shape");
        std::memset(shape, 0, sizeof *shape);
        if (dev->impl->is_cuda()) return;
        const auto t = cpu::tile_shape(cpu::resolve_kernel(static_cast<cpu::Kernel>(dev->impl->kernel.load())));
        shape->mr = t.mr;
        shape->nr = t.nr;
        shape->mc = t.mc;
        shape->kc = t.kc;
        shape->nc = t.nc;
    });
}

// ---------------------------------------------------------------- buffers

SW_API sw_status sw_buffer_alloc(sw_device device, uint64_t bytes, sw_buffer* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        if (bytes == 0) fail(SW_ERR_INVALID_ARGUMENT, "bytes = 0; expected a positive size");
        if (bytes > (uint64_t{1} << 50)) fail(SW_ERR_OUT_OF_MEMORY, "bytes = ", bytes, " is more than can be allocated");
        auto storage = std::make_shared<Storage>();
        if (dev->impl->is_cuda()) {
            std::string err;
            dev->impl->drain_deferred_frees();
            cuda_check(dev->impl->cuda->malloc_device(dev->impl->ordinal, bytes, &storage->ptr, &err), err);
            storage->cuda = dev->impl->cuda;
            storage->ordinal = dev->impl->ordinal;
            storage->deferred = dev->impl->deferred;
        } else {
            const uint64_t rounded = (bytes + 63) / 64 * 64;
            storage->ptr = std::aligned_alloc(64, static_cast<size_t>(rounded));
        }
        if (!storage->ptr) fail(SW_ERR_OUT_OF_MEMORY, "could not allocate ", bytes, " bytes on '", dev->impl->name, "'");
        storage->bytes = bytes;
        storage->owned = true;
        auto* buf = new sw_buffer_s{dev, dev->impl, std::move(storage)};
        ++dev->impl->children;
        register_handle(buf, HandleKind::Buffer);
        *out = buf;
    });
}

SW_API sw_status sw_buffer_wrap(sw_device device, void* ptr, uint64_t bytes, sw_buffer* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        require(ptr, "ptr");
        if (bytes == 0) fail(SW_ERR_INVALID_ARGUMENT, "bytes = 0; expected the positive size of the wrapped memory");
        // No memory is that large (sw_buffer_alloc's limit), and [ptr, ptr + bytes) must not wrap around the address
        // space: a size like UINT64_MAX would let every later bounds check pass and any offset through.
        if (bytes > (uint64_t{1} << 50))
            fail(SW_ERR_INVALID_ARGUMENT, "bytes = ", bytes,
                 " is larger than any wrapped memory can be; expected the size of the memory at ptr (at most 2^50 bytes)");
        if (reinterpret_cast<uintptr_t>(ptr) > UINTPTR_MAX - bytes)
            fail(SW_ERR_INVALID_ARGUMENT, "bytes = ", bytes, " at ptr = ", ptr,
                 " runs past the end of the address space; expected the size of the memory at ptr");
        if (dev->impl->is_cuda()) {
            int32_t where = -1;
            std::string err;
            cuda_check(dev->impl->cuda->pointer_device(ptr, &where, &err), err);
            if (where != dev->impl->ordinal)
                fail(SW_ERR_INVALID_ARGUMENT, "ptr is not memory of CUDA device ", dev->impl->ordinal,
                     where < 0 ? " (it is host or unknown memory)" : str(" (it belongs to device ", where, ")").c_str());
        }
        auto storage = std::make_shared<Storage>();
        storage->ptr = ptr;
        storage->bytes = bytes;
        storage->owned = false;
        auto* buf = new sw_buffer_s{dev, dev->impl, std::move(storage)};
        ++dev->impl->children;
        register_handle(buf, HandleKind::Buffer);
        *out = buf;
    });
}

SW_API sw_status sw_buffer_destroy(sw_buffer buffer) {
    return guard(__func__, [&] {
        if (!buffer) return;
        auto* buf = checked(buffer, "buffer");
        unregister_handle(buf);
        --buf->device_impl->children;
        delete buf; // storage lives on while queued work still holds it
    });
}

SW_API sw_status sw_buffer_get_pointer(sw_buffer buffer, void** ptr) {
    return guard(__func__, [&] {
        require(ptr, "ptr");
        *ptr = checked(buffer, "buffer")->storage->ptr;
    });
}

SW_API sw_status sw_buffer_get_size(sw_buffer buffer, uint64_t* bytes) {
    return guard(__func__, [&] {
        require(bytes, "bytes");
        *bytes = checked(buffer, "buffer")->storage->bytes;
    });
}

SW_API sw_status sw_buffer_get_device(sw_buffer buffer, sw_device* device) {
    return guard(__func__, [&] {
        require(device, "device");
        *device = checked(buffer, "buffer")->device;
    });
}

SW_API sw_status sw_memcpy_h2d_async(sw_buffer dst, uint64_t dst_offset_bytes, const void* src, uint64_t bytes,
                                     sw_stream stream) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* d = checked(dst, "dst");
        require_same_device(d, s, "dst");
        char* to = buffer_span(d, dst_offset_bytes, bytes, 1, "dst"); // also for 0 bytes: the offset must be inside
        if (bytes == 0) return;
        require(src, "src");
        if (s->device_impl->is_cuda()) {
            std::string err;
            cuda_check(s->device_impl->cuda->memcpy_async(s->device_impl->ordinal, to, src, bytes, s->cuda_stream, &err), err);
            return;
        }
        s->impl->enqueue([keep = d->storage, to, src, bytes] { std::memcpy(to, src, bytes); });
    });
}

SW_API sw_status sw_memcpy_d2h_async(void* dst, sw_buffer src, uint64_t src_offset_bytes, uint64_t bytes,
                                     sw_stream stream) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* b = checked(src, "src");
        require_same_device(b, s, "src");
        const char* from = buffer_span(b, src_offset_bytes, bytes, 1, "src"); // also for 0 bytes
        if (bytes == 0) return;
        require(dst, "dst");
        if (s->device_impl->is_cuda()) {
            std::string err;
            cuda_check(s->device_impl->cuda->memcpy_async(s->device_impl->ordinal, dst, from, bytes, s->cuda_stream, &err), err);
            return;
        }
        s->impl->enqueue([keep = b->storage, dst, from, bytes] { std::memcpy(dst, from, bytes); });
    });
}

SW_API sw_status sw_memcpy_d2d_async(sw_buffer dst, uint64_t dst_offset_bytes, sw_buffer src,
                                     uint64_t src_offset_bytes, uint64_t bytes, sw_stream stream) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* d = checked(dst, "dst");
        auto* b = checked(src, "src");
        require_same_device(d, s, "dst"); // CPU: every device reads host memory, so src may be a peer
        char* to = buffer_span(d, dst_offset_bytes, bytes, 1, "dst"); // also for 0 bytes: offsets must be inside
        const char* from = buffer_span(b, src_offset_bytes, bytes, 1, "src");
        if (s->device_impl->is_cuda() != b->device_impl->is_cuda())
            fail(SW_ERR_INVALID_ARGUMENT, "src is on '", b->device_impl->name, "' and dst on '", d->device_impl->name,
                 "'; device-to-device copies need two devices of the same backend (use sw_memcpy_d2h/h2d)");
        if (bytes == 0) return;
        if (s->device_impl->is_cuda()) {
            std::string err;
            cuda_check(s->device_impl->cuda->memcpy_async(s->device_impl->ordinal, to, from, bytes, s->cuda_stream, &err), err);
            return;
        }
        s->impl->enqueue([kd = d->storage, ks = b->storage, to, from, bytes] { std::memmove(to, from, bytes); });
    });
}

SW_API sw_status sw_memset_async(sw_buffer dst, uint64_t dst_offset_bytes, uint8_t value, uint64_t bytes,
                                 sw_stream stream) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* d = checked(dst, "dst");
        require_same_device(d, s, "dst");
        char* to = buffer_span(d, dst_offset_bytes, bytes, 1, "dst"); // also for 0 bytes
        if (bytes == 0) return;
        if (s->device_impl->is_cuda()) {
            std::string err;
            cuda_check(s->device_impl->cuda->memset_async(s->device_impl->ordinal, to, value, bytes, s->cuda_stream, &err), err);
            return;
        }
        s->impl->enqueue([keep = d->storage, to, value, bytes] { std::memset(to, value, bytes); });
    });
}

// ---------------------------------------------------------------- streams and events

SW_API sw_status sw_stream_create(sw_device device, sw_stream* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        void* cuda_stream = nullptr;
        if (dev->impl->is_cuda()) {
            std::string err;
            cuda_check(dev->impl->cuda->stream_create(dev->impl->ordinal, &cuda_stream, &err), err);
        }
        auto* s = new sw_stream_s{dev, dev->impl, std::make_unique<cpu::Stream>()};
        s->cuda_stream = cuda_stream;
        s->owns_cuda_stream = cuda_stream != nullptr;
        ++dev->impl->children;
        register_handle(s, HandleKind::Stream);
        *out = s;
    });
}

SW_API sw_status sw_stream_wrap(sw_device device, void* native_stream, sw_stream* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        if (!dev->impl->is_cuda())
            fail(SW_ERR_UNSUPPORTED, "sw_stream_wrap takes a cudaStream_t; the CPU backend has no native streams to wrap");
        // native_stream may be NULL: the legacy default stream of the device.
        auto* s = new sw_stream_s{dev, dev->impl, std::make_unique<cpu::Stream>()};
        s->cuda_stream = native_stream;
        s->owns_cuda_stream = false;
        {
            std::lock_guard<std::mutex> lock(dev->impl->wrapped_mutex);
            ++dev->impl->wrapped_streams[native_stream];
        }
        ++dev->impl->children;
        register_handle(s, HandleKind::Stream);
        *out = s;
    });
}

SW_API sw_status sw_stream_get_native(sw_stream stream, void** native_stream) {
    return guard(__func__, [&] {
        require(native_stream, "native_stream");
        *native_stream = checked(stream, "stream")->cuda_stream;
    });
}

SW_API sw_status sw_stream_destroy(sw_stream stream) {
    return guard(__func__, [&] {
        if (!stream) return;
        auto* s = checked(stream, "stream");
        unregister_handle(s);
        s->impl.reset(); // drains queued host work (releases every collective's wait flag), joins the worker
        if (s->device_impl->is_cuda()) {
            std::string err;
            const auto& api = s->device_impl->cuda;
            api->stream_synchronize(s->device_impl->ordinal, s->cuda_stream, &err);
            if (s->owns_cuda_stream) {
                api->stream_destroy(s->device_impl->ordinal, s->cuda_stream, &err);
            } else {
                // The last wrapper of an external stream frees the plugin's resources for it (its GEMM workspace).
                std::lock_guard<std::mutex> lock(s->device_impl->wrapped_mutex);
                auto& wrapped = s->device_impl->wrapped_streams;
                auto it = wrapped.find(s->cuda_stream);
                if (it != wrapped.end() && --it->second == 0) {
                    wrapped.erase(it);
                    api->release_stream(s->device_impl->ordinal, s->cuda_stream, &err);
                }
            }
            if (s->flag_host) api->free_host(s->flag_host, &err);
        }
        --s->device_impl->children;
        delete s;
    });
}

SW_API sw_status sw_stream_synchronize(sw_stream stream) {
    sw_status status = SW_OK;
    std::string message;
    const sw_status call = guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        if (s->device_impl->is_cuda()) {
            // The device work first (it may wait for collectives' host sides), then the host side's errors.
            std::string err;
            const sw_status st = s->device_impl->cuda->stream_synchronize(s->device_impl->ordinal, s->cuda_stream, &err);
            std::string host_message;
            const sw_status host = s->impl->synchronize(&host_message);
            s->device_impl->drain_deferred_frees();
            if (host != SW_OK) {
                status = host;
                message = host_message;
                return;
            }
            cuda_check(st, err);
            return;
        }
        status = s->impl->synchronize(&message);
    });
    if (call != SW_OK) return call;
    if (status != SW_OK) set_last_error(message);
    return status;
}

SW_API sw_status sw_stream_wait_event(sw_stream stream, sw_event event) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* e = checked(event, "event");
        if (s->device_impl->is_cuda() || e->device_impl->is_cuda()) {
            if (!e->cuda_event || !s->device_impl->is_cuda())
                fail(SW_ERR_INVALID_ARGUMENT, "event and stream must both be CUDA (or both CPU)");
            std::string err;
            cuda_check(s->device_impl->cuda->stream_wait_event(s->device_impl->ordinal, s->cuda_stream, e->cuda_event, &err), err);
            return;
        }
        std::shared_ptr<EventState> st = e->state;
        uint64_t gen;
        {
            std::lock_guard<std::mutex> lock(st->mu);
            gen = st->recorded;
        }
        if (gen == 0) return; // never recorded: nothing to wait for
        s->impl->enqueue(
            [st, gen] {
                std::unique_lock<std::mutex> lock(st->mu);
                st->cv.wait(lock, [&] { return st->completed >= gen; });
            },
            /*always=*/true);
    });
}

SW_API sw_status sw_event_create(sw_device device, sw_event* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        void* cuda_event = nullptr;
        if (dev->impl->is_cuda()) {
            std::string err;
            cuda_check(dev->impl->cuda->event_create(dev->impl->ordinal, &cuda_event, &err), err);
        }
        auto* e = new sw_event_s{dev, dev->impl, std::make_shared<EventState>(), cuda_event};
        ++dev->impl->children;
        register_handle(e, HandleKind::Event);
        *out = e;
    });
}

SW_API sw_status sw_event_destroy(sw_event event) {
    return guard(__func__, [&] {
        if (!event) return;
        auto* e = checked(event, "event");
        unregister_handle(e);
        if (e->cuda_event) {
            std::string err;
            e->device_impl->cuda->event_destroy(e->device_impl->ordinal, e->cuda_event, &err);
        }
        --e->device_impl->children;
        delete e;
    });
}

SW_API sw_status sw_event_record(sw_event event, sw_stream stream) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        auto* s = checked(stream, "stream");
        if (e->cuda_event || s->device_impl->is_cuda()) {
            if (!e->cuda_event || s->device_impl != e->device_impl)
                fail(SW_ERR_INVALID_ARGUMENT, "event belongs to '", e->device_impl->name, "' but stream runs on '",
                     s->device_impl->name, "'; expected the same CUDA device");
            std::string err;
            cuda_check(e->device_impl->cuda->event_record(e->device_impl->ordinal, e->cuda_event, s->cuda_stream, &err), err);
            std::lock_guard<std::mutex> lock(e->state->mu);
            ++e->state->recorded;
            return;
        }
        std::shared_ptr<EventState> st = e->state;
        uint64_t gen;
        {
            std::lock_guard<std::mutex> lock(st->mu);
            gen = ++st->recorded;
        }
        s->impl->enqueue(
            [st, gen] {
                const auto now = std::chrono::steady_clock::now();
                std::lock_guard<std::mutex> lock(st->mu);
                if (gen > st->completed) {
                    st->completed = gen;
                    st->time = now;
                }
                st->cv.notify_all();
            },
            /*always=*/true);
    });
}

SW_API sw_status sw_event_synchronize(sw_event event) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        if (e->cuda_event) {
            std::string err;
            cuda_check(e->device_impl->cuda->event_synchronize(e->device_impl->ordinal, e->cuda_event, &err), err);
            return;
        }
        std::unique_lock<std::mutex> lock(e->state->mu);
        const uint64_t gen = e->state->recorded;
        e->state->cv.wait(lock, [&] { return e->state->completed >= gen; });
    });
}

SW_API sw_status sw_event_query(sw_event event, int32_t* done) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        require(done, "done");
        if (e->cuda_event) {
            std::string err;
            cuda_check(e->device_impl->cuda->event_query(e->device_impl->ordinal, e->cuda_event, done, &err), err);
            return;
        }
        std::lock_guard<std::mutex> lock(e->state->mu);
        *done = e->state->completed >= e->state->recorded ? 1 : 0;
    });
}

SW_API sw_status sw_event_elapsed_ms(sw_event start, sw_event end, double* ms) {
    return guard(__func__, [&] {
        auto* a = checked(start, "start");
        auto* b = checked(end, "end");
        require(ms, "ms");
        if (a->cuda_event || b->cuda_event) {
            if (!a->cuda_event || !b->cuda_event || a->device_impl != b->device_impl)
                fail(SW_ERR_INVALID_ARGUMENT, "start and end must be events of the same device");
            for (auto* e : {a, b}) {
                std::lock_guard<std::mutex> lock(e->state->mu);
                if (e->state->recorded == 0)
                    fail(SW_ERR_INVALID_ARGUMENT, e == a ? "start" : "end", " was never recorded");
            }
            float f = 0;
            std::string err;
            cuda_check(a->device_impl->cuda->event_elapsed_ms(a->device_impl->ordinal, a->cuda_event, b->cuda_event, &f, &err), err);
            if (f < 0)
                fail(SW_ERR_INVALID_ARGUMENT, "the end event was recorded before the start event (end is ", -f,
                     " ms earlier); expected start recorded first (are the arguments swapped?)");
            *ms = f;
            return;
        }
        std::chrono::steady_clock::time_point ta, tb;
        {
            std::lock_guard<std::mutex> lock(a->state->mu);
            if (a->state->recorded == 0 || a->state->completed < a->state->recorded)
                fail(SW_ERR_INVALID_ARGUMENT, "start has not completed (record it and synchronize first)");
            ta = a->state->time;
        }
        {
            std::lock_guard<std::mutex> lock(b->state->mu);
            if (b->state->recorded == 0 || b->state->completed < b->state->recorded)
                fail(SW_ERR_INVALID_ARGUMENT, "end has not completed (record it and synchronize first)");
            tb = b->state->time;
        }
        if (tb < ta)
            fail(SW_ERR_INVALID_ARGUMENT, "the end event was recorded before the start event (end is ",
                 std::chrono::duration<double, std::milli>(ta - tb).count(),
                 " ms earlier); expected start recorded first (are the arguments swapped?)");
        *ms = std::chrono::duration<double, std::milli>(tb - ta).count();
    });
}

// ---------------------------------------------------------------- GEMM

SW_API sw_status sw_gemm(sw_stream stream, sw_dtype dtype_in, sw_op trans_a_in, sw_op trans_b_in, int64_t m, int64_t n,
                         int64_t k, float alpha, sw_buffer a, uint64_t a_offset, int64_t lda, sw_buffer b,
                         uint64_t b_offset, int64_t ldb, float beta, sw_buffer c, uint64_t c_offset, int64_t ldc,
                         sw_buffer bias, uint64_t bias_offset, sw_epilogue epilogue_in) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const bool on_cuda = s->device_impl->is_cuda();
        // Enum arguments: read raw and range-checked before they exist as enum values (core/enum_arg.h).
        const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
        const sw_op trans_a = op_arg(trans_a_in, "trans_a");
        const sw_op trans_b = op_arg(trans_b_in, "trans_b");
        const sw_epilogue epilogue = epilogue_arg(epilogue_in, "epilogue");
        const size_t esz = sw_dtype_size(dtype);
        if (!on_cuda && dtype != SW_DTYPE_F32)
            fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype),
                 ": the CPU backend computes GEMM in float32 only (SW_DTYPE_F32)");
        if (on_cuda && dtype != SW_DTYPE_F32 && dtype != SW_DTYPE_F16 && dtype != SW_DTYPE_BF16)
            fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype), ": CUDA GEMM takes f32, f16 or bf16");
        if (m < 1) fail(SW_ERR_INVALID_ARGUMENT, "m = ", m, "; expected m >= 1");
        if (n < 1) fail(SW_ERR_INVALID_ARGUMENT, "n = ", n, "; expected n >= 1");
        if (k < 0) fail(SW_ERR_INVALID_ARGUMENT, "k = ", k, "; expected k >= 0");
        if (!std::isfinite(alpha) || !std::isfinite(beta))
            fail(SW_ERR_INVALID_ARGUMENT, "alpha = ", alpha, ", beta = ", beta, "; expected finite values");
        auto* bc = checked(c, "c");
        require_same_device(bc, s, "c");
        const bool ta = trans_a == SW_OP_T, tb = trans_b == SW_OP_T;
        const void* pa = nullptr;
        const void* pb = nullptr;
        std::shared_ptr<Storage> keep_a, keep_b, keep_bias;
        if (k > 0) {
            auto* ba = checked(a, "a");
            auto* bb = checked(b, "b");
            require_same_device(ba, s, "a");
            require_same_device(bb, s, "b");
            const std::string shape_a = ta ? str("k x m = ", k, " x ", m, ", trans_a = T") : str("m x k = ", m, " x ", k, ", trans_a = N");
            const std::string shape_b = tb ? str("n x k = ", n, " x ", k, ", trans_b = T") : str("k x n = ", k, " x ", n, ", trans_b = N");
            pa = gemm_operand(ba, a_offset, ta ? k : m, ta ? m : k, lda, esz, "a", "lda", shape_a);
            pb = gemm_operand(bb, b_offset, tb ? n : k, tb ? k : n, ldb, esz, "b", "ldb", shape_b);
            keep_a = ba->storage;
            keep_b = bb->storage;
        }
        if (ldc < n) fail(SW_ERR_INVALID_ARGUMENT, "ldc = ", ldc, " is smaller than n = ", n, "; expected ldc >= ", n);
        void* pc = buffer_span(bc, c_offset, matrix_extent(m, n, ldc), esz, "c");
        const void* pbias = nullptr;
        if (bias) {
            auto* bb = checked(bias, "bias");
            require_same_device(bb, s, "bias");
            pbias = buffer_span(bb, bias_offset, static_cast<uint64_t>(n), esz, "bias");
            keep_bias = bb->storage;
        }
        auto dev = s->device_impl;
        if (on_cuda) {
            cuda::GemmDesc d;
            d.a_type = dtype;
            d.c_type = dtype;
            d.trans_a = ta;
            d.trans_b = tb;
            d.m = m;
            d.n = n;
            d.k = k;
            d.alpha = alpha;
            d.beta = beta;
            d.a = pa;
            d.lda = lda;
            d.b = pb;
            d.ldb = ldb;
            d.c = pc;
            d.ldc = ldc;
            d.bias = pbias;
            d.epilogue = epilogue;
            d.algo = static_cast<cuda::GemmAlgo>(dev->kernel.load());
            std::string err;
            cuda_check(dev->cuda->gemm(dev->ordinal, &d, s->cuda_stream, &err), err);
            return;
        }
        cpu::SgemmArgs args;
        args.trans_a = ta;
        args.trans_b = tb;
        args.m = m;
        args.n = n;
        args.k = k;
        args.alpha = alpha;
        args.beta = beta;
        args.a = static_cast<const float*>(pa);
        args.lda = lda;
        args.b = static_cast<const float*>(pb);
        args.ldb = ldb;
        args.c = static_cast<float*>(pc);
        args.ldc = ldc;
        args.bias = static_cast<const float*>(pbias);
        args.gelu = epilogue == SW_EPILOGUE_GELU;
        const auto kernel = static_cast<cpu::Kernel>(dev->kernel.load());
        s->impl->enqueue([args, kernel, dev, keep_a, keep_b, keep_c = bc->storage, keep_bias] {
            cpu::sgemm(args, kernel, *dev->pool);
        });
    });
}

} // extern "C"

// ---------------------------------------------------------------- element-wise activations

namespace {
// d/dx of the tanh-approximation GeLU.
float gelu_grad(float x) {
    const float c = 0.7978845608028654f;
    const float t = std::tanh(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
}

// Runs fn(begin, end) over [0, count) in chunks on the device's pool, queued on the stream.
template <class Fn>
void enqueue_elementwise(sw_stream_s* s, uint64_t count, std::vector<std::shared_ptr<Storage>> keep, Fn fn) {
    auto dev = s->device_impl;
    s->impl->enqueue([dev, count, keep = std::move(keep), fn] {
        constexpr uint64_t kChunk = 1 << 16;
        const int64_t chunks = static_cast<int64_t>((count + kChunk - 1) / kChunk);
        dev->pool->parallel_for(chunks, [&](int64_t c) {
            const uint64_t b = static_cast<uint64_t>(c) * kChunk;
            fn(b, std::min<uint64_t>(count, b + kChunk));
        });
    });
}

// Reads the raw dtype argument (core/enum_arg.h) and checks that the stream's backend computes it.
sw_dtype check_activation_dtype(const sw_stream_s* s, const sw_dtype& dtype_in) {
    const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
    if (!s->device_impl->is_cuda() && dtype != SW_DTYPE_F32)
        fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype), ": the CPU backend computes activations in float32 only");
    if (s->device_impl->is_cuda() && dtype != SW_DTYPE_F32 && dtype != SW_DTYPE_F64 && dtype != SW_DTYPE_F16 &&
        dtype != SW_DTYPE_BF16)
        fail(SW_ERR_UNSUPPORTED, "dtype = ", static_cast<int>(dtype), ": CUDA activations take f32, f64, f16 or bf16");
    return dtype;
}
} // namespace

extern "C" {

SW_API sw_status sw_gelu(sw_stream stream, sw_dtype dtype_in, sw_buffer x, uint64_t x_offset, sw_buffer y,
                         uint64_t y_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype dtype = check_activation_dtype(s, dtype_in);
        auto* bx = checked(x, "x");
        auto* by = checked(y, "y");
        require_same_device(bx, s, "x");
        require_same_device(by, s, "y");
        const size_t esz = sw_dtype_size(dtype);
        char* px = buffer_span(bx, x_offset, count, esz, "x");
        char* py = buffer_span(by, y_offset, count, esz, "y");
        if (count == 0) return;
        if (s->device_impl->is_cuda()) {
            const auto& api = s->device_impl->cuda;
            const int32_t ord = s->device_impl->ordinal;
            std::string err;
            if (px != py) cuda_check(api->memcpy_async(ord, py, px, count * esz, s->cuda_stream, &err), err);
            cuda_check(api->bias_act(ord, dtype, py, static_cast<int64_t>(count), 1, static_cast<int64_t>(count), nullptr,
                                     SW_EPILOGUE_GELU, s->cuda_stream, &err), err);
            return;
        }
        auto* fx = reinterpret_cast<const float*>(px);
        auto* fy = reinterpret_cast<float*>(py);
        enqueue_elementwise(s, count, {bx->storage, by->storage}, [fx, fy](uint64_t b, uint64_t e) {
            for (uint64_t i = b; i < e; ++i) fy[i] = cpu::gelu_tanh(fx[i]);
        });
    });
}

SW_API sw_status sw_gelu_backward(sw_stream stream, sw_dtype dtype_in, sw_buffer x, uint64_t x_offset, sw_buffer dy,
                                  uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype dtype = check_activation_dtype(s, dtype_in);
        auto* bx = checked(x, "x");
        auto* bdy = checked(dy, "dy");
        auto* bdx = checked(dx, "dx");
        require_same_device(bx, s, "x");
        require_same_device(bdy, s, "dy");
        require_same_device(bdx, s, "dx");
        const size_t esz = sw_dtype_size(dtype);
        char* px = buffer_span(bx, x_offset, count, esz, "x");
        char* pdy = buffer_span(bdy, dy_offset, count, esz, "dy");
        char* pdx = buffer_span(bdx, dx_offset, count, esz, "dx");
        if (count == 0) return;
        if (s->device_impl->is_cuda()) {
            std::string err;
            cuda_check(s->device_impl->cuda->gelu_backward(s->device_impl->ordinal, dtype, px, pdy, pdx, count,
                                                           s->cuda_stream, &err), err);
            return;
        }
        auto* fx = reinterpret_cast<const float*>(px);
        auto* fdy = reinterpret_cast<const float*>(pdy);
        auto* fdx = reinterpret_cast<float*>(pdx);
        enqueue_elementwise(s, count, {bx->storage, bdy->storage, bdx->storage}, [fx, fdy, fdx](uint64_t b, uint64_t e) {
            for (uint64_t i = b; i < e; ++i) fdx[i] = fdy[i] * gelu_grad(fx[i]);
        });
    });
}

} // extern "C"
