"""CMA-ES (Hansen & Ostermeier 2001) over per-layer pruning ratios, via the ``cma`` package.

The covariance matrix adaptation evolution strategy samples ``population`` ratio
vectors from a Gaussian, and moves and reshapes the Gaussian toward the best of them.
It is told each sample's fitness, measured on the sample's repaired genome; bounds come
from the space. Warm-start genomes, when given, set the starting mean (the first one)
and are injected into the first generation. ``cma`` would draw from numpy's global
random state: this searcher hands it the ``randn`` of its own RandomState instead, so
runs are reproducible and checkpointable.
"""

from __future__ import annotations

from typing import Any

import cma
import numpy as np
from pydantic import Field

from searchprune.search.base import RoundSearcher, SearcherParams
from searchprune.space import Space


class CMAESParams(SearcherParams):
    sigma: float = Field(
        0.3, gt=0.0, description="initial step size, as a fraction of the ratio range"
    )


class CMAESSearch(RoundSearcher):
    """CMA-ES in ask/tell form, one generation per round; see the module docstring. The
    strategy is told the genomes it sampled (not their repaired versions).

    Checkpoints hold plain data: the seed and every closed generation's scores. Loading
    one rebuilds the strategy from the seed and replays each generation (ask, then tell
    the saved scores): the strategy draws only from this searcher's own RandomState, so
    the replay reaches the same state, which is checked against the saved RandomState.
    """

    Params = CMAESParams
    params: CMAESParams
    space_kinds = frozenset({"real"})
    keeps_repaired = False

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self._warm = np.zeros((0, space.dim))
        self._start(seed)

    def _use_seeds(self, genomes: np.ndarray) -> None:
        """Start the mean at the first warm-start genome and inject them all into the
        first generation (restarting the strategy, which has not asked yet)."""
        self._warm = genomes
        self._start(self._seed)

    def _start(self, seed: int) -> None:
        """A fresh strategy, drawing from a RandomState seeded with ``seed``."""
        space = self.space
        self._seed = seed
        self._numpy_random = np.random.RandomState(seed)
        span = float(np.max(space.upper - space.lower))
        options = {
            "bounds": [space.lower.tolist(), space.upper.tolist()],
            "popsize": self.params.population,
            "seed": np.nan,  # never seed numpy's global state
            "randn": self._numpy_random.randn,
            "verbose": -9,
        }
        start = self._warm[0] if len(self._warm) else (space.lower + space.upper) / 2
        self.es = cma.CMAEvolutionStrategy(start.tolist(), self.params.sigma * span, options)
        if len(self._warm):
            self.es.inject(list(self._warm[: self.params.population]), force=True)
        self._genomes = np.zeros((0, space.dim))
        self._scores = np.zeros(0)
        self._told: list[np.ndarray] = []  # every closed generation's scores

    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._genomes) == 0:
            self._genomes = np.array(self.es.ask(), dtype=np.float64)
            self._scores = np.zeros(len(self._genomes))
            if not self._told and len(self._warm):  # cma moves injected genes off the bounds
                labels = [self.seed_labels[genome.tobytes()] for genome in self._warm]
                for genome, label in zip(self._genomes, labels, strict=False):
                    self.seed_labels[genome.tobytes()] = label
        return self._genomes, self._scores

    def _close_round(self) -> None:
        self.es.tell(list(self._genomes), (-self._scores).tolist())  # cma minimizes
        self._told.append(self._scores.copy())
        self._genomes = np.zeros((0, self.space.dim))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "seed": self._seed,
            "told": np.array(self._told).reshape(len(self._told), self.params.population),
            "open_round": len(self._genomes) > 0,
            "scores": self._scores.copy(),
            "numpy_random": self._numpy_random.get_state(legacy=False),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._start(int(state["seed"]))
        for scores in state["told"]:
            self._round()
            self._scores = np.array(scores, dtype=np.float64)
            self._close_round()
        if state["open_round"]:
            self._round()
            self._scores = np.array(state["scores"], dtype=np.float64)
        replayed, saved = self._numpy_random.get_state(legacy=False), state["numpy_random"]
        same = np.array_equal(replayed["state"]["key"], saved["state"]["key"]) and all(
            replayed[k] == saved[k] for k in ("has_gauss", "gauss")
        )
        if not (same and replayed["state"]["pos"] == saved["state"]["pos"]):
            raise ValueError(
                "the CMA-ES checkpoint does not replay to its saved random state (was it "
                "written with another version of the cma package?)"
            )
