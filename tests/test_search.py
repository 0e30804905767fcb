"""Searchers: determinism, checkpoint/resume equivalence, and learning on a known fitness."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch

from searchprune.core.budget import Budget
from searchprune.core.graph import build_dependency_graph
from searchprune.core.layers import discover_layers
from searchprune.core.units import CostModel
from searchprune.pruners.criteria import magnitude
from searchprune.search import SEARCHERS, Searcher
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsResNet

torch.manual_seed(0)
_MODEL = DigitsResNet()
_LAYERS = discover_layers(_MODEL, torch.randn(1, 64))
_GRAPH = build_dependency_graph(_MODEL, torch.randn(1, 64), _LAYERS)
_DUMMY = Task(
    model=_MODEL,
    train=(torch.zeros(1, 64), torch.zeros(1)),
    val=(torch.zeros(1, 64), torch.zeros(1)),
)
_SCORES = magnitude(_MODEL, [la for la in _LAYERS if la.prunable], _DUMMY)


def _space(kind: type[Space]) -> Space:
    return kind(CostModel(_LAYERS, _GRAPH, "channel"), Budget("flops", 0.5), _SCORES)


def _target(space: Space) -> np.ndarray:
    """A known optimum: a fixed repaired genome."""
    return space.repair(space.sample(np.random.default_rng(123), 1))[0].astype(np.float64)


def _drive(searcher: Searcher, fitness: Callable[[np.ndarray], float], evals: int) -> list[float]:
    scores: list[float] = []
    while len(scores) < evals:
        asked = searcher.ask(min(searcher.batch_size, evals - len(scores)))
        repaired = searcher.space.repair(asked)
        values = np.array([fitness(g) for g in repaired])
        figures = searcher.space.figures(repaired)
        metrics = [{k: float(v[i]) for k, v in figures.items()} for i in range(len(repaired))]
        searcher.tell(repaired, values, metrics)
        scores.extend(values.tolist())
    return scores


def _distance_fitness(space: Space) -> Callable[[np.ndarray], float]:
    target = _target(space)
    return lambda genome: -float(np.abs(genome.astype(np.float64) - target).mean())


def _make(name: str, space: Space, seed: int, **params: object) -> Searcher:
    cls = SEARCHERS.get(name)
    if name == "cmaes" and space.kind == "binary":
        pytest.skip("CMA-ES searches real genomes only")
    space.exact = cls.budget_mode == "exact"
    return cls(space, cls.Params.model_validate(params), seed=seed)


@pytest.mark.parametrize("name", SEARCHERS.names())
@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_same_seed_same_result(name: str, space_kind: type[Space]) -> None:
    space = _space(space_kind)
    fitness = _distance_fitness(space)
    runs = [_drive(_make(name, space, seed=7, population=8), fitness, 40) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] != _drive(_make(name, space, seed=8, population=8), fitness, 40)


@pytest.mark.parametrize("name", SEARCHERS.names())
@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_checkpoint_and_resume_continue_exactly(name: str, space_kind: type[Space]) -> None:
    space = _space(space_kind)
    fitness = _distance_fitness(space)
    straight = _drive(_make(name, space, seed=3, population=8), fitness, 56)
    first = _make(name, space, seed=3, population=8)
    head = _drive(first, fitness, 24)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    second = _make(name, space, seed=999, population=8)  # different seed: state must win
    second.load_state_dict(state)
    assert head + _drive(second, fitness, 32) == straight


@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_ga_beats_random_search_on_a_known_optimum(space_kind: type[Space]) -> None:
    space = _space(space_kind)
    fitness = _distance_fitness(space)
    ga_best, random_best = [], []
    for seed in range(3):
        ga_best.append(max(_drive(_make("ga", space, seed=seed, population=16), fitness, 400)))
        random_best.append(
            max(_drive(_make("random", space, seed=seed, population=16), fitness, 400))
        )
    assert np.median(ga_best) > np.median(random_best)


def test_ga_rejects_operators_that_do_not_fit_the_space() -> None:
    with pytest.raises(ValueError, match="do not fit the binary space"):
        _make("ga", _space(BinarySpace), seed=0, crossover="sbx")
    with pytest.raises(ValueError, match="searcher.population=2"):
        _make("ga", _space(LayerRatioSpace), seed=0, population=2)
