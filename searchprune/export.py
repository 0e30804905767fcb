"""``searchprune export``: a finished run's best pruned model as a file anyone can load.

Formats, and the file each writes (default name in ``RUN_DIR``):

- ``compact`` (``model-compact.pt2``): the physically smaller dense model
  (:func:`searchprune.kernels.compact`) as a ``torch.export`` program with a dynamic batch
  dimension: ``torch.export.load(path).module()`` runs it, no searchprune needed.
- ``masked`` (``model-masked.pt2``): the original architecture with the masks applied
  (zeros kept), as a ``torch.export`` program the same way.
- ``sparse`` (``model-sparse.pt``): the masked model with each Linear/Conv layer on the
  fastest kernel at the export batch size (dense, CSR, BSR or gather-scatter;
  :func:`searchprune.kernels.sparsify`), as TorchScript (``torch.jit.load``): torch.export
  cannot hold CSR/BSR tensors ("Sparse CSR tensors do not have is_contiguous"), so this
  format keeps the format torch 2.13 deprecates, and loading it warns.
- ``torch-prune`` (``model-torch-prune.pt``): the masked model's ``state_dict`` in
  ``torch.nn.utils.prune``'s layout (``weight_orig`` and ``weight_mask`` per pruned
  layer), for a user who has the architecture: apply ``prune.identity`` to those layers,
  then ``load_state_dict``.

When ``torch.export`` cannot export a ``compact`` or ``masked`` model (data-dependent
control flow, an operator it does not know, a batch size the model fixes), the model is
written as TorchScript instead (``model-F.pt``) and :attr:`ExportResult.notes` says why.
``onnx=True`` (``--onnx``) also writes the exported program as ONNX beside it
(``model-F.onnx``, dynamic batch), which needs the ``onnx``, ``onnxscript`` and
``onnxruntime`` packages.

Every file is serialized, loaded back from those bytes and checked against the masked
model as the run scored it (BatchNorm recalibration included) on a val batch other than
the one it was exported at (2 rows; the check uses the whole val batch, so a batch
dimension the export fixed fails it), to a tolerance relative to the outputs' scale
(:func:`searchprune.kernels.check.check_outputs`); only then is it written, through a
temporary file renamed over the target (:func:`searchprune.rundir.write_atomically`). The
returned :class:`ExportResult` gives the file's size, the exported model's stored
params and FLOPs, and its latency against the dense model's.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zipfile import BadZipFile

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from searchprune.assemble import build_problem, build_task, restore_scored
from searchprune.config import ConfigError
from searchprune.core.masks import MaskSet
from searchprune.kernels import compact, sparsify
from searchprune.kernels.check import check_models, check_outputs, output_tolerance
from searchprune.latency import LatencyModel, measure_ms
from searchprune.problem import Problem
from searchprune.rundir import RunDir, write_atomically
from searchprune.trust import read_received_config

FORMATS = ("compact", "sparse", "masked", "torch-prune")
ONNX_FORMATS = ("compact", "masked")
"""The formats ``onnx=True`` also writes as ONNX (those torch.export holds)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
"""What ONNX export needs: torch's exporter uses onnx and onnxscript; the check runs the
file in onnxruntime."""

TORCH_EXPORT, TORCHSCRIPT, ONNX, STATE_DICT = "torch.export", "TorchScript", "ONNX", "state_dict"
_SUFFIXES = {TORCH_EXPORT: ".pt2", TORCHSCRIPT: ".pt", STATE_DICT: ".pt", ONNX: ".onnx"}
_EXPORT_ROWS = 2
"""The batch size the model is exported at: torch.export fixes a dimension of size 0 or
1, so a dynamic batch dimension needs 2 rows."""
_LATENCY_ROUNDS, _LATENCY_RUNS = 3, 10
"""Latency: the median of 3 rounds, each the median of 10 runs of each model."""
_REASON_CHARS = 200
"""How much of torch.export's first error line a fallback notice quotes."""


