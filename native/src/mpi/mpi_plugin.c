/* libshardwise_mpi: the small C shim between the Shardwise core and an MPI library (Open MPI from Debian here).
 * Every MPI call is checked; every wait is a polling loop with a deadline, so no call blocks past its timeout; a
 * communicator's failure is announced to the peers on a second (control) communicator. All MPI calls of the plugin
 * are serialized by one mutex, so MPI_THREAD_SERIALIZED suffices. */
#include "comm/mpi_plugin_api.h"

#include <mpi.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define SW_EXPORT __attribute__((visibility("default")))
#else
#define SW_EXPORT
#endif

#define NOTICE_BYTES 4096
#define CHUNK_BYTES (1 << 30) /* MPI counts are int: larger pieces travel in chunks */
#define NOTICE_GRACE_S 0.25

typedef struct plugin_comm {
    MPI_Comm data, ctrl;
    int rank, world;
    char notice[NOTICE_BYTES];
    MPI_Request notice_req; /* a receive of any peer's abort notice, always posted */
    char** notices;         /* per peer: its abort notice once received ("<status>|<reason>"), else NULL */
    double* notice_time;    /* when it was received */
    int leaked;             /* requests given up on (freed while still active) */
} plugin_comm;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_we_initialized = 0;
static int g_finalized = 0;
static int g_leaked = 0;
static char g_version[MPI_MAX_LIBRARY_VERSION_STRING + 64];

static void say(char* err, size_t cap, const char* fmt, ...) {
    if (!err || !cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* Describes an MPI error code. */
static int mpi_failed(int rc, const char* call, char* err, size_t cap) {
    if (rc == MPI_SUCCESS) return 0;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "error code %d", rc);
    say(err, cap, "%s failed: %s", call, text);
    return 1;
}

/* MPI may not be called after MPI_Finalize (Open MPI ends the process): true once it ran, by sw_mpi_finalize, at exit
 * or by the application. Mutex held. */
static int finalized_locked(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    return g_finalized || finalized;
}

static const char* library_version(void) {
    pthread_mutex_lock(&g_mu);
    if (!g_version[0]) {
        int len = 0;
        if (MPI_Get_library_version(g_version, &len) != MPI_SUCCESS)
            snprintf(g_version, sizeof g_version, "MPI %d.%d", MPI_VERSION, MPI_SUBVERSION);
        /* first line only */
        char* nl = strchr(g_version, '\n');
        if (nl) *nl = '\0';
    }
    pthread_mutex_unlock(&g_mu);
    return g_version;
}

static int finalize_locked(char* err, size_t cap) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!g_we_initialized || g_finalized || !initialized || finalized) return SW_MPI_OK;
    if (g_leaked) {
        say(err, cap, "MPI_Finalize skipped: %d MPI request(s) of an aborted communicator are still pending and "
                      "finalizing could wait for a dead peer forever", g_leaked);
        return SW_MPI_ERROR;
    }
    g_finalized = 1;
    return mpi_failed(MPI_Finalize(), "MPI_Finalize", err, cap) ? SW_MPI_ERROR : SW_MPI_OK;
}

static void finalize_at_exit(void) {
    pthread_mutex_lock(&g_mu);
    finalize_locked(NULL, 0);
    pthread_mutex_unlock(&g_mu);
}

