/* libshardwise_mpi: the small C shim between the Shardwise core and an MPI library (Open MPI from Debian here).
 * Every MPI call is checked; every wait is a polling loop with a deadline, so no call blocks past its timeout; a
 * communicator's failure is announced to the peers on a second (control) communicator. All MPI calls of the plugin
 * are serialized by one mutex, so MPI_THREAD_SERIALIZED suffices. */
#include "comm/mpi_plugin_api.h"

#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define SW_EXPORT __attribute__((visibility("default")))
#else
#define SW_EXPORT
#endif

#define NOTICE_BYTES 4096
#define CHUNK_BYTES (1 << 30) /* MPI counts are int: larger pieces travel in chunks */
#define NOTICE_GRACE_S 0.25
#define STATUS_EVERY_S 0.2 /* while an exchange waits, "alive and waiting" to every peer this often (tag 1 on ctrl) */
#define ALIVE_FOR_S 1.0    /* a peer heard from this recently is alive at a timeout: not the missing one */

typedef struct plugin_comm {
    MPI_Comm data, ctrl;
    int rank, world;
    char notice[NOTICE_BYTES];
    MPI_Request notice_req; /* a receive of any peer's abort notice, always posted */
    char** notices;         /* per peer: its abort notice once received ("<status>|<reason>"), else NULL */
    double* notice_time;    /* when it was received */
    int leaked;             /* requests given up on (freed while still active) */
    MPI_Request status_req; /* a receive of any peer's "alive and waiting" status, always posted */
    long long status_in;
    MPI_Request* status_send; /* per peer: the last status sent (a new one only once it completed) */
    long long* status_out;
    double* heard;            /* per peer: when its last status came */
    long long serial;         /* this communicator's number: the same on every rank (created collectively, in order) */
    long long splits;         /* comm_split calls so far (collective: the same on every rank) */
    int failed;               /* an exchange failed: data it sent may never be received (see comm_release) */
} plugin_comm;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_we_initialized = 0;
static int g_finalized = 0;
static int g_leaked = 0;
static int g_failed = 0; /* a communicator failed (timeout, peer abort, MPI error): MPI_Finalize could wait forever */
static char g_failed_why[512];
/* MPI_Init_thread runs on a thread of its own so that sw_comm_create_mpi can give up at its timeout (Open MPI's
 * MPI_Init waits for every process of the job). 0 = not started, 1 = running, 2 = returned. */
static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_init_cv = PTHREAD_COND_INITIALIZER;
static int g_init_state = 0, g_init_rc = MPI_SUCCESS, g_init_provided = 0;
/* What this process waits for, for the SIGTERM message (two buffers: the handler reads the one not being written). */
static char g_wait[2][512];
static volatile sig_atomic_t g_wait_idx = 0;
static int g_sigterm_installed = 0;
/* Communicators created so far. Control messages carry their communicator's number: Open MPI reuses a freed
 * communicator's context, so a notice sent on a destroyed communicator and never received could otherwise be taken
 * by a later one ("rank 0 destroyed its communicator" failing a new communicator's collective). */
static long long g_comm_serial = 0;
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
    if (g_failed) {
        say(err, cap, "MPI_Finalize skipped: a communicator failed (%s), and MPI_Finalize waits for every process of the "
                      "job (Open MPI), so it could wait forever for a dead or frozen peer", g_failed_why);
        return SW_MPI_ERROR;
    }
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
    char why[1024] = {0};
    if (finalize_locked(why, sizeof why) != SW_MPI_OK && why[0]) fprintf(stderr, "shardwise: at exit: %s\n", why);
    pthread_mutex_unlock(&g_mu);
}

/* Remembers that a communicator failed (mutex held): from now on MPI_Finalize is skipped. */
static void note_failure(const char* why) {
    if (g_failed) return;
    g_failed = 1;
    snprintf(g_failed_why, sizeof g_failed_why, "%s", why && why[0] ? why : "unknown");
}

static void sig_write(const char* text) {
    size_t n = 0;
    while (text[n]) ++n;
    while (n) {
        const ssize_t w = write(2, text, n);
        if (w <= 0) return;
        text += w;
        n -= (size_t)w;
    }
}

