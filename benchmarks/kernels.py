"""Sparse kernels against dense on one Linear layer, and compact models' latency.

Run: ``.venv/bin/python benchmarks/kernels.py`` on an idle machine, one torch thread.

1. For 1024- and 4096-wide Linear layers at sparsity 0.5-0.99 and batch 1/32/256, the
   speedup over dense ``F.linear`` of CSR and BSR (16x16 blocks, whole blocks pruned),
   and of ``auto``, which picks per layer by measuring (its pick must be within 10% of
   the best kernel).
2. For the CNNs at channel granularity and half the FLOPs: the compact model's latency
   speedup over the dense model, against its FLOPs reduction (goal: at least 0.8x).
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
from torch import nn

from searchprune.core.budget import Budget
from searchprune.kernels import compact, median_latency, sparsify
from searchprune.problem import Problem
from searchprune.runtime import prepare_process
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


def compact_table(tasks: list[str], repeats: int) -> None:
    print("\nCompact models at half the FLOPs (channel granularity), batch 256")
    print(f"{'task':<14}{'FLOPs kept':>11}{'FLOPs cut':>10}{'speedup':>9}{'ratio':>7}")
    for name in tasks:
        task = load_builtin_task(name)
        problem = Problem(
            task, budget=Budget("flops", 0.5), granularity="channel", channels_last=False
        )
        genome = problem.space.repair(np.full((1, problem.space.dim), 0.5))[0]
        masks = problem.space.decode(genome)
        small = compact(problem.model, masks, problem.layers, problem.graph)
        x = task.split("val").first_batch()[0][:256]
        speedup = _seconds(problem.model, x, repeats) / _seconds(small, x, repeats)
        reduction = 1 / problem.exact_stats(masks)["flops_fraction"]
        print(
            f"{name:<14}{1 / reduction:>11.3f}{reduction:>9.2f}x{speedup:>8.2f}x"
            f"{speedup / reduction:>7.2f}"
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


if __name__ == "__main__":
    main()
