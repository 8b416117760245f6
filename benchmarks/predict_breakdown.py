"""Where a prediction's error comes from: per kernel kind, what the table predicts against what the model's own run
spends there.

Each candidate (built as ``bench_predict.py`` builds it: zoo model, uniform pruning ratio, input side, seed, in a
child process: a process that ran torch times ONNX Runtime slow, ``bench_inprocess.py``) is timed
whole the way the table's context networks are (``table.time_sessions``, net of the table's per-inference overhead) and profiled
once per kernel (``kernels.list_kernels``); its wall time is split over its kernels in proportion to the profiler's
durations less the per-node inflation -- exactly how the table's own entries were made -- and set beside
``lookup.breakdown`` (the table's prediction per kernel, in-network scale included), summed per kernel kind
(implementation/dtype, a depthwise conv apart: ``lookup.kernel_kind``, what the table's in-network ratios are kept
by). A kind whose prediction is far from its share is where the table or its features are wrong.

    python benchmarks/predict_breakdown.py --table benchmarks/results/cpu-1thread.table.jsonl \
        shufflenet_v2_x1_0:0.58:32:14 mobilenet_v2:0.44:64:16 resnet18:0.11:32:0

``--draw SEED`` takes ``bench_predict.py --seed SEED``'s candidates instead (another seed than the one scored: a
diagnosis that does not tune on the held-out set; candidates a ratio cannot prune are skipped); ``--by-shape``
sums per kernel group *and shape* (channels, pixels), which is how the grid's holes show; ``--summary-only`` prints
the totals alone:

    python benchmarks/predict_breakdown.py --table T --draw 2 --by-shape --summary-only --top 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from autocompress.measure import predict
    from autocompress.profiling.kernels import list_kernels
    from autocompress.profiling.lookup import breakdown, kernel_kind, table_target
    from autocompress.profiling.table import split_wall, time_sessions

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True)
    ap.add_argument("--top", type=int, default=8, help="kinds shown per model (largest |difference| first)")
    ap.add_argument("--draw", type=int, help="bench_predict.py's draw with this --seed (20 models, 32/64 px)")
    ap.add_argument("--by-shape", action="store_true", help="per kernel group and shape, not per kind")
    ap.add_argument("--summary-only", action="store_true", help="only the totals over all candidates")
    ap.add_argument("candidates", nargs="*", help="arch:ratio:size:seed")
    args = ap.parse_args()
    if args.draw is not None:
        from bench_predict import draw

        args.candidates += [f"{a}:{r}:{sz}:{i}" for a, r, sz, i in draw(args.draw, 20, [32, 64])]
    if not args.candidates:
        ap.error("name candidates (arch:ratio:size:seed) or --draw SEED")
    table = predict.read_table(args.table)
    target = table_target(table)
    uncal = {k: v for k, v in table.items() if k != "calibration"}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    with tempfile.TemporaryDirectory() as d:
        for c in args.candidates:
            arch, ratio, size, seed = c.split(":")
            code = ("import json, sys; from autocompress.measure.predict import build_candidate; "
                    f"print(json.dumps([str(p) for p in build_candidate({arch!r}, {float(ratio)}, {int(size)}, {int(seed)}, {d!r})]))")
            built = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if built.returncode:  # e.g. a ratio that leaves a layer no channel: InfeasibleCandidate
                print(f"{c}: not built ({built.stderr.strip().splitlines()[-1]})")
                continue
            paths = json.loads(built.stdout.strip().splitlines()[-1])
            for path in paths:
                model = Path(path).read_bytes()
                ks = list_kernels(model, target, runs=30)
                net = time_sessions(model, target, False) - table["overhead_ms"]
                share = split_wall(ks, net, table["delta_ms"])  # as the table's own entries were made
                pred = breakdown(model, uncal, kernels=ks)
                kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
                for (name, group, ms, how), sh, k in zip(pred, share, ks):
                    kind = (f"{group} {tuple(round(float(np.exp(f))) for f in k['feats'])}" if args.by_shape else
                            kernel_kind(k)) + ("" if how == "fit" else f" ({how})")
                    kinds[kind][0] += ms
                    kinds[kind][1] += sh
                    kinds[kind][2] += 1
                for kind, (p, sh, n) in kinds.items():
                    totals[kind][0] += p
                    totals[kind][1] += sh
                if args.summary_only:
                    continue
                p_tot = table["overhead_ms"] + sum(v[0] for v in kinds.values())
                print(f"\n{Path(path).name}: measured {net + table['overhead_ms']:.3f} ms, predicted (uncalibrated) "
                      f"{p_tot:.3f} ms ({p_tot / (net + table['overhead_ms']) - 1:+.1%}), {len(ks)} kernels")
                print(f"  {'kernel kind':48s} {'n':>4s} {'predicted':>10s} {'its share':>10s} {'diff ms':>8s}")
                for kind, (p, s, n) in sorted(kinds.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[: args.top]:
                    print(f"  {kind:48s} {n:4d} {p:10.4f} {s:10.4f} {p - s:+8.4f}")
    print("\nall candidates, per kind (predicted - share, ms):")
    for kind, (p, s) in sorted(totals.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[: 2 * args.top]:
        print(f"  {kind:48s} {p:10.4f} {s:10.4f} {p - s:+8.4f} ({p / s - 1 if s else float('nan'):+.0%})")


if __name__ == "__main__":
    main()
