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
and workspaces, went cold at about half the knee of copies of one conv.

Before the last level there is a core's own cache (L2): the same copies show its step too (:func:`cache_steps`; on a
Xeon with 2 MiB of L2 per core, 1 to 4 MiB of weights, 5 -> 12 us per 256 KiB copy), and a model past it reads
every kernel's weights from the last level, which the grid's few warm copies did not. Each warm entry is moved to
that level by its own weight bytes at the step's cost per byte (:func:`mid_level`, :func:`mid_share`; applied in
:class:`.lookup.Index`). numpy + onnx + onnxruntime only.
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
KNEE_COPY_BYTES = 256 * 256 * 4  # one copy of the knee's conv (fp32 1x1 256 -> 256)


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


STREAM = "weights+outputs"  # a table context's "cache_counts": what its fitted cache is compared with


def stream_bytes(weights: int, kernels: list[dict]) -> int:
    """What a network streams through the cache every inference: its weights (``weights`` bytes,
    :func:`model_weight_bytes`) and every tensor its kernels write (``out_bytes`` of :func:`.kernels.list_kernels`).
    Activations written evict weights as surely as other weights do: on an AMD EPYC (Zen 5, AVX512-VNNI, 1 MiB of L2
    per core) timm's efficientnet_b0, ghostnet_100 and rexnet_100 at 64 px (18-20 MiB of fp32 weights, 24-26 MiB
    with their outputs) ran their weight-heavy kernels about two thirds cold and were predicted 15-18% low by a
    cache fitted on wide residual networks at 16 px, whose outputs are small; counted with their outputs, the same
    networks fit the same cache (22.6 MiB), and a fresh build put 8 of 10 timm models (five families, fp32 and int8)
    within +-10% where the fit on weights alone put 2 of 10, on the same measurements (benchmarks/README.md,
    thirty-fourth session)."""
    return weights + sum(int(k.get("out_bytes", 0)) for k in kernels)


