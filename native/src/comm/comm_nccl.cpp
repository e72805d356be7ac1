// NCCL communicators' creation (see comm_nccl.h).
//
// Communicators are made non-blocking when NCCL has ncclCommInitRankConfig (2.14+): ncclConfig_t with blocking = 0, so
// creation returns at once (ncclInProgress) and is polled through ncclCommGetAsyncError against the communicator's
// timeout; a rank that never comes makes the others fail with SW_ERR_TIMEOUT (their communicators aborted) instead of
// hanging in ncclCommInitRank. Without it (NCCL < 2.14) creation uses the blocking ncclCommInitRank: no deadline.
// How a non-blocking communicator's later calls are settled: mover_nccl.cpp.
#include "comm/comm_nccl.h"

#include "comm/mover_nccl.h"
#include "core/cuda_loader.h" // cuda_check

#include <cstring>

using namespace sw;

namespace {

// Polls ncclCommGetAsyncError of every communicator in `comms` (null ones are skipped) while one says ncclInProgress,
// until each says ncclSuccess, one fails, or the deadline passes. Returns every communicator's last state.
std::vector<int> wait_created(const NcclApi& n, const std::vector<void*>& comms, Clock::time_point deadline) {
    std::vector<int> state(comms.size(), kNcclInProgress);
    Backoff backoff;
    for (;;) {
        bool pending = false;
        for (size_t i = 0; i < comms.size(); ++i) {
            if (!comms[i]) state[i] = kNcclSuccess;
            if (state[i] != kNcclInProgress) continue;
            state[i] = async_state(n, comms[i]);
            if (state[i] == kNcclInProgress) pending = true;
            else if (state[i] != kNcclSuccess) return state;
        }
        if (!pending || Clock::now() >= deadline) return state;
        backoff.pause();
    }
}

// This process's rank's NCCL communicator on its device. With ncclCommInitRankConfig (NCCL 2.14+) it is made
// non-blocking and polled against the timeout: a rank that never calls in fails the others with SW_ERR_TIMEOUT (the
// communicator aborted; NCCL cannot say which rank is missing). Without it, ncclCommInitRank blocks until every rank
// has called it: no deadline. `how` names the bootstrap for the messages.
void* init_rank(const NcclApi& n, sw_device_s* d, const NcclUniqueId& id, int32_t rank, int32_t world, int64_t timeout_ms,
                const char* how) {
    make_current(*d->impl);
    // NCCL's init thread may write through this pointer (2.14 to 2.19.1 keep it in the init job, job->newcomm): it
    // lives until init is over or aborted.
    void* nc = nullptr;
    if (!n.CommInitRankConfig) {
        const int rc = n.CommInitRank(&nc, world, id, rank);
        if (rc != kNcclSuccess) {
            const std::string why = nccl_error(n, nc, rc);
            if (nc) n.CommAbort(nc);
            fail(SW_ERR_BACKEND, how, ": ncclCommInitRank (rank ", rank, " of ", world, ") failed: ", why);
        }
        return nc;
    }
    const int64_t t = resolve_timeout(timeout_ms);
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(t);
    NcclConfigV21400 config = nccl_nonblocking_config();
    const int rc = n.CommInitRankConfig(&nc, world, id, rank, &config);
    if (rc != kNcclSuccess && rc != kNcclInProgress) {
        const std::string why = nccl_error(n, nc, rc);
        if (nc) n.CommAbort(nc);
        fail(SW_ERR_BACKEND, how, ": ncclCommInitRankConfig (rank ", rank, " of ", world, ", non-blocking) failed: ", why);
    }
    if (!nc) fail(SW_ERR_BACKEND, how, ": ncclCommInitRankConfig (rank ", rank, " of ", world, ") returned no communicator");
    const int state = wait_created(n, {nc}, deadline)[0];
    if (state == kNcclSuccess) return nc;
    const std::string why = state == kNcclInProgress ? std::string() : nccl_error(n, nc, state);
    n.CommAbort(nc); // ends NCCL's init thread (its bootstrap sockets watch the abort flag) and frees the communicator
    if (state == kNcclInProgress)
        fail(SW_ERR_TIMEOUT, how, ": creating the NCCL communicator of rank ", rank, " of ", world, " timed out after ", t,
             " ms: NCCL's initialization (ncclCommInitRankConfig) waited for all ", world, " ranks of the unique id to "
             "join and they did not (NCCL cannot tell which rank is missing); the communicator is aborted");
    fail(SW_ERR_BACKEND, how, ": creating the NCCL communicator of rank ", rank, " of ", world,
         " failed during NCCL's initialization: ", why, "; the communicator is aborted");
}

} // namespace

