"""A toy searcher and a toy criterion, plugged in by ``module:Name`` from a config
(docs/extending.md shows them; tests/test_extending.py runs them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from searchprune.core.layers import LayerInfo
from searchprune.criteria import Scores, layer_scores
from searchprune.search import Searcher
from searchprune.tasks import Task


class UniformSweep(Searcher):
    """Every unit gets the same pruning ratio, swept from the space's lower bounds to its
    upper bounds over one round of ``population`` genomes, round after round."""

    description = "toy: one shared ratio per genome, swept over the bounds"
    space_kinds = frozenset({"real"})

    def ask(self, n: int) -> np.ndarray:
        steps = np.arange(n) / max(self.params.population - 1, 1)
        return self.space.lower + steps[:, None] * (self.space.upper - self.space.lower)

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        """Learns nothing: a sweep."""


def inverse_magnitude(model: nn.Module, layers: list[LayerInfo], task: Task) -> Scores:
    """1 / (|w| + 1e-8): keeps the *smallest* weights (a bad criterion, easy to see)."""
    modules = dict(model.named_modules())
    weights = [modules[layer.name].weight.detach() for layer in layers]
    return layer_scores(layers, [1.0 / (w.abs() + 1e-8) for w in weights])


__all__ = ["UniformSweep", "inverse_magnitude"]
