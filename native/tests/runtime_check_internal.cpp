// Checks of the CPU runtime: the stream's inline path (sw::cpu::Stream::run_inline_if_idle, cpu/stream.h), the idle
// fast paths, and the thread pool's concurrency rules (sw::cpu::ThreadPool, cpu/thread_pool.h).
//
//  - inline work runs on the caller, in order with work queued meanwhile from another thread (the worker must not
//    start it early), synchronize waits for it, and an operation queued after it sees its effects;
//  - an inline exception becomes the pending error of every listed stream (reported once each, duplicates included);
//    a stream with a pending error or queued work is not inlined, and the skip rule still holds;
//  - concurrent inline calls over overlapping stream lists in opposite orders finish (address-ordered locking);
//  - stress: several threads mixing inline and queued work on their own and shared streams (~1 s), order checked;
//  - synchronize runs queued work on the caller (order, exclusivity, skip and error rules, never past the call,
//    never on a worker; none with the switch off);
//  - destruction while idle, from a stream worker (refused), the round-trip measurement;
//  - through the C ABI: sw_gemm and sw_gelu give the same bits whether they run inline (policy always), queued
//    (never) or by the measured rule (auto), and match a float64 reference (fresh random data, NaN-poisoned outputs);
//    under auto a 1 x 64 x 64 GEMM is finished when sw_gemm returns (inline), a 1024^3 one is estimated above the
//    threshold (queued), and the costs were measured; copies and fills likewise; an event recorded on an idle stream
//    is complete at once;
//  - the pool: 4 concurrent callers making many rapid small calls never run more than N tasks at once (N = 1, 2, 3;
//    counted with atomics), every index once; the caller runs tasks (all of them on a pool of 1, a single task on
//    any pool); exceptions of caller-run and pool-run tasks; nested calls from a caller-run task; destruction.
// Every wait is bounded: a hang is reported as a failure and ends the program (exit 1) within seconds.
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "cpu/call_path.h"
#include "cpu/stream.h"
#include "cpu/thread_pool.h"

using sw::cpu::Stream;
using sw::cpu::ThreadPool;
using Clock = std::chrono::steady_clock;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        ++g_checks;                                                        \
        if (!(cond)) {                                                     \
            ++g_failures;                                                  \
            std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            std::fprintf(stderr, __VA_ARGS__);                             \
            std::fprintf(stderr, "\n");                                    \
        }                                                                  \
    } while (0)

// Runs fn on a helper thread and waits at most `seconds` for it. A hang cannot be recovered (the thread is stuck):
// it is reported and the program ends with a failure.
void bounded(const char* what, double seconds, const std::function<void()>& fn) {
    auto state = std::make_shared<std::atomic<bool>>(false);
    std::thread t([state, fn] {
        fn();
        state->store(true);
    });
    const auto until = Clock::now() + std::chrono::duration<double>(seconds);
    while (!state->load() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!state->load()) {
        std::fprintf(stderr, "FAIL: %s did not finish within %.1f s (hang)\n", what, seconds);
        std::fflush(stderr);
        std::_Exit(1);
    }
    t.join();
}

// A one-shot latch.
struct Latch {
    std::mutex m;
    std::condition_variable cv;
    bool open = false;
    void release() {
        std::lock_guard<std::mutex> g(m);
        open = true;
        cv.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> lk(m);
        cv.wait(lk, [&] { return open; });
    }
};

sw_status sync(Stream& s, std::string* msg = nullptr) {
    std::string m;
    const sw_status st = s.synchronize(&m);
    if (msg) *msg = m;
    return st;
}

void check_inline_basics() {
    Stream s;
    CHECK(s.idle(), "a new stream is not idle");
    Stream* list[] = {&s};
    std::thread::id ran_on;
    const bool inl = Stream::run_inline_if_idle(list, 1, [&] { ran_on = std::this_thread::get_id(); });
    CHECK(inl, "run_inline_if_idle refused an idle stream");
    CHECK(ran_on == std::this_thread::get_id(), "inline work did not run on the caller's thread");
    CHECK(s.idle(), "stream not idle after inline work");
    CHECK(sync(s) == SW_OK, "synchronize after inline work");

    // Busy (an operation running): refused, fn not run.
    Latch gate, started;
    s.enqueue([&] {
        started.release();
        gate.wait();
    });
    started.wait();
    bool ran = false;
    CHECK(!s.idle(), "stream idle while an operation runs");
    CHECK(!Stream::run_inline_if_idle(list, 1, [&] { ran = true; }), "inlined on a busy stream");
    CHECK(!ran, "fn ran although run_inline_if_idle returned false");
    gate.release();
    bounded("synchronize of a drained stream", 5, [&] { CHECK(sync(s) == SW_OK, "synchronize"); });
    CHECK(Stream::run_inline_if_idle(list, 1, [] {}), "refused after the queue drained");

    // count < 1: refused.
    CHECK(!Stream::run_inline_if_idle(list, 0, [] {}), "count 0 accepted");

    // From a stream worker: refused (the worker must never run another stream's work inline).
    Stream other;
    Stream* olist[] = {&other};
    std::atomic<int> answer{-1};
    s.enqueue([&] { answer = Stream::run_inline_if_idle(olist, 1, [] {}) ? 1 : 0; });
    bounded("synchronize", 5, [&] { sync(s); });
    CHECK(answer.load() == 0, "run_inline_if_idle from a stream worker returned %d, expected refusal", answer.load());
}

