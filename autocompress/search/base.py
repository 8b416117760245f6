"""What the engine needs from a search backend: ask for parameters, tell results, count the budget.

The engine owns the loop (ask -> run_trial -> store -> tell), so any sampler or storage that can do
ask/tell fits; the Pareto front never comes from the backend but from the stored records.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..records import TrialRecord
from ..space import Suggest


class Backend(Protocol):
    def ask(self) -> tuple[Any, Suggest, int] | None:
        """A new trial handle, the object to draw parameters from, and its number; None when the budget is spent."""

    def tell(self, handle: Any, record: TrialRecord) -> None: ...

    def records(self) -> list[TrialRecord]: ...
