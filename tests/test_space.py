import optuna
import pytest

from autocompress.config import HardwareProfile, SearchSpace, SeedCandidate, load_space, parse
from autocompress.errors import ConfigError
from autocompress.space import sample_candidate, seed_params

GROUPS = {"stem": ["conv1"], "layer1": ["layer1.0.conv1", "layer1.0.conv2"], "layer2": ["layer2.0.conv1"]}
CPU = HardwareProfile()


def _ask(space, profile=CPU, seed=0, n=1):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append((t, sample_candidate(t, space, profile, GROUPS, layer_names=["conv1", "layer1.0.conv1"])))
    return out


def test_default_space_per_stage_parameters_are_conditional():
    space = load_space("default")
    students = set()
    for t, c in _ask(space, n=16):
        students.add(c.student)
        names = set(t.params)
        assert "bits" in names
        # the profile (cpu: fp32, int8) limits the precisions the space lists (fp16 too)
        assert c.bits_map()["_default"] in ("fp32", "int8")
        if c.student == "pruned":
            assert {"sparsity.stem", "sparsity.layer1", "sparsity.layer2"} <= names
            assert "width_mult" not in names
            sp = c.sparsity_map()
            assert sp["layer1.0.conv1"] == sp["layer1.0.conv2"] == t.params["sparsity.layer1"]
            assert all(0.1 <= v <= 0.9 for v in sp.values())
        else:  # a smaller family member: width and depth, no per-stage sparsity
            assert c.student == "family" and {"width_mult", "depth_mult"} <= names
            assert not any(n.startswith("sparsity") for n in names)
        # without a sensitivity ranking (the run's analysis fills it) nothing is kept fp32 by rank
        assert "bits.keep_fp32" not in names
        assert c.distill is not None and c.distill.epochs in (3, 5, 8)
        assert c.distill.temperature in (2.0, 4.0) and c.distill.alpha in (0.7, 0.9)
    assert students == {"pruned", "family"}


def test_family_students_draw_width_not_sparsity():
    space = parse(SearchSpace, {"student": {"kind": ["family"], "width_mult": [0.5], "depth_mult": {"low": 0.5, "high": 1.0}},
                                "sparsity": None}, "t")
    (t, c), = _ask(space)
    assert c.student == "family" and c.student_args_map()["width_mult"] == 0.5
    assert 0.5 <= c.student_args_map()["depth_mult"] <= 1.0
    assert not c.sparsity and "sparsity" not in " ".join(t.params)
    assert c.distill is not None  # a fresh student must be trained


def test_quantize_only_space_has_no_distillation_and_searches_formats():
    space = load_space("quantize-only")
    seen = set()
    for t, c in _ask(space, n=30):
        assert c.distill is None and not c.sparsity
        if "int8" in c.bits_map().values():
            seen.add((c.quant.format, c.quant.types))
    assert len(seen) >= 3  # qdq/qoperator x u8s8/s8s8 are all reachable


def test_profile_preference_applies_when_space_leaves_format_open():
    space = parse(SearchSpace, {"bits": {"choices": ["int8"]}}, "t")
    prof = HardwareProfile(int8_format="qoperator", int8_types="s8s8")
    (_, c), = _ask(space, prof)
    assert (c.quant.format, c.quant.types) == ("qoperator", "s8s8")


def test_precision_the_profile_cannot_run_is_an_error():
    space = parse(SearchSpace, {"bits": {"choices": ["fp16"]}}, "t")
    with pytest.raises(ConfigError, match="cannot run|runs only"):
        _ask(space, HardwareProfile(precisions=["fp32", "int8"]))


def test_zero_sparsity_pruned_student_skips_distillation():
    space = parse(SearchSpace, {"sparsity": {"granularity": "uniform", "range": [0.0]}}, "t")
    (_, c), = _ask(space)
    assert c.distill is None


def test_seeds_translate_to_enqueueable_params():
    space = load_space("default")
    p = seed_params(space.seeds[0], space, GROUPS)
    # the rest of the searched recipe takes its first choice, so a seed is the same setting in every run
    assert p == {"student": "pruned", "sparsity.stem": 0.5, "sparsity.layer1": 0.5, "sparsity.layer2": 0.5, "bits": "int8",
                 "kd.epochs": 8, "criterion": "l1", "kd.temperature": 4.0, "kd.alpha": 0.9}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(p)
    t = study.ask()
    c = sample_candidate(t, space, CPU, GROUPS)
    assert set(c.sparsity_map().values()) == {0.5} and c.bits_map()["_default"] == "int8"


