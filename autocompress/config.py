"""YAML -> validated, frozen specs (pydantic, ``extra="forbid"``).

User input is validated here, once. Errors name the file, the field path, the bad value and what is
allowed; :func:`format_validation_error` turns a pydantic error into such lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .registry import did_you_mean
from .shipped import named_file, names

Precision = Literal["fp32", "fp16", "int8"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ---------------------------------------------------------------- parameter forms
class FloatRange(Strict):
    low: float
    high: float
    step: float | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high}); swap them")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log=true needs low > 0 and no step")
        return self


class IntRange(Strict):
    low: int
    high: int
    step: int = Field(default=1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high}); swap them")
        return self


# A searched parameter is a fixed value, a list of choices or a range.
FloatParam = Union[float, list[float], FloatRange]
IntParam = Union[int, list[int], IntRange]


def _values_of(p) -> list[float]:
    if isinstance(p, (FloatRange, IntRange)):
        return [p.low, p.high]
    if isinstance(p, list):
        return list(p)
    return [p]


def _offers(p, v: float) -> bool:
    """Whether a searched (or fixed) parameter can take the value ``v``."""
    if isinstance(p, (FloatRange, IntRange)):
        return p.low - 1e-9 <= v <= p.high + 1e-9
    return any(abs(float(x) - v) < 1e-9 for x in (p if isinstance(p, list) else [p]))


def _describe(p) -> str:
    if isinstance(p, (FloatRange, IntRange)):
        return f"{p.low:g}-{p.high:g}"
    return ", ".join(f"{float(x):g}" for x in (p if isinstance(p, list) else [p]))


def _check_nonempty(v):
    if isinstance(v, list) and not v:
        raise ValueError("an empty list of choices; give at least one value")
    return v


def _check_count(v, what: str):
    """A searched count (a value, choices or a range) of things: none below 0."""
    _check_nonempty(v)
    for x in _values_of(v):
        if x < 0:
            raise ValueError(f"{x} {what}, use 0 or more")
    return v


def _check_sparsity(v):
    _check_nonempty(v)
    for x in _values_of(v):
        if not (0.0 <= x < 1.0):
            raise ValueError(f"sparsity {x} is outside [0, 1); use e.g. 0.5 for half the channels")
    return v


# ---------------------------------------------------------------- search space
class StudentSearch(Strict):
    """Which students to try: the pruned teacher and/or family students of a smaller width/depth."""

    kind: list[str] = ["pruned"]  # "pruned", "family", or a registered user builder name
    width_mult: FloatParam = [0.25, 0.5, 0.75]
    depth_mult: FloatParam = [0.5, 1.0]

    _ne = field_validator("kind", "width_mult", "depth_mult")(_check_nonempty)

    @field_validator("width_mult", "depth_mult")
    @classmethod
    def _positive(cls, v):
        for x in _values_of(v):
            if not (0 < x <= 1.0):
                raise ValueError(f"multiplier {x} must be in (0, 1]")
        return v


class SparsitySearch(Strict):
    granularity: Literal["uniform", "per_stage", "per_layer"] = "per_stage"
    range: FloatParam = FloatRange(low=0.0, high=0.9, step=0.05)
    layers: dict[str, FloatParam] = {}  # pattern -> fixed value or its own range (later wins)
    exclude: list[str] = []  # patterns never pruned (the classifier never is)
    criterion: list[str] = ["l1"]

    _r = field_validator("range")(_check_sparsity)
    _c = field_validator("criterion")(_check_nonempty)

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        for p in v.values():
            _check_sparsity(p)
        return v


class BitsSearch(Strict):
    granularity: Literal["uniform", "per_stage", "per_layer"] = "uniform"
    choices: list[Precision] = ["fp32", "int8"]
    layers: dict[str, Precision] = {}  # fixed overrides by pattern (e.g. keep the stem in fp32)
    # an int8 pruned student keeps this many of the most int8-sensitive layers in fp32 (0 = all int8); the layers
    # are ranked by the sensitivity analysis (sensitivity.enabled) or listed in sensitive_layers, most sensitive first
    keep_fp32: IntParam = 0
    sensitive_layers: list[str] = []

    _c = field_validator("choices")(_check_nonempty)
    _keep = field_validator("keep_fp32")(lambda v: _check_count(v, "layers: keep_fp32 counts layers"))


class QuantSearch(Strict):
    mode: list[Literal["static", "dynamic"]] = ["static"]
    format: list[Literal["qdq", "qoperator"]] = ["qdq"]
    types: list[Literal["u8s8", "s8s8"]] = ["u8s8"]
    per_channel: list[bool] = [True]
    calibration: list[Literal["minmax", "entropy", "percentile"]] = ["minmax"]

    _c = field_validator("mode", "format", "types", "per_channel", "calibration")(_check_nonempty)


SAMPLES_PER_EPOCH = 5_000  # default KD samples per epoch: measured, see benchmarks/README.md (Data at scale)


class DistillSearch(Strict):
    enabled: bool = True
    epochs: IntParam = [2, 3]
    lr: FloatParam = 0.01
    temperature: FloatParam = 4.0
    alpha: FloatParam = 0.9
    batch_size: IntParam = 64
    optimizer: list[Literal["sgd", "adam"]] = ["sgd"]
    # fidelity for large data: training samples per KD epoch (a fresh seeded subset each epoch; a split
    # smaller than this is used whole); null = the whole split every epoch
    samples_per_epoch: IntParam | None = SAMPLES_PER_EPOCH

    @field_validator("epochs", "batch_size", "samples_per_epoch")
    @classmethod
    def _pos_int(cls, v):
        if v is None:
            return v
        _check_nonempty(v)
        for x in _values_of(v):
            if x < 1:
                raise ValueError(f"{x} must be >= 1")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        _check_nonempty(v)
        for x in _values_of(v):
            if not 0 <= x <= 1:
                raise ValueError(f"alpha {x} must be in [0, 1]")
        return v

    @field_validator("lr", "temperature")
    @classmethod
    def _pos(cls, v):
        _check_nonempty(v)
        for x in _values_of(v):
            if x <= 0:
                raise ValueError(f"{x} must be > 0")
        return v


class SeedCandidate(Strict):
    """A hand-picked point enqueued before the sampler runs (e.g. uniform 80% + int8)."""

    student: str = "pruned"
    sparsity: float | dict[str, float] = 0.0  # one ratio for every layer, or {stage: ratio}
    bits: Precision = "fp32"
    epochs: int | None = None
    keep_fp32: int = Field(default=0, ge=0)  # int8 with this many of the most sensitive layers in fp32 (bits.keep_fp32)
    drop: int = Field(default=0, ge=0)  # this many droppable blocks replaced by the identity (depth.drop)
    # its KD recipe; unset: the first choice of the space's distill.temperature / distill.alpha (one of their values)
    temperature: float | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, ge=0, le=1)
    label: str | None = None  # how reports name it (default: from the values, e.g. "uniform 80% + int8, KD 8 ep")

    @field_validator("sparsity")
    @classmethod
    def _sp(cls, v):
        for x in (v.values() if isinstance(v, dict) else [v]):
            _check_sparsity(x)
        return v


class DepthSearch(Strict):
    """Whole blocks of a pruned student replaced by the identity (autocompress/compress/depth.py)."""

    # how many of the droppable blocks to drop, in ``blocks`` order (0 = none); a range is clamped to the teacher's count
    drop: IntParam = 0
    # droppable blocks, the first dropped first; empty: found in the teacher and ranked by the sensitivity analysis
    # (accuracy with each block gone alone), or the last blocks first without it
    blocks: list[str] = []

    _count = field_validator("drop")(lambda v: _check_count(v, "blocks: depth.drop counts blocks"))


class SensitivitySearch(Strict):
    """A one-time analysis of the teacher that shapes the search (autocompress/sensitivity.py): each stage pruned
    alone at ``ratios`` (accuracy after BatchNorm recalibration, no distillation) and each layer's int8 error."""

    enabled: bool = False
    ratios: list[float] = [0.3, 0.6, 0.9]
    # every pruned point runs calib + val samples through the teacher and every int8 point a quantization: few
    # samples keep it to minutes on a small CPU (benchmarks/README.md, "Sensitivity analysis")
    calib_samples: int = Field(default=128, ge=8)  # training samples that re-estimate BatchNorm statistics
    val_samples: int = Field(default=256, ge=16)  # validation samples each pruned point is scored on
    int8: bool = True  # also rank layers by int8 sensitivity (when the profile runs int8)
    int8_samples: int = Field(default=64, ge=8)  # calibration and scoring samples of each int8 point (a logit error)
    # every uniform pruned seed at one of these ratios gets a twin that spreads the same MACs over the stages by
    # sensitivity, enqueued right after it (labelled "sensitivity 80% + ...")
    seeds: list[float] = [0.7, 0.8]  # a seed at the range's top (0.9 of 0.1-0.9) has no twin: nothing can go higher

    @field_validator("ratios", "seeds")
    @classmethod
    def _ratios(cls, v):
        for x in v:
            if not 0.0 < x < 1.0:
                raise ValueError(f"ratio {x} is outside (0, 1); use e.g. 0.5 for half the channels")
        return sorted(set(v))


