"""One candidate through the stage pipeline -> a :class:`TrialRecord`, speed first.

Speed and size depend on a candidate's graph, not on its trained weights, so they are measured before any
distillation (phase ``speed``): student (build -> prune) -> export the untrained student -> quantize it with
the candidate's bits -> latency (measured interleaved with the baseline, predicted, or on the target node)
and file size -> the **gate** (``ctx.early_stopper``, :mod:`.search.scheduler`): INFEASIBLE when a speed,
size or latency constraint is missed, STOPPED when a finished candidate dominates it in (speedup, size) while
meeting the accuracy target with margin. Then (phase ``distill``) knowledge distillation, the scheduler
consulted after every epoch (its rungs: successive halving over the KD epochs), and (phase ``final``) the
trained student exported into the student cache (cache/students/<student_key>/, by content hash, so
candidates that differ only in bit-width reuse it; meta.json written last) -> quantize -> evaluate (ONNX
Runtime) -> latency: the figure taken before training when the final graph has the same signature
(:func:`graph_signature`), else measured again. Any exception becomes a FAILED record naming the stage; a
candidate that cannot be built is INFEASIBLE; one stopped early is STOPPED. Records carry the phase reached,
where the latency came from, and ``latency_pre`` in their stage times.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import AutocompressError, InfeasibleCandidate, StageError
from .records import Baseline, Candidate, Metrics, TrialRecord, TrialStatus, content_hash  # noqa: F401 (Baseline: re-exported)
from .search.scheduler import FidelityScheduler


class EarlyStopped(Exception):
    def __init__(self, message: str):
        super().__init__(message)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial reads; built once per run (teacher, data and teacher logits are shared).

    Frozen: a caller that needs another view (the loop's display as ``log``, a worker's own folder) makes
    one with ``dataclasses.replace``; the services it holds (the early stopper) are objects of their own."""

    run_dir: Path
    data: Any  # DataBundle
    teacher: Any  # Teacher
    teacher_logits: Any  # one row per training sample: a Tensor or a memory-mapped array
    profile: Any  # HardwareProfile
    space: Any  # SearchSpace
    baseline: Baseline
    input_shape: tuple[int, int, int]  # C, H, W as the profile runs it
    constraints: Any  # config.Constraints
    seed: int = 0
    metric: Callable | None = None
    metric_direction: str = "maximize"
    lookup_table: dict | None = None
    early_stopper: FidelityScheduler | None = None  # the gate before distillation and its rungs (search/scheduler.py)
    log: Callable[[str], None] = lambda s: None
    # where latency is taken: None = here; a backend may send it to the target's node instead
    # (called with an ONNX path: the untrained candidate's before distillation, the final model's when its graph
    # changed or its student came from the cache; returns (latency_ms, speedup, cv))
    latency_fn: Callable[[Path], tuple[float, float, float | None]] | None = None
    train_device: str = "cpu"  # where distillation runs ('cpu' | 'cuda'); export and measurement stay on the CPU

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        return (int(self.profile.batch_size), *self.input_shape)

    @property
    def cache_dir(self) -> Path:
        return self.run_dir / "cache" / "students"


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")  # workers sharing the run folder write their own
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _cached_student(cand: Candidate, ctx: TrialContext, times: dict[str, float], history: list[float],
                    key: str | None = None) -> tuple[Path, dict] | None:
    """The distilled student from cache/students/<student_key>/ (or ``key``'s) when an earlier trial made it
    (meta.json is written last, so a killed trial leaves no half student), else None. ``meta["stopped"]``: its
    distillation was stopped by a rule that does not depend on speed (the caller raises)."""
    meta_path = ctx.cache_dir / (key or cand.student_key()) / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    history.extend(meta.get("history", ()))
    times["student_cached"] = 1.0
    return meta_path.parent / "student.onnx", meta


