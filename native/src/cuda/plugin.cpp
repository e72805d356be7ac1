// libshardwise_cuda: the PluginApi table (core/cuda_plugin_api.h) and its host-side functions: versions, devices,
// memory, streams, events, copies, argument checking and dispatch of the kernels and GEMMs.
//
// Conventions: every entry point runs its body through run(), which catches everything (nothing throws across
// the plugin boundary) and writes "<function>: <message>" into *err. Every function that touches a device
// first makes it current on the calling thread (set_device). Every CUDA status is checked.
#include "core/index_math.h"
#include "cuda/common.h"

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <vector>

// CUDA's lazy module loading (the default since CUDA 12.2) loads a kernel at its first launch, and loading may wait for
// the whole context to be idle. A collective ordered into a CUDA stream parks that stream on the wait-flag kernel
// until the collective's host side has run; a first launch of any other kernel meanwhile (the collective's own
// reduce_sum or copy kernels, a GEMM of another virtual rank on the same GPU, cuBLASLt's kernels) then waits for the
// parked kernel, which waits for it: a deadlock, seen on an H200 (CUDA 13.0) as hangs of the first collectives. So the
// plugin asks for eager loading before the CUDA runtime starts, unless the process chose a mode itself
// (CUDA_MODULE_LOADING set) or started CUDA before loading Shardwise, where the variable no longer matters; "versions"
// reports the mode in force (docs/gpu-validation.md).
__attribute__((constructor)) static void sw_cuda_prefer_eager_loading() { setenv("CUDA_MODULE_LOADING", "EAGER", 0); }

namespace sw::cuda {

// ================================================================================================ errors
std::string cuda_error_text(cudaError_t status) {
    const char* name = cudaGetErrorName(status);
    const char* text = cudaGetErrorString(status);
    return str(name ? name : "cudaError?", " (", text ? text : "?", ", code ", static_cast<int>(status), ")");
}

void check_cuda(cudaError_t status, const char* call) {
    if (status == cudaSuccess) return;
    (void)cudaGetLastError(); // clear the per-thread last error (sticky errors stay, as they must)
    const sw_status st = status == cudaErrorMemoryAllocation ? SW_ERR_OUT_OF_MEMORY : SW_ERR_BACKEND;
    fail(st, call, " failed: ", cuda_error_text(status));
}

// ================================================================================================ devices
namespace {

struct DeviceTable {
    std::once_flag once;
    int32_t count = 0;
    std::string reason;          // why count is 0
    std::vector<int> capability; // major * 10 + minor, 0 until queried
    std::vector<int8_t> peer;    // [ordinal * count + peer]: 1 access enabled, -1 impossible, 0 not yet asked
    std::mutex mutex;            // guards capability and peer
};
DeviceTable& devices() {
    static DeviceTable* t = new DeviceTable(); // never destroyed: usable from other static destructors
    return *t;
}

void init_devices(DeviceTable& t) {
    int n = 0;
    const cudaError_t st = cudaGetDeviceCount(&n);
    if (st == cudaSuccess) {
        t.count = std::max(n, 0);
        if (t.count == 0) t.reason = "the CUDA runtime reports 0 devices";
    } else {
        (void)cudaGetLastError();
        // No driver, no device or an unusable driver: report "no devices", never an error (core/cuda_plugin_api.h).
        t.count = 0;
        t.reason = str("cudaGetDeviceCount failed: ", cuda_error_text(st));
    }
    t.capability.assign(static_cast<size_t>(t.count), 0);
    t.peer.assign(static_cast<size_t>(t.count) * static_cast<size_t>(t.count), 0);
}

} // namespace

int32_t device_count() {
    DeviceTable& t = devices();
    std::call_once(t.once, [&t] { init_devices(t); });
    return t.count;
}

const std::string& no_device_reason() {
    DeviceTable& t = devices();
    std::call_once(t.once, [&t] { init_devices(t); });
    return t.reason;
}

void require_device(int32_t ordinal) {
    const int32_t n = device_count();
    if (n == 0) fail(SW_ERR_NOT_FOUND, "no CUDA device (", no_device_reason(), ")");
    if (ordinal < 0 || ordinal >= n)
        fail(SW_ERR_NOT_FOUND, "CUDA device ordinal ", ordinal, " is out of range (", n, " device(s))");
}

void set_device(int32_t ordinal) {
    require_device(ordinal);
    check_cuda(cudaSetDevice(ordinal), "cudaSetDevice");
}

int compute_capability(int32_t ordinal) {
    require_device(ordinal);
    DeviceTable& t = devices();
    {
        std::lock_guard<std::mutex> lock(t.mutex);
        if (t.capability[static_cast<size_t>(ordinal)] != 0) return t.capability[static_cast<size_t>(ordinal)];
    }
    int major = 0, minor = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal), "cudaDeviceGetAttribute");
    std::lock_guard<std::mutex> lock(t.mutex);
    t.capability[static_cast<size_t>(ordinal)] = major * 10 + minor;
    return major * 10 + minor;
}

