// In-process communicator: p virtual ranks (host threads or streams of one process), possibly on one
// device. A collective is queued on the calling rank's stream; when the stream reaches it, the rank
// joins a rendezvous keyed by its per-rank sequence number, the ranks check that they agree, each rank
// moves its share of the data, and a departure barrier keeps every send buffer alive and unmodified
// until all ranks have read it. A rank that does not arrive within the timeout, or ranks that disagree,
// abort the communicator: every waiting rank fails with the reason, later collectives fail at once.
#include "core/cuda_loader.h"
#include "core/dtype.h"
#include "core/enum_arg.h"
#include "core/index_math.h"
#include "core/objects.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "comm/comm_internal.h"

using namespace sw;

namespace {
sw_comm_s* checked_comm(sw_comm h) { return checked(h, HandleKind::Comm, "comm"); }
} // namespace

bool sw::test_fault_point() {
    struct Spec {
        bool exit = false;
        std::vector<uint64_t> at; // empty: no fault
    };
    static const Spec spec = [] {
        Spec s;
        const char* v = std::getenv("SHARDWISE_TEST_FAULT");
        if (!v) return s;
        if (std::strncmp(v, "exit:", 5) == 0) s.exit = true;
        else if (std::strncmp(v, "abort:", 6) != 0) return s;
        for (const char* p = std::strchr(v, ':'); p && *p; p = std::strchr(p + 1, ','))
            if (const uint64_t n = std::strtoull(p + 1, nullptr, 10)) s.at.push_back(n);
        return s;
    }();
    if (spec.at.empty()) return false;
    static std::atomic<uint64_t> count{0};
    const uint64_t now = count.fetch_add(1) + 1;
    if (std::find(spec.at.begin(), spec.at.end(), now) == spec.at.end()) return false;
    if (spec.exit) std::_Exit(0); // gone without a word, as a killed rank
    return true;
}

std::string sw::rank_list(const std::vector<int>& ranks) {
    std::string s;
    for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
    return s;
}

std::string sw::check_agreement(const Slot& slot, int world) {
    const Desc& d0 = slot.desc[0];
    for (int r = 1; r < world; ++r) {
        const Desc& d = slot.desc[r];
        bool same = d.op == d0.op && d.dtype == d0.dtype;
        if (same) {
            switch (d0.op) {
            case Coll::AllGather:
            case Coll::AllReduce:
            case Coll::ReduceScatter: same = d.count == d0.count; break;
            case Coll::Broadcast: same = d.count == d0.count && d.root == d0.root; break;
            case Coll::AllGatherColumns: same = d.rows == d0.rows; break;
            default: break;
            }
        }
        if (!same)
            return str("ranks disagree: rank 0 called ", describe(d0), " but rank ", r, " called ", describe(d));
    }
    if (d0.op == Coll::ReduceScatterV) {
        uint64_t total = 0;
        for (int r = 0; r < world; ++r) total += slot.desc[r].count;
        for (int r = 0; r < world; ++r)
            if (slot.desc[r].send_capacity < total)
                return str("rank ", r, "'s send holds ", slot.desc[r].send_capacity, " elements but the ranks' counts add up to ", total);
    }
    if (d0.op == Coll::AllGatherV || d0.op == Coll::AllGatherColumns) {
        uint64_t total = 0;
        for (int r = 0; r < world; ++r) total += d0.op == Coll::AllGatherV ? slot.desc[r].count : slot.desc[r].cols;
        for (int r = 0; r < world; ++r) {
            const Desc& d = slot.desc[r];
            if (d0.op == Coll::AllGatherV && d.recv_capacity < total)
                return str("rank ", r, "'s recv holds ", d.recv_capacity, " elements but the ranks contribute ", total);
            if (d0.op == Coll::AllGatherColumns) {
                if (static_cast<uint64_t>(d.ld_recv) < total)
                    return str("rank ", r, "'s ld_recv = ", d.ld_recv, " is smaller than the ", total,
                               " gathered columns");
                if (d.recv_capacity < matrix_extent(d.rows, static_cast<int64_t>(total), d.ld_recv))
                    return str("rank ", r, "'s recv holds ", d.recv_capacity, " elements but ", d.rows, " x ", total,
                               " with ld_recv ", d.ld_recv, " needs ", matrix_extent(d.rows, static_cast<int64_t>(total), d.ld_recv));
            }
        }
    }
    return {};
}

