// NCCL moves: the data of an NCCL communicator (CUDA devices, one rank per GPU) moves through NCCL on the rank's
// communication stream; everything else of the CUDA side (streams, backups, poisoning, ordering into the caller's
// stream) is CudaMover's. Also the Transport over NCCL itself for ranks that have no other channel, and the NCCL
// helpers the creation (comm_nccl.cpp) shares.
#pragma once
#include "comm/mover_cuda.h"
#include "comm/nccl_api.h"

#include <memory>
#include <string>
#include <vector>

namespace sw {

// One rank's ncclComm_t. ncclCommAbort and ncclCommDestroy free it, so at most one of them runs, once (`comm` is null
// afterwards). Only the rank's stream worker (while a collective runs) and the communicator's end call them, never at
// the same time: a local abort reaches NCCL through the worker's polling, not from the thread that asked for it.
struct NcclRank {
    const NcclApi* api = nullptr;
    void* comm = nullptr;
    void abort() noexcept;
    void destroy() noexcept;
};
std::shared_ptr<NcclRank> nccl_rank(const NcclApi& n, void* nc);

// "ncclResult_t 3 (...): last error" for a failed NCCL call.
std::string nccl_error(const NcclApi& n, void* comm, int rc);
// ncclCommGetAsyncError of `comm`; a failing query counts as that error.
int async_state(const NcclApi& n, void* comm);

// The pause between two polls of NCCL: a few yields first (a launch usually takes microseconds), then sleeps from 20 us,
// doubling up to 1 ms.
class Backoff {
public:
    void pause();

private:
    int polls_ = 0;
    std::chrono::microseconds nap_{20};
};

class NcclMover final : public CudaMover {
public:
    // `comms`: per rank (null for the ranks of other processes).
    NcclMover(std::vector<std::shared_ptr<DeviceImpl>> devices, const NcclApi& n, std::vector<std::shared_ptr<NcclRank>> comms)
        : CudaMover(std::move(devices)), n_(n), comms_(std::move(comms)) {}
    // Issues the NCCL calls and waits for NCCL to finish, polling ncclCommGetAsyncError, the deadline and local aborts
    // (then ncclCommAbort).
    void move(Communicator& c, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline) override;
    // ncclCommAbort (aborted) or ncclCommDestroy of every local communicator.
    void close(bool aborted) noexcept override;
    // Point-to-point (p2p_transport.cpp, once the host side agreed): the call's sends and receives as one group of
    // ncclSend / ncclRecv (bytes) on the communication stream, under the collectives' watchdog.
    void p2p_move(Communicator& c, int rank, const std::vector<Piece>& sends, const std::vector<Piece>& recvs,
                  Clock::time_point deadline, const std::string& what) override;

private:
    const NcclApi& n_;
    std::vector<std::shared_ptr<NcclRank>> comms_;
};

// The host side of an NCCL communicator whose ranks have no other channel: descriptors travel through NCCL itself.
std::unique_ptr<Transport> make_nccl_transport(const NcclApi& n, std::shared_ptr<NcclRank> comm, int32_t rank, int32_t world,
                                               std::shared_ptr<DeviceImpl> dev);

} // namespace sw
