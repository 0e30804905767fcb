"""Sparse variational dropout (Molchanov et al. 2017)."""

from __future__ import annotations

import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners.variational import (
    SparseVD,
    SparseVDParams,
    kl_divergence,
    log_alpha,
    threshold_keep,
)
from searchprune.tasks.base import Task
from training_methods import masked_weights_are_zero, state, trained_model


@pytest.fixture(scope="module")
def mlp_weight(digits_mlp_task: Task) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))


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
    before = state(mlp_weight.model)
    method = SparseVD(SparseVDParams(epochs=3, warmup=0.3), seed=0)
    trained = method.run(mlp_weight)
    assert mlp_weight.exact_stats(trained.masks)["sparsity"] >= 0.9 - 1e-9
    assert masked_weights_are_zero(mlp_weight, trained)
    original = {name: type(m) for name, m in mlp_weight.model.named_modules()}
    assert {name: type(m) for name, m in trained_model(trained).named_modules()} == original
    assert not any(hasattr(m, "parametrizations") for m in trained_model(trained).modules())
    assert set(trained_model(trained).state_dict()) == set(before)
    assert 0.0 < trained.info["threshold_sparsity"] < 1.0
    assert trained.info["threshold_compression"] == pytest.approx(
        1.0 / (1.0 - trained.info["threshold_sparsity"])
    )
    assert all(torch.equal(before[k], v) for k, v in state(mlp_weight.model).items())


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
    assert all(
        torch.equal(v, state(trained_model(second))[k])
        for k, v in state(trained_model(first)).items()
    )
    assert first.masks == second.masks
