"""Particle swarm optimization: bounds, velocity clamp, personal bests, topologies."""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from searchprune.search import Searcher
from searchprune.search.pso import ParticleSwarmSearch
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import Fitness, distance_fitness, make, make_space

_KINDS = [LayerRatioSpace, BinarySpace]


def scores_of(searcher: Searcher, fitness: Fitness, evals: int) -> np.ndarray:
    return np.asarray(synthetic.scores(searcher, fitness, evals))


@pytest.mark.parametrize("space_kind", _KINDS)
def test_pso_velocities_respect_the_clamp_and_positions_the_bounds(
    space_kind: type[Space],
) -> None:
    space = make_space(space_kind)
    # strong pulls, so that the clamp has to bind
    pso = make("pso", space, seed=1, population=8, inertia=1.0, cognitive=4.0, social=4.0)
    assert isinstance(pso, ParticleSwarmSearch)
    vmax = 4.0 if space.kind == "binary" else 0.2 * (space.upper - space.lower)
    largest = 0.0
    for asked, _ in synthetic.rounds(pso, distance_fitness(space), 160):
        assert np.all(np.abs(pso.velocities) <= vmax + 1e-12)
        largest = max(largest, float((np.abs(pso.velocities) / vmax).max()))
        if space.kind == "binary":
            assert asked.dtype == bool
        else:
            assert np.all((asked >= space.lower) & (asked <= space.upper))
    assert largest == pytest.approx(1.0)


@pytest.mark.parametrize("space_kind", _KINDS)
def test_pso_personal_bests_are_the_best_repaired_genomes_scored(space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    pso = make("pso", space, seed=6, population=8)
    assert isinstance(pso, ParticleSwarmSearch)
    rounds = list(synthetic.rounds(pso, distance_fitness(space), 8 * 6))
    scores = np.stack([scores for _, scores in rounds])  # (round, particle)
    genomes = np.stack([space.repair(asked) for asked, _ in rounds])
    first_best = scores.argmax(axis=0)  # the first round each particle scored its best
    np.testing.assert_array_equal(pso.best_scores, scores.max(axis=0))
    np.testing.assert_array_equal(pso.best_positions, genomes[first_best, np.arange(8)])
    assert len(np.unique(first_best)) > 1


def test_pso_ring_takes_the_best_of_each_neighbourhood() -> None:
    space = make_space(LayerRatioSpace)
    ring = make("pso", space, seed=0, population=6, topology="ring", neighbours=1)
    whole = make("pso", space, seed=0, population=6, topology="global")
    for pso in (ring, whole):
        assert isinstance(pso, ParticleSwarmSearch)
        pso.best_positions = np.arange(6.0)[:, None] * np.ones(space.dim)
        pso.best_scores = np.array([0.0, 5.0, 1.0, 2.0, 9.0, 3.0])
    assert isinstance(ring, ParticleSwarmSearch) and isinstance(whole, ParticleSwarmSearch)
    np.testing.assert_array_equal(ring._neighbourhood_best()[:, 0], [1, 1, 1, 4, 4, 4])
    np.testing.assert_array_equal(whole._neighbourhood_best()[:, 0], [4] * 6)


@pytest.mark.parametrize("space_kind", _KINDS)
def test_pso_ring_topology_searches_differently_from_global(space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    ring = scores_of(make("pso", space, seed=2, population=8, topology="ring"), fitness, 80)
    whole = scores_of(make("pso", space, seed=2, population=8, topology="global"), fitness, 80)
    np.testing.assert_array_equal(ring[:8], whole[:8])  # same first round
    assert not np.array_equal(ring, whole)