def _pruned_student(cand: Candidate, ctx: TrialContext, times: dict[str, float]):
    """Build the candidate's student (the pruned teacher or a builder's model): (model, example input, meta)."""
    import torch

    from .bounds import stage_bound
    from .compress.prune import prune_model
    from .compress.students import build_student

    data = ctx.data
    torch.manual_seed(ctx.seed)
    example = torch.zeros(1, *data.input_shape)
    t = time.perf_counter()
    model = build_student(cand, ctx.teacher, data.num_classes, data.input_shape)
    meta: dict[str, Any] = {"student_key": cand.student_key()}
    if cand.drop:  # whole blocks replaced by the identity before the rest is pruned (compress/depth.py)
        from .compress.depth import drop_blocks

        drop_blocks(model, cand.drop)
        meta["dropped_blocks"] = list(cand.drop)
    if cand.student == "pruned" and any(v > 0 for v in cand.sparsity_map().values()):
        exclude = tuple(ctx.space.sparsity.exclude) if ctx.space.sparsity is not None else ()
        with stage_bound("prune", ctx.profile.stage_timeout_s.prune, log=ctx.log):
            pr = prune_model(
                model, cand.sparsity_map(), example, criterion=cand.criterion, round_to=ctx.profile.round_to,
                exclude=exclude, calib=(data.take("train", range(min(128, data.size("train")))), data.y_train[:128]),
                inplace=True, graph_timeout_s=ctx.profile.stage_timeout_s.prune and ctx.profile.stage_timeout_s.prune / 2,
            )
        model = pr.model
        meta.update(params_before=pr.params_before, macs_before=pr.macs_before)
    times["prune"] = time.perf_counter() - t
    return model, example, meta


