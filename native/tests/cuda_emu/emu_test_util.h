// Helpers shared by the emulation tests: guarded allocations and an independent 16-bit rounding reference.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace emu_test {

// `bytes` of memory ending `slack` bytes before a PROT_NONE page (so a read or write past the end faults).
class Guarded {
public:
    Guarded(size_t bytes, size_t slack) {
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        const size_t data_pages = (bytes + slack + page - 1) / page;
        map_bytes_ = (data_pages + 1) * page;
        map_ = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map_ == MAP_FAILED) {
            std::perror("mmap");
            std::exit(1);
        }
        auto* end = static_cast<unsigned char*>(map_) + data_pages * page;
        if (mprotect(end, page, PROT_NONE) != 0) {
            std::perror("mprotect");
            std::exit(1);
        }
        data_ = end - slack - bytes;
        bytes_ = bytes;
    }
    ~Guarded() { munmap(map_, map_bytes_); }
    Guarded(const Guarded&) = delete;
    Guarded& operator=(const Guarded&) = delete;
    template <class T> T* as() const { return reinterpret_cast<T*>(data_); }
    size_t bytes() const { return bytes_; }

private:
    void* map_ = nullptr;
    size_t map_bytes_ = 0;
    unsigned char* data_ = nullptr;
    size_t bytes_ = 0;
};

// A 16-bit IEEE-style format (f16: 10 mantissa / 5 exponent bits; bf16: 7 / 8), decoded exactly and rounded to
// nearest even by search over its values: an independent reference for the conversions under test.
class Format16 {
public:
    Format16(int man_bits, int exp_bits) : man_(man_bits), exp_(exp_bits) {
        inf_ = static_cast<uint16_t>(((1u << exp_) - 1) << man_);
        values_.resize(inf_);
        for (uint32_t i = 0; i < inf_; ++i) values_[i] = decode(static_cast<uint16_t>(i));
    }
    double decode(uint16_t bits) const {
        const uint32_t mag = bits & 0x7fffu, e = mag >> man_, m = mag & ((1u << man_) - 1);
        const int bias = (1 << (exp_ - 1)) - 1;
        double v;
        if (e == (1u << exp_) - 1) v = m ? NAN : INFINITY;
        else if (e == 0) v = std::ldexp(static_cast<double>(m), 1 - bias - man_);
        else v = std::ldexp(static_cast<double>(m | (1u << man_)), static_cast<int>(e) - bias - man_);
        return (bits & 0x8000u) ? -v : v;
    }
    // Nearest value, ties to the even bit pattern; past the largest finite value by half an ulp or more: infinity.
    uint16_t round(double x) const {
        if (std::isnan(x)) return static_cast<uint16_t>(inf_ | 1u);
        const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
        const double a = std::fabs(x);
        if (std::isinf(a)) return static_cast<uint16_t>(sign | inf_);
        const auto it = std::upper_bound(values_.begin(), values_.end(), a); // first value > a
        const auto hi = static_cast<uint32_t>(it - values_.begin());          // in [1, inf_]
        const uint32_t lo = hi - 1;
        const double hi_value = hi < inf_ ? values_[hi] : std::ldexp(1.0, 1 << (exp_ - 1)); // "next" after max
        const double dl = a - values_[lo], dh = hi_value - a;
        uint32_t pick = dl < dh ? lo : (dh < dl ? hi : ((lo & 1u) ? hi : lo));
        return static_cast<uint16_t>(sign | pick); // pick == inf_ encodes infinity
    }
    bool is_nan(uint16_t bits) const { return (bits & 0x7fffu) > inf_; }

private:
    int man_, exp_;
    uint16_t inf_;
    std::vector<double> values_;
};

} // namespace emu_test
