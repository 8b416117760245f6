"""Predicting a model's latency from a table: list the kernels ORT runs for it, look each up, add the overhead.

Inside one table group (kernel implementation, dtype, kernel size, stride, depthwise or full, channel alignment)
a kernel's time is interpolated by a local weighted log-linear fit over the nearest measured kernels (features:
log channels in / out, log batch*pixels; a broadcast's log elements and log elements per broadcast value), kept
within 3x of the nearest measured kernel scaled by work; an element-wise or data-movement kernel (one feature, log
elements) by log-log interpolation between the non-decreasing medians at each measured size. A group the table
lacks falls back to the nearest alignment class, then to the same implementation at another kernel size or stride
scaled by work, then to the per-node cost. A weighted kernel's entry is taken at the cache level the model's
weights put it in (:func:`.cold.mid_share`: a core's own cache or the last level; :func:`.cold.coldness`: memory).
numpy + onnx + onnxruntime.
"""

from __future__ import annotations

import math

import numpy as np

from . import marks
from .cold import blend, coldness, mid_level, mid_share, model_weight_bytes, STREAM, stream_bytes, weight_bytes
from .kernels import ALIGN, list_kernels, weighted_kind
from .target import Target


class Index:
    def __init__(self, table: dict):
        by: dict[str, list] = {}
        for ln, f in kept_lines(table):
            for k in ln["kernels"]:
                by.setdefault(k["group"], []).append((k, f, ln.get("id"), _weighted_bytes(ln.get("spec") or {}, k)))
        self.node_ms = float(table.get("node_ms", 0.0))
        self.level = mid_level(table)
        # per group: features, work, log ms with the weights in a core's own cache, log ms with them out of every
        # cache (= the first where the kernel was not timed cold), log ms with them in the last level
        self.groups: dict[str, tuple[np.ndarray, ...]] = {}
        self.ids: dict[str, list[str]] = {}  # per group, the graph line each entry came from
        for g, ks in by.items():
            ms = np.array([k["ms"] * f for k, f, _, _ in ks])
            own, last = self._levels(ms, ks)
            self.groups[g] = (np.array([k["feats"] for k, _, _, _ in ks], float), np.array([k["work"] for k, _, _, _ in ks], float),
                              np.log(np.maximum(own, 1e-5)),
                              np.log(np.maximum([k.get("cold_ms", k["ms"]) * f for k, f, _, _ in ks], 1e-5)),
                              np.log(np.maximum(last, 1e-5)))
            self.ids[g] = [i for _, _, i, _ in ks]

    def _levels(self, ms: np.ndarray, ks: list) -> tuple[np.ndarray, np.ndarray]:
        """Each entry with its weights in a core's own cache and in the last level: the grid timed it with a few
        copies whose weights (copies x bytes) sat in one or the other or between (:func:`.cold.mid_share`), and
        moving a kernel's weights one level adds or takes off their bytes at the step's cost per byte."""
        if self.level is None:
            return ms, ms
        wb = np.array([b for *_, b in ks], float)
        pen = wb * self.level["ms_per_byte"]
        there = np.array([mid_share(b * k.get("n", 1), self.level) for (k, *_), b in zip(ks, wb)])
        return np.maximum(ms - there * pen, 0.3 * ms), ms + (1 - there) * pen

    def lookup(self, group: str, feats: list[float], work: float, cold: float = 0.0, mid: float = 0.0) -> tuple[float, str]:
        """(ms, how: 'fit' | 'alignment' | 'activation' | 'scaled' | 'node'); ``mid`` (0-1, :func:`.cold.mid_share`):
        how far the model's weights have left a core's own cache for the last level; ``cold`` (0-1,
        :func:`.cold.coldness`): how far they are out of every cache (log-linear blends of the entries)."""
        warm, how = self._lookup(group, feats, work, 2)
        if mid > 0.0:
            warm = blend(warm, self._lookup(group, feats, work, 4)[0], mid)
        if cold <= 0.0:
            return warm, how
        return blend(warm, self._lookup(group, feats, work, 3)[0], cold), how

    def _lookup(self, group: str, feats: list[float], work: float, col: int) -> tuple[float, str]:
        g, how = self.groups.get(group), "fit"
        if g is None:
            g, how = self._other_alignment(group), "alignment"
        if g is None or not covers(g[0], feats):
            twin = self._act_twin(group, feats, fallback=g is None)
            if twin is not None:
                g, how = twin, "activation"
        if g is None or g[0].shape[1] != len(feats):
            g = self._same_impl(group, col)
            if g is None:
                return self.node_ms, "node"
            _, w, lt = g
            i = int(np.argmin(np.abs(np.log(w) - math.log(max(work, 1)))))
            return max(float(math.exp(lt[i]) * work / w[i]), self._floor(lt)), "scaled"
        X, w, lt = g[0], g[1], g[col]
        if X.shape[1] == 1:
            return max(self._interp(X[:, 0], w, lt, feats[0], work), self._floor(lt)), how
        return max(local_fit(X, w, lt, np.array(feats, float), work), self._floor(lt)), how

    @staticmethod
    def _interp(x: np.ndarray, w: np.ndarray, lt: np.ndarray, q: float, work: float) -> float:
        """A one-feature group (element-wise and data-movement kernels: log elements): the median time at each
        measured size, interpolated log-log between them; below the smallest the smallest's time (a fixed cost per
        call), above the largest the largest's scaled by work. A local line through scattered points of one size
        (the same DequantizeLinear alone and between two ops) swung 2.5x between neighbouring sizes; the medians are
        made non-decreasing (more elements never cost less)."""
        xs = np.unique(np.round(x, 6))
        at = [np.abs(x - v) < 1e-6 for v in xs]
        med = _monotone(np.array([np.median(lt[m]) for m in at]), np.array([m.sum() for m in at], float))
        if q <= xs[0]:
            return float(math.exp(med[0]))
        if q >= xs[-1]:
            top = np.abs(x - xs[-1]) < 1e-6
            return float(math.exp(med[-1]) * max(work, 1) / float(np.median(w[top])))
        return float(math.exp(np.interp(q, xs, med)))

    @staticmethod
    def _floor(lt: np.ndarray) -> float:
        """A kernel costs at least what the group's cheapest measured one did (a fixed cost per call: a 1x1 conv
        on one pixel is not 1/16 of one on four)."""
        return 0.8 * float(math.exp(lt.min()))

    def _other_alignment(self, group: str):
        parts = group.split("/")
        if parts[-1] not in ALIGN:
            return None
        nearest = {"u": ("a4", "a8", "a16"), "a4": ("u", "a8", "a16"), "a8": ("a4", "a16", "u"), "a16": ("a8", "a4", "u")}
        for cls in nearest[parts[-1]]:
            g = self.groups.get("/".join(parts[:-1] + [cls]))
            if g is not None:
                return g
        return self.groups.get("/".join(parts[:-1]))  # a table from before the group had classes (reorders)

    def _act_twin(self, group: str, feats: list[float], fallback: bool):
        """A conv with a fused activation the grid did not time at that kernel size / stride / kind, or not near these
        features: the same conv with Clip (the one it times), else without one (the activation's pass over the output
        not counted), the first whose grid covers ``feats`` (:func:`covers`); with none covering, the first there is
        (``fallback``: the kernel's own group is missing) or None. The grid times Clip convs up to 160 channels in
        and from 4 pixels: mobilenetv3's head conv (576 -> 1024 channels, hard-swish, on one pixel) came out of the
        Clip group's local fit at 12.4 us where the plain conv's grid, which has such points, says 25.9 and the model
        spent 25.8 there (benchmarks/README.md, thirty-sixth session)."""
        impl, _, rest = group.partition("/")
        found = [g for other in _act_twins(impl)
                 if (g := self.groups.get(f"{other}/{rest}") or self._other_alignment(f"{other}/{rest}")) is not None]
        return next((g for g in found if covers(g[0], feats)), found[0] if found and fallback else None)

    def _same_impl(self, group: str, col: int):
        impl, dt = (group.split("/") + [""])[:2]
        cands = [k for k in self.groups if k.startswith(f"{impl}/{dt}/") or k == f"{impl}/{dt}"] or \
                [k for k in self.groups if k.split("/")[0] == impl]
        for other in _kin(impl):  # an NHWC pool by its NCHW entries, a QLinear op by its float op
            if cands:
                break
            cands = [k for k in self.groups if k.split("/")[0] == other]
        if not cands:
            return None
        return (None, np.concatenate([self.groups[k][1] for k in cands]), np.concatenate([self.groups[k][col] for k in cands]))


