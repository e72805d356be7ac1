// Point-to-point transfers: sw_send, sw_recv, sw_sendrecv (shardwise.h states the contract).
//
// Matching is the transfers' own, apart from the collectives' sequence numbers: per ordered pair (a -> b) a counter
// of a's sends to b and one of b's receives from a, both taken when the call is made (call order); the n-th send
// pairs with the n-th receive (a sw_sendrecv takes one of each). A call is queued on the rank's stream like a
// collective (on a CUDA stream through the Mover's ordering hooks, so the stream's later work waits for it), and when
// the stream reaches it the two sides of every pair agree on (count, dtype) before any data moves:
//  - in-process (p2p_local.cpp): a meeting point per transfer {a, b, n}; the second side to arrive checks the pair,
//    the receiver copies from the sender's region (Mover::p2p_copy: memmove, or the CUDA mover's communication
//    stream) while the sender waits for the copy to end (a send completes once its receive has the data);
//    sw_sendrecv posts both halves first and then waits for both, so rings and pipeline exchanges progress;
//  - multi-process (p2p_transport.cpp): the process's transfers run one at a time in call order, each after the
//    collectives called before it (and each collective after the transfers called before it: the transport
//    agreement asks transfers_done_before); a descriptor per peer (the call, its halves with that peer: pair number, count,
//    dtype) goes both ways in one Transport::exchange under the transfers' own tag (kP2PTag), then the data in a
//    second exchange (Mover::p2p_move: the transport's exchange, or NCCL's grouped send/receive), the halves of a
//    sw_sendrecv in ONE exchange so they progress together.
// A disagreement fails both sides with SW_ERR_MISMATCH naming both ranks and both calls; a side whose peer does not
// come within the timeout fails with SW_ERR_TIMEOUT naming both ranks; either aborts the communicator (and tells the
// other processes), a failed receive's region is left untouched or poisoned, and nothing is counted.
#include "comm/p2p.h"

#include "core/enum_arg.h"

#include <cstring>

using namespace sw;

// ---- the Mover's defaults (communicator.h)

void Mover::p2p_copy(int, char* dst, const char* src, uint64_t bytes) {
    if (bytes) std::memmove(dst, src, bytes);
}

void Mover::p2p_move(Communicator& c, int, const std::vector<Piece>&, const std::vector<Piece>&, Clock::time_point,
                     const std::string& what) {
    fail(SW_ERR_UNSUPPORTED, what, ": the ", c.backend_name, " communicator cannot move point-to-point data");
}

// ---- messages

std::string sw::describe_side(const char* call, int32_t side_rank, bool sending, int32_t peer, uint64_t n,
                              uint64_t count, sw_dtype dtype) {
    (void)side_rank;
    return str(call, "(", sending ? "to" : "from", " rank ", peer, " #", n, ": count ", count, ", ", dtype_name(dtype), ")");
}

std::string sw::check_pair(const char* send_call, int32_t from, uint64_t send_n, uint64_t send_count, sw_dtype send_dtype,
                           const char* recv_call, int32_t to, uint64_t recv_n, uint64_t recv_count, sw_dtype recv_dtype) {
    if (send_n == recv_n && send_count == recv_count && send_dtype == recv_dtype) return {};
    return str("point-to-point calls do not match: rank ", from, " called ",
               describe_side(send_call, from, true, to, send_n, send_count, send_dtype), " but rank ", to, " called ",
               describe_side(recv_call, to, false, from, recv_n, recv_count, recv_dtype));
}

std::string sw::timeout_text(const Communicator& c, const Transfer& t, bool sending) {
    auto name = [&](int32_t r) { return c.rank_names({r}); }; // "1", or "1 (parent rank 3)" in a split communicator
    if (sending)
        return str(t.call, " from rank ", name(t.rank), " to rank ", name(t.send.peer), " (#", t.send.n, "): timed out after ",
                   c.timeout_ms, " ms waiting for rank ", name(t.send.peer), "'s matching receive");
    return str(t.call, " at rank ", name(t.rank), " from rank ", name(t.recv.peer), " (#", t.recv.n, "): timed out after ",
               c.timeout_ms, " ms waiting for rank ", name(t.recv.peer), "'s matching send");
}

