// Exported C ABI: devices, buffers, streams, events, GEMM and the shard index math.
// Every function validates its arguments (naming them in the message) before touching anything, translates them
// (sw_gemm: one GemmProblem, core/gemm_args.h) and dispatches through the device's backend (core/backend.h):
// nothing here depends on which backend a device has.
#include "core/backend.h"
#include "core/dtype.h"
#include "core/enum_arg.h"
#include "core/gemm_args.h"
#include "core/gemm_overlap.h"
#include "core/index_math.h"
#include "core/objects.h"
#include "core/small_array.h"
#include "core/tree_reduction.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace sw;

namespace {

// The backend of a device-level call: the CPU backend, or the CUDA backend (SW_ERR_NOT_FOUND saying why it is
// missing).
Backend& backend_for(sw_backend kind) {
    if (kind == SW_BACKEND_CPU) return cpu_backend();
    std::string why;
    Backend* cuda = cuda_backend(&why);
    if (!cuda) fail(SW_ERR_NOT_FOUND, "no CUDA device: ", why);
    return *cuda;
}

// Do the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte?
bool ranges_overlap(const char* a, uint64_t a_bytes, const char* b, uint64_t b_bytes) {
    if (a_bytes == 0 || b_bytes == 0) return false;
    const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
    return pa < pb + b_bytes && pb < pa + a_bytes;
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

SW_API sw_status sw_tree_range(int64_t total, int64_t leaf, int32_t parts, int32_t index, int64_t* offset, int64_t* count) {
    return guard(__func__, [&] {
        require(offset, "offset");
        require(count, "count");
        if (total < 0) fail(SW_ERR_INVALID_ARGUMENT, "total = ", total, "; expected total >= 0");
        if (leaf < 1) fail(SW_ERR_INVALID_ARGUMENT, "leaf = ", leaf, "; expected leaf >= 1");
        if (parts < 1 || parts > (1 << 20) || !tree::power_of_two(parts))
            fail(SW_ERR_INVALID_ARGUMENT, "parts = ", parts,
                 "; expected a power of two 1..1048576 (the tree's levels split the leaves in halves)");
        if (index < 0 || index >= parts)
            fail(SW_ERR_INVALID_ARGUMENT, "index = ", index, " is out of range; expected 0 <= index < ", parts);
        const int64_t n = total == 0 ? 0 : (total - 1) / leaf + 1;
        const std::vector<int64_t> first = tree::nodes(n, parts);
        // (leaf f's first item: f * leaf < total for f < n, so the product cannot overflow)
        const auto at = [&](int64_t f) { return f >= n ? total : f * leaf; };
        const int64_t a = at(first[static_cast<size_t>(index)]), b = at(first[static_cast<size_t>(index) + 1]);
        *offset = a;
        *count = b - a;
    });
}

// ---------------------------------------------------------------- devices

SW_API sw_status sw_device_count(sw_backend backend_in, int32_t* count) {
    return guard(__func__, [&] {
        require(count, "count");
        const sw_backend backend = backend_arg(backend_in, "backend");
        // No CUDA plugin (a build without CUDA), no driver or no GPU: 0 devices, not an error.
        Backend* b = backend == SW_BACKEND_CPU ? &cpu_backend() : cuda_backend(nullptr);
        *count = b ? b->device_count() : 0;
    });
}

SW_API sw_status sw_device_create(sw_backend backend_in, int32_t ordinal, int32_t num_threads, sw_device* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        const sw_backend backend = backend_arg(backend_in, "backend");
        auto* dev = new sw_device_s{backend_for(backend).create_device(ordinal, num_threads)};
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
        dev->impl->ops->device_info(*dev->impl, info);
    });
}

SW_API sw_status sw_device_set_kernel(sw_device device, const char* kernel) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(kernel, "kernel");
        dev->impl->ops->set_kernel(*dev->impl, kernel);
    });
}

SW_API sw_status sw_device_set_gemm_reduction(sw_device device, int64_t leaf) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        if (leaf < 0 || leaf > kMaxGemmLeaf || leaf % 2 != 0)
            fail(SW_ERR_INVALID_ARGUMENT, "leaf = ", leaf, "; expected 0 (the default order) or an even leaf size 2..",
                 kMaxGemmLeaf, " (the TP-invariant tree reduction)");
        dev->impl->gemm_leaf = leaf;
    });
}

SW_API sw_status sw_device_get_gemm_reduction(sw_device device, int64_t* leaf) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(leaf, "leaf");
        *leaf = dev->impl->gemm_leaf.load();
    });
}

SW_API sw_status sw_device_get_tile_shape(sw_device device, sw_tile_shape* shape) {
    return guard(__func__, [&] {
        auto* dev = checked(device, "device");
        require(shape, "shape");
        std::memset(shape, 0, sizeof *shape);
        dev->impl->ops->tile_shape(*dev->impl, shape);
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
        dev->impl->ops->allocate(*dev->impl, bytes, *storage);
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
        dev->impl->ops->check_wrap(*dev->impl, ptr);
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
        s->device_impl->ops->memcpy(*s, to, src, bytes, {{d->storage}});
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
        s->device_impl->ops->memcpy(*s, dst, from, bytes, {{b->storage}});
    });
}

SW_API sw_status sw_memcpy_d2d_async(sw_buffer dst, uint64_t dst_offset_bytes, sw_buffer src,
                                     uint64_t src_offset_bytes, uint64_t bytes, sw_stream stream) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* d = checked(dst, "dst");
        auto* b = checked(src, "src");
        require_same_device(d, s, "dst"); // src may be a peer of the same backend
        char* to = buffer_span(d, dst_offset_bytes, bytes, 1, "dst"); // also for 0 bytes: offsets must be inside
        const char* from = buffer_span(b, src_offset_bytes, bytes, 1, "src");
        if (s->device_impl->backend != b->device_impl->backend)
            fail(SW_ERR_INVALID_ARGUMENT, "src is on '", b->device_impl->name, "' and dst on '", d->device_impl->name,
                 "'; device-to-device copies need two devices of the same backend (use sw_memcpy_d2h/h2d)");
        if (bytes == 0) return;
        s->device_impl->ops->memcpy(*s, to, from, bytes, {{d->storage, b->storage}});
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
        s->device_impl->ops->memset(*s, to, value, bytes, {{d->storage}});
    });
}

// ---------------------------------------------------------------- streams and events

SW_API sw_status sw_stream_create(sw_device device, sw_stream* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        std::unique_ptr<sw_stream_s> s(new sw_stream_s{dev, dev->impl, nullptr});
        dev->impl->ops->stream_create(*s);
        s->impl = std::make_unique<cpu::Stream>();
        ++dev->impl->children;
        register_handle(s.get(), HandleKind::Stream);
        *out = s.release();
    });
}

SW_API sw_status sw_stream_wrap(sw_device device, void* native_stream, sw_stream* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        // native_stream may be NULL: the legacy default stream of the device.
        std::unique_ptr<sw_stream_s> s(new sw_stream_s{dev, dev->impl, nullptr});
        dev->impl->ops->stream_wrap(*s, native_stream);
        s->impl = std::make_unique<cpu::Stream>();
        ++dev->impl->children;
        register_handle(s.get(), HandleKind::Stream);
        *out = s.release();
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
        s->device_impl->ops->stream_release(*s);
        --s->device_impl->children;
        delete s;
    });
}