def test_a_seed_may_carry_its_own_kd_recipe():
    from autocompress.references import seed_label

    d = load_space("default").model_dump(mode="json", exclude_none=True)
    d["seeds"] = [{"sparsity": 0.5, "bits": "int8", "epochs": 8, "temperature": 2.0, "alpha": 0.7},
                  {"sparsity": 0.5, "bits": "int8", "epochs": 8}]
    space = parse(SearchSpace, d, "t")
    own, first = (seed_params(s, space, GROUPS) for s in space.seeds)
    assert (own["kd.temperature"], own["kd.alpha"]) == (2.0, 0.7)
    assert (first["kd.temperature"], first["kd.alpha"]) == (4.0, 0.9)  # unset: the lists' first choices, as before
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(own)
    c = sample_candidate(study.ask(), space, CPU, GROUPS)
    assert (c.distill.temperature, c.distill.alpha) == (2.0, 0.7)
    assert seed_label(space.seeds[0]) == "uniform 50% + int8, KD 8 ep (T 2, alpha 0.7)"
    assert space.seeds[0] != space.seeds[1]  # another recipe is another seed, not a duplicate to leave out
    # a value the space does not offer could not be enqueued: one line names the seed, the value and the fix
    d["seeds"] = [{"sparsity": 0.5, "bits": "int8", "temperature": 3.0}]
    with pytest.raises(ConfigError) as e:
        parse(SearchSpace, d, "t")
    assert str(e.value) == ("t: (top level): seeds[0] has temperature 3, which distill.temperature does not offer "
                            "(4, 2): add it there or remove it from the seed")  # not the whole file as its "value"
    d["distill"]["alpha"] = {"low": 0.5, "high": 0.9}
    d["seeds"] = [{"sparsity": 0.5, "bits": "int8", "alpha": 0.95}]
    with pytest.raises(ConfigError, match=r"alpha 0.95, which distill.alpha does not offer \(0.5-0.9\)"):
        parse(SearchSpace, d, "t")
    d["seeds"] = [{"sparsity": 0.5, "bits": "int8", "alpha": 0.6}]
    ranged = parse(SearchSpace, d, "t")
    assert seed_params(ranged.seeds[0], ranged, GROUPS)["kd.alpha"] == 0.6  # a range takes any value inside it


