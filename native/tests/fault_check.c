/* Faults in real multi-process jobs: the rank program of the fault trials, and the checks of MPI's deadlines.
 *
 *   fault_check                         (ctest) forks one 3-rank TCP freeze trial and one kill trial and checks them
 *                                       as scripts/fault-trials.sh does (the script runs many of each, TCP and MPI).
 *   fault_check --trial tcp RANK WORLD PORT TIMEOUT_MS SEED DIR
 *   fault_check --trial mpi TIMEOUT_MS SEED DIR        (one rank of an mpirun job)
 *                                       one rank of a fault trial: collectives (all-reduce out of place and in place,
 *                                       all-gather, reduce-scatter) in a loop on fresh random data, each checked
 *                                       against a float64 reference; writes DIR/pid.RANK once it runs (the script then
 *                                       SIGKILLs or SIGSTOPs one rank), and when a collective fails checks what the
 *                                       call left in its output against the failed-collective contract (untouched or
 *                                       all NaN; in place: the input kept) and prints one line
 *                                       "VERDICT rank=R iter=I op=OP status=S ms=T contract=ok|VIOLATION:... blamed=LIST msg=..."
 *                                       (blamed: the ranks the error names as missing or lost, "-" for none).
 *   fault_check --mpi-freeze TIMEOUT_MS (one rank of an mpirun -n 3 job) the last rank stops itself
 *                                       (SIGSTOP) mid-job: the others must fail at their timeout naming it only, then
 *                                       end (MPI_Finalize, which would wait for it, is skipped after a failure).
 *   fault_check --free-port | --mpi-info   a free local TCP port; whether the MPI plugin loads (exit 0, else 77)
 *   fault_check --mpi-late DELAY_S TIMEOUT_MS [second]   (one rank of an mpirun job) the last rank calls
 *                                       sw_comm_create_mpi DELAY_S seconds late (with "second": its second one, MPI
 *                                       being initialized); the others must fail with SW_ERR_TIMEOUT within
 *                                       TIMEOUT_MS + 2 s, saying why. Exit 0 when that held.
 * Exit code 0 when every check passed; 77 (skipped) for the MPI modes when the MPI plugin is not available. */
#define _POSIX_C_SOURCE 200809L
#include "shardwise.h"
#include "free_port.h"

#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void sleep_us(long us) {
    struct timespec t = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&t, NULL);
}

static uint64_t mix(uint64_t x) { /* splitmix64 */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Element i of stream `tag` of rank r in iteration it: fresh per trial (seed), never zero. */
static float value(uint64_t seed, long it, int tag, int r, long i) {
    const uint64_t x = mix(seed ^ mix(((uint64_t)it << 24) ^ ((uint64_t)tag << 20) ^ ((uint64_t)r << 16)) ^ mix((uint64_t)i));
    return ((float)(x % 2001u) - 1000.0f) / 997.0f + 0.001f;
}

static float* ptr(sw_buffer b) {
    void* p = NULL;
    sw_buffer_get_pointer(b, &p);
    return (float*)p;
}

/* The ranks a failure message names as missing or lost: every "rank(s) a, b" list and "lost the connection to rank q". */
static void blamed_ranks(const char* msg, char* out, size_t cap) {
    int seen[64] = {0};
    for (const char* p = msg; (p = strstr(p, "rank(s) ")) != NULL;) {
        p += 8;
        while (*p >= '0' && *p <= '9') {
            const long q = strtol(p, (char**)&p, 10);
            if (q >= 0 && q < 64) seen[q] = 1;
            if (p[0] == ',' && p[1] == ' ') p += 2;
            else break;
        }
    }
    for (const char* p = msg; (p = strstr(p, "lost the connection to rank ")) != NULL;) {
        p += 28;
        const long q = strtol(p, (char**)&p, 10);
        if (q >= 0 && q < 64) seen[q] = 1;
    }
    out[0] = '\0';
    for (int q = 0; q < 64; ++q)
        if (seen[q]) snprintf(out + strlen(out), cap - strlen(out), "%s%d", out[0] ? "," : "", q);
    if (!out[0]) snprintf(out, cap, "-");
}

/* all of a[0..n) equal to b, or all NaN: "" when so, else what was found */
static const char* untouched_or_poisoned(const float* a, const float* before, long n, char* why, size_t cap) {
    long same = 0, nan = 0;
    for (long i = 0; i < n; ++i) {
        if (memcmp(&a[i], &before[i], 4) == 0) ++same;
        else if (isnan(a[i])) ++nan;
    }
    if (same == n || nan == n) return "";
    snprintf(why, cap, "VIOLATION:%ld_of_%ld_untouched_%ld_NaN_%ld_other", same, n, nan, n - same - nan);
    return why;
}

static int count_files(const char* dir, const char* prefix) {
    DIR* d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent* e;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) ++n;
    closedir(d);
    return n;
}