void sw::check_nccl_device(sw_device_s* d, const char* name) {
    if (!d->impl->is_cuda())
        fail(SW_ERR_INVALID_ARGUMENT, name, " is '", d->impl->name, "'; NCCL communicators need CUDA devices (for CPU devices use "
             "sw_comm_create_local, sw_comm_create_tcp or sw_comm_create_mpi)");
}

// This process's rank of a multi-process NCCL communicator: agreeing over `transport`, moving data through NCCL.
static std::shared_ptr<Communicator> nccl_comm_over(std::shared_ptr<DeviceImpl> dev, std::unique_ptr<Transport> transport,
                                                   int64_t timeout_ms, const NcclApi& n, std::shared_ptr<NcclRank> h,
                                                   int32_t rank, int32_t world) {
    std::vector<std::shared_ptr<NcclRank>> comms(world);
    comms[rank] = std::move(h);
    auto mover = std::make_unique<NcclMover>(std::vector<std::shared_ptr<DeviceImpl>>(world, dev), n, std::move(comms));
    return make_remote_comm(std::move(dev), std::move(transport), timeout_ms, std::move(mover), "nccl");
}

void sw::nccl_unique_id(uint8_t* id) {
    const NcclApi& n = nccl_api();
    NcclUniqueId u{};
    const int rc = n.GetUniqueId(&u);
    if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
    std::memcpy(id, u.internal, sizeof u.internal);
}

