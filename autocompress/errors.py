"""Errors the user can act on.

Every error raised for bad input or a failed stage derives from :class:`AutocompressError`; the CLI
prints its message as one line and exits non-zero, never with a traceback (``--debug`` shows one).
"""

from __future__ import annotations


class AutocompressError(Exception):
    """Base class: the message names what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(AutocompressError):
    """Bad user input: a YAML file, a CLI flag, a model entrypoint, a data path, a checkpoint."""


class StageError(AutocompressError):
    """A compression or measurement stage failed for one candidate (export, quantize, evaluate...)."""

    exit_code = 3

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


class InfeasibleCandidate(AutocompressError):
    """A candidate that cannot be built (a layer pruned to zero channels, a precision the target lacks)."""

    exit_code = 3


class LeftWhole(InfeasibleCandidate):
    """Channel rounding (``round_to``) leaves every requested layer at its full width: nothing would be pruned."""


class UnavailableError(AutocompressError):
    """What the hardware profile asks for is not present here (no GPU, EP not installed)."""

    exit_code = 4
