"""AMC: an off-policy RL agent picks each layer's pruning ratio (He et al. 2018).

The agent (stable-baselines3 DDPG by default, TD3 or SAC selectable) walks the network
in :class:`envs.layer_pruning.LayerPruningEnv`, one unit per step. The env's two-sided
action wall lands every episode on the budget, so the evaluator leaves the episodes as
they are (``budget_mode = "bound"``): the network scored is the one the stored actions
describe. The recipe and its defaults follow the paper and its code (mit-han-lab/amc):

- warm-up episodes of uniformly random actions fill the replay buffer first
  (``warmup``; by default a tenth of the run's ``episodes``; AMC: 100 of 800). With
  warm starts (``warm_start``, on by default) the first episodes play the one-shot
  baselines' allocations and perturbations of them instead, one episode each, so the
  replay buffer and the run's best start where the heuristics end;
- not in the reference, and only with warm starts: after every training round from the
  end of the warm-up on (``imitate``), the actor is fitted to the best episode so far
  (behaviour cloning, :meth:`AMCSearch._imitate`), and the exploration noise starts at
  ``warm_sigma`` (0.05, the warm starts' own perturbation size) instead of
  ``noise_sigma``, clipped to the action range instead of truncated to it
  (``noise_shape``), so a ratio the best episode holds at its bound stays there half
  the time (global magnitude removes residual blocks' inner convs whole; a truncated
  normal around the bound never returns to it). Without this the agent's own episodes,
  drawn around an untrained actor with noise 0.5, stayed far below the warm starts (on
  the MNIST-1D ResNet at FLOPs 0.5 they reached 0.74-0.77 val against global
  magnitude's 0.915), the warm AMC's best was a warm start in 10 of 12 runs, and it
  trailed random search on 3 of 4 cells of docs/compare-deep.md;
- exploration noise from a truncated normal around the policy's action; its width
  falls geometrically per episode from ``noise_sigma`` at the end of the warm-up to
  ``noise_final`` at ``noise_horizon`` (half) of the run's episodes, and stays there
  (AMC: 0.5 · 0.95^episode on ratios in [0, 1], a decay fixed per episode; here it is
  scaled to the run's length. On the 21-group MNIST-1D ResNet at 300 episodes, the
  final width reached at the run's end found 78% val accuracy (seed 0), at half of it
  92.9 ± 0.2% (seeds 0-2), at a quarter 77 ± 5%; docs/compare-amc.md);
- gamma = 1; each transition is stored with its episode's final reward, and a moving
  baseline is subtracted when a batch is sampled for training (AMC: the baseline moves
  towards each sampled batch's mean reward by ``baseline_rate``), so every transition
  is credited against the current baseline, not the one of the day it was stored;
- one gradient step per transition (AMC trains once per step of every episode after
  the warm-up): ``gradient_steps`` per episode, by default the number of units;
- a replay buffer of ``replay_episodes`` episodes' transitions (AMC: 100 per layer);
- actor and critic with two hidden layers of 300, Adam at 1e-4 for the actor and 1e-3
  for the critic, target networks updated with tau 0.01, batches of 64. A
  stable-baselines3 algorithm gives all its optimizers one ``learning_rate`` and resets
  them to it at every ``train()``; the agents here (:class:`_ActorRate`) then set the
  actor's optimizer to ``actor_learning_rate`` (SAC's entropy weight learns at the
  critic's rate).

``episodes`` is the length of the run the schedule is scaled to; the runner sets it to
``run.max_evals`` unless the config does.

``population`` episodes run in lockstep in a stable-baselines3 vector env, so their
final evaluations reach the evaluator as one batch; the agent then trains. The agent's
random draws (replay sampling, noise) come from this searcher's own generators,
swapped in around each call, so runs are reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from envs.layer_pruning import LayerPruningEnv
from searchprune.problem import Problem
from searchprune.search.base import Searcher, SearcherParams
from searchprune.search.streams import GlobalStreams
from searchprune.space import BudgetMode, Space

Transition = tuple[np.ndarray, np.ndarray, float]  # observation, next observation, action
_MIN_SIGMA = 2e-6  # exploration floor: 1e-6 of the action range [-1, 1]
_WARMUP_SHARE = 0.1  # warm-up episodes by default, as a share of the run's episodes


class AMCParams(SearcherParams):
    algorithm: Literal["ddpg", "td3", "sac"] = Field("ddpg", description="stable-baselines3 agent")
    episodes: int = Field(
        1000,
        ge=1,
        description="episodes (evaluations) the run will have, to which the warm-up and the "
        "noise decay are scaled: the runner sets it to run.max_evals",
    )
    warmup: int | None = Field(
        None,
        ge=0,
        description="episodes of random actions before the agent acts; default: a tenth "
        "of `episodes`",
    )
    noise_sigma: float = Field(
        0.5, ge=0.0, description="exploration noise width after the warm-up, on ratios in [0, 1]"
    )
    noise_final: float = Field(
        0.05, gt=0.0, description="noise width from noise_horizon on (decayed geometrically)"
    )
    noise_horizon: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="share of `episodes` after which the noise width is noise_final",
    )
    baseline_rate: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="how far the reward baseline moves towards each sampled batch's mean",
    )
    gradient_steps: int | None = Field(
        None, ge=0, description="agent updates per scored episode; default: one per unit"
    )
    replay_episodes: int = Field(100, ge=1, description="replay buffer size, in episodes")
    batch_size: int = Field(64, ge=1, description="transitions per gradient step")
    actor_learning_rate: float = Field(1e-4, gt=0.0, description="Adam step size of the actor")
    critic_learning_rate: float = Field(
        1e-3, gt=0.0, description="Adam step size of the critic (and of SAC's entropy weight)"
    )
    tau: float = Field(0.01, gt=0.0, le=1.0, description="soft update rate of the target networks")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="discount")
    net_arch: list[int] = Field(
        default_factory=lambda: [300, 300], description="actor/critic hidden layers"
    )
    imitate: bool = Field(
        True,
        description="with warm starts: after every training round from the end of the "
        "warm-up on, fit the actor to the best episode so far",
    )
    imitate_steps: int = Field(200, ge=1, description="Adam steps of each imitation fit")
    noise_shape: Literal["truncated", "clipped"] | None = Field(
        None,
        description="exploration noise: a normal truncated to the action range (AMC), or "
        "clipped to it, which holds a ratio at its bound with probability one half; "
        "default: clipped with warm starts, truncated without",
    )


class _BaselineReplay(ReplayBuffer):
    """A replay buffer of raw rewards that subtracts a moving baseline from every
    sampled batch; the baseline first moves ``baseline_rate`` of the way towards the
    batch's mean reward (AMC's variance reduction)."""

    def __init__(self, *args: Any, baseline_rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_rate = baseline_rate
        self.baseline: float | None = None

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        batch = super().sample(batch_size, env)
        mean = float(batch.rewards.mean())
        if self.baseline is None:
            self.baseline = mean
        else:
            self.baseline += self.baseline_rate * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline)


if TYPE_CHECKING:
    _Algorithm = OffPolicyAlgorithm
else:  # a mixin: the algorithm comes after it in the agent classes' bases
    _Algorithm = object


class _ActorRate(_Algorithm):
    """An actor-critic whose actor learns at its own rate, ``actor_rate``: after the
    algorithm sets every optimizer to its ``learning_rate`` (at each ``train()``), the
    actor's optimizer is set to ``actor_rate``."""

    actor: Any
    actor_rate: float

    def _update_learning_rate(
        self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer
    ) -> None:
        super()._update_learning_rate(optimizers)
        update_learning_rate(self.actor.optimizer, self.actor_rate)


