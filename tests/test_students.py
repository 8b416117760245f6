from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autocompress.compress.students import STUDENTS, build_student, register_student_builder
from autocompress.errors import ConfigError, InfeasibleCandidate
from autocompress.models import Teacher, build_model, resolve_model
from autocompress.models.loader import ModelInfo
from autocompress.records import Candidate

SHAPE = (3, 16, 16)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture
def zoo_teacher():
    model, info = resolve_model("resnet18", 10, SHAPE)
    return Teacher(model.eval(), info, 0.9, "trained", 1, 1.0)


@pytest.fixture
def user_teacher(tiny_model_file):
    model, info = resolve_model(f"{tiny_model_file}:tiny_cnn", 10, SHAPE)
    return Teacher(model.eval(), info, 0.9, "trained", 1, 1.0)


def test_registry_names():
    assert {"pruned", "family"} <= set(STUDENTS.names())


def test_pruned_is_independent_copy(zoo_teacher):
    s = build_student(Candidate.make(student="pruned"), zoo_teacher, 10, SHAPE)
    assert s is not zoo_teacher.model and s.training and not zoo_teacher.model.training
    assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), zoo_teacher.model.state_dict().values()))
    with torch.no_grad():
        s.fc.weight.add_(1.0)
    assert not torch.equal(s.fc.weight, zoo_teacher.model.fc.weight)


def test_family_student_is_smaller_and_fresh(zoo_teacher):
    cand = Candidate.make(student="family", student_args={"width_mult": 0.5, "depth_mult": 0.5})
    s = build_student(cand, zoo_teacher, 10, SHAPE)
    assert n_params(s) < 0.3 * n_params(zoo_teacher.model)
    assert sum(m.__class__.__name__ == "BasicBlock" for m in s.modules()) == 4  # one block per stage
    with torch.no_grad():
        assert s.eval()(torch.randn(2, *SHAPE)).shape == (2, 10)
    same = build_student(Candidate.make(student="family"), zoo_teacher, 10, SHAPE)
    assert n_params(same) == n_params(zoo_teacher.model)
    assert not torch.equal(same.fc.weight, zoo_teacher.model.fc.weight)  # freshly initialised
    with pytest.raises(ConfigError, match="unknown student_args widthmult"):
        build_student(Candidate.make(student="family", student_args={"widthmult": 0.5}), zoo_teacher, 10, SHAPE)


def test_family_student_of_user_teacher_is_infeasible(user_teacher):
    with pytest.raises(InfeasibleCandidate, match="needs a zoo teacher"):
        build_student(Candidate.make(student="family"), user_teacher, 10, SHAPE)


def test_unknown_student(zoo_teacher):
    with pytest.raises(ConfigError, match="unknown student 'familly'.*did you mean 'family'"):
        build_student(Candidate.make(student="familly"), zoo_teacher, 10, SHAPE)


def test_user_student_builder(tiny_model_file, zoo_teacher, tmp_path):
    spec = f"{tiny_model_file}:tiny_student"
    name = register_student_builder(spec)
    assert name in STUDENTS
    s = build_student(Candidate.make(student=name, student_args={"width": 4}), zoo_teacher, 10, SHAPE)
    assert s[0].out_channels == 4
    with pytest.raises(ConfigError, match="accept those arguments"):
        build_student(Candidate.make(student=name, student_args={"depth": 4}), zoo_teacher, 10, SHAPE)
    bad = tmp_path / "bad_student.py"
    bad.write_text("def fn(num_classes, input_shape):\n    return 'model'\n")
    with pytest.raises(ConfigError, match="returned str"):
        build_student(Candidate.make(student=f"{bad}:fn"), zoo_teacher, 10, SHAPE)  # registered on first use
    with pytest.raises(ConfigError, match="has no function"):
        register_student_builder(f"{tiny_model_file}:nope")


def test_family_student_matches_build_model(zoo_teacher):
    torch.manual_seed(1)
    a = build_student(Candidate.make(student="family", student_args={"width_mult": 0.25}), zoo_teacher, 10, SHAPE)
    b = build_model("resnet18", 10, SHAPE, width_mult=0.25)
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert isinstance(zoo_teacher.info, ModelInfo)


# ---------------------------------------------------------------- students from the user's own file
STUDENT_SOURCE = '''
import torch.nn as nn
from tiny_models import tiny_cnn


def small():  # no arguments, like --model
    return tiny_cnn(width=4)


def defaults_only(num_classes=10, width=6):  # no required parameter: also called with none
    return tiny_cnn(num_classes, 3, width)


def five_classes():
    return tiny_cnn(num_classes=5)
'''