SW_API sw_status sw_stream_synchronize(sw_stream stream) {
    sw_status status = SW_OK;
    std::string message;
    const sw_status call = guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        status = s->device_impl->ops->stream_synchronize(*s, &message);
    });
    if (call != SW_OK) return call;
    if (status != SW_OK) set_last_error(message);
    return status;
}

SW_API sw_status sw_stream_wait_event(sw_stream stream, sw_event event) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        auto* e = checked(event, "event");
        if (s->device_impl->backend != e->device_impl->backend)
            fail(SW_ERR_INVALID_ARGUMENT, "event and stream must both be CUDA (or both CPU)");
        s->device_impl->ops->stream_wait_event(*s, *e);
    });
}

SW_API sw_status sw_event_create(sw_device device, sw_event* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* dev = checked(device, "device");
        std::unique_ptr<sw_event_s> e(new sw_event_s{dev, dev->impl, std::make_shared<EventState>(), nullptr});
        dev->impl->ops->event_create(*e);
        ++dev->impl->children;
        register_handle(e.get(), HandleKind::Event);
        *out = e.release();
    });
}

SW_API sw_status sw_event_destroy(sw_event event) {
    return guard(__func__, [&] {
        if (!event) return;
        auto* e = checked(event, "event");
        unregister_handle(e);
        e->device_impl->ops->event_release(*e);
        --e->device_impl->children;
        delete e;
    });
}

SW_API sw_status sw_event_record(sw_event event, sw_stream stream) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        auto* s = checked(stream, "stream");
        if (e->device_impl->backend != s->device_impl->backend) fail_event_stream_mismatch(*e, *s);
        e->device_impl->ops->event_record(*e, *s);
    });
}

SW_API sw_status sw_event_synchronize(sw_event event) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        e->device_impl->ops->event_synchronize(*e);
    });
}

SW_API sw_status sw_event_query(sw_event event, int32_t* done) {
    return guard(__func__, [&] {
        auto* e = checked(event, "event");
        require(done, "done");
        *done = e->device_impl->ops->event_query(*e);
    });
}

SW_API sw_status sw_event_elapsed_ms(sw_event start, sw_event end, double* ms) {
    return guard(__func__, [&] {
        auto* a = checked(start, "start");
        auto* b = checked(end, "end");
        require(ms, "ms");
        if (a->device_impl->backend != b->device_impl->backend) fail_event_pair_mismatch();
        *ms = a->device_impl->ops->event_elapsed_ms(*a, *b);
    });
}

// ---------------------------------------------------------------- GEMM

SW_API sw_status sw_gemm(sw_stream stream, sw_dtype dtype_in, sw_op trans_a_in, sw_op trans_b_in, int64_t m, int64_t n,
                         int64_t k, float alpha, sw_buffer a, uint64_t a_offset, int64_t lda, sw_buffer b,
                         uint64_t b_offset, int64_t ldb, float beta, sw_buffer c, uint64_t c_offset, int64_t ldc,
                         sw_buffer bias, uint64_t bias_offset, sw_epilogue epilogue_in) {
    return guard(__func__, [&] {
        LiveBatch live; // every handle of the call: one registry lock
        live.add(stream, HandleKind::Stream);
        live.add(a, HandleKind::Buffer);
        live.add(b, HandleKind::Buffer);
        live.add(c, HandleKind::Buffer);
        live.add(bias, HandleKind::Buffer);
        live.verify();
        auto* s = checked(stream, "stream");
        GemmCall call = gemm_call_from_args(s, dtype_in, trans_a_in, trans_b_in, m, n, k, alpha, a, a_offset, lda, b,
                                            b_offset, ldb, beta, c, c_offset, ldc, bias, bias_offset, epilogue_in);
        s->device_impl->ops->gemm(*s, call.problem, std::move(call.keep));
    });
}

SW_API sw_status sw_gemm_ex(sw_stream stream, const sw_gemm_desc* desc) {
    return guard(__func__, [&] {
        LiveBatch live; // every handle of the call: one registry lock
        live.add(stream, HandleKind::Stream);
        if (desc && gemm_desc_size_ok(desc->size)) {
            live.add(desc->a, HandleKind::Buffer);
            live.add(desc->b, HandleKind::Buffer);
            live.add(desc->c, HandleKind::Buffer);
            live.add(desc->bias, HandleKind::Buffer);
        }
        live.verify();
        auto* s = checked(stream, "stream");
        GemmCall call = gemm_call_from_desc(s, desc);
        s->device_impl->ops->gemm(*s, call.problem, std::move(call.keep));
    });
}

SW_API sw_status sw_gemm_grouped(int32_t count, const sw_stream* streams, const sw_gemm_desc* descs) {
    return guard(__func__, [&] {
        if (count < 1 || count > (1 << 20))
            fail(SW_ERR_INVALID_ARGUMENT, "count = ", count, "; expected 1..1048576 members");
        if (!streams) fail(SW_ERR_INVALID_ARGUMENT, "streams is NULL; expected count = ", count, " stream handles");
        if (!descs) fail(SW_ERR_INVALID_ARGUMENT, "descs is NULL; expected count = ", count, " sw_gemm_desc");
        // An array is indexed with this ABI's size: an older caller's smaller descs cannot be (sw_gemm_ex takes them).
        for (int32_t i = 0; i < count; ++i)
            if (descs[i].size != sizeof(sw_gemm_desc))
                fail(SW_ERR_INVALID_ARGUMENT, "descs[", i, "].size = ", descs[i].size,
                     "; expected sizeof(sw_gemm_desc) = ", sizeof(sw_gemm_desc), " (ABI version ", SW_ABI_VERSION,
                     "): sw_gemm_grouped takes an array of this ABI's descs");
        // On the stack for up to 16 members (core/small_array.h): a small group allocates nothing here.
        const auto n = static_cast<size_t>(count);
        SmallArray<sw_stream_s*, 16> ss(n);
        SmallArray<GemmProblem, 16> problems(n);
        SmallArray<KeepAlive, 16> keeps(n);
        // Every handle of the first members (LiveBatch::kMax of them) under one registry lock.
        LiveBatch live;
        for (int32_t i = 0; i < count && i < LiveBatch::kMax / 5; ++i) {
            live.add(streams[i], HandleKind::Stream);
            if (descs[i].size != sizeof(sw_gemm_desc)) continue; // refused below
            live.add(descs[i].a, HandleKind::Buffer);
            live.add(descs[i].b, HandleKind::Buffer);
            live.add(descs[i].c, HandleKind::Buffer);
            live.add(descs[i].bias, HandleKind::Buffer);
        }
        live.verify();
        for (int32_t i = 0; i < count; ++i) {
            ss[i] = streams[i];
            if (!ss[i] || !live_handle(ss[i], HandleKind::Stream))
                checked(streams[i], str("streams[", i, "]").c_str()); // the name is formatted only on failure
            if (ss[i]->device_impl != ss[0]->device_impl)
                fail(SW_ERR_INVALID_ARGUMENT, "streams[", i, "] is on another device than streams[0]; expected every ",
                     "member's stream on one device");
            try {
                GemmCall call = gemm_call_from_desc(ss[i], &descs[i]);
                problems[i] = call.problem;
                keeps[i] = std::move(call.keep);
            } catch (const Error& e) {
                fail(e.status(), "descs[", i, "]: ", e.message());
            }
        }
        check_grouped_outputs(problems.data(), count); // core/gemm_overlap.h
        ss[0]->device_impl->ops->gemm_grouped(ss.data(), problems.data(), keeps.data(), count);
    });
}

