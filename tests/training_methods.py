"""Helpers shared by the tests of the training-time methods."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from searchprune.problem import Problem
from searchprune.pruners import MethodResult, make_method
from searchprune.pruners.training import TrainingMethod


def make(name: str, **options: Any) -> TrainingMethod:
    """The training-time method ``name``, 2 epochs unless ``options`` say otherwise, seed 3."""
    method = make_method(name, 3, **{"epochs": 2, **options})
    assert isinstance(method, TrainingMethod)
    return method


def state(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model``'s state."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained_model(result: MethodResult) -> nn.Module:
    """The trained copy a training-time method returned."""
    assert result.model is not None
    return result.model


def masked_weights_are_zero(problem: Problem, result: MethodResult) -> bool:
    """Whether every weight the masks remove is zero in the returned trained copy."""
    modules = dict(trained_model(result).named_modules())
    for layer in problem.layers:
        if layer.prunable:
            weight = modules[layer.name].weight
            mask = result.masks.weight_mask(layer.name, tuple(weight.shape))
            if bool(weight.detach()[~mask].ne(0).any()):
                return False
    return True
