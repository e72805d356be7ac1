// Launches the hand-written tensor-core GEMM (GemmAlgo::HandWritten); the kernel and its design notes are in
// gemm_mma_kernel.cuh, shared with the host emulation test.
#include "cuda/common.h"
#include "cuda/gemm_mma_kernel.cuh"
#include "cuda/gemm_wgmma_kernel.cuh"
#include "cuda/launch.cuh"

#include <cstdint>
#include <string>

namespace sw::cuda {
namespace {
using namespace mma_detail;

template <bool kBf16, bool kTransA, bool kTransB>
cudaError_t launch_as(const Params& p, cudaStream_t stream) {
    return launch_kernel(mma_gemm_kernel<kBf16, kTransA, kTransB>, mma_grid(p.m, p.n), dim3(kThreads), stream, p);
}

template <bool kBf16, bool kTransA, bool kTransB>
cudaError_t launch_wg_as(const Params& p, cudaStream_t stream) {
    return launch_kernel(wgmma_gemm_kernel<kBf16, kTransA, kTransB>, mma_grid(p.m, p.n), dim3(kThreads), stream, p);
}

template <bool kBf16>
cudaError_t launch_typed(const Params& p, bool ta, bool tb, bool wgmma, cudaStream_t stream) {
    if (wgmma) {
        if (!ta && !tb) return launch_wg_as<kBf16, false, false>(p, stream);
        if (!ta && tb) return launch_wg_as<kBf16, false, true>(p, stream);
        if (ta && !tb) return launch_wg_as<kBf16, true, false>(p, stream);
        return launch_wg_as<kBf16, true, true>(p, stream);
    }
    if (!ta && !tb) return launch_as<kBf16, false, false>(p, stream);
    if (!ta && tb) return launch_as<kBf16, false, true>(p, stream);
    if (ta && !tb) return launch_as<kBf16, true, false>(p, stream);
    return launch_as<kBf16, true, true>(p, stream);
}

} // namespace

std::string mma_gemm_shape_problem(int64_t m, int64_t n) {
    // grid.x = ceil(m / 128) <= 2^31 - 1, grid.y = ceil(n / 128) <= 65535.
    if ((m + kBM - 1) / kBM > 2147483647LL) return str("m = ", m, " needs more than 2^31 - 1 row blocks");
    if ((n + kBN - 1) / kBN > 65535) return str("n = ", n, " exceeds the kernel's limit of ", 65535LL * kBN, " columns");
    return {};
}

cudaError_t launch_mma_gemm(const GemmProblem& d, bool wgmma, cudaStream_t stream) {
    const Params p = make_params(d);
    (void)cudaGetLastError();
    if (d.a_type == SW_DTYPE_BF16) return launch_typed<true>(p, d.trans_a, d.trans_b, wgmma, stream);
    return launch_typed<false>(p, d.trans_a, d.trans_b, wgmma, stream);
}

cudaError_t launch_wgmma_probe(int* out, cudaStream_t stream) {
    (void)cudaGetLastError();
    return launch_kernel(wgmma_probe_kernel, dim3(1), dim3(1), stream, out);
}

} // namespace sw::cuda
