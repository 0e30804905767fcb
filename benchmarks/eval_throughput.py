"""Candidates/s of in-place evaluation vs deepcopy-and-mask, and the per-candidate time
spent outside the forward pass.

Run: ``.venv/bin/python benchmarks/eval_throughput.py`` (``make bench``). Figures are
measured side by side in one run (the three ways alternate, median of repeats), on one
torch thread, budget sparsity 0.9 at weight granularity, accuracy fitness.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.fitness import accuracy
from searchprune.problem import Problem
from searchprune.runtime import prepare_process
from searchprune.tasks.builtin import load_builtin_task


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(task_name: str, candidates: int, repeats: int) -> dict[str, float]:
    problem = Problem(
        load_builtin_task(task_name), budget=Budget("sparsity", 0.9), fitness=accuracy
    )
    genomes = problem.space.repair(problem.space.sample(np.random.default_rng(0), candidates))
    inputs, targets = problem.val.first_batch()
    model = problem.model

    def in_place() -> None:
        LocalEvaluator(problem, cache=False).evaluate(genomes)

    @torch.inference_mode()
    def forward_only() -> None:
        for _ in range(candidates):
            logits = model(inputs)
            float((logits.argmax(dim=1) == targets).float().mean())
            float(problem.task.loss(logits, targets))

    @torch.inference_mode()
    def deepcopy_and_mask() -> None:
        for genome in genomes:
            copied = copy.deepcopy(model)
            modules = dict(copied.named_modules())
            masks = problem.space.decode(genome)
            for name, mask in masks.weights.items():
                modules[name].weight.mul_(mask)  # type: ignore[operator]
            logits = copied(inputs)
            float((logits.argmax(dim=1) == targets).float().mean())
            float(problem.task.loss(logits, targets))

    times: dict[str, list[float]] = {"in_place": [], "forward": [], "deepcopy": []}
    for _ in range(repeats):
        times["in_place"].append(_timed(in_place))
        times["forward"].append(_timed(forward_only))
        times["deepcopy"].append(_timed(deepcopy_and_mask))
    median = {key: statistics.median(values) / candidates for key, values in times.items()}
    return {
        "in_place_per_s": 1.0 / median["in_place"],
        "deepcopy_per_s": 1.0 / median["deepcopy"],
        "forward_ms": 1e3 * median["forward"],
        "outside_forward_share": (median["in_place"] - median["forward"]) / median["forward"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits-mlp", "mnist1d-cnn"])
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prepare_process(1)
    print(
        f"{'task':<14}{'in-place/s':>12}{'deepcopy/s':>12}{'speedup':>9}{'forward ms':>12}"
        f"{'outside/forward':>17}"
    )
    for name in args.tasks:
        row = measure(name, args.candidates, args.repeats)
        print(
            f"{name:<14}{row['in_place_per_s']:>12.0f}{row['deepcopy_per_s']:>12.0f}"
            f"{row['in_place_per_s'] / row['deepcopy_per_s']:>8.2f}x{row['forward_ms']:>12.3f}"
            f"{100 * row['outside_forward_share']:>16.1f}%"
        )


if __name__ == "__main__":
    main()
