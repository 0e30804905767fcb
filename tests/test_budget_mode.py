"""The repair mode is an explicit argument: the searcher states it, the evaluator
repairs in it, and nothing changes a Problem it was handed."""

from __future__ import annotations

import numpy as np
import pytest

from envs import LayerPruningEnv
from searchprune import Budget, Problem, Task
from searchprune.evaluate import LocalEvaluator
from searchprune.search import make_searcher


@pytest.fixture(scope="module")
def problem(digits_mlp_task: Task) -> Problem:
    return Problem(digits_mlp_task, budget=Budget("sparsity", 0.8), granularity="weight")


def _sparsities(evaluator: LocalEvaluator, genomes: np.ndarray) -> np.ndarray:
    return np.array([r.evaluation.metrics["sparsity"] for r in evaluator.evaluate(genomes)])


def test_bound_mode_keeps_genomes_within_the_budget_and_exact_mode_moves_them(
    problem: Problem,
) -> None:
    space = problem.space
    sparse = np.full((1, space.dim), 0.95)  # within the budget (more than 80% removed)
    assert np.abs(space.repair(sparse, "bound") - sparse).max() < 0.01
    assert space.repair(sparse, "exact").mean() < 0.9  # moved back onto 80%
    dense = np.full((1, space.dim), 0.1)  # over the budget: both modes repair it
    np.testing.assert_array_equal(space.repair(dense, "bound"), space.repair(dense, "exact"))
    with pytest.raises(ValueError, match="budget mode"):
        space.repair(dense, "loose")  # type: ignore[arg-type]


def test_nsga2_through_the_python_api_explores_below_the_budget(problem: Problem) -> None:
    searcher = make_searcher("nsga2", problem.space, seed=0, population=16)
    assert searcher.budget_mode == "bound"
    genomes = searcher.ask(16)
    bound = _sparsities(LocalEvaluator(problem, budget_mode=searcher.budget_mode), genomes)
    exact = _sparsities(LocalEvaluator(problem), genomes)
    assert bound.min() >= 0.8 - 1e-9 and bound.max() > 0.85  # sparser candidates kept
    np.testing.assert_allclose(exact, 0.8, atol=2e-3)  # all moved onto the budget


def test_the_environment_leaves_the_problem_it_was_handed_unchanged(problem: Problem) -> None:
    genomes = problem.space.sample(np.random.default_rng(0), 8)
    before = _sparsities(LocalEvaluator(problem), genomes)
    env = LayerPruningEnv(problem)
    assert env.evaluator is not None and env.evaluator.budget_mode == "bound"
    np.testing.assert_array_equal(_sparsities(LocalEvaluator(problem), genomes), before)
