"""Weights out of the cache: what a weighted kernel costs when its weights come from memory, not the last-level cache.

A network streams all its weights every inference; once they outgrow the cache, each kernel reads its own from
memory. Measured on an AVX2 EPYC (``benchmarks/bench_cold.py``, one thread, per copy of a conv, 1 / 16 / 64
side-by-side copies with their own weights): a 1x1 fp32 conv 304 -> 320 on 2x2 pixels ran 13.4 / 13.3 / 20.3 us,
145 -> 875 38.0 / 41.1 / 99.6 us, an int8 3x3 455 -> 455 on 4x4 339.4 / 447.0 / 422.1 us; inside pruned regnet /
mobilenet_v2 / resnet18 models ORT's profiler gave those shapes 29, 125 and 538 us. So the table times a weighted kernel twice where its weights can
matter: as before (warm: a few MB of copies) and cold (copies holding a few times the cache), and the prediction
blends the two by how far the model's own weights exceed the cache (:func:`coldness`). Both caches are found by
measurement, not read from the CPU's description (a VM's share of a shared L3 is smaller than the L3): the copies'
knee (:func:`cache_knee`) sets how many copies make a kernel cold, and the networks' own (:func:`fit_cache`,
fitted on networks timed whole, weight-light and weight-heavy) when a model is: a network, with its activations
and workspaces, went cold at about half the knee of copies of one conv. numpy + onnx + onnxruntime only.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx

from . import graphs

MIN_BYTES = 64 << 10  # weights below this cost little to fetch cold: timed warm only
PENALTY_SHARE = 0.1  # ... and where fetching them (at COLD_BW) would add less than this share of the warm time
COLD_BW = 8e9  # bytes/s: a low guess at memory bandwidth for one core, only to decide what is worth timing cold
MAX_COPIES = 512
_KNEE_COPIES = (2, 4, 8, 16, 32, 64, 128, 256)


def weight_bytes(spec: dict) -> int:
    """Bytes of one copy's weights for a grid spec (0 for unweighted ops)."""
    b = 1 if spec.get("dtype") == "int8" else 4
    if spec["op"] == "conv":
        cin_g = 1 if spec["dw"] else spec["cin"] // spec.get("g", 1)
        return spec["cout"] * cin_g * spec["k"] ** 2 * b
    if spec["op"] == "gemm":
        return spec["cin"] * spec["cout"] * b
    return 0


def worth_timing_cold(spec: dict, warm_ms: float) -> bool:
    wb = weight_bytes(spec)
    return not spec.get("pattern") and wb >= MIN_BYTES and wb / COLD_BW * 1e3 >= PENALTY_SHARE * warm_ms


def cold_copies(spec: dict, cache_bytes: float) -> int:
    """Copies whose weights together hold 1.5x the cache (at most MAX_COPIES; the knee's conv ran 85-90% of the
    way from warm to cold there)."""
    return int(min(MAX_COPIES, max(2, math.ceil(1.5 * cache_bytes / max(weight_bytes(spec), 1)))))


def weight_tensors(model) -> list[tuple[int, int]]:
    """(elements, bytes per element) of every weight a model holds: its initializers and the tensors some exporters
    fold into Constant nodes. ``model``: ONNX bytes or a path (external data not loaded: only the shapes are read)."""
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model), load_external_data=False)
    tensors = list(m.graph.initializer) + [a.t for nd in m.graph.node if nd.op_type == "Constant"
                                           for a in nd.attribute if a.name == "value" and a.HasField("t")]
    return [(int(np.prod(t.dims)) if len(t.dims) else 1,
             np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize) for t in tensors]


def model_weight_bytes(model: bytes | str) -> int:
    """Bytes of a model's weights (what ORT streams through the cache every inference)."""
    return sum(n * size for n, size in weight_tensors(model))


