"""The trials of a run as data: its records (the folder's log united with the Optuna study), the trials table,
which trials are feasible, the Pareto front and its hypervolume. Pure functions of the stored records, below
everything that writes or draws results (:mod:`.report` writes them, :mod:`.report_html` draws the page,
:mod:`.tables` formats what people read), so each of those imports this and none imports another's data side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .config import Constraints, Objective
from .records import TrialRecord, TrialStatus
from .search.pareto import hypervolume, non_dominated_mask
from .store import RunStore, merge_records


METRIC_COLUMNS = ["accuracy", "accuracy_drop", "latency_ms", "speedup", "size_mb", "params", "macs"]
COLUMNS = ["number", "status", *METRIC_COLUMNS, "duration_s", "stage", "message", "model"]


def load_records(run_dir: Path, backend=None, *, log: Callable[[str], None] | None = None) -> list[TrialRecord]:
    """The run's trials: the folder's own log, united with those stored on the run's Optuna study (other
    workers' trials). A study that cannot be read, or records on it that cannot be parsed, are left out with
    one ``note:`` line through ``log`` (default: stderr) saying which and why; the folder's log is complete
    for a single-process run, so the tables are rebuilt from it."""
    say = log if log is not None else _stderr
    store = RunStore(run_dir)
    sources = [store.records()]
    if backend is not None:
        sources.append(backend.records())
        return merge_records(*sources)
    spec = store.read_run_yaml().get("spec") or {}
    url, name = spec.get("storage"), spec.get("study")
    if not url or not name or (url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file()):
        return merge_records(*sources)  # no study (yet): the folder's log is the run
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from .errors import AutocompressError
    from .search.optuna_backend import DISCARDED_ATTR, RECORD_ATTR, open_storage, record_of

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
        trials = study.get_trials(deepcopy=False)
    except (AutocompressError, SQLAlchemyError, KeyError, ValueError, OSError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        say(f"note: trials stored on study '{name}' ({url}) not read ({first}); these results hold the "
            f"{len(sources[0])} trial(s) of {store.log_path} only")
        return merge_records(*sources)
    kept = [t for t in trials if RECORD_ATTR in t.user_attrs and not t.user_attrs.get(DISCARDED_ATTR)]
    recs = [(t.number, record_of(t)) for t in kept]
    bad = [n for n, r in recs if r is None]
    if bad:
        say(f"note: {len(bad)} trial record(s) on study '{name}' could not be read and are left out "
            f"(trial {', '.join(map(str, bad[:10]))}{', ...' if len(bad) > 10 else ''}); a record written by "
            "another autocompress version?")
    sources.append([r for _, r in recs if r is not None])
    return merge_records(*sources)


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def trials_frame(records: list[TrialRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        m = r.metrics
        row: dict[str, Any] = {
            "number": r.number, "status": r.status.value,
            **{k: getattr(m, k) for k in METRIC_COLUMNS},
            "duration_s": round(r.duration_s, 2), "stage": r.stage, "message": r.message, "model": r.artifact,
        }
        for k, v in r.candidate.params:
            row[f"param.{k}"] = v
        row["candidate_key"] = r.candidate.key()
        row["student"] = r.candidate.student
        row["bits"] = "/".join(sorted(set(r.candidate.bits_map().values())))
        row["kd_epochs"] = r.candidate.distill.epochs if r.candidate.distill else 0
        row["kd_samples_per_epoch"] = (r.candidate.distill.samples_per_epoch if r.candidate.distill else None)
        row["finish_of"] = r.finish_of  # a finishing trial (search/finish.py): the trial it re-distilled
        row["parent"] = r.parent  # a mutation (search/explore.py): the trial it mutated
        sp = list(r.candidate.sparsity_map().values())
        row["sparsity"] = round(sum(sp) / len(sp), 4) if sp else 0.0
        row["dropped_blocks"] = len(r.candidate.drop)  # depth: blocks replaced by the identity (compress/depth.py)
        row["seed"] = r.seed or ""
        for k, v in r.stage_times:  # seconds per stage ("student_cached" marks a stage-cache hit)
            row["student_cached" if k == "student_cached" else f"time.{k}"] = bool(v) if k == "student_cached" else v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    return df[[c for c in COLUMNS if c in df] + [c for c in df.columns if c not in COLUMNS]]


def feasible_mask(df: pd.DataFrame, c: Constraints) -> pd.Series:
    ok = df["status"] == TrialStatus.COMPLETE.value
    if c.max_accuracy_drop is not None:
        ok &= df["accuracy_drop"].astype(float) <= c.max_accuracy_drop
    if c.min_speedup is not None:
        ok &= df["speedup"].astype(float) >= c.min_speedup
    if c.max_size_mb is not None:
        ok &= df["size_mb"].astype(float) <= c.max_size_mb
    if c.max_latency_ms is not None:
        ok &= df["latency_ms"].astype(float) <= c.max_latency_ms
    return ok


def pareto_front(df: pd.DataFrame, objectives: list[Objective], constraints: Constraints) -> pd.DataFrame:
    """The non-dominated feasible trials (pure: computed from the table, not from a backend). A model shows once:
    a re-proposed candidate as its first trial, and so do trials with equal figures on every objective (a graph is
    measured once per run, so neighbouring ratios that channel rounding maps to one network tie exactly)."""
    if df.empty:
        return df.copy()
    feas = _first_of_each(df[feasible_mask(df, constraints)], [o.name for o in objectives])
    if feas.empty:
        return feas.copy()
    vals = feas[[o.name for o in objectives]].astype(float).to_numpy()
    mask = non_dominated_mask(vals, [o.resolved_direction for o in objectives])
    return feas[mask].sort_values(objectives[0].name, ascending=objectives[0].resolved_direction == "minimize")


def _first_of_each(feas: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``feas`` with one row per candidate and per set of equal ``columns`` values, the earliest trial's."""
    if "number" in feas:
        feas = feas.sort_values("number", kind="stable")
    if "candidate_key" in feas:
        feas = feas.drop_duplicates("candidate_key", keep="first")
    return feas.drop_duplicates(columns, keep="first")


