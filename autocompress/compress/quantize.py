"""Per-layer precision for an exported ONNX model: int8 (ONNX Runtime static or dynamic), fp16, fp32.

Per-layer bits use the same pattern syntax as pruning: an exact module name (a container name covers
the modules inside it), ``"re:<regex>"`` (``re.fullmatch``) or ``"_default"``; later patterns win;
modules no pattern matches stay fp32. Module names are mapped to ONNX node names with
:func:`module_to_nodes`, which reads the scope paths the TorchScript exporter writes into node names
(see :mod:`autocompress.compress.export`); nothing is mapped by hand.

Speed notes measured on this kind of CPU (docs/FIELD_NOTES): static QDQ with uint8 activations and
int8 weights (``u8s8``) is the fast path (2.6-3.9x over fp32 for resnet18); ``s8s8`` only 1.15-1.5x;
dynamic int8 emits ConvInteger, which is slower than fp32. They stay options: the search measures.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import ConfigError, StageError
from ..records import PRECISIONS, QuantSpec
from .prune import _check_pattern_syntax, match_pattern

CALIB_BATCH = 32


class _NoPreprocessHint(logging.Filter):
    """ORT logs "consider pre-processing" on the root logger; the Identity folding here is what it needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@dataclass(frozen=True)
class QuantResult:
    path: Path
    int8_nodes: tuple[str, ...]
    fp16_nodes: tuple[str, ...]
    fp32_nodes: tuple[str, ...]
    seconds: float


# ---------------------------------------------------------------- names
def _module_of(node_name: str) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``; None for nodes without a scope path.

    Each path part is what ``torch.onnx`` writes for one module scope: the module's qualified name cut
    back to its last non-numeric atom (``conv1`` for ``layer1.0.conv1``, ``layer1.0`` for ``layer1.0``,
    ``features.0.0`` for ``features.0.0``). So a part with one atom is a child attribute of the parent,
    and a part ``a.<n>...`` ends with the child's numeric attribute.
    """
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]  # the last part is the op name
    full = ""
    for part in parts:
        atoms = part.split(".")
        if not full:
            full = part
        elif len(atoms) == 1:
            full = f"{full}.{part}"
        else:
            full = f"{full}.{atoms[-1]}"
    return full


def module_to_nodes(onnx_model_or_path, module_names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Torch module name -> the ONNX node names it became (``""`` holds top-level nodes).

    Only nodes named with a scope path (the TorchScript exporter's ``/a/a.0/conv/Conv``) are mapped.
    A module called more than once gets ``_1``, ``_2``... scope suffixes (``relu_1``); given
    ``module_names`` (the torch model's), such suffixes are removed where that yields a known module.
    """
    import re

    import onnx

    model = onnx_model_or_path
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    known = set(module_names) if module_names is not None else None
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        mod = _module_of(node.name)
        if mod is None:
            continue
        if known is not None and mod not in known and mod:
            stripped = re.sub(r"_\d+$", "", mod)
            if stripped in known:
                mod = stripped
        out.setdefault(mod, []).append(node.name)
    return out


def resolve_bits(module_names: Iterable[str], bits: Mapping[str, str]) -> dict[str, str]:
    """``{module: precision}``; the last matching pattern wins, unmatched modules are fp32."""
    names = list(module_names)
    for p, v in bits.items():
        if v not in PRECISIONS:
            raise ConfigError(f"bits for '{p}' is '{v}'; choose one of: {', '.join(PRECISIONS)}")
    _check_pattern_syntax(bits, "bits")
    out = {}
    for name in names:
        prec = "fp32"
        for p, v in bits.items():
            if match_pattern(p, name):
                prec = v
        out[name] = prec
    exact = [p for p in bits if p != "_default" and not p.startswith("re:")]
    for p in exact:
        if not any(match_pattern(p, n) for n in names):
            from ..registry import did_you_mean

            raise ConfigError(
                f"bits names module '{p}', which has no node in the ONNX model{did_you_mean(p, names)}; "
                "use an exact module name, 're:<regex>' or '_default'"
            )
    return out


# ---------------------------------------------------------------- quantization
def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _input_name(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits][0]