/* mpirun ends every process of a job with SIGTERM (then SIGKILL) when one of them fails: say so, and what this rank was
 * waiting for, then end as SIGTERM would have. Installed only where SIGTERM had its default action. */
static void on_sigterm(int sig) {
    sig_write(g_wait[g_wait_idx]);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Sets the SIGTERM message: the rank, and the exchange it waits in (seq >= 0, the peers with missing[] set) or none. */
static void set_wait(int rank, long long seq, const int* pending_peer, int n) {
    const int next = 1 - g_wait_idx;
    char* w = g_wait[next];
    int len = snprintf(w, sizeof g_wait[0], "shardwise: rank %d (pid %ld): ended by SIGTERM: mpirun ends every process of "
                                            "the job when one of them fails (mpirun names it); ", rank, (long)getpid());
    if (seq < 0 || n == 0) {
        snprintf(w + len, sizeof g_wait[0] - (size_t)len, "this rank was not waiting for a peer\n");
    } else {
        len += snprintf(w + len, sizeof g_wait[0] - (size_t)len, "this rank was waiting in collective #%lld for rank(s) ", seq);
        for (int i = 0; i < n && len < (int)sizeof g_wait[0] - 16; ++i)
            len += snprintf(w + len, sizeof g_wait[0] - (size_t)len, i ? ", %d" : "%d", pending_peer[i]);
        snprintf(w + len, sizeof g_wait[0] - (size_t)len, "\n");
    }
    g_wait_idx = next;
}

static int finalize(char* err, size_t cap) {
    pthread_mutex_lock(&g_mu);
    const int rc = finalize_locked(err, cap);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static double now_s(void);

static void* init_main(void* arg) {
    (void)arg;
    int provided = 0;
    const int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided);
    pthread_mutex_lock(&g_init_mu);
    g_init_rc = rc;
    g_init_provided = provided;
    g_init_state = 2;
    pthread_cond_broadcast(&g_init_cv);
    pthread_mutex_unlock(&g_init_mu);
    return NULL;
}

/* MPI initialized by us (on the init thread), waited for until the deadline; mutex g_mu NOT held. Returns SW_MPI_OK
 * with *provided, SW_MPI_TIMEOUT or SW_MPI_ERROR. */
static int init_mpi(double deadline, int* provided, char* err, size_t cap) {
    pthread_mutex_lock(&g_init_mu);
    if (g_init_state == 0) {
        pthread_attr_t attr;
        pthread_t thread;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&thread, &attr, init_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pthread_mutex_unlock(&g_init_mu);
            say(err, cap, "cannot start the thread that initializes MPI (pthread_create: %s)", strerror(rc));
            return SW_MPI_ERROR;
        }
        g_init_state = 1;
    }
    while (g_init_state != 2) {
        const double left = deadline - now_s();
        if (left <= 0) break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        const double step = left < 0.1 ? left : 0.1;
        until.tv_nsec += (long)(step * 1e9);
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&g_init_cv, &g_init_mu, &until);
    }
    const int state = g_init_state, rc = g_init_rc;
    *provided = g_init_provided;
    pthread_mutex_unlock(&g_init_mu);
    if (state != 2) {
        say(err, cap, "MPI_Init_thread did not return before the timeout: Open MPI's MPI_Init waits for every process of "
                      "the job, so some rank started late, is stuck or died before initializing MPI (MPI cannot say "
                      "which); the initialization goes on in the background");
        return SW_MPI_TIMEOUT;
    }
    if (mpi_failed(rc, "MPI_Init_thread", err, cap)) return SW_MPI_ERROR;
    return SW_MPI_OK;
}

/* Frees a communicator's host memory (the MPI communicators are freed by the caller); NULL-safe, and safe on a half-built
 * one (comm_create's failure path: arrays not allocated are NULL, notices not received are NULL). */
static void free_comm(plugin_comm* c) {
    if (!c) return;
    if (c->notices)
        for (int q = 0; q < c->world; ++q) free(c->notices[q]);
    free(c->notices);
    free(c->notice_time);
    free(c->status_send);
    free(c->status_out);
    free(c->heard);
    free(c);
}

static int finish_comm(plugin_comm* c, char* err, size_t cap);

