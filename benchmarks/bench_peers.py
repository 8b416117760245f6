"""autocompress against the peers a user would try first, measured side by side in one process.

Given a finished autocompress run (and optionally a random-search run of the same task), this script
re-measures every front model and builds and measures each peer on the same teacher, data split and
hardware profile, all in this one process, each latency interleaved with the fp32 baseline:

  autocompress  the run's Pareto front (the one-click default search)
  random        the front of a random-search run with the same trial budget (--random DIR)
  ort-dynamic   onnxruntime.quantization.quantize_dynamic on the fp32 model (ORT's defaults)
  ort-static    onnxruntime static int8 alone: quant_pre_process + quantize_static, QDQ U8S8, per-channel
  nncf          nncf.quantize on the ONNX model with its defaults (if nncf is installed: pip install -e .[bench])
  uniform50     Torch-Pruning 50% channels everywhere (l1) + the same KD recipe, fp32 and int8
  uniform80     the hand-picked uniform setting: 80% channels + KD + int8

    python benchmarks/bench_peers.py --task digits-resnet18 --run benchmarks/work/digits-resnet18/autocompress \
        [--random benchmarks/work/digits-resnet18/random] [--kd-epochs 8]

Appends to benchmarks/results/peers.csv, writes benchmarks/results/peers-<task>.png (the front with the peers
as points) and prints a markdown table with the goal check: at equal or better accuracy, how many times
faster the best autocompress front model is than each peer.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autocompress.config import RunSpec  # noqa: E402
from autocompress.engine import prepare  # noqa: E402
from autocompress.measure.accuracy import evaluate_onnx  # noqa: E402
from autocompress.measure.cost import file_size_mb  # noqa: E402
from autocompress.measure import hardware  # noqa: E402
from autocompress.measure.hardware import input_shape_for  # noqa: E402
from autocompress.measure.latency import measure_latency  # noqa: E402
from autocompress.records import Candidate, DistillSpec, QuantSpec  # noqa: E402
from autocompress.results import pareto_front  # noqa: E402
from autocompress.trial import run_trial  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """The machine and stack every row is recorded with: the product's fingerprint plus the peers' versions."""
    from importlib.metadata import PackageNotFoundError, version

    fp = hardware.fingerprint()
    vers = {}
    for dist in ("onnxruntime", "torch", "torchvision", "onnx", "optuna", "torch-pruning", "nncf"):
        try:
            vers[dist] = version(dist)
        except PackageNotFoundError:
            vers[dist] = "-"
    return {"cpu": fp["cpu"], "cpu_flags": ",".join(fp["cpu_flags"]), "cores": fp["cores"],
            "versions": " ".join(f"{k}={v}" for k, v in vers.items())}


class Calib:
    """ORT CalibrationDataReader over the calibration split (one sample per batch, as the profile runs)."""

    def __init__(self, x: np.ndarray, name: str):
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def ort_dynamic(base: Path, out: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(base), str(out))  # ORT's defaults, as a user calls it first
    return out


def ort_static(base: Path, out: Path, x_calib: np.ndarray) -> Path:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(base), str(pre))
    name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    quantize_static(str(pre), str(out), Calib(x_calib, name), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def nncf_ptq(base: Path, out: Path, x_calib: np.ndarray) -> Path:
    import nncf
    import onnx

    model = onnx.load(str(base))
    name = model.graph.input[0].name
    ds = nncf.Dataset([x_calib[i:i + 1] for i in range(len(x_calib))], lambda a: {name: a})
    q = nncf.quantize(model, ds, subset_size=len(x_calib))  # defaults, as its docs show
    onnx.save(q, str(out))
    return out


def kd_peer(prep, number: int, sparsity: float, bits: str, epochs: int) -> Path:
    space = prep.space
    d = space.distill
    cand = Candidate.make(sparsity={"_default": sparsity}, criterion="l1", bits={"_default": bits},
                          quant=QuantSpec(mode="static", format="qdq", types="u8s8", per_channel=True),
                          distill=DistillSpec(epochs=epochs, lr=float(d.lr), temperature=float(d.temperature),
                                              alpha=float(d.alpha)))
    rec = run_trial(number, cand, replace(prep.ctx, early_stopper=None))  # a peer runs its whole KD budget
    if rec.status.name != "COMPLETE":
        raise RuntimeError(f"peer {sparsity}/{bits} ended {rec.status.name}: {rec.stage}: {rec.message}")
    return prep.ctx.run_dir / rec.artifact


def front_models(run_dir: Path, first: int | None = None) -> pd.DataFrame:
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"])
    df = pd.read_csv(run_dir / "trials.csv")
    if first is not None:
        df = df[df["number"] < first]
    front = pareto_front(df, list(spec.objectives), spec.constraints)
    return front[front["model"].notna()]


def dominance(rows: list[dict]) -> list[dict]:
    """For each non-autocompress row: the best autocompress front speedup at >= its accuracy, and whether a
    front model dominates it (accuracy >=, speedup >=, size <=)."""
    ours = [r for r in rows if r["method"] == "autocompress"]
    for r in rows:
        if r["method"] in ("autocompress", "baseline"):
            continue
        better = [o for o in ours if o["accuracy"] >= r["accuracy"]]
        best = max(better, key=lambda o: o["speedup"], default=None)
        r["ac_speedup_at_acc"] = round(best["speedup"], 3) if best else ""
        r["ac_vs_peer"] = round(best["speedup"] / r["speedup"], 2) if best else ""
        r["dominated"] = any(o["accuracy"] >= r["accuracy"] and o["speedup"] >= r["speedup"] and o["size_mb"] <= r["size_mb"]
                             for o in ours)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["method", "detail", "accuracy", "drop_pp", "speedup", "speedup_ci", "size_mb", "size_ratio", "ac_vs_peer", "dominated"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


def summarize(rows: list[dict], max_drop: float | None) -> None:
    """The goal line: among peers that meet the run's accuracy constraint (a peer outside it is not a model
    the user asked for), how many times faster the best front model at equal or better accuracy is."""
    peers = [r for r in rows if r["method"] not in ("autocompress", "baseline", "random")]
    ok = [r for r in peers if max_drop is None or r["drop_pp"] <= max_drop]
    out = [r for r in peers if r not in ok]
    ratios = [(r["ac_vs_peer"], r["method"] + " " + r["detail"]) for r in ok if r.get("ac_vs_peer") != ""]
    worst = min(ratios, default=None)
    unmatched = [r["method"] + " " + r["detail"] for r in ok if r.get("ac_vs_peer") == ""]  # more accurate than the whole front
    met = bool(worst) and worst[0] >= 2 and not unmatched
    print(f"goal (front >= 2x faster than every peer, at equal or better accuracy, among peers within the "
          f"{max_drop} pp constraint): worst ratio {worst[0] if worst else 'n/a'}"
          f"{f' (vs {worst[1]})' if worst else ''} -> {'met' if met else 'MISSED'}; "
          f"no front model as accurate: {unmatched or 'none'}; "
          f"dominated {sum(bool(r['dominated']) for r in ok)}/{len(ok)}; outside the constraint: "
          f"{[r['method'] + ' ' + r['detail'] + ' (' + str(r['drop_pp']) + ' pp)' for r in out] or 'none'}")


def plot(rows: list[dict], task: str, path: Path, max_drop: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=90)
    styles = {"autocompress": ("o", "C0"), "random": ("s", "C7"), "baseline": ("*", "k")}
    marks = iter(["^", "v", "D", "P", "X", "<", ">", "h"])
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["speedup"])
        m, c = styles.get(method, (next(marks), None))
        xs = [r["speedup"] for r in pts]
        ys = [100 * r["accuracy"] for r in pts]
        label = f"{method} front" if method in ("autocompress", "random") else method
        ax.plot(xs, ys, m, color=c, markersize=9 if method in ("baseline", "autocompress") else 7, label=label,
                linestyle="none", alpha=0.95 if method != "random" else 0.6)
    base = next((r for r in rows if r["method"] == "baseline"), None)
    if base is not None and max_drop is not None:
        ax.axhline(100 * base["accuracy"] - max_drop, color="grey", linestyle="--", linewidth=0.8)
        ax.text(0.99, 100 * base["accuracy"] - max_drop, f"-{max_drop:g} pp constraint", fontsize=7, ha="right",
                va="bottom", color="grey", transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_minor_locator(LogLocator(base=2, subs=()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("speedup vs fp32 baseline (interleaved, cpu profile, log scale)")
    ax.set_ylabel("top-1 accuracy on the validation split (%)")
    ax.set_title(task)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help="a short name for the task (rows and file names)")
    ap.add_argument("--run", required=True, type=Path, help="a finished autocompress run folder")
    ap.add_argument("--random", type=Path, help="a finished random-search run of the same task")
    ap.add_argument("--random-first", type=int, help="use only the random run's first N trials (the same budget as --run)")
    ap.add_argument("--kd-epochs", type=int, default=None, help="KD epochs for the uniform peers (default: the space's largest)")
    ap.add_argument("--skip", default="", help="comma-separated peers to skip")
    ap.add_argument("--summary-only", action="store_true", help="re-print the table and goal line from results/peers-TASK.json")
    a = ap.parse_args()
    if a.summary_only:
        saved = json.loads((RESULTS / f"peers-{a.task}.json").read_text())
        meta = yaml.safe_load((a.run / "run.yaml").read_text())
        rows = dominance(saved["rows"])
        spec = RunSpec.model_validate(meta["spec"])
        print_table(rows)
        summarize(rows, spec.constraints.max_accuracy_drop)
        plot(rows, f"{a.task} ({spec.model}, {spec.profile} profile)", RESULTS / f"peers-{a.task}.png",
             spec.constraints.max_accuracy_drop)
        return
    skip = set(filter(None, a.skip.split(",")))
    load0 = os.getloadavg()[0]
    t_start = time.time()

    meta = yaml.safe_load((a.run / "run.yaml").read_text())
    spec = RunSpec.model_validate(meta["spec"]).model_copy(update={"out": None, "storage": None, "study": None})
    work = ROOT / "benchmarks" / "work" / f"peers-{a.task}"
    prep = prepare(spec, work, log=lambda s: print("  " + s, flush=True))
    ctx = prep.ctx
    base = ctx.baseline.path
    data = ctx.data
    x_val, y_val = data.x_val.numpy(), data.y_val.numpy()
    x_cal = data.x_calib.numpy()
    shape4 = input_shape_for(prep.profile, tuple(data.input_shape))
    epochs = a.kd_epochs or max(prep.space.distill.epochs)
    peers_dir = work / "peers"
    peers_dir.mkdir(parents=True, exist_ok=True)

    models: list[tuple[str, str, Path, float]] = [("baseline", "fp32", base, 0.0)]  # method, detail, path, build s
    for _, r in front_models(a.run).iterrows():
        models.append(("autocompress", f"trial {int(r['number'])}", a.run / r["model"], float("nan")))
    if a.random:
        for _, r in front_models(a.random, a.random_first).iterrows():
            models.append(("random", f"trial {int(r['number'])}", a.random / r["model"], float("nan")))

    builders = [
        ("ort-dynamic", "quantize_dynamic defaults", lambda: ort_dynamic(base, peers_dir / "ort_dynamic.onnx")),
        ("ort-static", "QDQ U8S8 per-channel minmax", lambda: ort_static(base, peers_dir / "ort_static.onnx", x_cal)),
        ("nncf", "nncf.quantize defaults", lambda: nncf_ptq(base, peers_dir / "nncf.onnx", x_cal)),
        ("uniform50", f"50% l1 + KD {epochs} ep, fp32", lambda: kd_peer(prep, 900, 0.5, "fp32", epochs)),
        ("uniform50", f"50% l1 + KD {epochs} ep, int8", lambda: kd_peer(prep, 901, 0.5, "int8", epochs)),
        ("uniform80", f"80% l1 + KD {epochs} ep, int8", lambda: kd_peer(prep, 902, 0.8, "int8", epochs)),
    ]
    notes = {}
    for method, detail, build in builders:
        if method in skip:
            continue
        t = time.time()
        try:
            path = build()
        except ImportError as e:
            notes[method] = f"not installed ({e.name}): pip install -e .[bench]"
            print(f"  {method}: {notes[method]}")
            continue
        models.append((method, detail, path, time.time() - t))
        print(f"  built {method} ({detail}) in {time.time() - t:.1f} s", flush=True)

    mach = machine()
    rows = []
    for method, detail, path, build_s in models:
        acc = evaluate_onnx(path, x_val, y_val)
        lat = measure_latency(path, prep.profile, shape4, baseline_path=None if method == "baseline" else base, seed=spec.seed)
        sp = 1.0 if method == "baseline" else float(lat.speedup)
        row = {
            "task": a.task, "method": method, "detail": detail, "accuracy": round(float(acc.top1), 4),
            "drop_pp": round(100 * (ctx.baseline.accuracy - acc.top1), 2), "speedup": round(sp, 3),
            "speedup_ci": f"{lat.speedup_ci[0]:.2f}-{lat.speedup_ci[1]:.2f}" if lat.speedup_ci else "",
            "latency_ms": round(lat.median_ms, 3), "size_mb": round(file_size_mb(path), 3),
            "size_ratio": round(ctx.baseline.size_mb / file_size_mb(path), 1),
            "build_s": "" if build_s != build_s else round(build_s, 1), "latency_stop": lat.stop_reason,
        }
        rows.append(row)
        print(f"  {method:13s} {detail:32s} acc {row['accuracy']:.4f} speedup {row['speedup']:.2f}x "
              f"({row['speedup_ci']}) size {row['size_mb']:.2f} MB", flush=True)
    dominance(rows)
    extra = {"date": datetime.now().isoformat(timespec="seconds"), "model": spec.model, "data": spec.data,
             "profile": spec.profile, "kd_epochs": epochs, "load_start": round(load0, 2),
             "load_end": round(os.getloadavg()[0], 2), **mach}
    out = RESULTS / "peers.csv"
    old = list(csv.DictReader(out.open())) if out.is_file() else []
    new = [{**r, **extra} for r in rows]
    keys = list(dict.fromkeys(k for r in old + new for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in keys} for r in old + new])
    plot(rows, f"{a.task} ({spec.model}, {spec.profile} profile)", RESULTS / f"peers-{a.task}.png",
         spec.constraints.max_accuracy_drop)

    print(f"\n{a.task}: {spec.model}, {spec.data}, profile {spec.profile}; load {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"{time.time() - t_start:.0f} s; {mach['cpu']} ({mach['cpu_flags']}); {mach['versions']}")
    print_table(rows)
    summarize(rows, spec.constraints.max_accuracy_drop)
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    (RESULTS / f"peers-{a.task}.json").write_text(json.dumps({"rows": rows, **extra, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
