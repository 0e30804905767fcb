"""One-shot baselines: masks computed in one step from a criterion, at the run's budget.

Each method maps a :class:`~searchprune.problem.Problem` to a :class:`MaskSet` that meets
its budget, and is scored by the same fitness as every searched candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from searchprune.core.masks import MaskSet
from searchprune.problem import Problem
from searchprune.pruners.criteria import channel_scores
from searchprune.registry import Registry
from searchprune.space import LayerRatioSpace

Method = Callable[[Problem], MaskSet]
METHODS: Registry[Method] = Registry("method", "method")


def _ratio_space(problem: Problem) -> LayerRatioSpace:
    """The problem's space when it is ``layer-ratios``, else one over the same units."""
    if isinstance(problem.space, LayerRatioSpace):
        return problem.space
    return LayerRatioSpace(problem.cost, problem.budget, problem.weight_scores, max_ratio=1.0)


def _unit_scores(problem: Problem) -> list[torch.Tensor]:
    units = problem.cost.units
    if problem.granularity == "weight":
        return [problem.weight_scores[unit.name].reshape(-1) for unit in units]
    return [channel_scores(problem.weight_scores, unit) for unit in units]


@METHODS.register(
    "magnitude-global", "one global magnitude threshold across layers (Han et al. 2015)"
)
def magnitude_global(problem: Problem) -> MaskSet:
    """Remove the globally smallest weights (or channels, by mean |w|) until the budget is
    met: a single threshold for the whole network (Han et al. 2015)."""
    scores = _unit_scores(problem)
    flat = torch.cat(scores).numpy()
    owner = np.concatenate([np.full(len(s), u) for u, s in enumerate(scores)])
    owner_in_order = owner[np.argsort(flat, kind="stable")]
    space = _ratio_space(problem)

    def removed(count: int) -> np.ndarray:
        return np.bincount(owner_in_order[:count], minlength=len(scores)).astype(np.float64)

    low, high = 0, len(flat)  # removing the `high` smallest elements meets the budget
    while low < high:
        middle = (low + high) // 2
        if space.repairer.met(removed(middle)[None, :])[0]:
            high = middle
        else:
            low = middle + 1
    return space.decode(removed(high) / problem.cost.sizes)


@METHODS.register("magnitude-layer", "the same pruning ratio in every layer, by magnitude")
def magnitude_layer(problem: Problem) -> MaskSet:
    """Prune every layer (or channel group) by the same ratio, smallest magnitudes first:
    layer-wise (uniform) magnitude pruning."""
    space = _ratio_space(problem)
    removed = space.repairer.removed_counts(np.full((1, space.dim), 0.5), exact=True)
    return space.decode(removed[0] / problem.cost.sizes)
