"""Search space YAML -> define-by-run suggestions -> a frozen :class:`Candidate`.

Parameters are conditional: per-stage sparsity is suggested only for the ``pruned`` student, width and
depth only for family students, the int8 format only when some layer is int8, ``bits.keep_fp32`` (how many of
the most int8-sensitive layers stay fp32, ranked by :mod:`autocompress.sensitivity`) only for an int8 pruned
student of a space whose layers are ranked. Parameter names are
stable (``sparsity.layer1``, ``bits``, ``kd.epochs``...) so studies resume and tables line up.
"""

from __future__ import annotations

import warnings

from typing import Any, Mapping, Protocol, Sequence

from .compress.channels import inside
from .config import FloatRange, HardwareProfile, IntRange, SearchSpace, SeedCandidate, _values_of
from .errors import ConfigError
from .records import Candidate, DistillSpec, QuantSpec
from .references import seed_label


class Suggest(Protocol):
    """The part of ``optuna.Trial`` the space needs (any backend can provide it)."""

    def suggest_float(self, name: str, low: float, high: float, *, step=None, log=False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step=1, log=False) -> int: ...
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


def _suggest(t: Suggest, name: str, p, params: dict) -> Any:
    """A fixed value, a list of choices or a range -> a value (recorded in params when searched)."""
    if isinstance(p, (FloatRange, IntRange)):
        with warnings.catch_warnings():
            # a seed candidate may sit outside the range on purpose (sparsity 0.0 = int8 alone): not the user's to fix
            warnings.filterwarnings("ignore", message="Fixed parameter .* out of range", category=UserWarning)
            if isinstance(p, FloatRange):
                v = t.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
            else:
                v = t.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    elif isinstance(p, list):
        if len(p) == 1:
            return p[0]
        v = t.suggest_categorical(name, list(p))
    else:
        return p
    params[name] = v
    return v


def allowed_precisions(space: SearchSpace, profile: HardwareProfile) -> list[str]:
    allowed = [p for p in space.bits.choices if p in profile.precisions]
    if not allowed:
        raise ConfigError(
            f"search space '{space.name}' offers bits {space.bits.choices} but profile '{profile.name}' runs "
            f"only {profile.precisions}; add one of those to bits.choices or pick another --profile"
        )
    for pat, prec in space.bits.layers.items():
        if prec not in profile.precisions:
            raise ConfigError(
                f"search space '{space.name}': bits.layers['{pat}'] is {prec}, which profile "
                f"'{profile.name}' cannot run (it runs {profile.precisions})"
            )
    return allowed


