// The fixed binary tree of TP-invariant numerics (core/tree_reduction.h) as the plugin's kernels walk it, usable on the
// device and the host: tree_merges_at(n, l) is sw::tree::merges(n)[l] (how many tree nodes over n items complete with
// item l), found by descending from the root without a table, so that a kernel can evaluate the tree on the fly.
// Include as "cuda/tree_order.cuh"; compiles for the host emulation too (native/tests/cuda_emu checks it against
// sw::tree::merges).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace sw::cuda::dev {

// Items [a, b) split at a + ceil((b - a) / 2) (sw::tree::split). The nodes completing with item l are the nodes of
// more than one item on the path from the root to l whose last item is l. 0 <= l < n.
__host__ __device__ __forceinline__ int tree_merges_at(int64_t n, int64_t l) {
    int64_t a = 0, b = n;
    int count = 0;
    while (b - a > 1) {
        if (b - 1 == l) ++count;
        const int64_t m = a + (b - a + 1) / 2;
        if (l < m) b = m;
        else a = m;
    }
    return count;
}

// Values on the stack at most while n items are evaluated in order (sw::tree::depth): 1 + ceil(log2 n), 0 for n = 0.
__host__ __device__ __forceinline__ int tree_depth(int64_t n) {
    if (n <= 0) return 0;
    int d = 1;
    for (int64_t c = 1; c < n; c *= 2) ++d;
    return d;
}

} // namespace sw::cuda::dev
