"""Generated networks: the held-out ones that check a table on its device (``profile-device --check``: residual and
inverted-residual CNNs) and the context networks the table fits its in-network cost on (those families plus
squeeze-excite + SiLU and channel-shuffle ones, ``table.context_nets``), of varied widths (aligned and not), input
sizes and depths, in fp32 or int8 QDQ U8S8 as ONNX Runtime's quantizer writes it (Relu/Clip folded into the output
QuantizeLinear). Built with ``onnx.helper``, random weights: latency does not depend on them. numpy + onnx only."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .graphs import OPSET

_S, _ZP = 0.05, 128


class _Net:
    def __init__(self, int8: bool, seed: int):
        self.int8, self.rng = int8, np.random.default_rng(seed)
        self.nodes, self.inits, self.i = [], [], 0
        if int8:
            self.inits += [numpy_helper.from_array(np.array(_S, np.float32), "s"),
                           numpy_helper.from_array(np.array(_ZP, np.uint8), "z")]

    def name(self, p):
        self.i += 1
        return f"{p}{self.i}"

    def qdq(self, x):  # an activation as the quantizer leaves it: Q -> DQ
        if not self.int8:
            return x
        q, d = self.name("q"), self.name("dq")
        self.nodes += [helper.make_node("QuantizeLinear", [x, "s", "z"], [q]), helper.make_node("DequantizeLinear", [q, "s", "z"], [d])]
        return d

    def const(self, arr, axis=0, bias=False):
        n = self.name("w")
        if not self.int8:
            self.inits.append(numpy_helper.from_array(arr.astype(np.float32), n))
            return n
        ch = arr.shape[0]
        if bias:
            q = self.rng.integers(-100, 100, size=arr.shape).astype(np.int32)
            sc, zp = np.full(ch, _S * 0.01, np.float32), np.zeros(ch, np.int32)
        else:
            q = self.rng.integers(-127, 128, size=arr.shape).astype(np.int8)
            sc, zp = np.full(ch, 0.01, np.float32), np.zeros(ch, np.int8)
        self.inits += [numpy_helper.from_array(q, n + "_q"), numpy_helper.from_array(sc, n + "_s"),
                       numpy_helper.from_array(zp, n + "_z")]
        self.nodes.append(helper.make_node("DequantizeLinear", [n + "_q", n + "_s", n + "_z"], [n], axis=axis))
        return n

    def conv(self, x, cin, cout, k=3, s=1, dw=False, act="Relu"):
        g = cin if dw else 1
        w = self.const(self.rng.standard_normal((cout, cin // g, k, k)) * 0.1)
        b = self.const(np.zeros(cout), bias=True)
        y = self.name("c")
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=g))
        if act and not self.int8:
            a = self.name("a")
            extra = [self.const(np.array(0.0)), self.const(np.array(6.0))] if act == "Clip" else []
            self.nodes.append(helper.make_node(act, [y] + extra, [a]))
            y = a
        return self.qdq(y)

    def add(self, a, b, relu=True):
        y = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        if relu and not self.int8:
            r = self.name("r")
            self.nodes.append(helper.make_node("Relu", [y], [r]))
            y = r
        return self.qdq(y)

    def head(self, x, c, classes=10):
        p, f = self.name("gap"), self.name("flat")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [p]))
        p = self.qdq(p)
        self.nodes.append(helper.make_node("Flatten", [p], [f]))
        f = self.qdq(f)
        w = self.const(self.rng.standard_normal((classes, c)) * 0.1)
        b = self.const(np.zeros(classes), bias=True)
        self.nodes.append(helper.make_node("Gemm", [f, w, b], ["logits_f" if self.int8 else "logits"], transB=1))
        if self.int8:
            self.nodes += [helper.make_node("QuantizeLinear", ["logits_f", "s", "z"], ["logits_q"]),
                           helper.make_node("DequantizeLinear", ["logits_q", "s", "z"], ["logits"])]

    def model(self, size: int, batch: int = 1) -> bytes:
        g = helper.make_graph(self.nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        return m.SerializeToString()


def resnet(widths, blocks, size, int8, seed=0, batch=1) -> bytes:
    n = _Net(int8, seed)
    x = n.qdq("input")
    x = n.conv(x, 3, widths[0])
    c = widths[0]
    for i, w in enumerate(widths):
        for j in range(blocks):
            s = 2 if i > 0 and j == 0 else 1
            h = n.conv(x, c, w, 3, s)
            h = n.conv(h, w, w, 3, 1, act=None)
            sc = x if (s == 1 and c == w) else n.conv(x, c, w, 1, s, act=None)
            x, c = n.add(h, sc), w
    n.head(x, c)
    return n.model(size, batch)


def mobilenet(widths, expand, size, int8, seed=0, batch=1) -> bytes:
    n = _Net(int8, seed)
    x = n.qdq("input")
    c = widths[0]
    x = n.conv(x, 3, c, 3, 1, act="Clip")
    for i, w in enumerate(widths[1:]):
        for j in range(2):
            s = 2 if j == 0 and i > 0 else 1
            e = c * expand
            h = n.conv(x, c, e, 1, 1, act="Clip")
            h = n.conv(h, e, e, 3, s, dw=True, act="Clip")
            h = n.conv(h, e, w, 1, 1, act=None)
            x = n.add(h, x, relu=False) if (s == 1 and c == w) else h
            c = w
    last = 4 * c
    x = n.conv(x, c, last, 1, 1, act="Clip")
    n.head(x, last)
    return n.model(size, batch)


def _silu(n: _Net, x):
    """x * sigmoid(x) as exporters write SiLU (int8: a Q/DQ after the Sigmoid, as the quantizer leaves it)."""
    sg, y = n.name("sig"), n.name("silu")
    n.nodes.append(helper.make_node("Sigmoid", [x], [sg]))
    n.nodes.append(helper.make_node("Mul", [x, n.qdq(sg)], [y]))
    return n.qdq(y)


def effnet(widths, expand, size, int8, seed=0, batch=1) -> bytes:
    """Inverted residuals with SiLU and squeeze-excite (GlobalAveragePool -> 1x1 -> SiLU -> 1x1 -> Sigmoid -> a
    broadcast Mul): many small kernels, as in EfficientNet."""
    n = _Net(int8, seed)
    c = widths[0]
    x = _silu(n, n.conv(n.qdq("input"), 3, c, 3, 2, act=None))
    for i, w in enumerate(widths[1:]):
        for j in range(2):
            s = 2 if j == 0 else 1
            e = c * expand
            h = _silu(n, n.conv(x, c, e, 1, 1, act=None))
            h = _silu(n, n.conv(h, e, e, 3, s, dw=True, act=None))
            p = n.name("gap")
            n.nodes.append(helper.make_node("GlobalAveragePool", [h], [p]))
            r = max(4, c // 4)
            g = n.conv(_silu(n, n.conv(n.qdq(p), e, r, 1, 1, act=None)), r, e, 1, 1, act=None)
            sg, m = n.name("sig"), n.name("se")
            n.nodes.append(helper.make_node("Sigmoid", [g], [sg]))
            n.nodes.append(helper.make_node("Mul", [h, n.qdq(sg)], [m]))
            h = n.conv(n.qdq(m), e, w, 1, 1, act=None)
            x = n.add(h, x, relu=False) if (s == 1 and c == w) else h
            c = w
    n.head(x, c)
    return n.model(size, batch)


def _shuffle(n: _Net, x, c: int, hw: int, batch: int):
    """Channel shuffle of two groups, as exporters write it: Reshape -> Transpose -> Reshape."""
    s1, s2 = n.name("shape"), n.name("shape")
    n.inits += [numpy_helper.from_array(np.array([batch, 2, c // 2, hw, hw], np.int64), s1),
                numpy_helper.from_array(np.array([batch, c, hw, hw], np.int64), s2)]
    r, t, y = n.name("r"), n.name("t"), n.name("sh")
    n.nodes += [helper.make_node("Reshape", [x, s1], [r]), helper.make_node("Transpose", [r], [t], perm=[0, 2, 1, 3, 4]),
                helper.make_node("Reshape", [t, s2], [y])]
    return n.qdq(y)


def shufflenet(widths, units, size, int8, seed=0, batch=1) -> bytes:
    """ShuffleNetV2 units: a channel Split, 1x1 -> depthwise 3x3 -> 1x1 on one half, Concat, channel shuffle; the
    first unit of a stage runs both halves at stride 2 (many small data-movement kernels)."""
    n = _Net(int8, seed)
    c = widths[0]
    x = n.conv(n.qdq("input"), 3, c, 3, 2)
    hw = (size + 1) // 2
    for w in widths[1:]:
        half = w // 2
        hw = (hw + 1) // 2
        a = n.conv(n.conv(x, c, c, 3, 2, dw=True, act=None), c, half, 1, 1)
        b = n.conv(n.conv(n.conv(x, c, half, 1, 1), half, half, 3, 2, dw=True, act=None), half, half, 1, 1)
        cat = n.name("cat")
        n.nodes.append(helper.make_node("Concat", [a, b], [cat], axis=1))
        x, c = _shuffle(n, n.qdq(cat), w, hw, batch), w
        for _ in range(units - 1):
            sp, l, r = n.name("sp"), n.name("l"), n.name("rr")
            n.inits.append(numpy_helper.from_array(np.array([half, half], np.int64), sp))
            n.nodes.append(helper.make_node("Split", [x, sp], [l, r], axis=1))
            r = n.conv(n.conv(n.conv(n.qdq(r), half, half, 1, 1), half, half, 3, 1, dw=True, act=None), half, half, 1, 1)
            cat = n.name("cat")
            n.nodes.append(helper.make_node("Concat", [n.qdq(l), r], [cat], axis=1))
            x = _shuffle(n, n.qdq(cat), w, hw, batch)
    n.head(x, c)
    return n.model(size, batch)


def held_out(batch: int = 1, int8: bool = True) -> list[tuple[str, bytes]]:
    """A handful of (name, model): two families, aligned and unaligned widths, 32 and 64 px, fp32 (and int8)."""
    specs = [("resnet w16-32-64 32px", lambda q: resnet([16, 32, 64], 1, 32, q, 1, batch)),
             ("resnet w13-29-61 32px", lambda q: resnet([13, 29, 61], 1, 32, q, 2, batch)),
             ("resnet w24-40-72 64px", lambda q: resnet([24, 40, 72], 1, 64, q, 3, batch)),
             ("mobilenet w16-24-32-64 e4 32px", lambda q: mobilenet([16, 24, 32, 64], 4, 32, q, 4, batch)),
             ("mobilenet w13-21-37-61 e3 32px", lambda q: mobilenet([13, 21, 37, 61], 3, 32, q, 5, batch)),
             ("mobilenet w8-16-24-40 e6 64px", lambda q: mobilenet([8, 16, 24, 40], 6, 64, q, 6, batch))]
    out = []
    for name, fn in specs:
        out.append((f"{name} fp32", fn(False)))
        if int8:
            out.append((f"{name} int8", fn(True)))
    return out
