#include "cpu/stream.h"

#include "core/error.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace sw::cpu {

namespace {
thread_local bool t_on_stream_worker = false;

// Runs fn; turns an exception into a status and message as the queue reports them.
sw_status run_caught(const std::function<void()>& fn, std::string* message) {
    try {
        fn();
        return SW_OK;
    } catch (const Error& e) {
        *message = e.message();
        return e.status();
    } catch (const std::bad_alloc&) {
        *message = "out of memory while running queued work";
        return SW_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        *message = str("internal error in queued work: ", e.what());
        return SW_ERR_INTERNAL;
    } catch (...) {
        *message = "internal error in queued work: unknown exception";
        return SW_ERR_INTERNAL;
    }
}
} // namespace

bool on_stream_worker() { return t_on_stream_worker; }

// (SW_SYNC_RUNS_WORK_DEFAULT=0: a build whose default is off, for side-by-side measurements in one process.)
#ifndef SW_SYNC_RUNS_WORK_DEFAULT
#define SW_SYNC_RUNS_WORK_DEFAULT 1
#endif
namespace {
std::atomic<bool> g_sync_runs_work{[] {
    const char* env = std::getenv("SHARDWISE_CPU_SYNC_RUNS_WORK");
    if (env && (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0)) return env[0] == '1';
    return SW_SYNC_RUNS_WORK_DEFAULT != 0;
}()};
} // namespace

void Stream::set_synchronize_runs_work(bool on) { g_sync_runs_work.store(on); }

Stream::Stream() : worker_([this] { run(); }) {}

Stream::~Stream() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_work_.notify_all();
    if (worker_.joinable()) worker_.join();
}

void Stream::enqueue(std::function<void()> fn, bool always) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(Op{std::move(fn), always});
        enqueued_.store(enqueued_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    cv_work_.notify_one();
}

bool Stream::idle() const {
    // completed_ first: it never exceeds enqueued_, so equal counts mean nothing was pending at the second load.
    const uint64_t done = completed_.load(std::memory_order_acquire);
    return done == enqueued_.load(std::memory_order_acquire) && !error_flag_.load(std::memory_order_relaxed);
}

sw_status Stream::synchronize(std::string* message) {
    // Fast path: everything queued before this call has completed (the acquire load of completed_ orders its work
    // and its error before us) and no error is pending.
    if (idle()) {
        if (message) message->clear();
        return SW_OK;
    }
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = enqueued_.load(std::memory_order_relaxed);
    const bool take = !t_on_stream_worker && g_sync_runs_work.load(std::memory_order_relaxed);
    while (completed_.load(std::memory_order_relaxed) < target) {
        // The front operation is the next one before `target` (nothing runs, so completed_ counts every earlier
        // one): run it here instead of waking the worker and waiting for it.
        if (take && !worker_busy_ && !inline_busy_ && !stop_ && !queue_.empty()) {
            // It runs as it would on the worker: on_stream_worker() is true meanwhile (CUDA frees deferred, no
            // inline work, no work taken by a nested synchronize).
            t_on_stream_worker = true;
            run_front(lock, inline_busy_);
            t_on_stream_worker = false;
            continue; // the next one is this loop's too (the worker is not woken for work this caller waits for)
        }
        wake_at_ = std::min(wake_at_, target);
        cv_done_.wait(lock);
    }
    if (take && !queue_.empty()) cv_work_.notify_one(); // work queued after target: the worker's
    const sw_status status = error_;
    if (message) *message = error_message_;
    error_ = SW_OK;
    error_message_.clear();
    error_flag_.store(false, std::memory_order_relaxed);
    return status;
}

std::string Stream::pending_error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_ == SW_OK ? std::string() : error_message_;
}

void Stream::complete_locked(sw_status status, std::string&& message) {
    if (status != SW_OK && error_ == SW_OK) {
        error_ = status;
        error_message_ = std::move(message);
        error_flag_.store(true, std::memory_order_relaxed);
    }
    const uint64_t done = completed_.load(std::memory_order_relaxed) + 1;
    completed_.store(done, std::memory_order_release);
    if (done >= wake_at_) {
        wake_at_ = UINT64_MAX; // the woken re-register what they still wait for
        cv_done_.notify_all();
    }
}

