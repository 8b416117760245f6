"""Data: the bundled scikit-learn digits, image folders and ``.npz`` files, held in memory.

``load_data`` is memoised per process by (resolved source, modification time, image size, seed).
"""

from __future__ import annotations

import threading

from ..errors import ConfigError
from .bundle import DataBundle
from .sources import load_source, source_key

__all__ = ["DataBundle", "load_data", "clear_cache"]

_CACHE: dict[tuple, DataBundle] = {}
_LOCK = threading.Lock()


def load_data(source: str = "digits", image_size: int = 32, seed: int = 0) -> DataBundle:
    """Load a data set once per process.

    ``source``: ``"digits"``, an image folder (``class_x/*.png``, optional ``train/`` + ``val/``) or a
    ``.npz`` with ``x_train, y_train, x_val, y_val``. Bad input raises :class:`ConfigError`.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size {image_size!r} is too small; use an integer >= 8 (e.g. 32)")
    resolved, stamp = source_key(str(source))
    key = (resolved, stamp, image_size, int(seed))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            hit = _CACHE[key] = load_source(str(source), resolved, image_size, int(seed))
    return hit


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
