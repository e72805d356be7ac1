#!/usr/bin/env bash
# Runs on a CUDA machine without .NET or network, from the repository root (sources present), with the
# bundle made by scripts/gpu-bundle.sh in BUNDLE_DIR (default: gpu-bundle/):
#
#   bash gpu-bundle/gpu-run.sh [STEP...]       default: build ctest bench sanitizer nunit main
#
#   build      the native library, the CUDA plugin and the checks with the local nvcc (SHARDWISE_CUDA=ON; incremental
#              when BUILD already holds a build)
#   ctest      the native checks (cuda_check, nccl_check_gpu, the emulation checks, ...)
#   bench      cuda_bench: issue 3's performance targets, markdown tables (cuda-bench.md, and in summary.txt)
#   sanitizer  cuda_check under compute-sanitizer memcheck, racecheck and synccheck (when installed)
#   nunit      the whole NUnit suite from the bundle against this native build (CUDA fixtures included)
#   main       the main job on the GPU
#   ctest-cuda the CUDA checks alone (cuda_check, nccl_check_gpu, cuda_bench_emulated); run first on a short lease
#   nunit-cuda the NUnit CUDA fixtures, in SW_GPU_NUNIT_BATCHES processes (default 3); ditto
#
# Environment: SW_GPU_DEADLINE=S stops the run S seconds after its start (the step in flight is killed, the steps left
# are logged as skipped, and the results are copied out as usual), so that a lease with a hard limit still returns
# them; SW_GPU_ARCHS overrides the plugin's architectures (default: the GPU's own, e.g. "90;90a" on a Hopper GPU with
# nvcc >= 12, which halves the build; the project's default "80;90[;90a]" when the GPU is unknown).
# SW_GPU_BENCH_TIMEOUT / SW_GPU_SANITIZER_TIMEOUT / SW_GPU_CTEST_TIMEOUT (seconds) cap cuda_bench, each sanitizer run
# and ctest-cuda, SW_GPU_NUNIT_BATCH_TIMEOUT each batch of nunit-cuda (30 s before such a cap, the stacks of the test processes still
# running are written with cuda-gdb); SW_GPU_STACKS_AT=S writes the stacks of test processes still running at S seconds (cuda-gdb); SW_GPU_BENCH_ARGS
# adds cuda_bench options (e.g. --quick).
# summary.txt is copied to OUT_DIR after every step, so even a run killed from outside returns what it had.
#
# The device tool runs one command for at most 10 minutes and keeps a machine warm for only seconds after it, so
# every step prints its duration; when the whole list does not fit, run it in two calls (e.g. "build ctest bench"
# then "build sanitizer nunit main": build is incremental on a machine that is still warm, a full build otherwise).
# Steps that need the build run it first when BUILD has none.
#
# Output: everything goes to WORK_DIR (default /tmp/shardwise-gpu-results); at the end summary.txt and
# cuda-bench.md are copied to OUT_DIR (default: $OUT if set, else gpu-results/) with every log packed into
# gpu-logs.tar.xz: three files, since the device tool brings back at most 8.
# Exit status: 0 when every step that ran passed, 1 otherwise.
set -uo pipefail
ROOT="$PWD"
BUNDLE_DIR="${BUNDLE_DIR:-$ROOT/gpu-bundle}"
OUT_DIR="${OUT_DIR:-${OUT:-$ROOT/gpu-results}}"
WORK_DIR="${WORK_DIR:-/tmp/shardwise-gpu-results}"
BUILD="${BUILD:-/tmp/shardwise-gpu-build}"
APP="/tmp/shardwise-gpu-app"
mkdir -p "$OUT_DIR" "$WORK_DIR"
STEPS=("$@")
((${#STEPS[@]})) || STEPS=(build ctest bench sanitizer nunit main)
for s in "${STEPS[@]}"; do
    case "$s" in build | ctest | ctest-cuda | bench | sanitizer | nunit | nunit-cuda | main) ;; *) echo "gpu-run.sh: unknown step '$s'" >&2; exit 2 ;; esac
done
log() { printf '==> %s\n' "$*" | tee -a "$WORK_DIR/summary.txt"; }
rc_all=0
T0=$SECONDS
# No ICU on the GPU machine's image is assumed: the .NET bundle runs with invariant globalization.
export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
DEADLINE_FLAG="$WORK_DIR/.deadline"
rm -f "$DEADLINE_FLAG"
# Kills every descendant of this script except the watchdog itself (the step in flight and its children).
kill_descendants() {
    local pid kids
    kids="$(ps -o pid= --ppid "$1" 2>/dev/null)"
    for pid in $kids; do
        [ "$pid" = "${WATCHDOG:-}" ] && continue
        kill_descendants "$pid"
        kill -KILL "$pid" 2>/dev/null
    done
}
# Native stacks (and the kernels on the GPU) of every test process still running, with cuda-gdb attached in batch mode:
# what a hang looks like from inside. Best effort, 40 s at most.
dump_stacks() {
    command -v cuda-gdb >/dev/null 2>&1 || return 0
    local pid
    for pid in $(pgrep -f 'Shardwise.Tests|nccl_check|cuda_check|cuda_bench|Shardwise.Bench' 2>/dev/null); do
        [ "$pid" = $$ ] && continue
        echo "==> stacks of $pid: $(tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | cut -c1-150)" >> "$WORK_DIR/summary.txt"
        timeout 40 cuda-gdb -q -batch -p "$pid" -ex 'set pagination off' -ex 'info cuda kernels' \
            -ex 'thread apply all bt 30' > "$WORK_DIR/stacks-$pid.log" 2>&1
        grep -E "^Thread|^#[0-9]+ .* in (sw|cu|nccl|cuda)[A-Za-z_:]*|Kernel|wait_flag" "$WORK_DIR/stacks-$pid.log" | head -60 >> "$WORK_DIR/summary.txt"
    done
}
# run_capped CAP CMD...: CMD with a time cap; 30 s before the cap the stacks of the test processes still running are
# written (a hang shows where it hangs), at the cap CMD is killed. CAP 0: no cap. Returns CMD's status (124 if killed).
run_capped() {
    local cap="$1" pid t=0 dumped=0
    shift
    if [ "$cap" -le 0 ]; then "$@"; return; fi
    "$@" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        t=$((t + 1))
        if [ "$dumped" = 0 ] && [ "$t" -ge $((cap - 30)) ]; then dumped=1; dump_stacks; t=$((t + 1)); fi
        if [ "$t" -ge "$cap" ]; then
            echo "==> capped at $cap s: killing $*" | cut -c1-200 >> "$WORK_DIR/summary.txt"
            kill_descendants "$pid"
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            return 124
        fi
    done
    wait "$pid"
}
if [ "${SW_GPU_DEADLINE:-0}" -gt 0 ]; then
    ( sleep "$SW_GPU_DEADLINE"; touch "$DEADLINE_FLAG"; echo "==> DEADLINE (${SW_GPU_DEADLINE} s) reached: killing the step in flight" >> "$WORK_DIR/summary.txt"
      WATCHDOG=$BASHPID kill_descendants $$ ) &
    WATCHDOG=$!
fi
# SW_GPU_STACKS_AT=S: dump the stacks of test processes still running S seconds after the start (before a deadline
# kills them), then go on.
if [ "${SW_GPU_STACKS_AT:-0}" -gt 0 ]; then
    ( sleep "$SW_GPU_STACKS_AT"; dump_stacks ) &
    STACKER=$!
fi

finish() {
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
    [ -n "${STACKER:-}" ] && kill "$STACKER" 2>/dev/null
    log "done in $((SECONDS - T0)) s: steps ${STEPS[*]}, exit status $rc_all"
    cp "$WORK_DIR/summary.txt" "$OUT_DIR/summary.txt" 2>/dev/null
    [ -f "$WORK_DIR/cuda-bench.md" ] && cp "$WORK_DIR/cuda-bench.md" "$OUT_DIR/cuda-bench.md"
    tar -C "$WORK_DIR" -cJf "$OUT_DIR/gpu-logs.tar.xz" . 2>/dev/null
    exit $rc_all
}

log "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader; nvcc --version | tail -2;
  cmake --version | head -1; } 2>&1 | tee -a "$WORK_DIR/summary.txt"

