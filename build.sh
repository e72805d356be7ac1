#!/usr/bin/env bash
# Shardwise build script: native core (CMake) + .NET libraries, tests, benchmarks and the main job.
#
#   ./build.sh [run [args...]]     deps, native build, dotnet build, then the main job (bench exe `main`)
#   ./build.sh test [args...]      deps, native build + ctest, dotnet build, NUnit tests, then the TorchSharp
#                                  interop tests (tests/TorchSharp, a project outside the solution); prints
#                                  "N passed, N failed, N skipped" as its last line (NUnit + TorchSharp + ctest);
#                                  args go to the test executable, e.g.
#                                  --filter 'FullyQualifiedName~Smoke'|'TestCategory=Fast' (--help lists all)
#   ./build.sh bench [args...]     deps, builds, then BenchmarkDotNet (bench exe `bench` + args),
#                                  e.g. --filter '*Gemm*' --job short, or --list flat
#   ./build.sh bench-mp [N] [tcp|mpi]  deps, builds, then the multi-process collective bandwidth report: N ranks
#                                  (default 2), one process each, over TCP (shardwise launch, default) or MPI
#                                  (mpirun); all-reduce, all-gather, reduce-scatter, 8 B x4 up to 64 MiB (the
#                                  last size is 32 MiB, as nccl-tests -b 8 -e 64M -f 4), with nccl-tests' size,
#                                  count, time, algbw and busbw (docs/distributed.md);
#                                  SW_BW_MAX_BYTES (e.g. 1M), SW_BW_MIN_BYTES, SW_BW_ITERS (20), SW_BW_WARMUP (5),
#                                  SW_BW_IN_PLACE (1: the all-reduce in place)
#   ./build.sh native              deps and the native library (CMake configure + build) only
#   ./build.sh fault-trials [N] [tcp|mpi...]  deps, native build, then scripts/fault-trials.sh: N (default 20)
#                                  kill and N freeze trials per kind (TCP, MPI) of a 3-rank job running collectives,
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
#   ./build.sh pack                deps, native build, NuGet packages Shardwise.Bindings and Shardwise.Parallel
#                                  into artifacts/packages (native library under runtimes/<rid>/native), and a
#                                  check of what each package contains
#   ./build.sh samples             pack, then the samples (each verifies its result, non-zero exit on mismatch):
#                                  PackageSample (restores the packages from artifacts/packages), AotSample
#                                  (NativeAOT publish, zero trim/AOT warnings allowed, then runs the executable),
#                                  PInvokeSample (the C ABI through its own LibraryImport declarations)
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
#   SHARDWISE_JOBS       parallel native build jobs (default: number of cores)
#   SHARDWISE_SKIP_DEPS  set to 1 to skip the dependency check/install step
#   SHARDWISE_INSTALL_CUDA  set to 1 to let the deps step install Debian's CUDA toolkit (nvidia-cuda-toolkit,
#                        from contrib/non-free) and clang-14 when nvcc is missing, so that the CUDA plugin is
#                        compiled even without a GPU (.ci/run sets it)
#   SHARDWISE_CTEST_TIMEOUT  per native check timeout in seconds (default 900)
#   SHARDWISE_VERSION    package version for pack/samples (default: Version in Directory.Build.props)
#   SHARDWISE_REPOSITORY_URL  repository URL written into the packages (default: none; the project has no public
#                        address yet)
#   SHARDWISE_SKIP_TORCHSHARP  set to 1 to leave out the TorchSharp interop tests (their restore downloads libtorch)
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
SOLUTION="$ROOT/Shardwise.slnx"
TEST_PROJECT="$ROOT/tests/Shardwise.Tests.csproj"
TORCH_TEST_PROJECT="$ROOT/tests/TorchSharp/Shardwise.TorchSharp.Tests.csproj"
BENCH_PROJECT="$ROOT/bench/Shardwise.Bench.csproj"
PACKAGES_DIR="$ROOT/artifacts/packages"
# The package sample's own global packages folder (samples/PackageSample/nuget.config): pack empties it of
# Shardwise packages so that an earlier package of the same version can never be what the sample runs.
SAMPLE_PACKAGES_DIR="$ROOT/artifacts/sample-packages"
SAMPLES_OUT="$ROOT/artifacts/samples"
PACKED_PROJECTS=("$ROOT/src/Bindings/Shardwise.Bindings.csproj" "$ROOT/src/Parallel/Shardwise.Parallel.csproj")

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
APT_PACKAGES=(cmake make g++ gcc binutils libopenblas0-pthread libopenblas-dev unzip libopenmpi-dev openmpi-bin)

step() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

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
        local sudo=()
        if [[ "$(id -u)" -ne 0 ]]; then
            command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}) and not root (no sudo)"
            sudo=(sudo)
        fi
        step "installing ${missing[*]}"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
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
    command -v apt-get >/dev/null 2>&1 || die "SHARDWISE_INSTALL_CUDA=1 needs apt-get (Debian)"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "SHARDWISE_INSTALL_CUDA=1: not root (no sudo)"
        sudo=(sudo)
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
                "$codename" "$codename" | "${sudo[@]}" tee "$CUDA_APT_SOURCE" >/dev/null
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    local pkgs=(nvidia-cuda-toolkit)
    # clang-14 only where the archive has it (newer releases ship an nvcc that accepts their g++).
    if apt-cache show clang-14 >/dev/null 2>&1; then pkgs+=(clang-14); fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    command -v nvcc >/dev/null 2>&1 || die "SHARDWISE_INSTALL_CUDA=1: nvcc still missing after installing ${pkgs[*]}"
}

# ------------------------------------------------------------------------------------------ native
native_build() {
    step "native: configure ($CONFIGURATION) in ${BUILD_DIR#"$ROOT"/}"
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$CONFIGURATION"
    step "native: build"
    cmake --build "$BUILD_DIR" --config "$CONFIGURATION" -j "$JOBS"
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

CTEST_PASSED=0 CTEST_FAILED=0 CTEST_SKIPPED=0 CTEST_RC=0
native_checks() {
    step "native: checks (ctest)"
    mkdir -p "$RESULTS_DIR"
    local junit="$RESULTS_DIR/ctest-junit.xml"
    rm -f "$junit"
    set +e
    ctest --test-dir "$BUILD_DIR" -C "$CONFIGURATION" --output-on-failure \
        --timeout "${SHARDWISE_CTEST_TIMEOUT:-900}" --output-junit "$junit"
    CTEST_RC=$?
    set -e
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
# sets MTP_RC (its exit code) and MTP_PASSED / MTP_FAILED / MTP_SKIPPED from the report's counters (passed; failed +
# error + timeout + aborted; notExecuted = skipped/ignored), 0 without a report.
run_mtp() {
    local test_dll="$1" trx_dir="$2" trx_name="$3"
    shift 3
    rm -rf "$trx_dir"
    mkdir -p "$trx_dir"
    set +e
    dotnet "$test_dll" --results-directory "$trx_dir" --report-trx --report-trx-filename "$trx_name" "$@"
    MTP_RC=$?
    set -e
    MTP_PASSED=0 MTP_FAILED=0 MTP_SKIPPED=0
    local trx="$trx_dir/$trx_name"
    if [[ -f "$trx" ]]; then
        MTP_PASSED=$(trx_counter "$trx" passed)
        MTP_FAILED=$(($(trx_counter "$trx" failed) + $(trx_counter "$trx" error) +
            $(trx_counter "$trx" timeout) + $(trx_counter "$trx" aborted)))
        MTP_SKIPPED=$(trx_counter "$trx" notExecuted)
    fi
}

NUNIT_PASSED=0 NUNIT_FAILED=0 NUNIT_SKIPPED=0 NUNIT_RC=0
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

    step "NUnit tests (Microsoft.Testing.Platform)"
    run_mtp "$test_dll" "$trx_dir" "$trx_name" "$@"
    NUNIT_RC=$MTP_RC NUNIT_PASSED=$MTP_PASSED NUNIT_FAILED=$MTP_FAILED NUNIT_SKIPPED=$MTP_SKIPPED
    # Exit codes (Microsoft.Testing.Platform): 0 ok, 2 failed tests, 8 no test ran (e.g. a filter that
    # matches nothing), others = the run itself failed. A failure without failed tests counts as one.
    if [[ $NUNIT_RC -ne 0 && $NUNIT_FAILED -eq 0 && $NUNIT_RC -ne 8 ]]; then NUNIT_FAILED=1; fi
    if [[ $NUNIT_RC -eq 8 ]]; then echo "build.sh: the test executable ran no test (filter matched nothing?)" >&2; fi
}

# ------------------------------------------------------------------------------------------ packages
PACKAGE_VERSION=""
pack_packages() {
    step "pack ($CONFIGURATION) into ${PACKAGES_DIR#"$ROOT"/}"
    mkdir -p "$PACKAGES_DIR"
    rm -f "$PACKAGES_DIR"/Shardwise.*.nupkg "$PACKAGES_DIR"/Shardwise.*.snupkg
    rm -rf "$SAMPLE_PACKAGES_DIR/shardwise.bindings" "$SAMPLE_PACKAGES_DIR/shardwise.parallel"
    local args=(-c "$CONFIGURATION" -o "$PACKAGES_DIR" -nologo -nodeReuse:false -v:minimal) project
    [[ -z "${SHARDWISE_VERSION:-}" ]] || args+=("-p:Version=$SHARDWISE_VERSION")
    for project in "${PACKED_PROJECTS[@]}"; do
        dotnet pack "$project" "${args[@]}"
    done
    check_packages
}

# Fails unless both packages hold what a consumer needs: assemblies with XML docs, the README, the licence
# expression, the native library (and the CUDA plugin when it was built) under runtimes/<rid>/native.
check_packages() {
    step "pack: checking the packages' contents"
    local bindings parallel rid
    bindings="$(ls "$PACKAGES_DIR"/Shardwise.Bindings.*.nupkg 2>/dev/null | head -n1)"
    parallel="$(ls "$PACKAGES_DIR"/Shardwise.Parallel.*.nupkg 2>/dev/null | head -n1)"
    [[ -f "$bindings" && -f "$parallel" ]] || die "pack: packages missing in $PACKAGES_DIR"
    PACKAGE_VERSION="$(basename "$bindings" .nupkg)"
    PACKAGE_VERSION="${PACKAGE_VERSION#Shardwise.Bindings.}"
    case "$(uname -m)" in x86_64 | amd64) rid=linux-x64 ;; aarch64 | arm64) rid=linux-arm64 ;; *) rid="linux-$(uname -m)" ;; esac
    local native=("runtimes/$rid/native/libshardwise.so")
    [[ -f "$BUILD_DIR/lib/libshardwise_cuda.so" ]] && native+=("runtimes/$rid/native/libshardwise_cuda.so")
    check_package "$bindings" README.md lib/net10.0/Shardwise.Bindings.dll lib/net10.0/Shardwise.Bindings.xml "${native[@]}"
    check_package "$parallel" README.md lib/net10.0/Shardwise.Parallel.dll lib/net10.0/Shardwise.Parallel.xml
    unzip -p "$parallel" '*.nuspec' | grep -qF "<dependency id=\"Shardwise.Bindings\" version=\"$PACKAGE_VERSION\"" ||
        die "pack: $(basename "$parallel") does not depend on Shardwise.Bindings $PACKAGE_VERSION"
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
    echo "  $(basename "$pkg"): $(grep -E '^(README.md|lib/|runtimes/)' <<<"$listing" | tr '\n' ' ')"
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
TORCH_PASSED=0 TORCH_FAILED=0 TORCH_SKIPPED=0 TORCH_RC=0
torchsharp_tests() {
    [[ "${SHARDWISE_SKIP_TORCHSHARP:-0}" == 1 ]] && return 0
    local trx_dir="$RESULTS_DIR/torchsharp" trx_name="torchsharp.trx" test_dll
    step "TorchSharp interop tests: build"
    if ! dotnet build "$TORCH_TEST_PROJECT" -c "$CONFIGURATION" -nologo -nodeReuse:false -v:minimal; then
        echo "build.sh: the TorchSharp interop tests did not build" >&2
        TORCH_FAILED=1 TORCH_RC=1
        return 0
    fi
    test_dll="$(target_path "$TORCH_TEST_PROJECT")"
    step "TorchSharp interop tests (Microsoft.Testing.Platform)"
    run_mtp "$test_dll" "$trx_dir" "$trx_name" "$@"
    TORCH_RC=$MTP_RC TORCH_PASSED=$MTP_PASSED TORCH_FAILED=$MTP_FAILED TORCH_SKIPPED=$MTP_SKIPPED
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
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "fuzz: clang-14/libclang-rt-14-dev missing and not root (no sudo)"
        sudo=(sudo)
    fi
    step "installing clang-14 libclang-rt-14-dev (libFuzzer, sanitizer runtimes)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev
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
    local exclude="${SHARDWISE_ASAN_CTEST_EXCLUDE:-^(mma_gemm_emu_check|kernels_emu_check)\$}"
    # Multi-process and NCCL checks: leaks not checked. Their processes exit or are killed mid-job on purpose, the NCCL
    # stand-in keeps every freed communicator (to catch a use after free), Open MPI leaks in its own libraries, and the
    # MPI plugin gives up (leaks) requests a dead peer will never complete. Every other report still fails them.
    local leaky='^(multiprocess_check|multiprocess_check_mpi|nccl_check|nccl_check_blocking|nccl_check_mpi_bootstrap|nccl_check_gpu)$'
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
    exec dotnet "$bench_dll" main "$@"
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
    local n="${1:-2}" transport="${2:-tcp}"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "bench-mp: N must be a positive rank count, got '$n' (usage: ./build.sh bench-mp [N] [tcp|mpi])"
    [[ "$transport" == tcp || "$transport" == mpi ]] || die "bench-mp: transport must be tcp or mpi, got '$transport'"
    (($# <= 2)) || die "bench-mp: too many arguments (usage: ./build.sh bench-mp [N] [tcp|mpi])"
    deps
    native_build
    dotnet_build
    local out worker launcher
    out="$(dirname "$(target_path "$TEST_PROJECT")")"
    worker="$out/Shardwise.MultiProcessWorker.dll"
    launcher="$out/launcher/shardwise.dll"
    [[ -f "$worker" ]] || die "bench-mp: worker not built: $worker"
    step "collective bandwidth: $n ranks over $transport"
    if [[ "$transport" == tcp ]]; then
        [[ -f "$launcher" ]] || die "bench-mp: launcher not built: $launcher"
        exec dotnet "$launcher" launch -n "$n" --no-prefix -- dotnet "$worker" bandwidth
    fi
    command -v mpirun >/dev/null 2>&1 || die "bench-mp: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    local forward=() var
    for var in SW_BW_MIN_BYTES SW_BW_MAX_BYTES SW_BW_ITERS SW_BW_WARMUP SW_BW_IN_PLACE SW_TEST_TIMEOUT_MS; do
        [[ -n "${!var:-}" ]] && forward+=(-x "$var")
    done
    exec mpirun --allow-run-as-root --oversubscribe -n "$n" "${forward[@]}" dotnet "$worker" bandwidth
}

cmd_test() {
    deps
    native_build
    native_checks
    dotnet_build
    nunit_tests "$@"
    torchsharp_tests "$@"

    local passed=$((NUNIT_PASSED + TORCH_PASSED + CTEST_PASSED))
    local failed=$((NUNIT_FAILED + TORCH_FAILED + CTEST_FAILED))
    local skipped=$((NUNIT_SKIPPED + TORCH_SKIPPED + CTEST_SKIPPED))
    step "summary: NUnit $NUNIT_PASSED/$NUNIT_FAILED/$NUNIT_SKIPPED, TorchSharp $TORCH_PASSED/$TORCH_FAILED/$TORCH_SKIPPED, ctest $CTEST_PASSED/$CTEST_FAILED/$CTEST_SKIPPED (passed/failed/skipped)"
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
    step "samples: all passed"
}

cmd_clean() {
    step "clean"
    [[ "$BUILD_DIR" != "$ROOT" && "$BUILD_DIR" != / ]] || die "refusing to delete $BUILD_DIR"
    rm -rf "$BUILD_DIR" "$ROOT/build" "$ROOT/artifacts" "$ROOT/BenchmarkDotNet.Artifacts" "$ROOT/TestResults"
    local dir
    for dir in src/Bindings src/Parallel src/Launcher tests tests/MultiProcess tests/TorchSharp bench samples/PackageSample samples/AotSample samples/PInvokeSample samples/TorchSharpInterop; do
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
