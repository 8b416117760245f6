"""Finishing: the end of the budget re-distils the search's best bet with a larger KD budget.

A search scores many candidates on a short distillation (the default space: 8 epochs x 5,000 samples): enough to
rank them, not to recover all a pruned student can. Measured on a 50,000-image folder (benchmarks/README.md), a
ResNet-20 pruned 50% + int8 was 2.50x faster at -2.96 pp after 40,000 KD samples and -1.22 pp after 160,000: the
front's fastest model within 1 pp was int8 alone, and the search's fast candidates were thrown away for want of
training, not of capacity. So the last part of the budget goes to the candidate that could move the front most:

* **when** (:meth:`FinishPolicy.due`): once the time left is at most ``reserve_share`` of the search's time
  (``--timeout``), or the trials left are at most ``reserve_trials`` (``--trials``); or earlier, at the last chance
  (:meth:`FinishPolicy.last_chance`): when the candidate to finish fits the time left but would not after one
  more trained trial. The finishing trial (and its fp32 twin) then go ahead of the trials already waiting (seeds
  not run yet): they run after it if time is left;
* **which** (:meth:`FinishPolicy.choose`): among candidates distilled to their last epoch and not finished before,
  those faster (by ``speed_tolerance``, the noise of two speed measurements) than every model that meets the
  constraints, or, within ``speed_noise`` of the fastest of those, with ``macs_margin`` fewer MACs than it (two
  speedups measured minutes apart with two threads differ by 10-15% from time alone: the one-click run of
  benchmarks/README.md "Depth moves half the time", sampler seed 0, finished nothing although a candidate with 29%
  fewer MACs measured 16.98x against the fastest feasible model's 17.27x), and short of the accuracy target by at
  most ``reach_pp``; the fastest of them;
* **how much**: ``factor`` times its KD samples (more samples per epoch, the same epochs, so the learning-rate
  schedule keeps its shape; epochs grow once an epoch is the whole training split), the largest factor from
  ``min_factor`` to ``max_factor`` whose estimated time (the trial's own, its distillation scaled) fits in the
  time left; ``default_factor`` without a deadline.

The finishing trial is an ordinary trial of the same Optuna parameters (enqueued with :data:`FINISH_ATTR`, which
the loop applies to the candidate): it is gated, distilled, exported and stored like any other, and its record
names the trial it finishes (``TrialRecord.finish_of``). An int8 candidate's fp32 twin follows it (:func:`fp32_twin`):
the same distilled student from the student cache, exported in fp32, so the front gets whichever the target runs
faster. Nothing is promised: a finished candidate that still misses the target is STOPPED like any other. Pure
Python: no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from ..records import Candidate, TrialRecord, TrialStatus
from .noise import MACS_MARGIN, SPEED_NOISE, less_compute

FINISH_ATTR = "finish"  # Optuna user attribute: {"of": trial number, "epochs", "samples_per_epoch", "factor"[, "twin"]}


@dataclass(frozen=True)
class Finish:
    """A decision: re-distil trial ``of``'s candidate with ``epochs`` x ``samples_per_epoch`` (``factor`` x its samples)."""

    of: int
    epochs: int
    samples_per_epoch: int | None
    factor: int
    estimate_s: float | None
    why: str

    def attrs(self) -> dict[str, Any]:
        return {"of": self.of, "epochs": self.epochs, "samples_per_epoch": self.samples_per_epoch, "factor": self.factor}


def apply_finish(cand: Candidate, attrs: Mapping[str, Any] | None) -> Candidate:
    """The candidate a finishing trial runs: the sampled one with the finishing KD budget (``attrs``: :meth:`Finish.attrs`)."""
    if not attrs or cand.distill is None:
        return cand
    return replace(cand, distill=replace(cand.distill, epochs=int(attrs["epochs"]),
                                         samples_per_epoch=attrs.get("samples_per_epoch")))