namespace {
// ---- element conversions for the reductions
float half_to_float(uint16_t h) {
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { // subnormal
            int e = -1;
            uint32_t m = man;
            do { ++e; m <<= 1; } while (!(m & 0x400));
            bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (m & 0x3ff) << 13;
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | man << 13;
    else bits = sign | (exp + 112) << 23 | man << 13;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
uint16_t float_to_half(float f) { // round to nearest even
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u); // overflow -> inf
    if (abs < 0x38800000u) { // subnormal or zero
        if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
        const uint32_t e = abs >> 23, m = (abs & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e; // 14..24
        uint32_t v = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (v & 1))) ++v;
        return static_cast<uint16_t>(sign | v);
    }
    uint32_t v = ((abs >> 13) - (112u << 10));
    const uint32_t rem = abs & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) ++v;
    return static_cast<uint16_t>(sign | v);
}
float bf16_to_float(uint16_t h) {
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40); // quiet NaN
    x += 0x7fff + ((x >> 16) & 1);
    return static_cast<uint16_t>(x >> 16);
}

template <class T> struct Acc { using type = T; };
template <> struct Acc<uint16_t> { using type = float; };
// i32 sums wrap around (two's complement, as NCCL and the CUDA plugin do) instead of overflowing: the sum runs in
// uint32_t, whose overflow is defined, and converts back (modular since C++20, implementation-defined and modular on
// every compiler before).
template <> struct Acc<int32_t> { using type = uint32_t; };

template <class T, class Load, class Store>
void reduce_block(const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t n,
                  Load load, Store store) {
    using A = typename Acc<T>::type;
    constexpr uint64_t B = 1024;
    A acc[B];
    for (uint64_t i0 = 0; i0 < n; i0 += B) {
        const uint64_t len = std::min<uint64_t>(B, n - i0);
        const T* s0 = reinterpret_cast<const T*>(src[0]) + i0;
        for (uint64_t i = 0; i < len; ++i) acc[i] = load(s0[i]);
        for (size_t q = 1; q < src.size(); ++q) { // rank order 0..p-1: every rank gets the same bits
            const T* sq = reinterpret_cast<const T*>(src[q]) + i0;
            for (uint64_t i = 0; i < len; ++i) acc[i] += load(sq[i]);
        }
        for (char* d : dst) {
            T* out = reinterpret_cast<T*>(d) + i0;
            for (uint64_t i = 0; i < len; ++i) out[i] = store(acc[i]);
        }
    }
}

} // namespace

void sw::reduce_sum(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst,
                uint64_t n) {
    auto id = [](auto v) { return v; };
    switch (t) {
    case SW_DTYPE_F32: reduce_block<float>(src, dst, n, id, id); break;
    case SW_DTYPE_F64: reduce_block<double>(src, dst, n, id, id); break;
    case SW_DTYPE_I32:
        reduce_block<int32_t>(src, dst, n, [](int32_t v) { return static_cast<uint32_t>(v); },
                              [](uint32_t v) { return static_cast<int32_t>(v); });
        break;
    case SW_DTYPE_F16: reduce_block<uint16_t>(src, dst, n, half_to_float, float_to_half); break;
    case SW_DTYPE_BF16: reduce_block<uint16_t>(src, dst, n, bf16_to_float, float_to_bf16); break;
    default: fail(SW_ERR_UNSUPPORTED, "sum of dtype ", sw::dtype_name(t), " is not supported");
    }
}

uint64_t sw::scatter_displacement(const Slot& slot, int rank) {
    const Desc& me = slot.desc[rank];
    if (me.op == Coll::ReduceScatter) return static_cast<uint64_t>(rank) * me.count;
    uint64_t displ = 0;
    for (int q = 0; q < rank; ++q) displ += slot.desc[q].count;
    return displ;
}

namespace {

// How one backend moves data for a collective; move_data says what to move. Pointers are final (offsets applied).
struct Mover {
    virtual ~Mover() = default;
    virtual void copy(char* dst, const char* src, uint64_t bytes) = 0;
    // rows x cols elements of esz bytes, leading dimensions in elements.
    virtual void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                         size_t esz) = 0;
    // Every dst[d][i] = sum over s of src[s][i] (in source order), i < count; dst may alias src element-wise.
    virtual void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count) = 0;
    virtual void finish() {} // all moves complete when it returns
};

