// The TP-invariant tree GEMM of the CUDA plugin (GemmProblem::k_leaf > 0; sw_device_set_gemm_reduction), whatever
// GEMM algorithm the device is set to: cuBLASLt and the tensor-core kernels sum k in an order of their own.
//
// Arithmetic, for every element (i, j) of C (common.h, launch_tree_gemm): k is cut into N = ceil(k / k_leaf)
// leaves [l * k_leaf, min(k, (l + 1) * k_leaf)); a leaf's value is the fp32 chain acc = fmaf(a, b, acc) over its k in
// increasing order from +0 (16-bit inputs widened exactly); the leaves are combined by the fixed binary tree of
// core/tree_reduction.h (leaves [a, b) = sum[a, m) + sum[m, b), m = a + ceil((b - a) / 2); each node one fp32 addition,
// left + right); the root T (0 when k == 0) goes through the epilogue once: v = alpha * T (beta == 0: C is not read) or
// fmaf(alpha, T, beta * C), v + bias[j], GeLU (cuda/gelu.cuh, the element-wise kernels' very function), rounded once
// to C's type (nearest even). The explicit __fmul_rn / __fadd_rn keep nvcc from contracting them into an FMA.
//
// Level-2 tiling: a block of 16 x 16 threads computes a 64 x 64 tile of C, each thread a 4 x 4 micro-tile (rows
// ty + 16 r, columns tx + 16 c); op(A) and op(B) go through shared memory in k slices of 16, widened to fp32 as they
// are loaded. A slice may straddle leaves: the inner loop runs the FMAs up to the next leaf end, and there the leaf's
// 16 values join the tree: evaluated in leaf order on a per-thread stack (local memory, kDepth slots of 4 x 4 values),
// where a leaf either is pushed or adds into the top and then tree_merges_at(N, l) - 1 more merges replace the two
// top values by their sum (post-order: the tree's own additions, left + right). Nothing depends on the tile's position,
// m, n or the grid: a row-parallel GEMM whose rank holds a node of the tree computes that node's exact value.
// Speed: CUDA-core fp32 (no tensor cores: an mma instruction rounds its sums in an order of its own), about the
// classic shared-memory SGEMM; short leaves cost a stack update (local memory) per leaf.
//
// Compiles for the host emulation too (native/tests/cuda_emu/kernels_emu_check.cpp includes this file).
#include "cuda/common.h"
#include "cuda/gelu.cuh"
#include "cuda/launch.cuh"
#include "cuda/ptx.cuh"
#include "cuda/tree_order.cuh"

#include <cstdint>

