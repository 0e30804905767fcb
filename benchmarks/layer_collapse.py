"""Claim (c): pruning at initialization to extreme compression, SynFlow keeps the network
trainable where magnitude and SNIP collapse a layer (Tanaka et al. 2020, "Pruning neural
networks without any data by iteratively conserving synaptic flow").

Run: ``.venv/bin/python benchmarks/layer_collapse.py [--out DIR]``. For each density
(fraction of weights kept, every Linear/Conv layer prunable, the output layer too), the
freshly initialized network is pruned globally by each criterion, then trained with the
mask held fixed; the table shows test accuracy after training, and ``*`` marks a
collapsed network (some layer with no weight left: no signal can pass). SynFlow iterates
to each target density (100 rounds, exponential schedule), as in the paper.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from searchprune.core.budget import Budget
from searchprune.criteria import saliency
from searchprune.finetune import finetune
from searchprune.problem import Problem
from searchprune.pruners import make_method
from searchprune.report import save_figure
from searchprune.tasks.base import Task, score_model
from searchprune.tasks.builtin import load_builtin_task

DENSITIES = (1e-1, 10**-1.5, 1e-2, 10**-2.5, 1e-3)
CRITERIA = ("magnitude", "snip", "synflow")


def initialized(task: Task, seed: int) -> Task:
    """The task with its model re-initialized (pruning at initialization)."""
    torch.manual_seed(seed)
    for module in task.model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return task


def run(task_name: str, epochs: int) -> dict[str, list[tuple[float, bool]]]:
    task = initialized(load_builtin_task(task_name), seed=0)
    results: dict[str, list[tuple[float, bool]]] = {name: [] for name in CRITERIA}
    for density in DENSITIES:
        saliency.SYNFLOW_DENSITY = density
        problem = Problem(
            task,
            budget=Budget("sparsity", 1.0 - density),
            exclude_output=False,
            max_ratio=1.0,
            bn_samples=0,
        )
        for name in CRITERIA:
            masks = make_method(f"{name}-global").run(problem).masks
            collapsed = any(float(mask.float().sum()) == 0 for mask in masks.weights.values())
            trained = finetune(problem.model, masks, problem.train, epochs=epochs, seed=0)
            accuracy = score_model(trained, task.split("test")).accuracy
            results[name].append((accuracy, collapsed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "digits-cnn"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-collapse"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for task_name in args.tasks:
        results = run(task_name, args.epochs)
        print(f"\n{task_name}: test accuracy (%) after {args.epochs} epochs, * = collapsed")
        print(f"{'density':<10}" + "".join(f"{d:>9.4f}" for d in DENSITIES))
        for name, row in results.items():
            cells = "".join(f"{100 * a:>8.1f}{'*' if c else ' '}" for a, c in row)
            print(f"{name:<10}{cells}")
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for name, row in results.items():
            axes.plot(DENSITIES, [a for a, _ in row], "o-", label=name)
        axes.set_xscale("log")
        axes.invert_xaxis()
        save_figure(
            figure,
            axes,
            args.out / f"collapse_{task_name}.png",
            title=f"{task_name}: layer collapse at extreme compression",
            xlabel="density (fraction of weights kept), pruned at initialization",
            ylabel="test accuracy after training",
        )
    print(f"\nplots in {args.out}")


if __name__ == "__main__":
    main()
