"""``searchprune export``: a finished run's best pruned model as a file anyone can load.

Formats:

- ``compact``: the physically smaller dense model (:func:`searchprune.kernels.compact`),
  as TorchScript: ``torch.jit.load(path)`` runs it, no searchprune needed.
- ``sparse``: the masked model with each Linear/Conv layer on the fastest kernel at the
  export batch size (dense, CSR, BSR or gather-scatter;
  :func:`searchprune.kernels.sparsify`), as TorchScript.
- ``masked``: the original architecture with the masks applied (zeros kept), as
  TorchScript.
- ``torch-prune``: the masked model's ``state_dict`` in ``torch.nn.utils.prune``'s layout
  (``weight_orig`` and ``weight_mask`` per pruned layer), for a user who has the
  architecture: apply ``prune.identity`` to those layers, then ``load_state_dict``.

Every export is checked against the masked model on a val batch before it is written,
to a tolerance relative to the outputs' scale (float32 rounding in a deep net passes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from searchprune.assemble import build_problem, build_task
from searchprune.core.masks import MaskSet
from searchprune.kernels import compact, sparsify
from searchprune.kernels.check import check_outputs
from searchprune.latency import LatencyModel
from searchprune.problem import Problem
from searchprune.rundir import RunDir

FORMATS = ("compact", "sparse", "masked", "torch-prune")


def load_run_problem(run_dir: Path) -> tuple[Problem, MaskSet]:
    """The problem of a finished run (with a training-time method's trained weights) and
    its best masks."""
    files = RunDir(run_dir)
    config = files.read_config()
    task = build_task(config)
    if (files / RunDir.TRAINED_MODEL).exists():
        task.model.load_state_dict(torch.load(files / RunDir.TRAINED_MODEL, weights_only=True))
    measured = files / RunDir.LATENCY_MODEL
    problem = build_problem(
        config, task, LatencyModel.load(measured) if measured.exists() else None
    )
    return problem, files.load_best_masks()


def _exported_module(
    scored: nn.Module, problem: Problem, masks: MaskSet, fmt: str, batch: torch.Tensor
) -> nn.Module:
    """``scored`` is a copy of the model as the run scored it: masked, and with BatchNorm
    recalibrated when the run recalibrated it."""
    if fmt == "compact":
        return compact(scored, masks, problem.layers, problem.graph)
    if fmt == "sparse":
        return sparsify(scored, batch, masks=masks, format="auto")[0]
    if fmt == "torch-prune":
        masks.to_torch_prune(scored)
    return scored


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write the run's best model in format ``fmt``; return the file written.

    :raises ValueError: for an unknown format, or an export that does not reproduce the
        masked model's outputs.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    problem, masks = load_run_problem(run_dir)
    target = Path(out) if out else run_dir / f"model-{fmt}.pt"
    batch = problem.val.first_batch()[0]
    copy_of_scored = problem.masked_copy(masks)
    with problem.masked(masks) as scored, torch.inference_mode():
        expected = scored(batch)
    module = _exported_module(copy_of_scored, problem, masks, fmt, batch).eval()
    with torch.inference_mode():
        if fmt == "torch-prune":
            _check(module(batch), expected, fmt)
            torch.save(module.state_dict(), target)
            return target
        traced = torch.jit.trace(module, batch[:1])
        _check(traced(batch), expected, fmt)
    torch.jit.save(traced, str(target))
    return target


def _check(got: torch.Tensor, expected: torch.Tensor, fmt: str) -> None:
    """:raises ValueError: when the export's outputs differ from the masked model's by
    more than float rounding (relative to the outputs' scale; :func:`check_outputs`)."""
    check_outputs(got, expected, f"the {fmt} export")