namespace {

// The NCCL communicators of `impls.size()` ranks of this process, rank r on impls[r] (distinct GPUs), made in one group
// on this thread (see sw_comm_create_nccl_local; an in-process split makes its groups' communicators so too).
std::vector<void*> init_local_group(const NcclApi& n, const std::vector<std::shared_ptr<DeviceImpl>>& impls, int64_t timeout_ms) {
    const int32_t world_size = static_cast<int32_t>(impls.size());
    NcclUniqueId id{};
    int rc = n.GetUniqueId(&id);
    if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
    // NCCL's init threads may write through &comms[r] (2.14 to 2.19.1): not resized until init is over or aborted.
    std::vector<void*> comms(world_size, nullptr);
    const bool nonblocking = n.CommInitRankConfig != nullptr;
    NcclConfigV21400 config = nccl_nonblocking_config();
    const int64_t t = resolve_timeout(timeout_ms);
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(t);
    const char* init_name = nonblocking ? "ncclCommInitRankConfig (non-blocking)" : "ncclCommInitRank";
    // One thread creates every rank's communicator: inside a group, each with its device current. Non-blocking,
    // ncclGroupEnd returns ncclInProgress at once and the communicators are polled against the timeout; blocking
    // (NCCL < 2.14), ncclGroupEnd returns when all are made, with no deadline.
    rc = n.GroupStart();
    sw_status device_status = SW_OK;
    std::string device_err;
    int failed_rank = -1;
    for (int r = 0; r < world_size && (rc == kNcclSuccess || rc == kNcclInProgress); ++r) {
        device_status = set_current_device(*impls[r], &device_err);
        if (device_status != SW_OK) break; // the group is closed below either way (NCCL's group state is per thread)
        failed_rank = r;
        rc = nonblocking ? n.CommInitRankConfig(&comms[r], world_size, id, r, &config) : n.CommInitRank(&comms[r], world_size, id, r);
    }
    const int end = n.GroupEnd();
    if (rc == kNcclSuccess || rc == kNcclInProgress) {
        rc = end;
        failed_rank = -1;
    }
    auto abort_all = [&] {
        for (void* c : comms)
            if (c) n.CommAbort(c);
    };
    if ((rc != kNcclSuccess && rc != kNcclInProgress) || device_status != SW_OK) {
        const std::string why = nccl_error(n, nullptr, rc);
        abort_all();
        cuda_check(device_status, device_err);
        if (failed_rank >= 0) fail(SW_ERR_BACKEND, init_name, " (rank ", failed_rank, " of ", world_size, ") failed: ", why);
        fail(SW_ERR_BACKEND, "ncclGroupEnd creating ", world_size, " NCCL communicators (", init_name, ") failed: ", why);
    }
    const std::vector<int> state = wait_created(n, comms, deadline);
    std::vector<int> pending;
    for (int r = 0; r < world_size; ++r) {
        if (state[r] == kNcclSuccess) continue;
        if (state[r] != kNcclInProgress) {
            const std::string why = nccl_error(n, comms[r], state[r]);
            abort_all();
            fail(SW_ERR_BACKEND, "creating the NCCL communicators of ", world_size, " GPUs in this process: rank ", r,
                 " failed during NCCL's initialization: ", why, "; every communicator is aborted");
        }
        pending.push_back(r);
    }
    if (!pending.empty()) {
        abort_all();
        fail(SW_ERR_TIMEOUT, "creating the NCCL communicators of ", world_size, " GPUs in this process timed out after ", t,
             " ms: NCCL's initialization (ncclCommInitRankConfig in one group) had not finished for rank(s) ",
             rank_list(pending), "; every communicator is aborted");
    }
    return comms;
}

} // namespace

std::shared_ptr<Communicator> sw::create_nccl_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms) {
    require(devices, "devices");
    if (world_size < 1 || world_size > 4096) fail(SW_ERR_INVALID_ARGUMENT, "world_size = ", world_size, "; expected 1..4096");
    for (int r = 0; r < world_size; ++r) {
        const std::string name = str("devices[", r, "]");
        auto* d = checked(devices[r], name.c_str());
        check_nccl_device(d, name.c_str());
        for (int q = 0; q < r; ++q)
            if (reinterpret_cast<sw_device_s*>(devices[q])->impl->ordinal == d->impl->ordinal)
                fail(SW_ERR_INVALID_ARGUMENT, "devices[", q, "] and devices[", r, "] are both GPU ", d->impl->ordinal,
                     "; NCCL allows one rank per GPU (for virtual ranks on one GPU use sw_comm_create_local)");
    }
    std::vector<std::shared_ptr<DeviceImpl>> impls;
    for (int r = 0; r < world_size; ++r) impls.push_back(reinterpret_cast<sw_device_s*>(devices[r])->impl);
    const NcclApi& n = nccl_api();
    std::vector<void*> comms = init_local_group(n, impls, timeout_ms);
    try {
        impls = local_devices(world_size, devices, timeout_ms); // the checks of sw_comm_create_local
    } catch (const Error& e) {
        for (void* c : comms) n.CommDestroy(c);
        fail(e.status(), "sw_comm_create_local: ", e.message());
    }
    std::vector<std::shared_ptr<NcclRank>> ranks;
    for (void* c : comms) ranks.push_back(nccl_rank(n, c));
    auto mover = std::make_unique<NcclMover>(impls, n, std::move(ranks));
    return make_local_comm(std::move(impls), timeout_ms, std::move(mover), "nccl");
}

