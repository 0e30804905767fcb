"""Simulated annealing with batched neighbours and a scale-free, budgeted schedule.

Metropolis acceptance (Kirkpatrick, Gelatt & Vecchi 1983, "Optimization by simulated
annealing", Science 220) of moves from a current state, with three changes that make
it fit a pruning search, several of them answers to NNI's SA pruner, which loops until
its temperature falls below a threshold and compares raw metric differences with it:

Batched (parallel-neighbour) moves
    Every round proposes ``population`` neighbours of the current state, so the
    evaluator scores a whole batch per call; the best of them is the round's move, put
    to the Metropolis test once. A round cut short by the evaluation budget is finished
    by the next ``ask``. The first round is ``population`` random samples of the space
    (warm-start genomes first, when given), the best of which becomes the current state.
Scale-free energy
    A fitness change :math:`\\Delta` is measured in units of :math:`s`, the median of
    the last ``scale_window`` non-zero :math:`|\\Delta|` between a neighbour and its
    current state (every neighbour counts, not only the moves). A worse move is accepted
    with probability :math:`\\exp(\\Delta / (s T))`, so the search is the same for an
    accuracy in [0, 1], a loss, or a fitness times 1000 plus 5, and ``T = 1`` accepts a
    move one typical change worse with probability :math:`e^{-1}`. Zero changes
    (neighbours the budget repair maps back onto the current state) do not shrink
    :math:`s`; while every change seen is zero, no move is worse and :math:`s` is unused.
Cooling over evaluations
    The temperature falls with the number of *evaluations* (``population`` per round,
    counted when the round closes), from ``initial_temperature`` to
    ``final_temperature`` over ``steps`` evaluations, and stays there; the run loop's
    ``run.max_evals`` ends the search. ``exponential`` is geometric cooling
    (Kirkpatrick et al. 1983), ``linear`` is linear in T, ``adaptive`` is geometric
    cooling whose pace is scaled by the round's acceptance rate over the target 0.44 of
    Lam & Delosme 1988 ("An efficient simulated annealing schedule: derivation",
    Yale TR 8816), clamped to between half and twice the exponential pace, and never so
    far behind that twice the pace could not reach ``final_temperature`` at ``steps``.
    With ``reheat``, ``patience`` rounds without a new best-ever fitness set the
    temperature back up to ``reheat_to * initial_temperature`` (restarted annealing),
    from where it cools again at the schedule's pace.

Moves: a Gaussian step of ``step`` times each gene's range on every gene
(``layer-ratios``, clipped to the bounds), or ``flips`` distinct bits flipped
(``binary``); a move that would repeat an evaluation is drawn again. The current state
and the best-ever genome are kept as the *repaired* genomes the run loop scores.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from searchprune.search.base import RoundSearcher, SearcherParams
from searchprune.space import Space

_PACE = (0.5, 2.0)  # adaptive cooling pace, relative to the exponential schedule's


class SAParams(SearcherParams):
    step: float = Field(
        0.1, gt=0.0, le=1.0, description="gaussian move size, as a fraction of each gene's range"
    )
    flips: int = Field(1, ge=1, description="bits flipped per move in the binary space")
    schedule: Literal["exponential", "linear", "adaptive"] = Field(
        "exponential", description="how the temperature falls with evaluations"
    )
    initial_temperature: float = Field(
        1.0, gt=0.0, description="starting temperature, in units of the typical fitness change"
    )
    final_temperature: float = Field(
        0.01, gt=0.0, description="temperature reached after `steps` evaluations"
    )
    steps: int = Field(1000, ge=1, description="evaluations over which the temperature cools")
    target_acceptance: float = Field(
        0.44, gt=0.0, lt=1.0, description="acceptance rate the adaptive schedule steers towards"
    )
    reheat: bool = Field(False, description="raise the temperature after `patience` stale rounds")
    patience: int = Field(10, ge=1, description="rounds without a new best before a reheat")
    reheat_to: float = Field(
        0.5, gt=0.0, le=1.0, description="reheat temperature, as a fraction of the initial one"
    )
    scale_window: int = Field(
        512, ge=1, description="recent non-zero fitness changes whose median is the energy unit"
    )


class SimulatedAnnealing(RoundSearcher):
    """Parallel-neighbour simulated annealing; see the module docstring."""

    Params = SAParams
    params: SAParams

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        p = self.params
        if p.final_temperature >= p.initial_temperature:
            raise ValueError(
                f"searcher.final_temperature={p.final_temperature} must be below "
                f"searcher.initial_temperature={p.initial_temperature}"
            )
        if p.reheat and p.reheat_to * p.initial_temperature <= p.final_temperature:
            raise ValueError(
                f"searcher.reheat_to={p.reheat_to} times searcher.initial_temperature must be "
                f"above searcher.final_temperature={p.final_temperature}"
            )
        self.candidates = space.sample(self.rng, p.population)
        self.scores = np.full(p.population, -np.inf)
        self.current = self.candidates[0].copy()
        self.current_score = -np.inf
        self.best = self.current.copy()
        self.best_score = -np.inf
        self.round = 0
        self.clock = 0.0  # evaluations into the schedule (rewound by a reheat)
        self.progress = 0.0  # 0 at initial_temperature, 1 at final_temperature
        self.stale = 0  # rounds since the best-ever fitness improved
        self.changes = np.empty(0)  # recent non-zero |fitness change|

    def _use_seeds(self, genomes: np.ndarray) -> None:
        """Warm-start genomes join the first round, whose best is the starting state."""
        self.candidates[: len(genomes)] = genomes

    # ------------------------------------------------------------- rounds
    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        return self.candidates, self.scores

    # ------------------------------------------------------------ annealing
    @property
    def temperature(self) -> float:
        p = self.params
        t0, tf = p.initial_temperature, p.final_temperature
        if p.schedule == "linear":
            return t0 + (tf - t0) * self.progress
        return t0 * (tf / t0) ** self.progress

    def _progress_at(self, temperature: float) -> float:
        """The schedule's progress at which it reaches ``temperature``."""
        p = self.params
        t0, tf = p.initial_temperature, p.final_temperature
        if p.schedule == "linear":
            return (t0 - temperature) / (t0 - tf)
        return math.log(temperature / t0) / math.log(tf / t0)

    @property
    def scale(self) -> float:
        """The energy unit: median recent non-zero fitness change (1 before any)."""
        return float(np.median(self.changes)) if len(self.changes) else 1.0

    def _close_round(self) -> None:
        best = int(np.argmax(self.scores))
        if self.round == 0:
            self._move_to(best)
            acceptance = self.params.target_acceptance
        else:
            acceptance = self._metropolis(self.scores - self.current_score, best)
        if self.scores[best] > self.best_score:
            self.best, self.best_score = self.candidates[best].copy(), float(self.scores[best])
            self.stale = 0
        else:
            self.stale += 1
        self._cool(len(self.scores), acceptance)
        self.round += 1
        self.candidates = self._redraw(
            self._neighbours(self.params.population), lambda stale: self._neighbours(len(stale))
        )

    def _move_to(self, index: int) -> None:
        self.current = self.candidates[index].copy()
        self.current_score = float(self.scores[index])

    def _metropolis(self, changes: np.ndarray, best: int) -> float:
        """Test the round's best neighbour as the move; return the round's mean
        single-move acceptance probability."""
        nonzero = np.abs(changes[changes != 0.0])
        self.changes = np.concatenate([self.changes, nonzero])[-self.params.scale_window :]
        energy = np.minimum(changes, 0.0) / (self.scale * self.temperature)
        if changes[best] >= 0.0 or self.rng.random() < math.exp(energy[best]):
            self._move_to(best)
        return float(np.exp(energy).mean())

    def _cool(self, evaluations: int, acceptance: float) -> None:
        """Advance the schedule by a round's evaluations, then reheat if stale."""
        p = self.params
        self.clock += evaluations
        if p.schedule == "adaptive":
            pace = float(np.clip(acceptance / p.target_acceptance, *_PACE))
            catch_up = 1.0 - _PACE[1] * (p.steps - self.clock) / p.steps
            self.progress = max(self.progress + pace * evaluations / p.steps, catch_up)
        else:
            self.progress = self.clock / p.steps
        self.progress = min(self.progress, 1.0)
        if p.reheat and self.stale >= p.patience:
            self._reheat()

    def _reheat(self) -> None:
        """Rewind the schedule to ``reheat_to * initial_temperature`` (if below it)."""
        p = self.params
        self.stale = 0
        self.progress = min(self.progress, self._progress_at(p.reheat_to * p.initial_temperature))
        self.clock = self.progress * p.steps

    def _neighbours(self, count: int) -> np.ndarray:
        """``count`` random moves from the current state."""
        dim = self.space.dim
        if self.space.kind == "binary":
            flips = min(self.params.flips, dim)
            picks = np.argpartition(self.rng.random((count, dim)), flips - 1, axis=1)[:, :flips]
            genomes = np.repeat(self.current[None, :], count, axis=0)
            genomes[np.arange(count)[:, None], picks] ^= True
            return genomes
        low, up = self.space.lower, self.space.upper
        noise = self.rng.normal(0.0, self.params.step * (up - low), size=(count, dim))
        return np.clip(self.current + noise, low, up)

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "candidates": self.candidates.copy(),
            "scores": self.scores.copy(),
            "current": (self.current.copy(), self.current_score),
            "best": (self.best.copy(), self.best_score),
            "round": self.round,
            "clock": self.clock,
            "progress": self.progress,
            "stale": self.stale,
            "changes": self.changes.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.candidates = state["candidates"].copy()
        self.scores = state["scores"].copy()
        self.current, self.current_score = state["current"][0].copy(), state["current"][1]
        self.best, self.best_score = state["best"][0].copy(), state["best"][1]
        self.round = state["round"]
        self.clock = state["clock"]
        self.progress = state["progress"]
        self.stale = state["stale"]
        self.changes = state["changes"].copy()
