"""Accuracy of the ONNX artifact in ONNX Runtime: top-1/top-5, fixed batch, metrics, int8, bad output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from autocompress.config import HardwareProfile
from autocompress.errors import ConfigError, StageError
from autocompress.measure.accuracy import evaluate_onnx, load_metric


class _Pick(nn.Module):
    """logits = mean of each channel: the class is the brightest channel (a known answer)."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale


def _export(m, path, c=3, dynamic=True):
    kw = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic else {}
    torch.onnx.export(m.eval(), torch.randn(1, c, 8, 8), path, dynamo=False, input_names=["input"],
                      output_names=["logits"], **kw)
    return path


def _data(n=50, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    x = rng.random((n, c, 8, 8)).astype(np.float32)
    x[np.arange(n), y] += 1.0
    return x, y


def test_top1_known_answer_and_no_top5_for_few_classes(tmp_path):
    p = _export(_Pick(), tmp_path / "m.onnx")
    x, y = _data()
    r = evaluate_onnx(p, x, y, batch_size=16)
    assert r.top1 == 1.0 and r.top5 is None and r.metric is None and r.n == 50 and r.seconds > 0
    y2 = (y + 1) % 3
    assert evaluate_onnx(p, x, y2).top1 == 0.0


def test_top5_with_many_classes(tmp_path):
    p = _export(_Pick(), tmp_path / "m.onnx", c=10)
    x, y = _data(40, c=10)
    r = evaluate_onnx(p, x, (y + 1) % 10)
    assert r.top1 == 0.0 and 0.0 <= r.top5 <= 1.0
    r = evaluate_onnx(p, x, y)
    assert r.top1 == 1.0 and r.top5 == 1.0


def test_fixed_batch_one_model_falls_back_to_batch_one(tmp_path):
    p = _export(_Pick(), tmp_path / "fixed.onnx", dynamic=False)
    x, y = _data(7)
    assert evaluate_onnx(p, x, y, batch_size=256).top1 == 1.0


def test_user_metric_from_file_and_module(tmp_path):
    p = _export(_Pick(), tmp_path / "m.onnx")
    x, y = _data()
    f = tmp_path / "my_metric.py"
    f.write_text("import numpy as np\ndef err(out, y):\n    return float((out.argmax(1) != y).mean())\n")
    r = evaluate_onnx(p, x, y, metric=load_metric(f"{f}:err"))
    assert r.metric == 0.0
    m = load_metric("numpy:mean")
    assert callable(m)


@pytest.mark.parametrize("spec, msg", [
    ("nocolon", "expected 'file.py:function'"),
    ("missing_file.py:fn", "not found"),
    ("no_such_pkg_xyz.mod:fn", "importing 'no_such_pkg_xyz.mod' failed"),
    ("numpy:no_such_fn", "has no attribute 'no_such_fn'"),
    ("numpy:pi", "is not callable"),
])
def test_bad_metric_specs_are_one_line_config_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        load_metric(spec)
    assert "\n" not in str(e.value)


def test_non_finite_outputs_are_a_stage_error(tmp_path):
    p = _export(_Pick(scale=float("inf")), tmp_path / "inf.onnx")
    x, y = _data()
    with pytest.raises(StageError, match="evaluate: .*non-finite") as e:
        evaluate_onnx(p, x, y)
    assert e.value.stage == "evaluate"


def test_wrong_input_shape_names_both_shapes(tmp_path):
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    p = _export(m, tmp_path / "m.onnx")
    x = np.zeros((4, 3, 9, 9), np.float32)
    with pytest.raises(StageError, match=r"evaluate: .*\[batch, 3, 8, 8\], given \[4, 3, 9, 9\]"):
        evaluate_onnx(p, x, np.zeros(4, int))


def test_int8_model_keeps_accuracy_and_profile_is_used(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # make the net close to _Pick: conv1 passes channels, conv2 recombines them
        m[0].weight.zero_(); m[0].bias.zero_()
        for c in range(3):
            m[0].weight[c, c, 1, 1] = 1.0
        m[2].weight.zero_(); m[2].bias.zero_()
        for c in range(3):
            m[2].weight[c, c] = 1.0
    fp32 = _export(m, tmp_path / "fp32.onnx")
    x, y = _data(60)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i:i + 1]} for i in range(20)])

        def get_next(self):
            return next(self.it, None)

    int8 = tmp_path / "int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    a = evaluate_onnx(fp32, x, y)
    b = evaluate_onnx(int8, x, y, profile=HardwareProfile(intra_op_threads=1))
    assert a.top1 == 1.0 and b.top1 >= 0.95
    # a profile whose EP is missing falls back to the CPU EP for accuracy (same numbers)
    c = evaluate_onnx(fp32, x, y, profile=HardwareProfile(name="gpu", execution_provider="CUDAExecutionProvider"))
    assert c.top1 == a.top1