// ---------------------------------------------------------------- element-wise activations

namespace {
// Reads the raw dtype argument (core/enum_arg.h) and checks that the stream's backend computes it.
sw_dtype check_activation_dtype(const sw_stream_s* s, const sw_dtype& dtype_in) {
    const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
    s->device_impl->ops->check_activation_type(dtype);
    return dtype;
}
} // namespace

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
        s->device_impl->ops->gelu(*s, dtype, px, py, count, {{bx->storage, by->storage}});
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
        s->device_impl->ops->gelu_backward(*s, dtype, px, pdy, pdx, count, {{bx->storage, bdy->storage, bdx->storage}});
    });
}

// ---------------------------------------------------------------- mixed-precision training (element-wise)
// sw_convert, sw_unscale_check, sw_axpy: the checks every backend shares (handles, devices, dtype values, spans,
// overlaps, scalars); the backend checks which dtypes it computes (check_training_type) and queues the work.

SW_API sw_status sw_convert(sw_stream stream, sw_dtype src_type_in, sw_buffer src, uint64_t src_offset,
                            sw_dtype dst_type_in, sw_buffer dst, uint64_t dst_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype src_type = dtype_arg(src_type_in, "src_type");
        const sw_dtype dst_type = dtype_arg(dst_type_in, "dst_type");
        s->device_impl->ops->check_training_type(src_type, "src_type", "sw_convert");
        s->device_impl->ops->check_training_type(dst_type, "dst_type", "sw_convert");
        auto* bs = checked(src, "src");
        auto* bd = checked(dst, "dst");
        require_same_device(bs, s, "src");
        require_same_device(bd, s, "dst");
        const size_t ss = sw_dtype_size(src_type), ds = sw_dtype_size(dst_type);
        char* ps = buffer_span(bs, src_offset, count, ss, "src");
        char* pd = buffer_span(bd, dst_offset, count, ds, "dst");
        if (count == 0) return;
        if (ps == pd && src_type == dst_type) return; // the same range: nothing to convert
        if (ranges_overlap(ps, count * ss, pd, count * ds))
            fail(SW_ERR_INVALID_ARGUMENT, "src (offset ", src_offset, ", ", count, " x ", dtype_name(src_type),
                 ") and dst (offset ", dst_offset, ", ", count, " x ", dtype_name(dst_type),
                 ") overlap; expected separate ranges, or the same range with src_type == dst_type");
        s->device_impl->ops->convert(*s, src_type, ps, dst_type, pd, count, {{bs->storage, bd->storage}});
    });
}

SW_API sw_status sw_unscale_check(sw_stream stream, sw_dtype dtype_in, sw_buffer buf, uint64_t offset, uint64_t count,
                                  float scale, sw_buffer flag, uint64_t flag_offset) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
        s->device_impl->ops->check_training_type(dtype, "dtype", "sw_unscale_check");
        auto* bb = checked(buf, "buf");
        auto* bf = checked(flag, "flag");
        require_same_device(bb, s, "buf");
        require_same_device(bf, s, "flag");
        if (!(scale > 0.0f) || !std::isfinite(scale))
            fail(SW_ERR_INVALID_ARGUMENT, "scale = ", scale, "; expected a finite loss scale > 0");
        const size_t es = sw_dtype_size(dtype);
        char* pb = buffer_span(bb, offset, count, es, "buf");
        char* pf = buffer_span(bf, flag_offset, 1, sizeof(float), "flag");
        if (ranges_overlap(pb, count * es, pf, sizeof(float)))
            fail(SW_ERR_INVALID_ARGUMENT, "flag (offset ", flag_offset, ") lies inside the checked range of buf (offset ",
                 offset, ", ", count, " x ", dtype_name(dtype), "); expected a separate fp32 element");
        if (count == 0) return;
        s->device_impl->ops->unscale_check(*s, dtype, pb, count, 1.0f / scale, reinterpret_cast<float*>(pf),
                                           {{bb->storage, bf->storage}});
    });
}

SW_API sw_status sw_axpy(sw_stream stream, sw_dtype x_type_in, float alpha, sw_buffer x, uint64_t x_offset, sw_buffer y,
                         uint64_t y_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype x_type = dtype_arg(x_type_in, "x_type");
        s->device_impl->ops->check_training_type(x_type, "x_type", "sw_axpy");
        auto* bx = checked(x, "x");
        auto* by = checked(y, "y");
        require_same_device(bx, s, "x");
        require_same_device(by, s, "y");
        if (!std::isfinite(alpha)) fail(SW_ERR_INVALID_ARGUMENT, "alpha = ", alpha, "; expected a finite value");
        const size_t xs = sw_dtype_size(x_type);
        char* px = buffer_span(bx, x_offset, count, xs, "x");
        char* py = buffer_span(by, y_offset, count, sizeof(float), "y");
        if (count == 0) return;
        if (!(px == py && x_type == SW_DTYPE_F32) && ranges_overlap(px, count * xs, py, count * sizeof(float)))
            fail(SW_ERR_INVALID_ARGUMENT, "x (offset ", x_offset, ", ", count, " x ", dtype_name(x_type), ") and y (offset ",
                 y_offset, ", ", count, " x f32) overlap; expected separate ranges, or the same f32 range");
        s->device_impl->ops->axpy(*s, x_type, alpha, px, reinterpret_cast<float*>(py), count,
                                  {{bx->storage, by->storage}});
    });
}

} // extern "C"

// ---------------------------------------------------------------- attention and normalization (core/row_ops.h)
// sw_softmax, sw_softmax_backward, sw_norm, sw_norm_backward: every check here (handles, devices, dtype, shapes, spans,
// overlaps, scalars), fp32 on every backend; the backend queues the validated description.

