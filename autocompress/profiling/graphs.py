"""ONNX graphs built with ``onnx.helper`` for the lookup table: single ops and the small fused patterns whose
optimised form tells which kernels ONNX Runtime runs (fp32 and int8 QDQ U8S8). numpy + onnx only."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_X_SCALE, _X_ZP, _Y_SCALE, _Y_ZP = 0.02, 128, 0.05, 128


def _model(nodes, inputs, outputs, inits) -> bytes:
    g = helper.make_graph(nodes, "op", inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m.SerializeToString()


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _qdq_wrap(op_nodes_fn, in_shapes, out_shape, inits, int8: bool, n_in: int = 1):
    """fp32: X* -> op -> Y. int8: u8 X* -> DQ -> op -> Q -> u8 Y (what ORT fuses into QLinear*)."""
    if not int8:
        ins = [f"x{i}" for i in range(n_in)]
        nodes = op_nodes_fn(ins, "y")
        return _model(nodes, [_vi(n, TensorProto.FLOAT, s) for n, s in zip(ins, in_shapes)],
                      [_vi("y", TensorProto.FLOAT, out_shape)], inits)
    inits = list(inits) + [
        numpy_helper.from_array(np.array(_X_SCALE, np.float32), "xs"),
        numpy_helper.from_array(np.array(_X_ZP, np.uint8), "xz"),
        numpy_helper.from_array(np.array(_Y_SCALE, np.float32), "ys"),
        numpy_helper.from_array(np.array(_Y_ZP, np.uint8), "yz"),
    ]
    nodes = [helper.make_node("DequantizeLinear", [f"x{i}", "xs", "xz"], [f"xf{i}"]) for i in range(n_in)]
    nodes += op_nodes_fn([f"xf{i}" for i in range(n_in)], "yf")
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    return _model(nodes, [_vi(f"x{i}", TensorProto.UINT8, s) for i, s in zip(range(n_in), in_shapes)],
                  [_vi("y", TensorProto.UINT8, out_shape)], inits)


def _weights(shape, int8: bool, rng, name="w", axis=0):
    """fp32 initializer, or int8 per-channel initializer + DequantizeLinear node producing ``name``."""
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if not int8:
        return [numpy_helper.from_array(w, name)], [], name
    ch = shape[axis]
    qw = rng.integers(-127, 128, size=shape).astype(np.int8)
    inits = [numpy_helper.from_array(qw, f"{name}_q"),
             numpy_helper.from_array(np.full(ch, 0.01, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(ch, np.int8), f"{name}_z")]
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=axis)
    return inits, [node], name


def _bias(n, int8: bool, rng, name="b", x_scale=_X_SCALE):
    if not int8:
        return [numpy_helper.from_array(np.zeros(n, np.float32), name)], []
    inits = [numpy_helper.from_array(rng.integers(-100, 100, size=n).astype(np.int32), f"{name}_q"),
             numpy_helper.from_array(np.full(n, x_scale * 0.01, np.float32), f"{name}_s"),
             numpy_helper.from_array(np.zeros(n, np.int32), f"{name}_z")]
    return inits, [helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=0)]


def _out_hw(h, k, s, pad):
    return (h + 2 * pad - k) // s + 1


def conv_graph(n, cin, cout, h, k, s, dw, int8, seed=0, act: str | None = "Relu", groups: int = 1,
               pool_after: bool = False) -> bytes:
    """Conv (+ an activation ORT fuses into it: Relu by default, as in most networks); depthwise, grouped or full.
    ``pool_after`` (int8, no activation): Q/DQ and a global average pool after the conv, which ORT then runs
    channels-last as it runs an int8 network's conv (NHWC)."""
    rng = np.random.default_rng(seed)
    g = cin if dw else groups
    cout = cin if dw else cout
    pad = k // 2
    ho = _out_hw(h, k, s, pad)
    winits, wnodes, wn = _weights((cout, cin // g, k, k), int8, rng)
    binits, bnodes = _bias(cout, int8, rng)

    def body(ins, out):
        conv_out = out if act is None and not pool_after else out + "_pre"
        nodes = wnodes + bnodes + [helper.make_node("Conv", [ins[0], wn, "b"], [conv_out], kernel_shape=[k, k],
                                                    strides=[s, s], pads=[pad] * 4, group=g)]
        if pool_after:
            return nodes + [helper.make_node("QuantizeLinear", [conv_out, "ys", "yz"], ["cq"]),
                            helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["cd"]),
                            helper.make_node("GlobalAveragePool", ["cd"], [out])]
        return nodes + ([] if act is None else [helper.make_node(act, [conv_out], [out])])
    return _qdq_wrap(body, [(n, cin, h, h)], (n, cout, 1, 1) if pool_after else (n, cout, ho, ho), winits + binits, int8)


def gemm_graph(m, fin, fout, int8, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    winits, wnodes, wn = _weights((fout, fin), int8, rng)
    binits, bnodes = _bias(fout, int8, rng)

    def body(ins, out):
        return wnodes + bnodes + [helper.make_node("Gemm", [ins[0], wn, "b"], [out], transB=1)]
    return _qdq_wrap(body, [(m, fin)], (m, fout), winits + binits, int8)


def pool_graph(kind, n, c, h, int8, k=3, s=2) -> bytes:
    if kind == "gap":
        return _qdq_wrap(lambda i, o: [helper.make_node("GlobalAveragePool", i, [o])], [(n, c, h, h)], (n, c, 1, 1), [], int8)
    pad = k // 2 if k % 2 else 0
    ho = _out_hw(h, k, s, pad)
    return _qdq_wrap(lambda i, o: [helper.make_node("MaxPool", i, [o], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)],
                     [(n, c, h, h)], (n, c, ho, ho), [], int8)


def reduce_graph(n, c, h, int8, nhwc: bool = False) -> bytes:
    """x.mean((2, 3), keepdim=True) as torch exports it (ReduceMean; opset 17: the axes an attribute). ``nhwc``: the
    same mean over axes 1 and 2 of an (n, h, w, c) tensor, as ORT runs it inside an int8 network it has turned NHWC
    (a strided reduction: 9x the time of the contiguous one in a hand-written net's int8 squeeze-excite)."""
    shape, axes = ((n, h, h, c), [1, 2]) if nhwc else ((n, c, h, h), [2, 3])
    out = (n, 1, 1, c) if nhwc else (n, c, 1, 1)
    return _qdq_wrap(lambda i, o: [helper.make_node("ReduceMean", i, [o], axes=axes, keepdims=1)], [shape], out, [], int8)


def bcast_graph(op, shape, int8, nhwc: bool = False) -> bytes:
    """x * s with s of shape (n, c, 1, 1): the squeeze-excite scaling; ``nhwc``: x (n, h, w, c) and s (n, 1, 1, c),
    the same scaling in an int8 network ORT has turned NHWC."""
    onnx_op = {"add": "Add", "mul": "Mul"}[op]
    n, c = shape[0], shape[1]
    if nhwc:
        shape, small = (n, shape[2], shape[3], c), (n, 1, 1, c)
    else:
        small = (n, c, 1, 1)
    return _qdq_wrap(lambda i, o: [helper.make_node(onnx_op, i, [o])], [shape, small], shape, [], int8, n_in=2)


def silu_graph(shape, int8) -> bytes:
    """x * sigmoid(x) (SiLU / Swish), as exporters and the quantizer write it; ORT fuses the fp32 form into
    QuickGelu unless the product is a graph output, so a Relu follows it (its own kernel, its own entry)."""
    def body(i, o):
        if int8:  # Q/DQ between Sigmoid and Mul: QLinearSigmoid + QLinearMul
            return [helper.make_node("Sigmoid", [i[0]], ["sg"]), helper.make_node("QuantizeLinear", ["sg", "ys", "yz"], ["sgq"]),
                    helper.make_node("DequantizeLinear", ["sgq", "ys", "yz"], ["sgd"]), helper.make_node("Mul", [i[0], "sgd"], [o])]
        return [helper.make_node("Sigmoid", [i[0]], ["sg"]), helper.make_node("Mul", [i[0], "sg"], ["m"]),
                helper.make_node("Relu", ["m"], [o])]
    return _qdq_wrap(body, [shape], shape, [], int8)


def layout_graph(op, shape) -> bytes:
    """The data-movement ops of a channel shuffle / split (fp32): split, slice, transpose, and the shape
    computation an exporter writes for a dynamic reshape (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""
    n, c, h, w = shape
    c2 = max(2, c - c % 2)
    x = _vi("x0", TensorProto.FLOAT, (n, c2, h, w))
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    if op == "split":  # the channel split of a shuffle block: two outputs
        return _model([helper.make_node("Split", ["x0", "sp"], ["y", "y1"], axis=1)], [x],
                      [_vi("y", TensorProto.FLOAT, (n, c2 // 2, h, w)), _vi("y1", TensorProto.FLOAT, (n, c2 // 2, h, w))],
                      [i64("sp", [c2 // 2, c2 // 2])])
    if op == "slice":
        return _model([helper.make_node("Slice", ["x0", "st", "en", "ax"], ["y"])], [x],
                      [_vi("y", TensorProto.FLOAT, (n, c2 // 2, h, w))], [i64("st", [0]), i64("en", [c2 // 2]), i64("ax", [1])])
    if op == "transpose":
        nodes = [helper.make_node("Reshape", ["x0", "s1"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
                 helper.make_node("Reshape", ["t", "s2"], ["y"])]
        return _model(nodes, [x], [_vi("y", TensorProto.FLOAT, (n, c2, h, w))],
                      [i64("s1", [n, 2, c2 // 2, h, w]), i64("s2", [n, c2, h, w])])
    # shape: the exporter's dynamic reshape
    nodes = [helper.make_node("Shape", ["x0"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "ax0"], ["u"]), helper.make_node("Concat", ["u", "rest"], ["ns"], axis=0),
             helper.make_node("Reshape", ["x0", "ns"], ["y"])]
    return _model(nodes, [x], [_vi("y", TensorProto.FLOAT, (n, c2 * h * w))],
                  [i64("i0", 0), i64("ax0", [0]), i64("rest", [-1])])


def shuffle_graph(shape, int8) -> bytes:
    """A channel shuffle and split as torch's exporter writes them for a model with a dynamic batch axis
    (``x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w).chunk(2, 1)``): the sizes read with
    Shape -> Gather at run time (Div, Cast, Unsqueeze, Concat on int64 scalars), so ORT cannot fold them. int8: Q/DQ
    around every op, as the quantizer writes them; ORT drops the pairs around Transpose and the second Reshape but
    keeps the DequantizeLinear whose output the Shape nodes also read, a float Reshape and a QuantizeLinear after it."""
    n, c, h, w = shape
    c = max(2, c - c % 2)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [i64("i0", 0), i64("i1", 1), i64("i2", 2), i64("i3", 3), i64("two", 2), i64("ax0", [0]), i64("grp", [2]),
             i64("one1", [1]), i64("two1", [2]), i64("zero1", [0])]
    nodes: list = []

    def qdq(t):  # fp32: t; int8: Q -> DQ on t (the quantizer's pair between two ops)
        if not int8:
            return t
        nodes.extend([helper.make_node("QuantizeLinear", [t, "ys", "yz"], [t + "_q"]),
                      helper.make_node("DequantizeLinear", [t + "_q", "ys", "yz"], [t + "_dq"])])
        return t + "_dq"

    def size(x, i, tag):  # Shape -> Gather: one of x.size()
        nodes.extend([helper.make_node("Shape", [x], [f"sh{tag}"]),
                      helper.make_node("Gather", [f"sh{tag}", f"i{i}"], [f"g{tag}"], axis=0)])
        return f"g{tag}"

    def unsq(t, tag):
        nodes.append(helper.make_node("Unsqueeze", [t, "ax0"], [f"u{tag}"]))
        return f"u{tag}"

    x = "x0"
    if int8:
        nodes.append(helper.make_node("DequantizeLinear", ["x0", "ys", "yz"], ["xf"]))
        x = "xf"
    b, ch, hh, ww = (size(x, i, str(i)) for i in range(4))
    nodes.extend([helper.make_node("Div", [ch, "two"], ["cg"]), helper.make_node("Cast", ["cg"], ["cg1"], to=TensorProto.INT64),
                  helper.make_node("Cast", ["cg1"], ["cg2"], to=TensorProto.INT64)])
    nodes.append(helper.make_node("Concat", [unsq(b, "b"), "grp", unsq("cg2", "c"), unsq(hh, "h"), unsq(ww, "w")], ["s5"], axis=0))
    nodes.append(helper.make_node("Reshape", [x, "s5"], ["r5"]))
    nodes.append(helper.make_node("Transpose", [qdq("r5")], ["t5"], perm=[0, 2, 1, 3, 4]))
    nodes.append(helper.make_node("Concat", [unsq(b, "b2"), unsq(ch, "c2"), unsq(hh, "h2"), unsq(ww, "w2")], ["s4"], axis=0))
    nodes.append(helper.make_node("Reshape", [qdq("t5"), "s4"], ["r4"]))
    r4 = qdq("r4")
    # chunk(2, 1): the split point computed from the size at run time
    nodes.extend([helper.make_node("Shape", [r4], ["shk"]), helper.make_node("Gather", ["shk", "one1"], ["gk"], axis=0),
                  helper.make_node("Add", ["gk", "one1"], ["ak"]), helper.make_node("Div", ["ak", "two1"], ["dk"]),
                  helper.make_node("Mul", ["dk", "one1"], ["mk"]), helper.make_node("Mul", ["dk", "two1"], ["mk2"]),
                  helper.make_node("Slice", [r4, "zero1", "mk", "one1"], ["y0f" if int8 else "y0"]),
                  helper.make_node("Slice", [r4, "mk", "mk2", "one1"], ["y1f" if int8 else "y1"])])
    dt = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    if int8:
        inits += [numpy_helper.from_array(np.array(_Y_SCALE, np.float32), "ys"),
                  numpy_helper.from_array(np.array(_Y_ZP, np.uint8), "yz")]
        nodes.extend([helper.make_node("QuantizeLinear", ["y0f", "ys", "yz"], ["y0"]),
                      helper.make_node("QuantizeLinear", ["y1f", "ys", "yz"], ["y1"])])
    return _model(nodes, [_vi("x0", dt, ("N", c, h, w))],
                  [_vi("y0", dt, ("N", c // 2, h, w)), _vi("y1", dt, ("N", c // 2, h, w))], inits)


def concat_graph(shape, int8) -> bytes:
    """Two inputs concatenated on channels; int8: DQ -> Concat -> Q, which ORT runs as one QLinearConcat."""
    n, c, h, w = shape
    return _qdq_wrap(lambda i, o: [helper.make_node("Concat", i, [o], axis=1)], [shape, shape], (n, 2 * c, h, w), [],
                     int8, n_in=2)


def eltwise_graph(op, shape, int8) -> bytes:
    onnx_op = {"relu": "Relu", "sigmoid": "Sigmoid", "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish",
               "add": "Add", "mul": "Mul"}[op]
    n_in = 2 if op in ("add", "mul") else 1
    return _qdq_wrap(lambda i, o: [helper.make_node(onnx_op, i, [o])], [shape] * n_in, shape, [], int8, n_in=n_in)


def quant_graph(kind, shape) -> bytes:
    """quantize: float -> u8 (a QuantizeLinear that runs); dequantize: u8 -> float."""
    inits = [numpy_helper.from_array(np.array(_X_SCALE, np.float32), "s"), numpy_helper.from_array(np.array(_X_ZP, np.uint8), "z")]
    if kind == "quantize":
        return _model([helper.make_node("QuantizeLinear", ["x0", "s", "z"], ["y"])], [_vi("x0", TensorProto.FLOAT, shape)],
                      [_vi("y", TensorProto.UINT8, shape)], inits)
    return _model([helper.make_node("DequantizeLinear", ["x0", "s", "z"], ["y"])], [_vi("x0", TensorProto.UINT8, shape)],
                  [_vi("y", TensorProto.FLOAT, shape)], inits)


def identity_graph(shape=(1, 3, 32, 32)) -> bytes:
    return _model([helper.make_node("Identity", ["x0"], ["y"])], [_vi("x0", TensorProto.FLOAT, shape)],
                  [_vi("y", TensorProto.FLOAT, shape)], [])


def chain_graph(n_nodes: int = 32, numel: int = 16) -> bytes:
    """``n_nodes`` Sigmoids on a tiny tensor: the per-node cost of the executor (and of the profiler)."""
    nodes = [helper.make_node("Sigmoid", [f"t{i}" if i else "x0"], [f"t{i + 1}" if i + 1 < n_nodes else "y"])
             for i in range(n_nodes)]
    return _model(nodes, [_vi("x0", TensorProto.FLOAT, (1, numel))], [_vi("y", TensorProto.FLOAT, (1, numel))], [])


def residual_graph(n, c, h, int8, seed=0) -> bytes:
    """conv3x3 -> relu -> conv3x3 -> add(input) -> relu: the residual block whose Add ORT may fuse into the conv
    (int8: DQ -> conv -> Q -> DQ -> conv -> Q -> DQ -> add -> Q, as the quantizer writes it)."""
    rng = np.random.default_rng(seed)
    w1, n1, wn1 = _weights((c, c, 3, 3), int8, rng, "w1")
    w2, n2, wn2 = _weights((c, c, 3, 3), int8, rng, "w2")
    b1, bn1 = _bias(c, int8, rng, "b1")
    b2, bn2 = _bias(c, int8, rng, "b2", x_scale=_Y_SCALE)  # int32 bias at input scale x weight scale

    def q(t, out):  # a Q->DQ pair between int8 ops, as the quantizer writes it
        if not int8:
            return [helper.make_node("Identity", [t], [out])]
        return [helper.make_node("QuantizeLinear", [t, "ys", "yz"], [out + "_q"]),
                helper.make_node("DequantizeLinear", [out + "_q", "ys", "yz"], [out])]

    def body(ins, out):
        x = ins[0]
        nodes = n1 + n2 + bn1 + bn2 + [
            helper.make_node("Conv", [x, wn1, "b1"], ["c1" if not int8 else "r1"], kernel_shape=[3, 3], pads=[1] * 4)] + (
            [] if int8 else [helper.make_node("Relu", ["c1"], ["r1"])]) + q("r1", "r1d") + [
            helper.make_node("Conv", ["r1d", wn2, "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4)] + q("c2", "c2d") + [
            helper.make_node("Add", ["c2d", x], ["s" if not int8 else "s0"])] + (
            [helper.make_node("Relu", ["s"], [out])] if not int8 else [helper.make_node("Identity", ["s0"], [out])])
        return nodes
    return _qdq_wrap(body, [(n, c, h, h)], (n, c, h, h), w1 + w2 + b1 + b2, int8)


def replicate(model: bytes, copies: int) -> bytes:
    """The graph ``copies`` times side by side on the same inputs, each copy with its own weights (perturbed,
    so no two are shared): what a kernel costs when its weights are not the last thing in the cache, as inside a
    network, and with the per-inference overhead spread over several kernels."""
    import onnx

    m = onnx.load_from_string(model)
    g = m.graph
    inputs = {i.name for i in g.input}
    nodes, inits, outs = list(g.node), list(g.initializer), list(g.output)
    for c in range(1, copies):
        ren = (lambda t, c=c: t if (not t or t in inputs) else f"{t}_c{c}")
        for nd in nodes:
            new = onnx.NodeProto()
            new.CopyFrom(nd)
            new.name = ren(nd.name) if nd.name else ""
            new.input[:] = [ren(t) for t in nd.input]
            new.output[:] = [ren(t) for t in nd.output]
            g.node.append(new)
        for t in inits:
            a = numpy_helper.to_array(t).copy()
            if a.size <= 1 or not a.any():  # scalars and zero points: kept (QLinear fusion needs zero weight zp)
                pass
            elif a.dtype.kind == "f":
                a = a * np.float32(1 + 1e-3 * c)
            elif a.dtype == np.int8:
                a.flat[c % a.size] = np.int8(c % 100)
            elif a.dtype == np.int32:
                a.flat[c % a.size] += c
            g.initializer.append(numpy_helper.from_array(a.astype(numpy_helper.to_array(t).dtype), ren(t.name)))
        for o in outs:
            new = onnx.ValueInfoProto()
            new.CopyFrom(o)
            new.name = ren(o.name)
            g.output.append(new)
    return m.SerializeToString()