def coldness(model_bytes: float, cache_bytes: float | None) -> float:
    """0 (weights stay in the cache) to 1 (every kernel reads its weights from memory), over one octave of the bytes
    the model streams (:func:`stream_bytes`; its weights alone in tables fitted before) centred on ``cache_bytes``,
    log-linear: the cache that counts for whole networks, fitted on networks
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


CORE_CACHE_MAX = 4 << 20  # a single step at or below this many weight bytes is a core's own cache running out
STEP_COST = 0.05  # squared log error a step must save (one smooth ramp over two octaves is one step, not two)


def cache_steps(sizes: list[float], ts: list[float]) -> dict:
    """The levels in per-copy times of the knee's conv against total weight bytes: up to three flat stretches (a
    core's own cache, the shared last level, memory), each step at least 30%, chosen by least squares on log time
    (each step must save ``STEP_COST``; a middle stretch needs two points). A single step is the core's cache running
    out when it comes by ``CORE_CACHE_MAX``, else the last level's. Returns {"warm", "mid", "cold": ms per copy on
    each stretch (None where there is none), "lo", "hi": bytes where the core's step starts and ends (None),
    "cache_bytes": where the last level's step is half-way, None where there is none}. A knee read
    as one step half-way from the smallest times to the largest put a Xeon's at 36 MiB in one build and 3.7 MiB in
    the next, as its 64-MiB point moved (23.8 / 17.6 us; benchmarks/README.md, thirtieth session)."""
    lt, n = np.log(np.maximum(ts, 1e-12)), len(ts)
    best = None
    for i in range(1, n + 1):
        for j in range(i, n + 1):
            if 0 < j - i < 2 and j < n:  # a middle stretch of one point is a step's way up, not a level
                continue
            segs = [seg for seg in (lt[:i], lt[i:j], lt[j:]) if len(seg)]
            meds = [float(np.median(seg)) for seg in segs]
            if any(b - a < math.log(1.3) for a, b in zip(meds, meds[1:])):
                continue
            err = sum(float(((seg - m) ** 2).sum()) for seg, m in zip(segs, meds)) + STEP_COST * (len(segs) - 1)
            key = (round(err, 9), len(segs))
            if best is None or key < best[0]:
                best = (key, [len(seg) for seg in segs], [math.exp(m) for m in meds])
    _, lens, levels = best
    starts = np.cumsum([0] + lens[:-1]).tolist()
    out = {"warm": levels[0], "mid": None, "cold": None, "lo": None, "hi": None, "cache_bytes": None}
    if len(levels) == 2:
        core = sizes[starts[1]] <= CORE_CACHE_MAX
        out["mid" if core else "cold"] = levels[1]
    elif len(levels) == 3:
        out["mid"], out["cold"] = levels[1], levels[2]
    if out["mid"] is not None:
        warm, mid = out["warm"], out["mid"]
        out["lo"] = float(max([s for s, t in zip(sizes, ts) if t <= 1.1 * warm] or [sizes[0]]))
        out["hi"] = float(next((s for s, t in zip(sizes, ts) if s > out["lo"] and t >= mid - 0.1 * (mid - warm)), sizes[-1]))
    if out["cold"] is not None:
        below = out["mid"] if out["mid"] is not None else out["warm"]
        half = (below + out["cold"]) / 2
        out["cache_bytes"] = float(sizes[-1])
        for (s0, t0), (s1, t1) in zip(zip(sizes, ts), zip(sizes[1:], ts[1:])):
            if t0 < half <= t1 and s0 >= (out["hi"] or 0):
                frac = (half - t0) / max(t1 - t0, 1e-12)
                out["cache_bytes"] = float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))
                break
    return out


def mid_level(table: dict) -> dict | None:
    """The step between a core's own cache and the shared last level, read from the knee's per-copy times
    (:func:`cache_steps`): {"lo", "hi": weight bytes where it starts and ends, "ms_per_byte": what each byte of a
    kernel's weights adds there}, or None. A network's weights are read from the core's cache only while they all fit
    there; past it each weighted kernel fetches its own from the last level. On a Xeon with 2 MiB of L2 per core the
    knee's conv (256 KiB of weights, 2x2 pixels) ran 4.9 / 5.1 us per copy with 2 / 4 copies, 7.7 with 8, 11.7-12.6
    with 16-128 and 23.8 with 256 (benchmarks/README.md, thirtieth session): the grid's warm entries held their few
    copies in L2 (a 1x1 160 -> 944 conv on 2x2 pixels: 10.8 us by ORT's profiler) where a mobilenet_v2 with 8.5 MB of
    weights ran the same conv in 26.7 us; the step's cost per byte adds 15.8."""
    ts, copies = table.get("knee_ms"), table.get("knee_copies")
    if not ts or not copies or len(ts) < 3:
        return None
    st = cache_steps([n * KNEE_COPY_BYTES for n in copies], ts)
    if st["mid"] is None:
        return None
    return {"lo": st["lo"], "hi": max(st["hi"], st["lo"] * 2), "ms_per_byte": (st["mid"] - st["warm"]) / KNEE_COPY_BYTES}


def mid_share(nbytes: float, level: dict | None) -> float:
    """0 (weights of this many bytes stay in a core's own cache) to 1 (read from the last level), log-linear between
    the step's ends (:func:`mid_level`)."""
    if not level or nbytes <= level["lo"]:
        return 0.0
    if nbytes >= level["hi"]:
        return 1.0
    return float(math.log(nbytes / level["lo"]) / math.log(level["hi"] / level["lo"]))


def cache_knee(time_per_copy: Callable[[bytes, int], float], quick: bool) -> dict:
    """The cache that counts: a 1x1 fp32 conv 256 -> 256 on 2x2 pixels (256 KiB of weights) timed with 2..256 side by
    side copies (``time_per_copy(model, copies)`` -> ms per copy); ``cache_bytes``: the last level's knee
    (:func:`cache_steps`), None where the times show no such step (nothing is timed cold then: with copies of 1.5x
    the largest size tried, for a step the copies had not shown, a build on a Xeon timed 2.4 graphs a second against
    6.7 for one timing cold past a 44 MiB knee); the times are kept for the core's own step (:func:`mid_level`)."""
    base = graphs.conv_graph(1, 256, 256, 2, 1, 1, False, False)
    copies = _KNEE_COPIES[1::2] if quick else _KNEE_COPIES
    ts = [time_per_copy(graphs.replicate(base, n), n) for n in copies]
    st = cache_steps([n * KNEE_COPY_BYTES for n in copies], ts)
    return {"cache_bytes": st["cache_bytes"], "knee_ms": ts, "knee_copies": list(copies)}
