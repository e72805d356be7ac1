// Element types: sizes and names, header-only so the core, the CUDA plugin and the check programs share one
// definition (the plugin is a separate library and cannot call the core's internals).
#pragma once
#include "shardwise.h"

#include <cstddef>

namespace sw {

// Bytes per element, 0 for a value that is not a sw_dtype.
inline size_t dtype_bytes(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return 4;
    case SW_DTYPE_F64: return 8;
    case SW_DTYPE_F16: return 2;
    case SW_DTYPE_BF16: return 2;
    case SW_DTYPE_I32: return 4;
    case SW_DTYPE_U8: return 1;
    default: break;
    }
    return 0;
}

// Short name ("f32", "bf16"...), "unknown dtype" for a value that is not a sw_dtype.
inline const char* dtype_name(sw_dtype t) {
    switch (t) {
    case SW_DTYPE_F32: return "f32";
    case SW_DTYPE_F64: return "f64";
    case SW_DTYPE_F16: return "f16";
    case SW_DTYPE_BF16: return "bf16";
    case SW_DTYPE_I32: return "i32";
    case SW_DTYPE_U8: return "u8";
    default: break;
    }
    return "unknown dtype";
}

} // namespace sw
