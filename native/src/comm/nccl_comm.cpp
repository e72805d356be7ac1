// NCCL communicators: CUDA devices, one rank per GPU.
//
// A collective is ordered into the caller's CUDA stream exactly like an in-process CUDA collective (local_comm.cpp's
// submit: the host side runs on the stream's worker once the stream's earlier work is done, and the stream waits for
// the host side through a mapped flag). The host side first agrees with the other ranks on what is being called —
// through the in-process rendezvous (every rank in this process) or the TCP transport (one rank per process) — so
// mismatched calls fail with SW_ERR_MISMATCH and a rank that never comes fails the others with SW_ERR_TIMEOUT naming
// it, instead of NCCL hanging. Then nccl_move issues the NCCL calls on the rank's communication stream and waits for
// them, polling ncclCommGetAsyncError, the deadline and local aborts; on any of them it calls ncclCommAbort, which
// releases NCCL's kernels, so no stream hangs. Uneven collectives use grouped broadcasts (all-gather-v, column
// all-gather) and grouped reduces (reduce-scatter-v) with the counts every rank learned in the descriptor exchange.
//
// Communicators are made non-blocking when NCCL has ncclCommInitRankConfig (2.14+): ncclConfig_t with blocking = 0, so
// creation returns at once (ncclInProgress) and is polled through ncclCommGetAsyncError against the communicator's
// timeout; a rank that never comes makes the others fail with SW_ERR_TIMEOUT (their communicators aborted) instead of
// hanging in ncclCommInitRank. Without it (NCCL < 2.14) creation uses the blocking ncclCommInitRank: no deadline.
// A non-blocking communicator stays non-blocking for its whole life (NCCL has no switch back), which changes what an
// accepted NCCL call means: a collective or ncclGroupEnd may return ncclInProgress before its work is on the stream
// (NCCL finishes the launch on a thread of its own; src/group.cc, ncclGroupEndInternal), and until
// ncclCommGetAsyncError says ncclSuccess NCCL refuses every other call on that communicator with ncclInvalidArgument
// (src/init.cc, ncclCommEnsureReady; 2.14 to 2.2x). So after every top-level NCCL call (a collective outside a group,
// or ncclGroupEnd) `settle` polls until NCCL is done launching, before anything else goes on the stream (the completion
// event, the copies around the collective) or to NCCL. On a blocking communicator that is one query that says
// ncclSuccess at once.
#include "comm/comm_internal.h"
#include "comm/nccl_api.h"
#include "core/cuda_loader.h"

#include <cstring>
#include <thread>

using namespace sw;

namespace {

int nccl_type(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return kNcclFloat32;
    case SW_DTYPE_F64: return kNcclFloat64;
    case SW_DTYPE_F16: return kNcclFloat16;
    case SW_DTYPE_BF16: return kNcclBfloat16;
    case SW_DTYPE_I32: return kNcclInt32;
    case SW_DTYPE_U8: return kNcclUint8;
    default: fail(SW_ERR_UNSUPPORTED, "dtype ", sw::dtype_name(t), " has no NCCL type");
    }
}

std::string nccl_error(const NcclApi& n, void* comm, int rc) {
    std::string s = n.GetErrorString ? n.GetErrorString(rc) : "";
    s = str("ncclResult_t ", rc, s.empty() ? "" : " (" + s + ")");
    if (n.GetLastError && comm)
        if (const char* last = n.GetLastError(comm); last && *last) s += str(": ", last);
    return s;
}

// Frees device memory from a stream worker: later, from a caller's thread (see DeferredFrees).
void free_later(DeviceImpl& dev, void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(dev.deferred->mu);
    dev.deferred->pointers.push_back(p);
}

// The pause between two polls of NCCL: a few yields first (a launch usually takes microseconds), then sleeps from 20 us,
// doubling up to 1 ms.
class Backoff {
public:
    void pause() {
        if (++polls_ <= 64) {
            std::this_thread::yield();
            return;
        }
        std::this_thread::sleep_for(nap_);
        nap_ = std::min<std::chrono::microseconds>(nap_ * 2, std::chrono::milliseconds(1));
    }

private:
    int polls_ = 0;
    std::chrono::microseconds nap_{20};
};

