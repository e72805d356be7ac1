// Hand-written GEMM of the CPU backend (fp32, and bf16 / fp16 inputs with fp32 accumulation): cache blocking (the
// level-2 tiles) around SIMD micro-kernels chosen at run time.
#pragma once
#include "core/gemm_problem.h"

#include <cstdint>

namespace sw::cpu {

class ThreadPool;

// Avx512Bf16: fp32 problems run the Avx512 kernel; bf16 inputs run the vdpbf16ps pair kernel; fp16 inputs are
// widened like under Avx512. Auto resolves to it where the processor has AVX512_BF16.
enum class Kernel : int { Auto = 0, Avx512 = 1, Avx2 = 2, Generic = 3, Avx512Bf16 = 4 };

// True when this processor (and this build) can run the kernel. Auto and Generic are always supported.
bool kernel_supported(Kernel k);
// Auto -> the best supported kernel; others are returned unchanged.
Kernel resolve_kernel(Kernel k);
// "avx512bf16", "avx512", "avx2", "generic" ("auto" for Auto).
const char* kernel_name(Kernel k);
// Parses a name as above; returns false for an unknown name.
bool parse_kernel(const char* name, Kernel* out);

// The level-2 tile shape used for a problem (for plans and docs): register tile MR x NR, cache blocks
// MC x KC x NC (KC in k elements; for Avx512Bf16 the bf16 pair kernel's, which the fp32 kernel shares but for KC).
struct TileShape { int mr, nr, mc, kc, nc; };
TileShape tile_shape(Kernel k);

// C = epilogue(alpha*op(A)op(B) + beta*C + bias) for a problem the core has validated (core/gemm_args.cpp):
// every type F32 (a, b, c, bias and accumulation), m, n >= 1, k >= 0, leading dimensions large enough, pointers
// non-null where used.
// Determinism contract: C[i][j] depends only on row i of op(A), column j of op(B), k, alpha, beta,
// C[i][j], bias[j], the kernel and k_leaf — not on m, n, the position of (i, j), or the number of threads.
// k_leaf > 0 (the TP-invariant tree, core/tree_reduction.h): the leaves' sums combined by the fixed tree, the epilogue
// applied once to the root (gemm.cpp, "Determinism contract" rule 6).
// beta == 0 never reads C.
void sgemm(const GemmProblem& problem, Kernel kernel, ThreadPool& pool);

// Any combination the CPU backend computes: a_type == b_type in {F32, F16, BF16}, c_type F32 or a_type,
// bias_type == c_type, accumulation F32 (all F32: sgemm). 16-bit inputs are widened to fp32 while the panels are
// packed and run the kernel's fp32 micro-kernel, except bf16 inputs under Avx512Bf16, which are packed as bf16
// pairs for vdpbf16ps (bf16 subnormal inputs read as zero, subnormal partial results flushed to zero). The k
// blocks accumulate in fp32 (a 16-bit C is computed in an fp32 workspace); beta reads C widened; bias and GeLU
// are applied in fp32; a 16-bit C is rounded once at the end (to nearest even, overflow to infinity, NaN kept).
// The determinism contract of sgemm holds for every type and kernel.
void gemm(const GemmProblem& problem, Kernel kernel, ThreadPool& pool);

// count >= 1 problems, each as gemm() takes it, run as one job on the pool: member i's C equals gemm(problems[i])
// bit for bit. Members that share op(A) (same pointer, a_type, trans_a, lda, m and k) have each block of op(A) packed
// once for all of them; among those, a member whose C continues the previous member's C (the column blocks of one Y:
// same ldc, C type, alpha, beta, epilogue and bias presence) shares micro-panels with it (no padding to NR between
// them). Members with m or n = 0 are skipped. The outputs do not overlap each other or any member's inputs (checked
// by the caller).
void gemm_grouped(const GemmProblem* problems, int32_t count, Kernel kernel, ThreadPool& pool);

// GeLU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float gelu_tanh(float x);

// y[i] = GeLU(x[i]), i < n (y may be x), with the arithmetic of `kernel`'s fused GeLU epilogue (the AVX-512 and AVX2
// kernels evaluate x / (1 + exp(-2u)) with their own exp; the generic one gelu_tanh): the element-wise GeLU of a
// device gives the bits its GEMMs' fused GeLU gives.
void gelu(float* y, const float* x, int64_t n, Kernel kernel);

} // namespace sw::cpu
