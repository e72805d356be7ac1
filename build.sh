#!/usr/bin/env bash
# Shardwise build script: native core (CMake) + .NET libraries, tests, benchmarks and the main job.
# The one implementation of the commands below: build.ps1 (PowerShell) forwards to this script.
#
#   ./build.sh [run [args...]]     deps, native build, dotnet build, then the main job (bench exe `main`)
#   ./build.sh test [args...]      deps, native build + ctest, dotnet build, NUnit tests, then the TorchSharp
#                                  interop tests (tests/TorchSharp, a project outside the solution); prints one
#                                  line per suite (passed/failed/skipped, time), every failure in full, one line
#                                  counting the tests skipped for want of a GPU, and last
#                                  "N passed, N failed, N skipped" (NUnit + TorchSharp + ctest); the builds' and
#                                  the suites' whole output goes to build/test-results/logs/ (reports beside it);
#                                  args go to the test executable, e.g.
#                                  --filter 'FullyQualifiedName~Smoke'|'TestCategory=Fast' (--help lists all)
#   ./build.sh bench [args...]     deps, builds, then BenchmarkDotNet (bench exe `bench` + args),
#                                  e.g. --filter '*Gemm*' --job short, or --list flat; --help lists Shardwise's
#                                  benchmarks and the main job's options, then BenchmarkDotNet's options
#   ./build.sh bench-mp [N] [shm|tcp|mpi]  deps, builds, then the multi-process collective bandwidth report: N
#                                  ranks (default 2), one process each: a TCP group (shardwise launch) over
#                                  shared memory (shm, default: SHARDWISE_TRANSPORT=shm) or its sockets (tcp:
#                                  SHARDWISE_TRANSPORT=tcp), or an MPI group (mpi: mpirun); all-reduce, all-gather, reduce-scatter, 8 B x4 up to 64 MiB (the
#                                  last size is 32 MiB, as nccl-tests -b 8 -e 64M -f 4), with nccl-tests' size,
#                                  count, time, algbw and busbw (docs/distributed.md), then raw Open MPI's
#                                  collectives timed the same way (native/bench/mpi_baseline.c) and both side by
#                                  side (busbw ratio); last, ours and raw MPI in one mpirun job, interleaved
#                                  rounds, median of per-round ratios [10th, 90th percentile]
#                                  (native/bench/mpi_interleaved.c: the comparison that holds still);
#                                  SW_BW_MAX_BYTES (e.g. 1M), SW_BW_MIN_BYTES, SW_BW_ITERS (20), SW_BW_WARMUP (5),
#                                  SW_BW_IN_PLACE (1: the all-reduce in place), SW_BW_AGREEMENT (off: no
#                                  agreement check, sw_comm_set_agreement_check), SW_IL_ROUNDS (21), SW_IL_ITERS,
#                                  SHARDWISE_ALLREDUCE (auto, oneshot, twostep); then the FFN forward's step time
#                                  with and without ParallelFeedForward.OverlapChunks beside its all-reduce alone
#                                  (SW_OV_H 1024, SW_OV_F 4096, SW_OV_M 8,64,256,1024, SW_OV_CHUNKS 4, SW_OV_ROUNDS 15)
#   ./build.sh plan-validate [virtual|N...] [--quick] [--rounds R]  deps, builds, then the planner against the
#                                  hybrid-parallel example (docs/planner.md): for each target, `calibrate` writes
#                                  artifacts/cluster-cpu[-Np].json and `plan-validate` runs every mesh right after,
#                                  interleaved, predicted beside measured step time and memory; virtual (default):
#                                  8 virtual ranks in one process; N: N processes under `shardwise launch` (one rank
#                                  each, shared memory); e.g. ./build.sh plan-validate virtual 2 4 8
#   ./build.sh native              deps and the native library (CMake configure + build) only
#   ./build.sh fault-trials [N] [tcp|shm|mpi...]  deps, native build, then scripts/fault-trials.sh: N (default
#                                  20) kill and N freeze trials per kind (TCP sockets, shared memory, MPI) of a 3-rank job running collectives,
#                                  one rank SIGKILLed or SIGSTOPped at a random moment; checks no hang, the failed
#                                  rank named (and no live one), the failed-collective output contract; prints a
#                                  summary table (docs/testing.md); Linux only
#   ./build.sh asan [args...]      ASan+UBSan (-fsanitize=address,undefined -fno-sanitize-recover=all): the native
#                                  library and checks built into build/asan and run by ctest there, then the NUnit
#                                  suite against that library (LD_PRELOAD of the ASan runtime, SHARDWISE_NATIVE_PATH);
#                                  args go to the test executable (default: the whole suite); fails on any
#                                  sanitizer report (see docs/testing.md: what is left out and why)
#   ./build.sh fuzz [SECONDS]      libFuzzer over the C ABI (native/tests/fuzz/c_api_fuzz.c; clang-14 with
#                                  -fsanitize=fuzzer,address,undefined) for SECONDS (default 60) into build/fuzz;
#                                  the corpus is kept in build/fuzz/corpus, a failing input lands in build/fuzz/
#                                  (inputs in native/tests/fuzz/regressions are replayed first)
#   ./build.sh pack                deps, native build, NuGet packages Shardwise.Bindings, Shardwise.Parallel and
#                                  the launcher tool Shardwise.Launcher into artifacts/packages (native library
#                                  under runtimes/<rid>/native; the CUDA plugin as the build folder's SHARDWISE_CUDA
#                                  says, which pack prints), and a check of what each package contains; the version
#                                  is a new prerelease each time (<Version>-local.<UTC yyyyMMddHHmmss>) unless
#                                  SHARDWISE_VERSION is set
#   ./build.sh samples             pack, then the samples (each verifies its result, non-zero exit on mismatch):
#                                  PackageSample (restores exactly the version just packed), AotSample
#                                  (NativeAOT publish, zero trim/AOT warnings allowed, then runs the executable),
#                                  PInvokeSample (the C ABI through its own LibraryImport declarations), and the
#                                  end-to-end example examples/TrainTransformer (trains, checkpoints, reloads at
#                                  another rank count, trains on; loss curve in artifacts/samples/train-loss.svg)
#   ./build.sh gpu-bundle [OUT]    self-contained test + bench bundle for a CUDA machine without .NET
#                                  (OUT/shardwise-gpu-bundle.tar.xz + OUT/gpu-run.sh; default OUT gpu-bundle/)
#   ./build.sh cuda12-check        compile check of the CUDA plugin with CUDA 12 (Debian trixie's packages,
#                                  extracted into ~/.cache/shardwise/cuda12, not installed) for sm_80, sm_90 and
#                                  sm_90a; exit 77 (skipped) when the toolkit cannot be downloaded
#   ./build.sh deps                install missing system packages only
#   ./build.sh clean               remove build outputs
#   ./build.sh help                this list
#
# Environment:
#   CONFIGURATION        Release (default) or Debug: dotnet configuration and CMAKE_BUILD_TYPE
#   SHARDWISE_BUILD_DIR  CMake build folder (default build/native); the library lands in DIR/lib
#   SHARDWISE_CUDA       ON, OFF or AUTO: build the CUDA plugin (ON fails without a CUDA toolkit). Unset: the build
#                        folder keeps the choice recorded at its first configure (a new folder: AUTO, decided then
#                        by whether nvcc is found, and recorded as ON or OFF); no later command changes it
#   SHARDWISE_JOBS       parallel native build jobs (default: number of cores)
#   SHARDWISE_SKIP_DEPS  set to 1 to skip the dependency check/install step
#   SHARDWISE_INSTALL_CUDA  set to 1 to let the deps step install Debian's CUDA toolkit (nvidia-cuda-toolkit,
#                        from contrib/non-free) and clang-14 when nvcc is missing, so that the CUDA plugin is
#                        compiled even without a GPU (.ci/run sets it)
#   SHARDWISE_CTEST_TIMEOUT  per native check timeout in seconds (default 900)
#   SHARDWISE_VERSION    package version for pack/samples (default: Version in Directory.Build.props followed by
#                        -local.<UTC timestamp>, new at every pack)
#   SHARDWISE_REPOSITORY_URL  repository URL written into the packages (default: none; the project has no public
#                        address yet)
#   SHARDWISE_SKIP_TORCHSHARP  set to 1 to leave out the TorchSharp interop tests (their restore downloads libtorch)
#   SHARDWISE_BASH       build.ps1 only: the bash it forwards to (default: Git for Windows' bash, then WSL, on
#                        Windows; the bash on PATH elsewhere)
set -euo pipefail

