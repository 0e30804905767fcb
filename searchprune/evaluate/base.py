"""The evaluator interface: ``evaluate(genomes) -> results``, with repair and a cache.

Every evaluator repairs genomes to the budget (batched, in the driver), answers genomes
it has already scored from its cache, and hands only new ones to :meth:`_score`, which
local and distributed evaluators implement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
        new = self._new(keys)
        todo = [i for i in range(len(keys)) if new[i]]
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

    def _new(self, keys: Sequence[bytes]) -> np.ndarray:
        """Which repaired genomes (by their bytes) need scoring: with the cache on, those
        neither scored before nor equal to an earlier one in the batch (a duplicate is
        answered from the cache, for free); with it off, all of them."""
        if not self.use_cache:
            return np.ones(len(keys), dtype=bool)
        batch: set[bytes] = set()
        new = np.zeros(len(keys), dtype=bool)
        for i, key in enumerate(keys):
            new[i] = key not in self._cache and key not in batch
            batch.add(key)
        return new

    def summary_section(self) -> dict[str, Any]:
        """The run summary's ``evaluator`` section: nothing for a local evaluator; the
        Ray evaluator reports its connect and actor start-up times."""
        return {}

    def novel(self, genomes: np.ndarray) -> np.ndarray:
        """For unrepaired genomes ``(P, dim)``: whether each, once repaired, would be a new
        (unique) evaluation; searchers redraw the others (:meth:`Searcher.redraw_novel
        <searchprune.search.base.Searcher.redraw_novel>`)."""
        repaired = self.problem.space.repair(np.asarray(genomes), self.budget_mode)
        return self._new([genome.tobytes() for genome in repaired])

    def state_dict(self) -> dict[str, Any]:
        """The cache and the count scored, as arrays (checkpointed every generation, so
        its size stays a few numbers per entry), so a resumed run answers from the cache
        exactly the genomes an uninterrupted run would (same ``cached`` flags, same unique
        evaluations)."""
        keys, evaluations = list(self._cache), list(self._cache.values())
        names = list(dict.fromkeys(name for e in evaluations for name in e.metrics))
        values = np.full((len(keys), len(names)), np.nan)
        present = np.zeros((len(keys), len(names)), dtype=bool)
        for row, evaluation in enumerate(evaluations):
            for column, name in enumerate(names):
                if name in evaluation.metrics:
                    values[row, column] = evaluation.metrics[name]
                    present[row, column] = True
        width = len(keys[0]) if keys else 0
        return {
            "scored": self.scored,
            "keys": np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), width),
            "fitness": np.array([e.fitness for e in evaluations], dtype=np.float64),
            "metric_names": names,
            "metrics": values,
            "present": present,
            "errors": {str(row): e.error for row, e in enumerate(evaluations) if e.error},
            # metrics whose keys come in another order than ``metric_names`` (history
            # lines list them in their order)
            "orders": {
                str(row): list(e.metrics)
                for row, e in enumerate(evaluations)
                if list(e.metrics) != [name for name in names if name in e.metrics]
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys, fitness, names = state["keys"], state["fitness"], state["metric_names"]
        values, present, errors = state["metrics"], state["present"], state["errors"]
        column = {name: index for index, name in enumerate(names)}
        if not len(keys) == len(fitness) == len(values) == len(present):
            raise ValueError(f"{len(keys)} cached genomes for {len(fitness)} evaluations")
        self.scored = int(state["scored"])
        self._cache = {
            key.tobytes(): Evaluation(
                float(fitness[row]),
                {
                    name: float(values[row, column[name]])
                    for name in state["orders"].get(str(row), names)
                    if present[row, column[name]]
                },
                errors.get(str(row)),
            )
            for row, key in enumerate(keys)
        }

    @abstractmethod
    def _score(self, genomes: np.ndarray, labels: list[str]) -> list[Evaluation]:
        """Score repaired genomes not found in the cache."""

    def close(self) -> None:  # noqa: B027 (an optional hook, not an abstract method)
        """Release workers and other resources."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
