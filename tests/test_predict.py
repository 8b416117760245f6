"""Latency predicted from a lookup table, the search side (autocompress.measure.predict): kernels of ORT's
optimised graph looked up in a table built by autocompress.profiling; tables checked before use; profile-device."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_profiling import tiny_specs

from autocompress.config import HardwareProfile, LatencySpec, load_profile, parse
from autocompress.errors import ConfigError, StageError
from autocompress.measure import predict
from autocompress.measure.latency import measure_latency
from autocompress.profiling import table as ptable
from autocompress.profiling.target import Target

PROFILE = HardwareProfile(name="cpu-test", intra_op_threads=1)


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


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("tab") / "t.table.jsonl"
    return ptable.build(Target.from_profile(PROFILE), path, quick=True, specs=tiny_specs(), log=lambda *a: None)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    torch.manual_seed(0)
    small = _export(_net(16, 1), d / "small.onnx")
    big = _export(_net(32, 4), d / "big.onnx")
    return small, big, _int8(big, d / "big.int8.onnx")


def test_predictions_order_models_and_follow_the_optimised_graph(table, models):
    small, big, _ = models
    ps = predict.predict_latency(small, PROFILE, table, (1, 3, 32, 32))
    pb = predict.predict_latency(big, PROFILE, table, (1, 3, 32, 32))
    assert 0 < ps < pb
    groups = [g for _, g, _ in predict.predict_breakdown(big, PROFILE, table, (1, 3, 32, 32))]
    convs = [g for g in groups if g.split("/")[0].split("-")[0].endswith("Conv") and "/fp32/" in g]
    assert len(convs) == 6 and sum("/dw/" in g for g in convs) == 1  # 5 full convs + the depthwise one
    # the depthwise conv ORT fused the Hardswish into is keyed on it (a second pass over its output), the rest on Relu
    assert [g.split("/")[0].split("-", 1)[-1] for g in convs if "/dw/" in g] == ["hardswish"]
    assert all("-" not in g.split("/")[0] for g in convs if "/dw/" not in g)
    assert not [g for g in groups if g.startswith("Relu/")]  # fused into the convs by ORT, not costed apart
    assert predict.predict_latency(big, PROFILE, table, (4, 3, 32, 32)) > pb  # a bigger batch costs more


def test_int8_qdq_pairs_fused_away_are_not_counted(table, models):
    import onnx

    _, _, big8 = models
    groups = [g for _, g, _ in predict.predict_breakdown(big8, PROFILE, table, (1, 3, 32, 32))]
    assert sum(g.startswith("QLinearConv/int8/") for g in groups) == 6
    qdq_nodes = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(big8).graph.node)
    qdq_kernels = [g for g in groups if g.startswith(("QuantizeLinear/", "DequantizeLinear/"))]
    # only the float input's Q, the Hardswish's DQ/Q (ORT has no int8 HardSwish here) and the output's DQ run
    assert qdq_nodes >= 20 and len(qdq_kernels) <= 4
    assert predict.model_dtype(big8) == "int8" and predict.predict_latency(big8, PROFILE, table, (1, 3, 32, 32)) > 0


def test_prediction_is_in_the_measured_ballpark(table, models):
    _, big, _ = models
    prof = PROFILE.model_copy(update={"latency": LatencySpec(warmup=3, min_rounds=5, max_rounds=15, time_cap_s=3)})
    measured = measure_latency(big, prof, (1, 3, 32, 32)).median_ms
    predicted = predict.predict_latency(big, PROFILE, table, (1, 3, 32, 32))
    assert measured / 4 < predicted < measured * 4  # tiny grid, shared machine: the order of magnitude only


def test_predicted_result(table, models):
    small, big, _ = models
    r = predict.predicted_result(small, PROFILE, table, (1, 3, 32, 32), baseline_path=big)
    assert r.mode == "predict" and r.speedup > 1 and r.stop_reason == "single" and r.speedup_ci == (r.speedup, r.speedup)


def test_calibration_is_applied_per_dtype_and_optional(table, models):
    _, big, big8 = models
    fits = {"fp32": {"alpha": 0.2, "beta": 0.9, "n": 3}, "int8": {"alpha": -0.1, "beta": 1.1, "n": 3}}
    cal = {**table, "calibration": {"fits": fits}}
    for path, dt in ((big, "fp32"), (big8, "int8")):
        raw = predict.predict_latency(path, PROFILE, table, (1, 3, 32, 32))
        got = predict.predict_latency(path, PROFILE, cal, (1, 3, 32, 32))
        assert got == pytest.approx(math.exp(fits[dt]["alpha"]) * raw ** fits[dt]["beta"], rel=1e-6)


def test_profile_device_writes_a_valid_predict_profile(tmp_path, monkeypatch, models):
    monkeypatch.setattr(ptable, "grid", lambda quick, n, dtypes: ptable.patterns(n) + tiny_specs())
    logs = []
    out = predict.profile_device("cpu-1thread", tmp_path / "mybox.yaml", quick=True, log=logs.append)
    assert out == tmp_path / "mybox.yaml" and (tmp_path / "mybox.table.jsonl").is_file()
    assert any(m.startswith("fusion rules found here: ") and "QLinearConv" in m for m in logs)
    assert any(m.startswith("note: a --quick table is a small grid for trying the command") for m in logs)
    prof, path = load_profile(str(out))
    assert prof.name == "mybox" and prof.latency.mode == "predict" and prof.lookup_table == "mybox.table.jsonl"
    assert prof.fingerprint["onnxruntime"] and prof.intra_op_threads == 1
    t = predict.load_table(prof, path, log=lambda *a: None)
    assert predict.predict_latency(models[0], prof, t, (1, 3, 32, 32)) > 0
    # the whole-model calibration is opt-in: the finished table is reused and the fit appended to it
    assert t.get("calibration") is None and not any(m.startswith("calibration ") for m in logs)
    predict.profile_device("cpu-1thread", tmp_path / "mybox.yaml", quick=True, log=logs.append, calibrate=True)
    t = predict.read_table(tmp_path / "mybox.table.jsonl")
    assert set(t["calibration"]["fits"]) == {"fp32", "int8"} and any(m.startswith("calibration int8: ") for m in logs)
    assert all(len(m["windows_ms"]) == 1 for m in t["calibration"]["models"])  # timed in a fresh process
    # asked for on a target without torch (an edge box): refused before anything is timed
    monkeypatch.setattr(predict, "_torch_available", lambda: False)
    with pytest.raises(ConfigError, match="--calibrate builds zoo models with torch"):
        predict.profile_device("cpu-1thread", tmp_path / "edge.yaml", quick=True, calibrate=True)
    assert not (tmp_path / "edge.table.jsonl").exists()


def _write(table: dict, path: Path, **header) -> Path:
    rows = [{k: v for k, v in table.items() if k not in ("lines", "done", "calibration", "context", "path")} | header]
    rows += table["lines"] + [{"context": table["context"]}, {"done": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_out_names_the_profile_and_its_table_whichever_is_given(tmp_path):
    want = (tmp_path / "box.yaml", tmp_path / "box.table.jsonl")
    assert predict.output_paths(tmp_path / "box.yaml") == want and predict.output_paths(tmp_path / "box") == want
    assert predict.output_paths(tmp_path / "box.table.jsonl") == want  # not box.table.table.jsonl
    assert predict.output_paths(tmp_path / "box.yml") == (tmp_path / "box.yml", tmp_path / "box.table.jsonl")


def test_tables_are_checked_before_use(tmp_path, table):
    prof = parse(HardwareProfile, {"name": "box", "intra_op_threads": 1, "latency": {"mode": "predict"},
                                   "lookup_table": "t.table.jsonl"}, "p.yaml")
    _write(table, tmp_path / "t.table.jsonl", onnxruntime="1.2.0")
    with pytest.raises(ConfigError, match=r"built with onnxruntime 1.2.0, this machine has .*; rebuild it on the target: "
                                          r"autocompress profile-device --profile cpu-test") as e:
        predict.load_table(prof, tmp_path / "p.yaml")
    assert "\n" not in str(e.value)
    _write(table, tmp_path / "t.table.jsonl", execution_provider="OpenVINOExecutionProvider")
    with pytest.raises(ConfigError, match="built for OpenVINOExecutionProvider, the profile runs CPUExecutionProvider"):
        predict.load_table(prof, tmp_path / "p.yaml")
    other = prof.model_copy(update={"intra_op_threads": 2})
    _write(table, tmp_path / "t.table.jsonl")
    with pytest.raises(ConfigError, match="built with intra_op_threads=1, the profile sets 2"):
        predict.load_table(other, tmp_path / "p.yaml")
    logs = []
    _write(table, tmp_path / "t.table.jsonl", fingerprint={**table["fingerprint"], "cpu": "Some Edge SoC"})
    predict.load_table(prof, tmp_path / "p.yaml", log=logs.append)
    assert any(m.startswith("latency: predicted from a table built on Some Edge SoC") for m in logs)



def test_a_calibration_timed_in_the_building_process_is_not_applied(tmp_path, table, models):
    prof = parse(HardwareProfile, {"name": "box", "intra_op_threads": 1, "latency": {"mode": "predict"},
                                   "lookup_table": "t.table.jsonl"}, "p.yaml")
    path = _write(table, tmp_path / "t.table.jsonl")
    fits = {"fp32": {"alpha": 0.19, "beta": 1.05, "n": 1}}
    old = {"fits": fits, "models": [{"arch": "resnet18", "dtype": "fp32", "raw_ms": 1.0, "measured_ms": 1.2}]}
    ptable.append_line(path, {"calibration": old})
    logs = []
    t = predict.load_table(prof, tmp_path / "p.yaml", log=logs.append)
    assert t["calibration"] is None and t["stale_calibration"] == old
    assert any("whole-model calibration was timed in the process that built its models" in m for m in logs)
    raw = predict.predict_latency(models[1], PROFILE, {k: v for k, v in t.items() if k != "stale_calibration"},
                                  (1, 3, 32, 32))
    assert predict.predict_latency(models[1], PROFILE, t, (1, 3, 32, 32)) == pytest.approx(raw)
    # one timed in fresh processes (windows recorded) is applied
    ptable.append_line(path, {"calibration": {**old, "models": [{**old["models"][0], "windows_ms": [1.2]}]}})
    logs.clear()
    t = predict.load_table(prof, tmp_path / "p.yaml", log=logs.append)
    assert t["calibration"]["fits"] == fits and not any("calibration" in m for m in logs)


def test_profile_device_calibrate_fits_again_over_a_stale_calibration(tmp_path, monkeypatch):
    monkeypatch.setattr(ptable, "grid", lambda quick, n, dtypes: ptable.patterns(n) + tiny_specs())
    predict.profile_device("cpu-1thread", tmp_path / "box.yaml", quick=True, log=lambda *a: None)
    old = {"fits": {"fp32": {"alpha": 0.19, "beta": 1.05, "n": 1}},
           "models": [{"arch": "resnet18", "dtype": "fp32", "raw_ms": 1.0, "measured_ms": 1.2}]}
    ptable.append_line(tmp_path / "box.table.jsonl", {"calibration": old})
    logs = []
    predict.profile_device("cpu-1thread", tmp_path / "box.yaml", quick=True, log=logs.append, calibrate=True)
    t = predict.read_table(tmp_path / "box.table.jsonl")
    assert set(t["calibration"]["fits"]) == {"fp32", "int8"} and "stale_calibration" not in t
    assert any(m.startswith("calibration fp32: ") for m in logs)

def test_a_fusion_rule_that_differs_here_is_printed(table):
    lines = [dict(ln, signature=["SomethingElse"]) if ln["spec"].get("pattern") == "gemm fp32" else ln for ln in table["lines"]]
    logs = []
    predict.check_table({**table, "lines": lines}, PROFILE, log=logs.append)
    assert [m for m in logs if m.startswith("warning: fusion rule 'gemm fp32' differs: the target ran SomethingElse")]
    assert not [m for m in logs if "fusion rule" in m and "gemm fp32" not in m]


def test_missing_and_bad_tables(tmp_path):
    prof = parse(HardwareProfile, {"latency": {"mode": "predict"}, "lookup_table": "nope.table.jsonl"}, "p.yaml")
    with pytest.raises(ConfigError, match="lookup_table: got 'nope.table.jsonl'; no such file") as e:
        predict.load_table(prof, tmp_path / "p.yaml")
    assert "\n" not in str(e.value)
    (tmp_path / "nope.table.jsonl").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not an autocompress lookup table"):
        predict.load_table(prof, tmp_path / "p.yaml")
    (tmp_path / "nope.table.jsonl").write_text("{not json\n{}\n")
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        predict.load_table(prof, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="needs lookup_table"):
        parse(HardwareProfile, {"latency": {"mode": "predict"}}, "p.yaml")


def test_predict_rejects_a_wrong_input_shape(table, models):
    small, _, _ = models
    with pytest.raises(StageError, match=r"predict: model expects input 'input' of shape \[batch, 3, 32, 32\], given \[1, 3, 64, 64\]"):
        predict.predict_latency(small, PROFILE, table, (1, 3, 64, 64))
    with pytest.raises(StageError, match="not found"):
        predict.predict_latency("missing.onnx", PROFILE, table, (1, 3, 32, 32))


def test_unavailable_ep_cannot_build_a_table(tmp_path):
    from autocompress.errors import UnavailableError

    with pytest.raises(UnavailableError, match="needs CUDAExecutionProvider"):
        predict.build_table(HardwareProfile(name="g", execution_provider="CUDAExecutionProvider"), tmp_path / "t.jsonl")


def test_cli_check_runs_without_torch(table):
    """`autocompress profile-device --check TABLE` with torch blocked: held-out networks timed, hit rate and tau."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from autocompress.cli import main\n"
            f"sys.exit(main(['profile-device', '--check', {table['path']!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "within +-10%" in r.stdout and "Kendall's tau" in r.stdout and "resnet w13-29-61 32px int8" in r.stdout


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


