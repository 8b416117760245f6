"""Structured channel pruning with Torch-Pruning's dependency graph.

Per-layer ratios are a mapping from a module-name pattern to the fraction of output channels to remove:
an exact module name (a container name applies to the layers inside it), ``"re:<regex>"``
(``re.fullmatch`` on the module name) or ``"_default"``; when several patterns match a layer the one
written *last* wins. The classifier (the layer producing the logits) is never pruned.

Torch-Pruning couples layers whose channels must shrink together (residual adds, depthwise convs,
concatenations, squeeze-excitation); one group takes the ratio of the first of its layers that has one.
Nominal ratios are not trusted: parameters and MACs are measured before and after, and
``PruneResult.layer_ratios`` holds the fraction of channels each layer actually lost.

Some graphs cannot be traced whole by Torch-Pruning 1.6 (ShuffleNetV2's chunk + channel shuffle: its
reshape index mapping divides by zero). Then the model is pruned part by part: each sub-module that traces
alone is pruned with its own dependency graph, keeping its input and output widths (the layers whose channels
reach the part's interface stay whole and are listed in ``PruneResult.fixed_layers``); a part that does not
trace is split into its children. For ShuffleNetV2 that prunes the channels inside every branch.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import AutocompressError, ConfigError, InfeasibleCandidate, StageError
from ..registry import did_you_mean
from .criteria import NEEDS_GRADIENTS, make_importance

PRUNABLE = (nn.Conv2d, nn.Linear)
MAX_STAGES = 5


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layer_ratios: dict[str, float]  # measured: 1 - out_channels_after / out_channels_before, per layer
    seconds: float
    requested_ratios: dict[str, float] = field(default_factory=dict)  # what the mapping asked for
    # layers kept whole because the whole graph could not be traced and their channels reach a part's interface
    fixed_layers: tuple[str, ...] = ()

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


# ---------------------------------------------------------------- layers and patterns
def _width(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def find_classifier(model: nn.Module) -> str:
    """Name of the layer producing the logits: the last Linear defined, else the last Conv2d."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layer to prune")
    return convs[-1]


def prunable_layers(model: nn.Module) -> list[str]:
    """Conv2d/Linear layers in definition order, without the classifier."""
    cls = find_classifier(model)
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n != cls]


def match_pattern(pattern: str, name: str) -> bool:
    """``_default`` matches all; ``re:<regex>`` fullmatches; a name matches itself and what it contains."""
    if pattern == "_default":
        return True
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.startswith(pattern + ".")


def _check_pattern_syntax(patterns, what: str) -> None:
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ConfigError(f"{what} pattern '{p}' is not a valid regular expression: {e}") from None


def _check_exact(model: nn.Module, patterns, what: str) -> None:
    _check_pattern_syntax(patterns, what)
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for p in patterns:
        if p == "_default" or p.startswith("re:"):
            continue
        if p not in known:
            raise ConfigError(
                f"{what} names module '{p}', which {type(model).__name__} does not have{did_you_mean(p, names)}; "
                "use an exact module name, 're:<regex>' or '_default'"
            )


def resolve_ratios(model: nn.Module, mapping: Mapping[str, float], exclude: Sequence[str] = ()) -> dict[str, float]:
    """``{layer name: ratio}`` for every prunable Conv2d/Linear layer (0.0 where no pattern matches).

    Excluded layers (same pattern syntax) and the classifier are left out. A ratio >= 1 would remove
    every channel: :class:`InfeasibleCandidate`; a negative one is a :class:`ConfigError`.
    """
    _check_exact(model, list(mapping) + list(exclude), "sparsity")
    cls = find_classifier(model)
    for p in mapping:
        if p == cls:
            raise ConfigError(f"sparsity names '{p}', the classifier (it produces the logits); it is never pruned")
    out: dict[str, float] = {}
    for name in prunable_layers(model):
        if any(match_pattern(p, name) for p in exclude):
            continue
        ratio = 0.0
        for p, r in mapping.items():
            if match_pattern(p, name):
                ratio = float(r)
        if ratio < 0:
            raise ConfigError(f"sparsity for layer '{name}' is {ratio}; use a ratio in [0, 1)")
        if ratio >= 1:
            raise InfeasibleCandidate(f"sparsity {ratio} for layer '{name}' would remove all its channels")
        out[name] = ratio
    return out


