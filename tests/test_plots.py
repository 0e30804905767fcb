"""The plots of a run and of a comparison, drawn from small hand-made summaries and rows:
reference lines, fine-tuned curves, titles and the axis names of costs and units."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from searchprune import compare, report
from searchprune.compare import aggregate, plan, plot_curves, plot_fronts
from searchprune.config import validate_config
from searchprune.report import describe_budget, write_report
from searchprune.rundir import RunDir, write_json
from searchprune.search.base import FrontMember

Drawn = dict[str, Figure]


def _capture(monkeypatch: pytest.MonkeyPatch, module: Any) -> Drawn:
    """Record every figure ``module`` saves, by file name, and save it as usual."""
    drawn: Drawn = {}
    save: Callable[[Figure, Path], Path] = module.write_png

    def recording(figure: Figure, path: Path) -> Path:
        drawn[path.name] = figure
        return save(figure, path)

    monkeypatch.setattr(module, "write_png", recording)
    return drawn


def _axes(figure: Figure) -> Axes:
    (axes,) = figure.axes
    return axes


def _line(axes: Axes, label: str) -> Line2D:
    (line,) = [line for line in axes.get_lines() if line.get_label() == label]
    return line


def _curves(axes: Axes) -> dict[str, Line2D]:
    """The data line of each error-bar curve, by its legend label."""
    return {str(c.get_label()): c.lines[0] for c in axes.containers if c.lines[0] is not None}


def _check_text(axes: Axes) -> None:
    for text in (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()):
        assert text and "{" not in text and "'" not in text


def test_describe_budget_says_the_bound_in_words() -> None:
    assert describe_budget({"flops": 0.5}) == "FLOPs ≤ 50%"
    assert describe_budget({"sparsity": 0.9}) == "sparsity ≥ 90%"
    assert describe_budget({"params": 0.3}) == "params ≤ 30%"
    assert describe_budget({"sparsity": 0.95}) == "sparsity ≥ 95%"
    assert describe_budget({"latency_ms": 2.0}) == "latency ≤ 2 ms"


RUN_CASES = {
    # fitness, granularity, searcher: the front's cost is NSGA-II's objective, not the budget
    "accuracy-channel-nsga2": (
        "accuracy",
        "channel",
        {"name": "nsga2", "population": 8, "objective": "params"},
    ),
    "neg_loss-weight-ga": ("neg_loss", "weight", {"name": "ga"}),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_report_draws_reference_lines_and_names_cost_and_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    fitness, granularity, searcher = RUN_CASES[case]
    config = validate_config(
        {
            "task": "digits-mlp",
            "budget": {"flops": 0.5},
            "searcher": searcher,
            "fitness": {"name": fitness},
            "space": {"granularity": granularity},
        }
    )
    run_dir = RunDir(tmp_path)
    run_dir.start_history(
        {"eval": i, "fitness": 0.5 + 0.01 * i, "best": 0.5 + 0.01 * i} for i in range(20)
    )
    summary: dict[str, Any] = {
        "task": "digits-mlp",
        "method": searcher["name"],
        "budget": {"flops": 0.5},
        "dense": {"val_accuracy": 0.95, "test_accuracy": 0.94},
        "best": {"val_fitness": 0.69},
        "baselines": {"magnitude-global": {"val_fitness": 0.62}, "random": {"val_fitness": 0.4}},
    }
    densities = {
        "best": {"fc1": 0.4, "fc2": 0.7},
        "magnitude-global": {"fc1": 0.5, "fc2": 0.5},
    }
    multi = searcher["name"] == "nsga2"
    front = [FrontMember([0.1], 0.6, 0.3), FrontMember([0.2], 0.69, 0.45)] if multi else []
    drawn = _capture(monkeypatch, report)

    write_report(run_dir, summary, densities, front, config)

    expected = {"fitness.png", "layer_sparsity.png"} | ({"pareto_front.png"} if multi else set())
    assert set(drawn) == expected
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0
        _check_text(_axes(drawn[name]))
    axes = _axes(drawn["fitness.png"])
    assert list(_line(axes, "magnitude-global").get_ydata()) == [0.62, 0.62]
    assert list(_line(axes, "random").get_ydata()) == [0.4, 0.4]
    dense = [line for line in axes.get_lines() if line.get_label() == "dense"]
    if fitness == "accuracy":  # the dense level is a val accuracy: drawn for accuracy only
        assert list(dense[0].get_ydata()) == [0.95, 0.95]
    else:
        assert dense == []
    assert "FLOPs ≤ 50%" in axes.get_title() and fitness in axes.get_ylabel()
    axes = _axes(drawn["layer_sparsity.png"])
    assert "FLOPs ≤ 50%" in axes.get_title()
    assert "weights removed" in axes.get_ylabel()
    assert ("channel" in axes.get_ylabel()) == (granularity == "channel")
    if multi:
        axes = _axes(drawn["pareto_front.png"])
        assert axes.get_xlabel() == "params kept (fraction of dense)"
        assert list(axes.get_lines()[0].get_xdata()) == [0.3, 0.45]
        assert summary["pareto_front"][1] == {"val_fitness": 0.69, "cost": 0.45}  # run() writes it


def _compare_cells(methods: list[str], seeds: list[int]) -> list[compare.Cell]:
    data = {
        "task": "digits-mlp",
        "compare": {
            "methods": methods,
            "budgets": [{"flops": 0.3}, {"flops": 0.6}],
            "seeds": seeds,
        },
    }
    return plan(data)[1]


def _fake_summaries(cells: list[compare.Cell], out: Path, tuned: bool) -> None:
    """A finished run's summary for every cell: accuracy falls with the budget."""
    for cell in cells:
        run_dir = RunDir(out / "runs" / cell.name)
        run_dir.path.mkdir(parents=True)
        accuracy = 0.5 + cell.budget["flops"] / 2 - 0.01 * cell.seed
        best: dict[str, Any] = {"val_accuracy": accuracy, "test_accuracy": accuracy}
        if tuned:
            best["finetuned"] = {"val_accuracy": accuracy + 0.1, "test_accuracy": accuracy + 0.1}
        run_dir.write_summary(
            {
                "best": best,
                "dense": {"val_accuracy": 0.97, "test_accuracy": 0.96 - 0.02 * cell.seed},
                "evaluations": 10,
                "wall_time_s": 1.0,
            }
        )


