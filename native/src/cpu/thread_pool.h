// Compute threads of one CPU device. Several callers (stream workers, or API threads running small work inline) may
// submit work at the same time: their tasks share the pool, and at most N tasks run at any moment (N = size(), the
// device's thread count), so p virtual ranks on one CPU device together use the device's N threads and never
// oversubscribe the machine.
#pragma once
#include <cstdint>
#include <functional>

namespace sw::cpu {

class ThreadPool {
public:
    // nthreads >= 1: the device's thread budget N. The pool starts N - 1 threads; the N-th is a caller's (below).
    explicit ThreadPool(int nthreads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // N, the thread budget (not the number of pool threads, which is N - 1).
    int size() const;

    // Runs fn(i) for every i in [0, n) and blocks the caller until all have finished. Safe to call concurrently from
    // many threads. The caller runs tasks of its own call while it holds the pool's one caller slot (free unless
    // another caller is running tasks); the N - 1 pool threads take tasks of all calls in turn. So at most N tasks
    // run at once, and a single task (n == 1) runs on the caller without waking anyone. If fn throws, the remaining
    // tasks of this call still run and the first exception is rethrown in the caller after all have finished. A call
    // from inside a task of this pool runs its tasks inline, in order. n <= 0 returns at once. No allocation.
    void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

private:
    struct Impl;
    Impl* impl_;
};

} // namespace sw::cpu
