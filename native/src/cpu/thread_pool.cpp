// ThreadPool: N - 1 persistent compute threads plus one caller slot, shared by any number of concurrent callers.
//
// Design
//  - The thread budget is N = size(). N - 1 pool threads run tasks; the N-th "thread" is a slot that one caller at a
//    time holds while it runs tasks of its own call. So at most N tasks run at once however many callers there are
//    (p virtual ranks on one device share N), and a caller that would only wait anyway does useful work instead.
//  - A call's Job lives on the caller's stack. Tasks are claimed with an atomic counter (Job::next). The caller
//    claims from its own job without any lock. A call that others can help with (more than one task, or the caller
//    has no slot) is listed in the pool's job list (under the mutex, once) and wakes only as many sleeping threads as
//    it has tasks for them; pool threads take jobs round robin (fairness between concurrent callers).
//  - A single task with the slot free runs on the caller directly: no lock, no wake-up, no system call.
//  - Waiting, for pool threads and callers alike: a short busy spin (pause), then a phase that yields the processor
//    (sched_yield) so a thread that needs the core gets it, then sleep on a condition variable. Back-to-back calls
//    find the pool threads still spinning and pay no futex; an idle pool sleeps.
//  - Completion: the thread that finishes a job's last task publishes Job::done and touches the job no more; it
//    notifies sleeping callers only when some sleep (counted), so a caller that ran the last task itself, or that was
//    still spinning, completes without a system call.
//  - Exceptions: the first exception thrown by a task of a call is stored in its Job; the remaining tasks still run;
//    the caller rethrows it after all tasks have finished.
//  - Nested use: parallel_for called from inside a task of the same pool (pool thread or caller) runs its tasks
//    inline, in order (waiting could deadlock, and the task already holds one of the N).
//  - No allocation per call in steady state: the Job lives on the caller's stack, the job list keeps its capacity,
//    std::function is passed by reference.
#include "cpu/thread_pool.h"

#include <algorithm>
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
    std::atomic<int64_t> next{0};      // next unclaimed index (fetch_add; may run past n)
    std::atomic<int64_t> remaining{0}; // tasks not yet finished
    std::atomic<bool> done{false};     // the last task finished; nobody but the caller touches the job after
    std::atomic<bool> listed{false};   // in Impl::jobs (changed under Impl::mu)
    std::exception_ptr error;          // first exception (guarded by Impl::mu)
};

// The pool whose task the current thread is running (pool threads: always their pool), for the nested-call rule.
thread_local const void* tl_in_task_of = nullptr;

using Clock = std::chrono::steady_clock;

// Waiting: busy spin, then yield, then sleep. Pool threads spin longer than callers: a caller's next call usually
// follows within microseconds, and a sleeping pool thread costs that call a futex wake-up and a scheduler delay.
constexpr auto kWorkerSpin = std::chrono::microseconds(20);
constexpr auto kWorkerYield = std::chrono::microseconds(200);
constexpr auto kCallerSpin = std::chrono::microseconds(10);
constexpr auto kCallerYield = std::chrono::microseconds(100);

// Spins until ready() or the time is up: busy (pause) until spin_until, then yielding until yield_until.
template <class Ready>
bool spin_then_yield(Ready&& ready, Clock::time_point start, Clock::duration spin, Clock::duration yield) {
    for (int it = 0;; ++it) {
        if (ready()) return true;
        if ((it & 31) == 31) {
            const auto now = Clock::now();
            if (now - start >= spin + yield) return false;
            if (now - start >= spin) {
                std::this_thread::yield();
                continue;
            }
        }
        SW_CPU_RELAX();
    }
}

} // namespace

struct ThreadPool::Impl {
    int budget = 1;                     // N
    std::mutex mu;
    std::condition_variable cv_work;    // idle pool threads sleep here
    std::condition_variable cv_caller;  // callers waiting for their job or for the caller slot sleep here
    std::vector<Job*> jobs;             // listed jobs that may have unclaimed tasks (guarded by mu)
    size_t rr = 0;                      // round-robin cursor into jobs (guarded by mu)
    int sleepers = 0;                   // pool threads waiting on cv_work (guarded by mu)
    std::atomic<int> listed{0};         // jobs.size(), for spinning threads
    std::atomic<int> callers_sleeping{0};
    std::atomic<bool> slot_free{true};  // the caller slot
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;   // N - 1

    void worker_loop();
    bool claim(Job** job, int64_t* idx);
    void run_task(Job& job, int64_t idx);
    void finish(Job& job);
    void wake_callers();
    bool try_slot() {
        bool expected = true;
        return slot_free.load(std::memory_order_relaxed) &&
               slot_free.compare_exchange_strong(expected, false, std::memory_order_acquire);
    }
    void release_slot() {
        slot_free.store(true, std::memory_order_seq_cst);
        wake_callers();
    }
    void unlist(Job& job) {
        // listed == false (acquire): a pool thread took it out under mu and touches it no more.
        if (!job.listed.load(std::memory_order_acquire)) return;
        std::lock_guard<std::mutex> g(mu);
        auto it = std::find(jobs.begin(), jobs.end(), &job);
        if (it != jobs.end()) {
            const size_t pos = static_cast<size_t>(it - jobs.begin());
            jobs.erase(it);
            if (rr > pos) --rr;
            listed.store(static_cast<int>(jobs.size()), std::memory_order_relaxed);
        }
        job.listed.store(false, std::memory_order_relaxed);
    }
};

void ThreadPool::Impl::wake_callers() {
    // Pairs with the sleeping caller's increment before its last check (both seq_cst): either it sees our change,
    // or we see it counted and notify under the mutex it waits with.
    if (callers_sleeping.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> g(mu); }
        cv_caller.notify_all();
    }
}