@pytest.mark.parametrize("tuned", [True, False])
def test_compare_curves_show_tuned_accuracy_and_the_dense_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tuned: bool
) -> None:
    cells = _compare_cells(["ga", "random"], seeds=[0, 1])
    _fake_summaries(cells, tmp_path, tuned)
    rows = aggregate(cells, tmp_path)
    assert [row["dense_test_accuracy"] for row in rows] == pytest.approx([0.95] * 4)
    drawn = _capture(monkeypatch, compare)

    (path,) = plot_curves(rows, tmp_path)

    assert path.name == "accuracy_vs_budget_digits-mlp.png" and path.stat().st_size > 0
    axes = _axes(drawn[path.name])
    _check_text(axes)
    assert axes.get_xlabel() == "FLOPs kept (fraction of dense)"
    assert list(_line(axes, "dense").get_ydata()) == [pytest.approx(0.95)] * 2
    curves = _curves(axes)
    assert set(curves) == {"ga", "random"} | (
        {"ga, fine-tuned", "random, fine-tuned"} if tuned else set()
    )
    for method in ("ga", "random"):
        plain = curves[method]
        assert list(plain.get_xdata()) == [0.3, 0.6]
        assert list(plain.get_ydata()) == pytest.approx([0.645, 0.795])
        if tuned:
            line = curves[f"{method}, fine-tuned"]
            assert line.get_linestyle() == "--" and line.get_color() == plain.get_color()
            assert list(line.get_ydata()) == pytest.approx([0.745, 0.895])
    assert ("no fine-tuning" in axes.get_ylabel()) == (not tuned)


def test_compare_curves_put_many_methods_outside_the_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = ["ga", "pso", "sa", "random", "magnitude-global", "magnitude-layer"]
    cells = _compare_cells(methods, seeds=[0])
    _fake_summaries(cells, tmp_path, tuned=False)
    drawn = _capture(monkeypatch, compare)

    (path,) = plot_curves(aggregate(cells, tmp_path), tmp_path)

    figure = drawn[path.name]
    axes = _axes(figure)
    figure.canvas.draw()
    legend = axes.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(methods) + 1  # and dense
    assert legend.get_window_extent().x0 >= axes.get_window_extent().x1


def test_compare_fronts_name_the_cost_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = _compare_cells(["nsga2", "ga"], seeds=[0])
    for cell in cells:
        if cell.method == "nsga2":
            (tmp_path / "runs" / cell.name).mkdir(parents=True)
            members = [{"val_fitness": 0.5, "cost": 0.1}, {"val_fitness": 0.7, "cost": 0.2}]
            write_json(tmp_path / "runs" / cell.name / "pareto_front.json", {"members": members})
    drawn = _capture(monkeypatch, compare)

    (path,) = plot_fronts(cells, tmp_path)

    assert path.stat().st_size > 0
    axes = _axes(drawn[path.name])
    _check_text(axes)
    assert axes.get_xlabel() == "FLOPs kept (fraction of dense)"
    labels = sorted(str(line.get_label()) for line in axes.get_lines())
    assert labels == ["nsga2, FLOPs ≤ 30%", "nsga2, FLOPs ≤ 60%"]


def test_compare_curves_draw_each_budget_kind_on_its_own_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {
            "task": "t",
            "budget": budget,
            "method": "ga",
            "test_accuracy": 0.8,
            "test_accuracy_std": 0.0,
        }
        for budget in ("flops 0.5", "params 0.4", "params 0.6")
    ]
    drawn = _capture(monkeypatch, compare)

    paths = plot_curves(rows, tmp_path)

    assert all(path.stat().st_size > 0 for path in paths)
    assert {path.name: _axes(drawn[path.name]).get_xlabel() for path in paths} == {
        "accuracy_vs_budget_t_flops.png": "FLOPs kept (fraction of dense)",
        "accuracy_vs_budget_t_params.png": "params kept (fraction of dense)",
    }
