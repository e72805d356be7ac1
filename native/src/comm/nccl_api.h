// The NCCL functions Shardwise uses, resolved at run time from libnccl.so.2 (nccl_loader.cpp). Types are NCCL's ABI
// as published in nccl.h: ncclResult_t and the enums are ints, ncclComm_t an opaque pointer, ncclUniqueId 128 bytes
// passed by value, cudaStream_t an opaque pointer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sw {

struct NcclUniqueId {
    char internal[128];
};

using NcclComm = void*;

// ncclDataType_t
enum NcclType : int { kNcclInt8 = 0, kNcclUint8 = 1, kNcclInt32 = 2, kNcclFloat16 = 6, kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclBfloat16 = 9 };
constexpr int kNcclSum = 0;     // ncclRedOp_t
constexpr int kNcclSuccess = 0; // ncclResult_t
constexpr int kNcclInProgress = 7; // NCCL 2.14+: a non-blocking communicator's operation has not finished yet

// ncclConfig_t as NCCL 2.14 declared it (ncclConfig_v21400 in NCCL's src/nccl.h.in, tag v2.14.3-1): the argument of
// ncclCommInitRankConfig. Our own minimal declaration of its leading fields; what was checked in NCCL's sources
// (github.com/NVIDIA/nccl, tags v2.14.3-1 ... v2.30.7-1 and master):
// - Every later ncclConfig_t (ncclConfig_v21700 in 2.17-2.26, ncclConfig_v22700, ..., ncclConfig_v23000) starts with
//   these same fields (size_t size; unsigned magic; unsigned version; int blocking) and appends after them.
// - NCCL 2.14-2.16 (src/init.cc parseCommConfig) read only config->blocking (offset 16) and check nothing else.
// - NCCL 2.17 and later (src/init.cc parseCommConfig) start from their own NCCL_CONFIG_INITIALIZER defaults, copy
//   min(config->size, their sizeof(ncclConfig_t)) bytes of ours over them, fail with ncclInvalidArgument unless
//   magic == 0xcafebeef (NCCL_API_MAGIC), and reset to defaults every field newer than config->version
//   (version < NCCL_VERSION(2,17,0) resets cgaClusterSize, minCTAs, maxCTAs, netName; later cut-offs reset later
//   fields). So with version 2.14.0 our 4 bytes of tail padding (copied over cgaClusterSize) are reset, and every
//   field we do not declare keeps NCCL's default. blocking must be 0, 1 or NCCL_CONFIG_UNDEF_INT (INT_MIN).
// The values are those NCCL_CONFIG_INITIALIZER gives a program built against NCCL 2.14's nccl.h (size = sizeof,
// magic, version = NCCL_VERSION(2,14,0) = 21400), with blocking = 0.
struct NcclConfigV21400 {
    size_t size;
    unsigned int magic;
    unsigned int version;
    int blocking;
};
static_assert(sizeof(size_t) == 8 && sizeof(NcclConfigV21400) == 24, "ncclConfig_v21400 layout (LP64)");
static_assert(offsetof(NcclConfigV21400, blocking) == 16, "ncclConfig_t.blocking is at offset 16 in every NCCL version");
constexpr unsigned int kNcclConfigMagic = 0xcafebeef;
constexpr unsigned int kNcclConfigVersion = 21400; // NCCL_VERSION(2, 14, 0)

// A non-blocking configuration (blocking = 0): the one Shardwise passes to ncclCommInitRankConfig.
inline NcclConfigV21400 nccl_nonblocking_config() {
    NcclConfigV21400 c{}; // zeroes the tail padding too
    c.size = sizeof c;
    c.magic = kNcclConfigMagic;
    c.version = kNcclConfigVersion;
    c.blocking = 0;
    return c;
}

struct NcclApi {
    int version = 0;
    int (*GetVersion)(int*);
    int (*GetUniqueId)(NcclUniqueId*);
    int (*CommInitRank)(NcclComm*, int, NcclUniqueId, int);
    // optional (2.14+): may be null; then communicators are made with the blocking ncclCommInitRank (no deadline)
    int (*CommInitRankConfig)(NcclComm*, int, NcclUniqueId, int, NcclConfigV21400*);
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
    // Point to point (NCCL 2.7+): ncclSend(sendbuff, count, datatype, peer, comm, stream), ncclRecv(recvbuff, ...).
    // The 16-bit sums (mover_nccl.cpp) move their chunks with them inside a group.
    int (*Send)(const void*, size_t, int, int, NcclComm, void*);
    int (*Recv)(void*, size_t, int, int, NcclComm, void*);
    int (*GroupStart)();
    int (*GroupEnd)();
    const char* (*GetErrorString)(int);
    const char* (*GetLastError)(NcclComm); // optional (2.13+): may be null
    // optional (2.18+): may be null; then a split makes its communicators with ncclCommInitRank(Config) (split.cpp)
    int (*CommSplit)(NcclComm, int color, int key, NcclComm*, NcclConfigV21400*);
};
constexpr int kNcclSplitNoColor = -1; // NCCL_SPLIT_NOCOLOR

// The loaded API, or throws sw::Error(SW_ERR_NOT_FOUND) saying what was searched and why it failed.
const NcclApi& nccl_api();
// sw_nccl_get_info: whether NCCL loaded (*available), its version code, and a line saying which (or why not).
std::string nccl_info(int32_t* available, int32_t* version_code);

} // namespace sw
