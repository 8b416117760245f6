"""Pareto front and hypervolume: pure functions over plain numbers (no Optuna, no torch).

The front is computed from stored trial records, never from a backend, so every backend (Optuna,
Ray, several workers) gives the same answer and a report can be rebuilt offline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def to_minimization(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Flip maximised objectives so that smaller is better everywhere."""
    v = np.asarray(values, dtype=float).reshape(len(values), len(directions))
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return v * signs


def non_dominated_mask(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """True for points no other point dominates (ties are all kept)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    m = to_minimization(values, directions)
    n = len(m)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        others = np.delete(m, i, axis=0)
        if len(others) == 0:
            continue
        dominated = np.all(others <= m[i], axis=1) & np.any(others < m[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def hypervolume(values: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``values`` and bounded by ``reference`` (in the objectives' own
    units and directions). Points not strictly better than the reference in every objective add nothing.
    Exact for any number of objectives by recursive slicing (fine for the few hundred points of a run).
    """
    if len(values) == 0:
        return 0.0
    pts = to_minimization(values, directions)
    ref = to_minimization([reference], directions)[0]
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[non_dominated_mask(pts, ["minimize"] * pts.shape[1])]
    return float(_hv(pts, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    d = pts.shape[1]
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    # slice along the last objective
    order = np.argsort(pts[:, -1])
    pts = pts[order]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth <= 0:
            continue
        total += depth * _hv(pts[: i + 1, :-1], ref[:-1])
    return total
