// Hand-written fp32 GEMM of the CPU backend: cache blocking (the level-2 tiles) around SIMD
// micro-kernels chosen at run time.
#pragma once
#include "core/gemm_problem.h"

#include <cstdint>

namespace sw::cpu {

class ThreadPool;

enum class Kernel : int { Auto = 0, Avx512 = 1, Avx2 = 2, Generic = 3 };

// True when this processor (and this build) can run the kernel. Auto and Generic are always supported.
bool kernel_supported(Kernel k);
// Auto -> the best supported kernel; others are returned unchanged.
Kernel resolve_kernel(Kernel k);
// "avx512", "avx2", "generic" ("auto" for Auto).
const char* kernel_name(Kernel k);
// Parses a name as above; returns false for an unknown name.
bool parse_kernel(const char* name, Kernel* out);

// The level-2 tile shape used for a problem (for plans and docs): register tile MR x NR, cache blocks
// MC x KC x NC.
struct TileShape { int mr, nr, mc, kc, nc; };
TileShape tile_shape(Kernel k);

// C = epilogue(alpha*op(A)op(B) + beta*C + bias) for a problem the core has validated (core/gemm_args.cpp):
// every type F32 (a, b, c, bias and accumulation), m, n >= 1, k >= 0, leading dimensions large enough, pointers
// non-null where used.
// Determinism contract: C[i][j] depends only on row i of op(A), column j of op(B), k, alpha, beta,
// C[i][j], bias[j] and the kernel — not on m, n, the position of (i, j), or the number of threads.
// beta == 0 never reads C.
void sgemm(const GemmProblem& problem, Kernel kernel, ThreadPool& pool);

// Any combination of sw_gemm_ex (gemm_mixed.cpp): a_type == b_type in {F32, F16, BF16}, c_type F32 or a_type,
// bias_type == c_type, fp32 accumulation; bias and epilogue in fp32, a 16-bit C rounded once (nearest even). All-f32
// problems run sgemm; the determinism contract of sgemm holds for every combination.
void gemm(const GemmProblem& problem, Kernel kernel, ThreadPool& pool);

// GeLU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
float gelu_tanh(float x);

} // namespace sw::cpu
