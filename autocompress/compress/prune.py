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
trace is split into its children (and so is one holding more than ``MAX_PART_LAYERS`` layers: each layer's
interface test costs a graph build). For ShuffleNetV2 that prunes the channels inside every branch.

Pruning never hands on an inconsistent network. Torch-Pruning can prune a graph it misreads without raising
(``F.pad`` on the channel dimension in a parameter-free "option A" ResNet shortcut, timm's MixedConv2d
``split_with_sizes``): after its ``step()`` the pruned model runs on the example batch and must give the
unpruned output shape. If it does not (or Torch-Pruning raised), the unpruned model is restored and pruned
part by part, where each layer's interface test keeps the widths a shortcut, split or hard-coded shape
depends on; that result is checked the same way, and if it still breaks the candidate is
:class:`InfeasibleCandidate` naming the module whose call fails (found with forward hooks) and the line.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from ..bounds import deadline
from .channels import kept as _kept
from .rewrite import ChannelMap, linearise_channel_maps
from .rewrite import record_inputs as _record_inputs
from ..errors import AutocompressError, ConfigError, InfeasibleCandidate, LeftWhole, StageError
from ..registry import did_you_mean
from .criteria import NEEDS_GRADIENTS, make_importance
from .export import _first_line

PRUNABLE = (nn.Conv2d, nn.Linear)
MAX_STAGES = 5
MAX_PART_LAYERS = 16  # part-by-part pruning: larger sub-modules are split into their children


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
    # parameter-free channel maps replaced by equal frozen 1x1 convs so their widths prune (compress/rewrite.py)
    rewritten: tuple[str, ...] = ()

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)


# ---------------------------------------------------------------- layers and patterns
def layer_width(m: nn.Module) -> int:
    """Output channels (Conv2d) or features (Linear) of a prunable layer."""
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