class SearchSpace(Strict):
    kind: Literal["search_space"] = "search_space"
    name: str = "custom"
    description: str = ""
    student: StudentSearch = StudentSearch()
    sparsity: SparsitySearch | None = SparsitySearch()
    bits: BitsSearch = BitsSearch()
    quantization: QuantSearch = QuantSearch()
    distill: DistillSearch = DistillSearch()
    sensitivity: SensitivitySearch = SensitivitySearch()
    depth: DepthSearch = DepthSearch()
    seeds: list[SeedCandidate] = []
    # share of the trials after the seeds that mutate the fastest candidate meeting the constraints (one stage's
    # sparsity up a step or two, another's down one; search/explore.py) instead of asking the sampler; 0: sampler only
    explore: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ranked(self):
        wants = any(x > 0 for x in _values_of(self.bits.keep_fp32))
        if wants and not self.bits.sensitive_layers and not (self.sensitivity.enabled and self.sensitivity.int8):
            raise ValueError("bits.keep_fp32 keeps the most int8-sensitive layers in fp32, but nothing ranks them: set "
                             "sensitivity: {enabled: true} or list bits.sensitive_layers")
        for i, seed in enumerate(self.seeds):
            for name in ("temperature", "alpha"):
                v, offered = getattr(seed, name), getattr(self.distill, name)
                if v is not None and not _offers(offered, v):
                    raise ValueError(f"seeds[{i}] has {name} {v:g}, which distill.{name} does not offer "
                                     f"({_describe(offered)}): add it there or remove it from the seed")
        return self


