"""ONNX export: names, dynamic batch, faithfulness check, clean errors, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_prune import TinyNet
from torch import nn

from autocompress.compress.export import export_onnx
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
