// The fixed binary tree of TP-invariant numerics (sw_device_set_gemm_reduction, SW_REDUCE_SUM_TREE), written once for
// the CPU GEMM, the CUDA plugin and the collectives. Header-only and free of core internals (the plugin shares it).
//
// n items (a GEMM's k leaves, or the ranks of a collective) [a, b) are summed as sum[a, m) + sum[m, b) with
// m = a + ceil((b - a) / 2); one item is itself. The tree depends on n alone, and a node over c items is the tree over
// c items: a rank whose k range is a node computes that node's value with the same code. The top log2(p) levels
// (p a power of two) cut [0, n) into p nodes (tree_nodes), combined by the tree over p items: the collective's order.
#pragma once
#include <cstdint>
#include <vector>

namespace sw::tree {

inline int64_t split(int64_t a, int64_t b) { return a + (b - a + 1) / 2; }

// merges[i] for leaves [0, n): how many tree nodes complete with leaf i (post-order: after leaf i's value is pushed,
// that many times the two top values are replaced by their sum, left + right). The stack never holds more than
// depth(n) values.
inline void merges(int64_t n, std::vector<int32_t>& out) {
    out.assign(static_cast<size_t>(n > 0 ? n : 0), 0);
    struct R { int64_t a, b; };
    std::vector<R> todo;
    if (n > 1) todo.push_back({0, n});
    while (!todo.empty()) {
        const R r = todo.back();
        todo.pop_back();
        ++out[static_cast<size_t>(r.b - 1)];
        const int64_t m = split(r.a, r.b);
        if (m - r.a > 1) todo.push_back({r.a, m});
        if (r.b - m > 1) todo.push_back({m, r.b});
    }
}

// Values on the stack at most while n leaves are evaluated in order: 1 + ceil(log2 n) (0 for n = 0).
inline int depth(int64_t n) {
    if (n <= 0) return 0;
    int d = 1;
    for (int64_t c = 1; c < n; c *= 2) ++d;
    return d;
}

inline bool power_of_two(int64_t p) { return p > 0 && (p & (p - 1)) == 0; }

// The p nodes (p a power of two) at depth log2(p): node r covers items [first[r], first[r + 1]) (first has p + 1
// entries; a node is empty when n < p leaves it nothing).
inline std::vector<int64_t> nodes(int64_t n, int64_t p) {
    std::vector<int64_t> first{0, n};
    for (int64_t w = 1; w < p; w *= 2) {
        std::vector<int64_t> next;
        for (size_t i = 0; i + 1 < first.size(); ++i) {
            const int64_t a = first[i], b = first[i + 1];
            next.push_back(a);
            next.push_back(b - a > 1 ? split(a, b) : b);
        }
        next.push_back(n);
        first.swap(next);
    }
    return first;
}

// Sums values x[0..n) (n >= 1) in the tree's order with add(left, right); any value type.
template <class T, class Add> T sum(const T* x, int64_t n, Add add) {
    if (n == 1) return x[0];
    const int64_t m = split(0, n);
    return add(sum(x, m, add), sum(x + m, n - m, add));
}

} // namespace sw::tree
