// A host-memory stand-in for NCCL (libnccl.so.2's symbols that Shardwise uses), paired with the emulated CUDA plugin:
// a "cudaStream_t" is a sw::cpu::Stream*, "device memory" is host memory. Each collective is queued on the stream and,
// when the stream reaches it, waits for every rank's matching call (the n-th call of each rank), then moves its
// rank's share of the data — as an NCCL kernel would. It lets the core's NCCL paths (agreement, ordering into streams,
// grouped uneven collectives, watchdog, abort) run in CI; it proves nothing about real NCCL, which needs GPUs.
//
// Communicator creation as in NCCL: ncclCommInitRank blocks until every rank of the unique id has called in (a
// 60 s safety limit instead of NCCL's forever), inside a group until ncclGroupEnd. ncclCommInitRankConfig (NCCL 2.14+)
// reads the caller's ncclConfig_t as NCCL 2.17+ does (size, magic, version; see parse_config) and, with blocking = 0,
// makes a non-blocking communicator: ncclCommInitRankConfig returns ncclInProgress, and ncclCommGetAsyncError says
// ncclInProgress until every rank has arrived. On a non-blocking communicator a collective outside a group and
// ncclGroupEnd return ncclInProgress and launch their work a little later from a thread of their own (NCCL does so
// when it must connect first); until that is done, the communicator refuses other calls with ncclInvalidArgument
// (NCCL's ncclCommEnsureReady), so a caller that does not wait for ncclSuccess fails, and its later stream work would
// run before the collective's. Built with FAKE_NCCL_NO_CONFIG it is an NCCL 2.13 without ncclCommInitRankConfig.
//
// Element types: f32, f64, i32, u8 (gathers and broadcasts only), f16 and bf16. Its f16/bf16 sums round every partial
// sum to 16 bits, as NCCL's ring may: they are NOT the rank-order fp32 sum rounded once that Shardwise promises, so a
// Shardwise that used NCCL's own 16-bit reductions would fail nccl_check's bit-for-bit comparisons. ncclSend/ncclRecv
// (NCCL 2.7+): a group's point-to-point calls on one communicator run as one unit on the stream (posts all its sends,
// then takes its receives, then waits until its sends were taken), so grouped exchanges in both directions cannot
// deadlock; the n-th send from a to b matches the n-th receive of b from a, and the sizes must agree.
// ncclCommSplit (2.18+; not in the FAKE_NCCL_NO_CONFIG build): collective over the parent's ranks, new groups per color.
// FAKE_NCCL_REFUSE_F16 (set, test only): every f16 call is refused with ncclInvalidArgument (a call NCCL refuses).
#include "cpu/stream.h"
#include "../float16_ref.h"

#include <atomic>
#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#define FAKE_API extern "C" __attribute__((visibility("default")))

