"""Search around the front's fast end: mutations of the fastest candidate that meets the constraints.

Why: at the budgets people run (24 trials: NSGA-II's population is 6) the sampler proposes per-stage sparsities
spread over the whole range, and on a task the seeds already serve well every one of them is slower than a
finished seed: on the custom CNN all 10 sampled trials stopped at the gate, dominated before training
(benchmarks/README.md, bench_ladder), so the run's fastest model was its seed. A mutation of the fastest feasible
candidate raises one stage's sparsity by one or two steps of the range, or (half the time) drops one or more blocks
(depth; past the channel floor of ``round_to`` only depth makes a network faster), and, half the time, lowers another stage's by
one step (an exchange), so it is faster than a model that already meets the constraints, passes the gate, and its
distillation says whether that stage could give more. When it meets the constraints too it is the next parent:
a hill climb along the fast end, beside the sampler's global proposals. "Fastest" is taken with the noise of a
speedup in mind: a feasible model within that noise of the fastest with clearly fewer MACs comes first (:func:`parents`).

The loop (search/loop.py) enqueues one when the space's ``explore`` share of the trials after the seeds is not yet
reached; the trial carries :data:`EXPLORE_ATTR` and its record ``parent`` (the trial it mutates). Pure Python.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

from .noise import less_compute

EXPLORE_ATTR = "explore"  # Optuna user attribute on a mutation's trial: the number of the trial it mutates


def sparsity_names(params: Mapping[str, Any], names: Collection[str] | None = None) -> list[str]:
    """The searched sparsity parameters of a candidate ('sparsity' or 'sparsity.<stage or layer>'), only those in
    ``names`` when given (the ones the space's main range governs, not a pattern's own range)."""
    return sorted(k for k, v in params.items() if (k == "sparsity" or k.startswith("sparsity.")) and isinstance(v, (int, float))
                  and not isinstance(v, bool) and (names is None or k in names))


def _on_grid(v: float, low: float, step: float | None) -> float:
    return round(low + round((v - low) / step) * step, 6) if step else round(v, 6)


DEPTH = "depth.drop"  # the searched number of dropped blocks (space.sample_candidate)


def mutate(params: Mapping[str, Any], low: float, high: float, step: float | None, rng: random.Random,
           names: Collection[str] | None = None, max_steps: int = 2, depth: Sequence[int] = ()) -> dict | None:
    """One mutation of ``params``: a sparsity below ``high`` raised by 1 to ``max_steps`` steps (to ``high`` at
    most), or (half the time when it can move) the number of dropped blocks raised to one of the next
    ``max_steps // 2`` (at least one) of its allowed values ``depth``; and, half the time, another sparsity above
    ``low`` lowered by one step. None when nothing can be raised."""
    names = sparsity_names(params, names)
    step = step or 0.05
    up = [n for n in names if float(params[n]) < high - 1e-9]
    deeper = sorted(v for v in depth if DEPTH in params and v > int(params[DEPTH]))
    if not up and not deeper:
        return None
    out = dict(params)
    # width or depth, half the time each when both can move: depth as one choice among the stages came up in one
    # mutation of six, and on a model whose gain is in its blocks (the custom CNN, 8.3x -> 16.3x with them gone)
    # the climb spent the budget raising stages (benchmarks/README.md, "Depth in the search", sampler seed 1)
    n = DEPTH if deeper and (not up or rng.random() < 0.5) else rng.choice(up)
    if n == DEPTH:
        out[n] = deeper[min(len(deeper), rng.randint(1, max(1, max_steps // 2))) - 1]
    else:
        out[n] = min(high, max(low, _on_grid(float(params[n]) + rng.randint(1, max(1, max_steps)) * step, low, step)))
    down = [m for m in names if m != n and float(params[m]) > low + 1e-9]
    if down and rng.random() < 0.5:
        m = rng.choice(down)
        out[m] = max(low, _on_grid(float(params[m]) - step, low, step))
    return out


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, round(v, 6) if isinstance(v, float) else v) for k, v in params.items()))


def network_key(params: Mapping[str, Any], groups: Mapping[str, Sequence[str]], widths: Mapping[str, int],
                round_to: int | None) -> tuple:
    """What decides a pruned candidate's network and recipe: the channels each layer keeps (after the profile's
    rounding: 90% and 95% of a 64-channel stage both keep 16 at ``round_to`` 16) and the other parameters. Two
    parameter sets with one key build one network; without ``widths`` the parameters themselves are the key."""
    if not widths:
        return _key(params)
    from ..compress.channels import kept

    ratio: dict[str, float] = {}
    for name in sorted(sparsity_names(params)):  # 'sparsity' first: a stage's or a layer's own value overrides it
        v = float(params[name])
        sub = name[len("sparsity."):] if name != "sparsity" else None
        layers = widths if sub is None else groups.get(sub, [sub] if sub in widths else [])
        ratio.update({n: v for n in layers})
    channels = tuple(sorted((n, kept(w, ratio.get(n, 0.0), round_to)) for n, w in widths.items()))
    return channels, _key({k: v for k, v in params.items() if k not in sparsity_names(params)})


def parents(feasible: Iterable[Any], max_drop: float | None = None) -> list[tuple[int, dict, int]]:
    """(number, params, max_steps) of the records that may be mutated, best bet first: pruned students that met the
    constraints, not finishing trials (their accuracy came from a larger KD budget than their parameters, and so
    a mutation's, say). Order: those within the noise of the fastest one's speedup with clearly fewer MACs at its
    precision (search/noise.py), fewest MACs first, then the others fastest first. Why: a single 2-thread speedup
    moves 10-15% between windows, and the climb followed a noisy-high seed (custom CNN, sampler seed 1: the
    sensitivity-70% seed measured 8.17x in the run, below the uniform 70% seed re-timed with one thread; its
    mutations stopped at the gate while the uniform 90% seed, 7.92x with 35% fewer MACs, was never mutated;
    benchmarks/README.md "Depth moves half the time"). ``max_steps`` grows with the share of the allowed accuracy
    drop (``max_drop``, pp) the parent left unused: 2 steps at the bound, 6 with all of it left (on digits-25% the
    climb from int8 alone at +0.07 pp went 0.05 at a time: 3.67x, 3.79x, 3.85x)."""
    ok = [r for r in feasible if r.candidate.student == "pruned" and r.metrics.speedup is not None and r.finish_of is None]
    ok.sort(key=lambda r: -r.metrics.speedup)
    lean = sorted((r for r in ok[1:] if less_compute(r, ok[0])), key=lambda r: r.metrics.macs)
    out = []
    for r in lean + [r for r in ok if r not in lean]:
        drop = r.metrics.accuracy_drop
        slack = 0.0 if not max_drop or drop is None else min(1.0, max(0.0, (max_drop - drop) / max_drop))
        out.append((r.number, dict(r.candidate.params), 2 + round(4 * slack)))
    return out


def propose(parents: Sequence[tuple], known: Iterable[Mapping[str, Any]], low: float, high: float,
            step: float | None, rng: random.Random, tries: int = 12, names: Collection[str] | None = None,
            key: Callable[[Mapping[str, Any]], Any] = _key, depth: Sequence[int] = ()) -> tuple[int, dict] | None:
    """(parent number, new params) from the first of ``parents`` ((number, params[, max_steps]), best bet first)
    with a mutation whose ``key``
    (:func:`network_key`: its network and recipe) no trial has run (``known``: the parameters of every trial run,
    running or queued), or None."""
    seen = {key(p) for p in known}
    for number, params, *steps in parents:
        if not sparsity_names(params, names) and DEPTH not in params:
            continue
        for _ in range(tries):
            new = mutate(params, low, high, step, rng, names, *steps, depth=depth)
            if new is None:
                break
            if key(new) not in seen:
                return number, new
    return None


def due(share: float, mutations: int, sampled: int) -> bool:
    """Whether the next trial after the seeds should be a mutation: mutations stay at ``share`` of the trials after
    the seeds (those the sampler proposed and the mutations), counting the one about to run."""
    return share > 0 and mutations < share * (mutations + sampled + 1)
