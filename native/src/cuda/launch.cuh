// Kernel launches of the plugin's .cu files, in one place: the real launch (<<<>>>, then the launch status), or,
// when the file is compiled for the host emulation test (SW_CUDA_HOST_EMULATION, native/tests/cuda_emu), a run of
// the kernel on emulated threads. Include from .cu files only (host compilers cannot parse <<<>>>).
#pragma once
#include "cuda/common.h"

namespace sw::cuda {

// Launches k<<<grid, block, 0, stream>>> with the arguments converted to the kernel's parameter types and returns
// cudaGetLastError() (the launch status; the kernel's own faults show up at the next synchronisation).
template <class... P, class... A>
cudaError_t launch_kernel(void (*k)(P...), dim3 grid, dim3 block, cudaStream_t stream, A&&... args) {
#if defined(SW_CUDA_HOST_EMULATION)
    (void)stream;
    return ::sw::emu::run_kernel(grid, block, [&] { k(static_cast<P>(args)...); });
#else
    k<<<grid, block, 0, stream>>>(static_cast<P>(args)...);
    return cudaGetLastError();
#endif
}

// Loads kernel k now (under lazy module loading it would load at its first launch, which may wait for the whole
// context; see plugin.cpp). The emulation has nothing to load.
template <class... P>
cudaError_t preload_kernel(void (*k)(P...)) {
#if defined(SW_CUDA_HOST_EMULATION)
    (void)k;
    return cudaSuccess;
#else
    cudaFuncAttributes attributes;
    return cudaFuncGetAttributes(&attributes, k);
#endif
}

} // namespace sw::cuda