static void touch(const char* dir, const char* name, int rank) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.%d", dir, name, rank);
    FILE* f = fopen(path, "w");
    if (f) {
        fprintf(f, "%ld\n", (long)getpid());
        fclose(f);
    }
}

static const char* op_name[4] = {"all_reduce", "all_reduce_in_place", "all_gather", "reduce_scatter"};

/* The trial loop of one rank on an existing communicator. Returns 0 when the failure left outputs by the contract. */
static int trial_loop(sw_device dev, sw_comm comm, int rank, int p, uint64_t seed, const char* dir) {
    sw_stream s = NULL;
    if (sw_stream_create(dev, &s) != SW_OK) return 2;
    const long max_n = 200000;
    sw_buffer send = NULL, recv = NULL;
    if (sw_buffer_alloc(dev, (uint64_t)(max_n * p) * 4, &send) != SW_OK || sw_buffer_alloc(dev, (uint64_t)(max_n * p) * 4, &recv) != SW_OK)
        return 2;
    float* before = (float*)malloc((size_t)(max_n * p) * 4);
    double* ref = (double*)malloc((size_t)(max_n * p) * sizeof(double));
    if (!before || !ref) return 2;
    const double t_end = now_s() + 120;
    for (long it = 0; now_s() < t_end; ++it) {
        const int op = (int)(it % 4);
        const long n = 1 + (long)(mix(seed ^ (uint64_t)it) % (uint64_t)max_n); /* the same on every rank */
        const long send_n = op == 3 ? n * p : n, recv_n = op == 2 ? n * p : n;
        float* x = ptr(send);
        float* y = op == 1 ? x : ptr(recv);
        for (long i = 0; i < send_n; ++i) x[i] = value(seed, it, 1, rank, i);
        if (op == 1) memcpy(before, x, (size_t)n * 4); /* in place: the input must survive a failure */
        else
            for (long i = 0; i < recv_n; ++i) y[i] = before[i] = value(seed, it, 2, rank, i); /* known, fresh, not the result */
        const double t0 = now_s();
        sw_status st;
        switch (op) {
        case 0: st = sw_all_reduce(comm, rank, send, 0, recv, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s); break;
        case 1: st = sw_all_reduce(comm, rank, send, 0, send, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s); break;
        case 2: st = sw_all_gather(comm, rank, send, 0, recv, 0, (uint64_t)n, SW_DTYPE_F32, s); break;
        default: st = sw_reduce_scatter(comm, rank, send, 0, recv, 0, (uint64_t)n, SW_DTYPE_F32, SW_REDUCE_SUM, s); break;
        }
        if (st == SW_OK) st = sw_stream_synchronize(s);
        if (st != SW_OK) {
            char msg[8192], blamed[256], why[160];
            snprintf(msg, sizeof msg, "%s", sw_last_error());
            for (char* c = msg; *c; ++c)
                if (*c == '\n' || *c == '\r') *c = ' ';
            blamed_ranks(msg, blamed, sizeof blamed);
            const char* verdict = untouched_or_poisoned(y, before, recv_n, why, sizeof why);
            printf("VERDICT rank=%d iter=%ld op=%s status=%d ms=%.0f contract=%s blamed=%s msg=%s\n", rank, it, op_name[op], (int)st,
                   (now_s() - t0) * 1e3, verdict[0] ? verdict : "ok", blamed, msg);
            fflush(stdout);
            touch(dir, "done", rank);
            /* Let the other survivors print theirs before this process ends (mpirun then ends the job). */
            for (const double until = now_s() + 3; count_files(dir, "done.") < p - 1 && now_s() < until;) sleep_us(20000);
            return verdict[0] ? 3 : 0;
        }
        /* success: the result must be right (float64 reference; every rank's input is known here) */
        long bad = 0;
        if (op <= 1) {
            for (long i = 0; i < n; ++i) {
                ref[i] = 0;
                for (int q = 0; q < p; ++q) ref[i] += value(seed, it, 1, q, i);
                if (!(fabs(y[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])))) ++bad;
            }
        } else if (op == 2) {
            for (int q = 0; q < p; ++q)
                for (long i = 0; i < n; ++i)
                    if (y[q * n + i] != value(seed, it, 1, q, i)) ++bad;
        } else {
            for (long i = 0; i < n; ++i) {
                double r = 0;
                for (int q = 0; q < p; ++q) r += value(seed, it, 1, q, rank * n + i);
                if (!(fabs(y[i] - r) <= 1e-5 * (1 + fabs(r)))) ++bad;
            }
        }
        if (bad) {
            printf("VERDICT rank=%d iter=%ld op=%s status=0 ms=0 contract=VIOLATION:wrong_result_%ld_of_%ld blamed=- msg=success\n", rank, it,
                   op_name[op], bad, recv_n);
            fflush(stdout);
            return 3;
        }
        if (it == 3) touch(dir, "pid", rank); /* running: the script may strike now */
    }
    printf("VERDICT rank=%d iter=-1 op=- status=0 ms=0 contract=ok blamed=- msg=no_failure_within_120_s\n", rank);
    fflush(stdout);
    return 4;
}

