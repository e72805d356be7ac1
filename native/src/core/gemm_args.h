// The arguments of sw_gemm and sw_gemm_ex, validated once, as the one GEMM description (core/gemm_problem.h) plus the storages the
// queued work keeps alive. Every message and status is the C ABI's (the tests check them).
#pragma once
#include "shardwise.h"
#include "core/backend.h"
#include "core/gemm_problem.h"

#include <cstddef>

struct sw_stream_s;

namespace sw {

// sw_gemm_desc sizes accepted: this ABI's, and ABI 2..7's (which ends before k_leaf).
constexpr uint32_t kGemmDescV2Size = static_cast<uint32_t>(offsetof(sw_gemm_desc, k_leaf));
inline bool gemm_desc_size_ok(uint32_t size) { return size == sizeof(sw_gemm_desc) || size == kGemmDescV2Size; }
// The largest leaf of the tree reduction (sw_device_set_gemm_reduction).
constexpr int64_t kMaxGemmLeaf = int64_t{1} << 24;

struct GemmCall {
    GemmProblem problem;
    KeepAlive keep; // A, B, C, bias
};

// Checks, in this order: the enum arguments, the dtype against the stream's backend (Backend::check_gemm_types),
// m, n, k, alpha and beta, the buffers (live, on the stream's device), the leading dimensions and that every
// operand fits its buffer at its offset. `stream` is already checked. Throws sw::Error.
GemmCall gemm_call_from_args(sw_stream_s* stream, const sw_dtype& dtype, const sw_op& trans_a, const sw_op& trans_b,
                             int64_t m, int64_t n, int64_t k, float alpha, sw_buffer a, uint64_t a_offset, int64_t lda,
                             sw_buffer b, uint64_t b_offset, int64_t ldb, float beta, sw_buffer c, uint64_t c_offset,
                             int64_t ldc, sw_buffer bias, uint64_t bias_offset, const sw_epilogue& epilogue);

// sw_gemm_ex: desc non-null with size == sizeof(sw_gemm_desc); the enum fields read raw; a combination outside the
// C ABI's (a = b in {f32, f16, bf16}, c = f32 or a's type, compute f32) or outside the backend's gives
// SW_ERR_UNSUPPORTED naming it; then the checks of gemm_call_from_args. Throws sw::Error.
GemmCall gemm_call_from_desc(sw_stream_s* stream, const sw_gemm_desc* desc);

} // namespace sw