namespace {

void require_f32_rows(const sw_dtype& dtype_in) {
    const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
    if (dtype != SW_DTYPE_F32)
        fail(SW_ERR_UNSUPPORTED, "dtype = ", dtype_name(dtype), "; the attention and normalization kernels take f32 ",
             "(SW_DTYPE_F32) on every backend");
}

// Checks rows >= 0, cols >= 1, ld >= cols and that rows x cols with leading dimension ld fit in `buf` from `offset`;
// returns the first element (bytes: the extent) — rows == 0 still checks the offset.
float* rows_span(sw_buffer_s* buf, uint64_t offset, int64_t rows, int64_t cols, int64_t ld, const char* name,
                 uint64_t* bytes) {
    const uint64_t extent = rows == 0 ? 0 : static_cast<uint64_t>(rows - 1) * static_cast<uint64_t>(ld) + static_cast<uint64_t>(cols);
    if (rows > 0 && static_cast<uint64_t>(rows - 1) > (~uint64_t{0} - static_cast<uint64_t>(cols)) / static_cast<uint64_t>(ld))
        fail(SW_ERR_INVALID_ARGUMENT, name, ": rows = ", rows, " with ld = ", ld, " overflows 64 bits");
    *bytes = extent * sizeof(float);
    return reinterpret_cast<float*>(buffer_span(buf, offset, extent, sizeof(float), name));
}

void check_rows_shape(int64_t rows, int64_t cols, int64_t ld) {
    if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
    if (cols < 1) fail(SW_ERR_INVALID_ARGUMENT, "cols = ", cols, "; expected >= 1");
    if (ld < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld = ", ld, "; expected >= cols (", cols, ")");
}

void require_apart(const float* a, uint64_t a_bytes, const char* a_name, const float* b, uint64_t b_bytes,
                   const char* b_name, const char* or_else = nullptr) {
    if (ranges_overlap(reinterpret_cast<const char*>(a), a_bytes, reinterpret_cast<const char*>(b), b_bytes))
        fail(SW_ERR_INVALID_ARGUMENT, a_name, " and ", b_name, " overlap; expected separate ranges",
             or_else ? or_else : "");
}

// An optional vector of n fp32 elements: nullptr for a null handle.
float* optional_vector(sw_buffer buffer, uint64_t offset, int64_t n, sw_stream_s* s, const char* name,
                       std::shared_ptr<Storage>* keep) {
    if (!buffer) return nullptr;
    auto* b = checked(buffer, name);
    require_same_device(b, s, name);
    *keep = b->storage;
    return reinterpret_cast<float*>(buffer_span(b, offset, static_cast<uint64_t>(n), sizeof(float), name));
}

} // namespace

extern "C" {

SW_API sw_status sw_softmax(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer y, uint64_t y_offset,
                            int64_t rows, int64_t cols, int64_t ld, float scale, int64_t causal_period) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        auto* bx = checked(x, "x");
        auto* by = checked(y, "y");
        require_same_device(bx, s, "x");
        require_same_device(by, s, "y");
        check_rows_shape(rows, cols, ld);
        if (!std::isfinite(scale)) fail(SW_ERR_INVALID_ARGUMENT, "scale = ", scale, "; expected a finite value");
        if (causal_period < 0 || causal_period > cols)
            fail(SW_ERR_INVALID_ARGUMENT, "causal_period = ", causal_period, "; expected 0 (no mask) or 1..cols (", cols,
                 ": the number of queries, whose keys are the last causal_period of the cols)");
        uint64_t xb = 0, yb = 0;
        float* px = rows_span(bx, x_offset, rows, cols, ld, "x", &xb);
        float* py = rows_span(by, y_offset, rows, cols, ld, "y", &yb);
        if (px != py) require_apart(px, xb, "x", py, yb, "y", ", or y = x (the same offset: in place)");
        if (rows == 0) return;
        s->device_impl->ops->softmax(*s, SoftmaxRows{px, py, rows, cols, ld, scale, causal_period},
                                     {{bx->storage, by->storage}});
    });
}

SW_API sw_status sw_softmax_backward(sw_stream stream, sw_dtype dtype, sw_buffer y, uint64_t y_offset, sw_buffer dy,
                                     uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, int64_t rows, int64_t cols,
                                     int64_t ld, float scale) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        auto* by = checked(y, "y");
        auto* bdy = checked(dy, "dy");
        auto* bdx = checked(dx, "dx");
        require_same_device(by, s, "y");
        require_same_device(bdy, s, "dy");
        require_same_device(bdx, s, "dx");
        check_rows_shape(rows, cols, ld);
        if (!std::isfinite(scale)) fail(SW_ERR_INVALID_ARGUMENT, "scale = ", scale, "; expected a finite value");
        uint64_t yb = 0, dyb = 0, dxb = 0;
        float* py = rows_span(by, y_offset, rows, cols, ld, "y", &yb);
        float* pdy = rows_span(bdy, dy_offset, rows, cols, ld, "dy", &dyb);
        float* pdx = rows_span(bdx, dx_offset, rows, cols, ld, "dx", &dxb);
        require_apart(py, yb, "y", pdx, dxb, "dx");
        if (pdx != pdy) require_apart(pdy, dyb, "dy", pdx, dxb, "dx", ", or dx = dy (the same offset: in place)");
        if (rows == 0) return;
        s->device_impl->ops->softmax_backward(*s, SoftmaxBackwardRows{py, pdy, pdx, rows, cols, ld, scale},
                                              {{by->storage, bdy->storage, bdx->storage}});
    });
}

SW_API sw_status sw_norm(sw_stream stream, sw_norm_kind kind_in, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer gamma,
                         uint64_t gamma_offset, sw_buffer beta, uint64_t beta_offset, sw_buffer y, uint64_t y_offset,
                         sw_buffer stats, uint64_t stats_offset, int64_t rows, int64_t cols, float eps) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_norm_kind kind = norm_kind_arg(kind_in, "kind");
        require_f32_rows(dtype);
        auto* bx = checked(x, "x");
        auto* by = checked(y, "y");
        require_same_device(bx, s, "x");
        require_same_device(by, s, "y");
        check_rows_shape(rows, cols, cols);
        if (!(eps > 0.0f) || !std::isfinite(eps)) fail(SW_ERR_INVALID_ARGUMENT, "eps = ", eps, "; expected a finite value > 0");
        if (kind == SW_NORM_RMS && beta)
            fail(SW_ERR_INVALID_ARGUMENT, "beta: RMSNorm (SW_NORM_RMS) has no shift; expected NULL");
        KeepAlive keep{{bx->storage, by->storage}};
        uint64_t xb = 0, yb = 0;
        float* px = rows_span(bx, x_offset, rows, cols, cols, "x", &xb);
        float* py = rows_span(by, y_offset, rows, cols, cols, "y", &yb);
        float* pg = optional_vector(gamma, gamma_offset, cols, s, "gamma", &keep.s[2]);
        float* pb = optional_vector(beta, beta_offset, cols, s, "beta", &keep.s[3]);
        float* pst = optional_vector(stats, stats_offset, 2 * rows, s, "stats", &keep.s[4]);
        const uint64_t vb = static_cast<uint64_t>(cols) * sizeof(float);
        if (px != py) require_apart(px, xb, "x", py, yb, "y", ", or y = x (the same offset: in place)");
        if (pg) require_apart(pg, vb, "gamma", py, yb, "y");
        if (pb) require_apart(pb, vb, "beta", py, yb, "y");
        if (pst) {
            const uint64_t sb = static_cast<uint64_t>(2 * rows) * sizeof(float);
            require_apart(pst, sb, "stats", py, yb, "y");
            require_apart(pst, sb, "stats", px, xb, "x");
            if (pg) require_apart(pst, sb, "stats", pg, vb, "gamma");
            if (pb) require_apart(pst, sb, "stats", pb, vb, "beta");
        }
        if (rows == 0) return;
        s->device_impl->ops->norm(*s, NormRows{kind, px, pg, pb, py, pst, rows, cols, eps}, std::move(keep));
    });
}

