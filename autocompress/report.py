"""Results contract: trials.csv/.parquet, pareto.csv, models/ (front + cards + recipes), report.html.

Everything here is rebuilt from the stored records (``trials.jsonl`` and, where reachable, the Optuna
database), so ``autocompress report DIR`` works on finished, interrupted and multi-worker runs alike.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from .config import Constraints, Objective, RunSpec
from .records import TrialRecord, TrialStatus
from .search.pareto import hypervolume, non_dominated_mask
from .store import RunStore, merge_records

METRIC_COLUMNS = ["accuracy", "accuracy_drop", "latency_ms", "speedup", "size_mb", "params", "macs"]
COLUMNS = ["number", "status", *METRIC_COLUMNS, "duration_s", "stage", "message", "model"]


def load_records(run_dir: Path, backend=None) -> list[TrialRecord]:
    store = RunStore(run_dir)
    sources = [store.records()]
    if backend is not None:
        sources.append(backend.records())
    else:
        try:
            meta = store.read_run_yaml()
            url, name = meta["spec"].get("storage"), meta["spec"].get("study")
            if url and name and (not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()):
                import optuna

                from .search.optuna_backend import open_storage, record_of

                study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
                sources.append([r for t in study.get_trials(deepcopy=False)
                                if not t.user_attrs.get("discarded") and (r := record_of(t)) is not None])
        except Exception:
            pass  # the local log alone is complete for a single-process run
    return merge_records(*sources)


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
    """The non-dominated feasible trials (pure: computed from the table, not from a backend)."""
    if df.empty:
        return df.copy()
    feas = df[feasible_mask(df, constraints)]
    if "candidate_key" in feas:  # a re-proposed candidate shows once, as its first trial
        feas = feas.sort_values("number", kind="stable").drop_duplicates("candidate_key", keep="first")
    if feas.empty:
        return feas.copy()
    vals = feas[[o.name for o in objectives]].astype(float).to_numpy()
    mask = non_dominated_mask(vals, [o.resolved_direction for o in objectives])
    return feas[mask].sort_values(objectives[0].name, ascending=objectives[0].resolved_direction == "minimize")


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


def _card(r: TrialRecord, baseline: dict, spec: dict) -> dict:
    m = r.metrics
    return {
        "trial": r.number,
        "metrics": {k: getattr(m, k) for k in METRIC_COLUMNS} | {"top5": m.top5, "latency_cv": m.latency_cv,
                                                                 "latency_mode": m.latency_mode},
        "baseline": {k: baseline.get(k) for k in ("accuracy", "latency_ms", "size_mb", "params", "macs")},
        "candidate": r.candidate.to_dict(),
        "kd_history": list(r.kd_history),
        "profile": spec.get("profile"),
    }


def _recipe(r: TrialRecord, spec: dict) -> dict:
    keys = ("model", "checkpoint", "data", "image_size", "profile", "space", "seed", "teacher")
    return {"autocompress_recipe": 1, "trial": r.number, "run": {k: spec.get(k) for k in keys},
            "candidate": r.candidate.to_dict()}


def finalize(run_dir: Path, *, log: Callable[[str], None] = print, backend=None):
    from .engine import RunResult
    from .trial import Baseline

    store = RunStore(run_dir)
    meta = store.read_run_yaml()
    spec = RunSpec.model_validate(meta["spec"])
    baseline = store.read_baseline()
    records = load_records(run_dir, backend)
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
    paths = []
    for n in front["number"].tolist():
        r = by_number[int(n)]
        src = run_dir / r.artifact if r.artifact else None
        dst = models / f"trial_{int(n)}.onnx"
        if src is not None and src.is_file():
            shutil.copyfile(src, dst)
        paths.append(str(dst.relative_to(run_dir)))
        (models / f"trial_{int(n)}.json").write_text(json.dumps(_card(r, baseline or {}, meta["spec"]), indent=2, default=str))
        (models / f"trial_{int(n)}.recipe.yaml").write_text(yaml.safe_dump(_recipe(r, meta["spec"]), sort_keys=False))
    front = front.assign(model=paths) if len(front) else front
    front.to_csv(run_dir / "pareto.csv", index=False)
    report = None
    if baseline is not None:
        report = write_html(run_dir, df, front, spec, baseline, meta)
    _print_summary(df, front, report, baseline, log)
    return RunResult(run_dir=run_dir, records=records, front=front, report=report,
                     baseline=Baseline(**{k: v for k, v in (baseline or {}).items() if k in Baseline.__dataclass_fields__}) if baseline else None)


def _print_summary(df, front, report, baseline, log) -> None:
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
            log(f"  trial {r['number']}: accuracy {r['accuracy']:.2%} (drop {r['accuracy_drop']:+.2f}), "
                f"{r['speedup']:.2f}x faster, {r['size_mb']:.2f} MB ({baseline['size_mb'] / r['size_mb']:.1f}x smaller) -> {r['model']}")
    elif len(df):
        log("no trial met the constraints; see trials.csv (loosen --max-accuracy-drop or search longer)")
    if report:
        log(f"report: {report}")


def write_html(run_dir: Path, df: pd.DataFrame, front: pd.DataFrame, spec: RunSpec, baseline: dict, meta: dict) -> Path:
    import plotly.graph_objects as go
    import plotly.io as pio

    done = df[df["status"] == "COMPLETE"].copy()
    feas = feasible_mask(done, spec.constraints) if len(done) else pd.Series(dtype=bool)
    fig = go.Figure()
    hover = "trial %{customdata[0]}<br>accuracy %{y:.2%}<br>speedup %{x:.2f}x<br>size %{customdata[1]:.2f} MB<br>%{customdata[2]}<extra></extra>"

    def pts(d: pd.DataFrame, name: str, **marker):
        fig.add_trace(go.Scatter(
            x=d["speedup"].astype(float), y=d["accuracy"].astype(float), mode="markers", name=name,
            customdata=d[["number", "size_mb", "bits"]].to_numpy(), hovertemplate=hover, marker=marker))

    if len(done):
        size_max = max(float(done["size_mb"].max()), 1e-6)
        pts(done[feas], "feasible", color=done[feas]["size_mb"].astype(float), colorscale="Viridis",
            size=9 + 14 * done[feas]["size_mb"].astype(float) / size_max, colorbar={"title": "size MB"}, showscale=True)
        pts(done[~feas], "violates constraints", color="lightgray", symbol="x", size=8)
    if len(front):
        f = front.sort_values("speedup")
        fig.add_trace(go.Scatter(x=f["speedup"].astype(float), y=f["accuracy"].astype(float), mode="lines+markers",
                                 name="Pareto front", line={"color": "crimson"},
                                 marker={"color": "crimson", "size": 11, "symbol": "diamond-open"},
                                 customdata=f[["number", "size_mb", "bits"]].to_numpy(), hovertemplate=hover))
    fig.add_trace(go.Scatter(x=[1.0], y=[baseline["accuracy"]], mode="markers+text", name="baseline (fp32)",
                             text=["baseline"], textposition="top center",
                             marker={"symbol": "star", "size": 16, "color": "black"}))
    fig.update_layout(title="accuracy vs measured speedup (size as colour and marker size)",
                      xaxis={"title": "speedup vs fp32 baseline (x, log)", "type": "log"},
                      yaxis={"title": "accuracy", "tickformat": ".1%"}, template="plotly_white", height=560,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})

    hv_fig = go.Figure()
    objectives = list(spec.objectives)
    if len(done):
        order = done.sort_values("number")
        hv = [front_hypervolume(order.iloc[: k + 1], objectives, spec.constraints, baseline) for k in range(len(order))]
        hv_fig.add_trace(go.Scatter(x=order["number"], y=hv, mode="lines+markers", name="hypervolume"))
    hv_fig.update_layout(title="hypervolume of the feasible front over trials", xaxis={"title": "trial"},
                         yaxis={"title": "hypervolume"}, template="plotly_white", height=340)

    cols = ["number", "accuracy", "accuracy_drop", "speedup", "latency_ms", "size_mb", "params", "macs", "bits", "kd_epochs", "model"]
    table = front[[c for c in cols if c in front]].to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="t") if len(front) else "<p>No feasible trial yet.</p>"
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    problems = df[df["status"].isin(["FAILED", "INFEASIBLE"])][["number", "status", "stage", "message"]] if len(df) else df
    spec_d = meta.get("spec", {})
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>autocompress report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}} table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}} code{{background:#f4f4f4;padding:1px 4px}}</style></head><body>
<h1>autocompress report</h1>
<p>run <code>{html.escape(str(run_dir))}</code>: model <b>{html.escape(str(spec_d.get('model')))}</b> on <b>{html.escape(str(spec_d.get('data')))}</b>,
profile <b>{html.escape(str(spec_d.get('profile')))}</b>, space <b>{html.escape(str(spec_d.get('space')))}</b>, sampler {html.escape(str(spec_d.get('sampler')))}, seed {spec_d.get('seed')}.</p>
<p>baseline (fp32 ONNX): accuracy {baseline['accuracy']:.2%}, latency {baseline['latency_ms']:.3f} ms on this machine, {baseline['size_mb']:.2f} MB, {baseline['params'] / 1e6:.2f} M params.
Trials: {html.escape(', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none')}. Constraints: {html.escape(str(spec.constraints.model_dump(exclude_none=True)))}.</p>
<p>Speedups are ratios to the baseline measured in the same process, interleaved; absolute times hold only on the machine they were taken on.</p>
{pio.to_html(fig, include_plotlyjs=True, full_html=False, div_id="pareto-plot")}
<h2>Pareto front</h2>{table}
{pio.to_html(hv_fig, include_plotlyjs=False, full_html=False, div_id="hv-plot")}
<h2>Failed and infeasible trials</h2>{problems.to_html(index=False, border=0, classes="t") if len(problems) else "<p>None.</p>"}
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(body)
    return out
