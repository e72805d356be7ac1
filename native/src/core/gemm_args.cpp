#include "core/gemm_args.h"

#include "core/dtype.h"
#include "core/enum_arg.h"
#include "core/index_math.h"
#include "core/objects.h"

#include <cmath>
#include <string>

namespace sw {
namespace {

// Validates one GEMM operand stored rows x cols with leading dimension ld at offset. `stored` names the stored shape
// ("m x k", ...) and `trans` the op argument ("trans_a = N", ...); the message text is built only when the check fails
// (nothing is formatted on the GEMM's hot path).
const void* gemm_operand(sw_buffer_s* buf, uint64_t offset, int64_t rows, int64_t cols, int64_t ld, size_t esz,
                         const char* name, const char* ld_name, const char* stored, const char* trans) {
    if (ld < (cols > 1 ? cols : 1))
        fail(SW_ERR_INVALID_ARGUMENT, ld_name, " = ", ld, " is smaller than the ", cols, " columns of ", name,
             " as stored (", stored, " = ", rows, " x ", cols, ", ", trans, "); expected ", ld_name, " >= ",
             (cols > 1 ? cols : 1));
    return buffer_span(buf, offset, matrix_extent(rows, cols, ld), esz, name);
}

} // namespace

namespace {

// The checks and the translation shared by sw_gemm and sw_gemm_ex, after the enum arguments have been read and the
// element types checked against the backend.
GemmCall build_call(sw_stream_s* s, sw_dtype a_type, sw_dtype b_type, sw_dtype c_type, sw_op trans_a, sw_op trans_b,
                    sw_epilogue epilogue, int64_t m, int64_t n, int64_t k, float alpha, sw_buffer a, uint64_t a_offset,
                    int64_t lda, sw_buffer b, uint64_t b_offset, int64_t ldb, float beta, sw_buffer c,
                    uint64_t c_offset, int64_t ldc, sw_buffer bias, uint64_t bias_offset) {
    if (m < 1) fail(SW_ERR_INVALID_ARGUMENT, "m = ", m, "; expected m >= 1");
    if (n < 1) fail(SW_ERR_INVALID_ARGUMENT, "n = ", n, "; expected n >= 1");
    if (k < 0) fail(SW_ERR_INVALID_ARGUMENT, "k = ", k, "; expected k >= 0");
    if (!std::isfinite(alpha) || !std::isfinite(beta))
        fail(SW_ERR_INVALID_ARGUMENT, "alpha = ", alpha, ", beta = ", beta, "; expected finite values");
    auto* bc = checked(c, "c");
    require_same_device(bc, s, "c");

    GemmCall call;
    GemmProblem& p = call.problem;
    p.m = m;
    p.n = n;
    p.k = k;
    p.trans_a = trans_a == SW_OP_T;
    p.trans_b = trans_b == SW_OP_T;
    p.a_type = a_type;
    p.b_type = b_type;
    p.c_type = p.bias_type = c_type;
    p.accum_type = SW_DTYPE_F32;
    p.alpha = alpha;
    p.beta = beta;
    p.epilogue = epilogue;
    p.k_leaf = s->device_impl->gemm_leaf.load(); // sw_device_set_gemm_reduction (a desc's k_leaf overrides it)
    if (k > 0) {
        auto* ba = checked(a, "a");
        auto* bb = checked(b, "b");
        require_same_device(ba, s, "a");
        require_same_device(bb, s, "b");
        const bool ta = p.trans_a, tb = p.trans_b;
        p.a = gemm_operand(ba, a_offset, p.a_rows(), p.a_cols(), lda, sw_dtype_size(a_type), "a", "lda",
                           ta ? "k x m" : "m x k", ta ? "trans_a = T" : "trans_a = N");
        p.b = gemm_operand(bb, b_offset, p.b_rows(), p.b_cols(), ldb, sw_dtype_size(b_type), "b", "ldb",
                           tb ? "n x k" : "k x n", tb ? "trans_b = T" : "trans_b = N");
        call.keep.s[0] = ba->storage;
        call.keep.s[1] = bb->storage;
    }
    p.lda = lda;
    p.ldb = ldb;
    if (ldc < n) fail(SW_ERR_INVALID_ARGUMENT, "ldc = ", ldc, " is smaller than n = ", n, "; expected ldc >= ", n);
    const size_t c_size = sw_dtype_size(c_type);
    p.c = buffer_span(bc, c_offset, matrix_extent(m, n, ldc), c_size, "c");
    p.ldc = ldc;
    call.keep.s[2] = bc->storage;
    if (bias) {
        auto* bb = checked(bias, "bias");
        require_same_device(bb, s, "bias");
        p.bias = buffer_span(bb, bias_offset, static_cast<uint64_t>(n), c_size, "bias");
        call.keep.s[3] = bb->storage;
    }
    return call;
}

} // namespace

GemmCall gemm_call_from_args(sw_stream_s* s, const sw_dtype& dtype_in, const sw_op& trans_a_in, const sw_op& trans_b_in,
                             int64_t m, int64_t n, int64_t k, float alpha, sw_buffer a, uint64_t a_offset, int64_t lda,
                             sw_buffer b, uint64_t b_offset, int64_t ldb, float beta, sw_buffer c, uint64_t c_offset,
                             int64_t ldc, sw_buffer bias, uint64_t bias_offset, const sw_epilogue& epilogue_in) {
    // Enum arguments: read raw and range-checked before they exist as enum values (core/enum_arg.h).
    const sw_dtype dtype = dtype_arg(dtype_in, "dtype");
    const sw_op trans_a = op_arg(trans_a_in, "trans_a");
    const sw_op trans_b = op_arg(trans_b_in, "trans_b");
    const sw_epilogue epilogue = epilogue_arg(epilogue_in, "epilogue");
    // sw_gemm has one dtype for A, B, C and the bias, accumulated in f32.
    s->device_impl->ops->check_gemm_types(dtype, dtype, dtype);
    return build_call(s, dtype, dtype, dtype, trans_a, trans_b, epilogue, m, n, k, alpha, a, a_offset, lda, b,
                      b_offset, ldb, beta, c, c_offset, ldc, bias, bias_offset);
}

GemmCall gemm_call_from_desc(sw_stream_s* s, const sw_gemm_desc* d) {
    if (!d) fail(SW_ERR_NULL_HANDLE, "desc is NULL; expected a sw_gemm_desc");
    if (!gemm_desc_size_ok(d->size))
        fail(SW_ERR_INVALID_ARGUMENT, "desc->size = ", d->size, "; expected sizeof(sw_gemm_desc) = ",
             sizeof(sw_gemm_desc), " (ABI version ", SW_ABI_VERSION, ") or ", kGemmDescV2Size, " (ABI 2..7)");
    const int64_t k_leaf = d->size >= sizeof(sw_gemm_desc) ? d->k_leaf : 0;
    if (k_leaf < -1 || k_leaf > kMaxGemmLeaf || (k_leaf > 0 && k_leaf % 2 != 0))
        fail(SW_ERR_INVALID_ARGUMENT, "desc->k_leaf = ", k_leaf,
             "; expected 0 (the device's reduction), -1 (the default order) or an even leaf size 2..", kMaxGemmLeaf);
    const sw_dtype a_type = dtype_arg(d->a_type, "a_type");
    const sw_dtype b_type = dtype_arg(d->b_type, "b_type");
    const sw_dtype c_type = dtype_arg(d->c_type, "c_type");
    const sw_dtype compute_type = dtype_arg(d->compute_type, "compute_type");
    const sw_op trans_a = op_arg(d->trans_a, "trans_a");
    const sw_op trans_b = op_arg(d->trans_b, "trans_b");
    const sw_epilogue epilogue = epilogue_arg(d->epilogue, "epilogue");
    // The combinations the C ABI defines (a backend may compute fewer: check_gemm_types).
    if (!gemm_types_defined(a_type, b_type, c_type) || compute_type != SW_DTYPE_F32)
        fail(SW_ERR_UNSUPPORTED, "a = ", dtype_name(a_type), ", b = ", dtype_name(b_type), ", c = ", dtype_name(c_type),
             ", compute = ", dtype_name(compute_type),
             ": sw_gemm_ex computes a = b in {f32, f16, bf16}, c = f32 or a's type, compute = f32");
    s->device_impl->ops->check_gemm_types(a_type, b_type, c_type);
    GemmCall call = build_call(s, a_type, b_type, c_type, trans_a, trans_b, epilogue, d->m, d->n, d->k, d->alpha, d->a,
                               d->a_offset, d->lda, d->b, d->b_offset, d->ldb, d->beta, d->c, d->c_offset, d->ldc,
                               d->bias, d->bias_offset);
    if (k_leaf != 0) call.problem.k_leaf = k_leaf < 0 ? 0 : k_leaf;
    return call;
}

} // namespace sw