namespace sw::cuda::treegemm {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16;       // block tile (rows, columns) and k slice
constexpr int kTX = 16, kTY = 16;                 // threads: x along columns, y along rows
constexpr int kTM = kBM / kTY, kTN = kBN / kTX;   // a thread's micro-tile: 4 x 4
constexpr int kThreads = kTX * kTY;
constexpr int64_t kMaxGrid = int64_t{1} << 20;    // blocks; more tiles are walked grid-stride
static_assert(kBM * kBK % kThreads == 0 && kBN * kBK % kThreads == 0, "whole loads per thread");

// Element types: 0 = f32, 1 = f16, 2 = bf16 (16-bit values as raw bits, widened exactly, rounded to nearest even).
template <int kType> struct Ty;
template <> struct Ty<0> {
    using S = float;
    __device__ static float to_f(float v) { return v; }
    __device__ static float from_f(float v) { return v; }
};
template <> struct Ty<1> {
    using S = uint16_t;
    __device__ static float to_f(uint16_t v) { return ptx::bits_to_float<false>(v); }
    __device__ static uint16_t from_f(float v) { return ptx::float_to_bits<false>(v); }
};
template <> struct Ty<2> {
    using S = uint16_t;
    __device__ static float to_f(uint16_t v) { return ptx::bits_to_float<true>(v); }
    __device__ static uint16_t from_f(float v) { return ptx::float_to_bits<true>(v); }
};

struct Args {
    const void* a;
    const void* b;
    void* c;
    const void* bias; // or null
    int64_t m, n, k, lda, ldb, ldc;
    int64_t leaf, leaves; // k_leaf and N = ceil(k / k_leaf) (0 when k == 0)
    float alpha, beta;
    int32_t trans_a, trans_b, gelu_on;
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <int kIn, int kOut, int kDepth>
__global__ void __launch_bounds__(kThreads) tree_gemm_kernel(Args g) {
    using SI = typename Ty<kIn>::S;
    using SO = typename Ty<kOut>::S;
    // k-major slices, padded by one column: the loads' stores hit different banks either way round.
    __shared__ float As[kBK][kBM + 1]; // As[p][i] = op(A)[i0 + i][k0 + p]
    __shared__ float Bs[kBK][kBN + 1]; // Bs[p][j] = op(B)[k0 + p][j0 + j]
    const SI* A = static_cast<const SI*>(g.a);
    const SI* B = static_cast<const SI*>(g.b);
    SO* C = static_cast<SO*>(g.c);
    const SO* bias = static_cast<const SO*>(g.bias);
    const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
    const int tid = ty * kTX + tx;
    const int64_t tiles_n = (g.n + kBN - 1) / kBN;
    const int64_t tiles = tiles_n * ((g.m + kBM - 1) / kBM);
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) { // uniform over the block: the barriers below are safe
        const int64_t i0 = t / tiles_n * kBM, j0 = t % tiles_n * kBN;
        float acc[kTM][kTN];
        float stack[kDepth][kTM][kTN]; // the tree's pending values (top = the number in use)
        int top = 0;
#pragma unroll
        for (int r = 0; r < kTM; ++r)
#pragma unroll
            for (int c = 0; c < kTN; ++c) acc[r][c] = 0.0f;
        int64_t leaf = 0, leaf_end = min64(g.k, g.leaf);
        for (int64_t k0 = 0; k0 < g.k; k0 += kBK) {
            const int kt = static_cast<int>(min64(kBK, g.k - k0)); // valid k of this slice
            __syncthreads(); // every thread is done with the previous slice
#pragma unroll
            for (int r = 0; r < kBM * kBK / kThreads; ++r) {
                const int idx = tid + r * kThreads; // consecutive threads along the stored rows
                const int p = g.trans_a ? idx / kBM : idx % kBK;
                const int i = g.trans_a ? idx % kBM : idx / kBK;
                const int64_t gi = i0 + i, gp = k0 + p;
                float v = 0.0f;
                if (gi < g.m && p < kt) v = Ty<kIn>::to_f(A[g.trans_a ? gp * g.lda + gi : gi * g.lda + gp]);
                As[p][i] = v;
            }
#pragma unroll
            for (int r = 0; r < kBN * kBK / kThreads; ++r) {
                const int idx = tid + r * kThreads;
                const int p = g.trans_b ? idx % kBK : idx / kBN;
                const int j = g.trans_b ? idx / kBK : idx % kBN;
                const int64_t gj = j0 + j, gp = k0 + p;
                float v = 0.0f;
                if (gj < g.n && p < kt) v = Ty<kIn>::to_f(B[g.trans_b ? gj * g.ldb + gp : gp * g.ldb + gj]);
                Bs[p][j] = v;
            }
            __syncthreads();
            int s = 0;
            while (s < kt) {
                // The FMAs up to the end of the slice or of the current leaf, whichever comes first (exactly the
                // leaf's k: never a padded zero, which could turn a -0 or an infinity into something else).
                const int e = static_cast<int>(min64(kt, leaf_end - k0));
                for (int p = s; p < e; ++p) {
                    float av[kTM], bv[kTN];
#pragma unroll
                    for (int r = 0; r < kTM; ++r) av[r] = As[p][ty + kTY * r];
#pragma unroll
                    for (int c = 0; c < kTN; ++c) bv[c] = Bs[p][tx + kTX * c];
#pragma unroll
                    for (int r = 0; r < kTM; ++r)
#pragma unroll
                        for (int c = 0; c < kTN; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
                }
                s = e;
                if (k0 + e == leaf_end) { // leaf `leaf` is complete: its value joins the tree
                    const int merges = dev::tree_merges_at(g.leaves, leaf);
                    if (merges == 0) {
#pragma unroll
                        for (int r = 0; r < kTM; ++r)
#pragma unroll
                            for (int c = 0; c < kTN; ++c) stack[top][r][c] = acc[r][c];
                        ++top;
                    } else { // left (the stack's top) + right (this leaf), then the remaining merges
#pragma unroll
                        for (int r = 0; r < kTM; ++r)
#pragma unroll
                            for (int c = 0; c < kTN; ++c) stack[top - 1][r][c] = stack[top - 1][r][c] + acc[r][c];
                        for (int q = 1; q < merges; ++q) {
#pragma unroll
                            for (int r = 0; r < kTM; ++r)
#pragma unroll
                                for (int c = 0; c < kTN; ++c)
                                    stack[top - 2][r][c] = stack[top - 2][r][c] + stack[top - 1][r][c];
                            --top;
                        }
                    }
#pragma unroll
                    for (int r = 0; r < kTM; ++r)
#pragma unroll
                        for (int c = 0; c < kTN; ++c) acc[r][c] = 0.0f;
                    ++leaf;
                    leaf_end = min64(g.k, leaf_end + g.leaf);
                }
            }
        }
        // The root (top == 1 after N >= 1 leaves; k == 0: T = 0) through the epilogue, once.
#pragma unroll
        for (int r = 0; r < kTM; ++r) {
            const int64_t gi = i0 + ty + kTY * r;
            if (gi >= g.m) continue;
#pragma unroll
            for (int c = 0; c < kTN; ++c) {
                const int64_t gj = j0 + tx + kTX * c;
                if (gj >= g.n) continue;
                const float root = top > 0 ? stack[0][r][c] : 0.0f;
                SO* out = C + gi * g.ldc + gj;
                float v;
                if (g.beta == 0.0f) v = __fmul_rn(g.alpha, root); // C is never read
                else v = fmaf(g.alpha, root, __fmul_rn(g.beta, Ty<kOut>::to_f(*out)));
                if (bias) v = __fadd_rn(v, Ty<kOut>::to_f(bias[gj]));
                if (g.gelu_on) v = dev::gelu(v);
                *out = Ty<kOut>::from_f(v);
            }
        }
    }
}

// The stack's slots: 16 (N <= 2^15 leaves: 1 KiB of local memory a thread) or 64 (any N).
template <int kIn, int kOut>
cudaError_t launch_typed(const Args& g, cudaStream_t stream) {
    const int64_t tiles = ((g.m + kBM - 1) / kBM) * ((g.n + kBN - 1) / kBN);
    const dim3 grid(static_cast<unsigned>(tiles < kMaxGrid ? tiles : kMaxGrid));
    const dim3 block(kTX, kTY);
    if (dev::tree_depth(g.leaves) <= 16) return launch_kernel(tree_gemm_kernel<kIn, kOut, 16>, grid, block, stream, g);
    return launch_kernel(tree_gemm_kernel<kIn, kOut, 64>, grid, block, stream, g);
}

int type_code(sw_dtype t) { return t == SW_DTYPE_F16 ? 1 : t == SW_DTYPE_BF16 ? 2 : t == SW_DTYPE_F32 ? 0 : -1; }

} // namespace
} // namespace sw::cuda::treegemm