namespace {

sw_comm_s* checked_comm(sw_comm h) { return checked(h, HandleKind::Comm, "comm"); }

// The checks of a call (as a collective's: comm_api.cpp): the rank in range and, multi-process, this process's own;
// the stream on the rank's device; the dtype valid. Returns the element size.
size_t check_call(const Communicator& c, int32_t rank, sw_stream_s* s, const sw_dtype& dtype) {
    if (rank < 0 || rank >= c.world)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " is out of range; expected 0 <= rank < ", c.world);
    if (c.self >= 0 && rank != c.self)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " but this process is rank ", c.self, " of the ", c.backend_name,
             " communicator; a multi-process communicator runs one rank per process, pass its own rank");
    if (s->device_impl != c.devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, "stream runs on device '", s->device_impl->name, "' but rank ", rank,
             " of the communicator is on device '", c.devices[rank]->name, "'; expected a stream of rank ", rank,
             "'s device");
    return dtype_size_checked(dtype, "dtype");
}

void check_peer(const Communicator& c, int32_t peer, const char* name, bool may_be_none) {
    if (may_be_none && peer == -1) return;
    if (peer < 0 || peer >= c.world)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", peer, " is out of range; expected 0 <= ", name, " < ", c.world,
             may_be_none ? " (or -1: none)" : "");
}

// One half's region: `count` elements at `offset` of `b`, on the rank's device.
void region(Half& h, sw_buffer b, const char* name, const Communicator& c, int32_t rank, uint64_t offset,
            uint64_t count, size_t esz) {
    auto* buf = checked(b, HandleKind::Buffer, name);
    if (buf->device_impl != c.devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, name, " is not on rank ", rank, "'s device; expected a buffer of that device");
    h.data = buffer_span(buf, offset, count, esz, name);
    h.count = count;
    h.keep = buf->storage;
}

// Takes the pair numbers (and, multi-process, the call order), or fails at once when the communicator is aborted.
void number(Communicator& c, Transfer& t) {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", c.reason, "; create a new communicator");
    if (!c.p2p) c.p2p = std::make_shared<P2PState>();
    P2PState& p = *c.p2p;
    if (t.send.peer >= 0) t.send.n = p.sends[{t.rank, t.send.peer}]++;
    if (t.recv.peer >= 0) t.recv.n = p.recvs[{t.recv.peer, t.rank}]++;
    t.ticket = p.issued++;
    t.after = c.next_seq[t.rank];
    if (c.is_remote()) p.afters.push_back(t.after); // the collectives called after it wait for it
}

void run(Communicator& c, const Transfer& t, cpu::Stream* stream) {
    if (c.is_remote()) run_remote_transfer(c, t, stream);
    else run_local_transfer(c, t, stream);
}