// ncclCommGetAsyncError of `comm`; a failing query counts as that error.
int async_state(const NcclApi& n, void* comm) {
    int state = kNcclSuccess;
    const int rc = n.CommGetAsyncError(comm, &state);
    return rc != kNcclSuccess ? rc : state;
}

// After an NCCL call on h's communicator that NCCL accepted (ncclSuccess or ncclInProgress): waits while
// ncclCommGetAsyncError says ncclInProgress, i.e. until a non-blocking communicator has really launched the call (see
// the top of this file). On an error, a local abort or the deadline it aborts the communicator and throws; the deadline
// gives a TimeoutError naming nobody, as wait_nccl does.
void settle(const NcclApi& n, NcclRank& h, Clock::time_point deadline, const std::atomic<bool>& local_abort,
            const std::string& what, const char* call) {
    Backoff backoff;
    for (;;) {
        const int state = async_state(n, h.comm);
        if (state == kNcclSuccess) return;
        if (state != kNcclInProgress) {
            const std::string why = nccl_error(n, h.comm, state);
            h.abort();
            fail(SW_ERR_BACKEND, what, ": ", call, " failed in NCCL's background launch: ", why);
        }
        if (local_abort.load()) {
            h.abort();
            fail(SW_ERR_ABORTED, what, ": the communicator was aborted while NCCL launched ", call);
        }
        if (Clock::now() >= deadline) {
            h.abort();
            throw TimeoutError(str(what, ": NCCL did not finish launching ", call, " in time"), {});
        }
        backoff.pause();
    }
}

void wait_nccl(const NcclApi& n, NcclRank& h, const cuda::PluginApi* api, int32_t ord, void* done, Clock::time_point deadline,
               const std::atomic<bool>& local_abort, const std::string& what); // below

// Waits for everything queued on `stream` so far (NCCL calls and the copies around them) under wait_nccl's watchdog,
// then synchronizes the stream. On any failure NCCL is aborted, so the stream drains: it is synchronized before the
// error propagates, so no queued copy lands in memory the caller frees after the error.
void finish_on_stream(const NcclApi& n, NcclRank& h, const cuda::PluginApi* api, int32_t ord, void* stream,
                      Clock::time_point deadline, const std::atomic<bool>& local_abort, const std::string& what) {
    std::string err;
    void* done = nullptr;
    cuda_check(api->event_create(ord, &done, &err), err);
    struct Destroy {
        const cuda::PluginApi* api;
        int32_t ord;
        void* e;
        ~Destroy() {
            std::string ignored;
            api->event_destroy(ord, e, &ignored);
        }
    } destroy{api, ord, done};
    cuda_check(api->event_record(ord, done, stream, &err), err);
    try {
        wait_nccl(n, h, api, ord, done, deadline, local_abort, what);
    } catch (...) {
        api->stream_synchronize(ord, stream, &err);
        throw;
    }
    cuda_check(api->stream_synchronize(ord, stream, &err), err);
}

} // namespace

void NcclRank::abort() noexcept {
    if (comm) api->CommAbort(comm);
    comm = nullptr;
}

void NcclRank::destroy() noexcept {
    if (!comm) return;
    // ncclCommDestroy refuses (and leaves allocated) a communicator whose last operation has not returned ncclSuccess
    // (src/init.cc, ncclCommEnsureReady, 2.14+): one in progress or failed is aborted instead. Errors are dropped: a
    // destructor cannot report them.
    if (async_state(*api, comm) == kNcclSuccess) api->CommDestroy(comm);
    else api->CommAbort(comm);
    comm = nullptr;
}

void CommState::release_nccl() {
    if (!nccl) return;
    for (auto& h : nccl_comms)
        if (h) (aborted ? h->abort() : h->destroy());
    nccl_comms.clear();
}