SW_API sw_status sw_norm_backward(sw_stream stream, sw_norm_kind kind_in, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                  sw_buffer gamma, uint64_t gamma_offset, sw_buffer stats, uint64_t stats_offset,
                                  sw_buffer dy, uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, sw_buffer dgamma,
                                  uint64_t dgamma_offset, sw_buffer dbeta, uint64_t dbeta_offset, int64_t rows,
                                  int64_t cols, int32_t accumulate) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_norm_kind kind = norm_kind_arg(kind_in, "kind");
        require_f32_rows(dtype);
        auto* bx = checked(x, "x");
        auto* bst = checked(stats, "stats");
        auto* bdy = checked(dy, "dy");
        auto* bdx = checked(dx, "dx");
        require_same_device(bx, s, "x");
        require_same_device(bst, s, "stats");
        require_same_device(bdy, s, "dy");
        require_same_device(bdx, s, "dx");
        check_rows_shape(rows, cols, cols);
        if (kind == SW_NORM_RMS && dbeta)
            fail(SW_ERR_INVALID_ARGUMENT, "dbeta: RMSNorm (SW_NORM_RMS) has no shift; expected NULL");
        KeepAlive keep{{bx->storage, bst->storage, bdy->storage, bdx->storage}};
        uint64_t xb = 0, dyb = 0, dxb = 0, sb = 0;
        float* px = rows_span(bx, x_offset, rows, cols, cols, "x", &xb);
        float* pdy = rows_span(bdy, dy_offset, rows, cols, cols, "dy", &dyb);
        float* pdx = rows_span(bdx, dx_offset, rows, cols, cols, "dx", &dxb);
        float* pst = rows_span(bst, stats_offset, rows, 2, 2, "stats", &sb);
        float* pg = optional_vector(gamma, gamma_offset, cols, s, "gamma", &keep.s[4]);
        float* pdg = optional_vector(dgamma, dgamma_offset, cols, s, "dgamma", &keep.s[5]);
        float* pdb = optional_vector(dbeta, dbeta_offset, cols, s, "dbeta", &keep.s[6]);
        const uint64_t vb = static_cast<uint64_t>(cols) * sizeof(float);
        require_apart(px, xb, "x", pdx, dxb, "dx");
        require_apart(pst, sb, "stats", pdx, dxb, "dx");
        if (pdx != pdy) require_apart(pdy, dyb, "dy", pdx, dxb, "dx", ", or dx = dy (the same offset: in place)");
        if (pg) require_apart(pg, vb, "gamma", pdx, dxb, "dx");
        const struct { const float* p; uint64_t b; const char* name; } inputs[] = {
            {px, xb, "x"}, {pst, sb, "stats"}, {pdy, dyb, "dy"}, {pdx, dxb, "dx"}, {pg, pg ? vb : 0, "gamma"}};
        for (float* pgrad : {pdg, pdb}) {
            if (!pgrad) continue;
            const char* gname = pgrad == pdg ? "dgamma" : "dbeta";
            for (const auto& in : inputs) require_apart(in.p, in.b, in.name, pgrad, vb, gname);
        }
        if (pdg && pdb) require_apart(pdg, vb, "dgamma", pdb, vb, "dbeta");
        if (rows == 0) return;
        s->device_impl->ops->norm_backward(
            *s, NormBackwardRows{kind, px, pg, pst, pdy, pdx, pdg, pdb, rows, cols, accumulate != 0}, std::move(keep));
    });
}

} // extern "C"

// ---------------------------------------------------------------- activations, gated units, dropout, embedding and
// cross-entropy (core/row_ops.h): the same checks for every backend; fp32 values, int32 token ids.

namespace {

float* f32_span(sw_buffer_s* b, uint64_t offset, uint64_t count, const char* name) {
    return reinterpret_cast<float*>(buffer_span(b, offset, count, sizeof(float), name));
}

const int32_t* ids_span(sw_buffer ids, uint64_t offset, int64_t rows, sw_stream_s* s, KeepAlive& keep, int slot) {
    auto* b = checked(ids, "ids");
    require_same_device(b, s, "ids");
    keep.s[slot] = b->storage;
    return reinterpret_cast<const int32_t*>(buffer_span(b, offset, static_cast<uint64_t>(rows), sizeof(int32_t), "ids"));
}

// A buffer argument on the stream's device, kept alive by the queued work.
sw_buffer_s* on_stream(sw_buffer buffer, sw_stream_s* s, const char* name, KeepAlive& keep, int slot) {
    auto* b = checked(buffer, name);
    require_same_device(b, s, name);
    keep.s[slot] = b->storage;
    return b;
}

void require_positive(int64_t v, const char* name) {
    if (v < 1) fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v, "; expected >= 1");
}

// The sizes of sw_embedding and its backward: a shard of shard_rows vocabulary rows from vocab_offset, rows tokens.
void check_vocab_shard(int64_t shard_rows, int64_t rows, int64_t cols, int64_t vocab_offset) {
    if (shard_rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "shard_rows = ", shard_rows, "; expected >= 0");
    if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
    require_positive(cols, "cols");
    if (vocab_offset < 0) fail(SW_ERR_INVALID_ARGUMENT, "vocab_offset = ", vocab_offset, "; expected >= 0");
}

// rows * cols elements, checked not to overflow.
uint64_t elements(int64_t rows, int64_t cols, const char* what) {
    if (rows < 0 || cols < 0) fail(SW_ERR_INVALID_ARGUMENT, what, ": negative size ", rows, " x ", cols);
    if (cols != 0 && static_cast<uint64_t>(rows) > ~uint64_t{0} / 8 / static_cast<uint64_t>(cols))
        fail(SW_ERR_INVALID_ARGUMENT, what, ": ", rows, " x ", cols, " elements overflow 64 bits");
    return static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols);
}

} // namespace

extern "C" {

SW_API sw_status sw_activation_forward(sw_stream stream, sw_activation act_in, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                       sw_buffer y, uint64_t y_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_activation act = activation_arg(act_in, "act");
        require_f32_rows(dtype);
        KeepAlive keep;
        float* px = f32_span(on_stream(x, s, "x", keep, 0), x_offset, count, "x");
        float* py = f32_span(on_stream(y, s, "y", keep, 1), y_offset, count, "y");
        if (px != py) require_apart(px, count * 4, "x", py, count * 4, "y", ", or y = x (the same offset: in place)");
        if (count == 0) return;
        s->device_impl->ops->activation(*s, ActivationArgs{act, px, py, count}, std::move(keep));
    });
}

SW_API sw_status sw_activation_backward(sw_stream stream, sw_activation act_in, sw_dtype dtype, sw_buffer x, uint64_t x_offset,
                                        sw_buffer dy, uint64_t dy_offset, sw_buffer dx, uint64_t dx_offset, uint64_t count) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_activation act = activation_arg(act_in, "act");
        require_f32_rows(dtype);
        KeepAlive keep;
        float* px = f32_span(on_stream(x, s, "x", keep, 0), x_offset, count, "x");
        float* pdy = f32_span(on_stream(dy, s, "dy", keep, 1), dy_offset, count, "dy");
        float* pdx = f32_span(on_stream(dx, s, "dx", keep, 2), dx_offset, count, "dx");
        require_apart(px, count * 4, "x", pdx, count * 4, "dx");
        if (pdx != pdy) require_apart(pdy, count * 4, "dy", pdx, count * 4, "dx", ", or dx = dy (the same offset: in place)");
        if (count == 0) return;
        s->device_impl->ops->activation_backward(*s, ActivationBackwardArgs{act, px, pdy, pdx, count}, std::move(keep));
    });
}

