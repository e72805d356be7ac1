// The hand-written tensor-core GEMM for f16 / bf16 inputs with fp32 accumulation (GemmAlgo::HandWritten).
//
//   C[m,n] = epilogue(alpha * op(A) op(B) + beta * C + bias[n]), row-major, any m, n, k >= 1, any lda/ldb/ldc.
//
// Design (correctness first, reasonable speed second):
//  - Block tile 128 x 128 x 32, 256 threads = 8 warps in a 2 (m) x 4 (n) grid, each warp owning a 64 x 32
//    sub-tile = 4 x 4 mma.sync.aligned.m16n8k16 tiles (64 fp32 accumulators per thread).
//  - Operand tiles live in shared memory in the layout of their global memory, so that global -> shared
//    copies are straight 16-byte cp.async transfers whatever the transposes:
//      "K-contiguous"  tile[outer][k]  (A not transposed, B transposed)   row stride 32 + 8 elements
//      "MN-contiguous" tile[k][outer]  (A transposed, B not transposed)   row stride 128 + 8 elements
//    The 8-element padding keeps 16-byte alignment of every row and spreads fragment reads over the banks.
//    Fragments are assembled from these with 32-bit shared loads (K-contiguous: the two k-adjacent elements
//    of a register are adjacent in memory) or two 16-bit loads (MN-contiguous).
//  - Two shared-memory stages: tile t+1 is copied (cp.async, asynchronous) while tile t is multiplied.
//  - Edges: cp.async with a source size below 16 bytes zero-fills the rest of the 16-byte chunk, and chunks
//    outside the matrix copy 0 bytes, so partial tiles in m, n and k are zero padded and need no special
//    arithmetic; the epilogue stores only elements inside C.
//  - The vector (cp.async) path needs a 16-byte aligned base and a leading dimension that is a multiple of 8
//    elements (then every 8-element chunk is 16-byte aligned). Otherwise that operand is loaded element by
//    element with ordinary loads (zero padded), synchronously, into the same layout.
//  - Each C element is one fp32 accumulation over k in increasing k-tile order, independent of its position,
//    then the epilogue in fp32: alpha * acc (+ beta * C) (+ bias), GeLU, one rounding to the C type.
// Requires sm_80 (mma.sync m16n8k16 with bf16, cp.async). The host side checks the device before launching.
// wgmma (sm_90a) is not used: on Hopper this kernel runs the same mma.sync code.
//
// This header holds the kernel and its device helpers; gemm_mma.cu launches it. The PTX it needs (cp.async,
// shared loads/stores, mma.sync) comes from cuda/ptx.cuh. It is also compiled for the host by the kernel
// emulation test (native/tests/cuda_emu, SW_CUDA_HOST_EMULATION defined), whose include path gives it the
// emulated ptx.cuh: this very code then runs with emulated threads, shared memory, cp.async and mma.sync.
#pragma once
#include "core/cuda_plugin_api.h"
#include "cuda/ptx.cuh"

#include <cstdint>

namespace sw::cuda::mma_detail {

using namespace ::sw::cuda::ptx;

constexpr int kBM = 128, kBN = 128, kBK = 32;
constexpr int kThreads = 256;
constexpr int kLdK = kBK + 8;                 // K-contiguous tile: elements per outer row
constexpr int kLdMN = 128 + 8;                // MN-contiguous tile: elements per k row (outer extent is 128)
constexpr int kTileElems = 128 * kLdK;        // 5120 >= kBK * kLdMN = 4352: one stage of one operand
static_assert(kBM == 128 && kBN == 128, "the tile loaders assume an outer extent of 128");
static_assert(kBK * kLdMN <= kTileElems, "stage size");
static_assert((kLdK * 2) % 16 == 0 && (kLdMN * 2) % 16 == 0, "16-byte aligned shared rows for cp.async");

struct Params {
    const uint16_t* a;
    const uint16_t* b;
    void* c;
    const void* bias; // c type, or null
    int64_t m, n, k;
    int64_t lda, ldb, ldc;
    float alpha, beta;
    int c_f32;  // C and bias are fp32 (else the input type)
    int gelu;
    int vec_a;  // operand A may use the cp.async path
    int vec_b;
};


// ------------------------------------------------------------------------------------------ tile loading
// Copies one 128 (outer) x 32 (k) operand tile starting at (outer0, k0) into shared memory at `sm`, element (o, p)
// (o < 128, p < 32) at byte offset layout(o, p); elements outside [0, outer_ext) x [0, k_ext) are zero.
//   kKContig: global element (o, p) at g[(outer0 + o) * ld + k0 + p]; else at g[(k0 + p) * ld + outer0 + o].
// vec: 16-byte cp.async chunks of 8 elements contiguous in global memory (along k when kKContig, along the outer
// dimension otherwise); the layout must place each chunk in 16 contiguous, 16-byte aligned bytes. Else element by
// element with ordinary loads and stores (synchronous). Shared by the mma.sync and wgmma kernels.
template <bool kKContig, class Layout>
__device__ __forceinline__ void copy_tile(uint32_t sm, const uint16_t* g, int64_t ld, int64_t outer0, int64_t outer_ext,
                                          int64_t k0, int64_t k_ext, bool vec, int tid, Layout layout) {
    if (vec) {
        // 512 chunks of 8 elements (16 bytes), 2 per thread.
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int c = tid + i * kThreads;
            int o, p;    // the chunk's first element in the tile
            int64_t run; // elements left in the chunk's contiguous direction
            if constexpr (kKContig) {
                o = c >> 2;
                p = (c & 3) * 8;
                run = k_ext - (k0 + p);
            } else {
                p = c >> 4;
                o = (c & 15) * 8;
                run = outer_ext - (outer0 + o);
            }
            const int64_t go = outer0 + o, gk = k0 + p;
            const uint16_t* src = g; // any valid, aligned address: nothing is read when 0 bytes are copied
            int bytes = 0;
            if (go < outer_ext && gk < k_ext) {
                src = kKContig ? g + go * ld + gk : g + gk * ld + go;
                bytes = run >= 8 ? 16 : static_cast<int>(run) * 2;
            }
            cp_async_16(sm + layout(o, p), src, bytes);
        }
    } else {
        // 4096 elements, 16 per thread; consecutive threads read consecutive addresses of one global row.
#pragma unroll 4
        for (int i = 0; i < 16; ++i) {
            const int e = tid + i * kThreads;
            int o, p;
            if constexpr (kKContig) {
                o = e >> 5; // 32 k per outer row
                p = e & 31;
            } else {
                p = e >> 7; // 128 outer per k row
                o = e & 127;
            }
            const int64_t go = outer0 + o, gk = k0 + p;
            uint16_t v = 0;
            if (go < outer_ext && gk < k_ext) v = kKContig ? g[go * ld + gk] : g[gk * ld + go];
            sts_u16(sm + layout(o, p), v);
        }
    }
}