// ================================================================================================ entry points
namespace {

// Enables access of `ordinal` (the calling thread's current device) to the memory of `peer`, once per pair (access
// is unidirectional and per device; nothing else enables it). False when the devices cannot reach each other.
bool enable_peer(int32_t ordinal, int32_t peer) {
    require_device(ordinal);
    require_device(peer);
    if (ordinal == peer) return true;
    DeviceTable& t = devices();
    const size_t slot = static_cast<size_t>(ordinal) * static_cast<size_t>(t.count) + static_cast<size_t>(peer);
    {
        std::lock_guard<std::mutex> lock(t.mutex);
        if (t.peer[slot] != 0) return t.peer[slot] > 0;
    }
    int can = 0;
    check_cuda(cudaDeviceCanAccessPeer(&can, ordinal, peer), "cudaDeviceCanAccessPeer");
    if (can) {
        const cudaError_t st = cudaDeviceEnablePeerAccess(peer, 0);
        if (st == cudaErrorPeerAccessAlreadyEnabled) {
            (void)cudaGetLastError(); // not an error for us; do not leave it behind
        } else {
            check_cuda(st, "cudaDeviceEnablePeerAccess");
        }
    }
    std::lock_guard<std::mutex> lock(t.mutex);
    t.peer[slot] = can ? 1 : -1;
    return can != 0;
}

void set_error(std::string* err, const char* fn, const std::string& message) noexcept {
    if (!err) return;
    try {
        *err = str("cuda ", fn, ": ", message);
    } catch (...) {
        // Out of memory while reporting: leave *err as it is; the status still says what happened.
    }
}

template <class Body>
sw_status run(std::string* err, const char* fn, Body&& body) noexcept {
    try {
        body();
        return SW_OK;
    } catch (const Error& e) {
        set_error(err, fn, e.message());
        return e.status();
    } catch (const std::bad_alloc&) {
        set_error(err, fn, "out of host memory");
        return SW_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_error(err, fn, str("internal error: ", e.what()));
        return SW_ERR_INTERNAL;
    } catch (...) {
        set_error(err, fn, "internal error: unknown exception");
        return SW_ERR_INTERNAL;
    }
}

template <class T>
T* need(T* p, const char* name) {
    if (!p) fail(SW_ERR_NULL_HANDLE, name, " is NULL");
    return p;
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

void copy_name(char* dst, size_t capacity, const std::string& s) {
    const size_t n = std::min(s.size(), capacity - 1);
    std::memcpy(dst, s.data(), n);
    dst[n] = '\0';
}

std::string version_text(int v) { // 11080 -> "11.8"
    return str(v / 1000, ".", (v % 1000) / 10);
}

// Elements spanned by a rows x cols row-major matrix with leading dimension ld, or fail naming the matrix.
// rows, cols >= 1 and ld >= 1 checked by the caller; guards against int64 overflow of (rows - 1) * ld + cols.
uint64_t checked_extent(int64_t rows, int64_t cols, int64_t ld, uint32_t elem_bytes, const char* what) {
    const int64_t max = std::numeric_limits<int64_t>::max();
    if (rows - 1 > 0 && ld > (max - cols) / (rows - 1))
        fail(SW_ERR_INVALID_ARGUMENT, what, ": ", rows, " x ", cols, " with leading dimension ", ld, " is too large");
    const uint64_t elems = matrix_extent(rows, cols, ld);
    if (elems > static_cast<uint64_t>(max) / elem_bytes)
        fail(SW_ERR_INVALID_ARGUMENT, what, ": ", rows, " x ", cols, " with leading dimension ", ld, " is too large");
    return elems;
}

// Can a kernel on `ordinal` dereference p? Device memory of that device, managed memory, or host memory mapped
// into the device address space. Peer device memory is treated as not accessible (access may not be enabled).
bool kernel_accessible(const void* p, int32_t ordinal) {
    cudaPointerAttributes a;
    std::memset(&a, 0, sizeof a);
    const cudaError_t st = cudaPointerGetAttributes(&a, p);
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    switch (a.type) {
    case cudaMemoryTypeDevice: return a.device == ordinal;
    case cudaMemoryTypeManaged: return true;
    case cudaMemoryTypeHost: return a.devicePointer == p; // mapped, and the device sees it at the same address
    default: return false;                                 // unregistered (pageable) host memory
    }
}

// The reduce_sum kernel dereferences every source and destination on `ordinal`, and the in-process collectives
// pass it the buffers of the other ranks' devices. Such memory needs peer access, which nothing else enables:
// enabled here; when the two devices cannot reach each other the call fails instead of the kernel faulting (a
// fault poisons the device's context). Caller: current device = ordinal. Other memory is passed on unchecked.
void require_peer_reachable(const void* p, int32_t ordinal, const char* what, int32_t index) {
    cudaPointerAttributes a;
    std::memset(&a, 0, sizeof a);
    const cudaError_t st = cudaPointerGetAttributes(&a, p);
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (a.type != cudaMemoryTypeDevice || a.device == ordinal) return;
    if (!enable_peer(ordinal, a.device))
        fail(SW_ERR_UNSUPPORTED, what, "[", index, "] is memory of CUDA device ", a.device, ", which device ", ordinal,
             " cannot access (no peer-to-peer access between them)");
}

// ------------------------------------------------------------------------------------------ versions
// "eager", "lazy" or "unknown": cuModuleGetLoadingMode (CUDA 11.7+) from the driver that the runtime loaded.
const char* module_loading_mode() {
    void* drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!drv) return "unknown";
    using Fn = int (*)(int*);
    const auto fn = reinterpret_cast<Fn>(dlsym(drv, "cuModuleGetLoadingMode"));
    int mode = 0;
    const int st = fn ? fn(&mode) : -1;
    dlclose(drv);
    if (st != 0) return "unknown";
    return mode == 1 ? "eager" : mode == 2 ? "lazy" : "unknown"; // CU_MODULE_EAGER_LOADING 1, CU_MODULE_LAZY_LOADING 2
}

sw_status api_versions(std::string* out, std::string* err) {
    return run(err, "versions", [&] {
        need(out, "out");
        // Both queries are informational: without a usable driver some runtimes fail them (reporting the
        // initialization error), which must not make "versions" fail. Then: the runtime we were built
        // against, and no driver version.
        int rt = 0, drv = 0;
        if (cudaRuntimeGetVersion(&rt) != cudaSuccess) {
            (void)cudaGetLastError();
            rt = CUDART_VERSION;
        }
        if (cudaDriverGetVersion(&drv) != cudaSuccess) {
            (void)cudaGetLastError();
            drv = 0;
        }
        std::string s = str("CUDA runtime ", version_text(rt), ", driver ", drv ? version_text(drv) : "none", ", ",
                            cublaslt_version(), ", ", device_count(), " device(s)");
        if (device_count() > 0) s += str(", module loading ", module_loading_mode());
        if (device_count() == 0) s += str(" (", no_device_reason(), ")");
        *out = std::move(s);
    });
}

// ------------------------------------------------------------------------------------------ devices
sw_status api_device_count(int32_t* count, std::string* err) {
    return run(err, "device_count", [&] { *need(count, "count") = device_count(); });
}

sw_status api_device_info(int32_t ordinal, sw_device_info* info, std::string* err) {
    return run(err, "device_info", [&] {
        need(info, "info");
        require_device(ordinal);
        cudaDeviceProp prop;
        std::memset(&prop, 0, sizeof prop);
        check_cuda(cudaGetDeviceProperties(&prop, ordinal), "cudaGetDeviceProperties");
        std::memset(info, 0, sizeof *info);
        info->backend = SW_BACKEND_CUDA;
        info->ordinal = ordinal;
        info->num_threads = prop.multiProcessorCount;
        info->total_memory_bytes = static_cast<uint64_t>(prop.totalGlobalMem);
        prop.name[sizeof prop.name - 1] = '\0';
        copy_name(info->name, sizeof info->name,
                  str(prop.name, " (sm_", prop.major, prop.minor, ", ", prop.multiProcessorCount, " SMs)"));
        copy_name(info->kernel, sizeof info->kernel,
                  str("cublaslt", prop.major >= 8 ? "+mma.sync" : "", " sm_", prop.major, prop.minor));
    });
}

sw_status api_enable_peer_access(int32_t ordinal, int32_t peer, int32_t* enabled, std::string* err) {
    return run(err, "enable_peer_access", [&] {
        need(enabled, "enabled");
        *enabled = 0;
        require_device(ordinal);
        require_device(peer);
        set_device(ordinal);
        *enabled = enable_peer(ordinal, peer) ? 1 : 0;
    });
}

// ------------------------------------------------------------------------------------------ memory
sw_status api_malloc_device(int32_t ordinal, uint64_t bytes, void** ptr, std::string* err) {
    return run(err, "malloc_device", [&] {
        need(ptr, "ptr");
        *ptr = nullptr;
        if (bytes == 0) fail(SW_ERR_INVALID_ARGUMENT, "bytes is 0; expected > 0");
        if (bytes > std::numeric_limits<size_t>::max()) fail(SW_ERR_INVALID_ARGUMENT, "bytes ", bytes, " is too large");
        set_device(ordinal);
        void* p = nullptr;
        const cudaError_t st = cudaMalloc(&p, static_cast<size_t>(bytes));
        if (st != cudaSuccess) {
            (void)cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
            fail(st == cudaErrorMemoryAllocation ? SW_ERR_OUT_OF_MEMORY : SW_ERR_BACKEND, "cudaMalloc of ", bytes,
                 " bytes on device ", ordinal, " failed: ", cuda_error_text(st), " (", free_b, " of ", total_b,
                 " bytes free)");
        }
        *ptr = p; // cudaMalloc memory is at least 256-byte aligned
    });
}

sw_status api_free_device(int32_t ordinal, void* ptr, std::string* err) {
    return run(err, "free_device", [&] {
        if (!ptr) return;
        set_device(ordinal);
        check_cuda(cudaFree(ptr), "cudaFree");
    });
}

sw_status api_malloc_host(uint64_t bytes, void** host_ptr, void** device_ptr, std::string* err) {
    return run(err, "malloc_host", [&] {
        need(host_ptr, "host_ptr");
        need(device_ptr, "device_ptr");
        *host_ptr = nullptr;
        *device_ptr = nullptr;
        if (bytes == 0) fail(SW_ERR_INVALID_ARGUMENT, "bytes is 0; expected > 0");
        if (bytes > std::numeric_limits<size_t>::max()) fail(SW_ERR_INVALID_ARGUMENT, "bytes ", bytes, " is too large");
        if (device_count() == 0) fail(SW_ERR_NOT_FOUND, "no CUDA device (", no_device_reason(), ")");
        void* h = nullptr;
        check_cuda(cudaHostAlloc(&h, static_cast<size_t>(bytes), cudaHostAllocMapped | cudaHostAllocPortable),
                   "cudaHostAlloc");
        void* d = nullptr;
        const cudaError_t st = cudaHostGetDevicePointer(&d, h, 0);
        if (st != cudaSuccess) {
            (void)cudaGetLastError();
            (void)cudaFreeHost(h);
            (void)cudaGetLastError();
            check_cuda(st, "cudaHostGetDevicePointer");
        }
        *host_ptr = h;
        *device_ptr = d;
    });
}

sw_status api_free_host(void* host_ptr, std::string* err) {
    return run(err, "free_host", [&] {
        if (!host_ptr) return;
        check_cuda(cudaFreeHost(host_ptr), "cudaFreeHost");
    });
}

sw_status api_pointer_device(const void* ptr, int32_t* ordinal, std::string* err) {
    return run(err, "pointer_device", [&] {
        need(ordinal, "ordinal");
        *ordinal = -1;
        if (!ptr || device_count() == 0) return;
        cudaPointerAttributes a;
        std::memset(&a, 0, sizeof a);
        const cudaError_t st = cudaPointerGetAttributes(&a, ptr);
        if (st == cudaErrorInvalidValue) { // not a pointer CUDA knows about
            (void)cudaGetLastError();
            return;
        }
        check_cuda(st, "cudaPointerGetAttributes");
        if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) *ordinal = a.device;
    });
}

