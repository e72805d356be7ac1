// The hand-written tensor-core GEMM for Hopper (sm_90a): wgmma.mma_async (GemmAlgo::Wgmma, kernel name "wgmma").
//
//   C[m,n] = epilogue(alpha * op(A) op(B) + beta * C + bias[n]), row-major, any m, n, k >= 1, any lda/ldb/ldc:
//   the same contract, parameters (Params), edge handling and epilogue as the mma.sync kernel of
//   gemm_mma_kernel.cuh, whose helpers it uses.
//
// Design (correctness first):
//  - Block tile 128 x 128 x 32, 256 threads = 2 warpgroups; warpgroup w computes rows 64w..64w+63 of the tile with
//    wgmma.mma_async.m64n128k16 (64 fp32 accumulators a thread), two k16 steps per k tile.
//  - Both operands are read by the tensor cores from shared memory through matrix descriptors, in the canonical
//    K-major layout without swizzling ("interleave"): core matrices of 8 rows (M or N) x 8 k (16 bytes a row,
//    128 bytes each); a 128 x 32 tile is 16 x 4 core matrices, k-adjacent ones 128 bytes apart (the descriptor's
//    leading byte offset), 8-row groups 512 bytes apart (its stride byte offset). No transpose flags are used:
//    operands stored K-contiguous in global memory (A not transposed, B transposed) are copied with 16-byte
//    cp.async when aligned, other operands element by element into the same K-major layout (transposing them).
//  - Two shared-memory stages as in the mma.sync kernel; after its copies land, every thread issues
//    fence.proxy.async (its generic-proxy writes become visible to the tensor cores' async proxy) before the
//    barrier; wgmma.fence before the MMAs, commit_group, and wait_group 0 before the stage may be refilled.
//  - Only built into sm_90a code (__CUDA_ARCH_FEAT_SM90_ALL: CUDA 12+, architecture 90a); elsewhere the kernel
//    traps, and the host launches it only after a probe kernel has shown that the device runs sm_90a code
//    (gemm_mma.cu: wgmma_available).
// Validation: compiled with CUDA 12.4 for sm_90a (./build.sh cuda12-check) and run on the host emulation
// (native/tests/cuda_emu: wgmma with descriptors as the PTX ISA defines them); NOT run on a GPU yet, which is why it
// is an explicit choice ("wgmma") and not what "mma" or "auto" pick.
#pragma once
#include "cuda/gemm_mma_kernel.cuh"

