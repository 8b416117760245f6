"""The same recipe run twice: do the two runs report speedups within their stated uncertainty of each other?

Runs ``autocompress run`` twice with the same arguments and seed into two run folders (one after the other),
then compares, model by model (the same trial numbers run the same candidates), the speedups each run reports
after its final re-timing (``retime.json``: median over ``retime_windows`` fresh processes, with its range).
Two figures agree when their ranges overlap. Writes benchmarks/results/same-recipe-<tag>.json.

    python benchmarks/bench_same_recipe.py --tag resnet20 -- --model resnet.py:resnet20 --checkpoint resnet20.th \\
        --data /tmp/cifarish --space recipe.yaml --trials 3 --no-finish

Goal (issue 14): the two runs' speedups within the stated uncertainty of each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path("results"), help="folder for the two run folders")
    ap.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of `autocompress run`")
    a = ap.parse_args()
    args = [x for x in a.run_args if x != "--"]
    if "--seed" not in args:
        args += ["--seed", "0"]

    from autocompress.measure.hardware import fingerprint

    runs = []
    for i in (1, 2):
        out = a.out / f"same-recipe{'-' + a.tag if a.tag else ''}-{i}-{time.strftime('%H%M%S')}"
        t0 = time.time()
        subprocess.run([str(Path(sys.executable).parent / "autocompress"), "run", *args, "--out", str(out)], check=True)
        runs.append({"dir": str(out), "seconds": round(time.time() - t0, 1),
                     "models": json.loads((out / "retime.json").read_text())["models"]})
    a_m, b_m = runs[0]["models"], runs[1]["models"]
    rows = []
    for label in sorted(set(a_m) & set(b_m)):
        x, y = a_m[label], b_m[label]
        overlap = max(x["spread"][0], y["spread"][0]) <= min(x["spread"][1], y["spread"][1])
        rows.append({"model": label, "run1": x["speedup"], "run1_range": x["spread"], "run2": y["speedup"],
                     "run2_range": y["spread"], "diff_pct": 100 * (y["speedup"] / x["speedup"] - 1), "agree": overlap})
    print(f"{'model':14s} {'run 1 (range)':>22s} {'run 2 (range)':>22s} {'diff':>7s} agree")
    for r in rows:
        print(f"{r['model']:14s} {r['run1']:6.2f}x ({r['run1_range'][0]:.2f}-{r['run1_range'][1]:.2f})    "
              f"{r['run2']:6.2f}x ({r['run2_range'][0]:.2f}-{r['run2_range'][1]:.2f}) {r['diff_pct']:+6.1f}% "
              f"{'yes' if r['agree'] else 'NO'}")
    only = sorted(set(a_m) ^ set(b_m))
    if only:
        print(f"on one run's front only: {', '.join(only)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"same-recipe{'-' + a.tag if a.tag else ''}.json"
    out.write_text(json.dumps({"args": args, "fingerprint": fingerprint(), "runs": runs, "rows": rows,
                               "one_run_only": only}, indent=2))
    print(f"{sum(r['agree'] for r in rows)} of {len(rows)} models agree; wrote {out}")


if __name__ == "__main__":
    main()
