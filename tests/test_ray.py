"""The Ray evaluator on a real local Ray instance and a real two-node loopback cluster."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.evaluate.ray import RayEvaluator
from searchprune.problem import Problem
from searchprune.tasks.base import Task

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_evaluator(digits_mlp_task: Task) -> Iterator[RayEvaluator]:
    problem = Problem(digits_mlp_task, budget=Budget("sparsity", 0.9))
    evaluator = RayEvaluator(problem, actors=2, cache=False)
    yield evaluator
    evaluator.close()
    assert not ray.is_initialized()


def test_ray_results_equal_local_results(ray_evaluator: RayEvaluator) -> None:
    problem = ray_evaluator.problem
    genomes = problem.space.sample(np.random.default_rng(0), 64)
    local = LocalEvaluator(problem, cache=False).evaluate(genomes)
    remote = ray_evaluator.evaluate(genomes)
    assert [r.fitness for r in remote] == [r.fitness for r in local]
    assert all(np.array_equal(a.genome, b.genome) for a, b in zip(remote, local, strict=True))
    assert len({r.fitness for r in remote}) > 1


def test_a_killed_actor_is_replaced_and_nothing_is_lost(ray_evaluator: RayEvaluator) -> None:
    problem = ray_evaluator.problem
    genomes = problem.space.sample(np.random.default_rng(1), 48)
    expected = [r.fitness for r in LocalEvaluator(problem, cache=False).evaluate(genomes)]
    replaced = ray_evaluator.replaced
    ray.kill(ray_evaluator.actors[0])
    time.sleep(1.0)  # let the kill land before the next chunk is sent
    results = ray_evaluator.evaluate(genomes)
    assert [r.fitness for r in results] == expected
    assert ray_evaluator.replaced == replaced + 1
