"""CMA-ES (Hansen & Ostermeier 2001) over per-layer pruning ratios, via the ``cma`` package.

The covariance matrix adaptation evolution strategy samples ``population`` ratio
vectors from a Gaussian, and moves and reshapes the Gaussian toward the best of them.
It is told each sample's fitness, measured on the sample's repaired genome; bounds come
from the space. ``cma`` draws from numpy's global random state: this searcher swaps in
its own state around every call, so runs are reproducible and checkpointable.
"""

from __future__ import annotations

import pickle
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
    strategy is told the genomes it sampled (not their repaired versions)."""

    Params = CMAESParams
    params: CMAESParams
    space_kinds = frozenset({"real"})
    keeps_repaired = False

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self._numpy_random = np.random.RandomState(seed)
        span = float(np.max(space.upper - space.lower))
        options = {
            "bounds": [space.lower.tolist(), space.upper.tolist()],
            "popsize": self.params.population,
            "seed": np.nan,  # never seed numpy's global state
            "randn": self._numpy_random.randn,
            "verbose": -9,
        }
        start = (space.lower + space.upper) / 2
        self.es = cma.CMAEvolutionStrategy(start.tolist(), self.params.sigma * span, options)
        self._genomes = np.zeros((0, space.dim))
        self._scores = np.zeros(0)

    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._genomes) == 0:
            self._genomes = np.array(self.es.ask(), dtype=np.float64)
            self._scores = np.zeros(len(self._genomes))
        return self._genomes, self._scores

    def _close_round(self) -> None:
        self.es.tell(list(self._genomes), (-self._scores).tolist())  # cma minimizes
        self._genomes = np.zeros((0, self.space.dim))

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            # one pickle keeps the strategy bound to this searcher's RandomState
            "es": pickle.dumps((self.es, self._numpy_random)),
            "genomes": self._genomes.copy(),
            "scores": self._scores.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.es, self._numpy_random = pickle.loads(state["es"])
        self._genomes, self._scores = state["genomes"].copy(), state["scores"].copy()
