// Compute threads of one CPU device. Several streams (each served by its own worker thread) may submit
// work at the same time: their tasks share the pool, so p virtual ranks on one CPU device together use
// exactly the device's threads and never oversubscribe the machine.
#pragma once
#include <cstdint>
#include <functional>

namespace sw::cpu {

class ThreadPool {
public:
    // nthreads >= 1 compute threads.
    explicit ThreadPool(int nthreads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const;

    // Runs fn(i) for every i in [0, n) on the pool's threads and blocks the caller until all have
    // finished. Safe to call concurrently from many threads (tasks of concurrent calls are interleaved
    // fairly). The caller does not run tasks itself. If fn throws, the remaining tasks of this call
    // still run and the first exception is rethrown in the caller. n == 0 returns at once.
    void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

private:
    struct Impl;
    Impl* impl_;
};

} // namespace sw::cpu
