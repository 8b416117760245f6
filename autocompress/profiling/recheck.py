"""A table's graphs timed again where their entry disagrees with what their neighbours say.

A grid graph is timed once. On a shared machine a few seconds' disturbance slows the one graph timed in them, and the
speed marks (:mod:`.marks`, every few hundred graphs) rescale slow stretches, not one slow graph: its entry then
stands in the table for good, and the local fit carries it to every kernel a model looks up near it (two builds of
the same grid on the AVX2 EPYC of benchmarks/README.md, minutes apart, priced efficientnet_b0's depthwise 5x5
kernels near 449 channels on 2x2 pixels 1.9x apart, and two of its candidates 33-44% high). So after the grid, every
entry of a multi-feature group is compared with the fit of its neighbours without it
(:func:`.lookup.local_fit` with the entry left out), and each graph with an entry more than :data:`RATIO` times
that is timed again, in shuffled order (neighbours in the grid are timed far apart this time), and the table keeps
the faster of the two (:func:`.lookup.kept_lines`: noise on a shared core only ever slows a timing).
numpy + onnx + onnxruntime.
"""

from __future__ import annotations

import math
import random

import numpy as np

from . import marks
from .lookup import Index, local_fit

RATIO = 1.3  # an entry this much slower than its neighbours' fit is timed again


def suspects(table: dict, ratio: float = RATIO) -> dict[str, float]:
    """{graph id: how many times slower than its neighbours' fit its worst entry is} for the grid graphs (not the
    fusion patterns, not a graph already timed twice) with an entry of a multi-feature group over ``ratio``x the
    fit of the group's other entries at its features and work."""
    idx = Index(table)
    seen: dict[str, int] = {}
    for ln in table["lines"]:
        seen[ln["id"]] = seen.get(ln["id"], 0) + 1
    patterns = {ln["id"] for ln in table["lines"] if ln["spec"].get("pattern")}
    out: dict[str, float] = {}
    for g, (X, w, lt, *_) in idx.groups.items():
        if X.shape[1] < 2 or len(X) < X.shape[1] + 3:
            continue
        for i, gid in enumerate(idx.ids[g]):
            if gid in patterns or seen[gid] > 1:
                continue
            r = math.exp(lt[i]) / local_fit(X, w, lt, X[i], w[i], skip=i)
            if r > ratio:
                out[gid] = max(out.get(gid, 0.0), r)
    return out


def order(ids, seed: int = 0) -> list[str]:
    """The graphs to time again, shuffled: neighbours of the grid, timed back to back the first time, far apart."""
    out = sorted(ids)
    random.Random(seed).shuffle(out)
    return out


def summary(table: dict, ids: dict[str, float], ratio: float = RATIO) -> dict:
    """What timing again found: per graph, its second time over its first (both at the build's median speed)."""
    factors = marks.table_factors(table)
    times: dict[str, list[float]] = {}
    for i, ln in enumerate(table["lines"]):
        if ln["id"] in ids:
            times.setdefault(ln["id"], []).append(ln["wall_ms"] * (1.0 if factors is None else float(factors[i])))
    r = np.array([t[1] / t[0] for t in times.values() if len(t) > 1 and t[0] > 0])
    return {"ratio": ratio, "graphs": len(ids), "retimed": int(len(r)),
            "faster": int((r < 1 / 1.1).sum()) if len(r) else 0,
            "median_second_over_first": round(float(np.median(r)), 3) if len(r) else None}


def describe(s: dict) -> str:
    if not s["graphs"]:
        return f"re-timed no graph: every entry within {s['ratio']}x of its neighbours' fit"
    return (f"re-timed {s['retimed']} graphs with an entry over {s['ratio']}x its neighbours' fit: {s['faster']} came "
            f"out >10% faster the second time (median second/first x{s['median_second_over_first']}), the faster kept")