@dataclass(frozen=True)
class ExportedFile:
    """One file an export wrote, and how its model compared with the masked model."""

    path: Path
    container: str
    """``torch.export``, ``TorchScript``, ``ONNX`` or ``state_dict``."""
    size_bytes: int
    max_diff: float
    """Largest absolute difference between the loaded-back file's outputs and the masked
    model's, at :attr:`ExportResult.checked_batch` rows."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote and measured (it is also the written path, as an
    ``os.PathLike``)."""

    format: str
    file: ExportedFile
    onnx: ExportedFile | None
    exported_batch: int
    """Rows of the example the model was exported (traced) at."""
    checked_batch: int
    """Rows of the val batch the loaded-back file was checked at, and latency measured at."""
    tolerance: float
    """The check's tolerance (:func:`searchprune.kernels.check.output_tolerance`)."""
    params: int
    """Floating-point values the exported model stores (parameters and buffers; a sparse
    tensor counts its stored values)."""
    nonzero_params: int
    dense_params: int
    """The same count for the dense model."""
    flops: int
    """Multiply-accumulates per sample the exported model runs (``FlopCounterMode``, whose
    2 FLOPs per multiply-add are halved; a sparse product counts its stored values)."""
    dense_flops: int
    latency_ms: float
    """Median wall time of the loaded-back model on the checked batch, one thread."""
    dense_latency_ms: float
    """The same for the dense model, timed alternately with it."""
    notes: tuple[str, ...]
    """Why the file is TorchScript, or why a compact model is no smaller, when either holds."""

    @property
    def path(self) -> Path:
        return self.file.path

    def __fspath__(self) -> str:
        return str(self.file.path)

    @property
    def latency_ratio(self) -> float:
        """Latency of the exported model over the dense model's (below 1: faster)."""
        return self.latency_ms / self.dense_latency_ms

    def lines(self) -> list[str]:
        """The report ``searchprune export`` prints."""
        written = [self.file, *([self.onnx] if self.onnx else [])]
        lines = [
            f"wrote {f.path}: {_describe(self.format, f.container)}, {_size(f.size_bytes)}"
            for f in written
        ]
        lines += [
            f"  params: {self.params:,} stored, {self.nonzero_params:,} nonzero "
            f"({_percent(self.params, self.dense_params)} of the dense model's "
            f"{self.dense_params:,} stored)",
            f"  FLOPs: {self.flops:,} multiply-adds per sample "
            f"({_percent(self.flops, self.dense_flops)} of the dense model's {self.dense_flops:,})",
            f"  latency at batch {self.checked_batch}, one thread: {self.latency_ms:.3f} ms, "
            f"dense {self.dense_latency_ms:.3f} ms: {self.latency_ratio:.2f}x the dense "
            f"model's (median of {_LATENCY_ROUNDS} alternating rounds of {_LATENCY_RUNS} runs)",
            *(
                f"  {f.container} file checked at batch {self.checked_batch}"
                + ("" if f.container == STATE_DICT else f" (exported at {self.exported_batch})")
                + f": max |diff| from the masked model {f.max_diff:.2e}, tolerance "
                f"{self.tolerance:.2e}"
                for f in written
            ),
            *(f"  load the {f.container} file with {_LOAD_HINTS[f.container]}" for f in written),
            *(f"  note: {note}" for note in self.notes),
        ]
        return lines


_LOAD_HINTS = {
    TORCH_EXPORT: "torch.export.load(path).module() (no searchprune needed)",
    TORCHSCRIPT: "torch.jit.load(path) (no searchprune needed; torch 2.13 deprecates "
    "TorchScript, so loading warns)",
    STATE_DICT: "torch.load(path, weights_only=True) into the architecture, after "
    "torch.nn.utils.prune.identity on each pruned layer",
    ONNX: "onnxruntime.InferenceSession(path) (or any ONNX runtime)",
}


