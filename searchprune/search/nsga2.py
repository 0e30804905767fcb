"""NSGA-II (Deb et al. 2002): maximize the fitness and minimize a cost at once.

Each generation, binary tournaments on Pareto rank and crowding distance pick parents
(DEAP ``selTournamentDCD``), crossover and mutation make ``population`` children, and
``selNSGA2`` keeps the best ``population`` of parents and children by non-dominated
sorting and crowding. The cost is a candidate's FLOPs, params or density (fraction of
prunable weights kept), read from its metrics.

The budget is a bound here, not a target: candidates under it are kept as they are
(only those over it are repaired), so the population spreads along the front between
the budget and the sparsest models the space allows. The run saves the first front;
:func:`searchprune.report.pick_from_front` picks a member for any tighter budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from deap import tools
from pydantic import Field

from searchprune.search.base import FrontMember, SearcherParams
from searchprune.search.genetic import GeneticSearch, Values, VariationParams, _Individual
from searchprune.space import BudgetMode

_COST_STAT = {"flops": "flops_fraction", "params": "params_fraction", "density": "sparsity"}


class NSGA2Params(VariationParams):
    objective: Literal["flops", "params", "density"] = Field(
        "flops", description="the cost minimized beside the fitness"
    )


class NSGA2Search(GeneticSearch):
    """NSGA-II over the same genomes and operators as the GA; see the module docstring."""

    Params: ClassVar[type[SearcherParams]] = NSGA2Params
    params: NSGA2Params  # type: ignore[assignment]
    weights: ClassVar[Values] = (1.0, -1.0)
    budget_mode: ClassVar[BudgetMode] = "bound"
    multi_objective: ClassVar[bool] = True

    def _check_params(self) -> None:
        if self.params.population < 4 or self.params.population % 4:
            raise ValueError(
                f"searcher.population={self.params.population} must be a multiple of 4 for "
                "NSGA-II's tournament selection"
            )

    def _values(self, score: float, metrics: Mapping[str, float] | None) -> Values:
        if metrics is None:
            raise ValueError("NSGA-II needs each candidate's metrics in tell()")
        stat = _COST_STAT[self.params.objective]
        cost = metrics[stat]
        return (score, 1.0 - cost if stat == "sparsity" else cost)

    def _select_parents(self) -> list[_Individual]:
        # crowding distances are assigned by selNSGA2 in _next_population
        return list(tools.selTournamentDCD(self.population, self.params.population))

    def _next_population(self) -> list[_Individual]:
        if self.generation == 0:
            survivors = tools.selNSGA2(self.pending, self.params.population)
        else:
            survivors = tools.selNSGA2(self.population + self.pending, self.params.population)
        return list(survivors)

    def front(self) -> list[FrontMember]:
        """The first non-dominated front of the current population."""
        if not self.population:
            return []
        first = tools.sortNondominated(
            self.population, len(self.population), first_front_only=True
        )[0]
        unique = {tuple(ind): ind for ind in first}
        return sorted(
            (
                FrontMember(list(genes), ind.fitness.values[0], ind.fitness.values[1])
                for genes, ind in unique.items()
            ),
            key=lambda member: member.cost,
        )
