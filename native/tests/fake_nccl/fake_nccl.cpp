// A host-memory stand-in for NCCL (libnccl.so.2's symbols that Shardwise uses), paired with the emulated CUDA plugin:
// a "cudaStream_t" is a sw::cpu::Stream*, "device memory" is host memory. Each collective is queued on the stream and,
// when the stream reaches it, waits for every rank's matching call (the n-th call of each rank), then moves its
// rank's share of the data — as an NCCL kernel would. It lets the core's NCCL paths (agreement, ordering into streams,
// grouped uneven collectives, watchdog, abort) run in CI; it proves nothing about real NCCL, which needs GPUs.
#include "cpu/stream.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#define FAKE_API extern "C" __attribute__((visibility("default")))

namespace {

struct UniqueId {
    char internal[128];
};

enum { kSuccess = 0, kInvalidArgument = 4, kInvalidUsage = 5 };
enum { kInt32 = 2, kFloat32 = 7, kFloat64 = 8, kUint8 = 1 };

struct Call {
    int kind = 0; // 1 all-reduce, 2 all-gather, 3 reduce-scatter, 4 broadcast, 5 reduce
    const char* send = nullptr;
    char* recv = nullptr;
    size_t count = 0;
    int type = 0, root = 0;
};

struct Slot {
    std::vector<Call> calls;
    int arrived = 0, computed = 0, departed = 0, left = 0;
};

struct Group {
    int world = 0;
    std::mutex mu;
    std::condition_variable cv;
    std::map<uint64_t, Slot> slots;
    // Per rank, as ncclCommAbort works per communicator: an aborted rank's work returns at once; the others' work keeps
    // waiting (never reading an aborted rank's buffers) until their own communicator is aborted, as with NCCL.
    std::vector<char> aborted;
    bool broken = false; // some rank aborted: no collective completes any more
};

std::mutex g_mu;
std::map<std::string, std::shared_ptr<Group>> g_groups;
std::atomic<uint64_t> g_ids{1};

struct Comm {
    std::shared_ptr<Group> group;
    int rank = 0;
    uint64_t next = 0;
    std::atomic<bool> freed{false}; // by ncclCommAbort or ncclCommDestroy (kept, never reused, so a later use is caught)
};

// As in NCCL, ncclCommAbort and ncclCommDestroy free the communicator: any later call with it is a use after free.
// The stand-in keeps the memory and stops the process instead, naming the call.
Comm* live(void* handle, const char* call) {
    auto* c = static_cast<Comm*>(handle);
    if (c && c->freed) {
        std::fprintf(stderr, "fake NCCL: %s called on a communicator already freed by ncclCommAbort/ncclCommDestroy\n", call);
        std::abort();
    }
    return c;
}

size_t type_size(int t) { return t == kFloat64 ? 8 : t == kUint8 ? 1 : 4; }

template <class T>
void sum(const Slot& s, int world, size_t offset, size_t n, char* out) {
    for (size_t i = 0; i < n; ++i) {
        T acc = reinterpret_cast<const T*>(s.calls[0].send)[offset + i];
        for (int q = 1; q < world; ++q) acc += reinterpret_cast<const T*>(s.calls[q].send)[offset + i];
        reinterpret_cast<T*>(out)[i] = acc;
    }
}

void reduce(const Slot& s, int world, int type, size_t offset, size_t n, char* out) {
    if (type == kFloat64) sum<double>(s, world, offset, n, out);
    else if (type == kInt32) sum<int32_t>(s, world, offset, n, out);
    else sum<float>(s, world, offset, n, out);
}

// Groups, as in NCCL: per thread, ncclGroupStart/End nest; calls made inside a group are launched by the outermost
// ncclGroupEnd (a thread that never closes its group launches nothing any more); a call that fails inside a group
// makes that ncclGroupEnd fail and drop the group.
thread_local int t_depth = 0;
thread_local int t_group_error = kSuccess;
thread_local std::vector<std::function<void()>> t_pending;

void launch(Comm* comm, void* stream, Call call);

// Queues `call` for comm on stream (at the outermost ncclGroupEnd inside a group); the stream runs it when every rank
// has queued its own.
int enqueue(void* comm_handle, void* stream, Call call) {
    auto* comm = live(comm_handle, "a collective");
    int rc = kSuccess;
    if (!comm || !stream) rc = kInvalidArgument;
    else if (call.type != kFloat32 && call.type != kFloat64 && call.type != kInt32 && !(call.type == kUint8 && (call.kind == 2 || call.kind == 4)))
        rc = kInvalidArgument;
    if (rc != kSuccess) {
        if (t_depth > 0 && t_group_error == kSuccess) t_group_error = rc;
        return rc;
    }
    if (t_depth > 0) t_pending.push_back([comm, stream, call] { launch(comm, stream, call); });
    else launch(comm, stream, call);
    return kSuccess;
}

void launch(Comm* comm, void* stream, Call call) {
    const uint64_t seq = comm->next++;
    auto group = comm->group;
    const int rank = comm->rank;
    static_cast<sw::cpu::Stream*>(stream)->enqueue([group, rank, seq, call] {
        std::unique_lock<std::mutex> lock(group->mu);
        Slot& s = group->slots[seq];
        if (s.calls.empty()) s.calls.resize(group->world);
        s.calls[rank] = call;
        ++s.arrived;
        group->cv.notify_all();
        // Like a kernel waiting for its peers: released by them or by ncclCommAbort.
        group->cv.wait(lock, [&] { return group->aborted[rank] || (s.arrived == group->world && !group->broken); });
        if (group->aborted[rank]) return;
        lock.unlock();
        // Every rank computes its result into a buffer of its own first (sends and receives may alias, as NCCL allows
        // in place), then all write, then all leave: no rank reads a send buffer that another is writing.
        const size_t esz = type_size(call.type);
        const int p = group->world;
        std::vector<char> out;
        char* dst = call.recv;
        switch (call.kind) {
        case 1: out.resize(call.count * esz); reduce(s, p, call.type, 0, call.count, out.data()); break;
        case 2:
            out.resize(p * call.count * esz);
            for (int q = 0; q < p; ++q) std::memcpy(out.data() + q * call.count * esz, s.calls[q].send, call.count * esz);
            break;
        case 3: out.resize(call.count * esz); reduce(s, p, call.type, rank * call.count, call.count, out.data()); break;
        case 4: out.assign(s.calls[call.root].send, s.calls[call.root].send + call.count * esz); break;
        case 5:
            if (rank == call.root) {
                out.resize(call.count * esz);
                reduce(s, p, call.type, 0, call.count, out.data());
            }
            break;
        }
        lock.lock();
        ++s.computed;
        group->cv.notify_all();
        group->cv.wait(lock, [&] { return group->aborted[rank] || (s.computed == group->world && !group->broken); });
        if (group->aborted[rank]) return;
        lock.unlock();
        if (!out.empty()) std::memcpy(dst, out.data(), out.size());
        lock.lock();
        ++s.departed;
        group->cv.notify_all();
        group->cv.wait(lock, [&] { return group->aborted[rank] || s.departed == group->world; });
        if (group->aborted[rank]) return;
        if (++s.left == group->world) group->slots.erase(seq); // the last one out
    });
}

} // namespace

