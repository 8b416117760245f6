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