def finish_label(attrs: Mapping[str, Any]) -> str:
    twin = f", its {attrs['twin']} twin (the same distilled student)" if attrs.get("twin") else ""
    return f"finishing of trial {attrs['of']}: {attrs['factor']}x its KD samples{twin}"


def fp32_twin(params: Mapping[str, Any], precisions: Sequence[str]) -> dict[str, Any] | None:
    """The parameters of an int8 candidate (uniform bits) with every layer in fp32, or None (not int8, per-stage bits, or
    no fp32 on the profile). A finishing trial's twin: its student comes from the student cache (the distillation does
    not depend on the bits), so it costs an export and a measurement, and on a CPU whose int8 kernels are slow for
    small layers it can be the faster model (AVX2 without VNNI, CIFAR ResNet-20 pruned 50%, untrained graphs: fp32
    2.57-3.07x vs int8 2.12-2.39x; benchmarks/README.md "int8 on a CPU without VNNI")."""
    if params.get("bits") != "int8" or "fp32" not in precisions:
        return None
    twin = {k: v for k, v in params.items() if not (k.startswith("bits.") or k.startswith("quant."))}
    twin["bits"] = "fp32"
    return twin


@dataclass(frozen=True)
class FinishPolicy:
    baseline_accuracy: float  # fraction (0..1), as records hold accuracy
    max_drop_pp: float  # the accuracy constraint, percentage points
    train_size: int  # samples in the training split
    use_history: bool = True  # the KD history scores the metric (top-1): a STOPPED candidate's last epoch counts
    reserve_share: float = 0.35
    reserve_trials: int = 2
    reach_pp: float = 2.5
    speed_tolerance: float = 0.05
    speed_noise: float = SPEED_NOISE  # the 2-thread spread of one speedup (search/noise.py)
    macs_margin: float = MACS_MARGIN  # within speed_noise, this much less compute counts as faster
    min_factor: int = 2
    max_factor: int = 8
    default_factor: int = 4
    safety: float = 1.15  # an estimate is stretched by this much before it must fit

    # ------------------------------------------------------------------ when
    def due(self, *, remaining_s: float | None, search_s: float | None, remaining_trials: int | None) -> bool:
        if remaining_s is not None and search_s and remaining_s <= self.reserve_share * search_s:
            return True
        return remaining_trials is not None and remaining_trials <= self.reserve_trials

    def last_chance(self, records: Iterable[TrialRecord], feasible_speedups: Iterable[float], *,
                    remaining_s: float | None, trial_s: float | None, busy: Iterable[int] = (),
                    fastest: TrialRecord | None = None) -> bool:
        """Due before the reserve share says so: a candidate worth finishing fits the time left now, and would not
        after one more trial of ``trial_s`` seconds (a trained trial's typical time, the median). On the custom CNN
        at the one-click budget (sampler seed 2) the depth seed ended with 119 s of the search's 330 left, above the
        reserve share (115 s); its finishing needed ~100 s and the next seed took 41 s, after which it would not have
        fit. Run at the last chance, ahead of the seeds, it put 6.75x at +0.37 pp on the front, 1.37x the best uniform
        setting (benchmarks/README.md, "Finishing at the last chance")."""
        if remaining_s is None or not trial_s:
            return False
        records, feasible_speedups, busy = list(records), list(feasible_speedups), list(busy)
        now = self.choose(records, feasible_speedups, remaining_s=remaining_s, busy=busy, fastest=fastest)
        if now is None:
            return False
        later = self.choose(records, feasible_speedups, remaining_s=remaining_s - trial_s, busy=busy, fastest=fastest)
        return later is None or later.of != now.of

    # ------------------------------------------------------------------ which
    def drop_pp(self, rec: TrialRecord) -> float | None:
        """The candidate's accuracy drop after its whole distillation: the deployable model's when COMPLETE, else
        (STOPPED after its last epoch) the last epoch's validation accuracy."""
        d = rec.candidate.distill
        if d is None or len(rec.kd_history) != d.epochs:
            return None
        if rec.status == TrialStatus.COMPLETE and rec.metrics.accuracy_drop is not None:
            return float(rec.metrics.accuracy_drop)
        if rec.status == TrialStatus.STOPPED and self.use_history:
            return (self.baseline_accuracy - float(rec.kd_history[-1])) * 100.0
        return None

    def choose(self, records: Iterable[TrialRecord], feasible_speedups: Iterable[float], *,
               remaining_s: float | None, busy: Iterable[int] = (), fastest: TrialRecord | None = None) -> Finish | None:
        """The candidate to finish now, or None. ``feasible_speedups``: of the models that meet every constraint;
        ``fastest``: the record of the fastest of them (its MACs and bits); ``busy``: trials whose finishing is already asked for or running."""
        records = list(records)
        best = max(feasible_speedups, default=0.0)
        done = {r.finish_of for r in records if r.finish_of is not None} | set(busy)
        options = []
        for r in records:
            if r.finish_of is not None or r.number in done or r.metrics.speedup is None:
                continue
            drop = self.drop_pp(r)
            if drop is None or drop <= self.max_drop_pp or drop - self.max_drop_pp > self.reach_pp:
                continue
            if r.metrics.speedup < best * (1 + self.speed_tolerance) and not self._less_compute(r, fastest):
                continue
            options.append((r.metrics.speedup, -drop, r))
        if not options:
            return None
        _, neg_drop, rec = max(options, key=lambda o: (o[0], o[1]))
        d = rec.candidate.distill
        times = dict(rec.stage_times)
        distill_s = float(times.get("distill") or 0.0) or rec.duration_s
        factor, estimate = self.default_factor, None
        if remaining_s is not None:
            fits = [f for f in range(self.min_factor, self.max_factor + 1)
                    if (rec.duration_s + (f - 1) * distill_s) * self.safety <= remaining_s]
            if not fits:
                return None
            factor = max(fits)
            estimate = rec.duration_s + (factor - 1) * distill_s
        epochs, samples = self._budget(d.epochs, d.samples_per_epoch, factor)
        per = min(int(d.samples_per_epoch), self.train_size) if d.samples_per_epoch else self.train_size
        grown = f"{epochs} epochs" if epochs > d.epochs else f"{samples or self.train_size} samples per epoch"
        why = (f"trial {rec.number} ({rec.metrics.speedup:.2f}x, {-neg_drop:+.2f} pp after {d.epochs} x "
               f"{per} KD samples) {self._beats(rec, best, fastest)} and within {self.reach_pp:g} pp of the target: distilled again with {factor}x the samples ({grown})"
               + (f" (~{estimate / 60:.0f} min)" if estimate else ""))
        return Finish(rec.number, epochs, samples, factor, estimate, why)

    def _beats(self, r: TrialRecord, best: float, fastest: TrialRecord | None) -> str:
        if not self._less_compute(r, fastest) or r.metrics.speedup >= best * (1 + self.speed_tolerance):
            return f"is faster than every model meeting the constraints ({best:.2f}x)"
        return (f"has {1 - r.metrics.macs / fastest.metrics.macs:.0%} fewer MACs than the fastest model meeting the constraints "
                f"({best:.2f}x, within the {self.speed_noise:.0%} noise of two speed measurements)")

    def _less_compute(self, r: TrialRecord, fastest: TrialRecord | None) -> bool:
        """Within the noise of the best feasible model's speed and clearly less compute at the same precision
        (search/noise.py): a bet worth finishing."""
        return less_compute(r, fastest, noise=self.speed_noise, margin=self.macs_margin)

    def _budget(self, epochs: int, samples: int | None, factor: int) -> tuple[int, int | None]:
        """(epochs, samples per epoch) for ``factor`` x the samples: more per epoch up to the whole split, then epochs."""
        n = max(1, int(self.train_size))
        per = min(int(samples), n) if samples else n
        total = epochs * per * factor
        if total <= epochs * n:
            return epochs, int(math.ceil(total / epochs))
        return int(math.ceil(total / n)), None
