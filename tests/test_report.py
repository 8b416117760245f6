"""The report and the front are rebuilt from stored records; the page renders in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from dataclasses import replace

import pandas as pd
import pytest

from autocompress.config import Constraints, Objective, RunSpec
from autocompress.records import Candidate, Metrics, TrialRecord, TrialStatus
from autocompress.cli import main
from autocompress.report import finalize
from autocompress.results import front_2d, front_hypervolume, hypervolume_history, pareto_front, trials_frame
from autocompress.report_html import _tradeoff_fig
from autocompress.search.pareto import hypervolume
from autocompress.tables import display_table
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


INT8_REF = {"accuracy": 0.9871, "accuracy_drop": 0.29, "speedup": 2.345, "size_mb": 10.12, "latency_ms": 2.1,
            "quant": {"format": "qdq", "types": "u8s8"}, "seconds": 3.0}
STOP_REASON = "accuracy 80.1% after distillation is below the target 98.0%"


def _store(tmp_path, records, int8_reference=None):
    store = RunStore(tmp_path / "run")
    store.create()
    spec = RunSpec(out=str(store.dir))
    store.write_run_yaml(spec.model_dump(mode="json"), {"versions": {}})
    store.write_baseline({"path": "models/baseline.onnx", "accuracy": 0.99, "top5": 1.0, "latency_ms": 5.0,
                          "latency_cv": 0.1, "size_mb": 40.0, "params": 11_000_000, "macs": 500_000_000,
                          **({"int8_reference": int8_reference} if int8_reference else {})})
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


def _mixed_run(tmp_path):
    """8 completed trials (trial 0 a seed), a STOPPED seed, a far-off trial, and the int8-alone reference."""
    recs = [_rec(i, 0.99 - 0.003 * i, 1.5 + i, 40.0 / (i + 1)) for i in range(8)]
    recs[0] = replace(recs[0], seed="uniform 50% + int8, KD 8 ep")
    recs.append(replace(_rec(8, 0, 0, 0, TrialStatus.STOPPED), seed="uniform 80% + int8, KD 8 ep", message=STOP_REASON))
    recs.append(_rec(9, 0.4, 30.0, 0.5))
    return _store(tmp_path, recs, int8_reference=INT8_REF)


def test_front_table_has_units_and_rounding(tmp_path):
    store = _mixed_run(tmp_path)
    finalize(store.dir, log=lambda s: None)
    df = trials_frame(store.records())
    table = display_table(df[df["number"] == 1], {"size_mb": 40.0})
    row = table.iloc[0].to_dict()
    assert {"accuracy (%)", "drop (pp)", "speedup (x)", "size (MB)", "params (M)", "MACs (M)"} <= set(table.columns)
    assert row["accuracy (%)"] == "98.70" and row["drop (pp)"] == "+0.30" and row["speedup (x)"] == "2.50"
    assert row["size (MB)"] == "20.00" and row["smaller (x)"] == "2.0" and row["params (M)"] == "0.00" and row["MACs (M)"] == "0.0"
    page = (store.dir / "report.html").read_text()
    front = page.split("<h2>Pareto front")[1].split("</table>")[0]
    assert "98.70" in front and "speedup (x)" in front and "size (MB)" in front
    # no raw floats: nothing with more than 4 decimals, no exponent notation
    assert not re.search(r">\s*-?\d+\.\d{5,}\s*<", front) and not re.search(r"\de[+-]\d", front)


def test_stopped_and_failed_trials_are_listed_with_stage_and_reason(tmp_path):
    store = _mixed_run(tmp_path)
    store.append(replace(_rec(10, 0, 0, 0, TrialStatus.FAILED), message="RuntimeError: boom in quantize", stage="quantize"))
    finalize(store.dir, log=lambda s: None)
    page = (store.dir / "report.html").read_text()
    section = page.split("Trials that did not complete (2 of 11)")[1].split("</table>")[0]
    assert "STOPPED" in section and "distill" in section and STOP_REASON in section
    assert "FAILED" in section and "quantize" in section and "boom in quantize" in section
    assert "uniform 80% + int8" in section  # the stopped trial was a seed setting


def test_reference_points_in_the_report_and_in_show(tmp_path, capsys):
    store = _mixed_run(tmp_path)
    lines = []
    finalize(store.dir, log=lines.append)
    page = (store.dir / "report.html").read_text()
    assert "int8 alone" in page and "2.35x" in page and "uniform 50% + int8, KD 8 ep" in page
    # the verdict compares the fastest feasible model (trial 3, 4.5x) with int8 alone (2.345x)
    assert f"{4.5 / 2.345:.2f}x</b> the speed of int8 alone" in page
    assert any("int8 alone" in line and "(trial 3) is 1.92x its speed (as the search measured them)" in line for line in lines)
    assert "the speed of int8 alone (2.35x; as the search measured them)" in page
    assert main(["show", str(store.dir)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "Reference points" in out and "fp32 baseline" in out
    assert "int8 alone" in out and "2.35" in out and "10.12" in out
    assert "seed: uniform 50% + int8, KD 8 ep" in out and "seed: uniform 80% + int8, KD 8 ep" in out and "STOPPED" in out
    assert "4.50" in out and "98.10" in out  # trial 3 on the front, with units in the header
    assert main(["show", str(tmp_path / "nowhere")]) == 2


def test_staircases_are_the_2d_non_dominated_feasible_trials():
    # trial 2 is on the 3-objective front only by its size: beaten on accuracy and speedup by trial 1
    recs = [_rec(0, 0.99, 2.0, 10.0), _rec(1, 0.988, 6.0, 5.0), _rec(2, 0.985, 5.0, 1.0), _rec(3, 0.982, 9.0, 8.0),
            _rec(4, 0.97, 30.0, 0.2), _rec(5, 0.986, 3.0, 20.0)]
    df = trials_frame(recs)
    c = Constraints(max_accuracy_drop=1.0)
    feas = df[df["accuracy_drop"] <= 1.0]

    def brute(x, better):
        keep = []
        for _, p in feas.iterrows():
            beaten = any((q["accuracy"] >= p["accuracy"]) and better(q[x], p[x]) is not False and
                         (q["accuracy"] > p["accuracy"] or better(q[x], p[x])) and (better(q[x], p[x]) or q[x] == p[x])
                         for _, q in feas.iterrows() if q["number"] != p["number"])
            if not beaten:
                keep.append(int(p["number"]))
        return sorted(keep)

    speed = front_2d(df, "speedup", "maximize", c)
    size = front_2d(df, "size_mb", "minimize", c)
    assert sorted(speed["number"]) == brute("speedup", lambda a, b: a > b) == [0, 1, 3]
    assert sorted(size["number"]) == brute("size_mb", lambda a, b: a < b) == [0, 1, 2]
    assert 2 in set(pareto_front(df, OBJ, c)["number"])  # on the 3-D front, yet off the speed staircase
    # the plots draw exactly those points, as staircases
    base = {"accuracy": 0.99, "size_mb": 40.0, "latency_ms": 5.0, "params": 1, "macs": 1}
    spec = RunSpec(constraints={"max_accuracy_drop": 1.0})
    for x, want, shape in (("speedup", speed, "vh"), ("size_mb", size, "hv")):
        fig = _tradeoff_fig(df, pareto_front(df, OBJ, c), spec, base, x)
        stairs = [t for t in fig.data if t.name.startswith("front:")]
        assert len(stairs) == 1 and stairs[0].line.shape == shape
        assert list(stairs[0].x) == want[x].tolist() and list(stairs[0].y) == want["accuracy"].tolist()


def test_hypervolume_history_matches_the_prefix_fronts():
    base = {"accuracy": 0.99, "latency_ms": 5.0, "size_mb": 40.0, "params": 1, "macs": 1}
    recs = [_rec(0, 0.99, 3.0, 10.0), _rec(1, 0.985, 8.0, 2.0), _rec(2, 0.97, 20.0, 0.5), _rec(3, 0.985, 7.0, 3.0),
            _rec(4, 0, 0, 0, TrialStatus.STOPPED), _rec(5, 0.989, 12.0, 1.0)]
    df = trials_frame(recs)
    c = Constraints(max_accuracy_drop=1.0)
    hist = hypervolume_history(df, OBJ, c, base)
    assert hist["number"].tolist() == [0, 1, 2, 3, 4, 5]
    want = [front_hypervolume(df.iloc[: k + 1], OBJ, c, base) for k in range(len(df))]
    assert hist["hypervolume"].tolist() == pytest.approx(want) and want[-1] > want[0] > 0


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_report_renders_in_headless_chromium(tmp_path):
    store = _mixed_run(tmp_path)
    res = finalize(store.dir, log=lambda s: None)
    assert len(res.front) >= 2
    page = store.dir / "report.html"
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # plotly drew its SVG plots (two trade-offs, time, time per trial, hypervolume) and the tables are in the page
    assert dom.stdout.count('class="main-svg"') >= 5, "plotly did not render"
    assert "Pareto front" in dom.stdout and "scatterlayer" in dom.stdout
    assert "int8 alone" in dom.stdout and "STOPPED" in dom.stdout and "ort.InferenceSession" in dom.stdout
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console
    subprocess.run([_chromium(), *flags, "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000  # a page with plots, not a blank one


def test_a_duplicate_candidate_appears_once_on_the_front():
    recs = [_rec(0, 0.99, 3.0, 10.0, sparsity=0.5), _rec(1, 0.99, 3.0, 10.0, sparsity=0.5)]
    front = pareto_front(trials_frame(recs), OBJ, Constraints())
    assert front["number"].tolist() == [0]


def test_one_network_reached_by_several_ratios_appears_once_on_the_front():
    """Channel rounding maps 70%, 80% and 90% of a small network to one graph, measured once per run: the trials tie
    on every objective and the front lists the earliest (a user CNN's front listed 5 copies of one model)."""
    from autocompress.results import front_2d

    recs = [_rec(3, 0.99, 3.0, 10.0, sparsity=0.8), _rec(2, 0.99, 3.0, 10.0, sparsity=0.7),
            _rec(4, 0.99, 3.0, 10.0, sparsity=0.9), _rec(5, 0.995, 2.0, 12.0, sparsity=0.5)]
    front = pareto_front(trials_frame(recs), OBJ, Constraints())
    assert sorted(front["number"]) == [2, 5]
    assert sorted(front_2d(trials_frame(recs), "speedup", "maximize", Constraints())["number"]) == [2, 5]
    # a tie on some objectives only is two models
    other = [_rec(2, 0.99, 3.0, 10.0, sparsity=0.7), _rec(3, 0.99, 3.5, 11.0, sparsity=0.8)]
    assert sorted(pareto_front(trials_frame(other), OBJ, Constraints())["number"]) == [2, 3]


def _store_on_study(tmp_path, records, storage: str, study: str):
    store = RunStore(tmp_path / "run")
    store.create()
    spec = RunSpec(out=str(store.dir), storage=storage, study=study)
    store.write_run_yaml(spec.model_dump(mode="json"), {"versions": {}})
    for r in records:
        store.append(r)
    return store, spec


def test_load_records_unites_other_workers_trials_and_says_what_it_leaves_out(tmp_path):
    """Trials other workers stored on the study join the folder's own; a record that cannot be read is named."""
    import json

    from autocompress.results import load_records
    from autocompress.search.optuna_backend import RECORD_ATTR, OptunaBackend

    url = f"journal://{tmp_path / 'study.log'}"
    store, spec = _store_on_study(tmp_path, [_rec(0, 0.9, 2.0, 5.0)], url, "shared")
    backend = OptunaBackend.open(url=url, study_name="shared", objectives=spec.objectives, sampler="random", seed=0,
                                 budget=10, constraints_len=1)
    for rec in (_rec(0, 0.9, 2.0, 5.0), _rec(1, 0.95, 3.0, 4.0), None):  # 0: also in the log; 1: another worker's
        trial, _, number = backend.ask()
        if rec is None:  # a record this version cannot read
            trial.set_user_attr(RECORD_ATTR, json.dumps({"number": number, "status": "COMPLETE"}))
            backend.study.tell(trial, state=__import__("optuna").trial.TrialState.FAIL)
        else:
            backend.tell(trial, replace(rec, number=number), [0.0])
    notes = []
    recs = load_records(store.dir, log=notes.append)
    assert [r.number for r in recs] == [0, 1] and recs[1].metrics.speedup == 3.0
    assert notes == ["note: 1 trial record(s) on study 'shared' could not be read and are left out (trial 2); a record "
                     "written by another autocompress version?"]


def test_load_records_says_when_the_study_cannot_be_read(tmp_path):
    """A study database that cannot be opened: the folder's own trials, and one line saying what was not read."""
    from autocompress.results import load_records

    db = tmp_path / "study.db"
    db.write_text("this is not an SQLite database\n" * 100)
    store, _ = _store_on_study(tmp_path, [_rec(0, 0.9, 2.0, 5.0), _rec(1, 0.95, 3.0, 4.0)], f"sqlite:///{db}", "shared")
    notes = []
    recs = load_records(store.dir, log=notes.append)
    assert [r.number for r in recs] == [0, 1]
    assert len(notes) == 1 and notes[0].startswith(f"note: trials stored on study 'shared' (sqlite:///{db}) not read (")
    assert notes[0].endswith(f"these results hold the 2 trial(s) of {store.log_path} only"), notes


def test_the_comparison_with_int8_alone_uses_the_re_timed_figures_where_both_were_re_timed(tmp_path):
    """The search timed trial 3 at 4.5x and int8 alone at 2.345x; the final pass re-timed them at 3.0x and 2.5x in
    the same fresh processes: the line a user reads compares those (1.20x), and shows both figures."""
    from autocompress.tables import reference_lines

    store = _mixed_run(tmp_path)
    df = trials_frame(store.records())
    baseline, spec = store.read_baseline(), RunSpec(out=str(store.dir))  # the spec _store wrote
    timed = {"trial 3": {"speedup": 3.0}, "int8 alone": {"speedup": 2.5}, "trial 0": {"speedup": 1.4}}
    lines = reference_lines(df, baseline, spec, timed=timed)
    assert any(x.startswith("seed uniform 50% + int8, KD 8 ep (trial 0): 1.50x (1.40x re-timed), drop") for x in lines)
    line = next(x for x in lines if x.startswith("int8 alone"))
    assert "2.35x (2.50x re-timed)" in line and "(trial 3) is 1.20x its speed (both re-timed in the same fresh processes)" in line
    # only one of the two re-timed: the search's pair, not a mix
    line = next(x for x in reference_lines(df, baseline, spec, timed={"trial 3": {"speedup": 3.0}}) if x.startswith("int8 alone"))
    assert f"is {4.5 / 2.345:.2f}x its speed (as the search measured them)" in line


def test_a_run_s_re_timing_is_reused_however_its_folder_is_named_or_moved(tmp_path, monkeypatch):
    """retime.json holds each file by its path within the run folder: `autocompress report results/RUN` (relative)
    and the folder moved elsewhere both find the re-timed figures; a file that changed does not."""
    from autocompress.retiming import FILE, _stamp, retime_run

    run = tmp_path / "results" / "run"
    (run / "models").mkdir(parents=True)
    (run / "models" / "int8_reference.onnx").write_bytes(b"x" * 10)
    meta = {"spec": RunSpec(out=str(run)).model_dump(mode="json")}
    models = {"int8 alone": {"speedup": 2.5}}
    targets = {"int8 alone": run / "models" / "int8_reference.onnx"}
    (run / FILE).write_text(json.dumps({"windows": 3, "files": _stamp(targets, run), "models": models}))
    empty = pd.DataFrame()
    monkeypatch.chdir(tmp_path)
    assert retime_run(Path("results/run"), empty, empty, meta, windows=0) == models
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    assert retime_run(moved, empty, empty, meta, windows=0) == models
    (moved / "models" / "int8_reference.onnx").write_bytes(b"y" * 11)
    assert retime_run(moved, empty, empty, meta, windows=0) is None
    # an older retime.json recorded absolute paths: still read where the folder has not moved
    old = {"int8 alone": [str(run / "models" / "int8_reference.onnx"), 10]}
    (run / FILE).write_text(json.dumps({"windows": 3, "files": old, "models": models}))
    assert retime_run(Path("results/run"), empty, empty, meta, windows=0) == models
