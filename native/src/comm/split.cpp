// Splitting a communicator (sw_comm_split_local, sw_comm_split, sw_comm_get_parent_rank; shardwise.h states the
// contract) and the family fate of split communicators.
//
// Splitting
//  - in-process (sw_comm_split_local): a host call that groups the ranks by color, orders each group by (key, parent
//    rank) and makes one new in-process communicator per group on the members' devices, of the parent's kind (CPU or
//    CUDA copies), with the parent's timeout. Nothing is exchanged: every rank is in this process.
//  - multi-process (sw_comm_split): a host collective of the parent (Coll::Split), run on the calling thread through
//    the parent's transport agreement, so it takes its place in the parent's sequence: it waits for the rank's earlier
//    collectives, its descriptor (color in `root`, key in `rows`) is exchanged and checked like any collective's (a
//    rank calling another collective instead gives SW_ERR_MISMATCH, a rank that never calls a timeout naming it),
//    and then, instead of a Mover, Desc::host makes the sub-group's transport with Transport::split: TCP a new mesh
//    among the group's members (listening addresses exchanged over the parent's connections), MPI MPI_Comm_split in
//    the plugin; an NCCL communicator splits its host transport so, then makes the group's NCCL communicator
//    (comm_nccl.cpp: ncclCommSplit, or ncclCommInitRank with a unique id sent over the new transport). The child
//    agrees and moves data over that transport like any multi-process communicator. The split counts as one of the
//    parent's collectives (sw_comm_get_collective_count).
//  - in-process NCCL: new NCCL communicators for each group, made in one group (comm_nccl.cpp, nccl_split_local).
//  Every sub-communicator remembers its ranks' ranks in its parent (parent_ranks): sw_comm_get_parent_rank, and the
//  timeouts' "rank(s) 1 (parent rank 3)".
//
// Family fate
//  A communicator and every communicator split from it (recursively) share one Family. Communicator::abort_locked —
//  the one place every failure and every abort goes through — calls family_failed for a member that is not being
//  destroyed; the first such call records the failure and wakes the family's watcher thread, which aborts every other
//  live member (SW_ERR_ABORTED, the first failure's reason) and, for multi-process members, sends the abort notice
//  over each member's transport (Transport::notify_abort), so the members in other processes that share a transport
//  with this one learn it at once. The watcher takes the members' locks only without the family's lock (lock order:
//  a communicator's mu, then the family's), so a failure found under a communicator's lock never deadlocks.
//  Across processes a notice only reaches the members that share a transport with the sender, and a transport's
//  notices are read while a collective runs on it; so the watcher of a family with multi-process members also polls,
//  every 100 ms, each member's transport that has no collective running (Transport::poll_idle: a peer's closed
//  connection without a destroy notice — the process died — or an abort notice). The root communicator links every
//  process of the job, so a process that dies or fails is noticed by every other process within about 0.1-0.5 s even
//  when they are all blocked in a sub-communicator that does not include it; their waits then see the local abort
//  (the in-process rendezvous is woken through the communicator's condition variable, a transport exchange polls the
//  abort flag every 50 ms) and fail with the first failure's reason.
//  Destroying a member (sw_comm_destroy) is no failure: it marks the member destroyed before aborting it (so the
//  family is not told), and its peers get a notice with status SW_OK ("closed"), which poll_idle does not count as a
//  failure — unless the member or its family has already failed: then the notice carries the failure (a process
//  that ends right after a failure, before its watcher sent the notices, still tells its peers). Consequence: a
//  process that exits without destroying its communicators while the others still use the family counts as lost.
#include "comm/comm_nccl.h"
#include "comm/communicator.h"

#include "cpu/stream.h"

#include <algorithm>
#include <map>
#include <thread>

using namespace sw;

// ---- the family

