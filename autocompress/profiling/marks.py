"""Speed marks: the device's speed timed between the phases of a table's build, so the whole grid sits at one speed.

A grid of ~5,600 graphs takes 8 minutes or more, and a shared machine's speed moves within that time: on the AVX2
EPYC of benchmarks/README.md two level-setting steps of one build, minutes apart, saw speeds 1.4x apart, and the
same 20 models ran 17% faster half an hour later. A kernel timed in a slow patch then stays slow in the table for
good, and the models whose kernels came from that patch are predicted slow against the others. So every
:data:`EVERY` graphs (and when a build starts or resumes, and at the end of the grid) a few small reference networks
are timed whole (:func:`take`, a ``{"mark": ...}`` line of the table), and each graph's kernels are rescaled to the
build's typical speed, the median of the marks (:func:`line_factors`, linear between the marks around the graph), as
is everything else the build times (the in-network fit's networks: :func:`mark_factors`); a table's level is not one
moment's, the last mark's, which a burst in its three seconds moved for good. Every :data:`ROUND_EVERY`-th mark
during the grid also times the table's context networks (a round, ``"nets"``): the in-network fit takes each
network's time as the statistic of its rounds and its final timing, each brought to the build's typical speed
(:func:`context_rounds`), not of one moment: a fresh build whose heavy networks were timed once at its end, in a
minute the shared machine's memory was busy, ran them 10-40% over the previous build's times while its reference
networks ran 3% over theirs, and predicted held-out models 4-22% high (benchmarks/README.md, thirty-fifth
session). For a low-quantile target (the two-thread ``cpu`` profile's p10) the marks are read through their lower
envelope (:func:`envelope`): there another tenant takes the second core for seconds at a time and a mark taken then
runs 1.8x its time, and a graph is not 1.8x faster for it. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import datetime as _dt
from typing import Callable

import numpy as np

EVERY = 400  # graphs between two marks (~22 s of grid on a quiet AVX2 core, 16 marks in a 318-s build)
REPEATS = 3  # fresh sessions per reference network, taken together with the target's statistic
ROUND_EVERY = 3  # marks between two rounds of the context networks (4 rounds in a 5,600-graph grid, ~10 s each)
ENVELOPE = 2  # marks either side whose least time is a low-quantile target's speed at a mark


SENTINELS = ("resnet w24-48-96 32px", "mobilenet w16-32-48-96 e4 32px")  # context networks (table.context_nets)


def sentinels(context: list[tuple[str, bytes]], quick: bool) -> list[tuple[str, bytes]]:
    """The reference networks a mark times, from the table's context networks: the two smallest families (residual,
    inverted-residual) in each dtype the target runs; the first one only in a quick build."""
    keep = SENTINELS[:1] if quick else SENTINELS
    return [(name, model) for name, model in context if name.rsplit(" ", 1)[0] in keep]


def take(target, quick: bool, nets: list[tuple[str, bytes]], *, time_sessions: Callable,
         context: list[tuple[str, bytes]] | None = None) -> dict:
    """One mark: each of ``nets`` timed whole in :data:`REPEATS` fresh sessions (``table.time_sessions``: as the grid
    times its graphs) and the UTC time; with ``context``, a round of those networks too (``"nets"``), timed as the
    in-network fit times them."""
    ms = {name: time_sessions(model, target, quick, REPEATS) for name, model in nets}
    out = {"ms": ms}
    if context:
        out["nets"] = {name: time_sessions(model, target, quick) for name, model in context}
    return {**out, "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def low_quantile(table: dict) -> bool:
    """Whether a table's graphs were timed with a low quantile (p10 / min: noise only ever slows them down)."""
    st = (table.get("timing") or {}).get("statistic") or (table.get("target") or {}).get("statistic") or "median"
    return st in ("p10", "min")


def envelope(t: np.ndarray, width: int = ENVELOPE) -> np.ndarray:
    """Each mark's time as the least of it and the ``width`` marks either side of it."""
    return np.array([t[max(0, i - width): i + width + 1].min() for i in range(len(t))])


