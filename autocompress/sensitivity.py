"""Sensitivity analysis of the teacher, once per run, and the priors it gives the search.

Measured (space option ``sensitivity``; cached in ``<run>/cache/sensitivity-<key>.json``, keyed by the teacher,
the data and the settings, so a resume or a report reuses it):

* **pruning**: each stage of :func:`~autocompress.compress.prune.stage_groups` pruned alone at a few ratios
  (default 0.3/0.6/0.9, the space's first criterion), BatchNorm statistics re-estimated on the calibration
  subset of the training split (no distillation: seconds per point), top-1 on a fixed seeded subset of the
  validation split (PyTorch), and the share of the teacher's MACs that pruning removed (Torch-Pruning's count;
  it includes the next stage's narrower input). The unpruned teacher, recalibrated the same way, is ratio 0.
* **int8**: each Conv/Linear layer quantized *alone* (ONNX Runtime static int8 in the profile's int8 form, the
  rest fp32, the baseline ONNX as source), scored by the error it adds to the logits on the same validation
  subset's first ``int8_samples`` (mean squared difference to the fp32 logits over their mean square; one layer
  rarely moves top-1 on a few hundred samples, its logit error does; calibrated on as many training samples) and
  by top-1. Calibration runs once: its activation ranges are the fp32 model's whichever layers go int8, so every
  point reads them from one file (onnxruntime >= 1.32; two thirds of this step's time on a 60-layer CNN).

Priors (pure functions of that record):

* :func:`allocate`: per-stage ratios that remove at least the MACs a uniform ratio removes (sum of the stages'
  measured savings), stepping up whichever stage buys the most MACs per point of accuracy lost;
* :func:`int8_ranking`: layers by int8 error, most sensitive first (``bits.keep_fp32`` keeps the first k in fp32);
* :func:`with_priors`: the space with that ranking and a sensitivity-allocated twin after each uniform seed named
  in ``sensitivity.seeds`` (same bits and KD, labelled ``sensitivity 80% + int8, KD 8 ep``).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .config import FloatRange, HardwareProfile, SearchSpace, SeedCandidate, _values_of
from .records import QuantSpec, content_hash

VERSION = 1
EPS_PP = 0.05  # accuracy points: a step that loses nothing measurable still costs this much (ties go to MACs)


# ---------------------------------------------------------------------------- measuring
def recalibrate_bn(model, x, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running statistics on ``x`` (cumulative average, no grad); the rest of the
    model stays in eval mode (dropout off). Leaves the model in eval mode."""
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not bns or len(x) == 0:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    for m, mom in zip(bns, momenta):
        m.momentum = mom
        m.eval()


def _top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def _torch_logits(model, x, batch_size: int | None = None) -> np.ndarray:
    import torch

    from .devices import infer_batch

    batch_size = batch_size or infer_batch("cpu")
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)]).numpy()


def _ort_logits(path: Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def val_subset(n_val: int, n: int, seed: int) -> np.ndarray:
    """The validation samples every point is scored on: all when ``n_val`` covers them, else a seeded subset."""
    if n_val >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:n_val]).astype(np.int64)


