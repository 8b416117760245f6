"""What the search loop shows while it runs.

On a terminal: a progress bar (trials done / budget, elapsed, ETA), the trial in progress with its latest
detail (a distillation epoch) and the best trade-offs so far, with one summary line per finished trial
printed above it. Elsewhere (a pipe, a log file, the Python API): plain lines, no bar.

Detail lines are the indented ones a trial logs (``"    epoch 3/8: val acc 97.2%"``): shown in the bar
and printed only with ``verbose``; every other line is printed.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from .records import TrialRecord


def best_tradeoffs(records: Sequence[TrialRecord], constraints) -> str:
    """``fastest 9.60x (drop +0.41 pp, 3.20 MB; trial 7) | smallest 0.50 MB (...) | most accurate ...`` over the trials
    that meet the constraints; empty when none does."""
    from .trial import feasible_records

    ok = feasible_records(records, constraints)
    if not ok:
        return ""
    fast = max(ok, key=lambda r: r.metrics.speedup or 0.0)
    small = min(ok, key=lambda r: r.metrics.size_mb if r.metrics.size_mb is not None else 1e18)
    best = max(ok, key=lambda r: r.metrics.accuracy if r.metrics.accuracy is not None else -1e18)

    def drop(r):
        return f"drop {r.metrics.accuracy_drop + 0.0:+.2f} pp" if r.metrics.accuracy_drop is not None else "drop ?"

    return (f"fastest {fast.metrics.speedup:.2f}x ({drop(fast)}, {fast.metrics.size_mb:.2f} MB; trial {fast.number}) | "
            f"smallest {small.metrics.size_mb:.2f} MB ({small.metrics.speedup:.2f}x, {drop(small)}; trial {small.number}) | "
            f"most accurate {drop(best)} ({best.metrics.speedup:.2f}x; trial {best.number})")


class LoopDisplay:
    """``print`` (above the bar), ``detail`` (a trial's indented lines), ``started`` / ``finished`` per trial."""

    def __init__(self, log: Callable[[str], None], *, total: int, done: int, live: bool, verbose: bool):
        self._log, self.verbose, self.total = log, verbose, total
        self._live = None
        self._current = ""
        self._detail = ""
        self._best = ""
        if live:
            from rich.console import Console

            console = Console(highlight=False)
            if console.is_terminal:
                self._start(console, total, done)

    @property
    def live(self) -> bool:
        return self._live is not None

    def _start(self, console, total: int, done: int) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        # ETA = mean time per trial finished by this process x trials left (rich's own estimate needs two
        # samples inside a 30 s window; a trial takes minutes)
        self._progress = Progress(SpinnerColumn(), TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA [cyan]{task.fields[eta]}"),
                                  console=console)
        self._task = self._progress.add_task("trials", total=total, completed=done, eta="after the first trial")
        self._t0, self._done0 = time.monotonic(), done
        self._status = Text()
        self._live = Live(Group(self._progress, self._status), console=console, refresh_per_second=4,
                          transient=False, redirect_stdout=True, redirect_stderr=True)
        self._live.start()

    def _render(self) -> None:
        if self._live is None:
            return

        lines = []
        if self._current:
            lines.append(f"  now: {self._current}" + (f" - {self._detail}" if self._detail else ""))
        if self._best:
            lines.append("  best so far within the constraints:")
            lines += [f"    {part}" for part in self._best.split(" | ")]
        self._status.plain = "\n".join(lines)
        self._live.update(self._live.renderable)

    def print(self, msg: str) -> None:
        if self._live is not None:
            self._live.console.print(msg, soft_wrap=True)
        else:
            self._log(msg)

    def detail(self, msg: str) -> None:
        """A trial's log line: indented ones are details (bar only, printed when verbose)."""
        if msg[:1].isspace():
            self._detail = msg.strip()
            self._render()
            if not self.verbose:
                return
        self.print(msg)

    def started(self, number: int, description: str) -> None:
        self._current, self._detail = f"trial {number}: {description}", ""
        self._render()
        if self.verbose:
            self.print(f"trial {number}: {description}")

    def best(self, best: str) -> None:
        """The best trade-offs so far (a resumed run starts with those of its finished trials)."""
        self._best = best
        self._render()

    def finished(self, line: str, done: int, best: str) -> None:
        self._best, self._current, self._detail = best, "", ""
        if self._live is not None:
            n = done - self._done0
            left = (time.monotonic() - self._t0) / n * max(0, self.total - done) if n > 0 else None
            eta = "-" if left is None else f"{int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
            self._progress.update(self._task, completed=done, eta=eta)
        self.print(line)
        self._render()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
