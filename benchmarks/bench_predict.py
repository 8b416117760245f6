"""Predicted vs measured latency on held-out candidates (cpu profile).

Builds the full lookup table on this machine, calibration included (or loads --table; a table without
calibration is calibrated here, --recalibrate redoes it), then makes >= 30 candidates that neither the
table nor its calibration models saw: the product's zoo resnet18 / mobilenet_v2 (small-input variants,
autocompress.models.zoo.build_model(name, 10, (3, S, S)), S = 32 or 64), pruned at a random uniform ratio
in 0-0.8 (2 decimals, seeds < 1000; the calibration models use 3-decimal ratios and seeds >= 1000) with
the product's stages: prune_model -> export_onnx -> quantize_model({"_default": "int8"}, QuantSpec()).
Each candidate is measured in ONNX Runtime (measure_latency, no baseline) and predicted (predict_latency,
plus the uncalibrated sum for comparison). Writes benchmarks/results/predict.csv and prints the fraction
within +-10% / +-20%, the error distribution and the load average.

    python benchmarks/bench_predict.py [--quick] [--n 16] [--table path.json] [--recalibrate] [--profile cpu]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np

from autocompress.config import load_profile
from autocompress.measure import hardware, predict
from autocompress.measure.latency import measure_latency

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).resolve().parent / "results"


def _uncalibrated(table: dict) -> dict:
    return {k: v for k, v in table.items() if k != "calibration"}


def _summary(rows, key):
    e = np.array([r[key] for r in rows])
    return (f"n={len(e)} within +-10%: {np.mean(np.abs(e) <= 0.10):.0%}  within +-20%: {np.mean(np.abs(e) <= 0.20):.0%}  "
            f"median error {np.median(e):+.1%}  median |error| {np.median(np.abs(e)):.1%}  "
            f"worst {e[np.argmax(np.abs(e))]:+.1%}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small grid (the test-suite table)")
    ap.add_argument("--table", help="reuse a table JSON instead of building one")
    ap.add_argument("--n", type=int, default=16, help="pruned models (each in fp32 and int8)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--recalibrate", action="store_true", help="redo the whole-model calibration of --table")
    args = ap.parse_args()
    profile, _ = load_profile(args.profile)
    RESULTS.mkdir(exist_ok=True)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if args.table:
        table = json.loads(Path(args.table).read_text())
        if args.recalibrate or "calibration" not in table:
            dts = sorted({e["dtype"] for e in table["entries"]}, reverse=True)
            table["calibration"] = predict.calibrate_table(_uncalibrated(table), profile, quick=args.quick, dtypes=dts)
            out = Path(args.table).with_name(Path(args.table).stem.replace(".table", "") + "-calibrated.table.json")
            out.write_text(json.dumps(table))
            print(f"calibrated table: {out} ({table['calibration']['seconds']:.0f} s, "
                  f"load {table['calibration']['load_avg']:.1f})", flush=True)
    else:
        table = predict.build_table(profile, quick=args.quick)
        out = RESULTS / f"{profile.name}{'-quick' if args.quick else ''}.table.json"
        out.write_text(json.dumps(table))
        print(f"table: {out} ({table['build_seconds']:.0f} s, {len(table['entries'])} entries)")
    rng = random.Random(args.seed)
    raw_table = _uncalibrated(table)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.n):
            arch = ["resnet18", "mobilenet_v2"][i % 2]
            ratio = round(rng.uniform(0.0, 0.8), 2)
            size = rng.choice([32, 64])
            fp32, int8 = predict.build_candidate(arch, ratio, size, seed=i, out_dir=d)
            shape = hardware.input_shape_for(profile, (3, size, size))
            for prec, path in (("fp32", fp32), ("int8", int8)):
                assert predict.model_dtype(path) == prec, (path, prec)
                meas = measure_latency(path, profile, shape, seed=i)
                pred = predict.predict_latency(path, profile, table, shape)
                raw = predict.predict_latency(path, profile, raw_table, shape)
                err = pred / meas.median_ms - 1
                rows.append(dict(arch=arch, ratio=ratio, size=size, precision=prec, measured_ms=round(meas.median_ms, 4),
                                 predicted_ms=round(pred, 4), error=round(err, 4), raw_sum_ms=round(raw, 4),
                                 raw_error=round(raw / meas.median_ms - 1, 4), cv=round(meas.cv, 3),
                                 stop=meas.stop_reason, load_avg=round(meas.load_avg, 2)))
                print(f"{arch:13s} r={ratio:.2f} {size}px {prec}: measured {meas.median_ms:7.3f} ms  "
                      f"predicted {pred:7.3f} ms  error {err:+.1%}  (raw sum {raw:7.3f} ms, "
                      f"cv {meas.cv:.0%}, load {meas.load_avg:.1f})", flush=True)
    name = f"predict{'-quick' if args.quick else ''}.csv"
    with open(RESULTS / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for prec in ("fp32", "int8", "all"):
        sel = rows if prec == "all" else [r for r in rows if r["precision"] == prec]
        print(f"{prec}: calibrated   {_summary(sel, 'error')}")
        print(f"{prec}: uncalibrated {_summary(sel, 'raw_error')}")
    loads = [r["load_avg"] for r in rows]
    print(f"load average over the candidates: {min(loads):.1f}-{max(loads):.1f} (end {os.getloadavg()})")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
