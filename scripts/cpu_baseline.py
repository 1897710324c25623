#!/usr/bin/env python3
"""Times in ONNX Runtime, on the CPU, the whole-network inferences a `scratchnet bench --json` file lists.

The CPU counterpart of scripts/torch_baseline.py. Where that one times scratchnet's ops in
PyTorch on a GPU, this one times whole networks in eval mode (batch norm with its running
statistics, dropout off) in ONNX Runtime, a well-tuned CPU inference engine:

    scratchnet bench --device cpu --suite inference --json ours.jsonl
    scripts/cpu_baseline.py ours.jsonl --out ort.jsonl
    scratchnet bench --compare ours.jsonl ort.jsonl

For each bench row whose spec is {"op": "inference", "model", "batch", "input": [C, H, W],
"num_classes"} (rows of other ops are skipped), the script
  1. draws random weights for the model (numpy, seeded by the model's name; He-scaled so the
     activations stay of order 1; batch norms with non-trivial γ, β and running statistics)
     and writes them under torchvision's names to a .safetensors file, which scratchnet loads;
  2. builds the same network as an ONNX graph (opset 17) with those weights as initializers;
  3. checks that the two engines agree: the logits of `scratchnet infer --device cpu` and
     ONNX Runtime's on the same batch of 2 images must be within a relative L2 error of 1e-4
     (skipped with --no-check);
  4. times ONNX Runtime at the row's batch: all graph optimizations on, --threads intra-op
     threads (default: as many as scratchnet's thread pool, one per CPU), sequential
     execution. Timing follows scratchnet's rule: two warm-up runs, then at least --repeats
     timed runs and at least 20 ms in all; the median counts.

The output is JSON lines, like the bench file: a header line, then one line per problem, with
the same "key" as the bench row, written and flushed as soon as it is timed. A problem that
fails (an error, or logits that disagree) is reported and recorded with a "failed" reason,
the others still run, and the script then exits with status 1.

Only python3 is needed: if onnxruntime, onnx, numpy or safetensors cannot be imported, the
script makes a virtual environment in target/cpu-baseline-venv, installs pinned versions
there from PyPI (once) and runs itself again with that environment's python.

Usage: scripts/cpu_baseline.py BENCH.jsonl --out ORT.jsonl [--threads N] [--repeats 10]
                               [--filter TEXT] [--scratchnet PATH] [--no-check] [--export-onnx DIR]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "cpu-baseline-venv"
PINS = ["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6", "safetensors==0.8.0"]


def bootstrap():
    """Makes sure the four packages import, re-running this script in a venv that has them if not."""
    try:
        import numpy, onnx, onnxruntime, safetensors  # noqa: F401, E401
        return
    except ImportError as e:
        missing = e.name or str(e)
    if os.environ.get("CPU_BASELINE_VENV"):  # already re-run in the venv: do not loop
        sys.exit(f"error: {missing} cannot be imported even in {VENV}; remove that folder to reinstall")
    python = VENV / "bin" / "python"
    marker = VENV / "pins.txt"  # what was installed, so a later run skips pip
    if not python.exists() or not marker.exists() or marker.read_text().split() != PINS:
        print(f"cpu_baseline: {missing} is missing; installing {' '.join(PINS)} into {VENV}", flush=True)
        steps = [[sys.executable, "-m", "venv", str(VENV)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS]]
        for cmd in steps[(1 if python.exists() else 0):]:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if done.returncode != 0:
                sys.exit(f"error: `{' '.join(cmd[:4])} ...` failed:\n{done.stdout.strip()}")
        marker.write_text("\n".join(PINS) + "\n")
    else:
        print(f"cpu_baseline: running in {VENV}", flush=True)
    os.environ["CPU_BASELINE_VENV"] = "1"
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    bootstrap()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from bench_files import JsonLines, read_bench  # noqa: E402

MIN_TOTAL_MS = 20.0
MAX_RUNS = 1000
CHECK_BATCH = 2
MAX_REL_L2 = 1e-4
OPSET = 17


# --- The networks ---------------------------------------------------------------------------
#
# A Net collects two things at once as a builder method is called: the weights (a dict from
# torchvision's parameter names to float32 arrays, which becomes the .safetensors file) and the
# ONNX nodes that use them (the weights are the graph's initializers under the same names).
# Each layer method takes the name of its input value and returns the name of its output.


class Net:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.weights = {}
        self.nodes = []

    def param(self, name, array):
        self.weights[name] = np.ascontiguousarray(array, dtype=np.float32)
        return name

    def op(self, op_type, inputs, **attrs):
        out = f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x, name, cin, cout, k, stride=1, pad=0, groups=1, bias=False):
        # He (Kaiming) normal: std √(2 / fan_in) keeps the mean square constant through a ReLU.
        fan_in = cin // groups * k * k
        w = self.param(f"{name}.weight", self.rng.normal(0, math.sqrt(2 / fan_in), (cout, cin // groups, k, k)))
        inputs = [x, w] + ([self.param(f"{name}.bias", self.rng.normal(0, 0.1, cout))] if bias else [])
        return self.op("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups)

    def bn(self, x, name, c, gamma=1.0):
        """Eval-mode batch norm: (x − running_mean) / √(running_var + ε) · γ + β, ε = 1e-5.
        `gamma` scales γ down for the last batch norm of a residual branch: adding the branch to
        its shortcut then grows the activations by a few per cent a block instead of doubling
        them (ResNet-152's logits stay of order 10 rather than 2^50)."""
        p = [self.param(f"{name}.weight", gamma * self.rng.uniform(0.5, 1.5, c)),
             self.param(f"{name}.bias", self.rng.normal(0, 0.1, c)),
             self.param(f"{name}.running_mean", self.rng.normal(0, 0.1, c)),
             self.param(f"{name}.running_var", self.rng.uniform(0.5, 1.5, c))]
        # (torchvision's num_batches_tracked is left out: scratchnet's loader allows that.)
        return self.op("BatchNormalization", [x] + p, epsilon=1e-5)

    def linear(self, x, name, cin, cout, gain=2.0):
        # Gemm with transB: y = x · Wᵀ + b, W stored [out, in] as in torch.nn.Linear.
        w = self.param(f"{name}.weight", self.rng.normal(0, math.sqrt(gain / cin), (cout, cin)))
        b = self.param(f"{name}.bias", self.rng.normal(0, 0.1, cout))
        return self.op("Gemm", [x, w, b], transB=1)

    def relu(self, x):
        return self.op("Relu", [x])

    def add(self, a, b):
        return self.op("Add", [a, b])

    def concat(self, xs):
        return self.op("Concat", xs, axis=1)

    def maxpool(self, x, k, stride, pad=0):  # padding is −∞, as in scratchnet
        return self.op("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def avgpool(self, x, k, stride):  # unpadded, so count_include_pad does not matter
        return self.op("AveragePool", [x], kernel_shape=[k, k], strides=[stride, stride])

    def gap_flatten(self, x):  # global average pool, [N, C, H, W] → [N, C]
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)

    def to_onnx(self, logits, input_shape, num_classes):
        """The graph as an ONNX model: input "x" [N, C, H, W] and output "logits" [N, K], the
        batch size N left free so that one session serves the check and the timed batch."""
        self.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        graph = helper.make_graph(
            self.nodes, "scratchnet",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
            [numpy_helper.from_array(a, n) for n, a in self.weights.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="scratchnet cpu_baseline")
        model.ir_version = 8  # what opset 17 needs: older runtimes can read it too
        onnx.checker.check_model(model)
        return model


def alexnet(net, x, k):
    """src/models/alexnet.rs: the paper's (Caffe) AlexNet for 227×227 images: grouped conv2/4/5,
    LRN (size 5, α = 1e-4 divided by size as in ONNX and PyTorch, β = 0.75, k = 2) after conv1
    and conv2, overlapping 3×3/2 max pools; the dropouts do nothing in eval mode."""
    def lrn(h):
        return net.op("LRN", [h], size=5, alpha=1e-4, beta=0.75, bias=2.0)
    h = net.maxpool(lrn(net.relu(net.conv(x, "conv1", 3, 96, 11, stride=4, bias=True))), 3, 2)
    h = net.maxpool(lrn(net.relu(net.conv(h, "conv2", 96, 256, 5, pad=2, groups=2, bias=True))), 3, 2)
    h = net.relu(net.conv(h, "conv3", 256, 384, 3, pad=1, bias=True))
    h = net.relu(net.conv(h, "conv4", 384, 384, 3, pad=1, groups=2, bias=True))
    h = net.maxpool(net.relu(net.conv(h, "conv5", 384, 256, 3, pad=1, groups=2, bias=True)), 3, 2)
    h = net.op("Flatten", [h], axis=1)  # C, H, W order: 256·6·6 = 9216
    h = net.relu(net.linear(h, "fc6", 9216, 4096))
    h = net.relu(net.linear(h, "fc7", 4096, 4096))
    return net.linear(h, "fc8", 4096, k, gain=1.0)


def basic_block(net, x, name, cin, planes, stride):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3×3 convolutions."""
    h = net.relu(net.bn(net.conv(x, f"{name}.conv1", cin, planes, 3, stride, 1), f"{name}.bn1", planes))
    h = net.bn(net.conv(h, f"{name}.conv2", planes, planes, 3, 1, 1), f"{name}.bn2", planes, gamma=0.2)
    return net.relu(net.add(h, shortcut(net, x, name, cin, planes, stride)))


def bottleneck_block(net, x, name, cin, planes, stride):
    """ResNet v1.5: 1×1 → 3×3 (with the stride) → 1×1 to 4·planes, plus the shortcut."""
    cout = 4 * planes
    h = net.relu(net.bn(net.conv(x, f"{name}.conv1", cin, planes, 1), f"{name}.bn1", planes))
    h = net.relu(net.bn(net.conv(h, f"{name}.conv2", planes, planes, 3, stride, 1), f"{name}.bn2", planes))
    h = net.bn(net.conv(h, f"{name}.conv3", planes, cout, 1), f"{name}.bn3", cout, gamma=0.2)
    return net.relu(net.add(h, shortcut(net, x, name, cin, cout, stride)))


def shortcut(net, x, name, cin, cout, stride):
    """Identity, or where the block changes the shape a 1×1 convolution with the block's stride
    and a batch norm (`downsample.0/.1`; option B, for the CIFAR nets too)."""
    if stride == 1 and cin == cout:
        return x
    return net.bn(net.conv(x, f"{name}.downsample.0", cin, cout, 1, stride), f"{name}.downsample.1", cout)


def resnet(net, x, depth, k):
    """src/models/resnet.rs (torchvision's ImageNet ResNets) and resnet_cifar.rs (He et al.'s
    CIFAR nets: 3×3 stem to 16 channels, no max pool, three stages at 16/32/64 channels)."""
    if depth in (20, 32, 44, 56, 110):
        stages, block, expansion, widths, cin = [(depth - 2) // 6] * 3, basic_block, 1, [16, 32, 64], 16
        h = net.relu(net.bn(net.conv(x, "conv1", 3, 16, 3, 1, 1), "bn1", 16))
    else:
        stages, bottleneck = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False), 50: ([3, 4, 6, 3], True),
                              101: ([3, 4, 23, 3], True), 152: ([3, 8, 36, 3], True)}[depth]
        block, expansion = (bottleneck_block, 4) if bottleneck else (basic_block, 1)
        widths, cin = [64, 128, 256, 512], 64
        h = net.relu(net.bn(net.conv(x, "conv1", 3, 64, 7, 2, 3), "bn1", 64))
        h = net.maxpool(h, 3, 2, 1)
    for stage, (count, planes) in enumerate(zip(stages, widths)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            h = block(net, h, f"layer{stage + 1}.{i}", cin, planes, stride)
            cin = planes * expansion
    return net.linear(net.gap_flatten(h), "fc", cin, k, gain=1.0)


DENSENETS = {  # growth, layers per block, stem channels, CIFAR stem (src/models/densenet.rs)
    "densenet121": (32, [6, 12, 24, 16], 64, False),
    "densenet169": (32, [6, 12, 32, 32], 64, False),
    "densenet201": (32, [6, 12, 48, 32], 64, False),
    "densenet161": (48, [6, 12, 36, 24], 96, False),
    "densenet_bc100": (12, [16, 16, 16], 24, True),
}


def densenet(net, x, name, k):
    """Dense layer: concat(all earlier features) → BN → ReLU → 1×1 conv (4·growth) → BN → ReLU →
    3×3 conv (growth). Transition: BN → ReLU → 1×1 conv (half the channels) → 2×2/2 avg pool."""
    growth, blocks, c, cifar = DENSENETS[name]
    if cifar:
        h = net.conv(x, "features.conv0", 3, c, 3, 1, 1)
    else:
        h = net.relu(net.bn(net.conv(x, "features.conv0", 3, c, 7, 2, 3), "features.norm0", c))
        h = net.maxpool(h, 3, 2, 1)
    for b, layers in enumerate(blocks, 1):
        features = [h]
        for i in range(1, layers + 1):
            p, cin = f"features.denseblock{b}.denselayer{i}", c + (i - 1) * growth
            t = features[0] if len(features) == 1 else net.concat(features)
            t = net.conv(net.relu(net.bn(t, f"{p}.norm1", cin)), f"{p}.conv1", cin, 4 * growth, 1)
            t = net.conv(net.relu(net.bn(t, f"{p}.norm2", 4 * growth)), f"{p}.conv2", 4 * growth, growth, 3, 1, 1)
            features.append(t)
        h, c = net.concat(features), c + layers * growth
        if b < len(blocks):
            p = f"features.transition{b}"
            h = net.conv(net.relu(net.bn(h, f"{p}.norm", c)), f"{p}.conv", c, c // 2, 1)
            h, c = net.avgpool(h, 2, 2), c // 2
    h = net.relu(net.bn(h, "features.norm5", c))
    return net.linear(net.gap_flatten(h), "classifier", c, k, gain=1.0)


MODELS = (["alexnet"] + [f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)] + list(DENSENETS))


def build(model, input_shape, num_classes, seed):
    """The weights (name → array) and the ONNX model of one network, drawn from `seed` and the
    model's name (so every row of one model, at any batch, gets the same weights)."""
    net = Net([seed, zlib.crc32(model.encode())])
    if model == "alexnet":
        logits = alexnet(net, "x", num_classes)
    elif model.startswith("resnet"):
        logits = resnet(net, "x", int(model[len("resnet"):]), num_classes)
    else:
        logits = densenet(net, "x", model, num_classes)
    return net.weights, net.to_onnx(logits, input_shape, num_classes)


# --- Checking and timing --------------------------------------------------------------------


def session(model_proto, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # folds BN, fuses ReLU
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def check_logits(sess, weights, spec, scratchnet, tmp, seed):
    """Runs scratchnet and ONNX Runtime on the same images; (max |Δ|, relative L2 error)."""
    model, k = spec["model"], spec["num_classes"]
    w, x_path, y_path = (tmp / f"{model}.safetensors", tmp / "x.npy", tmp / "y.npy")
    save_file(weights, str(w))
    x = np.random.default_rng(seed + 1).standard_normal([min(CHECK_BATCH, spec["batch"]), *spec["input"]], np.float32)
    np.save(x_path, x)
    cmd = [scratchnet, "infer", "--model", model, "--weights", w, "--input", x_path, "--output", y_path,
           "--num-classes", str(k), "--device", "cpu"]
    done = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        lines = done.stdout.strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"scratchnet infer exited with {done.returncode}: {lines[-1]}")
    ours = np.load(y_path).astype(np.float64)
    theirs = sess.run(["logits"], {"x": x})[0].astype(np.float64)
    if ours.shape != theirs.shape:
        raise RuntimeError(f"scratchnet's logits are {list(ours.shape)}, ONNX Runtime's {list(theirs.shape)}")
    diff = ours - theirs
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(ours), 1e-30))


