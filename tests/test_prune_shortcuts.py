"""Pruning never hands on an inconsistent network: parameter-free shortcuts that change the channel count
(a strided slice + zero channels padded on, "option A" of the ResNet paper's CIFAR nets) prune inside each
block and across block interfaces once the shortcut is rewritten into an equal 1x1 conv; a model whose pruning cannot be made consistent is INFEASIBLE, naming
the module that blocks it. Real models, real Torch-Pruning, real ONNX Runtime."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compress.export import export_onnx
from autocompress.compress.prune import prune_model
from autocompress.compress.rewrite import ChannelMap, linearise_channel_maps
from autocompress.errors import InfeasibleCandidate

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

# A user's model file: CIFAR-style ResNet whose downsampling shortcuts have no parameters.
PAD_RESNET_SOURCE = textwrap.dedent(
    """
    import torch.nn as nn
    import torch.nn.functional as F


    class PadShortcut(nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.extra = extra

        def forward(self, x):  # halve the resolution, pad the new channels with zeros: no parameters
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = PadShortcut(cout - cin) if stride != 1 else nn.Identity()

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + self.shortcut(x))


    class PadResNet(nn.Module):
        def __init__(self, num_classes=10, widths=(8, 16, 32)):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            blocks, cin = [], widths[0]
            for i, w in enumerate(widths):
                blocks += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(widths[-1], num_classes)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


    def pad_resnet():
        return PadResNet()
    """
)


def _pad_resnet():
    ns: dict = {}
    exec(PAD_RESNET_SOURCE, ns)
    torch.manual_seed(0)
    return ns["pad_resnet"]().eval()


def test_zero_padding_shortcuts_become_exact_channel_maps():
    """The parameter-free shortcut is rewritten into a frozen 1x1 strided conv only after checking it gives the
    same output; the network's output is unchanged."""
    model = _pad_resnet()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
    done = linearise_channel_maps(model, X)
    assert done == ["blocks.2.shortcut", "blocks.4.shortcut"]
    sc = model.blocks[2].shortcut
    assert isinstance(sc, ChannelMap) and sc.stride == (2, 2) and (sc.in_channels, sc.out_channels) == (8, 16)
    assert not sc.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


class SpaceToDepth(nn.Module):  # linear but not a 1x1 strided conv: must be left alone
    def forward(self, x):
        return F.pixel_unshuffle(x, 2)


class Clamp(nn.Module):  # changes channels and is not linear: left alone
    def forward(self, x):
        return torch.cat([x, x.clamp(min=0)], 1)[:, :, ::2, ::2]


@pytest.mark.parametrize("mod", [SpaceToDepth(), Clamp()])
def test_channel_maps_that_are_not_strided_1x1_convs_are_left_alone(mod):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), mod, nn.Conv2d(16 if isinstance(mod, SpaceToDepth) else 8, 4, 1))
    assert linearise_channel_maps(net, X) == []
    assert net[1] is mod


def test_zero_padding_shortcuts_prune_every_width(tmp_path):
    model = _pad_resnet()
    res = prune_model(model, {"_default": 0.5}, X)
    pruned = res.model
    assert res.rewritten == ("blocks.2.shortcut", "blocks.4.shortcut")
    assert pruned(torch.randn(3, 3, 16, 16)).shape == (3, 10)
    assert res.params_after < 0.4 * res.params_before and res.macs_after < 0.4 * res.macs_before
    for i, (before, after) in enumerate(zip(model.blocks, pruned.blocks)):
        # the block's inside and its interface (the width the residual sum and the shortcut share) halve
        assert after.conv1.out_channels == before.conv1.out_channels // 2 == after.conv2.in_channels, i
        assert after.conv2.out_channels == before.conv2.out_channels // 2, i
        assert res.layer_ratios[f"blocks.{i}.conv1"] == 0.5
    assert not pruned.blocks[2].shortcut.weight.requires_grad  # still the fixed map, now on the kept channels
    exp = export_onnx(pruned, X, tmp_path / "pruned.onnx")  # checks ONNX Runtime against PyTorch itself
    sess = ort.InferenceSession(str(exp.path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 16, 16)
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, pruned(x).numpy(), rtol=1e-3, atol=1e-4)


