#!/usr/bin/env bash
# Everything the project needs to learn from a lent GPU, in one run that ends by a deadline.
#
# A GPU is lent for about 15 minutes in all, machine start included, with no Rust toolchain:
# this script runs a binary built elsewhere (scripts/build-for-gpu.sh makes the bundle it
# lives in). The checks come in three tiers, most needed first; each step gets what is left
# of one deadline (at most its own cap), and a step the deadline leaves no time for is
# skipped, not started. Each result lands on disk as soon as it exists: a line per step in
# steps.jsonl, a line per timed problem in the bench and PyTorch files (JSON lines), so a run
# cut short keeps everything before the cut.
#
#   tier 1  devices; selftest (every kernel against the plain references); a short training run
#           whose loss must fall; the same run as a captured CUDA graph, step by step equal to
#           it; AlexNet's training step with and without --towers; data parallelism over
#           two devices (with and without --sync-bn, and its scaling against one GPU) and
#           AlexNet's towers on two GPUs (a profiled step), where there are two GPUs, skipped
#           where there is one.
#   tier 2  bench of the ResNet-50, memory-bound and GEMM suites, each followed by the same
#           problems in PyTorch (scripts/torch_baseline.py; needs torch, and torchvision for the
#           ResNet/DenseNet training steps, which are skipped without it); then the GEMM and
#           ResNet-50 suites in BF16 and ResNet-50's layers in TF32 (the tensor cores), PyTorch
#           in the same precision.
#   tier 3  the other networks (AlexNet, ResNet-18, DenseNet-121) beside PyTorch;
#           compute-sanitizer memcheck and racecheck on the selftest with the allocator's cache
#           off (SCRATCHNET_NO_CACHE=1); a profiled step with a trace; `scratchnet kernel` on
#           conv2d, gemm and batchnorm (every variant, with ptxas's figures), conv2d and gemm
#           again in BF16 and TF32 (the tensor-core tiles); running out of memory;
#           captured training steps at batch 1, 4 and 8.
#
# A failing `devices` or selftest ends the run early: nothing after it would mean anything.
# The last thing printed is the table of steps (passed, failed, skipped, and why) and the
# comparison with PyTorch of what was measured.
#
# Usage: gpu-check.sh [--deadline SECONDS] [--device cuda|emu] [--quick] [--tiers LIST] [--out DIR] [BINARY]
#   --deadline  seconds for the whole run (default 480)
#   --torch-from DIR
#               compare with the PyTorch files of an earlier run on the same GPU
#               (DIR/torch-SUITE.jsonl) instead of timing PyTorch again: its figures do not
#               change with scratchnet's commits, and they take most of tier 2's time
#   --tiers     the tiers to run, e.g. 3 or 1,3 (default 1,2,3); devices and the selftest
#               always run first, since nothing after them means anything if they fail
#   --device    cuda (default), or emu to run the checks through the emulator on the CPU
#   --quick     small shapes and few steps, for trying the script itself (CI runs
#               `--device emu --quick`); the loss is then only checked to be finite
#   --out       where the logs and results go (default $OUT, else a new temporary directory)
#   BINARY      scratchnet to run (default: the one beside this script in a bundle, else
#               target/release/scratchnet)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)

deadline_s=480
tiers_wanted=1,2,3
torch_from=
device=cuda
quick=0
out=${OUT:-}
bin=
while [ $# -gt 0 ]; do
    case $1 in
        --deadline) deadline_s=${2:-}; shift 2 ;;
        --device) device=${2:-}; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out=${2:-}; shift 2 ;;
        --tiers) tiers_wanted=${2:-}; shift 2 ;;
        --torch-from) torch_from=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "error: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
        *) bin=$1; shift ;;
    esac
done
case $deadline_s in ''|*[!0-9]*) echo "error: --deadline takes a number of seconds, got '$deadline_s'" >&2; exit 2 ;; esac
case $device in cuda|emu) ;; *) echo "error: --device must be cuda or emu, got '$device'" >&2; exit 2 ;; esac
case ,$tiers_wanted, in *[!0-9,]* | ,, | *,[!123],* | *,[0-9][0-9]*) echo "error: --tiers takes a list of 1, 2 and 3, got '$tiers_wanted'" >&2; exit 2 ;; esac
if [ -n "$torch_from" ] && [ ! -d "$torch_from" ]; then
    echo "error: --torch-from $torch_from is not a directory" >&2
    exit 2
