#!/usr/bin/env bash
# Builds, on this machine, the folder that goes to a lent GPU machine (which has no Rust
# toolchain): gpu-bundle/, ignored by git, holding
#   scratchnet         the release binary, kernels as SASS for sm_90 (H100, H200) plus PTX,
#                      stripped of debug information
#   gpu-check.sh       the checks to run there (scripts/gpu-check.sh)
#   torch_baseline.py  the same problems in PyTorch (scripts/torch_baseline.py), with
#   bench_files.py     the results files it reads and writes
#   MANIFEST           the commit it was built from, the toolchain, the binary's checksum and
#                      the `scratchnet devices` line that lists the compiled architectures
#
# nvcc is required (scripts/setup-cuda.sh installs the pinned one): a bundle without GPU
# kernels would waste the GPU's time. The build has its own target directory
# (target/gpu-bundle), so it does not disturb the usual one.
#
# Usage: scripts/build-for-gpu.sh [ARCHS]    (default 90; e.g. 80,90 to add the A100)
# On the GPU machine, with the folder carried there:
#   gpu-bundle/gpu-check.sh --deadline 420 --out /tmp/check
set -euo pipefail
cd "$(dirname "$0")/.."

archs=${1:-90}
bundle=gpu-bundle
target=target/gpu-bundle

nvcc=${NVCC:-}
if [ -z "$nvcc" ]; then
    for candidate in "$(command -v nvcc || true)" .cuda/nvidia/cu13/bin/nvcc "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then nvcc=$candidate; break; fi
    done
fi
if [ -z "$nvcc" ]; then
    echo "error: nvcc not found: the GPU kernels cannot be compiled (run scripts/setup-cuda.sh, or set NVCC)" >&2
    exit 2
fi

echo "building scratchnet for sm_$archs with $nvcc (target dir $target)"
SCRATCHNET_REQUIRE_NVCC=1 SCRATCHNET_CUDA_ARCHS=$archs NVCC=$nvcc \
    cargo build --release --locked --target-dir "$target" --bin scratchnet

rm -rf "$bundle.new"
mkdir -p "$bundle.new"
strip -o "$bundle.new/scratchnet" "$target/release/scratchnet"
cp scripts/gpu-check.sh scripts/torch_baseline.py scripts/bench_files.py "$bundle.new/"

devices=$("$bundle.new/scratchnet" devices | grep '^kernels')
case $devices in
    *"SASS for sm_"*) ;;
    *) echo "error: the binary holds no GPU kernels: $devices" >&2; exit 1 ;;
esac
commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then commit="$commit (with uncommitted changes)"; fi
size=$(stat -c %s "$bundle.new/scratchnet")
{
    echo "commit    $commit"
    echo "built     $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
    echo "nvcc      $("$nvcc" --version | grep -o 'release [0-9.]*, V[0-9.]*')"
    echo "binary    scratchnet, $size bytes, sha256 $(sha256sum "$bundle.new/scratchnet" | cut -d' ' -f1)"
    echo "devices   $devices"
    echo "run       $bundle/gpu-check.sh --deadline 420 --out DIR"
} >"$bundle.new/MANIFEST"

limit=$((64 << 20))
total=$(du -sb "$bundle.new" | cut -f1)
if [ "$total" -ge "$limit" ]; then
    echo "error: the bundle is $total bytes, over the 64 MiB a lent machine takes" >&2
    exit 1
fi
rm -rf "$bundle"
mv "$bundle.new" "$bundle"
cat "$bundle/MANIFEST"
echo "wrote $bundle/ ($((total >> 20)) MiB)"