void sw::nccl_move(CommState& st, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline) {
    const NcclApi& n = *st.nccl;
    DeviceImpl& dev = *st.devices[rank];
    const cuda::PluginApi* api = dev.cuda;
    const int32_t ord = dev.ordinal;
    NcclRank& h = *st.nccl_comms[rank];
    void* comm = h.comm;
    const Desc& me = slot.desc[rank];
    const int p = st.world;
    const size_t esz = sw_dtype_size(me.dtype);
    const std::string what = str(coll_name(me.op), " #", seq);
    if (!comm) fail(SW_ERR_ABORTED, "rank ", rank, ": ", what, " not run: its NCCL communicator was aborted");
    std::string err;
    void* cs = nullptr;
    {
        std::lock_guard<std::mutex> lock(st.mu);
        if (!st.cuda_streams[rank]) cuda_check(api->stream_create(ord, &st.cuda_streams[rank], &err), err);
        cs = st.cuda_streams[rank];
    }
    cuda_check(api->set_device(ord, &err), err);
    const std::string who = str("rank ", rank, ": ", what);
    bool in_group = false;
    // An NCCL call's return code: ncclSuccess or ncclInProgress (a non-blocking communicator) mean accepted; outside a
    // group the call is then settled (launched for certain) before anything else goes to NCCL or the stream.
    auto call = [&](int rc, const char* name) {
        if (rc != kNcclSuccess && rc != kNcclInProgress) {
            const std::string why = nccl_error(n, comm, rc); // before the abort frees comm
            // NCCL's group is per thread: left open, every later NCCL call of this worker would be deferred to a
            // ncclGroupEnd that never comes (and "succeed" without running).
            if (in_group) {
                in_group = false;
                n.GroupEnd();
            }
            h.abort();
            fail(SW_ERR_BACKEND, who, ": ", name, " failed: ", why);
        }
        if (!in_group) settle(n, h, deadline, st.abort_flag, who, name);
    };
    auto group_start = [&] {
        call(n.GroupStart(), "ncclGroupStart");
        in_group = true;
    };
    auto group_end = [&] {
        in_group = false;
        call(n.GroupEnd(), "ncclGroupEnd"); // a non-blocking communicator's group may still be launching: settled
    };
    const int t = nccl_type(me.dtype);
    void* scratch = nullptr; // column all-gather: every rank's block, packed
    struct FreeScratch {
        DeviceImpl& dev;
        void*& scratch;
        ~FreeScratch() { free_later(dev, scratch); } // freed from a caller's thread, after the stream is past it
    } free_scratch{dev, scratch};
    try {
        switch (me.op) {
        case Coll::AllGather:
            if (me.count) call(n.AllGather(me.send, me.recv, me.count, t, comm, cs), "ncclAllGather");
            break;
        case Coll::AllGatherV: {
            group_start();
            uint64_t at = 0;
            for (int q = 0; q < p; ++q) {
                const uint64_t c = slot.desc[q].count;
                if (c) call(n.Broadcast(q == rank ? me.send : me.recv + at * esz, me.recv + at * esz, c, t, q, comm, cs), "ncclBroadcast");
                at += c;
            }
            group_end();
            break;
        }
        case Coll::AllGatherColumns: {
            uint64_t total = 0;
            for (int q = 0; q < p; ++q) total += static_cast<uint64_t>(me.rows * slot.desc[q].cols);
            if (!total) break;
            cuda_check(api->malloc_device(ord, total * esz, &scratch, &err), err);
            std::vector<uint64_t> at(p + 1, 0);
            for (int q = 0; q < p; ++q) at[q + 1] = at[q] + static_cast<uint64_t>(me.rows * slot.desc[q].cols);
            char* packed = static_cast<char*>(scratch);
            try {
                if (me.cols > 0 && me.rows > 0)
                    cuda_check(api->copy_2d(ord, packed + at[rank] * esz, me.cols, me.send, me.ld_send, me.rows, me.cols,
                                            static_cast<int32_t>(esz), cs, &err), err);
                group_start();
                for (int q = 0; q < p; ++q)
                    if (at[q + 1] > at[q])
                        call(n.Broadcast(packed + at[q] * esz, packed + at[q] * esz, at[q + 1] - at[q], t, q, comm, cs), "ncclBroadcast");
                group_end(); // settled: the unpacking copies below go on the stream after NCCL's broadcasts
                int64_t col0 = 0;
                for (int q = 0; q < p; ++q) {
                    const int64_t cols = slot.desc[q].cols;
                    if (cols > 0 && me.rows > 0)
                        cuda_check(api->copy_2d(ord, me.recv + col0 * esz, me.ld_recv, packed + at[q] * esz, cols, me.rows, cols,
                                                static_cast<int32_t>(esz), cs, &err), err);
                    col0 += cols;
                }
            } catch (...) {
                api->stream_synchronize(ord, cs, &err); // before free_scratch hands the scratch back
                throw;
            }
            break;
        }
        case Coll::AllReduce:
            if (me.count) call(n.AllReduce(me.send, me.recv, me.count, t, kNcclSum, comm, cs), "ncclAllReduce");
            break;
        case Coll::ReduceScatter:
            if (me.count) call(n.ReduceScatter(me.send, me.recv, me.count, t, kNcclSum, comm, cs), "ncclReduceScatter");
            break;
        case Coll::ReduceScatterV: {
            group_start();
            for (int q = 0; q < p; ++q) {
                const uint64_t c = slot.desc[q].count;
                if (c) call(n.Reduce(me.send + scatter_displacement(slot, q) * esz, me.recv, c, t, kNcclSum, q, // recvbuff: used at the root only
                                     comm, cs), "ncclReduce");
            }
            group_end();
            break;
        }
        case Coll::Broadcast:
            if (me.count) call(n.Broadcast(me.send, me.recv, me.count, t, me.root, comm, cs), "ncclBroadcast");
            break;
        case Coll::Barrier: break; // the host-side agreement was the barrier
        }
        // The watchdog of this collective: wait for NCCL, polling its asynchronous error, the deadline and local aborts.
        finish_on_stream(n, h, api, ord, cs, deadline, st.abort_flag, who);
    } catch (const TimeoutError&) {
        fail(SW_ERR_TIMEOUT, who, " did not complete in NCCL within ", st.timeout_ms, " ms; the NCCL communicator is aborted");
    }
}