def front_2d(df: pd.DataFrame, x: str, x_direction: str, constraints: Constraints, y: str = "accuracy",
             y_direction: str = "maximize") -> pd.DataFrame:
    """The feasible trials no other feasible trial beats on both ``y`` and ``x`` (a 2-D staircase), by ``x``."""
    if df.empty:
        return df.copy()
    feas = _first_of_each(df[feasible_mask(df, constraints)], [y, x])
    if feas.empty:
        return feas.copy()
    mask = non_dominated_mask(feas[[y, x]].astype(float).to_numpy(), [y_direction, x_direction])
    return feas[mask].sort_values([x, y], ascending=[True, y_direction == "minimize"])


def reference_point(objectives: list[Objective], baseline: dict) -> list[float]:
    """A fixed reference for hypervolume: 10 pp below the baseline's accuracy, the baseline's speed/size."""
    ref = {"accuracy": baseline["accuracy"] - 0.10, "speedup": 1.0, "latency_ms": baseline["latency_ms"],
           "size_mb": baseline["size_mb"], "params": baseline["params"], "macs": baseline["macs"]}
    return [ref[o.name] for o in objectives]


def front_hypervolume(df: pd.DataFrame, objectives: list[Objective], constraints: Constraints, baseline: dict) -> float:
    """Hypervolume of the feasible trials in ``df`` against :func:`reference_point` (0 when none is feasible);
    dominated points add no volume, so this is the front's hypervolume."""
    pts = df[feasible_mask(df, constraints)][[o.name for o in objectives]].astype(float).to_numpy()
    return hypervolume(pts, [o.resolved_direction for o in objectives], reference_point(objectives, baseline))


def hypervolume_history(df: pd.DataFrame, objectives: list[Objective], constraints: Constraints, baseline: dict) -> pd.DataFrame:
    """``number, hypervolume`` after each trial, in trial order; recomputed only when a trial enlarges the front."""
    rows, hv = [], 0.0
    if df.empty:
        return pd.DataFrame(columns=["number", "hypervolume"])
    order = df.sort_values("number")
    feas = feasible_mask(order, constraints).to_numpy()
    names, dirs = [o.name for o in objectives], [o.resolved_direction for o in objectives]
    ref = reference_point(objectives, baseline)
    front = np.zeros((0, len(names)))
    for ok, (_, row) in zip(feas, order.iterrows()):
        if ok:
            p = row[names].astype(float).to_numpy()[None, :]
            cand = np.vstack([front, p])
            mask = non_dominated_mask(cand, dirs)
            if mask[-1]:  # not dominated: the front (and maybe its volume) changed
                front = cand[mask]
                hv = hypervolume(front, dirs, ref)
        rows.append((int(row["number"]), hv))
    return pd.DataFrame(rows, columns=["number", "hypervolume"])