SW_API sw_status sw_glu(sw_stream stream, sw_activation act_in, sw_dtype dtype, sw_buffer gu, uint64_t gu_offset, sw_buffer h,
                        uint64_t h_offset, int64_t rows, int64_t cols) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_activation act = activation_arg(act_in, "act");
        require_f32_rows(dtype);
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
        require_positive(cols, "cols");
        KeepAlive keep;
        const uint64_t n = elements(rows, cols, "h");
        float* pg = f32_span(on_stream(gu, s, "gu", keep, 0), gu_offset, 2 * n, "gu");
        float* ph = f32_span(on_stream(h, s, "h", keep, 1), h_offset, n, "h");
        require_apart(pg, 8 * n, "gu", ph, 4 * n, "h");
        if (rows == 0) return;
        s->device_impl->ops->glu(*s, GluArgs{act, pg, ph, rows, cols}, std::move(keep));
    });
}

SW_API sw_status sw_glu_backward(sw_stream stream, sw_activation act_in, sw_dtype dtype, sw_buffer gu, uint64_t gu_offset,
                                 sw_buffer dh, uint64_t dh_offset, sw_buffer dgu, uint64_t dgu_offset, int64_t rows,
                                 int64_t cols) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_activation act = activation_arg(act_in, "act");
        require_f32_rows(dtype);
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
        require_positive(cols, "cols");
        KeepAlive keep;
        const uint64_t n = elements(rows, cols, "dh");
        float* pg = f32_span(on_stream(gu, s, "gu", keep, 0), gu_offset, 2 * n, "gu");
        float* pdh = f32_span(on_stream(dh, s, "dh", keep, 1), dh_offset, n, "dh");
        float* pdg = f32_span(on_stream(dgu, s, "dgu", keep, 2), dgu_offset, 2 * n, "dgu");
        require_apart(pdh, 4 * n, "dh", pdg, 8 * n, "dgu");
        require_apart(pdh, 4 * n, "dh", pg, 8 * n, "gu");
        if (pdg != pg) require_apart(pg, 8 * n, "gu", pdg, 8 * n, "dgu", ", or dgu = gu (the same offset: in place)");
        if (rows == 0) return;
        s->device_impl->ops->glu_backward(*s, GluBackwardArgs{act, pg, pdh, pdg, rows, cols}, std::move(keep));
    });
}

SW_API sw_status sw_dropout(sw_stream stream, sw_dtype dtype, sw_buffer x, uint64_t x_offset, sw_buffer y, uint64_t y_offset,
                            uint64_t count, float p, uint64_t seed, uint64_t counter) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        if (!(p >= 0.0f && p < 1.0f)) fail(SW_ERR_INVALID_ARGUMENT, "p = ", p, "; expected a drop probability in [0, 1)");
        KeepAlive keep;
        float* px = f32_span(on_stream(x, s, "x", keep, 0), x_offset, count, "x");
        float* py = f32_span(on_stream(y, s, "y", keep, 1), y_offset, count, "y");
        if (px != py) require_apart(px, count * 4, "x", py, count * 4, "y", ", or y = x (the same offset: in place)");
        if (count == 0) return;
        const auto threshold = static_cast<uint32_t>(std::ceil(static_cast<double>(p) * 16777216.0));
        s->device_impl->ops->dropout(*s, DropoutArgs{px, py, count, threshold, 1.0f - p, seed, counter}, std::move(keep));
    });
}

SW_API sw_status sw_embedding(sw_stream stream, sw_dtype dtype, sw_buffer table, uint64_t table_offset, int64_t shard_rows,
                              sw_buffer ids, uint64_t ids_offset, int64_t vocab_offset, sw_buffer out, uint64_t out_offset,
                              int64_t rows, int64_t cols) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        check_vocab_shard(shard_rows, rows, cols, vocab_offset);
        KeepAlive keep;
        const uint64_t tn = elements(shard_rows, cols, "table"), on = elements(rows, cols, "out");
        float* pt = f32_span(on_stream(table, s, "table", keep, 0), table_offset, tn, "table");
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        float* po = f32_span(on_stream(out, s, "out", keep, 2), out_offset, on, "out");
        require_apart(pt, 4 * tn, "table", po, 4 * on, "out");
        require_apart(reinterpret_cast<const float*>(pi), 4 * static_cast<uint64_t>(rows), "ids", po, 4 * on, "out");
        if (rows == 0) return;
        s->device_impl->ops->embedding(*s, EmbeddingArgs{pt, shard_rows, pi, vocab_offset, po, rows, cols}, std::move(keep));
    });
}

SW_API sw_status sw_embedding_backward(sw_stream stream, sw_dtype dtype, sw_buffer dout, uint64_t dout_offset, sw_buffer ids,
                                       uint64_t ids_offset, int64_t vocab_offset, sw_buffer dtable, uint64_t dtable_offset,
                                       int64_t shard_rows, int64_t rows, int64_t cols, int32_t accumulate) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        check_vocab_shard(shard_rows, rows, cols, vocab_offset);
        KeepAlive keep;
        const uint64_t tn = elements(shard_rows, cols, "dtable"), dn = elements(rows, cols, "dout");
        float* pd = f32_span(on_stream(dout, s, "dout", keep, 0), dout_offset, dn, "dout");
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        float* pt = f32_span(on_stream(dtable, s, "dtable", keep, 2), dtable_offset, tn, "dtable");
        require_apart(pt, 4 * tn, "dtable", pd, 4 * dn, "dout");
        require_apart(pt, 4 * tn, "dtable", reinterpret_cast<const float*>(pi), 4 * static_cast<uint64_t>(rows), "ids");
        if (shard_rows == 0 || (rows == 0 && accumulate)) return;
        s->device_impl->ops->embedding_backward(
            *s, EmbeddingBackwardArgs{pd, pi, vocab_offset, pt, shard_rows, rows, cols, accumulate != 0}, std::move(keep));
    });
}

SW_API sw_status sw_cross_entropy_partial(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                          int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                          int64_t vocab_offset, sw_buffer stats, uint64_t stats_offset) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        check_rows_shape(rows, cols, ld);
        if (vocab_offset < 0) fail(SW_ERR_INVALID_ARGUMENT, "vocab_offset = ", vocab_offset, "; expected >= 0");
        KeepAlive keep;
        uint64_t lb = 0;
        float* pl = rows_span(on_stream(logits, s, "logits", keep, 0), logits_offset, rows, cols, ld, "logits", &lb);
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        const uint64_t sn = elements(rows, 3, "stats");
        float* ps = f32_span(on_stream(stats, s, "stats", keep, 2), stats_offset, sn, "stats");
        require_apart(pl, lb, "logits", ps, 4 * sn, "stats");
        require_apart(reinterpret_cast<const float*>(pi), 4 * static_cast<uint64_t>(rows), "ids", ps, 4 * sn, "stats");
        if (rows == 0) return;
        s->device_impl->ops->cross_entropy_partial(*s, CrossEntropyPartialArgs{pl, rows, cols, ld, pi, vocab_offset, ps},
                                                   std::move(keep));
    });
}

