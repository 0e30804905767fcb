"""End-to-end: the real CLI on tiny budgets, exit codes, plug-ins and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main

PLUGINS = str(Path(__file__).parent / "plugins")


def _config(tmp_path: Path, **sections: object) -> Path:
    data = {
        "task": "digits-mlp",
        "budget": {"sparsity": 0.9},
        "searcher": {"name": "ga", "population": 8},
        "run": {"max_evals": 48, "seed": 0, "progress": False},
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", str(_config(tmp_path)), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 48 and summary["seed"] == 0
    assert summary["budget"] == {"sparsity": 0.9}
    best, dense = summary["best"], summary["dense"]
    assert best["sparsity"] >= 0.9 - 1e-6 and 0 < best["flops_fraction"] < 0.2
    assert (
        0.9 < dense["test_accuracy"] <= 1.0 and 0.1 < best["test_accuracy"] < dense["test_accuracy"]
    )
    assert set(summary["baselines"]) == {"magnitude-global", "magnitude-layer"}
    for figures in summary["baselines"].values():
        assert figures["sparsity"] >= 0.9 - 1e-6
    assert (
        best["val_fitness"] >= max(b["val_fitness"] for b in summary["baselines"].values()) - 0.05
    )
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 48 and history[-1]["best"] == pytest.approx(best["val_fitness"])
    assert all(row["sparsity"] >= 0.9 - 1e-6 for row in history)
    for name in ("config.yaml", "best_masks.npz", "fitness.png", "layer_sparsity.png"):
        assert (out / name).stat().st_size > 0
    assert "magnitude-global" in capsys.readouterr().out


def test_same_seed_same_result(tmp_path: Path) -> None:
    summaries = []
    for name in ("a", "b"):
        assert main(["run", str(_config(tmp_path)), "--out", str(tmp_path / name)]) == 0
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text())["best"])
    assert summaries[0] == summaries[1]


def test_baseline_method_and_channel_space(tmp_path: Path) -> None:
    config = _config(tmp_path, method="magnitude-global")
    data = yaml.safe_load(config.read_text())
    del data["searcher"]
    config.write_text(yaml.safe_dump(data))
    assert main(["run", str(config), "--out", str(tmp_path / "m")]) == 0
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["method"] == "magnitude-global" and summary["evaluations"] == 1
    assert list(summary["baselines"]) == ["magnitude-layer"]
    binary = _config(
        tmp_path, space={"name": "binary", "granularity": "channel"}, budget={"flops": 0.5}
    )
    assert main(["run", str(binary), "--out", str(tmp_path / "b")]) == 0
    best = json.loads((tmp_path / "b" / "summary.json").read_text())["best"]
    assert best["flops_fraction"] <= 0.5 + 1e-9


def test_user_task_and_fitness_from_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    config = _config(
        tmp_path,
        task={"name": "user_plugin:make_task", "hidden": 12},
        fitness="user_plugin:sparse_accuracy",
        budget={"flops": 0.6},
    )
    assert main(["run", str(config), "--out", str(tmp_path / "u")]) == 0
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["best"]["flops_fraction"] <= 0.6 + 1e-9
    assert summary["dense"]["test_accuracy"] > 0.85


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("searcher.name=gaa", "searcher.name: unknown searcher 'gaa'; did you mean 'ga'?"),
        ("space.criterion=snp", "space.criterion: unknown criterion 'snp'"),
        ("budget.sparsity=0.9999", "budget.sparsity=0.9999 cannot be met"),
        ("task=digits-mlpp", "task.name: unknown task 'digits-mlpp'; did you mean 'digits-mlp'?"),
        ("searcher.popsize=3", "searcher.popsize: unknown key for searcher 'ga'"),
        ("fitness=nomodule.x:f", "fitness.name: cannot import module 'nomodule.x'"),
        ("space.exclude=[fc9]", "space.exclude names ['fc9']"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    code = main(["run", str(_config(tmp_path)), "--set", override, "--out", str(tmp_path / "x")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fitness_failure_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    config = _config(tmp_path, fitness="user_plugin:make_task")  # wrong signature: raises
    assert main(["run", str(config), "--out", str(tmp_path / "f")]) == 1
    assert re.search(
        r"fitness 'make_task' raised TypeError on candidate #\d+", capsys.readouterr().err
    )


def test_list_names_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "digits-resnet",
        "mnist1d-cnn",
        "ga",
        "random",
        "magnitude-global",
        "layer-ratios",
        "binary",
        "magnitude",
        "r_flops",
        "neg_loss",
    ):
        assert f"  {name} " in out


def test_existing_run_directory_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 0
    assert main(["run", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(["amc", "cmaes", "ga", "nsga2", "pso", "random", "sa"]))
def test_every_searcher_runs_from_a_config_within_the_budget(tmp_path: Path, name: str) -> None:
    config = _config(tmp_path, searcher={"name": name, "population": 8})
    out = tmp_path / name
    assert main(["run", str(config), "--out", str(out)]) == 0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 48 and all(row["sparsity"] >= 0.9 - 1e-6 for row in history)
    assert json.loads((out / "summary.json").read_text())["method"] == name
