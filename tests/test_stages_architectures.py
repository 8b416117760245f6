"""prune -> export -> int8 -> ONNX Runtime, per architecture (torchvision, random init, 32x32 input)."""

from __future__ import annotations

import collections

import onnx
import pytest
import torch
import torchvision
from test_prune import TinyNet

from autocompress.compress.export import export_onnx
from autocompress.compress.prune import prune_model, stage_groups
from autocompress.compress.quantize import check_runs, quantize_model
from autocompress.errors import StageError
from autocompress.records import QuantSpec

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CALIB = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
ARCHS = [
    pytest.param("tiny", id="tiny"),
    pytest.param("resnet18", id="resnet18"),
    pytest.param("mobilenet_v3_small", id="mobilenet_v3_small", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", id="mobilenet_v2", marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", id="efficientnet_b0", marks=pytest.mark.slow),
    pytest.param("regnet_x_400mf", id="regnet_x_400mf", marks=pytest.mark.slow),
]


def build(name):
    torch.manual_seed(0)
    if name == "tiny":
        return TinyNet().eval()
    return getattr(torchvision.models, name)(num_classes=10).eval()


@pytest.mark.parametrize("name", ARCHS)
def test_prune_export_int8(name, tmp_path):
    model = build(name)
    assert len(stage_groups(model)) >= 2
    res = prune_model(model, {"_default": 0.5}, X)
    pruned = res.model
    assert pruned(X).shape == (1, 10)
    # 50% of the channels: about a quarter of the parameters and MACs (both sides of a layer shrink)
    assert 0.15 <= res.params_after / res.params_before <= 0.4, res.params_after / res.params_before
    assert 0.15 <= res.macs_after / res.macs_before <= 0.4, res.macs_after / res.macs_before
    full = export_onnx(model, X, tmp_path / "full.onnx")
    small = export_onnx(pruned, X, tmp_path / "pruned.onnx")
    assert small.path.stat().st_size < 0.5 * full.path.stat().st_size
    q = quantize_model(small.path, tmp_path / "int8.onnx", {"_default": "int8"}, QuantSpec(), CALIB)
    ops = collections.Counter(n.op_type for n in onnx.load(str(q.path)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    if small.path.stat().st_size > 1_000_000:  # tiny graphs are dominated by names and scales
        assert q.path.stat().st_size < 0.5 * small.path.stat().st_size
    check_runs(q.path, CALIB[:2].numpy())


@pytest.mark.slow
def test_shufflenet_prune_fails_cleanly_but_exports_and_quantizes(tmp_path):
    """Torch-Pruning 1.6 cannot trace ShuffleNetV2's chunk + channel shuffle: a clean StageError."""
    model = build("shufflenet_v2_x1_0")
    with pytest.raises(StageError, match="ShuffleNetV2 cannot be pruned") as e:
        prune_model(model, {"_default": 0.5}, X)
    assert e.value.stage == "prune"
    full = export_onnx(model, X, tmp_path / "full.onnx")
    q = quantize_model(full.path, tmp_path / "int8.onnx", {"_default": "int8"}, QuantSpec(), CALIB)
    check_runs(q.path, CALIB[:1].numpy())
