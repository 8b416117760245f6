"""Mutations around the front's fast end (search/explore.py) and the loop that enqueues them."""

import random
from dataclasses import replace
from types import SimpleNamespace

from autocompress.config import load_profile, load_run_spec, load_space
from autocompress.records import Metrics, TrialRecord, TrialStatus
from autocompress.search import explore
from conftest import RuleExecutor

P = {"sparsity.layer1": 0.9, "sparsity.layer2": 0.5, "sparsity.layer3": 0.1, "bits": "int8", "kd.epochs": 8}


def test_a_mutation_raises_one_stage_and_may_lower_another_on_the_grid():
    rng = random.Random(0)
    seen_exchange = False
    for _ in range(200):
        m = explore.mutate(P, 0.1, 0.95, 0.05, rng)
        assert {k: v for k, v in m.items() if not k.startswith("sparsity")} == {"bits": "int8", "kd.epochs": 8}
        diff = {k: round(m[k] - P[k], 6) for k in explore.sparsity_names(P) if m[k] != P[k]}
        ups = [k for k, d in diff.items() if d > 0]
        downs = [k for k, d in diff.items() if d < 0]
        assert len(ups) == 1 and len(downs) <= 1, diff
        assert diff[ups[0]] in (0.05, 0.1) or m[ups[0]] == 0.95  # one or two steps, never above the range
        assert all(diff[k] == -0.05 for k in downs) and all(m[k] >= 0.1 for k in m if k.startswith("sparsity"))
        assert all(abs(round((m[k] - 0.1) / 0.05) * 0.05 + 0.1 - m[k]) < 1e-9 for k in explore.sparsity_names(m))
        seen_exchange |= bool(downs)
    assert seen_exchange
    # nothing left to raise: no mutation; a stage the main range does not govern is left alone
    assert explore.mutate({"sparsity.a": 0.95, "sparsity.b": 0.95}, 0.1, 0.95, 0.05, rng) is None
    m = explore.mutate({"sparsity.a": 0.95, "sparsity.fc*": 0.2}, 0.1, 0.95, 0.05, rng, names={"sparsity.a"})
    assert m is None
    # the int8-alone seed (sparsity 0, below the range) mutates into the range
    assert explore.mutate({"sparsity": 0.0}, 0.1, 0.95, 0.05, rng)["sparsity"] >= 0.1


def test_propose_skips_mutations_already_run_and_moves_on_to_the_next_parent():
    rng = random.Random(1)
    top = {"sparsity": 0.9}
    known = [{"sparsity": 0.95}, top]  # the only mutation of 0.9 (one sparsity: no exchange) has run
    # 0.9 can only go to 0.95 (run); 0.8 to 0.85 or 0.9 (0.9 has run)
    assert explore.propose([(7, top), (3, {"sparsity": 0.8})], known, 0.1, 0.95, 0.05, rng) == (3, {"sparsity": 0.85})
    assert explore.propose([(7, top)], known, 0.1, 0.95, 0.05, rng) is None
    assert explore.propose([(2, {"bits": "int8"})], [], 0.1, 0.95, 0.05, rng) is None  # a family student: no sparsity


def test_parents_are_the_fastest_feasible_pruned_students_not_finishing_trials():
    from autocompress.records import Candidate

    def rec(n, speedup, student="pruned", finish_of=None):
        return TrialRecord(number=n, status=TrialStatus.COMPLETE, finish_of=finish_of,
                           candidate=Candidate.make(student=student, sparsity={"_default": 0.5}, params={"sparsity": 0.5}),
                           metrics=Metrics(accuracy=0.9, speedup=speedup))

    got = explore.parents([rec(0, 4.0), rec(1, 9.0, finish_of=0), rec(2, 6.0), rec(3, 8.0, student="family")])
    assert [n for n, _, _ in got] == [2, 0] and got[0][1] == {"sparsity": 0.5} and got[0][2] == 2
    # the step grows with the accuracy drop the parent left unused: 2 steps at the bound, 6 with all of it left
    a, b = rec(4, 3.0), rec(5, 3.5)
    a = replace(a, metrics=replace(a.metrics, accuracy_drop=0.0))
    b = replace(b, metrics=replace(b.metrics, accuracy_drop=1.0))
    assert [(n, k) for n, _, k in explore.parents([a, b], 1.0)] == [(5, 2), (4, 6)]
    # within the noise of the fastest one's speed (15%), clearly fewer MACs (10%) at its precision go first, fewest
    # first: the seed-1 custom CNN run followed a noisy-high seed and never mutated the leaner uniform 90% seed
    def lean(n, speedup, macs, bits="int8"):
        r = rec(n, speedup)
        return replace(r, metrics=replace(r.metrics, macs=macs), candidate=replace(r.candidate, bits=(("_default", bits),)))
    pool = [lean(3, 8.17, 16_000), lean(7, 7.92, 10_300), lean(5, 7.60, 13_200), lean(4, 6.68, 12_300),
            lean(8, 7.9, 9_000, "fp32"), lean(9, 8.0, 15_000)]
    assert [n for n, _, _ in explore.parents(pool)] == [7, 5, 3, 9, 8, 4]
    big = [explore.mutate({"sparsity": 0.1}, 0.1, 0.95, 0.05, random.Random(i), max_steps=6)["sparsity"] for i in range(60)]
    assert max(big) == 0.4 and min(big) == 0.15