@pytest.fixture
def student_file(tiny_model_file, monkeypatch):
    monkeypatch.syspath_prepend(str(tiny_model_file.parent))
    path = tiny_model_file.parent / "user_students.py"
    path.write_text(STUDENT_SOURCE)
    return path


def test_no_argument_student_from_the_user_file(student_file, user_teacher):
    s = build_student(Candidate.make(student=f"{student_file}:small"), user_teacher, 10, SHAPE)
    assert s.training and s[0].out_channels == 4 and s is not user_teacher.model
    with torch.no_grad():
        assert s.eval()(torch.randn(2, *SHAPE)).shape == (2, 10)
    d = build_student(Candidate.make(student=f"{student_file}:defaults_only"), user_teacher, 10, SHAPE)
    assert d[0].out_channels == 6  # called with no arguments: its own defaults
    # a builder with required parameters is still called as fn(num_classes, input_shape, **student_args)
    b = build_student(Candidate.make(student=f"{student_file.parent / 'tiny_models.py'}:tiny_student",
                                     student_args={"width": 3}), user_teacher, 7, SHAPE)
    with torch.no_grad():
        assert b[0].out_channels == 3 and b.eval()(torch.randn(2, *SHAPE)).shape == (2, 7)


def test_no_argument_student_errors(student_file, user_teacher):
    with pytest.raises(ConfigError, match=r"takes no arguments.*student_args \{'width': 4\}.*fn\(num_classes, input_shape") as e:
        build_student(Candidate.make(student=f"{student_file}:small", student_args={"width": 4}), user_teacher, 10, SHAPE)
    assert "\n" not in str(e.value) and "user_students.py:small" in str(e.value)
    with pytest.raises(ConfigError, match=r"outputs shape \(2, 5\).*expected \(2, 10\)"):
        build_student(Candidate.make(student=f"{student_file}:five_classes"), user_teacher, 10, SHAPE)


def test_a_search_with_a_student_from_the_user_file(tmp_path, monkeypatch):
    import json

    import yaml
    from conftest import FAST_PROFILE, TINY_CNN_SOURCE, make_workspace

    from autocompress.cli import main

    source = TINY_CNN_SOURCE + "\n\ndef small():\n    return tiny_cnn(width=4)\n"
    space = {"kind": "search_space", "name": "user-student", "student": {"kind": ["models.py:small"]}, "sparsity": None,
             "bits": {"choices": ["fp32"]}, "distill": {"epochs": 1, "lr": 0.05}}
    ws = make_workspace(tmp_path, space, FAST_PROFILE, models_source=source, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    monkeypatch.chdir(ws)  # "models.py:small" is relative, as a user writes it next to the model
    out = tmp_path / "run"
    rc = main(["run", "--model", "models.py:tiny_cnn", "--checkpoint", "teacher.pt", "--data", "digits", "--image-size", "16",
               "--space", "space.yaml", "--profile", "profile.yaml", "--trials", "1", "--out", str(out),
               "--max-accuracy-drop", "100"])
    assert rc == 0
    rec = json.loads((out / "trials.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "COMPLETE", rec
    assert rec["candidate"]["student"] == "models.py:small"
    base = json.loads((out / "baseline.json").read_text())
    assert rec["metrics"]["params"] < base["params"] / 2  # the width-4 student, not a copy of the width-16 teacher
    assert yaml.safe_load((out / "run.yaml").read_text())["spec"]["model"] == "models.py:tiny_cnn"


def test_a_wrong_user_student_stops_the_run_before_any_trial(tmp_path, monkeypatch, capsys):
    """A student whose output does not fit the data is found at start-up (one line), not once per trial."""
    from conftest import FAST_PROFILE, TINY_CNN_SOURCE, make_workspace

    from autocompress.cli import main

    source = TINY_CNN_SOURCE + "\n\ndef five():\n    return tiny_cnn(num_classes=5, width=4)\n"
    space = {"kind": "search_space", "name": "bad-student", "student": {"kind": ["models.py:five"]}, "sparsity": None,
             "bits": {"choices": ["fp32"]}, "distill": {"epochs": 1}}
    ws = make_workspace(tmp_path, space, FAST_PROFILE, models_source=source, teacher="teacher.pt")
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(ws / "cache"))
    monkeypatch.chdir(ws)
    out = tmp_path / "run"
    rc = main(["run", "--model", "models.py:tiny_cnn", "--checkpoint", "teacher.pt", "--data", "digits", "--image-size",
               "16", "--space", "space.yaml", "--profile", "profile.yaml", "--trials", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert "models.py:five" in err and "expected (2, 10)" in err and "Traceback" not in err
    assert not (out / "trials.jsonl").exists() or not (out / "trials.jsonl").read_text().strip()
