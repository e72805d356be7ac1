// Enum arguments of the C ABI, read at the boundary.
//
// A C caller may pass any 32-bit value as a sw_dtype, sw_backend, sw_op, sw_epilogue, sw_reduce_op or sw_status
// (C converts freely). In C++ a value outside an enum's range (these enums have no negative enumerator, so -1 is
// outside it) must never be loaded as the enum type: that is undefined behaviour (UBSan: "load of value 4294967295,
// which is not a valid value for type 'sw_backend'"). So every export reads such an argument here, through its
// object representation (memcpy of the parameter's 4 bytes into an int32_t; the enum-typed parameter is never
// loaded), checks the range, and only then makes an enum value of it. Pass the *parameter itself* (by reference):
// copying it into another enum variable first would be the very load this avoids.
#pragma once
#include "shardwise.h"

#include "core/error.h"

#include <cstdint>
#include <cstring>

namespace sw {

template <class E>
int32_t enum_raw(const E& arg) noexcept {
    static_assert(sizeof(E) == sizeof(int32_t), "the C ABI's enums are 32-bit");
    int32_t v;
    std::memcpy(&v, &arg, sizeof v);
    return v;
}

// Enum argument `name` of type E whose valid values are lo..hi: the value, or SW_ERR_INVALID_ARGUMENT naming the
// argument, its value and the valid values (`expected`, e.g. "a sw_op; expected SW_OP_N (0) or SW_OP_T (1)").
template <class E>
E enum_arg(const E& arg, const char* name, int32_t lo, int32_t hi, const char* expected) {
    const int32_t v = enum_raw(arg);
    if (v < lo || v > hi) fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v, " is not ", expected);
    return static_cast<E>(v);
}

inline sw_dtype dtype_arg(const sw_dtype& arg, const char* name) {
    return enum_arg(arg, name, SW_DTYPE_F32, SW_DTYPE_U8,
                    "a sw_dtype; expected SW_DTYPE_F32 (0), F64 (1), F16 (2), BF16 (3), I32 (4) or U8 (5)");
}

inline sw_backend backend_arg(const sw_backend& arg, const char* name) {
    return enum_arg(arg, name, SW_BACKEND_CPU, SW_BACKEND_CUDA,
                    "a sw_backend; expected SW_BACKEND_CPU (0) or SW_BACKEND_CUDA (1)");
}

inline sw_op op_arg(const sw_op& arg, const char* name) {
    return enum_arg(arg, name, SW_OP_N, SW_OP_T, "a sw_op; expected SW_OP_N (0) or SW_OP_T (1)");
}

inline sw_epilogue epilogue_arg(const sw_epilogue& arg, const char* name) {
    return enum_arg(arg, name, SW_EPILOGUE_NONE, SW_EPILOGUE_GELU,
                    "a sw_epilogue; expected SW_EPILOGUE_NONE (0) or SW_EPILOGUE_GELU (1)");
}

inline sw_reduce_op reduce_op_arg(const sw_reduce_op& arg, const char* name) {
    return enum_arg(arg, name, SW_REDUCE_SUM, SW_REDUCE_SUM_TREE,
                    "a sw_reduce_op; expected SW_REDUCE_SUM (0) or SW_REDUCE_SUM_TREE (1)");
}

inline sw_norm_kind norm_kind_arg(const sw_norm_kind& arg, const char* name) {
    return enum_arg(arg, name, SW_NORM_LAYER, SW_NORM_RMS,
                    "a sw_norm_kind; expected SW_NORM_LAYER (0) or SW_NORM_RMS (1)");
}

inline sw_activation activation_arg(const sw_activation& arg, const char* name) {
    return enum_arg(arg, name, SW_ACTIVATION_GELU, SW_ACTIVATION_SILU,
                    "a sw_activation; expected SW_ACTIVATION_GELU (0), SW_ACTIVATION_RELU (1) or SW_ACTIVATION_SILU (2)");
}

} // namespace sw
