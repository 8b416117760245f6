"""Data sources: the bundled scikit-learn digits, an image folder, a ``.npz`` file.

Every check on user data happens here and fails with a one-line :class:`ConfigError` that names the
path, the problem and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from . import images
from .bundle import DataBundle, make_bundle, resize, stratified_split
from .folders import folder_splits

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")
FORMS = "use 'digits', an image folder (one subfolder per class, optional train/ and val/ or test/) or a .npz file"
MIN_NPZ_SIZE = 8


# ---------------------------------------------------------------- digits
def load_digits_bundle(image_size: int, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # N,1,8,8 in [0,1]
    labels = d.target.astype(np.int64)
    tr, va = stratified_split(labels, 0.3, seed)
    x = resize(images, image_size).clamp(0, 1).expand(-1, 3, -1, -1)
    y = torch.from_numpy(labels)
    return make_bundle(
        "digits", x[tr], y[tr], x[va], y[va], 10, tuple(str(i) for i in range(10)), seed, "digits",
        info={"source": "digits", "layout": "seeded split",
              "split": f"scikit-learn digits ({len(labels)}) split seeded 70%/30% into {len(tr)} train / {len(va)} val"},
    )


# ---------------------------------------------------------------- image folder
def load_folder_bundle(root: Path, image_size: int, seed: int, memory_budget: int | None = None) -> DataBundle:
    splits = folder_splits(root, seed)  # the layout: which files are train / validation, class names
    f_tr, y_tr, f_va, y_va = splits.train_files, splits.y_train, splits.val_files, splits.y_val
    names = splits.class_names
    # uint8 pixels, each split in memory while it fits the budget, else read from disk in batches
    budget = images.memory_budget(memory_budget)
    x_tr, used = images.split_pixels(f_tr, image_size, budget, "train")
    x_va, _ = images.split_pixels(f_va, image_size, budget - used, "val")
    return make_bundle(
        root.name, x_tr, torch.from_numpy(y_tr), x_va, torch.from_numpy(y_va), len(names), names, seed,
        f"folder:{root.name}", info={"source": "folder", **splits.info},
    )


# ---------------------------------------------------------------- npz
def _to_nchw(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return np.transpose(x, (0, 3, 1, 2))
        raise ConfigError(
            f"data file '{path}': {key} has shape {x.shape}; channels must be 1 or 3, "
            "laid out as N,C,H,W or N,H,W,C"
        )
    raise ConfigError(f"data file '{path}': {key} has shape {x.shape}; expected N,C,H,W, N,H,W,C or N,H,W")


def _to_unit(path: Path, key: str, x: np.ndarray) -> torch.Tensor:
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_:
        return torch.from_numpy(x.astype(np.float32))
    raise ConfigError(f"data file '{path}': {key} has dtype {x.dtype}; store images as uint8 (0..255) or float")


def _labels(path: Path, key: str, y: np.ndarray, n: int, xkey: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1) if np.asarray(y).ndim == 2 and 1 in np.asarray(y).shape else np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"data file '{path}': {key} has shape {y.shape}; expected one integer label per sample")
    if len(y) != n:
        raise ConfigError(
            f"data file '{path}': {key} has {len(y)} labels but {xkey} has {n} samples; give one label per sample"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ConfigError(f"data file '{path}': {key} has dtype {y.dtype}; labels must be integers 0..K-1")
    return y.astype(np.int64)


def load_npz_bundle(path: Path, image_size: int, seed: int) -> DataBundle:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ConfigError(f"data file '{path}': cannot be read as .npz ({type(e).__name__}: {e}); "
                          "save it with numpy.savez") from None
    with z:
        missing = [k for k in NPZ_KEYS if k not in z.files]
        if missing:
            raise ConfigError(
                f"data file '{path}': missing key(s) {', '.join(missing)} (found: {', '.join(z.files) or 'none'}); "
                f"save it with numpy.savez(path, {', '.join(f'{k}=...' for k in NPZ_KEYS)})"
            )
        arrays = {k: z[k] for k in NPZ_KEYS}
        names = tuple(str(s) for s in z["class_names"]) if "class_names" in z.files else None
    x_tr = _to_nchw(path, "x_train", arrays["x_train"])
    x_va = _to_nchw(path, "x_val", arrays["x_val"])
    if x_tr.shape[1:] != x_va.shape[1:]:
        raise ConfigError(
            f"data file '{path}': x_train samples have shape {x_tr.shape[1:]} but x_val {x_va.shape[1:]}; "
            "use the same channels and size"
        )
    if len(x_tr) == 0 or len(x_va) == 0:
        raise ConfigError(f"data file '{path}': x_train or x_val is empty; both need samples")
    y_tr = _labels(path, "y_train", arrays["y_train"], len(x_tr), "x_train")
    y_va = _labels(path, "y_val", arrays["y_val"], len(x_va), "x_val")
    num_classes = len(names) if names else int(y_tr.max()) + 1
    for key, y in (("y_train", y_tr), ("y_val", y_va)):
        if y.min() < 0 or y.max() >= num_classes:
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise ConfigError(
                f"data file '{path}': {key} has label {bad} outside 0..{num_classes - 1} "
                f"({'class_names' if names else 'y_train'} defines {num_classes} classes); "
                "labels must be 0..K-1 and every val label must occur in train"
            )
    if len(np.unique(y_tr)) < 2:
        raise ConfigError(f"data file '{path}': y_train holds a single class; classification needs at least 2")
    if x_tr.dtype == np.uint8 and x_va.dtype == np.uint8 and min(x_tr.shape[-2:]) >= MIN_NPZ_SIZE:
        # held as uint8 (a quarter of float32), normalised per batch
        t_tr, t_va = torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(np.ascontiguousarray(x_va))
    else:
        t_tr, t_va = _to_unit(path, "x_train", x_tr), _to_unit(path, "x_val", x_va)
        if min(t_tr.shape[-2:]) < MIN_NPZ_SIZE:
            t_tr, t_va = resize(t_tr, image_size), resize(t_va, image_size)
    return make_bundle(
        path.stem, t_tr, torch.from_numpy(y_tr), t_va, torch.from_numpy(y_va), num_classes,
        names or tuple(str(i) for i in range(num_classes)), seed, f"npz:{path.name}",
        info={"source": "npz", "layout": "x_train+x_val",
              "split": f"{path.name}: x_train ({len(y_tr)}) + x_val ({len(y_va)}) as validation"},
    )


# ---------------------------------------------------------------- dispatch
def source_key(source: str) -> tuple[str, object]:
    """(resolved source, modification stamp) used to memoise loads; validates that the path exists.

    For a folder the stamp is the newest mtime of its folders and files plus their count."""
    if source == "digits":
        return "digits", 0.0
    p = Path(os.path.expanduser(source))
    if not p.exists():
        raise ConfigError(f"data '{source}': no such file or folder; check the path, or {FORMS}")
    if p.is_dir():
        stamps = [os.stat(d).st_mtime for d, _, _ in os.walk(p)]
        stamps += [os.stat(os.path.join(d, f)).st_mtime for d, _, files in os.walk(p) for f in files]
        return str(p.resolve()), (max(stamps, default=0.0), len(stamps))  # count catches added/removed files
    return str(p.resolve()), p.stat().st_mtime


def load_source(source: str, resolved: str, image_size: int, seed: int, memory_budget: int | None = None) -> DataBundle:
    if resolved == "digits":
        return load_digits_bundle(image_size, seed)
    p = Path(resolved)
    if p.is_dir():
        return load_folder_bundle(p, image_size, seed, memory_budget)
    if p.suffix.lower() == ".npz":
        return load_npz_bundle(p, image_size, seed)
    raise ConfigError(f"data '{source}': unsupported file type '{p.suffix or p.name}'; {FORMS}")
