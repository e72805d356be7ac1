// The plugin's GeLU (tanh approximation, as the CPU backend: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))), in one
// place for every kernel that applies it: the element-wise and epilogue kernels (kernels.cu) and the tree GEMM
// (gemm_tree.cu), so that a GEMM's GeLU epilogue and the element-wise GeLU give the same bits for the same input.
// Include as "cuda/gelu.cuh"; compiles for the host emulation too (native/tests/cuda_emu).
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace sw::cuda::dev {

__device__ __forceinline__ float gelu(float x) {
    const float kSqrt2OverPi = 0.7978845608028654f;
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ double gelu(double x) {
    const double kSqrt2OverPi = 0.7978845608028654;
    const double u = kSqrt2OverPi * (x + 0.044715 * x * x * x);
    return 0.5 * x * (1.0 + tanh(u));
}

} // namespace sw::cuda::dev