def test_a_seed_outside_the_range_is_sampled_without_a_warning():
    """The int8-alone seed fixes sparsity 0.0 below the 0.1-0.9 range on purpose; Optuna's out-of-range
    warning is not the user's to act on and must not reach stderr."""
    import warnings

    space = load_space("default")
    zero = next(s for s in space.seeds if s.sparsity == 0.0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(seed_params(zero, space, GROUPS))
    t = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = sample_candidate(t, space, CPU, GROUPS)
    assert set(c.sparsity_map().values()) <= {0.0}


def test_candidate_keys_share_student_across_bits():
    space = load_space("default")
    study = optuna.create_study()
    base = seed_params(space.seeds[0], space, GROUPS)
    study.enqueue_trial(base)
    study.enqueue_trial({**base, "bits": "fp32"})
    c1 = sample_candidate(study.ask(), space, CPU, GROUPS)
    c2 = sample_candidate(study.ask(), space, CPU, GROUPS)
    assert c1.student_key() == c2.student_key() and c1.key() != c2.key()


RANKED = ["layer1.0.conv2", "conv1", "layer2.0.conv1", "fc"]


def test_keep_fp32_keeps_the_most_sensitive_layers_of_an_int8_pruned_student():
    space = parse(SearchSpace, {"bits": {"choices": ["int8"], "keep_fp32": [0, 1, 2], "sensitive_layers": RANKED},
                                "student": {"kind": ["pruned", "family"]}}, "t")
    seen = set()
    for t, c in _ask(space, n=30):
        bits = c.bits_map()
        if c.student != "pruned":  # a family student has other layers: its bits stay uniform
            assert "bits.keep_fp32" not in t.params and set(bits.values()) == {"int8"}
            continue
        k = t.params["bits.keep_fp32"]
        seen.add(k)
        assert bits["_default"] == "int8"
        assert [n for n, v in bits.items() if v == "fp32"] == RANKED[:k]
    assert seen == {0, 1, 2}


def test_a_seed_fixes_keep_fp32_and_its_label_says_so():
    from autocompress.references import seed_label

    space = parse(SearchSpace, {"bits": {"choices": ["int8"], "keep_fp32": [0, 2], "sensitive_layers": RANKED}}, "t")
    seed = SeedCandidate(sparsity=0.5, bits="int8", epochs=3, keep_fp32=2)
    p = seed_params(seed, space, GROUPS)
    assert p["bits.keep_fp32"] == 2
    study = optuna.create_study()
    study.enqueue_trial(p)
    c = sample_candidate(study.ask(), space, CPU, GROUPS)
    assert c.bits_map() == {"_default": "int8", "layer1.0.conv2": "fp32", "conv1": "fp32"}
    assert seed_label(seed) == "uniform 50% + int8 (2 fp32), KD 3 ep"
    assert seed_label(seed.model_copy(update={"label": "sensitivity 50% + int8"})) == "sensitivity 50% + int8"


def test_keep_fp32_without_a_ranking_is_refused():
    with pytest.raises(ConfigError, match="keep_fp32.*sensitivity"):
        parse(SearchSpace, {"bits": {"keep_fp32": [0, 2]}}, "space.yaml")
    # the analysis ranks them, or the user does
    parse(SearchSpace, {"bits": {"keep_fp32": [0, 2]}, "sensitivity": {"enabled": True}}, "t")
    parse(SearchSpace, {"bits": {"keep_fp32": 1, "sensitive_layers": ["conv1"]}}, "t")


def test_family_students_are_left_out_for_a_user_model():
    from autocompress.space import for_teacher

    space = load_space("default")
    said = []
    user = for_teacher(space, "user", log=said.append)
    assert user.student.kind == ["pruned"] and "family" in said[0]
    assert for_teacher(space, "resnet") is space
    for t, c in _ask(user, n=8):
        assert c.student == "pruned" and "student" not in t.params
    only = parse(SearchSpace, {"student": {"kind": ["family"]}, "sparsity": None}, "t")
    with pytest.raises(ConfigError, match="add 'pruned'"):
        for_teacher(only, "user")


def test_where_int8_alone_does_not_pay_the_int8_seeds_run_in_fp32():
    from autocompress.references import seed_label
    from autocompress.space import seeds_for_int8

    space = load_space("default")
    said: list[str] = []
    assert seeds_for_int8(space, CPU, 1.5, log=said.append) is space  # int8 pays: the seeds as written
    assert seeds_for_int8(space, CPU, None, log=said.append) is space  # not measured (no int8 on the profile)
    assert not said
    got = seeds_for_int8(space, CPU, 0.99, log=said.append)
    assert [s.bits for s in got.seeds] == ["fp32"] * (len(space.seeds) - 1)
    assert all(s.keep_fp32 == 0 for s in got.seeds)
    # int8 alone is left out (its reference was measured at set-up); every other seed keeps its student and recipe
    assert [s.model_copy(update={"bits": "int8"}) for s in got.seeds] == [s for s in space.seeds if s.sparsity or s.drop]
    assert seed_label(next(s for s in got.seeds if s.drop)) == "uniform 50%, 8 blocks dropped + fp32, KD 8 ep (T 2, alpha 0.7)"
    assert said == ["seeds: int8 alone ran 0.99x the fp32 baseline on this target, under the profile's "
                    "int8_seeds_min_speedup (1.1x): int8 does not pay here, so the int8 seeds run in fp32; left out: "
                    "'int8 alone' (the set-up measured it); the search still samples int8"]
    said.clear()  # predict mode: the figure came from the table, and the line says so
    seeds_for_int8(space, CPU, 0.99, log=said.append, predicted=True)
    assert said[0].startswith("seeds: int8 alone is predicted to run 0.99x the fp32 baseline") and \
        "(the set-up predicted it)" in said[0]
    # a labelled seed says it runs in fp32; a seed that becomes one already there is not run twice
    two = space.model_copy(update={"seeds": [SeedCandidate(sparsity=0.5, bits="fp32", epochs=8),
                                             SeedCandidate(sparsity=0.5, bits="int8", epochs=8),
                                             SeedCandidate(sparsity=0.7, bits="int8", keep_fp32=2, label="mine")]})
    got = seeds_for_int8(two, CPU, 0.9)
    assert [(s.sparsity, s.bits, s.keep_fp32, s.label) for s in got.seeds] == [(0.5, "fp32", 0, None),
                                                                              (0.7, "fp32", 0, "mine (in fp32)")]
    # the profile decides the bar (0: int8 seeds always), and a space without fp32 keeps its int8 seeds
    assert seeds_for_int8(space, CPU.model_copy(update={"int8_seeds_min_speedup": 0.0}), 0.5) is space
    only8 = space.model_copy(update={"bits": space.bits.model_copy(update={"choices": ["int8"]})})
    assert seeds_for_int8(only8, CPU, 0.5) is only8
    # the same predicate tells the run whether timing int8 alone again near the bar could change anything
    from autocompress.space import int8_seeds_could_move

    assert int8_seeds_could_move(space, CPU) and not int8_seeds_could_move(only8, CPU)
    assert not int8_seeds_could_move(space.model_copy(update={"seeds": list(got.seeds)}), CPU)  # fp32 seeds only


def test_on_a_target_without_int8_the_int8_seeds_run_in_its_lowest_precision():
    """The default space's seeds are int8; cuda-fp16 runs fp32/fp16. Before, the sampler was handed bits=int8 for a
    seed and the run stopped ("'int8' not in ('fp32', 'fp16')", found by a run on a CPU copy of cuda-fp16)."""
    from autocompress.config import load_profile
    from autocompress.references import seed_label
    from autocompress.space import seeds_for_profile

    space = load_space("default")
    gpu, _ = load_profile("cuda-fp16")
    said: list[str] = []
    assert seeds_for_profile(space, CPU, log=said.append) is space and not said  # cpu runs int8: as written
    got = seeds_for_profile(space, gpu, log=said.append)
    assert [s.bits for s in got.seeds] == ["fp16"] * len(space.seeds) and all(s.keep_fp32 == 0 for s in got.seeds)
    assert [s.model_copy(update={"bits": "int8"}) for s in got.seeds] == list(space.seeds)  # same students and KD
    assert [seed_label(s) for s in got.seeds[:2]] == ["uniform 50% + fp16, KD 8 ep", "fp16 alone"]
    assert said == ["seeds: profile 'cuda-fp16' runs fp32/fp16, not int8: those seeds run in fp16"]
    # every seed is a value the sampler's choices hold: enqueued, it samples without error
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for s in got.seeds:
        study.enqueue_trial(seed_params(s, got, GROUPS))
        c = sample_candidate(study.ask(), got, gpu, GROUPS, layer_names=["conv1", "layer1.0.conv1"])
        assert set(c.bits_map().values()) == {"fp16"}
    # an fp32-only target: int8 alone would be the baseline itself (left out); a labelled seed says where it runs;
    # a seed that becomes one already there is not run twice
    fp32_only = gpu.model_copy(update={"precisions": ["fp32"]})
    mine = space.model_copy(update={"seeds": [SeedCandidate(sparsity=0.5, bits="fp32", epochs=8),
                                              SeedCandidate(sparsity=0.5, bits="int8", epochs=8),
                                              SeedCandidate(sparsity=0.0, bits="int8"),
                                              SeedCandidate(sparsity=0.7, bits="int8", keep_fp32=2, label="mine")]})
    said.clear()
    got = seeds_for_profile(mine, fp32_only, log=said.append)
    assert [(s.sparsity, s.bits, s.keep_fp32, s.label) for s in got.seeds] == [(0.5, "fp32", 0, None),
                                                                              (0.7, "fp32", 0, "mine (in fp32)")]
    assert said == ["seeds: profile 'cuda-fp16' runs fp32, not int8: those seeds run in fp32; "
                    "left out: 'int8 alone' (it is the baseline)"]
