"""What the search loop (:mod:`.loop`) needs from a search backend (OptunaBackend implements it). The loop
owns ask -> submit to an executor -> store -> tell; the Pareto front never comes from the backend but from
the stored records.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from ..records import TrialRecord
from ..space import Suggest


class Backend(Protocol):
    budget: int

    def ask(self) -> tuple[Any, Suggest, int] | None:
        """A trial handle, the object to draw parameters from, and its number; None once the budget is claimed."""

    def tell(self, handle: Any, record: TrialRecord, constraints: Sequence[float]) -> None:
        """Store the record on the trial and report values (COMPLETE), pruned (STOPPED) or failed."""

    def discard(self, handle: Any) -> None:
        """A trial that will not produce a result (a duplicate): not counted."""

    def requeue(self, handle: Any) -> None:
        """A trial stopped in flight (Ctrl-C): not counted, and its parameters run again by a later ask."""

    def finished(self) -> int: ...

    def waiting(self) -> int:
        """Enqueued trials not asked yet."""
        ...

    def waiting_attrs(self) -> list[dict]:
        """The user attributes of the enqueued trials not asked yet (a seed's carries its label)."""
        ...

    def enqueue(self, params_list: Sequence[dict], user_attrs: Sequence[dict] | None = None, *, unique: bool = True,
                first: bool = False) -> None:
        """Fixed parameter sets run by the next asks (seeds; a finishing trial, ``unique=False``: its parameters
        have run before; ``first``: ahead of those already waiting)."""

    def records(self) -> list[TrialRecord]: ...
