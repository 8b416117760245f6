"""Speed marks: the device's speed timed between the phases of a table's build, so the whole grid sits at one speed.

A grid of ~5,600 graphs takes 8 minutes or more, and a shared machine's speed moves within that time: on the AVX2
EPYC of benchmarks/README.md two level-setting steps of one build, minutes apart, saw speeds 1.4x apart, and the
same 20 models ran 17% faster half an hour later. A kernel timed in a slow patch then stays slow in the table for
good, and the models whose kernels came from that patch are predicted slow against the others. So every
:data:`EVERY` graphs (and when a build starts or resumes, and at the end of the grid) a few small reference networks
are timed whole (:func:`take`, a ``{"mark": ...}`` line of the table), and each graph's kernels are rescaled to the
speed of the *last* mark (:func:`line_factors`, linear between the marks around the graph), the one taken right
before the in-network fit that sets the table's level. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import datetime as _dt
from typing import Callable

import numpy as np

EVERY = 400  # graphs between two marks (~22 s of grid on a quiet AVX2 core, 16 marks in a 318-s build)
REPEATS = 3  # fresh sessions per reference network, taken together with the target's statistic


SENTINELS = ("resnet w24-48-96 32px", "mobilenet w16-32-48-96 e4 32px")  # context networks (table.context_nets)


def sentinels(context: list[tuple[str, bytes]], quick: bool) -> list[tuple[str, bytes]]:
    """The reference networks a mark times, from the table's context networks: the two smallest families (residual,
    inverted-residual) in each dtype the target runs; the first one only in a quick build."""
    keep = SENTINELS[:1] if quick else SENTINELS
    return [(name, model) for name, model in context if name.rsplit(" ", 1)[0] in keep]


def take(target, quick: bool, nets: list[tuple[str, bytes]], *, time_sessions: Callable) -> dict:
    """One mark: each of ``nets`` timed whole in :data:`REPEATS` fresh sessions (``table.time_sessions``: as the grid
    times its graphs) and the UTC time."""
    ms = {name: time_sessions(model, target, quick, REPEATS) for name, model in nets}
    return {"ms": ms, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def line_factors(n_lines: int, marks: list[dict]) -> np.ndarray | None:
    """Per graph line (in file order), the factor that brings its times to the last mark's speed: for each sentinel,
    its time at the last mark over its time where the line was timed (linear between the marks taken before and
    after it, by line position), the median over the sentinels. ``marks``: ``{"pos": lines before it, "ms": {...}}``
    in file order. None without two marks to compare (a table built before marks, or one mark only)."""
    marks = [m for m in marks if m.get("ms")]
    if len(marks) < 2 or n_lines == 0:
        return None
    names = sorted(set.intersection(*(set(m["ms"]) for m in marks)))
    if not names:
        return None
    pos = np.array([float(m["pos"]) for m in marks])
    last = marks[-1]["ms"]
    at = np.arange(n_lines) + 0.5  # a line sits between the marks taken before (pos <= i) and after it
    per = []
    for name in names:
        t = np.array([m["ms"][name] for m in marks])
        per.append(last[name] / np.interp(at, pos, t))
    return np.median(np.array(per), axis=0)


def describe(factors: np.ndarray | None, n_marks: int) -> str:
    if factors is None:
        return "speed marks: fewer than two, the grid's times are used as measured"
    lo, hi = float(np.min(factors)), float(np.max(factors))
    return (f"speed marks: {n_marks} taken; the grid's graphs ran at x{1 / hi:.3f}-x{1 / lo:.3f} the last mark's "
            f"times, each rescaled to it")