# ---------------------------------------------------------------- hardware profile
class LatencySpec(Strict):
    mode: Literal["measure", "predict"] = "measure"
    warmup: int = Field(default=10, ge=0)
    min_rounds: int = Field(default=5, ge=1)
    max_rounds: int = Field(default=60, ge=1)
    time_cap_s: float = Field(default=8.0, gt=0)
    target_ci: float = Field(default=0.03, gt=0, lt=1)  # relative half-width of the speedup's CI
    block_ms: float = Field(default=20.0, gt=0)  # each sample times a block of runs lasting ~this long
    # median: of per-round ratios; mean / p90 / p10 / min: ratio of those statistics (p10/min resist one-sided noise)
    statistic: Literal["median", "mean", "p90", "p10", "min"] = "median"

    @model_validator(mode="after")
    def _rounds(self):
        if self.min_rounds > self.max_rounds:
            raise ValueError(f"min_rounds ({self.min_rounds}) must be <= max_rounds ({self.max_rounds})")
        return self


class StageBounds(Strict):
    """Seconds a trial stage may run before that trial stops as FAILED (null: unbounded); see bounds.py."""

    prune: float | None = Field(default=120.0, gt=0)  # Torch-Pruning's graph build can run for many minutes
    export: float | None = Field(default=120.0, gt=0)
    quantize: float | None = Field(default=None, gt=0)


