// The CPU backend's sw_gemm_grouped (core/backend.h: Backend::gemm_grouped): a validated group of GEMMs submitted to
// its streams as one job, computed by cpu::gemm_grouped (one packing of a shared op(A) for every member).
#pragma once
#include "core/backend.h"
#include "core/gemm_problem.h"

#include <cstdint>

struct sw_stream_s;

namespace sw::cpu {

// Member i is ordered on *streams[i]; the job starts after every listed stream's earlier work, and every listed
// stream's later work waits for it (a stream may be listed more than once). When every listed stream is idle the job
// runs at once on the calling thread (cpu::Stream::run_inline_if_idle); otherwise one `always` operation per distinct
// stream meets the others at a barrier, the last to arrive computes the members whose streams have no pending error
// and releases the others. A failure while computing becomes the pending error of every listed stream. keeps[i]
// (moved from) hold member i's storages until the job has run.
void submit_gemm_grouped(sw_stream_s* const* streams, const GemmProblem* problems, KeepAlive* keeps, int32_t count);

} // namespace sw::cpu