// ------------------------------------------------------------------------------------------ streams
sw_status api_stream_create(int32_t ordinal, void** stream, std::string* err) {
    return run(err, "stream_create", [&] {
        need(stream, "stream");
        *stream = nullptr;
        set_device(ordinal);
        cudaStream_t s = nullptr;
        check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        *stream = s;
    });
}

sw_status api_stream_destroy(int32_t ordinal, void* stream, std::string* err) {
    return run(err, "stream_destroy", [&] {
        if (!stream) return;
        set_device(ordinal);
        const cudaStream_t s = as_stream(stream);
        // Drain first: the stream's GEMM workspace is freed below. Destroy even when the drain reports an
        // error (from earlier work), then report the first error.
        const cudaError_t sync = cudaStreamSynchronize(s);
        if (sync != cudaSuccess) (void)cudaGetLastError();
        std::string release_error;
        try {
            release_stream_resources(ordinal, s);
        } catch (const Error& e) {
            release_error = e.message();
        }
        const cudaError_t destroy = cudaStreamDestroy(s);
        check_cuda(sync, "cudaStreamSynchronize (before destroying the stream)");
        if (!release_error.empty()) fail(SW_ERR_BACKEND, release_error);
        check_cuda(destroy, "cudaStreamDestroy");
    });
}

sw_status api_release_stream(int32_t ordinal, void* stream, std::string* err) {
    return run(err, "release_stream", [&] {
        set_device(ordinal);
        const cudaStream_t s = as_stream(stream);
        // The workspace may still be in use by work queued on the stream: wait for it first.
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize (before releasing the stream's GEMM workspace)");
        release_stream_resources(ordinal, s);
    });
}

sw_status api_stream_synchronize(int32_t ordinal, void* stream, std::string* err) {
    return run(err, "stream_synchronize", [&] {
        set_device(ordinal);
        check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
    });
}

sw_status api_stream_wait_event(int32_t ordinal, void* stream, void* event, std::string* err) {
    return run(err, "stream_wait_event", [&] {
        need(event, "event");
        set_device(ordinal);
        check_cuda(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0), "cudaStreamWaitEvent");
    });
}

// ------------------------------------------------------------------------------------------ events
sw_status api_event_create(int32_t ordinal, void** event, std::string* err) {
    return run(err, "event_create", [&] {
        need(event, "event");
        *event = nullptr;
        set_device(ordinal);
        cudaEvent_t e = nullptr;
        check_cuda(cudaEventCreateWithFlags(&e, cudaEventDefault), "cudaEventCreateWithFlags"); // timing enabled
        *event = e;
    });
}

sw_status api_event_destroy(int32_t ordinal, void* event, std::string* err) {
    return run(err, "event_destroy", [&] {
        if (!event) return;
        set_device(ordinal);
        check_cuda(cudaEventDestroy(as_event(event)), "cudaEventDestroy");
    });
}

sw_status api_event_record(int32_t ordinal, void* event, void* stream, std::string* err) {
    return run(err, "event_record", [&] {
        need(event, "event");
        set_device(ordinal);
        check_cuda(cudaEventRecord(as_event(event), as_stream(stream)), "cudaEventRecord");
    });
}

sw_status api_event_synchronize(int32_t ordinal, void* event, std::string* err) {
    return run(err, "event_synchronize", [&] {
        need(event, "event");
        set_device(ordinal);
        check_cuda(cudaEventSynchronize(as_event(event)), "cudaEventSynchronize");
    });
}

sw_status api_event_query(int32_t ordinal, void* event, int32_t* done, std::string* err) {
    return run(err, "event_query", [&] {
        need(done, "done");
        need(event, "event");
        *done = 0;
        set_device(ordinal);
        const cudaError_t st = cudaEventQuery(as_event(event));
        if (st == cudaErrorNotReady) {
            (void)cudaGetLastError(); // "not yet" is not an error
            return;
        }
        check_cuda(st, "cudaEventQuery");
        *done = 1;
    });
}

sw_status api_event_elapsed_ms(int32_t ordinal, void* start, void* end, float* ms, std::string* err) {
    return run(err, "event_elapsed_ms", [&] {
        need(ms, "ms");
        need(start, "start");
        need(end, "end");
        *ms = 0.0f;
        set_device(ordinal);
        check_cuda(cudaEventElapsedTime(ms, as_event(start), as_event(end)), "cudaEventElapsedTime");
    });
}

// ------------------------------------------------------------------------------------------ copies
sw_status api_memcpy_async(int32_t ordinal, void* dst, const void* src, uint64_t bytes, void* stream,
                           std::string* err) {
    return run(err, "memcpy_async", [&] {
        if (bytes == 0) return;
        need(dst, "dst");
        need(src, "src");
        if (bytes > std::numeric_limits<size_t>::max()) fail(SW_ERR_INVALID_ARGUMENT, "bytes ", bytes, " is too large");
        set_device(ordinal);
        // A copy from the device into pageable host memory waits for the stream's earlier work inside the driver,
        // holding locks that other threads' CUDA calls need: if that work includes a wait-flag kernel (a collective
        // ordered into the stream), the host side that would release it can block on those locks (seen on an H200:
        // nccl_check's main thread in cuMemcpyAsync, the stream's worker in cuEventDestroy, for good). So wait for
        // the stream first, outside the driver's locks; the copy is synchronous for pageable memory anyway.
        cudaPointerAttributes da, sa;
        std::memset(&da, 0, sizeof da);
        std::memset(&sa, 0, sizeof sa);
        const bool dst_pageable = cudaPointerGetAttributes(&da, dst) == cudaSuccess && da.type == cudaMemoryTypeUnregistered;
        (void)cudaGetLastError();
        const bool src_device = cudaPointerGetAttributes(&sa, src) == cudaSuccess &&
                                (sa.type == cudaMemoryTypeDevice || sa.type == cudaMemoryTypeManaged);
        (void)cudaGetLastError();
        if (dst_pageable && src_device)
            check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize (before a copy into pageable memory)");
        check_cuda(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDefault, as_stream(stream)),
                   "cudaMemcpyAsync");
    });
}