class HardwareProfile(Strict):
    kind: Literal["hardware_profile"] = "hardware_profile"
    name: str = "custom"
    description: str = ""
    device: Literal["cpu", "cuda", "other"] = "cpu"
    runtime: Literal["onnxruntime"] = "onnxruntime"
    execution_provider: str = "CPUExecutionProvider"
    provider_options: dict[str, Any] = {}
    intra_op_threads: int = Field(default=0, ge=0)  # 0 = ONNX Runtime's default (all physical cores)
    inter_op_threads: int = Field(default=1, ge=0)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    batch_size: int = Field(default=1, ge=1)
    input_shape: list[int] | None = None  # C, H, W override of the data's shape
    precisions: list[Precision] = ["fp32", "int8"]
    int8_format: Literal["qdq", "qoperator"] | None = None  # preferred int8 format on this target
    int8_types: Literal["u8s8", "s8s8"] | None = None
    # U8S8 weights in 7 bits (ORT reduce_range) against the int16 saturation of x86 CPUs without VNNI; null: on when
    # the CPU that quantizes is x86 without VNNI (compress/quantize.reduce_range_for). Set it for another target.
    int8_reduce_range: bool | None = None
    round_to: int | None = Field(default=None, ge=1)
    # int8 alone (measured at set-up against fp32) must run at least this much faster for the space's int8 seeds to
    # stay int8; below it they run in fp32 (space.seeds_for_int8: a CPU without VNNI, a small model). 0: always int8
    int8_seeds_min_speedup: float = Field(default=1.1, ge=0)
    latency: LatencySpec = LatencySpec()
    lookup_table: str | None = None  # path (relative to the profile file) of a predict-mode table
    ray_resource: str | None = None
    stage_timeout_s: StageBounds = StageBounds()
    fingerprint: dict[str, Any] = {}

    @field_validator("execution_provider")
    @classmethod
    def _ep(cls, v):
        if not v.endswith("ExecutionProvider"):
            raise ValueError(
                f"'{v}' is not an ONNX Runtime execution provider name; use e.g. CPUExecutionProvider, "
                "CUDAExecutionProvider, TensorrtExecutionProvider"
            )
        return v

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v):
        if v is not None and (len(v) != 3 or any(d <= 0 for d in v)):
            raise ValueError(f"input_shape {v} must be [channels, height, width] with positive sizes")
        return v

    @field_validator("precisions")
    @classmethod
    def _prec(cls, v):
        _check_nonempty(v)
        if "fp32" not in v and "fp16" not in v:
            raise ValueError("a profile must support fp32 or fp16 (the baseline runs in it)")
        return v

    @model_validator(mode="after")
    def _predict(self):
        if self.latency.mode == "predict" and not self.lookup_table:
            raise ValueError("latency.mode 'predict' needs lookup_table (run `autocompress profile-device`)")
        return self


# ---------------------------------------------------------------- run spec
class Objective(Strict):
    name: Literal["accuracy", "speedup", "latency_ms", "size_mb", "params", "macs"]
    direction: Literal["maximize", "minimize"] | None = None

    @property
    def resolved_direction(self) -> str:
        if self.direction:
            return self.direction
        return "maximize" if self.name in ("accuracy", "speedup") else "minimize"


class Constraints(Strict):
    max_accuracy_drop: float | None = Field(default=None, ge=0)  # percentage points vs baseline
    min_speedup: float | None = Field(default=None, gt=0)
    max_size_mb: float | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)


class TeacherSpec(Strict):
    max_epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=4, ge=1)
    lr: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=64, ge=1)
    target_accuracy: float = Field(default=0.995, gt=0, le=1)  # stop early once reached


# The time budget of a run that names neither trials nor timeout, set-up (teacher training) included: with the
# final re-timing and the report the one-click default ends within 10 minutes on a 2-core CPU (benchmarks/README.md,
# "One-click default"). Name --trials or --timeout to size a run yourself.
DEFAULT_TIMEOUT_S = 420.0


