"""What every training-time method promises: masks at the budget on a trained copy whose
removed weights are zero, the same result for the same seed, the task's model untouched;
the same through a run on a Task whose splits are DataLoaders; and the one door for a
method of one's own (``module:Class`` in a config) with errors that name the field."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import DataLoader, TensorDataset

import searchprune
from searchprune.config import ConfigError
from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.problem import Problem
from searchprune.pruners import METHODS, Method, MethodResult
from searchprune.pruners.oneshot import layer_masks_from_scores
from searchprune.pruners.training import magnitude_scores
from searchprune.tasks.base import Split, Task, score_model
from searchprune.tasks.builtin import load_builtin_task
from training_methods import make, states_equal, trained_model

BUDGET = Budget("sparsity", 0.8)
TRAINING_METHODS = sorted(name for name in METHODS.names() if METHODS.get(name).trains)


@pytest.fixture(scope="module")
def weight_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=BUDGET, granularity="weight")


@pytest.fixture(scope="module")
def channel_problem(digits_mlp_task: Any) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("flops", 0.5), granularity="channel")


def test_methods_are_registered() -> None:
    assert {"sparse-vd", "l0-bar", "group-lasso"} <= set(TRAINING_METHODS)
    assert {"gradual-magnitude", "lottery", "targeted-dropout", "weight-dropout"} <= set(
        TRAINING_METHODS
    )
    assert not METHODS.get("magnitude-global").trains


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
    modules = dict(trained_model(trained).named_modules())
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
    assert states_equal(trained_model(trained), trained_model(again))
    assert trained.masks == again.masks
    assert states_equal(problem.model, original)


# --- on a Task built from DataLoaders, through a run ---------------------------------

# shortest settings that still train; the budget each method is run under
SETTINGS: dict[str, dict[str, Any]] = {"lottery": {"rounds": 2}}
STRUCTURED = {"l0-bar", "group-lasso"}  # channel pruning, at a FLOPs budget


def loader_task() -> Task:
    """The built-in digits MLP with its splits as DataLoaders (train shuffled), reached
    from a config as ``test_methods:loader_task``."""
    task = load_builtin_task("digits-mlp")

    def loader(name: str, shuffle: bool) -> DataLoader[tuple[torch.Tensor, ...]]:
        tensors = task.split(name).tensors
        assert tensors is not None
        return DataLoader(TensorDataset(*tensors), batch_size=64, shuffle=shuffle)

    return Task(
        task.model,
        train=loader("train", True),
        val=loader("val", False),
        test=loader("test", False),
        name="digits-mlp-loaders",
    )


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_every_method_runs_on_dataloader_splits(name: str, tmp_path: Path) -> None:
    channel = name in STRUCTURED
    budget = {"flops": 0.5} if channel else {"sparsity": 0.8}
    config = {
        "task": "test_methods:loader_task",
        "budget": budget,
        "space": {"granularity": "channel" if channel else "weight"},
        "method": {"name": name, "epochs": 2, **SETTINGS.get(name, {})},
        "baselines": [],
        "run": {"progress": False},
    }
    summary = searchprune.run(config, str(tmp_path), echo=lambda _: None)
    best = summary["best"]
    if channel:
        assert best["flops_fraction"] <= 0.5 + 1e-6
    else:
        assert best["sparsity"] >= 0.8 - 1e-6
    # the saved trained copy under the saved masks scores what the run reports
    task = loader_task()
    model = copy.deepcopy(task.model)
    model.load_state_dict(torch.load(tmp_path / "trained_model.pt"))
    masks = MaskSet.load(tmp_path / "best_masks.npz")
    apply_masks(model, masks)
    assert not states_equal(model, task.model)
    assert score_model(model, task.split("val")).accuracy == best["val_accuracy"]
    test = task.split("test")
    assert isinstance(test, Split)
    assert score_model(model, test).accuracy == best["test_accuracy"]
    assert best["val_accuracy"] > 0.5


# --- a method of one's own, named by import path -------------------------------------


class ThirdOfEachLayer(Method):
    """A user's method: a third of every layer's smallest weights, at most; reached from a
    config as ``test_methods:ThirdOfEachLayer`` with its setting ``share``."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        share: float = 1 / 3

    params: Params

    def run(self, problem: Problem) -> MethodResult:
        scores = magnitude_scores(problem, problem.model)
        budget = Budget("sparsity", self.params.share)
        return MethodResult(layer_masks_from_scores(problem, scores, budget), info={"mine": 1})


def test_a_plugin_method_runs_from_a_config(tmp_path: Path) -> None:
    config = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.3},
        "method": {"name": "test_methods:ThirdOfEachLayer", "share": 0.5},
        "baselines": ["magnitude-layer"],
        "run": {"progress": False},
    }
    summary = searchprune.run(config, str(tmp_path / "a"), echo=lambda _: None)
    assert summary["method"] == "test_methods:ThirdOfEachLayer"
    assert summary["method_info"] == {"mine": 1}
    assert summary["best"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert summary["baselines"]["magnitude-layer"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert not (tmp_path / "a" / "trained_model.pt").exists()  # no trained copy to keep


def test_bad_method_names_and_settings_name_the_field(tmp_path: Path) -> None:
    def error(**changes: Any) -> str:
        config = {"task": "digits-mlp", "budget": {"sparsity": 0.5}, **changes}
        with pytest.raises(ConfigError) as info:
            searchprune.run(config, str(tmp_path / "x"), echo=lambda _: None)
        return str(info.value)

    assert "baselines: 'lottery' trains a copy of the model" in error(
        method="magnitude-global", baselines=["lottery"]
    )
    message = error(method="magnitude-global", baselines=["magnitude-glob"])
    assert "baselines: unknown method 'magnitude-glob'; did you mean 'magnitude-global'?" in message
    assert "method.name: unknown method 'lotery'" in error(method="lotery")
    assert "not a searchprune.pruners.Method subclass" in error(method="test_methods:loader_task")
    assert "method.shares: unknown key" in error(
        method={"name": "test_methods:ThirdOfEachLayer", "shares": 0.5}
    )
