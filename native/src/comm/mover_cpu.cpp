// CPU copies: the data of an in-process communicator on CPU devices moves by memmove and host sums, on the ranks'
// stream workers (collectives.cpp's move_data says what to move).
#include "comm/communicator.h"

#include <cstring>

using namespace sw;

namespace {

class CpuCopier final : public Copier {
public:
    void copy(char* dst, const char* src, uint64_t bytes) override { std::memmove(dst, src, bytes); }
    void copy_2d(char* dst, int64_t ld_dst, const char* src, int64_t ld_src, int64_t rows, int64_t cols,
                 size_t esz) override {
        for (int64_t i = 0; i < rows; ++i) std::memmove(dst + i * ld_dst * esz, src + i * ld_src * esz, cols * esz);
    }
    void reduce(sw_dtype t, const std::vector<const char*>& src, const std::vector<char*>& dst, uint64_t count,
                bool tree) override {
        reduce_sum(t, src, dst, count, tree);
    }
};

// The CPU moves cannot fail: nothing needs a backup, a failed collective's outputs are poisoned in host memory.
class CpuMover final : public Mover {
public:
    void move(Communicator& c, int rank, uint64_t, const Slot& slot, Clock::time_point) override {
        CpuCopier copier;
        move_data(slot, c.world, rank, copier);
    }
};

} // namespace

std::unique_ptr<Mover> sw::make_cpu_mover() { return std::make_unique<CpuMover>(); }
