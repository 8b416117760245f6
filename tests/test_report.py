"""The report and the front are rebuilt from stored records; the page renders in a real browser."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from autocompress.config import Constraints, Objective, RunSpec
from autocompress.records import Candidate, Metrics, TrialRecord, TrialStatus
from autocompress.report import finalize, front_hypervolume, pareto_front, trials_frame
from autocompress.search.pareto import hypervolume
from autocompress.store import RunStore

OBJ = [Objective(name="accuracy"), Objective(name="speedup"), Objective(name="size_mb")]


def _rec(n, acc, sp, size, status=TrialStatus.COMPLETE, bits="int8", sparsity=None):
    sparsity = 0.05 * n if sparsity is None else sparsity  # a distinct candidate per trial unless asked
    cand = Candidate.make(sparsity={"_default": sparsity}, bits={"_default": bits}, params={"sparsity": sparsity, "bits": bits})
    m = Metrics(accuracy=acc, accuracy_drop=(0.99 - acc) * 100, latency_ms=5 / sp, speedup=sp, size_mb=size,
                params=1000, macs=10000) if status == TrialStatus.COMPLETE else Metrics()
    return TrialRecord(number=n, status=status, candidate=cand, metrics=m, duration_s=1.0,
                       stage=None if status == TrialStatus.COMPLETE else "distill",
                       message=None if status == TrialStatus.COMPLETE else "boom")


def _store(tmp_path, records):
    store = RunStore(tmp_path / "run")
    store.create()
    spec = RunSpec(out=str(store.dir))
    store.write_run_yaml(spec.model_dump(mode="json"), {"versions": {}})
    store.write_baseline({"path": "models/baseline.onnx", "accuracy": 0.99, "top5": 1.0, "latency_ms": 5.0,
                          "latency_cv": 0.1, "size_mb": 40.0, "params": 11_000_000, "macs": 500_000_000})
    for r in records:
        store.append(r)
    return store


def test_front_respects_constraints_and_dominance():
    recs = [_rec(0, 0.99, 3.0, 10.0), _rec(1, 0.985, 8.0, 2.0), _rec(2, 0.97, 20.0, 0.5),
            _rec(3, 0.985, 7.0, 3.0), _rec(4, 0.5, 50.0, 0.1, bits="fp32"), _rec(5, 0, 0, 0, TrialStatus.FAILED)]
    df = trials_frame(recs)
    front = pareto_front(df, OBJ, Constraints(max_accuracy_drop=1.0))
    # 2 (drop 2pp) and 4 (drop 49pp) violate the constraint; 3 is dominated by 1
    assert sorted(front["number"]) == [0, 1]
    assert sorted(pareto_front(df, OBJ, Constraints())["number"]) == [0, 1, 2, 4]


def test_front_hypervolume_counts_feasible_trials_only_and_never_shrinks():
    base = {"accuracy": 0.99, "latency_ms": 5.0, "size_mb": 40.0, "params": 1, "macs": 1}
    recs = [_rec(0, 0.99, 3.0, 10.0), _rec(1, 0.985, 8.0, 2.0), _rec(2, 0.97, 20.0, 0.5),
            _rec(3, 0.985, 7.0, 3.0), _rec(4, 0.5, 50.0, 0.1, bits="fp32"), _rec(5, 0, 0, 0, TrialStatus.FAILED)]
    df = trials_frame(recs)
    c = Constraints(max_accuracy_drop=1.0)
    dirs = ["maximize", "maximize", "minimize"]
    # only trials 0 and 1 count: 3 is dominated by 1, 2 and 4 break the constraint, 5 failed
    want = hypervolume([(0.99, 3.0, 10.0), (0.985, 8.0, 2.0)], dirs, (0.89, 1.0, 40.0))
    assert want > 0 and front_hypervolume(df, OBJ, c, base) == pytest.approx(want)
    prefix = [front_hypervolume(df.iloc[: k + 1], OBJ, c, base) for k in range(len(df))]
    assert all(b >= a for a, b in zip(prefix, prefix[1:]))
    assert front_hypervolume(df[df["number"].isin([2, 4, 5])], OBJ, c, base) == 0.0


def test_last_record_wins_and_torn_line_is_skipped(tmp_path):
    store = _store(tmp_path, [_rec(0, 0.9, 2.0, 5.0), _rec(1, 0.95, 2.0, 5.0)])
    store.append(_rec(1, 0.96, 2.0, 5.0))
    with open(store.log_path, "a") as f:
        f.write('{"number": 2, "status": "COMPL')  # a kill in the middle of a write
    recs = store.records()
    assert [r.number for r in recs] == [0, 1] and recs[1].metrics.accuracy == 0.96


def test_interrupted_or_failed_runs_still_get_a_report(tmp_path):
    store = _store(tmp_path, [_rec(0, 0, 0, 0, TrialStatus.FAILED), _rec(1, 0, 0, 0, TrialStatus.FAILED)])
    lines = []
    res = finalize(store.dir, log=lines.append)
    assert res.front.empty and (store.dir / "report.html").is_file()
    text = "\n".join(lines)
    assert "no trial completed" in text and "distill" in text and "boom" in text
    assert len(pd.read_csv(store.dir / "trials.csv")) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_report_renders_in_headless_chromium(tmp_path):
    recs = [_rec(i, 0.99 - 0.003 * i, 1.5 + i, 40.0 / (i + 1)) for i in range(8)]
    store = _store(tmp_path, recs)
    res = finalize(store.dir, log=lambda s: None)
    assert len(res.front) >= 2
    page = store.dir / "report.html"
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # plotly drew its SVG plots (one per figure) and the front table is in the page
    assert dom.stdout.count('class="main-svg"') >= 2, "plotly did not render"
    assert "Pareto front" in dom.stdout and "scatterlayer" in dom.stdout
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    subprocess.run([_chromium(), *flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page with plots, not a blank one


def test_a_duplicate_candidate_appears_once_on_the_front():
    recs = [_rec(0, 0.99, 3.0, 10.0, sparsity=0.5), _rec(1, 0.99, 3.0, 10.0, sparsity=0.5)]
    front = pareto_front(trials_frame(recs), OBJ, Constraints())
    assert front["number"].tolist() == [0]