std::shared_ptr<Communicator> sw::create_nccl_store(sw_device_s* d, StoreImpl& store, const char* prefix, int32_t rank,
                                               int32_t world_size, int64_t timeout_ms) {
    require(prefix, "prefix");
    check_prefix(prefix);
    check_job(rank, world_size, timeout_ms);
    const NcclApi& n = nccl_api();
    const int64_t t = resolve_timeout(timeout_ms);
    // Rank 0 makes the unique id; the others read it from the store. The TCP mesh is the host side's transport
    // (descriptor exchange, abort notices), and proves every rank is alive before NCCL's init (which has a deadline
    // only where NCCL has ncclCommInitRankConfig).
    NcclUniqueId id{};
    const std::string key = str(prefix, "/nccl-unique-id");
    if (rank == 0) {
        const int rc = n.GetUniqueId(&id);
        if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
        store_set(store, key, id.internal, sizeof id.internal);
    } else {
        const std::string v = store_get(store, key);
        if (v.size() != sizeof id.internal)
            fail(SW_ERR_BACKEND, "the store's '", key, "' has ", v.size(), " bytes; expected an NCCL unique id of 128");
        std::memcpy(id.internal, v.data(), sizeof id.internal);
    }
    auto transport = connect_tcp_mesh(store, prefix, rank, world_size, t);
    auto h = nccl_rank(n, init_rank(n, d, id, rank, world_size, t, "sw_comm_create_nccl"));
    return nccl_comm_over(d->impl, std::move(transport), t, n, std::move(h), rank, world_size);
}

std::shared_ptr<Communicator> sw::create_nccl_id(sw_device_s* d, const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                            int64_t timeout_ms) {
    require(unique_id, "unique_id");
    check_job(rank, world_size, timeout_ms);
    const NcclApi& n = nccl_api();
    NcclUniqueId id{};
    std::memcpy(id.internal, unique_id, sizeof id.internal);
    auto h = nccl_rank(n, init_rank(n, d, id, rank, world_size, timeout_ms, "sw_comm_create_nccl_id"));
    auto transport = make_nccl_transport(n, h, rank, world_size, d->impl);
    return nccl_comm_over(d->impl, std::move(transport), timeout_ms, n, std::move(h), rank, world_size);
}

std::shared_ptr<Communicator> sw::create_nccl_mpi(sw_device_s* d, int64_t timeout_ms) {
    const NcclApi& n = nccl_api();
    auto transport = create_mpi_transport(resolve_timeout(timeout_ms));
    const int32_t rank = transport->rank(), world = transport->world();
    // Rank 0's unique id to every rank, over MPI (everyone contributes 128 bytes; rank 0's are taken).
    NcclUniqueId mine{};
    if (rank == 0) {
        const int rc = n.GetUniqueId(&mine);
        if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
    }
    std::vector<NcclUniqueId> ids(world);
    const std::atomic<bool> no_abort{false};
    transport->all_gather_bytes(0, mine.internal, sizeof mine.internal, ids[0].internal,
                                Clock::now() + std::chrono::milliseconds(resolve_timeout(timeout_ms)), no_abort,
                                "sw_comm_create_nccl_mpi (unique id)");
    auto h = nccl_rank(n, init_rank(n, d, ids[0], rank, world, timeout_ms, "sw_comm_create_nccl_mpi"));
    return nccl_comm_over(d->impl, std::move(transport), timeout_ms, n, std::move(h), rank, world);
}

// ---- sub-communicators (split.cpp)

std::shared_ptr<Communicator> sw::nccl_split_local(std::vector<std::shared_ptr<DeviceImpl>> devices, int64_t timeout_ms) {
    for (size_t r = 0; r < devices.size(); ++r)
        for (size_t q = 0; q < r; ++q)
            if (devices[q]->ordinal == devices[r]->ordinal)
                fail(SW_ERR_INVALID_ARGUMENT, "ranks ", q, " and ", r, " of the new group are both on GPU ", devices[r]->ordinal,
                     "; NCCL allows one rank per GPU");
    const NcclApi& n = nccl_api();
    std::vector<void*> comms = init_local_group(n, devices, timeout_ms);
    std::vector<std::shared_ptr<NcclRank>> ranks;
    for (void* c : comms) ranks.push_back(nccl_rank(n, c));
    auto mover = std::make_unique<NcclMover>(devices, n, std::move(ranks));
    return make_local_comm(std::move(devices), timeout_ms, std::move(mover), "nccl");
}

