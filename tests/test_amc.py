"""AMC: the Gymnasium environment (checkers, action wall, reward) and the DDPG searcher."""

from __future__ import annotations

import warnings
from pathlib import Path

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
from searchprune.rundir import RunDir
from searchprune.search import make_searcher
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet


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
def test_action_wall_lands_every_episode_on_the_budget_whatever_the_actions(
    kind: str, target: float, granularity: str, actions: list[float]
) -> None:
    """Two-sided wall: every episode meets the budget, one element less in its last unit
    would break it, so the bound repair leaves it as it is, and the applied actions are
    the scored genome's ratios."""
    budget = Budget(kind, target if kind != "sparsity" else 1.0 - target)
    env = LayerPruningEnv(_resnet_problem(budget, granularity), score=False)
    observation, _ = env.reset(seed=0)
    terminated, step, info, applied = False, 0, {}, []
    while not terminated:
        assert env.observation_space.contains(observation)
        low, high = env.walls(step, env._removed)
        assert env.k_min[step] <= low <= high <= env.k_max[step]
        if step == len(env.space.units) - 1:
            assert low == high, "the last unit's count is the one that lands on the budget"
        observation, reward, terminated, _, info = env.step(np.array([actions[step]], np.float32))
        assert low <= env._removed[step] <= high
        assert reward == 0.0
        applied.append(info["applied_action"])
        step += 1
    assert step == len(env.space.units)
    genome = info["genome"]
    removed = env.space.removed(genome)
    repairer = env.space.repairer
    assert repairer.met(removed)[0], "the budget must hold at the end of every episode"
    last = len(env.sizes) - 1
    if removed[0, last] > env.k_min[last]:
        one_less = removed.copy()
        one_less[0, last] -= 1
        assert not repairer.met(one_less)[0], "the episode must land on the budget"
    np.testing.assert_array_equal(env.space.repair(genome[None, :], "bound")[0], genome)
    asked = [env.ratio_of(a, u) * env.sizes[u] for u, a in enumerate(applied)]
    np.testing.assert_allclose(asked, removed[0], atol=1e-6)


def test_flops_features_come_from_the_cost_model() -> None:
    """Removed and remaining FLOPs count what a channel group removes from the inputs of
    the layers it feeds: 7 of the digits CNN's 16 first-conv channels remove 39.4% of the
    FLOPs, nearly all of them in the next conv (their own conv holds 2.7%)."""
    torch.manual_seed(0)
    problem = Problem(
        _task(DigitsCNN()), budget=Budget("flops", 0.5), granularity="channel", bn_samples=0
    )
    env = LayerPruningEnv(problem, score=False)
    cost = problem.space.cost
    observation, _ = env.reset(seed=0)
    assert observation[8] == 0.0
    later = np.array([0.0, *env.sizes[1:]])  # the units after the first, all removed
    assert observation[9] == pytest.approx(1.0 - cost.fractions(later)["flops_fraction"])
    observation, *_ = env.step(np.array([env.action_of(7 / 16, 0)], np.float32))
    assert env._removed[0] == 7
    conv1, conv2 = 16 * 9 * 64, 32 * 16 * 9 * 64
    dense = conv1 + conv2 + 512 * 64 + 64 * 10
    assert observation[8] == pytest.approx(7 / 16 * (conv1 + conv2) / dense, rel=1e-6)
    assert observation[8] == pytest.approx(0.394, abs=1e-3)
    rng = np.random.default_rng(0)
    step = 1
    while step < len(env.sizes):
        removed = env._removed.copy()
        later = removed.copy()
        later[step + 1 :] = env.sizes[step + 1 :]
        kept = cost.fractions(np.stack([removed, later]))["flops_fraction"]
        assert observation[8] == pytest.approx(1.0 - kept[0], rel=1e-6)
        assert observation[9] == pytest.approx(kept[0] - kept[1], rel=1e-6, abs=1e-7)
        observation, *_ = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
        step += 1


