"""The training-time method framework, gradual magnitude pruning, and `method:` configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from searchprune.cli import main
from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners import METHODS
from searchprune.pruners.gradual import GradualMagnitude, GradualParams, scaled_budget
from searchprune.pruners.oneshot import global_masks
from searchprune.tasks.base import Task


def test_scaled_budget_follows_the_cubic_ramp() -> None:
    assert scaled_budget(Budget("sparsity", 0.9), 0.0) is None
    assert scaled_budget(Budget("sparsity", 0.9), 1.0) == Budget("sparsity", 0.9)
    half = scaled_budget(Budget("sparsity", 0.8), 0.5)
    assert half is not None and half.target == pytest.approx(0.8 * (1 - 0.5**3))
    flops = scaled_budget(Budget("flops", 0.4), 0.5)
    assert flops is not None and flops.target == pytest.approx(1 - 0.6 * (1 - 0.5**3))


def test_gradual_magnitude_meets_the_budget_and_recovers(digits_mlp_task: Task) -> None:
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))
    before = {k: v.clone() for k, v in problem.model.state_dict().items()}
    method = GradualMagnitude(GradualParams(epochs=4), seed=0)
    result = method.run(problem)
    stats = problem.exact_stats(result.masks)
    assert stats["sparsity"] >= 0.9 - 1e-6
    modules = dict(result.model.named_modules())
    for name, keep in result.masks.weights.items():
        assert torch.all(modules[name].weight[~keep] == 0)  # type: ignore[index]
    assert all(torch.equal(before[k], v) for k, v in problem.model.state_dict().items())
    trained = Problem(
        Task(result.model, digits_mlp_task.train, digits_mlp_task.val),
        budget=Budget("sparsity", 0.9),
    )
    tuned = trained.score_masks(result.masks).metrics["val_accuracy"]
    one_shot = problem.score_masks(global_masks(problem, "magnitude")).metrics["val_accuracy"]
    assert tuned > one_shot + 0.05, "pruning while training must beat one-shot pruning"
    again = GradualMagnitude(GradualParams(epochs=4), seed=0).run(problem)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            result.model.state_dict().values(), again.model.state_dict().values(), strict=True
        )
    )


def test_method_configs_run_training_methods_and_name_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "gradual-magnitude" in METHODS
    data = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.8},
        "method": {"name": "gradual-magnitude", "epochs": 2},
        "run": {"progress": False},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "g")]) == 0
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["method"] == "gradual-magnitude" and summary["method_info"]["steps"] > 0
    assert summary["best"]["sparsity"] >= 0.8 - 1e-6
    assert (
        summary["best"]["test_accuracy"] > summary["baselines"]["magnitude-global"]["test_accuracy"]
    )
    data["method"] = {"name": "gradual-magnitude", "epoch": 2}
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "h")]) == 2
    assert "method.epoch: unknown key for method 'gradual-magnitude'" in capsys.readouterr().err
    data["method"] = {"name": "magnitude-global", "epochs": 2}
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "i")]) == 2
    assert "'magnitude-global' takes no settings" in capsys.readouterr().err


BASELINE_CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "configs" / "baselines").glob("*.yaml")
)


@pytest.mark.parametrize("path", BASELINE_CONFIGS, ids=lambda p: p.stem)
def test_every_baseline_config_runs_and_meets_its_budget(tmp_path: Path, path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if isinstance(data["method"], dict):  # training-time: shortest run that still trains
        data["method"].update(epochs=1)
        if "rewind_epochs" in data["method"]:
            data["method"].update(rewind_epochs=0, rounds=2)
    data["run"] = {"progress": False}
    data["baselines"] = []
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    best = json.loads((tmp_path / "run" / "summary.json").read_text())["best"]
    ((kind, target),) = data["budget"].items()
    if kind == "sparsity":
        assert best["sparsity"] >= target - 1e-6
    else:
        assert best[f"{kind}_fraction"] <= target + 1e-6
    assert 0.0 <= best["test_accuracy"] <= 1.0
