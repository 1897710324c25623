#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, run with a binary built elsewhere (no Rust toolchain is
# needed here): the device report, every kernel against the CPU reference (and again under
# compute-sanitizer's memcheck), running out of GPU memory, then `scratchnet bench` at batch 64 beside PyTorch/cuDNN on the
# same GPU (scripts/torch_baseline.py), AlexNet's towers on two streams, and the comparison
# table last. Budget: 6 minutes on one H100. --full adds racecheck and a short training run
# whose loss must fall.
#
# Usage: scripts/gpu-check.sh [--full] [path/to/scratchnet]    (default: target/release/scratchnet)
# Environment: OUT=dir to keep the logs, bench.json, torch.json and roofline.svg
#              (default: a temporary directory); BENCH_ARGS to pass more flags to the bench.
set -uo pipefail
cd "$(dirname "$0")/.."

full=0
if [ "${1:-}" = "--full" ]; then
    full=1
    shift
fi
bin=${1:-target/release/scratchnet}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
if [ ! -x "$bin" ]; then
    echo "error: $bin not found or not executable (build it with: cargo build --release)" >&2
    exit 2
fi

declare -a names results times
run_step() {
    # run_step NAME TIMEOUT_SECONDS COMMAND...: runs the command with its output in
    # $out/NAME.log, and records PASS/FAIL and the time it took.
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    names+=("$name")
    times+=("$((SECONDS - start)) s")
    if [ $rc -eq 0 ]; then results+=("PASS"); else results+=("FAIL (exit $rc)"); fi
    return $rc
}

run_step devices 60 "$bin" devices
# Wait for each kernel in the checks, so a kernel that faults is named in the error.
export SCRATCHNET_CUDA_SYNC=1
run_step selftest 120 "$bin" selftest --device cuda

if command -v compute-sanitizer >/dev/null 2>&1; then
    # --error-exitcode makes a reported error fail the step even if the selftest passes.
    run_step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 3 "$bin" selftest --device cuda
    if [ $full -eq 1 ]; then
        run_step racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 3 "$bin" selftest --device cuda
    fi
else
    names+=("sanitizers"); results+=("SKIPPED (compute-sanitizer not found)"); times+=("-")
fi
unset SCRATCHNET_CUDA_SYNC

# Running out of GPU memory: ResNet-50 at batch 4096 needs some 400 GB of activations. The
# allocator must empty its cache, retry once, then end the run with one line that says how
# much was needed (exit 2), not crash.
run_step oom 60 "$bin" profile --device cuda --model resnet50 --batch-size 4096 --steps 1
if [ "$(tail -n 1 "$out/oom.log" | grep -c '^error: out of memory on cuda')" = 1 ] &&
    grep -q 'exit 2' <<<"${results[${#results[@]}-1]}"; then
    results[${#results[@]}-1]="PASS ($(tail -n 1 "$out/oom.log" | cut -c1-60)...)"
else
    results[${#results[@]}-1]="FAIL (expected exit 2 and 'error: out of memory on cuda')"
fi

if [ $full -eq 1 ]; then
    # A short training run on the GPU: ResNet-20 on the synthetic data, 3 epochs of 94 steps.
    # The loss must fall: the last epoch's training loss below 60% of the first epoch's.
    if run_step train 240 "$bin" train --device cuda --epochs 3 --batch-size 64; then
        first=$(grep -m1 '^epoch 1: train loss' "$out/train.log" | awk '{print $5}')
        last=$(grep '^epoch 3: train loss' "$out/train.log" | awk '{print $5}')
        if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 0 && b < 0.6 * a) }'; then
            results[${#results[@]}-1]="PASS (loss $first -> $last)"
        else
            results[${#results[@]}-1]="FAIL (loss $first -> $last did not fall enough)"
        fi
    fi
fi

# The benchmarks: every op at the layer shapes of AlexNet, ResNet-18/50 and DenseNet-121 at
# batch 64, the memory-bound ops on 256 MB tensors, SGEMM, and a training step of each
# network; then the same problems in PyTorch, and the two side by side.
export SCRATCHNET_AUTOTUNE_CACHE="$out/autotune.tsv"
# shellcheck disable=SC2086
run_step bench 240 "$bin" bench --device cuda --json "$out/bench.json" --plot "$out/roofline.svg" ${BENCH_ARGS:-}
# What capturing the training step as a CUDA graph saves at small batches (ResNet-50).
for b in 1 4 8; do
    run_step "graph-b$b" 45 "$bin" bench --device cuda --suite resnet50 --batch "$b" --filter "train step" \
        --variants all --json "$out/graph-b$b.json"
done
# AlexNet's two towers on two streams (--towers): the training step with and without, and a
# profiled step whose report says how long the towers ran side by side, with a trace that
# shows each side stream as its own track.
run_step towers 60 "$bin" bench --device cuda --suite alexnet --filter "train step" --variants all \
    --json "$out/towers.json"
run_step towers-trace 60 "$bin" profile --model alexnet --device cuda --batch-size 64 --steps 3 --towers \
    --trace "$out/alexnet-towers-trace.json"
grep -A 8 '^side streams' "$out/towers-trace.log"
compared=0
if [ -s "$out/bench.json" ]; then
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch, torchvision' 2>/dev/null; then
        run_step torch 150 python3 scripts/torch_baseline.py "$out/bench.json" --out "$out/torch.json" &&
            run_step compare 30 "$bin" bench --compare "$out/bench.json" "$out/torch.json" && compared=1
    else
        names+=("torch"); results+=("SKIPPED (python3 with torch and torchvision not found)"); times+=("-")
    fi
fi

echo
echo "== summary (logs in $out)"
printf '%-12s %-8s %s\n' "check" "time" "result"
failed=0
for i in "${!names[@]}"; do
    printf '%-12s %-8s %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
    case "${results[$i]}" in PASS*|SKIPPED*) ;; *) failed=1 ;; esac
done
if [ $compared -eq 1 ]; then
    echo
    echo "== scratchnet against PyTorch on this GPU (ratio: scratchnet throughput / PyTorch's)"
    cat "$out/compare.log"
fi
exit $failed
