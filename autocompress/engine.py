"""The run: validate -> data -> teacher -> baseline -> ask/run_trial/store/tell -> results.

``run(spec)`` starts or continues a run in its folder; ``resume(dir)`` continues one from its run.yaml;
``join(storage, study)`` runs trials of an existing study as one more worker. Every finished trial is
appended to ``trials.jsonl`` (fsync) and stored on the Optuna trial before the next one starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .config import HardwareProfile, RunSpec, SearchSpace, load_profile, load_space, parse
from .errors import ConfigError
from .records import Baseline, content_hash
from .store import RunStore, follow_folder, package_versions
from .shipped import REPO_ROOT
from .search.scheduler import FidelityScheduler
from .trial import TrialContext, feasibility

if TYPE_CHECKING:
    from .report import RunResult
    from .search.base import Backend
    from .search.executors import Executor


class Interrupted(Exception):
    """Ctrl-C: the finished trials are saved; the CLI prints how to resume and exits 130."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def default_run_dir(spec: RunSpec) -> Path:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.model.split(":")[0]).stem)
    data = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.data).stem)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path.cwd() / "results" if (Path.cwd() / "results").is_dir() or Path.cwd() != REPO_ROOT else REPO_ROOT / "results"
    return base / f"{model}-{data}-{stamp}"


def study_name(spec: RunSpec, run_dir: Path) -> str:
    return spec.study or f"autocompress-{run_dir.name}"


# ---------------------------------------------------------------------------- set-up
@dataclass
class Prepared:
    spec: RunSpec
    space: SearchSpace
    profile: HardwareProfile
    ctx: TrialContext
    groups: dict[str, list[str]]
    layer_names: list[str]
    store: RunStore
    widths: dict[str, int]  # output channels of each prunable layer of the teacher (search/explore.network_key)


def _log_default(msg: str) -> None:
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(msg)