// The mma.sync kernel's layout: tiles in the layout of their global memory, rows padded by 8 elements.
//   kKContig: element (o, p) at sm[o * kLdK + p]; else at sm[p * kLdMN + o].
template <bool kKContig> struct PaddedLayout {
    __device__ __forceinline__ uint32_t operator()(int o, int p) const {
        return static_cast<uint32_t>((kKContig ? o * kLdK + p : p * kLdMN + o) * 2);
    }
};

template <bool kKContig>
__device__ __forceinline__ void load_tile(uint32_t sm, const uint16_t* g, int64_t ld, int64_t outer0,
                                          int64_t outer_ext, int64_t k0, int64_t k_ext, bool vec, int tid) {
    copy_tile<kKContig>(sm, g, ld, outer0, outer_ext, k0, k_ext, vec, tid, PaddedLayout<kKContig>{});
}

// The two elements (o, p) and (o, p + 1) of an operand tile as one .f16x2/.bf16x2 register (p even; the
// element with the lower k in the lower half).
template <bool kKContig>
__device__ __forceinline__ uint32_t load_pair(uint32_t sm, int o, int p) {
    if constexpr (kKContig) {
        return lds_u32(sm + static_cast<uint32_t>((o * kLdK + p) * 2));
    } else {
        const uint32_t lo = lds_u16(sm + static_cast<uint32_t>((p * kLdMN + o) * 2));
        const uint32_t hi = lds_u16(sm + static_cast<uint32_t>(((p + 1) * kLdMN + o) * 2));
        return lo | (hi << 16);
    }
}

