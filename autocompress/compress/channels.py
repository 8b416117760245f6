"""Channel counts after pruning and layers gone with a dropped block, torch-free (the search loop uses them to tell
two candidates' networks apart)."""

from __future__ import annotations


def kept(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels a layer pruned alone at ``ratio`` keeps: Torch-Pruning's int(channels * (1 - ratio)), or with
    ``round_to`` the nearest multiple of it (at least one multiple, at most the layer's width)."""
    if ratio <= 0:
        return channels
    keep = int(channels * (1 - ratio))
    if round_to:
        keep = min(channels, round_to * max(1, round(keep / round_to)))
    return keep


def inside(name: str, blocks) -> bool:
    """Whether module ``name`` is one of ``blocks`` or lies inside one (a layer gone with its dropped block)."""
    return any(name == b or name.startswith(b + ".") for b in blocks)
