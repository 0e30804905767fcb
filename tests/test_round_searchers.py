"""Round searchers (PSO, SA, CMA-ES): learning, and rounds cut short by the run loop.

The synthetic setup is the one of ``test_search.py``: a space over DigitsResNet's channel
groups with a FLOPs budget, and a fitness that is minus the distance to a fixed repaired
genome.
"""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from searchprune.search import Searcher
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import Fitness, distance_fitness, make, make_space

_KINDS = [LayerRatioSpace, BinarySpace]


def scores_of(searcher: Searcher, fitness: Fitness, evals: int) -> np.ndarray:
    return np.asarray(synthetic.scores(searcher, fitness, evals))


@pytest.mark.parametrize("name", ["pso", "sa"])
@pytest.mark.parametrize("space_kind", _KINDS)
def test_improves_on_its_first_round_and_beats_random_search(
    name: str, space_kind: type[Space]
) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    found, first, baseline = [], [], []
    for seed in range(3):
        scores = scores_of(make(name, space, seed=seed, population=16), fitness, 400)
        found.append(scores.max())
        first.append(scores[:16].max())
        baseline.append(scores_of(make("random", space, seed=seed, population=16), fitness, 400))
    assert all(best > start for best, start in zip(found, first, strict=True))
    assert np.median(found) > np.median([scores.max() for scores in baseline])


@pytest.mark.parametrize("name", ["pso", "sa", "cmaes"])
@pytest.mark.parametrize("space_kind", _KINDS)
def test_partial_rounds_do_not_change_the_search(name: str, space_kind: type[Space]) -> None:
    """A round cut short is finished by the next asks: any ask sizes give the same run."""
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    whole = [
        asked for asked, _ in synthetic.rounds(make(name, space, seed=5, population=8), fitness, 61)
    ]
    pieces = synthetic.rounds(
        make(name, space, seed=5, population=8), fitness, 61, iter([5, 8, 1, 2, 8, 3] * 20)
    )
    sizes = [len(asked) for asked in whole]
    assert sizes == [8] * 7 + [5]
    chopped = [asked for asked, _ in pieces]
    assert [len(asked) for asked in chopped][:4] == [5, 3, 1, 2]
    np.testing.assert_array_equal(np.concatenate(chopped), np.concatenate(whole))


@pytest.mark.parametrize("name", ["pso", "sa", "cmaes"])
def test_tell_rejects_a_batch_of_the_wrong_size(name: str) -> None:
    space = make_space(LayerRatioSpace)
    searcher = make(name, space, seed=0, population=8)
    asked = space.repair(searcher.ask(5))
    with pytest.raises(ValueError, match="tell\\(\\) got 4 genomes for 5 asked"):
        searcher.tell(asked[:4], np.zeros(4))
