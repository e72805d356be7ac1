// NCCL moves (see mover_nccl.h): CUDA devices, one rank per GPU.
//
// A collective is ordered into the caller's CUDA stream exactly like an in-process CUDA collective (CudaMover's
// ordering: the host side runs on the stream's worker once the stream's earlier work is done, and the stream waits for
// the host side through a mapped flag). The host side first agrees with the other ranks on what is being called —
// through the in-process rendezvous (every rank in this process) or a transport (one rank per process: TCP, MPI, or
// NCCL itself) — so mismatched calls fail with SW_ERR_MISMATCH and a rank that never comes fails the others with
// SW_ERR_TIMEOUT naming it, instead of NCCL hanging. Then NcclMover::move issues the NCCL calls on the rank's communication stream and waits for
// them, polling ncclCommGetAsyncError, the deadline and local aborts; on any of them it calls ncclCommAbort, which
// releases NCCL's kernels, so no stream hangs. Uneven collectives use grouped broadcasts (all-gather-v, column
// all-gather) and grouped reduces (reduce-scatter-v) with the counts every rank learned in the descriptor exchange.
//
// 16-bit sums (f16, bf16: all-reduce, reduce-scatter, reduce-scatter-v) do not use NCCL's own reductions, whose
// order and intermediate rounding NCCL does not promise (a ring rounds every partial sum to 16 bits). Nor do tree sums
// (SW_REDUCE_SUM_TREE, any dtype: f32, f64, f16, bf16, i32; Desc::root carries the reduce op, collectives.h tree_sum),
// whose order is the fixed binary tree over the ranks (core/tree_reduction.h), which no NCCL algorithm follows. Both
// are built as the transport mover (mover_transport.cpp) builds them, over the same chunks: grouped ncclSend/ncclRecv
// bring chunk `rank` of every rank into a device scratch, the CUDA plugin's reduce_sum kernel sums it (in rank order
// 0..p-1, or in the tree's order over the ranks; f16/bf16 in fp32, rounded once), and (all-reduce) grouped
// ncclSend/ncclRecv of the reduced chunks gather the result: the wire volume of a ring, and every rank gets the bits
// of the in-process and transport communicators. Other sums (SW_REDUCE_SUM of f32, f64, i32) are NCCL's.
//
// Communicators are made non-blocking when NCCL has ncclCommInitRankConfig (2.14+; comm_nccl.cpp creates them).
// A non-blocking communicator stays non-blocking for its whole life (NCCL has no switch back), which changes what an
// accepted NCCL call means: a collective or ncclGroupEnd may return ncclInProgress before its work is on the stream
// (NCCL finishes the launch on a thread of its own; src/group.cc, ncclGroupEndInternal), and until
// ncclCommGetAsyncError says ncclSuccess NCCL refuses every other call on that communicator with ncclInvalidArgument
// (src/init.cc, ncclCommEnsureReady; 2.14 to 2.2x). So after every top-level NCCL call (a collective outside a group,
// or ncclGroupEnd) `settle` polls until NCCL is done launching, before anything else goes on the stream (the completion
#include "comm/mover_nccl.h"
#include "comm/p2p.h"

#include "core/cuda_loader.h"
#include "core/index_math.h"

#include <cstring>
#include <thread>

using namespace sw;

namespace {

// The most ranks of a 16-bit or tree sum on NCCL: the sources of one reduce_sum call of the CUDA plugin
// (kMaxReducePointers in cuda/common.h, which the core cannot include).
constexpr int kMaxSum16Ranks = 64;

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


} // namespace

std::string sw::nccl_error(const NcclApi& n, void* comm, int rc) {
    std::string s = n.GetErrorString ? n.GetErrorString(rc) : "";
    s = str("ncclResult_t ", rc, s.empty() ? "" : " (" + s + ")");
    if (n.GetLastError && comm)
        if (const char* last = n.GetLastError(comm); last && *last) s += str(": ", last);
    return s;
}


