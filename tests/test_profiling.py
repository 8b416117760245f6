"""The target side of predict mode (autocompress.profiling): torch-free, resumable, fusion rules measured, tables
refused with one line when they do not fit."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from autocompress.profiling import check as pcheck
from autocompress.profiling import cold, graphs, kernels, lookup, marks, nets, recheck
from autocompress.profiling import table as ptable
from autocompress.profiling.target import Target, TargetError

TARGET = Target(name="cpu-1thread", intra_op_threads=1)


def tiny_specs() -> list[dict]:
    """A small grid: enough conv / dw / gemm / pool / element-wise points for the tiny nets, in seconds."""
    out = []
    for dt in ("fp32", "int8"):
        for k, s, pairs in ((3, 1, [(8, 8), (16, 16), (32, 32), (16, 32), (32, 16), (13, 13)]),
                            (1, 1, [(16, 32), (32, 16), (32, 64), (64, 32), (13, 29)]), (3, 2, [(8, 16), (16, 32), (32, 64)]),
                            (1, 2, [(8, 16), (16, 32), (32, 64)])):
            for cin, cout in pairs:
                for h in (8, 16):
                    out.append(dict(op="conv", k=k, s=s, dw=False, cin=cin, cout=cout, h=h, n=1, dtype=dt))
        for s in (1, 2):
            for c in (16, 32, 64, 13):
                for h in (8, 16):
                    out.append(dict(op="conv", k=3, s=s, dw=True, cin=c, cout=c, h=h, n=1, dtype=dt))
        out += [dict(op="gemm", cin=c, cout=10, m=1, dtype=dt) for c in (16, 64, 256)]
        out += [dict(op="gap", c=c, h=h, n=1, dtype=dt) for c in (16, 64) for h in (2, 8)]
        out += [dict(op=op, numel=m, n=1, dtype=dt) for op in ("add", "relu") for m in (1024, 4096)]
    out += [dict(op=q, numel=m, n=1, dtype="fp32") for q in ("quantize", "dequantize") for m in (1024, 4096)]
    return out


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("prof") / "tiny.table.jsonl"
    return ptable.build(TARGET, path, quick=True, specs=tiny_specs(), log=lambda *a: None)


def test_target_side_runs_without_torch_or_the_stages(tmp_path):
    """Built and used with torch, pydantic, typer and rich blocked: only numpy, onnx, onnxruntime are needed."""
    code = f"""
import sys
BLOCKED = {"torch", "torchvision", "pydantic", "typer", "rich", "pandas", "optuna", "sklearn"}
class Block:  # as if not installed: any import of these fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
from test_profiling import tiny_specs
from autocompress.profiling import table, lookup, nets
from autocompress.profiling.__main__ import read_profile
from autocompress.profiling.target import Target
assert read_profile("cpu-1thread")["intra_op_threads"] == 1  # a built-in profile, read without pydantic
t = table.build(Target(intra_op_threads=1), {str(tmp_path / 't.table.jsonl')!r}, quick=True,
                specs=[s for s in tiny_specs() if s["op"] == "conv" and s["cin"] == 16 and s["h"] == 8], log=lambda *a: None)
name, model = nets.held_out()[0]
ms = lookup.predict_raw(model, t)
assert t["done"] and ms > 0, ms
bad = [m for m in sys.modules if m.startswith(("autocompress.compress", "autocompress.models", "autocompress.measure",
                                               "autocompress.config", "torch"))]
assert not bad, bad
print("ok", round(ms, 4))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


def test_table_header_records_device_ort_and_ep(tiny_table):
    t = tiny_table
    assert t["kind"] == ptable.KIND and t["version"] == ptable.VERSION and t["done"]
    assert t["onnxruntime"] == ort.__version__ and t["execution_provider"] == "CPUExecutionProvider"
    assert t["fingerprint"]["cpu"] and t["target"]["intra_op_threads"] == 1 and t["clock"] == "cpu"
    assert 0 < t["overhead_ms"] < 1 and t["node_ms"] > 0
    assert t["timing"] == {"blocks": 3, "block_ms": 2.0, "statistic": "median"}  # how every graph of it was timed
    assert set(t["context"]["scale"]) == {"fp32", "int8"} and all(v > 0 for v in t["context"]["scale"].values())
    kinds = t["context"]["kind_scale"]  # each kind's ratio to the rest, from the networks' own profiles
    assert set(kinds) == {"fp32", "int8"} and all(kinds.values()) and all(0.5 <= r <= 2.0 for d in kinds.values() for r in d.values())
    assert t["context"]["cache_counts"] == "weights+outputs"  # what its networks' bytes against the cache counted


def test_fusion_rules_are_measured(tiny_table):
    rules = ptable.fusion_rules(tiny_table)
    assert {"conv3x3+relu c64 fp32", "conv3x3+relu c64 int8", "residual block c61 int8", "gemm int8"} <= set(rules)
    # int8 DQ -> Conv -> Q runs as one quantized conv: no Q/DQ kernel left around it
    int8_conv = rules["conv3x3+relu c64 int8"]
    assert any(k.endswith("QLinearConv") for k in int8_conv)
    assert not any(k.endswith(("QuantizeLinear", "DequantizeLinear")) for k in int8_conv)
    # fp32 Conv + Relu: the activation is fused into the conv kernel, no Relu runs
    assert "Relu" not in rules["conv3x3+relu c61 fp32"] and len([k for k in rules["conv3x3+relu c61 fp32"] if "Conv" in k]) == 1
    # every pattern line keys its kernels on the optimised graph's kernels
    for ln in tiny_table["lines"]:
        assert len(ln["signature"]) >= len(ln["kernels"]) >= 1


def test_int8_model_counts_no_fused_qdq(tiny_table):
    _, model = [m for m in nets.held_out() if m[0].startswith("resnet w16") and m[0].endswith("int8")][0]
    groups = [g for _, g, _, _ in lookup.breakdown(model, tiny_table)]
    assert sum(g.startswith("QLinearConv/int8") for g in groups) >= 8
    assert sum(g.startswith("QuantizeLinear") for g in groups) == 1  # the float input, once
    assert not [g for g in groups if g.startswith("DequantizeLinear/int8/") and "Conv" in g]


def test_prediction_orders_networks(tiny_table):
    small = nets.resnet([8, 16, 32], 1, 16, False, 0)
    big = nets.resnet([32, 64, 64], 2, 16, False, 0)
    assert 0 < lookup.predict_raw(small, tiny_table) < lookup.predict_raw(big, tiny_table)


def test_build_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "r.table.jsonl"
    specs = tiny_specs()[:6]
    part = ptable.build(TARGET, path, quick=True, specs=specs, limit=5, log=lambda *a: None)
    assert not part["done"] and len(part["lines"]) == 5
    with pytest.raises(TargetError, match="incomplete .* run the same profile-device command again"):
        ptable.check_compatible(part, TARGET)
    with open(path, "a") as f:
        f.write('{"id": "cut by a kill')  # a half-written last line is dropped, not an error
    msgs = []
    full = ptable.build(TARGET, path, quick=True, specs=specs, log=msgs.append)
    assert full["done"] and any("continuing" in m and "5 graphs already timed" in m for m in msgs)
    n_grid = len(ptable.patterns(1)) + len(specs)
    assert len({ln["id"] for ln in full["lines"]}) == n_grid
    again = len(full["lines"]) - n_grid  # graphs timed again after the grid (recheck), each once at most
    assert full["rechecked"]["retimed"] == again
    # the device's speed was marked where each part of the build started and ended, between the graphs
    assert [m["pos"] for m in part["marks"]] == [0, 5]
    assert [m["pos"] for m in full["marks"]] == [0, 5, 5, n_grid] + ([n_grid, n_grid + again] if again else [])
    assert all(set(m["ms"]) == {"resnet w24-48-96 32px fp32", "resnet w24-48-96 32px int8"} for m in full["marks"])
    assert any(m.startswith(f"speed marks: {len(full['marks'])} taken") for m in msgs)
    with pytest.raises(TargetError, match="other settings"):
        ptable.build(Target(intra_op_threads=2), path, quick=True, specs=specs, log=lambda *a: None)


