"""Particle swarm optimization, over real ratios or channel keep-bits.

Each round the swarm's ``population`` particles are evaluated; each particle then moves
towards its own best position and the best position of its neighbourhood:

.. math::

    v \\leftarrow w v + c_1 r_1 (p_i - x) + c_2 r_2 (g_i - x)

with :math:`r_1, r_2 \\sim U(0, 1)` drawn per gene, and :math:`v` clamped to
:math:`\\pm v_{max}`.

``layer-ratios`` (continuous PSO, Kennedy & Eberhart 1995, "Particle swarm
optimization", Proc. ICNN): :math:`x \\leftarrow x + v`, clipped to each gene's bounds;
:math:`v_{max}` is ``velocity_clamp`` times each gene's range.

``binary`` (binary PSO, Kennedy & Eberhart 1997, "A discrete binary version of the
particle swarm algorithm", Proc. IEEE SMC): velocities stay real, and each bit is drawn
anew as 1 with probability :math:`\\mathrm{sigmoid}(v)`; :math:`v_{max}` is
``binary_vmax``, so that no bit's probability freezes at 0 or 1.

The default coefficients :math:`w = 0.72, c_1 = c_2 = 1.49` are the constriction
coefficients of Clerc & Kennedy 2002 ("The particle swarm: explosion, stability, and
convergence in a multidimensional complex space", IEEE TEC 6(1)) written as an inertia
weight. Binary PSO defaults to :math:`w = 1`, the 1997 update (which has no inertia
term): with :math:`w < 1` the velocity of a bit that already agrees with both bests
decays to 0, its probability to 1/2, and the swarm keeps re-randomizing the bits it
has settled. ``topology: ring`` takes :math:`g_i` from particles ``i - k .. i + k`` only
(``k = neighbours``), which slows the spread of information and keeps the swarm diverse
(Kennedy & Mendes 2002, "Population structure and particle swarm performance", Proc.
CEC); ``global`` takes the best of the whole swarm.

Personal bests are kept as the *repaired* genomes the run loop scores. A round cut short
by the evaluation budget is finished by the next ``ask`` before the swarm moves.
Velocities start uniform in :math:`\\pm v_{max}` (real) or at 0 (binary, whose first
bits are drawn by the space's sampler); warm-start genomes, when given, are the first
particles' starting positions.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from searchprune.search.base import RoundSearcher, SearcherParams
from searchprune.space import Space


class PSOParams(SearcherParams):
    inertia: float | None = Field(
        None,
        ge=0.0,
        description="inertia weight w (default: 0.72 for layer-ratios, 1.0 for binary)",
    )
    cognitive: float = Field(
        1.49, ge=0.0, description="pull c1 towards the particle's own best position"
    )
    social: float = Field(1.49, ge=0.0, description="pull c2 towards the neighbourhood's best")
    velocity_clamp: float = Field(
        0.2, gt=0.0, le=1.0, description="largest real velocity, as a fraction of each gene's range"
    )
    binary_vmax: float = Field(
        4.0, gt=0.0, description="largest binary velocity; sigmoid(4) = 0.982 keeps bits mobile"
    )
    topology: Literal["global", "ring"] = Field(
        "global", description="best of the whole swarm, or of each particle's ring neighbours"
    )
    neighbours: int = Field(1, ge=1, description="ring neighbours on each side of a particle")


class ParticleSwarmSearch(RoundSearcher):
    """Synchronous PSO (the swarm moves once every particle is scored); see the module
    docstring."""

    Params = PSOParams
    params: PSOParams

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        p = self.params
        self.binary = space.kind == "binary"
        self.inertia = p.inertia if p.inertia is not None else (1.0 if self.binary else 0.72)
        self.vmax = (
            np.full(space.dim, p.binary_vmax)
            if self.binary
            else p.velocity_clamp * (space.upper - space.lower)
        )
        self.positions = space.sample(self.rng, p.population)
        self.velocities = (
            np.zeros((p.population, space.dim))
            if self.binary
            else self.rng.uniform(-self.vmax, self.vmax, size=(p.population, space.dim))
        )
        self.scores = np.full(p.population, -np.inf)
        self.best_positions = self.positions.copy()
        self.best_scores = np.full(p.population, -np.inf)

    def _use_seeds(self, genomes: np.ndarray) -> None:
        """Warm-start genomes are the first particles' starting positions."""
        self.positions[: len(genomes)] = genomes
        self.best_positions = self.positions.copy()

    # ------------------------------------------------------------- rounds
    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        return self.positions, self.scores

    # ---------------------------------------------------------------- swarm
    def _neighbourhood_best(self) -> np.ndarray:
        """The best personal-best position in each particle's neighbourhood, ``(P, dim)``."""
        if self.params.topology == "global":
            return np.broadcast_to(
                self.best_positions[np.argmax(self.best_scores)], self.best_positions.shape
            )
        k, count = self.params.neighbours, self.params.population
        ring = (np.arange(count)[:, None] + np.arange(-k, k + 1)[None, :]) % count
        winner = ring[np.arange(count), np.argmax(self.best_scores[ring], axis=1)]
        return self.best_positions[winner]

    def _close_round(self) -> None:
        """Update personal bests from the scored round, then move every particle."""
        p = self.params
        improved = self.scores > self.best_scores
        self.best_positions[improved] = self.positions[improved]
        self.best_scores[improved] = self.scores[improved]
        x = self.positions.astype(np.float64)
        pull_own = self.rng.random(x.shape) * (self.best_positions - x)
        pull_best = self.rng.random(x.shape) * (self._neighbourhood_best() - x)
        velocities = self.inertia * self.velocities + p.cognitive * pull_own + p.social * pull_best
        self.velocities = np.clip(velocities, -self.vmax, self.vmax)
        if self.binary:
            keep_probability = 1.0 / (1.0 + np.exp(-self.velocities))
            self.positions = self.rng.random(x.shape) < keep_probability
        else:
            self.positions = np.clip(x + self.velocities, self.space.lower, self.space.upper)

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "positions": self.positions.copy(),
            "velocities": self.velocities.copy(),
            "scores": self.scores.copy(),
            "best_positions": self.best_positions.copy(),
            "best_scores": self.best_scores.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.positions = state["positions"].copy()
        self.velocities = state["velocities"].copy()
        self.scores = state["scores"].copy()
        self.best_positions = state["best_positions"].copy()
        self.best_scores = state["best_scores"].copy()