namespace {

struct FamilyState {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::weak_ptr<Communicator>> members;
    bool watch_remote = false; // a member is multi-process: poll the idle transports
    bool failed = false;       // the first failure was recorded
    bool spread = false;       // ... and not yet spread to the other members
    const Communicator* origin = nullptr;
    std::string reason;
    bool stop = false; // the last member went
};

std::vector<std::shared_ptr<Communicator>> live_members(FamilyState& f) { // f.mu held
    std::vector<std::shared_ptr<Communicator>> out;
    for (auto& w : f.members)
        if (auto m = w.lock()) out.push_back(std::move(m));
    f.members.erase(std::remove_if(f.members.begin(), f.members.end(), [](const auto& w) { return w.expired(); }),
                    f.members.end());
    return out;
}

// Aborts every member but the origin with the family's reason and tells the peers of every multi-process member.
void spread_failure(const std::vector<std::shared_ptr<Communicator>>& ms, const Communicator* origin, const std::string& why) {
    for (const auto& m : ms) {
        sw_status status = SW_ERR_ABORTED;
        std::string reason;
        {
            std::lock_guard<std::mutex> lock(m->mu);
            if (m->destroyed) continue;
            if (m.get() != origin) m->abort_locked(SW_ERR_ABORTED, why);
            status = m->abort_status;
            reason = m->reason;
        }
        if (m->is_remote()) m->agreement->notify_abort(status, reason); // idempotent per transport
    }
}

// Between collectives: the first lost or failed peer of a multi-process member aborts that member (and so the family).
void poll_members(const std::vector<std::shared_ptr<Communicator>>& ms) {
    for (const auto& m : ms) {
        if (!m->is_remote() || m->abort_flag.load()) continue;
        Transport* t = m->agreement->transport();
        if (!t) continue;
        sw_status status = SW_ERR_ABORTED;
        std::string why;
        const int q = t->poll_idle(&status, &why);
        if (q < 0) continue;
        std::lock_guard<std::mutex> lock(m->mu);
        if (m->destroyed) continue;
        m->abort_locked(status, str("rank ", m->rank_names({q}), " of a ", m->backend_name, " communicator of world size ",
                                    m->world, " (this process is its rank ", m->self, ") ", why));
        return; // the family failed: the watcher spreads this reason to every other member
    }
}

void watch(std::shared_ptr<FamilyState> f) {
    std::unique_lock<std::mutex> lock(f->mu);
    while (!f->stop) {
        if (f->spread) {
            f->spread = false;
            auto ms = live_members(*f);
            const Communicator* origin = f->origin;
            const std::string why = f->reason;
            lock.unlock();
            spread_failure(ms, origin, why);
            ms.clear(); // may end a communicator, and with the last one the Family (which takes f->mu): not held here
            lock.lock();
            continue;
        }
        if (f->watch_remote && !f->failed) {
            auto ms = live_members(*f);
            lock.unlock();
            poll_members(ms);
            ms.clear();
            lock.lock();
            if (f->stop || f->spread) continue;
            f->cv.wait_for(lock, std::chrono::milliseconds(100));
        } else {
            f->cv.wait(lock);
        }
    }
}

} // namespace

struct sw::Family {
    std::shared_ptr<FamilyState> state = std::make_shared<FamilyState>();
    Family() { std::thread(watch, state).detach(); } // the thread keeps the state; it ends once `stop` is set
    ~Family() {
        std::lock_guard<std::mutex> lock(state->mu);
        state->stop = true;
        state->cv.notify_all();
    }
};

void sw::family_failed(Communicator& c) noexcept {
    FamilyState& f = *c.family->state;
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.failed) return;
    f.failed = true;
    f.spread = true;
    f.origin = &c;
    f.reason = c.reason;
    f.cv.notify_all();
}

bool sw::family_failure(Communicator& c, std::string* reason) {
    FamilyState& f = *c.family->state;
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.failed) *reason = f.reason;
    return f.failed;
}