def test_a_table_timed_another_way_is_not_continued(tmp_path):
    """Graphs timed with another statistic or block length are not mixed into one table: a partial table whose
    header records other timing (or none: a build from before the rule) is refused, not continued."""
    path = tmp_path / "r.table.jsonl"
    ptable.build(TARGET, path, quick=True, specs=tiny_specs()[:3], limit=2, log=lambda *a: None)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["timing"] == dict(zip(("blocks", "block_ms"), ptable._timing(True, "median")), statistic="median")
    for timing in (None, {**header["timing"], "statistic": "p10"}):
        header["timing"] = timing
        path.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
        with pytest.raises(TargetError, match="how its graphs are timed"):
            ptable.build(TARGET, path, quick=True, specs=tiny_specs()[:3], log=lambda *a: None)


def test_a_low_quantile_is_taken_over_more_and_shorter_blocks():
    """The two-thread profile's p10: four times the blocks at half the length (the same time spent), so a burst of
    another process's work on the shared core falls into few of them."""
    for quick in (True, False):
        n, ms = ptable._timing(quick, "median")
        qn, qms = ptable._timing(quick, "p10")
        assert qms == ms / 2 and qn >= max(2 * n, 10) and qn * qms >= n * ms


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update(execution_provider="CUDAExecutionProvider"), "built for CUDAExecutionProvider, the profile runs CPU"),
    (lambda t: t.update(onnxruntime="1.9.0"), r"built with onnxruntime 1.9.0, this machine has .* with onnxruntime"),
    (lambda t: t["target"].update(intra_op_threads=4), "built with intra_op_threads=4, the profile sets 1"),
])
def test_incompatible_tables_are_refused_in_one_line(tiny_table, change, match):
    t = json.loads(json.dumps({k: v for k, v in tiny_table.items() if k != "lines"}))
    t["lines"] = []
    change(t)
    with pytest.raises(TargetError, match=match) as e:
        ptable.check_compatible(t, TARGET)
    assert "\n" not in str(e.value) and "autocompress profile-device --profile cpu-1thread" in str(e.value)


def test_not_a_table(tmp_path):
    p = tmp_path / "x.table.jsonl"
    p.write_text('{"hello": 1}\n')
    with pytest.raises(TargetError, match="not an autocompress lookup table"):
        ptable.read(p)
    p.write_text(json.dumps({"kind": ptable.KIND, "version": ptable.VERSION - 1}) + "\n")
    with pytest.raises(TargetError, match=f"a lookup table of version {ptable.VERSION - 1}, this autocompress reads "
                                          f"version {ptable.VERSION}.*rebuild it on the target"):
        ptable.read(p)


def test_replicated_graph_runs_each_copy_with_its_own_weights():
    spec = dict(op="conv", k=1, s=1, dw=False, cin=64, cout=64, h=8, n=1, dtype="int8")
    ks = kernels.list_kernels(graphs.replicate(ptable.build_graph(spec), 3), TARGET)
    assert sum(k["op"] == "QLinearConv" for k in ks) == 3  # still fused: zero points untouched by the perturbation
    assert ptable.copies_for(dict(spec, cin=512, cout=512, dtype="fp32")) == 2 and ptable.copies_for(spec) == 8


def test_alignment_and_grouped_convs_are_their_own_classes():
    assert kernels.alignment(64, 128, False) == "a16" and kernels.alignment(64, 72, False) == "a8"
    assert kernels.alignment(61, 64, False) == "u" and kernels.alignment(3, 32, False) == "a16"
    assert kernels.alignment(101, 101, True) == "u" and kernels.alignment(96, 96, True) == "a16"
    # multiples of 4 apart (an int8 conv's VNNI fast path): the worst count decides
    assert kernels.alignment(12, 36, False) == "a4" and kernels.alignment(100, 100, True) == "a4"
    assert kernels.alignment(12, 37, False) == "u" and kernels.alignment(60, 64, False) == "a4"
    conv = [{"float": [1, 64, 8, 8]}, {"float": [64, 16, 3, 3]}]
    f = kernels.features("", "Conv", {"group": 4, "kernel_shape": [3, 3], "strides": [1, 1]}, conv, [{"float": [1, 64, 8, 8]}])
    assert f["group"] == "Conv/fp32/k3/s1/grp/a16" and f["work"] == 64 * 64 * 16 * 9
    wide = kernels.features("", "Conv", {"group": 4, "kernel_shape": [3, 3]}, conv, [{"float": [1, 128, 8, 8]}])
    assert wide["group"] == f["group"] and wide["feats"][:3] == f["feats"][:3]  # same class, told apart by cout
    assert wide["feats"][3] == pytest.approx(np.log(128)) and wide["work"] == 2 * f["work"]
    # a depthwise conv with a channel multiplier is not a depthwise one (its entries would be half its time)
    mult = kernels.features("", "Conv", {"group": 64, "kernel_shape": [3, 3]}, [{"float": [1, 64, 8, 8]}, {"float": [128, 1, 3, 3]}],
                            [{"float": [1, 128, 8, 8]}])
    assert mult["group"] == "Conv/fp32/k3/s1/grp/a16" and len(mult["feats"]) == 4


def test_reductions_are_keyed_on_values_out_and_elements_reduced():
    spatial = kernels.features("", "ReduceMean", {}, [{"float": [1, 96, 16, 16]}], [{"float": [1, 96, 1, 1]}])
    flat = kernels.features("", "ReduceMean", {}, [{"float": [1, 96, 16, 16]}], [{"float": [1, 96]}])  # keepdims=0
    assert spatial == flat and spatial["group"] == "ReduceMean/fp32/inner"
    assert spatial["feats"] == pytest.approx([np.log(96), np.log(256)]) and spatial["work"] == 96 * 256
    chans = kernels.features("", "ReduceMean", {}, [{"float": [1, 96, 16, 16]}], [{"float": [1, 1, 16, 16]}])
    assert chans["group"] == "ReduceMean/fp32/strided"
    # an NHWC mean of a 32-channel 32x32 tensor has an NCHW one's shapes: the node's axes decide
    cube = [{"float": [1, 32, 32, 32]}], [{"float": [1, 1, 1, 32]}]
    assert kernels.features("", "ReduceMean", {"axes": [1, 2]}, *cube)["group"] == "ReduceMean/fp32/strided"
    assert kernels.features("", "ReduceMean", {"axes": [-2, -1]}, *cube)["group"] == "ReduceMean/fp32/inner"
    ks = kernels.list_kernels(ptable.build_graph(dict(op="reduce", c=61, h=8, n=1, dtype="fp32")), TARGET)
    assert [k["group"] for k in ks] == ["ReduceMean/fp32/inner"]  # what the grid times is what a model looks up
    ks = kernels.list_kernels(ptable.build_graph(dict(op="reduce_nhwc", c=61, h=8, n=1, dtype="fp32")), TARGET)
    assert [k["group"] for k in ks] == ["ReduceMean/fp32/strided"]  # an int8 network's mean, ORT having turned it NHWC
    assert ks[0]["feats"] == pytest.approx([np.log(61), np.log(64)])