namespace {

const NcclApi& nccl_or_fail() { return nccl_api(); }

// Waits for `done` on the rank's device, polling NCCL's asynchronous error, local aborts and the deadline; on any of
// them aborts the NCCL communicator (releasing its kernels) and throws. A deadline gives a TimeoutError naming nobody:
// NCCL cannot tell which rank is late.
void wait_nccl(const NcclApi& n, NcclRank& h, const cuda::PluginApi* api, int32_t ord, void* done, Clock::time_point deadline,
               const std::atomic<bool>& local_abort, const std::string& what) {
    void* comm = h.comm;
    std::string err;
    for (int spins = 0;; ++spins) {
        int32_t finished = 0;
        cuda_check(api->event_query(ord, done, &finished, &err), err);
        int async = kNcclSuccess;
        if (finished) { // completed: unless NCCL says it failed (an aborted communicator's work completes too)
            if (n.CommGetAsyncError(comm, &async) == kNcclSuccess && async != kNcclSuccess && async != kNcclInProgress)
                fail(SW_ERR_ABORTED, what, ": NCCL's work ended with an error: ", nccl_error(n, nullptr, async));
            return;
        }
        if (n.CommGetAsyncError(comm, &async) == kNcclSuccess && async != kNcclSuccess && async != kNcclInProgress) {
            h.abort();
            fail(SW_ERR_BACKEND, what, ": NCCL reported an asynchronous error: ", nccl_error(n, nullptr, async));
        }
        if (local_abort.load()) {
            h.abort();
            fail(SW_ERR_ABORTED, what, ": the communicator was aborted while NCCL ran");
        }
        if (Clock::now() >= deadline) {
            h.abort();
            throw TimeoutError(str(what, ": NCCL did not complete in time"), {});
        }
        if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
}

// The host side of an NCCL communicator whose ranks have no other channel (a unique id the caller passed around):
// the descriptors travel through NCCL itself (an all-gather through a device staging buffer). It cannot tell the
// peers about an abort, nor which rank is late.
class NcclTransport final : public Transport {
public:
    NcclTransport(const NcclApi& n, std::shared_ptr<NcclRank> comm, int32_t rank, int32_t world, std::shared_ptr<DeviceImpl> dev)
        : n_(n), comm_(std::move(comm)), rank_(rank), world_(world), dev_(std::move(dev)) {}
    ~NcclTransport() override {
        std::string e;
        if (stream_) dev_->cuda->stream_destroy(dev_->ordinal, stream_, &e);
        free_later(*dev_, staging_); // may run on a stream worker: freed later from a caller's thread
    }
    int32_t rank() const override { return rank_; }
    int32_t world() const override { return world_; }
    const char* name() const override { return "nccl"; }
    void exchange(uint64_t, const std::vector<Piece>&, const std::vector<Piece>&, Clock::time_point, const std::atomic<bool>&,
                  const std::string& what) override {
        fail(SW_ERR_INTERNAL, what, ": point-to-point exchange is not available on an NCCL-only host side");
    }
    void all_gather_bytes(uint64_t, const char* mine, uint64_t bytes, char* all, Clock::time_point deadline,
                          const std::atomic<bool>& local_abort, const std::string& what) override {
        const cuda::PluginApi* api = dev_->cuda;
        const int32_t ord = dev_->ordinal;
        std::string err;
        cuda_check(api->set_device(ord, &err), err);
        if (!stream_) cuda_check(api->stream_create(ord, &stream_, &err), err);
        const uint64_t need = bytes * (static_cast<uint64_t>(world_) + 1);
        if (need > staging_bytes_) {
            free_later(*dev_, staging_);
            staging_ = nullptr;
            cuda_check(api->malloc_device(ord, need, &staging_, &err), err);
            staging_bytes_ = need;
        }
        char* in = static_cast<char*>(staging_);
        char* out = in + bytes;
        cuda_check(api->memcpy_async(ord, in, mine, bytes, stream_, &err), err);
        if (!comm_->comm) fail(SW_ERR_ABORTED, what, ": the NCCL communicator was aborted");
        const int rc = n_.AllGather(in, out, bytes, kNcclUint8, comm_->comm, stream_);
        if (rc != kNcclSuccess && rc != kNcclInProgress)
            fail(SW_ERR_BACKEND, what, ": ncclAllGather (descriptors) failed: ", nccl_error(n_, comm_->comm, rc));
        // A non-blocking communicator may still be launching the all-gather: the copy out goes on the stream after it.
        settle(n_, *comm_, deadline, local_abort, what, "ncclAllGather (descriptors)");
        cuda_check(api->memcpy_async(ord, all, out, bytes * world_, stream_, &err), err);
        // The copy into `all` (the caller's memory) is finished or failed before this returns or throws.
        finish_on_stream(n_, *comm_, api, ord, stream_, deadline, local_abort, what);
    }
    void notify_abort(sw_status, const std::string&) noexcept override {
        // Nothing to send: the peers find out at their deadline. NCCL is not aborted from here (this may be any thread,
        // while the worker uses the communicator): a waiting worker sees the local abort and aborts it; an idle one is
        // aborted when the communicator goes (release_nccl).
    }

private:
    const NcclApi& n_;
    std::shared_ptr<NcclRank> comm_;
    int32_t rank_, world_;
    std::shared_ptr<DeviceImpl> dev_;
    void* stream_ = nullptr;
    void* staging_ = nullptr;
    uint64_t staging_bytes_ = 0;
};

// Polls ncclCommGetAsyncError of every communicator in `comms` (null ones are skipped) while one says ncclInProgress,
// until each says ncclSuccess, one fails, or the deadline passes. Returns every communicator's last state.
std::vector<int> wait_created(const NcclApi& n, const std::vector<void*>& comms, Clock::time_point deadline) {
    std::vector<int> state(comms.size(), kNcclInProgress);
    Backoff backoff;
    for (;;) {
        bool pending = false;
        for (size_t i = 0; i < comms.size(); ++i) {
            if (!comms[i]) state[i] = kNcclSuccess;
            if (state[i] != kNcclInProgress) continue;
            state[i] = async_state(n, comms[i]);
            if (state[i] == kNcclInProgress) pending = true;
            else if (state[i] != kNcclSuccess) return state;
        }
        if (!pending || Clock::now() >= deadline) return state;
        backoff.pause();
    }
}

// This process's rank's NCCL communicator on its device. With ncclCommInitRankConfig (NCCL 2.14+) it is made
// non-blocking and polled against the timeout: a rank that never calls in fails the others with SW_ERR_TIMEOUT (the
// communicator aborted; NCCL cannot say which rank is missing). Without it, ncclCommInitRank blocks until every rank
// has called it: no deadline. `how` names the bootstrap for the messages.
void* init_rank(const NcclApi& n, sw_device_s* d, const NcclUniqueId& id, int32_t rank, int32_t world, int64_t timeout_ms,
                const char* how) {
    std::string err;
    cuda_check(d->impl->cuda->set_device(d->impl->ordinal, &err), err);
    // NCCL's init thread may write through this pointer (2.14 to 2.19.1 keep it in the init job, job->newcomm): it
    // lives until init is over or aborted.
    void* nc = nullptr;
    if (!n.CommInitRankConfig) {
        const int rc = n.CommInitRank(&nc, world, id, rank);
        if (rc != kNcclSuccess) {
            const std::string why = nccl_error(n, nc, rc);
            if (nc) n.CommAbort(nc);
            fail(SW_ERR_BACKEND, how, ": ncclCommInitRank (rank ", rank, " of ", world, ") failed: ", why);
        }
        return nc;
    }
    const int64_t t = resolve_timeout(timeout_ms);
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(t);
    NcclConfigV21400 config = nccl_nonblocking_config();
    const int rc = n.CommInitRankConfig(&nc, world, id, rank, &config);
    if (rc != kNcclSuccess && rc != kNcclInProgress) {
        const std::string why = nccl_error(n, nc, rc);
        if (nc) n.CommAbort(nc);
        fail(SW_ERR_BACKEND, how, ": ncclCommInitRankConfig (rank ", rank, " of ", world, ", non-blocking) failed: ", why);
    }
    if (!nc) fail(SW_ERR_BACKEND, how, ": ncclCommInitRankConfig (rank ", rank, " of ", world, ") returned no communicator");
    const int state = wait_created(n, {nc}, deadline)[0];
    if (state == kNcclSuccess) return nc;
    const std::string why = state == kNcclInProgress ? std::string() : nccl_error(n, nc, state);
    n.CommAbort(nc); // ends NCCL's init thread (its bootstrap sockets watch the abort flag) and frees the communicator
    if (state == kNcclInProgress)
        fail(SW_ERR_TIMEOUT, how, ": creating the NCCL communicator of rank ", rank, " of ", world, " timed out after ", t,
             " ms: NCCL's initialization (ncclCommInitRankConfig) waited for all ", world, " ranks of the unique id to "
             "join and they did not (NCCL cannot tell which rank is missing); the communicator is aborted");
    fail(SW_ERR_BACKEND, how, ": creating the NCCL communicator of rank ", rank, " of ", world,
         " failed during NCCL's initialization: ", why, "; the communicator is aborted");
}

std::shared_ptr<NcclRank> nccl_rank(const NcclApi& n, void* nc) {
    auto h = std::make_shared<NcclRank>();
    h->api = &n;
    h->comm = nc;
    return h;
}

sw_comm attach_nccl(sw_comm comm, const NcclApi& n, std::shared_ptr<NcclRank> h, int32_t rank, int32_t world) {
    comm->state->nccl = &n;
    comm->state->nccl_comms.assign(world, nullptr);
    comm->state->nccl_comms[rank] = std::move(h);
    return comm;
}

void check_nccl_device(sw_device_s* d, const char* name) {
    if (!d->impl->is_cuda())
        fail(SW_ERR_INVALID_ARGUMENT, name, " is '", d->impl->name, "'; NCCL communicators need CUDA devices (for CPU devices use "
             "sw_comm_create_local, sw_comm_create_tcp or sw_comm_create_mpi)");
}

} // namespace

extern "C" {

SW_API sw_status sw_nccl_get_unique_id(uint8_t* id) {
    return guard(__func__, [&] {
        require(id, "id");
        const NcclApi& n = nccl_or_fail();
        NcclUniqueId u{};
        const int rc = n.GetUniqueId(&u);
        if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
        std::memcpy(id, u.internal, sizeof u.internal);
    });
}

SW_API sw_status sw_comm_create_nccl_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        require(devices, "devices");
        if (world_size < 1 || world_size > 4096) fail(SW_ERR_INVALID_ARGUMENT, "world_size = ", world_size, "; expected 1..4096");
        for (int r = 0; r < world_size; ++r) {
            const std::string name = str("devices[", r, "]");
            auto* d = checked(devices[r], name.c_str());
            check_nccl_device(d, name.c_str());
            for (int q = 0; q < r; ++q)
                if (reinterpret_cast<sw_device_s*>(devices[q])->impl->ordinal == d->impl->ordinal)
                    fail(SW_ERR_INVALID_ARGUMENT, "devices[", q, "] and devices[", r, "] are both GPU ", d->impl->ordinal,
                         "; NCCL allows one rank per GPU (for virtual ranks on one GPU use sw_comm_create_local)");
        }
        const NcclApi& n = nccl_or_fail();
        NcclUniqueId id{};
        int rc = n.GetUniqueId(&id);
        if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
        // NCCL's init threads may write through &comms[r] (2.14 to 2.19.1): not resized until init is over or aborted.
        std::vector<void*> comms(world_size, nullptr);
        const bool nonblocking = n.CommInitRankConfig != nullptr;
        NcclConfigV21400 config = nccl_nonblocking_config();
        const int64_t t = resolve_timeout(timeout_ms);
        const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(t);
        const char* init_name = nonblocking ? "ncclCommInitRankConfig (non-blocking)" : "ncclCommInitRank";
        // One thread creates every rank's communicator: inside a group, each with its device current. Non-blocking,
        // ncclGroupEnd returns ncclInProgress at once and the communicators are polled against the timeout; blocking
        // (NCCL < 2.14), ncclGroupEnd returns when all are made, with no deadline.
        rc = n.GroupStart();
        sw_status device_status = SW_OK;
        std::string device_err;
        int failed_rank = -1;
        for (int r = 0; r < world_size && (rc == kNcclSuccess || rc == kNcclInProgress); ++r) {
            auto* d = reinterpret_cast<sw_device_s*>(devices[r]);
            device_status = d->impl->cuda->set_device(d->impl->ordinal, &device_err);
            if (device_status != SW_OK) break; // the group is closed below either way (NCCL's group state is per thread)
            failed_rank = r;
            rc = nonblocking ? n.CommInitRankConfig(&comms[r], world_size, id, r, &config) : n.CommInitRank(&comms[r], world_size, id, r);
        }
        const int end = n.GroupEnd();
        if (rc == kNcclSuccess || rc == kNcclInProgress) {
            rc = end;
            failed_rank = -1;
        }
        auto abort_all = [&] {
            for (void* c : comms)
                if (c) n.CommAbort(c);
        };
        if ((rc != kNcclSuccess && rc != kNcclInProgress) || device_status != SW_OK) {
            const std::string why = nccl_error(n, nullptr, rc);
            abort_all();
            cuda_check(device_status, device_err);
            if (failed_rank >= 0) fail(SW_ERR_BACKEND, init_name, " (rank ", failed_rank, " of ", world_size, ") failed: ", why);
            fail(SW_ERR_BACKEND, "ncclGroupEnd creating ", world_size, " NCCL communicators (", init_name, ") failed: ", why);
        }
        const std::vector<int> state = wait_created(n, comms, deadline);
        std::vector<int> pending;
        for (int r = 0; r < world_size; ++r) {
            if (state[r] == kNcclSuccess) continue;
            if (state[r] != kNcclInProgress) {
                const std::string why = nccl_error(n, comms[r], state[r]);
                abort_all();
                fail(SW_ERR_BACKEND, "creating the NCCL communicators of ", world_size, " GPUs in this process: rank ", r,
                     " failed during NCCL's initialization: ", why, "; every communicator is aborted");
            }
            pending.push_back(r);
        }
        if (!pending.empty()) {
            abort_all();
            fail(SW_ERR_TIMEOUT, "creating the NCCL communicators of ", world_size, " GPUs in this process timed out after ", t,
                 " ms: NCCL's initialization (ncclCommInitRankConfig in one group) had not finished for rank(s) ",
                 rank_list(pending), "; every communicator is aborted");
        }
        sw_comm comm = nullptr;
        const sw_status st = sw_comm_create_local(world_size, devices, timeout_ms, &comm);
        if (st != SW_OK) {
            for (void* c : comms) n.CommDestroy(c);
            fail(st, sw_last_error());
        }
        comm->state->nccl = &n;
        for (void* c : comms) comm->state->nccl_comms.push_back(nccl_rank(n, c));
        *out = comm;
    });
}

