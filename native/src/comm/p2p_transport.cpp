// Point-to-point transfers of multi-process communicators (p2p.cpp draws the design): TCP, MPI and NCCL per process.
// The transfers of this process run one at a time in call order, each after the collectives called before it (so a
// rank's transfers and collectives reach its connections in the order they were called). A call then
//  1. sends every peer of the call a descriptor of what it does with that peer (send: pair number, count; receive:
//     pair number, count; the dtype) and receives the peer's, in one Transport::exchange under kP2PTag; both sides
//     check the pair (the same text on both: check_pair, or which halves are missing);
//  2. moves the data: Mover::p2p_move (the transport's exchange, or NCCL's grouped send/receive), the halves of a
//     sw_sendrecv in one step so they progress together.
// A failure aborts the communicator and tells the peers (as a failed collective: agree_transport.cpp), so the other
// side fails at once with the reason; a receive region written in step 2 is poisoned.
#include "comm/p2p.h"

#include <new>

using namespace sw;

namespace {

constexpr uint32_t kP2PMagic = 0x53575031; // "SWP1"
constexpr uint32_t kSends = 1, kRecvs = 2;  // PWire::halves: this side sends to / receives from the wire's receiver

// What one side of a call does with one peer, as sent over the wire (native byte order, as the collectives').
struct PWire {
    uint32_t magic;
    int32_t call; // 0 sw_send, 1 sw_recv, 2 sw_sendrecv
    int32_t dtype;
    uint32_t halves;
    uint64_t send_n, send_count, recv_n, recv_count;
};
static_assert(sizeof(PWire) == 48, "PWire has no padding");

const char* call_name(int32_t call) {
    switch (call) {
    case 0: return "sw_send";
    case 1: return "sw_recv";
    case 2: return "sw_sendrecv";
    }
    return "a transfer";
}

int32_t call_index(const char* call) {
    if (std::strcmp(call, "sw_send") == 0) return 0;
    if (std::strcmp(call, "sw_recv") == 0) return 1;
    return 2;
}

PWire wire_for(const Transfer& t, int32_t q) {
    PWire w{};
    w.magic = kP2PMagic;
    w.call = call_index(t.call);
    w.dtype = static_cast<int32_t>(t.dtype);
    if (t.send.peer == q) {
        w.halves |= kSends;
        w.send_n = t.send.n;
        w.send_count = t.send.count;
    }
    if (t.recv.peer == q) {
        w.halves |= kRecvs;
        w.recv_n = t.recv.n;
        w.recv_count = t.recv.count;
    }
    return w;
}

// "sw_sendrecv(to rank 1 #3: count 10, f32; from rank 1 #2: count 5, f32)": what a side does with `peer`.
std::string side_text(const PWire& w, int32_t peer) {
    const auto dt = static_cast<sw_dtype>(w.dtype);
    std::string s = str(call_name(w.call), "(");
    if (w.halves & kSends) s += str("to rank ", peer, " #", w.send_n, ": count ", w.send_count, ", ", dtype_name(dt));
    if (w.halves & kRecvs)
        s += str((w.halves & kSends) ? "; " : "", "from rank ", peer, " #", w.recv_n, ": count ", w.recv_count, ", ",
                 dtype_name(dt));
    if (!w.halves) s += str("nothing with rank ", peer);
    return s + ")";
}

// The pair (self, q) agrees: "" or the problem, the same text on both sides.
std::string check_peer_wire(const PWire& mine, int32_t self, const PWire& theirs, int32_t q) {
    const bool i_send = mine.halves & kSends, i_recv = mine.halves & kRecvs;
    const bool q_sends = theirs.halves & kSends, q_recvs = theirs.halves & kRecvs;
    if (i_send == q_recvs && i_recv == q_sends) {
        const auto my_dt = static_cast<sw_dtype>(mine.dtype), q_dt = static_cast<sw_dtype>(theirs.dtype);
        std::string problem;
        if (i_send)
            problem = check_pair(call_name(mine.call), self, mine.send_n, mine.send_count, my_dt, call_name(theirs.call),
                                 q, theirs.recv_n, theirs.recv_count, q_dt);
        if (problem.empty() && i_recv)
            problem = check_pair(call_name(theirs.call), q, theirs.send_n, theirs.send_count, q_dt, call_name(mine.call),
                                 self, mine.recv_n, mine.recv_count, my_dt);
        return problem;
    }
    // The halves themselves differ: the lower rank named first, so both sides say the same.
    const bool me_first = self < q;
    return str("point-to-point calls do not match: rank ", me_first ? self : q, " called ",
               me_first ? side_text(mine, q) : side_text(theirs, self), " but rank ", me_first ? q : self, " called ",
               me_first ? side_text(theirs, self) : side_text(mine, q));
}

// "sw_sendrecv (to rank 1 #3, from rank 2 #0)", the prefix of the transport's messages.
std::string what_of(const Transfer& t) {
    std::string s = t.call;
    if (t.send.peer >= 0 && t.recv.peer >= 0)
        return str(s, " (to rank ", t.send.peer, " #", t.send.n, ", from rank ", t.recv.peer, " #", t.recv.n, ")");
    if (t.send.peer >= 0) return str(s, " to rank ", t.send.peer, " (#", t.send.n, ")");
    return str(s, " from rank ", t.recv.peer, " (#", t.recv.n, ")");
}

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

void transfer(Communicator& c, Transport& tp, const Transfer& t, Clock::time_point deadline, const std::string& what,
              bool* moving) {
    const int32_t r = t.rank;
    const size_t esz = sw_dtype_size(t.dtype);
    if (t.send.peer == r) { // a copy to itself (send_peer = recv_peer = rank)
        const std::string problem = check_pair(t.call, r, t.send.n, t.send.count, t.dtype, t.call, r, t.recv.n,
                                               t.recv.count, t.dtype);
        if (!problem.empty()) fail(SW_ERR_MISMATCH, problem);
        *moving = true;
        c.mover->p2p_copy(r, t.recv.data, t.send.data, t.recv.count * esz);
        return;
    }
    std::vector<int32_t> peers;
    if (t.send.peer >= 0) peers.push_back(t.send.peer);
    if (t.recv.peer >= 0 && t.recv.peer != t.send.peer) peers.push_back(t.recv.peer);
    std::vector<PWire> mine(peers.size()), theirs(peers.size());
    std::vector<Piece> sends, recvs;
    for (size_t k = 0; k < peers.size(); ++k) {
        mine[k] = wire_for(t, peers[k]);
        sends.push_back({peers[k], reinterpret_cast<char*>(&mine[k]), sizeof(PWire)});
        recvs.push_back({peers[k], reinterpret_cast<char*>(&theirs[k]), sizeof(PWire)});
    }
    try {
        tp.exchange(kP2PTag, sends, recvs, deadline, c.abort_flag, what);
    } catch (const TimeoutError& e) {
        std::vector<int> late = e.missing;
        late.insert(late.end(), e.waiting.begin(), e.waiting.end());
        std::string why;
        if (t.send.peer >= 0 && (late.empty() || contains(late, t.send.peer))) why = timeout_text(c, t, true);
        if (t.recv.peer >= 0 && (late.empty() || contains(late, t.recv.peer)))
            why += (why.empty() ? "" : "; ") + timeout_text(c, t, false);
        fail(SW_ERR_TIMEOUT, why, "; the communicator is aborted");
    }
    for (size_t k = 0; k < peers.size(); ++k) {
        const PWire& w = theirs[k];
        if (w.magic != kP2PMagic || w.call < 0 || w.call > 2 || (w.halves & ~(kSends | kRecvs)))
            fail(SW_ERR_BACKEND, what, ": rank ", peers[k], " sent a malformed transfer descriptor (another program or version?)");
        if (w.dtype < SW_DTYPE_F32 || w.dtype > SW_DTYPE_U8) // checked before it is read as a sw_dtype
            fail(SW_ERR_BACKEND, what, ": rank ", peers[k], " sent an unknown dtype ", w.dtype);
        const std::string problem = check_peer_wire(mine[k], r, w, peers[k]);
        if (!problem.empty()) fail(SW_ERR_MISMATCH, problem);
    }
    sends.clear();
    recvs.clear();
    if (t.send.peer >= 0 && t.send.count) sends.push_back({t.send.peer, t.send.data, t.send.count * esz});
    if (t.recv.peer >= 0 && t.recv.count) recvs.push_back({t.recv.peer, t.recv.data, t.recv.count * esz});
    *moving = true;
    if (!sends.empty() || !recvs.empty()) c.mover->p2p_move(c, r, sends, recvs, deadline, what);
}

} // namespace