def test_reorders_are_keyed_on_the_alignment_of_their_channels(tiny_table):
    """An NCHWc ReorderOutput to 29-31 channels ran 3x one to 32 on AVX512 (blocks of 16): the class of the unblocked
    side's channel count is in its group, which the grid's convs of every class fill."""
    def out(c, last=0):
        plain = [1, 8, 8, c] if last else [1, c, 8, 8]
        return kernels.features("com.microsoft.nchwc", "ReorderOutput", {"channels": c, "channels_last": last},
                                [{"float": [1, 32, 8, 8]}], [{"float": plain}])
    assert out(32)["group"] == "com.microsoft.nchwc:ReorderOutput/fp32/a16" and out(29)["group"].endswith("/u")
    assert out(24)["group"].endswith("/a8") and out(28, last=1)["group"].endswith("/a4")
    assert out(29)["feats"] == out(32)["feats"] == [pytest.approx(np.log(32 * 64))]  # the blocked side's elements
    inp = kernels.features("com.microsoft.nchwc", "ReorderInput", {}, [{"float": [1, 24, 8, 8]}], [{"float": [1, 32, 8, 8]}])
    assert inp["group"] == "com.microsoft.nchwc:ReorderInput/fp32/a8"
    for cout in (28, 32):  # what a grid conv runs is keyed the same way (where this CPU runs the conv blocked)
        ks = kernels.list_kernels(ptable.build_graph(dict(op="conv", k=1, s=1, dw=False, cin=32, cout=cout, h=8, n=1,
                                                          dtype="fp32")), TARGET)
        outs = [k["group"] for k in ks if k["op"] == "ReorderOutput"]
        blocked = any(k["domain"] == "com.microsoft.nchwc" and k["op"] == "Conv" for k in ks)
        assert outs == ([f"com.microsoft.nchwc:ReorderOutput/fp32/{kernels.alignment(cout, cout, True)}"] if blocked else []), ks
    # a table from before the classes: its one reorder group answers for every class, as before
    old = {**tiny_table, "lines": [{**ln, "kernels": [{**k, "group": k["group"].rsplit("/", 1)[0]} if "Reorder" in k["group"]
                                                      else k for k in ln["kernels"]]} for ln in tiny_table["lines"]]}
    bare = [g for g in lookup.Index(old).groups if "ReorderOutput" in g]
    if any(g.startswith("NchwcConv") for g in lookup.Index(tiny_table).groups):  # (none where ORT blocks no conv)
        assert bare == ["com.microsoft.nchwc:ReorderOutput/fp32"]
        got, how = lookup.Index(old).lookup(bare[0] + "/u", [np.log(2048)], 2048)
        assert how == "alignment" and got == pytest.approx(lookup.Index(old).lookup(bare[0], [np.log(2048)], 2048)[0])


def test_missing_alignment_class_falls_back_to_the_nearest_one(tiny_table):
    trimmed = {**tiny_table, "lines": [{**ln, "kernels": [k for k in ln["kernels"] if not k["group"].endswith("/u")]}
                                       for ln in tiny_table["lines"]]}
    idx = lookup.Index(trimmed)
    feats = [np.log(13), np.log(64)]
    assert "QLinearConv/int8/k3/s1/dw/u" in lookup.Index(tiny_table).groups
    got, how = idx.lookup("QLinearConv/int8/k3/s1/dw/u", feats, 13 * 64 * 9)
    assert got > 0 and how == "alignment"  # from the a16 depthwise points of the same kernel
    assert idx.lookup("NoSuchKernel/fp32", [1.0], 10)[1] == "node"


def test_kernels_the_table_lacks_are_costed_by_their_kin(tiny_table):
    idx = lookup.Index(tiny_table)
    gap = [g for g in idx.groups if g.startswith("GlobalAveragePool/")]
    assert gap and not any(g.startswith("GlobalAveragePool-nhwc/") for g in idx.groups)
    ms, how = idx.lookup("GlobalAveragePool-nhwc/int8", [np.log(64), np.log(16)], 64 * 16)
    assert how == "scaled" and ms > 0  # from the NCHW pool's points ("node", the per-node cost, before)
    no_pool = {**tiny_table, "lines": [{**ln, "kernels": [k for k in ln["kernels"] if "GlobalAveragePool" not in k["group"]]}
                                       for ln in tiny_table["lines"]]}
    assert lookup.Index(no_pool).lookup("GlobalAveragePool-nhwc/int8", [np.log(64), np.log(16)], 64 * 16)[1] == "node"
    assert lookup._kin("com.microsoft:QLinearConcat") == ["Concat"]
    # QLinearConcat's first inputs are the output's scale / zero point: its dtype is the data's
    ins = [{"float": []}, {"uint8": []}, {"uint8": [1, 8, 4, 4]}, {"float": []}, {"uint8": []}]
    f = kernels.features("com.microsoft", "QLinearConcat", {"axis": 1}, ins, [{"uint8": [1, 16, 4, 4]}])
    assert f["group"] == "com.microsoft:QLinearConcat/int8"


def test_kendall_tau_without_scipy_matches_scipy(monkeypatch):
    x, y = [1, 2, 3, 4, 5, 6], [1.5, 1.0, 3.3, 4.1, 6.0, 5.5]
    with_scipy = pcheck.kendall_tau(x, y)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert pcheck.kendall_tau(x, y) == pytest.approx(with_scipy) == pytest.approx(11 / 15)
    s = pcheck.summary([1.05, 2.5, 3.0], [1.0, 2.0, 3.0])
    assert s["within_10"] == pytest.approx(2 / 3) and s["within_20"] == pytest.approx(2 / 3) and s["worst_error"] == pytest.approx(0.25)
    # a table built when the machine ran 20% slower: every prediction 20% high, none within +-10%, and all of them once
    # that one common factor is divided out (the speed moved, not the shape of the predictions)
    s = pcheck.summary([1.2, 2.4, 3.6, 6.0], [1.0, 2.0, 3.0, 5.0])
    assert s["within_10"] == 0 and s["relative_within_10"] == 1 and s["common_factor"] == pytest.approx(1.2)
    assert "100% within +-10% once one common factor (x1.200) is divided out" in pcheck.format_summary(s)


def test_check_times_held_out_networks(tiny_table):
    lines = []
    res = pcheck.check(tiny_table, log=lines.append, repeats=1)
    assert res["n"] == len(nets.held_out()) and all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in res["rows"])
    summary = next(ln for ln in lines if ln.startswith("check ("))
    assert "within +-10%" in summary and "Kendall's tau" in summary
    assert "the device runs the table's" in lines[-1] and "at today's speed" in lines[-1]


def test_the_check_measures_the_devices_speed_against_the_build(tiny_table):
    """The build keeps its context networks' whole times; a check times them again. A device ten times as slow as at
    its build (here: the build's times divided by ten) reads a factor ~10, says so, and scores the predictions scaled
    by it."""
    then = tiny_table["context"]["measured_ms"]
    assert then and set(then) <= set(tiny_table["context"]["nets"]) and all(v > 0 for v in then.values())
    assert 0.33 < pcheck.speed_now(tiny_table, repeats=3)["factor"] < 3.0  # the same machine minutes later
    slow = {**tiny_table, "context": {**tiny_table["context"], "measured_ms": {k: v / 10 for k, v in then.items()}}}
    lines = []
    res = pcheck.check(slow, log=lines.append, repeats=1)
    f = res["speed_now"]["factor"]
    assert 3.3 < f < 30, f
    scaled = pcheck.summary([r["predicted_ms"] * f for r in res["rows"]], [r["measured_ms"] for r in res["rows"]])
    assert res["at_speed_now"] == scaled
    assert any("slower than at its build" in ln and "rebuild the table" in ln for ln in lines), lines[-1]
    # a whole-model calibration, fitted after the context step, sets the level last: its reference times are read
    cal = {**tiny_table, "calibration": {"fits": {}, "reference_ms": {k: v * 3 for k, v in then.items()}}}
    assert pcheck.reference_times(cal) == {k: v * 3 for k, v in then.items()}
    old = {**tiny_table, "context": {k: v for k, v in tiny_table["context"].items() if k != "measured_ms"}}
    lines = []
    assert "speed_now" not in pcheck.check(old, log=lines.append, repeats=1)
    assert "predates its reference times" in lines[-1]