// Work queued from another thread while inline work runs waits behind it; synchronize waits for it; an operation
// queued after it sees its effects (as an event marker would).
void check_inline_ordering() {
    for (int rep = 0; rep < 20; ++rep) {
        Stream s;
        Stream* list[] = {&s};
        std::mutex om;
        std::vector<int> order;
        auto note = [&](int v) {
            std::lock_guard<std::mutex> g(om);
            order.push_back(v);
        };
        Latch inline_started, queued;
        std::atomic<bool> inline_done{false}, sync_saw_done{false}, marker_saw_done{false};
        std::thread other([&] {
            inline_started.wait();
            s.enqueue([&] { note(2); });
            s.enqueue([&] { marker_saw_done = inline_done.load(); }, /*always=*/true);
            queued.release();
            sync(s);
            sync_saw_done = inline_done.load();
        });
        bounded("inline ordering", 5, [&] {
            const bool inl = Stream::run_inline_if_idle(list, 1, [&] {
                note(1);
                inline_started.release();
                queued.wait();
                // Give a misbehaving worker every chance to start the queued work now.
                std::this_thread::sleep_for(std::chrono::milliseconds(rep < 2 ? 20 : 1));
                note(3);
                inline_done = true;
            });
            CHECK(inl, "inline refused on an idle stream");
            other.join();
        });
        CHECK(order.size() == 3 && order[0] == 1 && order[1] == 3 && order[2] == 2,
              "queued work ran before the inline work finished (order %d %d %d)", order.size() > 0 ? order[0] : -1,
              order.size() > 1 ? order[1] : -1, order.size() > 2 ? order[2] : -1);
        CHECK(sync_saw_done.load(), "synchronize returned before the inline work finished");
        CHECK(marker_saw_done.load(), "an operation queued after the inline work ran before it finished");
    }
}

void check_inline_errors() {
    Stream a, b;
    // Duplicates: a twice, b once. fn runs once; the error reaches both streams, once each.
    Stream* list[] = {&a, &b, &a};
    int runs = 0;
    const bool inl = Stream::run_inline_if_idle(list, 3, [&] {
        ++runs;
        sw::fail(SW_ERR_INVALID_ARGUMENT, "planted failure 42");
    });
    CHECK(inl, "inline refused for [a, b, a]");
    CHECK(runs == 1, "fn ran %d times for a list with a duplicate", runs);
    CHECK(!a.idle() && !b.idle(), "a stream with a pending error reads as idle");

    // A pending error: not inlined; ordinary queued work is skipped, `always` work runs.
    Stream* la[] = {&a};
    bool ran = false;
    CHECK(!Stream::run_inline_if_idle(la, 1, [&] { ran = true; }), "inlined on a stream with a pending error");
    CHECK(!ran, "fn ran on a refused stream");
    std::atomic<int> ordinary{0}, always{0};
    a.enqueue([&] { ordinary++; });
    a.enqueue([&] { always++; }, /*always=*/true);

    std::string msg;
    bounded("synchronize a", 5, [&] { CHECK(sync(a, &msg) == SW_ERR_INVALID_ARGUMENT, "a: error not reported"); });
    CHECK(msg == "planted failure 42", "a: message '%s'", msg.c_str());
    CHECK(ordinary.load() == 0 && always.load() == 1, "skip rule: ordinary ran %d, always ran %d", ordinary.load(),
          always.load());
    bounded("synchronize b", 5, [&] { CHECK(sync(b, &msg) == SW_ERR_INVALID_ARGUMENT, "b: error not reported"); });
    CHECK(msg == "planted failure 42", "b: message '%s'", msg.c_str());
    CHECK(sync(a) == SW_OK && sync(b) == SW_OK, "an error was reported twice");
    CHECK(Stream::run_inline_if_idle(list, 3, [] {}), "inline refused after the errors were reported");

    // Other exception types map like queued work's.
    CHECK(Stream::run_inline_if_idle(la, 1, [] { throw std::runtime_error("boom"); }), "inline refused");
    CHECK(sync(a, &msg) == SW_ERR_INTERNAL && msg.find("boom") != std::string::npos, "runtime_error -> '%s'",
          msg.c_str());
    CHECK(Stream::run_inline_if_idle(la, 1, [] { throw std::bad_alloc(); }), "inline refused");
    CHECK(sync(a) == SW_ERR_OUT_OF_MEMORY, "bad_alloc not reported as out of memory");

    // An error of queued work first: the first error wins, the inline one is not recorded over it.
    a.enqueue([] { sw::fail(SW_ERR_NOT_FOUND, "queued failure"); });
    bounded("wait", 5, [&] {
        while (a.idle() == false && a.pending_error().empty()) std::this_thread::yield();
    });
    CHECK(!Stream::run_inline_if_idle(la, 1, [] {}), "inlined behind a queued failure");
    CHECK(sync(a, &msg) == SW_ERR_NOT_FOUND && msg == "queued failure", "queued failure -> '%s'", msg.c_str());
}

