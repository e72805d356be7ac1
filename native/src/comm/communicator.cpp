// Communicator (see communicator.h): queueing a collective on the calling rank's stream in order, abort and destroy,
// and the creation of the kinds from an Agreement and a Mover.
#include "comm/communicator.h"

using namespace sw;

namespace {

// Takes the rank's next sequence number (the n-th collective of every rank is matched), or fails at once
// when the communicator is aborted.
uint64_t next_sequence(Communicator& c, int32_t rank) {
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", c.reason, "; create a new communicator");
    return c.next_seq[rank]++;
}

} // namespace

Communicator::~Communicator() {
    if (mover) mover->close(aborted); // NCCL: ncclCommAbort or ncclCommDestroy of every local communicator
    mover.reset();                    // then the device resources (CUDA streams, spare buffers)
    agreement.reset();                // then the transport
}

void Communicator::submit(int32_t rank, Desc desc, sw_stream_s* s) {
    desc.check = agreement_check.load();
    auto self = shared_from_this();
    cpu::Stream* stream = s->impl.get();
    Mover* mv = mover.get();
    if (!mv->orders_device_stream()) { // CPU devices: the stream's worker runs the whole collective in stream order
        const uint64_t seq = next_sequence(*this, rank);
        stream->enqueue([self, rank, seq, desc = std::move(desc), stream] { self->agreement->run(*self, rank, seq, desc, stream); },
                        /*always=*/true);
        return;
    }
    // A device with its own queue (CUDA): the host side (agreement + data movement) runs on the stream's worker thread
    // once the device stream's earlier work is done; the device stream's later work waits until the worker releases
    // it — also when the collective fails, so the stream never hangs. Everything that can fail comes before the
    // sequence number is taken, so a failed call leaves the rank's numbering in step with its peers; after that, a
    // failure aborts the communicator.
    {
        std::lock_guard<std::mutex> lock(mu); // fail fast, before touching the stream
        if (aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", reason, "; create a new communicator");
    }
    OrderTicket ticket;
    mv->order_begin(s, &ticket);
    uint64_t seq = 0;
    try {
        seq = next_sequence(*this, rank);
    } catch (...) {
        mv->order_cancel(ticket);
        throw;
    }
    mv->order_arm(s, &ticket);
    mv->enqueue_host_side(stream, ticket, [self, rank, seq, desc = std::move(desc), stream, mv](OrderTicket& t) {
        std::string e;
        const sw_status waited = mv->order_wait(t, &e);
        if (waited != SW_OK) { // the peers must not wait for this rank until the timeout
            std::lock_guard<std::mutex> lock(self->mu);
            self->abort_locked(waited, str("rank ", rank, " could not join collective #", seq,
                                           ": waiting for its stream's earlier work failed: ", e));
            fail(waited, self->reason);
        }
        self->agreement->run(*self, rank, seq, desc, stream);
    });
    std::string err;
    const sw_status queued = mv->order_end(s, ticket, &err);
    if (queued != SW_OK) {
        // The host side is queued and will run, but the stream would not wait for it: the ordering promise is
        // broken, so abort the communicator rather than let the ranks go on with a half-ordered collective.
        std::lock_guard<std::mutex> lock(mu);
        abort_locked(queued, str("rank ", rank, ": ordering collective #", seq, " into its CUDA stream failed: ", err));
        fail(queued, reason);
    }
}

void Communicator::abort(const std::string& why) {
    std::string first;
    {
        std::lock_guard<std::mutex> lock(mu);
        abort_locked(SW_ERR_ABORTED, why);
        first = reason;
    }
    agreement->notify_abort(SW_ERR_ABORTED, first);
}

void Communicator::shut_down() {
    sw_status notice = SW_OK;
    std::string why = str("rank ", self, " destroyed its communicator");
    {
        // Collectives still queued on some stream fail at once instead of waiting for peers.
        std::lock_guard<std::mutex> lock(mu);
        // A member of a family that failed (split.cpp) tells its peers the failure, not a close: the process may be
        // ending right after the failure, before the family's watcher sent the notices.
        std::string failure;
        if (aborted) {
            notice = abort_status;
            why = reason;
        } else if (family && family_failure(*this, &failure)) {
            notice = SW_ERR_ABORTED;
            why = failure;
        }
        destroyed = true; // not a failure: the family is not aborted
        abort_locked(SW_ERR_ABORTED, "the communicator was destroyed");
    }
    // Peers in other processes learn it at once too (a peer waiting for this rank fails instead of timing out). Status
    // SW_OK: a close, not a failure (a family's watcher in the peer's process does not abort its family for it).
    if (is_remote()) agreement->notify_abort(notice, why);
}

std::shared_ptr<Communicator> sw::make_local_comm(std::vector<std::shared_ptr<DeviceImpl>> devices, int64_t timeout_ms,
                                                  std::unique_ptr<Mover> mover, const char* backend) {
    auto c = std::make_shared<Communicator>();
    c->world = static_cast<int32_t>(devices.size());
    c->timeout_ms = resolve_timeout(timeout_ms);
    c->backend_name = backend;
    c->transport_name = backend;
    c->next_seq.assign(c->world, 0);
    c->completed.assign(c->world, 0);
    c->agreement = make_local_rendezvous(c->world);
    if (mover) c->mover = std::move(mover);
    else c->mover = devices[0]->is_cuda() ? make_cuda_mover(devices) : make_cpu_mover();
    c->devices = std::move(devices);
    return c;
}

std::shared_ptr<Communicator> sw::make_remote_comm(std::shared_ptr<DeviceImpl> device, std::unique_ptr<Transport> transport,
                                                   int64_t timeout_ms, std::unique_ptr<Mover> mover, const char* backend) {
    auto c = std::make_shared<Communicator>();
    c->world = transport->world();
    c->self = transport->rank();
    c->timeout_ms = resolve_timeout(timeout_ms);
    c->backend_name = backend ? backend : transport->name();
    c->transport_name = mover ? c->backend_name : transport->name();
    c->devices.assign(c->world, std::move(device));
    c->next_seq.assign(c->world, 0);
    c->completed.assign(c->world, 0);
    Transport& t = *transport;
    c->agreement = make_transport_agreement(std::move(transport));
    c->mover = mover ? std::move(mover) : make_transport_mover(t);
    return c;
}

sw_comm sw::register_comm(std::shared_ptr<Communicator> c) {
    for (auto& d : c->devices) ++d->children;
    auto* h = new sw_comm_s{std::move(c)};
    register_handle(h, HandleKind::Comm);
    return h;
}
