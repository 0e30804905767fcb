"""The evaluator interface: ``evaluate(genomes) -> results``, with repair and a cache.

Every evaluator repairs genomes to the budget (batched, in the driver), answers genomes
it has already scored from its cache, and hands only new ones to :meth:`_score`, which
local and distributed evaluators implement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from searchprune.problem import Evaluation, Problem
from searchprune.space import BudgetMode, check_budget_mode


@dataclass
class Result:
    """One evaluated candidate: the repaired genome, its evaluation, and whether the
    cache answered it."""

    genome: np.ndarray
    evaluation: Evaluation
    cached: bool = False

    @property
    def fitness(self) -> float:
        return self.evaluation.fitness


class Evaluator(ABC):
    """Scores batches of genomes for one :class:`Problem`.

    ``budget_mode`` is how genomes are repaired before scoring (see
    :data:`~searchprune.space.BudgetMode`): pass the searcher's
    (``Evaluator(problem, budget_mode=searcher.budget_mode)``).
    """

    def __init__(
        self, problem: Problem, *, cache: bool = True, budget_mode: BudgetMode = "exact"
    ) -> None:
        check_budget_mode(budget_mode)
        self.problem = problem
        self.budget_mode = budget_mode
        self.use_cache = cache
        self._cache: dict[bytes, Evaluation] = {}
        self.scored = 0

    def evaluate(
        self, genomes: Sequence[np.ndarray] | np.ndarray, first_index: int = 0
    ) -> list[Result]:
        """Repair and score ``genomes``; ``first_index`` numbers them in error messages."""
        batch = np.asarray(genomes)
        if batch.ndim != 2 or batch.shape[1] != self.problem.space.dim:
            raise ValueError(
                f"expected genomes of shape (n, {self.problem.space.dim}), got {batch.shape}"
            )
        repaired = self.problem.space.repair(batch, self.budget_mode)
        keys = [genome.tobytes() for genome in repaired]
        todo = [i for i, key in enumerate(keys) if not (self.use_cache and key in self._cache)]
        fresh: dict[int, Evaluation] = {}
        if todo:
            labels = [f"#{first_index + i}" for i in todo]
            for i, evaluation in zip(todo, self._score(repaired[todo], labels), strict=True):
                fresh[i] = evaluation
                if self.use_cache:
                    self._cache[keys[i]] = evaluation
            self.scored += len(todo)
        return [
            Result(
                repaired[i], fresh[i] if i in fresh else self._cache[keys[i]], cached=i not in fresh
            )
            for i in range(len(repaired))
        ]

    @abstractmethod
    def _score(self, genomes: np.ndarray, labels: list[str]) -> list[Evaluation]:
        """Score repaired genomes not found in the cache."""

    def close(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Release workers and other resources."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
