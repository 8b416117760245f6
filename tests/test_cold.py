"""Weights out of the cache (autocompress.profiling.cold): the knee found from per-copy times, a model's coldness from
its weight bytes, the lookup blending warm and cold entries, and the build timing big weighted kernels cold."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from autocompress.profiling import cold, graphs, kernels, lookup, nets
from autocompress.profiling import table as ptable
from autocompress.profiling.target import Target

TARGET = Target(name="cpu-1thread", intra_op_threads=1)


def test_coldness_ramps_from_half_the_cache_to_twice_it():
    mib = 2 ** 20
    assert cold.coldness(4 * mib, 16 * mib) == 0.0
    assert cold.coldness(8 * mib, 16 * mib) == pytest.approx(0.0)
    assert cold.coldness(16 * mib, 16 * mib) == pytest.approx(0.5)
    assert cold.coldness(32 * mib, 16 * mib) == pytest.approx(1.0)
    assert cold.coldness(200 * mib, 16 * mib) == 1.0
    assert cold.coldness(200 * mib, None) == 0.0  # a table without a measured cache: warm entries only


def test_the_knee_is_where_the_per_copy_time_is_half_way_to_cold():
    per = 256 * 256 * 4
    knee_at = 24 * per  # a cache of 24 copies' weights: warm 10 us below it, 30 us from 4x it, log-linear between

    def fake(model, n):
        x = np.clip(np.log(n * per / (knee_at / 2)) / np.log(4.0), 0.0, 1.0)
        return 0.010 + 0.020 * x
    got = cold.cache_knee(fake, quick=False)
    assert got["knee_copies"] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert got["cache_bytes"] == pytest.approx(knee_at, rel=0.15)
    flat = cold.cache_knee(lambda m, n: 0.010, quick=True)  # no rise: nothing is timed cold, every model warm
    assert flat["cache_bytes"] is None and flat["knee_copies"] == [4, 16, 64, 256]


def test_the_knee_finds_a_cores_cache_and_the_last_level_apart():
    """Two builds on one Xeon (2 MiB of L2 per core): the same steps although the 64-MiB point moved by a third
    (benchmarks/README.md, thirtieth session); one step is the core's when it comes by 4 MiB, else the last level's."""
    per = cold.KNEE_COPY_BYTES
    sizes = [n * per for n in (2, 4, 8, 16, 32, 64, 128, 256)]
    mib = 2 ** 20
    for us in ([4.9, 5.1, 7.7, 11.7, 11.9, 12.0, 12.6, 23.8], [5.5, 5.2, 7.9, 12.0, 12.0, 12.0, 12.4, 17.6]):
        st = cold.cache_steps(sizes, [u / 1e3 for u in us])
        assert (st["lo"], st["hi"]) == (1 * mib, 4 * mib)
        assert st["mid"] == pytest.approx(0.012, rel=0.03) and st["warm"] == pytest.approx(0.0052, rel=0.07)
        assert 32 * mib < st["cache_bytes"] < 64 * mib
    core = cold.cache_steps(sizes, [0.005] * 3 + [0.012] * 5)  # one step, at 2-4 MiB: the core's, no last level seen
    assert core["mid"] == pytest.approx(0.012) and core["cold"] is None and core["cache_bytes"] is None
    last = cold.cache_steps(sizes, [0.013] * 4 + [0.020] * 4)  # one step at 8 MiB: the last level's
    assert last["mid"] is None and last["cold"] == pytest.approx(0.020) and 4 * mib < last["cache_bytes"] < 8 * mib
    table = {"knee_ms": [0.005] * 3 + [0.012] * 5, "knee_copies": [2, 4, 8, 16, 32, 64, 128, 256]}
    level = cold.mid_level(table)
    assert level["ms_per_byte"] == pytest.approx(0.007 / per)
    assert cold.mid_share(level["lo"], level) == 0.0 and cold.mid_share(level["hi"], level) == 1.0
    assert 0.0 < cold.mid_share((level["lo"] * level["hi"]) ** 0.5, level) < 1.0
    assert cold.mid_level({"knee_ms": [0.013] * 4 + [0.020] * 4, "knee_copies": table["knee_copies"]}) is None


def test_entries_move_to_the_last_level_by_their_weight_bytes():
    """A grid entry timed with its few copies' weights in the core's cache is raised by its bytes at the step's cost
    per byte for a model whose weights are past it; one timed with copies already past it is lowered for a model
    that fits. Kernels without weights (reorders) do not move."""
    knee = {"knee_ms": [0.005] * 3 + [0.012] * 5, "knee_copies": [2, 4, 8, 16, 32, 64, 128, 256]}
    g = "Conv/fp32/k1/s1/full/a16"
    pts = [[float(i), float(j), float(k)] for i in range(3) for j in range(3) for k in range(3)]
    spec = dict(op="conv", k=1, s=1, dw=False, cin=256, cout=256, h=2, n=1, dtype="fp32")  # 256 KiB of weights
    lines = []
    for copies, tag in ((2, "few"), (64, "many")):
        for f in pts:
            k = {"group": f"{g}{tag}", "feats": f, "work": 1.0, "ms": 0.01, "n": copies}
            r = {"group": "com.microsoft.nchwc:ReorderOutput/fp32", "feats": [f[0]], "work": 1.0, "ms": 0.001, "n": copies}
            lines.append({"id": f"{tag}{f}", "spec": spec, "kernels": [k, r]})
    idx = lookup.Index({"lines": lines, "node_ms": 0.0, **knee})
    q, step = [1.0, 1.0, 1.0], 0.007  # 256 KiB at (12 - 5) us per 256 KiB
    assert idx.lookup(f"{g}few", q, 1.0)[0] == pytest.approx(0.01)  # timed in the core's cache, predicted there
    assert idx.lookup(f"{g}few", q, 1.0, mid=1.0)[0] == pytest.approx(0.01 + step)
    assert idx.lookup(f"{g}many", q, 1.0, mid=1.0)[0] == pytest.approx(0.01)  # timed past it already
    assert idx.lookup(f"{g}many", q, 1.0)[0] == pytest.approx(0.01 - step)
    assert idx.lookup("com.microsoft.nchwc:ReorderOutput/fp32", [1.0], 1.0, mid=1.0)[0] == pytest.approx(0.001)


def test_model_weight_bytes_counts_initializers_at_their_width():
    fp32 = graphs.conv_graph(1, 64, 128, 8, 3, 1, False, False)
    int8 = graphs.conv_graph(1, 64, 128, 8, 3, 1, False, True)
    w = 64 * 128 * 9
    assert w * 4 <= cold.model_weight_bytes(fp32) <= w * 4 + 4096
    assert w <= cold.model_weight_bytes(int8) <= w + 4096  # int8 weights, int32 bias, scales
    assert cold.model_weight_bytes(graphs.replicate(fp32, 3)) == 3 * cold.model_weight_bytes(fp32)


def test_copies_hold_one_and_a_half_caches_and_small_weights_are_not_timed_cold():
    big = dict(op="conv", k=1, s=1, dw=False, cin=512, cout=512, h=2, n=1, dtype="fp32")
    assert cold.weight_bytes(big) == 512 * 512 * 4
    n = cold.cold_copies(big, 16 * 2 ** 20)
    assert n * cold.weight_bytes(big) >= 24 * 2 ** 20 > (n - 1) * cold.weight_bytes(big)
    assert cold.worth_timing_cold(big, warm_ms=0.03)
    assert not cold.worth_timing_cold(big, warm_ms=50.0)  # fetching 1 MiB is nothing beside 50 ms of compute
    small = dict(big, cin=16, cout=16)
    assert not cold.worth_timing_cold(small, warm_ms=0.001)
    assert cold.worth_timing_cold(dict(op="gemm", cin=1024, cout=1024, m=1, dtype="int8"), warm_ms=0.05)
    assert cold.weight_bytes(dict(op="relu", numel=4096, n=1)) == 0


def _line(group, feats, ms, cold_ms=None):
    k = {"group": group, "feats": feats, "work": 1.0, "ms": ms}
    if cold_ms is not None:
        k["cold_ms"] = cold_ms
    return {"id": f"{group}{feats}", "spec": {}, "kernels": [k]}


def test_lookup_blends_warm_and_cold_entries_by_coldness():
    a, b = "Conv/fp32/k1/s1/full/a16", "Conv/fp32/k3/s1/full/a16"
    pts = [[float(i), float(j), float(k)] for i in range(3) for j in range(3) for k in range(3)]
    lines = [_line(a, f, 1.0, 4.0) for f in pts] + [_line(b, f, 1.0) for f in pts]  # b: never timed cold
    idx = lookup.Index({"lines": lines, "node_ms": 0.0})
    q = [1.0, 1.0, 1.0]
    assert idx.lookup(a, q, 1.0)[0] == pytest.approx(1.0)
    assert idx.lookup(a, q, 1.0, cold=1.0)[0] == pytest.approx(4.0, rel=1e-6)
    assert idx.lookup(a, q, 1.0, cold=0.5)[0] == pytest.approx(2.0, rel=1e-6)  # log-linear
    assert idx.lookup(b, q, 1.0, cold=1.0)[0] == pytest.approx(1.0, rel=1e-6)


def test_a_model_beyond_the_cache_is_predicted_with_the_cold_entries(tmp_path):
    """The wiring end to end on a measured table: every entry given a cold time twice its warm one; a table whose
    networks' cache (fitted with the context networks) the model's weights exceed four times predicts the kernels at
    twice what one with a vast cache does."""
    specs = [dict(op="conv", k=k, s=s, dw=False, cin=c, cout=c, h=h, n=1, dtype="fp32")
             for k in (1, 3) for s in (1, 2) for c in (16, 24, 32) for h in (8, 16)]
    specs += [dict(op="conv", k=3, s=s, dw=True, cin=c, cout=c, h=h, n=1, dtype="fp32")
              for s in (1, 2) for c in (16, 24, 32) for h in (8, 16)]
    specs += [dict(op="gap", c=c, h=h, n=1, dtype="fp32") for c in (16, 32) for h in (2, 4)]
    specs += [dict(op="gemm", cin=c, cout=10, m=1, dtype="fp32") for c in (16, 32, 64)]
    specs += [dict(op=op, numel=m, n=1, dtype="fp32") for op in ("add", "relu") for m in (1024, 4096)]
    t = ptable.build(TARGET, tmp_path / "t.table.jsonl", quick=True, specs=specs, log=lambda *a: None)
    assert t["cache_bytes"] is None or t["cache_bytes"] > 0  # None: the copies showed no last-level step here
    assert len(t["knee_ms"]) == len(t["knee_copies"]) == 4
    t = {**t, "context": None}
    doubled = copy.deepcopy(t)
    for ln in doubled["lines"]:
        for k in ln["kernels"]:  # (a tiny graph timed at ~0 net of the overhead sits at the lookup's 1e-5 ms clamp)
            k["ms"] = max(k["ms"], 1e-3)
            k["cold_ms"] = 2 * k["ms"]
    net = nets.resnet([16, 32], 1, 16, False, 3, 1)
    wbytes = cold.model_weight_bytes(net)
    ks = kernels.list_kernels(net, TARGET)
    warm = lookup.breakdown(net, {**doubled, "context": {"cache_bytes": 1e15}}, kernels=ks)
    beyond = lookup.breakdown(net, {**doubled, "context": {"cache_bytes": wbytes / 4}}, kernels=ks)
    no_cache = lookup.breakdown(net, {**doubled, "context": None}, kernels=ks)
    assert [ms for *_, ms, _ in warm] == pytest.approx([ms for *_, ms, _ in no_cache])
    looked_up = [(w, b) for (*_, w, how), (*_, b, _) in zip(warm, beyond) if how != "node"]  # node: a fixed cost
    assert len(looked_up) >= 5 and all(b == pytest.approx(2 * w, rel=1e-6) for w, b in looked_up)


def test_the_build_times_a_big_weighted_kernel_cold_too(tmp_path, monkeypatch):
    """Where the knee found a last level (pinned at 8 MiB here: whether this machine's copies show one varies, and a
    table without one times nothing cold), a big weighted kernel is timed again with its copies past it."""
    knee = cold.cache_knee
    monkeypatch.setattr(ptable.cold, "cache_knee", lambda *a, **kw: {**knee(*a, **kw), "cache_bytes": 8.0 * 2 ** 20})
    spec = dict(op="conv", k=1, s=1, dw=False, cin=512, cout=512, h=2, n=1, dtype="fp32")
    t = ptable.build(TARGET, tmp_path / "t.table.jsonl", quick=True, specs=[spec], log=lambda *a: None)
    line = next(ln for ln in t["lines"] if ln["spec"] == spec)
    op = max(line["kernels"], key=lambda k: k["ms"])
    assert op["group"].startswith("NchwcConv/fp32/k1") and op["cold_ms"] > 0
    assert line["cold_copies"] == cold.cold_copies(spec, t["cache_bytes"])
    assert [k for k in line["kernels"] if k is not op and "cold_ms" in k] == []  # reorders: warm only


def test_the_networks_cache_is_fitted_where_warm_and_cold_entries_part():
    """Networks measured at their warm sum below 8 MiB of weights and at their cold sum from 16 MiB: the fitted
    centre lies between; networks all of one size cannot place it (None: every model warm)."""
    mib = 2 ** 20
    nets_ = []
    for i, mb in enumerate([1, 2, 4, 6, 16, 24, 40, 64]):
        warm, cold_ = [0.1 * (i + 1)] * 10, [0.2 * (i + 1)] * 10
        meas = sum(cold_) if mb >= 16 else sum(warm)
        for dt in ("fp32", "int8"):
            nets_.append({"dtype": dt, "measured": meas, "bytes": mb * mib, "n": 10, "warm": warm, "cold": cold_})
    got = cold.fit_cache(nets_, ptable.fit_context)
    assert got is not None and 8 * mib <= got <= 16 * mib
    assert cold.coldness(6 * mib, got) == 0.0 and cold.coldness(16 * mib, got) == 1.0
    same = [dict(n, bytes=4 * mib) for n in nets_]
    assert cold.fit_cache(same, ptable.fit_context) is None


def test_the_table_times_networks_with_the_statistic_the_profile_reports():
    """The 2-thread profile reports p10 of its blocks: the context networks that set the table's level are timed
    that way, so a prediction is of the figure measure mode would give; one thread keeps the median."""
    from autocompress.config import load_profile
    from autocompress.profiling.lookup import table_target

    cpu = Target.from_profile(load_profile("cpu")[0])
    assert cpu.statistic == "p10" and Target.from_profile(load_profile("cpu-1thread")[0]).statistic == "median"
    assert table_target({"target": cpu.settings(), "target_name": "cpu"}).statistic == "p10"
    assert Target.from_profile({"name": "edge", "latency": {"statistic": "min"}}).statistic == "min"


def test_weights_an_exporter_folded_into_constant_nodes_count_too():
    """Some exporters write weights as Constant nodes instead of initializers: they stream through the cache the same,
    and the parameter count (measure.cost) reads them through the same helper."""
    import onnx
    from onnx import helper, numpy_helper

    from autocompress.measure import cost

    w = np.zeros((64, 32, 3, 3), np.float32)
    const = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w"))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph([const, conv], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32, 8, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert cold.model_weight_bytes(m) == w.nbytes
    assert cold.weight_tensors(m) == [(w.size, 4)]
    assert cost.onnx_param_count(m) == w.size
