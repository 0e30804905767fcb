"""Searchers run unchanged on the Ray evaluator: the AMC agent, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray

from searchprune.cli import main

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time (Makefile: -n 2)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_amc_on_ray_actors_finds_what_it_finds_locally(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "amc_digits-cnn.yaml")
    small = ["--set", "run.max_evals=48", "--set", "run.count=all", "--set", "searcher.warmup=16"]
    small += ["--set", "run.progress=false", "--set", "baselines=[]"]
    best = {}
    for evaluator in ("local", "ray"):
        out = tmp_path / evaluator
        code = main(
            ["run", config, *small, "--set", f"evaluator.name={evaluator}", "--out", str(out)]
        )
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["evaluations"] == 48
        best[evaluator] = summary["best"]
    assert best["ray"] == best["local"]
    assert best["ray"]["flops_fraction"] <= 0.5 + 1e-9
    assert not ray.is_initialized(), "the run's local Ray instance is stopped"
