"""Whether a rebuilt model (compact, sparse, traced) computes what the masked one does.

Float rounding differs between two ways of computing the same sums (fewer terms, other
kernels, another summation order), and it accumulates with depth: in float32 a 150-layer
net differs by about 1e-6 of its outputs' scale, while its outputs may be in the
hundreds. A tolerance absolute in the outputs' units rejects correct deep models and
accepts wrong shallow ones; this one is relative to the scale of the expected outputs
(their largest magnitude) and to the precision of their dtype. Where rounding
compounds past even that (random BatchNorm statistics in a 150-layer ResNet),
:func:`check_models` settles it in float64, where the same sums agree to 1e-9 of the
scale even then, and a model that computes something else still differs.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

_ROUNDING_STEPS = 1000.0
"""Tolerated error, in units of the dtype's epsilon times the outputs' scale: float32
allows 1.2e-4 of the scale, float64 2.2e-13."""


_FLOAT64_RELATIVE = 1e-9
"""Tolerated float64 error, relative to the outputs' scale: rounding amplified even a
million-fold (4.5e6 float64 eps) passes, while a model that computes another function
differs by far more (a pruning mistake moves outputs by percents of their scale)."""


def output_tolerance(expected: Tensor, relative: float | None = None) -> float:
    """The largest absolute difference from ``expected`` that float rounding explains:
    ``relative`` (default: 1000 float eps of the dtype) times the outputs' scale."""
    dtype = expected.dtype if expected.is_floating_point() else torch.float32
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    if relative is None:
        relative = min(_ROUNDING_STEPS * torch.finfo(dtype).eps, 0.05)
    return relative * max(scale, torch.finfo(dtype).tiny)


def check_outputs(
    got: Tensor, expected: Tensor, what: str, relative: float | None = None
) -> None:
    """:raises ValueError: when ``got`` differs from ``expected`` by more than rounding
    (:func:`output_tolerance`), naming ``what`` and the largest difference."""
    if got.shape != expected.shape:
        raise ValueError(
            f"{what} gives outputs of shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        )
    worst = float((got.detach().to(expected.dtype) - expected.detach()).abs().max())
    tolerance = output_tolerance(expected, relative)
    if not worst <= tolerance:
        rule = f"{_ROUNDING_STEPS:g} x float eps" if relative is None else f"{relative:g}"
        raise ValueError(
            f"{what} differs from the masked model (max |diff| {worst:.2e}, tolerance "
            f"{tolerance:.2e}: {rule} x the outputs' largest magnitude "
            f"{float(expected.detach().abs().max()):.3g})"
        )


def check_models(rebuilt: nn.Module, reference: nn.Module, inputs: Tensor, what: str) -> float:
    """Check that ``rebuilt`` computes what ``reference`` does on ``inputs``: in their
    dtype first (:func:`check_outputs`), and, when that differs by more than its
    rounding tolerance, again on float64 copies of both, to 1e-9 of the outputs' scale
    (``_FLOAT64_RELATIVE``); return the largest difference in the models' own dtype.

    :raises ValueError: when the float64 outputs differ too (the rebuilt model computes
        another function), naming ``what`` and both differences.
    """
    with torch.inference_mode():
        got, expected = rebuilt(inputs), reference(inputs)
    worst = float((got.to(expected.dtype) - expected).abs().max())
    try:
        check_outputs(got, expected, what)
        return worst
    except ValueError as error:
        if not inputs.is_floating_point() or expected.dtype == torch.float64:
            raise
        first = str(error)
    wide = [copy.deepcopy(model).double() for model in (rebuilt, reference)]
    with torch.inference_mode():
        got64, expected64 = (model(inputs.double()) for model in wide)
    try:
        check_outputs(got64, expected64, what + " in float64", _FLOAT64_RELATIVE)
    except ValueError as error:
        raise ValueError(f"{first}; {error}") from None
    return worst