def _speeds(marks: list[dict], low: bool) -> tuple[list[dict], list[str], dict[str, np.ndarray]]:
    """The marks with times, the sentinels all of them hold, and each sentinel's time per mark (its lower envelope
    for a low-quantile table)."""
    marks = [m for m in marks if m.get("ms")]
    names = sorted(set.intersection(*(set(m["ms"]) for m in marks))) if marks else []
    t = {n: np.array([m["ms"][n] for m in marks], float) for n in names}
    return marks, names, ({n: envelope(v) for n, v in t.items()} if low else t)


def line_factors(n_lines: int, marks: list[dict], low: bool = False) -> np.ndarray | None:
    """Per graph line (in file order), the factor that brings its times to the build's typical speed: for each
    sentinel, its median time over the marks over its time where the line was timed (linear between the marks taken
    before and after it, by line position), the median over the sentinels. ``marks``: ``{"pos": lines before it,
    "ms": {...}}`` in file order; ``low``: the table's graphs were timed with a low quantile (:func:`envelope`). None
    without two marks to compare (a table built before marks, or one mark only)."""
    marks, names, t = _speeds(marks, low)
    if len(marks) < 2 or n_lines == 0 or not names:
        return None
    pos = np.array([float(m["pos"]) for m in marks])
    at = np.arange(n_lines) + 0.5  # a line sits between the marks taken before (pos <= i) and after it
    return np.median(np.array([np.median(t[n]) / np.interp(at, pos, t[n]) for n in names]), axis=0)


def table_factors(table: dict) -> np.ndarray | None:
    """:func:`line_factors` of a table read by ``table.read``."""
    return line_factors(len(table["lines"]), table.get("marks") or [], low_quantile(table))


def mark_factors(marks: list[dict], low: bool = False) -> list[float]:
    """Per mark (those with times, in file order), the factor that brings what was timed at it to the build's
    typical speed (as :func:`line_factors`); [] without marks."""
    marks, names, t = _speeds(marks, low)
    if not names:
        return []
    return [float(np.median([np.median(t[n]) / t[n][i] for n in names])) for i in range(len(marks))]


def context_rounds(marks: list[dict], low: bool = False) -> dict[str, list[float]]:
    """Each context network's times in the rounds taken during the grid (marks with ``"nets"``), each brought to the
    build's typical speed (:func:`mark_factors`)."""
    out: dict[str, list[float]] = {}
    timed = [m for m in marks if m.get("ms")]
    for m, f in zip(timed, mark_factors(timed, low)):
        for name, ms in (m.get("nets") or {}).items():
            out.setdefault(name, []).append(ms * f)
    return out


SLOW_SPELL = 1.25  # a mark this far over its lower envelope was taken while another process held a core


def slow_spells(marks: list[dict], low: bool) -> int:
    """How many of a low-quantile table's marks were taken in a slow spell: their sentinels' median time at least
    ``SLOW_SPELL`` times its lower envelope (:func:`envelope`; the two-thread build of the thirty-sixth session had 10
    of 31, each at one thread's speed). 0 for a median table, whose marks are read as measured."""
    if not low:
        return 0
    marks, names, t = _speeds(marks, False)
    if not names:
        return 0
    over = np.median(np.array([t[n] / envelope(t[n]) for n in names]), axis=0)
    return int((over >= SLOW_SPELL).sum())


def describe(factors: np.ndarray | None, n_marks: int, slow: int = 0) -> str:
    """The build's line on its speed marks; ``slow``: how many were taken in a slow spell (:func:`slow_spells`)."""
    if factors is None:
        return "speed marks: fewer than two, the grid's times are used as measured"
    lo, hi = float(np.min(factors)), float(np.max(factors))
    spells = (f"; {slow} of them in a slow spell (another process held a core for seconds: the low quantile leaves "
              f"such spells out, but timings on this device will move as much)" if slow else "")
    return (f"speed marks: {n_marks} taken; the grid's graphs ran at x{1 / hi:.3f}-x{1 / lo:.3f} the build's median "
            f"speed, each rescaled to it" + spells)
