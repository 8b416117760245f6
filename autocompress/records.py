"""Frozen values that flow through the engine. No torch/onnx import here.

A :class:`Candidate` is one point of the search space; a :class:`TrialRecord` is what a trial produced; the
:class:`Baseline` is what every trial is measured against.
Per-layer settings are mappings from a module-name pattern to a value: an exact module name,
``"re:<regex>"`` (``re.fullmatch`` on the module name) or ``"_default"``. When several patterns match a
module, the one written *last* wins, so a mapping reads like a list of overrides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

PRECISIONS = ("fp32", "fp16", "int8")


class TrialStatus(str, Enum):
    COMPLETE = "COMPLETE"
    INFEASIBLE = "INFEASIBLE"  # could not be built (e.g. zero channels) or violates a hard rule
    STOPPED = "STOPPED"  # stopped early: could not reach the front or the constraints
    FAILED = "FAILED"  # a stage raised; stage and message are recorded


@dataclass(frozen=True)
class DistillSpec:
    epochs: int = 3
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.9
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adam
    # fidelity for large data: each epoch trains on a fresh seeded subset of this many training samples
    # (None or >= the train split: all of it, as before)
    samples_per_epoch: int | None = None

    def key_dict(self) -> dict[str, Any]:
        """What identifies the distilled student; samples_per_epoch only when set (older keys stay valid)."""
        d = asdict(self)
        if d["samples_per_epoch"] is None:
            del d["samples_per_epoch"]
        return d


@dataclass(frozen=True)
class QuantSpec:
    """How int8 layers are quantized (ONNX Runtime)."""

    mode: str = "static"  # static | dynamic
    format: str = "qdq"  # qdq | qoperator
    types: str = "u8s8"  # u8s8 | s8s8  (activations / weights)
    per_channel: bool = True
    calibration: str = "minmax"  # minmax | entropy | percentile
    # U8S8 weights in 7 bits, against the int16 saturation of x86 CPUs without VNNI (compress/quantize.py);
    # None: decided by the CPU that quantizes (on when it is x86 without VNNI)
    reduce_range: bool | None = None


def _frozen_items(m: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple((str(k), v) for k, v in (m or {}).items())


@dataclass(frozen=True)
class Candidate:
    """One point in the search space, fully resolved.

    ``sparsity`` and ``bits`` are tuples of (pattern, value) pairs so the value is hashable; use
    :meth:`sparsity_map` / :meth:`bits_map` for dicts. Order matters: later patterns win.
    """

    student: str = "pruned"  # "pruned" or a student builder name (e.g. "resnet", "mobilenet", user:...)
    student_args: tuple[tuple[str, Any], ...] = ()
    sparsity: tuple[tuple[str, float], ...] = ()
    criterion: str = "l1"
    bits: tuple[tuple[str, str], ...] = (("_default", "fp32"),)
    quant: QuantSpec = field(default_factory=QuantSpec)
    distill: DistillSpec | None = field(default_factory=DistillSpec)
    params: tuple[tuple[str, Any], ...] = ()  # the raw searched parameters, for tables
    drop: tuple[str, ...] = ()  # blocks of a pruned student replaced by the identity (compress/depth.py)

    @staticmethod
    def make(
        *,
        student: str = "pruned",
        student_args: Mapping[str, Any] | None = None,
        sparsity: Mapping[str, float] | None = None,
        criterion: str = "l1",
        bits: Mapping[str, str] | None = None,
        quant: QuantSpec | None = None,
        distill: DistillSpec | None = DistillSpec(),
        params: Mapping[str, Any] | None = None,
        drop: Sequence[str] = (),
    ) -> "Candidate":
        return Candidate(
            student=student,
            student_args=_frozen_items(student_args),
            sparsity=_frozen_items(sparsity),
            criterion=criterion,
            bits=_frozen_items(bits) or (("_default", "fp32"),),
            quant=quant or QuantSpec(),
            distill=distill,
            params=_frozen_items(params),
            drop=tuple(drop),
        )

    def sparsity_map(self) -> dict[str, float]:
        return dict(self.sparsity)

    def bits_map(self) -> dict[str, str]:
        return dict(self.bits)

    def student_args_map(self) -> dict[str, Any]:
        return dict(self.student_args)

    def uses(self, precision: str) -> bool:
        return any(v == precision for _, v in self.bits)

    def student_key(self) -> str:
        """Content hash of everything that determines the distilled student (not bits/quant)."""
        key = {
            "student": self.student,
            "student_args": self.student_args,
            "sparsity": self.sparsity,
            "criterion": self.criterion,
            "distill": self.distill.key_dict() if self.distill else None,
        }
        if self.drop:  # only when set: the keys of earlier runs' students (no depth) stay what they were
            key["drop"] = list(self.drop)
        return content_hash(key)

    def key(self) -> str:
        return content_hash({"student": self.student_key(), "bits": self.bits, "quant": asdict(self.quant)})

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "student_args": self.student_args_map(),
            "sparsity": self.sparsity_map(),
            "criterion": self.criterion,
            "bits": self.bits_map(),
            "quant": asdict(self.quant),
            "distill": asdict(self.distill) if self.distill else None,
            "params": dict(self.params),
            **({"drop": list(self.drop)} if self.drop else {}),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Candidate":
        return Candidate.make(
            student=d.get("student", "pruned"),
            student_args=d.get("student_args"),
            sparsity=d.get("sparsity"),
            criterion=d.get("criterion", "l1"),
            bits=d.get("bits"),
            quant=QuantSpec(**d["quant"]) if d.get("quant") else None,
            distill=DistillSpec(**d["distill"]) if d.get("distill") else None,
            params=d.get("params"),
            drop=d.get("drop") or (),
        )


def content_hash(obj: Any, n: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass(frozen=True)
class Metrics:
    """What a trial measured on the deployable artifact."""

    accuracy: float | None = None  # primary metric (top-1 unless a user metric is set)
    top5: float | None = None
    accuracy_drop: float | None = None  # baseline - candidate, in percentage points
    latency_ms: float | None = None  # median, measured or predicted
    speedup: float | None = None  # baseline_median / candidate_median, same rounds
    size_mb: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_cv: float | None = None
    latency_mode: str | None = None  # measure | predict


@dataclass(frozen=True)
class TrialRecord:
    number: int
    status: TrialStatus
    candidate: Candidate
    metrics: Metrics = field(default_factory=Metrics)
    stage: str | None = None  # the stage that failed / stopped
    message: str | None = None
    duration_s: float = 0.0
    stage_times: tuple[tuple[str, float], ...] = ()
    artifact: str | None = None  # path to the final ONNX model, relative to the run folder
    kd_history: tuple[float, ...] = ()  # validation accuracy after each distillation epoch (torch)
    worker: str | None = None  # host:pid of the process that ran it
    seed: str | None = None  # the search space's seed setting this trial ran (e.g. "80% pruned + int8, KD 8 ep")
    # how far it went: "speed" (the untrained graph's speed and size measured, not distilled: e.g. stopped at the gate),
    # "distill" (stopped during distillation), "final" (the trained model quantized and evaluated); None before phases
    phase: str | None = None
    # where latency_ms/speedup come from: "untrained graph" (measured before distillation; the trained model's graph
    # has the same signature) or "trained model" (measured on the final model); None in older records
    latency_source: str | None = None
    finish_of: int | None = None  # a finishing trial (search/finish.py): the trial whose candidate it re-distils
    parent: int | None = None  # a mutation (search/explore.py): the trial whose candidate it mutates

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "status": self.status.value,
            "candidate": self.candidate.to_dict(),
            "metrics": asdict(self.metrics),
            "stage": self.stage,
            "message": self.message,
            "duration_s": self.duration_s,
            "stage_times": dict(self.stage_times),
            "artifact": self.artifact,
            "kd_history": list(self.kd_history),
            "worker": self.worker,
            "seed": self.seed,
            "phase": self.phase,
            "latency_source": self.latency_source,
            "finish_of": self.finish_of,
            "parent": self.parent,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TrialRecord":
        return TrialRecord(
            number=int(d["number"]),
            status=TrialStatus(d["status"]),
            candidate=Candidate.from_dict(d["candidate"]),
            metrics=Metrics(**d.get("metrics", {})),
            stage=d.get("stage"),
            message=d.get("message"),
            duration_s=float(d.get("duration_s", 0.0)),
            stage_times=tuple((d.get("stage_times") or {}).items()),
            artifact=d.get("artifact"),
            kd_history=tuple(d.get("kd_history") or ()),
            worker=d.get("worker"),
            seed=d.get("seed"),
            phase=d.get("phase"),
            latency_source=d.get("latency_source"),
            finish_of=d.get("finish_of"),
            parent=d.get("parent"),
        )


@dataclass(frozen=True)
class Baseline:
    """The fp32 teacher as measured once per run: its ONNX file, accuracy, latency, size, params and MACs.

    ``baseline.json`` and the Optuna study's ``baseline`` attribute hold :meth:`to_dict` plus entries of their
    own (teacher fingerprint, the int8 reference...); :meth:`from_dict` reads the fields back and ignores those.
    """

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
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "path": str(self.path)}

    @staticmethod
    def from_dict(d: Mapping[str, Any], *, path: str | Path | None = None) -> "Baseline":
        """``path`` overrides the stored one (a moved run folder, a worker's node-local copy)."""
        names = {f.name for f in fields(Baseline)}
        missing = sorted(f.name for f in fields(Baseline) if f.default is MISSING and f.name not in d and f.name != "path")
        if missing:
            raise ValueError(f"baseline record lacks {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        kw["path"] = Path(path if path is not None else d.get("path", ""))
        return Baseline(**kw)