def test_mutations_keep_their_share_of_the_trials_after_the_seeds():
    assert explore.due(0.5, 0, 0) and not explore.due(0.5, 1, 0) and explore.due(0.5, 1, 1)
    assert not explore.due(0.0, 0, 5)
    runs, mut = [], 0
    for _ in range(10):
        if explore.due(0.5, mut, len(runs) - mut):
            mut += 1
        runs.append(1)
    assert mut == 5


class _Rule(RuleExecutor):
    """Speed grows with mean sparsity; the accuracy drop is 1.2 pp per unit of mean sparsity, plus 0.5 pp per unit of
    layer1's (the sensitive stage)."""

    def outcome(self, number, cand):
        sp = cand.sparsity_map()
        s = sum(sp.values()) / max(1, len(sp))
        drop = 1.2 * s + 0.5 * sp.get("l1", 0.0)
        m = Metrics(accuracy=0.93 - drop / 100, accuracy_drop=drop, speedup=1.0 + 8 * s, size_mb=1 - s)
        return TrialRecord(number=number, status=TrialStatus.COMPLETE, candidate=cand, metrics=m,
                           kd_history=(0.9,), duration_s=1.0)


def _run(tmp_path, share, trials=10):
    from autocompress.progress import LoopDisplay
    from autocompress.references import SEED_ATTR, seed_label
    from autocompress.search.loop import SearchLoop
    from autocompress.search.optuna_backend import OptunaBackend
    from autocompress.space import seed_params
    from autocompress.store import RunStore

    space, profile = load_space("default"), load_profile("cpu")[0]
    space = space.model_copy(update={"sensitivity": space.sensitivity.model_copy(update={"enabled": False}),
                                     "bits": space.bits.model_copy(update={"keep_fp32": [0], "choices": ["int8"]}),
                                     "student": space.student.model_copy(update={"kind": ["pruned"]}),
                                     "distill": space.distill.model_copy(update={"epochs": [1]}), "explore": share})
    groups = {"layer1": ["l1"], "layer2": ["l2"], "layer3": ["l3"]}
    spec = load_run_spec(None, trials=trials, constraints={"max_accuracy_drop": 1.0}, finish=False)
    store = RunStore(tmp_path)
    store.create()
    backend = OptunaBackend.open(url=f"sqlite:///{tmp_path}/study.db", study_name="s", objectives=spec.objectives,
                                 sampler="random", seed=0, budget=trials, constraints_len=1)
    seeds = [s.model_copy(update={"epochs": 1}) for s in space.seeds if s.sparsity in (0.5, 0.6)]
    backend.enqueue([seed_params(s, space, groups) for s in seeds], [{SEED_ATTR: seed_label(s)} for s in seeds])
    ctx = SimpleNamespace(early_stopper=None, baseline=SimpleNamespace(accuracy=0.93), metric=None,
                          data=SimpleNamespace(size=lambda split: 1000))
    prep = SimpleNamespace(spec=spec, space=space, profile=profile, ctx=ctx, groups=groups, layer_names=[], store=store)
    lines = []
    SearchLoop(prep, backend, _Rule(), LoopDisplay(lines.append, total=trials, done=0, live=False, verbose=False),
               deadline=None).run()
    return sorted(store.records(), key=lambda r: r.number), backend, lines