FAKE_API int ncclGetVersion(int* v) {
    *v = 21803; // 2.18.3
    return kSuccess;
}
FAKE_API int ncclGetUniqueId(UniqueId* id) {
    std::memset(id->internal, 0, sizeof id->internal);
    const uint64_t n = g_ids++;
    std::memcpy(id->internal, "fake-nccl", 9);
    std::memcpy(id->internal + 16, &n, sizeof n);
    return kSuccess;
}
FAKE_API int ncclCommInitRank(void** comm, int nranks, UniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks) return kInvalidArgument;
    std::lock_guard<std::mutex> lock(g_mu);
    auto& g = g_groups[std::string(id.internal, sizeof id.internal)];
    if (!g) {
        g = std::make_shared<Group>();
        g->world = nranks;
        g->aborted.assign(nranks, 0);
    }
    if (g->world != nranks) return kInvalidUsage;
    *comm = new Comm{g, rank, 0};
    return kSuccess;
}
FAKE_API int ncclCommDestroy(void* comm) {
    if (auto* c = live(comm, "ncclCommDestroy")) c->freed = true;
    return kSuccess;
}
FAKE_API int ncclCommAbort(void* comm) {
    if (!comm) return kSuccess;
    auto* c = live(comm, "ncclCommAbort");
    {
        std::lock_guard<std::mutex> lock(c->group->mu);
        c->freed = true;
        c->group->aborted[c->rank] = 1;
        c->group->broken = true;
        c->group->cv.notify_all();
    }
    return kSuccess;
}
FAKE_API int ncclCommGetAsyncError(void* comm, int* e) {
    auto* c = live(comm, "ncclCommGetAsyncError");
    std::lock_guard<std::mutex> lock(c->group->mu);
    *e = c->group->aborted[c->rank] ? 6 /* ncclRemoteError */ : kSuccess;
    return kSuccess;
}
FAKE_API int ncclCommCount(void* comm, int* n) {
    *n = live(comm, "ncclCommCount")->group->world;
    return kSuccess;
}
FAKE_API int ncclCommUserRank(void* comm, int* r) {
    *r = live(comm, "ncclCommUserRank")->rank;
    return kSuccess;
}
FAKE_API int ncclAllReduce(const void* s, void* r, size_t n, int t, int op, void* comm, void* stream) {
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {1, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0});
}
FAKE_API int ncclAllGather(const void* s, void* r, size_t n, int t, void* comm, void* stream) {
    return enqueue(comm, stream, {2, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0});
}
FAKE_API int ncclReduceScatter(const void* s, void* r, size_t n, int t, int op, void* comm, void* stream) {
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {3, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0});
}
FAKE_API int ncclBroadcast(const void* s, void* r, size_t n, int t, int root, void* comm, void* stream) {
    return enqueue(comm, stream, {4, static_cast<const char*>(s), static_cast<char*>(r), n, t, root});
}
FAKE_API int ncclReduce(const void* s, void* r, size_t n, int t, int op, int root, void* comm, void* stream) {
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {5, static_cast<const char*>(s), static_cast<char*>(r), n, t, root});
}
FAKE_API int ncclGroupStart() {
    ++t_depth;
    return kSuccess;
}
FAKE_API int ncclGroupEnd() {
    if (t_depth == 0) return kInvalidUsage;
    if (--t_depth > 0) return kSuccess;
    std::vector<std::function<void()>> calls;
    calls.swap(t_pending);
    const int rc = t_group_error;
    t_group_error = kSuccess;
    if (rc != kSuccess) return rc;
    for (auto& c : calls) c();
    return kSuccess;
}
FAKE_API const char* ncclGetErrorString(int e) { return e == 0 ? "no error" : "fake NCCL error"; }