namespace {

// Frees device memory from a stream worker: later, from a caller's thread (see DeferredFrees).
void free_later(DeviceImpl& dev, void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(dev.deferred->mu);
    dev.deferred->pointers.push_back(p);
}

} // namespace

void Backoff::pause() {
    if (++polls_ <= 64) {
        std::this_thread::yield();
        return;
    }
    std::this_thread::sleep_for(nap_);
    nap_ = std::min<std::chrono::microseconds>(nap_ * 2, std::chrono::milliseconds(1));
}

int sw::async_state(const NcclApi& n, void* comm) {
    int state = kNcclSuccess;
    const int rc = n.CommGetAsyncError(comm, &state);
    return rc != kNcclSuccess ? rc : state;
}

namespace {

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
    cuda_call(api, &cuda::PluginApi::event_create, ord, &done);
    struct Destroy {
        const cuda::PluginApi* api;
        int32_t ord;
        void* e;
        ~Destroy() {
            std::string ignored;
            api->event_destroy(ord, e, &ignored);
        }
    } destroy{api, ord, done};
    cuda_call(api, &cuda::PluginApi::event_record, ord, done, stream);
    try {
        wait_nccl(n, h, api, ord, done, deadline, local_abort, what);
    } catch (...) {
        api->stream_synchronize(ord, stream, &err);
        throw;
    }
    cuda_call(api, &cuda::PluginApi::stream_synchronize, ord, stream);
}

