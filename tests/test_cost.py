"""Static costs: MACs/params (Torch-Pruning's counter), ONNX file size and parameters, peak memory."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn as nn

from autocompress.config import HardwareProfile
from autocompress.measure import cost


def _model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()


def _export(m, path, shape=(1, 3, 16, 16)):
    torch.onnx.export(m, torch.randn(*shape), path, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def test_params_and_macs_match_a_hand_count():
    m = _model()
    params, macs = cost.count_params_macs(m, torch.randn(1, 3, 16, 16))
    assert params == 3 * 8 * 9 + 8 * 10 + 10
    conv = 8 * 16 * 16 * 3 * 9
    fc = 8 * 10
    assert conv + fc <= macs <= conv + fc + 8 * 16 * 16 * 3  # relu and pooling are counted too (~4k), nothing more
    assert not m.training


def test_onnx_size_and_params(tmp_path):
    m = _model()
    p = _export(m, tmp_path / "m.onnx")
    assert cost.onnx_param_count(p) == sum(t.numel() for t in m.parameters())
    assert 0.001 < cost.file_size_mb(p) < 0.1
    assert cost.file_size_mb(p) == pytest.approx(p.stat().st_size / 1e6)


def test_file_size_counts_external_data(tmp_path):
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 512)).eval()
    p = _export(m, tmp_path / "m.onnx")
    model = onnx.load(str(p))
    ext = tmp_path / "ext.onnx"
    onnx.save_model(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=0)
    assert ext.stat().st_size < 10_000
    assert cost.file_size_mb(ext) == pytest.approx(cost.file_size_mb(p), rel=0.05)
    assert cost.onnx_param_count(ext) == cost.onnx_param_count(p)


def test_peak_memory_grows_with_the_model(tmp_path):
    small = _export(_model(), tmp_path / "s.onnx")
    big = _export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8192), nn.Linear(8192, 10)).eval(),
                  tmp_path / "b.onnx")  # ~25 M params = 100 MB of fp32 weights
    prof = HardwareProfile()
    s = cost.peak_memory_mb(small, prof, (1, 3, 16, 16))
    b = cost.peak_memory_mb(big, prof, (1, 3, 16, 16))
    if s is None or b is None:
        pytest.skip("peak memory not measurable here (no resource module or the subprocess failed)")
    assert s >= 0 and b > 50 and b > s
