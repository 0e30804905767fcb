"""AMC: an off-policy RL agent picks each layer's pruning ratio (He et al. 2018).

The agent (stable-baselines3 DDPG by default, TD3 or SAC selectable) walks the network
in :class:`envs.layer_pruning.LayerPruningEnv`, one unit per step, and the action wall
keeps every episode within the budget. AMC's recipe:

- ``warmup`` episodes of uniformly random actions fill the replay buffer first;
- exploration noise from a truncated normal around the policy's action, whose width
  decays per episode (AMC: sigma 0.5 * 0.95^episode, on ratios in [0, 1]);
- gamma = 1, and every transition of an episode is credited with that episode's final
  reward minus a moving-average baseline (variance reduction);
- the best episode's masks are what the run reports (the run loop tracks them).

The action wall guarantees the budget but lets early units overshoot it; the evaluator
then repairs each episode's ratios onto the budget exactly, like every other searcher's
genomes (measured on the digits CNN at 90% weight sparsity: 66% val accuracy with the
repair against 50% without), and the transitions are credited with that score.

``population`` episodes run in lockstep in a stable-baselines3 vector env, so their
final evaluations reach the evaluator as one batch; the agent then trains
``gradient_steps`` times per episode. The agent's random draws (replay sampling, noise)
come from this searcher's own generators, swapped in around each call, so runs are
reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.stats import truncnorm
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.layer_pruning import LayerPruningEnv
from searchprune.problem import Problem
from searchprune.search.base import Searcher, SearcherParams
from searchprune.search.streams import GlobalStreams
from searchprune.space import Space

Transition = tuple[np.ndarray, np.ndarray, float]  # observation, next observation, action
_MIN_SIGMA = 2e-6  # exploration floor: 1e-6 of the action range [-1, 1]
_ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}


class AMCParams(SearcherParams):
    algorithm: Literal["ddpg", "td3", "sac"] = Field("ddpg", description="stable-baselines3 agent")
    warmup: int = Field(100, ge=0, description="episodes of random actions before the agent acts")
    noise_sigma: float = Field(
        0.5, ge=0.0, description="exploration noise width, on ratios in [0, 1]"
    )
    noise_decay: float = Field(0.95, gt=0.0, le=1.0, description="noise width factor per episode")
    baseline_alpha: float = Field(
        0.95, ge=0.0, lt=1.0, description="moving-average reward baseline"
    )
    gradient_steps: int = Field(1, ge=0, description="agent updates per scored episode")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    net_arch: list[int] = Field(
        default_factory=lambda: [64, 64], description="actor/critic hidden layers"
    )
    buffer_size: int = Field(20_000, ge=1)


class AMCSearch(Searcher):
    """AMC-style reinforcement learning over the ``layer-ratios`` space; see the module
    docstring."""

    description = "AMC: DDPG/TD3/SAC agent picks per-layer ratios (stable-baselines3)"
    space_kinds = frozenset({"real"})
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
        make_env = partial(LayerPruningEnv, problem, score=False)
        self.envs = DummyVecEnv([make_env] * p.population)
        self.units = len(problem.space.units)
        self._streams = GlobalStreams(seed)
        with self._streams.active():
            self.agent = _ALGORITHMS[p.algorithm](
                "MlpPolicy",
                DummyVecEnv([make_env]),
                learning_rate=p.learning_rate,
                buffer_size=p.buffer_size,
                learning_starts=0,
                batch_size=p.batch_size,
                gamma=1.0,
                policy_kwargs={"net_arch": list(p.net_arch)},
                seed=seed,
                device="cpu",
            )
        self.agent.set_logger(configure(None, []))
        self.episodes = 0
        self.baseline: float | None = None
        self._rollouts: list[list[Transition]] = []

    # --------------------------------------------------------------- acting
    def _noise_sigma(self) -> float:
        """Exploration width in action units ([-1, 1] is twice the ratio range), decayed
        per episode down to a floor of 1e-6 of the range: below it the truncated normal's
        bounds, ``(±1 - mean) / sigma``, overflow and scipy cannot sample (the decay
        reaches it a few hundred episodes after warm-up; the actions are then the policy's
        to within the floor). 0 when ``noise_sigma`` is 0."""
        p = self.params
        if p.noise_sigma == 0.0:
            return 0.0
        decay = p.noise_decay ** max(self.episodes - p.warmup, 0)
        return max(2.0 * p.noise_sigma * decay, _MIN_SIGMA)

    def _actions(self, observations: np.ndarray) -> np.ndarray:
        count = len(observations)
        if self.episodes < self.params.warmup:
            return self.rng.uniform(-1.0, 1.0, size=(count, 1))
        with torch.no_grad():
            predicted, _ = self.agent.predict(observations, deterministic=True)
        mean = np.asarray(predicted, dtype=np.float64)
        sigma = self._noise_sigma()
        if sigma == 0.0:
            return mean
        low, high = (-1.0 - mean) / sigma, (1.0 - mean) / sigma
        return np.asarray(truncnorm.rvs(low, high, loc=mean, scale=sigma, random_state=self.rng))

    def ask(self, n: int) -> np.ndarray:
        """Run ``population`` episodes in lockstep; return the genomes of the first ``n``."""
        observations = np.asarray(self.envs.reset())
        steps: list[list[Transition]] = [[] for _ in range(self.envs.num_envs)]
        genomes = np.zeros((self.envs.num_envs, self.units))
        for _ in range(self.units):
            actions = self._actions(observations).astype(np.float32)
            stepped, _, dones, infos = self.envs.step(actions)
            following = np.asarray(stepped)
            for index, info in enumerate(infos):
                after = info["terminal_observation"] if dones[index] else following[index]
                steps[index].append((observations[index], after, info["applied_action"]))
                if dones[index]:
                    genomes[index] = info["genome"]
            observations = following
        self._rollouts = steps[:n]
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
        alpha = self.params.baseline_alpha
        buffer = self.agent.replay_buffer
        assert buffer is not None
        for episode, score in zip(self._rollouts, fitness, strict=True):
            if self.baseline is None:
                self.baseline = float(score)
            credit = np.array([float(score) - self.baseline], dtype=np.float32)
            for step, (before, after, action) in enumerate(episode):
                done = np.array([step == len(episode) - 1])
                buffer.add(before[None], after[None], np.array([[action]]), credit, done, [{}])
            self.baseline += (1.0 - alpha) * (float(score) - self.baseline)
        self.episodes += len(fitness)
        self._rollouts = []
        ready = buffer.size() >= self.params.batch_size
        if self.episodes > self.params.warmup and ready and self.params.gradient_steps:
            with self._streams.active():
                self.agent.train(self.params.gradient_steps * len(fitness), self.params.batch_size)

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
