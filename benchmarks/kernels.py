"""Sparse kernels against dense on one Linear layer, and compact models' latency.

Run: ``.venv/bin/python benchmarks/kernels.py`` on an idle machine, one torch thread.

1. For 1024- and 4096-wide Linear layers at sparsity 0.5-0.99 and batch 1/32/256, the
   speedup over dense ``F.linear`` of CSR and BSR (16x16 blocks, whole blocks pruned),
   and of ``auto``, which picks per layer by measuring (its pick must be within 10% of
   the best kernel).
2. For the CNNs at channel granularity and half the FLOPs: the latency speedup over the
   dense model of the compact model and of per-layer ``auto`` kernels, against the FLOPs
   reduction (goal: at least 0.8x), on the built-in CNNs (batch 256) and on a
   compute-bound CIFAR-sized CNN (batch 1 and 32).
3. On a CUDA GPU of capability 8.0+ only: 2:4 Linear layers against dense float16.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.core.masks import nm_mask
from searchprune.kernels import compact, median_latency, sparsify
from searchprune.kernels.semi_structured import semi_structured_available
from searchprune.problem import Problem
from searchprune.runtime import prepare_process
from searchprune.tasks.base import Task
from searchprune.tasks.builtin import load_builtin_task

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)


def pruned_linear(width: int, sparsity: float, block: int | None) -> nn.Linear:
    """A width x width layer with ``sparsity`` of its weights (or of its blocks) zero."""
    layer = nn.Linear(width, width)
    with torch.no_grad():
        if block is None:
            keep = torch.rand(width, width) >= sparsity
        else:
            cells = torch.rand(width // block, width // block) >= sparsity
            keep = cells.repeat_interleave(block, 0).repeat_interleave(block, 1)
        layer.weight.mul_(keep)
    return layer


def _seconds(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    return median_latency(partial(model, x), repeats=repeats)


def layer_table(widths: list[int], batches: list[int], repeats: int) -> None:
    print("Linear layer, speedup over dense (1 thread); auto: its pick and its gap to the best")
    print(
        f"{'width':>6}{'batch':>6}{'sparsity':>9}{'csr':>8}{'bsr':>8}  {'auto pick':<10}{'gap':>6}"
    )
    for width in widths:
        for batch in batches:
            x = torch.randn(batch, width)
            for sparsity in SPARSITIES:
                speedup = {}
                for kind, block in (("csr", None), ("bsr", 16)):
                    layer = pruned_linear(width, sparsity, block)
                    model, _ = sparsify(layer, x, format=kind, repeats=repeats)
                    speedup[kind] = _seconds(layer, x, repeats) / _seconds(model, x, repeats)
                layer = pruned_linear(width, sparsity, 16)
                auto, chosen = sparsify(layer, x, format="auto", repeats=repeats)
                kernels = [sparsify(layer, x, format=k)[0] for k in ("dense", "csr", "bsr")]
                best = min(_seconds(kernel, x, repeats) for kernel in kernels)
                gap = _seconds(auto, x, repeats) / best - 1
                print(
                    f"{width:>6}{batch:>6}{sparsity:>9.2f}{speedup['csr']:>7.2f}x"
                    f"{speedup['bsr']:>7.2f}x  {next(iter(chosen.values())):<10}"
                    f"{100 * gap:>5.0f}%"
                )


def semi_structured_table(widths: list[int], batches: list[int], repeats: int) -> None:
    """2:4 layers against dense float16 ones on the GPU, when there is a capable one."""
    if not semi_structured_available("cuda"):
        print("\n2:4 kernels: skipped (needs a CUDA GPU of compute capability 8.0+)")
        return
    print(f"\n2:4 Linear layer on {torch.cuda.get_device_name()}, float16, speedup over dense")
    print(f"{'width':>6}{'batch':>6}{'2:4':>8}")
    for width in widths:
        for batch in batches:
            layer = nn.Linear(width, width).cuda().half()
            with torch.no_grad():
                layer.weight.mul_(nm_mask(layer.weight.abs(), 2, 4))
            x = torch.randn(batch, width, device="cuda", dtype=torch.half)
            sparse, _ = sparsify(layer, x, format="2:4")
            speedup = _seconds(layer, x, repeats) / _seconds(sparse, x, repeats)
            print(f"{width:>6}{batch:>6}{speedup:>7.2f}x")


class WideCNN(nn.Module):
    """A compute-bound VGG-style block (Simonyan & Zisserman 2015) on CIFAR-sized 3x32x32
    inputs, random weights (latency does not depend on them): conv 3-64-128, pool,
    conv 256, global pool, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(x))
        return out


def _wide_task() -> Task:
    torch.manual_seed(0)
    inputs, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    return Task(WideCNN().eval(), (inputs, labels), (inputs, labels))


def compact_table(tasks: list[str], repeats: int) -> None:
    """Half the FLOPs at channel granularity (uniform ratios), one thread: the compact
    model's and the per-layer ``auto`` kernels' speedup over dense, against the FLOPs cut."""
    print("\nHalf the FLOPs (channel granularity): speedup over dense / FLOPs cut")
    print(
        f"{'model':<14}{'batch':>6}{'FLOPs cut':>10}{'compact':>9}{'ratio':>7}"
        f"{'auto':>7}{'ratio':>7}  auto picks"
    )
    cases = [(name, load_builtin_task(name), 256) for name in tasks]
    cases += [("wide-cnn", _wide_task(), batch) for batch in (1, 32)]
    for name, task, batch in cases:
        problem = Problem(task, budget=Budget("flops", 0.5), granularity="channel")
        genome = problem.space.repair(np.full((1, problem.space.dim), 0.5))[0]
        masks = problem.space.decode(genome)
        x = task.split("val").first_batch()[0][:batch]
        if any(isinstance(m, nn.Conv2d) for m in problem.model.modules()) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        small = compact(problem.model, masks, problem.layers, problem.graph)
        auto, picks = sparsify(problem.model, x, masks=masks, format="auto", repeats=repeats)
        dense = _seconds(problem.model, x, repeats)
        speedups = [dense / _seconds(model, x, repeats) for model in (small, auto)]
        cut = 1 / problem.exact_stats(masks)["flops_fraction"]
        print(
            f"{name:<14}{batch:>6}{cut:>9.2f}x"
            + "".join(f"{speedup:>8.2f}x{speedup / cut:>7.2f}" for speedup in speedups)
            + f"  {','.join(sorted(set(picks.values())))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument(
        "--tasks", nargs="+", default=["digits-cnn", "mnist1d-cnn", "digits-resnet"]
    )
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    prepare_process(1)
    layer_table(args.widths, args.batches, args.repeats)
    compact_table(args.tasks, args.repeats)
    semi_structured_table(args.widths, args.batches, args.repeats)


if __name__ == "__main__":
    main()
