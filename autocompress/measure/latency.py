"""Latency of the deployable ONNX artifact, measured in ONNX Runtime on the profile, with its speedup over
a baseline measured alongside it.

How (FIELD_NOTES, latency section and pitfalls 7-9):

* one sample = a *block* of ``k`` consecutive runs timed together (``k`` chosen once so a block lasts
  about ``profile.latency.block_ms``): sub-millisecond models have a per-run CV above 100%;
* baseline and candidate alternate block by block in ABBA order (B C, C B, B C...) so slow drift of the
  machine (9.6 -> 26 ms over ten minutes was seen) hits both alike; each block is preceded by untimed
  runs after the switch (alternating run by run inflated sub-ms latencies 2.6-3.5x);
* one session runs at a time (they slow each other down);
* speedup = median over rounds of (baseline block / candidate block), per run; a bootstrap over rounds
  gives its confidence interval, and rounds go on until the CI is tight, the time cap or max_rounds.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from ..config import HardwareProfile
from ..errors import StageError
from ..profiling.target import statistic_of
from . import hardware

N_BOOT = 500
MAX_BLOCK_RUNS = 10_000


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    mean_ms: float
    cv: float  # std/mean of the candidate's per-run-normalised block samples
    n_samples: int  # candidate blocks timed
    runs_per_sample: int  # k: runs per candidate block
    baseline_median_ms: float | None
    speedup: float | None
    speedup_ci: tuple[float, float] | None  # 95% bootstrap CI over rounds
    stop_reason: str  # "converged" | "time_cap" | "max_rounds" | "single"
    load_avg: float  # 1-minute load average at the start (a busy machine makes figures suspect)
    mode: str = "measure"
    cand_samples_ms: tuple[float, ...] = ()  # per-run ms of each candidate block, in round order
    base_samples_ms: tuple[float, ...] = ()  # the baseline's, same rounds (empty without a baseline)
    # what the machine did while the rounds ran (hardware.MachineWindow): steal_pct, others_pct, mhz, disturbed
    machine: dict | None = None

    @property
    def disturbed(self) -> bool:
        """True when other processes or the hypervisor took a visible share of the CPUs during the rounds."""
        return bool(self.machine and self.machine.get("disturbed"))

    @property
    def busy(self) -> bool:
        """True when the machine was visibly loaded at the start (load >= half the cores)."""
        return self.load_avg >= max(1.0, 0.5 * (os.cpu_count() or 1))

    def stat_ms(self, statistic: str) -> float:
        """The model's latency as the profile's statistic reads it (``latency.statistic``: the p10 of the blocks for
        the two-thread ``cpu`` profile, where other processes only ever slow a block down), not always the median."""
        if not self.cand_samples_ms or statistic == "median":
            return self.median_ms
        return float(_stat(np.asarray(self.cand_samples_ms), statistic))


# ---------------------------------------------------------------- timing primitives
class Runner:
    """One session with its input bound once (IOBinding: no numpy conversion inside the timed loop)."""

    def __init__(self, session: ort.InferenceSession, feed: np.ndarray):
        self.session = session
        self.binding = session.io_binding()
        self.binding.bind_cpu_input(session.get_inputs()[0].name, feed)
        for o in session.get_outputs():
            self.binding.bind_output(o.name)
        self._run = session.run_with_iobinding
        self.k = 1

    def run(self, n: int = 1) -> None:
        run, b = self._run, self.binding
        for _ in range(n):
            run(b)

    def block(self, k: int | None = None) -> float:
        """Seconds for ``k`` consecutive runs timed together."""
        k = self.k if k is None else k
        run, b = self._run, self.binding
        t0 = time.perf_counter()
        for _ in range(k):
            run(b)
        return time.perf_counter() - t0

    def calibrate(self, block_ms: float, max_probe_s: float = 0.5) -> float:
        """Choose k so a block lasts ~block_ms; returns the per-run estimate in ms."""
        times = []
        t_end = time.perf_counter() + max_probe_s
        while len(times) < 5 or (len(times) < 50 and sum(times) < block_ms / 1e3 and time.perf_counter() < t_end):
            times.append(self.block(1))
            if len(times) >= 3 and time.perf_counter() > t_end:
                break
        per_run_ms = float(np.median(times)) * 1e3
        self.k = int(min(MAX_BLOCK_RUNS, max(1, round(block_ms / max(per_run_ms, 1e-4)))))
        return per_run_ms

    def switch_runs(self, block_ms: float, per_run_ms: float) -> int:
        # 2 untimed runs after a switch; 1 when a single run already lasts longer than half a block
        return 1 if per_run_ms > block_ms / 2 else 2


def random_input(session: ort.InferenceSession, shape: Sequence[int], seed: int) -> np.ndarray:
    dtype = hardware.input_dtype(session)
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, 0), min(info.max, 255), size=tuple(shape), endpoint=True).astype(dtype)
    return rng.standard_normal(tuple(shape)).astype(dtype)


def prepare(session: ort.InferenceSession, shape: Sequence[int], seed: int, what: str, stage: str = "latency") -> Runner:
    hardware.check_input_shape(session, shape, stage, what)
    r = Runner(session, random_input(session, shape, seed))
    try:
        r.run(1)
    except Exception as e:
        raise StageError(stage, f"{what} rejected input of shape {list(shape)}: {hardware._one_line(e)}") from None
    return r


def time_blocks(runner: Runner, n_blocks: int, block_ms: float, warmup: int = 2) -> np.ndarray:
    """Per-run ms of ``n_blocks`` blocks of one session on its own (used by the lookup-table builder)."""
    runner.run(warmup)
    per_run = runner.calibrate(block_ms)
    runner.run(runner.switch_runs(block_ms, per_run))
    return np.array([runner.block() / runner.k * 1e3 for _ in range(n_blocks)])


# ---------------------------------------------------------------- statistics (pure, tested)
def _stat(x: np.ndarray, statistic: str, axis: int = -1) -> np.ndarray:
    return statistic_of(x, statistic, axis)  # the target side's, so a table and a measurement read blocks alike


def speedup_estimate(base_ms: np.ndarray, cand_ms: np.ndarray, statistic: str = "median") -> np.ndarray:
    """Speedup from paired per-round samples (last axis = rounds).

    median (default): median of per-round ratios. A ratio pairs two blocks taken seconds apart, so drift
    of the machine between rounds cancels; the median then ignores the odd round that another process
    disturbed. The ratio of medians does not pair samples and follows drift that differs between the
    halves of the run (tested in tests/test_latency.py). mean / p90 / p10 / min: ratio of those statistics
    (a quantile has no per-round meaning). p10 and min estimate the undisturbed cost when the noise is
    one-sided (other processes only ever slow a block down), as with several threads on shared cores.
    """
    base_ms, cand_ms = np.asarray(base_ms, float), np.asarray(cand_ms, float)
    if statistic == "median":
        return np.median(base_ms / cand_ms, axis=-1)
    return _stat(base_ms, statistic) / _stat(cand_ms, statistic)


def bootstrap_ci(fn: Callable[[np.ndarray], np.ndarray], n: int, seed: int, n_boot: int = N_BOOT,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``fn(idx)`` where idx (n_boot, n) resamples rounds with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    vals = fn(idx)
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return float(lo), float(hi)


def speedup_ci(base_ms, cand_ms, statistic: str = "median", seed: int = 0) -> tuple[float, float]:
    b, c = np.asarray(base_ms, float), np.asarray(cand_ms, float)
    return bootstrap_ci(lambda idx: speedup_estimate(b[idx], c[idx], statistic), len(b), seed)


def rel_half_width(ci: tuple[float, float], centre: float) -> float:
    return (ci[1] - ci[0]) / 2 / centre if centre > 0 else float("inf")


# ---------------------------------------------------------------- the measurement
def measure_latency(candidate_path, profile: HardwareProfile, input_shape: Sequence[int], *,
                    baseline_path=None, seed: int = 0) -> LatencyResult:
    """Measure the candidate (and the baseline alongside it, when given) as the profile says."""
    spec = profile.latency
    load = hardware.load_average()
    cand = prepare(hardware.make_session(candidate_path, profile), input_shape, seed, "candidate")
    base = None
    if baseline_path is not None:
        base = prepare(hardware.make_session(baseline_path, profile), input_shape, seed, "baseline")
    t_start = time.perf_counter()
    window = hardware.MachineWindow()

    runners = [r for r in (base, cand) if r is not None]
    per_run: dict[int, float] = {}
    for r in runners:  # warm-up each session, then size its blocks (each session its own k)
        r.run(spec.warmup)
        per_run[id(r)] = r.calibrate(spec.block_ms)

    base_s: list[float] = []  # per-run ms, one per round
    cand_s: list[float] = []
    stop = "max_rounds"
    for rnd in range(spec.max_rounds):
        order = runners if rnd % 2 == 0 else runners[::-1]  # ABBA: B C | C B | B C ...
        for r in order:
            if len(runners) > 1 or rnd == 0:
                r.run(r.switch_runs(spec.block_ms, per_run[id(r)]))
            ms = r.block() / r.k * 1e3
            (cand_s if r is cand else base_s).append(ms)
        n = rnd + 1
        if n < spec.min_rounds:
            continue
        if n >= 3:
            if base is not None:
                sp = float(speedup_estimate(np.array(base_s), np.array(cand_s), spec.statistic))
                ci = speedup_ci(base_s, cand_s, spec.statistic, seed)
                rel = rel_half_width(ci, sp)
            else:
                c = np.array(cand_s)
                ci = bootstrap_ci(lambda idx: _stat(c[idx], spec.statistic), n, seed)
                rel = rel_half_width(ci, float(_stat(c, spec.statistic)))
            if rel <= spec.target_ci:
                stop = "converged"
                break
        if time.perf_counter() - t_start > spec.time_cap_s:
            stop = "time_cap"
            break
    if spec.max_rounds == 1:
        stop = "single"
    machine = window.stop()

    c = np.array(cand_s)
    speedup = ci_out = base_med = None
    if base is not None:
        b = np.array(base_s)
        base_med = float(np.median(b))
        speedup = float(speedup_estimate(b, c, spec.statistic))
        ci_out = speedup_ci(b, c, spec.statistic, seed) if len(c) >= 2 else (speedup, speedup)
    mean = float(np.mean(c))
    return LatencyResult(
        median_ms=float(np.median(c)),
        p90_ms=float(np.percentile(c, 90)),
        mean_ms=mean,
        cv=float(np.std(c) / mean) if mean > 0 else 0.0,
        n_samples=len(c),
        runs_per_sample=cand.k,
        baseline_median_ms=base_med,
        speedup=speedup,
        speedup_ci=ci_out,
        stop_reason=stop,
        load_avg=load,
        cand_samples_ms=tuple(float(x) for x in cand_s),
        base_samples_ms=tuple(float(x) for x in base_s),
        machine=machine,
    )