// Waits for `done` on the rank's device, polling NCCL's asynchronous error, local aborts and the deadline; on any of
// them aborts the NCCL communicator (releasing its kernels) and throws. A deadline gives a TimeoutError naming nobody:
// NCCL cannot tell which rank is late.
void wait_nccl(const NcclApi& n, NcclRank& h, const cuda::PluginApi* api, int32_t ord, void* done, Clock::time_point deadline,
               const std::atomic<bool>& local_abort, const std::string& what) {
    void* comm = h.comm;
    for (int spins = 0;; ++spins) {
        int32_t finished = 0;
        cuda_call(api, &cuda::PluginApi::event_query, ord, done, &finished);
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

std::shared_ptr<NcclRank> sw::nccl_rank(const NcclApi& n, void* nc) {
    auto h = std::make_shared<NcclRank>();
    h->api = &n;
    h->comm = nc;
    return h;
}

void NcclMover::close(bool aborted) noexcept {
    for (auto& h : comms_)
        if (h) (aborted ? h->abort() : h->destroy());
    comms_.clear();
}

void NcclMover::move(Communicator& st, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline) {
    const NcclApi& n = n_;
    DeviceImpl& dev = *devices_[rank];
    const cuda::PluginApi* api = dev.cuda;
    const int32_t ord = dev.ordinal;
    NcclRank& h = *comms_[rank];
    void* comm = h.comm;
    const Desc& me = slot.desc[rank];
    const int p = st.world;
    const size_t esz = sw_dtype_size(me.dtype);
    const std::string what = str(coll_name(me.op), " #", seq);
    if (!comm) fail(SW_ERR_ABORTED, "rank ", rank, ": ", what, " not run: its NCCL communicator was aborted");
    std::string err;
    void* cs = comm_stream(rank);
    cuda_call(api, &cuda::PluginApi::set_device, ord);
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
    void* scratch = nullptr; // column all-gather: every rank's block, packed; chunked sums: every rank's chunk
    struct FreeScratch {
        DeviceImpl& dev;
        void*& scratch;
        ~FreeScratch() { free_later(dev, scratch); } // freed from a caller's thread, after the stream is past it
    } free_scratch{dev, scratch};
    // 16-bit and tree sums: NCCL moves the chunks, the plugin's reduce_sum kernel adds them (see the top of this file).
    const bool tree = tree_sum(me);
    const bool chunked = me.dtype == SW_DTYPE_F16 || me.dtype == SW_DTYPE_BF16 || tree;
    if (chunked && p > kMaxSum16Ranks &&
        (me.op == Coll::AllReduce || me.op == Coll::ReduceScatter || me.op == Coll::ReduceScatterV))
        fail(SW_ERR_UNSUPPORTED, who, ": ", sw::dtype_name(me.dtype), tree ? " tree" : "", " sums on NCCL take up to ",
             kMaxSum16Ranks, " ranks (the reduction kernel's sources); this communicator has ", p);
    // Sums chunk pieces srcs[0..p-1] (rank order) into dst on the communication stream: in rank order, or the tree's
    // order over the ranks (SW_REDUCE_SUM_TREE); f16/bf16 in fp32, rounded once.
    auto sum_chunks = [&](const std::vector<const void*>& srcs, void* dst, uint64_t count) {
        void* dsts[1] = {dst};
        cuda_call(api, &cuda::PluginApi::reduce_sum, ord, me.dtype, srcs.data(), static_cast<int32_t>(srcs.size()), dsts, 1,
                  count, static_cast<int32_t>(tree ? 1 : 0), cs);
    };
    // One group of point-to-point moves: with[q] = what goes to and comes from peer q (pointers, elements); empty moves
    // and self are skipped.
    struct P2p {
        const char* send = nullptr;
        uint64_t send_count = 0;
        char* recv = nullptr;
        uint64_t recv_count = 0;
    };
    auto exchange = [&](const std::vector<P2p>& with) {
        bool any = false;
        for (int q = 0; q < p; ++q)
            if (q != rank && (with[q].send_count || with[q].recv_count)) any = true;
        if (!any) return;
        group_start();
        for (int q = 0; q < p; ++q) {
            if (q == rank) continue;
            if (with[q].send_count) call(n.Send(with[q].send, with[q].send_count, t, q, comm, cs), "ncclSend");
            if (with[q].recv_count) call(n.Recv(with[q].recv, with[q].recv_count, t, q, comm, cs), "ncclRecv");
        }
        group_end(); // settled: the reduction kernel goes on the stream after NCCL's moves
    };
    // 16-bit or tree all-reduce: reduce-scatter by point-to-point chunks, reduce_sum, all-gather of the reduced chunks.
    auto all_reduce16 = [&] {
        if (!me.count) return;
        // Chunk q = shard q of the count (the transport and in-process communicators' chunks).
        const int64_t total = static_cast<int64_t>(me.count);
        auto begin = [&](int q) { return static_cast<uint64_t>(shard_offset(total, p, q)); };
        auto size = [&](int q) { return static_cast<uint64_t>(shard_count(total, p, q)); };
        const uint64_t mine = size(rank), b = begin(rank);
        if (p > 1 && mine) cuda_call(api, &cuda::PluginApi::malloc_device, ord, p * mine * esz, &scratch);
        char* part = static_cast<char*>(scratch); // rank q's copy of chunk `rank` at part + q * mine
        std::vector<P2p> with(p);
        for (int q = 0; q < p; ++q)
            with[q] = {me.send + begin(q) * esz, size(q), part + q * mine * esz, mine};
        exchange(with); // reduce-scatter: chunk q of this rank's send to rank q, chunk `rank` of every rank here
        if (mine) {
            std::vector<const void*> srcs(p);
            for (int q = 0; q < p; ++q) srcs[q] = q == rank ? me.send + b * esz : part + q * mine * esz;
            sum_chunks(srcs, me.recv + b * esz, mine); // in place: each element read before it is written
        }
        for (int q = 0; q < p; ++q) with[q] = {me.recv + b * esz, mine, me.recv + begin(q) * esz, size(q)};
        exchange(with); // all-gather of the reduced chunks
    };
    // 16-bit or tree reduce-scatter (-v): block q of every rank's send goes to rank q (-v: the counts of the descriptor
    // exchange).
    auto reduce_scatter16 = [&] {
        const uint64_t mine = me.count;
        if (p > 1 && mine) cuda_call(api, &cuda::PluginApi::malloc_device, ord, p * mine * esz, &scratch);
        char* part = static_cast<char*>(scratch);
        std::vector<P2p> with(p);
        for (int q = 0; q < p; ++q)
            with[q] = {me.send + scatter_displacement(slot, q) * esz, slot.desc[q].count, part + q * mine * esz, mine};
        exchange(with);
        if (mine) {
            const uint64_t displ = scatter_displacement(slot, rank);
            std::vector<const void*> srcs(p);
            for (int q = 0; q < p; ++q) srcs[q] = q == rank ? me.send + displ * esz : part + q * mine * esz;
            sum_chunks(srcs, me.recv, mine);
        }
    };
    // Runs a chunked (16-bit or tree) sum; on a failure the stream is drained before free_scratch hands the scratch back.
    auto run16 = [&](auto&& body) {
        try {
            body();
        } catch (...) {
            api->stream_synchronize(ord, cs, &err);
            throw;
        }
    };
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
            cuda_call(api, &cuda::PluginApi::malloc_device, ord, total * esz, &scratch);
            std::vector<uint64_t> at(p + 1, 0);
            for (int q = 0; q < p; ++q) at[q + 1] = at[q] + static_cast<uint64_t>(me.rows * slot.desc[q].cols);
            char* packed = static_cast<char*>(scratch);
            try {
                if (me.cols > 0 && me.rows > 0)
                    cuda_call(api, &cuda::PluginApi::copy_2d, ord, packed + at[rank] * esz, me.cols, me.send, me.ld_send,
                              me.rows, me.cols, static_cast<int32_t>(esz), cs);
                group_start();
                for (int q = 0; q < p; ++q)
                    if (at[q + 1] > at[q])
                        call(n.Broadcast(packed + at[q] * esz, packed + at[q] * esz, at[q + 1] - at[q], t, q, comm, cs), "ncclBroadcast");
                group_end(); // settled: the unpacking copies below go on the stream after NCCL's broadcasts
                int64_t col0 = 0;
                for (int q = 0; q < p; ++q) {
                    const int64_t cols = slot.desc[q].cols;
                    if (cols > 0 && me.rows > 0)
                        cuda_call(api, &cuda::PluginApi::copy_2d, ord, me.recv + col0 * esz, me.ld_recv, packed + at[q] * esz,
                                  cols, me.rows, cols, static_cast<int32_t>(esz), cs);
                    col0 += cols;
                }
            } catch (...) {
                api->stream_synchronize(ord, cs, &err); // before free_scratch hands the scratch back
                throw;
            }
            break;
        }
        case Coll::AllReduce:
            if (chunked) run16(all_reduce16);
            else if (me.count) call(n.AllReduce(me.send, me.recv, me.count, t, kNcclSum, comm, cs), "ncclAllReduce");
            break;
        case Coll::ReduceScatter:
            if (chunked) run16(reduce_scatter16);
            else if (me.count) call(n.ReduceScatter(me.send, me.recv, me.count, t, kNcclSum, comm, cs), "ncclReduceScatter");
            break;
        case Coll::ReduceScatterV: {
            if (chunked) {
                run16(reduce_scatter16);
                break;
            }
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
        case Coll::Split: // a host collective: never reaches a mover (split.cpp)
        case Coll::Barrier: break; // the host-side agreement was the barrier
        }
        // The watchdog of this collective: wait for NCCL, polling its asynchronous error, the deadline and local aborts.
        finish_on_stream(n, h, api, ord, cs, deadline, st.abort_flag, who);
    } catch (const TimeoutError&) {
        fail(SW_ERR_TIMEOUT, who, " did not complete in NCCL within ", st.timeout_ms, " ms; the NCCL communicator is aborted");
    }
}