namespace sw::cuda::mma_detail {

constexpr uint32_t kWgLbo = 128;             // k-adjacent core matrices
constexpr uint32_t kWgSbo = (kBK / 8) * 128; // 8-row groups: 512 bytes
constexpr int kWgTileElems = 128 * kBK;      // 4096 elements, 8 KiB: one stage of one operand

// Byte offset of element (o, p) (o < 128 rows of M or N, p < 32 along k) in the K-major no-swizzle layout.
__device__ __forceinline__ uint32_t wg_offset(int o, int p) {
    return static_cast<uint32_t>((((o >> 3) * (kBK / 8) + (p >> 3)) * 128) + ((o & 7) * 16) + ((p & 7) * 2));
}

// wgmma matrix descriptor (sm_90): start address >> 4 in bits 0-13, leading byte offset >> 4 in 16-29, stride byte
// offset >> 4 in 32-45, base offset 0 (bits 49-51), swizzle mode 0 = none (bits 62-63).
__device__ __forceinline__ uint64_t wg_desc(uint32_t smem_address) {
    return static_cast<uint64_t>((smem_address & 0x3FFFFu) >> 4) | (static_cast<uint64_t>(kWgLbo >> 4) << 16) |
           (static_cast<uint64_t>(kWgSbo >> 4) << 32);
}


// The wgmma kernel's K-major layout as copy_tile takes it.
struct KMajorLayout {
    __device__ __forceinline__ uint32_t operator()(int o, int p) const { return wg_offset(o, p); }
};

// Loads one 128 (outer) x 32 (k) operand tile into the K-major layout (copy_tile). Only K-contiguous operands can use
// 16-byte cp.async chunks (a chunk along the outer dimension is not contiguous in this layout): the others are
// transposed element by element.
template <bool kKContig>
__device__ __forceinline__ void wg_load_tile(uint32_t sm, const uint16_t* g, int64_t ld, int64_t outer0,
                                             int64_t outer_ext, int64_t k0, int64_t k_ext, bool vec, int tid) {
    copy_tile<kKContig>(sm, g, ld, outer0, outer_ext, k0, k_ext, kKContig && vec, tid, KMajorLayout{});
}

template <bool kBf16, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kThreads) wgmma_gemm_kernel(const Params p) {
#if defined(SW_WGMMA_CODE)
    // 2 stages x 2 operands x 8 KiB = 32 KiB of static shared memory.
#if defined(SW_CUDA_HOST_EMULATION) // shared addresses below 256 KiB, as the descriptors need (cuda_emu.h)
    auto& smA = *static_cast<uint16_t(*)[2][kWgTileElems]>(::sw::emu::shared_alloc(sizeof(uint16_t[2][kWgTileElems]), 128));
    auto& smB = *static_cast<uint16_t(*)[2][kWgTileElems]>(::sw::emu::shared_alloc(sizeof(uint16_t[2][kWgTileElems]), 128));
#else
    __shared__ __align__(128) uint16_t smA[2][kWgTileElems];
    __shared__ __align__(128) uint16_t smB[2][kWgTileElems];
#endif
    constexpr bool kAKContig = !kTransA;
    constexpr bool kBKContig = kTransB;

    const int tid = static_cast<int>(threadIdx.x);
    const int wg = tid >> 7;                // warpgroup: rows 64 wg .. 64 wg + 63 of the tile
    const int warp = (tid >> 5) & 3;        // warp within the warpgroup: 16 of those rows
    const int lane = tid & 31;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;
    const uint32_t sa[2] = {smem_addr(&smA[0][0]), smem_addr(&smA[1][0])};
    const uint32_t sb[2] = {smem_addr(&smB[0][0]), smem_addr(&smB[1][0])};

    float acc[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) acc[j] = 0.0f;

    const int64_t ktiles = (p.k + kBK - 1) / kBK;
    auto load_stage = [&](int64_t kt, int stage) {
        const int64_t k0 = kt * kBK;
        wg_load_tile<kAKContig>(sa[stage], p.a, p.lda, m0, p.m, k0, p.k, p.vec_a != 0, tid);
        wg_load_tile<kBKContig>(sb[stage], p.b, p.ldb, n0, p.n, k0, p.k, p.vec_b != 0, tid);
    };

    load_stage(0, 0);
    cp_async_commit();
    for (int64_t kt = 0; kt < ktiles; ++kt) {
        const int cur = static_cast<int>(kt & 1);
        // The other stage was last read by the MMAs of iteration kt - 1, which were waited for, then a barrier.
        if (kt + 1 < ktiles) load_stage(kt + 1, cur ^ 1);
        cp_async_commit();
        cp_async_wait_1();   // this thread's copies of tile kt have landed
        fence_proxy_async(); // ... and its shared-memory writes are visible to the tensor cores
        __syncthreads();     // ... and everyone else's
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kBK / 16; ++ks) {
            // A: this warpgroup's 64 rows (8 row groups of 512 bytes), k 16 ks .. 16 ks + 15 (2 core matrices of 128).
            const uint64_t da = wg_desc(sa[cur] + static_cast<uint32_t>(wg * 8) * kWgSbo + static_cast<uint32_t>(ks * 2) * kWgLbo);
            const uint64_t db = wg_desc(sb[cur] + static_cast<uint32_t>(ks * 2) * kWgLbo);
            wgmma_m64n128k16<kBf16>(acc, da, db);
        }
        wgmma_commit();
        wgmma_wait0(); // the MMAs are done reading stage `cur` (and acc is final for this tile)
        __syncthreads();
    }

    // Accumulator fragment of m64nNk16: d[j] at row 16 warp + lane / 4 + 8 ((j / 2) % 2),
    // column 8 (j / 4) + 2 (lane % 4) + (j % 2).
#pragma unroll
    for (int j = 0; j < 64; ++j) {
        const int64_t r = m0 + wg * 64 + warp * 16 + (lane >> 2) + 8 * ((j >> 1) & 1);
        const int64_t col = n0 + 8 * (j >> 2) + 2 * (lane & 3) + (j & 1);
        store_element<kBf16>(p, r, col, acc[j]);
    }
#else
    (void)p;
    __trap(); // not built for sm_90a: the host never launches it then (wgmma_available)
#endif
}

// Writes 1 when the code running on this device was built for sm_90a (has the wgmma kernel), else 0.
__global__ void wgmma_probe_kernel(int* out) {
#if defined(SW_WGMMA_CODE)
    *out = 1;
#else
    *out = 0;
#endif
}

} // namespace sw::cuda::mma_detail
