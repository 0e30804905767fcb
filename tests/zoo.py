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


def make_realistic(model: Any) -> Any:
    """Give a randomly initialized ``model`` what a trained one has and pruning must
    respect: no all-zero weight (zero-initialized heads, as torchvision's ViT and timm's
    Mixer/ResMLP/PoolFormer have, output nothing, so any export would match them), and
    BatchNorm layers with non-trivial statistics and shifts (a removed channel's shift
    still reaches the next layer). Returns ``model``."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and not bool(weight.detach().any()):
                nn.init.normal_(weight, std=0.02)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                if module.running_mean is not None and module.running_var is not None:
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(module.bias, -0.5, 0.5)
    return model


def count_flops(model: Any, example: Any) -> int:
    """FLOPs of one forward pass of ``model`` on ``example`` as
    ``torch.utils.flop_counter`` counts them (2 per multiply-accumulate: matmuls,
    convolutions, attention), taught the CPU kernel of scaled dot-product attention,
    which it does not know by itself, with ``nn.MultiheadAttention``'s fused fast path
    off (the counter does not know that fused kernel either: a dense torchvision ViT
    would count a third of its FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from searchprune.core.layers import no_attention_fastpath

    def cpu_attention(query: Any, key: Any, value: Any, *_: object, **__: object) -> int:
        return int(sdpa_flop_count(query, key, value))

    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={kernel: cpu_attention})
    with torch.inference_mode(), no_attention_fastpath(), counter:
        model(example)
    return int(counter.get_total_flops())