sw_status api_memset_async(int32_t ordinal, void* dst, uint8_t value, uint64_t bytes, void* stream,
                           std::string* err) {
    return run(err, "memset_async", [&] {
        if (bytes == 0) return;
        need(dst, "dst");
        if (bytes > std::numeric_limits<size_t>::max()) fail(SW_ERR_INVALID_ARGUMENT, "bytes ", bytes, " is too large");
        set_device(ordinal);
        check_cuda(cudaMemsetAsync(dst, value, static_cast<size_t>(bytes), as_stream(stream)), "cudaMemsetAsync");
    });
}

sw_status api_copy_2d(int32_t ordinal, void* dst, int64_t ld_dst, const void* src, int64_t ld_src, int64_t rows,
                      int64_t cols, int32_t elem_size, void* stream, std::string* err) {
    return run(err, "copy_2d", [&] {
        if (rows < 0 || cols < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows (", rows, ") and cols (", cols, ") must be >= 0");
        if (elem_size <= 0) fail(SW_ERR_INVALID_ARGUMENT, "elem_size is ", elem_size, "; expected > 0");
        if (rows == 0 || cols == 0) return;
        if (ld_dst < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_dst (", ld_dst, ") is less than cols (", cols, ")");
        if (ld_src < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_src (", ld_src, ") is less than cols (", cols, ")");
        need(dst, "dst");
        need(src, "src");
        const uint32_t es = static_cast<uint32_t>(elem_size);
        checked_extent(rows, cols, ld_dst, es, "dst");
        checked_extent(rows, cols, ld_src, es, "src");
        set_device(ordinal);
        const cudaStream_t s = as_stream(stream);
        if (dst == src && ld_dst == ld_src) return; // copying a block onto itself
        const size_t width = static_cast<size_t>(cols) * es;
        const size_t dpitch = static_cast<size_t>(ld_dst) * es, spitch = static_cast<size_t>(ld_src) * es;
        if (rows == 1 || (ld_dst == cols && ld_src == cols)) { // one contiguous block
            check_cuda(cudaMemcpyAsync(dst, src, width * static_cast<size_t>(rows), cudaMemcpyDefault, s),
                       "cudaMemcpyAsync");
            return;
        }
        if (kernel_accessible(dst, ordinal) && kernel_accessible(src, ordinal)) {
            check_cuda(launch_copy_2d(dst, ld_dst, src, ld_src, rows, cols, elem_size, s), "copy_2d kernel launch");
            return;
        }
        // Peer, pageable host or otherwise not kernel-accessible memory: the copy engines (UVA).
        const cudaError_t st =
            cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, static_cast<size_t>(rows), cudaMemcpyDefault, s);
        if (st != cudaErrorInvalidPitchValue) {
            check_cuda(st, "cudaMemcpy2DAsync");
            return;
        }
        (void)cudaGetLastError();
        for (int64_t r = 0; r < rows; ++r) // pitches beyond the copy engines' limit: row by row
            check_cuda(cudaMemcpyAsync(static_cast<char*>(dst) + static_cast<size_t>(r) * dpitch,
                                       static_cast<const char*>(src) + static_cast<size_t>(r) * spitch, width,
                                       cudaMemcpyDefault, s),
                       "cudaMemcpyAsync");
    });
}

// ------------------------------------------------------------------------------------------ kernels
bool float_type(sw_dtype t) {
    return t == SW_DTYPE_F32 || t == SW_DTYPE_F64 || t == SW_DTYPE_F16 || t == SW_DTYPE_BF16;
}

sw_status api_reduce_sum(int32_t ordinal, sw_dtype dtype, const void* const* srcs, int32_t nsrc, void* const* dsts,
                         int32_t ndst, uint64_t count, int32_t tree, void* stream, std::string* err) {
    return run(err, "reduce_sum", [&] {
        if (!float_type(dtype) && dtype != SW_DTYPE_I32)
            fail(SW_ERR_UNSUPPORTED, "sum of dtype ", dtype_name(dtype), " is not supported");
        if (tree != 0 && tree != 1)
            fail(SW_ERR_INVALID_ARGUMENT, "tree is ", tree, "; expected 0 (source order) or 1 (the tree order)");
        if (nsrc < 1 || nsrc > kMaxReducePointers)
            fail(SW_ERR_INVALID_ARGUMENT, "nsrc is ", nsrc, "; expected 1..", kMaxReducePointers);
        if (ndst < 1 || ndst > kMaxReducePointers)
            fail(SW_ERR_INVALID_ARGUMENT, "ndst is ", ndst, "; expected 1..", kMaxReducePointers);
        need(srcs, "srcs");
        need(dsts, "dsts");
        for (int32_t i = 0; i < nsrc; ++i)
            if (!srcs[i]) fail(SW_ERR_NULL_HANDLE, "srcs[", i, "] is NULL");
        for (int32_t i = 0; i < ndst; ++i)
            if (!dsts[i]) fail(SW_ERR_NULL_HANDLE, "dsts[", i, "] is NULL");
        const uint64_t es = dtype_bytes(dtype);
        if (count > std::numeric_limits<uint64_t>::max() / es) fail(SW_ERR_INVALID_ARGUMENT, "count ", count, " is too large");
        set_device(ordinal);
        if (count == 0) return;
        for (int32_t i = 0; i < nsrc; ++i) require_peer_reachable(srcs[i], ordinal, "srcs", i);
        for (int32_t i = 0; i < ndst; ++i) require_peer_reachable(dsts[i], ordinal, "dsts", i);
        check_cuda(launch_reduce_sum(dtype, srcs, nsrc, dsts, ndst, count, tree == 1, as_stream(stream)),
                   "reduce_sum kernel launch");
    });
}

sw_status api_convert(int32_t ordinal, sw_dtype src_type, const void* src, sw_dtype dst_type, void* dst,
                      uint64_t count, void* stream, std::string* err) {
    return run(err, "convert", [&] {
        if (!float_type(src_type) || !float_type(dst_type))
            fail(SW_ERR_UNSUPPORTED, "conversion from ", dtype_name(src_type), " to ", dtype_name(dst_type),
                 " is not supported (f32, f64, f16, bf16)");
        const uint64_t es = std::max(dtype_bytes(src_type), dtype_bytes(dst_type));
        if (count > std::numeric_limits<uint64_t>::max() / es) fail(SW_ERR_INVALID_ARGUMENT, "count ", count, " is too large");
        set_device(ordinal);
        if (count == 0) return;
        need(src, "src");
        need(dst, "dst");
        const cudaStream_t s = as_stream(stream);
        if (src_type == dst_type) {
            if (src != dst)
                check_cuda(cudaMemcpyAsync(dst, src, static_cast<size_t>(count * es), cudaMemcpyDefault, s),
                           "cudaMemcpyAsync");
            return;
        }
        check_cuda(launch_convert(src_type, src, dst_type, dst, count, s), "convert kernel launch");
    });
}

sw_status api_bias_act(int32_t ordinal, sw_dtype dtype, void* y, int64_t ld, int64_t rows, int64_t cols,
                       const void* bias, sw_epilogue epilogue, void* stream, std::string* err) {
    return run(err, "bias_act", [&] {
        if (!float_type(dtype)) fail(SW_ERR_UNSUPPORTED, "bias_act of dtype ", dtype_name(dtype), " is not supported");
        if (epilogue != SW_EPILOGUE_NONE && epilogue != SW_EPILOGUE_GELU)
            fail(SW_ERR_INVALID_ARGUMENT, "epilogue ", static_cast<int>(epilogue), " is not a sw_epilogue");
        if (rows < 0 || cols < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows (", rows, ") and cols (", cols, ") must be >= 0");
        set_device(ordinal);
        if (rows == 0 || cols == 0) return;
        if (!bias && epilogue == SW_EPILOGUE_NONE) return; // nothing to do
        need(y, "y");
        if (ld < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld (", ld, ") is less than cols (", cols, ")");
        checked_extent(rows, cols, ld, dtype_bytes(dtype), "y");
        check_cuda(launch_scale_bias_act(dtype, y, ld, rows, cols, 1.0f, bias, epilogue == SW_EPILOGUE_GELU,
                                         as_stream(stream)),
                   "bias_act kernel launch");
    });
}

// Under lazy module loading (a host that started CUDA before Shardwise could ask for eager loading), the kernels of the
// collectives' host side are loaded before the device's first wait-flag kernel: the first one to get here loads them
// while the others wait on the mutex, so no wait-flag kernel of ours runs on the device meanwhile. (cuBLASLt's own
// kernels cannot be loaded ahead like this: docs/ARCHITECTURE.md, "Collectives on CUDA streams".)
void preload_before_first_flag(int32_t ordinal) {
    static std::mutex mutex;
    static std::vector<char> done;
    std::lock_guard<std::mutex> lock(mutex);
    if (done.size() <= static_cast<size_t>(ordinal)) done.resize(static_cast<size_t>(ordinal) + 1, 0);
    if (done[static_cast<size_t>(ordinal)]) return;
    if (std::strcmp(module_loading_mode(), "eager") != 0)
        check_cuda(preload_collective_kernels(), "loading the collective kernels ahead (lazy module loading)");
    done[static_cast<size_t>(ordinal)] = 1;
}

sw_status api_stream_wait_flag(int32_t ordinal, volatile uint32_t* device_flag, uint32_t target, void* stream,
                               std::string* err) {
    return run(err, "stream_wait_flag", [&] {
        if (!device_flag) fail(SW_ERR_NULL_HANDLE, "device_flag is NULL");
        if (reinterpret_cast<uintptr_t>(device_flag) % alignof(uint32_t) != 0)
            fail(SW_ERR_INVALID_ARGUMENT, "device_flag is not 4-byte aligned");
        set_device(ordinal);
        preload_before_first_flag(ordinal);
        check_cuda(launch_wait_flag(device_flag, target, as_stream(stream)), "stream_wait_flag kernel launch");
    });
}

sw_status api_set_device(int32_t ordinal, std::string* err) {
    return run(err, "set_device", [&] { set_device(ordinal); });
}

sw_status api_gelu_backward(int32_t ordinal, sw_dtype dtype, const void* x, const void* dy, void* dx, uint64_t count,
                            void* stream, std::string* err) {
    return run(err, "gelu_backward", [&] {
        if (!float_type(dtype)) fail(SW_ERR_UNSUPPORTED, "gelu_backward of dtype ", dtype_name(dtype), " is not supported");
        set_device(ordinal);
        if (count == 0) return;
        need(x, "x");
        need(dy, "dy");
        need(dx, "dx");
        check_cuda(launch_gelu_backward(dtype, x, dy, dx, count, as_stream(stream)), "gelu_backward kernel launch");
    });
}

// ------------------------------------------------------------------------------------------ training (ABI 6)
bool training_type(sw_dtype t) { return t == SW_DTYPE_F32 || t == SW_DTYPE_F16 || t == SW_DTYPE_BF16; }

sw_status api_unscale_check(int32_t ordinal, sw_dtype dtype, void* buf, uint64_t count, float inv_scale, float* flag,
                            void* stream, std::string* err) {
    return run(err, "unscale_check", [&] {
        if (!training_type(dtype))
            fail(SW_ERR_UNSUPPORTED, "unscale_check of dtype ", dtype_name(dtype), " is not supported (f32, f16, bf16)");
        if (!std::isfinite(inv_scale) || !(inv_scale > 0.0f))
            fail(SW_ERR_INVALID_ARGUMENT, "inv_scale (", inv_scale, ") must be finite and > 0");
        set_device(ordinal);
        if (count == 0) return;
        need(buf, "buf");
        need(flag, "flag");
        check_cuda(launch_unscale_check(dtype, buf, count, inv_scale, flag, as_stream(stream)), "unscale_check kernel launch");
    });
}

sw_status api_axpy(int32_t ordinal, sw_dtype x_type, float alpha, const void* x, float* y, uint64_t count, void* stream,
                   std::string* err) {
    return run(err, "axpy", [&] {
        if (!training_type(x_type))
            fail(SW_ERR_UNSUPPORTED, "axpy with x of dtype ", dtype_name(x_type), " is not supported (f32, f16, bf16)");
        if (!std::isfinite(alpha)) fail(SW_ERR_INVALID_ARGUMENT, "alpha (", alpha, ") must be finite");
        set_device(ordinal);
        if (count == 0) return;
        need(x, "x");
        need(y, "y");
        check_cuda(launch_axpy(x_type, alpha, x, y, count, as_stream(stream)), "axpy kernel launch");
    });
}

// ------------------------------------------------------------------------------------------ attention and normalization (ABI 7)
// The core validated the descriptions (core/api.cpp); the shape checks here only keep a malformed table call from
// reaching a kernel.
void require_rows_shape(int64_t rows, int64_t cols, int64_t ld) {
    if (rows < 0 || cols < 1 || ld < cols)
        fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, ", cols = ", cols, ", ld = ", ld,
             "; expected rows >= 0, cols >= 1, ld >= cols");
}
void require_norm_kind(sw_norm_kind kind) {
    if (kind != SW_NORM_LAYER && kind != SW_NORM_RMS)
        fail(SW_ERR_INVALID_ARGUMENT, "norm kind ", static_cast<int>(kind), " is not SW_NORM_LAYER or SW_NORM_RMS");
}

sw_status api_softmax(int32_t ordinal, const SoftmaxRows& a, void* stream, std::string* err) {
    return run(err, "softmax", [&] {
        require_rows_shape(a.rows, a.cols, a.ld);
        if (a.causal_period < 0 || a.causal_period > a.cols)
            fail(SW_ERR_INVALID_ARGUMENT, "causal_period = ", a.causal_period, "; expected 0..cols (", a.cols, ")");
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.x, "x");
        need(a.y, "y");
        check_cuda(launch_softmax(a, as_stream(stream)), "softmax kernel launch");
    });
}

sw_status api_softmax_backward(int32_t ordinal, const SoftmaxBackwardRows& a, void* stream, std::string* err) {
    return run(err, "softmax_backward", [&] {
        require_rows_shape(a.rows, a.cols, a.ld);
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.y, "y");
        need(a.dy, "dy");
        need(a.dx, "dx");
        check_cuda(launch_softmax_backward(a, as_stream(stream)), "softmax_backward kernel launch");
    });
}

sw_status api_norm(int32_t ordinal, const NormRows& a, void* stream, std::string* err) {
    return run(err, "norm", [&] {
        require_norm_kind(a.kind);
        require_rows_shape(a.rows, a.cols, a.cols);
        if (a.kind == SW_NORM_RMS && a.beta) fail(SW_ERR_INVALID_ARGUMENT, "beta must be NULL for RMSNorm");
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.x, "x");
        need(a.y, "y");
        check_cuda(launch_norm(a, as_stream(stream)), "norm kernel launch");
    });
}