struct CpuMover final : Mover {
    void copy(char* dst, const char* src, uint64_t bytes) override { std::memmove(dst, src, bytes); }
    void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                 size_t esz) override {
        for (int64_t i = 0; i < rows; ++i) std::memmove(dst + i * ld_dst * esz, src + i * ld_src * esz, cols * esz);
    }
    void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count) override {
        reduce_sum(t, src, dst, count);
    }
};

// CUDA: moves on the rank's communication stream (one per rank, created once; a rank may queue collectives on
// several streams, whose workers can get here at the same time), synchronized in finish().
struct CudaMover final : Mover {
    CudaMover(CommState& st, int rank)
        : api(st.devices[rank]->cuda), ord(st.devices[rank]->ordinal), cs(comm_stream(st, rank)) {}
    // A move that failed half way may have copies in flight: drain them, so that no write into a peer's recv lands
    // after the departure barrier (where a failed collective's outputs are poisoned).
    ~CudaMover() {
        std::string ignored;
        api->stream_synchronize(ord, cs, &ignored);
    }
    void copy(char* dst, const char* src, uint64_t bytes) override {
        cuda_check(api->memcpy_async(ord, dst, src, bytes, cs, &err), err);
    }
    void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                 size_t esz) override {
        cuda_check(api->copy_2d(ord, dst, ld_dst, src, ld_src, rows, cols, static_cast<int32_t>(esz), cs, &err), err);
    }
    void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count) override {
        std::vector<const void*> s(src.begin(), src.end());
        std::vector<void*> d(dst.begin(), dst.end());
        cuda_check(api->reduce_sum(ord, t, s.data(), static_cast<int32_t>(s.size()), d.data(),
                                   static_cast<int32_t>(d.size()), count, cs, &err), err);
    }
    void finish() override { cuda_check(api->stream_synchronize(ord, cs, &err), err); }

    const cuda::PluginApi* api;
    int32_t ord;
    void* cs = nullptr;
    std::string err;
};

} // namespace

void* sw::comm_stream(CommState& st, int rank) {
    std::lock_guard<std::mutex> lock(st.mu);
    if (!st.cuda_streams[rank]) {
        std::string err;
        cuda_check(st.devices[rank]->cuda->stream_create(st.devices[rank]->ordinal, &st.cuda_streams[rank], &err), err);
    }
    return st.cuda_streams[rank];
}

sw::InPlaceBackup::InPlaceBackup(CommState& st, int rank, const Desc& d) : st_(st), rank_(rank) {
    const auto& dev = st.devices[rank];
    if (!dev->is_cuda() || !in_place_all_reduce(d) || !d.count) return;
    const uint64_t bytes = d.count * sw_dtype_size(d.dtype);
    {
        std::lock_guard<std::mutex> lock(st.spares_mu);
        if (st.cuda_spares.size() < st.devices.size()) st.cuda_spares.resize(st.devices.size());
        auto& spares = st.cuda_spares[rank];
        for (size_t i = 0; i < spares.size(); ++i)
            if (spares[i].second >= bytes) {
                buf_ = spares[i].first;
                cap_ = spares[i].second;
                spares.erase(spares.begin() + static_cast<std::ptrdiff_t>(i));
                break;
            }
    }
    std::string err;
    if (!buf_) {
        cuda_check(dev->cuda->malloc_device(dev->ordinal, bytes, &buf_, &err), err);
        cap_ = bytes;
    }
    void* cs = comm_stream(st, rank);
    cuda_check(dev->cuda->memcpy_async(dev->ordinal, buf_, d.recv, bytes, cs, &err), err);
    cuda_check(dev->cuda->stream_synchronize(dev->ordinal, cs, &err), err);
}

sw::InPlaceBackup::~InPlaceBackup() {
    if (!buf_) return;
    std::lock_guard<std::mutex> lock(st_.spares_mu);
    st_.cuda_spares[rank_].push_back({buf_, cap_});
}

void sw::poison_or_restore(CommState& st, const Slot& slot, int rank, const void* backup) {
    const auto& dev = st.devices[rank];
    if (!dev->is_cuda()) {
        poison_host_output(slot, st.world, rank);
        return;
    }
    const Desc& me = slot.desc[rank];
    std::string ignored;
    void* cs = nullptr;
    try {
        cs = comm_stream(st, rank);
    } catch (const Error&) {
        return; // the device cannot even create a stream
    }
    if (in_place_all_reduce(me)) {
        if (backup && me.count)
            dev->cuda->memcpy_async(dev->ordinal, me.recv, backup, me.count * sw_dtype_size(me.dtype), cs, &ignored);
    } else {
        for_each_output_run(slot, st.world, rank, [&](char* p, uint64_t bytes) {
            if (p && bytes) dev->cuda->memset_async(dev->ordinal, p, kPoisonByte, bytes, cs, &ignored);
        });
    }
    dev->cuda->stream_synchronize(dev->ordinal, cs, &ignored);
}

