#!/usr/bin/env bash
# Runs on a CUDA machine without .NET or network, from the repository root (sources present), with the
# bundle made by scripts/gpu-bundle.sh in BUNDLE_DIR (default: gpu-bundle/):
#   1. builds the native library and the CUDA plugin with the local nvcc (SHARDWISE_CUDA=ON);
#   2. runs the native checks (ctest), then cuda_bench (issue 3's performance targets: markdown tables in
#      cuda-bench.md and summary.txt), then the CUDA plugin check under compute-sanitizer (memcheck, racecheck)
#      when it is installed;
#   3. runs the whole NUnit suite from the bundle against that native build (CUDA fixtures included);
#   4. runs the main job on the GPU and a short benchmark.
# Everything it prints, and the reports, go to OUT_DIR (default: $OUT if set, else gpu-results/).
set -uo pipefail
ROOT="$PWD"
BUNDLE_DIR="${BUNDLE_DIR:-$ROOT/gpu-bundle}"
OUT_DIR="${OUT_DIR:-${OUT:-$ROOT/gpu-results}}"
BUILD="${BUILD:-/tmp/shardwise-gpu-build}"
APP="/tmp/shardwise-gpu-app"
mkdir -p "$OUT_DIR"
log() { printf '==> %s\n' "$*" | tee -a "$OUT_DIR/summary.txt"; }
rc_all=0

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -2;
  cmake --version | head -1; } 2>&1 | tee -a "$OUT_DIR/summary.txt"

log "native build (CUDA on)"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSHARDWISE_CUDA=ON > "$OUT_DIR/cmake.log" 2>&1 &&
    cmake --build "$BUILD" -j "$(nproc)" >> "$OUT_DIR/cmake.log" 2>&1 || { tail -50 "$OUT_DIR/cmake.log"; exit 1; }

# NCCL lives in the Python environment there (nvidia-nccl): point Shardwise at it unless the caller did.
if [ -z "${SHARDWISE_NCCL_PATH:-}" ]; then
    nccl="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null ||
            find / -name 'libnccl.so.2' -not -path '*/proc/*' 2>/dev/null | head -n1)"
    [ -n "$nccl" ] && [ -e "$nccl" ] && export SHARDWISE_NCCL_PATH="$nccl"
fi
log "NCCL: ${SHARDWISE_NCCL_PATH:-not found}"

# On a Hopper GPU (compute capability 9.0) with an nvcc that builds sm_90a, the wgmma kernel must be available:
# cuda_check then fails instead of reporting it unavailable.
cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')"
nvcc_major="$(nvcc --version 2>/dev/null | grep -oE 'release [0-9]+' | grep -oE '[0-9]+' | head -n1)"
if [ "$cc" = "9.0" ] && [ "${nvcc_major:-0}" -ge 12 ]; then export SHARDWISE_EXPECT_WGMMA=1; fi
log "compute capability ${cc:-unknown}, nvcc ${nvcc_major:-?}: SHARDWISE_EXPECT_WGMMA=${SHARDWISE_EXPECT_WGMMA:-0}"

log "native checks"
ctest --test-dir "$BUILD" --output-on-failure > "$OUT_DIR/ctest.log" 2>&1 || rc_all=1
tail -15 "$OUT_DIR/ctest.log" | tee -a "$OUT_DIR/summary.txt"

# Issue 3's targets, full shapes (about a minute). Exit 77: no CUDA device (skipped, as cuda_check); any other
# non-zero status is an API error or a failed verification of a benchmarked result.
log "cuda_bench (issue 3 targets; tables also in cuda-bench.md, progress in cuda-bench.stderr.log)"
if [ -x "$BUILD/bin/cuda_bench" ]; then
    "$BUILD/bin/cuda_bench" --out "$OUT_DIR/cuda-bench.md" 2> "$OUT_DIR/cuda-bench.stderr.log" | tee -a "$OUT_DIR/summary.txt"
    bench_rc=${PIPESTATUS[0]}
    if [ "$bench_rc" -eq 77 ]; then
        log "cuda_bench skipped (no CUDA device): $(tail -1 "$OUT_DIR/cuda-bench.stderr.log")"
    elif [ "$bench_rc" -ne 0 ]; then
        rc_all=1
        log "cuda_bench FAILED (exit $bench_rc):"
        tail -5 "$OUT_DIR/cuda-bench.stderr.log" | tee -a "$OUT_DIR/summary.txt"
    fi
else
    rc_all=1
    log "cuda_bench not built ($BUILD/bin/cuda_bench missing)"
fi

if command -v compute-sanitizer >/dev/null 2>&1 && [ -x "$BUILD/bin/cuda_check" ]; then
    for tool in memcheck racecheck; do
        log "compute-sanitizer --tool $tool cuda_check"
        compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/bin/cuda_check" > "$OUT_DIR/sanitizer-$tool.log" 2>&1 || rc_all=1
        tail -3 "$OUT_DIR/sanitizer-$tool.log" | tee -a "$OUT_DIR/summary.txt"
    done
fi

log "NUnit suite (bundle $(cat "$BUNDLE_DIR/COMMIT" 2>/dev/null || true))"
rm -rf "$APP" && mkdir -p "$APP" && tar -C "$APP" --strip-components=1 -xJf "$BUNDLE_DIR/shardwise-gpu-bundle.tar.xz"
export SHARDWISE_NATIVE_PATH="$BUILD/lib"
(cd "$APP" && ./Shardwise.Tests --report-trx --report-trx-filename tests.trx --results-directory "$OUT_DIR" \
    > "$OUT_DIR/tests.log" 2>&1) || rc_all=1
grep -E "total:|failed:|succeeded:|skipped:" "$OUT_DIR/tests.log" | tee -a "$OUT_DIR/summary.txt"

log "main job (CUDA)"
(cd "$APP" && ./Shardwise.Bench main --backend cuda > "$OUT_DIR/main-cuda.log" 2>&1) || rc_all=1
tail -30 "$OUT_DIR/main-cuda.log" | tee -a "$OUT_DIR/summary.txt"
exit $rc_all