def test_the_loop_mutates_the_fastest_feasible_candidate_after_the_seeds(tmp_path):
    recs, backend, lines = _run(tmp_path, 0.5)
    assert [r.seed is not None for r in recs[:2]] == [True, True]  # the seeds run first
    muts = [r for r in recs if r.parent is not None]
    assert 3 <= len(muts) <= 5, [(r.number, r.parent) for r in recs]
    by = {r.number: r for r in recs}
    for m in muts:
        parent = by[m.parent]
        assert parent.number < m.number and parent.metrics.accuracy_drop <= 1.0  # a feasible parent, finished before
        ps, ms = parent.candidate.sparsity_map(), m.candidate.sparsity_map()
        assert sum(ms[k] > ps[k] for k in ps) == 1, (ps, ms)  # one stage raised
        t = next(t for t in backend.study.get_trials() if t.number == m.number)
        assert t.user_attrs[explore.EXPLORE_ATTR] == m.parent  # a resume knows it for a mutation
    assert any(f"mutation of trial {muts[0].parent}" in ln for ln in lines), lines
    # the climb: the fastest feasible model is faster than the fastest feasible seed
    feas = [r for r in recs if r.metrics.accuracy_drop <= 1.0]
    best_seed = max(r.metrics.speedup for r in feas if r.seed is not None)
    assert max(r.metrics.speedup for r in feas) > best_seed


def test_no_mutations_when_the_space_does_not_ask_for_them(tmp_path):
    recs, _, _ = _run(tmp_path, 0.0, trials=5)
    assert all(r.parent is None for r in recs)


def test_two_ratios_that_round_to_one_network_share_its_distilled_student(tmp_path):
    """90% and 95% of 64 channels both keep 16 at round_to 16: the second candidate reuses the first's student."""
    import copy

    import torch
    from torch import nn

    from autocompress.compress.prune import prune_model
    from autocompress.records import Candidate, DistillSpec
    from autocompress.trial import _same_network

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                        nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    ex = torch.zeros(1, 3, 16, 16)

    def pruned(r):
        return prune_model(copy.deepcopy(net), {"_default": r}, ex, round_to=16, inplace=True).model

    ctx = SimpleNamespace(cache_dir=tmp_path)
    a, b = Candidate.make(sparsity={"_default": 0.9}), Candidate.make(sparsity={"_default": 0.95})
    assert a.student_key() != b.student_key()
    assert _same_network(pruned(0.9), a, ctx, 3) is None  # new: indexed under trial 3
    assert _same_network(pruned(0.95), b, ctx, 8) is None  # the same network, but trial 3 has no student yet
    (tmp_path / a.student_key()).mkdir()
    (tmp_path / a.student_key() / "meta.json").write_text("{}")
    assert _same_network(pruned(0.9), a, ctx, 3) is None  # b took the index over; a is itself
    (tmp_path / b.student_key()).mkdir()
    (tmp_path / b.student_key() / "meta.json").write_text("{}")
    assert _same_network(pruned(0.95), b, ctx, 8) == (a.student_key(), 3)
    assert _same_network(pruned(0.5), Candidate.make(sparsity={"_default": 0.5}), ctx, 9) is None  # another network
    longer = Candidate.make(sparsity={"_default": 0.95}, distill=DistillSpec(epochs=8))
    assert _same_network(pruned(0.95), longer, ctx, 10) is None  # another KD recipe: another student


def test_a_mutation_that_rounds_to_a_network_already_run_is_not_proposed():
    groups = {"s1": ["a"], "s2": ["b"]}
    widths = {"a": 64, "b": 256}

    def key(p):
        return explore.network_key(p, groups, widths, 16)

    # 90% and 95% of 64 channels both keep 16; of 256: 32 vs 16
    assert key({"sparsity.s1": 0.9, "sparsity.s2": 0.5}) == key({"sparsity.s1": 0.95, "sparsity.s2": 0.5})
    assert key({"sparsity.s1": 0.9, "sparsity.s2": 0.9}) != key({"sparsity.s1": 0.9, "sparsity.s2": 0.95})
    assert key({"sparsity.s1": 0.9, "bits": "int8"}) != key({"sparsity.s1": 0.9, "bits": "fp32"})
    assert key({"sparsity": 0.9}) == key({"sparsity.s1": 0.9, "sparsity.s2": 0.9})  # uniform = every stage alike
    top = {"sparsity.s1": 0.9, "sparsity.s2": 0.9}
    rng = random.Random(0)
    for _ in range(20):  # raising s1 changes nothing; only s2 up (with s1 down or not) is a new network
        n, new = explore.propose([(4, top)], [top], 0.1, 0.95, 0.05, rng, key=key)
        assert new["sparsity.s2"] == 0.95
    assert explore.propose([(4, top)], [top, {"sparsity.s1": 0.9, "sparsity.s2": 0.95},
                                         {"sparsity.s1": 0.85, "sparsity.s2": 0.95}], 0.1, 0.95, 0.05, rng, key=key) is None
