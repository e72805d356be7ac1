// The objects behind the opaque handles of shardwise.h, and the registry that validates handles.
//
// Lifetime rule: queued work holds shared_ptrs to what it touches (device threads, buffer storage,
// communicator state), so destroying a handle while work is queued never frees memory under that work.
#pragma once
#include "shardwise.h"

#include "core/backend.h"
#include "core/cuda_plugin_api.h"
#include "core/error.h"
#include "cpu/stream.h"
#include "cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace sw {

enum class HandleKind : uint8_t { Device = 1, Buffer, Stream, Event, Comm, Store };

// Every live handle is registered; a handle that is not (never created, destroyed, or of another kind)
// is rejected with a clear message instead of being dereferenced.
void register_handle(const void* h, HandleKind kind);
void unregister_handle(const void* h);
bool is_live_handle(const void* h, HandleKind kind);
const char* handle_kind_name(HandleKind kind);

// Handles found live together, under one lock of the registry, for the rest of one C ABI call on this thread:
// checked() looks here before it locks the registry, so a call that takes many handles (sw_gemm_grouped: a stream and
// four buffers per member) locks it once instead of once per handle. Only a shortcut: a handle not listed, or not
// live, takes checked()'s usual path and message. (A handle destroyed by another thread meanwhile is the caller's
// race, as it is between any check and the use that follows.)
class LiveBatch {
public:
    static constexpr int kMax = 96;
    LiveBatch() = default;
    LiveBatch(const LiveBatch&) = delete;
    LiveBatch& operator=(const LiveBatch&) = delete;
    ~LiveBatch();
    void add(const void* h, HandleKind kind) {
        if (h && n_ < kMax) {
            h_[n_] = h;
            k_[n_] = kind;
            ++n_;
        }
    }
    // Keeps the listed handles that are live (one registry lock) and makes the batch this thread's until destroyed.
    void verify();
    static bool contains(const void* h, HandleKind kind);

private:
    const void* h_[kMax];
    HandleKind k_[kMax];
    int n_ = 0;
    bool installed_ = false;
    const LiveBatch* prev_ = nullptr;
};

// Live: found in this thread's LiveBatch, else in the registry.
inline bool live_handle(const void* h, HandleKind kind) { return LiveBatch::contains(h, kind) || is_live_handle(h, kind); }

// When CUDA memory may be freed. cudaFree and cudaFreeHost wait for the whole device while holding the driver's locks,
// and a collective or point-to-point transfer ordered into a CUDA stream parks that stream on a wait-flag kernel until
// its host side has run. So a free while some flag of the device is pending deadlocks whenever the host side needs
// the freeing thread (its rank has yet to join: virtual ranks on one GPU, seen on an H200 as eight rank threads in
// cudaFree and one blocked in cuLaunchKernel) or a CUDA call the held locks block; and a stream worker must never wait
// for the device at all (a later flag on its own stream may wait for that very worker). Hence the gate: a flag counts
// as pending from order_arm to order_release; memory is freed only while none is pending, and arming waits while a
// free runs (the free then waits only for work that completes on its own); otherwise, and always on a stream worker,
// the memory is left here and freed later from an API caller's thread (allocation, stream synchronization, device
// destruction).
struct DeferredFrees {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<void*> pointers;      // device memory (free_device)
    std::vector<void*> host_pointers; // mapped pinned host memory (free_host)
    int64_t pending_flags = 0;        // armed, not yet released
    int freeing = 0;                  // frees running now (arming waits)

    void flag_armed() {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return freeing == 0; });
        ++pending_flags;
    }
    void flag_released() noexcept {
        std::lock_guard<std::mutex> lock(mu);
        --pending_flags;
        cv.notify_all();
    }
    // True when no flag is pending: the caller may free, and must call end_free() after.
    bool begin_free() {
        std::lock_guard<std::mutex> lock(mu);
        if (pending_flags > 0) return false;
        ++freeing;
        return true;
    }
    void end_free() noexcept {
        std::lock_guard<std::mutex> lock(mu);
        --freeing;
        cv.notify_all();
    }
    // True: free `ptr` now, then call gate->end_free() (when gate is not null). False: it was left in the gate's
    // lists (a stream worker, or a flag pending).
    static bool free_now_or_defer(DeferredFrees* gate, void* ptr, bool host) noexcept;
};

struct DeviceImpl {
    sw_backend backend = SW_BACKEND_CPU;
    Backend* ops = nullptr; // the backend's operations (core/backend.h); every export dispatches through it
    int32_t ordinal = 0;
    int32_t num_threads = 1;
    std::string name;
    std::unique_ptr<cpu::ThreadPool> pool;  // CPU: the compute threads
    const cuda::PluginApi* cuda = nullptr;  // CUDA: the loaded backend plugin (the CUDA backend's table; comm/ uses
                                            // it directly until it goes through `ops` too)
    // CPU: a cpu::Kernel; CUDA: a cuda::GemmAlgo.
    std::atomic<int> kernel{0};
    // The k reduction of GEMMs enqueued from now on (sw_device_set_gemm_reduction): 0 = default order, > 0 = tree leaf.
    std::atomic<int64_t> gemm_leaf{0};
    std::atomic<int64_t> children{0}; // buffers, streams, events, communicator memberships
    std::shared_ptr<DeferredFrees> deferred = std::make_shared<DeferredFrees>(); // CUDA
    // CUDA: how many sw_streams wrap each external cudaStream_t; the plugin's resources for one are released
    // (release_stream) when the last wrapper goes.
    std::mutex wrapped_mutex;
    std::map<void*, int64_t> wrapped_streams;

