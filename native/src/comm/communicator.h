// A communicator: one interface for every kind (in-process, TCP, MPI, NCCL), each kind an object built from two
// choices made at creation (c10d's Backend, split in two):
//   - how ranks agree on a call (Agreement): the in-process rendezvous (agree_local.cpp: every rank is a thread or
//     stream of this process), or descriptors exchanged over a Transport (agree_transport.cpp: TCP, MPI, or NCCL's own
//     all-gather when the ranks have no other channel);
//   - how data moves (Mover): CPU copies (mover_cpu.cpp), CUDA copies on a communication stream (mover_cuda.cpp), NCCL
//     (mover_nccl.cpp), or a transport's point-to-point exchanges (mover_transport.cpp).
// The kinds:   in-process CPU  = local rendezvous  + CPU copies        (sw_comm_create_local on CPU devices)
//              in-process CUDA = local rendezvous  + CUDA copies       (sw_comm_create_local on CUDA devices)
//              in-process NCCL = local rendezvous  + NCCL              (sw_comm_create_nccl_local)
//              TCP / MPI       = transport agreement + transport moves (sw_comm_create_tcp / _mpi, CPU devices; a TCP
//                                communicator on one host moves its data through shared memory: shm_transport.cpp)
//              NCCL per process= transport agreement (TCP, MPI, NCCL) + NCCL (sw_comm_create_nccl, _nccl_id, _nccl_mpi)
//
// Layers of comm/ (each file calls only files below it; virtual calls go down through the interfaces declared here):
//   comm_api.cpp           the C exports: validate, translate into a Desc, dispatch to Communicator::submit/abort
//   comm_nccl.cpp          NCCL communicators' creation (unique ids, ncclCommInitRank*)
//   communicator.cpp       Communicator: queueing a collective on a stream in order, abort, creation of the kinds
//   agree_local.cpp  agree_transport.cpp                                      (Agreement implementations)
//   mover_nccl.cpp -> mover_cuda.cpp, mover_cpu.cpp, mover_transport.cpp      (Mover implementations; the only files
//                                                         that touch a device's plugin table: mover_cuda, mover_nccl)
//   shm_transport.cpp -> tcp_transport.cpp -> store.cpp -> socket.cpp, mpi_transport.cpp, nccl_loader.cpp
//                                                        (Transport implementations, the store, the NCCL library)
//   collectives.cpp        shared algorithms and helpers (Desc, agreement check, reductions, shard math, poisoning,
//                          the in-process creation's checks); transport.h: the Transport interface
#pragma once
#include "comm/collectives.h"
#include "comm/transport.h"
#include "core/objects.h"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace sw {

class Communicator;
struct Family; // split.cpp: the communicators split from one another (family fate)
// split.cpp: c (mu held) was just aborted; the family's other members are aborted too, by the family's watcher thread
// (never under c's lock). A no-op once the family has failed.
void family_failed(Communicator& c) noexcept;
// split.cpp: whether c's family (c.mu held, c.family set) has failed, and the first failure's reason.
bool family_failure(Communicator& c, std::string* reason);
struct P2PState; // point-to-point transfers (p2p.h)

// What a Mover on a device with its own queue (CUDA) keeps between the steps that order a collective into a stream.
struct OrderTicket {
    DeviceImpl* device = nullptr; // the stream's device (alive while the communicator is)
    void* ready = nullptr;    // the event recorded on the device stream: its earlier work
    uint32_t* flag = nullptr; // the stream's mapped flag word, raised to `target` when the host side is done
    uint32_t target = 0;
};

// How data moves for one rank of one collective, and what the device needs around it.
class Mover {
public:
    virtual ~Mover() = default;
    // Rank `rank`'s share of the data movement of collective #seq once every rank's descriptor is in `slot` and they
    // agree; every move is complete (or has failed, drained) when it returns. Throws sw::Error.
    virtual void move(Communicator& c, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline) = 0;
    // True when move() sends the data through the communicator's Transport, carrying Slot::carried's check in its
    // frames (mover_transport.cpp); false for movers with their own channel (NCCL), which need the descriptors first.
    virtual bool carries_tags() const { return false; }

    // ---- the failed-collective contract (shardwise.h)
    // Whether an in-place all-reduce's input needs a backup before the rank joins (moves that can fail half way).
    virtual bool backs_up(const Desc&) const { return false; }
    // A copy of an in-place all-reduce's input (null when none is needed), returned with give_back_backup.
    virtual void* take_backup(int /*rank*/, const Desc& /*d*/, uint64_t* /*capacity*/) { return nullptr; }
    virtual void give_back_backup(int /*rank*/, void* /*backup*/, uint64_t /*capacity*/) {}
    // Rank `rank`'s receive region poisoned (an in-place all-reduce: `backup` restored, or its input kept). Best effort.
    virtual void poison_or_restore(const Slot& slot, int world, int rank, const void* /*backup*/) {
        poison_host_output(slot, world, rank);
    }
    // After a failure that may leave transfers in flight into the mover's own buffers: never free them.
    virtual void forget_buffers() {}
    // The communicator goes (after an abort, or not): release what the ranks share (NCCL communicators).
    virtual void close(bool /*aborted*/) noexcept {}

