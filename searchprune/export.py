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
from zipfile import BadZipFile

import torch
from torch import nn

from searchprune.assemble import build_problem, build_task, restore_scored
from searchprune.config import ConfigError
from searchprune.core.masks import MaskSet
from searchprune.kernels import compact, sparsify
from searchprune.kernels.check import check_outputs
from searchprune.latency import LatencyModel
from searchprune.problem import Problem
from searchprune.rundir import RunDir
from searchprune.trust import read_received_config

FORMATS = ("compact", "sparse", "masked", "torch-prune")


def load_run_problem(run_dir: Path, *, trust_plugins: bool = False) -> tuple[Problem, MaskSet]:
    """The problem of a finished run, on the dense weights the run scored (with a
    training-time method's trained weights), and its best masks.

    The run directory's config is read as a received one: its plug-ins are checked
    (:mod:`searchprune.trust`) unless ``trust_plugins``.
    """
    files = RunDir(run_dir)
    config = read_received_config(run_dir, trust=trust_plugins)
    masks = _best_masks(files)
    task = build_task(config)
    stored = files.load_dense_model()
    if stored is not None:  # (older run directories have none: the factory rebuilds it)
        restore_scored(config, task, stored, files.path)
    trained = files / RunDir.TRAINED_MODEL
    if trained.exists():
        try:
            task.model.load_state_dict(torch.load(trained, map_location="cpu", weights_only=True))
        except Exception as error:  # a damaged file, or one that is not a state dict
            raise ConfigError(
                f"{trained} cannot be loaded ({type(error).__name__}: {error}); the run "
                "directory is damaged"
            ) from None
    measured = files / RunDir.LATENCY_MODEL
    problem = build_problem(
        config, task, LatencyModel.load(measured) if measured.exists() else None
    )
    return problem, masks


def _best_masks(files: RunDir) -> MaskSet:
    """The run's best masks, with an error naming the file when it is damaged."""
    try:
        return files.load_best_masks()
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, BadZipFile) as error:
        raise ConfigError(
            f"{files / RunDir.BEST_MASKS} cannot be read ({type(error).__name__}: {error}); "
            "the run directory is damaged"
        ) from None


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


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path | None = None, *, trust_plugins: bool = False
) -> Path:
    """Write the run's best model in format ``fmt``; return the file written
    (``trust_plugins``: see :func:`load_run_problem`).

    :raises ValueError: for an unknown format, or an export that does not reproduce the
        masked model's outputs.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    problem, masks = load_run_problem(run_dir, trust_plugins=trust_plugins)
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