// ------------------------------------------------------------------------------------------ epilogue
__device__ __forceinline__ float gelu_tanh(float x) {
    const float kSqrt2OverPi = 0.7978845608028654f;
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

template <bool kBf16>
__device__ __forceinline__ float load_c(const Params& p, const void* base, int64_t idx) {
    if (p.c_f32) return static_cast<const float*>(base)[idx];
    return bits_to_float<kBf16>(static_cast<const uint16_t*>(base)[idx]);
}

template <bool kBf16>
__device__ __forceinline__ void store_element(const Params& p, int64_t r, int64_t col, float acc) {
    if (r >= p.m || col >= p.n) return;
    const int64_t idx = r * p.ldc + col;
    float v = p.alpha * acc;
    if (p.beta != 0.0f) v = fmaf(p.beta, load_c<kBf16>(p, p.c, idx), v);
    if (p.bias) v += load_c<kBf16>(p, p.bias, col);
    if (p.gelu) v = gelu_tanh(v);
    if (p.c_f32) {
        static_cast<float*>(p.c)[idx] = v;
    } else {
        static_cast<uint16_t*>(p.c)[idx] = float_to_bits<kBf16>(v);
    }
}

// ------------------------------------------------------------------------------------------ the kernel
template <bool kBf16, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads) mma_gemm_kernel(const Params p) {
    // Stage s of operand X: smX[s]. 2 x 2 x 5120 x 2 bytes = 40 KiB of static shared memory.
    __shared__ __align__(16) uint16_t smA[2][kTileElems];
    __shared__ __align__(16) uint16_t smB[2][kTileElems];

    // A not transposed: op(A) rows are contiguous in k -> K-contiguous. B transposed (stored n x k) likewise.
    constexpr bool kAKContig = !kTransA;
    constexpr bool kBKContig = kTransB;

    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid >> 5, lane = tid & 31;
    const int group = lane >> 2, tig = lane & 3; // groupID, threadID_in_group of the PTX fragment layouts
    const int wm = (warp >> 2) * 64;             // warp's first row within the block tile
    const int wn = (warp & 3) * 32;              // warp's first column
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

    const uint32_t sa[2] = {smem_addr(&smA[0][0]), smem_addr(&smA[1][0])};
    const uint32_t sb[2] = {smem_addr(&smB[0][0]), smem_addr(&smB[1][0])};

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int64_t ktiles = (p.k + kBK - 1) / kBK;
    auto load_stage = [&](int64_t kt, int stage) {
        const int64_t k0 = kt * kBK;
        load_tile<kAKContig>(sa[stage], p.a, p.lda, m0, p.m, k0, p.k, p.vec_a != 0, tid);
        load_tile<kBKContig>(sb[stage], p.b, p.ldb, n0, p.n, k0, p.k, p.vec_b != 0, tid);
    };

    load_stage(0, 0);
    cp_async_commit();
    for (int64_t kt = 0; kt < ktiles; ++kt) {
        const int cur = static_cast<int>(kt & 1);
        // The other stage was last read in iteration kt - 1, which ended with a barrier: safe to refill.
        if (kt + 1 < ktiles) load_stage(kt + 1, cur ^ 1);
        cp_async_commit();  // possibly empty group: keeps the group count uniform
        cp_async_wait_1();  // this thread's copies of tile kt have landed
        __syncthreads();    // ... and everyone else's (and the synchronous element loads)

#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            uint32_t af[4][4], bfr[4][2];
            const int p0 = kk + tig * 2;
#pragma unroll
            for (int mi = 0; mi < 4; ++mi) {
                const int r = wm + mi * 16 + group;
                af[mi][0] = load_pair<kAKContig>(sa[cur], r, p0);         // (row g,     k 2t..2t+1)
                af[mi][1] = load_pair<kAKContig>(sa[cur], r + 8, p0);     // (row g + 8, k 2t..2t+1)
                af[mi][2] = load_pair<kAKContig>(sa[cur], r, p0 + 8);     // (row g,     k 2t+8..2t+9)
                af[mi][3] = load_pair<kAKContig>(sa[cur], r + 8, p0 + 8); // (row g + 8, k 2t+8..2t+9)
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int cn = wn + ni * 8 + group;
                bfr[ni][0] = load_pair<kBKContig>(sb[cur], cn, p0);     // (k 2t..2t+1,   col g)
                bfr[ni][1] = load_pair<kBKContig>(sb[cur], cn, p0 + 8); // (k 2t+8..2t+9, col g)
            }
#pragma unroll
            for (int mi = 0; mi < 4; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) mma_16816<kBf16>(acc[mi][ni], af[mi], bfr[ni]);
        }
        __syncthreads(); // everyone is done reading stage `cur` before it is refilled
    }

    // Accumulator fragment: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g + 8, same cols).
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int64_t r = m0 + wm + mi * 16 + group;
            const int64_t col = n0 + wn + ni * 8 + tig * 2;
            store_element<kBf16>(p, r, col, acc[mi][ni][0]);
            store_element<kBf16>(p, r, col + 1, acc[mi][ni][1]);
            store_element<kBf16>(p, r + 8, col, acc[mi][ni][2]);
            store_element<kBf16>(p, r + 8, col + 1, acc[mi][ni][3]);
        }
    }
}

// ------------------------------------------------------------------------------------------ host side
// Kernel parameters from a validated problem (launch_mma_gemm, and the host emulation's tests).
inline Params make_params(const GemmProblem& d) {
    Params p{};
    p.a = static_cast<const uint16_t*>(d.a);
    p.b = static_cast<const uint16_t*>(d.b);
    p.c = d.c;
    p.bias = d.bias;
    p.m = d.m;
    p.n = d.n;
    p.k = d.k;
    p.lda = d.lda;
    p.ldb = d.ldb;
    p.ldc = d.ldc;
    p.alpha = d.alpha;
    p.beta = d.beta;
    p.c_f32 = d.c_type == SW_DTYPE_F32 ? 1 : 0;
    p.gelu = d.epilogue == SW_EPILOGUE_GELU ? 1 : 0;
    // 16-byte cp.async chunks of 8 elements: base 16-byte aligned and every row start too (ld % 8 == 0).
    p.vec_a = (reinterpret_cast<uintptr_t>(d.a) % 16 == 0 && d.lda % 8 == 0) ? 1 : 0;
    p.vec_b = (reinterpret_cast<uintptr_t>(d.b) % 16 == 0 && d.ldb % 8 == 0) ? 1 : 0;
    return p;
}

// One block per 128 x 128 tile of C.
inline dim3 mma_grid(int64_t m, int64_t n) {
    return dim3(static_cast<unsigned>((m + kBM - 1) / kBM), static_cast<unsigned>((n + kBN - 1) / kBN));
}

} // namespace sw::cuda::mma_detail