void NcclMover::p2p_move(Communicator& st, int rank, const std::vector<Piece>& sends, const std::vector<Piece>& recvs,
                         Clock::time_point deadline, const std::string& what) {
    const NcclApi& n = n_;
    DeviceImpl& dev = *devices_[rank];
    const cuda::PluginApi* api = dev.cuda;
    const int32_t ord = dev.ordinal;
    NcclRank& h = *comms_[rank];
    void* comm = h.comm;
    const std::string who = str("rank ", rank, ": ", what);
    if (!comm) fail(SW_ERR_ABORTED, who, " not run: its NCCL communicator was aborted");
    void* cs = comm_stream(rank);
    cuda_call(api, &cuda::PluginApi::set_device, ord);
    const int u8 = nccl_type(SW_DTYPE_U8);
    bool in_group = false;
    auto call = [&](int rc, const char* name) {
        if (rc == kNcclSuccess || rc == kNcclInProgress) return;
        const std::string why = nccl_error(n, comm, rc);
        if (in_group) { // NCCL's group is per thread: never left open
            in_group = false;
            n.GroupEnd();
        }
        h.abort();
        fail(SW_ERR_BACKEND, who, ": ", name, " failed: ", why);
    };
    try {
        call(n.GroupStart(), "ncclGroupStart");
        in_group = true;
        for (const Piece& s : sends) call(n.Send(s.data, s.bytes, u8, s.peer, comm, cs), "ncclSend");
        for (const Piece& r : recvs) call(n.Recv(r.data, r.bytes, u8, r.peer, comm, cs), "ncclRecv");
        in_group = false;
        call(n.GroupEnd(), "ncclGroupEnd");
        settle(n, h, deadline, st.abort_flag, who, "ncclGroupEnd");
        finish_on_stream(n, h, api, ord, cs, deadline, st.abort_flag, who);
    } catch (const TimeoutError&) {
        fail(SW_ERR_TIMEOUT, who, " did not complete in NCCL within ", st.timeout_ms, " ms; the NCCL communicator is aborted");
    }
}