COVER_SLACK = math.log(1.5)  # how far (x, log) past its grid's range a group's fit is still read


def covers(X: np.ndarray, feats: list[float], slack: float = COVER_SLACK) -> bool:
    """Whether a group's grid points ``X`` (log features) span ``feats`` on every axis, to within ``slack``."""
    if X.shape[1] != len(feats):
        return False
    f = np.asarray(feats, float)
    return bool(np.all(f >= X.min(axis=0) - slack) and np.all(f <= X.max(axis=0) + slack))


def local_fit(X: np.ndarray, w: np.ndarray, lt: np.ndarray, q: np.ndarray, work: float, skip: int | None = None) -> float:
    """A multi-feature group's time (ms) at features ``q``: a weighted log-linear fit over the nearest measured
    kernels, kept within 3x of the nearest one scaled by work (an extrapolating fit stays near the data); ``skip``
    leaves one entry out (:mod:`.recheck` compares each entry with what its neighbours say)."""
    d = np.sqrt(((X - q) ** 2).sum(1))
    if skip is not None:
        d[skip] = np.inf
    n = len(d) - (skip is not None)
    order = np.argsort(d)[:n]
    nn = order[0]
    nn_est = lt[nn] + math.log(max(work, 1) / w[nn])  # nearest neighbour scaled by work
    kk = min(n, 2 * (X.shape[1] + 1) + 2)
    if kk < X.shape[1] + 2:
        return float(math.exp(nn_est))
    idx = order[:kk]
    sw = np.sqrt(1.0 / (d[idx] + 0.25) ** 2)[:, None]
    # the fit is of time per unit of work, over the features that vary among the neighbours: along a feature they
    # all share (a grid that timed one input count, 13, for a kind of conv) time goes with work, where a fit of time
    # itself had nothing to say and guessed (15 -> 16 channels predicted 0.6x the 13 -> 16 it was timed at). Where
    # every feature varies, the two fits agree (work is a product of powers of the features).
    varies = np.ptp(X[idx], axis=0) > 1e-6
    A = np.column_stack([np.ones(kk), X[idx][:, varies]])
    coef, *_ = np.linalg.lstsq(A * sw, (lt[idx] - np.log(np.maximum(w[idx], 1))) * sw[:, 0], rcond=None)
    est = float(coef[0] + coef[1:] @ q[varies] + math.log(max(work, 1)))
    return float(math.exp(min(max(est, nn_est - math.log(3)), nn_est + math.log(3))))