void Stream::wait_done(std::unique_lock<std::mutex>& lock, uint64_t target) {
    while (completed_.load(std::memory_order_relaxed) < target) {
        wake_at_ = std::min(wake_at_, target);
        cv_done_.wait(lock);
    }
}

bool Stream::run_inline_if_idle(Stream* const* streams, int count, const std::function<void()>& fn) {
    if (count < 1 || t_on_stream_worker) return false;
    // Lock-free pre-check: a busy stream is the common reason to say no.
    for (int i = 0; i < count; ++i)
        if (!streams[i]->idle()) return false;

    // Distinct streams in address order (the lock order of every caller).
    Stream* small[8];
    std::vector<Stream*> big;
    Stream** list = small;
    if (count > 8) {
        big.assign(streams, streams + count);
        list = big.data();
    } else {
        std::copy(streams, streams + count, small);
    }
    std::sort(list, list + count);
    const int n = static_cast<int>(std::unique(list, list + count) - list);

    // Claim: every stream idle under its lock, then marked busy (one pseudo-operation each).
    int locked = 0;
    bool ok = true;
    for (; locked < n; ++locked) {
        Stream* s = list[locked];
        s->mu_.lock();
        if (s->stop_ || s->inline_busy_ || s->error_ != SW_OK ||
            s->completed_.load(std::memory_order_relaxed) != s->enqueued_.load(std::memory_order_relaxed)) {
            ok = false;
            ++locked;
            break;
        }
    }
    if (ok)
        for (int i = 0; i < n; ++i) {
            list[i]->inline_busy_ = true;
            list[i]->enqueued_.store(list[i]->enqueued_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        }
    for (int i = locked - 1; i >= 0; --i) list[i]->mu_.unlock();
    if (!ok) return false;

    std::string message;
    const sw_status status = run_caught(fn, &message);

    for (int i = 0; i < n; ++i) {
        Stream* s = list[i];
        bool queued;
        {
            std::lock_guard<std::mutex> lock(s->mu_);
            s->inline_busy_ = false;
            s->complete_locked(status, std::string(message));
            queued = !s->queue_.empty();
        }
        if (queued) s->cv_work_.notify_one(); // work queued meanwhile may start now
    }
    return true;
}

double Stream::measure_round_trip_ns(int rounds) {
    if (rounds < 1) rounds = 1;
    std::vector<double> ns;
    ns.reserve(static_cast<size_t>(rounds));
    std::mutex m;
    std::condition_variable cv;
    for (int r = 0; r < rounds; ++r) {
        bool ran = false;
        const auto t0 = std::chrono::steady_clock::now();
        enqueue(
            [&] {
                std::lock_guard<std::mutex> g(m);
                ran = true;
                cv.notify_one();
            },
            /*always=*/true);
        {
            std::unique_lock<std::mutex> lk(m);
            cv.wait(lk, [&] { return ran; });
        }
        ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    }
    // The operation's completion is recorded right after it ran: wait for that too, so the stream is as idle as
    // before (the caller may want to inline next).
    {
        std::unique_lock<std::mutex> lock(mu_);
        wait_done(lock, enqueued_.load(std::memory_order_relaxed));
    }
    std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(ns.size() / 2), ns.end());
    return ns[ns.size() / 2];
}

void Stream::run_front(std::unique_lock<std::mutex>& lock, bool& busy) {
    Op op = std::move(queue_.front());
    queue_.pop_front();
    busy = true;
    const bool skip = error_ != SW_OK && !op.always;
    lock.unlock();
    sw_status status = SW_OK;
    std::string message;
    if (!skip) status = run_caught(op.fn, &message);
    op.fn = nullptr; // release captured references outside the lock's critical path
    lock.lock();
    busy = false;
    complete_locked(status, std::move(message)); // wakes the waiters whose target this reached
}

void Stream::run() {
    t_on_stream_worker = true;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        // Queued work waits while an inline operation holds the stream.
        cv_work_.wait(lock, [&] { return (stop_ && !inline_busy_) || (!queue_.empty() && !inline_busy_); });
        if (queue_.empty()) {
            if (stop_) return; // drained
            continue;
        }
        run_front(lock, worker_busy_);
    }
}

} // namespace sw::cpu
