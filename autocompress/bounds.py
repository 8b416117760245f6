"""Time bounds on trial stages: a stage that runs past its bound stops that trial with one line.

The bound is an interval timer (``SIGALRM``): when it fires, the stage's code is interrupted where it is
(e.g. inside Torch-Pruning's dependency-graph build) and the trial becomes FAILED with a message naming the
stage, the bound and where it was. Signals reach only the main thread of a process: that is where trials
run with the local backend and in Ray's worker processes. Where no alarm can be set (another thread, a
platform without ``SIGALRM``, an alarm set by someone else pending), the stage runs unbounded and says so once.

Bounds nest (:func:`deadline` inside :func:`stage_bound`: the pruner gives Torch-Pruning's whole-graph
attempt part of the prune stage's time): one timer is armed for the earliest deadline. The interruption
is a ``BaseException`` so that ``except Exception`` inside the stage cannot swallow it, and the timer
repeats after it first fires, so that a bare ``except:`` (Torch-Pruning's tracer retries a failed forward
that way) gets the next one.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import StageError

_WARNED: set[str] = set()
_PACKAGES = ("torch_pruning", "onnxruntime", "onnx", "torch")  # where a stage spends its time, named if there
_REPEAT_S = 0.5
_stack: list[tuple[object, float]] = []  # (token, monotonic deadline), outermost first
_previous: list = []  # the SIGALRM handler before the outermost bound


class BoundExceeded(Exception):
    """A :func:`deadline` passed; ``where`` names the library call it interrupted ('' if none)."""

    def __init__(self, seconds: float, where: str):
        super().__init__(f"ran past {seconds:g} s" + (f" (in {where})" if where else ""))
        self.seconds = seconds
        self.where = where


class _Expired(BaseException):
    def __init__(self, token: object, where: str):
        super().__init__(where)
        self.token = token
        self.where = where


def _where(frame) -> str:
    """The outermost library call the interrupted code was inside, e.g. ``torch_pruning BasePruner.__init__``."""
    outer = ""
    while frame is not None:
        parts = frame.f_code.co_filename.replace("\\", "/").split("/")
        pkg = next((p for p in _PACKAGES if p in parts), None)
        if pkg:
            outer = f"{pkg} {getattr(frame.f_code, 'co_qualname', frame.f_code.co_name)}"
        frame = frame.f_back
    return outer


def _fire(signum, frame):
    now = time.monotonic()
    for token, when in _stack:  # the outermost expired bound wins
        if when <= now:
            raise _Expired(token, _where(frame))
    _arm()  # woke early: wait for the next deadline


def _arm() -> None:
    if _stack:
        left = min(when for _, when in _stack) - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(left, 1e-4), _REPEAT_S)
    else:
        signal.setitimer(signal.ITIMER_REAL, 0)


def can_bound() -> bool:
    """Whether an alarm can be set here (main thread, SIGALRM available, no foreign alarm pending)."""
    return (hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
            and (bool(_stack) or signal.getitimer(signal.ITIMER_REAL)[0] == 0))


@contextmanager
def deadline(seconds: float | None) -> Iterator[bool]:
    """Run the body within ``seconds``; past it, raise :class:`BoundExceeded` here. Yields whether a bound
    is armed (False where none can be, or ``seconds`` is None: the body then runs unbounded)."""
    if not seconds or not can_bound():
        yield False
        return
    token = object()
    if not _stack:
        _previous[:] = [signal.signal(signal.SIGALRM, _fire)]
    depth = len(_stack)
    _stack.append((token, time.monotonic() + seconds))
    _arm()
    try:
        try:
            yield True
        except _Expired as e:
            if e.token is not token:
                raise
            raise BoundExceeded(seconds, e.where) from None
    finally:
        del _stack[depth:]  # this bound and any an interruption left behind
        _arm()
        if not _stack:
            signal.signal(signal.SIGALRM, _previous.pop() if _previous else signal.SIG_DFL)


@contextmanager
def stage_bound(stage: str, seconds: float | None, *, log: Callable[[str], None] = print) -> Iterator[None]:
    """Run a trial stage within ``seconds`` (None: unbounded); past it, raise ``StageError(stage, ...)``."""
    if seconds and not can_bound() and stage not in _WARNED:
        _WARNED.add(stage)
        log(f"note: the {stage} stage runs without its {seconds:g} s bound here (a time bound needs SIGALRM "
            "in the main thread with no other alarm pending)")
    try:
        with deadline(seconds):
            yield
    except (BoundExceeded, _Expired) as e:  # _Expired: an inner bound interrupted while it was being left
        where = f" (in {e.where})" if e.where else ""
        also = ", or exclude the blocks involved (sparsity.exclude)" if stage == "prune" else ""
        raise StageError(
            stage,
            f"{stage} stage exceeded its {seconds:g} s bound{where}; raise stage_timeout_s.{stage} in the "
            f"hardware profile{also}",
        ) from None