namespace {

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
    void exchange(uint64_t seq, const std::vector<Piece>& sends, const std::vector<Piece>& recvs, Clock::time_point deadline,
                  const std::atomic<bool>& local_abort, const std::string& what, const CallTag* /*tag: not carried*/ = nullptr) override {
        if (seq == kP2PTag) return exchange_p2p(sends, recvs, deadline, local_abort, what);
        fail(SW_ERR_INTERNAL, what, ": point-to-point exchange is not available on an NCCL-only host side");
    }
    // Point-to-point transfers' descriptors (p2p_transport.cpp; the tag is not needed: NCCL matches sends and receives
    // of a pair in order): the host pieces staged through device memory, one group of ncclSend / ncclRecv.
    void exchange_p2p(const std::vector<Piece>& sends, const std::vector<Piece>& recvs, Clock::time_point deadline,
                      const std::atomic<bool>& local_abort, const std::string& what) {
        const cuda::PluginApi* api = dev_->cuda;
        const int32_t ord = dev_->ordinal;
        cuda_call(api, &cuda::PluginApi::set_device, ord);
        if (!stream_) cuda_call(api, &cuda::PluginApi::stream_create, ord, &stream_);
        uint64_t need = 0;
        for (const auto* v : {&sends, &recvs})
            for (const Piece& x : *v) need += x.bytes;
        if (need > staging_bytes_) {
            free_later(*dev_, staging_);
            staging_ = nullptr;
            cuda_call(api, &cuda::PluginApi::malloc_device, ord, need, &staging_);
            staging_bytes_ = need;
        }
        if (!comm_->comm) fail(SW_ERR_ABORTED, what, ": the NCCL communicator was aborted");
        char* at = static_cast<char*>(staging_);
        for (const Piece& x : sends) {
            cuda_call(api, &cuda::PluginApi::memcpy_async, ord, at, x.data, x.bytes, stream_);
            at += x.bytes;
        }
        char* recv_at = at;
        auto call = [&](int rc, const char* name) {
            if (rc == kNcclSuccess || rc == kNcclInProgress) return;
            n_.GroupEnd(); // NCCL's group is per thread: never left open
            fail(SW_ERR_BACKEND, what, ": ", name, " (descriptors) failed: ", nccl_error(n_, comm_->comm, rc));
        };
        call(n_.GroupStart(), "ncclGroupStart");
        at = static_cast<char*>(staging_);
        for (const Piece& x : sends) {
            call(n_.Send(at, x.bytes, kNcclUint8, x.peer, comm_->comm, stream_), "ncclSend");
            at += x.bytes;
        }
        for (const Piece& x : recvs) {
            call(n_.Recv(at, x.bytes, kNcclUint8, x.peer, comm_->comm, stream_), "ncclRecv");
            at += x.bytes;
        }
        const int rc = n_.GroupEnd();
        if (rc != kNcclSuccess && rc != kNcclInProgress)
            fail(SW_ERR_BACKEND, what, ": ncclGroupEnd (descriptors) failed: ", nccl_error(n_, comm_->comm, rc));
        settle(n_, *comm_, deadline, local_abort, what, "ncclGroupEnd (descriptors)");
        for (const Piece& x : recvs) {
            cuda_call(api, &cuda::PluginApi::memcpy_async, ord, x.data, recv_at, x.bytes, stream_);
            recv_at += x.bytes;
        }
        finish_on_stream(n_, *comm_, api, ord, stream_, deadline, local_abort, what);
    }
    void all_gather_bytes(uint64_t, const char* mine, uint64_t bytes, char* all, Clock::time_point deadline,
                          const std::atomic<bool>& local_abort, const std::string& what) override {
        const cuda::PluginApi* api = dev_->cuda;
        const int32_t ord = dev_->ordinal;
        cuda_call(api, &cuda::PluginApi::set_device, ord);
        if (!stream_) cuda_call(api, &cuda::PluginApi::stream_create, ord, &stream_);
        const uint64_t need = bytes * (static_cast<uint64_t>(world_) + 1);
        if (need > staging_bytes_) {
            free_later(*dev_, staging_);
            staging_ = nullptr;
            cuda_call(api, &cuda::PluginApi::malloc_device, ord, need, &staging_);
            staging_bytes_ = need;
        }
        char* in = static_cast<char*>(staging_);
        char* out = in + bytes;
        cuda_call(api, &cuda::PluginApi::memcpy_async, ord, in, mine, bytes, stream_);
        if (!comm_->comm) fail(SW_ERR_ABORTED, what, ": the NCCL communicator was aborted");
        const int rc = n_.AllGather(in, out, bytes, kNcclUint8, comm_->comm, stream_);
        if (rc != kNcclSuccess && rc != kNcclInProgress)
            fail(SW_ERR_BACKEND, what, ": ncclAllGather (descriptors) failed: ", nccl_error(n_, comm_->comm, rc));
        // A non-blocking communicator may still be launching the all-gather: the copy out goes on the stream after it.
        settle(n_, *comm_, deadline, local_abort, what, "ncclAllGather (descriptors)");
        cuda_call(api, &cuda::PluginApi::memcpy_async, ord, all, out, bytes * world_, stream_);
        // The copy into `all` (the caller's memory) is finished or failed before this returns or throws.
        finish_on_stream(n_, *comm_, api, ord, stream_, deadline, local_abort, what);
    }
    void notify_abort(sw_status, const std::string&) noexcept override {
        // Nothing to send: the peers find out at their deadline. NCCL is not aborted from here (this may be any thread,
        // while the worker uses the communicator): a waiting worker sees the local abort and aborts it; an idle one is
        // aborted when the communicator goes (NcclMover::close).
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
} // namespace

std::unique_ptr<Transport> sw::make_nccl_transport(const NcclApi& n, std::shared_ptr<NcclRank> comm, int32_t rank,
                                                   int32_t world, std::shared_ptr<DeviceImpl> dev) {
    return std::make_unique<NcclTransport>(n, std::move(comm), rank, world, std::move(dev));
}