# ---------------------------------------------------------------- stages
def _units_of(module: nn.Module, prefix: str, layers: list[str]) -> list[tuple[str, list[str]]]:
    units = []
    for cname, _ in module.named_children():
        full = f"{prefix}.{cname}" if prefix else cname
        members = [n for n in layers if n == full or n.startswith(full + ".")]
        if members:
            units.append((full, members))
    return units


def _units(model: nn.Module, layers: list[str]) -> list[tuple[str, list[str]]]:
    """Blocks holding prunable layers, in order; a block holding most of the layers is opened up."""
    mods = dict(model.named_modules())
    units = _units_of(model, "", layers)
    while len(units) <= 3:
        for i, (name, members) in enumerate(units):
            if len(members) > len(layers) / 2 and len(members) > 1:
                inner = _units_of(mods[name], name, layers)
                if len(inner) >= 2:
                    units = units[:i] + inner + units[i + 1:]
                    break
        else:
            break
    return units


def _downsamples(model: nn.Module, members: list[str]) -> bool:
    mods = dict(model.named_modules())
    for n in members:
        m = mods[n]
        if isinstance(m, nn.Conv2d) and max(m.stride) > 1:
            return True
    return False


def _short(name: str, all_names: list[str]) -> str:
    last = name.rsplit(".", 1)[-1]
    return last if sum(n.rsplit(".", 1)[-1] == last for n in all_names) == 1 and not last.isdigit() else name


