"""What was done to each layer, read from the deployable artifact: output channels kept (vs the fp32
baseline's ONNX) and the precision the layer runs in. Used by model cards and the report's pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1,
                "QLinearConv": 3, "ConvInteger": 1, "QLinearMatMul": 3, "MatMulInteger": 1}
INT8_OPS = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}


def _weights(path: Path) -> list[dict[str, Any]]:
    """One row per weighted node in graph order: module, op, output channels, precision."""
    import onnx

    from .compress.quantize import module_to_nodes

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    module_of = {node: mod for mod, nodes in module_to_nodes(m).items() for node in nodes}
    rows = []
    for node in m.graph.node:
        idx = WEIGHTED_OPS.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name, precision = node.input[idx], "int8" if node.op_type in INT8_OPS else None
        for _ in range(3):  # follow DequantizeLinear / Cast / Transpose back to the stored weight
            if name in inits:
                break
            src = producer.get(name)
            if src is None or src.op_type not in ("DequantizeLinear", "Cast", "Transpose", "Identity"):
                break
            if src.op_type == "DequantizeLinear":
                precision = "int8"
            name = src.input[0]
        w = inits.get(name)
        if w is None or len(w.dims) < 2:
            continue
        if precision is None:
            precision = "fp16" if w.data_type == onnx.TensorProto.FLOAT16 else "fp32"
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        out_ch = w.dims[1] if node.op_type in ("MatMul", "QLinearMatMul", "MatMulInteger") or (
            node.op_type == "Gemm" and not trans_b) else w.dims[0]
        if node.op_type == "ConvTranspose":
            out_ch = w.dims[1]
        rows.append({"module": module_of.get(node.name) or node.name, "op": node.op_type,
                     "out_channels": int(out_ch), "precision": precision})
    return rows


def layer_table(model_path: str | Path, baseline_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Per weighted layer of ``model_path``: ``module, op, out_channels, baseline_channels, kept, precision``
    (``kept`` = fraction of the baseline's output channels, None where the baseline has no such layer)."""
    rows = _weights(Path(model_path))
    base = {}
    if baseline_path is not None and Path(baseline_path).is_file():
        for r in _weights(Path(baseline_path)):
            base.setdefault(r["module"], r["out_channels"])
    for r in rows:
        b = base.get(r["module"])
        r["baseline_channels"] = b
        r["kept"] = round(r["out_channels"] / b, 4) if b else None
    return rows
