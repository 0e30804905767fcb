"""Simulated annealing: scale-free acceptance, cooling schedules, reheating, best kept."""

from __future__ import annotations

import numpy as np
import pytest

import synthetic
from searchprune.registry import SpecError
from searchprune.search import Searcher, make_searcher
from searchprune.search.annealing import SimulatedAnnealing
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import Fitness, distance_fitness, make, make_space

_KINDS = [LayerRatioSpace, BinarySpace]


def scores_of(searcher: Searcher, fitness: Fitness, evals: int) -> np.ndarray:
    return np.asarray(synthetic.scores(searcher, fitness, evals))


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