namespace {

// Rank `rank`'s share of the data movement, after every rank has arrived and agreed (the departure barrier
// follows, so every move is complete when this returns).
void move_data(const Slot& slot, int world, int rank, Mover& mv) {
    const Desc& me = slot.desc[rank];
    const size_t esz = sw_dtype_size(me.dtype);
    switch (me.op) {
    case Coll::AllGather:
        if (me.count)
            for (int q = 0; q < world; ++q) mv.copy(me.recv + q * me.count * esz, slot.desc[q].send, me.count * esz);
        break;
    case Coll::AllGatherV: {
        uint64_t at = 0;
        for (int q = 0; q < world; ++q) {
            const uint64_t c = slot.desc[q].count;
            if (c) mv.copy(me.recv + at * esz, slot.desc[q].send, c * esz);
            at += c;
        }
        break;
    }
    case Coll::AllGatherColumns: {
        int64_t col0 = 0;
        for (int q = 0; q < world; ++q) {
            const Desc& d = slot.desc[q];
            if (d.cols > 0 && me.rows > 0) mv.copy_2d(me.recv + col0 * esz, me.ld_recv, d.send, d.ld_send, me.rows, d.cols, esz);
            col0 += d.cols;
        }
        break;
    }
    case Coll::AllReduce: { // this rank reduces its chunk and writes it to every rank's recv
        const uint64_t begin = static_cast<uint64_t>(shard_offset(static_cast<int64_t>(me.count), world, rank));
        const uint64_t n = static_cast<uint64_t>(shard_count(static_cast<int64_t>(me.count), world, rank));
        if (!n) break;
        std::vector<const char*> src(world);
        std::vector<char*> dst(world);
        for (int q = 0; q < world; ++q) {
            src[q] = slot.desc[q].send + begin * esz;
            dst[q] = slot.desc[q].recv + begin * esz;
        }
        mv.reduce(me.dtype, src, dst, n);
        break;
    }
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: {
        if (!me.count) break;
        const uint64_t displ = scatter_displacement(slot, rank);
        std::vector<const char*> src(world);
        for (int q = 0; q < world; ++q) src[q] = slot.desc[q].send + displ * esz;
        mv.reduce(me.dtype, src, {me.recv}, me.count);
        break;
    }
    case Coll::Broadcast:
        if (rank != me.root && me.count) mv.copy(me.recv, slot.desc[me.root].send, me.count * esz);
        break;
    case Coll::Barrier: break;
    }
    mv.finish();
}

// Runs on rank's stream worker thread.
void run_collective(const std::shared_ptr<CommState>& st, int rank, uint64_t seq, const Desc& desc,
                    cpu::Stream* stream) {
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
    // An in-place all-reduce on a CUDA device: keep a copy of the input before any peer may write into it (the
    // CUDA moves can fail half way). Taken without the lock; the peers cannot write before this rank joins.
    std::optional<InPlaceBackup> backup;
    if (st->devices[rank]->is_cuda() && in_place_all_reduce(desc)) {
        lock.unlock();
        try {
            backup.emplace(*st, rank, desc);
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
    Slot& slot = st->slots[seq]; // std::map: the reference stays valid while other slots come and go
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
                                     rank_list(missing), " of ", st->world, " never joined (joined: ",
                                     rank_list(present), "); the communicator is aborted"));
            }
        }
        if (!slot.ready) fail(st->abort_status, "rank ", rank, ": ", st->reason);
    }
    lock.unlock();
    std::string move_error;
    sw_status move_status = SW_OK;
    try {
        if (st->nccl) {
            nccl_move(*st, rank, seq, slot, Clock::now() + std::chrono::milliseconds(st->timeout_ms));
        } else if (st->devices[rank]->is_cuda()) {
            CudaMover mv(*st, rank);
            move_data(slot, st->world, rank, mv);
        } else {
            CpuMover mv;
            move_data(slot, st->world, rank, mv);
        }
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
    if (++slot.left == st->world) st->slots.erase(seq);
    if (failed) {
        // A peer (or this rank) failed after some ranks may have written: the whole receive region is poisoned
        // (an in-place all-reduce keeps its input: its backup is restored).
        lock.unlock();
        poison_or_restore(*st, outputs, rank, backup ? backup->data() : nullptr);
        lock.lock();
        fail(move_status != SW_OK ? move_status : st->abort_status, "rank ", rank, ": ", st->reason);
    }
    ++st->completed[rank];
}