std::shared_ptr<NcclRank> sw::nccl_split_rank(Communicator& parent, Transport* sub, int32_t color, int32_t key,
                                              Clock::time_point deadline, const std::string& what) {
    const NcclApi& n = nccl_api();
    auto* mover = dynamic_cast<NcclMover*>(parent.mover.get());
    const std::shared_ptr<NcclRank>& pr = mover ? mover->rank_comm(parent.self) : nullptr;
    if (!pr || !pr->comm) fail(SW_ERR_ABORTED, what, ": the parent's NCCL communicator is gone (aborted)");
    make_current(*parent.devices[parent.self]);
    void* nc = nullptr;
    if (n.CommSplit) { // every rank of the parent calls it, the ones that opt out with NCCL_SPLIT_NOCOLOR
        NcclConfigV21400 config = nccl_nonblocking_config();
        const bool nonblocking = n.CommInitRankConfig != nullptr; // the parent is non-blocking too: one group of kinds
        const int rc = n.CommSplit(pr->comm, color < 0 ? kNcclSplitNoColor : color, key, &nc, nonblocking ? &config : nullptr);
        if (rc != kNcclSuccess && rc != kNcclInProgress) {
            const std::string why = nccl_error(n, pr->comm, rc);
            if (nc) n.CommAbort(nc);
            fail(SW_ERR_BACKEND, what, ": ncclCommSplit failed: ", why);
        }
        if (color < 0) return nullptr;
        if (!nc) fail(SW_ERR_BACKEND, what, ": ncclCommSplit returned no communicator");
        const int state = wait_created(n, {nc}, deadline)[0];
        if (state != kNcclSuccess) {
            const std::string why = state == kNcclInProgress ? std::string("not done before the timeout") : nccl_error(n, nc, state);
            n.CommAbort(nc);
            fail(state == kNcclInProgress ? SW_ERR_TIMEOUT : SW_ERR_BACKEND, what, ": ncclCommSplit: ", why);
        }
        return nccl_rank(n, nc);
    }
    if (color < 0) return nullptr;
    // Without ncclCommSplit (NCCL < 2.18): the group's rank 0 makes a unique id, sent to the members over the group's
    // new transport; then ncclCommInitRank(Config) as at creation.
    std::vector<NcclUniqueId> ids(sub->world());
    NcclUniqueId mine{};
    if (sub->rank() == 0) {
        const int rc = n.GetUniqueId(&mine);
        if (rc != kNcclSuccess) fail(SW_ERR_BACKEND, "ncclGetUniqueId failed: ", nccl_error(n, nullptr, rc));
    }
    sub->all_gather_bytes(0, mine.internal, sizeof mine.internal, ids[0].internal, deadline, parent.abort_flag,
                          str(what, " (unique id)"));
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    sw_device_s handle{}; // init_rank takes the device's handle only for its impl
    handle.impl = parent.devices[parent.self];
    return nccl_rank(n, init_rank(n, &handle, ids[0], sub->rank(), sub->world(), left > 0 ? left : 1, what.c_str()));
}

std::shared_ptr<Communicator> sw::nccl_split_comm(std::shared_ptr<DeviceImpl> dev, std::unique_ptr<Transport> transport,
                                                  int64_t timeout_ms, std::shared_ptr<NcclRank> h) {
    const int32_t rank = transport->rank(), world = transport->world();
    return nccl_comm_over(std::move(dev), std::move(transport), timeout_ms, nccl_api(), std::move(h), rank, world);
}
