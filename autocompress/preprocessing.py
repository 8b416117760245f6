"""Preprocessing is part of a model's contract: the input size, the pixel scale and the normalisation the
model was trained and measured with.

Chosen once per run (``normalize``: the data set's own statistics, ImageNet's, none, or an explicit
``mean``/``std``), applied to every split by the data layer, and written where a shipped model travels:
the run's ``run.yaml``, every front model's card and the ``metadata_props`` of every exported ONNX file
(key ``autocompress.preprocessing``, a JSON object; ``mean``/``std``/``input_shape`` also as flat keys so
Netron and ``onnx.load(...).metadata_props`` show them at a glance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("dataset", "imagenet", "none")
METADATA_KEY = "autocompress.preprocessing"


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: ``x = (image_rgb_uint8 / 255 - mean) / std``, resized to ``input_shape``, NCHW."""

    normalize: str  # dataset | imagenet | none | explicit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]  # C, H, W
    scale: float = 1.0 / 255.0  # 8-bit pixels -> 0..1 before mean/std
    resize: str = "bilinear"
    layout: str = "NCHW"
    channel_order: str = "RGB"
    class_names: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = [round(v, 6) for v in self.mean], [round(v, 6) for v in self.std]
        d["input_shape"], d["class_names"] = list(self.input_shape), list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        for k in ("mean", "std", "input_shape", "class_names"):
            d[k] = tuple(d.get(k, ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def resolve_stats(normalize: str, mean: Sequence[float] | None, std: Sequence[float] | None,
                  channels: int, dataset_stats: tuple[Sequence[float], Sequence[float]] | None = None,
                  source: str = "run") -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """(mode, mean, std) for ``channels`` channels; explicit mean/std win over ``normalize``.

    ``dataset_stats`` is the train split's per-channel (mean, std), needed for ``normalize: dataset``.
    Raises one-line ConfigErrors for a wrong length, a non-positive std or an unknown mode.
    """
    if (mean is None) != (std is None):
        raise ConfigError(f"{source}: give both mean and std (one value per channel), or neither")
    if mean is not None:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        for name, v in (("mean", mean), ("std", std)):
            if len(v) != channels:
                raise ConfigError(f"{source}: {name} has {len(v)} values but the images have {channels} channel(s); "
                                  f"give one value per channel (e.g. --{name} {','.join(['0.5'] * channels)})")
        if min(std) <= 0:
            raise ConfigError(f"{source}: std {list(std)} must be > 0 for every channel")
        return "explicit", mean, std
    if normalize == "none":
        return "none", (0.0,) * channels, (1.0,) * channels
    if normalize == "imagenet":
        if channels != 3:
            raise ConfigError(f"{source}: normalize 'imagenet' needs 3-channel images, these have {channels}; "
                              "use 'dataset', 'none' or an explicit mean/std")
        return "imagenet", IMAGENET_MEAN, IMAGENET_STD
    if normalize == "dataset":
        if dataset_stats is None:
            raise ConfigError(f"{source}: normalize 'dataset' needs the train split's statistics")
        m, s = dataset_stats
        return "dataset", tuple(float(v) for v in m), tuple(max(float(v), 1e-6) for v in s)
    raise ConfigError(f"{source}: normalize '{normalize}' is not known; choose one of {', '.join(MODES)} "
                      "or give --mean and --std")


def stamp_onnx(path: str | Path, prep: Preprocessing, extra: dict[str, str] | None = None) -> None:
    """Write ``prep`` into the ONNX file's metadata_props (in place, atomically)."""
    import os

    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({
        METADATA_KEY: json.dumps(prep.to_dict(), sort_keys=True),
        "mean": json.dumps([round(v, 6) for v in prep.mean]),
        "std": json.dumps([round(v, 6) for v in prep.std]),
        "input_shape": json.dumps(list(prep.input_shape)),
        "normalize": prep.normalize,
        **(extra or {}),
    })
    onnx.helper.set_model_props(model, props)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.meta.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def read_onnx(path: str | Path) -> Preprocessing | None:
    """The preprocessing stamped into an ONNX file, or None when it has none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return Preprocessing.from_dict(json.loads(p.value))
    return None
