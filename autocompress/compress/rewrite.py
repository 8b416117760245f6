"""Exact rewrites that let the pruner see through parameter-free channel maps.

A CIFAR-style "option A" ResNet shortcut subsamples its input and zero-pads new channels on (``F.pad`` on the
channel dimension, often inside a ``LambdaLayer``). Torch-Pruning cannot trace channels through such code, so
the widths a residual sum ties to it (every stage's width) could only stay whole. Such a module is a linear map
of the channels at a spatial stride: exactly a 1x1 convolution with fixed 0/1 weights. :func:`linearise_channel_maps`
finds parameter-free modules that change the channel count, builds that convolution by probing the module one
input channel at a time, **verifies** on random inputs that the convolution gives the module's output, and only
then swaps it in (weights frozen). The pruner then prunes the convolution's input and output channels with the
layers around it, so the stage widths shrink consistently. A module that is not such a map (space-to-depth,
pixel shuffle, anything non-linear) fails the check and is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn

ATOL = 1e-5


class ChannelMap(nn.Conv2d):
    """A 1x1 strided convolution standing in for a parameter-free channel map (weights frozen, no bias)."""

    def __init__(self, c_in: int, c_out: int, stride: int, weight: torch.Tensor, replaces: str):
        super().__init__(c_in, c_out, 1, stride=stride, bias=False)
        with torch.no_grad():
            self.weight.copy_(weight)
        self.weight.requires_grad_(False)
        self.replaces = replaces

    def extra_repr(self) -> str:
        return super().extra_repr() + f", replaces={self.replaces}"


def _owns_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters()) or any(True for _ in m.buffers())


def _as_channel_map(mod: nn.Module, x: torch.Tensor) -> ChannelMap | None:
    """The 1x1 convolution equal to ``mod`` on inputs shaped like ``x``, or None when there is none."""
    with torch.no_grad():
        try:
            y = mod(x)
        except Exception:  # noqa: BLE001 - not callable on its own: not ours to rewrite
            return None
        if not (torch.is_tensor(y) and y.dim() == 4 and x.dim() == 4) or y.shape[1] == x.shape[1]:
            return None
        n, c_in, h, w = x.shape
        c_out, ho, wo = y.shape[1:]
        stride = next((s for s in range(1, max(h, w) + 1) if -(-h // s) == ho and -(-w // s) == wo), None)
        if stride is None or y.shape[0] != n:
            return None
        probe = torch.zeros(c_in, c_in, h, w, dtype=x.dtype)
        probe[torch.arange(c_in), torch.arange(c_in)] = 1.0
        try:
            resp = mod(probe)  # (c_in, c_out, ho, wo): output for each input channel set to ones
        except Exception:  # noqa: BLE001
            return None
        if tuple(resp.shape) != (c_in, c_out, ho, wo):
            return None
        weight = resp[:, :, 0, 0].T.reshape(c_out, c_in, 1, 1).contiguous()
        conv = ChannelMap(c_in, c_out, stride, weight, type(mod).__name__)
        gen = torch.Generator().manual_seed(0)
        for trial in (x, torch.randn(x.shape, generator=gen, dtype=x.dtype) * 3.0):
            ref = mod(trial)
            if not torch.allclose(conv(trial), ref, atol=ATOL, rtol=0):
                return None
    return conv


def record_inputs(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input tensor of every module called exactly once with a single tensor in one forward pass (a copy: an
    in-place op later in the pass, e.g. ``ReLU(inplace=True)``, must not change what was recorded)."""
    seen: dict[nn.Module, list] = {}

    def hook(mod, args):
        seen.setdefault(mod, []).append(args[0].detach().clone() if len(args) == 1 and torch.is_tensor(args[0]) else None)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {m: v[0] for m, v in seen.items() if len(v) == 1 and v[0] is not None}


def linearise_channel_maps(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Replace (in place) every parameter-free module that maps channels linearly at a stride by an equal,
    frozen 1x1 convolution; returns the names replaced. The model's output is checked unchanged (if it is not,
    every replacement is undone and nothing is returned: the pruner then keeps the tied widths whole)."""
    inputs = record_inputs(model, example_input)
    with torch.no_grad():
        before = model(example_input)
    replaced: list[str] = []
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    for name, mod in list(model.named_modules()):
        if not name or any(name.startswith(r + ".") for r in replaced) or isinstance(mod, ChannelMap):
            continue
        if mod not in inputs or _owns_parameters(mod):
            continue
        conv = _as_channel_map(mod, inputs[mod])
        if conv is None:
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        originals.append((parent, leaf, mod))
        setattr(parent, leaf, conv)
        replaced.append(name)
    if replaced:
        with torch.no_grad():
            after = model(example_input)
        if after.shape != before.shape or not torch.allclose(after, before, atol=1e-4, rtol=1e-4):
            for parent, leaf, mod in originals:  # each map checked alone, the whole not: keep the model as it was
                setattr(parent, leaf, mod)
            return []
    return replaced
