"""Speed before training and multi-fidelity distillation (trial.run_trial, search/scheduler.py).

The scheduler's rules are checked on plain values; the trial's phases on a real tiny run folder (a seeded
tiny CNN teacher, 16-px digits, the real pruner, exporter, quantizer and ONNX Runtime). Where a trial must
meet a peer that dominates it, the peer is an observation handed to the real scheduler (what the loop does
with every finished trial), with figures no real candidate can match, so the verdict does not hang on timing.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from autocompress.records import Candidate, DistillSpec, Metrics, TrialRecord, TrialStatus
from autocompress.search.scheduler import FidelityScheduler
from conftest import FAST_PROFILE, make_workspace


# ---------------------------------------------------------------------------- the scheduler, on plain values
def _sched(**kw) -> FidelityScheduler:
    kw = {"target": 0.90, "num_classes": 10, "gate_margin": 0.005, **kw}
    return FidelityScheduler(**kw)


def test_the_gate_refuses_a_missed_constraint_before_training():
    s = _sched(min_speedup=2.0, max_size_mb=1.0, max_latency_ms=3.0)
    v = s.gate(1.5, 0.5, 1.0)
    assert v.status == TrialStatus.INFEASIBLE and "min_speedup 2x" in v.message and "1.50x" in v.message
    assert s.gate(2.5, 1.2, 1.0).status == TrialStatus.INFEASIBLE and "max_size_mb" in s.gate(2.5, 1.2, 1.0).message
    assert "max_latency_ms" in s.gate(2.5, 0.5, 4.0).message
    assert s.gate(2.5, 0.5, 1.0) is None
    # constraints hold whether or not the multi-fidelity rules are on; no target needed
    assert _sched(target=None, multi_fidelity=False, min_speedup=2.0).gate(1.0, 0.5).status == TrialStatus.INFEASIBLE


def test_the_gate_stops_a_candidate_an_accurate_finished_one_dominates_in_speed_and_size():
    s = _sched()
    s.observe((0.5, 0.95), 0.95, speedup=4.0, size_mb=0.5, number=7)
    v = s.gate(2.0, 0.6)  # slower and bigger than trial 7, which meets the target with margin
    assert v.status == TrialStatus.STOPPED and "trial 7" in v.message and "4.00x" in v.message
    assert s.gate(2.0, 0.3) is None  # smaller: can reach the front on size
    assert s.gate(4.5, 0.6) is None  # faster
    assert s.gate(3.9, 0.5) is None  # the same graph within the noise of two speed measurements: may gain accuracy
    assert s.gate(4.0, 0.6).status == TrialStatus.STOPPED  # as fast (within noise) and clearly bigger
    # a dominating candidate that does not clear the target by the margin stops nothing
    t = _sched()
    t.observe((0.5, 0.902), 0.902, speedup=4.0, size_mb=0.5)
    assert t.gate(2.0, 0.6) is None
    # rules off: no dominance stop, no rung; without a target (a metric of the user's) neither
    off = _sched(multi_fidelity=False)
    off.observe((0.5, 0.95), 0.95, speedup=4.0, size_mb=0.5)
    assert off.gate(2.0, 0.6) is None
    none = _sched(target=None)
    none.observe((0.5, 0.95), 0.95, speedup=4.0, size_mb=0.5)
    assert none.gate(2.0, 0.6) is None


def test_a_rung_stops_a_candidate_dominated_there_by_one_that_went_on():
    s = _sched()
    s.observe((0.80, 0.90, 0.93, 0.95), 0.95, speedup=3.0, size_mb=0.4, number=2)
    # epoch 1 (a rung): 60% vs 80% there, slower and bigger -> stop, naming trial 2
    why = s.rung(0, 0.60, 4, speedup=2.0, size_mb=0.5)
    assert why and "rung at epoch 1/4" in why and "trial 2" in why and "80.0%" in why
    assert s.rung(1, 0.60, 4, speedup=2.0, size_mb=0.5) is None  # epoch 2 is not a rung
    assert s.rung(2, 0.80, 4, speedup=2.0, size_mb=0.5) is not None  # epoch 3 is
    assert s.rung(0, 0.79, 4, speedup=2.0, size_mb=0.5) is None  # within the margin
    assert s.rung(0, 0.60, 4, speedup=3.5, size_mb=0.5) is None  # faster: could be on the front
    assert s.rung(0, 0.60, 4, speedup=2.0, size_mb=0.3) is None  # smaller
    assert s.rung(0, 0.60, 5, speedup=2.0, size_mb=0.5) is None  # another budget, another schedule
    assert s.rung(0, 0.60, 4, speedup=None, size_mb=None) is None  # speed unknown: never
    assert _sched(target=0.5).rung(0, 0.60, 4, speedup=2.0, size_mb=0.5) is None  # already at the target
    assert _sched(multi_fidelity=False, peers=list(s.peers)).rung(0, 0.60, 4, speedup=2.0, size_mb=0.5) is None
    # the rung is a candidate's last chance before the full budget, never the last epoch itself
    assert _sched(rungs=(1, 4), peers=list(s.peers)).rung(3, 0.60, 4, speedup=2.0, size_mb=0.5) is None


def test_a_rung_reads_nothing_from_a_peer_still_near_chance_there():
    # digits, ResNet-20 pruned 60% vs 70%: 10.0% and 17.3% after epoch 1 of 8; the 70% one ended at 98%
    s = _sched()
    s.observe((0.173, 0.6, 0.9, 0.95, 0.97, 0.98, 0.98, 0.98), 0.98, speedup=2.04, size_mb=0.07, number=1)
    assert s.rung(0, 0.10, 8, speedup=1.83, size_mb=0.09) is None  # 17.3% is not half way from 10% to 98%
    assert s.rung(2, 0.60, 8, speedup=1.83, size_mb=0.09) is not None  # at epoch 3 it was (90%): that rung counts


def test_the_first_early_stoppers_rules_are_kept():
    s = _sched(multi_fidelity=False)
    assert "below the target" in s.check(2, 0.85, 3)  # after the last epoch, more than the margin below
    assert s.check(2, 0.89, 3) is None
    assert "collapsed" in s.check(1, 0.10, 3)
    for acc in (0.95, 0.96, 0.97):
        s.observe((0.70, 0.90, acc), acc)
    assert s.check(0, 0.60, 3) is None  # the peer rule is lagging(): speed-aware, not cached
    assert "below every candidate" in s.lagging(0, 0.60, 3)
    assert s.lagging(0, 0.69, 3) is None


def test_the_fastest_candidate_is_not_stopped_for_lagging_slower_peers():
    # custom CNN: the uniform 90% seed had 62% after epoch 2 of 8 while the 50-80% seeds had >= 83% there
    s = _sched(multi_fidelity=False)
    for acc, sp in ((0.95, 4.1), (0.96, 5.9), (0.97, 6.7)):
        s.observe((0.85, 0.90, acc), acc, speedup=sp, size_mb=0.3)
    assert s.lagging(1, 0.62, 3, speedup=8.0) is None  # faster than every peer that reached the target
    assert s.lagging(1, 0.62, 3, speedup=6.8) is None  # one peer at least as fast (6.7x): fewer than min_history
    assert "at least as fast" in s.lagging(1, 0.62, 3, speedup=4.0)  # slower than all three: stopped
    assert "below every candidate" in s.lagging(1, 0.62, 3)  # speed unknown: all peers count


def _rec(n, status, hist, acc, speedup, size, **kw) -> TrialRecord:
    return TrialRecord(number=n, status=status, candidate=Candidate.make(sparsity={"_default": 0.5}),
                       metrics=Metrics(accuracy=acc, speedup=speedup, size_mb=size), kd_history=hist, **kw)


def test_history_counts_a_trial_once_and_is_rebuilt_from_stored_records():
    recs = [_rec(0, TrialStatus.COMPLETE, (0.8, 0.95), 0.95, 4.0, 0.5, phase="final", latency_source="untrained graph"),
            _rec(1, TrialStatus.STOPPED, (0.3,), None, 2.0, 0.6, phase="distill"),
            _rec(2, TrialStatus.COMPLETE, (0.8, 0.95), 0.95, 1.5, 2.0)]  # same history and accuracy, another candidate
    live = _sched()
    for r in recs:
        live.observe_record(r)  # the trial that ran it
        if r.status == TrialStatus.COMPLETE:
            live.observe(r.kd_history, r.metrics.accuracy)  # and the loop that settled it, without speed
    assert [p.number for p in live.peers] == [0, 2]
    # a resumed run: the records as trials.jsonl holds them
    stored = [TrialRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in recs]
    assert stored[0].phase == "final" and stored[0].latency_source == "untrained graph"
    rebuilt = _sched().replay(stored)
    assert rebuilt.peers == live.peers
    assert rebuilt.gate(2.0, 0.6).message == live.gate(2.0, 0.6).message
    # records written before phases existed still load
    old = recs[0].to_dict()
    del old["phase"], old["latency_source"]
    assert TrialRecord.from_dict(old).phase is None


# ---------------------------------------------------------------------------- graph signature
def test_the_graph_signature_ignores_weights_not_structure(tmp_path):
    import torch

    from autocompress.compress.export import export_onnx
    from autocompress.compress.quantize import quantize_model
    from autocompress.records import QuantSpec
    from autocompress.trial import graph_signature

    def net(width):
        return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10)).eval()

    x = torch.zeros(1, 3, 16, 16)
    torch.manual_seed(0)
    a = net(8)
    export_onnx(a, x, tmp_path / "a.onnx")
    with torch.no_grad():
        for p in a.parameters():
            p.mul_(3.0).add_(0.1)  # "trained": other weights, the same graph
    export_onnx(a, x, tmp_path / "a_trained.onnx")
    export_onnx(net(6), x, tmp_path / "b.onnx")
    calib = torch.randn(16, 3, 16, 16).numpy()
    for n in ("a", "a_trained"):
        quantize_model(tmp_path / f"{n}.onnx", tmp_path / f"{n}.q.onnx", {"_default": "int8"}, QuantSpec(), calib)
    sig = {n: graph_signature(tmp_path / f"{n}.onnx") for n in ("a", "a_trained", "b", "a.q", "a_trained.q")}
    assert sig["a"] == sig["a_trained"] and sig["a.q"] == sig["a_trained.q"]
    assert len({sig["a"], sig["b"], sig["a.q"]}) == 3


# ---------------------------------------------------------------------------- the trial's phases, for real
SPACE = {
    "kind": "search_space", "name": "tiny-speed",
    "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}, "criterion": ["l1"]},
    "bits": {"choices": ["fp32", "int8"]},
    "distill": {"epochs": [1, 3], "lr": 0.05},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared run (baseline, logits) of tiny_cnn from a seeded checkpoint, its context and run spec."""
    from autocompress.config import load_run_spec
    from autocompress.engine import prepare

    ws = make_workspace(tmp_path_factory.mktemp("speed"), SPACE, FAST_PROFILE, teacher="teacher.pt")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    spec = load_run_spec(None, model=f"{ws / 'models.py'}:tiny_cnn", checkpoint=str(ws / "teacher.pt"), data="digits",
                         image_size=16, space=str(ws / "space.yaml"), profile=str(ws / "profile.yaml"),
                         out=str(ws / "run"), constraints={"max_accuracy_drop": 90})
    yield prepare(spec, ws / "run", log=lambda s: None), spec
    mp.undo()


