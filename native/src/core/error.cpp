#include "core/dtype.h"
#include "core/enum_arg.h"
#include "core/error.h"

#include <cstdint>

namespace {
thread_local std::string t_last_error;
}

namespace sw {
void set_last_error(const std::string& message) noexcept {
    try {
        t_last_error = message;
    } catch (...) {
        // Out of memory while storing the message: keep the old one rather than throwing.
    }
}
} // namespace sw

extern "C" {

SW_API int32_t sw_abi_version(void) { return SW_ABI_VERSION; }

SW_API const char* sw_version_string(void) { return SHARDWISE_VERSION_STRING; }

SW_API const char* sw_last_error(void) { return t_last_error.c_str(); }

SW_API const char* sw_status_string(sw_status status_arg) {
    // Any int32 may arrive here: read the raw value (enum_arg.h), never load an out-of-range sw_status.
    const int32_t status = sw::enum_raw(status_arg);
    switch (status) {
    case SW_OK: return "SW_OK";
    case SW_ERR_INVALID_ARGUMENT: return "SW_ERR_INVALID_ARGUMENT";
    case SW_ERR_NULL_HANDLE: return "SW_ERR_NULL_HANDLE";
    case SW_ERR_OUT_OF_MEMORY: return "SW_ERR_OUT_OF_MEMORY";
    case SW_ERR_UNSUPPORTED: return "SW_ERR_UNSUPPORTED";
    case SW_ERR_TIMEOUT: return "SW_ERR_TIMEOUT";
    case SW_ERR_MISMATCH: return "SW_ERR_MISMATCH";
    case SW_ERR_ABORTED: return "SW_ERR_ABORTED";
    case SW_ERR_BACKEND: return "SW_ERR_BACKEND";
    case SW_ERR_NOT_FOUND: return "SW_ERR_NOT_FOUND";
    case SW_ERR_INTERNAL: return "SW_ERR_INTERNAL";
    default: break;
    }
    return "SW_ERR_UNKNOWN_STATUS";
}

SW_API size_t sw_dtype_size(sw_dtype dtype) {
    const int32_t v = sw::enum_raw(dtype);
    return v >= SW_DTYPE_F32 && v <= SW_DTYPE_U8 ? sw::dtype_bytes(static_cast<sw_dtype>(v)) : 0;
}

} // extern "C"