namespace {

struct UniqueId {
    char internal[128];
};

enum { kSuccess = 0, kSystemError = 2, kInvalidArgument = 4, kInvalidUsage = 5, kRemoteError = 6, kInProgress = 7 };
enum { kInt32 = 2, kFloat32 = 7, kFloat64 = 8, kUint8 = 1, kFloat16 = 6, kBfloat16 = 9 };

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

// A posted send: the n-th ncclSend from one rank to another, waiting for the matching ncclRecv to take it.
struct Post {
    const char* data = nullptr;
    size_t bytes = 0;
    bool taken = false;
};

struct Group {
    int world = 0;
    std::mutex mu;
    std::condition_variable cv;
    std::map<uint64_t, Slot> slots;
    std::map<std::tuple<int, int, uint64_t>, Post> posts; // (from, to, n)
    // Per rank, as ncclCommAbort works per communicator: an aborted rank's work returns at once; the others' work keeps
    // waiting (never reading an aborted rank's buffers) until their own communicator is aborted, as with NCCL.
    std::vector<char> aborted;
    bool broken = false; // some rank aborted: no collective completes any more
    // Initialization: the ranks that have called in; done when all have. If a rank was aborted before then, the
    // others' initialization fails (ncclRemoteError) when the last one arrives, as NCCL's bootstrap fails to reach it.
    std::vector<char> joined;
    int joined_count = 0;
    bool init_failed = false;
    // ncclCommSplit: the n-th split of the group, collective over every rank: each rank's (color, key), and the new
    // groups once every rank has called (per color; a rank's place in its new group).
    struct Split {
        std::map<int, std::pair<int, int>> calls; // rank -> (color, key)
        std::map<int, std::shared_ptr<Group>> made;
        std::map<int, int> place;
    };
    std::map<uint64_t, Split> splits;
};

// Work a non-blocking communicator finishes on a thread of its own (see start_job).
struct Job {
    std::mutex mu;
    std::thread thread;
    void join() {
        std::lock_guard<std::mutex> lock(mu);
        if (thread.joinable()) thread.join();
    }
};

std::mutex g_mu;
std::map<std::string, std::shared_ptr<Group>> g_groups;
std::atomic<uint64_t> g_ids{1};

struct Comm {
    std::shared_ptr<Group> group;
    int rank = 0;
    bool blocking = true;
    uint64_t next = 0;
    std::atomic<bool> freed{false}; // by ncclCommAbort or ncclCommDestroy (kept, never reused, so a later use is caught)
    bool busy = false;              // guarded by group->mu: a Job of this communicator has not finished (ncclInProgress)
    std::shared_ptr<Job> job;       // the latest one
    std::vector<uint64_t> sent, received; // per peer: point-to-point calls launched so far (their sequence numbers)
    uint64_t splits = 0;                  // ncclCommSplit calls so far
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

// The group of a unique id, made by its first rank; null if nranks differs from the group's.
std::shared_ptr<Group> group_of(const UniqueId& id, int nranks) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto& g = g_groups[std::string(id.internal, sizeof id.internal)];
    if (!g) {
        g = std::make_shared<Group>();
        g->world = nranks;
        g->aborted.assign(nranks, 0);
        g->joined.assign(nranks, 0);
    }
    return g->world == nranks ? g : nullptr;
}

// Rank c joins its group's initialization.
int join(Comm* c) {
    Group& g = *c->group;
    std::lock_guard<std::mutex> lock(g.mu);
    if (g.joined[c->rank]) {
        std::fprintf(stderr, "fake NCCL: rank %d of the unique id joined twice\n", c->rank);
        return kInvalidUsage;
    }
    g.joined[c->rank] = 1;
    if (++g.joined_count == g.world && g.broken) g.init_failed = true;
    g.cv.notify_all();
    return kSuccess;
}

// The state ncclCommGetAsyncError reports for c (requires c->group->mu).
int state_locked(const Comm* c) {
    const Group& g = *c->group;
    if (g.aborted[c->rank]) return kRemoteError;
    if (c->busy || g.joined_count < g.world) return kInProgress;
    return g.init_failed ? kRemoteError : kSuccess;
}

// A blocking initialization: waits until every rank has joined.
int wait_init(Comm* c) {
    Group& g = *c->group;
    std::unique_lock<std::mutex> lock(g.mu);
    if (!g.cv.wait_for(lock, std::chrono::seconds(60), [&] { return g.joined_count == g.world; })) {
        std::fprintf(stderr, "fake NCCL: blocking initialization of rank %d of %d: not every rank called in within 60 s "
                             "(real NCCL would wait forever)\n", c->rank, g.world);
        return kSystemError;
    }
    return state_locked(c);
}

// NCCL's ncclCommEnsureReady: a communicator whose last operation has not returned ncclSuccess refuses new work.
int ensure_ready(Comm* c, const char* call) {
    std::lock_guard<std::mutex> lock(c->group->mu);
    const int state = state_locked(c);
    if (state == kSuccess) return kSuccess;
    std::fprintf(stderr, "fake NCCL: %s on rank %d's communicator while its last operation %s (NCCL refuses it)\n", call,
                 c->rank, state == kInProgress ? "is still in progress" : "failed");
    return state == kInProgress ? kInvalidArgument : state;
}

// Runs `work` for non-blocking communicators as NCCL runs a launch that must wait (for a connection, a peer) on a
// thread of its own: the communicators report ncclInProgress until it is done. A short delay first, so that a
// caller that goes on without waiting for ncclSuccess is caught.
void start_job(const std::vector<Comm*>& comms, std::function<void()> work) {
    auto job = std::make_shared<Job>();
    for (Comm* c : comms) {
        if (c->job) c->job->join(); // finished: the communicator was ready
        std::lock_guard<std::mutex> lock(c->group->mu);
        c->busy = true;
        c->job = job;
    }
    std::lock_guard<std::mutex> lock(job->mu);
    job->thread = std::thread([comms, work = std::move(work)] {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        work();
        for (Comm* c : comms) {
            std::lock_guard<std::mutex> l(c->group->mu);
            c->busy = false;
            c->group->cv.notify_all();
        }
    });
}

size_t type_size(int t) { return t == kFloat64 ? 8 : t == kUint8 ? 1 : t == kFloat16 || t == kBfloat16 ? 2 : 4; }

// 16-bit sums as a ring may compute them: every partial sum rounded to 16 bits (not Shardwise's promise; see the top).
void sum16(const Slot& s, int world, bool bf16, size_t offset, size_t n, char* out) {
    for (size_t i = 0; i < n; ++i) {
        uint16_t acc = reinterpret_cast<const uint16_t*>(s.calls[0].send)[offset + i];
        for (int q = 1; q < world; ++q)
            acc = sw_ref_round16(bf16, sw_ref_to_float16(bf16, acc) +
                                           sw_ref_to_float16(bf16, reinterpret_cast<const uint16_t*>(s.calls[q].send)[offset + i]));
        reinterpret_cast<uint16_t*>(out)[i] = acc;
    }
}

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
    else if (type == kInt32) sum<uint32_t>(s, world, offset, n, out); // wraps around as NCCL does (no signed overflow)
    else if (type == kFloat16 || type == kBfloat16) sum16(s, world, type == kBfloat16, offset, n, out);
    else sum<float>(s, world, offset, n, out);
}

