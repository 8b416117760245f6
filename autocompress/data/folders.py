"""Image-folder layouts: which files are train, which are validation, and the class names in order.

Layouts, in the order they are recognised (folder names matched case-insensitively):

- ``train/`` plus a validation split: the first of ``val/``, ``valid/``, ``validation/``, ``test/``,
  ``testing/`` present (``training/`` is read as ``train/``); the others are left out and said so.
- ``train/`` alone: a seeded, stratified 80/20 split of it.
- one subfolder per class (``cats/``, ``dogs/``): a seeded, stratified 80/20 split.

A folder whose subfolders are split names never becomes a set of classes; a validation or test
split without ``train/``, or split names mixed with class names, is refused with one line. Nothing
here reads an image: :func:`folder_splits` only lists files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .bundle import stratified_split

TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation", "test", "testing")  # preference order for the validation split
SPLIT_NAMES = frozenset(TRAIN_NAMES + VAL_NAMES)
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class FolderSplits:
    """File lists and labels of both splits, the class names (label i is ``class_names[i]``) and a
    YAML-safe description of the layout (``info``: recorded in run.yaml)."""

    train_files: list[Path]
    y_train: np.ndarray
    val_files: list[Path]
    y_val: np.ndarray
    class_names: tuple[str, ...]
    info: dict = field(default_factory=dict)


def image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _scan(root: Path) -> dict[str, list[Path]]:
    """ImageFolder layout: class name -> image files (recursively under the class folder), sorted."""
    exts = image_extensions()
    return {d.name: sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts) for d in _subdirs(root)}


def _check_classes(root: Path, classes: dict[str, list[Path]], need: int = 2) -> None:
    if not classes:
        raise ConfigError(
            f"data folder '{root}': no class subfolders found; put images in one subfolder per class "
            "(e.g. cats/1.png, dogs/2.png)"
        )
    if not any(classes.values()):
        raise ConfigError(
            f"data folder '{root}': no images found in {len(classes)} class folder(s); "
            f"supported extensions: {', '.join(image_extensions())}"
        )
    non_empty = [c for c, v in classes.items() if v]
    if len(non_empty) < need:
        raise ConfigError(
            f"data folder '{root}': only {len(non_empty)} class with images ({', '.join(non_empty)}); "
            f"classification needs at least {need} class subfolders with images"
        )


def _flatten(classes: dict[str, list[Path]], class_to_idx: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for c, fs in classes.items():
        files += fs
        labels += [class_to_idx[c]] * len(fs)
    return files, np.asarray(labels, dtype=np.int64)


def _seeded_split(root: Path, classes: dict[str, list[Path]], seed: int, fix: str):
    names = tuple(classes)
    files, labels = _flatten(classes, {c: i for i, c in enumerate(names)})
    tr, va = stratified_split(labels, VAL_FRACTION, seed)
    if len(va) == 0:
        raise ConfigError(
            f"data folder '{root}': too few images to split into train and validation (every class has one); {fix}"
        )
    return [files[i] for i in tr], labels[tr], [files[i] for i in va], labels[va], names


def _pick(by_name: dict[str, Path], names: tuple[str, ...]) -> Path | None:
    return next((by_name[n] for n in names if n in by_name), None)


def folder_splits(root: Path, seed: int) -> FolderSplits:
    """Decide the layout of ``root`` and list the files of each split; bad layouts raise ConfigError."""
    root = Path(root)
    subdirs = _subdirs(root)
    by_name: dict[str, Path] = {}
    for d in subdirs:
        by_name.setdefault(d.name.lower(), d)
    splits = [d for d in subdirs if d.name.lower() in SPLIT_NAMES]
    if len(subdirs) == 1 and any(d.name.lower() in SPLIT_NAMES for d in _subdirs(subdirs[0])):
        inner = ", ".join(f"{d.name}/" for d in _subdirs(subdirs[0]) if d.name.lower() in SPLIT_NAMES)
        raise ConfigError(
            f"data folder '{root}': holds one folder, {subdirs[0].name}/, with {inner} inside; "
            f"pass --data {subdirs[0]}"
        )
    if not splits:  # one subfolder per class
        classes = _scan(root)
        _check_classes(root, classes)
        f_tr, y_tr, f_va, y_va, names = _seeded_split(root, classes, seed, "add images or provide train/ and val/")
        desc = f"class folders ({len(f_tr) + len(f_va)}) split seeded {_split_text(f_tr, f_va)}"
        return _result(f_tr, y_tr, f_va, y_va, names, {"layout": "classes", "train_dir": ".", "val_dir": None}, desc)

    others = [d.name for d in subdirs if d.name.lower() not in SPLIT_NAMES]
    split_list = ", ".join(f"{d.name}/" for d in splits)
    if others:
        raise ConfigError(
            f"data folder '{root}': mixes split folders ({split_list}) with other folders "
            f"({', '.join(others[:5])}); put the class folders inside train/ (and val/ or test/), "
            "or use one subfolder per class and no split folders"
        )
    train_dir = _pick(by_name, TRAIN_NAMES)
    if train_dir is None:
        raise ConfigError(
            f"data folder '{root}': has {split_list} but no train/; add a train/ folder with one subfolder per "
            "class (the validation split is taken from val/, valid/, validation/ or test/)"
        )
    train_c = _scan(train_dir)
    _check_classes(train_dir, train_c)
    names = tuple(train_c)
    val_dir = _pick(by_name, VAL_NAMES)
    unused = [d.name for d in splits if d not in (train_dir, val_dir)]
    if val_dir is None:
        f_tr, y_tr, f_va, y_va, _ = _seeded_split(
            train_dir, train_c, seed, "add images or a val/ folder with one subfolder per class")
        desc = f"{train_dir.name}/ ({len(f_tr) + len(f_va)}) split seeded {_split_text(f_tr, f_va)}"
        info = {"layout": "train", "train_dir": train_dir.name, "val_dir": None}
        return _result(f_tr, y_tr, f_va, y_va, names, info, desc, unused=unused)

    val_c = _scan(val_dir)
    extra = sorted(set(val_c) - set(train_c))
    if extra:
        raise ConfigError(
            f"data folder '{root}': {val_dir.name}/ has classes missing from {train_dir.name}/: {', '.join(extra[:5])}; "
            f"use the same class subfolders in {train_dir.name}/ and {val_dir.name}/"
        )
    if not any(val_c.values()):
        raise ConfigError(
            f"data folder '{val_dir}': no images found; add validation images in one subfolder per class "
            f"(as in {train_dir.name}/)"
        )
    idx = {c: i for i, c in enumerate(names)}
    f_tr, y_tr = _flatten(train_c, idx)
    f_va, y_va = _flatten(val_c, idx)
    desc = f"{train_dir.name}/ ({len(f_tr)}) + {val_dir.name}/ ({len(f_va)}) as validation"
    info = {"layout": f"train+{val_dir.name.lower()}", "train_dir": train_dir.name, "val_dir": val_dir.name}
    return _result(f_tr, y_tr, f_va, y_va, names, info, desc, unused=unused)


def _split_text(f_tr, f_va) -> str:
    return f"{1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} into {len(f_tr)} train / {len(f_va)} val"


def _result(f_tr, y_tr, f_va, y_va, names, info: dict, desc: str, unused: list[str] = ()) -> FolderSplits:
    no_val = [names[i] for i in sorted(set(range(len(names))) - set(np.unique(y_va).tolist()))]
    notes = []
    if no_val:
        more = f" (+{len(no_val) - 5} more)" if len(no_val) > 5 else ""
        notes.append(f"no validation images for {len(no_val)} class(es): {', '.join(no_val[:5])}{more}")
    if unused:
        notes.append(f"not used: {', '.join(f'{u}/' for u in unused)}")
    info = {**info, "split": desc, "notes": notes, "classes_without_val": no_val, "unused_dirs": list(unused)}
    return FolderSplits(list(f_tr), np.asarray(y_tr, np.int64), list(f_va), np.asarray(y_va, np.int64), tuple(names), info)