class _DDPG(_ActorRate, DDPG):
    """DDPG with its actor's own learning rate."""


class _TD3(_ActorRate, TD3):
    """TD3 with its actor's own learning rate."""


class _SAC(_ActorRate, SAC):
    """SAC with its actor's own learning rate."""


_ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"ddpg": _DDPG, "td3": _TD3, "sac": _SAC}


class AMCSearch(Searcher):
    """AMC-style reinforcement learning over the ``layer-ratios`` space; see the module
    docstring."""

    description = "AMC: DDPG/TD3/SAC agent picks per-layer ratios (stable-baselines3)"
    budget_mode: ClassVar[BudgetMode] = "bound"
    space_kinds = frozenset({"real"})
    run_length_param = "episodes"
    Params: ClassVar[type[SearcherParams]] = AMCParams
    params: AMCParams

    @classmethod
    def create(
        cls, space: Space, params: SearcherParams, seed: int, problem: Problem | None
    ) -> Searcher:
        if problem is None or problem.space is not space:
            raise ValueError("the amc searcher needs the problem whose space it searches")
        return cls(problem, params, seed)

    def __init__(self, problem: Problem, params: SearcherParams, seed: int) -> None:
        super().__init__(problem.space, params, seed)
        p = self.params
        if p.noise_sigma > 0.0 and p.noise_final > p.noise_sigma:
            raise ValueError(
                f"searcher.noise_final={p.noise_final} must not exceed "
                f"searcher.noise_sigma={p.noise_sigma} (the width decays towards it)"
            )
        make_env = partial(LayerPruningEnv, problem, score=False)
        self.envs = DummyVecEnv([make_env] * p.population)
        self.units = len(problem.space.units)
        self.warmup = round(_WARMUP_SHARE * p.episodes) if p.warmup is None else p.warmup
        self.steps_per_episode = self.units if p.gradient_steps is None else p.gradient_steps
        self._streams = GlobalStreams(seed)
        with self._streams.active():
            self.agent = _ALGORITHMS[p.algorithm](
                "MlpPolicy",
                DummyVecEnv([make_env]),
                learning_rate=p.critic_learning_rate,
                buffer_size=p.replay_episodes * self.units,
                learning_starts=0,
                batch_size=p.batch_size,
                tau=p.tau,
                gamma=p.gamma,
                replay_buffer_class=_BaselineReplay,
                replay_buffer_kwargs={"baseline_rate": p.baseline_rate},
                policy_kwargs={"net_arch": list(p.net_arch)},
                seed=seed,
                device="cpu",
            )
        assert isinstance(self.agent, _ActorRate)
        self.agent.actor_rate = p.actor_learning_rate
        self.agent.set_logger(Logger(folder=None, output_formats=[]))  # no SB3-* temp folder
        self.episodes = 0
        self._rollouts: list[list[Transition]] = []
        self._seeds = np.zeros((0, self.units))
        self._seed_names: list[str] = []
        self._asked_labels: list[str | None] = []
        self._best: tuple[float, np.ndarray, np.ndarray] | None = None

    @property
    def _replay(self) -> _BaselineReplay:
        buffer = self.agent.replay_buffer
        assert isinstance(buffer, _BaselineReplay)
        return buffer

    @property
    def baseline(self) -> float | None:
        """The moving reward baseline (None before the first training batch)."""
        return self._replay.baseline

    @baseline.setter
    def baseline(self, value: float | None) -> None:
        self._replay.baseline = value

    @property
    def _warm(self) -> bool:
        """Whether the run was warm-started (:meth:`seed_genomes` got genomes)."""
        return len(self._seeds) > 0

    # --------------------------------------------------------------- acting
    def _noise_sigma(self) -> float:
        """Exploration width in action units ([-1, 1] is twice the ratio range): from
        ``noise_sigma`` at the end of the warm-up down to ``noise_final`` at
        ``noise_horizon`` of the run's episodes, geometrically, and no lower; never below
        a floor of 1e-6 of the range, below which the truncated normal's bounds,
        ``(±1 - mean) / sigma``, overflow and scipy cannot sample. 0 when
        the starting width is 0. A warm-started run starts at ``warm_sigma``, the size
        of the warm starts' own perturbations: its actor imitates the best allocation
        (:meth:`_imitate`), and wide noise would throw that away."""
        p = self.params
        start = p.warm_sigma if self._warm else p.noise_sigma
        if start == 0.0:
            return 0.0
        final = min(p.noise_final, start)
        span = max(p.noise_horizon * p.episodes - self.warmup, 1.0)
        progress = min(max(self.episodes - self.warmup, 0) / span, 1.0)
        width = start * (final / start) ** progress
        return max(2.0 * width, _MIN_SIGMA)

    def seed_genomes(self, genomes: np.ndarray, labels: Sequence[str]) -> None:
        """Warm starts replace the first warm-up episodes, one episode per genome."""
        super().seed_genomes(genomes, labels)
        self._seeds = self._as_genomes(genomes)
        self._seed_names = list(labels)

    def seeded(self, genomes: np.ndarray) -> list[str | None]:
        """The warm-start labels of the episodes the last :meth:`ask` returned (their
        genomes are the seeds after the action wall, not necessarily the seeds)."""
        if len(genomes) != len(self._asked_labels):
            return super().seeded(genomes)
        return list(self._asked_labels)

    def _replays(self, count: int) -> list[int | None]:
        """For each of ``count`` episodes starting now, the warm start it replays, or
        None: episode ``self.episodes + i`` replays seed ``self.episodes + i``."""
        first = self.episodes
        return [first + i if first + i < len(self._seeds) else None for i in range(count)]

    def _actions(self, observations: np.ndarray) -> np.ndarray:
        count = len(observations)
        if self.episodes < self.warmup:
            return self.rng.uniform(-1.0, 1.0, size=(count, 1))
        with torch.no_grad():
            predicted, _ = self.agent.predict(observations, deterministic=True)
        mean = np.asarray(predicted, dtype=np.float64)
        sigma = self._noise_sigma()
        if sigma == 0.0:
            return mean
        shape = self.params.noise_shape or ("clipped" if self._warm else "truncated")
        if shape == "clipped":
            return np.clip(mean + self.rng.normal(0.0, sigma, size=mean.shape), -1.0, 1.0)
        low, high = (-1.0 - mean) / sigma, (1.0 - mean) / sigma
        return np.asarray(truncnorm.rvs(low, high, loc=mean, scale=sigma, random_state=self.rng))

    def ask(self, n: int) -> np.ndarray:
        """Run ``population`` episodes in lockstep; return the genomes of the first ``n``."""
        replays = self._replays(self.envs.num_envs)
        for index, seed in enumerate(replays):  # a warm start: only the lower wall
            self.envs.set_attr("replaying", seed is not None, indices=[index])
        env = self.envs.envs[0]
        assert isinstance(env, LayerPruningEnv)
        observations = np.asarray(self.envs.reset())
        steps: list[list[Transition]] = [[] for _ in range(self.envs.num_envs)]
        genomes = np.zeros((self.envs.num_envs, self.units))
        for step in range(self.units):
            actions = np.array(self._actions(observations), dtype=np.float32)
            for index, seed in enumerate(replays):
                if seed is not None:
                    actions[index, 0] = env.action_of(float(self._seeds[seed, step]), step)
            stepped, _, dones, infos = self.envs.step(actions)
            following = np.asarray(stepped)
            for index, info in enumerate(infos):
                after = info["terminal_observation"] if dones[index] else following[index]
                steps[index].append((observations[index], after, info["applied_action"]))
                if dones[index]:
                    genomes[index] = info["genome"]
            observations = following
        self._rollouts = steps[:n]
        self._asked_labels = [
            None if seed is None else self._seed_names[seed] for seed in replays[:n]
        ]
        return genomes[:n]

    # -------------------------------------------------------------- learning
    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        if len(fitness) != len(self._rollouts):
            raise ValueError(f"tell() got {len(fitness)} scores for {len(self._rollouts)} episodes")
        buffer = self._replay
        for episode, score in zip(self._rollouts, fitness, strict=True):
            reward = np.array([score], dtype=np.float32)  # raw: the baseline comes at sampling
            for step, (before, after, action) in enumerate(episode):
                done = np.array([step == len(episode) - 1])
                buffer.add(before[None], after[None], np.array([[action]]), reward, done, [{}])
        self._remember_best(fitness)
        self.episodes += len(fitness)
        self._rollouts = []
        ready = buffer.size() >= self.params.batch_size
        if self.episodes > self.warmup and ready and self.steps_per_episode:
            with self._streams.active():
                self.agent.train(self.steps_per_episode * len(fitness), self.params.batch_size)
        if self._warm and self.params.imitate and self.episodes >= max(self.warmup, 1):
            self._imitate()

    def _remember_best(self, fitness: np.ndarray) -> None:
        """Keep the observations and applied actions of the best episode so far (from
        the rollouts just scored)."""
        index = int(np.argmax(fitness))
        if self._best is not None and not fitness[index] > self._best[0]:
            return
        episode = self._rollouts[index]
        self._best = (
            float(fitness[index]),
            np.array([before for before, _, _ in episode], dtype=np.float32),
            np.array([[action] for _, _, action in episode], dtype=np.float32),
        )

    def _imitate(self) -> None:
        """Fit the actor (and its target) to the best episode's actions by least squares,
        ``imitate_steps`` Adam steps at the critic's rate: behaviour cloning from the
        best demonstration, as in DDPG from demonstrations (Nair et al. 2018,
        "Overcoming exploration in reinforcement learning with demonstrations"). A
        warm-started agent then explores around the best allocation the one-shot
        baselines and its own episodes found, instead of far from it."""
        assert self._best is not None
        _, observations, actions = self._best
        policy = self.agent.policy
        inputs, targets = torch.as_tensor(observations), torch.as_tensor(actions)
        optimizer = torch.optim.Adam(
            self.agent.actor.parameters(), lr=self.params.critic_learning_rate
        )
        policy.set_training_mode(True)
        for _ in range(self.params.imitate_steps):  # deterministic: no random draws
            loss = torch.nn.functional.mse_loss(policy._predict(inputs, True), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        policy.set_training_mode(False)
        target = getattr(self.agent, "actor_target", None)
        if target is not None:  # DDPG and TD3 act through a target actor in training
            target.load_state_dict(self.agent.actor.state_dict())

    # ------------------------------------------------------------ checkpoint
    def _replay_state(self) -> dict[str, Any]:
        """The replay buffer as plain data: its filled rows and its write position."""
        buffer = self.agent.replay_buffer
        assert buffer is not None
        filled = buffer.buffer_size if buffer.full else buffer.pos
        arrays = {
            k: v[:filled].copy() for k, v in vars(buffer).items() if isinstance(v, np.ndarray)
        }
        return {"arrays": arrays, "pos": buffer.pos, "full": buffer.full}

    def _load_replay(self, state: dict[str, Any]) -> None:
        buffer = self.agent.replay_buffer
        assert buffer is not None
        for name, saved in state["arrays"].items():
            target = getattr(buffer, name, None)
            if (
                not isinstance(target, np.ndarray)
                or saved.shape[1:] != target.shape[1:]
                or (len(saved) > len(target))
            ):
                raise ValueError(f"the saved replay buffer's {name!r} does not fit this agent")
            target[: len(saved)] = saved
        buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])

    def state_dict(self) -> dict[str, Any]:
        extra = {}
        if getattr(self.agent, "log_ent_coef", None) is not None:  # SAC's entropy weight
            extra["log_ent_coef"] = self.agent.log_ent_coef.detach().clone()  # type: ignore[attr-defined]
        return {
            **super().state_dict(),
            "agent": self.agent.get_parameters(),  # torch state dicts of nets and optimizers
            "agent_extra": extra,
            "updates": self.agent._n_updates,
            "replay": self._replay_state(),
            "streams": self._streams.state_dict(),
            "episodes": self.episodes,
            "baseline": self.baseline,
            "best": None if self._best is None else list(self._best),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.agent.set_parameters(state["agent"], exact_match=True)
        if "log_ent_coef" in state["agent_extra"]:
            with torch.no_grad():
                self.agent.log_ent_coef.copy_(state["agent_extra"]["log_ent_coef"])  # type: ignore[attr-defined]
        self.agent._n_updates = state["updates"]
        self._load_replay(state["replay"])
        self._streams.load_state_dict(state["streams"])
        self.episodes = state["episodes"]
        self.baseline = state["baseline"]
        best = state.get("best")
        self._best = None if best is None else (float(best[0]), best[1], best[2])
