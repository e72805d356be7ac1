// Internal to the communicators: what a collective is (Desc), the communicator state shared by the in-process
// rendezvous (local_comm.cpp) and the multi-process transports (remote_comm.cpp: TCP, MPI), and the helpers
// both use (agreement check, reductions in rank order).
#pragma once
#include "core/dtype.h"
#include "core/objects.h"
#include "comm/transport.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sw {

enum class Coll : int { AllGather, AllGatherV, AllGatherColumns, AllReduce, ReduceScatter, ReduceScatterV, Broadcast, Barrier };

inline const char* coll_name(Coll c) {
    switch (c) {
    case Coll::AllGather: return "sw_all_gather";
    case Coll::AllGatherV: return "sw_all_gather_v";
    case Coll::AllGatherColumns: return "sw_all_gather_columns";
    case Coll::AllReduce: return "sw_all_reduce";
    case Coll::ReduceScatter: return "sw_reduce_scatter";
    case Coll::ReduceScatterV: return "sw_reduce_scatter_v";
    case Coll::Broadcast: return "sw_broadcast";
    case Coll::Barrier: return "sw_barrier";
    }
    return "collective";
}

// One rank's view of one collective.
struct Desc {
    Coll op = Coll::Barrier;
    sw_dtype dtype = SW_DTYPE_F32;
    uint64_t count = 0;         // elements (all-gather: per rank; reduce-scatter: per rank's result)
    int32_t root = 0;
    int64_t rows = 0, cols = 0, ld_send = 0, ld_recv = 0;
    const char* send = nullptr;
    char* recv = nullptr;
    uint64_t recv_capacity = 0; // elements available in recv from its offset
    uint64_t send_capacity = 0; // reduce-scatter-v: elements available in send from its offset
    std::shared_ptr<Storage> keep_send, keep_recv;
};

inline std::string describe(const Desc& d) {
    switch (d.op) {
    case Coll::AllGatherColumns:
        return str(coll_name(d.op), "(rows ", d.rows, ", cols ", d.cols, ", ", sw::dtype_name(d.dtype), ")");
    case Coll::Broadcast:
        return str(coll_name(d.op), "(count ", d.count, ", root ", d.root, ", ", sw::dtype_name(d.dtype), ")");
    case Coll::Barrier: return coll_name(d.op);
    default: return str(coll_name(d.op), "(count ", d.count, ", ", sw::dtype_name(d.dtype), ")");
    }
}

struct Slot {
    std::vector<Desc> desc;
    std::vector<char> joined;
    int arrived = 0, departed = 0;
    bool ready = false;
};

// One rank's ncclComm_t. ncclCommAbort and ncclCommDestroy free it, so at most one of them runs, once (`comm` is null
// afterwards). Only the rank's stream worker (while a collective runs) and the communicator's end call them, never at
// the same time: a local abort reaches NCCL through the worker's polling, not from the thread that asked for it.
struct NcclRank {
    const struct NcclApi* api = nullptr;
    void* comm = nullptr;
    void abort() noexcept;   // nccl_comm.cpp
    void destroy() noexcept; // nccl_comm.cpp
};

struct CommState {
    int32_t world = 0;
    int64_t timeout_ms = 0;
    std::vector<std::shared_ptr<DeviceImpl>> devices;
    std::mutex mu;
    std::condition_variable cv;
    bool aborted = false;
    sw_status abort_status = SW_ERR_ABORTED;
    std::string reason;
    std::map<uint64_t, Slot> slots;
    std::vector<uint64_t> next_seq;  // per rank, assigned when the call is queued
    std::vector<uint64_t> completed; // per rank
    // CUDA: per rank, the stream on which that rank's host side moves data (created by that rank's
    // worker on first use, so no lock is needed).
    std::vector<void*> cuda_streams;

    // Multi-process communicators (TCP, MPI): the link to the other processes, and this process's rank (the only
    // rank it may pass; `devices` then holds this process's device at every index). Null/-1 for in-process ones.
    std::unique_ptr<Transport> transport;
    int32_t self = -1;
    std::atomic<bool> abort_flag{false}; // mirrors `aborted` for transports polling without the lock
    uint64_t remote_next = 0;            // the sequence number whose turn it is (collectives run in order)
    // Buffers a failed transport operation may still touch (an MPI request that could not be cancelled): kept
    // alive until the communicator goes.
    std::vector<std::shared_ptr<Storage>> orphans;
    std::unique_ptr<char[]> remote_scratch; // receive scratch of the multi-process collectives (remote_comm.cpp)
    uint64_t remote_scratch_bytes = 0;
    bool is_remote() const { return transport != nullptr; }

