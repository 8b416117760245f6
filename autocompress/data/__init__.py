"""Data: the bundled scikit-learn digits, image folders and ``.npz`` files.

Pixels are held as uint8 in memory while they fit the memory budget, else read from disk in batches
(:mod:`.images`); every consumer reads normalised float32 batches through :class:`DataBundle`'s API
(``batches``, ``take``, ``size``). ``load_data`` is memoised per process by (resolved source,
modification time, image size, seed, memory budget).
"""

from __future__ import annotations

import threading

from ..errors import ConfigError
from .bundle import DataBundle, Split
from .sources import load_source, source_key

__all__ = ["DataBundle", "Split", "load_data", "clear_cache"]

_CACHE: dict[tuple, DataBundle] = {}
_LOCK = threading.Lock()


def load_data(source: str = "digits", image_size: int = 32, seed: int = 0, memory_budget: int | None = None,
              *, normalize: str = "dataset", mean=None, std=None) -> DataBundle:
    """Load a data set once per process.

    ``source``: ``"digits"``, an image folder (``class_x/*.png``, or ``train/`` + ``val/`` or ``test/``: see
    :mod:`.folders`) or a ``.npz`` with ``x_train, y_train, x_val, y_val``. Bad input raises :class:`ConfigError`.
    ``memory_budget``: bytes of pixels an image folder may hold in memory (default: ``images.memory_budget()``).
    ``normalize`` / ``mean`` / ``std``: the normalisation (:func:`autocompress.preprocessing.resolve_stats`);
    explicit ``mean``/``std`` win; the default is the train split's own statistics.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size {image_size!r} is too small; use an integer >= 8 (e.g. 32)")
    resolved, stamp = source_key(str(source))
    key = (resolved, stamp, image_size, int(seed), memory_budget)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            hit = _CACHE[key] = load_source(str(source), resolved, image_size, int(seed), memory_budget)
    if normalize == "dataset" and mean is None and std is None:
        return hit
    from ..preprocessing import resolve_stats

    mode, m, sd = resolve_stats(normalize, mean, std, hit.input_shape[0], (hit.mean, hit.std), source=f"data '{source}'")
    return hit.renormalised(mode, m, sd)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