// Two threads inline over [x, y] and [y, x] many times; a third queues on both. No deadlock, every fn ran once
// per success, and the queued work all ran.
void check_inline_lock_order() {
    Stream x, y;
    std::atomic<int64_t> inlined{0}, queued{0}, ran{0};
    bounded("concurrent inline over overlapping lists", 10, [&] {
        std::vector<std::thread> th;
        for (int t = 0; t < 2; ++t)
            th.emplace_back([&, t] {
                Stream* l[] = {t ? &y : &x, t ? &x : &y};
                for (int i = 0; i < 3000; ++i) {
                    if (Stream::run_inline_if_idle(l, 2, [&] { ran++; }))
                        inlined++;
                    else {
                        queued++;
                        l[i & 1]->enqueue([&] { ran++; });
                    }
                }
            });
        th.emplace_back([&] {
            for (int i = 0; i < 500; ++i) {
                queued++;
                (i & 1 ? x : y).enqueue([&] { ran++; });
            }
        });
        for (auto& t : th) t.join();
        sync(x);
        sync(y);
    });
    CHECK(ran.load() == inlined.load() + queued.load(), "ran %lld, expected %lld", static_cast<long long>(ran.load()),
          static_cast<long long>(inlined.load() + queued.load()));
    CHECK(inlined.load() > 0, "nothing was inlined");
}

// Several threads, each with its own stream, alternate inline attempts and queued work (some slow), plus work on a
// shared stream; every operation checks that it runs in its stream's submission order. About a second.
void check_inline_stress() {
    constexpr int kThreads = 4;
    Stream shared;
    std::atomic<int64_t> shared_ran{0}, shared_sub{0};
    std::atomic<int> bad{0};
    std::atomic<int64_t> total_inline{0};
    bounded("inline stress", 20, [&] {
        std::vector<std::thread> th;
        for (int t = 0; t < kThreads; ++t)
            th.emplace_back([&, t] {
                Stream own;
                Stream* l[] = {&own};
                Stream* both[] = {&own, &shared};
                int64_t next = 0;          // submission number of the next operation
                int64_t last = -1;         // last number run (touched only by that stream's work, in order)
                uint32_t rng = 12345u + static_cast<uint32_t>(t);
                const auto until = Clock::now() + std::chrono::milliseconds(800);
                while (Clock::now() < until) {
                    for (int i = 0; i < 64; ++i) {
                        rng = rng * 1664525u + 1013904223u;
                        const int64_t me = next++;
                        auto op = [&last, &bad, me] {
                            if (last != me - 1) bad++;
                            last = me;
                        };
                        const int kind = static_cast<int>(rng >> 28);
                        if (kind < 8) {
                            if (Stream::run_inline_if_idle(l, 1, op))
                                total_inline++;
                            else
                                own.enqueue(op);
                        } else if (kind < 10) {
                            own.enqueue([op] {
                                std::this_thread::sleep_for(std::chrono::microseconds(50));
                                op();
                            });
                        } else if (kind < 12) {
                            shared_sub++;
                            if (!Stream::run_inline_if_idle(both, 2, [&, op] {
                                    op();
                                    shared_ran++;
                                })) {
                                own.enqueue(op);
                                shared.enqueue([&] { shared_ran++; });
                            }
                        } else {
                            own.enqueue(op);
                        }
                    }
                    if ((rng >> 30) == 0) sync(own); // high bits: the low bits of this generator have period 4
                }
                sync(own);
                if (last != next - 1) bad++;
            });
        for (auto& t : th) t.join();
        sync(shared);
    });
    CHECK(bad.load() == 0, "stress: %d operations ran out of submission order", bad.load());
    CHECK(shared_ran.load() == shared_sub.load(), "stress: shared stream ran %lld of %lld",
          static_cast<long long>(shared_ran.load()), static_cast<long long>(shared_sub.load()));
    CHECK(total_inline.load() > 0, "stress: nothing was inlined");
}