# Work from the repository root whatever the caller's cwd.
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"

# ------------------------------------------------------------------------------------------ settings
CONFIGURATION="${CONFIGURATION:-Release}"
BUILD_DIR="${SHARDWISE_BUILD_DIR:-build/native}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
JOBS="${SHARDWISE_JOBS:-$(nproc 2>/dev/null || echo 2)}"
RESULTS_DIR="$ROOT/build/test-results"
LOG_DIR="$RESULTS_DIR/logs"
SOLUTION="$ROOT/Shardwise.slnx"
TEST_PROJECT="$ROOT/tests/Shardwise.Tests.csproj"
TORCH_TEST_PROJECT="$ROOT/tests/TorchSharp/Shardwise.TorchSharp.Tests.csproj"
BENCH_PROJECT="$ROOT/bench/Shardwise.Bench.csproj"
PACKAGES_DIR="$ROOT/artifacts/packages"
# The package sample's own global packages folder (samples/PackageSample/nuget.config): pack empties it of
# Shardwise packages so that an earlier package of the same version can never be what the sample runs.
SAMPLE_PACKAGES_DIR="$ROOT/artifacts/sample-packages"
SAMPLES_OUT="$ROOT/artifacts/samples"
PACKED_PROJECTS=("$ROOT/src/Bindings/Shardwise.Bindings.csproj" "$ROOT/src/Parallel/Shardwise.Parallel.csproj"
    "$ROOT/src/Launcher/Shardwise.Launcher.csproj")
case "${SHARDWISE_CUDA:-}" in
    "" | ON | OFF | AUTO) ;;
    *) printf "build.sh: error: SHARDWISE_CUDA must be ON, OFF or AUTO (got '%s')\n" "$SHARDWISE_CUDA" >&2; exit 2 ;;
esac

# Where MSBuild looks for libshardwise (Directory.Build.props reads this variable). Exported so that it
# also reaches the projects BenchmarkDotNet builds in child processes.
export SHARDWISE_NATIVE_DIR="$BUILD_DIR/lib"
# Quiet, non-interactive .NET CLI.
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
export DOTNET_CLI_UI_LANGUAGE=en

# System packages the build needs (Debian names). OpenBLAS is the reference BLAS for checks/benchmarks.
# NativeAOT (samples) links with clang or, when clang is absent, gcc (its documented alternative) and strips
# symbols with objcopy (binutils); zlib and brotli come as static libraries in the NativeAOT runtime pack, so no
# zlib1g-dev is needed. unzip lists the packages' contents for the pack check.
# Open MPI: the MPI plugin (libshardwise_mpi) and the multi-process tests (mpirun).
# oneDNN (libdnnl-dev: libdnnl.so.2): the baseline of the bf16 GEMM benchmarks (and of fp32 beside OpenBLAS), loaded by
# the benchmarks at run time only; nothing links against it.
APT_PACKAGES=(cmake make g++ gcc binutils libopenblas0-pthread libopenblas-dev unzip libopenmpi-dev openmpi-bin libdnnl-dev)

step() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when root, else through sudo (dies naming WHAT when there is no sudo).
as_root() {
    local what="$1"
    shift
    if [[ "$(id -u)" -eq 0 ]]; then "$@"; return; fi
    command -v sudo >/dev/null 2>&1 || die "$what: not root (no sudo)"
    sudo "$@"
}
# apt_get WHAT ARGS...: apt-get, quiet and non-interactive, as root.
apt_get() {
    local what="$1"
    shift
    command -v apt-get >/dev/null 2>&1 || die "$what needs apt-get (Debian)"
    as_root "$what" env DEBIAN_FRONTEND=noninteractive apt-get -qq "$@"
}

