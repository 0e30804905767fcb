"""Warm starts: baselines' masks as genomes, and every searcher starting from them."""

from __future__ import annotations

import numpy as np
import pytest

from searchprune.pruners import make_method
from searchprune.registry import SpecError
from searchprune.search import SEARCHERS, make_searcher
from searchprune.search.base import DEFAULT_WARM_START
from searchprune.search.warm import PERTURBED, baseline_genomes, warm_start_genomes
from searchprune.space import BinarySpace, LayerRatioSpace, Space
from synthetic import _PROBLEMS, make_space

BUILT_IN = ["ga", "nsga2", "pso", "sa", "cmaes", "random"]


@pytest.mark.parametrize("method", ["magnitude-global", "magnitude-layer", "taylor-global"])
def test_binary_genomes_are_the_baselines_channels(method: str) -> None:
    space = make_space(BinarySpace)
    masks = make_method(method).run(_PROBLEMS[BinarySpace]).masks
    genome = space.encode(masks)
    assert genome.dtype == bool and genome.shape == (space.dim,)
    assert space.decode(genome) == masks


@pytest.mark.parametrize("method", ["magnitude-global", "magnitude-layer", "taylor-global"])
def test_ratio_genomes_are_the_baselines_allocations(method: str) -> None:
    """A ratio genome keeps how much of each unit a baseline removes; with the space's
    own criterion (magnitude) it also picks the same channels."""
    space = make_space(LayerRatioSpace)
    masks = make_method(method).run(_PROBLEMS[LayerRatioSpace]).masks
    genome = space.encode(masks)
    removed = space.unit_removed(masks)
    assert removed.sum() > 0
    np.testing.assert_array_equal(space.removed(genome)[0], removed)
    assert (space.decode(genome) == masks) == method.startswith("magnitude")


def _first_round(name: str, space: Space, **params: object) -> tuple[np.ndarray, list]:
    searcher = make_searcher(name, space, seed=0, problem=_PROBLEMS[type(space)], **params)
    asked = searcher.ask(searcher.batch_size)
    return asked, searcher.seeded(asked)


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("kind", [LayerRatioSpace, BinarySpace])
def test_every_searcher_asks_the_baselines_first(name: str, kind: type[Space]) -> None:
    space = make_space(kind)
    if space.kind not in SEARCHERS.get(name).space_kinds:
        pytest.skip(f"{name} does not search {space.kind} genomes")
    asked, labels = _first_round(name, space, population=8)
    exact = baseline_genomes(_PROBLEMS[kind], DEFAULT_WARM_START)
    assert labels == [
        "magnitude-global",
        "taylor-global",
        "magnitude-layer",
        "magnitude-global" + PERTURBED,
        None,
        None,
        None,
        None,
    ]
    if name == "cmaes":  # cma moves genes on a bound just inside it
        np.testing.assert_allclose(asked[:3], exact.genomes, atol=0.05)
    else:
        np.testing.assert_array_equal(asked[:3], exact.genomes)
    assert not np.array_equal(asked[3], asked[0])  # a perturbation of magnitude-global


@pytest.mark.parametrize("name", BUILT_IN)
def test_an_empty_warm_start_list_starts_cold(name: str) -> None:
    space = make_space(LayerRatioSpace)
    cold, labels = _first_round(name, space, population=8, warm_start=[])
    assert labels == [None] * 8
    alone = SEARCHERS.get(name)
    plain = alone.create(space, alone.Params.model_validate({"population": 8}), 0, None)
    np.testing.assert_array_equal(cold, plain.ask(8))


def test_warm_fraction_sets_how_much_of_the_first_round_is_seeded() -> None:
    space = make_space(LayerRatioSpace)
    _, labels = _first_round("ga", space, population=16, warm_fraction=0.75)
    assert sum(label is not None for label in labels) == 12
    _, labels = _first_round("ga", space, population=16, warm_fraction=0.0)
    assert sum(label is not None for label in labels) == 3  # one per method at least


def test_perturbations_stay_in_bounds_and_scale_with_sigma() -> None:
    space = make_space(LayerRatioSpace)
    problem = _PROBLEMS[LayerRatioSpace]
    rng = np.random.default_rng(0)
    small = warm_start_genomes(problem, ["magnitude-layer"], rng, 40, sigma=0.01).genomes
    large = warm_start_genomes(problem, ["magnitude-layer"], rng, 40, sigma=0.2).genomes
    for genomes in (small, large):
        assert (genomes >= space.lower).all() and (genomes <= space.upper).all()
    spread = [float(np.abs(g[1:] - g[0]).mean()) for g in (small, large)]
    assert 0 < spread[0] < spread[1] / 5


def test_warm_start_names_one_shot_methods_only() -> None:
    space = make_space(LayerRatioSpace)
    with pytest.raises(SpecError, match="searcher.warm_start.*magnitude-globl"):
        make_searcher(
            "ga", space, problem=_PROBLEMS[LayerRatioSpace], warm_start=["magnitude-globl"]
        )
    with pytest.raises(SpecError, match="searcher.warm_start: 'lottery' trains"):
        make_searcher("ga", space, problem=_PROBLEMS[LayerRatioSpace], warm_start=["lottery"])
