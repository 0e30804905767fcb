"""torchvision and timm models for the any-model tests and benchmarks/model_zoo.py.

Shared by tests (``import zoo``: pytest puts ``tests/`` on the import path) and by the
model-zoo benchmark (which adds ``tests/`` to ``sys.path``).
"""

from __future__ import annotations

import sys
import types
from typing import Any


def import_torchvision() -> Any:
    """Import torchvision on this machine's CPU torch.

    The only torchvision wheel the registry offers for torch 2.13 is a CUDA build whose
    compiled operators (``torchvision::nms`` and friends) cannot load against the CPU
    torch wheel: importing it fails in ``torchvision._meta_registrations``. Classification
    models use none of those operators, so empty stand-ins for the two modules that
    register them let the models load. This belongs here, in test and benchmark helpers
    only: user code imports a normal torchvision.
    """
    if "torchvision" not in sys.modules:
        for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
            sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision

    return torchvision


def import_timm() -> Any:
    """Import timm (which imports torchvision) through :func:`import_torchvision`."""
    import_torchvision()
    import timm

    return timm
