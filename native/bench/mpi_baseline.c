/* Raw Open MPI, the baseline of `./build.sh bench-mp`: MPI_Allreduce, MPI_Allgather and MPI_Reduce_scatter_block of
 * float32 buffers, timed and reported exactly as the bandwidth scenario of Shardwise's multi-process worker times and
 * reports its own collectives (tests/MultiProcess/Bandwidth.cs), so that the two tables can be read side by side:
 *   - sizes from SW_BW_MIN_BYTES to SW_BW_MAX_BYTES (default 8 B .. 64 MiB; K, M, G suffixes: powers of 1024) in x4
 *     steps; all-gather and reduce-scatter sizes rounded down to whole floats per rank (at least one), as the worker;
 *   - SW_BW_WARMUP (default 5) untimed iterations, then a barrier and SW_BW_ITERS (default 20) timed ones back to back;
 *     time = the mean per iteration on the slowest rank (the maximum over ranks);
 *   - algbw = size / time, busbw = algbw * 2(p-1)/p (all-reduce) or (p-1)/p (the others), GB = 1e9 B;
 *   - every result is checked on every rank against the exact sums of small integers before its size is timed
 *     (#wrong: wrong elements summed over the ranks; a non-zero count ends the run with exit code 1).
 * A baseline only: the library never links MPI (its MPI shim is loaded at run time). */
#include <mpi.h>

#include "bench_env.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_count(const char* name, int fallback) {
    const char* v = getenv(name);
    const int n = v && *v ? atoi(v) : 0;
    return n > 0 ? n : fallback;
}

/* The value rank r puts at element i (a small integer: every sum is exact in float32). */
static float value(int r, long long i) { return (float)((r * 7 + i * 3) % 13 - 6); }

int main(int argc, char** argv) {
    (void)argc;
    (void)argv;
    MPI_Init(NULL, NULL);
    int rank = 0, p = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    const long long min_bytes = sw_bench_bytes("SW_BW_MIN_BYTES", 8), max_bytes = sw_bench_bytes("SW_BW_MAX_BYTES", 64LL << 20);
    const int iters = parse_count("SW_BW_ITERS", 20), warmup = parse_count("SW_BW_WARMUP", 5);
    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
        int len = 0;
        MPI_Get_library_version(version, &len);
        char* nl = strchr(version, '\n');
        if (nl) *nl = '\0';
        printf("# raw MPI baseline: %s; %d processes\n", version, p);
        printf("# sizes %lld B to %lld B (x4 steps); %d warm-up + %d timed iterations per size; time = mean per "
               "iteration on the slowest rank; GB = 1e9 B\n",
               min_bytes, max_bytes, warmup, iters);
    }
    const char* names[3] = {"all_reduce", "all_gather", "reduce_scatter"};
    int wrong_total = 0;
    for (int c = 0; c < 3 && !wrong_total; ++c) {
        const double factor = c == 0 ? 2.0 * (p - 1) / p : (double)(p - 1) / p;
        if (rank == 0) {
            printf("# collective: %s  (busbw = algbw * %s = %g)\n", names[c], c == 0 ? "2(n-1)/n" : "(n-1)/n", factor);
            printf("#       size         count    type  redop        time         algbw         busbw  #wrong\n");
        }
        for (long long nominal = min_bytes < 4 ? 4 : min_bytes; nominal <= max_bytes; nominal *= 4) {
            /* elements: all-reduce `count` in and out; all-gather `count` per rank in, p*count out; reduce-scatter
             * p*count in, `count` out */
            const long long count = c == 0 ? (nominal / 4 > 0 ? nominal / 4 : 1)
                                           : (nominal / (4LL * p) > 0 ? nominal / (4LL * p) : 1);
            const long long size = c == 0 ? count * 4 : count * 4 * p;
            const long long in_n = c == 2 ? count * p : count, out_n = c == 1 ? count * p : count;
            float* in = (float*)malloc((size_t)in_n * sizeof(float));
            float* out = (float*)malloc((size_t)out_n * sizeof(float));
            if (!in || !out) {
                fprintf(stderr, "mpi_baseline: out of memory at %lld B\n", size);
                MPI_Abort(MPI_COMM_WORLD, 2);
            }
            for (long long i = 0; i < in_n; ++i) in[i] = value(rank, i);
            const int n = (int)count;
            for (int it = 0; it < warmup + iters; ++it) {
                if (it == warmup) {
                    /* check the warm-up's result, then time from a barrier */
                    long long bad = 0;
                    for (long long i = 0; i < out_n; ++i) {
                        float want = 0.0f;
                        if (c == 0) {
                            for (int q = 0; q < p; ++q) want += value(q, i);
                        } else if (c == 1) {
                            want = value((int)(i / count), i % count);
                        } else {
                            for (int q = 0; q < p; ++q) want += value(q, rank * count + i);
                        }
                        bad += out[i] != want;
                    }
                    long long all_bad = 0;
                    MPI_Allreduce(&bad, &all_bad, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
                    if (all_bad) wrong_total = 1;
                    MPI_Barrier(MPI_COMM_WORLD);
                    if (all_bad) {
                        if (rank == 0) printf("%12lld  %12lld   float    %s  (wrong) %lld\n", size, count, c == 1 ? "none" : " sum", all_bad);
                        break;
                    }
                }
                static double t0;
                if (it == warmup) t0 = MPI_Wtime();
                if (it < warmup) /* poisoned before every warm-up call (the last one is checked); not while timed */
                    for (long long i = 0; i < out_n; ++i) out[i] = -1.0f;
                if (c == 0) MPI_Allreduce(in, out, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                else if (c == 1) MPI_Allgather(in, n, MPI_FLOAT, out, n, MPI_FLOAT, MPI_COMM_WORLD);
                else MPI_Reduce_scatter_block(in, out, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                if (it == warmup + iters - 1) {
                    const double mine = (MPI_Wtime() - t0) / iters;
                    double slowest = 0;
                    MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
                    if (rank == 0) {
                        const double algbw = (double)size / slowest / 1e9;
                        printf("%12lld  %12lld   float  %5s  %10.2f  %12.3g  %12.3g  %6d\n", size, count,
                               c == 1 ? "none" : "sum", slowest * 1e6, algbw, algbw * factor, 0);
                    }
                }
            }
            free(in);
            free(out);
            if (wrong_total) break;
        }
    }
    fflush(stdout);
    MPI_Finalize();
    return wrong_total ? 1 : 0;
}