# ------------------------------------------------------------------------------------------ deps
# Idempotent: checks first, runs apt-get (update + install) only when something is missing.
deps() {
    [[ "${SHARDWISE_SKIP_DEPS:-0}" == 1 ]] && return 0
    step "dependencies"
    local missing=() pkg
    if command -v dpkg-query >/dev/null 2>&1; then
        for pkg in "${APT_PACKAGES[@]}"; do
            if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
                missing+=("$pkg")
            fi
        done
    fi
    if ((${#missing[@]})); then
        step "installing ${missing[*]}"
        apt_get "missing packages (${missing[*]})" update
        apt_get "missing packages (${missing[*]})" install -y --no-install-recommends "${missing[@]}"
    fi
    cuda_deps
    local tool
    for tool in cmake ctest c++; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install: ${APT_PACKAGES[*]})"
    done
    # The .NET SDK is not in Debian's archive: it must already be on PATH (global.json asks for 10.0+).
    command -v dotnet >/dev/null 2>&1 || die "'dotnet' not found: install the .NET 10 SDK"
    local sdk
    sdk="$(dotnet --version 2>/dev/null)" || die "no .NET SDK matching global.json (need 10.0 or later)"
    [[ "${sdk%%.*}" -ge 10 ]] || die ".NET SDK $sdk is too old (need 10.0 or later)"
}

# ------------------------------------------------------------------------------------------ CUDA toolkit (opt-in)
# SHARDWISE_INSTALL_CUDA=1 and no nvcc: install Debian's nvidia-cuda-toolkit (contrib/non-free; the archive
# source is added unless some source already has both components) and clang-14, which CMakeLists.txt uses as
# nvcc 11.8's host compiler (it rejects g++ 12). No GPU or driver is needed to compile. Idempotent.
CUDA_APT_SOURCE=/etc/apt/sources.list.d/shardwise-cuda.sources
cuda_deps() {
    [[ "${SHARDWISE_INSTALL_CUDA:-0}" == 1 ]] || return 0
    if command -v nvcc >/dev/null 2>&1; then
        # Present. nvcc 11.x also needs clang-14 (see above); 12 and later take the system g++.
        command -v clang++-14 >/dev/null 2>&1 && return 0
        [[ "$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\)\..*/\1/p')" -ge 12 ]] 2>/dev/null && return 0
    fi
    step "CUDA toolkit (SHARDWISE_INSTALL_CUDA=1): nvidia-cuda-toolkit, clang-14"
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    # A source line (one-line or deb822 "Components:") that names both contrib and non-free?
    if ! ((${#files[@]})) || ! awk '!/^[ \t]*#/ && /(^|[ \t])contrib([ \t]|$)/ && /(^|[ \t])non-free([ \t]|$)/ { found = 1 }
                                   END { exit !found }' "${files[@]}"; then
        local id="" codename=""
        if [[ -r /etc/os-release ]]; then
            id="$(. /etc/os-release && echo "${ID:-}")"
            codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
        fi
        # Debian only (elsewhere, e.g. Ubuntu's multiverse, the package's component is left to the system).
        if [[ "$id" == debian && -n "$codename" ]]; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$codename" "$codename" | as_root SHARDWISE_INSTALL_CUDA=1 tee "$CUDA_APT_SOURCE" >/dev/null
        fi
    fi
    apt_get SHARDWISE_INSTALL_CUDA=1 update
    local pkgs=(nvidia-cuda-toolkit)
    # clang-14 only where the archive has it (newer releases ship an nvcc that accepts their g++).
    if apt-cache show clang-14 >/dev/null 2>&1; then pkgs+=(clang-14); fi
    apt_get SHARDWISE_INSTALL_CUDA=1 install -y --no-install-recommends "${pkgs[@]}"
    command -v nvcc >/dev/null 2>&1 || die "SHARDWISE_INSTALL_CUDA=1: nvcc still missing after installing ${pkgs[*]}"
}

# ------------------------------------------------------------------------------------------ native
# The CUDA plugin is built or not as the build folder recorded at its first configure (CMakeLists.txt: AUTO is decided
# once and written back as ON or OFF); SHARDWISE_CUDA, when set, is passed on and becomes the new record.
native_build() {
    local cuda=()
    [[ -z "${SHARDWISE_CUDA:-}" ]] || cuda=("-DSHARDWISE_CUDA=$SHARDWISE_CUDA")
    step "native: configure ($CONFIGURATION${SHARDWISE_CUDA:+, SHARDWISE_CUDA=$SHARDWISE_CUDA}) in ${BUILD_DIR#"$ROOT"/}"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$CONFIGURATION" "${cuda[@]}"
    step "native: build (CUDA plugin: $(cuda_choice))"
    cmake --build "$BUILD_DIR" --config "$CONFIGURATION" -j "$JOBS"
}

# The build folder's recorded SHARDWISE_CUDA (ON or OFF; AUTO only if the folder predates the record).
cuda_choice() {
    sed -n 's/^SHARDWISE_CUDA:STRING=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null | head -n1
}

# logged NAME COMMAND...: runs COMMAND (a shell function or a program) with its whole output in $LOG_DIR/NAME.log
# instead of on the terminal (./build.sh test); on failure shows its error lines (or its last lines) and the log.
logged() {
    local name="$1" log="$LOG_DIR/$1.log" rc
    shift
    mkdir -p "$LOG_DIR"
    set +e
    (set -e; "$@") >"$log" 2>&1
    rc=$?
    set -e
    ((rc != 0)) || return 0
    printf 'build.sh: %s failed (exit code %d); from %s:\n' "$name" "$rc" "${log#"$ROOT"/}" >&2
    { grep -E '(: error|error:|Error:|CMake Error|FAILED)' "$log" | head -n 60 || true; } >&2
    grep -qE '(: error|error:|Error:|CMake Error|FAILED)' "$log" || tail -n 40 "$log" >&2
    return "$rc"
}

# Counts "passed failed skipped" in a CTest JUnit report. Per test case: status run = passed, fail =
# failed, disabled = skipped, notrun = skipped when CTest skipped it on purpose (SKIP_RETURN_CODE /
# SKIP_REGULAR_EXPRESSION), failed otherwise (e.g. "Unable to find executable").
ctest_counts() {
    awk '
        function flush() { if (pending) { f++; pending = 0 } }
        /<testcase / {
            flush()
            st = ""
            if (match($0, /status="[a-z]*"/)) st = substr($0, RSTART + 8, RLENGTH - 9)
            if (st == "run") p++
            else if (st == "fail") f++
            else if (st == "disabled") s++
            else pending = 1
            next
        }
        pending && /<skipped / { if ($0 ~ /message="SKIP_/) s++; else f++; pending = 0 }
        END { flush(); printf "%d %d %d\n", p, f, s }
    ' "$1"
}

CTEST_PASSED=0 CTEST_FAILED=0 CTEST_SKIPPED=0 CTEST_RC=0 CTEST_SECONDS=0
native_checks() {
    step "native checks (ctest; output: ${LOG_DIR#"$ROOT"/}/ctest.log)"
    mkdir -p "$LOG_DIR"
    local junit="$RESULTS_DIR/ctest-junit.xml" start=$SECONDS
    rm -f "$junit"
    set +e
    ctest --test-dir "$BUILD_DIR" -C "$CONFIGURATION" --output-on-failure \
        --timeout "${SHARDWISE_CTEST_TIMEOUT:-900}" --output-junit "$junit" >"$LOG_DIR/ctest.log" 2>&1
    CTEST_RC=$?
    set -e
    CTEST_SECONDS=$((SECONDS - start))
    if [[ -f "$junit" ]]; then
        read -r CTEST_PASSED CTEST_FAILED CTEST_SKIPPED < <(ctest_counts "$junit")
    fi
    # ctest failed without a report (or the report shows nothing wrong): count the run as one failure.
    if [[ $CTEST_RC -ne 0 && $CTEST_FAILED -eq 0 ]]; then CTEST_FAILED=1; fi
}

# ------------------------------------------------------------------------------------------ dotnet
dotnet_build() {
    step "dotnet build ($CONFIGURATION)"
    # -nodeReuse:false: no MSBuild worker processes outlive the build (they would hold a pipe open).
    dotnet build "$SOLUTION" -c "$CONFIGURATION" -nologo -nodeReuse:false -v:minimal
}

# Path of a project's built assembly (asks MSBuild, so a TargetFramework change is followed).
target_path() {
    dotnet msbuild "$1" -nologo -nodeReuse:false -getProperty:TargetPath -p:Configuration="$CONFIGURATION"
}

# Reads one numeric attribute of the <Counters .../> element of a TRX file (0 when absent).
trx_counter() {
    local value
    value="$(grep -o '<Counters [^>]*>' "$1" | head -n1 | grep -o " $2=\"[0-9]*\"" | grep -o '[0-9][0-9]*' || true)"
    echo "${value:-0}"
}

# Runs a Microsoft.Testing.Platform test executable (DLL) with a TRX report in DIR/NAME plus the given arguments;
# sets MTP_RC (its exit code), MTP_SECONDS and MTP_PASSED / MTP_FAILED / MTP_SKIPPED from the report's counters
# (passed; failed + error + timeout + aborted; notExecuted = skipped/ignored), 0 without a report. With MTP_LOG set,
# the executable's output goes to that file instead of the terminal.
run_mtp() {
    local test_dll="$1" trx_dir="$2" trx_name="$3" start=$SECONDS
    shift 3
    rm -rf "$trx_dir"
    mkdir -p "$trx_dir"
    set +e
    if [[ -n "${MTP_LOG:-}" ]]; then
        mkdir -p "$(dirname "$MTP_LOG")"
        dotnet "$test_dll" --results-directory "$trx_dir" --report-trx --report-trx-filename "$trx_name" "$@" >"$MTP_LOG" 2>&1
    else
        dotnet "$test_dll" --results-directory "$trx_dir" --report-trx --report-trx-filename "$trx_name" "$@"
    fi
    MTP_RC=$?
    set -e
    MTP_SECONDS=$((SECONDS - start))
    MTP_PASSED=0 MTP_FAILED=0 MTP_SKIPPED=0
    local trx="$trx_dir/$trx_name"
    if [[ -f "$trx" ]]; then
        MTP_PASSED=$(trx_counter "$trx" passed)
        MTP_FAILED=$(($(trx_counter "$trx" failed) + $(trx_counter "$trx" error) +
            $(trx_counter "$trx" timeout) + $(trx_counter "$trx" aborted)))
        MTP_SKIPPED=$(trx_counter "$trx" notExecuted)
    fi
}

NUNIT_PASSED=0 NUNIT_FAILED=0 NUNIT_SKIPPED=0 NUNIT_RC=0 NUNIT_SECONDS=0
nunit_tests() {
    local test_dll trx_dir="$RESULTS_DIR/nunit" trx_name="nunit.trx"
    test_dll="$(target_path "$TEST_PROJECT")"
    [[ -f "$test_dll" ]] || die "test assembly not found: $test_dll"

    # Informational options (help, listing): run them as they are, without counting.
    local arg
    for arg in "$@"; do
        case "$arg" in
            -\? | -h | --help | --info | --list-tests) dotnet "$test_dll" "$@"; exit $? ;;
        esac
    done

    step "NUnit tests (Microsoft.Testing.Platform; output: ${LOG_DIR#"$ROOT"/}/nunit.log)"
    MTP_LOG="$LOG_DIR/nunit.log" run_mtp "$test_dll" "$trx_dir" "$trx_name" "$@"
    NUNIT_RC=$MTP_RC NUNIT_PASSED=$MTP_PASSED NUNIT_FAILED=$MTP_FAILED NUNIT_SKIPPED=$MTP_SKIPPED NUNIT_SECONDS=$MTP_SECONDS
    # Exit codes (Microsoft.Testing.Platform): 0 ok, 2 failed tests, 8 no test ran (e.g. a filter that
    # matches nothing), others = the run itself failed. A failure without failed tests counts as one.
    if [[ $NUNIT_RC -ne 0 && $NUNIT_FAILED -eq 0 && $NUNIT_RC -ne 8 ]]; then NUNIT_FAILED=1; fi
    if [[ $NUNIT_RC -eq 8 ]]; then echo "build.sh: the test executable ran no test (filter matched nothing?)" >&2; fi
}

# suite_line NAME PASSED FAILED SKIPPED SECONDS REPORT LOG: one line of the test report (paths under build/test-results).
suite_line() {
    printf '  %-20s %4d passed, %d failed, %3d skipped  %5d s  (%s, %s)\n' "$@"
}

# Every failure in full and the skipped tests grouped by reason, read from the suites' reports and logs by
# scripts/test-report.cs (a .NET file-based program; `dotnet run` builds it once and caches it). Its trouble never
# changes the counts or the exit code, which come from the reports above.
test_report() {
    local args=(--results "$RESULTS_DIR"
        --trx "NUnit" "$RESULTS_DIR/nunit/nunit.trx" "$NUNIT_RC" "$LOG_DIR/nunit.log"
        --junit "ctest" "$RESULTS_DIR/ctest-junit.xml" "$CTEST_RC" "$LOG_DIR/ctest.log")
    ((TORCH_RAN == 0)) || args+=(--trx "TorchSharp" "$RESULTS_DIR/torchsharp/torchsharp.trx" "$TORCH_RC" "$LOG_DIR/torchsharp.log")
    dotnet run --file "$ROOT/scripts/test-report.cs" -c Release -v:q -- "${args[@]}" 2>"$LOG_DIR/test-report.log" ||
        echo "  (the failure/skip report could not be made: ${LOG_DIR#"$ROOT"/}/test-report.log; the logs above have everything)"
}

# ------------------------------------------------------------------------------------------ packages
# Every pack has its own version (SHARDWISE_VERSION, else Version of Directory.Build.props + -local.<UTC time>), so
# that a package of an earlier pack left in a NuGet cache can never stand in for this one.
PACKAGE_VERSION=""
pack_packages() {
    local base
    base="$(sed -n 's:.*<Version Condition="[^"]*">\([^<]*\)</Version>.*:\1:p' "$ROOT/Directory.Build.props" | head -n1)"
    [[ -n "$base" ]] || die "pack: no <Version> in Directory.Build.props"
    PACKAGE_VERSION="${SHARDWISE_VERSION:-$base-local.$(date -u +%Y%m%d%H%M%S)}"
    local cuda
    cuda="$(cuda_choice)"
    step "pack ($CONFIGURATION, version $PACKAGE_VERSION, CUDA plugin: $(cuda_plugin_text "$cuda")) into ${PACKAGES_DIR#"$ROOT"/}"
    mkdir -p "$PACKAGES_DIR"
    rm -f "$PACKAGES_DIR"/Shardwise.*.nupkg "$PACKAGES_DIR"/Shardwise.*.snupkg
    rm -rf "$SAMPLE_PACKAGES_DIR"/shardwise.*
    local args=(-c "$CONFIGURATION" -o "$PACKAGES_DIR" -nologo -nodeReuse:false -v:minimal "-p:Version=$PACKAGE_VERSION") project
    for project in "${PACKED_PROJECTS[@]}"; do
        dotnet pack "$project" "${args[@]}"
    done
    check_packages "$cuda"
    step "pack: Shardwise.Bindings, Shardwise.Parallel and Shardwise.Launcher $PACKAGE_VERSION; CUDA plugin $(cuda_plugin_text "$cuda")"
}

cuda_plugin_text() {
    case "$1" in
        ON) echo "included (SHARDWISE_CUDA=ON)" ;;
        OFF) echo "not included (SHARDWISE_CUDA=OFF; SHARDWISE_CUDA=ON ./build.sh pack includes it, or fails without a CUDA toolkit)" ;;
        *) echo "unknown (SHARDWISE_CUDA='$1' in ${BUILD_DIR#"$ROOT"/}/CMakeCache.txt)" ;;
    esac
}

# check_packages CUDA: fails unless the packages hold what a consumer needs: assemblies with XML docs, the README, the
# licence expression, the native library under runtimes/<rid>/native with the CUDA plugin exactly when CUDA is ON,
# and the launcher as a .NET tool.
check_packages() {
    step "pack: checking the packages' contents"
    local bindings="$PACKAGES_DIR/Shardwise.Bindings.$PACKAGE_VERSION.nupkg" rid
    local parallel="$PACKAGES_DIR/Shardwise.Parallel.$PACKAGE_VERSION.nupkg"
    local launcher="$PACKAGES_DIR/Shardwise.Launcher.$PACKAGE_VERSION.nupkg"
    [[ -f "$bindings" && -f "$parallel" && -f "$launcher" ]] || die "pack: packages of version $PACKAGE_VERSION missing in $PACKAGES_DIR"
    case "$(uname -m)" in x86_64 | amd64) rid=linux-x64 ;; aarch64 | arm64) rid=linux-arm64 ;; *) rid="linux-$(uname -m)" ;; esac
    local plugin="runtimes/$rid/native/libshardwise_cuda.so"
    check_package "$bindings" README.md lib/net10.0/Shardwise.Bindings.dll lib/net10.0/Shardwise.Bindings.xml "runtimes/$rid/native/libshardwise.so"
    if [[ "$1" == ON ]]; then
        check_package "$bindings" "$plugin" >/dev/null
    elif unzip -Z1 "$bindings" | grep -qxF "$plugin"; then
        die "pack: $(basename "$bindings") holds $plugin although the build's SHARDWISE_CUDA is '$1'"
    fi
    check_package "$parallel" README.md lib/net10.0/Shardwise.Parallel.dll lib/net10.0/Shardwise.Parallel.xml
    unzip -p "$parallel" '*.nuspec' | grep -qF "<dependency id=\"Shardwise.Bindings\" version=\"$PACKAGE_VERSION\"" ||
        die "pack: $(basename "$parallel") does not depend on Shardwise.Bindings $PACKAGE_VERSION"
    check_package "$launcher" README.md tools/net10.0/any/shardwise.dll tools/net10.0/any/DotnetToolSettings.xml
    unzip -p "$launcher" '*.nuspec' | grep -qF '<packageType name="DotnetTool"' ||
        die "pack: $(basename "$launcher") is not a .NET tool package"
}

