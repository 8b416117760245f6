"""Search-level figures: wall time, candidates/hour, stage breakdown, engine overhead, the front.

Runs the real CLI in a subprocess (teacher from the cache when present; its source is reported), then
reads the run folder. Examples:

    python benchmarks/bench_search.py --tag oneclick                       # `autocompress run`, no flags
    python benchmarks/bench_search.py --tag reference -- --model resnet18 --profile cpu
    python benchmarks/bench_search.py --tag es-off -- --model resnet18 --no-early-stop

Appends one row to benchmarks/results/search.csv and prints it as a markdown table row.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autocompress.config import RunSpec  # noqa: E402
from autocompress.results import front_hypervolume  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", default=None, help="run folder (default benchmarks/work/<tag>-<time>)")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="after --: flags for `autocompress run`")
    a = ap.parse_args()
    flags = [x for x in a.rest if x != "--"]
    out = Path(a.out or ROOT / "benchmarks" / "work" / f"{a.tag}-{datetime.now():%Y%m%d-%H%M%S}")
    load0 = os.getloadavg()[0]
    t0 = time.time()
    cmd = [sys.executable, "-m", "autocompress.cli", "run", "--out", str(out), *flags]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd).returncode
    wall = time.time() - t0
    if rc != 0:
        sys.exit(f"run failed with exit code {rc}")

    meta = __import__("yaml").safe_load((out / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"])
    base = json.loads((out / "baseline.json").read_text())
    timing = json.loads((out / "timing.json").read_text())
    df = pd.read_csv(out / "trials.csv")
    recs = [json.loads(l) for l in (out / "trials.jsonl").read_text().splitlines() if l.strip()]
    stages: dict[str, list[float]] = {}
    for r in recs:
        for k, v in (r.get("stage_times") or {}).items():
            stages.setdefault(k, []).append(v)
    done = df[df["status"] == "COMPLETE"]
    ok = done[done["accuracy_drop"] <= 1.0]
    hv = front_hypervolume(df, list(spec.objectives), spec.constraints, base)
    row = {
        "tag": a.tag, "date": datetime.now().isoformat(timespec="seconds"), "model": spec.model, "space": spec.space,
        "profile": spec.profile, "trials": len(df), "teacher": base.get("teacher_source"),
        "wall_s": round(wall, 1), "search_s": round(timing["wall_s"], 1),
        "candidates_per_h": round(3600 * timing["trials"] / timing["wall_s"], 1) if timing["wall_s"] else None,
        "engine_overhead": round(timing["overhead_fraction"], 4),
        "complete": int((df["status"] == "COMPLETE").sum()), "stopped": int((df["status"] == "STOPPED").sum()),
        "failed": int((df["status"] == "FAILED").sum()),
        "baseline_acc": round(base["accuracy"], 4), "baseline_ms": round(base["latency_ms"], 3), "baseline_mb": round(base["size_mb"], 2),
        "best_speedup_1pp": round(float(ok["speedup"].max()), 2) if len(ok) else None,
        "best_size_ratio_1pp": round(base["size_mb"] / float(ok["size_mb"].min()), 1) if len(ok) else None,
        "hypervolume": round(hv, 4),
        **{f"stage_{k}_s": round(sum(v) / len(v), 2) for k, v in sorted(stages.items()) if k != "student_cached"},
        "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2), "run_dir": str(out),
    }
    path = ROOT / "benchmarks" / "results" / "search.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    rows.append({k: "" if v is None else v for k, v in row.items()})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
