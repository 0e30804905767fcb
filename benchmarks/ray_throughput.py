"""Candidates/s of the Ray evaluator with 1 and 2 actors against in-process evaluation.

Run: ``.venv/bin/python benchmarks/ray_throughput.py`` on an otherwise idle machine (the
three ways are measured side by side in one run, after a warm-up, on the same genomes).
Parallel efficiency = (2-actor rate) / (2 x 1-actor rate).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray

from searchprune.core.budget import Budget
from searchprune.evaluate import Evaluator, LocalEvaluator
from searchprune.evaluate.ray import RayEvaluator
from searchprune.problem import Problem
from searchprune.runtime import prepare_process
from searchprune.tasks.builtin import load_builtin_task


def rate(evaluator: Evaluator, genomes: np.ndarray, repeats: int) -> float:
    evaluator.evaluate(genomes[:32])  # warm-up: actors loaded, chunk size adapted
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        evaluator.evaluate(genomes)
        best = max(best, len(genomes) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["mnist1d-cnn", "digits-cnn"])
    parser.add_argument("--candidates", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prepare_process(1)
    print(
        f"{'task':<14}{'local/s':>9}{'1 actor/s':>11}{'2 actors/s':>12}{'2 vs 1':>8}"
        f"{'efficiency':>12}{'2 vs local':>12}"
    )
    for name in args.tasks:
        problem = Problem(load_builtin_task(name), budget=Budget("sparsity", 0.9))
        genomes = problem.space.sample(np.random.default_rng(0), args.candidates)
        local = rate(LocalEvaluator(problem, cache=False), genomes, args.repeats)
        rates = []
        for actors in (1, 2):
            evaluator = RayEvaluator(problem, actors=actors, cache=False)
            rates.append(rate(evaluator, genomes, args.repeats))
            evaluator.close()
        assert not ray.is_initialized()
        one, two = rates
        print(
            f"{name:<14}{local:>9.0f}{one:>11.0f}{two:>12.0f}{two / one:>7.2f}x"
            f"{two / (2 * one):>12.2f}{two / local:>11.2f}x"
        )


if __name__ == "__main__":
    main()