// synchronize runs queued work the worker has not started on the calling thread (cpu/stream.h): it does (some of
// 2000 tries; none with the switch off), one operation at a time in queue order beside the worker and other
// synchronizing threads, with the skip and error rules, never past what was queued before the call, and never on a
// stream worker.
void check_sync_runs_work() {
    {
        Stream s;
        int on_caller = 0;
        std::thread::id helper; // bounded() runs its function on a helper thread: the caller is that thread
        bounded("synchronize runs work", 20, [&] {
            helper = std::this_thread::get_id();
            for (int t = 0; t < 2000 && on_caller < 5; ++t) {
                std::thread::id ran;
                s.enqueue([&] { ran = std::this_thread::get_id(); });
                sync(s);
                if (ran == helper) ++on_caller;
            }
        });
        CHECK(on_caller > 0, "synchronize never ran queued work on the caller in 2000 tries");
        Stream::set_synchronize_runs_work(false);
        int off_caller = 0;
        bounded("synchronize (switch off)", 20, [&] {
            helper = std::this_thread::get_id();
            for (int t = 0; t < 300; ++t) {
                std::thread::id ran;
                s.enqueue([&] { ran = std::this_thread::get_id(); });
                sync(s);
                if (ran == helper) ++off_caller;
            }
        });
        Stream::set_synchronize_runs_work(true);
        CHECK(off_caller == 0, "with the switch off, synchronize ran %d operations on the caller", off_caller);
    }
    {   // order and exclusivity: one submitter, two more threads synchronizing all the time, and the worker
        Stream s;
        std::atomic<int> running{0}, overlap{0}, bad{0};
        std::atomic<bool> done{false};
        int64_t last = -1;
        bounded("synchronize stress", 20, [&] {
            std::vector<std::thread> th;
            for (int t = 0; t < 2; ++t)
                th.emplace_back([&] {
                    while (!done.load()) sync(s);
                });
            uint32_t rng = 99u;
            for (int64_t i = 0; i < 20000; ++i) {
                s.enqueue([&, i] {
                    if (running.fetch_add(1) != 0) overlap++;
                    if (last != i - 1) bad++;
                    last = i;
                    running.fetch_sub(1);
                });
                rng = rng * 1664525u + 1013904223u;
                if ((rng >> 29) == 0) sync(s);
            }
            sync(s);
            done.store(true);
            for (auto& t : th) t.join();
        });
        CHECK(overlap.load() == 0, "synchronize ran %d operations beside another one", overlap.load());
        CHECK(bad.load() == 0 && last == 19999, "synchronize stress: %d out of order, last %lld", bad.load(),
              static_cast<long long>(last));
    }
    {   // skip and error rules on the caller's path as on the worker's
        int fails = 0;
        for (int t = 0; t < 50; ++t) {
            Stream s;
            bool plain = false, always = false;
            s.enqueue([] { throw sw::Error(SW_ERR_INVALID_ARGUMENT, "planted"); });
            s.enqueue([&] { plain = true; });
            s.enqueue([&] { always = true; }, /*always=*/true);
            std::string msg;
            sw_status st = SW_OK;
            bounded("synchronize with an error", 5, [&] { st = sync(s, &msg); });
            if (st != SW_ERR_INVALID_ARGUMENT || msg.find("planted") == std::string::npos || plain || !always) ++fails;
            bounded("synchronize after the error", 5, [&] { st = sync(s); });
            if (st != SW_OK) ++fails;
        }
        CHECK(fails == 0, "synchronize's skip and error rules broke in %d of 50 runs", fails);
    }
    {   // never past the call: an operation queued by an operation (after synchronize began) is not run by it
        int late_on_caller = 0;
        Stream s;
        bounded("synchronize bound", 20, [&] {
            const std::thread::id helper = std::this_thread::get_id();
            for (int t = 0; t < 300; ++t) {
                std::atomic<std::thread::id> late{};
                Latch second;
                s.enqueue([&] {
                    s.enqueue([&] {
                        late = std::this_thread::get_id();
                        second.release();
                    });
                });
                sync(s);
                if (late.load() == helper) ++late_on_caller;
                second.wait();
                sync(s);
            }
        });
        CHECK(late_on_caller == 0, "synchronize ran %d operations queued after it began", late_on_caller);
    }
    {   // from a stream worker: it waits, it does not take another stream's work
        Stream a, b;
        std::thread::id worker_a, ran_b;
        for (int t = 0; t < 100; ++t) {
            Latch finished; // waited on instead of a.synchronize (which could take the operation off a's worker)
            a.enqueue([&] {
                worker_a = std::this_thread::get_id();
                b.enqueue([&] { ran_b = std::this_thread::get_id(); });
                sync(b);
                finished.release();
            });
            bounded("synchronize from a worker", 5, [&] {
                finished.wait();
                sync(a);
            });
            CHECK(ran_b != worker_a, "a stream worker ran another stream's work in synchronize");
            if (ran_b == worker_a) break;
        }
    }
}