def _cand(sparsity=0.5, bits="int8", epochs=1):
    return Candidate.make(sparsity={"_default": sparsity}, bits={"_default": bits},
                          distill=DistillSpec(epochs=epochs, lr=0.05) if epochs else None)


def _times(rec):
    return dict(rec.stage_times)


def test_a_complete_trial_reuses_the_speed_measured_before_training(prepared):
    from autocompress.trial import run_trial

    prep, _ = prepared
    rec = run_trial(100, _cand(0.5, "int8", 1), prep.ctx)
    assert rec.status == TrialStatus.COMPLETE, rec.message
    assert rec.phase == "final" and rec.latency_source == "untrained graph"
    t = _times(rec)
    assert t["latency_pre"] > 0 and t["latency"] == t["latency_pre"]  # timed once, before distillation
    assert t["student"] >= t["prune"] + t["distill"] + t["export"] - 1e-3  # the report's "student" keeps its meaning
    assert rec.metrics.speedup > 0 and rec.metrics.size_mb > 0 and len(rec.kd_history) == 1
    trial_dir = prep.ctx.run_dir / "trials" / "00100"
    assert sorted(p.name for p in trial_dir.iterdir()) == ["model.onnx"]  # the untrained copies are gone
    meta = json.loads((prep.ctx.cache_dir / rec.candidate.student_key() / "meta.json").read_text())
    assert meta["history"] == list(rec.kd_history) and "stopped" not in meta
    # the same student in fp32: distilled already (cache), timed on its final model
    again = run_trial(101, _cand(0.5, "fp32", 1), prep.ctx)
    assert again.status == TrialStatus.COMPLETE and _times(again).get("student_cached") == 1.0
    assert again.latency_source == "trained model" and "latency_pre" not in _times(again)
    # without distillation the measured export is the model (a fresh history: trial 100 would gate it, smaller and faster)
    plain = run_trial(102, _cand(0.25, "int8", 0), replace(prep.ctx, early_stopper=replace(prep.ctx.early_stopper, peers=[])))
    assert plain.status == TrialStatus.COMPLETE and plain.latency_source == "untrained graph" and not plain.kd_history


