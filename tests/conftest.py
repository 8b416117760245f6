"""Shared fixtures: small, real components (no mocks, no downloads)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_CNN_SOURCE = textwrap.dedent(
    """
    import torch.nn as nn


    def tiny_cnn(num_classes=10, in_channels=3, width=16):
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )


    def tiny_student(num_classes, input_shape, width=8):
        return tiny_cnn(num_classes, input_shape[0], width)
    """
)


# A hardware profile that measures fast enough for tests (1 thread, a few short rounds).
FAST_PROFILE = {
    "kind": "hardware_profile", "name": "tiny-cpu", "intra_op_threads": 1, "precisions": ["fp32", "int8"],
    "int8_format": "qdq", "int8_types": "u8s8",
    # the tiny CNN's int8 alone runs about as fast as fp32: keep the spaces' int8 seeds as written (the rule that
    # runs them in fp32 where int8 does not pay, space.seeds_for_int8, has its own tests)
    "int8_seeds_min_speedup": 0,
    "latency": {"warmup": 1, "min_rounds": 2, "max_rounds": 3, "time_cap_s": 0.5, "block_ms": 2},
}


def make_workspace(d: Path, space: dict, profile: dict = FAST_PROFILE, *, models_source: str = TINY_CNN_SOURCE,
                   teacher: str | None = None) -> Path:
    """Inputs of a tiny real search in ``d``: models.py, space.yaml, profile.yaml, an empty cache/ and,
    when ``teacher`` names a file, a seeded ``tiny_cnn()`` state_dict there (so no teacher is trained)."""
    import yaml

    (d / "models.py").write_text(models_source)
    (d / "space.yaml").write_text(yaml.safe_dump(space))
    (d / "profile.yaml").write_text(yaml.safe_dump(profile))
    (d / "cache").mkdir()
    if teacher:
        import torch

        ns: dict = {}
        exec(models_source, ns)
        torch.manual_seed(0)
        torch.save(ns["tiny_cnn"]().state_dict(), d / teacher)
    return d


QUANTIZE_ONLY = {"kind": "search_space", "name": "q", "sparsity": None, "bits": {"choices": ["int8"]},
                 "distill": {"enabled": False}}


def int8_run(tmp_path: Path, monkeypatch, *extra: str) -> Path:
    """One int8-only trial of tiny_cnn (a seeded checkpoint) on 16-px digits through the CLI; returns the run folder."""
    from autocompress.cli import main

    ws = make_workspace(tmp_path, QUANTIZE_ONLY, FAST_PROFILE, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = tmp_path / "run"
    rc = main(["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
               "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
               "--trials", "1", "--out", str(out), "--max-accuracy-drop", "100", *extra])
    assert rc == 0
    return out


@pytest.fixture(autouse=True)
def _no_final_retiming(monkeypatch):
    """Test runs skip the final re-timing pass (3 fresh processes per run); tests/test_retime.py turns it on."""
    monkeypatch.setenv("AUTOCOMPRESS_RETIME_WINDOWS", "0")


@pytest.fixture(scope="session")
def digits():
    """The bundled scikit-learn digits at 16x16 (3 channels), loaded once per session."""
    from autocompress.data import load_data

    return load_data("digits", image_size=16)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty autocompress cache folder (AUTOCOMPRESS_CACHE points at it)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_model_file(tmp_path) -> Path:
    """A user model file with ``tiny_cnn()`` (10 classes, 3 channels) and ``tiny_student(nc, shape, width)``."""
    path = tmp_path / "tiny_models.py"
    path.write_text(TINY_CNN_SOURCE)
    return path


class RuleExecutor:
    """A search-loop executor whose trials are a rule of the candidate (``outcome(number, cand)`` -> a record),
    one at a time: the loop's own logic runs for real without training anything."""

    capacity = 1

    def __init__(self):
        self.q = []

    def submit(self, number, cand):
        self.q.append((number, cand))

    def wait(self):
        return [self.outcome(*self.q.pop(0))]

    def outcome(self, number, cand):
        raise NotImplementedError

    def cancel(self):
        self.q.clear()

    def settled(self, rec):
        pass