static int trial_tcp(int rank, int p, int port, int64_t timeout_ms, uint64_t seed, const char* dir) {
    sw_device dev = NULL;
    sw_store store = NULL;
    sw_comm comm = NULL;
    if (sw_device_create(SW_BACKEND_CPU, 0, 1, &dev) != SW_OK || sw_store_create("127.0.0.1", port, rank == 0, 30000, &store) != SW_OK ||
        sw_comm_create_tcp(dev, store, "trial", rank, p, timeout_ms, &comm) != SW_OK) {
        printf("VERDICT rank=%d iter=-1 op=create status=-1 ms=0 contract=ok blamed=- msg=setup_failed:%s\n", rank, sw_last_error());
        return 2;
    }
    return trial_loop(dev, comm, rank, p, seed, dir);
}

static int mpi_available(void) {
    int32_t available = 0;
    char info[512];
    sw_mpi_get_info(&available, info, sizeof info);
    if (!available) printf("skipped: %s\n", info);
    return available;
}

static int trial_mpi(int64_t timeout_ms, uint64_t seed, const char* dir) {
    if (!mpi_available()) return 77;
    sw_device dev = NULL;
    sw_comm comm = NULL;
    int32_t rank = -1, p = 0;
    if (sw_device_create(SW_BACKEND_CPU, 0, 1, &dev) != SW_OK || sw_comm_create_mpi(dev, timeout_ms, &comm) != SW_OK ||
        sw_comm_get_rank(comm, &rank) != SW_OK || sw_comm_get_world_size(comm, &p) != SW_OK) {
        printf("VERDICT rank=%d iter=-1 op=create status=-1 ms=0 contract=ok blamed=- msg=setup_failed:%s\n", rank, sw_last_error());
        return 2;
    }
    return trial_loop(dev, comm, rank, p, seed, dir);
}

/* The last rank creates its MPI communicator delay_s late: the others must give up at their timeout, saying why.
 * second: every rank first creates (and destroys) a communicator, so MPI is initialized and the late one is the
 * second communicator (MPI_Comm_idup waits, not MPI_Init). */