# NCCL lives in the Python environment there (nvidia-nccl): point Shardwise at it unless the caller did.
if [ -z "${SHARDWISE_NCCL_PATH:-}" ]; then
    nccl="$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null ||
            find / -name 'libnccl.so.2' -not -path '/proc/*' -not -path '/tmp/*' -not -path "$ROOT/*" -not -path '*fake_nccl*' \
                2>/dev/null | head -n1)" # never our own stand-in (build/.../fake_nccl/libnccl.so.2)
    [ -n "$nccl" ] && [ -e "$nccl" ] && export SHARDWISE_NCCL_PATH="$nccl"
fi
log "NCCL: ${SHARDWISE_NCCL_PATH:-not found}"

# On a Hopper GPU (compute capability 9.0) with an nvcc that builds sm_90a, the wgmma kernel must be available:
# cuda_check then fails instead of reporting it unavailable.
cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')"
nvcc_major="$(nvcc --version 2>/dev/null | grep -oE 'release [0-9]+' | grep -oE '[0-9]+' | head -n1)"
if [ "$cc" = "9.0" ] && [ "${nvcc_major:-0}" -ge 12 ]; then export SHARDWISE_EXPECT_WGMMA=1; fi
log "compute capability ${cc:-unknown}, nvcc ${nvcc_major:-?}: SHARDWISE_EXPECT_WGMMA=${SHARDWISE_EXPECT_WGMMA:-0}"