def test_a_graph_measured_before_in_the_run_takes_that_figure(prepared):
    """One measurement per graph: a candidate whose model has a graph an earlier trial measured (here the same
    student again; channel rounding gives the same case for neighbouring ratios) takes that trial's speed instead
    of another draw of the machine's noise."""
    from autocompress.trial import graph_signature, run_trial

    prep, _ = prepared
    lines = []
    ctx = replace(prep.ctx, log=lines.append, early_stopper=None)  # trained in full
    first = run_trial(130, _cand(0.5, "int8", 2), ctx)
    again = run_trial(131, _cand(0.5, "int8", 2), ctx)
    assert first.status == again.status == TrialStatus.COMPLETE, (first.message, again.message)
    assert again.metrics.speedup == first.metrics.speedup and again.metrics.latency_ms == first.metrics.latency_ms
    sig = graph_signature(prep.ctx.run_dir / again.artifact)
    owner = json.loads((prep.ctx.run_dir / "cache" / "speed" / f"{sig}.json").read_text())["trial"]
    assert owner in (100, 130)  # trial 100 (the same network, another KD budget) may have measured this graph first
    assert lines[-1] == f"    the same graph as trial {owner}: its speed ({first.metrics.speedup:.2f}x) taken, not measured again"


def test_a_graph_that_changed_in_training_is_timed_again(prepared, monkeypatch):
    import autocompress.trial as trial

    prep, _ = prepared
    monkeypatch.setattr(trial, "graph_signature", lambda p: f"{p.parent.name}-{p.name}")  # every file its own graph
    rec = trial.run_trial(110, _cand(0.75, "int8", 1), prep.ctx)
    assert rec.status == TrialStatus.COMPLETE and rec.latency_source == "trained model"
    t = _times(rec)
    assert t["latency"] > t["latency_pre"] > 0


