// The transport agreement (the Agreement of multi-process communicators): one rank per process, the processes linked
// by a Transport (TCP, MPI, or NCCL itself).
//
// Every collective runs on the rank's stream worker, in sequence order, in two steps:
//  1. descriptor exchange: each rank sends every other rank a small fixed-size description of its call
//     (operation, dtype, counts, root, shapes, capacities, sequence number) and receives theirs. A rank that does
//     not send its descriptor before the timeout is named in the timeout error; ranks that disagree all see the
//     same descriptors and so all fail with the same SW_ERR_MISMATCH message (check_agreement, shared with the
//     in-process rendezvous). This step is also the barrier.
//  2. data movement: the communicator's Mover (mover_transport.cpp: the same transport's exchanges; mover_nccl.cpp).
// With the agreement check off (sw_comm_set_agreement_check) step 1 is skipped for the collectives whose sizes follow
// from the rank's own descriptor (agreement_skippable): one round trip less, mismatches caught only by size.
// Any failure aborts the communicator locally and tells the peers (Transport::notify_abort), so their pending
// collectives fail at once with the reason instead of waiting for the timeout.
#include "comm/communicator.h"
#include "comm/p2p.h"

#include <algorithm>
#include <new>
#include <optional>

using namespace sw;

// A collective's first exchange timed out: who never joined it (communicator.h).
void sw::fail_never_joined(const Communicator& st, const TimeoutError& e, const std::string& what) {
    const int p = st.world;
    if (e.missing.empty()) // the transport cannot tell who is late (NCCL)
        fail(SW_ERR_TIMEOUT, what, " timed out after ", st.timeout_ms, " ms: some of the ", p,
             " ranks never joined (this transport cannot tell which); the communicator is aborted");
    std::vector<int> present; // the waiting ranks are alive, held up by the missing ones: neither joined nor missing
    for (int q = 0; q < p; ++q)
        if (std::find(e.missing.begin(), e.missing.end(), q) == e.missing.end() &&
            std::find(e.waiting.begin(), e.waiting.end(), q) == e.waiting.end())
            present.push_back(q);
    fail(SW_ERR_TIMEOUT, what, " timed out after ", st.timeout_ms, " ms: rank(s) ", st.rank_names(e.missing), " of ", p,
         " never joined (joined: ", rank_list(present),
         e.waiting.empty() ? std::string() : str("; alive, still held up in an earlier collective: rank ", rank_list(e.waiting)),
         "); the communicator is aborted");
}

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

// The descriptor fields that travel as they are (op and dtype are enums: sent as int32), copied either way.
template <class To, class From>
void copy_plain_fields(To& to, const From& from) {
    to.root = from.root;
    to.count = from.count;
    to.rows = from.rows;
    to.cols = from.cols;
    to.ld_send = from.ld_send;
    to.ld_recv = from.ld_recv;
    to.recv_capacity = from.recv_capacity;
    to.send_capacity = from.send_capacity;
}

Wire to_wire(const Desc& d, uint64_t seq) {
    Wire w{};
    w.magic = kWireMagic;
    w.seq = seq;
    w.op = static_cast<int32_t>(d.op);
    w.dtype = static_cast<int32_t>(d.dtype);
    copy_plain_fields(w, d);
    return w;
}

Desc from_wire(const Wire& w) {
    Desc d;
    d.op = static_cast<Coll>(w.op);
    d.dtype = static_cast<sw_dtype>(w.dtype);
    copy_plain_fields(d, w);
    return d;
}

// Step 1: every rank's descriptor into slot.desc (this rank's is `me`, with its pointers). Fails on disagreement.
void exchange_descriptors(Communicator& st, Transport& t, uint64_t seq, const Desc& me, Slot& slot,
                          Clock::time_point deadline, const std::string& what) {
    const int p = t.world(), self = t.rank();
    const Wire mine = to_wire(me, seq);
    std::vector<Wire> theirs(p);
    try {
        t.all_gather_bytes(seq, reinterpret_cast<const char*>(&mine), sizeof(Wire), reinterpret_cast<char*>(theirs.data()),
                           deadline, st.abort_flag, what);
    } catch (const TimeoutError& e) {
        fail_never_joined(st, e, what);
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
        if (w.op < 0 || w.op > static_cast<int32_t>(Coll::Split))
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent an unknown operation ", w.op);
        // Checked before it becomes a sw_dtype (an out-of-range enum value is undefined behaviour; see core/enum_arg.h).
        if (w.dtype < SW_DTYPE_F32 || w.dtype > SW_DTYPE_U8)
            fail(SW_ERR_BACKEND, what, ": rank ", q, " sent an unknown dtype ", w.dtype);
        slot.desc[q] = from_wire(w);
    }
    const std::string problem = check_agreement(slot, p);
    if (!problem.empty()) fail(SW_ERR_MISMATCH, "collective #", seq, ": ", problem);
}