sw_status api_norm_backward(int32_t ordinal, const NormBackwardRows& a, void* stream, std::string* err) {
    return run(err, "norm_backward", [&] {
        require_norm_kind(a.kind);
        require_rows_shape(a.rows, a.cols, a.cols);
        if (a.kind == SW_NORM_RMS && a.dbeta) fail(SW_ERR_INVALID_ARGUMENT, "dbeta must be NULL for RMSNorm");
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.x, "x");
        need(a.stats, "stats");
        need(a.dy, "dy");
        need(a.dx, "dx");
        // One call queues the parameter-gradient kernel (when dgamma or dbeta is given) and then the dx kernel.
        check_cuda(launch_norm_backward(a, as_stream(stream)), "norm_backward kernel launch");
    });
}

// ------------------------------------------------------------------------------------------ activations, GLU, dropout,
// embedding, cross-entropy (ABI 7)
void require_activation(sw_activation act) {
    if (act != SW_ACTIVATION_GELU && act != SW_ACTIVATION_RELU && act != SW_ACTIVATION_SILU)
        fail(SW_ERR_INVALID_ARGUMENT, "activation ", static_cast<int>(act),
             " is not SW_ACTIVATION_GELU, SW_ACTIVATION_RELU or SW_ACTIVATION_SILU");
}
void require_sizes(int64_t rows, int64_t cols) {
    if (rows < 0 || cols < 1)
        fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, ", cols = ", cols, "; expected rows >= 0, cols >= 1");
}

