"""The kernels ONNX Runtime runs for a model on a target: the nodes of its *optimised* graph (fused Conv+activation,
NCHWc convolutions and their reorders, QLinearConv, QLinearAdd...), each with the table group it is looked up in,
its features and its work.

Both sides use this module: the target keys its table entries on the kernels of each small graph it times, and
the search side lists a candidate's kernels the same way, so a Q/DQ pair ORT fuses away is never counted and a
fusion ORT makes is costed as the fused kernel. Shapes come from ONNX Runtime's own profiler trace (one run).
numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .target import Target, feeds_for, profile_nodes

# conv-like kernels sharing an implementation are keyed together; the key keeps the layout/implementation
_CONV = {("", "Conv"): "Conv", ("com.microsoft", "FusedConv"): "Conv", ("com.microsoft.nchwc", "Conv"): "NchwcConv",
         ("", "QLinearConv"): "QLinearConv", ("com.microsoft", "QLinearConv"): "QLinearConv",
         ("com.microsoft", "NhwcConv"): "NhwcConv", ("com.microsoft", "NhwcFusedConv"): "NhwcConv",
         ("", "ConvInteger"): "ConvInteger"}
_GEMM = {"Gemm", "MatMul", "QGemm", "QLinearMatMul", "MatMulInteger", "FusedGemm", "FusedMatMul", "MatMulIntegerToFloat",
         "DynamicQuantizeMatMul"}
_POOL = {"GlobalAveragePool", "QLinearGlobalAveragePool", "MaxPool", "AveragePool", "QLinearAveragePool",
         "GlobalMaxPool"}
ALIGN = ("a16", "a8", "a4", "u")


def alignment(cin: int, cout: int, dw: bool) -> str:
    """Channel alignment class of a conv: a16 (multiples of 16), a8 (of 8), a4 (of 4) or u, the worst of its channel
    counts (a full conv's input counts only from 8 channels up: a 3-channel image stem is not penalised). Multiples
    of 4 are their own class because an int8 conv on a CPU with VNNI (which sums four u8 x s8 products at a time)
    takes its fast path only for them: a 1x1 QLinearConv 12 -> 36 on 64x64 pixels ran 31 us, 13 / 14 / 15 -> 36 87 us
    (Xeon with AVX512-VNNI, benchmarks/README.md, twenty-ninth session)."""
    counts = [cout] if dw else [cout] + ([cin] if cin >= 8 else [])
    worst = max(0 if c % 16 == 0 else 1 if c % 8 == 0 else 2 if c % 4 == 0 else 3 for c in counts)
    return ALIGN[worst]


def _dtype(t: dict | None) -> str:
    if not t:
        return "fp32"
    k = next(iter(t))
    return {"float": "fp32", "uint8": "int8", "int8": "int8", "float16": "fp16"}.get(k, k)


def _shape(t: dict | None) -> list[int]:
    return [int(d) for d in next(iter(t.values()))] if t else []


_ITEM_BYTES = {"float": 4, "float16": 2, "uint8": 1, "int8": 1, "int32": 4, "int64": 8, "bool": 1}


def output_bytes(outs: list) -> int:
    """Bytes a kernel writes: its outputs in the trace's [{dtype: shape}] form."""
    return sum(_ITEM_BYTES.get(dt, 4) * math.prod(int(d) for d in shape) for t in outs for dt, shape in t.items())


def fused_act(attrs: dict) -> str:
    """'-clip' etc. for a float conv ORT fused an activation other than Relu into ('' for none or Relu): MLAS applies
    it as a second pass over the output, which Relu's kernel does not need. A 1x1 conv 32 -> 64 on 64x64 pixels
    ran 98 us with Relu and 128 us with Clip (ReLU6: mobilenet_v2), a depthwise 3x3 75 and 96 us (Xeon with AVX512,
    benchmarks/README.md, twenty-ninth session)."""
    act = attrs.get("activation")
    if isinstance(act, bytes):
        act = act.decode()
    return "" if not act or act == "Relu" else f"-{str(act).lower()}"


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape else 1


def features(domain: str, op: str, attrs: dict, ins: list, outs: list) -> dict:
    """group, log-features and work of one kernel; ``ins``/``outs`` are the trace's [{dtype: shape}] lists."""
    first = 2 if op == "QLinearConcat" else 0  # QLinearConcat's inputs open with the output's scale and zero point
    dt = _dtype(ins[first] if len(ins) > first else None)
    ish = _shape(ins[0]) if ins else []
    osh = _shape(outs[0]) if outs else []
    conv = _CONV.get((domain, op))
    if conv is not None and len(osh) == 4 and ish:
        last = bool(attrs.get("channels_last", 0))
        widx = 3 if conv == "QLinearConv" else 1
        wsh = _shape(ins[widx]) if len(ins) > widx else []
        k = int((attrs.get("kernel_shape") or wsh[2:3] or [1])[0])
        s = int((attrs.get("strides") or [1])[0])
        g = int(attrs.get("group", 1))
        n, cin, h = (ish[0], ish[3], ish[1]) if last else (ish[0], ish[1], ish[2] if len(ish) > 2 else 1)
        cout, ho, wo = (osh[3], osh[1], osh[2]) if last else (osh[1], osh[2], osh[3])
        # depthwise: one input and one output channel per group; a grouped conv (a depthwise one with a channel
        # multiplier too) keyed on its groups and its output channels as well: one that widens (12 -> 24 channels
        # per group) costs twice one that keeps its width, which a key without the output count could not tell
        dw = g > 1 and g == cin and cout == cin
        cin_g = cin // g if g > 1 else cin
        work = n * cout * ho * wo * cin_g * k * k
        kind = "dw" if dw else "grp" if g > 1 else "full"
        feats = [math.log(max(cin, 1)), math.log(max(n * h * h, 1))] + {
            "dw": [], "full": [math.log(max(cout, 1))], "grp": [math.log(g), math.log(max(cout, 1))]}[kind]
        group = f"{conv}{fused_act(attrs)}/{dt}/k{k}/s{min(s, 2)}/{kind}/{alignment(cin_g if kind == 'grp' else cin, cout, dw)}"
        return {"group": group, "feats": feats, "work": float(max(work, 1))}
    if op in _GEMM:
        fin = ish[-1] if ish else 1
        fout = osh[-1] if osh else 1
        m = _numel(ish[:-1])
        return {"group": f"Gemm/{dt}", "feats": [math.log(max(fin, 1)), math.log(max(fout, 1)), math.log(max(m, 1))],
                "work": float(max(m * fin * fout, 1))}
    if op in _POOL and len(ish) == 4:
        last = bool(attrs.get("channels_last", 0))
        c, hw = (ish[3], ish[0] * ish[1] * ish[2]) if last else (ish[1], ish[0] * ish[2] * ish[3])
        kind = ("Nchwc" if domain.endswith("nchwc") else "") + ("GlobalAveragePool" if "Global" in op else op.replace("QLinear", ""))
        extra = ""
        if "Global" not in op:
            extra = f"/k{min(int((attrs.get('kernel_shape') or [3])[0]), 3)}/s{min(int((attrs.get('strides') or [1])[0]), 2)}"
        return {"group": f"{kind}{'-nhwc' if last else ''}/{dt}{extra}", "feats": [math.log(max(c, 1)), math.log(max(hw, 1))],
                "work": float(max(c * hw, 1))}
    if op.startswith("Reduce") and ish:
        return _reduce(op, dt, ish, osh, attrs.get("axes"))
    if op == "Transpose" and ish:
        return _transpose(dt, ish, attrs.get("perm"))
    if domain == "com.microsoft.nchwc" and op in ("ReorderInput", "ReorderOutput") and ish and osh:
        return _reorder(op, dt, ish if op == "ReorderInput" else osh, max(_numel(ish), _numel(osh)), attrs)
    numel = max(_numel(osh), _numel(ish))
    tag = f"{domain}:{op}" if domain else op
    acts = [_shape(t) for t in ins if t and len(_shape(t)) >= 2]
    feats = [math.log(max(numel, 1))]
    if len(acts) >= 2 and _numel(acts[0]) != _numel(acts[1]):  # a broadcast (squeeze-excite Mul): its own kernel
        # and the elements per broadcast value (h*w of an (n,c,h,w) x (n,c,1,1) product): with a few pixels per
        # channel ORT's broadcast loop runs short rows, 3x the time per element of the same product on a wide image.
        # "-bcast-vec": the small operand varies along the innermost axis ((n,h,w,c) x (n,1,1,c): squeeze-excite in
        # an int8 network ORT has turned NHWC), one long row per pixel: 7 us where the NCHW form ran 34
        big, small = sorted(acts[:2], key=_numel, reverse=True)
        tag += "-bcast-vec" if small[-1] > 1 and small[-1] == big[-1] else "-bcast"
        feats.append(math.log(max(_numel(big) / max(_numel(small), 1), 1)))
    return {"group": f"{tag}/{dt}", "feats": feats, "work": float(max(numel, 1))}


def weighted_kind(group: str) -> str | None:
    """What a table group written by :func:`features` says of its kernel's weights: 'full', 'grp' or 'dw' for a conv
    (impl/dtype/k/s/kind/alignment), 'gemm' for a Gemm, None for a kernel without weights."""
    parts = group.split("/")
    if len(parts) >= 6 and parts[2].startswith("k") and parts[4] in ("full", "grp", "dw"):
        return parts[4]
    return "gemm" if parts[0] == "Gemm" else None


def _transpose(dt: str, ish: list[int], perm) -> dict:
    """A Transpose that moves whole runs of contiguous elements (the trailing axes it leaves in place: h*w of a channel
    shuffle's (n, 2, c/2, h, w) -> (n, c/2, 2, h, w)) costs per run as well as per element: 16384 elements in runs of
    4 (2x2 pixels) took 40 us, in runs of 64 5 us, and element by element (one pixel) 6 us (Xeon with AVX512,
    benchmarks/README.md, thirtieth session). Keyed apart from the element-wise form (runs of one: a layout change,
    a shuffle of 1x1 maps), with log elements and log runs."""
    perm = list(perm) if perm else list(range(len(ish)))[::-1]
    run = 1
    for i in range(len(ish) - 1, -1, -1):
        if perm[i] != i:
            break
        run *= ish[i]
    numel = _numel(ish)
    if run <= 1:
        return {"group": f"Transpose/{dt}", "feats": [math.log(max(numel, 1))], "work": float(max(numel, 1))}
    return {"group": f"Transpose-runs/{dt}", "feats": [math.log(max(numel, 1)), math.log(max(numel // run, 1))],
            "work": float(max(numel, 1))}


def _reorder(op: str, dt: str, plain: list[int], numel: int, attrs: dict) -> dict:
    """A reorder between a network's own layout and ORT's channel-blocked NCHWc one, keyed on its elements and on the
    alignment class of its channel count (``plain``: the unblocked side's shape): a ReorderOutput to 29-31 channels
    ran 20 us on 32x32 pixels where one to 32 ran 7 (Xeon with AVX512: blocks of 16, benchmarks/README.md, thirtieth
    and thirty-second sessions), which elements alone cannot tell."""
    c = int(attrs.get("channels") or (plain[3] if attrs.get("channels_last") and len(plain) == 4 else
                                      plain[1] if len(plain) > 1 else 1))
    return {"group": f"com.microsoft.nchwc:{op}/{dt}/{alignment(c, c, True)}", "feats": [math.log(max(numel, 1))],
            "work": float(max(numel, 1))}


def _reduce(op: str, dt: str, ish: list[int], osh: list[int], axes=None) -> dict:
    """A reduction (``x.mean((2, 3))``, timm's squeeze-excite and pooled head): keyed on whether it reduces the
    innermost axes (contiguous rows) or strided ones (the same mean in an int8 network ORT has turned NHWC), with log
    values out and log elements reduced into each. As an element-wise op (log elements alone) it had no entry to fall
    back on but the per-node cost: 0.3 us for 4-14. The axes are read from the optimised node where it has them (an
    NHWC mean of a 32-channel 32x32 tensor has the shapes of an NCHW one), else from the shapes."""
    n_in, n_out = _numel(ish), max(_numel(osh), 1)
    if axes:
        ax = sorted(int(a) % len(ish) for a in axes)
        inner = ax == list(range(len(ish) - len(ax), len(ish)))
    else:
        kept = [d for d in osh if d != 1]  # (keepdims or not)
        inner = [d for d in ish if d != 1][: len(kept)] == kept  # what stays leads the shape: the reduced axes last
    return {"group": f"{op}/{dt}/{'inner' if inner else 'strided'}",
            "feats": [math.log(n_out), math.log(max(n_in / n_out, 1))], "work": float(max(n_in, 1))}


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# the domain of kernels ORT inserts without a name (the trace names them <op>_<index>)
_DOMAIN_OF = {"ReorderInput": "com.microsoft.nchwc", "ReorderOutput": "com.microsoft.nchwc", "FusedConv": "com.microsoft",
              "QLinearAdd": "com.microsoft", "QLinearMul": "com.microsoft", "QGemm": "com.microsoft",
              "QLinearGlobalAveragePool": "com.microsoft", "QLinearSigmoid": "com.microsoft", "NhwcConv": "com.microsoft",
              "NhwcMaxPool": "com.microsoft", "QLinearConcat": "com.microsoft", "QLinearLeakyRelu": "com.microsoft"}


def _named(model: bytes | str) -> bytes:
    """The model with every node named (ORT keeps the names through fusion, so trace and graph can be joined)."""
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    used = {nd.name for nd in m.graph.node if nd.name}
    for i, nd in enumerate(m.graph.node):
        if not nd.name:
            name = f"ac{i}_{nd.op_type}"
            while name in used:
                name += "_"
            nd.name = name
            used.add(name)
    return m.SerializeToString()


def list_kernels(model: bytes | str, target: Target, *, runs: int = 1, seed: int = 0, shapes: dict | None = None) -> list[dict]:
    """The kernels ONNX Runtime runs for ``model`` under ``target``'s session settings, in execution order:
    [{name, domain, op, group, feats, work, us, out_bytes}] (``us``: the profiler's median duration over ``runs``;
    ``out_bytes``: what the kernel writes, :func:`output_bytes`). ``shapes``:
    {input name: shape} fed to a model whose inputs have symbolic dimensions (left symbolic: a dynamic batch axis
    keeps the shape computations an exporter writes, which ORT folds away when the shape is fixed)."""
    named = _named(model)
    recs, opt = profile_nodes(lambda **kw: target.session(named, **kw), lambda s: feeds_for(s, seed, shapes), runs)
    try:
        graph_nodes = {nd.name: nd for nd in onnx.load(opt).graph.node if nd.name} if Path(opt).is_file() else {}
    finally:
        shutil.rmtree(Path(opt).parent, ignore_errors=True)
    out = []
    for r in recs:
        nd = graph_nodes.get(r["name"])
        domain = (nd.domain if nd is not None else _DOMAIN_OF.get(r["op"], "")) or ""
        domain = "" if domain == "ai.onnx" else domain
        op = nd.op_type if nd is not None else r["op"]
        attrs = _attrs(nd) if nd is not None else {}
        f = features(domain, op, attrs, r["args"].get("input_type_shape") or [], r["args"].get("output_type_shape") or [])
        out.append({"name": r["name"], "domain": domain, "op": op, **f, "us": float(np.median(r["durs_us"])),
                    "out_bytes": output_bytes(r["args"].get("output_type_shape") or [])})
    return out


def kernel_signature(kernels: list[dict]) -> list[str]:
    """The kernel types of a graph, in order (how a fusion rule is recorded and compared)."""
    return [f"{k['domain'] + ':' if k['domain'] else ''}{k['op']}" for k in kernels]