    bool is_cuda() const { return backend == SW_BACKEND_CUDA; }
    // Frees the CUDA memory left in `deferred` when no flag of the device is pending. Call from an API caller's thread,
    // never from a worker. force: also with flags pending (device destruction: no stream of it is left).
    void drain_deferred_frees(bool force = false);
    // Frees device memory (host = false) or mapped pinned host memory (host = true) now when the gate allows it (see
    // DeferredFrees), else leaves it in `deferred`. Errors are dropped (destructors call this).
    void free_cuda_memory(void* ptr, bool host) noexcept;
    ~DeviceImpl() { drain_deferred_frees(true); }
};

struct Storage {
    void* ptr = nullptr;
    uint64_t bytes = 0;
    bool owned = false;
    Backend* ops = nullptr; // frees owned memory (Backend::free_storage)
    int32_t ordinal = 0;
    std::shared_ptr<DeferredFrees> deferred; // CUDA: where a worker thread leaves the memory to be freed
    ~Storage();
};

} // namespace sw

struct sw_device_s {
    std::shared_ptr<sw::DeviceImpl> impl;
};

struct sw_buffer_s {
    sw_device device = nullptr;
    std::shared_ptr<sw::DeviceImpl> device_impl;
    std::shared_ptr<sw::Storage> storage;
};

struct sw_stream_s {
    sw_device device = nullptr;
    std::shared_ptr<sw::DeviceImpl> device_impl;
    // CPU: runs all of the stream's work. CUDA: runs the host side of collectives, in stream order.
    std::unique_ptr<sw::cpu::Stream> impl;
    void* cuda_stream = nullptr;   // CUDA: the cudaStream_t
    bool owns_cuda_stream = false; // false for a wrapped external stream
    // CUDA: a mapped pinned word the host raises when a collective's host side is done (see comm).
    uint32_t* flag_host = nullptr;
    uint32_t* flag_device = nullptr;
    uint32_t flag_target = 0;
};

namespace sw {
struct EventState {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t recorded = 0;  // generation of the latest record
    uint64_t completed = 0; // generation whose marker has run
    std::chrono::steady_clock::time_point time{};
};
} // namespace sw

struct sw_event_s {
    sw_device device = nullptr;
    std::shared_ptr<sw::DeviceImpl> device_impl;
    std::shared_ptr<sw::EventState> state; // CPU
    void* cuda_event = nullptr;            // CUDA: the cudaEvent_t
};

namespace sw {

// Looks up a handle argument: NULL -> SW_ERR_NULL_HANDLE, unknown/destroyed -> SW_ERR_INVALID_ARGUMENT.
template <class T>
T* checked(T* h, HandleKind kind, const char* name) {
    if (!h) fail(SW_ERR_NULL_HANDLE, name, " is NULL; expected a live ", handle_kind_name(kind), " handle");
    if (!live_handle(h, kind))
        fail(SW_ERR_INVALID_ARGUMENT, name, " is not a live ", handle_kind_name(kind),
             " handle (destroyed, or not a ", handle_kind_name(kind), ")");
    return h;
}
inline sw_device_s* checked(sw_device h, const char* name) { return checked(h, HandleKind::Device, name); }
inline sw_buffer_s* checked(sw_buffer h, const char* name) { return checked(h, HandleKind::Buffer, name); }
inline sw_stream_s* checked(sw_stream h, const char* name) { return checked(h, HandleKind::Stream, name); }
inline sw_event_s* checked(sw_event h, const char* name) { return checked(h, HandleKind::Event, name); }

// Checks that [offset, offset + count) elements of `elem_size` bytes lie inside the buffer; returns the
// byte address of the first element.
char* buffer_span(sw_buffer_s* buf, uint64_t offset, uint64_t count, size_t elem_size, const char* name);

// Checks that the buffer lives on the stream's device.
void require_same_device(sw_buffer_s* buf, sw_stream_s* stream, const char* buf_name);

// The C ABI's mismatch messages, shared by the exports and the backends that check the same rule.
[[noreturn]] void fail_event_stream_mismatch(const sw_event_s& e, const sw_stream_s& s);
[[noreturn]] void fail_event_pair_mismatch();

// Copies src into a caller's char buffer of cap bytes (truncated, always terminated; nothing when dst is null or cap
// is 0): sw_device_info's strings, the communicators' reason and version texts.
void copy_name(char* dst, size_t cap, const std::string& src);

// Checks a dtype argument (read raw, see core/enum_arg.h: pass the parameter itself); returns its element size.
size_t dtype_size_checked(const sw_dtype& dtype, const char* name);

} // namespace sw