# check_package NUPKG ENTRY...: every entry is in the package; its nuspec has the licence and the readme.
check_package() {
    local pkg="$1" listing nuspec entry
    shift
    listing="$(unzip -Z1 "$pkg")" || die "pack: cannot read $pkg"
    nuspec="$(unzip -p "$pkg" '*.nuspec')" || die "pack: no nuspec in $pkg"
    for entry in "$@"; do
        grep -qxF "$entry" <<<"$listing" || die "pack: $(basename "$pkg") lacks $entry"
    done
    grep -qF '<license type="expression">MIT</license>' <<<"$nuspec" || die "pack: $(basename "$pkg") has no MIT licence expression"
    grep -qF '<readme>README.md</readme>' <<<"$nuspec" || die "pack: $(basename "$pkg") names no README"
    echo "  $(basename "$pkg"): $(grep -E '^(README.md|lib/|runtimes/|tools/[^/]*/[^/]*/(shardwise.dll|DotnetToolSettings.xml))' <<<"$listing" | tr '\n' ' ')"
}

# ------------------------------------------------------------------------------------------ samples
# Runs a command with the native-library override removed, so that each sample loads the library it ships with.
run_sample() { env -u SHARDWISE_NATIVE_PATH "$@"; }

sample_package() {
    local project="$ROOT/samples/PackageSample/PackageSample.csproj" out
    step "sample: PackageSample (Shardwise.Parallel $PACKAGE_VERSION from ${PACKAGES_DIR#"$ROOT"/})"
    # --force: resolve the packages again even if the last restore succeeded (pack has just replaced them).
    dotnet build "$project" -c "$CONFIGURATION" --force -nologo -nodeReuse:false -v:minimal "--property:ShardwiseVersion=$PACKAGE_VERSION"
    out="$(dirname "$(target_path "$project")")"
    # What the sample runs must be what was just built and packed, not a copy cached from an earlier pack.
    local rid_dir
    rid_dir="$(ls -d "$out"/runtimes/*/native 2>/dev/null | head -n1)"
    [[ -n "$rid_dir" ]] || die "PackageSample: no runtimes/<rid>/native folder in $out (the package's native library did not arrive)"
    cmp -s "$BUILD_DIR/lib/libshardwise.so" "$rid_dir/libshardwise.so" ||
        die "PackageSample: $rid_dir/libshardwise.so differs from the library just built"
    local dll
    for dll in Shardwise.Bindings Shardwise.Parallel; do
        cmp -s "$ROOT/src/${dll#Shardwise.}/bin/$CONFIGURATION/net10.0/$dll.dll" "$out/$dll.dll" ||
            die "PackageSample: $dll.dll differs from the assembly just packed"
    done
    run_sample dotnet "$out/PackageSample.dll" || die "PackageSample failed (exit code $?)"
}

