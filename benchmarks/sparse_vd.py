"""Claim e: sparse variational dropout compresses digits-mlp at least 20x with at most one
point of test-accuracy loss (Molchanov et al. 2017 report 68x on LeNet-300-100 / MNIST).

Run: ``.venv/bin/python benchmarks/sparse_vd.py`` (one torch thread). Fine-tunes the
trained digits-mlp with sparse VD, then scores on the test split (a) the paper's rule,
weights with ``log α > 3`` removed, and (b) the masks at the 95% sparsity budget (20x)
keeping the lowest ``log α``. Both masks come from training alone; test data only score.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet, apply_masks
from searchprune.problem import Problem
from searchprune.pruners.oneshot import global_masks_from_scores
from searchprune.pruners.variational import SparseVD, SparseVDParams, threshold_keep
from searchprune.tasks.base import score_model
from searchprune.tasks.builtin import load_builtin_task


def masked_accuracy(model: torch.nn.Module, masks: MaskSet, test: object) -> float:
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks)
    return score_model(pruned, test).accuracy  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sparse_vd"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_builtin_task(args.task)
    test = task.split("test")
    problem = Problem(task, budget=Budget("sparsity", args.sparsity))
    dense = score_model(problem.model, test).accuracy
    rows = []
    for seed in args.seeds:
        model, alphas, _ = SparseVD(SparseVDParams(epochs=args.epochs), seed).fit(problem)
        keep = threshold_keep(alphas, 3.0)
        compression = sum(k.numel() for k in keep.values()) / sum(
            int(k.sum()) for k in keep.values()
        )
        budget = global_masks_from_scores(problem, {n: -a for n, a in alphas.items()})
        budget_compression = 1.0 / (1.0 - problem.exact_stats(budget)["sparsity"])
        rows.append(
            (
                seed,
                compression,
                masked_accuracy(model, MaskSet("weight", keep), test),
                budget_compression,
                masked_accuracy(model, budget, test),
            )
        )
    print(f"dense test accuracy {100 * dense:.2f}%  ({args.task}, {args.epochs} epochs)")
    print(
        f"{'seed':>4}{'log α>3: x':>12}{'test acc':>10}{'drop':>7}"
        f"{'budget: x':>11}{'test acc':>10}{'drop':>7}"
    )
    for seed, cx, cacc, bx, bacc in rows:
        print(
            f"{seed:>4}{cx:>12.1f}{100 * cacc:>10.2f}{100 * (dense - cacc):>7.2f}"
            f"{bx:>11.1f}{100 * bacc:>10.2f}{100 * (dense - bacc):>7.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([r[1] for r in rows], [100 * r[2] for r in rows], label="log α > 3")
    ax.scatter([r[3] for r in rows], [100 * r[4] for r in rows], label=f"budget {args.sparsity}")
    ax.axhline(100 * dense, color="gray", linestyle="--", label="dense")
    ax.axhline(100 * dense - 1, color="gray", linestyle=":", label="dense − 1 pt")
    ax.set(xscale="log", xlabel="compression (x)", ylabel="test accuracy (%)", title=args.task)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "sparse_vd.png", dpi=120)
    print(f"wrote {args.out / 'sparse_vd.png'}")


if __name__ == "__main__":
    main()
