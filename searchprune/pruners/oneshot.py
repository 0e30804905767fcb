"""One-shot baselines: masks computed in one step from a criterion, at the run's budget.

Every criterion ``c`` of :data:`~searchprune.criteria.base.CRITERIA` gives two methods:
``c-global`` removes the lowest-scored weights (or channels) of the whole network until
the budget is met, one threshold for all layers (Han et al. 2015 for magnitude; Lee et
al. 2019 for SNIP); ``c-layer`` removes the same fraction of every layer (or channel
group). Each is a :class:`OneShot` method that takes no settings and returns masks that
meet the problem's budget, scored by the same fitness as every searched candidate.
"""

from __future__ import annotations

from typing import ClassVar, Literal, cast

import numpy as np
import torch
from torch import Tensor

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.criteria import CRITERIA, channel_scores
from searchprune.problem import Problem
from searchprune.pruners.base import METHODS, Method, MethodResult
from searchprune.space import LayerRatioSpace

Scope = Literal["global", "layer"]


def criterion_scores(problem: Problem, criterion: str) -> dict[str, Tensor]:
    """Weight scores of ``criterion`` on the problem's model (train data only)."""
    if criterion == problem.criterion:
        return problem.weight_scores
    prunable = [layer for layer in problem.layers if layer.prunable]
    return CRITERIA.get(criterion)(problem.model, prunable, problem.task)


def global_masks(problem: Problem, criterion: str) -> MaskSet:
    """Remove the globally lowest-scored weights (or channels, by their mean weight score)
    until the budget is met: one threshold for the whole network."""
    return global_masks_from_scores(problem, criterion_scores(problem, criterion))


def global_masks_from_scores(
    problem: Problem, scores: dict[str, Tensor], budget: Budget | None = None
) -> MaskSet:
    """One threshold on ``scores`` (weight-shaped, per prunable layer) across the network,
    as low as ``budget`` (default: the problem's) allows."""
    units = problem.cost.units
    if problem.granularity == "weight":
        per_unit = [scores[unit.name].reshape(-1) for unit in units]
    else:
        per_unit = [channel_scores(scores, unit) for unit in units]
    flat = torch.cat(per_unit).numpy()
    owner = np.concatenate([np.full(len(s), u) for u, s in enumerate(per_unit)])
    owner_in_order = owner[np.argsort(flat, kind="stable")]
    space = LayerRatioSpace(problem.cost, budget or problem.budget, scores, max_ratio=1.0)

    def removed(count: int) -> np.ndarray:
        return np.bincount(owner_in_order[:count], minlength=len(per_unit)).astype(np.float64)

    low, high = 0, len(flat)  # removing the `high` lowest-scored elements meets the budget
    while low < high:
        middle = (low + high) // 2
        if space.repairer.met(removed(middle)[None, :])[0]:
            high = middle
        else:
            low = middle + 1
    return space.decode(removed(high) / problem.cost.sizes)


def layer_masks(problem: Problem, criterion: str) -> MaskSet:
    """Remove the same fraction of every layer (or channel group), lowest scores first."""
    return layer_masks_from_scores(problem, criterion_scores(problem, criterion))


def layer_masks_from_scores(
    problem: Problem, scores: dict[str, Tensor], budget: Budget | None = None
) -> MaskSet:
    """The same fraction of every unit removed, lowest ``scores`` first, at ``budget``
    (default: the problem's)."""
    space = LayerRatioSpace(problem.cost, budget or problem.budget, scores, max_ratio=1.0)
    removed = space.repairer.removed_counts(np.full((1, space.dim), 0.5))
    return space.decode(removed[0] / problem.cost.sizes)


class OneShot(Method):
    """Masks from :attr:`criterion`'s scores at the budget, in one step: one threshold
    across the network (``scope = "global"``) or the same fraction of every unit
    (``"layer"``). Subclasses, one per criterion and scope, are made by :func:`one_shot`."""

    criterion: ClassVar[str]
    scope: ClassVar[Scope]

    def run(self, problem: Problem) -> MethodResult:
        prune = global_masks if self.scope == "global" else layer_masks
        return MethodResult(prune(problem, self.criterion))


def one_shot(criterion: str, scope: Scope) -> type[OneShot]:
    """The :class:`OneShot` method of ``criterion`` and ``scope``."""
    attributes = {"criterion": criterion, "scope": scope, "__module__": __name__}
    return cast(type[OneShot], type(f"OneShot[{criterion}-{scope}]", (OneShot,), attributes))


def register_one_shot_methods() -> None:
    """Register ``<criterion>-global`` and ``<criterion>-layer`` for every criterion
    (those registered already are left as they are)."""
    for entry in CRITERIA:
        if f"{entry.name}-global" in METHODS:
            continue
        METHODS.add(
            f"{entry.name}-global",
            one_shot(entry.name, "global"),
            f"one global threshold on {entry.name} scores across layers",
        )
        METHODS.add(
            f"{entry.name}-layer",
            one_shot(entry.name, "layer"),
            f"the same fraction of every layer, lowest {entry.name} scores first",
        )