static int mpi_late(int delay_s, int64_t timeout_ms, int second) {
    if (!mpi_available()) return 77;
    const char* r = getenv("OMPI_COMM_WORLD_RANK");
    const char* w = getenv("OMPI_COMM_WORLD_SIZE");
    const int rank = r ? atoi(r) : 0, p = w ? atoi(w) : 1;
    sw_device dev = NULL;
    sw_comm comm = NULL;
    if (sw_device_create(SW_BACKEND_CPU, 0, 1, &dev) != SW_OK) return 1;
    if (second) {
        if (sw_comm_create_mpi(dev, 30000, &comm) != SW_OK) {
            printf("[rank %d] first sw_comm_create_mpi failed: %s -> FAILED\n", rank, sw_last_error());
            return 1;
        }
        sw_comm_destroy(comm);
        comm = NULL;
    }
    if (rank == p - 1) {
        sleep((unsigned)delay_s);
        const sw_status st = sw_comm_create_mpi(dev, timeout_ms, &comm);
        printf("[rank %d] late by %d s: sw_comm_create_mpi status %d (%s)\n", rank, delay_s, (int)st, st ? sw_last_error() : "ok");
        return 0; /* whatever it got: the job is being ended */
    }
    const double t0 = now_s();
    const sw_status st = sw_comm_create_mpi(dev, timeout_ms, &comm);
    const double took = now_s() - t0;
    const char* msg = sw_last_error();
    const int ok = st == SW_ERR_TIMEOUT && took < (double)timeout_ms / 1000.0 + 2.0 && strstr(msg, "timeout") != NULL;
    printf("[rank %d] %ssw_comm_create_mpi(timeout %lld ms) with rank %d %d s late: status %d after %.2f s: %s -> %s\n", rank,
           second ? "second " : "", (long long)timeout_ms, p - 1, delay_s, (int)st, took, st ? msg : "ok", ok ? "ok" : "FAILED");
    fflush(stdout);
    if (comm) sw_comm_destroy(comm);
    return ok ? 0 : 1;
}

/* The last rank stops itself (SIGSTOP) after a few collectives: the others must fail at their timeout naming it only,
 * and then end (no MPI_Finalize waiting for the stopped rank at exit). Run under mpirun -n 3 (which ends the stopped rank once the others ended). */
static int mpi_freeze(int64_t timeout_ms) {
    if (!mpi_available()) return 77;
    sw_device dev = NULL;
    sw_stream s = NULL;
    sw_comm comm = NULL;
    int32_t rank = -1, p = 0;
    if (sw_device_create(SW_BACKEND_CPU, 0, 1, &dev) != SW_OK || sw_stream_create(dev, &s) != SW_OK ||
        sw_comm_create_mpi(dev, 20000, &comm) != SW_OK || sw_comm_get_rank(comm, &rank) != SW_OK ||
        sw_comm_get_world_size(comm, &p) != SW_OK) {
        printf("setup: %s -> FAILED\n", sw_last_error());
        return 1;
    }
    sw_comm_destroy(comm);
    if (sw_comm_create_mpi(dev, timeout_ms, &comm) != SW_OK) {
        printf("setup: %s -> FAILED\n", sw_last_error());
        return 1;
    }
    sw_buffer b = NULL;
    sw_buffer_alloc(dev, 4096 * 4, &b);
    for (int it = 0; it < 6; ++it) {
        if (it == 5 && rank == p - 1) raise(SIGSTOP); /* frozen until mpirun ends the job */
        for (int i = 0; i < 4096; ++i) ptr(b)[i] = value(7, it, 1, rank, i);
        const double t0 = now_s();
        sw_status st = sw_all_reduce(comm, rank, b, 0, b, 0, 4096, SW_DTYPE_F32, SW_REDUCE_SUM, s);
        if (st == SW_OK) st = sw_stream_synchronize(s);
        if (it < 5 && st != SW_OK) {
            printf("[rank %d] all-reduce %d before the freeze: %s -> FAILED\n", rank, it, sw_last_error());
            return 1;
        }
        if (it == 5) {
            char blamed[256], want[16];
            blamed_ranks(sw_last_error(), blamed, sizeof blamed);
            snprintf(want, sizeof want, "%d", p - 1);
            const double took = now_s() - t0;
            const int ok = st == SW_ERR_TIMEOUT && strcmp(blamed, want) == 0 && took < (double)timeout_ms / 1000.0 + 3.0;
            printf("[rank %d] with rank %d stopped: status %d after %.2f s, blamed %s: %s -> %s\n", rank, p - 1, (int)st, took,
                   blamed, sw_last_error(), ok ? "ok" : "FAILED");
            fflush(stdout);
            /* mpirun ends the whole job as soon as one rank exits without MPI_Finalize: linger, so that a rank that
             * reached the collective later (a loaded machine) still times out and prints its verdict. */
            sleep(2);
            return ok ? 0 : 1; /* and the process must end: no MPI_Finalize waiting for the stopped rank */
        }
    }
    return 1;
}

