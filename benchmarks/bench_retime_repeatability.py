"""Do a run's speedups hold? Re-time its front and reference points in fresh processes spread over time.

For each profile given (default: cpu and cpu-1thread), the run's front models, int8 alone and its seeds are timed
against the run's baseline, interleaved, with the product's own re-timing (``autocompress.measure.retime``), in
``--windows`` fresh processes spaced so the whole pass spans ``--span-min`` minutes (the profiles alternate inside
each slot, so both see the same stretch of time). Writes benchmarks/results/retime-repeatability-<tag>.json and
prints, per profile and model, the per-window speedups, their CV and how many windows were flagged disturbed.

With ``--pass-windows N`` (N >= 2) every slot runs the product's whole final pass instead of one window: N fresh
processes, more for a model whose windows disagree, and the median the report shows. The CV across the slots is
then the repeatability of the figure a user reads; the CV across every single window is printed beside it.

    python benchmarks/bench_retime_repeatability.py RUN_DIR [--windows 5] [--span-min 30] [--profiles cpu cpu-1thread]
    python benchmarks/bench_retime_repeatability.py RUN_DIR --windows 5 --pass-windows 3 --tag product

Goal (issue 14): CV <= 5% across 5 fresh processes spanning >= 30 minutes, for both CPU profiles.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--span-min", type=float, default=30.0)
    ap.add_argument("--profiles", nargs="+", default=["cpu", "cpu-1thread"])
    ap.add_argument("--pass-windows", type=int, default=1,
                    help="windows per slot: 1 = one fresh process; >= 2 = the product's final pass (its median)")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    import pandas as pd
    import yaml

    from autocompress.config import load_profile
    from autocompress.measure.hardware import fingerprint, input_shape_for
    from autocompress.measure.retime import retime, summarise
    from autocompress.retiming import _targets

    run_dir = a.run_dir.resolve()
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    front, df = pd.read_csv(run_dir / "pareto.csv"), pd.read_csv(run_dir / "trials.csv")
    targets = _targets(run_dir, front, df)
    base = run_dir / "models" / "baseline.onnx"
    slot_s = a.span_min * 60 / max(1, a.windows - 1) if a.windows > 1 else 0.0
    per: dict[str, dict[str, list]] = {p: {k: [] for k in targets} for p in a.profiles}
    dist: dict[str, dict[str, list]] = {p: {k: [] for k in targets} for p in a.profiles}
    every: dict[str, dict[str, list]] = {p: {k: [] for k in targets} for p in a.profiles}  # every single window
    t0 = time.time()
    for w in range(a.windows):
        start = t0 + w * slot_s
        if time.time() < start:
            time.sleep(start - time.time())
        for p in a.profiles:
            prof, _ = load_profile(p)
            shape = input_shape_for(prof, tuple(meta["data"]["input_shape"]))
            res = retime(targets, base, prof, shape, windows=a.pass_windows, seed=int(meta["spec"].get("seed", 0)))
            for k, r in res.items():
                per[p][k].append(r.speedups[0] if a.pass_windows == 1 else r.speedup)
                dist[p][k].append(r.disturbed[0] if a.pass_windows == 1 else False)
                every[p][k].extend(r.speedups)
            print(f"[{(time.time() - t0) / 60:5.1f} min] slot {w + 1}/{a.windows} {p}: "
                  + ", ".join(f"{k} {per[p][k][-1]:.2f}x{'*' if dist[p][k][-1] else ''}"
                              + (f" ({len(r.speedups)} windows)" if a.pass_windows > 1 else "") for k, r in res.items()),
                  flush=True)
    out = {"run": str(run_dir), "windows": a.windows, "pass_windows": a.pass_windows, "span_min": round((time.time() - t0) / 60, 1),
           "machine": fingerprint(), "profiles": {}}
    for p in a.profiles:
        out["profiles"][p] = {}
        for k in targets:
            all_windows = summarise(k, str(targets[k]), per[p][k], [False] * len(per[p][k]))
            used = summarise(k, str(targets[k]), per[p][k], dist[p][k])
            single = summarise(k, str(targets[k]), every[p][k], [False] * len(every[p][k]))
            out["profiles"][p][k] = {"speedups": per[p][k], "disturbed": dist[p][k], "cv_all": all_windows.cv,
                                     "cv_undisturbed": used.cv, "median": used.speedup, "single_windows": every[p][k],
                                     "cv_single_windows": single.cv}
            print(f"{p:12s} {k:12s} median {used.speedup:.2f}x  CV all {100 * all_windows.cv:.1f}%  "
                  f"CV undisturbed {100 * used.cv:.1f}% ({used.used} of {len(per[p][k])} slots)"
                  + (f"  single windows: CV {100 * single.cv:.1f}% over {len(every[p][k])}" if a.pass_windows > 1 else ""))
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / f"retime-repeatability{'-' + a.tag if a.tag else ''}.json"
    dest.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
