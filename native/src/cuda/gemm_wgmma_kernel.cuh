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

#if defined(SW_CUDA_HOST_EMULATION) || (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL))
#define SW_WGMMA_CODE 1
#endif

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

#if defined(SW_CUDA_HOST_EMULATION)
__device__ __forceinline__ void fence_proxy_async() { ::sw::emu::fence_proxy_async(); }
__device__ __forceinline__ void wgmma_fence() { ::sw::emu::wgmma_fence(); }
__device__ __forceinline__ void wgmma_commit() { ::sw::emu::wgmma_commit(); }
__device__ __forceinline__ void wgmma_wait0() { ::sw::emu::wgmma_wait(0); }
template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    ::sw::emu::wgmma_m64nNk16(kBf16, 128, d, desc_a, desc_b);
}
#elif defined(SW_WGMMA_CODE)
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// d += A(64 x 16, K-major, desc_a) * B(128 x 16, K-major, desc_b)^T; scale-d = 1 (accumulate), no negation or
// transposition.
#define SW_WGMMA_M64N128K16(TYPE) \
    asm volatile( \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " " \
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
        : "l"(desc_a), "l"(desc_b), "r"(1));
template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    if constexpr (kBf16) {
        SW_WGMMA_M64N128K16("bf16");
    } else {
        SW_WGMMA_M64N128K16("f16");
    }
}
#undef SW_WGMMA_M64N128K16
#endif

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