// Queues transfer `t` on `s` (as Communicator::submit queues a collective: communicator.cpp).
void submit(Communicator& c, Transfer t, sw_stream_s* s) {
    auto self = c.shared_from_this();
    cpu::Stream* stream = s->impl.get();
    Mover* mv = c.mover.get();
    if (!mv->orders_device_stream()) {
        number(c, t);
        stream->enqueue([self, t = std::move(t), stream] { run(*self, t, stream); }, /*always=*/true);
        return;
    }
    // A CUDA stream: the host side runs on the stream's worker once the device stream's earlier work is done, and the
    // device stream's later work waits for it (also when it fails). What can fail comes before the pair numbers are
    // taken; a failure after that aborts the communicator (the peers must not wait for this side).
    {
        std::lock_guard<std::mutex> lock(c.mu);
        if (c.aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", c.reason, "; create a new communicator");
    }
    OrderTicket ticket;
    mv->order_begin(s, &ticket);
    try {
        number(c, t);
    } catch (...) {
        mv->order_cancel(ticket);
        throw;
    }
    mv->order_arm(s, &ticket);
    const int32_t rank = t.rank;
    const char* call = t.call;
    mv->enqueue_host_side(stream, ticket, [self, t = std::move(t), stream, mv](OrderTicket& ot) {
        std::string e;
        const sw_status waited = mv->order_wait(ot, &e);
        if (waited != SW_OK) {
            std::string why;
            {
                std::lock_guard<std::mutex> lock(self->mu);
                self->abort_locked(waited, str("rank ", t.rank, " could not run ", t.call,
                                               ": waiting for its stream's earlier work failed: ", e));
                why = self->reason;
            }
            self->agreement->notify_abort(waited, why);
            fail(waited, why);
        }
        run(*self, t, stream);
    });
    std::string err;
    const sw_status queued = mv->order_end(s, ticket, &err);
    if (queued != SW_OK) {
        std::string why;
        {
            std::lock_guard<std::mutex> lock(c.mu);
            c.abort_locked(queued, str("rank ", rank, ": ordering ", call, " into its CUDA stream failed: ", err));
            why = c.reason;
        }
        c.agreement->notify_abort(queued, why);
        fail(queued, why);
    }
}

struct Args {
    Communicator* comm;
    sw_stream_s* stream;
    size_t esz;
};

Args common(sw_comm comm, int32_t rank, sw_stream stream, const sw_dtype& dtype) {
    auto* h = checked_comm(comm);
    auto* s = checked(stream, "stream");
    const size_t esz = check_call(*h->state, rank, s, dtype);
    return {h->state.get(), s, esz};
}

// sw_send / sw_recv: one half of a transfer (the send half when `sending`), checked and queued.
void one_way(const char* call, bool sending, sw_comm comm, int32_t rank, int32_t peer, sw_buffer buf, uint64_t offset,
             uint64_t count, const sw_dtype& dtype, sw_stream stream) {
    const Args a = common(comm, rank, stream, dtype);
    check_peer(*a.comm, peer, "peer", false);
    if (peer == rank)
        fail(SW_ERR_INVALID_ARGUMENT, "peer = rank = ", rank, "; a rank ", sending ? "sends to" : "receives from",
             " itself only with sw_sendrecv (send_peer = recv_peer = rank)");
    Transfer t;
    t.call = call;
    t.rank = rank;
    t.dtype = dtype;
    auto& half = sending ? t.send : t.recv;
    half.peer = peer;
    region(half, buf, "buf", *a.comm, rank, offset, count, a.esz);
    submit(*a.comm, std::move(t), a.stream);
}

} // namespace

extern "C" {

SW_API sw_status sw_send(sw_comm comm, int32_t rank, int32_t peer, sw_buffer buf, uint64_t offset, uint64_t count,
                         sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] { one_way("sw_send", true, comm, rank, peer, buf, offset, count, dtype, stream); });
}

SW_API sw_status sw_recv(sw_comm comm, int32_t rank, int32_t peer, sw_buffer buf, uint64_t offset, uint64_t count,
                         sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] { one_way("sw_recv", false, comm, rank, peer, buf, offset, count, dtype, stream); });
}

SW_API sw_status sw_sendrecv(sw_comm comm, int32_t rank, int32_t send_peer, sw_buffer send, uint64_t send_offset,
                             uint64_t send_count, int32_t recv_peer, sw_buffer recv, uint64_t recv_offset,
                             uint64_t recv_count, sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] {
        const Args a = common(comm, rank, stream, dtype);
        check_peer(*a.comm, send_peer, "send_peer", true);
        check_peer(*a.comm, recv_peer, "recv_peer", true);
        if ((send_peer == rank || recv_peer == rank) && (send_peer != rank || recv_peer != rank))
            fail(SW_ERR_INVALID_ARGUMENT, "send_peer = ", send_peer, ", recv_peer = ", recv_peer, ", rank = ", rank,
                 "; a rank transfers to itself only with send_peer = recv_peer = rank (a copy)");
        Transfer t;
        t.call = "sw_sendrecv";
        t.rank = rank;
        t.dtype = dtype;
        t.send.peer = send_peer;
        t.recv.peer = recv_peer;
        if (send_peer >= 0) region(t.send, send, "send", *a.comm, rank, send_offset, send_count, a.esz);
        if (recv_peer >= 0) region(t.recv, recv, "recv", *a.comm, rank, recv_offset, recv_count, a.esz);
        if (send_peer < 0 && recv_peer < 0) return; // nothing to transfer
        submit(*a.comm, std::move(t), a.stream);
    });
}

} // extern "C"