def sample_candidate(
    t: Suggest,
    space: SearchSpace,
    profile: HardwareProfile,
    groups: Mapping[str, Sequence[str]],
    layer_names: Sequence[str] = (),
) -> Candidate:
    """Draw one candidate. ``groups`` maps stage names to module names (prune.stage_groups of the
    teacher); ``layer_names`` lists prunable layers for per-layer granularity."""
    params: dict[str, Any] = {}
    student = _suggest(t, "student", list(space.student.kind), params)
    student_args: dict[str, Any] = {}
    sparsity: dict[str, float] = {}
    criterion = "l1"
    if student == "family":
        student_args["width_mult"] = _suggest(t, "width_mult", space.student.width_mult, params)
        student_args["depth_mult"] = _suggest(t, "depth_mult", space.student.depth_mult, params)
    elif student == "pruned" and space.sparsity is not None:
        sp = space.sparsity
        if sp.granularity == "uniform":
            sparsity["_default"] = _suggest(t, "sparsity", sp.range, params)
        elif sp.granularity == "per_stage":
            for stage, names in groups.items():
                r = _suggest(t, f"sparsity.{stage}", sp.range, params)
                sparsity.update({n: r for n in names})
        else:
            for n in layer_names:
                sparsity[n] = _suggest(t, f"sparsity.{n}", sp.range, params)
        for pat, p in sp.layers.items():
            sparsity[pat] = _suggest(t, f"sparsity.{pat}", p, params)
        criterion = _suggest(t, "criterion", list(sp.criterion), params)
    drop: list[str] = []
    if student == "pruned" and depth_active(space):
        drop = list(space.depth.blocks[: int(_suggest(t, "depth.drop", space.depth.drop, params))])
        sparsity = {n: r for n, r in sparsity.items() if not inside(n, drop)}  # gone with their block

    precisions = allowed_precisions(space, profile)
    bits: dict[str, str] = {}
    if space.bits.granularity == "uniform" or not groups:
        bits["_default"] = _suggest(t, "bits", precisions, params)
    else:
        # per stage (per_layer bits over fifty layers is rarely worth it: stages keep the space small)
        for stage, names in groups.items():
            b = _suggest(t, f"bits.{stage}", precisions, params)
            bits.update({n: b for n in names})
        bits = {"_default": b, **bits}  # layers outside the stages (classifier) follow the last stage
    if student == "pruned" and "int8" in bits.values() and space.bits.sensitive_layers:
        # int8 with the k most int8-sensitive layers of the teacher (whose names the pruned student keeps) in fp32
        k = int(_suggest(t, "bits.keep_fp32", space.bits.keep_fp32, params))
        bits.update({name: "fp32" for name in [n for n in space.bits.sensitive_layers if not inside(n, drop)][:k]})
    bits.update({k: v for k, v in space.bits.layers.items() if not inside(k, drop)})  # a dropped layer has no node

    q = space.quantization
    # a single format/type in the space defers to the profile's preferred int8 form for its target
    formats = list(q.format) if len(q.format) > 1 else [profile.int8_format or q.format[0]]
    types = list(q.types) if len(q.types) > 1 else [profile.int8_types or q.types[0]]
    quant = QuantSpec(mode=q.mode[0], format=formats[0], types=types[0], reduce_range=profile.int8_reduce_range,
                      per_channel=q.per_channel[0], calibration=q.calibration[0])
    if "int8" in bits.values():
        quant = QuantSpec(
            mode=_suggest(t, "quant.mode", list(q.mode), params),
            format=_suggest(t, "quant.format", formats, params),
            types=_suggest(t, "quant.types", types, params),
            per_channel=_suggest(t, "quant.per_channel", list(q.per_channel), params),
            calibration=_suggest(t, "quant.calibration", list(q.calibration), params),
            reduce_range=profile.int8_reduce_range,
        )

    distill = None
    d = space.distill
    needs_training = student != "pruned" or any(v > 0 for v in sparsity.values()) or bool(drop)
    if d.enabled and needs_training:
        distill = DistillSpec(
            epochs=int(_suggest(t, "kd.epochs", d.epochs, params)),
            lr=float(_suggest(t, "kd.lr", d.lr, params)),
            temperature=float(_suggest(t, "kd.temperature", d.temperature, params)),
            alpha=float(_suggest(t, "kd.alpha", d.alpha, params)),
            batch_size=int(_suggest(t, "kd.batch_size", d.batch_size, params)),
            optimizer=_suggest(t, "kd.optimizer", list(d.optimizer), params),
            samples_per_epoch=(None if d.samples_per_epoch is None
                               else int(_suggest(t, "kd.samples_per_epoch", d.samples_per_epoch, params))),
        )
    elif student != "pruned":
        raise ConfigError(f"search space '{space.name}': student '{student}' needs distill.enabled: true (a fresh student must be trained)")
    return Candidate.make(
        student=student, student_args=student_args, sparsity=sparsity, criterion=criterion,
        bits=bits, quant=quant, distill=distill, params=params, drop=drop,
    )


