#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, run with a binary built elsewhere (no Rust toolchain is
# needed here): the device report, every kernel against the CPU reference, the same under
# compute-sanitizer's memcheck and racecheck, and a short training run on the GPU whose loss
# must fall. The summary table comes last. Budget: under 5 minutes on one H100.
#
# Usage: scripts/gpu-check.sh [path/to/scratchnet]    (default: target/release/scratchnet)
# Environment: OUT=dir to keep the logs (default: a temporary directory).
set -uo pipefail
cd "$(dirname "$0")/.."

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
    run_step memcheck 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$bin" selftest --device cuda
    run_step racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 3 "$bin" selftest --device cuda
else
    names+=("sanitizers"); results+=("SKIPPED (compute-sanitizer not found)"); times+=("-")
fi

unset SCRATCHNET_CUDA_SYNC
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

echo
echo "== summary (logs in $out)"
printf '%-12s %-8s %s\n' "check" "time" "result"
failed=0
for i in "${!names[@]}"; do
    printf '%-12s %-8s %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
    case "${results[$i]}" in PASS*|SKIPPED*) ;; *) failed=1 ;; esac
done
exit $failed
