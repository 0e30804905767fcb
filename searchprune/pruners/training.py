"""Training-time pruning methods: they (re)train the network and return it with masks.

Unlike one-shot criteria, these methods change the weights: each takes a
:class:`~searchprune.problem.Problem` (whose task holds only the train and val splits),
trains a *copy* of its model on the train split through the one training loop
(:func:`~searchprune.tasks.train.train_loop`, whose hooks carry each method's
regularizer, schedule or mask), and returns the trained copy with masks that meet the
problem's budget. A config runs one with ``method: {name: ..., epochs: ...}``; the
report scores the trained, masked model on val and test next to the original dense
model and the one-shot baselines. The methods themselves live one per module of this
package (gradual magnitude, lottery, targeted dropout, sparse VD, L0/BAR and group
lasso).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from searchprune.criteria.weight_only import magnitude
from searchprune.problem import Problem
from searchprune.pruners.base import Method, MethodResult
from searchprune.tasks.base import Split
from searchprune.tasks.train import steps_per_epoch, train_loop


class TrainingParams(BaseModel):
    """Settings every training-time method accepts (Adam on the train split)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(20, ge=1, description="passes over the train split")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, description="train samples per optimizer step")
    weight_decay: float = Field(0.0, ge=0.0, description="Adam weight decay (L2)")


class TrainingMethod(Method):
    """A training-time pruning method; subclasses implement :meth:`run`, training
    through :meth:`train`."""

    Params: ClassVar[type[BaseModel]] = TrainingParams
    trains = True
    params: TrainingParams

    def __init__(self, params: BaseModel, seed: int) -> None:
        super().__init__(params, seed)
        self._epoch_steps: tuple[Split, int] | None = None

    def steps(self, problem: Problem) -> int:
        """Optimizer steps in ``epochs`` passes over the train split (a DataLoader split
        is counted once)."""
        if self._epoch_steps is None or self._epoch_steps[0] is not problem.train:
            per_epoch = steps_per_epoch(problem.train, self.params.batch_size)
            self._epoch_steps = (problem.train, per_epoch)
        return self.params.epochs * self._epoch_steps[1]

    def train(
        self, problem: Problem, model: nn.Module, epochs: int | None = None, **hooks: Any
    ) -> nn.Module:
        """:func:`~searchprune.tasks.train.train_loop` on the problem's train split for
        ``epochs`` (default: the method's) with the method's recipe and seed, and
        ``hooks`` (``penalty``, ``before_update``, ``after_step``, ``after_epoch``)."""
        p = self.params
        return train_loop(
            model,
            problem.train,
            epochs=p.epochs if epochs is None else epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=self.seed,
            weight_decay=p.weight_decay,
            loss=problem.task.loss,
            **hooks,
        )

    @abstractmethod
    def run(self, problem: Problem) -> MethodResult:
        """Train a copy of ``problem.model`` and return it with masks at the budget."""


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
    """The magnitude criterion ``|w|`` on ``model``'s prunable layers (the problem's
    layer names): what magnitude pruning ranks by."""
    prunable = [layer for layer in problem.layers if layer.prunable]
    return magnitude(model, prunable, problem.task)
