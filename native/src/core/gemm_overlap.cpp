#include "core/gemm_overlap.h"

#include "core/dtype.h"
#include "core/error.h"

#include <algorithm>
#include <vector>

namespace sw {
namespace {

// floor(a / b) for b > 0.
int64_t floor_div(int64_t a, int64_t b) {
    const int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

int64_t span_end(const StridedBytes& x) { return (x.rows - 1) * x.stride + x.width; } // relative to x.start

// Does some row of y intersect the bytes [lo, hi) (relative to y.start)? y's row starts increase with the row, and so
// do its row ends: the first row that ends after lo is the only candidate that can start before hi.
bool rows_hit(const StridedBytes& y, int64_t lo, int64_t hi) {
    int64_t j = 0;
    if (y.rows > 1) j = std::max<int64_t>(0, floor_div(lo - y.width, y.stride) + 1);
    else if (y.width <= lo) return false;
    return j < y.rows && j * y.stride < hi && j * y.stride + y.width > lo;
}

} // namespace

bool strided_overlap(const StridedBytes& a, const StridedBytes& b) {
    if (a.rows < 1 || a.width < 1 || b.rows < 1 || b.width < 1) return false;
    // Positions relative to a.start (two's complement: d < 0 when b starts first).
    const int64_t d = static_cast<int64_t>(b.start - a.start);
    if (d >= span_end(a) || -d >= span_end(b)) return false; // the spans are apart
    if (a.rows == 1) return rows_hit(b, -d, -d + a.width);
    if (b.rows == 1) return rows_hit(a, d, d + b.width);
    if (a.stride == b.stride) {
        // Row i of a and row j of b meet iff -b.width < d + t*s < a.width for t = j - i in [-(a.rows-1), b.rows-1];
        // d + t*s grows with t: take the smallest t above the lower bound.
        const int64_t s = a.stride;
        const int64_t t = std::max(floor_div(-b.width - d, s) + 1, -(a.rows - 1));
        return t <= b.rows - 1 && d + t * s < a.width;
    }
    // Different strides: each row of the block with fewer rows against the other, over the rows inside its span.
    const bool a_small = a.rows <= b.rows;
    const StridedBytes& x = a_small ? a : b; // rows walked
    const StridedBytes& y = a_small ? b : a;
    const int64_t dy = a_small ? d : -d;     // y.start - x.start
    const int64_t first = std::max<int64_t>(0, floor_div(dy - x.width, x.stride) + 1);
    const int64_t last = std::min<int64_t>(x.rows - 1, floor_div(dy + span_end(y) - 1, x.stride));
    for (int64_t i = first; i <= last; ++i) {
        const int64_t lo = i * x.stride - dy; // row i of x relative to y.start
        if (rows_hit(y, lo, lo + x.width)) return true;
    }
    return false;
}

namespace {

struct Region {
    StridedBytes bytes;
    int32_t member;
    char operand; // 'c', 'a', 'b', 'z' (bias)
    bool output() const { return operand == 'c'; }
};

const char* operand_name(char op) {
    switch (op) {
    case 'a': return "a";
    case 'b': return "b";
    case 'c': return "c";
    default: return "bias";
    }
}

bool same_bytes(const StridedBytes& x, const StridedBytes& y) {
    return x.start == y.start && x.rows == y.rows && x.width == y.width && (x.rows == 1 || x.stride == y.stride);
}

StridedBytes matrix_bytes(const void* p, int64_t rows, int64_t cols, int64_t ld, sw_dtype type) {
    const auto esz = static_cast<int64_t>(sw_dtype_size(type));
    return StridedBytes{reinterpret_cast<uintptr_t>(p), rows, cols * esz, rows > 1 ? ld * esz : cols * esz};
}

} // namespace

void check_grouped_outputs(const GemmProblem* problems, int32_t count) {
    // Every C and every distinct input block (members sharing X list it once, under the first member that has it),
    // sorted by start; a pair is tested exactly only when its spans meet, and only when one of the two is a C.
    std::vector<Region> regions;
    regions.reserve(static_cast<size_t>(count) * 4);
    for (int32_t i = 0; i < count; ++i) {
        const GemmProblem& p = problems[i];
        regions.push_back(Region{matrix_bytes(p.c, p.m, p.n, p.ldc, p.c_type), i, 'c'});
        if (p.k > 0) {
            regions.push_back(Region{matrix_bytes(p.a, p.a_rows(), p.a_cols(), p.lda, p.a_type), i, 'a'});
            regions.push_back(Region{matrix_bytes(p.b, p.b_rows(), p.b_cols(), p.ldb, p.b_type), i, 'b'});
        }
        if (p.bias) regions.push_back(Region{matrix_bytes(p.bias, 1, p.n, p.n, p.bias_type), i, 'z'});
    }
    std::sort(regions.begin(), regions.end(), [](const Region& x, const Region& y) {
        if (x.bytes.start != y.bytes.start) return x.bytes.start < y.bytes.start;
        return x.member != y.member ? x.member < y.member : x.operand < y.operand;
    });
    // Identical input blocks: keep the first (lowest member); identical blocks sort next to each other unless a C or
    // another block starts at the same byte, which the pairwise test below then covers anyway.
    size_t kept = 0;
    for (size_t r = 0; r < regions.size(); ++r) {
        if (kept > 0 && !regions[r].output() && !regions[kept - 1].output() &&
            same_bytes(regions[r].bytes, regions[kept - 1].bytes))
            continue;
        regions[kept++] = regions[r];
    }
    regions.resize(kept);
    for (size_t r = 0; r < regions.size(); ++r) {
        const Region& x = regions[r];
        const uintptr_t end = x.bytes.start + static_cast<uintptr_t>(span_end(x.bytes));
        for (size_t q = r + 1; q < regions.size() && regions[q].bytes.start < end; ++q) {
            const Region& y = regions[q];
            if (!x.output() && !y.output()) continue;
            if (!strided_overlap(x.bytes, y.bytes)) continue;
            // Name the output first, then the lower member.
            const bool x_first = x.output() && (!y.output() || x.member < y.member);
            const Region& o = x_first ? x : y;
            const Region& other = x_first ? y : x;
            fail(SW_ERR_INVALID_ARGUMENT, "descs[", o.member, "].c overlaps descs[", other.member, "].",
                 operand_name(other.operand), "; expected every member's c apart from every other member's c and ",
                 "from every member's a, b and bias (the column blocks of one matrix, ldc >= its width, are apart)");
        }
    }
}

} // namespace sw
