"""The deep built-in tasks: at least 20 channel groups, shared through residual adds in
the 1-D ResNet and independent in the plain CNN; residual branches may be dropped whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.tasks import BUILTIN_TASKS
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsDeepCNN, Mnist1dResNet


def _problem(model: nn.Module, features: int) -> Problem:
    torch.manual_seed(0)
    inputs = torch.randn(16, features)
    targets = torch.randint(0, 10, (16,))
    task = Task(model.eval(), (inputs, targets), (inputs, targets))
    return Problem(
        task, budget=Budget("flops", 0.5), space="layer-ratios", granularity="channel", bn_samples=0
    )


def test_resnet_groups_share_residual_streams() -> None:
    torch.manual_seed(0)
    problem = _problem(Mnist1dResNet(), 40)
    units = problem.space.units
    assert len(units) == 21  # 3 residual streams + 18 inner convs
    streams = [unit for unit in units if len(unit.layers) > 1]
    assert [unit.size for unit in streams] == [8, 16, 32]
    assert sum(len(unit.layers) for unit in streams) == 1 + 6 + 7 + 7  # stem, conv2s, shortcuts
    assert all(
        name.endswith("conv1") for unit in units if unit not in streams for name in unit.layers
    )


def test_resnet_inner_convs_are_droppable_streams_are_not() -> None:
    """A block's inner conv can go whole (its shortcut carries the signal); a residual
    stream cannot (every path runs through it)."""
    torch.manual_seed(0)
    problem = _problem(Mnist1dResNet(), 40)
    droppable = problem.space.droppable
    for unit, whole in zip(problem.space.units, droppable, strict=True):
        assert whole == (len(unit.layers) == 1), unit.name
    k_max = problem.space.repairer.k_max
    np.testing.assert_array_equal(k_max[droppable], problem.space.cost.sizes[droppable])
    assert (k_max[~droppable] < problem.space.cost.sizes[~droppable]).all()


def test_plain_deep_cnn_has_one_independent_group_per_conv() -> None:
    torch.manual_seed(0)
    model = DigitsDeepCNN()
    problem = _problem(model, 64)
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    assert len(convs) == 21
    assert [unit.layers for unit in problem.space.units] == [(name,) for name in convs]
    assert not problem.space.droppable.any()  # a plain network cannot lose a layer
    assert [unit.size for unit in problem.space.units] == [16] * 7 + [32] * 7 + [64] * 7


@pytest.mark.parametrize(
    ("name", "model", "features"),
    [
        ("mnist1d-resnet", Mnist1dResNet, 40),
        ("digits-deepcnn", DigitsDeepCNN, 64),
    ],
)
def test_deep_tasks_are_registered_and_traceable(
    name: str, model: type[nn.Module], features: int
) -> None:
    spec = BUILTIN_TASKS[name]
    assert spec.model_factory is model
    net = model().eval()
    traced = torch.fx.symbolic_trace(net)
    inputs = torch.randn(3, features)
    assert torch.equal(traced(inputs), net(inputs))
    assert net(inputs).shape == (3, 10)
