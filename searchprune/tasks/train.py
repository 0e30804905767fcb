"""A small, reproducible training loop for the built-in tasks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.tasks.base import LossFn, Split


def _tensor_pair(data: tuple[Tensor, Tensor] | Split) -> tuple[Tensor, Tensor]:
    """The ``(inputs, targets)`` pair behind ``data``."""
    pair = data.tensors if isinstance(data, Split) else data
    if pair is None:
        raise TypeError("train_model needs a split built from an (inputs, targets) tensor pair")
    return pair


def batch_indices(
    num_samples: int, steps: int, batch_size: int, generator: torch.Generator
) -> Tensor:
    """``steps`` rows of minibatch indices, from one shuffle of the data per epoch."""
    per_epoch = max(num_samples // batch_size, 1)
    epochs = -(-steps // per_epoch)
    batch = min(batch_size, num_samples)
    orders = [torch.randperm(num_samples, generator=generator) for _ in range(epochs)]
    rows = [order[i * batch : (i + 1) * batch] for order in orders for i in range(per_epoch)]
    return torch.stack(rows[:steps])


def train_loop(
    model: nn.Module,
    train: tuple[Tensor, Tensor] | Split,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    loss: LossFn = F.cross_entropy,
    penalty: Callable[[int], Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam and return it in eval mode.

    Each of the ``steps`` minibatches holds ``batch_size`` distinct samples; the data
    are reshuffled every epoch (incomplete last batches are dropped) by a generator
    seeded with ``seed``, so a run is reproducible given the model's initial weights.
    ``penalty(step)`` is added to the loss (a regularizer); ``after_step(step)`` runs
    after each optimizer step (re-applying masks, pruning on a schedule).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    inputs, targets = _tensor_pair(train)
    device = next(model.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    generator = torch.Generator().manual_seed(seed)
    batches = batch_indices(len(inputs), steps, batch_size, generator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for step, index in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        objective = loss(model(inputs[index]), targets[index])
        if penalty is not None:
            objective = objective + penalty(step)
        objective.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)
    return model.eval()


def train_model(
    model: nn.Module,
    train: tuple[Tensor, Tensor] | Split,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross entropy (:func:`train_loop` with no
    penalty or hook) and return it in eval mode."""
    return train_loop(
        model,
        train,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
    )
