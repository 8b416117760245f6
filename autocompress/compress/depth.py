"""Depth: whole blocks of the teacher replaced by the identity (the student inherits every other weight).

Why: channel counts have a floor (one multiple of the profile's ``round_to`` per layer), so past ~90% sparsity a
network gets no faster; a residual block whose output has its input's shape can go entirely. Measured on
untrained graphs, int8, ``cpu-1thread``, 90% sparsity at ``round_to: 16``: resnet18_x0_5 15.3x with all 8 blocks,
47.3x with its 5 droppable blocks gone; the custom CNN 8.3x -> 16.3x (benchmarks/README.md, "Depth").

A *droppable block* is a child of an ``nn.Sequential`` / ``nn.ModuleList`` that holds a Conv/Linear layer and
sub-modules of its own (a block, not a bare layer), is called once per forward pass with one tensor, returns a
tensor of that tensor's shape, passes its input through (a residual block or a gate: with its weights zeroed its
output still follows its input; a plain conv-BN-ReLU does not, and dropping it would cut the network) and leaves
the model's output shape unchanged when it is replaced by ``nn.Identity`` (checked by running it). The outermost such block counts (a ResNet ``BasicBlock``, not the conv
inside it). Which ones to drop first is the sensitivity analysis's call (accuracy with the block gone alone,
autocompress/sensitivity.py); without it, the last blocks first.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .channels import inside
from .rewrite import record_inputs
from ..registry import did_you_mean

LAYERS = (nn.Conv2d, nn.Linear)


def _keeps_shape(block: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        y = block(x)
    return torch.is_tensor(y) and y.shape == x.shape


def _residual(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``block`` passes its input through: with every parameter and buffer zeroed its learnt branch gives
    nothing, so a residual block (``act(x + f(x))``) or a gate (squeeze-excitation) still returns a tensor that
    follows its input, where a plain conv layer returns a constant. Such a block may go: the rest of the network
    already sees its input in its output."""
    import copy

    ghost = copy.deepcopy(block).eval()
    with torch.no_grad():
        for t in list(ghost.parameters()) + [b for b in ghost.buffers() if b.is_floating_point()]:
            t.zero_()
        for m in ghost.modules():  # BatchNorm with zero variance divides by sqrt(eps): keep it a zero branch
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_var.fill_(1.0)
        y = ghost(x)
    a, b = y.flatten().double(), x.flatten().double()
    return bool(torch.nn.functional.cosine_similarity(a - a.mean(), b - b.mean(), dim=0) > 0.5)


def droppable_blocks(model: nn.Module, example: torch.Tensor, exclude: Sequence[str] = ()) -> list[str]:
    """The model's droppable blocks (see the module docstring) in definition order; ``exclude``: patterns
    (``sparsity.exclude``'s syntax) of blocks or layers never dropped (a block holding one is kept)."""
    from .prune import match_pattern

    was_training = model.training
    model.eval()
    try:
        # a seeded random input: every block sees varied activations (a constant input hides a residual); only
        # modules called once with one tensor are recorded (a shared block cannot be replaced for one of its calls)
        gen = torch.Generator().manual_seed(0)
        inputs = record_inputs(model, torch.randn(example.shape, generator=gen, dtype=example.dtype))
        with torch.no_grad():
            want = tuple(model(example).shape)
        found: list[str] = []
        for name, mod in model.named_modules():
            if not isinstance(mod, (nn.Sequential, nn.ModuleList)):
                continue
            for child, block in mod.named_children():
                full = f"{name}.{child}" if name else child
                if inside(full, found) or not list(block.children()):
                    continue
                layers = [n for n, m in block.named_modules(prefix=full) if isinstance(m, LAYERS)]
                x = inputs.get(block)
                if (not layers or x is None or any(match_pattern(p, n) for p in exclude for n in [full, *layers])
                        or not _keeps_shape(block, x) or not _residual(block, x)):
                    continue
                model.set_submodule(full, nn.Identity())
                try:
                    with torch.no_grad():
                        ok = tuple(model(example).shape) == want
                except Exception:  # noqa: BLE001 - the model uses the block in a way the identity cannot stand in for
                    ok = False
                finally:
                    model.set_submodule(full, block)
                if ok:
                    found.append(full)
        return found
    finally:
        model.train(was_training)


def check_blocks(model: nn.Module, example: torch.Tensor, blocks: Sequence[str], exclude: Sequence[str] = ()) -> None:
    """Refuse, in one line, a listed block (``depth.blocks``) that is not a droppable block of ``model``."""
    ok = droppable_blocks(model, example, exclude)
    for b in blocks:
        if b not in ok:
            names = dict(model.named_modules())
            why = ("which the model does not have" + did_you_mean(b, list(names))) if b not in names else \
                "which cannot be replaced by the identity (it changes its input's shape, is called more than once, or holds no layer)"
            raise ConfigError(f"depth.blocks names '{b}', {why}; droppable blocks of {type(model).__name__}: "
                              f"{', '.join(ok) or 'none'}")


def drop_blocks(model: nn.Module, blocks: Sequence[str]) -> nn.Module:
    """Replace each of ``blocks`` by ``nn.Identity`` in place; returns the model."""
    names = dict(model.named_modules())
    for b in blocks:
        if b not in names:
            raise ConfigError(f"cannot drop block '{b}': {type(model).__name__} has no such module{did_you_mean(b, list(names))}")
        model.set_submodule(b, nn.Identity())
    return model
