"""MaskSet: in-place application, bit-exact restore, save/load, torch.nn.utils.prune, n:m."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import prune

from searchprune.core.masks import MaskApplier, MaskSet, nm_mask, parse_granularity
from searchprune.tasks.models import DigitsMLP, DigitsResNet


def _random_masks(model: torch.nn.Module, names: list[str], seed: int) -> MaskSet:
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    return MaskSet(
        "weight",
        {
            name: torch.rand(modules[name].weight.shape, generator=generator) > 0.7  # type: ignore[arg-type]
            for name in names
        },
    )


def test_apply_zeroes_exactly_the_masked_weights_and_restore_is_bit_exact() -> None:
    model = DigitsMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    applier = MaskApplier(model, names, [])
    masks = _random_masks(model, names, seed=0)
    applier.apply(masks)
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight.detach()  # type: ignore[union-attr]
        mask = masks.weights[name]
        assert torch.equal(weight[~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(weight[mask], before[f"{name}.weight"][mask])
    applier.apply(_random_masks(model, names, seed=1))  # a second candidate on top
    applier.restore()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_channel_masks_zero_bias_and_batchnorm_affine() -> None:
    model = DigitsResNet().eval()
    conv_name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    bn_name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    modules = dict(model.named_modules())
    torch.nn.init.uniform_(modules[bn_name].bias, 0.5, 1.0)  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = torch.ones(16, dtype=torch.bool)
    keep[:5] = False
    applier = MaskApplier(model, [conv_name], [bn_name])
    with applier.applied(MaskSet("channel", channels={conv_name: keep, bn_name: keep})):
        bn, conv = modules[bn_name], modules[conv_name]
        assert torch.all(bn.weight[:5] == 0) and torch.all(bn.bias[:5] == 0)  # type: ignore[index]
        assert torch.all(bn.bias[5:] >= 0.5)  # type: ignore[index]
        assert torch.all(conv.weight[:5] == 0) and torch.any(conv.weight[5:] != 0)  # type: ignore[index]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = DigitsMLP()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    masks = _random_masks(model, names, seed=3)
    masks.channels["extra"] = torch.tensor([True, False, True])
    masks.save(tmp_path / "m.npz")
    assert MaskSet.load(tmp_path / "m.npz") == masks


def test_torch_prune_export_and_import_give_the_same_model_outputs() -> None:
    model = DigitsMLP().eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    masks = _random_masks(model, names, seed=4)
    x = torch.randn(8, 64)
    applier = MaskApplier(model, names, [])
    with applier.applied(masks):
        expected = model(x)
    masks.to_torch_prune(model)
    assert torch.allclose(model(x), expected)
    assert MaskSet.from_torch_prune(model) == masks
    for name in names:
        prune.remove(dict(model.named_modules())[name], "weight")
    assert torch.allclose(model(x), expected)


def test_from_torch_prune_without_masks_is_an_error() -> None:
    with pytest.raises(ValueError, match="weight_mask"):
        MaskSet.from_torch_prune(DigitsMLP())


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    blocks=st.integers(1, 5),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
    seed=st.integers(0, 10_000),
)
def test_nm_mask_keeps_n_largest_of_every_m(
    rows: int, blocks: int, nm: tuple[int, int], seed: int
) -> None:
    n, m = nm
    scores = torch.rand(rows, blocks * m, generator=torch.Generator().manual_seed(seed))
    keep = nm_mask(scores, n, m)
    grouped_keep = keep.view(rows, blocks, m)
    assert torch.all(grouped_keep.sum(-1) == n)
    grouped = scores.view(rows, blocks, m)
    smallest_kept = torch.where(grouped_keep, grouped, torch.inf).amin(-1)
    largest_dropped = torch.where(grouped_keep, -torch.inf, grouped).amax(-1)
    assert torch.all(smallest_kept >= largest_dropped)


def test_nm_mask_needs_divisible_rows_and_granularity_names_parse() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.rand(3, 6), 2, 4)
    assert parse_granularity("unit") == "channel"
    assert parse_granularity("2:4") == "2:4"
    with pytest.raises(ValueError, match="unknown granularity"):
        parse_granularity("filters")


@settings(max_examples=30, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 64 * 300 - 1), st.integers(0, 300 * 100 - 1), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_ranked_masking_equals_full_masks_whatever_came_before(
    steps: list[tuple[int, int, bool]],
) -> None:
    torch.manual_seed(0)
    model = DigitsMLP()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:2]
    modules = dict(model.named_modules())
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    orders = {n: torch.randperm(modules[n].weight.numel()) for n in names}  # type: ignore[union-attr]
    applier = MaskApplier(model, names, [])
    applier.set_orders(orders)
    for first, second, interleave_full_mask in steps:
        if interleave_full_mask:  # an arbitrary mask in between must not leak into the next
            applier.apply(_random_masks(model, names, seed=first))
        removed = dict(zip(names, (first, second), strict=True))
        applier.apply_ranked(removed)
        for name in names:
            keep = torch.ones(modules[name].weight.numel(), dtype=torch.bool)  # type: ignore[union-attr]
            keep[orders[name][: removed[name]]] = False
            expected = dense[f"{name}.weight"] * keep.view_as(dense[f"{name}.weight"])
            assert torch.equal(modules[name].weight.detach(), expected)  # type: ignore[union-attr]
    applier.restore()
    assert all(torch.equal(dense[k], v) for k, v in model.state_dict().items())


def test_attention_in_projection_is_masked_restored_and_exported_to_torch_prune() -> None:
    model = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    dense = model.in_proj_weight.detach().clone()
    mask = torch.rand(24, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = MaskSet("weight", {"": mask})
    applier = MaskApplier(model, [""], [])
    with applier.applied(masks):
        assert torch.equal(model.in_proj_weight.detach(), dense * mask)
        expected = model(x, x, x)[0]
    assert torch.equal(model.in_proj_weight.detach(), dense)
    masks.to_torch_prune(model)
    torch.testing.assert_close(model(x, x, x)[0], expected)
    assert MaskSet.from_torch_prune(model) == masks
