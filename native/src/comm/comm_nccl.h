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

// ---- sub-communicators (split.cpp)
struct NcclRank;
// sw_comm_split_local of an in-process NCCL communicator: one group's ranks on `devices` (distinct GPUs), their NCCL
// communicators made in one group as sw_comm_create_nccl_local makes them.
std::shared_ptr<Communicator> nccl_split_local(std::vector<std::shared_ptr<DeviceImpl>> devices, int64_t timeout_ms);
// sw_comm_split of a per-process NCCL communicator, inside the split's host collective (every rank of the parent calls
// it): ncclCommSplit of the parent's NCCL communicator where NCCL has it (color < 0: NCCL_SPLIT_NOCOLOR), else, for
// the members only, ncclCommInitRank(Config) with a unique id from the group's rank 0 sent over `sub` (the group's
// new transport). Null for a rank that opted out.
std::shared_ptr<NcclRank> nccl_split_rank(Communicator& parent, Transport* sub, int32_t color, int32_t key,
                                          Clock::time_point deadline, const std::string& what);
// The child communicator over the group's transport and its NCCL communicator.
std::shared_ptr<Communicator> nccl_split_comm(std::shared_ptr<DeviceImpl> dev, std::unique_ptr<Transport> transport,
                                              int64_t timeout_ms, std::shared_ptr<NcclRank> h);

} // namespace sw