class RunSpec(Strict):
    kind: Literal["run"] = "run"
    model: str = "resnet18_x0_5"  # the one-click default, chosen by measurement (see models/zoo.py)
    checkpoint: str | None = None
    trust_checkpoint: bool = False  # allow a full pickle (weights_only=False): only for files you trust
    data: str = "digits"
    image_size: int = Field(default=32, ge=8)
    # preprocessing, part of every shipped model's contract (preprocessing.py): the train split's own per-channel
    # statistics, ImageNet's, none (x / 255 only), or an explicit mean/std (one value per channel, 0..1 scale)
    normalize: Literal["dataset", "imagenet", "none"] = "dataset"
    mean: list[float] | None = None
    std: list[float] | None = None
    space: str = "default"
    profile: str = "cpu"
    objectives: list[Objective] = [
        Objective(name="accuracy"),
        Objective(name="speedup"),
        Objective(name="size_mb"),
    ]
    constraints: Constraints = Constraints(max_accuracy_drop=1.0)
    # the budget: `trials`, and `timeout` seconds for the whole run (set-up included) when given. A run that names
    # neither gets both defaults: 24 trials or DEFAULT_TIMEOUT_S, whichever ends first (the one-click's 10 minutes)
    trials: int = Field(default=24, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    sampler: str = "nsga2"
    seed: int = 0  # data split, teacher training, KD, latency inputs, and the sampler unless sampler_seed is set
    sampler_seed: int | None = None  # only the sampler's seed: repeat a search on the same data split and teacher
    out: str | None = None
    backend: Literal["optuna", "ray"] = "optuna"
    storage: str | None = None
    study: str | None = None
    workers: int = Field(default=1, ge=1)
    address: str | None = None
    ray_cpus_per_trial: float = Field(default=1.0, gt=0)  # Ray resources of one trial task
    ray_gpus_per_trial: float | None = Field(default=None, ge=0)  # default: 0.5 on cuda profiles or when training may use a GPU, else 0
    train_device: Literal["auto", "cpu", "cuda"] = "auto"  # teacher training, teacher logits, distillation
    data_memory_gb: float | None = Field(default=None, ge=0)  # pixels held in memory; default: half the free RAM
    teacher: TeacherSpec = TeacherSpec()
    metric: str | None = None  # "file.py:fn" / "module:fn", fn(outputs, targets) -> float
    metric_direction: Literal["maximize", "minimize"] = "maximize"
    early_stop: bool = True
    # with early_stop: a candidate's speed and size, measured before distillation, gate it (dominated -> STOPPED), and
    # successive halving stops a distillation at its rung epochs (1, 3) when a finished candidate dominated it there;
    # False: every candidate that meets the constraints gets its whole KD budget (search/scheduler.py)
    multi_fidelity: bool = True
    # the end of the budget (the last 35% of --timeout, or the last 2 of --trials) re-distils the fastest candidate
    # that missed the accuracy target by <= 2.5 pp with up to 8x its KD samples (search/finish.py); False: never
    finish: bool = True
    # the final pass: front models and reference points re-timed against the baseline in this many fresh processes;
    # the spread across them is the uncertainty reported (0 = off). AUTOCOMPRESS_RETIME_WINDOWS changes the default.
    retime_windows: int = Field(default_factory=lambda: int(os.environ.get("AUTOCOMPRESS_RETIME_WINDOWS", "3")), ge=0)

    @model_validator(mode="after")
    def _default_budget(self):
        if self.timeout is None and self.default_budget:
            object.__setattr__(self, "timeout", DEFAULT_TIMEOUT_S)  # frozen model: set once, while validating
        return self

    @property
    def default_budget(self) -> bool:
        """True when the run named neither ``trials`` nor ``timeout`` (the one-click budget applies)."""
        return not {"trials", "timeout"} & self.model_fields_set

    @property
    def search_seed(self) -> int:
        """The sampler's seed: ``sampler_seed`` when set, else ``seed``."""
        return self.seed if self.sampler_seed is None else self.sampler_seed

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v):
        # checked here, before a run folder is touched (an unknown name used to be found only after run.yaml was written)
        from .search.optuna_backend import SAMPLERS

        if v in SAMPLERS:
            return v
        import optuna

        cls_ = getattr(optuna.samplers, v, None)
        if isinstance(cls_, type) and issubclass(cls_, optuna.samplers.BaseSampler):
            return v
        raise ValueError(f"unknown sampler '{v}'{did_you_mean(v, SAMPLERS.names())}; choose one of: "
                         f"{', '.join(SAMPLERS.names())}, or an optuna.samplers class name")

    @field_validator("objectives")
    @classmethod
    def _objs(cls, v):
        names = [o.name for o in v]
        if not v:
            raise ValueError("at least one objective is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a name: {names}")
        return v


KINDS: dict[str, type[Strict]] = {
    "search_space": SearchSpace,
    "hardware_profile": HardwareProfile,
    "run": RunSpec,
}


