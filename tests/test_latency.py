"""Latency budgets: a fitted latency model turns milliseconds into a FLOPs budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from searchprune.cli import main


def _config(tmp_path: Path, budget: dict[str, float], granularity: str = "channel") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "digits-mlp",
                "space": {"granularity": granularity},
                "budget": budget,
                "searcher": {"name": "ga", "population": 8},
                "run": {"max_evals": 24, "progress": False},
            }
        )
    )
    return path


def _latency_model(tmp_path: Path) -> dict[str, float]:
    assert (
        main(["run", str(_config(tmp_path, {"latency_ms": 10.0})), "--out", str(tmp_path / "a")])
        == 0
    )
    return json.loads((tmp_path / "a" / "summary.json").read_text())["latency_model"]


def test_latency_budget_becomes_the_predicted_flops_budget(tmp_path: Path) -> None:
    model = _latency_model(tmp_path)
    points = model["points"]
    assert len(points) == 5 and all(ms > 0 for _, ms in points)
    assert model["slope_ms"] > 0, "fewer FLOPs must run faster"
    dense_ms = model["intercept_ms"] + model["slope_ms"]
    fastest_ms = model["intercept_ms"] + model["slope_ms"] * min(f for f, _ in points)
    target = fastest_ms + 0.5 * (dense_ms - fastest_ms)
    out = tmp_path / "b"
    assert main(["run", str(_config(tmp_path, {"latency_ms": target})), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    fitted = summary["latency_model"]
    expected_fraction = (target - fitted["intercept_ms"]) / fitted["slope_ms"]
    assert summary["best"]["flops_fraction"] <= expected_fraction + 1e-6
    assert summary["best"]["latency_ms_predicted"] <= target + 1e-9
    assert summary["best"]["latency_ms"] > 0  # measured on the compacted model
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert all(row["latency_ms"] <= target + 1e-9 for row in history)


def test_unreachable_or_unstructured_latency_budgets_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["run", str(_config(tmp_path, {"latency_ms": 1e-6})), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "budget.latency_ms=1e-06 cannot be met" in capsys.readouterr().err
    config = _config(tmp_path, {"latency_ms": 1.0}, granularity="weight")
    assert main(["run", str(config), "--out", str(tmp_path / "y")]) == 2
    assert "budget.latency_ms needs space.granularity: channel" in capsys.readouterr().err
