"""autocompress: automated, hardware-aware model compression search.

Python API::

    import autocompress
    result = autocompress.compress("resnet18", "digits", space="default", profile="cpu", trials=24)
    result.front            # pandas DataFrame of the Pareto front
    result.model_paths()    # ONNX files of the front
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

from .errors import AutocompressError, ConfigError, InfeasibleCandidate, StageError  # noqa: E402

_LAZY = {"RunSpec", "load_profile", "load_space"}  # from .config (pydantic), imported when first used: the
# target side (autocompress.profiling) runs where only numpy, onnx and onnxruntime are installed


def __getattr__(name: str):
    if name in _LAZY:
        from . import config

        return getattr(config, name)
    if name == "compress":
        import importlib

        return importlib.import_module(".compress", __name__)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")


def _compress(model: Any = "resnet18_x0_5", data: str = "digits", *, space: str = "default", profile: str = "cpu",
             trials: int | None = None, out: str | Path | None = None, log=None, **options):
    """Run a search and return a RunResult (``.front`` DataFrame, ``.model_paths()``, ``.report``).

    ``model`` is a zoo name, ``"file.py:fn"``/``"module:fn"``, or an ``nn.Module`` instance (used as the
    teacher as is: give its trained weights). Other options are RunSpec fields (``checkpoint``,
    ``constraints={"max_accuracy_drop": 1.0}``, ``sampler``, ``seed``, ``timeout``, ...). Given neither ``trials``
    nor ``timeout``, the budget is the command line's default: 24 trials or 7 minutes, whichever ends first.
    """
    from .config import RunSpec, parse
    from .engine import run

    if not isinstance(model, str):
        from .models.loader import register_instance

        model = register_instance(model)
    given = {"trials": trials} if trials is not None else {}
    spec = parse(RunSpec, {"model": model, "data": data, "space": space, "profile": profile, **given,
                           "out": str(out) if out else None, **options}, "compress()")
    kwargs = {"log": log} if log else {}
    return run(spec, **kwargs)


# ``autocompress.compress`` is also the name of the stages subpackage (compress/prune.py, ...). Importing
# a submodule rebinds the package attribute to the subpackage, so the subpackage itself is made callable
# (see compress/__init__.py) and both ``autocompress.compress(...)`` and ``autocompress.compress.prune``
# work in any import order. It is bound on first use (``__getattr__``), so the target side never loads it.


def pareto_front(run_dir: str | Path):
    """The Pareto front of a run folder as a DataFrame (rebuilt from its stored trials)."""
    from .report import finalize

    return finalize(Path(run_dir), log=lambda s: None).front


__all__ = ["compress", "pareto_front", "load_space", "load_profile", "RunSpec", "AutocompressError",
           "ConfigError", "StageError", "InfeasibleCandidate"]
