"""Claims (a) and (b) of the pruning literature, on the built-in tasks, no fine-tuning:

(a) weight pruning degrades more slowly than unit (neuron/channel) pruning as sparsity
    grows (the pruning-challenge seed);
(b) global magnitude pruning beats layer-wise magnitude pruning at high sparsity (the
    glossary seed: Karnin 1990, Reed 1993, Lee et al. 2019).

Run: ``.venv/bin/python benchmarks/pruning_curves.py [--out DIR]``. Prints test accuracy
per sparsity for each variant and saves ``curves_<task>.png``. Masks come from the
weights alone (train/val are not even needed); test accuracy is only reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.pruners import make_method
from searchprune.report import save_figure
from searchprune.tasks.base import score_model
from searchprune.tasks.builtin import load_builtin_task

SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
VARIANTS = {  # name: (granularity, method)
    "weight, global": ("weight", "magnitude-global"),
    "weight, layer-wise": ("weight", "magnitude-layer"),
    "unit, global": ("channel", "magnitude-global"),
    "unit, layer-wise": ("channel", "magnitude-layer"),
}


def curve(task_name: str, granularity: str, method: str) -> list[float]:
    """Test accuracy of ``method``'s masks at each sparsity."""
    task = load_builtin_task(task_name)
    test = task.split("test")
    accuracies = []
    for sparsity in SPARSITIES:
        problem = Problem(
            task,
            budget=Budget("sparsity", sparsity),
            granularity=granularity,
            exclude_output=True,
            max_ratio=1.0,
        )
        with problem.masked(make_method(method).run(problem).masks) as model:
            accuracies.append(score_model(model, test).accuracy)
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "mnist1d-mlp"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-curves"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for task_name in args.tasks:
        results = {name: curve(task_name, *variant) for name, variant in VARIANTS.items()}
        print(f"\n{task_name}: test accuracy (%) by sparsity of the prunable layers")
        print(f"{'variant':<20}" + "".join(f"{s:>7.2f}" for s in SPARSITIES))
        for name, accuracies in results.items():
            print(f"{name:<20}" + "".join(f"{100 * a:>7.1f}" for a in accuracies))
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for name, accuracies in results.items():
            axes.plot(SPARSITIES, accuracies, "o-", label=name)
        save_figure(
            figure,
            axes,
            args.out / f"curves_{task_name}.png",
            title=f"{task_name}: magnitude pruning, weights vs units, global vs layer-wise",
            xlabel="sparsity of the prunable layers",
            ylabel="test accuracy (no fine-tuning)",
        )
    print(f"\nplots in {args.out}")


if __name__ == "__main__":
    main()