fi
wants() { case ,$tiers_wanted, in *,$1,*) return 0 ;; *) return 1 ;; esac; }
if [ -z "$bin" ]; then
    if [ -x "$here/scratchnet" ]; then bin=$here/scratchnet; else bin=$here/../target/release/scratchnet; fi
fi
if [ ! -x "$bin" ]; then
    echo "error: $bin not found or not executable (build it with scripts/build-for-gpu.sh or cargo build --release)" >&2
    exit 2
fi
baseline=$here/torch_baseline.py
out=${out:-$(mktemp -d)}
mkdir -p "$out" || exit 2
: >"$out/steps.jsonl"

end=$((SECONDS + deadline_s))
# Seconds kept back from every step for the comparison and the summary at the end.
reserve=10
export SCRATCHNET_AUTOTUNE_CACHE="$out/autotune.tsv"

declare -a names tiers results times
# record NAME TIER RESULT SECONDS: one row of the summary, also appended to steps.jsonl.
record() {
    names+=("$1"); tiers+=("$2"); results+=("$3"); times+=("$4")
    local text=${3//\\/\\\\}
    text=${text//\"/\\\"}
    printf '{"step":"%s","tier":%s,"result":"%s","seconds":"%s"}\n' "$1" "$2" "$text" "$4" >>"$out/steps.jsonl"
}
# amend RESULT: replaces the result of the last step (after checking its output).
amend() {
    local i=$((${#results[@]} - 1))
    results[i]=$1
    printf '{"step":"%s","amended":"%s"}\n' "${names[i]}" "${1//\"/\\\"}" >>"$out/steps.jsonl"
}
skip() { record "$1" "$2" "SKIPPED ($3)" "-"; }

# run_step NAME TIER CAP COMMAND...: runs the command with its output in $out/NAME.log for at
# most CAP seconds or what is left of the deadline; returns its exit status (124: timed out,
# 125: not started for lack of time).
run_step() {
    local name=$1 tier=$2 cap=$3
    shift 3
    local left=$((end - SECONDS - reserve))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then
        skip "$name" "$tier" "deadline: ${left}s left"
        return 125
    fi
    echo "== [tier $tier] $name (up to ${limit}s): $*"
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 6 "$out/$name.log" | cut -c1-200
    local took="$((SECONDS - start)) s"
    case $rc in
        0) record "$name" "$tier" "PASS" "$took" ;;
        124|137) record "$name" "$tier" "FAIL (timed out after ${limit}s)" "$took" ;;
        *) record "$name" "$tier" "FAIL (exit $rc: $(grep -m1 '^error' "$out/$name.log" | cut -c1-100))" "$took" ;;
    esac
    return $rc
}

summary() {
    echo
    echo "== summary: $device, deadline ${deadline_s}s, used $((SECONDS - end + deadline_s))s (logs and results in $out)"
    printf '%-16s %-5s %-8s %s\n' "step" "tier" "time" "result"
    local failed=0 i
    for i in "${!names[@]}"; do
        printf '%-16s %-5s %-8s %s\n' "${names[i]}" "${tiers[i]}" "${times[i]}" "${results[i]}"
        case ${results[i]} in PASS*|SKIPPED*) ;; *) failed=1 ;; esac
    done
    local f
    for f in "$out"/compare-*.log; do
        [ -s "$f" ] || continue
        echo
        echo "== scratchnet against PyTorch on this GPU, $(basename "$f" .log | cut -d- -f2-) (ratio: scratchnet throughput / PyTorch's)"
        cat "$f"
    done
    return $failed
}

stop_early() {
    echo "error: $1; the checks after it would mean nothing" >&2
    summary
    exit 1
}

# Steps of one training run, and a column of its per-step log: losses of the training rows.
train_losses() { awk -F, '$3 == "train" { print $4 }' "$1"; }

# ---- tier 1 ----------------------------------------------------------------------------------
run_step devices 1 30 "$bin" devices || stop_early "scratchnet devices failed"
if [ "$device" = cuda ]; then usable='^cuda:0 +usable'; else usable='^emu +usable'; fi
if grep -Eq "$usable" "$out/devices.log"; then
    amend "PASS ($(grep -E "$usable" "$out/devices.log" | cut -c1-100))"
else
    amend "FAIL ($(grep -m1 "^${device}" "$out/devices.log" | cut -c1-120))"
    stop_early "$device is not usable"
fi

# Wait for each kernel, so that a kernel that faults is the one named in the error.
SCRATCHNET_CUDA_SYNC=1 run_step selftest 1 150 "$bin" selftest --device "$device" ||
    stop_early "the selftest failed ($(grep -m3 -i 'fail\|error' "$out/selftest.log" | tr '\n' ' ' | cut -c1-160))"

