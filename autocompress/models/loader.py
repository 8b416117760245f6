"""Resolve a model spec (zoo name, ``file.py:function``, ``package.module:function``) and load checkpoints.

User modules are imported only because the user named them. Every failure is a one-line
:class:`ConfigError` that names the spec, the problem and the fix.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import did_you_mean
from .checkpoints import load_checkpoint
from .zoo import MODELS, build_model, family_of


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the zoo name, or the spec as the user wrote it
    family: str  # zoo family ("resnet", "mobilenet_v3"...) or "user"
    source: str  # "zoo:<name>", "file:<abs path>:<fn>" or "module:<pkg.mod>:<fn>"


def _split_spec(spec: str) -> tuple[str, str] | None:
    left, sep, fn = spec.rpartition(":")
    if not sep or not left or not fn or "/" in fn or "\\" in fn:
        return None
    return left, fn


def _is_file_spec(left: str) -> bool:
    return left.endswith(".py") or "/" in left or "\\" in left


def import_callable(spec: str, what: str = "model") -> tuple[Callable, str]:
    """``file.py:fn`` or ``package.module:fn`` -> (the callable, a source description)."""
    parts = _split_spec(spec)
    if parts is None:
        raise ConfigError(f"{what} '{spec}': expected 'path/to/file.py:function' or 'package.module:function'")
    left, fn_name = parts
    if _is_file_spec(left):
        path = Path(left).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{what} '{spec}': file '{left}' not found; check the path")
        mod_name = f"_autocompress_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(mod_name)
        if module is None or getattr(module, "__file__", None) != str(path):
            try:
                mspec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(mspec)
                sys.modules[mod_name] = module
                mspec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - user code: report, do not crash
                sys.modules.pop(mod_name, None)
                raise ConfigError(f"{what} '{spec}': importing '{left}' failed: {type(e).__name__}: {e}") from None
        source = f"file:{path}:{fn_name}"
    else:
        try:
            module = importlib.import_module(left)
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"{what} '{spec}': cannot import module '{left}' ({e}); check the name and that it is on PYTHONPATH"
            ) from None
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{what} '{spec}': importing '{left}' failed: {type(e).__name__}: {e}") from None
        source = f"module:{left}:{fn_name}"
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        problem = "has no function" if fn is None else "has a non-callable"
        raise ConfigError(f"{what} '{spec}': '{left}' {problem} '{fn_name}'{did_you_mean(fn_name, names)}")
    return fn, source


def check_model(model: nn.Module, name: str, num_classes: int, input_shape) -> None:
    """Run a dummy batch; the output must be a (batch, num_classes) tensor."""
    shape = (2, *(int(s) for s in input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"model '{name}' fails on input of shape {shape}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
            "check that it accepts the data's channels and image size"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model '{name}' returns {type(out).__name__}; it must return one logits tensor")
    if tuple(out.shape) != (shape[0], num_classes):
        raise ConfigError(
            f"model '{name}' outputs shape {tuple(out.shape)} on input {shape}; expected ({shape[0]}, {num_classes}): "
            f"make its last layer produce num_classes={num_classes} outputs"
        )


INSTANCE_PREFIX = "instance:"
_INSTANCES: dict[str, nn.Module] = {}


def register_instance(model: nn.Module) -> str:
    """Make an in-memory ``nn.Module`` resolvable by name in this process (for the Python API).

    :func:`resolve_model` returns a deep copy; :func:`~autocompress.models.teacher.get_teacher` uses its
    weights as they are (no training). The name only resolves in the process that registered it.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: got {type(model).__name__}; pass a torch.nn.Module, a zoo name or 'file.py:fn'")
    name = f"{INSTANCE_PREFIX}{type(model).__name__}@{id(model):x}"
    _INSTANCES[name] = model
    return name


def resolve_model(spec: str, num_classes: int, input_shape) -> tuple[nn.Module, ModelInfo]:
    """A zoo name (freshly initialised, adapted to ``input_shape``), a user entrypoint called with no
    args, or a name from :func:`register_instance` (a deep copy of that module)."""
    spec = str(spec).strip()
    if spec.startswith(INSTANCE_PREFIX):
        if spec not in _INSTANCES:
            raise ConfigError(
                f"model '{spec}': no such in-memory model in this process; pass the nn.Module to compress() "
                "in the same process, or use a zoo name or 'file.py:fn'"
            )
        model = copy.deepcopy(_INSTANCES[spec])
        info = ModelInfo(spec, "user", "instance")
    elif spec in MODELS:
        model = build_model(spec, num_classes, tuple(input_shape))
        info = ModelInfo(spec, family_of(spec), f"zoo:{spec}")
    elif _split_spec(spec) is not None:
        fn, source = import_callable(spec, "model")
        try:
            model = fn()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"model '{spec}': calling it raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model '{spec}': returned {type(model).__name__}, expected a torch.nn.Module; "
                "make the function return the model"
            )
        info = ModelInfo(spec, "user", source)
    else:
        raise ConfigError(
            f"unknown model '{spec}'{did_you_mean(spec, MODELS.names())}; use a zoo name "
            f"({', '.join(MODELS.names())}) or 'path/to/file.py:function' or 'package.module:function'"
        )
    check_model(model, spec, num_classes, input_shape)
    return model, info


def architecture_signature(model: nn.Module) -> str:
    """Hash of parameter/buffer names and shapes, plus the source of user classes."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)};".encode())
    # in a fixed order: a set of classes iterates in id order, which differs between processes (the cached teacher
    # of a model with two user classes was never found again)
    for m in sorted({type(m) for m in model.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        if not m.__module__.startswith(("torch", "torchvision")):
            try:
                h.update(inspect.getsource(m).encode())
            except (OSError, TypeError):
                h.update(m.__qualname__.encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- checkpoints: see checkpoints.py
__all__ = ["ModelInfo", "architecture_signature", "check_model", "import_callable", "load_checkpoint",
           "register_instance", "resolve_model"]
