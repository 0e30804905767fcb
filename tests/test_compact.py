"""compact(): physically smaller models that compute what the masked model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.kernels import compact
from searchprune.problem import Problem
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet, Mnist1dCNN, Mnist1dMLP

MODELS = {
    "digits-mlp": (DigitsMLP, 64),
    "digits-cnn": (DigitsCNN, 64),
    "digits-resnet": (DigitsResNet, 64),
    "mnist1d-mlp": (Mnist1dMLP, 40),
    "mnist1d-cnn": (Mnist1dCNN, 40),
}


def _problem(name: str, seed: int) -> Problem:
    factory, features = MODELS[name]
    torch.manual_seed(seed)
    model = factory()
    for module in model.modules():  # non-trivial BatchNorm statistics and affine
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    inputs = torch.randn(64, features)
    task = Task(
        model=model,
        train=(inputs, torch.zeros(64, dtype=torch.long)),
        val=(inputs, torch.zeros(64, dtype=torch.long)),
    )
    return Problem(task, budget=Budget("flops", 0.5), granularity="channel", bn_samples=0)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_compact_model_equals_the_masked_model(name: str, seed: int) -> None:
    problem = _problem(name, seed)
    genome = problem.space.repair(problem.space.sample(np.random.default_rng(seed), 1))[0]
    masks = problem.space.decode(genome)
    inputs = problem.val.first_batch()[0]
    small = compact(problem.model, masks, problem.layers, problem.graph)
    with problem.masked(masks) as masked, torch.no_grad():
        expected = masked(inputs)
    with torch.no_grad():
        got = small(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    params = sum(p.numel() for p in small.parameters())
    dense = sum(p.numel() for p in problem.model.parameters())
    assert params < dense, "channels must really be gone"
    stats = problem.exact_stats(masks)
    weights = sum(
        m.weight.numel()
        for m in small.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    )
    kept = stats["params"] - sum(
        int(m.bias.numel())
        for m in small.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None
    )
    assert weights == kept, "the compact weights are exactly the weights the stats count as kept"


def test_weight_masks_only_drop_channels_left_with_nothing() -> None:
    problem = Problem(_problem("digits-mlp", 0).task, budget=Budget("sparsity", 0.5))
    masks = problem.space.decode(problem.space.repair(np.full((1, 2), 0.5))[0])
    small = compact(problem.model, masks, problem.layers, problem.graph)
    assert sum(p.numel() for p in small.parameters()) == sum(
        p.numel() for p in problem.model.parameters()
    )
