"""Importance criteria: a score per weight, higher meaning more important.

A criterion ranks weights *within* a layer for the ``layer-ratios`` space and ranks
them across layers for global one-shot pruning. Channel scores are derived from weight
scores by :func:`channel_scores`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from searchprune.core.layers import LayerInfo
from searchprune.core.units import Unit
from searchprune.registry import Registry
from searchprune.tasks.base import Task

Criterion = Callable[[nn.Module, list[LayerInfo], Task], dict[str, Tensor]]
CRITERIA: Registry[Criterion] = Registry("criterion", "space.criterion")


@CRITERIA.register("magnitude", "|w|: remove the smallest weights first (Han et al. 2015)")
def magnitude(model: nn.Module, layers: list[LayerInfo], task: Task) -> dict[str, Tensor]:
    """Weight magnitude ``|w|`` (Han et al. 2015, "Learning both Weights and Connections")."""
    modules = dict(model.named_modules())
    return {layer.name: modules[layer.name].weight.detach().abs().cpu().float() for layer in layers}


def channel_scores(weight_scores: dict[str, Tensor], unit: Unit) -> Tensor:
    """Score of each channel of a unit: the mean score of its weights, summed over the
    layers whose outputs the channel ties together (L1-norm filter ranking, Li et al. 2017,
    normalized by fan-in so layers of different widths compare)."""
    total = torch.zeros(unit.size)
    for name in unit.layers:
        scores = weight_scores[name]
        total += scores.reshape(scores.shape[0], -1).mean(dim=1)
    return total


# The gradient-based and data-free criteria register themselves when imported.
from searchprune.pruners import saliency  # noqa: E402, F401
