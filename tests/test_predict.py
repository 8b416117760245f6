"""Latency predicted from a lookup table: quick table build, graph walk (fp32 and int8 QDQ), profile-device."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from autocompress.config import HardwareProfile, LatencySpec, load_profile, parse
from autocompress.errors import ConfigError, StageError
from autocompress.measure import predict
from autocompress.measure.latency import measure_latency


def _net(width: int, blocks: int):
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(3, 2, 1), nn.Conv2d(width, width, 3, groups=width, padding=1),
                         nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def _export(m, path, size=32):
    torch.onnx.export(m, torch.randn(1, 3, size, size), path, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _int8(src, dst, size=32):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.default_rng(i).standard_normal((1, 3, size, size)).astype(np.float32)}
                            for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return dst


PROFILE = HardwareProfile(name="cpu-test", intra_op_threads=1)


@pytest.fixture(scope="module")
def table():
    return predict.build_table(PROFILE, quick=True, log=lambda *a: None)  # ~20 s with calibration (must stay < 60 s)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    torch.manual_seed(0)
    small = _export(_net(16, 1), d / "small.onnx")
    big = _export(_net(64, 4), d / "big.onnx")
    return small, big, _int8(big, d / "big.int8.onnx")


def test_quick_table_structure(table):
    assert table["version"] == predict.TABLE_VERSION and table["quick"] is True
    assert table["fingerprint"]["onnxruntime"] and table["date"] and table["batch_size"] == 1
    assert 0 <= table["overhead_ms"] < 1.0
    groups = {e["group"] for e in table["entries"]}
    for g in ("conv/fp32/k3/s1/full/a16", "conv/int8/k3/s2/full/a16", "conv/fp32/k3/s1/dw/a16", "conv/int8/k3/s1/dw/a16",
              "conv/fp32/k1/s1/full/u", "conv/int8/k3/s1/dw/u", "conv/fp32/k3/s1/full/a8", "conv/int8/k3/s2/dw/a8",
              "gemm/fp32", "gemm/int8", "gap/fp32", "maxpool/int8/k3/s2", "relu/fp32", "hardswish/int8",
              "add/int8", "mul/fp32", "quantize/fp32", "dequantize/fp32"):
        assert g in groups, g
    assert all(e["ms"] >= 0 and e["ms_raw"] > 0 for e in table["entries"])
    assert table["build_seconds"] < 60


def test_predictions_order_models_and_map_every_node(table, models):
    small, big, big8 = models
    ps = predict.predict_latency(small, PROFILE, table, (1, 3, 32, 32))
    pb = predict.predict_latency(big, PROFILE, table, (1, 3, 32, 32))
    assert 0 < ps < pb
    parts = predict.predict_breakdown(big, PROFILE, table, (1, 3, 32, 32))
    groups = [g for _, g, _ in parts]
    assert not [g for g in groups if g.startswith("unmapped")]
    assert sum(g.startswith("conv/fp32/k3/s1/full/") for g in groups) == 5
    assert any(g.startswith("conv/fp32/k3/s1/dw/") for g in groups)
    assert "relu/fp32" not in groups  # fused into the Conv
    assert {"maxpool/fp32/k3/s2", "hardswish/fp32", "gap/fp32", "gemm/fp32"} <= set(groups)
    # a bigger batch costs more
    assert predict.predict_latency(big, PROFILE, table, (4, 3, 32, 32)) > pb


def test_int8_graph_maps_to_int8_entries(table, models):
    _, big, big8 = models
    parts = predict.predict_breakdown(big8, PROFILE, table, (1, 3, 32, 32))
    groups = [g for _, g, _ in parts]
    assert sum(g.startswith("conv/int8/k3/s1/full/") for g in groups) == 5
    assert "quantize/fp32" in groups  # the model's float input is quantized once
    assert not [g for g in groups if g.startswith("unmapped")]
    assert predict.predict_latency(big8, PROFILE, table, (1, 3, 32, 32)) > 0


def test_prediction_is_in_the_measured_ballpark(table, models):
    _, big, _ = models
    prof = PROFILE.model_copy(update={"latency": LatencySpec(warmup=3, min_rounds=5, max_rounds=15, time_cap_s=3)})
    measured = measure_latency(big, prof, (1, 3, 32, 32)).median_ms
    predicted = predict.predict_latency(big, PROFILE, table, (1, 3, 32, 32))
    assert measured / 5 < predicted < measured * 5  # quick grid, noisy machine: order of magnitude only


def test_predicted_result(table, models):
    small, big, _ = models
    r = predict.predicted_result(small, PROFILE, table, (1, 3, 32, 32), baseline_path=big)
    assert r.mode == "predict" and r.speedup > 1 and r.stop_reason == "single" and r.speedup_ci == (r.speedup, r.speedup)


def test_profile_device_writes_a_valid_predict_profile(tmp_path, table, monkeypatch, models):
    monkeypatch.setattr(predict, "build_table", lambda profile, quick=False, log=print: table)
    out = predict.profile_device("cpu", tmp_path / "mybox.yaml", quick=True, log=lambda *a: None)
    assert out == tmp_path / "mybox.yaml" and (tmp_path / "mybox.table.json").is_file()
    prof, path = load_profile(str(out))
    assert prof.name == "mybox" and prof.latency.mode == "predict" and prof.lookup_table == "mybox.table.json"
    assert prof.fingerprint["onnxruntime"] and prof.execution_provider == "CPUExecutionProvider"
    t = predict.load_table(prof, path)
    assert len(t["entries"]) == len(table["entries"])
    assert predict.predict_latency(models[0], prof, t, (1, 3, 32, 32)) > 0


def test_missing_and_bad_tables(tmp_path):
    prof = parse(HardwareProfile, {"latency": {"mode": "predict"}, "lookup_table": "nope.table.json"}, "p.yaml")
    with pytest.raises(ConfigError, match="lookup_table: got 'nope.table.json'; no such file") as e:
        predict.load_table(prof, tmp_path / "p.yaml")
    assert "\n" not in str(e.value)
    (tmp_path / "nope.table.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not an autocompress lookup table"):
        predict.load_table(prof, tmp_path / "p.yaml")
    (tmp_path / "nope.table.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable lookup table"):
        predict.load_table(prof, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="needs lookup_table"):
        parse(HardwareProfile, {"latency": {"mode": "predict"}}, "p.yaml")


def test_predict_rejects_a_wrong_input_shape(table, models):
    small, _, _ = models
    with pytest.raises(StageError, match=r"predict: model expects input 'input' of shape \[batch, 3, 32, 32\], given \[1, 3, 64, 64\]"):
        predict.predict_latency(small, PROFILE, table, (1, 3, 64, 64))
    with pytest.raises(StageError, match="not found"):
        predict.predict_latency("missing.onnx", PROFILE, table, (1, 3, 32, 32))


def test_unavailable_ep_cannot_build_a_table():
    from autocompress.errors import UnavailableError

    with pytest.raises(UnavailableError, match="needs CUDAExecutionProvider"):
        predict.build_table(HardwareProfile(name="g", execution_provider="CUDAExecutionProvider"), quick=True)


def test_quick_table_is_calibrated_per_dtype(table):
    cal = table["calibration"]
    assert set(cal["fits"]) == {"fp32", "int8"}
    for f in cal["fits"].values():
        assert f["n"] >= 1 and 0.5 <= f["beta"] <= 1.5 and math.isfinite(f["alpha"])
    assert {m["dtype"] for m in cal["models"]} == {"fp32", "int8"}
    assert all(m["raw_ms"] > 0 and m["measured_ms"] > 0 for m in cal["models"])


def test_calibration_is_applied_per_dtype_and_optional(table, models):
    _, big, big8 = models
    assert predict.model_dtype(big) == "fp32" and predict.model_dtype(big8) == "int8"
    raw_table = {k: v for k, v in table.items() if k != "calibration"}  # an old table: still works
    for path, dt in ((big, "fp32"), (big8, "int8")):
        raw = predict.predict_latency(path, PROFILE, raw_table, (1, 3, 32, 32))
        f = table["calibration"]["fits"][dt]
        cal = predict.predict_latency(path, PROFILE, table, (1, 3, 32, 32))
        assert cal == pytest.approx(math.exp(f["alpha"]) * raw ** f["beta"])


def test_fit_calibration():
    pts = [(r, 3.0 * r ** 0.9) for r in (0.1, 0.5, 2.0, 8.0)]
    f = predict.fit_calibration(pts)
    assert f["beta"] == pytest.approx(0.9) and math.exp(f["alpha"]) == pytest.approx(3.0) and f["n"] == 4
    one = predict.fit_calibration([(2.0, 5.0)])
    assert one["beta"] == 1.0 and math.exp(one["alpha"]) == pytest.approx(2.5)
    wild = predict.fit_calibration([(1.0, 1.0), (2.0, 40.0)])  # slope far from 1: a plain ratio instead
    assert wild["beta"] == 1.0


def test_calibration_models_are_disjoint_from_the_benchmark():
    # bench_predict.py draws 2-decimal ratios with seeds < 1000
    for _, ratio, _, seed in predict.CALIBRATION_MODELS + predict.CALIBRATION_MODELS_QUICK:
        assert seed >= 1000 and round(ratio, 2) != ratio


def test_alignment_classes():
    conv = lambda cin, cout, dw=False: {"cin": cin, "cout": cout, "dw": dw}  # noqa: E731
    assert predict.alignment(conv(64, 128)) == "a16"
    assert predict.alignment(conv(64, 72)) == "a8" and predict.alignment(conv(72, 64)) == "a8"
    assert predict.alignment(conv(64, 101)) == "u" and predict.alignment(conv(61, 64)) == "u"
    assert predict.alignment(conv(3, 32)) == "a16"  # an RGB stem is not an unaligned conv
    assert predict.alignment(conv(101, 101, dw=True)) == "u" and predict.alignment(conv(96, 96, dw=True)) == "a16"


def test_missing_alignment_class_falls_back_to_the_nearest_one(table):
    """A table without the unaligned class (an older grid, or a pruned one) still interpolates an unaligned
    conv within the same kernel/stride/kind, from the a8 class first."""
    trimmed = {**table, "entries": [e for e in table["entries"] if not e["group"].endswith("/u")]}
    e = {"op": "conv", "k": 3, "s": 1, "dw": False, "cin": 61, "cout": 61, "h": 8, "n": 1, "dtype": "fp32"}
    f = predict._features(e)
    assert f["group"] == "conv/fp32/k3/s1/full/u"
    idx = predict._Index(trimmed)
    assert f["group"] not in idx.groups
    got = idx.lookup(f["group"], f["feats"], f["work"])
    a8 = predict._features({**e, "cin": 72, "cout": 72})
    assert got > 0 and idx.groups.get("conv/fp32/k3/s1/full/a8") is not None
    assert got == pytest.approx(idx.lookup(f["group"].replace("/u", "/a8"), f["feats"], f["work"]))
    assert a8["group"] == "conv/fp32/k3/s1/full/a8"
