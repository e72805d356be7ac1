// Multi-process collectives: one rank per process, the processes linked by a Transport (TCP or MPI).
//
// Every collective runs on the rank's stream worker, in sequence order, in two steps:
//  1. descriptor exchange: each rank sends every other rank a small fixed-size description of its call
//     (operation, dtype, counts, root, shapes, capacities, sequence number) and receives theirs. A rank that does
//     not send its descriptor before the timeout is named in the timeout error; ranks that disagree all see the
//     same descriptors and so all fail with the same SW_ERR_MISMATCH message (check_agreement, shared with the
//     in-process communicator). This step is also the barrier.
//  2. data movement, built from the same exchange primitive:
//     - all-gather (-v, -columns): each rank sends its block to every other rank;
//     - all-reduce: reduce-scatter then all-gather over the same chunks as the in-process communicator (chunk q =
//       shard q of the count); chunk q is summed by rank q in rank order 0..p-1, so every rank gets the same bits,
//       and the same bits as an in-process communicator of the same size;
//     - reduce-scatter (-v): rank q receives block q of every rank and sums in rank order;
//     - broadcast: the root sends to every rank.
// Any failure aborts the communicator locally and tells the peers (Transport::notify_abort), so their pending
// collectives fail at once with the reason instead of waiting for the timeout.
#include "comm/comm_internal.h"
#include "core/index_math.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <optional>

using namespace sw;

