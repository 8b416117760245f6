"""Which zoo model can be the one-click default: speed before training, measured (issue 16).

A candidate's speed depends on its graph, not on its weights, so each model here is built untrained, pruned
uniformly (50% and 70% of every prunable layer's channels, the default space's first seeds), exported, quantized
to int8 as the cpu profile does, and timed with the product's own ``measure_latency`` interleaved with its fp32
baseline in the same process. A one-click default must be compute-bound enough at 32 px and batch 1 for these
ratios to be large, and small enough for its teacher to train in a few minutes (the run's own log says how long:
``teacher ...: val accuracy ... in N s``).

    python benchmarks/bench_default_model.py --profile cpu --tag avx2
    python benchmarks/bench_default_model.py --models resnet18_x0_5,mobilenet_v3_small
    python benchmarks/bench_default_model.py --models benchmarks/models/cifar_resnet.py:resnet20 --repeats 3 --tag r20
    python benchmarks/bench_default_model.py --models resnet18 --ratios 0.5,0.6,0.7,0.8,0.9 --round-to 0,8,16 --tag align
    python benchmarks/bench_default_model.py --models resnet18_x0_5 --ratios 0.7,0.9 --bits int8 --round-to 16 --drop 0,2,5 --tag depth

``--round-to`` (the profile's ``round_to``: kept channels rounded down to a multiple) shows what channel counts the
CPU's kernels favour: pruning to counts that are not multiples of 8/16 can make a sparser model slower.

Writes ``results/default-model-<tag>.csv`` (one row per model and setting, with the machine fingerprint and the
1-minute load average at its start) and prints a line per model. Figures: benchmarks/README.md "One-click default".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from autocompress.compress.depth import drop_blocks, droppable_blocks
from autocompress.compress.export import export_onnx
from autocompress.compress.prune import prune_model
from autocompress.compress.quantize import quantize_model
from autocompress.config import load_profile
from autocompress.errors import InfeasibleCandidate
from autocompress.profiling.target import fingerprint
from autocompress.measure.latency import measure_latency
from autocompress.models.loader import resolve_model
from autocompress.records import QuantSpec

HERE = Path(__file__).resolve().parent
MODELS = "resnet18_x0_5,mobilenet_v3_small,resnet18,mobilenet_v2,shufflenet_v2_x1_0"
SETTINGS = ((0.0, "int8"), (0.5, "fp32"), (0.5, "int8"), (0.7, "fp32"), (0.7, "int8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--models", default=MODELS, help="comma-separated zoo names or file.py:fn (a user model file)")
    ap.add_argument("--repeats", type=int, default=1, help="times each setting is timed (each against the baseline)")
    ap.add_argument("--size", type=int, default=32, help="input side, px (digits: 32)")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--ratios", default=None, help="comma-separated sparsities (default: int8 alone, 50%% and 70%%)")
    ap.add_argument("--bits", default="fp32,int8", help="with --ratios: the precisions to time")
    ap.add_argument("--round-to", default="0", help="comma-separated round_to values (0: none) to compare")
    ap.add_argument("--drop", default="0", help="comma-separated numbers of droppable blocks replaced by the identity "
                    "(depth; the last blocks first, as a run without the sensitivity analysis orders them)")
    args = ap.parse_args(argv)
    settings = SETTINGS if args.ratios is None else \
        [(float(r), b) for r in args.ratios.split(",") for b in args.bits.split(",")]
    roundings = [int(v) or None for v in args.round_to.split(",")]
    drops = [int(v) for v in args.drop.split(",")]

    profile, _ = load_profile(args.profile)
    shape = (3, args.size, args.size)
    x = torch.zeros(1, *shape)
    calib = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
    machine = json.dumps(fingerprint(), sort_keys=True)
    out = HERE / "results" / f"default-model-{args.tag}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            torch.manual_seed(0)
            base = tmp / "baseline.onnx"
            export_onnx(resolve_model(name, 10, shape)[0].eval(), x, base, check=False)
            line = []
            blocks = droppable_blocks(resolve_model(name, 10, shape)[0].eval(), x)[::-1]
            for (sparsity, bits), round_to, drop in ((s, r, d) for s in settings for r in roundings for d in drops):
                if (round_to and not sparsity) or drop > len(blocks):
                    continue
                torch.manual_seed(0)
                model = drop_blocks(resolve_model(name, 10, shape)[0].eval(), blocks[:drop])
                if sparsity:
                    try:
                        model = prune_model(model, {"_default": sparsity}, x, inplace=True, round_to=round_to).model.eval()
                    except InfeasibleCandidate as e:
                        line.append(f"{sparsity:.0%} {bits} r{round_to}: infeasible ({e})")
                        continue
                fp32 = tmp / "cand.onnx"
                export_onnx(model, x, fp32, check=False)
                path = fp32
                if bits == "int8":
                    path = tmp / "cand_int8.onnx"
                    quantize_model(fp32, path, {"_default": "int8"}, QuantSpec(), calib)
                got = []
                for rep in range(args.repeats):
                    load = os.getloadavg()[0]
                    r = measure_latency(path, profile, (1, *shape), baseline_path=base)
                    rows.append({"model": name, "sparsity": sparsity, "bits": bits, "round_to": round_to or 0,
                                 "dropped_blocks": drop, "repeat": rep,
                                 "speedup": round(r.speedup, 3), "baseline_ms": round(r.baseline_median_ms, 3),
                                 "candidate_ms": round(r.median_ms, 3), "stop": r.stop_reason,
                                 "load_1min": round(load, 2), "profile": args.profile, "machine": machine})
                    got.append(f"{r.speedup:.2f}")
                line.append(f"{sparsity:.0%} {bits}{f' r{round_to}' if round_to else ''}{f' -{drop} blocks' if drop else ''} "
                            f"{'/'.join(got)}x")
            print(f"{name}: fp32 baseline {rows[-1]['baseline_ms']:.2f} ms | " + " | ".join(line), flush=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
