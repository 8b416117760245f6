"""One model of your own, predicted from a lookup table against measured, and where the difference sits per kernel.

The model (``--model file.py:Class`` or ``pkg.mod:fn``, resolved as ``autocompress run --model`` resolves it) is
exported at ``--size`` px with the product's exporter, predicted with ``predict_latency`` from ``--table``, and
timed alone in ``--windows`` fresh processes as the profile says (``retime.latency_windows``; the profile's statistic
across windows, ``predict.across_windows``). Then each kernel's table entry beside its share of the model's own time
(``table.time_sessions`` split by ORT's profiler, as ``predict_breakdown.py`` does for zoo candidates), the largest
differences first. ``benchmarks/user_net.py`` is a hand-written net (grouped convs that widen, squeeze-excite written
as ``x.mean((2, 3))``, hardswish) that exposed two holes of the grid (benchmarks/README.md, twenty-seventh session):

    python benchmarks/bench_predict_model.py --model benchmarks/user_net.py:MyNet --table T --profile cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from autocompress.compress.export import export_onnx
    from autocompress.config import load_profile
    from autocompress.measure.predict import across_windows, predict_latency, read_table
    from autocompress.measure.retime import latency_windows
    from autocompress.models.loader import resolve_model
    from autocompress.profiling.kernels import list_kernels
    from autocompress.profiling.lookup import breakdown, table_target
    from autocompress.profiling.table import split_wall, time_sessions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    profile, _ = load_profile(args.profile)
    table = read_table(args.table)
    shape = (1, 3, args.size, args.size)
    model, _ = resolve_model(args.model, args.classes, shape[1:])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        export_onnx(model.eval(), torch.zeros(shape), path)
        pred = predict_latency(path, profile, table, shape)
        windows = latency_windows({"m": (path, shape)}, profile, windows=args.windows)["m"]
        meas = across_windows(windows, profile.latency.statistic)
        print(f"{args.model} at {args.size} px: predicted {pred:.3f} ms, measured {meas:.3f} ms ({profile.latency.statistic} "
              f"of {args.windows} fresh-process windows: {', '.join(f'{w:.3f}' for w in windows)}), error {pred / meas - 1:+.1%}")
        onnx_bytes = path.read_bytes()
    target = table_target(table)
    ks = list_kernels(onnx_bytes, target, runs=30)
    share = split_wall(ks, time_sessions(onnx_bytes, target, False) - table["overhead_ms"], table["delta_ms"])
    uncal = {k: v for k, v in table.items() if k != "calibration"}
    rows = [(k["group"], tuple(round(float(np.exp(f))) for f in k["feats"]), ms, sh, how)
            for k, (_, _, ms, how), sh in zip(ks, breakdown(onnx_bytes, uncal, kernels=ks), share)]
    print(f"  {'kernel group':45s} {'features':18s} {'table':>9s} {'its share':>10s}")
    for g, f, p, s, how in sorted(rows, key=lambda r: -abs(r[2] - r[3]))[: args.top]:
        print(f"  {g:45s} {str(f):18s} {p * 1e3:7.1f} us {s * 1e3:8.1f} us" + ("" if how == "fit" else f"  ({how})"))


if __name__ == "__main__":
    main()