// A rank argument: in range, and for a multi-process communicator this process's own rank.
void check_rank(const CommState& st, int32_t rank) {
    if (rank < 0 || rank >= st.world)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " is out of range; expected 0 <= rank < ", st.world);
    if (st.self >= 0 && rank != st.self)
        fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " but this process is rank ", st.self, " of the ", st.backend_name(),
             " communicator; a multi-process communicator runs one rank per process, pass its own rank");
}

struct Ctx {
    sw_comm_s* comm;
    sw_stream_s* stream;
    size_t esz;
};

// dtype is the export's parameter itself, by reference: dtype_size_checked reads it raw and range-checks it before
// it is ever loaded as a sw_dtype (core/enum_arg.h), so after enter() the exports may use it as an enum.
Ctx enter(sw_comm comm, int32_t rank, sw_stream stream, const sw_dtype& dtype, bool reducing) {
    auto* c = checked_comm(comm);
    auto* s = checked(stream, "stream");
    const auto& st = c->state;
    check_rank(*st, rank);
    if (s->device_impl != st->devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, "stream runs on device '", s->device_impl->name, "' but rank ", rank,
             " of the communicator is on device '", st->devices[rank]->name, "'; expected a stream of rank ", rank,
             "'s device");
    const size_t esz = dtype_size_checked(dtype, "dtype");
    if (reducing && dtype == SW_DTYPE_U8) fail(SW_ERR_UNSUPPORTED, "dtype u8 cannot be summed");
    return {c, s, esz};
}

char* span_of(sw_buffer b, const char* name, const Ctx& ctx, int32_t rank, uint64_t offset, uint64_t count,
              std::shared_ptr<Storage>* keep) {
    auto* buf = checked(b, HandleKind::Buffer, name);
    if (buf->device_impl != ctx.comm->state->devices[rank])
        fail(SW_ERR_INVALID_ARGUMENT, name, " is not on rank ", rank, "'s device; expected a buffer of that device");
    *keep = buf->storage;
    return buffer_span(buf, offset, count, ctx.esz, name);
}

uint64_t capacity_from(sw_buffer b, uint64_t offset, size_t esz) {
    auto* buf = reinterpret_cast<sw_buffer_s*>(b);
    const uint64_t cap = buf->storage->bytes / esz;
    return offset <= cap ? cap - offset : 0;
}

