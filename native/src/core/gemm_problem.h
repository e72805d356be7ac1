// One description of a GEMM, from the C ABI to the kernels: sw_gemm validates its arguments once
// (core/gemm_args.cpp) and builds a GemmProblem, which the backend hands as it is to its kernels — the CPU GEMM
// (cpu/gemm.h) and the CUDA plugin (core/cuda_plugin_api.h). Header-only and free of core internals, so the plugin
// (a separate library) shares the definition.
//
//   C[m,n] = epilogue(alpha * op(A)[m,k] op(B)[k,n] + beta * C + bias[n])      row-major, BLAS-style lds
//
// The element types are separate for A, B, C and the bias, and the accumulation type is explicit, so that a
// mixed-precision GEMM (A/B in bf16 or f16, C in f32, fp32 accumulation) is one more supported combination,
// not another description. Which combinations a backend computes is the backend's to say (Backend::check_gemm).
#pragma once
#include "shardwise.h"

#include <cstdint>

namespace sw {

struct GemmProblem {
    // ---- shape and operations
    int64_t m = 0, n = 0, k = 0; // m, n >= 1, k >= 0 (k == 0: C = epilogue(beta * C + bias))
    bool trans_a = false;        // op(A) = A^T: A stored k x m (else m x k)
    bool trans_b = false;        // op(B) = B^T: B stored n x k (else k x n)

    // ---- element types
    sw_dtype a_type = SW_DTYPE_F32;
    sw_dtype b_type = SW_DTYPE_F32;
    sw_dtype c_type = SW_DTYPE_F32;
    sw_dtype bias_type = SW_DTYPE_F32;  // the bias's elements (today always c_type)
    sw_dtype accum_type = SW_DTYPE_F32; // accumulation and alpha/beta: f32 on every path today
    bool allow_tf32 = false;            // f32 inputs may be rounded to tf32 by tensor cores (CUDA only; the C ABI
                                        // never sets it)

    // ---- scalars
    float alpha = 1.0f, beta = 0.0f; // beta == 0: C is never read

    // ---- operands: element pointers with the buffer offsets already applied, leading dimensions in elements
    const void* a = nullptr; int64_t lda = 0; // unused (may be null) when k == 0
    const void* b = nullptr; int64_t ldb = 0;
    void* c = nullptr; int64_t ldc = 0;
    const void* bias = nullptr; // n elements of bias_type, or null

    // ---- epilogue, after alpha/beta and the bias
    sw_epilogue epilogue = SW_EPILOGUE_NONE;

    // ---- the k reduction (sw_device_set_gemm_reduction): 0 = the backend's default order; > 0 (even) = the
    // TP-invariant tree over leaves of k_leaf elements (core/tree_reduction.h), alpha/beta/bias/epilogue applied once
    // to its root. The core resolves the device's setting and a desc's k_leaf = -1 before a backend sees it.
    int64_t k_leaf = 0;

    bool gelu() const { return epilogue == SW_EPILOGUE_GELU; }
    // Rows x columns of A and B as stored.
    int64_t a_rows() const { return trans_a ? k : m; }
    int64_t a_cols() const { return trans_a ? m : k; }
    int64_t b_rows() const { return trans_b ? n : k; }
    int64_t b_cols() const { return trans_b ? k : n; }
};

// The element-type combinations the C ABI defines (sw_gemm_desc): a = b in {f32, f16, bf16}, c = f32 or a's type (the
// bias has c's type, accumulation is f32). Both backends compute exactly these; check_gemm_types names a refused one.
inline bool gemm_types_defined(sw_dtype a_type, sw_dtype b_type, sw_dtype c_type) {
    const bool input = a_type == SW_DTYPE_F32 || a_type == SW_DTYPE_F16 || a_type == SW_DTYPE_BF16;
    return input && b_type == a_type && (c_type == SW_DTYPE_F32 || c_type == a_type);
}

} // namespace sw