class HardCodedSlice(nn.Module):
    """A block whose forward keeps a hard-coded number of channels and scales them by a fixed buffer: fine
    with one channel fewer (31 -> the first 24), broken at half (16 channels against 24 scales)."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 24).view(1, 24, 1, 1))

    def forward(self, x):
        return torch.relu(self.expand(x))[:, :24] * self.scale


class SliceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = HardCodedSlice()
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.body(torch.relu(self.stem(x))).mean((2, 3)))


def test_inconsistent_pruning_is_infeasible_naming_the_module():
    torch.manual_seed(0)
    model = SliceNet().eval()
    with pytest.raises(InfeasibleCandidate) as e:
        prune_model(model, {"body.expand": 0.5}, X)
    msg = str(e.value)
    assert "\n" not in msg
    # the module whose call raises, the line of the user's code and the operation's own error
    assert "body (HardCodedSlice) fails at test_prune_shortcuts.py:" in msg, msg
    assert "self.scale" in msg and "must match" in msg and "exclude" in msg, msg
    # the same model prunes where the hard-coded width is not involved
    res = prune_model(model, {"stem": 0.5}, X)
    assert res.model(X).shape == (1, 10) and res.params_after < res.params_before
    assert model.body.expand.out_channels == 32  # the caller's model is untouched


class GroupedView(nn.Module):
    """Hard-codes its width in a reshape: not one channel of ``expand`` can go."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1)

    def forward(self, x):
        y = self.expand(x)
        return y.view(y.size(0), 4, 8, y.size(2), y.size(3)).sum(1)


def test_nothing_prunable_consistently_is_infeasible_not_a_silent_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), GroupedView(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    with pytest.raises(InfeasibleCandidate, match=r"no channel of Sequential can be pruned consistently.*'1\.expand'"):
        prune_model(model, {"1.expand": 0.5}, X)


@pytest.mark.slow
def test_pad_resnet_user_run_completes_pruned(tmp_path, monkeypatch):
    """As a user would: the model file and its checkpoint through `autocompress run`; the pruned
    candidate is COMPLETE with fewer parameters and a measured speedup."""
    import pandas as pd
    import yaml

    from autocompress.cli import main
    from conftest import FAST_PROFILE

    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "pad_resnet.py").write_text(PAD_RESNET_SOURCE)
    torch.save(_pad_resnet().state_dict(), tmp_path / "ck.pt")
    space = {"kind": "search_space", "name": "pad", "sparsity": {"granularity": "uniform", "range": 0.5},
             "bits": {"choices": ["fp32"]}, "distill": {"epochs": 1},
             "seeds": [{"sparsity": 0.5, "bits": "fp32", "epochs": 1}]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(FAST_PROFILE))
    out = tmp_path / "run"
    rc = main(["run", "--model", f"{tmp_path / 'pad_resnet.py'}:pad_resnet", "--checkpoint", str(tmp_path / "ck.pt"),
               "--data", "digits", "--image-size", "16", "--space", str(tmp_path / "space.yaml"),
               "--profile", str(tmp_path / "profile.yaml"), "--trials", "1", "--out", str(out),
               "--max-accuracy-drop", "100", "--no-early-stop"])
    assert rc == 0
    rows = pd.read_csv(out / "trials.csv")
    assert list(rows.status) == ["COMPLETE"], rows.to_dict("records")
    params_before = json.loads((out / "baseline.json").read_text())["params"]
    assert rows.params[0] < 0.8 * params_before, (rows.params[0], params_before)
    assert rows.speedup[0] > 0  # measured against the baseline in the same rounds