bool sw::transfers_done_before(Communicator& c, uint64_t seq) {
    if (!c.p2p) return true;
    P2PState& p = *c.p2p;
    // Tickets below p.next have run: forget them. The rest are in call order, their `after` not decreasing.
    while (p.done_base < p.next && !p.afters.empty()) {
        p.afters.pop_front();
        ++p.done_base;
    }
    return p.afters.empty() || p.afters.front() > seq; // the first transfer not run was called after collective #seq
}

void sw::run_remote_transfer(Communicator& c, const Transfer& t, cpu::Stream* stream) {
    const int32_t r = t.rank;
    Transport* tp = agreement_transport(*c.agreement);
    if (!tp) fail(SW_ERR_INTERNAL, t.call, ": a multi-process communicator without a transport");
    const std::string what = what_of(t);
    const auto deadline = Clock::now() + std::chrono::milliseconds(c.timeout_ms);
    P2PState& p = *c.p2p;
    std::string notify; // set when this side aborts the communicator before its turn: the peers are told
    {
        std::unique_lock<std::mutex> lock(c.mu);
        auto turn = [&] { return p.next == t.ticket && c.completed[r] >= t.after; };
        if (c.aborted) fail(SW_ERR_ABORTED, "rank ", r, ": ", what, " not run: the communicator was aborted: ", c.reason);
        const std::string pending = stream->pending_error();
        if (!pending.empty()) {
            c.abort_locked(SW_ERR_ABORTED, str("rank ", r, " could not run ", what,
                                               " because of an earlier error on its stream: ", pending));
            notify = c.reason;
        } else {
            // In call order: this process's earlier transfers, and the collectives called before this one.
            while (!turn() && !c.aborted)
                if (c.cv.wait_until(lock, deadline) == std::cv_status::timeout && !turn() && !c.aborted) {
                    c.abort_locked(SW_ERR_TIMEOUT, str("rank ", r, ": ", what, " waited ", c.timeout_ms,
                                                       " ms for this rank's earlier transfers and collectives (queued "
                                                       "on other streams) to run"));
                    notify = c.reason;
                }
            if (notify.empty() && c.aborted)
                fail(SW_ERR_ABORTED, "rank ", r, ": ", what, " not run: the communicator was aborted: ", c.reason);
        }
    }
    if (!notify.empty()) {
        tp->notify_abort(SW_ERR_ABORTED, notify);
        std::lock_guard<std::mutex> lock(c.mu);
        fail(c.abort_status, c.reason);
    }
    sw_status status = SW_OK;
    std::string message;
    bool moving = false;
    try {
        transfer(c, *tp, t, deadline, what, &moving);
    } catch (const Error& e) {
        status = e.status();
        message = e.message();
    } catch (const std::bad_alloc&) {
        status = SW_ERR_OUT_OF_MEMORY;
        message = str(what, ": out of memory");
    } catch (const std::exception& e) {
        status = SW_ERR_INTERNAL;
        message = str(what, ": internal error: ", e.what());
    }
    if (status != SW_OK && moving && t.recv.peer >= 0)
        c.mover->p2p_poison(r, t.recv.data, t.recv.count * sw_dtype_size(t.dtype));
    std::unique_lock<std::mutex> lock(c.mu);
    ++p.next;
    c.cv.notify_all();
    if (status == SW_OK) return;
    const bool first = !c.aborted;
    c.abort_locked(status, str("rank ", r, ": ", message));
    // An MPI request that could not be cancelled may still touch these regions: they outlive the communicator's use.
    if (t.send.keep) c.orphans.push_back(t.send.keep);
    if (t.recv.keep) c.orphans.push_back(t.recv.keep);
    const std::string reason = c.reason;
    const sw_status reported = c.abort_status;
    lock.unlock();
    if (first) tp->notify_abort(status, reason);
    throw Error(first ? status : reported, first ? reason : str("rank ", r, ": ", message));
}