namespace {

// c joins `family` (c's mu not held). A family that already failed aborts c at once.
void join(const std::shared_ptr<Family>& family, const std::shared_ptr<Communicator>& c) {
    bool failed = false;
    std::string why;
    {
        FamilyState& f = *family->state;
        std::lock_guard<std::mutex> lock(f.mu);
        f.members.push_back(c);
        f.watch_remote = f.watch_remote || c->is_remote();
        failed = f.failed;
        why = f.reason;
        f.cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(c->mu);
    c->family = family;
    if (failed) c->abort_locked(SW_ERR_ABORTED, why);
}

// The parent's family (made at its first split). Fails when the parent is aborted.
std::shared_ptr<Family> family_of(const std::shared_ptr<Communicator>& parent, const char* fn) {
    std::lock_guard<std::mutex> lock(parent->mu);
    if (parent->aborted)
        fail(SW_ERR_ABORTED, fn, ": the communicator was aborted: ", parent->reason, "; create a new communicator");
    if (!parent->family) {
        auto fam = std::make_shared<Family>();
        FamilyState& f = *fam->state;
        std::lock_guard<std::mutex> flock(f.mu); // (a communicator's mu, then its family's)
        f.members.push_back(parent);
        f.watch_remote = parent->is_remote();
        f.cv.notify_all();
        parent->family = std::move(fam);
    }
    return parent->family;
}

sw_comm_s* checked_comm(sw_comm h) { return checked(h, HandleKind::Comm, "comm"); }

void check_color(int32_t color, const char* name) {
    if (color < SW_SPLIT_NO_COLOR)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", color, "; expected a color >= 0, or SW_SPLIT_NO_COLOR (-1) to opt out");
}

// The members of `color`'s group: the ranks with that color ordered by (key, rank).
std::vector<int32_t> group_of(const std::vector<int32_t>& colors, const std::vector<int32_t>& keys, int32_t color) {
    std::vector<int32_t> g;
    for (int32_t r = 0; r < static_cast<int32_t>(colors.size()); ++r)
        if (colors[r] == color) g.push_back(r);
    std::stable_sort(g.begin(), g.end(), [&](int32_t a, int32_t b) { return keys[a] < keys[b]; });
    return g;
}

} // namespace

std::string Communicator::rank_names(const std::vector<int>& ranks) const {
    std::string s = rank_list(ranks);
    if (parent_ranks.empty() || ranks.empty()) return s;
    std::vector<int> up;
    for (int r : ranks) up.push_back(r >= 0 && r < static_cast<int>(parent_ranks.size()) ? parent_ranks[r] : -1);
    return str(s, " (parent rank", ranks.size() > 1 ? "s " : " ", rank_list(up), ")");
}

extern "C" {

SW_API sw_status sw_comm_split_local(sw_comm comm, const int32_t* colors, const int32_t* keys, sw_comm* out) {
    return guard(__func__, [&] {
        auto parent = checked_comm(comm)->state;
        require(colors, "colors");
        require(out, "out");
        if (parent->is_remote())
            fail(SW_ERR_INVALID_ARGUMENT, "comm is a multi-process (", parent->backend_name, ") communicator (this process is its rank ",
                 parent->self, "); split it with sw_comm_split, called by every process with its own rank");
        const int32_t p = parent->world;
        for (int32_t r = 0; r < p; ++r) out[r] = nullptr;
        std::vector<int32_t> c(colors, colors + p), k(p, 0);
        for (int32_t r = 0; r < p; ++r) {
            const std::string name = str("colors[", r, "]");
            check_color(c[r], name.c_str());
            if (keys) k[r] = keys[r];
        }
        auto fam = family_of(parent, "sw_comm_split_local");
        std::map<int32_t, std::vector<int32_t>> groups; // color -> members (parent ranks, in the new order)
        for (int32_t r = 0; r < p; ++r)
            if (c[r] != SW_SPLIT_NO_COLOR && !groups.count(c[r])) groups[c[r]] = group_of(c, k, c[r]);
        // Every child first (any failure leaves nothing behind), then the handles.
        std::vector<std::shared_ptr<Communicator>> children;
        for (const auto& [color, members] : groups) {
            std::vector<std::shared_ptr<DeviceImpl>> devs;
            for (int32_t r : members) devs.push_back(parent->devices[r]);
            auto child = std::string(parent->backend_name) == "nccl"
                             ? nccl_split_local(std::move(devs), parent->timeout_ms) // new NCCL communicators, one group
                             : make_local_comm(std::move(devs), parent->timeout_ms, nullptr, parent->backend_name);
            child->parent_ranks = members;
            children.push_back(std::move(child));
        }
        std::vector<sw_comm> handles;
        for (auto& child : children) {
            join(fam, child);
            handles.push_back(register_comm(child));
        }
        size_t g = 0;
        for (const auto& [color, members] : groups) {
            for (int32_t r : members) out[r] = handles[g];
            ++g;
        }
    });
}

SW_API sw_status sw_comm_split(sw_comm comm, int32_t rank, int32_t color, int32_t key, sw_comm* out) {
    return guard(__func__, [&] {
        require(out, "out");
        *out = nullptr;
        auto parent = checked_comm(comm)->state;
        if (!parent->is_remote())
            fail(SW_ERR_INVALID_ARGUMENT, "comm is an in-process (", parent->backend_name, ") communicator (every rank in this "
                 "process); split it with sw_comm_split_local, which takes every rank's color and key at once");
        if (rank != parent->self)
            fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " but this process is rank ", parent->self, " of the ",
                 parent->backend_name, " communicator; pass its own rank");
        check_color(color, "color");
        Transport* t = parent->agreement->transport();
        if (!t || !t->can_split())
            fail(SW_ERR_UNSUPPORTED, "comm is a ", parent->backend_name, " communicator whose ranks talk through ",
                 t ? t->name() : "nothing", ", which cannot be split (an NCCL communicator made from a unique id has no "
                 "other channel; make it with sw_comm_create_nccl or sw_comm_create_nccl_mpi to split it)");
        const bool nccl = std::string(parent->backend_name) == "nccl";
        auto fam = family_of(parent, "sw_comm_split");
        uint64_t seq = 0;
        {
            std::lock_guard<std::mutex> lock(parent->mu);
            if (parent->aborted)
                fail(SW_ERR_ABORTED, "the communicator was aborted: ", parent->reason, "; create a new communicator");
            seq = parent->next_seq[rank]++;
        }
        struct Made {
            std::vector<int32_t> members; // parent ranks, in the new order
            std::unique_ptr<Transport> transport;
            std::shared_ptr<NcclRank> nccl; // NCCL: the group's NCCL communicator
        };
        auto made = std::make_shared<Made>();
        Communicator* pc = parent.get();
        Desc d;
        d.op = Coll::Split;
        d.dtype = SW_DTYPE_U8;
        d.root = color;
        d.rows = key;
        d.host = [made, pc, seq, color, nccl](Transport& tr, const Slot& slot, Clock::time_point deadline) {
            const int p = tr.world();
            std::vector<int32_t> colors(p), keys(p);
            for (int q = 0; q < p; ++q) {
                colors[q] = slot.desc[q].root;
                keys[q] = static_cast<int32_t>(slot.desc[q].rows);
            }
            if (color != SW_SPLIT_NO_COLOR) made->members = group_of(colors, keys, color);
            const std::string what = str("sw_comm_split #", seq);
            made->transport = tr.split(seq, colors, made->members, deadline, pc->abort_flag, what);
            if (nccl) { // every rank of the parent: ncclCommSplit is collective over all of them
                const auto at = std::find(made->members.begin(), made->members.end(), pc->self) - made->members.begin();
                made->nccl = nccl_split_rank(*pc, made->transport.get(), color, static_cast<int32_t>(at), deadline, what);
            }
        };
        cpu::Stream stream; // the agreement asks it for earlier errors: it has none
        parent->agreement->run(*parent, rank, seq, d, &stream);
        if (color == SW_SPLIT_NO_COLOR) return;
        if (!made->transport) fail(SW_ERR_INTERNAL, "sw_comm_split: the transport made no sub-communicator");
        made->transport->set_parent_ranks(made->members);
        auto child = nccl ? nccl_split_comm(parent->devices[0], std::move(made->transport), parent->timeout_ms, made->nccl)
                          : make_remote_comm(parent->devices[0], std::move(made->transport), parent->timeout_ms, nullptr,
                                             parent->backend_name);
        child->parent_ranks = made->members;
        join(fam, child);
        *out = register_comm(child);
    });
}

SW_API sw_status sw_comm_get_parent_rank(sw_comm comm, int32_t rank, int32_t* parent_rank) {
    return guard(__func__, [&] {
        require(parent_rank, "parent_rank");
        const Communicator& c = *checked_comm(comm)->state;
        if (rank < 0 || rank >= c.world)
            fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " is out of range; expected 0 <= rank < ", c.world);
        if (c.self >= 0 && rank != c.self)
            fail(SW_ERR_INVALID_ARGUMENT, "rank = ", rank, " but this process is rank ", c.self, " of the ", c.backend_name,
                 " communicator; pass its own rank");
        *parent_rank = c.parent_ranks.empty() ? rank : c.parent_ranks[rank];
    });
}

} // extern "C"

std::unique_ptr<Transport> Transport::split(uint64_t, const std::vector<int32_t>&, const std::vector<int32_t>&,
                                            Clock::time_point, const std::atomic<bool>&, const std::string& what) {
    fail(SW_ERR_UNSUPPORTED, what, ": splitting a ", name(), " communicator is not implemented");
}