    // ---- ordering into a device stream (CUDA): the host side of a collective runs on the stream's worker once the
    // device stream's earlier work is done, and the device stream's later work waits until the host side is done.
    virtual bool orders_device_stream() const { return false; }
    // Before the sequence number is taken (may throw; then nothing is left to undo).
    virtual void order_begin(sw_stream_s*, OrderTicket*) {}
    // The sequence number could not be taken: undo order_begin.
    virtual void order_cancel(OrderTicket&) noexcept {}
    // After the sequence number: the ticket's flag target.
    virtual void order_arm(sw_stream_s*, OrderTicket*) {}
    // On the worker: waits for the device stream's earlier work (the ticket's event is released either way).
    virtual sw_status order_wait(OrderTicket&, std::string* /*err*/) noexcept { return SW_OK; }
    // On the worker, whatever happened: lets the device stream go on.
    virtual void order_release(const OrderTicket&) noexcept {}
    // After queueing the host side: makes the device stream wait for it.
    virtual sw_status order_end(sw_stream_s*, const OrderTicket&, std::string* /*err*/) noexcept { return SW_OK; }
    // Queues host_side(ticket) on the stream's worker (also after earlier errors) between order_arm and order_end, and
    // releases the ticket exactly once: after host_side, whatever it threw, or here when it cannot be queued (a pending
    // flag never released would hold every CUDA free of the device back, core/objects.h).
    template <class F>
    void enqueue_host_side(cpu::Stream* stream, const OrderTicket& ticket, F host_side) {
        try {
            stream->enqueue(
                [mv = this, tk = OrderTicket(ticket), host_side = std::move(host_side)]() mutable {
                    struct Release { // let the device stream go on whatever happens below
                        Mover* mv;
                        const OrderTicket& t;
                        ~Release() { mv->order_release(t); }
                    } release{mv, tk};
                    host_side(tk);
                },
                /*always=*/true);
        } catch (...) {
            OrderTicket t = ticket;
            order_release(t);
            order_cancel(t);
            throw;
        }
    }

    // ---- point-to-point transfers (p2p.h, p2p.cpp)
    // In-process: rank `rank` copies `bytes` from its peer's send region into its own receive region (CPU: memmove;
    // CUDA: its communication stream), complete when it returns; also a rank's copy to itself. Throws sw::Error.
    virtual void p2p_copy(int /*rank*/, char* dst, const char* src, uint64_t bytes);
    // Multi-process: the data of one transfer call once its peers agreed (sends to and receives from the peers, one
    // step, progressing together), complete when it returns. Throws sw::Error; the default says the kind has none.
    virtual void p2p_move(Communicator& c, int rank, const std::vector<Piece>& sends, const std::vector<Piece>& recvs,
                          Clock::time_point deadline, const std::string& what);
    // A failed transfer's receive region poisoned (kPoisonByte), best effort.
    virtual void p2p_poison(int /*rank*/, char* p, uint64_t bytes) noexcept {
        if (p && bytes) std::memset(p, kPoisonByte, bytes);
    }
};

// How the ranks agree on a call, and the whole host side of one collective around the Mover.
class Agreement {
public:
    virtual ~Agreement() = default;
    // Runs rank `rank`'s collective #seq on its stream's worker: agree with the other ranks, move the data (c.mover),
    // keep the failed-collective contract, count it. Throws sw::Error (the communicator aborted where it must be).
    virtual void run(Communicator& c, int rank, uint64_t seq, const Desc& desc, cpu::Stream* stream) = 0;
    // Best effort: tells the other processes that the communicator is aborted (multi-process agreements).
    virtual void notify_abort(sw_status, const std::string&) noexcept {}
    // ---- sub-communicators (split.cpp)
    // The transport of a multi-process agreement (null in-process): a split makes its sub-transport from it.
    virtual Transport* transport() noexcept { return nullptr; }
};

class Communicator : public std::enable_shared_from_this<Communicator> {
public:
    int32_t world = 0;
    int64_t timeout_ms = 0;                          // resolved (resolve_timeout)
    int32_t self = -1;                               // this process's rank (multi-process); -1 in-process
    const char* backend_name = "local";              // "local", "tcp", "mpi", "nccl"
    const char* transport_name = "local";            // what moves the data: "local", "tcp", "shm", "shm+cma", "mpi", "nccl"
    std::vector<std::shared_ptr<DeviceImpl>> devices; // per rank (multi-process: this process's device at every index)

