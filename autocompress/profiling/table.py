"""The lookup table: a grid of small ONNX graphs timed on the target, keyed on the kernels ONNX Runtime runs.

File format (JSON Lines, ``<name>.table.jsonl``), appended as it is built so an interrupted run continues:

* line 1, the header: ``{"kind": "autocompress-latency-table", "version", "target": {session settings},
  "onnxruntime", "execution_provider", "fingerprint", "date", "quick", "timing" (blocks, ms per block and the
  statistic every graph was timed with), "overhead_ms", "node_ms", "delta_ms",
  "cache_bytes" (the knee of copies of one conv turning cold, :func:`.cold.cache_knee`: how many copies the cold
  timings take; null where the copies showed no last-level step: nothing is timed cold), "knee_ms", "knee_copies"
  (its per-copy times: the core's own cache step, :func:`.cold.mid_level`)}``;
* one line per timed graph: ``{"id", "spec", "wall_ms", "signature": [kernel types], "kernels": [{"group",
  "feats", "work", "ms", "cold_ms"?}], "cold_copies"?}``; a graph's ``wall_ms`` (net of the per-inference overhead)
  is split over its kernels in proportion to the profiler's per-kernel durations, less the profiler's per-node
  inflation ``delta_ms``; ``cold_ms``: the same kernel with its weights out of the cache (:mod:`.cold`), where
  that can matter;
* ``{"mark": {"ms": {reference network: ms}, "nets"?: {context network: ms}, "at"}}`` lines between the graphs:
  the device's speed where they were timed (:mod:`.marks`; each graph's kernels are rescaled to the build's median
  speed when the table is read) and, every few marks, a round of the context networks;
* after the grid, the graphs with an entry far above what their neighbours say timed again (:mod:`.recheck`: a
  second line of the same id, the faster of the two kept when the table is read) and ``{"rechecked": {...}}``;
* ``{"context": {"scale", "kind_scale", "per_kernel_ms", "cache_bytes", "measured_ms", "rounds", ...}}``: the
  in-network fit on networks timed whole (:func:`context_calibration`; ``cache_bytes``: the bytes a network streams,
  weights and outputs as ``cache_counts`` says, where its kernels turn cold; ``measured_ms``: each network's
  statistic over its ``rounds``);
* ``{"done": true, "seconds"}`` when the grid is complete; optionally ``{"calibration": {...}}`` lines after it
  (whole-model correction fitted by the search side, ``autocompress.measure.predict``).

``fusion rules`` are the signatures of the named patterns (``spec["pattern"]``): what ORT on the target turned
Conv+Relu, DQ-Conv-Q, a residual block... into. numpy + onnx + onnxruntime + stdlib only.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from . import cold, graphs, lookup, marks, recheck
from .kernels import kernel_signature, list_kernels
from .target import Target, TargetError, blocks_for, feeds_for, fingerprint, load_average, statistic_of, time_session

KIND = "autocompress-latency-table"
VERSION = 9  # 9: a Transpose that moves runs of elements keyed apart (log runs: a channel shuffle on 2x2 pixels),
# shuffles timed on 1, 2 and 4 pixels; 8: channel multiples of 4 their own alignment class (the int8 fast path of a VNNI
# CPU), a float conv keyed on a fused activation other than Relu (-clip: a second pass over its output); 7: broadcasts
# keyed on the layout (NHWC squeeze-excite in int8 networks); 6: grouped convs keyed on output channels too,
# reductions their own kernels; 5: weighted kernels timed cold too, a network's cache fitted; 4: broadcasts keyed on
# elements per broadcast value too; 3: kernels of ORT's optimised graph (JSON Lines); 2: per-ONNX-op groups


# ---------------------------------------------------------------- what is timed
def patterns(n: int) -> list[dict]:
    """Small graphs whose optimised form is a fusion rule of the target (recorded, compared on the search side)."""
    out = []
    for dt in ("fp32", "int8"):
        for c in (64, 61):
            out.append(dict(op="conv", k=3, s=1, dw=False, cin=c, cout=c, h=16, n=n, dtype=dt, pattern=f"conv3x3+relu c{c} {dt}"))
            out.append(dict(op="conv", k=3, s=1, dw=True, cin=c, cout=c, h=16, n=n, dtype=dt, pattern=f"dwconv3x3+relu c{c} {dt}"))
            out.append(dict(op="residual", c=c, h=16, n=n, dtype=dt, pattern=f"residual block c{c} {dt}"))
        out.append(dict(op="gemm", cin=512, cout=10, m=n, dtype=dt, pattern=f"gemm {dt}"))
        out.append(dict(op="gap", c=64, h=8, n=n, dtype=dt, pattern=f"global average pool {dt}"))
        out.append(dict(op="add", numel=4096, n=n, dtype=dt, pattern=f"add {dt}"))
        out.append(dict(op="hardswish", numel=4096, n=n, dtype=dt, pattern=f"hardswish {dt}"))
    return out


def grid(quick: bool, n: int, dtypes: list[str]) -> list[dict]:
    """The graphs to time (each spec once per dtype), shuffled (seeded) so the ETA holds and drift averages out."""
    chans = [8, 32, 128] if quick else [8, 16, 32, 64, 128, 256, 512]
    res = [8, 32] if quick else [4, 8, 16, 32, 64]
    ks = [1, 3] if quick else [1, 3, 5, 7]
    dks = [3] if quick else [3, 5, 7]
    mac_cap = 1e8 if quick else 4e8
    pairs = [(a, b) for a in chans for b in chans if 0.25 <= b / a <= 4]
    pairs = pairs + [(3, 8), (3, 32)] if quick else [(a, b) for a, b in pairs if 0.5 <= b / a <= 2] + [(3, c) for c in (8, 16, 32, 64)]
    specs: list[dict] = []

    def conv(k, s, cin, cout, h, dw=False):
        ho = graphs._out_hw(h, k, s, k // 2)
        if dw or n * cout * ho * ho * cin * k * k <= mac_cap:
            specs.append(dict(op="conv", k=k, s=s, dw=dw, cin=cin, cout=cout, h=h, n=n))

    # 1x1 on 1x1 / 2x2: squeeze-excite; 3x3 on 2x2 / 1x1: the last stage of a network fed small images, where a
    # 3x3 conv reads its weights for four pixels (a pruned resnet18's 199-channel 3x3 at 2x2 ran 195 us here, twice
    # what the 4x4 points extrapolated to)
    tiny = {1: [1, 2], 3: [1, 2]}
    for k in ks:
        for s in (1, 2):
            for cin, cout in pairs:
                for h in res + (tiny.get(k, []) if s == 1 or k == 3 else []):
                    if not (h < k and k > 1 and h not in tiny.get(k, [])):
                        conv(k, s, cin, cout, h)
    # squeeze-excite: a 1x1 conv on one pixel from a wide count to a narrow one (4-24x fewer) and back; pruning
    # leaves both ends at every alignment (efficientnet_b0 pruned 56%: 506 -> 21 -> 506, 63 -> 2 -> 63, ...), far
    # from the square pairs above, from which the fit extrapolated them
    for c in ([64, 240, 506] if quick else [32, 64, 96, 144, 240, 480, 672, 1152, 42, 63, 105, 211, 295, 506]):
        for r in ([4, 24] if quick else [4, 12, 24]):
            conv(1, 1, c, max(1, c // r), 1)
            conv(1, 1, max(1, c // r), c, 1)
    # an inverted residual's expansion and projection: 1x1 from c to 4-6c and back (mobilenet_v2, efficientnet),
    # which pruning leaves at every alignment (145 -> 875, 139 -> 835...), outside the pairs above (ratio <= 2.5),
    # from which the fit had extrapolated them at a fifth of their time on 2x2 pixels
    if not quick:
        for c in (16, 24, 32, 40, 64, 96, 160, 12, 44, 13, 29, 61, 83, 145):
            for r in (4, 6):
                for h in (1, 2, 4, 8, 16, 32):
                    conv(1, 1, c, c * r, h)
                    conv(1, 1, c * r, c, h)
    # (5x5 / 7x7 on 2x2 pixels and 1152 channels too: efficientnet's last stage fed 64-px images, where timm's
    # efficientnet_b0 ran 30 us against 13-17 looked up from 512 channels on 4x4)
    for k in dks:
        for s in (1, 2):
            for c in chans + ([] if quick else [1152]):
                for h in res + [2]:
                    if c <= 512 or h <= 8:
                        conv(k, s, c, c, h, dw=True)
    # Channel counts that are not multiples of 16 / 8 / 4 take other kernels (no NCHWc layout for fp32, slower int8
    # paths: with VNNI only multiples of 4 take the fast one), and pruning leaves such counts everywhere: those
    # classes get their own points.
    # Up to 112x112: the early layers of a pruned model fed 224-px images (in a mobilenet_v2 pruned 40% at 224 px,
    # ORT's profiler timed the unaligned 1x1 convs at 56-112 px at 1.4x what these classes, then stopping at 32x32,
    # extrapolated, and the unaligned int8 stem at 2.3x); the MAC cap keeps the wide ones out.
    # (up to ~500: a wide layer pruned a little, e.g. resnet18's 512 to 455, whose 3x3 ran at 1.8x the 253 points
    # scaled by work)
    odd = {"a8": [24, 72], "u": [13, 61]} if quick else {"a8": [24, 40, 72, 136, 264, 392], "a4": [12, 28, 60, 124, 252, 452],
                                                         "u": [13, 29, 61, 125, 253, 455]}
    for cls_chans in odd.values():
        cpairs = [(a, b) for a in cls_chans for b in cls_chans if 0.4 <= b / a <= 2.5]
        for s in (1, 2):
            for h in ([8, 32] if quick else [1, 2, 4, 8, 16, 32, 64, 112]):
                for k in (1, 3):
                    for cin, cout in cpairs:
                        conv(k, s, cin, cout, h)
                for k in ([3] if quick else [3, 5]):
                    for c in cls_chans:
                        conv(k, s, c, c, h, dw=True)
        if not quick:  # a pruned stem: 3 input channels, an unaligned count out, on the full image (7x7: resnets)
            for cout in cls_chans[:2]:
                for h in (32, 64, 112, 224):
                    conv(3, 2, 3, cout, h)
                    conv(3, 1, 3, cout, h)
                    conv(7, 2, 3, cout, h)
    if not quick:
        for cout in (16, 48, 64):
            for h in (32, 64, 112, 224):
                conv(7, 2, 3, cout, h)
    # grouped convolutions (RegNet, ResNeXt): group widths 8 / 16 / 24
    for c in ([32, 128] if quick else [24, 32, 48, 64, 96, 128, 192, 256]):
        for gw in ([16] if quick else [8, 16, 24]):
            if c % gw == 0 and c // gw > 1:
                for s in (1, 2):
                    for h in ([8, 32] if quick else [2, 4, 8, 16, 32]):
                        specs.append(dict(op="conv", k=3, s=s, dw=False, cin=c, cout=c, h=h, n=n, g=c // gw))
    # grouped convolutions after pruning: a few channels per group, and channel counts of every alignment class
    # (a pruned RegNet keeps its groups and loses width inside each)
    if not quick:
        for g in (3, 5, 8, 13, 24):
            for gw in (3, 6, 10):
                for s in (1, 2):
                    for h in (2, 4, 8, 16, 32):
                        specs.append(dict(op="conv", k=3, s=s, dw=False, cin=g * gw, cout=g * gw, h=h, n=n, g=g))
    # grouped convolutions that widen or narrow (12 -> 24 channels per group in a hand-written net, predicted at half
    # its time from points that kept their width) and depthwise ones with a channel multiplier (one input channel
    # per group, two out)
    widths = [(c, c // gw) for c in ([32] if quick else [24, 48, 96, 192, 39, 78]) for gw in ([16] if quick else [3, 8, 12])
              if c % gw == 0 and c // gw > 1]  # (channels in, groups)
    for (c, g), s, h, cout in itertools.product(widths, (1, 2), [8] if quick else [2, 4, 8, 16, 32],
                                                ("widen",) if quick else ("widen", "narrow")):
        cout = 2 * c if cout == "widen" else c // 2
        if cout % g == 0:
            specs.append(dict(op="conv", k=3, s=s, dw=False, cin=c, cout=cout, h=h, n=n, g=g))
    for c in ([16] if quick else [16, 32, 64, 128, 24, 61]):
        for s in (1, 2):
            for h in ([8] if quick else [4, 8, 16, 32]):
                specs.append(dict(op="conv", k=3, s=s, dw=False, cin=c, cout=2 * c, h=h, n=n, g=c))
    fins = [16, 128, 1024] if quick else [8, 32, 128, 512, 1024, 2048]
    fouts = [10, 128] if quick else [10, 32, 128, 512, 1024]
    specs += [dict(op="gemm", cin=a, cout=b, m=n) for a in fins for b in fouts]
    pool_cs, pool_hs = chans + ([] if quick else [13, 61, 125, 253]), res + [2]
    for c in pool_cs:
        for h in pool_hs:
            specs.append(dict(op="gap", c=c, h=h, n=n))
            specs.append(dict(op="maxpool", c=c, h=h, n=n, k=3, s=2))
            specs.append(dict(op="reduce", c=c, h=h, n=n))  # x.mean((2, 3)): timm's squeeze-excite and head
    numels = [1024, 16384, 262144] if quick else [256, 1024, 4096, 16384, 65536, 262144, 1048576]
    for numel in numels:
        for op in ("relu", "sigmoid", "hardsigmoid", "hardswish", "add", "mul"):
            specs.append(dict(op=op, numel=numel, n=n))
        specs.append(dict(op="silu", numel=numel, n=n))
    # (n,c,h,w) x (n,c,1,1): squeeze-excite's scaling, from many channels on a few pixels to few on a wide image
    bcast_cs = [16, 128, 512] if quick else [8, 16, 32, 64, 128, 256, 512, 1024]
    bcast_hs = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
    for c in bcast_cs:
        for h in bcast_hs:
            if n * c * h * h <= 1 << 20:
                for op in ("mul", "add"):
                    specs.append(dict(op=op + "_bcast", c=c, h=h, n=n))
    for numel in numels:
        specs.append(dict(op="concat", numel=numel, n=n))  # fp32 Concat, int8 QLinearConcat
        specs.append(dict(op="shuffle", numel=numel, n=n))  # a dynamic-batch channel shuffle: int64 size arithmetic
    for numel in numels[:5]:  # ... on the few pixels of a network's last stages: its Transpose moves runs of h*w
        for h in (1, 2, 4):
            if _ew_shape(n, numel)[2] != h and numel // (n * h * h) >= 4:
                specs.append(dict(op="shuffle", numel=numel, n=n, h=h))
    out = [dict(sp, dtype=dt) for sp in specs for dt in dtypes]
    out += [dict(op=op, numel=numel, n=n, dtype="fp32") for numel in numels for op in ("split", "slice", "transpose", "shape")]
    # float convs with ReLU6 (Clip) fused, as mobilenet_v2's expansions, depthwise convs and stem (a held-out mobilenet
    # expanding 3x came out +48% from 6x points alone: the fit could not tell cin from cout): MLAS applies an
    # activation other than Relu as a second pass over the output (kernels.fused_act), 1.2-1.3x the conv with Relu
    # (the int8 network folds it into its quantization range)
    clip: list[dict] = []
    for c in ([16] if quick else [16, 24, 32, 64, 96, 160, 12, 28, 60, 13, 29, 61, 145]):
        for h in ([8] if quick else [2, 4, 8, 16, 32, 64]):
            for r in ([6] if quick else [1, 3, 6]):  # expansions of 3-6x and square ones: cin and cout apart in the fit
                clip.append(dict(op="conv", k=1, s=1, dw=False, cin=c, cout=r * c, h=h, n=n))
            for s_ in (1, 2):
                clip.append(dict(op="conv", k=3, s=s_, dw=True, cin=6 * c, cout=6 * c, h=h, n=n))
    for cout in ([] if quick else [16, 32, 13, 29]):
        for h in (32, 64, 112, 224):
            clip.append(dict(op="conv", k=3, s=2, dw=False, cin=3, cout=cout, h=h, n=n))
    out += [dict(sp, act="Clip", dtype="fp32") for sp in clip
            if sp["dw"] or n * sp["cout"] * graphs._out_hw(sp["h"], sp["k"], sp["s"], sp["k"] // 2) ** 2 * sp["cin"] * sp["k"] ** 2 <= mac_cap]
    if "int8" in dtypes:  # an int8 network's mean, run on its NHWC tensors between DequantizeLinear and QuantizeLinear,
        # and its squeeze-excite scaling, a QLinearMul of (n, h, w, c) by (n, 1, 1, c)
        # and the global pool after an NHWC QLinearConv (looked up from the NCHW points, it came out at half its share of
        # an int8 efficientnet_b0)
        out += [dict(op=op, c=c, h=h, n=n, dtype=dt) for op, dt in (("reduce_nhwc", "fp32"), ("gap_nhwc", "int8"))
                for c in pool_cs for h in pool_hs]
        out += [dict(op="mul_bcast", c=c, h=h, n=n, nhwc=True, dtype="int8")
                for c in bcast_cs + ([] if quick else [13, 61, 253]) for h in bcast_hs if n * c * h * h <= 1 << 20]
    out += [dict(op=q, numel=numel, n=n, dtype="fp32") for numel in numels for q in ("quantize", "dequantize")
            if "int8" in dtypes]
    random.Random(0).shuffle(out)
    seen: set[str] = set()  # a spec two families ask for (a 7x7 stem, a 1x1 expansion) is timed once
    return [s for s in [s for s in patterns(n) if s["dtype"] in dtypes] + out
            if not (spec_id(s) in seen or seen.add(spec_id(s)))]


def spec_id(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _ew_shape(n, numel, h=None):
    """(n, c, h, h) holding ``numel`` elements: the image as wide as leaves 16 channels (at most 64x64), or ``h``."""
    per = max(1, numel // n)
    if h is None:
        h = 1
        while h * h * 16 <= per and h < 64:
            h *= 2
    return (n, max(1, per // (h * h)), h, h)


def build_graph(spec: dict) -> bytes:
    op, int8 = spec["op"], spec.get("dtype") == "int8"
    if op == "conv":
        # fp32: Conv+Relu (ORT fuses it); int8: DQ -> Conv -> Q (the quantizer folds the Relu into Q's range)
        return graphs.conv_graph(spec["n"], spec["cin"], spec["cout"], spec["h"], spec["k"], spec["s"], spec["dw"], int8,
                                 act=None if int8 else spec.get("act", "Relu"), groups=spec.get("g", 1))
    if op == "residual":
        return graphs.residual_graph(spec["n"], spec["c"], spec["h"], int8)
    if op == "gemm":
        return graphs.gemm_graph(spec["m"], spec["cin"], spec["cout"], int8)
    if op in ("reduce", "reduce_nhwc"):
        return graphs.reduce_graph(spec["n"], spec["c"], spec["h"], int8, nhwc=op == "reduce_nhwc")
    if op == "gap_nhwc":  # int8: the pool after a 1x1 QLinearConv, channels-last as ORT runs it there
        return graphs.conv_graph(spec["n"], spec["c"], spec["c"], spec["h"], 1, 1, False, True, act=None, pool_after=True)
    if op in ("gap", "maxpool"):
        return graphs.pool_graph(op, spec["n"], spec["c"], spec["h"], int8, spec.get("k", 3), spec.get("s", 2))
    if op in ("quantize", "dequantize"):
        return graphs.quant_graph(op, _ew_shape(spec["n"], spec["numel"]))
    if op == "silu":
        return graphs.silu_graph(_ew_shape(spec["n"], spec["numel"]), int8)
    if op == "concat":
        return graphs.concat_graph(_ew_shape(spec["n"], spec["numel"]), int8)
    if op == "shuffle":
        return graphs.shuffle_graph(_ew_shape(spec["n"], spec["numel"], spec.get("h")), int8)
    if op in ("split", "slice", "transpose", "shape"):
        return graphs.layout_graph(op, _ew_shape(spec["n"], spec["numel"]))
    if op.endswith("_bcast"):
        return graphs.bcast_graph(op[: -len("_bcast")], (spec["n"], spec["c"], spec["h"], spec["h"]), int8,
                                  nhwc=bool(spec.get("nhwc")))
    return graphs.eltwise_graph(op, _ew_shape(spec["n"], spec["numel"]), int8)


# ---------------------------------------------------------------- timing one graph
def _timing(quick: bool, statistic: str = "median") -> tuple[int, float]:
    """(blocks, ms per block) a graph is timed with. For a low quantile (the two-thread ``cpu`` profile's p10) four
    times the blocks at half the length: another process on a shared core slows a two-thread kernel 2-5x for tens of
    milliseconds at a time, and with the median of five 5-ms blocks two sessions of the same graph came out more than
    10% apart for 28% / 6% of a grid sample (two runs of ``benchmarks/bench_grid_timing.py``), with the p10 of twenty
    2.5-ms blocks 4% / 2% (benchmarks/README.md, twenty-seventh session)."""
    n, ms = (3, 2.0) if quick else (5, 5.0)
    return (n, ms) if statistic == "median" else (blocks_for(statistic, 2 * n), ms / 2)


def time_whole(model: bytes, target: Target, quick: bool) -> float:
    """One fresh session's time for the model with the statistic the target reports (its latency.statistic): every
    graph of a build -- the grid, the speed marks, the context networks that set the table's level -- is timed with
    the statistic a model is measured with there."""
    sess = target.session(model)
    n_blocks, block_ms = _timing(quick, target.statistic)
    return time_session(sess, feeds_for(sess), n_blocks, block_ms, clock=target.clock, statistic=target.statistic)


def time_sessions(model: bytes, target: Target, quick: bool, n: int = 3) -> float:
    """``n`` fresh sessions' times (:func:`time_whole`) taken together as the blocks within each are, with the target's
    statistic: the median, or for the two-thread ``cpu`` profile's p10 the undisturbed one (a session the shared
    machine ran slow throughout is left out as a slow block is). Every repeated timing of a build goes through here."""
    return float(statistic_of(np.array([time_whole(model, target, quick) for _ in range(n)]), target.statistic))


COLD_BYTES = 4 << 20  # copies of a weighted op hold at least this many weight bytes (beyond a core's L2)


def copies_for(spec: dict) -> int:
    """How many side-by-side copies of a spec's op a timed graph holds (graphs.replicate): enough that their
    weights together leave the L2 cache as a network's do, at most 8, and 2 for ops heavy enough on their own
    (the warm entry; :mod:`.cold` times the same op again with its weights out of the last-level cache too)."""
    if spec.get("pattern"):
        return 1
    wbytes = cold.weight_bytes(spec)
    if not wbytes:
        return 4
    params = wbytes // (1 if spec.get("dtype") == "int8" else 4)  # each weight is used once per output pixel / row
    reuse = spec["n"] * graphs._out_hw(spec["h"], spec["k"], spec["s"], spec["k"] // 2) ** 2 if spec["op"] == "conv" else spec["m"]
    macs = params * reuse
    k = -(-COLD_BYTES // max(wbytes, 1))
    return int(max(2, min(8, k, max(2, 2e7 // max(macs, 1)))))


def time_graph(model: bytes, target: Target, *, quick: bool, overhead_ms: float, delta_ms: float) -> dict:
    """Wall time of the graph (net of the overhead) split over the kernels ORT runs for it, in proportion to the
    profiler's per-kernel durations less its per-node inflation; kernels of the same group and features (the
    copies) are averaged into one entry."""
    kernels = list_kernels(model, target, runs=3 if quick else 5)
    net = max(time_whole(model, target, quick) - overhead_ms, 0.0)
    merged: dict = {}
    for k, ms in zip(kernels, split_wall(kernels, net, delta_ms)):
        key = (k["group"], tuple(round(f, 5) for f in k["feats"]))
        merged.setdefault(key, [k["work"], [], []])
        merged[key][1].append(ms)
        merged[key][2].append(k["us"])
    return {"wall_ms": net, "signature": kernel_signature(kernels), "n_kernels": len(kernels),
            "kernels": [{"group": g, "feats": list(f), "work": wk, "ms": float(np.mean(ms)), "n": len(ms),
                         "us": round(float(np.median(us)), 2)} for (g, f), (wk, ms, us) in merged.items()]}


def time_cold(spec: dict, model: bytes, row: dict, target: Target, table: dict) -> None:
    """The spec's weighted kernel again with its weights out of the cache (:mod:`.cold`), where that can matter:
    ``cold_ms`` = its warm entry x the ratio of the profiler's durations (copies holding 1.5x the cache, one
    profiled session: the profiler alone, as the ratio of two of its own figures)."""
    op = max(row["kernels"], key=lambda k: k["ms"])  # the conv / gemm itself (not a reorder or transpose)
    if not cold.worth_timing_cold(spec, op["ms"]):
        return
    n = cold.cold_copies(spec, table["cache_bytes"])
    key = (op["group"], tuple(op["feats"]))
    us = [k["us"] for k in list_kernels(graphs.replicate(model, n), target, runs=2)
          if (k["group"], tuple(round(f, 5) for f in k["feats"])) == key]
    if us and op.get("us"):
        d = table["delta_ms"] * 1e3
        op["cold_ms"] = op["ms"] * max(float(np.median(us)) - d, 0.05 * float(np.median(us))) / max(op["us"] - d, 0.05 * op["us"])
        row["cold_copies"] = n


def time_spec(spec: dict, target: Target, table: dict, quick: bool) -> dict:
    """One grid graph's table line: its op replicated (:func:`copies_for`), timed whole and split over its kernels,
    its weighted kernel timed cold too where that matters."""
    model = build_graph(spec)
    row = time_graph(graphs.replicate(model, copies_for(spec)), target, quick=quick,
                     overhead_ms=table["overhead_ms"], delta_ms=table["delta_ms"])
    if table.get("cache_bytes"):
        time_cold(spec, model, row, target, table)
    return {"id": spec_id(spec), "spec": spec, **row}


def split_wall(kernels: list[dict], net_ms: float, delta_ms: float) -> list[float]:
    """A graph's wall time (net of the per-inference overhead) split over its kernels in proportion to the profiler's
    durations less its per-node inflation (each kept at >= 5% of its own duration)."""
    w = [max(k["us"] / 1e3 - delta_ms, 0.05 * k["us"] / 1e3) for k in kernels]
    tot = sum(w) or 1.0
    return [net_ms * wi / tot for wi in w]


def _base_costs(target: Target, quick: bool) -> dict:
    """Per-inference overhead (an Identity graph), per-node cost and the profiler's per-node inflation (a chain)."""
    n_nodes = 32
    ov = time_sessions(graphs.identity_graph((target.batch_size, 3, 32, 32)), target, quick)
    chain = graphs.chain_graph(n_nodes)
    chain_net = max(time_sessions(chain, target, quick) - ov, 0.0)
    prof = sum(k["us"] for k in list_kernels(chain, target, runs=20)) / 1e3
    return {"overhead_ms": ov, "node_ms": chain_net / n_nodes, "delta_ms": (prof - chain_net) / n_nodes}


