"""Latency predicted from a lookup table, for a target device that is not at hand (the search side).

The table is built *on the target* by the torch-free :mod:`autocompress.profiling` (``autocompress profile-device``
or ``python -m autocompress.profiling``): small graphs timed there and keyed on the kernels ONNX Runtime runs after
its graph optimisation (fused Conv+activation, NCHWc convolutions and their reorders, QLinearConv, QLinearAdd...).
Here a candidate is prepared the same way: ORT optimises it with the table's session settings, the kernels of the
optimised graph are listed (one profiled run gives their shapes) and each is looked up, so Q/DQ pairs ORT fuses away
are never counted (:mod:`autocompress.profiling.lookup`). Before use, the table is checked: another ORT release or
execution provider, or other session settings, are refused with how to rebuild it; a table from another machine is
announced; and the fusion rules recorded on the target (what ORT there made of Conv+Relu, DQ-Conv-Q, a residual
block...) are compared with this machine's, each difference printed.

Whole-model calibration (by default where torch is installed): a few zoo models pruned uniformly, fp32 and
int8, built with the product's own stages and measured with ``measure_latency`` (the profile's statistic); per dtype
``log(measured) = alpha + beta * log(sum of kernels + overhead)``, appended to the table as a ``calibration`` line.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import yaml

from ..config import HardwareProfile, load_profile, parse, read_yaml, resolve_relative
from ..errors import ConfigError, StageError
from ..profiling import lookup
from ..profiling import table as ptable
from ..profiling.target import Target, TargetError
from . import hardware
from .latency import LatencyResult

TABLE_VERSION = ptable.VERSION


# ---------------------------------------------------------------- tables on disk
def read_table(path, source: str | None = None) -> dict:
    """The table; a whole-model calibration timed in the process that built its models (before they were timed in
    fresh processes: no ``windows_ms``) is set aside as ``stale_calibration``: such timing was off by up to 2x."""
    try:
        return _stale_set_aside(ptable.read(path))
    except TargetError as e:
        raise ConfigError(str(e) if source is None else f"{source}: {e}") from None


def _stale_set_aside(table: dict) -> dict:
    cal = table.get("calibration")
    if cal and cal.get("models") and any("windows_ms" not in m for m in cal["models"]):
        table["calibration"], table["stale_calibration"] = None, cal
    return table


def check_table(table: dict, profile: HardwareProfile | Target, *, log: Callable = print, rules: bool = True) -> None:
    """Refuse a table the profile cannot use (one line); say when it comes from another machine; compare fusion rules."""
    try:
        ptable.check_compatible(table, profile if isinstance(profile, Target) else Target.from_profile(profile))
    except TargetError as e:
        raise ConfigError(str(e)) from None
    fp, here = table.get("fingerprint") or {}, hardware.fingerprint()
    if fp.get("cpu") != here.get("cpu") or fp.get("cpu_flags") != here.get("cpu_flags"):
        log(f"latency: predicted from a table built on {fp.get('cpu', '?')} ({fp.get('cores', '?')} cores, "
            f"{table.get('date', '?')}), not on this machine ({here.get('cpu', '?')})")
    if rules:
        for name, (there, here_sig) in fusion_differences(table).items():
            log(f"warning: fusion rule '{name}' differs: the target ran {' + '.join(there)}, this machine's ORT "
                f"makes {' + '.join(here_sig)}; predictions for such nodes are less certain")


def fusion_differences(table: dict) -> dict[str, tuple[list, list]]:
    """The recorded fusion patterns whose optimised kernels on this machine differ from the target's."""
    from ..profiling.kernels import kernel_signature, list_kernels

    target = lookup.table_target(table)
    out = {}
    for ln in table["lines"]:
        spec = ln["spec"]
        if not spec.get("pattern"):
            continue
        here = kernel_signature(list_kernels(ptable.build_graph(spec), target))
        if here != ln["signature"]:
            out[spec["pattern"]] = (ln["signature"], here)
    return out


