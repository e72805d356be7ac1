// sw_gemm_grouped's output rule (shardwise.h): no member's C may overlap another member's C or any member's A, B or
// bias. Operands are strided blocks of bytes (rows of `width` bytes, `stride` bytes apart), so the test is exact on
// rows, not on [first byte, last byte] spans: the column blocks of one Y (ldc = N) interleave their spans but never
// share a byte, and are accepted.
#pragma once
#include "core/gemm_problem.h"

#include <cstdint>

namespace sw {

// rows x width bytes, row r at start + r * stride. Empty when rows < 1 or width < 1 (overlaps nothing). For rows > 1
// the caller guarantees stride >= 1 (a GEMM operand's leading dimension is at least 1 element).
struct StridedBytes {
    uintptr_t start = 0;
    int64_t rows = 0;
    int64_t width = 0;
    int64_t stride = 0;
};

// True when some byte belongs to both blocks (exact). O(1) when the strides are equal or a block has one row,
// otherwise O(the rows of the smaller block that lie inside the other's span).
bool strided_overlap(const StridedBytes& x, const StridedBytes& y);

// Throws SW_ERR_INVALID_ARGUMENT naming both members and operands ("descs[1].c overlaps descs[0].a ...") when some
// member's C overlaps another member's C or any member's A, B (when k > 0) or bias. problems[i] are validated.
void check_grouped_outputs(const GemmProblem* problems, int32_t count);

} // namespace sw
