"""Results contract: trials.csv/.parquet, pareto.csv, models/ (front + cards + recipes), report.html.

Everything here is rebuilt from the stored records (``trials.jsonl`` and, where reachable, the Optuna
database) and ``baseline.json`` (the baseline and the int8-alone reference), so ``autocompress report DIR``
works on finished, interrupted and multi-worker runs alike. The HTML page is drawn by :mod:`.report_html`, the
tables people read (units, rounding, reference points, ``show``) by :mod:`.tables`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from .config import Constraints, Objective, RunSpec
from .records import TrialRecord, TrialStatus
from .search.pareto import hypervolume, non_dominated_mask
from .store import RunStore, merge_records

@dataclass
class RunResult:
    """A run's results as :func:`finalize` rebuilt them (what ``autocompress.compress`` / ``engine.run`` return)."""

    run_dir: Path
    records: list[TrialRecord]
    front: Any  # pandas DataFrame
    report: Path | None
    baseline: Any  # records.Baseline, None before the baseline is measured

    @property
    def pareto(self):
        return self.front

    def model_paths(self) -> list[Path]:
        return [self.run_dir / p for p in self.front["model"].tolist()] if len(self.front) else []


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


def _card(r: TrialRecord, baseline: dict, spec: dict, run_dir: Path | None = None, meta: dict | None = None,
          model: Path | None = None) -> dict:
    """A front model's card; with ``run_dir`` also its per-layer table, read from ``model`` (default: the
    trial's artifact) against the run's baseline.onnx."""
    m = r.metrics
    layers = None
    if model is None and run_dir is not None and r.artifact:
        model = run_dir / r.artifact
    if run_dir is not None and model is not None and Path(model).is_file():
        from .layers import layer_table

        try:
            layers = layer_table(model, run_dir / "models" / "baseline.onnx")
        except Exception as e:  # an unreadable file must not cost the run its results
            layers = {"error": f"{type(e).__name__}: {e}"}
    pre = (meta or {}).get("preprocessing")
    return {
        "trial": r.number,
        "metrics": {k: getattr(m, k) for k in METRIC_COLUMNS} | {"top5": m.top5, "latency_cv": m.latency_cv,
                                                                 "latency_mode": m.latency_mode},
        "baseline": {k: baseline.get(k) for k in ("accuracy", "latency_ms", "size_mb", "params", "macs")},
        "candidate": r.candidate.to_dict(),
        "kd_history": list(r.kd_history),
        "profile": spec.get("profile"),
        "seed": r.seed,
        **({"preprocessing": pre} if pre else {}),
        **({"layers": layers} if layers is not None else {}),
    }


def stamp_model(path: Path, meta: dict, number: int) -> None:
    """Write the run's preprocessing (input shape, mean/std, class names) into a shipped ONNX file."""
    from .preprocessing import Preprocessing, stamp_onnx

    pre = (meta or {}).get("preprocessing")
    if pre:
        stamp_onnx(path, Preprocessing.from_dict(pre), {"autocompress.trial": str(number)})


def _recipe(r: TrialRecord, spec: dict) -> dict:
    keys = ("model", "checkpoint", "data", "image_size", "profile", "space", "seed", "teacher")
    return {"autocompress_recipe": 1, "trial": r.number, "run": {k: spec.get(k) for k in keys},
            "candidate": r.candidate.to_dict()}


