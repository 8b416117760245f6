"""One candidate through the stage pipeline -> a :class:`TrialRecord`.

student (build -> prune -> distill -> export fp32 ONNX; cached by content hash, so candidates that differ
only in bit-width reuse it) -> quantize (per-layer bits) -> evaluate (ONNX Runtime) -> latency (measured
interleaved with the baseline, or predicted) -> record. Any exception becomes a FAILED record naming the
stage; a candidate that cannot be built is INFEASIBLE; one stopped early is STOPPED.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import AutocompressError, InfeasibleCandidate, StageError
from .records import Candidate, Metrics, TrialRecord, TrialStatus


class EarlyStopped(Exception):
    def __init__(self, message: str):
        super().__init__(message)


@dataclass(frozen=True)
class Baseline:
    path: Path
    accuracy: float
    top5: float | None
    latency_ms: float
    latency_cv: float
    size_mb: float
    params: int
    macs: int
    predicted_ms: float | None = None  # predict mode: the baseline's predicted latency

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


@dataclass
class EarlyStopper:
    """Stops a distillation that cannot reach the accuracy constraint.

    Two rules, both conservative: (1) after the last epoch, a student more than ``margin`` below the
    accuracy target is not worth quantizing and timing; (2) after an earlier epoch k, a student below
    every candidate that went on to meet the target was at epoch k (minus ``margin``; needs
    ``min_history`` such successes with the same epoch budget) is stopped. Collapsed students (chance
    level after the second-to-last epoch) are stopped whatever the history.
    """

    target: float | None  # accuracy the candidate must reach (baseline - max drop), fraction
    num_classes: int
    margin: float = 0.02
    min_history: int = 3
    successes: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)  # (epochs, history)

    def observe(self, history: tuple[float, ...], final_accuracy: float | None) -> None:
        if self.target is not None and final_accuracy is not None and final_accuracy >= self.target and history:
            self.successes.append((len(history), tuple(history)))

    def check(self, epoch: int, acc: float, total_epochs: int) -> str | None:
        last = epoch == total_epochs - 1
        if self.target is not None and last and acc < self.target - self.margin:
            return f"accuracy {acc:.1%} after distillation is below the target {self.target:.1%}"
        if not last and epoch >= total_epochs - 2 and epoch >= 1 and acc <= 1.5 / self.num_classes:
            return f"collapsed to chance level ({acc:.1%}) after epoch {epoch + 1}"
        if self.target is not None and not last:
            peers = [h[epoch] for n, h in self.successes if n == total_epochs and len(h) > epoch]
            if len(peers) >= self.min_history and acc < min(peers) - self.margin:
                return (f"accuracy {acc:.1%} after epoch {epoch + 1} is below every candidate that reached the "
                        f"target at that point (min {min(peers):.1%})")
        return None


@dataclass
class TrialContext:
    """Everything a trial reads; built once per run (teacher, data and teacher logits are shared)."""

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
    early_stopper: EarlyStopper | None = None
    log: Callable[[str], None] = lambda s: None
    # where latency is taken: None = here; a backend may send it to the target's node instead
    # (called with the final model's path, returns (latency_ms, speedup, cv))
    latency_fn: Callable[[Path], tuple[float, float, float | None]] | None = None
    train_device: str = "cpu"  # where distillation runs ('cpu' | 'cuda'); export and measurement stay on the CPU

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        return (int(self.profile.batch_size), *self.input_shape)

    @property
    def cache_dir(self) -> Path:
        return self.run_dir / "cache" / "students"


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _build_student(cand: Candidate, ctx: TrialContext, times: dict[str, float], history: list[float]) -> tuple[Path, dict]:
    """Student stage, cached under cache/students/<student_key>/ (meta.json is written last)."""
    import torch

    from .bounds import stage_bound
    from .compress.distill import distill
    from .compress.export import export_onnx
    from .compress.prune import prune_model
    from .compress.students import build_student
    from .measure.cost import count_params_macs

    d = ctx.cache_dir / cand.student_key()
    meta_path = d / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        history.extend(meta.get("history", ()))
        if meta.get("stopped"):
            raise EarlyStopped(meta["stopped"])
        times["student_cached"] = 1.0
        return d / "student.onnx", meta
    d.mkdir(parents=True, exist_ok=True)
    data = ctx.data
    torch.manual_seed(ctx.seed)
    example = torch.zeros(1, *data.input_shape)
    t = time.perf_counter()
    model = build_student(cand, ctx.teacher, data.num_classes, data.input_shape)
    meta: dict[str, Any] = {"student_key": cand.student_key()}
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

    if cand.distill is not None:
        t = time.perf_counter()
        stopper = ctx.early_stopper
        reason: list[str] = []

        def on_epoch(epoch: int, acc: float):
            history.append(acc)
            ctx.log(f"    epoch {epoch + 1}/{cand.distill.epochs}: val acc {acc:.2%}")
            why = stopper.check(epoch, acc, cand.distill.epochs) if stopper else None
            if why:
                reason.append(why)
                return False
            return None

        distill(model, data.train, ctx.teacher_logits, data.val, cand.distill, seed=ctx.seed,
                on_epoch=on_epoch, device=ctx.train_device)
        times["distill"] = time.perf_counter() - t
        meta["history"] = list(history)
        if reason:
            _atomic_write_json(meta_path, {**meta, "stopped": reason[0]})
            raise EarlyStopped(reason[0])
    model.eval()
    t = time.perf_counter()
    with stage_bound("export", ctx.profile.stage_timeout_s.export, log=ctx.log):
        exp = export_onnx(model, example, d / "student.onnx")
    times["export"] = time.perf_counter() - t
    params, macs = count_params_macs(model, example)
    meta.update(params=params, macs=macs, export_max_abs_diff=exp.max_abs_diff)
    _atomic_write_json(meta_path, meta)
    return d / "student.onnx", meta


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


def run_trial(number: int, cand: Candidate, ctx: TrialContext) -> TrialRecord:
    from .bounds import stage_bound
    from .compress.quantize import quantize_model
    from .measure.accuracy import evaluate_onnx
    from .measure.cost import file_size_mb
    from .measure.latency import measure_latency

    t0 = time.perf_counter()
    times: dict[str, float] = {}
    current = ["student"]
    trial_dir = ctx.run_dir / "trials" / f"{number:05d}"
    if trial_dir.exists():  # a partial artifact of a killed attempt: never mistaken for a result
        shutil.rmtree(trial_dir)
    trial_dir.mkdir(parents=True)

    history: list[float] = []

    def record(status: TrialStatus, metrics=Metrics(), stage=None, message=None, artifact=None) -> TrialRecord:
        return TrialRecord(
            kd_history=tuple(history), worker=f"{socket.gethostname()}:{os.getpid()}",
            number=number, status=status, candidate=cand, metrics=metrics, stage=stage, message=message,
            duration_s=time.perf_counter() - t0, stage_times=tuple((k, round(v, 4)) for k, v in times.items()),
            artifact=artifact,
        )

    try:
        with _stage("student", current, times):
            student_path, meta = _build_student(cand, ctx, times, history)
        final = trial_dir / "model.onnx"
        with _stage("quantize", current, times), stage_bound("quantize", ctx.profile.stage_timeout_s.quantize, log=ctx.log):
            bits = cand.bits_map()
            if all(v == "fp32" for v in bits.values()):
                shutil.copyfile(student_path, final)
            else:
                quantize_model(student_path, final, bits, cand.quant, ctx.data.x_calib.numpy(),
                               batch_size=ctx.profile.batch_size)
        with _stage("evaluate", current, times):
            acc = evaluate_onnx(final, ctx.data.val, metric=ctx.metric)
        accuracy = acc.metric if acc.metric is not None else acc.top1
        scale = 1.0 if acc.metric is not None else 100.0
        drop = (ctx.baseline.accuracy - accuracy) * scale
        if ctx.metric is not None and ctx.metric_direction == "minimize":
            drop = -drop
        size = file_size_mb(final)
        if ctx.early_stopper is not None:
            ctx.early_stopper.observe(tuple(history), accuracy)
        with _stage("latency", current, times):
            if ctx.latency_fn is not None:
                lat_ms, speedup, cv = ctx.latency_fn(final)
            elif ctx.profile.latency.mode == "predict":
                from .measure.predict import predict_latency

                lat_ms = predict_latency(final, ctx.profile, ctx.lookup_table, ctx.batch_shape)
                speedup = (ctx.baseline.predicted_ms or ctx.baseline.latency_ms) / lat_ms
                cv = None
            else:
                lat = measure_latency(final, ctx.profile, ctx.batch_shape, baseline_path=ctx.baseline.path,
                                      seed=ctx.seed + number)
                lat_ms, speedup, cv = lat.median_ms, lat.speedup, lat.cv
        metrics = Metrics(
            accuracy=accuracy, top5=acc.top5, accuracy_drop=drop, latency_ms=lat_ms, speedup=speedup,
            size_mb=size, params=meta.get("params"), macs=meta.get("macs"), latency_cv=cv,
            latency_mode=ctx.profile.latency.mode,
        )
        return record(TrialStatus.COMPLETE, metrics, artifact=str(final.relative_to(ctx.run_dir)))
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
