"""What speed-before-training and multi-fidelity distillation save, and what they cost, against the flat budget.

For each sampler seed, runs the same search twice through the real CLI (same data split, teacher, space and
budget; `--seed` fixed, `--sampler-seed` varied): `multi_fidelity: true` (the default: the gate on the speed and
size measured before training, and KD rungs) and `--no-multi-fidelity` (every candidate that meets the
constraints gets its whole KD budget). Then reads each run folder:

- candidates/hour counting every candidate whose speed was measured (COMPLETE, and STOPPED / INFEASIBLE after the
  speed phase), over the search loop's wall time (timing.json);
- how many were fully distilled in their trial (every KD epoch of their budget run), how many stopped at the gate
  or at a rung, the KD epochs spent;
- the front's hypervolume (the report's fixed reference point) and the best speedup within 1 pp.

    python benchmarks/bench_fidelity.py --task digits-default --trials 12 --seeds 0 1 2 --timeout 3600
    python benchmarks/bench_fidelity.py --task digits-resnet18 --trials 12 --seeds 0 1 2 -- --model resnet18
    python benchmarks/bench_fidelity.py --task T --score-only    # re-score the runs in benchmarks/work/fidelity-T
    python benchmarks/bench_fidelity.py --task T --score-dirs benchmarks/work/A-s0 benchmarks/work/A-s1 ...
        # score finished run folders of any `autocompress run` (arm = the folder's name without -s<seed>)

Writes benchmarks/results/fidelity-<task>.csv (one row per run) and prints a markdown table with the median of
each arm over the seeds. It times things: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autocompress.config import RunSpec  # noqa: E402
from autocompress.records import TrialRecord, TrialStatus  # noqa: E402
from autocompress.results import front_hypervolume  # noqa: E402

ARMS = {"multi-fidelity": [], "flat": ["--no-multi-fidelity"]}


def score(run: Path, arm: str, seed: int) -> dict:
    meta = yaml.safe_load((run / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"])
    base = json.loads((run / "baseline.json").read_text())
    timing = json.loads((run / "timing.json").read_text())
    recs = [TrialRecord.from_dict(json.loads(x)) for x in (run / "trials.jsonl").read_text().splitlines() if x.strip()]
    df = pd.read_csv(run / "trials.csv")
    hours = timing["wall_s"] / 3600 if timing.get("wall_s") else float("nan")
    speed = [r for r in recs if r.metrics.speedup is not None]
    st = [dict(r.stage_times) for r in recs]
    # distilled for its whole KD budget in its own trial (then COMPLETE, or STOPPED by the last epoch's accuracy rule)
    distilled = [r for r, t in zip(recs, st) if "distill" in t and r.candidate.distill is not None
                 and len(r.kd_history) == r.candidate.distill.epochs]
    ok = df[(df["status"] == "COMPLETE") & (df["accuracy_drop"] <= 1.0)]
    return {
        "arm": arm, "sampler_seed": seed, "trials": len(recs), "search_s": round(timing.get("wall_s", 0.0), 1),
        "speed_measured": len(speed), "candidates_per_h": round(len(speed) / hours, 1) if hours else None,
        "fully_distilled": len(distilled),
        "fully_distilled_per_h": round(len(distilled) / hours, 1) if hours else None,
        "complete": sum(r.status == TrialStatus.COMPLETE for r in recs),
        "gate_stopped": sum(r.status == TrialStatus.STOPPED and r.stage == "gate" for r in recs),
        "gate_infeasible": sum(r.status == TrialStatus.INFEASIBLE and r.stage == "gate" for r in recs),
        "rung_stopped": sum(r.status == TrialStatus.STOPPED and "rung at epoch" in (r.message or "") for r in recs),
        "other_stopped": sum(r.status == TrialStatus.STOPPED and r.stage != "gate" and "rung at epoch" not in (r.message or "")
                             for r in recs),
        "failed": sum(r.status == TrialStatus.FAILED for r in recs),
        "kd_epochs_run": sum(len(r.kd_history) for r, t in zip(recs, st) if "distill" in t),
        "distill_s": round(sum(t.get("distill", 0.0) for t in st), 1),
        "latency_pre_s": round(sum(t.get("latency_pre", 0.0) for t in st), 1),
        "engine_overhead_pct": round(100 * timing["overhead_fraction"], 2) if timing.get("overhead_fraction") is not None else None,
        "hypervolume": round(front_hypervolume(df, list(spec.objectives), spec.constraints, base), 4),
        "best_speedup_1pp": round(float(ok["speedup"].max()), 2) if len(ok) else None,
        "model": spec.model, "space": spec.space, "run_dir": str(run),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-default", help="a name for this comparison (folder and results file)")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds (>= 3 for the figure)")
    ap.add_argument("--timeout", type=float, default=None, help="each run stops starting trials after this many seconds")
    ap.add_argument("--score-only", action="store_true")
    ap.add_argument("--score-dirs", type=Path, nargs="+", help="score these finished run folders instead (arm: the "
                    "folder's name without its -s<seed> suffix)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work", help="where the run folders go")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="where the CSV goes")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: more flags for `autocompress run` (model, data...)")
    a = ap.parse_args()
    flags = [x for x in a.rest if x != "--"]
    work = a.work / f"fidelity-{a.task}"
    if not a.score_dirs:  # scoring given folders writes nothing under work/
        work.mkdir(parents=True, exist_ok=True)
    rows = []
    for out in a.score_dirs or []:
        arm, _, seed = out.name.rpartition("-s")
        arm, seed = (arm, int(seed)) if seed.isdigit() else (out.name, 0)
        rows.append({"task": a.task, **score(out, arm, seed), "date": datetime.now().isoformat(timespec="seconds")})
    for s in ([] if a.score_dirs else a.seeds):
        for arm, arm_flags in ARMS.items():
            out = work / f"{arm}-s{s}"
            if not a.score_only and not (out / "trials.csv").is_file():
                cmd = [sys.executable, "-m", "autocompress.cli", "run", "--out", str(out), "--data", "digits",
                       "--space", "default", "--trials", str(a.trials), "--seed", "0", "--sampler-seed", str(s),
                       *(["--timeout", str(a.timeout)] if a.timeout else []), *arm_flags, *flags]
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            elif not a.score_only:
                print(f"{out} exists: kept (delete it to run again)", flush=True)
            if (out / "trials.csv").is_file():
                rows.append({"task": a.task, **score(out, arm, s), "load": round(os.getloadavg()[0], 2),
                             "date": datetime.now().isoformat(timespec="seconds")})
    if not rows:
        sys.exit(f"no finished run to score in {work}")
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"fidelity-{a.task}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    cols = ["arm", "sampler_seed", "trials", "search_s", "speed_measured", "candidates_per_h", "fully_distilled",
            "gate_stopped", "gate_infeasible", "rung_stopped", "kd_epochs_run", "engine_overhead_pct", "hypervolume",
            "best_speedup_1pp"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            med = {c: statistics.median(float(r[c]) for r in mine if r[c] is not None) if any(r[c] is not None for r in mine)
                   else None for c in ("candidates_per_h", "fully_distilled_per_h", "hypervolume", "best_speedup_1pp")}
            print(f"{arm}: median over {len(mine)} seed(s): " + ", ".join(f"{k} {v:g}" if v is not None else f"{k} -"
                                                                       for k, v in med.items()))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
