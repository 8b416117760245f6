"""Bounded stages: a stage that runs past its time bound stops that trial with one line naming the stage and
the bound, and the study goes on. Real pruning of a real (slow) model; no mocks."""

from __future__ import annotations

import signal
import textwrap
import threading
import time

import pandas as pd
import pytest
import torch
from torch import nn

from autocompress.bounds import stage_bound
from autocompress.compress.prune import prune_model
from autocompress.config import HardwareProfile, StageBounds
from autocompress.errors import StageError
from conftest import FAST_PROFILE, make_workspace

# A user model whose forward is slow on the all-zero example batch the pipeline traces with.
SLOW_SOURCE = textwrap.dedent(
    """
    import time

    import torch.nn as nn


    class SlowOnZeros(nn.Module):
        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds

        def forward(self, x):
            if not bool(x.detach().abs().sum()):
                time.sleep(self.seconds)
            return x


    def slow_cnn(num_classes=10, seconds=0.4):
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), SlowOnZeros(seconds),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )


    tiny_cnn = slow_cnn
    """
)


def _slow_model(seconds: float) -> nn.Module:
    ns: dict = {}
    exec(SLOW_SOURCE, ns)
    torch.manual_seed(0)
    return ns["slow_cnn"](seconds=seconds).eval()


def test_prune_past_its_bound_is_a_stage_error_naming_stage_and_bound():
    model = _slow_model(2.0)
    x = torch.zeros(1, 3, 16, 16)
    t = time.perf_counter()
    with pytest.raises(StageError) as e, stage_bound("prune", 0.1):
        prune_model(model, {"_default": 0.5}, x)
    assert time.perf_counter() - t < 1.5  # interrupted inside the first slow forward (unbounded: >= 6 s)
    assert e.value.stage == "prune"
    msg = str(e.value)
    assert "prune stage exceeded its 0.1 s bound" in msg and "stage_timeout_s.prune" in msg and "\n" not in msg
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGALRM))
    # within its bound the same work completes, and no alarm is left behind
    with stage_bound("prune", 30):
        res = prune_model(_slow_model(0.0), {"_default": 0.5}, x)
    assert res.params_after < res.params_before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_bound_names_the_library_call_it_interrupted():
    model = _slow_model(0.3)
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(StageError, match=r"in torch_pruning .*"), stage_bound("prune", 0.05):
        import torch_pruning as tp

        tp.DependencyGraph().build_dependency(model, example_inputs=x)


def test_outside_the_main_thread_the_stage_runs_unbounded_and_says_so():
    notes: list[str] = []
    done: list[bool] = []

    def work():
        with stage_bound("export", 0.01, log=notes.append):
            time.sleep(0.1)
        done.append(True)

    th = threading.Thread(target=work)
    th.start()
    th.join()
    assert done == [True]
    assert len(notes) == 1 and "runs without its 0.01 s bound" in notes[0]


def test_profile_field_defaults_and_validation():
    assert HardwareProfile().stage_timeout_s.prune == 120.0
    assert HardwareProfile(stage_timeout_s={"prune": None}).stage_timeout_s.prune is None
    with pytest.raises(Exception, match="greater than 0"):
        StageBounds(prune=0)
    with pytest.raises(Exception, match="distill"):
        StageBounds(distill=5)  # not a bounded stage: extra fields are refused


def test_a_trial_past_its_bound_fails_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    from autocompress.cli import main

    space = {"kind": "search_space", "name": "bounded", "sparsity": {"granularity": "uniform",
             "range": {"low": 0.25, "high": 0.5, "step": 0.25}}, "bits": {"choices": ["fp32"]},
             "distill": {"epochs": 1}}
    profile = {**FAST_PROFILE, "stage_timeout_s": {"prune": 0.2}}
    ws = make_workspace(tmp_path, space, profile, models_source=SLOW_SOURCE, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = tmp_path / "run"
    rc = main(["run", "--model", f"{ws / 'models.py'}:slow_cnn", "--checkpoint", str(ws / "teacher.pt"),
               "--data", "digits", "--image-size", "16", "--space", str(ws / "space.yaml"),
               "--profile", str(ws / "profile.yaml"), "--trials", "2", "--out", str(out), "--max-accuracy-drop", "90"])
    rows = pd.read_csv(out / "trials.csv")
    assert len(rows) == 2  # the study went on after the first trial stopped
    assert set(rows.status) == {"FAILED"} and set(rows.stage) == {"prune"}
    assert all("prune stage exceeded its 0.2 s bound" in m for m in rows.message), list(rows.message)
    cap = capsys.readouterr()
    assert rc == 0 and "Traceback" not in cap.out + cap.err  # a finished search exits 0, as documented


def _blocks_after_slow_input(seconds: float) -> nn.Module:
    ns: dict = {}
    exec(SLOW_SOURCE, ns)
    torch.manual_seed(0)

    def block(cin, c):
        return nn.Sequential(nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    return nn.Sequential(ns["SlowOnZeros"](seconds), block(3, 16), block(16, 32), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def test_whole_graph_attempt_past_its_budget_falls_back_to_parts():
    """Torch-Pruning's whole-graph attempt gets part of the prune stage's time (ReXNet's graph build runs for
    many minutes); past it the model is pruned part by part, inside each block."""
    model = _blocks_after_slow_input(0.6)
    x = torch.zeros(1, 3, 16, 16)
    with stage_bound("prune", 60):
        res = prune_model(model, {"_default": 0.5}, x, graph_timeout_s=0.1)
    assert res.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert res.params_after < res.params_before
    for b in ("1", "2"):  # inside each block the first conv halves; each block's output width stays
        assert res.model.get_submodule(f"{b}.0").out_channels == model.get_submodule(f"{b}.0").out_channels // 2
        assert f"{b}.3" in res.fixed_layers
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_outer_stage_bound_wins_over_an_inner_budget():
    model = _blocks_after_slow_input(0.6)
    x = torch.zeros(1, 3, 16, 16)
    t = time.perf_counter()
    with pytest.raises(StageError, match="prune stage exceeded its 0.3 s bound"), stage_bound("prune", 0.3):
        prune_model(model, {"_default": 0.5}, x, graph_timeout_s=50)
    assert time.perf_counter() - t < 3
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
