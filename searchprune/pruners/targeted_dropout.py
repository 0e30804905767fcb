"""Targeted dropout (Gomez et al. 2019) and standard weight dropout, as training methods.

Gomez, Zhang, Kamalakara, Madaan, Swersky, Gal & Hinton (2019), "Learning Sparse
Networks Using Targeted Dropout": before post-hoc magnitude pruning, train with dropout
applied only to the weights (or units) that pruning will likely remove, so the network
learns not to depend on them. With targeting proportion ``γ`` and drop rate ``α``, the
targeted set of a weight matrix ``W`` is, per output unit (a row of a PyTorch weight, a
conv filter), its ``⌊γ n_in⌋`` lowest-``|w|`` weights (weight dropout), or the
``⌊γ n_out⌋`` units of lowest ``‖w_o‖_2`` (unit dropout, whole incoming-weight rows).
Each training forward pass drops every targeted element independently with probability
``α`` (``W ← (1 - M) ⊙ W``, ``M = targeted ∧ (u < α)``, ``u ~ U(0, 1)``), so on average
``(1 - γα)|θ|`` weights stay; nothing is dropped in evaluation. *Ramping* targeted
dropout anneals ``γ`` linearly from 0 to its value over training.

Standard weight dropout (DropConnect, Wan et al. 2013) is the untargeted case, ``γ = 1``,
here with inverted-dropout rescaling of the kept weights by ``1 / (1 - α)`` so that
evaluation with all weights matches training in expectation. ``targeted-dropout`` with
``targeting: 1.0`` is the same drop pattern without rescaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from searchprune.core.masks import apply_masks
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

DropKind = Literal["weight", "unit"]


def targeted_set(weight: Tensor, kind: DropKind, targeting: float) -> Tensor:
    """The targeted elements of ``weight`` (boolean): per output unit its
    ``⌊γ n_in⌋`` lowest-``|w|`` weights (``weight``), or the ``⌊γ n_out⌋`` units of
    lowest L2 norm as an ``(n_out, 1, ...)`` mask (``unit``)."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if kind == "unit":
        scores, shape = rows.norm(dim=1, keepdim=True).T, (-1, *[1] * (weight.dim() - 1))
    else:
        scores, shape = rows.abs(), tuple(weight.shape)
    count = math.floor(targeting * scores.shape[1] + 1e-9)
    lowest = scores.argsort(dim=1, stable=True)[:, :count]
    targeted = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, True)
    return targeted.reshape(shape)


class TargetedDrop(nn.Module):
    """A parametrization of a layer's weight that applies (targeted) dropout in training
    mode and is the identity in eval mode. ``targeting`` may change during training."""

    def __init__(
        self,
        kind: DropKind,
        targeting: float,
        drop_rate: float,
        generator: torch.Generator,
        rescale: bool = False,
    ) -> None:
        super().__init__()
        self.kind, self.targeting, self.drop_rate = kind, targeting, drop_rate
        self.generator, self.rescale = generator, rescale

    def forward(self, weight: Tensor) -> Tensor:
        if not self.training or self.drop_rate == 0.0 or self.targeting == 0.0:
            return weight
        targeted = targeted_set(weight, self.kind, self.targeting)
        draws = torch.rand(targeted.shape, generator=self.generator).to(weight.device)
        keep = ~(targeted & (draws < self.drop_rate))
        scale = 1.0 / (1.0 - self.drop_rate) if self.rescale else 1.0
        return weight * (keep * scale)


@contextmanager
def dropout_on(model: nn.Module, layers: list[str], drop: TargetedDrop) -> Iterator[None]:
    """``drop`` parametrizes the weights of ``layers`` of ``model`` while inside; on exit
    the parametrizations are removed and the plain trained weights stay."""
    modules = dict(model.named_modules())
    for name in layers:
        # unsafe: skip the registration's consistency call, which would draw a mask
        parametrize.register_parametrization(modules[name], "weight", drop, unsafe=True)
    try:
        yield
    finally:
        for name in layers:
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)


class WeightDropoutParams(TrainingParams):
    kind: DropKind = Field("weight", description="drop single weights, or whole units")
    drop_rate: float = Field(0.5, ge=0.0, lt=1.0, description="alpha: drop probability")
    from_scratch: bool = Field(
        False, description="re-initialize and train from scratch instead of fine-tuning"
    )


class TargetedDropoutParams(WeightDropoutParams):
    targeting: float = Field(
        0.5, ge=0.0, le=1.0, description="gamma: share of lowest-magnitude weights/units targeted"
    )
    ramp: bool = Field(False, description="ramp gamma linearly from 0 over training")


@METHODS.register(
    "weight-dropout",
    "standard (untargeted) weight/unit dropout while training, then magnitude pruning",
)
class WeightDropout(TrainingMethod):
    """Standard dropout on the prunable layers' weights (DropConnect) or units, with
    inverted rescaling ``W ← M ⊙ W / (1 - α)``, ``M_ij ~ Bernoulli(1 - α)``; then the
    globally lowest-``|w|`` weights are removed at the budget. The baseline that
    targeted dropout is compared with."""

    Params = WeightDropoutParams
    params: WeightDropoutParams
    rescale: ClassVar[bool] = True

    def targeting(self, progress: float) -> float:
        """``γ`` at ``progress`` in [0, 1] of training: every weight is a candidate."""
        return 1.0

    def run(self, problem: Problem) -> MethodResult:
        model = trained_copy(problem)
        if self.params.from_scratch:
            reinitialize(model, self.seed)
        self.fit(problem, model)
        masks = global_masks_from_scores(problem, magnitude_scores(problem, model))
        apply_masks(model, masks)
        return MethodResult(masks, model, {"steps": self.steps(problem)})

    def fit(self, problem: Problem, model: nn.Module) -> nn.Module:
        """Train ``model`` in place with dropout on the problem's prunable layers (drawn
        from a generator seeded with the method's seed); return it without the hooks."""
        p, total = self.params, self.steps(problem)
        generator = torch.Generator().manual_seed(self.seed)
        drop = TargetedDrop(p.kind, self.targeting(0.0), p.drop_rate, generator, self.rescale)

        def advance(step: int) -> None:
            drop.targeting = self.targeting((step + 1) / total)

        layers = [layer.name for layer in problem.layers if layer.prunable]
        with dropout_on(model, layers, drop):
            self.train(problem, model, after_step=advance)
        return model


@METHODS.register(
    "targeted-dropout",
    "dropout on the lowest-magnitude weights/units, then magnitude pruning (Gomez et al. 2019)",
)
class TargetedDropout(WeightDropout):
    """Targeted dropout (Gomez et al. 2019): drop each of the ``γ`` share of
    lowest-magnitude weights per unit (or lowest-norm units) with probability ``α`` in
    every training forward pass, no rescaling; ``ramp`` grows ``γ`` linearly from 0.
    Then the globally lowest-``|w|`` weights (channels, at channel granularity) are
    removed at the budget."""

    Params = TargetedDropoutParams
    params: TargetedDropoutParams
    rescale = False

    def targeting(self, progress: float) -> float:
        """``γ`` at ``progress`` in [0, 1] of training (``γ · progress`` when ramping)."""
        gamma = self.params.targeting
        return gamma * min(progress, 1.0) if self.params.ramp else gamma
