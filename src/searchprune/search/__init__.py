"""Searchers (ask/tell). Importing this package registers the built-in ones."""

from searchprune.search import genetic, random_search
from searchprune.search.base import SEARCHERS, Searcher, SearcherParams, make_searcher

__all__ = ["SEARCHERS", "Searcher", "SearcherParams", "genetic", "make_searcher", "random_search"]
