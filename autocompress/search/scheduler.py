"""Multi-fidelity scheduling of a multi-objective search: which candidates earn their distillation.

Optuna's pruners are single-objective (``trial.report`` raises in a multi-objective study, optuna #3450), so
this is the search's own scheduler, in the spirit of Ray Tune's ``on_trial_result -> CONTINUE/STOP``. A trial
consults it at two points. It learns from every COMPLETE candidate: the trial that ran it reports its record
(:meth:`observe_record`, with its speed and size), the loop reports every settled one (:meth:`observe`; the
same candidate twice counts once), and a resumed run rebuilds it from the stored records (:meth:`replay`:
``kd_history`` and the metrics are in every record), so nothing here needs its own file.

1. **The gate**, before distillation (:meth:`gate`): a candidate's speed and size depend on its graph, not on
   its trained weights, so they are measured on the untrained student first. A candidate that misses a
   speed, size or latency constraint is INFEASIBLE (training cannot change those figures); one that a
   COMPLETE candidate dominates in (speedup, size), clearly, while that candidate already meets the accuracy
   target with ``gate_margin`` to spare, is STOPPED: a faster, smaller model already meets the constraint, so
   all that training could add is accuracy beyond what the constraint asks (a deliberate trade: such a
   candidate might still have reached the 3-D front on accuracy alone).
2. **Rungs**, during distillation (:meth:`rung`, after every epoch): successive halving over the KD epochs.
   At a rung epoch (``rungs``, 1-based, e.g. 1 and 3) a candidate still below the accuracy target stops when a
   COMPLETE candidate with the same epoch budget (the same learning-rate schedule) went on from that rung
   and dominates it there in (accuracy at the rung, speedup, size): ``margin`` more accurate at that epoch,
   at least as fast (within ``speed_tolerance``, the noise of two speed measurements) and at least as small. A
   peer counts at a rung only once it had come half the way from chance to its final accuracy there: before
   that, the rung's accuracies rank noise.

Kept from the first early stopper (on also with ``multi_fidelity=False``): after the last epoch a student
more than ``margin`` below the target stops and a student at chance level after the second-to-last epoch stops
(:meth:`check`, speed-blind: cached with the student); after an earlier epoch, a student below every one of
``min_history`` candidates at least as fast that reached the target (with the same budget) was at that epoch,
minus ``margin``, stops (:meth:`lagging`).

All accuracies are fractions (0..1) of top-1, as the KD history records them. Pure Python: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..records import TrialStatus

DEFAULT_RUNGS = (1, 3)


@dataclass(frozen=True)
class Peer:
    """A COMPLETE candidate as the scheduler knows it."""

    history: tuple[float, ...]  # validation accuracy after each KD epoch
    accuracy: float  # final accuracy of the deployable model
    speedup: float | None = None
    size_mb: float | None = None
    number: int | None = None  # trial number, when the caller gave it (for messages)
    samples_per_epoch: int | None = None  # its KD samples per epoch (a finishing trial's are larger: not comparable)

    def name(self) -> str:
        return f"trial {self.number}" if self.number is not None else "an earlier candidate"


@dataclass(frozen=True)
class GateDecision:
    status: TrialStatus  # INFEASIBLE or STOPPED
    message: str


@dataclass
class FidelityScheduler:
    """The gate before distillation and the rungs during it (see the module docstring)."""

    target: float | None  # accuracy the candidate must reach (baseline - max drop), fraction; None: no target
    num_classes: int
    margin: float = 0.02  # accuracy margin of every stop rule (fraction)
    min_history: int = 3
    multi_fidelity: bool = True  # the gate's dominance rule and the rungs; False: only the rules kept above
    rungs: tuple[int, ...] = DEFAULT_RUNGS  # epochs (1-based) after which the rung rule applies
    gate_margin: float = 0.0  # a gating peer must be this far above the target (fraction)
    speed_tolerance: float = 0.05  # relative noise of a speedup measurement
    min_speedup: float | None = None  # the run's constraints that do not depend on training
    max_size_mb: float | None = None
    max_latency_ms: float | None = None
    peers: list[Peer] = field(default_factory=list)

    # ------------------------------------------------------------------ history
    def observe(self, history: Sequence[float], final_accuracy: float | None, *, speedup: float | None = None,
                size_mb: float | None = None, number: int | None = None, samples_per_epoch: int | None = None) -> None:
        """A settled COMPLETE candidate. The same candidate may be reported twice (by the trial that ran it
        and by the loop that settled it; by a resume's replay and the loop's): an observation with the same
        history and accuracy adds nothing, except the speed, size or number it brings when the first lacked them."""
        if final_accuracy is None:
            return
        new = Peer(tuple(float(a) for a in history), float(final_accuracy), speedup, size_mb, number, samples_per_epoch)
        for i, p in enumerate(self.peers):
            if p.history != new.history or p.accuracy != new.accuracy:
                continue
            if new.speedup is None or p.speedup is None or (p.speedup, p.size_mb) == (new.speedup, new.size_mb):
                self.peers[i] = Peer(p.history, p.accuracy, p.speedup if p.speedup is not None else new.speedup,
                                     p.size_mb if p.size_mb is not None else new.size_mb,
                                     p.number if p.number is not None else new.number,
                                     p.samples_per_epoch if p.samples_per_epoch is not None else new.samples_per_epoch)
                return
        self.peers.append(new)

    def observe_record(self, rec: Any) -> None:
        """A :class:`~autocompress.records.TrialRecord`: COMPLETE ones are peers, the others are ignored."""
        if rec.status != TrialStatus.COMPLETE:
            return
        m, d = rec.metrics, rec.candidate.distill
        self.observe(rec.kd_history, m.accuracy, speedup=m.speedup, size_mb=m.size_mb, number=rec.number,
                     samples_per_epoch=d.samples_per_epoch if d is not None else None)

    def replay(self, records: Iterable[Any]) -> "FidelityScheduler":
        """Rebuild the history from stored records (a resumed run); returns self."""
        for r in records:
            self.observe_record(r)
        return self

    # ------------------------------------------------------------------ before distillation
    def gate(self, speedup: float | None, size_mb: float | None, latency_ms: float | None = None) -> GateDecision | None:
        """Speed and size measured on the untrained candidate -> INFEASIBLE, STOPPED or None (train it)."""
        why = "measured before training; training does not change it"
        if self.min_speedup is not None and speedup is not None and speedup < self.min_speedup:
            return GateDecision(TrialStatus.INFEASIBLE, f"speedup {speedup:.2f}x is below the constraint min_speedup "
                                                        f"{self.min_speedup:g}x ({why})")
        if self.max_size_mb is not None and size_mb is not None and size_mb > self.max_size_mb:
            return GateDecision(TrialStatus.INFEASIBLE, f"size {size_mb:.3f} MB is above the constraint max_size_mb "
                                                        f"{self.max_size_mb:g} MB ({why})")
        if self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms:
            return GateDecision(TrialStatus.INFEASIBLE, f"latency {latency_ms:.3f} ms is above the constraint "
                                                        f"max_latency_ms {self.max_latency_ms:g} ms ({why})")
        if not self.multi_fidelity or self.target is None or speedup is None or size_mb is None:
            return None
        level = self.target + self.gate_margin
        for p in sorted(self.peers, key=lambda q: -(q.speedup or 0.0)):
            if p.speedup is None or p.size_mb is None or p.accuracy < level:
                continue
            faster = p.speedup >= speedup * (1 + self.speed_tolerance) and p.size_mb <= size_mb
            smaller = p.size_mb < size_mb * 0.98 and p.speedup >= speedup * (1 - self.speed_tolerance)
            if faster or smaller:
                return GateDecision(TrialStatus.STOPPED, (
                    f"dominated before training by {p.name()} ({p.speedup:.2f}x, {p.size_mb:.3f} MB, accuracy "
                    f"{p.accuracy:.2%} >= target {self.target:.2%} + {self.gate_margin * 100:.2g} pp): this candidate "
                    f"is {speedup:.2f}x, {size_mb:.3f} MB, so distilling it cannot reach the front"))
        return None

    # ------------------------------------------------------------------ during distillation
    def check(self, epoch: int, acc: float, total_epochs: int, samples_per_epoch: int | None = None) -> str | None:
        """The speed-blind rules kept from the first early stopper, after KD epoch ``epoch`` (0-based) of
        ``total_epochs`` with validation accuracy ``acc``: a reason to stop, or None. They do not depend on the
        candidate's speed, so a student they stop is stopped for every bit-width (the trial caches the verdict)."""
        last = epoch == total_epochs - 1
        if self.target is not None and last and acc < self.target - self.margin:
            return f"accuracy {acc:.1%} after distillation is below the target {self.target:.1%}"
        if not last and epoch >= total_epochs - 2 and epoch >= 1 and acc <= 1.5 / self.num_classes:
            return f"collapsed to chance level ({acc:.1%}) after epoch {epoch + 1}"
        return None

    def lagging(self, epoch: int, acc: float, total_epochs: int, speedup: float | None = None,
                samples_per_epoch: int | None = None) -> str | None:
        """The first early stopper's peer rule after KD epoch ``epoch`` (0-based): a student below every one of
        ``min_history`` candidates that reached the target, at that epoch, minus ``margin``, stops; a reason or
        None. Only peers at least as fast (within ``speed_tolerance``) count when the candidate's ``speedup`` is
        known: a student pruned harder than every finished one recovers later in its schedule, and stopping the
        fastest candidate for lagging slower ones loses the front's fast end (the custom CNN's uniform 90% seed
        was stopped at epoch 2 of 8 at 62% while slower peers had 83%; run alone for 8 epochs it ended within
        1 pp, the fastest model of the ladder). The verdict depends on speed, so it is not cached with the student."""
        if self.target is None or epoch == total_epochs - 1:
            return None
        reached = [p.history[epoch] for p in self._same_budget(total_epochs, samples_per_epoch) if p.accuracy >= self.target
                   and (speedup is None or p.speedup is None or p.speedup >= speedup * (1 - self.speed_tolerance))]
        if len(reached) >= self.min_history and acc < min(reached) - self.margin:
            return (f"accuracy {acc:.1%} after epoch {epoch + 1} is below every candidate at least as fast that "
                    f"reached the target at that point (min {min(reached):.1%})")
        return None

    def rung(self, epoch: int, acc: float, total_epochs: int, speedup: float | None, size_mb: float | None,
             samples_per_epoch: int | None = None) -> str | None:
        """The rung rule after KD epoch ``epoch`` (0-based): a reason to stop, or None. ``speedup``/``size_mb``:
        the candidate's, measured before training (the verdict depends on them, so it is not cached)."""
        if (not self.multi_fidelity or self.target is None or epoch + 1 not in self.rungs or epoch >= total_epochs - 1
                or acc >= self.target or speedup is None or size_mb is None):
            return None
        for p in sorted(self._same_budget(total_epochs, samples_per_epoch), key=lambda q: -q.history[epoch]):
            if p.speedup is None or p.size_mb is None or not self._informative(p, epoch):
                continue
            if (p.history[epoch] >= acc + self.margin and p.speedup >= speedup * (1 - self.speed_tolerance)
                    and p.size_mb <= size_mb):
                return (f"rung at epoch {epoch + 1}/{total_epochs}: accuracy {acc:.1%} (target {self.target:.1%}) "
                        f"is dominated by {p.name()}, which had {p.history[epoch]:.1%} there and went on "
                        f"({p.speedup:.2f}x, {p.size_mb:.3f} MB vs this {speedup:.2f}x, {size_mb:.3f} MB)")
        return None

    def _informative(self, p: Peer, epoch: int) -> bool:
        """Whether ``p``'s accuracy at ``epoch`` says anything yet: it had come at least half the way from chance to
        its final accuracy. Early in a short schedule a student can sit near chance and jump later (digits, pruned
        ResNet-20: 10.0% and 17.3% after epoch 1 of 8, 98% at the end), and a rung read there ranks noise."""
        chance = 1.0 / max(1, self.num_classes)
        return p.history[epoch] >= chance + 0.5 * (p.accuracy - chance)

    def _same_budget(self, total_epochs: int, samples_per_epoch: int | None = None) -> list[Peer]:
        """Peers distilled for the same number of epochs of the same size (the same learning-rate schedule over the
        same samples: comparable per epoch). A peer or caller that does not say its epoch size matches any."""
        return [p for p in self.peers if len(p.history) == total_epochs
                and (samples_per_epoch is None or p.samples_per_epoch is None or p.samples_per_epoch == samples_per_epoch)]
