"""Reference points a front is read against: "just quantize it" and the search space's seeds.

* :func:`int8_reference`: ONNX Runtime static int8 of the fp32 baseline (the product's own quantizer,
  the profile's preferred int8 form), its accuracy on the validation split and its latency measured
  interleaved with the baseline, in the process that measured the baseline. Stored in ``baseline.json``
  (key ``int8_reference``) beside the baseline and reused while the baseline is.
* :func:`seed_label`: a short name for a seed setting; the trials the seeds produced carry it
  (``TrialRecord.seed``), so the report can mark them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from dataclasses import asdict

from .config import SeedCandidate
from .records import QuantSpec

KEY = "int8_reference"
SEED_ATTR = "seed"  # Optuna user attribute of an enqueued seed trial: its label
FILE = "int8_reference.onnx"


def seed_label(seed: SeedCandidate) -> str:
    """``uniform 80% + int8, KD 8 ep`` / ``int8 alone`` / ``family + fp32`` (or the seed's own ``label``)."""
    if seed.label:
        return seed.label
    if seed.student != "pruned":
        head = seed.student
    elif isinstance(seed.sparsity, dict):
        head = "per-stage " + "/".join(f"{v:.0%}" for v in seed.sparsity.values())
    elif seed.sparsity > 0:
        head = f"uniform {seed.sparsity:.0%}"
    else:
        head = ""
    bits = f"{seed.bits} ({seed.keep_fp32} fp32)" if seed.bits == "int8" and seed.keep_fp32 else seed.bits
    if seed.student == "pruned" and seed.drop:
        head = (head + ", " if head else "") + f"{seed.drop} block{'s' if seed.drop > 1 else ''} dropped"
    text = f"{head} + {bits}" if head else f"{bits} alone"
    recipe = ", ".join(f"{n} {v:g}" for n, v in (("T", seed.temperature), ("alpha", seed.alpha)) if v is not None)
    return (text + (f", KD {seed.epochs} ep" if seed.epochs and (head or seed.student != "pruned") else "")
            + (f" ({recipe})" if recipe else ""))


def int8_reference(store, baseline, data, profile, shape4, *, seed: int, metric=None, metric_direction: str = "maximize",
                   table=None, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The int8-alone point of this run: reused from ``baseline.json`` when there, else measured and stored.

    Returns None when the profile cannot run int8; a quantizer or runtime failure is recorded as
    ``{"error": ...}`` (the run goes on: a missing reference is not a reason to stop a search)."""
    saved = store.read_baseline() or {}
    out_path = store.models_dir / FILE
    ref = saved.get(KEY)
    if ref and (ref.get("error") or out_path.is_file()):
        if not ref.get("error"):
            log(f"int8 alone (reference): reused ({ref['accuracy']:.2%}, {ref['speedup']:.2f}x, {ref['size_mb']:.2f} MB)")
        return ref
    if "int8" not in profile.precisions:
        return None
    ref = _measure(baseline, data, profile, shape4, out_path, seed=seed, metric=metric, table=table,
                   sign=-1.0 if metric is not None and metric_direction == "minimize" else 1.0)
    store.write_baseline({**saved, KEY: ref})
    if ref.get("error"):
        log(f"int8 alone (reference): not measured ({ref['error']})")
    else:
        q = ref["quant"]
        if q.get("reduce_range") and profile.int8_reduce_range is None:
            log("int8: this CPU is x86 without VNNI, where ONNX Runtime's U8S8 kernels saturate (VPMADDUBSW int16 sums): "
                "int8 weights go in 7 bits (reduce_range; set the profile's int8_reduce_range to decide it yourself)")
        log(f"int8 alone (reference, ORT static {q['format']} {q['types']}{', 7-bit weights' if q.get('reduce_range') else ''}): accuracy "
            f"{ref['accuracy']:.2%} (drop {ref['accuracy_drop']:+.2f}), {ref['speedup']:.2f}x vs the baseline"
            f"{' (predicted)' if table is not None else ''}, "
            f"{ref['size_mb']:.2f} MB ({ref['seconds']:.0f} s)")
    return ref


CONFIRM_BAND = 1.25  # an int8-alone speedup within this factor of the profile's bar is timed again before it decides


def int8_speedup_for_seeds(ref: dict[str, Any] | None, store, baseline, profile, shape4, *, seed: int, measured: bool,
                           log: Callable[[str], None] = print) -> float | None:
    """The int8-alone speedup the seeds are decided on (``space.seeds_for_int8``): the reference's own figure, or,
    when it was measured (not predicted) within ``CONFIRM_BAND`` of the profile's ``int8_seeds_min_speedup``, the
    median of it and two more fresh-process windows (``measure.retime``, more where they disagree): one figure at two
    threads moved 0.88-1.21x for the same custom CNN between runs on an AVX2 CPU (benchmarks/README.md). Stored in
    ``baseline.json`` beside the reference (key ``confirmed``), so a resume decides the same way."""
    if not ref or ref.get("error") or ref.get("speedup") is None:
        return None
    first, bar = float(ref["speedup"]), profile.int8_seeds_min_speedup
    if not measured or bar <= 0 or not bar / CONFIRM_BAND <= first <= bar * CONFIRM_BAND:
        return first
    if ref.get("confirmed"):
        return float(ref["confirmed"]["speedup"])
    import statistics

    from .measure.retime import retime

    got = retime({"int8 alone": store.models_dir / FILE}, baseline.path, profile, shape4, windows=2, seed=seed)
    figures = [first, *got["int8 alone"].speedups]
    med = float(statistics.median(figures))
    store.write_baseline({**(store.read_baseline() or {}), KEY: {**ref, "confirmed": {"speedup": med,
                                                                                      "windows": figures}}})
    log(f"int8 alone: {first:.2f}x is near the profile's int8_seeds_min_speedup ({bar:g}x), timed again in "
        f"{len(figures) - 1} fresh processes ({', '.join(f'{v:.2f}' for v in figures[1:])}): {med:.2f}x, the median")
    return med


def _measure(baseline, data, profile, shape4, out_path: Path, *, seed: int, metric, table, sign: float) -> dict[str, Any]:
    from .compress.quantize import quantize_model
    from .errors import AutocompressError
    from .measure.accuracy import evaluate_onnx
    from .measure.cost import file_size_mb
    from .measure.latency import measure_latency

    t0 = time.perf_counter()
    quant = QuantSpec(format=profile.int8_format or "qdq", types=profile.int8_types or "u8s8",
                      reduce_range=profile.int8_reduce_range)
    try:
        quantize_model(baseline.path, out_path, {"_default": "int8"}, quant, data.x_calib.numpy(),
                       batch_size=profile.batch_size)
        acc = evaluate_onnx(out_path, data.val, metric=metric)
        accuracy = acc.metric if acc.metric is not None else acc.top1
        if table is not None:
            from .measure.predict import predict_latency

            latency_ms = predict_latency(out_path, profile, table, shape4)
            speedup, cv = (baseline.predicted_ms or baseline.latency_ms) / latency_ms, None
        else:
            lat = measure_latency(out_path, profile, shape4, baseline_path=baseline.path, seed=seed)
            latency_ms, speedup, cv = lat.median_ms, lat.speedup, lat.cv
    except (AutocompressError, RuntimeError, OSError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}", "quant": asdict(quant)}
    scale = 1.0 if acc.metric is not None else 100.0
    from .compress.quantize import reduce_range_for

    return {
        "path": str(out_path.relative_to(out_path.parent.parent)),
        "quant": {**asdict(quant), "reduce_range": reduce_range_for(quant)},  # as applied on this machine
        "accuracy": accuracy, "top5": acc.top5, "accuracy_drop": sign * (baseline.accuracy - accuracy) * scale,
        "latency_ms": latency_ms, "speedup": speedup, "latency_cv": cv, "size_mb": file_size_mb(out_path),
        "seconds": round(time.perf_counter() - t0, 2),
    }
