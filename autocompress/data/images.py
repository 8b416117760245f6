"""Image files -> uint8 pixels: decoded in parallel (a torch DataLoader with worker processes), held in
memory while they fit the memory budget, else re-read from disk batch by batch.

The memory budget bounds the uint8 pixels a data set may hold in RAM (train and validation together).
Default: half of the memory available when the data set is loaded. Override it with the run spec's
``data_memory_gb`` or the environment variable ``AUTOCOMPRESS_DATA_MEMORY`` (``8G``, ``512M``, bytes;
``0`` reads every split from disk). ``AUTOCOMPRESS_DATA_WORKERS`` sets the decoding processes (default:
the usable cores, at most 4).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .bundle import MemoryPixels

MEMORY_ENV = "AUTOCOMPRESS_DATA_MEMORY"
WORKERS_ENV = "AUTOCOMPRESS_DATA_WORKERS"
DEFAULT_FRACTION = 0.5  # of the available memory
PROGRESS_MIN = 2000  # show a progress bar when decoding at least this many images
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, where: str = MEMORY_ENV) -> int:
    """'8G', '512M', '1.5GB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not m:
        raise ConfigError(f"{where}={text!r}: not a size; use bytes or a number with K, M, G (e.g. 8G, 512M, 0)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget(override_bytes: int | None = None) -> int:
    """Bytes of pixels a data set may hold in memory: the override, else $AUTOCOMPRESS_DATA_MEMORY, else
    half the available memory."""
    if override_bytes is not None:
        return int(override_bytes)
    env = os.environ.get(MEMORY_ENV)
    if env not in (None, ""):
        return parse_size(env)
    return int(available_memory() * DEFAULT_FRACTION)


def decode_workers() -> int:
    env = os.environ.get(WORKERS_ENV)
    if env not in (None, ""):
        try:
            return max(0, int(env))
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV}={env!r}: use a whole number of processes (0 = decode in this process)") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def decode(path: Path, size: int) -> np.ndarray:
    """One image file -> H,W,3 uint8 at size x size (RGB, bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"image '{path}': cannot be read ({e}); remove or replace the file") from None


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: Sequence[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return torch.from_numpy(decode(self.files[i], self.size)).permute(2, 0, 1), None
        except ConfigError as e:  # raised in the main process, as one line (a worker's would carry a traceback)
            return None, str(e)


def _collate(items):
    errors = [e for _, e in items if e]
    if errors:
        return None, errors[0]
    return torch.stack([x for x, _ in items]), None


def iter_file_batches(files: Sequence[Path], size: int, chunks: Sequence[np.ndarray], *,
                      progress: str | None = None) -> Iterator[torch.Tensor]:
    """uint8 N,3,size,size batches of ``files`` for each index chunk, in order, decoded by worker processes."""
    total = int(sum(len(c) for c in chunks))
    if total == 0:
        return
    workers = decode_workers() if total > 64 else 0
    loader = torch.utils.data.DataLoader(
        _Files(files, size), batch_sampler=[np.asarray(c).tolist() for c in chunks if len(c)],
        num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers else None,
    )
    bar = task = None
    if progress and total >= PROGRESS_MIN:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if console.is_terminal:  # a live bar on a terminal; nothing in logs and pipes
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           console=console, transient=True)
            task = bar.add_task(progress, total=total)
            bar.start()
    try:
        for batch, err in loader:
            if err:
                raise ConfigError(err)
            if bar is not None:
                bar.advance(task, len(batch))
            yield batch
    finally:
        if bar is not None:
            bar.stop()


@dataclass(frozen=True, eq=False)
class FilePixels:
    """A split read from its image files on every pass (beyond the memory budget)."""

    files: tuple[Path, ...]
    size: int
    in_memory: bool = False
    dtype: torch.dtype = torch.uint8

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.size, self.size

    def read(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return torch.cat(list(iter_file_batches(self.files, self.size, [idx[i:i + 256] for i in range(0, len(idx), 256)])))

    def iter_batches(self, chunks: Sequence[np.ndarray], progress: str | None = None) -> Iterator[torch.Tensor]:
        return iter_file_batches(self.files, self.size, chunks, progress=progress)


def read_images(files: Sequence[Path], size: int, progress: str | None = "decoding images") -> torch.Tensor:
    """Decode every file into one uint8 N,3,size,size tensor (in parallel, with a progress bar)."""
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    chunks = [np.arange(i, min(len(files), i + 256)) for i in range(0, len(files), 256)]
    for c, batch in zip(chunks, iter_file_batches(files, size, chunks, progress=progress)):
        out[int(c[0]):int(c[-1]) + 1] = batch
    return out


def split_pixels(files: Sequence[Path], size: int, budget_left: int, what: str):
    """The split in memory (uint8) when it fits ``budget_left`` bytes, else read from disk; returns
    (pixels, bytes used)."""
    need = len(files) * 3 * size * size
    if need <= budget_left:
        return MemoryPixels(read_images(files, size, progress=f"decoding {what} images")), need
    return FilePixels(tuple(Path(f) for f in files), size), 0
