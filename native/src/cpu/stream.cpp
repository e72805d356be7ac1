#include "cpu/stream.h"

#include "core/error.h"

namespace sw::cpu {

namespace {
thread_local bool t_on_stream_worker = false;
}

bool on_stream_worker() { return t_on_stream_worker; }

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
        ++enqueued_;
    }
    cv_work_.notify_one();
}

sw_status Stream::synchronize(std::string* message) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t target = enqueued_;
    cv_done_.wait(lock, [&] { return completed_ >= target; });
    const sw_status status = error_;
    if (message) *message = error_message_;
    error_ = SW_OK;
    error_message_.clear();
    return status;
}

std::string Stream::pending_error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_ == SW_OK ? std::string() : error_message_;
}

// Contract stub (issue 15): never inline yet. Part A implements it.
bool Stream::run_inline_if_idle(Stream* const*, int, const std::function<void()>&) { return false; }

void Stream::run() {
    t_on_stream_worker = true;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        cv_work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) {
            if (stop_) return; // drained
            continue;
        }
        Op op = std::move(queue_.front());
        queue_.pop_front();
        const bool skip = error_ != SW_OK && !op.always;
        lock.unlock();
        sw_status status = SW_OK;
        std::string message;
        if (!skip) {
            try {
                op.fn();
            } catch (const Error& e) {
                status = e.status();
                message = e.message();
            } catch (const std::bad_alloc&) {
                status = SW_ERR_OUT_OF_MEMORY;
                message = "out of memory while running queued work";
            } catch (const std::exception& e) {
                status = SW_ERR_INTERNAL;
                message = str("internal error in queued work: ", e.what());
            } catch (...) {
                status = SW_ERR_INTERNAL;
                message = "internal error in queued work: unknown exception";
            }
        }
        op.fn = nullptr; // release captured references outside the lock's critical path
        lock.lock();
        if (status != SW_OK && error_ == SW_OK) {
            error_ = status;
            error_message_ = std::move(message);
        }
        ++completed_;
        cv_done_.notify_all();
    }
}

} // namespace sw::cpu
