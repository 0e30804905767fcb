"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune: exploring
the efficacy of pruning for model compression")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.problem import Problem
from searchprune.pruners.base import METHODS, MethodResult
from searchprune.pruners.oneshot import global_masks_from_scores, layer_masks_from_scores
from searchprune.pruners.training import (
    TrainingMethod,
    TrainingParams,
    magnitude_scores,
    trained_copy,
)


def scaled_budget(budget: Budget, progress: float) -> Budget | None:
    """The budget a gradual schedule has reached at ``progress`` in [0, 1] (``None``
    while nothing is to be removed yet). Zhu & Gupta's cubic ramp: the removed share
    grows as ``1 - (1 - progress)^3``."""
    share = 1.0 - (1.0 - min(max(progress, 0.0), 1.0)) ** 3
    removed = (budget.target if budget.removes else 1.0 - budget.target) * share
    if removed <= 1e-6:
        return None
    return Budget(budget.kind, removed if budget.removes else 1.0 - removed)


class GradualParams(TrainingParams):
    start: float = Field(0.0, ge=0.0, lt=1.0, description="share of training before pruning starts")
    end: float = Field(
        0.75, gt=0.0, le=1.0, description="share of training when the budget is reached"
    )
    frequency: int = Field(10, ge=1, description="optimizer steps between pruning steps")
    scope: Literal["global", "layer"] = Field("global", description="one threshold, or per layer")


@METHODS.register(
    "gradual-magnitude",
    "magnitude pruning on a cubic schedule while fine-tuning (Zhu & Gupta 2017)",
)
class GradualMagnitude(TrainingMethod):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): while
    the model is fine-tuned, every ``frequency`` steps between ``start`` and ``end`` the
    smallest weights are removed so that the removed share follows
    ``s_t = s_f (1 - (1 - (t - t_0) / (n Δt))^3)``; masked weights stay zero; after
    ``end`` the model trains on at the final budget."""

    Params = GradualParams
    params: GradualParams

    def run(self, problem: Problem) -> MethodResult:
        p, model = self.params, trained_copy(problem)
        total = self.steps(problem)
        first, last = int(p.start * total), max(int(p.end * total), int(p.start * total) + 1)
        state: dict[str, MaskSet | None] = {"masks": None}
        prune = global_masks_from_scores if p.scope == "global" else layer_masks_from_scores

        def after_step(step: int) -> None:
            if (first <= step <= last and (step - first) % p.frequency == 0) or step == last:
                budget = scaled_budget(problem.budget, (step - first) / (last - first))
                if budget is not None:
                    state["masks"] = prune(problem, magnitude_scores(problem, model), budget)
            if state["masks"] is not None:
                apply_masks(model, state["masks"])

        self.train(problem, model, after_step=after_step)
        masks = prune(problem, magnitude_scores(problem, model), problem.budget)
        apply_masks(model, masks)
        return MethodResult(
            masks, model, {"steps": total, "prune_from": first, "prune_until": last}
        )
