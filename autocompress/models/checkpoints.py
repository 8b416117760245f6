"""Load a checkpoint as people save and publish them into a model, or refuse with one line.

Read: a plain ``state_dict``; a dict holding it under the usual keys (``state_dict``, ``model``,
``model_state_dict``, ``net``, ``ema``..., nested too; when several hold weights, the one that matches the
model best is used, the non-EMA one on a tie); the old (non-zip) ``torch.save`` format; ``module.``
(DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) prefixes, also combined; BatchNorm
``num_batches_tracked`` buffers missing (saved by PyTorch < 0.4.1: the model keeps its own, as
``load_state_dict`` does); a TorchScript archive (its ``state_dict``); a ``.safetensors`` file (the Hugging
Face Hub's and timm's format; read by its layout, not its name; tied weights saved once are given to every
name that shares them in the model); a whole pickled ``nn.Module``
only with ``trust`` (weights_only loading refuses it). Besides tensors, weights_only loading accepts the
data-only objects published checkpoints carry (numpy scalars and arrays, ``argparse.Namespace``).
Anything else that does not match is a :class:`ConfigError` naming the first keys with both shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError

# where training scripts keep the weights, in the order preferred on a tie (EMA weights last)
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params",
              "state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
MAX_DEPTH = 4


def _data_only_globals() -> list:
    """Globals that rebuild plain data (no code): numpy scalars/arrays/dtypes and argparse.Namespace."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [argparse.Namespace, np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    return out + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


USER_MODULE_PREFIX = "_autocompress_user_"  # how loader.import_callable names a user's model file


@contextlib.contextmanager
def _user_modules_by_file_name(model: nn.Module):
    """A model file is imported under a private name; a whole model pickled by the user's own scripts names
    its classes by the file's name (``mynet.Net``): make that name resolve to the same module while loading."""
    added = []
    for name in {type(m).__module__ for m in model.modules()}:
        mod = sys.modules.get(name)
        stem = Path(getattr(mod, "__file__", None) or "").stem
        if name.startswith(USER_MODULE_PREFIX) and stem and stem not in sys.modules:
            sys.modules[stem] = mod
            added.append(stem)
    try:
        yield
    finally:
        for stem in added:
            sys.modules.pop(stem, None)