def aligned_ratios(ratios: Mapping[str, float], widths: Mapping[str, int], round_to: int) -> dict[str, float]:
    """The ratios that make Torch-Pruning keep ``_kept(width, ratio, round_to)`` channels in each layer: CPU kernels
    run channel counts that are multiples of 8/16 much faster (NCHWc blocks, int8 GEMM panels; measured in
    benchmarks/README.md, bench_default_model --round-to), so a target's profile can ask for them. A layer whose
    rounded count is its whole width is left whole (ratio 0)."""
    out = {}
    for name, r in ratios.items():
        w = widths[name]
        keep = _kept(w, r, round_to)
        out[name] = 0.0 if r <= 0 or keep >= w else 1.0 - (keep + 0.5) / w
    return out


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
    graph_timeout_s: float | None = None,
) -> PruneResult:
    """Remove output channels per ``sparsity`` (pattern -> ratio); returns the pruned model and its cost.

    ``calib`` = (inputs, labels) is needed by gradient criteria ("taylor"). A layer that would keep no
    channel (ratio >= 1) raises InfeasibleCandidate (Torch-Pruning would otherwise silently leave it unpruned);
    ``round_to`` keeps the nearest multiple of it in every layer (``aligned_ratios``). ``graph_timeout_s`` bounds
    Torch-Pruning's whole-graph attempt (its dependency-graph build can run for many minutes, e.g. on timm's ReXNet); past
    it the model is pruned part by part (where an alarm can be set, see :mod:`autocompress.bounds`).
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
    widths_before = {n: layer_width(mods[n]) for n in ratios}
    for name, r in ratios.items():
        if r > 0 and _kept(widths_before[name], r, round_to) <= 0:
            raise InfeasibleCandidate(f"sparsity {r} leaves layer '{name}' with 0 of {widths_before[name]} channels; "
                                      "lower its ratio")
    requested = dict(ratios)
    if round_to:
        ratios = aligned_ratios(ratios, widths_before, round_to)
        if any(r > 0 for r in requested.values()) and not any(r > 0 for r in ratios.values()):
            raise LeftWhole(f"round_to {round_to} keeps every layer whole at sparsity "
                                      f"{max(requested.values()):g} (no layer is wide enough to lose a multiple of "
                                      f"{round_to} channels); raise the sparsity or lower the profile's round_to")
        round_to = None  # the counts are already multiples: Torch-Pruning's own rounding (down) is not wanted
    macs_before, params_before = _count_ops(model, example_input)
    with torch.no_grad():
        want = tuple(model(example_input).shape)
    fixed: list[str] = []
    problem = None  # why Torch-Pruning's whole-graph result was not used
    rewritten: list[str] = []
    if any(r > 0 for r in ratios.values()):
        try:
            # parameter-free channel maps (option-A zero-pad shortcuts) -> equal frozen 1x1 convs, verified
            rewritten = linearise_channel_maps(model, example_input)
            if criterion in NEEDS_GRADIENTS:
                _gradients(model, calib)
            original = copy.deepcopy(model)  # Torch-Pruning prunes in place: kept to restore for the fallback
            numel_before = sum(p.numel() for p in model.parameters())
            try:  # building the pruner traces the graph; nothing is pruned before step()
                with deadline(graph_timeout_s):
                    pruner = tp.pruner.BasePruner(model, example_input, importance=importance, pruning_ratio=0.0,
                                                  **_pruner_sets(model, ratios, exclude), round_to=round_to)
                    pruner.step()
                    del pruner
                problem = _inconsistency(model, example_input, want)
                if problem is None and sum(p.numel() for p in model.parameters()) >= numel_before:
                    problem = "Torch-Pruning left every requested layer whole"
            except Exception as e:  # noqa: BLE001 - Torch-Pruning cannot trace or prune this graph whole
                problem = _first_line(e)
            if problem is not None:  # restore the unpruned model and prune it part by part
                model = original
                if criterion in NEEDS_GRADIENTS:
                    _gradients(model, calib)
                sets = _pruner_sets(model, ratios, exclude)
                fixed = _prune_by_parts(model, example_input, sets["pruning_ratio_dict"], sets["ignored_layers"],
                                        importance, round_to)
                if _inconsistency(model, example_input, want) is not None:
                    raise InfeasibleCandidate(
                        f"pruning cannot keep {type(model).__name__} consistent: {_blocker(model, example_input, want)}"
                        "; exclude it (sparsity.exclude) or the layers feeding it"
                    )
        except AutocompressError:
            raise
        except Exception as e:
            raise StageError(
                "prune",
                f"{type(model).__name__} cannot be pruned: Torch-Pruning failed on its channel dependencies "
                f"({_first_line(e)}); exclude the blocks involved or use a family student",
            ) from e
        finally:
            model.zero_grad(set_to_none=True)
            for m in model.modules():  # Torch-Pruning hands pruned weights back as fresh (trainable) Parameters
                if isinstance(m, ChannelMap):
                    m.weight.requires_grad_(False)
    for n, m in model.named_modules():
        if isinstance(m, PRUNABLE) and layer_width(m) <= 0:
            raise InfeasibleCandidate(f"layer '{n}' was left with 0 channels")
    macs_after, params_after = _count_ops(model, example_input)
    if problem is not None and params_after >= params_before:
        tied = f" (e.g. '{fixed[0]}')" if fixed else ""
        raise InfeasibleCandidate(
            f"no channel of {type(model).__name__} can be pruned consistently: Torch-Pruning could not ({problem}) and "
            f"part by part every requested layer's width is tied to a shortcut, split or fixed shape{tied}; "
            "prune other layers or use a family student"
        )
    mods = dict(model.named_modules())
    measured = {n: 1.0 - layer_width(mods[n]) / widths_before[n] for n in requested}
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
        requested_ratios=requested,
        fixed_layers=tuple(fixed),
        rewritten=tuple(rewritten),
    )


def _interface_layers(part: nn.Module, x: torch.Tensor, layers: list[nn.Module]) -> set[nn.Module]:
    """Layers of ``part`` whose output channels cannot shrink without changing the part's input or output
    shape: each is tried by pruning one channel of its group on a copy and running the copy on ``x``.
    Layers of one group (e.g. the convs feeding one residual sum) share one try."""
    import torch_pruning as tp

    with torch.no_grad():
        want = tuple(part(x).shape)
    try:
        dg = tp.DependencyGraph().build_dependency(part, example_inputs=x)
    except Exception:  # noqa: BLE001 - then every layer is tried on its own
        dg = None
    verdicts: dict[frozenset, bool] = {}
    tied = set()
    for layer in layers:
        key = None
        if dg is not None:
            try:
                group = dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs=[0])
                key = frozenset((id(dep.target.module), getattr(dep.handler, "__name__", "")) for dep, _ in group)
            except Exception:  # noqa: BLE001
                key = None
        if key is not None and key in verdicts:
            ok = verdicts[key]
        else:
            ok = _shrinks_alone(part, layer, x, want)
            if key is not None:
                verdicts[key] = ok
        if not ok:
            tied.add(layer)
    return tied


def _shrinks_alone(part: nn.Module, layer: nn.Module, x: torch.Tensor, want: tuple[int, ...]) -> bool:
    """Whether pruning one output channel of ``layer``'s group (on a copy of ``part``) keeps the part's shape."""
    import torch_pruning as tp

    trial = copy.deepcopy(part)
    path = next(n for n, m in part.named_modules() if m is layer)
    target = trial.get_submodule(path)
    try:
        dg = tp.DependencyGraph().build_dependency(trial, example_inputs=x)
        group = dg.get_pruning_group(target, dg.get_pruner_of_module(target).prune_out_channels, idxs=[0])
        group.prune()
        with torch.no_grad():
            return tuple(trial(x).shape) == want
    except Exception:  # noqa: BLE001 - the part rejects its own input once this layer shrinks
        return False


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
        # a part is traced and pruned whole when it is small enough: testing its interface costs one graph
        # build per layer; a bigger one (a whole backbone) is opened up into its children
        small = len(inside) <= MAX_PART_LAYERS or not any(True for c in part.children() if any(m in ratio_dict for m in c.modules()))
        if not is_root and small and x is not None and not isinstance(part, PRUNABLE):
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


# ---------------------------------------------------------------- consistency
def _pruner_sets(model: nn.Module, ratios: Mapping[str, float], exclude: Sequence[str]) -> dict:
    """Torch-Pruning's ``pruning_ratio_dict`` and ``ignored_layers`` for ``model`` (by module object)."""
    mods = dict(model.named_modules())
    cls = find_classifier(model)
    ignored = [mods[cls]] + [m for n, m in mods.items() if n and n != cls and isinstance(m, PRUNABLE) and
                             any(match_pattern(p, n) for p in exclude)]
    return {"pruning_ratio_dict": {mods[n]: r for n, r in ratios.items() if r > 0}, "ignored_layers": ignored}


