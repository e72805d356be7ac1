// In-order asynchronous work queue of the CPU backend: one worker thread per stream, like a CUDA stream.
// Compute-heavy operations hand their tiles to the device's ThreadPool and wait, so the worker threads
// of many streams do not oversubscribe the machine. Small work may instead run on the caller's thread
// when the stream is idle (run_inline_if_idle): the order and error rules are the same as for queued work.
#pragma once
#include "shardwise.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace sw::cpu {

// True on a stream's worker thread (while it runs queued work), and on a thread whose synchronize runs queued work
// (while it does). Code that must not block there — freeing CUDA memory, which waits for the whole device — checks it.
bool on_stream_worker();

class Stream {
public:
    Stream();
    ~Stream(); // drains the queue, then joins the worker
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    // Queues fn. While an earlier operation's error has not been reported, ordinary operations are
    // skipped; `always` operations (event markers, collectives that must tell their peers) still run
    // and can see the pending error through pending_error().
    void enqueue(std::function<void()> fn, bool always = false);

    // Blocks until everything queued before the call has run; returns the first error since the last
    // report (SW_OK if none) with its message, and clears it. An idle stream without an error answers from
    // two atomic loads (no lock, no system call). Queued work the worker has not started yet runs on the calling
    // thread, which would only wait for it anyway (no hand-off to the worker and back): one operation at a time, in
    // queue order, never beside the worker's (the stream counts as busy meanwhile, as for run_inline_if_idle), with
    // the same skip and error rules, and never past what was queued before the call; on_stream_worker() is true
    // while such an operation runs, as on the worker. Not from a stream worker (it waits there as before), and not
    // while it is switched off (set_synchronize_runs_work).
    sw_status synchronize(std::string* message);

    // Whether synchronize runs queued work on the caller (default on; the environment variable
    // SHARDWISE_CPU_SYNC_RUNS_WORK=0 turns it off at start-up). For tests and measurements of the hand-off path.
    static void set_synchronize_runs_work(bool on);

    // True when nothing is queued or running on the stream and no error is pending (a hint: another thread
    // may queue work right after; lock-free).
    bool idle() const;

    // Runs fn on the calling thread, now, when every stream in streams[0..count) is idle (nothing queued or running;
    // a stream may be listed twice), and returns true; otherwise runs nothing and returns false (the caller then
    // queues the work as usual). While fn runs the listed streams count as busy: work queued on them meanwhile waits
    // behind it and synchronize waits for it. fn is ordinary work: an exception it throws is recorded as the pending
    // error of every listed stream (reported by their next synchronize), exactly as if it had run queued. Streams
    // with a pending error are not idle (false: the queued path applies the skip rule). From a stream worker (where
    // it must not be called) it returns false. The streams are locked in address order, so concurrent calls with
    // overlapping lists cannot deadlock.
    static bool run_inline_if_idle(Stream* const* streams, int count, const std::function<void()>& fn);

    // Called from an operation running on this stream: the pending error's message, or empty.
    std::string pending_error() const;

    // The median, over `rounds` trips, of the time (ns) from queueing an empty operation on this stream to the
    // caller learning that it ran, the caller sleeping meanwhile: the cost of one hand-off to the worker and
    // back. Leaves the stream's error state alone. For the CPU backend's choice between queueing and inlining.
    double measure_round_trip_ns(int rounds);

private:
    void run();
    // Pops the front operation and runs it (mu_ held by `lock` on entry and exit, released while it runs): the skip
    // rule, the error record, the completion count and its notification; `busy` (worker_busy_ on the worker,
    // inline_busy_ on a synchronizing caller) is set meanwhile.
    void run_front(std::unique_lock<std::mutex>& lock, bool& busy);
    // Records an error (first one wins) and one completed operation; mu_ held. Wakes the threads waiting in
    // cv_done_ once the count reaches the lowest target one of them registered (wait_done), not at every operation:
    // a caller waiting for 200 queued collectives is woken once, not 200 times.
    void complete_locked(sw_status status, std::string&& message);
    // Waits (mu_ held through `lock`) until completed_ >= target.
    void wait_done(std::unique_lock<std::mutex>& lock, uint64_t target);

    struct Op {
        std::function<void()> fn;
        bool always;
    };
    mutable std::mutex mu_;
    std::condition_variable cv_work_, cv_done_;
    std::deque<Op> queue_;
    // Operations queued (or running inline) / finished. Written under mu_; read without it by idle() and the
    // fast path of synchronize. completed_ is stored (release) after error_flag_, so whoever sees the count
    // sees the error too.
    std::atomic<uint64_t> enqueued_{0}, completed_{0};
    std::atomic<bool> error_flag_{false}; // error_ != SW_OK
    bool inline_busy_ = false;            // fn of run_inline_if_idle, or an operation synchronize took from the
                                          // queue, is running on a caller: the worker must not start work
    bool worker_busy_ = false;            // the worker runs an operation: synchronize must not take the next one
    sw_status error_ = SW_OK;
    std::string error_message_;
    bool stop_ = false;
    uint64_t wake_at_ = UINT64_MAX; // the lowest completed_ a thread in cv_done_ waits for (UINT64_MAX: none)
    std::thread worker_;
};

} // namespace sw::cpu
