"""Run reports: the figures of a pruned model (val, test, latency, fine-tuned), the
``summary.json`` sections, PNG plots and the console comparison table.

The test split is read here, for the report only: nothing here feeds back into search.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

from searchprune.config import Config
from searchprune.core.masks import MaskSet
from searchprune.finetune import finetune
from searchprune.latency import deployed, measure_ms
from searchprune.problem import Evaluation, Problem
from searchprune.rundir import RunDir, write_json
from searchprune.search.base import FrontMember
from searchprune.tasks import Split, Task, score_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


# ---------------------------------------------------------------------- figures
def final_test_split(task: Task, problem: Problem) -> Split | None:
    """The task's test split on the problem's device (``None`` when it has none)."""
    return None if task.test is None else task.split("test").to(problem.device)


def dense_figures(problem: Problem, test: Split | None) -> dict[str, Any]:
    """The dense model's val and test accuracy (and latency, when the run measures it)."""
    loss = problem.task.loss
    figures: dict[str, Any] = {
        "val_accuracy": score_model(problem.model, problem.val, loss).accuracy,
        "test_accuracy": score_model(problem.model, test, loss).accuracy if test else None,
    }
    if problem.latency is not None:
        example = problem.task.example_input().to(problem.device)
        figures["latency_ms"] = measure_ms(problem.model, example)
    return figures


def test_accuracy(problem: Problem, masks: MaskSet, test: Split | None) -> float | None:
    """Test accuracy of the model under ``masks`` (None without a test split)."""
    if test is None:
        return None
    with problem.masked(masks) as model:
        return score_model(model, test, problem.task.loss).accuracy


def mask_figures(
    config: Config, problem: Problem, masks: MaskSet, evaluation: Evaluation, test: Split | None
) -> dict[str, Any]:
    """Val and test figures of ``masks`` as scored, the deployed model's measured latency
    when the run measures latency, and the figures after fine-tuning when configured."""
    stats = problem.exact_stats(masks)
    with problem.masked(masks) as model:
        val = score_model(model, problem.val, problem.task.loss)
    test_acc = test_accuracy(problem, masks, test)
    figures: dict[str, Any] = {
        "val_fitness": evaluation.fitness,
        "val_accuracy": val.accuracy,
        "test_accuracy": test_acc,
        "sparsity": stats["sparsity"],
        "flops_fraction": stats["flops_fraction"],
        "params_fraction": stats["params_fraction"],
    }
    if problem.latency is not None:
        example = problem.task.example_input().to(problem.device)
        runnable = deployed(
            problem.masked_copy(masks),
            masks,
            problem.layers,
            problem.graph,
            problem.granularity,
            example,
        )
        figures["latency_ms"] = measure_ms(runnable, example)
        figures["latency_ms_predicted"] = stats["latency_ms"]
    tune = config.finetune
    if tune.epochs > 0:
        tuned = finetune(
            problem.model,
            masks,
            problem.train,
            epochs=tune.epochs,
            lr=tune.lr,
            batch_size=tune.batch_size,
            seed=config.run.seed,
            weight_decay=tune.weight_decay,
            loss=problem.task.loss,
        )
        figures["finetuned"] = {
            "epochs": tune.epochs,
            "val_accuracy": score_model(tuned, problem.val, problem.task.loss).accuracy,
            "test_accuracy": score_model(tuned, test, problem.task.loss).accuracy if test else None,
        }
    return figures


def latency_section(problem: Problem) -> dict[str, Any]:
    """The measured latency curve and the budget it turned into, for ``summary.json``."""
    assert problem.latency is not None
    return {
        "axis": problem.latency.axis,
        "kernels": problem.latency.kernels,
        "points": problem.latency.points,
        "search_budget": {problem.budget.kind: problem.budget.target},
    }


# -------------------------------------------------------------------- the report
def write_report(
    run_dir: RunDir,
    summary: dict[str, Any],
    densities: Mapping[str, Mapping[str, float]],
    front: Sequence[FrontMember],
) -> None:
    """Write ``summary.json`` (with the Pareto front, when there is one) and the plots."""
    task, budget = summary["task"], summary["budget"]
    if front:
        summary["pareto_front"] = write_front(front, run_dir.path, f"{task}: val fitness vs cost")
    run_dir.write_summary(summary)
    plot_fitness(run_dir.read_history(), run_dir / "fitness.png", f"{summary['method']} on {task}")
    plot_layer_sparsity(
        densities, run_dir / "layer_sparsity.png", f"per-layer sparsity, {task}, budget {budget}"
    )


# ------------------------------------------------------------------------ plots

LegendPlace = Literal["best", "upper left", "lower right"]


