"""The figures of docs/compare-deep.md, read from the run directories the deep compare
configs write (no run is started here).

- ``--compare DIR`` (configs/compare/deep.yaml): the goals of issue 12 per task and
  budget (each searcher's mean test accuracy against the best one-shot baseline, before
  and after fine-tuning), how often re-scoring on the selection split changed the pick,
  and a bar chart per task (``deep_<task>.png`` in ``--img``);
- ``--longer DIR`` (configs/compare/deep-1000.yaml, with ``--compare``): the same goals
  at 1000 unique evaluations, against the baselines of ``--compare``, every searcher at
  300 and at 1000 side by side, and the bar charts (``deep_<task>_1000.png``);
- ``--spaces DIR...`` (configs/compare/deep-spaces.yaml, one directory per space):
  val and test accuracy per space and searcher;
- ``--fidelity FULL FIDELITY`` (configs/compare/deep-fidelity.yaml without and with
  ``evaluator.fidelity``): the forward-pass samples (BatchNorm calibration and scoring)
  each run spent until its best val fitness first reached the best the full-fidelity
  run found.

Run: ``.venv/bin/python benchmarks/deep_report.py --compare runs/compare-deep
--longer runs/compare-deep-1000 --spaces
runs/deep-spaces-layer-ratios runs/deep-spaces-reference-ratios
runs/deep-spaces-depth-schedule --fidelity runs/deep-full runs/deep-fidelity``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from searchprune.report import save_figure

SEARCHERS = ("ga", "nsga2", "pso", "sa", "cmaes", "random", "amc")


def summaries(root: Path) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(task, budget, method) -> the summaries of its seeds."""
    found: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(root.glob("runs/*/*/*/summary.json")):
        summary = json.loads(path.read_text())
        if not summary.get("finished", True):
            continue
        task, budget, cell = path.parts[-4:-1]
        found[(task, budget, cell.rsplit("-s", 1)[0])].append(summary)
    return found