static int finalize(char* err, size_t cap) {
    pthread_mutex_lock(&g_mu);
    const int rc = finalize_locked(err, cap);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int comm_create(void** out, int32_t* rank, int32_t* world, char* err, size_t cap) {
    *out = NULL;
    pthread_mutex_lock(&g_mu);
    int rc = SW_MPI_ERROR;
    plugin_comm* c = NULL;
    int initialized = 0, finalized = 0, provided = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized) {
        say(err, cap, "MPI is already finalized in this process; MPI cannot be initialized twice");
        goto done;
    }
    if (!initialized) {
        if (mpi_failed(MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread", err, cap)) goto done;
        g_we_initialized = 1;
        atexit(finalize_at_exit);
    } else if (mpi_failed(MPI_Query_thread(&provided), "MPI_Query_thread", err, cap)) {
        goto done;
    }
    if (provided < MPI_THREAD_SERIALIZED) {
        say(err, cap, "MPI provides thread level %d; Shardwise calls MPI from its stream threads (one at a time) and "
                      "needs MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE (initialize MPI with one of them)", provided);
        goto done;
    }
    c = (plugin_comm*)calloc(1, sizeof *c);
    if (!c) {
        say(err, cap, "out of memory");
        goto done;
    }
    if (mpi_failed(MPI_Comm_dup(MPI_COMM_WORLD, &c->data), "MPI_Comm_dup", err, cap)) goto fail;
    if (mpi_failed(MPI_Comm_dup(MPI_COMM_WORLD, &c->ctrl), "MPI_Comm_dup", err, cap)) goto fail;
    /* Errors come back as codes (checked), never as a job abort from inside the library. */
    if (mpi_failed(MPI_Comm_set_errhandler(c->data, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", err, cap)) goto fail;
    if (mpi_failed(MPI_Comm_set_errhandler(c->ctrl, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", err, cap)) goto fail;
    if (mpi_failed(MPI_Comm_rank(c->data, &c->rank), "MPI_Comm_rank", err, cap)) goto fail;
    if (mpi_failed(MPI_Comm_size(c->data, &c->world), "MPI_Comm_size", err, cap)) goto fail;
    /* allocated before the notice receive is posted: a failure after posting it would free its buffer under it */
    c->notices = (char**)calloc((size_t)c->world, sizeof *c->notices);
    c->notice_time = (double*)calloc((size_t)c->world, sizeof *c->notice_time);
    if (!c->notices || !c->notice_time) {
        say(err, cap, "out of memory");
        goto fail;
    }
    if (mpi_failed(MPI_Irecv(c->notice, NOTICE_BYTES - 1, MPI_CHAR, MPI_ANY_SOURCE, 0, c->ctrl, &c->notice_req),
                   "MPI_Irecv (abort notices)", err, cap))
        goto fail;
    *rank = c->rank;
    *world = c->world;
    *out = c;
    rc = SW_MPI_OK;
    goto done;
fail:
    if (c) {
        free(c->notices);
        free(c->notice_time);
    }
    free(c);
done:
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static void comm_release(void* handle) {
    plugin_comm* c = (plugin_comm*)handle;
    if (!c) return;
    pthread_mutex_lock(&g_mu);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        if (c->notice_req != MPI_REQUEST_NULL) {
            int done = 0;
            MPI_Cancel(&c->notice_req);
            MPI_Test(&c->notice_req, &done, MPI_STATUS_IGNORE);
            if (!done) {
                MPI_Request_free(&c->notice_req);
                ++g_leaked;
            }
        }
        if (!c->leaked) {
            MPI_Comm_free(&c->data);
            MPI_Comm_free(&c->ctrl);
            for (int q = 0; q < c->world; ++q) free(c->notices[q]);
            free(c->notices);
            free(c->notice_time);
            free(c);
        } /* else: requests may still reference the communicators (and c->notice); keep them */
    }
    pthread_mutex_unlock(&g_mu);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Takes the abort notices that have arrived (and posts the receive again); mutex held. */
static void take_notices(plugin_comm* c) {
    while (c->notice_req != MPI_REQUEST_NULL) {
        int done = 0;
        MPI_Status st;
        if (MPI_Test(&c->notice_req, &done, &st) != MPI_SUCCESS || !done) return;
        int len = 0;
        MPI_Get_count(&st, MPI_CHAR, &len);
        if (len < 0 || len >= NOTICE_BYTES) len = NOTICE_BYTES - 1;
        c->notice[len] = '\0';
        if (st.MPI_SOURCE >= 0 && st.MPI_SOURCE < c->world && !c->notices[st.MPI_SOURCE]) {
            c->notices[st.MPI_SOURCE] = strdup(c->notice);
            c->notice_time[st.MPI_SOURCE] = now_s();
        }
        if (MPI_Irecv(c->notice, NOTICE_BYTES - 1, MPI_CHAR, MPI_ANY_SOURCE, 0, c->ctrl, &c->notice_req) != MPI_SUCCESS)
            c->notice_req = MPI_REQUEST_NULL;
    }
}

/* A peer that aborted matters only when this rank still needs it: fails with its notice when one of the pending
 * requests (peer[i] for req[i] != MPI_REQUEST_NULL) is with such a peer, NOTICE_GRACE_S after the notice came. The
 * notice travels on another communicator than the data, so it can overtake the peer's last data (a rank that
 * finished and destroyed its communicator): the grace lets that data land. Mutex held. */
static int needed_peer_aborted(plugin_comm* c, const MPI_Request* req, const int* peer, int n, int32_t* peer_status,
                               char* err, size_t cap) {
    for (int i = 0; i < n; ++i) {
        if (req[i] == MPI_REQUEST_NULL || peer[i] < 0 || peer[i] >= c->world || !c->notices[peer[i]]) continue;
        if (now_s() - c->notice_time[peer[i]] < NOTICE_GRACE_S) continue;
        const char* text = c->notices[peer[i]]; /* "<status>|<reason>" */
        const char* bar = strchr(text, '|');
        if (peer_status) *peer_status = (int32_t)atoi(text);
        say(err, cap, "rank %d aborted the communicator: %s", peer[i], bar ? bar + 1 : text);
        return 1;
    }
    return 0;
}

static int exchange(void* handle, uint64_t seq, const sw_mpi_piece* sends, int32_t nsends, const sw_mpi_piece* recvs,
                    int32_t nrecvs, int64_t timeout_ms, int (*stop)(const void*), const void* stop_ctx, uint8_t* missing,
                    int32_t* peer_status, char* err, size_t cap) {
    plugin_comm* c = (plugin_comm*)handle;
    const int tag = 1 + (int)(seq % 30000u); /* >= 1: tag 0 is the abort notice; MPI_TAG_UB is at least 32767 */
    int nreq = 0;
    for (int i = 0; i < nsends; ++i) nreq += (int)((sends[i].bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
    for (int i = 0; i < nrecvs; ++i) nreq += (int)((recvs[i].bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
    MPI_Request* req = (MPI_Request*)calloc((size_t)nreq + 1, sizeof *req);
    int* peer = (int*)calloc((size_t)nreq + 1, sizeof *peer);
    if (!req || !peer) {
        free(req);
        free(peer);
        say(err, cap, "out of memory");
        return SW_MPI_ERROR;
    }
    int rc = SW_MPI_OK, posted = 0;
    pthread_mutex_lock(&g_mu);
    if (finalized_locked()) {
        say(err, cap, "MPI is finalized (sw_mpi_finalize, the application or process exit); this communicator can no longer "
                      "be used");
        rc = SW_MPI_ERROR;
    }
    /* receives first, then sends */
    for (int pass = 0; pass < 2 && rc == SW_MPI_OK; ++pass) {
        const sw_mpi_piece* pieces = pass == 0 ? recvs : sends;
        const int n = pass == 0 ? nrecvs : nsends;
        for (int i = 0; i < n && rc == SW_MPI_OK; ++i) {
            for (uint64_t at = 0; at < pieces[i].bytes; at += CHUNK_BYTES) {
                const uint64_t left = pieces[i].bytes - at;
                const int len = (int)(left < CHUNK_BYTES ? left : CHUNK_BYTES);
                const int r = pass == 0 ? MPI_Irecv(pieces[i].data + at, len, MPI_BYTE, pieces[i].peer, tag, c->data, &req[posted])
                                        : MPI_Isend(pieces[i].data + at, len, MPI_BYTE, pieces[i].peer, tag, c->data, &req[posted]);
                if (mpi_failed(r, pass == 0 ? "MPI_Irecv" : "MPI_Isend", err, cap)) {
                    rc = SW_MPI_ERROR;
                    break;
                }
                peer[posted++] = pieces[i].peer;
            }
        }
    }
    pthread_mutex_unlock(&g_mu);
    const double deadline = now_s() + (double)timeout_ms / 1000.0;
    long spins = 0;
    while (rc == SW_MPI_OK) {
        int all = 1;
        pthread_mutex_lock(&g_mu);
        if (finalized_locked()) { /* finalized by another thread meanwhile: the requests are gone with MPI */
            say(err, cap, "MPI was finalized while this exchange was waiting");
            rc = SW_MPI_ERROR;
            posted = 0;
        }
        for (int i = 0; i < posted && rc == SW_MPI_OK; ++i) {
            if (req[i] == MPI_REQUEST_NULL) continue;
            int done = 0;
            MPI_Status st;
            if (mpi_failed(MPI_Test(&req[i], &done, &st), "MPI_Test", err, cap)) rc = SW_MPI_ERROR;
            else if (!done) all = 0;
        }
        if (rc == SW_MPI_OK && !all) {
            take_notices(c);
            if (needed_peer_aborted(c, req, peer, posted, peer_status, err, cap)) rc = SW_MPI_PEER_ABORT;
        }
        pthread_mutex_unlock(&g_mu);
        if (rc != SW_MPI_OK || all) break;
        if (stop && stop(stop_ctx)) {
            say(err, cap, "the communicator was aborted in this process");
            rc = SW_MPI_LOCAL_ABORT;
            break;
        }
        if (now_s() >= deadline) {
            rc = SW_MPI_TIMEOUT;
            break;
        }
        /* spin briefly for latency, then back off */
        if (++spins > 2000) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    if (rc != SW_MPI_OK) {
        /* Give up on what is left: cancel receives, free sends (their buffers are kept alive by the core). */
        pthread_mutex_lock(&g_mu);
        for (int i = 0; i < posted; ++i) {
            if (req[i] == MPI_REQUEST_NULL) continue;
            if (missing && peer[i] >= 0 && peer[i] < c->world) missing[peer[i]] = 1;
            MPI_Cancel(&req[i]);
            int done = 0;
            MPI_Test(&req[i], &done, MPI_STATUS_IGNORE);
            if (!done) {
                MPI_Request_free(&req[i]);
                ++c->leaked;
                ++g_leaked;
            }
        }
        pthread_mutex_unlock(&g_mu);
    }
    free(req);
    free(peer);
    return rc;
}

static void notify_abort(void* handle, int32_t status, const char* reason) {
    plugin_comm* c = (plugin_comm*)handle;
    char text[NOTICE_BYTES];
    snprintf(text, sizeof text, "%d|%s", (int)status, reason);
    reason = text;
    size_t len = strlen(reason);
    pthread_mutex_lock(&g_mu);
    for (int q = 0; q < c->world && !finalized_locked(); ++q) {
        if (q == c->rank) continue;
        char* copy = (char*)malloc(len + 1); /* owned by the fire-and-forget send: never freed */
        if (!copy) break;
        memcpy(copy, reason, len);
        copy[len] = '\0';
        MPI_Request r;
        if (MPI_Isend(copy, (int)len, MPI_CHAR, q, 0, c->ctrl, &r) == MPI_SUCCESS) {
            int done = 0;
            MPI_Test(&r, &done, MPI_STATUS_IGNORE);
            if (!done) MPI_Request_free(&r); /* small: goes out eagerly; not counted as leaked */
        }
    }
    pthread_mutex_unlock(&g_mu);
}

static const sw_mpi_plugin_api g_api = {
    SW_MPI_PLUGIN_ABI, library_version, comm_create, comm_release, exchange, notify_abort, finalize,
};

SW_EXPORT const sw_mpi_plugin_api* sw_mpi_plugin(void) { return &g_api; }
