"""The :class:`Task`: a trained model, its data splits and its loss.

Search and fitness only ever see ``train`` and ``val``; ``test`` is reported at the
end of a run and never optimized on (see :meth:`Task.without_test`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Union, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from searchprune.registry import Registry

Batch = tuple[Tensor, Tensor]
SplitLike = Union[tuple[Tensor, Tensor], Iterable[Batch], "Split"]
LossFn = Callable[[Tensor, Tensor], Tensor]


class Split:
    """One data split, iterated as ``(inputs, targets)`` batches in a fixed order.

    Built from an ``(inputs, targets)`` tensor pair (batched here by ``batch_size``) or
    from any re-iterable of batches such as a :class:`torch.utils.data.DataLoader`
    (used as it is: give it ``shuffle=False`` for a fixed order).
    """

    def __init__(self, data: SplitLike, batch_size: int = 1024) -> None:
        if isinstance(data, Split):
            self._tensors: Batch | None = data._tensors
            self._iterable: Iterable[Batch] | None = data._iterable
            self.batch_size: int = data.batch_size
            return
        self.batch_size = batch_size
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
            inputs, targets = cast(Batch, data)
            if len(inputs) != len(targets):
                raise ValueError(
                    f"split inputs and targets differ in length ({len(inputs)} vs {len(targets)})"
                )
            self._tensors, self._iterable = (inputs, targets), None
        elif isinstance(data, Iterable):
            self._tensors, self._iterable = None, cast(Iterable[Batch], data)
        else:
            raise TypeError(
                "a split must be an (inputs, targets) tensor pair or an iterable of such "
                f"batches (a DataLoader), not {type(data).__name__}"
            )

    @property
    def tensors(self) -> Batch | None:
        """The ``(inputs, targets)`` pair when the split was built from tensors."""
        return self._tensors

    def __iter__(self) -> Iterator[Batch]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            if len(inputs) <= self.batch_size:  # one batch: no slicing (per-candidate hot path)
                yield inputs, targets
                return
            for start in range(0, len(inputs), self.batch_size):
                yield (
                    inputs[start : start + self.batch_size],
                    targets[start : start + self.batch_size],
                )
        else:
            assert self._iterable is not None
            for batch in self._iterable:
                yield batch[0], batch[1]

    def __len__(self) -> int:
        """Number of samples."""
        if self._tensors is not None:
            return len(self._tensors[0])
        return sum(len(targets) for _, targets in self)

    def first_batch(self) -> Batch:
        return next(iter(self))

    def to(self, device: torch.device) -> Split:
        """This split with its tensors on ``device`` (a batch iterable, such as a
        DataLoader, is kept as it is: its batches move where they are used)."""
        if self._tensors is None:
            return self
        inputs, targets = self._tensors
        return Split((inputs.to(device), targets.to(device)), self.batch_size)


@dataclass
class Task:
    """A trained model with its data splits and loss.

    ``train``/``val``/``test`` are ``(inputs, targets)`` tensor pairs or DataLoaders;
    ``test`` is optional. ``loss`` maps ``(logits, targets)`` to a mean loss.
    """

    model: nn.Module
    train: SplitLike
    val: SplitLike
    test: SplitLike | None = None
    loss: LossFn = F.cross_entropy
    name: str = "custom"
    batch_size: int = 1024
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(
                f"Task.model must be a torch.nn.Module, not {type(self.model).__name__}"
            )
        self.train = Split(self.train, self.batch_size)
        self.val = Split(self.val, self.batch_size)
        if self.test is not None:
            self.test = Split(self.test, self.batch_size)

    def split(self, name: str) -> Split:
        """The split called ``train``, ``val`` or ``test``."""
        data = getattr(self, name, None)
        if name not in ("train", "val", "test") or data is None:
            raise ValueError(f"task {self.name!r} has no {name!r} split")
        assert isinstance(data, Split)
        return data

    def without_test(self) -> Task:
        """A view of this task with the test split removed, for search and fitness."""
        return replace(self, test=None)

    def example_input(self) -> Tensor:
        """One val sample with its batch dimension, used to trace shapes and FLOPs."""
        inputs, _ = self.split("val").first_batch()
        return inputs[:1]


@dataclass(frozen=True)
class Scores:
    """Accuracy and mean loss of a model over one split."""

    accuracy: float
    loss: float


@torch.inference_mode()
def score_model(model: nn.Module, split: Split, loss: LossFn = F.cross_entropy) -> Scores:
    """Accuracy and mean loss of ``model`` (in eval mode) over every batch of ``split``;
    a module loaded from a torch.export file (fixed in the mode it was exported in, and
    refusing ``eval()``) is scored as it is."""
    was_training = model.training
    try:
        model.eval()
        switched = True
    except NotImplementedError:  # torch.export's module keeps the mode it was exported in
        switched = False
    correct, total, loss_sum = 0, 0, 0.0
    device = next(model.parameters()).device
    for inputs, targets in split:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        correct += int((logits.argmax(dim=1) == targets).sum())
        loss_sum += float(loss(logits, targets)) * len(targets)
        total += len(targets)
    if switched:
        model.train(was_training)
    if total == 0:
        raise ValueError("cannot score a model on an empty split")
    return Scores(accuracy=correct / total, loss=loss_sum / total)


TaskFactory = Callable[..., Task]
"""Builds a :class:`Task`; registered factories take ``seed`` and their config options."""

TASKS: Registry[TaskFactory] = Registry("task", "task.name")