def finalize(run_dir: Path, *, log: Callable[[str], None] = print, backend=None, retime: int | None = None):
    """Rebuild the results from the stored trials. ``retime`` >= 1 re-times the front and the references in that
    many fresh processes (retiming.py); None/0 reuses a saved re-timing while the same models are on the front."""
    from .records import Baseline

    store = RunStore(run_dir)
    meta = store.read_run_yaml()
    spec = RunSpec.model_validate(meta["spec"])
    baseline = store.read_baseline()
    records = load_records(run_dir, backend, log=log)
    df = trials_frame(records)
    df.to_csv(run_dir / "trials.csv", index=False)
    try:
        df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(run_dir / "trials.parquet", index=False)
    except Exception as e:  # pyarrow missing or an odd column: the CSV is the contract
        log(f"note: trials.parquet not written ({e})")
    front = pareto_front(df, list(spec.objectives), spec.constraints)
    models = store.models_dir
    models.mkdir(exist_ok=True)
    for f in models.glob("trial_*"):
        f.unlink()
    by_number = {r.number: r for r in records}
    paths, cards = [], {}
    for n in front["number"].tolist():
        r = by_number[int(n)]
        src = run_dir / r.artifact if r.artifact else None
        dst = models / f"trial_{int(n)}.onnx"
        if src is not None and src.is_file():
            shutil.copyfile(src, dst)
            stamp_model(dst, meta, r.number)
        paths.append(str(dst.relative_to(run_dir)))
        cards[int(n)] = _card(r, baseline or {}, meta["spec"], run_dir, meta)
        (models / f"trial_{int(n)}.json").write_text(json.dumps(cards[int(n)], indent=2, default=str))
        (models / f"trial_{int(n)}.recipe.yaml").write_text(yaml.safe_dump(_recipe(r, meta["spec"]), sort_keys=False))
    front = front.assign(model=paths) if len(front) else front
    from .retiming import retime_run, summary_lines, with_retimed

    try:
        timed = retime_run(run_dir, front, df, meta, windows=retime, baseline=baseline, log=log)
    except Exception as e:  # noqa: BLE001 - the search's own figures stand; say why they were not re-timed
        log(f"note: the final re-timing was skipped ({type(e).__name__}: {e})")
        timed = None
    if retime and timed:
        for line in summary_lines(timed):
            log(line)
    front = with_retimed(front, timed)
    front.to_csv(run_dir / "pareto.csv", index=False)
    report = None
    if baseline is not None:
        from .report_html import write_html

        report = write_html(run_dir, df, front, spec, baseline, meta, cards, timed)
    _print_summary(df, front, report, baseline, spec, log, not_run=meta.get("seeds_not_run") or [], timed=timed)
    return RunResult(run_dir=run_dir, records=records, front=front, report=report,
                     baseline=Baseline.from_dict(baseline) if baseline else None)


def _print_summary(df, front, report, baseline, spec: RunSpec, log, not_run=(), timed: dict | None = None) -> None:
    from .tables import reference_lines

    counts = df["status"].value_counts().to_dict() if len(df) else {}
    log("trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
    if len(df) and not counts.get("COMPLETE"):
        fails = df[df["status"] != "COMPLETE"].groupby(["stage", "status"]).size().sort_values(ascending=False)
        log("no trial completed; by stage: " + ", ".join(f"{s} {st}: {n}" for (s, st), n in fails.items()))
        first = df[df["status"] != "COMPLETE"].iloc[0]
        log(f"first problem (trial {first['number']}, {first['stage']}): {first['message']}")
    elif len(front):
        log(f"Pareto front: {len(front)} model(s)")
        for _, r in front.iterrows():
            again = r.get("speedup_retimed")
            speed = f"{r['speedup']:.2f}x faster" + (f" ({again:.2f}x re-timed)" if pd.notna(again) else "")
            log(f"  trial {r['number']}: accuracy {r['accuracy']:.2%} (drop {r['accuracy_drop']:+.2f}), "
                f"{speed}, {r['size_mb']:.2f} MB ({baseline['size_mb'] / r['size_mb']:.1f}x smaller) -> {r['model']}")
    elif len(df):
        log("no trial met the constraints; see trials.csv (loosen --max-accuracy-drop or search longer)")
    for line in reference_lines(df, baseline, spec, not_run=not_run, timed=timed):
        log(line)
    if report:
        log(f"report: {report}")
