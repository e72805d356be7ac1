// Transport moves: the data of a multi-process communicator on CPU devices (TCP, MPI) moves through the same
// transport's point-to-point exchanges, built from Transport::exchange:
//  - all-gather (-v, -columns): each rank sends its block to every other rank;
//  - all-reduce: two-step (reduce-scatter then all-gather over the same chunks as the in-process communicator, chunk q
//    = shard q of the count; chunk q is summed by rank q in rank order 0..p-1) or, for small buffers, one-shot (every
//    rank's buffer to every rank, each sums all in rank order; collectives.h's use_one_shot): every rank gets the same
//    bits, and the same bits as an in-process communicator of the same size;
//  - reduce-scatter (-v): rank q receives block q of every rank and sums in rank order;
//  - or, chosen by name (collectives.h's collective_algo: SHARDWISE_ALLREDUCE / _ALLGATHER / _REDUCE_SCATTER), ring
//    all-gather, reduce-scatter and all-reduce and recursive-doubling all-reduce, whose sums run in another order
//    (the same bits on every rank, not the in-process group's; ring all-gather keeps them);
//  - broadcast: the root sends to every rank.
// SW_REDUCE_SUM_TREE: the sums of one-shot, two-step and direct run in the tree's order over the ranks; recursive
// doubling (power-of-two p) already adds in that order ((x0 + x1) + (x2 + x3)) ..., with the same fp32 accumulation of
// 16-bit types; a ring named for a tree sum runs direct / two-step instead (its order is another).
#include "comm/communicator.h"
#include "comm/p2p.h"
#include "core/index_math.h"

#include <algorithm>
#include <cstring>

using namespace sw;

