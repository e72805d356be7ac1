// CUDA copies and the CUDA side of communicators on CUDA devices (see mover_cuda.h).
#include "comm/mover_cuda.h"

#include "core/cuda_loader.h"

using namespace sw;

namespace {

// Moves on the rank's communication stream, synchronized in finish().
class CudaCopier final : public Copier {
public:
    CudaCopier(const DeviceImpl& dev, void* cs) : api(dev.cuda), ord(dev.ordinal), cs(cs) {}
    // A move that failed half way may have copies in flight: drain them, so that no write into a peer's recv lands
    // after the departure barrier (where a failed collective's outputs are poisoned).
    ~CudaCopier() override {
        std::string ignored;
        api->stream_synchronize(ord, cs, &ignored);
    }
    void copy(char* dst, const char* src, uint64_t bytes) override {
        cuda_call(api, &cuda::PluginApi::memcpy_async, ord, dst, src, bytes, cs);
    }
    void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                 size_t esz) override {
        cuda_call(api, &cuda::PluginApi::copy_2d, ord, dst, ld_dst, src, ld_src, rows, cols, static_cast<int32_t>(esz), cs);
    }
    // The plugin's reduce_sum kernel: source order, or (tree, SW_REDUCE_SUM_TREE) the fixed binary tree over the sources.
    void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count,
                bool tree) override {
        std::vector<const void*> s(src.begin(), src.end());
        std::vector<void*> d(dst.begin(), dst.end());
        cuda_call(api, &cuda::PluginApi::reduce_sum, ord, t, s.data(), static_cast<int32_t>(s.size()), d.data(),
                  static_cast<int32_t>(d.size()), count, static_cast<int32_t>(tree ? 1 : 0), cs);
    }
    void finish() override { cuda_call(api, &cuda::PluginApi::stream_synchronize, ord, cs); }

private:
    const cuda::PluginApi* api;
    int32_t ord;
    void* cs = nullptr;
};

} // namespace

CudaMover::CudaMover(std::vector<std::shared_ptr<DeviceImpl>> devices)
    : devices_(std::move(devices)), streams_(devices_.size(), nullptr), spares_(devices_.size()) {}

CudaMover::~CudaMover() {
    for (size_t r = 0; r < spares_.size(); ++r)
        for (auto& b : spares_[r]) devices_[r]->free_cuda_memory(b.first, false); // gated (DeferredFrees)
    for (size_t r = 0; r < streams_.size(); ++r)
        if (streams_[r]) {
            std::string err;
            devices_[r]->cuda->stream_destroy(devices_[r]->ordinal, streams_[r], &err);
        }
}

void* CudaMover::comm_stream(int rank) {
    std::lock_guard<std::mutex> lock(streams_mu_);
    if (!streams_[rank])
        cuda_call(devices_[rank]->cuda, &cuda::PluginApi::stream_create, devices_[rank]->ordinal, &streams_[rank]);
    return streams_[rank];
}

void CudaMover::move(Communicator& c, int rank, uint64_t, const Slot& slot, Clock::time_point) {
    CudaCopier copier(*devices_[rank], comm_stream(rank));
    move_data(slot, c.world, rank, copier);
}

void CudaMover::p2p_copy(int rank, char* dst, const char* src, uint64_t bytes) {
    if (!bytes) return;
    CudaCopier copier(*devices_[rank], comm_stream(rank)); // drains its copies even when one fails
    copier.copy(dst, src, bytes);
    copier.finish();
}

void CudaMover::p2p_poison(int rank, char* p, uint64_t bytes) noexcept {
    if (!p || !bytes) return;
    const auto& dev = devices_[rank];
    std::string ignored;
    try {
        void* cs = comm_stream(rank);
        dev->cuda->memset_async(dev->ordinal, p, kPoisonByte, bytes, cs, &ignored);
        dev->cuda->stream_synchronize(dev->ordinal, cs, &ignored);
    } catch (const Error&) { // best effort: the transfer's own error is what is reported
    }
}

