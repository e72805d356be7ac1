/* Ours against raw Open MPI in one job, interleaved: the comparison of `./build.sh bench-mp` that holds still on a
 * shared, noisy machine. Run under mpirun (one process per rank); every process holds, side by side,
 *   - raw MPI (MPI_Allreduce, MPI_Allgather, MPI_Reduce_scatter_block on MPI_COMM_WORLD),
 *   - a Shardwise TCP communicator (store served by rank 0, its port broadcast over MPI): on one host its data goes
 *     through shared memory ("shm+cma"), or over its sockets with SHARDWISE_TRANSPORT=tcp,
 *   - a Shardwise MPI communicator (sw_comm_create_mpi over this MPI, initialized with MPI_THREAD_MULTIPLE),
 * and for every collective and size runs rounds in which each variant, in a rotating order, does a barrier and then k
 * collectives back to back (ours: queued on the stream, then one synchronize; MPI: k blocking calls); a variant's round
 * time is the slowest rank's per-collective time. Reported per size: each variant's median round time (us) and the
 * median of the per-round ratios MPI / ours (above 1: ours faster; the same as the busbw ratio) with their 10th and
 * 90th percentiles. Every variant's result is checked against exact integer sums before its size is timed.
 *
 * Environment: SW_BW_MIN_BYTES (default 1K), SW_BW_MAX_BYTES (default 16M; K, M, G suffixes), SW_IL_ROUNDS
 * (default 21), SW_IL_ITERS (collectives per round; default: about 2 ms of MPI's time, 1..200).
 * A benchmark: it links MPI and Shardwise; the library itself never links MPI. */
#define _POSIX_C_SOURCE 200809L
#include <mpi.h>

#include "bench_env.h"

#include "shardwise.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int cmp_double(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

