// A run-time sized array that lives on the stack up to N elements and on the heap beyond: the per-call arrays of
// sw_gemm_grouped (streams, problems, keep-alives, overlap regions), so that a group of a few members allocates nothing.
#pragma once
#include <cstddef>
#include <memory>

namespace sw {

template <class T, size_t N>
class SmallArray {
public:
    explicit SmallArray(size_t count) {
        if (count > N) {
            heap_.reset(new T[count]);
            data_ = heap_.get();
        }
    }
    SmallArray(const SmallArray&) = delete;
    SmallArray& operator=(const SmallArray&) = delete;
    T* data() { return data_; }
    T& operator[](size_t i) { return data_[i]; }

private:
    T local_[N];
    std::unique_ptr<T[]> heap_;
    T* data_ = local_;
};

} // namespace sw
