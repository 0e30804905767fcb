"""Lottery tickets by iterative magnitude pruning with rewinding (Frankle & Carbin 2019;
Frankle et al. 2019)."""

from __future__ import annotations

import copy
from itertools import pairwise
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.problem import Problem
from searchprune.pruners.lottery import Lottery, geometric_budget
from searchprune.pruners.training import reinitialize, trained_copy
from searchprune.tasks.train import train_loop
from training_methods import make, states_equal

BUDGET = Budget("sparsity", 0.8)


@pytest.fixture(scope="module")
def weight_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=BUDGET, granularity="weight")


def test_lottery_rewinds_survivors_to_theta_k(weight_problem: Problem) -> None:
    class Recording(Lottery):
        starts: ClassVar[list[tuple[dict[str, Tensor], MaskSet]]] = []

        def retrain(self, problem: Problem, model: nn.Module, masks: MaskSet, epochs: int) -> None:
            self.starts.append((copy.deepcopy(model.state_dict()), masks))
            super().retrain(problem, model, masks, epochs)

    method = Recording(Lottery.Params(epochs=3, rounds=3, rewind_epochs=1), seed=5)
    trained = method.run(weight_problem)
    # θ_k computed independently: the same seeded init, trained for k steps
    p, k = method.params, method.rewind_step(weight_problem)
    theta = train_loop(
        reinitialize(trained_copy(weight_problem), 5),
        weight_problem.train,
        steps=k,
        lr=p.lr,
        batch_size=p.batch_size,
        seed=5,
    ).state_dict()
    assert len(method.starts) == 3
    previous = None
    for state, masks in method.starts:
        for name, value in theta.items():
            layer = name.rsplit(".", 1)[0]
            if name.endswith("weight") and layer in masks.layer_names():
                keep = masks.weight_mask(layer, tuple(value.shape))
                assert torch.equal(state[name], value * keep)
                if previous is not None:  # pruned weights stay pruned
                    assert not torch.any(keep & ~previous.weight_mask(layer, tuple(value.shape)))
            else:
                assert torch.equal(state[name], value)
        previous = masks
    rounds = trained.info["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    sparsities = [r["sparsity"] for r in rounds]
    assert sparsities == sorted(sparsities) and sparsities[-1] >= BUDGET.target - 1e-3
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in rounds)


def test_lottery_reinit_differs_from_rewinding(weight_problem: Problem) -> None:
    rewound = make("lottery", rounds=1).run(weight_problem)
    reinit = make("lottery", rounds=1, reinit=True).run(weight_problem)
    assert rewound.masks == reinit.masks  # same dense run, same first mask
    assert not states_equal(rewound.model, reinit.model)


def test_geometric_budget_prunes_same_share_each_round() -> None:
    kept = [1 - geometric_budget(BUDGET, r / 4).target for r in range(1, 5)]
    assert kept[-1] == pytest.approx(0.2) and geometric_budget(BUDGET, 1.0) == BUDGET
    ratios = [kept[0]] + [b / a for a, b in pairwise(kept)]
    assert ratios == pytest.approx([0.2**0.25] * 4)
    assert geometric_budget(Budget("flops", 0.25), 0.5).target == pytest.approx(0.5)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError):
        Lottery.Params(epochs=2, rewind_epochs=2)