def _describe(fmt: str, container: str) -> str:
    if container == TORCH_EXPORT:
        return f"{fmt}, torch.export program with a dynamic batch dimension"
    if container == ONNX:
        return f"{fmt}, ONNX with a dynamic batch dimension"
    if container == STATE_DICT:
        return f"{fmt}, state_dict in torch.nn.utils.prune's layout"
    return f"{fmt}, TorchScript"


def _size(size_bytes: int) -> str:
    if size_bytes < 1024**2:
        return f"{size_bytes / 1024:.1f} KiB"
    return f"{size_bytes / 1024**2:.2f} MiB"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


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
    scored: nn.Module, problem: Problem, masks: MaskSet, fmt: str, batch: Tensor
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
    run_dir: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    trust_plugins: bool = False,
    onnx: bool = False,
) -> ExportResult:
    """Write the run's best model in format ``fmt`` to ``out`` (default
    ``RUN_DIR/model-FORMAT`` with the suffix of what is written: ``.pt2`` for a
    torch.export program, ``.pt`` for TorchScript and a state dict), and with ``onnx``
    also as ONNX beside it (``out`` with the suffix ``.onnx``); see the module docstring
    (``trust_plugins``: see :func:`load_run_problem`). Nothing is written unless every
    file passes its check.

    :raises ValueError: for an unknown format; ``onnx`` with a format other than
        ``compact`` or ``masked``, without its packages, or on a model torch.export or
        torch.onnx cannot export; an export that does not reproduce the masked model's
        outputs.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if onnx:
        _require_onnx(fmt, out)
    run_dir = Path(run_dir)
    problem, masks = load_run_problem(run_dir, trust_plugins=trust_plugins)
    batch = problem.val.first_batch()[0]
    # checked at the val batch, exported at 2 of its rows (3 rows, repeated, when it is smaller)
    checked = batch[torch.arange(max(len(batch), _EXPORT_ROWS + 1)) % len(batch)]
    example = checked[:_EXPORT_ROWS]
    copy_of_scored = problem.masked_copy(masks)
    with problem.masked(masks) as scored, torch.inference_mode():
        expected = scored(checked)
    module = _exported_module(copy_of_scored, problem, masks, fmt, batch).eval()
    container, data, loaded, program, notes = _serialized(module, fmt, example, problem, masks)
    what = f"the {fmt} export ({container})"
    with torch.inference_mode():
        got = loaded(checked)
    try:
        max_diff = _checked(got, expected, what)
    except ValueError:
        if fmt not in ("compact", "masked"):
            raise
        # rounding compounded past float32's tolerance (a deep net): settle it in float64
        # on the module, then hold the file to the module it was written from
        check_models(module, problem.masked_copy(masks).eval(), checked, what)
        with torch.inference_mode():
            _checked(got, module(checked), what + " against the model it was written from")
        max_diff = float((got - expected).abs().max())

    target = Path(out) if out else run_dir / f"model-{fmt}{_SUFFIXES[container]}"
    onnx_file: ExportedFile | None = None
    if onnx:
        if program is None:
            raise ValueError(f"--onnx is written from the torch.export program: {notes[-1]}")
        onnx_data, onnx_outputs = _onnx(program, example, checked)
        onnx_diff = _checked(onnx_outputs, expected, f"the {fmt} export (ONNX)")
        onnx_file = ExportedFile(
            target.with_suffix(_SUFFIXES[ONNX]), ONNX, len(onnx_data), onnx_diff
        )
    write_atomically(target, data)
    if onnx_file is not None:
        write_atomically(onnx_file.path, onnx_data)

    params, nonzero = _stored_values(module)
    dense_params, _ = _stored_values(problem.model)
    if fmt == "compact" and params >= dense_params:
        why = (
            "at weight granularity the masks remove no whole channel, so it keeps the dense "
            "shape"
            if masks.granularity == "weight"
            else "no channel is removed whole"
        )
        notes.append(
            f"the compact model is no smaller than the masked one: {why}; --format sparse "
            "stores only the kept weights"
        )
    latency_ms, dense_latency_ms = _paired_latency_ms(loaded, problem.model, checked)
    return ExportResult(
        format=fmt,
        file=ExportedFile(target, container, target.stat().st_size, max_diff),
        onnx=onnx_file,
        exported_batch=len(example),
        checked_batch=len(checked),
        tolerance=output_tolerance(expected),
        params=params,
        nonzero_params=nonzero,
        dense_params=dense_params,
        flops=_flops(module, checked[:1]),
        dense_flops=_flops(problem.model, checked[:1]),
        latency_ms=latency_ms,
        dense_latency_ms=dense_latency_ms,
        notes=tuple(notes),
    )


def _serialized(
    module: nn.Module, fmt: str, example: Tensor, problem: Problem, masks: MaskSet
) -> tuple[str, bytes, nn.Module, torch.export.ExportedProgram | None, list[str]]:
    """``module`` (format ``fmt``) as the bytes of its file: the container written, the
    bytes, the model loaded back from them, the torch.export program (``None`` when the
    file is not one), and the notes saying why a file is TorchScript."""
    if fmt == "torch-prune":
        data = _to_bytes(lambda f: torch.save(module.state_dict(), f))
        note = (
            "the stored values count the float weight_mask torch.nn.utils.prune keeps beside "
            "each pruned weight"
        )
        return STATE_DICT, data, _reloaded_state(problem.model, masks, data), None, [note]
    if fmt == "sparse":
        data, loaded = _torchscript(module, example)
        note = (
            "sparse is written as TorchScript: torch.export cannot hold the CSR/BSR tensors "
            "of its kernels"
        )
        return TORCHSCRIPT, data, loaded, None, [note]
    try:
        program = _export_program(module, example)
    except Exception as error:  # torch.export fails in many ways; TorchScript may trace it
        data, loaded = _torchscript(module, example)
        note = (
            f"torch.export cannot export this model ({_reason(error)}); written as "
            "TorchScript instead, which torch 2.13 deprecates"
        )
        return TORCHSCRIPT, data, loaded, None, [note]
    data = _save_program(program)
    return TORCH_EXPORT, data, torch.export.load(io.BytesIO(data)).module(), program, []


def _paired_latency_ms(
    model: nn.Module, dense: nn.Module, batch: Tensor
) -> tuple[float, float]:
    """Median latency of ``model`` and of ``dense`` on ``batch`` in milliseconds, on one
    thread (:func:`searchprune.latency.measure_ms`), timed in alternating rounds so that a
    change in the machine's load falls on both."""
    rounds = [
        (measure_ms(model, batch, _LATENCY_RUNS), measure_ms(dense, batch, _LATENCY_RUNS))
        for _ in range(_LATENCY_ROUNDS)
    ]
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def _checked(got: Tensor, expected: Tensor, what: str) -> float:
    """The largest absolute difference of ``got`` from ``expected``.

    :raises ValueError: when it is more than float rounding explains (relative to the
        outputs' scale; :func:`check_outputs`).
    """
    check_outputs(got, expected, what)
    return float((got.detach().to(expected.dtype) - expected).abs().max())