static double quantile(double* v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

#define SW(call)                                                                                                       \
    do {                                                                                                               \
        const sw_status st_ = (call);                                                                                  \
        if (st_ != SW_OK) {                                                                                            \
            fprintf(stderr, "rank %d: %s failed: %s\n", rank, #call, sw_last_error());                                 \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                                              \
        }                                                                                                              \
    } while (0)

enum { ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER };
static const char* coll_names[] = {"all_reduce", "all_gather", "reduce_scatter"};
enum { RAW, OURS_TCP, OURS_MPI, VARIANTS };

static int rank, p;
static sw_stream stream;

/* k collectives of variant v; returns the per-collective time on the slowest rank (us). */
static double run(int v, int coll, sw_comm comm, sw_buffer in, sw_buffer out, float* hin, float* hout, long long count,
                  int k) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = now_us();
    for (int i = 0; i < k; ++i) {
        if (v == RAW) {
            if (coll == ALL_REDUCE) MPI_Allreduce(hin, hout, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            else if (coll == ALL_GATHER) MPI_Allgather(hin, (int)count, MPI_FLOAT, hout, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
            else MPI_Reduce_scatter_block(hin, hout, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        } else if (coll == ALL_REDUCE) {
            SW(sw_all_reduce(comm, rank, in, 0, out, 0, (uint64_t)count, SW_DTYPE_F32, SW_REDUCE_SUM, stream));
        } else if (coll == ALL_GATHER) {
            SW(sw_all_gather(comm, rank, in, 0, out, 0, (uint64_t)count, SW_DTYPE_F32, stream));
        } else {
            SW(sw_reduce_scatter(comm, rank, in, 0, out, 0, (uint64_t)count, SW_DTYPE_F32, SW_REDUCE_SUM, stream));
        }
    }
    if (v != RAW) SW(sw_stream_synchronize(stream));
    double t = (now_us() - t0) / k, slowest = 0;
    MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return slowest;
}

/* The value rank r puts at element i (a small integer: every sum is exact in float32). */
static float value(int r, long long i) { return (float)((r * 7 + i * 3) % 13 - 6); }

/* Checks variant v's result of one collective against the exact sums; returns the wrong elements over all ranks. */
static long long check(int v, int coll, sw_comm comm, sw_buffer in, sw_buffer out, float* hin, float* hout, long long count,
                       long long out_count) {
    for (long long i = 0; i < out_count; ++i) hout[i] = 0.0f / 0.0f;
    run(v, coll, comm, in, out, hin, hout, count, 1);
    long long wrong = 0;
    for (long long i = 0; i < out_count; ++i) {
        float want = 0;
        if (coll == ALL_REDUCE) for (int q = 0; q < p; ++q) want += value(q, i);
        else if (coll == ALL_GATHER) want = value((int)(i / count), i % count);
        else for (int q = 0; q < p; ++q) want += value(q, rank * count + i);
        wrong += hout[i] != want;
    }
    long long total = 0;
    MPI_Allreduce(&wrong, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

int main(int argc, char** argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    const long long min_bytes = sw_bench_bytes("SW_BW_MIN_BYTES", 1024), max_bytes = sw_bench_bytes("SW_BW_MAX_BYTES", 16 << 20);
    const long long rounds_env = sw_bench_bytes("SW_IL_ROUNDS", 21), iters_env = sw_bench_bytes("SW_IL_ITERS", 0);
    const int rounds = (int)(rounds_env < 3 ? 3 : rounds_env > 1001 ? 1001 : rounds_env);

    sw_device dev = NULL;
    sw_store store = NULL;
    sw_comm comms[VARIANTS] = {NULL, NULL, NULL};
    SW(sw_device_create(SW_BACKEND_CPU, 0, 1, &dev));
    SW(sw_stream_create(dev, &stream));
    int32_t port = 0;
    if (rank == 0) {
        SW(sw_store_create("127.0.0.1", 0, 1, 60000, &store));
        SW(sw_store_get_port(store, &port));
    }
    MPI_Bcast(&port, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank != 0) SW(sw_store_create("127.0.0.1", port, 0, 60000, &store));
    SW(sw_comm_create_tcp(dev, store, "interleaved", rank, p, 60000, &comms[OURS_TCP]));
    const int have_mpi_group = provided >= MPI_THREAD_SERIALIZED;
    if (have_mpi_group) SW(sw_comm_create_mpi(dev, 60000, &comms[OURS_MPI]));
    const char* transport = "?";
    SW(sw_comm_get_transport(comms[OURS_TCP], &transport));
    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
        int len = 0;
        MPI_Get_library_version(version, &len);
        char* nl = strchr(version, '\n');
        if (nl) *nl = '\0';
        printf("# interleaved: %d processes, %d rounds per size, variants in rotating order; ours (TCP communicator, "
               "transport %s)%s vs raw MPI (%s)\n",
               p, rounds, transport, have_mpi_group ? " and ours (MPI communicator)" : "", version);
        printf("# time: median round (us per collective, slowest rank); ratio: median of per-round MPI time / ours "
               "[10th, 90th percentile] (above 1: ours faster)\n");
        printf("%-15s %10s %5s %11s %11s %22s", "collective", "size (B)", "k", "MPI (us)", "ours (us)", "ratio [p10, p90]");
        if (have_mpi_group) printf(" %13s %22s", "ours-mpi (us)", "ratio [p10, p90]");
        printf("\n");
        fflush(stdout);
    }
    const long long max_floats = max_bytes / 4 + p;
    sw_buffer in = NULL, out = NULL;
    SW(sw_buffer_alloc(dev, (uint64_t)max_floats * 4, &in));
    SW(sw_buffer_alloc(dev, (uint64_t)max_floats * 4, &out));
    float *hin = NULL, *hout = NULL;
    SW(sw_buffer_get_pointer(in, (void**)&hin));
    SW(sw_buffer_get_pointer(out, (void**)&hout));
    double* times[VARIANTS];
    double* ratios[VARIANTS];
    for (int v = 0; v < VARIANTS; ++v) {
        times[v] = malloc(sizeof(double) * (size_t)rounds);
        ratios[v] = malloc(sizeof(double) * (size_t)rounds);
    }
    int bad = 0;
    for (int coll = 0; coll < 3 && !bad; ++coll) {
        for (long long size = min_bytes; size <= max_bytes && !bad; size *= 4) {
            long long count = coll == ALL_REDUCE ? size / 4 : size / (4LL * p); /* per rank for the others */
            if (count < 1) count = 1;
            const long long in_count = coll == REDUCE_SCATTER ? count * p : count;
            const long long out_count = coll == ALL_REDUCE ? count : coll == ALL_GATHER ? count * p : count;
            const long long bytes = coll == ALL_REDUCE ? count * 4 : count * 4 * p;
            for (long long i = 0; i < in_count; ++i) hin[i] = value(rank, i);
            for (int v = 0; v < VARIANTS; ++v) {
                if (v == OURS_MPI && !have_mpi_group) continue;
                const long long wrong = check(v, coll, comms[v], in, out, hin, hout, count, out_count);
                if (wrong) {
                    if (rank == 0) printf("%s %lld B: variant %d has %lld wrong elements\n", coll_names[coll], bytes, v, wrong);
                    bad = 1;
                }
            }
            if (bad) break;
            /* k: about 2 ms of MPI's time per variant and round (estimated from one warm call), 1..200 */
            int k = (int)iters_env;
            if (k <= 0) {
                const double one = run(RAW, coll, NULL, in, out, hin, hout, count, 3);
                k = one > 0 ? (int)(2000.0 / one) : 200;
                k = k < 1 ? 1 : k > 200 ? 200 : k;
                MPI_Bcast(&k, 1, MPI_INT, 0, MPI_COMM_WORLD);
            }
            for (int r = 0; r < rounds; ++r) {
                double t[VARIANTS] = {0, 0, 0};
                for (int j = 0; j < VARIANTS; ++j) {
                    const int v = (r + j) % VARIANTS; /* rotating order */
                    if (v == OURS_MPI && !have_mpi_group) continue;
                    t[v] = run(v, coll, comms[v], in, out, hin, hout, count, k);
                }
                for (int v = 0; v < VARIANTS; ++v) {
                    times[v][r] = t[v];
                    ratios[v][r] = t[v] > 0 ? t[RAW] / t[v] : 0;
                }
            }
            if (rank == 0) {
                const double mpi_t = quantile(times[RAW], rounds, 0.5), ours_t = quantile(times[OURS_TCP], rounds, 0.5);
                const double rm = quantile(ratios[OURS_TCP], rounds, 0.5), r10 = quantile(ratios[OURS_TCP], rounds, 0.1),
                             r90 = quantile(ratios[OURS_TCP], rounds, 0.9);
                printf("%-15s %10lld %5d %11.2f %11.2f %8.2f [%5.2f, %5.2f]", coll_names[coll], bytes, k, mpi_t, ours_t, rm,
                       r10, r90);
                if (have_mpi_group) {
                    const double om = quantile(times[OURS_MPI], rounds, 0.5);
                    const double m = quantile(ratios[OURS_MPI], rounds, 0.5), m10 = quantile(ratios[OURS_MPI], rounds, 0.1),
                                 m90 = quantile(ratios[OURS_MPI], rounds, 0.9);
                    printf(" %13.2f %8.2f [%5.2f, %5.2f]", om, m, m10, m90);
                }
                printf("\n");
                fflush(stdout);
            }
        }
    }
    sw_buffer_destroy(in);
    sw_buffer_destroy(out);
    for (int v = 1; v < VARIANTS; ++v)
        if (comms[v]) sw_comm_destroy(comms[v]);
    sw_store_destroy(store);
    sw_stream_destroy(stream);
    sw_device_destroy(dev);
    for (int v = 0; v < VARIANTS; ++v) {
        free(times[v]);
        free(ratios[v]);
    }
    MPI_Finalize();
    return bad;
}
