"""Checkpoints as people save and publish them: every format loads the exact weights, or fails in one line."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autocompress.errors import ConfigError
from autocompress.models.loader import load_checkpoint


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A user-style CIFAR ResNet (its own classes, BatchNorm everywhere)."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def trained(seed: int = 0, **kw) -> TinyResNet:
    """Random weights and non-trivial BatchNorm statistics (a few training-mode batches)."""
    torch.manual_seed(seed)
    m = TinyResNet(**kw)
    with torch.no_grad():
        for _ in range(3):
            m.train()(torch.randn(4, 3, 8, 8))
    return m.eval()


def same_weights(a: nn.Module, b: nn.Module, skip=()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


def without_counters(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


FORMATS = {
    "plain": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 90},
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "loss": 0.3},
    "net": lambda sd: {"net": sd, "acc": 93.1, "epoch": 199},
    "network": lambda sd: {"network": sd},
    "weights": lambda sd: {"weights": sd},
    "ema": lambda sd: {"ema": sd},
    "model_ema": lambda sd: {"model_ema": sd},
    "state_dict_ema": lambda sd: {"state_dict_ema": sd},
    "nested": lambda sd: {"checkpoint": {"model": {"state_dict": sd}}, "meta": {"epoch": 3}},
    "module.": lambda sd: {"state_dict": prefixed(sd, "module.")},
    "_orig_mod.": lambda sd: prefixed(sd, "_orig_mod."),
    "module._orig_mod.": lambda sd: prefixed(sd, "module._orig_mod."),
    "_orig_mod.module.": lambda sd: {"model": prefixed(sd, "_orig_mod.module.")},
    "numpy-and-namespace": lambda sd: {"state_dict": sd, "best_acc": np.float64(92.5), "epoch": np.int64(3),
                                       "hist": np.zeros(3, np.float32), "args": argparse.Namespace(lr=0.1, arch="r")},
}


@pytest.mark.parametrize("old_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_loads_the_exact_weights(tmp_path, fmt, old_format):
    src = trained()
    path = tmp_path / "ck.pth"
    torch.save(FORMATS[fmt](src.state_dict()), path, _use_new_zipfile_serialization=not old_format)
    dst = TinyResNet()
    assert not same_weights(dst, src)
    load_checkpoint(dst, path)
    assert same_weights(dst, src)


def test_published_checkpoint_from_an_old_pytorch(tmp_path):
    """{'state_dict': {'module.conv1.weight': ...}, 'best_prec1': ...}, old format, no BatchNorm counters."""
    src = trained()
    sd = prefixed(without_counters(src.state_dict()), "module.")
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": sd, "best_prec1": 91.73}, path, _use_new_zipfile_serialization=False)
    dst = TinyResNet()
    load_checkpoint(dst, path)
    assert same_weights(dst, src, skip={k for k in src.state_dict() if k.endswith("num_batches_tracked")})
    assert all(int(v) == 0 for k, v in dst.state_dict().items() if k.endswith("num_batches_tracked"))  # as strict=False
    with torch.no_grad():
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(dst.eval()(x), src(x))


def test_only_batchnorm_counters_may_be_missing(tmp_path):
    sd = without_counters(trained().state_dict())
    del sd["layer1.bn2.running_var"]
    path = tmp_path / "ck.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(TinyResNet(), path)
    msg = str(e.value)
    assert "missing: layer1.bn2.running_var (8,)" in msg and "num_batches_tracked" not in msg and "\n" not in msg


def test_the_candidate_that_matches_the_model_is_chosen(tmp_path):
    good, other, ema = trained(0), trained(1, num_classes=100), trained(2)
    path = tmp_path / "ck.pt"
    # the first key holds another head: the EMA weights are the ones that fit
    torch.save({"model": other.state_dict(), "model_ema": good.state_dict()}, path)
    dst = TinyResNet()
    load_checkpoint(dst, path)
    assert same_weights(dst, good)
    # both fit: the plain weights win over the EMA copy (as timm's loader does by default)
    torch.save({"model_ema": ema.state_dict(), "model": good.state_dict()}, path)
    load_checkpoint(dst, path)
    assert same_weights(dst, good)


def test_a_model_whose_own_keys_start_with_module(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = TinyResNet()

    src = Wrapper()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = Wrapper()
    load_checkpoint(dst, path)  # the prefix belongs to the model: kept
    assert same_weights(dst, src)
    torch.save(prefixed(src.state_dict(), "module."), path)  # DataParallel(Wrapper): one prefix dropped
    dst = Wrapper()
    load_checkpoint(dst, path)
    assert same_weights(dst, src)


def test_a_whole_pickled_module_needs_trust(tmp_path, capsys):
    src = trained()
    path = tmp_path / "whole.pt"
    torch.save(src, path)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(TinyResNet(), path)
    msg = str(e.value)
    assert "whole.pt" in msg and "whole pickled model" in msg and "--trust-checkpoint" in msg and "\n" not in msg
    assert "re-save it with torch.save(model.state_dict(), path)" in msg
    dst = TinyResNet()
    with pytest.warns(UserWarning, match="weights_only=False"):
        load_checkpoint(dst, path, trust=True)
    assert same_weights(dst, src)
    capsys.readouterr()


USER_NET = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def net():
    return Net()
"""


