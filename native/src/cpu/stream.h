// In-order asynchronous work queue of the CPU backend: one worker thread per stream, like a CUDA stream.
// Compute-heavy operations hand their tiles to the device's ThreadPool and wait, so the worker threads
// of many streams do not oversubscribe the machine.
#pragma once
#include "shardwise.h"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace sw::cpu {

// True on a stream's worker thread (while it runs queued work). Code that must not block there — freeing
// CUDA memory, which waits for the whole device — checks it.
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
    // report (SW_OK if none) with its message, and clears it.
    sw_status synchronize(std::string* message);

    // Runs fn on the calling thread, now, when every stream in streams[0..count) is idle (nothing queued or running;
    // a stream may be listed twice), and returns true; otherwise runs nothing and returns false (the caller then
    // queues the work as usual). While fn runs the listed streams count as busy: work queued on them meanwhile waits
    // behind it and synchronize waits for it. fn is ordinary work: an exception it throws is recorded as the pending
    // error of every listed stream (reported by their next synchronize), exactly as if it had run queued. Streams
    // with a pending error are not idle (false: the queued path applies the skip rule). Never from a stream worker.
    static bool run_inline_if_idle(Stream* const* streams, int count, const std::function<void()>& fn);

    // Called from an operation running on this stream: the pending error's message, or empty.
    std::string pending_error() const;

private:
    void run();

    struct Op {
        std::function<void()> fn;
        bool always;
    };
    mutable std::mutex mu_;
    std::condition_variable cv_work_, cv_done_;
    std::deque<Op> queue_;
    uint64_t enqueued_ = 0, completed_ = 0;
    sw_status error_ = SW_OK;
    std::string error_message_;
    bool stop_ = false;
    std::thread worker_;
};

} // namespace sw::cpu