def test_a_kernel_costs_at_least_the_cheapest_measured_one(tiny_table):
    """Extrapolating to a tiny 1x1 conv (one pixel) keeps the fixed cost per call instead of scaling it to ~0."""
    idx = lookup.Index(tiny_table)
    g = "QLinearConv/int8/k1/s1/full/a16"
    cheapest = float(np.exp(idx.groups[g][2].min()))
    got, _ = idx.lookup(g, [np.log(16), 0.0, np.log(16)], 16 * 16)
    assert got >= 0.8 * cheapest


def test_in_network_per_kernel_cost_is_fitted_with_the_scale():
    # measured = 1.1 * sum + 2 us per kernel, over networks of few large and many small kernels
    pts = [(1.1 * s + 0.002 * k, s, k) for s, k in ((2.0, 30), (0.8, 60), (1.5, 200), (0.5, 170))]
    scale, per_kernel = ptable.fit_context(pts)
    assert scale == pytest.approx(1.1, rel=1e-6) and per_kernel == pytest.approx(0.002, rel=1e-6)
    # two networks cannot separate the two: the median ratio alone; nor can a fit that needs a negative cost
    assert ptable.fit_context(pts[:2]) == (pytest.approx(float(np.median([m / s for m, s, _ in pts[:2]]))), 0.0)
    neg = [(1.0 * s - 0.001 * k + 0.5, s, k) for s, k in ((2.0, 30), (0.8, 60), (1.5, 200))]
    assert ptable.fit_context(neg)[1] == 0.0
    table = {"lines": [], "overhead_ms": 0.0, "context": {"scale": {"fp32": 2.0}, "per_kernel_ms": {"fp32": 0.001}}}
    ks = [{"name": "a", "group": "Relu/fp32", "feats": [1.0], "work": 10.0}] * 3
    assert lookup.predict_raw(b"", table, kernels=ks) == pytest.approx(3 * (2.0 * 0.0 + 0.001))  # node cost 0 here
    # an exporter's shape arithmetic (Shape, int64 Gather...) does not pay the in-network cost per kernel
    shape_ops = [{"name": "s", "op": "Shape", "group": "Shape/fp32", "feats": [1.0], "work": 10.0},
                 {"name": "g", "op": "Gather", "group": "Gather/int64", "feats": [1.0], "work": 1.0}]
    assert lookup.predict_raw(b"", table, kernels=ks + shape_ops) == pytest.approx(3 * 0.001)


def test_a_kernel_kind_takes_its_ratio_to_the_rest_in_whole_networks():
    """A residual add whose share of the networks' time is 1.6x its entry where the rest run at 1.1x theirs takes
    1.6 / 1.1 of the in-network scale, pulled toward 1 by how little of the networks' kernel time the kind holds;
    a depthwise conv is a kind apart from the other convs of its implementation, and prices with its ratio."""
    rows = [("Conv/fp32", 1.0, 1.1), ("Conv/fp32", 2.0, 2.2), ("Add/fp32", 0.3, 0.48), ("Relu/fp32", 0.0001, 0.001)]
    level = (1.1 + 2.2 + 0.48 + 0.001) / 3.3001
    r = ptable.fit_kinds(rows, prior_ms=0.0)
    assert r["Add/fp32"] == pytest.approx(1.6 / level) and r["Conv/fp32"] == pytest.approx(1.1 / level)
    assert r["Relu/fp32"] == 2.0  # 10x its entry: held at 2x
    shrunk = ptable.fit_kinds(rows, prior_ms=0.3)
    assert shrunk["Add/fp32"] == pytest.approx(1 + 0.5 * (1.6 / level - 1)) and shrunk["Relu/fp32"] < 1.01
    assert ptable.fit_kinds([]) == {}
    ks = kernels.list_kernels(nets.mobilenet([16, 24], 4, 32, False, 1), TARGET)
    kinds = {k["group"]: lookup.kernel_kind(k) for k in ks}
    assert all(kd.endswith("/dw") == ("/dw/" in g) for g, kd in kinds.items()) and any("/dw/" in g for g in kinds)
    assert {kernels.weighted_kind(g) for g in kinds} >= {"full", "dw", None} and kernels.weighted_kind("Gemm/fp32") == "gemm"
    # every kernel at the node cost here (no graph lines): each at the common scale times its kind's ratio
    dw = next(g for g in kinds if "/dw/" in g)
    table = {"lines": [], "overhead_ms": 0.0, "node_ms": 0.01,
             "context": {"scale": {"fp32": 2.0}, "kind_scale": {"fp32": {kinds[dw]: 1.5}}}}
    two = [{"name": "d", "group": dw, "feats": [1.0, 2.0], "work": 10.0}, {"name": "a", "group": "Relu/fp32", "feats": [1.0], "work": 10.0}]
    assert lookup.predict_raw(b"", table, kernels=two) == pytest.approx(2.0 * 1.5 * 0.01 + 2.0 * 0.01)


@pytest.mark.parametrize("int8", [False, True])
def test_context_networks_of_small_kernels_run_the_kernels_real_models_do(int8):
    eff = {k["group"].split("/")[0] for k in kernels.list_kernels(nets.effnet([16, 24], 4, 32, int8, 1), TARGET)}
    shuf = {k["group"].split("/")[0] for k in kernels.list_kernels(nets.shufflenet([24, 48], 3, 32, int8, 1), TARGET)}
    if int8:  # the quantized forms ORT runs for EfficientNet / ShuffleNet: QLinear sigmoid, mul, concat
        assert {"com.microsoft:QLinearSigmoid", "com.microsoft:QLinearMul-bcast-vec", "QLinearConv"} <= eff  # NHWC
        assert {"com.microsoft:QLinearConcat", "Split", "Transpose-runs", "QLinearConv"} <= shuf
    else:  # the shuffle's Transpose moves runs of h*w elements (kernels._transpose)
        assert {"com.microsoft:QuickGelu", "Mul-bcast"} <= eff and {"Split", "Concat", "Transpose-runs"} <= shuf
    names = {n.split(" ")[0] for n, _ in ptable.context_nets(1, True)}
    assert names == {"resnet", "mobilenet", "effnet", "shufflenet", "wide", "deep"}  # wide: weight-heavy (cold.fit_cache)
    deep = {n.split(" ")[1] for n, _ in ptable.context_nets(1, True) if n.startswith("deep ")}
    assert deep == {"resnet", "mobilenet", "effnet", "shufflenet"}  # each family also as deep as the networks people prune


