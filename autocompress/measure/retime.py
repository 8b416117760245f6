"""Speedups that hold: re-time models against the baseline in several independent windows.

A latency figure taken in one call can look precise (a tight bootstrap CI over its rounds) and still move
2x at the next call: the CI sees the noise inside the call, not what changes between calls (another
process starting, the hypervisor taking a core, a fresh process placing its memory differently). So the
figures a user is shown are re-measured here: every model is timed interleaved with the baseline, as in the
search, in ``windows`` fresh processes one after another (optionally ``gap_s`` apart), and the spread
*across* windows is the uncertainty reported. A window during which other processes or the hypervisor took
a visible share of the CPUs (:class:`~autocompress.measure.hardware.MachineWindow`) is flagged and left out
when at least two undisturbed windows remain. "agree" means the used windows are within ``target_cv``.

Windows that disagree get more windows: a model whose first ``windows`` disagree is timed again, alone with the
baseline, in further fresh processes up to ``max_windows`` in all, and its figure is the median of them all. On
these 2-vCPU machines one window in five can land 25-40% off for one model while the others stay put
(benchmarks/README.md, issue 14); the median of five is not moved by one such window, the median of three can be.

``latency_windows`` runs the same windows without a baseline: absolute times, each model at its own input shape (the
predict mode's whole-model calibration, timed away from the process that built its models with torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
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
    threads: int | None = None  # intra-op threads the windows timed with (why windows disagree depends on it)

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
        shape = job["shapes"][label] if job.get("shapes") else job["shape"]
        r = measure_latency(path, profile, shape, baseline_path=job["baseline"], seed=job["seed"])
        out[label] = {"speedup": r.speedup, "latency_ms": r.median_ms, "baseline_ms": r.baseline_median_ms,
                      "ci": r.speedup_ci, "stop": r.stop_reason, "machine": r.machine,
                      "stat_ms": r.stat_ms(profile.latency.statistic)}
    return out


def extra_windows_up_to(windows: int) -> int:
    """How many windows a model may get in all when its first ``windows`` disagree (one asked for: one)."""
    return windows + 2 if windows >= 2 else windows


def _run_window(spec: Path, w: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "autocompress.measure.retime", str(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"re-timing window {w} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def retime(models: Mapping[str, str | Path], baseline: str | Path, profile, shape: Sequence[int], *,
           windows: int = 3, max_windows: int | None = None, gap_s: float = 0.0, seed: int = 0,
           target_cv: float = TARGET_CV, log: Callable[[str], None] = lambda s: None) -> dict[str, Retimed]:
    """Re-time ``models`` (label -> ONNX path) against ``baseline`` in ``windows`` fresh processes; a model whose
    windows disagree gets further windows up to ``max_windows`` (default ``windows + 2``; one window: none)."""
    if windows < 1:
        raise ValueError("windows must be >= 1")
    max_windows = max(windows, extra_windows_up_to(windows) if max_windows is None else max_windows)
    job = {"profile": profile.model_dump(), "shape": [int(v) for v in shape], "baseline": str(baseline),
           "models": {k: str(v) for k, v in models.items()}, "seed": int(seed)}
    runs: dict[str, list[dict]] = {k: [] for k in job["models"]}
    todo = list(job["models"])
    w = 0
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "job.json"
        while todo and w < max_windows:
            if w and gap_s > 0:
                time.sleep(gap_s)
            spec.write_text(json.dumps({**job, "models": {k: job["models"][k] for k in todo}}))
            t = time.perf_counter()
            res = _run_window(spec, w + 1)
            for k, v in res.items():
                runs[k].append(v)
            flagged = sum(bool(v["machine"] and v["machine"].get("disturbed")) for v in res.values())
            extra = w >= windows
            log(f"re-timing window {w + 1}/{windows if not extra else max_windows}: {len(res)} models in "
                f"{time.perf_counter() - t:.0f} s" + (" (their earlier windows disagreed)" if extra else "")
                + (f" ({flagged} timed while the machine was disturbed)" if flagged else ""))
            w += 1
            if w >= windows:
                todo = [k for k in todo if not _summary(k, job["models"][k], runs[k], target_cv).agree]
    threads = profile.intra_op_threads or os.cpu_count() or 1  # 0 in a profile: ONNX Runtime's default, every core
    return {k: replace(_summary(k, job["models"][k], runs[k], target_cv), threads=threads) for k in job["models"]}


def latency_windows(models: Mapping[str, tuple[str | Path, Sequence[int]]], profile, *, windows: int = 3,
                    seed: int = 0) -> dict[str, list[float]]:
    """Each model (label -> (ONNX path, input shape)) timed alone, as the profile says (its statistic), in
    ``windows`` fresh processes one after another: {label: [ms per window]}. A fresh process holds no state of
    the work that built the models (timed in the process that had just built them with torch, zoo models ran at
    x0.83-x2.25 their fresh-process figure over four runs, benchmarks/bench_inprocess.py)."""
    if windows < 1:
        raise ValueError("windows must be >= 1")
    job = {"profile": profile.model_dump(), "shape": None, "baseline": None, "seed": int(seed),
           "models": {k: str(v[0]) for k, v in models.items()},
           "shapes": {k: [int(d) for d in v[1]] for k, v in models.items()}}
    out: dict[str, list[float]] = {k: [] for k in models}
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "job.json"
        spec.write_text(json.dumps(job))
        for w in range(windows):
            for k, v in _run_window(spec, w + 1).items():
                out[k].append(float(v["stat_ms"]))
    return out


def _summary(label: str, path: str, per_window: list[dict], target_cv: float) -> Retimed:
    return summarise(label, path, [v["speedup"] for v in per_window],
                     [bool(v["machine"] and v["machine"].get("disturbed")) for v in per_window], target_cv,
                     latency_ms=[v["latency_ms"] for v in per_window], baseline_ms=[v["baseline_ms"] for v in per_window])


def main(argv: list[str] | None = None) -> int:
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    print(json.dumps(_window(job)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
