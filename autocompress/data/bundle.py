"""The data set every stage works on: two splits of pixels + labels, read in normalised batches.

Pixels are kept as they were read: ``uint8`` (image folders, uint8 ``.npz``) or float in [0, 1] (digits,
float ``.npz``), in memory while they fit the memory budget (:mod:`.images`), else as a list of files
decoded in batches by a DataLoader. Every consumer reads through one API and gets normalised float32:

    data.batches("train", 256, indices=None, device=None)  -> iterator of (x, y) batches
    data.take("val", idx)                                   -> one normalised float32 tensor
    data.size("train"), len(data.split("train"))            -> number of samples
    data.x_calib                                            -> small normalised calibration tensor

Normalisation is ``(x / 255 - mean) / std`` per batch with the train split's per-channel statistics,
the same arithmetic the former float path applied to the whole split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CALIB_MAX = 256
STATS_ELEMENTS = 1 << 22  # pixel values per chunk when computing statistics / the fingerprint (32 MiB as int64)
SPLITS = ("train", "val")


class Pixels(Protocol):
    """One split's raw pixels (uint8 0..255 or float 0..1), N,C,H,W."""

    in_memory: bool
    dtype: torch.dtype

    def __len__(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    def read(self, idx: np.ndarray) -> torch.Tensor: ...
    def iter_batches(self, chunks: Sequence[np.ndarray], progress: str | None = None) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True, eq=False)
class MemoryPixels:
    """Pixels held in memory as one tensor (uint8 or float32)."""

    x: torch.Tensor
    in_memory: bool = True

    def __len__(self) -> int:
        return len(self.x)

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.x.shape[1:])

    def read(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(idx, dtype=np.int64))]

    def iter_batches(self, chunks: Sequence[np.ndarray], progress: str | None = None) -> Iterator[torch.Tensor]:
        for c in chunks:
            c = np.asarray(c, dtype=np.int64)
            if len(c) and c[-1] - c[0] == len(c) - 1 and np.all(np.diff(c) == 1):
                yield self.x[int(c[0]):int(c[-1]) + 1]  # a contiguous run: a view, no copy
            else:
                yield self.x[torch.from_numpy(c)]


