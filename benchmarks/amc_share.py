"""Where an AMC episode's wall time goes: the agent (acting and training) vs evaluation.

Run: ``.venv/bin/python benchmarks/amc_share.py`` (one torch thread). Drives the ``amc``
searcher like the run loop does, on channel pruning at half the FLOPs, and times the
three phases of every round side by side: ``ask`` (the agent walks ``population``
episodes through the environment, action wall included), ``evaluate`` (the evaluator
scores the episodes' masks) and ``tell`` (replay buffer and gradient updates).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.problem import Problem
from searchprune.runtime import prepare_process
from searchprune.search import make_searcher
from searchprune.tasks.builtin import load_builtin_task


def measure(task: str, episodes: int, population: int, warmup: int) -> dict[str, float]:
    problem = Problem(load_builtin_task(task), budget=Budget("flops", 0.5), granularity="channel")
    amc = make_searcher(
        "amc", problem.space, seed=0, problem=problem, population=population, warmup=warmup
    )
    evaluator = LocalEvaluator(problem, cache=False)
    spent = {"ask": 0.0, "evaluate": 0.0, "tell": 0.0}
    for _ in range(episodes // population):
        start = time.perf_counter()
        genomes = amc.ask(population)
        asked = time.perf_counter()
        results = evaluator.evaluate(genomes)
        evaluated = time.perf_counter()
        amc.tell(np.stack([r.genome for r in results]), np.array([r.fitness for r in results]))
        spent["ask"] += asked - start
        spent["evaluate"] += evaluated - asked
        spent["tell"] += time.perf_counter() - evaluated
    total = sum(spent.values())
    return {key: value / total for key, value in spent.items()} | {
        "ms_per_episode": 1e3 * total / (episodes // population * population)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits-cnn", "mnist1d-cnn"])
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    prepare_process(1)
    print(f"{'task':<14}{'ms/episode':>12}{'evaluate':>10}{'agent acts':>12}{'agent learns':>14}")
    for task in args.tasks:
        row = measure(task, args.episodes, args.population, args.warmup)
        print(
            f"{task:<14}{row['ms_per_episode']:>12.2f}{100 * row['evaluate']:>9.1f}%"
            f"{100 * row['ask']:>11.1f}%{100 * row['tell']:>13.1f}%"
        )


if __name__ == "__main__":
    main()
