"""Structured pruning on real tiny models: patterns, stages, criteria, infeasible ratios, measured cost."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from autocompress.compress.criteria import CRITERIA
from autocompress.compress.prune import (
    _kept,
    aligned_ratios,
    find_classifier,
    prunable_layers,
    prune_model,
    resolve_ratios,
    stage_groups,
    stage_mapping,
)
from autocompress.errors import ConfigError, InfeasibleCandidate


def cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = cbr(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.conv2(self.conv1(x)))


class TinyNet(nn.Module):
    """A user-style CNN: conv-bn-relu, a residual add, depthwise-separable, squeeze-excitation, concat."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        w = width
        self.stem = cbr(3, w)
        self.block = Residual(w)
        self.dw = cbr(w, w, stride=2, groups=w)
        self.pw = cbr(w, 2 * w, k=1)
        self.se = SE(2 * w)
        self.branch_a = cbr(2 * w, w)
        self.branch_b = cbr(2 * w, w, k=1)
        self.head = cbr(2 * w, 4 * w, k=1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = self.se(self.pw(self.dw(x)))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        x = self.head(x).mean((2, 3))
        return self.fc(x)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


X = torch.randn(2, 3, 32, 32)


def test_classifier_and_prunable_layers(tiny):
    assert find_classifier(tiny) == "fc"
    layers = prunable_layers(tiny)
    assert "fc" not in layers and "stem.0" in layers and "se.fc1" in layers


def test_resolve_ratios_patterns_and_precedence(tiny):
    r = resolve_ratios(tiny, {"_default": 0.3, "re:branch_.*": 0.5, "branch_a.0": 0.1})
    assert r["stem.0"] == 0.3 and r["branch_b.0"] == 0.5 and r["branch_a.0"] == 0.1
    assert "fc" not in r
    # later wins: the default written last overrides the exact name before it
    r = resolve_ratios(tiny, {"branch_a.0": 0.1, "_default": 0.3})
    assert r["branch_a.0"] == 0.3
    # a container name covers the layers inside it; unmatched layers get 0
    r = resolve_ratios(tiny, {"block": 0.25})
    assert r["block.conv1.0"] == 0.25 and r["block.conv2.0"] == 0.25 and r["stem.0"] == 0.0
    # excluded layers are left out
    r = resolve_ratios(tiny, {"_default": 0.5}, exclude=["re:se\\..*"])
    assert "se.fc1" not in r and "se.fc2" not in r and r["pw.0"] == 0.5


def test_resolve_ratios_rejects_bad_input(tiny):
    with pytest.raises(ConfigError, match="did you mean 'stem'"):
        resolve_ratios(tiny, {"stemm": 0.5})
    with pytest.raises(ConfigError, match="classifier"):
        resolve_ratios(tiny, {"fc": 0.5})
    with pytest.raises(ConfigError, match="regular expression"):
        resolve_ratios(tiny, {"re:(": 0.5})
    with pytest.raises(InfeasibleCandidate, match="stem.0"):
        resolve_ratios(tiny, {"stem": 1.0})


def test_zero_channels_is_infeasible(tiny):
    # 16 channels at 0.95 keep int(0.8) = 0
    with pytest.raises(InfeasibleCandidate, match="'stem.0'"):
        prune_model(tiny, {"stem": 0.95}, X)
    # round_to keeps the nearest multiple, at least one: a 16-channel layer at 0.5 with round_to 16 stays whole, and
    # when every layer would, the candidate is refused (not silently left unpruned)
    with pytest.raises(InfeasibleCandidate, match="round_to 16 keeps every layer whole"):
        prune_model(tiny, {"stem": 0.5}, X, round_to=16)


def test_prune_tiny_model_runs_and_shrinks(tiny):
    before = {n: p.clone() for n, p in tiny.state_dict().items()}
    res = prune_model(tiny, {"_default": 0.5}, X)
    out = res.model(X)
    assert out.shape == (2, 10)
    assert res.model.fc.out_features == 10
    assert 0.15 < res.params_after / res.params_before < 0.45
    assert res.macs_after < 0.5 * res.macs_before
    assert all(abs(v - 0.5) < 0.13 for v in res.layer_ratios.values()), res.layer_ratios
    # not in place: the original keeps its weights and shapes
    assert all(torch.equal(before[n], p) for n, p in tiny.state_dict().items())
    assert res.seconds > 0


def test_round_to_and_exclude(tiny):
    res = prune_model(tiny, {"_default": 0.4}, X, round_to=4, exclude=["head"])
    m = res.model
    assert m.head[0].out_channels == 64  # excluded
    for name in ("stem.0", "pw.0", "branch_a.0"):
        assert dict(m.named_modules())[name].out_channels % 4 == 0
    assert res.layer_ratios["stem.0"] > 0
    assert res.requested_ratios["stem.0"] == pytest.approx(0.4)


def test_round_to_keeps_the_nearest_multiple():
    # int(w * (1 - r)) rounded to the nearest multiple, at least one, at most the width
    assert [_kept(64, 0.8, 16), _kept(64, 0.8, 8), _kept(64, 0.75, 16), _kept(16, 0.5, 16), _kept(16, 0.9, 8)] == \
        [16, 16, 16, 16, 8]
    assert _kept(256, 0.7, 16) == 80 and _kept(256, 0.7, None) == 76
    r = aligned_ratios({"a": 0.7, "b": 0.5, "c": 0.0}, {"a": 256, "b": 16, "c": 64}, 16)
    assert int(256 * (1 - r["a"])) == 80 and r["b"] == 0.0 and r["c"] == 0.0


def test_round_to_prunes_to_multiples_in_a_real_network():
    from autocompress.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10, (3, 32, 32)).eval()
    x = torch.zeros(1, 3, 32, 32)
    res = prune_model(model, {"_default": 0.7}, x, round_to=16)
    convs = [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 for c in convs), [c.out_channels for c in convs]
    assert res.model(x).shape == (1, 10)
    assert 0.6 < res.layer_ratios["layer4.0.conv1"] < 0.75


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_every_criterion_runs(tiny, criterion):
    torch.manual_seed(0)
    calib = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    res = prune_model(tiny, {"_default": 0.5}, X, criterion=criterion, calib=calib)
    assert res.model(X).shape == (2, 10)
    assert res.params_after < res.params_before


