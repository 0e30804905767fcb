"""A synthetic search problem shared by the searcher tests: spaces over DigitsResNet's
channel groups with a FLOPs budget, and a fitness with a known optimum (minus the mean
distance to a fixed repaired genome). No model is evaluated, so searchers run fast."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.core.graph import build_dependency_graph
from searchprune.core.layers import discover_layers
from searchprune.core.units import CostModel
from searchprune.pruners.criteria import magnitude
from searchprune.search import SEARCHERS, Searcher
from searchprune.space import Space
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsResNet

Fitness = Callable[[np.ndarray], float]

torch.manual_seed(0)
_MODEL = DigitsResNet()
_LAYERS = discover_layers(_MODEL, torch.randn(1, 64))
_GRAPH = build_dependency_graph(_MODEL, torch.randn(1, 64), _LAYERS)
_NO_DATA = (torch.zeros(1, 64), torch.zeros(1))
_SCORES = magnitude(_MODEL, [la for la in _LAYERS if la.prunable], Task(_MODEL, _NO_DATA, _NO_DATA))


def make_space(kind: type[Space]) -> Space:
    return kind(CostModel(_LAYERS, _GRAPH, "channel"), Budget("flops", 0.5), _SCORES)


def distance_fitness(space: Space) -> Fitness:
    """Minus the mean distance to a fixed repaired genome: the optimum is known."""
    target = space.repair(space.sample(np.random.default_rng(123), 1))[0].astype(np.float64)
    return lambda genome: -float(np.abs(genome.astype(np.float64) - target).mean())


def make(name: str, space: Space, seed: int, **params: object) -> Searcher:
    """The registered searcher ``name``, with the space repairing as it asks."""
    cls = SEARCHERS.get(name)
    if name == "cmaes" and space.kind == "binary":
        pytest.skip("CMA-ES searches real genomes only")
    space.exact = cls.budget_mode == "exact"
    return cls(space, cls.Params.model_validate(params), seed=seed)


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
        repaired = searcher.space.repair(asked)
        scores = np.array([fitness(genome) for genome in repaired])
        figures = searcher.space.figures(repaired)
        metrics = [{k: float(v[i]) for k, v in figures.items()} for i in range(len(repaired))]
        searcher.tell(repaired, scores, metrics)
        done += len(asked)
        yield asked, scores


def scores(searcher: Searcher, fitness: Fitness, evals: int) -> list[float]:
    """Every score of a run of ``evals`` evaluations, in order."""
    return [float(s) for _, batch in rounds(searcher, fitness, evals) for s in batch]
