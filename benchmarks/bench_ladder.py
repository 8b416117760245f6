"""Does the search beat the best uniform setting? (issue 15, goal 1)

Given a finished run (RUN, e.g. the one-click default), this runs the uniform ladder through the same product on
the same teacher (the run's model, data, seed and profile; the teacher comes from the cache): every layer pruned
50/60/70/80/90%, int8 (``--bits fp32``: fp32, the fair ladder on a CPU where int8 does not pay), the longest KD of
the run's space, each distilled for its whole budget (no early stop, no gate or rungs, no finishing). Then the
run's models within the accuracy bound and every ladder model within it are re-timed side by side against the
run's baseline with the product's re-timing (fresh processes, more windows where they disagree) and the goal is
checked on those figures: the run's fastest within 1 pp is >= 1.2x faster than the ladder's fastest within 1 pp.
The ratio is also taken window by window (both timed in the same process).

    python benchmarks/bench_ladder.py RUN --tag oneclick [--windows 3] [--bound 1.0] [--profile cpu-1thread] \
        [--bits fp32]

Writes benchmarks/results/ladder-<tag>.json and prints a markdown table. The ladder run goes to RUN-ladder
(RUN-ladder-fp32 with ``--bits fp32``; reused when it exists). Times things: run it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)


def ladder_space(space_name: str, bits: str = "int8") -> dict:
    """The run's space narrowed to the uniform ladder in ``bits`` with its longest KD (the recipe's other knobs: the
    first value of each list, as the space's own seeds take them)."""
    from autocompress.config import find_named, read_yaml

    s = read_yaml(find_named(space_name, "search_spaces", "search space"))
    epochs = max(s["distill"]["epochs"]) if isinstance(s["distill"]["epochs"], list) else s["distill"]["epochs"]
    first = {k: (v[0] if isinstance(v, list) else v) for k, v in s["distill"].items()}
    return {"kind": "search_space", "name": "uniform-ladder",
            "description": f"every layer pruned 50-90% + {bits}, the longest KD (bench_ladder.py)",
            "student": {"kind": ["pruned"]},
            "sparsity": {"granularity": "uniform", "range": {"low": 0.5, "high": 0.9, "step": 0.1},
                         "criterion": [s["sparsity"]["criterion"][0] if isinstance(s["sparsity"]["criterion"], list)
                                       else s["sparsity"]["criterion"]]},
            "bits": {"granularity": "uniform", "choices": [bits], "keep_fp32": [0]},
            "quantization": s.get("quantization", {}),
            "distill": {**first, "epochs": [epochs]},
            "sensitivity": {"enabled": False},
            "seeds": [{"sparsity": r, "bits": bits, "epochs": epochs} for r in RATIOS]}


