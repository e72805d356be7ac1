// Point-to-point transfers of in-process communicators (p2p.cpp draws the design): every rank is a stream worker of
// this process, so transfer #n from a to b meets at P2PState::meets[{a, b, n}]. Each side posts itself there; the
// second to come checks the pair (check_pair); the receiver copies from the sender's region (Mover::p2p_copy) while
// the sender waits until the copy has ended. A call posts all its halves before it waits for any, so a sw_sendrecv's
// halves progress together. A peer that does not come within the timeout, or a pair that disagrees, aborts the
// communicator: every waiting side fails with the reason.
#include "comm/p2p.h"

using namespace sw;

void sw::run_local_transfer(Communicator& c, const Transfer& t, cpu::Stream* stream) {
    const int32_t r = t.rank;
    std::unique_lock<std::mutex> lock(c.mu);
    if (c.aborted) fail(SW_ERR_ABORTED, "rank ", r, ": ", t.call, " not run: the communicator was aborted: ", c.reason);
    const std::string pending = stream->pending_error();
    if (!pending.empty()) { // the peer must not wait for this side until the timeout
        c.abort_locked(SW_ERR_ABORTED, str("rank ", r, " could not run ", t.call,
                                           " because of an earlier error on its stream: ", pending));
        fail(SW_ERR_ABORTED, c.reason);
    }
    P2PState& p = *c.p2p;
    using Meet = P2PState::Meet;
    const std::tuple<int32_t, int32_t, uint64_t> send_key{r, t.send.peer, t.send.n}, recv_key{t.recv.peer, r, t.recv.n};
    Meet* ms = t.send.peer >= 0 ? &p.meets[send_key] : nullptr; // std::map: references stay valid
    Meet* mr = t.recv.peer >= 0 ? &p.meets[recv_key] : nullptr;
    if (ms) ms->sender = &t;
    if (mr) mr->receiver = &t;
    for (Meet* m : {ms, mr}) {
        if (!m || !m->sender || !m->receiver) continue;
        const Transfer& s = *m->sender;
        const Transfer& d = *m->receiver;
        const std::string problem = check_pair(s.call, s.rank, s.send.n, s.send.count, s.dtype, d.call, d.rank, d.recv.n,
                                               d.recv.count, d.dtype);
        if (!problem.empty()) c.abort_locked(SW_ERR_MISMATCH, problem);
    }
    c.cv.notify_all();
    const auto deadline = Clock::now() + std::chrono::milliseconds(c.timeout_ms);
    bool wrote = false; // this call's receive region may have been written
    while (true) {
        if (c.aborted) break;
        if (mr && !mr->copied && !mr->copying && mr->sender) { // the data is there: take it
            mr->copying = true;
            wrote = wrote || mr->sender->send.count > 0;
            const Transfer& s = *mr->sender;
            lock.unlock();
            sw_status status = SW_OK;
            std::string error;
            try {
                c.mover->p2p_copy(r, t.recv.data, s.send.data, t.recv.count * sw_dtype_size(t.dtype));
            } catch (const Error& e) {
                status = e.status();
                error = e.message();
            }
            lock.lock();
            mr->copying = false;
            if (status == SW_OK) mr->copied = true;
            else
                c.abort_locked(status, str("rank ", r, " failed while receiving ", t.call, " #", t.recv.n, " from rank ",
                                           t.recv.peer, ": ", error));
            c.cv.notify_all();
            continue;
        }
        if ((!ms || ms->copied) && (!mr || mr->copied)) break;
        if (c.cv.wait_until(lock, deadline) == std::cv_status::timeout && !c.aborted) {
            std::string why;
            if (ms && !ms->copied && !ms->receiver) why = timeout_text(c, t, true);
            if (mr && !mr->copied && !mr->sender) why += (why.empty() ? "" : "; ") + timeout_text(c, t, false);
            if (why.empty()) why = str(t.call, " at rank ", r, ": timed out after ", c.timeout_ms, " ms");
            c.abort_locked(SW_ERR_TIMEOUT, why + "; the communicator is aborted");
        }
    }
    // A receiver may still be reading this call's send region: it stays valid (and unmodified) until the copy ends.
    if (ms) c.cv.wait(lock, [&] { return !ms->copying; });
    const bool done = (!ms || ms->copied) && (!mr || mr->copied);
    const bool self_copy = ms && ms == mr; // one meeting point, both sides this call
    if (ms) {
        ms->sender = nullptr;
        ++ms->left;
    }
    if (mr) {
        mr->receiver = nullptr;
        ++mr->left;
    }
    if (ms && ms->left == 2) p.meets.erase(send_key);
    if (mr && !self_copy && mr->left == 2) p.meets.erase(recv_key);
    if (done) return;
    const sw_status status = c.abort_status;
    const std::string reason = c.reason;
    lock.unlock();
    if (wrote) c.mover->p2p_poison(r, t.recv.data, t.recv.count * sw_dtype_size(t.dtype));
    fail(status, "rank ", r, ": ", reason);
}
