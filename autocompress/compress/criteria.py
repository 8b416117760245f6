"""Channel-importance criteria for structured pruning: names -> Torch-Pruning importance objects.

Each registry entry is a zero-argument factory returning a fresh ``tp.importance`` object (some keep
state, e.g. Taylor reads gradients), so ``CRITERIA.get(name)()`` is the way to use it. Torch-Pruning is
imported lazily, when a criterion is built, to keep ``import autocompress`` light.

Criteria that read gradients are listed in :data:`NEEDS_GRADIENTS`; ``prune_model`` runs one forward and
backward pass (cross-entropy on the calibration labels) before ranking channels for them.
"""

from __future__ import annotations

from typing import Any, Callable

from ..registry import Registry

CRITERIA: Registry[Callable[[], Any]] = Registry("pruning criterion")
NEEDS_GRADIENTS = frozenset({"taylor"})


@CRITERIA.register("l1")
def _l1():
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=1)


@CRITERIA.register("l2")
def _l2():
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


@CRITERIA.register("taylor")
def _taylor():
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()


@CRITERIA.register("lamp")
def _lamp():
    import torch_pruning as tp

    return tp.importance.LAMPImportance(p=2)


@CRITERIA.register("fpgm")
def _fpgm():
    import torch_pruning as tp

    return tp.importance.FPGMImportance(p=2)


@CRITERIA.register("random")
def _random():
    import torch_pruning as tp

    return tp.importance.RandomImportance()


def make_importance(name: str):
    """The importance object for ``name``; unknown names raise ConfigError with a suggestion."""
    return CRITERIA.get(name)()