SW_API sw_status sw_cross_entropy_partial_tree(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                               int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                               int64_t vocab_offset, sw_buffer gathered, uint64_t gathered_offset,
                                               int32_t parts, int64_t leaf, int32_t include_max, sw_buffer out,
                                               uint64_t out_offset) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        // sw_cross_entropy_partial's shape checks, except that cols may be 0 (an empty shard, a tree node with no leaf).
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
        if (cols < 0) fail(SW_ERR_INVALID_ARGUMENT, "cols = ", cols, "; expected >= 0 (0: an empty shard)");
        if (ld < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld = ", ld, "; expected >= cols (", cols, ")");
        if (vocab_offset < 0) fail(SW_ERR_INVALID_ARGUMENT, "vocab_offset = ", vocab_offset, "; expected >= 0");
        require_positive(parts, "parts");
        require_positive(leaf, "leaf");
        if (include_max != 0 && include_max != 1)
            fail(SW_ERR_INVALID_ARGUMENT, "include_max = ", include_max, "; expected 0 or 1 (1 on one rank only)");
        KeepAlive keep;
        uint64_t lb = 0;
        auto* bl = on_stream(logits, s, "logits", keep, 0);
        float* pl = cols > 0 ? rows_span(bl, logits_offset, rows, cols, ld, "logits", &lb)
                             : f32_span(bl, logits_offset, 0, "logits"); // an empty shard: only the offset is checked
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        const uint64_t gn = elements(rows, 3 * static_cast<int64_t>(parts), "gathered");
        const float* pg = f32_span(on_stream(gathered, s, "gathered", keep, 2), gathered_offset, gn, "gathered");
        const uint64_t on = elements(rows, 3, "out");
        float* po = f32_span(on_stream(out, s, "out", keep, 3), out_offset, on, "out");
        require_apart(pl, lb, "logits", po, 4 * on, "out");
        require_apart(reinterpret_cast<const float*>(pi), 4 * static_cast<uint64_t>(rows), "ids", po, 4 * on, "out");
        require_apart(pg, 4 * gn, "gathered", po, 4 * on, "out");
        if (rows == 0) return;
        s->device_impl->ops->cross_entropy_partial_tree(
            *s, CrossEntropyPartialTreeArgs{cols > 0 ? pl : nullptr, rows, cols, ld, pi, vocab_offset, pg, parts, leaf,
                                            include_max != 0, po},
            std::move(keep));
    });
}

SW_API sw_status sw_cross_entropy_combine(sw_stream stream, sw_dtype dtype, sw_buffer stats, uint64_t stats_offset, int32_t parts,
                                          int64_t rows, sw_buffer ids, uint64_t ids_offset, int64_t vocab_size, sw_buffer lse,
                                          uint64_t lse_offset, sw_buffer loss, uint64_t loss_offset) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        require_positive(parts, "parts");
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected >= 0");
        require_positive(vocab_size, "vocab_size");
        KeepAlive keep;
        const uint64_t sn = elements(rows, 3 * static_cast<int64_t>(parts), "stats");
        const uint64_t n = static_cast<uint64_t>(rows);
        float* ps = f32_span(on_stream(stats, s, "stats", keep, 0), stats_offset, sn, "stats");
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        float* pe = f32_span(on_stream(lse, s, "lse", keep, 2), lse_offset, n, "lse");
        float* pl = f32_span(on_stream(loss, s, "loss", keep, 3), loss_offset, n, "loss");
        require_apart(pe, 4 * n, "lse", pl, 4 * n, "loss");
        for (float* out : {pe, pl}) {
            const char* name = out == pe ? "lse" : "loss";
            require_apart(ps, 4 * sn, "stats", out, 4 * n, name);
            require_apart(reinterpret_cast<const float*>(pi), 4 * n, "ids", out, 4 * n, name);
        }
        if (rows == 0) return;
        s->device_impl->ops->cross_entropy_combine(*s, CrossEntropyCombineArgs{ps, parts, rows, pi, vocab_size, pe, pl},
                                                   std::move(keep));
    });
}

SW_API sw_status sw_cross_entropy_backward(sw_stream stream, sw_dtype dtype, sw_buffer logits, uint64_t logits_offset,
                                           int64_t rows, int64_t cols, int64_t ld, sw_buffer ids, uint64_t ids_offset,
                                           int64_t vocab_offset, int64_t vocab_size, sw_buffer lse, uint64_t lse_offset,
                                           sw_buffer dloss, uint64_t dloss_offset, sw_buffer dlogits,
                                           uint64_t dlogits_offset) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        require_f32_rows(dtype);
        check_rows_shape(rows, cols, ld);
        if (vocab_offset < 0) fail(SW_ERR_INVALID_ARGUMENT, "vocab_offset = ", vocab_offset, "; expected >= 0");
        require_positive(vocab_size, "vocab_size");
        KeepAlive keep;
        uint64_t lb = 0, db = 0;
        const uint64_t n = static_cast<uint64_t>(rows);
        float* pz = rows_span(on_stream(logits, s, "logits", keep, 0), logits_offset, rows, cols, ld, "logits", &lb);
        const int32_t* pi = ids_span(ids, ids_offset, rows, s, keep, 1);
        float* pe = f32_span(on_stream(lse, s, "lse", keep, 2), lse_offset, n, "lse");
        float* pg = f32_span(on_stream(dloss, s, "dloss", keep, 3), dloss_offset, n, "dloss");
        float* pd = rows_span(on_stream(dlogits, s, "dlogits", keep, 4), dlogits_offset, rows, cols, ld, "dlogits", &db);
        if (pd != pz) require_apart(pz, lb, "logits", pd, db, "dlogits", ", or dlogits = logits (the same offset: in place)");
        require_apart(reinterpret_cast<const float*>(pi), 4 * n, "ids", pd, db, "dlogits");
        require_apart(pe, 4 * n, "lse", pd, db, "dlogits");
        require_apart(pg, 4 * n, "dloss", pd, db, "dlogits");
        if (rows == 0) return;
        s->device_impl->ops->cross_entropy_backward(
            *s, CrossEntropyBackwardArgs{pz, rows, cols, ld, pi, vocab_offset, vocab_size, pe, pg, pd}, std::move(keep));
    });
}

} // extern "C"

// ---------------------------------------------------------------- optimizers (core/row_ops.h)

namespace {

// F32, F16 or BF16 (the gradient types of the optimizers, the dtypes of sw_sum_squares and sw_scale).
sw_dtype float_type_arg(const sw_dtype& in, const char* name, const char* op) {
    const sw_dtype t = dtype_arg(in, name);
    if (t != SW_DTYPE_F32 && t != SW_DTYPE_F16 && t != SW_DTYPE_BF16)
        fail(SW_ERR_UNSUPPORTED, name, " = ", dtype_name(t), ": ", op, " takes f32, f16 or bf16");
    return t;
}

void require_finite_in(float v, float lo, float hi, bool hi_open, const char* name) {
    if (!std::isfinite(v) || v < lo || (hi_open ? v >= hi : v > hi))
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v, "; expected a finite value in [", lo, ", ", hi, hi_open ? ")" : "]");
}

