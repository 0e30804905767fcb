"""The ask/tell :class:`Searcher` base class and the searcher registry.

A searcher proposes genomes (``ask``), learns from their scores (``tell``), and can be
checkpointed (``state_dict`` / ``load_state_dict``). It never evaluates anything
itself: one run loop (:mod:`searchprune.runner`) owns evaluation, termination,
progress, logging, checkpoints and seeding, for every searcher alike.

Genomes come back from ``tell`` *repaired* (moved onto the budget), and searchers keep
the repaired versions, as AMC's action wall does (He et al. 2018).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from searchprune.config import describe_errors
from searchprune.problem import Problem
from searchprune.registry import Registry, SpecError
from searchprune.space import SPACES, BudgetMode, Space

REDRAWS = 10
"""How many times a searcher redraws a genome that would repeat an evaluation."""

DEFAULT_WARM_START = ("magnitude-global", "taylor-global", "magnitude-layer")
"""The one-shot methods a searcher starts from unless ``searcher.warm_start`` says otherwise."""


class SearcherParams(BaseModel):
    """Settings every searcher accepts; subclasses add their own.

    ``population`` is how many genomes a searcher proposes per round (a GA's
    generation, a swarm's size, random search's batch), so that switching searchers
    with ``--set searcher.name=...`` keeps a config valid.
    """

    model_config = ConfigDict(extra="forbid")
    population: int = Field(32, ge=1, description="genomes proposed per round (generation)")
    warm_start: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WARM_START),
        description="one-shot methods whose allocations (and perturbations of them) seed the "
        "first round (search.warm); [] starts from random genomes",
    )
    warm_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the first round made of warm-start genomes (at least one per "
        "method listed)",
    )
    warm_sigma: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="size of the perturbations of warm-start genomes: a fraction of each "
        "ratio's range, or each bit's flip probability",
    )

    @property
    def warm_count(self) -> int:
        """How many warm-start genomes the first round holds."""
        if not self.warm_start:
            return 0
        return min(
            self.population, max(len(self.warm_start), round(self.warm_fraction * self.population))
        )


@dataclass(frozen=True)
class FrontMember:
    """One member of a Pareto front: its genome, fitness and cost (lower is better)."""

    genome: list[Any]
    fitness: float
    cost: float


class Searcher(ABC):
    """Ask/tell search over the genomes of a :class:`Space`.

    Capabilities, which the run and ``compare`` read instead of branching on names:

    - ``budget_mode``: how the evaluator repairs this searcher's genomes: ``"exact"``
      moves every genome onto the budget; ``"bound"`` repairs only genomes over it
      (multi-objective searchers that explore cheaper candidates too);
    - ``space_kinds``: the genome kinds it searches (``"real"`` ratios, ``"binary"`` bits);
    - ``multi_objective``: whether :meth:`front` returns a Pareto front;
    - ``run_length_param``: the name of a parameter that scales a schedule to the run's
      length (AMC's ``episodes``); the runner sets it to ``run.max_evals`` unless the
      config sets it.
    """

    description: ClassVar[str] = ""
    Params: ClassVar[type[SearcherParams]] = SearcherParams
    budget_mode: ClassVar[BudgetMode] = "exact"
    space_kinds: ClassVar[frozenset[str]] = frozenset({"real", "binary"})
    multi_objective: ClassVar[bool] = False
    run_length_param: ClassVar[str | None] = None

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        self.space = space
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.seed_labels: dict[bytes, str] = {}
        self._novel: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def batch_size(self) -> int:
        """How many genomes the run loop asks for at a time (one generation)."""
        return self.params.population

    @abstractmethod
    def ask(self, n: int) -> np.ndarray:
        """Up to ``n`` genomes to evaluate next, shape ``(k, dim)`` with ``1 <= k <= n``."""

    @abstractmethod
    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        """Scores of the genomes last asked for, in the same order.

        ``genomes`` come back repaired (on the budget); ``metrics`` holds each one's
        figures (``sparsity``, ``flops_fraction``, ``params_fraction``, val metrics), for
        searchers with more than one objective.
        """

    @classmethod
    def create(
        cls, space: Space, params: SearcherParams, seed: int, problem: Problem | None
    ) -> Searcher:
        """Build the searcher; ``problem`` is for searchers that need more than the space."""
        return cls(space, params, seed)

    def front(self) -> list[FrontMember]:
        """The Pareto front found so far (empty for single-objective searchers)."""
        return []

    # ------------------------------------------------------------ duplicates
    def attach_novelty(self, novel: Callable[[np.ndarray], np.ndarray]) -> None:
        """Let the searcher tell which genomes would be new evaluations once repaired:
        ``novel(genomes)`` is the evaluator's :meth:`~searchprune.evaluate.Evaluator.novel`,
        attached by the run loop (searchers used without it redraw nothing)."""
        self._novel = novel

    def _redraw(
        self, genomes: np.ndarray, draw: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """``genomes`` with each one that would repeat a scored candidate (or an earlier
        one of the batch) replaced by ``draw(those genomes)``, up to :data:`REDRAWS`
        times; one still repeated stays (the cache answers it, for free)."""
        if self._novel is None:
            return genomes
        for _ in range(REDRAWS):
            stale = ~self._novel(genomes)
            if not stale.any():
                break
            genomes[stale] = draw(genomes[stale])
        return genomes

    # ---------------------------------------------------------- warm starts
    def seed_genomes(self, genomes: np.ndarray, labels: Sequence[str]) -> None:
        """Start the search from ``genomes`` (warm start, :mod:`searchprune.search.warm`),
        called once before the first :meth:`ask`; ``labels`` name the baseline each comes
        from, and :meth:`seeded` finds them again among asked genomes."""
        genomes = self._as_genomes(genomes)
        if len(genomes) != len(labels):
            raise ValueError(f"{len(genomes)} warm-start genomes for {len(labels)} labels")
        self.seed_labels = {
            genome.tobytes(): label for genome, label in zip(genomes, labels, strict=True)
        }
        if len(genomes):
            self._use_seeds(genomes)

    def _use_seeds(self, genomes: np.ndarray) -> None:  # noqa: B027 (optional hook)
        """Put warm-start genomes where this searcher starts (its first round, its
        swarm, its mean); a searcher that does not override it ignores warm starts."""

    def seeded(self, genomes: np.ndarray) -> list[str | None]:
        """For each asked genome, the warm-start label it was seeded with, or None."""
        return [self.seed_labels.get(genome.tobytes()) for genome in self._as_genomes(genomes)]

    def _as_genomes(self, genomes: np.ndarray) -> np.ndarray:
        dtype = bool if self.space.kind == "binary" else np.float64
        return np.asarray(genomes, dtype=dtype).reshape(-1, self.space.dim)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this searcher is."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class RoundSearcher(Searcher):
    """A searcher that proposes a whole round of ``population`` genomes (a swarm, a set of
    neighbours) and learns only once every one of them is scored.

    The run loop may ask for fewer genomes than a round (its last ask, or a smaller
    batch); the rest of the round is handed out by the next asks, so any sequence of ask
    sizes gives the same search. Subclasses provide the round's arrays and
    :meth:`_close_round`. Scored genomes replace the round's asked ones in their repaired
    form unless ``keeps_repaired`` is False.
    """

    keeps_repaired: ClassVar[bool] = True

    def __init__(self, space: Space, params: SearcherParams, seed: int) -> None:
        super().__init__(space, params, seed)
        self._scored = 0
        self._asked = 0

    @abstractmethod
    def _round(self) -> tuple[np.ndarray, np.ndarray]:
        """The current round's genomes ``(population, dim)`` and scores ``(population,)``,
        updated in place as the round is scored."""

    @abstractmethod
    def _close_round(self) -> None:
        """Learn from the fully scored round and prepare the next one."""

    def ask(self, n: int) -> np.ndarray:
        genomes, _ = self._round()
        self._asked = min(n, self.params.population - self._scored)
        return genomes[self._scored : self._scored + self._asked].copy()

    def tell(
        self,
        genomes: np.ndarray,
        fitness: np.ndarray,
        metrics: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        if len(genomes) != self._asked:
            raise ValueError(f"tell() got {len(genomes)} genomes for {self._asked} asked")
        round_genomes, round_scores = self._round()
        part = slice(self._scored, self._scored + self._asked)
        if self.keeps_repaired:
            round_genomes[part] = genomes
        round_scores[part] = fitness
        self._scored += self._asked
        self._asked = 0
        if self._scored == self.params.population:
            self._scored = 0
            self._close_round()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scored": self._scored, "asked": self._asked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._scored, self._asked = state["scored"], state["asked"]


SEARCHERS: Registry[type[Searcher]] = Registry("searcher", "searcher.name")

_WARM_STREAM = 0x5EED  # warm-start perturbations draw from their own stream of the seed


def make_searcher(
    name: str, space: Space, seed: int = 0, *, problem: Problem | None = None, **params: Any
) -> Searcher:
    """Build the searcher registered as ``name``, with its ``params`` validated;
    ``problem`` (whose space ``space`` is) is needed by searchers that see more than the
    space, such as AMC's environment, and for warm starts: with a problem, the
    ``warm_start`` methods' genomes and perturbations of them
    (:func:`~searchprune.search.warm.warm_start_genomes`) are handed to
    :meth:`Searcher.seed_genomes`.

    :raises SpecError: naming ``searcher.<key>`` for an unknown or invalid parameter.
    """
    cls = SEARCHERS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Searcher)):
        raise SpecError(f"searcher.name: {name!r} is not a Searcher subclass")
    if space.kind not in cls.space_kinds:
        fitting = [n for n in SPACES.names() if SPACES.get(n).kind in cls.space_kinds]
        raise SpecError(
            f"searcher.name={name!r} does not search the {space.name} space ({space.kind} "
            f"genomes); use space.name: {' or '.join(fitting)}"
        )
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as error:
        raise SpecError(describe_errors(error, "searcher", cls.Params, name)) from None
    try:
        searcher = cls.create(space, validated, seed, problem)
    except ValueError as error:
        raise SpecError(str(error)) from None
    if problem is not None and validated.warm_count:
        from searchprune.search.warm import warm_start_genomes

        start = warm_start_genomes(
            problem,
            validated.warm_start,
            np.random.default_rng([seed, _WARM_STREAM]),
            validated.warm_count,
            validated.warm_sigma,
            seed,
        )
        searcher.seed_genomes(start.genomes, start.labels)
    return searcher
