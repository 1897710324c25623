#!/usr/bin/env python3
"""Times in PyTorch the problems a `scratchnet bench --json` file lists, on the same GPU.

Each row of the bench file carries a spec of its problem (op, direction, shapes); this script
runs the same problem through PyTorch's own kernels (cuDNN for convolutions and batch norm,
cuBLAS for products) and writes a file of the same form, whose rows carry the same keys, so
that `scratchnet bench --compare ours.json torch.json` can set them side by side.

Both files are JSON lines: a header line, then one line per problem, written and flushed as
soon as it is timed, so that a run stopped by a deadline keeps the rows it measured. The bench
file may also be the older single document with a "rows" list. Only `torch` is needed; the
training steps of the torchvision networks (ResNets, DenseNets) need `torchvision` too, and are
listed as skipped without it.

The precision is the bench file's (`scratchnet bench --precision`, recorded in its header;
--precision overrides it), set up as a PyTorch user would: fp32 is true FP32 (TF32 switched off
for cuDNN and for matmul); tf32 allows TF32 in both (PyTorch's default for convolutions);
bf16 and fp16 run the convolutions, linear layers and products under
`torch.autocast(dtype=...)`, and their backward passes on operands cast to that type, as
autograd under autocast saves them; the training steps use autocast, and a GradScaler for
fp16. cuDNN's benchmark mode is on (scratchnet's autotuner does the same
job). Timing follows the same rule as scratchnet's: two warm-up runs, then at least --repeats
timed runs and at least 20 ms in all, each between two CUDA events; the median counts.

Usage: scripts/torch_baseline.py BENCH.json --out TORCH.json [--device cuda] [--repeats 10]
                                  [--filter TEXT] [--no-train-step] [--precision fp32|tf32|bf16|fp16]
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_files import JsonLines, read_bench

MIN_TOTAL_MS = 20.0

# The precision of the run (main sets it): None for fp32 and tf32, else the autocast dtype.
AUTOCAST = None


def low(t):
    """An operand as the backward kernels under autocast receive it."""
    return t if AUTOCAST is None else t.to(AUTOCAST)


def autocast(fn):
    """fn run under torch.autocast when the precision is a 16-bit one."""
    if AUTOCAST is None:
        return fn

    def run():
        with torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", dtype=AUTOCAST):
            return fn()
    return run
MAX_RUNS = 1000


def timer(device, repeats, fn, warmup=2):
    """Median and minimum milliseconds of fn(), and the number of timed runs."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    while len(times) < repeats or (sum(times) < MIN_TOTAL_MS and len(times) < MAX_RUNS):
        batch = max(1, min(repeats, MAX_RUNS - len(times)))
        if cuda:
            events = []
            for _ in range(batch):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events.append((start, end))
            torch.cuda.synchronize(device)
            times += [s.elapsed_time(e) for s, e in events]
        else:
            for _ in range(batch):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0], len(times)


