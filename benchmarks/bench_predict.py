"""Predicted vs measured latency on held-out candidates (cpu profile).

Builds the full lookup table on this machine (or loads --table), then makes >= 30 candidates that the
table never saw: torchvision resnet18 / mobilenet_v2 at 32x32 or 64x64, pruned at random uniform ratios
with torch-pruning, each in fp32 and int8 (static QDQ U8S8, per-channel); measures each in ONNX Runtime
(measure_latency, no baseline) and predicts it (predict_latency). Writes benchmarks/results/predict.csv
and prints the fraction within +-10% and the error distribution.

    python benchmarks/bench_predict.py [--quick] [--n 16] [--table path.json] [--profile cpu]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from autocompress.config import load_profile
from autocompress.measure import hardware, predict
from autocompress.measure.latency import measure_latency

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).resolve().parent / "results"


def make_model(arch: str, ratio: float, size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = getattr(torchvision.models, arch)(num_classes=10).eval()
    if ratio > 0:
        ex = torch.randn(1, 3, size, size)
        last = m.fc if arch.startswith("resnet") else m.classifier[-1]
        pruner = tp.pruner.BasePruner(m, ex, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[last])
        pruner.step()
    return m.eval()


def export(m, path, size):
    torch.onnx.export(m, torch.randn(1, 3, size, size), path, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def quantize(src, dst, size):
    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small grid (the test-suite table)")
    ap.add_argument("--table", help="reuse a table JSON instead of building one")
    ap.add_argument("--n", type=int, default=16, help="pruned models (each in fp32 and int8)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    profile, _ = load_profile(args.profile)
    RESULTS.mkdir(exist_ok=True)
    if args.table:
        table = json.loads(Path(args.table).read_text())
    else:
        table = predict.build_table(profile, quick=args.quick)
        out = RESULTS / f"{profile.name}{'-quick' if args.quick else ''}.table.json"
        out.write_text(json.dumps(table))
        print(f"table: {out} ({table['build_seconds']:.0f} s, {len(table['entries'])} entries)")
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.n):
            arch = ["resnet18", "mobilenet_v2"][i % 2]
            ratio = round(rng.uniform(0.0, 0.8), 2)
            size = rng.choice([32, 64])
            m = make_model(arch, ratio, size, seed=i)
            fp32 = Path(d) / f"c{i}.onnx"
            int8 = Path(d) / f"c{i}.int8.onnx"
            export(m, fp32, size)
            quantize(fp32, int8, size)
            shape = hardware.input_shape_for(profile, (3, size, size))
            for prec, path in (("fp32", fp32), ("int8", int8)):
                meas = measure_latency(path, profile, shape, seed=i)
                pred = predict.predict_latency(path, profile, table, shape)
                err = pred / meas.median_ms - 1
                rows.append(dict(arch=arch, ratio=ratio, size=size, precision=prec, measured_ms=round(meas.median_ms, 4),
                                 predicted_ms=round(pred, 4), error=round(err, 4), cv=round(meas.cv, 3),
                                 load_avg=round(meas.load_avg, 2)))
                print(f"{arch:13s} r={ratio:.2f} {size}px {prec}: measured {meas.median_ms:7.3f} ms  "
                      f"predicted {pred:7.3f} ms  error {err:+.1%}  (load {meas.load_avg:.1f})", flush=True)
    name = f"predict{'-quick' if args.quick else ''}.csv"
    with open(RESULTS / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    e = np.array([r["error"] for r in rows])
    for prec in ("fp32", "int8", "all"):
        sel = e if prec == "all" else np.array([r["error"] for r in rows if r["precision"] == prec])
        print(f"{prec}: n={len(sel)} within +-10%: {np.mean(np.abs(sel) <= 0.10):.0%}  within +-20%: "
              f"{np.mean(np.abs(sel) <= 0.20):.0%}  median error {np.median(sel):+.1%}  "
              f"median |error| {np.median(np.abs(sel)):.1%}  worst {sel[np.argmax(np.abs(sel))]:+.1%}")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
