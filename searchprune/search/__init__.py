"""Searchers (ask/tell) and their registry.

The built-in searchers are registered here by import path, so naming or listing them
imports nothing heavy (DEAP, cma) until one is used. Searchers from other installed
packages come in through the ``searchprune.searchers`` entry-point group: AMC's agent
(``amc``, in the top-level ``envs`` package beside its Gymnasium environment) is one.
"""

from searchprune.search.base import SEARCHERS, Searcher, SearcherParams, make_searcher

SEARCHERS.add_lazy(
    "ga",
    "searchprune.search.genetic:GeneticSearch",
    "genetic algorithm (DEAP): tournament/roulette, crossover, mutation, elitism",
)
SEARCHERS.add_lazy(
    "nsga2",
    "searchprune.search.nsga2:NSGA2Search",
    "NSGA-II (DEAP): fitness vs FLOPs/params Pareto front",
)
SEARCHERS.add_lazy(
    "pso",
    "searchprune.search.pso:ParticleSwarmSearch",
    "particle swarm optimization: continuous or binary, global or ring",
)
SEARCHERS.add_lazy(
    "sa",
    "searchprune.search.annealing:SimulatedAnnealing",
    "simulated annealing: batched neighbours, scale-free acceptance",
)
SEARCHERS.add_lazy(
    "cmaes", "searchprune.search.cmaes:CMAESSearch", "CMA-ES (cma package) over layer ratios"
)
SEARCHERS.add_lazy(
    "random",
    "searchprune.search.random_search:RandomSearch",
    "independent random genomes repaired to the budget (baseline)",
)
SEARCHERS.add_entry_points("searchprune.searchers")

__all__ = ["SEARCHERS", "Searcher", "SearcherParams", "make_searcher"]