namespace {

// Pieces of `bytes` bytes at `data` for every peer (skipping empty ones).
void to_all(std::vector<Piece>& out, int p, int self, char* data, uint64_t bytes) {
    if (!bytes) return;
    for (int q = 0; q < p; ++q)
        if (q != self) out.push_back({q, data, bytes});
}

// The receive scratch of the collectives, at least `bytes` long: kept from call to call (collectives of a multi-process
// communicator run one at a time), so that big collectives do not map, fault in and unmap fresh pages every call.
struct Scratch {
    std::unique_ptr<char[]> data;
    uint64_t bytes = 0;
    char* get(uint64_t need) {
        if (need > bytes) {
            data.reset(new char[need]); // not zeroed: every byte used is received first
            bytes = need;
        }
        return data.get();
    }
};

// Step 2 for the rank of this process.
void move_remote(Communicator& st, Scratch& scratch, Transport& t, uint64_t seq, const Slot& slot, Clock::time_point deadline,
                 const std::string& what) {
    const int p = t.world(), self = t.rank();
    const Desc& me = slot.desc[self];
    const size_t esz = sw_dtype_size(me.dtype);
    std::vector<Piece> sends, recvs;
    // The agreement check carried in the frames (Slot::carried): this rank's call in every frame; the first exchange
    // reaches every peer, and a rank that never joins it is named as the descriptor exchange names it.
    CallTag tag;
    if (slot.carried) {
        tag.op = static_cast<int32_t>(me.op);
        tag.dtype = static_cast<int32_t>(me.dtype);
        tag.root = me.root;
        tag.count = me.count;
    }
    int exchanges = 0;
    auto run = [&] {
        if (slot.carried && exchanges == 0)
            for (int q = 0; q < p; ++q) {
                if (q == self) continue;
                auto to_q = [q](const Piece& x) { return x.peer == q; };
                if (std::none_of(sends.begin(), sends.end(), to_q)) sends.push_back({q, nullptr, 0});
                if (std::none_of(recvs.begin(), recvs.end(), to_q)) recvs.push_back({q, nullptr, 0});
            }
        try {
            t.exchange(seq, sends, recvs, deadline, st.abort_flag, what, slot.carried ? &tag : nullptr);
        } catch (const TimeoutError& e) {
            if (slot.carried && exchanges == 0) fail_never_joined(st, e, what);
            throw;
        }
        ++exchanges;
        sends.clear();
        recvs.clear();
        if (test_fault_point()) { // test only (SHARDWISE_TEST_FAULT=abort:N): as sw_comm_abort at this moment
            st.abort_flag.store(true);
            fail(SW_ERR_ABORTED, what, ": injected fault (SHARDWISE_TEST_FAULT) after a data exchange");
        }
    };
    char* send = const_cast<char*>(me.send);
    const int right = (self + 1) % p, left = (self + p - 1) % p;
    // Ring all-gather over `buf`, whose block q (cnt(q) elements at off(q)) is rank q's; this rank's block is in place:
    // at step s this rank passes block self - s to the right and takes block self - s - 1 from the left.
    auto ring_all_gather = [&](char* buf, auto off, auto cnt) {
        for (int s = 0; s + 1 < p; ++s) {
            const int out_q = (self - s + p) % p, in_q = (self - s - 1 + 2 * p) % p;
            if (cnt(out_q)) sends.push_back({right, buf + off(out_q) * esz, cnt(out_q) * esz});
            if (cnt(in_q)) recvs.push_back({left, buf + off(in_q) * esz, cnt(in_q) * esz});
            run();
        }
    };
    // Ring reduce-scatter of src's p chunks (chunk c: cnt(c) elements at off(c)) into out (chunk `self`, elements):
    // partial sums travel to the right in the accumulation type; chunk c is summed in the order c+1, c+2, ..., c.
    // `acc` holds 2 x the largest chunk in accumulators.
    auto ring_reduce_scatter = [&](const char* src, auto off, auto cnt, char* out, char* acc, uint64_t max_chunk) {
        const size_t asz = acc_size(me.dtype);
        char* part = acc;                   // the partial this rank sends
        char* got = acc + max_chunk * asz;  // the partial it receives
        if (p == 1) {
            if (cnt(0)) std::memmove(out, src + off(0) * esz, cnt(0) * esz);
            return;
        }
        const int first = (self - 1 + p) % p;
        acc_load(me.dtype, part, src + off(first) * esz, cnt(first));
        for (int s = 0; s + 1 < p; ++s) {
            const int out_c = (self - s - 1 + 2 * p) % p, in_c = (self - s - 2 + 2 * p) % p;
            if (cnt(out_c)) sends.push_back({right, part, cnt(out_c) * asz});
            if (cnt(in_c)) recvs.push_back({left, got, cnt(in_c) * asz});
            run();
            if (s + 2 < p) acc_add(me.dtype, part, got, src + off(in_c) * esz, cnt(in_c)); // the next partial
            else acc_add_store(me.dtype, out, got, src + off(self) * esz, cnt(self));       // in_c == self: done
        }
    };
    switch (me.op) {
    case Coll::AllGather:
    case Coll::AllGatherV: {
        uint64_t at = 0, mine_at = 0;
        std::vector<uint64_t> offs(p);
        for (int q = 0; q < p; ++q) {
            offs[q] = at;
            if (q == self) mine_at = at;
            at += slot.desc[q].count;
        }
        if (collective_algo(me.op) == Algo::Ring) {
            if (me.count) std::memmove(me.recv + mine_at * esz, me.send, me.count * esz);
            ring_all_gather(me.recv, [&](int q) { return offs[q]; }, [&](int q) { return slot.desc[q].count; });
            break;
        }
        for (int q = 0; q < p; ++q)
            if (q != self && slot.desc[q].count) recvs.push_back({q, me.recv + offs[q] * esz, slot.desc[q].count * esz});
        to_all(sends, p, self, send, me.count * esz);
        run();
        if (me.count) std::memmove(me.recv + mine_at * esz, me.send, me.count * esz);
        break;
    }
    case Coll::AllGatherColumns: {
        // Blocks travel packed (rows x cols); each lands at its column offset.
        const int64_t rows = me.rows;
        std::vector<char*> block(p + 1); // every rank's packed block, one after the other in the scratch
        uint64_t bytes = 0;
        for (int q = 0; q < p; ++q) bytes += static_cast<uint64_t>(rows * slot.desc[q].cols) * esz;
        block[0] = scratch.get(bytes);
        for (int q = 0; q < p; ++q) block[q + 1] = block[q] + static_cast<uint64_t>(rows * slot.desc[q].cols) * esz;
        for (int64_t i = 0; i < rows && me.cols > 0; ++i)
            std::memcpy(block[self] + i * me.cols * esz, me.send + i * me.ld_send * esz, me.cols * esz);
        for (int q = 0; q < p; ++q)
            if (q != self && block[q + 1] > block[q]) recvs.push_back({q, block[q], static_cast<uint64_t>(block[q + 1] - block[q])});
        to_all(sends, p, self, block[self], static_cast<uint64_t>(block[self + 1] - block[self]));
        run();
        int64_t col0 = 0;
        for (int q = 0; q < p; ++q) {
            const int64_t cols = slot.desc[q].cols;
            const char* src = block[q];
            for (int64_t i = 0; i < rows && cols > 0; ++i)
                std::memcpy(me.recv + (i * me.ld_recv + col0) * esz, src + i * cols * esz, cols * esz);
            col0 += cols;
        }
        break;
    }
    case Coll::AllReduce: {
        const uint64_t bytes = me.count * esz;
        if (bytes && use_one_shot(bytes, p)) {
            // One-shot: every rank's whole buffer to every peer, summed here in rank order (the same bits as two-step).
            // Nothing is written into recv before the exchange succeeded (in place: the input is kept on failure).
            char* all = scratch.get(p * bytes); // rank q's buffer at all + q * bytes
            for (int q = 0; q < p; ++q) {
                if (q == self) continue;
                sends.push_back({q, send, bytes});
                recvs.push_back({q, all + q * bytes, bytes});
            }
            run();
            std::vector<const char*> src(p);
            for (int q = 0; q < p; ++q) src[q] = q == self ? me.send : all + q * bytes;
            reduce_sum(me.dtype, src, {me.recv}, me.count, tree_sum(me)); // blockwise: every source read before recv is written
            break;
        }
        const int64_t total = static_cast<int64_t>(me.count);
        auto begin = [&](int q) { return static_cast<uint64_t>(shard_offset(total, p, q)); };
        auto size = [&](int q) { return static_cast<uint64_t>(shard_count(total, p, q)); };
        const uint64_t n = size(self), b = begin(self);
        // In place (send == recv), the result is built in the scratch and copied into recv only once nothing can
        // fail any more, so that a failed all-reduce keeps its input (the cost: one copy of the result).
        const bool in_place = in_place_all_reduce(me);
        const Algo algo = collective_algo(Coll::AllReduce);
        const size_t asz = acc_size(me.dtype);
        if (algo == Algo::RecursiveDoubling && me.count && p > 1 && (p & (p - 1)) == 0) {
            // log2 p exchanges of the whole buffer (accumulators) with rank ^ 2^s; both partners add lower + higher.
            char* mine = scratch.get(2 * me.count * asz);
            char* theirs = mine + me.count * asz;
            acc_load(me.dtype, mine, me.send, me.count);
            for (int bit = 1; bit < p; bit <<= 1) {
                const int partner = self ^ bit;
                sends.push_back({partner, mine, me.count * asz});
                recvs.push_back({partner, theirs, me.count * asz});
                run();
                if (self < partner) acc_sum2(me.dtype, mine, mine, theirs, me.count);
                else acc_sum2(me.dtype, mine, theirs, mine, me.count);
            }
            acc_store(me.dtype, me.recv, mine, me.count); // nothing written into recv before
            break;
        }
        if (algo == Algo::Ring && me.count && !tree_sum(me)) {
            const uint64_t max_chunk = size(0); // shard 0 is the largest
            char* acc = scratch.get(2 * max_chunk * asz + (in_place ? me.count * esz : 0));
            char* out = in_place ? acc + 2 * max_chunk * asz : me.recv;
            ring_reduce_scatter(me.send, begin, size, out + b * esz, acc, max_chunk);
            ring_all_gather(out, begin, size);
            if (in_place) std::memcpy(me.recv, out, me.count * esz);
            break;
        }
        // Reduce-scatter: chunk q of this rank's send goes to rank q; chunk `self` of every rank comes here.
        char* part = scratch.get((p * n + (in_place ? me.count : 0)) * esz); // rank q's chunk at part + q * n
        char* out = in_place ? part + p * n * esz : me.recv; // where the result is gathered
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            if (size(q)) sends.push_back({q, send + begin(q) * esz, size(q) * esz});
            if (n) recvs.push_back({q, part + q * n * esz, n * esz});
        }
        run();
        if (n) {
            std::vector<const char*> src(p);
            for (int q = 0; q < p; ++q) src[q] = q == self ? me.send + b * esz : part + q * n * esz;
            reduce_sum(me.dtype, src, {out + b * esz}, n, tree_sum(me)); // rank order 0..p-1 (or the tree's)
        }
        // All-gather of the reduced chunks.
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            if (n) sends.push_back({q, out + b * esz, n * esz});
            if (size(q)) recvs.push_back({q, out + begin(q) * esz, size(q) * esz});
        }
        run();
        if (in_place && me.count) std::memcpy(me.recv, out, me.count * esz);
        break;
    }
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: {
        if (collective_algo(me.op) == Algo::Ring && !tree_sum(me)) {
            uint64_t max_chunk = 0;
            for (int q = 0; q < p; ++q) max_chunk = std::max<uint64_t>(max_chunk, slot.desc[q].count);
            if (!max_chunk) break;
            char* acc = scratch.get(2 * max_chunk * acc_size(me.dtype));
            ring_reduce_scatter(me.send, [&](int q) { return scatter_displacement(slot, q); },
                                [&](int q) { return slot.desc[q].count; }, me.recv, acc, max_chunk);
            break;
        }
        char* part = scratch.get(p * me.count * esz); // rank q's block at part + q * count
        for (int q = 0; q < p; ++q) {
            if (q == self) continue;
            const uint64_t cq = slot.desc[q].count;
            if (cq) sends.push_back({q, send + scatter_displacement(slot, q) * esz, cq * esz});
            if (me.count) recvs.push_back({q, part + q * me.count * esz, me.count * esz});
        }
        run();
        if (me.count) {
            const uint64_t displ = scatter_displacement(slot, self);
            std::vector<const char*> src(p);
            for (int q = 0; q < p; ++q) src[q] = q == self ? me.send + displ * esz : part + q * me.count * esz;
            reduce_sum(me.dtype, src, {me.recv}, me.count, tree_sum(me));
        }
        break;
    }
    case Coll::Broadcast:
        if (!me.count) break;
        if (self == me.root) to_all(sends, p, self, send, me.count * esz);
        else recvs.push_back({me.root, me.recv, me.count * esz});
        run();
        break;
    case Coll::Split: // a host collective: never reaches a mover (split.cpp)
    case Coll::Barrier: break; // the descriptor exchange was the barrier
    }
}


