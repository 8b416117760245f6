"""Repeatability of measure_latency across fresh processes (FIELD_NOTES pitfall 9).

The same pair (resnet18 adapted to 32x32: 3x3 stem, no maxpool; fp32 baseline vs its int8 static QDQ
U8S8 per-channel, or vs its fp16 conversion with ``--precision fp16`` for GPU profiles) is measured in N
fresh Python processes, one after another, with the cpu profile.
Reports the CV across processes of the speedup (goal <= 5%) and of the absolute medians; writes
benchmarks/results/latency_repeatability.csv.

    python benchmarks/bench_latency_repeatability.py [--procs 5] [--profile cpu] [--size 32] [--statistic p10]
        [--precision int8|fp16]

Each process also reports the speedup its own samples give under the median-of-ratios, p10 and min
estimators, so estimators are compared on the same data.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CHILD = r"""
import json, sys, time
from autocompress.config import load_profile
from autocompress.measure import hardware
from autocompress.measure.latency import measure_latency, speedup_estimate
prof, _ = load_profile(sys.argv[3])
if len(sys.argv) > 5:
    prof = prof.model_copy(update={"latency": prof.latency.model_copy(update={"statistic": sys.argv[5]})})
shape = hardware.input_shape_for(prof, (3, int(sys.argv[4]), int(sys.argv[4])))
t = time.perf_counter()
r = measure_latency(sys.argv[1], prof, shape, baseline_path=sys.argv[2], seed=0)
print(json.dumps(dict(speedup=r.speedup, ci_lo=r.speedup_ci[0], ci_hi=r.speedup_ci[1], cand_ms=r.median_ms,
                      base_ms=r.baseline_median_ms, cv=r.cv, rounds=r.n_samples, k=r.runs_per_sample,
                      stop=r.stop_reason, load=r.load_avg, seconds=time.perf_counter() - t,
                      **{f"speedup_{st}": float(speedup_estimate(r.base_samples_ms, r.cand_samples_ms, st))
                         for st in ("median", "p10", "min")})))
"""


def build(d: Path, size: int, precision: str = "int8"):
    """resnet18 (adapted to small inputs) in fp32 and in ``precision`` (int8 or fp16), made with the product's
    own stages (export_onnx, quantize_model: QDQ U8S8 per-channel), so the int8 convs fuse as they do in a
    search."""
    import torch

    from autocompress.compress.export import export_onnx
    from autocompress.compress.quantize import quantize_model
    from autocompress.models.zoo import build_model
    from autocompress.records import QuantSpec

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    m = build_model("resnet18", 10, (3, size, size)).eval()
    fp32, low = d / "resnet18.onnx", d / f"resnet18.{precision}.onnx"
    export_onnx(m, torch.zeros(1, 3, size, size), fp32)
    calib = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)
    quantize_model(fp32, low, {"_default": precision}, QuantSpec(), calib)
    return fp32, low


def cv(x) -> float:
    x = np.asarray(x, float)
    return float(np.std(x, ddof=1) / np.mean(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=5)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--tag", default="", help="suffix of the CSV name")
    ap.add_argument("--statistic", default=None, help="override the profile's latency statistic (median, p10, min...)")
    ap.add_argument("--precision", default="int8", choices=["int8", "fp16"], help="the candidate's precision (fp16 for GPU profiles)")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        fp32, low = build(Path(d), args.size, args.precision)
        for i in range(args.procs):
            out = subprocess.run([sys.executable, "-c", CHILD, str(low), str(fp32), args.profile, str(args.size),
                                  *([args.statistic] if args.statistic else [])],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(dict(process=i, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
            print(f"process {i}: speedup {r['speedup']:.3f} [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]  {args.precision} {r['cand_ms']:.3f} ms"
                  f"  fp32 {r['base_ms']:.3f} ms  rounds {r['rounds']} ({r['stop']})  load {r['load']:.1f}"
                  f"  {r['seconds']:.1f} s", flush=True)
    name = RESULTS / f"latency_repeatability{args.tag}.csv"
    with open(name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    sp = [r["speedup"] for r in rows]
    print(f"speedup: mean {np.mean(sp):.3f}, CV across processes {cv(sp):.1%} (goal <= 5%)")
    for st in ("median", "p10", "min"):
        x = [r[f"speedup_{st}"] for r in rows]
        print(f"  same samples, estimator {st}: mean {np.mean(x):.3f}, CV across processes {cv(x):.1%}")
    print(f"{args.precision} median ms: CV {cv([r['cand_ms'] for r in rows]):.1%}; fp32 median ms: CV {cv([r['base_ms'] for r in rows]):.1%}")
    print(f"load average at start: {min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}; wrote {name}")


if __name__ == "__main__":
    main()