namespace {

constexpr uint32_t kWireMagic = 0x53574431; // "SWD1"

// The descriptor as sent over the wire (processes of one job share the architecture: native byte order).
struct Wire {
    uint32_t magic;
    int32_t op, dtype, root;
    uint64_t seq, count;
    int64_t rows, cols, ld_send, ld_recv;
    uint64_t recv_capacity, send_capacity;
};
static_assert(sizeof(Wire) == 80, "Wire has no padding");

Wire to_wire(const Desc& d, uint64_t seq) {
    Wire w{};
    w.magic = kWireMagic;
    w.op = static_cast<int32_t>(d.op);
    w.dtype = static_cast<int32_t>(d.dtype);
    w.root = d.root;
    w.seq = seq;
    w.count = d.count;
    w.rows = d.rows;
    w.cols = d.cols;
    w.ld_send = d.ld_send;
    w.ld_recv = d.ld_recv;
    w.recv_capacity = d.recv_capacity;
    w.send_capacity = d.send_capacity;
    return w;
}

Desc from_wire(const Wire& w) {
    Desc d;
    d.op = static_cast<Coll>(w.op);
    d.dtype = static_cast<sw_dtype>(w.dtype);
    d.root = w.root;
    d.count = w.count;
    d.rows = w.rows;
    d.cols = w.cols;
    d.ld_send = w.ld_send;
    d.ld_recv = w.ld_recv;
    d.recv_capacity = w.recv_capacity;
    d.send_capacity = w.send_capacity;
    return d;
}

// Step 1: every rank's descriptor into slot.desc (this rank's is `me`, with its pointers). Fails on disagreement.
void exchange_descriptors(CommState& st, Transport& t, uint64_t seq, const Desc& me, Slot& slot,
                          Clock::time_point deadline, const std::string& what) {
    const int p = t.world(), self = t.rank();
    const Wire mine = to_wire(me, seq);
    std::vector<Wire> theirs(p);
    try {
        t.all_gather_bytes(seq, reinterpret_cast<const char*>(&mine), sizeof(Wire), reinterpret_cast<char*>(theirs.data()),
                           deadline, st.abort_flag, what);
    } catch (const TimeoutError& e) {
        if (e.missing.empty()) // the transport cannot tell who is late (NCCL)
            fail(SW_ERR_TIMEOUT, what, " timed out after ", st.timeout_ms, " ms: some of the ", p,
                 " ranks never joined (this transport cannot tell which); the communicator is aborted");
        std::vector<int> present; // the waiting ranks are alive, held up by the missing ones: neither joined nor missing
        for (int q = 0; q < p; ++q)
            if (std::find(e.missing.begin(), e.missing.end(), q) == e.missing.end() &&
                std::find(e.waiting.begin(), e.waiting.end(), q) == e.waiting.end())
                present.push_back(q);
        fail(SW_ERR_TIMEOUT, what, " timed out after ", st.timeout_ms, " ms: rank(s) ", rank_list(e.missing), " of ", p,
             " never joined (joined: ", rank_list(present),
             e.waiting.empty() ? std::string() : str("; alive, still held up in an earlier collective: rank ", rank_list(e.waiting)),
             "); the communicator is aborted");
    }
    slot.desc.assign(p, Desc{});
    for (int q = 0; q < p; ++q) {
        if (q == self) {
            slot.desc[q] = me;
            continue;
        }
        const Wire& w = theirs[q];
        if (w.magic != kWireMagic)
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent a malformed descriptor (another program or version?)");
        if (w.seq != seq)
            fail(SW_ERR_MISMATCH, what, ": rank ", q, " is at its collective #", w.seq, " (", coll_name(static_cast<Coll>(w.op)),
                 ") while rank ", self, " is at #", seq);
        if (w.op < 0 || w.op > static_cast<int32_t>(Coll::Barrier))
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent an unknown operation ", w.op);
        // Checked before it becomes a sw_dtype (an out-of-range enum value is undefined behaviour; see core/enum_arg.h).
        if (w.dtype < SW_DTYPE_F32 || w.dtype > SW_DTYPE_U8)
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent an unknown dtype ", w.dtype);
        slot.desc[q] = from_wire(w);
    }
    const std::string problem = check_agreement(slot, p);
    if (!problem.empty()) fail(SW_ERR_MISMATCH, "collective #", seq, ": ", problem);
}

// Pieces of `bytes` bytes at `data` for every peer (skipping empty ones).
void to_all(std::vector<Piece>& out, int p, int self, char* data, uint64_t bytes) {
    if (!bytes) return;
    for (int q = 0; q < p; ++q)
        if (q != self) out.push_back({q, data, bytes});
}

// The communicator's receive scratch, at least `bytes` long: kept from call to call (collectives of a multi-process
// communicator run one at a time), so that big collectives do not map, fault in and unmap fresh pages every call.
char* scratch(CommState& st, uint64_t bytes) {
    if (bytes > st.remote_scratch_bytes) {
        st.remote_scratch.reset(new char[bytes]); // not zeroed: every byte used is received first
        st.remote_scratch_bytes = bytes;
    }
    return st.remote_scratch.get();
}

// Step 2 for the rank of this process.
void move_remote(CommState& st, Transport& t, uint64_t seq, const Slot& slot, Clock::time_point deadline,
                 const std::string& what) {
    const int p = t.world(), self = t.rank();
    const Desc& me = slot.desc[self];
    const size_t esz = sw_dtype_size(me.dtype);
    std::vector<Piece> sends, recvs;
    auto run = [&] {
        t.exchange(seq, sends, recvs, deadline, st.abort_flag, what);
        sends.clear();
        recvs.clear();
        if (test_fault_point()) { // test only (SHARDWISE_TEST_FAULT=abort:N): as sw_comm_abort at this moment
            st.abort_flag.store(true);
            fail(SW_ERR_ABORTED, what, ": injected fault (SHARDWISE_TEST_FAULT) after a data exchange");
        }
    };
    char* send = const_cast<char*>(me.send);
    switch (me.op) {
    case Coll::AllGather:
    case Coll::AllGatherV: {
        uint64_t at = 0, mine_at = 0;
        for (int q = 0; q < p; ++q) {
            const uint64_t c = slot.desc[q].count;
            if (q == self) mine_at = at;
            else if (c) recvs.push_back({q, me.recv + at * esz, c * esz});
            at += c;
        }
        to_all(sends, p, self, send, me.count * esz);
        run();
        if (me.count) std::memmove(me.recv + mine_at * esz, me.send, me.count * esz);
        break;
    }
    case Coll::AllGatherColumns: {
        // Blocks travel packed (rows x cols); each lands at its column offset.
        const int64_t rows = me.rows;
        std::vector<char*> block(p + 1); // every rank's packed block, one after the other in the scratch
        uint64_t bytes = 0;
        for (int q = 0; q < p; ++q) bytes += static_cast<uint64_t>(rows * slot.desc[q].cols) * esz;
        block[0] = scratch(st, bytes);
        for (int q = 0; q < p; ++q) block[q + 1] = block[q] + static_cast<uint64_t>(rows * slot.desc[q].cols) * esz;
        for (int64_t i = 0; i < rows && me.cols > 0; ++i)
            std::memcpy(block[self] + i * me.cols * esz, me.send + i * me.ld_send * esz, me.cols * esz);
        for (int q = 0; q < p; ++q)
            if (q != self && block[q + 1] > block[q]) recvs.push_back({q, block[q], static_cast<uint64_t>(block[q + 1] - block[q])});
        to_all(sends, p, self, block[self], static_cast<uint64_t>(block[self + 1] - block[self]));
        run();
        int64_t col0 = 0;
        for (int q = 0; q < p; ++q) {
            const int64_t cols = slot.desc[q].cols;
            const char* src = block[q];
            for (int64_t i = 0; i < rows && cols > 0; ++i)
                std::memcpy(me.recv + (i * me.ld_recv + col0) * esz, src + i * cols * esz, cols * esz);
            col0 += cols;
        }
        break;
    }
    case Coll::AllReduce: {
        const int64_t total = static_cast<int64_t>(me.count);
        auto begin = [&](int q) { return static_cast<uint64_t>(shard_offset(total, p, q)); };
        auto size = [&](int q) { return static_cast<uint64_t>(shard_count(total, p, q)); };
        const uint64_t n = size(self), b = begin(self);
        // In place (send == recv), the result is built in the scratch and copied into recv only once nothing can
        // fail any more, so that a failed all-reduce keeps its input (the cost: one copy of the result).
        const bool in_place = in_place_all_reduce(me);
        // Reduce-scatter: chunk q of this rank's send goes to rank q; chunk `self` of every rank comes here.
        char* part = scratch(st, (p * n + (in_place ? me.count : 0)) * esz); // rank q's chunk at part + q * n
        char* out = in_place ? part + p * n * esz : me.recv; // where the result is gathered
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            if (size(q)) sends.push_back({q, send + begin(q) * esz, size(q) * esz});
            if (n) recvs.push_back({q, part + q * n * esz, n * esz});
        }
        run();
        if (n) {
            std::vector<const char*> src(p);
            for (int q = 0; q < p; ++q) src[q] = q == self ? me.send + b * esz : part + q * n * esz;
            reduce_sum(me.dtype, src, {out + b * esz}, n); // rank order 0..p-1
        }
        // All-gather of the reduced chunks.
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            if (n) sends.push_back({q, out + b * esz, n * esz});
            if (size(q)) recvs.push_back({q, out + begin(q) * esz, size(q) * esz});
        }
        run();
        if (in_place && me.count) std::memcpy(me.recv, out, me.count * esz);
        break;
    }
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: {
        char* part = scratch(st, p * me.count * esz); // rank q's block at part + q * count
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            const uint64_t cq = slot.desc[q].count;
            if (cq) sends.push_back({q, send + scatter_displacement(slot, q) * esz, cq * esz});
            if (me.count) recvs.push_back({q, part + q * me.count * esz, me.count * esz});
        }
        run();
        if (me.count) {
            const uint64_t displ = scatter_displacement(slot, self);
            std::vector<const char*> src(p);
            for (int q = 0; q < p; ++q) src[q] = q == self ? me.send + displ * esz : part + q * me.count * esz;
            reduce_sum(me.dtype, src, {me.recv}, me.count);
        }
        break;
    }
    case Coll::Broadcast:
        if (!me.count) break;
        if (self == me.root) to_all(sends, p, self, send, me.count * esz);
        else recvs.push_back({me.root, me.recv, me.count * esz});
        run();
        break;
    case Coll::Barrier: break; // the descriptor exchange was the barrier
    }
}

} // namespace