void check_destruction_and_round_trip() {
    bounded("destruction while idle", 5, [&] {
        for (int i = 0; i < 50; ++i) {
            auto s = std::make_unique<Stream>();
            Stream* l[] = {s.get()};
            int v = 0;
            Stream::run_inline_if_idle(l, 1, [&] { v = 1; });
            CHECK(v == 1, "inline did not run");
            if (i & 1) s->enqueue([] {});
            s.reset(); // drains, joins
        }
    });
    Stream s;
    double ns = 0;
    bounded("round trip", 5, [&] { ns = s.measure_round_trip_ns(5); });
    CHECK(ns > 0 && ns < 1e9, "round trip %g ns", ns);
    CHECK(s.idle(), "stream not idle after the round-trip measurement");
    std::printf("stream round trip (median of 5): %.1f us\n", ns / 1000);
}


// p concurrent callers on one pool of budget N, many rapid calls of 1..9 short tasks each: never more than N tasks
// running at once (counted with atomics), every index of every call exactly once. About 0.3 s per pool size.
void check_pool_budget() {
    for (int nt : {1, 2, 3}) {
        ThreadPool pool(nt);
        std::atomic<int> running{0}, peak{0}, bad{0};
        std::atomic<int64_t> calls{0};
        bounded("pool budget", 20, [&] {
            std::vector<std::thread> th;
            for (int c = 0; c < 4; ++c)
                th.emplace_back([&, c] {
                    uint32_t rng = 777u + static_cast<uint32_t>(c);
                    std::vector<std::atomic<int>> hits(9);
                    const auto until = Clock::now() + std::chrono::milliseconds(300);
                    while (Clock::now() < until) {
                        rng = rng * 1664525u + 1013904223u;
                        const int64_t n = 1 + static_cast<int64_t>(rng >> 28) % 9;
                        for (auto& h : hits) h.store(0);
                        pool.parallel_for(n, [&](int64_t i) {
                            const int now = running.fetch_add(1) + 1;
                            int p = peak.load();
                            while (now > p && !peak.compare_exchange_weak(p, now)) {
                            }
                            hits[static_cast<size_t>(i)].fetch_add(1);
                            const auto t0 = Clock::now();
                            while (Clock::now() - t0 < std::chrono::microseconds(i % 3 == 0 ? 20 : 2)) {
                            }
                            running.fetch_sub(1);
                        });
                        for (int64_t i = 0; i < 9; ++i)
                            if (hits[static_cast<size_t>(i)].load() != (i < n ? 1 : 0)) bad++;
                        calls++;
                    }
                });
            for (auto& t : th) t.join();
        });
        CHECK(peak.load() <= nt, "pool of %d: %d tasks ran at once", nt, peak.load());
        CHECK(bad.load() == 0, "pool of %d: %d indexes not run exactly once", nt, bad.load());
        std::printf("pool of %d: %lld calls from 4 threads, peak %d tasks at once\n", nt,
                    static_cast<long long>(calls.load()), peak.load());
    }
}

