#!/usr/bin/env bash
# Installs nvcc (CUDA 13.0, from PyPI) into .cuda/ in the repository, where build.rs finds it.
#
# The GPUs scratchnet is tested on run NVIDIA driver 580 (CUDA 13.0), which cannot load PTX
# made by a newer nvcc, so every package is pinned to 13.0.* (a loose pin pulls a newer nvvm).
# No GPU is needed: this only lets `cargo build` compile kernels/*.cu into the fatbin.
#
# Usage: scripts/setup-cuda.sh        (then: cargo build --release)
#        scripts/setup-cuda.sh --sass (also cuobjdump and nvdisasm, into .cuda-sass/, to read
#                                      the machine code: cuobjdump -sass on a cubin; PyPI
#                                      has them from CUDA 13.2 on, which reads 13.0's cubins)
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "error: $python -m pip is not available; install Python 3 with pip first" >&2
    exit 2
fi

if [ "${1:-}" = "--sass" ]; then
    rm -rf .cuda-sass
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target .cuda-sass \
        "nvidia-cuda-cuobjdump==13.2.*" "nvidia-cuda-nvdisasm==13.2.*"
    bin="$(pwd)/.cuda-sass/nvidia/cu13/bin"
    echo "installed cuobjdump and nvdisasm in $bin; for example:"
    echo "  .cuda/nvidia/cu13/bin/nvcc -arch=sm_90 -cubin -O3 -I kernels -o /tmp/gemm.cubin kernels/gemm.cu"
    echo "  PATH=$bin:\$PATH cuobjdump -sass -fun gemm_128x128_vec4_f32 /tmp/gemm.cubin"
fi

target=.cuda
nvcc="$target/nvidia/cu13/bin/nvcc"
if [ -x "$nvcc" ] && "$nvcc" --version 2>/dev/null | grep -q "release 13.0"; then
    echo "nvcc 13.0 is already installed: $nvcc"
    exit 0
fi

rm -rf "$target"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" \
    "nvidia-cuda-nvcc==13.0.*" \
    "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-cccl==13.0.*" \
    "nvidia-nvvm==13.0.*"

"$nvcc" --version | tail -n 2
echo "installed $nvcc; build.rs finds it there (or set NVCC=$(pwd)/$nvcc)"
