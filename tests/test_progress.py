"""The search loop's display: a live bar on a terminal, plain lines elsewhere; KD epochs only when verbose."""

from __future__ import annotations

import re

from autocompress.config import Constraints
from autocompress.progress import LoopDisplay, best_tradeoffs
from autocompress.records import TrialStatus
from test_report import _rec

C = Constraints(max_accuracy_drop=1.0)


def test_best_tradeoffs_are_over_the_trials_that_meet_the_constraints():
    recs = [_rec(0, 0.99, 2.0, 10.0), _rec(1, 0.985, 4.0, 3.0), _rec(2, 0.95, 30.0, 0.1), _rec(3, 0, 0, 0, TrialStatus.STOPPED)]
    text = best_tradeoffs(recs, C)
    assert text.split(" | ") == ["fastest 4.00x (drop +0.50 pp, 3.00 MB; trial 1)",
                                 "smallest 3.00 MB (4.00x, drop +0.50 pp; trial 1)",
                                 "most accurate drop +0.00 pp (2.00x; trial 0)"]
    assert best_tradeoffs(recs[2:], C) == ""  # trial 2 breaks the accuracy limit, 3 stopped


def test_plain_lines_without_a_terminal(capsys):
    for verbose in (False, True):
        lines = []
        d = LoopDisplay(lines.append, total=3, done=0, live=True, verbose=verbose)  # capsys: not a terminal
        assert not d.live
        d.started(0, "pruned, sparsity 0.50, int8")
        d.detail("    epoch 1/3: val acc 97.00%")
        d.detail("note: the prune stage runs without its bound here")
        d.finished("[1/3 0:01] trial 0 COMPLETE", 1, "fastest 2.00x")
        d.stop()
        want = ["note: the prune stage runs without its bound here", "[1/3 0:01] trial 0 COMPLETE"]
        if verbose:
            want = ["trial 0: pruned, sparsity 0.50, int8", "    epoch 1/3: val acc 97.00%", *want]
        assert lines == want
    assert capsys.readouterr().out == ""


def test_live_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat the captured stdout as a terminal
    monkeypatch.setenv("COLUMNS", "120")
    lines = []
    d = LoopDisplay(lines.append, total=4, done=1, live=True, verbose=False)
    assert d.live
    d.best(best_tradeoffs([_rec(0, 0.99, 2.0, 10.0)], C))
    d.started(1, "pruned, sparsity 0.50, int8")
    d.detail("    epoch 2/3: val acc 97.00%")
    d.finished("[2/4 0:01] trial 1 COMPLETE", 2, best_tradeoffs([_rec(0, 0.99, 2.0, 10.0), _rec(1, 0.985, 4.0, 3.0)], C))
    d.stop()
    out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", capsys.readouterr().out)
    assert lines == []  # everything went through the live console
    assert "[2/4 0:01] trial 1 COMPLETE" in out and "2/4" in out and "elapsed" in out
    assert re.search(r"ETA \d:\d\d:\d\d", out)  # estimated from the trial this process finished
    assert "now: trial 1: pruned, sparsity 0.50, int8 - epoch 2/3: val acc 97.00%" in out
    assert "best so far within the constraints:" in out and "fastest 4.00x (drop +0.50 pp, 3.00 MB; trial 1)" in out
