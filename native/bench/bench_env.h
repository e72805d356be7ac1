/* The settings of the MPI benchmarks (mpi_baseline.c, mpi_interleaved.c) from the environment: the same parsing as
 * the bandwidth worker's (tests/MultiProcess/Bandwidth.cs), so that one SW_BW_* setting means the same everywhere. */
#pragma once
#include <stdlib.h>

/* A byte count ("65536", "64K", "64M", "1G": powers of 1024); unset, empty or not positive: fallback. */
static inline long long sw_bench_bytes(const char* name, long long fallback) {
    const char* v = getenv(name);
    if (!v || !*v) return fallback;
    char* end = NULL;
    long long n = strtoll(v, &end, 10);
    if (end && (*end == 'K' || *end == 'k')) n <<= 10;
    else if (end && (*end == 'M' || *end == 'm')) n <<= 20;
    else if (end && (*end == 'G' || *end == 'g')) n <<= 30;
    return n > 0 ? n : fallback;
}
