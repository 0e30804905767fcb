"""Whether a rebuilt model (compact, sparse, traced) computes what the masked one does.

Float rounding differs between two ways of computing the same sums (fewer terms, other
kernels, another summation order), and it accumulates with depth: in float32 a 150-layer
net differs by about 1e-6 of its outputs' scale, while its outputs may be in the
hundreds. A tolerance absolute in the outputs' units rejects correct deep models and
accepts wrong shallow ones; this one is relative to the scale of the expected outputs
(their largest magnitude) and to the precision of their dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ROUNDING_STEPS = 1000.0
"""Tolerated error, in units of the dtype's epsilon times the outputs' scale: float32
allows 1.2e-4 of the scale, float64 2.2e-13."""


def output_tolerance(expected: Tensor) -> float:
    """The largest absolute difference from ``expected`` that float rounding explains."""
    dtype = expected.dtype if expected.is_floating_point() else torch.float32
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    relative = min(_ROUNDING_STEPS * torch.finfo(dtype).eps, 0.05)
    return relative * max(scale, torch.finfo(dtype).tiny)


def check_outputs(got: Tensor, expected: Tensor, what: str) -> None:
    """:raises ValueError: when ``got`` differs from ``expected`` by more than rounding
    (:func:`output_tolerance`), naming ``what`` and the largest difference."""
    if got.shape != expected.shape:
        raise ValueError(
            f"{what} gives outputs of shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        )
    worst = float((got.detach().to(expected.dtype) - expected.detach()).abs().max())
    tolerance = output_tolerance(expected)
    if not worst <= tolerance:
        raise ValueError(
            f"{what} differs from the masked model (max |diff| {worst:.2e}, tolerance "
            f"{tolerance:.2e}: {_ROUNDING_STEPS:g} x float eps x the outputs' largest "
            f"magnitude {float(expected.abs().max()):.3g})"
        )
