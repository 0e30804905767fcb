"""Particle swarm and simulated annealing: learning, bounds, topology, scale-free
acceptance, cooling, reheating and partial rounds.

The synthetic setup is the one of ``test_search.py``: a space over DigitsResNet's channel
groups with a FLOPs budget, and a fitness that is minus the distance to a fixed repaired
genome.
"""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from searchprune.registry import SpecError
from searchprune.search import Searcher, make_searcher
from searchprune.search.annealing import SimulatedAnnealing
from searchprune.search.pso import ParticleSwarmSearch
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import Fitness, distance_fitness, make, make_space

_KINDS = [LayerRatioSpace, BinarySpace]


def scores_of(searcher: Searcher, fitness: Fitness, evals: int) -> np.ndarray:
    return np.asarray(synthetic.scores(searcher, fitness, evals))


# ---------------------------------------------------------------- both searchers
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


@pytest.mark.parametrize("name", ["pso", "sa"])
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


@pytest.mark.parametrize("name", ["pso", "sa"])
def test_tell_rejects_a_batch_of_the_wrong_size(name: str) -> None:
    space = make_space(LayerRatioSpace)
    searcher = make(name, space, seed=0, population=8)
    asked = space.repair(searcher.ask(5))
    with pytest.raises(ValueError, match="tell\\(\\) got 4 genomes for 5 asked"):
        searcher.tell(asked[:4], np.zeros(4))


# ------------------------------------------------------------------------- PSO
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


# -------------------------------------------------------------------------- SA
def _annealing(space: Space, population: int = 4, **params: object) -> SimulatedAnnealing:
    searcher = make("sa", space, seed=4, population=population, **params)
    assert isinstance(searcher, SimulatedAnnealing)
    return searcher


@pytest.mark.parametrize("space_kind", _KINDS)
def test_sa_acceptance_does_not_depend_on_the_fitness_scale(space_kind: type[Space]) -> None:
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    runs, decisions = [], []
    for transform in (lambda f: f, lambda f: 1000.0 * f, lambda f: f + 5.0):
        sa = _annealing(space, steps=400)
        asked, accepted, previous = [], [], -np.inf
        for genomes, scores in synthetic.rounds(sa, lambda g, t=transform: t(fitness(g)), 240):
            asked.append(genomes)
            if scores.max() < previous:  # the round's move is worse than the current state
                accepted.append(sa.current_score < previous)
            previous = sa.current_score
        runs.append(np.concatenate(asked))
        decisions.append(accepted)
    assert True in decisions[0] and False in decisions[0]  # worse moves taken and refused
    assert decisions[0] == decisions[1] == decisions[2]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


@pytest.mark.parametrize("schedule", ["exponential", "linear", "adaptive"])
def test_sa_cools_to_the_final_temperature_at_steps_and_stays_there(schedule: str) -> None:
    space = make_space(LayerRatioSpace)
    sa = _annealing(space, schedule=schedule, steps=64, initial_temperature=2.0)
    temperatures = {}
    for _ in synthetic.rounds(sa, distance_fitness(space), 3 * 64):  # ends: the budget bounds it
        temperatures[sa.clock] = sa.temperature
    clocks, values = list(temperatures), list(temperatures.values())
    assert clocks == [4.0 * (i + 1) for i in range(48)]
    assert 0.01 < values[0] < 2.0
    assert np.all(np.diff(values) <= 0.0)
    assert all(t == pytest.approx(0.01) for clock, t in temperatures.items() if clock >= 64)
    if schedule != "adaptive":
        assert temperatures[60] > 0.01 * (1 + 1e-9)


def test_sa_adaptive_schedule_cools_faster_when_most_moves_are_accepted() -> None:
    space = make_space(LayerRatioSpace)
    flat: Fitness = lambda genome: 0.0  # noqa: E731 (every move is accepted)
    reached = {}
    for schedule in ("exponential", "adaptive"):
        sa = _annealing(space, schedule=schedule, steps=64)
        reached[schedule] = next(
            sa.clock
            for _ in synthetic.rounds(sa, flat, 64)
            if sa.temperature == pytest.approx(0.01)
        )
    # the random first round cools at the exponential pace, then twice as fast
    assert reached == {"exponential": 64, "adaptive": 4 + 32}


def test_sa_reheats_after_patience_rounds_without_improvement() -> None:
    space = make_space(LayerRatioSpace)
    flat: Fitness = lambda genome: 0.0  # noqa: E731 (no improvement after the first round)
    for reheat in (False, True):
        sa = _annealing(space, steps=16, reheat=reheat, patience=3, reheat_to=0.5)
        temperatures = []
        for _ in synthetic.rounds(sa, flat, 40):
            temperatures.append(sa.temperature)
            assert 0.01 - 1e-12 <= sa.temperature <= 1.0
        rises = [i for i in range(1, 10) if temperatures[i] > temperatures[i - 1]]
        if reheat:
            # round 0 sets the best; rounds 1-3 are stale, so round 3 reheats, then 6, 9
            assert rises == [3, 6, 9]
            assert temperatures[3] == pytest.approx(0.5)
        else:
            assert rises == []
            assert temperatures[-1] == pytest.approx(0.01)


def test_sa_keeps_the_best_genome_it_has_seen() -> None:
    space = make_space(BinarySpace)
    fitness = distance_fitness(space)
    sa = _annealing(space, population=8)
    best = max(scores.max() for _, scores in synthetic.rounds(sa, fitness, 160))
    assert sa.best_score == best
    assert fitness(sa.best) == best


def test_sa_rejects_temperatures_that_do_not_cool() -> None:
    space = make_space(LayerRatioSpace)
    with pytest.raises(SpecError, match="searcher.final_temperature=2.0 must be below"):
        make_searcher("sa", space, final_temperature=2.0)
    with pytest.raises(SpecError, match="searcher.reheat_to=0.01"):
        make_searcher("sa", space, reheat=True, reheat_to=0.01, final_temperature=0.05)
