"""Run reports: ``summary.json``, PNG plots and the console comparison table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

from searchprune.search.base import FrontMember

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def comparison_table(summary: Mapping[str, Any]) -> str:
    """The side-by-side console table: dense, best found, and each baseline (with the
    measured latency when the run measured it, and test accuracy after fine-tuning when
    the run fine-tuned)."""
    budget = ", ".join(f"{k} {v}" for k, v in summary["budget"].items())
    rows = [("dense", summary["dense"]), (f"best ({summary['method']})", summary["best"])]
    rows += list(summary["baselines"].items())
    tuned = "finetuned" in summary["best"]
    timed = "latency_model" in summary
    header = f"{'':<26}{'val acc':>9}{'test acc':>10}{'sparsity':>10}{'FLOPs':>8}{'params':>8}"
    header += f"{'latency':>11}" if timed else ""
    lines = [
        f"budget: {budget}   evaluations: {summary['evaluations']}   "
        f"wall time: {summary['wall_time_s']:.1f} s",
        header + (f"{'tuned test':>12}" if tuned else ""),
    ]
    for name, figures in rows:
        line = (
            f"{name:<26}{_pct(figures.get('val_accuracy')):>9}"
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
