"""A table's in-network fit taken again by this checkout's code, from the network times the table stored at its build:
the context networks are not timed again (their ``measured_ms`` stand in for ``table.time_sessions``), only their
profiles, which split each wall time over its kernels, are listed again. For comparing two fits on one build's
timings (``bench_predict.py --table NEW --compare-table OLD``) without the device's speed between two builds in it.

    python benchmarks/refit_context.py OLD.table.jsonl NEW.table.jsonl
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
    args = ap.parse_args()
    from autocompress.profiling import table as ptable
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
    for m in grid["marks"]:
        m.pop("nets", None)  # the stored times are already each network's statistic over its rounds
    target = table_target(grid)
    names = {model: name for name, model in ptable.context_nets(target.batch_size, target.int8)}
    missing = set(names.values()) - set(ctx["measured_ms"])
    if missing:
        sys.exit(f"error: {args.table} lacks the times of {len(missing)} context networks (built by another version)")
    ptable.time_sessions = lambda model, target, quick, n=3: ctx["measured_ms"][names[model]]
    new = ptable.context_calibration(grid, target, quick=bool(grid.get("quick")), log=print)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep + [{"context": new}, done]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
