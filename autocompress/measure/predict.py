"""Latency predicted from a lookup table, for a target device that is not at hand.

``profile_device`` runs once *on the target*: it times single-op ONNX graphs (Conv, depthwise Conv, Gemm,
pooling, elementwise, Quantize/DequantizeLinear; fp32 and int8 QDQ U8S8) in ONNX Runtime as the profile
says and writes ``<NAME>.table.json`` next to a new profile with ``latency.mode: predict``.
``predict_latency`` then walks a candidate's ONNX graph anywhere, maps each node to the table and sums.

Mapping rules (ONNX Runtime's CPU fusions, so the table describes what actually runs):
* a Conv/Gemm/MatMul/pool/elementwise node is int8 when its activation input comes from a
  DequantizeLinear and all its outputs go to QuantizeLinear (ORT fuses the QDQ group into QLinear* ops);
* Relu/Clip right after a Conv or Add (directly, or through a Q->DQ pair) is fused: cost 0;
* DequantizeLinear of an initializer (weights, bias) is folded: cost 0; a Q->DQ pair between int8 nodes
  is absorbed: cost 0; a QuantizeLinear after a float producer and a DequantizeLinear feeding a float
  consumer (or the graph output) run for real and are costed by element count;
* shape-only nodes (Reshape, Flatten, Transpose, Concat...) cost 0;
* inside one op kind/kernel/stride/dtype, the time is interpolated by a local log-linear fit on
  (log channels in, log channels out, log batch*pixels) over the nearest measured configurations;
  an unmeasured group falls back to the nearest configuration of the op scaled by MACs.
Single-op times are stored net of the per-inference overhead (an Identity graph), added back once.

Whole-model calibration: isolated single-op timings miss what a whole graph pays or saves (layout
reorders, fusions, memory traffic, thread hand-offs), so their sum is biased. After the grid,
``build_table`` measures a few calibration models (zoo resnet18 / mobilenet_v2, uniformly pruned, fp32
and int8, built with the product's own prune / export / quantize stages; ratios chosen so the benchmark's
held-out candidates never coincide with them) with ``measure_latency`` and fits, per dtype,
``log(measured) = alpha + beta * log(sum of op predictions + overhead)`` (2 parameters; beta = 1 when
there is a single model). ``predict_latency`` applies it for the model's dtype (int8 when a Conv is
QDQ-wrapped or a QLinearConv/ConvInteger is present); tables without ``calibration`` are used as is.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from ..config import HardwareProfile, load_profile, parse, read_yaml, resolve_relative
from ..errors import ConfigError, StageError
from . import hardware
from .latency import LatencyResult, Runner, time_blocks

TABLE_VERSION = 2  # 2: conv groups keyed on channel alignment (a16 / a8 / u)
OPSET = 17
_EW = ("relu", "sigmoid", "hardsigmoid", "hardswish", "add", "mul")
_SHAPE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Gather", "Concat", "Transpose",
              "Constant", "Dropout", "Cast", "Slice", "Split", "Expand", "ConstantOfShape", "Range"}
_FUSABLE_ACT = {"Relu", "Clip", "LeakyRelu"}
_EW_OPS = {"Relu": "relu", "Clip": "relu", "LeakyRelu": "relu", "Sigmoid": "sigmoid", "HardSigmoid": "hardsigmoid",
           "HardSwish": "hardswish", "Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul"}

# ---------------------------------------------------------------- single-op graphs
_X_SCALE, _X_ZP, _Y_SCALE, _Y_ZP = 0.02, 128, 0.05, 128


def _model(nodes, inputs, outputs, inits) -> bytes:
    g = helper.make_graph(nodes, "op", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m.SerializeToString()


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _qdq_wrap(op_nodes_fn, in_shapes, out_shape, inits, int8: bool, n_in: int = 1):
    """fp32: X* -> op -> Y. int8: u8 X* -> DQ -> op -> Q -> u8 Y (what ORT fuses into QLinear*)."""
    if not int8:
        ins = [f"x{i}" for i in range(n_in)]
        nodes = op_nodes_fn(ins, "y")
        return _model(nodes, [_vi(n, TensorProto.FLOAT, s) for n, s in zip(ins, in_shapes)],
                      [_vi("y", TensorProto.FLOAT, out_shape)], inits)
    inits = list(inits) + [
        numpy_helper.from_array(np.array(_X_SCALE, np.float32), "xs"),
        numpy_helper.from_array(np.array(_X_ZP, np.uint8), "xz"),
        numpy_helper.from_array(np.array(_Y_SCALE, np.float32), "ys"),
        numpy_helper.from_array(np.array(_Y_ZP, np.uint8), "yz"),
    ]
    nodes = [helper.make_node("DequantizeLinear", [f"x{i}", "xs", "xz"], [f"xf{i}"]) for i in range(n_in)]
    nodes += op_nodes_fn([f"xf{i}" for i in range(n_in)], "yf")
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    return _model(nodes, [_vi(f"x{i}", TensorProto.UINT8, s) for i, s in zip(range(n_in), in_shapes)],
                  [_vi("y", TensorProto.UINT8, out_shape)], inits)


def _weights(shape, int8: bool, rng, name="w", axis=0):
    """fp32 initializer, or int8 per-channel initializer + DequantizeLinear node producing ``name``."""
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if not int8:
        return [numpy_helper.from_array(w, name)], [], name
    ch = shape[axis]
    qw = rng.integers(-127, 128, size=shape).astype(np.int8)
    inits = [numpy_helper.from_array(qw, f"{name}_q"),
             numpy_helper.from_array(np.full(ch, 0.01, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(ch, np.int8), f"{name}_z")]
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=axis)
    return inits, [node], name


def _bias(n, int8: bool, rng, name="b"):
    if not int8:
        return [numpy_helper.from_array(np.zeros(n, np.float32), name)], []
    inits = [numpy_helper.from_array(rng.integers(-100, 100, size=n).astype(np.int32), f"{name}_q"),
             numpy_helper.from_array(np.full(n, _X_SCALE * 0.01, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(n, np.int32), f"{name}_z")]
    return inits, [helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=0)]


def _out_hw(h, k, s, pad):
    return (h + 2 * pad - k) // s + 1


def conv_graph(n, cin, cout, h, k, s, dw, int8, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    g = cin if dw else 1
    cout = cin if dw else cout
    pad = k // 2
    ho = _out_hw(h, k, s, pad)
    winits, wnodes, wn = _weights((cout, cin // g, k, k), int8, rng)
    binits, bnodes = _bias(cout, int8, rng)

    def body(ins, out):
        return wnodes + bnodes + [helper.make_node("Conv", [ins[0], wn, "b"], [out], kernel_shape=[k, k],
                                                   strides=[s, s], pads=[pad] * 4, group=g)]
    return _qdq_wrap(body, [(n, cin, h, h)], (n, cout, ho, ho), winits + binits, int8)


def gemm_graph(m, fin, fout, int8, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    winits, wnodes, wn = _weights((fout, fin), int8, rng)
    binits, bnodes = _bias(fout, int8, rng)

    def body(ins, out):
        return wnodes + bnodes + [helper.make_node("Gemm", [ins[0], wn, "b"], [out], transB=1)]
    return _qdq_wrap(body, [(m, fin)], (m, fout), winits + binits, int8)


def pool_graph(kind, n, c, h, int8, k=3, s=2) -> bytes:
    if kind == "gap":
        return _qdq_wrap(lambda i, o: [helper.make_node("GlobalAveragePool", i, [o])], [(n, c, h, h)], (n, c, 1, 1), [], int8)
    pad = k // 2 if k % 2 else 0
    ho = _out_hw(h, k, s, pad)
    return _qdq_wrap(lambda i, o: [helper.make_node("MaxPool", i, [o], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)],
                     [(n, c, h, h)], (n, c, ho, ho), [], int8)


def eltwise_graph(op, shape, int8) -> bytes:
    onnx_op = {"relu": "Relu", "sigmoid": "Sigmoid", "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish",
               "add": "Add", "mul": "Mul"}[op]
    n_in = 2 if op in ("add", "mul") else 1
    return _qdq_wrap(lambda i, o: [helper.make_node(onnx_op, i, [o])], [shape] * n_in, shape, [], int8, n_in=n_in)


def quant_graph(kind, shape) -> bytes:
    """quantize: float -> u8 (a QuantizeLinear that runs); dequantize: u8 -> float."""
    inits = [numpy_helper.from_array(np.array(_X_SCALE, np.float32), "s"), numpy_helper.from_array(np.array(_X_ZP, np.uint8), "z")]
    if kind == "quantize":
        return _model([helper.make_node("QuantizeLinear", ["x0", "s", "z"], ["y"])], [_vi("x0", TensorProto.FLOAT, shape)],
                      [_vi("y", TensorProto.UINT8, shape)], inits)
    return _model([helper.make_node("DequantizeLinear", ["x0", "s", "z"], ["y"])], [_vi("x0", TensorProto.UINT8, shape)],
                  [_vi("y", TensorProto.FLOAT, shape)], inits)


def identity_graph(shape=(1, 3, 32, 32)) -> bytes:
    return _model([helper.make_node("Identity", ["x0"], ["y"])], [_vi("x0", TensorProto.FLOAT, shape)],
                  [_vi("y", TensorProto.FLOAT, shape)], [])


# ---------------------------------------------------------------- the grid
def _grid(quick: bool, n: int) -> list[dict]:
    chans = [8, 32, 128] if quick else [8, 16, 32, 64, 128, 256, 512]
    res = [8, 32] if quick else [4, 8, 16, 32, 64]
    ks = [1, 3] if quick else [1, 3, 5, 7]
    dks = [3] if quick else [3, 5, 7]
    mac_cap = 1e8 if quick else 4e8
    pairs = [(a, b) for a in chans for b in chans if 0.25 <= b / a <= 4 and (not quick or True)]
    if not quick:
        pairs = [(a, b) for a, b in pairs if 0.5 <= b / a <= 2] + [(3, c) for c in (8, 16, 32, 64)]
    else:
        pairs += [(3, 8), (3, 32)]
    specs: list[dict] = []
    for k in ks:
        for s in (1, 2):
            for cin, cout in pairs:
                for h in res:
                    if h < k and k > 1:
                        continue
                    ho = _out_hw(h, k, s, k // 2)
                    if n * cout * ho * ho * cin * k * k <= mac_cap:
                        specs.append(dict(op="conv", k=k, s=s, dw=False, cin=cin, cout=cout, h=h, n=n))
    for k in dks:
        for s in (1, 2):
            for c in chans:
                for h in res:
                    specs.append(dict(op="conv", k=k, s=s, dw=True, cin=c, cout=c, h=h, n=n))
    # Channel counts that are not multiples of 16 / 8 take ORT's slower kernels (measured here: fp32
    # depthwise 3x3 at 8x8, 101 channels 41 us vs 104 channels 7 us; int8 pointwise 101 -> 24 us vs
    # 112 -> 14 us), and pruning leaves such counts everywhere: those classes get their own points.
    odd = {"a8": [24, 40, 72, 136, 264], "u": [13, 29, 61, 125, 253]}
    if quick:
        odd = {"a8": [24, 72], "u": [13, 61]}
    for cls_chans in odd.values():
        cpairs = [(a, b) for a in cls_chans for b in cls_chans if 0.4 <= b / a <= 2.5]
        for s in (1, 2):
            for h in ([8, 32] if quick else [4, 8, 16, 32]):
                for k in ([1, 3] if quick else [1, 3]):
                    for cin, cout in cpairs:
                        ho = _out_hw(h, k, s, k // 2)
                        if n * cout * ho * ho * cin * k * k <= mac_cap:
                            specs.append(dict(op="conv", k=k, s=s, dw=False, cin=cin, cout=cout, h=h, n=n))
                for k in ([3] if quick else [3, 5]):
                    for c in cls_chans:
                        specs.append(dict(op="conv", k=k, s=s, dw=True, cin=c, cout=c, h=h, n=n))
    fins = [16, 128, 1024] if quick else [8, 32, 128, 512, 1024, 2048]
    fouts = [10, 128] if quick else [10, 32, 128, 512, 1024]
    specs += [dict(op="gemm", cin=a, cout=b, m=n) for a in fins for b in fouts]
    for c in chans:
        for h in res:
            specs.append(dict(op="gap", c=c, h=h, n=n))
            specs.append(dict(op="maxpool", c=c, h=h, n=n, k=3, s=2))
            if not quick:
                specs.append(dict(op="maxpool", c=c, h=h, n=n, k=2, s=2))
    numels = [1024, 16384, 262144] if quick else [256, 1024, 4096, 16384, 65536, 262144, 1048576]
    for numel in numels:
        for op in _EW + ("quantize", "dequantize"):
            specs.append(dict(op=op, numel=numel, n=n))
    return specs


def _ew_shape(n, numel):
    per = max(1, numel // n)
    h = 1
    while h * h * 16 <= per and h < 64:
        h *= 2
    return (n, max(1, per // (h * h)), h, h)


def _build(spec: dict, int8: bool) -> bytes:
    op = spec["op"]
    if op == "conv":
        return conv_graph(spec["n"], spec["cin"], spec["cout"], spec["h"], spec["k"], spec["s"], spec["dw"], int8)
    if op == "gemm":
        return gemm_graph(spec["m"], spec["cin"], spec["cout"], int8)
    if op in ("gap", "maxpool"):
        return pool_graph(op, spec["n"], spec["c"], spec["h"], int8, spec.get("k", 3), spec.get("s", 2))
    if op in ("quantize", "dequantize"):
        return quant_graph(op, _ew_shape(spec["n"], spec["numel"]))
    return eltwise_graph(op, _ew_shape(spec["n"], spec["numel"]), int8)


def _time_graph(model: bytes, profile: HardwareProfile, n_blocks: int, block_ms: float) -> float:
    sess = hardware.make_session(model, profile)
    feeds = {}
    for inp in sess.get_inputs():
        dt = hardware._ORT_TO_NUMPY.get(inp.type, np.float32)
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = (np.random.default_rng(0).integers(0, 255, size=shape).astype(dt) if dt == np.uint8
                           else np.random.default_rng(0).standard_normal(shape).astype(dt))
    r = Runner(sess, feeds[sess.get_inputs()[0].name])
    for name, v in list(feeds.items())[1:]:
        r.binding.bind_cpu_input(name, v)
    return float(np.median(time_blocks(r, n_blocks, block_ms, warmup=2)))


def build_table(profile: HardwareProfile, *, quick: bool = False, log: Callable = print,
                calibrate: bool = True) -> dict:
    """Time the grid of single-op graphs on this machine as the profile says, then (``calibrate``) fit the
    whole-model correction on a few calibration models; returns the table."""
    hardware.check_available(profile)
    n = int(profile.batch_size)
    n_blocks, block_ms = (3, 2.0) if quick else (7, min(profile.latency.block_ms, 5.0))
    t0 = time.perf_counter()
    ov = [_time_graph(identity_graph((n, 3, 32, 32)), profile, n_blocks * 2, block_ms) for _ in range(3)]
    overhead = float(np.median(ov))
    specs = _grid(quick, n)
    dtypes = ["fp32"] + (["int8"] if "int8" in hardware.supported_precisions(profile) else [])
    entries = []
    total = sum(1 for s in specs for d in dtypes if not (s["op"] in ("quantize", "dequantize") and d == "int8"))
    for spec in specs:
        for dt in dtypes:
            if spec["op"] in ("quantize", "dequantize") and dt == "int8":
                continue
            raw = _time_graph(_build(spec, dt == "int8"), profile, n_blocks, block_ms)
            e = dict(spec, dtype=dt, ms_raw=raw, ms=max(raw - overhead, 0.0))
            e.update(_features(e))
            entries.append(e)
            if len(entries) % 200 == 0:
                log(f"  {len(entries)}/{total} ops timed ({time.perf_counter() - t0:.0f} s)")
    fp = hardware.fingerprint()
    log(f"lookup table: {len(entries)} entries, overhead {overhead * 1e3:.1f} us, {time.perf_counter() - t0:.0f} s")
    table = {
        "version": TABLE_VERSION,
        "profile": profile.name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fp,
        "batch_size": n,
        "quick": quick,
        "overhead_ms": overhead,
        "build_seconds": time.perf_counter() - t0,
        "entries": entries,
    }
    if calibrate:
        table["calibration"] = calibrate_table(table, profile, quick=quick, log=log, dtypes=dtypes)
        table["build_seconds"] = time.perf_counter() - t0
    return table


# ---------------------------------------------------------------- whole-model calibration
# (arch, uniform prune ratio, input side, torch seed). The ratios have 3 decimals and seeds >= 1000 so they
# never coincide with benchmarks/bench_predict.py's held-out candidates (2-decimal ratios, seeds < 1000).
# They are deliberately not dyadic (0.125, 0.375...): those keep every layer at a multiple of 8 channels,
# and ORT's kernels are much faster on aligned channel counts (a depthwise 3x3 at 101 channels took ~5x
# the time of one at 120), so an all-aligned calibration set is biased against real pruned candidates.
CALIBRATION_MODELS = [("resnet18", r, 32, 1000 + i) for i, r in enumerate((0.155, 0.345, 0.585))] + \
                     [("mobilenet_v2", r, 32, 1010 + i) for i, r in enumerate((0.155, 0.345, 0.585))] + \
                     [("resnet18", 0.715, 64, 1020), ("mobilenet_v2", 0.715, 64, 1021),
                      ("resnet18", 0.445, 64, 1022), ("mobilenet_v2", 0.445, 64, 1023)]
# quick (tests): one tiny model per dtype
CALIBRATION_MODELS_QUICK = [("mobilenet_v2", 0.625, 32, 1030)]


def build_candidate(arch: str, ratio: float, size: int, seed: int, out_dir, *, int8: bool = True,
                    width_mult: float = 1.0) -> tuple[Path, Path | None]:
    """fp32 (and int8) ONNX of a zoo model pruned uniformly at ``ratio``, through the product's own stages
    (prune_model, export_onnx, quantize_model with the default QuantSpec: static QDQ U8S8 per-channel)."""
    import torch

    from ..compress.export import export_onnx
    from ..compress.prune import prune_model
    from ..compress.quantize import quantize_model
    from ..models.zoo import build_model
    from ..records import QuantSpec

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = build_model(arch, 10, (3, size, size), width_mult=width_mult).eval()
    ex = torch.zeros(1, 3, size, size)
    if ratio > 0:
        model = prune_model(model, {"_default": ratio}, ex, inplace=True).model
    tag = f"{arch}-w{width_mult:g}-r{ratio:g}-{size}px-s{seed}"
    fp32 = out_dir / f"{tag}.onnx"
    export_onnx(model, ex, fp32)
    if not int8:
        return fp32, None
    calib = np.random.default_rng(seed).standard_normal((16, 3, size, size)).astype(np.float32)
    q = out_dir / f"{tag}.int8.onnx"
    quantize_model(fp32, q, {"_default": "int8"}, QuantSpec(), calib)
    return fp32, q


def model_dtype(model_or_path) -> str:
    """'int8' when the graph has QLinearConv/ConvInteger or a Conv fed by a DequantizeLinear (QDQ), else 'fp32'."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(str(model_or_path))
    nodes = list(model.graph.node)
    producer = {o: nd for nd in nodes for o in nd.output}
    for nd in nodes:
        if nd.op_type in ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"):
            return "int8"
        if nd.op_type == "Conv" and nd.input and producer.get(nd.input[0]) is not None \
                and producer[nd.input[0]].op_type == "DequantizeLinear":
            return "int8"
    return "fp32"


