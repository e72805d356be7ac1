// How a multi-process communicator talks to the other processes. One Transport per communicator and process: the
// transport agreement (agree_transport.cpp) exchanges the descriptors through it and the transport mover
// (mover_transport.cpp) builds every collective's data movement out of exchange() calls. Implementations: TCP
// (tcp_transport.cpp, a full mesh of sockets set up through the TCP store), MPI (mpi_transport.cpp, through the MPI
// plugin) and NCCL itself (mover_nccl.cpp: descriptors only, for NCCL communicators made from a unique id).
#pragma once
#include "shardwise.h"

#include "core/error.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sw {

std::string rank_list(const std::vector<int>& ranks); // "0, 2" (collectives.cpp)

// What Transport::exchange throws at its deadline: the peers whose pieces had not all arrived, split into those
// that are missing (silent: dead, frozen, or not in a collective) and those that are alive but waiting themselves
// (they sent a "still waiting" status during the last second: blocked on a missing rank, they are not the cause).
class TimeoutError : public Error {
public:
    TimeoutError(std::string message, std::vector<int> missing_ranks, std::vector<int> waiting_ranks = {})
        : Error(SW_ERR_TIMEOUT, std::move(message)), missing(std::move(missing_ranks)), waiting(std::move(waiting_ranks)) {}
    std::vector<int> missing;
    std::vector<int> waiting;
};

// While an exchange waits, each transport tells its peers every kStatusEvery that this rank is alive and waiting;
// a peer heard from within kAliveFor counts as alive at a timeout.
constexpr std::chrono::milliseconds kStatusEvery{200};
constexpr std::chrono::milliseconds kAliveFor{1000};

// The message of an exchange's timeout, naming the missing ranks only ("rank(s) 2"); ranks that were still needed
// but alive and waiting themselves are mentioned apart. When every rank still needed is alive and waiting (ranks
// waiting on each other), those are named as missing.
// `names` (a sub-communicator's ranks in its parent, see Transport::set_parent_ranks) adds the parent ranks.
inline TimeoutError timeout_error(const std::string& what, std::vector<int> missing, std::vector<int> waiting,
                                  const std::vector<int32_t>* names = nullptr) {
    auto list = [&](const std::vector<int>& ranks) {
        std::string s = rank_list(ranks);
        if (!names || names->empty() || ranks.empty()) return s;
        std::vector<int> up;
        for (int r : ranks) up.push_back(r >= 0 && r < static_cast<int>(names->size()) ? (*names)[r] : -1);
        return s + " (parent rank" + (ranks.size() > 1 ? "s " : " ") + rank_list(up) + ")";
    };
    std::string text = what + ": timed out waiting for rank(s) ";
    if (missing.empty()) {
        missing.swap(waiting);
        text += list(missing) + " (alive, but waiting themselves)";
    } else {
        text += list(missing);
        if (!waiting.empty()) text += "; also not done, but alive and waiting themselves: rank " + list(waiting);
    }
    return TimeoutError(text, std::move(missing), std::move(waiting));
}

// A contiguous run of bytes to send to (or receive from) a peer.
struct Piece {
    int32_t peer = 0;
    char* data = nullptr;
    uint64_t bytes = 0;
};

using Clock = std::chrono::steady_clock;

// The call a collective's frames carry: its agreement check without a round trip (agree_transport.cpp). A transport
// that carries it (Transport::carries_tags) puts the sender's tag into every frame of the exchange and checks each
// arriving frame's tag against the receiver's before anything of its payload is written: different calls fail with
// SW_ERR_MISMATCH naming both (fail_tag_mismatch).
struct CallTag {
    int32_t op = -1; // the Coll (collectives.h); -1: none carried
    int32_t dtype = 0;
    int32_t root = 0;
    int32_t pad = 0;
    uint64_t count = 0;
    bool operator==(const CallTag& o) const { return op == o.op && dtype == o.dtype && root == o.root && count == o.count; }
};
static_assert(sizeof(CallTag) == 24, "CallTag has no padding");
// The receiver's check of a frame's tag (`theirs`, from rank q) against its own (`mine`, may be null: nothing to
// check; a frame without a tag, from a rank whose check is off, is not checked either). collectives.cpp.
void check_tag(const CallTag* mine, const CallTag& theirs, int self, int q, uint64_t seq);

class Transport {
public:
    virtual ~Transport() = default;
    virtual int32_t rank() const = 0;
    virtual int32_t world() const = 0;
    virtual const char* name() const = 0; // "tcp", "shm", "shm+cma", "mpi", "nccl"

    // Sends every piece of `sends` to its peer and receives every piece of `recvs` from its peer; pieces of one
    // peer are matched in the order given. Returns when all have completed. Fails (sw::Error) with
    //  - TimeoutError (SW_ERR_TIMEOUT) at `deadline`, naming the peers whose pieces did not all arrive,
    //  - the peer's status when a peer announced an abort (its reason is in the message),
    //  - SW_ERR_ABORTED when a peer's connection was lost,
    //  - SW_ERR_ABORTED when `*local_abort` becomes true (sw_comm_abort / destroy in this process),
    //  - SW_ERR_BACKEND when the transport itself failed.
    // `what` ("sw_all_reduce #7") prefixes messages. seq tags the messages of one collective.
    // `tag` (transports that carry tags, else ignored): this rank's call, put into every frame and checked against
    // every arriving frame's (check_tag).
    virtual void exchange(uint64_t seq, const std::vector<Piece>& sends, const std::vector<Piece>& recvs,
                          Clock::time_point deadline, const std::atomic<bool>& local_abort, const std::string& what,
                          const CallTag* tag = nullptr) = 0;
    // True when exchange() carries and checks CallTags (TCP, shared memory).
    virtual bool carries_tags() const { return false; }

