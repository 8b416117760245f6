"""Results contract: trials.csv/.parquet, pareto.csv, models/ (front + cards + recipes), report.html.

Everything here is rebuilt from the stored records (``trials.jsonl`` and, where reachable, the Optuna
database) and ``baseline.json`` (the baseline and the int8-alone reference), so ``autocompress report DIR``
works on finished, interrupted and multi-worker runs alike. The trials as data (records, table, feasibility,
front, hypervolume) are :mod:`.results`; the HTML page is drawn by :mod:`.report_html`, the tables people read
(units, rounding, reference points, ``show``) by :mod:`.tables`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from .config import RunSpec
from .records import TrialRecord
from .results import METRIC_COLUMNS, load_records, pareto_front, trials_frame
from .store import RunStore

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