def test_grid_covers_what_pruned_models_run():
    specs = ptable.grid(False, 1, ["fp32", "int8"])
    grouped_u = [s for s in specs if s["op"] == "conv" and s.get("g", 1) > 1 and s["cout"] % 8]
    assert {s["dtype"] for s in grouped_u} == {"fp32", "int8"}  # a pruned RegNet: few channels per group, unaligned
    # a pruned model fed 224-px images: unaligned 1x1 / 3x3 / depthwise convs at 56-112 px, and an unaligned stem
    big_u = {(s["k"], s["dw"], s["h"]) for s in specs if s["op"] == "conv" and s["cout"] % 8 and s["h"] >= 64}
    assert {(1, False, 112), (3, False, 64), (3, True, 112)} <= big_u
    assert any(s["op"] == "conv" and s["cin"] == 3 and s["cout"] % 8 and s["h"] == 224 for s in specs)
    # every class of counts pruning leaves has its full / depthwise convs, 1x1 and 3x3, from 1 to 112 px, both dtypes
    align = {(kernels.alignment(s["cin"], s["cout"], s["dw"]), s["k"], s["dw"], s["dtype"]) for s in specs
             if s["op"] == "conv" and s.get("g", 1) == 1 and s["h"] in (1, 112)}
    assert {(a, k, dw, dt) for a in ("a8", "a4", "u") for k, dw in ((1, False), (3, False), (3, True))
            for dt in ("fp32", "int8")} <= align
    assert {(s["op"], s["dtype"]) for s in specs if s["op"] in ("split", "concat")} >= {("split", "fp32"), ("concat", "int8")}
    ks = kernels.list_kernels(ptable.build_graph(dict(op="concat", numel=4096, n=1, dtype="int8")), TARGET)
    assert [k["group"] for k in ks] == ["com.microsoft:QLinearConcat/int8"]
    ks = kernels.list_kernels(ptable.build_graph(dict(op="split", numel=4096, n=1, dtype="fp32")), TARGET)
    assert [k["group"] for k in ks] == ["Split/fp32"]
    # grouped convs that widen / narrow and depthwise ones with a multiplier; reductions over the spatial axes
    grouped = {(s["cout"] / s["cin"], s["g"] == s["cin"]) for s in specs if s["op"] == "conv" and s.get("g", 1) > 1}
    assert {(1.0, False), (2.0, False), (0.5, False), (2.0, True)} <= grouped
    assert {s["dtype"] for s in specs if s["op"] == "reduce"} == {"fp32", "int8"}
    assert any(s["op"] == "reduce_nhwc" for s in specs) and not any(s["op"] == "reduce_nhwc" for s in ptable.grid(False, 1, ["fp32"]))
    assert {s["dtype"] for s in specs if s.get("nhwc")} == {"int8"}
    ks = kernels.list_kernels(ptable.build_graph(dict(op="gap_nhwc", c=61, h=8, n=1, dtype="int8")), TARGET)
    assert "GlobalAveragePool-nhwc/int8" in [k["group"] for k in ks]  # the pool as an int8 network runs it


def test_a_broadcast_along_the_rows_is_not_one_across_them():
    """(n,c,h,w) x (n,c,1,1) runs one short row per channel; (n,h,w,c) x (n,1,1,c), the same squeeze-excite in an int8
    network ORT has turned NHWC, one long row per pixel: their own groups, each with its grid points."""
    nchw = kernels.features("", "Mul", {}, [{"float": [1, 64, 2, 2]}, {"float": [1, 64, 1, 1]}], [{"float": [1, 64, 2, 2]}])
    nhwc = kernels.features("", "Mul", {}, [{"float": [1, 2, 2, 64]}, {"float": [1, 1, 1, 64]}], [{"float": [1, 2, 2, 64]}])
    assert nchw["group"] == "Mul-bcast/fp32" and nhwc["group"] == "Mul-bcast-vec/fp32" and nchw["feats"] == nhwc["feats"]
    ks = kernels.list_kernels(ptable.build_graph(dict(op="mul_bcast", c=64, h=2, n=1, nhwc=True, dtype="int8")), TARGET)
    assert [k["group"] for k in ks] == ["com.microsoft:QLinearMul-bcast-vec/int8"]


def test_a_network_streams_its_weights_and_every_tensor_its_kernels_write():
    """The bytes a model's coldness is read from: its weights plus each kernel's outputs (a 1x1 fp32 conv 16 -> 32 on
    8x8 pixels writes 32 * 8 * 8 floats); a table whose cache was fitted on weights alone (no ``cache_counts``) is
    read on weights alone."""
    model = graphs.conv_graph(1, 16, 32, 8, 1, 1, False, False)
    ks = kernels.list_kernels(model, TARGET)
    conv = [k for k in ks if "Conv" in k["op"]]
    assert conv and max(k["out_bytes"] for k in conv) == 32 * 8 * 8 * 4
    weights = cold.model_weight_bytes(model)
    assert weights >= 16 * 32 * 4 and cold.stream_bytes(weights, ks) == weights + sum(k["out_bytes"] for k in ks)
    assert lookup.streamed(weights, ks, {"cache_counts": cold.STREAM}) == cold.stream_bytes(weights, ks) > weights
    assert lookup.streamed(weights, ks, {"cache_bytes": 1 << 20}) == lookup.streamed(weights, ks, {}) == weights
    assert kernels.output_bytes([{"uint8": [1, 8, 4, 4]}, {"int64": [2]}, {"float": [2, 10]}, {"float": []}]) == 128 + 16 + 80 + 4


def test_speed_marks_bring_every_graph_to_the_builds_median_speed():
    """A graph timed while the device ran slow is rescaled to the build's median speed over its marks (what the
    in-network fit's networks are brought to as well); between two marks the speed is interpolated; the sentinels'
    median decides."""
    slow_then_normal = [{"pos": 0, "ms": {"a": 2.0, "b": 4.0}}, {"pos": 4, "ms": {"a": 2.0, "b": 4.0}},
                        {"pos": 8, "ms": {"a": 1.0, "b": 2.0}}]  # median: a 2.0, b 4.0
    f = marks.line_factors(8, slow_then_normal)
    assert np.allclose(f[:4], 1.0) and f[-1] > f[4] > 1.0 and f[-1] < 2.0
    assert marks.mark_factors(slow_then_normal) == [1.0, 1.0, 2.0]
    assert np.allclose(marks.line_factors(8, [{"pos": 0, "ms": {"a": 1.0}}, {"pos": 8, "ms": {"a": 1.0}}]), 1.0)
    # one sentinel disturbed at one mark does not move the median of three
    noisy = [{"pos": 0, "ms": {"a": 1.0, "b": 1.0, "c": 5.0}}, {"pos": 2, "ms": {"a": 1.0, "b": 1.0, "c": 1.0}}]
    assert np.allclose(marks.line_factors(2, noisy), 1.0)
    # nor does one mark taken in a burst move the build's level, as the last mark alone did
    burst_last = [{"pos": i, "ms": {"a": 1.0}} for i in range(5)] + [{"pos": 5, "ms": {"a": 1.5}}]
    assert np.allclose(marks.line_factors(4, burst_last), 1.0)
    assert marks.line_factors(5, []) is None and marks.line_factors(5, slow_then_normal[:1]) is None
    assert "fewer than two" in marks.describe(None, 1)


def test_a_low_quantile_tables_marks_are_read_through_their_lower_envelope():
    """Two threads on shared cores: a mark taken while another tenant held the second core runs ~1.8x its time, and
    the graphs around it were not 1.8x faster for it. A p10 table reads each mark as the least of it and its
    neighbours; a median table as measured."""
    ms = [1.0, 1.0, 1.8, 1.0, 1.0, 1.8]
    bumpy = [{"pos": 2 * i, "ms": {"a": t}} for i, t in enumerate(ms)]
    assert np.allclose(marks.line_factors(10, bumpy, low=True), 1.0)
    assert marks.line_factors(10, bumpy).min() < 0.7  # read as measured: the graphs by a slow mark "ran 1.8x fast"
    assert marks.envelope(np.array(ms), 1).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert marks.low_quantile({"timing": {"statistic": "p10"}}) and not marks.low_quantile({"timing": {"statistic": "median"}})
    assert marks.table_factors({"lines": [{}] * 10, "marks": bumpy, "timing": {"statistic": "p10"}}).tolist() == [1.0] * 10
    # the build says how many marks it took in a slow spell (the shared cores a user's timings will see too)
    assert marks.slow_spells(bumpy, low=True) == 2 and marks.slow_spells(bumpy, low=False) == 0
    assert "2 of them in a slow spell" in marks.describe(marks.line_factors(10, bumpy, low=True), 6, 2)
    assert "slow spell" not in marks.describe(marks.line_factors(10, bumpy, low=True), 6, 0)


