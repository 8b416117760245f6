"""What a weighted kernel costs when its weights are out of the cache (issue 17; ``autocompress.profiling.cold``).

Each conv is built as the lookup table builds it and timed with 1, 16 and 64 side-by-side copies, each with its own
weights (``graphs.replicate``): per copy, warm (one copy: its weights stay in cache between runs) against cold (the
copies' weights together beyond the last-level cache, as a network's are once they outgrow it). Also the build's
own knee (``cold.cache_knee``). Each figure is the median of 3 fresh sessions, net of the per-inference overhead.
Writes ``results/cold-copies-<profile><tag>.json`` with the machine's fingerprint.

    python benchmarks/bench_cold.py --profile cpu-1thread        # ~1 min
    python benchmarks/bench_cold.py --profile cpu --tag=-2t      # 2 threads: the hand-off shows on small kernels
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RESULTS = Path(__file__).resolve().parent / "results"

# (cin, cout, pixels per side, kernel, depthwise, int8): shapes pruned zoo models run (regnet, mobilenet_v2 /
# efficientnet_b0 expansions, resnet18 pruned 11%, a depthwise conv of a pruned mobilenet)
SHAPES = [(304, 320, 2, 1, False, False), (145, 875, 2, 1, False, False), (455, 455, 4, 3, False, True),
          (253, 253, 4, 3, True, False)]
COPIES = (1, 16, 64)


def main() -> None:
    from autocompress.config import load_profile
    from autocompress.measure import hardware
    from autocompress.profiling import cold, graphs
    from autocompress.profiling.table import time_sessions
    from autocompress.profiling.target import Target

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu-1thread")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    target = Target.from_profile(load_profile(args.profile)[0])

    def ms(model) -> float:
        return time_sessions(model, target, False)
    overhead = ms(graphs.identity_graph((target.batch_size, 3, 32, 32)))

    def per_copy(model, n) -> float:
        return max(ms(model) - overhead, 0.0) / n
    rows = []
    for cin, cout, h, k, dw, int8 in SHAPES:
        base = graphs.conv_graph(target.batch_size, cin, cout, h, k, 1, dw, int8, act=None if int8 else "Relu")
        us = {n: round(per_copy(graphs.replicate(base, n), n) * 1e3, 1) for n in COPIES}
        wbytes = cold.weight_bytes(dict(op="conv", cin=cin, cout=cout, k=k, dw=dw, dtype="int8" if int8 else "fp32"))
        rows.append({"conv": f"{'dw ' if dw else ''}{k}x{k} {cin}->{cout} on {h}x{h} {'int8' if int8 else 'fp32'}",
                     "weight_bytes": wbytes, "us_per_copy": us})
        print(f"{rows[-1]['conv']:36s} {wbytes / 1024:7.0f} KiB  us per copy: "
              + ", ".join(f"{n} copies {v}" for n, v in us.items()), flush=True)
    knee = cold.cache_knee(per_copy, quick=False)
    print(f"knee (256 -> 256 1x1 on 2x2, copies {knee['knee_copies']}): {knee['cache_bytes'] / 2**20:.1f} MiB; "
          f"us per copy {[round(t * 1e3, 1) for t in knee['knee_ms']]}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cold-copies-{args.profile}{args.tag}.json"
    out.write_text(json.dumps({"profile": args.profile, "fingerprint": hardware.fingerprint(),
                               "overhead_ms": overhead, "rows": rows, "knee": knee}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