def is_baseline(method: str) -> bool:
    return method not in SEARCHERS and not method.endswith("-cold")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def pm(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def tested(runs: list[dict[str, Any]], tuned: bool = False) -> list[float]:
    if tuned:
        return [r["best"]["finetuned"]["test_accuracy"] for r in runs if "finetuned" in r["best"]]
    return [r["best"]["test_accuracy"] for r in runs]


def goals(found: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str:
    """Per task and budget: the best baseline, every searcher warm and cold, before and
    after fine-tuning."""
    lines = [
        "| task | budget | best baseline (test) | best baseline tuned | searcher | warm test | "
        "cold test | warm - best baseline | warm tuned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(task, budget) for task, budget, _ in found})
    for task, budget in cells:
        baselines = {
            m: runs
            for (t, b, m), runs in found.items()
            if (t, b) == (task, budget) and is_baseline(m)
        }
        if not baselines:
            continue
        best = max(baselines, key=lambda m: statistics.fmean(tested(baselines[m])))
        best_tuned = max(
            baselines, key=lambda m: statistics.fmean(tested(baselines[m], True) or [0.0])
        )
        floor = statistics.fmean(tested(baselines[best]))
        for name in SEARCHERS:
            warm, cold = found.get((task, budget, name)), found.get((task, budget, name + "-cold"))
            if not warm:
                continue
            gap = 100 * (statistics.fmean(tested(warm)) - floor)
            lines.append(
                f"| {task} | {budget} | {best} {pm(tested(baselines[best]))} | {best_tuned} "
                f"{pm(tested(baselines[best_tuned], True))} | {name} | {pm(tested(warm))} | "
                f"{pm(tested(cold)) if cold else '-'} | {gap:+.1f} | {pm(tested(warm, True))} |"
            )
    return "\n".join(lines)


def selection(found: dict[tuple[str, str, str], list[dict[str, Any]]]) -> str:
    """How often re-scoring the top candidates changed the pick, and its effect on test."""
    lines = [
        "| task | budget | runs | pick changed | test of the pick - test of the val best |",
        "|---|---|---|---|---|",
    ]
    grouped: dict[tuple[str, str], list[tuple[bool, float]]] = defaultdict(list)
    for (task, budget, _), runs in found.items():
        for run in runs:
            chosen = run.get("selection")
            if chosen is None:
                continue
            gain = (
                run["best"]["test_accuracy"] - chosen["val_best_test_accuracy"]
                if chosen["changed"]
                else 0.0
            )
            grouped[(task, budget)].append((chosen["changed"], gain))
    for (task, budget), rows in sorted(grouped.items()):
        changed = [gain for moved, gain in rows if moved]
        effect = f"{100 * statistics.fmean(changed):+.2f} points (mean)" if changed else "-"
        share = 100 * len(changed) / len(rows)
        lines.append(
            f"| {task} | {budget} | {len(rows)} | {len(changed)} ({share:.0f}%) | {effect} |"
        )
    return "\n".join(lines)


def bars(
    found: dict[tuple[str, str, str], list[dict[str, Any]]],
    img: Path,
    tuned: bool = False,
    suffix: str = "",
) -> list[Path]:
    """Test accuracy before (or after) fine-tuning: every searcher warm and cold and the
    three best baselines, per budget, one PNG per task (``deep_<task><suffix>.png``)."""
    paths = []
    img.mkdir(parents=True, exist_ok=True)
    for task in sorted({t for t, _, _ in found}):
        budgets = sorted({b for t, b, _ in found if t == task}, reverse=True)
        baselines = sorted(
            {m for t, _, m in found if t == task and is_baseline(m)},
            key=lambda m: -statistics.fmean(
                statistics.fmean(tested(found[(task, b, m)]))
                for b in budgets
                if (task, b, m) in found
            ),
        )[:3]
        methods = [*SEARCHERS, *(s + "-cold" for s in SEARCHERS), *baselines]
        methods = [m for m in methods if any((task, b, m) in found for b in budgets)]
        figure, axes = plt.subplots(figsize=(10, 4.2))
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            means, stds = [], []
            for budget in budgets:
                values = tested(found.get((task, budget, method), []), tuned) or [float("nan")]
                mean, std = mean_std(values)
                means.append(100 * mean)
                stds.append(100 * std)
            hatch = "//" if method.endswith("-cold") else None
            axes.bar(
                np.arange(len(budgets)) + i * width, means, width, yerr=stds, capsize=2,
                label=method, hatch=hatch,
            )
        axes.set_xticks(np.arange(len(budgets)) + 0.4 - width / 2, budgets)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        when = "after" if tuned else "before"
        paths.append(
            save_figure(
                figure,
                axes,
                img / f"deep_{task}{suffix}{'_tuned' if tuned else ''}.png",
                title=f"{task}{suffix.replace('_', ' ')}: test accuracy {when} fine-tuning "
                "(mean ± std over seeds)",
                xlabel="budget (hatched: searcher without warm start)",
                ylabel="test accuracy %",
                legend=None,
            )
        )
    return paths


def longer(
    short: dict[tuple[str, str, str], list[dict[str, Any]]],
    long: dict[tuple[str, str, str], list[dict[str, Any]]],
) -> str:
    """Every searcher warm and cold at 300 and at 1000 unique evaluations: test accuracy
    before fine-tuning (mean ± std over seeds), and val, which the search maximises."""
    lines = [
        "| task | budget | searcher | warm 300 | warm 1000 | cold 300 | cold 1000 | "
        "warm val 300 / 1000 | warm 1000 tuned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def val(runs: list[dict[str, Any]] | None) -> str:
        return pm([r["best"]["val_accuracy"] for r in runs]) if runs else "-"

    for task, budget in sorted({(t, b) for t, b, _ in long}):
        for name in SEARCHERS:
            key, cold = (task, budget, name), (task, budget, name + "-cold")
            if key not in long:
                continue
            cells = [
                pm(tested(runs)) if runs else "-"
                for runs in (short.get(key), long[key], short.get(cold), long.get(cold))
            ]
            lines.append(
                f"| {task} | {budget} | {name} | {' | '.join(cells)} | "
                f"{val(short.get(key))} / {val(long[key])} | {pm(tested(long[key], True))} |"
            )
    return "\n".join(lines)


def spaces(roots: list[Path]) -> str:
    lines = ["| task | budget | searcher | " + " | ".join(r.name for r in roots) + " |"]
    lines.append("|---|---|---|" + "---|" * len(roots))
    tables = [summaries(root) for root in roots]
    keys = sorted({key for table in tables for key in table})
    for task, budget, method in keys:
        row = [task, budget, method]
        for table in tables:
            runs = table.get((task, budget, method))
            if runs:
                val = [r["best"]["val_accuracy"] for r in runs]
                row.append(f"val {pm(val)} / test {pm(tested(runs))}")
            else:
                row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def samples_to_reach(history: Path, target: float, cost: float) -> tuple[float | None, float]:
    """Forward samples spent until the best full-fidelity fitness first reached
    ``target`` (None if never), and in all; ``cost`` is a full evaluation's samples."""
    spent, reached = 0.0, None
    best = -np.inf
    for line in history.open():
        row = json.loads(line)
        if row["cached"]:
            continue
        spent += row.get("forward_samples", cost)
        if row.get("fidelity", 1.0) == 1.0:
            best = max(best, row["fitness"])
        if reached is None and best >= target - 1e-12:
            reached = spent
    return reached, spent


def fidelity(full: Path, shard: Path) -> str:
    lines = [
        "| task | budget | seed | best val (full) | samples to reach it: full | with fidelity "
        "| fewer | best val with fidelity | samples spent in all: full / fidelity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(full.glob("runs/*/*/*/summary.json")):
        run = path.parent
        other = shard / run.relative_to(full)
        if not (other / "summary.json").exists():
            continue
        summary = json.loads(path.read_text())
        rows = [json.loads(line) for line in (run / "history.jsonl").open()]
        target = summary["best"]["val_fitness"]
        task = run.parts[-3]
        cost = {"mnist1d-resnet": 800 + 512, "digits-deepcnn": 270 + 512}[task]
        reached_full, all_full = samples_to_reach(run / "history.jsonl", target, cost)
        reached, all_shard = samples_to_reach(other / "history.jsonl", target, cost)
        ratio = f"{reached_full / reached:.1f}x" if reached and reached_full else "never reached"
        shard_best = json.loads((other / "summary.json").read_text())["best"]["val_fitness"]
        assert len(rows) >= 1
        lines.append(
            f"| {task} | {run.parts[-2]} | {run.name.rsplit('-s', 1)[1]} | {100 * target:.2f} | "
            f"{reached_full:,.0f} | {f'{reached:,.0f}' if reached else '-'} | {ratio} | "
            f"{100 * shard_best:.2f} | {all_full:,.0f} / {all_shard:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--longer", type=Path)
    parser.add_argument("--spaces", type=Path, nargs="*", default=[])
    parser.add_argument("--fidelity", type=Path, nargs=2)
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    if args.compare:
        found = summaries(args.compare)
        print("## goals\n" + goals(found) + "\n")
        print("## selection\n" + selection(found) + "\n")
        for path in bars(found, args.img) + bars(found, args.img, tuned=True):
            print(f"plot: {path}")
    if args.longer:
        if not args.compare:
            parser.error("--longer needs --compare (the 300-evaluation grid and its baselines)")
        long = summaries(args.longer)
        with_baselines = {**{k: v for k, v in found.items() if is_baseline(k[2])}, **long}
        print("## 1000 evaluations: goals\n" + goals(with_baselines) + "\n")
        print("## 300 against 1000\n" + longer(found, long) + "\n")
        for path in bars(with_baselines, args.img, suffix="_1000"):
            print(f"plot: {path}")
    if args.spaces:
        print("\n## spaces\n" + spaces(args.spaces))
    if args.fidelity:
        print("\n## fidelity\n" + fidelity(*args.fidelity))


if __name__ == "__main__":
    main()