// Groups, as in NCCL: per thread, ncclGroupStart/End nest; calls made inside a group are launched by the outermost
// ncclGroupEnd (a thread that never closes its group launches nothing any more); a call that fails inside a group
// makes that ncclGroupEnd fail and drop the group.
struct P2pOp {
    bool send = false;
    int peer = 0;
    const char* sbuf = nullptr;
    char* rbuf = nullptr;
    size_t bytes = 0;
};
struct Pending {
    Comm* comm;
    bool init; // a communicator's initialization (else a collective's launch)
    std::function<void()> run;
    // Point-to-point calls of this group on (comm, stream): launched together as one unit (launch_p2p).
    std::shared_ptr<std::vector<P2pOp>> p2p = nullptr;
    void* stream = nullptr;
};
thread_local int t_depth = 0;
thread_local int t_group_error = kSuccess;
thread_local std::vector<Pending> t_pending;

void launch(Comm* comm, void* stream, Call call);
void launch_p2p(Comm* comm, void* stream, const std::vector<P2pOp>& ops);

bool type_ok(int type, int kind) {
    if (type == kFloat16 && std::getenv("FAKE_NCCL_REFUSE_F16")) return false; // test only: a call NCCL refuses
    return type == kFloat32 || type == kFloat64 || type == kInt32 || type == kFloat16 || type == kBfloat16 ||
           (type == kUint8 && (kind == 2 || kind == 4));
}

// Queues `call` for comm on stream (at the outermost ncclGroupEnd inside a group; a little later, from a Job, on a
// non-blocking communicator); the stream runs it when every rank has queued its own.
int enqueue(void* comm_handle, void* stream, Call call, const char* name) {
    auto* comm = live(comm_handle, name);
    int rc = kSuccess;
    if (!comm || !stream) rc = kInvalidArgument;
    else if (!type_ok(call.type, call.kind))
        rc = kInvalidArgument;
    else rc = ensure_ready(comm, name);
    if (rc != kSuccess) {
        if (t_depth > 0 && t_group_error == kSuccess) t_group_error = rc;
        return rc;
    }
    auto run = [comm, stream, call] { launch(comm, stream, call); };
    if (t_depth > 0) {
        t_pending.push_back({comm, false, run});
        return kSuccess;
    }
    if (comm->blocking) {
        run();
        return kSuccess;
    }
    start_job({comm}, run);
    return kInProgress;
}

