"""An older table predicted on a newer run's measurements: the models of a ``bench_predict_model.py`` result rebuilt
and predicted with another checkout's code and its table (a newer autocompress refuses an older table by design: its
kernels are keyed otherwise), scored against the result's own measured figures. Writes ``<result>-other.json``.

    git worktree add /tmp/old 9a8864b
    python benchmarks/predict_with_checkout.py --checkout /tmp/old --table OLD.table.jsonl \\
        --result benchmarks/results/predict-model-cpu-1thread-mynet-v7-s28.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", required=True, help="a checkout (git worktree) of the older autocompress")
    ap.add_argument("--table", required=True, help="a table that checkout reads")
    ap.add_argument("--result", required=True, help="a bench_predict_model.py result JSON (its models and measurements)")
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_predict_model import export_model  # (puts this repository on the path: the checkout goes before it)

    sys.path.insert(0, str(Path(args.checkout).resolve()))
    import autocompress
    from autocompress.config import load_profile
    from autocompress.measure.predict import predict_latency, read_table

    if not autocompress.__file__.startswith(str(Path(args.checkout).resolve())):
        sys.exit(f"error: autocompress imported from {autocompress.__file__}, not from --checkout {args.checkout}")
    res = json.loads(Path(args.result).read_text())
    profile, _ = load_profile(res["profile"])
    table = read_table(args.table)
    shape = (1, 3, res["size"], res["size"])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        built: dict[str, dict] = {}
        for r in res["rows"]:  # rebuilt as bench_predict_model.py builds them, with the checkout's code
            if r["model"] not in built:
                built[r["model"]] = export_model(r["model"], args.classes, shape, Path(d) / f"m{len(built)}.onnx",
                                                 any(x["precision"] == "int8" for x in res["rows"]))
            pred = predict_latency(built[r["model"]][r["precision"]], profile, table, shape)
            rows.append({"model": r["model"], "precision": r["precision"], "predicted_ms": pred,
                         "measured_ms": r["measured_ms"], "error": pred / r["measured_ms"] - 1,
                         "this_table_error": r["error"]})
            print(f"{r['model'].split(':')[-1]:24s} {r['precision']}: other table {rows[-1]['error']:+.1%}   "
                  f"the run's table {r['error']:+.1%}")
    out = Path(args.result).with_name(Path(args.result).stem + "-other.json")
    out.write_text(json.dumps({"checkout": args.checkout, "table": args.table, "against": args.result, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