// The caller takes part: on a pool of 1 every task runs on the caller's thread; a single task runs there on any
// pool. Exceptions of caller-run and pool-run tasks are rethrown after all tasks; nested calls from a caller-run task
// run inline; the pool works afterwards.
void check_pool_caller() {
    {
        ThreadPool pool(1);
        const auto me = std::this_thread::get_id();
        std::atomic<int> elsewhere{0};
        pool.parallel_for(7, [&](int64_t) {
            if (std::this_thread::get_id() != me) elsewhere++;
        });
        CHECK(elsewhere.load() == 0, "pool of 1: %d tasks ran off the caller's thread", elsewhere.load());
    }
    for (int nt : {1, 2, 3}) {
        ThreadPool pool(nt);
        std::thread::id ran_on;
        pool.parallel_for(1, [&](int64_t) { ran_on = std::this_thread::get_id(); });
        CHECK(ran_on == std::this_thread::get_id(), "pool of %d: a single task did not run on the caller", nt);
        bool caught = false;
        try {
            pool.parallel_for(1, [](int64_t) { throw std::runtime_error("single"); });
        } catch (const std::runtime_error& e) {
            caught = std::strcmp(e.what(), "single") == 0;
        }
        CHECK(caught, "pool of %d: exception of a single task not rethrown", nt);
        for (int rep = 0; rep < 50; ++rep) {
            std::atomic<int> ran{0};
            caught = false;
            try {
                pool.parallel_for(6, [&](int64_t i) {
                    ran++;
                    if (i == rep % 6) throw std::runtime_error("task");
                });
            } catch (const std::runtime_error&) {
                caught = true;
            }
            CHECK(caught && ran.load() == 6, "pool of %d: exception lost or tasks skipped (%d ran)", nt, ran.load());
        }
        std::atomic<int64_t> sum{0};
        bounded("nested", 5, [&] {
            pool.parallel_for(3, [&](int64_t i) { pool.parallel_for(3, [&](int64_t j) { sum += i * 3 + j; }); });
        });
        CHECK(sum.load() == 36, "pool of %d: nested sum %lld", nt, static_cast<long long>(sum.load()));
    }
    // Destruction right after use and while idle.
    bounded("pool destruction", 5, [] {
        for (int i = 0; i < 20; ++i) {
            ThreadPool pool(1 + i % 3);
            if (i & 1) pool.parallel_for(5, [](int64_t) {});
        }
    });
}


#define OKC(call)                                                                                        \
    do {                                                                                                 \
        const sw_status st_ = (call);                                                                    \
        CHECK(st_ == SW_OK, "%s -> %s: %s", #call, sw_status_string(st_), sw_last_error());             \
    } while (0)

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::vector<float> v(n);
    for (float& x : v) {
        seed = seed * 1664525u + 1013904223u;
        x = static_cast<float>(seed >> 8) / 16777216.0f - 0.5f;
    }
    return v;
}