    // all[q * bytes ..] = rank q's `mine` for every q (all holds world * bytes; this rank's part is copied too). The
    // default sends `mine` to every peer through exchange(); a transport may do better. Fails as exchange() does
    // (a TimeoutError's `missing` may be empty when the transport cannot tell who is late).
    virtual void all_gather_bytes(uint64_t seq, const char* mine, uint64_t bytes, char* all, Clock::time_point deadline,
                                  const std::atomic<bool>& local_abort, const std::string& what) {
        std::vector<Piece> sends, recvs;
        for (int32_t q = 0; q < world(); ++q) {
            if (q == rank()) continue;
            sends.push_back({q, const_cast<char*>(mine), bytes}); // only read
            recvs.push_back({q, all + static_cast<uint64_t>(q) * bytes, bytes});
        }
        exchange(seq, sends, recvs, deadline, local_abort, what);
        std::copy(mine, mine + bytes, all + static_cast<uint64_t>(rank()) * bytes);
    }

    // Best effort, never blocks for long: tells the peers that this communicator is aborted, with which status and
    // why, so that their pending and later collectives fail at once (with the same status) instead of at their timeout.
    // status SW_OK: the communicator was destroyed (a close, not a failure: a peer that needs this rank reports
    // SW_ERR_ABORTED; poll_idle does not count it as a failure).
    virtual void notify_abort(sw_status status, const std::string& reason) noexcept = 0;

    // ---- sub-communicators (split.cpp)
    // Called by every rank of this transport inside the same collective #seq, once the ranks agreed on the split:
    // colors[q] is rank q's color (SW_SPLIT_NO_COLOR: out); `members` this rank's group (its ranks here, in the new
    // rank order; empty when this rank opted out). Returns the transport among `members` (null when opted out).
    // Fails as exchange() does. Default: SW_ERR_UNSUPPORTED (`can_split` false: sw_comm_split refuses before the
    // parent's collective, which then stays usable).
    virtual bool can_split() const { return false; }
    virtual std::unique_ptr<Transport> split(uint64_t seq, const std::vector<int32_t>& colors,
                                             const std::vector<int32_t>& members, Clock::time_point deadline,
                                             const std::atomic<bool>& local_abort, const std::string& what);
    // Between collectives (the family's watcher, split.cpp): never blocks, does nothing while an exchange runs. A peer
    // lost (connection closed without a destroy notice) or that announced a failure: returns it, with the status to
    // abort with and why ("... lost: ..."); else -1.
    virtual int poll_idle(sw_status* /*status*/, std::string* /*why*/) noexcept { return -1; }
    // A sub-communicator's transport names its peers in messages with their rank in the parent too.
    void set_parent_ranks(std::vector<int32_t> ranks) { parent_ranks_ = std::move(ranks); }
    const std::vector<int32_t>& parent_ranks() const { return parent_ranks_; }
    // "rank 1", or "rank 1 (parent rank 3)" for a sub-communicator's transport.
    std::string who(int q) const {
        std::string s = "rank " + std::to_string(q);
        if (q >= 0 && q < static_cast<int>(parent_ranks_.size()))
            s += " (parent rank " + std::to_string(parent_ranks_[q]) + ")";
        return s;
    }

private:
    std::vector<int32_t> parent_ranks_;
};

struct StoreImpl; // store.h

// The TCP mesh between the ranks of a job, set up through the store under `prefix` (tcp_transport.cpp).
std::unique_ptr<Transport> connect_tcp_mesh(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                            int64_t timeout_ms);
// The transport a TCP communicator uses over its mesh `tcp` (shm_transport.cpp): a shared-memory transport (data
// through a POSIX shared-memory segment, the mesh kept for liveness, abort notices and splits) when every rank runs on
// this host and none set SHARDWISE_TRANSPORT=tcp, else `tcp` itself (SHARDWISE_TRANSPORT=shm: an error instead).
// Collective over the mesh (every rank calls it); fails as exchange() does.
std::unique_ptr<Transport> with_shared_memory(std::unique_ptr<Transport> tcp, Clock::time_point deadline,
                                              const std::atomic<bool>& abort, const std::string& what);
// A transport over MPI_COMM_WORLD, initializing MPI if needed (mpi_transport.cpp); bounded: SW_ERR_TIMEOUT after
// timeout_ms (> 0).
std::unique_ptr<Transport> create_mpi_transport(int64_t timeout_ms);
// sw_mpi_get_info: the MPI library's version, or why the MPI plugin could not be loaded (*available 0).
std::string mpi_info(int32_t* available);
// sw_mpi_finalize.
void mpi_finalize();

} // namespace sw
