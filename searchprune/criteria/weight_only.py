"""Criteria that read only the weights (``random`` reads nothing): no data, no gradient.

Registered into :data:`~searchprune.criteria.base.CRITERIA` when
:mod:`searchprune.criteria` is imported.
"""

from __future__ import annotations

import torch
from torch import nn

from searchprune.core.layers import LayerInfo
from searchprune.criteria.base import CRITERIA, Scores, layer_scores
from searchprune.tasks.base import Task

RANDOM_SEED = 0
"""Seed of the random criterion: the same scores on every call."""


def _weights(model: nn.Module, layers: list[LayerInfo]) -> list[torch.Tensor]:
    """The weight tensor of each of ``layers`` in ``model`` (detached)."""
    return [layer.weight(model).detach() for layer in layers]


@CRITERIA.register("magnitude", "|w|: remove the smallest weights first (Han et al. 2015)")
def magnitude(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Weight magnitude ``|w|`` (Han et al. 2015, "Learning both Weights and Connections
    for Efficient Neural Networks"). ``task`` is not read."""
    return layer_scores(layers, [weight.abs() for weight in _weights(model, layers)])


@CRITERIA.register("l1-filter", "L1 norm of each weight's filter (Li et al. 2017)")
def l1_filter(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Filter L1 norm (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): every
    weight of output channel ``j`` (a conv filter, or a Linear layer's row) scores
    ``s_j = Σ |F_j|``, the sum of the filter's absolute weights. Channel granularity
    (:func:`~searchprune.criteria.base.channel_scores`, a per-channel mean) then ranks
    filters by L1 norm, and weight granularity removes whole filters together.
    """
    values = []
    for weight in _weights(model, layers):
        norms = weight.abs().reshape(weight.shape[0], -1).sum(dim=1)
        values.append(norms.view(-1, *[1] * (weight.dim() - 1)).expand(weight.shape))
    return layer_scores(layers, values)


@CRITERIA.register("random", "uniform random scores, seeded: a sanity baseline")
def random_scores(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """Uniform random scores ``U[0, 1)``, from a generator seeded with
    :data:`RANDOM_SEED`: the same scores on every call, independent of the weights and of
    any data.

    Random pruning is the sanity baseline every criterion must beat (e.g. Frankle et
    al. 2021, "Pruning Neural Networks at Initialization: Why Are We Missing the Mark?").
    """
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    return {layer.name: torch.rand(layer.weight_shape, generator=generator) for layer in layers}
