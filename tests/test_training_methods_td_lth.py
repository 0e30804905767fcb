"""Targeted dropout (Gomez et al. 2019) and lottery tickets with rewinding (Frankle et al.)."""

from __future__ import annotations

import copy
from dataclasses import replace
from itertools import pairwise
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn.utils import parametrize

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.problem import Problem

# importing these modules registers "lottery", "targeted-dropout" and "weight-dropout"
from searchprune.pruners.lottery import Lottery, geometric_budget
from searchprune.pruners.targeted_dropout import TargetedDrop, TargetedDropout, targeted_set
from searchprune.pruners.training import (
    TRAINING_METHODS,
    TrainingMethod,
    reinitialize,
    trained_copy,
)
from searchprune.tasks.train import train_loop

BUDGET = Budget("sparsity", 0.8)


@pytest.fixture(scope="module")
def weight_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=BUDGET, granularity="weight")


@pytest.fixture(scope="module")
def channel_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("flops", 0.5), granularity="channel")


def make(name: str, **options: Any) -> TrainingMethod:
    cls = TRAINING_METHODS.get(name)
    return cls(cls.Params.model_validate({"epochs": 2, **options}), seed=3)


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


CASES = [
    ("targeted-dropout", {}, "weight"),
    ("targeted-dropout", {"ramp": True, "from_scratch": True, "epochs": 3}, "weight"),
    ("targeted-dropout", {"kind": "unit", "targeting": 0.75}, "channel"),
    ("weight-dropout", {"drop_rate": 0.3}, "weight"),
    ("lottery", {"rounds": 2}, "weight"),
    ("lottery", {"rounds": 2, "rewind_epochs": 0, "reinit": True, "epochs": 4}, "channel"),
]


@pytest.mark.parametrize(("name", "options", "granularity"), CASES)
def test_budget_met_masked_zero_deterministic_original_untouched(
    name: str,
    options: dict[str, Any],
    granularity: str,
    weight_problem: Problem,
    channel_problem: Problem,
) -> None:
    problem = weight_problem if granularity == "weight" else channel_problem
    original = copy.deepcopy(problem.model)
    trained = make(name, **options).run(problem)
    stats = problem.exact_stats(trained.masks)
    assert problem.budget.met_by(stats[problem.budget.stat])
    assert stats["sparsity"] > 0.3
    modules = dict(trained.model.named_modules())
    for layer in problem.layers:
        if layer.prunable:
            weight = modules[layer.name].weight
            mask = trained.masks.weight_mask(layer.name, tuple(weight.shape))
            assert torch.all(weight[~mask] == 0)
            assert torch.count_nonzero(weight[mask]) > 0.9 * mask.sum()
    # the trained, masked model still classifies (scored on its own problem, val split)
    own = Problem(
        replace(problem.task, model=trained.model), budget=problem.budget, granularity=granularity
    )
    assert own.score_masks(trained.masks).metrics["val_accuracy"] > 0.5
    again = make(name, **options).run(problem)
    assert states_equal(trained.model, again.model) and trained.masks == again.masks
    assert states_equal(problem.model, original)


def test_targeted_set_picks_lowest_per_unit() -> None:
    weight = torch.tensor([[0.1, -3.0, 0.2, 4.0], [5.0, 0.3, -0.05, 1.0]])
    expected = torch.tensor([[True, False, True, False], [False, True, True, False]])
    assert torch.equal(targeted_set(weight, "weight", 0.5), expected)
    units = targeted_set(weight, "unit", 0.5)  # row norms ~5.0 and ~5.1: the first is lowest
    assert units.shape == (2, 1) and units[:, 0].tolist() == [True, False]
    conv = torch.randn(6, 3, 2, 2)
    assert targeted_set(conv, "weight", 0.25).reshape(6, -1).sum(dim=1).tolist() == [3] * 6
    assert targeted_set(conv, "unit", 0.5).shape == (6, 1, 1, 1)


def test_drop_only_hits_targeted_at_rate_alpha() -> None:
    weight = torch.randn(50, 40)
    drop = TargetedDrop("weight", 0.5, 0.4, torch.Generator().manual_seed(0))
    targeted, dropped = targeted_set(weight, "weight", 0.5), torch.zeros(50, 40)
    for _ in range(200):
        dropped += drop(weight) == 0
    assert dropped[~targeted].sum() == 0
    assert abs(float(dropped[targeted].mean()) / 200 - 0.4) < 0.02
    assert torch.equal(drop.eval()(weight), weight)


def test_standard_dropout_rescales_every_weight() -> None:
    weight = torch.randn(30, 30)
    out = TargetedDrop("weight", 1.0, 0.5, torch.Generator().manual_seed(0), rescale=True)(weight)
    kept = out != 0
    assert 0.4 < float(kept.float().mean()) < 0.6
    assert torch.allclose(out[kept], 2 * weight[kept])


class Recorder:
    """A forward pre-hook measuring, in each training forward pass, which weights of a
    parametrized layer are dropped (zero but nonzero underneath) and which are targeted."""

    def __init__(self, gamma: float) -> None:
        self.gamma, self.dropped, self.outside = gamma, [], []  # type: tuple[float, list[int], list[int]]

    def __call__(self, module: nn.Module, _: Any) -> None:
        if not (module.training and parametrize.is_parametrized(module, "weight")):
            return
        original = module.parametrizations.weight.original
        dropped = (module.weight == 0) & (original != 0)
        self.dropped.append(int(dropped.sum()))
        self.outside.append(int((dropped & ~targeted_set(original, "weight", self.gamma)).sum()))


@pytest.mark.parametrize("ramp", [False, True])
def test_training_drops_only_targeted_and_removes_hooks(
    weight_problem: Problem, ramp: bool
) -> None:
    method = make("targeted-dropout", targeting=0.5, drop_rate=0.5, ramp=ramp)
    assert isinstance(method, TargetedDropout)
    model = trained_copy(weight_problem)
    first = model.net[0]
    recorder = Recorder(0.5)
    first.register_forward_pre_hook(recorder)
    method.fit(weight_problem, model)
    steps = method.steps(weight_problem)
    # the hook also runs once per training forward pass: training stays hooked in
    assert len(recorder.dropped) == steps
    assert sum(recorder.outside) == 0
    assert recorder.dropped[-1] > 0.5 * 0.5 * first.weight.numel() * 0.8 * (
        1 if not ramp else (steps - 1) / steps
    )
    if ramp:
        assert method.targeting(0.0) == 0.0 and recorder.dropped[0] == 0
        assert recorder.dropped[steps // 2] < recorder.dropped[-1]
    # hooks removed: plain modules, and train-mode forward is a plain deterministic forward
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(first) is nn.Linear
    plain = copy.deepcopy(weight_problem.model)
    plain.load_state_dict(model.state_dict())
    inputs = weight_problem.val.tensors[0][:32]
    model.train()
    assert torch.equal(model(inputs), plain.train()(inputs))


def test_lottery_rewinds_survivors_to_theta_k(weight_problem: Problem) -> None:
    class Recording(Lottery):
        starts: ClassVar[list[tuple[dict[str, Tensor], MaskSet]]] = []

        def retrain(self, problem: Problem, model: nn.Module, masks: MaskSet, steps: int) -> None:
            self.starts.append((copy.deepcopy(model.state_dict()), masks))
            super().retrain(problem, model, masks, steps)

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
    with pytest.raises(ValidationError):
        TargetedDropout.Params(targeting=1.5)
    with pytest.raises(ValidationError):
        TargetedDropout.Params(drop_rate=1.0)