def _same_network(model, cand: Candidate, ctx: TrialContext, number: int) -> tuple[str, int | None] | None:
    """The student key of an earlier candidate whose pruned student was this one weight for weight, before
    training, with the same KD recipe: channel rounding maps neighbouring ratios to one network (16-channel
    floors: 90% and 95% of a 64-channel stage both keep 16), and distillation is seeded, so its distilled student
    is this one's. Indexed under cache/students/same/: (its student key, its trial number), or None when this
    network is new (it is indexed under this candidate's key and ``number``)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    idx = ctx.cache_dir / "same" / content_hash({"weights": h.hexdigest(), "student": cand.student,
                                                  "distill": cand.distill.key_dict() if cand.distill else None})
    mine = cand.student_key()
    if idx.is_file():
        other = json.loads(idx.read_text())
        if other["student_key"] != mine and (ctx.cache_dir / other["student_key"] / "meta.json").is_file():
            return other["student_key"], other.get("trial")
    idx.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(idx, {"student_key": mine, "trial": number})
    return None


def _export(model, example, path: Path, ctx: TrialContext):
    from .bounds import stage_bound
    from .compress.export import export_onnx

    model.eval()
    with stage_bound("export", ctx.profile.stage_timeout_s.export, log=ctx.log):
        return export_onnx(model, example, path)


def _save_student(model, example, cand: Candidate, ctx: TrialContext, meta: dict, history: list[float]) -> tuple[Path, dict]:
    """Export the (distilled) student into cache/students/<student_key>/, meta.json last."""
    from .measure.cost import count_params_macs

    d = ctx.cache_dir / cand.student_key()
    d.mkdir(parents=True, exist_ok=True)
    exp = _export(model, example, d / "student.onnx", ctx)
    params, macs = count_params_macs(model, example)
    meta = {**meta, "params": params, "macs": macs, "export_max_abs_diff": exp.max_abs_diff}
    if cand.distill is not None:
        meta["history"] = list(history)
    _atomic_write_json(d / "meta.json", meta)
    return d / "student.onnx", meta


def _distill_student(model, cand: Candidate, ctx: TrialContext, history: list[float], speed: Metrics, meta: dict) -> None:
    """Knowledge distillation, the scheduler consulted after every epoch (its speed-blind rules, then the
    peer-lag rule and the rungs with the speed and size measured before training). Raises EarlyStopped; a verdict
    of the speed-blind rules is cached with the student so its other bit-widths stop too."""
    from .compress.distill import distill

    stopper, total = ctx.early_stopper, cand.distill.epochs
    reason: list[tuple[str, bool]] = []

    def on_epoch(epoch: int, acc: float):
        history.append(acc)
        ctx.log(f"    epoch {epoch + 1}/{total}: val acc {acc:.2%}")
        if stopper is None:
            return None
        why = stopper.check(epoch, acc, total, cand.distill.samples_per_epoch)
        if why:
            reason.append((why, True))
            return False
        why = (stopper.lagging(epoch, acc, total, speed.speedup, cand.distill.samples_per_epoch)
               or stopper.rung(epoch, acc, total, speed.speedup, speed.size_mb, cand.distill.samples_per_epoch))
        if why:
            reason.append((why, False))
            return False
        return None

    distill(model, ctx.data.train, ctx.teacher_logits, ctx.data.val, cand.distill, seed=ctx.seed,
            on_epoch=on_epoch, device=ctx.train_device)
    if reason:
        why, cacheable = reason[0]
        if cacheable:
            d = ctx.cache_dir / cand.student_key()
            d.mkdir(parents=True, exist_ok=True)
            _atomic_write_json(d / "meta.json", {**meta, "history": list(history), "stopped": why})
        raise EarlyStopped(why)


def _quantize(src: Path, dst: Path, cand: Candidate, ctx: TrialContext) -> None:
    from .bounds import stage_bound
    from .compress.quantize import quantize_model

    with stage_bound("quantize", ctx.profile.stage_timeout_s.quantize, log=ctx.log):
        bits = cand.bits_map()
        if all(v == "fp32" for v in bits.values()):
            shutil.copyfile(src, dst)
        else:
            quantize_model(src, dst, bits, cand.quant, ctx.data.x_calib.numpy(), batch_size=ctx.profile.batch_size)


def _speed(path: Path, ctx: TrialContext, number: int) -> tuple[float, float, float | None]:
    """(latency_ms, speedup, cv) of the ONNX model at ``path``: on the target node (``ctx.latency_fn``), predicted
    from the profile's table, or measured here interleaved with the baseline.

    One measurement per graph: a model whose :func:`graph_signature` an earlier trial of this run measured takes
    that figure (cache/speed/<signature>.json). Channel rounding maps neighbouring ratios to one network, and each
    new measurement of it was another draw of the machine's noise, of which the front kept the luckiest: a user CNN
    with 32/64-channel stages had 70%, 80%, 90% and a sensitivity twin all at 16/16 channels, measured 5.46-7.32x,
    the front showing 7.32x and the re-timing 5.43x (benchmarks/README.md, "One measurement per graph")."""
    if ctx.profile.latency.mode == "predict" and ctx.latency_fn is None:
        from .measure.predict import predict_latency

        lat_ms = predict_latency(path, ctx.profile, ctx.lookup_table, ctx.batch_shape)
        return lat_ms, (ctx.baseline.predicted_ms or ctx.baseline.latency_ms) / lat_ms, None
    known = ctx.run_dir / "cache" / "speed" / f"{graph_signature(path)}.json"
    if known.is_file():
        try:
            d = json.loads(known.read_text())
            ctx.log(f"    the same graph as trial {d['trial']}: its speed ({d['speedup']:.2f}x) taken, not measured again")
            return float(d["latency_ms"]), float(d["speedup"]), d.get("cv")
        except (ValueError, KeyError, TypeError):
            pass  # a torn file: measured again below
    if ctx.latency_fn is not None:
        got = ctx.latency_fn(path)
    else:
        from .measure.latency import measure_latency

        lat = measure_latency(path, ctx.profile, ctx.batch_shape, baseline_path=ctx.baseline.path, seed=ctx.seed + number)
        got = (lat.median_ms, lat.speedup, lat.cv)
    known.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(known, {"latency_ms": got[0], "speedup": got[1], "cv": got[2], "trial": number})
    return got


def graph_signature(path: Path) -> str:
    """A hash of what an ONNX model's speed and size depend on: its nodes in order (domain, op type,
    attributes; tensor attributes by type and shape), its initializers' types and shapes, its inputs and
    outputs, not the values of its weights. The untrained and the trained student share it unless a
    weight-dependent rewrite (e.g. of the quantizer) changed the graph."""
    import onnx
    from onnx import AttributeProto, helper

    m = onnx.load(str(path), load_external_data=False)
    g = m.graph

    def attr(a):
        if a.type == AttributeProto.TENSOR:
            return (a.name, a.t.data_type, list(a.t.dims))
        if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS, AttributeProto.TENSORS):
            return (a.name, int(a.type))
        v = helper.get_attribute_value(a)
        return (a.name, v.decode(errors="replace") if isinstance(v, bytes) else v)

    def io(v):
        t = v.type.tensor_type
        return (t.elem_type, [d.dim_value or d.dim_param for d in t.shape.dim])

    return content_hash({
        "nodes": [(n.domain, n.op_type, len(n.input), len(n.output), [attr(a) for a in n.attribute]) for n in g.node],
        "initializers": sorted((t.data_type, list(t.dims)) for t in g.initializer),
        "inputs": [io(v) for v in g.input], "outputs": [io(v) for v in g.output],
    }, n=32)


@contextmanager
def _stage(name: str, current: list[str], times: dict[str, float]):
    current[0] = name
    t = time.perf_counter()
    try:
        yield
    finally:
        times[name] = times.get(name, 0.0) + time.perf_counter() - t


def feasibility(metrics: Metrics, constraints) -> list[float]:
    """Constraint values in Optuna's convention: <= 0 means satisfied."""
    out = []
    if constraints.max_accuracy_drop is not None:
        out.append((metrics.accuracy_drop if metrics.accuracy_drop is not None else 1e9) - constraints.max_accuracy_drop)
    if constraints.min_speedup is not None:
        out.append(constraints.min_speedup - (metrics.speedup or 0.0))
    if constraints.max_size_mb is not None:
        out.append((metrics.size_mb if metrics.size_mb is not None else 1e9) - constraints.max_size_mb)
    if constraints.max_latency_ms is not None:
        out.append((metrics.latency_ms if metrics.latency_ms is not None else 1e9) - constraints.max_latency_ms)
    return out


