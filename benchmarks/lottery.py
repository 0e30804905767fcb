"""Claim (g), Frankle & Carbin 2019 / Frankle et al. 2019: sparse subnetworks found by
iterative magnitude pruning and rewound to early weights ``θ_k`` retrain to the dense
network's accuracy at 10-20% density; the same masks with randomly re-initialized
weights do not.

Run: ``.venv/bin/python benchmarks/lottery.py [--out DIR]``. The ``lottery`` method
(seeded init, dense training, ``rounds`` rounds of global magnitude pruning on the
trained weights, each removing the same share of the survivors, then rewind and
retrain) runs with ``reinit`` off and on from the same init and dense run, so both
see the same first mask. Masks come from weights only; after each round the retrained
subnetwork is scored on the *test* split (round 0: the dense network). Prints mean test
accuracy over seeds per density and saves ``accuracy.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.core.masks import MaskSet
from searchprune.problem import Problem
from searchprune.pruners.lottery import Lottery
from searchprune.tasks.base import Split, score_model
from searchprune.tasks.builtin import load_builtin_task
from targeted_dropout import report


class TestScored(Lottery):
    """``lottery`` that also records each round's test accuracy (for this report only)."""

    test: Split

    def round_info(self, problem: Problem, model: nn.Module, masks: MaskSet) -> dict[str, Any]:
        return super().round_info(problem, model, masks) | {
            "test_accuracy": score_model(model, self.test).accuracy
        }


def rounds(problem: Problem, test: Split, seed: int, **options: Any) -> list[dict[str, Any]]:
    method = TestScored(Lottery.Params(**options), seed)
    method.test = test
    history: list[dict[str, Any]] = method.run(problem).info["rounds"]
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rewind-epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lottery"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_builtin_task(args.task)
    problem = Problem(task, budget=Budget("sparsity", args.sparsity))
    test = task.split("test")
    settings = {"epochs": args.epochs, "rounds": args.rounds, "rewind_epochs": args.rewind_epochs}
    curves, densities = {}, []
    for name, reinit in (("rewound to theta_k", False), ("random reinit", True)):
        runs = [
            rounds(problem, test, seed, reinit=reinit, **settings) for seed in range(args.seeds)
        ]
        densities = [1.0 - r["sparsity"] for r in runs[0]]
        curves[name] = [
            sum(run[i]["test_accuracy"] for run in runs) / len(runs) for i in range(len(densities))
        ]
    curves["dense (round 0)"] = [curves["rewound to theta_k"][0]] * len(densities)
    print("columns: density (kept share of prunable weights); cells: test accuracy %")
    title = f"{args.task}: lottery tickets, k={args.rewind_epochs} epochs ({args.seeds} seeds)"
    report(curves, densities, title, args.out)


if __name__ == "__main__":
    main()
