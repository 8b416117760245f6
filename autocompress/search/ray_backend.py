"""Ray as an executor: the same search loop (:mod:`.loop`), with up to ``spec.workers`` trials as Ray tasks.

Design decision: the engine's own search loop (Optuna ask/tell) drives plain Ray tasks; Ray Tune and its
``OptunaSearch`` are not used. :class:`RayExecutor` is what the loop submits trials to: each becomes a Ray
task, and ``wait`` hands back the records of those that finished; the loop stores, tells and asks for the
next, exactly as with trials in this process. Hence one loop, one budget logic (:class:`OptunaBackend`'s
exact, shared budget; a trial in flight counts as claimed), one storage, one resume path, and the Pareto
front comes from the store exactly as with ``--backend optuna``. Tune would bring a second loop with its
own trial bookkeeping, checkpoints and result folder, and its searcher would own the study. This module
never imports the loop or the engine.

What runs where:

* the driver (this process) validates, loads the data, gets the teacher, measures the baseline and
  computes the teacher logits once (:func:`autocompress.engine.prepare`), then puts data, teacher,
  teacher logits and the baseline ONNX bytes into the object store once; every task receives the refs
  (a worker process resolves them once and keeps the context for its next tasks);
* a trial task completes the driver's frozen :class:`TrialContext` (sent without data, teacher and logits)
  with a node-local folder (nodes need not share a filesystem) and the resolved refs, runs :func:`run_trial`, and returns the record and the final ONNX bytes; the driver writes
  them to ``run_dir/trials/<number>/model.onnx`` and appends the record;
* latency: with ``profile.ray_resource`` set (e.g. ``hw-jetson``), the measurement is a nested task
  that requires ``{ray_resource: 1}``: it runs only on a node advertising that resource, and at most one
  at a time per node when the node advertises 1. Without it, the trial's node measures, one measurement
  at a time per node (a file lock). Where each trial ran and where its latency was measured go to
  ``run_dir/placement.jsonl`` with the task timings.

Ctrl-C cancels the tasks in flight (the loop hands their trials back to the study, redone on resume) and
keeps the finished ones; Ray is shut down if :func:`ray_started` started it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, UnavailableError
from ..records import TrialRecord, TrialStatus

# Task resources. These are defaults, not yet RunSpec fields (see the module's report): one CPU per
# trial (Ray then sets OMP_NUM_THREADS=1 in the worker, so N trials use N cores), half a GPU per trial
# when the profile targets CUDA, and no CPU for a latency task (the custom resource is what gates it, so
# a dedicated measurement node may be started with --num-cpus 0 and never run trials).
PLACEMENT_FILE = "placement.jsonl"
USER_MODULE_PREFIXES = ("_autocompress_user_", "_autocompress_metric_")


# ============================================================================ driver
@contextmanager
def ray_started(spec, *, log: Callable[[str], None]) -> Iterator[Any]:
    """Ray for this run: connected to ``spec.address`` (or RAY_ADDRESS) or a local cluster started here, and
    shut down afterwards if this function started it. Yields the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: `pip install autocompress[ray]` (ray[tune]>=2.30)") from None
    started = not ray.is_initialized()
    if started:
        _init_ray(ray, spec, log)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _init_ray(ray, spec, log) -> None:
    import logging

    kwargs: dict[str, Any] = dict(ignore_reinit_error=True, logging_level=logging.ERROR, log_to_driver=False,
                                  include_dashboard=False, configure_logging=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = spec.address or os.environ.get("RAY_ADDRESS")  # ray.init() would follow RAY_ADDRESS anyway
    if address:
        kwargs["address"] = address
    else:
        # a local cluster: as many CPU slots as cores, or as --workers asks for
        kwargs["num_cpus"] = max(os.cpu_count() or 1, int(spec.workers * spec.ray_cpus_per_trial))
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise UnavailableError(f"cannot connect to the Ray cluster at '{address}': {str(e).splitlines()[0]}; "
                               "check the address (auto | host:port | ray://host:port) and that the cluster is up") from None
    res = ray.cluster_resources()
    log(f"ray: {address or 'local cluster'}, {len(ray.nodes())} node(s), "
        f"{res.get('CPU', 0):.0f} CPU, {spec.workers} trial(s) in flight")


def _pickle_user_modules() -> None:
    """User code loaded from a file (model, metric) travels inside the pickles: workers need not have it."""
    from ray import cloudpickle

    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith(USER_MODULE_PREFIXES) and mod is not None:
            try:
                cloudpickle.register_pickle_by_value(mod)
            except (ValueError, TypeError):
                pass


def _quiet(msg: str) -> None:
    """A worker's trial log: its lines stay on the worker (the driver prints each finished trial)."""


@dataclass(frozen=True)
class _Shared:
    """What every task needs: object refs (put once), the run's trial context without them, task resources."""

    refs: tuple  # (data, teacher, teacher_logits, baseline ONNX bytes): ObjectRefs, resolved on the worker
    key: str  # names the node-local folder of this run
    ctx: Any  # the driver's TrialContext less data, teacher, logits, stopper and log (filled in on the worker)
    trial_resources: dict
    train_device: str = "auto"  # the run spec's choice; each task resolves it against the GPUs Ray gave it


def _put_shared(ray, prep, spec, key: str) -> _Shared:
    ctx = prep.ctx
    t = time.perf_counter()
    refs = (ray.put(ctx.data), ray.put(ctx.teacher), ray.put(ctx.teacher_logits),
            ray.put(Path(ctx.baseline.path).read_bytes()))
    ctx.log(f"ray: data, teacher, teacher logits and baseline put in the object store once "
            f"({time.perf_counter() - t:.1f} s)")
    res: dict[str, Any] = {"num_cpus": spec.ray_cpus_per_trial}
    # a trial trains on a GPU when Ray gives it one: by default half a GPU per trial on a cuda profile, or
    # when --train-device allows a GPU and the cluster has one
    wants_gpu = prep.profile.device == "cuda" or (
        spec.train_device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0)
    gpus = spec.ray_gpus_per_trial if spec.ray_gpus_per_trial is not None else (0.5 if wants_gpu else 0.0)
    if gpus:
        res["num_gpus"] = gpus
    template = replace(ctx, data=None, teacher=None, teacher_logits=None, early_stopper=None, log=_quiet,
                       latency_fn=None)
    return _Shared(refs=refs, key=hashlib.sha1(key.encode()).hexdigest()[:12], ctx=template,
                   trial_resources=res, train_device=spec.train_device)


@dataclass
class _InFlight:
    number: int
    cand: Any
    submitted: float


class RayExecutor:
    """Trials as Ray tasks, up to ``spec.workers`` at once; each returns its record and final ONNX bytes, which
    land under the driver's run folder. Writes ``placement.jsonl`` (where each trial ran and was measured)."""

    def __init__(self, ray, shared: _Shared, stopper, run_dir: Path, capacity: int):
        self.ray, self.shared, self.stopper, self.run_dir = ray, shared, stopper, Path(run_dir)
        self.capacity = max(1, int(capacity))
        self._task = _trial_task.options(max_retries=0, **shared.trial_resources)
        self._inflight: dict[Any, _InFlight] = {}
        self._landed: dict[int, tuple[_InFlight, dict, float]] = {}

    @classmethod
    def start(cls, ray, prep, spec, *, key: str) -> "RayExecutor":
        """Check the cluster can measure as the profile asks, put the shared objects once."""
        profile = prep.profile
        if profile.ray_resource and profile.latency.mode == "measure":
            have = ray.cluster_resources().get(profile.ray_resource, 0)
            if have < 1:
                raise ConfigError(
                    f"profile '{profile.name}' measures latency on Ray resource '{profile.ray_resource}', but no node of "
                    f"the cluster advertises it; start the target node with `ray start --address ... --resources "
                    f"'{{\"{profile.ray_resource}\": 1}}'` (or remove ray_resource from the profile)")
        _pickle_user_modules()  # loaded by now (model, metric): registered before anything is pickled
        return cls(ray, _put_shared(ray, prep, spec, key), prep.ctx.early_stopper, prep.store.dir, spec.workers)

    def submit(self, number: int, cand) -> None:
        # the task gets the stopper as it is now (a copy); the loop feeds the driver's one each finished record
        ref = self._task.remote(number, cand, self.shared, self.stopper, time.time())
        self._inflight[ref] = _InFlight(number, cand, time.time())

    def wait(self) -> list[TrialRecord]:
        ready, _ = self.ray.wait(list(self._inflight), num_returns=1)
        out = []
        for ref in ready:
            f = self._inflight.pop(ref)
            t_got = time.time()
            res = _result(self.ray, ref, f)
            rec = _land(res, f, self.run_dir)
            self._landed[f.number] = (f, res, t_got)
            out.append(rec)
        return out

    def settled(self, rec: TrialRecord) -> None:
        f, out, t_got = self._landed.pop(rec.number)
        _append_jsonl(self.run_dir / PLACEMENT_FILE, {
            "trial": f.number, "node": out.get("latency_node"), "trial_node": out.get("node"),
            "worker": rec.worker, "queue_s": _r(out.get("started", f.submitted) - f.submitted),
            "task_s": _r(out.get("ended", t_got) - out.get("started", f.submitted)),
            "run_trial_s": _r(out.get("run_trial_s", 0.0)), "wall_s": _r(t_got - f.submitted),
            "driver_s": _r(time.time() - t_got),
        })

    def cancel(self) -> None:
        for ref in self._inflight:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a task that already ended or a lost node: nothing left to stop
                pass
        self._inflight.clear()


def _r(x: float) -> float:
    return round(float(x), 4)


def _result(ray, ref, f: _InFlight) -> dict:
    """The task's output; a task that died (worker crash, lost node) is a FAILED trial, not a dead study."""
    from ..records import Metrics

    try:
        return ray.get(ref)
    except Exception as e:  # RayTaskError, WorkerCrashedError, NodeDiedError, ObjectLostError...
        first = (str(e).strip().splitlines() or [""])[0][:300]
        rec = TrialRecord(number=f.number, status=TrialStatus.FAILED, candidate=f.cand, metrics=Metrics(),
                          stage="ray", message=f"{type(e).__name__}: {first}", duration_s=time.time() - f.submitted)
        return {"record": rec.to_dict(), "onnx": None}


def _land(out: dict, f: _InFlight, run_dir: Path) -> TrialRecord:
    """Write the returned ONNX bytes under the driver's run folder and point the record at them."""
    rec = TrialRecord.from_dict(out["record"])
    trial_dir = run_dir / "trials" / f"{f.number:05d}"
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    if out.get("onnx") is not None:
        trial_dir.mkdir(parents=True)
        path = trial_dir / "model.onnx"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(out["onnx"])
        os.replace(tmp, path)
        rec = replace(rec, artifact=str(path.relative_to(run_dir)))
    else:
        rec = replace(rec, artifact=None)
    return rec


def _append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(obj) + "\n")


