// The collective algorithms and helpers shared by every communicator kind (see collectives.h).
#include "comm/collectives.h"

#include "core/enum_arg.h"
#include "core/index_math.h"
#include "core/tree_reduction.h"

#include <algorithm>
#include <atomic>
#include <cstring>

using namespace sw;

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

void sw::check_tag(const CallTag* mine, const CallTag& theirs, int self, int q, uint64_t seq) {
    if (!mine || mine->op < 0 || theirs.op < 0 || theirs == *mine) return;
    auto call = [](const CallTag& t) {
        if (t.op > static_cast<int32_t>(Coll::Split) || t.dtype < SW_DTYPE_F32 || t.dtype > SW_DTYPE_U8)
            return std::string("an unknown call (another program or version?)");
        Desc d;
        d.op = static_cast<Coll>(t.op);
        d.dtype = static_cast<sw_dtype>(t.dtype);
        d.count = t.count;
        d.root = t.root;
        return describe(d);
    };
    fail(SW_ERR_MISMATCH, "collective #", seq, ": ranks disagree: rank ", std::min(self, q), " called ",
         call(self < q ? *mine : theirs), " but rank ", std::max(self, q), " called ", call(self < q ? theirs : *mine));
}

std::string sw::check_agreement(const Slot& slot, int world) {
    const Desc& d0 = slot.desc[0];
    for (int r = 1; r < world; ++r) {
        const Desc& d = slot.desc[r];
        bool same = d.op == d0.op && d.dtype == d0.dtype;
        if (same) {
            switch (d0.op) {
            case Coll::AllGather: same = d.count == d0.count; break;
            case Coll::AllReduce:
            case Coll::ReduceScatter: same = d.count == d0.count && d.root == d0.root; break;
            case Coll::ReduceScatterV: same = d.root == d0.root; break;
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
template <class T> struct Acc { using type = T; };
template <> struct Acc<uint16_t> { using type = float; };
// i32 sums wrap around (two's complement, as NCCL and the CUDA plugin do) instead of overflowing: the sum runs in
// uint32_t, whose overflow is defined, and converts back (modular since C++20, implementation-defined and modular on
// every compiler before).
template <> struct Acc<int32_t> { using type = uint32_t; };

// acc[0..len) = the sum of sources [a, b) at element i0.. in the tree's order (core/tree_reduction.h); tmp holds
// (depth - 1) blocks of B accumulators for the right-hand subtrees.
template <class T, class A, class Load>
void tree_block(const std::vector<const char*>& src, size_t a, size_t b, uint64_t i0, uint64_t len, Load load, A* acc,
                A* tmp, uint64_t B) {
    if (b - a == 1) {
        const T* s = reinterpret_cast<const T*>(src[a]) + i0;
        for (uint64_t i = 0; i < len; ++i) acc[i] = load(s[i]);
        return;
    }
    const size_t m = static_cast<size_t>(tree::split(static_cast<int64_t>(a), static_cast<int64_t>(b)));
    tree_block<T>(src, a, m, i0, len, load, acc, tmp, B);
    tree_block<T>(src, m, b, i0, len, load, tmp, tmp + B, B);
    for (uint64_t i = 0; i < len; ++i) acc[i] = acc[i] + tmp[i];
}

template <class T, class Load, class Store>
void reduce_block(const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t n,
                  Load load, Store store, bool tree) {
    using A = typename Acc<T>::type;
    constexpr uint64_t B = 1024;
    A acc[B];
    std::vector<A> tmp(tree ? B * static_cast<size_t>(tree::depth(static_cast<int64_t>(src.size()))) : 0);
    for (uint64_t i0 = 0; i0 < n; i0 += B) {
        const uint64_t len = std::min<uint64_t>(B, n - i0);
        if (tree) {
            tree_block<T>(src, 0, src.size(), i0, len, load, acc, tmp.data(), B);
        } else {
            const T* s0 = reinterpret_cast<const T*>(src[0]) + i0;
            for (uint64_t i = 0; i < len; ++i) acc[i] = load(s0[i]);
            for (size_t q = 1; q < src.size(); ++q) { // rank order 0..p-1: every rank gets the same bits
                const T* sq = reinterpret_cast<const T*>(src[q]) + i0;
                for (uint64_t i = 0; i < len; ++i) acc[i] += load(sq[i]);
            }
        }
        for (char* d : dst) {
            T* out = reinterpret_cast<T*>(d) + i0;
            for (uint64_t i = 0; i < len; ++i) out[i] = store(acc[i]);
        }
    }
}

} // namespace

void sw::reduce_sum(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst,
                uint64_t n, bool tree) {
    auto id = [](auto v) { return v; };
    switch (t) {
    case SW_DTYPE_F32: reduce_block<float>(src, dst, n, id, id, tree); break;
    case SW_DTYPE_F64: reduce_block<double>(src, dst, n, id, id, tree); break;
    case SW_DTYPE_I32:
        reduce_block<int32_t>(src, dst, n, [](int32_t v) { return static_cast<uint32_t>(v); },
                              [](uint32_t v) { return static_cast<int32_t>(v); }, tree);
        break;
    case SW_DTYPE_F16: reduce_block<uint16_t>(src, dst, n, half_to_float, float_to_half, tree); break;
    case SW_DTYPE_BF16: reduce_block<uint16_t>(src, dst, n, bf16_to_float, float_to_bf16, tree); break;
    default: fail(SW_ERR_UNSUPPORTED, "sum of dtype ", sw::dtype_name(t), " is not supported");
    }
}

namespace {
// The accumulation passes of the ring and recursive-doubling algorithms over the accumulation type A of T.
template <class T, class Load, class Store> struct AccOps {
    using A = typename Acc<T>::type;
    Load load;
    Store store;
    void to_acc(char* acc, const char* elems, uint64_t n) const {
        auto* a = reinterpret_cast<A*>(acc);
        auto* e = reinterpret_cast<const T*>(elems);
        for (uint64_t i = 0; i < n; ++i) a[i] = load(e[i]);
    }
    void add(char* out, const char* acc, const char* elems, uint64_t n) const { // out = acc + elems (acc first)
        auto* o = reinterpret_cast<A*>(out);
        auto* a = reinterpret_cast<const A*>(acc);
        auto* e = reinterpret_cast<const T*>(elems);
        for (uint64_t i = 0; i < n; ++i) o[i] = a[i] + load(e[i]);
    }
    void add_store(char* out, const char* acc, const char* elems, uint64_t n) const { // out (elements) = acc + elems
        auto* o = reinterpret_cast<T*>(out);
        auto* a = reinterpret_cast<const A*>(acc);
        auto* e = reinterpret_cast<const T*>(elems);
        for (uint64_t i = 0; i < n; ++i) o[i] = store(a[i] + load(e[i]));
    }
    void sum2(char* out, const char* lo, const char* hi, uint64_t n) const { // out = lo + hi (accumulators)
        auto* o = reinterpret_cast<A*>(out);
        auto* l = reinterpret_cast<const A*>(lo);
        auto* h = reinterpret_cast<const A*>(hi);
        for (uint64_t i = 0; i < n; ++i) o[i] = l[i] + h[i];
    }
    void from_acc(char* elems, const char* acc, uint64_t n) const {
        auto* e = reinterpret_cast<T*>(elems);
        auto* a = reinterpret_cast<const A*>(acc);
        for (uint64_t i = 0; i < n; ++i) e[i] = store(a[i]);
    }
};
template <class T, class Load, class Store> AccOps<T, Load, Store> acc_ops(Load l, Store s) { return {l, s}; }

template <class F> void with_acc_ops(sw_dtype t, F&& f) {
    auto id = [](auto v) { return v; };
    switch (t) {
    case SW_DTYPE_F32: f(acc_ops<float>(id, id)); break;
    case SW_DTYPE_F64: f(acc_ops<double>(id, id)); break;
    case SW_DTYPE_I32:
        f(acc_ops<int32_t>([](int32_t v) { return static_cast<uint32_t>(v); }, [](uint32_t v) { return static_cast<int32_t>(v); }));
        break;
    case SW_DTYPE_F16: f(acc_ops<uint16_t>(half_to_float, float_to_half)); break;
    case SW_DTYPE_BF16: f(acc_ops<uint16_t>(bf16_to_float, float_to_bf16)); break;
    default: fail(SW_ERR_UNSUPPORTED, "sum of dtype ", sw::dtype_name(t), " is not supported");
    }
}
} // namespace

size_t sw::acc_size(sw_dtype t) { return t == SW_DTYPE_F64 ? 8 : 4; }
void sw::acc_load(sw_dtype t, char* acc, const char* elems, uint64_t n) {
    with_acc_ops(t, [&](const auto& o) { o.to_acc(acc, elems, n); });
}
void sw::acc_add(sw_dtype t, char* out, const char* acc, const char* elems, uint64_t n) {
    with_acc_ops(t, [&](const auto& o) { o.add(out, acc, elems, n); });
}
void sw::acc_add_store(sw_dtype t, char* out, const char* acc, const char* elems, uint64_t n) {
    with_acc_ops(t, [&](const auto& o) { o.add_store(out, acc, elems, n); });
}
void sw::acc_sum2(sw_dtype t, char* out, const char* lo, const char* hi, uint64_t n) {
    with_acc_ops(t, [&](const auto& o) { o.sum2(out, lo, hi, n); });
}
void sw::acc_store(sw_dtype t, char* elems, const char* acc, uint64_t n) {
    with_acc_ops(t, [&](const auto& o) { o.from_acc(elems, acc, n); });
}

Algo sw::collective_algo(Coll op) {
    auto parse = [](const char* name, std::initializer_list<std::pair<const char*, Algo>> names) {
        const char* v = std::getenv(name);
        if (!v || !*v || std::strcmp(v, "auto") == 0) return Algo::Auto;
        std::string expected;
        for (const auto& [text, algo] : names) {
            if (std::strcmp(v, text) == 0) return algo;
            expected += expected.empty() ? text : str(", ", text);
        }
        fail(SW_ERR_INVALID_ARGUMENT, name, "='", v, "': expected auto, ", expected);
    };
    switch (op) {
    case Coll::AllReduce: {
        static const Algo a = parse("SHARDWISE_ALLREDUCE", {{"oneshot", Algo::OneShot}, {"twostep", Algo::Direct},
                                                              {"ring", Algo::Ring}, {"rd", Algo::RecursiveDoubling}});
        return a;
    }
    case Coll::AllGather:
    case Coll::AllGatherV: {
        static const Algo a = parse("SHARDWISE_ALLGATHER", {{"direct", Algo::Direct}, {"ring", Algo::Ring}});
        return a;
    }
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: {
        static const Algo a = parse("SHARDWISE_REDUCE_SCATTER", {{"direct", Algo::Direct}, {"ring", Algo::Ring}});
        return a;
    }
    default: return Algo::Direct;
    }
}

uint64_t sw::scatter_displacement(const Slot& slot, int rank) {
    const Desc& me = slot.desc[rank];
    if (me.op == Coll::ReduceScatter) return static_cast<uint64_t>(rank) * me.count;
    uint64_t displ = 0;
    for (int q = 0; q < rank; ++q) displ += slot.desc[q].count;
    return displ;
}


void sw::move_data(const Slot& slot, int world, int rank, Copier& mv) {
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
        mv.reduce(me.dtype, src, dst, n, tree_sum(me));
        break;
    }
    case Coll::ReduceScatter:
    case Coll::ReduceScatterV: {
        if (!me.count) break;
        const uint64_t displ = scatter_displacement(slot, rank);
        std::vector<const char*> src(world);
        for (int q = 0; q < world; ++q) src[q] = slot.desc[q].send + displ * esz;
        mv.reduce(me.dtype, src, {me.recv}, me.count, tree_sum(me));
        break;
    }
    case Coll::Broadcast:
        if (rank != me.root && me.count) mv.copy(me.recv, slot.desc[me.root].send, me.count * esz);
        break;
    case Coll::Barrier:
    case Coll::Split: break;
    }
    mv.finish();
}

std::vector<std::shared_ptr<DeviceImpl>> sw::local_devices(int32_t world_size, const sw_device* devices, int64_t timeout_ms) {
    if (world_size < 1 || world_size > 4096)
        fail(SW_ERR_INVALID_ARGUMENT, "world_size = ", world_size, "; expected 1..4096");
    require(devices, "devices");
    if (timeout_ms < 0) fail(SW_ERR_INVALID_ARGUMENT, "timeout_ms = ", timeout_ms, "; expected >= 0 (0 = default)");
    std::vector<std::shared_ptr<DeviceImpl>> out;
    for (int r = 0; r < world_size; ++r) {
        const std::string name = str("devices[", r, "]");
        out.push_back(checked(devices[r], name.c_str())->impl);
        if (out[r]->backend != out[0]->backend)
            fail(SW_ERR_INVALID_ARGUMENT, "devices[", r, "] is '", out[r]->name, "' but devices[0] is '", out[0]->name,
                 "'; an in-process communicator needs ranks of one backend");
    }
    return out;
}