def stage_groups(model: nn.Module) -> dict[str, list[str]]:
    """Prunable layers grouped into a few stages, in order.

    ResNet-like models give ``stem, layer1..layer4`` (the names of their blocks); models with one long
    ``features`` sequence (MobileNet, EfficientNet) are split where the resolution drops, merged down to
    at most five stages named ``stem, stage1, stage2...``; anything else is split in order into up to
    four equal groups ``stage1..stage4``.
    """
    layers = prunable_layers(model)
    if not layers:
        return {}
    units = _units(model, layers)
    if 2 <= len(units) <= MAX_STAGES:
        names = [u[0] for u in units]
        out = {}
        for i, (name, members) in enumerate(units):
            key = "stem" if i == 0 and len(members) <= 2 else _short(name, names)
            out[key] = members
        return out
    if len(units) > MAX_STAGES:
        segments: list[list[str]] = [list(units[0][1])]
        stem_separate = len(units[0][1]) <= 2
        current: list[str] = [] if stem_separate else segments.pop()
        for _, members in units[1:]:
            if current and _downsamples(model, members):
                segments.append(current)
                current = []
            current = current + members
        segments.append(current)
        body = segments[1:] if stem_separate else segments
        while len(body) > MAX_STAGES - (1 if stem_separate else 0):
            sizes = [len(a) + len(b) for a, b in zip(body, body[1:])]
            i = sizes.index(min(sizes))
            body[i:i + 2] = [body[i] + body[i + 1]]
        if len(body) >= 2:  # no resolution change: fall through to the even split
            out = {"stem": segments[0]} if stem_separate else {}
            for i, members in enumerate(body, 1):
                out[f"stage{i}"] = members
            return out
    n = min(4, len(layers))
    size = -(-len(layers) // n)
    chunks = [layers[i:i + size] for i in range(0, len(layers), size)]
    return {f"stage{i}": c for i, c in enumerate(chunks, 1)}


def stage_mapping(stage_ratios: Mapping[str, float], groups: Mapping[str, list[str]]) -> dict[str, float]:
    """``{stage: ratio}`` -> ``{layer: ratio}`` for :func:`prune_model` (``_default`` passes through)."""
    out: dict[str, float] = {}
    for stage, ratio in stage_ratios.items():
        if stage == "_default":
            out["_default"] = float(ratio)
            continue
        if stage not in groups:
            raise ConfigError(
                f"unknown stage '{stage}'{did_you_mean(stage, groups)}; stages of this model: {', '.join(groups)}"
            )
        for layer in groups[stage]:
            out[layer] = float(ratio)
    return out


# ---------------------------------------------------------------- pruning
def _count_ops(model: nn.Module, example_input) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def _kept(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels Torch-Pruning keeps for a layer pruned alone at ``ratio`` (same arithmetic)."""
    if ratio <= 0:
        return channels
    keep = int(channels * (1 - ratio))
    if round_to:
        keep -= keep % round_to
    return keep


def prune_model(
    model: nn.Module,
    sparsity: Mapping[str, float],
    example_input: torch.Tensor,
    *,
    criterion: str = "l1",
    round_to: int | None = None,
    exclude: Sequence[str] = (),
    calib: tuple[torch.Tensor, torch.Tensor] | None = None,
    inplace: bool = False,
) -> PruneResult:
    """Remove output channels per ``sparsity`` (pattern -> ratio); returns the pruned model and its cost.

    ``calib`` = (inputs, labels) is needed by gradient criteria ("taylor"). A layer that would keep no
    channel (ratio >= 1, or ``round_to`` rounding its remainder down to 0) raises InfeasibleCandidate:
    Torch-Pruning would otherwise silently leave it unpruned.
    """
    import torch_pruning as tp

    t0 = time.perf_counter()
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to {round_to} must be >= 1")
    importance = make_importance(criterion)
    if criterion in NEEDS_GRADIENTS and calib is None:
        raise ConfigError(f"criterion '{criterion}' needs a calibration batch: pass calib=(inputs, labels)")
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()
    ratios = resolve_ratios(model, sparsity, exclude)
    mods = dict(model.named_modules())
    widths_before = {n: _width(mods[n]) for n in ratios}
    for name, r in ratios.items():
        if r > 0 and _kept(widths_before[name], r, round_to) <= 0:
            how = f" after rounding to a multiple of {round_to}" if round_to else ""
            raise InfeasibleCandidate(
                f"sparsity {r} leaves layer '{name}' with 0 of {widths_before[name]} channels{how}; "
                "lower its ratio" + (" or round_to" if round_to else "")
            )
    macs_before, params_before = _count_ops(model, example_input)
    cls = find_classifier(model)
    ignored = [mods[cls]] + [m for n, m in mods.items() if n and n != cls and isinstance(m, PRUNABLE) and
                             any(match_pattern(p, n) for p in exclude)]
    ratio_dict = {mods[n]: r for n, r in ratios.items() if r > 0}
    fixed: list[str] = []
    if ratio_dict:
        try:
            if criterion in NEEDS_GRADIENTS:
                x, y = calib
                model.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
            try:  # building the pruner traces the graph; nothing is pruned before step()
                pruner = tp.pruner.BasePruner(
                    model,
                    example_input,
                    importance=importance,
                    pruning_ratio=0.0,
                    pruning_ratio_dict=ratio_dict,
                    ignored_layers=ignored,
                    round_to=round_to,
                )
            except Exception:  # noqa: BLE001 - Torch-Pruning cannot trace this graph whole: prune it part by part
                pruner = None
            if pruner is not None:
                pruner.step()
            else:
                fixed = _prune_by_parts(model, example_input, ratio_dict, ignored, importance, round_to)
        except AutocompressError:
            raise
        except Exception as e:
            reason = (str(e).strip().splitlines() or [""])[0]
            raise StageError(
                "prune",
                f"{type(model).__name__} cannot be pruned: Torch-Pruning failed on its channel dependencies "
                f"({type(e).__name__}: {reason}); exclude the blocks involved or use a family student",
            ) from e
        finally:
            model.zero_grad(set_to_none=True)
    for n, m in model.named_modules():
        if isinstance(m, PRUNABLE) and _width(m) <= 0:
            raise InfeasibleCandidate(f"layer '{n}' was left with 0 channels")
    macs_after, params_after = _count_ops(model, example_input)
    mods = dict(model.named_modules())
    measured = {n: 1.0 - _width(mods[n]) / widths_before[n] for n in ratios}
    if was_training:
        model.train()
    return PruneResult(
        model=model,
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        layer_ratios=measured,
        seconds=time.perf_counter() - t0,
        requested_ratios=dict(ratios),
        fixed_layers=tuple(fixed),
    )


def _record_inputs(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input tensor of every module called exactly once with a single tensor in one forward pass."""
    seen: dict[nn.Module, list] = {}

    def hook(mod, args):
        seen.setdefault(mod, []).append(args[0].detach() if len(args) == 1 and torch.is_tensor(args[0]) else None)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {m: v[0] for m, v in seen.items() if len(v) == 1 and v[0] is not None}


def _interface_layers(part: nn.Module, x: torch.Tensor, layers: list[nn.Module]) -> set[nn.Module]:
    """Layers of ``part`` whose output channels cannot shrink without changing the part's input or output
    shape: each is tried by pruning one channel of its group on a copy and running the copy on ``x``."""
    import torch_pruning as tp

    with torch.no_grad():
        want = tuple(part(x).shape)
    tied = set()
    for layer in layers:
        trial = copy.deepcopy(part)
        path = next(n for n, m in part.named_modules() if m is layer)
        target = trial.get_submodule(path)
        try:
            dg = tp.DependencyGraph().build_dependency(trial, example_inputs=x)
            group = dg.get_pruning_group(target, dg.get_pruner_of_module(target).prune_out_channels, idxs=[0])
            group.prune()
            with torch.no_grad():
                ok = tuple(trial(x).shape) == want
        except Exception:  # noqa: BLE001 - the part rejects its own input once this layer shrinks
            ok = False
        if not ok:
            tied.add(layer)
    return tied


def _prune_by_parts(model: nn.Module, example_input: torch.Tensor, ratio_dict: dict[nn.Module, float],
                    ignored: list[nn.Module], importance, round_to: int | None) -> list[str]:
    """Prune each traceable sub-module on its own, keeping its interface widths; returns the layers kept whole."""
    import torch_pruning as tp

    inputs = _record_inputs(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    fixed: list[str] = []

    def visit(part: nn.Module, is_root: bool) -> None:
        inside = [m for m in part.modules() if m in ratio_dict]
        if not inside:
            return
        x = inputs.get(part)
        if not is_root and x is not None and not isinstance(part, PRUNABLE):
            try:
                tp.DependencyGraph().build_dependency(part, example_inputs=x)
                traced = True
            except Exception:  # noqa: BLE001 - try its children instead
                traced = False
            if traced:
                tied = _interface_layers(part, x, inside)
                fixed.extend(names[m] for m in inside if m in tied)
                free = {m: r for m, r in ratio_dict.items() if m in inside and m not in tied}
                if free:
                    skip = [m for m in part.modules() if m in tied or m in ignored or (isinstance(m, PRUNABLE) and m not in free)]
                    tp.pruner.BasePruner(part, x, importance=importance, pruning_ratio=0.0, pruning_ratio_dict=free,
                                         ignored_layers=skip, round_to=round_to).step()
                return
        if isinstance(part, PRUNABLE):
            fixed.append(names[part])
            return
        for child in part.children():
            visit(child, False)

    visit(model, True)
    return fixed