if wants 1; then
# A short training run, then the same as a captured graph: same seed, same batches, same
# kernels (the autotuner's choices are shared through its cache file), so step by step the
# losses must agree.
if [ $quick -eq 1 ]; then train=(--steps 4 --batch-size 4); else train=(--steps 200 --batch-size 64); fi
train+=(--device "$device" --holdout 0 --seed 1)
if run_step train 1 90 "$bin" train "${train[@]}" --log "$out/train.csv"; then
    mapfile -t plain < <(train_losses "$out/train.csv")
    n=${#plain[@]}
    if [ $quick -eq 1 ]; then
        verdict=$(printf '%s\n' "${plain[@]}" | awk '{ if (!($1 + 0 == $1) || $1 != $1) bad = 1 } END { print bad ? "bad" : "ok" }')
        [ "$verdict" = ok ] && amend "PASS (losses finite: ${plain[0]} -> ${plain[n - 1]}; --quick checks no fall)" ||
            amend "FAIL (a loss is not finite)"
    else
        # The mean loss of the last 20 steps under 90% of the first 20's (on the built-in data,
        # ResNet-20 goes from about 2.6 to 2.1 in 120 steps of 64 on the CPU).
        read -r first last < <(printf '%s\n' "${plain[@]}" |
            awk -v n="$n" 'NR <= 20 { a += $1 } NR > n - 20 { b += $1 } END { printf "%.4f %.4f\n", a / 20, b / 20 }')
        if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 0 && b < 0.9 * a) }'; then
            amend "PASS (mean loss of 20 steps $first -> $last)"
        else
            amend "FAIL (mean loss of 20 steps $first -> $last: did not fall below 90%)"
        fi
    fi
    if run_step cuda-graph 1 90 "$bin" train "${train[@]}" --cuda-graph --log "$out/train-graph.csv"; then
        mapfile -t graph < <(train_losses "$out/train-graph.csv")
        worst=$(paste <(printf '%s\n' "${plain[@]:0:10}") <(printf '%s\n' "${graph[@]:0:10}") |
            awk '{ d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r } END { printf "%.2g", m }')
        if [ "${#graph[@]}" -eq "$n" ] && awk -v w="$worst" 'BEGIN { exit !(w <= 1e-3) }'; then
            amend "PASS (first 10 losses equal to the plain run's within $worst)"
        else
            amend "FAIL (${#graph[@]} steps; first 10 losses differ from the plain run's by up to $worst)"
        fi
    fi
else
    skip cuda-graph 1 "the plain training run failed"
fi

# AlexNet's towers: the training step with and without --towers (the selftest checked that
# the towers compute the same bits); what running the two groups side by side saves.
if [ $quick -eq 1 ]; then
    skip towers 1 "--quick: AlexNet at 227x227 is minutes on the emulator; tests/towers.rs covers it there"
elif run_step towers 1 60 "$bin" bench --device "$device" --suite alexnet --filter "train step" --variants all \
    --json "$out/towers.jsonl"; then
    step_ms() { python3 -c 'import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    if row.get("variant") == sys.argv[2]: print("%.2f" % row["median_ms"]); break' "$out/towers.jsonl" "$1" 2>/dev/null; }
    plain_ms=$(step_ms default)
    towers_ms=$(step_ms towers)
    if [ -n "$towers_ms" ] && [ -n "$plain_ms" ]; then
        amend "PASS (AlexNet step $plain_ms ms plain, $towers_ms ms with towers)"
    else
        amend "FAIL (no plain and towers rows in $out/towers.jsonl)"
    fi
fi

# Data parallelism over two devices (NCCL on cuda, the host-side sum on emu): the run must
# train, with and without --sync-bn, and on GPUs the images per second of two GPUs against one
# (the scaling). NCCL is looked up as libnccl.so; PyTorch's wheel ships libnccl.so.2 alone, so
# a link to it goes on LD_LIBRARY_PATH.
nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
if [ -n "$nccl_dir" ] && [ -e "$nccl_dir/libnccl.so.2" ] && [ ! -e "$nccl_dir/libnccl.so" ]; then
    mkdir -p "$out/nccl-lib" && ln -sf "$nccl_dir/libnccl.so.2" "$out/nccl-lib/libnccl.so"
    export LD_LIBRARY_PATH="$out/nccl-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
gpus=$(grep -Ec '^cuda:[0-9]+ +usable' "$out/devices.log")
if [ "$device" = emu ]; then
    pair=emu:0,emu:1; dp=(--steps 2 --batch-size 4)