static int comm_create(int64_t timeout_ms, void** out, int32_t* rank, int32_t* world, char* err, size_t cap) {
    *out = NULL;
    const double deadline = now_s() + (double)timeout_ms / 1000.0;
    int rc = SW_MPI_ERROR;
    plugin_comm* c = NULL;
    int initialized = 0, finalized = 0, provided = 0, init_state;
    pthread_mutex_lock(&g_init_mu);
    init_state = g_init_state;
    pthread_mutex_unlock(&g_init_mu);
    if (init_state == 0) { /* nobody of ours started MPI: maybe the application did */
        pthread_mutex_lock(&g_mu);
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
        pthread_mutex_unlock(&g_mu);
        if (finalized) {
            say(err, cap, "MPI is already finalized in this process; MPI cannot be initialized twice");
            return SW_MPI_ERROR;
        }
    }
    if (!initialized) {
        const int irc = init_mpi(deadline, &provided, err, cap);
        if (irc != SW_MPI_OK) {
            if (irc == SW_MPI_TIMEOUT) {
                pthread_mutex_lock(&g_mu);
                note_failure("MPI_Init_thread timed out");
                pthread_mutex_unlock(&g_mu);
            }
            return irc;
        }
    }
    pthread_mutex_lock(&g_mu);
    if (!initialized) {
        if (!g_we_initialized) {
            g_we_initialized = 1;
            atexit(finalize_at_exit);
        }
    } else if (mpi_failed(MPI_Query_thread(&provided), "MPI_Query_thread", err, cap)) {
        goto done;
    }
    if (finalized_locked()) {
        say(err, cap, "MPI is already finalized in this process; MPI cannot be initialized twice");
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
    c->notice_req = c->status_req = MPI_REQUEST_NULL;
    /* Non-blocking duplicates polled against the deadline: MPI_Comm_dup would wait for a late rank forever. */
    {
        MPI_Request dup[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
        if (mpi_failed(MPI_Comm_idup(MPI_COMM_WORLD, &c->data, &dup[0]), "MPI_Comm_idup", err, cap)) goto fail;
        if (mpi_failed(MPI_Comm_idup(MPI_COMM_WORLD, &c->ctrl, &dup[1]), "MPI_Comm_idup", err, cap)) {
            MPI_Request* keep = (MPI_Request*)malloc(sizeof dup); /* left pending (see below) */
            if (keep) memcpy(keep, dup, sizeof dup);
            ++g_leaked;
            c = NULL; /* may still be written by the duplicate: leaked */
            goto done;
        }
        while (1) {
            int all = 0;
            if (mpi_failed(MPI_Testall(2, dup, &all, MPI_STATUSES_IGNORE), "MPI_Testall (MPI_Comm_idup)", err, cap)) {
                c = NULL; /* the duplicates may still complete into it: leaked */
                goto done;
            }
            if (all) break;
            if (now_s() >= deadline) {
                /* Cannot be cancelled, and Open MPI refuses MPI_Request_free on them: left pending for good (their
                 * handles on the heap, the communicator leaked), and MPI_Finalize is skipped from now on. */
                MPI_Request* keep = (MPI_Request*)malloc(sizeof dup);
                if (keep) memcpy(keep, dup, sizeof dup);
                ++g_leaked;
                say(err, cap, "MPI_Comm_idup of MPI_COMM_WORLD did not complete before the timeout: some rank of the "
                              "job has not called sw_comm_create_mpi (late, stuck or dead; MPI cannot say which)");
                note_failure("sw_comm_create_mpi timed out");
                c = NULL;
                rc = SW_MPI_TIMEOUT;
                goto done;
            }
            pthread_mutex_unlock(&g_mu); /* let other threads' exchanges run meanwhile */
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&g_mu);
        }
    }
    c->serial = ++g_comm_serial;
    if (finish_comm(c, err, cap) != SW_MPI_OK) goto fail;
    *rank = c->rank;
    *world = c->world;
    *out = c;
    rc = SW_MPI_OK;
    goto done;
fail:
    free_comm(c);
done:
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* The rest of a communicator's setup once c->data, c->ctrl and c->serial are set (mutex held): error handlers, rank and
 * size, the per-peer arrays, the always-posted receives, the SIGTERM message. SW_MPI_OK or SW_MPI_ERROR (then the
 * caller frees c's host memory; its MPI communicators are the caller's). */
static int finish_comm(plugin_comm* c, char* err, size_t cap) {
    /* Errors come back as codes (checked), never as a job abort from inside the library. */
    if (mpi_failed(MPI_Comm_set_errhandler(c->data, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", err, cap)) return SW_MPI_ERROR;
    if (mpi_failed(MPI_Comm_set_errhandler(c->ctrl, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", err, cap)) return SW_MPI_ERROR;
    if (mpi_failed(MPI_Comm_rank(c->data, &c->rank), "MPI_Comm_rank", err, cap)) return SW_MPI_ERROR;
    if (mpi_failed(MPI_Comm_size(c->data, &c->world), "MPI_Comm_size", err, cap)) return SW_MPI_ERROR;
    /* allocated before the receives are posted: a failure after posting them would free their buffers under them */
    c->notices = (char**)calloc((size_t)c->world, sizeof *c->notices);
    c->notice_time = (double*)calloc((size_t)c->world, sizeof *c->notice_time);
    c->status_send = (MPI_Request*)calloc((size_t)c->world, sizeof *c->status_send);
    c->status_out = (long long*)calloc((size_t)c->world, sizeof *c->status_out);
    c->heard = (double*)calloc((size_t)c->world, sizeof *c->heard);
    if (!c->notices || !c->notice_time || !c->status_send || !c->status_out || !c->heard) {
        say(err, cap, "out of memory");
        return SW_MPI_ERROR;
    }
    for (int q = 0; q < c->world; ++q) {
        c->status_send[q] = MPI_REQUEST_NULL;
        c->heard[q] = -1e300;
    }
    if (mpi_failed(MPI_Irecv(c->notice, NOTICE_BYTES - 1, MPI_CHAR, MPI_ANY_SOURCE, 0, c->ctrl, &c->notice_req),
                   "MPI_Irecv (abort notices)", err, cap))
        return SW_MPI_ERROR;
    if (mpi_failed(MPI_Irecv(&c->status_in, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, 1, c->ctrl, &c->status_req),
                   "MPI_Irecv (status)", err, cap)) {
        MPI_Cancel(&c->notice_req); /* a receive can be cancelled */
        MPI_Wait(&c->notice_req, MPI_STATUS_IGNORE);
        return SW_MPI_ERROR;
    }
    if (g_we_initialized && !g_sigterm_installed) { /* only over the default action: never replace the application's */
        struct sigaction old;
        if (sigaction(SIGTERM, NULL, &old) == 0 && old.sa_handler == SIG_DFL && !(old.sa_flags & SA_SIGINFO)) {
            set_wait(c->rank, -1, NULL, 0);
            signal(SIGTERM, on_sigterm);
        }
        g_sigterm_installed = 1;
    }
    return SW_MPI_OK;
}

static void comm_release(void* handle) {
    plugin_comm* c = (plugin_comm*)handle;
    if (!c) return;
    pthread_mutex_lock(&g_mu);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        MPI_Request* posted[2] = {&c->notice_req, &c->status_req};
        for (int i = 0; i < 2; ++i) {
            if (*posted[i] == MPI_REQUEST_NULL) continue;
            int done = 0;
            MPI_Cancel(posted[i]);
            MPI_Test(posted[i], &done, MPI_STATUS_IGNORE);
            if (!done) {
                MPI_Request_free(posted[i]);
                ++g_leaked;
                ++c->leaked;
            }
        }
        for (int q = 0; q < c->world; ++q) { /* status sends: small, gone out eagerly; else freed while in flight */
            if (c->status_send[q] == MPI_REQUEST_NULL) continue;
            int done = 0;
            MPI_Test(&c->status_send[q], &done, MPI_STATUS_IGNORE);
            if (!done) {
                MPI_Request_free(&c->status_send[q]);
                ++c->leaked;
            }
        }
        /* After a failed exchange, sends that completed locally (small ones go out eagerly) may never have been
         * received: freeing the communicator would let a later one reuse its context and receive them as its own
         * data. Such a communicator is kept (a little memory per failed communicator). */
        /* The MPI communicators themselves are never freed before MPI_Finalize: with Open MPI 4.1 (Debian 12), after
         * MPI_Comm_free of a destroyed group's two communicators, the next group's MPI_Comm_split hung on every rank
         * (a new group made by MPI_Comm_idup, then split: reproduced with 4 ranks; without the frees it completes).
         * Two communicators per destroyed group stay allocated until MPI_Finalize. */
        if (!c->leaked && !c->failed) free_comm(c);
        /* else: requests may still reference c's buffers; keep them */
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
        if (MPI_Test(&c->notice_req, &done, &st) != MPI_SUCCESS || !done) break;
        int len = 0;
        MPI_Get_count(&st, MPI_CHAR, &len);
        if (len < 0 || len >= NOTICE_BYTES) len = NOTICE_BYTES - 1;
        c->notice[len] = '\0';
        /* "<serial>|<status>|<reason>": a notice of another (destroyed) communicator is dropped */
        char* rest = NULL;
        const long long serial = strtoll(c->notice, &rest, 10);
        if (serial == c->serial && rest && *rest == '|' && st.MPI_SOURCE >= 0 && st.MPI_SOURCE < c->world &&
            !c->notices[st.MPI_SOURCE]) {
            c->notices[st.MPI_SOURCE] = strdup(rest + 1);
            c->notice_time[st.MPI_SOURCE] = now_s();
        }
        if (MPI_Irecv(c->notice, NOTICE_BYTES - 1, MPI_CHAR, MPI_ANY_SOURCE, 0, c->ctrl, &c->notice_req) != MPI_SUCCESS)
            c->notice_req = MPI_REQUEST_NULL;
    }
    while (c->status_req != MPI_REQUEST_NULL) { /* peers' "alive and waiting" statuses */
        int done = 0;
        MPI_Status st;
        if (MPI_Test(&c->status_req, &done, &st) != MPI_SUCCESS || !done) return;
        if (st.MPI_SOURCE >= 0 && st.MPI_SOURCE < c->world && c->status_in == c->serial) c->heard[st.MPI_SOURCE] = now_s();
        if (MPI_Irecv(&c->status_in, 1, MPI_LONG_LONG, MPI_ANY_SOURCE, 1, c->ctrl, &c->status_req) != MPI_SUCCESS)
            c->status_req = MPI_REQUEST_NULL;
    }
}

/* "Alive and waiting at collective #seq" to every other peer whose previous status has gone out; mutex held. */
static void send_status(plugin_comm* c, long long seq) {
    for (int q = 0; q < c->world; ++q) {
        if (q == c->rank) continue;
        if (c->status_send[q] != MPI_REQUEST_NULL) {
            int done = 0;
            if (MPI_Test(&c->status_send[q], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) continue;
        }
        (void)seq;
        c->status_out[q] = c->serial;
        if (MPI_Isend(&c->status_out[q], 1, MPI_LONG_LONG, q, 1, c->ctrl, &c->status_send[q]) != MPI_SUCCESS)
            c->status_send[q] = MPI_REQUEST_NULL;
    }
}

/* A peer that aborted matters only when this rank still needs it: fails with its notice when one of the pending
 * requests (peer[i] for req[i] != MPI_REQUEST_NULL) is with such a peer, NOTICE_GRACE_S after the notice came (at
 * once with ignore_grace: at the deadline, the peer's reason is better than a timeout that names it). The
 * notice travels on another communicator than the data, so it can overtake the peer's last data (a rank that
 * finished and destroyed its communicator): the grace lets that data land. Mutex held. */
static int needed_peer_aborted(plugin_comm* c, const MPI_Request* req, const int* peer, int n, int32_t* peer_status,
                               int ignore_grace, char* err, size_t cap) {
    for (int i = 0; i < n; ++i) {
        if (req[i] == MPI_REQUEST_NULL || peer[i] < 0 || peer[i] >= c->world || !c->notices[peer[i]]) continue;
        if (!ignore_grace && now_s() - c->notice_time[peer[i]] < NOTICE_GRACE_S) continue;
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
    /* >= 1: tag 0 is the abort notice; MPI_TAG_UB is at least 32767. seq with the top bit set: a point-to-point
     * transfer (the core's kP2PTag), on a tag of its own so that it never matches a collective's message. */
    const int tag = (seq >> 63) ? 30001 : 1 + (int)(seq % 30000u);
    int nreq = 0;
    for (int i = 0; i < nsends; ++i) nreq += (int)((sends[i].bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
    for (int i = 0; i < nrecvs; ++i) nreq += (int)((recvs[i].bytes + CHUNK_BYTES - 1) / CHUNK_BYTES);
    MPI_Request* req = (MPI_Request*)calloc((size_t)nreq + 1, sizeof *req);
    int* peer = (int*)calloc((size_t)nreq + 1, sizeof *peer);
    int* lens = (int*)calloc((size_t)nreq + 1, sizeof *lens); /* bytes each receive expects */
    if (!req || !peer || !lens) {
        free(req);
        free(peer);
        free(lens);
        say(err, cap, "out of memory");
        return SW_MPI_ERROR;
    }
    int rc = SW_MPI_OK, posted = 0, recv_posted = 0;
    int wait_peer_scratch[64];
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
                lens[posted] = len;
                peer[posted++] = pieces[i].peer;
            }
        }
        if (pass == 0) recv_posted = posted;
    }
    pthread_mutex_unlock(&g_mu);
    const double start = now_s(), deadline = start + (double)timeout_ms / 1000.0;
    double next_status = start + STATUS_EVERY_S;
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
            const int tr = MPI_Test(&req[i], &done, &st);
            int cls = MPI_SUCCESS;
            if (tr != MPI_SUCCESS) MPI_Error_class(tr, &cls);
            if (cls == MPI_ERR_TRUNCATE && i < recv_posted) {
                say(err, cap, "rank %d sent a message longer than the %d bytes expected (calls that do not match: "
                              "another count or type on that rank?)", peer[i], lens[i]);
                rc = SW_MPI_SIZE_MISMATCH;
            } else if (mpi_failed(tr, "MPI_Test", err, cap)) rc = SW_MPI_ERROR;
            else if (!done) all = 0;
            else if (i < recv_posted) {
                /* A shorter message than the receive expected completes without an error in MPI (a longer one fails
                 * as truncated): the sizes of the ranks' calls differ. */
                int got = -1;
                MPI_Get_count(&st, MPI_BYTE, &got);
                if (got != lens[i]) {
                    say(err, cap, "rank %d sent a message of %d bytes where %d bytes were expected (calls that do not "
                                  "match: another count or type on that rank?)", peer[i], got, lens[i]);
                    rc = SW_MPI_SIZE_MISMATCH;
                }
            }
        }
        if (rc == SW_MPI_OK && !all) {
            take_notices(c);
            if (needed_peer_aborted(c, req, peer, posted, peer_status, 0, err, cap)) rc = SW_MPI_PEER_ABORT;
        }
        if (rc == SW_MPI_OK && !all && now_s() >= next_status) { /* still waiting: tell the peers, note for SIGTERM */
            next_status = now_s() + STATUS_EVERY_S;
            send_status(c, (long long)seq);
            int n = 0;
            for (int i = 0; i < posted; ++i) {
                if (req[i] == MPI_REQUEST_NULL) continue;
                int seen = 0;
                for (int k = 0; k < n && !seen; ++k) seen = wait_peer_scratch[k] == peer[i];
                if (!seen && n < 64) wait_peer_scratch[n++] = peer[i];
            }
            set_wait(c->rank, (long long)seq, wait_peer_scratch, n);
        }
        pthread_mutex_unlock(&g_mu);
        if (rc != SW_MPI_OK || all) break;
        if (stop && stop(stop_ctx)) {
            say(err, cap, "the communicator was aborted in this process");
            rc = SW_MPI_LOCAL_ABORT;
            break;
        }
        if (now_s() >= deadline) {
            /* a needed peer that aborted (its notice still in its grace) explains this better than a timeout */
            pthread_mutex_lock(&g_mu);
            take_notices(c);
            rc = needed_peer_aborted(c, req, peer, posted, peer_status, 1, err, cap) ? SW_MPI_PEER_ABORT : SW_MPI_TIMEOUT;
            pthread_mutex_unlock(&g_mu);
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
        c->failed = 1;
        if (rc != SW_MPI_LOCAL_ABORT) note_failure(rc == SW_MPI_TIMEOUT ? "a collective timed out" : err);
        const double t = now_s();
        for (int i = 0; i < posted; ++i) {
            if (req[i] == MPI_REQUEST_NULL) continue;
            /* 1: missing; 2: still needed but alive and waiting itself (heard from lately) */
            if (missing && peer[i] >= 0 && peer[i] < c->world)
                missing[peer[i]] = t - c->heard[peer[i]] < ALIVE_FOR_S ? 2 : 1;
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
    pthread_mutex_lock(&g_mu);
    set_wait(c->rank, -1, NULL, 0);
    pthread_mutex_unlock(&g_mu);
    free(req);
    free(peer);
    free(lens);
    return rc;
}

static void notify_abort(void* handle, int32_t status, const char* reason) {
    plugin_comm* c = (plugin_comm*)handle;
    char text[NOTICE_BYTES];
    snprintf(text, sizeof text, "%lld|%d|%s", c->serial, (int)status, reason);
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

/* A serial for a communicator split from one with serial `parent` (its n-th split): mixed (splitmix64), bit 62 set so
 * that it never equals a serial of comm_create's counter. The same on every rank of the parent. */
static long long split_serial(long long parent, long long n) {
    unsigned long long z = (unsigned long long)parent * 0x9E3779B97F4A7C15ull + (unsigned long long)n;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (long long)((z & ~(3ull << 62)) | (1ull << 62));
}

static int comm_split(void* handle, int32_t color, int32_t key, void** out, int32_t* rank, int32_t* world, char* err,
                      size_t cap) {
    plugin_comm* parent = (plugin_comm*)handle;
    *out = NULL;
    int rc = SW_MPI_ERROR;
    pthread_mutex_lock(&g_mu);
    if (finalized_locked()) {
        say(err, cap, "MPI is finalized; this communicator can no longer be split");
        pthread_mutex_unlock(&g_mu);
        return SW_MPI_ERROR;
    }
    const long long serial = split_serial(parent->serial, ++parent->splits);
    const int mcolor = color < 0 ? MPI_UNDEFINED : color;
    MPI_Comm data = MPI_COMM_NULL, ctrl = MPI_COMM_NULL;
    plugin_comm* c = NULL;
    if (mpi_failed(MPI_Comm_split(parent->data, mcolor, key, &data), "MPI_Comm_split", err, cap)) goto done;
    if (mpi_failed(MPI_Comm_split(parent->ctrl, mcolor, key, &ctrl), "MPI_Comm_split (control)", err, cap)) goto done;
    if (color < 0) {
        rc = SW_MPI_OK;
        goto done;
    }
    c = (plugin_comm*)calloc(1, sizeof *c);
    if (!c) {
        say(err, cap, "out of memory");
        goto done;
    }
    c->notice_req = c->status_req = MPI_REQUEST_NULL;
    c->data = data;
    c->ctrl = ctrl;
    c->serial = serial;
    if (finish_comm(c, err, cap) != SW_MPI_OK) {
        free_comm(c);
        goto done;
    }
    data = ctrl = MPI_COMM_NULL; /* c's now */
    *rank = c->rank;
    *world = c->world;
    *out = c;
    rc = SW_MPI_OK;
done:
    if (data != MPI_COMM_NULL) MPI_Comm_free(&data);
    if (ctrl != MPI_COMM_NULL) MPI_Comm_free(&ctrl);
    pthread_mutex_unlock(&g_mu);
    return rc;
}

static int poll_idle(void* handle, int32_t* peer_status, char* err, size_t cap) {
    plugin_comm* c = (plugin_comm*)handle;
    int who = -1;
    pthread_mutex_lock(&g_mu);
    if (!finalized_locked()) {
        take_notices(c);
        for (int q = 0; q < c->world && who < 0; ++q) {
            const char* text = c->notices[q]; /* "<status>|<reason>" */
            if (!text || atoi(text) == 0) continue;
            const char* bar = strchr(text, '|');
            *peer_status = (int32_t)atoi(text);
            say(err, cap, "aborted it: %s", bar ? bar + 1 : text);
            who = q;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return who;
}

static const sw_mpi_plugin_api g_api = {
    SW_MPI_PLUGIN_ABI, library_version, comm_create, comm_release, exchange, notify_abort, finalize, comm_split, poll_idle,
};

SW_EXPORT const sw_mpi_plugin_api* sw_mpi_plugin(void) { return &g_api; }
