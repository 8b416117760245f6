"""Third-party model families (timm definitions, random init, nothing downloaded): prune -> export stays
consistent. The full breadth run (prune -> KD -> export -> int8 -> ONNX Runtime, ~20 families) is
benchmarks/bench_timm.py; this covers a handful, one per way pruning used to go wrong."""

from __future__ import annotations

import pytest
import torch

from autocompress.compress.export import export_onnx
from autocompress.compress.prune import prune_model

timm = pytest.importorskip("timm", reason="timm is an optional extra (bench, dev)")

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "mixnet_s",      # mixed kernels: channel splits Torch-Pruning prunes into an inconsistent network
    "cspresnet50",   # CSP: Torch-Pruning's step() fails on its split index mapping
    "mobileone_s0",  # re-parameterisable: random-init logits ~1e9 (export check relative to the scale)
    "ghostnet_050",  # ghost modules: concatenation of a conv and a cheap depthwise op
])
def test_timm_family_prunes_consistently_and_exports(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    res = prune_model(model, {"_default": 0.5}, X)
    assert res.params_after < 0.9 * res.params_before, (res.params_after, res.params_before)
    x = torch.randn(2, 3, 32, 32)
    assert res.model(x).shape == (2, 10)
    exp = export_onnx(res.model, X, tmp_path / f"{name}.onnx")
    assert exp.path.is_file()
