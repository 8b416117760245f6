"""Crashes and resume: `autocompress run` in a real process is killed with SIGKILL at several points, then
`autocompress resume DIR` completes the budget. Every trial that finished before the kill is kept exactly
once (same record), nothing is redone, partial artifacts of the killed trial are never taken for results,
and the report rebuilds. Ctrl-C (SIGINT) saves, prints how to resume and exits 130.

To hit a point exactly, the child process wraps one real stage function so that the process SIGKILLs
itself inside it on the Nth call (a real kill -9: no cleanup, no atexit); one test kills from outside
while watching the run folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from autocompress.cli import main
from conftest import FAST_PROFILE, make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.2, "high": 0.8, "step": 0.05}, "criterion": ["l1"]},
    "bits": {"choices": ["int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
}
PROFILE = FAST_PROFILE
BUDGET = 2

# Runs the real CLI; KILL_AT="module:function:n" SIGKILLs this process inside the n-th call of that function.
CHILD = textwrap.dedent(
    """
    import importlib, os, signal, sys

    spec = os.environ.get("KILL_AT")
    if spec:
        mod_name, fn_name, n = spec.split(":")
        mod = importlib.import_module(mod_name)
        owner = mod
        if "." in fn_name:  # Class.method
            cls_name, fn_name = fn_name.split(".")
            owner = getattr(mod, cls_name)
        real = getattr(owner, fn_name)
        calls = {"n": 0}

        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == int(n):
                if os.environ.get("KILL_AFTER_CALL"):
                    real(*a, **k)
                elif os.environ.get("KILL_HALFWAY"):  # e.g. in tell: after the first attribute, before the record
                    a[1].set_user_attr("constraints", [])
                os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))
            return real(*a, **k)

        setattr(owner, fn_name, wrapped)

    from autocompress.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = make_workspace(tmp_path_factory.mktemp("crash"), SPACE, PROFILE, teacher="teacher.pt")
    (d / "child.py").write_text(CHILD)
    return d


def _argv(ws, out, trials=BUDGET):
    return ["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
            "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
            "--trials", str(trials), "--out", str(out), "--seed", "0", "--max-accuracy-drop", "90"]


def _env(ws, **extra):
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(ws / "cache"), "PYTHONUNBUFFERED": "1", **extra}


def _lines(out: Path) -> list[dict]:
    p = out / "trials.jsonl"
    if not p.is_file():
        return []
    res = []
    for ln in p.read_text().splitlines():
        try:
            res.append(json.loads(ln))
        except ValueError:
            pass
    return res


def _resume_and_check(out: Path, before: list[dict], capsys) -> pd.DataFrame:
    """Resume in-process; the budget completes and every record written before the kill is kept as it was."""
    assert main(["resume", str(out)]) == 0
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == BUDGET and df["number"].is_unique, df[["number", "status"]]
    after = {r["number"]: r for r in _lines(out)}
    numbers = [r["number"] for r in _lines(out)]
    assert len(numbers) == len(set(numbers)), numbers  # nothing redone or logged twice
    for r in before:
        assert after[r["number"]] == r
    assert set(df["number"]) == set(after)
    assert (out / "report.html").is_file() and "pareto-plot" in (out / "report.html").read_text()
    # partial artifacts are never results: every result's model exists; a trial folder without a record is not
    # in the table, and a student cache entry without meta.json is not reused as built
    for _, row in df[df["status"] == "COMPLETE"].iterrows():
        assert (out / row["model"]).is_file()
    for d in (out / "trials").iterdir():
        if int(d.name) not in after:
            assert int(d.name) not in set(df["number"])
    return df


KILL_POINTS = [
    # (id, KILL_AT, extra env, the killed trial's stage)
    ("distillation", "autocompress.compress.distill:kd_loss:30", {}, "distill"),
    # quantize_model call 1 and measure_latency call 2 are the int8-alone reference (measure_latency call 1:
    # the baseline), both measured before the first trial; a trial quantizes twice (its untrained graph, timed
    # before distillation, then the trained model) and times once (the trained graph is the same)
    ("quantization", "autocompress.compress.quantize:quantize_model:4", {}, "quantize"),
    ("latency", "autocompress.measure.latency:measure_latency:4", {}, "latency"),
    ("writing-results", "autocompress.search.optuna_backend:OptunaBackend.tell:1", {"KILL_HALFWAY": "1"}, "tell"),
]


@pytest.mark.parametrize("name, kill_at, extra, stage", KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_then_resume_completes_the_budget(name, kill_at, extra, stage, ws, tmp_path, capsys):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ws / "child.py"), *_argv(ws, out)], capture_output=True, text=True,
                       env=_env(ws, KILL_AT=kill_at, **extra), timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    before = _lines(out)
    assert 1 <= len(before) < BUDGET
    _resume_and_check(out, before, capsys)