def run_ladder(run_dir: Path, out: Path, bits: str = "int8") -> None:
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    spec = dict(meta["spec"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.yaml").write_text(yaml.safe_dump(ladder_space(spec["space"], bits), sort_keys=False))
    for k in ("storage", "study", "timeout", "sampler_seed"):
        spec.pop(k, None)
    spec.update(space=str(out / "ladder.yaml"), trials=len(RATIOS), out=str(out / "run"), early_stop=False,
                multi_fidelity=False, finish=False, retime_windows=0)
    (out / "run-spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "autocompress.cli", "run", "-c", str(out / "run-spec.yaml")]
    print("ladder run:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)  # from here, as the run was started: its model and data paths may be relative


def within(run_dir: Path, bound: float) -> pd.DataFrame:
    df = pd.read_csv(run_dir / "trials.csv")
    ok = df[(df["status"] == "COMPLETE") & (df["accuracy_drop"] <= bound) & df["model"].notna()]
    return ok[[(run_dir / m).is_file() for m in ok["model"]]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--tag", default="")
    ap.add_argument("--windows", type=int, default=3, help="re-timing windows (more where they disagree)")
    ap.add_argument("--bound", type=float, default=1.0, help="accuracy drop allowed, pp")
    ap.add_argument("--profile", default=None, help="re-time under this profile instead of the run's (e.g. cpu-1thread, "
                    "whose figures repeat better); the ladder run is reused")
    ap.add_argument("--bits", choices=["int8", "fp32"], default="int8", help="the ladder's precision (default int8)")
    a = ap.parse_args()

    from autocompress.config import load_profile
    from autocompress.measure.hardware import fingerprint, input_shape_for
    from autocompress.measure.retime import retime

    run_dir = a.run_dir.resolve()
    lad = run_dir.with_name(run_dir.name + "-ladder" + ("" if a.bits == "int8" else f"-{a.bits}"))
    if not (lad / "run" / "trials.csv").is_file():
        run_ladder(run_dir, lad, a.bits)
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    ours, ladder = within(run_dir, a.bound), within(lad / "run", a.bound)
    lad_all = pd.read_csv(lad / "run" / "trials.csv")
    targets = {f"run trial {int(r.number)}": run_dir / r.model for r in ours.itertuples()}
    targets.update({f"ladder {r.seed}": lad / "run" / r.model for r in ladder.itertuples()})
    if ours.empty:
        print(f"nothing to compare within {a.bound} pp: the run has no model within it (ladder {len(ladder)})")
        return
    ref = run_dir / "models" / "int8_reference.onnx"  # the simplest rival, timed in the same windows
    if ref.is_file():
        targets["int8 alone"] = ref
    profile, _ = load_profile(a.profile or meta["spec"]["profile"])
    shape = input_shape_for(profile, tuple(meta["data"]["input_shape"]))
    res = retime(targets, run_dir / "models" / "baseline.onnx", profile, shape, windows=a.windows,
                 seed=int(meta["spec"].get("seed", 0)), log=print)
    acc = {f"run trial {int(r.number)}": (r.accuracy_drop, r.seed if isinstance(r.seed, str) else "searched")
           for r in ours.itertuples()}
    acc.update({f"ladder {r.seed}": (r.accuracy_drop, "ladder") for r in ladder.itertuples()})
    ref_rec = json.loads((run_dir / "baseline.json").read_text()).get("int8_reference") or {}
    acc["int8 alone"] = (float(ref_rec.get("accuracy_drop") or 0.0), "reference")
    rows = [{"model": k, "drop_pp": round(float(acc[k][0]), 2), "origin": acc[k][1], "speedup": r.speedup,
             "windows": list(r.speedups), "cv": r.cv} for k, r in res.items()]
    best_run = max((r for r in rows if r["model"].startswith("run")), key=lambda r: r["speedup"], default=None)
    best_lad = max((r for r in rows if r["model"].startswith("ladder")), key=lambda r: r["speedup"], default=None)
    ratio = per_window = None
    if best_run and best_lad:
        ratio = best_run["speedup"] / best_lad["speedup"]
        n = min(len(best_run["windows"]), len(best_lad["windows"]))  # the same processes timed both
        per_window = [x / y for x, y in zip(best_run["windows"][:n], best_lad["windows"][:n])]
    print("\n| model | origin | drop (pp) | re-timed speedup | windows | CV |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["speedup"]):
        print(f"| {r['model']} | {r['origin']} | {r['drop_pp']:+.2f} | {r['speedup']:.2f}x | "
              f"{', '.join(f'{v:.2f}' for v in r['windows'])} | {100 * r['cv']:.1f}% |")
    print("\nladder (all five, as the ladder run measured them): " + "; ".join(
        f"{r.seed}: {r.status} drop {r.accuracy_drop:+.2f} pp {r.speedup:.2f}x" if r.status == "COMPLETE"
        else f"{r.seed}: {r.status}" for r in lad_all.itertuples()))
    if ratio:
        print(f"\nrun's fastest within {a.bound} pp ({best_run['model']}, {best_run['origin']}) / ladder's fastest "
              f"({best_lad['model']}): {ratio:.2f}x (per window {', '.join(f'{v:.2f}' for v in per_window)}); "
              f"goal >= 1.2x: {'met' if ratio >= 1.2 else 'missed'}")
    elif best_run:
        print(f"\nthe ladder has no model within {a.bound} pp: the run's fastest within it ({best_run['model']}) "
              f"{best_run['speedup']:.2f}x stands alone (int8 alone beside it); goal >= 1.2x: met")
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / f"ladder{'-' + a.tag if a.tag else ''}.json"
    dest.write_text(json.dumps({"run": str(run_dir), "ladder": str(lad / "run"), "bound_pp": a.bound,
                                "profile": profile.name, "ladder_bits": a.bits,
                                "rows": rows, "ratio": ratio, "ratio_per_window": per_window,
                                "ladder_trials": lad_all[["number", "status", "seed", "accuracy_drop", "speedup"]]
                                .to_dict("records"), "machine": fingerprint()}, indent=2, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
