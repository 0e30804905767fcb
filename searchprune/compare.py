"""``searchprune compare``: every method on the same task, budgets and seeds, side by side.

A compare config is a run config without ``budget``/``searcher``/``method`` plus a
``compare`` section::

    compare:
      tasks: [digits-mlp, digits-cnn]      # default: the config's task
      methods: [ga, pso, sa, random, magnitude-global]
      budgets: [{sparsity: 0.9}, {sparsity: 0.95}]
      seeds: [0, 1, 2]
      settings: {ga: {population: 32}}     # optional settings per method
      variants: {ga-cold: {method: ga, warm_start: []}}   # a method again, other settings

Each search method gets the same ``run.max_evals``. Every (task, budget, method, seed)
is an ordinary run directory under ``OUT/runs/``; runs already finished are reused and
runs cut short are resumed, so an interrupted compare continues where it stopped. Every
cell's settings are validated before the first run starts, and a run directory whose
saved config differs from its cell's (another ``run.max_evals``, another population) is
refused, naming the run and the keys, unless ``rerun_changed`` asks to run it again.
The results land in ``compare.md``, ``compare.csv`` and PNG plots (test accuracy against
the budget per method, in the style of ShrinkBench's curves, and NSGA-II's Pareto
fronts).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from searchprune.config import (
    Config,
    ConfigError,
    SpaceConfig,
    describe_errors,
    validate_config,
)
from searchprune.pruners import METHODS, make_method
from searchprune.registry import SpecError, unknown_name_message
from searchprune.report import (
    COST_AXES,
    describe_budget,
    front_cost_label,
    front_figure,
    label_axes,
    write_png,
)
from searchprune.rundir import RunDir
from searchprune.runner import check_names, run
from searchprune.search import SEARCHERS
from searchprune.space import SPACES

METRICS = ("val_accuracy", "test_accuracy", "sparsity", "flops_fraction")


class CompareSection(BaseModel):
    """The ``compare`` section of a compare config."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=list)
    methods: list[str] = Field(min_length=1)
    budgets: list[dict[str, float]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def resolve(self, label: str) -> tuple[str, dict[str, Any]]:
        """The searcher or method a ``methods`` entry runs, and its settings: a variant's
        ``method`` with the method's ``settings`` updated by the variant's own."""
        variant = dict(self.variants.get(label, {}))
        name = variant.pop("method", label)
        return name, {**self.settings.get(name, {}), **variant}


@dataclass(frozen=True)
class Cell:
    """One run of the comparison."""

    task: str
    budget: dict[str, float]
    method: str
    seed: int
    config: Config

    @property
    def name(self) -> str:
        ((kind, value),) = self.budget.items()
        return f"{self.task}/{kind}-{value}/{self.method}-s{self.seed}"


def _cell_config(
    base: dict[str, Any],
    section: CompareSection,
    task: str,
    budget: dict[str, float],
    method: str,
    seed: int,
) -> Config:
    data = copy.deepcopy(base)
    data["task"] = {**data["task"], "name": task} if isinstance(data.get("task"), dict) else task
    data["budget"] = budget
    data["baselines"] = []
    data.setdefault("run", {})
    data["run"] = {**data["run"], "seed": seed, "progress": False}
    name, settings = section.resolve(method)
    if name in SEARCHERS:
        data["searcher"] = {"name": name, **settings}
    else:
        data["method"] = {"name": name, **settings}
    return validate_config(data)


def plan(data: dict[str, Any]) -> tuple[CompareSection, list[Cell], list[str]]:
    """Validate a compare config; return its section, its runs and the methods skipped
    (a searcher that does not fit the space, with why)."""
    data = dict(data)
    if "compare" not in data:
        raise ConfigError("a compare config needs a 'compare' section (methods, budgets, seeds)")
    for key in ("budget", "searcher", "method", "baselines"):
        if key in data:
            raise ConfigError(f"{key}: a compare config sets this per run; list it under compare")
    try:
        section = CompareSection.model_validate(data.pop("compare"))
    except ValueError as error:
        raise ConfigError(f"compare: {error}") from None
    known = SEARCHERS.names() + METHODS.names()
    for label, variant in section.variants.items():
        if variant.get("method") not in known:
            raise ConfigError(
                unknown_name_message(
                    f"compare.variants.{label}.method",
                    "searcher or method",
                    str(variant.get("method")),
                    known,
                )
            )
    for method in section.methods:
        if method not in known and method not in section.variants:
            raise ConfigError(
                unknown_name_message(
                    "compare.methods", "searcher, method or variant", method, known
                )
            )
    used = [section.resolve(method)[0] for method in section.methods]
    for method in section.settings:
        if method not in used:
            raise ConfigError(
                unknown_name_message("compare.settings", "method of compare.methods", method, used)
            )
    tasks = section.tasks or [
        data["task"]["name"] if isinstance(data.get("task"), dict) else data.get("task", "")
    ]
    cells, skipped = [], []
    for method in section.methods:
        space = SPACES.get(SpaceConfig.model_validate(data.get("space", {})).name)
        name, _ = section.resolve(method)
        if name in SEARCHERS and space.kind not in SEARCHERS.get(name).space_kinds:
            skipped.append(f"{method}: does not search {space.kind} genomes ({space.name})")
            continue
        for task in tasks:
            for budget in section.budgets:
                for seed in section.seeds:
                    config = _cell_config(data, section, task, budget, method, seed)
                    cells.append(Cell(task, budget, method, seed, config))
    return section, cells, skipped


def check_cell(cell: Cell) -> None:
    """Refuse, before anything runs, a cell whose names are unknown or whose searcher or
    method settings do not validate (each error names the key)."""
    config = cell.config
    try:
        check_names(config)
        if config.searcher is not None:
            params = SEARCHERS.get(config.searcher.name).Params
            try:
                params.model_validate(config.searcher.model_extra or {})
            except ValidationError as error:
                raise SpecError(
                    describe_errors(error, "searcher", params, config.searcher.name)
                ) from None
        else:
            assert config.method is not None
            make_method(config.method.name, config.run.seed, **config.method.options)
    except SpecError as error:
        raise ConfigError(f"compare: run {cell.name}: {error}") from None


def _as_saved(config: Config) -> Any:
    """The config as its run directory's config.yaml holds it, read back."""
    return yaml.safe_load(yaml.safe_dump(config.resolved(), sort_keys=False))


def changed_keys(saved: Any, wanted: Any, where: str = "") -> list[str]:
    """``key: saved -> wanted`` for every dotted key whose value differs."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        changes = []
        for key in [*saved, *(k for k in wanted if k not in saved)]:
            inner = f"{where}.{key}" if where else str(key)
            changes += changed_keys(saved.get(key), wanted.get(key), inner)
        return changes
    return [] if saved == wanted else [f"{where}: {saved!r} -> {wanted!r}"]


def stale_runs(cells: list[Cell], out: Path) -> dict[str, list[str]]:
    """The cells whose run directory holds a run (finished or cut short) of another
    config than the cell's, with the keys that differ."""
    stale = {}
    for cell in cells:
        run_dir = RunDir(out / "runs" / cell.name)
        path = run_dir / RunDir.CONFIG
        if not (path.exists() and (run_dir.started or (run_dir / RunDir.SUMMARY).exists())):
            continue
        try:
            saved = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
            stale[cell.name] = [f"{path} cannot be read ({type(error).__name__})"]
            continue
        # with today's defaults filled in, a key added since is not a change; a config
        # that no longer validates is compared as it is (the differing keys say why)
        with contextlib.suppress(ConfigError):
            saved = _as_saved(validate_config(saved))
        changes = changed_keys(saved, _as_saved(cell.config))
        if changes:
            stale[cell.name] = changes
    return stale


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def aggregate(cells: list[Cell], out: Path) -> list[dict[str, Any]]:
    """One row per (task, budget, method): mean and std over seeds of each figure."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        summary = RunDir(out / "runs" / cell.name).read_summary()
        ((kind, value),) = cell.budget.items()
        groups.setdefault((cell.task, f"{kind} {value}", cell.method), []).append(summary)
    rows = []
    for (task, budget, method), summaries in groups.items():
        row: dict[str, Any] = {
            "task": task,
            "budget": budget,
            "method": method,
            "seeds": len(summaries),
        }
        bests = [s["best"] for s in summaries]
        for metric in METRICS:
            values = [b[metric] for b in bests if b.get(metric) is not None]
            if values:
                row[metric], row[f"{metric}_std"] = _mean_std(values)
        for metric in ("val_accuracy", "test_accuracy"):
            tuned = [b["finetuned"][metric] for b in bests if "finetuned" in b]
            if tuned:
                row[f"finetuned_{metric}"], row[f"finetuned_{metric}_std"] = _mean_std(tuned)
        dense = [
            s["dense"]["test_accuracy"]
            for s in summaries
            if s["dense"].get("test_accuracy") is not None
        ]
        if dense:
            row["dense_test_accuracy"] = statistics.fmean(dense)
        row["evaluations"] = statistics.fmean(s["evaluations"] for s in summaries)
        row["unique_evaluations"] = statistics.fmean(
            s.get("unique_evaluations", s["evaluations"]) for s in summaries
        )
        row["wall_time_s"] = statistics.fmean(s["wall_time_s"] for s in summaries)
        selections = [s["selection"] for s in summaries if "selection" in s]
        if selections:  # how often re-scoring changed the pick, and what that did on test
            row["selection_changed"] = statistics.fmean(float(x["changed"]) for x in selections)
            row["selection_test_gain"] = statistics.fmean(
                b["test_accuracy"] - x["val_best_test_accuracy"] if x["changed"] else 0.0
                for b, x in ((s["best"], s["selection"]) for s in summaries if "selection" in s)
            )
        rows.append(row)
    return rows


def _pm(row: dict[str, Any], key: str, percent: bool = True) -> str:
    if key not in row:
        return "-"
    scale = 100.0 if percent else 1.0
    return f"{scale * row[key]:.1f} ± {scale * row[key + '_std']:.1f}"


def write_tables(rows: list[dict[str, Any]], out: Path, skipped: list[str]) -> str:
    """``compare.csv`` (every column) and ``compare.md`` (a readable table); returns the
    Markdown."""
    columns = sorted(
        {key for row in rows for key in row},
        key=lambda k: (k not in ("task", "budget", "method"), k),
    )
    with open(out / "compare.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tuned = any("finetuned_test_accuracy" in row for row in rows)
    header = ["task", "budget", "method", "val acc %", "test acc %"]
    header += ["tuned val %", "tuned test %"] if tuned else []
    header += ["sparsity %", "FLOPs %", "evals (unique)", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: (r["task"], r["budget"], -r.get("test_accuracy", 0.0))):
        cells = [
            row["task"],
            row["budget"],
            row["method"],
            _pm(row, "val_accuracy"),
            _pm(row, "test_accuracy"),
        ]
        if tuned:
            cells += [_pm(row, "finetuned_val_accuracy"), _pm(row, "finetuned_test_accuracy")]
        cells += [
            _pm(row, "sparsity"),
            _pm(row, "flops_fraction"),
            f"{row['evaluations']:.0f} ({row['unique_evaluations']:.0f})",
            f"{row['wall_time_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    markdown = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(markdown)
    return markdown


def plot_curves(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Test accuracy against the budget (:func:`curves_figure`), one PNG per task (per
    task and budget kind when a task was compared under several kinds)."""
    paths = []
    for task in sorted({row["task"] for row in rows}):
        kinds = sorted({_budget_kind(row) for row in rows if row["task"] == task})
        for kind in kinds:
            figure = curves_figure(
                [row for row in rows if row["task"] == task and _budget_kind(row) == kind],
                task,
                kind,
            )
            name = task if len(kinds) == 1 else f"{task}_{kind}"
            paths.append(write_png(figure, out / f"accuracy_vs_budget_{name}.png"))
    return paths


def _budget_kind(row: dict[str, Any]) -> str:
    return str(row["budget"].split()[0])


def curves_figure(rows: list[dict[str, Any]], task: str, kind: str) -> Figure:
    """Mean ± std test accuracy of ``rows`` (one task's, one budget kind's) against the
    budget, one line per method; dashed in the same colour after fine-tuning when the
    runs fine-tuned; a dotted line at the dense model's test accuracy."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({row["method"] for row in rows})
    for method in methods:
        points = sorted(
            ((float(row["budget"].split()[1]), row) for row in rows if row["method"] == method),
            key=lambda point: point[0],
        )
        line = _errorbar(axes, points, "test_accuracy", label=method)
        _errorbar(
            axes,
            points,
            "finetuned_test_accuracy",
            label=f"{method}, fine-tuned",
            linestyle="--",
            color=None if line is None else line.get_color(),
        )
    dense = [row["dense_test_accuracy"] for row in rows if "dense_test_accuracy" in row]
    if dense:
        axes.axhline(statistics.fmean(dense), color="black", linestyle=":", label="dense")
    tuned = any("finetuned_test_accuracy" in row for row in rows)
    label_axes(
        axes,
        title=f"{task}: test accuracy vs budget (mean ± std over seeds)",
        xlabel=COST_AXES[kind],
        ylabel="test accuracy" if tuned else "test accuracy (no fine-tuning)",
        legend="outside" if len(methods) > 4 else "best",
    )
    return figure


def _errorbar(
    axes: Axes, points: list[tuple[float, dict[str, Any]]], key: str, **style: Any
) -> Line2D | None:
    """Plot ``key`` (mean, with its ``_std`` as error bars) of the rows in ``points`` that
    have it against their budget; return the line (None when no row has it)."""
    present = [(budget, row) for budget, row in points if key in row]
    if not present:
        return None
    container = axes.errorbar(
        [budget for budget, _ in present],
        [row[key] for _, row in present],
        yerr=[row[f"{key}_std"] for _, row in present],
        marker="o",
        capsize=3,
        **style,
    )
    return container.lines[0]


def plot_fronts(cells: list[Cell], out: Path) -> list[Path]:
    """The Pareto fronts of multi-objective searchers (first seed), one PNG per task."""
    fronts = [
        c
        for c in cells
        if c.config.searcher is not None
        and SEARCHERS.get(c.config.searcher.name).multi_objective
        and c.seed == cells[0].seed
    ]
    paths = []
    for task in sorted({c.task for c in fronts}):
        here = [c for c in fronts if c.task == task]
        members = {f"{c.method}, {describe_budget(c.budget)}": _front(out, c) for c in here}
        costs = " / ".join(dict.fromkeys(front_cost_label(c.config) for c in here))
        figure = front_figure(members, f"{task}: Pareto fronts (first seed)", costs)
        paths.append(write_png(figure, out / f"pareto_{task}.png"))
    return paths


def _front(out: Path, cell: Cell) -> list[dict[str, float]]:
    """The members of a cell's saved Pareto front (none when it saved none)."""
    path = out / "runs" / cell.name / "pareto_front.json"
    return json.loads(path.read_text())["members"] if path.exists() else []


def compare(
    data: dict[str, Any],
    out: str | Path,
    echo: Callable[[str], None] = print,
    *,
    rerun_changed: bool = False,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Run (or finish) every cell of a compare config into ``out`` and write the report
    (``quiet``: no progress bar; it is off anyway when stderr is not a terminal).

    :raises ConfigError: before any run starts, for a cell whose settings do not validate,
        or for run directories holding runs of another config (unless ``rerun_changed``,
        which runs them again in place).
    """
    out = Path(out)
    _, cells, skipped = plan(data)
    for cell in cells:
        check_cell(cell)
    stale = stale_runs(cells, out)
    if stale and not rerun_changed:
        listed = "\n  ".join(
            f"{out / 'runs' / name}: {'; '.join(changes)}" for name, changes in stale.items()
        )
        raise ConfigError(
            f"compare: {len(stale)} run(s) in {out} were made with other settings than this "
            f"comparison's:\n  {listed}\nPass --rerun-changed to run them again (their "
            "directories are replaced), or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    bars = not quiet and sys.stderr.isatty()
    for cell in tqdm(cells, desc="compare", unit="run", dynamic_ncols=True, disable=not bars):
        run_dir = RunDir(out / "runs" / cell.name)
        if cell.name in stale:
            shutil.rmtree(run_dir.path)
        elif run_dir.finished:
            continue
        run(cell.config, run_dir.path, resume=run_dir.started, echo=lambda _: None)
    rows = aggregate(cells, out)
    echo(write_tables(rows, out, skipped))
    for path in plot_curves(rows, out) + plot_fronts(cells, out):
        echo(f"plot: {path}")
    return rows
