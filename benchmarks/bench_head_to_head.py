"""Is a close call between two candidates better decided head to head than through the baseline?

The gate (search/scheduler.py) compares a new candidate's speedup with a finished peer's: two ratios to the fp32
baseline taken in two windows, minutes apart. With the 2-thread `cpu` profile such a ratio moves +-10-15% with time
(benchmarks/README.md, bench_latency_repeatability.py), so a mutation that is faster than its parent can measure
slower and be stopped. This script times pairs of a finished run's models both ways, ``--reps`` times, spaced by
``--gap-s`` seconds:

- through the baseline (what the gate does): A vs baseline in one window, B vs baseline in another, ratio sA / sB;
- head to head: A vs B interleaved in one window (``measure_latency(A, baseline_path=B)``), ratio tB / tA.

Both estimate how much faster A is than B. Per pair it prints the median and the CV over the repetitions of each,
and how often each one's verdict "A at least 5% faster than B" disagrees with its own majority. Writes
benchmarks/results/head-to-head-<tag>.json.

    python benchmarks/bench_head_to_head.py RUN_DIR --profile cpu --reps 6 --tag cnn
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cv(v: list[float]) -> float:
    return statistics.pstdev(v) / statistics.mean(v) if len(v) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--gap-s", type=float, default=10.0, help="seconds between the two through-baseline windows")
    ap.add_argument("--pairs", type=int, default=4, help="pairs of neighbours by speedup among COMPLETE trials")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    import pandas as pd
    import yaml

    from autocompress.config import load_profile
    from autocompress.measure.hardware import fingerprint, input_shape_for
    from autocompress.measure.latency import measure_latency

    run = a.run_dir.resolve()
    meta = yaml.safe_load((run / "run.yaml").read_text())
    prof, _ = load_profile(a.profile)
    shape = input_shape_for(prof, tuple(meta["data"]["input_shape"]))
    base = run / "models" / "baseline.onnx"
    df = pd.read_csv(run / "trials.csv")
    done = df[(df["status"] == "COMPLETE")].sort_values("speedup", ascending=False)
    models = [(int(n), run / "trials" / f"{int(n):05d}" / "model.onnx") for n in done["number"]]
    models = [(n, p) for n, p in models if p.is_file()]
    pairs = [(models[i], models[i + 1]) for i in range(min(a.pairs, len(models) - 1))]
    if not pairs:
        raise SystemExit(f"{run}: fewer than two COMPLETE trials with a model.onnx in trials/")
    res = {f"{x[0]}/{y[0]}": {"via_baseline": [], "head_to_head": []} for x, y in pairs}
    t0 = time.time()
    for rep in range(a.reps):
        for (na, pa), (nb, pb) in pairs:
            k = f"{na}/{nb}"
            sa = measure_latency(pa, prof, shape, baseline_path=base, seed=rep).speedup
            time.sleep(a.gap_s)
            sb = measure_latency(pb, prof, shape, baseline_path=base, seed=rep).speedup
            h = measure_latency(pa, prof, shape, baseline_path=pb, seed=rep).speedup
            res[k]["via_baseline"].append(sa / sb)
            res[k]["head_to_head"].append(h)
            print(f"[{(time.time() - t0) / 60:5.1f} min] rep {rep + 1}/{a.reps} trial {na} vs {nb}: "
                  f"via baseline {sa / sb:.3f} ({sa:.2f}x / {sb:.2f}x), head to head {h:.3f}", flush=True)
    print("\n| pair (A/B) | via baseline: median (CV) | head to head: median (CV) | verdict flips via / h2h |")
    print("|---|---|---|---|")
    out = {"run": str(run), "profile": a.profile, "reps": a.reps, "gap_s": a.gap_s, "machine": fingerprint(),
           "minutes": round((time.time() - t0) / 60, 1), "pairs": {}}
    for k, r in res.items():
        row = {}
        for how, v in r.items():
            faster = [x >= 1.05 for x in v]
            flips = min(sum(faster), len(v) - sum(faster))
            row[how] = {"values": [round(x, 4) for x in v], "median": round(statistics.median(v), 4),
                        "cv": round(_cv(v), 4), "verdict_flips": flips}
        out["pairs"][k] = row
        vb, hh = row["via_baseline"], row["head_to_head"]
        print(f"| {k} | {vb['median']:.3f} ({vb['cv']:.1%}) | {hh['median']:.3f} ({hh['cv']:.1%}) | "
              f"{vb['verdict_flips']} / {hh['verdict_flips']} of {a.reps} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"head-to-head-{a.tag or run.name}-{a.profile}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