archs="${SW_GPU_ARCHS:-}"
if [ -z "$archs" ] && [ -n "$cc" ] && [ "$cc" != "[N/A]" ]; then
    archs="${cc/./}"
    [ "$cc" = "9.0" ] && [ "${nvcc_major:-0}" -ge 12 ] && archs="90;90a"
fi
log "plugin architectures: ${archs:-project default}"

step_build() {
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSHARDWISE_CUDA=ON ${archs:+"-DSHARDWISE_CUDA_ARCHITECTURES=$archs"} \
        > "$WORK_DIR/cmake.log" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc)" >> "$WORK_DIR/cmake.log" 2>&1 ||
        { tail -50 "$WORK_DIR/cmake.log" | tee -a "$WORK_DIR/summary.txt"; rc_all=1; finish; }
    grep -E "Shardwise: CUDA plugin" "$WORK_DIR/cmake.log" | tee -a "$WORK_DIR/summary.txt"
}

step_ctest() {
    ctest --test-dir "$BUILD" --output-on-failure > "$WORK_DIR/ctest.log" 2>&1 || rc_all=1
    grep -E "wgmma kernel:" "$WORK_DIR/ctest.log" | head -2 | tee -a "$WORK_DIR/summary.txt"
    tail -15 "$WORK_DIR/ctest.log" | tee -a "$WORK_DIR/summary.txt"
}

step_ctest-cuda() {
    run_capped "${SW_GPU_CTEST_TIMEOUT:-0}" ctest --test-dir "$BUILD" --output-on-failure \
        -R '^(cuda_check|nccl_check_gpu|cuda_bench_emulated)$' > "$WORK_DIR/ctest-cuda.log" 2>&1 || rc_all=1
    grep -E "wgmma kernel:" "$WORK_DIR/ctest-cuda.log" | head -2 | tee -a "$WORK_DIR/summary.txt"
    tail -12 "$WORK_DIR/ctest-cuda.log" | tee -a "$WORK_DIR/summary.txt"
}

# Issue 3's targets, full shapes. Exit 77: no CUDA device (skipped, as cuda_check); any other non-zero status is an
# API error or a failed verification of a benchmarked result.
step_bench() {
    if [ ! -x "$BUILD/bin/cuda_bench" ]; then
        rc_all=1
        log "cuda_bench not built ($BUILD/bin/cuda_bench missing)"
        return
    fi
    ${SW_GPU_BENCH_TIMEOUT:+timeout "$SW_GPU_BENCH_TIMEOUT"} "$BUILD/bin/cuda_bench" ${SW_GPU_BENCH_ARGS:-} --out "$WORK_DIR/cuda-bench.md" 2> "$WORK_DIR/cuda-bench.stderr.log" | tee -a "$WORK_DIR/summary.txt"
    local bench_rc=${PIPESTATUS[0]}
    if [ "$bench_rc" -eq 77 ]; then
        log "cuda_bench skipped (no CUDA device): $(tail -1 "$WORK_DIR/cuda-bench.stderr.log")"
    elif [ "$bench_rc" -ne 0 ]; then
        rc_all=1
        log "cuda_bench FAILED (exit $bench_rc):"
        tail -5 "$WORK_DIR/cuda-bench.stderr.log" | tee -a "$WORK_DIR/summary.txt"
    fi
}

step_sanitizer() {
    if ! command -v compute-sanitizer >/dev/null 2>&1 || [ ! -x "$BUILD/bin/cuda_check" ]; then
        log "compute-sanitizer or cuda_check missing: skipped"
        return
    fi
    local tool
    for tool in memcheck racecheck synccheck; do
        log "compute-sanitizer --tool $tool cuda_check"
 ${SW_GPU_SANITIZER_TIMEOUT:+timeout "$SW_GPU_SANITIZER_TIMEOUT"} compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD/bin/cuda_check" > "$WORK_DIR/sanitizer-$tool.log" 2>&1 || rc_all=1
        tail -3 "$WORK_DIR/sanitizer-$tool.log" | tee -a "$WORK_DIR/summary.txt"
    done
}

