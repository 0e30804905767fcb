"""NSGA-II's front, fine-tuning in runs, and the compare harness end to end."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from searchprune.cli import main
from searchprune.compare import plan
from searchprune.config import ConfigError
from searchprune.report import pick_from_front

BASE = {
    "task": "digits-mlp",
    "budget": {"sparsity": 0.8},
    "run": {"max_evals": 64, "seed": 0, "progress": False},
}


def _write(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_nsga2_saves_a_non_dominated_front_within_the_budget(tmp_path: Path) -> None:
    config = _write(tmp_path, {**BASE, "searcher": {"name": "nsga2", "population": 16}})
    assert main(["run", str(config), "--out", str(tmp_path / "n")]) == 0
    summary = json.loads((tmp_path / "n" / "summary.json").read_text())
    front = summary["pareto_front"]
    assert len(front) >= 3
    costs = [m["cost"] for m in front]
    fitness = [m["val_fitness"] for m in front]
    assert all(a < b for a, b in itertools.pairwise(fitness)), "cheaper must score lower"
    history = [json.loads(x) for x in (tmp_path / "n" / "history.jsonl").read_text().splitlines()]
    # every candidate is 80% sparse or more; history rounds metrics to 6 decimals
    at_budget = max(row["flops_fraction"] for row in history)
    assert costs == sorted(costs) and costs[-1] <= at_budget + 1e-6 and costs[0] < 0.5 * at_budget
    sparsities = np.array([row["sparsity"] for row in history])
    assert sparsities.min() >= 0.8 - 1e-6 and sparsities.max() > 0.85  # bound, not exact
    picked = pick_from_front(tmp_path / "n", max_cost=costs[1] + 1e-9)
    assert picked["cost"] <= costs[1] + 1e-9 and picked["val_fitness"] == fitness[1]
    assert (tmp_path / "n" / "pareto_front.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no front member costs at most"):
        pick_from_front(tmp_path / "n", max_cost=0.0)


def test_finetuning_is_reported_for_best_and_baselines(tmp_path: Path) -> None:
    config = _write(tmp_path, {**BASE, "searcher": "ga", "finetune": {"epochs": 2}})
    assert main(["run", str(config), "--out", str(tmp_path / "f")]) == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    for figures in [summary["best"], *summary["baselines"].values()]:
        tuned = figures["finetuned"]
        assert tuned["epochs"] == 2
        assert tuned["test_accuracy"] > figures["test_accuracy"]  # 80% sparse MLP recovers


def test_compare_end_to_end_and_rerun_reuses_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {
        "task": "digits-mlp",
        "run": {"max_evals": 32},
        "compare": {
            "methods": ["ga", "random", "magnitude-global"],
            "budgets": [{"sparsity": 0.8}, {"sparsity": 0.9}],
            "seeds": [0, 1],
            "settings": {"ga": {"population": 8}, "random": {"population": 8}},
        },
    }
    config = _write(tmp_path, data)
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 3 * 2
    assert {row["method"] for row in rows} == {"ga", "random", "magnitude-global"}
    for row in rows:
        assert row["seeds"] == "2"
        expected = 1 if row["method"] == "magnitude-global" else 32
        assert float(row["evaluations"]) == expected
        assert float(row["sparsity"]) >= float(row["budget"].split()[1]) - 1e-6
    markdown = (out / "compare.md").read_text()
    assert "| digits-mlp | sparsity 0.9 | ga |" in markdown
    assert (out / "accuracy_vs_budget_digits-mlp.png").stat().st_size > 0
    summary = out / "runs" / "digits-mlp" / "sparsity-0.9" / "ga-s1" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert main(["compare", str(config), "--out", str(out)]) == 0
    assert summary.stat().st_mtime_ns == stamp, "a finished run is reused, not rerun"


def test_compare_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs a 'compare' section"):
        plan({"task": "digits-mlp"})
    with pytest.raises(ConfigError, match="compare.methods: unknown searcher or method 'gaa'"):
        plan(
            {"task": "digits-mlp", "compare": {"methods": ["gaa"], "budgets": [{"sparsity": 0.5}]}}
        )
    with pytest.raises(ConfigError, match="budget: a compare config sets this per run"):
        plan(
            {
                "task": "digits-mlp",
                "budget": {"sparsity": 0.5},
                "compare": {"methods": ["ga"], "budgets": [{"sparsity": 0.5}]},
            }
        )
    _, cells, skipped = plan(
        {
            "task": "digits-mlp",
            "space": {"name": "binary", "granularity": "channel"},
            "compare": {"methods": ["ga", "cmaes"], "budgets": [{"flops": 0.5}], "seeds": [0, 1]},
        }
    )
    assert [c.method for c in cells] == ["ga", "ga"] and skipped and "cmaes" in skipped[0]
