"""Training-time pruning methods: they (re)train the network and return it with masks.

Unlike one-shot criteria, these methods change the weights: each takes a
:class:`~searchprune.problem.Problem` (whose task holds only the train and val splits),
trains a *copy* of its model on the train split, and returns the trained copy with masks
that meet the problem's budget. A config runs one with ``method: {name: ..., epochs: ...}``;
the report scores the trained, masked model on val and test next to the original dense
model and the one-shot baselines.

Built in here: gradual magnitude pruning (Zhu & Gupta 2017). Other modules of this
package register more.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.problem import Problem
from searchprune.pruners.oneshot import global_masks_from_scores, layer_masks_from_scores
from searchprune.registry import Registry
from searchprune.tasks.train import train_loop


class TrainingParams(BaseModel):
    """Settings every training-time method accepts (Adam on the train split)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1, description="passes over the train split")
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)


@dataclass
class TrainedPruning:
    """What a training-time method returns: the trained copy, its masks (meeting the
    budget), and method-specific figures for the report."""

    model: nn.Module
    masks: MaskSet
    info: dict[str, Any] = field(default_factory=dict)


class TrainingMethod(ABC):
    """A training-time pruning method; subclasses implement :meth:`run`."""

    name: ClassVar[str]
    Params: ClassVar[type[TrainingParams]] = TrainingParams

    def __init__(self, params: TrainingParams, seed: int) -> None:
        self.params = params
        self.seed = seed

    def steps(self, problem: Problem) -> int:
        """Optimizer steps in ``epochs`` passes over the train split."""
        samples = len(problem.task.split("train"))
        return self.params.epochs * max(samples // self.params.batch_size, 1)

    def train(self, problem: Problem, model: nn.Module, **hooks: Any) -> nn.Module:
        """:func:`~searchprune.tasks.train.train_loop` on the problem's train split."""
        p = self.params
        return train_loop(
            model,
            problem.train,
            steps=self.steps(problem),
            lr=p.lr,
            batch_size=p.batch_size,
            seed=self.seed,
            weight_decay=p.weight_decay,
            loss=problem.task.loss,
            **hooks,
        )

    @abstractmethod
    def run(self, problem: Problem) -> TrainedPruning:
        """Train a copy of ``problem.model`` and return it with masks at the budget."""


TRAINING_METHODS: Registry[type[TrainingMethod]] = Registry("method", "method.name")


def trained_copy(problem: Problem) -> nn.Module:
    """A deep copy of the problem's (dense) model, to train without touching the task's."""
    problem.applier.restore()
    return copy.deepcopy(problem.model)


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh initial weights for ``model`` in place: every module's
    ``reset_parameters()`` under the global generator seeded with ``seed`` (its state
    is restored afterwards), so the same seed gives the same ``θ_0``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


def magnitude_scores(problem: Problem, model: nn.Module) -> dict[str, Tensor]:
    """``|w|`` of ``model``'s prunable layers (the problem's layer names)."""
    modules = dict(model.named_modules())
    return {
        layer.name: modules[layer.name].weight.detach().abs().float().cpu().contiguous()
        for layer in problem.layers
        if layer.prunable
    }


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


@TRAINING_METHODS.register(
    "gradual-magnitude",
    "magnitude pruning on a cubic schedule while fine-tuning (Zhu & Gupta 2017)",
)
class GradualMagnitude(TrainingMethod):
    """Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): while
    the model is fine-tuned, every ``frequency`` steps between ``start`` and ``end`` the
    smallest weights are removed so that the removed share follows
    ``s_t = s_f (1 - (1 - (t - t_0) / (n Δt))^3)``; masked weights stay zero; after
    ``end`` the model trains on at the final budget."""

    name = "gradual-magnitude"
    Params = GradualParams
    params: GradualParams

    def run(self, problem: Problem) -> TrainedPruning:
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
        return TrainedPruning(
            model, masks, {"steps": total, "prune_from": first, "prune_until": last}
        )


# The other training-time methods register themselves when imported.
from searchprune.pruners import l0, lottery, targeted_dropout, variational  # noqa: E402, F401
