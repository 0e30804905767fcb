"""Warm starts: the allocations the one-shot baselines choose, as genomes of the space.

A search over 20-100 channel groups that starts from random genomes spends its budget
finding what a one-shot rule gets in one step (global magnitude pruning, Han et al.
2015; global Taylor, Molchanov et al. 2019). Seeding the first round with the
baselines' own masks, turned into genomes by :meth:`Space.encode` (each unit's removed
share for ratio spaces, the channels' keep-bits for ``binary``), and with perturbations
of them, makes the search start where the heuristics end, as population seeding does
for evolutionary algorithms (Grefenstette 1987, "Incorporating problem specific
knowledge into genetic algorithms").

:func:`warm_start_genomes` is what every searcher (and AMC's warm-up episodes) calls;
:meth:`Searcher.seed_genomes <searchprune.search.base.Searcher.seed_genomes>` is where
a searcher receives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from searchprune.problem import Problem
from searchprune.registry import SpecError
from searchprune.space import Space

PERTURBED = "+noise"
"""Suffix of the label of a perturbed baseline genome (``magnitude-global+noise``)."""


class WarmStart(NamedTuple):
    """Warm-start genomes ``(k, dim)`` (unrepaired) and the baseline each comes from."""

    genomes: np.ndarray
    labels: list[str]


def check_warm_start(methods: Sequence[str]) -> None:
    """:raises SpecError: naming ``searcher.warm_start`` for a name that is not a one-shot
    method (one that prunes the model without training it)."""
    from searchprune.pruners import method_class  # pruners load only when warm-starting

    for name in methods:
        if method_class(name, "searcher.warm_start").trains:
            raise SpecError(
                f"searcher.warm_start: {name!r} trains a copy of the model; warm starts come "
                "from one-shot methods such as magnitude-global or taylor-global"
            )


def baseline_genomes(problem: Problem, methods: Sequence[str], seed: int = 0) -> WarmStart:
    """One genome per one-shot method in ``methods``: its masks at the problem's budget,
    encoded in the problem's space."""
    from searchprune.pruners import make_method

    check_warm_start(methods)
    genomes = [problem.space.encode(make_method(name, seed).run(problem).masks) for name in methods]
    dtype = bool if problem.space.kind == "binary" else np.float64
    return WarmStart(np.array(genomes, dtype=dtype).reshape(len(methods), -1), list(methods))


def perturb(
    space: Space, genomes: np.ndarray, rng: np.random.Generator, sigma: float
) -> np.ndarray:
    """Copies of ``genomes`` moved a little: a Gaussian step of ``sigma`` times each gene's
    range, clipped to the bounds (ratio spaces), or each bit flipped with probability
    ``sigma`` (``binary``)."""
    if space.kind == "binary":
        return genomes ^ (rng.random(genomes.shape) < sigma)
    noise = rng.normal(0.0, sigma, size=genomes.shape) * (space.upper - space.lower)
    return np.clip(genomes + noise, space.lower, space.upper)


def warm_start_genomes(
    problem: Problem,
    methods: Sequence[str],
    rng: np.random.Generator,
    count: int,
    sigma: float = 0.05,
    seed: int = 0,
) -> WarmStart:
    """``count`` warm-start genomes: the baselines' own genomes first (in the order of
    ``methods``, as many as ``count`` allows), then perturbations of them in turn
    (:func:`perturb`), labelled ``<method>`` and ``<method>+noise``."""
    if count <= 0 or not methods:
        dtype = bool if problem.space.kind == "binary" else np.float64
        return WarmStart(np.zeros((0, problem.space.dim), dtype=dtype), [])
    exact = baseline_genomes(problem, methods[:count], seed)
    extra = count - len(exact.labels)
    picks = np.arange(extra) % len(exact.labels)
    moved = perturb(problem.space, exact.genomes[picks], rng, sigma)
    return WarmStart(
        np.concatenate([exact.genomes, moved]),
        exact.labels + [exact.labels[i] + PERTURBED for i in picks],
    )
