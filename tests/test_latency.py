"""Latency: block-interleaved ABBA rounds, median of per-round ratios, bootstrap CI, adaptive stop.

Timing assertions are structural or carry wide margins: this runs on a shared, noisy 2-core machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from autocompress.config import HardwareProfile, LatencySpec
from autocompress.errors import StageError
from autocompress.measure import latency
from autocompress.measure.latency import LatencyResult, measure_latency


def _net(width: int, blocks: int = 1):
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def _export(m, path, size=16, dynamic=True):
    kw = dict(dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}) if dynamic else {}
    torch.onnx.export(m, torch.randn(1, 3, size, size), path, dynamo=False, input_names=["input"],
                      output_names=["logits"], **kw)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    small = _export(_net(16, 1), d / "small.onnx")
    big = _export(_net(16, 16), d / "big.onnx")  # 16x the second conv's work: ~9x the whole model's MACs
    return small, big


def _prof(**lat):
    spec = dict(warmup=3, min_rounds=5, max_rounds=20, time_cap_s=3.0, target_ci=0.05, block_ms=5.0) | lat
    return HardwareProfile(intra_op_threads=1, latency=LatencySpec(**spec))


# ---------------------------------------------------------------- pure statistics
def test_median_of_ratios_cancels_drift_where_the_ratio_of_medians_does_not():
    # the machine slows down 3x half-way through; the candidate is truly 2x faster in every round
    slow = np.r_[np.ones(10), np.full(10, 3.0)]
    base = 2.0 * slow
    cand = 1.0 * slow
    cand[12:] *= 1.5  # ...and the second half of the candidate's blocks met extra drift of its own
    base[12:] *= 1.5
    assert latency.speedup_estimate(base, cand) == pytest.approx(2.0)
    # unpaired: ratio of medians over an uneven split of fast/slow rounds is not 2
    b_unpaired = np.r_[base[:15]]
    c_unpaired = np.r_[cand[5:]]
    assert np.median(b_unpaired) / np.median(c_unpaired) != pytest.approx(2.0, rel=0.1)
    # one disturbed round does not move the median
    cand2 = np.ones(11)
    cand2[3] = 50.0
    assert latency.speedup_estimate(np.full(11, 3.0), cand2) == pytest.approx(3.0)


def test_other_statistics():
    b, c = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    assert latency.speedup_estimate(b, c, "mean") == pytest.approx(2.0)
    assert latency.speedup_estimate(b, c, "p90") == pytest.approx(2.0)
    assert latency.speedup_estimate(b, c, "min") == pytest.approx(2.0)


def test_low_quantiles_ignore_one_sided_slowdowns():
    """Another process only ever slows a block down: p10/min keep the undisturbed ratio where the
    median of ratios follows the disturbed rounds once they are the majority."""
    b, c = np.full(20, 4.0), np.full(20, 1.0)
    c[:12] *= 1.5  # 12 of 20 candidate blocks disturbed
    assert latency.speedup_estimate(b, c, "median") == pytest.approx(4.0 / 1.5)
    assert latency.speedup_estimate(b, c, "p10") == pytest.approx(4.0)
    assert latency.speedup_estimate(b, c, "min") == pytest.approx(4.0)


def test_a_result_reads_its_latency_with_the_profiles_statistic():
    """What predict mode's calibration fits against: the p10 of the blocks for a p10 profile, not the median (the
    two-thread `cpu` profile was calibrated on medians and predicted 17% slow against its own p10 figures)."""
    c = [1.0] * 8 + [1.5] * 12  # most blocks disturbed
    r = LatencyResult(median_ms=float(np.median(c)), p90_ms=1.5, mean_ms=float(np.mean(c)), cv=0.2, n_samples=20,
                      runs_per_sample=1, baseline_median_ms=None, speedup=None, speedup_ci=None, stop_reason="time_cap",
                      load_avg=0.0, cand_samples_ms=tuple(c))
    assert r.stat_ms("median") == 1.5 and r.stat_ms("p10") == pytest.approx(1.0) and r.stat_ms("min") == 1.0
    assert LatencyResult(**{**r.__dict__, "cand_samples_ms": ()}).stat_ms("p10") == 1.5  # no samples: the median


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    b = 2.0 * (1 + 0.05 * rng.standard_normal(30))
    c = 1.0 * (1 + 0.05 * rng.standard_normal(30))
    ci1 = latency.speedup_ci(b, c, seed=3)
    ci2 = latency.speedup_ci(b, c, seed=3)
    assert ci1 == ci2
    sp = latency.speedup_estimate(b, c)
    assert ci1[0] <= sp <= ci1[1] and 1.8 < ci1[0] and ci1[1] < 2.2
    assert latency.rel_half_width(ci1, sp) < 0.1
    # tighter with less noise
    ci_tight = latency.speedup_ci(b * 0 + 2.0, c * 0 + 1.0)
    assert ci_tight == (2.0, 2.0)


# ---------------------------------------------------------------- real measurements
def test_small_vs_big_speedup_and_structure(models):
    small, big = models
    r = measure_latency(small, _prof(), (1, 3, 16, 16), baseline_path=big)
    assert isinstance(r, LatencyResult) and r.mode == "measure"
    assert r.stop_reason in ("converged", "time_cap", "max_rounds")
    assert 5 <= r.n_samples <= 20 and r.runs_per_sample >= 1
    assert r.speedup > 2.0  # the big one does ~9x the MACs; generous for a busy machine
    lo, hi = r.speedup_ci
    assert lo <= r.speedup <= hi
    assert r.baseline_median_ms > r.median_ms > 0
    assert r.median_ms <= r.p90_ms and r.mean_ms > 0 and r.cv >= 0 and r.load_avg >= 0
    # swapped: the candidate is the big one -> speedup < 1
    r2 = measure_latency(big, _prof(), (1, 3, 16, 16), baseline_path=small)
    assert r2.speedup < 0.5


def test_same_model_against_itself_is_about_one(models):
    small, _ = models
    r = measure_latency(small, _prof(), (1, 3, 16, 16), baseline_path=small)
    assert 0.6 < r.speedup < 1.6


def test_blocks_last_about_block_ms(models):
    small, _ = models
    r = measure_latency(small, _prof(block_ms=10.0, max_rounds=6, min_rounds=5), (1, 3, 16, 16))
    assert r.runs_per_sample > 1
    assert 2.0 < r.runs_per_sample * r.median_ms < 50.0  # ~10 ms; a busy box stretches blocks several-fold
    assert r.speedup is None and r.speedup_ci is None and r.baseline_median_ms is None


def test_stop_reasons(models):
    small, big = models
    r = measure_latency(small, _prof(min_rounds=3, max_rounds=3, target_ci=1e-6), (1, 3, 16, 16), baseline_path=big)
    assert r.stop_reason == "max_rounds" and r.n_samples == 3
    r = measure_latency(small, _prof(min_rounds=2, max_rounds=1000, time_cap_s=0.3, target_ci=1e-6, block_ms=2.0),
                        (1, 3, 16, 16), baseline_path=big)
    assert r.stop_reason == "time_cap" and r.n_samples < 1000
    r = measure_latency(small, _prof(min_rounds=1, max_rounds=1), (1, 3, 16, 16))
    assert r.stop_reason == "single" and r.n_samples == 1
    r = measure_latency(small, _prof(min_rounds=5, max_rounds=200, target_ci=0.5, time_cap_s=20), (1, 3, 16, 16),
                        baseline_path=small)
    assert r.stop_reason == "converged" and r.n_samples < 200


def test_input_shape_the_model_rejects(models, tmp_path):
    small, _ = models
    with pytest.raises(StageError, match=r"latency: candidate expects input 'input' of shape \[batch, 3, 16, 16\], given \[1, 3, 32, 32\]"):
        measure_latency(small, _prof(), (1, 3, 32, 32))
    fixed = _export(_net(8), tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(StageError, match=r"\[1, 3, 16, 16\], given \[4, 3, 16, 16\]"):
        measure_latency(fixed, _prof(), (4, 3, 16, 16))


def test_int8_candidate_against_fp32(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    fp32 = _export(_net(64, 4), tmp_path / "fp32.onnx", size=32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)}
                            for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    int8 = tmp_path / "int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    r = measure_latency(int8, _prof(), (1, 3, 32, 32), baseline_path=fp32)
    assert r.speedup is not None and 0.2 < r.speedup < 20  # a finding either way; sane range only
