#include "core/objects.h"

#include "core/enum_arg.h"

#include <cstdlib>
#include <cstring>
#include <unordered_map>

namespace sw {
namespace {
std::mutex g_registry_mu;
std::unordered_map<const void*, HandleKind>& registry() {
    static auto* map = new std::unordered_map<const void*, HandleKind>(); // never destroyed: safe at exit
    return *map;
}
} // namespace

void register_handle(const void* h, HandleKind kind) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    registry()[h] = kind;
}

void unregister_handle(const void* h) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    registry().erase(h);
}

bool is_live_handle(const void* h, HandleKind kind) {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    auto it = registry().find(h);
    return it != registry().end() && it->second == kind;
}

namespace {
thread_local const LiveBatch* t_live_batch = nullptr;
} // namespace

void LiveBatch::verify() {
    {
        std::lock_guard<std::mutex> lock(g_registry_mu);
        int kept = 0;
        for (int i = 0; i < n_; ++i) {
            auto it = registry().find(h_[i]);
            if (it != registry().end() && it->second == k_[i]) {
                h_[kept] = h_[i];
                k_[kept] = k_[i];
                ++kept;
            }
        }
        n_ = kept;
    }
    if (!installed_) {
        prev_ = t_live_batch;
        t_live_batch = this;
        installed_ = true;
    }
}

LiveBatch::~LiveBatch() {
    if (installed_) t_live_batch = prev_;
}

bool LiveBatch::contains(const void* h, HandleKind kind) {
    for (const LiveBatch* b = t_live_batch; b; b = b->prev_)
        for (int i = 0; i < b->n_; ++i)
            if (b->h_[i] == h && b->k_[i] == kind) return true;
    return false;
}

const char* handle_kind_name(HandleKind kind) {
    switch (kind) {
    case HandleKind::Device: return "sw_device";
    case HandleKind::Buffer: return "sw_buffer";
    case HandleKind::Stream: return "sw_stream";
    case HandleKind::Event: return "sw_event";
    case HandleKind::Comm: return "sw_comm";
    case HandleKind::Store: return "sw_store";
    }
    return "handle";
}

Storage::~Storage() {
    if (owned && ptr && ops) ops->free_storage(*this);
}

void DeviceImpl::drain_deferred_frees(bool force) {
    if (!cuda || !deferred) return;
    std::vector<void*> pointers, host_pointers;
    bool gated = false;
    {
        std::lock_guard<std::mutex> lock(deferred->mu);
        if (deferred->pointers.empty() && deferred->host_pointers.empty()) return;
        if (!force) {
            if (deferred->pending_flags > 0) return; // later: a free now could deadlock (DeferredFrees)
            ++deferred->freeing;
            gated = true;
        }
        pointers.swap(deferred->pointers);
        host_pointers.swap(deferred->host_pointers);
    }
    std::string err;
    for (void* p : pointers) cuda->free_device(ordinal, p, &err);
    for (void* p : host_pointers) cuda->free_host(p, &err);
    if (gated) deferred->end_free();
}

bool DeferredFrees::free_now_or_defer(DeferredFrees* gate, void* ptr, bool host) noexcept {
    if (!gate) return true;
    if (!cpu::on_stream_worker() && gate->begin_free()) return true;
    try {
        std::lock_guard<std::mutex> lock(gate->mu);
        (host ? gate->host_pointers : gate->pointers).push_back(ptr);
    } catch (...) { // no memory for the list: the block leaks rather than risk a deadlock
    }
    return false;
}

void DeviceImpl::free_cuda_memory(void* ptr, bool host) noexcept {
    if (!ptr || !cuda) return;
    if (!DeferredFrees::free_now_or_defer(deferred.get(), ptr, host)) return;
    std::string err;
    if (host) cuda->free_host(ptr, &err);
    else cuda->free_device(ordinal, ptr, &err);
    if (deferred) deferred->end_free();
}

char* buffer_span(sw_buffer_s* buf, uint64_t offset, uint64_t count, size_t elem_size, const char* name) {
    const uint64_t capacity = buf->storage->bytes / elem_size;
    if (count == ~uint64_t{0})
        fail(SW_ERR_INVALID_ARGUMENT, name, ": the extent overflows 64 bits (a leading dimension or size is far too large)");
    if (offset > capacity || count > capacity - offset)
        fail(SW_ERR_INVALID_ARGUMENT, name, ": elements [", offset, ", ", offset + count,
             ") do not fit in the buffer of ", buf->storage->bytes, " bytes (", capacity, " elements of ",
             elem_size, " bytes)");
    return static_cast<char*>(buf->storage->ptr) + offset * elem_size;
}

void require_same_device(sw_buffer_s* buf, sw_stream_s* stream, const char* buf_name) {
    if (buf->device_impl != stream->device_impl)
        fail(SW_ERR_INVALID_ARGUMENT, buf_name, " belongs to device '", buf->device_impl->name,
             "' but the stream runs on device '", stream->device_impl->name,
             "'; expected a buffer of the stream's device");
}

void fail_event_stream_mismatch(const sw_event_s& e, const sw_stream_s& s) {
    fail(SW_ERR_INVALID_ARGUMENT, "event belongs to '", e.device_impl->name, "' but stream runs on '",
         s.device_impl->name, "'; expected the same CUDA device");
}

void fail_event_pair_mismatch() {
    fail(SW_ERR_INVALID_ARGUMENT, "start and end must be events of the same device");
}

void copy_name(char* dst, size_t cap, const std::string& src) {
    if (!dst || !cap) return;
    const size_t n = src.size() < cap - 1 ? src.size() : cap - 1;
    std::memcpy(dst, src.data(), n);
    dst[n] = '\0';
}

size_t dtype_size_checked(const sw_dtype& dtype, const char* name) {
    return sw_dtype_size(dtype_arg(dtype, name));
}

} // namespace sw
