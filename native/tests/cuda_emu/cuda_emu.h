// Host emulation of the part of CUDA that the hand-written kernels use, so that their device code runs in CI
// on machines without a GPU (native/tests/cuda_emu/mma_gemm_emu_check.cpp).
//
// What it is: every CUDA thread of a block is a fiber (a hand-written x86-64 context switch, else ucontext) on one
// OS thread; blocks run one after the other.
// __syncthreads is a block barrier, mma.sync a warp-collective operation (all 32 lanes exchange their fragments,
// laid out as the PTX ISA specifies for mma.m16n8k16 .row.col with f16/bf16 inputs and f32 accumulators),
// cp.async a per-thread queue of copies in commit groups that land as late as the PTX semantics allow (at
// cp.async.wait_group), so that reading a tile before waiting for it reads stale data and is reported.
//
// What it checks while the kernel runs (each finding is an error of the launch):
//  - shared memory: a read of bytes that no thread of the block wrote (uninitialised; shared memory starts
//    undefined in every block), a read or write of bytes with a cp.async still in flight, read-after-write,
//    write-after-read and write-after-write between different threads with no __syncthreads in between
//    (a race), misaligned shared accesses;
//  - cp.async: destination and source aligned to the copy size, source bytes inside a registered global
//    buffer, copies still in flight when the thread exits;
//  - __syncthreads reached by only part of the block, warp-collective operations reached by only part of a warp:
//    reported as a deadlock instead of hanging.
// What it does not model: timing, the memory model beyond barriers, plain global loads and stores (the test
// puts every matrix against a guard page instead), occupancy, the tensor cores' exact rounding (the emulated mma
// sums each 16-term product in double and rounds once to fp32).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

// ---- the CUDA C++ spellings the kernels use, for a host compiler
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// ---- stand-ins for the runtime's types and the device functions the plugin's .cu files use
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = struct CUstream_st*;
inline cudaError_t cudaGetLastError() { return cudaSuccess; } // launch errors come back from run_kernel
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __double2float_rn(double d) { return static_cast<float>(d); } // the host rounds to nearest even
float __double2float_rz(double d);                                          // toward zero
// Single-rounding float multiply and add (never contracted into an FMA on the device; the host build of the emulation
// does not contract either: ISO C++ mode, no -mfma).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline void __nanosleep(unsigned) {}
inline void __threadfence_system() {}

namespace sw::emu {

dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();

// Block barrier (__syncthreads) and warp barrier (the warp-collective operations use it).
void syncthreads();
void warp_sync();

// Dynamic-style shared memory for kernels whose shared addresses must be small (wgmma descriptors hold 14 bits of
// address >> 4): the i-th call of every thread of a block returns the same block-local memory, at window offsets
// from 0 (uninitialised at the start of each block, like real shared memory).
void* shared_alloc(size_t bytes, size_t align);
// Shared memory: a 32-bit address in an emulated shared window (what __cvta_generic_to_shared gives).
uint32_t shared_address(const void* p);
void check_shared_access(uint32_t addr, size_t bytes, bool write);
void* shared_pointer(uint32_t addr);

template <class T> T ld_shared(uint32_t addr) {
    check_shared_access(addr, sizeof(T), false);
    T v;
    std::memcpy(&v, shared_pointer(addr), sizeof(T));
    return v;
}
template <class T> void st_shared(uint32_t addr, T v) {
    check_shared_access(addr, sizeof(T), true);
    std::memcpy(shared_pointer(addr), &v, sizeof(T));
}

// cp.async.cg.shared.global [dst], [src], cp_size, src_size: src_size bytes copied, the rest zero-filled.
void cp_async(uint32_t dst, const void* src, int cp_size, int src_size);
void cp_async_commit();
// cp.async.wait_group n: all but the newest n committed groups of this thread have landed.
void cp_async_wait(int n);

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, d (warp-collective).
void mma_m16n8k16(bool bf16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

// wgmma (sm_90a), warpgroup-collective (the 128 threads of a warpgroup): d (n / 2 fp32 a thread, the m64nNk16
// accumulator fragment) += A (64 x 16) * B (n x 16)^T, both read from shared memory through matrix descriptors in
// the K-major no-swizzle layout (start >> 4 in bits 0-13, leading byte offset >> 4 in 16-29 = between the two
// k-adjacent core matrices, stride byte offset >> 4 in 32-45 = between 8-row groups; other layouts are reported).
// The reads are checked like any shared load, and the bytes stay "in use by the tensor cores" until
// wgmma.wait_group: a store to them before that is reported.
void wgmma_m64nNk16(bool bf16, int n, float* d, uint64_t desc_a, uint64_t desc_b);
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
// fence.proxy.async.shared::cta: a thread's shared-memory writes become visible to the tensor cores. A wgmma that
// reads bytes whose writer has not fenced since writing them is reported.
void fence_proxy_async();
// Barrier of the `size` consecutive threads (size divides the block) that contain the calling thread.
void group_sync(unsigned size);

// 16-bit floating-point formats (round to nearest even, as __float2bfloat16_rn / __float2half_rn).
float bf16_to_float(uint16_t bits);
float f16_to_float(uint16_t bits);
uint16_t float_to_bf16(float v);
uint16_t float_to_f16(float v);

// Global buffers that cp.async may read from (the test registers its matrices).
void register_global(const void* p, size_t bytes);
void clear_globals();

// Runs `thread` for every thread of every block. Returns the findings (empty: clean run). Never hangs: a
// deadlock ends the block and is reported.
std::vector<std::string> launch(dim3 grid, dim3 block, const std::function<void()>& thread);

// A kernel launch as the plugin makes it (cuda/launch.cuh): checks the configuration as the runtime does
// (cudaErrorInvalidConfiguration: 1..1024 threads a block, grid.x <= 2^31 - 1, grid.y and grid.z <= 65535), runs
// the kernel, and keeps its findings for take_findings().
cudaError_t run_kernel(dim3 grid, dim3 block, const std::function<void()>& thread);
// The findings of every run_kernel since the last call (empty: all clean).
std::vector<std::string> take_findings();

} // namespace sw::emu

#define threadIdx (::sw::emu::thread_idx())
#define blockIdx (::sw::emu::block_idx())
#define blockDim (::sw::emu::block_dim())
#define gridDim (::sw::emu::grid_dim())
inline void __syncthreads() { ::sw::emu::syncthreads(); }
