"""The search loop's building blocks: the Baseline record, the frozen trial context, imports that point down.

The loop itself runs in every end-to-end test (tests/test_e2e.py, test_crash_resume.py, test_concurrency.py,
test_ray_backend.py: trials in this process and as Ray tasks, one loop for both)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from autocompress.records import Baseline

PKG = Path(__file__).resolve().parents[1] / "autocompress"
SAVED = {"path": "/old/place/models/baseline.onnx", "accuracy": 0.97, "top5": 0.999, "latency_ms": 1.25,
         "latency_cv": 0.04, "size_mb": 42.5, "params": 11_000_000, "macs": 550_000_000, "predicted_ms": None,
         # baseline.json's own entries beside the record's fields
         "teacher_fingerprint": "0123abcd", "int8_reference": {"accuracy": 0.96}, "seconds": 3.2}


def test_baseline_round_trips_through_json_and_reads_baseline_json():
    b = Baseline.from_dict(SAVED, path="run/models/baseline.onnx")  # a moved folder: the path given wins
    assert b.path == Path("run/models/baseline.onnx") and b.accuracy == 0.97 and b.macs == 550_000_000
    again = Baseline.from_dict(json.loads(json.dumps(b.to_dict())))
    assert again == b
    assert Baseline.from_dict(SAVED).path == Path(SAVED["path"])
    assert set(b.to_dict()) == {f.name for f in dataclasses.fields(Baseline)}  # no extras written back


def test_baseline_missing_a_field_says_which():
    partial = {k: v for k, v in SAVED.items() if k not in ("latency_ms", "size_mb")}
    with pytest.raises(ValueError, match="baseline record lacks latency_ms, size_mb"):
        Baseline.from_dict(partial)


def test_the_trial_context_is_frozen_and_the_old_import_still_works():
    from autocompress.trial import Baseline as FromTrial, TrialContext

    assert FromTrial is Baseline
    ctx = TrialContext(run_dir=Path("."), data=None, teacher=None, teacher_logits=None, profile=None, space=None,
                       baseline=Baseline.from_dict(SAVED), input_shape=(3, 8, 8), constraints=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.log = print
    seen = []
    other = dataclasses.replace(ctx, log=seen.append)
    other.log("x")
    assert seen == ["x"] and ctx.log is not other.log


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports (relative ones resolved against the package), at any depth of the file."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(parts[: len(parts) - node.level]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("module", ["search/executors.py", "search/ray_backend.py", "trial.py"])
def test_executors_never_import_the_loop_or_the_engine(module):
    """Imports point down: cli > engine > search loop > executors > trial. An executor that imported the loop or
    the engine back would tie the two together again (the Ray driver once imported engine's private helpers)."""
    up = {"autocompress.engine", "autocompress.search.loop", "autocompress.cli", "autocompress.report"}
    assert not {m for m in _imports(PKG / module) if m in up or any(m.startswith(u + ".") for u in up)}


def test_the_loop_imports_no_executor_and_not_the_engine():
    mods = _imports(PKG / "search" / "loop.py")
    assert "autocompress.engine" not in mods and "autocompress.search.ray_backend" not in mods
    assert "autocompress.report" not in mods