// Takes the rank's next sequence number (the n-th collective of every rank is matched), or fails at once
// when the communicator is aborted.
uint64_t next_sequence(CommState& st, int32_t rank) {
    std::lock_guard<std::mutex> lock(st.mu);
    if (st.aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", st.reason, "; create a new communicator");
    return st.next_seq[rank]++;
}

void submit(const Ctx& ctx, int32_t rank, Desc desc) {
    const auto st = ctx.comm->state;
    cpu::Stream* stream = ctx.stream->impl.get();
    sw_stream_s* s = ctx.stream;
    if (st->is_remote() && !s->device_impl->is_cuda()) { // TCP/MPI: CPU devices
        const uint64_t seq = next_sequence(*st, rank);
        stream->enqueue(
            [st, rank, seq, desc = std::move(desc), stream] { run_remote_collective(st, rank, seq, desc, stream); },
            /*always=*/true);
        return;
    }
    if (!s->device_impl->is_cuda()) {
        const uint64_t seq = next_sequence(*st, rank);
        stream->enqueue([st, rank, seq, desc = std::move(desc), stream] { run_collective(st, rank, seq, desc, stream); },
                        /*always=*/true);
        return;
    }
    // CUDA: the host side (rendezvous + data movement) runs on the stream's worker thread once the CUDA
    // stream's earlier work is done (event `ready`); the CUDA stream's later work waits until the worker
    // raises the stream's flag to `target` — also when the collective fails, so the stream never hangs.
    // Everything that can fail comes before the sequence number is taken, so a failed call leaves the rank's
    // numbering in step with its peers; after that, a failure aborts the communicator.
    const cuda::PluginApi* api = s->device_impl->cuda;
    const int32_t ord = s->device_impl->ordinal;
    std::string err;
    {
        std::lock_guard<std::mutex> lock(st->mu); // fail fast, before touching the stream
        if (st->aborted) fail(SW_ERR_ABORTED, "the communicator was aborted: ", st->reason, "; create a new communicator");
    }
    if (!s->flag_host) {
        void* host = nullptr;
        void* device = nullptr;
        cuda_check(api->malloc_host(sizeof(uint32_t), &host, &device, &err), err);
        s->flag_host = static_cast<uint32_t*>(host);
        s->flag_device = static_cast<uint32_t*>(device);
        __atomic_store_n(s->flag_host, 0u, __ATOMIC_RELEASE);
        s->flag_target = 0;
    }
    void* ready = nullptr;
    cuda_check(api->event_create(ord, &ready, &err), err);
    const sw_status rec = api->event_record(ord, ready, s->cuda_stream, &err);
    uint64_t seq = 0;
    try {
        cuda_check(rec, err);
        seq = next_sequence(*st, rank);
    } catch (...) {
        std::string ignored;
        api->event_destroy(ord, ready, &ignored);
        throw;
    }
    const uint32_t target = ++s->flag_target;
    uint32_t* flag = s->flag_host;
    stream->enqueue(
        [st, rank, seq, desc = std::move(desc), stream, api, ord, ready, flag, target] {
            struct Release { // raise the flag whatever happens below
                uint32_t* flag;
                uint32_t target;
                ~Release() { __atomic_store_n(flag, target, __ATOMIC_RELEASE); }
            } release{flag, target};
            std::string e;
            const sw_status waited = api->event_synchronize(ord, ready, &e);
            std::string ignored;
            api->event_destroy(ord, ready, &ignored);
            if (waited != SW_OK) { // the peers must not wait for this rank until the timeout
                std::lock_guard<std::mutex> lock(st->mu);
                st->abort_locked(waited, str("rank ", rank, " could not join collective #", seq,
                                             ": waiting for its stream's earlier work failed: ", e));
                fail(waited, st->reason);
            }
            if (st->is_remote()) run_remote_collective(st, rank, seq, desc, stream); // NCCL across processes
            else run_collective(st, rank, seq, desc, stream);
        },
        /*always=*/true);
    const sw_status queued = api->stream_wait_flag(ord, s->flag_device, target, s->cuda_stream, &err);
    if (queued != SW_OK) {
        // The host side is queued and will run, but the stream would not wait for it: the ordering promise is
        // broken, so abort the communicator rather than let the ranks go on with a half-ordered collective.
        std::lock_guard<std::mutex> lock(st->mu);
        st->abort_locked(queued, str("rank ", rank, ": ordering collective #", seq, " into its CUDA stream failed: ", err));
        fail(queued, st->reason);
    }
}

} // namespace

sw_comm sw::make_remote_comm(std::shared_ptr<DeviceImpl> device, std::unique_ptr<Transport> transport, int64_t timeout_ms) {
    auto st = std::make_shared<CommState>();
    st->world = transport->world();
    st->self = transport->rank();
    st->timeout_ms = resolve_timeout(timeout_ms);
    st->devices.assign(st->world, device);
    st->transport = std::move(transport);
    st->cuda_streams.assign(st->world, nullptr);
    st->next_seq.assign(st->world, 0);
    st->completed.assign(st->world, 0);
    for (auto& d : st->devices) ++d->children;
    auto* c = new sw_comm_s{std::move(st)};
    register_handle(c, HandleKind::Comm);
    return c;
}

extern "C" {

SW_API sw_status sw_comm_get_rank(sw_comm comm, int32_t* rank) {
    return guard(__func__, [&] {
        require(rank, "rank");
        *rank = checked_comm(comm)->state->self;
    });
}

SW_API sw_status sw_comm_get_backend(sw_comm comm, const char** name) {
    return guard(__func__, [&] {
        require(name, "name");
        const auto& st = checked_comm(comm)->state;
        *name = st->nccl ? "nccl" : st->transport ? st->transport->name() : "local";
    });
}

SW_API sw_status sw_comm_create_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        if (world_size < 1 || world_size > 4096)
            fail(SW_ERR_INVALID_ARGUMENT, "world_size = ", world_size, "; expected 1..4096");
        require(devices, "devices");
        if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
        auto st = std::make_shared<CommState>();
        st->world = world_size;
        st->timeout_ms = resolve_timeout(timeout_ms);
        for (int r = 0; r < world_size; ++r) {
            const std::string name = str("devices[", r, "]");
            st->devices.push_back(checked(devices[r], name.c_str())->impl);
            if (st->devices[r]->backend != st->devices[0]->backend)
                fail(SW_ERR_INVALID_ARGUMENT, "devices[", r, "] is '", st->devices[r]->name, "' but devices[0] is '",
                     st->devices[0]->name, "'; an in-process communicator needs ranks of one backend");
        }
        st->cuda_streams.assign(world_size, nullptr);
        st->next_seq.assign(world_size, 0);
        st->completed.assign(world_size, 0);
        for (auto& d : st->devices) ++d->children;
        auto* c = new sw_comm_s{std::move(st)};
        register_handle(c, HandleKind::Comm);
        *out = c;
    });
}