else
    pair=cuda:0,cuda:1; dp=(--steps 60 --batch-size 256)
fi
dp+=(--holdout 0 --seed 1 --no-augment)
images_per_sec() { awk -F, '$3 == "train" { v = $NF } END { print v + 0 }' "$1"; }
if [ "$device" = cuda ] && [ "$gpus" -lt 2 ]; then
    skip data-parallel 1 "$gpus GPU here: data parallelism and towers on two devices need two"
elif run_step data-parallel 1 120 "$bin" train "${dp[@]}" --devices "$pair" --data-parallel --log "$out/dp.csv"; then
    if [ "$device" = cuda ] && run_step one-gpu 1 90 "$bin" train "${dp[@]}" --device cuda:0 --log "$out/one.csv"; then
        two=$(images_per_sec "$out/dp.csv"); one=$(images_per_sec "$out/one.csv")
        amend "PASS ($one img/s on one GPU, $two on two: x$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", b > 0 ? a / b : 0 }'))"
    fi
    run_step sync-bn 1 120 "$bin" train "${dp[@]}" --devices "$pair" --data-parallel --sync-bn
fi
# AlexNet's towers on two devices: a profiled step (its copies between the GPUs are rows of
# their own), against the one-GPU step of the towers step above.
if [ "$device" != cuda ]; then
    skip towers-2gpu 1 "the emulator: AlexNet at 227x227 is minutes; tests/towers_on_devices.rs covers it there"
elif [ "$gpus" -lt 2 ]; then
    skip towers-2gpu 1 "$gpus GPU here: a tower per GPU needs two"
elif run_step towers-2gpu 1 120 "$bin" profile --model alexnet --towers --devices cuda:0,cuda:1 --batch-size 128 \
    --steps 3 --trace "$out/towers-2gpu.json"; then
    amend "PASS ($(grep -m1 -o 'step [0-9.]* ms' "$out/towers-2gpu.log") at batch 128 on two GPUs; copies: $(grep -c 'Copy' "$out/towers-2gpu.log") rows)"
fi
fi

# ---- tier 2 ----------------------------------------------------------------------------------
have_torch=0
if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch' 2>/dev/null; then have_torch=1; fi
if [ $quick -eq 1 ]; then
    bench_args=(--batch 1 --size-mb 1 --gemm-size 32 --repeats 1)
else
    bench_args=()
fi
# bench_pair SUITE TIER CAP [BENCH FLAGS]: scratchnet's bench of one suite, then PyTorch on the
# same problems (in the precision the bench file records). With pair_tag set, the step and file
# names carry it (bench-resnet50-bf16).
pair_tag=
bench_pair() {
    local suite=$1$([ -n "$pair_tag" ] && echo "-$pair_tag") tier=$2 cap=$3 bench_suite=$1
    shift 3
    run_step "bench-$suite" "$tier" "$cap" "$bin" bench --device "$device" --suite "$bench_suite" "${bench_args[@]}" "$@" \
        --json "$out/bench-$suite.jsonl"
    local rows=0
    [ -f "$out/bench-$suite.jsonl" ] && rows=$(($(wc -l <"$out/bench-$suite.jsonl") - 1))
    [ "$rows" -gt 0 ] || { skip "torch-$suite" "$tier" "no bench rows"; return; }
    amend "${results[-1]} ($rows rows)"
    if [ -n "$torch_from" ]; then
        if [ -s "$torch_from/torch-$suite.jsonl" ]; then
            cp "$torch_from/torch-$suite.jsonl" "$out/torch-$suite.jsonl"
            skip "torch-$suite" "$tier" "compared with $torch_from/torch-$suite.jsonl"
        else
            skip "torch-$suite" "$tier" "no $torch_from/torch-$suite.jsonl"
        fi
    elif [ $have_torch -eq 0 ]; then
        skip "torch-$suite" "$tier" "python3 with torch not found"
        return
    else
        local torch_device=cuda
        [ "$device" = emu ] && torch_device=cpu
        PYTHONUNBUFFERED=1 run_step "torch-$suite" "$tier" "$cap" python3 "$baseline" "$out/bench-$suite.jsonl" \
            --out "$out/torch-$suite.jsonl" --device "$torch_device"
    fi
    if [ -s "$out/torch-$suite.jsonl" ]; then
        "$bin" bench --compare "$out/bench-$suite.jsonl" "$out/torch-$suite.jsonl" >"$out/compare-$suite.log" 2>&1 ||
            echo "(comparison of $suite failed: $(head -c 200 "$out/compare-$suite.log"))"
    fi
}
if wants 2; then
    if [ $quick -eq 1 ]; then
        skip bench-resnet50 2 "--quick: ResNet-50 at 224x224 is minutes on the emulator"
    else
        bench_pair resnet50 2 150
    fi
    bench_pair memory 2 90
    if [ $quick -eq 1 ]; then
        # The emulator takes seconds for one of AlexNet's classifier products.
        bench_pair gemm 2 60 --filter sgemm
    else
        bench_pair gemm 2 60
    fi
    # The tensor cores: the products and ResNet-50 in BF16 (PyTorch under autocast) and its
    # convolutions in TF32 (PyTorch with TF32 allowed), the issue's goals.
    pair_tag=bf16
    if [ $quick -eq 1 ]; then
        bench_pair gemm 2 60 --filter sgemm --precision bf16
    else
        bench_pair gemm 2 60 --precision bf16
        bench_pair resnet50 2 150 --precision bf16
        pair_tag=tf32
        bench_pair resnet50 2 120 --precision tf32 --no-train-step
    fi
    pair_tag=