def save_figure(
    figure: Figure,
    axes: Axes,
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    legend: LegendPlace | None = "best",
) -> Path:
    """Label, grid, legend (``None``: none), save as PNG at ``path`` and close."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if legend is not None:
        axes.legend(loc=legend, fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_fitness(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Fitness of every evaluation and the best so far, against evaluations."""
    scored = [row for row in history if row.get("fitness") is not None]
    if not scored:
        return
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    evals = [row["eval"] for row in scored]
    axes.scatter(evals, [row["fitness"] for row in scored], s=4, alpha=0.35, label="candidate")
    axes.plot(evals, [row["best"] for row in scored], color="C3", label="best so far")
    save_figure(
        figure,
        axes,
        path,
        title=title,
        xlabel="evaluations",
        ylabel="val fitness",
        legend="lower right",
    )


def plot_layer_sparsity(
    densities: Mapping[str, Mapping[str, float]], path: Path, title: str
) -> None:
    """Grouped bars: fraction of each layer's weights removed, one bar per method."""
    methods = list(densities)
    layers = list(next(iter(densities.values())))
    width = 0.8 / max(len(methods), 1)
    figure, axes = plt.subplots(figsize=(max(6.4, 0.9 * len(layers) + 2), 4.0))
    for index, method in enumerate(methods):
        removed = [1.0 - densities[method][layer] for layer in layers]
        positions = [i + (index - (len(methods) - 1) / 2) * width for i in range(len(layers))]
        axes.bar(positions, removed, width=width, label=method)
    axes.set_xticks(range(len(layers)))
    axes.set_xticklabels(layers, rotation=30, ha="right")
    axes.set_ylim(0, 1)
    save_figure(
        figure,
        axes,
        path,
        title=title,
        xlabel="layer",
        ylabel="fraction of weights removed",
        legend="upper left",
    )


def write_front(front: Sequence[FrontMember], out: Path, title: str) -> list[dict[str, float]]:
    """Save a Pareto front (``pareto_front.json`` with genomes, ``pareto_front.png``) and
    return its fitness/cost pairs for the summary."""
    members = [{"val_fitness": m.fitness, "cost": m.cost} for m in front]
    write_json(
        out / "pareto_front.json",
        {
            "members": [
                {**pair, "genome": member.genome}
                for pair, member in zip(members, front, strict=True)
            ]
        },
    )
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    axes.plot([m.cost for m in front], [m.fitness for m in front], "o-", color="C2")
    save_figure(
        figure,
        axes,
        out / "pareto_front.png",
        title=title,
        xlabel="cost (fraction of the dense model kept)",
        ylabel="val fitness",
        legend=None,
    )
    return members


def pick_from_front(run_dir: str | Path, max_cost: float) -> dict[str, Any]:
    """The member of a run's saved Pareto front with the best val fitness among those
    whose cost is at most ``max_cost`` (e.g. a tighter FLOPs budget than the run's).

    :raises ValueError: when no member is that cheap.
    """
    members = json.loads((Path(run_dir) / "pareto_front.json").read_text())["members"]
    affordable = [m for m in members if m["cost"] <= max_cost]
    if not affordable:
        cheapest = min(m["cost"] for m in members)
        raise ValueError(
            f"no front member costs at most {max_cost}; the cheapest costs {cheapest:.4f}"
        )
    return max(affordable, key=lambda m: m["val_fitness"])


def comparison_table(summary: Mapping[str, Any], fitness: str = "accuracy") -> str:
    """The side-by-side console table: dense, best found, and each baseline (with the val
    fitness when ``fitness`` is not accuracy, the measured latency when the run measured
    it, and test accuracy after fine-tuning when the run fine-tuned)."""
    budget = ", ".join(f"{k} {v}" for k, v in summary["budget"].items())
    rows = [("dense", summary["dense"]), (f"best ({summary['method']})", summary["best"])]
    rows += list(summary["baselines"].items())
    tuned = "finetuned" in summary["best"]
    timed = "latency_model" in summary
    scored = fitness != "accuracy"
    header = f"{'':<26}" + (f"{'fitness':>10}" if scored else "")
    header += f"{'val acc':>9}{'test acc':>10}{'sparsity':>10}{'FLOPs':>8}{'params':>8}"
    header += f"{'latency':>11}" if timed else ""
    total = summary.get("total_time_s")
    lines = [
        f"budget: {budget}   evaluations: {summary['evaluations']}   "
        f"search: {summary['wall_time_s']:.1f} s"
        + (f"   total: {total:.1f} s" if total is not None else ""),
        header + (f"{'tuned test':>12}" if tuned else ""),
    ]
    for name, figures in rows:
        value = figures.get("val_fitness")
        line = f"{name:<26}" + (f"{'-' if value is None else f'{value:.4g}':>10}" if scored else "")
        line += (
            f"{_pct(figures.get('val_accuracy')):>9}"
            f"{_pct(figures.get('test_accuracy')):>10}{_pct(figures.get('sparsity', 0.0)):>10}"
            f"{_pct(figures.get('flops_fraction', 1.0)):>8}"
            f"{_pct(figures.get('params_fraction', 1.0)):>8}"
        )
        if timed:
            latency = figures.get("latency_ms")
            line += f"{'-' if latency is None else f'{latency:.3f} ms':>11}"
        if tuned:
            line += f"{_pct(figures.get('finetuned', {}).get('test_accuracy')):>12}"
        lines.append(line)
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
