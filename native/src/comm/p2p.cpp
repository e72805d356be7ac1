// Point-to-point transfers (sw_send, sw_recv, sw_sendrecv; shardwise.h states the contract). Not implemented yet:
// every export fails with SW_ERR_UNSUPPORTED.
#include "comm/communicator.h"

using namespace sw;

extern "C" {

SW_API sw_status sw_send(sw_comm, int32_t, int32_t, sw_buffer, uint64_t, uint64_t, sw_dtype, sw_stream) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_send is not implemented yet"); });
}

SW_API sw_status sw_recv(sw_comm, int32_t, int32_t, sw_buffer, uint64_t, uint64_t, sw_dtype, sw_stream) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_recv is not implemented yet"); });
}

SW_API sw_status sw_sendrecv(sw_comm, int32_t, int32_t, sw_buffer, uint64_t, uint64_t, int32_t, sw_buffer, uint64_t,
                             uint64_t, sw_dtype, sw_stream) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_sendrecv is not implemented yet"); });
}

} // extern "C"
