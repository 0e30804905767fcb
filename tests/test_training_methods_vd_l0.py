"""Sparse variational dropout, BAR (hard-concrete L0 gates) and group lasso."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

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
from searchprune.pruners.training import TRAINING_METHODS, TrainedPruning
from searchprune.pruners.variational import (
    SparseVD,
    SparseVDParams,
    kl_divergence,
    log_alpha,
    threshold_keep,
)
from searchprune.tasks.base import Task


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _masked_weights_are_zero(problem: Problem, trained: TrainedPruning) -> bool:
    modules = dict(trained.model.named_modules())
    for layer in problem.layers:
        if layer.prunable:
            weight = modules[layer.name].weight
            mask = trained.masks.weight_mask(layer.name, tuple(weight.shape))
            if bool(weight.detach()[~mask].ne(0).any()):
                return False
    return True


@pytest.fixture(scope="module")
def mlp_weight(digits_mlp_task: Task) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))


@pytest.fixture(scope="module")
def resnet_channel(digits_resnet_task: Task) -> Problem:
    return Problem(
        digits_resnet_task, budget=Budget("flops", 0.5), granularity="channel", bn_samples=0
    )


def test_methods_are_registered() -> None:
    assert {"sparse-vd", "l0-bar", "group-lasso"} <= set(TRAINING_METHODS.names())


def test_kl_decreases_as_log_alpha_grows() -> None:
    values = kl_divergence(torch.tensor([-8.0, -4.0, -1.0, 0.0, 1.0, 3.0, 6.0]))
    assert bool((values[1:] < values[:-1]).all())
    assert float(values[-1]) < 0.01 < float(values[0])  # KL → 0 as α → ∞


def test_log_alpha_is_clipped_and_threshold_prunes_above_it() -> None:
    weight = torch.tensor([1.0, 0.1, 1e-3, 1e-6])
    alphas = log_alpha(weight, torch.full_like(weight, -4.0))
    assert float(alphas.max()) == 10.0 and float(alphas.min()) >= -10.0
    keep = threshold_keep({"w": alphas}, 3.0)["w"]
    assert keep.tolist() == (alphas <= 3.0).tolist() == [True, True, False, False]


def test_sparse_vd_meets_budget_and_returns_a_plain_model(mlp_weight: Problem) -> None:
    before = _state(mlp_weight.model)
    method = SparseVD(SparseVDParams(epochs=3, warmup=0.3), seed=0)
    trained = method.run(mlp_weight)
    assert mlp_weight.exact_stats(trained.masks)["sparsity"] >= 0.9 - 1e-9
    assert _masked_weights_are_zero(mlp_weight, trained)
    original = {name: type(m) for name, m in mlp_weight.model.named_modules()}
    assert {name: type(m) for name, m in trained.model.named_modules()} == original
    assert not any(hasattr(m, "parametrizations") for m in trained.model.modules())
    assert set(trained.model.state_dict()) == set(before)
    assert 0.0 < trained.info["threshold_sparsity"] < 1.0
    assert trained.info["threshold_compression"] == pytest.approx(
        1.0 / (1.0 - trained.info["threshold_sparsity"])
    )
    assert all(torch.equal(before[k], v) for k, v in _state(mlp_weight.model).items())


def test_sparse_vd_threshold_sparsity_counts_log_alpha_above_three(mlp_weight: Problem) -> None:
    method = SparseVD(SparseVDParams(epochs=2), seed=0)
    _, alphas, _ = method.fit(mlp_weight)
    above = sum(int((a > 3.0).sum()) for a in alphas.values())
    total = sum(a.numel() for a in alphas.values())
    assert method.run(mlp_weight).info["threshold_sparsity"] == pytest.approx(above / total)
    assert above > 0  # the KL term pushed some dropout rates past 0.95


def test_sparse_vd_is_deterministic(mlp_weight: Problem) -> None:
    first = SparseVD(SparseVDParams(epochs=1), seed=3).run(mlp_weight)
    second = SparseVD(SparseVDParams(epochs=1), seed=3).run(mlp_weight)
    assert all(torch.equal(v, _state(second.model)[k]) for k, v in _state(first.model).items())
    assert first.masks == second.masks


def test_bar_meets_channel_budget_exactly_and_tracks_it(resnet_channel: Problem) -> None:
    before = _state(resnet_channel.model)
    trained = L0Bar(BarParams(epochs=3, gate_lr_scale=300.0), seed=0).run(resnet_channel)
    flops = resnet_channel.exact_stats(trained.masks)["flops_fraction"]
    assert 0.45 < flops <= 0.5 + 1e-9
    assert _masked_weights_are_zero(resnet_channel, trained)
    cost, schedule = trained.info["expected_cost"], trained.info["budget_schedule"]
    assert cost[-1] < cost[0] - 0.2
    assert schedule[0] > cost[0] and schedule[-1] == pytest.approx(0.5)
    assert all(torch.equal(before[k], v) for k, v in _state(resnet_channel.model).items())
    assert not any("_l0_gates" in name for name, _ in trained.model.named_modules())


def test_bar_is_deterministic(resnet_channel: Problem) -> None:
    first = L0Bar(BarParams(epochs=1), seed=1).run(resnet_channel)
    second = L0Bar(BarParams(epochs=1), seed=1).run(resnet_channel)
    assert all(torch.equal(v, _state(second.model)[k]) for k, v in _state(first.model).items())


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
    before = _state(mlp_weight.model)
    trained = GroupLasso(GroupLassoParams(epochs=1), seed=0).run(mlp_weight)
    assert mlp_weight.exact_stats(trained.masks)["sparsity"] >= 0.9 - 1e-9
    assert _masked_weights_are_zero(mlp_weight, trained)
    again = GroupLasso(GroupLassoParams(epochs=1), seed=0).run(mlp_weight)
    assert all(torch.equal(v, _state(again.model)[k]) for k, v in _state(trained.model).items())
    assert all(torch.equal(before[k], v) for k, v in _state(mlp_weight.model).items())
