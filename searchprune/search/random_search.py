"""Random search: independent samples of the space, each repaired to the budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from searchprune.search.base import Searcher, SearcherParams
from searchprune.space import Space


class RandomSearch(Searcher):
    """Uniform random genomes, the baseline every searcher must beat (Bergstra & Bengio 2012
    showed random search is a strong baseline for hyper-parameter search). Warm-start
    genomes, when given, are asked for first; a draw that would repeat an evaluation is
    drawn again."""

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self._seeds = self._as_genomes(np.zeros((0, space.dim)))
        self._next_seed = 0

    def _use_seeds(self, genomes: np.ndarray) -> None:
        self._seeds = genomes

    def ask(self, n: int) -> np.ndarray:
        seeds = self._seeds[self._next_seed : self._next_seed + n]
        self._next_seed += len(seeds)
        drawn = self._redraw(
            self.space.sample(self.rng, n - len(seeds)),
            lambda stale: self.space.sample(self.rng, len(stale)),
        )
        return np.concatenate([seeds, drawn])

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        """Random search learns nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "next_seed": self._next_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._next_seed = int(state["next_seed"])
