// The MPI transport: exchanges over the MPI plugin (libshardwise_mpi, loaded at run time through core/plugin_loader;
// see mpi_plugin_api.h). comm_api.cpp's sw_comm_create_mpi builds a communicator over it.
#include "comm/transport.h"

#include "comm/mpi_plugin_api.h"
#include "core/plugin_loader.h"

#include <algorithm>
#include <cstring>
#include <mutex>

using namespace sw;

namespace {

const sw_mpi_plugin_api* mpi_plugin() {
    static const LoadedPlugin<sw_mpi_plugin_api> loaded = load_plugin<sw_mpi_plugin_api>(
        "shardwise_mpi", "SHARDWISE_MPI_PLUGIN_PATH", "sw_mpi_plugin", SW_MPI_PLUGIN_ABI, "the MPI plugin",
        ": this build has no MPI support (CMake found no MPI: install libopenmpi-dev and rebuild) or the MPI library is "
        "missing.");
    if (!loaded.api) fail(SW_ERR_NOT_FOUND, loaded.why);
    return loaded.api;
}

class MpiTransport final : public Transport {
public:
    MpiTransport(const sw_mpi_plugin_api* api, void* comm, int32_t rank, int32_t world)
        : api_(api), comm_(comm), rank_(rank), world_(world) {}
    ~MpiTransport() override { api_->comm_release(comm_); }
    int32_t rank() const override { return rank_; }
    int32_t world() const override { return world_; }
    const char* name() const override { return "mpi"; }

    void exchange(uint64_t seq, const std::vector<Piece>& sends, const std::vector<Piece>& recvs, Clock::time_point deadline,
                  const std::atomic<bool>& local_abort, const std::string& what, const CallTag* /*tag: not carried*/ = nullptr) override {
        std::vector<sw_mpi_piece> s, r;
        for (const auto& p : sends) s.push_back({p.peer, 0, p.data, p.bytes});
        for (const auto& p : recvs) r.push_back({p.peer, 0, p.data, p.bytes});
        std::vector<uint8_t> missing(world_, 0);
        char err[4096] = {0};
        int32_t peer_status = SW_ERR_ABORTED;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        auto stop = [](const void* flag) { return static_cast<const std::atomic<bool>*>(flag)->load() ? 1 : 0; };
        const int rc = api_->exchange(comm_, seq, s.data(), static_cast<int32_t>(s.size()), r.data(),
                                      static_cast<int32_t>(r.size()), left > 0 ? left : 0, stop, &local_abort,
                                      missing.data(), &peer_status, err, sizeof err);
        switch (rc) {
        case SW_MPI_OK: return;
        case SW_MPI_TIMEOUT: {
            std::vector<int> who, waiting;
            for (int q = 0; q < world_; ++q)
                if (missing[q] == 2) waiting.push_back(q);
                else if (missing[q]) who.push_back(q);
            throw timeout_error(what, std::move(who), std::move(waiting), &parent_ranks());
        }
        case SW_MPI_PEER_ABORT: {
            const auto st = static_cast<sw_status>(peer_status);
            const bool known = st == SW_ERR_TIMEOUT || st == SW_ERR_MISMATCH || st == SW_ERR_BACKEND;
            fail(known ? st : SW_ERR_ABORTED, what, ": ", err);
        }
        case SW_MPI_LOCAL_ABORT: fail(SW_ERR_ABORTED, what, ": ", err);
        case SW_MPI_SIZE_MISMATCH: fail(SW_ERR_MISMATCH, what, ": ", err);
        default: fail(SW_ERR_BACKEND, what, ": MPI: ", err);
        }
    }

    bool can_split() const override { return true; }
    std::unique_ptr<Transport> split(uint64_t, const std::vector<int32_t>& colors, const std::vector<int32_t>& members,
                                     Clock::time_point, const std::atomic<bool>&, const std::string& what) override {
        // Every rank is in this split (their descriptors agreed): MPI_Comm_split, ordered by the rank's place in its
        // group. (MPI_Comm_split blocks: no deadline; a rank that dies now ends the job under mpirun anyway.)
        const int32_t key = static_cast<int32_t>(std::find(members.begin(), members.end(), rank_) - members.begin());
        void* out = nullptr;
        int32_t r = 0, w = 0;
        char err[1024] = {0};
        const int rc = api_->comm_split(comm_, members.empty() ? -1 : colors[rank_], key, &out, &r, &w, err, sizeof err);
        if (rc != SW_MPI_OK) fail(SW_ERR_BACKEND, what, ": MPI: ", err);
        if (!out) return nullptr;
        auto t = std::make_unique<MpiTransport>(api_, out, r, w);
        if (r != key || w != static_cast<int32_t>(members.size()))
            fail(SW_ERR_INTERNAL, what, ": MPI_Comm_split made rank ", r, " of ", w, " where rank ", key, " of ",
                 members.size(), " was expected");
        return t;
    }

    int poll_idle(sw_status* status, std::string* why) noexcept override {
        char err[4096] = {0};
        int32_t peer_status = SW_ERR_ABORTED;
        const int q = api_->poll_idle(comm_, &peer_status, err, sizeof err);
        if (q < 0) return -1;
        const auto st = static_cast<sw_status>(peer_status);
        *status = st == SW_ERR_TIMEOUT || st == SW_ERR_MISMATCH || st == SW_ERR_BACKEND ? st : SW_ERR_ABORTED;
        *why = err;
        return q;
    }

    void notify_abort(sw_status status, const std::string& reason) noexcept override {
        std::lock_guard<std::mutex> lock(mu_);
        if (notified_) return;
        notified_ = true;
        api_->notify_abort(comm_, status, reason.c_str());
    }

private:
    const sw_mpi_plugin_api* api_;
    void* comm_;
    int32_t rank_, world_;
    std::mutex mu_;
    bool notified_ = false;
};

} // namespace

std::unique_ptr<Transport> sw::create_mpi_transport(int64_t timeout_ms) {
    const sw_mpi_plugin_api* api = mpi_plugin();
    void* comm = nullptr;
    int32_t rank = 0, world = 0;
    char err[1024] = {0};
    const int rc = api->comm_create(timeout_ms, &comm, &rank, &world, err, sizeof err);
    if (rc == SW_MPI_TIMEOUT) fail(SW_ERR_TIMEOUT, "timed out after ", timeout_ms, " ms: ", err);
    if (rc != SW_MPI_OK) fail(SW_ERR_BACKEND, "MPI: ", err);
    return std::make_unique<MpiTransport>(api, comm, rank, world);
}

std::string sw::mpi_info(int32_t* available) {
    *available = 0;
    try {
        const sw_mpi_plugin_api* api = mpi_plugin();
        *available = 1;
        return api->library_version();
    } catch (const Error& e) {
        return e.message();
    }
}

void sw::mpi_finalize() {
    const sw_mpi_plugin_api* api = mpi_plugin();
    char err[1024] = {0};
    if (api->finalize(err, sizeof err) != SW_MPI_OK) fail(SW_ERR_BACKEND, err);
}
