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
from .bundle import DataBundle, make_bundle, resize, stratified_split

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")
FORMS = "use 'digits', an image folder (one subfolder per class, optional train/ and val/) or a .npz file"
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
        "digits", x[tr], y[tr], x[va], y[va], 10, tuple(str(i) for i in range(10)), seed, "digits"
    )


# ---------------------------------------------------------------- image folder
def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def _scan(root: Path) -> dict[str, list[Path]]:
    """ImageFolder layout: class name -> image files (recursively under the class folder)."""
    exts = _image_extensions()
    classes: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        classes[d.name] = files
    return classes


def _check_classes(root: Path, classes: dict[str, list[Path]], need: int = 2) -> None:
    if not classes:
        raise ConfigError(
            f"data folder '{root}': no class subfolders found; put images in one subfolder per class "
            "(e.g. cats/1.png, dogs/2.png)"
        )
    n_images = sum(len(v) for v in classes.values())
    if n_images == 0:
        raise ConfigError(
            f"data folder '{root}': no images found in {len(classes)} class folder(s); "
            f"supported extensions: {', '.join(_image_extensions())}"
        )
    non_empty = [c for c, v in classes.items() if v]
    if len(non_empty) < need:
        raise ConfigError(
            f"data folder '{root}': only {len(non_empty)} class with images ({', '.join(non_empty)}); "
            f"classification needs at least {need} class subfolders with images"
        )


def _read_images(files: list[Path], image_size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    out = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"image '{f}': cannot be read ({e}); remove or replace the file") from None
        out[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return out


def _flatten(classes: dict[str, list[Path]], class_to_idx: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for c, fs in classes.items():
        files += fs
        labels += [class_to_idx[c]] * len(fs)
    return files, np.asarray(labels, dtype=np.int64)


def load_folder_bundle(root: Path, image_size: int, seed: int) -> DataBundle:
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_c, val_c = _scan(root / "train"), _scan(root / "val")
        _check_classes(root / "train", train_c)
        extra = sorted(set(val_c) - set(train_c))
        if extra:
            raise ConfigError(
                f"data folder '{root}': val/ has classes missing from train/: {', '.join(extra[:5])}; "
                "use the same class subfolders in train/ and val/"
            )
        if not any(val_c.values()):
            raise ConfigError(f"data folder '{root / 'val'}': no images found; add validation images per class")
        names = tuple(train_c)
        idx = {c: i for i, c in enumerate(names)}
        f_tr, y_tr = _flatten(train_c, idx)
        f_va, y_va = _flatten(val_c, idx)
    else:
        classes = _scan(root)
        _check_classes(root, classes)
        names = tuple(classes)
        files, labels = _flatten(classes, {c: i for i, c in enumerate(names)})
        tr, va = stratified_split(labels, 0.2, seed)
        if len(va) == 0:
            raise ConfigError(
                f"data folder '{root}': too few images to split into train and val (every class has one); "
                "add images or provide train/ and val/ subfolders"
            )
        f_tr, y_tr = [files[i] for i in tr], labels[tr]
        f_va, y_va = [files[i] for i in va], labels[va]
    x_tr = _read_images(f_tr, image_size).float() / 255.0
    x_va = _read_images(f_va, image_size).float() / 255.0
    return make_bundle(
        root.name, x_tr, torch.from_numpy(y_tr), x_va, torch.from_numpy(y_va), len(names), names, seed,
        f"folder:{root.name}",
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
    t_tr, t_va = _to_unit(path, "x_train", x_tr), _to_unit(path, "x_val", x_va)
    if min(t_tr.shape[-2:]) < MIN_NPZ_SIZE:
        t_tr, t_va = resize(t_tr, image_size), resize(t_va, image_size)
    return make_bundle(
        path.stem, t_tr, torch.from_numpy(y_tr), t_va, torch.from_numpy(y_va), num_classes,
        names or tuple(str(i) for i in range(num_classes)), seed, f"npz:{path.name}",
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


def load_source(source: str, resolved: str, image_size: int, seed: int) -> DataBundle:
    if resolved == "digits":
        return load_digits_bundle(image_size, seed)
    p = Path(resolved)
    if p.is_dir():
        return load_folder_bundle(p, image_size, seed)
    if p.suffix.lower() == ".npz":
        return load_npz_bundle(p, image_size, seed)
    raise ConfigError(f"data '{source}': unsupported file type '{p.suffix or p.name}'; {FORMS}")