def test_the_gate_stops_a_dominated_candidate_before_any_distillation(prepared):
    from autocompress.trial import run_trial

    prep, spec = prepared
    sched = replace(prep.ctx.early_stopper, peers=[])
    sched.observe((1.0,), 1.0, speedup=1e6, size_mb=1e-6, number=99)  # a finished candidate nothing can match
    cand = _cand(0.25, "int8", 3)
    rec = run_trial(120, cand, replace(prep.ctx, early_stopper=sched))
    assert rec.status == TrialStatus.STOPPED and rec.stage == "gate" and "trial 99" in rec.message
    assert rec.phase == "speed" and not rec.kd_history and "distill" not in _times(rec)
    assert rec.metrics.speedup > 0 and rec.metrics.size_mb > 0 and rec.metrics.accuracy is None
    assert not (prep.ctx.cache_dir / cand.student_key()).exists()  # nothing cached: nothing was trained
    # a speed constraint no candidate meets: INFEASIBLE at the gate, with the figure that missed it
    strict = replace(prep.ctx.early_stopper, peers=[], min_speedup=1e6)
    rec = run_trial(121, cand, replace(prep.ctx, early_stopper=strict))
    assert rec.status == TrialStatus.INFEASIBLE and rec.stage == "gate" and "min_speedup" in rec.message
    # with the scheduler off (--no-early-stop) the same candidate is trained in full
    rec = run_trial(122, cand, replace(prep.ctx, early_stopper=None))
    assert rec.status == TrialStatus.COMPLETE and len(rec.kd_history) == 3