SW_API sw_status sw_comm_destroy(sw_comm comm) {
    return guard(__func__, [&] {
        if (!comm) return;
        auto* c = checked_comm(comm);
        unregister_handle(c);
        {
            // Collectives still queued on some stream fail at once instead of waiting for peers.
            std::lock_guard<std::mutex> lock(c->state->mu);
            c->state->abort_locked(SW_ERR_ABORTED, "the communicator was destroyed");
        }
        // Peers in other processes learn it at once too (a peer waiting for this rank fails instead of timing out).
        if (c->state->transport) c->state->transport->notify_abort(SW_ERR_ABORTED, str("rank ", c->state->self, " destroyed its communicator"));
        for (auto& d : c->state->devices) --d->children;
        delete c; // queued collectives keep the state alive
    });
}

SW_API sw_status sw_comm_get_world_size(sw_comm comm, int32_t* world_size) {
    return guard(__func__, [&] {
        require(world_size, "world_size");
        *world_size = checked_comm(comm)->state->world;
    });
}

// sw_comm_abort and sw_comm_abort_with_reason: the first abort's reason wins, and the peers of a multi-process
// communicator are told it.
static void abort_comm(sw_comm comm, const char* given) {
    auto* c = checked_comm(comm);
    std::string why;
    if (given && *given) why.assign(given, strnlen(given, 4000));
    else why = c->state->is_remote() ? str("sw_comm_abort was called on rank ", c->state->self) : std::string("sw_comm_abort was called");
    std::string reason;
    {
        std::lock_guard<std::mutex> lock(c->state->mu);
        c->state->abort_locked(SW_ERR_ABORTED, why);
        reason = c->state->reason;
    }
    if (c->state->transport) c->state->transport->notify_abort(SW_ERR_ABORTED, reason);
}

SW_API sw_status sw_comm_abort(sw_comm comm) {
    return guard(__func__, [&] { abort_comm(comm, nullptr); });
}

SW_API sw_status sw_comm_abort_with_reason(sw_comm comm, const char* reason) {
    return guard(__func__, [&] { abort_comm(comm, reason); });
}

SW_API sw_status sw_comm_get_state(sw_comm comm, int32_t* aborted, char* reason, uint64_t reason_capacity) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        require(aborted, "aborted");
        std::lock_guard<std::mutex> lock(c->state->mu);
        *aborted = c->state->aborted ? 1 : 0;
        if (reason && reason_capacity > 0) {
            const size_t n = std::min<uint64_t>(c->state->reason.size(), reason_capacity - 1);
            std::memcpy(reason, c->state->reason.data(), n);
            reason[n] = '\0';
        }
    });
}

SW_API sw_status sw_comm_get_collective_count(sw_comm comm, int32_t rank, uint64_t* count) {
    return guard(__func__, [&] {
        auto* c = checked_comm(comm);
        require(count, "count");
        check_rank(*c->state, rank);
        std::lock_guard<std::mutex> lock(c->state->mu);
        *count = c->state->completed[rank];
    });
}

