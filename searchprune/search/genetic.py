"""Genetic algorithm on DEAP's operators, over real ratios or channel keep-bits.

Generational GA with elitism (De Jong 1975): tournament or fitness-proportionate
(roulette) selection, crossover and mutation produce ``population - elites`` children;
the ``elites`` best individuals seen so far (a hall of fame) are copied unchanged into
the next generation. Only children that crossover or mutation changed are evaluated,
and a changed child that would repeat a scored candidate is mutated again.
Over the ``binary`` space this is GA channel pruning in the spirit of Hu et al. 2018
(roulette selection, elitism); over ``layer-ratios`` it searches per-layer pruning
ratios with blend (Eshelman & Schaffer 1993) or simulated binary crossover and Gaussian
or polynomial mutation (Deb & Agrawal 1995). Warm-start genomes, when given, take the
first places of the initial population (the rest is sampled).

DEAP's operators draw from Python's global ``random``; this searcher swaps in its own
``random.Random`` state around every call, so runs are reproducible and checkpointable
and two searchers never share a stream. DEAP's ``creator`` is not used: individuals
are plain lists inside the searcher, genomes leave it as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
from deap import base, tools
from pydantic import Field

from searchprune.search.base import Searcher, SearcherParams
from searchprune.search.streams import GlobalStreams
from searchprune.space import Space

Values = tuple[float, ...]


class VariationParams(SearcherParams):
    """Crossover and mutation settings shared by the GA and NSGA-II."""

    cx_prob: float = Field(0.7, ge=0.0, le=1.0, description="probability a pair is crossed over")
    mut_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability a child is mutated")
    crossover: Literal["blend", "sbx", "uniform", "two-point"] | None = Field(
        None, description="blend or sbx for layer-ratios; uniform or two-point for binary"
    )
    mutation: Literal["gaussian", "polynomial", "flip"] | None = Field(
        None, description="gaussian or polynomial for layer-ratios; flip for binary"
    )
    sigma: float = Field(0.1, gt=0.0, description="gaussian step, as a fraction of each range")
    eta: float = Field(15.0, gt=0.0, description="distribution index of sbx and polynomial")
    alpha: float = Field(0.3, ge=0.0, description="blend crossover extent")
    gene_prob: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="per-gene mutation probability (default 1/dim, >= 0.2 for ratios)",
    )


class GAParams(VariationParams):
    elites: int = Field(2, ge=0, description="best individuals copied unchanged each generation")
    selection: Literal["tournament", "roulette"] = "tournament"
    tournament: int = Field(3, ge=2, description="tournament size for selection")


@cache
def _fitness_type(weights: Values) -> type[base.Fitness]:
    """A DEAP fitness class with these objective weights (1 maximizes, -1 minimizes)."""
    return type(f"Fitness{len(weights)}", (base.Fitness,), {"weights": weights})


class _Individual(list[Any]):
    """A genome as a list (DEAP's operators assume sequences) with a DEAP fitness."""

    def __init__(self, genes: Any, weights: Values, values: Values | None = None) -> None:
        super().__init__(genes)
        self.fitness = _fitness_type(weights)()
        if values is not None:
            self.fitness.values = values

    def copy_with(self, weights: Values) -> _Individual:
        return _Individual(self, weights, self.fitness.values if self.fitness.valid else None)


class GeneticSearch(Searcher):
    """Generational GA with a hall of fame; see the module docstring.

    Subclasses change the objectives (:attr:`weights`, :meth:`_values`), parent selection
    (:meth:`_select_parents`) and survival (:meth:`_next_population`).
    """

    Params: ClassVar[type[SearcherParams]] = GAParams
    params: GAParams
    weights: ClassVar[Values] = (1.0,)

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self._check_params()
        binary = space.kind == "binary"
        p = self.params
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
        self._streams = GlobalStreams(seed)
        self._random = self._streams.python
        self.generation = 0
        self.population: list[_Individual] = []
        self.hall = tools.HallOfFame(max(getattr(p, "elites", 1), 1))
        self.pending: list[_Individual] = []
        self._asked = 0
        self._seeds: list[list[Any]] = []

    def _use_seeds(self, genomes: np.ndarray) -> None:
        """Warm-start genomes take the first places of generation 0."""
        self._seeds = genomes.tolist()

    def _check_params(self) -> None:
        p = self.params
        if p.population < 4 or p.elites >= p.population:
            raise ValueError(
                f"searcher.population={p.population} must be at least 4 and larger than "
                f"searcher.elites={p.elites}"
            )

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

    # ---------------------------------------------------- selection (hooks)
    def _values(self, score: float, metrics: Mapping[str, float] | None) -> Values:
        """The objective values DEAP sees for one scored genome."""
        return (score,)

    def _select_parents(self) -> list[_Individual]:
        """Parents of the next children (inside the searcher's own streams)."""
        p = self.params
        count = p.population - p.elites
        if p.selection == "tournament":
            return list(tools.selTournament(self.population, count, p.tournament))
        # fitness-proportionate (Goldberg 1989), shifted so any fitness scale works
        scores = np.array([ind.fitness.values[0] for ind in self.population])
        weights = scores - scores.min() + 1e-12
        return self._random.choices(self.population, weights=weights.tolist(), k=count)

    def _next_population(self) -> list[_Individual]:
        """Survivors once every child is scored: the elites plus all children."""
        self.hall.update(self.pending)
        if self.generation == 0:
            return self.pending
        elites = [ind.copy_with(self.weights) for ind in self.hall[: self.params.elites]]
        return elites + self.pending

    # ------------------------------------------------------------- ask/tell
    def _breed(self) -> list[_Individual]:
        p = self.params
        with self._streams.active():
            children = [parent.copy_with(self.weights) for parent in self._select_parents()]
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
        changed = [child for child in children if not child.fitness.valid]
        if changed:
            genomes = self._redraw(self._genomes(changed), self._remutate)
            for child, genome in zip(changed, genomes.tolist(), strict=True):
                child[:] = genome
        return children

    def _genomes(self, individuals: Sequence[list[Any]]) -> np.ndarray:
        dtype = bool if self.space.kind == "binary" else np.float64
        return np.array([list(ind) for ind in individuals], dtype=dtype)

    def _remutate(self, stale: np.ndarray) -> np.ndarray:
        """The children in ``stale`` (which repeat scored candidates), mutated again."""
        mutants = [_Individual(genome, self.weights) for genome in stale.tolist()]
        with self._streams.active():
            for mutant in mutants:
                self._mutation(mutant)
        genomes = self._genomes(mutants)
        if self.space.kind == "real":
            genomes = np.clip(genomes, self.space.lower, self.space.upper)
        return genomes

    def _unscored(self) -> list[_Individual]:
        return [ind for ind in self.pending if not ind.fitness.valid]

    def ask(self, n: int) -> np.ndarray:
        if not self.pending:
            if self.generation == 0:
                first = self.space.sample(self.rng, self.params.population).tolist()
                first[: len(self._seeds)] = self._seeds
                self.pending = [_Individual(g, self.weights) for g in first]
            else:
                self.pending = self._breed()
        unscored = self._unscored()
        if not unscored:  # every child is an unchanged copy: close the generation now
            self._close_generation()
            return self.ask(n)
        batch = unscored[:n]
        self._asked = len(batch)
        return self._genomes(batch)

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        batch = self._unscored()[: self._asked]
        if len(batch) != len(genomes):
            raise ValueError(f"tell() got {len(genomes)} genomes for {len(batch)} asked")
        for index, (ind, genome, score) in enumerate(zip(batch, genomes, fitness, strict=True)):
            ind[:] = genome.tolist()
            ind.fitness.values = self._values(float(score), metrics[index] if metrics else None)
        if not self._unscored():
            self._close_generation()

    def _close_generation(self) -> None:
        self.population = self._next_population()
        self.pending = []
        self.generation += 1

    # ----------------------------------------------------------- checkpoint
    @staticmethod
    def _pack(individuals: Sequence[_Individual]) -> list[tuple[list[Any], Values | None, Any]]:
        return [
            (
                list(ind),
                ind.fitness.values if ind.fitness.valid else None,
                getattr(ind.fitness, "crowding_dist", None),  # NSGA-II's selection needs it
            )
            for ind in individuals
        ]

    def _unpack(self, packed: list[tuple[list[Any], Values | None, Any]]) -> list[_Individual]:
        individuals = []
        for genes, values, crowding in packed:
            individual = _Individual(genes, self.weights, values)
            if crowding is not None:
                individual.fitness.crowding_dist = crowding
            individuals.append(individual)
        return individuals

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "streams": self._streams.state_dict(),
            "generation": self.generation,
            "population": self._pack(self.population),
            "pending": self._pack(self.pending),
            "hall": self._pack(list(self.hall)),
            "asked": self._asked,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._streams.load_state_dict(state["streams"])
        self.generation = state["generation"]
        self.population = self._unpack(state["population"])
        self.pending = self._unpack(state["pending"])
        # Set the hall's order as saved: re-inserting would reorder ties (DEAP inserts an
        # equal individual after its equals), and the elites copied next would differ.
        hall = self._unpack(state["hall"])
        self.hall.items = hall
        self.hall.keys = [ind.fitness for ind in reversed(hall)]
        self._asked = state["asked"]