sw_status api_activation(int32_t ordinal, const ActivationArgs& a, void* stream, std::string* err) {
    return run(err, "activation", [&] {
        require_activation(a.act);
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.x, "x");
        need(a.y, "y");
        check_cuda(launch_activation(a, as_stream(stream)), "activation kernel launch");
    });
}

sw_status api_activation_backward(int32_t ordinal, const ActivationBackwardArgs& a, void* stream, std::string* err) {
    return run(err, "activation_backward", [&] {
        require_activation(a.act);
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.x, "x");
        need(a.dy, "dy");
        need(a.dx, "dx");
        check_cuda(launch_activation_backward(a, as_stream(stream)), "activation_backward kernel launch");
    });
}

sw_status api_glu(int32_t ordinal, const GluArgs& a, void* stream, std::string* err) {
    return run(err, "glu", [&] {
        require_activation(a.act);
        require_sizes(a.rows, a.cols);
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.gu, "gu");
        need(a.h, "h");
        check_cuda(launch_glu(a, as_stream(stream)), "glu kernel launch");
    });
}

sw_status api_glu_backward(int32_t ordinal, const GluBackwardArgs& a, void* stream, std::string* err) {
    return run(err, "glu_backward", [&] {
        require_activation(a.act);
        require_sizes(a.rows, a.cols);
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.gu, "gu");
        need(a.dh, "dh");
        need(a.dgu, "dgu");
        check_cuda(launch_glu_backward(a, as_stream(stream)), "glu_backward kernel launch");
    });
}

sw_status api_dropout(int32_t ordinal, const DropoutArgs& a, void* stream, std::string* err) {
    return run(err, "dropout", [&] {
        if (a.threshold > (1u << 24))
            fail(SW_ERR_INVALID_ARGUMENT, "threshold = ", a.threshold, "; expected <= 2^24");
        if (!(a.keep > 0.0f && a.keep <= 1.0f)) fail(SW_ERR_INVALID_ARGUMENT, "keep = ", a.keep, "; expected in (0, 1]");
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.x, "x");
        need(a.y, "y");
        check_cuda(launch_dropout(a, as_stream(stream)), "dropout kernel launch");
    });
}

sw_status api_embedding(int32_t ordinal, const EmbeddingArgs& a, void* stream, std::string* err) {
    return run(err, "embedding", [&] {
        require_sizes(a.rows, a.cols);
        if (a.shard_rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "shard_rows = ", a.shard_rows, "; expected >= 0");
        set_device(ordinal);
        if (a.rows == 0) return;
        if (a.shard_rows > 0) need(a.table, "table"); // an empty shard: every output row is zero, table unread
        need(a.ids, "ids");
        need(a.out, "out");
        check_cuda(launch_embedding(a, as_stream(stream)), "embedding kernel launch");
    });
}

sw_status api_embedding_backward(int32_t ordinal, const EmbeddingBackwardArgs& a, void* stream, std::string* err) {
    return run(err, "embedding_backward", [&] {
        require_sizes(a.rows, a.cols);
        if (a.shard_rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "shard_rows = ", a.shard_rows, "; expected >= 0");
        set_device(ordinal);
        // Not accumulating clears dtable even with no token (rows == 0); an empty shard has nothing to write.
        if (a.shard_rows == 0 || (a.rows == 0 && a.accumulate)) return;
        need(a.dtable, "dtable");
        if (a.rows > 0) {
            need(a.dout, "dout");
            need(a.ids, "ids");
        }
        // One call queues the clearing kernel (when not accumulating) and then the scatter.
        check_cuda(launch_embedding_backward(a, as_stream(stream)), "embedding_backward kernel launch");
    });
}

sw_status api_cross_entropy_partial(int32_t ordinal, const CrossEntropyPartialArgs& a, void* stream, std::string* err) {
    return run(err, "cross_entropy_partial", [&] {
        require_rows_shape(a.rows, a.cols, a.ld);
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.logits, "logits");
        need(a.ids, "ids");
        need(a.stats, "stats");
        check_cuda(launch_cross_entropy_partial(a, as_stream(stream)), "cross_entropy_partial kernel launch");
    });
}

sw_status api_cross_entropy_partial_tree(int32_t ordinal, const CrossEntropyPartialTreeArgs& a, void* stream,
                                         std::string* err) {
    return run(err, "cross_entropy_partial_tree", [&] {
        if (a.rows < 0 || a.cols < 0 || a.ld < a.cols)
            fail(SW_ERR_INVALID_ARGUMENT, "rows = ", a.rows, ", cols = ", a.cols, ", ld = ", a.ld,
                 "; expected rows >= 0, cols >= 0, ld >= cols");
        if (a.parts < 1 || a.leaf < 1)
            fail(SW_ERR_INVALID_ARGUMENT, "parts = ", a.parts, ", leaf = ", a.leaf, "; expected parts >= 1, leaf >= 1");
        set_device(ordinal);
        if (a.rows == 0) return;
        if (a.cols > 0) need(a.logits, "logits"); // an empty shard: logits unread
        need(a.ids, "ids");
        need(a.gathered, "gathered");
        need(a.out, "out");
        check_cuda(launch_cross_entropy_partial_tree(a, as_stream(stream)), "cross_entropy_partial_tree kernel launch");
    });
}

sw_status api_cross_entropy_combine(int32_t ordinal, const CrossEntropyCombineArgs& a, void* stream, std::string* err) {
    return run(err, "cross_entropy_combine", [&] {
        if (a.parts < 1 || a.rows < 0)
            fail(SW_ERR_INVALID_ARGUMENT, "parts = ", a.parts, ", rows = ", a.rows, "; expected parts >= 1, rows >= 0");
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.stats, "stats");
        need(a.ids, "ids");
        need(a.lse, "lse");
        need(a.loss, "loss");
        check_cuda(launch_cross_entropy_combine(a, as_stream(stream)), "cross_entropy_combine kernel launch");
    });
}