def _weighted_bytes(spec: dict, kernel: dict) -> int:
    """The weight bytes of a grid line's conv / gemm kernel (0 for its reorders and for other ops)."""
    if spec.get("pattern") or spec.get("op") not in ("conv", "gemm") or weighted_kind(kernel["group"]) is None:
        return 0
    return weight_bytes(spec)


def kept_lines(table: dict) -> list[tuple[dict, float]]:
    """(graph line, factor to the build's median speed) for each graph the table holds; a graph timed twice (re-timed
    by :mod:`.recheck` where its entry disagreed with its neighbours) by its faster time at that speed: on a shared
    machine noise only ever slows a timing."""
    lines = table["lines"]
    factors = marks.table_factors(table)  # each graph at the build's median speed
    best: dict[str, tuple[dict, float]] = {}
    for i, ln in enumerate(lines):
        f = 1.0 if factors is None else float(factors[i])
        key = ln.get("id", i)
        old = best.get(key)
        if old is None or ln["wall_ms"] * f < old[0]["wall_ms"] * old[1]:
            best[key] = (ln, f)
    return list(best.values())


def _monotone(y: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest ``y`` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, wv in zip(y, wt):
        blocks.append([float(v), float(wv), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, n1), (m2, w2, n2) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2]]
    return np.concatenate([np.full(n, m) for m, _, n in blocks])


def _act_twins(impl: str) -> list[str]:
    """A conv with a fused activation the grid lacks ('NchwcConv-sigmoid'): the same conv with the activation the grid
    times (Clip), then with Relu; [] for any other implementation."""
    base, _, act = impl.partition("-")
    if not act or not base.endswith("Conv"):
        return []
    return ([f"{base}-clip"] if act != "clip" else []) + [base]


def _kin(impl: str) -> list[str]:
    """Implementations that cost about the same as ``impl`` when the table has none of it: the same pool in the
    other layout ('GlobalAveragePool-nhwc' -> 'GlobalAveragePool', 'Mul-bcast-vec' -> 'Mul-bcast'), the float op of a
    QLinear one ('com.microsoft:QLinearConcat' -> 'Concat'), a conv with another fused activation
    ('NchwcConv-sigmoid' -> 'NchwcConv-clip', 'NchwcConv')."""
    out = []
    if impl.endswith("-nhwc"):
        out.append(impl[: -len("-nhwc")])
    if impl.endswith("-bcast-vec"):  # a broadcast along the rows by the one across them
        out.append(impl[: -len("-vec")])
    out += _act_twins(impl)
    op = impl.split(":")[-1]
    if op.startswith("QLinear"):
        out.append(op[len("QLinear"):])
    return out


