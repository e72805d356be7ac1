// Splitting a communicator (sw_comm_split_local, sw_comm_split, sw_comm_get_parent_rank; shardwise.h states the
// contract). Not implemented yet: every export fails with SW_ERR_UNSUPPORTED.
#include "comm/communicator.h"

using namespace sw;

extern "C" {

SW_API sw_status sw_comm_split_local(sw_comm, const int32_t*, const int32_t*, sw_comm*) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_comm_split_local is not implemented yet"); });
}

SW_API sw_status sw_comm_split(sw_comm, int32_t, int32_t, int32_t, sw_comm*) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_comm_split is not implemented yet"); });
}

SW_API sw_status sw_comm_get_parent_rank(sw_comm, int32_t, int32_t*) {
    return guard(__func__, [&] { fail(SW_ERR_UNSUPPORTED, "sw_comm_get_parent_rank is not implemented yet"); });
}

} // extern "C"