def test_context_networks_are_timed_in_rounds_across_the_build(tiny_table, monkeypatch):
    """A network's time for the in-network fit is the statistic of its rounds during the grid, each at the last
    mark's speed, and the final timing: a network timed once at the end, in a minute the shared machine's memory was
    busy, set the table's level 4-22% high (benchmarks/README.md, thirty-fifth session)."""
    (a, _), (b, _) = ptable.fit_nets(TARGET, quick=True)
    s = marks.SENTINELS[0] + " fp32"
    rounds = [{"pos": 0, "ms": {s: 2.0}, "nets": {a: 3.0, b: 0.8}},  # the device at half its median speed: 1.5, 0.4
              {"pos": 3, "ms": {s: 1.0}, "nets": {a: 1.2, b: 0.6}},
              {"pos": 4, "ms": {s: 1.0}}, {"pos": 5, "ms": {s: 1.0}}]
    assert marks.context_rounds(rounds) == {a: [1.5, 1.2], b: [0.4, 0.6]}
    monkeypatch.setattr(ptable, "time_sessions", lambda model, target, quick, n=3: 1.0)  # the final round
    msgs = []
    ctx = ptable.context_calibration({**tiny_table, "marks": rounds}, TARGET, quick=True, log=msgs.append)
    assert ctx["measured_ms"] == {a: pytest.approx(1.2), b: pytest.approx(0.6)} and ctx["rounds"] == 3
    assert any("median of 3 rounds" in m and "x0.833-x1.667" in m for m in msgs)
    # the final round taken while the device ran slow (its last mark twice the median) counts at the median's speed
    slow_end = rounds + [{"pos": 5, "ms": {s: 2.0}}]
    ctx = ptable.context_calibration({**tiny_table, "marks": slow_end}, TARGET, quick=True, log=msgs.append)
    assert ctx["measured_ms"][a] == pytest.approx(1.2) and ctx["measured_ms"][b] == pytest.approx(0.5)
    # a fit taken again on a build's stored times (refit_context.py) times nothing and takes them as they are
    monkeypatch.setattr(ptable, "time_sessions", lambda *a, **k: pytest.fail("timed a stored network"))
    again = ptable.context_calibration({**tiny_table, "marks": slow_end}, TARGET, quick=True, log=msgs.append,
                                       stored=ctx["measured_ms"])
    # (the profiles that split each network's time are listed again: the fit moves by their noise alone)
    assert again["measured_ms"] == ctx["measured_ms"] and again["scale"] == pytest.approx(ctx["scale"], rel=0.05)


def test_refit_context_takes_a_builds_fit_again_from_its_stored_times(tmp_path, monkeypatch):
    import runpy
    from pathlib import Path

    src, out = tmp_path / "t.table.jsonl", tmp_path / "again.table.jsonl"
    built = ptable.build(TARGET, src, quick=True, specs=tiny_specs()[:4], log=lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["refit_context.py", str(src), str(out)])
    monkeypatch.setattr(ptable, "time_sessions", lambda *a, **k: pytest.fail("refit timed a network"))
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "refit_context.py"), run_name="__main__")
    again = ptable.read(out)
    assert again["done"] and len(again["lines"]) == len(built["lines"])
    assert again["context"]["measured_ms"] == built["context"]["measured_ms"]
    assert again["context"]["scale"] == pytest.approx(built["context"]["scale"], rel=0.05)


def test_a_build_times_rounds_of_its_context_networks_between_marks(tmp_path, monkeypatch):
    monkeypatch.setattr(marks, "EVERY", 3)
    monkeypatch.setattr(marks, "ROUND_EVERY", 1)
    specs = tiny_specs()[:4]
    table = ptable.build(TARGET, tmp_path / "r.table.jsonl", quick=True, specs=specs, log=lambda *a: None)
    n_grid = len(ptable.patterns(1)) + len(specs)
    with_nets = [m["pos"] for m in table["marks"] if m.get("nets")]
    assert with_nets == list(range(3, n_grid, 3))[: len(with_nets)] and len(with_nets) >= n_grid // 3 - 1
    assert all(set(m["nets"]) == {n for n, _ in ptable.fit_nets(TARGET, True)} for m in table["marks"] if m.get("nets"))
    assert table["context"]["rounds"] == 1 + len(with_nets)


def test_the_lookup_uses_the_rescaled_times():
    """Two graphs of one kernel group, the first timed in a patch twice as slow as the end of the build: the table
    predicts that kernel at the time it takes at the build's median speed (1.5 here)."""
    def line(i):
        return {"id": f"g{i}", "spec": {}, "kernels": [{"group": "conv/fp32/x", "feats": [float(i)], "work": 1.0, "ms": 2.0}]}
    base = {"lines": [line(0), line(1)], "node_ms": 0.01}
    slow_first = {**base, "marks": [{"pos": 0, "ms": {"a": 2.0}}, {"pos": 1, "ms": {"a": 2.0}},
                                    {"pos": 1, "ms": {"a": 1.0}}, {"pos": 2, "ms": {"a": 1.0}}]}
    assert lookup.Index(base).lookup("conv/fp32/x", [0.0], 1.0)[0] == pytest.approx(2.0)
    assert lookup.Index(slow_first).lookup("conv/fp32/x", [0.0], 1.0)[0] == pytest.approx(1.5, rel=0.05)
    assert lookup.Index(slow_first).lookup("conv/fp32/x", [1.0], 1.0)[0] == pytest.approx(3.0, rel=0.05)


def test_element_wise_kernels_cost_more_with_more_elements():
    """A one-feature group (log elements) is read off the medians at each measured size, made non-decreasing and
    interpolated log-log: scattered entries of one size (the same DequantizeLinear alone and between two ops) cannot
    make a bigger tensor cheaper; below the smallest size the smallest's cost, above the largest scaled by work."""
    sizes = [256, 1024, 4096, 16384, 65536]
    us = {256: [0.2, 0.6], 1024: [0.3, 1.1], 4096: [2.4, 1.6], 16384: [1.5, 2.0], 65536: [9.0, 9.4]}
    lines = [{"kernels": [{"group": "DequantizeLinear/int8", "feats": [float(np.log(n))], "work": float(n), "ms": u / 1e3}]}
             for n in sizes for u in us[n]]
    idx = lookup.Index({"lines": lines, "node_ms": 0.0003})
    got = [idx.lookup("DequantizeLinear/int8", [float(np.log(n))], n)[0] for n in np.geomspace(100, 200000, 40)]
    assert all(b >= a - 1e-12 for a, b in zip(got, got[1:]))
    assert got[0] == pytest.approx(np.sqrt(0.2 * 0.6) * 1e-3)  # the smallest size's median (of the log times)
    assert idx.lookup("DequantizeLinear/int8", [float(np.log(131072))], 131072)[0] == pytest.approx(np.sqrt(9.0 * 9.4) * 2e-3)
    assert lookup._monotone(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)).tolist() == [1.0, 2.5, 2.5, 4.0]


