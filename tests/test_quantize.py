"""Per-layer int8 / fp16 with ONNX Runtime on real exported models."""

from __future__ import annotations

import filecmp

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto
from test_prune import TinyNet
from torch import nn

from autocompress.compress.export import export_onnx
from autocompress.compress.quantize import (
    _module_of,
    calibration_cache_supported,
    check_runs,
    module_to_nodes,
    quantize_model,
    resolve_bits,
)
from autocompress.errors import ConfigError, StageError
from autocompress.records import QuantSpec

CALIB = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "tiny.onnx"
    export_onnx(TinyNet().eval(), CALIB[:1], path)
    return path


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def r18_onnx(tmp_path_factory, r18):
    path = tmp_path_factory.mktemp("q") / "r18.onnx"
    export_onnx(r18, CALIB[:1], path)
    return path


def _nodes(path):
    return list(onnx.load(str(path)).graph.node)


def _quantized_convs(path):
    """Names of Conv nodes whose weight comes through a DequantizeLinear (QDQ int8)."""
    nodes = _nodes(path)
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    # the fp16 converter puts a (float32 -> float32) Cast after a DequantizeLinear feeding an fp32 node
    dq_out |= {o for n in nodes if n.op_type == "Cast" and n.input[0] in dq_out for o in n.output}
    return {n.name for n in nodes if n.op_type == "Conv" and n.input[1] in dq_out}