# ---------------------------------------------------------------- loading and errors
def _fmt_value(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


_UNION_TAGS = {"float", "int", "str", "bool", "list[float]", "list[int]", "list[str]", "FloatRange", "IntRange",
               "dict[str,float]", "dict[str,any]", "none"}
_TYPE_ERRORS = {"float_type", "float_parsing", "int_type", "int_parsing", "list_type", "model_type",
                "dict_type", "string_type", "bool_type", "bool_parsing", "model_attributes_type", "int_from_float"}


def _submodel(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        m = _submodel(a)
        if m is not None:
            return m
    return None


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> list[str]:
    """One line per problem: ``FILE: field.path: got VALUE; what is allowed``."""
    groups: dict[tuple, list[dict]] = {}
    for e in err.errors():
        # pydantic reports union members as extra path parts ('float', 'list[float]'...): drop them
        parts = tuple(str(p) for p in e["loc"] if str(p) not in _UNION_TAGS and not str(p).startswith(("function-", "tagged-")))
        groups.setdefault(parts, []).append(e)
    lines = []
    for parts, errs in groups.items():
        loc = ".".join(parts) or "(top level)"
        if any(e["type"] == "extra_forbidden" for e in errs):
            parent = model
            for p in parts[:-1]:
                f = getattr(parent, "model_fields", {}).get(p)
                parent = _submodel(getattr(f, "annotation", None))
                if parent is None:
                    break
            allowed = sorted(parent.model_fields) if parent is not None else []
            hint = did_you_mean(parts[-1], allowed) if parts else ""
            msg = f"unknown key{hint}; allowed keys: {', '.join(allowed)}" if allowed else "unknown key"
            lines.append(f"{source}: {loc}: {msg}")
            continue
        specific = [e for e in errs if e["type"] not in _TYPE_ERRORS]
        if specific:
            msg = "; ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in specific))
        elif len(errs) > 1:
            kinds = [e["msg"].removeprefix("Input should be ").removeprefix("a valid ") for e in errs]
            msg = "expected " + " or ".join(dict.fromkeys(kinds))
        else:
            msg = errs[0]["msg"]
        # a check across fields (a model validator) names its fields itself: the whole file is not the value to show
        got = f"got {_fmt_value(errs[0].get('input'))}; " if parts else ""
        lines.append(f"{source}: {loc}: {got}{msg}")
    return lines


def read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; check the path")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.constructor.ConstructorError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: {getattr(e, 'problem', e)}: YAML tags that build Python objects are refused "
                          "(files are read with yaml.safe_load); write plain values instead") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: malformed YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def guess_kind(path: Path, data: dict) -> str:
    if "kind" in data and data["kind"] in KINDS:
        return data["kind"]
    parent = path.resolve().parent.name
    if parent == "search_spaces":
        return "search_space"
    if parent == "hardware_profiles":
        return "hardware_profile"
    keys = set(data)
    if keys & {"execution_provider", "precisions", "intra_op_threads", "latency", "device"}:
        return "hardware_profile"
    if keys & {"model", "trials", "objectives", "constraints"}:
        return "run"
    return "search_space"


def parse(model: type[Strict], data: dict, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(format_validation_error(e, source, model))) from None


def validate_file(path: str | os.PathLike) -> tuple[str, list[str]]:
    """Validate any autocompress YAML; returns (kind, problems) with one line per problem."""
    p = Path(path)
    try:
        data = read_yaml(p)
        kind = guess_kind(p, data)
        parse(KINDS[kind], data, str(p))
        if kind == "hardware_profile" and data.get("lookup_table"):
            table = resolve_relative(p, data["lookup_table"])
            if not table.is_file():
                return kind, [f"{p}: lookup_table: got {data['lookup_table']!r}; no such file next to the profile"]
    except ConfigError as e:
        return "unknown", str(e).splitlines()
    return kind, []


def resolve_relative(base_file: Path, rel: str) -> Path:
    q = Path(rel)
    return q if q.is_absolute() else (base_file.resolve().parent / q)


def find_named(name_or_path: str, sub: str, what: str) -> Path:
    """A built-in name (``default``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError(f"{what} file '{name_or_path}' not found; check the path")
        return p
    found = named_file(name_or_path, sub)
    if found is not None:
        return found
    known = names(sub)
    raise ConfigError(
        f"unknown {what} '{name_or_path}'{did_you_mean(name_or_path, known)}; "
        f"built-in: {', '.join(known) or '(none)'}, or give a path to a YAML file"
    )


def load_space(name_or_path: str) -> SearchSpace:
    p = find_named(name_or_path, "search_spaces", "search space")
    return parse(SearchSpace, read_yaml(p), str(p))


def load_profile(name_or_path: str) -> tuple[HardwareProfile, Path]:
    """Returns the profile and the file it came from (lookup tables are relative to it)."""
    p = find_named(name_or_path, "hardware_profiles", "hardware profile")
    return parse(HardwareProfile, read_yaml(p), str(p)), p


def load_run_spec(path: str | os.PathLike | None = None, **overrides) -> RunSpec:
    data: dict = {}
    source = "command line"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return parse(RunSpec, data, source)
