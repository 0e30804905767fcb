"""Claim f: BAR meets its neuron budget exactly while keeping accuracy above uniform
channel pruning at the same budget (Lemaire et al. 2019).

Run: ``.venv/bin/python benchmarks/bar.py`` (one torch thread). For each task, at channel
granularity and a FLOPs budget: ``l0-bar`` (hard-concrete gates under the budget-aware
barrier) vs ``magnitude-layer`` (the same share of every channel group removed, lowest
L1 first), one-shot and fine-tuned for the same number of epochs. Masks come from the
train/val splits only; the test split only scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from searchprune.core.budget import Budget
from searchprune.finetune import finetune
from searchprune.problem import Problem
from searchprune.pruners import make_method
from searchprune.pruners.l0 import BarParams, L0Bar
from searchprune.tasks.base import score_model
from searchprune.tasks.builtin import load_builtin_task


def compare(task_name: str, flops: float, epochs: int, seed: int) -> dict[str, tuple[float, float]]:
    """``{method: (exact FLOPs fraction, test accuracy)}`` on one task."""
    task = load_builtin_task(task_name)
    test = task.split("test")
    problem = Problem(task, budget=Budget("flops", flops), granularity="channel", bn_samples=0)
    bar = L0Bar(BarParams(epochs=epochs), seed).run(problem)
    uniform = make_method("magnitude-layer").run(problem).masks
    kept = problem.exact_stats(uniform)["flops_fraction"]
    oneshot = finetune(problem.model, uniform, problem.train, epochs=0)
    tuned = finetune(problem.model, uniform, problem.train, epochs=epochs, seed=seed)
    return {
        "dense": (1.0, score_model(problem.model, test).accuracy),
        "l0-bar": (
            problem.exact_stats(bar.masks)["flops_fraction"],
            score_model(bar.model, test).accuracy,
        ),
        "uniform": (kept, score_model(oneshot, test).accuracy),
        "uniform+ft": (kept, score_model(tuned, test).accuracy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "digits-resnet"])
    parser.add_argument("--flops", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-bar"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: compare(name, args.flops, args.epochs, args.seed) for name in args.tasks}
    print(f"budget: flops <= {args.flops}, channel granularity, {args.epochs} epochs")
    print(f"{'task':<15}{'method':<12}{'flops':>8}{'test acc':>10}")
    for name, rows in results.items():
        for method, (kept, accuracy) in rows.items():
            print(f"{name:<15}{method:<12}{kept:>8.4f}{100 * accuracy:>9.2f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items(), strict=True):
        ax.bar(list(rows), [100 * accuracy for _, accuracy in rows.values()])
        ax.set(title=f"{name}, flops ≤ {args.flops}", ylabel="test accuracy (%)")
    fig.tight_layout()
    fig.savefig(args.out / "bar.png", dpi=120)
    print(f"wrote {args.out / 'bar.png'}")


if __name__ == "__main__":
    main()
