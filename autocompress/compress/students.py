"""Student builders: the student a candidate starts from, before pruning and distillation.

``"pruned"``: an independent copy of the teacher (the prune stage cuts it later).
``"family"``: a freshly initialised, smaller member of the teacher's zoo family
(``width_mult``/``depth_mult`` from the candidate's ``student_args``).
User builders: ``"file.py:fn"`` / ``"module:fn"`` with ``fn(num_classes, input_shape, **student_args)``.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError, InfeasibleCandidate, StageError
from ..models.loader import check_model, import_callable
from ..models.zoo import build_model
from ..records import Candidate
from ..registry import Registry

# builder(candidate, teacher, num_classes, input_shape) -> nn.Module
StudentBuilder = Callable[..., nn.Module]
STUDENTS: Registry[StudentBuilder] = Registry("student")


@STUDENTS.register("pruned")
def _pruned(candidate: Candidate, teacher, num_classes: int, input_shape) -> nn.Module:
    student = copy.deepcopy(teacher.model)
    student.train()
    return student


@STUDENTS.register("family")
def _family(candidate: Candidate, teacher, num_classes: int, input_shape) -> nn.Module:
    if teacher.info.family == "user":
        raise InfeasibleCandidate(
            f"a 'family' student needs a zoo teacher, but '{teacher.info.name}' is a user model; "
            "use student 'pruned' or register a student builder ('file.py:fn')"
        )
    args = candidate.student_args_map()
    unknown = sorted(set(args) - {"width_mult", "depth_mult"})
    if unknown:
        raise ConfigError(f"student 'family': unknown student_args {', '.join(unknown)}; allowed: width_mult, depth_mult")
    return build_model(
        teacher.info.name,
        num_classes,
        tuple(input_shape),
        width_mult=float(args.get("width_mult", 1.0)),
        depth_mult=float(args.get("depth_mult", 1.0)),
    )


def register_student_builder(spec: str) -> str:
    """Register ``file.py:fn`` / ``module:fn`` as a student builder; returns the name it is registered under."""
    if spec in STUDENTS:
        return spec
    fn, _source = import_callable(spec, "student builder")

    def build(candidate: Candidate, teacher, num_classes: int, input_shape) -> nn.Module:
        args = candidate.student_args_map()
        try:
            model = fn(num_classes, tuple(input_shape), **args)
        except TypeError as e:
            raise ConfigError(
                f"student builder '{spec}': called as fn(num_classes, input_shape, **{args}) -> {e}; "
                "accept those arguments"
            ) from None
        except Exception as e:  # noqa: BLE001 - user code fails one trial, not the study
            raise StageError("build_student", f"student builder '{spec}' raised {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"student builder '{spec}': returned {type(model).__name__}, expected a torch.nn.Module"
            )
        check_model(model, spec, num_classes, input_shape)
        return model

    STUDENTS.register(spec, build)
    return spec


def build_student(candidate: Candidate, teacher, num_classes: int, input_shape) -> nn.Module:
    """The untrained/unpruned student for ``candidate`` (in train mode, on CPU)."""
    name = candidate.student
    if name not in STUDENTS and ":" in name:  # a user builder named directly (e.g. in a resumed run)
        register_student_builder(name)
    student = STUDENTS.get(name)(candidate, teacher, num_classes, tuple(input_shape))
    return student.train()
