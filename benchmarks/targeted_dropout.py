"""Claim (d), Gomez et al. 2019: a network trained with targeted dropout loses far less
accuracy under post-hoc magnitude pruning than one trained without dropout or with
standard dropout.

Run: ``.venv/bin/python benchmarks/targeted_dropout.py [--out DIR]``. Every variant
trains the task's architecture from scratch (same seeded init, same steps, Adam), then
the globally lowest-``|w|`` weights are removed at each sparsity (chosen on weights
alone, no data) and the model is scored on the *test* split without fine-tuning.
Prints mean test accuracy over seeds per sparsity and saves ``accuracy.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners.oneshot import global_masks_from_scores
from searchprune.pruners.targeted_dropout import TargetedDropout, WeightDropout
from searchprune.pruners.training import magnitude_scores, reinitialize, trained_copy
from searchprune.tasks.base import Task, score_model
from searchprune.tasks.builtin import load_builtin_task

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
VARIANTS: dict[str, tuple[type[WeightDropout], dict[str, Any]]] = {
    "no dropout": (WeightDropout, {"drop_rate": 0.0}),
    "weight dropout a=.5": (WeightDropout, {"drop_rate": 0.5}),
    "targeted g=.5 a=.5": (TargetedDropout, {"targeting": 0.5, "drop_rate": 0.5}),
    "targeted g=.75 a=.66": (TargetedDropout, {"targeting": 0.75, "drop_rate": 0.66}),
    "ramp g=.9 a=.75": (TargetedDropout, {"targeting": 0.9, "drop_rate": 0.75, "ramp": True}),
}


def pruned_accuracies(task: Task, method: WeightDropout) -> list[float]:
    """Train from scratch with ``method``'s dropout, then test accuracy at each sparsity."""
    problem = Problem(task, budget=Budget("sparsity", 0.5))
    model = method.fit(problem, reinitialize(trained_copy(problem), method.seed))
    trained = Problem(replace(task, model=model), budget=problem.budget)
    test = task.split("test")
    accuracies = []
    for sparsity in SPARSITIES:
        masks = trained.dense()
        if sparsity > 0:
            scores = magnitude_scores(trained, trained.model)
            masks = global_masks_from_scores(trained, scores, Budget("sparsity", sparsity))
        with trained.masked(masks) as masked:
            accuracies.append(score_model(masked, test).accuracy)
    return accuracies


def report(curves: dict[str, list[float]], sparsities: list[float], title: str, out: Path) -> None:
    """Print a table (rows: variants, columns: sparsity) and save ``accuracy.png``."""
    print(f"{'variant':<24}" + "".join(f"{s:>8.3f}" for s in sparsities))
    for name, values in curves.items():
        print(f"{name:<24}" + "".join(f"{100 * v:>8.1f}" for v in values))
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        axes.plot(sparsities, [100 * v for v in values], marker="o", label=name)
    axes.set(xlabel="sparsity", ylabel="test accuracy (%)", title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "accuracy.png", dpi=120)
    print(f"saved {out / 'accuracy.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-targeted_dropout"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_builtin_task(args.task)
    curves = {}
    for name, (cls, options) in VARIANTS.items():
        runs = [
            pruned_accuracies(
                task, cls(cls.Params(epochs=args.epochs, from_scratch=True, **options), seed)
            )
            for seed in range(args.seeds)
        ]
        curves[name] = [sum(column) / len(column) for column in zip(*runs, strict=True)]
    title = f"{args.task}: magnitude pruning, no fine-tuning ({args.seeds} seeds)"
    report(curves, list(SPARSITIES), title, args.out)


if __name__ == "__main__":
    main()