def prune_curves(teacher, groups: Mapping[str, Sequence[str]], calib_x, val_x, val_y: np.ndarray, ratios: Sequence[float],
                 *, criterion: str = "l1", round_to: int | None = None, exclude: Sequence[str] = (),
                 graph_timeout_s: float | None = None, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Each stage pruned alone at each ratio: top-1 after BatchNorm recalibration and the MACs share removed."""
    from .compress.prune import prune_model, stage_mapping
    from .errors import AutocompressError, LeftWhole

    model = copy.deepcopy(teacher).eval()
    recalibrate_bn(model, calib_x)
    base = _top1(_torch_logits(model, val_x), val_y)
    example = val_x[:1]
    stages: dict[str, Any] = {}
    for stage, layers in groups.items():
        accs, removed, error = [], [], None
        for r in ratios:
            try:
                res = prune_model(teacher, stage_mapping({stage: r}, groups), example, criterion=criterion,
                                  round_to=round_to, exclude=exclude, graph_timeout_s=graph_timeout_s)
            except LeftWhole:  # channel rounding keeps this stage whole at r: unchanged, a higher ratio may prune it
                accs.append(base)
                removed.append(0.0)
                continue
            except AutocompressError as e:
                error = f"{type(e).__name__}: {e}"
                break
            recalibrate_bn(res.model, calib_x)
            accs.append(_top1(_torch_logits(res.model, val_x), val_y))
            removed.append(1.0 - res.macs_ratio)
        stages[stage] = {"layers": len(layers), "accuracy": accs, "macs_removed": removed, "error": error}
        if error:
            log(f"sensitivity: stage {stage} could not be pruned alone at {ratios[len(accs)]:.0%} ({error}); "
                + (f"allocations keep it at or below {ratios[len(accs) - 1]:.0%}" if accs else "allocations leave its ratio as the seed's"))
    return {"base_accuracy": base, "stages": stages}


def block_drops(teacher, blocks: Sequence[str], calib_x, val_x, val_y: np.ndarray) -> dict[str, Any]:
    """Each droppable block replaced by the identity alone: top-1 after BatchNorm recalibration and the share of
    the teacher's MACs it removes (``blocks``), and the teacher's own top-1 after the same recalibration (``base``)."""
    from .compress.depth import drop_blocks
    from .compress.prune import _count_ops

    example = val_x[:1]
    model = copy.deepcopy(teacher).eval()
    macs = _count_ops(model, example)[0]
    recalibrate_bn(model, calib_x)
    base = _top1(_torch_logits(model, val_x), val_y)
    out = {}
    for b in blocks:
        model = drop_blocks(copy.deepcopy(teacher).eval(), [b])
        removed = 1.0 - _count_ops(model, example)[0] / macs if macs else 0.0
        recalibrate_bn(model, calib_x)
        out[b] = {"accuracy": _top1(_torch_logits(model, val_x), val_y), "macs_removed": removed}
    return {"base": base, "blocks": out}


def int8_errors(fp32_path: Path, layers: Sequence[str], quant: QuantSpec, calib_x: np.ndarray, val_x: np.ndarray,
                val_y: np.ndarray) -> dict[str, Any]:
    """Each layer quantized alone (the rest fp32) and everything int8: relative logit error and top-1."""
    from .compress.quantize import quantize_model

    ref = _ort_logits(fp32_path, val_x)
    scale = float(np.mean(ref.astype(np.float64) ** 2)) or 1.0
    out: dict[str, Any] = {"layers": {}, "fp32_accuracy": _top1(ref, val_y)}
    with tempfile.TemporaryDirectory(prefix="autocompress-sens-") as tmp:
        q, ranges = Path(tmp) / "q.onnx", Path(tmp) / "ranges.json"  # one calibration for every point (same fp32 model)
        for name, bits in [("_all", {"_default": "int8"})] + [(n, {n: "int8"}) for n in layers]:
            quantize_model(fp32_path, q, bits, quant, calib_x, calibration_cache=ranges)
            z = _ort_logits(q, val_x)
            point = {"error": float(np.mean((z.astype(np.float64) - ref) ** 2) / scale), "accuracy": _top1(z, val_y)}
            if name == "_all":
                out["all"] = point
            else:
                out["layers"][name] = point
    return out


def quant_layers(fp32_path: Path, model) -> list[str]:
    """Conv/Linear modules of ``model`` that have nodes in the ONNX file (what a bits pattern can name)."""
    from torch import nn

    from .compress.quantize import module_to_nodes

    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    m2n = module_to_nodes(fp32_path, names)
    return [n for n in names if n in m2n]


def analyse(teacher, groups, data, space: SearchSpace, profile: HardwareProfile, fp32_path: Path, *, seed: int = 0,
            blocks: Sequence[str] = (), int8_speedup: float | None = None,
            log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The whole record (see the module docstring); ``teacher`` is the nn.Module, ``fp32_path`` its ONNX export.
    ``int8_speedup``: int8 alone's speedup where it does not pay on this target (the seeds run in fp32): the int8
    ranking, half the analysis' time, is then skipped and sampled int8 candidates run every layer in int8."""
    from .errors import AutocompressError

    s = space.sensitivity
    t0, c0 = time.perf_counter(), time.process_time()
    idx = val_subset(s.val_samples, len(data.val), seed)
    val_x = data.val.take(idx)
    val_y = data.val.labels[idx].numpy()
    calib_x = data.x_calib[: s.calib_samples]
    exclude = tuple(space.sparsity.exclude) if space.sparsity is not None else ()
    criterion = _criterion(space)
    rec: dict[str, Any] = {"version": VERSION, "ratios": list(s.ratios), "criterion": criterion,
                           "samples": {"calib": len(calib_x), "val": len(idx),
                                       "int8": min(s.int8_samples, len(calib_x), len(idx))}, "seconds": {}}
    if space.sparsity is not None and s.ratios and groups:
        rec.update(prune_curves(teacher, groups, calib_x, val_x, val_y, s.ratios, criterion=criterion,
                                round_to=profile.round_to, exclude=exclude, graph_timeout_s=profile.stage_timeout_s.prune,
                                log=log))
    else:
        rec.update(base_accuracy=None, stages={})
    rec["seconds"]["prune"] = round(time.perf_counter() - t0, 2)
    if blocks:  # depth: each droppable block gone alone (ranks them for depth.drop)
        t1 = time.perf_counter()
        got = block_drops(teacher, blocks, calib_x, val_x, val_y)
        rec["blocks"], rec["blocks_base"] = got["blocks"], got["base"]
        rec["seconds"]["blocks"] = round(time.perf_counter() - t1, 2)
    rec["int8"] = None
    wanted = s.int8 and "int8" in profile.precisions and "int8" in space.bits.choices
    if wanted and int8_speedup is not None:
        log(f"sensitivity: int8 not ranked: int8 alone is {int8_speedup:.2f}x the fp32 baseline here, under the profile's "
            f"int8_seeds_min_speedup ({profile.int8_seeds_min_speedup:g}x), so the seeds are fp32; int8 candidates "
            "the search samples run every layer in int8 (bits.keep_fp32 stays 0)")
        rec["int8_skipped"] = {"int8_speedup": round(int8_speedup, 3), "bar": profile.int8_seeds_min_speedup}
    elif wanted:
        t1 = time.perf_counter()
        q = space.quantization
        quant = QuantSpec(format=profile.int8_format or q.format[0], types=profile.int8_types or q.types[0],
                          per_channel=q.per_channel[0], calibration=q.calibration[0],
                          reduce_range=profile.int8_reduce_range)
        n = s.int8_samples
        try:
            measured = int8_errors(fp32_path, quant_layers(fp32_path, teacher), quant, calib_x[:n].numpy(),
                                   val_x[:n].numpy(), val_y[:n])
        except AutocompressError as e:  # recorded and said: the search goes on without an int8 ranking
            measured = {"layers": {}, "error": f"{type(e).__name__}: {e}"}
            log(f"sensitivity: int8 not ranked ({measured['error']}); bits.keep_fp32 stays 0")
        rec["int8"] = {**measured, "quant": {"format": quant.format, "types": quant.types}}
        rec["seconds"]["int8"] = round(time.perf_counter() - t1, 2)
    rec["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    rec["seconds"]["cpu"] = round(time.process_time() - c0, 2)  # this process's CPU time (wall time on shared cores varies)
    return rec


def _criterion(space: SearchSpace) -> str:
    """The space's first criterion that needs no gradients (the analysis has no labels at hand), else l1."""
    from .compress.criteria import NEEDS_GRADIENTS

    names = list(space.sparsity.criterion) if space.sparsity is not None else []
    return next((c for c in names if c not in NEEDS_GRADIENTS), "l1")


def cache_key(space: SearchSpace, profile: HardwareProfile, groups, parts: Mapping[str, Any]) -> str:
    """Teacher + data (``parts``) + every setting the record depends on."""
    sp = space.sparsity
    return content_hash({"v": VERSION, **parts, "settings": space.sensitivity.model_dump(mode="json"),
                         "groups": {k: list(v) for k, v in groups.items()},
                         "criterion": _criterion(space),
                         "exclude": list(sp.exclude) if sp is not None else None, "round_to": profile.round_to,
                         "int8": [profile.int8_format, profile.int8_types, space.quantization.model_dump(mode="json"),
                                  "int8" in profile.precisions and "int8" in space.bits.choices]})


def load_or_analyse(run_dir: Path, key: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], Path, bool]:
    """``(record, path, reused)``: the cached record for ``key`` in the run's cache, else computed and written."""
    path = Path(run_dir) / "cache" / f"sensitivity-{key}.json"
    if path.is_file():
        return json.loads(path.read_text()), path, True
    rec = {**compute(), "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
    return rec, path, False


# ---------------------------------------------------------------------------- priors (pure)
def _curve(stage: Mapping[str, Any], ratios: Sequence[float], base: float) -> tuple[list[float], list[float], list[float]]:
    """(ratios, accuracy drop in pp made non-decreasing, MACs share removed), both starting at ratio 0."""
    drops = [0.0] + [max(0.0, 100.0 * (base - a)) for a in stage["accuracy"]]
    drops = list(np.maximum.accumulate(drops))
    return [0.0] + list(ratios[: len(stage["accuracy"])]), drops, [0.0] + list(stage["macs_removed"])


def allocate(rec: Mapping[str, Any], mean_ratio: float, *, low: float, high: float, step: float = 0.05) -> dict[str, float]:
    """Per-stage ratios on the grid ``low, low+step, ... <= high`` that remove at least the MACs every stage pruned
    at ``mean_ratio`` removes (the sum of their measured savings), reached by stepping up, one step at a time, the
    stage that removes the most MACs per point of accuracy it loses (interpolated from the measured curves; on a
    tie, the stage pruned least). A stage that failed at some ratio stays at or below the last one it was measured
    at; a stage with no measured point keeps ``mean_ratio``."""
    ratios, base = rec["ratios"], rec["base_accuracy"]
    curves = {s: _curve(v, ratios, base) for s, v in rec["stages"].items() if v["accuracy"]}
    out = {s: float(mean_ratio) for s in rec["stages"] if s not in curves}
    if not curves:
        return out
    n_steps = int(np.floor((high - low) / step + 1e-9))
    # a stage that failed at a ratio (e.g. a layer left with no channel) goes no higher than its last measured one
    top = {s: n_steps if not rec["stages"][s].get("error") else
           max(0, min(n_steps, int(np.floor((curves[s][0][-1] - low) / step + 1e-9)))) for s in curves}

    def at(s: str, r: float, which: int) -> float:
        xs, drops, macs = curves[s]
        return float(np.interp(r, xs, drops if which == 0 else macs))

    target = sum(at(s, min(mean_ratio, curves[s][0][-1]), 1) for s in curves)
    level = {s: 0 for s in curves}  # grid index of each stage

    def r_of(i: int) -> float:
        return round(low + i * step, 6)

    while sum(at(s, r_of(level[s]), 1) for s in curves) < target - 1e-12:
        best, gain = None, -1.0
        for s in curves:
            if level[s] >= top[s]:
                continue
            r0, r1 = r_of(level[s]), r_of(level[s] + 1)
            g = (at(s, r1, 1) - at(s, r0, 1)) / (at(s, r1, 0) - at(s, r0, 0) + EPS_PP)
            # on a tie the stage pruned least goes first: what is not known to differ stays even
            if g > gain + 1e-12 or (best is not None and abs(g - gain) <= 1e-12 and level[s] < level[best]):
                best, gain = s, g
        if best is None:
            break
        level[best] += 1
    return {**{s: r_of(level[s]) for s in curves}, **out}


def block_ranking(rec: Mapping[str, Any], blocks: Sequence[str]) -> list[str]:
    """``blocks`` by the MACs each removes per point of accuracy the teacher loses with it gone alone, the best
    trade first (as :func:`allocate` steps stages: on the custom CNN the least harmful block alone sat at 8x8 pixels
    and bought little speed); on a tie the given order (last blocks first). Blocks the record did not measure keep
    their place after the measured ones."""
    got = rec.get("blocks") or {}
    base = rec["blocks_base"] if got else None
    pos = {b: i for i, b in enumerate(blocks)}

    def gain(b: str) -> float:
        return got[b]["macs_removed"] / (max(0.0, 100.0 * (base - got[b]["accuracy"])) + EPS_PP)

    return sorted([b for b in blocks if b in got], key=lambda b: (-gain(b), pos[b])) + [b for b in blocks if b not in got]


def int8_ranking(rec: Mapping[str, Any]) -> list[str]:
    """Layers by the logit error int8 alone adds to them, most sensitive first."""
    layers = (rec.get("int8") or {}).get("layers") or {}
    return [n for n, _ in sorted(layers.items(), key=lambda kv: (-kv[1]["error"], kv[0]))]


def _range(space: SearchSpace) -> tuple[float, float, float]:
    r = space.sparsity.range
    if isinstance(r, FloatRange):
        return r.low, r.high, r.step or 0.05
    vals = sorted(r) if isinstance(r, list) else [r]
    return vals[0], vals[-1], 0.05


def with_priors(space: SearchSpace, rec: Mapping[str, Any], groups: Mapping[str, Sequence[str]],
                rank_blocks: bool = False) -> SearchSpace:
    """The space shaped by the analysis: the int8 ranking (unless the space lists its own), the droppable blocks
    ranked (``rank_blocks``: found in the teacher, not listed by the user) and the twins of its uniform seeds; a
    twin equal to its uniform seed is left out."""
    from .references import seed_label

    update: dict[str, Any] = {}
    if rank_blocks and rec.get("blocks"):
        update["depth"] = space.depth.model_copy(update={"blocks": block_ranking(rec, space.depth.blocks)})
    ranking = int8_ranking(rec)
    if ranking and not space.bits.sensitive_layers:
        update["bits"] = space.bits.model_copy(update={"sensitive_layers": ranking})
    sp = space.sparsity
    if sp is not None and sp.granularity == "per_stage" and rec.get("stages") and set(rec["stages"]) == set(groups):
        low, high, step = _range(space)
        seeds: list[SeedCandidate] = []
        for s in space.seeds:
            seeds.append(s)
            if s.student != "pruned" or isinstance(s.sparsity, dict) or not any(abs(s.sparsity - r) < 1e-9 for r in space.sensitivity.seeds):
                continue
            alloc = allocate(rec, s.sparsity, low=low, high=high, step=step)
            if all(abs(v - s.sparsity) < 1e-9 for v in alloc.values()):
                continue
            label = seed_label(s).replace("uniform", "sensitivity", 1)
            seeds.append(s.model_copy(update={"sparsity": {g: alloc[g] for g in groups}, "label": label}))
        update["seeds"] = seeds
    return space.model_copy(update=update) if update else space


# ---------------------------------------------------------------------------- the run's hook
def priors_for_run(space: SearchSpace, teacher, groups, data, profile: HardwareProfile, fp32_path: Path, run_dir: Path,
                   key_parts: Mapping[str, Any], *, seed: int = 0, store=None, rank_blocks: bool = False,
                   int8_speedup: float | None = None, log: Callable[[str], None] = print) -> SearchSpace:
    """Called once by ``engine.prepare``: the analysis (cached) and the space it shapes; the space unchanged when
    ``sensitivity.enabled`` is false. ``rank_blocks``: measure and rank the space's droppable blocks (found in the
    teacher by ``space.with_blocks``). ``int8_speedup``: set where int8 alone does not pay here (see
    :func:`analyse`)."""
    from .space import depth_active

    if not space.sensitivity.enabled:
        return space
    blocks = list(space.depth.blocks) if rank_blocks and depth_active(space) else []
    key = cache_key(space, profile, groups, {**key_parts, **({"blocks": blocks} if blocks else {}),
                                             **({"int8_ranked": False} if int8_speedup is not None else {})})
    rec, path, reused = load_or_analyse(run_dir, key, lambda: analyse(teacher, groups, data, space, profile, fp32_path,
                                                                      seed=seed, blocks=blocks,
                                                                      int8_speedup=int8_speedup, log=log))
    shaped = with_priors(space, rec, groups, rank_blocks=bool(blocks))
    twins = [s.label for s in shaped.seeds if s.label and s not in space.seeds]
    secs = rec["seconds"]
    log(f"sensitivity: {len(rec['stages'])} stages x {len(rec['ratios'])} ratios"
        + (f", {len((rec['int8'] or {}).get('layers', {}))} layers int8" if rec.get("int8") else "")
        + (f", {len(rec['blocks'])} blocks dropped alone ({secs.get('blocks', 0):.1f} s)" if rec.get("blocks") else "")
        + (f" reused from {path.name}" if reused else
           f" in {secs['total']:.1f} s (pruning {secs['prune']:.1f} s, int8 {secs.get('int8', 0):.1f} s; "
           f"{secs.get('cpu', 0):.0f} CPU-s)")
        + (f"; seeds added: {', '.join(twins)}" if twins else "")
        + (f"; most int8-sensitive: {', '.join(shaped.bits.sensitive_layers[:3])}" if rec.get("int8") else "")
        + (f"; blocks dropped first: {', '.join(shaped.depth.blocks[:3])}" if rec.get("blocks") else ""))
    if store is not None:
        store.update_run_yaml({"sensitivity": {"file": str(path.relative_to(run_dir)), "seconds": secs,
                                               "seeds_added": twins,
                                               "sensitive_layers": list(shaped.bits.sensitive_layers[:8]),
                                               "keep_fp32_max": int(max(_values_of(shaped.bits.keep_fp32))),
                                               **({"blocks": list(shaped.depth.blocks)} if blocks else {})}})
    return shaped


def read_for_report(run_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's record (named in run.yaml), or None when the run has none."""
    rel = (meta.get("sensitivity") or {}).get("file")
    path = Path(run_dir) / rel if rel else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())