sw_status api_cross_entropy_backward(int32_t ordinal, const CrossEntropyBackwardArgs& a, void* stream, std::string* err) {
    return run(err, "cross_entropy_backward", [&] {
        require_rows_shape(a.rows, a.cols, a.ld);
        set_device(ordinal);
        if (a.rows == 0) return;
        need(a.logits, "logits");
        need(a.ids, "ids");
        need(a.lse, "lse");
        need(a.dloss, "dloss");
        need(a.dlogits, "dlogits");
        check_cuda(launch_cross_entropy_backward(a, as_stream(stream)), "cross_entropy_backward kernel launch");
    });
}

// ------------------------------------------------------------------------------------------ optimizers (ABI 7)
// The core validated the descriptions (core/api.cpp); the checks here keep a malformed table call from reaching a
// kernel.
sw_status api_sgd_step(int32_t ordinal, const SgdArgs& a, void* stream, std::string* err) {
    return run(err, "sgd_step", [&] {
        if (!training_type(a.grad_type))
            fail(SW_ERR_UNSUPPORTED, "sgd_step with a gradient of dtype ", dtype_name(a.grad_type),
                 " is not supported (f32, f16, bf16)");
        if (!a.momentum_buf && (a.momentum != 0.0f || a.nesterov))
            fail(SW_ERR_INVALID_ARGUMENT, "momentum = ", a.momentum, a.nesterov ? " (nesterov)" : "",
                 " without a momentum buffer");
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.param, "param");
        need(a.grad, "grad");
        check_cuda(launch_sgd_step(a, as_stream(stream)), "sgd_step kernel launch");
    });
}

sw_status api_adamw_step(int32_t ordinal, const AdamWArgs& a, void* stream, std::string* err) {
    return run(err, "adamw_step", [&] {
        if (!training_type(a.grad_type))
            fail(SW_ERR_UNSUPPORTED, "adamw_step with a gradient of dtype ", dtype_name(a.grad_type),
                 " is not supported (f32, f16, bf16)");
        if (!(a.bias1 > 0.0f) || !(a.bias2 > 0.0f))
            fail(SW_ERR_INVALID_ARGUMENT, "bias corrections ", a.bias1, ", ", a.bias2, "; expected > 0");
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.param, "param");
        need(a.grad, "grad");
        need(a.m, "m");
        need(a.v, "v");
        check_cuda(launch_adamw_step(a, as_stream(stream)), "adamw_step kernel launch");
    });
}

sw_status api_sum_squares(int32_t ordinal, const SumSquaresArgs& a, void* stream, std::string* err) {
    return run(err, "sum_squares", [&] {
        if (!training_type(a.dtype))
            fail(SW_ERR_UNSUPPORTED, "sum_squares of dtype ", dtype_name(a.dtype), " is not supported (f32, f16, bf16)");
        set_device(ordinal);
        if (a.count == 0 && a.accumulate) return; // adds nothing
        need(a.out, "out");
        if (a.count > 0) need(a.x, "x");
        // Queues one kernel, or (large counts) a stream-ordered scratch allocation, two kernels and its free.
        check_cuda(launch_sum_squares(a, as_stream(stream)), "sum_squares kernel launch (or its scratch allocation)");
    });
}

sw_status api_scale(int32_t ordinal, const ScaleArgs& a, void* stream, std::string* err) {
    return run(err, "scale", [&] {
        if (!training_type(a.dtype))
            fail(SW_ERR_UNSUPPORTED, "scale of dtype ", dtype_name(a.dtype), " is not supported (f32, f16, bf16)");
        if (!std::isfinite(a.alpha)) fail(SW_ERR_INVALID_ARGUMENT, "alpha (", a.alpha, ") must be finite");
        set_device(ordinal);
        if (a.count == 0) return;
        need(a.x, "x");
        check_cuda(launch_scale(a, as_stream(stream)), "scale kernel launch");
    });
}

// ------------------------------------------------------------------------------------------ gemm
void validate_gemm(const GemmProblem& d, GemmAlgo algo) {
    if (!gemm_types_defined(d.a_type, d.b_type, d.c_type) || d.bias_type != d.c_type || d.accum_type != SW_DTYPE_F32)
        fail(SW_ERR_UNSUPPORTED, "a = ", dtype_name(d.a_type), ", b = ", dtype_name(d.b_type), ", c = ",
             dtype_name(d.c_type), ", bias = ", dtype_name(d.bias_type), ", accumulation = ", dtype_name(d.accum_type),
             " is not supported (a = b, bias = c, fp32 accumulation; a/c: f32/f32, f16/f16, bf16/bf16, f16/f32, bf16/f32)");
    if (d.m < 1 || d.n < 1 || d.k < 0)
        fail(SW_ERR_INVALID_ARGUMENT, "m (", d.m, ") and n (", d.n, ") must be >= 1 and k (", d.k, ") >= 0");
    if (d.epilogue != SW_EPILOGUE_NONE && d.epilogue != SW_EPILOGUE_GELU)
        fail(SW_ERR_INVALID_ARGUMENT, "epilogue ", static_cast<int>(d.epilogue), " is not a sw_epilogue");
    if (algo != GemmAlgo::Auto && algo != GemmAlgo::CublasLt && algo != GemmAlgo::HandWritten &&
        algo != GemmAlgo::Wgmma)
        fail(SW_ERR_INVALID_ARGUMENT, "algo ", static_cast<int>(algo), " is not a GemmAlgo");
    if (d.k_leaf < 0 || d.k_leaf % 2 != 0 || d.k_leaf > (int64_t{1} << 24))
        fail(SW_ERR_INVALID_ARGUMENT, "k_leaf (", d.k_leaf, ") must be 0 (the default order) or even, 2..2^24 (the tree "
             "reduction)");
    // The tree reduction runs the tree kernel, which takes every type combination, whatever the algorithm.
    if (d.k_leaf == 0 && (algo == GemmAlgo::HandWritten || algo == GemmAlgo::Wgmma) && d.a_type != SW_DTYPE_F16 &&
        d.a_type != SW_DTYPE_BF16)
        fail(SW_ERR_UNSUPPORTED, "the hand-written GEMM (\"", algo == GemmAlgo::Wgmma ? "wgmma" : "mma",
             "\") takes f16 or bf16 inputs: a = ", dtype_name(d.a_type), ", b = ", dtype_name(d.b_type), ", c = ",
             dtype_name(d.c_type), " runs on \"cublaslt\" (or \"auto\")");
    need(d.c, "c");
    if (d.ldc < d.n) fail(SW_ERR_INVALID_ARGUMENT, "ldc (", d.ldc, ") is less than n (", d.n, ")");
    const uint32_t ab = dtype_bytes(d.a_type), cb = dtype_bytes(d.c_type);
    checked_extent(d.m, d.n, d.ldc, cb, "C");
    if (d.k > 0) {
        need(d.a, "a");
        need(d.b, "b");
        const int64_t a_rows = d.trans_a ? d.k : d.m, a_cols = d.trans_a ? d.m : d.k;
        const int64_t b_rows = d.trans_b ? d.n : d.k, b_cols = d.trans_b ? d.k : d.n;
        if (d.lda < a_cols)
            fail(SW_ERR_INVALID_ARGUMENT, "lda (", d.lda, ") is less than ", d.trans_a ? "m (" : "k (", a_cols, ")");
        if (d.ldb < b_cols)
            fail(SW_ERR_INVALID_ARGUMENT, "ldb (", d.ldb, ") is less than ", d.trans_b ? "k (" : "n (", b_cols, ")");
        checked_extent(a_rows, a_cols, d.lda, ab, "A");
        checked_extent(b_rows, b_cols, d.ldb, ab, "B");
    }
    // Element alignment (pointers come from element offsets; anything else is a caller bug).
    if (reinterpret_cast<uintptr_t>(d.c) % cb != 0 || (d.bias && reinterpret_cast<uintptr_t>(d.bias) % cb != 0) ||
        (d.k > 0 && (reinterpret_cast<uintptr_t>(d.a) % ab != 0 || reinterpret_cast<uintptr_t>(d.b) % ab != 0)))
        fail(SW_ERR_INVALID_ARGUMENT, "a matrix or bias pointer is not aligned to its element size");
}