sample_aot() {
    local project="$ROOT/samples/AotSample/AotSample.csproj" out="$SAMPLES_OUT/AotSample" log
    step "sample: AotSample (NativeAOT publish; trim/AOT warnings are errors)"
    rm -rf "$out"
    log="$(mktemp)"
    set +e
    dotnet publish "$project" -c "$CONFIGURATION" -o "$out" -nologo -nodeReuse:false -v:minimal 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    local warnings
    warnings="$(grep -cE 'warning [A-Z]+[0-9]+' "$log" || true)"
    rm -f "$log"
    ((rc == 0)) || die "AotSample: publish failed (exit code $rc)"
    ((warnings == 0)) || die "AotSample: publish reported $warnings warning(s)"
    echo "  AotSample: published with 0 warnings: $(du -h "$out/AotSample" | cut -f1) executable"
    run_sample "$out/AotSample" || die "AotSample failed (exit code $?)"
}

# The end-to-end example (examples/TrainTransformer): a fresh console project on the packed packages and OxyPlot from
# the package feed, trained on 2 virtual ranks, checkpointed, reloaded on 3 and trained on; it exits non-zero unless
# the loss fell below half and the reload kept the evaluation loss. Its loss curve: artifacts/samples/train-loss.svg.
sample_train() {
    local project="$ROOT/examples/TrainTransformer/TrainTransformer.csproj" out
    step "example: TrainTransformer (Shardwise.Parallel $PACKAGE_VERSION from ${PACKAGES_DIR#"$ROOT"/}, OxyPlot from the feed)"
    dotnet build "$project" -c "$CONFIGURATION" --force -nologo -nodeReuse:false -v:minimal "--property:ShardwiseVersion=$PACKAGE_VERSION"
    out="$(dirname "$(target_path "$project")")"
    mkdir -p "$SAMPLES_OUT"
    run_sample dotnet "$out/TrainTransformer.dll" 60 "$SAMPLES_OUT/train-loss.svg" || die "TrainTransformer failed (exit code $?)"
}

sample_pinvoke() {
    local project="$ROOT/samples/PInvokeSample/PInvokeSample.csproj" out
    step "sample: PInvokeSample (the C ABI through its own LibraryImport declarations)"
    dotnet build "$project" -c "$CONFIGURATION" -nologo -nodeReuse:false -v:minimal
    out="$(dirname "$(target_path "$project")")"
    run_sample dotnet "$out/PInvokeSample.dll" || die "PInvokeSample failed (exit code $?)"
}