SW_API sw_status sw_comm_create_nccl(sw_device device, sw_store store, const char* prefix, int32_t rank, int32_t world_size,
                                     int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        StoreImpl* s = store_of(store);
        require(prefix, "prefix");
        check_prefix(prefix);
        check_job(rank, world_size, timeout_ms);
        const NcclApi& n = nccl_or_fail();
        const int64_t t = resolve_timeout(timeout_ms);
        // Rank 0 makes the unique id; the others read it from the store. The TCP mesh is the host side's transport
        // (descriptor exchange, abort notices), and proves every rank is alive before NCCL's init (which has a deadline
        // only where NCCL has ncclCommInitRankConfig).
        NcclUniqueId id{};
        const std::string key = str(prefix, "/nccl-unique-id");
        if (rank == 0) {
            const int rc = n.GetUniqueId(&id);
            if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
            store_set(*s, key, id.internal, sizeof id.internal);
        } else {
            const std::string v = store_get(*s, key);
            if (v.size() != sizeof id.internal)
                fail(SW_ERR_BACKEND, "the store's '", key, "' has ", v.size(), " bytes; expected an NCCL unique id of 128");
            std::memcpy(id.internal, v.data(), sizeof id.internal);
        }
        auto transport = connect_tcp_mesh(*s, prefix, rank, world_size, t);
        auto h = nccl_rank(n, init_rank(n, d, id, rank, world_size, t, "sw_comm_create_nccl"));
        *out = attach_nccl(make_remote_comm(d->impl, std::move(transport), t), n, h, rank, world_size);
    });
}

