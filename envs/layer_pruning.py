"""``LayerPruningEnv``: AMC's layer-by-layer pruning as a Gymnasium environment.

He et al. 2018 ("AMC: AutoML for Model Compression") treat pruning as a sequential
decision: an agent walks the network one prunable unit at a time (a layer at weight
granularity, a channel group at channel granularity) and picks the unit's pruning
ratio; the reward is the pruned network's score, given at the last step.

- Observation: AMC's layer embedding, 11 features each in [0, 1] (float32): unit
  index, layer type (0 Linear, 1 Conv), input channels, output channels, stride, kernel
  size, params, FLOPs (these eight min-max normalized over the units), then the share
  of the dense FLOPs removed so far, the share the units still to come control, and the
  previous action. The two FLOPs shares come from the cost model, so at channel granularity
  they count the FLOPs a group's channels also remove from the inputs of the layers it
  feeds (on the digits CNN, pruning 7 of the first conv's 16 channels removes 39% of
  the FLOPs, nearly all of them in the next conv).
- Action: ``Box(-1, 1, (1,))``, rescaled inside the env to the unit's
  ``[min_ratio, max_ratio]``.
- Action wall (AMC, section 3.2), two-sided: each action is clipped to the counts with
  which the episode can still end *on* the budget: at least the least count that meets
  it if every later unit is pruned as much as it may be, and at most the least count
  that meets it with every later unit pruned as little as it may be. The last unit has
  no later units, so both walls coincide there and its count is the one that brings
  the episode onto the budget (AMC's rule for the final layer). Every episode therefore
  meets the budget, and removing one element less in its last unit would break it:
  the network scored is the one the actions (``info["applied_action"]``) describe,
  with no repair after the agent acted. An episode that replays a given allocation
  (``replaying``: the ``amc`` searcher's warm starts, the one-shot baselines' choices,
  already within the budget) is held only to the lower wall, so it is scored as the
  baseline chose it (global magnitude may remove a last block's inner conv whole, which
  the upper wall would turn into keeping one channel).
- Reward: 0 until the last step, then the fitness of the decoded masks, scored by the
  project's evaluator (``score=False`` leaves it 0 and only reports the genome, for the
  ``amc`` searcher, which batches the scoring of many episodes).

The masks come from the problem's ``layer-ratios`` space, like every other searcher's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from searchprune.assemble import build_problem, build_task
from searchprune.config import Config, load_config, validate_config
from searchprune.core.budget import Budget
from searchprune.evaluate import Evaluator, LocalEvaluator
from searchprune.problem import Problem
from searchprune.space import LayerRatioSpace
from searchprune.tasks.base import Task

FEATURES = (
    "index",
    "is_conv",
    "in_channels",
    "out_channels",
    "stride",
    "kernel",
    "params",
    "flops",
    "flops_removed",
    "flops_rest",
    "previous_action",
)


def _problem_from(
    source: Problem | Task | Config | Mapping[str, Any] | str | Path, problem_kwargs: dict[str, Any]
) -> Problem:
    if isinstance(source, Problem):
        return source
    if isinstance(source, Task):
        budget = problem_kwargs.pop("budget", None)
        if budget is None:
            raise ValueError(
                "LayerPruningEnv(task, budget=...) needs a budget, e.g. {'flops': 0.5}"
            )
        if isinstance(budget, Mapping):
            budget = Budget.from_mapping(budget)
        return Problem(source, budget=budget, **problem_kwargs)
    if isinstance(source, (str, Path)):
        config = load_config(source)
    elif isinstance(source, Config):
        config = source
    else:
        config = validate_config(dict(source))
    return build_problem(config, build_task(config))


class LayerPruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """One episode = one pass over the prunable units; see the module docstring.

    ``source`` is a :class:`Problem`, a :class:`Task` (with ``budget=`` and any other
    :class:`Problem` keyword), or a config (a :class:`Config`, plain data or a YAML path).
    The problem's space must be ``layer-ratios``. The env scores the actions as taken
    (the action wall lands every episode on the budget): an ``evaluator`` passed in should
    repair in ``budget_mode="bound"``, which leaves such genomes as they are; without one,
    the env builds such a :class:`LocalEvaluator`.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium declares it per instance)

    def __init__(
        self,
        source: Problem | Task | Config | Mapping[str, Any] | str | Path,
        *,
        evaluator: Evaluator | None = None,
        score: bool = True,
        **problem_kwargs: Any,
    ) -> None:
        self.problem = _problem_from(source, dict(problem_kwargs))
        space = self.problem.space
        if not isinstance(space, LayerRatioSpace):
            raise ValueError("LayerPruningEnv needs space.name: layer-ratios (one ratio per unit)")
        self.space: LayerRatioSpace = space
        self.score = score
        # the action wall already meets the budget: score the actions as taken
        self.evaluator = (
            evaluator
            if evaluator is not None or not score
            else LocalEvaluator(self.problem, budget_mode="bound")
        )
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._static = self._embedding()
        self.sizes = space.cost.sizes
        self.k_min, self.k_max = space.repairer.k_min, space.repairer.k_max
        self.replaying = False
        """Set while an episode replays a given allocation (a warm start within the
        budget): only the lower wall holds, so a unit the allocation removes whole, with
        the budget already met, stays removed (the upper wall would keep one element)."""
        self._removed = np.zeros(len(self.sizes))
        self._step = 0
        self._previous = 0.0

    # --------------------------------------------------------------- features
    def _embedding(self) -> np.ndarray:
        """Static features of every unit, min-max normalized."""
        layers = {layer.name: layer for layer in self.problem.layers}
        rows = []
        for index, unit in enumerate(self.space.units):
            members = [layers[name] for name in unit.layers]
            first = members[0]
            rows.append(
                [
                    index,
                    0.0 if first.kind == "linear" else 1.0,
                    first.in_channels,
                    first.out_channels,
                    max(first.stride, default=1),
                    max(first.kernel_size, default=1),
                    sum(layer.params for layer in members),
                    sum(layer.flops for layer in members),
                ]
            )
        table = np.array(rows, dtype=np.float64)
        low, high = table.min(axis=0), table.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        return (table - low) / span

    def flops_shares(self, step: int, removed: np.ndarray) -> tuple[float, float]:
        """The shares of the dense FLOPs that ``removed`` (counts of the units before
        ``step``; the others are ignored) removes, and that the units after ``step``
        control: the FLOPs removing all of them would remove on top. Both by the cost
        model, which counts a channel group's FLOPs in the layers it feeds too."""
        trial = np.zeros((2, len(self.sizes)))
        trial[:, :step] = removed[:step]
        trial[1, step + 1 :] = self.sizes[step + 1 :]
        kept = self.space.cost.fractions(trial)["flops_fraction"]
        return float(1.0 - kept[0]), float(kept[0] - kept[1])

    def _observation(self) -> np.ndarray:
        t = min(self._step, len(self.sizes) - 1)
        reduced, rest = self.flops_shares(t, self._removed)
        dynamic = [reduced, rest, self._previous]
        return np.clip(np.concatenate([self._static[t], dynamic]), 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------ action wall
    def walls(self, step: int, removed: np.ndarray) -> tuple[int, int]:
        """The least and the most count unit ``step`` may remove, given ``removed`` for
        the units before it, so that the episode can still end on the budget: the least
        count that meets it with every later unit at its most, and the least that meets
        it with every later unit at its least. Equal at the last unit. While
        :attr:`replaying` an allocation, the most is the unit's own limit."""
        trial = np.repeat(np.asarray(removed, dtype=np.float64)[None, :], 2, axis=0)
        trial[0, step + 1 :] = self.k_max[step + 1 :]
        trial[1, step + 1 :] = self.k_min[step + 1 :]
        low, high = self.space.repairer.least_count(trial, step)
        if self.replaying:
            high = self.k_max[step]
        return int(low), int(high)

    def ratio_of(self, action: float, step: int) -> float:
        """The pruning ratio an action in [-1, 1] asks for at unit ``step``."""
        low, high = self.space.lower[step], self.space.upper[step]
        return float(low + (np.clip(action, -1.0, 1.0) + 1.0) / 2.0 * (high - low))

    def action_of(self, ratio: float, step: int) -> float:
        """The action in [-1, 1] that asks for ``ratio`` at unit ``step``."""
        low, high = self.space.lower[step], self.space.upper[step]
        return float(np.clip(2.0 * (ratio - low) / max(high - low, 1e-12) - 1.0, -1.0, 1.0))

    # ---------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._removed = np.zeros(len(self.sizes))
        self._step = 0
        self._previous = 0.0
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        t = self._step
        if t >= len(self.sizes):
            raise RuntimeError("step() after the episode ended; call reset()")
        wanted = np.round(
            self.ratio_of(float(np.asarray(action).reshape(-1)[0]), t) * self.sizes[t]
        )
        count = float(np.clip(wanted, *self.walls(t, self._removed)))
        self._removed[t] = count
        ratio = count / self.sizes[t]
        self._previous = (ratio - self.space.lower[t]) / max(
            self.space.upper[t] - self.space.lower[t], 1e-12
        )
        self._step += 1
        info: dict[str, Any] = {"ratio": ratio, "applied_action": self.action_of(ratio, t)}
        terminated = self._step == len(self.sizes)
        reward = 0.0
        if terminated:
            genome = self._removed / self.sizes
            info["genome"] = genome
            if self.score:
                assert self.evaluator is not None
                result = self.evaluator.evaluate(genome[None, :])[0]
                reward = result.fitness
                info["metrics"] = result.evaluation.metrics
        return self._observation(), reward, terminated, False, info