def prepare(spec: RunSpec, run_dir: Path, *, log: Callable[[str], None] = _log_default, shared_baseline: dict | None = None) -> Prepared:
    import torch

    from .compress.distill import logits_on_disk
    from .devices import resolve_train_device
    from .compress.export import export_onnx
    from .compress.prune import layer_width, resolve_ratios, stage_groups
    from .data import load_data
    from .preprocessing import Preprocessing, stamp_onnx
    from .measure.accuracy import evaluate_onnx, load_metric
    from .measure.cost import count_params_macs, file_size_mb
    from .measure.hardware import check_available, input_shape_for
    from .measure.latency import measure_latency
    from .models.teacher import get_teacher

    space = load_space(spec.space)
    profile, profile_path = load_profile(spec.profile)
    from .space import allowed_precisions

    allowed_precisions(space, profile)
    table = None
    if profile.latency.mode == "measure":
        check_available(profile)
    else:
        from .measure.predict import load_table

        table = load_table(profile, profile_path)
    metric = load_metric(spec.metric) if spec.metric else None
    store = RunStore(run_dir)
    store.create()
    torch.manual_seed(spec.seed)

    train_device = resolve_train_device(spec.train_device)
    budget = int(spec.data_memory_gb * (1 << 30)) if spec.data_memory_gb is not None else None
    data = load_data(spec.data, image_size=spec.image_size, seed=spec.seed, memory_budget=budget,
                     normalize=spec.normalize, mean=spec.mean, std=spec.std)
    prep_contract = Preprocessing(normalize=data.normalize, mean=data.mean, std=data.std,
                                  input_shape=tuple(data.input_shape), class_names=tuple(data.class_names))
    split = data.info.get("split") or f"{len(data.y_train)} train / {len(data.y_val)} val"
    notes = "".join(f"; {n}" for n in data.info.get("notes", ()))
    log(f"data: {spec.data}: {split}, {data.num_classes} classes, input {tuple(data.input_shape)}{notes}")
    store.update_run_yaml({"data": {**data.info, "train_size": len(data.y_train), "val_size": len(data.y_val),
                                    "input_shape": list(data.input_shape), "class_names": list(data.class_names),
                                    "mean": list(data.mean), "std": list(data.std)},
                           "preprocessing": prep_contract.to_dict()})
    log(f"preprocessing: {prep_contract.normalize} mean {[round(v, 4) for v in data.mean]} std "
        f"{[round(v, 4) for v in data.std]} on 0..1 pixels, input {list(data.input_shape)} (written into every model)")
    from .compress.students import check_students

    check_students(space.student.kind, data.num_classes, data.input_shape)  # before a teacher is trained
    setup_s: dict[str, float] = {}
    t = time.perf_counter()
    teacher = get_teacher(spec.model, data, checkpoint=spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                          train=spec.teacher, seed=spec.seed, log=log, device=train_device)
    setup_s["teacher"] = round(time.perf_counter() - t, 2)
    log(f"teacher: {teacher.info.name} ({teacher.source}), val accuracy {teacher.val_accuracy:.2%} (PyTorch)")
    shape4 = input_shape_for(profile, tuple(data.input_shape))
    input_shape = tuple(shape4[1:])
    if input_shape != tuple(data.input_shape):
        raise ConfigError(f"profile '{profile.name}' sets input_shape {list(input_shape)} but the data is {list(data.input_shape)}; "
                          "remove input_shape from the profile or set --image-size to match")
    from .space import for_teacher, seeds_for_profile, with_blocks

    # what the space means for this teacher, before the baseline is measured: a wrong depth.blocks entry stops here
    space = for_teacher(space, teacher.info.family, log=log)  # no 'family' students for a user model
    user_blocks = bool(space.depth.blocks)
    space = with_blocks(space, teacher.model, torch.zeros(1, *input_shape), log=log)  # depth: the droppable blocks
    space = seeds_for_profile(space, profile, log=log)  # int8 seeds on a target without int8 (cuda-fp16): fp16

    base_path = store.models_dir / "baseline.onnx"
    example = torch.zeros(1, *data.input_shape)
    saved = shared_baseline or store.read_baseline()
    if saved and base_path.is_file() and saved.get("teacher_fingerprint") == _teacher_fp(teacher):
        baseline = Baseline.from_dict(saved, path=base_path)
        log(f"baseline: reused ({baseline.accuracy:.2%}, {baseline.latency_ms:.3f} ms, {baseline.size_mb:.2f} MB)")
    else:
        t = time.perf_counter()
        export_onnx(teacher.model, example, base_path)
        stamp_onnx(base_path, prep_contract, {"autocompress.model": "baseline (fp32)"})
        acc = evaluate_onnx(base_path, data.val, metric=metric)
        lat = measure_latency(base_path, profile, shape4, seed=spec.seed)
        predicted = None
        if table is not None:
            from .measure.predict import predict_latency

            predicted = predict_latency(base_path, profile, table, shape4)
        params, macs = count_params_macs(teacher.model, example)
        baseline = Baseline(
            path=base_path, accuracy=acc.metric if acc.metric is not None else acc.top1, top5=acc.top5,
            latency_ms=lat.median_ms, latency_cv=lat.cv, size_mb=file_size_mb(base_path), params=params, macs=macs,
            predicted_ms=predicted,
        )
        store.write_baseline({**baseline.to_dict(), "teacher_fingerprint": _teacher_fp(teacher),
                              "teacher_source": teacher.source, "load_avg": lat.load_avg,
                              "seconds": round(time.perf_counter() - t, 2)})
        latency = (f"latency {baseline.latency_ms:.3f} ms (CV {lat.cv:.0%})" if predicted is None else
                   f"latency predicted {predicted:.3f} ms on the table's device (measured here {baseline.latency_ms:.3f} ms)")
        log(f"baseline (fp32 ONNX, {profile.name}): accuracy {baseline.accuracy:.2%}, {latency}, {baseline.size_mb:.2f} MB, "
            f"{params / 1e6:.2f} M params, {macs / 1e6:.1f} M MACs")
    from .references import int8_reference

    t = time.perf_counter()
    ref = int8_reference(store, baseline, data, profile, shape4, seed=spec.seed, metric=metric,
                         metric_direction=spec.metric_direction, table=table, log=log)
    from .space import int8_pays, int8_seeds_could_move, seeds_for_int8

    int8_speedup = None
    if int8_seeds_could_move(space, profile):  # int8 that does not pay here (no VNNI, a small model): fp32 seeds
        from .references import int8_speedup_for_seeds

        int8_speedup = int8_speedup_for_seeds(ref, store, baseline, profile, shape4, seed=spec.seed,
                                              measured=table is None, log=log)
        space = seeds_for_int8(space, profile, int8_speedup, log=log, predicted=table is not None)
    setup_s["int8_reference"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    logits_key = content_hash({"teacher": _teacher_fp(teacher), "data": data.fingerprint})
    logits, reused = logits_on_disk(teacher.model, data.train, run_dir / "cache" / "logits", logits_key,
                                    device=train_device)
    log(f"teacher logits: {len(logits)} samples {'reused from' if reused else 'computed in'} "
        f"{time.perf_counter() - t:.1f} s on {'disk' if reused else train_device} ({logits.dtype}, "
        "memory-mapped, shared by every candidate)")
    setup_s["teacher_logits"] = round(time.perf_counter() - t, 2)
    store.update_run_yaml({"setup_s": {**setup_s, "teacher_train": round(float(getattr(teacher, "train_seconds", 0.0) or 0.0), 2),
                                       "teacher_source": teacher.source}})

    groups = stage_groups(teacher.model)
    exclude = tuple(space.sparsity.exclude) if space.sparsity is not None else ()
    layer_names = list(resolve_ratios(teacher.model, {"_default": 0.0}, exclude=exclude))
    from .sensitivity import priors_for_run

    space = priors_for_run(space, teacher.model, groups, data, profile, base_path, run_dir,  # cached; space.sensitivity
                           {"teacher": _teacher_fp(teacher), "data": data.fingerprint}, seed=spec.seed, store=store,
                           rank_blocks=not user_blocks, int8_speedup=None if int8_pays(int8_speedup, profile) else int8_speedup,
                           log=log)
    stopper = None
    if spec.early_stop:  # the gate before distillation and the KD rungs (search/scheduler.py), history from the log
        c = spec.constraints
        drop = None if metric is not None or c.max_accuracy_drop is None else c.max_accuracy_drop / 100.0
        stopper = FidelityScheduler(  # its accuracy rules read top-1 (the KD history): off when a metric of the user's scores
            target=None if drop is None else baseline.accuracy - drop, num_classes=data.num_classes,
            multi_fidelity=spec.multi_fidelity, gate_margin=(drop or 0.0) / 2, min_speedup=c.min_speedup,
            max_size_mb=c.max_size_mb, max_latency_ms=c.max_latency_ms,
        ).replay(store.records())
    ctx = TrialContext(
        run_dir=run_dir, data=data, teacher=teacher, teacher_logits=logits, profile=profile, space=space,
        baseline=baseline, input_shape=input_shape, constraints=spec.constraints, seed=spec.seed, metric=metric,
        metric_direction=spec.metric_direction, lookup_table=table, early_stopper=stopper, log=log,
        train_device=train_device,
    )
    widths = {n: layer_width(m) for n, m in teacher.model.named_modules() if n in set(layer_names)}
    return Prepared(spec, space, profile, ctx, groups, layer_names, store, widths)


def _teacher_fp(teacher) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(teacher.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- the loop
def search(prep: Prepared, backend: "Backend", *, deadline: float | None, log: Callable[[str], None] = _log_default,
           progress: bool = False, verbose: bool = True, executor: "Executor | None" = None) -> None:
    """The search loop (:mod:`.search.loop`) over ``executor`` (default: trials in this process).
    ``progress``: a live bar on a terminal (see :mod:`.progress`); ``verbose``: print each trial's start and its
    distillation epochs too (else only the bar shows them)."""
    from .progress import LoopDisplay
    from .search.executors import InProcessExecutor
    from .search.loop import run_search

    disp = LoopDisplay(log, total=backend.budget, done=backend.finished(), live=progress, verbose=verbose)
    try:
        if executor is None:  # the trials' own lines (distillation epochs) go to the display
            executor = InProcessExecutor(replace(prep.ctx, log=disp.detail))
        run_search(prep, backend, executor, disp, deadline=deadline)
    finally:
        disp.stop()


# ---------------------------------------------------------------------------- entry points
def _resolved(spec: RunSpec, run_dir: Path, url: str, name: str) -> dict:
    d = spec.model_dump(mode="json")
    d.update(out=str(run_dir), storage=url, study=name)
    return d


def budget_line(spec: RunSpec, *, resume: bool = False) -> str:
    """What bounds this run, in one line (the default budget says how to change it)."""
    if spec.timeout is None:
        return f"budget: {spec.trials} trials (no time limit)"
    t = f"{spec.timeout:.3g} s" if spec.timeout < 120 else f"{spec.timeout / 60:.3g} min"
    line = f"budget: {spec.trials} trials or {t} for the whole run, set-up included, whichever ends first"
    if spec.default_budget and not resume:
        line += " (the default for a run that names neither; set --trials and/or --timeout)"
    if spec.retime_windows:  # not in the budget: one-click runs (7 min) ended 3.5-4.3 min later on 2 cores (3-5 windows)
        line += f"; the front's re-timing ({spec.retime_windows} fresh processes) and the report follow it"
    return line


def run(spec: RunSpec, *, log: Callable[[str], None] = _log_default, resume: bool = False, progress: bool = False,
        verbose: bool = True) -> RunResult:
    from .measure.hardware import fingerprint
    from .report import finalize
    from .search.optuna_backend import storage_url

    from .devices import resolve_train_device

    resolve_train_device(spec.train_device)  # --train-device cuda without a GPU: refused before a folder is made
    run_dir = Path(spec.out).resolve() if spec.out else default_run_dir(spec)
    store = RunStore(run_dir)
    if run_dir.exists():
        store.check_version()
    store.create()
    store.acquire_lock()
    try:
        url = storage_url(spec.storage, run_dir)
        name = study_name(spec, run_dir)
        store.write_run_yaml(_resolved(spec, run_dir, url, name), {
            "versions": package_versions(), "machine": fingerprint(), "started": datetime.now().isoformat(timespec="seconds"),
        })
        log(f"run folder: {run_dir}")
        log(budget_line(spec, resume=resume))
        deadline = time.time() + spec.timeout if spec.timeout else None
        if spec.backend == "ray":
            from .search.ray_backend import RayExecutor, ray_started

            with ray_started(spec, log=log) as ray:  # Ray first: a missing Ray or cluster stops before the teacher
                prep = prepare(spec, run_dir, log=log)
                executor = RayExecutor.start(ray, prep, spec, key=f"{url}|{name}")
                backend = open_backend(spec, prep, run_dir, url, name, log=log, resume=resume)
                _with_sigint(lambda: search(prep, backend, deadline=deadline, log=log, progress=progress,
                                            verbose=verbose, executor=executor), run_dir)
        else:
            prep = prepare(spec, run_dir, log=log)
            backend = open_backend(spec, prep, run_dir, url, name, log=log, resume=resume)
            _with_sigint(lambda: search(prep, backend, deadline=deadline, log=log, progress=progress, verbose=verbose), run_dir)
        return finalize(run_dir, log=log, retime=spec.retime_windows)
    finally:
        store.release_lock()


def open_backend(spec: RunSpec, prep: Prepared, run_dir: Path, url: str, name: str, *,
                 log: Callable[[str], None], resume: bool):
    """Open (or create) the run's study: run spec and baseline on it, seeds enqueued once, trials left
    RUNNING by a killed process failed (or completed from the log) on resume. Used by every backend."""
    from .search.optuna_backend import OptunaBackend
    from .references import SEED_ATTR, seed_label
    from .space import seed_params

    backend = OptunaBackend.open(url=url, study_name=name, objectives=spec.objectives, sampler=spec.sampler,
                                 seed=spec.search_seed, budget=spec.trials,
                                 constraints_len=len(feasibility(_dummy_metrics(), spec.constraints)))
    backend.study.set_user_attr("run_spec", _resolved(spec, run_dir, url, name))
    _name_objectives(backend.study, spec)
    backend.study.set_user_attr("baseline", prep.store.read_baseline())
    logged = {r.number: (r, feasibility(r.metrics, spec.constraints)) for r in prep.store.records()}
    _say_stale(backend.fail_stale(all_running=resume, logged=logged), log)
    if not backend.study.user_attrs.get("seeded"):
        backend.enqueue([seed_params(s, prep.space, prep.groups) for s in prep.space.seeds],
                        [{SEED_ATTR: seed_label(s)} for s in prep.space.seeds])
        backend.study.set_user_attr("seeded", True)
    done = backend.finished()
    if done:
        log(f"resuming: {done} finished trial(s) kept, {max(0, spec.trials - done)} to go")
    return backend


def _say_stale(stale, log: Callable[[str], None]) -> None:
    """What became of the trials a stopped process left running (see ``OptunaBackend.fail_stale``)."""
    if stale.redone:
        log(f"resume: {len(stale.redone)} trial(s) interrupted by the last stop will be redone "
            f"(trial {', '.join(map(str, stale.redone))})")
    for n, first in stale.dropped:
        log(f"resume: trial {n}, a redo of trial {first}, was interrupted again; it is not run a third time")


def _name_objectives(study, spec: RunSpec) -> None:
    """Objective names on the study, so optuna-dashboard labels its plots 'accuracy', 'speedup', 'size_mb'."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.set_metric_names([o.name for o in spec.objectives])
    except Exception:  # an older Optuna or a read-only storage: labels only
        pass


def _dummy_metrics():
    from .records import Metrics

    return Metrics()


def _with_sigint(fn: Callable[[], None], run_dir: Path) -> None:
    """Ctrl-C: finish writing what is finished, then raise Interrupted (exit 130 in the CLI)."""
    prev = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fn()
    except KeyboardInterrupt:
        from .report import finalize

        try:
            finalize(run_dir, log=lambda s: None)
        except Exception:  # noqa: BLE001 - the tables only: every finished trial is in trials.jsonl, and
            pass  # `autocompress resume` / `report` rebuilds them; the CLI's one line says how to resume
        raise Interrupted(run_dir) from None
    finally:
        signal.signal(signal.SIGINT, prev)


def resume(run_dir: str | os.PathLike, *, log: Callable[[str], None] = _log_default, trials: int | None = None,
           progress: bool = False, verbose: bool = True) -> RunResult:
    store = RunStore(run_dir)
    meta = store.read_run_yaml()
    spec_d = dict(meta["spec"])
    if trials is not None:
        spec_d["trials"] = trials
    moved = follow_folder(spec_d, str(store.dir.resolve()))
    if moved != spec_d:
        log(f"resume: run folder moved from {spec_d['out']}; continuing in {moved['out']}")
        spec_d = moved
    spec = parse(RunSpec, spec_d, str(store.run_yaml))
    return run(spec, log=log, resume=True, progress=progress, verbose=verbose)


def join(storage: str, study: str, *, out: str | None = None, log: Callable[[str], None] = _log_default) -> RunResult:
    """One more worker on an existing study (any machine that reaches the database)."""
    from .report import finalize
    from .search.optuna_backend import OptunaBackend, open_storage

    import optuna

    try:
        st = optuna.load_study(study_name=study, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(f"no study '{study}' in {storage}; start it with `autocompress run --storage ... --study {study}`") from None
    spec_d = st.user_attrs.get("run_spec")
    if not spec_d:
        raise ConfigError(f"study '{study}' was not created by autocompress run (no run_spec); start it with `autocompress run`")
    run_dir = Path(out) if out else Path(spec_d["out"]).with_name(Path(spec_d["out"]).name + f"-worker-{socket.gethostname()}-{os.getpid()}")
    spec_d = {**spec_d, "out": str(run_dir), "storage": storage, "study": study}
    spec = parse(RunSpec, spec_d, f"study {study}")
    store = RunStore(run_dir)
    store.create()
    store.write_run_yaml(spec_d, {"versions": package_versions(), "worker_of": study})
    prep = prepare(spec, run_dir, log=log, shared_baseline=None)
    if st.user_attrs.get("baseline"):
        # every worker scores accuracy against the same baseline; speedups are measured locally, interleaved
        b = st.user_attrs["baseline"]
        ctx = replace(prep.ctx, baseline=replace(prep.ctx.baseline, accuracy=b["accuracy"], top5=b.get("top5")))
        prep = replace(prep, ctx=ctx)
    backend = OptunaBackend.open(url=storage, study_name=study, objectives=spec.objectives, sampler=spec.sampler,
                                 seed=spec.search_seed + os.getpid(), budget=spec.trials,
                                 constraints_len=len(feasibility(_dummy_metrics(), spec.constraints)), create=False)
    _say_stale(backend.fail_stale(), log)
    _with_sigint(lambda: search(prep, backend, deadline=None, log=log), run_dir)
    return finalize(run_dir, log=log, backend=backend)
