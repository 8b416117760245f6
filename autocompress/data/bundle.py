"""The in-memory data set every stage works on, and the helpers that build one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CALIB_MAX = 256


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Normalised float32 N,C,H,W tensors and int64 labels, held in memory.

    Bundles are memoised and shared: treat the tensors as read-only.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_calib: torch.Tensor  # calibration subset drawn from train (seeded, <= 256 samples) for int8
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str  # content hash of the tensors + source: cache key for teachers and logits
    mean: tuple[float, ...] = ()  # per-channel statistics of the train split used to normalise
    std: tuple[float, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"DataBundle({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"calib={len(self.x_calib)}, classes={self.num_classes}, shape={self.input_shape})"
        )


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: each class with >= 2 samples gives max(1, round(f*n)) to val."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean, std


def fingerprint(source: str, *tensors: torch.Tensor) -> str:
    h = hashlib.sha256(source.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_bundle(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    class_names: tuple[str, ...],
    seed: int,
    source_id: str,
) -> DataBundle:
    """Normalise with the train split's per-channel statistics and draw the calibration subset."""
    x_train = x_train.float()
    x_val = x_val.float()
    mean, std = channel_stats(x_train)
    x_train = ((x_train - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()
    x_val = ((x_val - mean[None, :, None, None]) / std[None, :, None, None]).contiguous()
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(x_train), generator=g)[: min(CALIB_MAX, len(x_train))].sort().values
    y_train = y_train.long().contiguous()
    y_val = y_val.long().contiguous()
    return DataBundle(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_calib=x_train[calib_idx].contiguous(),
        num_classes=int(num_classes),
        class_names=tuple(class_names),
        fingerprint=fingerprint(f"{source_id}|seed={seed}", x_train, y_train, x_val, y_val),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
