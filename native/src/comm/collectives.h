// The collective algorithms and helpers shared by every communicator kind (communicator.h draws the layers): what a
// collective is (Coll, Desc), one collective's descriptors of every rank (Slot), the agreement check, the shard and
// displacement math, the reductions (with the f16/bf16 conversions), the in-process data movement algorithm over a
// Copier (CPU or CUDA copies), the failed-collective output contract (poisoning), the argument checks of a collective
// call and of a communicator's creation, and the test-only fault injection. The lowest layer of comm/: it calls
// nothing else in comm/.
#pragma once
#include "core/dtype.h"
#include "core/objects.h"
#include "comm/transport.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sw {

struct Slot;

enum class Coll : int { AllGather, AllGatherV, AllGatherColumns, AllReduce, ReduceScatter, ReduceScatterV, Broadcast, Barrier,
                        Split /* sw_comm_split (split.cpp): a host collective of the parent, multi-process only */ };

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
    case Coll::Split: return "sw_comm_split";
    }
    return "collective";
}

// One rank's view of one collective.
struct Desc {
    Coll op = Coll::Barrier;
    sw_dtype dtype = SW_DTYPE_F32;
    uint64_t count = 0;         // elements (all-gather: per rank; reduce-scatter: per rank's result)
    int32_t root = 0;           // broadcast: the root; all-reduce, reduce-scatter (-v): the sw_reduce_op (so that the
                                // descriptor exchange and the frames' CallTag carry and compare it)
    int64_t rows = 0, cols = 0, ld_send = 0, ld_recv = 0;
    const char* send = nullptr;
    char* recv = nullptr;
    uint64_t recv_capacity = 0; // elements available in recv from its offset
    uint64_t send_capacity = 0; // reduce-scatter-v: elements available in send from its offset
    std::shared_ptr<Storage> keep_send, keep_recv;
    // The communicator's agreement check when the call was queued (sw_comm_set_agreement_check).
    bool check = true;
    // A host collective (Coll::Split: root = color, rows = key): run by the transport agreement once every rank's
    // descriptor agrees, instead of the Mover. Throws sw::Error.
    std::function<void(Transport&, const Slot&, Clock::time_point)> host;
};

// A reduction whose sums follow the fixed binary tree over the ranks (SW_REDUCE_SUM_TREE, core/tree_reduction.h)
// instead of rank order.
inline bool tree_sum(const Desc& d) {
    return (d.op == Coll::AllReduce || d.op == Coll::ReduceScatter || d.op == Coll::ReduceScatterV) &&
           d.root == SW_REDUCE_SUM_TREE;
}

// The collectives whose descriptor exchange a multi-process communicator skips with its agreement check off: every
// rank's data sizes follow from its own descriptor (the peers' are assumed equal to it). The others (uneven and
// column variants: the peers' counts are needed; barrier and split: the exchange is the operation) always exchange.
inline bool agreement_skippable(Coll c) {
    return c == Coll::AllGather || c == Coll::AllReduce || c == Coll::ReduceScatter || c == Coll::Broadcast;
}

inline std::string describe(const Desc& d) {
    switch (d.op) {
    case Coll::AllGatherColumns:
        return str(coll_name(d.op), "(rows ", d.rows, ", cols ", d.cols, ", ", sw::dtype_name(d.dtype), ")");
    case Coll::Broadcast:
        return str(coll_name(d.op), "(count ", d.count, ", root ", d.root, ", ", sw::dtype_name(d.dtype), ")");
    case Coll::Barrier:
    case Coll::Split: return coll_name(d.op);
    case Coll::AllReduce:
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV:
        return str(coll_name(d.op), "(count ", d.count, ", ", sw::dtype_name(d.dtype),
                   d.root == SW_REDUCE_SUM_TREE ? ", SW_REDUCE_SUM_TREE" : d.root == SW_REDUCE_SUM ? "" : ", op ?", ")");
    default: return str(coll_name(d.op), "(count ", d.count, ", ", sw::dtype_name(d.dtype), ")");
    }
}

// One collective: every rank's descriptor (the transport agreement fills only `desc`; the rest is the in-process
// rendezvous's bookkeeping).
struct Slot {
    std::vector<Desc> desc;
    std::vector<char> joined;
    int arrived = 0, departed = 0, left = 0;
    bool ready = false;
    bool failed = false; // some rank's data movement failed (in-process communicators)
    // Multi-process, agreement check on, descriptors not exchanged: the peers' descriptors are taken to be this rank's
    // and the check travels in the data's frames (CallTag, agree_transport.cpp); the first data exchange then reaches
    // every peer (empty pieces where there is no data), so every pair of ranks compares its calls.
    bool carried = false;
};

