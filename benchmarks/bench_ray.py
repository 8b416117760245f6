"""Throughput of ``--backend ray`` with 1 and 2 trials in flight, and the per-trial overhead Ray adds.

    python benchmarks/bench_ray.py [--trials 6] [--workers 1 2] [--epochs 2] [--no-optuna]

The same tiny search each time (the tiny CNN of the tests on digits 16x16, uniform sparsity 0.125-0.75
x fp32/int8, 2 KD epochs, the fast latency profile of the tests), a fixed budget, a fresh run folder and
a local Ray started by the engine. The teacher is trained once and cached under benchmarks/work/.
An in-process ``--backend optuna`` run of the same budget is the reference (no Ray at all).

Per run: end-to-end wall time (Ray start, baseline, search, report), search wall time (first trial
submitted -> last trial told), trials/hour over the search, and from ``placement.jsonl`` per trial:
``run_trial_s`` (the pipeline itself), ``wall_s`` (driver: submit -> result), ``queue_s`` (submit -> task
starts on a worker), and overhead = wall_s - run_trial_s (queueing, worker start on a cold process,
context rebuild, shipping the ONNX bytes back), split into cold (first task of a worker process) and warm.

On paper: with per-trial compute T and warm overhead o, N workers give at most N * T / (T + o) times the
throughput of one in-process worker, as long as the driver's serial part per trial d (ask, sample, write,
tell) stays below (T + o) / N; efficiency = T / (T + o) (goal >= 0.8). Writes benchmarks/results/ray.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "ray"
OUT = HERE / "results" / "ray.csv"
sys.path.insert(0, str(HERE.parent / "tests"))


def workspace(epochs: int) -> Path:
    from conftest import TINY_CNN_SOURCE

    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "models.py").write_text(TINY_CNN_SOURCE)
    (WORK / "space.yaml").write_text(yaml.safe_dump({
        "kind": "search_space", "name": "bench-tiny",
        "sparsity": {"granularity": "uniform", "range": {"low": 0.125, "high": 0.75, "step": 0.125}, "criterion": ["l1"]},
        "bits": {"choices": ["fp32", "int8"]},
        "distill": {"epochs": epochs, "lr": 0.05},
    }))
    (WORK / "profile.yaml").write_text(yaml.safe_dump({
        "kind": "hardware_profile", "name": "tiny-cpu", "intra_op_threads": 1, "precisions": ["fp32", "int8"],
        "int8_format": "qdq", "int8_types": "u8s8",
        "latency": {"warmup": 2, "min_rounds": 3, "max_rounds": 6, "time_cap_s": 1.0, "block_ms": 5},
    }))
    (WORK / "cache").mkdir(exist_ok=True)
    return WORK


def one_run(ws: Path, backend: str, workers: int, trials: int, tag: str) -> dict:
    import shutil

    from autocompress.config import RunSpec
    from autocompress.engine import run
    from autocompress.search.ray_backend import read_placement

    out = ws / "runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    spec = RunSpec(model=f"{ws / 'models.py'}:tiny_cnn", data="digits", image_size=16, space=str(ws / "space.yaml"),
                   profile=str(ws / "profile.yaml"), trials=trials, out=str(out), seed=0, backend=backend,
                   workers=workers, constraints={"max_accuracy_drop": 60})
    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        now = time.time()
        if msg.startswith("trial ") and "first_submit" not in marks:
            marks["first_submit"] = now
        if msg.startswith("[") and "] trial " in msg:
            marks["last_told"] = now
        print(msg, flush=True)

    load = os.getloadavg()[0]
    t0 = time.time()
    res = run(spec, log=log)
    total = time.time() - t0
    search = marks["last_told"] - marks["first_submit"]
    recs = res.records
    row = {"config": tag, "backend": backend, "workers": workers, "trials": len(recs),
           "complete": sum(r.status.value == "COMPLETE" for r in recs), "load_1min_start": round(load, 2),
           "end_to_end_s": round(total, 1), "search_s": round(search, 1),
           "trials_per_hour": round(len(recs) / search * 3600, 1),
           "mean_trial_s": round(statistics.mean(r.duration_s for r in recs), 2)}
    rows = read_placement(out)
    if rows:
        seen: set[str] = set()
        cold, warm = [], []
        for r in rows:  # rows in completion order; the first task of each worker process is cold
            over = r["wall_s"] - r["run_trial_s"]
            (warm if r["worker"] in seen else cold).append(over)
            seen.add(r["worker"])
        row.update(
            mean_run_trial_s=round(statistics.mean(r["run_trial_s"] for r in rows), 2),
            overhead_cold_s=round(statistics.mean(cold), 3) if cold else None,
            overhead_warm_s=round(statistics.median(warm), 3) if warm else None,
            queue_median_s=round(statistics.median(r["queue_s"] for r in rows), 3),
            driver_median_s=round(statistics.median(r["driver_s"] for r in rows), 3),
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-optuna", action="store_true", help="skip the in-process reference run")
    args = ap.parse_args()

    ws = workspace(args.epochs)
    os.environ["AUTOCOMPRESS_CACHE"] = str(ws / "cache")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray_tmp = tempfile.mkdtemp(prefix="acb", dir="/tmp")  # short: unix socket paths
    os.environ["RAY_TMPDIR"] = ray_tmp
    rows = []
    try:
        if not args.no_optuna:
            rows.append(one_run(ws, "optuna", 1, args.trials, "optuna-1"))
        for n in args.workers:
            rows.append(one_run(ws, "ray", n, args.trials, f"ray-{n}"))
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)

    ref = next((r for r in rows if r["config"] == "ray-1"), None)
    for r in rows:
        r["speedup_vs_ray1"] = round(r["trials_per_hour"] / ref["trials_per_hour"], 2) if ref else None
        if r.get("mean_run_trial_s") and r.get("overhead_warm_s") is not None:
            t, o = r["mean_run_trial_s"], r["overhead_warm_s"]
            r["efficiency_on_paper"] = round(t / (t + o), 3)  # expected N-worker scaling = N * this
    keys = list(dict.fromkeys(k for r in rows for k in r))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(json.dumps(rows, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
