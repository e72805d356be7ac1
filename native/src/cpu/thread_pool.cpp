// ThreadPool: N persistent compute threads shared by any number of concurrent callers.
//
// Design
//  - Every parallel_for call creates a Job on the caller's stack and appends it to the pool's list of
//    active jobs. Workers claim one task index at a time, taking jobs round robin, so the tasks of
//    concurrent calls are interleaved fairly and p streams sharing one pool never use more than the
//    pool's threads.
//  - The caller never runs tasks; it waits (a very short spin, then a condition variable) until the
//    last task of its job has finished. The worker that finishes the last task wakes it.
//  - Wake-up latency: an idle worker spins for a short while (a few tens of microseconds) watching
//    an atomic count of unclaimed tasks before it sleeps on a condition variable, so back-to-back
//    calls (one GEMM after another on a stream) do not pay a futex wake-up each time. Sleeping
//    workers are only notified when some are asleep.
//  - Exceptions: the first exception thrown by a task of a call is stored in its Job; the remaining
//    tasks still run; the caller rethrows it after all tasks have finished.
//  - Nested use: parallel_for called from inside a task of the same pool would deadlock if every
//    worker waited for tasks that nobody can run, so such a call runs its tasks inline, in order.
//  - No allocation per call in steady state: the Job lives on the caller's stack, the active-job
//    vector keeps its capacity, std::function is passed by reference.
#include "cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SW_CPU_RELAX() _mm_pause()
#else
#define SW_CPU_RELAX() std::this_thread::yield()
#endif

namespace sw::cpu {

namespace {

struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    int64_t next = 0;                 // next unclaimed index (guarded by Impl::mu)
    std::atomic<int64_t> remaining{0};// tasks not yet finished
    std::exception_ptr error;         // first exception (guarded by Impl::mu)
    bool caller_waits = false;        // the caller sleeps on cv (guarded by Impl::mu)
    std::atomic<bool> done{false};    // set (under Impl::mu) as the very last access of a worker
    std::condition_variable cv;       // the caller sleeps here (with Impl::mu)
};

// Set on worker threads: the pool they belong to (for the nested-call rule).
thread_local const void* tl_worker_of = nullptr;

using Clock = std::chrono::steady_clock;

// Worker spin before sleeping, and caller spin before sleeping.
constexpr auto kWorkerSpin = std::chrono::microseconds(50);
constexpr auto kCallerSpin = std::chrono::microseconds(4);

} // namespace

struct ThreadPool::Impl {
    std::mutex mu;
    std::condition_variable cv_work;
    std::vector<Job*> jobs;           // active jobs with unclaimed tasks (guarded by mu)
    size_t rr = 0;                    // round-robin cursor into jobs (guarded by mu)
    int sleepers = 0;                 // workers waiting on cv_work (guarded by mu)
    std::atomic<int64_t> unclaimed{0};// total unclaimed tasks (spinning workers watch it)
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;

    void worker_loop();
};

void ThreadPool::Impl::worker_loop() {
    tl_worker_of = this;
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
        while (jobs.empty()) {
            if (stop.load(std::memory_order_relaxed)) return;
            // Spin a little without the lock, then sleep.
            lk.unlock();
            const auto until = Clock::now() + kWorkerSpin;
            bool work = false;
            for (int it = 0;; ++it) {
                if (unclaimed.load(std::memory_order_relaxed) > 0 || stop.load(std::memory_order_relaxed)) {
                    work = true;
                    break;
                }
                SW_CPU_RELAX();
                if ((it & 63) == 63 && Clock::now() >= until) break;
            }
            lk.lock();
            if (work || !jobs.empty() || stop.load(std::memory_order_relaxed)) continue;
            ++sleepers;
            cv_work.wait(lk);
            --sleepers;
        }
        // Claim one task, round robin over the active jobs.
        if (rr >= jobs.size()) rr = 0;
        Job* job = jobs[rr];
        const int64_t idx = job->next++;
        if (job->next == job->n) {
            jobs.erase(jobs.begin() + static_cast<std::ptrdiff_t>(rr)); // rr now points at the next job
        } else {
            ++rr;
        }
        unclaimed.fetch_sub(1, std::memory_order_relaxed);
        lk.unlock();

        try {
            (*job->fn)(idx);
        } catch (...) {
            std::lock_guard<std::mutex> g(mu);
            if (!job->error) job->error = std::current_exception();
        }

        lk.lock();
        if (job->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            // Last task of the job: wake the caller if it sleeps, then publish completion. After
            // done is set the caller may return and destroy *job at once, so it is the last access.
            if (job->caller_waits) job->cv.notify_all();
            job->done.store(true, std::memory_order_release);
        }
    }
}

ThreadPool::ThreadPool(int nthreads) : impl_(new Impl) {
    if (nthreads < 1) nthreads = 1;
    impl_->jobs.reserve(64);
    try {
        impl_->threads.reserve(static_cast<size_t>(nthreads));
        for (int i = 0; i < nthreads; ++i) impl_->threads.emplace_back([this] { impl_->worker_loop(); });
    } catch (...) {
        {
            std::lock_guard<std::mutex> g(impl_->mu);
            impl_->stop.store(true);
        }
        impl_->cv_work.notify_all();
        for (auto& t : impl_->threads) t.join();
        delete impl_;
        throw;
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> g(impl_->mu);
        impl_->stop.store(true);
    }
    impl_->cv_work.notify_all();
    for (auto& t : impl_->threads) t.join();
    delete impl_;
}

int ThreadPool::size() const { return static_cast<int>(impl_->threads.size()); }

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    Impl& p = *impl_;

    if (tl_worker_of == &p) {
        // Called from one of our own tasks: run inline (waiting would deadlock the pool).
        std::exception_ptr first;
        for (int64_t i = 0; i < n; ++i) {
            try {
                fn(i);
            } catch (...) {
                if (!first) first = std::current_exception();
            }
        }
        if (first) std::rethrow_exception(first);
        return;
    }

    Job job;
    job.fn = &fn;
    job.n = n;
    job.remaining.store(n, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> g(p.mu);
        p.jobs.push_back(&job);
        p.unclaimed.fetch_add(n, std::memory_order_relaxed);
        if (p.sleepers > 0) p.cv_work.notify_all();
    }

    // Short spin (cheap completion of tiny jobs), then sleep until the last worker wakes us.
    bool finished = false;
    const auto until = Clock::now() + kCallerSpin;
    for (int it = 0;; ++it) {
        if (job.done.load(std::memory_order_acquire)) {
            finished = true;
            break;
        }
        SW_CPU_RELAX();
        if ((it & 15) == 15 && Clock::now() >= until) break;
    }
    if (!finished) {
        std::unique_lock<std::mutex> lk(p.mu);
        job.caller_waits = true;
        job.cv.wait(lk, [&] { return job.done.load(std::memory_order_acquire); });
    }
    // done (acquire) orders every worker's writes to job.error before this read.
    if (job.error) std::rethrow_exception(job.error);
}

} // namespace sw::cpu
