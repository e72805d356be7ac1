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

// sw_dtype argument `name`: the value, or SW_ERR_INVALID_ARGUMENT naming it and the valid values.
inline sw_dtype dtype_arg(const sw_dtype& arg, const char* name) {
    const int32_t v = enum_raw(arg);
    if (v < SW_DTYPE_F32 || v > SW_DTYPE_U8)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v,
             " is not a sw_dtype; expected SW_DTYPE_F32 (0), F64 (1), F16 (2), BF16 (3), I32 (4) or U8 (5)");
    return static_cast<sw_dtype>(v);
}

inline sw_backend backend_arg(const sw_backend& arg, const char* name) {
    const int32_t v = enum_raw(arg);
    if (v != SW_BACKEND_CPU && v != SW_BACKEND_CUDA)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v,
             " is not a sw_backend; expected SW_BACKEND_CPU (0) or SW_BACKEND_CUDA (1)");
    return static_cast<sw_backend>(v);
}

inline sw_op op_arg(const sw_op& arg, const char* name) {
    const int32_t v = enum_raw(arg);
    if (v != SW_OP_N && v != SW_OP_T)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v, " is not a sw_op; expected SW_OP_N (0) or SW_OP_T (1)");
    return static_cast<sw_op>(v);
}

inline sw_epilogue epilogue_arg(const sw_epilogue& arg, const char* name) {
    const int32_t v = enum_raw(arg);
    if (v != SW_EPILOGUE_NONE && v != SW_EPILOGUE_GELU)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v,
             " is not a sw_epilogue; expected SW_EPILOGUE_NONE (0) or SW_EPILOGUE_GELU (1)");
    return static_cast<sw_epilogue>(v);
}

inline sw_reduce_op reduce_op_arg(const sw_reduce_op& arg, const char* name) {
    const int32_t v = enum_raw(arg);
    if (v != SW_REDUCE_SUM)
        fail(SW_ERR_INVALID_ARGUMENT, name, " = ", v, " is not a sw_reduce_op; expected SW_REDUCE_SUM (0)");
    return static_cast<sw_reduce_op>(v);
}

} // namespace sw
