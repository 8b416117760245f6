"""``autocompress export``: one trial's model, card and recipe, re-created when not on disk."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import yaml

from .config import RunSpec
from .errors import ConfigError
from .records import TrialStatus
from .report import _card, _recipe, stamp_model
from .results import load_records
from .store import RunStore


def _safe_dest(to: Path) -> Path:
    to = Path(to)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create '{to}' ({e.strerror}); pick another --to") from None
    return to


def export_trial(run_dir: Path, number: int, to: Path, *, log: Callable[[str], None] = print) -> Path:
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    meta = store.read_run_yaml()
    records = {r.number: r for r in load_records(run_dir)}
    if number not in records:
        raise ConfigError(f"run '{run_dir}' has no trial {number}; trials: {', '.join(map(str, sorted(records))) or 'none'}")
    rec = records[number]
    if rec.status != TrialStatus.COMPLETE:
        raise ConfigError(f"trial {number} is {rec.status.value} ({rec.stage}: {rec.message}); export a COMPLETE trial")
    to = _safe_dest(to)
    dst = to / f"trial_{number}.onnx"
    src = run_dir / rec.artifact if rec.artifact else None
    if src is None or not src.is_file():
        log(f"trial {number}'s model is not on disk: re-creating it from its recipe")
        from .engine import prepare
        from .trial import run_trial

        spec = RunSpec.model_validate(meta["spec"])
        prep = prepare(spec, run_dir, log=log)
        # the recipe as it was run: no gate nor rungs (a run's later trials may dominate it in speed and size)
        again = run_trial(number, rec.candidate, replace(prep.ctx, early_stopper=None))
        if again.status != TrialStatus.COMPLETE:
            raise ConfigError(f"re-creating trial {number} failed at {again.stage}: {again.message}")
        src = run_dir / again.artifact
        log(f"re-created: accuracy {again.metrics.accuracy:.2%} (recorded {rec.metrics.accuracy:.2%})")
    shutil.copyfile(src, dst)
    stamp_model(dst, meta, number)
    baseline = store.read_baseline() or {}
    (to / f"trial_{number}.json").write_text(json.dumps(_card(rec, baseline, meta["spec"], run_dir, meta, model=dst), indent=2, default=str))
    (to / f"trial_{number}.recipe.yaml").write_text(yaml.safe_dump(_recipe(rec, meta["spec"]), sort_keys=False))
    return dst