// A span of `count` elements of `es` bytes on the stream's device, kept alive by the queued work.
char* span_on(sw_buffer b, uint64_t offset, uint64_t count, size_t es, sw_stream_s* s, const char* name, KeepAlive& keep, int slot) {
    auto* buf = on_stream(b, s, name, keep, slot);
    return buffer_span(buf, offset, count, es, name);
}

void require_apart_bytes(const char* a, uint64_t ab, const char* an, const char* b, uint64_t bb, const char* bn) {
    if (ranges_overlap(a, ab, b, bb)) fail(SW_ERR_INVALID_ARGUMENT, an, " and ", bn, " overlap; expected separate ranges");
}

} // namespace

extern "C" {

SW_API sw_status sw_sgd_step(sw_stream stream, sw_dtype grad_type_in, sw_buffer param, uint64_t param_offset, sw_buffer grad,
                             uint64_t grad_offset, sw_buffer momentum_buf, uint64_t momentum_offset, uint64_t count,
                             float lr, float momentum, float weight_decay, int32_t nesterov) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype gt = float_type_arg(grad_type_in, "grad_type", "sw_sgd_step");
        require_finite_in(lr, 0.0f, 3.4e38f, false, "lr");
        require_finite_in(momentum, 0.0f, 1.0f, true, "momentum");
        require_finite_in(weight_decay, 0.0f, 3.4e38f, false, "weight_decay");
        if (!momentum_buf && (momentum != 0.0f || nesterov))
            fail(SW_ERR_INVALID_ARGUMENT, "momentum_buf is NULL but momentum = ", momentum, nesterov ? " (nesterov)" : "",
                 "; expected a momentum buffer, or momentum 0 without nesterov");
        KeepAlive keep;
        const size_t gs = sw_dtype_size(gt);
        char* pp = span_on(param, param_offset, count, 4, s, "param", keep, 0);
        char* pg = span_on(grad, grad_offset, count, gs, s, "grad", keep, 1);
        char* pm = momentum_buf ? span_on(momentum_buf, momentum_offset, count, 4, s, "momentum_buf", keep, 2) : nullptr;
        require_apart_bytes(pp, 4 * count, "param", pg, gs * count, "grad");
        if (pm) {
            require_apart_bytes(pm, 4 * count, "momentum_buf", pp, 4 * count, "param");
            require_apart_bytes(pm, 4 * count, "momentum_buf", pg, gs * count, "grad");
        }
        if (count == 0) return;
        s->device_impl->ops->sgd_step(*s, SgdArgs{gt, reinterpret_cast<float*>(pp), pg, reinterpret_cast<float*>(pm), count, lr,
                                                  momentum, weight_decay, nesterov != 0},
                                      std::move(keep));
    });
}

SW_API sw_status sw_adamw_step(sw_stream stream, sw_dtype grad_type_in, sw_buffer param, uint64_t param_offset, sw_buffer grad,
                               uint64_t grad_offset, sw_buffer m, uint64_t m_offset, sw_buffer v, uint64_t v_offset,
                               uint64_t count, float lr, float beta1, float beta2, float eps, float weight_decay,
                               int64_t step) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype gt = float_type_arg(grad_type_in, "grad_type", "sw_adamw_step");
        require_finite_in(lr, 0.0f, 3.4e38f, false, "lr");
        require_finite_in(beta1, 0.0f, 1.0f, true, "beta1");
        require_finite_in(beta2, 0.0f, 1.0f, true, "beta2");
        if (!(eps > 0.0f) || !std::isfinite(eps)) fail(SW_ERR_INVALID_ARGUMENT, "eps = ", eps, "; expected a finite value > 0");
        require_finite_in(weight_decay, 0.0f, 3.4e38f, false, "weight_decay");
        if (step < 1) fail(SW_ERR_INVALID_ARGUMENT, "step = ", step, "; expected the step being taken, >= 1");
        KeepAlive keep;
        const size_t gs = sw_dtype_size(gt);
        char* pp = span_on(param, param_offset, count, 4, s, "param", keep, 0);
        char* pg = span_on(grad, grad_offset, count, gs, s, "grad", keep, 1);
        char* pm = span_on(m, m_offset, count, 4, s, "m", keep, 2);
        char* pv = span_on(v, v_offset, count, 4, s, "v", keep, 3);
        const struct { const char* p; uint64_t b; const char* n; } all[] = {
            {pp, 4 * count, "param"}, {pg, gs * count, "grad"}, {pm, 4 * count, "m"}, {pv, 4 * count, "v"}};
        for (int i = 0; i < 4; ++i)
            for (int j = i + 1; j < 4; ++j) require_apart_bytes(all[i].p, all[i].b, all[i].n, all[j].p, all[j].b, all[j].n);
        if (count == 0) return;
        const auto bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
        const auto bias2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
        if (!(bias1 > 0.0f) || !(bias2 > 0.0f))
            fail(SW_ERR_INVALID_ARGUMENT, "beta1 = ", beta1, ", beta2 = ", beta2, ", step = ", step,
                 ": a bias correction 1 - beta^step rounds to 0 in fp32; expected betas below 1");
        s->device_impl->ops->adamw_step(*s, AdamWArgs{gt, reinterpret_cast<float*>(pp), pg, reinterpret_cast<float*>(pm),
                                                      reinterpret_cast<float*>(pv), count, lr, beta1, beta2, eps,
                                                      weight_decay, bias1, bias2},
                                        std::move(keep));
    });
}

SW_API sw_status sw_sum_squares(sw_stream stream, sw_dtype dtype_in, sw_buffer x, uint64_t x_offset, uint64_t count,
                                sw_buffer out, uint64_t out_offset, int32_t accumulate) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype t = float_type_arg(dtype_in, "dtype", "sw_sum_squares");
        KeepAlive keep;
        const size_t es = sw_dtype_size(t);
        char* px = span_on(x, x_offset, count, es, s, "x", keep, 0);
        char* po = span_on(out, out_offset, 1, sizeof(double), s, "out", keep, 1);
        require_apart_bytes(px, es * count, "x", po, sizeof(double), "out");
        if (count == 0 && accumulate) return;
        s->device_impl->ops->sum_squares(*s, SumSquaresArgs{t, px, count, reinterpret_cast<double*>(po), accumulate != 0},
                                         std::move(keep));
    });
}

SW_API sw_status sw_scale(sw_stream stream, sw_dtype dtype_in, sw_buffer x, uint64_t x_offset, uint64_t count, float alpha) {
    return guard(__func__, [&] {
        auto* s = checked(stream, "stream");
        const sw_dtype t = float_type_arg(dtype_in, "dtype", "sw_scale");
        if (!std::isfinite(alpha)) fail(SW_ERR_INVALID_ARGUMENT, "alpha = ", alpha, "; expected a finite value");
        KeepAlive keep;
        char* px = span_on(x, x_offset, count, sw_dtype_size(t), s, "x", keep, 0);
        if (count == 0) return;
        s->device_impl->ops->scale(*s, ScaleArgs{t, px, count, alpha}, std::move(keep));
    });
}

} // extern "C"
