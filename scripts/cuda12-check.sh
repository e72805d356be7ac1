#!/usr/bin/env bash
# Compile check of the CUDA plugin with a newer CUDA than Debian 12's 11.8: CUDA 12.x from Debian 13 (trixie)'s
# non-free archive, downloaded with apt-get and EXTRACTED into a cache folder (dpkg -x), never installed, so the
# system keeps its own packages. Builds libshardwise_cuda for sm_80, sm_90 and sm_90a (the sm_90a target needs
# nvcc >= 12, which CI's CUDA 11.8 lacks) with the system g++, warnings reported, and checks that the plugin holds
# sm_90a code. No GPU is needed or used.
#
#   ./build.sh cuda12-check
#   SHARDWISE_CUDA12_DIR   the cache (default ~/.cache/shardwise/cuda12; ~1.3 GB of packages, ~3 GB extracted)
#   SHARDWISE_CUDA12_BUILD the build folder (default build/cuda12)
#
# Exit codes: 0 compiled; 1 the build failed (a real finding); 77 the toolkit could not be had (no network, the
# archive changed): the check is skipped, with the reason.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SHARDWISE_CUDA12_DIR:-$HOME/.cache/shardwise/cuda12}"
BUILD="${SHARDWISE_CUDA12_BUILD:-$ROOT/build/cuda12}"
PKGS=(nvidia-cuda-toolkit nvidia-cuda-dev libnvvm4 libcudart12 libcublas12 libcublaslt12)
say() { printf '==> cuda12-check: %s\n' "$*"; }
skip() { say "SKIPPED: $*"; exit 77; }

TK="$CACHE/root/usr/lib/nvidia-cuda-toolkit"
if [[ ! -x "$TK/bin/nvcc" ]]; then
    say "fetching CUDA 12 from Debian trixie (non-free) into $CACHE"
    mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/apt/sources" "$CACHE/debs" || skip "cannot create $CACHE"
    cat > "$CACHE/apt/sources/trixie.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : > "$CACHE/apt/status"
    APT=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$CACHE/apt/sources"
         -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache::Archives=$CACHE/apt/archives"
         -o "Dir::State::status=$CACHE/apt/status" -o APT::Sandbox::User=root)
    apt-get "${APT[@]}" update > "$CACHE/apt.log" 2>&1 || skip "apt-get update of trixie failed (see $CACHE/apt.log)"
    (cd "$CACHE/debs" && apt-get "${APT[@]}" download "${PKGS[@]}" >> "$CACHE/apt.log" 2>&1) ||
        skip "apt-get download failed (see $CACHE/apt.log)"
    rm -rf "$CACHE/root" && mkdir -p "$CACHE/root"
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$CACHE/root" || skip "dpkg -x $deb failed"; done
    rm -rf "$CACHE/debs" "$CACHE/apt/archives"
    [[ -x "$TK/bin/nvcc" ]] || skip "the packages hold no $TK/bin/nvcc"
fi

# The extracted toolkit's own paths (the packages' nvcc.profile points at /usr, where Debian 12's 11.8 lives), and
# the include/lib64 folders CMake's FindCUDAToolkit looks for next to nvcc. The packages ship bin/nvcc.profile as a
# symbolic link to /etc/nvcc.profile, the SYSTEM toolkit's configuration: remove the link first, so that writing
# our profile can never change the installed CUDA 11.8 (it did once: the system profile had to be restored).
R="$CACHE/root"
rm -f "$TK/bin/nvcc.profile"
cat > "$TK/bin/nvcc.profile" <<EOF
NVVMIR_LIBRARY_DIR = $R/usr/lib/nvidia-cuda-toolkit/libdevice
PATH += $R/usr/lib/nvidia-cuda-toolkit/bin:$R/usr/bin:
INCLUDES += -I$R/usr/include \$(_SPACE_)
LIBRARIES =+ \$(_SPACE_) -L$R/usr/lib/x86_64-linux-gnu/stubs -L$R/usr/lib/x86_64-linux-gnu
EOF
rm -rf "$TK/include" "$TK/lib64"
ln -s "$R/usr/include" "$TK/include"
ln -s "$R/usr/lib/x86_64-linux-gnu" "$TK/lib64"
# Nothing of the extracted tree may lead outside it where this script writes.
[[ ! -L "$TK/bin/nvcc.profile" ]] || { say "FAILED: $TK/bin/nvcc.profile is still a link"; exit 1; }
"$TK/bin/nvcc" --version | tail -2

say "configure + build libshardwise_cuda (architectures 80;90;90a, host compiler $(command -v g++))"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DSHARDWISE_CUDA=ON -DSHARDWISE_MPI=OFF \
      -DCMAKE_CUDA_COMPILER="$TK/bin/nvcc" -DCMAKE_CUDA_HOST_COMPILER="$(command -v g++)" > "$BUILD.log" 2>&1 ||
    { tail -30 "$BUILD.log"; say "FAILED: configure"; exit 1; }
grep -E "Shardwise: CUDA plugin" "$BUILD.log" || true
cmake --build "$BUILD" --target shardwise_cuda cuda_check -j "$(nproc)" >> "$BUILD.log" 2>&1 ||
    { grep -E "error|Error" "$BUILD.log" | head -30; say "FAILED: build (log: $BUILD.log)"; exit 1; }
warnings="$(grep -ciE "warning" "$BUILD.log" || true)"
grep -iE "warning" "$BUILD.log" | head -20
plugin="$BUILD/lib/libshardwise_cuda.so"
archs="$("$R/usr/bin/cuobjdump" --list-elf "$plugin" 2>/dev/null | grep -oE 'sm_[0-9]+a?' | sort -u | tr '\n' ' ')"
say "plugin code for: $archs"
[[ "$archs" == *sm_90a* ]] || { say "FAILED: no sm_90a code in $plugin"; exit 1; }
say "OK: compiled with $("$TK/bin/nvcc" --version | grep -oE 'release [0-9.]+'), $warnings warning line(s)"
