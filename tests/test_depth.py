"""Depth: droppable blocks found in a model, dropped by candidates, ranked by the analysis, raised by mutations."""

import random
import textwrap

import optuna
import pytest
import torch
from torch import nn

from autocompress.compress.depth import check_blocks, drop_blocks, droppable_blocks
from autocompress.config import SearchSpace, load_profile, load_space
from autocompress.errors import ConfigError
from autocompress.records import Candidate, DistillSpec
from autocompress.search import explore
from autocompress.space import depth_choices, sample_candidate, seed_params, with_blocks
from conftest import FAST_PROFILE, make_workspace

RES_SOURCE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn


    def conv_bn(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))


    def tiny_cnn(num_classes=10, in_channels=3, width=16):
        return nn.Sequential(
            conv_bn(in_channels, width),          # 0: changes the channel count
            Res(width), Res(width),               # 1, 2: residual, droppable
            conv_bn(width, width),                # 3: keeps the shape but is no residual: dropping it cuts the net
            conv_bn(width, 2 * width, stride=2),  # 4: downsamples
            Res(2 * width),                       # 5: droppable
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )
    """
)
X = torch.zeros(1, 3, 16, 16)


def _model():
    ns: dict = {}
    exec(RES_SOURCE, ns)
    torch.manual_seed(0)
    return ns["tiny_cnn"]().eval()


def test_droppable_blocks_are_the_residual_blocks_that_keep_their_shape():
    m = _model()
    assert droppable_blocks(m, X) == ["1", "2", "5"]
    assert droppable_blocks(m, X, exclude=["2.body"]) == ["1", "5"]  # a block holding an excluded layer stays
    # a block called twice (shared weights) cannot go: the identity would stand in for both calls
    shared = _model()
    shared[2] = shared[1]
    assert "1" not in droppable_blocks(shared, X)
    # a squeeze-excitation gate passes its input through (x * sigmoid(...)): droppable; torchvision's ResNet blocks too
    from torchvision.models import resnet18

    assert droppable_blocks(resnet18(num_classes=10).eval(), torch.zeros(1, 3, 32, 32)) == \
        ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_dropping_keeps_the_output_and_refuses_what_is_not_droppable():
    m = _model()
    before = sum(isinstance(x, nn.Conv2d) for x in m.modules())
    drop_blocks(m, ["1", "5"])
    assert isinstance(m[1], nn.Identity) and isinstance(m[5], nn.Identity)
    assert m(X).shape == (1, 10) and sum(isinstance(x, nn.Conv2d) for x in m.modules()) == before - 4
    with pytest.raises(ConfigError, match=r"depth.blocks names '3', which cannot be replaced.*droppable blocks of Sequential: 1, 2, 5"):
        check_blocks(_model(), X, ["1", "3"])
    with pytest.raises(ConfigError, match="which the model does not have"):
        check_blocks(_model(), X, ["9"])


def test_the_space_finds_the_blocks_clamps_the_count_and_samples_consistent_candidates():
    space = SearchSpace.model_validate({"sparsity": {"granularity": "uniform"}, "depth": {"drop": {"low": 0, "high": 8}},
                                        "bits": {"choices": ["int8"]}, "distill": {"epochs": [1]}})
    said = []
    got = with_blocks(space, _model(), X, log=said.append)
    assert got.depth.blocks == ["5", "2", "1"] and got.depth.drop.high == 3 and depth_choices(got) == [0, 1, 2, 3]
    assert said == ["depth: 3 droppable blocks (5, 2, 1)"]
    # no droppable block: the count stays 0 and the run says why
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(10))
    plain(X)
    none = with_blocks(space, plain, X, log=said.append)
    assert none.depth.drop == 0 and depth_choices(none) == [] and "no block keeps its input's shape" in said[-1]
    # sampled candidates drop the first k blocks, and their layers leave the sparsity and keep_fp32 maps
    ranked = got.model_copy(update={"bits": got.bits.model_copy(update={"sensitive_layers": ["5.body.0.0", "0.0"],
                                                                        "keep_fp32": 1, "layers": {"1.body.1": "fp32"}})})
    profile = load_profile("cpu")[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        c = sample_candidate(study.ask(), ranked, profile, {})
        k = dict(c.params)["depth.drop"]
        seen.add(k)
        assert c.drop == tuple(["5", "2", "1"][:k])
        assert not any(n.startswith(b + ".") for b in c.drop for n in c.sparsity_map())
        fp32 = [n for n, v in c.bits_map().items() if v == "fp32"]
        assert fp32 == (["0.0"] if "5" in c.drop else ["5.body.0.0"]) + ([] if "1" in c.drop else ["1.body.1"])
        assert c.distill is not None
    assert seen == {0, 1, 2, 3}
    # a seed keeps its own depth (0 unless it says), so a uniform seed stays the uniform setting
    assert seed_params(load_space("default").seeds[0], got, {})["depth.drop"] == 0
    # the default space's depth seed ("every block", written 8) drops as many as the teacher has; without blocks it
    # is left out (its own KD recipe alone would make it the uniform 50% seed at another temperature)
    default = load_space("default").model_copy(update={"sparsity": space.sparsity})
    said = []
    deep = with_blocks(default, _model(), X, log=said.append)
    assert [s.drop for s in deep.seeds] == [3 if s.drop else 0 for s in default.seeds]
    order = [(s.sparsity, bool(s.drop)) for s in default.seeds]  # one depth seed, right after the 70% step
    assert order.count((0.5, True)) == 1 and order[order.index((0.5, True)) - 1] == (0.7, False)
    depth_seed = next(s for s in deep.seeds if s.drop)
    assert seed_params(depth_seed, deep, {})["depth.drop"] == 3
    # ... and each change to the seeds is said, in one line naming the seed
    assert said[-1] == ("seeds: the teacher has 3 droppable block(s): seed 'uniform 50%, 8 blocks dropped + int8, "
                        "KD 8 ep (T 2, alpha 0.7)' drops 3, not 8")
    flat = with_blocks(default, plain, X, log=said.append)
    assert len(flat.seeds) == len(default.seeds) - 1 and all(s.drop == 0 for s in flat.seeds)
    assert said[-1] == ("seeds: the teacher has 0 droppable block(s): seed 'uniform 50%, 8 blocks dropped + int8, "
                        "KD 8 ep (T 2, alpha 0.7)' left out (it drops blocks, and there are none to drop)")
    # a seed that, clamped, becomes an earlier one is left out, naming that one
    written = next(s for s in default.seeds if s.drop)  # "every block" (8)
    two = default.model_copy(update={"seeds": [written.model_copy(update={"drop": 3}), written]})
    assert len(with_blocks(two, _model(), X, log=said.append).seeds) == 1
    assert said[-1].endswith("left out (with 3 blocks dropped it is the same as seed 'uniform 50%, 3 blocks dropped + "
                             "int8, KD 8 ep (T 2, alpha 0.7)')")
    # a space that does not drop blocks says so too; one whose seeds fit says nothing about them
    said.clear()
    with_blocks(default.model_copy(update={"depth": default.depth.model_copy(update={"drop": 0})}), _model(), X,
                log=said.append)
    assert said == ["seeds: the space drops no blocks (depth.drop is 0): seed 'uniform 50%, 8 blocks dropped + int8, "
                    "KD 8 ep (T 2, alpha 0.7)' left out (it drops blocks, and there are none to drop)"]
    said.clear()
    with_blocks(space, _model(), X, log=said.append)
    assert not any(m.startswith("seeds:") for m in said)


def test_student_keys_of_candidates_without_depth_are_unchanged_and_depth_round_trips():
    from autocompress.records import content_hash

    c = Candidate.make(sparsity={"_default": 0.5}, distill=DistillSpec(epochs=2))
    old = content_hash({"student": "pruned", "student_args": (), "sparsity": (("_default", 0.5),), "criterion": "l1",
                        "distill": DistillSpec(epochs=2).key_dict()})
    assert c.student_key() == old and "drop" not in c.to_dict()  # students cached by earlier runs keep their keys
    d = Candidate.make(sparsity={"_default": 0.5}, distill=DistillSpec(epochs=2), drop=["layer1.1"])
    assert d.student_key() != c.student_key() and Candidate.from_dict(d.to_dict()) == d
    assert Candidate.from_dict(c.to_dict()) == c


def test_a_mutation_may_drop_one_more_block_and_only_depth_is_left_at_the_channel_floor():
    rng = random.Random(0)
    top = {"sparsity.a": 0.95, "sparsity.b": 0.95, "depth.drop": 1}
    got = {explore.mutate(top, 0.1, 0.95, 0.05, rng, depth=[0, 1, 2, 3], max_steps=2)["depth.drop"] for _ in range(20)}
    assert got == {2}  # every stage at the top: one more block
    got = {explore.mutate(top, 0.1, 0.95, 0.05, rng, depth=[0, 1, 2, 3], max_steps=6)["depth.drop"] for _ in range(50)}
    assert got == {2, 3}  # a parent far from the accuracy bound may drop up to max_steps // 2 more
    assert explore.mutate({**top, "depth.drop": 3}, 0.1, 0.95, 0.05, rng, depth=[0, 1, 2, 3]) is None
    assert explore.mutate(top, 0.1, 0.95, 0.05, rng) is None  # the space does not search depth


def test_a_mutation_moves_depth_about_half_the_time_however_many_stages_can_move():
    rng = random.Random(1)
    params = {f"sparsity.s{i}": 0.5 for i in range(5)} | {"depth.drop": 0}
    moves = [explore.mutate(params, 0.1, 0.95, 0.05, rng, depth=[0, 1, 2, 3, 4, 5, 6]) for _ in range(400)]
    deeper = sum(m["depth.drop"] > 0 for m in moves)
    assert 160 <= deeper <= 240  # not one choice in six (the five stages and depth)
    wider = [m for m in moves if m["depth.drop"] == 0]
    assert all(any(m[k] > 0.5 for k in m if k.startswith("sparsity.")) for m in wider)  # the rest raise a stage


def test_the_analysis_ranks_blocks_least_harmful_first():
    from autocompress.sensitivity import block_drops, block_ranking, with_priors

    m = _model()
    x = torch.randn(64, 3, 16, 16)
    y = m(x).argmax(1).numpy()  # labels the teacher gets right: every drop can only cost accuracy
    before = {k: v.clone() for k, v in m.state_dict().items()}
    got = block_drops(m, ["5", "2", "1"], x, x, y)
    assert 0.0 <= got["base"] <= 1.0
    assert set(got["blocks"]) == {"5", "2", "1"}
    assert all(0.0 <= v["accuracy"] <= 1.0 and 0.0 < v["macs_removed"] < 1.0 for v in got["blocks"].values())
    # block 1 and 2 run at 16x16 on 16 channels, block 5 at 8x8 on 32: the same MACs (2 convs of c*c*9 each)
    assert got["blocks"]["1"]["macs_removed"] == pytest.approx(got["blocks"]["5"]["macs_removed"], rel=0.01)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the teacher is left as it was

    def rec(**points):
        return {"blocks_base": 0.9, "blocks": {k: {"accuracy": a, "macs_removed": r} for k, (a, r) in points.items()}}

    # MACs removed per point lost: b (0.1 / 0.05 pp floor) > c (0.3 / 1 pp) > a (0.1 / 1 pp); d unmeasured stays last
    r = rec(a=(0.89, 0.1), b=(0.9, 0.1), c=(0.89, 0.3))
    assert block_ranking(r, ["c", "a", "b", "d"]) == ["b", "c", "a", "d"]
    assert block_ranking(rec(a=(0.89, 0.1), c=(0.89, 0.1)), ["c", "a"]) == ["c", "a"]  # a tie keeps the given order
    space = SearchSpace.model_validate({"depth": {"drop": {"low": 0, "high": 2}, "blocks": ["a", "c"]}})
    assert with_priors(space, r, {}, rank_blocks=True).depth.blocks == ["c", "a"]
    assert with_priors(space, r, {}).depth.blocks == ["a", "c"]  # the user's order


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from autocompress.config import load_run_spec
    from autocompress.engine import prepare

    space = {"kind": "search_space", "name": "tiny-depth",
             "sparsity": {"granularity": "uniform", "range": {"low": 0.25, "high": 0.75, "step": 0.25}},
             "depth": {"drop": {"low": 0, "high": 3}}, "bits": {"choices": ["fp32", "int8"]},
             "distill": {"epochs": [1], "lr": 0.05}}
    ws = make_workspace(tmp_path_factory.mktemp("depth"), space, FAST_PROFILE, models_source=RES_SOURCE,
                        teacher="teacher.pt")
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    spec = load_run_spec(None, model=f"{ws / 'models.py'}:tiny_cnn", checkpoint=str(ws / "teacher.pt"), data="digits",
                         image_size=16, space=str(ws / "space.yaml"), profile=str(ws / "profile.yaml"),
                         out=str(ws / "run"), constraints={"max_accuracy_drop": 90})
    yield prepare(spec, ws / "run", log=lambda s: None)
    mp.undo()


def test_a_block_the_model_does_not_have_stops_the_run_before_the_baseline_is_measured(tmp_path, monkeypatch):
    from autocompress.config import load_run_spec
    from autocompress.engine import prepare

    space = {"kind": "search_space", "name": "tiny-depth", "depth": {"drop": {"low": 0, "high": 1}, "blocks": ["9"]},
             "bits": {"choices": ["fp32"]}, "distill": {"epochs": [1]}}
    ws = make_workspace(tmp_path, space, FAST_PROFILE, models_source=RES_SOURCE, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    spec = load_run_spec(None, model=f"{ws / 'models.py'}:tiny_cnn", checkpoint=str(ws / "teacher.pt"), data="digits",
                         image_size=16, space=str(ws / "space.yaml"), profile=str(ws / "profile.yaml"), out=str(ws / "run"))
    with pytest.raises(ConfigError, match="depth.blocks names '9', which the model does not have"):
        prepare(spec, ws / "run", log=lambda s: None)
    assert not (ws / "run" / "baseline.json").exists() and not (ws / "run" / "models" / "baseline.onnx").exists()


def test_a_trial_that_drops_blocks_exports_a_shallower_network(prepared):
    import onnx

    from autocompress.records import TrialStatus
    from autocompress.trial import run_trial

    assert prepared.space.depth.blocks == ["5", "2", "1"]
    convs = {}
    for n, drop in ((0, ()), (1, ("5", "2"))):
        cand = Candidate.make(sparsity={"_default": 0.5}, bits={"_default": "int8"}, drop=drop,
                              distill=DistillSpec(epochs=1, lr=0.05))
        rec = run_trial(n, cand, prepared.ctx)
        assert rec.status == TrialStatus.COMPLETE, rec.message
        graph = onnx.load(str(prepared.ctx.run_dir / rec.artifact)).graph
        convs[n] = sum(node.op_type in ("Conv", "QLinearConv") for node in graph.node)
        assert rec.candidate.drop == drop
    assert convs[1] == convs[0] - 4  # two residual blocks of two convs each


def test_a_model_the_probe_cannot_run_is_searched_without_depth_and_says_so():
    class Picky(nn.Module):  # runs only on the all-zero example, as a model with a data-dependent branch might
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), nn.Flatten(), nn.LazyLinear(10))

        def forward(self, x):
            if x.abs().sum() > 0:
                raise ValueError("expects a blank image")
            return self.body(x)

    m = Picky()
    m(X)
    said = []
    space = SearchSpace.model_validate({"depth": {"drop": {"low": 0, "high": 2}}})
    got = with_blocks(space, m, X, log=said.append)
    assert got.depth.drop == 0 and got.depth.blocks == [] and depth_choices(got) == []
    assert said == ["depth: droppable blocks of Picky could not be found (ValueError: expects a blank image); "
                    "depth.drop stays 0 (list them in depth.blocks to drop them)"]