def timer(repeats, fn, warmup=2):
    """Median and minimum milliseconds of fn(), and the number of timed runs (scratchnet's rule)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or (sum(times) < MIN_TOTAL_MS and len(times) < MAX_RUNS):
        for _ in range(max(1, min(repeats, MAX_RUNS - len(times)))):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0], len(times)


def check_spec(spec):
    """Refuses a spec this script cannot build, with the reason."""
    if spec.get("model") not in MODELS:
        raise ValueError(f"unknown model {spec.get('model')!r} (known: {', '.join(MODELS)})")
    shape, batch, k = spec.get("input"), spec.get("batch"), spec.get("num_classes")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ValueError(f"input must be [C, H, W], got {shape!r}")
    if shape[0] != 3:
        raise ValueError(f"the networks take 3-channel images, got {shape[0]} channels")
    if spec["model"] == "alexnet" and shape != [3, 227, 227]:
        raise ValueError(f"alexnet takes 3×227×227 images (its fc6 reads 256×6×6 values), got {shape}")
    if not (isinstance(batch, int) and batch > 0 and isinstance(k, int) and k >= 2):
        raise ValueError(f"batch must be a positive integer and num_classes at least 2, got {batch} and {k}")


# --- Files ----------------------------------------------------------------------------------


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def default_threads():
    """As many threads as scratchnet's pool (rayon): RAYON_NUM_THREADS if set, else the CPUs this
    process may run on."""
    try:
        return int(os.environ["RAYON_NUM_THREADS"])
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- Main -----------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", help="scratchnet bench --device cpu --json output")
    ap.add_argument("--out", required=True, help="where to write ONNX Runtime's timings (JSON lines)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--filter", default=None, help="only rows whose label contains this text")
    ap.add_argument("--scratchnet", default=str(REPO / "target" / "release" / "scratchnet"),
                    help="the binary whose `infer` checks the logits (default: %(default)s)")
    ap.add_argument("--no-check", action="store_true", help="time only, without comparing logits")
    ap.add_argument("--export-onnx", metavar="DIR", default=None, help="also keep each network's .onnx file here")
    ap.add_argument("--seed", type=int, default=0, help="of the random weights and inputs")
    a = ap.parse_args()

    if a.threads < 1 or a.repeats < 1:
        sys.exit("error: --threads and --repeats must be at least 1")
    try:
        header, rows = read_bench(a.bench)
        if header is None:
            raise ValueError("its first line is not a header (tool, device)")
        for row in rows:
            row["key"], row["suite"], row["label"], row["spec"]["op"]
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: {a.bench} cannot be read: {e.strerror if isinstance(e, OSError) else e}")
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {a.bench} is not a bench results file: {e}")
    if header.get("precision", "fp32") != "fp32":
        sys.exit(f"error: {a.bench} was measured in {header['precision']}; this baseline runs in fp32 only")
    if not a.no_check and not (os.path.isfile(a.scratchnet) and os.access(a.scratchnet, os.X_OK)):
        sys.exit(f"error: no scratchnet binary at {a.scratchnet} to check the logits with "
                 "(cargo build --release, --scratchnet PATH, or --no-check)")
    if a.export_onnx:
        try:
            os.makedirs(a.export_onnx, exist_ok=True)
        except OSError as e:
            sys.exit(f"error: {a.export_onnx} cannot be made: {e.strerror}")

    if os.path.exists(a.out) and os.path.samefile(a.out, a.bench):
        sys.exit(f"error: --out {a.out} is the bench file itself")
    try:
        out = JsonLines(a.out)
    except OSError as e:
        sys.exit(f"error: {a.out} cannot be written: {e.strerror}")
    name = f"CPU ({a.threads} threads), {cpu_name()}"
    print(f"ONNX Runtime {ort.__version__} on {name}, all graph optimizations, fp32")
    out.write({"tool": "cpu_baseline", "onnxruntime": ort.__version__, "device": "cpu", "device_name": name,
               "threads": a.threads, "precision": "fp32"})

    done, failed, other_ops, seen = 0, 0, 0, set()
    built = None  # (model, input, classes) → (session, logits check) of the last network, reused across batches
    with tempfile.TemporaryDirectory(prefix="cpu_baseline-") as tmp:
        for row in rows:
            key, spec, suite, label = row["key"], row["spec"], row["suite"], row["label"]
            if spec["op"] != "inference":
                other_ops += 1
                continue
            if not row.get("primary", True) or key in seen or (a.filter and a.filter not in label):
                continue
            seen.add(key)
            try:
                check_spec(spec)
                which = (spec["model"], tuple(spec["input"]), spec["num_classes"])
                if built is None or built[0] != which:
                    built = None  # free the last network before building the next
                    weights, proto = build(spec["model"], spec["input"], spec["num_classes"], a.seed)
                    if a.export_onnx:
                        onnx.save(proto, os.path.join(a.export_onnx, f"{spec['model']}-{spec['num_classes']}.onnx"))
                    sess = session(proto, a.threads)
                    del proto
                    check = None if a.no_check else check_logits(sess, weights, spec, a.scratchnet, Path(tmp), a.seed)
                    built = (which, sess, check)
                _, sess, check = built
                if check is not None and not check[1] <= MAX_REL_L2:
                    raise RuntimeError(f"logits disagree with scratchnet's: relative L2 error {check[1]:.2e} "
                                       f"> {MAX_REL_L2:.0e} (max |diff| {check[0]:.2e})")
                x = np.random.default_rng(a.seed).standard_normal([spec["batch"], *spec["input"]], np.float32)
                median, low, runs = timer(a.repeats, lambda: sess.run(["logits"], {"x": x}))
            except Exception as e:  # one failing problem is reported, not fatal
                reason = f"{type(e).__name__}: {e}".splitlines()[0]
                print(f"{suite:<12} {label:<52} failed: {reason}", flush=True)
                out.write({"key": key, "suite": suite, "label": label, "failed": reason})
                failed += 1
                continue
            result = {"key": key, "suite": suite, "label": label, "median_ms": median, "min_ms": low, "runs": runs,
                      "images_per_s": spec["batch"] / (median / 1e3)}
            if check is not None:
                result.update(logits_max_abs=check[0], logits_rel_l2=check[1])
            out.write(result)
            done += 1
            agree = f"  logits rel L2 {check[1]:.1e}" if check is not None else ""
            print(f"{suite:<12} {label:<52} {median:>10.3f} ms{agree}", flush=True)
    out.close()
    skipped = f", {other_ops} rows of other ops skipped" if other_ops else ""
    print(f"wrote {a.out} ({done} rows{', ' + str(failed) + ' failed' if failed else ''}{skipped})")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
