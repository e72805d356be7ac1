/* The interface between the core (mpi_transport.cpp) and the MPI plugin (libshardwise_mpi, native/src/mpi/), which
 * is the only code compiled against mpi.h. The core loads the plugin at run time, so libshardwise never depends on
 * an MPI library. C, so that the plugin is a plain C shim. */
#ifndef SHARDWISE_MPI_PLUGIN_API_H
#define SHARDWISE_MPI_PLUGIN_API_H
#include <stddef.h>
#include <stdint.h>

#define SW_MPI_PLUGIN_ABI 3 /* 2: comm_create takes a timeout; missing[] tells alive-but-waiting peers apart;
                               3: comm_split and poll_idle (sub-communicators) */

typedef struct sw_mpi_piece {
    int32_t peer;
    int32_t reserved;
    char* data;
    uint64_t bytes;
} sw_mpi_piece;

enum {
    SW_MPI_OK = 0,
    SW_MPI_TIMEOUT = 1,     /* missing[] says which peers had pieces left: 1 silent (missing), 2 alive but waiting itself */
    SW_MPI_PEER_ABORT = 2,  /* err holds the peer's notice */
    SW_MPI_LOCAL_ABORT = 3, /* stop() returned non-zero */
    SW_MPI_ERROR = 4,       /* an MPI call failed; err says which and why */
    SW_MPI_SIZE_MISMATCH = 5 /* a peer's message had another size than its receive expected; err says which */
};

typedef struct sw_mpi_plugin_api {
    int32_t abi; /* SW_MPI_PLUGIN_ABI */
    /* MPI_Get_library_version (after init) or the compile-time MPI version. */
    const char* (*library_version)(void);
    /* Initializes MPI if nobody has (MPI_Init_thread asking MPI_THREAD_MULTIPLE, on a thread of its own, waited for
     * until the timeout: Open MPI's MPI_Init waits for every process of the job; the plugin serializes its own calls,
     * so MPI_THREAD_SERIALIZED is enough), then duplicates MPI_COMM_WORLD for data and for control messages (abort
     * notices, statuses) with MPI_Comm_idup polled until the timeout. SW_MPI_TIMEOUT when either did not finish. */
    int (*comm_create)(int64_t timeout_ms, void** comm, int32_t* rank, int32_t* world, char* err, size_t err_cap);
    /* Frees the communicator (leaked instead when it has requests that could not be completed). */
    void (*comm_release)(void* comm);
    /* Posts every receive and send (pieces of one peer matched in order), then polls until all have completed, the
     * timeout passes, a peer's abort notice arrives or stop(stop_ctx) returns non-zero. While it waits it sends
     * every peer an "alive and waiting" status every 0.2 s; at the timeout, a pending peer heard from within the
     * last second is alive (missing[] = 2), a silent one missing (missing[] = 1). */
    int (*exchange)(void* comm, uint64_t seq, const sw_mpi_piece* sends, int32_t nsends, const sw_mpi_piece* recvs,
                    int32_t nrecvs, int64_t timeout_ms, int (*stop)(const void*), const void* stop_ctx,
                    uint8_t* missing, int32_t* peer_status, char* err, size_t err_cap);
    /* Sends every peer an abort notice with a status (an sw_status) and a reason (fire and forget). */
    void (*notify_abort)(void* comm, int32_t status, const char* reason);
    /* MPI_Finalize if the plugin initialized MPI, no communicator failed and no request was left behind (else
     * nothing, with an error saying why: Open MPI's MPI_Finalize waits for every process of the job, so it could
     * wait forever for a dead or frozen peer). Also registered with atexit (which prints why it skipped). */
    int (*finalize)(char* err, size_t err_cap);
    /* ---- sub-communicators (ABI 3)
     * MPI_Comm_split of a communicator (its data and control communicators), called by every rank of it: color < 0
     * opts out (*out = NULL), ranks of one color are ordered by key. The child's notices carry a serial derived from
     * the parent's (the same on every rank). Blocking: call it once every rank is known to be calling it. */
    int (*comm_split)(void* comm, int32_t color, int32_t key, void** out, int32_t* rank, int32_t* world, char* err,
                      size_t err_cap);
    /* Between exchanges: takes the abort notices that arrived; returns the first peer whose notice reports a failure
     * (status != 0; a notice with status 0 is a destroy, not a failure), with its status and "aborted it: reason"
     * in err, or -1. Never blocks. */
    int (*poll_idle)(void* comm, int32_t* peer_status, char* err, size_t err_cap);
} sw_mpi_plugin_api;

#endif
