// The NCCL functions Shardwise uses, resolved at run time from libnccl.so.2 (nccl_loader.cpp). Types are NCCL's ABI
// as published in nccl.h: ncclResult_t and the enums are ints, ncclComm_t an opaque pointer, ncclUniqueId 128 bytes
// passed by value, cudaStream_t an opaque pointer.
#pragma once
#include <cstddef>

namespace sw {

struct NcclUniqueId {
    char internal[128];
};

using NcclComm = void*;

// ncclDataType_t
enum NcclType : int { kNcclInt8 = 0, kNcclUint8 = 1, kNcclInt32 = 2, kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclBfloat16 = 9 };
constexpr int kNcclSum = 0;     // ncclRedOp_t
constexpr int kNcclSuccess = 0; // ncclResult_t
constexpr int kNcclInProgress = 7;

struct NcclApi {
    int version = 0;
    int (*GetVersion)(int*);
    int (*GetUniqueId)(NcclUniqueId*);
    int (*CommInitRank)(NcclComm*, int, NcclUniqueId, int);
    int (*CommDestroy)(NcclComm);
    int (*CommAbort)(NcclComm);
    int (*CommGetAsyncError)(NcclComm, int*);
    int (*CommCount)(NcclComm, int*);
    int (*CommUserRank)(NcclComm, int*);
    int (*AllReduce)(const void*, void*, size_t, int, int, NcclComm, void*);
    int (*AllGather)(const void*, void*, size_t, int, NcclComm, void*);
    int (*ReduceScatter)(const void*, void*, size_t, int, int, NcclComm, void*);
    int (*Broadcast)(const void*, void*, size_t, int, int, NcclComm, void*);
    int (*Reduce)(const void*, void*, size_t, int, int, int, NcclComm, void*);
    int (*GroupStart)();
    int (*GroupEnd)();
    const char* (*GetErrorString)(int);
    const char* (*GetLastError)(NcclComm); // optional (2.13+): may be null
};

// The loaded API, or throws sw::Error(SW_ERR_NOT_FOUND) saying what was searched and why it failed.
const NcclApi& nccl_api();

} // namespace sw
