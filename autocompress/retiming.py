"""The run's final re-timing pass: the front models and the reference points, timed again against the
baseline in several fresh processes (:mod:`autocompress.measure.retime`), so the speedups a user reads carry
the spread across independent windows, not just the precision of one call.

Results go to ``retime.json`` in the run folder and into ``pareto.csv`` (``speedup_retimed``,
``speedup_cv``, ``speedup_lo``, ``speedup_hi``, ``speedup_agree``). A later ``autocompress report`` reuses
them while the same files are on the front; ``autocompress report RUN --retime N`` times them again.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Callable

import pandas as pd

from .measure.retime import TARGET_CV

FILE = "retime.json"


def _targets(run_dir: Path, front: pd.DataFrame, df: pd.DataFrame) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for _, r in front.iterrows():
        if isinstance(r.get("model"), str) and (run_dir / r["model"]).is_file():
            out[f"trial {int(r['number'])}"] = run_dir / r["model"]
    ref = run_dir / "models" / "int8_reference.onnx"
    if ref.is_file():
        out["int8 alone"] = ref
    if "seed" in df.columns:
        seeds = df["seed"].fillna("").astype(str).str.strip() != ""
        for _, r in df[seeds & (df["status"] == "COMPLETE")].iterrows():
            label = f"trial {int(r['number'])}"
            if label not in out and isinstance(r.get("model"), str) and (run_dir / r["model"]).is_file():
                out[label] = run_dir / r["model"]
    return out


def _stamp(paths: dict[str, Path], run_dir: Path) -> dict[str, list]:
    """Each re-timed file by its path within the run folder and its size: the run folder may be named relatively
    (``autocompress report results/RUN``) or moved, and its re-timing still holds while the same files are there."""
    return {k: [_within(p, run_dir), p.stat().st_size] for k, p in paths.items()}


def _within(p, run_dir: Path) -> str:
    """``p`` relative to the run folder. An older retime.json recorded absolute paths: those count while they still
    point into this folder; a folder moved since is re-timed afresh (``autocompress report RUN --retime N``)."""
    return Path(os.path.relpath(Path(p).resolve(), run_dir.resolve())).as_posix()


def retime_run(run_dir: Path, front: pd.DataFrame, df: pd.DataFrame, meta: dict, *, windows: int | None,
               baseline: dict | None = None, log: Callable[[str], None] = print) -> dict | None:
    """Re-time (``windows`` >= 1) or reuse ``retime.json``; returns {label: Retimed dict} or None."""
    from .config import RunSpec, load_profile

    spec = RunSpec.model_validate(meta["spec"])
    path = run_dir / FILE
    targets = _targets(run_dir, front, df)
    saved = json.loads(path.read_text()) if path.is_file() else None
    if not windows:
        files = {k: [_within(v[0], run_dir) if Path(v[0]).is_absolute() else v[0], v[1]]
                 for k, v in (saved or {}).get("files", {}).items()}
        if saved and all(files.get(k) == v for k, v in _stamp(targets, run_dir).items()):
            return saved["models"]
        return None
    profile, _ = load_profile(spec.profile)
    if profile.latency.mode != "measure" or not targets:
        return None
    from .measure.hardware import check_available, fingerprint, input_shape_for
    from .measure.retime import extra_windows_up_to, retime

    check_available(profile)
    shape = input_shape_for(profile, tuple(meta["data"]["input_shape"]))
    more = (f", up to {extra_windows_up_to(windows)} for a model whose windows disagree"
            if extra_windows_up_to(windows) > windows else "")
    log(f"re-timing {len(targets)} models against the baseline in {windows} fresh processes{more} (the spread "
        "across them is the uncertainty reported)")
    res = retime(targets, run_dir / "models" / "baseline.onnx", profile, shape, windows=windows, seed=spec.seed,
                 log=log)
    searched = _searched(df, baseline)
    models = {k: {**v.to_dict(), "searched": searched.get(k)} for k, v in res.items()}
    path.write_text(json.dumps({"windows": windows, "files": _stamp(targets, run_dir), "models": models,
                                "machine": fingerprint()}, indent=2, default=str))
    return models


def _searched(df: pd.DataFrame, baseline: dict | None) -> dict[str, float]:
    """The speedup the search measured for each model it may re-time (int8 alone: when the baseline was timed)."""
    out = {f"trial {int(n)}": float(v) for n, v in zip(df["number"], df["speedup"]) if pd.notna(v) and v > 0}
    ref = (baseline or {}).get("int8_reference") or {}
    if ref.get("speedup"):
        out["int8 alone"] = float(ref["speedup"])
    return out


def moved_since_search(models: dict | None) -> tuple[str, float] | None:
    """How far the re-timed speedups moved from the figures the search measured for the same models (minutes to
    hours earlier, one window each): this run's own measure of how much a speedup moves over time on this machine,
    said plainly, and its median |re-timed / searched - 1|. None with fewer than three such models (or a retime.json
    from before the search's figures were kept)."""
    pairs = [(k, m["searched"], m["speedup"]) for k, m in (models or {}).items() if m.get("searched")]
    if len(pairs) < 3:
        return None
    med = statistics.median(abs(r / s - 1) for _, s, r in pairs)
    k, s, r = max(pairs, key=lambda p: abs(p[2] / p[1] - 1))
    return (f"since the search: the {len(pairs)} re-timed speedups differ from the figures the search measured for "
            f"them by a median of {med:.0%} (at most {r / s - 1:+.0%}: {k}, {s:.2f}x then {r:.2f}x); a speedup measured "
            f"once moves about that much over minutes on this machine, so read models whose figures differ by less "
            f"than ~{med:.0%} as equally fast"), med


def with_retimed(front: pd.DataFrame, models: dict | None) -> pd.DataFrame:
    """``front`` with the re-timed speedup, its CV and range across windows, and whether the windows agree."""
    if not models or not len(front):
        return front
    cols = {"speedup_retimed": [], "speedup_cv": [], "speedup_lo": [], "speedup_hi": [], "speedup_agree": []}
    for n in front["number"]:
        m = models.get(f"trial {int(n)}")
        cols["speedup_retimed"].append(m["speedup"] if m else None)
        cols["speedup_cv"].append(m["cv"] if m else None)
        cols["speedup_lo"].append(m["spread"][0] if m else None)
        cols["speedup_hi"].append(m["spread"][1] if m else None)
        cols["speedup_agree"].append(m["agree"] if m else None)
    return front.assign(**cols)


def why_disagree(threads: int | None) -> str:
    """Why windows disagree, or figures moved since the search, said plainly under them (measured:
    benchmarks/README.md, issue 14)."""
    if threads and threads > 1:
        return (f"  why: with {threads} intra-op threads on a shared or virtual machine the speedup moves with time "
                "(how well the threads' parallel sections run together changes from one stretch of seconds to the "
                "next, and the machine's state from one minute to the next, even with nothing else running); the "
                "median over the windows is the figure shown; --profile cpu-1thread moves less")
    return ("  why: on a shared or virtual machine a small model's speed relative to its baseline changes from one "
            "stretch of seconds or minutes to the next (other guests share the host's cores and caches; seen on "
            "2-vCPU virtual machines with nothing else running in them); the median over the windows is the figure "
            "shown, and it is not moved by one odd window")


def threads_timed(models: dict) -> int | None:
    """The intra-op threads the re-timing used (recorded with each model; None in an older retime.json)."""
    return max((m.get("threads") or 0 for m in models.values()), default=0) or None


def summary_lines(models: dict | None) -> list[str]:
    if not models:
        return []
    out = []
    for label, m in models.items():
        sp = ", ".join(f"{v:.2f}" for v in m["speedups"])
        moved = f" ({m['moved']} moved between windows)" if m.get("moved") else ""
        flag = "" if m["agree"] else f"  <- windows disagree{moved}: treat this speedup as uncertain"
        dist = sum(m["disturbed"])
        out.append(f"  {label}: {m['speedup']:.2f}x (windows {sp}; CV {100 * m['cv']:.1f}%"
                   + (f"; {dist} disturbed window(s) left out" if dist and m["used"] < len(m["speedups"]) else "")
                   + f"){flag}")
    moved = moved_since_search(models)
    if moved:
        out.append(f"  {moved[0]}")
    if not all(m["agree"] for m in models.values()) or (moved and moved[1] > TARGET_CV):
        out.append(why_disagree(threads_timed(models)))
    return out
