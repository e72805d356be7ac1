#!/usr/bin/env bash
# Builds the GPU test bundle: the NUnit test executable and the bench executable published self-contained
# (with their .NET runtime) into ONE folder, compressed, for a CUDA machine that has no .NET SDK and no
# network. The native library is NOT in the bundle: scripts/gpu-run.sh builds it there with the local nvcc.
#
#   scripts/gpu-bundle.sh [OUT]   (default OUT: gpu-bundle/ in the repository root)
#
# Result: OUT/shardwise-gpu-bundle.tar.xz (~40 MB) plus OUT/gpu-run.sh. Copy the repository (sources) and
# OUT to the GPU machine and run `bash OUT/gpu-run.sh` from the repository root there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
OUT="${1:-$ROOT/gpu-bundle}"
case "$OUT" in /*) ;; *) OUT="$ROOT/$OUT" ;; esac
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

echo "==> gpu-bundle: publishing tests and bench (self-contained, linux-x64)"
# Both into the same folder: the runtime files are identical, so the folder holds the runtime once.
for proj in tests/Shardwise.Tests.csproj bench/Shardwise.Bench.csproj; do
    dotnet publish "$proj" -c Release -r linux-x64 --self-contained true -o "$STAGE/app" \
        -p:PublishSingleFile=false -p:DebugType=None -p:GenerateDocumentationFile=false -nologo -v:q
done
# The native library is built on the GPU machine (with CUDA); drop any CPU-only copy that came along.
rm -f "$STAGE/app/libshardwise.so" "$STAGE/app/libshardwise_cuda.so" "$STAGE/app/libshardwise_mpi.so"
git rev-parse HEAD > "$STAGE/app/COMMIT" 2>/dev/null || echo unknown > "$STAGE/app/COMMIT"

mkdir -p "$OUT"
echo "==> gpu-bundle: compressing"
tar -C "$STAGE" -cJf "$OUT/shardwise-gpu-bundle.tar.xz" app
cp "$ROOT/scripts/gpu-run.sh" "$OUT/gpu-run.sh"
cp "$STAGE/app/COMMIT" "$OUT/COMMIT"
ls -lh "$OUT"