def seed_params(seed: SeedCandidate, space: SearchSpace, groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A hand-picked seed -> the parameter values to enqueue (only names this space searches)."""
    out: dict[str, Any] = {}
    if len(space.student.kind) > 1:
        out["student"] = seed.student
    if space.sparsity is not None and seed.student == "pruned":
        sp = space.sparsity
        per = seed.sparsity if isinstance(seed.sparsity, dict) else None
        if sp.granularity == "uniform":
            out["sparsity"] = float(seed.sparsity if per is None else next(iter(per.values())))
        elif sp.granularity == "per_stage":
            for stage in groups:
                out[f"sparsity.{stage}"] = float(per.get(stage, 0.0) if per is not None else seed.sparsity)
        if len(sp.criterion) > 1:
            out["criterion"] = sp.criterion[0]
    if space.bits.granularity == "uniform" or not groups:
        out["bits"] = seed.bits
    else:
        out.update({f"bits.{stage}": seed.bits for stage in groups})
    if seed.student == "pruned" and seed.bits == "int8" and space.bits.sensitive_layers and _searched(space.bits.keep_fp32):
        out["bits.keep_fp32"] = seed.keep_fp32
    if seed.student == "pruned" and space.depth.blocks and _searched(space.depth.drop):
        out["depth.drop"] = seed.drop
    if seed.epochs is not None:
        out["kd.epochs"] = seed.epochs
    # the rest of a searched KD recipe: the seed's own temperature / alpha, else the first choice, so a seed is the
    # same setting in every run
    d = space.distill
    own = {"kd.temperature": seed.temperature, "kd.alpha": seed.alpha}
    for name, p in (("kd.lr", d.lr), ("kd.temperature", d.temperature), ("kd.alpha", d.alpha),
                    ("kd.batch_size", d.batch_size), ("kd.optimizer", d.optimizer)):
        if own.get(name) is not None and _searched(p):
            out[name] = own[name]
        elif isinstance(p, list) and len(p) > 1:
            out[name] = p[0]
    return out


def _searched(p) -> bool:
    return isinstance(p, (FloatRange, IntRange)) or (isinstance(p, list) and len(p) > 1)


def for_teacher(space: SearchSpace, family: str, log=None) -> SearchSpace:
    """The space as it applies to this teacher: a user model has no zoo family, so ``family`` students are left
    out (the student dimension is then what remains, e.g. just ``pruned``); a space offering nothing else stops."""
    kinds = list(space.student.kind)
    if family != "user" or "family" not in kinds:
        return space
    rest = [k for k in kinds if k != "family"]
    if not rest:
        raise ConfigError(f"search space '{space.name}' offers only student 'family', which needs a zoo model "
                          "(--model resnet18, ...); add 'pruned' to student.kind for your own model")
    if log is not None:
        log(f"space: student 'family' left out (the teacher is a user model, with no smaller zoo member); students: {rest}")
    return space.model_copy(update={"student": space.student.model_copy(update={"kind": rest})})


def depth_active(space: SearchSpace) -> bool:
    """Whether the space drops blocks: it lists (or found) droppable blocks and ``depth.drop`` is not just 0."""
    return bool(space.depth.blocks) and _values_of(space.depth.drop) != [0]


def with_blocks(space: SearchSpace, model, example, log=None) -> SearchSpace:
    """The space with the teacher's droppable blocks (``depth.blocks``; the user's list checked, else found and
    ordered last first until the sensitivity analysis ranks them) and ``depth.drop`` clamped to their count."""
    d = space.depth
    if _values_of(d.drop) == [0]:
        return _seeds_within(space, 0, log, "the space drops no blocks (depth.drop is 0)")
    from .compress.depth import check_blocks, droppable_blocks

    exclude = list(space.sparsity.exclude) if space.sparsity is not None else []
    if d.blocks:
        check_blocks(model, example, d.blocks, exclude)
        blocks = list(d.blocks)
    else:
        try:
            blocks = droppable_blocks(model, example, exclude)[::-1]
        except Exception as e:  # noqa: BLE001 - a model the probe cannot run block by block: searched without depth, said
            if log is not None:
                log(f"depth: droppable blocks of {type(model).__name__} could not be found ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); depth.drop stays 0 (list them in depth.blocks to drop them)")
            return _seeds_within(space.model_copy(update={"depth": d.model_copy(update={"blocks": [], "drop": 0})}), 0, log,
                                 "no droppable blocks were found")
    n = len(blocks)
    p = d.drop
    if isinstance(p, IntRange):
        drop = p.model_copy(update={"low": min(p.low, n), "high": min(p.high, n)}) if n else 0
    elif isinstance(p, list):
        drop = sorted({min(int(v), n) for v in p})
    else:
        drop = min(int(p), n)
    if log is not None:
        log(f"depth: {n} droppable blocks" + (f" ({', '.join(blocks[:8])}{', ...' if n > 8 else ''})" if n else
                                              f" in {type(model).__name__} (no block keeps its input's shape); depth.drop stays 0"))
    return _seeds_within(space.model_copy(update={"depth": d.model_copy(update={"blocks": blocks, "drop": drop})}), n, log,
                         f"the teacher has {n} droppable block(s)")


def _seeds_within(space: SearchSpace, n: int, log, why: str) -> SearchSpace:
    """The space's seeds with ``drop`` at most ``n`` (the teacher's droppable blocks: the default space's depth seed
    drops "all of them", written as 8); left out: a seed that becomes the same as an earlier one, and a seed that
    drops blocks when there are none to drop (a depth seed without depth, even with its own KD recipe); what changed
    is said in one line."""
    kept: dict[int, SeedCandidate] = {}  # the seed's place in the space -> the seed, its drop clamped
    said: list[str] = []
    for i, seed in enumerate(space.seeds):
        s = seed.model_copy(update={"drop": n}) if seed.drop > n else seed
        same = next((j for j, t in kept.items() if t == s), None)
        if same is not None:
            said.append(f"seed '{seed_label(seed)}' left out (" + (f"with {n} blocks dropped " if s is not seed else "")
                        + f"it is the same as seed '{seed_label(space.seeds[same])}')")
            continue
        if seed.drop and not n:
            said.append(f"seed '{seed_label(seed)}' left out (it drops blocks, and there are none to drop)")
            continue
        if s is not seed:
            said.append(f"seed '{seed_label(seed)}' drops {n}, not {seed.drop}")
        kept[i] = s
    if said and log is not None:
        log(f"seeds: {why}: " + "; ".join(said))
    seeds = list(kept.values())
    return space if seeds == list(space.seeds) else space.model_copy(update={"seeds": seeds})


def seeds_for_profile(space: SearchSpace, profile: HardwareProfile, log=None) -> SearchSpace:
    """The seeds in the precisions the profile runs: a seed in a precision the target lacks (the default space's int8
    seeds on ``cuda-fp16``, which runs fp32 and fp16) runs in the lowest precision it has instead (int8, then fp16,
    then fp32), the same student and KD; a seed that becomes the fp32 baseline itself ('int8 alone' on an fp32-only
    target) or the same as an earlier seed is left out. What changed is said in one line. Before this, such a seed
    stopped the run when the sampler was handed a value its choices did not hold."""
    allowed = allowed_precisions(space, profile)
    if all(s.bits in allowed for s in space.seeds):
        return space
    low = next(p for p in ("int8", "fp16", "fp32") if p in allowed)
    seeds, left_out = _seeds_moved(space.seeds, lambda s: s.bits not in allowed, low)
    if log is not None:
        lacking = sorted({s.bits for s in space.seeds if s.bits not in allowed})
        log(f"seeds: profile '{profile.name}' runs {'/'.join(allowed)}, not {'/'.join(lacking)}: those seeds run in {low}"
            + (f"; left out: {', '.join(f'{x!r} (it is the baseline)' for x in left_out)}" if left_out else ""))
    return space.model_copy(update={"seeds": seeds})


def _seeds_moved(seeds, moves, to: str) -> tuple[list[SeedCandidate], list[str]]:
    """``seeds`` with those ``moves(seed)`` picks run in precision ``to`` (the same student and KD; ``keep_fp32``
    only for int8; a label says where it runs), and the labels of the moved seeds left out: one that in fp32 is the
    baseline itself (nothing pruned, no block dropped). A seed equal to an earlier one is not repeated."""
    out: list[SeedCandidate] = []
    left_out: list[str] = []
    for s in seeds:
        if moves(s):
            if to == "fp32" and s.student == "pruned" and not s.drop and not _any_sparsity(s.sparsity):
                left_out.append(seed_label(s))
                continue
            s = s.model_copy(update={"bits": to, "keep_fp32": s.keep_fp32 if to == "int8" else 0,
                                     "label": None if s.label is None else f"{s.label} (in {to})"})
        if s not in out:
            out.append(s)
    return out, left_out


def seeds_for_int8(space: SearchSpace, profile: HardwareProfile, int8_speedup: float | None, log=None, *,
                   predicted: bool = False) -> SearchSpace:
    """The seeds as the target runs int8. When int8 alone (measured at set-up against the fp32 baseline, or predicted
    from the profile's table) runs under the profile's ``int8_seeds_min_speedup`` (1.1x), every int8 seed runs in fp32
    instead (the same student and KD: int8 would cost it accuracy for no speed) and the 'int8 alone' seed is left out
    (the set-up measured it: it is the run's reference). Measured on an AVX2-only CPU (U8S8 without VNNI): the custom
    CNN's int8 alone ran 0.94-1.04x, and the same 90% student ran faster in fp32 (7.47x vs 6.09x in int8) and more
    accurate (benchmarks/README.md, "The depth seed at temperature 2, alpha 0.7, on an AVX2-only CPU"). The search
    itself still samples int8. Unchanged when int8 pays, was not measured, or the space or profile has no fp32."""
    bar = profile.int8_seeds_min_speedup
    if int8_pays(int8_speedup, profile) or not int8_seeds_could_move(space, profile):
        return space
    # int8 alone is left out: in fp32 it is the baseline, and the set-up timed it in int8
    seeds, left_out = _seeds_moved(space.seeds, lambda s: s.bits == "int8", "fp32")
    if log is not None:
        how = "is predicted to run" if predicted else "ran"
        log(f"seeds: int8 alone {how} {int8_speedup:.2f}x the fp32 baseline on this target, under the profile's "
            f"int8_seeds_min_speedup ({bar:g}x): int8 does not pay here, so the int8 seeds run in fp32"
            + (f"; left out: {', '.join(repr(x) for x in left_out)} (the set-up "
               f"{'predicted' if predicted else 'measured'} it)" if left_out else "")
            + "; the search still samples int8")
    return space.model_copy(update={"seeds": seeds})


def int8_pays(int8_speedup: float | None, profile: HardwareProfile) -> bool:
    """Whether int8 alone (measured or predicted at set-up; None: not measured) reaches the profile's
    ``int8_seeds_min_speedup``: below it the int8 seeds run in fp32 and the int8 sensitivity ranking is skipped."""
    return int8_speedup is None or int8_speedup >= profile.int8_seeds_min_speedup


def int8_seeds_could_move(space: SearchSpace, profile: HardwareProfile) -> bool:
    """Whether :func:`seeds_for_int8` could change the seeds at all (int8 seeds, and fp32 to run them in): the run
    times int8 alone again near the bar only then."""
    return any(s.bits == "int8" for s in space.seeds) and "fp32" in allowed_precisions(space, profile)


def _any_sparsity(sp: float | Mapping[str, float]) -> bool:
    return any(v > 0 for v in (sp.values() if isinstance(sp, Mapping) else [sp]))


def depth_choices(space: SearchSpace) -> list[int]:
    """The values ``depth.drop`` may take (for mutations), none when the space does not search it."""
    p = space.depth.drop
    if not depth_active(space) or not _searched(p):
        return []
    if isinstance(p, IntRange):
        return list(range(p.low, p.high + 1, p.step or 1))
    return sorted(int(v) for v in p)