class TransportMover final : public Mover {
public:
    explicit TransportMover(Transport& t) : t_(t) {}
    bool carries_tags() const override { return true; }
    void move(Communicator& c, int, uint64_t seq, const Slot& slot, Clock::time_point deadline) override {
        // "sw_all_reduce #7", the prefix of the transport's messages, built in place (no allocation once it has grown)
        what_.assign(coll_name(slot.desc[t_.rank()].op));
        what_ += " #";
        what_ += std::to_string(seq);
        move_remote(c, scratch_, t_, seq, slot, deadline, what_);
    }
    // Point-to-point (p2p_transport.cpp): the data of one transfer call in one exchange under the transfers' tag.
    void p2p_move(Communicator& c, int, const std::vector<Piece>& sends, const std::vector<Piece>& recvs,
                  Clock::time_point deadline, const std::string& what) override {
        t_.exchange(kP2PTag, sends, recvs, deadline, c.abort_flag, what);
    }
    void forget_buffers() override {
        if (scratch_.data) (void)scratch_.data.release();
        scratch_.bytes = 0;
    }

private:
    Transport& t_;
    Scratch scratch_;
    std::string what_;
};

} // namespace

std::unique_ptr<Mover> sw::make_transport_mover(Transport& transport) { return std::make_unique<TransportMover>(transport); }
