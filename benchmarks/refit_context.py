"""A table's in-network fit taken again by this checkout's code, from the network times the table stored at its build:
the context networks are not timed again (their ``measured_ms`` are passed as ``stored``), only their
profiles, which split each wall time over its kernels, are listed again. For comparing two fits on one build's
timings (``bench_predict.py --table NEW --compare-table OLD``) without the device's speed between two builds in it.

    python benchmarks/refit_context.py OLD.table.jsonl NEW.table.jsonl

``--retime R`` times the context networks again now, on this device, in R rounds (each network the target's
statistic of its rounds) instead of taking the stored times: the table re-levelled at the minute of use, its grid
as built (tried for two threads in the thirty-seventh session, benchmarks/README.md: not kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", help="a finished lookup table (JSON Lines)")
    ap.add_argument("out", help="where to write the table with its context fitted again")
    ap.add_argument("--retime", type=int, metavar="R", help="time the context networks again now, in R rounds")
    args = ap.parse_args()
    from autocompress.profiling import marks, table as ptable
    from autocompress.profiling.lookup import table_target
    from autocompress.profiling.target import TargetError

    try:
        ptable.read(args.table)  # a lookup table of this version, or one line saying why not
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
    except (TargetError, ValueError) as e:
        sys.exit(f"error: {e}")
    ctx = next((r["context"] for r in rows if "context" in r), None)
    done = next((r for r in rows if "done" in r), None)
    if ctx is None or done is None or not ctx.get("measured_ms"):
        sys.exit(f"error: {args.table} holds no finished in-network fit with its network times; build it with "
                 "`autocompress profile-device` first")
    keep = [r for r in rows if "context" not in r and "done" not in r]
    out = Path(args.out)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))  # the grid alone, read as the build read it
    grid = ptable.read(out)
    target = table_target(grid)
    quick = bool(grid.get("quick"))
    missing = {name for name, _ in ptable.fit_nets(target, quick)} - set(ctx["measured_ms"])
    if missing:
        sys.exit(f"error: {args.table} lacks the times of {len(missing)} context networks (built by another version)")
    stored = dict(ctx["measured_ms"])
    if "rounds" not in ctx:  # built before the rounds: its times at its last mark's speed, the grid now the median's
        at_end = (marks.mark_factors(grid["marks"], marks.low_quantile(grid)) or [1.0])[-1]
        stored = {name: ms * at_end for name, ms in stored.items()}
    if args.retime:
        import numpy as np

        from autocompress.profiling.target import statistic_of

        rounds: dict[str, list[float]] = {}
        for _ in range(args.retime):  # rounds, as a build times them between its marks
            for name, model in ptable.fit_nets(target, quick):
                rounds.setdefault(name, []).append(ptable.time_sessions(model, target, quick))
        stored = {name: float(statistic_of(np.array(v), target.statistic)) for name, v in rounds.items()}
        for name, ms in stored.items():
            built = ctx["measured_ms"][name]
            print(f"  {name:50s} built {built:.4f} ms, now {ms:.4f} (x{ms / built:.3f})")
    new = ptable.context_calibration(grid, target, quick=quick, log=print, stored=stored)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep + [{"context": new}, done]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
