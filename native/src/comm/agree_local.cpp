// The in-process rendezvous (the Agreement of in-process communicators): p virtual ranks (host threads or streams of
// one process), possibly on one device. When a rank's stream reaches its collective, the rank joins a rendezvous keyed
// by its per-rank sequence number, the ranks check that they agree (check_agreement), each rank moves its share of the
// data (the communicator's Mover: CPU copies, CUDA copies or NCCL), and a departure barrier keeps every send buffer
// alive and unmodified until all ranks have read it. A rank that does not arrive within the timeout, or ranks that
// disagree, abort the communicator: every waiting rank fails with the reason, later collectives fail at once.
#include "comm/communicator.h"

#include <map>
#include <optional>

using namespace sw;

namespace {

class LocalRendezvous final : public Agreement {
public:
    void run(Communicator& c, int rank, uint64_t seq, const Desc& desc, cpu::Stream* stream) override;

private:
    std::map<uint64_t, Slot> slots_; // under the communicator's mu
};

// Runs on rank's stream worker thread.
void LocalRendezvous::run(Communicator& c, int rank, uint64_t seq, const Desc& desc, cpu::Stream* stream) {
    Communicator* st = &c;
    const char* name = coll_name(desc.op);
    std::unique_lock<std::mutex> lock(st->mu);
    if (st->aborted)
        fail(SW_ERR_ABORTED, "rank ", rank, ": ", name, " #", seq, " not run: the communicator was aborted: ", st->reason);
    const std::string pending = stream->pending_error();
    if (!pending.empty()) {
        st->abort_locked(SW_ERR_ABORTED, str("rank ", rank, " could not join ", name, " #", seq,
                                             " because of an earlier error on its stream: ", pending));
        fail(SW_ERR_ABORTED, st->reason);
    }
    // An in-place all-reduce whose moves can fail half way (CUDA copies, NCCL): keep a copy of the input before any
    // peer may write into it. Taken without the lock; the peers cannot write before this rank joins.
    std::optional<InPlaceBackup> backup;
    if (st->mover->backs_up(desc)) {
        lock.unlock();
        try {
            backup.emplace(*st->mover, rank, desc);
        } catch (const Error& e) { // the peers must not wait for this rank until the timeout
            lock.lock();
            st->abort_locked(e.status(), str("rank ", rank, " could not join ", name, " #", seq,
                                             ": backing up its in-place input failed: ", e.message()));
            fail(e.status(), st->reason);
        }
        lock.lock();
        if (st->aborted)
            fail(SW_ERR_ABORTED, "rank ", rank, ": ", name, " #", seq, " not run: the communicator was aborted: ", st->reason);
    }
    Slot& slot = slots_[seq]; // std::map: the reference stays valid while other slots come and go
    if (slot.desc.empty()) {
        slot.desc.resize(st->world);
        slot.joined.assign(st->world, 0);
    }
    slot.desc[rank] = desc;
    slot.joined[rank] = 1;
    ++slot.arrived;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(st->timeout_ms);
    if (slot.arrived == st->world) {
        const std::string problem = check_agreement(slot, st->world);
        if (!problem.empty()) {
            st->abort_locked(SW_ERR_MISMATCH, str("collective #", seq, ": ", problem));
            fail(SW_ERR_MISMATCH, "rank ", rank, ": ", st->reason);
        }
        slot.ready = true;
        st->cv.notify_all();
    } else {
        while (!slot.ready && !st->aborted) {
            if (st->cv.wait_until(lock, deadline) == std::cv_status::timeout && !slot.ready && !st->aborted) {
                std::vector<int> missing, present;
                for (int q = 0; q < st->world; ++q) (slot.joined[q] ? present : missing).push_back(q);
                st->abort_locked(SW_ERR_TIMEOUT,
                                 str(name, " #", seq, " timed out after ", st->timeout_ms, " ms: rank(s) ",
                                     st->rank_names(missing), " of ", st->world, " never joined (joined: ",
                                     rank_list(present), "); the communicator is aborted"));
            }
        }
        if (!slot.ready) fail(st->abort_status, "rank ", rank, ": ", st->reason);
    }
    lock.unlock();
    std::string move_error;
    sw_status move_status = SW_OK;
    try {
        st->mover->move(*st, rank, seq, slot, Clock::now() + std::chrono::milliseconds(st->timeout_ms));
    } catch (const Error& e) {
        move_status = e.status();
        move_error = e.message();
    }
    const bool injected = move_status == SW_OK && test_fault_point();
    lock.lock();
    if (move_status != SW_OK) {
        // The peers must not wait for a rank that failed: abort, then report.
        slot.failed = true;
        st->abort_locked(move_status, str("rank ", rank, " failed while moving data for ", name, " #", seq, ": ", move_error));
    }
    if (injected) // test only (SHARDWISE_TEST_FAULT=abort:N): as sw_comm_abort called at this moment
        st->abort_locked(SW_ERR_ABORTED, str("injected fault (SHARDWISE_TEST_FAULT) after rank ", rank,
                                             "'s data movement for ", name, " #", seq));
    // Departure barrier: every rank has arrived, so the others are only moving data (bounded); wait for all of them,
    // also when the communicator is aborted meanwhile, so that no peer still writes into this rank's recv (or reads
    // its send) once this returns. A collective whose moves all succeeded is complete: an abort that comes while the
    // ranks move data takes effect from the next collective on (the CPU moves cannot fail, so on CPU devices nothing
    // fails after the ranks agree and a failed collective never wrote anything).
    ++slot.departed;
    if (slot.departed == st->world) st->cv.notify_all();
    else st->cv.wait(lock, [&] { return slot.departed == st->world; });
    const bool failed = slot.failed;
    Slot outputs; // what poisoning needs once the slot is gone
    if (failed) outputs.desc = slot.desc;
    if (++slot.left == st->world) slots_.erase(seq);
    if (failed) {
        // A peer (or this rank) failed after some ranks may have written: the whole receive region is poisoned
        // (an in-place all-reduce keeps its input: its backup is restored).
        lock.unlock();
        st->mover->poison_or_restore(outputs, st->world, rank, backup ? backup->data() : nullptr);
        lock.lock();
        fail(move_status != SW_OK ? move_status : st->abort_status, "rank ", rank, ": ", st->reason);
    }
    ++st->completed[rank];
}

} // namespace

std::unique_ptr<Agreement> sw::make_local_rendezvous(int32_t) { return std::make_unique<LocalRendezvous>(); }