    std::mutex mu;
    std::condition_variable cv;
    bool aborted = false;
    sw_status abort_status = SW_ERR_ABORTED;
    std::string reason;
    std::atomic<bool> abort_flag{false};  // mirrors `aborted` for transports polling without the lock
    // sw_comm_set_agreement_check: whether multi-process collectives exchange descriptors first (copied into each
    // collective's Desc when it is queued, so that a change applies to the collectives called after it).
    std::atomic<bool> agreement_check{true};
    std::vector<uint64_t> next_seq;       // per rank, assigned when the call is queued
    std::vector<uint64_t> completed;      // per rank
    // Buffers a failed transport operation may still touch (an MPI request that could not be cancelled): kept
    // alive until the communicator goes.
    std::vector<std::shared_ptr<Storage>> orphans;

    std::unique_ptr<Agreement> agreement;
    std::unique_ptr<Mover> mover;

    // ---- sub-communicators and family fate (split.cpp; shardwise.h "sub-communicators")
    std::shared_ptr<Family> family;   // set (under mu) at the first split from or into this communicator; else null
    std::vector<int32_t> parent_ranks; // per rank: its rank in the communicator it was split from; empty: not split
    bool destroyed = false;            // sw_comm_destroy (under mu): its abort is no failure of the family
    // "1 (parent rank 3)", "1, 2 (parent ranks 3, 5)"; a communicator that was not split: "1", "1, 2".
    std::string rank_names(const std::vector<int>& ranks) const;
    // ---- point-to-point transfers (p2p.h): the pair counters and the in-process meeting points; made by the first
    // transfer, under mu.
    std::shared_ptr<P2PState> p2p;

    ~Communicator();

    // Requires mu held. The first abort wins; its reason is what every rank reports.
    void abort_locked(sw_status status, const std::string& why) {
        if (!aborted) {
            aborted = true;
            abort_flag.store(true);
            abort_status = status;
            reason = why;
            if (family && !destroyed) family_failed(*this); // every other member of the family is aborted too
        }
        cv.notify_all();
    }

    // Queues collective `desc` of rank `rank` on `stream` (communicator.cpp).
    void submit(int32_t rank, Desc desc, sw_stream_s* stream);
    // Aborts with `why` (the first abort's reason wins) and tells the peers.
    void abort(const std::string& why);
    // sw_comm_destroy: collectives still queued fail at once; the peers are told.
    void shut_down();
    bool is_remote() const { return self >= 0; }
};

// Creation of the kinds (communicator.cpp). `timeout_ms` as the caller gave it (resolved here).
// In-process: one rank per device in `devices` (CPU or CUDA, one backend); `mover` null for the default of the
// devices' backend (CPU or CUDA copies).
std::shared_ptr<Communicator> make_local_comm(std::vector<std::shared_ptr<DeviceImpl>> devices, int64_t timeout_ms,
                                              std::unique_ptr<Mover> mover = nullptr, const char* backend = "local");
// Multi-process: this process's rank on `device`, agreeing over `transport`; `mover` null for the transport's moves.
std::shared_ptr<Communicator> make_remote_comm(std::shared_ptr<DeviceImpl> device, std::unique_ptr<Transport> transport,
                                               int64_t timeout_ms, std::unique_ptr<Mover> mover = nullptr,
                                               const char* backend = nullptr);
// A new handle for a communicator (counted as a child of its devices).
sw_comm register_comm(std::shared_ptr<Communicator> c);
// The first exchange of a multi-process collective (the descriptors, or the data carrying them) timed out:
// SW_ERR_TIMEOUT naming the ranks that never joined and those alive but held up (agree_transport.cpp).
[[noreturn]] void fail_never_joined(const Communicator& st, const TimeoutError& e, const std::string& what);

// The agreements and movers (their files).
std::unique_ptr<Agreement> make_local_rendezvous(int32_t world);                               // agree_local.cpp
std::unique_ptr<Agreement> make_transport_agreement(std::unique_ptr<Transport> transport);     // agree_transport.cpp
std::unique_ptr<Mover> make_cpu_mover();                                                       // mover_cpu.cpp
std::unique_ptr<Mover> make_cuda_mover(std::vector<std::shared_ptr<DeviceImpl>> devices);     // mover_cuda.cpp
std::unique_ptr<Mover> make_transport_mover(Transport& transport);                             // mover_transport.cpp

// A copy of an in-process all-reduce's input while its collective runs (see Mover::take_backup).
class InPlaceBackup {
public:
    InPlaceBackup(Mover& m, int rank, const Desc& d) : m_(m), rank_(rank) { buf_ = m.take_backup(rank, d, &cap_); }
    ~InPlaceBackup() {
        if (buf_) m_.give_back_backup(rank_, buf_, cap_);
    }
    InPlaceBackup(const InPlaceBackup&) = delete;
    InPlaceBackup& operator=(const InPlaceBackup&) = delete;
    const void* data() const { return buf_; }

private:
    Mover& m_;
    int rank_;
    void* buf_ = nullptr;
    uint64_t cap_ = 0;
};

} // namespace sw

struct sw_comm_s {
    std::shared_ptr<sw::Communicator> state;
};
