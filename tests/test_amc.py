"""AMC: the Gymnasium environment (checkers, action wall, reward) and the DDPG searcher."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs import LayerPruningEnv
from searchprune.core.budget import Budget
from searchprune.evaluate import LocalEvaluator
from searchprune.fitness import FitnessContext
from searchprune.problem import Problem
from searchprune.search import make_searcher
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsMLP, DigitsResNet


def _task(model: torch.nn.Module) -> Task:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 64, generator=generator)
    targets = torch.randint(0, 10, (32,), generator=generator)
    return Task(model=model, train=(inputs, targets), val=(inputs, targets))


def _resnet_problem(budget: Budget, granularity: str = "channel") -> Problem:
    torch.manual_seed(0)
    return Problem(_task(DigitsResNet()), budget=budget, granularity=granularity, bn_samples=0)


def test_env_passes_gymnasium_and_sb3_checkers_without_warnings() -> None:
    torch.manual_seed(0)
    env = gymnasium.make(
        envs.ENV_ID,
        source=_task(DigitsResNet()),
        budget={"flops": 0.5},
        granularity="channel",
        bn_samples=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert env.observation_space.shape == (11,) and env.action_space.shape == (1,)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["flops", "params", "sparsity"]),
    target=st.floats(0.3, 0.8),
    granularity=st.sampled_from(["channel", "weight"]),
    actions=st.lists(st.floats(-1.0, 1.0), min_size=8, max_size=8),
)
def test_action_wall_meets_the_budget_whatever_the_actions(
    kind: str, target: float, granularity: str, actions: list[float]
) -> None:
    budget = Budget(kind, target if kind != "sparsity" else 1.0 - target)
    env = LayerPruningEnv(_resnet_problem(budget, granularity), score=False)
    observation, _ = env.reset(seed=0)
    terminated, step, info = False, 0, {}
    while not terminated:
        assert env.observation_space.contains(observation)
        observation, reward, terminated, _, info = env.step(np.array([actions[step]], np.float32))
        assert reward == 0.0
        step += 1
    assert step == len(env.space.units)
    removed = env.space.removed(info["genome"])
    assert env.space.repairer.met(removed)[0], "the budget must hold at the end of every episode"


def test_episode_reward_is_the_fitness_of_the_decoded_masks() -> None:
    problem = _resnet_problem(Budget("flops", 0.5))
    env = LayerPruningEnv(problem, evaluator=LocalEvaluator(problem))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    terminated, reward, info = False, 0.0, {}
    while not terminated:
        _, reward, terminated, _, info = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
    expected = problem.score_masks(problem.space.decode(info["genome"])).fitness
    assert reward == pytest.approx(expected)
    assert info["metrics"]["flops_fraction"] <= 0.5 + 1e-9


def test_amc_learns_known_optimal_ratios() -> None:
    """A synthetic fitness whose best per-layer ratios are known: the trained agent's
    greedy episode must land much nearer to them than random actions do."""
    torch.manual_seed(0)
    target = np.array([0.2, 0.6, 0.4])

    def closeness(ctx: FitnessContext) -> float:
        ratios = [1.0 - float(mask.float().mean()) for mask in ctx.masks.weights.values()]
        return -float(np.abs(np.array(ratios) - target).mean())

    sizes = np.array([64 * 300, 300 * 100, 100 * 10])
    on_budget = float((target * sizes).sum() / sizes.sum())  # the optimum lies on the budget
    problem = Problem(
        _task(DigitsMLP()),
        budget=Budget("sparsity", on_budget),
        fitness=closeness,
        exclude_output=False,
    )
    amc = make_searcher(
        "amc",
        problem.space,
        seed=0,
        problem=problem,
        population=16,
        warmup=64,
        gradient_steps=4,
        noise_decay=0.97,
    )
    evaluator = LocalEvaluator(problem)
    for _ in range(30):
        results = evaluator.evaluate(amc.ask(16))
        amc.tell(np.stack([r.genome for r in results]), np.array([r.fitness for r in results]))
    env = LayerPruningEnv(problem, score=False)
    observation, _ = env.reset()
    terminated, info = False, {}
    while not terminated:
        action, _ = amc.agent.predict(observation, deterministic=True)
        observation, _, terminated, _, info = env.step(action)
    greedy = problem.space.repair(info["genome"][None, :])[0]  # as the evaluator scores it
    greedy_error = float(np.abs(greedy - target).mean())
    random_genomes = problem.space.repair(np.random.default_rng(0).uniform(0, 0.99, (200, 3)))
    random_error = float(np.abs(random_genomes - target).mean())
    assert greedy_error < 0.5 * random_error, (greedy_error, random_error)


def test_amc_needs_its_problem_and_a_ratio_space() -> None:
    from searchprune.registry import SpecError

    problem = _resnet_problem(Budget("flops", 0.5))
    with pytest.raises(SpecError, match="needs the problem"):
        make_searcher("amc", problem.space, seed=0)
    binary = Problem(
        _task(DigitsResNet()),
        budget=Budget("flops", 0.5),
        space="binary",
        granularity="channel",
        bn_samples=0,
    )
    with pytest.raises(SpecError, match="layer-ratios"):
        make_searcher("amc", binary.space, seed=0, problem=binary)


@pytest.mark.parametrize("algorithm", ["td3", "sac"])
def test_td3_and_sac_agents_train_and_resume(algorithm: str) -> None:
    problem = _resnet_problem(Budget("flops", 0.5))
    evaluator = LocalEvaluator(problem)

    def run(searcher, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
        scores: list[float] = []
        for _ in range(rounds):
            results = evaluator.evaluate(searcher.ask(8))
            fitness = np.array([r.fitness for r in results])
            searcher.tell(np.stack([r.genome for r in results]), fitness)
            scores.extend(fitness.tolist())
        return scores

    settings_ = {"population": 8, "warmup": 8, "algorithm": algorithm, "batch_size": 16}
    straight = make_searcher("amc", problem.space, seed=1, problem=problem, **settings_)
    first = make_searcher("amc", problem.space, seed=1, problem=problem, **settings_)
    head = run(first, 3)
    assert first.agent._n_updates > 0
    second = make_searcher("amc", problem.space, seed=5, problem=problem, **settings_)
    second.load_state_dict(first.state_dict())
    assert head + run(second, 2) == run(straight, 5)
