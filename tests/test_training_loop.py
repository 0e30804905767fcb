"""The one training loop: epochs or steps, tensor pairs or DataLoaders, and its hooks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from searchprune.tasks.base import Split
from searchprune.tasks.train import steps_per_epoch, train_loop

Data = tuple[Tensor, Tensor]


@pytest.fixture
def data() -> Data:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(100, 8, generator=generator)
    return inputs, (inputs[:, 0] > 0).long()


def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_steps_per_epoch_of_tensors_and_loaders(data: Data) -> None:
    assert steps_per_epoch(data, 32) == 3  # the incomplete last minibatch is dropped
    assert steps_per_epoch(Split(data), 500) == 1
    assert steps_per_epoch(Split(DataLoader(TensorDataset(*data), batch_size=32)), 7) == 4


def test_a_dataloader_split_trains_reproducibly_with_every_hook(data: Data) -> None:
    loader = DataLoader(TensorDataset(*data), batch_size=32, shuffle=True)
    calls: dict[str, list[int]] = {"penalty": [], "before": [], "after": [], "epoch": []}

    def penalty(step: int) -> Tensor:
        calls["penalty"].append(step)
        return torch.zeros(())

    def trained() -> nn.Module:
        return train_loop(model(), Split(loader), epochs=2, lr=1e-2, batch_size=1, seed=5)

    caller_rng = torch.get_rng_state()
    first = train_loop(
        model(),
        Split(loader),
        epochs=2,
        lr=1e-2,
        batch_size=1,
        seed=5,
        penalty=penalty,
        before_update=calls["before"].append,
        after_step=calls["after"].append,
        after_epoch=calls["epoch"].append,
    )
    assert torch.equal(torch.get_rng_state(), caller_rng)  # the caller's RNG is untouched
    assert calls["penalty"] == calls["before"] == calls["after"] == list(range(8))
    assert calls["epoch"] == [0, 1]
    assert not first.training and not same(first, model())
    assert same(first, trained())  # shuffling and dropout follow the seed
    assert not same(
        first, train_loop(model(), Split(loader), epochs=2, lr=1e-2, batch_size=1, seed=6)
    )


def test_steps_run_across_passes_and_match_epochs(data: Data) -> None:
    loader = DataLoader(TensorDataset(*data), batch_size=32)
    epochs: list[int] = []
    steps: list[int] = []
    loop = Split(loader)
    train_loop(
        model(),
        loop,
        steps=6,
        lr=1e-2,
        batch_size=1,
        seed=0,
        after_step=steps.append,
        after_epoch=epochs.append,
    )
    assert steps == list(range(6)) and epochs == [0]  # the second pass of 4 is cut at 2
    by_steps = train_loop(model(), data, steps=9, lr=1e-2, batch_size=32, seed=1)
    by_epochs = train_loop(model(), data, epochs=3, lr=1e-2, batch_size=32, seed=1)
    assert same(by_steps, by_epochs)


def test_hooks_shape_the_update(data: Data) -> None:
    def zero_grads(step: int) -> None:
        for parameter in frozen.parameters():
            assert parameter.grad is not None
            parameter.grad.zero_()

    frozen = model()
    train_loop(frozen, data, epochs=2, lr=1e-2, batch_size=32, seed=0, before_update=zero_grads)
    assert same(frozen, model())  # Adam on zero gradients moves nothing

    def squared_norm(module: nn.Module) -> Tensor:
        return torch.stack([p.square().sum() for p in module.parameters()]).sum()

    shrunk, plain = model(), model()
    train_loop(
        shrunk,
        data,
        epochs=3,
        lr=1e-2,
        batch_size=32,
        seed=0,
        penalty=lambda step: 10.0 * squared_norm(shrunk),
    )
    train_loop(plain, data, epochs=3, lr=1e-2, batch_size=32, seed=0)
    assert float(squared_norm(shrunk).detach()) < 0.8 * float(squared_norm(plain).detach())


def test_bad_arguments_are_rejected(data: Data) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        train_loop(model(), data, lr=1e-2, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        train_loop(model(), data, steps=1, epochs=1, lr=1e-2, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="positive"):
        train_loop(model(), data, epochs=0, lr=1e-2, batch_size=32, seed=0)
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        train_loop(model(), Split(empty), steps=3, lr=1e-2, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="empty"):
        train_loop(
            model(),
            (torch.zeros(0, 8), torch.zeros(0).long()),
            epochs=1,
            lr=1e-2,
            batch_size=4,
            seed=0,
        )
