"""Predict mode against measure mode: the same search run twice, its fronts re-timed side by side (issue 17).

For each sampler seed, runs (through bench_search.py) the same search twice on the same task and teacher: once
with the measuring profile (``--profile``, latency timed interleaved with the baseline) and once in predict mode
(a copy of that profile with ``latency.mode: predict`` and ``lookup_table: --table``, latency looked up from the
table built on this machine by ``autocompress profile-device`` / bench_predict.py). Then the feasible models each
run kept are re-timed, both arms interleaved in the same W fresh processes against one baseline
(autocompress.measure.retime, the measuring profile), and the fronts are compared on those figures: the fastest
model at each accuracy level (drop <= 0.5 / 1 / 2 / 5 pp) and the hypervolume. Goal (issue 17): the two fronts'
models differ by <= 10% in speedup. Also printed: how far the predict arm's own (predicted) speedups were from the
re-timed ones.

    python benchmarks/bench_predict_front.py --task cnn --profile cpu-1thread --trials 12 --seeds 0 --retime 3 -- \\
        --model benchmarks/models/custom_cnn.py:custom_cnn

A run folder already at benchmarks/work/predict-front-T/<arm>-s<seed> (``measure`` or ``predict``; or a link to one,
e.g. a bench_hv run with the same flags) is kept, not re-run. Writes its rows to results/predict-front.csv
(replacing rows of the same task and seed) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from autocompress.config import RunSpec, load_profile, read_yaml  # noqa: E402
from autocompress.results import front_hypervolume  # noqa: E402
from bench_hv import replace_rows, retime_arms  # noqa: E402

LEVELS = (0.5, 1.0, 2.0, 5.0)  # accuracy drop (pp) at which the arms' fastest models are compared
GOAL = 0.10


def predict_profile(profile: str, table: Path, work: Path) -> Path:
    """A copy of ``profile`` in predict mode reading ``table`` (what `autocompress profile-device --out` writes)."""
    _, src = load_profile(profile)
    data = read_yaml(src)
    data["name"] = f"{data.get('name', profile)}-predict"
    data["latency"] = dict(data.get("latency") or {}, mode="predict")
    data["lookup_table"] = str(table.resolve())
    out = work / f"{data['name']}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def fastest(df: pd.DataFrame, level: float) -> float:
    ok = df[df["accuracy_drop"] <= level]
    return float(ok["speedup"].max()) if len(ok) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", default="cpu-1thread", help="the measuring profile (the predict arm copies it)")
    ap.add_argument("--table", default=None,
                    help="lookup table built on this machine (default benchmarks/results/<profile>.table.jsonl)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--retime", type=int, default=3, metavar="W", help="fresh processes for the side-by-side timing")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags for `autocompress run` (model, data...)")
    a = ap.parse_args()
    flags = [x for x in a.rest if x != "--"]
    if "--profile" in flags:
        sys.exit("give the profile as this script's --profile (the predict arm is a copy of it), not after --")
    table = Path(a.table or ROOT / "benchmarks" / "results" / f"{a.profile}.table.jsonl")
    if not table.is_file():
        sys.exit(f"no lookup table at {table}: build one on this machine first "
                 f"(python benchmarks/bench_predict.py --profile {a.profile}, or autocompress profile-device)")
    work = ROOT / "benchmarks" / "work" / f"predict-front-{a.task}"
    work.mkdir(parents=True, exist_ok=True)
    profiles = {"measure": a.profile, "predict": str(predict_profile(a.profile, table, work))}
    rows = []
    for s in a.seeds:
        runs = {arm: work / f"{arm}-s{s}" for arm in profiles}
        for arm, out in runs.items():
            if (out / "trials.csv").is_file():
                print(f"{out} exists: kept", flush=True)
                continue
            cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--tag", f"predict-front-{a.task}-{arm}-s{s}",
                   "--out", str(out), "--", *flags, "--profile", profiles[arm], "--trials", str(a.trials),
                   "--sampler-seed", str(s)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        print(f"seed {s}: re-timing both arms' kept models side by side", flush=True)
        out, kept = retime_arms(runs, a.retime)
        spec = RunSpec.model_validate(yaml.safe_load((runs["measure"] / "run.yaml").read_text())["spec"])
        base = json.loads((runs["measure"] / "baseline.json").read_text())
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        row = {"task": a.task, "seed": s, "profile": a.profile, "table": table.name,
               "table_date": json.loads(table.open().readline()).get("date"), "commit": commit,
               "trials": {arm: len(pd.read_csv(run / "trials.csv")) for arm, run in runs.items()}["predict"]}
        for arm, df in kept.items():
            row[f"kept_{arm}"] = len(df)  # the feasible models the run kept (its front and seeds)
            row[f"hv_{arm}_retimed"] = round(front_hypervolume(df, list(spec.objectives), spec.constraints, base), 4)
            for lv in LEVELS:
                row[f"fastest_{lv:g}pp_{arm}"] = round(fastest(df, lv), 2)
        for lv in LEVELS:
            m, p = row[f"fastest_{lv:g}pp_measure"], row[f"fastest_{lv:g}pp_predict"]
            row[f"ratio_{lv:g}pp"] = round(p / m, 3) if m == m and p == p else float("nan")
        row["hv_ratio"] = round(row["hv_predict_retimed"] / row["hv_measure_retimed"], 3)
        # how far the predict arm's own figures were from the re-timed ones (the run's trials.csv speedup)
        pred = pd.read_csv(runs["predict"] / "trials.csv").set_index("number")["speedup"]
        errs = [pred[int(n)] / sp - 1 for n, sp in zip(kept["predict"]["number"], kept["predict"]["speedup"])]
        row["predicted_vs_retimed_median_abs"] = round(statistics.median(abs(e) for e in errs), 3) if errs else float("nan")
        row["predicted_within_10pct"] = round(sum(abs(e) <= 0.10 for e in errs) / len(errs), 2) if errs else float("nan")
        row.update(out)
        ratios = [row[f"ratio_{lv:g}pp"] for lv in LEVELS if row[f"ratio_{lv:g}pp"] == row[f"ratio_{lv:g}pp"]]
        row["goal"] = "met" if ratios and all(abs(r - 1) <= GOAL for r in ratios) else "MISSED"
        row["date"] = datetime.now().isoformat(timespec="seconds")
        rows.append(row)
        for arm in kept:
            print(f"  {arm}: " + ", ".join(f"<= {lv:g} pp {row[f'fastest_{lv:g}pp_{arm}']}x" for lv in LEVELS)
                  + f"; hypervolume {row[f'hv_{arm}_retimed']}")
    replace_rows(ROOT / "benchmarks" / "results" / "predict-front.csv", rows)
    cols = ["seed", "trials", *(f"ratio_{lv:g}pp" for lv in LEVELS), "hv_ratio", "predicted_vs_retimed_median_abs",
            "predicted_within_10pct", "retime_cv_median", "goal"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"goal (each accuracy level's fastest model, predict arm within {GOAL:.0%} of measure arm, re-timed side by "
          "side): " + ", ".join(f"seed {r['seed']} {r['goal']}" for r in rows))


if __name__ == "__main__":
    main()
