"""Searchers (ask/tell). Importing this package registers the built-in ones."""

from searchprune.search import amc, annealing, cmaes, genetic, nsga2, pso, random_search
from searchprune.search.base import SEARCHERS, Searcher, SearcherParams, make_searcher

__all__ = [
    "SEARCHERS",
    "Searcher",
    "SearcherParams",
    "amc",
    "annealing",
    "cmaes",
    "genetic",
    "make_searcher",
    "nsga2",
    "pso",
    "random_search",
]