def coldness(model_bytes: float, cache_bytes: float | None) -> float:
    """0 (weights stay in the cache) to 1 (every kernel reads its weights from memory), over one octave of the model's
    weight bytes centred on ``cache_bytes``, log-linear: the cache that counts for whole networks, fitted on networks
    timed whole (``table.context_calibration``). Measured here (AVX2 EPYC, one thread): 40 held-out pruned models
    were predicted right by their warm entries up to 6.4 MB of weights, by their cold ones from 8.5 MB on."""
    if not cache_bytes or model_bytes <= 0:
        return 0.0
    return float(min(1.0, max(0.0, 0.5 + math.log2(model_bytes / cache_bytes))))


def blend(warm_ms: float, cold_ms: float, c: float) -> float:
    """A kernel's time at coldness ``c``: log-linear between its warm and cold entries."""
    if c <= 0.0:
        return warm_ms
    return float(math.exp((1 - c) * math.log(max(warm_ms, 1e-9)) + c * math.log(max(cold_ms, 1e-9))))


def fit_cache(nets: list[dict], fit: Callable[[list], tuple[float, float]]) -> float | None:
    """The cache that counts for whole networks: the ``coldness`` centre (bytes, from 1 to 128 MiB, or None: every
    network warm) under which the in-network fit ``fit`` (per dtype, :func:`.table.fit_context`) explains networks'
    measured times best (least squares on the log ratio). ``nets``: [{"dtype", "measured", "bytes", "n", "warm":
    [kernel ms], "cold": [kernel ms]}]. Networks whose weights fit the cache and ones far beyond it place it;
    without both, the copies' knee is not a network's, and None keeps every model warm."""
    def residual(cache):
        total = 0.0
        by: dict[str, list] = {}
        for nt in nets:
            c = coldness(nt["bytes"], cache)
            by.setdefault(nt["dtype"], []).append((nt, sum(blend(w, k, c) for w, k in zip(nt["warm"], nt["cold"]))))
        for pts in by.values():
            scale, per_kernel = fit([(nt["measured"], s, nt["n"]) for nt, s in pts])
            total += sum(math.log(nt["measured"] / max(scale * s + per_kernel * nt["n"], 1e-9)) ** 2 for nt, s in pts)
        return total
    if not nets or max(nt["bytes"] for nt in nets) < 4 * min(nt["bytes"] for nt in nets):
        return None
    cands = [None] + [float(b) for b in np.geomspace(1 << 20, 128 << 20, 43)]
    return min(cands, key=lambda c: (residual(c), c is not None))


def cache_knee(time_per_copy: Callable[[bytes, int], float], quick: bool) -> dict:
    """The cache that counts: a 1x1 fp32 conv 256 -> 256 on 2x2 pixels (256 KiB of weights) timed with 2..256 side by
    side copies; the knee is the total weight bytes where the per-copy time is half-way from warm (the median of the
    smallest three) to cold (the largest). ``time_per_copy(model, copies)`` -> ms per copy. No rise of 30%: the
    largest total tried (every model predicted warm below it)."""
    base = graphs.conv_graph(1, 256, 256, 2, 1, 1, False, False)
    per = 256 * 256 * 4
    copies = _KNEE_COPIES[1::2] if quick else _KNEE_COPIES
    ts = [time_per_copy(graphs.replicate(base, n), n) for n in copies]
    warm, cold = float(np.median(ts[:3])), ts[-1]
    sizes = [n * per for n in copies]
    if cold < 1.3 * warm:
        return {"cache_bytes": float(sizes[-1]), "knee_ms": ts, "knee_copies": list(copies)}
    half = (warm + cold) / 2
    knee = float(sizes[-1])
    for (s0, t0), (s1, t1) in zip(zip(sizes, ts), zip(sizes[1:], ts[1:])):
        if t0 < half <= t1:
            frac = (half - t0) / max(t1 - t0, 1e-12)
            knee = float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))
            break
    return {"cache_bytes": knee, "knee_ms": ts, "knee_copies": list(copies)}
