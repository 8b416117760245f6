"""Depth over third-party model families (issue 15): which blocks of each timm family of bench_timm.py
``compress/depth.py`` finds droppable, and whether the network with all of them dropped still prunes (50%, round_to 16)
and exports. Random init, nothing downloaded, nothing timed.

    python benchmarks/bench_timm_depth.py

Prints a line per family and the count that went through; figures: benchmarks/README.md "Depth: dropped blocks".
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch

from autocompress.compress.depth import drop_blocks, droppable_blocks
from autocompress.compress.export import export_onnx
from autocompress.compress.prune import prune_model
from bench_timm import MODELS


def main() -> int:
    import timm

    warnings.filterwarnings("ignore")
    x = torch.zeros(1, 3, 32, 32)
    ok = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, what in MODELS:
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
            t = time.perf_counter()
            blocks = droppable_blocks(model, x)
            found_s = time.perf_counter() - t
            try:
                drop_blocks(model, blocks)
                with torch.no_grad():
                    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
                r = prune_model(model, {"_default": 0.5}, x, round_to=16, graph_timeout_s=60)
                export_onnx(r.model.eval(), x, Path(tmp) / "m.onnx")
            except Exception as e:  # noqa: BLE001 - reported per family
                print(f"{name} ({what}): {len(blocks)} droppable; with them dropped: {type(e).__name__}: {str(e)[:160]}")
                continue
            ok += 1
            print(f"{name} ({what}): {len(blocks)} droppable ({found_s:.1f} s) {', '.join(blocks[:4])}"
                  f"{', ...' if len(blocks) > 4 else ''}; all dropped, pruned 50% ({r.macs_after / r.macs_before:.2f} of the "
                  "MACs), exported", flush=True)
    print(f"{ok}/{len(MODELS)} families: blocks found, dropped, pruned and exported")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