@pytest.mark.slow
def test_torch_side_calibration_is_appended_to_the_table(tmp_path, table):
    t = ptable.read(_write(table, tmp_path / "c.table.jsonl"))
    cal = predict.calibrate_table(t, PROFILE, quick=True, log=lambda *a: None)
    assert set(cal["fits"]) == {"fp32", "int8"} and all(0.5 <= f["beta"] <= 1.5 for f in cal["fits"].values())
    t2 = predict.append_calibration(t, cal)
    assert ptable.read(t2["path"])["calibration"]["fits"] == cal["fits"]
    # the reference networks are timed again with the fit, which set the table's level last: a check compares with those
    from autocompress.profiling.check import reference_times

    assert set(cal["reference_ms"]) == set(t["context"]["nets"]) and reference_times(t2) == cal["reference_ms"]


def test_a_search_in_predict_mode_says_its_figures_are_predicted(tmp_path, monkeypatch, table, capsys):
    """A real tiny run whose profile predicts from a table: the set-up lines say which figures are predicted, the int8
    seeds follow the predicted int8-alone speedup, and every trial's speedup is the table's."""
    import yaml
    from conftest import FAST_PROFILE, make_workspace

    from autocompress.cli import main
    from autocompress.store import RunStore

    space = {"kind": "search_space", "name": "p", "bits": {"choices": ["fp32", "int8"]}, "distill": {"enabled": False},
             "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
             "seeds": [{"sparsity": 0.5, "bits": "int8"}]}
    profile = {**FAST_PROFILE, "int8_seeds_min_speedup": 1000, "latency": {**FAST_PROFILE["latency"], "mode": "predict"},
               "lookup_table": "t.table.jsonl"}
    ws = make_workspace(tmp_path, space, profile, teacher="teacher.pt")
    _write(table, ws / "t.table.jsonl", target_name="tiny-cpu")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = tmp_path / "run"
    assert main(["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
                 "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
                 "--trials", "2", "--out", str(out), "--max-accuracy-drop", "100"]) == 0
    printed = capsys.readouterr().out
    base = RunStore(out).read_baseline()
    assert f"latency predicted {base['predicted_ms']:.3f} ms on the table's device (measured here" in printed
    ref = base["int8_reference"]
    assert f"{ref['speedup']:.2f}x vs the baseline (predicted)" in printed
    assert (f"seeds: int8 alone is predicted to run {ref['speedup']:.2f}x the fp32 baseline on this target") in printed
    assert "timed again" not in printed  # a predicted figure is not re-timed
    timed = [r.metrics for r in RunStore(out).records() if r.metrics.latency_ms is not None]
    assert timed and all(m.latency_mode == "predict" for m in timed)
    assert all(m.speedup == pytest.approx(base["predicted_ms"] / m.latency_ms, rel=1e-6) for m in timed)
    assert yaml.safe_load((out / "run.yaml").read_text())["spec"]["profile"].endswith("profile.yaml")


