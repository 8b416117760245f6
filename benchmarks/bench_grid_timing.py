"""How repeatable a lookup table's grid timings are, per way of timing a graph (issue 17, the two-thread ``cpu``).

A random sample of the grid's graphs (``--table``: their specs, built and copied as the build does) is timed twice,
each time in a fresh session, with each procedure: the median of 5 blocks of 5 ms (how every graph was timed before
this benchmark), the p10 of 10 blocks of 5 ms, the p10 of 20 blocks of 2.5 ms (what ``table._timing`` gives a p10
target now: the same 50 ms), and the smaller of two sessions' p10 of 10 x 5 ms. A procedure is as good as its two
passes agree: per graph |log(pass A / pass B)|, its median and 90th percentile and the share of graphs whose passes
are more than 10% apart. Writes ``results/grid-timing-<profile><tag>.json`` with the machine's fingerprint.

    python benchmarks/bench_grid_timing.py --table benchmarks/results/cpu.table.jsonl --n 50     # ~2 min
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from autocompress.measure import hardware
    from autocompress.measure.predict import read_table
    from autocompress.profiling import graphs
    from autocompress.profiling.lookup import table_target
    from autocompress.profiling.table import _timing, build_graph, copies_for
    from autocompress.profiling.target import feeds_for, time_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", required=True, help="a table whose grid is sampled (its target is used)")
    ap.add_argument("--n", type=int, default=50, help="graphs sampled")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    table = read_table(args.table)
    target = table_target(table)

    def once(model, n_blocks, block_ms, statistic) -> float:
        sess = target.session(model)
        return time_session(sess, feeds_for(sess), n_blocks, block_ms, clock=target.clock, statistic=statistic)

    (n, ms), (qn, qms) = _timing(False, "median"), _timing(False, "p10")  # the grid's timing before, and now for p10
    procs = {f"median of {n} x {ms:g} ms": lambda m: once(m, n, ms, "median"),
             f"p10 of {2 * n} x {ms:g} ms": lambda m: once(m, 2 * n, ms, "p10"),
             f"p10 of {qn} x {qms:g} ms": lambda m: once(m, qn, qms, "p10"),
             f"min of 2 sessions, p10 of {2 * n} x {ms:g} ms": lambda m: min(once(m, 2 * n, ms, "p10") for _ in range(2))}
    lines = random.Random(args.seed).sample(table["lines"], min(args.n, len(table["lines"])))
    pairs: dict[str, list] = {k: [] for k in procs}
    for ln in lines:
        model = graphs.replicate(build_graph(ln["spec"]), copies_for(ln["spec"]))
        for name, fn in procs.items():  # interleaved: every procedure sees the same minutes of the machine
            pairs[name].append((fn(model), fn(model)))
    out = {"table": args.table, "profile": table.get("target_name"), "n": len(lines), "fingerprint": hardware.fingerprint(),
           "procedures": {}}
    for name, ps in pairs.items():
        lr = np.abs(np.log(np.array([a / b for a, b in ps])))
        out["procedures"][name] = s = {"median_abs_log_ratio": float(np.median(lr)), "p90_abs_log_ratio": float(np.percentile(lr, 90)),
                                       "apart_over_10pct": float(np.mean(lr > np.log(1.1)))}
        print(f"{name:38s} two passes: |log ratio| median {s['median_abs_log_ratio']:.3f}, p90 "
              f"{s['p90_abs_log_ratio']:.3f}; {s['apart_over_10pct']:.0%} of graphs more than 10% apart")
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / f"grid-timing-{out['profile']}{args.tag}.json"
    dest.write_text(json.dumps(out, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
