"""Does a model time slow in the process that just built it with torch? The same pruned zoo models (the whole-model
calibration's first six, ``predict.CALIBRATION_MODELS``, fp32 and int8) timed three ways with the profile's rules:
in this process right after each was built (how ``calibrate_table`` timed them until the twenty-fourth session),
in this process again after every build and a 3 s pause, and in three fresh processes that never ran torch
(``retime.latency_windows``, the median). Prints one line per model with the ratios to the fresh figure.

    python benchmarks/bench_inprocess.py --profile cpu-1thread     # ~1 min on a quiet machine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from autocompress.config import load_profile
    from autocompress.measure import hardware, predict
    from autocompress.measure.latency import measure_latency
    from autocompress.measure.retime import latency_windows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu-1thread")
    ap.add_argument("--n", type=int, default=6, help="calibration models (each fp32 and int8)")
    args = ap.parse_args()
    prof, _ = load_profile(args.profile)
    stat = prof.latency.statistic
    print(f"{hardware.fingerprint()['cpu']}; load {hardware.load_average():.1f}; profile {prof.name} ({stat})")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        built = {}
        for arch, ratio, size, seed in predict.CALIBRATION_MODELS[: args.n]:
            fp32, q = predict.build_candidate(arch, ratio, size, seed, d)
            for dt, p in (("fp32", fp32), ("int8", q)):
                k, shape = f"{arch} r={ratio} {size}px {dt}", (1, 3, size, size)
                rows[k] = {"right_after": measure_latency(p, prof, shape, seed=seed).stat_ms(stat)}
                built[k] = (p, shape)
        time.sleep(3)
        for k, (p, shape) in built.items():
            rows[k]["later"] = measure_latency(p, prof, shape, seed=0).stat_ms(stat)
        fresh = latency_windows(built, prof, windows=3)
    for k, r in rows.items():
        f = float(np.median(fresh[k]))
        print(f"{k:34s} right after the build {r['right_after']:7.3f} ms (x{r['right_after'] / f:.2f})  later "
              f"{r['later']:7.3f} ms (x{r['later'] / f:.2f})  fresh processes {f:7.3f} ms {np.round(fresh[k], 3).tolist()}")
    for dt in ("fp32", "int8"):
        f = {k: float(np.median(fresh[k])) for k in rows if k.endswith(dt)}
        now, later = ([rows[k][w] / f[k] for k in f] for w in ("right_after", "later"))
        print(f"{dt}: against the fresh processes' figure, right after the build x{min(now):.2f}-x{max(now):.2f} "
              f"(median x{np.median(now):.2f}), after every build x{min(later):.2f}-x{max(later):.2f} "
              f"(median x{np.median(later):.2f})")


if __name__ == "__main__":
    main()