// Taken before the rank joins, so before any peer or NCCL writes into the input.
void* CudaMover::take_backup(int rank, const Desc& d, uint64_t* capacity) {
    const auto& dev = devices_[rank];
    if (!in_place_all_reduce(d) || !d.count) return nullptr;
    const uint64_t bytes = d.count * sw_dtype_size(d.dtype);
    void* buf = nullptr;
    {
        std::lock_guard<std::mutex> lock(spares_mu_);
        auto& spares = spares_[rank];
        for (size_t i = 0; i < spares.size(); ++i)
            if (spares[i].second >= bytes) {
                buf = spares[i].first;
                *capacity = spares[i].second;
                spares.erase(spares.begin() + static_cast<std::ptrdiff_t>(i));
                break;
            }
    }
    if (!buf) {
        cuda_call(dev->cuda, &cuda::PluginApi::malloc_device, dev->ordinal, bytes, &buf);
        *capacity = bytes;
    }
    void* cs = comm_stream(rank);
    cuda_call(dev->cuda, &cuda::PluginApi::memcpy_async, dev->ordinal, buf, d.recv, bytes, cs);
    cuda_call(dev->cuda, &cuda::PluginApi::stream_synchronize, dev->ordinal, cs);
    return buf;
}

void CudaMover::give_back_backup(int rank, void* backup, uint64_t capacity) {
    std::lock_guard<std::mutex> lock(spares_mu_);
    spares_[rank].push_back({backup, capacity});
}

// Best effort on a failing device (its errors are ignored: the collective's own error is what is reported).
void CudaMover::poison_or_restore(const Slot& slot, int world, int rank, const void* backup) {
    const auto& dev = devices_[rank];
    const Desc& me = slot.desc[rank];
    std::string ignored;
    void* cs = nullptr;
    try {
        cs = comm_stream(rank);
    } catch (const Error&) {
        return; // the device cannot even create a stream
    }
    if (in_place_all_reduce(me)) {
        if (backup && me.count)
            dev->cuda->memcpy_async(dev->ordinal, me.recv, backup, me.count * sw_dtype_size(me.dtype), cs, &ignored);
    } else {
        for_each_output_run(slot, world, rank, [&](char* p, uint64_t bytes) {
            if (p && bytes) dev->cuda->memset_async(dev->ordinal, p, kPoisonByte, bytes, cs, &ignored);
        });
    }
    dev->cuda->stream_synchronize(dev->ordinal, cs, &ignored);
}

void CudaMover::order_begin(sw_stream_s* s, OrderTicket* t) {
    const cuda::PluginApi* api = s->device_impl->cuda;
    const int32_t ord = s->device_impl->ordinal;
    std::string err;
    if (!s->flag_host) {
        void* host = nullptr;
        void* device = nullptr;
        cuda_call(api, &cuda::PluginApi::malloc_host, sizeof(uint32_t), &host, &device);
        s->flag_host = static_cast<uint32_t*>(host);
        s->flag_device = static_cast<uint32_t*>(device);
        __atomic_store_n(s->flag_host, 0u, __ATOMIC_RELEASE);
        s->flag_target = 0;
    }
    t->device = s->device_impl.get();
    cuda_call(api, &cuda::PluginApi::event_create, ord, &t->ready);
    if (const sw_status rec = api->event_record(ord, t->ready, s->cuda_stream, &err); rec != SW_OK) {
        order_cancel(*t);
        cuda_check(rec, err);
    }
}

void CudaMover::order_cancel(OrderTicket& t) noexcept {
    std::string ignored;
    if (t.ready) t.device->cuda->event_destroy(t.device->ordinal, t.ready, &ignored);
    t.ready = nullptr;
}

void CudaMover::order_arm(sw_stream_s* s, OrderTicket* t) {
    s->device_impl->deferred->flag_armed(); // pending until order_release: no cudaFree meanwhile (DeferredFrees)
    t->target = ++s->flag_target;
    t->flag = s->flag_host;
}

sw_status CudaMover::order_wait(OrderTicket& t, std::string* err) noexcept {
    const sw_status waited = t.device->cuda->event_synchronize(t.device->ordinal, t.ready, err);
    order_cancel(t);
    return waited;
}

void CudaMover::order_release(const OrderTicket& t) noexcept {
    __atomic_store_n(t.flag, t.target, __ATOMIC_RELEASE);
    t.device->deferred->flag_released();
}

sw_status CudaMover::order_end(sw_stream_s* s, const OrderTicket& t, std::string* err) noexcept {
    return s->device_impl->cuda->stream_wait_flag(s->device_impl->ordinal, s->flag_device, t.target, s->cuda_stream, err);
}

std::unique_ptr<Mover> sw::make_cuda_mover(std::vector<std::shared_ptr<DeviceImpl>> devices) {
    return std::make_unique<CudaMover>(std::move(devices));
}

sw_status sw::set_current_device(const DeviceImpl& dev, std::string* err) noexcept {
    return dev.cuda->set_device(dev.ordinal, err);
}

void sw::make_current(const DeviceImpl& dev) {
    std::string err;
    cuda_check(set_current_device(dev, &err), err);
}