def load_table(profile: HardwareProfile, profile_path, *, log: Callable = print) -> dict:
    if not profile.lookup_table:
        raise ConfigError(f"{profile_path}: lookup_table is not set; run `autocompress profile-device` for this profile")
    p = resolve_relative(Path(profile_path), profile.lookup_table)
    if not p.is_file():
        raise ConfigError(f"{profile_path}: lookup_table: got {profile.lookup_table!r}; no such file ({p}); "
                          "run `autocompress profile-device` on the target to build it")
    table = read_table(p)
    check_table(table, profile, log=log)
    if table.get("stale_calibration"):
        log(f"latency: {p.name}'s whole-model calibration was timed in the process that built its models (up to 2x "
            "off there) and is not applied; `autocompress profile-device --calibrate` on the target fits it again")
    return table


# ---------------------------------------------------------------- prediction
def _input_shapes(model: onnx.ModelProto, input_shape) -> dict[str, list[int]]:
    """{input name: the shape to feed}, checked against the model's fixed dimensions. The model itself is left as
    exported: a symbolic batch axis stays symbolic, as in the deployed artifact (fixing it lets ORT fold away the
    shape computations an exporter writes, e.g. ShuffleNet's channel shuffle: 171 kernels instead of 457 here)."""
    inits = {t.name for t in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    dims = inp.type.tensor_type.shape.dim
    want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    given = [int(x) for x in input_shape]
    if len(want) != len(given) or any(w not in (None, 0) and w != g for w, g in zip(want, given)):
        shown = "[" + ", ".join(str(w) if w else (d.dim_param or "?") for w, d in zip(want, dims)) + "]"
        raise StageError("predict", f"model expects input '{inp.name}' of shape {shown}, given {given}; "
                         "check the profile's batch_size/input_shape")
    return {inp.name: given}


def _model_bytes(onnx_path, input_shape) -> tuple[bytes, dict[str, list[int]]]:
    if not Path(str(onnx_path)).is_file():
        raise StageError("predict", f"ONNX model '{onnx_path}' not found")
    model = onnx.load(str(onnx_path))
    return model.SerializeToString(), _input_shapes(model, input_shape)


def predict_breakdown(onnx_path, profile: HardwareProfile, table: dict, input_shape) -> list[tuple[str, str, float]]:
    """(kernel name, table group, ms) for every kernel ORT runs for the model (the table's in-context factors
    applied); the per-inference overhead and the torch-side calibration are not included."""
    try:
        model, shapes = _model_bytes(onnx_path, input_shape)
        parts = lookup.breakdown(model, table, shapes=shapes)
    except TargetError as e:
        raise StageError("predict", str(e)) from None
    return [(n, g, ms) for n, g, ms, _ in parts]


def predict_latency(onnx_path, profile: HardwareProfile, table: dict, input_shape) -> float:
    """Predicted latency (ms) of one inference at input_shape: kernels + per-inference overhead (+ calibration)."""
    return predict_model(*_model_bytes(onnx_path, input_shape), table=table)


def predict_model(model: bytes, shapes: dict | None = None, *, table: dict) -> float:
    """Predicted ms of a serialized model fed ``shapes`` ({input name: shape}; None: its own fixed shape, a symbolic
    dimension 1), the table's calibration applied if any."""
    try:
        raw = lookup.predict_raw(model, table, shapes=shapes)
    except TargetError as e:
        raise StageError("predict", str(e)) from None
    fits = (table.get("calibration") or {}).get("fits") or {}
    if not fits or raw <= 0:
        return raw
    f = fits.get(model_dtype(onnx.load_from_string(model))) or fits.get("fp32") or next(iter(fits.values()))
    return float(math.exp(f["alpha"]) * raw ** f["beta"])


def check_device(table_or_profile: str, *, log: Callable = print) -> dict:
    """``profile-device --check``: time the held-out networks here and compare with the table's predictions.
    ``table_or_profile``: a table file, or a predict-mode profile (name or YAML) naming one."""
    from ..profiling.check import check

    p = Path(table_or_profile)
    if p.suffix in (".yaml", ".yml") or (not p.is_file() and p.suffix not in (".jsonl", ".json")):
        profile, src = load_profile(table_or_profile)
        table = load_table(profile, src, log=log)
    else:
        table = read_table(p)
        try:
            ptable.check_compatible(table, lookup.table_target(table))
        except TargetError as e:
            raise ConfigError(str(e)) from None
        check_table(table, lookup.table_target(table), log=log, rules=False)
    log(f"checking {table['path']} ({table.get('target_name')}, built {table.get('date')}) on this machine")
    return check(table, predict=lambda m: predict_model(m, table=table), log=log)


def predicted_result(candidate_path, profile: HardwareProfile, table: dict, input_shape, *,
                     baseline_path=None) -> LatencyResult:
    """A LatencyResult with mode='predict' (no spread: cv 0, one 'sample')."""
    ms = predict_latency(candidate_path, profile, table, input_shape)
    base = predict_latency(baseline_path, profile, table, input_shape) if baseline_path is not None else None
    sp = base / ms if base is not None and ms > 0 else None
    return LatencyResult(median_ms=ms, p90_ms=ms, mean_ms=ms, cv=0.0, n_samples=1, runs_per_sample=1,
                         baseline_median_ms=base, speedup=sp, speedup_ci=(sp, sp) if sp is not None else None,
                         stop_reason="single", load_avg=hardware.load_average(), mode="predict")


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


# ---------------------------------------------------------------- whole-model calibration (torch)
# (arch, uniform prune ratio, input side, torch seed). The ratios have 3 decimals and seeds >= 1000 so they
# never coincide with benchmarks/bench_predict.py's held-out candidates (2-decimal ratios, seeds < 1000).
# They are deliberately not dyadic (0.125, 0.375...): those keep every layer at a multiple of 8 channels,
# and ORT's kernels are much faster on aligned channel counts, so an all-aligned set is biased.
CALIBRATION_MODELS = [("resnet18", r, 32, 1000 + i) for i, r in enumerate((0.155, 0.345, 0.585))] + \
                     [("mobilenet_v2", r, 32, 1010 + i) for i, r in enumerate((0.155, 0.345, 0.585))] + \
                     [("resnet18", 0.715, 64, 1020), ("mobilenet_v2", 0.715, 64, 1021),
                      ("resnet18", 0.445, 64, 1022), ("mobilenet_v2", 0.445, 64, 1023)]
CALIBRATION_WINDOWS = 3  # fresh processes each calibration model is timed in (the median is fitted)
CALIBRATION_MODELS_QUICK = [("mobilenet_v2", 0.625, 32, 1030)]  # tests: one tiny model per dtype


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


def across_windows(ms, statistic: str) -> float:
    """A model's latency from its fresh-process windows: the profile's statistic across them, as within them. For the
    two-thread ``cpu`` profile's p10 that leaves out a window the shared machine ran slow from start to end (minutes
    of a neighbour's load, which the p10 of its blocks cannot drop: fp32 zoo models 1.3-1.5x): the median of five
    windows moved by more than 10% between two runs for 35% of 40 held-out models, their p10 for none
    (benchmarks/README.md, twenty-seventh session). The median with one thread."""
    from ..profiling.target import statistic_of

    return float(statistic_of(np.asarray(ms, float), statistic))


def calibrate_table(table: dict, profile: HardwareProfile, *, quick: bool = False, log: Callable = print,
                    dtypes=("fp32", "int8"), models=None) -> dict:
    """Measure the calibration models whole and fit the per-dtype correction; returns the calibration dict
    (``append_calibration`` writes it to the table file)."""
    import tempfile

    from .retime import latency_windows

    t0 = time.perf_counter()
    n = int(table["target"]["batch_size"])
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
        built = {}  # every model built first, then timed in fresh processes (retime.latency_windows)
        for arch, ratio, size, seed in models:
            fp32, q = build_candidate(arch, ratio, size, seed, d, int8="int8" in dtypes,
                                      width_mult=0.5 if quick else 1.0)
            for dt, path in (("fp32", fp32), ("int8", q)):
                if path is not None and dt in dtypes:
                    built[f"{arch} r={ratio} {size}px {dt}"] = (arch, ratio, size, dt, path, (n, 3, size, size))
        windows = 1 if quick else CALIBRATION_WINDOWS
        times = latency_windows({k: (v[4], v[5]) for k, v in built.items()}, meas_profile, windows=windows)
        for label, (arch, ratio, size, dt, path, shape) in built.items():
            raw = predict_latency(path, profile, uncal, shape)
            meas = across_windows(times[label], profile.latency.statistic)
            points[dt].append((raw, meas))
            rows.append(dict(arch=arch, ratio=ratio, size=size, dtype=dt, raw_ms=raw, measured_ms=meas,
                             windows_ms=[round(v, 4) for v in times[label]]))
            log(f"  calibration {label}: sum of kernels {raw:.3f} ms, measured {meas:.3f} ms "
                f"(median of {windows} fresh process{'es' if windows > 1 else ''})")
    fits = {dt: fit_calibration(p) for dt, p in points.items() if p}
    for dt, f in fits.items():
        log(f"calibration {dt}: measured = exp({f['alpha']:.3f}) * raw^{f['beta']:.3f} ({f['n']} models)")
    # the reference networks timed again now: the fit carries the machine's speed of these minutes, and a check
    # compares with it (timed only at the context step, they once ran 1.4-1.6x the later figures: a slow patch)
    from ..profiling.check import time_references

    refs = time_references(table, (table.get("context") or {}).get("nets") or [])
    return {"fits": fits, "models": rows, "load_avg": hardware.load_average(), "seconds": time.perf_counter() - t0,
            "reference_ms": refs or None}


def append_calibration(table: dict, calibration: dict) -> dict:
    ptable.append_line(table["path"], {"calibration": calibration})
    return {**table, "calibration": calibration}


def _torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------- profile-device
def build_table(profile: HardwareProfile, path, *, quick: bool = False, log: Callable = print,
                calibrate: bool = False) -> dict:
    """Build (or continue) the table at ``path`` on this machine; with ``calibrate`` (torch needed), fit and append
    the whole-model calibration on zoo models too. Off by default: since the table carries its in-network fit, the
    calibration has not improved held-out predictions (68% within +-10% without it, 65% with it, bench_predict in
    benchmarks/README.md)."""
    hardware.check_available(profile)
    if calibrate and not _torch_available():
        raise ConfigError("--calibrate builds zoo models with torch, which is not installed here; "
                          "leave it out (the table's in-network factors are measured without torch)")
    try:
        table = _stale_set_aside(ptable.build(Target.from_profile(profile), path, quick=quick, log=log))
    except TargetError as e:
        raise ConfigError(str(e)) from None
    if calibrate and table.get("calibration") is None:
        dts = ["fp32"] + (["int8"] if "int8" in hardware.supported_precisions(profile) else [])
        table = append_calibration(table, calibrate_table(table, profile, quick=quick, log=log, dtypes=dts))
    return table


def output_paths(out_path) -> tuple[Path, Path]:
    """(profile YAML, table beside it) for ``--out``: ``box.yaml``, ``box`` and ``box.table.jsonl`` all name
    ``box.yaml`` + ``box.table.jsonl`` (the table's own name given is not doubled into ``box.table.table.jsonl``)."""
    out = Path(out_path)
    if out.name.endswith(".table.jsonl"):
        out = out.with_name(out.name[: -len(".table.jsonl")] + ".yaml")
    elif out.suffix not in (".yaml", ".yml"):
        out = out.with_suffix(".yaml")
    return out, out.parent / f"{out.stem}.table.jsonl"


def profile_device(profile_name_or_path: str, out_path, *, quick: bool = False, log: Callable = print,
                   calibrate: bool = False) -> Path:
    """Build the table on this machine and write ``<out>.yaml`` (mode predict) + ``<out>.table.jsonl``; rerun
    the same command to continue an interrupted build."""
    profile, src = load_profile(profile_name_or_path)
    out, table_path = output_paths(out_path)
    name = out.stem
    data = read_yaml(src)
    data["name"] = name
    data.setdefault("latency", {})
    data["latency"] = dict(data["latency"] or {}, mode="predict")
    data["lookup_table"] = table_path.name
    parse(HardwareProfile, data, str(out))  # validated before anything is timed
    table = build_table(profile, table_path, quick=quick, log=log, calibrate=calibrate)
    data["description"] = (f"{profile.description} (latency predicted from {table_path.name}, "
                           f"built {table['date']})").strip()
    data["fingerprint"] = table["fingerprint"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Written by autocompress profile-device from {src.name}.\n" + yaml.safe_dump(data, sort_keys=False))
    rules = ptable.fusion_rules(table)
    log("fusion rules found here: " + "; ".join(f"{k}: {' + '.join(v)}" for k, v in rules.items()))
    log(f"wrote {out} and {table_path}")
    if quick:
        log("note: a --quick table is a small grid for trying the command (one calibration model): its figures are rough "
            "(a default-model baseline came out 35% slow on an AVX2 EPYC); build the full grid, without --quick, to search with")
    return out
