"""Masked fine-tuning: recovers accuracy, keeps the mask exact, copies, reproduces."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from searchprune.core.masks import MaskSet
from searchprune.finetune import finetune
from searchprune.tasks.base import Split, score_model
from searchprune.tasks.data import load_digits_splits
from searchprune.tasks.models import DigitsResNet
from searchprune.tasks.train import train_loop

Digits = tuple[nn.Module, Split, Split]


@pytest.fixture(scope="module")
def digits() -> Digits:
    """A 64-64-10 MLP trained 300 Adam steps on scikit-learn digits, with train and val."""
    splits = load_digits_splits(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train_loop(model, splits["train"], steps=300, lr=1e-2, batch_size=64, seed=0)
    return model, Split(splits["train"]), Split(splits["val"])


def _magnitude_masks(model: nn.Module, ratio: float) -> MaskSet:
    """Remove the ``ratio`` smallest-magnitude weights of every Linear layer."""
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            magnitude = module.weight.detach().abs()
            kept = magnitude.numel() - int(ratio * magnitude.numel())
            threshold = magnitude.flatten().kthvalue(magnitude.numel() - kept).values
            weights[name] = magnitude > threshold
    return MaskSet("weight", weights)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _grads(model: nn.Module) -> dict[str, Tensor]:
    """The gradients ``model`` holds (train_loop leaves the last step's)."""
    return {
        name: parameter.grad.clone()
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }


def _same(left: dict[str, Tensor], right: dict[str, Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_finetuning_recovers_accuracy_of_a_90_percent_pruned_mlp(digits: Digits) -> None:
    model, train, val = digits
    masks = _magnitude_masks(model, 0.9)
    before = score_model(finetune(model, masks, train, epochs=0), val).accuracy
    tuned = finetune(model, masks, train, epochs=5, lr=1e-2)
    after = score_model(tuned, val).accuracy
    assert score_model(model, val).accuracy > 0.9  # the dense model, for reference
    assert before < 0.75
    assert after > 0.9 and after > before + 0.2


def test_masked_weights_are_exactly_zero_and_the_kept_pattern_is_the_mask(
    digits: Digits,
) -> None:
    model, train, _ = digits
    masks = _magnitude_masks(model, 0.9)
    tuned = finetune(model, masks, train, epochs=2, lr=1e-2, weight_decay=1e-3)
    assert not tuned.training
    modules = dict(tuned.named_modules())
    for name, mask in masks.weights.items():
        weight = modules[name].weight.detach()  # type: ignore[union-attr]
        assert torch.equal(weight != 0, mask)


def test_the_input_model_is_left_unchanged(digits: Digits) -> None:
    model, train, _ = digits
    before, grads = _state(model), _grads(model)
    tuned = finetune(model, _magnitude_masks(model, 0.5), train, epochs=1)
    assert tuned is not model and not model.training
    assert _same(_state(model), before) and _same(_grads(model), grads)
    assert not _same(_state(tuned), before)


def test_same_seed_same_weights_different_seed_different(digits: Digits) -> None:
    _, train, _ = digits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    masks = _magnitude_masks(model, 0.5)
    rng = torch.get_rng_state()
    first = _state(finetune(model, masks, train, epochs=1, seed=3))
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is not consumed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # dropout does not draw from the caller's RNG
        assert _same(_state(finetune(model, masks, train, epochs=1, seed=3)), first)
    assert not _same(_state(finetune(model, masks, train, epochs=1, seed=4)), first)


def test_dataloader_splits_are_iterated_as_given(digits: Digits) -> None:
    model, train, _ = digits
    assert train.tensors is not None
    loader = DataLoader(TensorDataset(*train.tensors), batch_size=100, shuffle=False)
    masks = _magnitude_masks(model, 0.9)
    first = finetune(model, masks, Split(loader), epochs=2, lr=1e-2)
    assert _same(_state(finetune(model, masks, Split(loader), epochs=2, lr=1e-2)), _state(first))
    assert not _same(_state(first), _state(finetune(model, masks, train, epochs=2, lr=1e-2)))
    weight = first[2].weight.detach()  # type: ignore[index]
    assert torch.equal(weight != 0, masks.weights["2"])


def test_channel_masks_keep_conv_bias_and_batchnorm_affine_at_zero() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsResNet()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.uniform_(module.bias, 0.5, 1.0)
        inputs, targets = torch.rand(128, 64), torch.randint(0, 10, (128,))
    keep16 = torch.arange(16) % 3 != 0
    keep10 = torch.arange(10) >= 2
    channels = {
        "stem.0": keep16,
        "stem.1": keep16,
        "layer1.conv1": keep16,
        "layer1.bn1": keep16,
        "fc": keep10,
    }
    masks = MaskSet("channel", channels=channels)
    before = _state(model)
    tuned = finetune(model, masks, Split((inputs, targets)), epochs=3, batch_size=32, lr=1e-2)
    assert _same(_state(model), before)
    state = tuned.state_dict()
    for name, keep in channels.items():
        for attr in ("weight", "bias"):
            key = f"{name}.{attr}"
            if key in state:
                assert torch.all(state[key][~keep] == 0), key
                assert not torch.equal(state[key][keep], before[key][keep]), key  # trained
    assert torch.all(state["fc.bias"][~keep10] == 0)


def test_bad_arguments_are_rejected(digits: Digits) -> None:
    model, train, _ = digits
    with pytest.raises(ValueError, match="nowhere"):
        finetune(model, MaskSet("channel", channels={"nowhere": torch.ones(3)}), train, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        finetune(model, _magnitude_masks(model, 0.5), train, epochs=-1)
    empty = Split((torch.zeros(0, 64), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ValueError, match="empty"):
        finetune(model, _magnitude_masks(model, 0.5), empty, epochs=1)