// ncclSend / ncclRecv: inside a group, added to the group's unit for (comm, stream); outside, a unit of one.
int enqueue_p2p(void* comm_handle, void* stream, P2pOp op, int type, size_t count, const char* name) {
    auto* comm = live(comm_handle, name);
    int rc = kSuccess;
    if (!comm || !stream || op.peer < 0 || (comm && op.peer >= comm->group->world) || (comm && op.peer == comm->rank)) rc = kInvalidArgument;
    else if (!type_ok(type, 4)) rc = kInvalidArgument;
    else rc = ensure_ready(comm, name);
    if (rc != kSuccess) {
        if (t_depth > 0 && t_group_error == kSuccess) t_group_error = rc;
        return rc;
    }
    op.bytes = count * type_size(type);
    if (t_depth > 0) {
        for (auto& pending : t_pending)
            if (pending.p2p && pending.comm == comm && pending.stream == stream) {
                pending.p2p->push_back(op);
                return kSuccess;
            }
        auto ops = std::make_shared<std::vector<P2pOp>>(1, op);
        t_pending.push_back({comm, false, [comm, stream, ops] { launch_p2p(comm, stream, *ops); }, ops, stream});
        return kSuccess;
    }
    const std::vector<P2pOp> ops(1, op);
    if (comm->blocking) {
        launch_p2p(comm, stream, ops);
        return kSuccess;
    }
    start_job({comm}, [comm, stream, ops] { launch_p2p(comm, stream, ops); });
    return kInProgress;
}

// Makes a communicator: blocking, it returns when every rank has called in; non-blocking, it returns ncclInProgress.
// Inside a group the initialization waits for ncclGroupEnd.
int init(void** out, int nranks, const UniqueId& id, int rank, bool blocking) {
    if (!out) return kInvalidArgument;
    *out = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks) return kInvalidArgument;
    auto g = group_of(id, nranks);
    if (!g) return kInvalidUsage;
    auto* c = new Comm;
    c->group = g;
    c->rank = rank;
    c->sent.assign(nranks, 0);
    c->received.assign(nranks, 0);
    c->blocking = blocking;
    *out = c;
    if (t_depth > 0) {
        t_pending.push_back({c, true, [c] { join(c); }});
        return kSuccess;
    }
    const int rc = join(c);
    if (rc != kSuccess) return rc;
    return blocking ? wait_init(c) : kInProgress;
}

#ifndef FAKE_NCCL_NO_CONFIG
// ncclConfig_t as NCCL 2.18 declares it (ncclConfig_v21700 with splitShare), written here from its documented fields.
struct Config {
    size_t size;
    unsigned int magic;
    unsigned int version;
    int blocking;
    int cgaClusterSize;
    int minCTAs;
    int maxCTAs;
    const char* netName;
    int splitShare;
};
constexpr int kUndef = INT_MIN; // NCCL_CONFIG_UNDEF_INT

