"""One model of your own, predicted from a lookup table against measured, and where the difference sits per kernel.

The model (``--model file.py:Class`` or ``pkg.mod:fn``, resolved as ``autocompress run --model`` resolves it) is
exported at ``--size`` px with the product's exporter, predicted with ``predict_latency`` from ``--table``, and
timed alone in ``--windows`` fresh processes as the profile says (``retime.latency_windows``; the profile's statistic
across windows, ``predict.across_windows``). Then each kernel's table entry beside its share of the model's own time
(``table.time_sessions`` split by ORT's profiler, as ``predict_breakdown.py`` does for zoo candidates), the largest
differences first. ``benchmarks/user_net.py`` is a hand-written net (grouped convs that widen, squeeze-excite written
as ``x.mean((2, 3))``, hardswish) that exposed two holes of the grid (benchmarks/README.md, twenty-seventh session):

    python benchmarks/bench_predict_model.py --model benchmarks/user_net.py:MyNet --table T --profile cpu
    python benchmarks/bench_predict_model.py --model timm.models.efficientnet:efficientnet_b0 --classes 1000 --int8

Every model (and its int8 form with ``--int8``) is measured in the same windows; the figures are written to
``benchmarks/results/predict-model-<profile><tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_model(spec: str, classes: int, shape: tuple, out: Path, int8: bool) -> dict[str, Path]:
    """{"fp32": path, "int8": path}: the model ``spec`` names, exported at ``shape`` to ``out`` (seeded weights), and
    with ``int8`` quantized as the product quantizes (static QDQ U8S8, a seeded calibration batch) to its
    ``.int8.onnx`` twin. Imports the autocompress first on the path: ``predict_with_checkout.py`` rebuilds the same
    models with an older checkout."""
    import torch

    from autocompress.compress.export import export_onnx
    from autocompress.compress.quantize import quantize_model
    from autocompress.models.loader import resolve_model
    from autocompress.records import QuantSpec

    torch.manual_seed(0)
    model, _ = resolve_model(spec, classes, shape[1:])
    export_onnx(model.eval(), torch.zeros(shape), out)
    if not int8:
        return {"fp32": out}
    calib = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    q = out.with_suffix(".int8.onnx")
    quantize_model(out, q, {"_default": "int8"}, QuantSpec(), calib)
    return {"fp32": out, "int8": q}


def main() -> None:
    from autocompress.config import load_profile
    from autocompress.measure.predict import across_windows, predict_latency, read_table
    from autocompress.measure.retime import latency_windows
    from autocompress.profiling.kernels import list_kernels
    from autocompress.profiling.lookup import breakdown, table_target
    from autocompress.profiling.table import split_wall, time_sessions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, nargs="+", help="file.py:Class or pkg.mod:fn, one or more")
    ap.add_argument("--table", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--int8", action="store_true", help="each model also quantized (static QDQ U8S8, the product's quantizer)")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--tag", default="", help="suffix of benchmarks/results/predict-model-<profile><tag>.json")
    ap.add_argument("--compare-table", nargs="+", default=[],
                    help="also predict with these tables (other builds) on the same measurements")
    args = ap.parse_args()
    profile, _ = load_profile(args.profile)
    table = read_table(args.table)
    compares = [read_table(t) for t in args.compare_table]
    target = table_target(table)
    uncal = {k: v for k, v in table.items() if k != "calibration"}
    shape = (1, 3, args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for i, spec in enumerate(args.model):
            for prec, path in export_model(spec, args.classes, shape, Path(d) / f"m{i}.onnx", args.int8).items():
                paths[(spec, prec)] = path
        # every model in the same fresh-process windows, one after another in each
        windows = latency_windows({f"{s} {p}": (path, shape) for (s, p), path in paths.items()}, profile, windows=args.windows)
        for (spec, prec), path in paths.items():
            w = windows[f"{spec} {prec}"]
            pred, meas = predict_latency(path, profile, table, shape), across_windows(w, profile.latency.statistic)
            onnx_bytes = path.read_bytes()
            ks = list_kernels(onnx_bytes, target, runs=30)
            share = split_wall(ks, time_sessions(onnx_bytes, target, False) - table["overhead_ms"], table["delta_ms"])
            kern = [{"group": k["group"], "feats": [round(float(np.exp(f))) for f in k["feats"]], "table_us": ms * 1e3,
                     "share_us": sh * 1e3, "how": how}
                    for k, (_, _, ms, how), sh in zip(ks, breakdown(onnx_bytes, uncal, kernels=ks), share)]
            other = [predict_latency(path, profile, t, shape) / meas - 1 for t in compares]
            rows.append({"model": spec, "precision": prec, "predicted_ms": pred, "measured_ms": meas, "windows_ms": w,
                         "error": pred / meas - 1, "compare_errors": other, "kernels": kern})
            print(f"{spec} {prec} at {args.size} px: predicted {pred:.3f} ms, measured {meas:.3f} ms "
                  f"({profile.latency.statistic} of {args.windows} fresh-process windows: "
                  f"{', '.join(f'{x:.3f}' for x in w)}), error {pred / meas - 1:+.1%}"
                  + (f" (other tables: {', '.join(f'{e:+.1%}' for e in other)})" if other else ""))
            print(f"  {'kernel group':45s} {'features':18s} {'table':>9s} {'its share':>10s}")
            for k in sorted(kern, key=lambda r: -abs(r["table_us"] - r["share_us"]))[: args.top]:
                print(f"  {k['group']:45s} {tuple(k['feats'])!s:18s} {k['table_us']:7.1f} us {k['share_us']:8.1f} us"
                      + ("" if k["how"] == "fit" else f"  ({k['how']})"))
    out = Path(__file__).resolve().parent / "results" / f"predict-model-{args.profile}{args.tag}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"table": str(args.table), "compare_tables": args.compare_table, "profile": args.profile, "size": args.size,
                              "fingerprint": table.get("fingerprint"), "statistic": profile.latency.statistic,
                              "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