@dataclass(frozen=True, eq=False)
class Split:
    """One split: raw pixels, int64 labels and the normalisation applied per batch."""

    pixels: Pixels
    labels: torch.Tensor
    mean: torch.Tensor  # C, in the [0, 1] scale
    std: torch.Tensor

    @staticmethod
    def from_tensors(x: torch.Tensor, y: torch.Tensor) -> "Split":
        """An in-memory split of already-normalised float inputs (tests, the Python API)."""
        c = x.shape[1] if x.dim() == 4 else 1
        return Split(MemoryPixels(x.float().contiguous()), y.long(), torch.zeros(c), torch.ones(c))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.pixels.in_memory

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        if x.dim() != 4:
            return x
        mean = self.mean.to(x.device)[None, :, None, None]
        std = self.std.to(x.device)[None, :, None, None]
        return (x - mean) / std

    def take(self, idx, device=None) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        raw = self.pixels.read(idx)
        if device is not None:
            raw = raw.to(device)
        return self.normalise(raw).contiguous()

    def batches(self, batch_size: int, indices=None, *, device=None, progress: str | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) in chunks of ``batch_size`` of ``indices`` (default: all, in order); x normalised float32.

        Raw pixels go to ``device`` before normalisation (uint8 crosses the bus, not float32)."""
        idx = np.arange(len(self), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        bs = max(1, int(batch_size))
        chunks = [idx[i:i + bs] for i in range(0, len(idx), bs)]
        for c, raw in zip(chunks, self.pixels.iter_batches(chunks, progress=progress)):
            y = self.labels[torch.from_numpy(c)]
            if device is not None:
                raw, y = raw.to(device, non_blocking=True), y.to(device, non_blocking=True)
            yield self.normalise(raw), y


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Train and validation splits, the calibration subset and what describes the data set.

    Bundles are memoised and shared: treat them as read-only.
    """

    name: str
    train: Split
    val: Split
    x_calib: torch.Tensor  # calibration subset drawn from train (seeded, <= 256 samples), normalised float32
    num_classes: int
    class_names: tuple[str, ...]
    fingerprint: str  # content hash of the pixels + labels + source: cache key for teachers and logits
    mean: tuple[float, ...] = ()  # per-channel statistics of the train split used to normalise
    std: tuple[float, ...] = ()
    info: dict = field(default_factory=dict)  # how the source was read (layout, splits used): YAML-safe, for run.yaml
    normalize: str = "dataset"  # how mean/std were chosen: dataset | imagenet | none | explicit (preprocessing.py)

    def renormalised(self, normalize: str, mean, std) -> "DataBundle":
        """The same pixels normalised with other per-channel statistics (in the 0..1 pixel scale).

        The fingerprint changes with them (teachers and logits are cached per normalisation); the default,
        the train split's own statistics, keeps the bundle as it is."""
        import dataclasses

        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if normalize == "dataset" and torch.equal(m, self.train.mean) and torch.equal(s, self.train.std):
            return self
        shape = (1, -1, 1, 1)
        raw = self.x_calib * self.train.std.view(shape) + self.train.mean.view(shape)
        h = hashlib.sha256(f"{self.fingerprint}|{normalize}|{m.tolist()}|{s.tolist()}".encode())
        return dataclasses.replace(
            self, train=dataclasses.replace(self.train, mean=m, std=s), val=dataclasses.replace(self.val, mean=m, std=s),
            x_calib=((raw - m.view(shape)) / s.view(shape)).contiguous(), fingerprint=h.hexdigest()[:16],
            mean=tuple(float(v) for v in m), std=tuple(float(v) for v in s), normalize=normalize,
        )

    # ------------------------------------------------------------ the accessor API
    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split {name!r}: use one of {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val

    def size(self, split: str) -> int:
        return len(self.split(split))

    def batches(self, split: str, batch_size: int, indices=None, *, device=None, progress: str | None = None):
        return self.split(split).batches(batch_size, indices, device=device, progress=progress)

    def take(self, split: str, idx, device=None) -> torch.Tensor:
        return self.split(split).take(idx, device=device)

    @property
    def y_train(self) -> torch.Tensor:
        return self.train.labels

    @property
    def y_val(self) -> torch.Tensor:
        return self.val.labels

    @property
    def in_memory(self) -> bool:
        return self.train.in_memory and self.val.in_memory

    @property
    def x_train(self) -> torch.Tensor:
        """The whole train split, normalised (in-memory bundles only: tests and small scripts)."""
        return self._whole("train")

    @property
    def x_val(self) -> torch.Tensor:
        return self._whole("val")

    def _whole(self, split: str) -> torch.Tensor:
        s = self.split(split)
        if not s.in_memory:
            raise RuntimeError(f"data set '{self.name}': the {split} split is read from disk (beyond the memory "
                               f"budget); read it with data.batches('{split}', ...) instead of x_{split}")
        return s.take(np.arange(len(s)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.pixels.shape
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        where = "memory" if self.in_memory else "disk"
        return (
            f"DataBundle({self.name!r}, train={self.size('train')}, val={self.size('val')}, "
            f"calib={len(self.x_calib)}, classes={self.num_classes}, shape={self.input_shape}, "
            f"{self.train.pixels.dtype} in {where})"
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


def _chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + size), dtype=np.int64) for i in range(0, n, size)]


def _uint8_scan(source: str, train: Pixels, y_train: torch.Tensor, val: Pixels, y_val: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One pass over uint8 pixels: exact per-channel mean/std of train (integer sums, unbiased std as
    ``torch.std``) and the content hash of both splits' pixels and labels (the same whether the pixels
    are in memory or on disk)."""
    h = hashlib.sha256(source.encode())
    s1 = s2 = None
    for name, px, y in (("train", train, y_train), ("val", val, y_val)):
        h.update(f"{name}:{(len(px), *px.shape)}".encode())
        per_chunk = max(1, STATS_ELEMENTS // int(np.prod(px.shape)))  # bounded int64 temporaries at any image size
        for raw in px.iter_batches(_chunks(len(px), per_chunk), progress=None if px.in_memory else f"reading {name} images"):
            h.update(raw.contiguous().numpy().tobytes())
            if name == "train":
                wide = raw.to(torch.int64)
                a, b = wide.sum(dim=(0, 2, 3)), (wide * wide).sum(dim=(0, 2, 3))
                s1 = a if s1 is None else s1 + a
                s2 = b if s2 is None else s2 + b
        h.update(y.contiguous().numpy().tobytes())
    n = len(train) * train.shape[1] * train.shape[2]
    means, stds = [], []
    for a, b in zip(s1.tolist(), s2.tolist()):  # python ints: exact
        means.append(a / (255.0 * n))
        var = (b * n - a * a) / (n * max(1, n - 1)) / (255.0 * 255.0)
        stds.append(max(var, 0.0) ** 0.5)
    mean = torch.tensor(means, dtype=torch.float32)
    std = torch.tensor(stds, dtype=torch.float32).clamp_min(1e-6)
    return mean, std, h.hexdigest()[:16]


def make_bundle(
    name: str,
    x_train,
    y_train: torch.Tensor,
    x_val,
    y_val: torch.Tensor,
    num_classes: int,
    class_names: tuple[str, ...],
    seed: int,
    source_id: str,
    info: dict | None = None,
) -> DataBundle:
    """Statistics of the train split, the fingerprint and the calibration subset.

    ``x_train`` / ``x_val``: uint8 (0..255) or float (0..1) N,C,H,W tensors, or :class:`Pixels` (e.g. files
    read from disk). Float pixels are normalised and hashed exactly as before uint8 storage existed (so
    digits keeps its fingerprint and cached teachers); uint8 pixels get exact integer statistics.
    """
    y_train = y_train.long().contiguous()
    y_val = y_val.long().contiguous()
    px_tr = x_train if not isinstance(x_train, torch.Tensor) else MemoryPixels(_as_stored(x_train))
    px_va = x_val if not isinstance(x_val, torch.Tensor) else MemoryPixels(_as_stored(x_val))
    tag = f"{source_id}|seed={seed}"
    if px_tr.dtype == torch.uint8 and px_va.dtype == torch.uint8:
        mean, std, fp = _uint8_scan(tag, px_tr, y_train, px_va, y_val)
    else:
        if px_tr.dtype == torch.uint8:
            px_tr = MemoryPixels(px_tr.x.float() / 255.0)
        if px_va.dtype == torch.uint8:
            px_va = MemoryPixels(px_va.x.float() / 255.0)
        mean, std = channel_stats(px_tr.x)
        m, s = mean[None, :, None, None], std[None, :, None, None]
        fp = fingerprint(tag, ((px_tr.x - m) / s).contiguous(), y_train, ((px_va.x - m) / s).contiguous(), y_val)
    train = Split(px_tr, y_train, mean, std)
    val = Split(px_va, y_val, mean, std)
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(train), generator=g)[: min(CALIB_MAX, len(train))].sort().values
    return DataBundle(
        name=name,
        train=train,
        val=val,
        x_calib=train.take(calib_idx.numpy()),
        num_classes=int(num_classes),
        class_names=tuple(class_names),
        fingerprint=fp,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        info=dict(info or {}),
    )


def _as_stored(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous() if x.dtype == torch.uint8 else x.float().contiguous()