namespace sw::cuda {

cudaError_t launch_tree_gemm(const GemmProblem& d, cudaStream_t stream) {
    using namespace treegemm;
    if (d.k_leaf <= 0 || d.k_leaf % 2 != 0 || d.k < 0 || d.m < 1 || d.n < 1) return cudaErrorInvalidValue;
    Args g{};
    g.a = d.a;
    g.b = d.b;
    g.c = d.c;
    g.bias = d.bias;
    g.m = d.m;
    g.n = d.n;
    g.k = d.k;
    g.lda = d.lda;
    g.ldb = d.ldb;
    g.ldc = d.ldc;
    g.leaf = d.k_leaf;
    g.leaves = d.k == 0 ? 0 : (d.k - 1) / d.k_leaf + 1;
    g.alpha = d.alpha;
    g.beta = d.beta;
    g.trans_a = d.trans_a ? 1 : 0;
    g.trans_b = d.trans_b ? 1 : 0;
    g.gelu_on = d.epilogue == SW_EPILOGUE_GELU ? 1 : 0;
    const int in = type_code(d.a_type), out = type_code(d.c_type);
    if (d.b_type != d.a_type || d.bias_type != d.c_type) return cudaErrorInvalidValue;
    (void)cudaGetLastError(); // a stale error of someone else's call must not be reported as this launch's
    if (in == 0 && out == 0) return launch_typed<0, 0>(g, stream);
    if (in == 1 && out == 1) return launch_typed<1, 1>(g, stream);
    if (in == 2 && out == 2) return launch_typed<2, 2>(g, stream);
    if (in == 1 && out == 0) return launch_typed<1, 0>(g, stream);
    if (in == 2 && out == 0) return launch_typed<2, 0>(g, stream);
    return cudaErrorInvalidValue;
}

} // namespace sw::cuda
