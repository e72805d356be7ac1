// The CPU backend's choice between queueing work on a stream and running it on the caller (cpu/backend_cpu.cpp).
//
// Work on an idle stream runs inline (Stream::run_inline_if_idle) when its estimated time is at most kInlineFactor
// hand-offs: a hand-off is the measured round trip caller -> stream worker -> caller (Stream::measure_round_trip_ns),
// the estimate is the problem's flops over the measured single-thread GEMM rate of the device's kernel (or elements
// times the measured cost of one GeLU element). Both are measured once per process, lazily, by the first call that
// could inline (about 0.1-0.3 ms, on a private probe stream; calls made meanwhile from other threads queue): they are
// properties of the machine (thread wake-up latency, one core's speed), not of a device's thread count. Larger work
// is queued and the call stays asynchronous.
#pragma once
#include "cpu/gemm.h"

namespace sw::cpu {

// Inline when estimated time <= kInlineFactor x hand-off. At the threshold a hand-off would add 1/kInlineFactor (10%)
// to the single-thread time; above it queueing costs less than that and keeps the call asynchronous, and below it
// the caller is blocked for at most ten hand-offs (tens of microseconds), about what the hand-off alone would cost
// it at the next synchronize anyway.
constexpr double kInlineFactor = 10.0;

// Auto: the rule above. Never: always queue (the hand-off path; for measurement). Always: inline whenever the
// stream is idle (for tests of the inline path). Default Auto; the environment variable SHARDWISE_CPU_INLINE
// (auto, never, always) sets the initial value.
enum class InlinePolicy : int { Auto = 0, Never = 1, Always = 2 };
void set_inline_policy(InlinePolicy policy);
InlinePolicy inline_policy();

// The measured costs (0 until measured).
struct InlineCosts {
    double handoff_ns;          // stream round trip (median of 5)
    double gemm_flops_per_ns;   // single-thread fp32 GEMM rate of the kernel asked for (64^3, best of 3)
    double elementwise_ns;      // one GeLU element, single thread
};
InlineCosts inline_costs(Kernel kernel);

// The estimated single-thread time (ns) of an m x n x k GEMM with the kernel (0 until its rate is measured): what the
// rule compares with kInlineFactor x handoff_ns.
double gemm_estimate_ns(int64_t m, int64_t n, int64_t k, Kernel kernel);

} // namespace sw::cpu
