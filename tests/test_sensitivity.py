"""Sensitivity analysis: measured on a tiny real CNN, cached, and turned into priors (allocation, int8 ranking, seeds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autocompress import sensitivity as S
from autocompress.config import HardwareProfile, SearchSpace, load_space, parse
from autocompress.references import seed_label
from conftest import FAST_PROFILE, make_workspace

RATIOS = [0.3, 0.6, 0.9]


def _rec(stages: dict, base: float = 0.95) -> dict:
    return {"ratios": RATIOS, "base_accuracy": base, "stages": stages}


def _stage(accs, macs, error=None):
    return {"layers": 2, "accuracy": accs, "macs_removed": macs, "error": error}


# ---------------------------------------------------------------- priors (pure)
def test_allocation_prunes_the_insensitive_stage_more_and_removes_at_least_the_uniform_macs():
    rec = _rec({
        "a": _stage([0.95, 0.94, 0.90], [0.10, 0.20, 0.30]),   # barely cares
        "b": _stage([0.80, 0.40, 0.10], [0.10, 0.20, 0.30]),   # loses a lot
        "c": _stage([0.94, 0.90, 0.60], [0.05, 0.10, 0.15]),
    })
    alloc = S.allocate(rec, 0.6, low=0.1, high=0.9, step=0.05)
    assert set(alloc) == {"a", "b", "c"}
    assert alloc["a"] > 0.6 > alloc["b"]
    assert all(0.1 <= v <= 0.9 and abs(round(v / 0.05) * 0.05 - v) < 1e-9 for v in alloc.values())

    def removed(r):  # the same interpolation the allocation uses
        return sum(np.interp(r[s], [0, *RATIOS], [0, *rec["stages"][s]["macs_removed"]]) for s in rec["stages"])

    assert removed(alloc) >= removed({s: 0.6 for s in rec["stages"]}) - 1e-12

    def lost(r):
        return sum(np.interp(r[s], [0, *RATIOS], [0] + [max(0, 95 - 100 * a) for a in rec["stages"][s]["accuracy"]])
                   for s in rec["stages"])

    assert lost(alloc) < lost({s: 0.6 for s in rec["stages"]})


def test_allocation_keeps_a_stage_that_failed_at_the_mean_and_ties_go_to_macs():
    rec = _rec({"a": _stage([0.95, 0.95, 0.95], [0.05, 0.10, 0.15]),
                "b": _stage([0.95, 0.95, 0.95], [0.20, 0.40, 0.60]),
                "x": _stage([], [], error="InfeasibleCandidate: cannot")})
    alloc = S.allocate(rec, 0.5, low=0.1, high=0.9)
    assert alloc["x"] == 0.5
    assert alloc["b"] > alloc["a"]  # nothing lost anywhere: the stage that removes more MACs per step goes first


def test_a_stage_that_failed_at_a_high_ratio_stays_below_it():
    # "b" prunes for free but could not be pruned at 90% (a layer left with no channel): capped at 60%
    rec = _rec({"a": _stage([0.90, 0.80, 0.50], [0.10, 0.20, 0.30]),
                "b": _stage([0.95, 0.95], [0.10, 0.20], error="InfeasibleCandidate: 0 of 8 channels")})
    alloc = S.allocate(rec, 0.8, low=0.1, high=0.9)
    assert abs(alloc["b"] - 0.6) < 1e-9 and alloc["a"] >= 0.8


def test_int8_ranking_is_most_sensitive_first():
    rec = {"int8": {"layers": {"conv1": {"error": 0.02, "accuracy": 0.9}, "fc": {"error": 0.5, "accuracy": 0.8},
                               "conv2": {"error": 0.001, "accuracy": 0.95}}}}
    assert S.int8_ranking(rec) == ["fc", "conv1", "conv2"]
    assert S.int8_ranking({"int8": None}) == []


def test_priors_add_a_labelled_twin_after_the_named_uniform_seeds():
    groups = {"a": ["l1"], "b": ["l2"]}
    rec = {**_rec({"a": _stage([0.95, 0.94, 0.9], [0.1, 0.2, 0.3]), "b": _stage([0.7, 0.3, 0.1], [0.1, 0.2, 0.3])}),
           "int8": {"layers": {"l1": {"error": 0.1, "accuracy": 0.9}, "l2": {"error": 0.3, "accuracy": 0.9}}}}
    space = parse(SearchSpace, {"bits": {"keep_fp32": [0, 1]}, "sensitivity": {"enabled": True, "seeds": [0.8]},
                                "seeds": [{"sparsity": 0.8, "bits": "int8", "epochs": 8}, {"sparsity": 0.5, "bits": "int8"},
                                          {"sparsity": 0.0, "bits": "int8"}]}, "t")
    shaped = S.with_priors(space, rec, groups)
    assert shaped.bits.sensitive_layers == ["l2", "l1"]
    labels = [seed_label(s) for s in shaped.seeds]
    assert labels == ["uniform 80% + int8, KD 8 ep", "sensitivity 80% + int8, KD 8 ep", "uniform 50% + int8", "int8 alone"]
    twin = shaped.seeds[1]
    assert twin.sparsity["a"] > 0.8 > twin.sparsity["b"] and twin.epochs == 8 and twin.bits == "int8"
    # a ranking the user wrote is kept; an analysis that leaves the seed as it was adds no twin
    mine = space.model_copy(update={"bits": space.bits.model_copy(update={"sensitive_layers": ["l1"]})})
    flat = _rec({"a": _stage([0.95] * 3, [0.1, 0.2, 0.3]), "b": _stage([0.95] * 3, [0.1, 0.2, 0.3])})
    same = S.with_priors(mine, {**flat, "int8": rec["int8"]}, groups)
    assert same.bits.sensitive_layers == ["l1"]
    assert [s.label for s in same.seeds] == [None, None, None]


# ---------------------------------------------------------------- measured on a real tiny CNN
SPACE = {"kind": "search_space", "name": "sens", "sparsity": {"granularity": "per_stage", "range": {"low": 0.1, "high": 0.9, "step": 0.05}},
         "bits": {"choices": ["fp32", "int8"], "keep_fp32": [0, 1]}, "distill": {"epochs": 1},
         "sensitivity": {"enabled": True, "val_samples": 200, "calib_samples": 64, "int8_samples": 32, "seeds": [0.5]},
         "seeds": [{"sparsity": 0.5, "bits": "int8", "epochs": 1}]}


def test_analysis_of_a_real_cnn_measures_every_stage_and_layer_and_is_cached(tmp_path, digits):
    from autocompress.compress.export import export_onnx
    from autocompress.compress.prune import stage_groups

    ns: dict = {}
    exec((make_workspace(tmp_path, SPACE) / "models.py").read_text(), ns)
    torch.manual_seed(0)
    model = ns["tiny_cnn"]().eval()
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(model, torch.zeros(1, *digits.input_shape), onnx_path)
    groups = stage_groups(model)
    space = parse(SearchSpace, SPACE, "t")
    profile = parse(HardwareProfile, FAST_PROFILE, "p")
    calls = []

    def compute():
        calls.append(1)
        return S.analyse(model, groups, digits, space, profile, onnx_path, seed=0)

    key = S.cache_key(space, profile, groups, {"teacher": "t0", "data": digits.fingerprint})
    rec, path, reused = S.load_or_analyse(tmp_path, key, compute)
    assert not reused and path.parent == tmp_path / "cache" and json.loads(path.read_text())["key"] == key
    assert set(rec["stages"]) == set(groups) and rec["samples"] == {"calib": 64, "val": 200, "int8": 32}
    for v in rec["stages"].values():
        assert v["error"] is None and len(v["accuracy"]) == 3 and all(0 <= a <= 1 for a in v["accuracy"])
        assert 0 < v["macs_removed"][0] < v["macs_removed"][1] < v["macs_removed"][2] < 1  # measured, grows with the ratio
    assert 0 <= rec["base_accuracy"] <= 1
    # every Conv/Linear (the classifier too) quantized alone, and everything together
    assert set(rec["int8"]["layers"]) == {"0", "4", "9"}
    errs = [v["error"] for v in rec["int8"]["layers"].values()]
    assert all(e > 0 for e in errs) and rec["int8"]["all"]["error"] > 0
    assert rec["seconds"]["total"] >= rec["seconds"]["prune"] > 0
    # the second call reads the file; another setting is another key
    again, _, reused = S.load_or_analyse(tmp_path, key, compute)
    assert reused and again == json.loads(path.read_text()) and len(calls) == 1
    other = space.model_copy(update={"sensitivity": space.sensitivity.model_copy(update={"ratios": [0.5]})})
    assert S.cache_key(other, profile, groups, {"teacher": "t0", "data": digits.fingerprint}) != key
    shaped = S.with_priors(space, rec, groups)
    assert sorted(shaped.bits.sensitive_layers) == ["0", "4", "9"]


def test_bn_recalibration_matches_the_statistics_of_the_data():
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    x = torch.randn(64, 3, 5, 5) * 3 + 2
    S.recalibrate_bn(m, x, batch_size=16)
    with torch.no_grad():
        y = m[0](x)
    assert not m.training and not m[2].training and m[1].momentum == 0.1
    assert torch.allclose(m[1].running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    # cumulative average over the batches (momentum None): the mean of the per-batch (unbiased) variances
    per_batch = torch.stack([y[i:i + 16].var(dim=(0, 2, 3), unbiased=True) for i in range(0, 64, 16)]).mean(0)
    assert torch.allclose(m[1].running_var, per_batch, rtol=1e-4)


def test_disabled_analysis_leaves_the_space_as_it_is(tmp_path):
    space = load_space("default")
    off = space.model_copy(update={"sensitivity": space.sensitivity.model_copy(update={"enabled": False}),
                                   "bits": space.bits.model_copy(update={"keep_fp32": 0})})
    assert S.priors_for_run(off, None, {}, None, HardwareProfile(), tmp_path / "x.onnx", tmp_path, {}) is off
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_run_with_the_analysis_enqueues_its_twin_and_reports_it(tmp_path, monkeypatch):
    from autocompress.cli import main
    from autocompress.store import RunStore

    ws = make_workspace(tmp_path, SPACE, FAST_PROFILE, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = tmp_path / "run"
    args = ["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
            "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
            "--trials", "2", "--out", str(out), "--max-accuracy-drop", "100"]
    assert main(args) == 0
    meta = RunStore(out).read_run_yaml()
    assert (out / meta["sensitivity"]["file"]).is_file()
    recs = RunStore(out).records()
    assert [r.seed for r in recs] == ["uniform 50% + int8, KD 1 ep"] + meta["sensitivity"]["seeds_added"][:1]
    assert recs[1].seed.startswith("sensitivity 50% + int8")
    page = (out / "report.html").read_text()
    assert "Sensitivity of the teacher" in page and "sens-prune" in page and "sens-int8" in page


def test_a_stage_rounding_keeps_whole_at_a_low_ratio_is_unchanged_there_and_measured_above():
    # round_to 16: 32 channels at 25% keep 24 -> the nearest multiple is 32 (whole); at 50% they keep 16
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    x = torch.randn(16, 3, 8, 8)
    y = np.arange(16) % 10
    rec = S.prune_curves(net, {"s": ["0"]}, x, x, y, [0.25, 0.5], round_to=16)
    st = rec["stages"]["s"]
    assert st["error"] is None and len(st["accuracy"]) == 2
    assert st["accuracy"][0] == rec["base_accuracy"] and st["macs_removed"][0] == 0.0
    assert st["macs_removed"][1] > 0.3