def read_placement(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``placement.jsonl``: trial, node (where latency was measured), trial_node, timings."""
    p = Path(run_dir) / PLACEMENT_FILE
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


# ============================================================================ worker side
_CONTEXTS: dict[tuple, Any] = {}  # per worker process: the resolved context of a run, reused by its next tasks
_BASELINES: dict[str, Path] = {}  # per process: baseline ONNX written once to a node-local file


def _node_root(key: str) -> Path:
    return Path(tempfile.gettempdir()) / "autocompress-ray" / key


def _baseline_file(ray, ref, key: str) -> Path:
    h = ref.hex()
    path = _BASELINES.get(h)
    if path is None or not path.is_file():
        path = _node_root(key) / f"baseline-{os.getpid()}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ray.get(ref))
        _BASELINES[h] = path
    return path


def _worker_context(ray, shared: _Shared):
    k = (shared.key, *(r.hex() for r in shared.refs))
    ctx = _CONTEXTS.get(k)
    if ctx is None:
        data, teacher, logits = ray.get(list(shared.refs[:3]))
        run_dir = _node_root(shared.key) / f"worker-{os.getpid()}"  # this process's own folder and stage cache
        run_dir.mkdir(parents=True, exist_ok=True)
        base = replace(shared.ctx.baseline, path=_baseline_file(ray, shared.refs[3], shared.key))
        ctx = replace(shared.ctx, run_dir=run_dir, data=data, teacher=teacher, teacher_logits=logits, baseline=base)
        _CONTEXTS.clear()  # one run at a time per worker process
        _CONTEXTS[k] = ctx
    return ctx


def _import_ray():
    import ray

    return ray


def _trial_task_fn(number: int, cand, shared: _Shared, stopper, submitted: float) -> dict:
    ray = _import_ray()
    started = time.time()
    ctx = _worker_context(ray, shared)
    ctx = replace(ctx, early_stopper=stopper, train_device=_task_device(ray, shared.train_device))
    node = ray.get_runtime_context().get_node_id()
    where: list[str] = []
    if ctx.profile.latency.mode == "measure":
        ctx = replace(ctx, latency_fn=_latency_fn(ray, ctx, shared, number, where, node))
    from ..trial import run_trial

    t = time.perf_counter()
    rec = run_trial(number, cand, ctx)
    run_trial_s = time.perf_counter() - t
    onnx = None
    if rec.artifact:
        p = ctx.run_dir / rec.artifact
        if p.is_file():
            onnx = p.read_bytes()
    shutil.rmtree(ctx.run_dir / "trials" / f"{number:05d}", ignore_errors=True)
    return {"record": rec.to_dict(), "onnx": onnx, "node": node, "latency_node": where[0] if where else None,
            "started": started, "ended": time.time(), "run_trial_s": run_trial_s}


def _task_device(ray, choice: str) -> str:
    """Where this task trains: the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES, so it is 'cuda'),
    else the CPU, unless the run asked for cuda explicitly and this node has one."""
    from ..devices import cuda_available

    if choice == "cpu":
        return "cpu"
    if ray.get_gpu_ids() and cuda_available():
        return "cuda"
    return "cuda" if choice == "cuda" and cuda_available() else "cpu"


def _latency_fn(ray, ctx, shared: _Shared, number: int, where: list[str], node: str):
    res = ctx.profile.ray_resource
    shape = ctx.batch_shape
    seed = ctx.seed + number

    if res:
        def remote(path: Path):
            ref = _measure_task.options(resources={res: 1.0}, num_cpus=0, max_retries=0).remote(
                Path(path).read_bytes(), [shared.refs[3]], shared.key, ctx.profile, shape, seed)
            out = ray.get(ref)
            where.append(out["node"])
            return out["latency_ms"], out["speedup"], out["cv"]

        return remote

    def local(path: Path):
        from ..measure.latency import measure_latency

        lock = _node_root(shared.key).parent / "latency.lock"  # one measurement at a time on this node
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                lat = measure_latency(path, ctx.profile, shape, baseline_path=ctx.baseline.path, seed=seed)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        where.append(node)
        return lat.median_ms, lat.speedup, lat.cv

    return local


def _measure_task_fn(onnx: bytes, base_ref: list, key: str, profile, shape, seed: int) -> dict:
    """On the target node: the candidate's latency, interleaved with the baseline's."""
    from ..measure.latency import measure_latency

    ray = _import_ray()
    base = _baseline_file(ray, base_ref[0], key)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=base.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(onnx)
        lat = measure_latency(tmp, profile, shape, baseline_path=base, seed=seed)
    finally:
        os.unlink(tmp)
    return {"latency_ms": lat.median_ms, "speedup": lat.speedup, "cv": lat.cv,
            "node": ray.get_runtime_context().get_node_id()}


class _LazyRemote:
    """``ray.remote`` applied on first use, so importing this module does not import Ray."""

    def __init__(self, fn):
        self.fn = fn
        self._remote = None

    def _get(self):
        if self._remote is None:
            self._remote = _import_ray().remote(self.fn)
        return self._remote

    def options(self, **kw):
        return self._get().options(**kw)

    def remote(self, *a, **kw):
        return self._get().remote(*a, **kw)


_trial_task = _LazyRemote(_trial_task_fn)
_measure_task = _LazyRemote(_measure_task_fn)
