"""The results as people read them: units and rounding, the reference points (fp32 baseline, int8 alone,
the space's seeds), the model the report leads with, and ``autocompress show``'s tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import Constraints, RunSpec
from .results import feasible_mask, load_records, pareto_front, trials_frame
from .store import RunStore


def percent_metric(spec: RunSpec) -> bool:
    """Accuracy is a fraction shown in % (top-1), unless the run scores a user metric."""
    return spec.metric is None


def chosen(df: pd.DataFrame, constraints: Constraints) -> pd.Series | None:
    """The trial the report leads with: the fastest that meets the constraints (first such trial on ties)."""
    if df.empty:
        return None
    feas = df[feasible_mask(df, constraints)]
    if feas.empty:
        return None
    return feas.sort_values(["speedup", "number"], ascending=[False, True]).iloc[0]


def seed_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["seed"].fillna("").astype(str) != ""] if "seed" in df else df.iloc[0:0]


def against_int8(best: pd.Series | None, ref: dict, timed: dict | None) -> tuple[float, str] | None:
    """The fastest feasible model's speed over int8 alone's and what it rests on: both re-timed in the final pass's
    fresh processes where both were (the figures a user is shown: on a one-click run the pair was 8.68x on the
    search's figures, 10.22x re-timed; benchmarks/README.md, thirty-first session), else the search's own figures."""
    if best is None or not ref.get("speedup"):
        return None
    again, ref_again = (timed or {}).get(f"trial {int(best['number'])}"), (timed or {}).get("int8 alone")
    if again and ref_again:
        return again["speedup"] / ref_again["speedup"], "both re-timed in the same fresh processes"
    return best["speedup"] / ref["speedup"], "as the search measured them"


def reference_lines(df: pd.DataFrame, baseline: dict | None, spec: RunSpec, not_run=(), timed: dict | None = None) -> list[str]:
    """One line each: the fastest model that meets the constraints against int8 alone and the seeds, and the seeds
    ``not_run`` (the budget ended before them: run.yaml's ``seeds_not_run``, written by the search loop); ``timed``:
    the final re-timing's models (retiming.py), whose figures are shown beside the search's."""
    if not baseline:
        return []
    pct = percent_metric(spec)
    out = []
    best = chosen(df, spec.constraints)
    ref = baseline.get("int8_reference") or {}
    ref_again = (timed or {}).get("int8 alone")
    if ref.get("speedup"):
        line = (f"int8 alone (ORT static): {fmt_speedup(ref['speedup'])}"
                + (f" ({fmt_speedup(ref_again['speedup'])} re-timed)" if ref_again else "")
                + f", accuracy {fmt_acc(ref['accuracy'], pct)} (drop {fmt_drop(ref['accuracy_drop'])}), {fmt_mb(ref['size_mb'])}")
        vs = against_int8(best, ref, timed)
        if vs is not None:
            line += f"; the fastest model within the constraints (trial {int(best['number'])}) is {vs[0]:.2f}x its speed ({vs[1]})"
        out.append(line)
    elif ref.get("error"):
        out.append(f"int8 alone: not measured ({ref['error']})")
    for _, r in seed_trials(df).iterrows():
        if r["status"] == "COMPLETE":
            again = (timed or {}).get(f"trial {int(r['number'])}")
            out.append(f"seed {r['seed']} (trial {r['number']}): {fmt_speedup(r['speedup'])}"
                       + (f" ({fmt_speedup(again['speedup'])} re-timed)" if again else "") + ", drop "
                       f"{fmt_drop(r['accuracy_drop'])}, {fmt_mb(r['size_mb'])}")
        else:
            out.append(f"seed {r['seed']} (trial {r['number']}): {r['status']} at {r['stage']}: {r['message']}")
    if not_run and df.empty:  # the set-up took the whole budget: one line, not one per seed
        out.append(f"seeds: none of the space's {len(not_run)} ran (the budget ended before the first trial)")
    else:
        out += [f"seed {label}: not run (the budget ended before it)" for label in not_run]
    return out


# ---------------------------------------------------------------------------- formatting (units, rounding)
def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def fmt_acc(v, percent: bool = True) -> str:
    f = _num(v)
    return "-" if f is None else (f"{f:.2%}" if percent else f"{f:.4g}")


def fmt_drop(v) -> str:
    f = _num(v)
    return "-" if f is None else f"{f:+.2f} pp"


def fmt_speedup(v) -> str:
    f = _num(v)
    return "-" if f is None else (f"{f:.2f}x" if f < 100 else f"{f:.0f}x")


def fmt_mb(v) -> str:
    f = _num(v)
    return "-" if f is None else (f"{f:.2f} MB" if f >= 0.1 else f"{f:.3f} MB")


def _millions(v, digits: int = 2) -> str:
    f = _num(v)
    return "-" if f is None else f"{f / 1e6:.{digits}f}"


def display_table(df: pd.DataFrame, baseline: dict, percent: bool = True, *, model: bool = True) -> pd.DataFrame:
    """Trials as strings with units in the headers: what the report and ``show`` print."""
    rows = []
    for _, r in df.iterrows():
        size, lat = _num(r.get("size_mb")), _num(r.get("latency_ms"))
        row = {
            "trial": int(r["number"]),
            "accuracy (%)" if percent else "metric": fmt_acc(r.get("accuracy"), percent).rstrip("%"),
            "drop (pp)": fmt_drop(r.get("accuracy_drop")).removesuffix(" pp"),
            "speedup (x)": fmt_speedup(r.get("speedup")).rstrip("x"),
            "latency (ms)": "-" if lat is None else f"{lat:.3g}",
            **({"re-timed (x, range)": _retimed(r)} if "speedup_retimed" in r else {}),
            "size (MB)": fmt_mb(size).removesuffix(" MB"),
            "smaller (x)": "-" if not size else f"{baseline['size_mb'] / size:.1f}",
            "params (M)": _millions(r.get("params")),
            "MACs (M)": _millions(r.get("macs"), 1),
            "sparsity (%)": "-" if _num(r.get("sparsity")) is None else f"{100 * float(r['sparsity']):.0f}",
            "bits": r.get("bits") or "-",
            "KD epochs": int(r["kd_epochs"]) if _num(r.get("kd_epochs")) else "-",
            "seed": r.get("seed") or "",
        }
        if model and "model" in r and isinstance(r["model"], str):
            row["model"] = r["model"]
        rows.append(row)
    return pd.DataFrame(rows)


def _retimed(r) -> str:
    """The final pass's speedup with its range across windows; '?' marks windows that disagree (CV > 5%)."""
    v = _num(r.get("speedup_retimed"))
    if v is None:
        return "-"
    flag = "" if str(r.get("speedup_agree")).lower() in ("true", "1") else " ?"
    return f"{v:.2f} ({float(r['speedup_lo']):.2f}-{float(r['speedup_hi']):.2f}){flag}"


def reference_table(df: pd.DataFrame, baseline: dict, percent: bool = True) -> pd.DataFrame:
    """fp32 baseline, int8 alone and every seed trial, as strings with units (the yardsticks of the front)."""
    rows = [{"reference": "fp32 baseline", "trial": "", "status": "", "accuracy (%)" if percent else "metric": fmt_acc(baseline["accuracy"], percent).rstrip("%"),
             "drop (pp)": "0.00", "speedup (x)": "1.00", "size (MB)": fmt_mb(baseline["size_mb"]).removesuffix(" MB"), "note": ""}]
    ref = baseline.get("int8_reference") or {}
    q = ref.get("quant") or {}
    if ref:
        rows.append({"reference": f"int8 alone (ORT static {q.get('format', '')} {q.get('types', '')})".replace("  ", " "),
                     "trial": "", "status": "error" if ref.get("error") else "measured",
                     "accuracy (%)" if percent else "metric": fmt_acc(ref.get("accuracy"), percent).rstrip("%"),
                     "drop (pp)": fmt_drop(ref.get("accuracy_drop")).removesuffix(" pp"),
                     "speedup (x)": fmt_speedup(ref.get("speedup")).rstrip("x"),
                     "size (MB)": fmt_mb(ref.get("size_mb")).removesuffix(" MB"), "note": ref.get("error") or ""})
    for _, r in seed_trials(df).iterrows():
        done = r["status"] == "COMPLETE"
        rows.append({"reference": f"seed: {r['seed']}", "trial": int(r["number"]), "status": r["status"],
                     "accuracy (%)" if percent else "metric": fmt_acc(r["accuracy"], percent).rstrip("%") if done else "-",
                     "drop (pp)": fmt_drop(r["accuracy_drop"]).removesuffix(" pp") if done else "-",
                     "speedup (x)": fmt_speedup(r["speedup"]).rstrip("x") if done else "-",
                     "size (MB)": fmt_mb(r["size_mb"]).removesuffix(" MB") if done else "-",
                     "note": "" if done else f"{r['stage']}: {r['message']}"})
    return pd.DataFrame(rows)


def show_tables(run_dir: Path) -> list:
    """``autocompress show``: the front and the reference points as rich tables (read-only: nothing is written)."""
    from rich.table import Table

    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    meta = store.read_run_yaml()
    spec = RunSpec.model_validate(meta["spec"])
    baseline = store.read_baseline()
    if baseline is None:
        from .errors import ConfigError

        raise ConfigError(f"run '{run_dir}' has no baseline yet (baseline.json); wait for the run to measure it")
    df = trials_frame(load_records(run_dir))
    front = pareto_front(df, list(spec.objectives), spec.constraints)
    pct = percent_metric(spec)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    status = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no trials yet"

    def table(title: str, frame: pd.DataFrame, caption: str = "") -> Table:
        t = Table(title=title, caption=caption or None, title_justify="left", caption_justify="left")
        for c in frame.columns:
            t.add_column(str(c), justify="left" if c in ("reference", "bits", "status") else "right")
        for _, row in frame.iterrows():
            t.add_row(*[str(v) for v in row.tolist()])
        return t

    short = {"accuracy (%)": "acc %", "metric": "metric", "drop (pp)": "drop pp", "speedup (x)": "speedup x",
             "size (MB)": "size MB", "smaller (x)": "smaller x", "params (M)": "params M", "MACs (M)": "MACs M",
             "sparsity (%)": "sparsity %", "bits": "bits", "KD epochs": "KD ep"}
    cons = ", ".join(f"{k} {v}" for k, v in spec.constraints.model_dump(exclude_none=True).items()) or "none"
    ft = display_table(front, baseline, pct, model=False)
    if len(ft):
        ft.insert(0, "trial ", [f"{n}{'*' if sd else ''}" for n, sd in zip(ft["trial"], ft["seed"])])
        ft = ft[["trial ", *[c for c in short if c in ft]]].rename(columns={**short, "trial ": "trial"})
    caption = (f"models: {run_dir / 'models'}/trial_<N>.onnx; * = a seed setting of the space" if len(front)
               else "no trial meets the constraints yet")
    rt = reference_table(df, baseline, pct)
    notes = [f"trial {r['trial']} ({r['reference']}): {r['status']} at {r['note']}" for _, r in rt.iterrows() if r["note"] and r["trial"] != ""]
    notes += [f"{r['reference']}: {r['note']}" for _, r in rt.iterrows() if r["note"] and r["trial"] == ""]
    rt = rt.drop(columns=["note"]).rename(columns=short)
    from rich.text import Text

    out = [table(f"Pareto front of {run_dir.name}: {len(front)} model(s); trials: {status}; constraints: {cons}", ft, caption),
           table("Reference points (measured in this run)", rt)]
    return out + ([Text("\n".join(notes))] if notes else [])