def feasible_records(records, constraints) -> list[TrialRecord]:
    """The COMPLETE records that meet every constraint."""
    return [r for r in records if r.status == TrialStatus.COMPLETE and all(v <= 0 for v in feasibility(r.metrics, constraints))]


def run_trial(number: int, cand: Candidate, ctx: TrialContext) -> TrialRecord:
    """One candidate, speed first (see the module docstring): a FAILED / INFEASIBLE / STOPPED / COMPLETE record."""
    from .measure.accuracy import evaluate_onnx
    from .measure.cost import count_params_macs, file_size_mb

    t0 = time.perf_counter()
    times: dict[str, float] = {}
    current = ["student"]
    trial_dir = ctx.run_dir / "trials" / f"{number:05d}"
    if trial_dir.exists():  # a partial artifact of a killed attempt: never mistaken for a result
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)
    final = trial_dir / "model.onnx"
    untrained, untrained_q = trial_dir / "untrained.onnx", trial_dir / "untrained.quantized.onnx"

    history: list[float] = []
    state: dict[str, Any] = {"phase": "speed", "speed": Metrics(), "source": None}

    def record(status: TrialStatus, metrics=None, stage=None, message=None, artifact=None) -> TrialRecord:
        st = dict(times)
        # "student" keeps the meaning reports give it: build + prune + distill + export of the student
        st["student"] = st.get("student", 0.0) + st.get("distill", 0.0) + st.get("export", 0.0)
        # a reused student's note leads whatever the record says (the trial's console line shows the message, not
        # the log's per-trial lines): a verdict on trial N's student says whose it is
        message = "; ".join(filter(None, (state.get("note"), message))) or None
        return TrialRecord(
            kd_history=tuple(history), worker=f"{socket.gethostname()}:{os.getpid()}",
            number=number, status=status, candidate=cand, metrics=metrics or state["speed"], stage=stage,
            message=message, duration_s=time.perf_counter() - t0, stage_times=tuple((k, round(v, 4)) for k, v in st.items()),
            artifact=artifact, phase=state["phase"], latency_source=state["source"],
        )

    try:
        with _stage("student", current, times):
            cached = _cached_student(cand, ctx, times, history)
            if cached is None:
                model, example, meta = _pruned_student(cand, ctx, times)
                same = _same_network(model, cand, ctx, number) if cand.distill is not None else None
                if same is not None:  # the same network as an earlier candidate's: its distilled student
                    cached = _cached_student(cand, ctx, times, history, key=same[0])
                    state["note"] = (f"the same pruned network as trial {same[1]} (channel rounding): its distilled "
                                     "student reused, no distillation")
                    ctx.log(f"    {state['note']}")
        pre = None  # (quantized untrained model, (latency_ms, speedup, cv))
        if cached is not None:
            student_path, meta = cached
            if meta.get("stopped"):
                state["phase"] = "distill"
                raise EarlyStopped(meta["stopped"])
        else:
            # speed first: the untrained graph, exported and quantized with the candidate's bits, timed
            kd = cand.distill is not None
            with _stage("export", current, times):
                if kd:
                    _export(model, example, untrained, ctx)
                    src = untrained
                else:  # nothing to train: this export is the student
                    student_path, meta = _save_student(model, example, cand, ctx, meta, history)
                    src = student_path
            pre_path = untrained_q if kd else final
            with _stage("quantize", current, times):
                _quantize(src, pre_path, cand, ctx)
            with _stage("latency", current, times):
                lat = _speed(pre_path, ctx, number)
            times["latency_pre"] = times["latency"]
            params, macs = count_params_macs(model, example)
            state["speed"] = Metrics(latency_ms=lat[0], speedup=lat[1], size_mb=file_size_mb(pre_path), params=params,
                                     macs=macs, latency_cv=lat[2], latency_mode=ctx.profile.latency.mode)
            pre = (pre_path, lat)
            current[0] = "gate"
            speed = state["speed"]
            verdict = ctx.early_stopper.gate(speed.speedup, speed.size_mb, speed.latency_ms) if ctx.early_stopper else None
            if verdict is not None:
                return record(verdict.status, stage="gate", message=verdict.message)
            if kd:
                state["phase"] = "distill"
                with _stage("distill", current, times):
                    _distill_student(model, cand, ctx, history, speed, meta)
                with _stage("export", current, times):
                    student_path, meta = _save_student(model, example, cand, ctx, meta, history)
        state["phase"] = "final"
        if pre is None or pre[0] != final:
            with _stage("quantize", current, times):
                _quantize(student_path, final, cand, ctx)
        with _stage("evaluate", current, times):
            acc = evaluate_onnx(final, ctx.data.val, metric=ctx.metric)
        accuracy = acc.metric if acc.metric is not None else acc.top1
        scale = 1.0 if acc.metric is not None else 100.0
        drop = (ctx.baseline.accuracy - accuracy) * scale
        if ctx.metric is not None and ctx.metric_direction == "minimize":
            drop = -drop
        size = file_size_mb(final)
        if pre is not None and (pre[0] == final or graph_signature(pre[0]) == graph_signature(final)):
            lat, state["source"] = pre[1], "untrained graph"  # same graph: its speed was measured before training
        else:
            if pre is not None:
                ctx.log(f"    trial {number}: the trained model's graph differs from the untrained one's; latency measured again")
            with _stage("latency", current, times):
                lat = _speed(final, ctx, number)
            state["source"] = "trained model"
        metrics = Metrics(
            accuracy=accuracy, top5=acc.top5, accuracy_drop=drop, latency_ms=lat[0], speedup=lat[1],
            size_mb=size, params=meta.get("params"), macs=meta.get("macs"), latency_cv=lat[2],
            latency_mode=ctx.profile.latency.mode,
        )
        rec = record(TrialStatus.COMPLETE, metrics, artifact=str(final.relative_to(ctx.run_dir)))
        if ctx.early_stopper is not None:  # the loop reports it too; the scheduler counts it once
            ctx.early_stopper.observe_record(rec)
        return rec
    except EarlyStopped as e:
        return record(TrialStatus.STOPPED, stage=current[0], message=str(e))
    except InfeasibleCandidate as e:
        return record(TrialStatus.INFEASIBLE, stage=current[0], message=str(e))
    except StageError as e:
        return record(TrialStatus.FAILED, stage=e.stage, message=e.detail)
    except AutocompressError as e:
        return record(TrialStatus.FAILED, stage=current[0], message=str(e))
    except MemoryError:
        return record(TrialStatus.FAILED, stage=current[0], message="out of memory")
    except Exception as e:  # a trial never kills the study
        tb = traceback.extract_tb(e.__traceback__)
        where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return record(TrialStatus.FAILED, stage=current[0], message=f"{type(e).__name__}: {first}{where}")
    finally:
        for p in (untrained, untrained_q):
            p.unlink(missing_ok=True)