// sw_gemm and sw_gelu through the C ABI under each policy: identical bits, float64 reference.
void check_api_paths() {
    using sw::cpu::InlinePolicy;
    sw_device dev = nullptr;
    sw_stream st = nullptr;
    OKC(sw_device_create(SW_BACKEND_CPU, 0, 2, &dev));
    OKC(sw_stream_create(dev, &st));
    if (!dev || !st) return;
    struct Shape { int64_t m, n, k; };
    const Shape shapes[] = {{1, 64, 64}, {64, 64, 64}, {128, 128, 128}, {37, 70, 129}, {3, 300, 5}};
    uint32_t seed = 99u;
    for (const Shape& sh : shapes) {
        const auto a = random_floats(static_cast<size_t>(sh.m * sh.k), seed++);
        const auto b = random_floats(static_cast<size_t>(sh.k * sh.n), seed++);
        const auto bias = random_floats(static_cast<size_t>(sh.n), seed++);
        std::vector<float> c(static_cast<size_t>(sh.m * sh.n));
        sw_buffer ba = nullptr, bb = nullptr, bc = nullptr, bbias = nullptr;
        OKC(sw_buffer_wrap(dev, const_cast<float*>(a.data()), a.size() * 4, &ba));
        OKC(sw_buffer_wrap(dev, const_cast<float*>(b.data()), b.size() * 4, &bb));
        OKC(sw_buffer_wrap(dev, c.data(), c.size() * 4, &bc));
        OKC(sw_buffer_wrap(dev, const_cast<float*>(bias.data()), bias.size() * 4, &bbias));
        std::vector<float> results[3];
        const InlinePolicy policies[3] = {InlinePolicy::Never, InlinePolicy::Always, InlinePolicy::Auto};
        for (int pi = 0; pi < 3; ++pi) {
            sw::cpu::set_inline_policy(policies[pi]);
            std::fill(c.begin(), c.end(), std::nanf(""));
            OKC(sw_gemm(st, SW_DTYPE_F32, SW_OP_N, SW_OP_N, sh.m, sh.n, sh.k, 1.0f, ba, 0, sh.k, bb, 0, sh.n, 0.0f, bc, 0,
                        sh.n, bbias, 0, SW_EPILOGUE_NONE));
            if (policies[pi] == InlinePolicy::Always || (policies[pi] == InlinePolicy::Auto && sh.m == 1)) {
                // Inline: finished when sw_gemm returns (read before synchronize).
                bool written = true;
                for (float x : c) written = written && !std::isnan(x);
                CHECK(written, "%lld x %lld x %lld under policy %d: C not written when sw_gemm returned (not inline)",
                      static_cast<long long>(sh.m), static_cast<long long>(sh.n), static_cast<long long>(sh.k), pi);
            }
            OKC(sw_stream_synchronize(st));
            results[pi] = c;
        }
        // float64 reference; |error| <= 2 k u sum|a||b| + |bias| u (u = 2^-24) for any fp32 FMA order.
        int bad = 0;
        for (int64_t i = 0; i < sh.m; ++i)
            for (int64_t j = 0; j < sh.n; ++j) {
                double ref = bias[static_cast<size_t>(j)], mag = std::fabs(ref);
                for (int64_t l = 0; l < sh.k; ++l) {
                    const double p = static_cast<double>(a[static_cast<size_t>(i * sh.k + l)]) *
                                     static_cast<double>(b[static_cast<size_t>(l * sh.n + j)]);
                    ref += p;
                    mag += std::fabs(p);
                }
                const double tol = 2.0 * static_cast<double>(sh.k + 1) * std::ldexp(mag, -24) + 1e-30;
                if (!(std::fabs(results[0][static_cast<size_t>(i * sh.n + j)] - ref) <= tol)) ++bad;
            }
        CHECK(bad == 0, "%lld x %lld x %lld: %d elements off the float64 reference", static_cast<long long>(sh.m),
              static_cast<long long>(sh.n), static_cast<long long>(sh.k), bad);
        CHECK(std::memcmp(results[0].data(), results[1].data(), c.size() * 4) == 0 &&
                  std::memcmp(results[0].data(), results[2].data(), c.size() * 4) == 0,
              "%lld x %lld x %lld: inline and queued results differ", static_cast<long long>(sh.m),
              static_cast<long long>(sh.n), static_cast<long long>(sh.k));
        for (sw_buffer x : {ba, bb, bc, bbias}) sw_buffer_destroy(x);
    }
    // The measured costs and the rule's verdicts at both ends.
    sw::cpu::set_inline_policy(InlinePolicy::Auto);
    const auto costs = sw::cpu::inline_costs(sw::cpu::Kernel::Auto);
    CHECK(costs.handoff_ns > 0 && costs.gemm_flops_per_ns > 0 && costs.elementwise_ns > 0,
          "costs not measured: hand-off %g ns, %g flops/ns, %g ns/element", costs.handoff_ns, costs.gemm_flops_per_ns,
          costs.elementwise_ns);
    const double limit = sw::cpu::kInlineFactor * costs.handoff_ns;
    CHECK(sw::cpu::gemm_estimate_ns(1, 64, 64, sw::cpu::Kernel::Auto) < limit, "1x64x64 would be queued");
    CHECK(sw::cpu::gemm_estimate_ns(1024, 1024, 1024, sw::cpu::Kernel::Auto) > limit, "1024^3 would run inline");
    std::printf("measured: hand-off %.1f us, GEMM %.1f GFLOP/s (one thread), GeLU %.2f ns/element; inline below "
                "%.0f us of work\n",
                costs.handoff_ns / 1000, costs.gemm_flops_per_ns, costs.elementwise_ns, limit / 1000);

    // GeLU: inline (small) and queued give the same bits as a scalar loop of the same function.
    for (uint64_t count : {uint64_t(100), uint64_t(70000)}) {
        const auto x = random_floats(static_cast<size_t>(count), seed++);
        std::vector<float> y(static_cast<size_t>(count)), first;
        sw_buffer bx = nullptr, by = nullptr;
        OKC(sw_buffer_wrap(dev, const_cast<float*>(x.data()), count * 4, &bx));
        OKC(sw_buffer_wrap(dev, y.data(), count * 4, &by));
        for (InlinePolicy pol : {InlinePolicy::Never, InlinePolicy::Always, InlinePolicy::Auto}) {
            sw::cpu::set_inline_policy(pol);
            std::fill(y.begin(), y.end(), std::nanf(""));
            OKC(sw_gelu(st, SW_DTYPE_F32, bx, 0, by, 0, count));
            OKC(sw_stream_synchronize(st));
            if (first.empty()) first = y;
            CHECK(std::memcmp(first.data(), y.data(), count * 4) == 0, "gelu(%llu): policies differ",
                  static_cast<unsigned long long>(count));
        }
        int bad = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            const double v = x[i];
            const double ref = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
            if (!(std::fabs(first[i] - ref) <= 1e-6)) ++bad;
        }
        CHECK(bad == 0, "gelu(%llu): %d elements off the float64 reference (1e-6)",
              static_cast<unsigned long long>(count), bad);
        sw_buffer_destroy(bx);
        sw_buffer_destroy(by);
    }
    // Copies and fills: the same bytes under every policy; a small copy on an idle stream under auto is done when the
    // call returns (inline).
    for (uint64_t bytes : {uint64_t(256), uint64_t(1) << 20}) {
        const auto src = random_floats(static_cast<size_t>(bytes / 4), seed++);
        std::vector<float> dev_mem(static_cast<size_t>(bytes / 4)), back(static_cast<size_t>(bytes / 4));
        sw_buffer bd = nullptr;
        OKC(sw_buffer_wrap(dev, dev_mem.data(), bytes, &bd));
        for (InlinePolicy pol : {InlinePolicy::Never, InlinePolicy::Always, InlinePolicy::Auto}) {
            sw::cpu::set_inline_policy(pol);
            std::fill(dev_mem.begin(), dev_mem.end(), std::nanf(""));
            std::fill(back.begin(), back.end(), std::nanf(""));
            OKC(sw_memcpy_h2d_async(bd, 0, src.data(), bytes, st));
            if (pol == InlinePolicy::Always || (pol == InlinePolicy::Auto && bytes == 256))
                CHECK(std::memcmp(dev_mem.data(), src.data(), bytes) == 0, "h2d of %llu bytes not done at return",
                      static_cast<unsigned long long>(bytes));
            OKC(sw_memcpy_d2h_async(back.data(), bd, 0, bytes, st));
            OKC(sw_stream_synchronize(st));
            CHECK(std::memcmp(back.data(), src.data(), bytes) == 0, "round trip of %llu bytes differs (policy %d)",
                  static_cast<unsigned long long>(bytes), static_cast<int>(pol));
            OKC(sw_memset_async(bd, 4, 0x7f, bytes - 8, st));
            OKC(sw_stream_synchronize(st));
            const auto* raw = reinterpret_cast<const unsigned char*>(dev_mem.data());
            bool ok = std::memcmp(raw, src.data(), 4) == 0 && std::memcmp(raw + bytes - 4, &src[src.size() - 1], 4) == 0;
            for (uint64_t i = 4; i < bytes - 4; ++i) ok = ok && raw[i] == 0x7f;
            CHECK(ok, "memset of %llu bytes wrong (policy %d)", static_cast<unsigned long long>(bytes),
                  static_cast<int>(pol));
        }
        sw_buffer_destroy(bd);
    }

    // An event recorded on an idle stream is complete at once (its marker ran inline); waiting for it queues nothing
    // that could block; under policy never the marker is queued and completes by synchronize.
    sw::cpu::set_inline_policy(InlinePolicy::Auto);
    sw_event ev = nullptr;
    OKC(sw_event_create(dev, &ev));
    OKC(sw_event_record(ev, st));
    int32_t done = -1;
    OKC(sw_event_query(ev, &done));
    CHECK(done == 1, "event recorded on an idle stream not complete at once (%d)", done);
    OKC(sw_stream_wait_event(st, ev));
    OKC(sw_stream_synchronize(st));
    sw::cpu::set_inline_policy(InlinePolicy::Never);
    OKC(sw_event_record(ev, st));
    OKC(sw_stream_synchronize(st));
    OKC(sw_event_query(ev, &done));
    CHECK(done == 1, "queued event not complete after synchronize (%d)", done);
    OKC(sw_event_destroy(ev));
    sw::cpu::set_inline_policy(InlinePolicy::Auto);
    OKC(sw_stream_destroy(st));
    OKC(sw_device_destroy(dev));
}

} // namespace

int main() {
    check_inline_basics();
    check_inline_ordering();
    check_inline_errors();
    check_inline_lock_order();
    check_inline_stress();
    check_sync_runs_work();
    check_destruction_and_round_trip();
    check_api_paths();
    check_pool_budget();
    check_pool_caller();
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
