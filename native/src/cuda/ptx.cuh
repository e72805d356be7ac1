// The inline-PTX wrappers of the hand-written kernels, in one place: shared-memory addresses, loads and stores,
// cp.async, mma.sync m16n8k16, the wgmma family (sm_90a) and the 16-bit float conversions. The kernels
// (gemm_mma_kernel.cuh, gemm_wgmma_kernel.cuh, kernels.cu) use only these names (namespace sw::cuda::ptx) for
// operations below CUDA C++.
//
// Host emulation: the emulation build (native/tests/cuda_emu) compiles the kernels on the host and puts its own
// include folder (native/tests/cuda_emu/include) ahead of native/src, so "cuda/ptx.cuh" and <cuda_runtime.h>,
// <cuda_bf16.h>, <cuda_fp16.h> resolve to its stand-ins there, which give the same functions the semantics the
// PTX ISA specifies, run by emulated threads. Include this header as "cuda/ptx.cuh" (never "ptx.cuh": a name
// relative to this folder would always pick this file). Nothing here includes anything under native/tests.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// SW_WGMMA_CODE: this compilation has the wgmma instructions (sm_90a code: CUDA 12+, architecture 90a).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SW_WGMMA_CODE 1
#endif

namespace sw::cuda::ptx {

// ------------------------------------------------------------------------------------------ mma.sync kernels (sm_80)
// All shared-memory accesses go through PTX with 32-bit shared-window addresses: no C++ type punning.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // src_bytes in [0, 16]: copies src_bytes bytes and zero-fills the remainder of the 16-byte chunk.
    const uint64_t gsrc = static_cast<uint64_t>(__cvta_generic_to_global(src)); // .global state space address
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gsrc), "r"(src_bytes)
                 : "memory");
#else
    (void)dst; (void)src; (void)src_bytes;
    __trap();
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most one committed group is still in flight.
__device__ __forceinline__ void cp_async_wait_1() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) {
    unsigned short v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void sts_u16(uint32_t addr, uint16_t v) {
    asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(static_cast<unsigned short>(v)) : "memory");
}

// d += a * b for one m16n8k16 tile; a: 4 registers (8 elements), b: 2 registers (4 elements), d: 4 fp32.
template <bool kBf16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (kBf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    (void)d; (void)a; (void)b;
    __trap();
#endif
}

// 16-bit storage <-> fp32 (round to nearest even).
template <bool kBf16> __device__ __forceinline__ float bits_to_float(uint16_t bits) {
    if constexpr (kBf16) return __bfloat162float(__ushort_as_bfloat16(bits));
    else return __half2float(__ushort_as_half(bits));
}
template <bool kBf16> __device__ __forceinline__ uint16_t float_to_bits(float v) {
    if constexpr (kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else return __half_as_ushort(__float2half_rn(v));
}

// ------------------------------------------------------------------------------------------ wgmma (sm_90a)
#if defined(SW_WGMMA_CODE)
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
#endif // SW_WGMMA_CODE

} // namespace sw::cuda::ptx
