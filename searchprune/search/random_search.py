"""Random search: independent samples of the space, each repaired to the budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from searchprune.search.base import Searcher


class RandomSearch(Searcher):
    """Uniform random genomes, the baseline every searcher must beat (Bergstra & Bengio 2012
    showed random search is a strong baseline for hyper-parameter search)."""


    def ask(self, n: int) -> np.ndarray:
        return self.space.sample(self.rng, n)

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        """Random search learns nothing."""
