"""Which batch runs PyTorch inference fastest on this CPU? The product's no-grad passes (teacher logits, accuracy,
the sensitivity analysis' points) take their batch from ``autocompress.devices.infer_batch``.

For each model (untrained weights: speed does not depend on them) the same 512 images go through the model in
batches of 32, 64, 128 and 256, the batch sizes interleaved round by round (``--rounds``), and the median time of
each is reported as a ratio to the batch of 256 (> 1: faster than 256), and the analysis' own step is timed
the same way: ``sensitivity.prune_curves`` of the custom CNN at batch 64 against 256. Prints one table and writes
benchmarks/results/infer-batch-<tag>.json with the CPU fingerprint.

    python benchmarks/bench_infer_batch.py [--rounds 5] [--tag avx2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (32, 64, 128, 256)


def _models():
    import torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
    from custom_cnn import custom_cnn

    return {
        "custom_cnn 32px": (custom_cnn(), 32),
        "resnet18 32px": (torchvision.models.resnet18(num_classes=10), 32),
        "mobilenet_v2 32px": (torchvision.models.mobilenet_v2(num_classes=10), 32),
        "resnet18 96px": (torchvision.models.resnet18(num_classes=10), 96),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()

    import numpy as np
    import torch

    from autocompress import sensitivity
    from autocompress.compress.prune import stage_groups
    from autocompress.measure.hardware import fingerprint

    torch.manual_seed(0)
    rows = []
    for name, (model, size) in _models().items():
        model.eval()
        x = torch.randn(512, 3, size, size)
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        with torch.no_grad():
            model(x[:32])  # warm-up
            for _ in range(a.rounds):
                for b in BATCHES:
                    t = time.perf_counter()
                    for i in range(0, len(x), b):
                        model(x[i:i + b])
                    times[b].append(time.perf_counter() - t)
        med = {b: statistics.median(v) for b, v in times.items()}
        rows.append({"model": name, "seconds": med, "vs_256": {b: med[256] / med[b] for b in BATCHES}})
        print(f"{name:20s} " + "  ".join(f"b{b}: {med[b]:.3f} s ({med[256] / med[b]:.2f}x)" for b in BATCHES), flush=True)

    # the sensitivity analysis' pruning step itself, batch 64 vs 256 interleaved (each point: prune, BN recalibration,
    # top-1 on 256 validation images)
    model = _models()["custom_cnn 32px"][0].eval()
    groups = stage_groups(model)
    calib, val_x, val_y = torch.randn(128, 3, 32, 32), torch.randn(256, 3, 32, 32), np.zeros(256, dtype=int)
    real = sensitivity._torch_logits
    step: dict[int, list[float]] = {64: [], 256: []}
    for _ in range(max(1, a.rounds // 2)):
        for b in (64, 256):
            sensitivity._torch_logits = lambda m, x, _b=b: real(m, x, _b)
            t = time.perf_counter()
            sensitivity.prune_curves(model, groups, calib, val_x, val_y, [0.3, 0.5, 0.7, 0.9])
            step[b].append(time.perf_counter() - t)
    sensitivity._torch_logits = real
    pc = {b: statistics.median(v) for b, v in step.items()}
    print(f"prune_curves (custom CNN, 5 stages x 4 ratios): batch 64 {pc[64]:.1f} s, batch 256 {pc[256]:.1f} s "
          f"({pc[256] / pc[64]:.2f}x)")
    out = RESULTS / f"infer-batch{'-' + a.tag if a.tag else ''}.json"
    out.write_text(json.dumps({"machine": fingerprint(), "threads": torch.get_num_threads(), "rounds": a.rounds,
                               "rows": rows, "prune_curves_s": pc}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