def _reader(input_name: str, x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(x), CALIB_BATCH))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {input_name: x[i:i + CALIB_BATCH]}

        def rewind(self):
            self._it = iter(range(0, len(x), CALIB_BATCH))

    return _Reader()


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def reduce_range_for(quant: QuantSpec, flags: list[str] | None = None) -> bool:
    """Whether int8 weights go in 7 bits (ORT's ``reduce_range``). On x86 CPUs without VNNI, ONNX Runtime's U8S8
    kernels multiply with VPMADDUBSW, whose int16 pair sums saturate when both operands use their full range;
    ORT's documentation prescribes ``reduce_range`` there. Measured on an AMD EPYC with AVX2 only
    (benchmarks/bench_int8_saturation.py, benchmarks/README.md), a ResNet-20 at 93.00% fp32 gave 90.25% in U8S8,
    92.80% with 7-bit weights (1-thread speed within the spread of 8-bit) and 92.80% in S8S8 (slower than fp32). ``quant.reduce_range`` decides when set; else
    this machine's CPU flags (``flags``: those of another machine) do: on for U8S8 on x86 without VNNI."""
    if quant.reduce_range is not None:
        return bool(quant.reduce_range)
    if quant.types != "u8s8":
        return False
    if flags is None:
        from ..profiling.target import cpu_flags

        flags = cpu_flags()
    return "avx2" in flags and not any(f in flags for f in VNNI_FLAGS)


@lru_cache(maxsize=None)
def calibration_cache_supported() -> bool:
    """Whether this onnxruntime's ``quantize_static`` keeps its activation ranges in a file (``calibration_cache_path``,
    onnxruntime >= 1.32), so that one calibration serves every quantization of the same fp32 model."""
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _int8(src: Path, dst: Path, quant: QuantSpec, calib: np.ndarray, include: list[str], exclude: list[str],
          calibration_cache: Path | None = None) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    weight_type = QuantType.QInt8
    reduce = reduce_range_for(quant)
    if quant.mode == "dynamic":
        quantize_dynamic(
            str(src), str(dst), per_channel=quant.per_channel, weight_type=weight_type, reduce_range=reduce,
            nodes_to_quantize=include, nodes_to_exclude=exclude,
        )
        return
    if quant.mode != "static":
        raise ConfigError(f"quantization mode '{quant.mode}'; choose static or dynamic")
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    acts = {"u8s8": QuantType.QUInt8, "s8s8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    for field, value, allowed in (("format", quant.format, formats), ("types", quant.types, acts),
                                  ("calibration", quant.calibration, methods)):
        if value not in allowed:
            raise ConfigError(f"quantization {field} '{value}'; choose one of: {', '.join(allowed)}")
    if len(calib) == 0:
        raise StageError("quantize", "static int8 needs calibration inputs; got none")
    quantize_static(
        str(src), str(dst), _reader(_input_name(src), calib),
        quant_format=formats[quant.format], per_channel=quant.per_channel,
        activation_type=acts[quant.types], weight_type=weight_type,
        nodes_to_quantize=include, nodes_to_exclude=exclude,
        calibrate_method=methods[quant.calibration], reduce_range=reduce,
        **({"calibration_cache_path": str(calibration_cache)} if calibration_cache is not None else {}),
    )


def _fold_identities(model):
    """Drop ``Identity`` nodes that forward an initializer (the TorchScript exporter emits them for shared
    constants); ORT's quantizer needs Conv weights and biases to be initializers. Names are kept."""
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rename, keep = {}, []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    return _rewire(model, keep, rename)


def _rewire(model, keep: list, rename: dict[str, str]):
    """Keep only ``keep`` nodes, reading each renamed tensor from its replacement (graph passes share this)."""
    if not rename:
        return model
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _fp16(src: Path, dst: Path, fp16_nodes: set[str]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # the exporter's Identity nodes that forward a shared constant (an untrained model's zero biases) are no layer,
    # so they would be kept fp32 between Casts: two extra kernels per use on a GPU, and, with onnxruntime <= 1.31's
    # converter, one Cast per use under one name, which ORT refuses (seen on an H200: "two nodes with same node
    # name (onnx::Conv_238_cast_to_fp32_node)" for an untrained resnet18 and every 'family' student)
    m = _fold_identities(onnx.load(str(src)))
    block = [n.name for n in m.graph.node if n.name not in fp16_nodes]
    m16 = convert_float_to_float16(m, keep_io_types=True, node_block_list=block)
    onnx.save(_drop_cast_roundtrips(_drop_repeated_nodes(m16)), str(dst))


def _drop_repeated_nodes(model):
    """Keep one of nodes that are the same node written twice (name, op, inputs, outputs and attributes): the float16
    converter of onnxruntime <= 1.31 writes one Cast per fp32 consumer of an fp16 tensor, each under the same name
    and output (onnxruntime 1.32 shares one)."""
    seen, keep = set(), []
    for n in model.graph.node:
        key = n.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(n)
    if len(keep) == len(model.graph.node):
        return model
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _drop_cast_roundtrips(model):
    """Remove ``Cast(to fp16) -> Cast(to fp32)`` pairs the converter puts between an fp32 producer (e.g.
    an int8 weight's DequantizeLinear) and an fp32 consumer: they lose precision and hide the QDQ
    pattern ORT fuses into int8 kernels."""
    from onnx import TensorProto

    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    graph_out = {o.name for o in model.graph.output}

    def cast_to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None)

    rename, drop = {}, set()
    for n in nodes:
        if n.op_type != "Cast" or cast_to(n) != TensorProto.FLOAT or n.output[0] in graph_out:
            continue
        first = producer.get(n.input[0])
        if first is None or first.op_type != "Cast" or cast_to(first) != TensorProto.FLOAT16:
            continue
        if consumers.get(first.output[0], 0) != 1:
            continue
        src = producer.get(first.input[0])
        if src is None or src.op_type != "DequantizeLinear":
            continue
        rename[n.output[0]] = first.input[0]
        drop.update({id(n), id(first)})
    return _rewire(model, [n for n in nodes if id(n) not in drop], rename)


