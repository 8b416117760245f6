"""Student builders: the student a candidate starts from, before pruning and distillation.

``"pruned"``: an independent copy of the teacher (the prune stage cuts it later).
``"family"``: a freshly initialised, smaller member of the teacher's zoo family
(``width_mult``/``depth_mult`` from the candidate's ``student_args``).
User students: ``"file.py:fn"`` / ``"module:fn"``, either a function with no required parameter that returns
the model (as ``--model``: ``resnet.py:resnet20``) or a builder ``fn(num_classes, input_shape, **student_args)``.
The built student must output ``(batch, num_classes)`` on the data's input shape.
"""

from __future__ import annotations

import copy
import inspect
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


def _takes_no_args(fn: Callable) -> bool:
    """True for an entrypoint like ``--model``'s (no required parameter), False for a builder."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C function): treat as a builder
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return not any(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


def register_student_builder(spec: str) -> str:
    """Register ``file.py:fn`` / ``module:fn`` as a student; returns the name it is registered under.

    A function with no required parameter is called with none (as ``--model`` is: e.g. ``resnet.py:resnet20``);
    any other is a builder called as ``fn(num_classes, input_shape, **student_args)``."""
    if spec in STUDENTS:
        return spec
    fn, _source = import_callable(spec, "student")
    no_args = _takes_no_args(fn)

    def build(candidate: Candidate, teacher, num_classes: int, input_shape) -> nn.Module:
        args = candidate.student_args_map()
        if no_args and args:
            raise ConfigError(
                f"student '{spec}': takes no arguments (it is called as fn(), like --model) but got student_args "
                f"{args}; drop student_args, or make it a builder fn(num_classes, input_shape, **student_args)"
            )
        call = "fn()" if no_args else f"fn(num_classes, input_shape, **{args})"
        try:
            model = fn() if no_args else fn(num_classes, tuple(input_shape), **args)
        except TypeError as e:
            raise ConfigError(
                f"student builder '{spec}': called as {call} -> {e}; accept those arguments"
            ) from None
        except Exception as e:  # noqa: BLE001 - user code fails one trial, not the study
            raise StageError("build_student", f"student '{spec}' raised {type(e).__name__}: {e}") from None
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


def check_students(kinds, num_classes: int, input_shape) -> None:
    """Before any trial: every user student named in the space imports, and one that takes no arguments
    builds and gives (batch, num_classes) logits, so a wrong file or output stops the run with one line
    instead of failing every trial that draws it."""
    for name in kinds:
        if name in STUDENTS or ":" not in name:
            continue
        register_student_builder(name)
        fn, _ = import_callable(name, "student")
        if _takes_no_args(fn):
            STUDENTS.get(name)(Candidate(student=name), None, num_classes, tuple(input_shape))