# ---------------------------------------------------------------- reading, checking
def ort_release(version: str) -> str:
    """'1.32' of '1.32.0': fusions and kernels change between ONNX Runtime 1.x releases, so this is the unit."""
    return ".".join(str(version).split(".")[:2])


def read(path) -> dict:
    """{header..., "lines": [graph lines], "done": bool, "calibration": last calibration or None}."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise TargetError(f"{p}: cannot read the lookup table ({e.strerror or e}); rebuild it with "
                          "`autocompress profile-device`") from None
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(text.splitlines()) - 1:  # a line cut by an interruption: dropped, the rerun redoes it
                break
            raise TargetError(f"{p}: line {i + 1} is not JSON; not an autocompress lookup table, rebuild it with "
                              "`autocompress profile-device`") from None
    if rows and isinstance(rows[0], dict) and rows[0].get("kind") == KIND and rows[0].get("version") != VERSION:
        raise TargetError(f"{p}: a lookup table of version {rows[0].get('version')}, this autocompress reads version "
                          f"{VERSION} (its kernels are keyed otherwise); rebuild it on the target with "
                          "`autocompress profile-device`")
    if not rows or not isinstance(rows[0], dict) or rows[0].get("kind") != KIND:
        raise TargetError(f"{p}: not an autocompress lookup table (version {VERSION}); rebuild it with "
                          "`autocompress profile-device`")
    table = dict(rows[0])
    table["lines"], table["marks"] = [], []
    for r in rows[1:]:
        if "id" in r:
            table["lines"].append(r)
        elif "mark" in r:  # where it sits among the graphs: the number of graphs before it
            table["marks"].append({**r["mark"], "pos": len(table["lines"])})
    table["done"] = any(r.get("done") for r in rows[1:])
    table["rechecked"] = next((r["rechecked"] for r in rows[1:] if "rechecked" in r), None)
    ctx = [r["context"] for r in rows[1:] if "context" in r]
    table["context"] = ctx[-1] if ctx else None
    cals = [r["calibration"] for r in rows[1:] if "calibration" in r]
    table["calibration"] = cals[-1] if cals else None
    table["path"] = str(p)
    return table


def fusion_rules(table: dict) -> dict[str, list[str]]:
    return {ln["spec"]["pattern"]: ln["signature"] for ln in table["lines"] if ln["spec"].get("pattern")}


def rebuild_hint(table: dict) -> str:
    return f"rebuild it on the target: autocompress profile-device --profile {table['target_name']} --out <new>.yaml"


def check_compatible(table: dict, target: Target) -> None:
    """Refuse (one line, how to rebuild) a table from another ONNX Runtime release or execution provider, or
    built with other session settings than the target's; a table still being built is refused too."""
    src = table.get("path", "lookup table")
    ep, here_ep = table["execution_provider"], target.execution_provider
    if ep != here_ep:
        raise TargetError(f"{src}: built for {ep}, the profile runs {here_ep}; {rebuild_hint(table)}")
    if ort_release(table["onnxruntime"]) != ort_release(ort.__version__):
        raise TargetError(f"{src}: built with onnxruntime {table['onnxruntime']}, this machine has {ort.__version__} "
                          f"(kernels and fusions differ between releases); {rebuild_hint(table)} with onnxruntime "
                          f"{ort_release(ort.__version__)}.x")
    want, have = target.settings(), table["target"]
    diff = [k for k in ("intra_op_threads", "inter_op_threads", "graph_optimization_level", "execution_mode",
                        "batch_size") if want[k] != have.get(k)]
    if diff:
        k = diff[0]
        raise TargetError(f"{src}: built with {k}={have.get(k)!r}, the profile sets {want[k]!r}; {rebuild_hint(table)}")
    if not table["done"]:
        raise TargetError(f"{src}: incomplete ({len(table['lines'])} graphs timed); run the same profile-device command "
                          "again on the target to finish it")


