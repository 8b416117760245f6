"""Does int8 lose accuracy to the CPU's kernels? U8S8 with 8-bit and 7-bit weights, and S8S8, on one fp32 model.

On x86 CPUs without VNNI (AVX2, AVX512F only), ONNX Runtime's U8S8 kernels multiply with VPMADDUBSW, whose int16
pair sums saturate when activations and weights both use their full range; ORT's documentation prescribes
``reduce_range`` (7-bit weights) there. This quantizes a run's fp32 baseline (``models/baseline.onnx``) three ways
with the product's own quantizer and calibration inputs, scores each on the run's validation data in ONNX
Runtime, and times each against the fp32 model interleaved (p10 of 20-run blocks, 30 rounds, 1 and 2 threads).
Prints one table and writes benchmarks/results/int8-saturation-<tag>.json with the CPU fingerprint.

    python benchmarks/bench_int8_saturation.py RUN_DIR [--val 2000] [--tag resnet20-avx2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--val", type=int, default=2000, help="validation samples scored per model")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    import onnxruntime as ort
    import yaml

    from autocompress.compress.quantize import quantize_model, reduce_range_for
    from autocompress.data import load_data
    from autocompress.measure.hardware import fingerprint
    from autocompress.records import QuantSpec

    run_dir = a.run_dir.resolve()
    meta = yaml.safe_load((run_dir / "run.yaml").read_text())
    sp = meta["spec"]
    data = load_data(sp["data"], sp.get("image_size") or 32, sp.get("seed", 0), normalize=sp.get("normalize") or "dataset",
                     mean=sp.get("mean"), std=sp.get("std"))
    base = run_dir / "models" / "baseline.onnx"
    n = min(a.val, len(data.val))
    idx = np.sort(np.random.default_rng(0).permutation(len(data.val))[:n])  # a seeded subset: folders are class-ordered
    xv = data.val.take(idx).numpy().astype(np.float32)
    yv = data.val.labels[idx].numpy()
    name = ort.InferenceSession(str(base), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    def accuracy(path: Path) -> float:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = np.concatenate([s.run(None, {name: xv[i:i + 64]})[0] for i in range(0, n, 64)])
        return float((out.argmax(1) == yv).mean())

    tmp = Path(tempfile.mkdtemp())
    models = {"fp32": base}
    variants = {"u8s8": QuantSpec(types="u8s8", reduce_range=False), "u8s8 7-bit": QuantSpec(types="u8s8", reduce_range=True),
                "s8s8": QuantSpec(types="s8s8", reduce_range=False)}
    for tag, q in variants.items():
        models[tag] = tmp / (tag.replace(" ", "-") + ".onnx")
        quantize_model(base, models[tag], {"_default": "int8"}, q, data.x_calib.numpy())
    acc = {k: accuracy(p) for k, p in models.items()}

    speed: dict[int, dict[str, float]] = {}
    x = xv[:1]
    for threads in (1, 2):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        ss = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in models.items()}
        t: dict[str, list[float]] = {k: [] for k in ss}
        for _ in range(30):  # interleaved rounds
            for k, s in ss.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    s.run(None, {name: x})
                t[k].append((time.perf_counter() - t0) / 20 * 1e3)
        p10 = {k: float(np.percentile(v, 10)) for k, v in t.items()}
        speed[threads] = {k: p10["fp32"] / v for k, v in p10.items()}

    fp = fingerprint()
    print(f"CPU {fp.get('cpu')} flags {fp.get('cpu_flags')}; the product's default here: 7-bit weights "
          f"{'on' if reduce_range_for(QuantSpec()) else 'off'}; {n} validation samples")
    print(f"{'model':12s} {'accuracy':>9s} {'1 thread':>9s} {'2 threads':>10s}")
    for k in models:
        print(f"{k:12s} {acc[k]:9.2%} {speed[1][k]:8.2f}x {speed[2][k]:9.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"int8-saturation{'-' + a.tag if a.tag else ''}.json"
    out.write_text(json.dumps({"run": str(run_dir), "fingerprint": fp, "val_samples": n, "accuracy": acc,
                               "speedup": {f"{k}thread": v for k, v in speed.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