void mma_gemm(int32_t ordinal, const GemmProblem& d, cudaStream_t s) {
    if (d.a_type != SW_DTYPE_F16 && d.a_type != SW_DTYPE_BF16)
        fail(SW_ERR_UNSUPPORTED, "the hand-written GEMM takes f16 or bf16 inputs, not ", dtype_name(d.a_type));
    const int cc = compute_capability(ordinal);
    if (cc < 80)
        fail(SW_ERR_UNSUPPORTED, "the hand-written GEMM needs compute capability 8.0 or later; device ", ordinal,
             " has ", cc / 10, ".", cc % 10);
    const std::string shape = mma_gemm_shape_problem(d.m, d.n);
    if (!shape.empty()) fail(SW_ERR_UNSUPPORTED, "the hand-written GEMM cannot take this shape: ", shape);
    check_cuda(launch_mma_gemm(d, false, s), "hand-written GEMM kernel launch");
}

// Does `ordinal` run the plugin's sm_90a code (the wgmma kernel)? Compute capability 9.0 and a plugin built with
// architecture 90a, as the device itself reports it: a one-thread probe kernel, once per device, on a stream of its
// own, writing into mapped pinned memory that is never freed (cudaFree/cudaFreeHost could wait for the whole device).
// Caller: current device = ordinal.
bool wgmma_available(int32_t ordinal) {
    static std::mutex mutex;
    static std::vector<int8_t> known; // 0 not asked, 1 yes, -1 no
    std::lock_guard<std::mutex> lock(mutex);
    known.resize(static_cast<size_t>(std::max<int32_t>(device_count(), ordinal + 1)), 0);
    int8_t& k = known[static_cast<size_t>(ordinal)];
    if (k != 0) return k > 0;
    if (compute_capability(ordinal) != 90) {
        k = -1;
        return false;
    }
    int* host = nullptr;
    int* dev = nullptr;
    check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(int), cudaHostAllocMapped), "cudaHostAlloc (wgmma probe)");
    check_cuda(cudaHostGetDevicePointer(reinterpret_cast<void**>(&dev), host, 0), "cudaHostGetDevicePointer (wgmma probe)");
    *host = -1;
    cudaStream_t probe = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&probe, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (wgmma probe)");
    const cudaError_t launched = launch_wgmma_probe(dev, probe);
    const cudaError_t synced = launched == cudaSuccess ? cudaStreamSynchronize(probe) : launched;
    (void)cudaStreamDestroy(probe);
    check_cuda(launched, "wgmma probe kernel launch");
    check_cuda(synced, "wgmma probe kernel");
    k = *static_cast<volatile int*>(host) == 1 ? 1 : -1;
    return k > 0;
}

void wgmma_gemm(int32_t ordinal, const GemmProblem& d, cudaStream_t s) {
    if (!wgmma_available(ordinal))
        fail(SW_ERR_UNSUPPORTED, "the wgmma GEMM needs a compute capability 9.0 GPU and a plugin built for sm_90a "
             "(CUDA 12 or later, architecture 90a); device ", ordinal, " (compute capability ",
             compute_capability(ordinal) / 10, ".", compute_capability(ordinal) % 10, ") does not run sm_90a code "
             "of this plugin; the \"mma\" kernel runs there");
    const std::string shape = mma_gemm_shape_problem(d.m, d.n);
    if (!shape.empty()) fail(SW_ERR_UNSUPPORTED, "the wgmma GEMM cannot take this shape: ", shape);
    check_cuda(launch_mma_gemm(d, true, s), "wgmma GEMM kernel launch");
}

sw_status api_gemm(int32_t ordinal, const GemmProblem* problem, GemmAlgo algo, void* stream, std::string* err) {
    return run(err, "gemm", [&] {
        const GemmProblem& d = *need(problem, "problem");
        validate_gemm(d, algo);
        set_device(ordinal);
        const cudaStream_t s = as_stream(stream);
        if (d.k_leaf > 0) { // TP-invariant numerics: the tree kernel, k == 0 included (T = 0 through the epilogue)
            check_cuda(launch_tree_gemm(d, s), "tree GEMM kernel launch");
            return;
        }
        if (d.k == 0) { // C = act(beta * C + bias): no product
            check_cuda(launch_scale_bias_act(d.c_type, d.c, d.ldc, d.m, d.n, d.beta, d.bias,
                                             d.epilogue == SW_EPILOGUE_GELU, s),
                       "GEMM (k = 0) epilogue kernel launch");
            return;
        }
        switch (algo) {
        case GemmAlgo::HandWritten: mma_gemm(ordinal, d, s); return;
        case GemmAlgo::Wgmma: wgmma_gemm(ordinal, d, s); return;
        case GemmAlgo::CublasLt: cublaslt_gemm(ordinal, d, s); return;
        case GemmAlgo::Auto:
            try {
                cublaslt_gemm(ordinal, d, s);
            } catch (const Error& e) {
                // No cuBLASLt algorithm: the hand-written kernel when it can take the problem.
                if (e.status() != SW_ERR_UNSUPPORTED || (d.a_type != SW_DTYPE_F16 && d.a_type != SW_DTYPE_BF16) ||
                    compute_capability(ordinal) < 80 || !mma_gemm_shape_problem(d.m, d.n).empty())
                    throw;
                mma_gemm(ordinal, d, s);
            }
            return;
        }
    });
}

const PluginApi kApi = {
    kPluginAbi,
    api_versions,
    api_device_count,
    api_device_info,
    api_enable_peer_access,
    api_malloc_device,
    api_free_device,
    api_malloc_host,
    api_free_host,
    api_pointer_device,
    api_stream_create,
    api_stream_destroy,
    api_stream_synchronize,
    api_stream_wait_event,
    api_event_create,
    api_event_destroy,
    api_event_record,
    api_event_synchronize,
    api_event_query,
    api_event_elapsed_ms,
    api_memcpy_async,
    api_memset_async,
    api_gemm,
    api_copy_2d,
    api_reduce_sum,
    api_convert,
    api_bias_act,
    api_stream_wait_flag,
    api_gelu_backward,
    api_set_device,
    api_release_stream,
    api_unscale_check,
    api_axpy,
    api_softmax,
    api_softmax_backward,
    api_norm,
    api_norm_backward,
    api_activation,
    api_activation_backward,
    api_glu,
    api_glu_backward,
    api_dropout,
    api_embedding,
    api_embedding_backward,
    api_cross_entropy_partial,
    api_cross_entropy_combine,
    api_cross_entropy_backward,
    api_sgd_step,
    api_adamw_step,
    api_sum_squares,
    api_scale,
    api_cross_entropy_partial_tree,
};

} // namespace
} // namespace sw::cuda

extern "C" SW_API const sw::cuda::PluginApi* sw_cuda_plugin_api(void) { return &sw::cuda::kApi; }