def test_a_rung_stops_a_distillation_and_leaves_the_student_uncached(prepared):
    from autocompress.trial import run_trial

    prep, _ = prepared
    sched = replace(prep.ctx.early_stopper, peers=[], target=0.999, min_history=99)
    sched.observe((1.0, 1.0, 1.0), 1.0, speedup=1e6, size_mb=1e-6, number=98)
    cand = _cand(0.5, "int8", 3)
    rec = run_trial(130, cand, replace(prep.ctx, early_stopper=sched))
    assert rec.status == TrialStatus.STOPPED and rec.stage == "distill" and rec.phase == "distill"
    assert "rung at epoch 1/3" in rec.message and "trial 98" in rec.message and len(rec.kd_history) == 1
    assert rec.metrics.speedup > 0  # measured before training
    # the verdict hangs on this candidate's speed: the student is not cached as stopped for other bit-widths
    assert not (prep.ctx.cache_dir / cand.student_key() / "meta.json").exists()
    off = replace(sched, multi_fidelity=False)
    rec = run_trial(131, cand, replace(prep.ctx, early_stopper=off))
    assert len(rec.kd_history) >= 2 and "rung" not in (rec.message or "")


def test_a_stopped_student_reused_for_the_same_network_says_whose_it_is(prepared):
    """Two ratios that prune to one network share its distilled student; where that student's distillation was
    stopped (accuracy below the target), the second trial's STOPPED line names the trial whose student it is --
    the console shows that message, not the log's per-trial lines (a resnet20 run showed two trials 'STOPPED at
    student ... (0 s)' with the first one's accuracy and no word why)."""
    from autocompress.trial import run_trial

    prep, _ = prepared
    ctx = replace(prep.ctx, early_stopper=None)
    first = run_trial(150, _cand(0.3, "int8", 1), ctx)
    assert first.status == TrialStatus.COMPLETE, first.message
    meta_path = prep.ctx.cache_dir / first.candidate.student_key() / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "stopped": "accuracy 45.6% after distillation is below the target 50.8%"}))
    again = run_trial(151, _cand(0.31, "int8", 1), ctx)  # 30% and 31% of the tiny CNN's channels prune the same ones
    assert again.candidate.student_key() != first.candidate.student_key()
    assert again.status == TrialStatus.STOPPED and again.stage == "student", again.message
    assert again.message == ("the same pruned network as trial 150 (channel rounding): its distilled student reused, "
                             "no distillation; accuracy 45.6% after distillation is below the target 50.8%")


def test_a_resumed_run_rebuilds_the_scheduler_from_its_log(prepared):
    from autocompress.engine import prepare
    from autocompress.trial import run_trial

    prep, spec = prepared
    rec = run_trial(140, _cand(0.75, "int8", 1), prep.ctx)
    assert rec.status == TrialStatus.COMPLETE
    prep.store.append(rec)
    again = prepare(spec, prep.ctx.run_dir, log=lambda s: None)
    peer = next(p for p in again.ctx.early_stopper.peers if p.number == 140)
    assert (peer.history, peer.speedup, peer.size_mb) == (rec.kd_history, rec.metrics.speedup, rec.metrics.size_mb)
    assert again.ctx.early_stopper.multi_fidelity and again.ctx.early_stopper.gate_margin == pytest.approx(0.45)


def test_multi_fidelity_is_a_validated_run_option(tmp_path):
    from autocompress.config import load_run_spec
    from autocompress.errors import ConfigError

    assert load_run_spec(None).multi_fidelity is True
    assert load_run_spec(None, multi_fidelity=False).multi_fidelity is False
    (tmp_path / "run.yaml").write_text("kind: run\nmulti_fidelity: sometimes\n")
    with pytest.raises(ConfigError) as e:
        load_run_spec(tmp_path / "run.yaml")
    msg = str(e.value)
    assert "multi_fidelity" in msg and "run.yaml" in msg and "\n" not in msg.strip()


def test_the_cli_switch_reaches_the_run_and_constraints_still_gate(prepared, tmp_path, monkeypatch):
    import yaml

    from autocompress.cli import main

    ws = prepared[0].ctx.run_dir.parent
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    out = tmp_path / "run"
    assert main(["run", "--model", f"{ws / 'models.py'}:tiny_cnn", "--checkpoint", str(ws / "teacher.pt"), "--data", "digits",
                 "--image-size", "16", "--space", str(ws / "space.yaml"), "--profile", str(ws / "profile.yaml"),
                 "--trials", "1", "--out", str(out), "--no-multi-fidelity", "--max-accuracy-drop", "90",
                 "--min-speedup", "1000"]) == 0
    assert yaml.safe_load((out / "run.yaml").read_text())["spec"]["multi_fidelity"] is False
    rec = json.loads((out / "trials.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "INFEASIBLE" and rec["stage"] == "gate" and rec["phase"] == "speed"