def test_a_whole_model_pickled_by_the_users_own_script(tmp_path, capsys):
    """torch.save(model) in the user's script names the class 'usernet_ck.Net'; --model usernet_ck.py:net imports
    that file under a private name, and a trusted load still finds the class."""
    import importlib
    import sys

    from autocompress.models.loader import resolve_model

    (tmp_path / "usernet_ck.py").write_text(USER_NET)
    sys.path.insert(0, str(tmp_path))
    try:
        torch.manual_seed(0)
        src = importlib.import_module("usernet_ck").net()
        torch.save(src, tmp_path / "whole.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("usernet_ck", None)
    model, _ = resolve_model(f"{tmp_path / 'usernet_ck.py'}:net", 10, (3, 8, 8))
    assert not torch.equal(model.conv.weight, src.conv.weight)
    with pytest.raises(ConfigError, match=r"whole pickled model \(.*usernet_ck\.Net"):
        load_checkpoint(model, tmp_path / "whole.pt")
    with pytest.warns(UserWarning):
        load_checkpoint(model, tmp_path / "whole.pt", trust=True)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    assert "usernet_ck" not in sys.modules  # the alias lives only while loading
    capsys.readouterr()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_archive(tmp_path, how):
    src = trained()
    path = tmp_path / f"{how}.pt"
    jit = torch.jit.script(src) if how == "script" else torch.jit.trace(src, torch.randn(1, 3, 8, 8))
    torch.jit.save(jit, path)
    dst = TinyResNet()
    load_checkpoint(dst, path)
    assert same_weights(dst, src)
    with pytest.raises(ConfigError, match=r"linear\.weight: checkpoint \(10, 16\), model \(5, 16\)"):
        load_checkpoint(TinyResNet(num_classes=5), path)


@pytest.mark.parametrize("name", ["model.safetensors", "weights.bin"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_safetensors_as_the_hub_and_timm_publish_them(tmp_path, name, prefix):
    from safetensors.torch import save_file

    src = trained()
    path = tmp_path / name  # read by its layout, whatever the file is called
    save_file(prefixed(src.state_dict(), prefix), str(path), metadata={"format": "pt"})
    dst = TinyResNet()
    load_checkpoint(dst, path)
    assert same_weights(dst, src)
    with pytest.raises(ConfigError, match=r"linear\.weight: checkpoint \(10, 16\), model \(5, 16\)"):
        load_checkpoint(TinyResNet(num_classes=5), path)


class TiedHead(TinyResNet):
    """A classifier whose two heads share one weight (tied, as language models tie their embeddings)."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(16, 10, bias=False)
        self.aux.weight = self.linear.weight


def test_tied_weights_saved_once_reach_every_name(tmp_path):
    from safetensors.torch import save_model

    torch.manual_seed(0)
    src = TiedHead().eval()
    path = tmp_path / "tied.safetensors"
    save_model(src, str(path))  # keeps one name of the shared tensor
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert len([k for k in f.keys() if k in ("aux.weight", "linear.weight")]) == 1
    dst = TiedHead()
    load_checkpoint(dst, path)
    assert same_weights(dst, src) and dst.aux.weight is dst.linear.weight
    # an untied model is not given one weight for two: the missing one is named
    untied = TinyResNet()
    untied.aux = nn.Linear(16, 10, bias=False)
    with pytest.raises(ConfigError, match="missing: (aux|linear)\\.weight"):
        load_checkpoint(untied, path)


def test_a_damaged_safetensors_file_is_one_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(trained().state_dict(), str(path))
    whole = path.read_bytes()
    for cut in (whole[:-100], whole[:1000]):  # interrupted downloads: in the tensors, in the header
        path.write_bytes(cut)
        with pytest.raises(ConfigError) as e:
            load_checkpoint(TinyResNet(), path)
        msg = str(e.value)
        assert "\n" not in msg and "model.safetensors" in msg and "safetensors file cannot be read" in msg
        assert "download or save it again" in msg


def test_a_true_mismatch_names_keys_and_shapes(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"state_dict": prefixed(trained(num_classes=100, width=8).state_dict(), "module.")}, path)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(TinyResNet(num_classes=10), path)
    msg = str(e.value)
    assert "\n" not in msg and "ck.pt" in msg and "key 'state_dict'" in msg
    assert "linear.weight: checkpoint (100, 16), model (10, 16)" in msg
    assert "linear.bias: checkpoint (100,), model (10,)" in msg

    class Deeper(TinyResNet):
        def __init__(self):
            super().__init__()
            self.layer3 = Block(16, 32, 2)

    torch.save(trained().state_dict(), path)
    with pytest.raises(ConfigError, match=r"missing: layer3\.conv1\.weight \(32, 16, 3, 3\)"):
        load_checkpoint(Deeper(), path)
    torch.save({"epoch": 3, "best": 0.9}, path)
    with pytest.raises(ConfigError, match="no weights in it"):
        load_checkpoint(TinyResNet(), path)


@pytest.mark.parametrize("fmt", ["legacy", "safetensors"])
def test_cli_run_with_a_published_checkpoint(tmp_path, monkeypatch, capsys, fmt):
    """`autocompress run --model file.py:fn --checkpoint ck`: an old-format, DataParallel, counter-less file (or the
    same weights as a Hub-style ``model.safetensors``) loads and the baseline (ONNX Runtime) scores what PyTorch
    scores with the original weights on the same images."""
    import json

    from conftest import TINY_CNN_SOURCE, make_workspace

    from autocompress.cli import main
    from autocompress.data import load_data

    ws = make_workspace(tmp_path, {"kind": "search_space", "name": "q", "sparsity": None, "bits": {"choices": ["fp32"]},
                                   "distill": {"enabled": False}})
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    ns: dict = {}
    exec(TINY_CNN_SOURCE, ns)
    torch.manual_seed(3)
    src = ns["tiny_cnn"]()
    data = load_data("digits", image_size=16)
    with torch.no_grad():
        for i in range(0, 256, 64):  # BatchNorm statistics of the real data
            src.train()(data.x_train[i:i + 64])
    src.eval()
    sd = prefixed(without_counters(src.state_dict()), "module.")
    ck = ws / ("ck.th" if fmt == "legacy" else "model.safetensors")
    if fmt == "legacy":
        torch.save({"state_dict": sd, "best_prec1": 12.5, "arch": "tiny_cnn"}, ck, _use_new_zipfile_serialization=False)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(ck), metadata={"format": "pt"})
    out = tmp_path / "run"
    rc = main(["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ck), "--data", "digits",
               "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
               "--trials", "1", "--out", str(out), "--max-accuracy-drop", "90"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    with torch.no_grad():
        torch_acc = float((src(data.x_val).argmax(1) == data.y_val).float().mean())
    base = json.loads((out / "baseline.json").read_text())
    assert base["teacher_source"] == f"checkpoint:{ck}"
    assert abs(base["accuracy"] - torch_acc) <= 1 / len(data.y_val) + 1e-9  # a near-tie may flip one argmax
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "models" / "baseline.onnx"), providers=["CPUExecutionProvider"])
    x = data.x_val[:32]
    onnx_logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(onnx_logits, src(x).numpy(), atol=1e-4)  # the checkpoint's weights, not a fresh init
