"""The preprocessing contract: statistics chosen once, refused when they cannot fit, stamped into ONNX."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn as nn

from autocompress.compress.export import export_onnx
from autocompress.errors import ConfigError
from autocompress.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, Preprocessing, read_onnx, resolve_stats,
                                        stamp_onnx)


def test_modes_resolve_to_per_channel_statistics():
    ds = ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert resolve_stats("dataset", None, None, 3, ds) == ("dataset", (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert resolve_stats("imagenet", None, None, 3, ds) == ("imagenet", IMAGENET_MEAN, IMAGENET_STD)
    assert resolve_stats("none", None, None, 1, ds) == ("none", (0.0,), (1.0,))
    # explicit mean/std win over the mode
    assert resolve_stats("imagenet", [0.5] * 3, [0.25] * 3, 3, ds) == ("explicit", (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("kwargs, words", [
    (dict(normalize="dataset", mean=[0.5, 0.5], std=[0.2, 0.2], channels=3), "mean has 2 values but the images have 3"),
    (dict(normalize="dataset", mean=[0.5] * 3, std=None, channels=3), "give both mean and std"),
    (dict(normalize="dataset", mean=[0.5] * 3, std=[0.2, 0.0, 0.2], channels=3), "must be > 0"),
    (dict(normalize="imagenet", mean=None, std=None, channels=1), "needs 3-channel images"),
    (dict(normalize="zscore", mean=None, std=None, channels=3), "not known; choose one of dataset, imagenet, none"),
])
def test_statistics_that_cannot_fit_are_refused_in_one_line(kwargs, words):
    with pytest.raises(ConfigError) as e:
        resolve_stats(dataset_stats=((0.0,) * 3, (1.0,) * 3), **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_onnx_file_carries_its_preprocessing(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.zeros(1, 3, 16, 16), path)
    prep = Preprocessing("explicit", (0.5, 0.4, 0.3), (0.2, 0.2, 0.25), (3, 16, 16), class_names=("cat", "dog"))
    stamp_onnx(path, prep, {"autocompress.trial": "7"})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["mean"] == "[0.5, 0.4, 0.3]" and props["input_shape"] == "[3, 16, 16]"
    assert props["autocompress.trial"] == "7" and props["normalize"] == "explicit"
    assert read_onnx(path) == prep
    # the stamped file still runs in ONNX Runtime
    import numpy as np
    import onnxruntime as ort

    out = ort.InferenceSession(str(path)).run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})[0]
    assert out.shape == (1, 2)


def test_load_data_applies_the_chosen_normalisation(digits):
    from autocompress.data import load_data

    raw = digits.x_train * torch.tensor(digits.std).view(1, -1, 1, 1) + torch.tensor(digits.mean).view(1, -1, 1, 1)
    none = load_data("digits", image_size=16, normalize="none")
    assert none.normalize == "none" and torch.allclose(none.x_train, raw, atol=1e-5)
    net = load_data("digits", image_size=16, normalize="imagenet")
    want = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(net.x_train, want, atol=1e-5)
    calib_raw = digits.x_calib * torch.tensor(digits.std).view(1, -1, 1, 1) + torch.tensor(digits.mean).view(1, -1, 1, 1)
    assert torch.allclose(net.x_calib, (calib_raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
                          / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), atol=1e-5)
    # teachers and logits are cached per normalisation; the default keeps the data set's fingerprint
    assert len({digits.fingerprint, none.fingerprint, net.fingerprint}) == 3
    assert load_data("digits", image_size=16).fingerprint == digits.fingerprint


def test_a_run_writes_its_preprocessing_into_run_yaml_and_every_model(tmp_path, monkeypatch):
    import json

    import yaml
    from conftest import int8_run

    out = int8_run(tmp_path, monkeypatch, "--mean", "0.2,0.2,0.2", "--std", "0.3,0.3,0.3")
    pre = yaml.safe_load((out / "run.yaml").read_text())["preprocessing"]
    assert pre["normalize"] == "explicit" and pre["mean"] == [0.2] * 3 and pre["input_shape"] == [3, 16, 16]
    assert pre["class_names"] == [str(i) for i in range(10)]
    assert read_onnx(out / "models" / "baseline.onnx") == Preprocessing.from_dict(pre)
    fronts = sorted((out / "models").glob("trial_*.onnx"))
    assert fronts and all(read_onnx(f) == Preprocessing.from_dict(pre) for f in fronts)
    card = json.loads(fronts[0].with_suffix(".json").read_text())
    assert card["preprocessing"]["std"] == [0.3] * 3


def test_wrong_statistics_on_the_command_line_give_one_line(tmp_path, capsys):
    from autocompress.cli import main

    rc = main(["run", "--data", "digits", "--mean", "0.5,0.5", "--std", "0.2,0.2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc != 0 and "mean has 2 values but the images have 3 channel(s)" in err and "Traceback" not in err
    rc = main(["run", "--data", "digits", "--mean", "0.5,x", "--std", "0.2", "--out", str(tmp_path / "r2")])
    assert rc != 0 and "--mean '0.5,x': expected numbers" in capsys.readouterr().err
