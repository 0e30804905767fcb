"""Searchers: determinism, checkpoint/resume equivalence, and learning on a known fitness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from searchprune.config import validate_config
from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.problem import Evaluation, Problem
from searchprune.rundir import RunDir
from searchprune.runner import LoopState, search_loop
from searchprune.search import SEARCHERS, make_searcher
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from searchprune.tasks.base import Task
from synthetic import _PROBLEMS, distance_fitness, make, make_space, scores


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
def test_checkpoint_and_resume_continue_exactly(
    name: str, space_kind: type[Space], tmp_path: Path
) -> None:
    """The state goes through a checkpoint file (plain data, no pickle) and back."""
    space = make_space(space_kind)
    fitness = distance_fitness(space)
    straight = scores(make(name, space, seed=3, population=8), fitness, 56)
    first = make(name, space, seed=3, population=8)
    head = scores(first, fitness, 24)
    RunDir(tmp_path).save_checkpoint({"searcher": first.state_dict()})
    second = make(name, space, seed=999, population=8)  # different seed: state must win
    second.load_state_dict(RunDir(tmp_path).load_checkpoint()["searcher"])
    assert head + scores(second, fitness, 32) == straight


def test_cmaes_replays_its_checkpoint_and_checks_the_replay() -> None:
    """CMA-ES is rebuilt from its seed and saved scores: the rebuilt strategy asks the
    genomes the original asks next; scores that do not belong to it are refused."""
    space = make_space(LayerRatioSpace)
    fitness = distance_fitness(space)
    first = make("cmaes", space, seed=3, population=8)
    scores(first, fitness, 28)
    state = first.state_dict()
    second = make("cmaes", space, seed=0, population=8)
    second.load_state_dict(state)
    assert np.array_equal(second.ask(4), first.ask(4))
    assert np.array_equal(second.es.mean, first.es.mean) and second.es.sigma == first.es.sigma
    state["told"] = state["told"][:-1]  # a generation lost: the replay ends elsewhere
    with pytest.raises(ValueError, match="does not replay"):
        make("cmaes", space, seed=3, population=8).load_state_dict(state)


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


def test_amc_still_acts_after_thousands_of_episodes(tmp_path: Path) -> None:
    """AMC's exploration width decays per episode; in float32 it reached 0 (0.95^2100
    did with the paper's schedule), and a policy saturated at an action bound then asked
    scipy for a truncated normal on (0/0, 0/0), a domain error (so a resumed run crashed
    too). The width stops at a floor: episode 5,000 acts at the policy's action, within
    the bounds, and its checkpoint resumes to the same actions."""
    import torch

    space = make_space(LayerRatioSpace)
    settings = {"population": 4, "warmup": 4, "batch_size": 8, "episodes": 5_000}
    settings["noise_final"] = 1e-300  # the width the schedule reaches at episode 5,000
    amc = make("amc", space, seed=0, **settings)
    with torch.no_grad():  # the actor's last layer saturates its tanh at +1
        amc.agent.actor.mu[-2].bias.fill_(50.0)  # type: ignore[attr-defined]
    amc.episodes = 5_000  # type: ignore[attr-defined]
    observations = np.asarray(amc.envs.reset())  # type: ignore[attr-defined]
    actions = amc._actions(observations)  # type: ignore[attr-defined]
    assert (actions <= 1.0).all() and (actions > 1.0 - 1e-4).all()
    genomes = amc.ask(4)
    assert genomes.shape == (4, space.dim) and np.isfinite(genomes).all()
    RunDir(tmp_path).save_checkpoint({"amc": amc.state_dict()})
    resumed = make("amc", space, seed=9, **settings)
    resumed.load_state_dict(RunDir(tmp_path).load_checkpoint()["amc"])
    assert np.array_equal(resumed.ask(4), amc.ask(4))


# ---------------------------------------------------------------- unique evaluations
def _tiny_problem() -> Problem:
    """Two channel groups of 3 units: only a handful of allocations meet the budget."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    inputs = torch.randn(16, 4)
    labels = (inputs[:, 0] > 0).long()
    task = Task(model, (inputs, labels), (inputs, labels))
    return Problem(task, budget=Budget("flops", 0.6), granularity="channel", bn_samples=0)