_INDEX_CACHE: dict[int, tuple[dict, Index]] = {}


def index_of(table: dict) -> Index:
    """The table's index, built once per table object (the last few kept: a benchmark alternates between a table
    and its variants)."""
    hit = _INDEX_CACHE.get(id(table))
    if hit is None or hit[0] is not table:
        hit = (table, Index(table))
        while len(_INDEX_CACHE) >= 4:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[id(table)] = hit
    return hit[1]


def table_target(table: dict) -> Target:
    return Target.from_profile({**table["target"], "name": table.get("target_name", "custom")})


def model_dtype(kernels: list[dict]) -> str:
    """'int8' when ORT runs any quantized kernel (QLinear*, QGemm, ConvInteger...) for the model, else 'fp32'."""
    return "int8" if any(k["group"].split("/")[1:2] == ["int8"] and k["op"] not in ("Transpose", "Flatten", "Reshape")
                         for k in kernels) else "fp32"


def breakdown(model: bytes | str, table: dict, kernels: list[dict] | None = None,
              shapes: dict | None = None, cold: float | None = None) -> list[tuple[str, str, float, str]]:
    """(kernel name, table group, ms, how) for every kernel ORT runs for ``model`` under the table's settings, as in
    a network: the table's entry (warm, cold or between, by the bytes the model streams against the cache the table's
    networks fitted, :func:`streamed`; ``cold`` forces it) times its in-network scale for the model's dtype and its
    kind's ratio to it, plus its per-kernel cost."""
    idx = index_of(table)
    ks = kernels if kernels is not None else list_kernels(model, table_target(table), shapes=shapes)
    ctx, dt = table.get("context") or {}, model_dtype(ks)
    scale = (ctx.get("scale") or {}).get(dt, 1.0)
    by_kind = (ctx.get("kind_scale") or {}).get(dt) or {}  # tables before it was fitted: the one scale
    extra = (ctx.get("per_kernel_ms") or {}).get(dt, 0.0)  # tables before it was fitted: none
    nbytes = model_weight_bytes(model)  # parsed once: the last level's coldness and the core's cache step both read it
    c = coldness(streamed(nbytes, ks, ctx), ctx.get("cache_bytes")) if cold is None else cold
    mid = mid_share(nbytes, idx.level)  # a core's own cache: its step was measured on weights alone (the knee's copies)
    out = []
    for k in ks:
        ms, how = idx.lookup(k["group"], k["feats"], k["work"], c, mid)
        out.append((k["name"], k["group"], ms * scale * by_kind.get(kernel_kind(k), 1.0) + (extra if moves_data(k) else 0.0), how))
    return out


def streamed(weights: int, kernels: list[dict], ctx: dict) -> int:
    """The bytes a model's coldness is read from, as the table's networks fitted its cache: its ``weights`` and its
    kernels' outputs (:func:`.cold.stream_bytes`), or the weights alone for a table fitted before (no
    ``cache_counts``)."""
    return stream_bytes(weights, kernels) if ctx.get("cache_counts") == STREAM else weights


def kernel_kind(kernel: dict) -> str:
    """What a kernel's in-network ratio is kept by (``table.fit_kinds``): its implementation and dtype, a depthwise
    conv apart from the other convs of its implementation."""
    return "/".join(kernel["group"].split("/")[:2]) + ("/dw" if weighted_kind(kernel["group"]) == "dw" else "")


def moves_data(kernel: dict) -> bool:
    """Whether a kernel reads and writes a network's tensors, which is what the in-network cost per kernel is fitted
    on (networks of fixed shapes), rather than a step of an exporter's shape arithmetic (Shape, and int64 Gather /
    Unsqueeze / Concat / Div... on a handful of sizes): a dynamic-batch shufflenet runs ~260 of these beside ~320
    kernels that move data; their share of its time was 0.14 us each, the fitted cost 0.5 us each on top of their
    entries (benchmarks/README.md, thirtieth session)."""
    parts = kernel["group"].split("/")
    return kernel.get("op") != "Shape" and (len(parts) < 2 or parts[1] != "int64")


def predict_raw(model: bytes | str, table: dict, kernels: list[dict] | None = None, shapes: dict | None = None) -> float:
    """Kernels in network (scaled) + the per-inference overhead (ms), before any torch-side calibration."""
    return float(table["overhead_ms"] + sum(ms for _, _, ms, _ in breakdown(model, table, kernels, shapes)))
