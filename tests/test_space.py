"""Spaces and budget repair (property tests), and the cost model against exact stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from searchprune.core.budget import Budget
from searchprune.core.graph import build_dependency_graph
from searchprune.core.layers import discover_layers
from searchprune.core.stats import mask_stats
from searchprune.core.units import CostModel
from searchprune.criteria.weight_only import magnitude
from searchprune.registry import SpecError
from searchprune.space import (
    BinarySpace,
    BudgetError,
    DepthScheduleSpace,
    LayerRatioSpace,
    ReferenceRatioSpace,
    check_space_settings,
    space_settings,
)
from searchprune.tasks.base import Task
from searchprune.tasks.models import DigitsCNN, DigitsMLP, DigitsResNet

torch.manual_seed(0)
_MODELS = {"mlp": DigitsMLP(), "cnn": DigitsCNN(), "resnet": DigitsResNet()}
_STRUCTURES = {}
for _name, _model in _MODELS.items():
    _example = torch.randn(1, 64)
    _layers = discover_layers(_model, _example)
    _STRUCTURES[_name] = (_layers, build_dependency_graph(_model, _example, _layers))
_DUMMY = Task(
    model=DigitsMLP(),
    train=(torch.zeros(1, 64), torch.zeros(1)),
    val=(torch.zeros(1, 64), torch.zeros(1)),
)


def _space(
    kind: type, model: str, granularity: str, budget: Budget, **bounds: object
) -> LayerRatioSpace:
    layers, graph = _STRUCTURES[model]
    scores = magnitude(_MODELS[model], [layer for layer in layers if layer.prunable], _DUMMY)
    return kind(CostModel(layers, graph, granularity), budget, scores, **bounds)  # type: ignore[no-any-return]


budgets = st.one_of(
    st.builds(Budget, st.just("sparsity"), st.floats(0.05, 0.95)),
    st.builds(Budget, st.just("flops"), st.floats(0.2, 0.95)),
    st.builds(Budget, st.just("params"), st.floats(0.2, 0.95)),
)


def _met(space: LayerRatioSpace, removed: np.ndarray) -> bool:
    return bool(space.repairer.met(removed[None, :])[0])


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["mlp", "cnn", "resnet"]),
    granularity=st.sampled_from(["weight", "channel"]),
    budget=budgets,
    seed=st.integers(0, 2**31),
)
def test_repaired_ratios_meet_the_budget_exactly(
    model: str, granularity: str, budget: Budget, seed: int
) -> None:
    try:
        space = _space(LayerRatioSpace, model, granularity, budget)
    except BudgetError:
        return  # unreachable budgets are refused up front (tested below)
    genomes = space.sample(np.random.default_rng(seed), 4)
    genomes[0] = space.lower  # extremes repair too
    genomes[1] = space.upper
    repaired = space.repair(genomes)
    assert np.all(repaired >= space.lower - 1e-9) and np.all(repaired <= space.upper + 1e-9)
    for genome in repaired:
        removed = space.removed(genome)[0]
        assert _met(space, removed), "repair must meet the budget"
        give_back = np.maximum(removed - 1, space.repairer.k_min)
        if np.any(give_back != removed):
            assert not _met(space, give_back), "one element back per unit must break the budget"


@settings(max_examples=30, deadline=None)
@given(
    model=st.sampled_from(["cnn", "resnet"]),
    budget=budgets,
    seed=st.integers(0, 2**31),
)
def test_binary_repair_meets_budget_and_keeps_the_genomes_choices(
    model: str, budget: Budget, seed: int
) -> None:
    try:
        space = _space(BinarySpace, model, "channel", budget)
    except BudgetError:
        return
    genomes = space.sample(np.random.default_rng(seed), 3)
    repaired = space.repair(genomes)
    for before, after in zip(genomes, repaired, strict=True):
        removed = space.removed(after)[0]
        assert _met(space, removed)
        give_back = np.maximum(removed - 1, space.repairer.k_min)
        if np.any(give_back != removed):
            assert not _met(space, give_back)
        # repair only prunes kept bits or restores pruned bits, never both in one unit
        for part in space._slices():
            pruned_now = before[part] & ~after[part]
            restored = ~before[part] & after[part]
            assert not (pruned_now.any() and restored.any())


@settings(max_examples=25, deadline=None)
@given(model=st.sampled_from(["cnn", "resnet"]), budget=budgets, seed=st.integers(0, 2**31))
def test_channel_cost_model_equals_exact_mask_statistics(
    model: str, budget: Budget, seed: int
) -> None:
    try:
        space = _space(LayerRatioSpace, model, "channel", budget)
    except BudgetError:
        return
    genome = space.repair(space.sample(np.random.default_rng(seed), 1))[0]
    layers, graph = _STRUCTURES[model]
    exact = mask_stats(space.decode(genome), layers, graph)
    model_figures = space.figures(genome[None, :])
    assert model_figures["flops_fraction"][0] == pytest.approx(exact.flops_fraction, abs=1e-9)
    assert model_figures["params_fraction"][0] == pytest.approx(exact.params_fraction, abs=1e-9)
    assert model_figures["sparsity"][0] == pytest.approx(exact.sparsity, abs=1e-9)


def test_weight_decode_removes_the_lowest_scores_in_each_layer() -> None:
    space = _space(LayerRatioSpace, "mlp", "weight", Budget("sparsity", 0.8))
    genome = space.repair(np.array([[0.5, 0.9]]))[0]
    masks = space.decode(genome)
    layers, graph = _STRUCTURES["mlp"]
    modules = dict(_MODELS["mlp"].named_modules())
    for unit, ratio in zip(space.units, genome, strict=True):
        keep = masks.weight_mask(unit.name, tuple(modules[unit.name].weight.shape)).reshape(-1)  # type: ignore[arg-type]
        magnitude_flat = modules[unit.name].weight.detach().abs().reshape(-1)  # type: ignore[union-attr]
        assert int((~keep).sum()) == round(ratio * keep.numel())
        assert magnitude_flat[~keep].max() <= magnitude_flat[keep].min()
    assert mask_stats(masks, layers, graph).mask_sparsity == pytest.approx(0.8, abs=1e-4)


def test_unreachable_budget_names_the_fields() -> None:
    with pytest.raises(BudgetError, match=r"budget.sparsity=0.999.*space.max_ratio"):
        _space(LayerRatioSpace, "mlp", "weight", Budget("sparsity", 0.999), max_ratio=0.95)


def test_binary_space_needs_channel_granularity() -> None:
    with pytest.raises(ValueError, match="granularity: channel"):
        _space(BinarySpace, "mlp", "weight", Budget("sparsity", 0.5))


def test_layer_bounds_hold_after_repair() -> None:
    layers, graph = _STRUCTURES["mlp"]
    first = layers[0].name
    space = LayerRatioSpace(
        CostModel(layers, graph, "weight"),
        Budget("sparsity", 0.6),
        magnitude(_MODELS["mlp"], [la for la in layers if la.prunable], _DUMMY),
        layer_bounds={first: (0.0, 0.2)},
    )
    repaired = space.repair(space.sample(np.random.default_rng(0), 16))
    assert np.all(repaired[:, 0] <= 0.2 + 1e-9)
    with pytest.raises(ValueError, match="layer_bounds names 'nope'"):
        LayerRatioSpace(space.cost, space.budget, {}, layer_bounds={"nope": (0, 1)})


def test_budget_values_are_checked() -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        Budget("sparsity", 1.2)
    with pytest.raises(ValueError, match="exactly one"):
        Budget.from_mapping({"sparsity": 0.5, "flops": 0.5})
    assert nn  # keep the torch.nn import for type names in helpers


# ------------------------------------------------------ spaces that scale with depth
@settings(max_examples=30, deadline=None)
@given(
    model=st.sampled_from(["cnn", "resnet"]),
    budget=budgets,
    seed=st.integers(0, 2**31),
    knots=st.integers(2, 5),
)
def test_depth_schedules_repair_onto_the_budget(
    model: str, budget: Budget, seed: int, knots: int
) -> None:
    try:
        space = _space(DepthScheduleSpace, model, "channel", budget, knots=knots)
    except BudgetError:
        return
    assert space.dim == knots
    genomes = space.sample(np.random.default_rng(seed), 6)
    for mode in ("exact", "bound"):
        repaired = space.repair(genomes, mode)
        for before, after in zip(genomes, repaired, strict=True):
            removed = space.removed(after)[0]
            assert _met(space, removed)
            if mode == "bound" and _met(space, space.removed(before)[0]):
                assert np.array_equal(before, after)  # within the budget: left alone


def test_depth_schedule_interpolates_knots_over_depth() -> None:
    space = _space(DepthScheduleSpace, "resnet", "channel", Budget("flops", 0.5), knots=3)
    np.testing.assert_allclose(space.interpolation.sum(axis=1), 1.0)
    assert space.depth.min() == 0.0 and space.depth.max() == 1.0
    flat = space.removed(np.array([[0.25, 0.25, 0.25]]))[0]
    np.testing.assert_array_equal(flat, np.clip(np.round(0.25 * space.cost.sizes), 0, None))
    rising = space.removed(np.array([[0.05, 0.3, 0.6]]))[0] / space.cost.sizes
    order = np.argsort(space.depth)
    assert np.all(np.diff(rising[order]) >= -0.5 / space.cost.sizes[order][1:])  # rises with depth
    encoded = space.encode(space.decode(np.array([0.05, 0.3, 0.6])))
    np.testing.assert_allclose(encoded, [0.05, 0.3, 0.6], atol=0.05)


def test_reference_ratios_search_a_box_around_the_global_allocation() -> None:
    budget = Budget("flops", 0.5)
    space = _space(ReferenceRatioSpace, "resnet", "channel", budget, width=0.1)
    plain = _space(LayerRatioSpace, "resnet", "channel", budget)
    scores = np.concatenate([s.numpy() for s in plain.unit_scores])
    owner = np.concatenate([np.full(len(s), u) for u, s in enumerate(plain.unit_scores)])
    removed = space.reference * space.cost.sizes
    threshold = max(  # the global threshold: every removed score is below every kept one
        float(np.sort(scores[owner == u])[int(k) - 1]) for u, k in enumerate(removed) if k
    )
    kept_scores = [
        np.sort(scores[owner == u])[int(k) :] for u, k in enumerate(removed)
    ]
    assert all((part > threshold).all() for part in kept_scores if len(part))
    assert _met(space, removed)
    np.testing.assert_allclose(space.lower, np.maximum(plain.lower, space.reference - 0.1))
    np.testing.assert_allclose(space.upper, np.minimum(plain.upper, space.reference + 0.1))
    repaired = space.repair(space.sample(np.random.default_rng(0), 32))
    assert np.all(repaired >= space.lower - 1e-9) and np.all(repaired <= space.upper + 1e-9)
    assert all(_met(space, space.removed(g)[0]) for g in repaired)


def test_a_droppable_unit_may_be_removed_whole() -> None:
    budget = Budget("flops", 0.5)
    droppable = np.array([False, True, True, False])
    space = _space(LayerRatioSpace, "resnet", "channel", budget, droppable=droppable)
    sizes = space.cost.sizes
    np.testing.assert_array_equal(space.upper, [0.9, 1.0, 1.0, 0.9])
    np.testing.assert_array_equal(space.repairer.k_max, np.where(droppable, sizes, np.floor(0.9 * sizes)))
    capped = _space(LayerRatioSpace, "resnet", "channel", budget, droppable=droppable, max_ratio=1.0)
    np.testing.assert_array_equal(capped.repairer.k_max, np.where(droppable, sizes, sizes - 1))


def test_space_settings_are_named_when_wrong() -> None:
    assert space_settings("reference-ratios") == ["width"]
    assert space_settings("depth-schedule") == ["knots"]
    with pytest.raises(SpecError, match="space.knots: the layer-ratios space has no setting"):
        check_space_settings("layer-ratios", {"knots": 3})
    with pytest.raises(SpecError, match="space.width=0"):
        _space(ReferenceRatioSpace, "cnn", "channel", Budget("flops", 0.5), width=0.0)
    with pytest.raises(SpecError, match="space.knots=1"):
        _space(DepthScheduleSpace, "cnn", "channel", Budget("flops", 0.5), knots=1)