def test_episode_reward_is_the_fitness_of_the_decoded_masks() -> None:
    problem = _resnet_problem(Budget("flops", 0.5))
    env = LayerPruningEnv(problem, evaluator=LocalEvaluator(problem, budget_mode="bound"))
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
        episodes=480,
        warmup=64,
    )
    evaluator = LocalEvaluator(problem, budget_mode=amc.budget_mode)
    for _ in range(30):
        results = evaluator.evaluate(amc.ask(16))
        amc.tell(np.stack([r.genome for r in results]), np.array([r.fitness for r in results]))
    env = LayerPruningEnv(problem, score=False)
    observation, _ = env.reset()
    terminated, info = False, {}
    while not terminated:
        action, _ = amc.agent.predict(observation, deterministic=True)
        observation, _, terminated, _, info = env.step(action)
    greedy = info["genome"]  # on the budget: the evaluator scores it as it is
    greedy_error = float(np.abs(greedy - target).mean())
    rng, random_errors = np.random.default_rng(0), []
    for _ in range(200):
        env.reset()
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
        random_errors.append(float(np.abs(info["genome"] - target).mean()))
    random_error = float(np.mean(random_errors))
    assert greedy_error < 0.5 * random_error, (greedy_error, random_error)
    # the first two units are the agent's free choices (the last one lands on the budget)
    np.testing.assert_allclose(greedy[:2], target[:2], atol=0.05)


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
def test_td3_and_sac_agents_train_and_resume(algorithm: str, tmp_path: Path) -> None:
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
    RunDir(tmp_path).save_checkpoint({"amc": first.state_dict()})  # plain data, no pickle
    second.load_state_dict(RunDir(tmp_path).load_checkpoint()["amc"])
    assert head + run(second, 2) == run(straight, 5)


def test_amc_episodes_are_scored_as_the_agent_acted() -> None:
    """The searcher asks for bound repair, which leaves its on-budget episodes as they
    are: the evaluator scores the genomes the episodes produced, and the actions stored
    for learning are those genomes' ratios."""
    problem = _resnet_problem(Budget("flops", 0.5))
    amc = make_searcher("amc", problem.space, seed=0, problem=problem, population=8, warmup=8)
    assert amc.budget_mode == "bound"
    evaluator = LocalEvaluator(problem, budget_mode=amc.budget_mode)
    env = LayerPruningEnv(problem, score=False)
    for _ in range(2):  # a warm-up round, then the agent's
        genomes = amc.ask(8)
        results = evaluator.evaluate(genomes)
        np.testing.assert_array_equal(np.stack([r.genome for r in results]), genomes)
        amc.tell(genomes, np.array([r.fitness for r in results]))
    buffer = amc.agent.replay_buffer
    stored = buffer.actions[buffer.pos - 8 * env.sizes.size : buffer.pos, 0, 0]
    asked = [
        env.ratio_of(float(action), step % env.sizes.size) for step, action in enumerate(stored)
    ]
    np.testing.assert_allclose(np.reshape(asked, genomes.shape), genomes, atol=1e-6)


def test_amc_schedule_follows_the_reference_and_scales_to_the_run() -> None:
    """AMC's settings by default: warm-up a tenth of the run, noise from 0.5 (cold) or
    ``warm_sigma`` (warm-started) down to ``noise_final`` at half the run, one
    update per transition, 100 episodes of replay, actor 1e-4 and critic 1e-3, tau 0.01,
    hidden layers 300-300."""
    problem = _resnet_problem(Budget("flops", 0.5))
    units = len(problem.space.units)
    settings_ = {"population": 8, "episodes": 80, "batch_size": 8}
    warm = make_searcher("amc", problem.space, seed=0, problem=problem, **settings_)
    warm.episodes = 8
    assert warm._noise_sigma() / 2.0 == pytest.approx(warm.params.warm_sigma)
    amc = make_searcher(
        "amc", problem.space, seed=0, problem=problem, warm_start=[], **settings_
    )
    assert amc.warmup == 8 and amc.steps_per_episode == units
    assert amc.agent.replay_buffer.buffer_size == 100 * units
    assert amc.agent.tau == 0.01 and amc.agent.gamma == 1.0
    assert [layer.out_features for layer in amc.agent.actor.mu if hasattr(layer, "out_features")][
        :2
    ] == [300, 300]
    widths = {}
    for episodes in (0, 8, 24, 40, 80, 200):
        amc.episodes = episodes
        widths[episodes] = amc._noise_sigma() / 2.0  # on ratios in [0, 1]
    assert widths[0] == widths[8] == pytest.approx(0.5)
    assert widths[24] == pytest.approx((0.5 * 0.05) ** 0.5)  # halfway, geometrically
    assert widths[40] == widths[80] == widths[200] == pytest.approx(0.05)
    amc.episodes = 0
    evaluator = LocalEvaluator(problem, budget_mode=amc.budget_mode)
    for expected_updates in (0, 8 * units):  # warm-up round: no training
        genomes = amc.ask(8)
        amc.tell(genomes, np.array([r.fitness for r in evaluator.evaluate(genomes)]))
        assert amc.agent._n_updates == expected_updates
    assert amc.agent.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert amc.agent.critic.optimizer.param_groups[0]["lr"] == 1e-3


