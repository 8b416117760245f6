"""Finishing (search/finish.py): the end of the budget re-distils the fastest candidate that narrowly missed the
accuracy target, with a larger KD budget, as a trial of its own.

The policy is pure Python and tested directly; the loop's part (when it asks, what it enqueues, what the record
says) runs here with the real Optuna backend, store and space, and an executor whose outcome is a fixed rule of
the candidate (accuracy that grows with KD samples), because a real distillation cannot be made to land just
short of a target on every CPU. The real pipeline runs finishing trials in the ResNet-20 run of benchmarks/README.md.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from autocompress.config import load_profile, load_run_spec, load_space
from autocompress.records import Candidate, DistillSpec, Metrics, TrialRecord, TrialStatus
from autocompress.search.finish import FINISH_ATTR, FinishPolicy, apply_finish, finish_label, fp32_twin
from autocompress.search.scheduler import FidelityScheduler
from conftest import RuleExecutor


def _rec(n, speedup, drop, *, status=TrialStatus.COMPLETE, epochs=8, samples=5000, hist=None, distill_s=100.0,
         finish_of=None):
    d = DistillSpec(epochs=epochs, samples_per_epoch=samples)
    return TrialRecord(
        number=n, status=status, candidate=Candidate.make(sparsity={"_default": 0.5}, bits={"_default": "int8"}, distill=d),
        metrics=Metrics(accuracy=0.93 - drop / 100, accuracy_drop=drop, speedup=speedup, size_mb=0.2),
        kd_history=tuple(hist if hist is not None else [0.9] * epochs), duration_s=distill_s + 20.0,
        stage_times=(("distill", distill_s),), finish_of=finish_of)


POLICY = FinishPolicy(baseline_accuracy=0.93, max_drop_pp=1.0, train_size=50_000)


def test_it_finishes_the_fastest_candidate_within_reach_that_beats_every_feasible_model():
    recs = [_rec(0, 2.14, 0.0), _rec(1, 2.50, 2.96), _rec(2, 2.80, 3.8), _rec(3, 2.30, 1.5)]
    f = POLICY.choose(recs, [2.14], remaining_s=None)
    # trial 2 is faster but 2.8 pp short (reach 2.5 pp); trial 1 is 1.96 pp short and 17% faster than int8 alone
    assert f.of == 1 and f.factor == POLICY.default_factor and f.epochs == 8 and f.samples_per_epoch == 20_000
    assert "trial 1" in f.why and "2.50x" in f.why
    # a feasible model as fast as it (within the speed noise) leaves nothing worth finishing
    assert POLICY.choose(recs, [2.45], remaining_s=None) is None
    # ... unless the candidate has clearly less compute than that model: two speedups measured minutes apart
    # differ by 10-15% with two threads, MACs do not
    lean = [replace(r, metrics=replace(r.metrics, macs=70)) for r in recs]

    def top(macs, bits="int8", speedup=2.60):
        return replace(_rec(5, speedup, 0.2), metrics=replace(_rec(5, speedup, 0.2).metrics, macs=macs),
                       candidate=Candidate.make(sparsity={"_default": 0.5}, bits={"_default": bits}))
    f = POLICY.choose(lean, [2.60], remaining_s=None, fastest=top(100))  # trial 1: 2.50x, 30% fewer MACs
    assert f.of == 1 and "30% fewer MACs than the fastest model meeting the constraints (2.60x" in f.why
    assert POLICY.choose(lean, [2.60], remaining_s=None, fastest=top(75)) is None  # 7% fewer: not clearly less
    assert POLICY.choose(lean, [3.10], remaining_s=None, fastest=top(100, speedup=3.10)) is None  # 19% slower: beyond the noise
    assert POLICY.choose(lean, [2.60], remaining_s=None, fastest=top(100, "fp32")) is None  # MACs of another precision
    # each candidate once: finished already (a record says so) or asked for (busy)
    assert POLICY.choose(recs + [_rec(9, 2.5, 0.5, finish_of=1)], [2.14], remaining_s=None).of == 3
    assert POLICY.choose(recs, [2.14], remaining_s=None, busy={1}).of == 3
    # a finishing trial is never finished again
    assert POLICY.choose([_rec(9, 2.5, 2.0, finish_of=1)], [2.14], remaining_s=None) is None


def test_only_whole_distillations_count_and_a_stopped_one_is_read_from_its_last_epoch():
    cut_short = _rec(1, 2.5, 2.0, status=TrialStatus.STOPPED, hist=[0.5, 0.6])  # stopped at a rung: not judged
    assert POLICY.choose([cut_short], [], remaining_s=None) is None
    below = _rec(1, 2.5, 0.0, status=TrialStatus.STOPPED, hist=[0.8] * 7 + [0.91])  # 2 pp below the baseline's 93%
    assert POLICY.drop_pp(below) == pytest.approx(2.0)
    assert POLICY.choose([below], [], remaining_s=None).of == 1
    assert replace(POLICY, use_history=False).choose([below], [], remaining_s=None) is None  # a user metric: no top-1


def test_the_factor_is_what_the_time_left_allows():
    r = _rec(1, 2.5, 2.5, distill_s=100.0)  # the trial took 120 s, 100 of them distilling
    assert POLICY.choose([r], [], remaining_s=10_000).factor == 8
    f = POLICY.choose([r], [], remaining_s=(120 + 4 * 100) * 1.15 + 1)
    assert f.factor == 5 and f.estimate_s == pytest.approx(520) and "~9 min" in f.why
    assert POLICY.choose([r], [], remaining_s=200) is None  # not even 2x fits


def test_budget_grows_samples_per_epoch_then_epochs():
    assert POLICY._budget(8, 5000, 4) == (8, 20_000)
    assert POLICY._budget(8, 5000, 10) == (8, 50_000)  # exactly the whole split per epoch
    assert POLICY._budget(8, 5000, 20) == (16, None)  # past the split: whole-split epochs, twice as many
    small = replace(POLICY, train_size=1258)  # digits: each epoch is the whole split already
    assert small._budget(8, 5000, 4) == (32, None) and small._budget(3, None, 2) == (6, None)


def test_the_reason_names_the_samples_really_used():
    small = replace(POLICY, train_size=1258)  # 5,000 asked per epoch, 1,258 there: the run used 1,258
    why = small.choose([_rec(1, 2.5, 2.0)], [], remaining_s=None).why
    assert "8 x 1258 KD samples" in why and "4x the samples (32 epochs)" in why
    assert "8 x 5000 KD samples" in POLICY.choose([_rec(1, 2.5, 2.0)], [], remaining_s=None).why
    assert "(20000 samples per epoch)" in POLICY.choose([_rec(1, 2.5, 2.0)], [], remaining_s=None).why


def test_due_at_the_end_of_time_or_trials():
    assert not POLICY.due(remaining_s=700, search_s=1000, remaining_trials=10)
    assert POLICY.due(remaining_s=300, search_s=1000, remaining_trials=10)
    assert POLICY.due(remaining_s=None, search_s=None, remaining_trials=2)
    assert not POLICY.due(remaining_s=None, search_s=None, remaining_trials=3)


def test_the_last_chance_comes_before_the_reserve_share():
    r = _rec(1, 2.5, 2.5, distill_s=100.0)  # 120 s; its finishing at 2x needs (120 + 100) x 1.15 = 253 s
    # 300 s left: it fits now, and not after one more 60-s trial (240 s): due now
    assert POLICY.last_chance([r], [], remaining_s=300, trial_s=60)
    assert not POLICY.last_chance([r], [], remaining_s=400, trial_s=60)  # it still fits after one more trial
    assert not POLICY.last_chance([r], [], remaining_s=200, trial_s=60)  # it does not fit now either
    assert not POLICY.last_chance([r], [], remaining_s=300, trial_s=None)  # no trained trial yet: no estimate
    assert not POLICY.last_chance([r], [], remaining_s=None, trial_s=60)  # no deadline: the reserve rules decide
    assert not POLICY.last_chance([r], [3.0], remaining_s=300, trial_s=60)  # nothing worth finishing


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_enqueued_first_runs_ahead_of_the_waiting_trials_which_still_run(tmp_path, storage):
    from autocompress.search.optuna_backend import OptunaBackend

    url = f"sqlite:///{tmp_path}/s.db" if storage == "sqlite" else f"journal://{tmp_path}/s.log"
    spec = load_run_spec(None, trials=3)
    b = OptunaBackend.open(url=url, study_name="s", objectives=spec.objectives, sampler="random", seed=0, budget=3,
                           constraints_len=0)
    b.enqueue([{"x": 1}, {"x": 2}], [{"seed": "a"}, {"seed": "b"}])
    b.enqueue([{"x": 3}], [{FINISH_ATTR: {"of": 0}}], unique=False, first=True)
    assert b.waiting_attrs() == [{FINISH_ATTR: {"of": 0}}, {"seed": "a"}, {"seed": "b"}]
    asked = []
    while (a := b.ask()) is not None:
        t = a[0]
        asked.append(t.suggest_int("x", 0, 9))
        b.tell(t, _rec(len(asked), 2.0, 0.5), [])
    assert asked == [3, 1, 2]  # the moved trials keep their order and their attributes, and count once
    assert b.finished() == 3 and len(b.records()) == 3


def test_apply_finish_changes_only_the_kd_budget_so_the_student_is_a_new_one():
    c = _rec(1, 2.5, 2.5).candidate
    f = apply_finish(c, {"of": 1, "epochs": 8, "samples_per_epoch": 20_000, "factor": 4})
    assert f.distill.samples_per_epoch == 20_000 and f.distill.lr == c.distill.lr and f.bits == c.bits
    assert f.student_key() != c.student_key() and f.key() != c.key()
    assert apply_finish(c, None) is c


def test_rungs_compare_only_peers_with_the_same_epochs_and_epoch_size():
    s = FidelityScheduler(target=0.92, num_classes=10)
    s.observe_record(_rec(5, 3.0, 0.5, samples=20_000, hist=[0.9, 0.91, 0.92, 0.925]))  # a finished (4x) peer
    # an ordinary candidate (5,000 per epoch) at 0.80 after epoch 1 is not judged against it
    assert s.rung(0, 0.80, 4, speedup=2.0, size_mb=0.5, samples_per_epoch=5000) is None
    assert s.rung(0, 0.80, 4, speedup=2.0, size_mb=0.5, samples_per_epoch=20_000) is not None


class _RuleExecutor(RuleExecutor):
    """Trials whose outcome is a rule of the candidate: speed grows with sparsity, the accuracy drop shrinks with
    the KD samples (5 pp x sparsity at 40,000 samples)."""

    def outcome(self, number, cand):
        s = sum(cand.sparsity_map().values()) / max(1, len(cand.sparsity_map()))
        d = cand.distill
        total = (d.epochs * (d.samples_per_epoch or 50_000)) if d else 1
        drop = 5.0 * s * 40_000 / total if d else 0.3
        m = Metrics(accuracy=0.93 - drop / 100, accuracy_drop=drop, speedup=2.0 + 2 * s, size_mb=1 - s)
        return TrialRecord(number=number, status=TrialStatus.COMPLETE, candidate=cand, metrics=m,
                           kd_history=(0.9,) * (d.epochs if d else 0), duration_s=1.0, stage_times=(("distill", 0.5),))


def _run_loop(tmp_path, executor, deadline=None):
    """The real loop, Optuna backend, store and default space (sensitivity off) over ``executor``, budget 5, seeded
    with the 50% + int8 + KD 8 seed and int8 alone: (store, backend, printed lines)."""
    from autocompress.progress import LoopDisplay
    from autocompress.search.loop import SearchLoop
    from autocompress.search.optuna_backend import OptunaBackend
    from autocompress.space import seed_params
    from autocompress.store import RunStore

    space, profile = load_space("default"), load_profile("cpu")[0]
    space = space.model_copy(update={"sensitivity": space.sensitivity.model_copy(update={"enabled": False}),
                                     "bits": space.bits.model_copy(update={"keep_fp32": [0]})})
    groups = {"layer1": ["l1"], "layer2": ["l2"]}
    spec = load_run_spec(None, trials=5, constraints={"max_accuracy_drop": 1.0})
    store = RunStore(tmp_path)
    store.create()
    backend = OptunaBackend.open(url=f"sqlite:///{tmp_path}/study.db", study_name="s", objectives=spec.objectives,
                                 sampler="random", seed=0, budget=5, constraints_len=1)
    seeds = [space.seeds[0]] + [s for s in space.seeds if s.sparsity == 0]  # 50% + int8 + KD 8; int8 alone
    backend.enqueue([seed_params(s, space, groups) for s in seeds])
    ctx = SimpleNamespace(early_stopper=None, baseline=SimpleNamespace(accuracy=0.93), metric=None,
                          data=SimpleNamespace(size=lambda split: 50_000))
    prep = SimpleNamespace(spec=spec, space=space, profile=profile, ctx=ctx, groups=groups, layer_names=[], store=store)
    lines = []
    SearchLoop(prep, backend, executor, LoopDisplay(lines.append, total=5, done=0, live=False, verbose=False),
               deadline=deadline).run()
    return store, backend, lines


def test_the_loop_enqueues_a_finishing_trial_in_its_last_trials_and_the_record_names_its_source(tmp_path):
    store, backend, lines = _run_loop(tmp_path, _RuleExecutor())

    recs = sorted(store.records(), key=lambda r: r.number)
    assert len(recs) == 5  # the finishing trial is one of the budget, not an extra
    fin = [r for r in recs if r.finish_of is not None]
    assert len(fin) >= 1, lines
    f = fin[0]
    src = next(r for r in recs if r.number == f.finish_of)
    assert f.number >= 3  # asked once 2 trials were left
    assert f.candidate.sparsity == src.candidate.sparsity and f.candidate.bits == src.candidate.bits
    assert f.candidate.distill.samples_per_epoch == 4 * src.candidate.distill.samples_per_epoch
    assert 1.0 < src.metrics.accuracy_drop <= 3.5 and f.metrics.accuracy_drop == pytest.approx(src.metrics.accuracy_drop / 4)
    assert any(line.startswith("finishing: trial") for line in lines)
    # the Optuna trial carries the finishing attribute (a resume re-runs it as the same finishing trial)
    t = next(t for t in backend.study.get_trials() if t.number == f.number)
    assert t.user_attrs[FINISH_ATTR]["of"] == f.finish_of
    # an int8 candidate's fp32 twin follows it: the same student and KD budget (so the student cache serves it), fp32
    assert src.candidate.bits_map()["_default"] == "int8"
    twin = next(r for r in fin if r.number == f.number + 1)
    assert twin.finish_of == f.finish_of and set(twin.candidate.bits_map().values()) == {"fp32"}
    assert twin.candidate.student_key() == f.candidate.student_key() and twin.candidate.key() != f.candidate.key()
    assert any("then its fp32 twin from the same student" in line for line in lines)
    assert "its fp32 twin (the same distilled student)" in finish_label(t.user_attrs[FINISH_ATTR] | {"twin": "fp32"})


class _SlowRuleExecutor(_RuleExecutor):
    """The same rule, each trial recorded as 120 s (100 s distilling): what the loop reads to plan its finishing."""

    def outcome(self, number, cand):
        return replace(super().outcome(number, cand), duration_s=120.0, stage_times=(("distill", 100.0),))


def test_at_the_last_chance_the_finishing_goes_ahead_of_the_seeds_not_run_yet(tmp_path):
    """300 s left (the reserve share not reached) and trials of 120 s: the 50% seed's finishing (253 s at 2x) fits
    now and would not after one more seed, so it runs next, before int8 alone, which still runs after it."""
    import time

    store, backend, lines = _run_loop(tmp_path, _SlowRuleExecutor(), deadline=time.time() + 300)

    recs = sorted(store.records(), key=lambda r: r.number)
    assert len(recs) == 5, lines
    assert [r.finish_of for r in recs[:3]] == [None, 0, 0], lines  # the finishing, then its fp32 twin
    assert recs[1].candidate.distill.samples_per_epoch == 2 * recs[0].candidate.distill.samples_per_epoch
    assert all(v == 0 for v in recs[3].candidate.sparsity_map().values())  # int8 alone ran after them
    assert any(line.startswith("finishing: trial 0") for line in lines)


def test_the_fp32_twin_of_a_candidate():
    p = {"student": "pruned", "sparsity": 0.5, "bits": "int8", "bits.keep_fp32": 2, "quant.mode": "static", "kd.epochs": 8}
    assert fp32_twin(p, ["fp32", "int8"]) == {"student": "pruned", "sparsity": 0.5, "bits": "fp32", "kd.epochs": 8}
    assert fp32_twin({**p, "bits": "fp32"}, ["fp32", "int8"]) is None  # fp32 already
    assert fp32_twin(p, ["int8"]) is None  # a profile without fp32
    assert fp32_twin({"bits.layer1": "int8"}, ["fp32", "int8"]) is None  # per-stage bits: not a single switch


def test_finish_is_a_run_option_and_the_cli_turns_it_off():
    assert load_run_spec(None).finish is True
    assert load_run_spec(None, finish=False).finish is False
