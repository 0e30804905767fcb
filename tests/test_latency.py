"""Latency: a measured latency curve turns milliseconds into a FLOPs or params budget,
predicts every candidate's latency, and drives the latency-aware fitness."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from searchprune.cli import main
from searchprune.latency import LatencyModel, non_decreasing_fit
from searchprune.registry import SpecError


def _config(tmp_path: Path, budget: dict[str, float], **sections: Any) -> Path:
    path = tmp_path / "c.yaml"
    config = {
        "task": "digits-mlp",
        "space": {"granularity": "channel"},
        "budget": budget,
        "searcher": {"name": "ga", "population": 8},
        "run": {"max_evals": 24, "progress": False},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, out: Path) -> dict[str, Any]:
    assert main(["run", str(config), "--out", str(out)]) == 0
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def _history(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]


def _curve(summary: dict[str, Any]) -> LatencyModel:
    fitted = summary["latency_model"]
    points = tuple((f, ms) for f, ms in fitted["points"])
    return LatencyModel(fitted["axis"], fitted["kernels"], points)


@pytest.mark.parametrize(
    "granularity, axis, kernels, count",
    [
        ("channel", "flops_fraction", "compact model", 6),
        ("weight", "params_fraction", "sparsify auto", 7),
    ],
)
def test_latency_budget_becomes_the_budget_the_curve_predicts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    granularity: str,
    axis: str,
    kernels: str,
    count: int,
) -> None:
    space = {"granularity": granularity}
    measured = _curve(_run(_config(tmp_path, {"latency_ms": 10.0}, space=space), tmp_path / "a"))
    # what a measured curve is: its axis, kernels and points (its times depend on the load)
    assert (measured.axis, measured.kernels, len(measured.points)) == (axis, kernels, count)
    assert all(ms > 0 for _, ms in measured.points)
    fractions = [f for f, _ in measured.points]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0, abs=0.02)

    # the plumbing, on a recorded curve (1 ms + 9 ms per unit of cost kept), not on timings
    recorded = LatencyModel(axis, kernels, tuple((f, 1.0 + 9.0 * f) for f in fractions))
    monkeypatch.setattr(LatencyModel, "fit", classmethod(lambda cls, *args: recorded))
    expected = fractions[0] + 0.6 * (fractions[-1] - fractions[0])
    target = recorded.predict(expected)
    out = tmp_path / "b"
    summary = _run(_config(tmp_path, {"latency_ms": target}, space=space), out)
    assert _curve(summary) == recorded
    ((kind, fraction),) = summary["latency_model"]["search_budget"].items()
    assert kind == ("flops" if granularity == "channel" else "params")
    assert fraction == pytest.approx(expected, abs=1e-9)
    best = summary["best"]
    assert best["latency_ms_predicted"] <= target + 1e-9
    assert best["latency_ms"] > 0  # measured on the deployed (compact or sparse) model
    # history.jsonl rounds metrics to 6 decimals: a candidate on the budget may round up
    assert all(row["latency_ms"] <= target + 1e-6 for row in _history(out))


def test_unreachable_latency_budgets_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, {"latency_ms": 1e-6})
    assert main(["run", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "budget.latency_ms=1e-06 cannot be met" in capsys.readouterr().err


def test_latency_aware_fitness_is_mnasnets_objective_on_predicted_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = 0.05
    fitness = {"name": "latency_aware", "target_ms": target, "weight": -0.5}
    out = tmp_path / "run"
    # channel granularity under a sparsity budget: FLOPs, hence latency, vary by candidate
    curve = _curve(_run(_config(tmp_path, {"sparsity": 0.5}, fitness=fitness), out))
    rows = _history(out)
    for row in rows:
        assert row["latency_ms"] == pytest.approx(curve.predict(row["flops_fraction"]), abs=1e-5)
        expected = row["val_accuracy"] * (row["latency_ms"] / target) ** -0.5
        assert math.isclose(row["fitness"], expected, rel_tol=1e-4)  # history rounds to 6 places
    missing = _config(tmp_path, {"sparsity": 0.5}, fitness={"name": "latency_aware"})
    assert main(["run", str(missing), "--out", str(tmp_path / "m")]) == 2
    assert "missing a required argument: 'target_ms'" in capsys.readouterr().err
    typo = _config(tmp_path, {"sparsity": 0.5}, fitness={"name": "accuracy", "target": 1})
    assert main(["run", str(typo), "--out", str(tmp_path / "t")]) == 2
    assert "unexpected keyword argument 'target'" in capsys.readouterr().err
    for bad, message in (
        (-1, "fitness.target_ms must be positive, got -1"),
        ("soon", "fitness.target_ms must be a finite number, got 'soon'"),
    ):
        options = {"name": "latency_aware", "target_ms": bad}
        config = _config(tmp_path, {"sparsity": 0.5}, fitness=options)
        assert main(["run", str(config), "--out", str(tmp_path / "n")]) == 2
        assert message in capsys.readouterr().err


@given(
    times=st.lists(st.floats(0.01, 10.0), min_size=2, max_size=7),
    share=st.floats(0.0, 1.0),
)
def test_the_budget_is_the_largest_fraction_predicted_within_the_target(
    times: list[float], share: float
) -> None:
    fractions = [0.1 + 0.9 * i / (len(times) - 1) for i in range(len(times))]
    curve = LatencyModel("params_fraction", "test", tuple(zip(fractions, times, strict=True)))
    low, high = curve.predict(0.1), curve.predict(1.0)
    assert all(curve.predict(a) <= curve.predict(b) for a, b in itertools.pairwise(fractions))
    target = low + share * (high - low)
    fraction = curve.budget(target).target
    assert curve.predict(fraction) <= target + 1e-9
    if fraction < 0.999 and target < high:
        assert curve.predict(min(fraction + 1e-3, 1.0)) > target - 1e-9
    if low > 0.011:
        with pytest.raises(SpecError, match="cannot be met"):
            curve.budget(low - 0.01)


@given(st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=12))
def test_the_non_decreasing_fit_is_isotonic_regression(values: list[float]) -> None:
    fitted = non_decreasing_fit(np.array(values))
    assert len(fitted) == len(values)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(fitted))
    assert sum(fitted) == pytest.approx(sum(values), abs=1e-9)  # pooling keeps the mean
    if values == sorted(values):
        assert fitted.tolist() == pytest.approx(values)
    assert non_decreasing_fit(np.array([3.0, 1.0, 2.0])).tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_a_resumed_run_and_an_export_reuse_the_measured_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    # every proposal counts (the channel space of the MLP holds few distinct candidates)
    run = {"max_evals": 24, "progress": False, "count": "all"}
    config = _config(tmp_path, {"latency_ms": 10.0}, run=run)
    first = _run(config, out)
    saved = LatencyModel.load(out / "latency_model.json")
    assert saved == _curve(first)  # the file holds the curve the run searched with

    def no_timing(*args: object, **kwargs: object) -> LatencyModel:
        raise AssertionError("the curve was measured again")

    monkeypatch.setattr(LatencyModel, "fit", no_timing)
    resumed = ["run", "--resume", str(out), "--set", "run.max_evals=40"]
    assert main(resumed) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 40
    assert summary["latency_model"]["search_budget"] == first["latency_model"]["search_budget"]
    assert main(["export", str(out), "--format", "compact"]) == 0
    assert (out / "model-compact.pt2").exists()
