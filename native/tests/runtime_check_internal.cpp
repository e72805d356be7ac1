// Checks of the CPU runtime: the stream's inline path (sw::cpu::Stream::run_inline_if_idle, cpu/stream.h), the idle
// fast paths, and the thread pool's concurrency rules (sw::cpu::ThreadPool, cpu/thread_pool.h).
//
//  - inline work runs on the caller, in order with work queued meanwhile from another thread (the worker must not
//    start it early), synchronize waits for it, and an operation queued after it sees its effects;
//  - an inline exception becomes the pending error of every listed stream (reported once each, duplicates included);
//    a stream with a pending error or queued work is not inlined, and the skip rule still holds;
//  - concurrent inline calls over overlapping stream lists in opposite orders finish (address-ordered locking);
//  - stress: several threads mixing inline and queued work on their own and shared streams (~1 s), order checked;
//  - destruction while idle, from a stream worker (refused), the round-trip measurement.
// Every wait is bounded: a hang is reported as a failure and ends the program (exit 1) within seconds.
// Prints every failure; exits non-zero if any.
#include <algorithm>
#include <atomic>
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

} // namespace

int main() {
    check_inline_basics();
    check_inline_ordering();
    check_inline_errors();
    check_inline_lock_order();
    check_inline_stress();
    check_destruction_and_round_trip();
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
