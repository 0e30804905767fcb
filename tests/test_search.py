"""Searchers: determinism, checkpoint/resume equivalence, and learning on a known fitness."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from searchprune.search import SEARCHERS
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import distance_fitness, make, make_space, scores


@pytest.mark.parametrize("name", SEARCHERS.names())
@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_same_seed_same_result(name: str, space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    runs = [scores(make(name, space, seed=7, population=8), fitness, 40) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] != scores(make(name, space, seed=8, population=8), fitness, 40)


@pytest.mark.parametrize("name", SEARCHERS.names())
@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_checkpoint_and_resume_continue_exactly(name: str, space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    straight = scores(make(name, space, seed=3, population=8), fitness, 56)
    first = make(name, space, seed=3, population=8)
    head = scores(first, fitness, 24)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    second = make(name, space, seed=999, population=8)  # different seed: state must win
    second.load_state_dict(state)
    assert head + scores(second, fitness, 32) == straight


@pytest.mark.parametrize("space_kind", [LayerRatioSpace, BinarySpace])
def test_ga_beats_random_search_on_a_known_optimum(space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    ga_best, random_best = [], []
    for seed in range(3):
        ga_best.append(max(scores(make("ga", space, seed=seed, population=16), fitness, 400)))
        random_best.append(
            max(scores(make("random", space, seed=seed, population=16), fitness, 400))
        )
    assert np.median(ga_best) > np.median(random_best)


def test_ga_rejects_operators_that_do_not_fit_themake_space() -> None:
    with pytest.raises(ValueError, match="do not fit the binary space"):
        make("ga", make_space(BinarySpace), seed=0, crossover="sbx")
    with pytest.raises(ValueError, match="searcher.population=2"):
        make("ga", make_space(LayerRatioSpace), seed=0, population=2)


@pytest.mark.parametrize("name", [n for n in SEARCHERS.names() if n != "random"])
def test_every_searcher_improves_on_its_first_round(name: str) -> None:
    space = make_space(LayerRatioSpace)
    fitness = distance_fitness(space)
    found = scores(make(name, space, seed=0, population=16), fitness, 320)
    assert max(found) > max(found[:16])