def _gradients(model: nn.Module, calib: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = calib
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


def _inconsistency(model: nn.Module, x: torch.Tensor, want: tuple[int, ...]) -> str | None:
    """None when the pruned ``model`` runs on ``x`` and gives the unpruned output shape, else what is wrong."""
    try:
        with torch.no_grad():
            got = tuple(model(x).shape)
    except Exception as e:  # noqa: BLE001 - an inconsistent network is reported, not raised
        return _first_line(e)
    return None if got == want else f"output shape {got} instead of {want}"


def _source_line(e: BaseException) -> str:
    """``file.py:line: code`` of the innermost frame outside torch (the model's own code), or ''."""
    import traceback

    for fr in reversed(traceback.extract_tb(e.__traceback__)):
        parts = fr.filename.replace("\\", "/").split("/")
        if "torch" in parts or "torch_pruning" in parts or fr.filename == __file__:
            continue
        return f" at {parts[-1]}:{fr.lineno} `{(fr.line or '').strip()}`"
    return ""


def _blocker(model: nn.Module, x: torch.Tensor, want: tuple[int, ...]) -> str:
    """The module (and operation) where the pruned ``model`` breaks: the innermost module whose call raises,
    found with forward hooks; or the output shape when it runs but gives another."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    handles = []
    def enter(mod, args) -> None:
        stack.append(mod)

    def leave(mod, args, out) -> None:  # returns None: the output is left as it is
        stack.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    try:
        with torch.no_grad():
            got = tuple(model(x).shape)
    except Exception as e:  # noqa: BLE001 - this is what is reported
        mod = stack[-1] if stack else model
        return f"{names.get(mod) or '<model>'} ({type(mod).__name__}) fails{_source_line(e)}: {_first_line(e)}"
    finally:
        for h in handles:
            h.remove()
    return f"its output has shape {got} instead of {want}"