# ---------------------------------------------------------------- building (resumable)
class Progress:
    """``done/total graphs, elapsed, ETA`` on one rewritten line on a terminal, a line per 10% otherwise."""

    def __init__(self, total: int, done: int, log: Callable, stream=None):
        self.total, self.done0, self.done, self.log = total, done, done, log
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._next = 0.1

    def step(self) -> None:
        self.done += 1
        el = time.perf_counter() - self.t0
        rate = (self.done - self.done0) / max(el, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        msg = f"  {self.done}/{self.total} graphs, {el:.0f} s elapsed, ETA {eta:.0f} s"
        if self.tty:
            self.stream.write("\r" + msg + ("\n" if self.done == self.total else ""))
            self.stream.flush()
        elif self.done / self.total >= self._next or self.done == self.total:
            self.log(msg)
            while self._next <= self.done / self.total:
                self._next += 0.1


def build(target: Target, path, *, quick: bool = False, log: Callable = print, limit: int | None = None,
          specs: list[dict] | None = None) -> dict:
    """Time the grid on this machine and append it to ``path`` (JSON Lines); an existing file for the same target
    and ONNX Runtime release is continued (graphs already there are not redone). ``limit``: stop after that many
    new graphs, ``specs``: time these (plus the fusion patterns) instead of the grid (both for tests). Returns the
    table (``read(path)``)."""
    target.check_available()
    p = Path(path)
    t0 = time.perf_counter()
    dtypes = ["fp32"] + (["int8"] if target.int8 else [])
    timing = dict(zip(("blocks", "block_ms"), _timing(quick, target.statistic)), statistic=target.statistic)
    if p.is_file() and p.stat().st_size > 0:
        raw = p.read_bytes()
        if not raw.endswith(b"\n"):  # a line cut by a kill: dropped before appending, the graph is redone
            p.write_bytes(raw[: raw.rfind(b"\n") + 1])
        table = read(p)
        if table["target"] != target.settings() or ort_release(table["onnxruntime"]) != ort_release(ort.__version__) \
                or table["quick"] != quick or table.get("timing") != timing:
            raise TargetError(f"{p}: a table for other settings (target, onnxruntime, --quick or how its graphs are "
                              "timed) is there; write to another --out or delete it")
        done = {ln["id"] for ln in table["lines"]}
        log(f"continuing {p}: {len(done)} graphs already timed")
        if table["done"]:
            return table
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        header = {"kind": KIND, "version": VERSION, "target_name": target.name, "target": target.settings(),
                  "onnxruntime": ort.__version__, "execution_provider": target.execution_provider,
                  "fingerprint": fingerprint(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "quick": quick, "clock": target.clock, "timing": timing,
                  **_base_costs(target, quick)}
        header.update(cold.cache_knee(lambda m, n: max(time_sessions(m, target, quick)
                                                       - header["overhead_ms"], 0.0) / n, quick))
        p.write_text(json.dumps(header) + "\n")
        table, done = read(p), set()
        level = cold.mid_level(table)
        log(f"lookup table {p}: overhead {table['overhead_ms'] * 1e3:.1f} us per inference, "
            f"{table['node_ms'] * 1e3:.2f} us per node, weights out of a core's cache from "
            + (f"{level['lo'] / 2**20:.1f}-{level['hi'] / 2**20:.1f} MiB of them" if level else "(no step seen)")
            + ", out of the last level from "
            + (f"{table['cache_bytes'] / 2**20:.1f} MiB" if table.get("cache_bytes") else "(no step seen: nothing timed cold)"))
    all_specs = grid(quick, target.batch_size, dtypes) if specs is None else patterns(target.batch_size) + list(specs)
    spec_of = {spec_id(s): s for s in all_specs}
    specs = [s for s in all_specs if spec_id(s) not in done and s.get("dtype", "fp32") in dtypes]
    prog = Progress(len(done) + len(specs), len(done), log)
    todo = specs if limit is None else specs[:limit]
    context = fit_nets(target, quick)
    sentinels = marks.sentinels(context, quick)

    def mark(f, with_nets: bool = False) -> None:
        m = marks.take(target, quick, sentinels, time_sessions=time_sessions, context=context if with_nets else None)
        f.write(json.dumps({"mark": m}) + "\n")
        f.flush()

    def time_all(todo: list[dict], prog: Progress) -> None:
        with p.open("a") as f:
            mark(f)  # where this part of the build (or its resumption) starts
            for i, spec in enumerate(todo, 1):
                f.write(json.dumps(time_spec(spec, target, table, quick)) + "\n")
                f.flush()
                prog.step()
                if i % marks.EVERY == 0 or i == len(todo):  # a round of the context networks every few marks
                    mark(f, with_nets=i % (marks.EVERY * marks.ROUND_EVERY) == 0 and i < len(todo))

    if todo:
        time_all(todo, prog)
    if len(todo) == len(specs):
        grid_done = read(p)
        if grid_done["rechecked"] is None:
            again = recheck.suspects(grid_done)
            if again:
                log(f"timing again {len(again)} graphs with an entry over {recheck.RATIO}x its neighbours' fit")
                time_all([s for s in (spec_of.get(i) for i in recheck.order(again)) if s], Progress(len(again), 0, log))
            summary = recheck.summary(read(p), again)
            append_line(p, {"rechecked": summary})
            log(recheck.describe(summary))
            grid_done = read(p)
        log(marks.describe(marks.table_factors(grid_done), len(grid_done["marks"]),
                           marks.slow_spells(grid_done["marks"], marks.low_quantile(grid_done))))
        ctx = context_calibration(grid_done, target, quick=quick, log=log)
        append_line(p, {"context": ctx})
        append_line(p, {"done": True, "seconds": round(time.perf_counter() - t0, 1), "load_avg_end": load_average()})
    table = read(p)
    if table["done"]:
        rules = fusion_rules(table)
        kept = lookup.kept_lines(table)
        twice = f" ({len(table['lines']) - len(kept)} timed twice)" if len(table["lines"]) > len(kept) else ""
        log(f"lookup table: {sum(len(ln['kernels']) for ln, _ in kept)} kernel entries from {len(kept)} graphs{twice}, "
            f"{len(rules)} fusion rules")
    return table


LEVEL_FAMILIES = ("deep ", "wide ")  # the context networks whose fit sets a table's in-network level


def context_nets(batch: int, int8: bool) -> list[tuple[str, bytes]]:
    """Networks (not the held-out ones of ``--check``) timed whole after the grid: residual, inverted-residual,
    squeeze-excite + SiLU and channel-shuffle families, with few large kernels and many small ones. The deep and the
    wide (weight-heavy) ones set the table's in-network level (``LEVEL_FAMILIES``, :func:`context_calibration`); the
    shallow ones are the device's reference speed (the speed marks time two of them, ``--check`` all)."""
    from . import nets

    specs = [("resnet w24-48-96 32px", lambda q: nets.resnet([24, 48, 96], 1, 32, q, 11, batch)),
             ("resnet w20-44-88 32px", lambda q: nets.resnet([20, 44, 88], 2, 32, q, 12, batch)),
             ("mobilenet w16-32-48-96 e4 32px", lambda q: nets.mobilenet([16, 32, 48, 96], 4, 32, q, 13, batch)),
             ("mobilenet w12-20-36-68 e3 64px", lambda q: nets.mobilenet([12, 20, 36, 68], 3, 64, q, 14, batch)),
             ("effnet w16-24-40-80 e4 32px", lambda q: nets.effnet([16, 24, 40, 80], 4, 32, q, 15, batch)),
             ("effnet w12-20-36 e6 64px", lambda q: nets.effnet([12, 20, 36], 6, 64, q, 16, batch)),
             ("shufflenet w24-48-96-192 32px", lambda q: nets.shufflenet([24, 48, 96, 192], 4, 32, q, 17, batch)),
             ("shufflenet w16-40-80 64px", lambda q: nets.shufflenet([16, 40, 80], 3, 64, q, 18, batch)),
             # as deep as the networks people prune (five or six stages, down to 2x2 pixels), with ReLU6 in the
             # inverted residuals: the shallow ones above were predicted within a few % by tables whose kernels
             # priced such networks 17-29% low (Xeon with AVX512, benchmarks/README.md, twenty-ninth session)
             ("deep mobilenet w16-24-32-64-96-160 e6 64px", lambda q: nets.mobilenet([16, 24, 32, 64, 96, 160], 6, 64, q, 25, batch)),
             ("deep effnet w16-24-40-80-112-192 e6 64px", lambda q: nets.effnet([16, 24, 40, 80, 112, 192], 6, 64, q, 26, batch)),
             ("deep shufflenet w24-58-116-232 64px", lambda q: nets.shufflenet([24, 58, 116, 232], 4, 64, q, 27, batch)),
             ("deep resnet w29-61-125-253 b2 32px", lambda q: nets.resnet([29, 61, 125, 253], 2, 32, q, 28, batch)),
             # weight-heavy (1-42 MB): where a network's weights leave the cache (cold.fit_cache)
             ("wide resnet w32-64-128-256 16px", lambda q: nets.resnet([32, 64, 128, 256], 1, 16, q, 19, batch)),
             ("wide resnet w40-80-160-320 16px", lambda q: nets.resnet([40, 80, 160, 320], 1, 16, q, 20, batch)),
             ("wide resnet w44-92-188-380 16px", lambda q: nets.resnet([44, 92, 188, 380], 1, 16, q, 21, batch)),
             ("wide mobilenet w48-96-160-320 e6 32px", lambda q: nets.mobilenet([48, 96, 160, 320], 6, 32, q, 22, batch)),
             ("wide resnet w64-128-256-512 16px", lambda q: nets.resnet([64, 128, 256, 512], 1, 16, q, 23, batch)),
             ("wide resnet w128-256-512-512 16px", lambda q: nets.resnet([128, 256, 512, 512], 1, 16, q, 24, batch))]
    return [(f"{n} {dt}", fn(dt == "int8")) for n, fn in specs for dt in (("fp32", "int8") if int8 else ("fp32",))]


def fit_nets(target: Target, quick: bool) -> list[tuple[str, bytes]]:
    """The context networks a build times: all of them, or the first (one per dtype) in a quick build."""
    nets_ = context_nets(target.batch_size, target.int8)
    return (nets_[:2] if target.int8 else nets_[:1]) if quick else nets_


def fit_context(points: list[tuple[float, float, int]]) -> tuple[float, float]:
    """(scale, per-kernel ms) from (measured net of the overhead, sum of the kernels' table entries, kernel count) of
    whole networks: measured = scale * sum + per_kernel * count, least squares on the relative error. With fewer than
    three networks, or a fit that makes the per-kernel cost negative, the median ratio alone (per-kernel 0)."""
    ratio = float(np.median([m / max(p, 1e-9) for m, p, _ in points]))
    if len(points) < 3:
        return ratio, 0.0
    meas = np.array([m for m, _, _ in points])
    a = np.array([[p, k] for _, p, k in points], float) / meas[:, None]
    (scale, per_kernel), *_ = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)
    if per_kernel < 0 or scale <= 0:
        return ratio, 0.0
    return float(scale), float(per_kernel)


KIND_PRIOR_MS = 0.1  # a kind's ratio is pulled toward 1 by its entries' total against this (ms, all networks)


def fit_kinds(rows: list[tuple[str, float, float]], prior_ms: float = KIND_PRIOR_MS) -> dict[str, float]:
    """Each kernel kind's in-network ratio to all kernels' from (kind, table entry ms, share of the network's wall
    time ms) of the kernels of whole networks (the share: ORT's profiler durations less its per-node inflation,
    scaled to the wall time, :func:`split_wall`): ``r = 1 + w * (share_k / entry_k / (share / entry) - 1)``, ``w =
    entry_k / (entry_k + prior_ms)``, kept within 0.5-2. On the deep context networks of a Xeon, a residual
    QLinearAdd took 1.6x its entry relative to the rest (its skip input comes from far back, not from the kernel
    before it), a depthwise conv 1.2x, the head's Gemm and the int8 edges' Transpose 2x; QLinearConcat 0.8x
    (benchmarks/README.md, thirty-first session)."""
    tot: dict[str, list[float]] = {}
    for kind, entry, share in rows:
        t = tot.setdefault(kind, [0.0, 0.0])
        t[0] += entry
        t[1] += share
    entry_all, share_all = sum(t[0] for t in tot.values()), sum(t[1] for t in tot.values())
    if entry_all <= 0 or share_all <= 0:
        return {}
    level = share_all / entry_all
    out = {}
    for kind, (entry, share) in tot.items():
        if entry > 0:
            w = entry / (entry + prior_ms)
            out[kind] = float(min(max(1.0 + w * (share / entry / level - 1.0), 0.5), 2.0))
    return out


def context_calibration(table: dict, target: Target, *, quick: bool, log: Callable = print,
                        stored: dict[str, float] | None = None) -> dict:
    """What kernels cost inside a network rather than alone (weights and activations out of cache, layout
    hand-offs, the executor between nodes): networks (``context_nets``) are timed whole on the target and, per
    dtype, ``measured - overhead = scale * (sum of their kernels) + per_kernel * (number of kernels)`` is fitted
    (:func:`fit_context`), each kernel's entry first weighed by its kind's ratio to the rest in those networks'
    profiles (:func:`fit_kinds`), and each warm or cold by the network's weight bytes against the cache that
    explains the networks best (:func:`.cold.fit_cache`). Measured on an AVX2 EPYC: int8 networks with many small
    kernels (SiLU, squeeze-excite, channel shuffle) ran ~1-4 us per kernel over the sum of their kernels timed alone
    (benchmarks/README.md). A network's time is the target's statistic of its rounds during the grid and the one
    taken here (:mod:`.marks`, each at the build's median speed), kept (``measured_ms``) as the device's speed at the
    build; the whole-model calibration, where torch is, times them again when it sets the level last, and ``check``
    compares with the later of the two. ``stored``: each network's time as a build kept it (``measured_ms``), taken
    as is instead of timing (``benchmarks/refit_context.py``: a fit taken again on one build's timings)."""
    from .lookup import breakdown, kernel_kind, model_dtype, moves_data

    bare = {**table, "context": None}
    nets_ = fit_nets(target, quick)
    low = marks.low_quantile(table)
    rounds = marks.context_rounds(table.get("marks") or [], low)
    at_end = (marks.mark_factors(table.get("marks") or [], low) or [1.0])[-1]  # taken right after the last mark
    measured: dict[str, float] = {}
    last: list[float] = []  # this moment's time over the rounds' statistic, per network
    points = []
    for name, model in nets_:
        ks = list_kernels(model, target, runs=3 if quick else 30)  # the profile splits the wall time (fit_kinds)
        warm = [ms for *_, ms, _ in breakdown(model, bare, kernels=ks, cold=0.0)]
        cold_ = [ms for *_, ms, _ in breakdown(model, bare, kernels=ks, cold=1.0)]
        if stored:
            now = meas = measured[name] = stored[name]
        else:
            now = time_sessions(model, target, quick) * at_end
            meas = measured[name] = float(statistic_of(np.array([now, *rounds.get(name, [])]), target.statistic))
        last.append(now / meas)
        points.append({"name": name, "dtype": model_dtype(ks), "measured": meas - table["overhead_ms"],
                       "n": sum(moves_data(k) for k in ks), "warm": warm, "cold": cold_,
                       "bytes": cold.stream_bytes(cold.model_weight_bytes(model), ks),
                       "kinds": [kernel_kind(k) if moves_data(k) else None for k in ks],
                       "shares": split_wall(ks, meas - table["overhead_ms"], table["delta_ms"])})
        log(f"  context {name}: measured {meas:.3f} ms, sum of kernels {sum(warm):.3f} ms warm, {sum(cold_):.3f} ms "
            f"cold ({len(ks)} kernels, {points[-1]['bytes'] / 2**20:.1f} MiB of weights and outputs)")
    # the level is set on the networks that look like the ones people prune (as deep, and weight-heavy); the shallow
    # ones are timed as the device's reference speed. Fitted on all 36, the shallow ones (3-4 stages on 32 px, some
    # 0.1 ms in all, predicted 6-12% over) held the level of the deep ones 3-12% under, and 40 held-out pruned zoo
    # models came out 10% low (50% within +-10%); on the deep and wide ones alone 75% (benchmarks/README.md,
    # thirtieth session)
    points = [pt for pt in points if pt["name"].startswith(LEVEL_FAMILIES)] or points
    cache = cold.fit_cache(points, fit_context)
    fits, by_kind = {}, {}
    for dt in sorted({p["dtype"] for p in points}):
        pts = [p for p in points if p["dtype"] == dt]
        entries = [[cold.blend(w, c, cold.coldness(p["bytes"], cache)) for w, c in zip(p["warm"], p["cold"])] for p in pts]
        by_kind[dt] = r = fit_kinds([(kd, e, sh) for p, es in zip(pts, entries)
                                     for kd, e, sh in zip(p["kinds"], es, p["shares"]) if kd is not None])
        fits[dt] = fit_context([(p["measured"], sum(e * r.get(kd, 1.0) for kd, e in zip(p["kinds"], es)), p["n"])
                                for p, es in zip(pts, entries)])
    n_rounds = 1 + max((len(v) for v in rounds.values()), default=0)
    log(f"context networks: each the {target.statistic} of {n_rounds} rounds across the build at its median speed"
        + ("; as the build stored them" if stored else
           f"; the final round ran x{min(last):.3f}-x{max(last):.3f} that" if n_rounds > 1 else ""))
    log(f"in network ({len(points)} networks): "
        + ", ".join(f"{dt} x{s:.3f} + {k * 1e3:.2f} us per kernel (kinds "
                    + ", ".join(f"{kd} x{v:.2f}" for kd, v in sorted(by_kind[dt].items(), key=lambda kv: -abs(np.log(kv[1])))[:4])
                    + ")" for dt, (s, k) in fits.items())
        + (f"; weights out of the cache from {cache / 2**20:.1f} MiB of weights and outputs" if cache
           else "; every network warm"))
    return {"scale": {dt: s for dt, (s, _) in fits.items()}, "kind_scale": by_kind,
            "per_kernel_ms": {dt: k for dt, (_, k) in fits.items()}, "cache_bytes": cache, "nets": [n for n, _ in nets_],
            "measured_ms": measured,  # the device's speed at the build (check re-times)
            "rounds": n_rounds, "cache_counts": cold.STREAM}


def append_line(path, row: dict) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
