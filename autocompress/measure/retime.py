"""Speedups that hold: re-time models against the baseline in several independent windows.

A latency figure taken in one call can look precise (a tight bootstrap CI over its rounds) and still move
2x at the next call: the CI sees the noise inside the call, not what changes between calls (another
process starting, the hypervisor taking a core, a fresh process placing its memory differently). So the
figures a user is shown are re-measured here: every model is timed interleaved with the baseline, as in the
search, in ``windows`` fresh processes one after another (optionally ``gap_s`` apart), and the spread
*across* windows is the uncertainty reported. A window during which other processes or the hypervisor took
a visible share of the CPUs (:class:`~autocompress.measure.hardware.MachineWindow`) is flagged and left out
when at least two undisturbed windows remain. "agree" means the used windows are within ``target_cv``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

TARGET_CV = 0.05  # windows agree when the speedup's CV across them is within 5%


@dataclass(frozen=True)
class Retimed:
    label: str
    path: str
    speedups: tuple[float, ...]  # one per window, in order
    disturbed: tuple[bool, ...]  # per window: other processes / steal visible while it ran
    speedup: float  # median over the windows used
    cv: float  # std / mean of the speedup over the windows used
    spread: tuple[float, float]  # min and max over the windows used
    used: int  # windows used (undisturbed ones when at least two, else all)
    agree: bool  # cv <= target_cv over >= 2 windows
    latency_ms: tuple[float, ...] = ()  # per window: the model's median (ms), to see which side moved
    baseline_ms: tuple[float, ...] = ()  # per window: the baseline's median, timed beside it
    moved: str | None = None  # when the windows disagree: "the baseline", "the model" or "both" moved (> target_cv)

    def to_dict(self) -> dict:
        return asdict(self)


def _rel_spread(v: Sequence[float]) -> float:
    a = np.asarray([x for x in v if x is not None], float)
    return float(np.std(a) / np.mean(a)) if len(a) >= 2 and np.mean(a) > 0 else 0.0


def summarise(label: str, path: str, speedups: Sequence[float], disturbed: Sequence[bool],
              target_cv: float = TARGET_CV, latency_ms: Sequence[float] = (), baseline_ms: Sequence[float] = ()) -> Retimed:
    """Pure: combine per-window speedups into the figure and its spread (tested). With the per-window absolute
    times, a disagreement says which side moved: the baseline's or the model's time varying by more than
    ``target_cv`` across the windows."""
    s = np.asarray(speedups, float)
    quiet = ~np.asarray(disturbed, bool)
    use = s[quiet] if quiet.sum() >= 2 else s
    cv = float(np.std(use) / np.mean(use)) if len(use) >= 2 and np.mean(use) > 0 else float("nan")
    agree = bool(len(use) >= 2 and cv <= target_cv)
    moved = None
    if not agree and len(latency_ms) == len(s) == len(baseline_ms) and len(s) >= 2:
        b, m = _rel_spread(baseline_ms) > target_cv, _rel_spread(latency_ms) > target_cv
        moved = "both" if b and m else "the baseline" if b else "the model" if m else None
    return Retimed(label=label, path=path, speedups=tuple(float(v) for v in s),
                   disturbed=tuple(bool(v) for v in disturbed), speedup=float(np.median(use)), cv=cv,
                   spread=(float(use.min()), float(use.max())), used=int(len(use)), agree=agree,
                   latency_ms=tuple(float(v) for v in latency_ms), baseline_ms=tuple(float(v) for v in baseline_ms),
                   moved=moved)


def _window(job: dict) -> dict:
    """One window, in this process: every model against the baseline, interleaved (the profile's rules)."""
    from ..config import HardwareProfile
    from .latency import measure_latency

    profile = HardwareProfile(**job["profile"])
    out = {}
    for label, path in job["models"].items():
        r = measure_latency(path, profile, job["shape"], baseline_path=job["baseline"], seed=job["seed"])
        out[label] = {"speedup": r.speedup, "latency_ms": r.median_ms, "baseline_ms": r.baseline_median_ms,
                      "ci": r.speedup_ci, "stop": r.stop_reason, "machine": r.machine}
    return out


def retime(models: Mapping[str, str | Path], baseline: str | Path, profile, shape: Sequence[int], *,
           windows: int = 3, gap_s: float = 0.0, seed: int = 0, target_cv: float = TARGET_CV,
           log: Callable[[str], None] = lambda s: None) -> dict[str, Retimed]:
    """Re-time ``models`` (label -> ONNX path) against ``baseline`` in ``windows`` fresh processes."""
    if windows < 1:
        raise ValueError("windows must be >= 1")
    job = {"profile": profile.model_dump(), "shape": [int(v) for v in shape], "baseline": str(baseline),
           "models": {k: str(v) for k, v in models.items()}, "seed": int(seed)}
    per_window: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "job.json"
        spec.write_text(json.dumps(job))
        for w in range(windows):
            if w and gap_s > 0:
                time.sleep(gap_s)
            t = time.perf_counter()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.run([sys.executable, "-m", "autocompress.measure.retime", str(spec)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"re-timing window {w + 1} failed: {tail}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            per_window.append(res)
            flagged = sum(bool(v["machine"] and v["machine"].get("disturbed")) for v in res.values())
            log(f"re-timing window {w + 1}/{windows}: {len(res)} models in {time.perf_counter() - t:.0f} s"
                + (f" ({flagged} timed while the machine was disturbed)" if flagged else ""))
    out = {}
    for label, path in job["models"].items():
        sp = [w[label]["speedup"] for w in per_window]
        dist = [bool(w[label]["machine"] and w[label]["machine"].get("disturbed")) for w in per_window]
        out[label] = summarise(label, path, sp, dist, target_cv, latency_ms=[w[label]["latency_ms"] for w in per_window],
                               baseline_ms=[w[label]["baseline_ms"] for w in per_window])
    return out


def main(argv: list[str] | None = None) -> int:
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    print(json.dumps(_window(job)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