def pattern(shape, device, seed=0):
    """Inputs in [-1, 1): values do not matter for timing, but must not all be alike."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1).to(device)


def conv(spec, dev):
    x_shape, w_shape = spec["x"], spec["w"]
    args = dict(stride=tuple(spec["stride"]), padding=tuple(spec["padding"]),
                dilation=tuple(spec["dilation"]), groups=spec["groups"])
    w = pattern(w_shape, dev, 2)
    b = pattern([w_shape[0]], dev, 3) if spec["bias"] else None
    x = pattern(x_shape, dev, 1)
    y_shape = F.conv2d(x, w, b, **args).shape
    dy = pattern(y_shape, dev, 4)
    p = spec["pass"]
    if p == "forward":
        if spec["relu"]:
            # PyTorch eager runs the convolution and then the ReLU in place: two kernels.
            return autocast(lambda: F.conv2d(x, w, b, **args).relu_())
        return autocast(lambda: F.conv2d(x, w, b, **args))
    x, w, dy = low(x), low(w), low(dy)
    if p == "backward_data":
        return lambda: torch.nn.grad.conv2d_input(x_shape, w, dy, **args)
    return lambda: torch.nn.grad.conv2d_weight(x, w_shape, dy, **args)


def linear(spec, dev):
    n, k, m = spec["n"], spec["in"], spec["out"]
    x, w = pattern([n, k], dev, 1), pattern([m, k], dev, 2)
    b = pattern([m], dev, 3) if spec["bias"] else None
    dy = pattern([n, m], dev, 4)
    p = spec["pass"]
    if p == "forward":
        if spec["relu"]:
            return autocast(lambda: F.linear(x, w, b).relu_())
        return autocast(lambda: F.linear(x, w, b))
    x, w, dy = low(x), low(w), low(dy)
    if p == "backward_data":
        return lambda: dy @ w
    return lambda: dy.t() @ x


def batch_norm(spec, dev):
    shape = spec["x"]
    c = shape[1]
    x = pattern(shape, dev, 1)
    weight, bias = torch.ones(c, device=dev), torch.zeros(c, device=dev)
    rm, rv = torch.zeros(c, device=dev), torch.ones(c, device=dev)
    r = pattern(shape, dev, 5) if spec["residual"] else None
    relu = spec["relu"]

    def forward():
        y = F.batch_norm(x, rm, rv, weight, bias, training=True, momentum=0.1, eps=1e-5)
        if r is not None:
            y = y.add_(r)
        return y.relu_() if relu else y

    if spec["pass"] == "forward":
        return forward
    # The backward eager autograd runs: ReLU's (threshold_backward), then batch norm's. The
    # residual's gradient is the same tensor, so it costs nothing.
    y = forward()
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(x, weight, bias, rm, rv, True, 0.1, 1e-5)
    dy = pattern(shape, dev, 4)

    def backward():
        g = torch.ops.aten.threshold_backward(dy, y, 0) if relu else dy
        return torch.ops.aten.native_batch_norm_backward(
            g, x, weight, rm, rv, save_mean, save_invstd, True, 1e-5, [True, True, True])

    return backward


def pools(spec, dev):
    x = pattern(spec["x"], dev, 1)
    k, s, p = tuple(spec["kernel"]), tuple(spec["stride"]), tuple(spec["padding"])
    if spec["op"] == "max_pool2d":
        if spec["pass"] == "forward":
            return lambda: F.max_pool2d(x, k, s, p)
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        dy = pattern(y.shape, dev, 4)
        return lambda: torch.ops.aten.max_pool2d_with_indices_backward(dy, x, k, s, p, (1, 1), False, idx)
    if spec["pass"] == "forward":
        return lambda: F.avg_pool2d(x, k, s, p, count_include_pad=True)
    y = F.avg_pool2d(x, k, s, p, count_include_pad=True)
    dy = pattern(y.shape, dev, 4)
    return lambda: torch.ops.aten.avg_pool2d_backward(dy, x, k, s, p, False, True, None)


def global_avg_pool(spec, dev):
    shape = spec["x"]
    x = pattern(shape, dev, 1)
    if spec["pass"] == "forward":
        return lambda: x.mean((2, 3))
    hw = shape[2] * shape[3]
    dy = pattern(shape[:2], dev, 4)
    return lambda: (dy / hw)[:, :, None, None].expand(shape).contiguous()


def lrn(spec, dev):
    x = pattern(spec["x"], dev, 1).requires_grad_(spec["pass"] != "forward")
    args = (spec["size"], spec["alpha"], spec["beta"], spec["k"])
    if spec["pass"] == "forward":
        def forward():
            with torch.no_grad():
                return F.local_response_norm(x, *args)
        return forward
    with torch.enable_grad():
        # PyTorch's LRN is a composition of ops (pad, average pool, pow, div); its backward
        # is their backwards, run by autograd.
        y = F.local_response_norm(x, *args)
    dy = pattern(spec["x"], dev, 4)
    return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)


def dropout(spec, dev):
    x = pattern(spec["x"], dev, 1)
    p = spec["p"]
    if spec["pass"] == "forward":
        return lambda: torch.ops.aten.native_dropout(x, p, True)
    _, mask = torch.ops.aten.native_dropout(x, p, True)
    dy = pattern(spec["x"], dev, 4)
    return lambda: torch.ops.aten.native_dropout_backward(dy, mask, 1.0 / (1.0 - p))


def concat(spec, dev):
    n, h, w, channels = spec["n"], spec["h"], spec["w"], spec["channels"]
    if spec["pass"] == "forward":
        pieces = [pattern([n, c, h, w], dev, i) for i, c in enumerate(channels)]
        return lambda: torch.cat(pieces, 1)
    dy = pattern([n, sum(channels), h, w], dev, 4)
    # Autograd hands back views of dy; scratchnet materialises each piece, so this does too.
    return lambda: [t.contiguous() for t in torch.split(dy, channels, 1)]


def elementwise(spec, dev):
    op, n = spec["op"], spec["numel"]
    a, b = pattern([n], dev, 1), pattern([n], dev, 2)
    if op == "relu":
        if spec["pass"] == "forward":
            return lambda: torch.relu(a)
        return lambda: torch.ops.aten.threshold_backward(b, a, 0)
    if op == "add":
        return lambda: a + b
    if op == "add_assign":
        return lambda: a.add_(b)
    if op == "copy":
        return lambda: b.copy_(a)
    if op == "sgd":
        param = nn.Parameter(a.clone())
        param.grad = b
        kwargs = dict(lr=1e-6, momentum=spec["momentum"], weight_decay=spec["weight_decay"])
        try:
            opt = torch.optim.SGD([param], fused=dev.type == "cuda", **kwargs)
            opt.step()
        except (RuntimeError, TypeError):
            opt = torch.optim.SGD([param], foreach=True, **kwargs)
        return opt.step
    raise KeyError(op)


class AlexNet(nn.Module):
    """The paper's AlexNet as scratchnet builds it: 96-256-384-384-256 filters, conv2/4/5 in two
    groups (the two GPUs' towers), local response normalisation, 227×227 input."""

    def __init__(self, num_classes):
        super().__init__()
        lrn_ = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, 4), nn.ReLU(inplace=True), lrn_(), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), lrn_(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(
            nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class NeedsTorchvision(Exception):
    """A problem that needs torchvision, which is not installed: skipped, not failed."""


def build_model(name, num_classes, memory_efficient=False):
    if name == "alexnet":
        return AlexNet(num_classes)
    try:
        import torchvision
    except ImportError as e:
        raise NeedsTorchvision(f"the {name} training step needs torchvision ({e})") from None
    if name.startswith("densenet"):
        return getattr(torchvision.models, name)(num_classes=num_classes, memory_efficient=memory_efficient)
    return getattr(torchvision.models, name)(num_classes=num_classes)


def train_step_run(spec, dev, memory_efficient=False):
    model = build_model(spec["model"], spec["num_classes"], memory_efficient).to(dev).train()
    batch = spec["batch"]
    x = pattern([batch] + spec["input"], dev, 1)
    y = (torch.arange(batch) % spec["num_classes"]).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    if AUTOCAST is None:
        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return step

    # Mixed precision as the PyTorch documentation shows it: the forward pass and the loss
    # under autocast, backward outside it; FP16 scales the loss (BF16 needs no scaler).
    scaler = torch.amp.GradScaler(dev.type, enabled=AUTOCAST == torch.float16)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=AUTOCAST):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def train_step(spec, dev, repeats):
    """Times a training step and measures its peak memory (torchvision's DenseNets with
    memory_efficient=True when the spec asks for scratchnet's memory-efficient mode)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    step = train_step_run(spec, dev, spec.get("memory_efficient", False))
    median, low, runs = timer(dev, min(repeats, 5), step)
    out = {"median_ms": median, "min_ms": low, "runs": runs, "images_per_s": spec["batch"] / (median / 1e3)}
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


MAKERS = {
    "conv2d": conv, "linear": linear, "batch_norm": batch_norm, "max_pool2d": pools,
    "avg_pool2d": pools, "global_avg_pool": global_avg_pool, "lrn": lrn, "dropout": dropout,
    "concat": concat, "relu": elementwise, "add": elementwise, "add_assign": elementwise,
    "copy": elementwise, "sgd": elementwise,
}


def matmul(spec, dev):
    a, b = pattern([spec["m"], spec["k"]], dev, 1), pattern([spec["k"], spec["n"]], dev, 2)
    return autocast(lambda: a @ b)


MAKERS["matmul"] = matmul


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="scratchnet bench --json output")
    ap.add_argument("--out", required=True, help="where to write PyTorch's timings (JSON)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--filter", default=None, help="only rows whose label contains this text")
    ap.add_argument("--no-train-step", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16", "fp16"], default=None,
                    help="default: the precision the bench file was measured in")
    a = ap.parse_args()

    try:
        header, rows = read_bench(a.bench)
        header = header or {}
        for row in rows:
            row["key"], row["spec"], row["suite"], row["label"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {a.bench} is not a bench results file: {e}")
    dev = torch.device(a.device)
    precision = a.precision or header.get("precision", "fp32")
    global AUTOCAST
    AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = True
    torch.set_grad_enabled(False)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    mode = {"fp32": "FP32, TF32 off", "tf32": "TF32 allowed", "bf16": "autocast bf16", "fp16": "autocast fp16"}
    print(f"PyTorch {torch.__version__} on {name}, cuDNN {torch.backends.cudnn.version()}, {mode[precision]}")
    try:
        out = JsonLines(a.out)
    except OSError as e:
        sys.exit(f"error: {a.out} cannot be written: {e}")
    out.write({"tool": "torch_baseline", "torch": torch.__version__, "device": str(dev), "device_name": name,
               "cudnn": torch.backends.cudnn.version(), "tf32": precision == "tf32", "precision": precision})

    out_rows, seen, skipped = [], set(), 0
    for row in rows:
        key, spec = row["key"], row["spec"]
        if not row.get("primary", True) or key in seen:
            continue
        if a.filter and a.filter not in row["label"]:
            continue
        if spec["op"] == "train_step" and a.no_train_step:
            continue
        seen.add(key)
        try:
            if spec["op"] == "train_step":
                with torch.enable_grad():
                    result = train_step(spec, dev, a.repeats)
            else:
                median, low, runs = timer(dev, a.repeats, MAKERS[spec["op"]](spec, dev))
                result = {"median_ms": median, "min_ms": low, "runs": runs}
        except NeedsTorchvision as e:
            print(f"{row['suite']:<12} {row['label']:<52} skipped: {e}", flush=True)
            out.write({"key": key, "suite": row["suite"], "label": row["label"], "skipped": str(e)})
            skipped += 1
            continue
        except Exception as e:  # one failing problem (out of memory, an op missing) is reported, not fatal
            print(f"{row['suite']:<12} {row['label']:<52} failed: {type(e).__name__}: {e}".splitlines()[0])
            continue
        result.update({"key": key, "suite": row["suite"], "label": row["label"]})
        out.write(result)
        out_rows.append(result)
        extra = f"  peak {result['peak_mb']:.0f} MiB" if "peak_mb" in result else ""
        print(f"{row['suite']:<12} {row['label']:<52} {result['median_ms']:>10.3f} ms{extra}", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    out.close()
    print(f"wrote {a.out} ({len(out_rows)} rows" + (f", {skipped} skipped: no torchvision)" if skipped else ")"))
    if not all(math.isfinite(r["median_ms"]) for r in out_rows):
        sys.exit("error: a timing is not finite")


if __name__ == "__main__":
    main()