@pytest.mark.parametrize("int8", [False, True])
def test_grid_times_squeeze_excite_convs_and_the_exporters_dynamic_shuffle(int8):
    """Two shapes real pruned models run that the square grid missed: a 1x1 conv on one pixel between a wide and a
    narrow channel count, and a channel shuffle whose sizes are read at run time (a dynamic batch axis), where the
    quantized form keeps a DequantizeLinear whose output the Shape nodes read."""
    specs = ptable.grid(False, 1, ["fp32", "int8"])
    se = {(s["cin"], s["cout"]) for s in specs if s["op"] == "conv" and s["h"] == 1 and s["k"] == 1}
    assert {(506, 21), (21, 506), (63, 2), (2, 63)} <= se
    assert {s["dtype"] for s in specs if s["op"] == "shuffle"} == {"fp32", "int8"}
    ks = kernels.list_kernels(ptable.build_graph(dict(op="shuffle", numel=4096, n=1, dtype="int8" if int8 else "fp32")),
                              TARGET)
    groups = {k["group"] for k in ks}
    assert {"Shape/fp32", "Gather/int64", "Unsqueeze/int64", "Concat/int64", "Div/int64"} <= groups  # not folded away
    dt = "int8" if int8 else "fp32"
    assert {"DequantizeLinear/int8" if int8 else "Reshape/fp32", f"Transpose-runs/{dt}"} <= groups | {"Slice/fp32"}
    # the shuffle on the few pixels of a last stage: its Transpose moves runs of 2x2 = 4 elements (1024 runs of 4096
    # elements), and on one pixel element by element (its own group)
    small = {(s["numel"], s["h"]) for s in specs if s["op"] == "shuffle" and s.get("h") and s["dtype"] == dt}
    assert {(4096, 1), (4096, 2), (4096, 4)} <= small
    tr = [k for k in kernels.list_kernels(ptable.build_graph(dict(op="shuffle", numel=4096, n=1, h=2, dtype=dt)), TARGET)
          if k["op"] == "Transpose"]
    assert [(k["group"], round(float(np.exp(k["feats"][1])))) for k in tr] == [(f"Transpose-runs/{dt}", 1024)]
    tr = [k for k in kernels.list_kernels(ptable.build_graph(dict(op="shuffle", numel=4096, n=1, h=1, dtype=dt)), TARGET)
          if k["op"] == "Transpose"]
    assert [k["group"] for k in tr] == [f"Transpose/{dt}"]


def test_repeated_sessions_are_taken_together_with_the_targets_statistic(monkeypatch):
    """Fresh sessions of one graph (marks, context networks, --check) are aggregated as the blocks within each are:
    the p10 target keeps the undisturbed session, the median target the middle one."""
    times = iter([1.0, 2.0, 2.1] * 2)
    monkeypatch.setattr(ptable, "time_whole", lambda model, target, quick: next(times))
    assert ptable.time_sessions(b"", Target(statistic="p10"), True) == pytest.approx(1.2)
    assert ptable.time_sessions(b"", Target(statistic="median"), True) == pytest.approx(2.0)


def _fit_line(i: int, ms: float, feats: list[float]) -> dict:
    return {"id": f"g{i}", "spec": {}, "wall_ms": ms,
            "kernels": [{"group": "conv/fp32/k3s1/a8", "feats": feats, "work": 1.0, "ms": ms}]}


def test_an_entry_far_above_its_neighbours_fit_is_timed_again_and_the_faster_kept():
    """A 5x5 grid of one group whose time grows with both features; one entry timed 2.5x slow is the only one
    flagged, and once it is timed again the faster of its two lines is what the lookup reads."""
    pts = [(a, b) for a in range(5) for b in range(5)]
    lines = [_fit_line(i, 0.1 * math.exp(0.3 * a + 0.2 * b), [float(a), float(b)]) for i, (a, b) in enumerate(pts)]
    slow = 12
    lines[slow] = _fit_line(slow, 2.5 * lines[slow]["wall_ms"], lines[slow]["kernels"][0]["feats"])
    table = {"lines": lines, "marks": [], "node_ms": 0.001}
    flagged = recheck.suspects(table)
    assert list(flagged) == [f"g{slow}"] and flagged[f"g{slow}"] == pytest.approx(2.5, rel=0.15)
    true = 0.1 * math.exp(0.3 * 2 + 0.2 * 2)
    again = {**table, "lines": lines + [_fit_line(slow, true, [2.0, 2.0])]}
    assert lookup.Index(again).lookup("conv/fp32/k3s1/a8", [2.0, 2.0], 1.0)[0] == pytest.approx(true, rel=1e-6)
    assert recheck.suspects(again) == {}  # timed twice: not again
    s = recheck.summary(again, flagged)
    assert s["retimed"] == 1 and s["faster"] == 1 and s["median_second_over_first"] == pytest.approx(0.4, rel=1e-3)
    # a second time slower than the first leaves the first in place
    worse = {**table, "lines": lines + [_fit_line(slow, 3 * true, [2.0, 2.0])]}
    kept = {ln["id"]: ln["wall_ms"] for ln, _ in lookup.kept_lines(worse)}
    assert len(kept) == 25 and kept[f"g{slow}"] == pytest.approx(2.5 * true)


def test_a_build_times_again_the_graph_a_disturbance_slowed(tmp_path):
    """A real build whose last graph waits while one graph's line is made 3x slow (as a disturbance does): the end
    of the grid times that graph again, and the table reads its faster line."""
    path = tmp_path / "d.table.jsonl"
    specs = [s for s in tiny_specs() if s["op"] == "conv" and s["dtype"] == "fp32" and not s["dw"] and s["k"] == 1
             and s["s"] == 1]
    ptable.build(TARGET, path, quick=True, specs=specs, limit=len(ptable.patterns(1)) + len(specs) - 1,
                 log=lambda *a: None)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    victim = next(r for r in rows if r.get("spec", {}).get("cin") == 32 and r["spec"].get("cout") == 64)
    victim["wall_ms"] *= 3
    for k in victim["kernels"]:
        k["ms"] *= 3
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    msgs = []
    full = ptable.build(TARGET, path, quick=True, specs=specs, log=msgs.append)
    assert full["done"] and full["rechecked"]["retimed"] >= 1
    twice = [ln for ln in full["lines"] if ln["id"] == victim["id"]]
    assert len(twice) == 2 and twice[1]["wall_ms"] < twice[0]["wall_ms"]
    kept = {ln["id"]: ln for ln, _ in lookup.kept_lines(full)}
    assert kept[victim["id"]] is twice[1]
    assert any(m.startswith("re-timed") for m in msgs)


def test_a_conv_with_a_fused_activation_other_than_relu_is_its_own_kernel():
    """ORT fuses Clip (ReLU6), HardSigmoid... into a float conv as it does Relu, but MLAS applies them as a second
    pass over the output: keyed apart, timed in the grid (Clip), and a kind the grid lacks costed by its Clip twin."""
    spec = dict(op="conv", k=1, s=1, dw=False, cin=16, cout=96, h=8, n=1, dtype="fp32", act="Clip")
    clip = [k["group"] for k in kernels.list_kernels(ptable.build_graph(spec), TARGET) if "Conv" in k["group"]]
    relu = [k["group"] for k in kernels.list_kernels(ptable.build_graph({**spec, "act": "Relu"}), TARGET) if "Conv" in k["group"]]
    assert len(clip) == len(relu) == 1 and clip[0].split("/")[0] == relu[0].split("/")[0] + "-clip"
    assert clip[0].split("/", 1)[1] == relu[0].split("/", 1)[1]
    assert kernels.fused_act({"activation": "Relu"}) == "" and kernels.fused_act({}) == ""
    assert kernels.fused_act({"activation": b"HardSigmoid"}) == "-hardsigmoid"
    assert any(s.get("act") == "Clip" and s["dw"] for s in ptable.grid(False, 1, ["fp32", "int8"]))
    assert not any(s.get("act") and s["dtype"] == "int8" for s in ptable.grid(False, 1, ["fp32", "int8"]))

    def line(i, group, ms):
        return {"id": f"g{i}", "spec": {}, "wall_ms": ms, "kernels": [{"group": group, "feats": [float(i)], "work": 1.0, "ms": ms}]}
    table = {"lines": [line(0, "NchwcConv-clip/fp32/k1/s1/full/a16", 1.3), line(1, "NchwcConv/fp32/k1/s1/full/a16", 1.0)],
             "marks": [], "node_ms": 0.001}
    idx = lookup.Index(table)
    assert idx.lookup("NchwcConv-sigmoid/fp32/k1/s1/full/a16", [0.0], 1.0) == (pytest.approx(1.3), "activation")
    no_clip = lookup.Index({**table, "lines": table["lines"][1:]})
    assert no_clip.lookup("NchwcConv-clip/fp32/k1/s1/full/a16", [1.0], 1.0) == (pytest.approx(1.0), "activation")