def test_the_evaluator_scores_a_repeat_once_and_says_which_are_new() -> None:
    problem = _tiny_problem()
    evaluator = LocalEvaluator(problem)
    drawn = problem.space.sample(np.random.default_rng(0), 40)
    _, first = np.unique(problem.space.repair(drawn), axis=0, return_index=True)
    genomes = drawn[np.sort(first)[:2]]  # two that repair to different candidates
    results = evaluator.evaluate(np.stack([genomes[0], genomes[0], genomes[1]]))
    assert [r.cached for r in results] == [False, True, False] and evaluator.scored == 2
    assert results[1].fitness == results[0].fitness
    assert evaluator.novel(np.stack([genomes[1], genomes[0]])).tolist() == [False, False]
    fresh = problem.space.sample(np.random.default_rng(5), 40)
    novel = evaluator.novel(fresh)
    repaired = {g.tobytes() for g in problem.space.repair(fresh[novel])}
    assert len(repaired) == novel.sum()  # one of each new candidate, none scored before


def _loop(tmp_path: Path, searcher: str, **run: object) -> tuple[LoopState, list[dict]]:
    config = validate_config(
        {
            "task": "digits-mlp",
            "space": {"granularity": "channel"},
            "budget": {"flops": 0.6},
            "searcher": {"name": searcher, "population": 4},
            "run": {"progress": False, **run},
        }
    )
    problem = _tiny_problem()
    found = make_searcher(searcher, problem.space, problem=problem, population=4, warm_start=[])
    run_dir = RunDir(tmp_path)
    run_dir.start_history()
    state = search_loop(config, found, LocalEvaluator(problem), run_dir, LoopState())
    return state, run_dir.read_history()


def test_the_budget_counts_unique_evaluations_and_stops_on_an_exhausted_space(
    tmp_path: Path,
) -> None:
    state, rows = _loop(tmp_path, "random", max_evals=100, max_repeat_rounds=3)
    distinct = {json.dumps(row["genome"]) for row in rows}
    assert state.unique == len(distinct) == sum(not row["cached"] for row in rows) < 100
    assert "exhausted" in state.stopped and state.repeat_rounds == 3
    assert all(row["cached"] for row in rows[-12:])  # the last 3 rounds of 4


def test_counting_all_evaluations_spends_repeats_too(tmp_path: Path) -> None:
    state, rows = _loop(tmp_path, "random", max_evals=20, count="all")
    assert state.evals == len(rows) == 20 and state.unique < 20
    assert not state.stopped


@pytest.mark.parametrize("name", ["ga", "sa", "random"])
def test_searchers_redraw_candidates_already_scored(name: str) -> None:
    """Over the synthetic space (DigitsResNet's 4 channel groups), a searcher that asks
    which genomes are new repeats far fewer scored candidates."""
    space = make_space(LayerRatioSpace)
    problem = _PROBLEMS[LayerRatioSpace]
    fitness = distance_fitness(space)
    repeats = []
    for attach in (False, True):
        searcher = make(name, space, seed=0, population=8)
        seen: set[bytes] = set()
        if attach:
            evaluator = LocalEvaluator(problem)
            evaluator._score = lambda genomes, labels: [  # type: ignore[method-assign]
                Evaluation(fitness(genome)) for genome in genomes
            ]
            searcher.attach_novelty(evaluator.novel)
        count = 0
        for _ in range(20):
            asked = searcher.ask(8)
            repaired = space.repair(asked)
            keys = [genome.tobytes() for genome in repaired]
            count += sum(key in seen for key in keys)
            seen.update(keys)
            if attach:
                evaluator.evaluate(asked)
            searcher.tell(repaired, np.array([fitness(g) for g in repaired]))
        repeats.append(count)
    assert repeats[1] < repeats[0] / 2
