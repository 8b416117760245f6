"""The run folder: resolved config, baseline, append-only trial log, lock, stage cache.

``trials.jsonl`` is append-only and fsync'ed: every finished trial is on disk before the next begins.
The same record is also stored on the Optuna trial (user attribute ``record``), so workers on other
machines that share only the database still see one another's results; :func:`merge_records`
unions both, by trial number.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError
from .records import TrialRecord

FORMAT_VERSION = 1
# spec keys a later `run`/`resume` on the same folder may change; any other difference is another run
MUTABLE_SPEC_KEYS = frozenset({"trials", "timeout", "workers", "address", "early_stop", "multi_fidelity", "finish", "out",
                               "retime_windows"})


def follow_folder(spec: dict[str, Any], here: str) -> dict[str, Any]:
    """A stored run spec as it reads once its folder has moved to ``here``: ``out`` points there, and a
    storage inside the old folder (the default SQLite study) moves with it. Unchanged if not moved."""
    was = spec.get("out")
    if not was or was == here:
        return spec
    storage = spec.get("storage")
    if isinstance(storage, str):
        storage = storage.replace(was, here)
    return {**spec, "out": here, "storage": storage}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("autocompress", "torch", "torchvision", "torch-pruning", "onnx", "onnxruntime", "optuna",
                 "pandas", "ray", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.log_path = self.dir / "trials.jsonl"
        self.run_yaml = self.dir / "run.yaml"
        self.baseline_json = self.dir / "baseline.json"
        self.lock_path = self.dir / "run.lock"
        self.models_dir = self.dir / "models"

    # ------------------------------------------------------------------ folder
    def create(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output folder '{self.dir}' is not writable ({e.strerror}); pick another with --out") from None
        self.models_dir.mkdir(exist_ok=True)

    def check_version(self) -> None:
        if not self.run_yaml.is_file():
            return
        meta = yaml.safe_load(self.run_yaml.read_text()) or {}
        v = meta.get("format_version")
        if v != FORMAT_VERSION:
            raise ConfigError(
                f"run folder '{self.dir}' was written by an incompatible autocompress (format {v}, this one reads "
                f"{FORMAT_VERSION}); start a new run with another --out"
            )

    def acquire_lock(self) -> None:
        host = socket.gethostname()
        if self.lock_path.is_file():
            try:
                info = json.loads(self.lock_path.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("host") == host and isinstance(info.get("pid"), int) and info["pid"] != os.getpid() and _pid_alive(info["pid"]):
                raise ConfigError(
                    f"run folder '{self.dir}' is in use by process {info['pid']}; wait for it, stop it, or join the "
                    f"study with `autocompress worker`"
                )
        self.lock_path.write_text(json.dumps({"host": host, "pid": os.getpid()}))

    def release_lock(self) -> None:
        try:
            info = json.loads(self.lock_path.read_text())
            if info.get("pid") == os.getpid():
                self.lock_path.unlink()
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------ config and baseline
    def check_same_run(self, resolved: dict[str, Any]) -> None:
        """A run folder holds one configuration: refuse another one before anything in it is overwritten
        (a second ``run --out DIR`` with another model, space, storage... would rewrite run.yaml and the
        baseline under the existing trials, and ``resume`` would then continue with the wrong spec)."""
        if not self.run_yaml.is_file():
            return
        try:
            old = (yaml.safe_load(self.run_yaml.read_text()) or {}).get("spec") or {}
        except yaml.YAMLError:
            return
        if resolved.get("out"):
            old = follow_folder(old, resolved["out"])
        diff = [k for k in sorted(set(old) | set(resolved)) if k not in MUTABLE_SPEC_KEYS and old.get(k) != resolved.get(k)]
        if diff:
            k = diff[0]
            more = f" (and {', '.join(diff[1:])})" if len(diff) > 1 else ""
            raise ConfigError(
                f"run folder '{self.dir}' holds a run with {k}={old.get(k)!r}, not {resolved.get(k)!r}{more}; continue it "
                f"with `autocompress resume {self.dir}` (optionally --trials N), or start this one with another --out"
            )

    def write_run_yaml(self, resolved: dict[str, Any], extra: dict[str, Any]) -> None:
        self.check_same_run(resolved)
        doc = {"format_version": FORMAT_VERSION, "spec": resolved, **extra}
        tmp = self.run_yaml.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.run_yaml)

    def update_run_yaml(self, extra: dict[str, Any]) -> None:
        """Add or replace top-level entries of an existing run.yaml (e.g. ``data``: how the data was read)."""
        if not self.run_yaml.is_file():
            return
        doc = {**(yaml.safe_load(self.run_yaml.read_text()) or {}), **extra}
        tmp = self.run_yaml.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.run_yaml)

    def read_run_yaml(self) -> dict[str, Any]:
        if not self.run_yaml.is_file():
            raise ConfigError(f"'{self.dir}' is not an autocompress run folder (no run.yaml); give the folder a run wrote")
        self.check_version()
        return yaml.safe_load(self.run_yaml.read_text())

    def write_baseline(self, d: dict[str, Any]) -> None:
        tmp = self.baseline_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=2, default=str))
        os.replace(tmp, self.baseline_json)

    def read_baseline(self) -> dict[str, Any] | None:
        if not self.baseline_json.is_file():
            return None
        return json.loads(self.baseline_json.read_text())

    def write_timing(self, timing: dict[str, Any]) -> None:
        """Loop timing of this process's last search (benchmarks read the engine overhead from it): ``trials``
        settled, ``trial_s`` spent waiting for the executor (running trials), ``wall_s``, ``workers``; the
        overhead is the rest (asks, storage, logging)."""
        t = dict(timing)
        t["overhead_s"] = max(0.0, t["wall_s"] - t["trial_s"])
        t["overhead_fraction"] = t["overhead_s"] / t["wall_s"] if t["wall_s"] > 0 else 0.0
        (self.dir / "timing.json").write_text(json.dumps(t, indent=2))

    # ------------------------------------------------------------------ trial log
    def append(self, rec: TrialRecord) -> None:
        line = json.dumps(rec.to_dict(), default=str)
        torn = False
        if self.log_path.is_file() and self.log_path.stat().st_size:
            with open(self.log_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a kill mid-append: end that line, or this record would be glued to it
        with open(self.log_path, "a") as f:
            f.write(("\n" if torn else "") + line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[TrialRecord]:
        """Records by trial number (the last line wins); a torn last line from a kill is skipped."""
        out: dict[int, TrialRecord] = {}
        if not self.log_path.is_file():
            return []
        for line in self.log_path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rec = TrialRecord.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
            out[rec.number] = rec
        return [out[k] for k in sorted(out)]


def merge_records(*sources: Iterable[TrialRecord]) -> list[TrialRecord]:
    out: dict[int, TrialRecord] = {}
    for src in sources:
        for r in src:
            out[r.number] = r
    return [out[k] for k in sorted(out)]
