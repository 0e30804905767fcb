"""Targeted dropout (Gomez et al. 2019) and standard weight dropout."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners.targeted_dropout import TargetedDrop, TargetedDropout, targeted_set
from searchprune.pruners.training import trained_copy
from training_methods import make


@pytest.fixture(scope="module")
def weight_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("sparsity", 0.8), granularity="weight")


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


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError):
        TargetedDropout.Params(targeting=1.5)
    with pytest.raises(ValidationError):
        TargetedDropout.Params(drop_rate=1.0)