/* One forked 3-rank TCP trial: rank `victim` is SIGKILLed or SIGSTOPped once the job runs. */
static int forked_trial(int freeze, int victim, uint64_t seed) {
    const int p = 3, port = free_port();
    char dir[] = "/tmp/sw_fault_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    int pipes[3][2];
    pid_t pids[3];
    for (int r = 0; r < p; ++r) {
        if (pipe(pipes[r]) != 0) return 1;
        pids[r] = fork();
        if (pids[r] == 0) {
            alarm(60);
            dup2(pipes[r][1], 1);
            close(pipes[r][0]);
            _exit(trial_tcp(r, p, port, 3000, seed, dir));
        }
        close(pipes[r][1]);
    }
    int bad = 0;
    const double t0 = now_s();
    while (count_files(dir, "pid.") < p && now_s() < t0 + 30) sleep_us(10000);
    sleep_us((long)(mix(seed) % 400000));
    kill(pids[victim], freeze ? SIGSTOP : SIGKILL);
    const double struck = now_s();
    for (int r = 0; r < p; ++r) {
        if (r == victim) continue;
        char line[16384];
        FILE* f = fdopen(pipes[r][0], "r");
        int found = 0;
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "VERDICT ", 8) == 0) {
                found = 1;
                char want[32];
                snprintf(want, sizeof want, "blamed=%d ", victim);
                const int ok = strstr(line, "contract=ok") && strstr(line, want) && !strstr(line, "status=0 ");
                printf("%s %s: %s", freeze ? "freeze" : "kill", ok ? "ok" : "FAILED", line);
                bad += !ok;
            }
        if (f) fclose(f);
        waitpid(pids[r], NULL, 0);
        if (!found) {
            printf("%s FAILED: rank %d printed no verdict\n", freeze ? "freeze" : "kill", r);
            ++bad;
        }
    }
    const double took = now_s() - struck;
    if (took > 3.0 + 5.0) {
        printf("survivors took %.1f s after the fault (timeout 3 s)\n", took);
        ++bad;
    }
    kill(pids[victim], SIGKILL);
    waitpid(pids[victim], NULL, 0);
    close(pipes[victim][0]);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    return bad;
}

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 9 && strcmp(argv[1], "--trial") == 0 && strcmp(argv[2], "tcp") == 0)
        return trial_tcp(atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoll(argv[6]), strtoull(argv[7], NULL, 10), argv[8]);
    if (argc >= 6 && strcmp(argv[1], "--trial") == 0 && strcmp(argv[2], "mpi") == 0)
        return trial_mpi(atoll(argv[3]), strtoull(argv[4], NULL, 10), argv[5]);
    if (argc >= 4 && strcmp(argv[1], "--mpi-late") == 0)
        return mpi_late(atoi(argv[2]), atoll(argv[3]), argc >= 5 && strcmp(argv[4], "second") == 0);
    if (argc == 2 && strcmp(argv[1], "--free-port") == 0) { /* for the script */
        printf("%d\n", free_port());
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--mpi-freeze") == 0) return mpi_freeze(atoll(argv[2]));
    if (argc == 2 && strcmp(argv[1], "--mpi-info") == 0) return mpi_available() ? 0 : 77;
    if (argc > 1) {
        fprintf(stderr, "usage: fault_check [--trial tcp RANK WORLD PORT TIMEOUT_MS SEED DIR | --trial mpi TIMEOUT_MS SEED DIR | "
                        "--mpi-late DELAY_S TIMEOUT_MS | --free-port | --mpi-info]\n");
        return 2;
    }
    const uint64_t seed = mix((uint64_t)time(NULL) ^ (uint64_t)getpid());
    printf("seed %llu\n", (unsigned long long)seed);
    fflush(stdout);
    int bad = forked_trial(1, 2, seed);
    bad += forked_trial(0, 1, mix(seed));
    printf("%s\n", bad ? "FAILED" : "fault checks passed");
    return bad ? 1 : 0;
}