unpack_app() {
    [ -x "$APP/Shardwise.Tests" ] && return
    rm -rf "$APP" && mkdir -p "$APP" && tar -C "$APP" --strip-components=1 -xJf "$BUNDLE_DIR/shardwise-gpu-bundle.tar.xz"
}

step_nunit() {
    log "bundle $(cat "$BUNDLE_DIR/COMMIT" 2>/dev/null || true)"
    unpack_app
    (cd "$APP" && SHARDWISE_NATIVE_PATH="$BUILD/lib" ./Shardwise.Tests --report-trx --report-trx-filename tests.trx \
        --results-directory "$WORK_DIR" > "$WORK_DIR/tests.log" 2>&1) || rc_all=1
    grep -E "total:|failed:|succeeded:|skipped:" "$WORK_DIR/tests.log" | tee -a "$WORK_DIR/summary.txt"
}

# The CUDA fixtures in SW_GPU_NUNIT_BATCHES processes (default 3; classes from tests/*.cs, in order), each capped at
# SW_GPU_NUNIT_BATCH_TIMEOUT seconds (stacks 30 s before): a hang costs its batch, not the whole step.
step_nunit-cuda() {
    log "bundle $(cat "$BUNDLE_DIR/COMMIT" 2>/dev/null || true)"
    unpack_app
    local batches="${SW_GPU_NUNIT_BATCHES:-3}" i filter
    mapfile -t classes < <(python3 - "$ROOT" <<'PY'
import glob, os, re, sys
names = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "tests", "*.cs"))):
    s = open(f, encoding="utf-8").read()
    for m in re.finditer(r"\[TestFixture\(Backend\.Cuda", s):
        c = re.search(r"\bclass\s+(\w+)", s[m.end():])
        if c and c.group(1) not in names: names.append(c.group(1))
print("\n".join(names))
PY
)
    log "nunit-cuda: ${#classes[@]} classes with a CUDA fixture, $batches batches"
    for ((i = 0; i < batches; i++)); do
        filter=""
        local j
        for ((j = i; j < ${#classes[@]}; j += batches)); do
            filter+="${filter:+|}FullyQualifiedName~Shardwise.Tests.${classes[j]}"
        done
        [ -z "$filter" ] && continue
        log "nunit-cuda batch $i: $(echo "$filter" | sed 's/FullyQualifiedName~Shardwise.Tests.//g')"
        (cd "$APP" && SHARDWISE_NATIVE_PATH="$BUILD/lib" run_capped "${SW_GPU_NUNIT_BATCH_TIMEOUT:-0}" ./Shardwise.Tests \
            --filter "($filter)&FullyQualifiedName~Cuda" --report-trx --report-trx-filename "tests-cuda-$i.trx" \
            --results-directory "$WORK_DIR" > "$WORK_DIR/tests-cuda-$i.log" 2>&1) || rc_all=1
        grep -E "total:|failed:|succeeded:|skipped:" "$WORK_DIR/tests-cuda-$i.log" | tr '\n' ' ' | tee -a "$WORK_DIR/summary.txt"
        echo | tee -a "$WORK_DIR/summary.txt"
        grep -E "^failed |  failed " "$WORK_DIR/tests-cuda-$i.log" | head -20 | tee -a "$WORK_DIR/summary.txt"
        cp "$WORK_DIR/summary.txt" "$OUT_DIR/summary.txt" 2>/dev/null
    done
}

step_main() {
    unpack_app
    (cd "$APP" && SHARDWISE_NATIVE_PATH="$BUILD/lib" ./Shardwise.Bench main --backend cuda > "$WORK_DIR/main-cuda.log" 2>&1) ||
        rc_all=1
    tail -30 "$WORK_DIR/main-cuda.log" | tee -a "$WORK_DIR/summary.txt"
}

for s in "${STEPS[@]}"; do
    if [ -f "$DEADLINE_FLAG" ]; then log "step $s: skipped (deadline)"; rc_all=1; continue; fi
    if [ "$s" != build ] && [ ! -f "$BUILD/CMakeCache.txt" ]; then
        log "step build (needed by $s)"
        t=$SECONDS
        step_build
        log "step build: $((SECONDS - t)) s"
    fi
    log "step $s"
    t=$SECONDS
    "step_$s"
    log "step $s: $((SECONDS - t)) s (total $((SECONDS - T0)) s)"
    cp "$WORK_DIR/summary.txt" "$OUT_DIR/summary.txt" 2>/dev/null
done
finish
