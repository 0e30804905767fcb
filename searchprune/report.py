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
from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.finetune import finetune
from searchprune.latency import deployed, measure_ms
from searchprune.problem import Evaluation, Problem
from searchprune.rundir import RunDir, write_json
from searchprune.search import SEARCHERS
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
    config: Config,
) -> None:
    """Write the plots (and the Pareto front's file, when there is one, adding it to
    ``summary``); the caller writes ``summary.json`` once the run's figures are all in."""
    task, budget = summary["task"], describe_budget(summary["budget"])
    if front:
        members = write_front(front, run_dir.path)
        summary["pareto_front"] = members
        figure = front_figure(
            {budget: members}, f"{task}: val fitness vs cost", front_cost_label(config)
        )
        write_png(figure, run_dir / "pareto_front.png")
    fitness = fitness_figure(
        run_dir.read_history(),
        f"{summary['method']} on {task}, {budget}",
        fitness_references(summary, config.fitness.name),
        config.fitness.name,
    )
    if fitness is not None:
        write_png(fitness, run_dir / "fitness.png")
    sparsity = layer_sparsity_figure(
        densities, f"{task}: pruned share of each layer, {budget}", config.space.granularity
    )
    write_png(sparsity, run_dir / "layer_sparsity.png")


def write_front(front: Sequence[FrontMember], out: Path) -> list[dict[str, float]]:
    """Save a Pareto front as ``pareto_front.json`` (with genomes) and return its
    fitness/cost pairs for the summary."""
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
    return members


# ------------------------------------------------------------------------ plots

LegendPlace = Literal["best", "upper left", "lower right", "outside"]

COST_AXES = {
    "flops": "FLOPs kept (fraction of dense)",
    "params": "params kept (fraction of dense)",
    "density": "prunable weights kept (fraction of dense)",
    "sparsity": "sparsity (fraction of prunable weights removed)",
    "latency_ms": "latency (ms)",
}
"""Axis labels of a cost: a budget kind or NSGA-II's ``objective``."""

_BUDGET_NAMES = {
    "sparsity": "sparsity",
    "flops": "FLOPs",
    "params": "params",
    "latency_ms": "latency",
}


def describe_budget(budget: Mapping[str, float]) -> str:
    """A budget in words, e.g. ``FLOPs ≤ 50%``, ``sparsity ≥ 90%``, ``latency ≤ 2 ms``."""
    parts = []
    for kind, target in budget.items():
        relation = "≥" if Budget(kind, target).removes else "≤"
        amount = f"{target:g} ms" if kind == "latency_ms" else f"{100 * target:g}%"
        parts.append(f"{_BUDGET_NAMES[kind]} {relation} {amount}")
    return ", ".join(parts)


def front_cost_label(config: Config) -> str:
    """The axis label of the cost a run's Pareto front traded off against fitness: its
    searcher's ``objective`` (NSGA-II's, FLOPs by default), not the run's budget."""
    searcher = config.searcher
    if searcher is None:
        return "cost"
    params = SEARCHERS.get(searcher.name).Params.model_validate(searcher.model_extra or {})
    return COST_AXES.get(getattr(params, "objective", ""), "cost (lower is better)")


def label_axes(
    axes: Axes,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    legend: LegendPlace | None = "best",
) -> None:
    """Title, axis labels, grid and legend (``None``: none; ``"outside"``: right of the
    axes, for many entries)."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if legend == "outside":
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    elif legend is not None:
        axes.legend(loc=legend, fontsize="small")


def write_png(figure: Figure, path: Path) -> Path:
    """Lay ``figure`` out, save it as PNG at ``path`` and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
    """Label (:func:`label_axes`), save as PNG at ``path`` and close."""
    label_axes(axes, title=title, xlabel=xlabel, ylabel=ylabel, legend=legend)
    return write_png(figure, path)


def fitness_references(summary: Mapping[str, Any], fitness: str) -> dict[str, float]:
    """Reference levels for the fitness plot: each baseline's val fitness and, when the
    fitness is accuracy, the dense model's val accuracy."""
    references = {
        name: figures["val_fitness"]
        for name, figures in summary["baselines"].items()
        if figures.get("val_fitness") is not None
    }
    if fitness == "accuracy":
        references["dense"] = summary["dense"]["val_accuracy"]
    return references


def fitness_figure(
    history: list[dict[str, Any]], title: str, references: Mapping[str, float], fitness: str
) -> Figure | None:
    """Fitness of every evaluation and the best so far against evaluations, with a
    dotted line at each reference level (None when nothing was scored)."""
    scored = [row for row in history if row.get("fitness") is not None]
    if not scored:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    evals = [row["eval"] for row in scored]
    axes.scatter(evals, [row["fitness"] for row in scored], s=4, alpha=0.35, label="candidate")
    axes.plot(evals, [row["best"] for row in scored], color="C3", label="best so far")
    for index, (name, level) in enumerate(references.items()):
        color = "black" if name == "dense" else f"C{(index + 4) % 10}"
        axes.axhline(level, color=color, linestyle=":", linewidth=1.2, label=name)
    label_axes(
        axes,
        title=title,
        xlabel="evaluations",
        ylabel=f"val fitness ({fitness})",
        legend="outside" if len(references) > 4 else "lower right",
    )
    return figure


def layer_sparsity_figure(
    densities: Mapping[str, Mapping[str, float]], title: str, granularity: str
) -> Figure:
    """Grouped bars: the share of each layer's weights removed, one bar per method. At
    channel granularity that counts the weights of removed channels and those reading
    removed input channels (:func:`searchprune.core.stats.mask_stats`)."""
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
    unit = " (channel pruning)" if granularity == "channel" else ""
    label_axes(
        axes,
        title=title,
        xlabel="layer",
        ylabel=f"share of weights removed{unit}",
        legend="upper left",
    )
    return figure


def front_figure(
    fronts: Mapping[str, Sequence[Mapping[str, float]]], title: str, cost: str
) -> Figure:
    """Pareto fronts (each a list of ``val_fitness``/``cost`` members) against their
    ``cost`` axis label, one labelled line each."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for label, members in fronts.items():
        axes.plot(
            [m["cost"] for m in members], [m["val_fitness"] for m in members], "o-", label=label
        )
    label_axes(axes, title=title, xlabel=cost, ylabel="val fitness")
    return figure


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