def test_reward_baseline_is_subtracted_when_a_batch_is_sampled() -> None:
    """The buffer keeps raw rewards; each sampled batch moves the baseline
    ``baseline_rate`` of the way to its mean reward and is credited against it."""
    problem = _resnet_problem(Budget("flops", 0.5))
    amc = make_searcher("amc", problem.space, seed=0, problem=problem, baseline_rate=0.25)
    buffer = amc.agent.replay_buffer
    observation = np.zeros((1, 11), np.float32)
    assert amc.baseline is None
    credited = []
    for reward, baseline in ((1.0, 1.0), (3.0, 1.5), (3.0, 1.875)):
        buffer.reset()  # every stored transition has this reward
        for _ in range(4):
            buffer.add(
                observation, observation, np.zeros((1, 1)), np.array([reward]), np.array([1]), [{}]
            )
        credited.append(buffer.sample(8).rewards.numpy())
        assert amc.baseline == pytest.approx(baseline)
        np.testing.assert_array_equal(buffer.rewards[:4, 0], reward)  # stored raw
    np.testing.assert_allclose(credited[0], 0.0)
    np.testing.assert_allclose(credited[1], 1.5)
    np.testing.assert_allclose(credited[2], 1.125)


def test_amc_warm_up_episodes_play_the_baselines_allocations_first() -> None:
    """With warm starts (the default) the first warm-up episodes replay the one-shot
    baselines' allocations and their perturbations through the action wall, labelled as
    such; the rest of the warm-up is random."""
    from searchprune.search.base import DEFAULT_WARM_START
    from searchprune.search.warm import PERTURBED, baseline_genomes

    problem = _resnet_problem(Budget("flops", 0.5))
    amc = make_searcher("amc", problem.space, seed=0, problem=problem, population=8, episodes=80)
    genomes = amc.ask(8)
    assert amc.seeded(genomes) == [*DEFAULT_WARM_START, DEFAULT_WARM_START[0] + PERTURBED] + [
        None
    ] * 4
    exact = baseline_genomes(problem, DEFAULT_WARM_START).genomes
    counts = problem.space.removed(genomes[:3])
    np.testing.assert_array_equal(counts, problem.space.removed(exact))  # as the baselines chose
    assert np.abs(genomes[4:, None, :] - exact[None]).mean() > 0.1  # the rest is random
    cold = make_searcher(
        "amc", problem.space, seed=0, problem=problem, population=8, episodes=80, warm_start=[]
    )
    assert cold.seeded(cold.ask(8)) == [None] * 8


def test_warm_started_actor_imitates_the_best_episode(tmp_path: Path) -> None:
    """After each training round from the end of the warm-up on, a warm-started agent's
    actor is fitted to the best episode's actions: acting without noise, it replays that
    allocation; the best episode survives a checkpoint. Its noise is clipped, not
    truncated: an action at a bound stays there about half the time."""
    problem = _resnet_problem(Budget("flops", 0.5))
    evaluator = LocalEvaluator(problem, budget_mode="bound")
    settings_ = {"population": 8, "warmup": 8, "batch_size": 8, "imitate_steps": 400}
    amc = make_searcher("amc", problem.space, seed=0, problem=problem, **settings_)
    genomes = amc.ask(8)
    fitness = np.array([r.fitness for r in evaluator.evaluate(genomes)])
    amc.tell(genomes, fitness)
    best, observations, actions = amc._best
    assert best == fitness.max()
    with torch.no_grad():
        acted, _ = amc.agent.predict(observations, deterministic=True)
    assert np.abs(acted - actions).max() < 0.05
    untrained = make_searcher(
        "amc", problem.space, seed=0, problem=problem, imitate=False, **settings_
    )
    untrained.tell(untrained.ask(8), fitness)
    with torch.no_grad():
        acted, _ = untrained.agent.predict(observations, deterministic=True)
    assert np.abs(acted - actions).max() > 0.2
    amc.agent.predict = lambda observations, deterministic: (  # type: ignore[method-assign]
        np.ones((len(observations), 1)),
        None,
    )
    at_bound = np.mean([amc._actions(observations) == 1.0 for _ in range(50)])
    assert 0.35 < at_bound < 0.65
    RunDir(tmp_path).save_checkpoint({"amc": amc.state_dict()})  # plain data, no pickle
    resumed = make_searcher("amc", problem.space, seed=3, problem=problem, **settings_)
    resumed.load_state_dict(RunDir(tmp_path).load_checkpoint()["amc"])
    assert resumed._best[0] == best
    np.testing.assert_array_equal(resumed._best[2], actions)