bool ThreadPool::Impl::claim(Job** job, int64_t* idx) {
    std::lock_guard<std::mutex> g(mu);
    while (!jobs.empty()) {
        if (rr >= jobs.size()) rr = 0;
        Job* j = jobs[rr];
        const int64_t i = j->next.fetch_add(1, std::memory_order_relaxed);
        if (i < j->n) {
            if (i + 1 >= j->n) {
                jobs.erase(jobs.begin() + static_cast<std::ptrdiff_t>(rr)); // rr now points at the next job
                j->listed.store(false, std::memory_order_release);
            } else {
                ++rr;
            }
            listed.store(static_cast<int>(jobs.size()), std::memory_order_relaxed);
            *job = j;
            *idx = i;
            return true;
        }
        // Exhausted (its caller claimed the rest): take it out; its tasks in flight are counted by remaining.
        jobs.erase(jobs.begin() + static_cast<std::ptrdiff_t>(rr));
        j->listed.store(false, std::memory_order_release);
        listed.store(static_cast<int>(jobs.size()), std::memory_order_relaxed);
    }
    return false;
}

void ThreadPool::Impl::run_task(Job& job, int64_t idx) {
    const void* outer = tl_in_task_of;
    tl_in_task_of = this;
    try {
        (*job.fn)(idx);
    } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!job.error) job.error = std::current_exception();
    }
    tl_in_task_of = outer;
    finish(job);
}

void ThreadPool::Impl::finish(Job& job) {
    if (job.remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        job.done.store(true, std::memory_order_seq_cst); // the caller may destroy the job from here on
        wake_callers();
    }
}

void ThreadPool::Impl::worker_loop() {
    tl_in_task_of = this;
    for (;;) {
        Job* job = nullptr;
        int64_t idx = 0;
        if (claim(&job, &idx)) {
            run_task(*job, idx);
            continue;
        }
        if (stop.load(std::memory_order_relaxed)) return;
        auto ready = [&] { return listed.load(std::memory_order_relaxed) > 0 || stop.load(std::memory_order_relaxed); };
        if (spin_then_yield(ready, Clock::now(), kWorkerSpin, kWorkerYield)) continue;
        std::unique_lock<std::mutex> lk(mu);
        if (!jobs.empty() || stop.load(std::memory_order_relaxed)) continue;
        ++sleepers;
        cv_work.wait(lk);
        --sleepers;
    }
}

ThreadPool::ThreadPool(int nthreads) : impl_(new Impl) {
    if (nthreads < 1) nthreads = 1;
    impl_->budget = nthreads;
    impl_->jobs.reserve(64);
    try {
        impl_->threads.reserve(static_cast<size_t>(nthreads - 1));
        for (int i = 0; i + 1 < nthreads; ++i) impl_->threads.emplace_back([this] { impl_->worker_loop(); });
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

int ThreadPool::size() const { return impl_->budget; }

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    Impl& p = *impl_;

    if (tl_in_task_of == &p) {
        // Called from one of our own tasks: run inline (waiting could deadlock the pool).
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

    bool have_slot = p.try_slot();
    if (n == 1 && have_slot) {
        // One task and the slot is ours: run it here; nobody else is involved.
        const void* outer = tl_in_task_of;
        tl_in_task_of = &p;
        std::exception_ptr error;
        try {
            fn(0);
        } catch (...) {
            error = std::current_exception();
        }
        tl_in_task_of = outer;
        p.release_slot();
        if (error) std::rethrow_exception(error);
        return;
    }

    Job job;
    job.fn = &fn;
    job.n = n;
    job.remaining.store(n, std::memory_order_relaxed);
    if (!p.threads.empty()) {
        // List the job for the pool threads; wake as many sleeping ones as there are tasks they could take.
        const int64_t for_others = have_slot ? n - 1 : n;
        int wake;
        {
            std::lock_guard<std::mutex> g(p.mu);
            job.listed.store(true, std::memory_order_relaxed);
            p.jobs.push_back(&job);
            p.listed.store(static_cast<int>(p.jobs.size()), std::memory_order_relaxed);
            wake = static_cast<int>(std::min<int64_t>(for_others, p.sleepers));
        }
        for (int i = 0; i < wake; ++i) p.cv_work.notify_one();
    }

    for (;;) {
        if (have_slot) {
            // Run our own tasks while any are unclaimed, then give the slot back at once.
            for (;;) {
                const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
                if (i >= n) break;
                p.run_task(job, i);
            }
            p.release_slot();
            have_slot = false;
        }
        if (job.done.load(std::memory_order_acquire)) break;
        // Wait for the pool threads to finish our tasks, or for the slot to come free while tasks are unclaimed.
        auto can_help = [&] {
            return p.slot_free.load(std::memory_order_seq_cst) && job.next.load(std::memory_order_relaxed) < n;
        };
        auto ready = [&] { return job.done.load(std::memory_order_acquire) || can_help(); };
        if (!spin_then_yield(ready, Clock::now(), kCallerSpin, kCallerYield)) {
            std::unique_lock<std::mutex> lk(p.mu);
            p.callers_sleeping.fetch_add(1, std::memory_order_seq_cst);
            p.cv_caller.wait(lk, [&] { return job.done.load(std::memory_order_seq_cst) || can_help(); });
            p.callers_sleeping.fetch_sub(1, std::memory_order_relaxed);
        }
        if (job.done.load(std::memory_order_acquire)) break;
        have_slot = can_help() && p.try_slot();
    }
    p.unlist(job);
    // done (acquire) orders every task's writes, and job.error, before this point.
    if (job.error) std::rethrow_exception(job.error);
}

} // namespace sw::cpu
