"""Genetic algorithm on DEAP's operators, over real ratios or channel keep-bits.

Generational GA with elitism (De Jong 1975): tournament selection, crossover and
mutation produce ``population - elites`` children; the ``elites`` best individuals seen
so far (a hall of fame) are copied unchanged into the next generation. Only children
that crossover or mutation changed are evaluated. Over the ``binary`` space this is GA
channel pruning in the spirit of Hu et al. 2018; over ``layer-ratios`` it searches
per-layer pruning ratios.

DEAP's operators draw from Python's global ``random``; this searcher swaps in its own
``random.Random`` state around every call, so runs are reproducible and checkpointable
and two searchers never share a stream. DEAP's ``creator`` is not used: individuals
are plain lists inside the searcher, genomes leave it as numpy arrays.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from deap import base, tools
from pydantic import Field

from searchprune.search.base import SEARCHERS, Searcher, SearcherParams
from searchprune.space import Space


class GAParams(SearcherParams):
    elites: int = Field(2, ge=0, description="best individuals copied unchanged each generation")
    tournament: int = Field(3, ge=2, description="tournament size for selection")
    cx_prob: float = Field(0.7, ge=0.0, le=1.0, description="probability a pair is crossed over")
    mut_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability a child is mutated")
    crossover: Literal["blend", "sbx", "uniform", "two-point"] | None = Field(
        None, description="blend or sbx for layer-ratios; uniform or two-point for binary"
    )
    mutation: Literal["gaussian", "polynomial", "flip"] | None = Field(
        None, description="gaussian or polynomial for layer-ratios; flip for binary"
    )
    sigma: float = Field(
        0.1, gt=0.0, description="gaussian mutation step, as a fraction of each gene's range"
    )
    eta: float = Field(
        15.0, gt=0.0, description="distribution index of sbx and polynomial operators"
    )
    alpha: float = Field(0.3, ge=0.0, description="blend crossover extent")
    gene_prob: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="per-gene mutation probability (default: 1/dim, at least 0.2 for ratios)",
    )


class _Fitness(base.Fitness):
    weights = (1.0,)


class _Individual(list[Any]):
    """A genome as a list (DEAP's operators assume sequences) with a DEAP fitness."""

    def __init__(self, genes: Any, fitness: float | None = None) -> None:
        super().__init__(genes)
        self.fitness = _Fitness()
        if fitness is not None:
            self.fitness.values = (fitness,)


@SEARCHERS.register("ga", "genetic algorithm (DEAP): tournament, crossover, mutation, elitism")
class GeneticSearch(Searcher):
    """Generational GA with a hall of fame; see the module docstring."""

    name = "ga"
    Params = GAParams
    params: GAParams

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        p = self.params
        if p.population < 4 or p.elites >= p.population:
            raise ValueError(
                f"searcher.population={p.population} must be at least 4 and larger than "
                f"searcher.elites={p.elites}"
            )
        binary = space.kind == "binary"
        crossover = p.crossover or ("uniform" if binary else "blend")
        mutation = p.mutation or ("flip" if binary else "gaussian")
        allowed = (
            ({"uniform", "two-point"}, {"flip"})
            if binary
            else ({"blend", "sbx"}, {"gaussian", "polynomial"})
        )
        if crossover not in allowed[0] or mutation not in allowed[1]:
            raise ValueError(
                f"searcher.crossover={crossover!r} / searcher.mutation={mutation!r} do not fit the "
                f"{space.name} space; use crossover in {sorted(allowed[0])} and mutation in "
                f"{sorted(allowed[1])}"
            )
        self._crossover = self._make_crossover(crossover)
        self._mutation = self._make_mutation(mutation)
        self._random = random.Random(seed)
        self.generation = 0
        self.population: list[_Individual] = []
        self.hall = tools.HallOfFame(max(p.elites, 1))
        self.pending: list[_Individual] = []
        self._asked = 0

    # ------------------------------------------------------------ operators
    def _make_crossover(self, kind: str) -> Callable[[list[Any], list[Any]], object]:
        p, low, up = self.params, list(self.space.lower), list(self.space.upper)
        if kind == "blend":
            return lambda a, b: tools.cxBlend(a, b, p.alpha)
        if kind == "sbx":
            return lambda a, b: tools.cxSimulatedBinaryBounded(a, b, p.eta, low, up)
        if kind == "uniform":
            return lambda a, b: tools.cxUniform(a, b, 0.5)
        return tools.cxTwoPoint

    def _make_mutation(self, kind: str) -> Callable[[list[Any]], object]:
        p, dim = self.params, self.space.dim
        low, up = list(self.space.lower), list(self.space.upper)
        if kind == "flip":
            return lambda a: tools.mutFlipBit(a, p.gene_prob or 1.0 / dim)
        indpb = p.gene_prob or max(1.0 / dim, 0.2)
        if kind == "polynomial":
            return lambda a: tools.mutPolynomialBounded(a, p.eta, low, up, indpb)
        sigma = [p.sigma * (u - lo) for lo, u in zip(low, up, strict=True)]
        return lambda a: tools.mutGaussian(a, 0.0, sigma, indpb)

    @contextmanager
    def _own_random(self) -> Iterator[None]:
        """Run DEAP's operators on this searcher's own random stream."""
        outer = random.getstate()
        random.setstate(self._random.getstate())
        try:
            yield
        finally:
            self._random.setstate(random.getstate())
            random.setstate(outer)

    # ------------------------------------------------------------- ask/tell
    def _breed(self) -> list[_Individual]:
        p = self.params
        with self._own_random():
            parents = tools.selTournament(self.population, p.population - p.elites, p.tournament)
            children = [_Individual(parent, parent.fitness.values[0]) for parent in parents]
            for left, right in zip(children[::2], children[1::2], strict=False):
                if self._random.random() < p.cx_prob:
                    self._crossover(left, right)
                    del left.fitness.values, right.fitness.values
            for child in children:
                if self._random.random() < p.mut_prob:
                    self._mutation(child)
                    del child.fitness.values
        if self.space.kind == "real":
            for child in children:
                child[:] = np.clip(child, self.space.lower, self.space.upper).tolist()
        return children

    def _unscored(self) -> list[_Individual]:
        return [ind for ind in self.pending if not ind.fitness.valid]

    def ask(self, n: int) -> np.ndarray:
        if not self.pending:
            if self.generation == 0:
                self.pending = [
                    _Individual(g)
                    for g in self.space.sample(self.rng, self.params.population).tolist()
                ]
            else:
                self.pending = self._breed()
        unscored = self._unscored()
        if not unscored:  # every child is an unchanged copy: close the generation now
            self._close_generation()
            return self.ask(n)
        batch = unscored[:n]
        self._asked = len(batch)
        dtype = bool if self.space.kind == "binary" else np.float64
        return np.array([list(ind) for ind in batch], dtype=dtype)

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        batch = self._unscored()[: self._asked]
        if len(batch) != len(genomes):
            raise ValueError(f"tell() got {len(genomes)} genomes for {len(batch)} asked")
        for ind, genome, score in zip(batch, genomes, fitness, strict=True):
            ind[:] = genome.tolist()
            ind.fitness.values = (float(score),)
        if not self._unscored():
            self._close_generation()

    def _close_generation(self) -> None:
        p = self.params
        self.hall.update(self.pending)
        elites = [_Individual(ind, ind.fitness.values[0]) for ind in self.hall[: p.elites]]
        if self.generation == 0:
            self.population = self.pending
        else:
            self.population = elites + self.pending
        self.pending = []
        self.generation += 1

    # ----------------------------------------------------------- checkpoint
    @staticmethod
    def _pack(individuals: list[_Individual]) -> list[tuple[list[Any], float | None]]:
        return [
            (list(ind), ind.fitness.values[0] if ind.fitness.valid else None) for ind in individuals
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "random": self._random.getstate(),
            "generation": self.generation,
            "population": self._pack(self.population),
            "pending": self._pack(self.pending),
            "hall": self._pack(list(self.hall)),
            "asked": self._asked,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._random.setstate(state["random"])
        self.generation = state["generation"]
        self.population = [_Individual(g, f) for g, f in state["population"]]
        self.pending = [_Individual(g, f) for g, f in state["pending"]]
        self.hall.clear()
        self.hall.update([_Individual(g, f) for g, f in state["hall"]])
        self._asked = state["asked"]