fi

# ---- tier 3 ----------------------------------------------------------------------------------
# Memory errors first: no figure means much if a kernel reads out of bounds.
sanitize() {
    if [ "$device" = cuda ] && command -v compute-sanitizer >/dev/null 2>&1; then
        # Without the cache, every buffer has its exact size and every free goes back to the
        # driver, so memcheck sees a read past a buffer's end or after its free.
        SCRATCHNET_NO_CACHE=1 run_step "$1" 3 150 compute-sanitizer --tool "$1" --error-exitcode 3 \
            "$bin" selftest --device cuda
    else
        skip "$1" 3 "compute-sanitizer runs on cuda only"
    fi
}
if wants 3; then
    sanitize memcheck

    if [ $quick -eq 1 ]; then prof=(--batch-size 2 --steps 1); else prof=(--model resnet50 --batch-size 64 --steps 3); fi
    run_step profile 3 60 "$bin" profile --device "$device" "${prof[@]}" --trace "$out/trace.json" &&
        amend "PASS ($(head -1 "$out/profile.log" | cut -c1-110))"

    # One op at a time, every variant, with ptxas's figures beside the times (batch norm: v1 plain
    # against v2 fused, the sliced one-pass statistics).
    for op in conv2d gemm batchnorm; do
        run_step "kernel-$op" 3 60 "$bin" kernel "$op" --device "$device" --json "$out/kernel-$op.jsonl"
    done
    # The same convolution and product in BF16 and TF32: the FP32 kernels on rounded operands
    # beside the two tensor-core tiles, each with its ptxas figures.
    for precision in bf16 tf32; do
        for op in conv2d gemm; do
            run_step "kernel-$op-$precision" 3 60 "$bin" kernel "$op" --device "$device" --precision "$precision" \
                --json "$out/kernel-$op-$precision.jsonl"
        done
    done

    if [ $quick -eq 1 ]; then
        skip networks 3 "--quick: the ImageNet networks are minutes on the emulator"
    else
        for suite in alexnet resnet18 densenet121; do bench_pair "$suite" 3 120; done
    fi

    sanitize racecheck

    if [ "$device" = cuda ]; then
        # ResNet-50 at batch 4096 needs some 400 GB of activations: the allocator must empty its
        # cache, retry once, then end the run with one line that says so (exit 2), not crash.
        run_step oom 3 60 "$bin" profile --device cuda --model resnet50 --batch-size 4096 --steps 1
        if [[ ${results[-1]} != SKIPPED* ]]; then
            if tail -n 1 "$out/oom.log" | grep -q '^error: out of memory on cuda' && [[ ${results[-1]} == *"exit 2"* ]]; then
                amend "PASS ($(tail -n 1 "$out/oom.log" | cut -c1-80)...)"
            else
                amend "FAIL (expected exit 2 and 'error: out of memory on cuda')"
            fi
        fi
        # What capturing the training step as a CUDA graph saves at small batches (ResNet-50).
        for b in 1 4 8; do
            run_step "graph-b$b" 3 45 "$bin" bench --device cuda --suite resnet50 --batch "$b" --filter "train step" \
                --variants all --json "$out/graph-b$b.jsonl"
        done
        run_step towers-trace 3 60 "$bin" profile --model alexnet --device cuda --batch-size 64 --steps 3 --towers \
            --trace "$out/alexnet-towers-trace.json"
    fi
fi

summary