class TransportAgreement final : public Agreement {
public:
    explicit TransportAgreement(std::unique_ptr<Transport> t) : t_(std::move(t)) {}
    void run(Communicator& c, int rank, uint64_t seq, const Desc& desc, cpu::Stream* stream) override;
    void notify_abort(sw_status status, const std::string& reason) noexcept override { t_->notify_abort(status, reason); }
    Transport* transport() noexcept override { return t_.get(); }

private:
    std::unique_ptr<Transport> t_;
    uint64_t next_ = 0; // the sequence number whose turn it is (collectives run in order); under the communicator's mu
};

void TransportAgreement::run(Communicator& c, int rank, uint64_t seq, const Desc& desc, cpu::Stream* stream) {
    Communicator* st = &c;
    Transport& t = *t_;
    std::string what = coll_name(desc.op); // "sw_all_reduce #7" (no stream formatting on the hot path)
    what += " #";
    what += std::to_string(seq);
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
            // One collective at a time, in sequence order (a rank may queue collectives on several streams), after the
            // point-to-point transfers called before it (p2p_transport.cpp).
            auto turn = [&] { return next_ == seq && transfers_done_before(*st, seq); };
            while (!turn() && !st->aborted)
                if (st->cv.wait_until(lock, deadline) == std::cv_status::timeout && !turn() && !st->aborted) {
                    st->abort_locked(SW_ERR_TIMEOUT, str("rank ", rank, ": ", what, " waited ", st->timeout_ms,
                                                         " ms for this rank's earlier ",
                                                         next_ != seq ? str("collective #", next_) : std::string("transfers"),
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
        backup.emplace(*st->mover, rank, desc);
        // The check carried in the data's frames (TCP, shared memory): all-reduce, all-gather and reduce-scatter,
        // where every rank sends to and hears from every peer in the first exchange, need no round trip of their own.
        const bool carried = desc.check && !desc.host && t.carries_tags() && st->mover->carries_tags() &&
                             (desc.op == Coll::AllReduce || desc.op == Coll::AllGather || desc.op == Coll::ReduceScatter);
        if ((!desc.check || carried) && agreement_skippable(desc.op) && !desc.host) {
            // The agreement check is off (sw_comm_set_agreement_check), or carried: every peer's descriptor is taken
            // to be this rank's (its sizes only; the mover reads no peer's pointers), no round trip. Check off: a peer
            // whose call differs in its byte counts fails the data exchange instead (the transports check every
            // message's size); carried: the frames' tags name both calls.
            Desc peer = desc;
            peer.send = nullptr;
            peer.recv = nullptr;
            peer.keep_send.reset();
            peer.keep_recv.reset();
            slot.desc.assign(t.world(), peer);
            slot.desc[t.rank()] = desc;
            slot.carried = carried;
        } else {
            exchange_descriptors(*st, t, seq, desc, slot, deadline, what);
        }
        moving = true;
        if (desc.host) desc.host(t, slot, deadline); // a host collective (sw_comm_split): no data of the mover's
        else st->mover->move(*st, rank, seq, slot, deadline);
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
    if (status != SW_OK && moving) st->mover->poison_or_restore(slot, st->world, rank, backup ? backup->data() : nullptr);
    std::unique_lock<std::mutex> lock(st->mu);
    if (next_ == seq) ++next_;
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
    // A receive MPI could not cancel may still land in the mover's scratch: never free it (one buffer per aborted
    // communicator).
    st->mover->forget_buffers();
    const std::string reason = st->reason;
    const sw_status reported = st->abort_status;
    lock.unlock();
    if (first) t.notify_abort(status, reason);
    // A wait that ended because this process aborted the communicator (sw_comm_abort, or its family's failure,
    // split.cpp) reports why it was aborted.
    if (!first && (message.find("the communicator was aborted in this process") != std::string::npos ||
                   message.find("the communicator's connections are closed") != std::string::npos))
        message = str(what, ": the communicator was aborted: ", reason);
    throw Error(first ? status : reported, first ? reason : str("rank ", rank, ": ", message));
}

} // namespace

// Point-to-point transfers (p2p_transport.cpp) run over the same transport.
Transport* sw::agreement_transport(Agreement& a) { return a.transport(); }

std::unique_ptr<Agreement> sw::make_transport_agreement(std::unique_ptr<Transport> transport) {
    return std::make_unique<TransportAgreement>(std::move(transport));
}
