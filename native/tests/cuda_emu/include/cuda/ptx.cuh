// Host emulation of the PTX wrappers of native/src/cuda/ptx.cuh (same names, same namespace): the operations with
// the semantics the PTX ISA gives them, run by the emulated threads of cuda_emu.h, so that the index math, the
// pipelines and the edges of the hand-written kernels are tested on machines without a GPU.
// The emulation checks (CMake: the *_emu_check targets) put native/tests/cuda_emu/include ahead of native/src on the
// include path, so the kernels' #include "cuda/ptx.cuh" finds this file instead of the device one.
#pragma once
#include "cuda_emu.h"

#include <cstdint>

// The emulation runs the wgmma kernel too (cuda_emu.h emulates wgmma with its descriptors).
#define SW_WGMMA_CODE 1

namespace sw::cuda::ptx {

// ------------------------------------------------------------------------------------------ mma.sync kernels (sm_80)
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return ::sw::emu::shared_address(p); }
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
    ::sw::emu::cp_async(dst, src, 16, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { ::sw::emu::cp_async_commit(); }
__device__ __forceinline__ void cp_async_wait_1() { ::sw::emu::cp_async_wait(1); }
__device__ __forceinline__ uint32_t lds_u32(uint32_t addr) { return ::sw::emu::ld_shared<uint32_t>(addr); }
__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) { return ::sw::emu::ld_shared<uint16_t>(addr); }
__device__ __forceinline__ void sts_u16(uint32_t addr, uint16_t v) { ::sw::emu::st_shared<uint16_t>(addr, v); }
template <bool kBf16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    ::sw::emu::mma_m16n8k16(kBf16, d, a, b);
}
template <bool kBf16> __device__ __forceinline__ float bits_to_float(uint16_t bits) {
    return kBf16 ? ::sw::emu::bf16_to_float(bits) : ::sw::emu::f16_to_float(bits);
}
template <bool kBf16> __device__ __forceinline__ uint16_t float_to_bits(float v) {
    return kBf16 ? ::sw::emu::float_to_bf16(v) : ::sw::emu::float_to_f16(v);
}

// ------------------------------------------------------------------------------------------ wgmma (sm_90a)
__device__ __forceinline__ void fence_proxy_async() { ::sw::emu::fence_proxy_async(); }
__device__ __forceinline__ void wgmma_fence() { ::sw::emu::wgmma_fence(); }
__device__ __forceinline__ void wgmma_commit() { ::sw::emu::wgmma_commit(); }
__device__ __forceinline__ void wgmma_wait0() { ::sw::emu::wgmma_wait(0); }
template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    ::sw::emu::wgmma_m64nNk16(kBf16, 128, d, desc_a, desc_b);
}

} // namespace sw::cuda::ptx