# The TorchSharp interop tests: a separate project (not in the solution, so that the main build does not download
# libtorch), built and run after the main suite with the same arguments; its counts join the totals. Where libtorch
# cannot load (libstdc++ without GLIBCXX_3.4.32) its tests report Ignored (skipped).
TORCH_PASSED=0 TORCH_FAILED=0 TORCH_SKIPPED=0 TORCH_RC=0 TORCH_SECONDS=0 TORCH_RAN=0
torchsharp_tests() {
    [[ "${SHARDWISE_SKIP_TORCHSHARP:-0}" == 1 ]] && return 0
    TORCH_RAN=1
    local trx_dir="$RESULTS_DIR/torchsharp" trx_name="torchsharp.trx" test_dll
    step "TorchSharp interop tests: build (output: ${LOG_DIR#"$ROOT"/}/torchsharp-build.log)"
    if ! logged torchsharp-build dotnet build "$TORCH_TEST_PROJECT" -c "$CONFIGURATION" -nologo -nodeReuse:false -v:minimal; then
        echo "build.sh: the TorchSharp interop tests did not build" >&2
        TORCH_FAILED=1 TORCH_RC=1
        return 0
    fi
    test_dll="$(target_path "$TORCH_TEST_PROJECT")"
    step "TorchSharp interop tests (Microsoft.Testing.Platform; output: ${LOG_DIR#"$ROOT"/}/torchsharp.log)"
    MTP_LOG="$LOG_DIR/torchsharp.log" run_mtp "$test_dll" "$trx_dir" "$trx_name" "$@"
    TORCH_RC=$MTP_RC TORCH_PASSED=$MTP_PASSED TORCH_FAILED=$MTP_FAILED TORCH_SKIPPED=$MTP_SKIPPED TORCH_SECONDS=$MTP_SECONDS
    # As for the main suite: 8 = no test ran (a filter for the main suite may match nothing here), not a failure.
    if [[ $TORCH_RC -eq 8 ]]; then TORCH_RC=0; fi
    if [[ $TORCH_RC -ne 0 && $TORCH_FAILED -eq 0 ]]; then TORCH_FAILED=1; fi
}

# ------------------------------------------------------------------------------------------ sanitizers
# Flags of the sanitized builds: every report is fatal (halt, non-zero exit) so that ctest and NUnit see it.
SAN_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# clang-14 with its sanitizer and libFuzzer runtimes (Debian: clang-14, libclang-rt-14-dev).
fuzz_deps() {
    local rt
    rt="$(clang-14 -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || true)"
    if command -v clang-14 >/dev/null 2>&1 && [[ -f "$rt" ]]; then return 0; fi
    [[ "${SHARDWISE_SKIP_DEPS:-0}" == 1 ]] && die "fuzz needs clang-14 and libFuzzer (Debian: apt-get install clang-14 libclang-rt-14-dev)"
    step "installing clang-14 libclang-rt-14-dev (libFuzzer, sanitizer runtimes)"
    apt_get "fuzz: clang-14/libclang-rt-14-dev missing;" update
    apt_get "fuzz: clang-14/libclang-rt-14-dev missing;" install -y --no-install-recommends clang-14 libclang-rt-14-dev
}