void sw::run_remote_collective(const std::shared_ptr<CommState>& st, int rank, uint64_t seq, const Desc& desc,
                               cpu::Stream* stream) {
    Transport& t = *st->transport;
    const std::string what = str(coll_name(desc.op), " #", seq);
    const auto deadline = Clock::now() + std::chrono::milliseconds(st->timeout_ms);
    std::string notify; // set when this rank aborts the communicator: the peers are told outside the lock
    {
        std::unique_lock<std::mutex> lock(st->mu);
        if (st->aborted)
            fail(SW_ERR_ABORTED, "rank ", rank, ": ", what, " not run: the communicator was aborted: ", st->reason);
        const std::string pending = stream->pending_error();
        if (!pending.empty()) {
            st->abort_locked(SW_ERR_ABORTED, str("rank ", rank, " could not join ", what,
                                                 " because of an earlier error on its stream: ", pending));
            notify = st->reason;
        } else {
            // One collective at a time, in sequence order (a rank may queue collectives on several streams).
            while (st->remote_next != seq && !st->aborted)
                if (st->cv.wait_until(lock, deadline) == std::cv_status::timeout && st->remote_next != seq && !st->aborted) {
                    st->abort_locked(SW_ERR_TIMEOUT, str("rank ", rank, ": ", what, " waited ", st->timeout_ms,
                                                         " ms for this rank's earlier collective #", st->remote_next,
                                                         " (queued on another stream) to run"));
                    notify = st->reason;
                }
            if (notify.empty() && st->aborted)
                fail(SW_ERR_ABORTED, "rank ", rank, ": ", what, " not run: the communicator was aborted: ", st->reason);
        }
    }
    if (!notify.empty()) {
        t.notify_abort(SW_ERR_ABORTED, notify);
        std::lock_guard<std::mutex> lock(st->mu);
        fail(st->abort_status, st->reason);
    }
    sw_status status = SW_OK;
    std::string message;
    Slot slot;
    bool moving = false; // the descriptors agree: data may be written from here on
    std::optional<InPlaceBackup> backup; // NCCL (CUDA devices), in place: the input, restored on failure
    try {
        backup.emplace(*st, rank, desc);
        exchange_descriptors(*st, t, seq, desc, slot, deadline, what);
        moving = true;
        if (st->nccl) nccl_move(*st, rank, seq, slot, deadline);
        else move_remote(*st, t, seq, slot, deadline, what);
    } catch (const Error& e) {
        status = e.status();
        message = e.message();
    } catch (const std::bad_alloc&) { // the receive scratch: like any failure, abort and tell the peers
        status = SW_ERR_OUT_OF_MEMORY;
        message = str(what, ": out of memory");
    } catch (const std::exception& e) {
        status = SW_ERR_INTERNAL;
        message = str(what, ": internal error: ", e.what());
    }
    // The contract for the outputs of a failed collective (shardwise.h): the whole receive region poisoned, an
    // in-place all-reduce's input kept (on CPU devices move_remote never wrote into it; NCCL: the backup is restored).
    // Before the descriptors agreed nothing was written. Done before the next collective may run.
    if (status != SW_OK && moving) poison_or_restore(*st, slot, rank, backup ? backup->data() : nullptr);
    std::unique_lock<std::mutex> lock(st->mu);
    if (st->remote_next == seq) ++st->remote_next;
    st->cv.notify_all();
    if (status == SW_OK) {
        ++st->completed[rank];
        return;
    }
    // The first failure wins: a peer's abort (or a local abort) is reported as it was.
    const bool first = !st->aborted;
    st->abort_locked(status, str("rank ", rank, ": ", message));
    st->orphans.push_back(desc.keep_send);
    st->orphans.push_back(desc.keep_recv);
    // A receive MPI could not cancel may still land in the scratch: never free it (one buffer per aborted communicator).
    if (st->remote_scratch) (void)st->remote_scratch.release();
    st->remote_scratch_bytes = 0;
    const std::string reason = st->reason;
    const sw_status reported = st->abort_status;
    lock.unlock();
    if (first) t.notify_abort(status, reason);
    throw Error(first ? status : reported, first ? reason : str("rank ", rank, ": ", message));
}