class _Shuffle(nn.Module):
    """A channel shuffle written as exporters see it: x.view(x.size(0), ...) keeps shape computations in the graph."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x.mean((2, 3)))


def test_the_model_is_predicted_as_exported_with_its_dynamic_batch(tmp_path, table):
    """A symbolic batch axis stays symbolic: the shape computations it keeps are kernels ORT runs for the deployed
    model (fixing the shape let ORT fold them away, and a ShuffleNet was predicted 28% fast here)."""
    torch.manual_seed(0)
    m = _Shuffle().eval()
    dyn = _export(m, tmp_path / "dyn.onnx")
    torch.onnx.export(m, torch.randn(1, 3, 32, 32), tmp_path / "static.onnx", dynamo=False, input_names=["input"],
                      output_names=["logits"])
    ops = {name: {g.split("/")[0] for _, g, _ in predict.predict_breakdown(p, PROFILE, table, (1, 3, 32, 32))}
           for name, p in (("dyn", dyn), ("static", tmp_path / "static.onnx"))}
    assert "Shape" in ops["dyn"] and "Shape" not in ops["static"]
    assert predict.predict_latency(dyn, PROFILE, table, (1, 3, 32, 32)) > predict.predict_latency(
        tmp_path / "static.onnx", PROFILE, table, (1, 3, 32, 32))
    # the batch the profile gives is fed to the symbolic axis
    conv = {b: sum(ms for _, g, ms in predict.predict_breakdown(dyn, PROFILE, table, (b, 3, 32, 32)) if "Conv" in g)
            for b in (1, 4)}
    assert conv[4] > 2 * conv[1]


def test_windows_are_taken_together_with_the_profiles_statistic():
    """A model timed in several fresh processes: with the two-thread profile's p10, a window the shared machine ran
    slow from start to end is left out (as a slow block is within a window); with the median, the middle window."""
    two_of_five_slow = [0.61, 0.89, 0.60, 0.61, 0.87]
    three_of_five_slow = [0.61, 0.89, 0.90, 0.60, 0.87]
    assert predict.across_windows(two_of_five_slow, "median") == pytest.approx(0.61)
    assert predict.across_windows(three_of_five_slow, "median") == pytest.approx(0.87)  # the slow state wins
    for w in (two_of_five_slow, three_of_five_slow):
        assert 0.60 <= predict.across_windows(w, "p10") <= 0.61
    p2, _ = load_profile("cpu")
    assert p2.latency.statistic == "p10"