SW_API sw_status sw_comm_create_nccl_id(sw_device device, const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                        int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        require(unique_id, "unique_id");
        check_job(rank, world_size, timeout_ms);
        const NcclApi& n = nccl_or_fail();
        NcclUniqueId id{};
        std::memcpy(id.internal, unique_id, sizeof id.internal);
        auto h = nccl_rank(n, init_rank(n, d, id, rank, world_size, timeout_ms, "sw_comm_create_nccl_id"));
        auto transport = std::make_unique<NcclTransport>(n, h, rank, world_size, d->impl);
        *out = attach_nccl(make_remote_comm(d->impl, std::move(transport), timeout_ms), n, h, rank, world_size);
    });
}

SW_API sw_status sw_comm_create_nccl_mpi(sw_device device, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto* d = checked(device, "device");
        check_nccl_device(d, "device");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        const NcclApi& n = nccl_or_fail();
        auto transport = create_mpi_transport(resolve_timeout(timeout_ms));
        const int32_t rank = transport->rank(), world = transport->world();
        // Rank 0's unique id to every rank, over MPI (everyone contributes 128 bytes; rank 0's are taken).
        NcclUniqueId mine{};
        if (rank == 0) {
            const int rc = n.GetUniqueId(&mine);
            if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
        }
        std::vector<NcclUniqueId> ids(world);
        const std::atomic<bool> no_abort{false};
        transport->all_gather_bytes(0, mine.internal, sizeof mine.internal, ids[0].internal,
                                    Clock::now() + std::chrono::milliseconds(resolve_timeout(timeout_ms)), no_abort,
                                    "sw_comm_create_nccl_mpi (unique id)");
        auto h = nccl_rank(n, init_rank(n, d, ids[0], rank, world, timeout_ms, "sw_comm_create_nccl_mpi"));
        *out = attach_nccl(make_remote_comm(d->impl, std::move(transport), timeout_ms), n, h, rank, world);
    });
}

} // extern "C"
