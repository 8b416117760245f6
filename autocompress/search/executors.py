"""Executors run trials for the search loop (:mod:`.loop`) and nothing else: no asking, storing or telling.

An executor takes a trial (``submit``), hands back finished records (``wait``: at least one, blocking), stops
what is in flight (``cancel``, on Ctrl-C) and hears when the loop has stored a record (``settled``).
``capacity`` trials run at once. The loop, not the executor, feeds each finished record to the run's scheduler
(trials on other processes run against a copy of it).

Here: :class:`InProcessExecutor` (one trial at a time, in this process). Ray tasks: ``ray_backend.RayExecutor``.
Executors import the trial pipeline, never the loop or the engine.
"""

from __future__ import annotations

from typing import Protocol

from ..records import Candidate, TrialRecord
from ..trial import TrialContext, run_trial


class Executor(Protocol):
    capacity: int  # trials in flight at once; 1 is the sequential search

    def submit(self, number: int, cand: Candidate) -> None:
        """Start (or queue) trial ``number`` on ``cand``."""

    def wait(self) -> list[TrialRecord]:
        """Block until at least one submitted trial has finished; their records (``record.number`` says which)."""

    def cancel(self) -> None:
        """Stop every trial in flight; none of them will be returned."""

    def settled(self, record: TrialRecord) -> None:
        """The loop stored and told ``record``."""


class InProcessExecutor:
    """Runs each trial in this process, when the loop waits for it: capacity 1, the sequential search."""

    capacity = 1

    def __init__(self, ctx: TrialContext):
        self.ctx = ctx
        self._queue: list[tuple[int, Candidate]] = []

    def submit(self, number: int, cand: Candidate) -> None:
        if self._queue:
            raise RuntimeError(f"trial {self._queue[0][0]} is still in flight; the in-process executor runs one at a time")
        self._queue.append((number, cand))

    def wait(self) -> list[TrialRecord]:
        number, cand = self._queue[0]
        rec = run_trial(number, cand, self.ctx)  # Ctrl-C lands here: the trial stays queued until cancel()
        self._queue.clear()
        return [rec]

    def cancel(self) -> None:
        self._queue.clear()

    def settled(self, record: TrialRecord) -> None:
        pass
