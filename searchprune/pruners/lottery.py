"""Lottery tickets by iterative magnitude pruning with weight rewinding.

Frankle & Carbin (2019), "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
Neural Networks": randomly initialize ``f(x; θ_0)``, train to ``θ_j``, prune the
lowest-magnitude ``p%`` of the surviving weights (mask ``m``), reset the survivors to
``θ_0`` and retrain ``f(x; m ⊙ θ_0)``; repeat for ``n`` rounds, each pruning
``p^(1/n)`` of what survives. Frankle et al. (2019), "Stabilizing the Lottery Ticket
Hypothesis" (weight rewinding): reset to ``θ_k``, the weights after ``k`` iterations of
the dense run, instead of ``θ_0``; the survivors then retrain for the remaining
``T - k`` iterations. Their control re-initializes the survivors randomly instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.problem import Problem
from searchprune.pruners.base import METHODS, MethodResult
from searchprune.pruners.oneshot import global_masks_from_scores
from searchprune.pruners.training import (
    TrainingMethod,
    TrainingParams,
    magnitude_scores,
    reinitialize,
    trained_copy,
)
from searchprune.tasks.base import score_model

State = dict[str, Tensor]


def geometric_budget(budget: Budget, progress: float) -> Budget:
    """The budget after a ``progress`` share of the rounds when every round removes the
    same fraction of what survives: the kept fraction is ``kept_final ** progress``."""
    if progress >= 1.0:
        return budget
    final_kept = 1.0 - budget.target if budget.removes else budget.target
    kept = final_kept ** max(progress, 0.0)
    return Budget(budget.kind, 1.0 - kept if budget.removes else kept)


def surviving_scores(problem: Problem, model: nn.Module, masks: MaskSet | None) -> State:
    """``|w|`` of the prunable layers with already-pruned weights scored ``-1``, so that
    a larger budget keeps them pruned."""
    scores = magnitude_scores(problem, model)
    if masks is None:
        return scores
    return {
        name: torch.where(masks.weight_mask(name, tuple(s.shape)).to(s.device), s, -1.0)
        for name, s in scores.items()
    }


class LotteryParams(TrainingParams):
    rewind_epochs: int = Field(
        1, ge=0, description="epochs of the dense run to rewind to (0: to the initial weights)"
    )
    rounds: int = Field(5, ge=1, description="prune-rewind-retrain rounds to reach the budget")
    reinit: bool = Field(
        False, description="re-initialize the survivors randomly instead (the control)"
    )

    @model_validator(mode="after")
    def _rewind_within_training(self) -> LotteryParams:
        if self.rewind_epochs >= self.epochs:
            raise ValueError(f"rewind_epochs must be below epochs ({self.epochs})")
        return self


@METHODS.register(
    "lottery",
    "iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; Frankle et al. "
    "2019)",
)
class Lottery(TrainingMethod):
    """Lottery-ticket search by iterative magnitude pruning (IMP) with rewinding.

    The model is re-initialized (seeded) and trained for ``epochs``; its weights after
    ``k = rewind_epochs`` epochs are ``θ_k``. Each of the ``rounds`` rounds then removes
    the lowest-``|w|`` surviving weights globally, at the budget whose kept fraction is
    ``kept_final^(r / rounds)`` (every round prunes the same share of the survivors),
    resets the survivors to ``θ_k`` (``reinit``: to a fresh random draw), and retrains
    ``epochs - k`` epochs with the mask held fixed: ``f(x; m ⊙ θ)``.
    """

    Params = LotteryParams
    params: LotteryParams

    def run(self, problem: Problem) -> MethodResult:
        p, model = self.params, reinitialize(trained_copy(problem), self.seed)
        point = self.dense_run(problem, model)
        history = [{"round": 0, **self.round_info(problem, model, problem.dense())}]
        masks: MaskSet | None = None
        for round_ in range(1, p.rounds + 1):
            budget = geometric_budget(problem.budget, round_ / p.rounds)
            masks = global_masks_from_scores(
                problem, surviving_scores(problem, model, masks), budget
            )
            self.rewind(model, point, masks, round_)
            self.retrain(problem, model, masks, p.epochs - p.rewind_epochs)
            history.append({"round": round_, **self.round_info(problem, model, masks)})
        assert masks is not None
        return MethodResult(
            masks, model, {"rounds": history, "rewind_step": self.rewind_step(problem)}
        )

    def rewind_step(self, problem: Problem) -> int:
        """The optimizer step ``k`` whose weights ``θ_k`` the survivors are reset to."""
        return self.params.rewind_epochs * (self.steps(problem) // self.params.epochs)

    def dense_run(self, problem: Problem, model: nn.Module) -> State:
        """Train ``model`` densely for ``epochs``; return ``θ_k``, its weights after
        ``k = rewind_epochs`` epochs."""
        point = copy.deepcopy(model.state_dict())

        def snapshot(epoch: int) -> None:
            if epoch + 1 == self.params.rewind_epochs:
                point.update(copy.deepcopy(model.state_dict()))

        self.train(problem, model, after_epoch=snapshot)
        return point

    def rewind(self, model: nn.Module, point: State, masks: MaskSet, round_: int) -> None:
        """Reset the survivors of ``masks`` to ``point`` (``reinit``: to a new random
        initialization, seeded per round); pruned weights are zero."""
        if self.params.reinit:
            reinitialize(model, self.seed + round_)
        else:
            model.load_state_dict(point)
        apply_masks(model, masks)

    def retrain(self, problem: Problem, model: nn.Module, masks: MaskSet, epochs: int) -> None:
        """Train ``epochs`` passes over the train split, re-applying ``masks`` after every
        optimizer step (the minibatch order restarts from the method's seed)."""
        self.train(problem, model, epochs, after_step=lambda _: apply_masks(model, masks))

    def round_info(self, problem: Problem, model: nn.Module, masks: MaskSet) -> dict[str, Any]:
        """What the report shows for one round: val accuracy and exact sparsity."""
        val = score_model(model, problem.val, problem.task.loss)
        return {"val_accuracy": val.accuracy, "sparsity": problem.exact_stats(masks)["sparsity"]}