// Reads a caller's ncclConfig_t as NCCL 2.17+ does (src/init.cc, parseCommConfig): start from the defaults, copy
// min(config->size, sizeof(Config)) bytes over them, require magic 0xcafebeef, reset every field newer than the
// version the caller claims, then check the values. Stricter than NCCL, so that a wrong layout fails here instead of
// passing silently: the version must be at least 2.14 (NCCL would ignore blocking below it) and the size must cover
// every field of the version claimed.
int parse_config(const void* config, bool* blocking) {
    if (!config) return kInvalidArgument; // NCCL 2.19+: PtrCheck(config)
    const Config defaults{sizeof(Config), 0xcafebeef, 21803, kUndef, kUndef, kUndef, kUndef, nullptr, kUndef};
    Config c = defaults;
    size_t size = 0;
    std::memcpy(&size, config, sizeof size);
    std::memcpy(&c, config, std::min(size, sizeof c));
    if (c.magic != 0xcafebeef) {
        std::fprintf(stderr, "fake NCCL: ncclConfig_t not initialized as NCCL_CONFIG_INITIALIZER does (magic 0x%x)\n", c.magic);
        return kInvalidArgument;
    }
    const size_t need = c.version >= 21800   ? offsetof(Config, splitShare) + sizeof(int)
                        : c.version >= 21700 ? offsetof(Config, netName) + sizeof(const char*)
                                             : offsetof(Config, blocking) + sizeof(int);
    if (c.version < 21400 || size < need || size > 4096) {
        std::fprintf(stderr, "fake NCCL: ncclConfig_t of version %u with size %zu: expected version >= 21400 and a size of at "
                             "least %zu covering its fields\n", c.version, size, need);
        return kInvalidArgument;
    }
    if (c.version < 21700) {
        c.cgaClusterSize = defaults.cgaClusterSize;
        c.minCTAs = defaults.minCTAs;
        c.maxCTAs = defaults.maxCTAs;
        c.netName = defaults.netName;
    }
    const bool ok = (c.blocking == kUndef || c.blocking == 0 || c.blocking == 1) &&
                    (c.cgaClusterSize == kUndef || c.cgaClusterSize >= 0) &&
                    (c.minCTAs == kUndef || c.minCTAs > 0) && (c.maxCTAs == kUndef || c.maxCTAs > 0) && c.minCTAs <= c.maxCTAs &&
                    (c.splitShare == kUndef || c.splitShare == 0 || c.splitShare == 1);
    if (!ok) {
        std::fprintf(stderr, "fake NCCL: invalid ncclConfig_t values: blocking %d, cgaClusterSize %d, minCTAs %d, maxCTAs %d, "
                             "splitShare %d\n", c.blocking, c.cgaClusterSize, c.minCTAs, c.maxCTAs, c.splitShare);
        return kInvalidArgument;
    }
    *blocking = c.blocking != 0; // undefined: NCCL's default, blocking
    return kSuccess;
}
#endif

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
        // Test only: FAKE_NCCL_PARTIAL_WRITE=r makes rank r's all-reduces write the first half of their result and then
        // fail as a broken connection would (ncclCommGetAsyncError: ncclRemoteError); the others write all of theirs.
        const char* partial = std::getenv("FAKE_NCCL_PARTIAL_WRITE");
        if (partial && call.kind == 1 && std::atoi(partial) == rank) {
            std::memcpy(dst, out.data(), out.size() / esz / 2 * esz);
            lock.lock();
            group->aborted[rank] = 1;
            group->broken = true;
            group->cv.notify_all();
            return;
        }
        if (!out.empty()) std::memcpy(dst, out.data(), out.size());
        lock.lock();
        ++s.departed;
        group->cv.notify_all();
        group->cv.wait(lock, [&] { return group->aborted[rank] || s.departed == group->world; });
        if (group->aborted[rank]) return;
        if (++s.left == group->world) group->slots.erase(seq); // the last one out
    });
}

// One unit of point-to-point calls of a rank: numbered now (program order), run when the stream gets there.
void launch_p2p(Comm* comm, void* stream, const std::vector<P2pOp>& ops) {
    struct Numbered {
        P2pOp op;
        uint64_t n;
    };
    std::vector<Numbered> work;
    for (const P2pOp& op : ops) work.push_back({op, op.send ? comm->sent[op.peer]++ : comm->received[op.peer]++});
    auto group = comm->group;
    const int rank = comm->rank;
    static_cast<sw::cpu::Stream*>(stream)->enqueue([group, rank, work] {
        std::unique_lock<std::mutex> lock(group->mu);
        for (const Numbered& w : work)
            if (w.op.send) group->posts[{rank, w.op.peer, w.n}] = Post{w.op.sbuf, w.op.bytes, false};
        group->cv.notify_all();
        // Like NCCL's kernels: a receive waits for its send (a broken group keeps waiting until this rank is aborted).
        for (const Numbered& w : work) {
            if (w.op.send) continue;
            const auto key = std::make_tuple(w.op.peer, rank, w.n);
            group->cv.wait(lock, [&] { return group->aborted[rank] || (group->posts.count(key) && !group->broken); });
            if (group->aborted[rank]) return;
            Post& post = group->posts[key];
            if (post.bytes != w.op.bytes) {
                std::fprintf(stderr, "fake NCCL: rank %d's ncclRecv #%llu from rank %d takes %zu bytes but the ncclSend sends %zu\n",
                             rank, static_cast<unsigned long long>(w.n), w.op.peer, w.op.bytes, post.bytes);
                std::abort();
            }
            std::memcpy(w.op.rbuf, post.data, w.op.bytes);
            post.taken = true;
            group->cv.notify_all();
        }
        for (const Numbered& w : work) {
            if (!w.op.send) continue;
            const auto key = std::make_tuple(rank, w.op.peer, w.n);
            group->cv.wait(lock, [&] { return group->aborted[rank] || group->posts[key].taken; });
            if (group->aborted[rank]) return;
            group->posts.erase(key);
        }
    });
}

} // namespace

