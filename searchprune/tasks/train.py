"""The one training loop: built-in models, masked fine-tuning and every training-time
pruning method train through :func:`train_loop`, on tensor pairs and DataLoaders alike.

Methods shape the loop through hooks instead of copies of it: ``penalty`` adds a
regularizer to the loss, ``before_update`` edits gradients before the optimizer step,
``after_step`` runs after it (re-applying masks, pruning on a schedule) and
``after_epoch`` after every complete pass over the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import count

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.tasks.base import Batch, LossFn, Split

Hook = Callable[[int], None]
"""Called with the step (or epoch) index, from 0."""


def _split(data: Batch | Split) -> Split:
    return data if isinstance(data, Split) else Split(data)


def steps_per_epoch(train: Batch | Split, batch_size: int) -> int:
    """Optimizer steps in one pass over ``train``: ``max(n // batch_size, 1)`` for a
    split built from ``n`` tensor samples (the incomplete last minibatch is dropped), or
    the number of batches a DataLoader split yields (counted by iterating it once)."""
    split = _split(train)
    if split.tensors is not None:
        return max(len(split.tensors[0]) // batch_size, 1)
    return sum(1 for _ in split)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG of the CPU and, for a CUDA ``device``, of that GPU (what
    dropout, noise and a shuffling DataLoader draw from), and restore the caller's states
    on exit."""
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


def _one_pass(
    split: Split, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[Batch]:
    """One pass over ``split`` as ``(inputs, targets)`` on ``device``.

    A tensor split is shuffled by ``generator`` (one permutation per pass, drawn when the
    pass starts) into ``max(n // batch_size, 1)`` minibatches of ``min(batch_size, n)``
    distinct samples; any other split is iterated as it is.
    """
    if split.tensors is None:
        for inputs, targets in split:
            yield inputs.to(device), targets.to(device)
        return
    inputs, targets = split.tensors
    samples = len(inputs)
    batch = min(batch_size, samples)
    order = torch.randperm(samples, generator=generator).to(device)
    for i in range(max(samples // batch_size, 1)):
        index = order[i * batch : (i + 1) * batch]
        yield inputs[index], targets[index]


def train_loop(
    model: nn.Module,
    train: Batch | Split,
    *,
    lr: float,
    batch_size: int,
    seed: int,
    steps: int | None = None,
    epochs: int | None = None,
    weight_decay: float = 0.0,
    loss: LossFn = F.cross_entropy,
    penalty: Callable[[int], Tensor] | None = None,
    before_update: Hook | None = None,
    after_step: Hook | None = None,
    after_epoch: Hook | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on ``loss`` and return it in eval mode.

    The run lasts ``steps`` optimizer steps or ``epochs`` passes over ``train`` (give
    exactly one). A split built from tensors is reshuffled every pass by a generator
    seeded with ``seed``, in minibatches of ``batch_size`` distinct samples (the
    incomplete last one dropped); a split built from a DataLoader is iterated as it is,
    once per pass, and ``batch_size`` is unused. ``seed`` also seeds torch's global RNG
    (dropout, noise, a shuffling DataLoader) through a fork that leaves the caller's
    untouched, so a run is reproducible given the model's initial weights.

    Each step: ``loss(model(inputs), targets) + penalty(step)`` is backpropagated,
    ``before_update(step)`` runs (gradients in place), Adam steps, and
    ``after_step(step)`` runs. ``after_epoch(epoch)`` runs after every complete pass.

    :raises ValueError: unless exactly one of ``steps`` and ``epochs`` is given and
        positive, for a non-positive ``batch_size``, or for an empty split.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("train_loop needs exactly one of steps and epochs")
    length = steps or epochs or 0
    if length < 1 or batch_size < 1:
        raise ValueError(
            f"steps/epochs and batch_size must be positive, got {length} and {batch_size}"
        )
    split = _split(train)
    device = next(model.parameters()).device
    if split.tensors is not None:
        inputs, targets = (tensor.to(device) for tensor in split.tensors)
        if len(inputs) == 0:
            raise ValueError("cannot train on an empty split")
        split = Split((inputs, targets))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    step = 0
    with seeded_rng(seed, device):
        for epoch in count():
            if step == steps or epoch == epochs:
                break
            first = step
            for inputs, targets in _one_pass(split, batch_size, generator, device):
                if step == steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                objective = loss(model(inputs), targets)
                if penalty is not None:
                    objective = objective + penalty(step)
                objective.backward()
                if before_update is not None:
                    before_update(step)
                optimizer.step()
                if after_step is not None:
                    after_step(step)
                step += 1
            else:
                if step == first:
                    raise ValueError("cannot train on an empty split")
                if after_epoch is not None:
                    after_epoch(epoch)
    return model.eval()
