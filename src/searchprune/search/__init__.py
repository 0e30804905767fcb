"""Searchers (ask/tell). Importing this package registers the built-in ones."""

from searchprune.search import cmaes, genetic, nsga2, random_search
from searchprune.search.base import SEARCHERS, Searcher, SearcherParams, make_searcher

__all__ = [
    "SEARCHERS",
    "Searcher",
    "SearcherParams",
    "cmaes",
    "genetic",
    "make_searcher",
    "nsga2",
    "random_search",
]
