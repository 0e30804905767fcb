"""Budget-aware regularization with hard-concrete L0 gates (Lemaire et al. 2019) and
filter-wise group lasso (Wen et al. 2016)."""

from __future__ import annotations

import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners.l0 import (
    BarParams,
    GroupLasso,
    GroupLassoParams,
    L0Bar,
    bar_barrier,
    group_norms,
)
from searchprune.tasks.base import Task
from training_methods import masked_weights_are_zero, state, trained_model


@pytest.fixture(scope="module")
def mlp_weight(digits_mlp_task: Task) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))


@pytest.fixture(scope="module")
def resnet_channel(digits_resnet_task: Task) -> Problem:
    return Problem(
        digits_resnet_task, budget=Budget("flops", 0.5), granularity="channel", bn_samples=0
    )


def test_bar_meets_channel_budget_exactly_and_tracks_it(resnet_channel: Problem) -> None:
    before = state(resnet_channel.model)
    trained = L0Bar(BarParams(epochs=3, gate_lr_scale=300.0), seed=0).run(resnet_channel)
    flops = resnet_channel.exact_stats(trained.masks)["flops_fraction"]
    assert 0.45 < flops <= 0.5 + 1e-9
    assert masked_weights_are_zero(resnet_channel, trained)
    cost, schedule = trained.info["expected_cost"], trained.info["budget_schedule"]
    assert cost[-1] < cost[0] - 0.2
    assert schedule[0] > cost[0] and schedule[-1] == pytest.approx(0.5)
    assert all(torch.equal(before[k], v) for k, v in state(resnet_channel.model).items())
    assert not any("_l0_gates" in name for name, _ in trained_model(trained).named_modules())


def test_bar_is_deterministic(resnet_channel: Problem) -> None:
    first = L0Bar(BarParams(epochs=1), seed=1).run(resnet_channel)
    second = L0Bar(BarParams(epochs=1), seed=1).run(resnet_channel)
    assert all(
        torch.equal(v, state(trained_model(second))[k])
        for k, v in state(trained_model(first)).items()
    )


def test_bar_requires_channel_granularity(mlp_weight: Problem) -> None:
    with pytest.raises(ValueError, match="space.granularity"):
        L0Bar(BarParams(epochs=1), seed=0).run(mlp_weight)


def test_barrier_is_zero_below_a_and_grows_toward_b() -> None:
    volumes = torch.tensor([0.2, 0.35, 0.45, 0.49])
    values = bar_barrier(volumes, a=0.3, b=0.5)
    assert float(values[0]) == 0.0
    assert bool((values[1:] > values[:-1]).all())


def test_group_lasso_shrinks_the_smallest_groups(digits_mlp_task: Task) -> None:
    problem = Problem(digits_mlp_task, budget=Budget("flops", 0.5), granularity="channel")

    def smallest(strength: float) -> float:
        trained = GroupLasso(GroupLassoParams(epochs=3, lr=1e-2, strength=strength), seed=0)
        model = trained.fit(problem)
        norms = group_norms(model.get_submodule("net.0").weight.detach())
        return float(norms.sort().values[:100].mean())

    assert smallest(1e-2) < 0.5 * smallest(0.0)


def test_group_lasso_meets_budget_with_zeroed_groups(mlp_weight: Problem) -> None:
    before = state(mlp_weight.model)
    trained = GroupLasso(GroupLassoParams(epochs=1), seed=0).run(mlp_weight)
    assert mlp_weight.exact_stats(trained.masks)["sparsity"] >= 0.9 - 1e-9
    assert masked_weights_are_zero(mlp_weight, trained)
    again = GroupLasso(GroupLassoParams(epochs=1), seed=0).run(mlp_weight)
    assert all(
        torch.equal(v, state(trained_model(again))[k])
        for k, v in state(trained_model(trained)).items()
    )
    assert all(torch.equal(before[k], v) for k, v in state(mlp_weight.model).items())
