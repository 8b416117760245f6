"""Failures inside trials: a failure injected into a real stage function becomes a FAILED record naming
the stage, the study goes on, and a run where every trial fails ends with a clear summary and a report.

Injection (monkeypatch on the real stage function) is the only stand-in; everything else runs for real.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autocompress.cli import main
from autocompress.errors import StageError
from conftest import FAST_PROFILE, make_workspace

SPACE = {
    "kind": "search_space", "name": "tiny-int8",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["int8"]},
    "distill": {"epochs": 1, "lr": 0.05},
}
PROFILE = FAST_PROFILE


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("failures"), SPACE, PROFILE, teacher="teacher.pt")


@pytest.fixture
def env(ws, monkeypatch):
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    return ws


def _run(ws, out, trials=3) -> int:
    return main(["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"),
                 "--data", "digits", "--image-size", "16", "--space", str(ws / "space.yaml"),
                 "--profile", str(ws / "profile.yaml"), "--trials", str(trials), "--out", str(out), "--seed", "0",
                 "--max-accuracy-drop", "90"])


def _once(real, exc, when=lambda *a, **k: True):
    """``real`` that raises ``exc`` the first time ``when(args)`` holds."""
    state = {"fired": False}

    def wrapped(*a, **k):
        if not state["fired"] and when(*a, **k):
            state["fired"] = True
            raise exc
        return real(*a, **k)

    wrapped.state = state
    return wrapped


def _not_baseline(path_arg_index):
    """Not the baseline nor the int8-alone reference measured beside it (both before the first trial)."""
    return lambda *a, **k: not any(s in str(a[path_arg_index]) for s in ("baseline", "int8_reference"))


def _patch_export(mp):
    import autocompress.compress.export as m

    f = _once(m.export_onnx, StageError("export", "injected export failure"), _not_baseline(2))
    mp.setattr(m, "export_onnx", f)
    return f


def _patch_export_crash(mp):
    import autocompress.compress.export as m

    f = _once(m.export_onnx, RuntimeError("injected exporter crash"), _not_baseline(2))
    mp.setattr(m, "export_onnx", f)
    return f


def _patch_quantize(mp):
    import autocompress.compress.quantize as m

    f = _once(m.quantize_model, RuntimeError("injected quantizer failure"), _not_baseline(0))
    mp.setattr(m, "quantize_model", f)
    return f


def _patch_session(mp):
    import autocompress.measure.hardware as m

    f = _once(m.make_session, RuntimeError("injected ORT session failure"), _not_baseline(0))
    mp.setattr(m, "make_session", f)
    return f


def _patch_nan_loss(mp):
    import torch

    import autocompress.compress.distill as m

    real = m.kd_loss
    state = {"fired": False}

    def nan_loss(*a, **k):
        loss = real(*a, **k)
        if not state["fired"]:
            state["fired"] = True
            return loss * torch.tensor(float("nan"))
        return loss

    nan_loss.state = state
    mp.setattr(m, "kd_loss", nan_loss)
    return nan_loss


def _patch_memory(mp):
    import autocompress.compress.prune as m

    f = _once(m.prune_model, MemoryError())
    mp.setattr(m, "prune_model", f)
    return f


INJECTIONS = [
    ("export", _patch_export, "export", "injected export failure"),
    ("export-crash", _patch_export_crash, "export", "RuntimeError: injected exporter crash"),  # the untrained export
    ("quantizer", _patch_quantize, "quantize", "injected quantizer failure"),
    ("ort-session", _patch_session, "latency", "injected ORT session failure"),  # speed is measured first
    ("nan-loss", _patch_nan_loss, "distill", "NaN"),
    ("memory", _patch_memory, "student", "out of memory"),
]


@pytest.mark.parametrize("name, patch, stage, message", INJECTIONS, ids=[i[0] for i in INJECTIONS])
def test_an_injected_failure_is_recorded_and_the_study_goes_on(name, patch, stage, message, env, tmp_path, monkeypatch, capsys):
    injected = patch(monkeypatch)
    out = tmp_path / "run"
    assert _run(env, out, trials=2) == 0
    assert injected.state["fired"]
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    df = pd.read_csv(out / "trials.csv")
    assert len(df) == 2 and df["number"].is_unique
    failed = df[df["status"] == "FAILED"]
    assert len(failed) == 1, df[["number", "status", "stage", "message"]]
    assert failed.iloc[0]["stage"] == stage and message in failed.iloc[0]["message"]
    assert (df["status"] == "COMPLETE").sum() == 1  # the study went on
    # the failure is on disk as a record, and in the report's table of problems
    recs = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs].count("FAILED") == 1
    assert message.split(":")[0] in (out / "report.html").read_text()


def test_a_run_where_every_trial_fails_ends_with_a_clear_summary(env, tmp_path, monkeypatch, capsys):
    import autocompress.compress.quantize as m

    def broken(*a, **k):
        raise RuntimeError("injected: quantizer always fails")

    monkeypatch.setattr(m, "quantize_model", broken)
    out = tmp_path / "run"
    rc = _run(env, out, trials=2)
    cap = capsys.readouterr()
    assert rc == 0 and "Traceback" not in cap.out + cap.err  # documented: a finished search exits 0
    assert "trials: 2 FAILED" in cap.out
    assert "no trial completed; by stage: quantize FAILED: 2" in cap.out
    assert "first problem (trial 0, quantize): RuntimeError: injected: quantizer always fails" in cap.out
    html = (out / "report.html").read_text()
    assert "No feasible trial yet." in html and "injected: quantizer always fails" in html
    assert len(pd.read_csv(out / "trials.csv")) == 2 and len(pd.read_csv(out / "pareto.csv")) == 0


def test_an_impossible_constraint_ends_with_no_front_and_says_so(env, tmp_path, capsys):
    """Speed is measured before training, so a candidate that misses a speed constraint is never distilled."""
    out = tmp_path / "run"
    rc = main(["run", "--model", f"{env / 'models.py'}:tiny_cnn", "--checkpoint", str(env / "teacher.pt"),
               "--data", "digits", "--image-size", "16", "--space", str(env / "space.yaml"),
               "--profile", str(env / "profile.yaml"), "--trials", "2", "--out", str(out),
               "--max-accuracy-drop", "90", "--min-speedup", "1000"])
    cap = capsys.readouterr()
    assert rc == 0 and "Traceback" not in cap.out + cap.err and cap.err.strip() == ""
    assert "no trial completed; by stage: gate INFEASIBLE: 2" in cap.out and "min_speedup 1000x" in cap.out
    df = pd.read_csv(out / "trials.csv")
    assert (df["status"] == "INFEASIBLE").all() and (df["stage"] == "gate").all() and (df["speedup"] < 1000).all()
    assert "time.distill" not in df.columns and df["time.latency_pre"].gt(0).all()
    assert len(pd.read_csv(out / "pareto.csv")) == 0 and (out / "report.html").is_file()