def _to_bytes(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _reason(error: Exception) -> str:
    """The error's type and first line, shortened, for a one-line notice."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."


def _export_program(module: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``module`` as a torch.export program whose first input's batch dimension is dynamic.

    On failure torch prints the partial graph it traced to stderr; that is dropped, as the
    caller reports the error in one line.
    """
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stderr(io.StringIO()):
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def _save_program(program: torch.export.ExportedProgram) -> bytes:
    """``program`` as ``.pt2`` bytes.

    A weight whose strides are not the contiguous ones (a channels-last convolution
    weight, which the compact model keeps because it runs faster) makes
    ``torch.export.save`` warn "No complete tensor found in the group" and store its
    storage's span instead: exact on CPU, and the loaded-back file is checked anyway, so
    the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No complete tensor found in the group", UserWarning)
        return _to_bytes(lambda f: torch.export.save(program, f))


def _torchscript(module: nn.Module, example: Tensor) -> tuple[bytes, nn.Module]:
    """``module`` traced at ``example`` as TorchScript bytes, and the module loaded back
    from them (torch's deprecation warnings are silenced: the report says so instead)."""
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", r"`torch\.jit\.", DeprecationWarning)
        traced = torch.jit.trace(module, example)
        data = _to_bytes(lambda f: torch.jit.save(traced, f))
        return data, torch.jit.load(io.BytesIO(data))


def _reloaded_state(model: nn.Module, masks: MaskSet, data: bytes) -> nn.Module:
    """A copy of the dense ``model`` with ``masks`` as ``torch.nn.utils.prune``
    re-parametrizations, holding the state in ``data`` (as a user loads the file)."""
    reloaded = copy.deepcopy(model)
    masks.to_torch_prune(reloaded)
    reloaded.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return reloaded.eval()


def _require_onnx(fmt: str, out: str | Path | None) -> None:
    """:raises ValueError: unless ``fmt`` can be written as ONNX, ``out`` leaves a name for
    the ONNX file, and :data:`ONNX_PACKAGES` import."""
    if fmt not in ONNX_FORMATS:
        raise ValueError(
            f"--onnx: ONNX is written for --format {' or '.join(ONNX_FORMATS)} (the "
            f"torch.export formats), not {fmt}"
        )
    if out is not None and Path(out).suffix == _SUFFIXES[ONNX]:
        raise ValueError(
            f"--out {out}: with --onnx, --out names the torch.export file (.pt2); the ONNX "
            "file is written beside it with the suffix .onnx"
        )
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(
            f"--onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: pip install {' '.join(ONNX_PACKAGES)}"
        )


def _onnx(
    program: torch.export.ExportedProgram, example: Tensor, checked: Tensor
) -> tuple[bytes, Tensor]:
    """``program`` as ONNX bytes (batch dimension dynamic), and the outputs onnxruntime
    computes from those bytes on ``checked``.

    :raises ValueError: when torch.onnx cannot export it.
    """
    import onnxruntime

    try:
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False)
    except Exception as error:  # the exporter raises many kinds
        raise ValueError(
            f"--onnx: torch.onnx cannot export this model ({_reason(error)}); export "
            "without --onnx"
        ) from None
    assert onnx_program is not None  # dynamo=True always returns the program
    data: bytes = onnx_program.model_proto.SerializeToString()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: checked.detach().cpu().numpy()}
    return data, torch.from_numpy(session.run(None, feed)[0])


def _stored_values(model: nn.Module) -> tuple[int, int]:
    """Floating-point values ``model``'s parameters and buffers hold (a sparse tensor: its
    stored values), and how many of them are nonzero."""
    stored = nonzero = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        values = tensor.detach() if tensor.layout == torch.strided else tensor.values()
        if values.is_floating_point():
            stored += values.numel()
            nonzero += int(torch.count_nonzero(values))
    return stored, nonzero


class _ProductFlops:
    """A ``FlopCounterMode`` formula for ``mm`` (``left`` is argument 0) or ``addmm``
    (argument 1) that is handed the tensors themselves (``_get_raw``), so a sparse left
    operand counts only its stored values; 2 FLOPs per multiply-add, as torch counts."""

    _get_raw = True

    def __init__(self, left: int) -> None:
        self.left = left

    def __call__(self, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
        left, right = args[self.left], args[self.left + 1]
        multiplied = left.numel() if left.layout == torch.strided else left.values().numel()
        return 2 * multiplied * int(right.shape[-1])


def _flops(model: nn.Module, sample: Tensor) -> int:
    """Multiply-accumulates ``model`` runs on ``sample`` (one row), counted by torch's
    ``FlopCounterMode``."""
    aten = torch.ops.aten
    mapping = {aten.mm.default: _ProductFlops(0), aten.addmm.default: _ProductFlops(1)}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter, torch.inference_mode():
        model(sample)
    return counter.get_total_flops() // 2