FAKE_API int ncclGetVersion(int* v) {
#ifdef FAKE_NCCL_NO_CONFIG
    *v = 21303; // 2.13.3: before ncclCommInitRankConfig
#else
    *v = 21803; // 2.18.3
#endif
    return kSuccess;
}
FAKE_API int ncclGetUniqueId(UniqueId* id) {
    std::memset(id->internal, 0, sizeof id->internal);
    const uint64_t n = g_ids++;
    std::memcpy(id->internal, "fake-nccl", 9);
    std::memcpy(id->internal + 16, &n, sizeof n);
    return kSuccess;
}
FAKE_API int ncclCommInitRank(void** comm, int nranks, UniqueId id, int rank) { return init(comm, nranks, id, rank, true); }
#ifndef FAKE_NCCL_NO_CONFIG
FAKE_API int ncclCommInitRankConfig(void** comm, int nranks, UniqueId id, int rank, void* config) {
    bool blocking = true;
    if (comm) *comm = nullptr;
    if (const int rc = parse_config(config, &blocking); rc != kSuccess) return rc;
    return init(comm, nranks, id, rank, blocking);
}
// ncclCommSplit (NCCL 2.18+): collective over every rank of comm's group (a rank that opts out passes
// NCCL_SPLIT_NOCOLOR = -1 and gets NULL); the ranks of one color form a new communicator, ordered by (key, rank). The
// new one is non-blocking when config says so (else as comm). Blocks until every rank has called (60 s limit).
FAKE_API int ncclCommSplit(void* comm, int color, int key, void** newcomm, void* config) {
    auto* c = live(comm, "ncclCommSplit");
    if (!newcomm || color < -1) return kInvalidArgument;
    *newcomm = nullptr;
    bool blocking = c->blocking;
    if (config)
        if (const int rc = parse_config(config, &blocking); rc != kSuccess) return rc;
    if (const int rc = ensure_ready(c, "ncclCommSplit"); rc != kSuccess) return rc;
    Group& g = *c->group;
    std::unique_lock<std::mutex> lock(g.mu);
    Group::Split& sp = g.splits[c->splits++];
    sp.calls[c->rank] = {color, key};
    g.cv.notify_all();
    if (!g.cv.wait_for(lock, std::chrono::seconds(60),
                       [&] { return static_cast<int>(sp.calls.size()) == g.world || g.aborted[c->rank] || g.broken; })) {
        std::fprintf(stderr, "fake NCCL: ncclCommSplit of rank %d: not every rank called in within 60 s\n", c->rank);
        return kSystemError;
    }
    if (g.aborted[c->rank] || g.broken) return kRemoteError;
    if (sp.made.empty()) { // the last to arrive sees the same calls as the others: whoever comes first builds
        std::map<int, std::vector<std::pair<int, int>>> by_color; // color -> (key, rank)
        for (const auto& [r, ck] : sp.calls)
            if (ck.first >= 0) by_color[ck.first].push_back({ck.second, r});
        for (auto& [col, v] : by_color) {
            std::sort(v.begin(), v.end());
            auto ng = std::make_shared<Group>();
            ng->world = static_cast<int>(v.size());
            ng->aborted.assign(v.size(), 0);
            ng->joined.assign(v.size(), 1);
            ng->joined_count = ng->world;
            sp.made[col] = ng;
            for (size_t i = 0; i < v.size(); ++i) sp.place[v[i].second] = static_cast<int>(i);
        }
        if (sp.made.empty()) sp.made[-1] = nullptr; // everyone opted out: mark it built
    }
    if (color < 0) return kSuccess;
    auto* nc = new Comm;
    nc->group = sp.made[color];
    nc->rank = sp.place[c->rank];
    nc->sent.assign(nc->group->world, 0);
    nc->received.assign(nc->group->world, 0);
    nc->blocking = blocking;
    *newcomm = nc;
    return kSuccess;
}
#endif

