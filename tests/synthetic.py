"""A synthetic search problem shared by the searcher tests: spaces over DigitsResNet's
channel groups with a FLOPs budget, and a fitness with a known optimum (minus the mean
distance to a fixed repaired genome). No model is evaluated, so searchers run fast."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.problem import Problem
from searchprune.search import SEARCHERS, Searcher
from searchprune.space import BinarySpace, Space
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsResNet

Fitness = Callable[[np.ndarray], float]

_PROBLEMS: dict[type[Space], Problem] = {}


def make_space(kind: type[Space]) -> Space:
    """A fresh space of ``kind`` (and the problem around it, for searchers that need it)."""
    torch.manual_seed(0)
    model = DigitsResNet()
    inputs = torch.randn(8, 64)
    task = Task(
        model,
        (inputs, torch.zeros(8, dtype=torch.long)),
        (inputs, torch.zeros(8, dtype=torch.long)),
    )
    name = "binary" if kind is BinarySpace else "layer-ratios"
    problem = Problem(
        task, budget=Budget("flops", 0.5), space=name, granularity="channel", bn_samples=0
    )
    _PROBLEMS[kind] = problem
    return problem.space


def distance_fitness(space: Space) -> Fitness:
    """Minus the mean distance to a fixed repaired genome: the optimum is known."""
    target = space.repair(space.sample(np.random.default_rng(123), 1))[0].astype(np.float64)
    return lambda genome: -float(np.abs(genome.astype(np.float64) - target).mean())


def make(name: str, space: Space, seed: int, **params: object) -> Searcher:
    """The registered searcher ``name`` (:func:`rounds` repairs in its budget mode)."""
    cls = SEARCHERS.get(name)
    if space.kind not in cls.space_kinds:
        pytest.skip(f"{name} does not search {space.kind} genomes")
    problem = next(p for p in _PROBLEMS.values() if p.space is space)
    return cls.create(space, cls.Params.model_validate(params), seed, problem)


def rounds(
    searcher: Searcher, fitness: Fitness, evals: int, sizes: Iterator[int] | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Drive ``searcher`` like the run loop; yield each batch's asked genomes and scores.

    ``sizes`` overrides how many genomes each ask requests (default: ``batch_size``).
    """
    done = 0
    while done < evals:
        want = min(next(sizes) if sizes else searcher.batch_size, evals - done)
        asked = searcher.ask(want)
        assert 1 <= len(asked) <= want
        repaired = searcher.space.repair(asked, searcher.budget_mode)
        scores = np.array([fitness(genome) for genome in repaired])
        figures = searcher.space.figures(repaired)
        metrics = [{k: float(v[i]) for k, v in figures.items()} for i in range(len(repaired))]
        searcher.tell(repaired, scores, metrics)
        done += len(asked)
        yield asked, scores


def scores(searcher: Searcher, fitness: Fitness, evals: int) -> list[float]:
    """Every score of a run of ``evals`` evaluations, in order."""
    return [float(s) for _, batch in rounds(searcher, fitness, evals) for s in batch]