def quantize_model(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    bits: Mapping[str, str],
    quant: QuantSpec,
    calib_x,
    *,
    batch_size: int = 1,
    calibration_cache: str | os.PathLike | None = None,
) -> QuantResult:
    """Write ``out_path``: ``fp32_path`` with each module's nodes in the precision ``bits`` gives it.

    int8 nodes go to ONNX Runtime's quantizer as ``nodes_to_quantize`` (everything else in
    ``nodes_to_exclude``), fp16 nodes are converted afterwards (inputs/outputs stay float32), all-fp32
    is a plain copy. ``calib_x`` feeds static calibration (in batches of 32); a batch of ``batch_size``
    rows of it checks that the result runs and gives finite outputs.

    ``calibration_cache``: a file for the activation ranges of static calibration (see
    :func:`calibration_cache_supported`; ignored where this onnxruntime has none): written by the first call,
    read by the next, so many quantizations of the *same* ``fp32_path`` with the same ``calib_x`` and ``quant``
    calibrate once (the ranges are the fp32 model's, whichever nodes go int8). The caller owns the file and its key.
    """
    t0 = time.perf_counter()
    src, out = Path(fp32_path), Path(out_path)
    calib = _as_numpy(calib_x)
    m2n = module_to_nodes(src)
    prec = resolve_bits(m2n, bits)
    node_prec = {n: prec[mod] for mod, nodes in m2n.items() for n in nodes}
    import onnx

    all_nodes = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node]
    int8 = tuple(n for n in all_nodes if node_prec.get(n) == "int8")
    fp16 = tuple(n for n in all_nodes if node_prec.get(n) == "fp16")
    fp32 = tuple(n for n in all_nodes if node_prec.get(n, "fp32") == "fp32")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp8 = out.with_name(f".{out.name}.{os.getpid()}.int8.tmp")
    clean = out.with_name(f".{out.name}.{os.getpid()}.src.tmp")
    hint_filter = _NoPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        try:
            if not int8 and not fp16:
                shutil.copyfile(src, tmp)
            else:
                stage_src = src
                if int8:
                    model = _fold_identities(onnx.load(str(src)))
                    onnx.save(model, str(clean))
                    cache = Path(calibration_cache) if calibration_cache is not None and calibration_cache_supported() else None
                    _int8(clean, tmp8 if fp16 else tmp, quant, calib, list(int8), list(fp16 + fp32), cache)
                    stage_src = tmp8
                if fp16:
                    _fp16(stage_src, tmp, set(fp16))
        except (ConfigError, StageError):
            raise
        except Exception as e:
            raise StageError("quantize", f"ONNX Runtime could not quantize {src.name}: {_first_line(e)}") from e
        os.replace(tmp, out)
    finally:
        logging.getLogger().removeFilter(hint_filter)
        for p in (tmp, tmp8, clean):
            if p.exists():
                p.unlink()
    example = calib[: max(1, batch_size)] if len(calib) else None
    if example is not None:
        check_runs(out, example)
    return QuantResult(path=out, int8_nodes=int8, fp16_nodes=fp16, fp32_nodes=fp32,
                       seconds=time.perf_counter() - t0)


def check_runs(path: str | os.PathLike, example) -> None:
    """Load ``path`` in ONNX Runtime (CPU), run ``example``; StageError unless the outputs are finite."""
    import onnxruntime as ort

    x = _as_numpy(example)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, {sess.get_inputs()[0].name: x})
    except Exception as e:
        raise StageError("quantize", f"{Path(path).name} does not run in ONNX Runtime: {_first_line(e)}") from e
    for o in outs:
        if not np.all(np.isfinite(o)):
            raise StageError("quantize", f"{Path(path).name} gives non-finite outputs (NaN/inf); keep more layers in fp32")
