"""A user's own task and fitness, reached from configs as "user_plugin:make_task" etc."""

from __future__ import annotations

import torch
from torch import nn

from searchprune import FitnessContext, Task


def make_task(hidden: int = 16) -> Task:
    """A small MLP fitted on a linearly separable toy problem (a user's own model/data)."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 8, generator=generator)
    targets = (inputs[:, :4].sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[:400]), targets[:400]).backward()
        optimizer.step()
    model.eval()
    return Task(
        model=model,
        train=(inputs[:400], targets[:400]),
        val=(inputs[400:500], targets[400:500]),
        test=(inputs[500:], targets[500:]),
        name="toy",
    )


def sparse_accuracy(ctx: FitnessContext) -> dict[str, float]:
    """Accuracy plus a small bonus for FLOPs removed."""
    accuracy = ctx.accuracy()
    return {
        "fitness": accuracy + 0.01 * (1 - ctx.stats["flops_fraction"]),
        "val_accuracy": accuracy,
    }