def _is_safetensors(p: Path) -> bool:
    """The safetensors layout: an 8-byte little-endian header length, then a JSON header (a pickle starts with its
    protocol byte, a zip archive with ``PK``: neither has ``{`` at byte 8). A truncated file still counts."""
    with p.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read(p: Path, path: str, trust: bool, model: nn.Module) -> Any:
    if _is_safetensors(p):  # tensors only, no pickle: nothing in it can run code
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"checkpoint '{path}': safetensors file cannot be read ({_first_line(e)}); it is damaged or "
                              "was cut short: download or save it again") from None
    if _is_torchscript(p):
        try:
            return torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"checkpoint '{path}': TorchScript archive cannot be loaded ({_first_line(e)})") from None
    try:
        if trust:
            with _user_modules_by_file_name(model):
                return torch.load(p, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_data_only_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if not trust and "weights_only" in str(e).lower():
            names = _unsafe_globals(p, e)
            whole = any(n.startswith("torch.nn.modules.") for n in names)
            what = "holds a whole pickled model" if whole else "holds pickled objects besides weights"
            raise ConfigError(
                f"checkpoint '{path}': {what} ({_first(names)}), refused by weights_only loading because unpickling it can "
                "run code; pass --trust-checkpoint (trust_checkpoint: true) for a file you trust, or re-save it "
                "with torch.save(model.state_dict(), path)"
            ) from None
        if trust and isinstance(e, (ModuleNotFoundError, AttributeError)):
            raise ConfigError(
                f"checkpoint '{path}': its pickled classes cannot be found ({type(e).__name__}: {_first_line(e)}); run "
                "from the folder holding the module that defined them (or add it to PYTHONPATH), or re-save the weights "
                "with torch.save(model.state_dict(), path)"
            ) from None
        raise ConfigError(f"checkpoint '{path}': cannot be read ({type(e).__name__}: {_first_line(e)})") from None


def _unsafe_globals(p: Path, e: Exception) -> list[str]:
    """The classes/functions a refused file would unpickle (all of them for a zip file, else the first)."""
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception:  # noqa: BLE001 - the old format cannot be listed: the error names the first
        names = []
    g = re.search(r"GLOBAL (\S+)", str(e))
    names = names or ([g.group(1)] if g else [_first_line(e)])
    return sorted(names, key=lambda n: (n.startswith("torch."), n))  # the user's own classes first


def _first(items, n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _candidates(obj: Any, where: str = "", depth: int = 0):
    """(where, state_dict) for every set of weights in ``obj``: modules, tensor dicts, nested dicts."""
    if isinstance(obj, nn.Module):  # a trusted pickled module, or a TorchScript archive
        yield where or "the module", dict(obj.state_dict())
        return
    if not isinstance(obj, dict) or depth > MAX_DEPTH or not obj:
        return
    if (all(isinstance(k, str) for k in obj) and all(v is None or isinstance(v, torch.Tensor) for v in obj.values())
            and any(isinstance(v, torch.Tensor) for v in obj.values())):
        yield where or "top level", {k: v for k, v in obj.items() if v is not None}
        return
    keys = [k for k in STATE_KEYS if k in obj] + [k for k in obj if k not in STATE_KEYS]
    for k in keys:
        yield from _candidates(obj[k], f"{where}[{k!r}]" if where else f"key {k!r}", depth + 1)


def _strip_once(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith(PREFIXES) else key


def _normalise(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP and torch.compile prefixes, one level at a time, as far as that matches more of
    the model's keys (a model whose own submodule is called ``module`` keeps its prefix)."""
    best, variant = sd, sd
    for _ in range(MAX_DEPTH):
        stripped = {_strip_once(k): v for k, v in variant.items()}
        if stripped.keys() == variant.keys() or len(stripped) < len(variant):  # nothing to drop, or keys collide
            break
        variant = stripped
        if _score(variant, own) > _score(best, own):
            best = variant
    return best


def _score(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> int:
    return sum(1 for k, v in own.items() if k in sd and tuple(sd[k].shape) == tuple(v.shape))


def _bn_counters(model: nn.Module) -> set[str]:
    """State-dict keys of BatchNorm ``num_batches_tracked`` buffers (absent from pre-0.4.1 checkpoints)."""
    norm = nn.modules.batchnorm._NormBase
    return {f"{n}.num_batches_tracked" if n else "num_batches_tracked"
            for n, m in model.named_modules() if isinstance(m, norm) and m.num_batches_tracked is not None}


def _tied(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights the model ties (one tensor under several names) that the checkpoint holds under one name only
    (safetensors' ``save_model`` keeps one name of each shared tensor): every name gets that tensor."""
    names: dict[tuple, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if isinstance(v, torch.Tensor) and v.numel():
            names.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride()), []).append(k)
    out = dict(sd)
    for (_, _, shape, _), group in names.items():
        have = [k for k in group if k in sd and tuple(sd[k].shape) == shape]
        for k in group:
            if k not in sd and have:
                out[k] = sd[have[0]]
    return out


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _mismatch(path: str, model: nn.Module, where: str, sd: dict, own: dict, missing: list, unexpected: list,
              shapes: list) -> ConfigError:
    parts = [f"{k}: checkpoint {_shape(sd[k])}, model {_shape(own[k])}" for k in shapes[:3]]
    if missing:
        parts.append("missing: " + _first([f"{k} {_shape(own[k])}" for k in missing]))
    if unexpected:
        parts.append("unexpected: " + _first([f"{k} {_shape(sd[k])}" for k in unexpected]))
    counts = ", ".join(f"{n} {what}" for n, what in ((len(shapes), "with another shape"), (len(missing), "missing"),
                                                      (len(unexpected), "unexpected")) if n)
    counts += f" of the model's {len(own)} keys"
    return ConfigError(
        f"checkpoint '{path}' ({where}) does not match model {type(model).__name__} ({counts}): {'; '.join(parts)}; "
        "use the checkpoint of this exact architecture and number of classes"
    )


def load_checkpoint(model: nn.Module, path: str | Path, trust: bool = False) -> nn.Module:
    """Load weights into ``model`` (weights_only unless ``trust``); mismatches raise ConfigError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint '{path}': no such file; check the path")
    if trust:
        msg = (f"checkpoint '{path}' is loaded with weights_only=False (trust_checkpoint): this runs any code "
               "pickled in the file; use it only for files you trust")
        warnings.warn(msg, UserWarning, stacklevel=2)
        print(f"WARNING: {msg}", file=sys.stderr)
    obj = _read(p, str(path), trust, model)
    own = model.state_dict()
    found = [(w, _normalise(sd, own)) for w, sd in _candidates(obj)]
    if not found:
        raise ConfigError(
            f"checkpoint '{path}': holds {type(obj).__name__} with no weights in it; save it with "
            "torch.save(model.state_dict(), path) (or a dict with a 'state_dict' or 'model' key)"
        )
    where, sd = max(found, key=lambda c: _score(c[1], own))  # max keeps the first of equals: preferred keys
    sd = _tied(sd, model)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    fillable = _bn_counters(model)
    missing_real = [k for k in missing if k not in fillable]
    if missing_real or unexpected or shapes:
        raise _mismatch(str(path), model, where, sd, own, missing_real, unexpected, shapes)
    # BatchNorm counters an old PyTorch did not save keep the model's own value, as load_state_dict does
    model.load_state_dict({**{k: own[k] for k in missing}, **sd}, strict=True)
    return model