SW_API sw_status sw_all_gather(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                               uint64_t recv_offset, uint64_t count, sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, false);
        Desc d;
        d.op = Coll::AllGather;
        d.dtype = dtype;
        d.count = count;
        d.send = span_of(send, "send", ctx, rank, send_offset, count, &d.keep_send);
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset,
                         saturating_mul(count, static_cast<uint64_t>(ctx.comm->state->world)), &d.keep_recv);
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_all_gather_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, uint64_t count,
                                 sw_buffer recv, uint64_t recv_offset, uint64_t recv_capacity, sw_dtype dtype,
                                 sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, false);
        Desc d;
        d.op = Coll::AllGatherV;
        d.dtype = dtype;
        d.count = count;
        d.send = span_of(send, "send", ctx, rank, send_offset, count, &d.keep_send);
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, recv_capacity, &d.keep_recv);
        d.recv_capacity = recv_capacity;
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_all_gather_columns(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, int64_t rows,
                                       int64_t cols, int64_t ld_send, sw_buffer recv, uint64_t recv_offset,
                                       int64_t ld_recv, sw_dtype dtype, sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, false);
        if (rows < 0) fail(SW_ERR_INVALID_ARGUMENT, "rows = ", rows, "; expected rows >= 0");
        if (cols < 0) fail(SW_ERR_INVALID_ARGUMENT, "cols = ", cols, "; expected cols >= 0");
        if (ld_send < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_send = ", ld_send, " is smaller than cols = ", cols);
        if (ld_recv < cols) fail(SW_ERR_INVALID_ARGUMENT, "ld_recv = ", ld_recv, " is smaller than cols = ", cols);
        Desc d;
        d.op = Coll::AllGatherColumns;
        d.dtype = dtype;
        d.rows = rows;
        d.cols = cols;
        d.ld_send = ld_send;
        d.ld_recv = ld_recv;
        d.send = cols > 0 && rows > 0
                     ? span_of(send, "send", ctx, rank, send_offset, matrix_extent(rows, cols, ld_send), &d.keep_send)
                     : nullptr;
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, matrix_extent(rows, cols, ld_recv), &d.keep_recv);
        d.recv_capacity = capacity_from(recv, recv_offset, ctx.esz);
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_all_reduce(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                               uint64_t recv_offset, uint64_t count, sw_dtype dtype, sw_reduce_op op,
                               sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, true);
        reduce_op_arg(op, "op"); // read raw (core/enum_arg.h): any int32 may arrive
        Desc d;
        d.op = Coll::AllReduce;
        d.dtype = dtype;
        d.count = count;
        d.send = span_of(send, "send", ctx, rank, send_offset, count, &d.keep_send);
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, count, &d.keep_recv);
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_reduce_scatter(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset, sw_buffer recv,
                                   uint64_t recv_offset, uint64_t recv_count, sw_dtype dtype, sw_reduce_op op,
                                   sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, true);
        reduce_op_arg(op, "op"); // read raw (core/enum_arg.h): any int32 may arrive
        Desc d;
        d.op = Coll::ReduceScatter;
        d.dtype = dtype;
        d.count = recv_count;
        d.send = span_of(send, "send", ctx, rank, send_offset,
                         saturating_mul(recv_count, static_cast<uint64_t>(ctx.comm->state->world)), &d.keep_send);
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, recv_count, &d.keep_recv);
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_reduce_scatter_v(sw_comm comm, int32_t rank, sw_buffer send, uint64_t send_offset,
                                     uint64_t send_capacity, sw_buffer recv, uint64_t recv_offset, uint64_t recv_count,
                                     sw_dtype dtype, sw_reduce_op op, sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, true);
        reduce_op_arg(op, "op"); // read raw (core/enum_arg.h): any int32 may arrive
        Desc d;
        d.op = Coll::ReduceScatterV;
        d.dtype = dtype;
        d.count = recv_count;
        d.send = span_of(send, "send", ctx, rank, send_offset, send_capacity, &d.keep_send);
        d.send_capacity = send_capacity;
        d.recv = span_of(recv, "recv", ctx, rank, recv_offset, recv_count, &d.keep_recv);
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_broadcast(sw_comm comm, int32_t rank, sw_buffer buf, uint64_t offset, uint64_t count,
                              sw_dtype dtype, int32_t root, sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, dtype, false);
        if (root < 0 || root >= ctx.comm->state->world)
            fail(SW_ERR_INVALID_ARGUMENT, "root = ", root, " is out of range; expected 0 <= root < ",
                 ctx.comm->state->world);
        Desc d;
        d.op = Coll::Broadcast;
        d.dtype = dtype;
        d.count = count;
        d.root = root;
        d.recv = span_of(buf, "buf", ctx, rank, offset, count, &d.keep_recv);
        d.send = d.recv;
        submit(ctx, rank, std::move(d));
    });
}

SW_API sw_status sw_barrier(sw_comm comm, int32_t rank, sw_stream stream) {
    return guard(__func__, [&] {
        const Ctx ctx = enter(comm, rank, stream, SW_DTYPE_U8, false);
        Desc d;
        d.op = Coll::Barrier;
        submit(ctx, rank, std::move(d));
    });
}

} // extern "C"
