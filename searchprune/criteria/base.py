"""Importance criteria: a score per weight, higher meaning more important.

A criterion maps ``(model, layers, task)`` to one non-negative, finite float32 CPU
tensor per layer, of the layer's weight shape. It ranks weights *within* a layer for
the ``layer-ratios`` space and across layers for global one-shot pruning. Channel scores
are derived from weight scores by :func:`channel_scores`.

Criteria sit below the search space: they import only :mod:`searchprune.core`,
:mod:`searchprune.registry` and :mod:`searchprune.tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from searchprune.core.layers import LayerInfo
from searchprune.core.units import Unit
from searchprune.registry import Registry
from searchprune.tasks.base import Task

Scores = dict[str, Tensor]
Criterion = Callable[[nn.Module, list[LayerInfo], Task], Scores]
CRITERIA: Registry[Criterion] = Registry("criterion", "space.criterion")


def layer_scores(layers: Sequence[LayerInfo], values: Sequence[Tensor]) -> Scores:
    """``values`` (one per layer, in order) as plain contiguous float32 CPU tensors keyed
    by layer name: the form every criterion returns."""
    return {
        layer.name: value.detach().float().contiguous().cpu()
        for layer, value in zip(layers, values, strict=True)
    }


def channel_scores(weight_scores: dict[str, Tensor], unit: Unit) -> Tensor:
    """Score of each channel of a unit: the mean score of its weights, summed over the
    layers whose outputs the channel ties together (L1-norm filter ranking, Li et al. 2017,
    normalized by fan-in so layers of different widths compare); a channel spanning
    several rows of a layer (a grouped conv's) takes their mean."""
    total = torch.zeros(unit.size)
    for name in unit.layers:
        scores = weight_scores[name]
        total += unit.per_element(name, scores.reshape(scores.shape[0], -1).mean(dim=1))
    return total