cmd_fuzz() {
    local seconds="${1:-60}"
    [[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "fuzz: SECONDS must be a positive whole number, got '$seconds' (usage: ./build.sh fuzz [SECONDS])"
    (($# <= 1)) || die "fuzz: too many arguments (usage: ./build.sh fuzz [SECONDS])"
    deps
    fuzz_deps
    local dir="$ROOT/build/fuzz" flags="$SAN_FLAGS -fsanitize=fuzzer-no-link"
    step "fuzz: configure (clang-14, ASan+UBSan, libFuzzer) in ${dir#"$ROOT"/}"
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
        "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" -DSHARDWISE_FUZZ=ON -DSHARDWISE_NATIVE_TESTS=OFF \
        -DSHARDWISE_CUDA=OFF -DSHARDWISE_MPI=OFF
    step "fuzz: build c_api_fuzz"
    cmake --build "$dir" --target c_api_fuzz -j "$JOBS"
    mkdir -p "$dir/corpus"
    # Inputs that once broke an invariant (native/tests/fuzz/regressions) run first, once each.
    step "fuzz: replay native/tests/fuzz/regressions"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
        "$dir/bin/c_api_fuzz" "$ROOT"/native/tests/fuzz/regressions/*
    step "fuzz: c_api_fuzz for $seconds s (corpus ${dir#"$ROOT"/}/corpus)"
    # detect_leaks: LeakSanitizer runs at exit; every object a fuzz input makes is destroyed before the next.
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
        "$dir/bin/c_api_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=60 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$dir/" "$dir/corpus"
}

ASAN_BUILD_DIR="$ROOT/build/asan"
cmd_asan() {
    deps
    step "asan: configure (ASan+UBSan) in ${ASAN_BUILD_DIR#"$ROOT"/}"
    # The CUDA plugin is left out (nvcc does not take these flags; it is compile-checked by the normal build).
    cmake -S "$ROOT" -B "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_C_FLAGS=$SAN_FLAGS" \
        "-DCMAKE_CXX_FLAGS=$SAN_FLAGS" -DSHARDWISE_CUDA=OFF
    step "asan: build"
    cmake --build "$ASAN_BUILD_DIR" -j "$JOBS"
    asan_checks "$@"
}

# ctest in build/asan, then NUnit against the sanitized library. Exit 1 on any failure or report.
asan_checks() {
    local rc=0 libasan
    libasan="$("${CXX:-c++}" -print-file-name=libasan.so)"
    [[ -f "$libasan" ]] || die "asan: the ASan runtime (libasan.so) was not found"
    # Left out: mma_gemm_emu_check and kernels_emu_check, whose CUDA emulator runs threads as ucontext fibers that
    # ASan cannot follow without fiber annotations (false stack-buffer-overflow reports in the test harness; they
    # test CUDA kernel sources, not the library built here).
    # Also left out: split_check_mpi_late, whose 1.5 s scenario timeout also bounds Open MPI's MPI_Init (waiting for
    # every process of the job), which ASan slows past it on a 2-core machine; it runs in the normal ctest.
    local exclude="${SHARDWISE_ASAN_CTEST_EXCLUDE:-^(mma_gemm_emu_check|kernels_emu_check|split_check_mpi_late)\$}"
    # Multi-process and NCCL checks: leaks not checked. Their processes exit or are killed mid-job on purpose, the NCCL
    # stand-in keeps every freed communicator (to catch a use after free), Open MPI leaks in its own libraries, and the
    # MPI plugin gives up (leaks) requests a dead peer will never complete. Every other report still fails them.
    local leaky='^(multiprocess_check|multiprocess_check_(sockets|shm_ring|ring|rd)|multiprocess_check_mpi|nccl_check|nccl_check_blocking|nccl_check_mpi_bootstrap|nccl_check_gpu)$'
    step "asan: native checks (ctest; LeakSanitizer on)"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure \
        --timeout "${SHARDWISE_CTEST_TIMEOUT:-900}" -E "$exclude|$leaky" || rc=1
    step "asan: multi-process and NCCL checks (ctest; leaks not checked)"
    ASAN_OPTIONS="detect_leaks=0" ctest --test-dir "$ASAN_BUILD_DIR" --output-on-failure \
        --timeout "${SHARDWISE_CTEST_TIMEOUT:-900}" -R "$leaky" -E "$exclude" || rc=1
    dotnet_build
    local test_dll
    test_dll="$(target_path "$TEST_PROJECT")"
    step "asan: NUnit against ${ASAN_BUILD_DIR#"$ROOT"/}/lib/libshardwise.so${*:+ ($*)}"
    # The .NET runtime is not instrumented: LD_PRELOAD puts the ASan runtime first; its leak check is off (the
    # runtime's own allocations) and SIGSEGV stays with .NET (which turns some into NullReferenceException).
    local log
    log="$(mktemp)"
    set +e
    LD_PRELOAD="$libasan" SHARDWISE_NATIVE_PATH="$ASAN_BUILD_DIR/lib/libshardwise.so" \
        SHARDWISE_MPI_PLUGIN_PATH="$ASAN_BUILD_DIR/lib" \
        ASAN_OPTIONS="detect_leaks=0:handle_segv=0:allow_user_segv_handler=1:use_sigaltstack=0:detect_stack_use_after_return=0" \
        run_mtp "$test_dll" "$RESULTS_DIR/asan" nunit-asan.trx "$@" 2>&1 | tee "$log"
    set -e
    # run_mtp ran in a pipeline (a subshell): read its counts back from the report.
    local trx="$RESULTS_DIR/asan/nunit-asan.trx" passed=0 failed=1 skipped=0
    if [[ -f "$trx" ]]; then
        passed=$(trx_counter "$trx" passed)
        failed=$(($(trx_counter "$trx" failed) + $(trx_counter "$trx" error) + $(trx_counter "$trx" timeout) + $(trx_counter "$trx" aborted)))
        skipped=$(trx_counter "$trx" notExecuted)
    fi
    if grep -qE '^(==[0-9]+==ERROR: AddressSanitizer|.*runtime error: |SUMMARY: (Address|Undefined)BehaviorSanitizer)' "$log"; then
        echo "build.sh: asan: a sanitizer report appeared in the NUnit run (see above)" >&2
        rc=1
    fi
    rm -f "$log"
    step "asan: NUnit $passed passed, $failed failed, $skipped skipped"
    ((failed == 0 && passed > 0)) || rc=1
    return "$rc"
}

# ------------------------------------------------------------------------------------------ commands
cmd_help() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

cmd_native() {
    deps
    native_build
}

cmd_run() {
    deps
    native_build
    dotnet_build
    local bench_dll
    bench_dll="$(target_path "$BENCH_PROJECT")"
    step "main job"
    # exec: the main job's exit code is the script's.
    exec dotnet "$bench_dll" main --chart-dir "$ROOT/artifacts/bench" "$@"
}

cmd_bench() {
    deps
    native_build
    dotnet_build
    local bench_dll
    bench_dll="$(target_path "$BENCH_PROJECT")"
    step "benchmarks (BenchmarkDotNet)"
    # Without arguments BenchmarkDotNet asks which benchmarks to run, which would hang an unattended run:
    # run them all instead.
    (($#)) || set -- --filter '*'
    exec dotnet "$bench_dll" bench "$@"
}

# The bandwidth scenario of the multi-process worker, run from the test output folder (worker and launcher/ are
# copied there). Not part of `test`: it measures, it does not check speed.
cmd_fault_trials() {
    deps
    native_build
    step "fault trials"
    SW_FAULT_BIN="$BUILD_DIR/bin/fault_check" bash "$ROOT/scripts/fault-trials.sh" "$@"
}

cmd_bench_mp() {
    local n="${1:-2}" transport="${2:-shm}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "bench-mp: N must be a positive rank count, got '$n' (usage: ./build.sh bench-mp [N] [shm|tcp|mpi])"
    [[ "$transport" == shm || "$transport" == tcp || "$transport" == mpi ]] || die "bench-mp: transport must be shm, tcp or mpi, got '$transport'"
    (($# <= 2)) || die "bench-mp: too many arguments (usage: ./build.sh bench-mp [N] [shm|tcp|mpi])"
    deps
    native_build
    dotnet_build
    local out worker launcher
    out="$(dirname "$(target_path "$TEST_PROJECT")")"
    worker="$out/Shardwise.MultiProcessWorker.dll"
    launcher="$out/launcher/shardwise.dll"
    [[ -f "$worker" ]] || die "bench-mp: worker not built: $worker"
    local ours raw rc=0 baseline="$BUILD_DIR/bin/mpi_baseline"
    ours="$(mktemp)"
    raw="$(mktemp)"
    local forward=() var
    for var in SW_BW_MIN_BYTES SW_BW_MAX_BYTES SW_BW_ITERS SW_BW_WARMUP SW_BW_IN_PLACE SW_BW_AGREEMENT SW_TEST_TIMEOUT_MS; do
        [[ -n "${!var:-}" ]] && forward+=(-x "$var")
    done
    step "collective bandwidth: $n ranks over $transport"
    if [[ "$transport" != mpi ]]; then
        [[ -f "$launcher" ]] || die "bench-mp: launcher not built: $launcher"
        SHARDWISE_TRANSPORT="$transport" dotnet "$launcher" launch -n "$n" --no-prefix -- dotnet "$worker" bandwidth | tee "$ours" || rc=$?
    else
        command -v mpirun >/dev/null 2>&1 || die "bench-mp: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"
        mpirun --allow-run-as-root --oversubscribe -n "$n" "${forward[@]}" dotnet "$worker" bandwidth | tee "$ours" || rc=$?
    fi
    # The baseline: raw Open MPI's collectives, timed the same way, right after ours (same sizes and settings), then
    # both side by side (ours / MPI's busbw, above 1: ours faster).
    if [[ -x "$baseline" ]] && command -v mpirun >/dev/null 2>&1; then
        step "baseline: raw MPI (native/bench/mpi_baseline.c), $n processes"
        mpirun --allow-run-as-root --oversubscribe -n "$n" "${forward[@]}" "$baseline" | tee "$raw" || rc=$?
        step "side by side: $n ranks, ours over $transport vs raw MPI (busbw ratio above 1: ours faster)"
        awk '
            /^# collective:/ { coll = $3; next }
            /^#/ || NF < 8 { next }
            FNR == NR { t[coll, $1] = $5; b[coll, $1] = $7; next }
            (coll, $1) in t {
                if (!head++) printf "%-15s %12s %12s %12s %12s %12s %8s\n", "collective", "size (B)", "ours (us)", "MPI (us)", "ours busbw", "MPI busbw", "ratio"
                printf "%-15s %12s %12s %12s %12s %12s %8.2f\n", coll, $1, t[coll, $1], $5, b[coll, $1], $7, ($7 > 0 ? b[coll, $1] / $7 : 0)
            }' "$ours" "$raw"
    else
        echo "bench-mp: no raw MPI baseline (mpi_baseline not built: no MPI found at configure time, or no mpirun)"
    fi
    # The steady comparison: ours and raw MPI in one job, interleaved rounds in rotating order, the median of the
    # per-round ratios with its spread (native/bench/mpi_interleaved.c). tcp: our group on its sockets against MPI on
    # its TCP transport (--mca btl tcp,self); shm and mpi: both as they come on one host.
    local interleaved="$BUILD_DIR/bin/mpi_interleaved"
    if [[ -x "$interleaved" ]] && command -v mpirun >/dev/null 2>&1; then
        local il_env=(-x SHARDWISE_TRANSPORT) il_mca=()
        [[ "$transport" == tcp ]] && il_mca=(--mca btl tcp,self)
        for var in SHARDWISE_ALLREDUCE SW_IL_ROUNDS SW_IL_ITERS; do
            [[ -n "${!var:-}" ]] && il_env+=(-x "$var")
        done
        step "interleaved: $n processes, ours over $transport vs raw MPI${il_mca:+ (MPI over TCP)} in one job"
        SHARDWISE_TRANSPORT="$([[ "$transport" == tcp ]] && echo tcp || echo auto)" \
            mpirun --allow-run-as-root --oversubscribe "${il_mca[@]}" -n "$n" "${forward[@]}" "${il_env[@]}" "$interleaved" || rc=$?
    fi
    # The layers' step: the FFN forward with and without overlap of its all-reduce (tests/MultiProcess/OverlapBench.cs).
    step "FFN forward step time: $n ranks over $transport, with and without overlap (SW_OV_H, SW_OV_F, SW_OV_M, SW_OV_CHUNKS)"
    if [[ "$transport" != mpi ]]; then
        SHARDWISE_TRANSPORT="$transport" dotnet "$launcher" launch -n "$n" --no-prefix -- dotnet "$worker" overlap || rc=$?
    else
        local ov_env=()
        for var in SW_OV_H SW_OV_F SW_OV_M SW_OV_CHUNKS SW_OV_ROUNDS; do
            [[ -n "${!var:-}" ]] && ov_env+=(-x "$var")
        done
        mpirun --allow-run-as-root --oversubscribe -n "$n" "${ov_env[@]}" dotnet "$worker" overlap || rc=$?
    fi
    rm -f "$ours" "$raw"
    return "$rc"
}

# The planner's calibration and validation (bench commands calibrate / plan-validate) on virtual ranks and on processes.
cmd_plan_validate() {
    local targets=() extra=() calibrate_extra=() rounds=()
    while (($#)); do
        case "$1" in
            virtual) targets+=(virtual) ;;
            --quick) extra+=(--quick); calibrate_extra+=(--quick) ;;
            --rounds) (($# >= 2)) || die "plan-validate: --rounds needs a count"; rounds=(--rounds "$2"); shift ;;
            *) [[ "$1" =~ ^[1-9][0-9]*$ ]] || die "plan-validate: expected virtual, a process count, --quick or --rounds R; got '$1'"
               targets+=("$1") ;;
        esac
        shift
    done
    ((${#targets[@]})) || targets=(virtual)
    deps
    native_build
    dotnet_build
    local bench_dll launcher rc=0 t file
    bench_dll="$(target_path "$BENCH_PROJECT")"
    launcher="$(dirname "$(target_path "$TEST_PROJECT")")/launcher/shardwise.dll"
    for t in "${targets[@]}"; do
        if [[ "$t" == virtual ]]; then
            file="$ROOT/artifacts/cluster-cpu.json"
            step "planner: calibrate and validate on 8 virtual ranks"
            dotnet "$bench_dll" calibrate --out "$file" "${calibrate_extra[@]}" || { rc=1; continue; }
            dotnet "$bench_dll" plan-validate --cluster "$file" "${extra[@]}" "${rounds[@]}" || rc=1
        else
            [[ -f "$launcher" ]] || die "plan-validate: launcher not built: $launcher"
            file="$ROOT/artifacts/cluster-cpu-${t}p.json"
            step "planner: calibrate and validate on $t processes (shardwise launch)"
            dotnet "$launcher" launch -n "$t" --no-prefix -- dotnet "$bench_dll" calibrate --processes --out "$file" "${calibrate_extra[@]}" || { rc=1; continue; }
            dotnet "$launcher" launch -n "$t" --no-prefix -- dotnet "$bench_dll" plan-validate --processes --cluster "$file" "${extra[@]}" "${rounds[@]}" || rc=1
        fi
    done
    return "$rc"
}

# The builds and the suites write into build/test-results/logs/; the terminal gets one line per step, then the
# report: one line per suite, every failure in full, the skipped tests by reason (one line for those that need a
# GPU) and, last, the totals line that CI reads.
cmd_test() {
    deps
    rm -rf "$LOG_DIR"
    step "native build (output: ${LOG_DIR#"$ROOT"/}/native-build.log)"
    logged native-build native_build
    native_checks
    step "dotnet build (output: ${LOG_DIR#"$ROOT"/}/dotnet-build.log)"
    logged dotnet-build dotnet_build
    nunit_tests "$@"
    torchsharp_tests "$@"

    local passed=$((NUNIT_PASSED + TORCH_PASSED + CTEST_PASSED))
    local failed=$((NUNIT_FAILED + TORCH_FAILED + CTEST_FAILED))
    local skipped=$((NUNIT_SKIPPED + TORCH_SKIPPED + CTEST_SKIPPED))
    step "results (reports and whole output: ${RESULTS_DIR#"$ROOT"/}/)"
    suite_line "NUnit main suite" "$NUNIT_PASSED" "$NUNIT_FAILED" "$NUNIT_SKIPPED" "$NUNIT_SECONDS" nunit/nunit.trx logs/nunit.log
    if ((TORCH_RAN)); then
        suite_line "TorchSharp interop" "$TORCH_PASSED" "$TORCH_FAILED" "$TORCH_SKIPPED" "$TORCH_SECONDS" torchsharp/torchsharp.trx logs/torchsharp.log
    else
        printf '  %-20s left out (SHARDWISE_SKIP_TORCHSHARP=1)\n' "TorchSharp interop"
    fi
    suite_line "ctest native checks" "$CTEST_PASSED" "$CTEST_FAILED" "$CTEST_SKIPPED" "$CTEST_SECONDS" ctest-junit.xml logs/ctest.log
    test_report
    # The last line of output, for CI: totals over NUnit tests and native checks (one per ctest program).
    echo "$passed passed, $failed failed, $skipped skipped"
    if ((failed > 0 || NUNIT_RC != 0 || TORCH_RC != 0 || CTEST_RC != 0 || passed + failed == 0)); then
        exit 1
    fi
}

cmd_pack() {
    deps
    native_build
    pack_packages
}

cmd_samples() {
    deps
    native_build
    pack_packages
    sample_package
    sample_aot
    sample_pinvoke
    sample_train
    step "samples: all passed"
}

cmd_clean() {
    step "clean"
    [[ "$BUILD_DIR" != "$ROOT" && "$BUILD_DIR" != / ]] || die "refusing to delete $BUILD_DIR"
    rm -rf "$BUILD_DIR" "$ROOT/build" "$ROOT/artifacts" "$ROOT/BenchmarkDotNet.Artifacts" "$ROOT/TestResults"
    local dir
    for dir in src/Bindings src/Parallel src/Launcher tests tests/MultiProcess tests/TorchSharp bench samples/PackageSample samples/AotSample samples/PInvokeSample samples/TorchSharpInterop examples/TrainTransformer; do
        rm -rf "${ROOT:?}/$dir/bin" "${ROOT:?}/$dir/obj"
    done
}

command="${1:-run}"
(($#)) && shift
case "$command" in
    run) cmd_run "$@" ;;
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    bench-mp) cmd_bench_mp "$@" ;;
    plan-validate) cmd_plan_validate "$@" ;;
    native) cmd_native ;;
    fault-trials) cmd_fault_trials "$@" ;;
    asan) cmd_asan "$@" ;;
    fuzz) cmd_fuzz "$@" ;;
    pack) cmd_pack ;;
    samples) cmd_samples ;;
    gpu-bundle) deps; exec bash "$ROOT/scripts/gpu-bundle.sh" "$@" ;;
    cuda12-check) deps; exec bash "$ROOT/scripts/cuda12-check.sh" ;;
    deps) deps ;;
    clean) cmd_clean ;;
    help | -h | --help) cmd_help ;;
    *) echo "build.sh: unknown command '$command'" >&2; cmd_help >&2; exit 2 ;;
esac
