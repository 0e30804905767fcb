"""CMA-ES (Hansen & Ostermeier 2001) over per-layer pruning ratios, via the ``cma`` package.

The covariance matrix adaptation evolution strategy samples ``population`` ratio
vectors from a Gaussian, and moves and reshapes the Gaussian toward the best of them.
It is told each sample's fitness, measured on the sample's repaired genome; bounds come
from the space. ``cma`` draws from numpy's global random state: this searcher swaps in
its own state around every call, so runs are reproducible and checkpointable.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import cma
import numpy as np
from pydantic import Field

from searchprune.search.base import SEARCHERS, Searcher, SearcherParams
from searchprune.space import Space


class CMAESParams(SearcherParams):
    sigma: float = Field(
        0.3, gt=0.0, description="initial step size, as a fraction of the ratio range"
    )


@SEARCHERS.register("cmaes", "CMA-ES (cma package) over layer ratios")
class CMAESSearch(Searcher):
    """CMA-ES in ask/tell form; see the module docstring. Real spaces only."""

    name = "cmaes"
    Params = CMAESParams
    params: CMAESParams

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        if space.kind != "real":
            raise ValueError("searcher.name=cmaes needs space.name: layer-ratios (real genomes)")
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
        self._pending: list[np.ndarray] = []
        self._asked: list[np.ndarray] = []
        self._scores: list[float] = []

    def ask(self, n: int) -> np.ndarray:
        if not self._pending:
            self._pending = [np.asarray(x, dtype=np.float64) for x in self.es.ask()]
            self._asked, self._scores = [], []
        batch, self._pending = self._pending[:n], self._pending[n:]
        self._asked.extend(batch)
        return np.array(batch)

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        self._scores.extend(float(score) for score in fitness)
        if not self._pending and len(self._scores) == len(self._asked):
            self.es.tell(self._asked, [-score for score in self._scores])  # cma minimizes

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            # one pickle keeps the strategy bound to this searcher's RandomState
            "es": pickle.dumps((self.es, self._numpy_random)),
            "pending": self._pending,
            "asked": self._asked,
            "scores": self._scores,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.es, self._numpy_random = pickle.loads(state["es"])
        self._pending, self._asked, self._scores = state["pending"], state["asked"], state["scores"]
