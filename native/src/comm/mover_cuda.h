// CUDA copies: the data of an in-process communicator on CUDA devices moves on each rank's communication stream (peer
// copies and a reduction kernel of the CUDA plugin); also the CUDA side of every communicator on CUDA devices (NCCL's
// mover derives from it): the communication streams, the backups of in-place all-reduces, the poisoning of a failed
// collective's outputs with device memsets, and the ordering of a collective into the caller's CUDA stream (an event
// for the stream's earlier work, a mapped flag word the stream waits on). With mover_nccl.cpp, the only files of comm/
// that touch a device's CUDA plugin table.
#pragma once
#include "comm/communicator.h"

#include <mutex>
#include <utility>
#include <vector>

namespace sw {

class CudaMover : public Mover {
public:
    explicit CudaMover(std::vector<std::shared_ptr<DeviceImpl>> devices);
    ~CudaMover() override; // frees the spare backups, destroys the communication streams

    void move(Communicator& c, int rank, uint64_t seq, const Slot& slot, Clock::time_point deadline) override;

    bool backs_up(const Desc& d) const override { return in_place_all_reduce(d); }
    void* take_backup(int rank, const Desc& d, uint64_t* capacity) override;
    void give_back_backup(int rank, void* backup, uint64_t capacity) override;
    void poison_or_restore(const Slot& slot, int world, int rank, const void* backup) override;

    bool orders_device_stream() const override { return true; }
    void order_begin(sw_stream_s* s, OrderTicket* t) override;
    void order_cancel(OrderTicket& t) noexcept override;
    void order_arm(sw_stream_s* s, OrderTicket* t) override;
    sw_status order_wait(OrderTicket& t, std::string* err) noexcept override;
    void order_release(const OrderTicket& t) noexcept override;
    sw_status order_end(sw_stream_s* s, const OrderTicket& t, std::string* err) noexcept override;

    // Point-to-point (p2p.h): a copy on the rank's communication stream (from any device of the process), and the
    // poisoning of a failed receive with a device memset.
    void p2p_copy(int rank, char* dst, const char* src, uint64_t bytes) override;
    void p2p_poison(int rank, char* p, uint64_t bytes) noexcept override;

    // The rank's communication stream (created on first use; a rank may queue collectives on several streams, whose
    // workers can get here at the same time).
    void* comm_stream(int rank);

protected:
    std::vector<std::shared_ptr<DeviceImpl>> devices_;

private:
    std::mutex streams_mu_;
    std::vector<void*> streams_; // per rank
    // Spare device buffers (pointer, bytes) per rank for the backups of in-place all-reduces; taken and returned
    // under spares_mu_: a backup goes while its collective may still hold the communicator's lock.
    std::mutex spares_mu_;
    std::vector<std::vector<std::pair<void*, uint64_t>>> spares_;
};

// Makes `dev` the calling thread's current CUDA device (for the NCCL creation); the plugin's status and message.
sw_status set_current_device(const DeviceImpl& dev, std::string* err) noexcept;
// The same, throwing sw::Error when it fails.
void make_current(const DeviceImpl& dev);

} // namespace sw