def test_a_conv_with_an_activation_beyond_its_twins_grid_is_priced_from_the_plain_conv():
    """The grid times Clip convs on a narrower range than plain ones (up to 160 channels in, from 4 pixels): a
    kernel with a fused activation outside its own or its Clip twin's grid (mobilenetv3's 576 -> 1024 hard-swish
    head conv on one pixel) is read from the plain conv's grid where that spans it, not from a fit extrapolated
    past the Clip points; inside the Clip grid the Clip entry still prices it."""
    def line(i, group, f, ms):
        return {"id": f"g{i}", "spec": {}, "wall_ms": ms,
                "kernels": [{"group": group, "feats": f, "work": 1.0, "ms": ms}]}
    clip = [line(i, "NchwcConv-clip/fp32/k1/s1/full/a16", [math.log(c), math.log(p)], 2.0)
            for i, (c, p) in enumerate((c, p) for c in (16, 64, 160) for p in (4, 64))]
    plain = [line(10 + i, "NchwcConv/fp32/k1/s1/full/a16", [math.log(c), math.log(p)], 1.0)
             for i, (c, p) in enumerate((c, p) for c in (16, 64, 576, 1152) for p in (1, 4, 64))]
    idx = lookup.Index({"lines": clip + plain, "marks": [], "node_ms": 0.001})
    inside, beyond = [math.log(64), math.log(16)], [math.log(576), math.log(1)]
    assert lookup.covers(idx.groups["NchwcConv-clip/fp32/k1/s1/full/a16"][0], inside)
    assert not lookup.covers(idx.groups["NchwcConv-clip/fp32/k1/s1/full/a16"][0], beyond)
    for group in ("NchwcConv-hardswish/fp32/k1/s1/full/a16", "NchwcConv-clip/fp32/k1/s1/full/a16"):
        assert idx.lookup(group, inside, 1.0)[0] == pytest.approx(2.0)
        assert idx.lookup(group, beyond, 1.0) == (pytest.approx(1.0), "activation")
    # a group no twin spans either keeps its own fit
    assert idx.lookup("NchwcConv-clip/fp32/k1/s1/full/a16", [math.log(4096), math.log(1)], 1.0)[1] == "fit"


def test_the_local_fit_scales_by_work_along_a_feature_its_neighbours_share():
    """A group the grid timed at one input count (13) asked for 15: the fit is of time per unit of work, so along a
    feature with no spread time goes with work (15/13 of the nearest), where a fit of time itself guessed 0.6x; where
    every feature varies the two fits agree."""
    rng = np.random.default_rng(0)
    X = np.array([[math.log(13), math.log(p), math.log(c)] for p in (16, 64, 256, 1024) for c in (16, 32, 64)])
    w = np.exp(X).prod(1)
    lt = np.log(w * 2e-6 * np.exp(rng.normal(0, 0.05, len(w))))
    q = np.array([math.log(15), math.log(1024), math.log(16)])
    nearest = int(np.argmin(((X - q) ** 2).sum(1)))
    got = lookup.local_fit(X, w, lt, q, 15 * 1024 * 16)
    assert got == pytest.approx(math.exp(lt[nearest]) * 15 / 13, rel=0.1)
    # every feature varying: time = 1e-3 * cin^0.5 * pixels * cout^0.8 is found whichever target is fitted
    X = np.array([[math.log(a), math.log(p), math.log(c)] for a in (8, 16, 32) for p in (16, 64, 256) for c in (8, 32)])
    w = np.exp(X).prod(1)
    lt = np.log(1e-3) + 0.5 * X[:, 0] + X[:, 1] + 0.8 * X[:, 2]
    q = np.array([math.log(12), math.log(100), math.log(20)])
    assert lookup.local_fit(X, w, lt, q, 12 * 100 * 20) == pytest.approx(1e-3 * 12 ** 0.5 * 100 * 20 ** 0.8, rel=1e-6)


def test_the_in_network_level_is_set_on_networks_as_deep_as_real_ones(tiny_table, monkeypatch):
    """The deep and wide context networks run at twice their kernels' sum, the shallow ones (the majority here) at
    their sum: the fitted scale is the deep ones' (the shallow ones are timed and kept as a reference speed, not
    fitted; fitted with them, the level would be theirs, 1.0)."""
    nets_ = [("resnet w8-16 16px fp32", nets.resnet([8, 16], 1, 16, False, 1, 1)),
             ("resnet w12-24 16px fp32", nets.resnet([12, 24], 1, 16, False, 5, 1)),
             ("mobilenet w8-16 e2 16px fp32", nets.mobilenet([8, 16], 2, 16, False, 6, 1)),
             ("deep resnet w8-16-24 b2 16px fp32", nets.resnet([8, 16, 24], 2, 16, False, 2, 1)),
             ("wide resnet w32-64 16px fp32", nets.resnet([32, 64], 1, 16, False, 4, 1))]
    tiny_table = {**tiny_table, "marks": []}  # the build's speed marks: not this test's (test_context_networks_...)
    bare = {**tiny_table, "context": None}
    factor = {m: (1.0 if not name.startswith(ptable.LEVEL_FAMILIES) else 2.0) for name, m in nets_}
    total = {m: sum(ms for *_, ms, _ in lookup.breakdown(m, bare, cold=0.0)) for _, m in nets_}
    monkeypatch.setattr(ptable, "context_nets", lambda batch, int8: nets_)
    monkeypatch.setattr(ptable, "time_sessions", lambda m, target, quick: tiny_table["overhead_ms"] + factor[m] * total[m])
    monkeypatch.setattr(ptable, "fit_kinds", lambda rows: {})  # the kinds' ratios from real profiles: not this test's
    ctx = ptable.context_calibration(tiny_table, TARGET, quick=False, log=lambda *a: None)
    assert ctx["scale"]["fp32"] == pytest.approx(2.0, rel=1e-3) and ctx["per_kernel_ms"]["fp32"] == pytest.approx(0.0, abs=1e-6)
    assert set(ctx["measured_ms"]) == {name for name, _ in nets_}


def test_a_profiled_session_that_fails_leaves_no_folder_behind(tmp_path, monkeypatch):
    """A session that cannot be built (or run) takes its temporary folder with it; one that works leaves none either
    (list_kernels removes it once it has read the optimised graph)."""
    import tempfile

    from autocompress.profiling.target import profile_nodes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(**kw):
        raise RuntimeError("the session could not be built")

    with pytest.raises(RuntimeError, match="could not be built"):
        profile_nodes(broken, lambda s: {}, 1)
    assert list(tmp_path.iterdir()) == []
    kernels.list_kernels(ptable.build_graph(dict(op="reduce", c=8, h=4, n=1, dtype="fp32")), TARGET)
    assert list(tmp_path.iterdir()) == []