def test_module_of_scope_paths():
    assert _module_of("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert _module_of("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert _module_of("/trunk_output/block1/block1-0/proj/proj.0/Conv") == "trunk_output.block1.block1-0.proj.0"
    assert _module_of("/fc/Gemm") == "fc"
    assert _module_of("/Flatten") == ""
    assert _module_of("Identity_3") is None


def test_module_to_nodes_resnet18(r18_onnx, r18):
    names = [n for n, _ in r18.named_modules()]
    m2n = module_to_nodes(r18_onnx, names)
    assert m2n["layer1.0.conv1"] == ["/layer1/layer1.0/conv1/Conv"]
    assert m2n["layer2.0.downsample.0"] == ["/layer2/layer2.0/downsample/downsample.0/Conv"]
    assert m2n["fc"] == ["/fc/Gemm"]
    assert "/layer1/layer1.0/relu_1/Relu" in m2n["layer1.0.relu"]  # a module called twice
    assert set(m2n) <= set(names)
    ops = {n.name: n.op_type for n in _nodes(r18_onnx)}
    convs = {n for n, op in ops.items() if op == "Conv"}
    mapped = {n for nodes in m2n.values() for n in nodes}
    assert convs <= mapped and len(convs) == 20


def test_resolve_bits():
    names = ["stem.0", "block.conv1.0", "block.conv2.0", "fc", ""]
    r = resolve_bits(names, {"_default": "int8", "re:block\\..*": "fp16", "block.conv2": "fp32"})
    assert r == {"stem.0": "int8", "block.conv1.0": "fp16", "block.conv2.0": "fp32", "fc": "int8", "": "int8"}
    assert resolve_bits(names, {"block": "int8", "_default": "fp32"})["block.conv1.0"] == "fp32"  # later wins
    assert resolve_bits(names, {})["fc"] == "fp32"
    with pytest.raises(ConfigError, match="int4"):
        resolve_bits(names, {"_default": "int4"})
    with pytest.raises(ConfigError, match="did you mean 'stem.0'"):
        resolve_bits(names, {"stem.1": "int8"})


def test_per_layer_int8_quantizes_only_the_named_layer(r18_onnx, tmp_path):
    res = quantize_model(r18_onnx, tmp_path / "q.onnx", {"layer1.0.conv1": "int8", "layer3": "int8"},
                         QuantSpec(), CALIB)
    expected = {"/layer1/layer1.0/conv1/Conv", "/layer3/layer3.0/conv1/Conv", "/layer3/layer3.0/conv2/Conv",
                "/layer3/layer3.0/downsample/downsample.0/Conv", "/layer3/layer3.1/conv1/Conv",
                "/layer3/layer3.1/conv2/Conv"}
    assert _quantized_convs(res.path) == expected
    assert expected <= set(res.int8_nodes) and "/conv1/Conv" in res.fp32_nodes and not res.fp16_nodes


def _logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_one_calibration_serves_every_quantization_of_a_model(r18_onnx, tmp_path):
    """The sensitivity analysis quantizes one layer at a time: with a calibration cache every point reads the
    activation ranges the first one computed, and gives exactly the model a calibration of its own gives."""
    if not calibration_cache_supported():
        pytest.skip("this onnxruntime's quantize_static has no calibration_cache_path (onnxruntime < 1.32): "
                    "every quantization calibrates")
    cache, x = tmp_path / "ranges.json", CALIB[:4].numpy()
    for i, bits in enumerate([{"_default": "int8"}, {"layer1.0.conv1": "int8"}, {"layer3": "int8"}]):
        shared = quantize_model(r18_onnx, tmp_path / f"s{i}.onnx", bits, QuantSpec(), CALIB, calibration_cache=cache)
        assert cache.is_file()
        own = quantize_model(r18_onnx, tmp_path / f"o{i}.onnx", bits, QuantSpec(), CALIB)
        assert _quantized_convs(shared.path) == _quantized_convs(own.path)
        np.testing.assert_array_equal(_logits(shared.path, x), _logits(own.path, x))
    # the ranges really come from the file: other calibration data leaves the result as the first data made it
    again = quantize_model(r18_onnx, tmp_path / "again.onnx", {"layer3": "int8"}, QuantSpec(), CALIB * 10,
                           calibration_cache=cache)
    np.testing.assert_array_equal(_logits(again.path, x), _logits(tmp_path / "o2.onnx", x))


def test_u8s8_and_s8s8_types(tiny_onnx, tmp_path):
    def zero_point_types(path):
        m = onnx.load(str(path))
        inits = {i.name: i.data_type for i in m.graph.initializer}
        q = [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"]
        w = [inits[n.input[2]] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
        return set(q), set(w)

    u = quantize_model(tiny_onnx, tmp_path / "u.onnx", {"_default": "int8"}, QuantSpec(types="u8s8"), CALIB)
    s = quantize_model(tiny_onnx, tmp_path / "s.onnx", {"_default": "int8"}, QuantSpec(types="s8s8"), CALIB)
    assert zero_point_types(u.path)[0] == {TensorProto.UINT8}
    assert zero_point_types(s.path)[0] == {TensorProto.INT8}
    assert TensorProto.INT8 in zero_point_types(u.path)[1] and TensorProto.INT8 in zero_point_types(s.path)[1]
    assert len(_quantized_convs(u.path)) == sum(n.op_type == "Conv" for n in _nodes(tiny_onnx))


@pytest.mark.parametrize("quant,op", [
    (QuantSpec(format="qoperator"), "QLinearConv"),
    (QuantSpec(mode="dynamic"), "ConvInteger"),
    (QuantSpec(calibration="percentile", per_channel=False), "QuantizeLinear"),
])
def test_other_int8_modes(tiny_onnx, tmp_path, quant, op):
    res = quantize_model(tiny_onnx, tmp_path / "q.onnx", {"_default": "int8"}, quant, CALIB)
    assert op in {n.op_type for n in _nodes(res.path)}


def test_fp16_and_mixed(tiny_onnx, tmp_path):
    res = quantize_model(tiny_onnx, tmp_path / "h.onnx", {"_default": "fp16", "fc": "fp32"}, QuantSpec(), CALIB)
    m = onnx.load(str(res.path))
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert "/fc/Gemm" in res.fp32_nodes and "/stem/stem.0/Conv" in res.fp16_nodes
    mixed = quantize_model(tiny_onnx, tmp_path / "mix.onnx", {"_default": "fp16", "block": "int8"}, QuantSpec(), CALIB)
    assert _quantized_convs(mixed.path) == {"/block/conv1/conv1.0/Conv", "/block/conv2/conv2.0/Conv"}
    assert any(i.data_type == TensorProto.FLOAT16 for i in onnx.load(str(mixed.path)).graph.initializer)


def test_all_fp32_is_a_copy(tiny_onnx, tmp_path):
    res = quantize_model(tiny_onnx, tmp_path / "c.onnx", {"_default": "fp32"}, QuantSpec(), CALIB)
    assert filecmp.cmp(res.path, tiny_onnx, shallow=False) and not res.int8_nodes


class NaNNet(nn.Module):
    def forward(self, x):
        return torch.log(-x.abs().flatten(1) - 1.0)


def test_check_runs_rejects_non_finite(tmp_path):
    path = export_onnx(NaNNet(), torch.randn(1, 3, 4, 4), tmp_path / "nan.onnx", check=False).path
    with pytest.raises(StageError, match="non-finite") as e:
        check_runs(path, np.ones((1, 3, 4, 4), np.float32))
    assert e.value.stage == "quantize"
    with pytest.raises(StageError, match="does not run"):
        check_runs(path, np.ones((1, 5), np.float32))


def _weight_int8_extremes(path):
    """(min, max) over the int8 weight initializers that DequantizeLinear nodes read."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    vals = [numpy_helper.to_array(inits[n.input[0]]) for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8]
    return min(int(v.min()) for v in vals), max(int(v.max()) for v in vals)


def test_reduce_range_puts_weights_in_7_bits_and_is_decided_by_the_cpu(tiny_onnx, tmp_path):
    from autocompress.compress.quantize import reduce_range_for

    full = quantize_model(tiny_onnx, tmp_path / "f.onnx", {"_default": "int8"}, QuantSpec(reduce_range=False), CALIB)
    red = quantize_model(tiny_onnx, tmp_path / "r.onnx", {"_default": "int8"}, QuantSpec(reduce_range=True), CALIB)
    lo, hi = _weight_int8_extremes(full.path)
    assert hi - lo > 200  # per-channel symmetric 8 bits uses the range
    lo, hi = _weight_int8_extremes(red.path)
    assert -64 <= lo and hi <= 64  # 7 bits: VPMADDUBSW's int16 pair sums cannot saturate
    # None: the quantizing CPU decides: U8S8 on x86 without VNNI (AVX2 only) -> 7 bits; VNNI, S8S8 or ARM -> 8
    assert reduce_range_for(QuantSpec(), ["avx2"]) is True
    assert reduce_range_for(QuantSpec(), ["avx2", "avx512f", "avx512_vnni"]) is False
    assert reduce_range_for(QuantSpec(), ["avx2", "avx_vnni"]) is False
    assert reduce_range_for(QuantSpec(), ["neon", "asimd"]) is False
    assert reduce_range_for(QuantSpec(types="s8s8"), ["avx2"]) is False
    assert reduce_range_for(QuantSpec(reduce_range=False), ["avx2"]) is False


def test_fp16_of_an_untrained_model_with_shared_constants(tmp_path):
    """An untrained resnet18 exports its equal (zero) folded biases once, forwarded by Identity nodes to five Convs.
    In fp16 those Identities were kept fp32 between Casts, and onnxruntime <= 1.31's converter then wrote one Cast per
    use under one name, a model ORT refused (seen on an H200 for the untrained resnet18 and every 'family' student)."""
    from autocompress.models.zoo import build_model

    torch.manual_seed(0)
    src = tmp_path / "r.onnx"
    export_onnx(build_model("resnet18", 10, (3, 16, 16)).eval(), torch.zeros(1, 3, 16, 16), src)
    g = onnx.load(str(src)).graph
    inits = {i.name for i in g.initializer}
    assert sum(n.op_type == "Identity" and n.input[0] in inits for n in g.node) >= 4  # the case this is about
    calib = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    res = quantize_model(src, tmp_path / "h.onnx", {"_default": "fp16"}, QuantSpec(), calib)
    ops = [n.op_type for n in _nodes(res.path)]
    assert "Identity" not in ops and ops.count("Cast") == 2  # the input's and the output's, nothing between


def test_a_node_written_twice_is_kept_once():
    from onnx import helper

    from autocompress.compress.quantize import _drop_repeated_nodes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])
    cast = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="x_cast_to_fp32_node")
    nodes = [cast, helper.make_node("Relu", ["x32"], ["y"], name="a"), cast, helper.make_node("Neg", ["x32"], ["z"], name="b")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y, z]), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(Exception, match="same node name"):
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = _drop_repeated_nodes(m)
    assert [n.name for n in fixed.graph.node] == ["x_cast_to_fp32_node", "a", "b"]
    out = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([-1, 2], np.float16)})
    assert out[0].tolist() == [0, 2] and out[1].tolist() == [1, -2]
