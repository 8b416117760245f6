"""Accuracy of the deployable ONNX artifact (fp32, fp16 or int8) in ONNX Runtime over the validation split."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import HardwareProfile
from ..errors import ConfigError, StageError, UnavailableError
from . import hardware

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class AccuracyResult:
    top1: float  # 0..1
    top5: float | None  # only when there are more than 5 classes
    metric: float | None  # the user's metric(outputs, targets), when one was given
    n: int
    seconds: float


def load_metric(spec: str) -> Metric:
    """``"path/to/file.py:fn"`` or ``"pkg.mod:fn"``; imported only when named. fn(outputs, targets) -> float."""
    src, sep, fn_name = str(spec).rpartition(":")
    if not sep or not src or not fn_name:
        raise ConfigError(f"metric '{spec}': expected 'file.py:function' or 'package.module:function'")
    try:
        if src.endswith(".py"):
            p = Path(src)
            if not p.is_file():
                raise ConfigError(f"metric '{spec}': file '{src}' not found; check the path")
            name = f"_autocompress_metric_{abs(hash(str(p.resolve())))}"
            mspec = importlib.util.spec_from_file_location(name, p)
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[name] = mod
            mspec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(src)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"metric '{spec}': importing '{src}' failed: {type(e).__name__}: {hardware._one_line(e)}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise ConfigError(f"metric '{spec}': '{src}' has no attribute '{fn_name}'")
    if not callable(fn):
        raise ConfigError(f"metric '{spec}': '{fn_name}' is not callable")
    return fn


def _cpu_profile(profile: HardwareProfile | None) -> HardwareProfile:
    """The profile if its EP is here, else the plain CPU EP with the profile's threads (accuracy only)."""
    if profile is None:
        return HardwareProfile(name="accuracy-cpu", graph_optimization_level="all")
    try:
        hardware.check_available(profile)
        return profile
    except UnavailableError:
        return profile.model_copy(update={"execution_provider": hardware.CPU_EP, "provider_options": {}})


def _numpy_batches(x, bs: int):
    """numpy float batches of ``x``: an array, or a data split (``.batches``: read and normalised per batch,
    so a large validation split is never held whole)."""
    if hasattr(x, "batches"):
        for xb, _ in x.batches(bs):
            yield xb.numpy()
    else:
        for i in range(0, len(x), bs):
            yield x[i:i + bs]


def evaluate_onnx(path, x, y=None, *, batch_size: int = 256, metric: Metric | None = None,
                  profile: HardwareProfile | None = None) -> AccuracyResult:
    """Top-1/top-5 (and the user's metric) of the ONNX model on (x, y), run in batches.

    ``x``: a float array with ``y`` its labels, or a data split (``data.val``; its labels are used)."""
    t0 = time.perf_counter()
    if y is None:
        if not hasattr(x, "labels"):
            raise StageError("evaluate", "labels are missing: pass y, or a data split that carries them")
        y = x.labels.numpy()
    if len(x) != len(y):
        raise StageError("evaluate", f"{len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise StageError("evaluate", "the validation split is empty")
    sess = hardware.make_session(path, _cpu_profile(profile))
    inp = sess.get_inputs()[0]
    dtype = hardware.input_dtype(sess)
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    bs = max(1, min(batch_size, len(x)))
    if fixed is not None:
        bs = fixed  # exported with a fixed batch (usually 1): run it as it is
    sample_shape = tuple(x.pixels.shape) if hasattr(x, "pixels") else tuple(x.shape[1:])
    hardware.check_input_shape(sess, (bs, *sample_shape), "evaluate", f"model {Path(str(path)).name}")

    outs = []
    n = len(x)
    # a fixed-batch model (usually 1) reads the split in larger chunks, run batch by batch
    read_bs = bs if fixed is None else max(bs, (256 // bs) * bs)
    i = 0
    for chunk in _numpy_batches(x, read_bs):
        for j in range(0, len(chunk), bs):
            xb = np.ascontiguousarray(chunk[j:j + bs], dtype=dtype)
            pad = 0
            if fixed is not None and len(xb) < fixed:  # last partial batch of a fixed-batch model
                pad = fixed - len(xb)
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            try:
                o = sess.run(None, {inp.name: xb})[0]
            except Exception as e:
                raise StageError("evaluate", f"ONNX Runtime failed on batch {i}: {hardware._one_line(e)}") from None
            outs.append(o[: len(o) - pad] if pad else o)
            i += 1
    out = np.concatenate(outs).astype(np.float32).reshape(n, -1)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).any(axis=1).sum())
        raise StageError("evaluate", f"the model produced non-finite outputs (NaN/inf) for {bad} of {n} inputs")

    y = np.asarray(y).reshape(-1)
    top1 = float((out.argmax(1) == y).mean())
    top5 = None
    if out.shape[1] > 5:
        top = np.argpartition(-out, 5, axis=1)[:, :5]
        top5 = float((top == y[:, None]).any(axis=1).mean())
    m = None
    if metric is not None:
        try:
            m = float(metric(out, y))
        except Exception as e:
            raise StageError("evaluate", f"the metric raised {type(e).__name__}: {hardware._one_line(e)}") from None
    return AccuracyResult(top1=top1, top5=top5, metric=m, n=n, seconds=time.perf_counter() - t0)
