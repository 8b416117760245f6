"""ONNX export: names, dynamic batch, faithfulness check, clean errors, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_prune import TinyNet
from torch import nn

from autocompress.compress.export import export_onnx, mismatch
from autocompress.errors import StageError


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


def test_export_tiny_model(tiny, tmp_path):
    x = torch.randn(1, 3, 32, 32)
    res = export_onnx(tiny, x, tmp_path / "m.onnx")
    assert res.path.is_file() and res.opset == 17 and res.max_abs_diff < 1e-4 and res.seconds > 0
    model = onnx.load(str(res.path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    names = {n.name for n in model.graph.node}
    assert "/block/conv1/conv1.0/Conv" in names and "/fc/Gemm" in names  # module paths kept
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 32, 32)
    out = sess.run(None, {"input": x3.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, tiny(x3).numpy(), atol=1e-4)
    assert list(tmp_path.iterdir()) == [res.path]  # no temporary file left


def test_export_keeps_training_mode(tmp_path):
    m = TinyNet().train()
    export_onnx(m, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")
    assert m.training


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.linalg.svd(x.flatten(1)[:, :4].reshape(-1, 2, 2))[1].flatten(1)


class Random(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :4] + torch.rand_like(x.flatten(1)[:, :4])


def test_export_failure_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="Unexportable cannot be exported to ONNX") as e:
        export_onnx(Unexportable(), torch.randn(1, 3, 4, 4), tmp_path / "u.onnx")
    assert e.value.stage == "export"
    assert not list(tmp_path.iterdir())


def test_unfaithful_export_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="differs from PyTorch"):
        export_onnx(Random(), torch.randn(1, 3, 4, 4), tmp_path / "r.onnx", atol=1e-3)
    assert not list(tmp_path.iterdir())
    res = export_onnx(Random(), torch.randn(1, 3, 4, 4), tmp_path / "r.onnx", check=False)
    assert res.path.is_file() and np.isnan(res.max_abs_diff)


class Huge(nn.Module):
    """Random-init logits of magnitude ~1e9 (as a re-parameterised net gives before training): float32
    rounding alone makes ONNX Runtime and PyTorch differ by far more than an absolute 1e-3."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.mul_(400.0)

    def forward(self, x):
        return self.net(x)


def test_huge_outputs_export_with_a_tolerance_relative_to_their_scale(tmp_path):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = Huge().eval()
    with torch.no_grad():
        scale = float(model(x).abs().max())
    assert scale > 1e7
    res = export_onnx(model, x, tmp_path / "huge.onnx")
    assert res.path.is_file()
    assert res.max_abs_diff > 1e-3  # an absolute tolerance alone would have refused this faithful export
    assert res.max_abs_diff <= 1e-3 * scale


def test_mismatch_names_output_index_values_and_scale():
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal((2, 10)) * 1e9).astype(np.float32)
    close = ref * np.float32(1 + 1e-6)
    assert mismatch(ref, close, atol=1e-3, rtol=1e-3) is None
    off = ref.copy()
    off[1, 7] += 0.01 * float(np.abs(ref).max())  # 1% of the scale at one place: not faithful
    msg = mismatch(ref, off, atol=1e-3, rtol=1e-3)
    assert msg is not None and "'logits'" in msg and "index (1, 7)" in msg and "scale" in msg
    assert f"{off[1, 7]:.6g}" in msg and f"{ref[1, 7]:.6g}" in msg
    small = np.array([[0.5, -0.25]], np.float32)
    assert "index (0, 1)" in mismatch(small, small + np.array([[0, 0.01]], np.float32), atol=1e-3, rtol=1e-3)
    assert "shape" in mismatch(small, small[:, :1], atol=1e-3, rtol=1e-3)
    nan = small.copy()
    nan[0, 0] = np.nan
    assert "index (0, 0)" in mismatch(small, nan, atol=1e-3, rtol=1e-3)
