#include "cpu/gemm_grouped_submit.h"

#include "core/error.h"
#include "core/objects.h"
#include "cpu/gemm.h"
#include "cpu/stream.h"
#include "cpu/thread_pool.h"

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sw::cpu {
namespace {

// One queued group: its members, their storages, and the barrier the distinct streams meet at.
struct GroupJob {
    std::shared_ptr<DeviceImpl> dev; // keeps the pool alive
    Kernel kernel = Kernel::Auto;
    std::vector<GemmProblem> problems;
    std::vector<KeepAlive> keeps;
    std::vector<int32_t> slot; // member -> index of its stream among the distinct ones
    int32_t distinct = 0;

    std::mutex mu;
    std::condition_variable cv;
    int32_t arrived = 0;
    bool done = false;
    bool abandoned = false;    // queueing failed part way: release the arrivals with the error
    std::vector<char> skipped; // per distinct stream: it had a pending error when it arrived
    sw_status status = SW_OK;  // of the computation, reported on every listed stream
    std::string message;

    // On the last stream to arrive: every member whose stream has no pending error, as one cpu::gemm_grouped.
    void compute() {
        try {
            std::vector<GemmProblem> run;
            const GemmProblem* p = problems.data();
            int32_t n = static_cast<int32_t>(problems.size());
            bool any_skipped = false;
            for (char s : skipped) any_skipped |= s != 0;
            if (any_skipped) {
                run.reserve(problems.size());
                for (size_t i = 0; i < problems.size(); ++i)
                    if (!skipped[static_cast<size_t>(slot[i])]) run.push_back(problems[i]);
                p = run.data();
                n = static_cast<int32_t>(run.size());
            }
            if (n > 0) gemm_grouped(p, n, kernel, *dev->pool);
        } catch (const Error& e) {
            status = e.status();
            message = e.message();
        } catch (const std::bad_alloc&) {
            status = SW_ERR_OUT_OF_MEMORY;
            message = "out of memory while running a grouped GEMM";
        } catch (const std::exception& e) {
            status = SW_ERR_INTERNAL;
            message = str("internal error in a grouped GEMM: ", e.what());
        } catch (...) {
            status = SW_ERR_INTERNAL;
            message = "internal error in a grouped GEMM: unknown exception";
        }
        keeps.clear(); // the storages may go now
    }

    // The `always` operation of distinct stream j (running on that stream's worker).
    void arrive(int32_t j, const Stream& stream) {
        const bool pending = !stream.pending_error().empty();
        bool last;
        {
            std::lock_guard<std::mutex> lock(mu);
            skipped[static_cast<size_t>(j)] = pending;
            last = ++arrived == distinct && !abandoned;
        }
        if (last) {
            compute();
            {
                std::lock_guard<std::mutex> lock(mu);
                done = true;
            }
            cv.notify_all();
        } else {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait(lock, [&] { return done; });
        }
        // Every listed stream reports a failure of the computation (a stream with an earlier error keeps that one).
        if (status != SW_OK) throw Error(status, message);
    }
};

} // namespace

void submit_gemm_grouped(sw_stream_s* const* streams, const GemmProblem* problems, KeepAlive* keeps, int32_t count) {
    std::shared_ptr<DeviceImpl> dev = streams[0]->device_impl;
    const auto kernel = static_cast<Kernel>(dev->kernel.load());

    // The fast path: every listed stream idle -> run now, on this thread (the storages are the caller's until then).
    constexpr int32_t kInline = 16;
    Stream* local[kInline];
    std::vector<Stream*> many;
    Stream** list = local;
    if (count > kInline) {
        many.resize(static_cast<size_t>(count));
        list = many.data();
    }
    for (int32_t i = 0; i < count; ++i) list[i] = streams[i]->impl.get();
    struct Args {
        const GemmProblem* problems;
        int32_t count;
        Kernel kernel;
        ThreadPool* pool;
    } args{problems, count, kernel, dev->pool.get()};
    // One pointer captured: the std::function keeps it inline (no allocation on the fast path).
    if (Stream::run_inline_if_idle(list, count, [a = &args] { gemm_grouped(a->problems, a->count, a->kernel, *a->pool); }))
        return;

    // The queued path: one barrier operation per distinct stream.
    auto job = std::make_shared<GroupJob>();
    job->dev = std::move(dev);
    job->kernel = kernel;
    job->problems.assign(problems, problems + count);
    job->keeps.reserve(static_cast<size_t>(count));
    for (int32_t i = 0; i < count; ++i) job->keeps.push_back(std::move(keeps[i]));
    job->slot.resize(static_cast<size_t>(count));
    std::vector<Stream*> distinct;
    distinct.reserve(static_cast<size_t>(count));
    std::unordered_map<Stream*, int32_t> index; // large groups only (a linear search is quadratic)
    for (int32_t i = 0; i < count; ++i) {
        int32_t j = static_cast<int32_t>(distinct.size());
        if (count <= 64) {
            for (int32_t q = 0; q < j; ++q)
                if (distinct[static_cast<size_t>(q)] == list[i]) j = q;
        } else {
            j = index.emplace(list[i], j).first->second;
        }
        if (j == static_cast<int32_t>(distinct.size())) distinct.push_back(list[i]);
        job->slot[static_cast<size_t>(i)] = j;
    }
    job->distinct = static_cast<int32_t>(distinct.size());
    job->skipped.assign(distinct.size(), 0);
    // Every enqueue below must happen, or the streams already given their operation would wait forever: nothing
    // between them throws but enqueue's allocation, so each operation is built before the first is queued.
    std::vector<std::function<void()>> ops;
    ops.reserve(distinct.size());
    for (size_t j = 0; j < distinct.size(); ++j) {
        Stream* s = distinct[j];
        ops.emplace_back([job, j = static_cast<int32_t>(j), s] { job->arrive(j, *s); });
    }
    size_t queued = 0;
    try {
        for (; queued < distinct.size(); ++queued) distinct[queued]->enqueue(std::move(ops[queued]), /*always=*/true);
    } catch (...) {
        // Out of memory after some streams got their operation: release them with the error, compute nothing.
        {
            std::lock_guard<std::mutex> lock(job->mu);
            job->abandoned = true;
            job->status = SW_ERR_OUT_OF_MEMORY;
            job->message = "out of memory while queueing a grouped GEMM (the group did not run)";
            job->done = true;
        }
        job->cv.notify_all();
        throw;
    }
}

} // namespace sw::cpu
