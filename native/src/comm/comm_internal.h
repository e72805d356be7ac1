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
    int arrived = 0, departed = 0, left = 0;
    bool ready = false;
    bool failed = false; // some rank's data movement failed (in-process communicators)
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

    // CUDA devices: spare device buffers (pointer, bytes) per rank for the backup of an in-place all-reduce's input
    // (restored when the collective fails); taken and returned under spares_mu (local_comm.cpp, InPlaceBackup), not mu:
    // a backup goes while its collective may still hold mu.
    std::mutex spares_mu;
    std::vector<std::vector<std::pair<void*, uint64_t>>> cuda_spares;

    ~CommState() {
        release_nccl();
        for (size_t r = 0; r < cuda_spares.size(); ++r)
            for (auto& b : cuda_spares[r]) {
                std::string err;
                devices[r]->cuda->free_device(devices[r]->ordinal, b.first, &err);
            }
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

// ---- the outputs of a failed collective (the contract stated in shardwise.h)
// A failed collective leaves every element it would have written (its receive region) either untouched or poisoned,
// all of it: every byte 0xFF, which is a quiet NaN in f32, f64, f16 and bf16, and -1 (i32) or 255 (u8) in the integer
// dtypes; an in-place all-reduce (send == recv) keeps its input.
constexpr uint8_t kPoisonByte = 0xFF;
inline bool in_place_all_reduce(const Desc& d) { return d.op == Coll::AllReduce && d.send == d.recv; }
// Calls fill(ptr, bytes) for every contiguous run of rank `rank`'s receive region (what the call writes once every
// rank's descriptor is known): broadcast's root writes nothing, all-gather-columns writes rows x (sum of cols) at
// ld_recv, the padding between rows untouched.
template <class Fill> void for_each_output_run(const Slot& slot, int world, int rank, Fill fill) {
    const Desc& me = slot.desc[rank];
    const size_t esz = sw_dtype_size(me.dtype);
    switch (me.op) {
    case Coll::AllGather: fill(me.recv, me.count * world * esz); break;
    case Coll::AllGatherV: {
        uint64_t total = 0;
        for (int q = 0; q < world; ++q) total += slot.desc[q].count;
        fill(me.recv, total * esz);
        break;
    }
    case Coll::AllGatherColumns: {
        int64_t total = 0;
        for (int q = 0; q < world; ++q) total += slot.desc[q].cols;
        for (int64_t i = 0; i < me.rows && total > 0; ++i)
            fill(me.recv + static_cast<uint64_t>(i * me.ld_recv) * esz, static_cast<uint64_t>(total) * esz);
        break;
    }
    case Coll::AllReduce:
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: fill(me.recv, me.count * esz); break;
    case Coll::Broadcast:
        if (rank != me.root) fill(me.recv, me.count * esz);
        break;
    case Coll::Barrier: break;
    }
}
// Host memory: poisons rank `rank`'s receive region (see above); an in-place all-reduce is left alone (its caller
// keeps the input instead).
inline void poison_host_output(const Slot& slot, int world, int rank) {
    if (in_place_all_reduce(slot.desc[rank])) return;
    for_each_output_run(slot, world, rank, [](char* p, uint64_t bytes) {
        if (p && bytes) std::memset(p, kPoisonByte, bytes);
    });
}
// The failure side of the contract for rank `rank` of a collective whose data movement may have begun: poisons the
// receive region (host memset, or a CUDA memset on the rank's communication stream); an in-place all-reduce on a
// CUDA device gets `backup` (taken before the ranks could write, see InPlaceBackup in local_comm.cpp) copied back.
// Best effort on a failing CUDA device (its errors are ignored: the collective's own error is what is reported).
void poison_or_restore(CommState& st, const Slot& slot, int rank, const void* backup = nullptr);
// CUDA devices: a copy of an in-place all-reduce's input in device memory, taken when constructed (before the rank
// joins, so before any peer or NCCL writes into it); restore() copies it back. Does nothing otherwise.
class InPlaceBackup {
public:
    InPlaceBackup(CommState& st, int rank, const Desc& d);
    ~InPlaceBackup();
    InPlaceBackup(const InPlaceBackup&) = delete;
    InPlaceBackup& operator=(const InPlaceBackup&) = delete;
    const void* data() const { return buf_; }

private:
    CommState& st_;
    int rank_;
    void* buf_ = nullptr;
    uint64_t cap_ = 0;
};
// The rank's communication stream on a CUDA device (created on first use).
void* comm_stream(CommState& st, int rank);
// Test-only fault injection (SHARDWISE_TEST_FAULT, read once per process; unset in normal use):
//   "exit:N"  the process calls _exit(0) right after its N-th data exchange of a multi-process collective
//             (a rank that dies between the reduce-scatter and the all-gather of an all-reduce);
//   "abort:N[,M...]" right after the N-th (M-th, ...) data exchange (multi-process) or data movement (in-process) of the process, the
//             communicator is aborted (SW_ERR_ABORTED, "injected fault"), as by sw_comm_abort at that moment.
// Counted over the whole process, from 1. Returns true when the caller is to abort now (it _exits for "exit:N").
bool test_fault_point();
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