def test_unknown_criterion_and_taylor_without_calib(tiny):
    with pytest.raises(ConfigError, match="did you mean 'l1'"):
        prune_model(tiny, {"_default": 0.5}, X, criterion="l11")
    with pytest.raises(ConfigError, match="calib"):
        prune_model(tiny, {"_default": 0.5}, X, criterion="taylor")


def _covers_once(model, groups):
    flat = [n for layers in groups.values() for n in layers]
    return sorted(flat) == sorted(prunable_layers(model))


def test_stage_groups_resnet_and_mobilenet():
    r18 = torchvision.models.resnet18(num_classes=10)
    g = stage_groups(r18)
    assert list(g) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert g["stem"] == ["conv1"] and "layer2.0.downsample.0" in g["layer2"]
    assert _covers_once(r18, g)
    mv2 = torchvision.models.mobilenet_v2(num_classes=10)
    g = stage_groups(mv2)
    assert 3 <= len(g) <= 5 and list(g)[0] == "stem"
    assert _covers_once(mv2, g)


def test_stage_groups_fallback_and_mapping(tiny):
    g = stage_groups(tiny)
    assert 2 <= len(g) <= 5 and _covers_once(tiny, g)
    flat = nn.Sequential(*[cbr(8, 8) for _ in range(6)], nn.Flatten(), nn.LazyLinear(10))
    flat[0] = cbr(3, 8)
    flat(torch.randn(1, 3, 4, 4))
    g2 = stage_groups(flat)
    assert list(g2) == ["stage1", "stage2", "stage3", "stage4"][: len(g2)] and _covers_once(flat, g2)
    first = list(g)[0]
    m = stage_mapping({first: 0.5, "_default": 0.1}, g)
    assert m["_default"] == 0.1 and all(m[n] == 0.5 for n in g[first])
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_mapping({"nope": 0.5}, g)


def test_resnet18_half_channels_cost():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    res = prune_model(m, stage_mapping({"layer1": 0.5, "layer2": 0.5, "layer3": 0.5, "layer4": 0.5, "stem": 0.5},
                                       stage_groups(m)), torch.randn(1, 3, 32, 32))
    assert 0.2 <= res.params_after / res.params_before <= 0.35
    assert 0.2 <= res.macs_after / res.macs_before <= 0.35
    assert res.model.fc.out_features == 10 and res.model.conv1.out_channels == 32