    // NCCL communicators (CUDA devices): the data of every collective moves through NCCL on the rank's communication
    // stream; the host side (descriptor exchange, agreement, timeouts) is the in-process rendezvous or the transport.
    const struct NcclApi* nccl = nullptr;
    std::vector<std::shared_ptr<struct NcclRank>> nccl_comms; // per rank (null for ranks of other processes)
    std::string backend_name() const { return nccl ? "nccl" : transport ? transport->name() : "local"; }

    ~CommState() {
        release_nccl();
        for (size_t r = 0; r < cuda_streams.size(); ++r)
            if (cuda_streams[r]) {
                std::string err;
                devices[r]->cuda->stream_destroy(devices[r]->ordinal, cuda_streams[r], &err);
            }
    }

    void release_nccl(); // nccl_comm.cpp: ncclCommAbort (aborted) or ncclCommDestroy of every local communicator

    // Requires mu held. The first abort wins; its reason is what every rank reports.
    void abort_locked(sw_status status, const std::string& why) {
        if (!aborted) {
            aborted = true;
            abort_flag.store(true);
            abort_status = status;
            reason = why;
        }
        cv.notify_all();
    }
};

// A communicator's timeout: timeout_ms, or for 0 the default (SHARDWISE_TIMEOUT_MS or 10 minutes); clamped (to ~31
// years) so that now + timeout cannot overflow steady_clock: "practically forever".
inline int64_t resolve_timeout(int64_t timeout_ms) {
    int64_t t = timeout_ms;
    if (t == 0) {
        t = 600000;
        if (const char* env = std::getenv("SHARDWISE_TIMEOUT_MS")) {
            const long long v = std::atoll(env);
            if (v > 0) t = v;
        }
    }
    return std::min<int64_t>(t, int64_t{1000} * 1000 * 1000 * 1000);
}

// The arguments every multi-process communicator takes: 1 <= world_size <= 4096, 0 <= rank < world_size, timeout >= 0.
inline void check_job(int32_t rank, int32_t world_size, int64_t timeout_ms) {
    if (world_size < 1 || world_size > 4096) fail(SW_ERR_INVALID_ARGUMENT, "world_size = ", world_size, "; expected 1..4096");
    if (rank < 0 || rank >= world_size)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " is out of range; expected 0 <= rank < world_size = ", world_size);
    if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
}

// A communicator's key prefix in the store: 1..1024 characters (the store's keys are at most 4096).
inline void check_prefix(const char* prefix) {
    const size_t n = std::strlen(prefix);
    if (n == 0 || n > 1024) fail(SW_ERR_INVALID_ARGUMENT, "prefix has ", n, " characters; expected 1..1024");
}

// Comma-separated rank numbers.
std::string rank_list(const std::vector<int>& ranks);
// Checks that all ranks called the same collective with compatible arguments; returns "" or the problem.
std::string check_agreement(const Slot& slot, int world);
// Sums elements [0, n) of every src into every dst in source order (src[q] and dst[q] may be the same).
void reduce_sum(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t n);
// Where rank `rank`'s block starts in every send buffer of a reduce-scatter (elements).
uint64_t scatter_displacement(const Slot& slot, int rank);
// A new multi-process communicator handle over `transport` for this process's rank on `device` (local_comm.cpp).
sw_comm make_remote_comm(std::shared_ptr<DeviceImpl> device, std::unique_ptr<Transport> transport, int64_t timeout_ms);
// Rank `rank`'s data movement through NCCL once the ranks agree (nccl_comm.cpp); waits for NCCL to finish, polling
// ncclCommGetAsyncError, the deadline and local aborts (then ncclCommAbort).
void nccl_move(CommState& st, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline);
// tcp.cpp: the store behind a handle, and the TCP mesh between the ranks of a job.
struct StoreImpl* store_of(sw_store store);
std::unique_ptr<Transport> connect_tcp_mesh(StoreImpl& store, const std::string& prefix, int32_t rank, int32_t world,
                                            int64_t timeout_ms);
std::string store_get(StoreImpl& store, const std::string& key);
void store_set(StoreImpl& store, const std::string& key, const void* value, uint64_t bytes);
// mpi_transport.cpp: a transport over MPI_COMM_WORLD (initializing MPI if needed).
std::unique_ptr<Transport> create_mpi_transport(int64_t timeout_ms); // bounded: SW_ERR_TIMEOUT after timeout_ms (> 0)
// A multi-process collective (remote_comm.cpp); runs on the rank's stream worker.
void run_remote_collective(const std::shared_ptr<CommState>& st, int rank, uint64_t seq, const Desc& desc,
                           cpu::Stream* stream);

} // namespace sw

struct sw_comm_s {
    std::shared_ptr<sw::CommState> state;
};
