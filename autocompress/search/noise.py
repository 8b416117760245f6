"""How the search compares two candidates' speed when their speedups were measured minutes apart.

Two speedups measured in different windows with two threads differ by 10-15% from time alone
(benchmarks/README.md, bench_latency_repeatability and "Depth moves half the time"); MACs have no noise. So,
within :data:`SPEED_NOISE` of a reference model's speedup, a candidate at the same precision (an fp32 MAC costs
more than an int8 one) with :data:`MACS_MARGIN` fewer MACs counts as the faster bet. Finishing (search/finish.py)
and the choice of mutation parents (search/explore.py) both use this rule. Pure Python.
"""

from __future__ import annotations

from typing import Any

SPEED_NOISE = 0.15  # the 2-thread spread of one speedup measured in another window
MACS_MARGIN = 0.10  # within SPEED_NOISE, this much less compute counts as faster


def precision(rec: Any) -> Any:
    """The candidate's default bit-width (``'int8'``, ``'fp32'``, ...)."""
    return dict(rec.candidate.bits).get("_default")


def less_compute(rec: Any, ref: Any | None, *, noise: float = SPEED_NOISE, margin: float = MACS_MARGIN) -> bool:
    """Whether ``rec`` (a TrialRecord) is within ``noise`` of ``ref``'s speedup, at the same precision, with at least
    ``margin`` fewer MACs: within the noise of two measurements, and clearly less compute."""
    if ref is None or not ref.metrics.macs or rec.metrics.macs is None or rec.metrics.speedup is None:
        return False
    return (precision(rec) == precision(ref) and rec.metrics.speedup >= (ref.metrics.speedup or 0.0) * (1 - noise)
            and rec.metrics.macs <= ref.metrics.macs * (1 - margin))
