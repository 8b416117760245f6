"""Search around the front's fast end: mutations of the fastest candidate that meets the constraints.

Why: at the budgets people run (24 trials: NSGA-II's population is 6) the sampler proposes per-stage sparsities
spread over the whole range, and on a task the seeds already serve well every one of them is slower than a
finished seed: on the custom CNN all 10 sampled trials stopped at the gate, dominated before training
(benchmarks/README.md, bench_ladder), so the run's fastest model was its seed. A mutation of the fastest feasible
candidate raises one stage's sparsity by one or two steps of the range (and, half the time, lowers another's by
one step: an exchange), so it is faster than a model that already meets the constraints, passes the gate, and its
distillation says whether that stage could give more. When it meets the constraints too it is the next parent:
a hill climb along the fast end, beside the sampler's global proposals.

The loop (search/loop.py) enqueues one when the space's ``explore`` share of the trials after the seeds is not yet
reached; the trial carries :data:`EXPLORE_ATTR` and its record ``parent`` (the trial it mutates). Pure Python.
"""

from __future__ import annotations

import random
from typing import Any, Collection, Iterable, Mapping, Sequence

EXPLORE_ATTR = "explore"  # Optuna user attribute on a mutation's trial: the number of the trial it mutates


def sparsity_names(params: Mapping[str, Any], names: Collection[str] | None = None) -> list[str]:
    """The searched sparsity parameters of a candidate ('sparsity' or 'sparsity.<stage or layer>'), only those in
    ``names`` when given (the ones the space's main range governs, not a pattern's own range)."""
    return sorted(k for k, v in params.items() if (k == "sparsity" or k.startswith("sparsity.")) and isinstance(v, (int, float))
                  and not isinstance(v, bool) and (names is None or k in names))


def _on_grid(v: float, low: float, step: float | None) -> float:
    return round(low + round((v - low) / step) * step, 6) if step else round(v, 6)


def mutate(params: Mapping[str, Any], low: float, high: float, step: float | None, rng: random.Random,
           names: Collection[str] | None = None) -> dict | None:
    """One mutation of ``params``: a sparsity below ``high`` raised by one or two steps (to ``high`` at most) and,
    half the time, another above ``low`` lowered by one step. None when no sparsity can be raised."""
    names = sparsity_names(params, names)
    step = step or 0.05
    up = [n for n in names if float(params[n]) < high - 1e-9]
    if not up:
        return None
    out = dict(params)
    n = rng.choice(up)
    out[n] = min(high, max(low, _on_grid(float(params[n]) + rng.choice((1, 2)) * step, low, step)))
    down = [m for m in names if m != n and float(params[m]) > low + 1e-9]
    if down and rng.random() < 0.5:
        m = rng.choice(down)
        out[m] = max(low, _on_grid(float(params[m]) - step, low, step))
    return out


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 6) if isinstance(v, float) else v) for k, v in params.items()))


def propose(parents: Sequence[tuple[int, Mapping[str, Any]]], known: Iterable[Mapping[str, Any]], low: float, high: float,
            step: float | None, rng: random.Random, tries: int = 12, names: Collection[str] | None = None
            ) -> tuple[int, dict] | None:
    """(parent number, new params) from the first of ``parents`` (fastest first) with a mutation no trial has run
    (``known``: the parameters of every trial run, running or queued), or None."""
    seen = {_key(p) for p in known}
    for number, params in parents:
        if not sparsity_names(params, names):
            continue
        for _ in range(tries):
            new = mutate(params, low, high, step, rng, names)
            if new is None:
                break
            if _key(new) not in seen:
                return number, new
    return None


def due(share: float, mutations: int, sampled: int) -> bool:
    """Whether the next trial after the seeds should be a mutation: mutations stay at ``share`` of the trials after
    the seeds (those the sampler proposed and the mutations), counting the one about to run."""
    return share > 0 and mutations < share * (mutations + sampled + 1)