// The algorithms of the multi-process collectives (transport moves, mover_transport.cpp), chosen per process from the
// environment (read once; a bad value fails the collective with SW_ERR_INVALID_ARGUMENT naming it):
//   SHARDWISE_ALLREDUCE      auto (default) | oneshot | twostep | ring | rd
//   SHARDWISE_ALLGATHER      auto (default: direct) | direct | ring
//   SHARDWISE_REDUCE_SCATTER auto (default: direct) | direct | ring
// Bits: direct, two-step and one-shot sum every element in rank order 0..p-1, the in-process group's order, so every
// rank and an in-process group of the same size get the same bits; ring all-gather moves bytes only (the same bits).
// Ring reduce-scatter and all-reduce sum chunk c in the ring's order (ranks c+1, c+2, ..., p-1, 0, ..., c) and rd
// (recursive doubling, power-of-two p; otherwise two-step) in pairs ((x0+x1)+(x2+x3))...: the same bits on every
// rank (each sum is made once, or identically by both partners), but not the in-process group's bits, so auto never
// picks them; 16-bit types accumulate in fp32 across the steps and round once, as the direct ones.
//   direct / two-step: each rank sends every peer its block at once (reduce-scatter + all-gather for all-reduce);
//   one-shot (all-reduce): every rank's whole buffer to every peer, each sums all: 1 exchange instead of 2;
//   ring: p - 1 steps to the right-hand neighbour (2 (p - 1) for all-reduce), one message per step;
//   rd: log2 p exchanges of the whole buffer with rank ^ 2^s.
// auto: direct, and for all-reduce one-shot when (p - 1) x bytes <= 32 KiB, else two-step.
enum class Algo { Auto, Direct, OneShot, Ring, RecursiveDoubling };
Algo collective_algo(Coll op);
inline bool use_one_shot(uint64_t bytes, int p) {
    const Algo a = collective_algo(Coll::AllReduce);
    if (a != Algo::Auto) return a == Algo::OneShot;
    return bytes * static_cast<uint64_t>(p - 1) <= (uint64_t{32} << 10);
}

// Accumulators of the ring and rd algorithms: f32 for f16/bf16, u32 (wrapping) for i32, else the type itself.
size_t acc_size(sw_dtype t);
void acc_load(sw_dtype t, char* acc, const char* elems, uint64_t n);                       // acc = elems
void acc_add(sw_dtype t, char* out, const char* acc, const char* elems, uint64_t n);       // out = acc + elems
void acc_add_store(sw_dtype t, char* out, const char* acc, const char* elems, uint64_t n); // out (elements) = acc + elems
void acc_sum2(sw_dtype t, char* out, const char* lo, const char* hi, uint64_t n);          // out = lo + hi
void acc_store(sw_dtype t, char* elems, const char* acc, uint64_t n);                      // elems = acc (rounded)

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

// The devices of an in-process communicator, one per rank (sw_comm_create_local's checks): 1 <= world_size <= 4096,
// devices valid handles of one backend, timeout_ms >= 0.
std::vector<std::shared_ptr<DeviceImpl>> local_devices(int32_t world_size, const sw_device* devices, int64_t timeout_ms);

// Comma-separated rank numbers.
std::string rank_list(const std::vector<int>& ranks);
// Checks that all ranks called the same collective with compatible arguments; returns "" or the problem.
std::string check_agreement(const Slot& slot, int world);
// Sums elements [0, n) of every src into every dst in source order, or with tree = true in the order of the fixed
// binary tree over the sources (SW_REDUCE_SUM_TREE; f16/bf16 in fp32, rounded once) (src[q] and dst[q] may be the same).
void reduce_sum(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t n,
                bool tree = false);
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
    case Coll::Barrier:
    case Coll::Split: break;
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

// Copies and sums of one rank's in-process data movement (mover_cpu.cpp: host memory; mover_cuda.cpp: a CUDA device's
// communication stream). Pointers are final (offsets applied).
class Copier {
public:
    virtual ~Copier() = default;
    virtual void copy(char* dst, const char* src, uint64_t bytes) = 0;
    // rows x cols elements of esz bytes, leading dimensions in elements.
    virtual void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                         size_t esz) = 0;
    // Every dst[d][i] = sum over s of src[s][i] (in source order, or the tree's order: reduce_sum), i < count; dst may
    // alias src element-wise.
    virtual void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count,
                        bool tree) = 0;
    virtual void finish() {} // all moves complete when it returns
};
// The in-process algorithm: rank `rank`'s share of the data movement once every rank has arrived and agreed (all-gather:
// every block into its own recv; all-reduce: it sums its shard of the count and writes it into every rank's recv;
// reduce-scatter: its own block; broadcast: from the root). Every move is complete when it returns.
void move_data(const Slot& slot, int world, int rank, Copier& copier);

// Test-only fault injection (SHARDWISE_TEST_FAULT, read once per process; unset in normal use):
//   "exit:N"  the process calls _exit(0) right after its N-th data exchange of a multi-process collective
//             (a rank that dies between the reduce-scatter and the all-gather of an all-reduce);
//   "abort:N[,M...]" right after the N-th (M-th, ...) data exchange (multi-process) or data movement (in-process) of the process, the
//             communicator is aborted (SW_ERR_ABORTED, "injected fault"), as by sw_comm_abort at that moment.
// Counted over the whole process, from 1. Returns true when the caller is to abort now (it _exits for "exit:N").
bool test_fault_point();

} // namespace sw
