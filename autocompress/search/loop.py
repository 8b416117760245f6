"""The search loop: one driver for every executor.

The driver owns what a search decides: ask the backend for a candidate, skip a duplicate (ask again, up to
``MAX_DUPLICATE_RETRIES``; then reuse the earlier trial's record), submit it, settle each finished trial
(store -> tell -> display; on disk before the backend hears of it), the shared trial budget (the backend's),
the ``--timeout`` deadline, the early stopper's history and the engine-overhead timing (``timing.json``).
An executor (:mod:`.executors`: this process; :mod:`.ray_backend`: Ray tasks) only runs trials: ``submit``,
``wait``, ``cancel``; its ``capacity`` is how many run at once (1: the sequential search).

Ctrl-C (``KeyboardInterrupt``): the trials in flight are cancelled and handed back to the backend to be redone
by a later ask (the same parameters and seed label); the finished ones stay stored.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from ..progress import LoopDisplay, best_tradeoffs
from ..records import Candidate, TrialRecord, TrialStatus
from ..references import SEED_ATTR
from ..store import RunStore, merge_records
from ..trial import feasibility, feasible_records
from ..space import allowed_precisions, depth_choices
from . import explore
from .explore import EXPLORE_ATTR
from .finish import FINISH_ATTR, FinishPolicy, apply_finish, finish_label, fp32_twin

if TYPE_CHECKING:
    from .base import Backend
    from .executors import Executor

MAX_DUPLICATE_RETRIES = 5


class PreparedRun(Protocol):
    """What the loop reads of a prepared run (``engine.Prepared``)."""

    spec: Any  # RunSpec: constraints, timeout
    space: Any
    profile: Any
    ctx: Any  # TrialContext: its early_stopper
    groups: dict[str, list[str]]
    layer_names: list[str]
    store: RunStore
    widths: dict[str, int]  # output channels of each prunable layer of the teacher


@dataclass(frozen=True)
class _InFlight:
    handle: Any
    cand: Candidate
    seed: str | None
    finish_of: int | None = None
    parent: int | None = None


def describe(c: Candidate) -> str:
    """``pruned, sparsity 0.50, int8 (qdq u8s8), KD 3 ep``: a candidate in one line."""
    parts = [c.student]
    sp = c.sparsity_map()
    if sp:
        vals = sorted(set(round(v, 2) for v in sp.values()))
        parts.append(f"sparsity {vals[0]:.2f}" if len(vals) == 1 else f"sparsity {min(vals):.2f}-{max(vals):.2f}")
    if c.drop:
        parts.append(f"{len(c.drop)} block{'s' if len(c.drop) > 1 else ''} dropped")
    if c.student_args:
        parts.append(", ".join(f"{k}={v}" for k, v in c.student_args))
    bits = sorted(set(c.bits_map().values()))
    parts.append("/".join(bits) + (f" ({c.quant.format} {c.quant.types})" if "int8" in bits else ""))
    if c.distill:
        parts.append(f"KD {c.distill.epochs} ep")
    return ", ".join(parts)


def summary_line(rec: TrialRecord, done: int, budget: int, best: str, elapsed: float, what: str = "") -> str:
    m = rec.metrics
    head = f"[{done}/{budget} {int(elapsed // 60):d}:{int(elapsed % 60):02d}] trial {rec.number}"
    tag = "; seed" if rec.seed else f"; mutation of trial {rec.parent}" if rec.parent is not None else ""
    head += f" ({what}{tag})" if what else ""
    if rec.status == TrialStatus.COMPLETE:
        body = (f"[green]COMPLETE[/] acc {m.accuracy:.2%} (drop {m.accuracy_drop:+.2f}) speedup {m.speedup:.2f}x "
                f"{m.size_mb:.2f} MB")
    else:
        colour = {"STOPPED": "yellow", "INFEASIBLE": "magenta", "FAILED": "red"}[rec.status.value]
        body = f"[{colour}]{rec.status.value}[/] at {rec.stage}: {rec.message}"
    return f"{head} {body} ({rec.duration_s:.0f} s){best}"


def best_so_far(records: list[TrialRecord], constraints) -> str:
    ok = feasible_records(records, constraints)
    if not ok:
        return ""
    fast = max(ok, key=lambda r: r.metrics.speedup or 0)
    small = min(ok, key=lambda r: r.metrics.size_mb or 1e9)
    return f" | best feasible: {fast.metrics.speedup:.2f}x, {small.metrics.size_mb:.2f} MB"


class SearchLoop:
    """ask -> (duplicate?) -> submit -> wait -> store -> tell, until the budget or the deadline."""

    def __init__(self, prep: PreparedRun, backend: "Backend", executor: "Executor", disp: LoopDisplay, *,
                 deadline: float | None):
        self.prep, self.backend, self.executor, self.disp, self.deadline = prep, backend, executor, disp, deadline
        self.constraints = prep.spec.constraints
        self.store = prep.store
        self.stopper = prep.ctx.early_stopper
        self.records = merge_records(self.store.records(), backend.records())
        self.inflight: dict[int, _InFlight] = {}
        self._started = time.time()
        self.finisher = finish_policy(prep)
        self._finishing: set[int] = set()  # trials whose finishing this loop enqueued
        # engine overhead = the loop's wall time not spent waiting for trials (asks, storage, logging)
        self.timing: dict[str, Any] = {"trials": 0, "trial_s": 0.0, "wall_s": 0.0, "workers": executor.capacity}

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.disp.best(best_tradeoffs(self.records, self.constraints))
        if self.stopper is not None:  # a resumed run's stopper starts from the finished trials
            for r in self.records:
                self._observe(r)
        pending = None  # asked, not yet in flight: discarded if Ctrl-C lands now
        try:
            asking, retries = True, 0
            while True:
                while asking and len(self.inflight) < self.executor.capacity:
                    if self.deadline is not None and time.time() >= self.deadline:
                        self._log_deadline()
                        asking = False
                        break
                    self._maybe_finish()
                    self._maybe_explore()
                    asked = self.backend.ask()  # None once finished + in flight reach the (shared) budget
                    if asked is None:
                        asking = False
                        break
                    handle, suggest, number = asked
                    pending = handle
                    attrs = getattr(suggest, "user_attrs", None) or {}
                    seed, fin = attrs.get(SEED_ATTR), attrs.get(FINISH_ATTR)  # a seed's label; a finishing trial's budget
                    parent = attrs.get(EXPLORE_ATTR)  # a mutation: the trial it mutates
                    cand = apply_finish(self._candidate(handle, suggest), fin)
                    seen = next((r for r in self.records if r.candidate.key() == cand.key()), None)
                    running = any(f.cand.key() == cand.key() for f in self.inflight.values())
                    if (seen is not None or running) and retries < MAX_DUPLICATE_RETRIES:
                        # the sampler proposed a candidate already run: ask again rather than spend budget on it
                        retries += 1
                        self.backend.discard(handle)
                        pending = None
                        continue
                    retries = 0
                    self.disp.started(number, (finish_label(fin) + ": " if fin else "")
                                      + (f"mutation of trial {parent}: " if parent is not None else "") + describe(cand))
                    pending = None  # from here the trial is settled (its record on disk first) or in flight
                    if seen is not None:  # still a duplicate after the retries: its record, not another run
                        self._settle(replace(seen, number=number, candidate=cand, duration_s=0.0, stage_times=(),
                                             message=f"duplicate of trial {seen.number}" if seen.message is None
                                             else seen.message), handle, seed, fin and fin["of"], parent)
                    else:
                        self.inflight[number] = _InFlight(handle, cand, seed, fin and fin["of"], parent)
                        self.executor.submit(number, cand)
                if not self.inflight:
                    break
                t = time.perf_counter()
                done = self.executor.wait()
                self.timing["trial_s"] += time.perf_counter() - t
                for rec in done:
                    f = self.inflight.pop(rec.number)
                    self._observe(rec)  # a remote trial ran against a copy of the scheduler: the driver's learns here
                    self._settle(rec, f.handle, f.seed, f.finish_of, f.parent)
                    self.executor.settled(rec)
            self._say_seeds_left()
        except KeyboardInterrupt:
            self.executor.cancel()
            if pending is not None and all(f.handle is not pending for f in self.inflight.values()):
                self.backend.discard(pending)
            for f in self.inflight.values():
                self.backend.requeue(f.handle)
            if self.inflight:
                self.disp.print(f"interrupted: {len(self.inflight)} trial(s) in flight stopped (redone on resume)")
            raise

    # ------------------------------------------------------------------ steps
    def _candidate(self, handle, suggest) -> Candidate:
        from ..space import sample_candidate

        try:
            return sample_candidate(suggest, self.prep.space, self.prep.profile, self.prep.groups, self.prep.layer_names)
        except ConfigError:
            self.backend.discard(handle)
            raise

    def _observe(self, rec: TrialRecord) -> None:
        """Every settled COMPLETE record goes to the early stopper / scheduler (which counts a record it was also
        told by the trial itself, in this process, once)."""
        if self.stopper is None or rec.status != TrialStatus.COMPLETE or rec.metrics.accuracy is None:
            return
        if hasattr(self.stopper, "observe_record"):  # search/scheduler.py: history, accuracy, speed and size
            self.stopper.observe_record(rec)
        else:
            self.stopper.observe(rec.kd_history, rec.metrics.accuracy)

    def _maybe_finish(self) -> None:
        """At the end of the budget, enqueue the re-distillation of the search's best bet (search/finish.py)."""
        if self.finisher is None:
            return
        now = time.time()
        remaining_s = None if self.deadline is None else self.deadline - now
        search_s = None if self.deadline is None else self.deadline - self._started
        left = self.backend.budget - self.backend.finished() - len(self.inflight)
        if left < 1:
            return
        ok = [r for r in feasible_records(self.records, self.constraints) if r.metrics.speedup is not None]
        busy = self._finishing | {f.finish_of for f in self.inflight.values() if f.finish_of is not None}
        top = max(ok, key=lambda r: r.metrics.speedup, default=None)
        speeds = [r.metrics.speedup for r in ok]
        if not (self.finisher.due(remaining_s=remaining_s, search_s=search_s, remaining_trials=left)
                or self.finisher.last_chance(self.records, speeds, remaining_s=remaining_s, trial_s=self._trial_s(),
                                             busy=busy, fastest=top)):
            return
        fin = self.finisher.choose(self.records, speeds, remaining_s=remaining_s, busy=busy, fastest=top)
        if fin is None:
            return
        src = next(r for r in self.records if r.number == fin.of)
        params, attrs = [dict(src.candidate.params)], [{FINISH_ATTR: fin.attrs()}]
        twin = fp32_twin(params[0], allowed_precisions(self.prep.space, self.prep.profile)) if left >= 2 else None
        if twin is not None:  # the same distilled student (cached by the first) in fp32: seconds
            params.append(twin)
            attrs.append({FINISH_ATTR: {**fin.attrs(), "twin": "fp32"}})
        self.backend.enqueue(params, attrs, unique=False, first=True)  # ahead of seeds not run yet
        self._finishing.add(fin.of)
        self.disp.print(f"finishing: {fin.why}" + ("; then its fp32 twin from the same student" if twin else ""))

    def _trial_s(self) -> float | None:
        """A trained trial's typical time in this run: the median over trials that distilled (not those whose
        distilled student came from the cache, in seconds), or None before one."""
        times = [r.duration_s for r in self.records if r.duration_s and dict(r.stage_times).get("distill")]
        return statistics.median(times) if times else None

    def _maybe_explore(self) -> None:
        """After the seeds, keep the space's ``explore`` share of the trials as mutations of the fastest candidates
        that meet the constraints (search/explore.py), enqueued ahead of the sampler's next proposal."""
        sp = self.prep.space
        if sp.explore <= 0 or sp.sparsity is None or self.backend.waiting():
            return
        runs = [(r.seed, r.finish_of, r.parent) for r in self.records] + \
               [(f.seed, f.finish_of, f.parent) for f in self.inflight.values()]
        mutations = sum(1 for s, fo, p in runs if p is not None)
        sampled = sum(1 for s, fo, p in runs if s is None and fo is None and p is None)
        if not explore.due(sp.explore, mutations, sampled):
            return
        rng = random.Random(self.prep.spec.search_seed * 7919 + len(runs))  # --sampler-seed varies the mutations too
        parents = explore.parents(feasible_records(self.records, self.constraints), self.constraints.max_accuracy_drop)
        known = [dict(r.candidate.params) for r in self.records] + [dict(f.cand.params) for f in self.inflight.values()]
        rg = sp.sparsity.range
        names = {"sparsity"} | {f"sparsity.{g}" for g in self.prep.groups} | {f"sparsity.{n}" for n in self.prep.layer_names}
        widths, round_to = getattr(self.prep, "widths", None) or {}, getattr(self.prep.profile, "round_to", None)
        got = explore.propose(parents, known, rg.low, rg.high, rg.step, rng, names=names,
                              key=lambda p: explore.network_key(p, self.prep.groups, widths, round_to),
                              depth=depth_choices(sp))
        if got is None:
            return
        parent, params = got
        self.backend.enqueue([params], [{EXPLORE_ATTR: parent}], unique=False)

    def _settle(self, rec: TrialRecord, handle, seed: str | None, finish_of: int | None = None,
                parent: int | None = None) -> None:
        rec = replace(rec, seed=seed, finish_of=finish_of, parent=parent)  # a seed's trial carries its label
        self.store.append(rec)  # on disk first: the backend may be a remote database
        self.backend.tell(handle, rec, feasibility(rec.metrics, self.constraints))
        self.records.append(rec)
        self.timing["trials"] += 1
        self.timing["wall_s"] = time.time() - self._started
        self.store.write_timing(self.timing)
        done, budget = self.backend.finished(), self.backend.budget
        best = "" if self.disp.live else best_so_far(self.records, self.constraints)
        what = "" if self.disp.verbose else describe(rec.candidate)
        self.disp.finished(summary_line(rec, done, budget, best, time.time() - self._started, what=what),
                           done, best_tradeoffs(self.records, self.constraints))

    def _say_seeds_left(self) -> None:
        """When the budget ends before the space's seeds do: say that the search proper (mutations of the fastest
        model meeting the constraints, then the sampler) never started, and how to give it room. On an AVX2-only CPU
        the one-click budget held 5 to 7 of the default space's 8 seeds (benchmarks/README.md, "Seeds in fp32 where int8
        alone does not pay"), so a user would otherwise read a front of seeds as a search's result."""
        left = [a[SEED_ATTR] for a in self.backend.waiting_attrs() if a.get(SEED_ATTR)]
        self.store.update_run_yaml({"seeds_not_run": left})  # the summary lists them with the seeds that ran
        ran = [r for r in self.records if r.seed]
        # no trial at all: the deadline's own line said so; no seed left and some trial searched: nothing to say
        if not self.records or (not left and len(ran) < len(self.records)):
            return
        seeds = len(ran) + len(left)
        searched = len(self.records) - len(ran)
        typical = self._trial_s()
        each = f" (its trained trials took ~{typical:.0f} s each)" if typical else ""
        more = (self._resume_hint(each) if self.deadline is not None else
                f"continue with `autocompress resume {self.store.dir} --trials {max(self.backend.budget, seeds) + seeds}` "
                "(every seed, and as many trials again for the search)")
        proper = ("mutations of the fastest model meeting the constraints, and the sampler" if self.prep.space.explore > 0
                  else "the sampler")
        if not left:  # the budget ended just as the last seed did (the one-click default on a slow CPU)
            self.disp.print(f"the budget ended as the space's seeds did: all {len(ran)} seed(s) ran and the search proper "
                            f"({proper}) did not start, so every model of this run is a seed: {more}")
            return
        self.disp.print(f"the budget ended before the space's seeds did: {len(ran)} seed(s) ran, {len(left)} did not ("
                        + ", ".join(f"'{x}'" for x in left) + f"); the search proper ({proper}) starts after them, so "
                        + ("every model of this run is a seed" if not searched else
                           f"only {searched} trial(s) of this run were not seeds") + f": {more}")

    def _resume_hint(self, why: str = "") -> str:
        return (f"continue with `autocompress resume {self.store.dir}` (the set-up is cached, the same --timeout then "
                f"goes to trials) or run with a larger --timeout{why}")

    def _log_deadline(self) -> None:
        limit = f"time budget reached (timeout {self.prep.spec.timeout:.4g} s)"
        if self.inflight:
            self.disp.print(f"{limit}: no new trials, waiting for {len(self.inflight)} in flight")
        elif self.timing["trials"] == 0:  # the set-up used the whole budget: say so, and how to go on
            self.disp.print(f"{limit} before the first trial: --timeout counts the whole run and the set-up (teacher, "
                            f"baseline, sensitivity) took it; {self._resume_hint()}")
        else:
            self.disp.print(f"{limit}: stopping after {self.backend.finished()} trials")


def finish_policy(prep: PreparedRun) -> FinishPolicy | None:
    """The run's finishing policy (search/finish.py), or None: off in the run spec (``finish: false``), or no
    accuracy target to finish towards."""
    drop = prep.spec.constraints.max_accuracy_drop
    if not prep.spec.finish or drop is None or prep.space.distill is None or not prep.space.distill.enabled:
        return None
    ctx = prep.ctx
    return FinishPolicy(baseline_accuracy=ctx.baseline.accuracy, max_drop_pp=float(drop),
                        train_size=ctx.data.size("train"), use_history=ctx.metric is None)


def run_search(prep: PreparedRun, backend: "Backend", executor: "Executor", disp: LoopDisplay, *,
               deadline: float | None) -> None:
    SearchLoop(prep, backend, executor, disp, deadline=deadline).run()
