// NCCL communicators' creation (comm_nccl.cpp): the unique id, ncclCommInitRank(Config) with a deadline, and the
// communicator built from its agreement (the in-process rendezvous, or a transport: TCP, MPI or NCCL itself) and the
// NCCL mover. The C exports (comm_api.cpp) check the arguments they take and call these.
#pragma once
#include "comm/communicator.h"
#include "comm/store.h"

namespace sw {

void nccl_unique_id(uint8_t* id);
// devices: world_size handles (checked here: CUDA, one rank per GPU).
std::shared_ptr<Communicator> create_nccl_local(int32_t world_size, const sw_device* devices, int64_t timeout_ms);
std::shared_ptr<Communicator> create_nccl_store(sw_device_s* d, StoreImpl& store, const char* prefix, int32_t rank,
                                                int32_t world_size, int64_t timeout_ms);
std::shared_ptr<Communicator> create_nccl_id(sw_device_s* d, const uint8_t* unique_id, int32_t rank, int32_t world_size,
                                             int64_t timeout_ms);
std::shared_ptr<Communicator> create_nccl_mpi(sw_device_s* d, int64_t timeout_ms);
// A device argument of the NCCL creations: a CUDA device.
void check_nccl_device(sw_device_s* d, const char* name);

} // namespace sw