FAKE_API int ncclCommDestroy(void* comm) {
    auto* c = live(comm, "ncclCommDestroy");
    if (!c) return kSuccess;
    {
        std::lock_guard<std::mutex> lock(c->group->mu);
        if (const int state = state_locked(c); state != kSuccess) {
            // NCCL returns an error and leaves the communicator allocated: a leak the caller cannot see.
            std::fprintf(stderr, "fake NCCL: ncclCommDestroy on rank %d's communicator whose last operation %s; NCCL refuses "
                                 "it (use ncclCommAbort)\n", c->rank, state == kInProgress ? "is still in progress" : "failed");
            std::abort();
        }
    }
    if (c->job) c->job->join();
    c->freed = true;
    return kSuccess;
}
FAKE_API int ncclCommAbort(void* comm) {
    if (!comm) return kSuccess;
    auto* c = live(comm, "ncclCommAbort");
    if (c->job) c->job->join(); // as NCCL joins its init or launch thread before freeing the communicator
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
    *e = state_locked(c);
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
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {1, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0}, "ncclAllReduce");
}
FAKE_API int ncclAllGather(const void* s, void* r, size_t n, int t, void* comm, void* stream) {
    return enqueue(comm, stream, {2, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0}, "ncclAllGather");
}
FAKE_API int ncclReduceScatter(const void* s, void* r, size_t n, int t, int op, void* comm, void* stream) {
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {3, static_cast<const char*>(s), static_cast<char*>(r), n, t, 0}, "ncclReduceScatter");
}
FAKE_API int ncclBroadcast(const void* s, void* r, size_t n, int t, int root, void* comm, void* stream) {
    return enqueue(comm, stream, {4, static_cast<const char*>(s), static_cast<char*>(r), n, t, root}, "ncclBroadcast");
}
FAKE_API int ncclReduce(const void* s, void* r, size_t n, int t, int op, int root, void* comm, void* stream) {
    return op != 0 ? kInvalidArgument : enqueue(comm, stream, {5, static_cast<const char*>(s), static_cast<char*>(r), n, t, root}, "ncclReduce");
}
FAKE_API int ncclSend(const void* s, size_t n, int t, int peer, void* comm, void* stream) {
    P2pOp op;
    op.send = true;
    op.peer = peer;
    op.sbuf = static_cast<const char*>(s);
    return enqueue_p2p(comm, stream, op, t, n, "ncclSend");
}
FAKE_API int ncclRecv(void* r, size_t n, int t, int peer, void* comm, void* stream) {
    P2pOp op;
    op.peer = peer;
    op.rbuf = static_cast<char*>(r);
    return enqueue_p2p(comm, stream, op, t, n, "ncclRecv");
}
FAKE_API int ncclGroupStart() {
    ++t_depth;
    return kSuccess;
}
FAKE_API int ncclGroupEnd() {
    if (t_depth == 0) return kInvalidUsage;
    if (--t_depth > 0) return kSuccess;
    std::vector<Pending> calls;
    calls.swap(t_pending);
    const int rc = t_group_error;
    t_group_error = kSuccess;
    if (rc != kSuccess) return rc;
    if (calls.empty()) return kSuccess;
    std::vector<Comm*> comms;
    for (const auto& c : calls) {
        if (c.comm->blocking != calls[0].comm->blocking) {
            std::fprintf(stderr, "fake NCCL: blocking and non-blocking communicators in one group (NCCL refuses it)\n");
            return kInvalidArgument;
        }
        if (std::find(comms.begin(), comms.end(), c.comm) == comms.end()) comms.push_back(c.comm);
    }
    if (!calls[0].comm->blocking) { // a non-blocking group: launched (or initialized) from a thread, ncclInProgress
        start_job(comms, [calls] {
            for (const auto& c : calls) c.run();
        });
        return kInProgress;
    }
    for (const auto& c : calls) c.run();
    int result = kSuccess; // blocking initializations in the group: done when ncclGroupEnd returns
    for (const auto& c : calls)
        if (c.init)
            if (const int state = wait_init(c.comm); state != kSuccess && result == kSuccess) result = state;
    return result;
}
FAKE_API const char* ncclGetErrorString(int e) {
    switch (e) {
    case kSuccess: return "no error";
    case kSystemError: return "unhandled system error (fake NCCL)";
    case kInvalidArgument: return "invalid argument (fake NCCL)";
    case kInvalidUsage: return "invalid usage (fake NCCL)";
    case kRemoteError: return "remote process exited or there was a network error (fake NCCL)";
    case kInProgress: return "NCCL operation in progress (fake NCCL)";
    default: return "fake NCCL error";
    }
}
