"""NSGA-II through the CLI: a non-dominated front within the budget, and picking from it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from searchprune.cli import main
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