def fit_calibration(points: list[tuple[float, float]]) -> dict:
    """(raw prediction, measured) pairs -> {alpha, beta}: log(measured) = alpha + beta * log(raw)."""
    x = np.log([p for p, _ in points])
    y = np.log([m for _, m in points])
    if len(points) < 2 or np.ptp(x) < 0.1:  # one model (or no spread): a plain ratio
        return {"alpha": float(np.median(y - x)), "beta": 1.0, "n": len(points)}
    beta, alpha = np.polyfit(x, y, 1)
    if not 0.5 <= beta <= 1.5:  # a wild slope from few noisy points: fall back to a ratio
        return {"alpha": float(np.median(y - x)), "beta": 1.0, "n": len(points)}
    return {"alpha": float(alpha), "beta": float(beta), "n": len(points)}


def calibrate_table(table: dict, profile: HardwareProfile, *, quick: bool = False, log: Callable = print,
                    dtypes=("fp32", "int8"), models=None) -> dict:
    """Measure the calibration models whole and fit the per-dtype correction; returns table['calibration']."""
    import tempfile

    from .latency import measure_latency

    t0 = time.perf_counter()
    n = int(table.get("batch_size", profile.batch_size))
    models = models if models is not None else (CALIBRATION_MODELS_QUICK if quick else CALIBRATION_MODELS)
    uncal = {k: v for k, v in table.items() if k != "calibration"}
    meas_profile = profile
    if quick:
        from ..config import LatencySpec

        meas_profile = profile.model_copy(update={"latency": LatencySpec(warmup=3, min_rounds=5, max_rounds=15,
                                                                         time_cap_s=2, block_ms=10.0)})
    points: dict[str, list] = {d: [] for d in dtypes}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for arch, ratio, size, seed in models:
            fp32, q = build_candidate(arch, ratio, size, seed, d, int8="int8" in dtypes,
                                      width_mult=0.5 if quick else 1.0)
            shape = (n, 3, size, size)
            for dt, path in (("fp32", fp32), ("int8", q)):
                if path is None or dt not in dtypes:
                    continue
                raw = predict_latency(path, profile, uncal, shape)
                meas = measure_latency(path, meas_profile, shape, seed=seed).median_ms
                points[dt].append((raw, meas))
                rows.append(dict(arch=arch, ratio=ratio, size=size, dtype=dt, raw_ms=raw, measured_ms=meas))
                log(f"  calibration {arch} r={ratio} {size}px {dt}: sum of ops {raw:.3f} ms, measured {meas:.3f} ms")
    fits = {dt: fit_calibration(p) for dt, p in points.items() if p}
    for dt, f in fits.items():
        log(f"calibration {dt}: measured = exp({f['alpha']:.3f}) * raw^{f['beta']:.3f} ({f['n']} models)")
    return {"fits": fits, "models": rows, "load_avg": hardware.load_average(), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- features and lookup
_ALIGN = ("a16", "a8", "u")


def alignment(e: dict) -> str:
    """Channel alignment class of a conv: a16 (multiples of 16), a8 (of 8) or u, the worst of its channel
    counts (a full conv's input counts only from 8 channels up: a 3-channel image stem is not penalised)."""
    counts = [e["cout"]] if e["dw"] else [e["cout"]] + ([e["cin"]] if e["cin"] >= 8 else [])
    worst = 0
    for c in counts:
        worst = max(worst, 0 if c % 16 == 0 else 1 if c % 8 == 0 else 2)
    return _ALIGN[worst]


def _features(e: dict) -> dict:
    """group key, log-features and work (MACs or elements) of a table entry or a graph node."""
    op = e["op"]
    if op == "conv":
        ho = _out_hw(e["h"], e["k"], e["s"], e["k"] // 2)
        cin_g = 1 if e["dw"] else e["cin"]
        work = e["n"] * e["cout"] * ho * ho * cin_g * e["k"] ** 2
        feats = [math.log(e["cin"]), math.log(e["n"] * e["h"] * e["h"])] + ([] if e["dw"] else [math.log(e["cout"])])
        group = f"conv/{e['dtype']}/k{e['k']}/s{e['s']}/{'dw' if e['dw'] else 'full'}/{alignment(e)}"
    elif op == "gemm":
        work = e["m"] * e["cin"] * e["cout"]
        feats = [math.log(e["cin"]), math.log(e["cout"]), math.log(e["m"])]
        group = f"gemm/{e['dtype']}"
    elif op in ("gap", "maxpool"):
        work = e["n"] * e["c"] * e["h"] * e["h"]
        feats = [math.log(e["c"]), math.log(e["n"] * e["h"] * e["h"])]
        group = f"{op}/{e['dtype']}" + (f"/k{e.get('k', 3)}/s{e.get('s', 2)}" if op == "maxpool" else "")
    else:
        work = e["numel"]
        feats = [math.log(e["numel"])]
        group = f"{op}/{e['dtype']}"
    return {"group": group, "feats": feats, "work": float(work)}


class _Index:
    def __init__(self, table: dict):
        self.groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        by: dict[str, list] = {}
        for e in table["entries"]:
            by.setdefault(e["group"], []).append(e)
        for g, es in by.items():
            self.groups[g] = (np.array([x["feats"] for x in es], float), np.array([x["work"] for x in es], float),
                              np.log(np.maximum([x["ms"] for x in es], 1e-4)))

    def lookup(self, group: str, feats: list[float], work: float) -> float:
        g = self.groups.get(group) or self._other_alignment(group)
        if g is None:
            g = self._fallback(group)
            if g is None:
                return 0.0
            # a different kernel/stride: nearest in work, scaled by work
            _, w, lt = g
            i = int(np.argmin(np.abs(np.log(w) - math.log(max(work, 1)))))
            return float(math.exp(lt[i]) * work / w[i])
        X, w, lt = g
        q = np.array(feats, float)
        d = np.sqrt(((X - q) ** 2).sum(1))
        order = np.argsort(d)
        nn = order[0]
        nn_est = lt[nn] + math.log(max(work, 1) / w[nn])  # nearest neighbour scaled by work
        kk = min(len(d), 2 * (X.shape[1] + 1) + 2)
        if kk < X.shape[1] + 2:
            return float(math.exp(nn_est))
        idx = order[:kk]
        wt = 1.0 / (d[idx] + 0.25) ** 2
        A = np.column_stack([np.ones(kk), X[idx]])
        sw = np.sqrt(wt)[:, None]
        coef, *_ = np.linalg.lstsq(A * sw, lt[idx] * sw[:, 0], rcond=None)
        est = float(coef[0] + coef[1:] @ q)
        # an extrapolating fit is kept within a factor of 3 of the work-scaled nearest neighbour
        est = min(max(est, nn_est - math.log(3)), nn_est + math.log(3))
        return float(math.exp(est))

    def _other_alignment(self, group: str):
        """The same conv (dtype, kernel, stride, kind) in the nearest alignment class the table has."""
        parts = group.split("/")
        if parts[0] != "conv" or parts[-1] not in _ALIGN:
            return None
        for cls in {"u": ("a8", "a16"), "a8": ("u", "a16"), "a16": ("a8", "u")}[parts[-1]]:
            g = self.groups.get("/".join(parts[:-1] + [cls]))
            if g is not None:
                return g
        return None

    def _fallback(self, group: str):
        op, dt = group.split("/")[:2]
        cands = [k for k in self.groups if k.startswith(f"{op}/{dt}/")] or [k for k in self.groups if k.startswith(f"{op}/")]
        if not cands:
            return None
        X = np.concatenate([self.groups[k][0][:, :1] for k in cands])
        return (X, np.concatenate([self.groups[k][1] for k in cands]), np.concatenate([self.groups[k][2] for k in cands]))


# ---------------------------------------------------------------- walking a model
def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _fix_input(model: onnx.ModelProto, input_shape) -> None:
    inits = {t.name for t in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    dims = inp.type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    given = [int(x) for x in input_shape]
    if len(want) != len(given) or any(w not in (None, 0) and w != g for w, g in zip(want, given)):
        shown = "[" + ", ".join(str(w) if w else (d.dim_param or "?") for w, d in zip(want, dims)) + "]"
        raise StageError("predict", f"model expects input '{inp.name}' of shape {shown}, given {given}; "
                         "check the profile's batch_size/input_shape")
    for d, g in zip(dims, given):
        d.ClearField("dim_param")
        d.dim_value = g


def predict_breakdown(onnx_path, profile: HardwareProfile, table: dict, input_shape) -> list[tuple[str, str, float]]:
    """(node name, table group or reason, ms) for every costed node; the overhead is not included."""
    if not Path(str(onnx_path)).is_file():
        raise StageError("predict", f"ONNX model '{onnx_path}' not found")
    model = onnx.load(str(onnx_path))
    _fix_input(model, input_shape)
    shapes = _shapes(model)
    inits = {t.name for t in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: nd for nd in nodes for o in nd.output}
    consumers: dict[str, list] = {}
    for nd in nodes:
        for i in nd.input:
            consumers.setdefault(i, []).append(nd)
    graph_outputs = {o.name for o in model.graph.output}
    const_outputs = {o for nd in nodes if nd.op_type == "Constant" for o in nd.output}
    inits |= const_outputs

    def is_const(t):  # an initializer, or a DequantizeLinear of one (folded into the consumer)
        p = producer.get(t)
        return t in inits or (p is not None and p.op_type in ("DequantizeLinear", "Cast", "Identity") and p.input and is_const(p.input[0]))

    def act_inputs(nd):
        return [i for i in nd.input if i and not is_const(i)]

    def int8_node(nd) -> bool:
        ai = act_inputs(nd)
        if not ai or not all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in ai):
            return False
        outs = [c for o in nd.output for c in consumers.get(o, [])]
        return bool(outs) and all(c.op_type == "QuantizeLinear" for c in outs)

    def upstream(t):  # skip Q->DQ pairs
        p = producer.get(t)
        while p is not None and p.op_type == "DequantizeLinear":
            q = producer.get(p.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                break
            p = producer.get(q.input[0])
        return p

    index = _Index(table)
    costed = {"Conv", "Gemm", "MatMul", "GlobalAveragePool", "MaxPool", "AveragePool"} | set(_EW_OPS)
    compute_int8 = {nd.name or id(nd): int8_node(nd) for nd in nodes if nd.op_type in costed}
    out = []
    for nd in nodes:
        op = nd.op_type
        name = nd.name or f"{op}_{nodes.index(nd)}"
        key = nd.name or id(nd)
        if op in _SHAPE_OPS:
            continue
        if op == "QuantizeLinear":
            if is_const(nd.input[0]):
                continue
            p = producer.get(nd.input[0])
            if p is not None and compute_int8.get(p.name or id(p), False):
                continue
            if p is not None and p.op_type in _SHAPE_OPS:
                continue
            e = {"op": "quantize", "numel": int(np.prod(shapes.get(nd.input[0], [1]) or [1])) or 1, "dtype": "fp32"}
        elif op == "DequantizeLinear":
            if is_const(nd.input[0]):
                continue
            cons = consumers.get(nd.output[0], [])
            if cons and all(compute_int8.get(c.name or id(c), False) or c.op_type in _SHAPE_OPS for c in cons) \
                    and nd.output[0] not in graph_outputs:
                continue
            e = {"op": "dequantize", "numel": int(np.prod(shapes.get(nd.input[0], [1]) or [1])) or 1, "dtype": "fp32"}
        elif op in costed:
            dt = "int8" if compute_int8[key] else "fp32"
            ish = shapes.get(act_inputs(nd)[0] if act_inputs(nd) else nd.input[0], [])
            osh = shapes.get(nd.output[0], [])
            if op in _FUSABLE_ACT:
                up = upstream(nd.input[0])
                if up is not None and up.op_type in ("Conv", "Add", "Gemm"):
                    continue
            if op == "Conv":
                wsh = shapes.get(nd.input[1], [])
                g = int(_attr(nd, "group", 1))
                k = int(wsh[2]) if len(wsh) == 4 else 1
                s = int(_attr(nd, "strides", [1, 1])[0])
                cin = int(ish[1]) if len(ish) == 4 else int(wsh[1]) * g
                e = {"op": "conv", "k": k, "s": s, "dw": g > 1 and g == cin, "cin": cin, "cout": int(wsh[0]),
                     "h": int(ish[2]) if len(ish) == 4 else 1, "n": int(ish[0]) if ish else 1, "dtype": dt}
                if g > 1 and g != cin:  # grouped, not depthwise: a full conv of cin/g inputs per output
                    e["cin"] = max(1, cin // g)
                e["k"] = k if k in (1, 3, 5, 7) else min((1, 3, 5, 7), key=lambda c: abs(c - k))
                e["s"] = min(s, 2)
            elif op in ("Gemm", "MatMul"):
                wsh = shapes.get(nd.input[1], [])
                trans_b = int(_attr(nd, "transB", 0)) if op == "Gemm" else 0
                fin = int(ish[-1]) if ish else 1
                fout = int(osh[-1]) if osh else (int(wsh[0]) if trans_b else int(wsh[-1]))
                m = int(np.prod(ish[:-1])) if len(ish) > 1 else 1
                e = {"op": "gemm", "cin": max(fin, 1), "cout": max(fout, 1), "m": max(m, 1), "dtype": dt}
            elif op in ("GlobalAveragePool", "MaxPool", "AveragePool"):
                kind = "gap" if op == "GlobalAveragePool" else "maxpool"
                e = {"op": kind, "c": int(ish[1]), "h": int(ish[2]), "n": int(ish[0]), "dtype": dt}
                if kind == "maxpool":
                    e["k"] = min(int(_attr(nd, "kernel_shape", [3, 3])[0]), 3)
                    e["s"] = min(int(_attr(nd, "strides", [1, 1])[0]), 2)
                    e["k"] = 2 if e["k"] == 2 else 3
            else:
                numel = int(np.prod(osh)) if osh else 1
                e = {"op": _EW_OPS[op], "numel": max(numel, 1), "dtype": dt}
        else:
            out.append((name, f"unmapped:{op}", 0.0))
            continue
        f = _features(e)
        out.append((name, f["group"], index.lookup(f["group"], f["feats"], f["work"])))
    return out


def predict_latency(onnx_path, profile: HardwareProfile, table: dict, input_shape) -> float:
    """Predicted latency (ms) of one inference at input_shape: sum over nodes + per-inference overhead."""
    _check_table(table)
    parts = predict_breakdown(onnx_path, profile, table, input_shape)
    raw = float(table["overhead_ms"] + sum(ms for _, _, ms in parts))
    fits = (table.get("calibration") or {}).get("fits") or {}
    if not fits or raw <= 0:
        return raw
    f = fits.get(model_dtype(onnx_path)) or fits.get("fp32") or next(iter(fits.values()))
    return float(math.exp(f["alpha"]) * raw ** f["beta"])


def predicted_result(candidate_path, profile: HardwareProfile, table: dict, input_shape, *,
                     baseline_path=None) -> LatencyResult:
    """A LatencyResult with mode='predict' (no spread: cv 0, one 'sample')."""
    ms = predict_latency(candidate_path, profile, table, input_shape)
    base = predict_latency(baseline_path, profile, table, input_shape) if baseline_path is not None else None
    sp = base / ms if base is not None and ms > 0 else None
    return LatencyResult(median_ms=ms, p90_ms=ms, mean_ms=ms, cv=0.0, n_samples=1, runs_per_sample=1,
                         baseline_median_ms=base, speedup=sp, speedup_ci=(sp, sp) if sp is not None else None,
                         stop_reason="single", load_avg=hardware.load_average(), mode="predict")


# ---------------------------------------------------------------- tables on disk
def _check_table(table: dict, source: str = "lookup table") -> None:
    if not isinstance(table, dict) or table.get("version") != TABLE_VERSION or "entries" not in table \
            or "overhead_ms" not in table:
        raise ConfigError(f"{source}: not an autocompress lookup table (version {TABLE_VERSION}); "
                          "rebuild it with `autocompress profile-device`")


def load_table(profile: HardwareProfile, profile_path) -> dict:
    if not profile.lookup_table:
        raise ConfigError(f"{profile_path}: lookup_table is not set; run `autocompress profile-device` for this profile")
    p = resolve_relative(Path(profile_path), profile.lookup_table)
    if not p.is_file():
        raise ConfigError(f"{profile_path}: lookup_table: got {profile.lookup_table!r}; no such file ({p}); "
                          "run `autocompress profile-device` on the target to build it")
    try:
        table = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: unreadable lookup table ({hardware._one_line(e)}); rebuild it") from None
    _check_table(table, str(p))
    return table


def profile_device(profile_name_or_path: str, out_path, *, quick: bool = False, log: Callable = print) -> Path:
    """Build the table on this machine and write ``<out>.yaml`` (mode predict) + ``<out>.table.json``."""
    profile, src = load_profile(profile_name_or_path)
    out = Path(out_path)
    if out.suffix not in (".yaml", ".yml"):
        out = out.with_suffix(".yaml")
    name = out.stem
    table = build_table(profile, quick=quick, log=log)
    table_path = out.parent / f"{name}.table.json"
    data = read_yaml(src)
    data["name"] = name
    data["description"] = (f"{profile.description} (latency predicted from {table_path.name}, "
                           f"built {table['date']})").strip()
    data.setdefault("latency", {})
    data["latency"] = dict(data["latency"] or {}, mode="predict")
    data["lookup_table"] = table_path.name
    data["fingerprint"] = table["fingerprint"]
    parse(HardwareProfile, data, str(out))  # validated before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(json.dumps(table))
    out.write_text(f"# Written by autocompress profile-device from {src.name}.\n" + yaml.safe_dump(data, sort_keys=False))
    log(f"wrote {out} and {table_path}")
    return out