def test_a_torn_last_line_is_skipped_and_the_trial_redone(ws, tmp_path, capsys):
    """A kill in the middle of the append leaves half a JSON line: it is ignored, never half-read."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ws / "child.py"), *_argv(ws, out)], capture_output=True, text=True,
                       env=_env(ws, KILL_AT="autocompress.search.optuna_backend:OptunaBackend.tell:2"), timeout=300)
    assert r.returncode == -signal.SIGKILL
    before = _lines(out)
    assert len(before) == 2
    text = (out / "trials.jsonl").read_text().splitlines()
    (out / "trials.jsonl").write_text(text[0] + "\n" + text[1][: len(text[1]) // 2])  # torn second record
    _resume_and_check(out, before[:1], capsys)


def test_sigkill_from_outside_while_a_trial_runs(ws, tmp_path, capsys):
    """Kill -9 from another process as soon as the second trial's folder appears."""
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "autocompress.cli", *_argv(ws, out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=_env(ws))
    try:
        deadline = time.time() + 240
        while not (out / "trials" / "00001").exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before the kill"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    before = _lines(out)
    assert len(before) == 1
    _resume_and_check(out, before, capsys)


def test_sigint_saves_prints_how_to_resume_and_exits_130(ws, tmp_path, capsys):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "autocompress.cli", *_argv(ws, out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=_env(ws))
    try:
        deadline = time.time() + 240
        while len(_lines(out)) < 1 and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before Ctrl-C"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"autocompress resume {out}" in lines[0], lines
    before = _lines(out)
    assert 1 <= len(before) < BUDGET
    assert not (out / "run.lock").exists()
    _resume_and_check(out, before, capsys)


def _seeded_argv(ws, out):
    """A run whose first trial is the seed 'half + int8'."""
    import yaml

    space = ws / "space-seeded.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "name": "tiny-seeded",
                                     "seeds": [{"sparsity": 0.5, "bits": "int8", "label": "half + int8"}]}))
    return [str(space) if a == str(ws / "space.yaml") else a for a in _argv(ws, out)]


def _seed_ran_once(out: Path) -> None:
    recs = _lines(out)
    assert len(recs) == BUDGET and len({r["number"] for r in recs}) == BUDGET
    seeded = [r for r in recs if r["seed"] == "half + int8"]
    assert len(seeded) == 1 and seeded[0]["number"] != 0, [(r["number"], r["seed"]) for r in recs]
    cand = seeded[0]["candidate"]
    assert set(cand["sparsity"].values()) == {0.5} and set(cand["bits"].values()) == {"int8"}
    df = pd.read_csv(out / "trials.csv")
    assert (df["seed"].fillna("") == "half + int8").sum() == 1


def test_ctrl_c_inside_a_trial_redoes_it_on_resume(ws, tmp_path, capsys):
    """Ctrl-C lands in the seed trial's distillation: exit 130, and `resume` runs that candidate again."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ws / "child.py"), *_seeded_argv(ws, out)], capture_output=True, text=True,
                       env=_env(ws, KILL_AT="autocompress.compress.distill:kd_loss:5", KILL_SIGNAL="SIGINT"), timeout=300)
    assert r.returncode == 130, r.stderr[-2000:]
    assert "interrupted: 1 trial(s) in flight stopped (redone on resume)" in r.stdout
    assert _lines(out) == []
    assert main(["resume", str(out)]) == 0
    _seed_ran_once(out)


def test_a_trial_killed_mid_way_is_redone_once_on_resume(ws, tmp_path, capsys):
    """The seed trial is SIGKILLed in its distillation: `resume` runs its candidate again, with its seed label.
    Its redo killed again is not run a third time (a candidate that kills the process cannot block the run)."""
    out = tmp_path / "run"
    argv = _seeded_argv(ws, out)
    kill_in_first_kd = _env(ws, KILL_AT="autocompress.compress.distill:kd_loss:5")  # trial 0 = the seed
    r = subprocess.run([sys.executable, str(ws / "child.py"), *argv], capture_output=True, text=True,
                       env=kill_in_first_kd, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert _lines(out) == []  # killed inside the first trial: nothing finished

    assert main(["resume", str(out)]) == 0
    cap = capsys.readouterr()
    assert "1 trial(s) interrupted by the last stop will be redone (trial 0)" in cap.out, cap.out
    _seed_ran_once(out)

    # again, and this time the redo is killed too: the second resume does not run the candidate a third time
    out2 = tmp_path / "run2"
    argv2 = [str(out2) if a == str(out) else a for a in argv]
    r = subprocess.run([sys.executable, str(ws / "child.py"), *argv2], capture_output=True, text=True,
                       env=kill_in_first_kd, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    r = subprocess.run([sys.executable, str(ws / "child.py"), "resume", str(out2)], capture_output=True, text=True,
                       env=kill_in_first_kd, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert "will be redone (trial 0)" in r.stdout and _lines(out2) == []
    assert main(["resume", str(out2)]) == 0
    cap = capsys.readouterr()
    assert "trial 1, a redo of trial 0, was interrupted again; it is not run a third time" in cap.out, cap.out
    recs = _lines(out2)
    assert len(recs) == BUDGET and not [r for r in recs if r["seed"]]
